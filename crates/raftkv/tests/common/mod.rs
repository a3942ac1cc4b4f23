//! A real 3-store cluster of `raftkv server` processes on 127.0.0.1, in a temp dir; killed
//! on drop. Every wait is bounded.

#![allow(dead_code)]

use lincheck::kv::{KvInput, KvOutput};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    /// (peer, client, metrics) port per store.
    pub ports: Vec<(u16, u16, u16)>,
    /// RESP (Redis protocol) port per store.
    pub resp_ports: Vec<u16>,
    procs: Vec<Option<Child>>,
    extra: Vec<String>,
    /// This cluster's own id (`--cluster-id`): stores of another test cluster that reused
    /// these ports are refused.
    cluster_id: u64,
    /// Each store's data directory, where not the default `dir/store{i}`
    /// ([`TestCluster::start_with_data_dirs`]).
    data_dirs: Vec<Option<PathBuf>>,
}

/// A port to listen on, below Linux's ephemeral range (32768+): a port from `bind(0)` is
/// released before the server binds it, and in the meantime an outgoing connection of another
/// test may take it as its local port, so the server could not bind. Ports are handed out
/// from a per-process window (by pid) and checked free before use.
pub fn free_port() -> u16 {
    use std::sync::atomic::AtomicU16;
    const WINDOW: u16 = 400;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 12_000 + (std::process::id() % 40) as u16 * WINDOW;
    for _ in 0..WINDOW {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % WINDOW;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {base}..{}", base + WINDOW);
}

impl TestCluster {
    pub fn start(extra: &[&str]) -> TestCluster {
        TestCluster::start_with_data_root(None, extra)
    }

    /// Like [`TestCluster::start`], with the stores' data directories under `data_root`
    /// (`store1`..`store3`; e.g. a small tmpfs) while their logs stay in the temp dir.
    pub fn start_with_data_root(data_root: Option<PathBuf>, extra: &[&str]) -> TestCluster {
        let dirs = (1..=3)
            .map(|i| {
                data_root
                    .as_ref()
                    .map(|root| root.join(format!("store{i}")))
            })
            .collect();
        TestCluster::start_with_data_dirs(dirs, extra)
    }

    /// Like [`TestCluster::start`], with store `i`'s data directory at `data_dirs[i]` where
    /// that is given (e.g. only one store's on a small tmpfs).
    pub fn start_with_data_dirs(data_dirs: Vec<Option<PathBuf>>, extra: &[&str]) -> TestCluster {
        assert_eq!(data_dirs.len(), 3, "one entry per store");
        let mut ports = Vec::new();
        while ports.len() < 3 {
            let p = (free_port(), free_port(), free_port());
            if p.0 != p.1 && p.1 != p.2 && p.0 != p.2 {
                ports.push(p);
            }
        }
        let resp_ports = (0..3).map(|_| free_port()).collect();
        let mut c = TestCluster {
            dir: tempfile::tempdir().expect("temp dir"),
            ports,
            resp_ports,
            procs: vec![None, None, None],
            extra: extra.iter().map(|s| s.to_string()).collect(),
            cluster_id: {
                use std::hash::{BuildHasher, Hasher};
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u32(std::process::id());
                h.finish().max(1)
            },
            data_dirs,
        };
        for i in 0..3 {
            c.spawn(i);
        }
        c
    }

    /// Every store's log, for failure messages.
    pub fn logs(&self) -> String {
        (1..=self.procs.len())
            .map(|i| {
                let path = self.dir.path().join(format!("store{i}.log"));
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                // A panic's message comes before its (long) backtrace: keep it.
                let lines: Vec<&str> = text.lines().collect();
                let panics: Vec<String> = lines
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.contains("panicked at"))
                    .map(|(n, _)| lines[n..(n + 3).min(lines.len())].join("\n"))
                    .collect();
                format!(
                    "--- store{i}.log {}(last lines) ---\n{}",
                    panics.join("\n"),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        match &self.data_dirs[i] {
            Some(dir) => dir.clone(),
            None => self.dir.path().join(format!("store{}", i + 1)),
        }
    }

    /// How store `i`'s process ended, if it did (never started or killed by the test: None).
    pub fn exit_status(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        self.procs[i]
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Starts a new store that joins the running cluster through store 1's peer port
    /// (`raftkv server --join`); returns its index. It gets its id from placement.
    pub fn join_new_store(&mut self) -> usize {
        let mut p = (free_port(), free_port(), free_port());
        while p.0 == p.1 || p.1 == p.2 || p.0 == p.2 {
            p = (free_port(), free_port(), free_port());
        }
        self.ports.push(p);
        self.resp_ports.push(free_port());
        self.procs.push(None);
        self.data_dirs.push(None);
        let i = self.procs.len() - 1;
        self.spawn(i);
        i
    }

    pub fn stores(&self) -> usize {
        self.procs.len()
    }

    /// This cluster's id, as its bootstrap stores were given it (`--cluster-id`).
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    pub fn spawn(&mut self, i: usize) {
        // The first three bootstrap the cluster; later ones joined it.
        let cluster: Vec<String> = self
            .ports
            .iter()
            .take(3)
            .enumerate()
            .map(|(j, p)| format!("{}=127.0.0.1:{}", j + 1, p.0))
            .collect();
        let membership: Vec<String> = if i < 3 {
            vec![
                "--id".into(),
                (i + 1).to_string(),
                "--initial-cluster".into(),
                cluster.join(","),
                "--cluster-id".into(),
                self.cluster_id.to_string(),
            ]
        } else {
            vec!["--join".into(), format!("127.0.0.1:{}", self.ports[0].0)]
        };
        let (peer, client, metrics) = self.ports[i];
        let log = std::fs::File::create(self.dir.path().join(format!("store{}.log", i + 1)))
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_raftkv"))
            .arg("server")
            .args(&membership)
            .arg("--data-dir")
            .arg(self.data_dir(i))
            .args(["--peer-addr", &format!("127.0.0.1:{peer}")])
            .args(["--client-addr", &format!("127.0.0.1:{client}")])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics}")])
            .args(["--resp-addr", &format!("127.0.0.1:{}", self.resp_ports[i])])
            .args(["--split-keys", "g,p", "--tick-ms", "20"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn raftkv server");
        self.procs[i] = Some(child);
    }

    /// The process id of store `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.procs[i].as_ref().map(|c| c.id())
    }

    /// SIGKILL: the process gets no chance to flush anything.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (bounded) for a clean exit; returns whether it exited cleanly.
    pub fn terminate(&mut self, i: usize) -> bool {
        let Some(mut c) = self.procs[i].take() else {
            return false;
        };
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc_kill(c.id() as i32, 15);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// SIGKILLs store `i` while work is in flight: waits (bounded) until an operation that
    /// `aimed` picks is outstanding, kills, and returns the operations outstanding both just
    /// before and just after the kill, i.e. in flight at the kill (empty if the fault hit
    /// nothing: callers assert that it did not).
    pub async fn kill_during(
        &mut self,
        i: usize,
        ops: &InFlight,
        aimed: impl Fn(&Op) -> bool,
    ) -> Vec<Op> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let before = loop {
            let now = ops.outstanding();
            if now.iter().any(&aimed) {
                break now;
            }
            assert!(
                Instant::now() < deadline,
                "no chosen operation was outstanding within 60 s to kill store {} under",
                i + 1
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        self.kill(i);
        let after = ops.outstanding();
        before.into_iter().filter(|o| after.contains(o)).collect()
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.procs[i].is_some()
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("127.0.0.1:{}", p.1))
            .collect()
    }

    /// `redis://` URL of store `i`'s RESP front end.
    pub fn redis_url(&self, i: usize) -> String {
        format!("redis://127.0.0.1:{}/", self.resp_ports[i])
    }

    pub fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.ports[i].1)
    }

    /// Waits until every region has a leader known to every live store.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut c = client::Client::connect(self.endpoints())
            .await
            .expect("client");
        let live = (0..self.procs.len()).filter(|&i| self.is_up(i)).count();
        c.wait_until_led(live, timeout).await
    }

    /// The store (0-based) leading the region that holds `key`.
    pub async fn leader_of(&self, key: &[u8]) -> Option<usize> {
        let mut c = client::Client::connect(self.endpoints()).await.ok()?;
        c.leader_store_of(key).await.map(|s| s.0 as usize - 1)
    }

    pub fn metrics(&self, i: usize) -> String {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.ports[i].2)) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    pub fn metric(&self, i: usize, name: &str) -> Option<u64> {
        self.metrics(i)
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    }
}

/// One client operation of a test, as [`InFlight`] tracks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub worker: usize,
    /// The worker's own count of its operations.
    pub n: u64,
    pub key: Vec<u8>,
    pub write: bool,
}

