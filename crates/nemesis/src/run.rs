//! One nemesis run: start the cluster, start the clients, play the fault schedule for the
//! requested time with a liveness check after every heal, then heal everything, read every key
//! back, and check the history.

use crate::cluster::{Cluster, ClusterError, Placement};
use crate::net::Direction;
use crate::schedule::{AdminAction, Fault, FaultKind, Schedule, Step};
use crate::workload::{Shared, Workload, FINAL_READER_ID};
use lincheck::kv::{KvInput, KvModel, KvOutput};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long the cluster may take to elect every region's leader (start, after healing).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// After each heal, this many operations must complete within [`LIVENESS_TIMEOUT`].
const LIVENESS_OPS: u64 = 5;
const LIVENESS_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a running fault checks that no store crashed.
const POLL: Duration = Duration::from_millis(100);
/// Attempts of each final read (each bounded by the client's op timeout).
const FINAL_READ_ATTEMPTS: u32 = 5;
const FINAL_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed on top of the fault schedule for setup, healing, final reads and the check.
pub const OVERHEAD_BUDGET: Duration = Duration::from_secs(420);
/// Log lines quoted in a report.
const REPORT_LOG_LINES_MAX: usize = 5;
/// Lost writes listed in a failure report.
const REPORT_LOST_MAX: usize = 20;

/// How long after the overall limit the watchdog gives up on the async timeout.
const WATCHDOG_GRACE: Duration = Duration::from_secs(120);

/// Last line of defence behind the async timeout (which cannot fire if the runtime is wedged
/// in a blocking call): a thread that aborts the process when the run overstays. The servers
/// die with it (PR_SET_PDEATHSIG) and the next run removes the namespaces of dead pids.
struct Watchdog {
    disarm: Option<std::sync::mpsc::Sender<()>>,
}

impl Watchdog {
    fn arm(limit: Duration) -> Watchdog {
        let (disarm, disarmed) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = disarmed.recv_timeout(limit) {
                eprintln!("NEMESIS: watchdog: the run exceeded {limit:?}; aborting");
                std::process::abort();
            }
        });
        Watchdog {
            disarm: Some(disarm),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Dropping the sender disconnects the channel, which ends the thread.
        self.disarm.take();
    }
}

/// What to do about network namespaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetnsPolicy {
    /// Fail when they cannot be made (CI sets `RAFTKV_REQUIRE_NETNS=1`).
    Require,
    /// Use them when possible, otherwise say so loudly and run process faults only.
    Prefer,
    /// Process faults only, on 127.0.0.1.
    Off,
}

#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The `raftkv` binary ([`crate::locate_raftkv`]).
    pub bin: PathBuf,
    /// How long the fault schedule runs.
    pub fault_time: Duration,
    pub seed: u64,
    pub netns: NetnsPolicy,
    pub grpc_clients: usize,
    pub resp_clients: usize,
    /// `--snapshot-threshold-entries` of every server; `None` lets the seed pick one of
    /// [`SNAPSHOT_THRESHOLDS`] (small ones make snapshots, compaction and catch-up by
    /// snapshot happen during faults).
    pub snapshot_threshold_entries: Option<u64>,
    /// Canary: gRPC clients read with `get_stale` (a replica's local state). The run is then
    /// expected to FAIL the linearizability check, showing the nemesis catches stale reads.
    pub stale_reads: bool,
}

/// Snapshot thresholds a seed chooses from: every 200 entries, every 2,000, the default.
pub const SNAPSHOT_THRESHOLDS: [u64; 3] = [200, 2_000, 10_000];

/// The snapshot threshold of this run.
pub fn snapshot_threshold(cfg: &RunConfig) -> u64 {
    cfg.snapshot_threshold_entries.unwrap_or_else(|| {
        let pick = crate::schedule::Rng::new(cfg.seed ^ 0x5A17).next_u64();
        SNAPSHOT_THRESHOLDS[(pick % SNAPSHOT_THRESHOLDS.len() as u64) as usize]
    })
}

/// The servers' flags: the run's snapshot threshold, and placement heartbeats and a load
/// split threshold low enough that the automatic scheduler splits hot regions and moves
/// leaders during the run, on top of the schedule's own admin actions (issue 19: scheduling
/// as one more fault).
fn server_args(cfg: &RunConfig) -> Vec<String> {
    [
        "--snapshot-threshold-entries",
        &snapshot_threshold(cfg).to_string(),
        "--placement-heartbeat-ms",
        "500",
        "--region-split-qps",
        "150",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum NemesisError {
    #[error(
        "NEMESIS: network namespaces unavailable ({0}) and RAFTKV_REQUIRE_NETNS=1 requires them"
    )]
    NetnsRequired(String),
    #[error("setup failed: {0}")]
    Setup(String),
    #[error("a store crashed: {0}")]
    StoreCrashed(String),
    #[error("liveness: {0}")]
    Liveness(String),
    #[error("fault injection failed: {0}")]
    Fault(String),
    #[error("acknowledged writes lost: {0}")]
    LostWrite(String),
    #[error("history is not linearizable: {0}")]
    NotLinearizable(String),
    #[error("the checker reached no verdict: {0}")]
    CheckInconclusive(String),
    #[error("the run exceeded its overall time limit of {0:?}")]
    Timeout(Duration),
}

