//! [`GroupStorage`]: the Raft core's [`raft::Storage`] for one group, on the shared
//! [`LogEngine`], with the snapshot data in snapshot files.
//!
//! # Layout
//! * **Entries** are engine entries of the group. The engine's [`LogEntry`] has no kind, so
//!   the entry's [`EntryKind`] is the first byte of the stored data: `0` = `Normal`,
//!   `1` = `ConfChange`, then the entry's data. Any other first byte (or an empty payload)
//!   is reported as [`StorageError::Other`].
//! * **Hard state**: state key `raft/hard_state` = varint term | varint vote | varint commit.
//! * **Snapshot metadata**: state key `raft/snapshot_meta` = varint index | varint term |
//!   conf state, where a conf state is, for each of `voters`, `learners`,
//!   `voters_outgoing`, `learners_next`: varint count then varint ids; then one byte
//!   `auto_leave`. Varints are LEB128 (7 bits per byte, low first).
//! * **Snapshot data**: [`write_snapshot`](crate::write_snapshot) file of the group in the
//!   snapshot directory; its payload is varint length | encoded conf state | the
//!   application's data, so that the file alone describes the snapshot.
//!
//! # Ordering and recovery
//! A snapshot (created or applied) is written to its file first (durable), then one engine
//! batch commits it: metadata, hard state (applied: commit raised), and the compaction (or,
//! when the log does not hold the snapshot's entry, `clean_group` to drop the unrelated
//! log). The metadata key is the commit point; the group's older files are removed after it.
//! If a crash falls between the file and the metadata, [`GroupStorage::open`] finds a
//! snapshot file newer than the metadata and completes the commit from the file. A snapshot
//! built on another thread ([`prepare_snapshot_file`]) sits published but uncommitted for a
//! while; readers always read the file the metadata names, never merely the newest. `clean_group` drops every state key of the group, so a
//! `GroupStorage` owns its group in the engine: other state keys of the group must be
//! rewritten by their owner after an applied snapshot.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use raft::{
    ConfState, Entry, EntryKind, HardState, LogIndex, NodeId, RaftState, Snapshot, SnapshotInfo,
    SnapshotMetadata, Storage, StorageError, Term,
};

use crate::error::{Error, Result};
use crate::fs::FileSystem;
use crate::snapshot::{
    discard_snapshot, prepare_snapshot_parts, publish_snapshot, read_snapshot, read_snapshot_at,
    remove_older_snapshots, PreparedSnapshot, StreamedSnapshot,
};
use crate::{GroupId, LogBatch, LogEngine, LogEntry};

/// State key of the hard state.
pub const HARD_STATE_KEY: &[u8] = b"raft/hard_state";
/// State key of the snapshot metadata (the commit point of a snapshot).
pub const SNAPSHOT_META_KEY: &[u8] = b"raft/snapshot_meta";

const KIND_NORMAL: u8 = 0;
const KIND_CONF_CHANGE: u8 = 1;

/// One Raft group's persisted log, hard state and snapshot on a shared [`LogEngine`].
///
/// Reads come from the engine's in-memory index and from a cache of the hard state and the
/// latest snapshot (data included); writes are synced before they return, as contract point
/// 2 of [`raft::Storage`] requires.
#[derive(Debug)]
pub struct GroupStorage {
    engine: Arc<LogEngine>,
    group: GroupId,
    dir: PathBuf,
    fs: Arc<dyn FileSystem>,
    hard_state: HardState,
    snapshot: Snapshot,
    /// The last index once every staged append is written (`None`: the engine's). A store
    /// that persists asynchronously stages the next append before the previous one reaches
    /// the engine, so validation must count the staged ones.
    staged_last: Option<LogIndex>,
    /// The checksum of the current snapshot's payload read so far by
    /// [`Storage::snapshot_chunk`]: (index, payload bytes covered, crc32c), so a transfer read
    /// in order is verified when its last chunk is read, without holding the snapshot.
    chunk_crc: std::cell::Cell<(LogIndex, u64, u32)>,
    /// No snapshot below this index is handed to the core for sending (see
    /// [`GroupStorage::set_snapshot_floor`]).
    snapshot_floor: LogIndex,
}

impl GroupStorage {
    /// Snapshots below `index` are not sent to followers until a newer one exists (the
    /// core's `snapshot_info` says temporarily unavailable): a merge's target whose older
    /// snapshot predates the merge would make a new replica replay the merge without the
    /// source it needs on its store.
    pub fn set_snapshot_floor(&mut self, index: LogIndex) {
        self.snapshot_floor = self.snapshot_floor.max(index);
    }

