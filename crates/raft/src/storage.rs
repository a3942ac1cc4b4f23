//! The `Storage` trait through which the core reads the persisted log, and `MemStorage`, an
//! in-memory implementation used by tests, benchmarks and the simulator.

use crate::types::{
    ConfState, Entry, HardState, LogIndex, Snapshot, SnapshotInfo, SnapshotMetadata, Term,
};
use bytes::Bytes;
use thiserror::Error;

/// Index of the bootstrap snapshot of a group's founding replicas (see
/// [`MemStorage::new_bootstrap`]).
pub const INIT_LOG_INDEX: LogIndex = LogIndex(5);
/// Term of the bootstrap snapshot; founding replicas start in this term.
pub const INIT_TERM: Term = Term(5);

/// Errors a [`Storage`] may return for reads.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StorageError {
    /// The requested index is at or below the compaction point: it is only in a snapshot.
    #[error("log index is compacted (first available index is {first_index})")]
    Compacted { first_index: LogIndex },
    /// The requested index is past the last entry.
    #[error("log index {index} is unavailable (last index is {last_index})")]
    Unavailable {
        index: LogIndex,
        last_index: LogIndex,
    },
    /// A snapshot is being built; ask again later.
    #[error("snapshot temporarily unavailable")]
    SnapshotTemporarilyUnavailable,
    /// The storage backend failed; the core cannot continue safely.
    #[error("storage failure: {0}")]
    Other(String),
}

/// What was persisted when the node last stopped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RaftState {
    pub hard_state: HardState,
    pub conf_state: ConfState,
}

/// Read access to a peer's persisted Raft log.
///
/// # To ensure correctness
/// An implementation must guarantee:
/// 1. The log has no holes: entries `first_index()..=last_index()` all exist.
/// 2. Everything it returns was durable before the caller reported it persisted (the caller
///    writes, syncs, then calls [`crate::RawNode::advance`]).
/// 3. `term(first_index() - 1)` is the term of the last compacted entry (the snapshot's),
///    so that the core can check consistency across the compaction point.
/// 4. Entries returned by `entries(low, high, max_bytes)` are contiguous from `low`, at least
///    one entry when `low < high` even if it exceeds `max_bytes`.
pub trait Storage {
    /// The hard state and membership at start-up.
    fn initial_state(&self) -> Result<RaftState, StorageError>;
    /// Entries in `[low, high)`, capped to about `max_bytes` (at least one).
    fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError>;
    /// The term of the entry at `index`, valid for `first_index() - 1 ..= last_index()`.
    fn term(&self, index: LogIndex) -> Result<Term, StorageError>;
    /// The first index still in the log (snapshot index + 1).
    fn first_index(&self) -> Result<LogIndex, StorageError>;
    /// The last index in the log (the snapshot index if the log is empty).
    fn last_index(&self) -> Result<LogIndex, StorageError>;
    /// The most recent snapshot, to send to a follower that is too far behind.
    fn snapshot(&self) -> Result<Snapshot, StorageError>;

    /// The most recent snapshot's metadata, the length of its data and the data's crc32c,
    /// without the data: a leader sends a snapshot chunk by chunk
    /// ([`Storage::snapshot_chunk`]), so a storage that keeps snapshots on disk need not hold
    /// a whole one in memory. The default reads the whole snapshot.
    fn snapshot_info(&self) -> Result<SnapshotInfo, StorageError> {
        let snapshot = self.snapshot()?;
        Ok(SnapshotInfo {
            checksum: crc32c::crc32c(&snapshot.data),
            total_bytes: snapshot.data.len() as u64,
            metadata: snapshot.metadata,
        })
    }

    /// Bytes `[offset, offset + len)` of the data of the snapshot at `index` (fewer at its
    /// end). [`StorageError::SnapshotTemporarilyUnavailable`] when the most recent snapshot is
    /// no longer at `index` (a newer one replaced it: the leader starts over with that one).
    /// Chunks are asked for in order from offset 0 (again from 0 when a transfer restarts), so
    /// a storage may verify the data's checksum as it goes and fail the last chunk when it
    /// does not match. The default reads the whole snapshot.
    fn snapshot_chunk(
        &self,
        index: LogIndex,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, StorageError> {
        let snapshot = self.snapshot()?;
        if snapshot.metadata.index != index {
            return Err(StorageError::SnapshotTemporarilyUnavailable);
        }
        Ok(slice_chunk(&snapshot.data, offset, len))
    }
}

/// `[offset, offset + len)` of `data`, clipped to its end.
pub(crate) fn slice_chunk(data: &Bytes, offset: u64, len: u64) -> Bytes {
    let total = data.len() as u64;
    let start = offset.min(total);
    let end = start.saturating_add(len).min(total);
    data.slice(start as usize..end as usize)
}

/// An in-memory [`Storage`], also writable by the caller (the "disk" of tests).
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    hard_state: HardState,
    snapshot: Snapshot,
    /// `entries[0].index == snapshot.metadata.index + 1` when non-empty.
    entries: Vec<Entry>,
}