/// A failed run: the error, and what is needed to look into it.
#[derive(Debug)]
pub struct Failure {
    pub error: NemesisError,
    pub seed: u64,
    /// The data directory with every store's full log, kept for examination.
    pub kept_dir: Option<PathBuf>,
    pub log_tails: String,
    pub report: Option<Report>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "NEMESIS FAILED (seed {}): {}", self.seed, self.error)?;
        if let Some(r) = &self.report {
            writeln!(f, "{r}")?;
        }
        if let Some(dir) = &self.kept_dir {
            writeln!(f, "store logs and data kept in {}", dir.display())?;
        }
        writeln!(
            f,
            "rerun the same schedule and client choices (timing differs): NEMESIS_SEED={} cargo test -p nemesis --test smoke -- --nocapture",
            self.seed
        )?;
        write!(f, "{}", self.log_tails)
    }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub namespaces: bool,
    pub netns_unavailable: Option<String>,
    pub elapsed: Duration,
    pub steps: u64,
    /// The fault kinds this run claims to exercise: every kind with namespaces, kills and
    /// pauses without. The schedule opens with one step of each ([`Schedule`]).
    pub claimed: Vec<FaultKind>,
    /// Faults actually executed, per kind: injected, held and healed without error, with
    /// evidence where the OS gives it (a kill counts once the exit status shows SIGKILL and
    /// the store was restarted; a pause once `/proc` showed the store stopped and it was
    /// continued; a slow link once both directions' proxies had the delay).
    pub executed: BTreeMap<FaultKind, u64>,
    pub ops_invoked: usize,
    pub ops_completed: u64,
    pub ops_unknown: u64,
    pub ops_failed_definite: u64,
    pub grpc_completed: u64,
    pub resp_completed: u64,
    /// Writes acknowledged as done (a CAS only if it swapped), per protocol.
    pub grpc_writes_acked: u64,
    pub resp_writes_acked: u64,
    pub keys_checked: usize,
    pub write_once_checked: usize,
    pub liveness_wait_max: Duration,
    pub check_time: Duration,
    /// ERROR lines in the store logs (not a failure by itself: a store may log an error for
    /// a fault it then recovers from), and the first few.
    pub log_errors: usize,
    pub log_error_examples: Vec<String>,
}

impl Report {
    /// How many faults of `kind` were executed.
    pub fn executed(&self, kind: FaultKind) -> u64 {
        self.executed.get(&kind).copied().unwrap_or(0)
    }

    /// Claimed kinds that were not executed even once (empty in a correct run).
    pub fn missing_kinds(&self) -> Vec<FaultKind> {
        self.claimed
            .iter()
            .copied()
            .filter(|&k| self.executed(k) == 0)
            .collect()
    }

    /// Why a run that broke no invariant still tested less than it claims: a fault kind
    /// never executed (of [`Report::claimed`] and of the kinds a run with or without
    /// namespaces must claim, [`FaultKind::claimed`], so an empty claim cannot hide one),
    /// fewer acknowledged writes over gRPC or RESP than `min_grpc_writes` /
    /// `min_resp_writes`, or no register key or write-once put read back at the end. Empty
    /// for a run that counts.
    pub fn shortfalls(&self, min_grpc_writes: u64, min_resp_writes: u64) -> Vec<String> {
        let mut kinds = FaultKind::claimed(self.namespaces);
        for kind in &self.claimed {
            if !kinds.contains(kind) {
                kinds.push(*kind);
            }
        }
        let mut shortfalls: Vec<String> = kinds
            .into_iter()
            .filter(|&k| self.executed(k) == 0)
            .map(|k| format!("claimed fault kind {} was never executed", k.name()))
            .collect();
        for (protocol, acked, min) in [
            ("gRPC", self.grpc_writes_acked, min_grpc_writes),
            ("RESP", self.resp_writes_acked, min_resp_writes),
        ] {
            if acked < min {
                shortfalls.push(format!(
                    "{acked} acknowledged writes over {protocol}, fewer than the floor of {min}"
                ));
            }
        }
        if self.keys_checked == 0 || self.write_once_checked == 0 {
            shortfalls.push(format!(
                "nothing to read back: {} register keys and {} acknowledged write-once puts",
                self.keys_checked, self.write_once_checked
            ));
        }
        shortfalls
    }
}

/// Acknowledged writes a run must reach over each protocol, per client of that protocol and
/// minute of fault time ([`acked_writes_floor`]). Four clients and 60 s make 500, the floor
/// `tests/smoke.rs` asserts; 60 s debug smokes on 2 shared cores acknowledged 2,682 to
/// 15,417 per protocol (docs/TESTING.md, "Results").
pub const MIN_ACKED_WRITES_PER_CLIENT_MINUTE: u64 = 125;