    /// Opens the storage of `group` on `engine`, with snapshot files in `snapshot_dir`
    /// (created if missing; may be shared by many groups). Completes a snapshot whose file
    /// was written but whose metadata was not (see the module documentation).
    pub fn open(
        engine: Arc<LogEngine>,
        group: GroupId,
        snapshot_dir: impl Into<PathBuf>,
        fs: Arc<dyn FileSystem>,
    ) -> Result<GroupStorage> {
        let dir = snapshot_dir.into();
        let corrupt = |what: &str, reason: String| Error::Corruption {
            file: dir.clone(),
            offset: 0,
            reason: format!("group {group}: {what}: {reason}"),
        };
        let hard_state = match engine.get_state(group, HARD_STATE_KEY) {
            Some(bytes) => decode_hard_state(&bytes).map_err(|e| corrupt("hard state", e))?,
            None => HardState::default(),
        };
        let meta = match engine.get_state(group, SNAPSHOT_META_KEY) {
            Some(bytes) => decode_meta(&bytes).map_err(|e| corrupt("snapshot metadata", e))?,
            None => SnapshotMetadata::default(),
        };
        // A transfer in progress when the store stopped starts over (the leader restarts it).
        crate::snapshot::remove_receiving(fs.as_ref(), &dir, group)?;
        let file = read_snapshot(fs.as_ref(), &dir, group)?;
        let mut storage = GroupStorage {
            engine,
            group,
            dir: dir.clone(),
            fs,
            hard_state,
            snapshot: Snapshot {
                metadata: meta.clone(),
                data: Bytes::new(),
            },
            staged_last: None,
            snapshot_floor: LogIndex::ZERO,
            chunk_crc: std::cell::Cell::new((LogIndex::ZERO, 0, 0)),
        };
        match file {
            None if meta.index == LogIndex::ZERO => {}
            None => {
                return Err(corrupt(
                    "snapshot file",
                    format!(
                        "metadata names a snapshot at {} but no file exists",
                        meta.index
                    ),
                ))
            }
            Some(file) => {
                let (conf_state, data) =
                    decode_snapshot_payload(&file.data).map_err(|e| corrupt("snapshot file", e))?;
                let file_meta = SnapshotMetadata {
                    index: LogIndex(file.index),
                    term: Term(file.term),
                    conf_state,
                };
                if file_meta == meta {
                    // Decoded to check it; the data stays on disk until a follower needs it.
                    drop(data);
                } else if file_meta.index > meta.index {
                    // The crash fell between the file and the metadata: finish the job.
                    storage.commit_snapshot(Snapshot {
                        metadata: file_meta,
                        data,
                    })?;
                } else {
                    return Err(corrupt(
                        "snapshot file",
                        format!(
                            "file holds index {} term {}, metadata says {:?}",
                            file.index, file.term, meta
                        ),
                    ));
                }
            }
        }
        Ok(storage)
    }

    /// The engine this storage writes to.
    pub fn engine(&self) -> &Arc<LogEngine> {
        &self.engine
    }

    /// The group this storage holds.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// The persisted hard state.
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    fn snapshot_index(&self) -> LogIndex {
        self.snapshot.metadata.index
    }

    fn last(&self) -> LogIndex {
        let engine_last = self.engine.last_index(self.group).unwrap_or(0);
        LogIndex(engine_last.max(self.snapshot_index().0))
    }

