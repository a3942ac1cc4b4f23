//! Snapshots built off the store thread.
//!
//! Serializing a region of tens of MiB and writing it took the store thread 100–450 ms per
//! snapshot (docs/BENCHMARKS.md), which every other region of the store waited through. Now:
//! 1. the store thread takes a point-in-time view of the region's state machine
//!    ([`StateMachine::view`], O(1) for the KV state machine's persistent maps) and the term of
//!    the applied entry, and queues a [`SnapshotJob`];
//! 2. the caller hands the job to a [`SnapshotBuilder`]: [`ThreadBuilder`] (the server's, one
//!    background thread), [`HereBuilder`] (on the caller's thread: tests) or the simulator's,
//!    which runs jobs at random later wake-ups;
//! 3. [`SnapshotJob::run`], on whichever thread, serializes the view, checksums it, writes the
//!    file under a temporary name, syncs it, renames it to its final name and syncs the
//!    directory ([`raft_log::PreparedSnapshot`]);
//! 4. the store thread gets the [`BuiltSnapshot`] back (`Store::finish_snapshot`), and once no
//!    log write is in flight commits it: one engine write of the metadata and the compaction,
//!    not waited for to be synced (the file is durable; the next round's fdatasync carries
//!    it). A snapshot overtaken meanwhile (a newer one installed from the leader, the region
//!    gone) is discarded;
//! 5. once a later round's fdatasync has made the commit durable (until then a crash falls
//!    back to the older file), unlinking the region's older files goes back to the builder
//!    ([`SnapshotWork::RemoveOlder`]): unlinking tens of MiB took the store thread
//!    milliseconds under load.
//!
//! A crash before the rename leaves only a temporary file (removed by the group's next
//! snapshot) and the log as it was; after it, `GroupStorage::open` finds the file newer than
//! the metadata and finishes the commit.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raft::{ConfState, LogIndex, SnapshotMetadata, Term};
use raft_log::{FileSystem, PreparedSnapshot};

use crate::region::{Region, RegionId};
use crate::state_machine::StateMachine;

/// Most snapshots a store builds at once. Each holds a view, and a view keeps alive every
/// version of the state that writes have replaced since it was taken (up to a second copy of
/// the region under an overwrite-everything load), so this bounds the memory as well as the
/// builder's queue.
pub const MAX_SNAPSHOTS_BUILDING: usize = 2;

/// One region's snapshot to build: its view and where the file goes.
pub struct SnapshotJob<M: StateMachine> {
    pub region: RegionId,
    /// The replica that took the view: one destroyed and replaced meanwhile (a new peer of
    /// the region on this store) must not commit it.
    pub(crate) peer: raft::NodeId,
    pub(crate) index: LogIndex,
    pub(crate) term: Term,
    pub(crate) conf_state: ConfState,
    /// The region's descriptor at `index`, written before the state (see
    /// [`crate::snapshot_data`]).
    header: Vec<u8>,
    view: M::View,
    dir: PathBuf,
    fs: Arc<dyn FileSystem>,
    /// When the store thread started on it (the view taken).
    pub(crate) stall: Duration,
}

impl<M: StateMachine> std::fmt::Debug for SnapshotJob<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotJob")
            .field("region", &self.region)
            .field("index", &self.index)
            .field("term", &self.term)
            .finish_non_exhaustive()
    }
}

/// A job's outcome, handed back to the store thread.
#[derive(Debug)]
pub struct BuiltSnapshot {
    pub region: RegionId,
    pub(crate) peer: raft::NodeId,
    pub(crate) index: LogIndex,
    pub(crate) term: Term,
    pub(crate) conf_state: ConfState,
    /// The prepared file, or why it could not be written (a full disk is not fatal: the log
    /// stays, a later snapshot tries again; any other I/O error is).
    pub(crate) file: Result<PreparedSnapshot, raft_log::Error>,
    /// Size of the serialized state.
    pub data_bytes: u64,
    /// Time the store thread spent on the job before handing it out.
    pub(crate) stall: Duration,
    /// Time to serialize the view, and to write and sync the file.
    pub serialize: Duration,
    pub write: Duration,
}

impl<M: StateMachine> SnapshotJob<M> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        descriptor: &Region,
        merging: Option<&crate::merge::MergeState>,
        absorbed: &[crate::region::RegionId],
        peer: raft::NodeId,
        index: LogIndex,
        term: Term,
        conf_state: ConfState,
        view: M::View,
        dir: PathBuf,
        fs: Arc<dyn FileSystem>,
        stall: Duration,
    ) -> Self {
        SnapshotJob {
            region: descriptor.id,
            peer,
            header: crate::snapshot_data::header(descriptor, merging, absorbed),
            index,
            term,
            conf_state,
            view,
            dir,
            fs,
            stall,
        }
    }

    /// Serializes, checksums and writes the snapshot (any thread).
    pub fn run(self) -> BuiltSnapshot {
        let started = Instant::now();
        let data = M::serialize(&self.view);
        // The view pins replaced versions of the state: release them before the write.
        drop(self.view);
        let serialize = started.elapsed();
        let started = Instant::now();
        let file = raft_log::raft_storage::prepare_snapshot_file(
            self.fs.as_ref(),
            &self.dir,
            raft_log::GroupId(self.region.0),
            SnapshotMetadata {
                index: self.index,
                term: self.term,
                conf_state: self.conf_state.clone(),
            },
            &[&self.header, &data],
        );
        BuiltSnapshot {
            region: self.region,
            peer: self.peer,
            index: self.index,
            term: self.term,
            conf_state: self.conf_state,
            file,
            data_bytes: data.len() as u64,
            stall: self.stall,
            serialize,
            write: started.elapsed(),
        }
    }
}

