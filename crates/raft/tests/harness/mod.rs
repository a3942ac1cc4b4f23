//! A synchronous in-memory network of `RawNode`s for exact-output tests: every `Ready` is
//! persisted, sent and applied immediately, in a deterministic order.

#![allow(dead_code)]

use bytes::Bytes;
use raft::*;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub struct Net {
    pub nodes: BTreeMap<u64, RawNode<MemStorage>>,
    pub queue: VecDeque<Message>,
    /// Dropped links (from, to).
    pub cut: BTreeSet<(u64, u64)>,
    pub applied: BTreeMap<u64, Vec<Entry>>,
    pub read_states: BTreeMap<u64, Vec<ReadState>>,
    pub sent: Vec<Message>,
}

pub fn config(id: u64) -> Config {
    let mut c = Config::new(id, 1);
    c.seed = id * 7919;
    c
}

impl Net {
    pub fn new(ids: &[u64]) -> Net {
        Self::with_config(ids, config)
    }

    pub fn with_config(ids: &[u64], cfg: impl Fn(u64) -> Config) -> Net {
        let mut nodes = BTreeMap::new();
        for &id in ids {
            let s = MemStorage::with_conf_state(ConfState::from_voters(ids.iter().copied()));
            nodes.insert(id, RawNode::new(&cfg(id), s).unwrap());
        }
        Net {
            nodes,
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            applied: BTreeMap::new(),
            read_states: BTreeMap::new(),
            sent: Vec::new(),
        }
    }

    pub fn node(&mut self, id: u64) -> &mut RawNode<MemStorage> {
        self.nodes.get_mut(&id).unwrap()
    }

    /// Handles one node's Ready: persist, queue messages, apply, advance.
    pub fn process(&mut self, id: u64) -> bool {
        let node = self.nodes.get_mut(&id).unwrap();
        if !node.has_ready() {
            return false;
        }
        let mut rd = node.ready();
        if let Some(s) = &rd.snapshot {
            node.storage_mut().apply_snapshot(s.clone());
        }
        node.storage_mut().append(&rd.entries);
        if let Some(hs) = rd.hard_state {
            node.storage_mut().set_hard_state(hs);
        }
        for m in std::mem::take(&mut rd.messages) {
            self.sent.push(m.clone());
            if !self.cut.contains(&(m.from.0, m.to.0)) {
                self.queue.push_back(m);
            }
        }
        for e in &rd.committed_entries {
            if e.kind == EntryKind::ConfChange {
                let cc = ConfChange::decode(&e.data).unwrap();
                node.apply_conf_change(&cc);
            }
        }
        self.applied
            .entry(id)
            .or_default()
            .extend(rd.committed_entries.iter().cloned());
        self.read_states
            .entry(id)
            .or_default()
            .extend(rd.read_states.iter().cloned());
        node.advance(rd);
        true
    }

    /// Delivers messages and processes Readies until nothing moves.
    pub fn stabilize(&mut self) {
        for _ in 0..100_000 {
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            let mut moved = false;
            for id in ids {
                moved |= self.process(id);
            }
            if let Some(m) = self.queue.pop_front() {
                let to = m.to.0;
                if let Some(n) = self.nodes.get_mut(&to) {
                    n.step(m).unwrap();
                }
                moved = true;
            }
            if !moved {
                return;
            }
        }
        panic!("network did not stabilize");
    }

    /// Ticks `id` until it starts an election, then stabilizes.
    pub fn elect(&mut self, id: u64) {
        self.node(id).campaign();
        self.stabilize();
        assert_eq!(
            self.node(id).role(),
            Role::Leader,
            "node {id} failed to win"
        );
    }

    pub fn isolate(&mut self, id: u64) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for o in ids {
            if o != id {
                self.cut.insert((id, o));
                self.cut.insert((o, id));
            }
        }
    }

    pub fn recover(&mut self) {
        self.cut.clear();
    }

    pub fn applied_data(&self, id: u64) -> Vec<Bytes> {
        self.applied
            .get(&id)
            .map(|v| {
                v.iter()
                    .filter(|e| !e.data.is_empty())
                    .map(|e| e.data.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

pub fn msg(from: u64, to: u64, term: u64, body: MessageBody) -> Message {
    Message {
        group: GroupId(1),
        from: NodeId(from),
        to: NodeId(to),
        term: Term(term),
        body,
    }
}

/// A storage holding entries with the given terms at indexes 1.. and hard state `term`.
pub fn storage_with_terms(voters: &[u64], terms: &[u64], term: u64) -> MemStorage {
    let mut s = MemStorage::with_conf_state(ConfState::from_voters(voters.iter().copied()));
    let ents: Vec<Entry> = terms
        .iter()
        .enumerate()
        .map(|(i, t)| {
            Entry::new(
                Term(*t),
                LogIndex(i as u64 + 1),
                Bytes::from(format!("e{}", i + 1)),
            )
        })
        .collect();
    s.append(&ents);
    s.set_hard_state(HardState {
        term: Term(term),
        vote: NodeId::NONE,
        commit: LogIndex::ZERO,
    });
    s
}
