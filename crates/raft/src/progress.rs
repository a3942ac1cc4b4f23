//! What a leader knows about each follower (`Progress`), the bounded window of in-flight
//! appends (`Inflights`), and the membership-aware quorum logic (`Tracker`).

use crate::types::{ConfState, LogIndex, NodeId};
use std::collections::{BTreeMap, VecDeque};

/// How the leader is currently replicating to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// Match index unknown: send one append per heartbeat interval until one is accepted.
    Probe,
    /// Steady state: stream appends optimistically, up to the in-flight window.
    Replicate,
    /// The follower needs a snapshot; appends pause until it has installed it.
    Snapshot,
}

/// A bounded window of in-flight appends, identified by the last index each one carried.
#[derive(Clone, Debug)]
pub struct Inflights {
    queue: VecDeque<LogIndex>,
    capacity: usize,
}

impl Inflights {
    pub fn new(capacity: usize) -> Inflights {
        assert!(
            capacity > 0,
            "in-flight window must hold at least one message"
        );
        Inflights {
            queue: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    pub fn full(&self) -> bool {
        self.queue.len() >= self.capacity
    }

    pub fn add(&mut self, last: LogIndex) {
        assert!(
            !self.full(),
            "in-flight window overflow (capacity {})",
            self.capacity
        );
        if let Some(&back) = self.queue.back() {
            assert!(
                last > back,
                "in-flight indexes must increase: {last} after {back}"
            );
        }
        self.queue.push_back(last);
    }

    /// Frees every in-flight append whose last index is `<= to` (acknowledged).
    pub fn free_to(&mut self, to: LogIndex) {
        while self.queue.front().is_some_and(|&i| i <= to) {
            self.queue.pop_front();
        }
    }

    pub fn free_first(&mut self) {
        self.queue.pop_front();
    }

    pub fn reset(&mut self) {
        self.queue.clear();
    }
}

/// The leader's view of one follower.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Highest index known to be replicated on the follower.
    pub matched: LogIndex,
    /// Next index to send.
    pub next: LogIndex,
    pub state: ProgressState,
    /// In Probe state: an append was sent and is unanswered; wait for a reply or heartbeat.
    pub probe_sent: bool,
    /// In Snapshot state: the index of the snapshot being sent.
    pub pending_snapshot: LogIndex,
    /// Heard from since the last CheckQuorum round.
    pub recent_active: bool,
    pub inflights: Inflights,
    pub is_learner: bool,
}

impl Progress {
    pub fn new(next: LogIndex, max_inflight: usize) -> Progress {
        Progress {
            matched: LogIndex::ZERO,
            next,
            state: ProgressState::Probe,
            probe_sent: false,
            pending_snapshot: LogIndex::ZERO,
            recent_active: false,
            inflights: Inflights::new(max_inflight),
            is_learner: false,
        }
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.probe_sent = false;
        self.pending_snapshot = LogIndex::ZERO;
        self.state = state;
        self.inflights.reset();
    }

    pub fn become_probe(&mut self) {
        if self.state == ProgressState::Snapshot {
            let pending = self.pending_snapshot;
            self.reset_state(ProgressState::Probe);
            self.next = (self.matched.next()).max(pending.next());
        } else {
            self.reset_state(ProgressState::Probe);
            self.next = self.matched.next();
        }
    }

    pub fn become_replicate(&mut self) {
        self.reset_state(ProgressState::Replicate);
        self.next = self.matched.next();
    }

    pub fn become_snapshot(&mut self, snapshot_index: LogIndex) {
        self.reset_state(ProgressState::Snapshot);
        self.pending_snapshot = snapshot_index;
    }

    /// The follower acknowledged up to `n`; returns whether that is news.
    pub fn maybe_update(&mut self, n: LogIndex) -> bool {
        let updated = self.matched < n;
        if updated {
            self.matched = n;
            self.probe_sent = false;
        }
        if self.next < n.next() {
            self.next = n.next();
        }
        updated
    }

