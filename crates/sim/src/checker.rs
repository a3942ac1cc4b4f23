//! Safety invariants of Raft, checked by the simulator after every event. A violation is a
//! `Violation` naming the invariant and the values that broke it. Every invariant the
//! simulator checks is a method here (the cluster only gathers the facts), so that the
//! tests in `tests/seeds.rs` can feed each one a planted violation.

use raft::{ConfState, LogIndex, NodeId, Term};
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} violated: {}", self.invariant, self.detail)
    }
}

fn violation(invariant: &'static str, detail: String) -> Result<(), Violation> {
    Err(Violation { invariant, detail })
}

/// FNV-1a, enough to tell entries apart in checks.
pub fn hash_bytes(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in b {
        h ^= *x as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Global knowledge accumulated over the run.
#[derive(Default, Debug)]
pub struct Checker {
    /// Election Safety: the leader seen for each term.
    leaders: HashMap<Term, NodeId>,
    /// Log Matching: (index, term) -> (payload hash, term of the previous entry).
    entries: HashMap<(LogIndex, Term), (u64, Term)>,
    /// State Machine Safety: what was applied at each index (by anyone), 1-based.
    applied: Vec<(Term, u64)>,
    /// Highest commit index seen per node within its current lifetime, and the highest
    /// persisted commit index across lifetimes.
    commit_seen: HashMap<NodeId, LogIndex>,
    persisted_commit: HashMap<NodeId, LogIndex>,
    /// Leader Completeness: per committed index (1-based), the entry's term and the term of
    /// the leader that first committed it.
    commit_terms: Vec<(Term, Term)>,
    /// Number of checks done, for reports.
    pub checks: u64,
}

impl Checker {
    pub fn new() -> Checker {
        Checker::default()
    }

    /// Election Safety: at most one leader per term.
    pub fn observe_leader(&mut self, term: Term, id: NodeId) -> Result<(), Violation> {
        self.checks += 1;
        match self.leaders.get(&term) {
            Some(other) if *other != id => violation(
                "Election Safety",
                format!("term {term} has two leaders: {other} and {id}"),
            ),
            _ => {
                self.leaders.insert(term, id);
                Ok(())
            }
        }
    }

    /// Log Matching: an entry with a given index and term has the same payload and the same
    /// predecessor term everywhere; by induction the whole prefixes match.
    pub fn observe_persisted_entry(
        &mut self,
        node: NodeId,
        index: LogIndex,
        term: Term,
        hash: u64,
        prev_term: Term,
    ) -> Result<(), Violation> {
        self.checks += 1;
        match self.entries.get(&(index, term)) {
            Some(&(h, p)) if h != hash || p != prev_term => violation(
                "Log Matching",
                format!(
                    "node {node} has entry (index {index}, term {term}) with hash {hash:x} / prev term {prev_term}, \
                     another node had hash {h:x} / prev term {p}"
                ),
            ),
            Some(_) => Ok(()),
            None => {
                self.entries.insert((index, term), (hash, prev_term));
                Ok(())
            }
        }
    }

    /// State Machine Safety: no two nodes apply different entries at one index.
    pub fn observe_applied(
        &mut self,
        node: NodeId,
        index: LogIndex,
        term: Term,
        hash: u64,
    ) -> Result<(), Violation> {
        self.checks += 1;
        let i = index.0 as usize;
        assert!(i > 0, "applied index 0");
        if i <= self.applied.len() {
            let (t, h) = self.applied[i - 1];
            if t != term || h != hash {
                return violation(
                    "State Machine Safety",
                    format!(
                        "node {node} applied (term {term}, hash {hash:x}) at index {index}, \
                         but (term {t}, hash {h:x}) was applied there before"
                    ),
                );
            }
            return Ok(());
        }
        if i != self.applied.len() + 1 {
            // A node applied beyond what anyone applied before: it must have skipped nothing
            // (a node applies in order), so the gap comes from a snapshot; fill with unknowns.
            self.applied.resize(i - 1, (Term(0), 0));
        }
        self.applied.push((term, hash));
        Ok(())
    }

    /// Everything known to be committed (applied somewhere).
    pub fn applied_len(&self) -> LogIndex {
        LogIndex(self.applied.len() as u64)
    }

    pub fn applied_at(&self, index: LogIndex) -> Option<(Term, u64)> {
        let i = index.0 as usize;
        if i == 0 || i > self.applied.len() {
            return None;
        }
        let v = self.applied[i - 1];
        (v.0 != Term(0)).then_some(v)
    }

    /// Records that the leader of term `commit_term` committed the entries up to `commit`;
    /// `entry_term` gives the term of each newly committed index in that leader's log. The
    /// first node to learn of a commit is the leader that made it.
    pub fn observe_leader_commit(
        &mut self,
        commit: LogIndex,
        commit_term: Term,
        entry_term: impl Fn(LogIndex) -> Term,
    ) {
        for idx in self.commit_terms.len() as u64 + 1..=commit.0 {
            self.commit_terms
                .push((entry_term(LogIndex(idx)), commit_term));
        }
    }

    /// Highest index known committed anywhere.
    pub fn known_commit(&self) -> LogIndex {
        LogIndex(self.commit_terms.len() as u64)
    }

    /// Leader Completeness: a new leader of `term` holds every entry committed in an earlier
    /// term, from `first_index` on (entries below it are compacted into its snapshot).
    /// `log_term` is the term of the leader's entry at an index, if it has one.
    pub fn check_leader_completeness(
        &mut self,
        leader: NodeId,
        term: Term,
        first_index: LogIndex,
        log_term: impl Fn(LogIndex) -> Option<Term>,
    ) -> Result<(), Violation> {
        self.checks += 1;
        for (idx, &(entry_term, commit_term)) in self.commit_terms.iter().enumerate() {
            let index = LogIndex(idx as u64 + 1);
            if commit_term >= term || index < first_index {
                continue;
            }
            let have = log_term(index);
            if have != Some(entry_term) {
                return violation(
                    "Leader Completeness",
                    format!(
                        "leader {leader} of term {term} lacks entry {index} (term {entry_term}) committed in an earlier term; it has {have:?}"
                    ),
                );
            }
        }
        Ok(())
    }

    /// Commit Durability: "committed" must mean "durable on a quorum of voters" of the
    /// leader's configuration (of both halves when joint); learners never count.
    /// `on_disk(voter)` says whether that voter's disk holds the leader's entry at `commit`
    /// (of term `term`), or a snapshot covering it.
    pub fn check_commit_durable(
        &mut self,
        leader: NodeId,
        commit: LogIndex,
        term: Term,
        cs: &ConfState,
        on_disk: impl Fn(NodeId) -> bool,
    ) -> Result<(), Violation> {
        self.checks += 1;
        for (half, voters) in [("incoming", &cs.voters), ("outgoing", &cs.voters_outgoing)] {
            if voters.is_empty() {
                continue;
            }
            let durable = voters.iter().filter(|v| on_disk(**v)).count();
            if durable < voters.len() / 2 + 1 {
                return violation(
                    "Commit Durability",
                    format!(
                        "leader {leader} committed index {commit} (term {term}) but only {durable} of the {} {half} voters {:?} have it on disk (learners {:?})",
                        voters.len(),
                        voters,
                        cs.learners
                    ),
                );
            }
        }
        Ok(())
    }

    /// Commit index never goes backwards within a lifetime, and the persisted one never
    /// goes backwards at all.
    pub fn observe_commit(
        &mut self,
        node: NodeId,
        commit: LogIndex,
        persisted: LogIndex,
    ) -> Result<(), Violation> {
        self.checks += 1;
        let seen = self.commit_seen.entry(node).or_default();
        if commit < *seen {
            return violation(
                "Monotonic Commit",
                format!("node {node} commit index went from {seen} to {commit}"),
            );
        }
        *seen = commit;
        let p = self.persisted_commit.entry(node).or_default();
        if persisted < *p {
            return violation(
                "Monotonic Commit",
                format!("node {node} persisted commit index went from {p} to {persisted}"),
            );
        }
        *p = persisted;
        Ok(())
    }

    /// A node's disk was replaced (a test's planted fault): nothing it persisted before counts.
    pub fn disk_replaced(&mut self, node: NodeId) {
        self.commit_seen.remove(&node);
        self.persisted_commit.remove(&node);
    }

    /// A node restarted: its volatile commit index starts again from what it persisted.
    pub fn node_restarted(&mut self, node: NodeId) {
        self.commit_seen.remove(&node);
    }
}
