//! Merging a region (the *source*) into its neighbour (the *target*), whose replicas are on
//! the same stores. TiKV's prepare/commit merge is the model; the source's catch-up is
//! simpler because both regions live on the same stores and the target commits only once
//! every source replica holds the source's whole log.
//!
//! ## A merge, start to end
//! 1. **Prepare** ([`Store::propose_merge`], on the source's leader): an admin entry in the
//!    source's log. Applied at index `p`, it *freezes* the source on every replica: both
//!    epoch numbers +1 (commands routed before are refused at apply), no proposals or reads
//!    accepted (`StoreError::Merging`), no split or membership change applied, and its
//!    [`MergeState`] recorded (also in its snapshots, so a replica that catches up by one
//!    stays frozen). A frozen leader serves no read, lease or not, from the moment it applies
//!    the freeze: the lease ends before the merge can commit. The proposal is refused while
//!    a source replica trails by more than [`MERGE_MAX_LOG_GAP`] entries (the commit waits
//!    for every replica).
//! 2. **Commit** (driven by the source's leader, [`Store::drive_merges`]): once every source
//!    replica's log holds the source's log up to `p` (the leader's match indexes) and `p` is
//!    committed, the store proposes `CommitMerge` to its replica of the target if that one
//!    leads, or else hands the source's leadership to the target leader's store. The entry
//!    carries the frozen source descriptor, `p` and its term, and the target epoch recorded at
//!    prepare.
//! 3. Every target replica applies `CommitMerge` at the same index `i`: if its epoch is still
//!    the recorded one (and the stores match), it stops applying there (the core's apply
//!    limit) until *this store's* source replica has applied `p` — if it has not, its commit
//!    index is raised to `p` from the committed proof ([`raft::RawNode::commit_known`]), since
//!    it may never hear from a source leader again. Then the target absorbs the source's
//!    state ([`StateMachine::absorb`]), spans both ranges with `version = max + 1`, records
//!    the source among the regions it absorbed, and goes on applying. Nothing is lost: the
//!    source applied everything up to `p` and accepted nothing after. Until a snapshot at or
//!    after `i` exists, no older one is sent to a follower (a replica added now would replay
//!    the commit on a store without a source replica).
//! 4. The source replica stays (silent, out of the region map) until a snapshot of the target
//!    at or after `i` is committed or installed — the target's state is rebuilt from its snapshot and log
//!    after a restart, and replaying `CommitMerge` needs the source — and is then destroyed
//!    with a tombstone like a removed replica.
//!
//! ## Rollback
//! If the target's epoch changed after the prepare (split, membership change, another merge),
//! `CommitMerge` is refused at apply everywhere and can never be accepted later (epochs only
//! grow). The source's leader sees this on its own store's target replica (an epoch newer
//! than recorded, this source not among the regions it absorbed) and proposes
//! `RollbackMerge`: the source unfreezes with `version + 1`. If the target was itself merged away on this store (it
//! applied everything up to its own freeze first, so it would have absorbed this source had
//! the commit been accepted before), the merge is rolled back too. If this store has no
//! target replica at all (it left this store), the source's leadership moves on to its next
//! store, which may know.
//!
//! ## Stale replicas
//! A region remembers the regions it absorbed (`Peer::absorbed`, kept in its snapshots). A
//! source replica that another replica on its store names there, though it was not absorbed
//! from it, is dead: that store's target replica installed a snapshot taken after the merge
//! (a lagging store), and nothing here will replay the merge ([`Store::destroy_dead_sources`],
//! after installs, at open and on ticks). An absorbed source's fate `(target, at)` is written
//! with the target's descriptor, so after a restart it stays silent while the target may
//! replay the merge, and goes at once if the target's snapshot already covers it
//! ([`Store::load_merged_into`]). Range geometry alone is not evidence: the target may have
//! split since. A source left frozen on a store that the target left before it applied the
//! merge stays until placement's clean-up (like any replica removed while it was away).

use crate::entry::AdminCommand;
use crate::error::StoreError;
use crate::peer::Peer;
use crate::ready::PendingWrite;
use crate::region::{Region, RegionEpoch, RegionId, StoreId};
use crate::state_machine::StateMachine;
use crate::store::{engine_group, Completion, Store, Ticket, REGION_KEY};
use raft::{LogIndex, Role, Term};
use raft_log::LogBatch;
use std::collections::BTreeSet;