/// The floor of acknowledged writes over one protocol with `clients` clients of it and
/// `fault_time` of faults: [`MIN_ACKED_WRITES_PER_CLIENT_MINUTE`] per client and minute,
/// rounded up (0 without clients).
pub fn acked_writes_floor(clients: usize, fault_time: Duration) -> u64 {
    let per_minute = MIN_ACKED_WRITES_PER_CLIENT_MINUTE * clients as u64;
    let millis = u64::try_from(fault_time.as_millis()).unwrap_or(u64::MAX);
    per_minute.saturating_mul(millis).div_ceil(60_000)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "NEMESIS report: seed {} | {} | {:.1}s | {} steps",
            self.seed,
            if self.namespaces {
                "network namespaces"
            } else {
                "PROCESS FAULTS ONLY"
            },
            self.elapsed.as_secs_f64(),
            self.steps
        )?;
        if let Some(reason) = &self.netns_unavailable {
            writeln!(
                f,
                "  NEMESIS: network namespaces were unavailable ({reason}): no partitions, loss or slow links were tested"
            )?;
        }
        let executed: Vec<String> = FaultKind::ALL
            .iter()
            .filter(|k| self.claimed.contains(k) || self.executed(**k) > 0)
            .map(|k| format!("{} {}", k.name(), self.executed(*k)))
            .collect();
        writeln!(f, "  faults executed: {}", executed.join(", "))?;
        let missing = self.missing_kinds();
        if !missing.is_empty() {
            let names: Vec<&str> = missing.iter().map(|k| k.name()).collect();
            writeln!(f, "  CLAIMED BUT NEVER EXECUTED: {}", names.join(", "))?;
        }
        writeln!(
            f,
            "  ops: {} invoked, {} completed (gRPC {}, RESP {}), {} unknown, {} failed definitely",
            self.ops_invoked,
            self.ops_completed,
            self.grpc_completed,
            self.resp_completed,
            self.ops_unknown,
            self.ops_failed_definite
        )?;
        writeln!(
            f,
            "  acknowledged writes: gRPC {}, RESP {}",
            self.grpc_writes_acked, self.resp_writes_acked
        )?;
        write!(
            f,
            "  final: {} register keys and {} acknowledged write-once keys read back; longest recovery after a heal {:.1}s; check took {:.1}s",
            self.keys_checked,
            self.write_once_checked,
            self.liveness_wait_max.as_secs_f64(),
            self.check_time.as_secs_f64()
        )?;
        write!(f, "\n  store logs: {} ERROR lines", self.log_errors)?;
        for line in &self.log_error_examples {
            write!(f, "\n    {line}")?;
        }
        Ok(())
    }
}

impl From<ClusterError> for NemesisError {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::StoreExited { .. } => NemesisError::StoreCrashed(e.to_string()),
            ClusterError::Fault(m) => NemesisError::Fault(m),
            other => NemesisError::Setup(other.to_string()),
        }
    }
}

/// The longest the fault schedule may run: the requested time, or the opening steps (one of
/// each claimed kind, run whatever the requested time) at their longest, whichever is more;
/// plus one step begun just before the requested time ran out.
pub fn schedule_time_max(fault_time: Duration) -> Duration {
    let step_max =
        Duration::from_millis(crate::schedule::FAULT_MS_MAX + crate::schedule::GAP_MS_MAX)
            + LIVENESS_TIMEOUT;
    let opening_max = step_max * FaultKind::ALL.len() as u32;
    fault_time.max(opening_max) + step_max
}

/// Runs the nemesis with an overall time limit; on failure keeps the logs.
pub async fn run(cfg: RunConfig) -> Result<Report, Box<Failure>> {
    let mut cluster = match start_cluster(&cfg).await {
        Ok(c) => c,
        Err(error) => {
            return Err(Box::new(Failure {
                error,
                seed: cfg.seed,
                kept_dir: None,
                log_tails: String::new(),
                report: None,
            }))
        }
    };
    let mut report = Report {
        seed: cfg.seed,
        namespaces: *cluster.0.placement() == Placement::Namespaces,
        netns_unavailable: cluster.1.clone(),
        ..Default::default()
    };
    let limit = schedule_time_max(cfg.fault_time) + OVERHEAD_BUDGET;
    let _watchdog = Watchdog::arm(limit + WATCHDOG_GRACE);
    let started = Instant::now();
    let outcome = match tokio::time::timeout(limit, drive(&cfg, &mut cluster.0, &mut report)).await
    {
        Ok(r) => r,
        Err(_) => Err(NemesisError::Timeout(limit)),
    };
    report.elapsed = started.elapsed();
    match outcome {
        Ok(()) => Ok(report),
        Err(error) => {
            let log_tails = cluster.0.log_tails();
            let kept_dir = Some(cluster.0.keep_dir());
            Err(Box::new(Failure {
                error,
                seed: cfg.seed,
                kept_dir,
                log_tails,
                report: Some(report),
            }))
        }
    }
}

/// The cluster, and why namespaces were not used if they were wanted but unavailable.
async fn start_cluster(cfg: &RunConfig) -> Result<(Cluster, Option<String>), NemesisError> {
    if cfg.netns == NetnsPolicy::Off {
        return Ok((
            Cluster::start(&cfg.bin, false, &server_args(cfg)).await?,
            None,
        ));
    }
    match Cluster::start(&cfg.bin, true, &server_args(cfg)).await {
        Ok(c) => Ok((c, None)),
        Err(ClusterError::NetnsUnavailable(reason)) => {
            if cfg.netns == NetnsPolicy::Require {
                return Err(NemesisError::NetnsRequired(reason));
            }
            eprintln!();
            eprintln!("##############################################################");
            eprintln!(
                "NEMESIS: network namespaces unavailable ({reason}); running process faults only"
            );
            eprintln!("##############################################################");
            eprintln!();
            Ok((
                Cluster::start(&cfg.bin, false, &server_args(cfg)).await?,
                Some(reason),
            ))
        }
        Err(e) => Err(e.into()),
    }
}

