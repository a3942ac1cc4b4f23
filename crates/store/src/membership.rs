//! Replica changes at runtime: adding a replica on another store (as a learner that catches
//! up, then promoted), removing one, and what a store does with a replica removed from it
//! (a tombstone, its data deleted).
//!
//! ## A change, start to end
//! 1. [`Store::propose_replica_change`] on the region's leader proposes a `raft::ConfChange`
//!    whose context ([`ChangeContext`]) names the conf version it was made against and the
//!    replicas it adds (their stores; a new replica's id is `types::peer_id` of the conf
//!    version the change makes).
//! 2. Every replica applies it at the same log position (`apply_membership`): refused if the
//!    conf version changed meanwhile (the same on every replica), otherwise Raft switches to
//!    the new configuration and the descriptor follows it — its peers are exactly the nodes
//!    of the configuration (joint ones included, so outgoing voters keep receiving messages
//!    until the joint configuration is left), learners marked, `conf_version + 1`.
//! 3. The store acts after the round's applies (`Effect::Membership`): the descriptor is
//!    written and the region map published; a store whose own replica left destroys it.
//!
//! A new replica is created on its store by the leader's first message (see
//! `Store::maybe_create_peer`) and filled by a snapshot, which carries the descriptor.
//!
//! ## Destroying a replica
//! Its pending requests fail (`Dropped`: a write may still commit through the other
//! replicas, so its outcome is unknown), its group is cleaned from the log in a synced write
//! that also records a tombstone (region, peer id), then its snapshot files are deleted. A
//! tombstoned peer is never created again: a late message for it is dropped. The region can
//! come back to the store as a new peer (a new id). Files of groups the log no longer has
//! (a crash between the clean and the deletion) are deleted when the store opens.
//!
//! ## A replica removed while its store was away
//! It never learns it: the change committed without it, and nobody messages a removed peer.
//! It keeps its data until placement, which knows the region as it is now, tells its store:
//! [`Store::destroy_stale_replica`] then destroys it as applying its own removal would have
//! (TiKV's PD does the same for such stale peers). Only a replica provably older than
//! placement's descriptor goes: a lower conf version than it, and no replica on this store in
//! it; a merge's source is left to the merge.

use crate::entry::ChangeContext;
use crate::error::StoreError;
use crate::peer::Peer;
use crate::ready::PendingWrite;
use crate::region::{PeerMeta, RegionEpoch, RegionId, StoreId};
use crate::split::{Effect, STORE_META_GROUP};
use crate::state_machine::StateMachine;
use crate::store::{engine_group, Completion, Reply, Store, Ticket};
use raft::{ConfChange, NodeId};
use raft_log::LogBatch;

/// State key (in the store's own group) of the tombstones: `(region, peer id)` pairs.
/// The peer id under which a tombstone records a region merged away here (no real peer has
/// it: ids are allocated far below).
pub(crate) const MERGED_AWAY: NodeId = NodeId(u64::MAX);
const TOMBSTONES_KEY: &[u8] = b"store/tombstones";

/// The conf version whose change added the replica `id` (see `types::peer_id`); 0 for a
/// bootstrap id (`region * 1000 + store`, a founding replica); `u64::MAX` (newer than
/// anything) for an id `types::peer_id` cannot have made, so such a replica is never taken
/// for a stale one.
fn added_at_conf_version(id: NodeId) -> u64 {
    let store_bits = types::region::PEER_STORE_BITS;
    if id.0 < 1 << store_bits {
        0
    } else if id.0 >= 1 << 40 {
        u64::MAX
    } else {
        id.0 >> store_bits
    }
}

/// A change to a region's replicas, named by store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaChange {
    /// Add a replica on the store, as a learner (a new peer id).
    AddLearner(StoreId),
    /// Make the store's learner a voter (refused until it has caught up).
    Promote(StoreId),
    /// Remove the store's replica, voter or learner.
    Remove(StoreId),
    /// Promote the learner on `promote` and remove the replica on `remove` in one change:
    /// two voters change at once, so Raft goes through a joint configuration (both old and
    /// new voters must agree) and leaves it by itself.
    Swap { promote: StoreId, remove: StoreId },
}

