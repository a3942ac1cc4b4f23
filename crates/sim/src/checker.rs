//! Safety invariants of Raft, checked by the simulator after every event. A violation is a
//! `Violation` naming the invariant and the values that broke it.

use raft::{LogIndex, NodeId, Term};
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

    /// Leader Completeness: a new leader's log holds every committed entry.
    pub fn check_leader_completeness(
        &mut self,
        leader: NodeId,
        term: Term,
        first_index: LogIndex,
        log_term: impl Fn(LogIndex) -> Option<Term>,
    ) -> Result<(), Violation> {
        self.checks += 1;
        for i in first_index.0..=self.applied.len() as u64 {
            let (t, _) = self.applied[i as usize - 1];
            if t == Term(0) {
                continue;
            }
            let have = log_term(LogIndex(i));
            if have != Some(t) {
                return violation(
                    "Leader Completeness",
                    format!(
                        "leader {leader} of term {term} lacks committed entry {i} (term {t}); its log has {have:?}"
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

    /// A node restarted: its volatile commit index starts again from what it persisted.
    pub fn node_restarted(&mut self, node: NodeId) {
        self.commit_seen.remove(&node);
    }
}
