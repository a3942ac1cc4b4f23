//! `raftkv region ...`: reshaping regions at runtime through the servers' `Admin` service.
//! Each command waits for its effect and exits 0 only then; any refusal is an error (exit
//! status 1) with the server's reason.

use crate::Conn;
use anyhow::{bail, Result};
use clap::Subcommand;
use client::pb;
use std::time::{Duration, Instant};

/// How long `add-replica` waits for the new replica to catch up and be promoted, and
/// `remove-replica` for it to be gone.
const CHANGE_WAIT: Duration = Duration::from_secs(60);

/// How long `merge` waits for the merge to commit on the regions' leader.
const MERGE_WAIT: Duration = Duration::from_secs(30);

/// How long `transfer-leader` waits for the target store to lead (it may first have to catch
/// up with the log).
const TRANSFER_WAIT: Duration = Duration::from_secs(10);

#[derive(Subcommand)]
pub(crate) enum RegionCmd {
    /// Split the region holding KEY at KEY (KEY starts the new region); returns once both
    /// regions exist.
    Split {
        key: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Merge RIGHT into LEFT, its left neighbour (their replicas must be on the same stores):
    /// LEFT then spans both and RIGHT is gone; returns once that is so.
    Merge {
        left: u64,
        right: u64,
        #[command(flatten)]
        conn: Conn,
    },
    /// Add a replica of REGION on STORE: a learner that catches up by snapshot, then is
    /// promoted; returns once it is a voter.
    AddReplica {
        region: u64,
        store: u64,
        #[command(flatten)]
        conn: Conn,
    },
    /// Remove REGION's replica on STORE (leadership moves off it first); returns once it is
    /// gone.
    RemoveReplica {
        region: u64,
        store: u64,
        #[command(flatten)]
        conn: Conn,
    },
    /// Put REGION's replicas on exactly the given stores (through placement: add learners,
    /// let them catch up, promote, remove the others, leadership moved off first); returns
    /// once they are there.
    Move {
        region: u64,
        /// Store ids, comma separated, e.g. 1,2,4.
        #[arg(long)]
        to: String,
        #[arg(long, default_value_t = 300)]
        wait_secs: u64,
        #[command(flatten)]
        conn: Conn,
    },
    /// Make the replica of REGION on STORE its leader; returns once STORE leads it (waiting
    /// up to 10 s for it to catch up).
    TransferLeader {
        region: u64,
        store: u64,
        #[command(flatten)]
        conn: Conn,
    },
}

type AdminClient = pb::admin_client::AdminClient<tonic::transport::Channel>;

async fn connect(endpoint: &str) -> Option<AdminClient> {
    let ep = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
        .ok()?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(15));
    ep.connect()
        .await
        .ok()
        .map(pb::admin_client::AdminClient::new)
}

fn describe(e: &pb::Error) -> String {
    let code = pb::error::Code::try_from(e.code)
        .map(|c| c.as_str_name().to_string())
        .unwrap_or_else(|_| e.code.to_string());
    format!("{code}: {}", e.message)
}

fn range(r: &pb::Region) -> String {
    let show = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    format!(
        "[{:?}, {})",
        show(&r.start_key),
        if r.has_end {
            format!("{:?}", show(&r.end_key))
        } else {
            "+inf".into()
        }
    )
}

/// Sends `call` to the servers in turn until one answers (a server that is down or not
/// reachable, or that holds no replica of the region, is skipped); the answer's error, if
/// any, is final.
async fn first_answer<F, Fut>(conn: &Conn, mut call: F) -> Result<pb::AdminResponse>
where
    F: FnMut(AdminClient) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<pb::AdminResponse>, tonic::Status>>,
{
    let mut last = String::from("no endpoints given");
    // The last answer that the region is not on that server: final only if no server has it.
    let mut not_here = None;
    for ep in conn.list() {
        let Some(client) = connect(&ep).await else {
            last = format!("{ep}: not reachable");
            continue;
        };
        match call(client).await {
            Ok(r) => {
                let r = r.into_inner();
                let elsewhere = r
                    .error
                    .as_ref()
                    .is_some_and(|e| e.code == pb::error::Code::RegionNotFound as i32);
                if !elsewhere {
                    return Ok(r);
                }
                not_here = Some(r);
            }
            Err(s) => last = format!("{ep}: {}", s.message()),
        }
    }
    if let Some(r) = not_here {
        return Ok(r);
    }
    bail!("no server answered ({last})")
}

/// The region as its leader (else the newest report) describes it, and its leader's store.
fn region_view(reports: &[pb::StatusResponse], region: u64) -> Option<(pb::Region, u64)> {
    let mut best: Option<(bool, u64, pb::Region, u64)> = None;
    for st in reports {
        for r in &st.regions {
            let Some(g) = r.region.as_ref().filter(|g| g.id == region) else {
                continue;
            };
            let from_leader = r.leader_store_id == st.store_id;
            let version = g
                .epoch
                .map_or(0, |e| e.conf_version * (1 << 32) + e.version);
            if best
                .as_ref()
                .is_none_or(|(l, v, _, _)| (from_leader, version) > (*l, *v))
            {
                best = Some((from_leader, version, g.clone(), r.leader_store_id));
            }
        }
    }
    best.map(|(_, _, g, l)| (g, l))
}

