//! The store's side of placement: every `ServerConfig::placement_heartbeat` it reports
//! itself and the regions it leads (one `Heartbeat` call, handled by this server's own
//! `PlacementService`, which forwards it to placement's leader), learns the stores'
//! addresses and placement's leader from the answer, fetches the configuration when its
//! number changed, and carries out the replica changes placement answered with — each
//! only while the region still has the epoch it was decided for.
//!
//! A report carries the store's labels and capacity (the filesystem's size unless
//! `--capacity-bytes`), and each led region's read and write rates: requests per second
//! over the last heartbeat interval, from the store's cumulative per-replica counters
//! ([`store::RegionStatus::reads`]) and the counters the previous beat saw ([`RateState`]).

use crate::config::ServerConfig;
use crate::placement_svc::{PlacementService, MAX_HEARTBEAT_REGIONS};
use crate::store_loop::{Cmd, StoreHandle};
use api::pb;
use placement::StoreAddrs;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
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
    let mut state = BeatState::default();
    loop {
        tokio::select! {
            _ = stop.wait_for(|v| *v) => return,
            _ = every.tick() => {}
        }
        if let Err(e) = beat(&handle, &svc, &cfg, &me, cluster_id, &mut state).await {
            tracing::debug!("placement heartbeat: {e}");
        }
    }
}

/// A region replica's cumulative request counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub reads: u64,
    pub writes: u64,
}

/// Requests per second.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rates {
    pub reads_per_sec: u64,
    pub writes_per_sec: u64,
}

/// The rates between two readings of a region's counters taken `elapsed` apart (rounded
/// down). A counter that went down (the replica was re-created here, counting from 0 again)
/// gives 0, not a wrapped-around number; so does an `elapsed` of zero.
pub fn rates(before: Counts, now: Counts, elapsed: Duration) -> Rates {
    let per_sec = |from: u64, to: u64| -> u64 {
        let micros = elapsed.as_micros();
        if micros == 0 {
            return 0;
        }
        let per = u128::from(to.saturating_sub(from)) * 1_000_000 / micros;
        u64::try_from(per).unwrap_or(u64::MAX)
    };
    Rates {
        reads_per_sec: per_sec(before.reads, now.reads),
        writes_per_sec: per_sec(before.writes, now.writes),
    }
}

/// What the previous heartbeat read: when, and the counters of each region it reported.
/// Holds only the regions of the latest beat, so it never outgrows the regions this store
/// leads.
#[derive(Debug, Default)]
pub struct RateState {
    at: Option<Instant>,
    regions: BTreeMap<u64, Counts>,
}

impl RateState {
    /// The rates of each region in `now` (read at `at`) since the previous call; 0 for a
    /// region the previous call did not see (newly led, or the first beat). Then remembers
    /// `now` in place of what it held.
    pub fn observe(
        &mut self,
        at: Instant,
        now: impl IntoIterator<Item = (u64, Counts)>,
    ) -> BTreeMap<u64, Rates> {
        let elapsed = self.at.map(|prev| at.saturating_duration_since(prev));
        let mut seen = BTreeMap::new();
        let mut out = BTreeMap::new();
        for (id, counts) in now {
            let r = match (elapsed, self.regions.get(&id)) {
                (Some(elapsed), Some(before)) => rates(*before, counts, elapsed),
                _ => Rates::default(),
            };
            out.insert(id, r);
            seen.insert(id, counts);
        }
        self.regions = seen;
        self.at = Some(at);
        out
    }
}

/// What one heartbeat leaves for the next.
#[derive(Default)]
struct BeatState {
    /// The configuration number last fetched.
    config_seen: u64,
    rate_state: RateState,
    /// Operators this store could not carry out, reported with the next heartbeat.
    failures: Vec<pb::OperatorFailure>,
}

