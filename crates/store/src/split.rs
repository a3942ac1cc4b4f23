//! Regions that change shape at runtime: splitting a region through its log, what the store
//! does after a round's applies (the *effects* of admin entries), cluster-unique ids, and
//! replicas created by a leader's first message.
//!
//! ## A split, start to end
//! 1. [`Store::propose_split`] on the region's leader allocates the new region's id
//!    ([`Store::alloc_id`]), names one peer per store of the region (`types::peer_id` at
//!    the parent's conf version) and proposes
//!    [`AdminCommand::Split`] with the epoch it saw.
//! 2. Every replica applies it at the same log position (`ready::apply_admin`): if the epoch
//!    still matches and the key is still strictly inside, the state machine is split, the
//!    region keeps the left half with `version + 1`, and an [`Effect::Split`] carries the
//!    right half out of the round.
//! 3. [`Store::apply_effects`] (still in the round, before its write is handed on) creates the
//!    new region's replica on this store from the right half: a snapshot at
//!    `INIT_LOG_INDEX` holding the descriptor and the data, synced, as for a bootstrapped
//!    region. The replica of the old leader's store campaigns at once, so the new region has
//!    a leader within a round trip. Then the left descriptor is written and the region map
//!    published.
//!
//! A replica that already has the new region (its leader's messages created it, or this is
//! a replay after a restart) keeps it and drops the right half: that replica catches up from
//! its own leader. One whose new-region replica was removed since (a tombstone) drops it too. Until the old region applies the split here, the two overlap on this store;
//! the published map prefers the newer epoch (see [`Store::publish_regions`]), and the old
//! one serves none of the new range: every command carries the version it was routed with,
//! checked at apply.
//!
//! ## Leases
//! The old region's leader applies the split when it learns the entry committed, before any
//! follower can learn that (followers learn commits from it), so no replica of the new region
//! exists anywhere while the old leader may still serve the new range under its lease.
//!
//! ## Ids
//! Allocated ids are `store_id << 40 | n`, `n` from a counter kept in the store's own state
//! (persisted in steps of [`ID_BATCH`], so a restart skips at most a batch): unique across
//! the cluster without asking anyone, never reused, and above every bootstrap id (regions
//! `1..k`, peers `region * 1000 + store`). Store ids come from placement; region ids stay with each store's allocator.

use crate::entry::AdminCommand;
use crate::error::StoreError;
use crate::peer::uninitialized_region;
use crate::region::{PeerMeta, Region, RegionEpoch, RegionId, StoreId};
use crate::state_machine::StateMachine;
use crate::store::{Store, Ticket};
use raft::{Message, MessageBody, NodeId};
use raft_log::LogBatch;

/// What an applied admin entry asks the store to do after the round's applies.
pub(crate) enum Effect<M> {
    /// Create the new region `right` here from `right_sm`; `left` is the old region's new
    /// descriptor. `campaign`: this store's replica of the old region leads.
    Split {
        left: Region,
        right: Region,
        right_sm: M,
        campaign: bool,
    },
    /// A membership change was applied: write the new descriptor, or destroy this store's
    /// replica if it left the region.
    Membership { region: Region, removed_here: bool },
    /// The descriptor changed in place (a merge's source frozen or unfrozen): write it.
    Descriptor(Region),
}

/// Bits of an allocated id below the store id.
pub const ID_COUNTER_BITS: u32 = 40;
/// Largest store id the allocator can name (ids are `store << 40 | n`).
pub const MAX_STORE_ID: u64 = (1 << (64 - ID_COUNTER_BITS)) - 1;
/// Ids reserved by one persisted step of the allocator.
pub const ID_BATCH: u64 = 1024;
/// Most vote requests kept for regions this store does not have yet (see
/// `Store::stashed_votes`); the oldest goes first.
pub const MAX_STASHED_VOTES: usize = 64;
/// Most regions whose vote requests are being waited on at once (see `Store::vote_waits`).
pub const MAX_VOTE_WAITS: usize = 1024;
/// Engine group of the store's own state (not a region: it has no descriptor).
pub(crate) const STORE_META_GROUP: raft_log::GroupId = raft_log::GroupId(u64::MAX);
const NEXT_ID_KEY: &[u8] = b"store/next_id";