    /// Appends entries durably, truncating any existing entries at or after the first new
    /// index. Entries that would leave a hole or overwrite the snapshot are refused with
    /// [`Error::InvalidArgument`] and nothing is written.
    pub fn append(&mut self, entries: &[Entry]) -> Result<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        if first.index <= self.snapshot_index() || first.index > self.last().next() {
            return Err(Error::InvalidArgument(format!(
                "append at {} to group {} must be in [{}, {}] (snapshot index {}, last index {})",
                first.index,
                self.group,
                self.snapshot_index().next(),
                self.last().next(),
                self.snapshot_index(),
                self.last()
            )));
        }
        let mut batch = LogBatch::new();
        batch.append(self.group, entries.iter().map(encode_entry).collect())?;
        self.engine.write(&mut batch, true)?;
        self.staged_last = None;
        Ok(())
    }

    /// Adds an append of `entries` to `batch` instead of writing it, so that a store can
    /// persist many groups' entries with one write and one sync (group commit across
    /// regions). Validated like [`GroupStorage::append`], counting appends staged before
    /// (their batches may still be on their way to the engine); the caller must write the
    /// batches in the order staged, with `sync = true`, before relying on them, and treat
    /// a failed write as fatal.
    pub fn stage_append(&mut self, batch: &mut LogBatch, entries: &[Entry]) -> Result<()> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(());
        };
        let staged_last = self.staged_last.unwrap_or_else(|| self.last());
        if first.index <= self.snapshot_index() || first.index > staged_last.next() {
            return Err(Error::InvalidArgument(format!(
                "append at {} to group {} must be in [{}, {}]",
                first.index,
                self.group,
                self.snapshot_index().next(),
                staged_last.next()
            )));
        }
        batch.append(self.group, entries.iter().map(encode_entry).collect())?;
        self.staged_last = Some(last.index);
        Ok(())
    }

    /// Adds the hard state to `batch` (see [`GroupStorage::stage_append`]). The cached hard
    /// state changes at once: if the batch then fails to write, the engine is poisoned and
    /// the store must stop, so the cache is never read in a state the disk disagrees with.
    pub fn stage_hard_state(&mut self, batch: &mut LogBatch, hs: HardState) {
        batch.put_state(self.group, HARD_STATE_KEY, &encode_hard_state(&hs));
        self.hard_state = hs;
    }

    /// Persists the hard state durably.
    pub fn set_hard_state(&mut self, hs: HardState) -> Result<()> {
        let mut batch = LogBatch::new();
        batch.put_state(self.group, HARD_STATE_KEY, &encode_hard_state(&hs));
        self.engine.write(&mut batch, true)?;
        self.hard_state = hs;
        Ok(())
    }

    /// Installs a snapshot received from the leader: the log is replaced unless it holds the
    /// snapshot's last entry with the same term (then the entries after it are kept), and
    /// the commit index rises to the snapshot's. A snapshot not newer than the current one
    /// is ignored.
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<()> {
        if snapshot.metadata.index <= self.snapshot_index() {
            return Ok(());
        }
        let prepared = prepare_snapshot_file(
            self.fs.as_ref(),
            &self.dir,
            self.group,
            snapshot.metadata.clone(),
            &[&snapshot.data],
        )?;
        self.commit_snapshot(snapshot)?;
        remove_older_snapshots(self.fs.as_ref(), &prepared)
    }

    /// Starts receiving the snapshot `metadata` names, whose data (without this storage's
    /// prefix) is `data_len` bytes with crc32c `data_crc` as the leader announced: a file
    /// the caller appends each chunk to ([`SnapshotReceiver::write`]) and installs with
    /// [`GroupStorage::install_received`]. Memory: none beyond a chunk.
    pub fn receive_snapshot(
        &self,
        metadata: SnapshotMetadata,
        data_len: u64,
        data_crc: u32,
    ) -> Result<SnapshotReceiver> {
        let prefix = snapshot_prefix(&metadata.conf_state);
        let prefix_crc = crc32c::crc32c(&prefix);
        let payload_crc = crc32c::crc32c_combine(prefix_crc, data_crc, data_len as usize);
        let mut file = StreamedSnapshot::create(
            self.fs.as_ref(),
            &self.dir,
            self.group,
            metadata.index.0,
            metadata.term.0,
            prefix.len() as u64 + data_len,
            payload_crc,
        )?;
        if let Err(e) = file.write(&prefix) {
            file.discard(self.fs.as_ref());
            return Err(e);
        }
        Ok(SnapshotReceiver {
            file,
            metadata,
            prefix_len: prefix.len() as u64,
            data_len,
            fs: self.fs.clone(),
        })
    }

    /// Installs a snapshot received in full ([`GroupStorage::receive_snapshot`]): its file is
    /// checked against the announced checksum, synced and published, then the log is replaced
    /// as by [`GroupStorage::apply_snapshot`] (synced) and older files go. Returns false,
    /// removing the file, when the snapshot is not newer than the current one.
    pub fn install_received(&mut self, receiver: SnapshotReceiver) -> Result<bool> {
        let metadata = receiver.metadata.clone();
        let prepared = receiver.file.finish(self.fs.as_ref())?;
        if metadata.index <= self.snapshot_index() {
            discard_snapshot(self.fs.as_ref(), &prepared);
            return Ok(false);
        }
        self.commit_snapshot(Snapshot {
            metadata,
            data: Bytes::new(),
        })?;
        remove_older_snapshots(self.fs.as_ref(), &prepared)?;
        Ok(true)
    }

    /// Records a snapshot of the application at `index` (between the current snapshot index
    /// and the last index) and compacts the log up to it. As for an applied snapshot, the
    /// persisted commit index is raised to `index` if below (a snapshot covers only
    /// committed entries), so that a snapshot completed by [`GroupStorage::open`] after a
    /// crash is treated the same whichever way it was made.
    ///
    /// The same as [`GroupStorage::snapshot_term`], [`prepare_snapshot_file`] (which also
    /// publishes) and [`GroupStorage::commit_prepared`] in a row; a caller that serializes on
    /// another thread calls them itself.
    pub fn create_snapshot(
        &mut self,
        index: LogIndex,
        conf_state: ConfState,
        data: Bytes,
    ) -> Result<()> {
        let term = self.snapshot_term(index)?;
        let prepared = prepare_snapshot_file(
            self.fs.as_ref(),
            &self.dir,
            self.group,
            SnapshotMetadata {
                index,
                term,
                conf_state: conf_state.clone(),
            },
            &[&data],
        )?;
        self.commit_prepared(&prepared, conf_state)?;
        remove_older_snapshots(self.fs.as_ref(), &prepared)
    }

    /// The term of the entry at `index`, for a snapshot to be made there: `index` must lie
    /// between the current snapshot index and the last index.
    pub fn snapshot_term(&self, index: LogIndex) -> Result<Term> {
        if index < self.snapshot_index() || index > self.last() {
            return Err(Error::InvalidArgument(format!(
                "snapshot of group {} at {} outside the log [{}, {}]",
                self.group,
                index,
                self.snapshot_index(),
                self.last()
            )));
        }
        self.term(index).map_err(|e| {
            Error::InvalidArgument(format!("snapshot of group {} at {index}: {e}", self.group))
        })
    }

    /// The directory and file system this group's snapshot files live in, for a snapshot
    /// prepared on another thread ([`prepare_snapshot_file`]).
    pub fn snapshot_location(&self) -> (PathBuf, Arc<dyn FileSystem>) {
        (self.dir.clone(), self.fs.clone())
    }

    /// Whether a snapshot at (`index`, `term`) could still be committed: it is newer than the
    /// group's (none was installed meanwhile) and the log still holds its entry with its term.
    pub fn can_commit_snapshot(&self, index: LogIndex, term: Term) -> bool {
        index > self.snapshot_index() && index <= self.last() && self.term(index) == Ok(term)
    }

    /// Commits a snapshot prepared and published ([`prepare_snapshot_file`]) at the index and
    /// term [`GroupStorage::snapshot_term`] gave: compacts the log up to it in one engine
    /// write, not waited for to be synced (see [`GroupStorage::commit_snapshot_with`]); the
    /// metadata names it from then on. The group's older files are left for the caller to
    /// remove ([`remove_older_snapshots`], which may run on another thread: unlinking a file of
    /// tens of MiB took milliseconds under load). Returns false, discarding the file, when it
    /// can no longer be committed ([`GroupStorage::can_commit_snapshot`]).
    pub fn commit_prepared(
        &mut self,
        prepared: &PreparedSnapshot,
        conf_state: ConfState,
    ) -> Result<bool> {
        assert_eq!(
            prepared.group, self.group,
            "snapshot of group {} committed to group {}",
            prepared.group, self.group
        );
        let index = LogIndex(prepared.index);
        let term = Term(prepared.term);
        if !self.can_commit_snapshot(index, term) {
            discard_snapshot(self.fs.as_ref(), prepared);
            return Ok(false);
        }
        self.commit_snapshot_with(
            Snapshot {
                metadata: SnapshotMetadata {
                    index,
                    term,
                    conf_state,
                },
                data: Bytes::new(),
            },
            false,
        )?;
        Ok(true)
    }

    /// The engine half of installing a snapshot whose file is already durable, synced.
    fn commit_snapshot(&mut self, snapshot: Snapshot) -> Result<()> {
        self.commit_snapshot_with(snapshot, true)
    }

    /// [`GroupStorage::commit_snapshot`], with or without waiting for the fdatasync. Unsynced
    /// is safe because the file is durable and the engine writes in order: until a later
    /// synced write carries the commit, a crash leaves the file newer than the metadata,
    /// and [`GroupStorage::open`] completes the commit from it.
    fn commit_snapshot_with(&mut self, snapshot: Snapshot, sync: bool) -> Result<()> {
        let meta = &snapshot.metadata;
        let keep_suffix = meta.index <= self.last() && self.term(meta.index) == Ok(meta.term);
        let mut hard_state = self.hard_state;
        if hard_state.commit < meta.index {
            hard_state.commit = meta.index;
        }
        let mut batch = LogBatch::new();
        if !keep_suffix {
            // The log does not lead to this snapshot: drop all of it.
            batch.clean_group(self.group);
        }
        batch.compact_to(self.group, meta.index.0 + 1);
        batch.put_state(self.group, HARD_STATE_KEY, &encode_hard_state(&hard_state));
        batch.put_state(self.group, SNAPSHOT_META_KEY, &encode_meta(meta));
        self.engine.write(&mut batch, sync)?;
        self.hard_state = hard_state;
        if !keep_suffix {
            // The log is gone; appends staged before this (the caller waited for them) are
            // no longer the tail.
            self.staged_last = None;
        }
        // Only the metadata stays in memory: the data is in the snapshot file, read back when
        // a follower needs it (rare), so a store does not hold a second copy of every region's
        // state (measured: ~111 MiB of 419 MiB for 1M keys over 3 regions).
        self.snapshot = Snapshot {
            metadata: snapshot.metadata,
            data: Bytes::new(),
        };
        Ok(())
    }
}

