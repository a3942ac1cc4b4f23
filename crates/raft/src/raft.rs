//! `Raft`: the protocol state machine of one peer. It reacts to ticks, messages and local
//! requests by changing state and queueing messages; `RawNode` packages the results into a
//! `Ready` for the caller.

use crate::conf_change::{self, ConfChange};
use crate::errors::{ConfigError, ProposeError, ReadError, TransferError};
use crate::log::RaftLog;
use crate::progress::{ProgressState, Tracker, VoteResult};
use crate::rng::SplitMix64;
use crate::storage::{Storage, StorageError};
use crate::types::*;
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeSet, VecDeque};

/// How a linearizable read is confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// ReadIndex: confirm leadership with a heartbeat round to a quorum before serving.
    Safe,
    /// Serve at the commit index while the leader lease holds (falls back to `Safe` when it
    /// does not). Correct only if clocks drift less than `Config::lease_drift_ticks`.
    Lease,
}

/// Tunables of one peer. `validate` names whatever is wrong.
#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    pub group: GroupId,
    /// Ticks without hearing from a leader before a follower campaigns; the actual timeout is
    /// randomized in `[election_tick, 2 * election_tick)`.
    pub election_tick: u32,
    /// Ticks between leader heartbeats; must be smaller than `election_tick`.
    pub heartbeat_tick: u32,
    /// Index the application has applied at start-up (e.g. from its snapshot).
    pub applied: LogIndex,
    /// Byte limit of the entries in one Append message.
    pub max_size_per_msg: u64,
    /// Entry count limit of one Append message.
    pub max_entries_per_msg: usize,
    /// Append messages in flight to one follower in Replicate state.
    pub max_inflight_msgs: usize,
    /// Bytes the leader accepts into its log beyond the commit index before refusing.
    pub max_uncommitted_bytes: u64,
    /// Largest entry payload accepted by `propose`.
    pub max_entry_bytes: u64,
    /// Byte limit of committed entries handed out in one `Ready`.
    pub max_committed_bytes_per_ready: u64,
    /// Chunk size of InstallSnapshot transfers.
    pub snapshot_chunk_bytes: u64,
    /// Largest snapshot a follower accepts (bounds the receive buffer).
    pub max_snapshot_bytes: u64,
    /// Hand the chunks of a snapshot being received out in [`crate::Ready::snapshot_chunks`]
    /// for the caller to write down, instead of gathering them in memory (see
    /// [`crate::SnapshotChunk`]); the snapshot then comes in `Ready::snapshot` without data.
    pub stream_snapshot_chunks: bool,
    pub pre_vote: bool,
    pub check_quorum: bool,
    /// Ticks subtracted from the election timeout to get the lease length: the bound on how
    /// much faster the slowest follower's clock may run than this leader's over one lease.
    pub lease_drift_ticks: u32,
    /// ReadIndex requests queued at a leader before new ones are refused.
    pub max_pending_reads: usize,
    /// Seed of this peer's randomness (election timeouts).
    pub seed: u64,
}

