//! Recovery: torn tails are cut and reported, damage anywhere else refuses to open with the
//! file and offset, unless a tolerant recovery mode is chosen.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use common::{diff, record_spans, to_batch, Model, ModelOp};
use raft_log::{
    Config, Error, FaultyFileSystem, GroupId, LogBatch, LogEngine, LogEntry, RecoveryMode,
};

fn dir() -> PathBuf {
    PathBuf::from("/store/log")
}

/// Opens without preallocation: most tests here walk the records of a segment file to the
/// end of the file. The torn-write test also runs on preallocated (zeroed) segments.
fn open(fs: &FaultyFileSystem, mode: RecoveryMode) -> Result<LogEngine, Error> {
    open_with(fs, mode, false)
}

fn open_with(
    fs: &FaultyFileSystem,
    mode: RecoveryMode,
    preallocate: bool,
) -> Result<LogEngine, Error> {
    let config = Config {
        recovery_mode: mode,
        preallocate_segments: preallocate,
        prepare_segments_in_background: false,
        // Recovery reads the whole active segment: keep a preallocated one small.
        segment_size_bytes: 1 << 20,
        ..Config::default()
    };
    LogEngine::open(dir(), config, Arc::new(fs.clone()))
}

fn keys() -> Vec<Vec<u8>> {
    vec![b"hs".to_vec(), b"meta".to_vec()]
}

fn write_ops(engine: &LogEngine, model: &mut Model, ops: Vec<ModelOp>, sync: bool) {
    let mut batch = to_batch(&ops);
    engine.write(&mut batch, sync).expect("write");
    for op in &ops {
        model.apply(op);
    }
}

fn active_segment(engine: &LogEngine) -> PathBuf {
    raft_log::segment_path(engine.dir(), engine.stats().active_segment_seq)
}

#[test]
fn torn_last_record_is_truncated_at_every_byte() {
    torn_last_record_at_every_byte(false);
}

/// In a preallocated segment a torn write is followed by zeros, not by the end of the file,
/// so the record looks complete with a bad checksum; it must still count as torn, in every
/// recovery mode (the strictest included), and the zeros must not count as discarded bytes.
#[test]
fn torn_last_record_in_a_preallocated_segment_is_truncated_at_every_byte() {
    torn_last_record_at_every_byte(true);
}