/// What the store hands its builder.
pub enum SnapshotWork<M: StateMachine> {
    /// Build a snapshot; its [`BuiltSnapshot`] goes back to the store.
    Build(SnapshotJob<M>),
    /// A snapshot's commit is durable: remove its group's older files. Best effort: what is
    /// left is removed after the group's next snapshot.
    RemoveOlder {
        kept: PreparedSnapshot,
        fs: Arc<dyn FileSystem>,
    },
}

impl<M: StateMachine> SnapshotWork<M> {
    /// Does the work here; a build's outcome is returned.
    pub fn run(self) -> Option<BuiltSnapshot> {
        match self {
            SnapshotWork::Build(job) => Some(job.run()),
            SnapshotWork::RemoveOlder { kept, fs } => {
                let _ = raft_log::remove_older_snapshots(fs.as_ref(), &kept);
                None
            }
        }
    }
}

/// Where snapshot work runs.
pub trait SnapshotBuilder<M: StateMachine> {
    /// Starts a piece of work without waiting for it.
    fn start(&mut self, work: SnapshotWork<M>);
    /// The builds finished since the last call.
    fn finished(&mut self) -> Vec<BuiltSnapshot>;
}

/// A builder that builds each snapshot on the caller's thread when it is started and hands
/// it back at the driver's next call (tests, and tools without a builder thread).
pub struct HereBuilder {
    built: Vec<BuiltSnapshot>,
}

impl HereBuilder {
    pub fn new() -> HereBuilder {
        HereBuilder { built: Vec::new() }
    }

    /// Whether built snapshots wait to be handed back.
    pub fn has_finished(&self) -> bool {
        !self.built.is_empty()
    }
}

impl Default for HereBuilder {
    fn default() -> Self {
        HereBuilder::new()
    }
}

impl<M: StateMachine> SnapshotBuilder<M> for HereBuilder {
    fn start(&mut self, work: SnapshotWork<M>) {
        if let Some(built) = work.run() {
            self.built.push(built);
        }
    }

    fn finished(&mut self) -> Vec<BuiltSnapshot> {
        std::mem::take(&mut self.built)
    }
}

/// The server's builder: one background thread (snapshots are rare and each is written with
/// one fdatasync, so one thread keeps up; two would only compete for the disk with the log).
/// It wakes the store thread through `waker` when a job is done. The thread stops when the
/// builder is dropped, after the job it is on.
pub struct ThreadBuilder<M: StateMachine> {
    tx: Option<SyncSender<SnapshotWork<M>>>,
    done: Arc<Mutex<Vec<BuiltSnapshot>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<M: StateMachine + 'static> ThreadBuilder<M> {
    pub fn new(name: String, waker: std::task::Waker) -> std::io::Result<Self> {
        // Builds are bounded by the store (MAX_SNAPSHOTS_BUILDING) and removals by the builds
        // committed; when it is full anyway, `start` removes on the caller's thread.
        let (tx, rx) = std::sync::mpsc::sync_channel::<SnapshotWork<M>>(2 * MAX_SNAPSHOTS_BUILDING);
        let done = Arc::new(Mutex::new(Vec::new()));
        let out = done.clone();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || build_loop(rx, out, waker))?;
        Ok(ThreadBuilder {
            tx: Some(tx),
            done,
            thread: Some(thread),
        })
    }
}

fn build_loop<M: StateMachine>(
    rx: Receiver<SnapshotWork<M>>,
    done: Arc<Mutex<Vec<BuiltSnapshot>>>,
    waker: std::task::Waker,
) {
    while let Ok(work) = rx.recv() {
        if let Some(built) = work.run() {
            done.lock().unwrap_or_else(|e| e.into_inner()).push(built);
            waker.wake_by_ref();
        }
    }
}

impl<M: StateMachine + 'static> SnapshotBuilder<M> for ThreadBuilder<M> {
    fn start(&mut self, work: SnapshotWork<M>) {
        let tx = self
            .tx
            .as_ref()
            .expect("the builder's thread runs until drop");
        match tx.try_send(work) {
            Ok(()) => {}
            // Full (removals queued behind builds) or the thread died (it panicked): do it
            // here rather than lose it.
            Err(TrySendError::Full(work)) | Err(TrySendError::Disconnected(work)) => {
                if let Some(built) = work.run() {
                    self.done
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(built);
                }
            }
        }
    }

    fn finished(&mut self) -> Vec<BuiltSnapshot> {
        std::mem::take(&mut *self.done.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl<M: StateMachine> Drop for ThreadBuilder<M> {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
