//! Latency and throughput of the log engine against a raw write+fdatasync baseline on the
//! same directory. A plain `main` (no criterion): it prints a table.
//!
//! ```text
//! cargo bench -p raft-log --bench engine                 # quick, ~30 s
//! cargo bench -p raft-log --bench engine -- --smoke      # a couple of seconds, for CI
//! RAFTLOG_BENCH_SECONDS=10 RAFTLOG_BENCH_RECOVERY_MIB=1024 cargo bench -p raft-log --bench engine
//! ```
//! Phases, in interleaved rounds: raw write+fdatasync, one writer, `RAFTLOG_BENCH_THREADS`
//! OS-thread writers (`write`), and as many async writers (`write_async`, tokio tasks on 2
//! worker threads).
//! Environment: `RAFTLOG_BENCH_DIR` (default: the system temp dir), `RAFTLOG_BENCH_SMOKE=1`,
//! `RAFTLOG_BENCH_SECONDS` (per measured phase, default 4), `RAFTLOG_BENCH_RECOVERY_MIB`
//! (default 256), `RAFTLOG_BENCH_THREADS` (default 64), `RAFTLOG_BENCH_DROP_CACHES=1` (drop
//! the page cache before the recovery measurement; needs root).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use raft_log::{Config, FileSystem, GroupId, LogBatch, LogEngine, LogEntry, StdFileSystem};

const PAYLOAD_BYTES: usize = 256;
const RECOVERY_ENTRY_BYTES: usize = 1024;
const RECOVERY_ENTRIES_PER_BATCH: u64 = 16;
const RECOVERY_GROUPS: u64 = 64;

struct Settings {
    smoke: bool,
    phase: Duration,
    recovery_mib: u64,
    threads: u64,
    drop_caches: bool,
    base: PathBuf,
}

fn env_number(name: &str) -> Option<f64> {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
}

