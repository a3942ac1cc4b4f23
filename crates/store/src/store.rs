//! `Store`: the replicas of many regions on one store, persisted through one shared log.

use crate::error::StoreError;
use crate::region::{Region, RegionEpoch, RegionId, StoreId};
use crate::snapshot_job::{BuiltSnapshot, SnapshotJob, SnapshotWork, MAX_SNAPSHOTS_BUILDING};
use crate::state_machine::StateMachine;
use bytes::Bytes;
use raft::{
    ConfState, Config, EntryKind, HardState, LogIndex, Message, NodeId, Persisted, RawNode,
    ReadMode, Role, Snapshot, SnapshotMetadata, Term, INIT_LOG_INDEX, INIT_TERM,
};
use raft_log::raft_storage::{GroupStorage, SnapshotReceiver};
use raft_log::{FileSystem, LogBatch, LogEngine};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Engine state key under which each group keeps its region descriptor.
pub const REGION_KEY: &[u8] = b"store/region";

/// Default of [`StoreConfig::snapshot_threshold_entries`].
pub const DEFAULT_SNAPSHOT_THRESHOLD_ENTRIES: u64 = 10_000;
/// Default of [`StoreConfig::snapshot_threshold_bytes`]: with the default log budget (8
/// segments of `raft_log::DEFAULT_SEGMENT_SIZE_BYTES`, 128 MiB) three busy regions compact
/// by their own thresholds before the log's purge has to force them.
pub const DEFAULT_SNAPSHOT_THRESHOLD_BYTES: u64 = 32 << 20;
/// Default of [`StoreConfig::log_purge_every_ticks`]: every tick (the check reads one
/// counter; a purge runs only once the log is over its budget), so that however fast
/// segments fill, the log overshoots its budget by at most a tick's writes.
pub const DEFAULT_LOG_PURGE_EVERY_TICKS: u64 = 1;
/// Most store-thread snapshot durations kept for the caller's metrics between two reads.
const MAX_SNAPSHOT_DURATIONS_KEPT: usize = 1024;

/// Tunables of a store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub store_id: StoreId,
    pub election_tick: u32,
    pub heartbeat_tick: u32,
    /// Snapshot a region (and compact its log) once this many applied entries sit in its log
    /// and they are large enough next to the state (see [`SNAPSHOT_AMORTIZATION`]; a log of
    /// [`SNAPSHOT_MAX_ENTRIES_FACTOR`] times this many entries is compacted regardless)...
    pub snapshot_threshold_entries: u64,
    /// ...or once the entries applied since its last snapshot carry this many payload bytes.
    pub snapshot_threshold_bytes: u64,
    /// Proposals plus reads waiting in one region before new ones are refused with `Busy`.
    pub max_pending_per_region: usize,
    /// How linearizable reads are confirmed.
    pub read_mode: ReadMode,
    /// Engine configuration (segment size, recovery mode).
    pub engine: raft_log::Config,
    /// Every this many ticks, a leader hands each region it leads to the region's preferred
    /// replica when that replica is fully caught up (0 = never). See
    /// [`Store::balance_leaders`].
    pub balance_leaders_every_ticks: u64,
    /// Every this many ticks the store checks whether its log outgrew its budget and if so
    /// reclaims space ([`Store::reclaim_log`]; 0 = never, for tests of the engine alone).
    pub log_purge_every_ticks: u64,
    /// Chunk size of snapshots sent to followers (the core's default; the simulator makes it
    /// small so that transfers take many round trips and crashes cut them).
    pub snapshot_chunk_bytes: u64,
}

impl StoreConfig {
    pub fn new(store_id: u64) -> StoreConfig {
        StoreConfig {
            store_id: StoreId(store_id),
            election_tick: 10,
            heartbeat_tick: 2,
            snapshot_threshold_entries: DEFAULT_SNAPSHOT_THRESHOLD_ENTRIES,
            snapshot_threshold_bytes: DEFAULT_SNAPSHOT_THRESHOLD_BYTES,
            max_pending_per_region: 10_000,
            read_mode: ReadMode::Safe,
            engine: raft_log::Config::default(),
            balance_leaders_every_ticks: 0,
            log_purge_every_ticks: DEFAULT_LOG_PURGE_EVERY_TICKS,
            snapshot_chunk_bytes: Config::new(1, 1).snapshot_chunk_bytes,
        }
    }
}

/// A Ready round between [`Store::prepare_ready`] and [`Store::finish_ready`] (or
/// [`Store::submit_ready`]): the staged log write, and per region the messages that wait
/// for it and what to report to Raft once it is durable.
#[must_use = "a prepared Ready round must be finished with Store::finish_ready or submit_ready"]
pub struct PendingWrite {
    batch: LogBatch,
    held: Vec<Held>,
    groups: u64,
    /// Whether the write must be durable before the round's messages go out: log entries,
    /// a snapshot, or a new term or vote. A hard state whose only change is the commit index
    /// is written without an fdatasync (as etcd does): the commit index is a hint that a
    /// restarted replica re-learns from its leader, and what was committed is durable in the
    /// quorum's logs, not in anyone's commit index. The next synced write makes it durable
    /// anyway (the log is one sequential file).
    must_sync: bool,
}

/// One region's part of a round that waits for the round's write.
struct Held {
    region: RegionId,
    messages: Vec<Message>,
    persisted: Persisted,
    /// Term and vote of the hard state this round writes, if it writes one.
    term_vote: Option<(Term, NodeId)>,
}

/// A round whose write is not known durable yet.
struct InFlight {
    write: RoundWrite,
    held: Vec<Held>,
    synced: bool,
    submitted: std::time::Instant,
}

enum RoundWrite {
    /// Queued by [`Store::queue_ready`]: written when the caller says so.
    Staged { batch: LogBatch, sync: bool },
    /// Handed to the engine's writer thread by [`Store::submit_ready`].
    Submitted(raft_log::WriteFuture),
    /// Known durable, waiting for the rounds before it.
    Durable,
}

/// Write latencies kept for [`Store::take_write_latencies`] between two calls.
const MAX_WRITE_LATENCIES_KEPT: usize = 4096;

/// Most rounds in flight at once; the next round waits for the oldest (a bound on memory
/// and on how far the state machines run ahead of the disk).
pub const MAX_WRITES_IN_FLIGHT: usize = 64;

/// Identifies a request handed to the store; its result comes back as a [`Completion`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub u64);

/// What a completed request produced.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply<M: StateMachine> {
    /// A proposal was applied.
    Applied(M::Output),
    /// A proposal was committed as an entry the state machine does not see (never for
    /// client proposals; kept total).
    Empty,
    /// A read was served.
    Read(M::ReadOutput),
}

/// The outcome of a proposal or read.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion<M: StateMachine> {
    pub ticket: Ticket,
    pub result: Result<Reply<M>, StoreError>,
}

struct PendingRead<Q> {
    ticket: Ticket,
    query: Q,
    /// Set once the ReadIndex round answered: serve when applied reaches it.
    index: Option<LogIndex>,
}