/// How an operation ended, as its client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered (after any retries the client made).
    Done,
    /// The client gave up: a write's effect is unknown, a read had none.
    Failed,
}

/// Which operation each worker of a test has outstanding (sent, not yet answered) and how
/// every operation ended, so a test can name the operations a fault hit.
pub struct InFlight {
    current: Vec<Mutex<Option<Op>>>,
    outcomes: Mutex<HashMap<(usize, u64), Outcome>>,
}

impl InFlight {
    pub fn new(workers: usize) -> InFlight {
        InFlight {
            current: (0..workers).map(|_| Mutex::new(None)).collect(),
            outcomes: Mutex::default(),
        }
    }

    /// Call just before sending the operation.
    pub fn begin(&self, worker: usize, n: u64, key: &[u8], write: bool) {
        *self.current[worker].lock().unwrap() = Some(Op {
            worker,
            n,
            key: key.to_vec(),
            write,
        });
    }

    /// Call just after the client returned.
    pub fn end(&self, worker: usize, outcome: Outcome) {
        let op = self.current[worker]
            .lock()
            .unwrap()
            .take()
            .expect("end without begin");
        self.outcomes
            .lock()
            .unwrap()
            .insert((op.worker, op.n), outcome);
    }

    pub fn outstanding(&self) -> Vec<Op> {
        self.current
            .iter()
            .filter_map(|c| c.lock().unwrap().clone())
            .collect()
    }