fn torn_last_record_at_every_byte(preallocate: bool) {
    let open = |fs: &FaultyFileSystem, mode| open_with(fs, mode, preallocate);
    let fs = FaultyFileSystem::new(1);
    let mut model = Model::default();
    let engine = open(&fs, RecoveryMode::default()).expect("open");
    for round in 0..3u64 {
        write_ops(
            &engine,
            &mut model,
            vec![
                ModelOp::Append {
                    group: 1,
                    first: round * 3 + 1,
                    terms: vec![1; 3],
                    tag: round,
                },
                ModelOp::Put {
                    group: 1,
                    key: b"hs".to_vec(),
                    value: vec![round as u8; 3],
                },
            ],
            true,
        );
    }
    let durable_model = model.clone();
    let path = active_segment(&engine);
    // The written bytes (a preallocated file is longer: zeros follow them).
    let durable_len = engine.stats().active_segment_bytes as usize;
    let last_ops = vec![
        ModelOp::Append {
            group: 2,
            first: 1,
            terms: vec![4; 5],
            tag: 9,
        },
        ModelOp::Put {
            group: 2,
            key: b"meta".to_vec(),
            value: b"region 2".to_vec(),
        },
    ];
    write_ops(&engine, &mut model, last_ops, false);
    let full_model = model;
    drop(engine);
    let unsynced = fs.unsynced_len(&path);
    assert!(
        unsynced > 40,
        "the last record should be unsynced, got {unsynced} bytes"
    );
    let unsynced_bytes = fs.read_for_test(&path)[durable_len..durable_len + unsynced].to_vec();

    for keep in 0..=unsynced {
        let disk = fs.fork();
        disk.crash_tearing(&path, keep);
        // The strictest mode, too, must take a torn write for one (on a copy of the disk).
        let strict = disk.fork();
        open(&strict, RecoveryMode::AbsoluteConsistency).unwrap_or_else(|error| {
            panic!("strict open after tearing at {keep} of {unsynced}: {error}")
        });
        let engine = open(&disk, RecoveryMode::default())
            .unwrap_or_else(|error| panic!("open after tearing at {keep} of {unsynced}: {error}"));
        let report = engine.recovery_report().clone();
        let expected = if keep == unsynced {
            &full_model
        } else {
            &durable_model
        };
        let problems = diff(&engine, expected, &keys());
        assert!(
            problems.is_empty(),
            "torn at {keep}/{unsynced}: {problems:?}"
        );
        if keep == 0 || keep == unsynced {
            assert!(
                report.torn_tail.is_none(),
                "torn at {keep}: nothing torn, got {report:?}"
            );
        } else {
            let torn = report
                .torn_tail
                .unwrap_or_else(|| panic!("torn at {keep}/{unsynced}: torn tail not reported"));
            assert_eq!(torn.file, path);
            assert_eq!(torn.offset, durable_len as u64, "torn at {keep}");
            // The torn bytes that were written: trailing zeros cannot be told from the
            // preallocated ones (and in a file that was not preallocated, from no bytes).
            let written = unsynced_bytes[..keep]
                .iter()
                .rposition(|byte| *byte != 0)
                .map_or(0, |at| at + 1);
            assert_eq!(torn.bytes_discarded, written as u64, "torn at {keep}");
        }
        // The log keeps working after the truncation, and a second open is clean.
        let mut batch = LogBatch::new();
        batch.put_state(GroupId(7), b"hs", b"after");
        engine
            .write(&mut batch, true)
            .expect("write after recovery");
        drop(engine);
        let engine = open(&disk, RecoveryMode::AbsoluteConsistency).expect("second open");
        assert!(engine.recovery_report().torn_tail.is_none());
        assert_eq!(
            engine.get_state(GroupId(7), b"hs"),
            Some(Bytes::from_static(b"after"))
        );
        let mut expected = expected.clone();
        expected.apply(&ModelOp::Put {
            group: 7,
            key: b"hs".to_vec(),
            value: b"after".to_vec(),
        });
        let problems = diff(&engine, &expected, &keys());
        assert!(
            problems.is_empty(),
            "torn at {keep}, after reopen: {problems:?}"
        );
    }
}

/// A record of interest in a log on its own disk.
struct Target {
    disk: FaultyFileSystem,
    kind: &'static str,
    path: PathBuf,
    offset: usize,
    len: usize,
}

