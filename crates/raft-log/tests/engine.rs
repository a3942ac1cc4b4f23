//! Engine behaviour: reads, validation, rollover, purge, group commit, locking, snapshots,
//! failure handling, and the real file system.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use raft_log::{
    read_snapshot, write_snapshot, write_snapshot_parts, Config, Error, FaultOp, FaultyFileSystem,
    FileSystem, GroupId, LogBatch, LogEngine, LogEntry, StdFileSystem,
};

fn entries(first: u64, count: u64, term: u64, size: usize) -> Vec<LogEntry> {
    (first..first + count)
        .map(|index| LogEntry {
            index,
            term,
            data: Bytes::from(vec![(index % 251) as u8; size]),
        })
        .collect()
}

fn faulty_engine(fs: &FaultyFileSystem, config: Config) -> LogEngine {
    LogEngine::open("/store/log", config, Arc::new(fs.clone())).expect("open")
}

fn append(engine: &LogEngine, group: u64, first: u64, count: u64, term: u64) -> Result<u64, Error> {
    let mut batch = LogBatch::new();
    batch.append(GroupId(group), entries(first, count, term, 16))?;
    engine.write(&mut batch, true)
}

#[test]
fn reads_follow_appends_truncation_and_compaction() {
    let fs = FaultyFileSystem::new(1);
    let engine = faulty_engine(&fs, Config::default());
    let group = GroupId(5);
    assert_eq!(engine.first_index(group), None);
    append(&engine, 5, 1, 10, 1).expect("append");
    assert_eq!(
        (engine.first_index(group), engine.last_index(group)),
        (Some(1), Some(10))
    );
    // Conflict: appending at 6 drops 6..=10.
    append(&engine, 5, 6, 2, 2).expect("append");
    assert_eq!(engine.last_index(group), Some(7));
    assert_eq!(engine.term(group, 5), Some(1));
    assert_eq!(engine.term(group, 6), Some(2));
    assert_eq!(engine.term(group, 8), None);
    // max_bytes: 16 bytes per entry; 40 bytes allow 2; 0 bytes still give one.
    assert_eq!(engine.entries(group, 1, 8, 40).expect("entries").len(), 2);
    assert_eq!(engine.entries(group, 1, 8, 0).expect("entries").len(), 1);
    assert_eq!(
        engine
            .entries(group, 1, 8, usize::MAX)
            .expect("entries")
            .len(),
        7
    );
    let mut batch = LogBatch::new();
    batch.compact_to(group, 4);
    engine.write(&mut batch, false).expect("compact");
    assert_eq!(engine.first_index(group), Some(4));
    assert!(matches!(
        engine.entries(group, 3, 5, 100),
        Err(Error::Compacted { index: 3, .. })
    ));
    assert!(matches!(
        engine.entries(group, 4, 9, 100),
        Err(Error::Unavailable { index: 8, .. })
    ));
    assert_eq!(engine.stats().live_entry_count, 4);
    assert_eq!(engine.stats().live_entry_bytes, 64);
    batch.put_state(group, b"hs", b"1");
    batch.put_state(group, b"hs", b"2");
    batch.put_state(group, b"gone", b"x");
    batch.delete_state(group, b"gone");
    engine.write(&mut batch, true).expect("states");
    assert_eq!(
        engine.get_state(group, b"hs"),
        Some(Bytes::from_static(b"2"))
    );
    assert_eq!(engine.get_state(group, b"gone"), None);
    assert_eq!(engine.groups(), vec![group]);
    batch.clean_group(group);
    engine.write(&mut batch, true).expect("clean");
    assert_eq!(engine.groups(), Vec::<GroupId>::new());
    assert_eq!(engine.get_state(group, b"hs"), None);
    assert_eq!(engine.stats().live_entry_bytes, 0);
}

