//! The cluster under test: real `raftkv server` processes, each in its own network namespace
//! (or all on 127.0.0.1 when namespaces cannot be made), talking to each other only through
//! the [`LinkProxy`]s, with process faults (SIGKILL, restart, SIGSTOP, SIGCONT).
//!
//! Layout with namespaces (store `i` = 0, 1, 2; `A_i` = its address on the bridge):
//! - store `i` listens on `A_i`: peer port 7001, client (gRPC) 7101, metrics 7201, RESP 7301;
//! - proxy `i→j` listens on 127.0.0.1 inside `i`'s namespace and connects to `A_j:7001`, and
//!   store `i`'s `--initial-cluster` names that proxy for `j`;
//! - the test's clients run on the host and connect to `A_i` over the bridge.
//!
//! Each namespace is fresh, so the fixed ports cannot collide with anything.

use crate::net::{NetError, Network};
use crate::proxy::{LinkProxy, NsRuntime};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const PEER_PORT: u16 = 7001;
const CLIENT_PORT: u16 = 7101;
const METRICS_PORT: u16 = 7201;
const RESP_PORT: u16 = 7301;
/// How long a connectivity probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Lines of each store's log shown in a failure report.
const LOG_TAIL_LINES: usize = 40;
/// The raft tick: quick elections (an election timeout is 20 ticks = 400 ms).
const TICK_MS: &str = "20";
/// How long a SIGSTOPped store may take to show as stopped, and how often that is polled.
const STOP_CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);
const STOP_CONFIRM_POLL: Duration = Duration::from_millis(2);

/// The state letter of process `pid` in `/proc/<pid>/stat` (`T` = stopped), if readable.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ...": comm may hold spaces and parentheses, so split at the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("network namespaces unavailable: {0}")]
    NetnsUnavailable(String),
    #[error("{0}")]
    Setup(String),
    #[error("store {store} exited unexpectedly ({status})")]
    StoreExited { store: usize, status: String },
    #[error("fault injection failed: {0}")]
    Fault(String),
}

impl From<NetError> for ClusterError {
    fn from(e: NetError) -> Self {
        match e {
            NetError::Unavailable(reason) => ClusterError::NetnsUnavailable(reason),
            other => ClusterError::Fault(other.to_string()),
        }
    }
}

/// Where the stores run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// One network namespace per store: every fault kind is available.
    Namespaces,
    /// All on 127.0.0.1 in the host namespace: process faults only.
    Host,
}

/// A region as the cluster's status reports show it (see [`Cluster::region_holding`]).
#[derive(Clone, Debug)]
pub struct RegionView {
    pub id: u64,
    /// The stores of its replicas.
    pub stores: Vec<u64>,
    /// Its end key (None: unbounded).
    pub end: Option<Vec<u8>>,
}

pub struct Cluster {
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
    bin: PathBuf,
    placement: Placement,
    procs: Vec<Option<Child>>,
    paused: Vec<bool>,
    /// `proxies[i][j]`: store `i`'s link to store `j` (`None` on the diagonal).
    proxies: Vec<Vec<Option<LinkProxy>>>,
    /// One per namespace, or a single host runtime.
    runtimes: Vec<NsRuntime>,
    network: Option<Network>,
    peer_addrs: Vec<SocketAddr>,
    client_addrs: Vec<SocketAddr>,
    resp_addrs: Vec<SocketAddr>,
    metrics_addrs: Vec<SocketAddr>,
    /// Per store: the `--initial-cluster` it is started with (peers = its proxies).
    initial_cluster: Vec<String>,
    lives: Vec<u32>,
    /// Extra flags for every server (e.g. the snapshot threshold).
    server_args: Vec<String>,
}

