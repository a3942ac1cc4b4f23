//! Running one benchmark: preload, clients with an optional rate limit, progress, and the
//! merged HDR histogram.

use crate::keys::{key_bytes, Distribution, KeyChooser, Rng};
use crate::report::{Latency, Report};
use crate::target::{Connection, TargetKind};
use hdrhistogram::Histogram;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The operation mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// 100 % writes (overwrites over the key space).
    Write,
    /// 100 % reads of preloaded keys.
    Read,
    /// YCSB-A: 50 % reads, 50 % updates.
    YcsbA,
    /// YCSB-B: 95 % reads, 5 % updates.
    YcsbB,
    /// Writes every key exactly once, then stops (to fill a store, e.g. for memory use).
    Load,
}

impl Workload {
    /// Fraction of operations that are reads.
    pub fn read_fraction(self) -> f64 {
        match self {
            Workload::Write | Workload::Load => 0.0,
            Workload::Read => 1.0,
            Workload::YcsbA => 0.5,
            Workload::YcsbB => 0.95,
        }
    }
}

impl std::str::FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "write" => Ok(Workload::Write),
            "read" => Ok(Workload::Read),
            "ycsb-a" | "a" => Ok(Workload::YcsbA),
            "ycsb-b" | "b" => Ok(Workload::YcsbB),
            "load" => Ok(Workload::Load),
            other => Err(format!(
                "unknown workload {other:?}: use write, read, ycsb-a, ycsb-b or load"
            )),
        }
    }
}

/// Everything one run needs.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub target: TargetKind,
    pub endpoints: Vec<String>,
    pub workload: Workload,
    pub distribution: Distribution,
    pub keys: u64,
    pub value_size: usize,
    pub clients: usize,
    /// Shared TCP connections (0 = one per client).
    pub connections: usize,
    /// Stop after this long (the default when `ops` is not set)...
    pub duration: Duration,
    /// ...or after this many operations in total.
    pub ops: Option<u64>,
    /// Total operations per second across clients (None = as fast as possible).
    pub rate: Option<u64>,
    /// Write every key before a workload that reads (skipped for `write` and `load`).
    pub preload: bool,
    /// Local, possibly stale reads (RaftKV stale read, etcd serializable).
    pub stale: bool,
    pub progress: bool,
    pub seed: u64,
}

/// Limits that keep a typo from exhausting the machine.
pub const MAX_CLIENTS: usize = 10_000;
pub const MAX_VALUE_SIZE: usize = 8 << 20;
/// Latencies above this are clamped into the histogram's top bucket (and still counted).
const HIST_MAX_US: u64 = 120_000_000;

impl BenchConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.clients == 0 || self.clients > MAX_CLIENTS {
            return Err(format!("--clients must be in 1..={MAX_CLIENTS}"));
        }
        if self.keys == 0 {
            return Err("--keys must be at least 1".into());
        }
        if self.value_size > MAX_VALUE_SIZE {
            return Err(format!("--value-size must be at most {MAX_VALUE_SIZE}"));
        }
        if self.ops == Some(0) || self.rate == Some(0) {
            return Err("--ops and --rate must be at least 1 when given".into());
        }
        if self.ops.is_none() && self.duration.is_zero() && self.workload != Workload::Load {
            return Err("give --duration-secs or --ops".into());
        }
        if self.endpoints.is_empty() {
            return Err("no endpoints given".into());
        }
        Ok(())
    }
}

pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds")
}

/// Runs the benchmark and returns its report. Errors only when nothing could be done at all
/// (bad config, no connection); failed operations are counted in the report.
pub async fn run(cfg: BenchConfig) -> Result<Report, String> {
    cfg.validate()?;
    let connections = if cfg.connections == 0 {
        cfg.clients
    } else {
        cfg.connections
    };
    let conns = Connection::open_all(cfg.target, &cfg.endpoints, connections, cfg.clients)
        .await
        .map_err(|e| format!("cannot connect to {:?}: {e}", cfg.endpoints))?;
    let value = Arc::new(vec![b'x'; cfg.value_size]);
    let mut conns = conns;
    let needs_preload = cfg.preload && !matches!(cfg.workload, Workload::Write | Workload::Load);
    if needs_preload {
        conns = load_keys(conns, cfg.keys, &value, cfg.progress, "preload").await?;
    }
    if cfg.workload == Workload::Load {
        let t0 = Instant::now();
        let hist_errors = Arc::new(AtomicU64::new(0));
        let (conns_back, hist) =
            load_keys_measured(conns, cfg.keys, &value, cfg.progress, hist_errors.clone()).await;
        drop(conns_back);
        return Ok(Report::new(
            &cfg,
            t0.elapsed(),
            &hist,
            hist_errors.load(Ordering::Relaxed),
        ));
    }

    let chooser = KeyChooser::new(cfg.distribution, cfg.keys);
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    // The first few failures, printed after the run so an error count is never unexplained.
    let first_errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let remaining = cfg.ops.map(|n| Arc::new(AtomicU64::new(n)));
    let start = Instant::now();
    let deadline = cfg.ops.is_none().then(|| start + cfg.duration);
    // Per-client pacing interval for --rate (open loop: latency counts from the intended
    // start, so a stalled server is not hidden by the client waiting — no coordinated
    // omission).
    let interval = cfg
        .rate
        .map(|r| Duration::from_secs_f64(cfg.clients as f64 / r as f64));
    let mut tasks = Vec::with_capacity(cfg.clients);
    for (i, mut conn) in conns.into_iter().enumerate() {
        let chooser = chooser.clone();
        let value = value.clone();
        let done = done.clone();
        let errors = errors.clone();
        let first_errors = first_errors.clone();
        let remaining = remaining.clone();
        let read_fraction = cfg.workload.read_fraction();
        let stale = cfg.stale;
        let seed = cfg.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(seed);
            let mut hist = new_histogram();
            let mut next = Instant::now();
            loop {
                if let Some(d) = deadline {
                    if Instant::now() >= d {
                        break;
                    }
                }
                if let Some(r) = &remaining {
                    if r.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                        .is_err()
                    {
                        break;
                    }
                }
                let intended = match interval {
                    Some(iv) => {
                        tokio::time::sleep_until(next.into()).await;
                        let at = next;
                        next += iv;
                        at
                    }
                    None => Instant::now(),
                };
                let key = key_bytes(chooser.next(&mut rng));
                let result = if rng.next_f64() < read_fraction {
                    conn.get(&key, stale).await.map(|_| ())
                } else {
                    conn.put(&key, &value).await
                };
                if let Err(e) = &result {
                    let mut first = first_errors.lock().unwrap_or_else(|p| p.into_inner());
                    if first.len() < MAX_ERRORS_SHOWN {
                        first.push(format!("{:.3} s: {e}", start.elapsed().as_secs_f64()));
                    }
                }
                if result.is_ok() {
                    let us = intended.elapsed().as_micros().max(1) as u64;
                    hist.saturating_record(us.min(HIST_MAX_US));
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            hist
        }));
    }
    let progress = cfg.progress.then(|| {
        let done = done.clone();
        let errors = errors.clone();
        let total = cfg.ops;
        let duration = cfg.duration;
        tokio::spawn(progress_loop(done, errors, start, duration, total))
    });
    let mut all = new_histogram();
    for t in tasks {
        let h = t.await.map_err(|e| format!("a client task failed: {e}"))?;
        all.add(&h).map_err(|e| e.to_string())?;
    }
    let elapsed = start.elapsed();
    if let Some(p) = progress {
        p.abort();
        eprintln!();
    }
    for e in first_errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        eprintln!("bench: failed operation at {e}");
    }
    Ok(Report::new(
        &cfg,
        elapsed,
        &all,
        errors.load(Ordering::Relaxed),
    ))
}

