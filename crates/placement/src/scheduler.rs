//! # scheduler — what the automatic scheduler decides, from the live view
//!
//! The decisions of TiKV PD's checkers and schedulers (CockroachDB's split, merge and
//! replicate queues and its allocator) as pure deterministic code. Placement's leader hands
//! a [`Scheduler`] the latest configuration and the live heartbeats once a round; it
//! answers with [`Decision`]s for the caller to carry out: a `Target` is proposed as
//! `Command::Move`, a split, merge or leader transfer is asked of the region's leader. No
//! IO, no clock (`now_ms` is passed in), no randomness (ties go to the lowest id): the
//! same inputs give the same decisions, so the simulator replays them from its seed.
//!
//! ## A round
//! 1. **Observe** the operators in flight (at most one per region). One is done when the
//!    configuration or the live view shows it (a split or merge moved the version, a target
//!    was reached and cleared, the live leader is the transfer's store), superseded when
//!    someone else set another target or the region vanished, timed out after
//!    `op_timeout_ms`. A region whose epoch moved while nothing of ours was in flight for
//!    it, with no target to explain a replica change (Join and Drain set targets), was
//!    changed by hand: it is left alone for `quiet_ms`, like one named to
//!    [`Scheduler::hand_changed`]. The first round only learns the epochs.
//! 2. **Repair.** A store silent for `store_down_timeout_ms` is Down (a store never heard
//!    from counts as silent for as long as the caller has been listening). Down stores get
//!    no replicas and no leaders, and every region that wants a replica on one gets a target
//!    with that replica replaced by the best eligible store. Only Down stores are repaired,
//!    never slow ones: a replacement costs a snapshot, and a slow store usually recovers.
//!    Repair acts on quiet regions too, and replaces a target of ours.
//! 3. **Split** a region above `region_max_bytes` (`Size`), or above `region_split_qps`
//!    reads+writes per second for a whole `split_qps_window_ms` (`Load`; one busy
//!    heartbeat is not a trend). The leader picks the key. A load split it could not carry
//!    out (all the load on one key) is not retried for six windows.
//! 4. **Merge** two adjacent regions that are each below 1/8 of the size limit, below 1/2
//!    together, below half the split load together, have been so for `merge_cold_ms`, and
//!    whose ranges did not change in that time. Merging needs the same voters on both: when
//!    they differ, the smaller region is first moved onto the other's stores
//!    (`AlignForMerge`); once aligned, the right one merges into the left. Any boundary
//!    may be merged away except a sticky one (CockroachDB's sticky split bit): those in
//!    the configuration's replicated [`Config::sticky`] (the `--split-keys` boundaries, put
//!    there at bootstrap, and splits by hand, recorded by `Command::Stick`) and the splits
//!    by hand this scheduler saw and has not seen recorded yet. A split by hand is seen as
//!    a region appearing next to one whose range moved with no operator of ours to explain
//!    it (step 1); the caller proposes [`Scheduler::sticky_to_record`] as `Command::Stick`
//!    after each round until the configuration has them. So merging survives a placement
//!    leader change (every leader reads the same sticky set), and the scheduler's own
//!    splits are merged once cold whoever made them. The window: a split by hand that
//!    lands while placement's leadership changes (before the new leader's first round, which
//!    only learns epochs) is not seen, so not sticky, and may be merged once small and cold
//!    (after its quiet period, if it got one); and a split of the old leader's landing
//!    after the new leader's first round looks like one by hand and becomes sticky. A
//!    merge (by anyone) drops the boundary's stickiness with the boundary.
//! 5. **Zones.** A region with two replicas in one zone while an eligible store in a zone it
//!    lacks has room moves one of them there. A store without a `zone` label is a zone of
//!    its own, so without labels the rule is just "distinct stores".
//! 6. **Balance replicas** by a score of replica count and bytes per capacity (TiKV PD's
//!    region score, which sums region sizes per store weight, with the count kept in so
//!    many small regions still spread): one replica moves from a store scoring highest to
//!    one scoring lowest. A store's score, in thousandths of its fair share
//!    ([`SCORE_FAIR`]), is `w·count/mean_count + (1−w)·(bytes/capacity)/(all bytes/all
//!    capacity)` with `w` = [`SCORE_COUNT_WEIGHT_PERCENT`] %. `bytes` are the live sizes of
//!    the regions the store holds or is meant to hold (they move with this round's
//!    decisions; the heartbeat's used bytes lag a move by minutes); capacity is the
//!    configuration's, else the heartbeat's, else the mean of the known ones, so without
//!    any capacity known the bytes part is plain bytes against the mean. So a store of a
//!    quarter of the others' capacity ends up with about half their replicas, and a store
//!    whose regions are big gives replicas away though its count is even. Repair and zone
//!    moves add the replica to the lowest-scoring store that fits. Disk use, where known,
//!    bounds it all as PD's low-space stage does: a store at [`ACCEPT_PERCENT`] used or more
//!    takes no replica, and one at [`FULL_PERCENT`] or more gives replicas away whatever the
//!    scores.
//! 7. **Balance leaders** by count (then by the load they serve): the store leading most
//!    hands one region to a voter on the store leading fewest.
//!
//! Rules 3 to 7 skip a region that has a target (in motion for Join, Drain, a hand Move or
//! our own move: never fight them), an operator in flight (or is the partner of a merge in
//! flight), is quiet, or recently failed an operator (left alone for `op_timeout_ms`).
//! The placement group is never split or merged, and its leadership is not balanced (the
//! scheduler runs on its leader); its replicas are repaired and balanced like any region's.
//!
//! ## Hysteresis: why nothing flaps
//! - Replica balance moves only when the two scores differ by at least
//!   [`BALANCE_MIN_SCORE_GAP`] (5 % of the fair share), and only a region whose move leaves
//!   the source scoring at least as high as the destination (no overshoot: the cheapest
//!   such region, fewest bytes). The score of a store is a function of what it holds, and
//!   the totals it is measured against do not change as replicas move, so such a move
//!   lowers the higher of the two scores and leaves both below it: the scores sorted from
//!   highest down fall lexicographically with every move, and as there are finitely many
//!   placements, balancing stops (with even sizes and capacities this is the count rule
//!   "differ by at least 2 and 5 % of the mean"). A move never lowers the number of zones
//!   a region spans, and a zone move raises it, so those stop too. The capacity rules
//!   leave a gap between 70 % (takes none) and 80 % (gives away): a store emptied below
//!   80 % is not refilled until below 70 %. A region's size changing (it grows, it splits)
//!   changes the scores, and may rightly start a move.
//! - Leader balance needs a difference of [`LEADER_MIN_DIFF`]; each transfer lowers the sum
//!   of squared leader counts.
//! - Merging needs the pair below half the split size and half the split load, so the
//!   halves of a split (by size: each about half the limit; by load: each about half the
//!   load) are not merged back; a range that changed waits `merge_cold_ms` before merging.
//!
//! ## Limits
//! At most `max_ops_per_store` operators in flight touch one store (a move touches the
//! stores it adds and removes, a split or merge the region's stores, a transfer both
//! stores; a Down store is never the limit). At most [`MAX_DECISIONS_PER_ROUND`] decisions
//! a round, of which [`MAX_ZONE_MOVES_PER_ROUND`], [`MAX_BALANCE_MOVES_PER_ROUND`] and
//! [`MAX_LEADER_MOVES_PER_ROUND`] of each kind. Every map is keyed by region and pruned
//! each round to the configuration's regions; the history keeps [`HISTORY_OPS`].

use crate::live::{LiveRegion, LiveStore};
use crate::machine::MAX_REPLICAS;
use crate::model::{Config, RegionLayout, StoreState};
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Replicas per region unless configured.
pub const DEFAULT_REPLICAS: usize = 3;
/// Regions above this many bytes split (TiKV's `region-max-size` is 144 MiB, its split
/// size 96 MiB; smaller regions move faster).
pub const DEFAULT_REGION_MAX_BYTES: u64 = 64 << 20;
/// Reads+writes per second above which a region splits by load (TiKV's `qps-threshold`).
pub const DEFAULT_REGION_SPLIT_QPS: u64 = 3_000;
/// How long a region must stay above the split load before it splits.
pub const DEFAULT_SPLIT_QPS_WINDOW_MS: u64 = 10_000;
/// How long two neighbours must stay small and cold before they merge.
pub const DEFAULT_MERGE_COLD_MS: u64 = 60_000;
/// A store silent this long is Down and its replicas are replaced (PD's
/// `max-store-down-time` is 30 minutes; ours is shorter for a small cluster).
pub const DEFAULT_STORE_DOWN_TIMEOUT_MS: u64 = 300_000;
/// How long a region changed by hand is left alone.
pub const DEFAULT_QUIET_MS: u64 = 600_000;
/// Operators in flight touching one store.
pub const DEFAULT_MAX_OPS_PER_STORE: usize = 4;
/// An operator not seen done within this has failed.
pub const DEFAULT_OP_TIMEOUT_MS: u64 = 120_000;

/// Finished operators kept for `raftkv status`.
pub const HISTORY_OPS: usize = 256;
/// New decisions per round, all rules together.
pub const MAX_DECISIONS_PER_ROUND: usize = 16;
/// Replica-balance moves per round: moves are expensive (a snapshot each), and the counts
/// they leave behind are judged again next round.
pub const MAX_BALANCE_MOVES_PER_ROUND: usize = 2;
/// Zone moves per round.
pub const MAX_ZONE_MOVES_PER_ROUND: usize = 4;
/// Leader transfers per round.
pub const MAX_LEADER_MOVES_PER_ROUND: usize = 4;
/// A store's replica score ([`store_score`]) weighs its replica count this much (in
/// percent) and its bytes per capacity the rest.
pub const SCORE_COUNT_WEIGHT_PERCENT: u64 = 50;
/// A store's score where it holds exactly its share (of replicas and of bytes per
/// capacity): scores are in thousandths of the fair share.
pub const SCORE_FAIR: u64 = 1_000;
/// Replica balance moves only across a score gap of at least this (5 % of the fair
/// share), and only by a move that leaves the source's score at or above the
/// destination's (see the module doc's hysteresis).
pub const BALANCE_MIN_SCORE_GAP: u64 = 50;
/// Leader balance moves only across a leader-count difference of at least this.
pub const LEADER_MIN_DIFF: usize = 2;
/// A store this full (used bytes in percent of capacity) takes no replica from balancing.
pub const ACCEPT_PERCENT: u64 = 70;
/// A store this full gives replicas away whatever the counts.
pub const FULL_PERCENT: u64 = 80;
/// A failed load split is not retried for this many windows.
pub const LOAD_SPLIT_RETRY_WINDOWS: u64 = 6;
/// The store label that names a store's failure domain.
pub const ZONE_LABEL: &str = "zone";
/// A failure's reason is cut to this many bytes in the history.
pub const MAX_WHY_BYTES: usize = 256;

/// What the scheduler may do and how eagerly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleConfig {
    /// False: `round` decides nothing (`playground --scheduler off`).
    pub enabled: bool,
    /// Replicas per region (placement's replica count).
    pub replicas: usize,
    /// Split by size above this.
    pub region_max_bytes: u64,
    /// Split by load when reads+writes per second stay above this (0 = never).
    pub region_split_qps: u64,
    /// ...for this long.
    pub split_qps_window_ms: u64,
    /// Merge only after small and cold for this long.
    pub merge_cold_ms: u64,
    /// A store silent this long is Down and repaired.
    pub store_down_timeout_ms: u64,
    /// Regions changed by hand are left alone this long.
    pub quiet_ms: u64,
    /// Operators in flight touching one store.
    pub max_ops_per_store: usize,
    /// An operator not seen done within this has failed.
    pub op_timeout_ms: u64,
}

impl Default for ScheduleConfig {
    fn default() -> ScheduleConfig {
        ScheduleConfig {
            enabled: true,
            replicas: DEFAULT_REPLICAS,
            region_max_bytes: DEFAULT_REGION_MAX_BYTES,
            region_split_qps: DEFAULT_REGION_SPLIT_QPS,
            split_qps_window_ms: DEFAULT_SPLIT_QPS_WINDOW_MS,
            merge_cold_ms: DEFAULT_MERGE_COLD_MS,
            store_down_timeout_ms: DEFAULT_STORE_DOWN_TIMEOUT_MS,
            quiet_ms: DEFAULT_QUIET_MS,
            max_ops_per_store: DEFAULT_MAX_OPS_PER_STORE,
            op_timeout_ms: DEFAULT_OP_TIMEOUT_MS,
        }
    }
}

/// Why a region splits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SplitReason {
    /// Above `region_max_bytes`: the leader splits at the middle by size.
    Size,
    /// Above `region_split_qps` for a window: the leader splits at a key from its load
    /// samples.
    Load,
}

/// What a decision asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// The region's leader splits it, picking the key.
    Split { reason: SplitReason },
    /// Merge this region into its adjacent neighbour `into` (same voters, no learners).
    Merge { into: u64 },
    /// Hand the region's leadership to its voter on `store`.
    TransferLeader { store: u64 },
    /// The stores the region's replicas should be on, sorted: proposed as `Command::Move`.
    Target { stores: Vec<u64> },
}

