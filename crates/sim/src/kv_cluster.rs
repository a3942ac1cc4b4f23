//! Whole-cluster simulation: the real store, KV state machine and log engine (over
//! `raft_log::FaultyFileSystem`) of 3 stores with 3 regions, one thread, virtual time, one
//! seed. The network drops, duplicates, delays and partitions; stores crash (losing unsynced
//! writes, sometimes tearing the last one) and restart from their files. Clients run one
//! operation at a time with exactly-once sessions and retry across leader changes.

use crate::cluster::unit;
use bytes::Bytes;
use kv::{ClientId, Command, KvStateMachine, Request, Response, Sequence};
use lincheck::kv::{KvInput, KvModel, KvOutput};
use lincheck::Operation;
use raft::{Message, SplitMix64};
use raft_log::FaultyFileSystem;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::path::PathBuf;
use std::sync::Arc;
use store::{Region, Reply, Store, StoreConfig, StoreError, StoreId, Ticket};

/// Virtual milliseconds.
type Ms = u64;

/// The regions' state machine (it implements `store::StateMachine` in the `kv` crate).
type SimKv = KvStateMachine;

#[derive(Clone, Debug)]
pub struct KvSimOptions {
    pub seed: u64,
    pub sim_seconds: u64,
    pub print_trace: bool,
    /// A deliberate bug for testing the checker: serve reads from the local replica without
    /// ReadIndex. Runs with it must fail the linearizability check.
    pub mutant_local_reads: bool,
}

