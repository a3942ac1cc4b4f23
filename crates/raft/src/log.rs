//! `RaftLog`: the log as the core sees it — persisted entries behind [`Storage`] followed by
//! an unstable suffix that has not been handed to the caller for persistence yet, plus the
//! commit and apply cursors.

use crate::storage::{Storage, StorageError};
use crate::types::{Entry, LogIndex, Snapshot, SnapshotInfo, Term};
use bytes::Bytes;

/// Entries and a snapshot not yet persisted by the caller.
///
/// With asynchronous persistence (see [`crate::RawNode::advance_async`]) some of them have
/// been handed to the caller in a `Ready` and are being written: they stay here, readable,
/// until the caller reports them durable, and `handed_out` marks where the next `Ready`'s
/// entries start so that none is handed out twice.
#[derive(Debug, Default)]
struct Unstable {
    /// A snapshot received from the leader, to be persisted before the entries.
    snapshot: Option<Snapshot>,
    /// Whether `snapshot` was handed out (and is being persisted).
    snapshot_handed_out: bool,
    /// Whether `snapshot`'s data is with the caller (streamed to it in chunks), not in
    /// `snapshot.data`: until it is persisted this peer cannot send it on.
    snapshot_streamed: bool,
    /// `entries[i].index == offset + i`.
    entries: Vec<Entry>,
    offset: LogIndex,
    /// Entries up to this index were handed out; always `>= offset - 1`.
    handed_out: LogIndex,
}

impl Unstable {
    fn maybe_last_index(&self) -> Option<LogIndex> {
        if let Some(last) = self.entries.last() {
            return Some(last.index);
        }
        self.snapshot.as_ref().map(|s| s.metadata.index)
    }

    fn maybe_term(&self, index: LogIndex) -> Option<Term> {
        if index < self.offset {
            let s = self.snapshot.as_ref()?;
            return (s.metadata.index == index).then_some(s.metadata.term);
        }
        let last = self.maybe_last_index()?;
        if index > last {
            return None;
        }
        if self.entries.is_empty() {
            // Only a snapshot, and index >= offset == snapshot index + 1 > last.
            return None;
        }
        Some(self.entries[(index.0 - self.offset.0) as usize].term)
    }

    fn truncate_and_append(&mut self, ents: &[Entry]) {
        let after = ents[0].index;
        let end = self.offset + self.entries.len() as u64;
        if after == end {
            self.entries.extend_from_slice(ents);
        } else if after <= self.offset {
            // The new entries replace everything unstable (and part of what is stable; the
            // caller's storage truncates its own tail when it persists them).
            self.offset = after;
            self.entries.clear();
            self.entries.extend_from_slice(ents);
        } else {
            self.entries.truncate((after.0 - self.offset.0) as usize);
            self.entries.extend_from_slice(ents);
        }
        // Replaced entries that were handed out are handed out again, in their new version
        // (the caller's later write truncates the earlier one's).
        self.handed_out = self.handed_out.min(after.prev());
    }

    fn to_hand_out(&self) -> &[Entry] {
        assert!(
            self.handed_out >= self.offset.prev(),
            "handed-out mark {} below the unstable offset {}",
            self.handed_out,
            self.offset
        );
        let from = (self.handed_out.0 + 1 - self.offset.0) as usize;
        &self.entries[from.min(self.entries.len())..]
    }
}

/// The core's view of the log.
pub struct RaftLog<S: Storage> {
    pub(crate) storage: S,
    unstable: Unstable,
    /// Highest index known to be committed by a quorum.
    pub(crate) committed: LogIndex,
    /// Highest index the caller has applied (reported through `advance`).
    pub(crate) applied: LogIndex,
    /// No committed entry above this is handed out while set (see
    /// [`crate::RawNode::set_apply_limit`]).
    pub(crate) apply_limit: Option<LogIndex>,
}

impl<S: Storage> RaftLog<S> {
    pub fn new(storage: S) -> Result<RaftLog<S>, StorageError> {
        let first = storage.first_index()?;
        let last = storage.last_index()?;
        Ok(RaftLog {
            storage,
            unstable: Unstable {
                offset: last.next(),
                handed_out: last,
                ..Default::default()
            },
            // Everything up to the snapshot is committed and applied by definition.
            committed: first.prev(),
            applied: first.prev(),
            apply_limit: None,
        })
    }

