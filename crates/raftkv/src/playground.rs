//! `raftkv playground`: a local cluster of N stores (default 3), each a `raftkv server` child
//! process on 127.0.0.1, watched until Ctrl-C or SIGTERM.
//!
//! Startup is all or nothing: `endpoints.json` is written (and the banner printed) only once
//! every store accepts connections on its client and RESP ports, and a store that exits before
//! that stops the whole playground with a report of why. Later, a store that exits is reported
//! and the others keep running; `--restart-crashed` restarts a crashed one a few times.

use anyhow::{bail, Context, Result};
use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::process::{Child, ChildStderr, Command};
use tokio::signal::unix::{signal, Signal, SignalKind};

/// Most stores a playground runs: store i's ports are base+i, base+100+i, base+200+i and
/// base+300+i, so a 100th store's peer port would be the first store's client port.
const MAX_STORES: u16 = 99;
/// How long all stores together get to accept connections on their client and RESP ports.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between two rounds of startup checks.
const READY_POLL: Duration = Duration::from_millis(50);
/// Limit on one readiness probe (a refused connection on 127.0.0.1 fails at once; this only
/// bounds an unexpected hang).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
/// Pause between two checks of whether a running store has exited (the server's own
/// storage check runs at the same pace).
const WATCH_POLL: Duration = Duration::from_millis(200);
/// How long each store gets to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a killed store gets to be reaped.
const KILL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an exited store's stderr gets to reach its end (its last lines are the likely
/// reason it exited) before it is reported.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// Lines of a store's stderr kept for the report when it exits.
const TAIL_LINES: usize = 20;
/// A longer stderr line is forwarded in pieces of about this size, so one runaway line
/// cannot grow the buffer without bound.
const MAX_LINE_BYTES: usize = 8 << 10;
/// Restarts per store with `--restart-crashed` over the playground's lifetime: a store that
/// keeps crashing (a damaged data dir, a port someone else holds) is then left down.
const MAX_RESTARTS: u32 = 5;
/// Wait before the first restart of a store; doubled for each later one (0.5, 1, 2, 4, 8 s),
/// giving whatever made it crash (e.g. a port still held) time to clear.
const RESTART_BACKOFF: Duration = Duration::from_millis(500);

#[derive(clap::Args)]
pub(crate) struct PlaygroundArgs {
    /// Where the stores keep their data, store i in DATA_DIR/store<i> (default: a new
    /// temporary directory, removed when the playground stops).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Ports of store i (1..=N): peer = base+i, client (gRPC) = base+100+i,
    /// metrics = base+200+i, Redis (RESP) = base+300+i.
    #[arg(long, default_value_t = 17000)]
    base_port: u16,
    /// Number of stores N, 1..=99, all in the initial cluster.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = parse_stores)]
    stores: u16,
    /// Restart a store that crashes after the cluster came up (exits non-zero or is killed by
    /// a signal), with the same command line, up to 5 times per store, waiting 0.5, 1, 2, 4
    /// and 8 s before each. Without it such a store is reported and left down. A store that
    /// exits with status 0 was asked to stop and is never restarted.
    #[arg(long)]
    restart_crashed: bool,
    /// Spread the stores over N zones: store i gets the label zone=z((i-1) % N + 1)
    /// (`--labels`), shown by `raftkv store list`. 0 (the default): no labels.
    #[arg(long, value_name = "N", default_value_t = 0)]
    zones: u16,
    /// The scheduler's flags, passed to every store (see `raftkv server --help`).
    #[command(flatten)]
    scheduling: crate::scheduling::SchedulingArgs,
}

/// Store `id`'s zone in a playground of `zones` zones (`None`: zones are off).
fn zone_of(id: u16, zones: u16) -> Option<String> {
    (zones > 0).then(|| format!("z{}", id.saturating_sub(1) % zones + 1))
}

fn parse_stores(s: &str) -> Result<u16, String> {
    let n: u16 = s
        .trim()
        .parse()
        .map_err(|_| format!("expected a number of stores, 1..={MAX_STORES}"))?;
    if !(1..=MAX_STORES).contains(&n) {
        return Err(format!(
            "a playground runs 1..={MAX_STORES} stores (store i's ports are base+i, base+100+i, \
             base+200+i and base+300+i), not {n}"
        ));
    }
    Ok(n)
}