impl Action {
    /// The name metrics and the CLI use for this kind of operator.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Split { .. } => "split",
            Action::Merge { .. } => "merge",
            Action::TransferLeader { .. } => "transfer-leader",
            Action::Target { .. } => "move",
        }
    }
}

/// Which rule made a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reason {
    Size,
    Load,
    Merge,
    AlignForMerge,
    BalanceReplicas,
    BalanceLeaders,
    Repair,
    Zone,
}

/// One thing for the caller to do, for the region at the epoch it was decided at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub region: u64,
    pub conf_version: u64,
    pub version: u64,
    pub action: Action,
    pub reason: Reason,
}

/// How an operator ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Done,
    /// The region's leader refused or could not carry it out.
    Failed(String),
    /// Not seen done within `op_timeout_ms`.
    TimedOut,
    /// Someone else set another target, or the region is gone.
    Superseded,
}

impl Outcome {
    /// The name metrics and the CLI use.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Failed(_) => "failed",
            Outcome::TimedOut => "timed-out",
            Outcome::Superseded => "superseded",
        }
    }
}

/// An operator as `raftkv status` and `store list` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorRecord {
    pub region: u64,
    pub action: Action,
    pub reason: Reason,
    pub started_ms: u64,
    /// `None` while in flight.
    pub finished_ms: Option<u64>,
    /// `None` while in flight.
    pub outcome: Option<Outcome>,
}

/// An operator of ours not yet seen done.
#[derive(Clone, Debug)]
struct InFlight {
    decision: Decision,
    started_ms: u64,
    /// Stores counted against `max_ops_per_store` while it runs.
    touches: Vec<u64>,
    /// The other region of a merge (`into`) or of an alignment for one: kept still until
    /// this ends, and its epoch change is ours.
    partner: Option<u64>,
}

impl InFlight {
    fn record(&self, finished_ms: Option<u64>, outcome: Option<Outcome>) -> OperatorRecord {
        OperatorRecord {
            region: self.decision.region,
            action: self.decision.action.clone(),
            reason: self.decision.reason,
            started_ms: self.started_ms,
            finished_ms,
            outcome,
        }
    }
}

/// A region's epoch as the last round saw it.
#[derive(Clone, Copy, Debug)]
struct Seen {
    conf_version: u64,
    version: u64,
    had_target: bool,
}

/// The automatic scheduler: its operators in flight, their history, and what it remembers
/// of each region between rounds (epochs, how long hot or cold, when left alone until).
#[derive(Clone, Debug)]
pub struct Scheduler {
    cfg: ScheduleConfig,
    in_flight: BTreeMap<u64, InFlight>,
    history: VecDeque<OperatorRecord>,
    counts: BTreeMap<(String, String), u64>,
    seen: BTreeMap<u64, Seen>,
    /// A round has run: epochs are known, so a moved one means something.
    observed: bool,
    quiet_until: BTreeMap<u64, u64>,
    /// After a failed or timed-out operator: nothing but repair until then.
    retry_after: BTreeMap<u64, u64>,
    /// After a failed load split: no load split until then.
    load_split_after: BTreeMap<u64, u64>,
    hot_since: BTreeMap<u64, u64>,
    cold_since: BTreeMap<u64, u64>,
    /// When the region's range last changed (split, merge): no merge for `merge_cold_ms`.
    range_changed_ms: BTreeMap<u64, u64>,
    /// Boundaries of splits by hand this scheduler saw, not yet sticky in the
    /// configuration: the caller records them ([`Scheduler::sticky_to_record`] →
    /// `Command::Stick`), and they are not merged meanwhile. Bounded by the regions: one
    /// that is sticky, or no boundary any more, is forgotten.
    hand_boundaries: BTreeSet<Vec<u8>>,
}

/// Whether a store is Down: silent (since its last heartbeat, or since the caller began
/// listening when never heard from) for `down_timeout_ms` or more.
pub fn is_down(last_heartbeat_ms_ago: Option<u64>, view_age_ms: u64, down_timeout_ms: u64) -> bool {
    last_heartbeat_ms_ago.unwrap_or(view_age_ms) >= down_timeout_ms
}

impl Scheduler {
    pub fn new(cfg: ScheduleConfig) -> Scheduler {
        Scheduler {
            cfg,
            in_flight: BTreeMap::new(),
            history: VecDeque::with_capacity(HISTORY_OPS),
            counts: BTreeMap::new(),
            seen: BTreeMap::new(),
            observed: false,
            quiet_until: BTreeMap::new(),
            retry_after: BTreeMap::new(),
            load_split_after: BTreeMap::new(),
            hot_since: BTreeMap::new(),
            cold_since: BTreeMap::new(),
            range_changed_ms: BTreeMap::new(),
            hand_boundaries: BTreeSet::new(),
        }
    }

    /// Starts afresh for a new leadership (what was in flight and what it remembered of
    /// each region may have been overtaken by another leader's), keeping the history and
    /// the counts (metrics counters never go back).
    pub fn restart(&mut self) {
        let history = std::mem::take(&mut self.history);
        let counts = std::mem::take(&mut self.counts);
        *self = Scheduler::new(self.cfg.clone());
        self.history = history;
        self.counts = counts;
    }

    pub fn set_config(&mut self, cfg: ScheduleConfig) {
        self.cfg = cfg;
    }

    pub fn config(&self) -> &ScheduleConfig {
        &self.cfg
    }

    /// A region was changed by hand (Move, split, merge): leave it alone until
    /// `now_ms + quiet_ms` (repair excepted). Forgotten at the next round if the region is
    /// not in the configuration.
    pub fn hand_changed(&mut self, region: u64, now_ms: u64) {
        let until = now_ms.saturating_add(self.cfg.quiet_ms);
        let at = self.quiet_until.entry(region).or_insert(until);
        *at = (*at).max(until);
    }

    /// Boundaries of splits by hand seen and not yet sticky in the configuration (at most
    /// [`crate::machine::MAX_STICK_KEYS`], lowest first): the caller proposes them as
    /// `Command::Stick` after each round, until the configuration has them.
    pub fn sticky_to_record(&self) -> Vec<Vec<u8>> {
        self.hand_boundaries
            .iter()
            .take(crate::machine::MAX_STICK_KEYS)
            .cloned()
            .collect()
    }

    /// Whether the region is left alone (changed by hand lately).
    pub fn is_quiet(&self, region: u64, now_ms: u64) -> bool {
        self.quiet_until.get(&region).is_some_and(|&t| now_ms < t)
    }

    /// The configuration's stores (not Removed) that are Down.
    pub fn down_stores(
        &self,
        config: &Config,
        stores: &[LiveStore],
        view_age_ms: u64,
    ) -> BTreeSet<u64> {
        let heard: BTreeMap<u64, Option<u64>> = stores
            .iter()
            .map(|l| (l.id, l.last_heartbeat_ms_ago))
            .collect();
        config
            .stores
            .values()
            .filter(|m| m.state != StoreState::Removed)
            .filter(|m| {
                let ago = heard.get(&m.id).copied().flatten();
                is_down(ago, view_age_ms, self.cfg.store_down_timeout_ms)
            })
            .map(|m| m.id)
            .collect()
    }

    /// One scheduling round over `config` and the live view: observe, then decide. The
    /// decisions returned are in flight from now on. `view_age_ms` = how long the caller
    /// has been collecting heartbeats.
    pub fn round(
        &mut self,
        config: &Config,
        stores: &[LiveStore],
        regions: &[LiveRegion],
        now_ms: u64,
        view_age_ms: u64,
    ) -> Vec<Decision> {
        let live: BTreeMap<u64, &LiveRegion> = regions.iter().map(|r| (r.id, r)).collect();
        self.observe(config, &live, now_ms);
        self.track_load(config, &live, now_ms);
        if !self.cfg.enabled {
            return Vec::new();
        }
        let down = self.down_stores(config, stores, view_age_ms);
        let (planned, superseded) = {
            let mut plan = Plan::new(self, config, stores, &live, &down, now_ms);
            plan.repair();
            plan.split();
            plan.merge();
            plan.zones();
            plan.balance_replicas();
            plan.balance_leaders();
            (plan.out, plan.superseded)
        };
        assert!(
            planned.len() <= MAX_DECISIONS_PER_ROUND,
            "{} decisions in one round, limit {MAX_DECISIONS_PER_ROUND}",
            planned.len()
        );
        for region in superseded {
            self.finish(region, Outcome::Superseded, now_ms);
        }
        let decisions: Vec<Decision> = planned.iter().map(|p| p.decision.clone()).collect();
        for p in planned {
            self.start(p, now_ms);
        }
        decisions
    }

    /// The region's leader refused or could not carry out the operator in flight for it.
    pub fn failed(&mut self, region: u64, why: String, now_ms: u64) {
        if self.in_flight.contains_key(&region) {
            self.finish(region, Outcome::Failed(bounded(why)), now_ms);
        }
    }

    /// The operators in flight, by region.
    pub fn in_flight(&self) -> Vec<OperatorRecord> {
        self.in_flight
            .values()
            .map(|op| op.record(None, None))
            .collect()
    }

    /// Finished operators, most recent last, at most [`HISTORY_OPS`].
    pub fn history(&self) -> Vec<OperatorRecord> {
        self.history.iter().cloned().collect()
    }

    /// `(kind, outcome)` → how many, for metrics: kinds as [`Action::kind`], outcomes as
    /// [`Outcome::name`] plus `"started"`.
    pub fn counts(&self) -> BTreeMap<(String, String), u64> {
        self.counts.clone()
    }

    fn count(&mut self, kind: &str, outcome: &str) {
        *self
            .counts
            .entry((kind.to_string(), outcome.to_string()))
            .or_insert(0) += 1;
    }

    fn start(&mut self, planned: Planned, now_ms: u64) {
        let region = planned.decision.region;
        assert!(
            !self.in_flight.contains_key(&region),
            "region {region}: {:?} decided with {:?} in flight",
            planned.decision.action,
            self.in_flight.get(&region).map(|op| &op.decision.action)
        );
        self.count(planned.decision.action.kind(), "started");
        self.in_flight.insert(
            region,
            InFlight {
                decision: planned.decision,
                started_ms: now_ms,
                touches: planned.touches,
                partner: planned.partner,
            },
        );
    }

    fn finish(&mut self, region: u64, outcome: Outcome, now_ms: u64) {
        let Some(op) = self.in_flight.remove(&region) else {
            return;
        };
        let failed = matches!(outcome, Outcome::Failed(_) | Outcome::TimedOut);
        if failed {
            if op.decision.action
                == (Action::Split {
                    reason: SplitReason::Load,
                })
            {
                // Most often one hot key: the leader found no key to split at, and will not
                // find one until the load changes.
                let wait = self
                    .cfg
                    .split_qps_window_ms
                    .saturating_mul(LOAD_SPLIT_RETRY_WINDOWS);
                self.load_split_after
                    .insert(region, now_ms.saturating_add(wait));
            } else if !matches!(op.decision.action, Action::TransferLeader { .. }) {
                // (A failed leader transfer does not hold the region back: leader balance
                // has its own hysteresis, and a split or repair must not wait for it.)
                self.retry_after
                    .insert(region, now_ms.saturating_add(self.cfg.op_timeout_ms));
            }
        }
        self.count(op.decision.action.kind(), outcome.name());
        if self.history.len() >= HISTORY_OPS {
            self.history.pop_front();
        }
        self.history
            .push_back(op.record(Some(now_ms), Some(outcome)));
        assert!(
            self.history.len() <= HISTORY_OPS,
            "history holds {} operators, limit {HISTORY_OPS}",
            self.history.len()
        );
    }

    /// Step 1: operators that ended, epochs that moved, maps pruned to the regions there are.
    fn observe(&mut self, config: &Config, live: &BTreeMap<u64, &LiveRegion>, now_ms: u64) {
        // Taken before any operator ends: an operator that ends this round explains the
        // epoch change that ended it.
        let explained: BTreeSet<u64> = self
            .in_flight
            .values()
            .flat_map(|op| std::iter::once(op.decision.region).chain(op.partner))
            .collect();
        let timeout_ms = self.cfg.op_timeout_ms;
        let ended: Vec<(u64, Outcome)> = self
            .in_flight
            .iter()
            .filter_map(|(id, op)| judge(op, config, live, now_ms, timeout_ms).map(|o| (*id, o)))
            .collect();
        for (region, outcome) in ended {
            self.finish(region, outcome, now_ms);
        }
        self.note_epochs(config, &explained, now_ms);
        self.prune(config, now_ms);
    }