fn settings() -> Settings {
    let smoke = std::env::args().any(|arg| arg == "--smoke")
        || std::env::var("RAFTLOG_BENCH_SMOKE").is_ok_and(|value| value == "1");
    let phase = env_number("RAFTLOG_BENCH_SECONDS").unwrap_or(if smoke { 0.4 } else { 4.0 });
    Settings {
        smoke,
        phase: Duration::from_secs_f64(phase),
        recovery_mib: env_number("RAFTLOG_BENCH_RECOVERY_MIB")
            .map_or(if smoke { 16 } else { 256 }, |mib| mib as u64),
        threads: env_number("RAFTLOG_BENCH_THREADS").map_or(64, |threads| threads as u64),
        drop_caches: std::env::var("RAFTLOG_BENCH_DROP_CACHES").is_ok_and(|value| value == "1"),
        base: std::env::var_os("RAFTLOG_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from),
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds are valid")
}

fn micros(nanos: u64) -> f64 {
    nanos as f64 / 1000.0
}

struct Latency {
    p50_us: f64,
    p99_us: f64,
    per_second: f64,
    count: u64,
}

fn summarize(histogram: &Histogram<u64>, elapsed: Duration) -> Latency {
    Latency {
        p50_us: micros(histogram.value_at_quantile(0.50)),
        p99_us: micros(histogram.value_at_quantile(0.99)),
        per_second: histogram.len() as f64 / elapsed.as_secs_f64(),
        count: histogram.len(),
    }
}

/// The measurements are taken in interleaved rounds (raw, one writer, many writers, raw,
/// ...) so that all three see the same disk conditions: on a shared machine fdatasync latency
/// swings by 20x with other processes' journal traffic, and back-to-back phases would compare
/// different disks.
const ROUNDS: u32 = 8;

/// write(256 B) + fdatasync on a plain file, as fast as possible, for `duration`.
fn raw_round(file: &mut std::fs::File, duration: Duration, latencies: &mut Histogram<u64>) {
    let payload = [0xA5u8; PAYLOAD_BYTES];
    let started = Instant::now();
    while started.elapsed() < duration {
        let begin = Instant::now();
        file.write_all(&payload).expect("write");
        file.sync_data().expect("fdatasync");
        latencies
            .record(begin.elapsed().as_nanos() as u64)
            .expect("record");
    }
}

fn open_engine(dir: &Path) -> LogEngine {
    LogEngine::open(dir, Config::default(), Arc::new(StdFileSystem)).expect("open engine")
}

/// One writer appending 256-byte entries to one group, each waiting for durability.
fn one_writer_round(
    engine: &LogEngine,
    index: &mut u64,
    duration: Duration,
    latencies: &mut Histogram<u64>,
) {
    let payload = Bytes::from(vec![0x5Au8; PAYLOAD_BYTES]);
    let mut batch = LogBatch::new();
    let started = Instant::now();
    while started.elapsed() < duration {
        *index += 1;
        let begin = Instant::now();
        batch
            .append(
                GroupId(1),
                vec![LogEntry {
                    index: *index,
                    term: 1,
                    data: payload.clone(),
                }],
            )
            .expect("append");
        engine.write(&mut batch, true).expect("write");
        latencies
            .record(begin.elapsed().as_nanos() as u64)
            .expect("record");
    }
}

/// `threads` writers, each on its own group, each append waiting for durability.
fn many_writers_round(
    engine: &LogEngine,
    threads: u64,
    duration: Duration,
    latencies: &mut Histogram<u64>,
) {
    let payload = Bytes::from(vec![0x3Cu8; PAYLOAD_BYTES]);
    let stop = AtomicBool::new(false);
    let merged = Mutex::new(histogram());
    std::thread::scope(|scope| {
        for thread in 0..threads {
            let (stop, merged, payload) = (&stop, &merged, payload.clone());
            scope.spawn(move || {
                let mut local = histogram();
                let mut batch = LogBatch::new();
                let mut index = engine.last_index(GroupId(100 + thread)).unwrap_or(0);
                while !stop.load(Ordering::Relaxed) {
                    index += 1;
                    let begin = Instant::now();
                    batch
                        .append(
                            GroupId(100 + thread),
                            vec![LogEntry {
                                index,
                                term: 1,
                                data: payload.clone(),
                            }],
                        )
                        .expect("append");
                    engine.write(&mut batch, true).expect("write");
                    local
                        .record(begin.elapsed().as_nanos() as u64)
                        .expect("record");
                }
                merged.lock().expect("merge").add(&local).expect("add");
            });
        }
        std::thread::sleep(duration);
        stop.store(true, Ordering::Relaxed);
    });
    latencies
        .add(&*merged.lock().expect("merged"))
        .expect("add");
}

/// Worker threads of the runtime the async writers run on (the server's tokio runtime on a
/// 2 vCPU machine).
const ASYNC_WORKER_THREADS: usize = 2;

/// `tasks` async writers (tokio tasks), each on its own group, each append awaiting
/// durability through `write_async`.
fn async_writers_round(
    runtime: &tokio::runtime::Runtime,
    engine: &Arc<LogEngine>,
    tasks: u64,
    duration: Duration,
    latencies: &mut Histogram<u64>,
) {
    let payload = Bytes::from(vec![0x4Bu8; PAYLOAD_BYTES]);
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let (engine, stop, payload) = (Arc::clone(engine), Arc::clone(&stop), payload.clone());
            runtime.spawn(async move {
                let mut local = histogram();
                let group = GroupId(ASYNC_GROUP_BASE + task);
                let mut index = engine.last_index(group).unwrap_or(0);
                while !stop.load(Ordering::Relaxed) {
                    index += 1;
                    let begin = Instant::now();
                    let mut batch = LogBatch::new();
                    batch
                        .append(
                            group,
                            vec![LogEntry {
                                index,
                                term: 1,
                                data: payload.clone(),
                            }],
                        )
                        .expect("append");
                    engine.write_async(batch, true).await.expect("write_async");
                    local
                        .record(begin.elapsed().as_nanos() as u64)
                        .expect("record");
                }
                local
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    runtime.block_on(async {
        for handle in handles {
            latencies
                .add(handle.await.expect("async writer"))
                .expect("add");
        }
    });
}

/// First group of the async writers (the thread writers use 100..).
const ASYNC_GROUP_BASE: u64 = 100_000;

fn recovery(dir: &Path, mib: u64, drop_caches: bool) -> (Duration, Duration, u64, u64, usize) {
    let engine = open_engine(dir);
    let target_bytes = mib << 20;
    let payload = Bytes::from(vec![0x77u8; RECOVERY_ENTRY_BYTES]);
    let mut next_index = vec![1u64; RECOVERY_GROUPS as usize];
    let written = AtomicU64::new(0);
    let mut entries = 0u64;
    let mut batch = LogBatch::new();
    let fill_started = Instant::now();
    let mut round = 0u64;
    while written.load(Ordering::Relaxed) < target_bytes {
        let group = round % RECOVERY_GROUPS;
        round += 1;
        let first = next_index[group as usize];
        let batch_entries: Vec<LogEntry> = (first..first + RECOVERY_ENTRIES_PER_BATCH)
            .map(|index| LogEntry {
                index,
                term: 1,
                data: payload.clone(),
            })
            .collect();
        next_index[group as usize] += RECOVERY_ENTRIES_PER_BATCH;
        entries += RECOVERY_ENTRIES_PER_BATCH;
        batch.append(GroupId(group), batch_entries).expect("append");
        batch.put_state(GroupId(group), b"hard_state", &first.to_le_bytes());
        let bytes = engine.write(&mut batch, false).expect("write");
        written.fetch_add(bytes, Ordering::Relaxed);
    }
    engine.sync().expect("sync");
    let fill = fill_started.elapsed();
    let segments = engine.stats().segment_count;
    drop(engine);
    if drop_caches {
        let dropped = std::process::Command::new("sh")
            .args(["-c", "sync && echo 3 > /proc/sys/vm/drop_caches"])
            .status()
            .is_ok_and(|status| status.success());
        println!("# page cache dropped before recovery: {dropped}");
    }
    let started = Instant::now();
    let engine = open_engine(dir);
    let open_time = started.elapsed();
    let report = engine.recovery_report().clone();
    assert_eq!(
        engine.stats().live_entry_count,
        entries,
        "recovery lost entries"
    );
    assert!(report.torn_tail.is_none());
    (fill, open_time, report.bytes_read, entries, segments)
}

fn fresh_dir(base: &Path, name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("raftlog-bench-{name}-"))
        .tempdir_in(base)
        .expect("create bench directory")
}

fn main() {
    let settings = settings();
    println!(
        "# raft-log engine benchmark ({} mode; {:.1} s per phase; dir {})",
        if settings.smoke { "smoke" } else { "quick" },
        settings.phase.as_secs_f64(),
        settings.base.display()
    );
    let _ = StdFileSystem.create_dir_all(&settings.base);

    let raw_dir = fresh_dir(&settings.base, "raw");
    let mut raw_file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(raw_dir.path().join("raw-baseline"))
        .expect("create baseline file");
    let engine_dir = fresh_dir(&settings.base, "engine");
    let engine = Arc::new(open_engine(engine_dir.path()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(ASYNC_WORKER_THREADS)
        .build()
        .expect("tokio runtime");
    let (mut raw_latencies, mut single_latencies, mut many_latencies, mut async_latencies) =
        (histogram(), histogram(), histogram(), histogram());
    let (mut raw_time, mut single_time, mut many_time, mut async_time) = (
        Duration::ZERO,
        Duration::ZERO,
        Duration::ZERO,
        Duration::ZERO,
    );
    let round = settings.phase / ROUNDS;
    let mut single_index = 0u64;
    for _ in 0..ROUNDS {
        let started = Instant::now();
        raw_round(&mut raw_file, round, &mut raw_latencies);
        raw_time += started.elapsed();
        let started = Instant::now();
        one_writer_round(&engine, &mut single_index, round, &mut single_latencies);
        single_time += started.elapsed();
        let started = Instant::now();
        many_writers_round(&engine, settings.threads, round, &mut many_latencies);
        many_time += started.elapsed();
        let started = Instant::now();
        async_writers_round(
            &runtime,
            &engine,
            settings.threads,
            round,
            &mut async_latencies,
        );
        async_time += started.elapsed();
    }
    drop(runtime);
    // Every acknowledged append must be there: a benchmark that loses writes measures nothing.
    let present: u64 = (0..settings.threads)
        .map(|thread| engine.last_index(GroupId(100 + thread)).unwrap_or(0))
        .sum();
    assert_eq!(
        present,
        many_latencies.len(),
        "acknowledged appends missing from the engine"
    );
    let present_async: u64 = (0..settings.threads)
        .map(|task| {
            engine
                .last_index(GroupId(ASYNC_GROUP_BASE + task))
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(
        present_async,
        async_latencies.len(),
        "acknowledged async appends missing from the engine"
    );
    assert_eq!(
        engine.last_index(GroupId(1)).unwrap_or(0),
        single_latencies.len()
    );
    let stats = engine.stats();
    println!(
        "# engine: {} group commits wrote {} batches ({:.1} per commit), {} fdatasyncs",
        stats.group_commits,
        stats.batches_written,
        stats.batches_written as f64 / stats.group_commits.max(1) as f64,
        stats.syncs
    );
    drop(Arc::into_inner(engine).expect("writers are done"));
    drop(engine_dir);
    drop(raw_file);
    let raw = summarize(&raw_latencies, raw_time);
    let single = summarize(&single_latencies, single_time);
    let many = summarize(&many_latencies, many_time);
    let many_async = summarize(&async_latencies, async_time);
    let recovery_dir = fresh_dir(&settings.base, "recovery");
    let (fill, open_time, bytes, entries, segments) = recovery(
        recovery_dir.path(),
        settings.recovery_mib,
        settings.drop_caches,
    );
    drop(recovery_dir);
    drop(raw_dir);
    println!(
        "# {ROUNDS} interleaved rounds of raw / one writer / {} writer threads / {} async writers",
        settings.threads, settings.threads
    );

    println!();
    println!("| measurement | p50 (µs) | p99 (µs) | ops/s | count | ratio | target |");
    println!("|---|---:|---:|---:|---:|---:|---|");
    println!(
        "| raw write({PAYLOAD_BYTES} B) + fdatasync | {:.1} | {:.1} | {:.0} | {} | 1.00 | baseline |",
        raw.p50_us, raw.p99_us, raw.per_second, raw.count
    );
    println!(
        "| 1 writer, {PAYLOAD_BYTES} B append, sync | {:.1} | {:.1} | {:.0} | {} | {:.2}x raw p50 | <= 1.3x |",
        single.p50_us,
        single.p99_us,
        single.per_second,
        single.count,
        single.p50_us / raw.p50_us
    );
    println!(
        "| {} writers on {} groups, {PAYLOAD_BYTES} B append, sync | {:.1} | {:.1} | {:.0} | {} | {:.1}x raw syncs/s | >= 20x |",
        settings.threads,
        settings.threads,
        many.p50_us,
        many.p99_us,
        many.per_second,
        many.count,
        many.per_second / raw.per_second
    );
    println!(
        "| {} async writers (tokio tasks, {ASYNC_WORKER_THREADS} worker threads) on {} groups, {PAYLOAD_BYTES} B append, each awaiting durability | {:.1} | {:.1} | {:.0} | {} | {:.1}x raw syncs/s | >= 20x |",
        settings.threads,
        settings.threads,
        many_async.p50_us,
        many_async.p99_us,
        many_async.per_second,
        many_async.count,
        many_async.per_second / raw.per_second
    );
    println!();
    println!(
        "| recovery | log size | segments | entries | fill time | open time | open MiB/s |\n|---|---:|---:|---:|---:|---:|---:|\n| open() rebuilding the index | {:.0} MiB | {segments} | {entries} ({RECOVERY_ENTRY_BYTES} B each) | {:.2} s | {:.3} s | {:.0} |",
        bytes as f64 / (1 << 20) as f64,
        fill.as_secs_f64(),
        open_time.as_secs_f64(),
        bytes as f64 / (1 << 20) as f64 / open_time.as_secs_f64()
    );
}