#[test]
fn invalid_batches_are_refused_and_change_nothing() {
    let fs = FaultyFileSystem::new(2);
    let engine = faulty_engine(&fs, Config::default());
    let mut batch = LogBatch::new();
    let gap = vec![entries(1, 1, 1, 4).remove(0), entries(3, 1, 1, 4).remove(0)];
    assert!(matches!(
        batch.append(GroupId(1), gap),
        Err(Error::InvalidArgument(_))
    ));
    append(&engine, 1, 1, 3, 1).expect("append");
    let writes_before = fs.write_count();
    let error = append(&engine, 1, 5, 1, 1).expect_err("gap");
    assert!(error.to_string().contains("gap"), "{error}");
    let mut batch = LogBatch::new();
    batch.compact_to(GroupId(2), 10);
    engine.write(&mut batch, true).expect("compact");
    let error = append(&engine, 2, 3, 1, 1).expect_err("below compaction");
    assert!(error.to_string().contains("compaction"), "{error}");
    // Validation is against the earlier batches of the same group commit too: one batch
    // with a good append and a bad one is refused whole.
    let mut batch = LogBatch::new();
    batch
        .append(GroupId(1), entries(4, 2, 1, 4))
        .expect("append");
    batch
        .append(GroupId(1), entries(9, 1, 1, 4))
        .expect("append");
    assert!(engine.write(&mut batch, true).is_err());
    assert_eq!(engine.last_index(GroupId(1)), Some(3));
    assert_eq!(
        fs.write_count(),
        writes_before + 1,
        "only the compaction reached the disk"
    );
}

#[test]
fn segments_roll_over_and_purge_deletes_them_with_data_intact_after_reopen() {
    let fs = FaultyFileSystem::new(3);
    let config = Config {
        segment_size_bytes: 4096,
        purge_rewrite_threshold_segments: 4,
        ..Config::default()
    };
    let engine = faulty_engine(&fs, config.clone());
    // A quiet group written once, at the start, with hard state.
    let mut batch = LogBatch::new();
    batch
        .append(GroupId(100), entries(1, 3, 1, 100))
        .expect("append");
    batch.put_state(GroupId(100), b"hs", b"quiet");
    engine.write(&mut batch, true).expect("write");
    // A busy group that keeps compacting.
    for round in 0..200u64 {
        append(&engine, 1, round * 5 + 1, 5, 1).expect("append");
        let mut batch = LogBatch::new();
        batch.compact_to(GroupId(1), round * 5 + 3);
        batch.put_state(GroupId(1), b"hs", format!("round {round}").as_bytes());
        engine.write(&mut batch, false).expect("compact");
    }
    let before = engine.stats();
    assert!(before.segment_count > 10, "{before:?}");
    let report = engine.purge().expect("purge");
    assert!(report.segments_deleted > 8, "{report:?}");
    assert_eq!(
        report.groups_rewritten, 1,
        "only the quiet group pins old segments: {report:?}"
    );
    let after = engine.stats();
    assert!(after.segment_count <= 4, "{after:?}");
    let files = fs
        .paths()
        .into_iter()
        .filter(|path| path.to_string_lossy().ends_with(".rlog"))
        .count();
    assert_eq!(files, after.segment_count);
    // A second purge has nothing to do.
    let again = engine.purge().expect("purge");
    assert_eq!(
        (again.segments_deleted, again.groups_rewritten),
        (0, 0),
        "{again:?}"
    );
    drop(engine);
    fs.crash();
    let engine = faulty_engine(&fs, config);
    assert_eq!(
        engine
            .entries(GroupId(100), 1, 4, usize::MAX)
            .expect("quiet"),
        entries(1, 3, 1, 100)
    );
    assert_eq!(
        engine.get_state(GroupId(100), b"hs"),
        Some(Bytes::from_static(b"quiet"))
    );
    assert_eq!(engine.first_index(GroupId(1)), Some(998));
    assert_eq!(engine.last_index(GroupId(1)), Some(1000));
    assert_eq!(
        engine.get_state(GroupId(1), b"hs"),
        Some(Bytes::from_static(b"round 199"))
    );
}