impl MemStorage {
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    /// A bootstrap member of a new group: its log starts with a snapshot at
    /// [`INIT_LOG_INDEX`] / [`INIT_TERM`] holding the initial membership (the TiKV
    /// convention). A replica added later starts empty (`MemStorage::new()`), so the leader
    /// cannot reach it with entries below `INIT_LOG_INDEX` and sends a snapshot: the new
    /// replica learns the membership from it instead of replaying changes it cannot apply.
    pub fn new_bootstrap(conf_state: ConfState) -> MemStorage {
        let mut s = MemStorage::default();
        s.snapshot.metadata = SnapshotMetadata {
            index: INIT_LOG_INDEX,
            term: INIT_TERM,
            conf_state,
        };
        s.hard_state = HardState {
            term: INIT_TERM,
            vote: crate::types::NodeId::NONE,
            commit: INIT_LOG_INDEX,
        };
        s
    }

    /// A storage whose log starts at index 1 with the given membership (tests where every
    /// replica is a founding member).
    pub fn with_conf_state(conf_state: ConfState) -> MemStorage {
        let mut s = MemStorage::default();
        s.snapshot.metadata.conf_state = conf_state;
        s
    }

    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    pub fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    /// Sets the configuration of the snapshot (at bootstrap: the initial membership). The
    /// configuration returned by `initial_state` is the snapshot's, because a restarting
    /// node re-applies the log after its snapshot, membership changes included.
    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.snapshot.metadata.conf_state = cs;
    }

    fn offset(&self) -> LogIndex {
        self.snapshot.metadata.index
    }

    fn last(&self) -> LogIndex {
        self.offset() + self.entries.len() as u64
    }

    /// Appends entries, truncating any existing entries at or after the first new index.
    ///
    /// # Panics
    /// If the new entries would leave a hole in the log or overwrite compacted entries: the
    /// core never produces such a batch, so it is a broken invariant of the caller.
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        assert!(
            first.index > self.offset(),
            "append at {} overwrites compacted log (snapshot index {})",
            first.index,
            self.offset()
        );
        assert!(
            first.index <= self.last().next(),
            "append at {} leaves a hole after last index {}",
            first.index,
            self.last()
        );
        let keep = (first.index.0 - self.offset().0 - 1) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(entries);
    }

    /// Discards entries up to and including `index` (they are covered by a snapshot the
    /// caller keeps through [`MemStorage::set_snapshot`] or [`MemStorage::create_snapshot`]).
    pub fn compact(&mut self, index: LogIndex) {
        if index <= self.offset() {
            return;
        }
        assert!(
            index <= self.last(),
            "compact to {} beyond last index {}",
            index,
            self.last()
        );
        let term = self.term(index).expect("index checked above");
        let drop = (index.0 - self.offset().0) as usize;
        self.entries.drain(..drop);
        self.snapshot.metadata.index = index;
        self.snapshot.metadata.term = term;
    }

    /// Records a snapshot of the application at `index` and compacts the log up to it.
    pub fn create_snapshot(&mut self, index: LogIndex, conf_state: ConfState, data: bytes::Bytes) {
        assert!(
            index <= self.last() && index >= self.offset(),
            "snapshot at {} outside log [{}, {}]",
            index,
            self.offset(),
            self.last()
        );
        let term = self.term(index).expect("index checked above");
        self.compact(index);
        self.snapshot = Snapshot {
            metadata: SnapshotMetadata {
                index,
                term,
                conf_state,
            },
            data,
        };
    }

    /// Installs a snapshot received from the leader: the log is replaced unless it already
    /// contains the snapshot's last entry, in which case the suffix is kept.
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) {
        let meta = &snapshot.metadata;
        if meta.index <= self.offset() {
            return;
        }
        let keep_suffix = meta.index <= self.last() && self.term(meta.index) == Ok(meta.term);
        if keep_suffix {
            let drop = (meta.index.0 - self.offset().0) as usize;
            self.entries.drain(..drop);
        } else {
            self.entries.clear();
        }
        if self.hard_state.commit < meta.index {
            self.hard_state.commit = meta.index;
        }
        self.snapshot = snapshot;
    }
}

impl Storage for MemStorage {
    fn initial_state(&self) -> Result<RaftState, StorageError> {
        Ok(RaftState {
            hard_state: self.hard_state,
            conf_state: self.snapshot.metadata.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        if low <= self.offset() {
            return Err(StorageError::Compacted {
                first_index: self.offset().next(),
            });
        }
        if high > self.last().next() {
            return Err(StorageError::Unavailable {
                index: high.prev(),
                last_index: self.last(),
            });
        }
        let start = (low.0 - self.offset().0 - 1) as usize;
        let end = (high.0 - self.offset().0 - 1) as usize;
        let mut out = Vec::with_capacity(end.saturating_sub(start));
        let mut bytes = 0u64;
        for e in &self.entries[start..end] {
            bytes += e.size_bytes();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        if index == self.offset() {
            return Ok(self.snapshot.metadata.term);
        }
        if index < self.offset() {
            return Err(StorageError::Compacted {
                first_index: self.offset().next(),
            });
        }
        if index > self.last() {
            return Err(StorageError::Unavailable {
                index,
                last_index: self.last(),
            });
        }
        Ok(self.entries[(index.0 - self.offset().0 - 1) as usize].term)
    }

    fn first_index(&self) -> Result<LogIndex, StorageError> {
        Ok(self.offset().next())
    }

    fn last_index(&self) -> Result<LogIndex, StorageError> {
        Ok(self.last())
    }

    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        Ok(self.snapshot.clone())
    }
}
