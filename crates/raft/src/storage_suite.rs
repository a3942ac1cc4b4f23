//! A conformance suite for [`Storage`] implementations: the same checks run against
//! [`MemStorage`] (here, `tests/storage_conformance.rs`) and against the on-disk storage of
//! `raft-log` (`raft_log::raft_storage::GroupStorage`), so both keep the contract the core
//! relies on (see "To ensure correctness" on [`Storage`]).
//!
//! An implementation opts in by implementing [`StorageUnderTest`] (the write side a store
//! uses, plus [`StorageUnderTest::reopen`] to simulate a restart) and calling [`run_all`]
//! with a constructor of empty storages. Every check is also a `pub fn` of its own, so a
//! failing one can be run alone; each panics with a message naming the check and the
//! expectation that failed.
//!
//! Size accounting: the checks expect `entries(.., max_bytes)` to count each entry as
//! [`Entry::size_bytes`], as [`MemStorage`] does, and to return at least one entry.

use bytes::Bytes;

use crate::storage::{MemStorage, Storage, StorageError};
use crate::types::{
    ConfState, Entry, EntryKind, HardState, LogIndex, NodeId, Snapshot, SnapshotMetadata, Term,
};

/// The write side of a storage, as a store drives it, plus a simulated restart. Writes are
/// expected to be durable when they return (an implementation that can fail panics).
pub trait StorageUnderTest: Storage {
    /// Appends entries, truncating any existing entries at or after the first new index.
    fn append(&mut self, entries: &[Entry]);
    /// Persists the hard state.
    fn set_hard_state(&mut self, hs: HardState);
    /// Installs a snapshot received from a leader: the log is replaced unless it holds the
    /// snapshot's last entry with the same term (then the suffix after it is kept); the
    /// commit index is raised to the snapshot's index. An older snapshot is ignored.
    fn apply_snapshot(&mut self, snapshot: Snapshot);
    /// Records a snapshot of the application at `index` (within the log) and compacts the log
    /// up to it.
    fn create_snapshot(&mut self, index: LogIndex, conf_state: ConfState, data: Bytes);
    /// Simulates a restart: everything written must still be there afterwards. For
    /// [`MemStorage`] this returns `self`; an on-disk storage drops its state and reopens
    /// from its files.
    fn reopen(self) -> Self
    where
        Self: Sized;
}

impl StorageUnderTest for MemStorage {
    fn append(&mut self, entries: &[Entry]) {
        MemStorage::append(self, entries);
    }

    fn set_hard_state(&mut self, hs: HardState) {
        MemStorage::set_hard_state(self, hs);
    }

    fn apply_snapshot(&mut self, snapshot: Snapshot) {
        MemStorage::apply_snapshot(self, snapshot);
    }

    fn create_snapshot(&mut self, index: LogIndex, conf_state: ConfState, data: Bytes) {
        MemStorage::create_snapshot(self, index, conf_state, data);
    }

    fn reopen(self) -> Self {
        self
    }
}

/// Runs every check of the suite, each on a fresh storage from `make`.
pub fn run_all<S: StorageUnderTest>(make: impl Fn() -> S) {
    check_empty(make());
    check_append_and_read_back(make());
    check_append_truncates_conflicting_tail(make());
    check_term_at_compaction_point(make());
    check_compacted_below_compaction_point(make());
    check_unavailable_past_end(make());
    check_hard_state_round_trip(make());
    check_everything_survives_reopen(make());
    check_snapshot_then_append(make());
    check_apply_snapshot_replaces_unrelated_log(make());
    check_apply_snapshot_keeps_matching_suffix(make());
    check_initial_state_returns_snapshot_conf_state(make());
}

/// An entry of the suite: the payload names index and term; every third entry is a
/// configuration change, so that implementations must keep [`EntryKind`].
pub fn entry(index: u64, term: u64) -> Entry {
    Entry {
        term: Term(term),
        index: LogIndex(index),
        kind: if index.is_multiple_of(3) {
            EntryKind::ConfChange
        } else {
            EntryKind::Normal
        },
        data: Bytes::from(format!("entry {index} of term {term}")),
    }
}

/// Entries `first..=last`, all of `term`.
pub fn entries(first: u64, last: u64, term: u64) -> Vec<Entry> {
    (first..=last).map(|index| entry(index, term)).collect()
}

fn joint_conf_state() -> ConfState {
    ConfState {
        voters: vec![NodeId(1), NodeId(2), NodeId(3)],
        learners: vec![NodeId(7)],
        voters_outgoing: vec![NodeId(1), NodeId(2), NodeId(4)],
        learners_next: vec![NodeId(4)],
        auto_leave: true,
    }
}