/// One region replica.
struct Peer<M: StateMachine> {
    region: Region,
    raw: RawNode<GroupStorage>,
    sm: M,
    applied: LogIndex,
    /// Proposals in log order: (index, term, ticket).
    proposals: VecDeque<(LogIndex, Term, Ticket)>,
    reads: Vec<PendingRead<M::Query>>,
    /// Payload bytes applied since the last snapshot (the log's growth, approximately).
    bytes_since_snapshot: u64,
    /// Size of the state machine's serialized state at the last snapshot made or installed
    /// (0 before any): what the next snapshot will cost, about (see [`Peer::wants_snapshot`]).
    last_snapshot_bytes: u64,
    /// A snapshot of this region is being built (see [`crate::snapshot_job`]): the value of
    /// `bytes_since_snapshot` when its view was taken, which its commit subtracts.
    building_snapshot: Option<u64>,
    /// A snapshot being received from the leader, chunk by chunk into its file, and when its
    /// first chunk came (see [`Store::receive_snapshot_chunks`]).
    receiving: Option<(SnapshotReceiver, std::time::Instant)>,
    /// Term and vote of the last hard state known durable (not merely staged): a leader's
    /// messages may leave before their round's write only while the term and vote they
    /// speak for are on disk (a single-voter leader wins inside `campaign`, before the
    /// round that records its term is durable).
    durable_term_vote: (Term, NodeId),
}

/// A snapshot serializes the whole state, so past the entry threshold a region also waits
/// until its log has grown by 1/`SNAPSHOT_AMORTIZATION` of the last snapshot's size: about
/// this many bytes of state serialized per byte of log compacted (the next snapshot is the
/// last one plus what the log added, so up to one more under pure inserts). The byte
/// threshold and [`SNAPSHOT_MAX_ENTRIES_FACTOR`] still snapshot sooner. With a fixed entry
/// count alone, a large region was serialized again every few MiB of writes (loading 1M keys:
/// 33 snapshots per region of up to ~35 MiB each, in the store thread, stalling every region
/// of the store).
pub const SNAPSHOT_AMORTIZATION: u64 = 4;
/// However large the state, a log this many times `snapshot_threshold_entries` long is
/// compacted: the log's entries live in memory.
pub const SNAPSHOT_MAX_ENTRIES_FACTOR: u64 = 10;

impl<M: StateMachine> Peer<M> {
    /// Whether the log has grown enough to be worth a snapshot (see [`SNAPSHOT_AMORTIZATION`]):
    /// past the byte threshold, or past the entry threshold and large enough next to the state
    /// it would serialize, or far past the entry threshold whatever the state.
    fn wants_snapshot(&self, cfg: &StoreConfig) -> bool {
        let first = self.raw.status().first_index;
        let entries_in_log = (self.applied.0 + 1).saturating_sub(first.0);
        self.bytes_since_snapshot >= cfg.snapshot_threshold_bytes
            || (entries_in_log >= cfg.snapshot_threshold_entries
                && self.bytes_since_snapshot >= self.last_snapshot_bytes / SNAPSHOT_AMORTIZATION)
            || entries_in_log
                >= cfg
                    .snapshot_threshold_entries
                    .saturating_mul(SNAPSHOT_MAX_ENTRIES_FACTOR)
    }

    /// Takes a view of the state machine at the applied index for a snapshot built off the
    /// store thread (see [`crate::snapshot_job`]); None when one is already being built,
    /// nothing was applied since the last snapshot, or the applied index is not durable in
    /// this replica's own log yet (with writes in flight a replica may apply committed
    /// entries before its copy is written; the snapshot's term must come from the entry on
    /// disk, and the log it compacts must reach it).
    fn start_snapshot(
        &mut self,
        dir: &Path,
        fs: &Arc<dyn FileSystem>,
    ) -> Result<Option<SnapshotJob<M>>, StoreError> {
        if self.building_snapshot.is_some()
            || self.applied < self.raw.status().first_index
            || self.applied > self.raw.persisted_index()
        {
            return Ok(None);
        }
        let started = std::time::Instant::now();
        let term = self.raw.storage().snapshot_term(self.applied)?;
        let view = self.sm.view();
        self.building_snapshot = Some(self.bytes_since_snapshot);
        Ok(Some(SnapshotJob::new(
            self.region.id,
            self.applied,
            term,
            self.raw.status().conf_state,
            view,
            dir.to_path_buf(),
            fs.clone(),
            started.elapsed(),
        )))
    }
}

/// Counters for status pages and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Ready rounds that wrote something, and the engine writes they used (one each).
    pub write_rounds: u64,
    /// Those of them that ended with an fdatasync.
    pub synced_rounds: u64,
    /// Groups whose entries or hard state were in those rounds, summed.
    pub groups_written: u64,
    pub entries_applied: u64,
    pub snapshots_created: u64,
    pub snapshots_installed: u64,
    /// Snapshot chunks received and written to their file, and transfers given up before
    /// their install (a newer transfer started, or the log caught up instead).
    pub snapshot_chunks_received: u64,
    pub snapshot_transfers_dropped: u64,
    /// A gauge: data bytes written so far of the transfers not yet installed or dropped.
    pub snapshot_receiving_bytes: u64,
    /// Of the snapshots created, those made because the log's purge asked for them (a
    /// region pinning old segments with too much live log to copy forward).
    pub snapshots_for_log_space: u64,
    /// Snapshots built but not committed: a newer one was installed (or the region left)
    /// while they were being built.
    pub snapshots_overtaken: u64,
    /// Messages for unknown regions or peers, dropped.
    pub messages_dropped: u64,
    /// Log purges run, and what they did.
    pub log_purges: u64,
    pub log_segments_deleted: u64,
    pub log_bytes_deleted: u64,
    pub log_groups_rewritten: u64,
    pub log_bytes_rewritten: u64,
}

/// Status of one region replica, for `raftkv status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionStatus {
    pub region: Region,
    pub role: Role,
    pub leader: Option<StoreId>,
    pub term: Term,
    pub commit: LogIndex,
    pub applied: LogIndex,
    pub first_index: LogIndex,
    pub last_index: LogIndex,
}

pub struct Store<M: StateMachine> {
    cfg: StoreConfig,
    engine: Arc<LogEngine>,
    fs: Arc<dyn FileSystem>,
    snap_dir: PathBuf,
    peers: BTreeMap<RegionId, Peer<M>>,
    next_ticket: u64,
    completions: Vec<Completion<M>>,
    outbox: Vec<(StoreId, Message)>,
    ticks: u64,
    /// Rounds submitted with [`Store::submit_ready`], oldest first.
    in_flight: VecDeque<InFlight>,
    /// A round was prepared and its write not yet started or queued.
    round_prepared: bool,
    /// Start-to-durable times of synced round writes, for the caller's metrics.
    write_latencies: Vec<std::time::Duration>,
    /// How long each snapshot made here held the store thread, for the caller's metrics.
    snapshot_durations: Vec<std::time::Duration>,
    /// Serialize and write times of the snapshots made, for the caller's metrics.
    snapshot_build_times: Vec<(std::time::Duration, std::time::Duration)>,
    /// Of each snapshot received: first chunk to installed, and the install alone (checking
    /// and syncing the file, replacing the log, restoring the state machine from the file).
    snapshot_receive_times: Vec<(std::time::Duration, std::time::Duration)>,
    /// Snapshot work (jobs started, older files to remove) not yet handed to a builder
    /// ([`Store::take_snapshot_work`]).
    snapshot_work: Vec<SnapshotWork<M>>,
    /// Jobs out (queued here, building, or built and not yet committed); at most
    /// [`MAX_SNAPSHOTS_BUILDING`].
    snapshots_building: usize,
    /// Built snapshots waiting for a moment with no log write in flight to be committed.
    snapshots_built: Vec<BuiltSnapshot>,
    /// Snapshots committed by an unsynced write: their groups' older files are removed once a
    /// later round's fdatasync made the commit durable (see [`Store::finish_round`]).
    snapshots_unsynced: Vec<raft_log::PreparedSnapshot>,
    /// Regions the log's purge asked to compact, snapshotted as soon as snapshots are
    /// allowed (see [`Store::reclaim_log`]).
    compact_wanted: BTreeSet<RegionId>,
    /// The waker of the last [`Store::submit_ready`] or [`Store::poll_writes`]: while the disk
    /// is full, [`Store::finish_ready`] hands its round to the engine's writer with it
    /// instead of blocking the store thread until space is freed.
    write_waker: Option<std::task::Waker>,
    /// The segment count at which the last purge reclaimed nothing (see
    /// [`Store::reclaim_log`]).
    fruitless_purge_at: Option<usize>,
    pub stats: StoreStats,
}

