//! The Ready write pipeline: a round of every replica's Ready is prepared (its log write
//! staged, a leader's messages sent, committed entries applied, ready reads served), then
//! written — on the store thread, handed to the engine's writer, or queued for the caller —
//! and finished once durable (held messages out, Raft told what is persisted).

use crate::entry::{self, AdminCommand, StoreEntry};
use crate::error::StoreError;
use crate::peer::Peer;
use crate::region::RegionEpoch;
use crate::region::{Region, RegionId, StoreId};
use crate::snapshot_job::SnapshotWork;
use crate::split::Effect;
use crate::state_machine::StateMachine;
use crate::store::{Completion, Reply, Store, StoreStats};
use raft::{
    Entry, EntryKind, LogIndex, Message, NodeId, Persisted, ReadState, Ready, Role, Term,
    INIT_LOG_INDEX,
};
use raft_log::LogBatch;
use std::future::Future;
use std::sync::Arc;

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

impl PendingWrite {
    /// Removes `group` from the log as this round's last word on it (a destroyed replica:
    /// whatever the round staged for it before must not outlive the clean).
    pub(crate) fn clean_group(&mut self, group: raft_log::GroupId) {
        self.batch.clean_group(group);
        self.must_sync = true;
    }
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
pub(crate) struct InFlight {
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

/// Hands `messages` from a replica to the outbox, each addressed to the store of its peer
/// (see [`Peer::store_of`]); one to a peer of unknown store is dropped.
fn send_messages<M: StateMachine>(
    p: &Peer<M>,
    messages: Vec<Message>,
    outbox: &mut Vec<(StoreId, Message)>,
    stats: &mut StoreStats,
) {
    for m in messages {
        match p.store_of(m.to) {
            Some(store) => outbox.push((store, m)),
            None => stats.messages_dropped += 1,
        }
    }
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

impl<M: StateMachine> Store<M> {
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
        let mut effects = Vec::new();
        // A snapshot installed: its descriptor may differ (see `install_received_snapshot`).
        let mut reshaped = false;
        let mut installed = Vec::new();
        for (id, p) in self.peers.iter_mut() {
            if !p.raw.has_ready() {
                continue;
            }
            let mut rd = p.raw.ready();
            Self::receive_snapshot_chunks(*id, p, &rd.snapshot_chunks, &mut self.stats)?;
            if let Some(snap) = &rd.snapshot {
                reshaped = true;
                installed.push((*id, snap.metadata.index));
                // Rare and large: written on its own (file + metadata, synced) before the rest.
                Self::install_received_snapshot(
                    *id,
                    p,
                    snap,
                    &self.engine,
                    &mut self.stats,
                    &mut self.snapshot_receive_times,
                )?;
            } else {
                Self::drop_caught_up_transfer(p, &mut self.stats);
            }
            let early = Self::sends_early(p, &rd);
            Self::stage_ready(p, &rd, &mut pending)?;
            if early {
                let messages = std::mem::take(&mut rd.messages);
                send_messages(p, messages, &mut self.outbox, &mut self.stats);
            }
            if let Some(ss) = rd.soft_state {
                if ss.role != Role::Leader {
                    Self::fail_unconfirmed_reads(*id, p, ss.leader, &mut self.completions);
                }
            }
            let applied = Self::apply_committed(
                p,
                &rd.committed_entries,
                &mut self.completions,
                &mut self.stats,
                &mut effects,
            );
            // A merge's target stops at the commit until its source is absorbed.
            rd.applied_only(applied);
            let read_states = std::mem::take(&mut rd.read_states);
            Self::serve_ready_reads(p, read_states, &mut self.completions);
            let persisted = p.raw.advance_async(&rd);
            pending.held.push(Held {
                region: *id,
                messages: std::mem::take(&mut rd.messages),
                persisted,
                term_vote: rd.hard_state.map(|hs| (hs.term, hs.vote)),
            });
        }
        // Effects first: a replica destroyed below may have written its descriptor in them,
        // and the destroy must clean that too.
        self.apply_effects(effects, &mut pending)?;
        if reshaped {
            // A snapshot covering a merge: the source here is dead, absorbed here (its
            // target's snapshot now holds it) or not (the snapshot names it).
            for (target, index) in installed {
                self.destroy_merged_sources(target, index, Some(&mut pending))?;
            }
            self.destroy_dead_sources(Some(&mut pending))?;
            self.publish_regions();
        }
        self.finish_merges()?;
        Ok(pending)
    }

    /// Whether a replica's messages in this Ready may go out before the round's write: a
    /// leader's may (see [`Store::prepare_ready`]) while the term and vote they speak for
    /// (the Ready's hard state, else the one staged) are durable.
    fn sends_early(p: &Peer<M>, rd: &Ready) -> bool {
        let persisted = p.raw.storage().hard_state();
        let after = rd.hard_state.unwrap_or(persisted);
        p.raw.role() == Role::Leader && (after.term, after.vote) == p.durable_term_vote
    }

    /// Stages a replica's entries and hard state into the round's write, and notes whether
    /// the write must sync (see `PendingWrite::must_sync`).
    fn stage_ready(
        p: &mut Peer<M>,
        rd: &Ready,
        pending: &mut PendingWrite,
    ) -> Result<(), StoreError> {
        let persisted = p.raw.storage().hard_state();
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
        Ok(())
    }

    /// A replica that stopped leading fails the reads still waiting for its leadership to
    /// be confirmed, naming the new leader if it knows one.
    fn fail_unconfirmed_reads(
        id: RegionId,
        p: &mut Peer<M>,
        leader: NodeId,
        completions: &mut Vec<Completion<M>>,
    ) {
        // Reads waiting for this replica's leadership confirmation are gone.
        for r in p.reads.iter().filter(|r| r.index.is_none()) {
            completions.push(Completion {
                ticket: r.ticket,
                result: Err(StoreError::NotLeader {
                    region: id,
                    leader: p.region.peer(leader),
                }),
            });
        }
        p.reads.retain(|r| r.index.is_some());
    }

    /// Applies a replica's committed entries to its state machine, in order, and completes
    /// the proposals they decide. What an admin entry asks of the store (a new region's peer)
    /// goes to `effects`, for [`Store::apply_effects`] after the round's applies.
    /// Returns how many entries were applied: all, unless the replica left the region or
    /// stopped at a merge's commit (see `crate::merge`).
    fn apply_committed(
        p: &mut Peer<M>,
        entries: &[Entry],
        completions: &mut Vec<Completion<M>>,
        stats: &mut StoreStats,
        effects: &mut Vec<Effect<M>>,
    ) -> usize {
        for (n, e) in entries.iter().enumerate() {
            let result = Self::apply_entry(p, e, effects);
            p.applied = e.index;
            p.bytes_since_snapshot += e.data.len() as u64;
            stats.entries_applied += 1;
            Self::complete_proposals(p, e, result, completions);
            let removed = matches!(
                effects.last(),
                Some(Effect::Membership { region, removed_here: true }) if region.id == p.region.id
            );
            if removed {
                // This replica left the region: it is destroyed after the round's applies,
                // and nothing after its removal may write anything for it (a later entry's
                // effect would write a descriptor into the cleaned group). What is left is
                // never applied.
                return entries.len();
            }
            if p.merge_wait.is_some() {
                return n + 1;
            }
        }
        entries.len()
    }

    /// Applies one committed entry; returns what its proposer gets (`Reply::Empty` for an
    /// entry that is not a command: a leader's empty entry, a membership change).
    fn apply_entry(
        p: &mut Peer<M>,
        e: &Entry,
        effects: &mut Vec<Effect<M>>,
    ) -> Result<Reply<M>, StoreError> {
        match e.kind {
            EntryKind::Normal if e.data.is_empty() => {
                p.sm.apply_noop(e.index.0);
                Ok(Reply::Empty)
            }
            EntryKind::Normal => match entry::decode(&e.data) {
                // Checked again at apply: a command routed before a split or merge and
                // committed after it must not land in a region that no longer holds its key
                // (TiKV checks the version the same way).
                StoreEntry::Command { version, .. } if version != p.region.epoch.version => {
                    p.sm.apply_noop(e.index.0);
                    Err(StoreError::EpochNotMatch {
                        current: Box::new(p.region.clone()),
                    })
                }
                StoreEntry::Command { payload, .. } | StoreEntry::Legacy(payload) => {
                    Ok(Reply::Applied(p.sm.apply(e.index.0, payload)))
                }
                StoreEntry::Admin(admin) => {
                    p.sm.apply_noop(e.index.0);
                    Self::apply_admin(p, admin, e, effects)
                }
                StoreEntry::BadAdmin => {
                    p.sm.apply_noop(e.index.0);
                    Err(StoreError::Proposal("undecodable admin entry".into()))
                }
            },
            EntryKind::ConfChange if p.merging.is_some() => {
                // Frozen for a merge: the region's replicas must stay where they are (the
                // same on every replica: the freeze is at the same index everywhere).
                p.sm.apply_noop(e.index.0);
                Err(StoreError::Merging {
                    region: p.region.id,
                })
            }
            EntryKind::ConfChange => {
                p.sm.apply_noop(e.index.0);
                Self::apply_membership(p, &e.data, effects)
            }
        }
    }

    /// Executes an admin entry on this replica. Every replica decides the same way from the
    /// same state, so a refusal (the region changed since the command was proposed) is a
    /// no-op everywhere.
    fn apply_admin(
        p: &mut Peer<M>,
        admin: AdminCommand,
        e: &Entry,
        effects: &mut Vec<Effect<M>>,
    ) -> Result<Reply<M>, StoreError> {
        match admin {
            AdminCommand::PrepareMerge { epoch, target } => {
                Self::apply_prepare_merge(p, epoch, target, e.index, e.term)?;
                effects.push(Effect::Descriptor(p.region.clone()));
                Ok(Reply::Empty)
            }
            AdminCommand::RollbackMerge { prepare_index } => {
                Self::apply_rollback_merge(p, LogIndex(prepare_index))?;
                effects.push(Effect::Descriptor(p.region.clone()));
                Ok(Reply::Empty)
            }
            AdminCommand::CommitMerge {
                source,
                prepare_index,
                prepare_term,
                target_epoch,
            } => {
                Self::apply_commit_merge(
                    p,
                    source,
                    LogIndex(prepare_index),
                    Term(prepare_term),
                    target_epoch,
                    e.index,
                )?;
                Ok(Reply::Empty)
            }
            AdminCommand::Split {
                epoch,
                split_key,
                new_region,
                new_peers,
            } => {
                let current = &p.region;
                let same_stores = new_peers.len() == current.peers.len()
                    && current
                        .peers
                        .iter()
                        .zip(&new_peers)
                        .all(|(a, b)| a.store == b.store);
                if p.merging.is_some() {
                    return Err(StoreError::Merging { region: current.id });
                }
                if current.epoch != epoch || !same_stores {
                    return Err(StoreError::EpochNotMatch {
                        current: Box::new(current.clone()),
                    });
                }
                if !p.raw.status().conf_state.voters_outgoing.is_empty() {
                    // Mid joint change: the new region would make outgoing voters its own
                    // voters for good (TiKV refuses too). The same on every replica: the
                    // configuration at this index is the same everywhere.
                    return Err(StoreError::Proposal(format!(
                        "region {} is changing its voters (joint configuration); retry the split",
                        current.id
                    )));
                }
                if !current.contains(&split_key) || split_key == current.start_key {
                    return Err(StoreError::KeyNotInRegion { region: current.id });
                }
                let version = current.epoch.version + 1;
                let mut new_peers = new_peers;
                for (new, old) in new_peers.iter_mut().zip(&current.peers) {
                    new.learner = old.learner;
                }
                let right = Region {
                    id: new_region,
                    start_key: split_key.clone(),
                    end_key: current.end_key.clone(),
                    epoch: RegionEpoch {
                        conf_version: current.epoch.conf_version,
                        version,
                    },
                    peers: new_peers,
                };
                let right_sm = p.sm.split_off(&split_key, &right, INIT_LOG_INDEX.0);
                p.region.end_key = Some(split_key);
                p.region.epoch.version = version;
                effects.push(Effect::Split {
                    left: p.region.clone(),
                    right,
                    right_sm,
                    campaign: p.raw.role() == Role::Leader,
                });
                Ok(Reply::Empty)
            }
        }
    }

    /// Completes the proposals up to the applied entry `e`: the one that is `e` (same index
    /// and term) with `result`, any other (its entry was replaced) with `Dropped`.
    fn complete_proposals(
        p: &mut Peer<M>,
        e: &Entry,
        result: Result<Reply<M>, StoreError>,
        completions: &mut Vec<Completion<M>>,
    ) {
        let mut result = Some(result);
        while let Some(&(index, term, ticket)) = p.proposals.front() {
            if index > e.index {
                break;
            }
            p.proposals.pop_front();
            let ok = index == e.index && term == e.term;
            completions.push(Completion {
                ticket,
                result: match result.take() {
                    Some(r) if ok => r,
                    _ => Err(StoreError::Dropped),
                },
            });
        }
    }

    /// Records the read indexes that the ReadIndex rounds (or the lease) confirmed, then
    /// serves every read whose index the state machine has applied.
    fn serve_ready_reads(
        p: &mut Peer<M>,
        read_states: Vec<ReadState>,
        completions: &mut Vec<Completion<M>>,
    ) {
        for rs in read_states {
            let t = u64::from_le_bytes(rs.context[..8].try_into().unwrap_or([0; 8]));
            if let Some(r) = p.reads.iter_mut().find(|r| r.ticket.0 == t) {
                r.index = Some(rs.index);
            }
        }
        if p.merge_wait.is_some() {
            return; // applied past a merge's commit, without the source's state yet
        }
        let applied = p.applied;
        let sm = &p.sm;
        let region = &p.region;
        let frozen = p.merging.is_some();
        p.reads.retain(|r| match r.index {
            Some(i) if i <= applied => {
                // A split applied since the read was routed may have moved its key away;
                // a region frozen for a merge serves nothing (its lease ended with the
                // freeze).
                let result = if frozen {
                    Err(StoreError::Merging { region: region.id })
                } else if region.contains(&r.key) {
                    Ok(Reply::Read(sm.read(&r.query, r.at_ms)))
                } else {
                    Err(StoreError::EpochNotMatch {
                        current: Box::new(region.clone()),
                    })
                };
                completions.push(Completion {
                    ticket: r.ticket,
                    result,
                });
                false
            }
            _ => true,
        });
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
            send_messages(p, h.messages, &mut self.outbox, &mut self.stats);
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
}
