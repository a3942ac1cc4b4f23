//! `Store`: the replicas of many regions on one store, persisted through one shared log.
//!
//! This module holds the store itself (opening and bootstrapping it, routing messages and
//! requests to region replicas, proposals and reads, status); its other jobs are
//! `impl Store` blocks in their own modules (see the module map in the crate's docs).

use crate::error::StoreError;
use crate::peer::{Peer, PendingRead};
use crate::ready::InFlight;
use crate::region::{Region, RegionEpoch, RegionId, StoreId};
use crate::snapshot_job::{BuiltSnapshot, SnapshotWork};
use crate::state_machine::StateMachine;
use bytes::Bytes;
use raft::{
    ConfState, Config, HardState, LogIndex, Message, NodeId, RawNode, Role, Snapshot,
    SnapshotMetadata, Term, INIT_LOG_INDEX, INIT_TERM,
};
use raft_log::raft_storage::GroupStorage;
use raft_log::{FileSystem, LogBatch, LogEngine};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use types::{LiveRegions, RegionMap};

// The items that moved out of this module keep their paths here (`store::store::…`).
pub use crate::config::{
    StoreConfig, DEFAULT_BALANCE_LEADERS_FOR_TICKS, DEFAULT_ELECTION_TICK, DEFAULT_HEARTBEAT_TICK,
    DEFAULT_LOG_PURGE_EVERY_TICKS, DEFAULT_READ_MODE, DEFAULT_SNAPSHOT_THRESHOLD_BYTES,
    DEFAULT_SNAPSHOT_THRESHOLD_ENTRIES,
};
pub use crate::peer::{SNAPSHOT_AMORTIZATION, SNAPSHOT_MAX_ENTRIES_FACTOR};
pub use crate::ready::{PendingWrite, MAX_WRITES_IN_FLIGHT};

/// Engine state key under which each group keeps its region descriptor.
pub const REGION_KEY: &[u8] = b"store/region";
/// Engine state key under which each group keeps this store's peer id in the region: the
/// descriptor may not name it (a replica catching up through changes made before it was
/// added writes descriptors without itself).
pub const PEER_KEY: &[u8] = b"store/peer";

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
    /// Splits applied on this store, and of them those whose new region's replica was here
    /// already (created by its leader's messages, or a replay after a restart).
    pub splits_applied: u64,
    pub split_peers_existing: u64,
    /// Replicas created by a message from a leader of a region this store did not have,
    /// and by vote requests that waited too long for a split to create them (see
    /// `Store::stash_vote`).
    pub peers_created_by_message: u64,
    pub peers_created_by_vote: u64,
    /// Replicas destroyed here (removed from their region), and messages dropped because
    /// they were for a destroyed replica.
    pub peers_destroyed: u64,
    /// Of them, replicas destroyed because the region's leader addressed a newer replica
    /// on this store (see [`Store::step`]).
    pub stale_peers_replaced: u64,
    /// Of them, replicas removed while this store was away, destroyed when placement named
    /// the region as it is now (see [`Store::destroy_stale_replica`]).
    pub stale_replicas_destroyed: u64,
    /// Membership changes applied here (per replica).
    pub replica_changes_applied: u64,
    pub messages_to_tombstones: u64,
    /// Merges: targets that absorbed their source here, merge commits and rollbacks
    /// proposed by frozen source leaders, absorbed or dead source replicas destroyed, and
    /// rounds in which a waiting target found its source replica missing or behind without
    /// the entries (see `crate::merge`).
    pub merges_applied: u64,
    pub merge_commits_proposed: u64,
    pub merge_rollbacks_proposed: u64,
    pub merge_sources_destroyed: u64,
    pub merge_waits_without_source: u64,
    /// Housekeeping entries proposed by leaders (see `StateMachine::housekeeping`).
    pub housekeeping_proposed: u64,
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
    /// This replica's state machine's count of keys and bytes (see
    /// [`StateMachine::approximate_size`]).
    pub approximate: types::ApproximateSize,
    /// It leads under a valid lease and has committed an entry of its term: it could serve
    /// reads on its own now.
    pub lease: bool,
    /// Frozen as a merge's source (serves nothing).
    pub frozen: bool,
    /// Reads this replica started or served (`Store::read`, `Store::stale_read`) and
    /// proposals it accepted (`Store::propose`), cumulative since the replica was opened
    /// here (created, or loaded when the store started): a restart or a re-created replica
    /// starts again from 0. Refused requests are not counted. Rates are the caller's
    /// (differences between two statuses).
    pub reads: u64,
    pub writes: u64,
}

