//! Whole-cluster simulation: the real store, KV state machine and log engine (over
//! `raft_log::FaultyFileSystem`) of 3 to 5 stores hosting 3 to 8 regions (3 replicas each),
//! in one thread, virtual time, one seed.
//!
//! Each seed chooses its layout and its faults (swarm testing: every fault kind is on or off,
//! with its own intensity): message loss, duplication, delay and reordering; partitions of
//! every shape ([`crate::partition`]); crashes that lose unsynced writes, some in the middle
//! of an fsync so that the last write is torn; pauses (a store stops like under SIGSTOP, its
//! inbox fills and is handled late); clock drift of each store's tick timer; leader transfers
//! and snapshots at random points. Clients run one operation at a time with exactly-once
//! sessions and retry across leader changes.
//!
//! After the fault phase everything heals and the run must show, within
//! [`LIVENESS_BOUND`] of virtual time, that every region serves a write and reads again; the
//! final reads of every key then enter the history, so the per-key linearizability check
//! also proves that no acknowledged write was lost. Finally every region's replicas must
//! reach one applied-state hash.

#[path = "kv_placement.rs"]
mod kv_placement;
#[path = "kv_ttl.rs"]
mod kv_ttl;

pub use kv_ttl::ttl_by_seed;

use crate::cluster::unit;
use crate::partition::{shape_links, Shape};
use bytes::Bytes;
use kv::{ClientId, Command, Request, Response, Sequence};
use lincheck::kv::{KvInput, KvModel, KvOutput};
use lincheck::Operation;
use raft::{Message, MessageBody, ReadMode, Role, SplitMix64};
use raft_log::faulty::TornWrite;
use raft_log::{FaultOp, FaultyFileSystem, RecoveryMode};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use store::{
    Driver, DriverStats, PendingWrite, Region, Reply, RoundWriter, Store, StoreConfig, StoreError,
    StoreId, Ticket,
};

/// Virtual microseconds (fine enough for ±5 % of a 10 ms tick).
type Micros = u64;
const MS: Micros = 1_000;
const SECOND: Micros = 1_000_000;

/// The regions' state machine (it implements `store::StateMachine` in the `kv` crate).
type SimKv = placement::Hosted;

#[derive(Clone, Debug)]
pub struct KvSimOptions {
    pub seed: u64,
    /// Virtual seconds of the fault phase; healing and the final checks come after.
    pub sim_seconds: u64,
    pub print_trace: bool,
    /// A deliberate bug for testing the checker: serve reads from the local replica without
    /// ReadIndex. Runs with it must fail the linearizability check.
    pub mutant_local_reads: bool,
    /// How stores write their rounds. `None` (every seed by default): exactly as the server
    /// does, by the shared `store::Driver` — a round is written inline when the store is idle
    /// (nothing in flight, nothing queued: a coin with the seed's `queued_chance`) and
    /// otherwise queued to a disk that completes it a random time later (a crash loses the
    /// rounds not yet written). `Some(false)`: every round inline; `Some(true)`: every round
    /// queued (the two modes of the regression seeds found before the shared driver).
    pub deferred_writes: Option<bool>,
    /// Whether a torn crash may also persist unsynced sectors out of order or fill them with
    /// garbage (`raft_log::faulty::TornWrite`), not only keep a prefix. `None`: chosen by
    /// the seed (half of them; the regression seeds found before keep prefixes only).
    pub torn_write_modes: Option<bool>,
    /// Whether placement runs (heartbeats, a spare store that joins, drains, moves; see
    /// `kv_placement`). `None`: chosen by the seed (half of them; the regression seeds
    /// found before placement ran keep it off, so they replay the run that found the bug).
    pub placement: Option<bool>,
    /// Whether placement's leader also runs the automatic scheduler (splits by size and
    /// load, merges, balancing, repair; small thresholds, see `kv_placement`), on seeds that
    /// run placement. `None`: chosen by the seed (half of them; the regression seeds found
    /// before the scheduler ran keep it off).
    pub scheduler: Option<bool>,
    /// A deliberate bug for testing the lost-write check: region 0's probe write is
    /// acknowledged to its client without being sent to any store. The final read of the
    /// probe key must then be caught missing it.
    pub mutant_lost_probe_write: bool,
    /// A deliberate bug for testing the convergence check: one replica's state hash is
    /// reported off by one. Runs with it must fail.
    pub mutant_divergent_replica: bool,
    /// Whether the seed writes keys with deadlines while the stores' wall clocks drift
    /// (see `kv_ttl`). `None`: chosen by the seed (half of them, [`ttl_by_seed`]).
    pub ttl: Option<bool>,
    /// A deliberate bug for testing the TTL oracle: every store is fed a clock 1,000 s behind
    /// its wall clock (and stamps its proposals with it), so it serves keys long after their
    /// deadline. Runs with it (on TTL seeds) must fail.
    pub mutant_ttl_clock_behind: bool,
}

