//! `RawNode`: the public face of the core. It owns one peer's `Raft` and hands the caller
//! its work as a `Ready`, following the contract in the crate documentation.

use crate::conf_change::ConfChange;
use crate::errors::{InitError, ProposeError, ReadError, StepError, TransferError};
use crate::raft::{Config, Raft, ReadMode};
use crate::storage::Storage;
use crate::types::*;
use bytes::Bytes;

/// Everything the caller must do after feeding the node input. Handle it in the order of the
/// fields below, then give it back with [`RawNode::advance`] (or, persisting asynchronously,
/// [`RawNode::advance_async`] now and [`RawNode::on_persisted`] once durable).
#[derive(Debug, Default)]
#[must_use = "a Ready must be handled and passed to advance()"]
pub struct Ready {
    /// Leader or role changed (informational; need not be persisted).
    pub soft_state: Option<SoftState>,
    /// Step 1: persist, with `snapshot` and `entries`, before sending anything.
    pub hard_state: Option<HardState>,
    /// Step 1, first: chunks of a snapshot being received, in order, for the caller to append
    /// to its copy (only with [`crate::Config::stream_snapshot_chunks`]; see
    /// [`SnapshotChunk`]). Their acknowledgements are among `messages`.
    pub snapshot_chunks: Vec<SnapshotChunk>,
    /// Step 1: a snapshot from the leader to persist and load into the state machine (its
    /// `data` empty when it came in `snapshot_chunks`).
    pub snapshot: Option<Snapshot>,
    /// Step 1: entries to append to stable storage (truncating any conflicting tail).
    pub entries: Vec<Entry>,
    /// Step 2: messages to send, only after step 1 is durable.
    pub messages: Vec<Message>,
    /// Step 3: entries to apply to the state machine, in order.
    pub committed_entries: Vec<Entry>,
    /// Step 3: linearizable reads that may be served once the state machine has applied
    /// `ReadState::index`.
    pub read_states: Vec<ReadState>,
    // Bookkeeping for advance(), not for the caller.
    persisted_to: Option<(LogIndex, Term)>,
    applied_to: LogIndex,
    snapshot_index: LogIndex,
}

impl Ready {
    /// The caller applied only the first `n` of `committed_entries` (it must stop applying
    /// for a while, see [`RawNode::set_apply_limit`]): the rest are handed out again by a
    /// later Ready.
    pub fn applied_only(&mut self, n: usize) {
        if n < self.committed_entries.len() {
            self.committed_entries.truncate(n);
            self.applied_to = self
                .committed_entries
                .last()
                .map_or(LogIndex::ZERO, |e| e.index);
        }
    }
}

/// A snapshot of a peer's state for observation (tests, status pages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub group: GroupId,
    pub hard_state: HardState,
    pub soft_state: SoftState,
    pub applied: LogIndex,
    pub first_index: LogIndex,
    pub last_index: LogIndex,
    pub conf_state: ConfState,
    pub lead_transferee: NodeId,
}

/// What a `Ready` handed out for persistence, reported back with [`RawNode::on_persisted`]
/// once it is durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[must_use = "report it with on_persisted() once the Ready's write is durable"]
pub struct Persisted {
    entries_to: Option<(LogIndex, Term)>,
    snapshot_index: LogIndex,
}

/// One Raft peer, driven by the caller. See the crate documentation for the contract.
pub struct RawNode<S: Storage> {
    raft: Raft<S>,
    prev_hard_state: HardState,
    prev_soft_state: SoftState,
    /// A `Ready` was handed out and not yet advanced.
    ready_outstanding: bool,
}

impl<S: Storage> RawNode<S> {
    /// Creates a peer from its persisted state in `storage`.
    pub fn new(config: &Config, storage: S) -> Result<RawNode<S>, InitError> {
        let raft = Raft::new(config, storage)?;
        let prev_hard_state = raft.hard_state();
        let prev_soft_state = raft.soft_state();
        Ok(RawNode {
            raft,
            prev_hard_state,
            prev_soft_state,
            ready_outstanding: false,
        })
    }

