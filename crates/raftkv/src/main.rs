//! `raftkv`: one binary for a RaftKV store server, a local playground cluster, a CLI client
//! and cluster status. Run `raftkv --help`.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

mod placement_cmd;
mod playground;
mod region_cmd;
mod scheduling;

#[derive(Parser)]
#[command(
    name = "raftkv",
    version,
    about = "RaftKV: a replicated, strongly consistent key-value store"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one store (one process, one data directory).
    Server(Box<ServerArgs>),
    /// Run a local cluster of N stores (default 3) as child processes on 127.0.0.1 until
    /// Ctrl-C.
    Playground(playground::PlaygroundArgs),
    /// Read a key (linearizable unless --stale).
    Get {
        key: String,
        #[arg(long)]
        stale: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Write a key.
    Put {
        key: String,
        value: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a key.
    Del {
        key: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Append to a key's value.
    Append {
        key: String,
        value: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Compare-and-swap: set KEY to NEW if it holds --expected (or is absent with --expect-absent).
    Cas {
        key: String,
        new: String,
        #[arg(long, conflicts_with = "expect_absent")]
        expected: Option<String>,
        #[arg(long)]
        expect_absent: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// List keys from START (within its region).
    Scan {
        start: String,
        #[arg(long)]
        end: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show stores, regions, leaders and applied indexes.
    Status {
        /// Print one JSON object for scripts instead of tables: `{"stores": [...],
        /// "regions": [...]}`, each region once, as its leader describes it.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Reshape regions at runtime: split, add or remove a replica, transfer leadership.
    Region {
        #[command(subcommand)]
        cmd: region_cmd::RegionCmd,
    },
    /// The placement service: configurations of stores and regions.
    Placement {
        #[command(subcommand)]
        cmd: placement_cmd::PlacementCmd,
    },
    /// Stores: list them, drain one out of the cluster.
    Store {
        #[command(subcommand)]
        cmd: placement_cmd::StoreCmd,
    },
    /// Load generator: a workload against RaftKV (gRPC or its Redis port), redis-server or
    /// etcd; prints throughput and latency percentiles (HDR histogram), optionally as JSON.
    Bench(BenchArgs),
    /// The disk's raw append + fdatasync latency (the floor under any durable write).
    DiskProbe {
        /// Directory on the disk to measure (a temporary file is written and removed).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        #[arg(long, default_value_t = 2000)]
        syncs: u64,
        #[arg(long, default_value_t = 4096)]
        record_bytes: usize,
        /// Also write the result as JSON to this file ("-" = stdout).
        #[arg(long)]
        json: Option<String>,
    },
}

#[derive(clap::Args)]
struct BenchArgs {
    /// raftkv (gRPC), resp (RaftKV's Redis port or redis-server) or etcd.
    #[arg(long, default_value = "raftkv")]
    target: bench::TargetKind,
    /// host:port,... of the target. Default: raftkv $RAFTKV_ENDPOINTS or the playground's
    /// gRPC ports; resp the playground's Redis ports; etcd 127.0.0.1:2379.
    #[arg(long)]
    endpoints: Option<String>,
    /// write, read, ycsb-a (50/50), ycsb-b (95/5 reads/writes), load (each key once).
    #[arg(long, default_value = "write")]
    workload: bench::Workload,
    /// uniform or zipfian (YCSB scrambled zipfian, theta 0.99).
    #[arg(long, default_value = "uniform", value_parser = parse_distribution)]
    distribution: bench::Distribution,
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Concurrent clients, each with one operation in flight.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// TCP connections the clients share (0 = one per client).
    #[arg(long, default_value_t = 0)]
    connections: usize,
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Stop after this many operations instead of after --duration-secs.
    #[arg(long)]
    ops: Option<u64>,
    /// Total operations per second (open loop; latency counts from the intended start).
    #[arg(long)]
    rate: Option<u64>,
    /// Do not write the keys before a workload that reads.
    #[arg(long)]
    no_preload: bool,
    /// Local reads: RaftKV stale reads, etcd serializable ranges.
    #[arg(long)]
    stale: bool,
    /// Name for the result row (default: the target).
    #[arg(long)]
    label: Option<String>,
    /// Also write the result as JSON to this file ("-" = stdout).
    #[arg(long)]
    json: Option<String>,
    #[arg(long)]
    no_progress: bool,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Exit non-zero (after printing the result) when more than this many operations
    /// failed. The default 0 makes any error reply a failure.
    #[arg(long, default_value_t = 0)]
    max_errors: u64,
}

fn parse_distribution(s: &str) -> Result<bench::Distribution, String> {
    match s {
        "uniform" => Ok(bench::Distribution::Uniform),
        "zipfian" | "zipf" => Ok(bench::Distribution::Zipfian),
        other => Err(format!(
            "unknown distribution {other:?}: use uniform or zipfian"
        )),
    }
}

#[derive(clap::Args)]
pub(crate) struct Conn {
    /// Client addresses of the servers (host:port,...). Default: $RAFTKV_ENDPOINTS, else the
    /// playground's default ports.
    #[arg(
        long,
        env = "RAFTKV_ENDPOINTS",
        default_value = "127.0.0.1:17101,127.0.0.1:17102,127.0.0.1:17103"
    )]
    pub(crate) endpoints: String,
}

impl Conn {
    /// The endpoints, in the order given.
    pub(crate) fn list(&self) -> Vec<String> {
        self.endpoints
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }
}

#[derive(clap::Args, Default)]
struct ServerArgs {
    /// TOML file with any of the options below (flags win over the file).
    #[arg(long)]
    config: Option<PathBuf>,
    /// This store's id, 1..=16777215 (2^24 - 1: allocated region and peer ids are
    /// `store << 40 | n`).
    #[arg(long)]
    id: Option<u64>,
    /// Data directory (created if missing).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address for other stores (Raft traffic and forwarded requests).
    #[arg(long)]
    peer_addr: Option<String>,
    /// Address for clients (gRPC Kv service).
    #[arg(long)]
    client_addr: Option<String>,
    /// Address for the Prometheus /metrics endpoint.
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Address for the Redis protocol (RESP2) front end; off when not given.
    #[arg(long)]
    resp_addr: Option<String>,
    /// How linearizable reads are confirmed: lease (default: the leader serves while its
    /// lease holds, falling back to ReadIndex) or safe (ReadIndex for every read).
    #[arg(long)]
    read_mode: Option<String>,
    /// Password RESP clients must give with AUTH (default: none). Prefer the config file or
    /// the environment over the command line, which other local users can read.
    #[arg(long, env = "RAFTKV_RESP_PASSWORD")]
    resp_password: Option<String>,
    /// Every store's peer address, etcd style: 1=127.0.0.1:17001,2=127.0.0.1:17002,...
    #[arg(long)]
    initial_cluster: Option<String>,
    /// Keys at which to pre-split the key space into regions at bootstrap, e.g. g,p
    #[arg(long)]
    split_keys: Option<String>,
    /// Milliseconds per Raft tick (election timeout = 20 ticks).
    #[arg(long)]
    tick_ms: Option<u64>,
    /// Applied entries kept in a region's log before it is snapshotted and compacted.
    #[arg(long)]
    snapshot_threshold_entries: Option<u64>,
    /// Payload bytes applied since a region's last snapshot before it snapshots again.
    #[arg(long)]
    snapshot_threshold_bytes: Option<u64>,
    /// Size of the log's segment files (default 16 MiB). The log is kept within about 8
    /// segments: past that, the store reclaims space (copies small regions' entries forward,
    /// snapshots larger ones) and deletes old segments.
    #[arg(long)]
    log_segment_bytes: Option<u64>,
    /// Threads serving network I/O (tokio workers; default: one per CPU). The store thread
    /// and the log writer are extra. Lower it when several servers share a machine.
    #[arg(long)]
    worker_threads: Option<usize>,
    /// How often the store reports to placement, in milliseconds (default 2000); a store
    /// unheard of for five intervals shows as Down.
    #[arg(long)]
    placement_heartbeat_ms: Option<u64>,
    /// Join a running cluster through any member's --peer-addr instead of bootstrapping
    /// one: the store gets its id from placement (kept in the data dir; --id is then
    /// optional) and its replicas from placement's rebalancing. No --initial-cluster.
    #[arg(long)]
    join: Option<String>,
    /// Replicas of each region and of the placement group, at bootstrap (default 3; all
    /// stores when fewer).
    #[arg(long)]
    replicas: Option<u64>,
    /// The cluster's id, checked when a store joins and on every store-to-store connection
    /// (default: derived from --initial-cluster and --split-keys).
    #[arg(long)]
    cluster_id: Option<u64>,
    /// This store's labels for placement, e.g. zone=z1,rack=r2: at most 16, each key and
    /// value 1-64 of A-Z a-z 0-9 . _ - (shown by `raftkv store list`).
    #[arg(long)]
    labels: Option<String>,
    /// The capacity this store reports to placement, in bytes (default: the size of the
    /// filesystem holding --data-dir).
    #[arg(long)]
    capacity_bytes: Option<u64>,
    #[command(flatten)]
    scheduling: scheduling::SchedulingArgs,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    id: Option<u64>,
    data_dir: Option<PathBuf>,
    peer_addr: Option<String>,
    client_addr: Option<String>,
    metrics_addr: Option<String>,
    resp_addr: Option<String>,
    resp_password: Option<String>,
    read_mode: Option<String>,
    initial_cluster: Option<String>,
    split_keys: Option<Vec<String>>,
    tick_ms: Option<u64>,
    snapshot_threshold_entries: Option<u64>,
    snapshot_threshold_bytes: Option<u64>,
    log_segment_bytes: Option<u64>,
    worker_threads: Option<usize>,
    replicas: Option<u64>,
    cluster_id: Option<u64>,
    join: Option<String>,
    placement_heartbeat_ms: Option<u64>,
    /// As the flag: `labels = "zone=z1,rack=r2"`.
    labels: Option<String>,
    capacity_bytes: Option<u64>,
    /// The scheduler's settings, as the flags: `[scheduling]` with `region_max_bytes = ...`.
    #[serde(default)]
    scheduling: scheduling::SchedulingArgs,
}

/// Fixes glibc's mmap threshold. By default glibc raises it to the size of the largest
/// mapped block freed so far (up to 32 MiB): after the first region snapshot of tens of MiB
/// is freed, every later one is carved from the heap arenas, which keep those pages and
/// fragment around the long-lived table entries. Measured (docs/BENCHMARKS.md, "Memory"):
/// RSS per store after loading 1M keys x 100 B fell from 267-268 to 189-193 MiB. Other
/// allocators (musl) have no such knob and need none. An operator's own setting
/// (`MALLOC_MMAP_THRESHOLD_` or `GLIBC_TUNABLES`) is left alone.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none()
        && std::env::var_os("GLIBC_TUNABLES").is_none()
    {
        /// Allocations of this size and larger get their own mapping, returned when freed.
        const MALLOC_MMAP_THRESHOLD_BYTES: libc::c_int = 1 << 20;
        // SAFETY: mallopt only changes allocator parameters; called before any thread starts.
        let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD_BYTES) };
        if ok != 1 {
            eprintln!("warning: mallopt(M_MMAP_THRESHOLD) failed; memory use may be higher");
        }
    }
}

fn main() -> Result<()> {
    tune_malloc();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: in a log file or a pipe (the playground reads its
        // stores' logs through one) they are noise.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Cmd::Server(a) = &cli.command {
        if let Some(n) = worker_threads(a)? {
            builder.worker_threads(n);
        }
    }
    let rt = builder
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async move {
        match cli.command {
            Cmd::Server(a) => run_server(*a).await,
            Cmd::Playground(a) => playground::run(a).await,
            Cmd::Bench(a) => run_bench(a).await,
            Cmd::DiskProbe {
                dir,
                syncs,
                record_bytes,
                json,
            } => {
                let r = bench::disk::probe(&dir, syncs, record_bytes).map_err(anyhow::Error::msg)?;
                println!(
                    "disk {}: {} x ({} B append + fdatasync): {:.0}/s, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
                    r.dir, r.syncs, r.record_bytes, r.syncs_per_sec, r.latency.p50_ms, r.latency.p99_ms, r.latency.max_ms
                );
                write_json(json.as_deref(), &serde_json::to_string_pretty(&r)?)
            }
            Cmd::Region { cmd } => region_cmd::run(cmd).await,
            Cmd::Placement { cmd } => placement_cmd::run_placement(cmd).await,
            Cmd::Store { cmd } => placement_cmd::run_store(cmd).await,
            other => run_client(other).await,
        }
    })
}