/// A port below Linux's ephemeral range, from a per-process window (as in
/// `crates/raftkv/tests/common`), checked free; only for [`Placement::Host`].
fn free_host_port() -> Result<u16, ClusterError> {
    use std::sync::atomic::{AtomicU16, Ordering};
    const WINDOW: u16 = 400;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 12_000 + (std::process::id() % 40) as u16 * WINDOW;
    for _ in 0..WINDOW {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % WINDOW;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(ClusterError::Setup(format!(
        "no free port in {base}..{}",
        base + WINDOW
    )))
}

/// Checks that the host reaches every store address and every namespace reaches every other
/// one, with a listener inside each namespace; the error says which path is broken.
async fn verify_connectivity(net: &Network, runtimes: &[NsRuntime]) -> Result<(), ClusterError> {
    let unavailable = |what: String| {
        ClusterError::NetnsUnavailable(format!(
            "{what} (bridge {} on the host, route_localnet set); check `ip route get {}`",
            net.host_addr(),
            net.store_addr(0)
        ))
    };
    let mut listeners = Vec::new();
    for (i, rt) in runtimes.iter().enumerate() {
        let addr = SocketAddr::new(IpAddr::V4(net.store_addr(i)), 0);
        let listener = rt
            .run(async move {
                let l = tokio::net::TcpListener::bind(addr).await?;
                let local = l.local_addr()?;
                // Accept (and drop) probes until the runtime stops.
                tokio::spawn(async move { while l.accept().await.is_ok() {} });
                Ok::<_, std::io::Error>(local)
            })
            .await
            .map_err(|e| unavailable(format!("probe listener in namespace {i}: {e}")))?
            .map_err(|e| unavailable(format!("cannot listen on {addr} in its namespace: {e}")))?;
        listeners.push(listener);
    }
    for (i, target) in listeners.iter().copied().enumerate() {
        match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(target)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(unavailable(format!(
                    "host cannot reach store {i} at {target}: {e}"
                )))
            }
            Err(_) => {
                return Err(unavailable(format!(
                    "host cannot reach store {i} at {target}: timed out"
                )))
            }
        }
        for (j, rt) in runtimes.iter().enumerate() {
            if i == j {
                continue;
            }
            let ok = rt
                .run(async move {
                    tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(target))
                        .await
                        .map(|r| r.map(|_| ()).map_err(|e| e.to_string()))
                        .unwrap_or_else(|_| Err("timed out".into()))
                })
                .await
                .map_err(|e| unavailable(format!("probe from namespace {j}: {e}")))?;
            if let Err(e) = ok {
                return Err(unavailable(format!(
                    "namespace {j} cannot reach store {i} at {target}: {e}"
                )));
            }
        }
    }
    Ok(())
}