    fn note_epochs(&mut self, config: &Config, explained: &BTreeSet<u64>, now_ms: u64) {
        let first = !self.observed;
        self.observed = true;
        let mut by_hand: BTreeSet<u64> = BTreeSet::new();
        let mut appeared: Vec<u64> = Vec::new();
        for r in config.regions.values() {
            let now_seen = Seen {
                conf_version: r.conf_version,
                version: r.version,
                had_target: r.target.is_some(),
            };
            let Some(before) = self.seen.insert(r.id, now_seen) else {
                if !first {
                    appeared.push(r.id);
                }
                continue;
            };
            let range_moved = before.version != r.version;
            let conf_moved = before.conf_version != r.conf_version;
            if range_moved {
                // A split or merge: the load history belongs to the old range.
                self.hot_since.remove(&r.id);
                self.cold_since.remove(&r.id);
                self.range_changed_ms.insert(r.id, now_ms);
            }
            // Replica changes while a target is set are placement walking toward it.
            let by_target = !range_moved && (before.had_target || r.target.is_some());
            if (range_moved || conf_moved) && !explained.contains(&r.id) && !by_target {
                by_hand.insert(r.id);
            }
        }
        for id in appeared {
            // A new region is the other half of a split: just split, and quiet when the
            // split was by hand. Its start is then a boundary someone meant: sticky.
            self.range_changed_ms.insert(id, now_ms);
            if let Some(r) = config.regions.get(&id) {
                if neighbours(config, r).iter().any(|n| by_hand.contains(n)) {
                    by_hand.insert(id);
                    if !r.start_key.is_empty() && !config.sticky.contains(&r.start_key) {
                        self.hand_boundaries.insert(r.start_key.clone());
                    }
                }
            }
        }
        for id in by_hand {
            self.hand_changed(id, now_ms);
        }
    }

    fn prune(&mut self, config: &Config, now_ms: u64) {
        let known = |id: &u64| config.regions.contains_key(id);
        let cold_ms = self.cfg.merge_cold_ms;
        self.seen.retain(|id, _| known(id));
        self.quiet_until.retain(|id, t| known(id) && now_ms < *t);
        self.retry_after.retain(|id, t| known(id) && now_ms < *t);
        self.load_split_after
            .retain(|id, t| known(id) && now_ms < *t);
        self.hot_since.retain(|id, _| known(id));
        self.cold_since.retain(|id, _| known(id));
        self.range_changed_ms
            .retain(|id, t| known(id) && now_ms.saturating_sub(*t) < cold_ms);
        let placement = crate::hosted_group_id();
        let starts: BTreeSet<&[u8]> = config
            .regions
            .values()
            .filter(|r| r.id != placement)
            .map(|r| r.start_key.as_slice())
            .collect();
        self.hand_boundaries
            .retain(|b| starts.contains(b.as_slice()) && !config.sticky.contains(b));
    }

    /// Hot and cold spells, for load splits and merges. A region without a live report is
    /// neither: nothing is known of its load.
    fn track_load(&mut self, config: &Config, live: &BTreeMap<u64, &LiveRegion>, now_ms: u64) {
        let small_bytes = self.cfg.region_max_bytes / 8;
        let split_qps = self.cfg.region_split_qps;
        for r in config.regions.values() {
            if r.id == crate::hosted_group_id() {
                continue;
            }
            let Some(l) = live.get(&r.id) else {
                self.hot_since.remove(&r.id);
                self.cold_since.remove(&r.id);
                continue;
            };
            let load = qps(l);
            if split_qps > 0 && load > split_qps {
                self.hot_since.entry(r.id).or_insert(now_ms);
            } else {
                self.hot_since.remove(&r.id);
            }
            let cold = l.approximate_bytes < small_bytes
                && (split_qps == 0 || load.saturating_mul(2) < split_qps);
            if cold {
                self.cold_since.entry(r.id).or_insert(now_ms);
            } else {
                self.cold_since.remove(&r.id);
            }
        }
    }
}

/// How an operator in flight ended, if it did.
fn judge(
    op: &InFlight,
    config: &Config,
    live: &BTreeMap<u64, &LiveRegion>,
    now_ms: u64,
    timeout_ms: u64,
) -> Option<Outcome> {
    let d = &op.decision;
    let region = config.regions.get(&d.region);
    let ended = match (&d.action, region) {
        (Action::Merge { .. }, None) => Some(Outcome::Done),
        (Action::Merge { into }, Some(r)) => {
            if r.version > d.version {
                Some(Outcome::Done)
            } else if !config.regions.contains_key(into) {
                Some(Outcome::Superseded)
            } else {
                None
            }
        }
        (_, None) => Some(Outcome::Superseded),
        (Action::Split { .. }, Some(r)) => (r.version > d.version).then_some(Outcome::Done),
        (Action::Target { stores }, Some(r)) => match &r.target {
            // Not proposed yet, or reached: the layout tells which.
            None => {
                let mut now = r.stores();
                now.sort_unstable();
                (now == *stores && r.replicas.iter().all(|p| !p.learner)).then_some(Outcome::Done)
            }
            Some(t) if t == stores => None,
            Some(_) => Some(Outcome::Superseded),
        },
        (Action::TransferLeader { store }, Some(_)) => live
            .get(&d.region)
            .is_some_and(|l| l.leader_store == *store)
            .then_some(Outcome::Done),
    };
    // A leader transfer is done within an election or not at all (a store's own static
    // leader balancing of a new cluster may take it back): waiting the whole operator
    // timeout would keep the region from splitting or repair meanwhile.
    let timeout_ms = match d.action {
        Action::TransferLeader { .. } => timeout_ms.min(LEADER_TRANSFER_TIMEOUT_MS),
        _ => timeout_ms,
    };
    ended.or_else(|| {
        (now_ms.saturating_sub(op.started_ms) >= timeout_ms).then_some(Outcome::TimedOut)
    })
}

/// How long a leader transfer may take before it counts as timed out.
pub const LEADER_TRANSFER_TIMEOUT_MS: u64 = 10_000;

/// A decision with what it holds while in flight.
struct Planned {
    decision: Decision,
    touches: Vec<u64>,
    partner: Option<u64>,
}

/// One round's decisions in the making, over a snapshot of the scheduler's memory.
struct Plan<'a> {
    sched: &'a Scheduler,
    config: &'a Config,
    live: &'a BTreeMap<u64, &'a LiveRegion>,
    down: &'a BTreeSet<u64>,
    now_ms: u64,
    /// Stores that may take replicas and leaders: `Up` in the configuration, not Down.
    eligible: BTreeSet<u64>,
    /// Replicas each eligible store holds or is meant to hold (targets count), kept up to
    /// date as moves are decided.
    replicas: BTreeMap<u64, usize>,
    /// Operators in flight touching each store, this round's included.
    busy: BTreeMap<u64, usize>,
    /// Regions given nothing more this round: in flight, partners, decided.
    taken: BTreeSet<u64>,
    /// Region bytes (live sizes) each eligible store holds or is meant to hold, kept up
    /// to date like `replicas`.
    bytes: BTreeMap<u64, u64>,
    /// Each eligible store's capacity for the score: the configuration's, else the
    /// heartbeat's, else the mean of the known ones (1 each when none is known).
    capacity: BTreeMap<u64, u64>,
    /// Used bytes in percent of capacity, for stores whose capacity is known.
    used_percent: BTreeMap<u64, u64>,
    zones: BTreeMap<u64, String>,
    out: Vec<Planned>,
    /// Operators of ours that this round's repairs replace.
    superseded: Vec<u64>,
}

