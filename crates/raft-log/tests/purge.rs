//! Reclaiming the log: `purge` copies small groups that pin old segments forward and names
//! the large ones for their owner to compact, so that neither an idle group nor a slow one
//! with a long log keeps old segments alive.

use std::sync::Arc;

use bytes::Bytes;
use raft_log::{Config, FaultyFileSystem, GroupId, LogBatch, LogEngine, LogEntry};

fn entries(first: u64, count: u64, size: usize) -> Vec<LogEntry> {
    (first..first + count)
        .map(|index| LogEntry {
            index,
            term: 1,
            data: Bytes::from(vec![(index % 251) as u8; size]),
        })
        .collect()
}

fn write(engine: &LogEngine, group: u64, first: u64, count: u64, size: usize) {
    let mut batch = LogBatch::new();
    batch
        .append(GroupId(group), entries(first, count, size))
        .expect("append");
    engine.write(&mut batch, true).expect("write");
}

fn compact(engine: &LogEngine, group: u64, to: u64) {
    let mut batch = LogBatch::new();
    batch.compact_to(GroupId(group), to);
    engine.write(&mut batch, true).expect("compact");
}

#[test]
fn a_large_group_pinning_old_segments_is_named_for_compaction_not_copied() {
    let fs = FaultyFileSystem::new(11);
    let config = Config {
        segment_size_bytes: 8 << 10,
        purge_rewrite_threshold_segments: 4,
        purge_rewrite_max_group_bytes: 4 << 10,
        ..Config::default()
    };
    let engine = LogEngine::open("/store/log", config, Arc::new(fs.clone())).expect("open");
    // Group 2: idle, a few small entries. Group 3: slow, 16 KiB of live log. Both written
    // first, so they pin the oldest segments.
    write(&engine, 2, 1, 3, 16);
    write(&engine, 3, 1, 16, 1024);
    // Group 1: busy, compacting as it goes.
    for round in 0..100u64 {
        write(&engine, 1, round * 4 + 1, 4, 256);
        compact(&engine, 1, round * 4 + 3);
    }
    let before = engine.stats();
    assert!(before.segment_count > 8, "{before:?}");

    let report = engine.purge().expect("purge");
    assert_eq!(
        report.groups_to_compact,
        vec![GroupId(3)],
        "the large group is named, the small one is not: {report:?}"
    );
    assert_eq!(
        report.groups_rewritten, 1,
        "only group 2 is copied: {report:?}"
    );
    assert!(
        report.bytes_rewritten < 4 << 10,
        "the large group's log was copied: {report:?}"
    );
    // Group 3 still pins its segments: nothing before them goes.
    assert!(engine.stats().segment_count > 8, "{:?}", engine.stats());

    // Its owner compacts it (a snapshot); the next purge frees the old segments.
    compact(&engine, 3, 17);
    let report = engine.purge().expect("purge");
    assert!(report.groups_to_compact.is_empty(), "{report:?}");
    assert!(report.segments_deleted >= 4, "{report:?}");
    assert!(report.bytes_deleted > 0, "{report:?}");
    let after = engine.stats();
    assert!(after.segment_count <= 4, "{after:?}");

    // Everything live survives a crash and reopen: group 2's copied entries, group 1's tail.
    let last_busy = engine.last_index(GroupId(1));
    drop(engine);
    fs.crash();
    let engine = LogEngine::open(
        "/store/log",
        Config {
            segment_size_bytes: 8 << 10,
            ..Config::default()
        },
        Arc::new(fs.clone()),
    )
    .expect("reopen");
    assert_eq!(
        (
            engine.first_index(GroupId(2)),
            engine.last_index(GroupId(2))
        ),
        (Some(1), Some(3))
    );
    assert_eq!(engine.last_index(GroupId(1)), last_busy);
    assert_eq!(
        engine.first_index(GroupId(3)),
        None,
        "group 3 was compacted"
    );
    let got = engine
        .entries(GroupId(2), 1, 4, usize::MAX)
        .expect("group 2 entries");
    assert_eq!(got, entries(1, 3, 16));
}