/// Waits for a write future on this thread (rare paths: a full pipeline, a snapshot).
fn block_on(write: &mut raft_log::WriteFuture) -> Result<u64, StoreError> {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    loop {
        if let std::task::Poll::Ready(r) = std::pin::Pin::new(&mut *write).poll(&mut cx) {
            return Ok(r?);
        }
        std::thread::park();
    }
}

fn engine_group(id: RegionId) -> raft_log::GroupId {
    raft_log::GroupId(id.0)
}

impl<M: StateMachine> Store<M> {
    /// Opens the store in `dir`. On the first start (no groups in the log) it bootstraps the
    /// replicas of `initial_regions` that have a peer on this store; afterwards
    /// `initial_regions` is ignored and the regions come from the log.
    pub fn open(
        dir: &Path,
        fs: Arc<dyn FileSystem>,
        cfg: StoreConfig,
        initial_regions: &[Region],
    ) -> Result<Store<M>, StoreError> {
        if cfg.election_tick <= cfg.heartbeat_tick {
            return Err(StoreError::Config(format!(
                "election_tick ({}) must exceed heartbeat_tick ({})",
                cfg.election_tick, cfg.heartbeat_tick
            )));
        }
        let engine = Arc::new(LogEngine::open(
            dir.join("log"),
            cfg.engine.clone(),
            fs.clone(),
        )?);
        let mut store = Store {
            snap_dir: dir.join("snap"),
            cfg,
            engine,
            fs,
            peers: BTreeMap::new(),
            next_ticket: 1,
            completions: Vec::new(),
            outbox: Vec::new(),
            ticks: 0,
            in_flight: VecDeque::new(),
            round_prepared: false,
            write_latencies: Vec::new(),
            snapshot_durations: Vec::new(),
            snapshot_receive_times: Vec::new(),
            snapshot_build_times: Vec::new(),
            snapshot_work: Vec::new(),
            snapshots_building: 0,
            snapshots_built: Vec::new(),
            snapshots_unsynced: Vec::new(),
            compact_wanted: BTreeSet::new(),
            write_waker: None,
            fruitless_purge_at: None,
            stats: StoreStats::default(),
        };
        let groups = store.engine.groups();
        if groups.is_empty() {
            for r in initial_regions {
                if r.peer_on(store.cfg.store_id).is_some() {
                    store.bootstrap_region(r)?;
                }
            }
        }
        for g in store.engine.groups() {
            let Some(raw) = store.engine.get_state(g, REGION_KEY) else {
                continue; // a group without a descriptor is not a region of ours
            };
            let region = Region::decode(&raw).map_err(|e| {
                StoreError::Storage(format!("region descriptor of group {}: {e}", g.0))
            })?;
            store.open_peer(region)?;
        }
        Ok(store)
    }

    fn bootstrap_region(&mut self, r: &Region) -> Result<(), StoreError> {
        let mut storage = GroupStorage::open(
            self.engine.clone(),
            engine_group(r.id),
            &self.snap_dir,
            self.fs.clone(),
        )?;
        // Founding replicas start from a snapshot at INIT_LOG_INDEX holding the membership
        // (see raft::MemStorage::new_bootstrap).
        storage.apply_snapshot(Snapshot {
            metadata: SnapshotMetadata {
                index: INIT_LOG_INDEX,
                term: INIT_TERM,
                conf_state: ConfState {
                    voters: r.peers.iter().map(|p| p.id).collect(),
                    ..Default::default()
                },
            },
            data: M::empty(r).snapshot(),
        })?;
        storage.set_hard_state(HardState {
            term: INIT_TERM,
            vote: NodeId::NONE,
            commit: INIT_LOG_INDEX,
        })?;
        self.write_region(r)?;
        Ok(())
    }

    fn write_region(&self, r: &Region) -> Result<(), StoreError> {
        let mut b = LogBatch::new();
        b.put_state(engine_group(r.id), REGION_KEY, &r.encode());
        self.engine.write(&mut b, true)?;
        Ok(())
    }

    fn open_peer(&mut self, region: Region) -> Result<(), StoreError> {
        let me = region.peer_on(self.cfg.store_id).ok_or_else(|| {
            StoreError::Storage(format!(
                "region {} has no peer on store {}",
                region.id, self.cfg.store_id
            ))
        })?;
        let storage = GroupStorage::open(
            self.engine.clone(),
            engine_group(region.id),
            &self.snap_dir,
            self.fs.clone(),
        )?;
        let snap =
            raft::Storage::snapshot(&storage).map_err(|e| StoreError::Storage(e.to_string()))?;
        let sm = if snap.data.is_empty() {
            M::empty(&region)
        } else {
            M::restore(&snap.data).map_err(|e| {
                StoreError::Storage(format!("snapshot of region {}: {e}", region.id))
            })?
        };
        let mut rc = Config::new(me.id.0, region.id.0);
        rc.election_tick = self.cfg.election_tick;
        rc.heartbeat_tick = self.cfg.heartbeat_tick;
        // The lease's safety margin against clock-rate drift and tick quantization: a fifth of
        // the election timeout (at least the core's default of 2 ticks). With the server's 20
        // ticks the lease is 16 ticks, which tolerates a follower clock ~10 % fast even after
        // losing a tick on each side to quantization.
        rc.lease_drift_ticks = (self.cfg.election_tick / 5).max(2);
        rc.applied = snap.metadata.index;
        // A received snapshot goes to its file chunk by chunk, never whole into memory.
        rc.stream_snapshot_chunks = true;
        rc.snapshot_chunk_bytes = self.cfg.snapshot_chunk_bytes;
        // Different stores must not time out in lockstep.
        rc.seed = me.id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ self.cfg.store_id.0;
        let durable = storage.hard_state();
        let raw = RawNode::new(&rc, storage).map_err(|e| StoreError::Storage(e.to_string()))?;
        self.peers.insert(
            region.id,
            Peer {
                applied: snap.metadata.index,
                region,
                raw,
                sm,
                proposals: VecDeque::new(),
                reads: Vec::new(),
                bytes_since_snapshot: 0,
                last_snapshot_bytes: snap.data.len() as u64,
                building_snapshot: None,
                receiving: None,
                durable_term_vote: (durable.term, durable.vote),
            },
        );
        Ok(())
    }

    pub fn id(&self) -> StoreId {
        self.cfg.store_id
    }

    pub fn regions(&self) -> Vec<Region> {
        self.peers.values().map(|p| p.region.clone()).collect()
    }

    /// The region of this store containing `key`, if any.
    pub fn region_for_key(&self, key: &[u8]) -> Option<Region> {
        self.peers
            .values()
            .find(|p| p.region.contains(key))
            .map(|p| p.region.clone())
    }