/// Logs holding one record of every kind, each followed by another record so that none of
/// them is the tail.
fn every_record_type() -> Vec<Target> {
    let entry = |index: u64| LogEntry {
        index,
        term: 1,
        data: Bytes::from(vec![index as u8; 20]),
    };
    let mut targets = Vec::new();

    // append, put_state, delete_state, compact_to, clean_group in one segment.
    let fs = FaultyFileSystem::new(11);
    let engine = open(&fs, RecoveryMode::default()).expect("open");
    let mut kinds = Vec::new();
    let mut batch = LogBatch::new();
    batch
        .append(GroupId(1), (1..=4).map(entry).collect())
        .expect("append");
    engine.write(&mut batch, true).expect("write");
    kinds.push("append");
    batch.put_state(GroupId(1), b"hs", b"term 1 vote 1");
    engine.write(&mut batch, true).expect("write");
    kinds.push("put_state");
    batch.delete_state(GroupId(1), b"old");
    engine.write(&mut batch, true).expect("write");
    kinds.push("delete_state");
    batch.compact_to(GroupId(1), 2);
    engine.write(&mut batch, true).expect("write");
    kinds.push("compact_to");
    batch.clean_group(GroupId(9));
    engine.write(&mut batch, true).expect("write");
    kinds.push("clean_group");
    batch.put_state(GroupId(2), b"hs", b"tail");
    engine.write(&mut batch, true).expect("write");
    let path = active_segment(&engine);
    drop(engine);
    let spans = record_spans(&fs.read_for_test(&path));
    assert_eq!(spans.len(), kinds.len() + 1, "records: {spans:?}");
    for (kind, (offset, len)) in kinds.into_iter().zip(spans) {
        targets.push(Target {
            disk: fs.fork(),
            kind,
            path: path.clone(),
            offset,
            len,
        });
    }

    // rewrite: a purge copies group 1's live data from segment 1 into segment 2.
    let fs = FaultyFileSystem::new(12);
    let config = Config {
        segment_size_bytes: 400,
        purge_rewrite_threshold_segments: 1,
        // The spans below walk the file to its end: no zeroed tail, and no spare prepared by
        // a thread (whether a rollover found it ready decided whether the tail was zeros,
        // which failed CI once).
        preallocate_segments: false,
        prepare_segments_in_background: false,
        ..Config::default()
    };
    let engine = LogEngine::open(dir(), config, Arc::new(fs.clone())).expect("open");
    batch
        .append(GroupId(1), (1..=4).map(entry).collect())
        .expect("append");
    batch.put_state(GroupId(1), b"hs", b"term 1 vote 1");
    engine.write(&mut batch, true).expect("write");
    batch.put_state(GroupId(3), b"filler", &[7u8; 300]);
    engine.write(&mut batch, true).expect("write");
    assert_eq!(engine.stats().segment_count, 2);
    let report = engine.purge().expect("purge");
    assert_eq!(
        (report.groups_rewritten, report.segments_deleted),
        (1, 1),
        "{report:?}"
    );
    batch.put_state(GroupId(2), b"hs", b"tail");
    engine.write(&mut batch, true).expect("write");
    let path = active_segment(&engine);
    drop(engine);
    let spans = record_spans(&fs.read_for_test(&path));
    // The rewrite did not fit after the filler, so it opened segment 3: [rewrite, tail].
    assert_eq!(spans.len(), 2, "rewrite, tail: {spans:?}");
    let (offset, len) = spans[0];
    targets.push(Target {
        disk: fs,
        kind: "rewrite",
        path,
        offset,
        len,
    });
    targets
}

#[test]
fn bit_flip_in_any_non_tail_record_is_corruption_with_file_and_offset() {
    for Target {
        disk: fs,
        kind,
        path,
        offset,
        len,
    } in every_record_type()
    {
        // Every byte of the record header, and a spread of payload bytes.
        let positions: Vec<usize> = (0..12)
            .chain((12..len).step_by(7))
            .chain([len - 1])
            .collect();
        for position in positions {
            for bit in [0u8, 3, 7] {
                let disk = fs.fork();
                disk.flip_bit(&path, (offset + position) as u64, bit)
                    .expect("flip");
                match open(&disk, RecoveryMode::TolerateTailCorruption) {
                    Err(Error::Corruption {
                        file,
                        offset: at,
                        reason,
                    }) => {
                        assert_eq!(file, path, "{kind} byte {position} bit {bit}");
                        assert_eq!(
                            at, offset as u64,
                            "{kind} byte {position} bit {bit}: {reason}"
                        );
                    }
                    Err(other) => panic!("{kind} byte {position} bit {bit}: wrong error {other}"),
                    Ok(engine) => panic!(
                        "{kind} byte {position} bit {bit}: opened despite damage: {:?}",
                        engine.recovery_report()
                    ),
                }
                assert!(
                    matches!(
                        open(&disk, RecoveryMode::AbsoluteConsistency),
                        Err(Error::Corruption { .. })
                    ),
                    "{kind} byte {position} bit {bit}: AbsoluteConsistency must refuse too"
                );
                let salvaged =
                    open(&disk, RecoveryMode::TolerateAnyCorruption).unwrap_or_else(|error| {
                        panic!("{kind}: TolerateAnyCorruption must open: {error}")
                    });
                let skipped = &salvaged.recovery_report().skipped_corruption;
                assert_eq!(skipped.len(), 1, "{kind}: {skipped:?}");
                assert_eq!(skipped[0].offset, offset as u64);
            }
        }
    }
}

fn first_target(kind: &str) -> Target {
    every_record_type()
        .into_iter()
        .find(|target| target.kind == kind)
        .expect("kind exists")
}