impl Config {
    pub fn new(id: u64, group: u64) -> Config {
        Config {
            id: NodeId(id),
            group: GroupId(group),
            election_tick: 10,
            heartbeat_tick: 2,
            applied: LogIndex::ZERO,
            max_size_per_msg: 1 << 20,
            max_entries_per_msg: 8192,
            max_inflight_msgs: 256,
            max_uncommitted_bytes: 64 << 20,
            max_entry_bytes: 16 << 20,
            max_committed_bytes_per_ready: 16 << 20,
            snapshot_chunk_bytes: 1 << 20,
            max_snapshot_bytes: 8 << 30,
            stream_snapshot_chunks: false,
            pre_vote: true,
            check_quorum: true,
            lease_drift_ticks: 2,
            max_pending_reads: 4096,
            seed: id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ group,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == NodeId::NONE {
            return Err(ConfigError::ZeroId);
        }
        if self.heartbeat_tick == 0 {
            return Err(ConfigError::ZeroHeartbeatTick);
        }
        if self.election_tick <= self.heartbeat_tick {
            return Err(ConfigError::ElectionNotAboveHeartbeat {
                election_tick: self.election_tick,
                heartbeat_tick: self.heartbeat_tick,
            });
        }
        if self.lease_drift_ticks >= self.election_tick {
            return Err(ConfigError::LeaseDriftTooLarge {
                lease_drift_ticks: self.lease_drift_ticks,
                election_tick: self.election_tick,
            });
        }
        if self.max_inflight_msgs == 0 {
            return Err(ConfigError::Zero("max_inflight_msgs"));
        }
        if self.max_entries_per_msg == 0 {
            return Err(ConfigError::Zero("max_entries_per_msg"));
        }
        if self.snapshot_chunk_bytes == 0 {
            return Err(ConfigError::Zero("snapshot_chunk_bytes"));
        }
        if self.max_pending_reads == 0 {
            return Err(ConfigError::Zero("max_pending_reads"));
        }
        Ok(())
    }
}

/// A ReadIndex request waiting for a heartbeat quorum.
#[derive(Debug)]
struct PendingRead {
    context: ReadContext,
    from: NodeId,
    index: LogIndex,
    acks: BTreeSet<NodeId>,
}

/// A snapshot being received in chunks.
#[derive(Debug)]
struct IncomingSnapshot {
    metadata: SnapshotMetadata,
    from: NodeId,
    term: Term,
    total_bytes: u64,
    /// What the sender announced as the crc32c of the whole data.
    checksum: u32,
    /// Bytes accepted so far (the next chunk must start here).
    received: u64,
    /// crc32c of the bytes accepted so far.
    crc: u32,
    /// The bytes accepted so far, unless they are streamed to the caller.
    data: BytesMut,
}

/// A snapshot being sent to one follower: where it is, not its data (each chunk is read from
/// storage when it is sent, so a leader holds no snapshot in memory). One chunk is in flight
/// at a time: the next goes when the follower acknowledges this one, and this one again only
/// when [`SNAPSHOT_RESEND_HEARTBEATS`] heartbeat responses came back without that (a lost
/// chunk or a lost acknowledgement), so at most two copies of a chunk are ever in flight.
#[derive(Debug, Clone)]
pub(crate) struct OutgoingSnapshot {
    metadata: SnapshotMetadata,
    total_bytes: u64,
    checksum: u32,
    /// Where the chunk in flight (or the next one) starts.
    offset: u64,
    /// Where the chunk in flight ends, until it is acknowledged.
    in_flight_end: Option<u64>,
    /// Heartbeat responses since the chunk in flight was sent.
    heartbeats_waiting: u32,
    /// Where the follower last said it was, when that was before `offset` (it restarted
    /// the transfer, or we went ahead on a stale answer): the next resend goes from there.
    follower_behind: Option<u64>,
}

/// Heartbeat responses a leader waits, without an acknowledgement of the snapshot chunk in
/// flight, before it sends that chunk again. Resending at every heartbeat response made every
/// duplicate's acknowledgement send yet another chunk: the copies in flight grew by one per
/// heartbeat, and a leader sending a 64 MiB snapshot grew by 235 MiB (measured).
pub(crate) const SNAPSHOT_RESEND_HEARTBEATS: u32 = 5;

pub struct Raft<S: Storage> {
    pub(crate) id: NodeId,
    pub(crate) group: GroupId,
    pub(crate) term: Term,
    pub(crate) vote: NodeId,
    pub(crate) leader: NodeId,
    pub(crate) role: Role,
    pub(crate) log: RaftLog<S>,
    pub(crate) tracker: Tracker,
    pub(crate) msgs: Vec<Message>,
    pub(crate) read_states: Vec<ReadState>,
    cfg: Config,
    rng: SplitMix64,
    election_elapsed: u32,
    heartbeat_elapsed: u32,
    randomized_election_timeout: u32,
    /// Monotonic tick counter of this peer's lifetime; the unit of lease arithmetic.
    ticks: u64,
    /// Per voter, the `ticks` value of the latest heartbeat it acknowledged (leader only).
    lease_acks: std::collections::BTreeMap<NodeId, u64>,
    /// Index of the last membership change appended; new ones wait until it is applied.
    pub(crate) pending_conf_index: LogIndex,
    uncommitted_bytes: u64,
    pub(crate) lead_transferee: NodeId,
    /// A TimeoutNow was sent in this term: the target's vote requests bypass follower
    /// leases, so this leader's lease is void for the rest of its term, even if the
    /// transfer is aborted.
    lease_forfeited: bool,
    pending_reads: VecDeque<PendingRead>,
    /// Reads that arrived before this leader committed an entry of its term.
    reads_awaiting_commit: Vec<(ReadContext, NodeId, ReadMode)>,
    /// Proposals were appended since the last broadcast (flushed by `RawNode::ready`).
    pub(crate) pending_broadcast: bool,
    incoming_snapshot: Option<IncomingSnapshot>,
    /// Accepted chunks of the incoming snapshot for the next `Ready`
    /// (`Config::stream_snapshot_chunks`).
    pub(crate) snapshot_chunks: Vec<SnapshotChunk>,
    outgoing_snapshots: std::collections::BTreeMap<NodeId, OutgoingSnapshot>,
}

impl<S: Storage> Raft<S> {
    pub fn new(cfg: &Config, storage: S) -> Result<Raft<S>, crate::errors::InitError> {
        cfg.validate()?;
        let state = storage.initial_state()?;
        let mut log = RaftLog::new(storage)?;
        let hs = state.hard_state;
        let last = log.last_index();
        if hs.commit > last {
            return Err(crate::errors::InitError::CommitBeyondLog {
                commit: hs.commit,
                last_index: last,
            });
        }
        log.commit_to(hs.commit);
        if cfg.applied > LogIndex::ZERO {
            assert!(
                cfg.applied <= log.committed,
                "config applied index {} beyond commit index {}",
                cfg.applied,
                log.committed
            );
            log.applied = cfg.applied.max(log.applied);
        }
        let mut tracker = Tracker::new(cfg.max_inflight_msgs);
        tracker.set_conf(state.conf_state, last.next());
        let mut r = Raft {
            id: cfg.id,
            group: cfg.group,
            term: hs.term,
            vote: hs.vote,
            leader: NodeId::NONE,
            role: Role::Follower,
            log,
            tracker,
            msgs: Vec::new(),
            read_states: Vec::new(),
            rng: SplitMix64::new(cfg.seed),
            cfg: cfg.clone(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout: cfg.election_tick,
            ticks: 0,
            lease_acks: Default::default(),
            pending_conf_index: LogIndex::ZERO,
            uncommitted_bytes: 0,
            lead_transferee: NodeId::NONE,
            lease_forfeited: false,
            pending_reads: VecDeque::new(),
            reads_awaiting_commit: Vec::new(),
            pending_broadcast: false,
            incoming_snapshot: None,
            snapshot_chunks: Vec::new(),
            outgoing_snapshots: Default::default(),
        };
        r.become_follower(hs.term, NodeId::NONE);
        Ok(r)
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub(crate) fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed,
        }
    }

    pub(crate) fn soft_state(&self) -> SoftState {
        SoftState {
            leader: self.leader,
            role: self.role,
        }
    }

    /// Whether this peer may campaign: it must be a voter of its own configuration.
    pub fn promotable(&self) -> bool {
        self.tracker.is_voter(self.id)
    }

    fn send(&mut self, to: NodeId, body: MessageBody) {
        let term = match &body {
            // A PreVote carries the term we would campaign in; set by the caller.
            MessageBody::PreVote { .. } => unreachable!("PreVote is sent through send_term"),
            _ => self.term,
        };
        self.send_term(to, term, body);
    }

    fn send_term(&mut self, to: NodeId, term: Term, body: MessageBody) {
        debug_assert_ne!(to, self.id, "a peer never messages itself");
        self.msgs.push(Message {
            group: self.group,
            from: self.id,
            to,
            term,
            body,
        });
    }

    // ---------------------------------------------------------------- role changes

    fn reset_randomized_election_timeout(&mut self) {
        let et = self.cfg.election_tick as u64;
        self.randomized_election_timeout = (et + self.rng.below(et)) as u32;
    }

    fn reset(&mut self, term: Term) {
        if self.term != term {
            self.term = term;
            self.vote = NodeId::NONE;
        }
        self.leader = NodeId::NONE;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.reset_randomized_election_timeout();
        self.lead_transferee = NodeId::NONE;
        self.lease_forfeited = false;
        self.tracker.reset_votes();
        let last = self.log.last_index();
        let persisted = self.persisted_last_index();
        let id = self.id;
        for (pid, p) in self.tracker.progress.iter_mut() {
            let learner = p.is_learner;
            *p = crate::progress::Progress::new(last.next(), self.cfg.max_inflight_msgs);
            p.is_learner = learner;
            if *pid == id {
                p.matched = persisted;
            }
        }
        self.pending_conf_index = LogIndex::ZERO;
        self.uncommitted_bytes = 0;
        self.pending_reads.clear();
        self.reads_awaiting_commit.clear();
        self.lease_acks.clear();
        self.outgoing_snapshots.clear();
        self.pending_broadcast = false;
    }