impl Cluster {
    /// Starts three stores. With `namespaces`, builds the network first and fails with
    /// [`ClusterError::NetnsUnavailable`] if it cannot; the caller decides what to do then.
    pub async fn start(
        bin: &Path,
        namespaces: bool,
        server_args: &[String],
    ) -> Result<Cluster, ClusterError> {
        const STORES: usize = 3;
        let dir = tempfile::Builder::new()
            .prefix("nemesis-")
            .tempdir()
            .map_err(|e| ClusterError::Setup(format!("temp dir: {e}")))?;
        let mut c = Cluster {
            dir_path: dir.path().to_path_buf(),
            dir: Some(dir),
            bin: bin.to_path_buf(),
            placement: if namespaces {
                Placement::Namespaces
            } else {
                Placement::Host
            },
            procs: (0..STORES).map(|_| None).collect(),
            paused: vec![false; STORES],
            proxies: Vec::new(),
            runtimes: Vec::new(),
            network: None,
            peer_addrs: Vec::new(),
            client_addrs: Vec::new(),
            resp_addrs: Vec::new(),
            metrics_addrs: Vec::new(),
            initial_cluster: Vec::new(),
            lives: vec![0; STORES],
            server_args: server_args.to_vec(),
        };
        if namespaces {
            // Owned by `c` at once, so an error below tears it down in Cluster's Drop order.
            let net = c.network.insert(Network::create(STORES)?);
            for i in 0..STORES {
                c.runtimes.push(
                    NsRuntime::start(net.namespace(i), Some(net.namespace_path(i)))
                        .map_err(ClusterError::NetnsUnavailable)?,
                );
            }
            verify_connectivity(net, &c.runtimes).await?;
            for i in 0..STORES {
                let ip = IpAddr::V4(net.store_addr(i));
                c.peer_addrs.push(SocketAddr::new(ip, PEER_PORT));
                c.client_addrs.push(SocketAddr::new(ip, CLIENT_PORT));
                c.metrics_addrs.push(SocketAddr::new(ip, METRICS_PORT));
                c.resp_addrs.push(SocketAddr::new(ip, RESP_PORT));
            }
        } else {
            c.runtimes
                .push(NsRuntime::start("host", None).map_err(ClusterError::Setup)?);
            for _ in 0..STORES {
                let at = |port| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
                c.peer_addrs.push(at(free_host_port()?));
                c.client_addrs.push(at(free_host_port()?));
                c.metrics_addrs.push(at(free_host_port()?));
                c.resp_addrs.push(at(free_host_port()?));
            }
        }
        let localhost_any = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        for i in 0..STORES {
            let rt = &c.runtimes[if namespaces { i } else { 0 }];
            let mut row = Vec::new();
            let mut names = Vec::new();
            for j in 0..STORES {
                if i == j {
                    row.push(None);
                    names.push(format!("{}={}", j + 1, c.peer_addrs[i]));
                    continue;
                }
                let proxy = LinkProxy::start(rt, localhost_any, c.peer_addrs[j])
                    .await
                    .map_err(ClusterError::Setup)?;
                names.push(format!("{}={}", j + 1, proxy.listen_addr()));
                row.push(Some(proxy));
            }
            c.proxies.push(row);
            c.initial_cluster.push(names.join(","));
        }
        for i in 0..STORES {
            c.spawn(i)?;
        }
        Ok(c)
    }

    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    pub fn network(&self) -> Option<&Network> {
        self.network.as_ref()
    }

    /// The `raftkv` binary the stores run (the admin steps run its CLI too).
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The id and the replicas' stores of the region holding `key`, as its leader (or any
    /// server) reports it.
    pub async fn region_of(&self, key: &[u8]) -> Option<(u64, Vec<u64>)> {
        self.region_holding(key).await.map(|r| (r.id, r.stores))
    }

    /// The region holding `key` (as its leader, else the newest report, describes it): its
    /// id, the stores of its replicas, and its end key (None: unbounded).
    pub async fn region_holding(&self, key: &[u8]) -> Option<RegionView> {
        let mut c = client::Client::connect(self.endpoints()).await.ok()?;
        let reports = c.status().await;
        let mut best: Option<(bool, u64, RegionView)> = None;
        for st in &reports {
            for r in &st.regions {
                let Some(g) = r.region.as_ref() else { continue };
                let inside =
                    key >= g.start_key.as_slice() && (!g.has_end || key < g.end_key.as_slice());
                if !inside {
                    continue;
                }
                let from_leader = r.leader_store_id == st.store_id;
                let version = g.epoch.map_or(0, |e| (e.version << 32) | e.conf_version);
                let better = match &best {
                    None => true,
                    Some((l, v, _)) => (from_leader, version) > (*l, *v),
                };
                if better {
                    let view = RegionView {
                        id: g.id,
                        stores: g.peers.iter().map(|p| p.store_id).collect(),
                        end: g.has_end.then(|| g.end_key.clone()),
                    };
                    best = Some((from_leader, version, view));
                }
            }
        }
        best.map(|(_, _, view)| view)
    }

    pub fn stores(&self) -> usize {
        self.procs.len()
    }

    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    /// Keeps the data directory (logs, data) after the run, for a failure to be examined.
    pub fn keep_dir(&mut self) -> PathBuf {
        if let Some(dir) = self.dir.take() {
            let _ = dir.keep();
        }
        self.dir_path.clone()
    }

    /// gRPC endpoints (`host:port`) of every store.
    pub fn endpoints(&self) -> Vec<String> {
        self.client_addrs.iter().map(|a| a.to_string()).collect()
    }

