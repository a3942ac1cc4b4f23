//! `Peer`: one region replica on a store (its Raft node, state machine, waiting requests),
//! and when it wants a snapshot.

use crate::config::StoreConfig;
use crate::error::StoreError;
use crate::region::{PeerMeta, Region, RegionEpoch, StoreId};
use crate::snapshot_job::SnapshotJob;
use crate::state_machine::StateMachine;
use crate::store::Ticket;
use raft::{LogIndex, NodeId, RawNode, Term};
use raft_log::raft_storage::{GroupStorage, SnapshotReceiver};
use raft_log::FileSystem;
use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;

pub(crate) struct PendingRead<Q> {
    pub(crate) ticket: Ticket,
    pub(crate) query: Q,
    /// The key the read is about: checked against the region again when it is served (a
    /// split applied meanwhile may have moved it to another region).
    pub(crate) key: Vec<u8>,
    /// Set once the ReadIndex round answered: serve when applied reaches it.
    pub(crate) index: Option<LogIndex>,
    /// The store's wall clock when the read arrived: what the state machine judges expiry
    /// by (see `StateMachine::read`).
    pub(crate) at_ms: u64,
}

/// One region replica.
pub(crate) struct Peer<M: StateMachine> {
    /// The descriptor; an uninitialized replica (created by a leader's message, waiting for
    /// its first snapshot) has epoch 0 and no key range (see [`Peer::initialized`]).
    pub(crate) region: Region,
    /// Peers of the region the descriptor does not name yet, learned from the store their
    /// messages came from: where an uninitialized replica's answers go.
    pub(crate) learned: Vec<PeerMeta>,
    pub(crate) raw: RawNode<GroupStorage>,
    pub(crate) sm: M,
    pub(crate) applied: LogIndex,
    /// Proposals in log order: (index, term, ticket).
    pub(crate) proposals: VecDeque<(LogIndex, Term, Ticket)>,
    pub(crate) reads: Vec<PendingRead<M::Query>>,
    /// Payload bytes applied since the last snapshot (the log's growth, approximately).
    pub(crate) bytes_since_snapshot: u64,
    /// Size of the state machine's serialized state at the last snapshot made or installed
    /// (0 before any): what the next snapshot will cost, about (see [`Peer::wants_snapshot`]).
    pub(crate) last_snapshot_bytes: u64,
    /// A snapshot of this region is being built (see [`crate::snapshot_job`]): the value of
    /// `bytes_since_snapshot` when its view was taken, which its commit subtracts.
    pub(crate) building_snapshot: Option<u64>,
    /// A snapshot being received from the leader, chunk by chunk into its file, and when its
    /// first chunk came (see [`Store::receive_snapshot_chunks`]).
    ///
    /// [`Store::receive_snapshot_chunks`]: crate::Store::receive_snapshot_chunks
    pub(crate) receiving: Option<(SnapshotReceiver, std::time::Instant)>,
    /// Term and vote of the last hard state known durable (not merely staged): a leader's
    /// messages may leave before their round's write only while the term and vote they
    /// speak for are on disk (a single-voter leader wins inside `campaign`, before the
    /// round that records its term is durable).
    pub(crate) durable_term_vote: (Term, NodeId),
    /// Frozen as the source of a merge (see [`crate::merge`]).
    pub(crate) merging: Option<crate::merge::MergeState>,
    /// Absorbed by the target `(region, at its entry)`: silent, out of the region map,
    /// destroyed once a snapshot of the target covers the merge.
    pub(crate) merged_into: Option<(crate::region::RegionId, LogIndex)>,
    /// A merge's target that applied the commit and waits for its source replica here.
    pub(crate) merge_wait: Option<crate::merge::MergeWait>,
    /// The tick this frozen source's leader last acted on its merge.
    pub(crate) merge_driven_at: u64,
    /// The regions merged into this one, and those merged into them, latest last; kept in
    /// its snapshots, never truncated (see `crate::merge`).
    pub(crate) absorbed: Vec<crate::region::RegionId>,
    /// The latest snapshot predates region descriptors in snapshots (a data directory from
    /// before 2026-12-03): replaying from it uses the current descriptor, so the region is
    /// not reshaped until a newer snapshot exists (see `Store::refuse_legacy`).
    pub(crate) legacy_snapshot: bool,
    /// Client requests this replica took since it was opened here (created, or loaded when
    /// the store started), for placement's read and write rates: proposals accepted by
    /// `Store::propose`, and reads started by `Store::read` or served by
    /// `Store::stale_read`. Refused requests are not counted. Plain adds on the store
    /// thread; a re-created replica or a restarted store starts again from 0 (the
    /// heartbeat's rate saturates at 0 when a counter goes down).
    pub(crate) read_count: u64,
    pub(crate) write_count: u64,
    /// The keys of the requests this replica took while leading, sampled (see
    /// [`crate::split_check`]): where a split by load would go.
    pub(crate) load: crate::split_check::LoadSampler,
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

/// The descriptor of a replica created by a message, before its first snapshot: no key
/// range, epoch 0, only itself as a peer.
pub(crate) fn uninitialized_region(id: crate::region::RegionId, me: PeerMeta) -> Region {
    Region {
        id,
        start_key: Vec::new(),
        end_key: Some(Vec::new()),
        epoch: RegionEpoch::default(),
        peers: vec![me],
    }
}

impl<M: StateMachine> Peer<M> {
    /// Offers the key of a request this replica took to its load sampler, if it leads
    /// (followers' reads are not the leader's load to split).
    pub(crate) fn sample_load(&mut self, key: &[u8]) {
        if self.raw.role() == raft::Role::Leader {
            self.load.record(key);
        }
    }

    /// Whether the replica has a descriptor (bootstrapped, created by a split, or installed
    /// from a snapshot); an uninitialized one serves nothing and is not in the region map.
    pub(crate) fn initialized(&self) -> bool {
        self.region.epoch != RegionEpoch::default()
    }

    /// The store hosting peer `id` of this region, from the descriptor or learned.
    pub(crate) fn store_of(&self, id: NodeId) -> Option<StoreId> {
        self.region
            .peer(id)
            .or_else(|| self.learned.iter().copied().find(|p| p.id == id))
            .map(|p| p.store)
    }

    /// Remembers that peer `id` lives on `store` when the descriptor does not say.
    pub(crate) fn learn(&mut self, id: NodeId, store: StoreId) {
        if id != NodeId::NONE
            && self.region.peer(id).is_none()
            && !self.learned.iter().any(|p| p.id == id)
            && self.learned.len() < types::MAX_PEERS as usize
        {
            self.learned.push(PeerMeta::voter(id, store));
        }
    }
    /// Whether the log has grown enough to be worth a snapshot (see [`SNAPSHOT_AMORTIZATION`]):
    /// past the byte threshold, or past the entry threshold and large enough next to the state
    /// it would serialize, or far past the entry threshold whatever the state.
    pub(crate) fn wants_snapshot(&self, cfg: &StoreConfig) -> bool {
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
    pub(crate) fn start_snapshot(
        &mut self,
        dir: &Path,
        fs: &Arc<dyn FileSystem>,
    ) -> Result<Option<SnapshotJob<M>>, StoreError> {
        if self.building_snapshot.is_some()
            // Applied past a merge's commit without the source's state yet.
            || self.merge_wait.is_some()
            || self.merged_into.is_some()
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
            &self.region,
            self.merging.as_ref(),
            &self.absorbed,
            self.raw.id(),
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