    pub(crate) fn become_follower(&mut self, term: Term, leader: NodeId) {
        self.reset(term);
        self.leader = leader;
        self.role = Role::Follower;
    }

    fn become_pre_candidate(&mut self) {
        assert_ne!(
            self.role,
            Role::Leader,
            "a leader cannot become pre-candidate"
        );
        // PreVote changes neither term nor vote: a failed pre-campaign leaves no trace.
        self.tracker.reset_votes();
        self.leader = NodeId::NONE;
        self.role = Role::PreCandidate;
    }

    fn become_candidate(&mut self) {
        assert_ne!(self.role, Role::Leader, "a leader cannot become candidate");
        self.reset(self.term.next());
        self.vote = self.id;
        self.role = Role::Candidate;
    }

    fn become_leader(&mut self) {
        assert_ne!(
            self.role,
            Role::Follower,
            "node {} cannot become leader from follower",
            self.id
        );
        self.reset(self.term);
        self.leader = self.id;
        self.role = Role::Leader;
        let id = self.id;
        if let Some(p) = self.tracker.progress.get_mut(&id) {
            // Our own log is trivially in sync; `matched` tracks what we persisted.
            p.become_replicate();
            p.recent_active = true;
        }
        // A membership change may sit uncommitted in our log: it counts as pending so that
        // no second change is proposed before it applies.
        self.pending_conf_index = self.log.last_index();
        let noop = Entry {
            term: self.term,
            index: self.log.last_index().next(),
            kind: EntryKind::Normal,
            data: Bytes::new(),
        };
        self.log.append(&[noop]);
        self.pending_broadcast = true;
    }

    // ---------------------------------------------------------------- ticks

    pub fn tick(&mut self) {
        self.ticks += 1;
        match self.role {
            Role::Leader => self.tick_heartbeat(),
            _ => self.tick_election(),
        }
    }

    fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.promotable() && self.election_elapsed >= self.randomized_election_timeout {
            self.election_elapsed = 0;
            self.hup(false);
        }
    }