#[test]
fn group_commit_shares_syncs_across_threads() {
    const THREADS: u64 = 16;
    const WRITES: u64 = 50;
    let fs = FaultyFileSystem::new(4);
    // A slow disk makes writers pile up behind each sync, as they do on real hardware.
    fs.set_sync_delay(Duration::from_micros(500));
    let engine = Arc::new(faulty_engine(
        &fs,
        Config {
            segment_size_bytes: 64 << 10,
            ..Config::default()
        },
    ));
    let syncs_before = fs.sync_count();
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let engine = Arc::clone(&engine);
            scope.spawn(move || {
                for index in 1..=WRITES {
                    let mut batch = LogBatch::new();
                    batch
                        .append(GroupId(thread), entries(index, 1, 1, 64))
                        .expect("append");
                    batch.put_state(GroupId(thread), b"hs", &index.to_le_bytes());
                    engine.write(&mut batch, true).expect("write");
                    // Durable and visible as soon as write returns.
                    assert_eq!(engine.last_index(GroupId(thread)), Some(index));
                }
            });
        }
    });
    let syncs = fs.sync_count() - syncs_before;
    let writes = THREADS * WRITES;
    assert!(
        syncs * 2 < writes,
        "group commit should share syncs: {syncs} syncs for {writes} writes"
    );
    let engine = Arc::into_inner(engine).expect("threads done");
    drop(engine);
    fs.crash();
    let engine = faulty_engine(&fs, Config::default());
    for thread in 0..THREADS {
        let group = GroupId(thread);
        assert_eq!(
            engine
                .entries(group, 1, WRITES + 1, usize::MAX)
                .expect("entries"),
            entries(1, WRITES, 1, 64)
        );
        assert_eq!(
            engine.get_state(group, b"hs"),
            Some(Bytes::copy_from_slice(&WRITES.to_le_bytes()))
        );
    }
}

#[test]
fn failed_sync_poisons_the_engine_until_reopen() {
    let fs = FaultyFileSystem::new(5);
    let engine = faulty_engine(&fs, Config::default());
    append(&engine, 1, 1, 2, 1).expect("append");
    fs.fail_next(FaultOp::Sync);
    let error = append(&engine, 1, 3, 1, 1).expect_err("sync fails");
    assert!(
        matches!(
            error,
            Error::Io {
                op: "fdatasync",
                ..
            }
        ),
        "{error}"
    );
    // The write is not visible, and nothing else is accepted.
    assert_eq!(engine.last_index(GroupId(1)), Some(2));
    let error = append(&engine, 1, 3, 1, 1).expect_err("poisoned");
    assert!(matches!(error, Error::Poisoned { .. }), "{error}");
    assert!(error.to_string().contains("reopen"), "{error}");
    drop(engine);
    fs.crash();
    let engine = faulty_engine(&fs, Config::default());
    assert_eq!(engine.last_index(GroupId(1)), Some(2));
    append(&engine, 1, 3, 1, 1).expect("works after reopen");
}

#[test]
fn second_open_of_a_directory_is_refused() {
    let fs = FaultyFileSystem::new(6);
    let engine = faulty_engine(&fs, Config::default());
    match LogEngine::open("/store/log", Config::default(), Arc::new(fs.clone())) {
        Err(Error::DirectoryLocked { path }) => assert_eq!(path, PathBuf::from("/store/log/LOCK")),
        other => panic!("expected DirectoryLocked, got {other:?}"),
    }
    drop(engine);
    faulty_engine(&fs, Config::default());
}

#[test]
fn second_open_on_real_disk_is_refused_in_process() {
    let temp = tempfile::tempdir().expect("tempdir");
    let fs: Arc<dyn FileSystem> = Arc::new(StdFileSystem);
    let engine = LogEngine::open(temp.path(), Config::default(), fs.clone()).expect("open");
    let error = LogEngine::open(temp.path(), Config::default(), fs.clone()).expect_err("locked");
    assert!(matches!(error, Error::DirectoryLocked { .. }), "{error}");
    assert!(error.to_string().contains("already in use"), "{error}");
    drop(engine);
    LogEngine::open(temp.path(), Config::default(), fs).expect("lock released on drop");
}

const CHILD_DIR_ENV: &str = "RAFTLOG_TEST_LOCK_CHILD_DIR";

/// Run by `second_open_from_another_process_is_refused` in a child process.
#[test]
fn lock_child_helper() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    match LogEngine::open(&dir, Config::default(), Arc::new(StdFileSystem)) {
        Err(Error::DirectoryLocked { .. }) => {}
        other => panic!("child expected DirectoryLocked, got {other:?}"),
    }
}

#[test]
fn second_open_from_another_process_is_refused() {
    let temp = tempfile::tempdir().expect("tempdir");
    let engine =
        LogEngine::open(temp.path(), Config::default(), Arc::new(StdFileSystem)).expect("open");
    let status = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "lock_child_helper", "--test-threads", "1"])
        .env(CHILD_DIR_ENV, temp.path())
        .stdout(std::process::Stdio::null())
        .status()
        .expect("spawn child");
    assert!(
        status.success(),
        "child process could open a locked directory"
    );
    drop(engine);
}