    pub fn redis_url(&self, i: usize) -> String {
        format!("redis://{}/", self.resp_addrs[i])
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.procs[i].is_some()
    }

    pub fn is_paused(&self, i: usize) -> bool {
        self.paused[i]
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir_path.join(format!("store{}.log", i + 1))
    }

    /// Starts (or restarts) store `i` on its data directory.
    pub fn spawn(&mut self, i: usize) -> Result<(), ClusterError> {
        if self.procs[i].is_some() {
            return Ok(());
        }
        self.lives[i] += 1;
        // Appended, not truncated: a restarted store's log keeps its previous lives.
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .map_err(|e| ClusterError::Setup(format!("log file: {e}")))?;
        use std::io::Write;
        let _ = writeln!(
            log,
            "===== nemesis: life {} of store {} =====",
            self.lives[i],
            i + 1
        );
        let mut cmd = Command::new(&self.bin);
        cmd.arg("server")
            .args(["--id", &(i + 1).to_string()])
            .arg("--data-dir")
            .arg(self.dir_path.join(format!("store{}", i + 1)))
            .args(["--peer-addr", &self.peer_addrs[i].to_string()])
            .args(["--client-addr", &self.client_addrs[i].to_string()])
            .args(["--metrics-addr", &self.metrics_addrs[i].to_string()])
            .args(["--resp-addr", &self.resp_addrs[i].to_string()])
            .args(["--initial-cluster", &self.initial_cluster[i]])
            .args(["--split-keys", "g,p", "--tick-ms", TICK_MS])
            .args(&self.server_args)
            // Plain text logs, so that the report can search them.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // The namespace file must stay open until the child has called setns.
        let ns_file = match &self.network {
            Some(net) => Some(
                std::fs::File::open(net.namespace_path(i))
                    .map_err(|e| ClusterError::Setup(format!("open namespace: {e}")))?,
            ),
            None => None,
        };
        let ns_fd = ns_file.as_ref().map(|f| {
            use std::os::fd::AsRawFd;
            f.as_raw_fd()
        });
        // SAFETY: between fork and exec only async-signal-safe syscalls (prctl, setns) run.
        unsafe {
            cmd.pre_exec(move || {
                // If the test process dies without its Drop (killed, aborted by the
                // watchdog), its servers die with it instead of running on unowned.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(fd) = ns_fd {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            ClusterError::Setup(format!("cannot start {}: {e}", self.bin.display()))
        })?;
        self.procs[i] = Some(child);
        self.paused[i] = false;
        Ok(())
    }

    /// SIGKILL: the store gets no chance to flush anything. True if a running store was
    /// there and its exit status says SIGKILL ended it (the fault really happened).
    pub fn kill(&mut self, i: usize) -> bool {
        let mut killed = false;
        if let Some(mut child) = self.procs[i].take() {
            let _ = child.kill(); // SIGKILL ends a stopped process too
            if let Ok(status) = child.wait() {
                use std::os::unix::process::ExitStatusExt;
                killed = status.signal() == Some(libc::SIGKILL);
            }
        }
        self.paused[i] = false;
        killed
    }

    fn signal(&mut self, i: usize, signal: i32) -> Result<(), ClusterError> {
        let Some(child) = &self.procs[i] else {
            return Err(ClusterError::Fault(format!(
                "store {} is not running",
                i + 1
            )));
        };
        // SAFETY: signalling our own unreaped child by pid.
        if unsafe { libc::kill(child.id() as i32, signal) } != 0 {
            return Err(ClusterError::Fault(format!(
                "signal {signal} to store {}: {}",
                i + 1,
                std::io::Error::last_os_error()
            )));
        }
        Ok(())
    }

    /// SIGSTOP, then waits (bounded) until the kernel shows the store stopped, so a pause
    /// that is counted really froze the process.
    pub fn pause(&mut self, i: usize) -> Result<(), ClusterError> {
        self.signal(i, libc::SIGSTOP)?;
        self.paused[i] = true;
        let pid = self.procs[i].as_ref().map_or(0, Child::id);
        let deadline = std::time::Instant::now() + STOP_CONFIRM_TIMEOUT;
        loop {
            match process_state(pid) {
                Some('T') => return Ok(()),
                state if std::time::Instant::now() >= deadline => {
                    return Err(ClusterError::Fault(format!(
                        "store {} (pid {pid}) was sent SIGSTOP but is not stopped after \
                         {STOP_CONFIRM_TIMEOUT:?} (state {state:?})",
                        i + 1
                    )))
                }
                _ => std::thread::sleep(STOP_CONFIRM_POLL),
            }
        }
    }

    pub fn resume(&mut self, i: usize) -> Result<(), ClusterError> {
        if self.paused[i] {
            self.signal(i, libc::SIGCONT)?;
            self.paused[i] = false;
        }
        Ok(())
    }

    /// Sets the delay of both directions between stores `a` and `b`; true if both
    /// directions' proxies now have it.
    pub fn set_link_delay(&self, a: usize, b: usize, delay: Duration) -> bool {
        let mut set = 0;
        for (from, to) in [(a, b), (b, a)] {
            if let Some(p) = &self.proxies[from][to] {
                p.set_delay(delay);
                set += usize::from(p.delay() == delay);
            }
        }
        set == 2
    }

    /// Fails if a store that should be running has exited (a crash is always a bug).
    pub fn check_alive(&mut self) -> Result<(), ClusterError> {
        for (i, slot) in self.procs.iter_mut().enumerate() {
            if let Some(child) = slot {
                if let Ok(Some(status)) = child.try_wait() {
                    *slot = None;
                    return Err(ClusterError::StoreExited {
                        store: i + 1,
                        status: status.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Undoes every fault: firewall rules flushed, delays zero, paused stores continued,
    /// killed stores restarted.
    pub fn heal_all(&mut self) -> Result<(), ClusterError> {
        if let Some(net) = &self.network {
            net.heal()?;
        }
        for row in &self.proxies {
            for p in row.iter().flatten() {
                p.set_delay(Duration::ZERO);
            }
        }
        for i in 0..self.stores() {
            self.resume(i)?;
            self.spawn(i)?;
        }
        Ok(())
    }

    /// Waits (bounded) until every running store reports all three regions with a leader.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let Ok(mut c) = client::Client::connect(self.endpoints()).await else {
            return false;
        };
        let live = (0..self.stores()).filter(|&i| self.is_up(i)).count();
        c.wait_until_led(live, timeout).await
    }

    /// The store (0-based) leading the region that holds `key`, as some store reports it.
    pub async fn leader_of(&self, key: &[u8]) -> Option<usize> {
        let mut c = client::Client::connect(self.endpoints()).await.ok()?;
        c.leader_store_of(key).await.map(|s| s.0 as usize - 1)
    }

    /// Lines of every store's log (all lives) that contain `needle`, at most `max`.
    pub fn log_lines_containing(&self, needle: &str, max: usize) -> (usize, Vec<String>) {
        let mut count = 0;
        let mut shown = Vec::new();
        for i in 0..self.stores() {
            let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
            for line in text.lines().filter(|l| l.contains(needle)) {
                count += 1;
                if shown.len() < max {
                    shown.push(format!("store{}: {line}", i + 1));
                }
            }
        }
        (count, shown)
    }

    /// The last lines of every store's log, for failure reports.
    pub fn log_tails(&self) -> String {
        (0..self.stores())
            .map(|i| {
                let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
                format!(
                    "--- store{}.log (last lines) ---\n{}",
                    i + 1,
                    tail.join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Order matters: nothing may still sit in a namespace when it is deleted.
        for i in 0..self.procs.len() {
            self.kill(i);
        }
        self.proxies.clear();
        self.runtimes.clear();
        if let Some(mut net) = self.network.take() {
            net.teardown();
        }
    }
}