    fn tick_heartbeat(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.cfg.election_tick {
            self.election_elapsed = 0;
            if self.cfg.check_quorum {
                if !self.tracker.quorum_active(self.id) {
                    // CheckQuorum: we cannot reach a quorum, so we may no longer be leader;
                    // step down rather than keep accepting proposals that cannot commit.
                    self.become_follower(self.term, NodeId::NONE);
                    return;
                }
                let id = self.id;
                for (pid, p) in self.tracker.progress.iter_mut() {
                    if *pid != id {
                        p.recent_active = false;
                    }
                }
            }
            if self.lead_transferee != NodeId::NONE {
                // The transfer did not finish within an election timeout: abort it.
                self.lead_transferee = NodeId::NONE;
            }
        }
        if self.role != Role::Leader {
            return;
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_tick {
            self.heartbeat_elapsed = 0;
            self.bcast_heartbeat(None);
        }
    }

    // ---------------------------------------------------------------- elections

    /// Whether committed but unapplied entries contain a membership change: campaigning then
    /// could use a stale configuration.
    fn has_unapplied_conf_change(&self) -> bool {
        if self.log.committed <= self.log.applied {
            return false;
        }
        let low = self.log.applied.next().max(self.log.first_index());
        match self.log.slice(low, self.log.committed.next(), u64::MAX) {
            Ok(ents) => ents.iter().any(|e| e.kind == EntryKind::ConfChange),
            Err(_) => true,
        }
    }

    pub fn hup(&mut self, transfer: bool) {
        if self.role == Role::Leader || !self.promotable() {
            return;
        }
        if self.has_unapplied_conf_change() {
            return;
        }
        if self.cfg.pre_vote && !transfer {
            self.campaign(true, false);
        } else {
            self.campaign(false, transfer);
        }
    }

    fn campaign(&mut self, pre: bool, transfer: bool) {
        let term = if pre {
            self.become_pre_candidate();
            self.term.next()
        } else {
            self.become_candidate();
            self.term
        };
        self.tracker.record_vote(self.id, true);
        if self.tracker.vote_result() == VoteResult::Won {
            // A single-voter group wins at once.
            if pre {
                self.campaign(false, transfer);
            } else {
                self.become_leader();
            }
            return;
        }
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        let mut voters: Vec<NodeId> = self
            .tracker
            .conf
            .voters
            .iter()
            .chain(&self.tracker.conf.voters_outgoing)
            .copied()
            .filter(|v| *v != self.id)
            .collect();
        voters.sort();
        voters.dedup();
        for v in voters {
            let body = if pre {
                MessageBody::PreVote {
                    last_index,
                    last_term,
                }
            } else {
                MessageBody::Vote {
                    last_index,
                    last_term,
                    leader_transfer: transfer,
                }
            };
            self.send_term(v, term, body);
        }
    }

    fn poll(&mut self, from: NodeId, granted: bool) -> VoteResult {
        if self.tracker.is_voter(from) {
            self.tracker.record_vote(from, granted);
        }
        self.tracker.vote_result()
    }

    // ---------------------------------------------------------------- step

    pub fn step(&mut self, m: Message) {
        if m.from == self.id {
            return;
        }
        let is_vote_request = matches!(
            m.body,
            MessageBody::Vote { .. } | MessageBody::PreVote { .. }
        );
        if is_vote_request
            && !self.tracker.progress.is_empty()
            && !self.tracker.progress.contains_key(&m.from)
        {
            // A node outside our configuration (removed, or not yet added as far as we
            // know) must not disrupt the group: ignore it entirely, term included. A node
            // with no configuration at all (created by a leader's message, waiting for its
            // first snapshot) votes like any other: it may be a voter that the group needs
            // for a quorum (etcd and TiKV let such replicas vote too).
            return;
        }
        if m.term > self.term {
            if is_vote_request {
                let transfer = matches!(
                    m.body,
                    MessageBody::Vote {
                        leader_transfer: true,
                        ..
                    }
                );
                let in_lease = self.cfg.check_quorum
                    && self.leader != NodeId::NONE
                    && self.election_elapsed < self.cfg.election_tick;
                if !transfer && in_lease {
                    // We heard from a live leader recently: a candidate that cannot reach it
                    // must not depose it (this is also what makes leader leases safe).
                    return;
                }
            }
            match &m.body {
                // Never change term for a PreVote or a granted PreVote response.
                MessageBody::PreVote { .. } => {}
                MessageBody::PreVoteResponse { reject: false } => {}
                MessageBody::Append { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::Snapshot { .. } => self.become_follower(m.term, m.from),
                _ => self.become_follower(m.term, NodeId::NONE),
            }
        } else if m.term < self.term {
            match &m.body {
                MessageBody::Append { .. } | MessageBody::Heartbeat { .. } => {
                    // A stale leader (e.g. after a partition) learns our term from this and
                    // steps down. Always answer, even without PreVote and CheckQuorum: a
                    // member whose stale configuration does not include this leader would
                    // otherwise never send it a vote request, and neither would ever move
                    // (seed 3913).
                    self.send(
                        m.from,
                        MessageBody::AppendResponse {
                            index: LogIndex::ZERO,
                            reject: None,
                        },
                    );
                }
                MessageBody::PreVote { .. } => {
                    self.send(m.from, MessageBody::PreVoteResponse { reject: true });
                }
                _ => {}
            }
            return;
        }

        match m.body {
            MessageBody::PreVote {
                last_index,
                last_term,
            }
            | MessageBody::Vote {
                last_index,
                last_term,
                ..
            } => {
                let pre = matches!(m.body, MessageBody::PreVote { .. });
                let can_vote = self.vote == m.from
                    || (self.vote == NodeId::NONE && self.leader == NodeId::NONE)
                    || (pre && m.term > self.term);
                if can_vote && self.log.is_up_to_date(last_index, last_term) {
                    if pre {
                        self.send_term(
                            m.from,
                            m.term,
                            MessageBody::PreVoteResponse { reject: false },
                        );
                    } else {
                        self.election_elapsed = 0;
                        self.vote = m.from;
                        self.send_term(m.from, m.term, MessageBody::VoteResponse { reject: false });
                    }
                } else if pre {
                    self.send(m.from, MessageBody::PreVoteResponse { reject: true });
                } else {
                    self.send(m.from, MessageBody::VoteResponse { reject: true });
                }
            }
            _ => match self.role {
                Role::Leader => self.step_leader(m),
                Role::Candidate | Role::PreCandidate => self.step_candidate(m),
                Role::Follower => self.step_follower(m),
            },
        }
    }

    fn step_leader(&mut self, m: Message) {
        let from = m.from;
        if !self.tracker.progress.contains_key(&from) {
            if let MessageBody::Append { .. } | MessageBody::Heartbeat { .. } = m.body {
                panic!(
                    "two leaders in term {}: {} and {} (group {})",
                    self.term, self.id, from, self.group
                );
            }
            return;
        }
        if let Some(p) = self.tracker.progress.get_mut(&from) {
            p.recent_active = true;
        }
        match m.body {
            MessageBody::AppendResponse { index, reject } => {
                self.handle_append_response(from, index, reject)
            }
            MessageBody::HeartbeatResponse {
                read_context,
                lease_tick,
            } => self.handle_heartbeat_response(from, read_context, lease_tick),
            MessageBody::SnapshotResponse {
                index,
                next_offset,
                reject,
            } => self.handle_snapshot_response(from, index, next_offset, reject),
            MessageBody::ReadIndex { context } => {
                let _ = self.read_index_at_leader(context, from, ReadMode::Safe);
            }
            MessageBody::Append { .. } | MessageBody::Heartbeat { .. } => panic!(
                "two leaders in term {}: {} and {} (group {})",
                self.term, self.id, from, self.group
            ),
            _ => {}
        }
    }

    fn step_candidate(&mut self, m: Message) {
        match m.body {
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::Snapshot { .. } => {
                // A leader of our term exists: we lost.
                self.become_follower(m.term, m.from);
                self.step_follower(m);
            }
            MessageBody::PreVoteResponse { reject } if self.role == Role::PreCandidate => {
                match self.poll(m.from, !reject) {
                    VoteResult::Won => self.campaign(false, false),
                    VoteResult::Lost => self.become_follower(self.term, NodeId::NONE),
                    VoteResult::Pending => {}
                }
            }
            MessageBody::VoteResponse { reject } if self.role == Role::Candidate => {
                match self.poll(m.from, !reject) {
                    VoteResult::Won => self.become_leader(),
                    VoteResult::Lost => self.become_follower(self.term, NodeId::NONE),
                    VoteResult::Pending => {}
                }
            }
            _ => {}
        }
    }

    fn step_follower(&mut self, m: Message) {
        match m.body {
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            } => {
                self.election_elapsed = 0;
                self.leader = m.from;
                self.handle_append(m.from, prev_index, prev_term, &entries, commit);
            }
            MessageBody::Heartbeat {
                commit,
                read_context,
                lease_tick,
            } => {
                self.election_elapsed = 0;
                self.leader = m.from;
                // The leader sends min(our match, its commit), so this never passes our log.
                self.log.commit_to(commit.min(self.log.last_index()));
                self.send(
                    m.from,
                    MessageBody::HeartbeatResponse {
                        read_context,
                        lease_tick,
                    },
                );
            }
            MessageBody::Snapshot {
                metadata,
                offset,
                total_bytes,
                checksum,
                data,
                done,
            } => {
                self.election_elapsed = 0;
                self.leader = m.from;
                self.handle_snapshot_chunk(
                    m.from,
                    metadata,
                    offset,
                    total_bytes,
                    checksum,
                    data,
                    done,
                );
            }
            MessageBody::TimeoutNow => {
                // The leader hands us leadership: campaign now, skipping PreVote and leases.
                self.hup(true);
            }
            MessageBody::ReadIndexResponse { index, context } => {
                self.read_states.push(ReadState { index, context });
            }
            // A forwarded read reached a follower (the sender's view of the leader is stale).
            // Forwarding it again would route the answer to us, not to the reader, so drop it:
            // the reader times out and retries with a fresh leader.
            _ => {}
        }
    }

    // ---------------------------------------------------------------- replication

    fn handle_append(
        &mut self,
        from: NodeId,
        prev_index: LogIndex,
        prev_term: Term,
        entries: &[Entry],
        commit: LogIndex,
    ) {
        if prev_index < self.log.committed {
            // Already committed here; tell the leader where we are.
            let committed = self.log.committed;
            self.send(
                from,
                MessageBody::AppendResponse {
                    index: committed,
                    reject: None,
                },
            );
            return;
        }
        match self
            .log
            .maybe_append(prev_index, prev_term, commit, entries)
        {
            Some(last_new) => self.send(
                from,
                MessageBody::AppendResponse {
                    index: last_new,
                    reject: None,
                },
            ),
            None => {
                let probe = prev_index.min(self.log.last_index());
                let (index, term) = self.log.find_conflict_by_term(probe, prev_term);
                self.send(
                    from,
                    MessageBody::AppendResponse {
                        index: prev_index,
                        reject: Some(RejectHint { index, term }),
                    },
                );
            }
        }
    }

    fn handle_append_response(
        &mut self,
        from: NodeId,
        index: LogIndex,
        reject: Option<RejectHint>,
    ) {
        if let Some(hint) = reject {
            let next_probe = if hint.term > Term(0) {
                // Skip every entry of ours whose term is above the follower's term at the
                // hint: none of them can match.
                self.log.find_conflict_by_term(hint.index, hint.term).0
            } else {
                hint.index
            };
            let pr = self
                .tracker
                .progress
                .get_mut(&from)
                .expect("checked by caller");
            if pr.maybe_decr_to(index, next_probe) {
                if pr.state == ProgressState::Replicate {
                    pr.become_probe();
                }
                self.maybe_send_append(from, true);
            }
            return;
        }
        let pr = self
            .tracker
            .progress
            .get_mut(&from)
            .expect("checked by caller");
        let old_paused = pr.is_paused();
        let updated = pr.maybe_update(index);
        // A follower in Snapshot state that reports a match at or past the snapshot is done
        // with it, whether or not this report is news: the acknowledgement that was news may
        // have been lost, and the follower may have caught up past an old snapshot.
        let snapshot_done =
            pr.state == ProgressState::Snapshot && pr.matched >= pr.pending_snapshot;
        if snapshot_done {
            pr.become_probe();
            self.outgoing_snapshots.remove(&from);
        }
        if !updated {
            if snapshot_done {
                self.maybe_send_append(from, true);
            }
            return;
        }
        let pr = self
            .tracker
            .progress
            .get_mut(&from)
            .expect("checked by caller");
        match pr.state {
            ProgressState::Probe => pr.become_replicate(),
            ProgressState::Replicate => pr.inflights.free_to(index),
            ProgressState::Snapshot => {}
        }
        if self.maybe_commit() {
            self.bcast_append();
        } else if old_paused {
            self.maybe_send_append(from, true);
        }
        // Fill the in-flight window.
        while self.maybe_send_append(from, false) {}
        if from == self.lead_transferee
            && self.tracker.progress[&from].matched == self.log.last_index()
        {
            self.send_timeout_now(from);
        }
    }

    fn handle_heartbeat_response(
        &mut self,
        from: NodeId,
        read_context: Option<ReadContext>,
        lease_tick: u64,
    ) {
        let ack = self.lease_acks.entry(from).or_insert(0);
        *ack = (*ack).max(lease_tick);
        let last = self.log.last_index();
        let pr = self
            .tracker
            .progress
            .get_mut(&from)
            .expect("checked by caller");
        pr.probe_sent = false;
        if pr.state == ProgressState::Replicate && pr.inflights.full() {
            // A lost append would otherwise stall the window until the follower is probed.
            pr.inflights.free_first();
        }
        let state = pr.state;
        let matched = pr.matched;
        if state == ProgressState::Snapshot {
            self.snapshot_heartbeat(from);
        } else if matched < last {
            self.maybe_send_append(from, true);
        }
        if let Some(ctx) = read_context {
            self.handle_read_ack(from, ctx);
        }
    }

    /// Recomputes the commit index from the quorum's matches.
    pub(crate) fn maybe_commit(&mut self) -> bool {
        let idx = self.tracker.committed();
        if self.log.maybe_commit(idx, self.term) {
            self.on_commit_advanced();
            return true;
        }
        false
    }

    fn on_commit_advanced(&mut self) {
        if self.role == Role::Leader
            && !self.reads_awaiting_commit.is_empty()
            && self.committed_in_term()
        {
            for (ctx, from, mode) in std::mem::take(&mut self.reads_awaiting_commit) {
                let _ = self.read_index_at_leader(ctx, from, mode);
            }
        }
    }

    pub(crate) fn committed_in_term(&self) -> bool {
        self.log
            .term(self.log.committed)
            .map(|t| t == self.term)
            .unwrap_or(false)
    }

    pub(crate) fn bcast_append(&mut self) {
        let peers: Vec<NodeId> = self
            .tracker
            .progress
            .keys()
            .copied()
            .filter(|p| *p != self.id)
            .collect();
        for p in peers {
            self.maybe_send_append(p, true);
        }
    }

    /// Sends entries (or a snapshot) to `to` if its progress allows; returns whether a
    /// message was sent.
    fn maybe_send_append(&mut self, to: NodeId, send_if_empty: bool) -> bool {
        let Some(pr) = self.tracker.progress.get(&to) else {
            return false;
        };
        if pr.is_paused() {
            return false;
        }
        let next = pr.next;
        let prev_index = next.prev();
        let prev_term = self.log.term(prev_index);
        let entries = self.log.entries_from(next, self.cfg.max_size_per_msg);
        let (prev_term, mut entries) = match (prev_term, entries) {
            (Ok(t), Ok(e)) => (t, e),
            (Err(StorageError::Compacted { .. }), _) | (_, Err(StorageError::Compacted { .. })) => {
                return self.start_snapshot(to);
            }
            (Err(e), _) | (_, Err(e)) => panic!("reading log for node {to} at {next}: {e}"),
        };
        if entries.is_empty() && !send_if_empty {
            return false;
        }
        entries.truncate(self.cfg.max_entries_per_msg);
        let last = entries.last().map(|e| e.index);
        let pr = self.tracker.progress.get_mut(&to).expect("checked above");
        match (pr.state, last) {
            (ProgressState::Replicate, Some(last)) => {
                pr.optimistic_update(last);
                pr.inflights.add(last);
            }
            (ProgressState::Probe, _) => pr.probe_sent = true,
            _ => {}
        }
        let commit = self.log.committed;
        self.send(
            to,
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            },
        );
        true
    }