impl KvSimOptions {
    pub fn new(seed: u64) -> Self {
        KvSimOptions {
            seed,
            sim_seconds: 20,
            print_trace: false,
            mutant_local_reads: false,
            deferred_writes: None,
            torn_write_modes: None,
            placement: None,
            scheduler: None,
            mutant_lost_probe_write: false,
            mutant_divergent_replica: false,
            ttl: None,
            mutant_ttl_clock_behind: false,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct KvSimOutcome {
    pub seed: u64,
    /// Virtual time of the whole run (fault phase, healing and checks).
    pub virtual_micros: u64,
    pub stores: usize,
    pub regions: usize,
    pub clients: usize,
    pub ops_completed: usize,
    pub ops_unknown: usize,
    pub messages: u64,
    pub crashes: u64,
    pub torn_crashes: u64,
    /// Crashes inside an fsync (injected sync failure), included in `torn_crashes`.
    pub fsync_deaths: u64,
    pub pauses: u64,
    pub partitions: u64,
    pub transfers: u64,
    pub snapshots_forced: u64,
    pub snapshots_installed: u64,
    /// Virtual milliseconds from healing until every region served its probe write and the
    /// final reads.
    pub recovery_ms: u64,
    /// Fault events drawn (each picks one kind among all, enabled or not).
    pub fault_events: u64,
    pub messages_dropped: u64,
    pub messages_duplicated: u64,
    pub restarts: u64,
    /// Files torn by crashes, by how (`raft_log::faulty::TearCounts`): a strict prefix of
    /// the unsynced bytes kept, sectors persisted out of order, garbage after the kept bytes.
    pub tears_prefix: u64,
    pub tears_reordered: u64,
    pub tears_garbage: u64,
    /// The chances of those: files a torn crash found with unsynced bytes, and those of them
    /// with unsynced bytes over at least two sectors.
    pub torn_files: u64,
    pub multi_sector_tears: u64,
    /// Restarts that the log engine refused because of a torn (reordered or garbage) tail it
    /// took for damage; the store was then reopened in salvage mode (see `Sim::open`).
    pub recoveries_refused: u64,
    /// Client writes acknowledged (with a result) and reads answered, final ones included.
    pub writes_acknowledged: u64,
    pub reads_completed: u64,
    /// The shared driver's counters over every store's lives: rounds written inline (idle)
    /// and handed to the (simulated) writer, ticks replayed after a stall.
    pub driver: DriverStats,
    /// Log reclamation over every store's lives (`Store::reclaim_log`).
    pub log_purges: u64,
    pub log_segments_deleted: u64,
    pub snapshots_for_log_space: u64,
    /// Background snapshots (`store::snapshot_job`): jobs built at a later `run_rounds` call
    /// than the one that started them (rounds ran in between), jobs lost in a crash before they were built, and built ones
    /// discarded at commit because a newer snapshot got there first.
    pub snapshots_built_later: u64,
    pub snapshot_jobs_lost: u64,
    pub snapshots_overtaken: u64,
    /// Streamed snapshot transfers: chunks written to their file, and transfers a crash cut
    /// off before their install (the file is removed when the store reopens; the leader
    /// starts over).
    pub snapshot_chunks_received: u64,
    pub snapshot_transfers_cut: u64,
    /// Regions split at runtime: proposed by the fault schedule, applied (per replica, over
    /// every store's lives), and replicas of a new region created by its leader's
    /// message on a store that had not applied the split.
    pub splits_proposed: u64,
    pub splits_applied: u64,
    pub peers_created_by_message: u64,
    pub peers_created_by_vote: u64,
    /// Regions at the end of the run.
    pub regions_at_end: usize,
    /// Replica changes proposed by the fault schedule (add a learner, promote, swap through
    /// a joint configuration, remove), membership changes applied (per replica, over every
    /// store's lives), and replicas destroyed on the store they were removed from.
    pub moves_proposed: u64,
    pub joint_swaps_proposed: u64,
    pub replica_changes_applied: u64,
    pub peers_destroyed: u64,
    /// Merges proposed by the fault schedule (adjacent regions on the same stores), merges
    /// applied (per target replica, over every store's lives), and rollbacks proposed by
    /// frozen sources whose target changed first.
    pub merges_proposed: u64,
    pub merges_applied: u64,
    pub merge_rollbacks: u64,
    /// Moments at which no two regions could serve the same key was checked (every
    /// `OWNER_CHECK_EVERY` of simulated time), and the lease-holding leaders those checks
    /// compared (summed: the check is not vacuous).
    pub owner_checks: u64,
    pub owner_leaders_checked: u64,
    /// Placement (seeds with `placement`): heartbeat rounds with a placement leader, region
    /// reports recorded and ignored as older than placement's, operators carried out, and
    /// verbs proposed (the spare's Join, Drain, Move); virtual milliseconds placement took
    /// to settle after the final reads.
    pub placement_rounds: u64,
    pub placement_reports: u64,
    pub placement_reports_stale: u64,
    pub placement_operators: u64,
    pub placement_joins: u64,
    pub placement_drains: u64,
    pub placement_moves: u64,
    pub placement_settle_ms: u64,
    /// The scheduler (seeds with `scheduler`): rounds run, operators carried out by kind
    /// (a target proposed to placement counts as a move), operators refused or failed, and
    /// replicas destroyed because placement named them removed.
    pub scheduler_rounds: u64,
    pub scheduler_splits: u64,
    pub scheduler_merges: u64,
    pub scheduler_moves: u64,
    pub scheduler_transfers: u64,
    pub scheduler_refused: u64,
    pub stale_replicas_destroyed: u64,
    /// TTL seeds (see `kv_ttl`): TTL writes answered, TTL reads the oracle judged and those
    /// of them that found the key present; housekeeping entries (`PurgeExpired`) proposed by
    /// leaders, over every store's lives.
    pub ttl_writes: u64,
    pub ttl_reads_judged: u64,
    pub ttl_live_values_judged: u64,
    pub housekeeping_proposed: u64,
    pub fault_mix: String,
    /// The seed's swarm choices, for [`KvSimOutcome::fault_counts`].
    pub enabled: KvKinds,
}

/// The fault kinds a whole-cluster seed turns on or off.
#[derive(Clone, Copy, Debug, Default)]
pub struct KvKinds {
    pub loss: bool,
    pub duplication: bool,
    pub crashes: bool,
    pub partitions: bool,
    pub pauses: bool,
    pub transfers: bool,
    pub snapshots: bool,
    pub splits: bool,
    pub moves: bool,
    pub merges: bool,
    pub placement: bool,
    pub scheduler: bool,
    pub torn_write_modes: bool,
    /// TTL operations with drifting wall clocks (`kv_ttl`).
    pub ttl: bool,
    /// `drop_rate` and `dup_rate`, for the expected counts.
    pub drop_rate: f64,
    pub dup_rate: f64,
}

impl KvSimOutcome {
    /// Each fault kind this seed can inject: whether it was on, how often it fired, and how
    /// often it was expected to given its chances (messages lost and duplicated: half of the
    /// messages sent times the rate, the half for messages a partition cut first; torn
    /// writes by mode: the files torn); the other kinds are drawn by fault events that
    /// cannot always act, and must fire at least once over the seeds that turned them on.
    pub fn fault_counts(&self) -> Vec<crate::FaultCount> {
        use crate::FaultCount as F;
        let k = self.enabled;
        let [loss, duplication] = crate::tally::network_counts(
            self.messages,
            (k.loss, k.drop_rate, self.messages_dropped),
            (k.duplication, k.dup_rate, self.messages_duplicated),
        );
        vec![
            loss,
            duplication,
            F::new("crashes", k.crashes, self.crashes, None),
            F::new("restarts", k.crashes, self.restarts, None),
            F::new("torn crashes", k.crashes, self.torn_crashes, None),
            F::new("deaths in fsync", k.crashes, self.fsync_deaths, None),
            F::new("tears: prefix", k.crashes, self.tears_prefix, None),
            F::new(
                "tears: reordered",
                k.crashes && k.torn_write_modes,
                self.tears_reordered,
                // Each torn file draws one of the three modes; only unsynced bytes spanning
                // two sectors can be reordered.
                Some(self.multi_sector_tears as f64 / 3.0),
            ),
            F::new(
                "tears: garbage",
                k.crashes && k.torn_write_modes,
                self.tears_garbage,
                Some(self.torn_files as f64 / 3.0),
            ),
            F::new("partitions", k.partitions, self.partitions, None),
            F::new("pauses", k.pauses, self.pauses, None),
            F::new("leader transfers", k.transfers, self.transfers, None),
            F::new("snapshots forced", k.snapshots, self.snapshots_forced, None),
            F::new(
                "snapshots installed",
                k.snapshots,
                self.snapshots_installed,
                None,
            ),
            // The production loop's paths, run by the shared driver.
            F::new(
                "rounds written inline",
                true,
                self.driver.rounds_written_inline,
                None,
            ),
            F::new(
                "rounds handed to the writer",
                true,
                self.driver.rounds_submitted,
                None,
            ),
            F::new(
                "ticks caught up",
                k.pauses,
                self.driver.ticks_caught_up,
                None,
            ),
            // Every seed writes far more than its stores' 8 x 64 KiB log budget.
            F::new("log purges", true, self.log_purges, None),
            F::new(
                "log segments deleted",
                true,
                self.log_segments_deleted,
                None,
            ),
            F::new(
                "snapshots for log space",
                true,
                self.snapshots_for_log_space,
                None,
            ),
            F::new(
                "snapshots built later",
                true,
                self.snapshots_built_later,
                None,
            ),
            F::new(
                "snapshot jobs lost",
                k.crashes,
                self.snapshot_jobs_lost,
                None,
            ),
            F::new(
                "snapshots overtaken",
                k.snapshots,
                self.snapshots_overtaken,
                None,
            ),
            F::new(
                "snapshot chunks received",
                k.snapshots,
                self.snapshot_chunks_received,
                None,
            ),
            F::new(
                "snapshot transfers cut by a crash",
                k.crashes && k.snapshots,
                self.snapshot_transfers_cut,
                None,
            ),
            F::new("splits proposed", k.splits, self.splits_proposed, None),
            F::new("splits applied", k.splits, self.splits_applied, None),
            F::new("replica moves proposed", k.moves, self.moves_proposed, None),
            F::new(
                "joint swaps proposed",
                k.moves,
                self.joint_swaps_proposed,
                None,
            ),
            F::new(
                "replica changes applied",
                k.moves,
                self.replica_changes_applied,
                None,
            ),
            F::new("replicas destroyed", k.moves, self.peers_destroyed, None),
            F::new(
                "leaders compared for a single owner",
                true,
                self.owner_leaders_checked,
                None,
            ),
            F::new("merges proposed", k.merges, self.merges_proposed, None),
            F::new(
                "placement heartbeat rounds",
                k.placement,
                self.placement_rounds,
                None,
            ),
            F::new(
                "placement reports recorded",
                k.placement,
                self.placement_reports,
                None,
            ),
            F::new(
                "placement operators carried out",
                k.placement,
                self.placement_operators,
                None,
            ),
            F::new("placement joins", k.placement, self.placement_joins, None),
            F::new("placement drains", k.placement, self.placement_drains, None),
            F::new("placement moves", k.placement, self.placement_moves, None),
            F::new("scheduler rounds", k.scheduler, self.scheduler_rounds, None),
            F::new("scheduler splits", k.scheduler, self.scheduler_splits, None),
            F::new(
                "scheduler moves and transfers",
                k.scheduler,
                self.scheduler_moves + self.scheduler_transfers,
                None,
            ),
            F::new("merges applied", k.merges, self.merges_applied, None),
            F::new(
                "housekeeping proposed",
                k.ttl,
                self.housekeeping_proposed,
                None,
            ),
            F::new("ttl reads judged", k.ttl, self.ttl_reads_judged, None),
            F::new(
                "ttl live values judged",
                k.ttl,
                self.ttl_live_values_judged,
                None,
            ),
            F::new(
                "replicas created by a vote",
                k.splits && k.crashes,
                self.peers_created_by_vote,
                None,
            ),
            F::new(
                "replicas created by a leader's message",
                k.splits && k.crashes,
                self.peers_created_by_message,
                None,
            ),
        ]
    }
}

/// How often [`Sim::check_single_owner`] looks at every store's leaders.
const OWNER_CHECK_EVERY: Micros = 20 * MS;

/// Base tick period; each store's own period differs from it by its drift.
const TICK: Micros = 20 * MS;
/// The largest tick-rate drift, in parts per million (±5 %). The lease lasts
/// `election_tick - lease_drift_ticks` = 8 of the leader's ticks, and a follower that
/// acknowledged it refuses votes for at least `election_tick - 1` = 9 of its own full ticks,
/// so lease reads stay safe while a follower's clock runs less than 9/8 (12.5 %) faster than
/// the leader's; ±5 % gives at most 1.05/0.95 = 10.5 %.
const MAX_DRIFT_PPM: u64 = 50_000;
/// A client gives up on a read after this long (writes are retried until answered).
const GIVE_UP: Micros = 3 * SECOND;
/// A client re-sends an unanswered request after this long (same sequence).
const RETRY: Micros = 400 * MS;
/// After healing, every region must serve a write and the final reads within this bound.
pub const LIVENESS_BOUND: Micros = 10 * SECOND;
/// After the final reads, every region's replicas must reach one state within this bound.
const CONVERGENCE_BOUND: Micros = 10 * SECOND;
/// Virtual time placement has, after the final reads, to know every region and finish every
/// move and drain: a few heartbeats per replica change, for several regions at once.
const PLACEMENT_SETTLE_BOUND: Micros = 30 * SECOND;
/// A crashed store stays down at least this long: a restarted replica forgets which leader
/// lease it acknowledged, so it must not be back (and voting) before that lease ran out
/// (8 ticks); 300 ms is also a realistic process restart.
const MIN_DOWN: Micros = 300 * MS;

/// Messages and requests a paused store queues (its socket buffers); later ones are lost.
const MAX_INBOX: usize = 4096;
/// `Driver::run_rounds` calls per store event (each up to `store::driver::MAX_ROUNDS_PER_CALL`
/// rounds), so a bug that keeps producing Readies fails the seed instead of hanging it.
const MAX_DRIVES_PER_WAKE_UP: usize = 4;

/// The simulated disk behind a store's asynchronous writes: a submitted round is queued
/// (`Store::queue_ready`) and written when a `Persist` event says the disk finished it
/// (`durable` rounds, `Store::persist_queued`). With `inline` (regression seeds pinned to
/// synchronous writes) a submitted round is written at once instead.
struct SimWriter {
    durable: usize,
    inline: bool,
}

impl RoundWriter<SimKv> for SimWriter {
    fn submit(
        &mut self,
        store: &mut Store<SimKv>,
        pending: PendingWrite,
    ) -> Result<(), StoreError> {
        if self.inline {
            store.finish_ready(pending)
        } else {
            store.queue_ready(pending)
        }
    }

    fn poll(&mut self, store: &mut Store<SimKv>) -> Result<usize, StoreError> {
        store.persist_queued(std::mem::take(&mut self.durable))
    }
}

/// The simulated snapshot thread: a job started at one wake-up of its store is built at a
/// later one (each wake-up builds each waiting job with the seed's
/// [`snapshot_build_chance_by_seed`]), so rounds, received snapshots and crashes fall between a
/// snapshot's view and its commit, as they may in the server, where a background thread
/// builds it.
struct SimSnapshots<'a> {
    waiting: &'a mut Vec<store::SnapshotWork<SimKv>>,
    rng: SplitMix64,
    /// Chance per wake-up that a waiting job is done.
    chance: f64,
    /// Jobs built (always at a later `run_rounds` call than the one that started them).
    built_later: u64,
}

impl store::SnapshotBuilder<SimKv> for SimSnapshots<'_> {
    fn start(&mut self, work: store::SnapshotWork<SimKv>) {
        self.waiting.push(work);
    }

    fn finished(&mut self) -> Vec<store::BuiltSnapshot> {
        let mut done = Vec::new();
        let mut i = 0;
        while i < self.waiting.len() {
            if unit(&mut self.rng) < self.chance {
                if let Some(built) = self.waiting.remove(i).run() {
                    done.push(built);
                    self.built_later += 1;
                }
            } else {
                i += 1;
            }
        }
        done
    }
}
/// Workload operations recorded per seed before the clients stop starting new ones: bounds
/// the history the checker has to search (about 10 times what a 300 s seed produces).
const MAX_HISTORY_OPS: usize = 1_000_000;

enum Ev {
    /// A store's tick timer; only the newest chain (generation) per store is live.
    Tick(usize, u64),
    /// A message (boxed: the heap moves its entries around) reaching a store.
    /// A message, the store it came from, and the index of the store it goes to.
    Deliver(Box<(StoreId, Message)>, usize),
    /// A client's next step; only the newest generation per client is live.
    Client(usize, u64),
    /// A paused store wakes up (pause number).
    Resume(usize, u64),
    /// Deferred writes: some of a store's rounds in flight reach the disk (incarnation).
    Persist(usize, u64),
    /// Every store reports to placement (see `kv_placement`); seeds with placement verbs.
    PlacementHeartbeat,
}

struct Sched {
    at: Micros,
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

/// What reaches a paused store and waits in its inbox.
enum Deferred {
    Message(StoreId, Message),
    /// A client's request: the client, the history slot of its operation, and what to send.
    Request {
        client: usize,
        slot: usize,
        attempt: Attempt,
    },
}

/// One request as sent to a store.
#[derive(Clone)]
struct Attempt {
    key: Vec<u8>,
    /// The session request of a write (stamped with the clock of the store it reaches, see
    /// [`Sim::submit`]); `None` for a read.
    write: Option<Request>,
    command: Command,
}

struct SimStore {
    store: Option<Store<SimKv>>,
    fs: FaultyFileSystem,
    /// Generation of the live tick chain; bumped on every (re)start and resume.
    tick_generation: u64,
    /// This store's tick period (the base period skewed by its clock drift).
    tick_period: Micros,
    /// When it crashed (it may not restart before `MIN_DOWN` passed).
    down_since: Micros,
    /// Paused (SIGSTOP) until then; `pause_number` identifies the pause.
    paused_until: Option<Micros>,
    pause_number: u64,
    inbox: VecDeque<Deferred>,
    /// A sync failure is injected: the store dies at its next storage error, with the
    /// unsynced tail torn.
    failure_armed: bool,
    /// Bumped at every crash: a `Persist` event of an earlier life is ignored.
    incarnation: u64,
    /// A `Persist` event of this incarnation is scheduled.
    persist_scheduled: bool,
    /// The store's loop, the server's own (`store::Driver`); a new one per life.
    driver: Option<Driver>,
    /// Snapshot jobs handed to the simulated snapshot thread and not yet built
    /// ([`SimSnapshots`]); lost in a crash.
    snapshot_jobs: Vec<store::SnapshotWork<SimKv>>,
}

/// One client's operation in flight.
struct InFlight {
    input: KvInput,
    command: Command,
    key: Vec<u8>,
    write: bool,
    sequence: u64,
    slot: usize,
    started: Micros,
    /// Where it waits for a completion, if anywhere.
    pending: Option<(usize, Ticket)>,
    target: usize,
    /// A TTL operation (outside the history; see `kv_ttl`).
    ttl: Option<kv_ttl::TtlOp>,
    /// The store a read was last handed to, and when.
    arrived: Option<(usize, Micros)>,
}

/// An operation a probe client must run (the final phase).
struct Scripted {
    input: KvInput,
    command: Command,
    key: Vec<u8>,
    /// Start only once the workload clients have nothing in flight, so that the final reads
    /// follow every workload write.
    after_workload: bool,
}

struct Client {
    id: u64,
    /// Generation of this client's live event; older ones are ignored.
    generation: u64,
    next_sequence: u64,
    op: Option<InFlight>,
    /// Probe clients run a script and never give up (the liveness bound judges them);
    /// workload clients draw random operations.
    script: Option<VecDeque<Scripted>>,
}

/// One seed's swarm choices.
#[derive(Clone, Debug)]
struct Faults {
    drop_rate: f64,
    dup_rate: f64,
    delay_min: Micros,
    delay_max: Micros,
    crashes: bool,
    partitions: bool,
    pauses: bool,
    pause_max: Micros,
    drift: bool,
    transfers: bool,
    snapshots: bool,
    /// Regions split at runtime (drawn from the seed's own stream).
    splits: bool,
    /// Replicas added, promoted, swapped (joint) and removed at runtime (own stream too).
    moves: bool,
    /// Adjacent regions merged at runtime (own stream, and own draws: see `Sim::merge_rng`).
    merges: bool,
    /// Placement at work: heartbeats, a spare store that joins, drains, moves (own stream).
    placement: bool,
    /// The largest gap between two fault events (the intensity).
    fault_gap_max: Micros,
    lease_reads: bool,
}

struct Sim {
    now: Micros,
    seq: u64,
    queue: BinaryHeap<Reverse<Sched>>,
    rng: SplitMix64,
    stores: Vec<SimStore>,
    /// The layout the stores were bootstrapped with (the data regions and the placement
    /// group with its first configuration).
    bootstrap: Vec<(Region, Option<bytes::Bytes>)>,
    /// The routing table, as a placement service would keep it: per region the newest
    /// descriptor any store reported (see [`Sim::refresh_routes`]); regions split at runtime.
    regions: Vec<Region>,
    /// Splits proposed so far (at most [`MAX_SPLITS`]).
    splits_proposed: u64,
    /// The merge schedule's own draws, so that seeds with merges keep every other draw of
    /// the fault schedule.
    merge_rng: SplitMix64,
    /// When [`Sim::check_single_owner`] last ran.
    owners_checked_at: Micros,
    /// The placement verbs' own draws (see `kv_placement`).
    placement_rng: SplitMix64,
    /// The last store is a spare: running, empty, outside placement's first configuration
    /// until it joins.
    spare: bool,
    /// Placement's scheduler, on seeds that run it (see `kv_placement`).
    scheduler: Option<kv_placement::SimScheduler>,
    /// Workload keys by region index.
    keys: Vec<Vec<Vec<u8>>>,
    cfg: StoreConfig,
    /// `links[from][to]`: whether messages from `from` reach `to`.
    links: Vec<Vec<bool>>,
    faults: Faults,
    /// How rounds are written (see `KvSimOptions::deferred_writes`).
    deferred_writes: Option<bool>,
    /// The chance that a command is queued behind a round (the server's loop writes a round
    /// inline only when nothing is), drawn per seed.
    queued_chance: f64,
    /// See [`snapshot_build_chance_by_seed`].
    snapshot_build_chance: f64,
    /// Driver counters of the stores' ended lives.
    driver_stats: DriverStats,
    /// (log purges, segments deleted, snapshots for log space) of the stores' ended lives.
    log_stats: (u64, u64, u64, u64),
    clients: Vec<Client>,
    /// How many of `clients` are workload clients (the rest are probes).
    workload_clients: usize,
    /// Ticket -> client, per store.
    waiting: Vec<BTreeMap<Ticket, usize>>,
    history: Vec<Option<Operation<KvInput, KvOutput>>>,
    clock: u64,
    print_trace: bool,
    /// Workload clients finish what they started but start nothing new (the end of a run).
    clients_stopped: bool,
    /// The fault phase is over: a store killed by an injected sync failure restarts.
    healed: bool,
    mutant_local_reads: bool,
    mutant_lost_probe_write: bool,
    mutant_divergent_replica: bool,
    /// TTL keys, the stores' wall clocks and the expiry oracle (see `kv_ttl`).
    ttl: kv_ttl::Ttl,
    out: KvSimOutcome,
}

fn dir() -> PathBuf {
    PathBuf::from("/store")
}

/// Most splits a seed proposes: regions multiply, and each costs a few KiB of snapshot.
const MAX_SPLITS: u64 = 12;

impl Sim {
    fn schedule(&mut self, after: Micros, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Sched {
            at: self.now + after,
            seq: self.seq,
            ev,
        }));
    }