fn describe(step: &Step) -> String {
    let store = step.victim + 1;
    let mut s = if step.target_leader && step.fault != Fault::None {
        "[leader] ".to_string()
    } else {
        String::new()
    };
    s += &match step.fault {
        Fault::KillRestart => format!("SIGKILL store {store}, restart after"),
        Fault::Pause => format!("SIGSTOP store {store}, SIGCONT after"),
        Fault::Partition => format!("partition store {store} from its peers"),
        Fault::PartitionOneWay { inbound: true } => {
            format!("store {store} receives nothing from its peers")
        }
        Fault::PartitionOneWay { inbound: false } => {
            format!("store {store} sends nothing to its peers")
        }
        Fault::Loss { percent } => format!("drop {percent}% of packets into store {store}"),
        Fault::None => "no store fault".to_string(),
        Fault::Admin(AdminAction::Split { letter }) => {
            format!("admin: split the region of {:?}", letter as char)
        }
        Fault::Admin(AdminAction::TransferLeader { letter }) => format!(
            "admin: move the leadership of the region of {:?} to store {store}",
            letter as char
        ),
        Fault::Admin(AdminAction::Merge { letter }) => format!(
            "admin: merge the region of {:?} with its right neighbour",
            letter as char
        ),
        Fault::Admin(AdminAction::MoveReplica { letter }) => format!(
            "admin: remove the replica of the region of {:?} on store {store}, add it back after",
            letter as char
        ),
    };
    if let Some(link) = step.slow_link {
        s += &format!(
            ", slow link {}<->{} +{} ms",
            link.a + 1,
            link.b + 1,
            link.delay.as_millis()
        );
    }
    s + &format!(" for {:.1}s", step.duration.as_secs_f64())
}