    /// Optimistically advance `next` after sending entries up to `last` in Replicate state.
    pub fn optimistic_update(&mut self, last: LogIndex) {
        self.next = last.next();
    }

    /// The follower rejected an append probing at `rejected`; `match_hint` is where the
    /// leader should probe next. Returns false when the rejection is stale.
    pub fn maybe_decr_to(&mut self, rejected: LogIndex, match_hint: LogIndex) -> bool {
        if self.state == ProgressState::Replicate {
            // Only a rejection of something beyond what is known to match is news.
            if rejected <= self.matched {
                return false;
            }
            self.next = self.matched.next();
            return true;
        }
        if self.next.prev() != rejected {
            return false;
        }
        self.next = match_hint.next().min(rejected).max(LogIndex(1));
        self.probe_sent = false;
        true
    }

    /// Whether sending more appends must wait.
    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.full(),
            ProgressState::Snapshot => true,
        }
    }
}

/// Outcome of an election so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    Pending,
    Won,
    Lost,
}

fn majority_vote(voters: &[NodeId], votes: &BTreeMap<NodeId, bool>) -> VoteResult {
    if voters.is_empty() {
        // An empty config agrees to anything: it lets the joint logic treat a non-joint
        // config as "incoming && empty outgoing".
        return VoteResult::Won;
    }
    let (mut yes, mut missing) = (0, 0);
    for v in voters {
        match votes.get(v) {
            Some(true) => yes += 1,
            Some(false) => {}
            None => missing += 1,
        }
    }
    let q = voters.len() / 2 + 1;
    if yes >= q {
        VoteResult::Won
    } else if yes + missing >= q {
        VoteResult::Pending
    } else {
        VoteResult::Lost
    }
}

/// The index a majority of `voters` has acknowledged; `u64::MAX` for an empty config so that
/// `min` over a joint pair ignores it.
fn majority_committed(voters: &[NodeId], matched: impl Fn(NodeId) -> LogIndex) -> LogIndex {
    if voters.is_empty() {
        return LogIndex(u64::MAX);
    }
    // Groups have few voters; a small stack buffer avoids allocating on every commit check.
    let mut buf = [LogIndex::ZERO; 16];
    let mut heap;
    let idx: &mut [LogIndex] = if voters.len() <= buf.len() {
        for (slot, v) in buf.iter_mut().zip(voters) {
            *slot = matched(*v);
        }
        &mut buf[..voters.len()]
    } else {
        heap = voters.iter().map(|v| matched(*v)).collect::<Vec<_>>();
        &mut heap
    };
    idx.sort_unstable_by(|a, b| b.cmp(a));
    idx[voters.len() / 2]
}

/// Membership plus one [`Progress`] per member.
#[derive(Clone, Debug)]
pub struct Tracker {
    pub conf: ConfState,
    pub progress: BTreeMap<NodeId, Progress>,
    pub votes: BTreeMap<NodeId, bool>,
    max_inflight: usize,
}

impl Tracker {
    pub fn new(max_inflight: usize) -> Tracker {
        Tracker {
            conf: ConfState::default(),
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            max_inflight,
        }
    }

    /// Installs a membership; keeps existing progress of nodes that remain.
    pub fn set_conf(&mut self, conf: ConfState, next: LogIndex) {
        let all = conf.all_nodes();
        self.progress.retain(|id, _| all.contains(id));
        for id in &all {
            let p = self
                .progress
                .entry(*id)
                .or_insert_with(|| Progress::new(next, self.max_inflight));
            p.is_learner = !conf.voters.contains(id) && !conf.voters_outgoing.contains(id);
        }
        self.conf = conf;
    }

    pub fn is_voter(&self, id: NodeId) -> bool {
        self.conf.voters.contains(&id) || self.conf.voters_outgoing.contains(&id)
    }

    pub fn is_singleton(&self) -> bool {
        self.conf.voters.len() == 1 && self.conf.voters_outgoing.is_empty()
    }