/// Most I/O threads a server may be given.
const MAX_WORKER_THREADS: usize = 1024;

/// The server's I/O thread count from the flag or the config file (read before the runtime
/// starts, so the file is read twice; it is small).
fn worker_threads(a: &ServerArgs) -> Result<Option<usize>> {
    let from_file = match &a.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str::<FileConfig>(&text)
                .with_context(|| format!("parsing {}", p.display()))?
                .worker_threads
        }
        None => None,
    };
    match a.worker_threads.or(from_file) {
        Some(n) if n == 0 || n > MAX_WORKER_THREADS => {
            anyhow::bail!("worker_threads must be between 1 and {MAX_WORKER_THREADS}, got {n}")
        }
        n => Ok(n),
    }
}

/// How long `--join` keeps trying to reach the cluster and get an id.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a joined store's restart waits for placement's list of stores before starting
/// with the addresses it kept.
const RESTART_QUERY_WAIT: Duration = Duration::from_secs(5);

async fn run_server(a: ServerArgs) -> Result<()> {
    let file: FileConfig = match &a.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))?
        }
        None => FileConfig::default(),
    };
    let data_dir = a
        .data_dir
        .or(file.data_dir)
        .context("--data-dir is required")?;
    let peer_addr = a
        .peer_addr
        .or(file.peer_addr)
        .context("--peer-addr is required")?;
    let client_addr = a
        .client_addr
        .or(file.client_addr)
        .context("--client-addr is required")?;
    let metrics_addr = a.metrics_addr.or(file.metrics_addr);
    let resp_addr = a.resp_addr.or(file.resp_addr);
    let join = a.join.or(file.join);
    let want_id = a.id.or(file.id);
    let want_cluster = a.cluster_id.or(file.cluster_id);
    // Checked before joining: a store must not join with labels it cannot start with.
    let labels = match a.labels.or(file.labels) {
        Some(l) => server::config::parse_labels(&l).map_err(anyhow::Error::msg)?,
        None => Default::default(),
    };
    let capacity_bytes = a.capacity_bytes.or(file.capacity_bytes);
    if capacity_bytes == Some(0) {
        bail!("--capacity-bytes must be at least 1 (leave it out to report the filesystem's size)");
    }
    // Bound before anything else: a store must not join (or bootstrap) with an address it
    // cannot serve on.
    let peer = tokio::net::TcpListener::bind(&peer_addr)
        .await
        .with_context(|| format!("binding --peer-addr {peer_addr}"))?;
    let client = tokio::net::TcpListener::bind(&client_addr)
        .await
        .with_context(|| format!("binding --client-addr {client_addr}"))?;
    let (id, initial_cluster, joined) = match &join {
        Some(seed) => {
            let addrs = placement::StoreAddrs {
                peer: server::heartbeat::reachable(&peer.local_addr()?.to_string()),
                client: server::heartbeat::reachable(&client.local_addr()?.to_string()),
                resp: resp_addr.clone().unwrap_or_default(),
            };
            if addrs.peer.is_empty() || addrs.client.is_empty() {
                bail!("--peer-addr and --client-addr must be addresses other stores and clients can reach, not a wildcard such as 0.0.0.0");
            }
            let restart = server::identity::load(&data_dir)
                .map_err(anyhow::Error::msg)?
                .is_some();
            if want_id.is_some()
                && server::identity::load(&data_dir)
                    .map_err(anyhow::Error::msg)?
                    .is_none()
            {
                bail!("--id comes from placement when a new store joins: leave it out");
            }
            let capacity =
                capacity_bytes.unwrap_or_else(|| server::disk::filesystem_bytes(&data_dir));
            let identity = server::join::join(
                seed,
                &data_dir,
                addrs.clone(),
                labels.clone(),
                capacity,
                want_cluster,
                JOIN_TIMEOUT,
            )
            .await
            .map_err(anyhow::Error::msg)?;
            if let Some(w) = want_id {
                if w != identity.store_id {
                    bail!(
                        "{} holds store {}, not --id {w}",
                        data_dir.display(),
                        identity.store_id
                    );
                }
            }
            // A restart must not depend on placement being up (its quorum may be on stores
            // restarting too): the addresses kept in the data dir serve until it answers.
            let wait = if restart {
                RESTART_QUERY_WAIT
            } else {
                JOIN_TIMEOUT
            };
            let peers = match server::join::query(seed, std::time::Instant::now() + wait).await {
                Ok(live) => {
                    let peers = server::join::peers(&live);
                    if !peers.iter().any(|(s, _)| *s == identity.store_id) {
                        bail!(
                            "store {} was removed from the cluster; start a new store (an empty --data-dir) to join again",
                            identity.store_id
                        );
                    }
                    peers
                }
                Err(e) if restart => {
                    tracing::warn!("placement did not answer ({e}); starting with the store addresses kept in the data dir");
                    vec![(identity.store_id, addrs.peer.clone())]
                }
                Err(e) => bail!(e),
            };
            tracing::info!(
                store = identity.store_id,
                cluster = identity.cluster_id,
                "joined the cluster through {seed}"
            );
            (identity.store_id, peers, true)
        }
        None => {
            let id = want_id.context("--id is required (or --join to join a running cluster)")?;
            let cluster = a.initial_cluster.or(file.initial_cluster).context(
                "--initial-cluster is required (1=host:port,2=host:port,...), or --join PEER_ADDR",
            )?;
            let initial_cluster =
                server::parse_initial_cluster(&cluster).map_err(anyhow::Error::msg)?;
            (id, initial_cluster, false)
        }
    };
    let mut cfg = server::ServerConfig::new(id, data_dir, initial_cluster);
    cfg.joined = joined;
    cfg.labels = labels;
    cfg.capacity_bytes = capacity_bytes;
    cfg.split_keys = match a.split_keys {
        Some(s) => s
            .split(',')
            .filter(|k| !k.is_empty())
            .map(|k| k.as_bytes().to_vec())
            .collect(),
        None => file
            .split_keys
            .unwrap_or_default()
            .into_iter()
            .map(|k| k.into_bytes())
            .collect(),
    };
    if let Some(t) = a.tick_ms.or(file.tick_ms) {
        cfg.tick_ms = t;
    }
    if let Some(t) = a
        .snapshot_threshold_entries
        .or(file.snapshot_threshold_entries)
    {
        cfg.snapshot_threshold_entries = t;
    }
    if let Some(t) = a.snapshot_threshold_bytes.or(file.snapshot_threshold_bytes) {
        cfg.snapshot_threshold_bytes = t;
    }
    if let Some(b) = a.log_segment_bytes.or(file.log_segment_bytes) {
        cfg.log_segment_bytes = b;
    }
    cfg.resp_password = a.resp_password.or(file.resp_password);
    if let Some(r) = a.replicas.or(file.replicas) {
        cfg.replicas = r;
    }
    if let Some(ms) = a.placement_heartbeat_ms.or(file.placement_heartbeat_ms) {
        if !(10..=60_000).contains(&ms) {
            bail!("--placement-heartbeat-ms must be between 10 and 60000, not {ms}");
        }
        cfg.placement_heartbeat = Duration::from_millis(ms);
        cfg.store_down_after = cfg.placement_heartbeat * 5;
    }
    a.scheduling
        .or(file.scheduling)
        .apply(&mut cfg.scheduling)?;
    if let Some(c) = want_cluster {
        if c == 0 {
            bail!("--cluster-id must not be 0 (leave it out to derive one)");
        }
        cfg.cluster_id = c;
    }
    if let Some(mode) = a.read_mode.or(file.read_mode) {
        cfg.read_mode = match mode.as_str() {
            "lease" => raft::ReadMode::Lease,
            "safe" => raft::ReadMode::Safe,
            other => bail!("--read-mode must be lease or safe, not {other:?}"),
        };
    }
    if cfg.resp_password.as_deref() == Some("") {
        bail!("--resp-password must not be empty (leave it out to disable AUTH)");
    }
    cfg.validate().map_err(anyhow::Error::msg)?;
    let metrics = match &metrics_addr {
        Some(m) => Some(
            tokio::net::TcpListener::bind(m)
                .await
                .with_context(|| format!("binding --metrics-addr {m}"))?,
        ),
        None => None,
    };
    let resp = match &resp_addr {
        Some(r) => Some(
            tokio::net::TcpListener::bind(r)
                .await
                .with_context(|| format!("binding --resp-addr {r}"))?,
        ),
        None => None,
    };
    let handle = server::Server::start(cfg, peer, client, metrics, resp).await?;
    tracing::info!(id, %peer_addr, %client_addr, ?metrics_addr, ?resp_addr, "raftkv server started");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut check = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = check.tick() => {
                if !handle.store_running() {
                    handle.shutdown().await;
                    bail!("the store stopped on a storage error (see the log); not serving");
                }
            }
        }
    }
    tracing::info!("shutting down");
    handle.shutdown().await;
    Ok(())
}