/// A snapshot being received chunk by chunk into its file
/// ([`GroupStorage::receive_snapshot`]).
#[derive(Debug)]
pub struct SnapshotReceiver {
    file: StreamedSnapshot,
    metadata: SnapshotMetadata,
    prefix_len: u64,
    data_len: u64,
    fs: Arc<dyn FileSystem>,
}

impl SnapshotReceiver {
    /// Appends the next chunk of the data.
    pub fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.file.write(chunk)
    }

    /// The snapshot being received.
    pub fn metadata(&self) -> &SnapshotMetadata {
        &self.metadata
    }

    /// Data bytes received so far.
    pub fn received(&self) -> u64 {
        self.file.written() - self.prefix_len
    }

    /// Length of the whole data.
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// Gives the transfer up and removes its file.
    pub fn discard(self) {
        self.file.discard(self.fs.as_ref());
    }
}

/// Writes and syncs the snapshot file of `group` for `meta` holding the application's data,
/// the concatenation of `data` (the file's payload is `varint(conf len) | conf | data...`,
/// written in parts so the state is not copied), then publishes it under its final name. Callable from any thread: until the
/// group's owner commits it ([`GroupStorage::commit_prepared`]) readers of the group's
/// snapshot read the one its metadata names. On error nothing is left behind.
pub fn prepare_snapshot_file(
    fs: &dyn FileSystem,
    dir: &std::path::Path,
    group: GroupId,
    meta: SnapshotMetadata,
    data: &[&[u8]],
) -> Result<PreparedSnapshot> {
    let prefix = snapshot_prefix(&meta.conf_state);
    let mut parts = Vec::with_capacity(1 + data.len());
    parts.push(prefix.as_slice());
    parts.extend_from_slice(data);
    let prepared = prepare_snapshot_parts(fs, dir, group, meta.index.0, meta.term.0, &parts)?;
    if let Err(e) = publish_snapshot(fs, &prepared) {
        discard_snapshot(fs, &prepared);
        return Err(e);
    }
    Ok(prepared)
}

