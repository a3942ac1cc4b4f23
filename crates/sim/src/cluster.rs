//! A simulated Raft cluster: real `RawNode`s over in-memory disks, a faulty network and a
//! virtual clock, all driven by one seed.

use crate::checker::{hash_bytes, Checker, Violation};
use bytes::Bytes;
use lincheck::kv::{KvInput, KvOutput};
use lincheck::Operation;
use raft::{
    ConfChange, ConfState, Config, EntryKind, LogIndex, MemStorage, Message, NodeId, ProposeError,
    RawNode, ReadMode, Role, SplitMix64, Term,
};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

/// Virtual time, in microseconds.
pub type Micros = u64;
pub const MS: Micros = 1_000;
pub const SECOND: Micros = 1_000_000;
/// How long a simulated client waits for an answer before giving up (outcome unknown).
pub const CLIENT_TIMEOUT: Micros = SECOND;

/// How the network misbehaves between connected nodes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NetFaults {
    /// Probability that a message is lost.
    pub drop_rate: f64,
    /// Probability that a message is delivered twice.
    pub dup_rate: f64,
    /// Delivery delay is uniform in `[delay_min, delay_max]`; a wide range reorders.
    pub delay_min: Micros,
    pub delay_max: Micros,
}

impl NetFaults {
    pub fn reliable() -> NetFaults {
        NetFaults {
            drop_rate: 0.0,
            dup_rate: 0.0,
            delay_min: 100,
            delay_max: 2 * MS,
        }
    }

