//! `raftkv server --join PEER_ADDR`: a new store asks a running cluster for its id. Any
//! member's peer address will do: the peer port also serves the `Placement` gRPC service,
//! which forwards to placement's leader.

use crate::identity::{self, Identity};
use api::pb;
use placement::{Command, LiveAnswer, PlacementError, Reply, StoreAddrs, StoreState};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

type Client = pb::placement_client::PlacementClient<tonic::transport::Channel>;

async fn connect(seed: &str) -> Result<Client, String> {
    let ep = tonic::transport::Endpoint::from_shared(format!("http://{seed}"))
        .map_err(|e| format!("--join {seed}: {e}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10));
    ep.connect()
        .await
        .map(Client::new)
        .map_err(|e| format!("cannot reach --join {seed}: {e}"))
}

/// The latest configuration and live view, from the cluster behind `seed`, retried until
/// `deadline` (placement may be electing a leader).
pub async fn query(seed: &str, deadline: Instant) -> Result<LiveAnswer, String> {
    loop {
        let r = match connect(seed).await {
            Ok(mut c) => c
                .query(pb::PlacementQueryRequest {
                    config: -1,
                    forwarded: false,
                })
                .await
                .map_err(|s| s.message().to_string())
                .and_then(|r| {
                    let r = r.into_inner();
                    match r.error {
                        Some(e) => Err(e.message),
                        None => serde_json::from_slice(&r.json).map_err(|e| e.to_string()),
                    }
                }),
            Err(e) => Err(e),
        };
        match r {
            Ok(a) => return Ok(a),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("asking {seed} for the cluster's placement: {e}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

/// How long a restart of a joined store waits for `--join`'s seed to confirm the cluster: a
/// restart must not hang on a cluster that is itself restarting (the store-to-store
/// connections check the cluster id anyway).
const REJOIN_CHECK: Duration = Duration::from_secs(3);

/// A data directory that joined before: it keeps its identity, but only in its own cluster.
/// The seed is asked (briefly, best effort) which cluster it belongs to; a different one is
/// refused at once, rather than a store that starts and is then turned away by every peer.
async fn check_rejoin(
    seed: &str,
    data_dir: &Path,
    id: Identity,
    want_cluster: Option<u64>,
) -> Result<Identity, String> {
    if let Some(w) = want_cluster.filter(|w| *w != id.cluster_id) {
        return Err(format!(
            "{} holds store {} of cluster {}, not --cluster-id {w}",
            data_dir.display(),
            id.store_id,
            id.cluster_id
        ));
    }
    match query(seed, Instant::now() + REJOIN_CHECK).await {
        Ok(live) if live.answer.cluster_id != id.cluster_id => Err(format!(
            "{} holds store {} of cluster {}, but --join {seed} reaches cluster {}; use a new \
             data directory to join that cluster",
            data_dir.display(),
            id.store_id,
            id.cluster_id,
            live.answer.cluster_id
        )),
        Ok(_) => Ok(id),
        Err(e) => {
            tracing::warn!(
                "restarting store {} without confirming its cluster: {e}",
                id.store_id
            );
            Ok(id)
        }
    }
}

/// Joins the cluster behind `seed` (or finds this data directory's join done already) and
/// returns the store's identity. `want_cluster` (from `--cluster-id`) must match the
/// cluster's when given. The store joins with its `labels` (`--labels`) and `capacity`
/// recorded from the start, so placement never holds it without them.
pub async fn join(
    seed: &str,
    data_dir: &Path,
    addrs: StoreAddrs,
    labels: BTreeMap<String, String>,
    capacity: u64,
    want_cluster: Option<u64>,
    timeout: Duration,
) -> Result<Identity, String> {
    let deadline = Instant::now() + timeout;
    if let Some(id) = identity::load(data_dir)? {
        return check_rejoin(seed, data_dir, id, want_cluster).await;
    }
    let live = query(seed, deadline).await?;
    let cluster_id = live.answer.cluster_id;
    if let Some(w) = want_cluster {
        if w != cluster_id {
            return Err(format!(
                "--join {seed} reaches cluster {cluster_id}, not --cluster-id {w}"
            ));
        }
    }
    let token = identity::join_token(data_dir)?;
    let cmd = Command::Join {
        token,
        cluster_id,
        addrs,
        labels,
        capacity,
    };
    let json = serde_json::to_vec(&cmd).expect("serializing");
    let store_id = loop {
        let r = match connect(seed).await {
            Ok(mut c) => c
                .call(pb::PlacementCallRequest {
                    command_json: json.clone(),
                    forwarded: false,
                })
                .await
                .map_err(|s| s.message().to_string())
                .and_then(|r| {
                    let r = r.into_inner();
                    match r.error {
                        Some(e) => Err(e.message),
                        None => serde_json::from_slice::<Result<Reply, PlacementError>>(&r.json)
                            .map_err(|e| e.to_string()),
                    }
                }),
            Err(e) => Err(e),
        };
        match r {
            Ok(Ok(Reply::Joined { store, .. })) => break store,
            Ok(Ok(other)) => return Err(format!("unexpected answer to Join: {other:?}")),
            // Refused by placement itself (wrong cluster, bad address): final.
            Ok(Err(e)) => return Err(format!("the cluster refused to let this store join: {e}")),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("joining through {seed}: {e}"))
            }
            // Not answered: retried with the same token, so never joined twice.
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    };
    let id = Identity {
        store_id,
        cluster_id,
    };
    identity::save(data_dir, &id)?;
    Ok(id)
}

/// Every store of `live` that has not left, as `(id, peer address)`.
pub fn peers(live: &LiveAnswer) -> Vec<(u64, String)> {
    live.answer
        .config
        .stores
        .values()
        .filter(|s| s.state != StoreState::Removed && !s.addrs.peer.is_empty())
        .map(|s| (s.id, s.addrs.peer.clone()))
        .collect()
}
