//! `LogEngine`: recovery, group commit, reads, purge.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::batch::{LogBatch, Op};
use crate::error::{Error, Result};
use crate::format::{self, AfterDamage, BadRecord, Parsed};
use crate::fs::{FileSystem, LockGuard, WritableFile};
use crate::memtable::{Bounds, MemTable};
use crate::{GroupId, LogEntry};

/// Name of the lock file in the data directory.
pub const LOCK_FILE_NAME: &str = "LOCK";
/// Suffix of segment file names (`{seq:016x}.rlog`).
pub const SEGMENT_SUFFIX: &str = ".rlog";
/// One group commit writes at most this many bytes (but always at least one batch), so a
/// burst of writers cannot make one leader's write, and its followers' latency, unbounded.
pub const MAX_GROUP_COMMIT_BYTES: usize = 4 << 20;
/// A leader writes at most this many consecutive groups before handing leadership on: staying
/// leader saves a thread switch per group commit, handing on bounds its own caller's wait.
pub const MAX_LEADER_ROUNDS: u32 = 4;
/// At most this many requests (batches) wait in the write queue; further submitters wait for
/// room (`write` blocks, a `write_async` future stays pending holding its own batch), so a
/// burst of asynchronous submitters cannot grow the queue without bound. Far more than the
/// batches one group commit of small appends takes, so it only bites on overload.
pub const MAX_QUEUED_WRITES: usize = 1024;
/// After a group commit of `n > 1` requests, the writer thread waits at most this long for
/// `n` requests to be queued before starting the next one (see `Core::gather`): much less
/// than one fdatasync, enough for a runtime's tasks to resubmit.
pub const GROUP_COMMIT_GATHER_WAIT: Duration = Duration::from_micros(50);
/// `purge` copies a group's live entries forward in records of at most about this size.
pub const REWRITE_CHUNK_BYTES: usize = 1 << 20;
/// Default segment size: small enough that the log's budget
/// ([`Config::purge_rewrite_threshold_segments`] segments) suits a store with little data,
/// large enough that rollovers (an fdatasync and a rename each) stay rare.
pub const DEFAULT_SEGMENT_SIZE_BYTES: u64 = 16 << 20;
/// Default most live bytes of one group that `purge` copies forward; a group with more that
/// pins an old segment is reported in [`PurgeReport::groups_to_compact`] instead (copying a
/// large log again and again costs more than one snapshot of its region, and the copy is
/// made while writers wait).
pub const DEFAULT_REWRITE_MAX_GROUP_BYTES: u64 = 1 << 20;
/// Default of [`Config::no_space_retry`].
pub const DEFAULT_NO_SPACE_RETRY: Duration = Duration::from_millis(100);

/// How recovery treats damaged files (compare tikv/raft-engine's `RecoveryMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// In the last segment, only a *short* tail (a record cut off by the end of the file, or
    /// a zero-filled tail) with no valid record after it is truncated as a torn write;
    /// anything else, including a complete last record with a bad checksum, refuses to open.
    /// With `Config::preallocate_segments` a last record that is cut short once the file's
    /// trailing zeros are set aside counts as short: a write torn inside zeroed space looks
    /// exactly like that. So does a damaged last record whose own final bytes are zeros,
    /// which this mode then truncates (reported in `torn_tail`) instead of refusing; the
    /// sector rule of etcd's WAL (torn only if a whole 512-byte sector reads as zeros) would
    /// tell them apart and is not implemented yet.
    AbsoluteConsistency,
    /// Default. In the last segment, any bad record (short, bad checksum, bad header) that
    /// no valid record follows is taken for a torn write (disks may persist the sectors of
    /// one write out of order) and truncated. A bad record followed by a valid one, and any
    /// damage in an earlier segment, refuses to open.
    #[default]
    TolerateTailCorruption,
    /// Salvage: at a damaged record, report it, skip the rest of that segment and go on with
    /// the next one. A group whose entries no longer connect keeps only the newer ones.
    /// Acknowledged writes may be lost; use it only to rescue a store that has no replicas.
    TolerateAnyCorruption,
}

/// Engine configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// A new segment file is started when the active one would grow past this size.
    pub segment_size_bytes: u64,
    /// How recovery treats damaged files.
    pub recovery_mode: RecoveryMode,
    /// `purge` reclaims the groups pinning old segments when more segment files than this
    /// exist: small ones (see `purge_rewrite_max_group_bytes`) are copied forward, larger
    /// ones are named for their owner to compact. With the segment size, this is the log's
    /// disk budget.
    pub purge_rewrite_threshold_segments: usize,
    /// The most live bytes (entries and states) of one group that `purge` copies forward;
    /// above it the group is reported in [`PurgeReport::groups_to_compact`].
    pub purge_rewrite_max_group_bytes: u64,
    /// Fill each segment with zeros up to `segment_size_bytes` before records are written into
    /// it (etcd's WAL preallocates its files too). Records then overwrite allocated blocks, so
    /// an `fdatasync` writes the data only instead of also committing the file system's
    /// journal: 0.085 vs 0.171 ms alone, 0.142 vs 0.267 ms with three writers on one disk,
    /// measured on the project's machine with `bench/fsync-probe` (docs/BENCHMARKS.md). Costs the zeroing (~50 ms per
    /// 64 MiB segment) at creation and when reopening (the tail of the last segment).
    pub preallocate_segments: bool,
    /// Zero the next segment on a helper thread while the active one fills (from half full),
    /// so that starting a segment costs a rename, not the zeroing, on the write path. Off,
    /// a segment is zeroed by the writer when it starts (deterministic: the simulator).
    pub prepare_segments_in_background: bool,
    /// What a group commit does when the disk is full (`ENOSPC`/`EDQUOT` from a write, a
    /// segment's creation or its preallocation; never from an `fdatasync`, which stays fatal):
    /// it cuts off what it wrote of the failed record, so nothing partial is left for later
    /// records to follow, and then
    /// - `Some(interval)`: retries the same group every `interval` until it is written (the
    ///   writer lock is released in between, so `purge` can free space), holding back every
    ///   request queued behind it; [`LogEngine::is_out_of_space`] says so meanwhile. Writes
    ///   keep their order and none is reported written before it is;
    /// - `None`: fails the group's requests with [`Error::Full`] without poisoning the
    ///   engine; later writes are tried again (the caller decides what to resubmit).
    ///
    /// The spare-segment thread retries a spare that failed for lack of space at the same
    /// interval (or [`DEFAULT_NO_SPACE_RETRY`]).
    pub no_space_retry: Option<Duration>,
}

impl Config {
    /// The default configuration with segments of `bytes`: the most a purge copies forward
    /// per group scales with it (a sixteenth of a segment), so small segments are not
    /// filled with copies.
    pub fn with_segment_size(bytes: u64) -> Config {
        Config {
            segment_size_bytes: bytes,
            purge_rewrite_max_group_bytes: (bytes / 16).min(DEFAULT_REWRITE_MAX_GROUP_BYTES),
            ..Config::default()
        }
    }

    /// Whether the helper thread zeroes the next segment ahead.
    fn spares_in_background(&self) -> bool {
        self.preallocate_segments && self.prepare_segments_in_background
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            segment_size_bytes: DEFAULT_SEGMENT_SIZE_BYTES,
            recovery_mode: RecoveryMode::default(),
            purge_rewrite_threshold_segments: 8,
            purge_rewrite_max_group_bytes: DEFAULT_REWRITE_MAX_GROUP_BYTES,
            preallocate_segments: true,
            prepare_segments_in_background: true,
            no_space_retry: Some(DEFAULT_NO_SPACE_RETRY),
        }
    }
}

/// A torn tail that recovery cut off the last segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The last segment.
    pub file: PathBuf,
    /// Offset the file was truncated to (start of the bad record).
    pub offset: u64,
    /// How many bytes were dropped.
    pub bytes_discarded: u64,
    /// What was wrong with them.
    pub reason: String,
}

/// Damage skipped under `RecoveryMode::TolerateAnyCorruption`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedCorruption {
    /// The damaged file.
    pub file: PathBuf,
    /// Where the damage starts.
    pub offset: u64,
    /// What was wrong.
    pub reason: String,
}

/// What recovery found when the engine was opened.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// Segment files read.
    pub segments_read: usize,
    /// Records (batches) replayed.
    pub records_read: u64,
    /// Bytes of segment files read.
    pub bytes_read: u64,
    /// Set when the last segment ended in a torn write that was truncated.
    pub torn_tail: Option<TornTail>,
    /// Damage skipped (only with `RecoveryMode::TolerateAnyCorruption`).
    pub skipped_corruption: Vec<SkippedCorruption>,
    /// How long opening took.
    pub duration: Duration,
}