impl<'a> Plan<'a> {
    fn new(
        sched: &'a Scheduler,
        config: &'a Config,
        stores: &[LiveStore],
        live: &'a BTreeMap<u64, &'a LiveRegion>,
        down: &'a BTreeSet<u64>,
        now_ms: u64,
    ) -> Plan<'a> {
        let eligible: BTreeSet<u64> = config
            .stores
            .values()
            .filter(|s| s.state == StoreState::Up && !down.contains(&s.id))
            .map(|s| s.id)
            .collect();
        let mut replicas: BTreeMap<u64, usize> = eligible.iter().map(|&s| (s, 0)).collect();
        let mut bytes: BTreeMap<u64, u64> = eligible.iter().map(|&s| (s, 0)).collect();
        for r in config.regions.values() {
            let size = live.get(&r.id).map_or(0, |l| l.approximate_bytes);
            for s in r.wanted() {
                if let Some(n) = replicas.get_mut(&s) {
                    *n += 1;
                }
                if let Some(b) = bytes.get_mut(&s) {
                    *b = b.saturating_add(size);
                }
            }
        }
        let mut busy: BTreeMap<u64, usize> = BTreeMap::new();
        let mut taken: BTreeSet<u64> = BTreeSet::new();
        for op in sched.in_flight.values() {
            for s in &op.touches {
                *busy.entry(*s).or_insert(0) += 1;
            }
            taken.insert(op.decision.region);
            taken.extend(op.partner);
        }
        let mut used_percent = BTreeMap::new();
        for l in stores {
            let capacity = config
                .stores
                .get(&l.id)
                .map(|m| m.capacity)
                .filter(|c| *c > 0)
                .unwrap_or(l.capacity_bytes);
            if capacity > 0 {
                let percent = u128::from(l.used_bytes) * 100 / u128::from(capacity);
                used_percent.insert(l.id, percent.min(u128::from(u64::MAX)) as u64);
            }
        }
        let heard_capacity: BTreeMap<u64, u64> =
            stores.iter().map(|l| (l.id, l.capacity_bytes)).collect();
        let known: BTreeMap<u64, u64> = eligible
            .iter()
            .filter_map(|&s| {
                let c = config
                    .stores
                    .get(&s)
                    .map(|m| m.capacity)
                    .filter(|c| *c > 0)
                    .or_else(|| heard_capacity.get(&s).copied().filter(|c| *c > 0))?;
                Some((s, c))
            })
            .collect();
        let fallback = if known.is_empty() {
            1
        } else {
            let sum: u128 = known.values().map(|c| u128::from(*c)).sum();
            (sum / known.len() as u128).max(1) as u64
        };
        let capacity = eligible
            .iter()
            .map(|&s| (s, known.get(&s).copied().unwrap_or(fallback)))
            .collect();
        let zones = config
            .stores
            .values()
            .map(|m| {
                let zone = m.labels.get(ZONE_LABEL).cloned();
                (m.id, zone.unwrap_or_else(|| format!("(store {})", m.id)))
            })
            .collect();
        Plan {
            sched,
            config,
            live,
            down,
            now_ms,
            eligible,
            replicas,
            busy,
            taken,
            bytes,
            capacity,
            used_percent,
            zones,
            out: Vec::new(),
            superseded: Vec::new(),
        }
    }

    fn cfg(&self) -> &'a ScheduleConfig {
        &self.sched.cfg
    }

    fn full(&self) -> bool {
        self.out.len() >= MAX_DECISIONS_PER_ROUND
    }

    /// Whether one more operator may touch the store. A Down store is never the limit:
    /// its replicas must be replaced however many there are.
    fn room(&self, store: u64) -> bool {
        self.down.contains(&store)
            || self.busy.get(&store).copied().unwrap_or(0) < self.cfg().max_ops_per_store
    }

    fn all_room(&self, stores: &[u64]) -> bool {
        stores.iter().all(|s| self.room(*s))
    }

    fn count(&self, store: u64) -> usize {
        self.replicas.get(&store).copied().unwrap_or(0)
    }

    fn bytes_on(&self, store: u64) -> u64 {
        self.bytes.get(&store).copied().unwrap_or(0)
    }

    /// The totals scores are measured against (they do not change as replicas move).
    fn totals(&self) -> Totals {
        Totals {
            stores: self.replicas.len() as u64,
            replicas: self.replicas.values().map(|n| *n as u64).sum(),
            bytes: self.bytes.values().map(|b| u128::from(*b)).sum(),
            capacity: self.capacity.values().map(|c| u128::from(*c)).sum(),
        }
    }

    /// The store's score were it to hold `count` replicas of `bytes` bytes.
    fn score_as(&self, t: &Totals, store: u64, count: usize, bytes: u64) -> u64 {
        let capacity = self.capacity.get(&store).copied().unwrap_or(1);
        store_score(t, count as u64, bytes, capacity)
    }

    /// The store's score as things stand (this round's decisions included).
    fn score(&self, t: &Totals, store: u64) -> u64 {
        self.score_as(t, store, self.count(store), self.bytes_on(store))
    }

    fn region_bytes(&self, region: u64) -> u64 {
        self.live.get(&region).map_or(0, |l| l.approximate_bytes)
    }

    /// Not too full to take a replica from balancing (unknown capacity: yes).
    fn accepts(&self, store: u64) -> bool {
        self.used_percent
            .get(&store)
            .map_or(true, |p| *p < ACCEPT_PERCENT)
    }

    /// So full it gives replicas away.
    fn gives(&self, store: u64) -> bool {
        self.used_percent
            .get(&store)
            .is_some_and(|p| *p >= FULL_PERCENT)
    }

    fn zone_of(&self, store: u64) -> String {
        self.zones
            .get(&store)
            .cloned()
            .unwrap_or_else(|| format!("(store {store})"))
    }

    fn distinct_zones(&self, stores: &[u64]) -> usize {
        stores
            .iter()
            .map(|s| self.zone_of(*s))
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// Whether rules 3 to 7 may give the region an operator.
    fn free(&self, r: &RegionLayout) -> bool {
        r.target.is_none()
            && !self.taken.contains(&r.id)
            && !self.sched.is_quiet(r.id, self.now_ms)
            && self
                .sched
                .retry_after
                .get(&r.id)
                .map_or(true, |&t| self.now_ms >= t)
    }

    /// The best eligible store to add to a region on `existing`: with room, in a zone the
    /// region lacks if any, not too full (`repair` may take a full one as a last resort),
    /// with the lowest score, the lowest id.
    fn best_store(&self, existing: &[u64], repair: bool) -> Option<u64> {
        let used: BTreeSet<String> = existing.iter().map(|s| self.zone_of(*s)).collect();
        let totals = self.totals();
        self.eligible
            .iter()
            .copied()
            .filter(|s| !existing.contains(s) && self.room(*s))
            .filter(|s| repair || self.accepts(*s))
            .min_by_key(|s| {
                (
                    used.contains(&self.zone_of(*s)),
                    !self.accepts(*s),
                    self.score(&totals, *s),
                    *s,
                )
            })
    }

    fn push(
        &mut self,
        r: &RegionLayout,
        action: Action,
        reason: Reason,
        touches: Vec<u64>,
        partner: Option<u64>,
    ) {
        assert!(
            !self.full() && !self.taken.contains(&r.id),
            "region {}: {action:?} decided with {} decisions made, taken {}",
            r.id,
            self.out.len(),
            self.taken.contains(&r.id)
        );
        if let Action::Target { stores } = &action {
            assert!(
                !stores.is_empty()
                    && stores.len() <= MAX_REPLICAS
                    && stores.windows(2).all(|w| w[0] < w[1]),
                "region {}: target {stores:?} is not 1..={MAX_REPLICAS} sorted distinct stores",
                r.id
            );
            assert!(
                stores.iter().all(|s| self.eligible.contains(s)),
                "region {}: target {stores:?} names a store outside the eligible {:?}",
                r.id,
                self.eligible
            );
            let before = r.wanted();
            let size = self.region_bytes(r.id);
            for s in &before {
                if !stores.contains(s) {
                    if let Some(n) = self.replicas.get_mut(s) {
                        *n = n.saturating_sub(1);
                    }
                    if let Some(b) = self.bytes.get_mut(s) {
                        *b = b.saturating_sub(size);
                    }
                }
            }
            for s in stores {
                if !before.contains(s) {
                    if let Some(n) = self.replicas.get_mut(s) {
                        *n += 1;
                    }
                    if let Some(b) = self.bytes.get_mut(s) {
                        *b = b.saturating_add(size);
                    }
                }
            }
        }
        for s in &touches {
            *self.busy.entry(*s).or_insert(0) += 1;
        }
        self.taken.insert(r.id);
        self.taken.extend(partner);
        self.out.push(Planned {
            decision: Decision {
                region: r.id,
                conf_version: r.conf_version,
                version: r.version,
                action,
                reason,
            },
            touches,
            partner,
        });
    }

    /// Rule 2: replace replicas wanted on Down stores.
    fn repair(&mut self) {
        let config = self.config;
        let want = self.cfg().replicas.clamp(1, MAX_REPLICAS);
        // When as many stores are Down as are heard from, the view is what is wrong (this
        // leader is cut off, or its heartbeats are stale): moving replicas onto the few it
        // hears from would shrink regions onto them. Repair waits for a view it can trust.
        let counted = config
            .stores
            .values()
            .filter(|m| m.state != StoreState::Removed)
            .count();
        if self.down.len() * 2 >= counted {
            return;
        }
        for r in config.regions.values() {
            if self.full() {
                return;
            }
            let wanted = r.wanted();
            if !wanted.iter().any(|s| self.down.contains(s)) {
                continue;
            }
            // A move of ours is replaced, and so is anything waiting on a Down store (a
            // leader transfer to it would hold the region until it timed out); a split or
            // merge among live stores ends or times out first.
            let superseding = match self.sched.in_flight.get(&r.id) {
                None => false,
                Some(op)
                    if matches!(op.decision.action, Action::Target { .. })
                        || op.touches.iter().any(|s| self.down.contains(s)) =>
                {
                    true
                }
                Some(_) => continue,
            };
            if !superseding && self.taken.contains(&r.id) {
                continue;
            }
            let mut next: Vec<u64> = wanted
                .iter()
                .copied()
                .filter(|s| self.eligible.contains(s))
                .collect();
            let kept = next.len();
            while next.len() < want {
                match self.best_store(&next, true) {
                    Some(s) => next.push(s),
                    None => break,
                }
            }
            // No store to take the replica: wait for one rather than shrink the region.
            // Repair replaces replicas, never drops one: a region keeps at least as many as
            // it had (up to the replica count).
            if next.is_empty()
                || (next.len() == kept && kept < want)
                || next.len() < wanted.len().min(want)
            {
                continue;
            }
            next.sort_unstable();
            let touches = moved(&wanted, &next);
            if !self.all_room(&touches) {
                continue;
            }
            if superseding {
                self.superseded.push(r.id);
                self.taken.remove(&r.id);
            }
            self.push(
                r,
                Action::Target { stores: next },
                Reason::Repair,
                touches,
                None,
            );
        }
    }

    fn load_split_due(&self, region: u64) -> bool {
        let cfg = self.cfg();
        let now = self.now_ms;
        cfg.region_split_qps > 0
            && self
                .sched
                .hot_since
                .get(&region)
                .is_some_and(|&t| now.saturating_sub(t) >= cfg.split_qps_window_ms)
            && self
                .sched
                .load_split_after
                .get(&region)
                .map_or(true, |&t| now >= t)
    }

    /// Rule 3: split by size, then by load.
    fn split(&mut self) {
        let config = self.config;
        let max_bytes = self.cfg().region_max_bytes;
        for r in config.regions.values() {
            if self.full() {
                return;
            }
            if r.id == crate::hosted_group_id() || !self.free(r) {
                continue;
            }
            let Some(l) = self.live.get(&r.id) else {
                continue;
            };
            let (split, reason) = if l.approximate_bytes > max_bytes {
                (SplitReason::Size, Reason::Size)
            } else if self.load_split_due(r.id) {
                (SplitReason::Load, Reason::Load)
            } else {
                continue;
            };
            let touches = distinct(r.stores());
            if !self.all_room(&touches) {
                continue;
            }
            self.push(r, Action::Split { reason: split }, reason, touches, None);
        }
    }

    /// Rule 4: merge cold neighbours, aligning their replicas first.
    fn merge(&mut self) {
        let config = self.config;
        let placement = crate::hosted_group_id();
        let by_start: BTreeMap<&[u8], &RegionLayout> = config
            .regions
            .values()
            .filter(|r| r.id != placement)
            .map(|r| (r.start_key.as_slice(), r))
            .collect();
        for left in by_start.values().copied() {
            if self.full() {
                return;
            }
            let Some(end) = left.end_key.as_deref() else {
                continue;
            };
            let Some(right) = by_start.get(&end).copied() else {
                continue;
            };
            if self.merge_ready(left, right) {
                self.merge_pair(left, right);
            }
        }
    }

    fn merge_ready(&self, left: &RegionLayout, right: &RegionLayout) -> bool {
        if left.id == right.id || !self.free(left) || !self.free(right) {
            return false;
        }
        let (Some(a), Some(b)) = (self.live.get(&left.id), self.live.get(&right.id)) else {
            return false;
        };
        let cfg = self.cfg();
        let sched = self.sched;
        let now = self.now_ms;
        let small = cfg.region_max_bytes / 8;
        let bytes_ok = a.approximate_bytes < small
            && b.approximate_bytes < small
            && a.approximate_bytes.saturating_add(b.approximate_bytes) < cfg.region_max_bytes / 2;
        let load = qps(a).saturating_add(qps(b));
        let load_ok = cfg.region_split_qps == 0 || load.saturating_mul(2) < cfg.region_split_qps;
        let cold_long = |id: u64| {
            sched
                .cold_since
                .get(&id)
                .is_some_and(|&t| now.saturating_sub(t) >= cfg.merge_cold_ms)
        };
        let settled = |id: u64| {
            sched
                .range_changed_ms
                .get(&id)
                .map_or(true, |&t| now.saturating_sub(t) >= cfg.merge_cold_ms)
        };
        !self.config.sticky.contains(&right.start_key)
            && !sched.hand_boundaries.contains(&right.start_key)
            && bytes_ok
            && load_ok
            && cold_long(left.id)
            && cold_long(right.id)
            && settled(left.id)
            && settled(right.id)
    }

    fn merge_pair(&mut self, left: &RegionLayout, right: &RegionLayout) {
        let left_voters = voters(left);
        let right_voters = voters(right);
        if left_voters == right_voters && !has_learner(left) && !has_learner(right) {
            let touches = distinct(right.stores());
            if self.all_room(&touches) {
                let into = left.id;
                self.push(
                    right,
                    Action::Merge { into },
                    Reason::Merge,
                    touches,
                    Some(into),
                );
            }
            return;
        }
        let bytes = |r: &RegionLayout| self.live.get(&r.id).map_or(0, |l| l.approximate_bytes);
        // The smaller one moves (fewer bytes to copy); on a tie, the right one.
        let (source, other, stores) = if bytes(left) < bytes(right) {
            (left, right, right_voters)
        } else {
            (right, left, left_voters)
        };
        if stores.is_empty()
            || stores.len() > MAX_REPLICAS
            || !stores.iter().all(|s| self.eligible.contains(s))
        {
            return;
        }
        let before = source.wanted();
        if before == stores {
            return;
        }
        let touches = moved(&before, &stores);
        if !self.all_room(&touches) {
            return;
        }
        self.push(
            source,
            Action::Target { stores },
            Reason::AlignForMerge,
            touches,
            Some(other.id),
        );
    }

    /// Rule 5: spread each region over as many zones as there are.
    fn zones(&mut self) {
        let config = self.config;
        let mut moves = 0;
        for r in config.regions.values() {
            if self.full() || moves >= MAX_ZONE_MOVES_PER_ROUND {
                return;
            }
            if !self.free(r) || has_learner(r) || !self.live.contains_key(&r.id) {
                continue;
            }
            let stores = r.wanted();
            // A replica on a store that takes none is repair's or drain's business.
            if !stores.iter().all(|s| self.eligible.contains(s)) {
                continue;
            }
            let Some(next) = self.zone_fix(&stores) else {
                continue;
            };
            let touches = moved(&stores, &next);
            if !self.all_room(&touches) {
                continue;
            }
            self.push(
                r,
                Action::Target { stores: next },
                Reason::Zone,
                touches,
                None,
            );
            moves += 1;
        }
    }

    /// `stores` with one replica of a crowded zone moved to a zone they lack, if a store
    /// there can take it.
    fn zone_fix(&self, stores: &[u64]) -> Option<Vec<u64>> {
        let mut per_zone: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for &s in stores {
            per_zone.entry(self.zone_of(s)).or_default().push(s);
        }
        let crowded: Vec<u64> = per_zone
            .values()
            .filter(|v| v.len() > 1)
            .flatten()
            .copied()
            .collect();
        if crowded.is_empty() {
            return None;
        }
        // The best store prefers a zone the region lacks: if it is in a zone the region
        // has, no store in a missing zone can take the replica now.
        let to = self.best_store(stores, false)?;
        if per_zone.contains_key(&self.zone_of(to)) {
            return None;
        }
        let totals = self.totals();
        let from = crowded
            .iter()
            .copied()
            .filter(|s| self.room(*s))
            .max_by_key(|s| (self.score(&totals, *s), Reverse(*s)))?;
        Some(replace(stores, from, to))
    }

    /// Rule 6: a few replica moves from full stores to empty ones.
    fn balance_replicas(&mut self) {
        for _ in 0..MAX_BALANCE_MOVES_PER_ROUND {
            if self.full() {
                return;
            }
            let Some((r, next)) = self.balance_move() else {
                return;
            };
            let touches = moved(&r.wanted(), &next);
            self.push(
                r,
                Action::Target { stores: next },
                Reason::BalanceReplicas,
                touches,
                None,
            );
        }
    }

    /// The first (source, destination) pair, sources with the highest score first (a store
    /// too full gives first of all) and destinations with the lowest first, that is far
    /// enough apart and has a region whose move does not reverse their order.
    fn balance_move(&self) -> Option<(&'a RegionLayout, Vec<u64>)> {
        if self.replicas.len() < 2 {
            return None;
        }
        let totals = self.totals();
        let mut sources: Vec<u64> = self
            .replicas
            .keys()
            .copied()
            .filter(|s| self.room(*s))
            .collect();
        sources.sort_by_key(|s| (!self.gives(*s), Reverse(self.score(&totals, *s)), *s));
        let mut destinations: Vec<u64> = self
            .replicas
            .keys()
            .copied()
            .filter(|s| self.room(*s) && self.accepts(*s))
            .collect();
        destinations.sort_by_key(|s| (self.score(&totals, *s), *s));
        for &from in &sources {
            for &to in &destinations {
                if from == to {
                    continue;
                }
                let gap = self
                    .score(&totals, from)
                    .saturating_sub(self.score(&totals, to));
                let gives = self.gives(from);
                if gap < BALANCE_MIN_SCORE_GAP && !gives {
                    // Destinations only score higher from here on.
                    break;
                }
                if let Some(found) = self.region_to_move(&totals, from, to, gives) {
                    return Some(found);
                }
            }
        }
        None
    }

    /// The region cheapest to move from `from` to `to` (data regions before the placement
    /// group, fewest bytes, lowest id) that keeps as many zones as it spans and, unless
    /// `from` is too full (`any`), leaves `from` scoring at least as high as `to`.
    fn region_to_move(
        &self,
        totals: &Totals,
        from: u64,
        to: u64,
        any: bool,
    ) -> Option<(&'a RegionLayout, Vec<u64>)> {
        let config = self.config;
        let placement = crate::hosted_group_id();
        let (from_n, from_b) = (self.count(from), self.bytes_on(from));
        let (to_n, to_b) = (self.count(to), self.bytes_on(to));
        config
            .regions
            .values()
            .filter(|r| self.free(r) && !has_learner(r) && self.live.contains_key(&r.id))
            .filter_map(|r| {
                let before = r.wanted();
                if !before.contains(&from) || before.contains(&to) {
                    return None;
                }
                if !before.iter().all(|s| self.eligible.contains(s)) {
                    return None;
                }
                let size = self.region_bytes(r.id);
                if !any {
                    let source_after = self.score_as(
                        totals,
                        from,
                        from_n.saturating_sub(1),
                        from_b.saturating_sub(size),
                    );
                    let destination_after =
                        self.score_as(totals, to, to_n + 1, to_b.saturating_add(size));
                    if source_after < destination_after {
                        return None;
                    }
                }
                let next = replace(&before, from, to);
                if self.distinct_zones(&next) < self.distinct_zones(&before) {
                    return None;
                }
                Some((r, next, size))
            })
            .min_by_key(|(r, _, size)| (r.id == placement, *size, r.id))
            .map(|(r, next, _)| (r, next))
    }

    /// Rule 7: a few leader transfers from the store leading most to the one leading fewest.
    fn balance_leaders(&mut self) {
        let mut leaders = self.leader_counts();
        for _ in 0..MAX_LEADER_MOVES_PER_ROUND {
            if self.full() {
                return;
            }
            let Some((r, from, to)) = self.leader_move(&leaders) else {
                return;
            };
            let load = self.live.get(&r.id).map_or(0, |l| qps(l));
            if let Some(e) = leaders.get_mut(&from) {
                e.0 = e.0.saturating_sub(1);
                e.1 = e.1.saturating_sub(load);
            }
            if let Some(e) = leaders.get_mut(&to) {
                e.0 += 1;
                e.1 = e.1.saturating_add(load);
            }
            let action = Action::TransferLeader { store: to };
            self.push(r, action, Reason::BalanceLeaders, vec![from, to], None);
        }
    }

    /// (leaders, reads+writes per second they serve) per eligible store, from the live
    /// view, with transfers in flight counted as done.
    fn leader_counts(&self) -> BTreeMap<u64, (usize, u64)> {
        let placement = crate::hosted_group_id();
        let mut counts: BTreeMap<u64, (usize, u64)> =
            self.eligible.iter().map(|&s| (s, (0, 0))).collect();
        for r in self.config.regions.values() {
            if r.id == placement {
                continue;
            }
            let Some(l) = self.live.get(&r.id) else {
                continue;
            };
            let leader = match self
                .sched
                .in_flight
                .get(&r.id)
                .map(|op| &op.decision.action)
            {
                Some(Action::TransferLeader { store }) => *store,
                _ => l.leader_store,
            };
            if let Some(e) = counts.get_mut(&leader) {
                e.0 += 1;
                e.1 = e.1.saturating_add(qps(l));
            }
        }
        counts
    }

    fn leader_move(
        &self,
        leaders: &BTreeMap<u64, (usize, u64)>,
    ) -> Option<(&'a RegionLayout, u64, u64)> {
        let mut sources: Vec<(u64, usize, u64)> = leaders
            .iter()
            .filter(|(s, _)| self.room(**s))
            .map(|(s, (n, load))| (*s, *n, *load))
            .collect();
        let mut destinations = sources.clone();
        sources.sort_by_key(|(s, n, load)| (Reverse(*n), Reverse(*load), *s));
        destinations.sort_by_key(|(s, n, load)| (*n, *load, *s));
        for &(from, from_n, _) in &sources {
            for &(to, to_n, _) in &destinations {
                if from_n < to_n + LEADER_MIN_DIFF {
                    break;
                }
                if let Some(r) = self.region_led(from, to) {
                    return Some((r, from, to));
                }
            }
        }
        None
    }

    /// The lowest-id free data region led by `from` with a voter on `to`.
    fn region_led(&self, from: u64, to: u64) -> Option<&'a RegionLayout> {
        let config = self.config;
        let placement = crate::hosted_group_id();
        config.regions.values().find(|r| {
            r.id != placement
                && self.free(r)
                && self.live.get(&r.id).is_some_and(|l| l.leader_store == from)
                && r.replicas.iter().any(|p| p.store == to && !p.learner)
        })
    }
}