#[test]
fn real_disk_roundtrip_with_rollover_and_purge() {
    let temp = tempfile::tempdir().expect("tempdir");
    let fs: Arc<dyn FileSystem> = Arc::new(StdFileSystem);
    let config = Config {
        segment_size_bytes: 8192,
        purge_rewrite_threshold_segments: 2,
        ..Config::default()
    };
    {
        let engine = LogEngine::open(temp.path(), config.clone(), fs.clone()).expect("open");
        for index in 1..=100u64 {
            let mut batch = LogBatch::new();
            batch
                .append(GroupId(1), entries(index, 1, 3, 200))
                .expect("append");
            batch
                .append(GroupId(2), entries(index, 1, 3, 10))
                .expect("append");
            batch.compact_to(GroupId(2), index.saturating_sub(5));
            engine.write(&mut batch, index % 3 == 0).expect("write");
        }
        engine.sync().expect("sync");
        assert!(engine.stats().segment_count > 2);
        engine.purge().expect("purge");
        assert!(engine.stats().segment_count <= 2, "{:?}", engine.stats());
    }
    let engine = LogEngine::open(temp.path(), config, fs).expect("reopen");
    assert!(engine.recovery_report().torn_tail.is_none());
    assert_eq!(
        engine
            .entries(GroupId(1), 1, 101, usize::MAX)
            .expect("entries"),
        entries(1, 100, 3, 200)
    );
    assert_eq!(engine.first_index(GroupId(2)), Some(95));
}

/// Segments are zeroed ahead (records overwrite zeros: a cheaper fdatasync), the next one by
/// the helper thread once the active one is half full, so a rollover is a rename; an old
/// segment is cut to its records (recovery allows zeros only after the last one); a spare
/// left over at shutdown is removed at open.
#[test]
fn real_disk_segments_are_preallocated_ahead_and_trimmed_when_full() {
    let temp = tempfile::tempdir().expect("tempdir");
    let fs: Arc<dyn FileSystem> = Arc::new(StdFileSystem);
    let segment = 64u64 << 10;
    let config = Config {
        segment_size_bytes: segment,
        ..Config::default()
    };
    let len = |seq: u64| {
        std::fs::metadata(raft_log::segment_path(temp.path(), seq))
            .expect("segment exists")
            .len()
    };
    let spares = || {
        std::fs::read_dir(temp.path())
            .expect("list")
            .filter_map(|entry| entry.ok())
            .filter(|entry| entry.file_name().to_string_lossy().ends_with(".rlog.tmp"))
            .count()
    };
    let mut index = 0u64;
    {
        let engine = LogEngine::open(temp.path(), config.clone(), fs.clone()).expect("open");
        assert_eq!(len(1), segment, "the first segment is zeroed when created");
        let write_one = |index: &mut u64| {
            *index += 1;
            let mut batch = LogBatch::new();
            batch
                .append(GroupId(1), entries(*index, 1, 2, 1000))
                .expect("append");
            engine.write(&mut batch, true).expect("write");
        };
        while engine.stats().active_segment_bytes * 2 < segment {
            write_one(&mut index);
        }
        // Half full: the helper prepares segment 2. Wait until it is ready (zeroed and
        // synced; bounded), then fill up.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while engine.stats().spare_segments_prepared == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no spare segment within 30 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        while engine.stats().active_segment_seq == 1 {
            write_one(&mut index);
        }
        assert_eq!(len(2), segment, "the spare became segment 2, zeros and all");
        assert!(
            len(1) < segment,
            "segment 1 is cut to its records: {}",
            len(1)
        );
        // Fill segment 2 to half again, so a spare for 3 is (being) made when we stop.
        while engine.stats().active_segment_bytes * 2 < segment {
            write_one(&mut index);
        }
    }
    let engine = LogEngine::open(
        temp.path(),
        Config {
            recovery_mode: raft_log::RecoveryMode::AbsoluteConsistency,
            ..config
        },
        fs,
    )
    .expect("reopen strictly: zeros only after the last record");
    assert_eq!(spares(), 0, "a leftover spare is removed at open");
    assert!(engine.recovery_report().torn_tail.is_none());
    assert_eq!(
        len(2),
        segment,
        "the active segment is zeroed again at open"
    );
    assert_eq!(
        engine
            .entries(GroupId(1), 1, index + 1, usize::MAX)
            .expect("entries"),
        entries(1, index, 2, 1000)
    );
}