/// The ports of a playground of `stores` stores from `base`, checked to fit in a u16.
#[derive(Clone, Copy)]
struct Layout {
    base: u16,
    stores: u16,
}

impl Layout {
    fn new(base: u16, stores: u16) -> Result<Layout> {
        if !(1..=MAX_STORES).contains(&stores) {
            bail!("--stores must be 1..={MAX_STORES}, not {stores}");
        }
        // The highest port is the last store's RESP port; checked here once so the port
        // functions below cannot overflow.
        let highest = u32::from(base) + 300 + u32::from(stores);
        let max = u32::from(u16::MAX);
        if highest > max {
            bail!(
                "--base-port {base} is too high for {stores} stores: their ports would go up to \
                 {highest}, past {max}; use --base-port {} or lower",
                max - 300 - u32::from(stores)
            );
        }
        Ok(Layout { base, stores })
    }

    // `new` checked base + 300 + stores <= u16::MAX, and i <= stores everywhere below.
    fn peer(&self, i: u16) -> u16 {
        self.base + i
    }
    fn client(&self, i: u16) -> u16 {
        self.base + 100 + i
    }
    fn metrics(&self, i: u16) -> u16 {
        self.base + 200 + i
    }
    fn resp(&self, i: u16) -> u16 {
        self.base + 300 + i
    }

    fn ids(&self) -> std::ops::RangeInclusive<u16> {
        1..=self.stores
    }
}