impl<M: StateMachine> Store<M> {
    /// Proposes `change` on this store's replica of `region` (it must lead), routed with
    /// `epoch`. The ticket completes with `Reply::Empty` once applied here, or with why it was
    /// refused at apply (`EpochNotMatch`: another change came first).
    pub fn propose_replica_change(
        &mut self,
        region: RegionId,
        epoch: RegionEpoch,
        change: ReplicaChange,
    ) -> Result<Ticket, StoreError> {
        let p = self
            .peers
            .get(&region)
            .filter(|p| p.initialized())
            .ok_or(StoreError::RegionNotFound(region))?;
        if p.region.epoch != epoch {
            return Err(StoreError::EpochNotMatch {
                current: Box::new(p.region.clone()),
            });
        }
        if self.engine.is_out_of_space() {
            return Err(StoreError::NoSpace {
                store: self.cfg.store_id.0,
            });
        }
        self.refuse_legacy(region)?;
        let p = self.peers.get(&region).expect("checked");
        let on = |store: StoreId| p.region.peer_on(store);
        let conf_version = p.region.epoch.conf_version;
        let refuse = |why: String| Err(StoreError::Proposal(why));
        // A leader never removes its own replica (TiKV refuses it too): it would destroy the
        // replica on applying the change, possibly before any follower learned the change
        // committed, and followers left in the joint configuration (a swap) or the old one
        // could then never win its half (simulator seed 1066 at 120 s). Transfer first.
        let removed = match change {
            ReplicaChange::Remove(s) | ReplicaChange::Swap { remove: s, .. } => Some(s),
            _ => None,
        };
        if removed == Some(self.cfg.store_id) {
            return refuse(format!(
                "region {region}'s replica on store {} leads it: transfer the leadership before removing it",
                self.cfg.store_id
            ));
        }
        let (cc, added) = match change {
            ReplicaChange::AddLearner(store) => {
                if on(store).is_some() {
                    return refuse(format!(
                        "region {region} already has a replica on store {store}"
                    ));
                }
                if store.0 > crate::MAX_STORE_ID {
                    return refuse(format!("store id {store} is out of range"));
                }
                // The id the new configuration gives it (see `types::peer_id`).
                let id = types::peer_id(conf_version + 1, store);
                let peer = PeerMeta {
                    id,
                    store,
                    learner: true,
                };
                (ConfChange::add_learner(id.0), vec![peer])
            }
            ReplicaChange::Promote(store) => match on(store) {
                Some(peer) if peer.learner => (ConfChange::add_voter(peer.id.0), Vec::new()),
                Some(_) => {
                    return refuse(format!(
                        "the replica of region {region} on store {store} is a voter already"
                    ))
                }
                None => return refuse(format!("region {region} has no replica on store {store}")),
            },
            ReplicaChange::Remove(store) => match on(store) {
                Some(peer) => (ConfChange::remove_node(peer.id.0), Vec::new()),
                None => return refuse(format!("region {region} has no replica on store {store}")),
            },
            ReplicaChange::Swap { promote, remove } => match (on(promote), on(remove)) {
                (Some(learner), Some(old)) if learner.learner && !old.learner => {
                    use raft::{ConfChangeItem, ConfChangeKind};
                    let cc = ConfChange {
                        changes: vec![
                            ConfChangeItem {
                                kind: ConfChangeKind::AddVoter,
                                node: learner.id,
                            },
                            ConfChangeItem {
                                kind: ConfChangeKind::RemoveNode,
                                node: old.id,
                            },
                        ],
                        joint: true,
                        context: Default::default(),
                    };
                    (cc, Vec::new())
                }
                _ => return refuse(format!(
                    "region {region} needs a learner on store {promote} and a voter on store {remove} to swap them"
                )),
            },
        };
        let cc = ConfChange {
            context: ChangeContext {
                conf_version,
                added,
            }
            .encode(),
            ..cc
        };
        let ticket = self.ticket();
        let p = self.peers.get_mut(&region).expect("checked");
        let proposed = p.raw.propose_conf_change(&cc);
        crate::store::track_proposal(region, p, ticket, proposed)
    }