/// A snapshot written in parts is the same file as one written whole: same bytes, same
/// checksum, read back as the concatenation (the store writes the conf prefix and the state
/// without copying the state into one buffer).
#[test]
fn a_snapshot_written_in_parts_is_the_file_written_whole() {
    let whole_fs = FaultyFileSystem::new(7);
    let parts_fs = FaultyFileSystem::new(7);
    let dir = PathBuf::from("/store/snap");
    let whole =
        write_snapshot(&whole_fs, &dir, GroupId(3), 40, 4, b"conf|state at 40").expect("write");
    let parts = write_snapshot_parts(
        &parts_fs,
        &dir,
        GroupId(3),
        40,
        4,
        &[b"conf|", b"", b"state at 40"],
    )
    .expect("write");
    assert_eq!(whole, parts);
    let len = whole_fs.file_len(&whole).expect("len");
    assert_eq!(parts_fs.file_len(&parts).expect("len"), len);
    let mut a = vec![0u8; len as usize];
    let mut b = vec![0u8; len as usize];
    whole_fs.read_at(&whole, 0, &mut a).expect("read");
    parts_fs.read_at(&parts, 0, &mut b).expect("read");
    assert_eq!(a, b, "the files differ");
    let snapshot = read_snapshot(&parts_fs, &dir, GroupId(3))
        .expect("read")
        .expect("present");
    assert_eq!(&snapshot.data[..], b"conf|state at 40");
}

#[test]
fn snapshots_are_atomic_checksummed_and_only_latest_kept() {
    let fs = FaultyFileSystem::new(7);
    let dir = PathBuf::from("/store/snap");
    assert_eq!(read_snapshot(&fs, &dir, GroupId(1)).expect("none"), None);
    write_snapshot(&fs, &dir, GroupId(1), 10, 2, b"state at 10").expect("write");
    let path = write_snapshot(&fs, &dir, GroupId(1), 20, 3, b"state at 20").expect("write");
    write_snapshot(&fs, &dir, GroupId(2), 5, 1, b"other group").expect("write");
    let snapshot = read_snapshot(&fs, &dir, GroupId(1))
        .expect("read")
        .expect("present");
    assert_eq!(
        (snapshot.index, snapshot.term, &snapshot.data[..]),
        (20, 3, &b"state at 20"[..])
    );
    let names = fs.list_dir(&dir).expect("list");
    assert_eq!(
        names.len(),
        2,
        "older snapshot of group 1 removed: {names:?}"
    );
    // Durable after a crash.
    fs.crash();
    let snapshot = read_snapshot(&fs, &dir, GroupId(1))
        .expect("read")
        .expect("present");
    assert_eq!(snapshot.index, 20);
    // Any flipped bit is detected; the data is never returned.
    let len = fs.file_len(&path).expect("len");
    for offset in (0..len).step_by(5) {
        let disk = fs.fork();
        disk.flip_bit(&path, offset, (offset % 8) as u8)
            .expect("flip");
        match read_snapshot(&disk, &dir, GroupId(1)) {
            Err(Error::Corruption { file, .. }) => assert_eq!(file, path),
            other => panic!("flip at {offset}: expected corruption, got {other:?}"),
        }
    }
    // A crash between writing the temp file and the rename leaves the old snapshot.
    fs.fail_next(FaultOp::Rename);
    assert!(write_snapshot(&fs, &dir, GroupId(1), 30, 3, b"state at 30").is_err());
    fs.crash();
    assert_eq!(
        read_snapshot(&fs, &dir, GroupId(1))
            .expect("read")
            .expect("present")
            .index,
        20
    );
}

#[test]
fn snapshot_on_real_disk() {
    let temp = tempfile::tempdir().expect("tempdir");
    let path = write_snapshot(
        &StdFileSystem,
        temp.path(),
        GroupId(9),
        7,
        1,
        &[42u8; 10000],
    )
    .expect("write");
    let snapshot = read_snapshot(&StdFileSystem, temp.path(), GroupId(9))
        .expect("read")
        .expect("present");
    assert_eq!(snapshot.data.len(), 10000);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[5000] ^= 1;
    std::fs::write(&path, bytes).expect("write");
    assert!(matches!(
        read_snapshot(&StdFileSystem, temp.path(), GroupId(9)),
        Err(Error::Corruption { .. })
    ));
}