/// The crc32c of a snapshot's data, from the crc32c of its file's payload (`prefix | data`)
/// without reading the data: crc32c is linear, crc(p | d) = shift(crc(p), |d|) ^ crc(d), and
/// `crc32c_combine(x, 0, n)` is that shift.
fn data_crc(payload_crc: u32, prefix: &[u8], data_len: u64) -> u32 {
    payload_crc ^ crc32c::crc32c_combine(crc32c::crc32c(prefix), 0, data_len as usize)
}

/// The part of a snapshot file's payload before the application's data: `varint(conf len) |
/// conf`.
fn snapshot_prefix(conf_state: &ConfState) -> Vec<u8> {
    let mut conf = Vec::new();
    encode_conf_state(conf_state, &mut conf);
    let mut prefix = Vec::with_capacity(conf.len() + 10);
    put_varint(&mut prefix, conf.len() as u64);
    prefix.extend_from_slice(&conf);
    prefix
}

fn storage_error(error: Error) -> StorageError {
    match error {
        Error::Compacted { first_index, .. } => StorageError::Compacted {
            first_index: LogIndex(first_index.unwrap_or(0)),
        },
        Error::Unavailable {
            index, last_index, ..
        } => StorageError::Unavailable {
            index: LogIndex(index),
            last_index: LogIndex(last_index.unwrap_or(0)),
        },
        other => StorageError::Other(other.to_string()),
    }
}

