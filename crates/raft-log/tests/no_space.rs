//! A full disk (ENOSPC) is survivable: a group commit that finds no space leaves nothing
//! partial behind, is retried (or, with `no_space_retry: None`, fails with `Error::Full`)
//! without poisoning the engine, writes resume once space is freed, and nothing written
//! before is lost across a crash and reopen. An `fdatasync` failing with ENOSPC stays fatal.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft_log::{Config, Error, FaultOp, FaultyFileSystem, GroupId, LogBatch, LogEngine, LogEntry};

const GROUP: GroupId = GroupId(7);
const ENTRY_BYTES: usize = 1000;

fn dir() -> PathBuf {
    PathBuf::from("/store/log")
}

fn config(preallocate: bool, background: bool, retry: Option<Duration>) -> Config {
    Config {
        segment_size_bytes: 64 << 10,
        preallocate_segments: preallocate,
        prepare_segments_in_background: background,
        no_space_retry: retry,
        ..Config::default()
    }
}

fn open(fs: &FaultyFileSystem, config: &Config) -> LogEngine {
    LogEngine::open(dir(), config.clone(), Arc::new(fs.clone())).expect("open")
}

fn payload(index: u64) -> Bytes {
    let mut data = vec![(index % 251) as u8; ENTRY_BYTES];
    data[..8].copy_from_slice(&index.to_le_bytes());
    Bytes::from(data)
}

fn batch(index: u64) -> LogBatch {
    let mut batch = LogBatch::new();
    batch
        .append(
            GROUP,
            vec![LogEntry {
                index,
                term: 1,
                data: payload(index),
            }],
        )
        .expect("append");
    batch.put_state(GROUP, b"last", &index.to_le_bytes());
    batch
}

/// Asserts the engine holds exactly entries `1..=last`, each with its payload.
fn assert_holds(engine: &LogEngine, last: u64) {
    assert_eq!(engine.last_index(GROUP), Some(last), "last index");
    let entries = engine
        .entries(GROUP, 1, last + 1, usize::MAX)
        .expect("entries");
    assert_eq!(entries.len() as u64, last);
    for entry in entries {
        assert_eq!(entry.data, payload(entry.index), "entry {}", entry.index);
    }
    assert_eq!(
        engine.get_state(GROUP, b"last").as_deref(),
        Some(&last.to_le_bytes()[..])
    );
}