/// Runs `raftkv region ARGS...` against the cluster (each waits for its effect); an error
/// names the command and what it printed.
async fn admin_command(cluster: &Cluster, args: Vec<String>) -> Result<(), NemesisError> {
    let bin = cluster.bin().to_path_buf();
    let endpoints = cluster.endpoints().join(",");
    let shown = args.join(" ");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin)
            .arg("region")
            .args(&args)
            .args(["--endpoints", &endpoints])
            .output()
    })
    .await
    .map_err(|e| NemesisError::Fault(format!("raftkv region {shown}: {e}")))?
    .map_err(|e| NemesisError::Fault(format!("raftkv region {shown}: {e}")))?;
    if !out.status.success() {
        return Err(NemesisError::Fault(format!(
            "raftkv region {shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The admin step's part at the start; returns the region whose replica it removed (to be
/// added back by [`heal`]).
async fn apply_admin(
    cluster: &Cluster,
    action: AdminAction,
    victim: usize,
    step_no: u64,
) -> Result<Option<u64>, NemesisError> {
    let store = victim as u64 + 1;
    match action {
        AdminAction::Split { letter } => {
            let key = format!("{}{step_no:04}", letter as char);
            admin_command(cluster, vec!["split".into(), key]).await?;
            Ok(None)
        }
        AdminAction::Merge { letter } => {
            let Some(crate::cluster::RegionView {
                id: left,
                stores,
                end: Some(end),
            }) = cluster.region_holding(&[letter]).await
            else {
                return Ok(None); // the last region: no right neighbour
            };
            let Some(crate::cluster::RegionView {
                id: right,
                stores: right_stores,
                ..
            }) = cluster.region_holding(&end).await
            else {
                return Err(NemesisError::Fault(format!(
                    "no server reports the region holding {:?}",
                    String::from_utf8_lossy(&end)
                )));
            };
            let (mut a, mut b) = (stores, right_stores);
            a.sort_unstable();
            b.sort_unstable();
            if a != b {
                return Ok(None); // replicas on different stores (a move in progress)
            }
            admin_command(
                cluster,
                vec!["merge".into(), left.to_string(), right.to_string()],
            )
            .await?;
            Ok(None)
        }
        AdminAction::TransferLeader { letter } | AdminAction::MoveReplica { letter } => {
            let Some((region, stores)) = cluster.region_of(&[letter]).await else {
                return Err(NemesisError::Fault(format!(
                    "no server reports the region of {:?}",
                    letter as char
                )));
            };
            if !stores.contains(&store) {
                return Ok(None); // no replica there (moved off earlier and not back yet)
            }
            if let AdminAction::TransferLeader { .. } = action {
                admin_command(
                    cluster,
                    vec![
                        "transfer-leader".into(),
                        region.to_string(),
                        store.to_string(),
                    ],
                )
                .await?;
                return Ok(None);
            }
            // A store refuses to remove the replica that leads the region (it could destroy
            // itself before the others learn the change committed): hand the leadership to
            // another replica first, as an operator would. That transfer may fail under the
            // step's own faults (a partitioned replica); then the removal is refused for that
            // reason and the step is skipped, like a replica already moved off.
            if let Some(&other) = stores.iter().find(|&&s| s != store) {
                let _ = admin_command(
                    cluster,
                    vec![
                        "transfer-leader".into(),
                        region.to_string(),
                        other.to_string(),
                    ],
                )
                .await;
            }
            match admin_command(
                cluster,
                vec![
                    "remove-replica".into(),
                    region.to_string(),
                    store.to_string(),
                ],
            )
            .await
            {
                Ok(()) => Ok(Some(region)),
                Err(NemesisError::Fault(m)) if m.contains("leads it") => Ok(None),
                Err(e) => Err(e),
            }
        }
    }
}

/// Injects the step's faults; an error if one could not be injected or shows no effect.
/// Returns what an admin step must undo at the end.
async fn apply(
    cluster: &mut Cluster,
    step: &Step,
    step_no: u64,
) -> Result<Option<u64>, NemesisError> {
    let v = step.victim;
    let mut moved = None;
    match step.fault {
        Fault::Admin(action) => moved = apply_admin(cluster, action, v, step_no).await?,
        Fault::KillRestart => {
            if !cluster.kill(v) {
                return Err(NemesisError::StoreCrashed(format!(
                    "store {} was not running, or exited on its own, when SIGKILL was due",
                    v + 1
                )));
            }
        }
        Fault::Pause => cluster.pause(v)?,
        Fault::Partition | Fault::PartitionOneWay { .. } | Fault::Loss { .. } => {
            let net = cluster.network().ok_or_else(|| {
                NemesisError::Fault("a network fault was drawn without namespaces".into())
            })?;
            match step.fault {
                Fault::Partition => net.partition(v, Direction::Both),
                Fault::PartitionOneWay { inbound: true } => net.partition(v, Direction::Inbound),
                Fault::PartitionOneWay { inbound: false } => net.partition(v, Direction::Outbound),
                Fault::Loss { percent } => net.loss(v, percent),
                _ => Ok(()),
            }
            .map_err(|e| NemesisError::Fault(e.to_string()))?;
        }
        Fault::None => {}
    }
    if let Some(link) = step.slow_link {
        if !cluster.set_link_delay(link.a, link.b, link.delay) {
            return Err(NemesisError::Fault(format!(
                "no proxy took the delay of link {}<->{}",
                link.a + 1,
                link.b + 1
            )));
        }
    }
    Ok(moved)
}

async fn heal(cluster: &mut Cluster, step: &Step, moved: Option<u64>) -> Result<(), NemesisError> {
    let v = step.victim;
    if let Some(region) = moved {
        admin_command(
            cluster,
            vec![
                "add-replica".into(),
                region.to_string(),
                (v + 1).to_string(),
            ],
        )
        .await?;
    }
    match step.fault {
        Fault::Admin(_) => {}
        Fault::KillRestart => cluster.spawn(v)?,
        Fault::Pause => cluster.resume(v)?,
        Fault::Partition | Fault::PartitionOneWay { .. } | Fault::Loss { .. } => {
            if let Some(net) = cluster.network() {
                net.heal().map_err(|e| NemesisError::Fault(e.to_string()))?;
            }
        }
        Fault::None => {}
    }
    if let Some(link) = step.slow_link {
        if !cluster.set_link_delay(link.a, link.b, Duration::ZERO) {
            return Err(NemesisError::Fault(format!(
                "could not remove the delay of link {}<->{}",
                link.a + 1,
                link.b + 1
            )));
        }
    }
    Ok(())
}

/// Waits `duration`, checking every [`POLL`] that no store crashed.
async fn hold(cluster: &mut Cluster, duration: Duration) -> Result<(), NemesisError> {
    let until = Instant::now() + duration;
    while Instant::now() < until {
        cluster.check_alive()?;
        tokio::time::sleep(POLL.min(until.saturating_duration_since(Instant::now()))).await;
    }
    cluster.check_alive()?;
    Ok(())
}

/// Waits (bounded) until `LIVENESS_OPS` more operations complete; returns how long it took.
async fn await_progress(
    cluster: &mut Cluster,
    shared: &Shared,
    what: &str,
) -> Result<Duration, NemesisError> {
    let started = Instant::now();
    let base = shared.counters.completed.load(Ordering::Relaxed);
    while shared.counters.completed.load(Ordering::Relaxed) < base + LIVENESS_OPS {
        cluster.check_alive()?;
        if started.elapsed() > LIVENESS_TIMEOUT {
            return Err(NemesisError::Liveness(format!(
                "fewer than {LIVENESS_OPS} operations completed within {LIVENESS_TIMEOUT:?} after {what}"
            )));
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(started.elapsed())
}

async fn drive(
    cfg: &RunConfig,
    cluster: &mut Cluster,
    report: &mut Report,
) -> Result<(), NemesisError> {
    if !cluster.wait_ready(READY_TIMEOUT).await {
        return Err(NemesisError::Setup(format!(
            "the cluster did not elect leaders within {READY_TIMEOUT:?}"
        )));
    }
    let network_faults = report.namespaces;
    eprintln!(
        "NEMESIS: seed {} | {} | {:?} of faults | {} gRPC + {} RESP clients | snapshot every {} entries | data in {}",
        cfg.seed,
        if network_faults {
            "network namespaces: every fault kind"
        } else {
            "process faults only"
        },
        cfg.fault_time,
        cfg.grpc_clients,
        cfg.resp_clients,
        snapshot_threshold(cfg),
        cluster.dir().display()
    );
    let workload = Workload::start(
        cluster,
        cfg.seed,
        cfg.grpc_clients,
        cfg.resp_clients,
        cfg.stale_reads,
    )
    .await;
    let shared = workload.shared.clone();
    let result = play_schedule(cfg, cluster, &shared, report).await;
    // Stop the clients whatever happened, so their tasks do not outlive the cluster.
    let stopped = workload.stop().await;
    result?;
    let shared = stopped.map_err(NemesisError::Liveness)?;

    cluster.heal_all()?;
    if !cluster.wait_ready(READY_TIMEOUT).await {
        return Err(NemesisError::Liveness(format!(
            "after healing everything the cluster did not elect leaders within {READY_TIMEOUT:?}"
        )));
    }
    cluster.check_alive()?;
    let c = &shared.counters;
    report.ops_invoked = shared.history.len();
    report.ops_completed = c.completed.load(Ordering::Relaxed);
    report.ops_unknown = c.unknown.load(Ordering::Relaxed);
    report.ops_failed_definite = c.failed_definite.load(Ordering::Relaxed);
    report.grpc_completed = c.grpc_completed.load(Ordering::Relaxed);
    report.resp_completed = c.resp_completed.load(Ordering::Relaxed);
    report.grpc_writes_acked = c.grpc_writes_acked.load(Ordering::Relaxed);
    report.resp_writes_acked = c.resp_writes_acked.load(Ordering::Relaxed);
    final_reads(cluster, &shared, report).await?;
    // A panic in any thread is a bug even if the process survived it.
    let (panics, lines) = cluster.log_lines_containing("panicked", REPORT_LOG_LINES_MAX);
    if panics > 0 {
        return Err(NemesisError::StoreCrashed(format!(
            "{panics} panic(s) in the store logs: {}",
            lines.join("\n")
        )));
    }
    let (errors, lines) = cluster.log_lines_containing("ERROR", REPORT_LOG_LINES_MAX);
    report.log_errors = errors;
    report.log_error_examples = lines;
    check_history(&shared, report).await?;
    Ok(())
}

async fn play_schedule(
    cfg: &RunConfig,
    cluster: &mut Cluster,
    shared: &Shared,
    report: &mut Report,
) -> Result<(), NemesisError> {
    let mut schedule = Schedule::new(cfg.seed, cluster.stores(), report.namespaces);
    report.claimed = FaultKind::claimed(report.namespaces);
    let opening: Vec<&str> = schedule.opening().iter().map(|k| k.name()).collect();
    eprintln!(
        "NEMESIS: seed {}: the schedule opens with one step of each claimed kind: {}; then random steps until {:?} have passed",
        cfg.seed,
        opening.join(", "),
        cfg.fault_time
    );
    let started = Instant::now();
    await_progress(cluster, shared, "the start").await?;
    // The opening steps run even past the requested time: every claimed kind, every run.
    while schedule.opening_pending() > 0 || started.elapsed() < cfg.fault_time {
        let mut step = schedule.next_step();
        if step.target_leader {
            let key = [b"a", b"h", b"q"][step.victim % 3];
            if let Some(leader) = cluster.leader_of(key).await {
                step.victim = leader;
            }
        }
        report.steps += 1;
        let what = describe(&step);
        eprintln!(
            "NEMESIS {:6.1}s step {}: {what} (completed ops so far: {})",
            started.elapsed().as_secs_f64(),
            report.steps,
            shared.counters.completed.load(Ordering::Relaxed)
        );
        let completed_before = shared.counters.completed.load(Ordering::Relaxed);
        let unknown_before = shared.counters.unknown.load(Ordering::Relaxed);
        let moved = apply(cluster, &step, report.steps).await?;
        let held = hold(cluster, step.duration).await;
        // Heal even when a store crashed meanwhile, then report the crash.
        heal(cluster, &step, moved).await?;
        held?;
        for kind in step.kinds() {
            *report.executed.entry(kind).or_default() += 1;
        }
        let waited = await_progress(cluster, shared, &format!("healing ({what})")).await?;
        eprintln!(
            "NEMESIS          healed: {} ops completed during the fault, {} unknown; {} more within {:.2}s of healing",
            shared.counters.completed.load(Ordering::Relaxed) - completed_before,
            shared.counters.unknown.load(Ordering::Relaxed) - unknown_before,
            LIVENESS_OPS,
            waited.as_secs_f64()
        );
        report.liveness_wait_max = report.liveness_wait_max.max(waited);
        hold(cluster, step.gap).await?;
    }
    Ok(())
}

/// Reads every key the run touched, linearizably, into the history; checks every
/// acknowledged write-once put.
async fn final_reads(
    cluster: &Cluster,
    shared: &Shared,
    report: &mut Report,
) -> Result<(), NemesisError> {
    let cfg = client::ClientConfig {
        op_timeout: FINAL_READ_TIMEOUT,
        ..Default::default()
    };
    let mut cl = client::Client::with_config(cluster.endpoints(), cfg)
        .await
        .map_err(|e| NemesisError::Setup(format!("final reader: {e}")))?;
    let registers: Vec<Vec<u8>> = shared
        .register_keys
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .cloned()
        .collect();
    let write_once = shared
        .write_once_acked
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    // What the final read of each acknowledged write-once put returned, in its order.
    let mut read_back = Vec::with_capacity(write_once.len());
    let keys = registers
        .iter()
        .map(|k| (k, false))
        .chain(write_once.iter().map(|(k, _)| (k, true)));
    for (key, is_write_once) in keys {
        let mut value = None;
        for _ in 0..FINAL_READ_ATTEMPTS {
            let id = shared
                .history
                .invoke(FINAL_READER_ID, KvInput::Get { key: key.clone() });
            match cl.get(key).await {
                Ok(v) => {
                    shared.history.complete(id, KvOutput::Get(v.clone()));
                    value = Some(v);
                    break;
                }
                Err(_) => shared.history.fail_definite(id),
            }
        }
        let Some(value) = value else {
            return Err(NemesisError::Liveness(format!(
                "the final read of {} failed {FINAL_READ_ATTEMPTS} times after healing",
                String::from_utf8_lossy(key)
            )));
        };
        if is_write_once {
            read_back.push(value);
        }
    }
    report.keys_checked = registers.len();
    report.write_once_checked = write_once.len();
    check_write_once_read_back(&write_once, &read_back)
}

/// The lost-write check: `read_back[i]` is what the final (linearizable, after healing) read
/// of `acked[i]`'s key returned. A write-once key is written by one put only, so anything
/// but its acknowledged value, absent or another value, is an acknowledged write lost.
pub fn check_write_once_read_back(
    acked: &[(Vec<u8>, Vec<u8>)],
    read_back: &[Option<Vec<u8>>],
) -> Result<(), NemesisError> {
    if acked.len() != read_back.len() {
        return Err(NemesisError::CheckInconclusive(format!(
            "{} acknowledged write-once puts but {} final reads of them",
            acked.len(),
            read_back.len()
        )));
    }
    let mut lost = Vec::new();
    for ((key, expected), value) in acked.iter().zip(read_back) {
        if value.as_ref() != Some(expected) {
            lost.push(format!(
                "{} = {:?} acknowledged, read back {:?}",
                String::from_utf8_lossy(key),
                String::from_utf8_lossy(expected),
                value.as_deref().map(String::from_utf8_lossy)
            ));
        }
    }
    if !lost.is_empty() {
        let n = lost.len();
        lost.truncate(REPORT_LOST_MAX);
        return Err(NemesisError::LostWrite(format!(
            "{n} of {} write-once keys: {}",
            acked.len(),
            lost.join("; ")
        )));
    }
    Ok(())
}

async fn check_history(shared: &Shared, report: &mut Report) -> Result<(), NemesisError> {
    let ops = shared.history.operations();
    let started = Instant::now();
    // No wall-clock limit: a verdict must not depend on the machine's speed. The state
    // budget bounds the work, and key rotation bounds every key's history (see below).
    let options = lincheck::CheckOptions {
        max_states_per_partition: MAIN_CHECK_MAX_STATES,
        max_duration: None,
    };
    let verdict = tokio::task::spawn_blocking(move || lincheck::check(&KvModel, &ops, &options))
        .await
        .map_err(|e| NemesisError::CheckInconclusive(format!("checker panicked: {e}")))?
        .map_err(|e| NemesisError::CheckInconclusive(format!("malformed history: {e}")))?;
    report.check_time = started.elapsed();
    match verdict {
        lincheck::CheckResult::Ok => check_catches_forged_stale_read(shared.history.operations()),
        lincheck::CheckResult::Illegal(r) => Err(NemesisError::NotLinearizable(format!(
            "{}: {}",
            r.partition, r.detail
        ))),
        unknown @ lincheck::CheckResult::Unknown { .. } => {
            Err(NemesisError::CheckInconclusive(unknown.to_string()))
        }
    }
}

impl NetnsPolicy {
    /// `RAFTKV_REQUIRE_NETNS=1` requires namespaces (CI); `NEMESIS_NETNS=off` disables them;
    /// otherwise they are preferred.
    pub fn from_env() -> NetnsPolicy {
        if std::env::var("RAFTKV_REQUIRE_NETNS").is_ok_and(|v| v == "1") {
            NetnsPolicy::Require
        } else if std::env::var("NEMESIS_NETNS").is_ok_and(|v| v == "off") {
            NetnsPolicy::Off
        } else {
            NetnsPolicy::Prefer
        }
    }
}

/// State budget per key of the main check. No key's history is longer than
/// [`crate::workload::OPS_PER_KEY`] operations plus its final read (keys rotate by operation
/// count), whatever the machine's speed; such histories need far less than this, which
/// `the_state_budget_holds_every_history_key_rotation_allows` shows with a 16x margin.
const MAIN_CHECK_MAX_STATES: u64 = 4_000_000;

/// State budget of the forged-read check (10× the default: proving illegality is exhaustive).
const FORGED_CHECK_MAX_STATES: u64 = 10_000_000;

/// Shows on this very history that the check can fail: a read forged after the final reads,
/// returning an acknowledged value that the final read proves overwritten, must be flagged.
/// A check that passed a history it could not see would fail here.
fn check_catches_forged_stale_read(
    mut ops: Vec<lincheck::Operation<KvInput, KvOutput>>,
) -> Result<(), NemesisError> {
    let last_time = ops
        .iter()
        .map(|o| o.return_time.unwrap_or(o.call))
        .max()
        .unwrap_or(0);
    // One pass each for the final reads and the per-key operation counts: scanning the whole
    // history per acknowledged put was quadratic (minutes for a 600 s soak's ~400k operations).
    let mut final_values: std::collections::HashMap<&[u8], Option<Vec<u8>>> =
        std::collections::HashMap::new();
    let mut ops_per_key: std::collections::HashMap<&[u8], usize> = std::collections::HashMap::new();
    for o in &ops {
        *ops_per_key.entry(o.input.key()).or_default() += 1;
        if o.client_id == FINAL_READER_ID {
            if let Some(KvOutput::Get(v)) = &o.output {
                // Later final reads of a key overwrite earlier ones (the last one counts).
                final_values.insert(o.input.key(), v.clone());
            }
        }
    }
    // Of the keys with an acknowledged, overwritten put, forge on the one with the shortest
    // history: proving a history illegal explores every order, and a long, contended key can
    // exhaust the checker's state budget (seen in CI: no verdict on a key of a fast run).
    let forged = ops
        .iter()
        .filter_map(|o| match (&o.input, &o.output) {
            (KvInput::Put { key, value }, Some(KvOutput::Put)) => {
                let last = final_values.get(key.as_slice())?;
                (last.as_ref() != Some(value)).then(|| (key.clone(), value.clone()))
            }
            _ => None,
        })
        .min_by_key(|(key, _)| ops_per_key.get(key.as_slice()).copied().unwrap_or(0));
    drop(final_values);
    drop(ops_per_key);
    let Some((key, stale)) = forged else {
        // No acknowledged put was overwritten (a run too short to matter): nothing to forge.
        return Ok(());
    };
    ops.retain(|o| o.input.key() == key.as_slice());
    ops.push(lincheck::Operation::completed(
        FINAL_READER_ID + 1,
        KvInput::Get { key: key.clone() },
        last_time + 1,
        KvOutput::Get(Some(stale)),
        last_time + 2,
    ));
    let options = lincheck::CheckOptions {
        max_states_per_partition: FORGED_CHECK_MAX_STATES,
        max_duration: None,
    };
    match lincheck::check(&KvModel, &ops, &options) {
        Ok(lincheck::CheckResult::Illegal(_)) => Ok(()),
        other => Err(NemesisError::CheckInconclusive(format!(
            "the checker did not flag a forged stale read of {}: {other:?}",
            String::from_utf8_lossy(&key)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::OPS_PER_KEY;

    fn pairs(entries: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        entries
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn the_write_once_read_back_passes_when_every_acknowledged_put_is_read_back() {
        let acked = pairs(&[("w1", "a"), ("w2", "b"), ("w3", "c")]);
        let read_back: Vec<Option<Vec<u8>>> = acked.iter().map(|(_, v)| Some(v.clone())).collect();
        check_write_once_read_back(&acked, &read_back).expect("nothing lost");
        check_write_once_read_back(&[], &[]).expect("nothing acknowledged, nothing lost");
    }

    /// A planted lost write (the key reads back absent) and a planted overwrite (another
    /// value) must each fail the check, naming the key.
    #[test]
    fn the_write_once_read_back_catches_a_planted_lost_write() {
        let acked = pairs(&[("w1", "a"), ("w2", "b"), ("w3", "c")]);
        let lost = vec![Some(b"a".to_vec()), None, Some(b"c".to_vec())];
        match check_write_once_read_back(&acked, &lost) {
            Err(NemesisError::LostWrite(m)) => {
                assert!(m.starts_with("1 of 3 write-once keys"), "{m}");
                assert!(m.contains("w2"), "{m}");
            }
            other => panic!("a lost write passed the check: {other:?}"),
        }
        let overwritten = vec![
            Some(b"a".to_vec()),
            Some(b"b".to_vec()),
            Some(b"x".to_vec()),
        ];
        match check_write_once_read_back(&acked, &overwritten) {
            Err(NemesisError::LostWrite(m)) => assert!(m.contains("w3"), "{m}"),
            other => panic!("an overwritten write-once key passed the check: {other:?}"),
        }
        assert!(
            check_write_once_read_back(&acked, &lost[..2]).is_err(),
            "a missing final read passed the check"
        );
    }

    /// The binary's floor matches the smoke test's: 500 for 4 clients and 60 s.
    #[test]
    fn the_acknowledged_write_floor_scales_with_clients_and_fault_time() {
        assert_eq!(acked_writes_floor(4, Duration::from_secs(60)), 500);
        assert_eq!(acked_writes_floor(4, Duration::from_secs(600)), 5_000);
        assert_eq!(acked_writes_floor(1, Duration::from_secs(1)), 3);
        assert_eq!(acked_writes_floor(0, Duration::from_secs(600)), 0);
    }

    fn counted_report() -> Report {
        let claimed = FaultKind::claimed(true);
        Report {
            namespaces: true,
            executed: claimed.iter().map(|&k| (k, 1)).collect(),
            claimed,
            grpc_writes_acked: 500,
            resp_writes_acked: 500,
            keys_checked: 12,
            write_once_checked: 40,
            ..Default::default()
        }
    }

    #[test]
    fn a_run_that_tested_less_than_it_claims_has_shortfalls() {
        assert_eq!(counted_report().shortfalls(500, 500), Vec::<String>::new());

        let mut no_loss = counted_report();
        no_loss.executed.remove(&FaultKind::Loss);
        assert_eq!(no_loss.missing_kinds(), vec![FaultKind::Loss]);
        let shortfalls = no_loss.shortfalls(500, 500);
        assert_eq!(shortfalls.len(), 1, "{shortfalls:?}");
        assert!(shortfalls[0].contains("loss"), "{shortfalls:?}");

        // An empty claim does not hide a kind a run with namespaces must execute.
        let mut no_claim = counted_report();
        no_claim.claimed.clear();
        no_claim.executed.remove(&FaultKind::KillRestart);
        assert!(no_claim.missing_kinds().is_empty());
        assert_eq!(no_claim.shortfalls(500, 500).len(), 1);

        let mut few_writes = counted_report();
        few_writes.resp_writes_acked = 499;
        let shortfalls = few_writes.shortfalls(500, 500);
        assert_eq!(shortfalls.len(), 1, "{shortfalls:?}");
        assert!(shortfalls[0].contains("RESP"), "{shortfalls:?}");

        let mut nothing_read = counted_report();
        nothing_read.write_once_checked = 0;
        assert_eq!(nothing_read.shortfalls(500, 500).len(), 1);
    }

    /// The checker's verdict must not depend on the machine: with no wall-clock limit, the
    /// state budget alone bounds the search, so it must hold every key history the workload
    /// can make. A key gets at most `OPS_PER_KEY` operations plus its final reads, from at
    /// most 9 clients (8 workers and the final reader), each with one operation in flight.
    /// Generated histories far harsher than the real ones (every operation long and
    /// overlapping, 5 % unknown writes where runs see about 0.1 %) fit in a sixteenth of it
    /// (the worst of 30 seeds needed 128k states, of 4M).
    #[test]
    fn the_state_budget_holds_every_history_key_rotation_allows() {
        let options = lincheck::CheckOptions {
            max_states_per_partition: MAIN_CHECK_MAX_STATES / 16,
            max_duration: None,
        };
        for seed in 0..20 {
            let workload = lincheck::testing::KvWorkload {
                seed,
                op_count: OPS_PER_KEY as usize + FINAL_READ_ATTEMPTS as usize,
                key_count: 1,
                client_count: 9,
                unknown_per_mille: 50,
                value_domain: None,
                op_duration_max: 200,
            };
            let history = lincheck::testing::generate_kv_history(&workload);
            let verdict = lincheck::check(&KvModel, &history, &options).unwrap();
            assert!(verdict.is_ok(), "seed {seed}: {verdict}");
        }
    }
}