    pub fn storage(&self) -> &S {
        &self.storage
    }

    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    pub fn first_index(&self) -> LogIndex {
        if let Some(s) = &self.unstable.snapshot {
            return s.metadata.index.next();
        }
        self.storage
            .first_index()
            .unwrap_or_else(|e| panic!("storage.first_index failed: {e}"))
    }

    pub fn last_index(&self) -> LogIndex {
        if let Some(i) = self.unstable.maybe_last_index() {
            return i;
        }
        self.storage
            .last_index()
            .unwrap_or_else(|e| panic!("storage.last_index failed: {e}"))
    }

    pub fn last_term(&self) -> Term {
        self.term(self.last_index())
            .unwrap_or_else(|e| panic!("term of last index {} failed: {e}", self.last_index()))
    }

    /// The term at `index`; `Ok(Term(0))` for an index past the end (it matches nothing).
    pub fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        let dummy = self.first_index().prev();
        if index < dummy {
            return Err(StorageError::Compacted {
                first_index: dummy.next(),
            });
        }
        if index > self.last_index() {
            return Ok(Term(0));
        }
        if let Some(t) = self.unstable.maybe_term(index) {
            return Ok(t);
        }
        self.storage.term(index)
    }

    pub fn match_term(&self, index: LogIndex, term: Term) -> bool {
        self.term(index).map(|t| t == term).unwrap_or(false)
    }

    /// Raft §5.4.1: a candidate's log is at least as up-to-date as ours.
    pub fn is_up_to_date(&self, last_index: LogIndex, last_term: Term) -> bool {
        let my_term = self.last_term();
        last_term > my_term || (last_term == my_term && last_index >= self.last_index())
    }

    /// The first index among `ents` whose term differs from ours (or that we do not have).
    fn find_conflict(&self, ents: &[Entry]) -> Option<LogIndex> {
        ents.iter()
            .find(|e| !self.match_term(e.index, e.term))
            .map(|e| e.index)
    }

    /// Fast backtracking: the largest index `<= index` whose term is `<= term`, with its term.
    /// Every entry between it and `index` has a higher term, so none of them can match a log
    /// whose entry at `index` has `term`.
    pub fn find_conflict_by_term(&self, index: LogIndex, term: Term) -> (LogIndex, Term) {
        let mut i = index.min(self.last_index());
        loop {
            match self.term(i) {
                Ok(t) if t > term => i = i.prev(),
                Ok(t) => return (i, t),
                Err(_) => return (i, Term(0)),
            }
        }
    }

    /// Handles an append from the leader; returns the last index of the new entries when the
    /// log matched at `prev_index`.
    pub fn maybe_append(
        &mut self,
        prev_index: LogIndex,
        prev_term: Term,
        committed: LogIndex,
        ents: &[Entry],
    ) -> Option<LogIndex> {
        if !self.match_term(prev_index, prev_term) {
            return None;
        }
        let last_new = prev_index + ents.len() as u64;
        if let Some(conflict) = self.find_conflict(ents) {
            assert!(
                conflict > self.committed,
                "entry {} conflicts with committed entry (committed {})",
                conflict,
                self.committed
            );
            let start = (conflict.0 - prev_index.0 - 1) as usize;
            self.append(&ents[start..]);
        }
        self.commit_to(committed.min(last_new));
        Some(last_new)
    }

    /// Appends entries to the unstable suffix; returns the new last index.
    pub fn append(&mut self, ents: &[Entry]) -> LogIndex {
        if ents.is_empty() {
            return self.last_index();
        }
        assert!(
            ents[0].index > self.committed,
            "append at {} would overwrite committed index {}",
            ents[0].index,
            self.committed
        );
        self.unstable.truncate_and_append(ents);
        self.last_index()
    }

    pub fn commit_to(&mut self, index: LogIndex) {
        if index > self.committed {
            assert!(
                index <= self.last_index(),
                "commit index {} is out of range (last index {})",
                index,
                self.last_index()
            );
            self.committed = index;
        }
    }

    /// Advances the commit index if `index` is of the current `term` (Raft §5.4.2: a leader
    /// never commits an entry of an earlier term by counting replicas).
    pub fn maybe_commit(&mut self, index: LogIndex, term: Term) -> bool {
        if index > self.committed && self.term(index).map(|t| t == term).unwrap_or(false) {
            self.commit_to(index);
            return true;
        }
        false
    }

    pub fn applied_to(&mut self, index: LogIndex) {
        if index == LogIndex::ZERO {
            return;
        }
        assert!(
            index <= self.committed && index >= self.applied,
            "applied index {} out of range [applied {}, committed {}]",
            index,
            self.applied,
            self.committed
        );
        self.applied = index;
    }

    /// Entries in `[low, high)` from storage and the unstable suffix, about `max_bytes`.
    pub fn slice(
        &self,
        low: LogIndex,
        high: LogIndex,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        if low >= high {
            return Ok(Vec::new());
        }
        if low < self.first_index() {
            return Err(StorageError::Compacted {
                first_index: self.first_index(),
            });
        }
        assert!(
            high <= self.last_index().next(),
            "slice [{low}, {high}) out of bound (last index {})",
            self.last_index()
        );
        let mut out = Vec::new();
        let uoff = self.unstable.offset;
        if low < uoff {
            let stored = self.storage.entries(low, high.min(uoff), max_bytes)?;
            let full = stored.len() as u64 == high.min(uoff).0 - low.0;
            out = stored;
            if !full {
                return Ok(out);
            }
        }
        if high > uoff {
            let mut bytes: u64 = out.iter().map(Entry::size_bytes).sum();
            let from = (low.max(uoff).0 - uoff.0) as usize;
            let to = (high.0 - uoff.0) as usize;
            for e in &self.unstable.entries[from..to] {
                bytes += e.size_bytes();
                if !out.is_empty() && bytes > max_bytes {
                    break;
                }
                out.push(e.clone());
            }
        }
        Ok(out)
    }

    /// Entries from `low` to the end, about `max_bytes`.
    pub fn entries_from(&self, low: LogIndex, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        if low > self.last_index() {
            return Ok(Vec::new());
        }
        self.slice(low, self.last_index().next(), max_bytes)
    }

    /// Entries not yet durable, including those handed out and being persisted.
    pub fn unstable_entries(&self) -> &[Entry] {
        &self.unstable.entries
    }

    /// Unstable entries not handed out in a `Ready` yet.
    pub fn entries_to_hand_out(&self) -> &[Entry] {
        self.unstable.to_hand_out()
    }

    /// The unstable snapshot, if it was not handed out in a `Ready` yet.
    pub fn snapshot_to_hand_out(&self) -> Option<&Snapshot> {
        self.unstable
            .snapshot
            .as_ref()
            .filter(|_| !self.unstable.snapshot_handed_out)
    }

    /// A `Ready` handed out the entries up to `last` (if any) and the snapshot (if any).
    pub fn hand_out(&mut self, last: Option<LogIndex>, snapshot: bool) {
        if let Some(last) = last {
            assert!(
                last > self.unstable.handed_out && last <= self.last_index(),
                "hand_out({last}) outside ({}, {}]",
                self.unstable.handed_out,
                self.last_index()
            );
            self.unstable.handed_out = last;
        }
        if snapshot {
            self.unstable.snapshot_handed_out = true;
        }
    }

    pub fn has_next_committed_entries(&self) -> bool {
        self.committed > self.applied
            && self.unstable.snapshot.is_none()
            && self.apply_limit.is_none_or(|l| self.applied < l)
    }

    /// Committed entries not yet applied, at most `max_bytes` (at least one).
    pub fn next_committed_entries(&self, max_bytes: u64) -> Vec<Entry> {
        if !self.has_next_committed_entries() {
            return Vec::new();
        }
        let low = self.applied.next().max(self.first_index());
        let high = self
            .apply_limit
            .map_or(self.committed, |l| l.min(self.committed));
        self.slice(low, high.next(), max_bytes)
            .unwrap_or_else(|e| panic!("committed entries [{low}, {}]: {e}", self.committed))
    }

    /// The caller persisted entries up to `index` (of `term`): drop them from `unstable`.
    pub fn stable_to(&mut self, index: LogIndex, term: Term) {
        let Some(t) = self.unstable.maybe_term(index) else {
            return;
        };
        // Only if the entry was not replaced meanwhile by a newer leader's entries.
        if t == term && index >= self.unstable.offset {
            let n = (index.0 + 1 - self.unstable.offset.0) as usize;
            self.unstable.entries.drain(..n);
            self.unstable.offset = index.next();
        }
    }

    pub fn stable_snapshot_to(&mut self, index: LogIndex) {
        if self
            .unstable
            .snapshot
            .as_ref()
            .is_some_and(|s| s.metadata.index == index)
        {
            self.unstable.snapshot = None;
            self.unstable.snapshot_handed_out = false;
            self.unstable.snapshot_streamed = false;
        }
    }

    /// Replaces the log with a snapshot received from the leader; `streamed`: its data went to
    /// the caller in chunks and `snapshot.data` is empty.
    pub fn restore(&mut self, snapshot: Snapshot, streamed: bool) {
        let index = snapshot.metadata.index;
        self.committed = index;
        self.unstable.offset = index.next();
        self.unstable.handed_out = index;
        self.unstable.entries.clear();
        self.unstable.snapshot = Some(snapshot);
        self.unstable.snapshot_handed_out = false;
        self.unstable.snapshot_streamed = streamed;
    }

    /// The metadata, data length and checksum of the snapshot to send to a lagging follower
    /// (the unstable one if any, else the storage's), without its data. An unstable snapshot
    /// whose data was streamed to the caller is temporarily unavailable until persisted.
    pub fn snapshot_info(&self) -> Result<SnapshotInfo, StorageError> {
        if let Some(s) = &self.unstable.snapshot {
            if self.unstable.snapshot_streamed {
                return Err(StorageError::SnapshotTemporarilyUnavailable);
            }
            return Ok(SnapshotInfo {
                metadata: s.metadata.clone(),
                total_bytes: s.data.len() as u64,
                checksum: crc32c::crc32c(&s.data),
            });
        }
        self.storage.snapshot_info()
    }

    /// A chunk of the data of the snapshot at `index` (see [`Storage::snapshot_chunk`]).
    pub fn snapshot_chunk(
        &self,
        index: LogIndex,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, StorageError> {
        if let Some(s) = self
            .unstable
            .snapshot
            .as_ref()
            .filter(|s| s.metadata.index == index)
        {
            if self.unstable.snapshot_streamed {
                return Err(StorageError::SnapshotTemporarilyUnavailable);
            }
            return Ok(crate::storage::slice_chunk(&s.data, offset, len));
        }
        self.storage.snapshot_chunk(index, offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;
    use crate::storage_suite::entry;

    fn entries(indices: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
        indices.map(|i| entry(i, term)).collect()
    }

    fn ids(entries: &[Entry]) -> Vec<(u64, u64)> {
        entries.iter().map(|e| (e.index.0, e.term.0)).collect()
    }

    /// Asynchronous persistence: every entry is handed out once, entries replaced by a new
    /// leader are handed out again in their new version, and a write that completes for
    /// entries replaced since makes nothing stable.
    #[test]
    fn entries_are_handed_out_once_and_again_when_replaced() {
        let mut log = RaftLog::new(MemStorage::new()).unwrap();
        log.append(&entries(1..=3, 1));
        assert_eq!(ids(log.entries_to_hand_out()), [(1, 1), (2, 1), (3, 1)]);
        log.hand_out(Some(LogIndex(3)), false);
        assert!(log.entries_to_hand_out().is_empty());
        log.append(&entries(4..=5, 1));
        assert_eq!(ids(log.entries_to_hand_out()), [(4, 1), (5, 1)]);
        log.hand_out(Some(LogIndex(5)), false);

        // A new leader's entry replaces 3..=5 before any write completed.
        log.append(&entries(3..=3, 2));
        assert_eq!(ids(log.entries_to_hand_out()), [(3, 2)]);
        log.hand_out(Some(LogIndex(3)), false);

        // The first write (1..=3 of term 1) completes: its last entry was replaced, so
        // nothing is counted stable (the caller's next write rewrites 3 anyway).
        log.stable_to(LogIndex(3), Term(1));
        assert_eq!(ids(log.unstable_entries()), [(1, 1), (2, 1), (3, 2)]);
        // The second (4..=5 of term 1): those entries are gone.
        log.stable_to(LogIndex(5), Term(1));
        assert_eq!(log.unstable_entries().len(), 3);
        // The third (3 of term 2): everything up to 3 is stable.
        log.stable_to(LogIndex(3), Term(2));
        assert!(log.unstable_entries().is_empty());
        assert!(log.entries_to_hand_out().is_empty());
    }

    #[test]
    #[should_panic(expected = "hand_out(2) outside (3, 3]")]
    fn handing_out_entries_twice_is_a_bug() {
        let mut log = RaftLog::new(MemStorage::new()).unwrap();
        log.append(&entries(1..=3, 1));
        log.hand_out(Some(LogIndex(3)), false);
        log.hand_out(Some(LogIndex(2)), false);
    }
}