#[test]
fn oversized_batch_is_refused_before_writing() {
    let fs = FaultyFileSystem::new(8);
    let engine = faulty_engine(&fs, Config::default());
    let mut batch = LogBatch::new();
    let big = Bytes::from(vec![0u8; 40 << 20]);
    for index in 1..=4 {
        batch
            .append(
                GroupId(1),
                vec![LogEntry {
                    index,
                    term: 1,
                    data: big.clone(),
                }],
            )
            .expect("append");
    }
    let error = engine.write(&mut batch, true).expect_err("too large");
    assert!(matches!(error, Error::BatchTooLarge { .. }), "{error}");
    assert!(!batch.is_empty(), "a refused batch is left to the caller");
    assert_eq!(engine.last_index(GroupId(1)), None);
}

/// Power loss while 8 threads group-commit: the crash comes only after every thread had
/// `ACKED_BEFORE_CRASH` writes acknowledged, and must hit writes in flight (outstanding just
/// before and just after it; they fail or, if their sync finished first, are acknowledged);
/// every acknowledged write survives recovery.
#[test]
fn crash_during_concurrent_group_commits_keeps_every_acknowledged_write() {
    use std::sync::atomic::{AtomicU64, Ordering};
    const THREADS: u64 = 8;
    const ACKED_BEFORE_CRASH: u64 = 20;
    /// No write in flight (a worker's write indexes start at 1).
    const IDLE: u64 = 0;
    for seed in 0..5u64 {
        let fs = FaultyFileSystem::new(seed);
        fs.set_sync_delay(Duration::from_micros(200));
        let engine = faulty_engine(
            &fs,
            Config {
                segment_size_bytes: 8 << 10,
                ..Config::default()
            },
        );
        // Per thread: its last acknowledged index, and the index it is writing now.
        let acked: Vec<AtomicU64> = (0..THREADS).map(|_| AtomicU64::new(0)).collect();
        let writing: Vec<AtomicU64> = (0..THREADS).map(|_| AtomicU64::new(IDLE)).collect();
        let (acknowledged, in_flight, failed) = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..THREADS)
                .map(|thread| {
                    let engine = &engine;
                    let acked = &acked[thread as usize];
                    let writing = &writing[thread as usize];
                    scope.spawn(move || {
                        // Writes until the crash fails one (bounded, in case it never comes).
                        for index in 1..=1_000_000u64 {
                            let mut batch = LogBatch::new();
                            batch
                                .append(GroupId(thread), entries(index, 1, 1, 32))
                                .expect("append");
                            writing.store(index, Ordering::SeqCst);
                            let result = engine.write(&mut batch, true);
                            writing.store(IDLE, Ordering::SeqCst);
                            if result.is_err() {
                                return Some(index);
                            }
                            acked.store(index, Ordering::SeqCst);
                        }
                        None
                    })
                })
                .collect();
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while acked
                .iter()
                .any(|a| a.load(Ordering::SeqCst) < ACKED_BEFORE_CRASH)
            {
                assert!(
                        std::time::Instant::now() < deadline,
                        "seed {seed}: not every thread had {ACKED_BEFORE_CRASH} writes acknowledged within 60 s"
                    );
                std::thread::sleep(Duration::from_millis(1));
            }
            let outstanding = |writing: &[AtomicU64]| -> Vec<(usize, u64)> {
                writing
                    .iter()
                    .enumerate()
                    .map(|(t, w)| (t, w.load(Ordering::SeqCst)))
                    .filter(|&(_, index)| index != IDLE)
                    .collect()
            };
            let before = outstanding(&writing);
            // Power loss while writers are mid-flight; the "old process" then fails every
            // write (its handles are dead) and the engine poisons itself.
            fs.crash_random();
            let after = outstanding(&writing);
            let in_flight: Vec<(usize, u64)> =
                before.into_iter().filter(|w| after.contains(w)).collect();
            let failed: Vec<Option<u64>> = workers
                .into_iter()
                .map(|worker| worker.join().expect("worker"))
                .collect();
            let acknowledged: Vec<u64> = acked.iter().map(|a| a.load(Ordering::SeqCst)).collect();
            (acknowledged, in_flight, failed)
        });
        assert!(
            !in_flight.is_empty(),
            "seed {seed}: no write was in flight at the crash"
        );
        for (thread, index) in &in_flight {
            // Failed, or acknowledged because its sync was done before the crash.
            assert!(
                failed[*thread] == Some(*index) || acknowledged[*thread] >= *index,
                "seed {seed}: thread {thread}'s write {index}, in flight at the crash, neither failed nor was acknowledged"
            );
        }
        for (thread, result) in failed.iter().enumerate() {
            assert!(
                result.is_some(),
                "seed {seed}: thread {thread} never saw the crash"
            );
        }
        drop(engine);
        let engine = faulty_engine(
            &fs,
            Config {
                segment_size_bytes: 8 << 10,
                ..Config::default()
            },
        );
        for (thread, acknowledged) in acknowledged.into_iter().enumerate() {
            assert!(acknowledged >= ACKED_BEFORE_CRASH);
            let group = GroupId(thread as u64);
            let last = engine.last_index(group).unwrap_or(0);
            assert!(
                last >= acknowledged,
                "seed {seed}: group {thread} acknowledged {acknowledged} but recovered only {last}"
            );
            if last > 0 {
                assert_eq!(
                    engine
                        .entries(group, 1, last + 1, usize::MAX)
                        .expect("entries"),
                    entries(1, last, 1, 32)
                );
            }
        }
    }
}