    /// Applies a committed membership change to a replica (see the module docs).
    pub(crate) fn apply_membership(
        p: &mut Peer<M>,
        data: &[u8],
        effects: &mut Vec<Effect<M>>,
    ) -> Result<Reply<M>, StoreError> {
        let cc = ConfChange::decode(data)
            .map_err(|e| StoreError::Proposal(format!("undecodable conf change: {e}")))?;
        let mut known = p.region.peers.clone();
        if !cc.context.is_empty() {
            let ctx = ChangeContext::decode(&cc.context)
                .ok_or_else(|| StoreError::Proposal("undecodable conf change context".into()))?;
            if ctx.conf_version != p.region.epoch.conf_version {
                return Err(StoreError::EpochNotMatch {
                    current: Box::new(p.region.clone()),
                });
            }
            known.extend(ctx.added);
        }
        // A replica that catches up through changes made before it was added (its snapshot
        // is older than its own addition) is not a member of those configurations; only a
        // member that leaves one is removed.
        let was_member = p.region.peer(p.raw.id()).is_some();
        let cs = p.raw.apply_conf_change(&cc);
        let mut peers: Vec<PeerMeta> = Vec::new();
        let members = cs
            .voters
            .iter()
            .chain(&cs.voters_outgoing)
            .chain(&cs.learners)
            .chain(&cs.learners_next);
        for &id in members {
            if peers.iter().any(|p| p.id == id) {
                continue;
            }
            let store = known
                .iter()
                .rev()
                .find(|k| k.id == id)
                .map(|k| k.store)
                .unwrap_or_else(|| {
                    panic!(
                        "region {}: member {id} of {cs:?} has no known store ({known:?})",
                        p.region.id
                    )
                });
            peers.push(PeerMeta {
                id,
                store,
                learner: cs.learners.contains(&id),
            });
        }
        // In the descriptor's order, new members last (a stable order for scripts).
        peers.sort_by_key(|m| {
            p.region
                .peers
                .iter()
                .position(|old| old.id == m.id)
                .unwrap_or(usize::MAX)
        });
        p.region.peers = peers;
        p.region.epoch.conf_version += 1;
        p.learned.clear();
        effects.push(Effect::Membership {
            region: p.region.clone(),
            removed_here: was_member && p.region.peer(p.raw.id()).is_none(),
        });
        Ok(Reply::Empty)
    }

    /// Destroys this store's replica of `region` if `current` (placement's descriptor of the
    /// region as it is now) shows it was removed while this store was away (see the module
    /// docs): the replica's conf version is lower than `current`'s and `current` has no
    /// replica on this store. It goes as applying its own removal would have made it go (its
    /// requests fail, a tombstone keeps stale messages and log replays from re-creating it,
    /// its log and snapshot files are deleted, it leaves the region map). Returns whether it
    /// was destroyed; otherwise nothing changed: no replica here, `current` is not `region`,
    /// it is still a member, it is as new as `current` or newer, or it is part of a merge.
    ///
    /// A replica without a descriptor yet (created by a leader's message, waiting for its
    /// snapshot) has no conf version: the one its peer id was made at (`types::peer_id`)
    /// stands for it, so one added after `current` was made is kept.
    pub fn destroy_stale_replica(
        &mut self,
        region: RegionId,
        current: &crate::region::Region,
    ) -> Result<bool, StoreError> {
        let Some(p) = self.peers.get(&region) else {
            return Ok(false);
        };
        // When this peer was added (its id says, `types::peer_id`), not the conf version of
        // the descriptor it holds: a learner may start from a snapshot older than its own
        // addition (taken before it), and destroying it then would tombstone a replica the
        // region is waiting for. A peer added before `current`'s conf version and missing
        // from `current` was removed since.
        let mut conf_version = added_at_conf_version(p.raw.id());
        if p.initialized() {
            conf_version = conf_version.max(p.region.epoch.conf_version);
        }
        let stale = current.id == region
            && current.peer_on(self.cfg.store_id).is_none()
            && current.peer(p.raw.id()).is_none()
            && conf_version < current.epoch.conf_version
            && p.merging.is_none()
            && p.merged_into.is_none()
            && p.merge_wait.is_none();
        if !stale {
            return Ok(false);
        }
        self.destroy_peer(region, None)?;
        self.publish_regions();
        self.stats.stale_replicas_destroyed += 1;
        Ok(true)
    }