    /// Advances the logical clock by one tick.
    pub fn tick(&mut self) {
        self.raft.tick();
    }

    /// Starts an election now (if this peer is a voter).
    pub fn campaign(&mut self) {
        self.raft.hup(false);
    }

    /// Feeds a message received from another peer of this group.
    pub fn step(&mut self, m: Message) -> Result<(), StepError> {
        if m.group != self.raft.group {
            return Err(StepError::WrongGroup {
                expected: self.raft.group,
                got: m.group,
            });
        }
        if m.to != self.raft.id {
            return Err(StepError::WrongNode {
                expected: self.raft.id,
                got: m.to,
            });
        }
        self.raft.step(m);
        Ok(())
    }

    /// Proposes one entry; returns the index it was appended at (it may still be lost if
    /// leadership changes before it commits).
    pub fn propose(&mut self, data: Bytes) -> Result<LogIndex, ProposeError> {
        self.raft.propose(&[(EntryKind::Normal, data)])
    }

    /// Proposes several entries atomically (all or none are appended); returns the last index.
    pub fn propose_batch(&mut self, datas: &[Bytes]) -> Result<LogIndex, ProposeError> {
        let v: Vec<(EntryKind, Bytes)> = datas
            .iter()
            .map(|d| (EntryKind::Normal, d.clone()))
            .collect();
        self.raft.propose(&v)
    }

    /// Proposes a membership change. Only one may be in flight at a time.
    pub fn propose_conf_change(&mut self, cc: &ConfChange) -> Result<LogIndex, ProposeError> {
        self.raft.propose_conf_change(cc)
    }

    /// Applies a committed membership change entry (call it when applying that entry);
    /// returns the new configuration, which the caller persists with its applied state.
    pub fn apply_conf_change(&mut self, cc: &ConfChange) -> ConfState {
        self.raft.apply_conf_change(cc)
    }

    /// Requests a linearizable read; the answer arrives as a `ReadState` in a later `Ready`.
    /// `context` must be unique among outstanding reads of this peer.
    pub fn read_index(&mut self, context: Bytes, mode: ReadMode) -> Result<(), ReadError> {
        self.raft.read_index(context, mode)
    }