impl KvSimOptions {
    pub fn new(seed: u64) -> Self {
        KvSimOptions {
            seed,
            sim_seconds: 20,
            print_trace: false,
            mutant_local_reads: false,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct KvSimOutcome {
    pub seed: u64,
    pub virtual_ms: u64,
    pub ops_completed: usize,
    pub ops_unknown: usize,
    pub crashes: u64,
    pub snapshots_installed: u64,
    pub fault_mix: String,
}

enum Ev {
    Tick(usize, u64),
    Deliver(Message, usize),
    /// A client's next step; only the newest generation per client is live.
    Client(usize, u64),
}

struct Sched {
    at: Ms,
    seq: u64,
    ev: Ev,
}
impl PartialEq for Sched {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Sched {}
impl PartialOrd for Sched {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Sched {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

struct SimStore {
    store: Option<Store<SimKv>>,
    fs: FaultyFileSystem,
    epoch: u64,
}

/// One client's operation in flight.
struct InFlight {
    input: KvInput,
    command: Command,
    key: Vec<u8>,
    write: bool,
    sequence: u64,
    slot: usize,
    started: Ms,
    /// Where it waits for a completion, if anywhere.
    pending: Option<(usize, Ticket)>,
    target: usize,
}

struct Client {
    id: u64,
    /// Generation of this client's live event; older ones are ignored.
    generation: u64,
    next_sequence: u64,
    op: Option<InFlight>,
}

const KEYS: u64 = 5;
const CLIENTS: usize = 6;
const TICK_MS: Ms = 10;
/// A client gives up on an operation after this long (its outcome is then unknown).
const GIVE_UP_MS: Ms = 3_000;
/// A client re-sends an unanswered request after this long (same sequence).
const RETRY_MS: Ms = 400;

struct Sim {
    now: Ms,
    seq: u64,
    queue: BinaryHeap<Reverse<Sched>>,
    rng: SplitMix64,
    stores: Vec<SimStore>,
    regions: Vec<Region>,
    cfg: StoreConfig,
    links: Vec<Vec<bool>>,
    drop_rate: f64,
    dup_rate: f64,
    delay_max: Ms,
    clients: Vec<Client>,
    /// Ticket -> client, per store.
    waiting: Vec<BTreeMap<Ticket, usize>>,
    history: Vec<Option<Operation<KvInput, KvOutput>>>,
    clock: u64,
    print_trace: bool,
    /// Clients finish what they started but start nothing new (the end of a run).
    clients_stopped: bool,
    mutant_local_reads: bool,
    out: KvSimOutcome,
}

fn dir() -> PathBuf {
    PathBuf::from("/store")
}

impl Sim {
    fn schedule(&mut self, after: Ms, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Sched {
            at: self.now + after,
            seq: self.seq,
            ev,
        }));
    }

    /// Schedules client `ci`'s next step, replacing any step scheduled before.
    fn wake(&mut self, ci: usize, after: Ms) {
        self.clients[ci].generation += 1;
        let g = self.clients[ci].generation;
        self.schedule(after, Ev::Client(ci, g));
    }

    fn trace(&self, s: impl FnOnce() -> String) {
        if self.print_trace {
            eprintln!("{:>8}ms {}", self.now, s());
        }
    }

    fn open(&mut self, i: usize) {
        let mut cfg = self.cfg.clone();
        cfg.store_id = StoreId(i as u64 + 1);
        let fs: Arc<dyn raft_log::FileSystem> = Arc::new(self.stores[i].fs.clone());
        let s = Store::open(&dir(), fs, cfg, &self.regions)
            .unwrap_or_else(|e| panic!("store {} failed to reopen after a crash: {e}", i + 1));
        self.stores[i].store = Some(s);
        self.stores[i].epoch += 1;
        let e = self.stores[i].epoch;
        let first = 1 + self.rng.below(TICK_MS);
        self.schedule(first, Ev::Tick(i, e));
    }

    fn crash(&mut self, i: usize) {
        if self.stores[i].store.take().is_none() {
            return;
        }
        if self.rng.below(2) == 0 {
            self.stores[i].fs.crash_random();
        } else {
            self.stores[i].fs.crash();
        }
        self.waiting[i].clear();
        self.out.crashes += 1;
        self.trace(|| format!("crash s{}", i + 1));
    }

    fn drive(&mut self, i: usize) {
        let Some(s) = self.stores[i].store.as_mut() else {
            return;
        };
        for _ in 0..64 {
            if !s.has_ready() {
                break;
            }
            s.process_ready()
                .unwrap_or_else(|e| panic!("store {} storage error: {e}", i + 1));
        }
        let outbox = s.take_outbox();
        let completions = s.take_completions();
        self.out.snapshots_installed = self
            .stores
            .iter()
            .filter_map(|s| s.store.as_ref())
            .map(|s| s.stats.snapshots_installed)
            .sum();
        for (to, m) in outbox {
            let t = to.0 as usize - 1;
            if !self.links[i][t] || unit(&mut self.rng) < self.drop_rate {
                continue;
            }
            let d = 1 + self.rng.below(self.delay_max);
            if unit(&mut self.rng) < self.dup_rate {
                let d2 = 1 + self.rng.below(self.delay_max);
                self.schedule(d2, Ev::Deliver(m.clone(), t));
            }
            self.schedule(d, Ev::Deliver(m, t));
        }
        for c in completions {
            if let Some(client) = self.waiting[i].remove(&c.ticket) {
                self.complete(client, i, c.ticket, c.result);
            }
        }
    }

    fn complete(
        &mut self,
        ci: usize,
        store: usize,
        ticket: Ticket,
        result: Result<Reply<SimKv>, StoreError>,
    ) {
        let Some(op) = self.clients[ci].op.as_mut() else {
            return;
        };
        if op.pending != Some((store, ticket)) {
            return; // an answer to an attempt we already gave up on
        }
        op.pending = None;
        let output = match result {
            Ok(Reply::Applied(outcome)) => match outcome.result {
                Ok(r) => Some(to_output(&op.input, r)),
                // Refused by the state machine: nothing changed. Our workload never sends
                // oversized input, so treat it as a bug.
                Err(e) => panic!("state machine refused {:?}: {e}", op.command),
            },
            Ok(Reply::Read(Ok(r))) => Some(to_output(&op.input, r)),
            Ok(Reply::Read(Err(e))) => panic!("read refused: {e}"),
            Ok(Reply::Empty) => None,
            Err(StoreError::NotLeader {
                leader: Some(l), ..
            }) => {
                op.target = l.store.0 as usize - 1;
                None
            }
            Err(_) => {
                op.target = self.rng.below(self.stores.len() as u64) as usize;
                None
            }
        };
        match output {
            Some(out) => {
                self.clock += 1;
                let slot = op.slot;
                if let Some(h) = self.history[slot].as_mut() {
                    h.output = Some(out);
                    h.return_time = Some(self.clock);
                }
                self.clients[ci].op = None;
                let d = 1 + self.rng.below(20);
                self.wake(ci, d);
            }
            None => {
                // Retry soon (same sequence for writes).
                let d = 5 + self.rng.below(30);
                self.wake(ci, d);
            }
        }
    }

    fn client_step(&mut self, ci: usize) {
        if self.clients[ci].op.is_none() {
            if self.clients_stopped {
                return;
            }
            self.start_op(ci);
        }
        let now = self.now;
        let op = self.clients[ci].op.as_ref().expect("started");
        if now - op.started > GIVE_UP_MS {
            // Give up: a read leaves the history, a write's outcome is unknown.
            let (slot, write) = (op.slot, op.write);
            if !write {
                self.history[slot] = None;
            }
            self.clients[ci].op = None;
            self.wake(ci, 1);
            return;
        }
        // If still waiting, this step is the retry timer: re-send (same sequence); the old
        // ticket's answer is then ignored.
        let op = self.clients[ci].op.as_ref().expect("started");
        let (target, key, write, seq, cmd) = (
            op.target,
            op.key.clone(),
            op.write,
            op.sequence,
            op.command.clone(),
        );
        let region = self
            .regions
            .iter()
            .find(|r| r.contains(&key))
            .expect("a region per key")
            .clone();
        let id = self.clients[ci].id;
        let now_ms = self.now;
        let Some(s) = self.stores[target].store.as_mut() else {
            let op = self.clients[ci].op.as_mut().expect("started");
            op.pending = None;
            op.target = self.rng.below(self.stores.len() as u64) as usize;
            self.wake(ci, 10);
            return;
        };
        let r = if write {
            let req = Request {
                client_id: ClientId(id),
                sequence: Sequence(seq),
                command: cmd,
                proposed_at_ms: now_ms,
            };
            s.propose(region.id, region.epoch, &key, req.encode())
        } else {
            if self.mutant_local_reads {
                let r = s.stale_read(region.id, region.epoch, &key, &cmd);
                self.finish_local_read(ci, r);
                return;
            }
            s.read(region.id, region.epoch, &key, cmd)
        };
        match r {
            Ok(t) => {
                self.waiting[target].insert(t, ci);
                let op = self.clients[ci].op.as_mut().expect("started");
                op.pending = Some((target, t));
                self.wake(ci, RETRY_MS);
                self.drive(target);
            }
            Err(e) => {
                let op = self.clients[ci].op.as_mut().expect("started");
                op.pending = None;
                op.target = match e {
                    StoreError::NotLeader {
                        leader: Some(l), ..
                    } => l.store.0 as usize - 1,
                    _ => self.rng.below(self.stores.len() as u64) as usize,
                };
                let d = 5 + self.rng.below(30);
                self.wake(ci, d);
            }
        }
    }

    /// The mutant's read path: answered at once from the local state machine.
    fn finish_local_read(
        &mut self,
        ci: usize,
        r: Result<Result<Response, kv::CommandError>, StoreError>,
    ) {
        let Some(op) = self.clients[ci].op.as_ref() else {
            return;
        };
        match r {
            Ok(Ok(resp)) => {
                let out = to_output(&op.input, resp);
                let slot = op.slot;
                self.clock += 1;
                if let Some(h) = self.history[slot].as_mut() {
                    h.output = Some(out);
                    h.return_time = Some(self.clock);
                }
                self.clients[ci].op = None;
                self.wake(ci, 5);
            }
            _ => self.wake(ci, 10),
        }
    }

    fn start_op(&mut self, ci: usize) {
        let k = format!("k{}", self.rng.below(KEYS)).into_bytes();
        // Spread keys over regions: prefix by region split points g and p.
        let key = match self.rng.below(3) {
            0 => [b"a".as_slice(), &k].concat(),
            1 => [b"h".as_slice(), &k].concat(),
            _ => [b"q".as_slice(), &k].concat(),
        };
        let value = format!(
            "{}.{};",
            self.clients[ci].id, self.clients[ci].next_sequence
        )
        .into_bytes();
        let kb = Bytes::from(key.clone());
        let (input, command, write) = match self.rng.below(4) {
            0 => (
                KvInput::Get { key: key.clone() },
                Command::Get { key: kb },
                false,
            ),
            1 => (
                KvInput::Put {
                    key: key.clone(),
                    value: value.clone(),
                },
                Command::Put {
                    key: kb,
                    value: Bytes::from(value),
                    options: Default::default(),
                },
                true,
            ),
            2 => (
                KvInput::Append {
                    key: key.clone(),
                    value: value.clone(),
                },
                Command::Append {
                    key: kb,
                    value: Bytes::from(value),
                },
                true,
            ),
            _ => {
                // CAS against "absent" or a value we may have written: both outcomes occur.
                let expected = if self.rng.below(2) == 0 {
                    None
                } else {
                    Some(value.clone())
                };
                (
                    KvInput::Cas {
                        key: key.clone(),
                        expected: expected.clone(),
                        new: value.clone(),
                    },
                    Command::CompareAndSwap {
                        key: kb,
                        expected: expected.map(Bytes::from),
                        new: Bytes::from(value),
                    },
                    true,
                )
            }
        };
        let sequence = if write {
            self.clients[ci].next_sequence += 1;
            self.clients[ci].next_sequence
        } else {
            0
        };
        self.clock += 1;
        self.history.push(Some(Operation::unknown(
            ci as u64,
            input.clone(),
            self.clock,
        )));
        let target = self.rng.below(self.stores.len() as u64) as usize;
        self.clients[ci].op = Some(InFlight {
            input,
            command,
            key,
            write,
            sequence,
            slot: self.history.len() - 1,
            started: self.now,
            pending: None,
            target,
        });
    }

    fn step(&mut self) -> bool {
        let Some(Reverse(ev)) = self.queue.pop() else {
            return false;
        };
        self.now = ev.at;
        match ev.ev {
            Ev::Tick(i, e) => {
                if self.stores[i].epoch != e || self.stores[i].store.is_none() {
                    return true;
                }
                self.stores[i].store.as_mut().expect("up").tick();
                self.schedule(TICK_MS, Ev::Tick(i, e));
                self.drive(i);
            }
            Ev::Deliver(m, to) => {
                if let Some(s) = self.stores[to].store.as_mut() {
                    let _ = s.step(m);
                    self.drive(to);
                }
            }
            Ev::Client(ci, g) => {
                if self.clients[ci].generation == g {
                    self.client_step(ci);
                }
            }
        }
        true
    }

    fn run_until(&mut self, t: Ms) {
        while self.queue.peek().is_some_and(|Reverse(e)| e.at <= t) {
            self.step();
        }
        self.now = self.now.max(t);
    }
}

fn to_output(input: &KvInput, r: Response) -> KvOutput {
    match (input, r) {
        (KvInput::Get { .. }, Response::Value(v)) => KvOutput::Get(v.map(|b| b.to_vec())),
        (KvInput::Put { .. }, _) => KvOutput::Put,
        (KvInput::Append { .. }, _) => KvOutput::Append,
        (KvInput::Cas { .. }, Response::Cas { swapped, .. }) => KvOutput::Cas(swapped),
        (i, r) => panic!("unexpected response {r:?} to {i:?}"),
    }
}

/// Runs one seed; returns the outcome or a failure description with the replay command.
pub fn run_kv_seed(opts: &KvSimOptions) -> Result<KvSimOutcome, String> {
    let mut rng = SplitMix64::new(opts.seed ^ 0x004b_5653_494d);
    let stores = 3usize;
    let ids: Vec<StoreId> = (1..=stores as u64).map(StoreId).collect();
    let regions = Region::presplit(&[b"g".to_vec(), b"p".to_vec()], 1, &ids);
    let mut cfg = StoreConfig::new(0);
    cfg.snapshot_threshold_entries = 20 + rng.below(200);
    cfg.engine.segment_size_bytes = 64 << 10;
    let drop_rate = if rng.below(2) == 0 {
        unit(&mut rng) * 0.2
    } else {
        0.0
    };
    let dup_rate = if rng.below(2) == 0 {
        unit(&mut rng) * 0.05
    } else {
        0.0
    };
    let delay_max = 1 + rng.below(20);
    let crashes = rng.below(3) != 0;
    let partitions = rng.below(2) == 0;
    let fault_mix = format!(
        "drop={drop_rate:.2} dup={dup_rate:.2} delay<={delay_max}ms crashes={crashes} partitions={partitions} snapshot_every={}",
        cfg.snapshot_threshold_entries
    );
    let mut sim = Sim {
        now: 0,
        seq: 0,
        queue: BinaryHeap::new(),
        stores: (0..stores)
            .map(|i| SimStore {
                store: None,
                fs: FaultyFileSystem::new(opts.seed.wrapping_mul(31).wrapping_add(i as u64)),
                epoch: 0,
            })
            .collect(),
        regions,
        cfg,
        links: vec![vec![true; stores]; stores],
        drop_rate,
        dup_rate,
        delay_max,
        clients: (0..CLIENTS)
            .map(|i| Client {
                id: 1000 + i as u64,
                generation: 0,
                next_sequence: 0,
                op: None,
            })
            .collect(),
        waiting: vec![BTreeMap::new(); stores],
        history: Vec::new(),
        clock: 0,
        print_trace: opts.print_trace,
        clients_stopped: false,
        mutant_local_reads: opts.mutant_local_reads,
        rng,
        out: KvSimOutcome {
            seed: opts.seed,
            fault_mix: fault_mix.clone(),
            ..Default::default()
        },
    };
    for i in 0..stores {
        sim.open(i);
    }
    for ci in 0..CLIENTS {
        sim.wake(ci, 200 + ci as u64);
    }
    let end = opts.sim_seconds * 1000;
    let mut next_fault = 500;
    while sim.now < end {
        let step_to = (sim.now + 50).min(end);
        sim.run_until(step_to);
        if sim.now >= next_fault {
            next_fault = sim.now + 300 + sim.rng.below(1500);
            match sim.rng.below(6) {
                0 | 1 if crashes => {
                    let i = sim.rng.below(stores as u64) as usize;
                    if sim.stores.iter().filter(|s| s.store.is_some()).count() == stores {
                        sim.crash(i);
                    }
                }
                2 if crashes => {
                    for i in 0..stores {
                        if sim.stores[i].store.is_none() {
                            sim.open(i);
                            sim.trace(|| format!("restart s{}", i + 1));
                        }
                    }
                }
                3 if partitions => {
                    let x = sim.rng.below(stores as u64) as usize;
                    for j in 0..stores {
                        if j != x {
                            sim.links[x][j] = false;
                            sim.links[j][x] = false;
                        }
                    }
                    sim.trace(|| format!("isolate s{}", x + 1));
                }
                4 => {
                    for row in sim.links.iter_mut() {
                        row.iter_mut().for_each(|l| *l = true);
                    }
                }
                _ => {}
            }
        }
    }
    // Heal everything; clients stop starting new operations and finish (or give up on) theirs.
    for row in sim.links.iter_mut() {
        row.iter_mut().for_each(|l| *l = true);
    }
    sim.drop_rate = 0.0;
    for i in 0..stores {
        if sim.stores[i].store.is_none() {
            sim.open(i);
        }
    }
    let quiesce = sim.now + GIVE_UP_MS + 7_000;
    // Let in-flight operations finish (or be given up), but start no new ones.
    sim.clients_stopped = true;
    while sim.now < quiesce && sim.clients.iter().any(|c| c.op.is_some()) {
        let t = sim.now + 50;
        sim.run_until(t);
    }
    // Every region's replicas converge to one state.
    let converge_by = sim.now + 10_000;
    let converged = loop {
        let t = sim.now + 100;
        sim.run_until(t);
        let mut ok = true;
        for r in sim.regions.clone() {
            let hashes: Vec<(u64, u64)> = sim
                .stores
                .iter()
                .filter_map(|s| s.store.as_ref())
                .filter_map(|s| s.state_machine(r.id))
                .map(|m| (m.applied_index(), m.state_hash()))
                .collect();
            let top = hashes.iter().map(|h| h.0).max().unwrap_or(0);
            if hashes.iter().any(|h| h.0 != top) {
                ok = false;
            } else if hashes.windows(2).any(|w| w[0].1 != w[1].1) {
                return Err(format!(
                    "seed {} [{fault_mix}]: replicas of region {} differ at applied index {top}\n  replay: {}",
                    opts.seed,
                    r.id,
                    crate::replay_kv_command(opts.seed)
                ));
            }
        }
        if ok || sim.now > converge_by {
            break ok;
        }
    };
    if !converged {
        return Err(format!(
            "seed {} [{fault_mix}]: replicas did not converge within 10 s of healing\n  replay: {}",
            opts.seed,
            crate::replay_kv_command(opts.seed)
        ));
    }
    let ops: Vec<Operation<KvInput, KvOutput>> = sim.history.iter().flatten().cloned().collect();
    sim.out.ops_completed = ops.iter().filter(|o| o.output.is_some()).count();
    sim.out.ops_unknown = ops.len() - sim.out.ops_completed;
    match lincheck::check(&KvModel, &ops, &lincheck::CheckOptions::default()) {
        Ok(lincheck::CheckResult::Ok) => {}
        Ok(r) => {
            return Err(format!(
                "seed {} [{fault_mix}]: client history of {} ops: {r}\n  replay: {}",
                opts.seed,
                ops.len(),
                crate::replay_kv_command(opts.seed)
            ))
        }
        Err(e) => return Err(format!("seed {}: malformed history: {e}", opts.seed)),
    }
    sim.out.virtual_ms = sim.now;
    Ok(sim.out)
}