impl Storage for GroupStorage {
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
        if low <= self.snapshot_index() {
            return Err(StorageError::Compacted {
                first_index: self.snapshot_index().next(),
            });
        }
        let last = self.last();
        if high > last.next() {
            return Err(StorageError::Unavailable {
                index: high.prev(),
                last_index: last,
            });
        }
        if low >= high {
            return Ok(Vec::new());
        }
        // The engine counts stored payload bytes, which are fewer than `Entry::size_bytes`,
        // so its answer is a superset of ours: trim it below.
        let limit = usize::try_from(max_bytes).unwrap_or(usize::MAX);
        let stored = self
            .engine
            .entries(self.group, low.0, high.0, limit)
            .map_err(storage_error)?;
        let mut out = Vec::with_capacity(stored.len());
        let mut bytes = 0u64;
        for (expected, stored) in (low.0..).zip(stored) {
            if stored.index != expected {
                return Err(StorageError::Other(format!(
                    "group {}: engine returned entry {} where {expected} was expected",
                    self.group, stored.index
                )));
            }
            let entry = decode_entry(stored).map_err(StorageError::Other)?;
            bytes = bytes.saturating_add(entry.size_bytes());
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(entry);
        }
        if out.is_empty() {
            return Err(StorageError::Other(format!(
                "group {}: engine returned no entry in [{low}, {high})",
                self.group
            )));
        }
        Ok(out)
    }

    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        let snapshot_index = self.snapshot_index();
        if index == snapshot_index {
            return Ok(self.snapshot.metadata.term);
        }
        if index < snapshot_index {
            return Err(StorageError::Compacted {
                first_index: snapshot_index.next(),
            });
        }
        let last = self.last();
        if index > last {
            return Err(StorageError::Unavailable {
                index,
                last_index: last,
            });
        }
        self.engine
            .term(self.group, index.0)
            .map(Term)
            .ok_or_else(|| {
                StorageError::Other(format!(
                    "group {}: entry {index} is missing from the engine (log ({snapshot_index}, {last}])",
                    self.group
                ))
            })
    }

    fn first_index(&self) -> Result<LogIndex, StorageError> {
        Ok(self.snapshot_index().next())
    }

    fn last_index(&self) -> Result<LogIndex, StorageError> {
        Ok(self.last())
    }

    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        let metadata = self.snapshot.metadata.clone();
        if metadata.index == LogIndex::ZERO {
            return Ok(self.snapshot.clone());
        }
        let failed = |what: String| {
            StorageError::Other(format!(
                "reading the snapshot of group {} at {}: {what}",
                self.group, metadata.index
            ))
        };
        let file = read_snapshot_at(
            self.fs.as_ref(),
            &self.dir,
            self.group,
            metadata.index.0,
            metadata.term.0,
        )
        .map_err(|e| failed(e.to_string()))?;
        let (conf_state, data) =
            decode_snapshot_payload(&file.data).map_err(|e| failed(e.to_string()))?;
        let found = SnapshotMetadata {
            index: LogIndex(file.index),
            term: Term(file.term),
            conf_state,
        };
        if found != metadata {
            return Err(failed(format!("the file holds {found:?}")));
        }
        Ok(Snapshot { metadata, data })
    }
    fn snapshot_info(&self) -> Result<SnapshotInfo, StorageError> {
        let metadata = self.snapshot.metadata.clone();
        if metadata.index < self.snapshot_floor {
            // Older than what a follower may be sent: the core retries later.
            return Err(StorageError::SnapshotTemporarilyUnavailable);
        }
        if metadata.index == LogIndex::ZERO {
            return Ok(SnapshotInfo {
                metadata,
                total_bytes: self.snapshot.data.len() as u64,
                checksum: crc32c::crc32c(&self.snapshot.data),
            });
        }
        let info = self.snapshot_file(&metadata)?;
        let prefix = snapshot_prefix(&metadata.conf_state);
        let data_len = info
            .payload_len
            .checked_sub(prefix.len() as u64)
            .ok_or_else(|| {
                StorageError::Other(format!(
                "snapshot of group {} at {}: payload of {} bytes is shorter than its conf state",
                self.group, metadata.index, info.payload_len
            ))
            })?;
        Ok(SnapshotInfo {
            metadata,
            total_bytes: data_len,
            checksum: data_crc(info.payload_crc, &prefix, data_len),
        })
    }

    fn snapshot_chunk(
        &self,
        index: LogIndex,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, StorageError> {
        let metadata = &self.snapshot.metadata;
        if index != metadata.index || index == LogIndex::ZERO {
            return Err(StorageError::SnapshotTemporarilyUnavailable);
        }
        let info = self.snapshot_file(metadata)?;
        let prefix = snapshot_prefix(&metadata.conf_state);
        let data_len = info.payload_len.saturating_sub(prefix.len() as u64);
        let start = offset.min(data_len);
        let len = len.min(data_len - start);
        let mut buf = vec![0u8; len as usize];
        self.fs
            .read_at(
                &info.path,
                info.payload_offset + prefix.len() as u64 + start,
                &mut buf,
            )
            .map_err(|e| {
                StorageError::Other(format!(
                    "reading the snapshot of group {} at {index}: {e}",
                    self.group
                ))
            })?;
        // Verify the payload's checksum over chunks read in order.
        let (at, covered, crc) = self.chunk_crc.get();
        let (covered, crc) = if start == 0 {
            (0, crc32c::crc32c(&prefix))
        } else if at == index {
            (covered, crc)
        } else {
            (u64::MAX, 0) // not from the start: not verified
        };
        if covered == start {
            let crc = crc32c::crc32c_append(crc, &buf);
            let covered = start + len;
            self.chunk_crc.set((index, covered, crc));
            if covered == data_len && crc != info.payload_crc {
                return Err(StorageError::Other(format!(
                    "snapshot of group {} at {index}: checksum mismatch in {} (stored {:#010x}, computed {crc:#010x}): corrupt",
                    self.group,
                    info.path.display(),
                    info.payload_crc
                )));
            }
        }
        Ok(Bytes::from(buf))
    }
}