    fn bcast_heartbeat(&mut self, read_context: Option<ReadContext>) {
        let peers: Vec<(NodeId, LogIndex)> = self
            .tracker
            .progress
            .iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, p)| (*id, p.matched))
            .collect();
        let lease_tick = self.ticks;
        for (id, matched) in peers {
            let commit = matched.min(self.log.committed);
            self.send(
                id,
                MessageBody::Heartbeat {
                    commit,
                    read_context: read_context.clone(),
                    lease_tick,
                },
            );
        }
    }

    /// The caller persisted entries up to `index`: count our own copy towards commit.
    pub(crate) fn on_persisted(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let persisted = self.persisted_last_index();
        let id = self.id;
        if let Some(p) = self.tracker.progress.get_mut(&id) {
            p.maybe_update(persisted);
        }
        if self.maybe_commit() {
            self.bcast_append();
        }
    }

    /// The last index that is durable locally: in storage and not replaced by unstable
    /// entries since.
    pub(crate) fn persisted_last_index(&self) -> LogIndex {
        let stored = self
            .log
            .storage
            .last_index()
            .unwrap_or_else(|e| panic!("storage.last_index failed: {e}"));
        let unstable_from = match self.log.unstable_entries().first() {
            Some(e) => e.index.prev(),
            None => self.log.last_index(),
        };
        stored.min(unstable_from)
    }

    // ---------------------------------------------------------------- proposals

    pub fn propose(&mut self, datas: &[(EntryKind, Bytes)]) -> Result<LogIndex, ProposeError> {
        if self.role != Role::Leader {
            let leader = (self.leader != NodeId::NONE).then_some(self.leader);
            return Err(ProposeError::NotLeader { leader });
        }
        if self.lead_transferee != NodeId::NONE {
            return Err(ProposeError::LeaderTransferring {
                to: self.lead_transferee,
            });
        }
        let mut bytes = 0;
        for (_, d) in datas {
            let size = d.len() as u64;
            if size > self.cfg.max_entry_bytes {
                return Err(ProposeError::EntryTooLarge {
                    size,
                    max: self.cfg.max_entry_bytes,
                });
            }
            bytes += size + ENTRY_OVERHEAD_BYTES;
        }
        // Always admit a batch into an empty pipeline so that one large entry cannot be
        // refused forever.
        if self.uncommitted_bytes > 0
            && self.uncommitted_bytes + bytes > self.cfg.max_uncommitted_bytes
        {
            return Err(ProposeError::UncommittedLimit {
                pending: self.uncommitted_bytes,
                max: self.cfg.max_uncommitted_bytes,
            });
        }
        let mut index = self.log.last_index();
        let mut ents = Vec::with_capacity(datas.len());
        for (kind, data) in datas {
            index = index.next();
            ents.push(Entry {
                term: self.term,
                index,
                kind: *kind,
                data: data.clone(),
            });
        }
        self.uncommitted_bytes += bytes;
        self.log.append(&ents);
        self.pending_broadcast = true;
        Ok(index)
    }

    pub(crate) fn reduce_uncommitted(&mut self, ents: &[Entry]) {
        if self.role != Role::Leader {
            return;
        }
        let n: u64 = ents
            .iter()
            .filter(|e| !e.data.is_empty())
            .map(Entry::size_bytes)
            .sum();
        self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(n);
    }

    pub fn propose_conf_change(&mut self, cc: &ConfChange) -> Result<LogIndex, ProposeError> {
        if self.role == Role::Leader {
            if self.pending_conf_index > self.log.applied {
                return Err(ProposeError::ConfChangePending {
                    index: self.pending_conf_index,
                });
            }
            let next = conf_change::apply(&self.tracker.conf, cc)
                .map_err(ProposeError::InvalidConfChange)?;
            // Promoting a learner that is far behind would stall commits until it catches up.
            for v in &next.voters {
                if !self.tracker.is_voter(*v) {
                    if let Some(p) = self.tracker.progress.get(v) {
                        if p.matched < self.log.committed {
                            return Err(ProposeError::InvalidConfChange(format!(
                                "learner {v} is not caught up (match {}, commit {}); promote it once it is",
                                p.matched, self.log.committed
                            )));
                        }
                    }
                }
            }
        }
        let idx = self.propose(&[(EntryKind::ConfChange, cc.encode())])?;
        self.pending_conf_index = idx;
        Ok(idx)
    }

    /// The caller applied a committed membership change: switch to the new configuration.
    pub fn apply_conf_change(&mut self, cc: &ConfChange) -> ConfState {
        let next = match conf_change::apply(&self.tracker.conf, cc) {
            Ok(n) => n,
            // A committed change that does not apply means replicas disagree on membership:
            // continuing would risk split brain.
            Err(e) => panic!(
                "committed conf change {cc:?} does not apply to {:?}: {e}",
                self.tracker.conf
            ),
        };
        let last = self.log.last_index();
        self.tracker.set_conf(next.clone(), last.next());
        if self.role == Role::Leader {
            if !self.tracker.is_voter(self.id) {
                // Removed (or demoted) leader: step down now that the change is applied; the
                // remaining voters elect a new leader. Hand over quickly to the most
                // up-to-date voter.
                let best = self
                    .tracker
                    .progress
                    .iter()
                    .filter(|(id, p)| **id != self.id && !p.is_learner)
                    .max_by_key(|(_, p)| p.matched)
                    .map(|(id, _)| *id);
                if let Some(to) = best {
                    self.send_timeout_now(to);
                }
                self.become_follower(self.term, NodeId::NONE);
            } else {
                // The commit index may move with the new quorum, and new members need entries.
                self.maybe_commit();
                self.bcast_append();
            }
        }
        next
    }

    /// Leader: after applying up to the joint config, propose leaving it (auto-leave).
    pub(crate) fn maybe_auto_leave(&mut self) {
        if self.role == Role::Leader
            && self.tracker.conf.is_joint()
            && self.tracker.conf.auto_leave
            && self.log.applied >= self.pending_conf_index
        {
            let _ = self.propose_conf_change(&ConfChange::leave_joint());
        }
    }

    // ---------------------------------------------------------------- leader transfer

    fn send_timeout_now(&mut self, to: NodeId) {
        self.lease_forfeited = true;
        self.send(to, MessageBody::TimeoutNow);
    }

    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), TransferError> {
        if self.role != Role::Leader {
            let leader = (self.leader != NodeId::NONE).then_some(self.leader);
            return Err(TransferError::NotLeader { leader });
        }
        if to == self.id || self.lead_transferee == to {
            return Ok(());
        }
        if !self.tracker.is_voter(to) {
            return Err(TransferError::NotVoter(to));
        }
        self.lead_transferee = to;
        // The transfer must finish within one election timeout.
        self.election_elapsed = 0;
        if self.tracker.progress[&to].matched == self.log.last_index() {
            self.send_timeout_now(to);
        } else {
            self.maybe_send_append(to, true);
        }
        Ok(())
    }

    // ---------------------------------------------------------------- reads

    pub fn read_index(&mut self, context: ReadContext, mode: ReadMode) -> Result<(), ReadError> {
        match self.role {
            Role::Leader => self.read_index_at_leader(context, self.id, mode),
            _ if self.leader != NodeId::NONE => {
                let leader = self.leader;
                self.send(leader, MessageBody::ReadIndex { context });
                Ok(())
            }
            _ => Err(ReadError::NoLeader),
        }
    }

    fn read_index_at_leader(
        &mut self,
        context: ReadContext,
        from: NodeId,
        mode: ReadMode,
    ) -> Result<(), ReadError> {
        if self.pending_reads.len() + self.reads_awaiting_commit.len() >= self.cfg.max_pending_reads
        {
            return Err(ReadError::TooManyPending {
                max: self.cfg.max_pending_reads,
            });
        }
        if !self.committed_in_term() {
            // Our commit index may lag the previous leader's until an entry of our term
            // commits (thesis §6.4): wait for it.
            self.reads_awaiting_commit.push((context, from, mode));
            return Ok(());
        }
        let index = self.log.committed;
        if self.tracker.is_singleton() && self.tracker.is_voter(self.id) {
            self.respond_read(from, index, context);
            return Ok(());
        }
        if mode == ReadMode::Lease && self.lease_valid() {
            self.respond_read(from, index, context);
            return Ok(());
        }
        let mut acks = BTreeSet::new();
        acks.insert(self.id);
        self.pending_reads.push_back(PendingRead {
            context: context.clone(),
            from,
            index,
            acks,
        });
        self.bcast_heartbeat(Some(context));
        Ok(())
    }

    fn respond_read(&mut self, from: NodeId, index: LogIndex, context: ReadContext) {
        if from == self.id {
            self.read_states.push(ReadState { index, context });
        } else {
            self.send(from, MessageBody::ReadIndexResponse { index, context });
        }
    }

    fn handle_read_ack(&mut self, from: NodeId, context: ReadContext) {
        let Some(pos) = self.pending_reads.iter().position(|r| r.context == context) else {
            return;
        };
        self.pending_reads[pos].acks.insert(from);
        if !self.tracker.has_quorum(&self.pending_reads[pos].acks) {
            return;
        }
        // Leadership is confirmed as of this request; earlier requests were issued before it
        // and are confirmed too.
        for r in self.pending_reads.drain(..=pos).collect::<Vec<_>>() {
            self.respond_read(r.from, r.index, r.context);
        }
    }

    /// The lease holds while a quorum acknowledged a heartbeat sent less than
    /// `election_tick - lease_drift_ticks` ticks ago: none of them will vote for another
    /// candidate before their election timeout passes.
    pub fn lease_valid(&self) -> bool {
        if self.role != Role::Leader
            || self.lead_transferee != NodeId::NONE
            || self.lease_forfeited
            || !self.cfg.check_quorum
        {
            return false;
        }
        let conf = &self.tracker.conf;
        let Some(mut start) = self.quorum_ack_tick(&conf.voters) else {
            return false;
        };
        if let Some(out) = self.quorum_ack_tick(&conf.voters_outgoing) {
            start = start.min(out);
        }
        // A tick value of 0 means "never acknowledged".
        start > 0
            && self.ticks < start + (self.cfg.election_tick - self.cfg.lease_drift_ticks) as u64
    }

    /// The newest heartbeat tick a majority of `voters` acknowledged (we count as now).
    fn quorum_ack_tick(&self, voters: &[NodeId]) -> Option<u64> {
        if voters.is_empty() {
            return None;
        }
        let mut acks: Vec<u64> = voters
            .iter()
            .map(|v| {
                if *v == self.id {
                    self.ticks
                } else {
                    self.lease_acks.get(v).copied().unwrap_or(0)
                }
            })
            .collect();
        acks.sort_unstable_by(|a, b| b.cmp(a));
        Some(acks[voters.len() / 2])
    }

    // ---------------------------------------------------------------- snapshots

    fn start_snapshot(&mut self, to: NodeId) -> bool {
        let SnapshotInfo {
            metadata,
            total_bytes,
            checksum,
        } = match self.log.snapshot_info() {
            Ok(info) => info,
            Err(StorageError::SnapshotTemporarilyUnavailable) => return false,
            Err(e) => panic!("reading snapshot for node {to}: {e}"),
        };
        assert!(
            metadata.index != LogIndex::ZERO,
            "log compacted but storage has no snapshot (node {to})"
        );
        let index = metadata.index;
        if let Some(pr) = self.tracker.progress.get_mut(&to) {
            pr.become_snapshot(index);
        }
        self.outgoing_snapshots.insert(
            to,
            OutgoingSnapshot {
                metadata,
                total_bytes,
                checksum,
                offset: 0,
                in_flight_end: None,
                heartbeats_waiting: 0,
                follower_behind: None,
            },
        );
        self.send_snapshot_chunk(to);
        true
    }

    /// Where the snapshot transfer to `to` is (offset, end of the chunk in flight), if any.
    pub(crate) fn outgoing_snapshot_at(&self, to: NodeId) -> Option<(u64, Option<u64>)> {
        self.outgoing_snapshots
            .get(&to)
            .map(|o| (o.offset, o.in_flight_end))
    }

    fn send_snapshot_chunk(&mut self, to: NodeId) {
        let Some(out) = self.outgoing_snapshots.get(&to) else {
            // Snapshot state without a transfer (e.g. after a leader change): start over.
            if let Some(pr) = self.tracker.progress.get_mut(&to) {
                pr.become_probe();
            }
            return;
        };
        let total = out.total_bytes;
        let start = out.offset.min(total);
        let want = self.cfg.snapshot_chunk_bytes.min(total - start);
        let data = match self.log.snapshot_chunk(out.metadata.index, start, want) {
            Ok(data) if data.len() as u64 == want => data,
            Ok(data) => panic!(
                "snapshot {} for node {to}: storage returned {} bytes at {start}, asked {want}",
                out.metadata.index,
                data.len()
            ),
            // A newer snapshot replaced this one: start over with it.
            Err(StorageError::SnapshotTemporarilyUnavailable) => {
                self.outgoing_snapshots.remove(&to);
                if let Some(pr) = self.tracker.progress.get_mut(&to) {
                    pr.become_probe();
                }
                return;
            }
            Err(e) => panic!("reading snapshot for node {to}: {e}"),
        };
        let end = start + want;
        let metadata = out.metadata.clone();
        let checksum = out.checksum;
        if let Some(out) = self.outgoing_snapshots.get_mut(&to) {
            out.in_flight_end = Some(end);
            out.heartbeats_waiting = 0;
        }
        self.send(
            to,
            MessageBody::Snapshot {
                metadata,
                offset: start,
                total_bytes: total,
                checksum,
                data,
                done: end == total,
            },
        );
    }

    fn handle_snapshot_response(
        &mut self,
        from: NodeId,
        index: LogIndex,
        next_offset: u64,
        reject: bool,
    ) {
        let Some(out) = self.outgoing_snapshots.get_mut(&from) else {
            return;
        };
        if out.metadata.index != index {
            return; // A response to an older transfer.
        }
        let total = out.total_bytes;
        out.follower_behind = None;
        if reject {
            out.offset = 0;
        } else if out.in_flight_end == Some(next_offset) {
            out.offset = next_offset;
            out.in_flight_end = None;
        } else if next_offset < out.offset {
            // Behind the chunk we send: a copy of an old answer, or the follower holds less
            // than we thought. Not acted on at once (a duplicate would add a copy in
            // flight); the next resend starts from there if nothing newer came.
            out.follower_behind = Some(next_offset);
            return;
        } else if next_offset > out.offset && next_offset < total {
            // The follower holds more of this snapshot than we are sending: a stale reject
            // (duplicated or reordered) sent us back to 0 after it had moved on, and it
            // answers every resend of an earlier chunk with where it is. Continue from there,
            // or the transfer never ends (simulator seed 55 with duplication).
            out.offset = next_offset;
            out.in_flight_end = None;
        } else {
            // The answer to a copy of a chunk already acknowledged: the chunk in flight is
            // the newer one, and sending again here would add a copy per duplicate.
            return;
        }
        if out.offset < total {
            self.send_snapshot_chunk(from);
        }
    }

    /// A heartbeat response from a follower being sent a snapshot: the chunk in flight may
    /// have been lost (or its acknowledgement); send it again after a few heartbeats.
    fn snapshot_heartbeat(&mut self, from: NodeId) {
        let resend = match self.outgoing_snapshots.get_mut(&from) {
            Some(out) => {
                out.heartbeats_waiting += 1;
                let due = out.in_flight_end.is_none()
                    || out.heartbeats_waiting >= SNAPSHOT_RESEND_HEARTBEATS;
                if due {
                    if let Some(at) = out.follower_behind.take() {
                        // The chunk in flight went unanswered but for "I am at `at`": resend
                        // from there, or a follower that holds less than we think (we went
                        // ahead on a stale answer) would answer the same forever.
                        out.offset = at;
                        out.in_flight_end = None;
                    }
                }
                due
            }
            // Snapshot state without a transfer: send_snapshot_chunk starts over.
            None => true,
        };
        if resend {
            self.send_snapshot_chunk(from);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn handle_snapshot_chunk(
        &mut self,
        from: NodeId,
        metadata: SnapshotMetadata,
        offset: u64,
        total_bytes: u64,
        checksum: u32,
        data: Bytes,
        done: bool,
    ) {
        let index = metadata.index;
        if total_bytes > self.cfg.max_snapshot_bytes {
            self.snapshot_response(from, index, 0, true);
            return;
        }
        if index <= self.log.committed {
            // We already have everything the snapshot covers.
            self.incoming_snapshot = None;
            let committed = self.log.committed;
            self.snapshot_response(from, index, total_bytes, false);
            self.send(
                from,
                MessageBody::AppendResponse {
                    index: committed,
                    reject: None,
                },
            );
            return;
        }
        let same = self.incoming_snapshot.as_ref().is_some_and(|s| {
            s.metadata == metadata
                && s.from == from
                && s.term == self.term
                && s.total_bytes == total_bytes
                && s.checksum == checksum
        });
        if !same {
            if offset != 0 {
                // A chunk of a transfer we are not receiving: make the sender restart.
                self.incoming_snapshot = None;
                self.snapshot_response(from, index, 0, true);
                return;
            }
            self.incoming_snapshot = Some(IncomingSnapshot {
                metadata: metadata.clone(),
                from,
                term: self.term,
                total_bytes,
                checksum,
                received: 0,
                crc: 0,
                data: BytesMut::new(),
            });
        }
        let stream = self.cfg.stream_snapshot_chunks;
        let inc = self.incoming_snapshot.as_mut().expect("set above");
        let have = inc.received;
        // Empty chunks are accepted only as the whole of an empty snapshot.
        let len = data.len() as u64;
        if offset == have && have + len <= total_bytes && (len > 0 || total_bytes == 0) {
            inc.crc = crc32c::crc32c_append(inc.crc, &data);
            inc.received += len;
            if stream {
                self.snapshot_chunks.push(SnapshotChunk {
                    metadata: metadata.clone(),
                    total_bytes,
                    checksum,
                    offset,
                    data,
                });
            } else {
                inc.data.extend_from_slice(&data);
            }
        }
        let have = inc.received;
        if have < total_bytes || !done {
            self.snapshot_response(from, index, have, false);
            return;
        }
        let inc = self.incoming_snapshot.take().expect("set above");
        if inc.crc != inc.checksum {
            // Damaged on the way (or at the sender): start over. A streaming caller sees the
            // next transfer's chunk at offset 0 and drops what it wrote.
            self.snapshot_response(from, index, 0, true);
            return;
        }
        let snapshot = Snapshot {
            metadata: inc.metadata,
            data: inc.data.freeze(),
        };
        self.snapshot_response(from, index, total_bytes, false);
        self.restore(snapshot, stream);
        let last = self.log.last_index();
        self.send(
            from,
            MessageBody::AppendResponse {
                index: last,
                reject: None,
            },
        );
    }

    /// Answers a snapshot chunk: the offset we want next, or a rejection (restart from 0).
    fn snapshot_response(&mut self, to: NodeId, index: LogIndex, next_offset: u64, reject: bool) {
        self.send(
            to,
            MessageBody::SnapshotResponse {
                index,
                next_offset,
                reject,
            },
        );
    }

    fn restore(&mut self, snapshot: Snapshot, streamed: bool) {
        let meta = snapshot.metadata.clone();
        if self.log.match_term(meta.index, meta.term) {
            // Our log already contains the snapshot's last entry: just commit up to it.
            self.log.commit_to(meta.index);
            return;
        }
        self.log.restore(snapshot, streamed);
        self.tracker.set_conf(meta.conf_state, meta.index.next());
        let id = self.id;
        if let Some(p) = self.tracker.progress.get_mut(&id) {
            p.matched = LogIndex::ZERO;
        }
    }

    pub(crate) fn ticks(&self) -> u64 {
        self.ticks
    }
}