/// What one `purge` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Groups whose live data was copied forward.
    pub groups_rewritten: usize,
    /// Bytes written by those copies.
    pub bytes_rewritten: u64,
    /// Segment files deleted.
    pub segments_deleted: usize,
    /// Bytes those files held (their length when deleted).
    pub bytes_deleted: u64,
    /// Groups that pin a segment purge wanted to free but hold more live data than
    /// `Config::purge_rewrite_max_group_bytes`: their owner should compact them (snapshot
    /// and drop the log), after which a later purge frees the segments. Sorted.
    pub groups_to_compact: Vec<GroupId>,
    /// The disk was full: copying stopped early (what was copied is kept; nothing partial).
    pub stopped_for_space: bool,
}

/// Counters describing the engine now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Segment files on disk.
    pub segment_count: usize,
    /// Sequence number of the oldest segment.
    pub first_segment_seq: u64,
    /// Sequence number of the segment being appended to.
    pub active_segment_seq: u64,
    /// Bytes in the active segment.
    pub active_segment_bytes: u64,
    /// Groups with live entries or states.
    pub group_count: usize,
    /// Live entries over all groups.
    pub live_entry_count: u64,
    /// Payload bytes of those entries (what the in-memory cache holds).
    pub live_entry_bytes: u64,
    /// Group commits (one write syscall each) since open.
    pub group_commits: u64,
    /// Batches written by those group commits.
    pub batches_written: u64,
    /// fdatasync calls on segments since open (group commits, rollovers, purges, `sync`).
    pub syncs: u64,
    /// Segments zeroed ahead by the helper thread since open (ready for a rollover).
    pub spare_segments_prepared: u64,
}

/// Where one waiting writer is told its result, or that it is now the leader.
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    changed: Condvar,
}

#[derive(Default)]
struct SlotState {
    result: Option<Result<u64>>,
    lead: bool,
}

impl Slot {
    fn update(&self, change: impl FnOnce(&mut SlotState)) {
        change(&mut lock(&self.state));
        self.changed.notify_one();
    }
}

/// Where the result of one [`LogEngine::write_async`] is delivered: a one-shot cell plus the
/// waker of the task awaiting it. While the submission queue is full it also holds the
/// encoded batch (the submitter's memory, not the queue's) until the batch is admitted.
#[derive(Default)]
struct TaskSlot {
    state: Mutex<TaskState>,
}

#[derive(Default)]
struct TaskState {
    result: Option<Result<u64>>,
    waker: Option<Waker>,
    parked: Option<Parked>,
}

/// An encoded batch waiting for room in the submission queue.
struct Parked {
    ops: Vec<Op>,
    record: Vec<u8>,
    sync: bool,
}