    /// How `op` ended; `None` while it is outstanding.
    pub fn outcome(&self, op: &Op) -> Option<Outcome> {
        self.outcomes
            .lock()
            .unwrap()
            .get(&(op.worker, op.n))
            .copied()
    }
}

/// Waits (polling, bounded by `timeout`) until `cond` holds; panics naming `what` otherwise.
pub async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// How a [`Load`] talks to the cluster.
pub struct LoadConfig {
    pub clients: usize,
    /// Of the clients, how many speak the Redis protocol (to stores 1-3 in turn); the
    /// others use the gRPC client with every store the cluster has when the load starts.
    pub resp_clients: usize,
    /// The gRPC clients' bound on one operation, retries included.
    pub op_timeout: Duration,
}

/// A linearizability-checked client load for the tests that reshape a running cluster
/// (`placement.rs`, `region_admin.rs`): each client runs Get, Put and Append in turn over 30
/// keys, 10 per bootstrap region (split keys `g`, `p`) and on both sides of `c5` and `k5`
/// (where `region_admin.rs` splits), every operation recorded in one `lincheck` history. A
/// client that sees an error records it and goes on (the tests assert there were none).
pub struct Load {
    history: Arc<lincheck::History<KvInput, KvOutput>>,
    completed: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What a [`Load`] leaves once stopped.
pub struct LoadOutcome {
    pub operations: Vec<lincheck::Operation<KvInput, KvOutput>>,
    /// The errors the clients saw (the first 100).
    pub errors: Vec<String>,
    /// Operations answered.
    pub completed: u64,
}

/// One client's connection: gRPC or the Redis port.
enum LoadConn {
    Grpc(Box<client::Client>),
    Resp(redis::aio::MultiplexedConnection),
}

impl LoadConn {
    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        match self {
            LoadConn::Grpc(c) => c
                .get(key)
                .await
                .map(|v| v.map(|b| b.to_vec()))
                .map_err(|e| e.to_string()),
            LoadConn::Resp(c) => redis::cmd("GET")
                .arg(key)
                .query_async(c)
                .await
                .map_err(|e| e.to_string()),
        }
    }

    async fn put(&mut self, key: &[u8], val: &[u8]) -> Result<(), String> {
        match self {
            LoadConn::Grpc(c) => c.put(key, val).await.map_err(|e| e.to_string()),
            LoadConn::Resp(c) => redis::cmd("SET")
                .arg(key)
                .arg(val)
                .query_async::<()>(c)
                .await
                .map_err(|e| e.to_string()),
        }
    }

    async fn append(&mut self, key: &[u8], val: &[u8]) -> Result<(), String> {
        match self {
            LoadConn::Grpc(c) => c
                .append(key, val)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            LoadConn::Resp(c) => redis::cmd("APPEND")
                .arg(key)
                .arg(val)
                .query_async::<i64>(c)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        }
    }
}