/// What store scores are measured against: the eligible stores and the replicas, region
/// bytes and capacity over them all.
#[derive(Clone, Copy, Debug)]
struct Totals {
    stores: u64,
    replicas: u64,
    bytes: u128,
    capacity: u128,
}

/// A store's replica score, in thousandths of its fair share ([`SCORE_FAIR`]): a weighted
/// sum of its replica count against the mean count and of its bytes per capacity against
/// the cluster's (all region bytes over all capacity). A store of half the mean capacity
/// holding the mean bytes scores 2,000 on the bytes part. With no bytes known the bytes
/// part is the count part.
fn store_score(t: &Totals, count: u64, bytes: u64, capacity: u64) -> u64 {
    let fair = u128::from(SCORE_FAIR);
    let count_part = if t.replicas == 0 {
        0
    } else {
        u128::from(count) * fair * u128::from(t.stores) / u128::from(t.replicas)
    };
    let bytes_part = if t.bytes == 0 || t.capacity == 0 {
        count_part
    } else {
        // bytes / capacity against total bytes / total capacity.
        let num = u128::from(bytes)
            .saturating_mul(t.capacity)
            .saturating_mul(fair);
        num / t.bytes.saturating_mul(u128::from(capacity.max(1)))
    };
    let w = u128::from(SCORE_COUNT_WEIGHT_PERCENT);
    let score = (w * count_part + (100 - w) * bytes_part) / 100;
    score.min(u128::from(u64::MAX)) as u64
}

fn qps(l: &LiveRegion) -> u64 {
    l.reads_per_sec.saturating_add(l.writes_per_sec)
}

fn distinct(mut stores: Vec<u64>) -> Vec<u64> {
    stores.sort_unstable();
    stores.dedup();
    stores
}

/// The region's voters' stores, sorted.
fn voters(r: &RegionLayout) -> Vec<u64> {
    distinct(
        r.replicas
            .iter()
            .filter(|p| !p.learner)
            .map(|p| p.store)
            .collect(),
    )
}

fn has_learner(r: &RegionLayout) -> bool {
    r.replicas.iter().any(|p| p.learner)
}

/// `stores` with `from` replaced by `to`, sorted.
fn replace(stores: &[u64], from: u64, to: u64) -> Vec<u64> {
    distinct(
        stores
            .iter()
            .map(|&s| if s == from { to } else { s })
            .collect(),
    )
}

/// The stores a move from `before` to `after` adds or removes, sorted.
fn moved(before: &[u64], after: &[u64]) -> Vec<u64> {
    let removed = before.iter().filter(|s| !after.contains(s));
    let added = after.iter().filter(|s| !before.contains(s));
    distinct(removed.chain(added).copied().collect())
}

/// The data regions adjacent to `r`.
fn neighbours(config: &Config, r: &RegionLayout) -> Vec<u64> {
    let placement = crate::hosted_group_id();
    config
        .regions
        .values()
        .filter(|o| o.id != r.id && o.id != placement)
        .filter(|o| {
            o.end_key.as_deref() == Some(r.start_key.as_slice())
                || r.end_key.as_deref() == Some(o.start_key.as_slice())
        })
        .map(|o| o.id)
        .collect()
}