pub struct Store<M: StateMachine> {
    pub(crate) cfg: StoreConfig,
    pub(crate) engine: Arc<LogEngine>,
    pub(crate) fs: Arc<dyn FileSystem>,
    pub(crate) snap_dir: PathBuf,
    pub(crate) peers: BTreeMap<RegionId, Peer<M>>,
    pub(crate) next_ticket: u64,
    pub(crate) completions: Vec<Completion<M>>,
    pub(crate) outbox: Vec<(StoreId, Message)>,
    pub(crate) ticks: u64,
    /// The driver's wall clock, ms since the Unix epoch (see [`Store::set_clock_ms`]).
    pub(crate) clock_ms: u64,
    /// Rounds submitted with [`Store::submit_ready`], oldest first.
    pub(crate) in_flight: VecDeque<InFlight>,
    /// A round was prepared and its write not yet started or queued.
    pub(crate) round_prepared: bool,
    /// Start-to-durable times of synced round writes, for the caller's metrics.
    pub(crate) write_latencies: Vec<std::time::Duration>,
    /// How long each snapshot made here held the store thread, for the caller's metrics.
    pub(crate) snapshot_durations: Vec<std::time::Duration>,
    /// Serialize and write times of the snapshots made, for the caller's metrics.
    pub(crate) snapshot_build_times: Vec<(std::time::Duration, std::time::Duration)>,
    /// Of each snapshot received: first chunk to installed, and the install alone (checking
    /// and syncing the file, replacing the log, restoring the state machine from the file).
    pub(crate) snapshot_receive_times: Vec<(std::time::Duration, std::time::Duration)>,
    /// Snapshot work (jobs started, older files to remove) not yet handed to a builder
    /// ([`Store::take_snapshot_work`]).
    pub(crate) snapshot_work: Vec<SnapshotWork<M>>,
    /// Jobs out (queued here, building, or built and not yet committed); at most
    /// [`MAX_SNAPSHOTS_BUILDING`].
    ///
    /// [`MAX_SNAPSHOTS_BUILDING`]: crate::MAX_SNAPSHOTS_BUILDING
    pub(crate) snapshots_building: usize,
    /// Built snapshots waiting for a moment with no log write in flight to be committed.
    pub(crate) snapshots_built: Vec<BuiltSnapshot>,
    /// Snapshots committed by an unsynced write: their groups' older files are removed once a
    /// later round's fdatasync made the commit durable (see [`Store::finish_round`]).
    pub(crate) snapshots_unsynced: Vec<raft_log::PreparedSnapshot>,
    /// Regions the log's purge asked to compact, snapshotted as soon as snapshots are
    /// allowed (see [`Store::reclaim_log`]).
    pub(crate) compact_wanted: BTreeSet<RegionId>,
    /// The waker of the last [`Store::submit_ready`] or [`Store::poll_writes`]: while the disk
    /// is full, [`Store::finish_ready`] hands its round to the engine's writer with it
    /// instead of blocking the store thread until space is freed.
    pub(crate) write_waker: Option<std::task::Waker>,
    /// The segment count at which the last purge reclaimed nothing (see
    /// [`Store::reclaim_log`]).
    pub(crate) fruitless_purge_at: Option<usize>,
    /// This open bootstrapped the store's regions (a fresh data directory): leaders are
    /// balanced for `balance_leaders_for_ticks` (see [`StoreConfig`]).
    pub(crate) bootstrapped: bool,
    /// The one region map: published whenever a descriptor changes, read by the routers.
    pub(crate) live_regions: LiveRegions,
    /// The id allocator: the next id and the persisted limit (see [`Store::alloc_id`]).
    pub(crate) next_id: (u64, u64),
    /// Vote requests for regions this store does not have, with the store they came from
    /// and the tick they arrived at, oldest first, at most [`crate::split::MAX_STASHED_VOTES`]: a split's new region
    /// campaigns on the old leader's store as soon as it applies the split, usually before
    /// the other stores have applied it; their new replicas answer these once created.
    pub(crate) stashed_votes: VecDeque<(StoreId, Message, u64)>,
    /// Since which tick vote requests have been arriving for a region this store does not
    /// have (at most [`crate::split::MAX_VOTE_WAITS`] regions; see `Store::stash_vote`).
    pub(crate) vote_waits: BTreeMap<RegionId, u64>,
    /// Replicas destroyed here, `(region, peer id)`: never created again (see
    /// [`crate::membership`]).
    pub(crate) tombstones: BTreeSet<(RegionId, NodeId)>,
    pub stats: StoreStats,
}