impl Load {
    /// Connects the clients to `c` and starts them.
    pub async fn start(c: &TestCluster, cfg: LoadConfig) -> Load {
        let history: Arc<lincheck::History<KvInput, KvOutput>> = Arc::new(lincheck::History::new());
        let completed = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::<String>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..cfg.clients {
            let mut conn = if w < cfg.resp_clients {
                let client = redis::Client::open(c.redis_url(w % 3)).expect("redis url");
                LoadConn::Resp(
                    client
                        .get_multiplexed_async_connection()
                        .await
                        .expect("redis connection"),
                )
            } else {
                let ccfg = client::ClientConfig {
                    op_timeout: cfg.op_timeout,
                    attempt_timeout: Duration::from_secs(3),
                    ..Default::default()
                };
                LoadConn::Grpc(Box::new(
                    client::Client::with_config(c.endpoints(), ccfg)
                        .await
                        .expect("client"),
                ))
            };
            let (h, completed, errors, stop) = (
                history.clone(),
                completed.clone(),
                errors.clone(),
                stop.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    // Keys retire every 64 operations of a client: per-key histories stay
                    // small enough to check.
                    let k = (n * 7 + w as u64) % 30;
                    let key = format!("{}{}g{}", ["c", "k", "t"][(k % 3) as usize], k / 3, n / 64)
                        .into_bytes();
                    let val = format!("{w}.{n};").into_bytes();
                    let result = match n % 3 {
                        0 => {
                            let id = h.invoke(w as u64, KvInput::Get { key: key.clone() });
                            conn.get(&key)
                                .await
                                .map(|v| (id, KvOutput::Get(v)))
                                .map_err(|e| (id, false, e))
                        }
                        1 => {
                            let input = KvInput::Put {
                                key: key.clone(),
                                value: val.clone(),
                            };
                            let id = h.invoke(w as u64, input);
                            conn.put(&key, &val)
                                .await
                                .map(|_| (id, KvOutput::Put))
                                .map_err(|e| (id, true, e))
                        }
                        _ => {
                            let input = KvInput::Append {
                                key: key.clone(),
                                value: val.clone(),
                            };
                            let id = h.invoke(w as u64, input);
                            conn.append(&key, &val)
                                .await
                                .map(|_| (id, KvOutput::Append))
                                .map_err(|e| (id, true, e))
                        }
                    };
                    match result {
                        Ok((id, out)) => {
                            h.complete(id, out);
                            completed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err((id, write, e)) => {
                            // A failed write may still take effect; a failed read had none.
                            if write {
                                h.fail_unknown(id);
                            } else {
                                h.fail_definite(id);
                            }
                            {
                                let mut errs = errors.lock().unwrap();
                                if errs.len() < 100 {
                                    errs.push(format!(
                                        "client {w} at {:?} on {:?}: {e}",
                                        started.elapsed(),
                                        String::from_utf8_lossy(&key)
                                    ));
                                }
                            }
                            // No tight loop on a failing server.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            }));
        }
        Load {
            history,
            completed,
            errors,
            stop,
            tasks,
        }
    }

    /// Operations answered so far.
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    /// Waits until 100 more operations were answered; after 60 s fails naming `what`, with
    /// the clients' errors and every store's log.
    pub async fn progress(&self, c: &TestCluster, what: &str) {
        let since = self.completed();
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.completed() < since + 100 {
            assert!(
                Instant::now() < deadline,
                "no 100 operations within 60 s {what}; errors: {:#?}\n{}",
                self.errors.lock().unwrap(),
                c.logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the clients, each after its operation in flight (bounded by the clients'
    /// timeouts; waited for 60 s at most), and returns the history and the errors.
    pub async fn finish(self) -> LoadOutcome {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("client finished")
                .unwrap();
        }
        let errors = self.errors.lock().unwrap().clone();
        LoadOutcome {
            operations: self.history.operations(),
            errors,
            completed: self.completed.load(Ordering::Relaxed),
        }
    }
}

/// The lost-write check of a read-back: `read_back[i]` is what the final read of
/// `acked[i]`'s key returned. Callers write each key once, so anything but the acknowledged
/// value (absent, or another value) is an acknowledged write lost. Returns one line per lost
/// write, empty when none was lost.
pub fn lost_writes<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    acked: &[(K, V)],
    read_back: &[Option<Vec<u8>>],
) -> Vec<String> {
    assert_eq!(
        acked.len(),
        read_back.len(),
        "one read-back value per acknowledged write"
    );
    acked
        .iter()
        .zip(read_back)
        .filter(|((_, value), got)| got.as_deref() != Some(value.as_ref()))
        .map(|((key, value), got)| {
            format!(
                "{} = {:?} acknowledged, read back {:?}",
                String::from_utf8_lossy(key.as_ref()),
                String::from_utf8_lossy(value.as_ref()),
                got.as_deref().map(String::from_utf8_lossy)
            )
        })
        .collect()
}

/// The seed of a test's random choices: `RAFTKV_TEST_SEED` if set, else a fresh one. Printed
/// (shown when the test fails) with the command that replays the same choices.
pub fn test_seed(test: &str) -> u64 {
    let seed = match std::env::var("RAFTKV_TEST_SEED") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("RAFTKV_TEST_SEED={s:?} is not a number")),
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after 1970")
                .as_nanos() as u64;
            nanos ^ u64::from(std::process::id()).rotate_left(32)
        }
    };
    eprintln!(
        "{test}: seed {seed} (same choices: RAFTKV_TEST_SEED={seed} cargo test -p raftkv --test cluster {test})"
    );
    seed
}

/// splitmix64: a small seeded generator for a test's choices.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // Joined stores too: a leaked store would keep talking to whatever later reuses
        // these ports.
        for i in 0..self.procs.len() {
            self.kill(i);
        }
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