async fn beat(
    handle: &StoreHandle,
    svc: &PlacementService,
    cfg: &ServerConfig,
    me: &Advertised,
    cluster_id: u64,
    state: &mut BeatState,
) -> Result<(), String> {
    let BeatState {
        config_seen,
        rate_state,
        failures,
    } = state;
    let (tx, rx) = oneshot::channel();
    handle.send(Cmd::Status(tx)).map_err(|e| e.to_string())?;
    let status = rx.await.map_err(|_| "the store stopped".to_string())?;
    // Load samples cover about two heartbeat intervals (this one and the last).
    handle
        .send(Cmd::RotateLoadSamples)
        .map_err(|e| e.to_string())?;
    let mine = StoreId(cfg.store_id);
    let leading: Vec<_> = status
        .iter()
        .filter(|s| s.leader == Some(mine) && s.role == raft::Role::Leader)
        .collect();
    let region_rates = rate_state.observe(
        Instant::now(),
        leading.iter().map(|s| {
            let counts = Counts {
                reads: s.reads,
                writes: s.writes,
            };
            (s.region.id.0, counts)
        }),
    );
    let rates_of = |region: u64| region_rates.get(&region).copied().unwrap_or_default();
    // The store's load: its data regions' (placement's own traffic is not clients').
    let total = leading
        .iter()
        .filter(|s| !s.region.is_placement())
        .map(|s| rates_of(s.region.id.0))
        .fold(Rates::default(), |sum, r| Rates {
            reads_per_sec: sum.reads_per_sec.saturating_add(r.reads_per_sec),
            writes_per_sec: sum.writes_per_sec.saturating_add(r.writes_per_sec),
        });
    let data_dir = cfg.data_dir.clone();
    let fixed_capacity = cfg.capacity_bytes;
    let (disk, capacity_bytes) = tokio::task::spawn_blocking(move || {
        let capacity = fixed_capacity.unwrap_or_else(|| crate::disk::filesystem_bytes(&data_dir));
        (crate::disk::usage(&data_dir), capacity)
    })
    .await
    .unwrap_or_default();
    let req = pb::HeartbeatRequest {
        store: Some(pb::StoreStats {
            store_id: cfg.store_id,
            peer_addr: reachable(&me.peer),
            client_addr: reachable(&me.client),
            resp_addr: reachable(&me.resp),
            capacity_bytes,
            used_bytes: disk.log_bytes + disk.snapshot_bytes + disk.other_bytes,
            region_count: status.iter().filter(|s| !s.region.is_placement()).count() as u64,
            leader_count: leading.iter().filter(|s| !s.region.is_placement()).count() as u64,
            cluster_id,
            reads_per_sec: total.reads_per_sec,
            writes_per_sec: total.writes_per_sec,
            labels: cfg
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }),
        regions: leading
            .iter()
            .take(MAX_HEARTBEAT_REGIONS)
            .map(|s| {
                let r = rates_of(s.region.id.0);
                pb::RegionReport {
                    region: Some(crate::service::region_to_pb(&s.region)),
                    approximate_keys: s.approximate.keys,
                    approximate_bytes: s.approximate.bytes,
                    reads_per_sec: r.reads_per_sec,
                    writes_per_sec: r.writes_per_sec,
                }
            })
            .collect(),
        forwarded: false,
        // Only replicas that know themselves members: a replica still waiting for its
        // first snapshot has no descriptor yet and must not be mistaken for a removed one.
        replicas: status
            .iter()
            .filter(|s| s.region.peer_on(mine).is_some())
            .take(MAX_HEARTBEAT_REGIONS)
            .map(|s| pb::ReplicaEpoch {
                region_id: s.region.id.0,
                conf_version: s.region.epoch.conf_version,
            })
            .collect(),
        failed: std::mem::take(failures),
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
            if failures.len() < crate::placement_svc::MAX_OPERATOR_FAILURES {
                failures.push(pb::OperatorFailure {
                    region_id: op.region_id,
                    message: e,
                });
            }
        }
    }
    for r in resp.stale_replicas.iter().take(MAX_HEARTBEAT_REGIONS) {
        let Some(current) = crate::service::region_from_pb(r) else {
            continue;
        };
        let (tx, rx) = oneshot::channel();
        let id = current.id;
        if handle
            .send(Cmd::DestroyStale { current, reply: tx })
            .is_err()
        {
            break;
        }
        match rx.await {
            Ok(Ok(true)) => tracing::info!(
                "region {id}: removed while this store was away; its replica here is destroyed"
            ),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!("region {id}: destroying a removed replica: {e}"),
            Err(_) => break,
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
        Kind::SplitBySize | Kind::SplitByLoad => {
            let by = if kind == Kind::SplitBySize {
                crate::store_loop::SplitBy::Size
            } else {
                crate::store_loop::SplitBy::Load
            };
            handle
                .send(Cmd::SplitBy {
                    region,
                    epoch,
                    by,
                    reply: tx,
                })
                .map_err(|e| e.to_string())?;
            return match tokio::time::timeout(cfg.request_timeout, rx).await {
                Ok(Ok(r)) => r.map(|_| ()).map_err(|e| e.to_string()),
                _ => Err("no answer in time".into()),
            };
        }
        Kind::Merge => {
            handle
                .send(Cmd::Merge {
                    source: region,
                    epoch,
                    target: raft::GroupId(op.merge_into),
                    reply: tx,
                })
                .map_err(|e| e.to_string())?;
            return match tokio::time::timeout(cfg.request_timeout, rx).await {
                Ok(Ok(r)) => r.map(|_| ()).map_err(|e| e.to_string()),
                _ => Err("no answer in time".into()),
            };
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(reads: u64, writes: u64) -> Counts {
        Counts { reads, writes }
    }

    #[test]
    fn rates_are_the_difference_per_second() {
        let r = rates(counts(100, 10), counts(700, 50), Duration::from_secs(2));
        assert_eq!(
            r,
            Rates {
                reads_per_sec: 300,
                writes_per_sec: 20
            }
        );
        // Rounded down; a fraction of a second scales up.
        let r = rates(counts(0, 0), counts(5, 1), Duration::from_millis(500));
        assert_eq!((r.reads_per_sec, r.writes_per_sec), (10, 2));
        let r = rates(counts(0, 0), counts(1, 0), Duration::from_secs(3));
        assert_eq!(r.reads_per_sec, 0);
        // No time passed: nothing to divide by.
        assert_eq!(
            rates(counts(0, 0), counts(9, 9), Duration::ZERO),
            Rates::default()
        );
    }

    #[test]
    fn a_counter_that_went_down_gives_zero_not_a_huge_rate() {
        // The replica was re-created here (or the store restarted): it counts from 0 again.
        let r = rates(counts(1_000, 500), counts(30, 600), Duration::from_secs(1));
        assert_eq!(
            r,
            Rates {
                reads_per_sec: 0,
                writes_per_sec: 100
            }
        );
        // Even a tiny interval cannot overflow.
        let r = rates(counts(0, 0), counts(u64::MAX, 0), Duration::from_nanos(1));
        assert_eq!(r.reads_per_sec, 0, "under a microsecond counts as none");
        let r = rates(counts(0, 0), counts(u64::MAX, 0), Duration::from_micros(1));
        assert_eq!(r.reads_per_sec, u64::MAX);
    }

    #[test]
    fn the_state_reports_zero_first_and_forgets_regions_no_longer_led() {
        let t0 = Instant::now();
        let mut st = RateState::default();
        let first = st.observe(t0, [(1, counts(10, 10)), (2, counts(5, 0))]);
        assert_eq!(first.len(), 2);
        assert!(first.values().all(|r| *r == Rates::default()), "{first:?}");
        let second = st.observe(
            t0 + Duration::from_secs(2),
            [(1, counts(30, 16)), (3, counts(100, 100))],
        );
        assert_eq!(
            second[&1],
            Rates {
                reads_per_sec: 10,
                writes_per_sec: 3
            }
        );
        assert_eq!(
            second[&3],
            Rates::default(),
            "a region newly led starts at 0"
        );
        assert!(!second.contains_key(&2));
        assert_eq!(
            st.regions.keys().copied().collect::<Vec<_>>(),
            vec![1, 3],
            "region 2 was not reported: forgotten"
        );
        // Region 2 led again later: its old counters are gone, so it starts at 0 again.
        let third = st.observe(t0 + Duration::from_secs(4), [(2, counts(50, 0))]);
        assert_eq!(third[&2], Rates::default());
        assert_eq!(st.regions.len(), 1);
    }
}