// A region's absorbed list (`Peer::absorbed`) has no cap, unlike every other list here:
// rollbacks and dead-source destruction decide from a name's *absence*, so dropping old
// names would make a rollback unsafe, not merely slow. It costs 8 bytes per region ever
// merged into the region's lineage; placement (which knows when every store has destroyed
// a source) is the place to prune it.

/// Engine state key of an absorbed source's group: `(target, at)` (see
/// [`Store::load_merged_into`]).
pub(crate) const MERGED_INTO_KEY: &[u8] = b"store/merged_into";

/// How far (in entries) a source replica's log may trail the leader's commit index when a
/// merge is proposed: the commit waits for every replica to hold the log up to the freeze,
/// so a replica far behind (or down) would keep the region frozen (TiKV refuses the same way).
pub const MERGE_MAX_LOG_GAP: u64 = 64;

/// A frozen merge source: what it waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MergeState {
    pub target: RegionId,
    /// Index and term of the `PrepareMerge` entry that froze the region.
    pub prepare_index: LogIndex,
    pub prepare_term: Term,
    /// The target's epoch when the merge was proposed; the commit requires it unchanged.
    pub target_epoch: RegionEpoch,
}

impl MergeState {
    pub(crate) const ENCODED_LEN: usize = 40;

    pub(crate) fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut b = [0u8; Self::ENCODED_LEN];
        for (i, v) in [
            self.target.0,
            self.prepare_index.0,
            self.prepare_term.0,
            self.target_epoch.conf_version,
            self.target_epoch.version,
        ]
        .into_iter()
        .enumerate()
        {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// Decodes [`MergeState::encode`]'s output; `b` is exactly `ENCODED_LEN` bytes.
    pub(crate) fn decode(b: &[u8]) -> MergeState {
        let u = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        MergeState {
            target: raft::GroupId(u(0)),
            prepare_index: LogIndex(u(1)),
            prepare_term: Term(u(2)),
            target_epoch: RegionEpoch {
                conf_version: u(3),
                version: u(4),
            },
        }
    }
}

/// A target replica that applied `CommitMerge` at `at` and waits for this store's source
/// replica to reach the freeze.
#[derive(Clone, Debug)]
pub(crate) struct MergeWait {
    pub(crate) source: Region,
    pub(crate) prepare_index: LogIndex,
    pub(crate) prepare_term: Term,
    pub(crate) at: LogIndex,
}

/// The stores of a region's replicas, if all are voters (a merge needs that on both sides).
fn voter_stores(r: &Region) -> Option<BTreeSet<StoreId>> {
    if r.peers.iter().any(|p| p.learner) {
        return None;
    }
    Some(r.peers.iter().map(|p| p.store).collect())
}

/// Whether `a` and `b` share a boundary.
fn adjacent(a: &Region, b: &Region) -> bool {
    a.end_key.as_deref() == Some(b.start_key.as_slice())
        || b.end_key.as_deref() == Some(a.start_key.as_slice())
}

/// The region spanning `target` and its neighbour `source`, with `version = max + 1`.
fn merged(target: &Region, source: &Region) -> Region {
    let mut r = target.clone();
    if target.end_key.as_deref() == Some(source.start_key.as_slice()) {
        r.end_key = source.end_key.clone();
    } else {
        r.start_key = source.start_key.clone();
    }
    r.epoch.version = target.epoch.version.max(source.epoch.version) + 1;
    r
}

/// Whether `inner`'s range lies inside `outer`'s.
#[cfg(test)]
fn contains_range(outer: &Region, inner: &Region) -> bool {
    outer.start_key <= inner.start_key
        && match (&outer.end_key, &inner.end_key) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(o), Some(i)) => i <= o,
        }
}

/// Why `source` cannot be merged into `target` (the same checks at proposal and at apply).
fn merge_refusal(source: &Region, target: &Region) -> Option<String> {
    if source.id == target.id {
        return Some(format!("region {} cannot merge with itself", source.id));
    }
    if !adjacent(source, target) {
        return Some(format!(
            "regions {} and {} are not adjacent",
            source.id, target.id
        ));
    }
    match (voter_stores(source), voter_stores(target)) {
        (Some(a), Some(b)) if a == b => None,
        (Some(_), Some(_)) => Some(format!(
            "regions {} and {} have replicas on different stores; move them onto the same stores first",
            source.id, target.id
        )),
        _ => Some(format!(
            "regions {} and {} must have voters only (a learner is being added)",
            source.id, target.id
        )),
    }
}