impl GroupStorage {
    /// The header of the file of the snapshot `metadata` names.
    fn snapshot_file(
        &self,
        metadata: &SnapshotMetadata,
    ) -> Result<crate::snapshot::SnapshotFileInfo, StorageError> {
        crate::snapshot::snapshot_file_info(
            self.fs.as_ref(),
            &self.dir,
            self.group,
            metadata.index.0,
            metadata.term.0,
        )
        .map_err(|e| {
            StorageError::Other(format!(
                "reading the snapshot of group {} at {}: {e}",
                self.group, metadata.index
            ))
        })
    }
}

fn encode_entry(entry: &Entry) -> LogEntry {
    let mut data = BytesMut::with_capacity(1 + entry.data.len());
    data.extend_from_slice(&[match entry.kind {
        EntryKind::Normal => KIND_NORMAL,
        EntryKind::ConfChange => KIND_CONF_CHANGE,
    }]);
    data.extend_from_slice(&entry.data);
    LogEntry {
        index: entry.index.0,
        term: entry.term.0,
        data: data.freeze(),
    }
}

fn decode_entry(stored: LogEntry) -> std::result::Result<Entry, String> {
    let kind = match stored.data.first() {
        Some(&KIND_NORMAL) => EntryKind::Normal,
        Some(&KIND_CONF_CHANGE) => EntryKind::ConfChange,
        Some(other) => {
            return Err(format!(
                "entry {} has unknown kind byte {other}",
                stored.index
            ))
        }
        None => return Err(format!("entry {} has no kind byte", stored.index)),
    };
    Ok(Entry {
        term: Term(stored.term),
        index: LogIndex(stored.index),
        kind,
        data: stored.data.slice(1..),
    })
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A cursor over encoded bytes; every read checks what remains.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .bytes
                .get(self.pos)
                .ok_or_else(|| format!("truncated varint at byte {}", self.pos))?;
            self.pos += 1;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(format!("varint overflows u64 at byte {}", self.pos - 1));
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(format!("varint longer than 10 bytes at byte {}", self.pos))
    }

    fn byte(&mut self) -> std::result::Result<u8, String> {
        let byte = *self
            .bytes
            .get(self.pos)
            .ok_or_else(|| format!("truncated at byte {}", self.pos))?;
        self.pos += 1;
        Ok(byte)
    }

    fn ids(&mut self) -> std::result::Result<Vec<NodeId>, String> {
        let count = self.varint()?;
        // Each id takes at least one byte: refuse counts the input cannot hold.
        if count > (self.bytes.len() - self.pos) as u64 {
            return Err(format!("{count} ids claimed at byte {}", self.pos));
        }
        (0..count).map(|_| self.varint().map(NodeId)).collect()
    }

    fn finish(self) -> std::result::Result<(), String> {
        if self.pos == self.bytes.len() {
            Ok(())
        } else {
            Err(format!("{} trailing bytes", self.bytes.len() - self.pos))
        }
    }
}