#[test]
fn corruption_error_message_names_file_offset_and_remedy() {
    let Target {
        disk: fs,
        path,
        offset,
        ..
    } = first_target("put_state");
    fs.flip_bit(&path, offset as u64 + 20, 1).expect("flip");
    let message = open(&fs, RecoveryMode::default())
        .expect_err("corrupt")
        .to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains(&format!("offset {offset}")), "{message}");
    assert!(message.contains("checksum"), "{message}");
    assert!(message.contains("TolerateAnyCorruption"), "{message}");
}

#[test]
fn huge_length_in_the_middle_is_corruption_not_an_allocation() {
    let Target {
        disk: fs,
        path,
        offset,
        ..
    } = first_target("delete_state");
    for claimed in [
        u32::MAX,
        1 << 31,
        raft_log::MAX_RECORD_PAYLOAD_BYTES + 1,
        1 << 20,
    ] {
        let disk = fs.fork();
        disk.overwrite(&path, offset as u64 + 4, &claimed.to_le_bytes())
            .expect("overwrite");
        match open(&disk, RecoveryMode::default()) {
            Err(Error::Corruption {
                offset: at, reason, ..
            }) => {
                assert_eq!(at, offset as u64, "{reason}");
            }
            other => panic!("claimed length {claimed}: expected corruption, got {other:?}"),
        }
    }
}

#[test]
fn complete_last_record_with_bad_checksum_depends_on_mode() {
    let Target { disk: fs, path, .. } = first_target("append");
    let data = fs.read_for_test(&path);
    let (offset, len) = *record_spans(&data).last().expect("records");
    fs.flip_bit(&path, (offset + len - 1) as u64, 0)
        .expect("flip");
    match open(&fs, RecoveryMode::AbsoluteConsistency) {
        Err(Error::Corruption { offset: at, .. }) => assert_eq!(at, offset as u64),
        other => panic!("AbsoluteConsistency must refuse: {other:?}"),
    }
    let engine = open(&fs, RecoveryMode::TolerateTailCorruption).expect("tail tolerated");
    let torn = engine
        .recovery_report()
        .torn_tail
        .clone()
        .expect("reported");
    assert_eq!(torn.offset, offset as u64);
    assert!(torn.reason.contains("checksum"), "{torn:?}");
    assert_eq!(engine.get_state(GroupId(2), b"hs"), None);
    assert_eq!(
        engine.get_state(GroupId(1), b"hs"),
        Some(Bytes::from_static(b"term 1 vote 1"))
    );
}

#[test]
fn zero_filled_tail_is_end_of_log() {
    let fs = FaultyFileSystem::new(6);
    let engine = open(&fs, RecoveryMode::AbsoluteConsistency).expect("open");
    let mut batch = LogBatch::new();
    batch.put_state(GroupId(1), b"hs", b"v");
    engine.write(&mut batch, true).expect("write");
    let path = active_segment(&engine);
    drop(engine);
    let len = fs.file_len_for_test(&path);
    fs.append_for_test(&path, &[0u8; 4096]);
    let engine = open(&fs, RecoveryMode::AbsoluteConsistency).expect("zero tail is not corruption");
    // Zeros after the last record are what a preallocated segment holds: the log's normal
    // end, not a torn write.
    assert_eq!(engine.recovery_report().torn_tail, None);
    assert_eq!(engine.stats().active_segment_bytes, len as u64);
    assert_eq!(
        engine.get_state(GroupId(1), b"hs"),
        Some(Bytes::from_static(b"v"))
    );
}

fn multi_segment_log(fs: &FaultyFileSystem) -> Vec<PathBuf> {
    let config = Config {
        segment_size_bytes: 300,
        // Zeroed inline at each rollover: deterministic.
        prepare_segments_in_background: false,
        ..Config::default()
    };
    let engine = LogEngine::open(dir(), config, Arc::new(fs.clone())).expect("open");
    for index in 1..=20u64 {
        let mut batch = LogBatch::new();
        batch
            .append(
                GroupId(1),
                vec![LogEntry {
                    index,
                    term: 1,
                    data: Bytes::from(vec![1u8; 50]),
                }],
            )
            .expect("append");
        engine.write(&mut batch, true).expect("write");
    }
    let stats = engine.stats();
    assert!(stats.segment_count >= 4, "{stats:?}");
    (stats.first_segment_seq..=stats.active_segment_seq)
        .map(|seq| raft_log::segment_path(&dir(), seq))
        .collect()
}