fn read_all<S: Storage>(check: &str, s: &S) -> Vec<Entry> {
    let first = s.first_index().expect("first_index");
    let last = s.last_index().expect("last_index");
    s.entries(first, last.next(), u64::MAX)
        .unwrap_or_else(|e| panic!("{check}: entries({first}, {}) failed: {e}", last.next()))
}

fn assert_bounds<S: Storage>(check: &str, s: &S, first: u64, last: u64) {
    assert_eq!(s.first_index(), Ok(LogIndex(first)), "{check}: first_index");
    assert_eq!(s.last_index(), Ok(LogIndex(last)), "{check}: last_index");
}

fn assert_compacted(check: &str, what: &str, result: Result<impl std::fmt::Debug, StorageError>) {
    assert!(
        matches!(result, Err(StorageError::Compacted { .. })),
        "{check}: {what} must be Err(Compacted), got {result:?}"
    );
}

fn assert_unavailable(check: &str, what: &str, result: Result<impl std::fmt::Debug, StorageError>) {
    assert!(
        matches!(result, Err(StorageError::Unavailable { .. })),
        "{check}: {what} must be Err(Unavailable), got {result:?}"
    );
}

/// An empty storage: `first_index` 1, `last_index` 0, `term(0)` 0, default initial state,
/// empty snapshot, and an empty range reads as nothing.
pub fn check_empty<S: StorageUnderTest>(s: S) {
    let check = "check_empty";
    assert_bounds(check, &s, 1, 0);
    assert_eq!(s.term(LogIndex(0)), Ok(Term(0)), "{check}: term(0)");
    assert_unavailable(check, "term(1)", s.term(LogIndex(1)));
    assert_eq!(
        s.entries(LogIndex(1), LogIndex(1), u64::MAX),
        Ok(Vec::new()),
        "{check}: entries(1, 1)"
    );
    let state = s.initial_state().expect("initial_state");
    assert_eq!(
        state.hard_state,
        HardState::default(),
        "{check}: initial hard state"
    );
    assert_eq!(
        state.conf_state,
        ConfState::default(),
        "{check}: initial conf state"
    );
    let snapshot = s.snapshot().expect("snapshot");
    assert!(
        snapshot.is_empty(),
        "{check}: snapshot must be empty, got {snapshot:?}"
    );
}

/// Appended entries read back exactly (kind and data included), contiguous from `low`,
/// capped by `max_bytes` but never fewer than one.
pub fn check_append_and_read_back<S: StorageUnderTest>(mut s: S) {
    let check = "check_append_and_read_back";
    let all = entries(1, 5, 1);
    s.append(&all[..2]);
    s.append(&all[2..]);
    assert_bounds(check, &s, 1, 5);
    assert_eq!(read_all(check, &s), all, "{check}: whole log");
    for e in &all {
        assert_eq!(s.term(e.index), Ok(e.term), "{check}: term({})", e.index);
    }
    assert_eq!(
        s.entries(LogIndex(2), LogIndex(4), u64::MAX),
        Ok(all[1..3].to_vec()),
        "{check}: entries(2, 4) must be exactly entries 2 and 3"
    );
    assert_eq!(
        s.entries(LogIndex(2), LogIndex(4), 0),
        Ok(all[1..2].to_vec()),
        "{check}: entries(2, 4, max_bytes = 0) must return exactly one entry"
    );
    let two = all[0].size_bytes() + all[1].size_bytes();
    assert_eq!(
        s.entries(LogIndex(1), LogIndex(6), two),
        Ok(all[..2].to_vec()),
        "{check}: entries(1, 6, max_bytes = size of two entries) must return exactly two"
    );
    assert_eq!(
        s.entries(LogIndex(1), LogIndex(6), two - 1),
        Ok(all[..1].to_vec()),
        "{check}: entries(1, 6, max_bytes just below two entries) must return one"
    );
    assert_eq!(
        s.entries(LogIndex(3), LogIndex(3), u64::MAX),
        Ok(Vec::new()),
        "{check}: an empty range reads as nothing"
    );
}

