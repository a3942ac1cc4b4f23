//! `raftkv placement query`, `raftkv store list|drain` and `raftkv region move`: the
//! placement service's verbs from the command line. Any server answers (it forwards to
//! placement's leader); the commands that change the layout wait for the change to be
//! done and exit 0 only then.

use crate::Conn;
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use client::pb;
use placement::{Command, LiveAnswer, PlacementError, Reply, StoreState};
use std::time::{Duration, Instant};

/// How long a refused call (no placement leader yet, a server down) is retried.
const CALL_RETRY_FOR: Duration = Duration::from_secs(15);
/// Default of `store drain --wait-secs` and `region move --wait-secs`.
const DEFAULT_WAIT_SECS: u64 = 300;

#[derive(Subcommand)]
pub(crate) enum PlacementCmd {
    /// Print configuration N (default: the latest) of stores and regions.
    Query {
        config: Option<u64>,
        /// One JSON object: {"config": N, "stores": [...], "regions": [...]}.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
pub(crate) enum StoreCmd {
    /// Every store placement knows: state, regions, leaders, bytes, capacity, read and write
    /// rates (requests per second over the last heartbeat interval), labels.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Move every replica off store ID (a leadership it holds is handed over before its
    /// replica goes), then mark it Removed;
    /// returns once it is removed.
    Drain {
        id: u64,
        /// Give up waiting after this many seconds (the drain goes on).
        #[arg(long, default_value_t = DEFAULT_WAIT_SECS)]
        wait_secs: u64,
        #[command(flatten)]
        conn: Conn,
    },
}

type PlacementClient = pb::placement_client::PlacementClient<tonic::transport::Channel>;

async fn connect(endpoint: &str) -> Option<PlacementClient> {
    let ep = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
        .ok()?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(15));
    ep.connect().await.ok().map(PlacementClient::new)
}

/// Asks the servers in turn, retrying refusals for up to [`CALL_RETRY_FOR`].
async fn ask<F, Fut>(conn: &Conn, call: F) -> Result<pb::PlacementResponse>
where
    F: FnMut(PlacementClient) -> Fut,
    Fut:
        std::future::Future<Output = Result<tonic::Response<pb::PlacementResponse>, tonic::Status>>,
{
    ask_for(conn, CALL_RETRY_FOR, call).await
}

async fn ask_for<F, Fut>(
    conn: &Conn,
    retry_for: Duration,
    mut call: F,
) -> Result<pb::PlacementResponse>
where
    F: FnMut(PlacementClient) -> Fut,
    Fut:
        std::future::Future<Output = Result<tonic::Response<pb::PlacementResponse>, tonic::Status>>,
{
    let deadline = Instant::now() + retry_for;
    let mut last = String::from("no endpoints given");
    loop {
        for ep in conn.list() {
            let Some(c) = connect(&ep).await else {
                last = format!("{ep}: not reachable");
                continue;
            };
            match call(c).await {
                Ok(r) => {
                    let r = r.into_inner();
                    match &r.error {
                        None => return Ok(r),
                        // A final refusal (a configuration no longer kept, a bad verb): no
                        // other store or later try would answer differently.
                        Some(e) if e.code == pb::error::Code::InvalidArgument as i32 => {
                            bail!("{}", e.message)
                        }
                        Some(e) => last = format!("{ep}: {}", e.message),
                    }
                }
                Err(s) => last = format!("{ep}: {}", s.message()),
            }
        }
        if Instant::now() >= deadline {
            bail!("placement did not answer: {last}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Configuration `n` (`None`: the latest) with the leader's live view.
pub(crate) async fn query(conn: &Conn, n: Option<u64>) -> Result<LiveAnswer> {
    query_for(conn, n, CALL_RETRY_FOR).await
}

/// [`query`], retrying refusals for `retry_for` only.
pub(crate) async fn query_for(
    conn: &Conn,
    n: Option<u64>,
    retry_for: Duration,
) -> Result<LiveAnswer> {
    let config = n.map_or(-1, |n| n as i64);
    let r = ask_for(conn, retry_for, |mut c| async move {
        c.query(pb::PlacementQueryRequest {
            config,
            forwarded: false,
        })
        .await
    })
    .await?;
    serde_json::from_slice(&r.json).context("decoding placement's answer")
}

/// Runs a verb; its reply, or placement's reason for refusing it.
pub(crate) async fn call(conn: &Conn, cmd: &Command) -> Result<Reply> {
    let json = serde_json::to_vec(cmd)?;
    let r = ask(conn, |mut c| {
        let json = json.clone();
        async move {
            c.call(pb::PlacementCallRequest {
                command_json: json,
                forwarded: false,
            })
            .await
        }
    })
    .await?;
    let reply: Result<Reply, PlacementError> =
        serde_json::from_slice(&r.json).context("decoding placement's reply")?;
    Ok(reply?)
}

fn show_key(k: &[u8]) -> String {
    String::from_utf8_lossy(k).into_owned()
}

/// The JSON of `placement query --json`: `{"config": N, "stores": [...], "regions": [...]}`.
pub(crate) fn config_json(live: &LiveAnswer) -> serde_json::Value {
    let c = &live.answer.config;
    let stores: Vec<serde_json::Value> = c
        .stores
        .values()
        .map(|s| {
            let l = live.stores.iter().find(|l| l.id == s.id);
            serde_json::json!({
                "id": s.id,
                "state": display_state(s.state, l.is_none_or(|l| l.up)),
                "peer_addr": s.addrs.peer,
                "client_addr": s.addrs.client,
                "resp_addr": s.addrs.resp,
                "labels": s.labels,
                "regions": l.map_or(0, |l| l.region_count),
                "leaders": l.map_or(0, |l| l.leader_count),
                "used_bytes": l.map_or(0, |l| l.used_bytes),
                "capacity_bytes": capacity(s, l),
                "reads_per_sec": l.map_or(0, |l| l.reads_per_sec),
                "writes_per_sec": l.map_or(0, |l| l.writes_per_sec),
            })
        })
        .collect();
    let regions: Vec<serde_json::Value> = c
        .regions
        .values()
        .filter(|r| r.id != placement::hosted_group_id())
        .map(|r| {
            let l = live.regions.iter().find(|l| l.id == r.id);
            serde_json::json!({
                "id": r.id,
                "start_key": show_key(&r.start_key),
                "end_key": r.end_key.as_deref().map(show_key),
                "epoch": {"conf_version": r.conf_version, "version": r.version},
                "replicas": r.replicas.iter().map(|p| serde_json::json!({
                    "store": p.store, "peer": p.peer, "learner": p.learner
                })).collect::<Vec<_>>(),
                "target": r.target,
                "leader_store": l.map(|l| l.leader_store),
                "approximate_keys": l.map(|l| l.approximate_keys),
                "approximate_bytes": l.map(|l| l.approximate_bytes),
                "reads_per_sec": l.map(|l| l.reads_per_sec),
                "writes_per_sec": l.map(|l| l.writes_per_sec),
            })
        })
        .collect();
    serde_json::json!({
        "config": c.number,
        "oldest_config": live.answer.oldest,
        "cluster_id": live.answer.cluster_id,
        "replicas": live.answer.replicas,
        "placement": {
            "leader_store": live.leader_store,
            "replicas": c.regions.get(&placement::hosted_group_id()).map(|r| r.stores()),
        },
        "stores": stores,
        "regions": regions,
        "operators": live.operators,
        "history": live.history,
    })
}

/// How many finished operators `store list` shows (the JSON has all placement keeps).
const SHOWN_HISTORY: usize = 10;

/// One scheduler operator as a line: what, on which region, why, how long, how it ended.
fn show_operator(o: &placement::scheduler::OperatorRecord) -> String {
    let took = match o.finished_ms {
        Some(f) => format!("{:.1}s", f.saturating_sub(o.started_ms) as f64 / 1000.0),
        None => "running".to_string(),
    };
    let outcome = o
        .outcome
        .as_ref()
        .map_or("in flight".to_string(), |x| format!("{x:?}"));
    format!(
        "region {:>16}  {:<28} reason {:<16} {:>8}  {}",
        o.region,
        format!("{:?}", o.action),
        format!("{:?}", o.reason),
        took,
        outcome
    )
}

/// The scheduler's operators in flight and its latest finished ones.
pub(crate) fn print_operators(live: &LiveAnswer) {
    println!(
        "scheduler: {} operator(s) in flight, {} finished kept",
        live.operators.len(),
        live.history.len()
    );
    for o in &live.operators {
        println!("  now   {}", show_operator(o));
    }
    let skip = live.history.len().saturating_sub(SHOWN_HISTORY);
    for o in live.history.iter().skip(skip) {
        println!("  done  {}", show_operator(o));
    }
}

/// A store's capacity in bytes: its latest heartbeat's, else the one placement recorded
/// (0: unknown).
fn capacity(s: &placement::StoreMeta, live: Option<&placement::LiveStore>) -> u64 {
    live.map(|l| l.capacity_bytes)
        .filter(|c| *c != 0)
        .unwrap_or(s.capacity)
}

/// A store's labels as given to `--labels` (`-` when it has none).
fn show_labels(labels: &std::collections::BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A store's state as shown: `Down` when placement has not heard from an `Up` store.
fn display_state(s: StoreState, heard: bool) -> &'static str {
    match s {
        StoreState::Up if !heard => "Down",
        s => s.name(),
    }
}

pub(crate) async fn run_placement(cmd: PlacementCmd) -> Result<()> {
    match cmd {
        PlacementCmd::Query { config, json, conn } => {
            let live = query(&conn, config).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&config_json(&live))?);
            } else {
                print_config(&live);
            }
        }
    }
    Ok(())
}

fn print_config(live: &LiveAnswer) {
    let c = &live.answer.config;
    println!(
        "configuration {} (kept from {}), cluster {}, {} replicas per region, placement led by store {}",
        c.number, live.answer.oldest, live.answer.cluster_id, live.answer.replicas, live.leader_store
    );
    print_stores(live);
    print_operators(live);
    println!(
        "{:>20} {:>24} {:>10} {:>16} target",
        "region", "range", "epoch", "replicas"
    );
    for r in c.regions.values() {
        let name = if r.id == placement::hosted_group_id() {
            "placement".to_string()
        } else {
            r.id.to_string()
        };
        let range = format!(
            "[{:?}, {})",
            show_key(&r.start_key),
            r.end_key
                .as_deref()
                .map_or("+inf".to_string(), |e| format!("{:?}", show_key(e)))
        );
        let reps: Vec<String> = r
            .replicas
            .iter()
            .map(|p| format!("{}{}", p.store, if p.learner { "L" } else { "" }))
            .collect();
        println!(
            "{:>20} {:>24} {:>10} {:>16} {}",
            name,
            if r.id == placement::hosted_group_id() {
                "-".to_string()
            } else {
                range
            },
            format!("{}/{}", r.conf_version, r.version),
            reps.join(","),
            r.target
                .as_ref()
                .map_or("-".to_string(), |t| format!("{t:?}"))
        );
    }
}

fn print_stores(live: &LiveAnswer) {
    println!(
        "{:>6} {:>9} {:>22} {:>22} {:>8} {:>8} {:>12} {:>15} {:>8} {:>8} labels",
        "store",
        "state",
        "peer",
        "client",
        "regions",
        "leaders",
        "bytes",
        "capacity",
        "reads/s",
        "writes/s"
    );
    for s in live.answer.config.stores.values() {
        let l = live.stores.iter().find(|l| l.id == s.id);
        println!(
            "{:>6} {:>9} {:>22} {:>22} {:>8} {:>8} {:>12} {:>15} {:>8} {:>8} {}",
            s.id,
            display_state(s.state, l.is_none_or(|l| l.up)),
            s.addrs.peer,
            s.addrs.client,
            l.map_or(0, |l| l.region_count),
            l.map_or(0, |l| l.leader_count),
            l.map_or(0, |l| l.used_bytes),
            capacity(s, l),
            l.map_or(0, |l| l.reads_per_sec),
            l.map_or(0, |l| l.writes_per_sec),
            show_labels(&s.labels),
        );
    }
}

pub(crate) async fn run_store(cmd: StoreCmd) -> Result<()> {
    match cmd {
        StoreCmd::List { json, conn } => {
            let live = query(&conn, None).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&config_json(&live)["stores"])?
                );
            } else {
                print_stores(&live);
                print_operators(&live);
            }
            Ok(())
        }
        StoreCmd::Drain {
            id,
            wait_secs,
            conn,
        } => {
            let r = call(&conn, &Command::Drain { store: id }).await?;
            println!("store {id} is draining ({r:?})");
            let deadline = Instant::now() + Duration::from_secs(wait_secs);
            loop {
                let live = query(&conn, None).await?;
                let c = &live.answer.config;
                let left = c.regions_on(id);
                match c.stores.get(&id).map(|s| s.state) {
                    Some(StoreState::Removed) => {
                        println!("store {id} is removed (configuration {})", c.number);
                        return Ok(());
                    }
                    None => bail!("store {id} is not in the cluster"),
                    _ => {}
                }
                if Instant::now() >= deadline {
                    bail!("store {id} still holds {left} replicas after {wait_secs} s (the drain goes on)");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// `raftkv region move REGION --to S,...`: sets the target and waits until the region's
/// replicas are exactly there (all voters).
pub(crate) async fn move_region(conn: &Conn, region: u64, to: &str, wait_secs: u64) -> Result<()> {
    let mut stores = Vec::new();
    for s in to.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        stores.push(
            s.parse::<u64>()
                .with_context(|| format!("--to: {s:?} is not a store id"))?,
        );
    }
    let mut want = stores.clone();
    want.sort_unstable();
    let r = call(conn, &Command::Move { region, stores }).await?;
    println!("region {region} moving to stores {want:?} ({r:?})");
    let deadline = Instant::now() + Duration::from_secs(wait_secs);
    loop {
        let live = query(conn, None).await?;
        let Some(l) = live.answer.config.regions.get(&region) else {
            bail!("region {region} is gone (merged?)");
        };
        let mut now = l.stores();
        now.sort_unstable();
        if now == want && l.replicas.iter().all(|p| !p.learner) {
            println!(
                "region {region} is on stores {want:?} (configuration {})",
                live.answer.config.number
            );
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("region {region} is on {now:?}, not yet {want:?}, after {wait_secs} s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_list_shows_labels_and_the_latest_known_capacity() {
        let mut meta = placement::StoreMeta {
            id: 1,
            addrs: placement::StoreAddrs::default(),
            state: StoreState::Up,
            labels: Default::default(),
            capacity: 100,
        };
        assert_eq!(show_labels(&meta.labels), "-");
        meta.labels.insert("zone".into(), "z1".into());
        meta.labels.insert("rack".into(), "r2".into());
        assert_eq!(show_labels(&meta.labels), "rack=r2,zone=z1");
        let mut l = placement::LiveStore::default();
        assert_eq!(capacity(&meta, None), 100, "recorded");
        assert_eq!(
            capacity(&meta, Some(&l)),
            100,
            "a heartbeat that could not tell"
        );
        l.capacity_bytes = 200;
        assert_eq!(capacity(&meta, Some(&l)), 200, "the latest heartbeat's");
    }
}