#[test]
fn truncated_non_last_segment_is_corruption() {
    let fs = FaultyFileSystem::new(7);
    let segments = multi_segment_log(&fs);
    let victim = &segments[1];
    let len = fs.file_len_for_test(victim);
    fs.truncate_for_test(victim, len - 10);
    match open(&fs, RecoveryMode::default()) {
        Err(Error::Corruption { file, reason, .. }) => {
            assert_eq!(&file, victim);
            assert!(reason.contains("remain"), "{reason}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    let salvaged = open(&fs, RecoveryMode::TolerateAnyCorruption).expect("salvage");
    assert_eq!(salvaged.recovery_report().skipped_corruption.len(), 1);
    assert_eq!(salvaged.last_index(GroupId(1)), Some(20));
}

#[test]
fn missing_segment_in_the_middle_is_corruption() {
    let fs = FaultyFileSystem::new(8);
    let segments = multi_segment_log(&fs);
    raft_log::FileSystem::remove(&fs, &segments[2]).expect("remove");
    match open(&fs, RecoveryMode::default()) {
        Err(Error::Corruption { file, reason, .. }) => {
            assert_eq!(file, segments[2], "{reason}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn damaged_segment_header_is_corruption() {
    let fs = FaultyFileSystem::new(9);
    let segments = multi_segment_log(&fs);
    fs.flip_bit(&segments[0], 13, 2).expect("flip");
    match open(&fs, RecoveryMode::default()) {
        Err(Error::Corruption { file, offset, .. }) => {
            assert_eq!((file, offset), (segments[0].clone(), 0))
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn crash_mid_segment_creation_recovers() {
    // A last segment holding only part of its header (a crash while creating it on a file
    // system that persisted the directory entry) is recreated.
    let fs = FaultyFileSystem::new(10);
    let segments = multi_segment_log(&fs);
    let last = segments.last().expect("segments");
    fs.truncate_for_test(last, 0);
    fs.append_for_test(last, b"RKVLOG");
    let engine = open(&fs, RecoveryMode::AbsoluteConsistency).expect("open");
    assert!(engine.recovery_report().torn_tail.is_some());
    let mut batch = LogBatch::new();
    batch.put_state(GroupId(1), b"hs", b"x");
    engine.write(&mut batch, true).expect("write");
    drop(engine);
    let engine = open(&fs, RecoveryMode::AbsoluteConsistency).expect("reopen");
    assert_eq!(
        engine.get_state(GroupId(1), b"hs"),
        Some(Bytes::from_static(b"x"))
    );
}

// Small helpers over the FileSystem trait, kept here so the FaultyFileSystem API stays lean.
trait TestDisk {
    fn file_len_for_test(&self, path: &Path) -> usize;
    fn read_for_test(&self, path: &Path) -> Vec<u8>;
    fn append_for_test(&self, path: &Path, bytes: &[u8]);
    fn truncate_for_test(&self, path: &Path, len: usize);
}

impl TestDisk for FaultyFileSystem {
    fn file_len_for_test(&self, path: &Path) -> usize {
        raft_log::FileSystem::file_len(self, path).expect("len") as usize
    }

    fn read_for_test(&self, path: &Path) -> Vec<u8> {
        raft_log::FileSystem::read_all(self, path).expect("read")
    }

    fn append_for_test(&self, path: &Path, bytes: &[u8]) {
        let mut file = raft_log::FileSystem::open_append(self, path).expect("open");
        file.write_all(bytes).expect("append");
        file.sync_data().expect("sync");
    }

    fn truncate_for_test(&self, path: &Path, len: usize) {
        let mut file = raft_log::FileSystem::open_append(self, path).expect("open");
        file.truncate(len as u64).expect("truncate");
        file.sync_data().expect("sync");
    }
}