async fn change_replica(
    conn: &Conn,
    region: u64,
    store: u64,
    kind: pb::change_replica_request::Kind,
) -> Result<pb::AdminResponse> {
    let req = pb::ChangeReplicaRequest {
        region_id: region,
        store_id: store,
        kind: kind as i32,
        forwarded: false,
    };
    first_answer(conn, |mut c| async move { c.change_replica(req).await }).await
}

/// Moves REGION's leadership to STORE and waits until STORE reports leading it.
async fn transfer_leader(conn: &Conn, region: u64, store: u64) -> Result<()> {
    let deadline = Instant::now() + TRANSFER_WAIT;
    let mut c = client::Client::connect(conn.list()).await?;
    loop {
        let req = pb::TransferLeaderRequest {
            region_id: region,
            to_store: store,
            forwarded: false,
        };
        let r = first_answer(conn, |mut c| async move { c.transfer_leader(req).await }).await?;
        if let Some(e) = &r.error {
            let retryable = [pb::error::Code::NotLeader, pb::error::Code::Timeout]
                .iter()
                .any(|c| *c as i32 == e.code);
            if !retryable || Instant::now() >= deadline {
                bail!(
                    "transfer of region {region} to store {store} refused: {}",
                    describe(e)
                );
            }
        }
        // Started (or retrying): wait a while for the store to report leading it.
        let round = Instant::now() + Duration::from_secs(1);
        while Instant::now() < round.min(deadline) {
            let leads = c.status().await.iter().any(|st| {
                st.store_id == store
                    && st.regions.iter().any(|r| {
                        r.region.as_ref().is_some_and(|g| g.id == region)
                            && r.leader_store_id == store
                    })
            });
            if leads {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if Instant::now() >= deadline {
            bail!(
                "store {store} did not become the leader of region {region} within {} s",
                TRANSFER_WAIT.as_secs()
            );
        }
    }
}

fn stores_of(r: &pb::Region) -> std::collections::BTreeSet<u64> {
    r.peers.iter().map(|p| p.store_id).collect()
}

/// Merges `right` into `left` and waits until `right` is gone and `left` spans both.
async fn merge(conn: &Conn, left: u64, right: u64) -> Result<()> {
    let mut c = client::Client::connect(conn.list()).await?;
    let reports = c.status().await;
    let Some((l, _)) = region_view(&reports, left) else {
        bail!("no server reports region {left}");
    };
    let Some((r, _)) = region_view(&reports, right) else {
        bail!("no server reports region {right}");
    };
    if left == right || !l.has_end || l.end_key != r.start_key {
        bail!(
            "regions {left} {} and {right} {} are not adjacent (LEFT must end where RIGHT starts)",
            range(&l),
            range(&r)
        );
    }
    if stores_of(&l) != stores_of(&r) {
        bail!(
            "regions {left} (stores {:?}) and {right} (stores {:?}) have replicas on different stores; move them onto the same stores first",
            stores_of(&l),
            stores_of(&r)
        );
    }
    let deadline = Instant::now() + MERGE_WAIT;
    loop {
        let req = pb::MergeRegionRequest {
            source_region_id: right,
            target_region_id: left,
            forwarded: false,
        };
        let resp = first_answer(conn, |mut c| async move { c.merge_region(req).await }).await?;
        match &resp.error {
            None => break,
            Some(e)
                if Instant::now() < deadline
                    && ([
                        pb::error::Code::NotLeader,
                        pb::error::Code::Timeout,
                        pb::error::Code::Busy,
                    ]
                    .iter()
                    .any(|c| *c as i32 == e.code)
                        // A replica of RIGHT trails its leader: it may catch up.
                        || e.message.contains("not caught up")) =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Some(e) => bail!(
                "merging region {right} into {left} refused: {}",
                describe(e)
            ),
        }
    }
    let frozen_version = r.epoch.map_or(0, |e| e.version) + 1;
    loop {
        let reports = c.status().await;
        match (region_view(&reports, left), region_view(&reports, right)) {
            (Some((l, _)), None) if l.has_end == r.has_end && l.end_key == r.end_key => {
                println!("merged region {right} into region {left} {}", range(&l));
                return Ok(());
            }
            (_, Some((now, _))) if now.epoch.map_or(0, |e| e.version) > frozen_version => bail!(
                "the merge of region {right} into {left} was rolled back (region {left} changed meanwhile)"
            ),
            _ if Instant::now() >= deadline => bail!(
                "region {right} was not merged into {left} within {} s (see `raftkv status`)",
                MERGE_WAIT.as_secs()
            ),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

pub(crate) async fn run(cmd: RegionCmd) -> Result<()> {
    use pb::change_replica_request::Kind;
    match cmd {
        RegionCmd::AddReplica {
            region,
            store,
            conn,
        } => {
            // No leader known yet (an election under way): retried, bounded.
            let deadline = Instant::now() + TRANSFER_WAIT;
            loop {
                let r = change_replica(&conn, region, store, Kind::AddLearner).await?;
                match &r.error {
                    None => break,
                    Some(e)
                        // Refused before it was proposed, so a retry cannot add it twice (a
                        // timeout could have been proposed: not retried).
                        if Instant::now() < deadline
                            && e.code == pb::error::Code::NotLeader as i32 =>
                    {
                        tokio::time::sleep(Duration::from_millis(200)).await
                    }
                    Some(e) => bail!(
                        "adding a replica of region {region} on store {store} refused: {}",
                        describe(e)
                    ),
                }
            }
            // Promoted once caught up (the leader refuses before).
            let deadline = Instant::now() + CHANGE_WAIT;
            loop {
                let r = change_replica(&conn, region, store, Kind::Promote).await?;
                match &r.error {
                    None => break,
                    Some(e) if Instant::now() >= deadline => bail!(
                        "the new replica of region {region} on store {store} was not promoted within {} s: {}",
                        CHANGE_WAIT.as_secs(),
                        describe(e)
                    ),
                    Some(e)
                        if e.message.contains("not caught up")
                            || e.code == pb::error::Code::NotLeader as i32
                            || e.code == pb::error::Code::Timeout as i32
                            // The serving store has not applied the learner's addition yet.
                            || e.code == pb::error::Code::EpochNotMatch as i32 =>
                    {
                        tokio::time::sleep(Duration::from_millis(200)).await
                    }
                    Some(e) => bail!("promoting the replica of region {region} on store {store} refused: {}", describe(e)),
                }
            }
            println!("store {store} holds a voting replica of region {region}");
        }
        RegionCmd::RemoveReplica {
            region,
            store,
            conn,
        } => {
            let mut c = client::Client::connect(conn.list()).await?;
            let Some((desc, leader)) = region_view(&c.status().await, region) else {
                bail!("no server reports region {region}");
            };
            if !desc.peers.iter().any(|p| p.store_id == store) {
                bail!("region {region} has no replica on store {store}");
            }
            if leader == store {
                let Some(to) = desc
                    .peers
                    .iter()
                    .find(|p| p.store_id != store && !p.learner)
                    .map(|p| p.store_id)
                else {
                    bail!("region {region} has no other voter to lead it");
                };
                transfer_leader(&conn, region, to).await?;
            }
            let deadline = Instant::now() + CHANGE_WAIT;
            loop {
                let r = change_replica(&conn, region, store, Kind::Remove).await?;
                match &r.error {
                    None => break,
                    Some(e)
                        // Refused before it was proposed, so a retry cannot add it twice (a
                        // timeout could have been proposed: not retried).
                        if Instant::now() < deadline
                            && e.code == pb::error::Code::NotLeader as i32 =>
                    {
                        tokio::time::sleep(Duration::from_millis(200)).await
                    }
                    Some(e) => bail!(
                        "removing the replica of region {region} on store {store} refused: {}",
                        describe(e)
                    ),
                }
            }
            // Gone: the store (if it answers) no longer reports the region.
            loop {
                let reports = c.status().await;
                let still = reports.iter().any(|st| {
                    st.store_id == store
                        && st
                            .regions
                            .iter()
                            .any(|r| r.region.as_ref().is_some_and(|g| g.id == region))
                });
                if !still {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!(
                        "store {store} still holds region {region} after {} s",
                        CHANGE_WAIT.as_secs()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            println!("region {region} has no replica on store {store}");
        }
        RegionCmd::Split { key, conn } => {
            let req = pb::SplitRegionRequest {
                split_key: key.clone().into_bytes(),
                forwarded: false,
            };
            let r = first_answer(&conn, |mut c| {
                let req = req.clone();
                async move { c.split_region(req).await }
            })
            .await?;
            if let Some(e) = &r.error {
                bail!("split at {key:?} refused: {}", describe(e));
            }
            let [left, right] = r.regions.as_slice() else {
                bail!("split at {key:?}: the server did not report both regions");
            };
            println!("split at {key:?}:");
            println!("  region {} {}", left.id, range(left));
            println!("  region {} {}", right.id, range(right));
        }
        RegionCmd::Merge { left, right, conn } => merge(&conn, left, right).await?,
        RegionCmd::Move {
            region,
            to,
            wait_secs,
            conn,
        } => crate::placement_cmd::move_region(&conn, region, &to, wait_secs).await?,
        RegionCmd::TransferLeader {
            region,
            store,
            conn,
        } => {
            transfer_leader(&conn, region, store).await?;
            println!("store {store} leads region {region}");
        }
    }
    Ok(())
}