impl<M: StateMachine> Store<M> {
    /// Proposes merging `source` (routed with `epoch`) into its neighbour `target` on the
    /// source's leader here. The ticket completes once the source is frozen on this store
    /// (the commit follows by itself, see the module docs) or with the reason it was refused.
    pub fn propose_merge(
        &mut self,
        source: RegionId,
        epoch: RegionEpoch,
        target: RegionId,
    ) -> Result<Ticket, StoreError> {
        if source == types::PLACEMENT_REGION || target == types::PLACEMENT_REGION {
            return Err(StoreError::Proposal(
                "the placement group holds no keys and is never merged".into(),
            ));
        }
        let s = self
            .peers
            .get(&source)
            .filter(|p| p.initialized())
            .ok_or(StoreError::RegionNotFound(source))?;
        if s.region.epoch != epoch {
            return Err(StoreError::EpochNotMatch {
                current: Box::new(s.region.clone()),
            });
        }
        if s.merging.is_some() {
            return Err(StoreError::Merging { region: source });
        }
        let t = self
            .peers
            .get(&target)
            .filter(|p| p.initialized() && p.merged_into.is_none())
            .ok_or(StoreError::RegionNotFound(target))?;
        if t.merging.is_some() {
            return Err(StoreError::Merging { region: target });
        }
        if let Some(why) = merge_refusal(&s.region, &t.region) {
            return Err(StoreError::Proposal(why));
        }
        if s.raw.role() == Role::Leader {
            let floor = s.raw.commit_index().0.saturating_sub(MERGE_MAX_LOG_GAP);
            if let Some(behind) = s
                .region
                .peers
                .iter()
                .find(|p| s.raw.follower_match(p.id).is_none_or(|m| m.0 < floor))
            {
                return Err(StoreError::Proposal(format!(
                    "region {source}'s replica on store {} is not caught up; retry once it is",
                    behind.store
                )));
            }
        }
        let target_region = t.region.clone();
        self.refuse_legacy(source)?;
        self.refuse_legacy(target)?;
        let data = AdminCommand::PrepareMerge {
            epoch,
            target: target_region,
        }
        .encode();
        self.propose_entry(source, data)
    }

    /// Applies `PrepareMerge` at `index` (of `term`) to a replica of the source.
    pub(crate) fn apply_prepare_merge(
        p: &mut Peer<M>,
        epoch: RegionEpoch,
        target: Region,
        index: LogIndex,
        term: Term,
    ) -> Result<(), StoreError> {
        if p.region.epoch != epoch {
            return Err(StoreError::EpochNotMatch {
                current: Box::new(p.region.clone()),
            });
        }
        if p.merging.is_some() {
            return Err(StoreError::Merging {
                region: p.region.id,
            });
        }
        if !p.raw.status().conf_state.voters_outgoing.is_empty() {
            return Err(StoreError::Proposal(format!(
                "region {} is changing its voters (joint configuration); retry the merge",
                p.region.id
            )));
        }
        if let Some(why) = merge_refusal(&p.region, &target) {
            return Err(StoreError::Proposal(why));
        }
        p.merging = Some(MergeState {
            target: target.id,
            prepare_index: index,
            prepare_term: term,
            target_epoch: target.epoch,
        });
        p.region.epoch.version += 1;
        p.region.epoch.conf_version += 1;
        Ok(())
    }

    /// Applies `RollbackMerge` to a replica of a frozen source.
    pub(crate) fn apply_rollback_merge(
        p: &mut Peer<M>,
        prepare_index: LogIndex,
    ) -> Result<(), StoreError> {
        match p.merging {
            Some(m) if m.prepare_index == prepare_index => {
                p.merging = None;
                p.region.epoch.version += 1;
                Ok(())
            }
            _ => Err(StoreError::Proposal(format!(
                "region {} has no merge prepared at {prepare_index}",
                p.region.id
            ))),
        }
    }