#[test]
fn crash_in_the_middle_of_a_purge_rewrite_loses_nothing() {
    let fs = FaultyFileSystem::new(9);
    let config = Config {
        segment_size_bytes: 8 << 20,
        purge_rewrite_threshold_segments: 2,
        // Copy it however large (by default a group this size is named for compaction).
        purge_rewrite_max_group_bytes: u64::MAX,
        ..Config::default()
    };
    let engine = faulty_engine(&fs, config.clone());
    // A quiet group with ~3 MiB live: its rewrite takes several records (chunks).
    let quiet = entries(1, 3000, 2, 1024);
    let mut batch = LogBatch::new();
    batch.append(GroupId(1), quiet.clone()).expect("append");
    batch.put_state(GroupId(1), b"hs", b"quiet");
    engine.write(&mut batch, true).expect("write");
    // A busy group that fills and rolls over segments, compacting as it goes.
    for round in 0..8u64 {
        let mut batch = LogBatch::new();
        batch
            .append(GroupId(2), entries(round * 4000 + 1, 4000, 1, 1024))
            .expect("append");
        batch.compact_to(GroupId(2), round * 4000 + 3999);
        engine.write(&mut batch, true).expect("write");
    }
    assert!(engine.stats().segment_count > 2, "{:?}", engine.stats());
    // The purge writes its copies, then fails to sync them; nothing is deleted.
    fs.fail_next(FaultOp::Sync);
    assert!(engine.purge().is_err());
    let active = raft_log::segment_path(engine.dir(), engine.stats().active_segment_seq);
    drop(engine);
    let unsynced = fs.unsynced_len(&active);
    assert!(
        unsynced > 2 << 20,
        "the rewrite should be unsynced: {unsynced}"
    );
    for keep in (0..=unsynced).step_by(unsynced / 40).chain([unsynced]) {
        let disk = fs.fork();
        disk.crash_tearing(&active, keep);
        let engine = faulty_engine(&disk, config.clone());
        assert_eq!(
            engine
                .entries(GroupId(1), 1, 3001, usize::MAX)
                .expect("quiet entries"),
            quiet,
            "kept {keep} of {unsynced} unsynced bytes"
        );
        assert_eq!(
            engine.get_state(GroupId(1), b"hs"),
            Some(Bytes::from_static(b"quiet"))
        );
        assert_eq!(engine.last_index(GroupId(2)), Some(32000));
        // And a purge after recovery completes and keeps everything.
        engine.purge().expect("purge");
        drop(engine);
        let engine = faulty_engine(&disk, config.clone());
        assert_eq!(
            engine
                .entries(GroupId(1), 1, 3001, usize::MAX)
                .expect("after purge"),
            quiet
        );
    }
}