    /// Schedules client `ci`'s next step, replacing any step scheduled before.
    fn wake(&mut self, ci: usize, after: Micros) {
        self.clients[ci].generation += 1;
        let g = self.clients[ci].generation;
        self.schedule(after, Ev::Client(ci, g));
    }

    fn trace(&self, s: impl FnOnce() -> String) {
        if self.print_trace {
            eprintln!("{:>10.3}ms {}", self.now as f64 / MS as f64, s());
        }
    }

    fn up(&self, i: usize) -> bool {
        self.stores[i].store.is_some()
    }

    fn paused(&self, i: usize) -> bool {
        self.stores[i].paused_until.is_some()
    }

    fn open(&mut self, i: usize) {
        let mut cfg = self.cfg.clone();
        cfg.store_id = StoreId(i as u64 + 1);
        let fs: Arc<dyn raft_log::FileSystem> = Arc::new(self.stores[i].fs.clone());
        let s = loop {
            match Store::open_bootstrap(&dir(), fs.clone(), cfg.clone(), &self.bootstrap) {
                Ok(s) => break s,
                // The injected sync failure hit recovery itself: crash again and retry.
                Err(_) if self.stores[i].failure_armed => {
                    self.stores[i].failure_armed = false;
                    self.stores[i].fs.crash_random();
                    self.trace(|| format!("s{} died again during recovery", i + 1));
                }
                Err(e) => match self.refused_torn_tail(i, &e) {
                    // Recovery took a torn tail (sectors out of order, garbage) for damage
                    // and refused, naming the file and an offset inside the unsynced bytes
                    // the crash tore. What an operator would do: salvage what is readable
                    // (the damage lies after everything synced, so nothing acknowledged
                    // is lost; the history check holds it to that).
                    Some(why)
                        if cfg.engine.recovery_mode != RecoveryMode::TolerateAnyCorruption =>
                    {
                        self.out.recoveries_refused += 1;
                        self.trace(|| format!("s{} recovery refused a torn tail: {why}", i + 1));
                        cfg.engine.recovery_mode = RecoveryMode::TolerateAnyCorruption;
                    }
                    _ => panic!("store {} failed to reopen after a crash: {e}", i + 1),
                },
            }
        };
        let mut s = s;
        s.set_clock_ms(self.store_clock_ms(i));
        self.stores[i].store = Some(s);
        let period = self.stores[i].tick_period;
        let first = self.now + 1 + self.rng.below(period);
        self.stores[i].driver = Some(Driver::new(period, first));
        self.out.restarts += 1;
        self.start_ticking(i);
        self.trace(|| format!("restart s{}", i + 1));
    }

    /// If `e` is the log engine refusing a segment at an offset that the last crash tore
    /// out of order or with garbage, that offset and mode.
    fn refused_torn_tail(&self, i: usize, e: &StoreError) -> Option<String> {
        let text = e.to_string();
        let rest = text.split("corrupt file ").nth(1)?;
        let (file, rest) = rest.split_once(" at byte offset ")?;
        let offset: u64 = rest.split(':').next()?.parse().ok()?;
        self.stores[i]
            .fs
            .last_tears()
            .into_iter()
            .find(|(path, start, mode)| {
                path.display().to_string() == file && offset >= *start && *mode != TornWrite::Prefix
            })
            .map(|(_, start, mode)| {
                format!("{file} at {offset} (unsynced from {start}, torn {mode:?})")
            })
    }

    /// A new tick chain for store `i`, firing when its driver's next tick is due.
    fn start_ticking(&mut self, i: usize) {
        self.stores[i].tick_generation += 1;
        let g = self.stores[i].tick_generation;
        let at = self.stores[i]
            .driver
            .as_ref()
            .map_or(self.now, |d| d.next_tick());
        self.schedule(at.saturating_sub(self.now).max(1), Ev::Tick(i, g));
    }

    /// Kills store `i`: what was not synced is lost, or (`torn`) a random prefix of it
    /// survives.
    fn crash(&mut self, i: usize, torn: bool) {
        let Some(ended) = self.stores[i].store.take() else {
            return;
        };
        self.log_stats.0 += ended.stats.log_purges;
        self.log_stats.1 += ended.stats.log_segments_deleted;
        self.log_stats.2 += ended.stats.snapshots_for_log_space;
        self.log_stats.3 += ended.stats.snapshots_overtaken;
        self.out.snapshot_chunks_received += ended.stats.snapshot_chunks_received;
        self.out.snapshot_transfers_cut += ended.snapshots_receiving() as u64;
        self.out.splits_applied += ended.stats.splits_applied;
        self.out.replica_changes_applied += ended.stats.replica_changes_applied;
        self.out.peers_destroyed += ended.stats.peers_destroyed;
        self.out.merges_applied += ended.stats.merges_applied;
        self.out.merge_rollbacks += ended.stats.merge_rollbacks_proposed;
        self.out.peers_created_by_message += ended.stats.peers_created_by_message;
        self.out.peers_created_by_vote += ended.stats.peers_created_by_vote;
        self.out.housekeeping_proposed += ended.stats.housekeeping_proposed;
        drop(ended);
        if let Some(d) = self.stores[i].driver.take() {
            self.driver_stats.add(&d.stats);
        }
        if torn {
            self.stores[i].fs.crash_random();
            self.out.torn_crashes += 1;
        } else {
            self.stores[i].fs.crash();
        }
        self.waiting[i].clear();
        self.stores[i].inbox.clear();
        self.out.snapshot_jobs_lost += self.stores[i]
            .snapshot_jobs
            .iter()
            .filter(|w| matches!(w, store::SnapshotWork::Build(_)))
            .count() as u64;
        self.stores[i].snapshot_jobs.clear();
        self.stores[i].incarnation += 1;
        self.stores[i].persist_scheduled = false;
        self.stores[i].paused_until = None;
        self.stores[i].down_since = self.now;
        self.out.crashes += 1;
        self.trace(|| format!("crash s{} torn={torn}", i + 1));
    }

    /// Whether to crash store `to` instead of delivering `m`, a chunk after the first of a
    /// snapshot it is receiving (1 in 16 such chunks, when crashes and snapshots are on and a
    /// minority would be down): transfers take a few simulated milliseconds, and crashes
    /// drawn at random times almost never cut one.
    fn cuts_transfer(&mut self, to: usize, m: &Message) -> bool {
        let mid_transfer = matches!(m.body, MessageBody::Snapshot { offset, .. } if offset > 0);
        let receiving = self.stores[to]
            .store
            .as_ref()
            .is_some_and(|s| s.snapshots_receiving() > 0);
        // Not after healing, when no fault is injected any more: with many regions (splits) a
        // store that was down receives hundreds of chunks, and a 1-in-16 crash per chunk
        // never let it finish (seed 127).
        let wanted = self.faults.crashes
            && self.faults.snapshots
            && !self.healed
            && mid_transfer
            && receiving;
        if !wanted {
            return false;
        }
        let n = self.stores.len();
        let down = (0..n).filter(|&i| !self.up(i)).count();
        down < (n - 1) / 2 && self.rng.below(16) == 0
    }

    /// Processes store `i`'s Readies, sends its messages through the network and hands
    /// completions to the clients.
    fn drive(&mut self, i: usize) {
        self.drive_after(i, 0);
    }

