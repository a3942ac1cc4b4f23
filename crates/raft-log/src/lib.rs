//! `raft-log`: one durable, checksummed, append-only log per store, shared by all of the
//! store's Raft groups (the tikv/raft-engine idea). Entries are opaque bytes to the engine;
//! only [`raft_storage`] knows the Raft core's types.
//!
//! # Map
//! | module | what |
//! |---|---|
//! | [`engine`] | [`LogEngine`]: `open` (recovery), `write` / `write_async` (group commit), reads, `purge` |
//! | [`batch`] | [`LogBatch`]: append / put_state / delete_state / compact_to / clean_group, written atomically |
//! | [`format`](mod@format) | segment and record layout, bounds-checked decoding |
//! | `memtable` | per-group in-memory index; entry payloads are **kept in memory** (bounded by live data) |
//! | [`fs`] | [`FileSystem`] trait under every file access; [`StdFileSystem`] |
//! | [`faulty`] | [`FaultyFileSystem`]: in-memory disk that loses unsynced data, tears writes, flips bits |
//! | [`snapshot`] | [`write_snapshot`] / [`read_snapshot`]: atomic, checksummed snapshot files |
//! | [`error`] | [`Error`] |
//! | [`raft_storage`] | [`GroupStorage`](raft_storage::GroupStorage): `raft::Storage` for one group on the engine + snapshot files |
//!
//! # Contract
//! 1. `LogEngine::open(dir, config, fs)` locks `dir` (a second open gets
//!    [`Error::DirectoryLocked`]) and rebuilds the index from the segment files. A torn last
//!    record of the last segment is truncated and reported in
//!    [`LogEngine::recovery_report`]; other damage refuses to open with
//!    [`Error::Corruption`] naming file and offset (see [`RecoveryMode`]).
//! 2. `write(&mut batch, true)` returns `Ok` only when the batch and everything written before
//!    it are durable. Concurrent writers share one `fdatasync` (group commit).
//!    `write_async(batch, true)` is the same for async code: it queues the batch at once (in
//!    the same queue, so sync and async writes keep their order) and returns a
//!    [`WriteFuture`] that resolves once the batch is durable; the engine's writer thread
//!    leads those group commits, so no thread blocks per writer.
//! 3. After a crash, the log holds a prefix of the written batches, each batch whole or absent,
//!    containing at least every batch whose `write(.., true)` returned `Ok`.
//! 4. Reads (`first_index`, `last_index`, `term`, `entries`, `get_state`, `groups`) see every
//!    batch whose `write` returned `Ok`; they never touch the disk.
//! 5. Call `purge()` periodically: it deletes segments that hold nothing live and copies the
//!    live data of quiet groups forward so they do not pin old segments.
//!
//! ```
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use raft_log::{Config, FaultyFileSystem, GroupId, LogBatch, LogEngine, LogEntry};
//!
//! let fs = Arc::new(FaultyFileSystem::new(7));
//! let engine = LogEngine::open("/data/raft-log", Config::default(), fs.clone())?;
//! let mut batch = LogBatch::new();
//! batch.append(GroupId(1), vec![LogEntry { index: 1, term: 1, data: Bytes::from_static(b"x") }])?;
//! batch.put_state(GroupId(1), b"hard_state", b"term=1,vote=2,commit=0");
//! engine.write(&mut batch, true)?;
//! assert_eq!(engine.last_index(GroupId(1)), Some(1));
//! # Ok::<(), raft_log::Error>(())
//! ```

#![warn(missing_docs)]

pub mod batch;
pub mod engine;
pub mod error;
pub mod faulty;
pub mod format;
pub mod fs;
mod memtable;
pub mod raft_storage;
mod reclaim;
pub mod snapshot;

use std::fmt;

use bytes::Bytes;

pub use batch::LogBatch;
pub use engine::{
    segment_path, Config, LogEngine, PurgeReport, RecoveryMode, RecoveryReport, SkippedCorruption,
    Stats, TornTail, WriteFuture, DEFAULT_REWRITE_MAX_GROUP_BYTES, DEFAULT_SEGMENT_SIZE_BYTES,
    GROUP_COMMIT_GATHER_WAIT, LOCK_FILE_NAME, MAX_GROUP_COMMIT_BYTES, MAX_LEADER_ROUNDS,
    MAX_QUEUED_WRITES, REWRITE_CHUNK_BYTES,
};
pub use error::{Error, Result};
pub use faulty::{FaultOp, FaultyFileSystem};
pub use format::MAX_RECORD_PAYLOAD_BYTES;
pub use fs::{FileSystem, LockGuard, StdFileSystem, WritableFile};
pub use snapshot::{
    discard_snapshot, prepare_snapshot_parts, publish_snapshot, read_snapshot, read_snapshot_at,
    remove_group_snapshots, remove_older_snapshots, remove_receiving, snapshot_file_info,
    write_snapshot, write_snapshot_parts, PreparedSnapshot, SnapshotFile, SnapshotFileInfo,
    StreamedSnapshot,
};

/// Identifies one Raft group (region) within the shared log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GroupId(pub u64);

impl fmt::Display for GroupId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", self.0)
    }
}

/// One log entry; `data` is opaque to this crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Position in the group's log.
    pub index: u64,
    /// Term in which it was proposed.
    pub term: u64,
    /// The payload.
    pub data: Bytes,
}

// `LogEngine` is shared between threads (group commit); keep it so.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<LogEngine>();
    assert_send_sync::<FaultyFileSystem>();
    const fn assert_send_unpin<T: Send + Unpin>() {}
    assert_send_unpin::<WriteFuture>();
};