fn show(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

async fn run_client(cmd: Cmd) -> Result<()> {
    let conn = match &cmd {
        Cmd::Get { conn, .. }
        | Cmd::Put { conn, .. }
        | Cmd::Del { conn, .. }
        | Cmd::Append { conn, .. }
        | Cmd::Cas { conn, .. }
        | Cmd::Scan { conn, .. }
        | Cmd::Status { conn, .. } => conn,
        _ => unreachable!("server commands handled above"),
    };
    let mut c = client::Client::connect(conn.list()).await?;
    match cmd {
        Cmd::Get { key, stale, .. } => {
            let v = if stale {
                c.get_stale(key.as_bytes()).await?
            } else {
                c.get(key.as_bytes()).await?
            };
            match v {
                Some(v) => println!("{}", show(&v)),
                None => {
                    eprintln!("(not found)");
                    std::process::exit(1);
                }
            }
        }
        Cmd::Put { key, value, .. } => {
            c.put(key.as_bytes(), value.as_bytes()).await?;
            println!("OK");
        }
        Cmd::Del { key, .. } => println!(
            "{}",
            if c.delete(key.as_bytes()).await? {
                "deleted"
            } else {
                "(not found)"
            }
        ),
        Cmd::Append { key, value, .. } => {
            println!("{}", c.append(key.as_bytes(), value.as_bytes()).await?)
        }
        Cmd::Cas {
            key,
            new,
            expected,
            expect_absent,
            ..
        } => {
            if expected.is_none() && !expect_absent {
                bail!("give --expected VALUE or --expect-absent");
            }
            let ok = c
                .cas(
                    key.as_bytes(),
                    expected.as_deref().map(str::as_bytes),
                    new.as_bytes(),
                )
                .await?;
            println!("{}", if ok { "swapped" } else { "not swapped" });
            if !ok {
                std::process::exit(1);
            }
        }
        Cmd::Scan {
            start, end, limit, ..
        } => {
            for (k, v) in c
                .scan(start.as_bytes(), end.as_deref().map(str::as_bytes), limit)
                .await?
            {
                println!("{}\t{}", show(&k), show(&v));
            }
        }
        Cmd::Status { json, conn } => {
            let mut sts = c.status().await;
            // Placement knows every store, joined ones too: ask those the endpoints missed.
            let live = placement_cmd::query_for(&conn, None, Duration::from_secs(3))
                .await
                .ok();
            if let Some(l) = &live {
                for s in l.answer.config.stores.values() {
                    if sts.iter().any(|st| st.store_id == s.id)
                        || s.addrs.client.is_empty()
                        || s.state == placement::StoreState::Removed
                    {
                        continue;
                    }
                    if let Ok(mut other) =
                        client::Client::connect(vec![s.addrs.client.clone()]).await
                    {
                        sts.extend(other.status().await);
                    }
                }
            }
            if sts.is_empty() {
                bail!("no server answered at {}", c.endpoints().join(","));
            }
            if json {
                println!("{}", status_json(&sts, live.as_ref()));
                return Ok(());
            }
            println!(
                "{:<6} {:<8} {:<16} {:<10} {:<7} {:<6} {:>8} {:>8}",
                "store", "region", "range", "role", "leader", "term", "commit", "applied"
            );
            let mut disks = Vec::new();
            for st in sts {
                disks.push((st.store_id, st.disk.unwrap_or_default()));
                for r in st.regions {
                    let reg = r.region.unwrap_or_default();
                    let range = format!(
                        "[{}, {})",
                        show(&reg.start_key),
                        if reg.has_end {
                            show(&reg.end_key)
                        } else {
                            "+inf".into()
                        }
                    );
                    println!(
                        "{:<6} {:<8} {:<16} {:<10} {:<7} {:<6} {:>8} {:>8}",
                        st.store_id,
                        reg.id,
                        range,
                        r.role,
                        r.leader_store_id,
                        r.term,
                        r.commit,
                        r.applied
                    );
                }
            }
            println!();
            println!(
                "{:<6} {:>10} {:>9} {:>11} {:>6} {:>10}",
                "store", "disk_MiB", "log_MiB", "segments", "snap_MiB", "snapshots"
            );
            let mib = |b: u64| format!("{:.1}", b as f64 / (1 << 20) as f64);
            for (store, d) in disks {
                println!(
                    "{:<6} {:>10} {:>9} {:>11} {:>6} {:>10}",
                    store,
                    mib(d.log_bytes + d.snapshot_bytes + d.other_bytes),
                    mib(d.log_bytes),
                    d.log_segments,
                    mib(d.snapshot_bytes),
                    d.snapshot_files
                );
            }
            if let Some(l) = &live {
                println!();
                placement_cmd::print_operators(l);
            }
        }
        _ => unreachable!(),
    }
    Ok(())
}

/// `raftkv status --json`: every store any answering server knows of (state `Up` when it
/// answered, `Down` otherwise) and every region once, from its leader's report (from the
/// report with the newest epoch when no leader is known; `leader_store` is then null). Keys
/// are UTF-8 strings (lossy), `""` as an end key meaning the end of the key space.
/// `raftkv status --json`: every store (placement's list when it answered, with each
/// store's state there; `Down` for one that did not answer), every region once as its
/// leader describes it, and `"placement": {"leader_store": N, "config": N, "operators":
/// [...], "history": [...]}` (the scheduler's operators in flight and finished; null when
/// placement did not answer).
fn status_json(
    reports: &[client::pb::StatusResponse],
    live: Option<&placement::LiveAnswer>,
) -> serde_json::Value {
    use serde_json::json;
    use std::collections::BTreeMap;
    let mut stores: BTreeMap<u64, (String, String, bool)> = BTreeMap::new();
    if let Some(l) = live {
        for s in l.answer.config.stores.values() {
            stores.insert(s.id, (s.addrs.peer.clone(), s.addrs.client.clone(), false));
        }
    }
    for st in reports {
        for s in &st.stores {
            stores
                .entry(s.id)
                .or_insert_with(|| (s.peer_addr.clone(), String::new(), false));
        }
        let e = stores
            .entry(st.store_id)
            .or_insert_with(|| (st.peer_addr.clone(), String::new(), false));
        if e.0.is_empty() {
            e.0 = st.peer_addr.clone();
        }
        if !st.client_addr.is_empty() {
            e.1 = st.client_addr.clone();
        }
        e.2 = true;
    }
    let placement_state = |id: u64| {
        live.and_then(|l| l.answer.config.stores.get(&id))
            .map(|s| s.state)
    };
    // Per region: (from its leader's report, epoch (version, conf_version), status).
    let mut regions: BTreeMap<u64, (bool, (u64, u64), &client::pb::RegionStatus)> = BTreeMap::new();
    for st in reports {
        for r in &st.regions {
            let Some(reg) = &r.region else { continue };
            let epoch = reg.epoch.map_or((0, 0), |e| (e.version, e.conf_version));
            let from_leader = r.leader_store_id != 0 && r.leader_store_id == st.store_id;
            let better = match regions.get(&reg.id) {
                None => true,
                Some((l, e, _)) => (from_leader, epoch) > (*l, *e),
            };
            if better {
                regions.insert(reg.id, (from_leader, epoch, r));
            }
        }
    }
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    json!({
        "stores": stores.iter().map(|(id, (peer, client, up))| json!({
            "id": id,
            "peer_addr": peer,
            "client_addr": client,
            "state": match placement_state(*id) {
                Some(placement::StoreState::Removed) => "Removed",
                Some(placement::StoreState::Draining) if *up => "Draining",
                _ if *up => "Up",
                _ => "Down",
            },
        })).collect::<Vec<_>>(),
        "placement": live.map(|l| json!({
            "leader_store": l.leader_store,
            "config": l.answer.config.number,
            "operators": l.operators,
            "history": l.history,
        })),
        "regions": regions.values().map(|(_, _, r)| {
            let reg = r.region.clone().unwrap_or_default();
            let epoch = reg.epoch.unwrap_or_default();
            json!({
                "id": reg.id,
                "start_key": text(&reg.start_key),
                "end_key": if reg.has_end { text(&reg.end_key) } else { String::new() },
                "epoch": {"conf_version": epoch.conf_version, "version": epoch.version},
                "replicas": reg.peers.iter().map(|p| json!({
                    "store": p.store_id,
                    "peer_id": p.id,
                    "role": if p.learner { "learner" } else { "voter" },
                })).collect::<Vec<_>>(),
                "leader_store": (r.leader_store_id != 0).then_some(r.leader_store_id),
                "approximate_bytes": r.approximate_bytes,
                "approximate_keys": r.approximate_keys,
            })
        }).collect::<Vec<_>>(),
    })
}

fn write_json(to: Option<&str>, json: &str) -> Result<()> {
    match to {
        None => Ok(()),
        Some("-") => {
            println!("{json}");
            Ok(())
        }
        Some(path) => {
            std::fs::write(path, format!("{json}\n")).with_context(|| format!("writing {path}"))
        }
    }
}

async fn run_bench(a: BenchArgs) -> Result<()> {
    let endpoints = match (&a.endpoints, a.target) {
        (Some(e), _) => e.clone(),
        (None, bench::TargetKind::Raftkv) => std::env::var("RAFTKV_ENDPOINTS")
            .unwrap_or_else(|_| "127.0.0.1:17101,127.0.0.1:17102,127.0.0.1:17103".into()),
        (None, bench::TargetKind::Resp) => "127.0.0.1:17301,127.0.0.1:17302,127.0.0.1:17303".into(),
        (None, bench::TargetKind::Etcd) => "127.0.0.1:2379".into(),
    };
    let cfg = bench::BenchConfig {
        target: a.target,
        endpoints: endpoints
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        workload: a.workload,
        distribution: a.distribution,
        keys: a.keys,
        value_size: a.value_size,
        clients: a.clients,
        connections: a.connections,
        duration: Duration::from_secs(a.duration_secs),
        ops: a.ops,
        rate: a.rate,
        preload: !a.no_preload,
        stale: a.stale,
        progress: !a.no_progress,
        seed: a.seed,
    };
    let mut report = bench::run(cfg).await.map_err(anyhow::Error::msg)?;
    if let Some(l) = a.label {
        report.label = l;
    }
    println!("{}", bench::Report::TABLE_HEADER);
    println!("{}", report.table_row());
    write_json(a.json.as_deref(), &report.to_json())?;
    report
        .check_errors(a.max_errors)
        .map_err(anyhow::Error::msg)
}