    pub fn committed(&self) -> LogIndex {
        let m = |id: NodeId| self.progress.get(&id).map_or(LogIndex::ZERO, |p| p.matched);
        let a = majority_committed(&self.conf.voters, m);
        let b = majority_committed(&self.conf.voters_outgoing, m);
        let c = a.min(b);
        if c.0 == u64::MAX {
            LogIndex::ZERO
        } else {
            c
        }
    }

    pub fn reset_votes(&mut self) {
        self.votes.clear();
    }

    pub fn record_vote(&mut self, id: NodeId, granted: bool) {
        self.votes.entry(id).or_insert(granted);
    }

    pub fn vote_result(&self) -> VoteResult {
        let a = majority_vote(&self.conf.voters, &self.votes);
        let b = majority_vote(&self.conf.voters_outgoing, &self.votes);
        match (a, b) {
            (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
            (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
            _ => VoteResult::Pending,
        }
    }

    /// CheckQuorum: whether a quorum (of every config) was recently active.
    pub fn quorum_active(&self, me: NodeId) -> bool {
        let votes: BTreeMap<NodeId, bool> = self
            .progress
            .iter()
            .filter(|(_, p)| !p.is_learner)
            .map(|(id, p)| (*id, *id == me || p.recent_active))
            .collect();
        self.vote_result_for(&votes) == VoteResult::Won
    }

    /// Whether the given set of acknowledgements forms a quorum (ReadIndex confirmation).
    pub fn has_quorum(&self, acks: &std::collections::BTreeSet<NodeId>) -> bool {
        let votes: BTreeMap<NodeId, bool> = self
            .conf
            .voters
            .iter()
            .chain(&self.conf.voters_outgoing)
            .map(|id| (*id, acks.contains(id)))
            .collect();
        self.vote_result_for(&votes) == VoteResult::Won
    }

    fn vote_result_for(&self, votes: &BTreeMap<NodeId, bool>) -> VoteResult {
        let a = majority_vote(&self.conf.voters, votes);
        let b = majority_vote(&self.conf.voters_outgoing, votes);
        match (a, b) {
            (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
            (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
            _ => VoteResult::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u64]) -> Vec<NodeId> {
        v.iter().copied().map(NodeId).collect()
    }

    #[test]
    fn majority_committed_picks_median_of_matches() {
        let voters = ids(&[1, 2, 3, 4, 5]);
        let matches = [10u64, 3, 7, 7, 1];
        let c = majority_committed(&voters, |id| LogIndex(matches[(id.0 - 1) as usize]));
        assert_eq!(c, LogIndex(7));
    }

    #[test]
    fn joint_commit_needs_both_majorities() {
        let mut t = Tracker::new(4);
        t.set_conf(
            ConfState {
                voters: ids(&[1, 2, 3]),
                voters_outgoing: ids(&[3, 4, 5]),
                ..Default::default()
            },
            LogIndex(1),
        );
        for (id, m) in [(1, 9), (2, 9), (3, 2), (4, 1), (5, 1)] {
            t.progress.get_mut(&NodeId(id)).unwrap().matched = LogIndex(m);
        }
        // Incoming majority at 9, outgoing majority only at 1.
        assert_eq!(t.committed(), LogIndex(1));
    }

    #[test]
    fn vote_lost_when_majority_rejects() {
        let mut t = Tracker::new(4);
        t.set_conf(ConfState::from_voters([1, 2, 3]), LogIndex(1));
        t.record_vote(NodeId(1), true);
        assert_eq!(t.vote_result(), VoteResult::Pending);
        t.record_vote(NodeId(2), false);
        t.record_vote(NodeId(3), false);
        assert_eq!(t.vote_result(), VoteResult::Lost);
    }

    #[test]
    fn inflights_bounded_and_freed_in_order() {
        let mut w = Inflights::new(2);
        w.add(LogIndex(5));
        w.add(LogIndex(9));
        assert!(w.full());
        w.free_to(LogIndex(6));
        assert_eq!(w.queue.len(), 1);
        assert!(!w.full());
    }
}