/// Appending at an index inside the log replaces everything from that index on.
pub fn check_append_truncates_conflicting_tail<S: StorageUnderTest>(mut s: S) {
    let check = "check_append_truncates_conflicting_tail";
    s.append(&entries(1, 5, 1));
    s.append(&entries(3, 4, 2));
    assert_bounds(check, &s, 1, 4);
    let mut expected = entries(1, 2, 1);
    expected.extend(entries(3, 4, 2));
    assert_eq!(read_all(check, &s), expected, "{check}: log after conflict");
    assert_unavailable(check, "term(5) of the truncated entry", s.term(LogIndex(5)));
    // Replacing from the very first entry.
    s.append(&entries(1, 1, 3));
    assert_bounds(check, &s, 1, 1);
    assert_eq!(
        read_all(check, &s),
        entries(1, 1, 3),
        "{check}: replaced log"
    );
    // Appending right after the end extends.
    s.append(&entries(2, 3, 3));
    assert_eq!(
        read_all(check, &s),
        entries(1, 3, 3),
        "{check}: extended log"
    );
}

/// `term(first_index - 1)` is the term of the last compacted entry (contract point 3), also
/// when the whole log was compacted.
pub fn check_term_at_compaction_point<S: StorageUnderTest>(mut s: S) {
    let check = "check_term_at_compaction_point";
    let mut log = entries(1, 3, 1);
    log.extend(entries(4, 6, 2));
    log.extend(entries(7, 10, 3));
    s.append(&log);
    s.create_snapshot(LogIndex(5), ConfState::from_voters([1]), Bytes::from("s5"));
    assert_bounds(check, &s, 6, 10);
    assert_eq!(
        s.term(LogIndex(5)),
        Ok(Term(2)),
        "{check}: term(first_index - 1) after compaction"
    );
    assert_eq!(
        read_all(check, &s),
        log[5..].to_vec(),
        "{check}: rest of the log"
    );
    s.create_snapshot(
        LogIndex(10),
        ConfState::from_voters([1]),
        Bytes::from("s10"),
    );
    assert_bounds(check, &s, 11, 10);
    assert_eq!(
        s.term(LogIndex(10)),
        Ok(Term(3)),
        "{check}: term(first_index - 1) with every entry compacted"
    );
}

/// Reads at or below the compaction point (other than `term` of the snapshot index) fail
/// with `Compacted`.
pub fn check_compacted_below_compaction_point<S: StorageUnderTest>(mut s: S) {
    let check = "check_compacted_below_compaction_point";
    s.append(&entries(1, 10, 1));
    s.create_snapshot(LogIndex(5), ConfState::from_voters([1]), Bytes::from("s5"));
    assert_compacted(check, "term(4)", s.term(LogIndex(4)));
    assert_compacted(check, "term(1)", s.term(LogIndex(1)));
    assert_compacted(
        check,
        "entries(5, 7)",
        s.entries(LogIndex(5), LogIndex(7), u64::MAX),
    );
    assert_compacted(
        check,
        "entries(1, 11)",
        s.entries(LogIndex(1), LogIndex(11), u64::MAX),
    );
    assert_eq!(
        s.entries(LogIndex(6), LogIndex(8), u64::MAX),
        Ok(entries(6, 7, 1)),
        "{check}: entries(6, 8) right after the compaction point"
    );
}

/// Reads past the last entry fail with `Unavailable`.
pub fn check_unavailable_past_end<S: StorageUnderTest>(mut s: S) {
    let check = "check_unavailable_past_end";
    s.append(&entries(1, 3, 1));
    assert_unavailable(check, "term(4)", s.term(LogIndex(4)));
    assert_unavailable(check, "term(100)", s.term(LogIndex(100)));
    assert_unavailable(
        check,
        "entries(1, 5)",
        s.entries(LogIndex(1), LogIndex(5), u64::MAX),
    );
    assert_unavailable(
        check,
        "entries(4, 6)",
        s.entries(LogIndex(4), LogIndex(6), u64::MAX),
    );
    assert_eq!(
        s.entries(LogIndex(1), LogIndex(4), u64::MAX),
        Ok(entries(1, 3, 1)),
        "{check}: entries(1, last + 1) is the whole log"
    );
}

/// The hard state reads back as written (the latest write wins), across a restart too.
pub fn check_hard_state_round_trip<S: StorageUnderTest>(mut s: S) {
    let check = "check_hard_state_round_trip";
    let first = HardState {
        term: Term(3),
        vote: NodeId(2),
        commit: LogIndex(0),
    };
    s.set_hard_state(first);
    assert_eq!(
        s.initial_state().expect("initial_state").hard_state,
        first,
        "{check}: first hard state"
    );
    let second = HardState {
        term: Term(u64::MAX - 1),
        vote: NodeId(u64::MAX),
        commit: LogIndex(1 << 40),
    };
    s.set_hard_state(second);
    assert_eq!(
        s.initial_state().expect("initial_state").hard_state,
        second,
        "{check}: overwritten hard state"
    );
    let s = s.reopen();
    assert_eq!(
        s.initial_state().expect("initial_state").hard_state,
        second,
        "{check}: hard state after reopen"
    );
}

