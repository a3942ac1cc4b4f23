//! `LogEngine::write_async`: many async writers, crash durability of resolved futures, order
//! with the sync path, poisoning, and dropping the engine with writes queued.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use raft_log::{
    Config, Error, FaultOp, FaultyFileSystem, GroupId, LogBatch, LogEngine, LogEntry,
    MAX_QUEUED_WRITES,
};

fn entry(group: u64, index: u64, term: u64) -> LogEntry {
    LogEntry {
        index,
        term,
        data: Bytes::from(format!("g{group}-i{index}-t{term}")),
    }
}

fn batch(group: u64, index: u64, term: u64) -> LogBatch {
    let mut batch = LogBatch::new();
    batch
        .append(GroupId(group), vec![entry(group, index, term)])
        .expect("append");
    batch.put_state(GroupId(group), b"hs", &index.to_le_bytes());
    batch
}

fn open(fs: &FaultyFileSystem) -> LogEngine {
    LogEngine::open("/store/log", Config::default(), Arc::new(fs.clone())).expect("open")
}

fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_time()
        .build()
        .expect("runtime")
}

const TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn many_async_writers_on_many_groups_survive_reopen() {
    const GROUPS: u64 = 48;
    const WRITES: u64 = 60;
    let fs = FaultyFileSystem::new(11);
    fs.set_sync_delay(Duration::from_micros(300));
    let engine = Arc::new(open(&fs));
    let syncs_before = fs.sync_count();
    runtime(2).block_on(async {
        let mut tasks = Vec::new();
        for group in 0..GROUPS {
            let engine = Arc::clone(&engine);
            tasks.push(tokio::spawn(async move {
                // Odd groups pipeline: submit 4 appends, then await them (in order, so a
                // reorder would show as a gap error or a wrong last index).
                let depth = if group % 2 == 1 { 4 } else { 1 };
                let mut index = 1;
                while index <= WRITES {
                    let mut futures = Vec::new();
                    for _ in 0..depth {
                        if index > WRITES {
                            break;
                        }
                        futures.push(engine.write_async(batch(group, index, 1), true));
                        index += 1;
                    }
                    for future in futures {
                        future.await.expect("async write");
                    }
                    // Durable and visible once the future resolved.
                    assert_eq!(engine.last_index(GroupId(group)), Some(index - 1));
                }
            }));
        }
        for task in tasks {
            tokio::time::timeout(TIMEOUT, task)
                .await
                .expect("writers finish")
                .expect("writer task");
        }
    });
    let syncs = fs.sync_count() - syncs_before;
    assert!(
        syncs * 4 < GROUPS * WRITES,
        "async writers should share syncs: {syncs} syncs for {} writes",
        GROUPS * WRITES
    );
    drop(Arc::into_inner(engine).expect("tasks done"));
    fs.crash();
    let engine = open(&fs);
    for group in 0..GROUPS {
        let expected: Vec<LogEntry> = (1..=WRITES).map(|index| entry(group, index, 1)).collect();
        assert_eq!(
            engine
                .entries(GroupId(group), 1, WRITES + 1, usize::MAX)
                .expect("entries"),
            expected
        );
        assert_eq!(
            engine.get_state(GroupId(group), b"hs"),
            Some(Bytes::copy_from_slice(&WRITES.to_le_bytes()))
        );
    }
}