impl TaskSlot {
    fn complete(&self, result: Result<u64>) {
        let waker = {
            let mut state = lock(&self.state);
            state.result = Some(result);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// How the submitter of a request is told its result.
enum Completion {
    /// A thread blocked in [`LogEngine::write`] (it may also be made the leader).
    Thread(Arc<Slot>),
    /// A [`WriteFuture`]; its batches are led by the engine's writer thread.
    Task(Arc<TaskSlot>),
}

impl Completion {
    fn complete(self, result: Result<u64>) {
        match self {
            Completion::Thread(slot) => slot.update(|state| state.result = Some(result)),
            Completion::Task(slot) => slot.complete(result),
        }
    }
}

struct Request {
    completion: Completion,
    ops: Vec<Op>,
    record: Vec<u8>,
    sync: bool,
}

/// A submitter that found the queue full, in call order.
enum Waiting {
    /// A blocked `write` caller's request (bounded by the number of threads).
    Thread(Request),
    /// A `WriteFuture`: its batch stays in its [`TaskSlot`] until admitted (or dropped).
    Task(Arc<TaskSlot>),
}

/// The group-commit queue (the leader/follower scheme of raft-engine's write barrier), the
/// single ordering point of every write, sync or async: requests are written in the order
/// they entered `pending`, at most one leader at a time writes a group taken from the front.
/// A leader is either a `write` caller (which, after at most [`MAX_LEADER_ROUNDS`] groups,
/// hands leadership to the oldest waiting request's submitter, then wakes the writers of its
/// group one by one: with 64 writers a broadcast costs more CPU than the write) or the
/// engine's writer thread, which leads whenever the oldest request is asynchronous and stays
/// leader until the queue is empty.
///
/// `pending` holds at most [`MAX_QUEUED_WRITES`] requests; later submitters wait in
/// `waiting`, in call order, and a leader moves them into `pending` as it takes groups out.
/// Invariants (under the lock): `pending` non-empty implies `leader_active`; after a leader
/// takes a group, `pending` empty implies `waiting` empty.
#[derive(Default)]
struct Queue {
    pending: VecDeque<Request>,
    waiting: VecDeque<Waiting>,
    leader_active: bool,
    /// Leadership was handed to the writer thread (it will lead once it wakes up).
    worker_leads: bool,
    /// Set by `LogEngine`'s drop: the writer thread drains the queue and exits.
    shutdown: bool,
    /// Non-zero while the writer thread gathers: submitters wake it once `pending` holds
    /// this many requests.
    gather_target: usize,
}

impl Queue {
    fn has_room(&self) -> bool {
        self.waiting.is_empty() && self.pending.len() < MAX_QUEUED_WRITES
    }

    /// Whether the writer thread, gathering, should be woken now.
    fn gathered(&self) -> bool {
        self.gather_target != 0 && self.pending.len() >= self.gather_target
    }

    /// Takes the oldest requests, up to the group-commit bound, and admits waiting
    /// submitters into the room that frees.
    fn take_group(&mut self) -> Vec<Request> {
        let mut group = Vec::new();
        let mut group_bytes = 0usize;
        while let Some(request) = self.pending.front() {
            if !group.is_empty() && group_bytes + request.record.len() > MAX_GROUP_COMMIT_BYTES {
                break;
            }
            group_bytes += request.record.len();
            if let Some(request) = self.pending.pop_front() {
                group.push(request);
            }
        }
        while self.pending.len() < MAX_QUEUED_WRITES {
            let Some(waiting) = self.waiting.pop_front() else {
                break;
            };
            match waiting {
                Waiting::Thread(request) => self.pending.push_back(request),
                Waiting::Task(slot) => {
                    // `None`: the future was dropped before admission, the write is cancelled.
                    let parked = lock(&slot.state).parked.take();
                    if let Some(Parked { ops, record, sync }) = parked {
                        self.pending.push_back(Request {
                            completion: Completion::Task(slot),
                            ops,
                            record,
                            sync,
                        });
                    }
                }
            }
        }
        group
    }
}

struct Writer {
    first_seq: u64,
    active_seq: u64,
    active_file: Box<dyn WritableFile>,
    active_len: u64,
    /// Reused for every group commit: one contiguous buffer, one write syscall.
    buf: Vec<u8>,
    /// Set after a failed write or sync: what is on disk is unknown, refuse to go on.
    poisoned: Option<String>,
    group_commits: u64,
    batches_written: u64,
    syncs: u64,
    /// The segment a spare was last asked for (so the request is made once per segment).
    spare_requested: u64,
}

/// A segment made ahead of time under a temporary name: header written, zeroed, durable.
struct Spare {
    seq: u64,
    path: PathBuf,
    file: Box<dyn WritableFile>,
}

/// The hand-over between the writer and the thread that prepares spare segments.
#[derive(Default)]
struct Spares {
    /// The sequence number the next spare should have.
    wanted: Option<u64>,
    ready: Option<Spare>,
    shutdown: bool,
    /// Spares made since open.
    prepared: u64,
}

/// Suffix of a spare segment's temporary name; such files are removed at open.
const SPARE_SUFFIX: &str = ".tmp";

fn spare_path(dir: &Path, seq: u64) -> PathBuf {
    let mut name = segment_path(dir, seq).into_os_string();
    name.push(SPARE_SUFFIX);
    PathBuf::from(name)
}

/// What the engine shares with its writer thread.
struct Core {
    dir: PathBuf,
    fs: Arc<dyn FileSystem>,
    config: Config,
    queue: Mutex<Queue>,
    /// The writer thread sleeps here until it is handed leadership or shut down.
    worker_wake: Condvar,
    writer: Mutex<Writer>,
    memtable: RwLock<MemTable>,
    spares: Mutex<Spares>,
    spares_wake: Condvar,
    /// Segment files on disk (`active_seq - first_seq + 1`), readable without the writer's
    /// lock, which a group commit holds through its fdatasync.
    segment_count: std::sync::atomic::AtomicUsize,
    /// A group commit failed for lack of space and waits to be retried.
    write_no_space: AtomicBool,
    /// The spare-segment thread could not make the next segment for lack of space: the
    /// active segment's remaining room is all the log has.
    spare_no_space: AtomicBool,
}

/// Why an append failed, and whether the engine may go on.
enum AppendFailure {
    /// The disk is full; nothing partial was left behind, the same bytes may be retried.
    NoSpace(Error),
    /// Anything else: what is on disk is unknown, the engine poisons itself.
    Fatal(Error),
}

impl AppendFailure {
    /// Classifies an error of a step after which a full disk is recoverable.
    fn of(error: Error) -> AppendFailure {
        if error.is_no_space() {
            AppendFailure::NoSpace(error)
        } else {
            AppendFailure::Fatal(error)
        }
    }
}

/// The shared log of one store. `Send + Sync`: share it with an `Arc`.
///
/// Every accessor reads the in-memory index only. Writes go through a group-commit queue:
/// concurrent `write` and `write_async` calls are written with one `write` and (if any asked
/// for it) one `fdatasync`. The engine owns one writer thread (started at `open`, joined on
/// drop) that leads group commits for asynchronous submissions.
pub struct LogEngine {
    core: Arc<Core>,
    worker: Option<JoinHandle<()>>,
    preparer: Option<JoinHandle<()>>,
    report: RecoveryReport,
    _lock: Box<dyn LockGuard>,
}

impl std::fmt::Debug for LogEngine {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("LogEngine")
            .field("dir", &self.core.dir)
            .field("config", &self.core.config)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of our locks is a broken invariant that already crashed a
    // thread; the data behind the lock is still consistent at the points we unlock, so
    // continuing (and letting that panic surface) is better than cascading panics.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Path of segment `seq` in `dir`.
pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}{SEGMENT_SUFFIX}"))
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(SEGMENT_SUFFIX)?;
    if stem.len() != 16 {
        return None;
    }
    u64::from_str_radix(stem, 16).ok()
}

impl LogEngine {
    /// Opens (or creates) the log in `dir`, taking its lock and rebuilding the index from the
    /// segment files (see [`RecoveryMode`] for how damage is handled).
    pub fn open(
        dir: impl AsRef<Path>,
        config: Config,
        fs: Arc<dyn FileSystem>,
    ) -> Result<LogEngine> {
        let started = Instant::now();
        let dir = dir.as_ref().to_path_buf();
        if config.segment_size_bytes
            < (format::SEGMENT_HEADER_BYTES + format::RECORD_HEADER_BYTES) as u64
        {
            return Err(Error::InvalidArgument(format!(
                "segment_size_bytes {} is too small to hold a record",
                config.segment_size_bytes
            )));
        }
        fs.create_dir_all(&dir)
            .map_err(|error| Error::io("create directory", &dir, error))?;
        let lock_path = dir.join(LOCK_FILE_NAME);
        let lock_guard = fs.lock_exclusive(&lock_path).map_err(|error| {
            if error.kind() == std::io::ErrorKind::WouldBlock {
                Error::DirectoryLocked {
                    path: lock_path.clone(),
                }
            } else {
                Error::io("lock", &lock_path, error)
            }
        })?;

        let names = fs
            .list_dir(&dir)
            .map_err(|error| Error::io("list directory", &dir, error))?;
        for name in names.iter().filter(|name| {
            name.strip_suffix(SPARE_SUFFIX)
                .is_some_and(|stem| parse_segment_name(stem).is_some())
        }) {
            // A spare segment prepared before a crash or shutdown: never part of the log.
            let path = dir.join(name);
            fs.remove(&path)
                .map_err(|error| Error::io("remove", &path, error))?;
        }
        let mut seqs: Vec<u64> = names
            .iter()
            .filter_map(|name| parse_segment_name(name))
            .collect();
        seqs.sort_unstable();
        for pair in seqs.windows(2) {
            if pair[1] != pair[0] + 1 {
                // Segments are only ever deleted oldest first, so a hole means lost files.
                return Err(Error::corruption(
                    &segment_path(&dir, pair[0] + 1),
                    0,
                    format!(
                        "segment file is missing between {} and {}",
                        segment_path(&dir, pair[0]).display(),
                        segment_path(&dir, pair[1]).display()
                    ),
                ));
            }
        }

        let mut report = RecoveryReport::default();
        let mut memtable = MemTable::default();
        let mut active_len = 0u64;
        let mut read_buf = Vec::new();
        for (position, seq) in seqs.iter().enumerate() {
            let is_last = position + 1 == seqs.len();
            let source = SegmentSource {
                fs: fs.as_ref(),
                dir: &dir,
                mode: config.recovery_mode,
                preallocated: config.preallocate_segments,
            };
            let valid_len = recover_segment(
                source,
                *seq,
                is_last,
                &mut memtable,
                &mut report,
                &mut read_buf,
            )?;
            if is_last {
                active_len = valid_len;
            }
        }

        let (first_seq, active_seq, active_file) = match (seqs.first(), seqs.last()) {
            (Some(first), Some(last)) => {
                let path = segment_path(&dir, *last);
                let mut file = fs
                    .open_append(&path)
                    .map_err(|error| Error::io("open", &path, error))?;
                let file_len = fs
                    .file_len(&path)
                    .map_err(|error| Error::io("stat", &path, error))?;
                if file_len != active_len {
                    // Cut the torn tail (or a bad header) durably before appending after it,
                    // or new records would follow garbage.
                    file.truncate(active_len)
                        .map_err(|error| Error::io("truncate", &path, error))?;
                    if active_len == 0 {
                        file.write_all(&format::segment_header(*last))
                            .map_err(|error| Error::io("write", &path, error))?;
                        active_len = format::SEGMENT_HEADER_BYTES as u64;
                    }
                    file.sync_data()
                        .map_err(|error| Error::io("fdatasync", &path, error))?;
                }
                if config.preallocate_segments {
                    file.preallocate(config.segment_size_bytes)
                        .map_err(|error| Error::io("preallocate", &path, error))?;
                }
                (*first, *last, file)
            }
            _ => {
                let prealloc = config
                    .preallocate_segments
                    .then_some(config.segment_size_bytes);
                let (file, len) = create_segment(fs.as_ref(), &dir, 1, prealloc)?;
                active_len = len;
                (1, 1, file)
            }
        };

        report.duration = started.elapsed();
        if let Some(torn) = &report.torn_tail {
            tracing::warn!(
                file = %torn.file.display(),
                offset = torn.offset,
                bytes_discarded = torn.bytes_discarded,
                reason = %torn.reason,
                "raft-log recovery truncated a torn tail (a write interrupted by a crash; it was never acknowledged as durable)"
            );
        }
        for skipped in &report.skipped_corruption {
            tracing::warn!(
                file = %skipped.file.display(),
                offset = skipped.offset,
                reason = %skipped.reason,
                "raft-log recovery skipped corrupt data (TolerateAnyCorruption)"
            );
        }
        tracing::info!(
            dir = %dir.display(),
            segments = report.segments_read,
            records = report.records_read,
            bytes = report.bytes_read,
            duration_ms = report.duration.as_millis() as u64,
            "raft-log opened"
        );

        let core = Arc::new(Core {
            dir,
            fs,
            config,
            queue: Mutex::new(Queue::default()),
            worker_wake: Condvar::new(),
            writer: Mutex::new(Writer {
                first_seq,
                active_seq,
                active_file,
                active_len,
                buf: Vec::with_capacity(MAX_GROUP_COMMIT_BYTES),
                poisoned: None,
                group_commits: 0,
                batches_written: 0,
                syncs: 0,
                spare_requested: 0,
            }),
            memtable: RwLock::new(memtable),
            spares: Mutex::new(Spares::default()),
            spares_wake: Condvar::new(),
            segment_count: std::sync::atomic::AtomicUsize::new(
                (active_seq - first_seq + 1) as usize,
            ),
            write_no_space: AtomicBool::new(false),
            spare_no_space: AtomicBool::new(false),
        });
        let worker_core = Arc::clone(&core);
        let worker = std::thread::Builder::new()
            .name("raft-log-writer".to_string())
            .spawn(move || worker_core.run_writer_thread())
            .map_err(|error| Error::io("start the writer thread for", &core.dir, error))?;
        let preparer = if core.config.spares_in_background() {
            let preparer_core = Arc::clone(&core);
            Some(
                std::thread::Builder::new()
                    .name("raft-log-prep".to_string())
                    .spawn(move || preparer_core.run_preparer_thread())
                    .map_err(|error| {
                        Error::io("start the segment preparer thread for", &core.dir, error)
                    })?,
            )
        } else {
            None
        };
        Ok(LogEngine {
            core,
            worker: Some(worker),
            preparer,
            report,
            _lock: lock_guard,
        })
    }

    /// What recovery found when this engine was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.core.dir
    }

    /// Writes `batch` atomically and returns the bytes written. With `sync`, returns only
    /// once the batch (and everything written before it) is durable; without, once it is
    /// written to the OS (lost by a machine crash, not by a process crash).
    ///
    /// Concurrent callers are group-committed: one of them writes the batches of all waiting
    /// callers (up to [`MAX_GROUP_COMMIT_BYTES`]) with one write and one fdatasync, the others
    /// wait for it. Blocks the calling thread; async code should use
    /// [`write_async`](LogEngine::write_async), whose batches share the same queue and order.
    /// On success `batch` is left empty. A batch that is too large or written to
    /// a poisoned engine is refused before it is taken and left as it was; once queued, a
    /// batch is consumed even if the write then fails.
    pub fn write(&self, batch: &mut LogBatch, sync: bool) -> Result<u64> {
        self.core.write(batch, sync)
    }
    /// The asynchronous [`write`](LogEngine::write): submits `batch` now and returns a future
    /// that resolves to the bytes written once the batch is written (and, with `sync`,
    /// durable together with everything written before it). It never blocks the calling
    /// thread, so it suits async runtimes: the engine's writer thread leads the group commit
    /// (one write and one fdatasync for every batch queued, sync or async, up to
    /// [`MAX_GROUP_COMMIT_BYTES`]) and wakes each future's task.
    ///
    /// Ordering: the batch takes its place in the engine's single write queue when
    /// `write_async` is called (not when the future is first polled), so batches submitted
    /// one after another, by either method, are applied in that order even if their futures
    /// are awaited later or in another order.
    ///
    /// Backpressure: when [`MAX_QUEUED_WRITES`] requests are queued, the batch waits (it
    /// stays in the future, in call order) and is admitted as the writer makes room; the
    /// future stays pending meanwhile. Dropping the future before admission cancels the write;
    /// after admission the write happens whether or not the future is polled.
    ///
    /// Errors as for `write`: an empty batch resolves to `Ok(0)`, a too-large one to
    /// [`Error::BatchTooLarge`] (nothing written), a failed write or fdatasync poisons the
    /// engine and fails every queued request. Dropping the engine writes out every queued
    /// request before its writer thread exits, so no future is left pending.
    pub fn write_async(&self, batch: LogBatch, sync: bool) -> WriteFuture {
        let mut batch = batch;
        if batch.is_empty() {
            return WriteFuture::ready(Ok(0));
        }
        match Core::prepare(&mut batch) {
            Ok((ops, record)) => WriteFuture {
                state: FutureState::Waiting(self.core.submit_async(ops, record, sync)),
            },
            Err(error) => WriteFuture::ready(Err(error)),
        }
    }

    /// Makes everything written so far durable.
    pub fn sync(&self) -> Result<()> {
        self.core.sync()
    }

    /// Index of the first live entry of `group`.
    pub fn first_index(&self, group: GroupId) -> Option<u64> {
        self.core.first_index(group)
    }

    /// Index of the last entry of `group`.
    pub fn last_index(&self, group: GroupId) -> Option<u64> {
        self.core.last_index(group)
    }

    /// Term of entry `index` of `group`, if it is live.
    pub fn term(&self, group: GroupId, index: u64) -> Option<u64> {
        self.core.term(group, index)
    }

    /// Entries `[low, high)` of `group`, stopping before the total payload would exceed
    /// `max_bytes` (but always at least one entry when `low < high`).
    pub fn entries(
        &self,
        group: GroupId,
        low: u64,
        high: u64,
        max_bytes: usize,
    ) -> Result<Vec<LogEntry>> {
        self.core.entries(group, low, high, max_bytes)
    }

    /// The value of state `key` of `group`.
    pub fn get_state(&self, group: GroupId, key: &[u8]) -> Option<Bytes> {
        self.core.get_state(group, key)
    }

    /// Every group with live entries or states, sorted.
    pub fn groups(&self) -> Vec<GroupId> {
        self.core.groups()
    }

    /// Counters describing the engine now.
    pub fn stats(&self) -> Stats {
        self.core.stats()
    }

    /// Segment files on disk; never waits for a write in progress (unlike [`Self::stats`]).
    pub fn segment_count(&self) -> usize {
        self.core
            .segment_count
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the log has outgrown its budget (`purge_rewrite_threshold_segments`), so a
    /// [`Self::purge`] would reclaim something; cheap enough to ask on every tick.
    pub fn wants_purge(&self) -> bool {
        self.segment_count() > self.core.config.purge_rewrite_threshold_segments
    }

    /// Whether the disk is full as far as the log knows: a group commit is waiting for space
    /// (see [`Config::no_space_retry`]) or the next segment could not be made for lack of
    /// space (the active segment's remaining room is all that is left). Lock-free; clears by
    /// itself once a retry succeeds. An owner should refuse new work that would need log
    /// space while it is set.
    pub fn is_out_of_space(&self) -> bool {
        self.core.write_no_space.load(Ordering::Relaxed)
            || self.core.spare_no_space.load(Ordering::Relaxed)
    }

    /// The configuration the engine was opened with.
    pub fn config(&self) -> &Config {
        &self.core.config
    }

    /// Reclaims disk space: when more than `purge_rewrite_threshold_segments` segments exist,
    /// copies the live data (entries and states) of the small groups that pin the older half
    /// forward into the active segment and syncs it (larger ones are returned in
    /// [`PurgeReport::groups_to_compact`] for the caller to compact); then deletes, oldest first, every
    /// segment before the oldest one still holding live data (after syncing the active
    /// segment, so purge makes everything written before it durable whenever it rewrites or
    /// deletes anything). Safe to call at any time
    /// (writers wait while it runs); call it periodically.
    pub fn purge(&self) -> Result<PurgeReport> {
        self.core.purge()
    }
}

impl Drop for LogEngine {
    /// Stops the writer thread after it has written out every queued request.
    fn drop(&mut self) {
        lock(&self.core.queue).shutdown = true;
        self.core.worker_wake.notify_all();
        if let Some(worker) = self.worker.take() {
            if worker.join().is_err() {
                tracing::error!("raft-log writer thread panicked");
            }
        }
        lock(&self.core.spares).shutdown = true;
        self.core.spares_wake.notify_all();
        if let Some(preparer) = self.preparer.take() {
            if preparer.join().is_err() {
                tracing::error!("raft-log segment preparer thread panicked");
            }
        }
    }
}

/// The result of [`LogEngine::write_async`]: resolves to the bytes written once the batch is
/// written (and durable, if `sync` was asked). `Send`, `Unpin`, independent of the engine's
/// lifetime.
#[must_use = "the write is queued either way; the future tells when it is durable"]
pub struct WriteFuture {
    state: FutureState,
}

enum FutureState {
    Ready(Option<Result<u64>>),
    Waiting(Arc<TaskSlot>),
}

impl WriteFuture {
    fn ready(result: Result<u64>) -> WriteFuture {
        WriteFuture {
            state: FutureState::Ready(Some(result)),
        }
    }
}

impl std::fmt::Debug for WriteFuture {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let done = match &self.state {
            FutureState::Ready(_) => true,
            FutureState::Waiting(slot) => lock(&slot.state).result.is_some(),
        };
        formatter
            .debug_struct("WriteFuture")
            .field("done", &done)
            .finish()
    }
}

impl Future for WriteFuture {
    type Output = Result<u64>;

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Result<u64>> {
        let this = self.get_mut();
        let result = match &mut this.state {
            FutureState::Ready(result) => result.take(),
            FutureState::Waiting(slot) => {
                let mut state = lock(&slot.state);
                match state.result.take() {
                    Some(result) => Some(result),
                    None => {
                        if !state
                            .waker
                            .as_ref()
                            .is_some_and(|waker| waker.will_wake(context.waker()))
                        {
                            state.waker = Some(context.waker().clone());
                        }
                        return Poll::Pending;
                    }
                }
            }
        };
        this.state = FutureState::Ready(None);
        Poll::Ready(result.expect("WriteFuture polled after it completed"))
    }
}

impl Drop for WriteFuture {
    fn drop(&mut self) {
        if let FutureState::Waiting(slot) = &self.state {
            // Not yet admitted to the queue: cancel (frees the batch now).
            let mut state = lock(&slot.state);
            state.parked = None;
            state.waker = None;
        }
    }
}

impl Core {
    /// Checks and encodes `batch` on the caller's thread (so that encoding runs in parallel
    /// and a leader only concatenates), leaving `batch` empty. A batch that is too large is
    /// refused and left as it was.
    fn prepare(batch: &mut LogBatch) -> Result<(Vec<Op>, Vec<u8>)> {
        let size = batch.encoded_len();
        if size - format::RECORD_HEADER_BYTES > format::MAX_RECORD_PAYLOAD_BYTES as usize {
            return Err(Error::BatchTooLarge {
                size_bytes: size as u64,
                limit_bytes: u64::from(format::MAX_RECORD_PAYLOAD_BYTES),
            });
        }
        let mut record = Vec::with_capacity(size);
        batch.encode_record(&mut record);
        let ops = std::mem::take(&mut batch.ops);
        *batch = LogBatch::new();
        Ok((ops, record))
    }