fn observable<S: Storage>(check: &str, s: &S) -> (LogIndex, LogIndex, Term, Vec<Entry>, Snapshot) {
    let first = s.first_index().expect("first_index");
    let last = s.last_index().expect("last_index");
    let term = s.term(first.prev()).expect("term(first_index - 1)");
    (
        first,
        last,
        term,
        read_all(check, s),
        s.snapshot().expect("snapshot"),
    )
}

/// Entries (after truncation and compaction), hard state, snapshot and membership all
/// survive a restart, and the log can be extended after it.
pub fn check_everything_survives_reopen<S: StorageUnderTest>(mut s: S) {
    let check = "check_everything_survives_reopen";
    s.append(&entries(1, 8, 1));
    s.append(&entries(6, 9, 2));
    s.create_snapshot(LogIndex(4), joint_conf_state(), Bytes::from("state at 4"));
    s.append(&entries(10, 12, 3));
    let hs = HardState {
        term: Term(3),
        vote: NodeId(1),
        commit: LogIndex(11),
    };
    s.set_hard_state(hs);
    let before = observable(check, &s);
    let state_before = s.initial_state().expect("initial_state");
    let mut s = s.reopen();
    assert_eq!(
        observable(check, &s),
        before,
        "{check}: (first, last, term(first - 1), entries, snapshot) after reopen"
    );
    assert_eq!(
        s.initial_state().expect("initial_state"),
        state_before,
        "{check}: initial_state after reopen"
    );
    assert_eq!(state_before.hard_state, hs, "{check}: hard state");
    assert_eq!(
        state_before.conf_state,
        joint_conf_state(),
        "{check}: conf state"
    );
    // A second restart straight after the first, then more writes.
    let mut s2 = {
        s.append(&entries(13, 13, 3));
        s.reopen().reopen()
    };
    assert_bounds(check, &s2, 5, 13);
    assert_eq!(s2.term(LogIndex(13)), Ok(Term(3)), "{check}: term(13)");
    s2.append(&entries(12, 12, 4));
    let s2 = s2.reopen();
    assert_bounds(check, &s2, 5, 12);
    assert_eq!(
        s2.term(LogIndex(12)),
        Ok(Term(4)),
        "{check}: truncation after reopen is durable"
    );
}

/// After a snapshot, the log continues at the snapshot's index + 1 (a created snapshot that
/// compacts everything, and an applied one on an empty storage).
pub fn check_snapshot_then_append<S: StorageUnderTest>(mut s: S) {
    let check = "check_snapshot_then_append";
    s.append(&entries(1, 5, 1));
    s.create_snapshot(LogIndex(5), ConfState::from_voters([1]), Bytes::from("s5"));
    assert_bounds(check, &s, 6, 5);
    s.append(&entries(6, 8, 2));
    assert_bounds(check, &s, 6, 8);
    assert_eq!(
        read_all(check, &s),
        entries(6, 8, 2),
        "{check}: appended after snapshot"
    );
    let s = s.reopen();
    assert_eq!(
        read_all(check, &s),
        entries(6, 8, 2),
        "{check}: appended after snapshot, after reopen"
    );

    // A snapshot from a leader past the end of the log: the log continues after it.
    let mut t = s;
    t.apply_snapshot(Snapshot {
        metadata: SnapshotMetadata {
            index: LogIndex(20),
            term: Term(4),
            conf_state: ConfState::from_voters([1, 2]),
        },
        data: Bytes::from("s20"),
    });
    assert_bounds(check, &t, 21, 20);
    t.append(&entries(21, 22, 4));
    let t = t.reopen();
    assert_bounds(check, &t, 21, 22);
    assert_eq!(t.term(LogIndex(20)), Ok(Term(4)), "{check}: term(20)");
    assert_eq!(
        read_all(check, &t),
        entries(21, 22, 4),
        "{check}: after applied snapshot"
    );
}

fn leader_snapshot(index: u64, term: u64) -> Snapshot {
    Snapshot {
        metadata: SnapshotMetadata {
            index: LogIndex(index),
            term: Term(term),
            conf_state: joint_conf_state(),
        },
        data: Bytes::from(format!("leader snapshot at {index}")),
    }
}