/// `why` cut to [`MAX_WHY_BYTES`] at a character boundary: the history stays bounded.
fn bounded(mut why: String) -> String {
    if why.len() > MAX_WHY_BYTES {
        let mut cut = MAX_WHY_BYTES;
        while !why.is_char_boundary(cut) {
            cut -= 1;
        }
        why.truncate(cut);
    }
    why
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Change, ReplicaMeta, StoreAddrs, StoreMeta};

    const MIB: u64 = 1 << 20;
    const STEP_MS: u64 = 10_000;
    /// Model keys are 8-byte big-endian numbers below this.
    const KEY_SPACE: u64 = 1 << 32;

    fn key(n: u64) -> Vec<u8> {
        n.to_be_bytes().to_vec()
    }

    fn unkey(k: &[u8]) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(k);
        u64::from_be_bytes(b)
    }

    fn store(id: u64, zone: Option<&str>) -> StoreMeta {
        let mut labels = BTreeMap::new();
        if let Some(z) = zone {
            labels.insert(ZONE_LABEL.to_string(), z.to_string());
        }
        StoreMeta {
            id,
            addrs: StoreAddrs::default(),
            state: StoreState::Up,
            labels,
            capacity: 0,
        }
    }

    fn stores(n: u64) -> Vec<StoreMeta> {
        (1..=n).map(|id| store(id, None)).collect()
    }

    fn voters_on(region: u64, stores: &[u64]) -> Vec<ReplicaMeta> {
        stores
            .iter()
            .map(|&s| ReplicaMeta {
                peer: region * 1000 + s,
                store: s,
                learner: false,
            })
            .collect()
    }

    /// A cluster as the scheduler sees it, with a clock; `apply` carries decisions out at
    /// once, as an ideal cluster would (a target reached, a split into halves of half the
    /// bytes and load, a merge, a leader moved).
    struct Model {
        config: Config,
        live_stores: Vec<LiveStore>,
        live: BTreeMap<u64, LiveRegion>,
        next_region: u64,
        now_ms: u64,
    }

    impl Model {
        /// `n` regions dividing the key space evenly, region `i` (from 1) on `on(i)`, led by
        /// its first store, each of `bytes`.
        fn new(stores: Vec<StoreMeta>, n: u64, on: impl Fn(u64) -> Vec<u64>, bytes: u64) -> Model {
            let step = KEY_SPACE / n;
            let mut config = Config::default();
            for s in stores {
                config.stores.insert(s.id, s);
            }
            let mut live = BTreeMap::new();
            for i in 1..=n {
                let on_stores = on(i);
                config.regions.insert(
                    i,
                    RegionLayout {
                        id: i,
                        start_key: key((i - 1) * step),
                        end_key: if i == n { None } else { Some(key(i * step)) },
                        conf_version: 1,
                        version: 1,
                        replicas: voters_on(i, &on_stores),
                        target: None,
                    },
                );
                live.insert(
                    i,
                    LiveRegion {
                        id: i,
                        leader_store: on_stores[0],
                        approximate_keys: bytes / 100,
                        approximate_bytes: bytes,
                        ..LiveRegion::default()
                    },
                );
            }
            let live_stores = config
                .stores
                .keys()
                .map(|&id| LiveStore {
                    id,
                    up: true,
                    last_heartbeat_ms_ago: Some(1_000),
                    ..LiveStore::default()
                })
                .collect();
            Model {
                config,
                live_stores,
                live,
                next_region: n + 1,
                now_ms: 0,
            }
        }

        fn live_mut(&mut self, region: u64) -> &mut LiveRegion {
            self.live.get_mut(&region).expect("a live region")
        }

        fn heartbeat_ago(&mut self, store: u64, ago_ms: Option<u64>) {
            let s = self.live_stores.iter_mut().find(|s| s.id == store);
            s.expect("a live store").last_heartbeat_ms_ago = ago_ms;
        }

        /// One round at the model's clock, which then moves on by `STEP_MS`; nothing applied.
        fn round(&mut self, s: &mut Scheduler) -> Vec<Decision> {
            let regions: Vec<LiveRegion> = self.live.values().cloned().collect();
            let d = s.round(
                &self.config,
                &self.live_stores,
                &regions,
                self.now_ms,
                self.now_ms,
            );
            self.now_ms += STEP_MS;
            d
        }

        fn round_at(&mut self, s: &mut Scheduler, now_ms: u64) -> Vec<Decision> {
            self.now_ms = now_ms;
            self.round(s)
        }

        /// A round whose decisions are carried out at once.
        fn step(&mut self, s: &mut Scheduler) -> Vec<Decision> {
            let d = self.round(s);
            for one in &d {
                self.apply(one);
            }
            d
        }

        fn apply(&mut self, d: &Decision) {
            match &d.action {
                Action::Target { stores } => {
                    let r = self
                        .config
                        .regions
                        .get_mut(&d.region)
                        .expect("known region");
                    r.replicas = voters_on(r.id, stores);
                    r.conf_version += 1;
                    r.target = None;
                    if let Some(l) = self.live.get_mut(&d.region) {
                        if !stores.contains(&l.leader_store) {
                            l.leader_store = stores[0];
                        }
                    }
                }
                Action::Split { .. } => self.split(d.region),
                Action::Merge { into } => self.merge(d.region, *into),
                Action::TransferLeader { store } => self.live_mut(d.region).leader_store = *store,
            }
        }

        fn split(&mut self, id: u64) {
            let new_id = self.next_region;
            self.next_region += 1;
            let left = self.config.regions.get_mut(&id).expect("known region");
            let start = unkey(&left.start_key);
            let end = left.end_key.as_deref().map_or(KEY_SPACE, unkey);
            let mid = start + (end - start) / 2;
            let mut right = left.clone();
            right.id = new_id;
            right.start_key = key(mid);
            right.version += 1;
            right.replicas = voters_on(new_id, &left.stores());
            left.end_key = Some(key(mid));
            left.version += 1;
            self.config.regions.insert(new_id, right);
            let l = self.live_mut(id);
            let (bytes, reads, writes) = (
                l.approximate_bytes / 2,
                l.reads_per_sec / 2,
                l.writes_per_sec / 2,
            );
            l.approximate_bytes -= bytes;
            l.reads_per_sec -= reads;
            l.writes_per_sec -= writes;
            let mut half = l.clone();
            half.id = new_id;
            half.approximate_bytes = bytes;
            half.reads_per_sec = reads;
            half.writes_per_sec = writes;
            self.live.insert(new_id, half);
        }

        fn merge(&mut self, source: u64, into: u64) {
            let src = self.config.regions.remove(&source).expect("known source");
            let dst = self.config.regions.get_mut(&into).expect("known target");
            assert_eq!(voters(&src), voters(dst), "merge of unaligned regions");
            if dst.end_key.as_deref() == Some(src.start_key.as_slice()) {
                dst.end_key = src.end_key.clone();
            } else {
                assert_eq!(src.end_key.as_deref(), Some(dst.start_key.as_slice()));
                dst.start_key = src.start_key.clone();
            }
            dst.version = dst.version.max(src.version) + 1;
            let gone = self.live.remove(&source).expect("live source");
            let l = self.live_mut(into);
            l.approximate_bytes += gone.approximate_bytes;
            l.reads_per_sec += gone.reads_per_sec;
            l.writes_per_sec += gone.writes_per_sec;
        }

        fn leaders(&self) -> BTreeMap<u64, usize> {
            let mut n: BTreeMap<u64, usize> = self.config.stores.keys().map(|&s| (s, 0)).collect();
            for l in self.live.values() {
                *n.entry(l.leader_store).or_insert(0) += 1;
            }
            n
        }
    }

    fn on_123(_: u64) -> Vec<u64> {
        vec![1, 2, 3]
    }

    fn of_region(d: &[Decision], region: u64) -> Vec<Decision> {
        d.iter().filter(|d| d.region == region).cloned().collect()
    }

    fn with_reason(d: &[Decision], reason: Reason) -> Vec<Decision> {
        d.iter().filter(|d| d.reason == reason).cloned().collect()
    }

    fn none() -> Vec<Decision> {
        Vec::new()
    }

    fn sched() -> Scheduler {
        Scheduler::new(ScheduleConfig::default())
    }

    fn split_of(region: u64, reason: SplitReason) -> Decision {
        Decision {
            region,
            conf_version: 1,
            version: 1,
            action: Action::Split { reason },
            reason: match reason {
                SplitReason::Size => Reason::Size,
                SplitReason::Load => Reason::Load,
            },
        }
    }

    #[test]
    fn a_region_above_the_size_limit_splits() {
        let mut m = Model::new(stores(3), 2, on_123, 10 * MIB);
        m.live_mut(1).approximate_bytes = DEFAULT_REGION_MAX_BYTES + 1;
        let mut s = sched();
        let d = m.round(&mut s);
        assert_eq!(of_region(&d, 1), vec![split_of(1, SplitReason::Size)]);
        assert!(of_region(&d, 2).iter().all(|d| d.reason != Reason::Size));
        assert_eq!(s.in_flight().len(), d.len());
        assert_eq!(s.counts()[&("split".to_string(), "started".to_string())], 1);
    }

    #[test]
    fn a_hot_region_splits_only_after_the_window() {
        let mut m = Model::new(stores(3), 1, on_123, MIB);
        m.live_mut(1).reads_per_sec = DEFAULT_REGION_SPLIT_QPS + 1;
        let mut s = sched();
        assert_eq!(m.round_at(&mut s, 0), none());
        assert_eq!(m.round_at(&mut s, DEFAULT_SPLIT_QPS_WINDOW_MS - 1), none());
        assert_eq!(
            m.round_at(&mut s, DEFAULT_SPLIT_QPS_WINDOW_MS),
            vec![split_of(1, SplitReason::Load)]
        );
    }

    #[test]
    fn a_hot_region_that_cools_within_the_window_does_not_split() {
        let mut m = Model::new(stores(3), 1, on_123, MIB);
        let mut s = sched();
        m.live_mut(1).reads_per_sec = DEFAULT_REGION_SPLIT_QPS + 1;
        assert_eq!(m.round_at(&mut s, 0), none());
        m.live_mut(1).reads_per_sec = 10;
        assert_eq!(m.round_at(&mut s, 5_000), none());
        m.live_mut(1).reads_per_sec = DEFAULT_REGION_SPLIT_QPS + 1;
        assert_eq!(m.round_at(&mut s, 8_000), none());
        // Hot since 8 s only: the spell that began at 0 does not count.
        assert_eq!(m.round_at(&mut s, DEFAULT_SPLIT_QPS_WINDOW_MS), none());
        assert_eq!(
            m.round_at(&mut s, 8_000 + DEFAULT_SPLIT_QPS_WINDOW_MS - 1),
            none()
        );
        assert_eq!(
            m.round_at(&mut s, 8_000 + DEFAULT_SPLIT_QPS_WINDOW_MS),
            vec![split_of(1, SplitReason::Load)]
        );
    }

    #[test]
    fn a_failed_load_split_is_not_retried_for_six_windows() {
        let mut m = Model::new(stores(3), 1, on_123, MIB);
        m.live_mut(1).writes_per_sec = 2 * DEFAULT_REGION_SPLIT_QPS;
        let mut s = sched();
        let window = DEFAULT_SPLIT_QPS_WINDOW_MS;
        assert_eq!(m.round_at(&mut s, 0), none());
        assert_eq!(
            m.round_at(&mut s, window),
            vec![split_of(1, SplitReason::Load)]
        );
        s.failed(1, "one hot key".to_string(), window);
        let last = s.history().pop().expect("the failure recorded");
        assert_eq!(
            last.outcome,
            Some(Outcome::Failed("one hot key".to_string()))
        );
        let retry = window + LOAD_SPLIT_RETRY_WINDOWS * window;
        let mut t = window + 1;
        while t < retry {
            assert_eq!(m.round_at(&mut s, t), none(), "retried at {t} ms");
            t += window;
        }
        assert_eq!(
            m.round_at(&mut s, retry),
            vec![split_of(1, SplitReason::Load)]
        );
    }

    /// The model's region boundaries, made sticky (as `--split-keys` or splits by hand
    /// make them).
    fn stick_boundaries(m: &mut Model) {
        let keys: Vec<Vec<u8>> = m
            .config
            .regions
            .values()
            .filter(|r| !r.start_key.is_empty())
            .map(|r| r.start_key.clone())
            .collect();
        m.config.apply(&Change::Stick(keys));
    }

    fn merges(d: &[Decision]) -> Vec<Decision> {
        d.iter()
            .filter(|d| d.reason == Reason::Merge || d.reason == Reason::AlignForMerge)
            .cloned()
            .collect()
    }

    #[test]
    fn sticky_boundaries_are_never_merged() {
        // Three small cold regions from `--split-keys` (or split by hand): kept.
        let mut m = Model::new(stores(3), 3, on_123, MIB);
        m.live_mut(2).leader_store = 2;
        m.live_mut(3).leader_store = 3;
        stick_boundaries(&mut m);
        let mut s = sched();
        for k in 0..10 {
            let d = m.round_at(&mut s, k * DEFAULT_MERGE_COLD_MS);
            assert_eq!(merges(&d), none(), "merged a sticky boundary");
        }
        // Nor does a new placement leader's scheduler.
        let mut s = sched();
        for k in 10..20 {
            let d = m.round_at(&mut s, k * DEFAULT_MERGE_COLD_MS);
            assert_eq!(merges(&d), none(), "merged a sticky boundary");
        }
        // The same regions with boundaries nobody meant (the scheduler's splits): merged.
        m.config.sticky.clear();
        let d = m.round_at(&mut s, 21 * DEFAULT_MERGE_COLD_MS);
        assert!(d.iter().any(|d| d.reason == Reason::Merge), "{d:?}");
    }

    #[test]
    fn a_split_of_the_scheduler_is_merged_by_the_next_placement_leader() {
        let mut m = Model::new(stores(3), 1, on_123, MIB);
        m.live_mut(1).reads_per_sec = 2 * DEFAULT_REGION_SPLIT_QPS;
        let mut s = sched();
        m.step(&mut s);
        assert_eq!(m.step(&mut s), vec![split_of(1, SplitReason::Load)]);
        assert_eq!(m.config.regions.len(), 2);
        assert!(m.config.sticky.is_empty(), "a split of ours is not sticky");
        assert_eq!(s.sticky_to_record(), Vec::<Vec<u8>>::new());
        // Placement's leader changes: a new scheduler, the same replicated configuration.
        let mut s = sched();
        m.live_mut(1).reads_per_sec = 0;
        m.live_mut(2).reads_per_sec = 0;
        let mut merged = false;
        for _ in 0..20 {
            if m.step(&mut s).iter().any(|d| d.reason == Reason::Merge) {
                merged = true;
                break;
            }
        }
        assert!(merged, "the new leader merged the cold halves");
        assert_eq!(m.config.regions.len(), 1);
    }

    #[test]
    fn a_split_by_hand_is_recorded_sticky_and_never_merged() {
        let mut m = Model::new(stores(3), 1, on_123, MIB);
        let mut s = sched();
        assert_eq!(m.step(&mut s), none());
        // Split by hand (the region admin CLI): the scheduler did not ask for it.
        m.split(1);
        let boundary = m.config.regions[&2].start_key.clone();
        m.step(&mut s);
        assert!(s.is_quiet(2, m.now_ms) && s.is_quiet(1, m.now_ms));
        assert_eq!(s.sticky_to_record(), vec![boundary.clone()]);
        // Not merged while unrecorded, long past the quiet period.
        for k in 1..=12 {
            let d = m.round_at(&mut s, k * DEFAULT_QUIET_MS);
            assert_eq!(merges(&d), none());
        }
        // The caller proposes `Command::Stick`; once the configuration has it, the
        // scheduler forgets its own note, and no leader merges it.
        m.config.apply(&Change::Stick(s.sticky_to_record()));
        assert!(m.config.sticky.contains(&boundary));
        m.round(&mut s);
        assert_eq!(s.sticky_to_record(), Vec::<Vec<u8>>::new());
        let mut s = sched();
        for k in 13..=20 {
            let d = m.round_at(&mut s, k * DEFAULT_QUIET_MS);
            assert_eq!(merges(&d), none());
        }
        // Merged by hand: the boundary is gone, and so is its stickiness.
        m.merge(2, 1);
        let r = m.config.regions[&1].clone();
        m.config.apply(&Change::Region(r));
        assert!(m.config.sticky.is_empty(), "{:?}", m.config.sticky);
    }

    #[test]
    fn small_cold_neighbours_on_the_same_stores_merge() {
        let mut m = Model::new(stores(3), 3, on_123, MIB);
        m.live_mut(3).approximate_bytes = 20 * MIB;
        // Leaders spread, so leader balance stays out of the way.
        m.live_mut(2).leader_store = 2;
        m.live_mut(3).leader_store = 3;
        let mut s = sched();
        assert_eq!(m.round_at(&mut s, 0), none());
        assert_eq!(m.round_at(&mut s, DEFAULT_MERGE_COLD_MS - 1), none());
        let d = m.round_at(&mut s, DEFAULT_MERGE_COLD_MS);
        assert_eq!(
            d,
            vec![Decision {
                region: 2,
                conf_version: 1,
                version: 1,
                action: Action::Merge { into: 1 },
                reason: Reason::Merge,
            }]
        );
    }

    #[test]
    fn small_cold_neighbours_on_different_stores_are_aligned_first() {
        let on = |i: u64| if i == 1 { vec![1, 2, 3] } else { vec![2, 3, 4] };
        let mut m = Model::new(stores(4), 2, on, MIB);
        m.live_mut(1).approximate_bytes = 2 * MIB;
        let mut s = sched();
        assert_eq!(m.step(&mut s), none());
        m.now_ms = DEFAULT_MERGE_COLD_MS;
        let d = m.step(&mut s);
        assert_eq!(
            of_region(&d, 2),
            vec![Decision {
                region: 2,
                conf_version: 1,
                version: 1,
                action: Action::Target {
                    stores: vec![1, 2, 3]
                },
                reason: Reason::AlignForMerge,
            }]
        );
        assert!(
            of_region(&d, 1).is_empty(),
            "the partner is kept still: {d:?}"
        );
        let d = m.step(&mut s);
        assert_eq!(
            of_region(&d, 2),
            vec![Decision {
                region: 2,
                conf_version: 2,
                version: 1,
                action: Action::Merge { into: 1 },
                reason: Reason::Merge,
            }]
        );
        let history = s.history();
        assert_eq!(
            history.last().map(|r| r.outcome.clone()),
            Some(Some(Outcome::Done))
        );
    }

    #[test]
    fn a_region_just_split_is_not_merged_back() {
        let mut m = Model::new(stores(3), 1, on_123, MIB);
        m.live_mut(1).reads_per_sec = 2 * DEFAULT_REGION_SPLIT_QPS;
        let mut s = sched();
        assert_eq!(m.step(&mut s), none());
        let split_ms = m.now_ms;
        assert_eq!(m.step(&mut s), vec![split_of(1, SplitReason::Load)]);
        assert_eq!(m.config.regions.len(), 2);
        // Cold at once: the halves still wait out `merge_cold_ms` after the split.
        m.live_mut(1).reads_per_sec = 0;
        m.live_mut(2).reads_per_sec = 0;
        let mut merged_at = None;
        for _ in 0..20 {
            let now = m.now_ms;
            let d = m.step(&mut s);
            if d.iter().any(|d| d.reason == Reason::Merge) {
                merged_at = Some(now);
                break;
            }
        }
        let at = merged_at.expect("the cold halves merge in the end");
        assert!(
            at >= split_ms + DEFAULT_MERGE_COLD_MS,
            "merged at {at} ms, split at {split_ms}"
        );
        assert_eq!(m.config.regions.len(), 1);
    }

    #[test]
    fn the_halves_of_a_load_split_still_warm_are_not_merged() {
        let mut m = Model::new(stores(3), 1, on_123, MIB);
        m.live_mut(1).reads_per_sec = 2 * DEFAULT_REGION_SPLIT_QPS;
        let mut s = sched();
        m.step(&mut s);
        assert_eq!(m.step(&mut s), vec![split_of(1, SplitReason::Load)]);
        // Each half below the split load, together above half of it: hysteresis.
        m.live_mut(1).reads_per_sec = DEFAULT_REGION_SPLIT_QPS / 3;
        m.live_mut(2).reads_per_sec = DEFAULT_REGION_SPLIT_QPS / 3;
        for _ in 0..30 {
            let d = m.step(&mut s);
            assert!(with_reason(&d, Reason::Merge).is_empty(), "{d:?}");
            assert!(with_reason(&d, Reason::AlignForMerge).is_empty(), "{d:?}");
            assert!(with_reason(&d, Reason::Load).is_empty(), "{d:?}");
        }
        assert_eq!(m.config.regions.len(), 2);
    }

    #[test]
    fn a_new_empty_store_is_filled_and_then_nothing_flaps() {
        let mut m = Model::new(stores(4), 12, on_123, 20 * MIB);
        m.live_mut(5).approximate_bytes = 100 * MIB;
        m.live_mut(9).approximate_bytes = 100 * MIB;
        let mut s = sched();
        let mut moves_to_4 = 0;
        for _ in 0..40 {
            for d in m.step(&mut s) {
                if let Action::Target { stores } = &d.action {
                    moves_to_4 += usize::from(stores.contains(&4));
                }
            }
        }
        assert!(moves_to_4 > 0);
        assert_eq!(m.config.regions.len(), 14, "both big regions split once");
        let load = m.config.load();
        let total: usize = load.values().sum();
        assert_eq!(total, 14 * 3);
        let mean = total as f64 / load.len() as f64;
        for (store, n) in &load {
            let off = (*n as f64 - mean).abs();
            assert!(
                off <= (mean / 10.0).max(1.0),
                "store {store} holds {n}, mean {mean}: {load:?}"
            );
        }
        for _ in 0..50 {
            let d = m.step(&mut s);
            assert_eq!(d, none(), "after convergence at {} ms", m.now_ms);
        }
        assert!(s.in_flight().is_empty());
        let counts = s.counts();
        let started = counts[&("move".to_string(), "started".to_string())];
        assert_eq!(counts[&("move".to_string(), "done".to_string())], started);
    }

    #[test]
    fn leaders_spread_over_the_voters() {
        let mut m = Model::new(stores(3), 9, on_123, 20 * MIB);
        let mut s = sched();
        for _ in 0..10 {
            m.step(&mut s);
        }
        let leaders = m.leaders();
        assert_eq!(leaders.values().copied().collect::<Vec<_>>(), vec![3, 3, 3]);
        for _ in 0..20 {
            assert_eq!(m.step(&mut s), none());
        }
    }

    #[test]
    fn a_down_store_is_repaired_and_a_slow_one_is_not() {
        let on = |i: u64| if i <= 2 { vec![1, 2, 3] } else { vec![1, 2, 5] };
        let mut m = Model::new(stores(5), 4, on, 20 * MIB);
        m.heartbeat_ago(3, Some(DEFAULT_STORE_DOWN_TIMEOUT_MS + 100_000));
        m.heartbeat_ago(5, Some(DEFAULT_STORE_DOWN_TIMEOUT_MS - 100_000));
        let mut s = sched();
        let d = m.round(&mut s);
        let repairs: Vec<(u64, Action)> = with_reason(&d, Reason::Repair)
            .into_iter()
            .map(|d| (d.region, d.action))
            .collect();
        let to_124 = Action::Target {
            stores: vec![1, 2, 4],
        };
        assert_eq!(repairs, vec![(1, to_124.clone()), (2, to_124)]);
        for one in &d {
            if let Action::Target { stores } = &one.action {
                assert!(
                    !stores.contains(&3),
                    "down store 3 given a replica: {one:?}"
                );
            }
            if let Action::TransferLeader { store } = one.action {
                assert_ne!(store, 3, "down store 3 given a leader: {one:?}");
            }
        }
        let down = s.down_stores(&m.config, &m.live_stores, m.now_ms);
        assert_eq!(down, BTreeSet::from([3]));
    }

    #[test]
    fn repair_never_shrinks_a_region_and_waits_when_most_stores_seem_down() {
        // Four stores, two Down: regions on {1,2,3} have one replacement (4), not two.
        let mut m = Model::new(stores(5), 2, |_| vec![1, 2, 3], 20 * MIB);
        m.heartbeat_ago(2, Some(DEFAULT_STORE_DOWN_TIMEOUT_MS + 1));
        m.heartbeat_ago(3, Some(DEFAULT_STORE_DOWN_TIMEOUT_MS + 1));
        let mut s = sched();
        let d = m.round(&mut s);
        for one in with_reason(&d, Reason::Repair) {
            if let Action::Target { stores } = &one.action {
                assert_eq!(
                    stores.len(),
                    3,
                    "repair shrank region {}: {one:?}",
                    one.region
                );
            }
        }
        // Three of five Down (a leader whose view is stale or cut off): no repair at all.
        let mut m = Model::new(stores(5), 2, |_| vec![1, 2, 3], 20 * MIB);
        for st in [2, 3, 4] {
            m.heartbeat_ago(st, Some(DEFAULT_STORE_DOWN_TIMEOUT_MS + 1));
        }
        let mut s = sched();
        let d = m.round(&mut s);
        assert!(
            with_reason(&d, Reason::Repair).is_empty(),
            "repaired with most stores Down: {d:?}"
        );
    }

    #[test]
    fn a_transfer_to_a_store_that_went_down_does_not_hold_up_its_repair() {
        let mut m = Model::new(stores(4), 1, |_| vec![1, 2, 3], 20 * MIB);
        let mut s = sched();
        // A leader transfer to store 3 is in flight (leaders: 1 on store 1; give store 3
        // fewer by hand-placing the decision).
        let d = Decision {
            region: 1,
            conf_version: 1,
            version: 1,
            action: Action::TransferLeader { store: 3 },
            reason: Reason::BalanceLeaders,
        };
        s.in_flight.insert(
            1,
            InFlight {
                decision: d,
                started_ms: 0,
                touches: vec![1, 3],
                partner: None,
            },
        );
        m.heartbeat_ago(3, Some(DEFAULT_STORE_DOWN_TIMEOUT_MS + 1));
        let d = m.round(&mut s);
        assert_eq!(
            with_reason(&d, Reason::Repair)
                .into_iter()
                .map(|d| d.action)
                .collect::<Vec<_>>(),
            vec![Action::Target {
                stores: vec![1, 2, 4]
            }],
            "{d:?}"
        );
        assert!(s
            .history()
            .iter()
            .any(|h| h.region == 1 && h.outcome == Some(Outcome::Superseded)));
    }

    #[test]
    fn a_leader_transfer_that_never_lands_does_not_hold_a_split_back() {
        let mut m = Model::new(stores(3), 1, on_123, MIB);
        let mut s = sched();
        s.in_flight.insert(
            1,
            InFlight {
                decision: Decision {
                    region: 1,
                    conf_version: 1,
                    version: 1,
                    action: Action::TransferLeader { store: 2 },
                    reason: Reason::BalanceLeaders,
                },
                started_ms: 0,
                touches: vec![1, 2],
                partner: None,
            },
        );
        // Hot from the start; the transfer never shows (the leader stays on store 1).
        m.live_mut(1).reads_per_sec = 2 * DEFAULT_REGION_SPLIT_QPS;
        let mut split_at = None;
        let mut t = 0;
        while t <= LEADER_TRANSFER_TIMEOUT_MS + 2 * DEFAULT_SPLIT_QPS_WINDOW_MS {
            let d = m.round_at(&mut s, t);
            if d.iter().any(|d| d.reason == Reason::Load) {
                split_at = Some(t);
                break;
            }
            t += 500;
        }
        let split_at = split_at.expect("the hot region never split");
        assert!(
            split_at >= LEADER_TRANSFER_TIMEOUT_MS,
            "split at {split_at} ms while the transfer was in flight"
        );
        assert!(s
            .history()
            .iter()
            .any(|h| h.region == 1 && h.outcome == Some(Outcome::TimedOut)));
    }

    #[test]
    fn a_store_never_heard_from_is_down_only_after_the_timeout() {
        let timeout = DEFAULT_STORE_DOWN_TIMEOUT_MS;
        assert!(!is_down(None, timeout - 1, timeout));
        assert!(is_down(None, timeout, timeout));
        assert!(!is_down(Some(10), 10 * timeout, timeout));
        assert!(is_down(Some(timeout), 0, timeout));
    }

    #[test]
    fn replicas_spread_over_zones_and_stay_there() {
        let zones = ["a", "a", "b", "b", "c", "c"];
        let all: Vec<StoreMeta> = (1..=6)
            .map(|i| store(i, Some(zones[i as usize - 1])))
            .collect();
        let zone_of = |s: u64| zones[s as usize - 1];
        let spread = |stores: &[u64]| {
            stores
                .iter()
                .map(|s| zone_of(*s))
                .collect::<BTreeSet<_>>()
                .len()
        };
        let mut m = Model::new(all, 12, on_123, 20 * MIB);
        let mut s = sched();
        for _ in 0..60 {
            let before = m.config.clone();
            for d in m.step(&mut s) {
                if let Action::Target { stores } = &d.action {
                    let was = before.regions[&d.region].stores();
                    assert!(spread(stores) >= spread(&was), "{d:?} narrows {was:?}");
                }
            }
        }
        for r in m.config.regions.values() {
            assert_eq!(
                spread(&r.stores()),
                3,
                "region {} on {:?}",
                r.id,
                r.stores()
            );
        }
        let load = m.config.load();
        assert!(load.values().all(|n| (5..=7).contains(n)), "{load:?}");
        for _ in 0..50 {
            assert_eq!(m.step(&mut s), none());
        }
    }

    #[test]
    fn operators_in_flight_per_store_are_limited() {
        let mut m = Model::new(stores(3), 10, on_123, 100 * MIB);
        let mut s = Scheduler::new(ScheduleConfig {
            max_ops_per_store: 2,
            ..ScheduleConfig::default()
        });
        let d = m.round(&mut s);
        assert_eq!(
            d,
            vec![
                split_of(1, SplitReason::Size),
                split_of(2, SplitReason::Size)
            ]
        );
        assert_eq!(m.round(&mut s), none(), "nothing done yet: no room");
        assert_eq!(s.in_flight().len(), 2);
    }

    #[test]
    fn quiet_regions_are_left_alone_except_for_repair() {
        let on = |i: u64| if i == 1 { vec![1, 2, 3] } else { vec![1, 2, 4] };
        let mut m = Model::new(stores(4), 2, on, 100 * MIB);
        m.heartbeat_ago(4, None);
        let mut s = sched();
        s.hand_changed(1, 0);
        s.hand_changed(2, 0);
        assert!(s.is_quiet(1, DEFAULT_QUIET_MS - 1) && !s.is_quiet(1, DEFAULT_QUIET_MS));
        m.now_ms = 0;
        let regions: Vec<LiveRegion> = m.live.values().cloned().collect();
        // Heard from nobody yet for the whole timeout: store 4 (never heard) is Down.
        let d = s.round(
            &m.config,
            &m.live_stores,
            &regions,
            0,
            DEFAULT_STORE_DOWN_TIMEOUT_MS,
        );
        assert_eq!(
            d,
            vec![Decision {
                region: 2,
                conf_version: 1,
                version: 1,
                action: Action::Target {
                    stores: vec![1, 2, 3]
                },
                reason: Reason::Repair,
            }]
        );
        let d = m.round_at(&mut s, DEFAULT_QUIET_MS - 1);
        assert!(of_region(&d, 1).is_empty(), "{d:?}");
        let d = m.round_at(&mut s, DEFAULT_QUIET_MS);
        assert_eq!(of_region(&d, 1), vec![split_of(1, SplitReason::Size)]);
    }

    #[test]
    fn an_epoch_moved_by_hand_makes_a_region_quiet_but_a_target_walk_does_not() {
        let mut m = Model::new(stores(4), 2, on_123, MIB);
        m.live_mut(2).leader_store = 2;
        let mut s = sched();
        m.config.regions.get_mut(&2).expect("region 2").target = Some(vec![1, 2, 4]);
        assert_eq!(m.round_at(&mut s, 0), none());
        // Region 1 split by hand (its version moved, nothing of ours in flight); region 2
        // reached the target Join set.
        let r1 = m.config.regions.get_mut(&1).expect("region 1");
        r1.version += 1;
        let r2 = m.config.regions.get_mut(&2).expect("region 2");
        r2.replicas = voters_on(2, &[1, 2, 4]);
        r2.conf_version += 1;
        r2.target = None;
        m.live_mut(1).approximate_bytes = 100 * MIB;
        m.live_mut(2).approximate_bytes = 100 * MIB;
        let d = m.round_at(&mut s, STEP_MS);
        assert!(of_region(&d, 1).is_empty(), "{d:?}");
        assert_eq!(of_region(&d, 2).len(), 1, "{d:?}");
        assert_eq!(
            of_region(&d, 2)[0].action,
            Action::Split {
                reason: SplitReason::Size
            }
        );
        assert!(s.is_quiet(1, STEP_MS) && !s.is_quiet(2, STEP_MS));
        let d = m.round_at(&mut s, STEP_MS + DEFAULT_QUIET_MS);
        assert_eq!(
            of_region(&d, 1).first().map(|d| d.action.clone()),
            Some(Action::Split {
                reason: SplitReason::Size
            })
        );
    }

    #[test]
    fn the_first_round_takes_no_epoch_for_a_hand_change() {
        let mut m = Model::new(stores(3), 1, on_123, 100 * MIB);
        m.config.regions.get_mut(&1).expect("region 1").version = 7;
        let mut s = sched();
        let d = m.round(&mut s);
        assert_eq!(d.len(), 1);
        assert_eq!(
            d[0].action,
            Action::Split {
                reason: SplitReason::Size
            }
        );
        assert_eq!(d[0].version, 7);
    }

    #[test]
    fn disabled_decides_nothing() {
        let mut m = Model::new(stores(4), 3, on_123, 100 * MIB);
        m.live_mut(2).reads_per_sec = 10 * DEFAULT_REGION_SPLIT_QPS;
        m.heartbeat_ago(3, None);
        let mut s = Scheduler::new(ScheduleConfig {
            enabled: false,
            ..ScheduleConfig::default()
        });
        for _ in 0..40 {
            assert_eq!(m.step(&mut s), none());
        }
        assert!(s.in_flight().is_empty() && s.history().is_empty());
    }

    #[test]
    fn an_operator_not_seen_done_times_out() {
        let mut m = Model::new(stores(3), 1, on_123, 100 * MIB);
        let mut s = sched();
        assert_eq!(m.round_at(&mut s, 0), vec![split_of(1, SplitReason::Size)]);
        assert_eq!(m.round_at(&mut s, DEFAULT_OP_TIMEOUT_MS - 1), none());
        assert_eq!(s.in_flight().len(), 1);
        assert!(s.history().is_empty());
        // Timed out, then left alone for another timeout before it is tried again.
        assert_eq!(m.round_at(&mut s, DEFAULT_OP_TIMEOUT_MS), none());
        assert_eq!(
            s.history(),
            vec![OperatorRecord {
                region: 1,
                action: Action::Split {
                    reason: SplitReason::Size
                },
                reason: Reason::Size,
                started_ms: 0,
                finished_ms: Some(DEFAULT_OP_TIMEOUT_MS),
                outcome: Some(Outcome::TimedOut),
            }]
        );
        assert!(s.in_flight().is_empty());
        assert_eq!(
            s.counts()[&("split".to_string(), "timed-out".to_string())],
            1
        );
        assert_eq!(
            m.round_at(&mut s, 2 * DEFAULT_OP_TIMEOUT_MS),
            vec![split_of(1, SplitReason::Size)]
        );
    }

    #[test]
    fn history_is_bounded() {
        let regions = 300;
        let mut m = Model::new(stores(3), regions, on_123, 100 * MIB);
        let mut s = Scheduler::new(ScheduleConfig {
            max_ops_per_store: 10_000,
            ..ScheduleConfig::default()
        });
        let mut failed = 0;
        let mut last = 0;
        for round in 0..40 {
            if failed == regions {
                break;
            }
            let d = m.round_at(&mut s, round * 1_000);
            assert!(d.len() <= MAX_DECISIONS_PER_ROUND);
            for one in d
                .iter()
                .filter(|d| matches!(d.action, Action::Split { .. }))
            {
                s.failed(one.region, "x".repeat(2 * MAX_WHY_BYTES), round * 1_000);
                failed += 1;
                last = one.region;
            }
        }
        assert_eq!(failed, regions);
        let history = s.history();
        assert_eq!(history.len(), HISTORY_OPS);
        assert_eq!(history.last().map(|r| r.region), Some(last));
        let Some(Outcome::Failed(why)) = &history[0].outcome else {
            panic!("{:?}", history[0]);
        };
        assert_eq!(why.len(), MAX_WHY_BYTES);
        assert_eq!(
            s.counts()[&("split".to_string(), "failed".to_string())],
            regions
        );
    }

    /// Region bytes each store holds or is meant to hold in the model.
    fn bytes_per_store(m: &Model) -> BTreeMap<u64, u64> {
        let mut b: BTreeMap<u64, u64> = m.config.stores.keys().map(|&s| (s, 0)).collect();
        for r in m.config.regions.values() {
            let size = m.live.get(&r.id).map_or(0, |l| l.approximate_bytes);
            for s in r.wanted() {
                *b.entry(s).or_insert(0) += size;
            }
        }
        b
    }

    /// Steps until a round decides nothing, at most `rounds`; then `quiet` more rounds must
    /// decide nothing either. Returns the rounds it took.
    fn converge(m: &mut Model, s: &mut Scheduler, rounds: usize, quiet: usize) -> usize {
        let mut taken = None;
        for i in 0..rounds {
            if m.step(s).is_empty() && s.in_flight().is_empty() {
                taken = Some(i);
                break;
            }
        }
        let taken = taken.unwrap_or_else(|| panic!("still deciding after {rounds} rounds"));
        for _ in 0..quiet {
            let d = m.step(s);
            assert_eq!(d, none(), "after convergence at {} ms", m.now_ms);
        }
        taken
    }

    #[test]
    fn a_store_with_as_many_replicas_but_far_more_bytes_gives_replicas_away() {
        // One replica per region, four regions a store: store 1's are 48 MiB, the others'
        // 10 MiB. Counts are even; bytes are not.
        let mut m = Model::new(stores(3), 12, |i| vec![(i - 1) % 3 + 1], 10 * MIB);
        for i in (1..=12).filter(|i| (i - 1) % 3 == 0) {
            m.live_mut(i).approximate_bytes = 48 * MIB;
        }
        assert_eq!(m.config.load(), BTreeMap::from([(1, 4), (2, 4), (3, 4)]));
        let mut s = sched();
        let d = m.round(&mut s);
        let moves = with_reason(&d, Reason::BalanceReplicas);
        assert!(
            !moves.is_empty(),
            "store 1 holds 192 MiB, the others 40: {d:?}"
        );
        // The first move is store 1's (later ones in the round may even out the stores it
        // gave to).
        assert_eq!(
            m.config.regions[&moves[0].region].stores(),
            vec![1],
            "{d:?}"
        );
        for one in &d {
            m.apply(one);
        }
        converge(&mut m, &mut s, 40, 50);
        let bytes = bytes_per_store(&m);
        let load = m.config.load();
        assert!(load[&1] < 4, "store 1 gave replicas away: {load:?}");
        assert!(
            bytes[&1] <= 2 * bytes[&2].max(bytes[&3]),
            "store 1 holds {bytes:?} bytes"
        );
    }

    #[test]
    fn a_small_store_gets_fewer_bytes() {
        // Four stores, even counts and bytes, but store 4 has a quarter of the capacity.
        let layouts = [vec![1, 2, 3], vec![1, 2, 4], vec![1, 3, 4], vec![2, 3, 4]];
        let mut m = Model::new(
            stores(4),
            24,
            |i| layouts[(i as usize - 1) % 4].clone(),
            20 * MIB,
        );
        for (id, st) in m.config.stores.iter_mut() {
            st.capacity = if *id == 4 { 100 << 30 } else { 400 << 30 };
        }
        let before = bytes_per_store(&m);
        assert!(before.values().all(|b| *b == before[&1]), "{before:?}");
        let mut s = sched();
        converge(&mut m, &mut s, 60, 50);
        let bytes = bytes_per_store(&m);
        let others = (bytes[&1] + bytes[&2] + bytes[&3]) / 3;
        assert!(
            bytes[&4] * 10 <= others * 6,
            "the small store holds {} MiB, the others {} MiB each",
            bytes[&4] / MIB,
            others / MIB
        );
        assert!(bytes[&4] > 0, "{bytes:?}");
        // Replicas stay on distinct stores.
        for r in m.config.regions.values() {
            assert_eq!(r.wanted().len(), 3, "{r:?}");
        }
    }

    /// A deterministic stream of numbers for the shapes below.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    #[test]
    fn uneven_sizes_and_capacities_converge_and_nothing_flaps() {
        for seed in 1..=12u64 {
            let mut rng = Lcg(seed);
            let n_stores = 4 + rng.below(3);
            let zoned = seed % 2 == 0;
            let zones = ["a", "b", "c"];
            let metas: Vec<StoreMeta> = (1..=n_stores)
                .map(|id| {
                    let zone = zoned.then(|| zones[(id as usize - 1) % 3]);
                    let mut st = store(id, zone);
                    // 0 = unknown (the mean of the known ones is assumed).
                    st.capacity = [0, 100, 200, 400][rng.below(4) as usize] << 30;
                    st
                })
                .collect();
            let regions = 20 + rng.below(20);
            // Everything on the first three stores, as before stores joined.
            let mut m = Model::new(metas, regions, on_123, 10 * MIB);
            for i in 1..=regions {
                // 9..63 MiB: above the merge size, below the split size.
                m.live_mut(i).approximate_bytes = (9 + rng.below(55)) * MIB;
                m.live_mut(i).leader_store = 1 + rng.below(3);
            }
            let mut s = sched();
            let rounds = converge(&mut m, &mut s, 200, 50);
            assert!(rounds > 0, "seed {seed}: nothing moved");
            assert!(s.in_flight().is_empty(), "seed {seed}");
            let counts = s.counts();
            let started = counts[&("move".to_string(), "started".to_string())];
            assert_eq!(
                counts[&("move".to_string(), "done".to_string())],
                started,
                "seed {seed}"
            );
            let load = m.config.load();
            assert!(
                load.values().all(|n| *n > 0),
                "seed {seed}: a store left empty: {load:?}"
            );
            for r in m.config.regions.values() {
                let w = r.wanted();
                assert_eq!(w.len(), 3, "seed {seed}: {r:?}");
                if zoned {
                    let z: BTreeSet<String> = w
                        .iter()
                        .map(|s| m.config.stores[s].labels[ZONE_LABEL].clone())
                        .collect();
                    assert_eq!(z.len(), 3, "seed {seed}: {r:?} not over three zones");
                }
            }
        }
    }

    #[test]
    fn the_placement_group_is_never_split_or_merged() {
        let mut m = Model::new(stores(3), 1, on_123, MIB);
        let placement = crate::hosted_group_id();
        m.config.regions.insert(
            placement,
            RegionLayout {
                id: placement,
                start_key: Vec::new(),
                end_key: None,
                conf_version: 1,
                version: 1,
                replicas: voters_on(1, &[1, 2, 3]),
                target: None,
            },
        );
        m.live.insert(
            placement,
            LiveRegion {
                id: placement,
                leader_store: 2,
                approximate_bytes: 10 * DEFAULT_REGION_MAX_BYTES,
                reads_per_sec: 10 * DEFAULT_REGION_SPLIT_QPS,
                ..LiveRegion::default()
            },
        );
        let mut s = sched();
        for _ in 0..20 {
            let d = m.step(&mut s);
            assert!(of_region(&d, placement).is_empty(), "{d:?}");
        }
    }

    #[test]
    fn a_full_store_gives_replicas_and_a_nearly_full_one_takes_none() {
        let layouts = [vec![1, 2, 3], vec![1, 2, 4], vec![1, 3, 4], vec![2, 3, 4]];
        let mut m = Model::new(stores(4), 4, |i| layouts[i as usize - 1].clone(), 20 * MIB);
        let used_percent = [90, 10, 50, 75];
        for (i, st) in m.live_stores.iter_mut().enumerate() {
            st.capacity_bytes = 100 * MIB;
            st.used_bytes = used_percent[i] * MIB;
        }
        let mut s = sched();
        let d = m.round(&mut s);
        let moves = with_reason(&d, Reason::BalanceReplicas);
        assert!(
            !moves.is_empty(),
            "counts are even, yet store 1 is 90 % full: {d:?}"
        );
        for one in &moves {
            let Action::Target { stores } = &one.action else {
                panic!("{one:?}");
            };
            let before = m.config.regions[&one.region].stores();
            assert!(before.contains(&1) && !stores.contains(&1), "{one:?}");
            assert!(
                !stores.contains(&4) || before.contains(&4),
                "store 4 is 75 % full: {one:?}"
            );
        }
    }
}