    /// Checks `CommitMerge` against a replica of the target; on success the replica waits
    /// (see the module docs) from entry `at` on.
    pub(crate) fn apply_commit_merge(
        p: &mut Peer<M>,
        source: Region,
        prepare_index: LogIndex,
        prepare_term: Term,
        target_epoch: RegionEpoch,
        at: LogIndex,
    ) -> Result<(), StoreError> {
        if p.region.epoch != target_epoch || p.merging.is_some() {
            return Err(StoreError::EpochNotMatch {
                current: Box::new(p.region.clone()),
            });
        }
        if let Some(why) = merge_refusal(&source, &p.region) {
            return Err(StoreError::Proposal(why));
        }
        p.raw.set_apply_limit(Some(at));
        p.merge_wait = Some(MergeWait {
            source,
            prepare_index,
            prepare_term,
            at,
        });
        Ok(())
    }

    /// Finishes the merges whose targets wait for their source replica here (see the module
    /// docs); called after each round's applies. Returns whether any finished.
    pub(crate) fn finish_merges(&mut self) -> Result<bool, StoreError> {
        let waiting: Vec<RegionId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.merge_wait.is_some())
            .map(|(id, _)| *id)
            .collect();
        let mut finished = false;
        for target in waiting {
            let w = self.peers[&target].merge_wait.clone().expect("waiting");
            let Some(s) = self.peers.get_mut(&w.source.id) else {
                self.stats.merge_waits_without_source += 1;
                continue;
            };
            if s.applied < w.prepare_index {
                if !s.raw.commit_known(w.prepare_index, w.prepare_term) {
                    // Every source replica held the log up to the freeze when the commit was
                    // proposed, so this one must too; until it does (a snapshot on its way),
                    // the target waits.
                    self.stats.merge_waits_without_source += 1;
                }
                continue;
            }
            let frozen = s.merging;
            assert!(
                frozen.is_some_and(|m| m.prepare_index == w.prepare_index && m.target == target),
                "region {target} committed the merge of region {} frozen at {}, but this \
                 store's source replica (applied {}) is in merge state {frozen:?}",
                w.source.id,
                w.prepare_index,
                s.applied
            );
            let source_sm = std::mem::replace(&mut s.sm, M::empty(&s.region));
            // What the source absorbed is dead too: the list is transitive.
            let mut gone = std::mem::take(&mut s.absorbed);
            gone.push(w.source.id);
            s.merged_into = Some((target, w.at));
            fail_requests(s, &mut self.completions);
            let t = self.peers.get_mut(&target).expect("waiting target");
            let region = merged(&t.region, &w.source);
            t.sm.absorb(source_sm, &region);
            t.region = region;
            t.merge_wait = None;
            t.raw.set_apply_limit(None);
            t.absorbed.extend(gone);
            // Until a snapshot covering the merge exists, no follower gets an older one: it
            // would replay the commit on a store that may have no source replica.
            t.raw.storage_mut().set_snapshot_floor(w.at);
            // The target's descriptor and the source's fate in one synced write: after a
            // restart the source stays silent (see `Store::load_merged_into`).
            let mut b = LogBatch::new();
            b.put_state(engine_group(target), REGION_KEY, &t.region.encode());
            let mut fate = target.0.to_le_bytes().to_vec();
            fate.extend_from_slice(&w.at.0.to_le_bytes());
            b.put_state(engine_group(w.source.id), MERGED_INTO_KEY, &fate);
            self.engine.write(&mut b, true)?;
            // The source goes once a snapshot of the target covers the merge.
            self.compact_wanted.insert(target);
            self.stats.merges_applied += 1;
            finished = true;
        }
        if finished {
            self.publish_regions();
        }
        Ok(finished)
    }

    /// Destroys the merge sources whose target's snapshot at `index` now covers the merge
    /// (see the module docs). `pending`: the round being prepared, if any.
    pub(crate) fn destroy_merged_sources(
        &mut self,
        target: RegionId,
        index: LogIndex,
        mut pending: Option<&mut PendingWrite>,
    ) -> Result<(), StoreError> {
        let done: Vec<RegionId> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.merged_into
                    .is_some_and(|(t, at)| t == target && at <= index)
            })
            .map(|(id, _)| *id)
            .collect();
        for source in done {
            self.destroy_merged(source, pending.as_deref_mut())?;
        }
        Ok(())
    }

    /// Destroys the source replicas that another replica here names among the regions it
    /// absorbed, though not from them (it installed a snapshot taken after the merge): they
    /// are dead, and no replica here needs them (a source merges into one target only, and
    /// that one is past the merge) (see the module docs). Not one absorbed here and waiting for
    /// its target's snapshot ([`Store::destroy_merged_sources`] handles those). `pending`: the round being prepared,
    /// if any.
    pub(crate) fn destroy_dead_sources(
        &mut self,
        mut pending: Option<&mut PendingWrite>,
    ) -> Result<(), StoreError> {
        let absorbed: BTreeSet<RegionId> = self
            .peers
            .values()
            .filter(|t| t.merge_wait.is_none())
            .flat_map(|t| t.absorbed.iter().copied())
            .collect();
        let dead: Vec<RegionId> = self
            .peers
            .iter()
            .filter(|(id, s)| s.merged_into.is_none() && absorbed.contains(id))
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            self.destroy_merged(id, pending.as_deref_mut())?;
        }
        Ok(())
    }

    /// At open: an absorbed source (its fate recorded when it was absorbed) stays silent
    /// while its target may still replay the merge, and is destroyed if the target's snapshot
    /// already covers it (a crash came between the two).
    pub(crate) fn load_merged_into(&mut self) -> Result<(), StoreError> {
        let mut covered = Vec::new();
        for (id, p) in self.peers.iter_mut() {
            let Some(raw) = self.engine.get_state(engine_group(*id), MERGED_INTO_KEY) else {
                continue;
            };
            if raw.len() != 16 {
                return Err(StoreError::Storage(format!(
                    "merge record of region {id} has {} bytes, not 16",
                    raw.len()
                )));
            }
            let target = raft::GroupId(u64::from_le_bytes(raw[..8].try_into().expect("8")));
            let at = LogIndex(u64::from_le_bytes(raw[8..].try_into().expect("8")));
            p.merged_into = Some((target, at));
            covered.push((target, at));
        }
        for (target, at) in covered {
            let snapshot_index = self
                .peers
                .get(&target)
                .map(|t| t.raw.status().first_index.prev());
            match snapshot_index {
                Some(i) if i >= at => self.destroy_merged_sources(target, i, None)?,
                Some(_) => {}
                // The target left this store (destroyed with its sources, or a crash came
                // between): nothing will replay the merge here.
                None => self.destroy_merged_sources(target, LogIndex(u64::MAX), None)?,
            }
        }
        Ok(())
    }

    /// The source leader's part (see the module docs): proposes the commit, moves its
    /// leadership to the target leader's store, or rolls the merge back. Each frozen leader
    /// acts at most once per election timeout.
    pub(crate) fn drive_merges(&mut self) -> Result<(), StoreError> {
        self.destroy_dead_sources(None)?;
        let patience = self.cfg.election_tick as u64;
        let now = self.ticks;
        let mut actions = Vec::new();
        for (id, s) in &self.peers {
            let Some(m) = s.merging else { continue };
            if s.merged_into.is_some()
                || s.raw.role() != Role::Leader
                || now < s.merge_driven_at + patience
            {
                continue;
            }
            let Some(t) = self.peers.get(&m.target).filter(|t| t.initialized()) else {
                if self.merged_away(m.target) {
                    // The target froze for a merge of its own and is gone: this merge can
                    // never commit (see the module docs).
                    actions.push(MergeAction::Rollback(*id, m.prepare_index));
                } else if !self.peers.contains_key(&m.target) {
                    // No target here (its replica left this store): another store of the
                    // source may know more; hand it the leadership, in turn.
                    if let Some(to) = next_store(s) {
                        actions.push(MergeAction::Transfer(*id, to));
                    }
                }
                continue;
            };
            if t.merge_wait.as_ref().is_some_and(|w| w.source.id == *id) {
                continue; // committed here; the source replica catches up
            }
            let (te, re) = (t.region.epoch, m.target_epoch);
            if te == re {
                let everyone = s.region.peers.iter().all(|peer| {
                    s.raw
                        .follower_match(peer.id)
                        .is_some_and(|i| i >= m.prepare_index)
                });
                if !everyone || s.raw.commit_index() < m.prepare_index {
                    continue;
                }
                if t.raw.role() == Role::Leader {
                    actions.push(MergeAction::Commit(*id, m.target));
                } else if let Some(l) = t.region.peer(t.raw.leader()) {
                    actions.push(MergeAction::Transfer(*id, l.store));
                } else if let Some(to) = next_store(s) {
                    // This target replica knows no leader (cut off, or left behind by a
                    // removal it never learned): another store may know more.
                    actions.push(MergeAction::Transfer(*id, to));
                }
            } else if te.version >= re.version
                && te.conf_version >= re.conf_version
                && !t.absorbed.contains(id)
            {
                // The target moved on without this source: no commit was accepted before
                // (this store's target replica would have absorbed it, or would name it
                // among the regions it absorbed), and none can be after.
                actions.push(MergeAction::Rollback(*id, m.prepare_index));
            }
        }
        for action in actions {
            match action {
                MergeAction::Commit(source, target) => {
                    let s = &self.peers[&source];
                    let m = s.merging.expect("frozen");
                    let data = AdminCommand::CommitMerge {
                        source: s.region.clone(),
                        prepare_index: m.prepare_index.0,
                        prepare_term: m.prepare_term.0,
                        target_epoch: m.target_epoch,
                    }
                    .encode();
                    if let Some(t) = self.peers.get_mut(&target) {
                        // A refusal (leadership just lost, the log full) is retried later.
                        let _ = t.raw.propose(data);
                    }
                    self.stats.merge_commits_proposed += 1;
                }
                MergeAction::Transfer(source, to) => {
                    let _ = self.transfer_leader(source, to);
                }
                MergeAction::Rollback(source, prepare_index) => {
                    let data = AdminCommand::RollbackMerge {
                        prepare_index: prepare_index.0,
                    }
                    .encode();
                    if let Some(s) = self.peers.get_mut(&source) {
                        let _ = s.raw.propose(data);
                    }
                    self.stats.merge_rollbacks_proposed += 1;
                }
            }
            let (MergeAction::Commit(s, _)
            | MergeAction::Transfer(s, _)
            | MergeAction::Rollback(s, _)) = action;
            if let Some(p) = self.peers.get_mut(&s) {
                p.merge_driven_at = now;
            }
        }
        Ok(())
    }
}