/// Power loss while 16 async writers keep writing (two in three of their writes synced): the
/// crash comes only once every writer had `10 + 10 * seed` synced writes acknowledged (so the
/// crash point moves with the seed), and must hit writes in flight (submitted and unresolved
/// just before and just after it; each then fails or, if it was done before the crash,
/// resolves). Every acknowledged synced write survives recovery.
#[test]
fn every_resolved_future_is_durable_after_a_crash() {
    use std::sync::atomic::{AtomicU64, Ordering};
    /// No write in flight (a writer's indexes start at 1).
    const IDLE: u64 = 0;
    for seed in 0..8u64 {
        const GROUPS: u64 = 16;
        let acked_before_crash = 10 + 10 * seed;
        let fs = FaultyFileSystem::new(100 + seed);
        fs.set_sync_delay(Duration::from_micros(200));
        let engine = Arc::new(open(&fs));
        // Per group: the highest acknowledged synced index, the highest index resolved
        // successfully (synced or not), and the index being written now.
        let acked: Arc<Vec<AtomicU64>> = Arc::new((0..GROUPS).map(|_| AtomicU64::new(0)).collect());
        let resolved: Arc<Vec<AtomicU64>> =
            Arc::new((0..GROUPS).map(|_| AtomicU64::new(0)).collect());
        let writing: Arc<Vec<AtomicU64>> =
            Arc::new((0..GROUPS).map(|_| AtomicU64::new(IDLE)).collect());
        let (in_flight, failed) = runtime(2).block_on(async {
            let mut tasks = Vec::new();
            for group in 0..GROUPS {
                let engine = Arc::clone(&engine);
                let (acked, resolved, writing) =
                    (Arc::clone(&acked), Arc::clone(&resolved), Arc::clone(&writing));
                tasks.push(tokio::spawn(async move {
                    let g = group as usize;
                    // Writes until the crash fails one; returns that index.
                    for index in 1.. {
                        // Some unsynced writes in between: they may or may not survive.
                        let sync = index % 3 != 0;
                        writing[g].store(index, Ordering::SeqCst);
                        let result = engine.write_async(batch(group, index, 1), sync).await;
                        writing[g].store(IDLE, Ordering::SeqCst);
                        if result.is_err() {
                            return Some(index);
                        }
                        resolved[g].store(index, Ordering::SeqCst);
                        if sync {
                            acked[g].store(index, Ordering::SeqCst);
                        }
                    }
                    None
                }));
            }
            let deadline = std::time::Instant::now() + TIMEOUT;
            while acked
                .iter()
                .any(|a| a.load(Ordering::SeqCst) < acked_before_crash)
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "seed {seed}: not every writer had {acked_before_crash} writes acknowledged within {TIMEOUT:?}"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let outstanding = || -> Vec<(usize, u64)> {
                writing
                    .iter()
                    .enumerate()
                    .map(|(g, w)| (g, w.load(Ordering::SeqCst)))
                    .filter(|&(_, index)| index != IDLE)
                    .collect()
            };
            // Slow the disk down so that writes stay in flight across the crash: once a sync
            // completes after the change, any sync running is a slow one, and the writes
            // waiting on it cannot resolve between the two looks below (with 200 µs syncs, a
            // loaded machine let every write in flight finish in between).
            fs.set_sync_delay(Duration::from_millis(200));
            let syncs = fs.sync_count();
            while fs.sync_count() == syncs {
                assert!(
                    std::time::Instant::now() < deadline,
                    "seed {seed}: no sync completed within {TIMEOUT:?}"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // The writes that sync resolved may not have been seen by their writers yet
            // (their indexes still look in flight): wait until a writer has moved on to a
            // later synced write, which waits for the next slow sync (CI saw seed 5 take its look
            // while every write "in flight" was one that sync had resolved). Should a slow
            // sync complete meanwhile, start over from it.
            let before = loop {
                let resolved_at = fs.sync_count();
                let at_sync: Vec<u64> = writing.iter().map(|w| w.load(Ordering::SeqCst)).collect();
                loop {
                    // A synced write submitted after that sync completed: it waits for the
                    // next (slow) one.
                    let moved_on = writing.iter().zip(&at_sync).any(|(w, &then)| {
                        let now = w.load(Ordering::SeqCst);
                        now != IDLE && now > then && now % 3 != 0
                    });
                    if moved_on || fs.sync_count() != resolved_at {
                        break;
                    }
                    assert!(
                        std::time::Instant::now() < deadline,
                        "seed {seed}: the writers did not move on within {TIMEOUT:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let before = outstanding();
                if fs.sync_count() == resolved_at {
                    break before;
                }
            };
            // Power loss while writes are in flight: the engine's file handles die, queued
            // and later writes fail.
            fs.crash();
            let after = outstanding();
            fs.set_sync_delay(Duration::from_micros(200));
            let in_flight: Vec<(usize, u64)> =
                before.into_iter().filter(|w| after.contains(w)).collect();
            let mut failed = Vec::new();
            for task in tasks {
                failed.push(
                    tokio::time::timeout(TIMEOUT, task)
                        .await
                        .expect("writers stop after the crash")
                        .expect("writer task"),
                );
            }
            (in_flight, failed)
        });
        assert!(
            !in_flight.is_empty(),
            "seed {seed}: no write was in flight at the crash"
        );
        for &(group, index) in &in_flight {
            // Failed, or resolved because it was done before the crash.
            assert!(
                failed[group] == Some(index) || resolved[group].load(Ordering::SeqCst) >= index,
                "seed {seed}: group {group}'s write {index}, in flight at the crash, neither failed nor resolved"
            );
        }
        for (group, result) in failed.iter().enumerate() {
            assert!(
                result.is_some(),
                "seed {seed}: group {group}'s writer never saw the crash"
            );
        }
        let error = engine
            .write(&mut batch(0, 1_000_000, 1), true)
            .expect_err("poisoned or dead after the crash");
        assert!(
            matches!(error, Error::Poisoned { .. } | Error::Io { .. }),
            "{error}"
        );
        drop(Arc::into_inner(engine).expect("tasks done"));
        let engine = open(&fs);
        eprintln!(
            "seed {seed}: crash after {acked_before_crash}+ acknowledged writes per group; {} writes in flight",
            in_flight.len()
        );
        for (group, index) in acked.iter().enumerate() {
            let index = index.load(Ordering::SeqCst);
            let group = group as u64;
            assert!(index >= acked_before_crash);
            let last = engine.last_index(GroupId(group)).unwrap_or(0);
            assert!(
                last >= index,
                "seed {seed} group {group}: acknowledged {index}, recovered up to {last}"
            );
            assert_eq!(
                engine
                    .entries(GroupId(group), 1, index + 1, usize::MAX)
                    .expect("acknowledged entries"),
                (1..=index)
                    .map(|index| entry(group, index, 1))
                    .collect::<Vec<_>>()
            );
        }
    }
}

#[test]
fn sync_and_async_writes_to_one_group_keep_their_order() {
    let fs = FaultyFileSystem::new(12);
    // A slow disk lets the queue fill past MAX_QUEUED_WRITES, so admission order is tested
    // too.
    fs.set_sync_delay(Duration::from_millis(2));
    let engine = Arc::new(open(&fs));
    let total = (MAX_QUEUED_WRITES as u64) * 2 + 100;
    let rt = runtime(2);
    let mut futures = Vec::new();
    let mut index = 1u64;
    while index <= total {
        // Three async appends (not awaited), then one sync append from this thread: the sync
        // one must be applied after them, or it would leave a gap and be refused.
        for _ in 0..3 {
            futures.push(engine.write_async(batch(7, index, 2), index % 2 == 0));
            index += 1;
        }
        engine
            .write(&mut batch(7, index, 2), index % 5 == 0)
            .expect("sync write after async ones");
        assert_eq!(engine.last_index(GroupId(7)), Some(index));
        index += 1;
    }
    let last = index - 1;
    rt.block_on(async {
        for future in futures {
            tokio::time::timeout(TIMEOUT, future)
                .await
                .expect("resolves")
                .expect("async write");
        }
    });
    let expected: Vec<LogEntry> = (1..=last).map(|index| entry(7, index, 2)).collect();
    assert_eq!(
        engine
            .entries(GroupId(7), 1, last + 1, usize::MAX)
            .expect("entries"),
        expected
    );
    engine.sync().expect("sync");
    drop(Arc::into_inner(engine).expect("one owner"));
    fs.crash();
    let engine = open(&fs);
    assert_eq!(
        engine
            .entries(GroupId(7), 1, last + 1, usize::MAX)
            .expect("entries after reopen"),
        expected
    );
}

#[test]
fn concurrent_sync_threads_and_async_tasks_on_shared_groups() {
    // Sync threads and async tasks append to the same groups, serialized per group by a lock
    // held across submission only: the queue order must be the submission order.
    const GROUPS: u64 = 8;
    const ROUNDS: u64 = 200;
    let fs = FaultyFileSystem::new(13);
    fs.set_sync_delay(Duration::from_micros(100));
    let engine = Arc::new(open(&fs));
    let next: Arc<Vec<Mutex<u64>>> = Arc::new((0..GROUPS).map(|_| Mutex::new(1)).collect());
    let rt = runtime(2);
    std::thread::scope(|scope| {
        for thread in 0..4u64 {
            let (engine, next) = (Arc::clone(&engine), Arc::clone(&next));
            scope.spawn(move || {
                for round in 0..ROUNDS {
                    let group = (thread + round) % GROUPS;
                    let mut slot = next[group as usize].lock().expect("next");
                    engine
                        .write(&mut batch(group, *slot, 1), true)
                        .expect("sync write");
                    *slot += 1;
                }
            });
        }
        rt.block_on(async {
            let mut tasks = Vec::new();
            for task in 0..8u64 {
                let (engine, next) = (Arc::clone(&engine), Arc::clone(&next));
                tasks.push(tokio::spawn(async move {
                    for round in 0..ROUNDS {
                        let group = (task * 3 + round) % GROUPS;
                        let future = {
                            let mut slot = next[group as usize].lock().expect("next");
                            let future = engine.write_async(batch(group, *slot, 1), round % 2 == 0);
                            *slot += 1;
                            future
                        };
                        future.await.expect("async write");
                    }
                }));
            }
            for task in tasks {
                tokio::time::timeout(TIMEOUT, task)
                    .await
                    .expect("finish")
                    .expect("task");
            }
        });
    });
    engine.sync().expect("sync");
    drop(Arc::into_inner(engine).expect("one owner"));
    fs.crash();
    let engine = open(&fs);
    let mut total = 0;
    for group in 0..GROUPS {
        let last = *next[group as usize].lock().expect("next") - 1;
        total += last;
        assert_eq!(
            engine
                .entries(GroupId(group), 1, last + 1, usize::MAX)
                .expect("entries"),
            (1..=last)
                .map(|index| entry(group, index, 1))
                .collect::<Vec<_>>()
        );
    }
    assert_eq!(total, (4 + 8) * ROUNDS);
}

#[test]
fn failed_sync_fails_queued_futures_and_poisons_the_engine() {
    let fs = FaultyFileSystem::new(14);
    let engine = open(&fs);
    let rt = runtime(2);
    rt.block_on(engine.write_async(batch(1, 1, 1), true))
        .expect("first write");
    fs.set_sync_delay(Duration::from_millis(5));
    fs.fail_next(FaultOp::Sync);
    let futures: Vec<_> = (0..20u64)
        .map(|group| engine.write_async(batch(100 + group, 1, 1), true))
        .collect();
    let results = rt.block_on(async {
        let mut results = Vec::new();
        for future in futures {
            results.push(
                tokio::time::timeout(TIMEOUT, future)
                    .await
                    .expect("resolves"),
            );
        }
        results
    });
    assert!(
        results.iter().all(Result::is_err),
        "every write queued at or after the failed sync fails: {results:?}"
    );
    assert!(
        matches!(
            results[0],
            Err(Error::Io {
                op: "fdatasync",
                ..
            })
        ),
        "{:?}",
        results[0]
    );
    let error = rt
        .block_on(engine.write_async(batch(1, 2, 1), true))
        .expect_err("poisoned");
    assert!(matches!(error, Error::Poisoned { .. }), "{error}");
    let error = engine
        .write(&mut batch(1, 2, 1), true)
        .expect_err("sync path poisoned too");
    assert!(matches!(error, Error::Poisoned { .. }), "{error}");
    drop(engine);
    fs.set_sync_delay(Duration::ZERO);
    fs.crash();
    let engine = open(&fs);
    assert_eq!(engine.last_index(GroupId(1)), Some(1));
    rt.block_on(engine.write_async(batch(1, 2, 1), true))
        .expect("works after reopen");
}

#[test]
fn dropping_the_engine_completes_queued_writes() {
    let fs = FaultyFileSystem::new(15);
    fs.set_sync_delay(Duration::from_millis(3));
    let engine = open(&fs);
    let rt = runtime(2);
    // Enough to overflow the queue: some are still waiting for admission at drop.
    let count = MAX_QUEUED_WRITES as u64 + 300;
    let futures: Vec<_> = (0..count)
        .map(|index| engine.write_async(batch(index % 16, index / 16 + 1, 1), true))
        .collect();
    let dropper = std::thread::spawn(move || drop(engine));
    let results = rt.block_on(async {
        let mut results = Vec::new();
        for future in futures {
            results.push(
                tokio::time::timeout(TIMEOUT, future)
                    .await
                    .expect("no future hangs when the engine is dropped"),
            );
        }
        results
    });
    dropper.join().expect("drop returns");
    for result in &results {
        result
            .as_ref()
            .expect("queued writes are completed on drop");
    }
    fs.crash();
    let engine = open(&fs);
    for group in 0..16u64 {
        let writes = (0..count).filter(|index| index % 16 == group).count() as u64;
        assert_eq!(engine.last_index(GroupId(group)), Some(writes));
    }
}

#[test]
fn dropped_future_before_admission_cancels_only_that_write() {
    let fs = FaultyFileSystem::new(16);
    fs.set_sync_delay(Duration::from_millis(2));
    let engine = open(&fs);
    let rt = runtime(2);
    let mut futures: Vec<_> = (0..MAX_QUEUED_WRITES as u64 + 10)
        .map(|index| engine.write_async(batch(1, index + 1, 1), true))
        .collect();
    // Probably still waiting for admission (the queue was full); dropping it either cancels
    // it or (if it was already admitted) not: both are fine, nothing may hang or misapply.
    let extra = engine.write_async(batch(2, 1, 1), true);
    drop(extra);
    let last = futures.pop().expect("one");
    rt.block_on(async {
        for future in futures {
            future.await.expect("write");
        }
        last.await.expect("last write");
    });
    assert_eq!(
        engine.last_index(GroupId(1)),
        Some(MAX_QUEUED_WRITES as u64 + 10)
    );
    // Empty and invalid batches resolve at once.
    assert_eq!(
        rt.block_on(engine.write_async(LogBatch::new(), true))
            .expect("empty"),
        0
    );
    let error = rt
        .block_on(engine.write_async(batch(1, 5_000, 1), true))
        .expect_err("gap");
    assert!(matches!(error, Error::InvalidArgument(_)), "{error}");
}