/// Whether only a leader sends `m` (what may create a replica, or replace a stale one).
pub(crate) fn is_leader_message(m: &Message) -> bool {
    matches!(
        m.body,
        MessageBody::Append { .. } | MessageBody::Heartbeat { .. } | MessageBody::Snapshot { .. }
    )
}

impl<M: StateMachine> Store<M> {
    /// A new id, unique across the cluster and never reused (see the module docs).
    pub fn alloc_id(&mut self) -> Result<u64, StoreError> {
        if self.next_id.0 >= self.next_id.1 {
            let limit = self.next_id.0 + ID_BATCH;
            assert!(
                limit < 1 << ID_COUNTER_BITS,
                "store {} allocated every id",
                self.cfg.store_id
            );
            let mut b = LogBatch::new();
            b.put_state(STORE_META_GROUP, NEXT_ID_KEY, &limit.to_le_bytes());
            self.engine.write(&mut b, true)?;
            self.next_id.1 = limit;
        }
        let n = self.next_id.0;
        self.next_id.0 += 1;
        Ok(self.cfg.store_id.0 << ID_COUNTER_BITS | n)
    }

    /// Where the allocator resumes after a restart: past every id it may have handed out.
    pub(crate) fn load_next_id(&self) -> (u64, u64) {
        let start = self
            .engine
            .get_state(STORE_META_GROUP, NEXT_ID_KEY)
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_le_bytes))
            .unwrap_or(1);
        (start, start)
    }

    /// Proposes splitting `region` (routed with `epoch`) at `split_key` on its leader here.
    /// The ticket completes with `Reply::Empty` once the split is applied on this store
    /// (both regions then exist here and are in the region map), or with the reason it was
    /// refused: `EpochNotMatch` when the region changed first, `KeyNotInRegion` when the key
    /// is not strictly inside it.
    pub fn propose_split(
        &mut self,
        region: RegionId,
        epoch: RegionEpoch,
        split_key: &[u8],
    ) -> Result<Ticket, StoreError> {
        let p = self.check_route(region, epoch, split_key)?;
        if p.region.is_placement() {
            return Err(StoreError::Proposal(
                "the placement group holds no keys and is never split".into(),
            ));
        }
        if split_key == p.region.start_key.as_slice() {
            return Err(StoreError::KeyNotInRegion { region });
        }
        if self.engine.is_out_of_space() {
            return Err(StoreError::NoSpace {
                store: self.cfg.store_id.0,
            });
        }
        let stores: Vec<StoreId> = p.region.peers.iter().map(|p| p.store).collect();
        // The new region starts at the parent's conf version (see `types::peer_id`).
        let conf_version = p.region.epoch.conf_version;
        self.refuse_legacy(region)?;
        let new_region = raft::GroupId(self.alloc_id()?);
        let new_peers: Vec<PeerMeta> = stores
            .into_iter()
            .map(|store| PeerMeta::voter(types::peer_id(conf_version, store), store))
            .collect();
        let data = AdminCommand::Split {
            epoch,
            split_key: split_key.to_vec(),
            new_region,
            new_peers,
        }
        .encode();
        self.propose_entry(region, data)
    }

    /// Acts on the effects of the round's admin entries (see the module docs).
    pub(crate) fn apply_effects(
        &mut self,
        effects: Vec<Effect<M>>,
        pending: &mut crate::ready::PendingWrite,
    ) -> Result<(), StoreError> {
        if effects.is_empty() {
            return Ok(());
        }
        for effect in effects {
            match effect {
                Effect::Split {
                    left,
                    right,
                    right_sm,
                    campaign,
                } => {
                    let mine = right.peer_on(self.cfg.store_id).map(|p| p.id);
                    if mine.is_none() {
                        // This replica is catching up through a split made before it was
                        // added to the region: the new region never had a replica here.
                    } else if self.peers.contains_key(&right.id) {
                        self.stats.split_peers_existing += 1;
                    } else if mine.is_some_and(|id| self.tombstoned(right.id, id)) {
                        // The new region's replica here was created, then removed from this
                        // store (this is the old region replaying its log after a restart):
                        // it must not come back.
                        self.stats.split_peers_existing += 1;
                    } else {
                        self.bootstrap_region(&right, right_sm.snapshot())?;
                        self.open_peer(right.clone())?;
                        if campaign {
                            self.campaign(right.id);
                        }
                        self.step_stashed_votes(right.id);
                        self.vote_waits.remove(&right.id);
                    }
                    self.write_region(&left)?;
                    self.stats.splits_applied += 1;
                }
                Effect::Membership {
                    region,
                    removed_here: true,
                } => {
                    self.stats.replica_changes_applied += 1;
                    self.destroy_peer(region.id, Some(&mut *pending))?
                }
                Effect::Membership { region, .. } => {
                    self.stats.replica_changes_applied += 1;
                    self.write_region(&region)?
                }
                Effect::Descriptor(region) => self.write_region(&region)?,
            }
        }
        self.publish_regions();
        Ok(())
    }

    /// Keeps a vote request for a region this store does not have (yet); returns whether it
    /// was one. When votes for the region have waited longer than two election timeouts,
    /// the split that would create its replica here is not coming (this store missed it: it
    /// was down, and caught up by a snapshot of the old region), and the region may need this
    /// store's vote to elect a leader at all (one that could create the replica with a
    /// message): then the vote creates an uninitialized replica, which answers it (TiKV
    /// creates replicas on votes always).
    pub(crate) fn stash_vote(&mut self, from: StoreId, m: &Message) -> Result<bool, StoreError> {
        if !matches!(
            m.body,
            MessageBody::PreVote { .. } | MessageBody::Vote { .. }
        ) {
            return Ok(false);
        }
        // When the first vote request for the region came, kept apart from the stash so that
        // evictions from the (bounded) stash do not restart the wait.
        if !self.vote_waits.contains_key(&m.group) && self.vote_waits.len() >= MAX_VOTE_WAITS {
            let oldest = self
                .vote_waits
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(r, _)| *r);
            if let Some(r) = oldest {
                self.vote_waits.remove(&r);
            }
        }
        let waited_since = *self.vote_waits.entry(m.group).or_insert(self.ticks);
        let patience = 2 * self.cfg.election_tick as u64;
        if self.ticks >= waited_since + patience
            && m.to != NodeId::NONE
            && !self.engine.is_out_of_space()
        {
            self.vote_waits.remove(&m.group);
            let region = uninitialized_region(m.group, PeerMeta::voter(m.to, self.cfg.store_id));
            self.write_region(&region)?;
            self.open_peer(region)?;
            self.stats.peers_created_by_vote += 1;
            self.step_stashed_votes(m.group);
            self.step(from, m.clone())?;
            return Ok(true);
        }
        if self.stashed_votes.len() >= MAX_STASHED_VOTES {
            self.stashed_votes.pop_front();
        }
        self.stashed_votes.push_back((from, m.clone(), self.ticks));
        Ok(true)
    }

    /// Hands the vote requests kept for `region` to its replica, just created here.
    fn step_stashed_votes(&mut self, region: RegionId) {
        let (mine, others): (Vec<_>, Vec<_>) = std::mem::take(&mut self.stashed_votes)
            .into_iter()
            .partition(|(_, m, _)| m.group == region);
        self.stashed_votes = others.into();
        for (from, m, _) in mine {
            // A stale request is refused by Raft like any other.
            let _ = self.step(from, m);
        }
    }

    /// Creates an uninitialized replica for a message from a leader of a region this store
    /// does not have (a region split on the other stores first, or a replica added here):
    /// it answers its leader and receives a snapshot, which brings the descriptor. Its
    /// (empty) descriptor is written first so that the votes it casts survive a restart.
    /// Returns whether one was created.
    pub(crate) fn maybe_create_peer(
        &mut self,
        from: StoreId,
        m: &Message,
    ) -> Result<bool, StoreError> {
        if !is_leader_message(m)
            || m.to == NodeId::NONE
            || from == self.cfg.store_id
            || self.engine.is_out_of_space()
        {
            // (A full disk: the creation's synced write would wait for space on the store
            // thread, which frees space; the leader retries.)
            return Ok(false);
        }
        let region = uninitialized_region(m.group, PeerMeta::voter(m.to, self.cfg.store_id));
        self.write_region(&region)?;
        self.open_peer(region)?;
        self.stats.peers_created_by_message += 1;
        Ok(true)
    }
}