/// Crashes a copy of the disk (unsynced bytes lost) and checks that it opens cleanly with
/// exactly `1..=last`.
fn assert_crash_keeps(fs: &FaultyFileSystem, config: &Config, last: u64) {
    let copy = fs.fork();
    copy.crash();
    copy.set_capacity(None);
    let engine = open(&copy, config);
    assert!(
        engine.recovery_report().skipped_corruption.is_empty(),
        "{:?}",
        engine.recovery_report()
    );
    assert_holds(&engine, last);
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_write_that_finds_no_space_fails_cleanly_and_later_writes_resume() {
    // Without preallocation every write grows the file: the disk fills mid-record.
    for preallocate in [false, true] {
        let fs = FaultyFileSystem::new(1);
        let config = config(preallocate, false, None);
        let engine = open(&fs, &config);
        let mut last = 0;
        for _ in 0..10 {
            last += 1;
            engine.write(&mut batch(last), true).expect("write");
        }
        // Room for a few more records, then full: write until refused.
        fs.set_capacity(Some(fs.used_bytes() + 3 * ENTRY_BYTES as u64 + 100));
        let mut refused = None;
        for _ in 0..200 {
            match engine.write(&mut batch(last + 1), true) {
                Ok(_) => last += 1,
                Err(error) => {
                    refused = Some(error);
                    break;
                }
            }
        }
        let error = refused.expect("the disk filled up");
        assert!(error.is_no_space(), "{error}");
        assert!(
            error.to_string().contains("no space left on device"),
            "{error}"
        );
        assert!(fs.no_space_failures() > 0);
        // Refused again while full, and the engine is not poisoned: nothing was applied.
        let again = engine
            .write(&mut batch(last + 1), true)
            .expect_err("still full");
        assert!(again.is_no_space(), "{again}");
        assert_holds(&engine, last);
        // Nothing partial on disk: a crash now keeps exactly what was acknowledged.
        assert_crash_keeps(&fs, &config, last);

        // Space freed: the same write goes through, and so do more, past a rollover.
        fs.set_capacity(None);
        for _ in 0..80 {
            last += 1;
            engine
                .write(&mut batch(last), true)
                .expect("write after space was freed");
        }
        assert_holds(&engine, last);
        assert!(engine.stats().segment_count > 1, "rolled over");
        drop(engine);
        fs.crash();
        assert_holds(&open(&fs, &config), last);
    }
}

#[test]
fn a_rollover_that_finds_no_space_leaves_no_half_made_segment() {
    let fs = FaultyFileSystem::new(2);
    let config = config(true, false, None);
    let engine = open(&fs, &config);
    let mut last = 0;
    // Fill the first (preallocated) segment to just below a rollover.
    while engine.stats().active_segment_bytes + 2 * (ENTRY_BYTES as u64 + 100) < 64 << 10 {
        last += 1;
        engine.write(&mut batch(last), true).expect("write");
    }
    // The next segment (64 KiB of zeros) does not fit.
    fs.set_capacity(Some(fs.used_bytes() + (16 << 10)));
    let mut refused = None;
    for _ in 0..10 {
        match engine.write(&mut batch(last + 1), true) {
            Ok(_) => last += 1,
            Err(error) => {
                refused = Some(error);
                break;
            }
        }
    }
    let error = refused.expect("the rollover ran out of space");
    assert!(error.is_no_space(), "{error}");
    assert_eq!(engine.stats().segment_count, 1, "no second segment");
    let segments = fs
        .paths()
        .into_iter()
        .filter(|path| path.extension().is_some_and(|ext| ext == "rlog"))
        .count();
    assert_eq!(
        segments,
        1,
        "the half-made segment was removed: {:?}",
        fs.paths()
    );
    assert_crash_keeps(&fs, &config, last);
    fs.set_capacity(None);
    for _ in 0..5 {
        last += 1;
        engine
            .write(&mut batch(last), true)
            .expect("write after space was freed");
    }
    assert_eq!(engine.stats().segment_count, 2);
    drop(engine);
    fs.crash();
    assert_holds(&open(&fs, &config), last);
}

#[test]
fn with_retry_a_full_disk_holds_writes_in_order_until_space_is_freed() {
    let fs = FaultyFileSystem::new(3);
    let config = config(false, false, Some(Duration::from_millis(5)));
    let engine = Arc::new(open(&fs, &config));
    let mut last = 0;
    for _ in 0..10 {
        last += 1;
        engine.write(&mut batch(last), true).expect("write");
    }
    assert!(!engine.is_out_of_space());
    fs.set_capacity(Some(fs.used_bytes() + 100));
    // A synchronous writer blocks, an asynchronous one queued behind it stays pending.
    let blocked = {
        let engine = Arc::clone(&engine);
        let index = last + 1;
        std::thread::spawn(move || engine.write(&mut batch(index), true))
    };
    wait_until("the engine to report a full disk", || {
        engine.is_out_of_space()
    });
    let mut queued = engine.write_async(batch(last + 2), true);
    // The held group commit is retried (every 5 ms) and each retry meets the full disk:
    // once two more retries failed after the second write was queued, neither may be done.
    let failures = fs.no_space_failures();
    wait_until(
        "two more retries of the held write to fail for lack of space",
        || fs.no_space_failures() >= failures + 2,
    );
    assert!(engine.is_out_of_space());
    assert!(
        !blocked.is_finished(),
        "a write returned while the disk is full"
    );
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    assert!(
        std::future::Future::poll(std::pin::Pin::new(&mut queued), &mut cx).is_pending(),
        "a write queued behind a held one completed first"
    );
    // Reads go on meanwhile, and a crash now loses only what was never acknowledged.
    assert_holds(&engine, last);
    assert_crash_keeps(&fs, &config, last);

    fs.set_capacity(None);
    blocked
        .join()
        .expect("writer thread")
        .expect("the held write succeeds once space is freed");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let std::task::Poll::Ready(result) =
            std::future::Future::poll(std::pin::Pin::new(&mut queued), &mut cx)
        {
            result.expect("the queued write succeeds after it");
            break;
        }
        assert!(Instant::now() < deadline, "queued write never completed");
        std::thread::sleep(Duration::from_millis(2));
    }
    last += 2;
    assert!(!engine.is_out_of_space());
    assert_holds(&engine, last);
    drop(engine);
    fs.crash();
    assert_holds(&open(&fs, &config), last);
}

#[test]
fn no_room_for_the_next_segment_is_reported_before_any_write_fails() {
    let fs = FaultyFileSystem::new(4);
    let config = config(true, true, Some(Duration::from_millis(5)));
    let engine = open(&fs, &config);
    let mut last = 0;
    for _ in 0..5 {
        last += 1;
        engine.write(&mut batch(last), true).expect("write");
    }
    // The active segment is preallocated: records fit, a spare segment does not.
    fs.set_capacity(Some(fs.used_bytes() + (8 << 10)));
    while engine.stats().active_segment_bytes * 2 < 64 << 10 {
        last += 1;
        engine
            .write(&mut batch(last), true)
            .expect("write into the active segment");
    }
    wait_until("the spare to fail for lack of space", || {
        engine.is_out_of_space()
    });
    assert_holds(&engine, last);
    fs.set_capacity(None);
    wait_until("the spare to be made once space is freed", || {
        !engine.is_out_of_space()
    });
    for _ in 0..60 {
        last += 1;
        engine.write(&mut batch(last), true).expect("write");
    }
    assert_holds(&engine, last);
}

#[test]
fn an_fdatasync_that_reports_no_space_is_still_fatal() {
    let fs = FaultyFileSystem::new(5);
    let config = config(false, false, Some(Duration::from_millis(5)));
    let engine = open(&fs, &config);
    engine.write(&mut batch(1), true).expect("write");
    fs.fail_next_no_space(FaultOp::Sync);
    let error = engine.write(&mut batch(2), true).expect_err("sync failed");
    assert!(error.is_no_space(), "{error}");
    // Poisoned: the kernel may have dropped the dirty pages, what the file holds is unknown.
    let next = engine.write(&mut batch(2), true).expect_err("poisoned");
    assert!(matches!(next, Error::Poisoned { .. }), "{next}");
    assert!(!engine.is_out_of_space());
}