fn local(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// How to start one store: the arguments after the raftkv binary, the same for every restart.
struct StoreSpec {
    id: u16,
    data_dir: PathBuf,
    args: Vec<OsString>,
}

impl StoreSpec {
    fn new(
        layout: &Layout,
        dir: &Path,
        id: u16,
        cluster: &str,
        workers: &str,
        zones: u16,
    ) -> StoreSpec {
        let data_dir = dir.join(format!("store{id}"));
        let mut args: Vec<OsString> = vec!["server".into(), "--id".into(), id.to_string().into()];
        args.push("--data-dir".into());
        args.push(data_dir.clone().into_os_string());
        for (flag, port) in [
            ("--peer-addr", layout.peer(id)),
            ("--client-addr", layout.client(id)),
            ("--metrics-addr", layout.metrics(id)),
            ("--resp-addr", layout.resp(id)),
        ] {
            args.push(flag.into());
            args.push(local(port).into());
        }
        args.push("--initial-cluster".into());
        args.push(cluster.into());
        // Three regions of about equal size for keys spread over a..z (what the bench
        // writes): a..i, j..r, s..z.
        args.push("--split-keys".into());
        args.push("j,s".into());
        args.push("--worker-threads".into());
        args.push(workers.into());
        if let Some(zone) = zone_of(id, zones) {
            args.push("--labels".into());
            args.push(format!("zone={zone}").into());
        }
        StoreSpec { id, data_dir, args }
    }

    /// The command line, quoted for a POSIX shell, for a user to run the store by hand.
    fn command_line(&self, exe: &Path) -> String {
        std::iter::once(exe.as_os_str())
            .chain(self.args.iter().map(OsString::as_os_str))
            .map(|a| shell_quote(&a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@+%".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The last lines a store wrote to stderr (at most TAIL_LINES), shared with its reader task.
type Tail = Arc<Mutex<VecDeque<String>>>;

/// A running store process.
struct Proc {
    child: Child,
    tail: Tail,
    /// Forwards the store's stderr to ours and fills `tail`; ends at the pipe's end.
    stderr_task: tokio::task::JoinHandle<()>,
}

enum State {
    // Boxed: a process handle is much larger than the other states.
    Running(Box<Proc>),
    /// Crashed and to be restarted at this moment (`--restart-crashed`).
    RestartAt(Instant),
    /// Exited (or stopped by us) and not restarted.
    Down,
}

struct Store {
    spec: StoreSpec,
    state: State,
    /// Restarts so far, successful or not.
    restarts: u32,
}

/// How a store ended.
struct Exit {
    /// Its exit status, e.g. "exit status: 1" or "signal: 9 (SIGKILL)".
    status: String,
    /// Exited with status 0: it was asked to stop (SIGTERM, Ctrl-C), it did not crash.
    clean: bool,
    tail: Vec<String>,
}

impl Store {
    fn is_running(&self) -> bool {
        matches!(self.state, State::Running(_))
    }

    fn restart_due(&self, now: Instant) -> bool {
        matches!(self.state, State::RestartAt(at) if now >= at)
    }

    /// When its process has exited: reaps it, leaves the store `Down` and says how it ended.
    async fn check_exit(&mut self) -> Option<Exit> {
        let State::Running(p) = &mut self.state else {
            return None;
        };
        let (status, clean) = match p.child.try_wait() {
            Ok(None) => return None,
            Ok(Some(st)) => (st.to_string(), st.success()),
            Err(e) => {
                // Cannot tell whether it runs (it should not happen): make sure it does not.
                let _ = p.child.start_kill();
                (format!("unknown: checking it failed: {e}"), false)
            }
        };
        let State::Running(mut p) = std::mem::replace(&mut self.state, State::Down) else {
            return None; // it was Running just above
        };
        // Its last lines may still be in the pipe; they are likely the reason it exited.
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, &mut p.stderr_task).await;
        let tail = lock(&p.tail).iter().cloned().collect();
        Some(Exit {
            status,
            clean,
            tail,
        })
    }
}

fn lock(tail: &Mutex<VecDeque<String>>) -> std::sync::MutexGuard<'_, VecDeque<String>> {
    // A reader task that panicked mid-update leaves at worst a line too few or too many.
    tail.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Writes to our stderr, ignoring failure: a closed stderr must not stop the playground (or
/// the reader tasks, which must keep draining the stores' pipes).
fn to_stderr(text: &str) {
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

fn note(msg: &str) {
    to_stderr(&format!("playground: {msg}\n"));
}

fn spawn_store(exe: &Path, spec: &StoreSpec) -> Result<Proc> {
    let mut child = Command::new(exe)
        .args(&spec.args)
        // Piped to learn why a store exits; stdout stays inherited (the server logs to
        // stderr only).
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting store {} ({})", spec.id, exe.display()))?;
    let stderr = child
        .stderr
        .take()
        .with_context(|| format!("store {}: no pipe for its stderr", spec.id))?;
    let tail: Tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
    let stderr_task = tokio::spawn(forward_stderr(spec.id, stderr, Arc::clone(&tail)));
    Ok(Proc {
        child,
        tail,
        stderr_task,
    })
}

/// Copies a store's stderr to ours line by line, each prefixed `[store i] `, keeping the last
/// TAIL_LINES lines in `tail`. Runs until the pipe ends (the store exited) or fails.
async fn forward_stderr(id: u16, mut from: ChildStderr, tail: Tail) {
    let mut chunk = vec![0u8; 4096];
    let mut line: Vec<u8> = Vec::new();
    loop {
        let n = match read_some(&mut from, &mut chunk).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                emit_line(
                    id,
                    &tail,
                    format!("(playground: reading its stderr failed: {e})").as_bytes(),
                );
                break;
            }
        };
        let mut rest = &chunk[..n];
        // Each pass consumes at least one byte of `rest`.
        while !rest.is_empty() {
            match rest.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    line.extend_from_slice(&rest[..end]);
                    rest = &rest[end + 1..];
                    emit_line(id, &tail, &line);
                    line.clear();
                }
                None => {
                    line.extend_from_slice(rest);
                    rest = &[];
                    if line.len() >= MAX_LINE_BYTES {
                        emit_line(id, &tail, &line);
                        line.clear();
                    }
                }
            }
        }
    }
    if !line.is_empty() {
        emit_line(id, &tail, &line);
    }
}

/// One read from the pipe: the number of bytes read, 0 at its end. (Written against
/// `AsyncRead` itself, which needs no tokio feature beyond `process`.)
async fn read_some(from: &mut ChildStderr, buf: &mut [u8]) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| {
        let mut rb = ReadBuf::new(&mut *buf);
        let polled = Pin::new(&mut *from).poll_read(cx, &mut rb);
        let n = rb.filled().len();
        polled.map_ok(|()| n)
    })
    .await
}