/// Failed operations whose error is printed after a run.
const MAX_ERRORS_SHOWN: usize = 5;

/// Writes keys `0..keys` once each, split over the connections; fails if any write fails
/// (a read benchmark over missing keys would measure the wrong thing).
async fn load_keys(
    conns: Vec<Connection>,
    keys: u64,
    value: &Arc<Vec<u8>>,
    progress: bool,
    what: &str,
) -> Result<Vec<Connection>, String> {
    let errors = Arc::new(AtomicU64::new(0));
    let (conns, _) = load_keys_measured(conns, keys, value, progress, errors.clone()).await;
    let failed = errors.load(Ordering::Relaxed);
    if failed > 0 {
        return Err(format!("{what}: {failed} of {keys} writes failed"));
    }
    Ok(conns)
}

async fn load_keys_measured(
    conns: Vec<Connection>,
    keys: u64,
    value: &Arc<Vec<u8>>,
    progress: bool,
    errors: Arc<AtomicU64>,
) -> (Vec<Connection>, Histogram<u64>) {
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for mut conn in conns {
        let next = next.clone();
        let done = done.clone();
        let errors = errors.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = new_histogram();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= keys {
                    break;
                }
                let t0 = Instant::now();
                match conn.put(&key_bytes(i), &value).await {
                    Ok(()) => {
                        hist.saturating_record(
                            (t0.elapsed().as_micros().max(1) as u64).min(HIST_MAX_US),
                        );
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            (conn, hist)
        }));
    }
    let p = progress.then(|| {
        tokio::spawn(progress_loop(
            done.clone(),
            errors.clone(),
            start,
            Duration::ZERO,
            Some(keys),
        ))
    });
    let mut conns = Vec::new();
    let mut all = new_histogram();
    for t in tasks {
        if let Ok((c, h)) = t.await {
            let _ = all.add(&h);
            conns.push(c);
        }
    }
    if let Some(p) = p {
        p.abort();
        eprintln!();
    }
    (conns, all)
}

/// A progress bar on stderr: redrawn in place on a terminal, one line every 5 s otherwise.
async fn progress_loop(
    done: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    start: Instant,
    duration: Duration,
    total: Option<u64>,
) {
    let tty = std::io::stderr().is_terminal();
    let every = if tty {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(5)
    };
    let mut last = (Instant::now(), 0u64);
    loop {
        tokio::time::sleep(every).await;
        let now = Instant::now();
        let n = done.load(Ordering::Relaxed);
        let rate = (n - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
        last = (now, n);
        let fraction = match total {
            Some(t) => n as f64 / t.max(1) as f64,
            None => start.elapsed().as_secs_f64() / duration.as_secs_f64().max(1e-9),
        }
        .min(1.0);
        const WIDTH: usize = 30;
        let filled = (fraction * WIDTH as f64) as usize;
        let bar: String = "=".repeat(filled) + &" ".repeat(WIDTH - filled);
        let line = format!(
            "[{bar}] {:>3.0}%  {:>6.1}s  {n} ops  {rate:>9.0} ops/s  {} errors",
            fraction * 100.0,
            start.elapsed().as_secs_f64(),
            errors.load(Ordering::Relaxed)
        );
        if tty {
            eprint!("\r{line}");
        } else {
            eprintln!("{line}");
        }
    }
}

/// Collects a latency summary from a histogram (microseconds).
pub(crate) fn latency_of(h: &Histogram<u64>) -> Latency {
    let ms = |us: u64| us as f64 / 1000.0;
    Latency {
        p50_ms: ms(h.value_at_quantile(0.50)),
        p90_ms: ms(h.value_at_quantile(0.90)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
        mean_ms: h.mean() / 1000.0,
    }
}
