//! The store's side of placement: every `ServerConfig::placement_heartbeat` it reports
//! itself and the regions it leads (one `Heartbeat` call, handled by this server's own
//! `PlacementService`, which forwards it to placement's leader), learns the stores'
//! addresses and placement's leader from the answer, fetches the configuration when its
//! number changed, and carries out the replica changes placement answered with — each
//! only while the region still has the epoch it was decided for.

use crate::config::ServerConfig;
use crate::placement_svc::{PlacementService, MAX_HEARTBEAT_REGIONS};
use crate::store_loop::{Cmd, StoreHandle};
use api::pb;
use placement::StoreAddrs;
use std::sync::Arc;
use store::{RegionEpoch, ReplicaChange, StoreId};
use tokio::sync::{oneshot, watch};

/// Where this store listens (what it reports, so placement can tell others).
#[derive(Clone, Debug, Default)]
pub struct Advertised {
    pub peer: String,
    pub client: String,
    pub resp: String,
}

pub async fn run(
    handle: StoreHandle,
    svc: PlacementService,
    cfg: Arc<ServerConfig>,
    me: Advertised,
    cluster_id: u64,
    mut stop: watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(cfg.placement_heartbeat);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut config_seen = 0u64;
    loop {
        tokio::select! {
            _ = stop.wait_for(|v| *v) => return,
            _ = every.tick() => {}
        }
        if let Err(e) = beat(&handle, &svc, &cfg, &me, cluster_id, &mut config_seen).await {
            tracing::debug!("placement heartbeat: {e}");
        }
    }
}

async fn beat(
    handle: &StoreHandle,
    svc: &PlacementService,
    cfg: &ServerConfig,
    me: &Advertised,
    cluster_id: u64,
    config_seen: &mut u64,
) -> Result<(), String> {
    let (tx, rx) = oneshot::channel();
    handle.send(Cmd::Status(tx)).map_err(|e| e.to_string())?;
    let status = rx.await.map_err(|_| "the store stopped".to_string())?;
    let mine = StoreId(cfg.store_id);
    let leading: Vec<_> = status
        .iter()
        .filter(|s| s.leader == Some(mine) && s.role == raft::Role::Leader)
        .collect();
    let data_dir = cfg.data_dir.clone();
    let disk = tokio::task::spawn_blocking(move || crate::disk::usage(&data_dir))
        .await
        .unwrap_or_default();
    let req = pb::HeartbeatRequest {
        store: Some(pb::StoreStats {
            store_id: cfg.store_id,
            peer_addr: reachable(&me.peer),
            client_addr: reachable(&me.client),
            resp_addr: reachable(&me.resp),
            capacity_bytes: 0,
            used_bytes: disk.log_bytes + disk.snapshot_bytes + disk.other_bytes,
            region_count: status.iter().filter(|s| !s.region.is_placement()).count() as u64,
            leader_count: leading.iter().filter(|s| !s.region.is_placement()).count() as u64,
            cluster_id,
        }),
        regions: leading
            .iter()
            .take(MAX_HEARTBEAT_REGIONS)
            .map(|s| pb::RegionReport {
                region: Some(crate::service::region_to_pb(&s.region)),
                approximate_keys: s.approximate.keys,
                approximate_bytes: s.approximate.bytes,
            })
            .collect(),
        forwarded: false,
    };
    let resp = svc.heartbeat(req).await;
    if let Some(e) = resp.error {
        return Err(e.message);
    }
    handle.cluster.set_placement_leader(resp.leader_store_id);
    for s in &resp.stores {
        handle.cluster.set_addrs(
            s.store_id,
            StoreAddrs {
                peer: s.peer_addr.clone(),
                client: s.client_addr.clone(),
                resp: s.resp_addr.clone(),
            },
        );
    }
    if resp.config != *config_seen {
        let q = svc
            .query(pb::PlacementQueryRequest {
                config: -1,
                forwarded: false,
            })
            .await;
        if q.error.is_none() {
            if let Ok(live) = serde_json::from_slice::<placement::LiveAnswer>(&q.json) {
                *config_seen = live.answer.config.number;
                handle.cluster.set_config(live.answer.config);
            }
        }
    }
    for op in resp.operators {
        if let Err(e) = act(handle, cfg, &op).await {
            tracing::debug!(
                "placement operator {:?} on region {}: {e}",
                op.kind(),
                op.region_id
            );
        }
    }
    Ok(())
}

/// `addr` if others can dial it; empty (placement keeps what it has) for a wildcard
/// address such as `0.0.0.0:7001`, which would send other stores' traffic to themselves.
pub fn reachable(addr: &str) -> String {
    match addr.parse::<std::net::SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => String::new(),
        _ => addr.to_string(),
    }
}

/// Carries out one operator on this store's replica (it led the region when it reported).
async fn act(
    handle: &StoreHandle,
    cfg: &ServerConfig,
    op: &pb::RegionOperator,
) -> Result<(), String> {
    let region = raft::GroupId(op.region_id);
    let e = op.epoch.unwrap_or_default();
    let epoch = RegionEpoch {
        conf_version: e.conf_version,
        version: e.version,
    };
    let to = StoreId(op.store_id);
    use pb::region_operator::Kind;
    let (tx, rx) = oneshot::channel();
    let Ok(kind) = Kind::try_from(op.kind) else {
        return Err(format!("unknown operator kind {}", op.kind));
    };
    let cmd = match kind {
        Kind::TransferLeader => {
            let (ttx, trx) = oneshot::channel();
            handle
                .send(Cmd::TransferLeader {
                    region,
                    to,
                    reply: ttx,
                })
                .map_err(|e| e.to_string())?;
            return match tokio::time::timeout(cfg.request_timeout, trx).await {
                Ok(Ok(r)) => r.map_err(|e| e.to_string()),
                _ => Err("no answer".into()),
            };
        }
        Kind::Unspecified => return Err("an operator without a kind".into()),
        Kind::AddLearner => ReplicaChange::AddLearner(to),
        Kind::Promote => ReplicaChange::Promote(to),
        Kind::Remove => ReplicaChange::Remove(to),
    };
    handle
        .send(Cmd::ChangeReplica {
            region,
            epoch,
            change: cmd,
            reply: tx,
        })
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(cfg.request_timeout, rx).await {
        Ok(Ok(r)) => r.map(|_| ()).map_err(|e| e.to_string()),
        _ => Err("no answer in time".into()),
    }
}