    /// The MIT 6.5840 "unreliable" network: 10% loss and long, reordering delays.
    pub fn unreliable() -> NetFaults {
        NetFaults {
            drop_rate: 0.1,
            dup_rate: 0.02,
            delay_min: 100,
            delay_max: 27 * MS,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub nodes: usize,
    pub seed: u64,
    pub tick: Micros,
    pub election_tick: u32,
    pub heartbeat_tick: u32,
    pub pre_vote: bool,
    pub check_quorum: bool,
    pub net: NetFaults,
    /// Time from "ready available" to "persisted"; a crash in between loses that Ready.
    pub disk_delay_max: Micros,
    pub max_size_per_msg: u64,
    pub max_inflight_msgs: usize,
    /// Max relative clock drift of a node's ticks (0.05 = ±5%).
    pub clock_drift: f64,
    /// Keep a human-readable trace of events (for `--verbose` replays).
    pub record_trace: bool,
    /// Print trace lines to stderr as they happen (replays of failing seeds, which may panic
    /// before the trace is returned).
    pub print_trace: bool,
    /// Learners to start with (node ids above `nodes` are not started; see `add_node`).
    pub initial_voters: Option<Vec<u64>>,
    /// Asynchronous persistence (`RawNode::advance_async` / `on_persisted`), as the server's
    /// store does: a Ready is applied at once, a leader's messages go out at once, and its
    /// write (with every other message) completes a random time later, several Readies
    /// possibly in flight; a crash loses what was not written (or tears the oldest write).
    pub async_persist: bool,
    /// Dropping the cluster panics if a violation was found and never looked at (on by
    /// default, so a scenario test cannot miss a violation of its last `run_for`; the swarm,
    /// which returns violations as errors, turns it off).
    pub assert_no_violation_on_drop: bool,
    /// A deliberate bug for testing the checker: with asynchronous persistence, every node
    /// sends all of a Ready's messages before its write is durable (followers acknowledge
    /// entries they have not written). Must fail Commit Durability.
    pub mutant_early_acks: bool,
}

impl ClusterOptions {
    pub fn new(nodes: usize, seed: u64) -> ClusterOptions {
        ClusterOptions {
            nodes,
            seed,
            tick: 10 * MS,
            election_tick: 10,
            heartbeat_tick: 2,
            pre_vote: true,
            check_quorum: true,
            net: NetFaults::reliable(),
            disk_delay_max: 500,
            max_size_per_msg: 64 << 10,
            max_inflight_msgs: 64,
            clock_drift: 0.0,
            record_trace: false,
            print_trace: false,
            initial_voters: None,
            async_persist: false,
            assert_no_violation_on_drop: true,
            mutant_early_acks: false,
        }
    }
}

#[derive(Debug)]
enum EventKind {
    Tick {
        node: usize,
        epoch: u64,
    },
    Ready {
        node: usize,
        epoch: u64,
    },
    /// Asynchronous persistence: some of the node's queued writes complete.
    Persist {
        node: usize,
        epoch: u64,
    },
    Deliver(Message),
}

/// A Ready's write waiting for the simulated disk (asynchronous persistence).
struct QueuedWrite {
    snapshot: Option<raft::Snapshot>,
    entries: Vec<raft::Entry>,
    hard_state: Option<raft::HardState>,
    /// Messages that may leave only once this write (and every earlier one) is durable.
    held: Vec<Message>,
    persisted: raft::Persisted,
}

struct Scheduled {
    at: Micros,
    seq: u64,
    kind: EventKind,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// One simulated peer and its disk.
pub struct SimNode {
    pub id: NodeId,
    raw: Option<RawNode<MemStorage>>,
    /// The disk while the node is down.
    disk: Option<MemStorage>,
    /// Bumped on every crash so that events of a previous life are ignored.
    epoch: u64,
    ready_scheduled: bool,
    pub restarts: u64,
    /// Applied entries of this life: (index, term, payload).
    pub applied: Vec<(LogIndex, Term, Bytes)>,
    /// Index applied by this life's state machine (snapshots included).
    pub applied_index: LogIndex,
    last_role: Role,
    /// Clock rate of this node: tick interval multiplier.
    clock_rate: f64,
    /// Registers (key -> value) of this node's state machine, for reads.
    pub kv: BTreeMap<u64, u64>,
    /// Reads waiting for their ReadState, and ReadStates waiting for apply.
    pending_reads: Vec<(Bytes, LogIndex)>,
    /// Completed reads of this life: (context, value) in completion order.
    pub completed_reads: Vec<(Bytes, Option<u64>)>,
    /// Client writes proposed through this node and not yet known applied:
    /// (index, payload, history slot).
    pending_writes: Vec<(LogIndex, Bytes, usize)>,
    /// Asynchronous persistence: writes handed out and not yet on the disk, oldest first.
    write_queue: std::collections::VecDeque<QueuedWrite>,
    persist_scheduled: bool,
    /// The hard state of the newest write handed out (durable or not).
    staged_hard_state: raft::HardState,
    /// The hard state of the newest write on the disk.
    durable_hard_state: raft::HardState,
}

impl SimNode {
    pub fn is_up(&self) -> bool {
        self.raw.is_some()
    }
    pub fn raw(&self) -> Option<&RawNode<MemStorage>> {
        self.raw.as_ref()
    }
}

/// The whole simulated cluster.
pub struct Cluster {
    pub opts: ClusterOptions,
    pub now: Micros,
    rng: SplitMix64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    pub nodes: Vec<SimNode>,
    /// `links[from][to]`: whether messages from `from` reach `to` (partitions).
    links: Vec<Vec<bool>>,
    /// Per node: plugged into the network at all (MIT's connect/disconnect). A message
    /// passes when both ends are connected and the link is up.
    connected: Vec<bool>,
    pub net: NetFaults,
    pub checker: Checker,
    pub messages_sent: u64,
    /// Messages the faulty network lost (partitions not included) and delivered twice.
    pub messages_dropped: u64,
    pub messages_duplicated: u64,
    /// Crashes in the middle of a write: only part of it reached the disk.
    pub torn_writes: u64,
    /// Nodes that went down (`crash_with`) and came back (`restart`).
    pub crashes: u64,
    pub restarts: u64,
    pub bytes_sent: u64,
    pub messages_delivered: u64,
    /// Hash of every event processed, to prove determinism.
    pub trace_hash: u64,
    pub trace: Vec<String>,
    pub violation: Option<Violation>,
    /// Snapshot data per node for the KV registers (serialized map).
    pub snapshots_taken: u64,
    pub snapshots_installed: u64,
    /// The client history of register reads and writes, for the linearizability check.
    /// `None` marks an operation that surely had no effect (dropped from the history).
    pub history: Vec<Option<Operation<KvInput, KvOutput>>>,
    /// Logical clock of the history: strictly increasing, consistent with virtual time.
    history_clock: u64,
    /// Read context id -> history slot.
    read_slots: BTreeMap<u64, usize>,
    /// Clients with an operation in flight, and when they give up on it. A client issues one
    /// operation at a time, like a real one; after giving up, the outcome stays unknown.
    busy_clients: BTreeMap<u64, (Micros, usize)>,
    /// History slot of a write -> (log index it was proposed at, payload hash).
    write_meta: BTreeMap<usize, (LogIndex, u64)>,
    /// History clock when each index was first applied anywhere (the write at that index
    /// had taken effect by then).
    first_apply_clock: std::collections::HashMap<LogIndex, u64>,
}

fn node_seed(seed: u64, node: usize, restarts: u64) -> u64 {
    let mut r =
        SplitMix64::new(seed ^ ((node as u64) << 32) ^ restarts.wrapping_mul(0x1234_5678_9abc));
    r.next_u64()
}

impl Cluster {
    pub fn new(opts: ClusterOptions) -> Cluster {
        let n = opts.nodes;
        let mut rng = SplitMix64::new(opts.seed);
        let voters: Vec<u64> = opts
            .initial_voters
            .clone()
            .unwrap_or_else(|| (1..=n as u64).collect());
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let drift = if opts.clock_drift > 0.0 {
                1.0 + opts.clock_drift * (2.0 * unit(&mut rng) - 1.0)
            } else {
                1.0
            };
            let disk = if voters.contains(&(i as u64 + 1)) {
                MemStorage::new_bootstrap(ConfState::from_voters(voters.iter().copied()))
            } else {
                // Not a member yet: added later, it gets a snapshot with the membership.
                MemStorage::new()
            };
            nodes.push(SimNode {
                id: NodeId(i as u64 + 1),
                raw: None,
                disk: Some(disk),
                epoch: 0,
                ready_scheduled: false,
                restarts: 0,
                applied: Vec::new(),
                applied_index: LogIndex::ZERO,
                last_role: Role::Follower,
                clock_rate: drift,
                kv: BTreeMap::new(),
                pending_reads: Vec::new(),
                completed_reads: Vec::new(),
                pending_writes: Vec::new(),
                write_queue: std::collections::VecDeque::new(),
                persist_scheduled: false,
                staged_hard_state: raft::HardState::default(),
                durable_hard_state: raft::HardState::default(),
            });
        }
        let net = opts.net;
        let mut c = Cluster {
            links: vec![vec![true; n]; n],
            connected: vec![true; n],
            opts,
            now: 0,
            rng,
            queue: BinaryHeap::new(),
            seq: 0,
            nodes,
            net,
            checker: Checker::new(),
            messages_sent: 0,
            messages_dropped: 0,
            messages_duplicated: 0,
            torn_writes: 0,
            crashes: 0,
            restarts: 0,
            bytes_sent: 0,
            messages_delivered: 0,
            trace_hash: 0xcbf2_9ce4_8422_2325,
            trace: Vec::new(),
            violation: None,
            snapshots_taken: 0,
            snapshots_installed: 0,
            history: Vec::new(),
            history_clock: 0,
            read_slots: BTreeMap::new(),
            write_meta: BTreeMap::new(),
            busy_clients: BTreeMap::new(),
            first_apply_clock: std::collections::HashMap::new(),
        };
        for i in 0..n {
            c.start_node(i);
        }
        c
    }

    pub fn n(&self) -> usize {
        self.nodes.len()
    }

    fn raft_config(&self, i: usize, applied: LogIndex) -> Config {
        let mut cfg = Config::new(i as u64 + 1, 1);
        cfg.election_tick = self.opts.election_tick;
        cfg.heartbeat_tick = self.opts.heartbeat_tick;
        cfg.pre_vote = self.opts.pre_vote;
        cfg.check_quorum = self.opts.check_quorum;
        cfg.max_size_per_msg = self.opts.max_size_per_msg;
        cfg.max_inflight_msgs = self.opts.max_inflight_msgs;
        cfg.snapshot_chunk_bytes = 4096;
        cfg.applied = applied;
        cfg.seed = node_seed(self.opts.seed, i, self.nodes[i].restarts);
        cfg
    }

    fn start_node(&mut self, i: usize) {
        let disk = self.nodes[i]
            .disk
            .take()
            .expect("starting a node that is up");
        // Restart = load the snapshot into the state machine, then replay the log tail.
        let snap = raft::Storage::snapshot(&disk).expect("mem storage snapshot");
        let applied = snap.metadata.index;
        let cfg = self.raft_config(i, applied);
        let raw = RawNode::new(&cfg, disk)
            .unwrap_or_else(|e| panic!("node {} failed to start: {e}", i + 1));
        let node = &mut self.nodes[i];
        node.staged_hard_state = raw.storage().hard_state();
        node.durable_hard_state = node.staged_hard_state;
        node.write_queue.clear();
        node.persist_scheduled = false;
        node.kv = decode_kv(&snap.data);
        node.applied.clear();
        node.applied_index = applied;
        node.pending_reads.clear();
        node.completed_reads.clear();
        node.raw = Some(raw);
        node.ready_scheduled = false;
        node.last_role = Role::Follower;
        let epoch = node.epoch;
        let first_tick = self.jitter(self.opts.tick);
        self.schedule(first_tick, EventKind::Tick { node: i, epoch });
    }

    fn jitter(&mut self, max: Micros) -> Micros {
        1 + self.rng.below(max.max(1))
    }

    pub fn rng(&mut self) -> &mut SplitMix64 {
        &mut self.rng
    }

    fn schedule(&mut self, after: Micros, kind: EventKind) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at: self.now + after,
            seq: self.seq,
            kind,
        }));
    }

    fn schedule_ready(&mut self, i: usize) {
        let node = &self.nodes[i];
        let Some(raw) = &node.raw else { return };
        if node.ready_scheduled || !raw.has_ready() {
            return;
        }
        let epoch = node.epoch;
        self.nodes[i].ready_scheduled = true;
        let d = self.rng.below(self.opts.disk_delay_max.max(1));
        self.schedule(d, EventKind::Ready { node: i, epoch });
    }

    fn record(&mut self, what: impl FnOnce() -> String, code: u64) {
        self.trace_hash ^= code.wrapping_add(self.now);
        self.trace_hash = self.trace_hash.wrapping_mul(0x0100_0000_01b3);
        if self.opts.record_trace {
            let s = what();
            self.trace_line(s);
        }
    }

    fn trace_line(&mut self, s: String) {
        let line = format!("{:>10.3}ms {}", self.now as f64 / 1000.0, s);
        if self.opts.print_trace {
            eprintln!("{line}");
        }
        self.trace.push(line);
    }

    fn fail(&mut self, v: Violation) {
        if self.violation.is_none() {
            self.violation = Some(v);
        }
    }

    /// Processes one event; false when the queue is empty.
    pub fn step_event(&mut self) -> bool {
        let Some(Reverse(ev)) = self.queue.pop() else {
            return false;
        };
        assert!(ev.at >= self.now, "time went backwards");
        self.now = ev.at;
        match ev.kind {
            EventKind::Tick { node, epoch } => {
                if self.nodes[node].epoch != epoch || !self.nodes[node].is_up() {
                    return true;
                }
                self.record(|| format!("tick n{}", node + 1), 1 + node as u64);
                self.nodes[node].raw.as_mut().expect("up").tick();
                let next = (self.opts.tick as f64 * self.nodes[node].clock_rate) as Micros;
                self.schedule(next.max(1), EventKind::Tick { node, epoch });
                self.after_input(node);
            }
            EventKind::Ready { node, epoch } => {
                if self.nodes[node].epoch != epoch || !self.nodes[node].is_up() {
                    return true;
                }
                self.nodes[node].ready_scheduled = false;
                self.handle_ready(node, None);
                self.after_input(node);
            }
            EventKind::Persist { node, epoch } => {
                if self.nodes[node].epoch != epoch || !self.nodes[node].is_up() {
                    return true;
                }
                self.nodes[node].persist_scheduled = false;
                let queued = self.nodes[node].write_queue.len() as u64;
                // One write, several, or all (a log engine groups queued writes).
                let n = 1 + self.rng.below(queued.max(1));
                for _ in 0..n {
                    self.complete_write(node);
                }
                self.schedule_persist(node);
                self.after_input(node);
            }
            EventKind::Deliver(m) => {
                let to = m.to.0 as usize - 1;
                if !self.nodes[to].is_up() {
                    return true;
                }
                self.messages_delivered += 1;
                let code = 100 + m.from.0 * 7 + m.to.0 * 13 + m.term.0 * 31;
                self.record(
                    || format!("deliver {} {}->{} t{}", m.kind_name(), m.from, m.to, m.term),
                    code,
                );
                let raw = self.nodes[to].raw.as_mut().expect("up");
                if let Err(e) = raw.step(m) {
                    panic!("simulator routed a message wrongly: {e}");
                }
                self.after_input(to);
            }
        }
        true
    }

    fn after_input(&mut self, i: usize) {
        self.observe(i);
        self.schedule_ready(i);
    }

    /// Runs the invariant checks that concern node `i` right now.
    fn observe(&mut self, i: usize) {
        let Some(raw) = &self.nodes[i].raw else {
            return;
        };
        let id = raw.id();
        let role = raw.role();
        let term = raw.term();
        let commit = raw.commit_index();
        let persisted_commit = raw.storage().hard_state().commit;
        if role == Role::Leader {
            if let Err(v) = self.checker.observe_leader(term, id) {
                self.fail(v);
            }
            if self.nodes[i].last_role != Role::Leader {
                let raw = self.nodes[i].raw.as_ref().expect("up");
                let first = raw.status().first_index;
                if let Err(v) = self
                    .checker
                    .check_leader_completeness(id, term, first, |idx| raw.log_term(idx))
                {
                    self.fail(v);
                }
                let code = 1000 + id.0 + term.0 * 17;
                self.record(|| format!("n{id} becomes leader of term {term}"), code);
            }
        }
        self.nodes[i].last_role = role;
        let known_commit = self.checker.known_commit();
        if commit > known_commit && role == Role::Leader {
            if let Err(v) = self.check_commit_durable(i, commit) {
                self.fail(v);
            }
        }
        if commit > known_commit {
            let raw = self.nodes[i].raw.as_ref().expect("up");
            self.checker
                .observe_leader_commit(commit, term, |idx| raw.log_term(idx).unwrap_or(Term(0)));
        }
        if let Err(v) = self.checker.observe_commit(id, commit, persisted_commit) {
            self.fail(v);
        }
    }

    /// A node's disk, whether the node is up or down.
    pub fn disk(&self, j: usize) -> &MemStorage {
        match &self.nodes[j].raw {
            Some(r) => r.storage(),
            None => self.nodes[j]
                .disk
                .as_ref()
                .expect("a down node keeps its disk"),
        }
    }

    /// Commit Durability ([`Checker::check_commit_durable`]) of leader `leader`'s commit.
    fn check_commit_durable(&mut self, leader: usize, commit: LogIndex) -> Result<(), Violation> {
        let raw = self.nodes[leader].raw.as_ref().expect("up");
        let Some(term) = raw.log_term(commit) else {
            return Ok(());
        };
        let cs = raw.status().conf_state;
        let on_disk = |id: NodeId| -> bool {
            let j = id.0 as usize - 1;
            if j >= self.nodes.len() {
                return false;
            }
            let d = self.disk(j);
            let snap = raft::Storage::snapshot(d)
                .map(|s| s.metadata.index)
                .unwrap_or_default();
            commit <= snap || raft::Storage::term(d, commit).ok() == Some(term)
        };
        let holders: Vec<NodeId> = cs
            .voters
            .iter()
            .chain(&cs.voters_outgoing)
            .copied()
            .filter(|v| on_disk(*v))
            .collect();
        let leader = NodeId(leader as u64 + 1);
        self.checker
            .check_commit_durable(leader, commit, term, &cs, |v| holders.contains(&v))
    }

    /// The configuration according to the current leader (highest term), if any.
    pub fn leader_conf(&self) -> Option<ConfState> {
        let l = self.leader()?;
        Some(self.nodes[l].raw.as_ref()?.status().conf_state)
    }

    /// Handles node `i`'s Ready. With `tear = Some(r)` the node crashes in the middle of
    /// persisting it: only a prefix of the entries reaches the disk, nothing is sent.
    fn handle_ready(&mut self, i: usize, tear: Option<u64>) {
        if self.opts.async_persist && tear.is_none() {
            self.handle_ready_async(i);
            return;
        }
        let raw = self.nodes[i].raw.as_mut().expect("up");
        let mut rd = raw.ready();
        // 1. Persist.
        let hard_state = rd.hard_state;
        self.write_to_disk(i, rd.snapshot.as_ref(), &rd.entries, hard_state, tear);
        if tear.is_some() {
            return; // crashed: nothing is sent, applied or advanced
        }
        // 2. Send.
        for m in std::mem::take(&mut rd.messages) {
            self.send(m);
        }
        // 3. Apply.
        self.apply_ready(i, &mut rd);
        // 4. Advance.
        self.nodes[i].raw.as_mut().expect("up").advance(rd);
    }

    /// Asynchronous persistence: apply now, send a leader's messages now (when the Ready
    /// changes neither term nor vote), queue the write with every other message.
    fn handle_ready_async(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let raw = node.raw.as_mut().expect("up");
        let mut rd = raw.ready();
        // Early only while the term and vote the messages speak for are on the disk: a
        // single-voter leader wins inside `campaign`, before its term is durable.
        let after = rd.hard_state.unwrap_or(node.staged_hard_state);
        let durable = node.durable_hard_state;
        let early = self.opts.mutant_early_acks
            || (raw.role() == Role::Leader
                && after.term == durable.term
                && after.vote == durable.vote);
        node.staged_hard_state = after;
        let messages = std::mem::take(&mut rd.messages);
        let held = if early {
            for m in messages {
                self.send(m);
            }
            Vec::new()
        } else {
            messages
        };
        self.apply_ready(i, &mut rd);
        let node = &mut self.nodes[i];
        let persisted = node.raw.as_mut().expect("up").advance_async(&rd);
        node.write_queue.push_back(QueuedWrite {
            snapshot: rd.snapshot.take(),
            entries: std::mem::take(&mut rd.entries),
            hard_state: rd.hard_state,
            held,
            persisted,
        });
        self.schedule_persist(i);
    }

    fn schedule_persist(&mut self, i: usize) {
        let node = &self.nodes[i];
        if node.persist_scheduled || node.write_queue.is_empty() || !node.is_up() {
            return;
        }
        let epoch = node.epoch;
        self.nodes[i].persist_scheduled = true;
        // Mostly about a Ready's delay, sometimes far longer: the node runs many Readies
        // (applying, answering, leading) ahead of its disk.
        let max = if self.rng.below(8) == 0 {
            20 * self.opts.disk_delay_max
        } else {
            self.opts.disk_delay_max
        };
        let d = 1 + self.rng.below(max.max(1));
        self.schedule(d, EventKind::Persist { node: i, epoch });
    }

    /// The oldest queued write reaches the disk: then its held messages go out and Raft
    /// learns it is durable.
    fn complete_write(&mut self, i: usize) {
        let Some(w) = self.nodes[i].write_queue.pop_front() else {
            return;
        };
        self.write_to_disk(i, w.snapshot.as_ref(), &w.entries, w.hard_state, None);
        if let Some(hs) = w.hard_state {
            self.nodes[i].durable_hard_state = hs;
        }
        for m in w.held {
            self.send(m);
        }
        self.nodes[i]
            .raw
            .as_mut()
            .expect("up")
            .on_persisted(w.persisted);
    }

    /// A crash while writes are queued: whole writes reach the disk in order, up to one
    /// torn in the middle of its entries; the rest is lost.
    fn tear_queued_writes(&mut self, i: usize, r: u64) {
        let queued = self.nodes[i].write_queue.len() as u64;
        let whole = r % (queued + 1);
        for _ in 0..whole {
            let w = self.nodes[i].write_queue.pop_front().expect("counted");
            self.write_to_disk(i, w.snapshot.as_ref(), &w.entries, w.hard_state, None);
        }
        if let Some(w) = self.nodes[i].write_queue.pop_front() {
            self.write_to_disk(
                i,
                w.snapshot.as_ref(),
                &w.entries,
                w.hard_state,
                Some(r >> 16),
            );
        }
        self.nodes[i].write_queue.clear();
    }

    /// Writes a snapshot, entries and hard state to node `i`'s disk and checks Log
    /// Matching on each entry. With `tear = Some(r)` only a prefix of the entries is written
    /// (and no hard state).
    fn write_to_disk(
        &mut self,
        i: usize,
        snapshot: Option<&raft::Snapshot>,
        entries: &[raft::Entry],
        hard_state: Option<raft::HardState>,
        tear: Option<u64>,
    ) {
        let raw = self.nodes[i].raw.as_mut().expect("up");
        let id = raw.id();
        let storage = raw.storage_mut();
        if let Some(s) = snapshot {
            storage.apply_snapshot(s.clone());
        }
        let persist_n = match tear {
            Some(r) if !entries.is_empty() => (r % (entries.len() as u64 + 1)) as usize,
            _ => entries.len(),
        };
        storage.append(&entries[..persist_n]);
        let mut checks = Vec::with_capacity(persist_n);
        for e in &entries[..persist_n] {
            let prev = raft::Storage::term(&*storage, e.index.prev()).unwrap_or(Term(0));
            checks.push((e.index, e.term, hash_bytes(&e.data), prev));
        }
        if persist_n == entries.len() {
            if let Some(hs) = hard_state {
                storage.set_hard_state(hs);
            }
        }
        for (index, term, h, prev) in checks {
            if let Err(v) = self
                .checker
                .observe_persisted_entry(id, index, term, h, prev)
            {
                self.fail(v);
            }
        }
    }

    /// Applies a Ready's snapshot and committed entries to node `i`'s state machine and
    /// serves its reads.
    fn apply_ready(&mut self, i: usize, rd: &mut raft::Ready) {
        let id = self.nodes[i].id;
        if let Some(s) = &rd.snapshot {
            let node = &mut self.nodes[i];
            node.kv = decode_kv(&s.data);
            node.applied_index = s.metadata.index;
            self.snapshots_installed += 1;
            if self.opts.record_trace {
                let line = format!("n{id} installs snapshot {:?}", s.metadata);
                self.trace_line(line);
            }
        }
        for e in &rd.committed_entries {
            let h = hash_bytes(&e.data);
            if !self.first_apply_clock.contains_key(&e.index) {
                self.history_clock += 1;
                self.first_apply_clock.insert(e.index, self.history_clock);
            }
            if let Err(v) = self.checker.observe_applied(id, e.index, e.term, h) {
                self.fail(v);
            }
            let node = &mut self.nodes[i];
            assert!(
                e.index == node.applied_index.next(),
                "node {id} applies {} after {}",
                e.index,
                node.applied_index
            );
            node.applied_index = e.index;
            node.applied.push((e.index, e.term, e.data.clone()));
            if let Some(pos) = node
                .pending_writes
                .iter()
                .position(|(i, _, _)| *i == e.index)
            {
                let (_, data, slot) = node.pending_writes.swap_remove(pos);
                self.history_clock += 1;
                let op = &mut self.history[slot];
                if let Some(o) = op.as_ref() {
                    self.busy_clients.remove(&o.client_id);
                }
                if data == e.data {
                    if let Some(op) = op.as_mut() {
                        op.output = Some(KvOutput::Put);
                        op.return_time = Some(self.history_clock);
                    }
                } else {
                    // Another entry took this index: this write was lost before
                    // committing, and entries never move, so it never takes effect.
                    *op = None;
                }
            }
            match e.kind {
                EntryKind::Normal => apply_kv(&mut node.kv, &e.data),
                EntryKind::ConfChange => {
                    let cc = ConfChange::decode(&e.data).unwrap_or_else(|err| {
                        panic!("committed conf change does not decode: {err}")
                    });
                    // The new configuration is not persisted by itself: on restart the node
                    // starts from its snapshot's configuration and re-applies the log.
                    let cs = node.raw.as_mut().expect("up").apply_conf_change(&cc);
                    if self.opts.record_trace {
                        self.trace_line(format!(
                            "n{id} applies conf change {}: {cc:?} -> {cs:?}",
                            e.index
                        ));
                    }
                }
            }
        }
        let node = &mut self.nodes[i];
        for rs in std::mem::take(&mut rd.read_states) {
            node.pending_reads.push((rs.context, rs.index));
        }
        let applied = node.applied_index;
        let mut still = Vec::new();
        for (ctx, idx) in std::mem::take(&mut node.pending_reads) {
            if idx <= applied {
                let key = read_key(&ctx);
                let v = node.kv.get(&key).copied();
                if let Some(slot) = self.read_slots.remove(&read_id(&ctx)) {
                    self.history_clock += 1;
                    if let Some(op) = self.history[slot].as_mut() {
                        self.busy_clients.remove(&op.client_id);
                        op.output = Some(KvOutput::Get(v.map(|v| v.to_le_bytes().to_vec())));
                        op.return_time = Some(self.history_clock);
                    }
                }
                node.completed_reads.push((ctx, v));
            } else {
                still.push((ctx, idx));
            }
        }
        node.pending_reads = still;
    }

    fn send(&mut self, m: Message) {
        self.messages_sent += 1;
        self.bytes_sent += m.size_bytes();
        let (f, t) = (m.from.0 as usize - 1, m.to.0 as usize - 1);
        if t >= self.nodes.len() || !self.link(f, t) {
            return;
        }
        let net = self.net;
        if net.drop_rate > 0.0 && unit(&mut self.rng) < net.drop_rate {
            self.messages_dropped += 1;
            return;
        }
        let span = net.delay_max.saturating_sub(net.delay_min) + 1;
        let d = net.delay_min + self.rng.below(span);
        if net.dup_rate > 0.0 && unit(&mut self.rng) < net.dup_rate {
            self.messages_duplicated += 1;
            let d2 = net.delay_min + self.rng.below(span);
            self.schedule(d2, EventKind::Deliver(m.clone()));
        }
        self.schedule(d, EventKind::Deliver(m));
    }

    // ------------------------------------------------------------------ driving

    /// Runs until virtual time `now + duration` (or a violation).
    pub fn run_for(&mut self, duration: Micros) {
        let end = self.now + duration;
        while self.violation.is_none() {
            match self.queue.peek() {
                Some(Reverse(ev)) if ev.at <= end => {
                    self.step_event();
                }
                _ => break,
            }
        }
        if self.violation.is_none() {
            self.now = self.now.max(end);
        }
    }

    /// Runs until `cond` holds (checked after every event) or `timeout` passes; returns
    /// whether it held.
    pub fn run_until(&mut self, timeout: Micros, mut cond: impl FnMut(&Cluster) -> bool) -> bool {
        let end = self.now + timeout;
        loop {
            if cond(self) {
                return true;
            }
            if self.violation.is_some() {
                return false;
            }
            match self.queue.peek() {
                Some(Reverse(ev)) if ev.at <= end => {
                    self.step_event();
                }
                _ => {
                    self.now = self.now.max(end);
                    return cond(self);
                }
            }
        }
    }

    /// All client writes acknowledged so far (applied with their own payload).
    pub fn writes_acknowledged(&self) -> u64 {
        self.history
            .iter()
            .flatten()
            .filter(|o| matches!(o.input, KvInput::Put { .. }) && o.output.is_some())
            .count() as u64
    }

    /// Panics with the violation (and the seed) if one was found.
    pub fn assert_ok(&self) {
        if let Some(v) = &self.violation {
            panic!(
                "seed {}: {v}\nreplay: {}",
                self.opts.seed,
                crate::replay_command(self.opts.seed)
            );
        }
    }

    // ------------------------------------------------------------------ faults

    pub fn crash(&mut self, i: usize) {
        self.crash_with(i, false);
    }

    /// Crashes node `i`; with `tear`, a Ready being persisted is only partly written.
    pub fn crash_with(&mut self, i: usize, tear: bool) {
        if !self.nodes[i].is_up() {
            return;
        }
        self.record(|| format!("crash n{}", i + 1), 5000 + i as u64);
        self.crashes += 1;
        if tear && self.opts.async_persist && !self.nodes[i].write_queue.is_empty() {
            let r = self.rng.next_u64();
            self.tear_queued_writes(i, r);
            self.torn_writes += 1;
        } else if tear && self.nodes[i].raw.as_ref().expect("up").has_ready() {
            let r = self.rng.next_u64();
            self.handle_ready(i, Some(r));
            self.torn_writes += 1;
        }
        self.nodes[i].write_queue.clear();
        let node = &mut self.nodes[i];
        let raw = node.raw.take().expect("up");
        node.disk = Some(raw.into_storage());
        node.epoch += 1;
        node.ready_scheduled = false;
        // The client of a write in flight through this node never learns its outcome; a
        // read in flight had no effect and leaves the history.
        let writes = std::mem::take(&mut node.pending_writes);
        let reads = std::mem::take(&mut node.pending_reads);
        for (_, _, slot) in writes {
            if let Some(op) = self.history[slot].as_mut() {
                op.output = None;
                op.return_time = None;
                self.busy_clients.remove(&op.client_id);
            }
        }
        for (ctx, _) in reads {
            if let Some(slot) = self.read_slots.remove(&read_id(&ctx)) {
                if let Some(op) = self.history[slot].take() {
                    self.busy_clients.remove(&op.client_id);
                }
            }
        }
    }

    pub fn restart(&mut self, i: usize) {
        if self.nodes[i].is_up() {
            return;
        }
        self.record(|| format!("restart n{}", i + 1), 6000 + i as u64);
        self.restarts += 1;
        self.nodes[i].restarts += 1;
        let id = self.nodes[i].id;
        self.checker.node_restarted(id);
        self.start_node(i);
    }

    /// A fault Raft does not tolerate, for tests that must see a violation: down node `i`'s
    /// disk loses its log (back to the bootstrap snapshot) but keeps its term and vote.
    pub fn lose_log(&mut self, i: usize) {
        let old = self.nodes[i]
            .disk
            .take()
            .expect("lose_log needs a down node");
        let snap = raft::Storage::snapshot(&old).expect("mem storage snapshot");
        let mut disk = MemStorage::new_bootstrap(snap.metadata.conf_state);
        let hs = old.hard_state();
        let commit = disk.hard_state().commit;
        disk.set_hard_state(raft::HardState { commit, ..hs });
        self.nodes[i].disk = Some(disk);
        // A new disk: its persisted commit index starts again.
        self.checker.disk_replaced(self.nodes[i].id);
    }

    /// Unplugs node `i` from the network, both directions.
    pub fn disconnect(&mut self, i: usize) {
        self.connected[i] = false;
    }

    /// Plugs node `i` back in; it reaches the connected nodes its links allow.
    pub fn connect(&mut self, i: usize) {
        self.connected[i] = true;
    }

    pub fn set_link(&mut self, from: usize, to: usize, up: bool) {
        self.links[from][to] = up;
    }

    /// Splits the cluster into groups that can talk only within themselves.
    pub fn partition(&mut self, groups: &[Vec<usize>]) {
        let n = self.n();
        let mut group_of = vec![usize::MAX; n];
        for (g, members) in groups.iter().enumerate() {
            for &m in members {
                group_of[m] = g;
            }
        }
        for a in 0..n {
            for b in 0..n {
                self.links[a][b] =
                    a == b || (group_of[a] == group_of[b] && group_of[a] != usize::MAX);
            }
        }
    }

    /// Removes every partition and plugs every node back in.
    pub fn heal(&mut self) {
        for row in &mut self.links {
            row.iter_mut().for_each(|l| *l = true);
        }
        self.connected.iter_mut().for_each(|c| *c = true);
    }

    pub fn link(&self, from: usize, to: usize) -> bool {
        self.connected[from] && self.connected[to] && self.links[from][to]
    }

    // ------------------------------------------------------------------ clients

    /// Proposes on node `i`.
    pub fn propose(&mut self, i: usize, data: Bytes) -> Result<LogIndex, ProposeError> {
        let Some(raw) = self.nodes[i].raw.as_mut() else {
            return Err(ProposeError::NotLeader { leader: None });
        };
        let r = raw.propose(data);
        self.schedule_ready(i);
        r
    }

    /// A client writes `value` to register `key` through node `i` (recorded in the history).
    pub fn client_write(&mut self, i: usize, client: u64, key: u64, value: u64) -> bool {
        if !self.client_free(client) {
            return false;
        }
        let data = encode_write(key, value);
        let Ok(idx) = self.propose(i, data.clone()) else {
            return false;
        };
        self.history_clock += 1;
        self.history.push(Some(Operation::unknown(
            client,
            KvInput::Put {
                key: key.to_le_bytes().to_vec(),
                value: value.to_le_bytes().to_vec(),
            },
            self.history_clock,
        )));
        let slot = self.history.len() - 1;
        self.write_meta.insert(slot, (idx, hash_bytes(&data)));
        self.busy_clients
            .insert(client, (self.now + CLIENT_TIMEOUT, slot));
        self.nodes[i].pending_writes.push((idx, data, slot));
        true
    }

    /// A client reads register `key` through node `i` (recorded in the history).
    pub fn client_read(
        &mut self,
        i: usize,
        client: u64,
        key: u64,
        ctx_id: u64,
        mode: ReadMode,
    ) -> bool {
        if !self.client_free(client) || !self.read(i, key, ctx_id, mode) {
            return false;
        }
        self.history_clock += 1;
        self.history.push(Some(Operation::unknown(
            client,
            KvInput::Get {
                key: key.to_le_bytes().to_vec(),
            },
            self.history_clock,
        )));
        let slot = self.history.len() - 1;
        self.read_slots.insert(ctx_id, slot);
        self.busy_clients
            .insert(client, (self.now + CLIENT_TIMEOUT, slot));
        true
    }

    /// Whether `client` may issue an operation now (none in flight, or it gave up on it).
    fn client_free(&mut self, client: u64) -> bool {
        match self.busy_clients.get(&client) {
            Some(&(deadline, _)) if deadline > self.now => false,
            Some(&(_, slot)) => {
                // The client gave up. A read it gave up on can no longer be observed by
                // anyone: drop it. A write may still take effect: it stays unknown.
                self.busy_clients.remove(&client);
                if let Some(op) = &self.history[slot] {
                    if matches!(op.input, KvInput::Get { .. }) {
                        self.history[slot] = None;
                        self.read_slots.retain(|_, s| *s != slot);
                    }
                }
                true
            }
            None => true,
        }
    }

    /// Checks the recorded client history for linearizability (per key). Reads that never
    /// completed are dropped (they had no effect); writes without an answer are unknown.
    ///
    /// Unlike a black-box client, the simulator knows the final log, so a write whose client
    /// never heard back is resolved: if its index holds another payload it never took effect
    /// (entries never move), and if it holds this payload it took effect no later than the
    /// first time anyone applied that index. This keeps the search small and the check
    /// sharper; writes beyond the decided log stay unknown.
    pub fn check_linearizable(&self) -> Result<usize, String> {
        let mut ops: Vec<Operation<KvInput, KvOutput>> = Vec::new();
        for (slot, op) in self.history.iter().enumerate() {
            let Some(op) = op else { continue };
            let mut op = op.clone();
            if op.output.is_none() {
                if matches!(op.input, KvInput::Get { .. }) {
                    continue; // a read without an answer had no effect
                }
                if let Some(&(idx, hash)) = self.write_meta.get(&slot) {
                    if let Some((_, applied_hash)) = self.checker.applied_at(idx) {
                        if applied_hash != hash {
                            continue;
                        }
                        if let Some(&t) = self.first_apply_clock.get(&idx) {
                            if t > op.call {
                                op.output = Some(KvOutput::Put);
                                op.return_time = Some(t);
                            }
                        }
                    }
                }
            }
            ops.push(op);
        }
        let n = ops.len();
        if std::env::var_os("SIM_DEBUG_HISTORY").is_some() {
            let unknown = ops.iter().filter(|o| o.output.is_none()).count();
            eprintln!("history: {n} ops, {unknown} unknown");
        }
        let mut options = lincheck::CheckOptions::default();
        if let Some(v) = std::env::var("SIM_LINCHECK_MAX_STATES")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            options.max_states_per_partition = v;
        }
        if std::env::var_os("SIM_DEBUG_HISTORY").is_some() {
            // A cheap necessary condition: a read must not return a value that a later,
            // non-overlapping write had already replaced before the read began.
            let mut by_key: BTreeMap<Vec<u8>, Vec<&Operation<KvInput, KvOutput>>> = BTreeMap::new();
            for o in &ops {
                by_key.entry(o.input.key().to_vec()).or_default().push(o);
            }
            for (k, kops) in &by_key {
                let mut events: Vec<(u64, i64)> = Vec::new();
                for o in kops.iter() {
                    events.push((o.call, 1));
                    events.push((o.return_time.unwrap_or(u64::MAX), -1));
                }
                events.sort();
                let (mut open, mut max_open) = (0i64, 0i64);
                for (_, d) in events {
                    open += d;
                    max_open = max_open.max(open);
                }
                let longest = kops
                    .iter()
                    .map(|o| o.return_time.unwrap_or(self.history_clock) - o.call)
                    .max()
                    .unwrap_or(0);
                eprintln!("key {k:?}: {} ops, max concurrency {max_open}, longest op {longest} ticks of {}", kops.len(), self.history_clock);
                if std::env::var("SIM_DUMP_KEY")
                    .ok()
                    .and_then(|v| v.parse::<u8>().ok())
                    == Some(k[0])
                {
                    let mut sorted = kops.clone();
                    sorted.sort_by_key(|o| o.call);
                    for o in sorted {
                        let v = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
                        let what = match (&o.input, &o.output) {
                            (KvInput::Put { value, .. }, out) => {
                                format!("W {} {}", v(value), if out.is_some() { "ok" } else { "?" })
                            }
                            (KvInput::Get { .. }, Some(KvOutput::Get(Some(x)))) => {
                                format!("R -> {}", v(x))
                            }
                            (KvInput::Get { .. }, Some(KvOutput::Get(None))) => {
                                "R -> none".to_string()
                            }
                            _ => "other".to_string(),
                        };
                        eprintln!(
                            "  c{:<4} [{:>6}, {:>6}] {what}",
                            o.client_id,
                            o.call,
                            o.return_time.map(|t| t.to_string()).unwrap_or("-".into())
                        );
                    }
                }
                for r in kops
                    .iter()
                    .filter(|o| matches!(o.input, KvInput::Get { .. }))
                {
                    let Some(KvOutput::Get(Some(v))) = &r.output else {
                        continue;
                    };
                    let Some(w) = kops
                        .iter()
                        .find(|o| matches!(&o.input, KvInput::Put { value, .. } if value == v))
                    else {
                        eprintln!("key {k:?}: read {r:?} returned a value never written");
                        continue;
                    };
                    let w_ret = w.return_time.unwrap_or(u64::MAX);
                    for w2 in kops
                        .iter()
                        .filter(|o| matches!(o.input, KvInput::Put { .. }))
                    {
                        if let Some(w2_ret) = w2.return_time {
                            if w2.call > w_ret && w2_ret < r.call {
                                eprintln!("key {k:?}: stale read {r:?}\n  saw {w:?}\n  but {w2:?} replaced it before the read began");
                            }
                        }
                    }
                }
            }
        }
        match lincheck::check(&lincheck::kv::KvModel, &ops, &options) {
            Ok(lincheck::CheckResult::Ok) => Ok(n),
            Ok(lincheck::CheckResult::Unknown { partition, reason }) => {
                // The generic search ran out of budget (many concurrent blind writes before a
                // read make Wing-Gong exponential). The simulator knows the order in which
                // writes took effect (their log indexes), and with a known write order a
                // register history is checked exactly by pairwise conditions.
                self.check_with_write_order(&ops).map_err(|e| {
                    format!("key {partition}: search gave no verdict ({reason}); write-order check: {e}")
                })?;
                Ok(n)
            }
            Ok(r) => Err(format!(
                "history of {n} operations is not linearizable: {r}"
            )),
            Err(e) => Err(format!("malformed history: {e}")),
        }
    }

    /// Exact register check given the log order of writes: with unique values and a known
    /// write order, a history is linearizable iff (a) writes ordered in real time are ordered
    /// in the log, (b) a read's write began before the read ended, (c) no write later in the
    /// log had completed before the read began, (d) reads ordered in real time see writes in
    /// log order, and (e) a read's write precedes in the log every write that began after the
    /// read ended.
    fn check_with_write_order(&self, ops: &[Operation<KvInput, KvOutput>]) -> Result<(), String> {
        const NEVER: u64 = u64::MAX;
        // (log index, call, return) per (key, written value).
        type WriteKey = (Vec<u8>, Vec<u8>);
        type WriteSpan = (LogIndex, u64, u64);
        // (key, value read, call, return).
        type ReadSpan<'a> = (&'a [u8], Option<&'a Vec<u8>>, u64, u64);
        let mut writes: BTreeMap<WriteKey, WriteSpan> = BTreeMap::new();
        let mut reads: Vec<ReadSpan> = Vec::new();
        let index_of = |value: &[u8], key: &[u8]| -> Option<LogIndex> {
            let k = u64::from_le_bytes(key.try_into().ok()?);
            let v = u64::from_le_bytes(value.try_into().ok()?);
            let h = hash_bytes(&encode_write(k, v));
            self.write_meta
                .values()
                .find(|(_, wh)| *wh == h)
                .map(|(i, _)| *i)
        };
        for o in ops {
            match (&o.input, &o.output) {
                (KvInput::Put { key, value }, _) => {
                    let Some(idx) = index_of(value, key) else {
                        continue;
                    };
                    if self.checker.applied_at(idx).is_none() {
                        continue; // never decided: took no effect anyone saw
                    }
                    writes.insert(
                        (key.clone(), value.clone()),
                        (idx, o.call, o.return_time.unwrap_or(NEVER)),
                    );
                }
                (KvInput::Get { key }, Some(KvOutput::Get(v))) => {
                    reads.push((key, v.as_ref(), o.call, o.return_time.unwrap_or(NEVER)));
                }
                _ => {}
            }
        }
        let by_key = |key: &[u8]| -> Vec<(LogIndex, u64, u64)> {
            writes
                .iter()
                .filter(|((k, _), _)| k.as_slice() == key)
                .map(|(_, w)| *w)
                .collect()
        };
        let mut keys: Vec<&[u8]> = reads.iter().map(|r| r.0).collect();
        keys.extend(writes.keys().map(|(k, _)| k.as_slice()));
        keys.sort();
        keys.dedup();
        for key in keys {
            let ws = by_key(key);
            for a in &ws {
                for b in &ws {
                    if a.2 < b.1 && a.0 >= b.0 {
                        return Err(format!(
                            "write at index {} finished before write at index {} began",
                            a.0, b.0
                        ));
                    }
                }
            }
            let rs: Vec<_> = reads.iter().filter(|r| r.0 == key).collect();
            let seen =
                |r: &(&[u8], Option<&Vec<u8>>, u64, u64)| -> Result<(LogIndex, u64), String> {
                    match r.1 {
                        None => Ok((LogIndex::ZERO, 0)),
                        Some(v) => writes
                            .get(&(key.to_vec(), v.clone()))
                            .map(|w| (w.0, w.1))
                            .ok_or_else(|| {
                                format!("a read returned a value no decided write produced: {v:?}")
                            }),
                    }
                };
            for r in &rs {
                let (ri, wcall) = seen(r)?;
                if wcall >= r.3 {
                    return Err(format!(
                        "a read ending at {} saw a write that began at {wcall}",
                        r.3
                    ));
                }
                for w in &ws {
                    if w.0 > ri && w.2 < r.2 {
                        return Err(format!(
                            "stale read at {}: saw index {ri}, but index {} completed at {}",
                            r.2, w.0, w.2
                        ));
                    }
                    if r.3 < w.1 && ri >= w.0 {
                        return Err(format!("a read ending at {} saw index {ri}, not before index {} that began at {}", r.3, w.0, w.1));
                    }
                }
                for r2 in &rs {
                    if r.3 < r2.2 {
                        let (r2i, _) = seen(r2)?;
                        if r2i < ri {
                            return Err(format!("reads went back in time: index {ri} then {r2i}"));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    pub fn propose_conf_change(
        &mut self,
        i: usize,
        cc: &ConfChange,
    ) -> Result<LogIndex, ProposeError> {
        let Some(raw) = self.nodes[i].raw.as_mut() else {
            return Err(ProposeError::NotLeader { leader: None });
        };
        let r = raw.propose_conf_change(cc);
        self.schedule_ready(i);
        r
    }

    pub fn transfer_leader(&mut self, i: usize, to: NodeId) -> bool {
        let Some(raw) = self.nodes[i].raw.as_mut() else {
            return false;
        };
        let ok = raw.transfer_leader(to).is_ok();
        self.schedule_ready(i);
        ok
    }

    /// Starts a linearizable read of register `key` on node `i` with a unique context.
    pub fn read(&mut self, i: usize, key: u64, ctx_id: u64, mode: ReadMode) -> bool {
        let Some(raw) = self.nodes[i].raw.as_mut() else {
            return false;
        };
        let mut ctx = Vec::with_capacity(16);
        ctx.extend_from_slice(&key.to_le_bytes());
        ctx.extend_from_slice(&ctx_id.to_le_bytes());
        let ok = raw.read_index(Bytes::from(ctx), mode).is_ok();
        self.schedule_ready(i);
        ok
    }

    /// The application snapshots node `i` at its applied index and compacts its log.
    pub fn snapshot(&mut self, i: usize) -> bool {
        let node = &mut self.nodes[i];
        let Some(raw) = node.raw.as_mut() else {
            return false;
        };
        let applied = node.applied_index;
        let first = raw.status().first_index;
        // With asynchronous persistence the node may have applied entries its own disk does
        // not hold yet: a snapshot must wait for them (as the store's does).
        if applied < first || applied > raw.persisted_index() {
            return false;
        }
        let cs = raw.status().conf_state;
        let data = encode_kv(&node.kv);
        raw.storage_mut().create_snapshot(applied, cs.clone(), data);
        self.snapshots_taken += 1;
        if self.opts.record_trace {
            let line = format!("n{} snapshots at {applied} with {cs:?}", i + 1);
            self.trace_line(line);
        }
        true
    }

    // ------------------------------------------------------------------ queries

    /// The node ids that currently believe they lead, with their terms.
    pub fn leaders(&self) -> Vec<(usize, Term)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let r = n.raw.as_ref()?;
                (r.role() == Role::Leader).then_some((i, r.term()))
            })
            .collect()
    }

    /// The leader with the highest term among live nodes, if any.
    pub fn leader(&self) -> Option<usize> {
        self.leaders()
            .into_iter()
            .max_by_key(|(_, t)| *t)
            .map(|(i, _)| i)
    }

    /// MIT's checkOneLeader: within `timeout`, exactly one leader in the newest term among
    /// the nodes in `among`.
    pub fn check_one_leader(&mut self, among: &[usize], timeout: Micros) -> Option<usize> {
        let among = among.to_vec();
        let mut found = None;
        self.run_until(timeout, |c| {
            let mut by_term: BTreeMap<Term, Vec<usize>> = BTreeMap::new();
            for &i in &among {
                if let Some(r) = c.nodes[i].raw.as_ref() {
                    if r.role() == Role::Leader {
                        by_term.entry(r.term()).or_default().push(i);
                    }
                }
            }
            if let Some((_, ls)) = by_term.iter().next_back() {
                assert!(ls.len() == 1, "term has {} leaders: {ls:?}", ls.len());
                found = Some(ls[0]);
                return true;
            }
            false
        });
        found
    }

    pub fn term_of(&self, i: usize) -> Option<Term> {
        self.nodes[i].raw.as_ref().map(|r| r.term())
    }

    /// How many nodes applied an entry at `index`, and its payload (MIT's nCommitted).
    /// Panics if two nodes applied different payloads there.
    pub fn n_applied(&self, index: LogIndex) -> (usize, Option<Bytes>) {
        let mut count = 0;
        let mut data: Option<Bytes> = None;
        for n in &self.nodes {
            if let Some((_, _, d)) = n.applied.iter().find(|(i, _, _)| *i == index) {
                if let Some(prev) = &data {
                    assert_eq!(prev, d, "nodes applied different data at {index}");
                }
                count += 1;
                data = Some(d.clone());
            }
        }
        (count, data)
    }

    /// MIT's `one()`: get `data` committed on at least `expected` nodes within 10 virtual
    /// seconds, trying each leader; with `retry`, re-propose if a leader lost it.
    pub fn one(&mut self, data: Bytes, expected: usize, retry: bool) -> Result<LogIndex, String> {
        let deadline = self.now + 10 * SECOND;
        while self.now < deadline {
            let mut index = None;
            for i in 0..self.n() {
                if self.nodes[i]
                    .raw
                    .as_ref()
                    .is_some_and(|r| r.role() == Role::Leader)
                {
                    if let Ok(idx) = self.propose(i, data.clone()) {
                        index = Some(idx);
                        break;
                    }
                }
            }
            if let Some(idx) = index {
                let d = data.clone();
                let ok = self.run_until(2 * SECOND, |c| {
                    let (n, got) = c.n_applied(idx);
                    n >= expected && got.as_ref() == Some(&d)
                });
                if ok {
                    return Ok(idx);
                }
                if !retry {
                    return Err(format!("one({data:?}) failed to reach agreement at {idx}"));
                }
            } else {
                self.run_for(50 * MS);
            }
            if self.violation.is_some() {
                return Err(format!("violation: {:?}", self.violation));
            }
        }
        Err(format!("one({data:?}) failed to reach agreement"))
    }

    /// Nodes that are up.
    pub fn up_nodes(&self) -> Vec<usize> {
        (0..self.n()).filter(|&i| self.nodes[i].is_up()).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.opts.assert_no_violation_on_drop && !std::thread::panicking() {
            self.assert_ok();
        }
    }
}

/// Uniform float in [0, 1).
pub fn unit(rng: &mut SplitMix64) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

// ---------------------------------------------------------------------- the test state machine

/// Register writes in the simulated state machine: `W key value` as 1 + 8 + 8 bytes. Any
/// other payload is opaque and ignored by the registers.
pub fn encode_write(key: u64, value: u64) -> Bytes {
    let mut v = Vec::with_capacity(17);
    v.push(b'W');
    v.extend_from_slice(&key.to_le_bytes());
    v.extend_from_slice(&value.to_le_bytes());
    Bytes::from(v)
}

fn apply_kv(kv: &mut BTreeMap<u64, u64>, data: &[u8]) {
    if data.len() == 17 && data[0] == b'W' {
        let key = u64::from_le_bytes(data[1..9].try_into().expect("8 bytes"));
        let value = u64::from_le_bytes(data[9..17].try_into().expect("8 bytes"));
        kv.insert(key, value);
    }
}

fn read_key(ctx: &[u8]) -> u64 {
    u64::from_le_bytes(ctx[..8].try_into().expect("read context holds a key"))
}

/// The read id inside a read context.
pub fn read_id(ctx: &[u8]) -> u64 {
    u64::from_le_bytes(ctx[8..16].try_into().expect("read context holds an id"))
}

fn encode_kv(kv: &BTreeMap<u64, u64>) -> Bytes {
    let mut v = Vec::with_capacity(kv.len() * 16 + 8);
    v.extend_from_slice(&(kv.len() as u64).to_le_bytes());
    for (k, val) in kv {
        v.extend_from_slice(&k.to_le_bytes());
        v.extend_from_slice(&val.to_le_bytes());
    }
    // Pad so snapshots span several chunks and exercise chunked transfer.
    v.resize(v.len() + 10_000, 0);
    Bytes::from(v)
}

fn decode_kv(data: &[u8]) -> BTreeMap<u64, u64> {
    let mut kv = BTreeMap::new();
    if data.len() < 8 {
        return kv;
    }
    let n = u64::from_le_bytes(data[..8].try_into().expect("8 bytes")) as usize;
    for i in 0..n {
        let o = 8 + i * 16;
        let k = u64::from_le_bytes(data[o..o + 8].try_into().expect("8 bytes"));
        let v = u64::from_le_bytes(data[o + 8..o + 16].try_into().expect("8 bytes"));
        kv.insert(k, v);
    }
    kv
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settle(c: &mut Cluster) -> usize {
        let all: Vec<usize> = (0..c.n()).collect();
        c.check_one_leader(&all, 5 * SECOND).expect("leader")
    }

    /// A violation nobody looked at fails the test when the cluster is dropped (a scenario's
    /// last `run_for` cannot hide one).
    #[test]
    #[should_panic(expected = "Election Safety violated")]
    fn an_unexamined_violation_panics_on_drop() {
        let mut c = Cluster::new(ClusterOptions::new(3, 1));
        c.run_for(SECOND);
        c.fail(Violation {
            invariant: "Election Safety",
            detail: "planted".into(),
        });
    }

    /// The two history checks must be able to fail: forge a stale read.
    #[test]
    fn history_checks_catch_a_stale_read() {
        let mut c = Cluster::new(ClusterOptions::new(3, 7));
        let l = settle(&mut c);
        for v in [10u64, 11] {
            assert!(c.client_write(l, 1, 5, v));
            let done = c.run_until(SECOND, |c| c.busy_clients.is_empty());
            assert!(done, "write {v} did not complete");
        }
        assert!(c.check_linearizable().is_ok());
        let key = 5u64.to_le_bytes().to_vec();
        c.history.push(Some(Operation::completed(
            9,
            KvInput::Get { key },
            c.history_clock + 1,
            KvOutput::Get(Some(10u64.to_le_bytes().to_vec())),
            c.history_clock + 2,
        )));
        let ops: Vec<_> = c.history.iter().flatten().cloned().collect();
        assert!(c.check_with_write_order(&ops).is_err());
        assert!(c.check_linearizable().is_err());
    }
}