    pub fn status(&self) -> Vec<RegionStatus> {
        self.peers
            .values()
            .map(|p| {
                let st = p.raw.status();
                let leader = p.region.peer(st.soft_state.leader).map(|l| l.store);
                RegionStatus {
                    region: p.region.clone(),
                    role: st.soft_state.role,
                    leader,
                    term: st.hard_state.term,
                    commit: st.hard_state.commit,
                    applied: p.applied,
                    first_index: st.first_index,
                    last_index: st.last_index,
                }
            })
            .collect()
    }

    /// Makes the replica of `region` campaign now (bootstrap, tests, leader placement).
    pub fn campaign(&mut self, region: RegionId) {
        if let Some(p) = self.peers.get_mut(&region) {
            p.raw.campaign();
        }
    }

    /// Asks this store's replica of `region` (if it leads) to hand leadership to the
    /// replica on store `to`.
    pub fn transfer_leader(&mut self, region: RegionId, to: StoreId) -> Result<(), StoreError> {
        let p = self
            .peers
            .get_mut(&region)
            .ok_or(StoreError::RegionNotFound(region))?;
        let target = p
            .region
            .peer_on(to)
            .ok_or(StoreError::RegionNotFound(region))?;
        p.raw.transfer_leader(target.id).map_err(|e| match e {
            raft::TransferError::NotLeader { leader } => StoreError::NotLeader {
                region,
                leader: leader.and_then(|l| p.region.peer(l)),
            },
            other => StoreError::Proposal(other.to_string()),
        })
    }

    /// One tick of every replica's clock, and the store's periodic work (leader balancing,
    /// log reclamation). An error is a storage error: fatal, as for a round's write.
    pub fn tick(&mut self) -> Result<(), StoreError> {
        for p in self.peers.values_mut() {
            p.raw.tick();
        }
        self.ticks += 1;
        let every = self.cfg.balance_leaders_every_ticks;
        if every > 0 && self.ticks.is_multiple_of(every) {
            self.balance_leaders();
        }
        let every = self.cfg.log_purge_every_ticks;
        if every > 0
            && self.ticks.is_multiple_of(every)
            && self.engine.wants_purge()
            && self.fruitless_purge_at != Some(self.engine.segment_count())
        {
            self.reclaim_log()?;
        }
        Ok(())
    }

    /// Keeps the log within its budget: the engine deletes segments nothing live is left
    /// in and copies small regions' live entries out of old ones (`LogEngine::purge`); the
    /// regions it names as too large to copy are snapshotted here, which compacts their log
    /// and frees those segments at a later purge. So an idle region, or one whose own
    /// snapshot thresholds are far off, cannot pin the whole log.
    pub fn reclaim_log(&mut self) -> Result<(), StoreError> {
        let report = self.engine.purge()?;
        // A purge that freed and copied nothing is not repeated until the log has another
        // segment: a region it names may be unable to compact for a while (its pinning
        // entries not yet applied), and each purge holds the engine's writer.
        self.fruitless_purge_at = (report.segments_deleted == 0 && report.groups_rewritten == 0)
            .then(|| self.engine.segment_count());
        self.stats.log_purges += 1;
        self.stats.log_segments_deleted += report.segments_deleted as u64;
        self.stats.log_bytes_deleted += report.bytes_deleted;
        self.stats.log_groups_rewritten += report.groups_rewritten as u64;
        self.stats.log_bytes_rewritten += report.bytes_rewritten;
        for group in report.groups_to_compact {
            let region = raft::GroupId(group.0);
            if self.peers.contains_key(&region) {
                self.compact_wanted.insert(region);
            }
        }
        self.compact_requested()
    }

    /// Starts snapshots of the regions the log's purge asked to compact, as far as the
    /// limit on snapshots building allows; the rest wait for the next call.
    fn compact_requested(&mut self) -> Result<(), StoreError> {
        for region in std::mem::take(&mut self.compact_wanted) {
            if !self.peers.contains_key(&region) {
                continue;
            }
            if self.start_snapshot(region)? {
                self.stats.snapshots_for_log_space += 1;
            } else {
                let p = &self.peers[&region];
                if p.applied > p.raw.persisted_index()
                    || p.building_snapshot.is_some()
                    || self.snapshots_building >= MAX_SNAPSHOTS_BUILDING
                {
                    // Not yet possible: next time.
                    self.compact_wanted.insert(region);
                }
            }
        }
        Ok(())
    }