/// Applying a snapshot whose last entry the log does not hold (or holds with another term)
/// replaces the whole log; the commit index rises to the snapshot's.
pub fn check_apply_snapshot_replaces_unrelated_log<S: StorageUnderTest>(mut s: S) {
    let check = "check_apply_snapshot_replaces_unrelated_log";
    s.append(&entries(1, 10, 1));
    s.set_hard_state(HardState {
        term: Term(1),
        vote: NodeId(1),
        commit: LogIndex(2),
    });
    let snapshot = leader_snapshot(7, 3);
    s.apply_snapshot(snapshot.clone());
    let mut s = s.reopen();
    assert_bounds(check, &s, 8, 7);
    assert_eq!(s.term(LogIndex(7)), Ok(Term(3)), "{check}: term(7)");
    assert_unavailable(check, "term(8) of the old log", s.term(LogIndex(8)));
    assert_eq!(s.snapshot(), Ok(snapshot.clone()), "{check}: snapshot");
    assert_eq!(
        s.initial_state().expect("initial_state").hard_state,
        HardState {
            term: Term(1),
            vote: NodeId(1),
            commit: LogIndex(7)
        },
        "{check}: hard state keeps term and vote, commit rises to the snapshot"
    );
    s.append(&entries(8, 9, 3));
    assert_bounds(check, &s, 8, 9);

    // A snapshot older than the current one changes nothing.
    s.apply_snapshot(leader_snapshot(5, 1));
    assert_bounds(check, &s, 8, 9);
    assert_eq!(
        s.snapshot(),
        Ok(snapshot),
        "{check}: stale snapshot ignored"
    );

    // A snapshot past the end of the log replaces it too.
    let far = leader_snapshot(30, 5);
    s.apply_snapshot(far.clone());
    let s = s.reopen();
    assert_bounds(check, &s, 31, 30);
    assert_eq!(s.term(LogIndex(30)), Ok(Term(5)), "{check}: term(30)");
    assert_eq!(s.snapshot(), Ok(far), "{check}: snapshot past the end");
}

/// Applying a snapshot whose last entry the log holds with the same term keeps the entries
/// after it.
pub fn check_apply_snapshot_keeps_matching_suffix<S: StorageUnderTest>(mut s: S) {
    let check = "check_apply_snapshot_keeps_matching_suffix";
    s.append(&entries(1, 4, 1));
    s.append(&entries(5, 10, 3));
    let snapshot = leader_snapshot(7, 3);
    s.apply_snapshot(snapshot.clone());
    let s = s.reopen();
    assert_bounds(check, &s, 8, 10);
    assert_eq!(s.term(LogIndex(7)), Ok(Term(3)), "{check}: term(7)");
    assert_eq!(
        read_all(check, &s),
        entries(8, 10, 3),
        "{check}: kept suffix"
    );
    assert_eq!(s.snapshot(), Ok(snapshot), "{check}: snapshot");
    assert_eq!(
        s.initial_state().expect("initial_state").hard_state.commit,
        LogIndex(7),
        "{check}: commit rises to the snapshot"
    );
}

/// `initial_state` reports the membership of the latest snapshot (created or applied),
/// joint configurations included, before and after a restart.
pub fn check_initial_state_returns_snapshot_conf_state<S: StorageUnderTest>(mut s: S) {
    let check = "check_initial_state_returns_snapshot_conf_state";
    let applied = leader_snapshot(3, 2);
    s.apply_snapshot(applied.clone());
    assert_eq!(
        s.initial_state().expect("initial_state").conf_state,
        joint_conf_state(),
        "{check}: conf state of an applied snapshot"
    );
    let mut s = s.reopen();
    assert_eq!(
        s.initial_state().expect("initial_state").conf_state,
        joint_conf_state(),
        "{check}: conf state of an applied snapshot after reopen"
    );
    assert_eq!(s.snapshot(), Ok(applied), "{check}: applied snapshot");

    s.append(&entries(4, 6, 2));
    let created = ConfState {
        voters: vec![NodeId(1), NodeId(u64::MAX)],
        learners: vec![NodeId(300)],
        ..ConfState::default()
    };
    s.create_snapshot(LogIndex(5), created.clone(), Bytes::new());
    let s = s.reopen();
    assert_eq!(
        s.initial_state().expect("initial_state").conf_state,
        created,
        "{check}: conf state of a created snapshot after reopen"
    );
    assert_eq!(
        s.snapshot(),
        Ok(Snapshot {
            metadata: SnapshotMetadata {
                index: LogIndex(5),
                term: Term(2),
                conf_state: created,
            },
            data: Bytes::new(),
        }),
        "{check}: created snapshot (empty data) after reopen"
    );
}