    /// Destroys this store's replica of `region` (see the module docs). `pending`: the round
    /// being prepared, whose staged writes for the group must not outlive the clean.
    pub(crate) fn destroy_peer(
        &mut self,
        region: RegionId,
        mut pending: Option<&mut PendingWrite>,
    ) -> Result<(), StoreError> {
        // Earlier rounds (queued or submitted) are written before the clean.
        self.wait_writes()?;
        let Some(p) = self.peers.remove(&region) else {
            return Ok(());
        };
        for (_, _, ticket) in &p.proposals {
            self.completions.push(Completion {
                ticket: *ticket,
                result: Err(StoreError::Dropped),
            });
        }
        for r in &p.reads {
            self.completions.push(Completion {
                ticket: r.ticket,
                result: Err(StoreError::RegionNotFound(region)),
            });
        }
        let me = p.raw.id();
        let Peer { receiving, .. } = p;
        if let Some((receiver, _)) = receiving {
            self.stats.snapshot_receiving_bytes -= receiver.received();
            receiver.discard();
        }
        self.tombstones.insert((region, me));
        let group = engine_group(region);
        // A snapshot of the destroyed replica committed but not yet synced must not remove
        // "older" files later: they would be its successor's.
        self.snapshots_unsynced.retain(|s| s.group != group);
        self.snapshot_work.retain(|w| {
            !matches!(w, crate::snapshot_job::SnapshotWork::RemoveOlder { kept, .. } if kept.group == group)
        });
        let mut b = LogBatch::new();
        b.clean_group(group);
        b.put_state(STORE_META_GROUP, TOMBSTONES_KEY, &self.encode_tombstones());
        self.engine.write(&mut b, true)?;
        if let Some(pending) = pending.as_deref_mut() {
            pending.clean_group(group);
        }
        raft_log::remove_group_snapshots(self.fs.as_ref(), &self.snap_dir, &|g| g != group)?;
        self.compact_wanted.remove(&region);
        self.stats.peers_destroyed += 1;
        // Merge sources absorbed by this replica were waiting for its snapshot: they go with
        // it (their state is part of it, wherever the region lives on).
        let absorbed: Vec<RegionId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.merged_into.is_some_and(|(t, _)| t == region))
            .map(|(id, _)| *id)
            .collect();
        for source in absorbed {
            self.destroy_merged(source, pending.as_deref_mut())?;
        }
        Ok(())
    }

    /// Destroys this store's replica of `region`, a region merged away (absorbed by its
    /// merge's target, or found dead inside a newer region), and records that the region
    /// is gone for good (see [`Store::merged_away`]).
    pub(crate) fn destroy_merged(
        &mut self,
        region: RegionId,
        pending: Option<&mut PendingWrite>,
    ) -> Result<(), StoreError> {
        self.tombstones.insert((region, MERGED_AWAY));
        self.destroy_peer(region, pending)?;
        self.stats.merge_sources_destroyed += 1;
        Ok(())
    }

    /// Whether `region` was merged away on this store: its replica here had applied
    /// everything up to its own freeze (absorbed here, or frozen and then found inside its
    /// target's snapshot; see `crate::merge`).
    pub(crate) fn merged_away(&self, region: RegionId) -> bool {
        self.tombstones.contains(&(region, MERGED_AWAY))
    }

    /// Whether `(region, peer)` was destroyed here: it never comes back. (A region merged
    /// away is also recorded under the peer id [`MERGED_AWAY`].)
    pub(crate) fn tombstoned(&self, region: RegionId, peer: NodeId) -> bool {
        self.tombstones.contains(&(region, peer))
    }

    fn encode_tombstones(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(16 * self.tombstones.len());
        for (r, p) in &self.tombstones {
            b.extend_from_slice(&r.0.to_le_bytes());
            b.extend_from_slice(&p.0.to_le_bytes());
        }
        b
    }

    /// The tombstones recorded in the log, and the snapshot files of groups the log no
    /// longer has removed (a crash between a destroy's clean and its file deletion).
    pub(crate) fn load_tombstones(&mut self) -> Result<(), StoreError> {
        if let Some(raw) = self.engine.get_state(STORE_META_GROUP, TOMBSTONES_KEY) {
            if raw.len() % 16 != 0 {
                return Err(StoreError::Storage(format!(
                    "tombstone list of {} bytes is not a whole number of entries",
                    raw.len()
                )));
            }
            for pair in raw.chunks_exact(16) {
                let r = u64::from_le_bytes(pair[..8].try_into().expect("8 bytes"));
                let p = u64::from_le_bytes(pair[8..].try_into().expect("8 bytes"));
                self.tombstones.insert((raft::GroupId(r), NodeId(p)));
            }
        }
        let groups = self.engine.groups();
        raft_log::remove_group_snapshots(self.fs.as_ref(), &self.snap_dir, &|g| {
            groups.contains(&g)
        })?;
        Ok(())
    }
}