fn encode_hard_state(hs: &HardState) -> Vec<u8> {
    let mut out = Vec::with_capacity(30);
    put_varint(&mut out, hs.term.0);
    put_varint(&mut out, hs.vote.0);
    put_varint(&mut out, hs.commit.0);
    out
}

fn decode_hard_state(bytes: &[u8]) -> std::result::Result<HardState, String> {
    let mut reader = Reader { bytes, pos: 0 };
    let hs = HardState {
        term: Term(reader.varint()?),
        vote: NodeId(reader.varint()?),
        commit: LogIndex(reader.varint()?),
    };
    reader.finish()?;
    Ok(hs)
}

fn encode_conf_state(cs: &ConfState, out: &mut Vec<u8>) {
    for ids in [
        &cs.voters,
        &cs.learners,
        &cs.voters_outgoing,
        &cs.learners_next,
    ] {
        put_varint(out, ids.len() as u64);
        for id in ids {
            put_varint(out, id.0);
        }
    }
    out.push(u8::from(cs.auto_leave));
}

fn read_conf_state(reader: &mut Reader<'_>) -> std::result::Result<ConfState, String> {
    Ok(ConfState {
        voters: reader.ids()?,
        learners: reader.ids()?,
        voters_outgoing: reader.ids()?,
        learners_next: reader.ids()?,
        auto_leave: match reader.byte()? {
            0 => false,
            1 => true,
            other => return Err(format!("auto_leave byte {other}")),
        },
    })
}

fn encode_meta(meta: &SnapshotMetadata) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, meta.index.0);
    put_varint(&mut out, meta.term.0);
    encode_conf_state(&meta.conf_state, &mut out);
    out
}

fn decode_meta(bytes: &[u8]) -> std::result::Result<SnapshotMetadata, String> {
    let mut reader = Reader { bytes, pos: 0 };
    let meta = SnapshotMetadata {
        index: LogIndex(reader.varint()?),
        term: Term(reader.varint()?),
        conf_state: read_conf_state(&mut reader)?,
    };
    reader.finish()?;
    Ok(meta)
}

/// Splits a snapshot file's payload into its conf state and the application's data.
fn decode_snapshot_payload(payload: &Bytes) -> std::result::Result<(ConfState, Bytes), String> {
    let mut reader = Reader {
        bytes: payload,
        pos: 0,
    };
    let conf_len = reader.varint()?;
    let start = reader.pos;
    let end = usize::try_from(conf_len)
        .ok()
        .and_then(|len| start.checked_add(len))
        .filter(|&end| end <= payload.len())
        .ok_or_else(|| format!("conf state of {conf_len} bytes does not fit the file"))?;
    let mut conf_reader = Reader {
        bytes: &payload[start..end],
        pos: 0,
    };
    let conf_state = read_conf_state(&mut conf_reader)?;
    conf_reader.finish()?;
    Ok((conf_state, payload.slice(end..)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_round_trip_and_reject_damage() {
        let hs = HardState {
            term: Term(u64::MAX),
            vote: NodeId(0),
            commit: LogIndex(300),
        };
        assert_eq!(decode_hard_state(&encode_hard_state(&hs)), Ok(hs));
        let meta = SnapshotMetadata {
            index: LogIndex(1 << 50),
            term: Term(127),
            conf_state: ConfState {
                voters: vec![NodeId(1), NodeId(128)],
                learners: vec![],
                voters_outgoing: vec![NodeId(u64::MAX)],
                learners_next: vec![NodeId(3)],
                auto_leave: true,
            },
        };
        let encoded = encode_meta(&meta);
        assert_eq!(decode_meta(&encoded), Ok(meta));
        for cut in 0..encoded.len() {
            assert!(decode_meta(&encoded[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = encoded.clone();
        trailing.push(0);
        assert!(decode_meta(&trailing).is_err());
        assert!(decode_hard_state(&[0xff; 11]).is_err());
        assert!(decode_entry(LogEntry {
            index: 1,
            term: 1,
            data: Bytes::from_static(&[9, 1])
        })
        .is_err());
    }
}