    /// [`Sim::drive`], after first writing and finishing the `persist` oldest rounds in
    /// flight (deferred writes).
    fn drive_after(&mut self, i: usize, persist: usize) {
        let mode = self.deferred_writes;
        let chance = self.queued_chance;
        let mut writer = SimWriter {
            durable: persist,
            inline: mode == Some(false),
        };
        let mut outbox = Vec::new();
        let mut completions = Vec::new();
        let snapshot_seed = self.rng.next_u64();
        let result = {
            let rng = &mut self.rng;
            let st = &mut self.stores[i];
            let (Some(s), Some(driver)) = (st.store.as_mut(), st.driver.as_mut()) else {
                return;
            };
            let mut snapshots = SimSnapshots {
                waiting: &mut st.snapshot_jobs,
                rng: SplitMix64::new(snapshot_seed),
                chance: self.snapshot_build_chance,
                built_later: 0,
            };
            let mut queued = || mode == Some(true) || unit(rng) < chance;
            let mut deliver = |s: &mut Store<SimKv>| {
                outbox.extend(s.take_outbox());
                completions.extend(s.take_completions());
            };
            let mut result = Ok(true);
            // Like the server's loop, which comes back at once while rounds are left ready.
            for _ in 0..MAX_DRIVES_PER_WAKE_UP {
                result =
                    driver.run_rounds(s, &mut writer, &mut snapshots, &mut queued, &mut deliver);
                if !matches!(result, Ok(true)) {
                    break;
                }
            }
            self.out.snapshots_built_later += snapshots.built_later;
            result
        };
        if let Err(e) = result {
            self.storage_failed(i, e);
            return;
        }
        let s = self.stores[i].store.as_mut().expect("up");
        if s.writes_in_flight() > 0 && !self.stores[i].persist_scheduled {
            // A disk's write latency: mostly short, sometimes long enough for the store to
            // run many rounds (and answer, and apply) ahead of it.
            let d = if self.rng.below(8) == 0 {
                MS + self.rng.below(20 * MS)
            } else {
                50 + self.rng.below(MS)
            };
            self.stores[i].persist_scheduled = true;
            let n = self.stores[i].incarnation;
            self.schedule(d, Ev::Persist(i, n));
        }
        let from = StoreId(i as u64 + 1);
        for (to, m) in outbox {
            let t = to.0 as usize - 1;
            self.out.messages += 1;
            if !self.links[i][t] {
                continue;
            }
            if unit(&mut self.rng) < self.faults.drop_rate {
                self.out.messages_dropped += 1;
                continue;
            }
            if unit(&mut self.rng) < self.faults.dup_rate {
                self.out.messages_duplicated += 1;
                let d = self.delay();
                self.schedule(d, Ev::Deliver(Box::new((from, m.clone())), t));
            }
            let d = self.delay();
            self.schedule(d, Ev::Deliver(Box::new((from, m)), t));
        }
        for c in completions {
            if let Some(client) = self.waiting[i].remove(&c.ticket) {
                self.complete(client, i, c.ticket, c.result);
            }
        }
    }

    /// A storage error is fatal for a store (the server stops it too). Only an injected
    /// failure may cause one.
    fn storage_failed(&mut self, i: usize, e: StoreError) {
        assert!(
            self.stores[i].failure_armed,
            "store {} storage error without an injected failure: {e}",
            i + 1
        );
        self.stores[i].failure_armed = false;
        self.out.fsync_deaths += 1;
        self.crash(i, true);
        if self.healed {
            self.stores[i].down_since = self.now.saturating_sub(MIN_DOWN);
        }
    }

    /// A message's delay: uniform, so messages overtake each other (reordering).
    fn delay(&mut self) -> Micros {
        let span = self.faults.delay_max - self.faults.delay_min + 1;
        self.faults.delay_min + self.rng.below(span)
    }

    /// The region holding `key` by the routing table: the newest descriptor that contains
    /// it (while a split spreads, a store that has not applied it reports the older, wider
    /// range).
    fn route(&self, key: &[u8]) -> &Region {
        self.regions
            .iter()
            .filter(|r| r.contains(key))
            .max_by_key(|r| r.epoch.version)
            .unwrap_or_else(|| panic!("no region holds {key:?}: {:?}", self.regions))
    }