fn emit_line(id: u16, tail: &Mutex<VecDeque<String>>, raw: &[u8]) {
    let text = String::from_utf8_lossy(raw);
    let text = text.trim_end_matches('\r');
    // A blocking write from a task: stderr is a terminal or a file in practice, and should
    // its reader stall, the stores would stall on their own stderr just the same.
    to_stderr(&format!("[store {id}] {text}\n"));
    let mut t = lock(tail);
    if t.len() >= TAIL_LINES {
        t.pop_front();
    }
    t.push_back(text.to_string());
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
async fn answers(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    matches!(
        tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// Prints to stderr which store ended, how, its last stderr lines, and (with `explain`) what
/// may have caused it and what to do, then `advice`.
fn report_exit(
    layout: &Layout,
    spec: &StoreSpec,
    exit: &Exit,
    what: &str,
    explain: bool,
    advice: &str,
) {
    let i = spec.id;
    let mut text = format!("playground: store {i} {what} ({})\n", exit.status);
    if exit.tail.is_empty() {
        text.push_str("playground: it wrote nothing to stderr\n");
    } else {
        text.push_str(&format!(
            "playground: the last {} lines of its stderr:\n",
            exit.tail.len()
        ));
        for l in &exit.tail {
            text.push_str(&format!("    {l}\n"));
        }
    }
    if explain {
        text.push_str(&format!(
            "playground: what to do: {}\n",
            what_to_do(layout, spec, &exit.tail)
        ));
    }
    if !advice.is_empty() {
        text.push_str(&format!("playground: {advice}\n"));
    }
    to_stderr(&text);
}

/// A store's likely trouble and its remedy, from its last stderr lines.
fn what_to_do(layout: &Layout, spec: &StoreSpec, tail: &[String]) -> String {
    let i = spec.id;
    let ports = format!(
        "{}, {}, {} and {}",
        layout.peer(i),
        layout.client(i),
        layout.metrics(i),
        layout.resp(i)
    );
    if tail.iter().any(|l| l.contains("Address already in use")) {
        format!(
            "another program (an earlier playground?) may be using its ports {ports} \
             (`ss -ltnp` shows who listens); pick other ports with --base-port"
        )
    } else {
        format!(
            "its stderr above says why; if another program holds one of its ports ({ports}), \
             pick other ports with --base-port; if its data dir {} is damaged or from another \
             cluster, use another --data-dir",
            spec.data_dir.display()
        )
    }
}

/// Runs the playground until Ctrl-C or SIGTERM; an error when it could not start.
pub(crate) async fn run(a: PlaygroundArgs) -> Result<()> {
    let layout = Layout::new(a.base_port, a.stores)?;
    // Checked here so a bad value stops the playground before any store starts.
    let mut check = server::Scheduling::default();
    a.scheduling.apply(&mut check)?;
    check.validate().map_err(anyhow::Error::msg)?;
    let exe = std::env::current_exe().context("finding the raftkv binary")?;
    // Registered before any store starts, so a Ctrl-C or SIGTERM during startup still stops
    // them all (and unlike `tokio::signal::ctrl_c()`, stays registered between polls).
    let mut sigint = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let (dir, tmp) = match a.data_dir.clone() {
        Some(d) => (d, None),
        None => {
            let t = std::env::temp_dir().join(format!("raftkv-playground-{}", std::process::id()));
            (t.clone(), Some(t))
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // From here on every way out (a signal, a failed start) stops every store and removes
    // the temporary data dir.
    let mut stores: Vec<Store> = Vec::with_capacity(usize::from(layout.stores));
    let result = supervise(
        &a,
        layout,
        &dir,
        &exe,
        &mut stores,
        &mut sigint,
        &mut sigterm,
    )
    .await;
    println!("stopping...");
    stop_all(&mut stores).await;
    if let Some(t) = tmp {
        let _ = std::fs::remove_dir_all(t);
    }
    result
}

/// Starts the stores into `stores`, waits for them, announces them and watches them until a
/// signal (Ok) or a failed start (Err). The caller stops whatever is in `stores`.
async fn supervise(
    a: &PlaygroundArgs,
    layout: Layout,
    dir: &Path,
    exe: &Path,
    stores: &mut Vec<Store>,
    sigint: &mut Signal,
    sigterm: &mut Signal,
) -> Result<()> {
    let endpoints_path = dir.join("endpoints.json");
    // One left by an earlier run in this data dir would tell a waiting script that the
    // cluster is up before it is.
    match std::fs::remove_file(&endpoints_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", endpoints_path.display())),
    }
    let cluster = layout
        .ids()
        .map(|i| format!("{i}={}", local(layout.peer(i))))
        .collect::<Vec<_>>()
        .join(",");
    // N servers share this machine: give each 1/N of its CPUs for network I/O (tokio's
    // default of one worker per CPU in each would oversubscribe the cores N times over, and
    // cross-thread wake-ups cost latency on every request).
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = (cpus / usize::from(layout.stores)).max(1).to_string();
    for i in layout.ids() {
        let mut spec = StoreSpec::new(&layout, dir, i, &cluster, &workers, a.zones);
        spec.args.extend(a.scheduling.to_args());
        let proc = spawn_store(exe, &spec)?;
        stores.push(Store {
            spec,
            state: State::Running(Box::new(proc)),
            restarts: 0,
        });
    }
    if !wait_ready(&layout, stores, sigint, sigterm).await? {
        return Ok(());
    }
    write_endpoints(&layout, &endpoints_path)?;
    print_banner(&layout, dir, &endpoints_path);
    print_join_hint(&layout, dir, a.zones);
    watch(a, &layout, exe, stores, sigint, sigterm).await;
    Ok(())
}

/// Waits until every store accepts connections on its client and RESP ports: Ok(true) then,
/// Ok(false) on a signal, an error when a store exits first or READY_TIMEOUT passes.
async fn wait_ready(
    layout: &Layout,
    stores: &mut [Store],
    sigint: &mut Signal,
    sigterm: &mut Signal,
) -> Result<bool> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut ready = vec![false; stores.len()];
    // Bounded by the deadline. Exits are checked at the top of each round, READY_POLL after
    // the probes, so a store whose ports a foreign program answers for but which itself
    // failed to bind is caught too (unless it takes longer than that to exit).
    loop {
        for s in stores.iter_mut() {
            if let Some(exit) = s.check_exit().await {
                report_exit(
                    layout,
                    &s.spec,
                    &exit,
                    "exited while the playground was starting",
                    true,
                    "stopping all stores: a playground starts whole or not at all",
                );
                bail!(
                    "store {} exited while the playground was starting ({}); see above",
                    s.spec.id,
                    exit.status
                );
            }
        }
        if ready.iter().all(|&r| r) {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            let waiting: Vec<String> = stores
                .iter()
                .zip(&ready)
                .filter(|(_, r)| !**r)
                .map(|(s, _)| {
                    let i = s.spec.id;
                    format!(
                        "store {i} (client {}, RESP {})",
                        local(layout.client(i)),
                        local(layout.resp(i))
                    )
                })
                .collect();
            bail!(
                "not every store answered within {} s: still waiting for {}; their stderr above \
                 may say why",
                READY_TIMEOUT.as_secs(),
                waiting.join(", ")
            );
        }
        for (s, r) in stores.iter().zip(ready.iter_mut()) {
            if !*r {
                let i = s.spec.id;
                *r = answers(layout.client(i)).await && answers(layout.resp(i)).await;
            }
        }
        tokio::select! {
            biased;
            _ = sigint.recv() => return Ok(false),
            _ = sigterm.recv() => return Ok(false),
            _ = tokio::time::sleep(READY_POLL) => {}
        }
    }
}

/// Writes endpoints.json (keys `id`, `client`, `peer`, `metrics`, `resp` per store) through a
/// temporary file and a rename, so a script polling for it never reads half of it.
fn write_endpoints(layout: &Layout, path: &Path) -> Result<()> {
    let endpoints: Vec<String> = layout
        .ids()
        .map(|i| {
            serde_json_like(
                i,
                &local(layout.client(i)),
                &local(layout.metrics(i)),
                &local(layout.peer(i)),
                &local(layout.resp(i)),
            )
        })
        .collect();
    let json = format!("{{\n  \"stores\": [\n{}\n  ]\n}}\n", endpoints.join(",\n"));
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, &json).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

fn serde_json_like(id: u16, client: &str, metrics: &str, peer: &str, resp: &str) -> String {
    format!("    {{\"id\": {id}, \"client\": \"{client}\", \"peer\": \"{peer}\", \"metrics\": \"{metrics}\", \"resp\": \"{resp}\"}}")
}

/// How to add one more store to the running playground: the ports the next store number
/// would have in this layout (its id comes from placement), while they fit.
fn print_join_hint(layout: &Layout, dir: &Path, zones: u16) {
    let next = u32::from(layout.stores) + 1;
    let base = u32::from(layout.base);
    if next > u32::from(MAX_STORES) || base + 300 + next > u32::from(u16::MAX) {
        return;
    }
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "raftkv".into());
    let labels = u16::try_from(next)
        .ok()
        .and_then(|n| zone_of(n, zones))
        .map(|z| format!(" --labels zone={z}"))
        .unwrap_or_default();
    println!(
        "  add a store: {exe} server --join 127.0.0.1:{} --data-dir {} --peer-addr 127.0.0.1:{} --client-addr 127.0.0.1:{} --resp-addr 127.0.0.1:{}{labels}",
        base + 1,
        dir.join(format!("store{next}")).display(),
        base + next,
        base + 100 + next,
        base + 300 + next
    );
    println!("  then: raftkv store list   (and raftkv store drain ID to take one out)");
}

fn print_banner(layout: &Layout, dir: &Path, endpoints_path: &Path) {
    let n = layout.stores;
    let list = |port: fn(&Layout, u16) -> u16| {
        layout
            .ids()
            .map(|i| local(port(layout, i)))
            .collect::<Vec<_>>()
            .join(",")
    };
    println!(
        "RaftKV playground: {n} {}, data in {}",
        if n == 1 { "store" } else { "stores" },
        dir.display()
    );
    println!("  client endpoints: {}", list(Layout::client));
    println!(
        "  redis (RESP) endpoints: {}  (try: redis-cli -p {} set hello world)",
        list(Layout::resp),
        layout.resp(1)
    );
    let first = layout.metrics(1);
    if n == 1 {
        println!("  metrics: http://127.0.0.1:{first}/metrics");
    } else {
        println!(
            "  metrics: http://127.0.0.1:{first}/metrics (store 1; store i on port {}+i, up to {})",
            layout.base + 200,
            layout.metrics(n)
        );
    }
    println!("  endpoints written to {}", endpoints_path.display());
    println!("  try: raftkv put hello world && raftkv get hello && raftkv status");
    println!("Ctrl-C stops the cluster.");
}

/// After startup, until a signal: reports every store that exits; the others keep running.
/// With `--restart-crashed` a crashed store is restarted, each restart reported.
async fn watch(
    a: &PlaygroundArgs,
    layout: &Layout,
    exe: &Path,
    stores: &mut [Store],
    sigint: &mut Signal,
    sigterm: &mut Signal,
) {
    // Ends only on a signal; each round's work is bounded by the number of stores.
    loop {
        tokio::select! {
            // Signals first: a Ctrl-C in a terminal also reaches the stores, and their exits
            // must not be mistaken for crashes (or restarted).
            biased;
            _ = sigint.recv() => return,
            _ = sigterm.recv() => return,
            _ = tokio::time::sleep(WATCH_POLL) => {}
        }
        for s in stores.iter_mut() {
            if s.is_running() {
                if let Some(exit) = s.check_exit().await {
                    after_exit(a, layout, exe, s, &exit);
                }
            } else if s.restart_due(Instant::now()) {
                restart(exe, s);
            }
        }
    }
}

/// Reports a store that exited after startup and decides whether it is restarted.
fn after_exit(a: &PlaygroundArgs, layout: &Layout, exe: &Path, s: &mut Store, exit: &Exit) {
    let by_hand = format!("To run it again by hand: {}", s.spec.command_line(exe));
    let (what, advice) = if exit.clean {
        (
            // Status 0: it was asked to stop (SIGTERM, Ctrl-C); it did not crash.
            "stopped, as something asked it to",
            format!("not restarting it; the other stores keep running. {by_hand}"),
        )
    } else if !a.restart_crashed {
        (
            "crashed",
            format!(
                "the other stores keep running. To have crashed stores restarted, start the \
                 playground with --restart-crashed. {by_hand}"
            ),
        )
    } else if s.restarts < MAX_RESTARTS {
        let wait = RESTART_BACKOFF * 2u32.pow(s.restarts);
        s.state = State::RestartAt(Instant::now() + wait);
        (
            "crashed",
            format!(
                "restarting it in {:.1} s (restart {} of {MAX_RESTARTS})",
                wait.as_secs_f64(),
                s.restarts + 1
            ),
        )
    } else {
        (
            "crashed",
            format!(
                "not restarting it: it was restarted {MAX_RESTARTS} times already; the other \
                 stores keep running. {by_hand}"
            ),
        )
    };
    report_exit(layout, &s.spec, exit, what, !exit.clean, &advice);
}

/// Starts a crashed store again with its original command line.
fn restart(exe: &Path, s: &mut Store) {
    s.restarts += 1;
    let i = s.spec.id;
    match spawn_store(exe, &s.spec) {
        Ok(p) => {
            let pid = p
                .child
                .id()
                .map_or_else(String::new, |pid| format!(", pid {pid}"));
            s.state = State::Running(Box::new(p));
            note(&format!(
                "store {i} restarted (restart {} of {MAX_RESTARTS}{pid})",
                s.restarts
            ));
        }
        Err(e) => {
            if s.restarts < MAX_RESTARTS {
                let wait = RESTART_BACKOFF * 2u32.pow(s.restarts);
                s.state = State::RestartAt(Instant::now() + wait);
                note(&format!(
                    "restart {} of {MAX_RESTARTS} of store {i} failed: {e:#}; trying again in {:.1} s",
                    s.restarts,
                    wait.as_secs_f64()
                ));
            } else {
                s.state = State::Down;
                note(&format!(
                    "restart {} of {MAX_RESTARTS} of store {i} failed: {e:#}; leaving it down",
                    s.restarts
                ));
            }
        }
    }
}

/// Stops every running store: SIGTERM to all (so they shut down in parallel), then up to
/// STOP_TIMEOUT for each to exit before it is killed.
async fn stop_all(stores: &mut [Store]) {
    for s in stores.iter() {
        if let State::Running(p) = &s.state {
            // `id()` is None once the child was reaped, so no other process gets the signal.
            if let Some(pid) = p.child.id().and_then(|pid| libc::pid_t::try_from(pid).ok()) {
                // SAFETY: sending a signal to our own, not yet reaped child process by pid.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
        }
    }
    for s in stores.iter_mut() {
        let State::Running(mut p) = std::mem::replace(&mut s.state, State::Down) else {
            continue;
        };
        if tokio::time::timeout(STOP_TIMEOUT, p.child.wait())
            .await
            .is_err()
        {
            note(&format!(
                "store {} did not stop within {} s of SIGTERM; killing it",
                s.spec.id,
                STOP_TIMEOUT.as_secs()
            ));
            let _ = p.child.start_kill();
            let _ = tokio::time::timeout(KILL_TIMEOUT, p.child.wait()).await;
        }
        // Let its last log lines through before the playground exits.
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, &mut p.stderr_task).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_counts_outside_1_to_99_are_refused() {
        assert!(parse_stores("0").is_err());
        assert!(parse_stores("100").is_err());
        assert!(parse_stores("-1").is_err());
        assert!(parse_stores("three").is_err());
        assert_eq!(parse_stores("1"), Ok(1));
        assert_eq!(parse_stores("99"), Ok(99));
    }

    #[test]
    fn ports_past_65535_are_refused() {
        assert!(Layout::new(65535 - 303, 3).is_ok());
        assert!(Layout::new(65535 - 302, 3).is_err());
        assert!(Layout::new(u16::MAX, 1).is_err());
        assert!(Layout::new(17000, 0).is_err());
        let l = Layout::new(17000, 3).unwrap();
        assert_eq!(
            (l.peer(3), l.client(3), l.metrics(3), l.resp(3)),
            (17003, 17103, 17203, 17303)
        );
    }

    #[test]
    fn zones_go_round_the_stores() {
        assert_eq!(zone_of(1, 0), None);
        let zones: Vec<_> = (1..=5).map(|i| zone_of(i, 3).unwrap()).collect();
        assert_eq!(zones, ["z1", "z2", "z3", "z1", "z2"]);
        assert_eq!(zone_of(7, 1).as_deref(), Some("z1"));
        let layout = Layout::new(17000, 5).unwrap();
        let spec = StoreSpec::new(&layout, Path::new("/tmp/p"), 5, "1=a", "1", 3);
        let args: Vec<String> = spec
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let at = args.iter().position(|a| a == "--labels").unwrap();
        assert_eq!(args[at + 1], "zone=z2");
        let spec = StoreSpec::new(&layout, Path::new("/tmp/p"), 5, "1=a", "1", 0);
        assert!(!spec.args.iter().any(|a| a == "--labels"));
    }

    #[test]
    fn odd_arguments_are_quoted_for_the_shell() {
        assert_eq!(shell_quote("--id"), "--id");
        assert_eq!(shell_quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