    fn write(&self, batch: &mut LogBatch, sync: bool) -> Result<u64> {
        if batch.is_empty() {
            return Ok(0);
        }
        let (ops, record) = Core::prepare(batch)?;

        let slot = Arc::new(Slot::default());
        let request = Request {
            completion: Completion::Thread(Arc::clone(&slot)),
            ops,
            record,
            sync,
        };
        let mut queue = lock(&self.queue);
        let mut leading = false;
        if queue.has_room() {
            queue.pending.push_back(request);
            if queue.gathered() {
                self.worker_wake.notify_one();
            }
            leading = !queue.leader_active;
            queue.leader_active = true;
        } else {
            // Backpressure: wait (blocked below) until a leader admits the request; a leader
            // is active, since the queue is not empty.
            queue.waiting.push_back(Waiting::Thread(request));
        }
        drop(queue);
        let mut rounds = 0u32;
        loop {
            if !leading {
                let mut state = lock(&slot.state);
                loop {
                    if let Some(result) = state.result.take() {
                        return result;
                    }
                    if state.lead {
                        state.lead = false;
                        leading = true;
                        rounds = 0;
                        break;
                    }
                    state = slot
                        .changed
                        .wait(state)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
            }
            // Leader: write the oldest waiting batches, up to the group-commit bound.
            let group = lock(&self.queue).take_group();
            assert!(
                !group.is_empty(),
                "a group-commit leader found an empty queue"
            );
            self.commit_and_complete(group);
            rounds += 1;
            let next_leader = {
                let mut queue = lock(&self.queue);
                if queue.pending.is_empty() {
                    queue.leader_active = false;
                    None
                } else if rounds < MAX_LEADER_ROUNDS {
                    continue;
                } else {
                    match queue.pending.front().map(|request| &request.completion) {
                        Some(Completion::Thread(slot)) => Some(Arc::clone(slot)),
                        Some(Completion::Task(_)) => {
                            // An asynchronous submitter cannot lead: the writer thread does.
                            queue.worker_leads = true;
                            self.worker_wake.notify_one();
                            None
                        }
                        None => None,
                    }
                }
            };
            if let Some(next) = next_leader {
                next.update(|state| state.lead = true);
            }
            leading = false;
        }
    }

    /// Submits an encoded batch for the writer thread; see [`LogEngine::write_async`].
    fn submit_async(&self, ops: Vec<Op>, record: Vec<u8>, sync: bool) -> Arc<TaskSlot> {
        let slot = Arc::new(TaskSlot::default());
        let mut queue = lock(&self.queue);
        if queue.has_room() {
            queue.pending.push_back(Request {
                completion: Completion::Task(Arc::clone(&slot)),
                ops,
                record,
                sync,
            });
            if !queue.leader_active {
                queue.leader_active = true;
                queue.worker_leads = true;
                self.worker_wake.notify_one();
            } else if queue.gathered() {
                self.worker_wake.notify_one();
            }
        } else {
            // Backpressure: the batch stays with the future (in its slot) and is admitted, in
            // call order, when a leader makes room; until then the future is pending.
            lock(&slot.state).parked = Some(Parked { ops, record, sync });
            queue.waiting.push_back(Waiting::Task(Arc::clone(&slot)));
        }
        slot
    }

    /// The engine's writer thread: leads group commits whenever leadership is handed to it
    /// (the oldest request is asynchronous), until the queue is empty; exits on shutdown
    /// once nothing is queued.
    fn run_writer_thread(&self) {
        let mut queue = lock(&self.queue);
        loop {
            if queue.worker_leads {
                queue.worker_leads = false;
                loop {
                    let group = queue.take_group();
                    drop(queue);
                    let submitters = group.len();
                    if !group.is_empty() {
                        self.commit_and_complete(group);
                    }
                    queue = lock(&self.queue);
                    if submitters > 1 && queue.pending.len() < submitters && !queue.shutdown {
                        queue = self.gather(queue, submitters);
                    }
                    if queue.pending.is_empty() {
                        queue.leader_active = false;
                        break;
                    }
                }
                continue;
            }
            if queue.shutdown && queue.pending.is_empty() && queue.waiting.is_empty() {
                return;
            }
            queue = self
                .worker_wake
                .wait(queue)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Waits (at most [`GROUP_COMMIT_GATHER_WAIT`]) until `target` requests are queued: the
    /// writers just woken usually submit again within microseconds, and without this the
    /// writer thread would start the next fdatasync with the first one or two of them,
    /// making the rest wait a whole extra sync (groups alternating large and tiny).
    fn gather<'a>(
        &'a self,
        mut queue: MutexGuard<'a, Queue>,
        target: usize,
    ) -> MutexGuard<'a, Queue> {
        let target = target.min(MAX_QUEUED_WRITES);
        let deadline = Instant::now() + GROUP_COMMIT_GATHER_WAIT;
        queue.gather_target = target;
        while queue.pending.len() < target && !queue.shutdown {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            queue = self
                .worker_wake
                .wait_timeout(queue, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        queue.gather_target = 0;
        queue
    }

    /// Commits one group and delivers each request's result.
    fn commit_and_complete(&self, group: Vec<Request>) {
        for (completion, result) in self.commit_group(group) {
            completion.complete(result);
        }
    }

    /// Writes and (if any asked) syncs one group of requests; applies them to the memtable.
    fn commit_group(&self, group: Vec<Request>) -> Vec<(Completion, Result<u64>)> {
        let mut writer = lock(&self.writer);
        let mut results = Vec::with_capacity(group.len());
        if let Some(cause) = &writer.poisoned {
            for request in group {
                results.push((
                    request.completion,
                    Err(Error::Poisoned {
                        cause: cause.clone(),
                    }),
                ));
            }
            return results;
        }

        // Validate every batch against the log as the batches before it leave it.
        let mut accepted = Vec::with_capacity(group.len());
        {
            let memtable = read(&self.memtable);
            let mut bounds: HashMap<GroupId, Bounds> = HashMap::new();
            for request in group {
                let mut trial: HashMap<GroupId, Bounds> = HashMap::new();
                let mut verdict = Ok(());
                for op in &request.ops {
                    let group_id = op.group();
                    let entry = trial.entry(group_id).or_insert_with(|| {
                        bounds
                            .get(&group_id)
                            .copied()
                            .unwrap_or_else(|| Bounds::of(memtable.group(group_id)))
                    });
                    if let Err(message) = entry.check_and_apply(op) {
                        verdict = Err(message);
                        break;
                    }
                }
                match verdict {
                    Ok(()) => {
                        bounds.extend(trial);
                        accepted.push(request);
                    }
                    Err(message) => {
                        results.push((request.completion, Err(Error::InvalidArgument(message))))
                    }
                }
            }
        }
        if accepted.is_empty() {
            return results;
        }

        let mut buf = std::mem::take(&mut writer.buf);
        buf.clear();
        let mut need_sync = false;
        for request in &accepted {
            buf.extend_from_slice(&request.record);
            need_sync |= request.sync;
        }
        writer.group_commits += 1;
        writer.batches_written += accepted.len() as u64;
        let mut waited_for_space = false;
        let outcome = loop {
            match self.try_append_to_active(&mut writer, &buf, need_sync) {
                Ok(seq) => {
                    if waited_for_space {
                        tracing::warn!("raft-log: disk space available again; writes resumed");
                    }
                    break Ok(seq);
                }
                Err(AppendFailure::Fatal(error)) => {
                    tracing::error!(%error, "raft-log write failed; the engine refuses further writes until reopened");
                    writer.poisoned = Some(error.to_string());
                    break Err(error);
                }
                Err(AppendFailure::NoSpace(error)) => {
                    let Some(interval) = self.config.no_space_retry else {
                        tracing::warn!(%error, "raft-log: disk full; the group commit failed (nothing of it was kept)");
                        break Err(error);
                    };
                    if !waited_for_space {
                        waited_for_space = true;
                        self.write_no_space.store(true, Ordering::Relaxed);
                        tracing::warn!(%error, retry_ms = interval.as_millis() as u64, "raft-log: disk full; the group commit is held and retried until space is freed");
                    }
                    // Let `purge` (which frees space), `sync` and `stats` in meanwhile.
                    drop(writer);
                    let shutdown = self.sleep_unless_shutdown(interval);
                    writer = lock(&self.writer);
                    if let Some(cause) = &writer.poisoned {
                        break Err(Error::Poisoned {
                            cause: cause.clone(),
                        });
                    }
                    if shutdown {
                        // Nothing later may be written without this group: refuse all.
                        writer.poisoned = Some(format!(
                            "closed while a write was waiting for disk space ({error})"
                        ));
                        break Err(error);
                    }
                }
            }
        };
        if waited_for_space {
            // Written, or given up for good (poisoned): either way no longer waiting.
            self.write_no_space.store(false, Ordering::Relaxed);
        }
        let written = buf.len();
        writer.buf = buf;
        match outcome {
            Ok(seq) => {
                let mut memtable = write(&self.memtable);
                for request in accepted {
                    let bytes = request.record.len() as u64;
                    for op in request.ops {
                        if let Err(message) = memtable.apply(op, seq) {
                            // Validation above accepted it: the index and the log disagree.
                            panic!("validated batch failed to apply to the index: {message}");
                        }
                    }
                    results.push((request.completion, Ok(bytes)));
                }
                tracing::trace!(bytes = written, sync = need_sync, "group commit");
            }
            Err(error) => {
                for request in accepted {
                    results.push((request.completion, Err(error.duplicate())));
                }
            }
        }
        results
    }

    /// Sleeps `interval` (in short steps) unless the engine is being dropped; returns whether
    /// it is.
    fn sleep_unless_shutdown(&self, interval: Duration) -> bool {
        let deadline = Instant::now() + interval;
        loop {
            if lock(&self.queue).shutdown {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(20)));
        }
    }

    /// Appends `bytes` (whole records) to the active segment, rolling over first if needed.
    /// Returns the segment's sequence number. A full disk ([`AppendFailure::NoSpace`]) leaves
    /// the log as it was before the call (a record cut short is truncated off, a segment that
    /// could not be made is removed), so the same bytes can be appended again; the caller
    /// poisons the engine on any other failure.
    fn try_append_to_active(
        &self,
        writer: &mut Writer,
        bytes: &[u8],
        sync: bool,
    ) -> std::result::Result<u64, AppendFailure> {
        if writer.active_len > format::SEGMENT_HEADER_BYTES as u64
            && writer.active_len + bytes.len() as u64 > self.config.segment_size_bytes
        {
            self.rollover(writer)?;
        }
        let path = segment_path(&self.dir, writer.active_seq);
        if let Err(error) = writer.active_file.write_all(bytes) {
            let error = Error::io("write", &path, error);
            if !error.is_no_space() {
                return Err(AppendFailure::Fatal(error));
            }
            // Cut off what reached the file of this record: the next record goes where it
            // began, so no later record can follow a partial one. Not durable until the next
            // sync, and until then a crash finds at most a torn tail, never acknowledged.
            writer
                .active_file
                .truncate(writer.active_len)
                .map_err(|error| AppendFailure::Fatal(Error::io("truncate", &path, error)))?;
            return Err(AppendFailure::NoSpace(error));
        }
        writer.active_len += bytes.len() as u64;
        // The next segment is asked for once the active one is half full: a disk too full for
        // it is then reported (see `LogEngine::is_out_of_space`) while half the active segment
        // is still free room. (Asking at a segment's first write would give a whole segment of
        // warning, but keeps a spare on disk all the time: the disk test's largest data
        // directory grew from 3.17 to 3.46 MB of its 3.58 MB bound.)
        if self.config.spares_in_background()
            && writer.active_len.saturating_mul(2) >= self.config.segment_size_bytes
            && writer.spare_requested != writer.active_seq + 1
        {
            writer.spare_requested = writer.active_seq + 1;
            lock(&self.spares).wanted = Some(writer.active_seq + 1);
            self.spares_wake.notify_all();
        }
        if sync {
            writer.syncs += 1;
            // Fatal whatever the errno, ENOSPC included: after a failed fdatasync the kernel
            // may have dropped the dirty pages, so what the file holds is unknown.
            writer
                .active_file
                .sync_data()
                .map_err(|error| AppendFailure::Fatal(Error::io("fdatasync", &path, error)))?;
        }
        Ok(writer.active_seq)
    }

    fn rollover(&self, writer: &mut Writer) -> std::result::Result<(), AppendFailure> {
        // Make the old segment complete on disk first: recovery accepts a torn tail (or
        // preallocated zeros) only in the last segment, so no earlier segment may ever end in
        // unsynced bytes or zeros. The truncation is made durable by the same fdatasync.
        let old_path = segment_path(&self.dir, writer.active_seq);
        if self.config.preallocate_segments {
            writer
                .active_file
                .truncate(writer.active_len)
                .map_err(|error| AppendFailure::Fatal(Error::io("truncate", &old_path, error)))?;
        }
        writer
            .active_file
            .sync_data()
            .map_err(|error| AppendFailure::Fatal(Error::io("fdatasync", &old_path, error)))?;
        let seq = writer.active_seq + 1;
        let spare = lock(&self.spares).ready.take();
        let (file, len) = match spare {
            Some(spare) if spare.seq == seq => {
                let path = segment_path(&self.dir, seq);
                self.fs.rename(&spare.path, &path).map_err(|error| {
                    AppendFailure::Fatal(Error::io("rename", &spare.path, error))
                })?;
                self.fs.sync_dir(&self.dir).map_err(|error| {
                    AppendFailure::Fatal(Error::io("sync directory", &self.dir, error))
                })?;
                (spare.file, format::SEGMENT_HEADER_BYTES as u64)
            }
            other => {
                if let Some(stale) = other {
                    // The helper finished a spare for a segment the writer had already
                    // started itself (it filled up first): useless now.
                    let _ = self.fs.remove(&stale.path);
                }
                // Without a spare ready, zero inline only where no helper thread exists (a
                // stall of the write path otherwise; the segment then grows as it is written).
                let prealloc = (self.config.preallocate_segments
                    && !self.config.spares_in_background())
                .then_some(self.config.segment_size_bytes);
                let path = segment_path(&self.dir, seq);
                match new_segment_file(self.fs.as_ref(), &path, seq, prealloc) {
                    Ok(file) => {
                        self.fs.sync_dir(&self.dir).map_err(|error| {
                            AppendFailure::Fatal(Error::io("sync directory", &self.dir, error))
                        })?;
                        (file, format::SEGMENT_HEADER_BYTES as u64)
                    }
                    Err(error) => {
                        let failure = AppendFailure::of(error);
                        if let AppendFailure::NoSpace(_) = failure {
                            // Give the space back and leave no half-made segment behind (a
                            // crash before this is durable finds at most a torn last
                            // segment, which recovery drops: nothing was written to it).
                            // The writer stays in the old segment and retries the rollover.
                            if let Err(error) = self.fs.remove(&path) {
                                if error.kind() != std::io::ErrorKind::NotFound {
                                    return Err(AppendFailure::Fatal(Error::io(
                                        "remove", &path, error,
                                    )));
                                }
                            }
                            self.fs.sync_dir(&self.dir).map_err(|error| {
                                AppendFailure::Fatal(Error::io("sync directory", &self.dir, error))
                            })?;
                        }
                        return Err(failure);
                    }
                }
            }
        };
        writer.active_file = file;
        writer.active_seq = seq;
        writer.active_len = len;
        self.note_segment_count(writer);
        Ok(())
    }

    /// The helper thread of `Config::prepare_segments_in_background`: makes the spare segment
    /// the writer asks for, one at a time. A failure is logged and leaves no spare (the
    /// writer then starts the segment itself); the writer's own errors are what poison.
    fn run_preparer_thread(&self) {
        let mut spares = lock(&self.spares);
        loop {
            if spares.shutdown {
                return;
            }
            let Some(seq) = spares.wanted.take() else {
                spares = self
                    .spares_wake
                    .wait(spares)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                continue;
            };
            if spares.ready.as_ref().is_some_and(|spare| spare.seq == seq) {
                continue;
            }
            let stale = spares.ready.take();
            drop(spares);
            if let Some(stale) = stale {
                let _ = self.fs.remove(&stale.path);
            }
            let made = self.make_spare(seq);
            if made.is_err() {
                // Give back whatever the half-made spare holds (a full disk needs it most).
                let _ = self.fs.remove(&spare_path(&self.dir, seq));
            }
            spares = lock(&self.spares);
            match made {
                Ok(spare) => {
                    spares.ready = Some(spare);
                    spares.prepared += 1;
                    if self.spare_no_space.swap(false, Ordering::Relaxed) {
                        tracing::warn!(
                            seq,
                            "raft-log: disk space available again; next segment prepared"
                        );
                    }
                }
                Err(error) if error.is_no_space() => {
                    if !self.spare_no_space.swap(true, Ordering::Relaxed) {
                        tracing::warn!(%error, seq, "raft-log: disk full, the next segment cannot be made; retrying until space is freed");
                    }
                    if spares.wanted.is_none() {
                        spares.wanted = Some(seq);
                    }
                    let interval = self.config.no_space_retry.unwrap_or(DEFAULT_NO_SPACE_RETRY);
                    if !spares.shutdown {
                        spares = self
                            .spares_wake
                            .wait_timeout(spares, interval)
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .0;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, seq, "raft-log could not prepare the next segment; it will be started without preallocation")
                }
            }
        }
    }

    fn make_spare(&self, seq: u64) -> Result<Spare> {
        let path = spare_path(&self.dir, seq);
        let file = new_segment_file(
            self.fs.as_ref(),
            &path,
            seq,
            Some(self.config.segment_size_bytes),
        )?;
        Ok(Spare { seq, path, file })
    }

    fn sync(&self) -> Result<()> {
        let mut writer = lock(&self.writer);
        if let Some(cause) = &writer.poisoned {
            return Err(Error::Poisoned {
                cause: cause.clone(),
            });
        }
        let path = segment_path(&self.dir, writer.active_seq);
        if let Err(error) = writer.active_file.sync_data() {
            let error = Error::io("fdatasync", &path, error);
            writer.poisoned = Some(error.to_string());
            return Err(error);
        }
        Ok(())
    }

    fn first_index(&self, group: GroupId) -> Option<u64> {
        read(&self.memtable).group(group)?.first()
    }

    fn last_index(&self, group: GroupId) -> Option<u64> {
        read(&self.memtable).group(group)?.last()
    }

    fn term(&self, group: GroupId, index: u64) -> Option<u64> {
        read(&self.memtable)
            .group(group)?
            .entry(index)
            .map(|entry| entry.term)
    }

    fn entries(
        &self,
        group: GroupId,
        low: u64,
        high: u64,
        max_bytes: usize,
    ) -> Result<Vec<LogEntry>> {
        if low >= high {
            return Ok(Vec::new());
        }
        let memtable = read(&self.memtable);
        let state = memtable.group(group);
        let first = state.and_then(|state| state.first());
        let last = state.and_then(|state| state.last());
        let (Some(state), Some(first_index), Some(last_index)) = (state, first, last) else {
            let compacted = state.is_some_and(|state| low < state.compacted_to);
            return Err(if compacted {
                Error::Compacted {
                    group,
                    index: low,
                    first_index: None,
                }
            } else {
                Error::Unavailable {
                    group,
                    index: high - 1,
                    last_index: None,
                }
            });
        };
        if low < first_index {
            return Err(Error::Compacted {
                group,
                index: low,
                first_index: Some(first_index),
            });
        }
        if high > last_index + 1 {
            return Err(Error::Unavailable {
                group,
                index: high - 1,
                last_index: Some(last_index),
            });
        }
        let mut out = Vec::new();
        let mut total = 0usize;
        for index in low..high {
            let Some(entry) = state.entry(index) else {
                break;
            };
            if !out.is_empty() && total + entry.data.len() > max_bytes {
                break;
            }
            total += entry.data.len();
            out.push(LogEntry {
                index,
                term: entry.term,
                data: entry.data.clone(),
            });
        }
        Ok(out)
    }

    fn get_state(&self, group: GroupId, key: &[u8]) -> Option<Bytes> {
        read(&self.memtable)
            .group(group)?
            .states
            .get(key)
            .map(|state| state.value.clone())
    }

    fn groups(&self) -> Vec<GroupId> {
        let memtable = read(&self.memtable);
        let mut groups: Vec<GroupId> = memtable
            .groups
            .iter()
            .filter(|(_, state)| !state.is_empty())
            .map(|(group, _)| *group)
            .collect();
        groups.sort_unstable();
        groups
    }

    fn stats(&self) -> Stats {
        let writer = lock(&self.writer);
        let memtable = read(&self.memtable);
        Stats {
            segment_count: (writer.active_seq - writer.first_seq + 1) as usize,
            first_segment_seq: writer.first_seq,
            active_segment_seq: writer.active_seq,
            active_segment_bytes: writer.active_len,
            group_count: memtable
                .groups
                .values()
                .filter(|state| !state.is_empty())
                .count(),
            live_entry_count: memtable
                .groups
                .values()
                .map(|state| state.entries.len() as u64)
                .sum(),
            live_entry_bytes: memtable
                .groups
                .values()
                .map(|state| state.entry_bytes as u64)
                .sum(),
            group_commits: writer.group_commits,
            batches_written: writer.batches_written,
            syncs: writer.syncs,
            spare_segments_prepared: lock(&self.spares).prepared,
        }
    }

    fn note_segment_count(&self, writer: &Writer) {
        self.segment_count.store(
            (writer.active_seq - writer.first_seq + 1) as usize,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    fn purge(&self) -> Result<PurgeReport> {
        let mut writer = lock(&self.writer);
        if let Some(cause) = &writer.poisoned {
            return Err(Error::Poisoned {
                cause: cause.clone(),
            });
        }
        let mut report = PurgeReport::default();
        let segment_count = writer.active_seq - writer.first_seq + 1;
        if segment_count > self.config.purge_rewrite_threshold_segments as u64 {
            let keep = (self.config.purge_rewrite_threshold_segments as u64 / 2).max(1);
            let cutoff = writer.active_seq.saturating_sub(keep - 1);
            let batches = self.rewrite_batches(cutoff, &mut report);
            if !batches.is_empty() {
                // Writers are excluded (we hold the writer lock), so the copies are exactly
                // the live data and nothing can change it before they are applied.
                let mut applied = Vec::with_capacity(batches.len());
                for batch in batches {
                    let mut record = Vec::with_capacity(batch.encoded_len());
                    batch.encode_record(&mut record);
                    match self.try_append_to_active(&mut writer, &record, false) {
                        Ok(seq) => {
                            report.bytes_rewritten += record.len() as u64;
                            applied.push((batch, seq));
                        }
                        Err(AppendFailure::NoSpace(error)) => {
                            // No room to copy more (nothing partial was kept): keep the copies
                            // made so far and still delete what is already free below.
                            tracing::warn!(%error, "raft-log purge: disk full, copying stopped");
                            report.stopped_for_space = true;
                            break;
                        }
                        Err(AppendFailure::Fatal(error)) => {
                            tracing::error!(%error, "raft-log purge failed to write; the engine refuses further writes until reopened");
                            writer.poisoned = Some(error.to_string());
                            return Err(error);
                        }
                    }
                }
                // The copies must be durable before the originals are deleted.
                let path = segment_path(&self.dir, writer.active_seq);
                if let Err(error) = writer.active_file.sync_data() {
                    let error = Error::io("fdatasync", &path, error);
                    writer.poisoned = Some(error.to_string());
                    return Err(error);
                }
                let mut memtable = write(&self.memtable);
                for (batch, seq) in applied {
                    for op in batch.ops {
                        if let Err(message) = memtable.apply(op, seq) {
                            panic!("rewrite of live data failed to apply to the index: {message}");
                        }
                    }
                }
            }
        }

        let min_live_seq = {
            let memtable = read(&self.memtable);
            memtable
                .groups
                .values()
                .filter_map(|state| state.min_seq())
                .min()
                .unwrap_or(writer.active_seq)
                .min(writer.active_seq)
        };
        if min_live_seq > writer.first_seq {
            // What makes an old segment dead may be a newer write that is not durable yet (an
            // append that truncated, a compaction, a clean): it must be durable before the
            // segment goes, or a crash would bring back neither.
            let path = segment_path(&self.dir, writer.active_seq);
            if let Err(error) = writer.active_file.sync_data() {
                let error = Error::io("fdatasync", &path, error);
                writer.poisoned = Some(error.to_string());
                return Err(error);
            }
            for seq in writer.first_seq..min_live_seq {
                let path = segment_path(&self.dir, seq);
                let bytes = self.fs.file_len(&path).unwrap_or(0);
                // Oldest first: a crash in the middle leaves a contiguous run of segments.
                self.fs
                    .remove(&path)
                    .map_err(|error| Error::io("remove", &path, error))?;
                writer.first_seq = seq + 1;
                self.note_segment_count(&writer);
                report.segments_deleted += 1;
                report.bytes_deleted += bytes;
            }
            self.fs
                .sync_dir(&self.dir)
                .map_err(|error| Error::io("sync directory", &self.dir, error))?;
        }
        if report.segments_deleted > 0
            || report.groups_rewritten > 0
            || !report.groups_to_compact.is_empty()
        {
            tracing::debug!(?report, "raft-log purge");
        }
        Ok(report)
    }

    /// Batches copying forward every group whose live data starts in a segment `< cutoff`.
    fn rewrite_batches(&self, cutoff: u64, report: &mut PurgeReport) -> Vec<LogBatch> {
        let memtable = read(&self.memtable);
        // (group, whether its entries are copied too). A group's entries are copied whole or
        // not at all: recovery takes a rewrite that starts below the entries it holds for the
        // whole live log (see `MemTable::apply`), so a copied prefix would drop the rest.
        let mut groups: Vec<(GroupId, bool)> = Vec::new();
        for (group, state) in &memtable.groups {
            let entries_pin = state.entries.iter().any(|entry| entry.seq < cutoff);
            let states_pin = state.states.values().any(|stored| stored.seq < cutoff);
            if entries_pin && state.live_bytes() > self.config.purge_rewrite_max_group_bytes {
                // Its states (a few small keys) are copied once its owner compacted it.
                report.groups_to_compact.push(*group);
            } else if entries_pin || states_pin {
                groups.push((*group, entries_pin));
            }
        }
        groups.sort_unstable();
        report.groups_to_compact.sort_unstable();
        let mut batches = Vec::new();
        for (group, with_entries) in groups {
            let Some(state) = memtable.group(group) else {
                continue;
            };
            report.groups_rewritten += 1;
            let mut batch = LogBatch::new();
            for (key, stored) in &state.states {
                batch.push_state_bytes(group, key.clone(), stored.value.clone());
            }
            if let Some(first) = state.first().filter(|_| with_entries) {
                // Not strictly needed (entries below `first` are gone), but it lets recovery
                // drop stale older copies even if older segments survive a crash mid-purge.
                batch.compact_to(group, first);
                let mut chunk = Vec::new();
                let mut chunk_bytes = 0usize;
                for (offset, entry) in state.entries.iter().enumerate() {
                    chunk_bytes += entry.data.len() + format::ENTRY_HEADER_BYTES;
                    chunk.push(LogEntry {
                        index: first + offset as u64,
                        term: entry.term,
                        data: entry.data.clone(),
                    });
                    if chunk_bytes >= REWRITE_CHUNK_BYTES {
                        batch.push_rewrite(group, std::mem::take(&mut chunk));
                        batches.push(std::mem::take(&mut batch));
                        chunk_bytes = 0;
                    }
                }
                if !chunk.is_empty() {
                    batch.push_rewrite(group, chunk);
                }
            }
            if !batch.is_empty() {
                batches.push(batch);
            }
        }
        batches
    }
}

/// Creates segment `seq` with its header, durably (file and directory entry), zeroed up to
/// `preallocate` bytes if given.
fn create_segment(
    fs: &dyn FileSystem,
    dir: &Path,
    seq: u64,
    preallocate: Option<u64>,
) -> Result<(Box<dyn WritableFile>, u64)> {
    let file = new_segment_file(fs, &segment_path(dir, seq), seq, preallocate)?;
    fs.sync_dir(dir)
        .map_err(|error| Error::io("sync directory", dir, error))?;
    Ok((file, format::SEGMENT_HEADER_BYTES as u64))
}

/// Creates `path` holding segment `seq`'s header, zeroed up to `preallocate` bytes if given,
/// durably (the file's contents; its directory entry is the caller's business).
fn new_segment_file(
    fs: &dyn FileSystem,
    path: &Path,
    seq: u64,
    preallocate: Option<u64>,
) -> Result<Box<dyn WritableFile>> {
    let mut file = fs
        .create(path)
        .map_err(|error| Error::io("create", path, error))?;
    file.write_all(&format::segment_header(seq))
        .map_err(|error| Error::io("write", path, error))?;
    match preallocate {
        // Durable like sync_data (zeros and header).
        Some(len) => file
            .preallocate(len)
            .map_err(|error| Error::io("preallocate", path, error))?,
        None => file
            .sync_data()
            .map_err(|error| Error::io("fdatasync", path, error))?,
    }
    Ok(file)
}

/// Where recovery reads segments from, and how strictly.
#[derive(Clone, Copy)]
struct SegmentSource<'a> {
    fs: &'a dyn FileSystem,
    dir: &'a Path,
    mode: RecoveryMode,
    /// Whether segments are preallocated (zeros may follow the written bytes).
    preallocated: bool,
}

/// Replays one segment into `memtable`; returns the length of its valid prefix. `buf` is
/// reused across segments.
fn recover_segment(
    source: SegmentSource<'_>,
    seq: u64,
    is_last: bool,
    memtable: &mut MemTable,
    report: &mut RecoveryReport,
    buf: &mut Vec<u8>,
) -> Result<u64> {
    let SegmentSource {
        fs,
        dir,
        mode,
        preallocated,
    } = source;
    let path = segment_path(dir, seq);
    // One buffer reused for every segment: a fresh 64 MiB allocation per segment costs more
    // in page faults than reading the file.
    let len = fs
        .file_len(&path)
        .map_err(|error| Error::io("stat", &path, error))?;
    let len = usize::try_from(len).map_err(|_| {
        Error::corruption(
            &path,
            0,
            format!("segment of {len} bytes does not fit in memory"),
        )
    })?;
    buf.clear();
    buf.resize(len, 0);
    fs.read_at(&path, 0, buf)
        .map_err(|error| Error::io("read", &path, error))?;
    let data: &[u8] = buf;
    report.segments_read += 1;
    report.bytes_read += data.len() as u64;

    if let Err(reason) = format::check_segment_header(data, seq) {
        let short = data.len() < format::SEGMENT_HEADER_BYTES
            && format::SEGMENT_MAGIC.starts_with(&data[..data.len().min(8)]);
        if is_last && (short || data.iter().all(|byte| *byte == 0)) {
            // Crash while creating the segment: nothing was ever written after the header.
            report.torn_tail = Some(TornTail {
                file: path,
                offset: 0,
                bytes_discarded: data.len() as u64,
                reason,
            });
            return Ok(0);
        }
        if mode == RecoveryMode::TolerateAnyCorruption {
            report.skipped_corruption.push(SkippedCorruption {
                file: path,
                offset: 0,
                reason,
            });
            return Ok(0);
        }
        return Err(Error::corruption(&path, 0, reason));
    }

    let mut offset = format::SEGMENT_HEADER_BYTES;
    loop {
        match format::parse_record(data, offset) {
            Parsed::End => return Ok(offset as u64),
            Parsed::Record { payload, next } => {
                let applied = format::decode_payload(payload).and_then(|ops| {
                    for op in ops {
                        apply_recovered(memtable, op, seq, mode)?;
                    }
                    Ok(())
                });
                if let Err(reason) = applied {
                    if mode == RecoveryMode::TolerateAnyCorruption {
                        report.skipped_corruption.push(SkippedCorruption {
                            file: path,
                            offset: offset as u64,
                            reason,
                        });
                        return Ok(offset as u64);
                    }
                    return Err(Error::corruption(&path, offset as u64, reason));
                }
                report.records_read += 1;
                offset = next;
            }
            Parsed::Bad { kind, mut reason } => {
                if is_last && kind == BadRecord::ZeroTail {
                    // Preallocated space no record reached yet: the active segment's end.
                    return Ok(offset as u64);
                }
                // Where the bytes end that were ever written: a segment may be zeroed ahead.
                let written = data
                    .iter()
                    .rposition(|byte| *byte != 0)
                    .map_or(0, |at| at + 1);
                // A write torn inside preallocated space leaves the start of a record followed
                // by zeros, which reads as a whole record with a bad checksum. Judged without
                // the trailing zeros it is what it is: a record cut short. (A complete record
                // that ends in zero bytes parses as valid above and never comes here.)
                // Only where segments are preallocated: there, damage that zeroed the end of
                // the last record cannot be told from a torn write (etcd's WAL reads a record
                // with an all-zero sector the same way); without preallocation it stays a
                // checksum error.
                let kind = if is_last
                    && preallocated
                    && kind != BadRecord::Truncated
                    && written > offset
                    && written < data.len()
                    && matches!(
                        format::parse_record(&data[..written], offset),
                        Parsed::Bad {
                            kind: BadRecord::Truncated,
                            ..
                        }
                    ) {
                    BadRecord::Truncated
                } else {
                    kind
                };
                // In the last segment a bad record with nothing valid after it is what a crash
                // in the middle of the last write leaves. Which kinds of damage may be such a
                // torn write depends on the mode (a complete record with a bad checksum or
                // header can also be sectors written out of order).
                let tail_candidate = is_last
                    && match kind {
                        BadRecord::Truncated | BadRecord::ZeroTail => true,
                        BadRecord::Checksum | BadRecord::Malformed => {
                            mode != RecoveryMode::AbsoluteConsistency
                        }
                    };
                if tail_candidate {
                    match format::find_valid_record_after(data, offset + 1) {
                        AfterDamage::NothingValid => {
                            report.torn_tail = Some(TornTail {
                                file: path,
                                offset: offset as u64,
                                // Written bytes only, not the preallocated zeros after them.
                                bytes_discarded: (written.max(offset) - offset) as u64,
                                reason,
                            });
                            return Ok(offset as u64);
                        }
                        AfterDamage::ValidRecordAt(valid) => {
                            reason = format!(
                                "{reason}; a valid record follows at offset {valid}, so this is damage, not a torn write"
                            );
                        }
                        AfterDamage::Undecided => {
                            reason = format!(
                                "{reason}; the rest of the file is full of record-like garbage, so this is not taken for a torn write"
                            );
                        }
                    }
                }
                if mode == RecoveryMode::TolerateAnyCorruption {
                    report.skipped_corruption.push(SkippedCorruption {
                        file: path,
                        offset: offset as u64,
                        reason,
                    });
                    return Ok(offset as u64);
                }
                return Err(Error::corruption(&path, offset as u64, reason));
            }
        }
    }
}

fn apply_recovered(
    memtable: &mut MemTable,
    op: Op,
    seq: u64,
    mode: RecoveryMode,
) -> Result<(), String> {
    if mode != RecoveryMode::TolerateAnyCorruption {
        return memtable.apply(op, seq);
    }
    // Salvage: when entries no longer connect (skipped damage), keep the newer ones.
    let retry = op.clone();
    match memtable.apply(op, seq) {
        Ok(()) => Ok(()),
        Err(_) => {
            let group = retry.group();
            if let Some(state) = memtable.groups.get_mut(&group) {
                state.entries.clear();
                state.entry_bytes = 0;
            }
            memtable.apply(retry, seq)
        }
    }
}