/// The store after this replica's in its region's replica list (wrapping), if not its own.
fn next_store<M: StateMachine>(s: &Peer<M>) -> Option<StoreId> {
    let me = s.region.peer(s.raw.id()).map(|p| p.store);
    s.region
        .peers
        .iter()
        .map(|p| p.store)
        .skip_while(|st| Some(*st) != me)
        .nth(1)
        .or_else(|| s.region.peers.first().map(|p| p.store))
        .filter(|to| Some(*to) != me)
}

enum MergeAction {
    Commit(RegionId, RegionId),
    Transfer(RegionId, StoreId),
    Rollback(RegionId, LogIndex),
}

/// Fails the requests waiting on a source replica that was just absorbed: its keys now
/// belong to the target, where the client's retry goes.
fn fail_requests<M: StateMachine>(p: &mut Peer<M>, completions: &mut Vec<Completion<M>>) {
    let region = p.region.id;
    for (_, _, ticket) in p.proposals.drain(..) {
        completions.push(Completion {
            ticket,
            result: Err(StoreError::Merging { region }),
        });
    }
    for r in p.reads.drain(..) {
        completions.push(Completion {
            ticket: r.ticket,
            result: Err(StoreError::Merging { region }),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_state_round_trips() {
        let m = MergeState {
            target: raft::GroupId(7),
            prepare_index: LogIndex(99),
            prepare_term: Term(4),
            target_epoch: RegionEpoch {
                conf_version: 2,
                version: 11,
            },
        };
        assert_eq!(MergeState::decode(&m.encode()), m);
    }

    #[test]
    fn merged_spans_both_and_outgrows_both_versions() {
        let rs = Region::presplit(&[b"m".to_vec()], 1, &[StoreId(1)]);
        let (mut left, right) = (rs[0].clone(), rs[1].clone());
        left.epoch.version = 5;
        for (t, s) in [(&left, &right), (&right, &left)] {
            let m = merged(t, s);
            assert_eq!(m.id, t.id);
            assert_eq!(
                (m.start_key.as_slice(), m.end_key.as_deref()),
                (&b""[..], None)
            );
            assert_eq!(m.epoch.version, 6);
            assert!(contains_range(&m, s) && contains_range(&m, t));
        }
        assert!(!contains_range(&left, &right));
        assert!(merge_refusal(&left, &right).is_none());
        assert!(merge_refusal(&left, &left).is_some());
    }
}