    /// Starts a snapshot of `region` if one may start now (see [`Peer::start_snapshot`] and
    /// [`MAX_SNAPSHOTS_BUILDING`]); returns whether it did.
    fn start_snapshot(&mut self, region: RegionId) -> Result<bool, StoreError> {
        if self.snapshots_building >= MAX_SNAPSHOTS_BUILDING {
            return Ok(false);
        }
        let Some(p) = self.peers.get_mut(&region) else {
            return Ok(false);
        };
        match p.start_snapshot(&self.snap_dir, &self.fs)? {
            Some(job) => {
                self.snapshots_building += 1;
                self.snapshot_work.push(SnapshotWork::Build(job));
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The snapshot work since the last call, for the caller's
    /// [`SnapshotBuilder`](crate::SnapshotBuilder); each build must come back through
    /// [`Store::finish_snapshot`].
    pub fn take_snapshot_work(&mut self) -> Vec<SnapshotWork<M>> {
        std::mem::take(&mut self.snapshot_work)
    }

    /// A snapshot job is done: it is committed (published, the log compacted to it) now if
    /// no log write is in flight, else once none is. An I/O error other than a full disk,
    /// in the job or in the commit, is fatal as for any log write.
    pub fn finish_snapshot(&mut self, built: BuiltSnapshot) -> Result<(), StoreError> {
        self.snapshots_built.push(built);
        self.commit_snapshots()
    }

    /// Builds every started snapshot on this thread and commits it (tests, and callers with
    /// no builder of their own).
    pub fn build_snapshots_here(&mut self) -> Result<usize, StoreError> {
        let work = self.take_snapshot_work();
        let n = work.len();
        for w in work {
            if let Some(built) = w.run() {
                self.finish_snapshot(built)?;
            }
        }
        Ok(n)
    }

    /// Commits the built snapshots, if no log write is in flight (see
    /// [`Store::snapshots_allowed`]).
    fn commit_snapshots(&mut self) -> Result<(), StoreError> {
        if self.snapshots_built.is_empty() || !self.snapshots_allowed() {
            return Ok(());
        }
        for built in std::mem::take(&mut self.snapshots_built) {
            assert!(
                self.snapshots_building > 0,
                "snapshot of region {} finished but none was building",
                built.region
            );
            self.snapshots_building -= 1;
            let started = std::time::Instant::now();
            let Some(p) = self.peers.get_mut(&built.region) else {
                // The region left this store meanwhile.
                if let Ok(prepared) = &built.file {
                    raft_log::discard_snapshot(self.fs.as_ref(), prepared);
                }
                self.stats.snapshots_overtaken += 1;
                continue;
            };
            let base = p.building_snapshot.take().unwrap_or_else(|| {
                panic!(
                    "snapshot of region {} built but the region was not building one",
                    built.region
                )
            });
            // Overtaken first: a snapshot installed meanwhile may have removed this one's
            // file under it, so its error would mean nothing.
            if !p.raw.storage().can_commit_snapshot(built.index, built.term) {
                if let Ok(prepared) = &built.file {
                    raft_log::discard_snapshot(self.fs.as_ref(), prepared);
                }
                self.stats.snapshots_overtaken += 1;
                continue;
            }
            let prepared = match built.file {
                Ok(prepared) => prepared,
                // The file did not fit (it was removed; the log is unchanged): the log stays
                // as it is, and the next round past the thresholds tries again.
                Err(e) if e.is_no_space() => continue,
                Err(e) => return Err(e.into()),
            };
            match p
                .raw
                .storage_mut()
                .commit_prepared(&prepared, built.conf_state)
            {
                Ok(committed) => {
                    assert!(
                        committed,
                        "snapshot of region {} at {} could be committed and then could not",
                        built.region, built.index
                    );
                    self.snapshots_unsynced.push(prepared);
                }
                Err(e) if e.is_no_space() => {
                    raft_log::discard_snapshot(self.fs.as_ref(), &prepared);
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            p.bytes_since_snapshot = p.bytes_since_snapshot.saturating_sub(base);
            p.last_snapshot_bytes = built.data_bytes;
            self.stats.snapshots_created += 1;
            // Bounded: a caller that never reads them (the simulations) keeps only the first.
            if self.snapshot_durations.len() < MAX_SNAPSHOT_DURATIONS_KEPT {
                self.snapshot_durations
                    .push(built.stall + started.elapsed());
                self.snapshot_build_times
                    .push((built.serialize, built.write));
            }
        }
        Ok(())
    }

    /// How long each snapshot made since the last call held the store thread (taking its
    /// view, then publishing it and compacting the log).
    pub fn take_snapshot_durations(&mut self) -> Vec<std::time::Duration> {
        std::mem::take(&mut self.snapshot_durations)
    }

    /// Regions receiving a snapshot right now (a transfer started and not yet installed).
    pub fn snapshots_receiving(&self) -> usize {
        self.peers
            .values()
            .filter(|p| p.receiving.is_some())
            .count()
    }

    /// Of each snapshot received since the last call: how long from its first chunk to its
    /// install, and how long the install took (on the store thread).
    pub fn take_snapshot_receive_times(
        &mut self,
    ) -> Vec<(std::time::Duration, std::time::Duration)> {
        std::mem::take(&mut self.snapshot_receive_times)
    }

    /// How long each snapshot made since the last call took to serialize, and to write and
    /// sync, off the store thread.
    pub fn take_snapshot_build_times(&mut self) -> Vec<(std::time::Duration, std::time::Duration)> {
        std::mem::take(&mut self.snapshot_build_times)
    }

    /// Static leader balancing until placement exists: each region prefers the replica at
    /// position `(region id - 1) mod replicas` of its peer list, which spreads the leaders of
    /// pre-split regions over the stores (region 1 on the first, region 2 on the second, ...).
    /// A store leading a region it is not preferred for transfers leadership to the preferred
    /// replica, but only once that replica holds the leader's whole log (so it is alive and the
    /// transfer is immediate). Without this, whichever store won the first elections led every
    /// region and did all the client work (measured: one store at 63 % of a core, the others
    /// idle, during 64-client reads). Returns how many transfers it started.
    pub fn balance_leaders(&mut self) -> usize {
        let me = self.cfg.store_id;
        let mut started = 0;
        for p in self.peers.values_mut() {
            if p.raw.role() != Role::Leader || p.region.peers.is_empty() {
                continue;
            }
            let slot = (p.region.id.0.saturating_sub(1) % p.region.peers.len() as u64) as usize;
            let preferred = p.region.peers[slot];
            if preferred.store == me {
                continue;
            }
            if p.raw.follower_match(preferred.id) == Some(p.raw.last_index())
                && p.raw.transfer_leader(preferred.id).is_ok()
            {
                started += 1;
            }
        }
        started
    }

    /// Routes a message from another store to the replica of its region.
    pub fn step(&mut self, m: Message) -> Result<(), StoreError> {
        let Some(p) = self.peers.get_mut(&m.group) else {
            self.stats.messages_dropped += 1;
            return Err(StoreError::RegionNotFound(m.group));
        };
        if let Err(e) = p.raw.step(m) {
            self.stats.messages_dropped += 1;
            return Err(StoreError::Proposal(e.to_string()));
        }
        Ok(())
    }

    /// Refuses a request routed to the wrong region, epoch or key range.
    fn check_route(
        &self,
        region: RegionId,
        epoch: RegionEpoch,
        key: &[u8],
    ) -> Result<&Peer<M>, StoreError> {
        let p = self
            .peers
            .get(&region)
            .ok_or(StoreError::RegionNotFound(region))?;
        if p.region.epoch != epoch {
            return Err(StoreError::EpochNotMatch {
                current: Box::new(p.region.clone()),
            });
        }
        if !p.region.contains(key) {
            return Err(StoreError::KeyNotInRegion { region });
        }
        Ok(p)
    }

    fn check_request(
        &self,
        region: RegionId,
        epoch: RegionEpoch,
        key: &[u8],
    ) -> Result<(), StoreError> {
        let p = self.check_route(region, epoch, key)?;
        if p.proposals.len() + p.reads.len() >= self.cfg.max_pending_per_region {
            return Err(StoreError::Busy {
                region,
                limit: self.cfg.max_pending_per_region,
            });
        }
        Ok(())
    }

    fn ticket(&mut self) -> Ticket {
        let t = Ticket(self.next_ticket);
        self.next_ticket += 1;
        t
    }

    /// Proposes `data` (a state machine command for `key`) on the leader replica of
    /// `region`, routed with `epoch`. The result arrives as a completion once applied.
    pub fn propose(
        &mut self,
        region: RegionId,
        epoch: RegionEpoch,
        key: &[u8],
        data: Bytes,
    ) -> Result<Ticket, StoreError> {
        self.check_request(region, epoch, key)?;
        if self.engine.is_out_of_space() {
            // Refused before proposing (certainly not applied): the log has no room for it.
            // What is already proposed is written once space is freed (the engine holds it).
            return Err(StoreError::NoSpace {
                store: self.cfg.store_id.0,
            });
        }
        let ticket = self.ticket();
        let p = self.peers.get_mut(&region).expect("checked");
        match p.raw.propose(data) {
            Ok(index) => {
                let term = p.raw.term();
                p.proposals.push_back((index, term, ticket));
                Ok(ticket)
            }
            Err(raft::ProposeError::NotLeader { leader }) => Err(StoreError::NotLeader {
                region,
                leader: leader.and_then(|l| p.region.peer(l)),
            }),
            // Retryable refusals get retryable errors: during a leader transfer the
            // transferee is about to lead (leader balancing does this routinely), and the
            // uncommitted-bytes cap is backpressure.
            Err(raft::ProposeError::LeaderTransferring { to }) => Err(StoreError::NotLeader {
                region,
                leader: p.region.peer(to),
            }),
            Err(raft::ProposeError::UncommittedLimit { max, .. }) => Err(StoreError::Busy {
                region,
                limit: usize::try_from(max).unwrap_or(usize::MAX),
            }),
            Err(e) => Err(StoreError::Proposal(e.to_string())),
        }
    }

    /// Starts a linearizable read of `query` (about `key`) on this replica of `region`:
    /// ReadIndex (or a lease, per the config) confirms it, then the state machine answers
    /// once it has applied up to the read index. Followers can serve reads too.
    pub fn read(
        &mut self,
        region: RegionId,
        epoch: RegionEpoch,
        key: &[u8],
        query: M::Query,
    ) -> Result<Ticket, StoreError> {
        self.check_request(region, epoch, key)?;
        let ticket = self.ticket();
        let mode = self.cfg.read_mode;
        let p = self.peers.get_mut(&region).expect("checked");
        let ctx = Bytes::copy_from_slice(&ticket.0.to_le_bytes());
        match p.raw.read_index(ctx, mode) {
            Ok(()) => {
                p.reads.push(PendingRead {
                    ticket,
                    query,
                    index: None,
                });
                Ok(ticket)
            }
            Err(raft::ReadError::NoLeader) => Err(StoreError::NotLeader {
                region,
                leader: None,
            }),
            Err(raft::ReadError::TooManyPending { max }) => {
                Err(StoreError::Busy { region, limit: max })
            }
        }
    }

    /// Writes the chunks of a snapshot being received to its file ([`raft::SnapshotChunk`]):
    /// a chunk at offset 0 starts a new file (dropping an unfinished one), every other chunk
    /// continues the current one where it ended (the core hands them out in order).
    fn receive_snapshot_chunks(
        id: RegionId,
        p: &mut Peer<M>,
        chunks: &[raft::SnapshotChunk],
        stats: &mut StoreStats,
    ) -> Result<(), StoreError> {
        for chunk in chunks {
            if chunk.offset == 0 {
                if let Some((old, _)) = p.receiving.take() {
                    stats.snapshot_receiving_bytes -= old.received();
                    old.discard();
                    stats.snapshot_transfers_dropped += 1;
                }
                let receiver = p.raw.storage().receive_snapshot(
                    chunk.metadata.clone(),
                    chunk.total_bytes,
                    chunk.checksum,
                )?;
                p.receiving = Some((receiver, std::time::Instant::now()));
            }
            let (receiver, _) = p.receiving.as_mut().unwrap_or_else(|| {
                panic!("region {id}: snapshot chunk {chunk:?} without a transfer started")
            });
            assert!(
                receiver.metadata() == &chunk.metadata && receiver.received() == chunk.offset,
                "region {id}: snapshot chunk {chunk:?} does not continue {:?} at {}",
                receiver.metadata(),
                receiver.received()
            );
            receiver.write(&chunk.data)?;
            stats.snapshot_chunks_received += 1;
            stats.snapshot_receiving_bytes += chunk.data.len() as u64;
        }
        Ok(())
    }

    pub fn has_ready(&self) -> bool {
        self.peers.values().any(|p| p.raw.has_ready())
    }

    /// Handles every replica's Ready in one round: [`Store::prepare_ready`] then
    /// [`Store::finish_ready`]. Callers that can send messages and answer requests between
    /// the two (the server) should call them separately: a write then costs one fsync on its
    /// critical path instead of up to three.
    pub fn process_ready(&mut self) -> Result<(), StoreError> {
        let pending = self.prepare_ready()?;
        self.finish_ready(pending)
    }

    /// First half of a Ready round, everything that need not wait for this round's log write:
    /// - every region's entries and hard state are staged into one [`PendingWrite`];
    /// - a **leader's** messages go to the outbox now. Raft allows a leader to replicate
    ///   entries before they are durable on its own disk (thesis §10.2.1): the core counts the
    ///   leader's own copy towards commit only once `advance` reports it persisted, so no
    ///   message can claim a commit that is not durable on a quorum. A leader's Ready never
    ///   changes term or vote (checked); when it would, its messages wait like anyone's;
    /// - committed entries are applied and their requests completed, and ready reads are
    ///   served: committed entries are already durable on a quorum (for a follower they may
    ///   not yet be on its own disk, which only matters to its in-memory state machine, rebuilt
    ///   from disk on restart).
    ///
    /// Every other message (votes, append responses) waits for [`Store::finish_ready`], after
    /// the write is durable.
    pub fn prepare_ready(&mut self) -> Result<PendingWrite, StoreError> {
        if self
            .peers
            .values()
            .any(|p| p.raw.has_snapshot_to_hand_out())
        {
            // A received snapshot replaces the log with its own synced write, which must
            // come after every write staged before it (rare: wait for them).
            self.wait_writes()?;
        }
        let mut pending = PendingWrite {
            batch: LogBatch::new(),
            held: Vec::new(),
            groups: 0,
            must_sync: false,
        };
        self.round_prepared = true;
        for (id, p) in self.peers.iter_mut() {
            if !p.raw.has_ready() {
                continue;
            }
            let mut rd = p.raw.ready();
            Self::receive_snapshot_chunks(*id, p, &rd.snapshot_chunks, &mut self.stats)?;
            if let Some(snap) = &rd.snapshot {
                // Rare and large: written on its own (file + metadata, synced) before the rest.
                let install_started = std::time::Instant::now();
                let (receiver, first_chunk) = p.receiving.take().unwrap_or_else(|| {
                    panic!(
                        "region {id}: snapshot {:?} handed out without its chunks",
                        snap.metadata
                    )
                });
                assert_eq!(
                    receiver.metadata(),
                    &snap.metadata,
                    "region {id}: the snapshot handed out is not the one received"
                );
                let data_bytes = receiver.data_len();
                self.stats.snapshot_receiving_bytes -= receiver.received();
                p.raw.storage_mut().install_received(receiver)?;
                // Restored from the file just written (read back once, checksum verified).
                let installed = raft::Storage::snapshot(p.raw.storage())
                    .map_err(|e| StoreError::Storage(format!("region {id}: {e}")))?;
                assert_eq!(
                    installed.metadata, snap.metadata,
                    "region {id}: the installed snapshot is not the one received"
                );
                p.sm = M::restore(&installed.data).map_err(|e| {
                    StoreError::Storage(format!("received snapshot of region {id}: {e}"))
                })?;
                drop(installed);
                p.applied = snap.metadata.index;
                p.last_snapshot_bytes = data_bytes;
                p.bytes_since_snapshot = 0;
                self.stats.snapshots_installed += 1;
                if self.snapshot_receive_times.len() < MAX_SNAPSHOT_DURATIONS_KEPT {
                    self.snapshot_receive_times
                        .push((first_chunk.elapsed(), install_started.elapsed()));
                }
                // Installing a snapshot may clean the group's state keys: restore ours at
                // once (not in this round's write, which may land later: a crash in between
                // would leave a group the store no longer knows as its region).
                let mut b = LogBatch::new();
                b.put_state(engine_group(*id), REGION_KEY, &p.region.encode());
                self.engine.write(&mut b, true)?;
            } else if p
                .receiving
                .as_ref()
                .is_some_and(|(r, _)| r.metadata().index <= p.raw.commit_index())
            {
                // The log got there first (or the snapshot was older than what we have, or its
                // last entry was in our log already): nothing to install.
                if let Some((receiver, _)) = p.receiving.take() {
                    self.stats.snapshot_receiving_bytes -= receiver.received();
                    receiver.discard();
                    self.stats.snapshot_transfers_dropped += 1;
                }
            }
            let persisted = p.raw.storage().hard_state();
            let after = rd.hard_state.unwrap_or(persisted);
            let early =
                p.raw.role() == Role::Leader && (after.term, after.vote) == p.durable_term_vote;
            let staged = !rd.entries.is_empty() || rd.hard_state.is_some();
            if !rd.entries.is_empty()
                || rd.snapshot.is_some()
                || rd
                    .hard_state
                    .is_some_and(|hs| hs.term != persisted.term || hs.vote != persisted.vote)
            {
                pending.must_sync = true;
            }
            p.raw
                .storage_mut()
                .stage_append(&mut pending.batch, &rd.entries)?;
            if let Some(hs) = rd.hard_state {
                p.raw.storage_mut().stage_hard_state(&mut pending.batch, hs);
            }
            if staged {
                pending.groups += 1;
            }
            if early {
                for m in std::mem::take(&mut rd.messages) {
                    match p.region.peer(m.to) {
                        Some(peer) => self.outbox.push((peer.store, m)),
                        None => self.stats.messages_dropped += 1,
                    }
                }
            }
            if let Some(ss) = rd.soft_state {
                if ss.role != Role::Leader {
                    // Reads waiting for this replica's leadership confirmation are gone.
                    for r in p.reads.iter().filter(|r| r.index.is_none()) {
                        self.completions.push(Completion {
                            ticket: r.ticket,
                            result: Err(StoreError::NotLeader {
                                region: *id,
                                leader: p.region.peer(ss.leader),
                            }),
                        });
                    }
                    p.reads.retain(|r| r.index.is_some());
                }
            }
            for e in &rd.committed_entries {
                let result = match e.kind {
                    EntryKind::Normal if e.data.is_empty() => {
                        p.sm.apply_noop(e.index.0);
                        None
                    }
                    EntryKind::Normal => Some(p.sm.apply(e.index.0, &e.data)),
                    EntryKind::ConfChange => {
                        // Membership is static in this version; a committed change still
                        // updates Raft's view.
                        if let Ok(cc) = raft::ConfChange::decode(&e.data) {
                            p.raw.apply_conf_change(&cc);
                        }
                        p.sm.apply_noop(e.index.0);
                        None
                    }
                };
                p.applied = e.index;
                p.bytes_since_snapshot += e.data.len() as u64;
                self.stats.entries_applied += 1;
                while let Some(&(index, term, ticket)) = p.proposals.front() {
                    if index > e.index {
                        break;
                    }
                    p.proposals.pop_front();
                    let ok = index == e.index && term == e.term;
                    self.completions.push(Completion {
                        ticket,
                        result: match (&result, ok) {
                            (Some(r), true) => Ok(Reply::Applied(r.clone())),
                            (None, true) => Ok(Reply::Empty),
                            _ => Err(StoreError::Dropped),
                        },
                    });
                }
            }
            for rs in std::mem::take(&mut rd.read_states) {
                let t = u64::from_le_bytes(rs.context[..8].try_into().unwrap_or([0; 8]));
                if let Some(r) = p.reads.iter_mut().find(|r| r.ticket.0 == t) {
                    r.index = Some(rs.index);
                }
            }
            let applied = p.applied;
            let sm = &p.sm;
            let completions = &mut self.completions;
            p.reads.retain(|r| match r.index {
                Some(i) if i <= applied => {
                    completions.push(Completion {
                        ticket: r.ticket,
                        result: Ok(Reply::Read(sm.read(&r.query))),
                    });
                    false
                }
                _ => true,
            });
            let persisted = p.raw.advance_async(&rd);
            pending.held.push(Held {
                region: *id,
                messages: std::mem::take(&mut rd.messages),
                persisted,
                term_vote: rd.hard_state.map(|hs| (hs.term, hs.vote)),
            });
        }
        Ok(pending)
    }

    /// Second half of a Ready round: one log write with one fsync for all regions, then the
    /// messages that had to wait for it, Raft told it is durable, and snapshots of regions
    /// whose log grew past the threshold. A storage error is fatal for the store (the caller
    /// must stop it): the disk may no longer hold what was acknowledged.
    pub fn finish_ready(&mut self, pending: PendingWrite) -> Result<(), StoreError> {
        if self.engine.is_out_of_space() && !self.in_flight_staged() {
            if let Some(waker) = self.write_waker.clone() {
                // The disk is full: this write may wait in the engine until space is freed.
                // Handed to the engine's writer thread instead, so the store thread goes on
                // serving reads; the round finishes through `poll_writes` like any other.
                return self.submit_ready(pending, &waker);
            }
        }
        // Rounds complete in order: an earlier asynchronous one first.
        self.wait_writes()?;
        let PendingWrite {
            mut batch,
            held,
            groups,
            must_sync,
        } = pending;
        let started = std::time::Instant::now();
        let synced = self.count_write(&batch, groups, must_sync);
        if !batch.is_empty() {
            self.engine.write(&mut batch, must_sync)?;
        }
        self.round_prepared = false;
        self.finish_round(held, synced, started)
    }

    /// The asynchronous second half: hands the round's write to the engine's writer thread
    /// and returns at once. The store goes on (new rounds, applying, answering) while it is
    /// written; [`Store::poll_writes`] finishes the round once durable — its held messages go
    /// out and Raft learns its entries are persisted (a leader counts its own copy towards
    /// commit only then). With [`MAX_WRITES_IN_FLIGHT`] rounds in flight this waits for the
    /// oldest first. `waker` is woken when a write completes.
    pub fn submit_ready(
        &mut self,
        pending: PendingWrite,
        waker: &std::task::Waker,
    ) -> Result<(), StoreError> {
        assert!(
            !self
                .in_flight
                .iter()
                .any(|f| matches!(f.write, RoundWrite::Staged { .. })),
            "submit_ready with queue_ready rounds unwritten: the engine would overtake them"
        );
        let engine = self.engine.clone();
        self.push_round(pending, |batch, sync| {
            let mut write = engine.write_async(batch, sync);
            // Polled once now so the engine knows whom to wake (it may even be done already).
            let mut cx = std::task::Context::from_waker(waker);
            Ok(match std::pin::Pin::new(&mut write).poll(&mut cx) {
                std::task::Poll::Ready(result) => {
                    result?;
                    RoundWrite::Durable
                }
                std::task::Poll::Pending => RoundWrite::Submitted(write),
            })
        })?;
        self.poll_writes(waker)?;
        Ok(())
    }

    /// Puts a prepared round at the end of the rounds in flight (after waiting for room),
    /// its write started by `start` (given the batch and whether it must sync).
    fn push_round(
        &mut self,
        pending: PendingWrite,
        start: impl FnOnce(LogBatch, bool) -> Result<RoundWrite, StoreError>,
    ) -> Result<(), StoreError> {
        if pending.batch.is_empty()
            && self.in_flight.len() >= MAX_WRITES_IN_FLIGHT
            && self.engine.is_out_of_space()
        {
            if let Some(last) = self.in_flight.back_mut() {
                // The disk is full and the rounds in flight wait for space: a round that
                // writes nothing (read confirmations, a leader's heartbeats) finishes right
                // after the last one anyway, so it rides along with it instead of blocking
                // the store thread (and its reads) until space is freed.
                last.held.extend(pending.held);
                self.round_prepared = false;
                return Ok(());
            }
        }
        while self.in_flight.len() >= MAX_WRITES_IN_FLIGHT {
            self.wait_oldest()?;
        }
        let PendingWrite {
            batch,
            held,
            groups,
            must_sync,
        } = pending;
        let synced = self.count_write(&batch, groups, must_sync);
        let write = start(batch, must_sync)?;
        self.in_flight.push_back(InFlight {
            write,
            held,
            synced,
            submitted: std::time::Instant::now(),
        });
        self.round_prepared = false;
        Ok(())
    }

    /// The deferred second half, for a caller that decides when writes happen (the
    /// whole-cluster simulation: a write that completes late, or never because the store
    /// crashed first): the round waits, unwritten, until [`Store::persist_queued`] (or any
    /// wait) writes it; meanwhile the store behaves as with [`Store::submit_ready`]. Not to
    /// be mixed with `submit_ready` (which would write past the queued rounds; it asserts).
    pub fn queue_ready(&mut self, pending: PendingWrite) -> Result<(), StoreError> {
        self.push_round(pending, |batch, sync| {
            Ok(RoundWrite::Staged { batch, sync })
        })
    }

    /// Writes (synchronously) and finishes the `n` oldest rounds in flight; returns how many.
    pub fn persist_queued(&mut self, n: usize) -> Result<usize, StoreError> {
        let mut done = 0;
        while done < n && !self.in_flight.is_empty() {
            self.wait_oldest()?;
            done += 1;
        }
        Ok(done)
    }

    /// Finishes, in order, the submitted rounds whose writes are durable; returns how many.
    /// Stops at a round queued with [`Store::queue_ready`].
    pub fn poll_writes(&mut self, waker: &std::task::Waker) -> Result<usize, StoreError> {
        if !self
            .write_waker
            .as_ref()
            .is_some_and(|known| known.will_wake(waker))
        {
            self.write_waker = Some(waker.clone());
        }
        let mut cx = std::task::Context::from_waker(waker);
        let mut done = 0;
        while let Some(f) = self.in_flight.front_mut() {
            let result = match &mut f.write {
                RoundWrite::Staged { .. } => break,
                RoundWrite::Submitted(write) => match std::pin::Pin::new(write).poll(&mut cx) {
                    std::task::Poll::Pending => break,
                    std::task::Poll::Ready(result) => result.map(|_| ()),
                },
                RoundWrite::Durable => Ok(()),
            };
            // Off the queue before the result is looked at: a finished future is never
            // polled again, even after an error.
            let f = self.in_flight.pop_front().expect("front exists");
            result?;
            self.finish_round(f.held, f.synced, f.submitted)?;
            done += 1;
        }
        Ok(done)
    }

    /// Whether a round queued with [`Store::queue_ready`] is unwritten (then every later
    /// round must be queued too).
    fn in_flight_staged(&self) -> bool {
        self.in_flight
            .iter()
            .any(|f| matches!(f.write, RoundWrite::Staged { .. }))
    }

    /// Rounds submitted or queued and not finished yet.
    pub fn writes_in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Blocks until every round in flight is written and finished.
    pub fn wait_writes(&mut self) -> Result<(), StoreError> {
        while !self.in_flight.is_empty() {
            self.wait_oldest()?;
        }
        Ok(())
    }

    fn wait_oldest(&mut self) -> Result<(), StoreError> {
        let Some(f) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let InFlight {
            write,
            held,
            synced,
            submitted,
        } = f;
        match write {
            RoundWrite::Staged { mut batch, sync } => {
                if !batch.is_empty() {
                    self.engine.write(&mut batch, sync)?;
                }
            }
            RoundWrite::Submitted(mut write) => {
                block_on(&mut write)?;
            }
            RoundWrite::Durable => {}
        }
        self.finish_round(held, synced, submitted)
    }

    /// A round's write is durable: records its latency (if it synced) and completes it.
    fn finish_round(
        &mut self,
        held: Vec<Held>,
        synced: bool,
        submitted: std::time::Instant,
    ) -> Result<(), StoreError> {
        // Bounded: a caller that never reads them (the simulations) keeps only the first.
        if synced && self.write_latencies.len() < MAX_WRITE_LATENCIES_KEPT {
            self.write_latencies.push(submitted.elapsed());
        }
        if synced {
            // Snapshot commits are written with nothing in flight, so this round came after
            // them in the log and its fdatasync made them durable.
            for kept in self.snapshots_unsynced.drain(..) {
                self.snapshot_work.push(SnapshotWork::RemoveOlder {
                    kept,
                    fs: self.fs.clone(),
                });
            }
        }
        self.complete(held)
    }

    /// Start-to-durable times of the synced round writes finished since the last call
    /// (synchronous or not).
    pub fn take_write_latencies(&mut self) -> Vec<std::time::Duration> {
        std::mem::take(&mut self.write_latencies)
    }

    /// Counts a round's write in the stats if it writes anything; returns whether it ends
    /// with an fdatasync (a round whose only sync-worthy part, a received snapshot, was
    /// written on its own writes nothing here), which is what its latency is recorded as.
    fn count_write(&mut self, batch: &LogBatch, groups: u64, must_sync: bool) -> bool {
        if batch.is_empty() {
            return false;
        }
        self.stats.write_rounds += 1;
        self.stats.groups_written += groups;
        if must_sync {
            self.stats.synced_rounds += 1;
        }
        must_sync
    }

    /// A round's write is durable: its held messages go out, Raft learns what is persisted,
    /// and regions whose log grew past the threshold are snapshotted.
    fn complete(&mut self, held: Vec<Held>) -> Result<(), StoreError> {
        let mut want_snapshot = Vec::new();
        for h in held {
            let Some(p) = self.peers.get_mut(&h.region) else {
                continue;
            };
            for m in h.messages {
                match p.region.peer(m.to) {
                    Some(peer) => self.outbox.push((peer.store, m)),
                    None => self.stats.messages_dropped += 1,
                }
            }
            p.raw.on_persisted(h.persisted);
            if let Some(tv) = h.term_vote {
                p.durable_term_vote = tv;
            }
            // Snapshot when the log grows past the thresholds (postponed while one is being
            // built, or while the applied index is not durable here, see
            // `Peer::start_snapshot`).
            if p.building_snapshot.is_none() && p.wants_snapshot(&self.cfg) {
                want_snapshot.push(h.region);
            }
        }
        for region in want_snapshot {
            self.start_snapshot(region)?;
        }
        self.commit_snapshots()?;
        self.compact_requested()
    }

    /// Whether a snapshot may be made now: no round is in flight or prepared. A snapshot's
    /// metadata write carries the group's hard state as staged, and with a round in flight
    /// that may name a commit index beyond what the log has durable (a crash would then
    /// leave a hard state the log cannot back).
    fn snapshots_allowed(&self) -> bool {
        self.in_flight.is_empty() && !self.round_prepared
    }

    /// Starts a snapshot of this store's replica of `region` at its applied index,
    /// whatever the thresholds say (operators, tests, the simulator's snapshots at random
    /// points); it is built like any other ([`Store::take_snapshot_work`]) and compacts the
    /// log when committed. Returns false when none could start (see
    /// [`Store::start_snapshot`]).
    pub fn snapshot_now(&mut self, region: RegionId) -> Result<bool, StoreError> {
        if !self.peers.contains_key(&region) {
            return Err(StoreError::RegionNotFound(region));
        }
        self.start_snapshot(region)
    }

    pub fn take_outbox(&mut self) -> Vec<(StoreId, Message)> {
        std::mem::take(&mut self.outbox)
    }

    pub fn take_completions(&mut self) -> Vec<Completion<M>> {
        std::mem::take(&mut self.completions)
    }

    /// Serves a stale read from this replica's state machine without any Raft round (the
    /// explicit opt-in follower/stale read): it may lag the leader.
    pub fn stale_read(
        &self,
        region: RegionId,
        epoch: RegionEpoch,
        key: &[u8],
        query: &M::Query,
    ) -> Result<M::ReadOutput, StoreError> {
        Ok(self.check_route(region, epoch, key)?.sm.read(query))
    }

    /// The state machine of a region (tests, status).
    pub fn state_machine(&self, region: RegionId) -> Option<&M> {
        self.peers.get(&region).map(|p| &p.sm)
    }

    pub fn engine(&self) -> &Arc<LogEngine> {
        &self.engine
    }
}