/// Records a proposal on its replica (completed when its entry applies) or turns the core's
/// refusal into the store's error: retryable refusals get retryable errors (during a leader
/// transfer the transferee is about to lead; the uncommitted-bytes cap is backpressure).
pub(crate) fn track_proposal<M: StateMachine>(
    region: RegionId,
    p: &mut Peer<M>,
    ticket: Ticket,
    proposed: Result<LogIndex, raft::ProposeError>,
) -> Result<Ticket, StoreError> {
    match proposed {
        Ok(index) => {
            let term = p.raw.term();
            p.proposals.push_back((index, term, ticket));
            Ok(ticket)
        }
        Err(raft::ProposeError::NotLeader { leader }) => Err(StoreError::NotLeader {
            region,
            leader: leader.and_then(|l| p.region.peer(l)),
        }),
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

pub(crate) fn engine_group(id: RegionId) -> raft_log::GroupId {
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
        let initial: Vec<(Region, Option<Bytes>)> =
            initial_regions.iter().map(|r| (r.clone(), None)).collect();
        Self::open_bootstrap(dir, fs, cfg, &initial)
    }

    /// [`Store::open`] where a bootstrap region may start from given state machine data
    /// (`None`: [`StateMachine::empty`]); the placement group starts from the cluster's
    /// first configuration this way.
    pub fn open_bootstrap(
        dir: &Path,
        fs: Arc<dyn FileSystem>,
        cfg: StoreConfig,
        initial_regions: &[(Region, Option<Bytes>)],
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
            clock_ms: 0,
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
            bootstrapped: false,
            live_regions: LiveRegions::default(),
            next_id: (0, 0),
            stashed_votes: VecDeque::new(),
            vote_waits: BTreeMap::new(),
            tombstones: BTreeSet::new(),
            stats: StoreStats::default(),
        };
        store.next_id = store.load_next_id();
        let groups = store.engine.groups();
        if groups.is_empty() {
            for (r, data) in initial_regions {
                if r.peer_on(store.cfg.store_id).is_some() {
                    let data = data.clone().unwrap_or_else(|| M::empty(r).snapshot());
                    store.bootstrap_region(r, data)?;
                    store.bootstrapped = true;
                }
            }
        }
        store.load_tombstones()?;
        for g in store.engine.groups() {
            let Some(raw) = store.engine.get_state(g, REGION_KEY) else {
                continue; // a group without a descriptor is not a region of ours
            };
            let region = Region::decode(&raw).map_err(|e| {
                StoreError::Storage(format!("region descriptor of group {}: {e}", g.0))
            })?;
            store.open_peer(region)?;
        }
        // Merge sources: silent if absorbed, gone if their target's snapshot holds them.
        store.load_merged_into()?;
        store.destroy_dead_sources(None)?;
        store.publish_regions();
        Ok(store)
    }

    /// Snapshots being built (started, not yet committed or discarded).
    pub fn snapshots_building(&self) -> usize {
        self.snapshots_building
    }

    /// The live region map (see [`LiveRegions`]): what routers outside the store thread read.
    pub fn live_regions(&self) -> LiveRegions {
        self.live_regions.clone()
    }

    /// Publishes the current descriptors; called whenever one changes. Uninitialized
    /// replicas have no range and are left out, and so is the placement group (it holds no
    /// keys). Two replicas of this store may overlap for a while (a new region's replica
    /// created before the old region applied its split here): the newer epoch wins the range and the older region is left out until it catches up.
    pub(crate) fn publish_regions(&self) {
        let mut by_version: Vec<&Region> = self
            .peers
            .values()
            .filter(|p| p.initialized() && p.merged_into.is_none() && !p.region.is_placement())
            .map(|p| &p.region)
            .collect();
        by_version.sort_by_key(|r| std::cmp::Reverse(r.epoch.version));
        let mut kept: BTreeMap<&[u8], &Region> = BTreeMap::new();
        for r in by_version {
            let before = kept.range(..r.start_key.as_slice()).next_back();
            let overlaps_before = before.is_some_and(|(_, b)| b.contains(&r.start_key));
            let after = kept.range(r.start_key.as_slice()..).next();
            let overlaps_after = after
                .is_some_and(|(start, _)| r.end_key.as_ref().is_none_or(|e| e.as_slice() > *start));
            if !overlaps_before && !overlaps_after {
                kept.insert(&r.start_key, r);
            }
        }
        self.live_regions
            .publish(RegionMap::new(kept.into_values().cloned()));
    }

    /// Creates a region's replica here from its first state, `data` (the state machine's
    /// bytes): a snapshot at `INIT_LOG_INDEX` holding the descriptor and the data, as every
    /// founding replica of a region starts (see `raft::MemStorage::new_bootstrap`). A replica
    /// that existed uninitialized keeps its term and vote.
    pub(crate) fn bootstrap_region(&mut self, r: &Region, data: Bytes) -> Result<(), StoreError> {
        let mut storage = GroupStorage::open(
            self.engine.clone(),
            engine_group(r.id),
            &self.snap_dir,
            self.fs.clone(),
        )?;
        let prior = storage.hard_state();
        let mut with_header = crate::snapshot_data::header(r, None, &[]);
        with_header.extend_from_slice(&data);
        drop(data);
        storage.apply_snapshot(Snapshot {
            metadata: SnapshotMetadata {
                index: INIT_LOG_INDEX,
                term: INIT_TERM,
                conf_state: ConfState {
                    voters: r
                        .peers
                        .iter()
                        .filter(|p| !p.learner)
                        .map(|p| p.id)
                        .collect(),
                    learners: r.peers.iter().filter(|p| p.learner).map(|p| p.id).collect(),
                    ..Default::default()
                },
            },
            data: Bytes::from(with_header),
        })?;
        storage.set_hard_state(HardState {
            term: prior.term.max(INIT_TERM),
            vote: if prior.term >= INIT_TERM {
                prior.vote
            } else {
                NodeId::NONE
            },
            commit: INIT_LOG_INDEX,
        })?;
        self.write_region(r)?;
        Ok(())
    }

    /// Writes (synced) a replica's descriptor, and its own peer id: the open replica's, else
    /// the one the descriptor names on this store (a replica being created).
    pub(crate) fn write_region(&self, r: &Region) -> Result<(), StoreError> {
        let mut b = LogBatch::new();
        b.put_state(engine_group(r.id), REGION_KEY, &r.encode());
        let me = self
            .peers
            .get(&r.id)
            .map(|p| p.raw.id())
            .or_else(|| r.peer_on(self.cfg.store_id).map(|p| p.id));
        if let Some(me) = me {
            b.put_state(engine_group(r.id), PEER_KEY, &me.0.to_le_bytes());
        }
        self.engine.write(&mut b, true)?;
        Ok(())
    }

    /// Opens the replica of `region` (its stored descriptor) from its storage. The descriptor
    /// it serves with is the one its snapshot carries, at the snapshot's index: the log's
    /// admin entries after it are applied again and bring it up to date, so the epoch checked
    /// at apply is the same on every replica at every index.
    pub(crate) fn open_peer(&mut self, stored: Region) -> Result<(), StoreError> {
        let storage = GroupStorage::open(
            self.engine.clone(),
            engine_group(stored.id),
            &self.snap_dir,
            self.fs.clone(),
        )?;
        let snap =
            raft::Storage::snapshot(&storage).map_err(|e| StoreError::Storage(e.to_string()))?;
        let crate::snapshot_data::Carried {
            region: carried,
            merging,
            absorbed,
            sm_data,
        } = crate::snapshot_data::parse(&snap.data)
            .map_err(|e| StoreError::Storage(format!("snapshot of region {}: {e}", stored.id)))?;
        // This replica's own id comes from the stored descriptor, which always names it: a
        // replica added after its snapshot was taken is not in the snapshot's descriptor
        // (it becomes a member again when the log replays its addition).
        let recorded = self
            .engine
            .get_state(engine_group(stored.id), PEER_KEY)
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_le_bytes))
            .map(NodeId);
        let me = recorded
            .or_else(|| stored.peer_on(self.cfg.store_id).map(|p| p.id))
            .ok_or_else(|| {
                StoreError::Storage(format!(
                    "region {} has no peer on store {}",
                    stored.id, self.cfg.store_id
                ))
            })?;
        let legacy_snapshot = carried.is_none() && !sm_data.is_empty();
        if legacy_snapshot {
            // Replaced by one with a descriptor as soon as may be: until then the region
            // is not reshaped from here (`refuse_legacy`), and another store's proposal
            // would find this replica replaying with a newer descriptor after a crash.
            self.compact_wanted.insert(stored.id);
        }
        let region = carried.unwrap_or(stored);
        let sm = if sm_data.is_empty() {
            // Uninitialized (no snapshot yet): a placeholder over the whole key space, never
            // read or applied to before the first snapshot replaces it.
            M::empty(&Region {
                end_key: None,
                ..region.clone()
            })
        } else {
            M::restore(sm_data).map_err(|e| {
                StoreError::Storage(format!("snapshot of region {}: {e}", region.id))
            })?
        };
        let mut rc = Config::new(me.0, region.id.0);
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
        rc.seed = me.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ self.cfg.store_id.0;
        let durable = storage.hard_state();
        let raw = RawNode::new(&rc, storage).map_err(|e| StoreError::Storage(e.to_string()))?;
        let load = crate::split_check::LoadSampler::new(region.id);
        self.peers.insert(
            region.id,
            Peer {
                applied: snap.metadata.index,
                region,
                learned: Vec::new(),
                raw,
                sm,
                proposals: VecDeque::new(),
                reads: Vec::new(),
                bytes_since_snapshot: 0,
                last_snapshot_bytes: snap.data.len() as u64,
                building_snapshot: None,
                receiving: None,
                durable_term_vote: (durable.term, durable.vote),
                merging,
                merged_into: None,
                merge_wait: None,
                merge_driven_at: 0,
                absorbed,
                legacy_snapshot,
                read_count: 0,
                write_count: 0,
                load,
            },
        );
        Ok(())
    }

    pub fn id(&self) -> StoreId {
        self.cfg.store_id
    }

    /// The descriptors of this store's (initialized) replicas.
    pub fn regions(&self) -> Vec<Region> {
        self.peers
            .values()
            .filter(|p| p.initialized() && p.merged_into.is_none())
            .map(|p| p.region.clone())
            .collect()
    }

    /// The region of this store containing `key`, if any (from the published map).
    /// Refuses with `NotLeader` (naming the leader it knows) unless this store's replica of
    /// `region` leads it.
    pub fn check_leader(&self, region: RegionId) -> Result<(), StoreError> {
        let p = self
            .peers
            .get(&region)
            .filter(|p| p.initialized())
            .ok_or(StoreError::RegionNotFound(region))?;
        if p.raw.role() == raft::Role::Leader {
            return Ok(());
        }
        Err(StoreError::NotLeader {
            region,
            leader: p.region.peer(p.raw.leader()),
        })
    }

    /// This store's descriptor of `region`, if it has an initialized replica of it.
    pub fn region(&self, region: RegionId) -> Option<&Region> {
        self.peers
            .get(&region)
            .filter(|p| p.initialized())
            .map(|p| &p.region)
    }

    pub fn region_for_key(&self, key: &[u8]) -> Option<Region> {
        self.live_regions.load().region_for_key(key).cloned()
    }

    /// A one-line description of this store's replica of `region`, initialized or not (for
    /// failure reports).
    pub fn describe_replica(&self, region: RegionId) -> Option<String> {
        self.peers.get(&region).map(|p| {
            let st = p.raw.status();
            format!(
                "peer {} initialized={} {:?} term {} leader {} commit {} applied {} log {}..{} learned {:?} receiving={} merging={:?} merge_wait={:?} merged_into={:?} absorbed={:?} progress [{}]",
                p.raw.id(),
                p.initialized(),
                st.soft_state.role,
                st.hard_state.term,
                st.soft_state.leader,
                st.hard_state.commit,
                p.applied,
                st.first_index,
                st.last_index,
                p.learned,
                p.receiving.is_some(),
                p.merging,
                p.merge_wait.as_ref().map(|w| (w.source.id, w.prepare_index, w.at)),
                p.merged_into,
                p.absorbed,
                p.raw.describe_progress(),
            )
        })
    }

    /// Status of this store's initialized replicas.
    pub fn status(&self) -> Vec<RegionStatus> {
        self.peers
            .values()
            .filter(|p| p.initialized() && p.merged_into.is_none())
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
                    approximate: p.sm.approximate_size(),
                    lease: p.raw.lease_valid() && p.raw.committed_in_term(),
                    frozen: p.merging.is_some(),
                    reads: p.read_count,
                    writes: p.write_count,
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
            .filter(|p| p.initialized())
            .ok_or(StoreError::RegionNotFound(region))?;
        let target = p.region.peer_on(to).ok_or_else(|| {
            StoreError::Proposal(format!("region {region} has no replica on store {to}"))
        })?;
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
            if p.merged_into.is_none() {
                p.raw.tick();
            }
        }
        self.ticks += 1;
        self.drive_merges()?;
        let every = self.cfg.balance_leaders_every_ticks;
        if every > 0
            && self.bootstrapped
            && self.ticks <= self.cfg.balance_leaders_for_ticks
            && self.ticks.is_multiple_of(every)
        {
            self.balance_leaders();
        }
        let every = self.cfg.housekeeping_every_ticks;
        if every > 0 && self.ticks.is_multiple_of(every) {
            self.housekeeping();
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

    /// Sets the wall clock (ms since the Unix epoch) that reads arriving from now on are judged
    /// at and that housekeeping is asked with. The driver calls it on every wake-up: the
    /// server with the system clock, the simulator with its virtual time. It never goes back
    /// (a clock stepped backwards leaves it where it was).
    pub fn set_clock_ms(&mut self, now_ms: u64) {
        self.clock_ms = self.clock_ms.max(now_ms);
    }

    /// The clock set by [`Store::set_clock_ms`].
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// Proposes, on every region this store leads (and that is not being merged), what its
    /// state machine asks for at the current clock. Failures are not errors: the next round
    /// asks again.
    fn housekeeping(&mut self) {
        let now_ms = self.clock_ms;
        let due: Vec<(RegionId, Bytes)> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.raw.role() == Role::Leader
                    && p.merging.is_none()
                    && p.merged_into.is_none()
                    && !p.region.peers.is_empty()
            })
            .filter_map(|(id, p)| {
                let data = p.sm.housekeeping(now_ms)?;
                Some((
                    *id,
                    crate::entry::encode_command(p.region.epoch.version, &data),
                ))
            })
            .collect();
        for (region, data) in due {
            // Its completion has no waiter: the driver drops answers to unknown tickets.
            if self.propose_entry(region, data).is_ok() {
                self.stats.housekeeping_proposed += 1;
            }
        }
    }

    /// Routes a message from store `from` to the replica of its region; a leader's message
    /// for a region this store does not have creates an uninitialized replica (see
    /// [`Store::maybe_create_peer`]).
    pub fn step(&mut self, from: StoreId, m: Message) -> Result<(), StoreError> {
        if self.tombstoned(m.group, m.to) {
            self.stats.messages_to_tombstones += 1;
            return Err(StoreError::RegionNotFound(m.group));
        }
        if from == self.cfg.store_id || !types::peer_on_store(m.to, self.cfg.store_id) {
            // Not for this store (a stale or wrong address sent another store's traffic
            // here): acting on it could replace a live replica.
            self.stats.messages_dropped += 1;
            return Err(StoreError::RegionNotFound(m.group));
        }
        if let Some(mine) = self.peers.get(&m.group).map(|p| p.raw.id()) {
            if m.to > mine && crate::split::is_leader_message(&m) {
                // A leader addresses a newer replica on this store (ids grow with each
                // re-addition, `types::peer_id`): ours was removed without learning it (the
                // change committed without it, and nobody messages a removed replica), and
                // the region was added back here as a new peer.
                self.stats.stale_peers_replaced += 1;
                self.destroy_peer(m.group, None)?;
            } else if m.to < mine {
                // For an older replica of ours: a stale leader (one removed with it, still
                // campaigning on its old configuration). Replacing ours would destroy a live
                // replica, and its tombstone would keep the real leader out for good.
                self.stats.messages_dropped += 1;
                return Err(StoreError::RegionNotFound(m.group));
            }
        }
        if !self.peers.contains_key(&m.group) && !self.maybe_create_peer(from, &m)? {
            if self.stash_vote(from, &m)? {
                return Ok(());
            }
            self.stats.messages_dropped += 1;
            return Err(StoreError::RegionNotFound(m.group));
        }
        let p = self.peers.get_mut(&m.group).expect("present or created");
        if p.merged_into.is_some() {
            // Absorbed by its merge's target: silent until destroyed.
            self.stats.messages_dropped += 1;
            return Err(StoreError::RegionNotFound(m.group));
        }
        p.learn(m.from, from);
        if let Err(e) = p.raw.step(m) {
            self.stats.messages_dropped += 1;
            return Err(StoreError::Proposal(e.to_string()));
        }
        Ok(())
    }

    /// Refuses a request routed to the wrong region, epoch or key range.
    pub(crate) fn check_route(
        &self,
        region: RegionId,
        epoch: RegionEpoch,
        key: &[u8],
    ) -> Result<&Peer<M>, StoreError> {
        let p = self
            .peers
            .get(&region)
            .filter(|p| p.initialized() && p.merged_into.is_none())
            .ok_or(StoreError::RegionNotFound(region))?;
        if p.merging.is_some() {
            return Err(StoreError::Merging { region });
        }
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

    pub(crate) fn ticket(&mut self) -> Ticket {
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
        // The version travels with the command and is checked again at apply.
        let payload = data;
        let data = crate::entry::encode_command(epoch.version, &payload);
        let ticket = self.propose_entry(region, data)?;
        // Counted here, not in `propose_entry`: admin entries (splits, merges, replica
        // changes) are not client writes.
        if let Some(p) = self.peers.get_mut(&region) {
            p.write_count += 1;
            crate::split_check::sample_request(p, key, |offer| {
                M::payload_keys(&payload, key, offer)
            });
        }
        Ok(ticket)
    }

    /// Proposes an entry (already wrapped, see [`crate::entry`]) on this store's replica of
    /// `region`, which the caller checked exists.
    pub(crate) fn propose_entry(
        &mut self,
        region: RegionId,
        data: Bytes,
    ) -> Result<Ticket, StoreError> {
        if self.engine.is_out_of_space() {
            // Refused before proposing (certainly not applied): the log has no room for it.
            // What is already proposed is written once space is freed (the engine holds it).
            return Err(StoreError::NoSpace {
                store: self.cfg.store_id.0,
            });
        }
        let ticket = self.ticket();
        let p = self.peers.get_mut(&region).expect("checked");
        let proposed = p.raw.propose(data);
        track_proposal(region, p, ticket, proposed)
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
                crate::split_check::sample_request(p, key, |offer| {
                    M::query_keys(&query, key, offer)
                });
                p.reads.push(PendingRead {
                    ticket,
                    query,
                    key: key.to_vec(),
                    index: None,
                    at_ms: self.clock_ms,
                });
                p.read_count += 1;
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

    pub fn take_outbox(&mut self) -> Vec<(StoreId, Message)> {
        std::mem::take(&mut self.outbox)
    }

    pub fn take_completions(&mut self) -> Vec<Completion<M>> {
        std::mem::take(&mut self.completions)
    }

    /// Serves a stale read from this replica's state machine without any Raft round (the
    /// explicit opt-in follower/stale read): it may lag the leader. Takes `&mut self` only to
    /// count the read (see [`RegionStatus::reads`]).
    pub fn stale_read(
        &mut self,
        region: RegionId,
        epoch: RegionEpoch,
        key: &[u8],
        query: &M::Query,
    ) -> Result<M::ReadOutput, StoreError> {
        let now_ms = self.clock_ms;
        let out = self.check_route(region, epoch, key)?.sm.read(query, now_ms);
        if let Some(p) = self.peers.get_mut(&region) {
            p.read_count += 1;
            crate::split_check::sample_request(p, key, |offer| M::query_keys(query, key, offer));
        }
        Ok(out)
    }

    /// Refuses to reshape `region` while its latest snapshot here has no descriptor (a data
    /// directory from before descriptors were kept in snapshots): a restart would replay the
    /// log after it with the current descriptor, and commands routed before the change would
    /// then be refused on replay, diverging this replica. A snapshot is asked for at once.
    pub(crate) fn refuse_legacy(&mut self, region: RegionId) -> Result<(), StoreError> {
        if self.peers.get(&region).is_some_and(|p| p.legacy_snapshot) {
            self.compact_wanted.insert(region);
            return Err(StoreError::Proposal(format!(
                "region {region}'s latest snapshot predates region descriptors; a new one is being taken, retry in a moment"
            )));
        }
        Ok(())
    }

    /// Whether this store's replica of `region` is frozen as a merge's source, and for which
    /// merge (status, the simulator's routing table).
    pub fn merge_state(&self, region: RegionId) -> Option<crate::merge::MergeState> {
        self.peers.get(&region).and_then(|p| p.merging)
    }

    /// The state machine of a region (tests, status).
    pub fn state_machine(&self, region: RegionId) -> Option<&M> {
        self.peers
            .get(&region)
            .filter(|p| p.initialized())
            .map(|p| &p.sm)
    }

    pub fn engine(&self) -> &Arc<LogEngine> {
        &self.engine
    }
}