    /// Rebuilds the routing table from the live stores' region maps: per region, the newest
    /// descriptor known (the table's own included, for regions whose replicas are all down).
    fn refresh_routes(&mut self) {
        let mut newest: BTreeMap<store::RegionId, Region> = BTreeMap::new();
        let live = self
            .stores
            .iter()
            .filter_map(|s| s.store.as_ref())
            .flat_map(|s| s.live_regions().load().iter().cloned().collect::<Vec<_>>());
        for r in self.regions.drain(..).chain(live) {
            match newest.get(&r.id) {
                Some(known) if known.epoch >= r.epoch => {}
                _ => {
                    newest.insert(r.id, r);
                }
            }
        }
        // A region whose whole range is covered by newer regions is dead (the owner of a key
        // only ever gets newer; merged away, see `store::merge`): it leaves the table. Only
        // part of it covered is a split still spreading (the old region's entry may still be
        // the wider range, and it routes the keys of the half nobody reported yet). Replicas
        // do not count as evidence: one left behind on a store removed while it was away
        // never learns it (stale replicas wait for placement's clean-up).
        let all: Vec<Region> = newest.into_values().collect();
        let covered = |s: &Region| {
            let mut newer: Vec<&Region> = all
                .iter()
                .filter(|t| t.epoch.version > s.epoch.version)
                .filter(|t| {
                    t.end_key.as_ref().is_none_or(|e| *e > s.start_key)
                        && s.end_key.as_ref().is_none_or(|e| *e > t.start_key)
                })
                .collect();
            newer.sort_by(|a, b| a.start_key.cmp(&b.start_key));
            // Sweep from s's start: each newer region must start at or before what is
            // covered so far.
            let mut reach: Option<Vec<u8>> = Some(s.start_key.clone());
            for t in newer {
                let Some(r) = reach.as_ref() else { break };
                if t.start_key > *r {
                    break;
                }
                reach = match (&t.end_key, &reach) {
                    (None, _) => None,
                    (Some(e), Some(r)) if e > r => Some(e.clone()),
                    _ => reach,
                };
            }
            match (&reach, &s.end_key) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(r), Some(e)) => r >= e,
            }
        };
        self.regions = all.iter().filter(|s| !covered(s)).cloned().collect();
    }

    /// Whether the routing table's regions partition the key space exactly (every key in one
    /// region): true once every store has applied every split.
    fn routes_partition(&self) -> Result<(), String> {
        let mut rs: Vec<&Region> = self.regions.iter().collect();
        rs.sort_by(|a, b| a.start_key.cmp(&b.start_key));
        let mut expect: Option<Vec<u8>> = Some(Vec::new());
        for r in &rs {
            if expect.as_ref() != Some(&r.start_key) {
                return Err(format!(
                    "regions do not partition the key space at {expect:?}: {rs:?}"
                ));
            }
            expect = r.end_key.clone();
        }
        match expect {
            None => Ok(()),
            Some(e) => Err(format!("no region holds keys from {e:?}: {rs:?}")),
        }
    }

    /// A random store hosting a replica of the region holding `key`.
    fn random_peer(&mut self, key: &[u8]) -> usize {
        let r = self.route(key);
        let n = r.peers.len() as u64;
        let i = self.rng.below(n) as usize;
        self.route(key).peers[i].store.0 as usize - 1
    }

    fn complete(
        &mut self,
        ci: usize,
        store: usize,
        ticket: Ticket,
        result: Result<Reply<SimKv>, StoreError>,
    ) {
        let Some(op) = self.clients[ci].op.as_ref() else {
            return;
        };
        if op.pending != Some((store, ticket)) {
            return; // an answer to an attempt we already gave up on
        }
        let output = match result {
            Ok(Reply::Applied(outcome)) => match outcome.result {
                Ok(r) => Some(r),
                // Refused by the state machine: our workload never sends oversized input and
                // a client's current sequence is never stale, so this is a bug.
                Err(e) => panic!("state machine refused {:?}: {e}", op.command),
            },
            Ok(Reply::Read(Ok(r))) => Some(r),
            Ok(Reply::Read(Err(e))) => panic!("read refused: {e}"),
            Ok(Reply::Empty) => None,
            Err(e) => {
                self.reroute(ci, &e);
                None
            }
        };
        let op = self.clients[ci].op.as_mut().expect("checked above");
        op.pending = None;
        match output {
            Some(r) => {
                let out = self.output(ci, r);
                self.finish(ci, out);
            }
            None => {
                // Retry soon (same sequence for writes).
                let d = 5 * MS + self.rng.below(30 * MS);
                self.wake(ci, d);
            }
        }
    }

    /// The history's output for the answer `r` to client `ci`'s operation. A TTL operation's
    /// answer goes to the expiry oracle instead (its history slot is empty).
    fn output(&mut self, ci: usize, r: Response) -> KvOutput {
        let op = self.clients[ci]
            .op
            .as_ref()
            .expect("an operation in flight");
        match op.ttl {
            Some(t) => {
                self.ttl.judge(t, &op.key, &r, op.started, op.arrived);
                KvOutput::Put
            }
            None => to_output(&op.input, r),
        }
    }

    /// Records the output of client `ci`'s operation and schedules its next one.
    fn finish(&mut self, ci: usize, out: KvOutput) {
        let op = self.clients[ci].op.take().expect("an operation in flight");
        self.clock += 1;
        if let Some(h) = self.history[op.slot].as_mut() {
            h.output = Some(out);
            h.return_time = Some(self.clock);
        }
        let d = MS + self.rng.below(20 * MS);
        self.wake(ci, d);
    }

    /// Picks the next store for client `ci` after a refusal: the leader it was told about,
    /// or any replica of the region.
    fn reroute(&mut self, ci: usize, e: &StoreError) {
        let key = self.clients[ci].op.as_ref().expect("in flight").key.clone();
        if matches!(
            e,
            StoreError::EpochNotMatch { .. }
                | StoreError::KeyNotInRegion { .. }
                | StoreError::RegionNotFound(_)
        ) {
            self.refresh_routes();
        }
        let target = match e {
            StoreError::NotLeader {
                leader: Some(l), ..
            } => l.store.0 as usize - 1,
            _ => self.random_peer(&key),
        };
        self.clients[ci].op.as_mut().expect("in flight").target = target;
    }

    fn client_step(&mut self, ci: usize) {
        if self.clients[ci].op.is_none() && !self.start_op(ci) {
            return;
        }
        let op = self.clients[ci].op.as_ref().expect("started");
        if self.mutant_lost_probe_write && ci == self.workload_clients && op.write {
            // The mutant: acknowledged, never sent.
            self.finish(ci, KvOutput::Put);
            return;
        }
        if self.clients[ci].script.is_none() && !op.write && self.now - op.started > GIVE_UP {
            // Give up on a read: it leaves the history. Writes are retried (same sequence)
            // until answered: every write of the history then has a known outcome, which
            // keeps the per-key check exact and fast (each write of unknown outcome could
            // take effect anywhere later, multiplying the orders the checker must try).
            self.history[op.slot] = None;
            self.clients[ci].op = None;
            self.wake(ci, MS);
            return;
        }
        // If still waiting, this step is the retry timer: re-send (same sequence); the old
        // ticket's answer is then ignored. After healing, a read that got no answer goes to
        // another replica, as a real client's timed-out request does: the one asked may be a
        // learner removed without learning it, whose ReadIndex never completes (seed 230,
        // 300 s, a probe read stuck on such a replica). Only after healing, so the fault
        // phase of every seed keeps its schedule.
        if self.healed && op.pending.is_some() && !op.write {
            let key = op.key.clone();
            let t = self.random_peer(&key);
            self.clients[ci].op.as_mut().expect("started").target = t;
        }
        let op = self.clients[ci].op.as_ref().expect("started");
        let attempt = Attempt {
            key: op.key.clone(),
            write: op.write.then(|| Request {
                client_id: ClientId(self.clients[ci].id),
                sequence: Sequence(op.sequence),
                command: op.command.clone(),
                proposed_at_ms: 0,
            }),
            command: op.command.clone(),
        };
        let (target, slot) = (op.target, op.slot);
        let op = self.clients[ci].op.as_mut().expect("started");
        op.pending = None;
        if !self.up(target) {
            // Connection refused: try another replica soon.
            let t = self.random_peer(&attempt.key);
            self.clients[ci].op.as_mut().expect("started").target = t;
            self.wake(ci, 10 * MS);
            return;
        }
        if self.paused(target) {
            // The request sits in the stopped process's socket until it resumes; the client
            // retries elsewhere after its timeout.
            let key = attempt.key.clone();
            self.defer(
                target,
                Deferred::Request {
                    client: ci,
                    slot,
                    attempt,
                },
            );
            let t = self.random_peer(&key);
            self.clients[ci].op.as_mut().expect("started").target = t;
            self.wake(ci, RETRY);
            return;
        }
        self.submit(target, ci, slot, attempt);
    }

    /// Hands a client's request to store `target` (up and running). If the client still
    /// waits for this operation the store's answer completes it; otherwise (a request that
    /// waited in a paused store's inbox) a write is still proposed, as a late duplicate the
    /// session table must absorb, and a read is dropped.
    fn submit(&mut self, target: usize, ci: usize, slot: usize, attempt: Attempt) {
        let current = self.clients[ci]
            .op
            .as_ref()
            .is_some_and(|op| op.slot == slot && op.pending.is_none());
        if !current && attempt.write.is_none() {
            return;
        }
        let mutant = self.mutant_local_reads;
        if current && attempt.write.is_none() {
            self.clients[ci].op.as_mut().expect("current").arrived = Some((target, self.now));
        }
        let clock_ms = self.store_clock_ms(target);
        let s = self.stores[target]
            .store
            .as_mut()
            .expect("submit to a live store");
        // A request wakes the store's loop, which reads its clock first (the server's does).
        s.set_clock_ms(clock_ms);
        let r = self
            .regions
            .iter()
            .filter(|r| r.contains(&attempt.key))
            .max_by_key(|r| r.epoch.version)
            .expect("the routing table covers the key space");
        let (region, epoch, key) = (r.id, r.epoch, &attempt.key);
        let r = match &attempt.write {
            Some(request) => {
                // Stamped by the store that proposes it, with its own clock, as the server's
                // service does.
                let mut request = request.clone();
                request.proposed_at_ms = s.clock_ms();
                s.propose(region, epoch, key, request.encode())
            }
            None if mutant => {
                let r = s.stale_read(region, epoch, key, &attempt.command);
                self.finish_local_read(ci, r);
                return;
            }
            None => s.read(region, epoch, key, attempt.command),
        };
        match r {
            Ok(t) if current => {
                self.waiting[target].insert(t, ci);
                let op = self.clients[ci].op.as_mut().expect("current");
                op.pending = Some((target, t));
                op.target = target;
                self.wake(ci, RETRY);
                self.drive(target);
            }
            Ok(_) => self.drive(target),
            Err(e) if current => {
                self.reroute(ci, &e);
                let d = 5 * MS + self.rng.below(30 * MS);
                self.wake(ci, d);
            }
            Err(_) => {}
        }
    }

    /// The mutant's read path: answered at once from the local state machine.
    fn finish_local_read(
        &mut self,
        ci: usize,
        r: Result<Result<Response, kv::CommandError>, StoreError>,
    ) {
        match r {
            Ok(Ok(resp)) => {
                let out = self.output(ci, resp);
                self.finish(ci, out);
            }
            _ => self.wake(ci, 10 * MS),
        }
    }

    fn defer(&mut self, i: usize, d: Deferred) {
        if self.stores[i].inbox.len() < MAX_INBOX {
            self.stores[i].inbox.push_back(d);
        }
    }

    /// Starts client `ci`'s next operation; false if it has none to start now.
    fn start_op(&mut self, ci: usize) -> bool {
        let busy = self.clients[..self.workload_clients]
            .iter()
            .any(|c| c.op.is_some());
        let (input, command, key, ttl) = if let Some(script) = self.clients[ci].script.as_mut() {
            let Some(next) = script.front() else {
                return false;
            };
            if next.after_workload && busy {
                self.wake(ci, 10 * MS);
                return false;
            }
            let s = script.pop_front().expect("checked");
            (s.input, s.command, s.key, None)
        } else {
            if self.clients_stopped || self.history.len() >= MAX_HISTORY_OPS {
                return false;
            }
            match self.ttl.maybe_op(self.now) {
                // Outside the history: its input is a placeholder.
                Some((t, command, key)) => {
                    (KvInput::Get { key: key.clone() }, command, key, Some(t))
                }
                None => {
                    let (input, command, key) = self.random_op(ci);
                    (input, command, key, None)
                }
            }
        };
        let write = !command.is_read_only();
        let sequence = if write {
            self.clients[ci].next_sequence += 1;
            self.clients[ci].next_sequence
        } else {
            0
        };
        self.clock += 1;
        self.history.push(
            ttl.is_none()
                .then(|| Operation::unknown(self.clients[ci].id, input.clone(), self.clock)),
        );
        let target = self.random_peer(&key);
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
            ttl,
            arrived: None,
        });
        true
    }

    fn random_op(&mut self, ci: usize) -> (KvInput, Command, Vec<u8>) {
        let r = self.rng.below(self.keys.len() as u64) as usize;
        let key = self.keys[r][self.rng.below(self.keys[r].len() as u64) as usize].clone();
        let value = format!(
            "{}.{};",
            self.clients[ci].id, self.clients[ci].next_sequence
        )
        .into_bytes();
        let kb = Bytes::from(key.clone());
        let (input, command) = match self.rng.below(4) {
            0 => (KvInput::Get { key: key.clone() }, Command::Get { key: kb }),
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
                )
            }
        };
        (input, command, key)
    }

    fn step(&mut self) -> bool {
        let Some(Reverse(ev)) = self.queue.pop() else {
            return false;
        };
        self.now = ev.at;
        match ev.ev {
            Ev::Tick(i, g) => {
                if self.now >= self.owners_checked_at + OWNER_CHECK_EVERY {
                    self.owners_checked_at = self.now;
                    self.check_single_owner();
                }
                // A paused store's timer does not fire; like the server's store loop, it
                // replays the missed ticks when it resumes (see `resume`).
                if self.stores[i].tick_generation != g || !self.up(i) || self.paused(i) {
                    return true;
                }
                let now = self.now;
                let clock_ms = self.store_clock_ms(i);
                let st = &mut self.stores[i];
                let (Some(s), Some(d)) = (st.store.as_mut(), st.driver.as_mut()) else {
                    return true;
                };
                s.set_clock_ms(clock_ms);
                if let Err(e) = d.catch_up(s, now) {
                    self.storage_failed(i, e);
                    return true;
                }
                let at = d.next_tick();
                self.schedule(at.saturating_sub(now).max(1), Ev::Tick(i, g));
                self.drive(i);
            }
            Ev::Deliver(m, to) => {
                if self.paused(to) {
                    let (from, m) = *m;
                    self.defer(to, Deferred::Message(from, m));
                } else if self.cuts_transfer(to, &m.1) {
                    // A crash in the middle of a streamed snapshot install: the store has
                    // written part of the snapshot's file (see `Sim::cuts_transfer`).
                    let torn = self.rng.below(2) == 0;
                    self.crash(to, torn);
                } else if let Some(s) = self.stores[to].store.as_mut() {
                    let (from, m) = *m;
                    if let Err(e @ StoreError::Storage(_)) = s.step(from, m) {
                        // A replica created or destroyed by the message writes synced.
                        self.storage_failed(to, e);
                    } else {
                        self.drive(to);
                    }
                }
            }
            Ev::Client(ci, g) => {
                if self.clients[ci].generation == g {
                    self.client_step(ci);
                }
            }
            Ev::Resume(i, n) => {
                if self.stores[i].pause_number == n && self.paused(i) {
                    self.resume(i);
                }
            }
            Ev::PlacementHeartbeat => {
                self.placement_heartbeats();
                self.schedule(kv_placement::HEARTBEAT_EVERY, Ev::PlacementHeartbeat);
            }
            Ev::Persist(i, n) => {
                if self.stores[i].incarnation != n || !self.up(i) {
                    return true;
                }
                if let Some(until) = self.stores[i].paused_until {
                    // The disk finishes, but a stopped process learns it only when resumed.
                    let wait = until.saturating_sub(self.now) + 1;
                    self.schedule(wait, Ev::Persist(i, n));
                    return true;
                }
                self.stores[i].persist_scheduled = false;
                let in_flight = self.stores[i]
                    .store
                    .as_ref()
                    .map_or(0, |s| s.writes_in_flight());
                // One round, several, or all of them (the engine groups queued writes).
                let n = 1 + self.rng.below(in_flight.max(1) as u64) as usize;
                self.drive_after(i, n);
            }
        }
        true
    }

    fn pause(&mut self, i: usize, length: Micros) {
        if !self.up(i) || self.paused(i) {
            return;
        }
        self.stores[i].paused_until = Some(self.now + length);
        self.stores[i].pause_number += 1;
        let n = self.stores[i].pause_number;
        self.schedule(length, Ev::Resume(i, n));
        self.out.pauses += 1;
        self.trace(|| format!("pause s{} for {}ms", i + 1, length / MS));
    }

    /// The store continues: it first replays the ticks it missed (capped, as the server's
    /// store loop does), then handles its inbox in arrival order, then ticks again. Time
    /// first: a follower that acknowledged a queued heartbeat and only then caught up on its
    /// ticks would believe its leader silent and vote for another right after renewing the
    /// old leader's lease (seed 20108); a leader's lease runs out before any stale
    /// acknowledgement is counted.
    fn resume(&mut self, i: usize) {
        self.stores[i].paused_until = None;
        let now = self.now;
        let clock_ms = self.store_clock_ms(i);
        let st = &mut self.stores[i];
        if let (Some(s), Some(d)) = (st.store.as_mut(), st.driver.as_mut()) {
            s.set_clock_ms(clock_ms);
            if let Err(e) = d.catch_up(s, now) {
                self.storage_failed(i, e);
                return;
            }
        }
        let inbox = std::mem::take(&mut self.stores[i].inbox);
        self.trace(|| format!("resume s{} with {} queued", i + 1, inbox.len()));
        for d in inbox {
            if !self.up(i) {
                break; // an injected failure killed it while catching up
            }
            match d {
                Deferred::Message(from, m) => {
                    let s = self.stores[i].store.as_mut().expect("up");
                    if let Err(e @ StoreError::Storage(_)) = s.step(from, m) {
                        self.storage_failed(i, e);
                    }
                }
                Deferred::Request {
                    client,
                    slot,
                    attempt,
                } => self.submit(i, client, slot, attempt),
            }
        }
        self.drive(i);
        if self.up(i) {
            self.start_ticking(i);
        }
    }

    fn run_until(&mut self, t: Micros) {
        while self.queue.peek().is_some_and(|Reverse(e)| e.at <= t) {
            self.step();
        }
        self.now = self.now.max(t);
    }

    /// One random fault (or repair) of the kinds this seed enabled.
    fn fault(&mut self) {
        self.out.fault_events += 1;
        let n = self.stores.len();
        let max_down = (n - 1) / 2;
        match self.rng.below(9) {
            0 | 1 if self.faults.crashes => {
                let down = (0..n).filter(|&i| !self.up(i)).count();
                let i = self.rng.below(n as u64) as usize;
                if down < max_down && self.up(i) {
                    match self.rng.below(3) {
                        0 => self.crash(i, false),
                        1 => self.crash(i, true),
                        _ if self.stores[i].failure_armed => {}
                        _ => {
                            // Die in the middle of the next fsync: the write reached the
                            // file but not the disk, and a random prefix of it survives.
                            self.stores[i].fs.fail_next(FaultOp::Sync);
                            self.stores[i].failure_armed = true;
                            self.trace(|| format!("s{} will die in its next fsync", i + 1));
                        }
                    }
                }
            }
            2 if self.faults.crashes => self.restart_due(),
            3 | 4 if self.faults.partitions => {
                let shape = Shape::pick(&mut self.rng);
                self.links = shape_links(n, shape, &mut self.rng);
                self.out.partitions += 1;
                self.trace(|| format!("partition {shape:?}: {:?}", self.links));
            }
            5 => self.heal_links(),
            6 if self.faults.pauses => {
                let i = self.rng.below(n as u64) as usize;
                let length = 100 * MS + self.rng.below(self.faults.pause_max - 100 * MS + 1);
                self.pause(i, length);
            }
            7 if self.faults.transfers => self.transfer_random_leader(),
            8 if self.faults.snapshots => {
                let region = self.rng.below(self.regions.len() as u64) as usize;
                let key = self.regions[region].start_key.clone();
                let i = self.random_peer(&key);
                let r = self.route(&key).id;
                let paused = self.paused(i);
                if let Some(s) = self.stores[i].store.as_mut().filter(|_| !paused) {
                    match s.snapshot_now(r) {
                        Ok(true) => {
                            self.out.snapshots_forced += 1;
                            self.trace(|| format!("snapshot s{} region {r}", i + 1));
                        }
                        Ok(false) => {}
                        // The routing table may name a store whose replica is not created
                        // or not initialized yet.
                        Err(StoreError::RegionNotFound(_)) => {}
                        // The injected sync failure hit the snapshot file: the store dies.
                        Err(e) => {
                            assert!(
                                self.stores[i].failure_armed,
                                "store {} snapshot failed without an injected failure: {e}",
                                i + 1
                            );
                            self.stores[i].failure_armed = false;
                            self.out.fsync_deaths += 1;
                            self.crash(i, true);
                        }
                    }
                }
            }
            _ => {}
        }
        // Drawn apart from the kinds above, so seeds without splits keep their schedules.
        if self.faults.splits && self.rng.below(3) == 0 {
            self.split_random_region();
        }
        if self.faults.moves && self.rng.below(2) == 0 {
            self.move_random_replica();
        }
        if self.faults.merges && self.merge_rng.below(3) == 0 {
            self.merge_random_regions();
        }
        if self.faults.placement && self.placement_rng.below(3) == 0 {
            self.placement_verb();
        }
    }

    fn heal_links(&mut self) {
        for row in self.links.iter_mut() {
            row.iter_mut().for_each(|l| *l = true);
        }
    }

    /// Restarts every store that has been down for at least `MIN_DOWN`.
    fn restart_due(&mut self) {
        for i in 0..self.stores.len() {
            if !self.up(i) && self.now >= self.stores[i].down_since + MIN_DOWN {
                self.open(i);
            }
        }
    }

    /// The store whose replica of `r` believes it leads with the highest term, among the
    /// live and running ones.
    fn leader_of(&self, r: &Region) -> Option<usize> {
        let mut leader: Option<(u64, usize)> = None;
        for p in &r.peers {
            let i = p.store.0 as usize - 1;
            let Some(s) = self.stores[i].store.as_ref() else {
                continue;
            };
            if self.stores[i].paused_until.is_some() {
                continue;
            }
            if let Some(st) = s.status().into_iter().find(|st| st.region.id == r.id) {
                if st.role == Role::Leader && leader.is_none_or(|(t, _)| st.term.0 > t) {
                    leader = Some((st.term.0, i));
                }
            }
        }
        leader.map(|(_, i)| i)
    }

    /// Asks the leader of the region holding a random workload key to split it at that key
    /// (unless the key already starts a region), routed by the table (which may be stale:
    /// the store then refuses it, as a real one would).
    fn split_random_region(&mut self) {
        if self.splits_proposed >= MAX_SPLITS {
            return;
        }
        self.refresh_routes();
        let group = self.rng.below(self.keys.len() as u64) as usize;
        let key = self.keys[group][self.rng.below(self.keys[group].len() as u64) as usize].clone();
        let r = self.route(&key).clone();
        if r.start_key == key {
            return;
        }
        let Some(i) = self.leader_of(&r) else {
            return;
        };
        let s = self.stores[i].store.as_mut().expect("up");
        let proposed = s.propose_split(r.id, r.epoch, &key);
        if let Err(e @ StoreError::Storage(_)) = proposed {
            // The id allocator writes synced.
            self.storage_failed(i, e);
            return;
        }
        if proposed.is_ok() {
            self.splits_proposed += 1;
            self.out.splits_proposed += 1;
            self.trace(|| format!("split region {} at {key:?} on s{}", r.id, i + 1));
            self.drive(i);
        }
    }

    /// One step of a random walk of a random region's replicas, proposed on its leader:
    /// promote a learner (or swap it for a voter in one joint change), add a learner on a
    /// store without a replica, or remove a replica (down to 2 voters at the least, from 4
    /// or, with 3 stores, from 3). Over a run every replica of a region may move.
    fn move_random_replica(&mut self) {
        use store::ReplicaChange::{AddLearner, Promote, Remove, Swap};
        self.refresh_routes();
        let r = self.regions[self.rng.below(self.regions.len() as u64) as usize].clone();
        let Some(i) = self.leader_of(&r) else {
            return;
        };
        let voters: Vec<StoreId> = r
            .peers
            .iter()
            .filter(|p| !p.learner)
            .map(|p| p.store)
            .collect();
        let learners: Vec<StoreId> = r
            .peers
            .iter()
            .filter(|p| p.learner)
            .map(|p| p.store)
            .collect();
        let free: Vec<StoreId> = (1..=self.stores.len() as u64)
            .map(StoreId)
            .filter(|s| r.peer_on(*s).is_none())
            .collect();
        let pick = |v: &[StoreId], rng: &mut SplitMix64| v[rng.below(v.len() as u64) as usize];
        // A pick of the leader's own replica is refused by the store (transfer first) and
        // then proposes nothing: drawing from all voters keeps every seed's other draws.
        let change = if let Some(&l) = learners.first() {
            if voters.len() >= 3 && self.rng.below(2) == 0 {
                Swap {
                    promote: l,
                    remove: pick(&voters, &mut self.rng),
                }
            } else {
                Promote(l)
            }
        } else if voters.len() > 3
            || (voters.len() == 3 && free.is_empty() && self.rng.below(3) == 0)
        {
            Remove(pick(&voters, &mut self.rng))
        } else if !free.is_empty() && voters.len() >= 2 {
            AddLearner(pick(&free, &mut self.rng))
        } else {
            return;
        };
        let s = self.stores[i].store.as_mut().expect("up");
        if s.propose_replica_change(r.id, r.epoch, change).is_ok() {
            self.out.moves_proposed += 1;
            if matches!(change, Swap { .. }) {
                self.out.joint_swaps_proposed += 1;
            }
            self.trace(|| format!("region {} {change:?} on s{}", r.id, i + 1));
            self.drive(i);
        }
    }

    /// At this moment, every key has at most one region that could serve it: among the
    /// replicas of running (not paused) stores that lead under a valid lease with an entry of
    /// their term committed, have applied all they know committed, and are not frozen for a
    /// merge, no two of different regions overlap (a split's new region has
    /// no replica until its old leader applied the split; a merge's source is frozen before
    /// its target can absorb it). Panics, naming both, if two do.
    fn check_single_owner(&mut self) {
        let mut owners: Vec<(Region, usize, String)> = Vec::new();
        for (i, st) in self.stores.iter().enumerate() {
            // A paused store serves nothing, and its clock stands still: it catches up on
            // the missed ticks (and its lease runs out) before it handles anything else.
            let Some(s) = st.store.as_ref().filter(|_| !self.paused(i)) else {
                continue;
            };
            for rs in s
                .status()
                .into_iter()
                .filter(|rs| !rs.region.is_placement())
            {
                if rs.role == Role::Leader && rs.lease && !rs.frozen && rs.applied >= rs.commit {
                    let what = format!(
                        "term {} commit {} applied {} ({})",
                        rs.term.0,
                        rs.commit.0,
                        rs.applied.0,
                        s.describe_replica(rs.region.id).unwrap_or_default()
                    );
                    owners.push((rs.region, i, what));
                }
            }
        }
        owners.sort_by(|a, b| a.0.start_key.cmp(&b.0.start_key));
        for w in owners.windows(2) {
            let ((a, sa, wa), (b, sb, wb)) = (&w[0], &w[1]);
            let overlap = a.end_key.as_ref().is_none_or(|e| *e > b.start_key);
            if overlap && a.id != b.id {
                for (i, st) in self.stores.iter().enumerate() {
                    if let Some(s) = st.store.as_ref() {
                        eprintln!(
                            "s{}: region {}: {:?}\n    region {}: {:?}",
                            i + 1,
                            a.id,
                            s.describe_replica(a.id),
                            b.id,
                            s.describe_replica(b.id)
                        );
                    }
                }
            }
            assert!(
                !overlap || a.id == b.id,
                "two regions can serve the same keys at {}us: {a:?} led on s{} [{wa}] and {b:?} led on s{} [{wb}]",
                self.now,
                sa + 1,
                sb + 1
            );
        }
        self.out.owner_checks += 1;
        self.out.owner_leaders_checked += owners.len() as u64;
    }

    /// Asks the leader of a random region to merge it into its left neighbour, when both
    /// have voters only, on the same stores (routed by the table, which may be stale: the
    /// store then refuses it).
    fn merge_random_regions(&mut self) {
        self.refresh_routes();
        if self.regions.len() < 2 {
            return;
        }
        let mut rs = self.regions.clone();
        rs.sort_by(|a, b| a.start_key.cmp(&b.start_key));
        let i = 1 + self.merge_rng.below(rs.len() as u64 - 1) as usize;
        let (target, source) = (&rs[i - 1], &rs[i]);
        let stores = |r: &Region| {
            let mut v: Vec<(StoreId, bool)> =
                r.peers.iter().map(|p| (p.store, p.learner)).collect();
            v.sort();
            v
        };
        if stores(target) != stores(source) || source.peers.iter().any(|p| p.learner) {
            return;
        }
        let Some(at) = self.leader_of(source) else {
            return;
        };
        let s = self.stores[at].store.as_mut().expect("up");
        if s.propose_merge(source.id, source.epoch, target.id).is_ok() {
            self.out.merges_proposed += 1;
            self.trace(|| {
                format!(
                    "merge region {} into {} on s{}",
                    source.id,
                    target.id,
                    at + 1
                )
            });
            self.drive(at);
        }
    }

    /// Asks the leader of a random region (the live replica with the highest term that
    /// believes it leads) to hand leadership to another replica.
    fn transfer_random_leader(&mut self) {
        let r = self.regions[self.rng.below(self.regions.len() as u64) as usize].clone();
        let Some(from) = self.leader_of(&r) else {
            return;
        };
        let others: Vec<StoreId> = r
            .peers
            .iter()
            .map(|p| p.store)
            .filter(|s| s.0 as usize - 1 != from)
            .collect();
        let to = others[self.rng.below(others.len() as u64) as usize];
        let s = self.stores[from].store.as_mut().expect("up");
        if s.transfer_leader(r.id, to).is_ok() {
            self.out.transfers += 1;
            self.trace(|| format!("transfer region {} s{} -> s{to}", r.id, from + 1));
            self.drive(from);
        }
    }

    /// Per region that has not converged: each replica's applied index and state hash, or
    /// why it has none.
    fn convergence_report(&self) -> String {
        let mut out = Vec::new();
        for r in &self.regions {
            let states: Vec<String> = r
                .peers
                .iter()
                .map(|p| {
                    let i = p.store.0 as usize - 1;
                    match self.stores[i].store.as_ref() {
                        None => format!("s{}: down", i + 1),
                        Some(s) => match (s.state_machine(r.id).and_then(|m| m.kv()), s.status().into_iter().find(|st| st.region.id == r.id)) {
                            (Some(m), Some(st)) => format!(
                                "s{}: applied {} hash {:x} {:?} term {} commit {} log {}..{} epoch v{} merging={:?}",
                                i + 1,
                                m.applied_index(),
                                m.state_hash(),
                                st.role,
                                st.term.0,
                                st.commit.0,
                                st.first_index.0,
                                st.last_index.0,
                                st.region.epoch.version,
                                s.merge_state(r.id).map(|m| (m.target, m.prepare_index))
                            ) + &format!(" [{}]", s.describe_replica(r.id).unwrap_or_default()),
                            _ => format!("s{}: no initialized replica ({:?})", i + 1, s.describe_replica(r.id)),
                        },
                    }
                })
                .collect();
            out.push(format!(
                "region {} v{} [{:?}, {:?}): {}",
                r.id,
                r.epoch.version,
                String::from_utf8_lossy(&r.start_key),
                r.end_key
                    .as_ref()
                    .map(|e| String::from_utf8_lossy(e).into_owned()),
                states.join("; ")
            ));
        }
        out.join("\n  ")
    }

    /// Whether every replica of every region has applied the same index with the same state
    /// hash; `Err` if two replicas differ at the same index.
    fn replicas_converged(&self) -> Result<bool, String> {
        let mut all = true;
        for r in &self.regions {
            let states: Vec<(u64, u64)> = r
                .peers
                .iter()
                .filter_map(|p| self.stores[p.store.0 as usize - 1].store.as_ref())
                .filter_map(|s| s.state_machine(r.id).and_then(|m| m.kv()))
                .map(|m| (m.applied_index(), m.state_hash()))
                .collect();
            let mut states = states;
            if self.mutant_divergent_replica && r.id == self.regions[0].id {
                if let Some(first) = states.first_mut() {
                    first.1 = first.1.wrapping_add(1);
                }
            }
            if states.len() < r.peers.len() {
                all = false;
                continue;
            }
            let top = states.iter().map(|h| h.0).max().unwrap_or(0);
            if states.iter().any(|h| h.0 != top) {
                all = false;
            } else if states.windows(2).any(|w| w[0].1 != w[1].1) {
                return Err(format!(
                    "replicas of region {} differ at applied index {top}",
                    r.id
                ));
            }
        }
        Ok(all)
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

/// The key of region `r` (of `count`) for workload key `j`; region 0 starts at the empty key,
/// region `r > 0` at `r{r:02}`.
fn key_of(r: usize, name: &str) -> Vec<u8> {
    format!("r{r:02}/{name}").into_bytes()
}

/// This seed's layout: `stores` stores, regions split at `r01`, `r02`, ..., each replicated
/// on 3 distinct stores (all of them when there are 3).
fn layout(rng: &mut SplitMix64, stores: usize, regions: usize) -> Vec<Region> {
    let ids: Vec<StoreId> = (1..=stores as u64).map(StoreId).collect();
    let splits: Vec<Vec<u8>> = (1..regions)
        .map(|r| format!("r{r:02}").into_bytes())
        .collect();
    let mut out = Region::presplit(&splits, 1, &ids);
    for r in out.iter_mut() {
        while r.peers.len() > 3 {
            let drop = rng.below(r.peers.len() as u64) as usize;
            r.peers.remove(drop);
        }
    }
    out
}

fn choose_faults(rng: &mut SplitMix64) -> Faults {
    let lease_reads = rng.below(4) == 0;
    let delay_min = 100 + rng.below(MS);
    Faults {
        drop_rate: if rng.below(2) == 0 {
            unit(rng) * 0.3
        } else {
            0.0
        },
        dup_rate: if rng.below(2) == 0 {
            unit(rng) * 0.1
        } else {
            0.0
        },
        delay_min,
        delay_max: delay_min + rng.below(30 * MS),
        crashes: rng.below(3) != 0,
        partitions: rng.below(2) == 0,
        // Lease-read seeds pause too: a resumed store replays its missed ticks (as the
        // server does), so a paused leader's lease has run out when it resumes.
        pauses: rng.below(2) == 0,
        pause_max: 100 * MS + rng.below(2_900 * MS),
        drift: rng.below(2) == 0,
        transfers: rng.below(2) == 0,
        snapshots: rng.below(2) == 0,
        fault_gap_max: [500 * MS, 2 * SECOND, 5 * SECOND][rng.below(3) as usize],
        lease_reads,
        splits: false,
        moves: false,
        merges: false,
        placement: false,
    }
}

/// The chance, per Ready round of an idle store, that a command is already queued behind it
/// (the server's loop then hands the round to the writer thread instead of writing it
/// inline), from the seed's own random stream: rarely, sometimes or mostly.
pub fn queued_chance_by_seed(seed: u64) -> f64 {
    [0.05, 0.3, 0.7][SplitMix64::new(seed ^ 0x0064_6566_6572).below(3) as usize]
}

/// The chance, per wake-up of a store, that its simulated snapshot thread finishes a job it
/// holds: quick (about a round later) or slow (tens of wake-ups, so received snapshots and
/// crashes often overtake it), from the seed's own stream.
pub fn snapshot_build_chance_by_seed(seed: u64) -> f64 {
    [0.5, 0.05][SplitMix64::new(seed ^ 0x736e_6170_6275).below(2) as usize]
}

/// Whether `seed` splits regions at runtime (half of the seeds, from their own stream, so
/// every other choice of a seed stays what it was).
pub fn splits_by_seed(seed: u64) -> bool {
    SplitMix64::new(seed ^ 0x7370_6c69_7473).below(2) == 0
}

/// Whether `seed` moves replicas at runtime (half of the seeds, from their own stream).
pub fn moves_by_seed(seed: u64) -> bool {
    SplitMix64::new(seed ^ 0x6d6f_7665_7321).below(2) == 0
}

/// Whether `seed` merges adjacent regions at runtime (half of the seeds, own stream).
pub fn merges_by_seed(seed: u64) -> bool {
    SplitMix64::new(seed ^ 0x6d65_7267_6521).below(2) == 0
}

/// Whether `seed` runs placement's heartbeats and verbs (a spare store joins, stores are
/// drained, regions moved) — half of the seeds, own stream.
pub fn placement_by_seed(seed: u64) -> bool {
    SplitMix64::new(seed ^ 0x706c_6163_6521).below(2) == 0
}

/// Whether `seed`, when it runs placement, runs the automatic scheduler too (half of those
/// seeds, own stream).
pub fn scheduler_by_seed(seed: u64) -> bool {
    SplitMix64::new(seed ^ 0x7363_6865_6421).below(2) == 0
}

/// Whether `seed` lets torn crashes reorder sectors and write garbage, not only keep a
/// prefix, when the options leave it to the seed (half of the seeds, from their own stream).
pub fn torn_write_modes_by_seed(seed: u64) -> bool {
    SplitMix64::new(seed ^ 0x746f_726e_6d6f).below(2) == 0
}

/// Runs one seed; returns the outcome or a failure description with the replay command.
pub fn run_kv_seed(opts: &KvSimOptions) -> Result<KvSimOutcome, String> {
    let mut rng = SplitMix64::new(opts.seed ^ 0x004b_5653_494d);
    let stores = 3 + rng.below(3) as usize;
    let region_count = 3 + rng.below(6) as usize;
    let regions = layout(&mut rng, stores, region_count);
    let keys_per_region = 2 + rng.below(2) as usize;
    let keys: Vec<Vec<Vec<u8>>> = (0..region_count)
        .map(|r| {
            (0..keys_per_region)
                .map(|j| key_of(r, &format!("k{j}")))
                .collect()
        })
        .collect();
    let workload_clients = 4 + rng.below(9) as usize;
    let mut faults = choose_faults(&mut rng);
    faults.splits = splits_by_seed(opts.seed);
    faults.moves = moves_by_seed(opts.seed);
    faults.merges = merges_by_seed(opts.seed);
    faults.placement = opts
        .placement
        .unwrap_or_else(|| placement_by_seed(opts.seed));
    let scheduler = faults.placement
        && opts
            .scheduler
            .unwrap_or_else(|| scheduler_by_seed(opts.seed));
    let mut cfg = StoreConfig::new(0);
    cfg.snapshot_threshold_entries = if rng.below(2) == 0 {
        10 + rng.below(100)
    } else {
        1_000
    };
    // Small segments: the log's budget is 8 of them, so purges (copies of small regions'
    // entries, snapshots of regions named too large to copy) run often, crashes included.
    cfg.engine = raft_log::Config::with_segment_size(64 << 10);
    // Segments are preallocated as on a server, but zeroed by the writer itself: a helper
    // thread would make the disk's state at a crash depend on thread timing.
    cfg.engine.prepare_segments_in_background = false;
    // Data regions' snapshots here are hundreds of bytes to a few KiB: small chunks make a
    // transfer take several round trips, so that crashes, partitions and leader changes land
    // in the middle of streamed installs. Larger with placement at work: the placement
    // group's snapshot (its history of up to 1,024 configurations) reaches a few hundred
    // KiB in a 300 s run, and in 64- or 256-byte chunks its transfer to a new replica took
    // longer than the settle bound (seed 160).
    cfg.snapshot_chunk_bytes = if faults.placement { 4096 } else { 64 };
    // The simulator's own timing (a 20 ms tick, see `TICK`, and the lease arithmetic above
    // it), not the server's defaults.
    cfg.election_tick = 10;
    cfg.heartbeat_tick = 2;
    cfg.read_mode = if faults.lease_reads {
        ReadMode::Lease
    } else {
        ReadMode::Safe
    };
    // Half the seeds balance leaders (the server does for a new cluster's first 30 s), which
    // adds leader transfers that race with everything else: here for the whole run.
    cfg.balance_leaders_every_ticks = 0;
    cfg.balance_leaders_for_ticks = u64::MAX;
    if rng.below(2) == 0 {
        cfg.balance_leaders_every_ticks = 5 + rng.below(50);
    }
    let fault_mix = format!(
        "stores={stores} regions={region_count} keys={} clients={workload_clients} drop={:.2} dup={:.2} delay={}..{}us crashes={} partitions={} pauses={}{} drift={} transfers={} snapshots={} fault_gap<={}ms lease_reads={} snapshot_every={}",
        region_count * keys_per_region,
        faults.drop_rate,
        faults.dup_rate,
        faults.delay_min,
        faults.delay_max,
        faults.crashes,
        faults.partitions,
        faults.pauses,
        if faults.pauses { format!("(<={}ms)", faults.pause_max / MS) } else { String::new() },
        faults.drift,
        faults.transfers,
        faults.snapshots,
        faults.fault_gap_max / MS,
        faults.lease_reads,
        cfg.snapshot_threshold_entries
    ) + &format!(" balance_every={}", cfg.balance_leaders_every_ticks);
    // From its own stream, so that adding it kept every earlier seed's other choices.
    let deferred_writes = opts.deferred_writes;
    let queued_chance = queued_chance_by_seed(opts.seed);
    let snapshot_build_chance = snapshot_build_chance_by_seed(opts.seed);
    let torn_write_modes = opts
        .torn_write_modes
        .unwrap_or_else(|| torn_write_modes_by_seed(opts.seed));
    let fault_mix = fault_mix
        + &format!(
            " splits={} moves={} merges={} placement={} scheduler={scheduler} writes={} torn_write_modes={torn_write_modes} snapshot_build_chance={snapshot_build_chance}",
            faults.splits,
            faults.moves,
            faults.merges,
            faults.placement,
            match deferred_writes {
                None => format!("driver(queued_chance={queued_chance})"),
                Some(false) => "all-inline".to_string(),
                Some(true) => "all-queued".to_string(),
            }
        );
    let mut tick_periods: Vec<Micros> = (0..stores)
        .map(|_| {
            if faults.drift {
                let ppm = rng.below(2 * MAX_DRIFT_PPM + 1);
                TICK * (1_000_000 - MAX_DRIFT_PPM + ppm) / 1_000_000
            } else {
                TICK
            }
        })
        .collect();
    // Seeds with placement run one more store, the spare that joins (its clock undrifted:
    // no draw from the shared stream, so the other stores' choices stay as they were).
    let slots = stores + usize::from(faults.placement);
    tick_periods.resize(slots, TICK);
    // TTL writes under clock drift: own stream (flag and draws), so the other seeds' runs
    // stay exactly what they were.
    let ttl_on = opts.ttl.unwrap_or_else(|| ttl_by_seed(opts.seed));
    let ttl = kv_ttl::Ttl::new(
        opts.seed,
        ttl_on,
        slots,
        region_count,
        opts.sim_seconds,
        opts.mutant_ttl_clock_behind,
    );
    let fault_mix = fault_mix + &ttl.describe();
    let mut clients: Vec<Client> = (0..workload_clients)
        .map(|i| Client {
            id: 1000 + i as u64,
            generation: 0,
            next_sequence: 0,
            op: None,
            script: None,
        })
        .collect();
    // One probe client per region: after healing it writes the region's probe key, then
    // (once the workload is idle) reads every key of the region, the probe key included.
    for (r, region_keys) in keys.iter().enumerate() {
        let probe = key_of(r, "probe");
        let mut script = VecDeque::new();
        script.push_back(Scripted {
            input: KvInput::Put {
                key: probe.clone(),
                value: b"probe".to_vec(),
            },
            command: Command::Put {
                key: Bytes::from(probe.clone()),
                value: Bytes::from_static(b"probe"),
                options: Default::default(),
            },
            key: probe.clone(),
            after_workload: false,
        });
        for k in region_keys.iter().chain(std::iter::once(&probe)) {
            script.push_back(Scripted {
                input: KvInput::Get { key: k.clone() },
                command: Command::Get {
                    key: Bytes::from(k.clone()),
                },
                key: k.clone(),
                after_workload: true,
            });
        }
        clients.push(Client {
            id: 5000 + r as u64,
            generation: 0,
            next_sequence: 0,
            op: None,
            script: Some(script),
        });
    }
    let fail = |what: String| -> String {
        format!(
            "seed {} [{fault_mix}]: {what}\n  replay: {}",
            opts.seed,
            crate::replay_kv_command(opts.seed, opts.sim_seconds)
        )
    };
    let mut sim = Sim {
        now: 0,
        seq: 0,
        queue: BinaryHeap::new(),
        stores: (0..slots)
            .map(|i| SimStore {
                store: None,
                fs: FaultyFileSystem::new(opts.seed.wrapping_mul(31).wrapping_add(i as u64)),
                tick_generation: 0,
                tick_period: tick_periods[i],
                down_since: 0,
                paused_until: None,
                driver: None,
                snapshot_jobs: Vec::new(),
                pause_number: 0,
                inbox: VecDeque::new(),
                failure_armed: false,
                incarnation: 0,
                persist_scheduled: false,
            })
            .collect(),
        bootstrap: placement::with_placement(
            opts.seed.max(1),
            &(1..=stores as u64)
                .map(|s| (s, format!("sim-store-{s}")))
                .collect::<Vec<_>>(),
            regions.clone(),
            3,
        ),
        regions,
        splits_proposed: 0,
        merge_rng: SplitMix64::new(opts.seed ^ 0x6d72_6e67_7331),
        placement_rng: SplitMix64::new(opts.seed ^ 0x706c_6163_6531),
        spare: faults.placement,
        scheduler: scheduler.then(|| kv_placement::SimScheduler::new(opts.seed, slots)),
        owners_checked_at: 0,
        keys,
        cfg,
        links: vec![vec![true; slots]; slots],
        faults: faults.clone(),
        clients,
        workload_clients,
        waiting: vec![BTreeMap::new(); slots],
        history: Vec::new(),
        clock: 0,
        print_trace: opts.print_trace,
        clients_stopped: false,
        healed: false,
        mutant_local_reads: opts.mutant_local_reads,
        mutant_lost_probe_write: opts.mutant_lost_probe_write,
        mutant_divergent_replica: opts.mutant_divergent_replica,
        ttl,
        deferred_writes,
        queued_chance,
        snapshot_build_chance,
        driver_stats: DriverStats::default(),
        log_stats: (0, 0, 0, 0),
        rng,
        out: KvSimOutcome {
            seed: opts.seed,
            stores: slots,
            regions: region_count,
            clients: workload_clients,
            fault_mix: fault_mix.clone(),
            enabled: KvKinds {
                loss: faults.drop_rate > 0.0,
                duplication: faults.dup_rate > 0.0,
                crashes: faults.crashes,
                partitions: faults.partitions,
                pauses: faults.pauses,
                transfers: faults.transfers,
                snapshots: faults.snapshots,
                splits: faults.splits,
                moves: faults.moves,
                merges: faults.merges,
                placement: faults.placement,
                scheduler,
                torn_write_modes,
                ttl: ttl_on,
                drop_rate: faults.drop_rate,
                dup_rate: faults.dup_rate,
            },
            ..Default::default()
        },
    };
    for i in 0..slots {
        if torn_write_modes {
            sim.stores[i].fs.set_torn_writes(&TornWrite::ALL);
        }
        sim.open(i);
    }
    sim.out.restarts = 0;
    if let Some(s) = &sim.scheduler {
        sim.out.fault_mix += &format!(" scheduler_cfg={}", s.describe());
    }
    if sim.faults.placement {
        sim.schedule(kv_placement::HEARTBEAT_EVERY, Ev::PlacementHeartbeat);
    }
    for ci in 0..workload_clients {
        sim.wake(ci, 200 * MS + ci as u64 * MS);
    }

    // ---- fault phase
    let end = opts.sim_seconds * SECOND;
    let mut next_fault = 500 * MS;
    while sim.now < end {
        let step_to = (sim.now + 50 * MS).min(end);
        sim.run_until(step_to);
        if sim.now >= next_fault {
            next_fault = sim.now + 100 * MS + sim.rng.below(sim.faults.fault_gap_max);
            sim.fault();
        }
    }

    if let Some(v) = sim.ttl.violation() {
        return Err(fail(v));
    }

    // ---- heal everything; workload clients finish (or give up on) what they started.
    let healed_at = sim.now;
    sim.healed = true;
    sim.clients_stopped = true;
    sim.heal_links();
    sim.faults.drop_rate = 0.0;
    for i in 0..slots {
        if sim.paused(i) {
            sim.resume(i);
        }
    }
    sim.trace(|| "healed".to_string());
    for ci in workload_clients..sim.clients.len() {
        sim.wake(ci, MS);
    }
    let deadline = healed_at + LIVENESS_BOUND;
    let probes_done = |sim: &Sim| {
        sim.clients[workload_clients..]
            .iter()
            .all(|c| c.op.is_none() && c.script.as_ref().is_some_and(|s| s.is_empty()))
    };
    while sim.now < deadline && !probes_done(&sim) {
        sim.restart_due();
        let t = sim.now + 10 * MS;
        sim.run_until(t);
    }
    if !probes_done(&sim) {
        let stuck: Vec<String> = sim.clients[workload_clients..]
            .iter()
            .enumerate()
            .filter(|(_, c)| c.op.is_some() || c.script.as_ref().is_some_and(|s| !s.is_empty()))
            .map(|(r, _)| format!("probe {r}"))
            .collect();
        return Err(fail(format!(
            "not serving again {}s after healing: {} did not finish a write and its reads (workload ops still in flight: {})\n  {}",
            LIVENESS_BOUND / SECOND,
            stuck.join(", "),
            sim.clients[..workload_clients].iter().filter(|c| c.op.is_some()).count(),
            {
                sim.refresh_routes();
                sim.convergence_report()
            }
        )));
    }
    sim.out.recovery_ms = (sim.now - healed_at) / MS;

    // ---- placement comes to know every region as the stores have it, and finishes its
    // moves and drains (heartbeats go on as on a server).
    if sim.faults.placement {
        let settle_by = sim.now + PLACEMENT_SETTLE_BOUND;
        loop {
            sim.restart_due();
            let t = sim.now + 100 * MS;
            sim.run_until(t);
            sim.refresh_routes();
            match sim.placement_settled() {
                Ok(()) => break,
                Err(why) if sim.now > settle_by => {
                    return Err(fail(format!(
                    "placement did not settle within {}s after the final reads: {why}\n  {}\n  {}",
                    PLACEMENT_SETTLE_BOUND / SECOND,
                    sim.placement_report(),
                    sim.convergence_report()
                )))
                }
                Err(_) => {}
            }
        }
        sim.out.placement_settle_ms = (sim.now - healed_at) / MS - sim.out.recovery_ms;
    }

    // ---- every region's replicas converge to one state.
    let converge_by = sim.now + CONVERGENCE_BOUND;
    loop {
        sim.restart_due();
        let t = sim.now + 50 * MS;
        sim.run_until(t);
        sim.refresh_routes();
        match sim.replicas_converged() {
            Ok(true) => break,
            Ok(false) if sim.now > converge_by => {
                return Err(fail(format!(
                    "replicas did not converge within {}s after the final reads: {}",
                    CONVERGENCE_BOUND / SECOND,
                    sim.convergence_report()
                )))
            }
            Ok(false) => {}
            Err(e) => return Err(fail(e)),
        }
    }

    // ---- no replica served a TTL key after its deadline (the workload's last reads
    // included).
    if let Some(v) = sim.ttl.violation() {
        return Err(fail(v));
    }
    sim.out.ttl_writes = sim.ttl.counts.writes;
    sim.out.ttl_reads_judged = sim.ttl.counts.reads_judged;
    sim.out.ttl_live_values_judged = sim.ttl.counts.live_values_judged;

    // ---- each key in exactly one region, and each region's replicas hold only its keys.
    if let Err(e) = sim.routes_partition() {
        return Err(fail(e));
    }
    for st in sim.stores.iter().filter_map(|s| s.store.as_ref()) {
        for r in st.regions().iter().filter(|r| !r.is_placement()) {
            st.state_machine(r.id)
                .and_then(|m| m.kv())
                .expect("a data region's kv state machine")
                .assert_invariants();
        }
    }
    sim.out.regions_at_end = sim.regions.len();

    // ---- the history, final reads included, must be linearizable per key.
    let ops: Vec<Operation<KvInput, KvOutput>> = sim.history.iter().flatten().cloned().collect();
    sim.out.ops_completed = ops.iter().filter(|o| o.output.is_some()).count();
    sim.out.writes_acknowledged = ops
        .iter()
        .filter(|o| o.output.is_some() && !matches!(o.input, KvInput::Get { .. }))
        .count() as u64;
    sim.out.reads_completed = sim.out.ops_completed as u64 - sim.out.writes_acknowledged;
    for st in &sim.stores {
        let t = st.fs.tear_counts();
        sim.out.tears_prefix += t.prefix;
        sim.out.tears_reordered += t.reordered;
        sim.out.tears_garbage += t.garbage;
        sim.out.torn_files += t.torn_files;
        sim.out.multi_sector_tears += t.multi_sector_files;
    }
    sim.out.ops_unknown = ops.len() - sim.out.ops_completed;
    match lincheck::check(&KvModel, &ops, &lincheck::CheckOptions::default()) {
        Ok(lincheck::CheckResult::Ok) => {}
        Ok(r) => return Err(fail(format!("client history of {} ops: {r}", ops.len()))),
        Err(e) => return Err(fail(format!("malformed history: {e}"))),
    }
    sim.out.snapshots_installed = sim
        .stores
        .iter()
        .filter_map(|s| s.store.as_ref())
        .map(|s| s.stats.snapshots_installed)
        .sum();
    sim.out.driver = sim.driver_stats;
    for st in &sim.stores {
        if let Some(d) = &st.driver {
            sim.out.driver.add(&d.stats);
        }
    }
    sim.out.log_purges += sim.log_stats.0;
    sim.out.log_segments_deleted += sim.log_stats.1;
    sim.out.snapshots_for_log_space += sim.log_stats.2;
    sim.out.snapshots_overtaken += sim.log_stats.3;
    for s in sim.stores.iter().filter_map(|s| s.store.as_ref()) {
        sim.out.splits_applied += s.stats.splits_applied;
        sim.out.replica_changes_applied += s.stats.replica_changes_applied;
        sim.out.peers_destroyed += s.stats.peers_destroyed;
        sim.out.merges_applied += s.stats.merges_applied;
        sim.out.merge_rollbacks += s.stats.merge_rollbacks_proposed;
        sim.out.peers_created_by_message += s.stats.peers_created_by_message;
        sim.out.peers_created_by_vote += s.stats.peers_created_by_vote;
        sim.out.snapshot_chunks_received += s.stats.snapshot_chunks_received;
        sim.out.snapshots_overtaken += s.stats.snapshots_overtaken;
        sim.out.log_purges += s.stats.log_purges;
        sim.out.log_segments_deleted += s.stats.log_segments_deleted;
        sim.out.snapshots_for_log_space += s.stats.snapshots_for_log_space;
        sim.out.housekeeping_proposed += s.stats.housekeeping_proposed;
    }
    sim.out.virtual_micros = sim.now;
    Ok(sim.out)
}

/// Runs `seeds` × `sim_seconds` on `jobs` threads (each seed is single-threaded and
/// deterministic, so the split changes nothing but the wall-clock time). Returns each seed's
/// result in seed order; a panicking seed is reported as a failure with its replay command.
pub fn run_kv_seeds(
    seeds: &[u64],
    sim_seconds: u64,
    jobs: usize,
    configure: &(dyn Fn(&mut KvSimOptions) + Sync),
) -> Vec<(u64, Result<KvSimOutcome, String>)> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::with_capacity(seeds.len()));
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&seed) = seeds.get(k) else {
                    break;
                };
                let mut o = KvSimOptions::new(seed);
                o.sim_seconds = sim_seconds;
                configure(&mut o);
                let r = std::panic::catch_unwind(|| run_kv_seed(&o)).unwrap_or_else(|p| {
                    let msg = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    Err(format!(
                        "seed {seed} panicked: {msg}\n  replay: {}",
                        crate::replay_kv_command(seed, sim_seconds)
                    ))
                });
                results
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((k, seed, r));
            });
        }
    });
    let mut all = results.into_inner().unwrap_or_else(|p| p.into_inner());
    all.sort_by_key(|(k, _, _)| *k);
    all.into_iter().map(|(_, s, r)| (s, r)).collect()
}