    /// Hands leadership to `to` (leader only); proposals are refused until it completes or
    /// aborts after an election timeout.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), TransferError> {
        self.raft.transfer_leader(to)
    }

    /// Stops handing out committed entries above `limit` (None: no limit) — a replica
    /// waiting for something outside its own log before it may apply further (a merge's
    /// target waiting for its source to catch up). Everything else goes on: the node
    /// replicates, votes and commits as usual.
    pub fn set_apply_limit(&mut self, limit: Option<LogIndex>) {
        self.raft.log.apply_limit = limit;
    }

    /// The entry at `index` of term `term` is known committed from outside this group's
    /// messages (a merge's target committed the proof that the source's entries up to its
    /// freeze are committed, while this replica may never hear it from a leader again).
    /// Raises the commit index to `index` if this log holds that very entry; returns
    /// whether the log holds it (committed before or now).
    pub fn commit_known(&mut self, index: LogIndex, term: Term) -> bool {
        let log = &mut self.raft.log;
        if log.term(index).ok() != Some(term) {
            return false;
        }
        log.commit_to(index);
        true
    }

    /// Whether an entry of the current term is committed (a new leader serves no read
    /// before: its commit index may be behind).
    pub fn committed_in_term(&self) -> bool {
        self.raft.committed_in_term()
    }

    /// Whether this leader's lease currently allows lease reads.
    pub fn lease_valid(&self) -> bool {
        self.raft.lease_valid()
    }

    pub fn has_ready(&self) -> bool {
        let r = &self.raft;
        r.pending_broadcast
            || !r.msgs.is_empty()
            || !r.log.entries_to_hand_out().is_empty()
            || r.log.snapshot_to_hand_out().is_some()
            || !r.snapshot_chunks.is_empty()
            || r.log.has_next_committed_entries()
            || !r.read_states.is_empty()
            || r.hard_state() != self.prev_hard_state
            || r.soft_state() != self.prev_soft_state
    }

    /// Collects the work to do. Call [`RawNode::advance`] (or [`RawNode::advance_async`])
    /// with it before the next `ready`.
    pub fn ready(&mut self) -> Ready {
        assert!(
            !self.ready_outstanding,
            "ready() called again before advance() (node {})",
            self.raft.id
        );
        self.ready_outstanding = true;
        let r = &mut self.raft;
        if r.pending_broadcast {
            r.pending_broadcast = false;
            r.bcast_append();
        }
        let mut rd = Ready::default();
        let ss = r.soft_state();
        if ss != self.prev_soft_state {
            rd.soft_state = Some(ss);
        }
        let hs = r.hard_state();
        if hs != self.prev_hard_state {
            rd.hard_state = Some(hs);
        }
        rd.snapshot_chunks = std::mem::take(&mut r.snapshot_chunks);
        if let Some(s) = r.log.snapshot_to_hand_out() {
            rd.snapshot_index = s.metadata.index;
            rd.snapshot = Some(s.clone());
        }
        rd.entries = r.log.entries_to_hand_out().to_vec();
        if let Some(last) = rd.entries.last() {
            rd.persisted_to = Some((last.index, last.term));
        }
        rd.messages = std::mem::take(&mut r.msgs);
        rd.committed_entries = r
            .log
            .next_committed_entries(r.config().max_committed_bytes_per_ready);
        rd.applied_to = rd
            .committed_entries
            .last()
            .map_or(LogIndex::ZERO, |e| e.index);
        rd.read_states = std::mem::take(&mut r.read_states);
        rd
    }

    /// Reports that `rd` was handled: its entries and hard state are durable, its messages
    /// sent, its committed entries applied.
    pub fn advance(&mut self, rd: Ready) {
        let persisted = self.advance_async(&rd);
        self.on_persisted(persisted);
    }

    /// Asynchronous persistence, first half: the caller took `rd` — applied its committed
    /// entries, served its reads, restored its snapshot into the state machine — and has
    /// started persisting its snapshot, entries and hard state, without waiting. The next
    /// `ready` may come at once and hands out only what is new. The caller reports the write
    /// durable with [`RawNode::on_persisted`], in the order the Readies were handed out.
    ///
    /// The caller's duties while writes are in flight (etcd-raft's async storage writes and
    /// raft-rs's `advance_append_async` set the same ones): a Ready's messages may claim
    /// anything written by it or by earlier Readies, so they wait until all of those are
    /// durable — except a leader's own appends and heartbeats, which may go out at once
    /// (thesis §10.2.1) as long as the Ready does not change term or vote, because a leader
    /// counts its own copy towards commit only once reported durable here; and writes reach
    /// the disk in the order they were handed out.
    pub fn advance_async(&mut self, rd: &Ready) -> Persisted {
        assert!(
            self.ready_outstanding,
            "advance without a ready() (node {})",
            self.raft.id
        );
        self.ready_outstanding = false;
        if let Some(ss) = rd.soft_state {
            self.prev_soft_state = ss;
        }
        if let Some(hs) = rd.hard_state {
            self.prev_hard_state = hs;
        }
        let r = &mut self.raft;
        r.log.hand_out(
            rd.persisted_to.map(|(index, _)| index),
            rd.snapshot_index > LogIndex::ZERO,
        );
        if rd.snapshot_index > LogIndex::ZERO && r.log.applied < rd.snapshot_index {
            r.log.applied = rd.snapshot_index;
        }
        if rd.applied_to > LogIndex::ZERO {
            r.log.applied_to(rd.applied_to);
            r.reduce_uncommitted(&rd.committed_entries);
            r.maybe_auto_leave();
        }
        Persisted {
            entries_to: rd.persisted_to,
            snapshot_index: rd.snapshot_index,
        }
    }

    /// Asynchronous persistence, second half: the write of the Ready that returned
    /// `persisted` is durable (and so is every earlier one). Entries replaced by a newer
    /// leader's since are recognised by their term and not counted.
    pub fn on_persisted(&mut self, persisted: Persisted) {
        let r = &mut self.raft;
        if persisted.snapshot_index > LogIndex::ZERO {
            r.log.stable_snapshot_to(persisted.snapshot_index);
        }
        if let Some((index, term)) = persisted.entries_to {
            r.log.stable_to(index, term);
        }
        r.on_persisted();
    }

    pub fn status(&self) -> Status {
        let r = &self.raft;
        Status {
            id: r.id,
            group: r.group,
            hard_state: r.hard_state(),
            soft_state: r.soft_state(),
            applied: r.log.applied,
            first_index: r.log.first_index(),
            last_index: r.log.last_index(),
            conf_state: r.tracker.conf.clone(),
            lead_transferee: r.lead_transferee,
        }
    }

    pub fn id(&self) -> NodeId {
        self.raft.id
    }

    /// A leader's view of each follower (progress state, match, next, a snapshot being
    /// sent), for failure reports; empty on a follower.
    pub fn describe_progress(&self) -> String {
        let r = &self.raft;
        if r.role != Role::Leader {
            return String::new();
        }
        r.tracker
            .progress
            .iter()
            .map(|(id, pr)| {
                let out = r.outgoing_snapshot_at(*id);
                format!(
                    "{id}: {:?} match {} next {}{}",
                    pr.state,
                    pr.matched,
                    pr.next,
                    out.map(|(o, e)| format!(" sending {o}..{e:?}"))
                        .unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn term(&self) -> Term {
        self.raft.term
    }

    pub fn role(&self) -> Role {
        self.raft.role
    }

    pub fn leader(&self) -> NodeId {
        self.raft.leader
    }

    pub fn commit_index(&self) -> LogIndex {
        self.raft.log.committed
    }

    pub fn last_index(&self) -> LogIndex {
        self.raft.log.last_index()
    }

    /// The last index durable in this peer's storage (reported through `advance` or
    /// `on_persisted`, and not replaced by unstable entries since).
    pub fn persisted_index(&self) -> LogIndex {
        self.raft.persisted_last_index()
    }

    /// Whether a snapshot received from the leader waits to be handed out in a `Ready`.
    pub fn has_snapshot_to_hand_out(&self) -> bool {
        self.raft.log.snapshot_to_hand_out().is_some()
    }

    /// The term of the entry at `index` in this peer's log (persisted or not), if present.
    pub fn log_term(&self, index: LogIndex) -> Option<Term> {
        if index > self.raft.log.last_index() {
            return None;
        }
        self.raft.log.term(index).ok()
    }

    /// Entries `[low, high)` of this peer's log (persisted or not); for checkers and tools.
    pub fn log_entries(&self, low: LogIndex, high: LogIndex) -> Vec<Entry> {
        self.raft.log.slice(low, high, u64::MAX).unwrap_or_default()
    }

    /// The leader's view of a follower's match index (None if not leader or unknown node).
    pub fn follower_match(&self, id: NodeId) -> Option<LogIndex> {
        if self.raft.role != Role::Leader {
            return None;
        }
        self.raft.tracker.progress.get(&id).map(|p| p.matched)
    }

    /// Consumes the node, returning its storage (what survives a crash in tests).
    pub fn into_storage(self) -> S {
        self.raft.log.storage
    }

    pub fn storage(&self) -> &S {
        self.raft.log.storage()
    }

    /// Mutable access for the caller to persist entries and snapshots (step 1 of the
    /// contract). It must not remove entries the core has not been told are compacted.
    pub fn storage_mut(&mut self) -> &mut S {
        self.raft.log.storage_mut()
    }

    /// The core's monotonic tick counter (lease arithmetic), exposed for tests.
    pub fn ticks(&self) -> u64 {
        self.raft.ticks()
    }
}
