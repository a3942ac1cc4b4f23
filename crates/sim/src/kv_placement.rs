//! The simulator's placement traffic: what `raftkv server`'s heartbeat loop and a user's
//! `raftkv server --join`, `store drain` and `region move` do, against the real placement
//! state machine that the simulated stores host as one more Raft group.
//!
//! - **Heartbeats** ([`Sim::placement_heartbeats`], every [`HEARTBEAT_EVERY`]): each live
//!   store that can reach placement's leader reports the regions it leads; placement decides
//!   with the server's own rule ([`placement::plan_report`]): a newer descriptor is proposed
//!   to placement's log (`ReportRegion`), and a region with a target gets its next replica
//!   change, carried out by its leader under the epoch it was decided for.
//! - **Verbs** ([`Sim::placement_verb`], drawn on fault events from their own stream): the
//!   spare store joins (it runs from the start, empty, outside placement's first
//!   configuration, and must get the next store id), a store is drained, a region (the
//!   placement group too) is moved to random stores.
//! - **Settled** ([`Sim::placement_settled`]): after healing, placement must come to know
//!   every region as the stores have it, reach every target, and remove every drained store.
//!
//! - **Scheduler** (half of the placement seeds, [`SimScheduler`]): after each heartbeat
//!   round placement's leader runs the server's scheduler ([`placement::scheduler`]) with
//!   small thresholds drawn per seed, so regions split by size and by load, merge, move
//!   and change leaders all run long under every fault; its decisions are carried out as a
//!   server does (a target proposed to placement as `Move`, a split, merge or leader
//!   transfer by the region's leader under the decided epoch; a refusal is reported back
//!   as `failed`; splits by hand it saw are recorded sticky with `Stick`). Stores rotate their load samples each round, and a replica placement
//!   names removed (an older conf version, no replica on that store) is destroyed
//!   (`Store::destroy_stale_replica`), as the server's heartbeat does.
//!
//! Placement is read from its leader's applied state (the replica that leads with the
//! highest term and has applied all it knows committed).
//! The routing of the workload does not use placement (see `Sim::refresh_routes`), so a
//! wrong placement decision shows up as a safety failure of the stores, not as a masked one.

use super::{Micros, Sim, MS};
use placement::scheduler::{Action, Decision, ScheduleConfig, Scheduler, SplitReason};
use placement::{
    Command, Config, LiveRegion, LiveStore, Operator, PlacementState, RegionLayout, StoreAddrs,
    StoreState,
};
use raft::{Role, SplitMix64};
use std::collections::BTreeMap;
use store::{RegionEpoch, ReplicaChange, StoreError, StoreId, PLACEMENT_REGION};

/// How often every store reports to placement (the server's default is 2 s; shorter here,
/// so that a run's minute sees many rounds).
pub(super) const HEARTBEAT_EVERY: u64 = 500 * MS;

/// Most drains proposed in one run (each leaves the cluster one store smaller for good).
const MAX_DRAINS: u64 = 2;

/// The join token of the spare store (any fixed number: a retried Join must get the same id).
const SPARE_TOKEN: u64 = 0x5350_4152_4531;

/// Most splits the scheduler carries out in one run: regions multiply, each costs a few KiB
/// of snapshot (the simulator's own random splits stop at 12 too).
const MAX_SCHEDULER_SPLITS: u64 = 24;

/// Placement's leader's scheduler in a simulation: the server's [`Scheduler`] and what the
/// server's heartbeat handler keeps around it (when each store was last heard from, each
/// region's request counters at the previous round, for its rates).
pub(super) struct SimScheduler {
    cfg: ScheduleConfig,
    sched: Scheduler,
    /// The store (index) whose placement leadership this scheduler belongs to: a new leader
    /// starts a fresh one, as a server does.
    leader: Option<usize>,
    /// When this leadership's view started (for stores never heard from).
    since: Micros,
    /// Per store index, when its heartbeat last reached the leader.
    last_beat: Vec<Option<Micros>>,
    /// Per region, the leader's cumulative (reads, writes) at the previous round and when.
    counts: BTreeMap<u64, (u64, u64, Micros)>,
}

impl SimScheduler {
    /// Small thresholds drawn from the seed's own stream, so that the scheduler splits,
    /// merges and moves a lot within a run.
    pub(super) fn new(seed: u64, stores: usize) -> SimScheduler {
        let mut rng = SplitMix64::new(seed ^ 0x7363_6865_6475);
        let cfg = ScheduleConfig {
            enabled: true,
            replicas: 3,
            region_max_bytes: 32 + rng.below(512),
            region_split_qps: 2 + rng.below(30),
            split_qps_window_ms: 1_000 + rng.below(2_000),
            merge_cold_ms: 2_000 + rng.below(4_000),
            store_down_timeout_ms: 3_000 + rng.below(6_000),
            quiet_ms: 2_000 + rng.below(8_000),
            max_ops_per_store: 1 + rng.below(4) as usize,
            op_timeout_ms: 5_000 + rng.below(10_000),
        };
        SimScheduler {
            sched: Scheduler::new(cfg.clone()),
            cfg,
            leader: None,
            since: 0,
            last_beat: vec![None; stores],
            counts: BTreeMap::new(),
        }
    }

    pub(super) fn describe(&self) -> String {
        format!("{:?}", self.cfg)
    }
}

/// `per` requests over `elapsed` microseconds, per second.
fn per_sec(per: u64, elapsed: Micros) -> u64 {
    if elapsed == 0 {
        return 0;
    }
    u64::try_from(u128::from(per) * 1_000_000 / u128::from(elapsed)).unwrap_or(u64::MAX)
}

impl Sim {
    /// The scheduler's round on placement's leader `pl` (after a heartbeat round that read
    /// `config`): the live view from the stores that reach the leader, a scheduler round,
    /// its decisions carried out, and removed replicas destroyed.
    fn scheduler_round(&mut self, pl: usize, config: &Config) {
        let Some(mut ss) = self.scheduler.take() else {
            return;
        };
        let now = self.now;
        if ss.leader != Some(pl) {
            ss.sched = Scheduler::new(ss.cfg.clone());
            ss.leader = Some(pl);
            ss.since = now;
            ss.last_beat.iter_mut().for_each(|b| *b = None);
            ss.counts.clear();
        }
        self.out.scheduler_rounds += 1;
        let mut live: Vec<LiveRegion> = Vec::new();
        for i in 0..self.stores.len() {
            if self.paused(i) || !self.links[i][pl] || !self.links[pl][i] {
                continue;
            }
            let me = StoreId(i as u64 + 1);
            let Some(s) = self.stores[i].store.as_mut() else {
                continue;
            };
            s.rotate_load_samples();
            ss.last_beat[i] = Some(now);
            let status = s.status();
            for rs in &status {
                if rs.role != Role::Leader || rs.region.is_placement() {
                    continue;
                }
                let id = rs.region.id.0;
                let (r0, w0, t0) = ss
                    .counts
                    .get(&id)
                    .copied()
                    .unwrap_or((rs.reads, rs.writes, now));
                ss.counts.insert(id, (rs.reads, rs.writes, now));
                live.push(LiveRegion {
                    id,
                    leader_store: me.0,
                    approximate_keys: rs.approximate.keys,
                    approximate_bytes: rs.approximate.bytes,
                    reads_per_sec: per_sec(rs.reads.saturating_sub(r0), now - t0),
                    writes_per_sec: per_sec(rs.writes.saturating_sub(w0), now - t0),
                });
            }
            // The server's heartbeat: replicas placement names removed are destroyed.
            let mut destroyed = Vec::new();
            for rs in &status {
                if rs.region.peer_on(me).is_none() {
                    continue;
                }
                let Some(held) = config.regions.get(&rs.region.id.0) else {
                    continue;
                };
                if held.conf_version > rs.region.epoch.conf_version
                    && !held.stores().contains(&me.0)
                {
                    match s.destroy_stale_replica(rs.region.id, &held.to_region()) {
                        Ok(true) => {
                            self.out.stale_replicas_destroyed += 1;
                            destroyed.push(rs.region.id.0);
                        }
                        Ok(false) => {}
                        Err(e @ StoreError::Storage(_)) => {
                            self.scheduler = Some(ss);
                            self.storage_failed(i, e);
                            return;
                        }
                        Err(_) => {}
                    }
                }
            }
            for id in destroyed {
                self.trace(|| {
                    format!(
                        "scheduler: s{} destroyed its removed replica of {id}",
                        i + 1
                    )
                });
            }
        }
        ss.counts.retain(|id, _| config.regions.contains_key(id));
        let stores: Vec<LiveStore> = config
            .stores
            .keys()
            .map(|&id| LiveStore {
                id,
                up: true,
                last_heartbeat_ms_ago: ss
                    .last_beat
                    .get(id as usize - 1)
                    .copied()
                    .flatten()
                    .map(|t| (now - t) / MS),
                ..LiveStore::default()
            })
            .collect();
        let leaders: BTreeMap<u64, usize> = live
            .iter()
            .map(|l| (l.id, l.leader_store as usize - 1))
            .collect();
        let decisions = ss
            .sched
            .round(config, &stores, &live, now / MS, (now - ss.since) / MS);
        for d in decisions {
            if let Err(why) = self.carry_out_decision(pl, &leaders, &d) {
                self.out.scheduler_refused += 1;
                self.trace(|| format!("scheduler: {d:?} refused: {why}"));
                ss.sched.failed(d.region, why, now / MS);
            }
        }
        // Splits by hand (the workload's random splits) it saw: recorded sticky, as the
        // server does, so no placement leader merges them away.
        let keys = ss.sched.sticky_to_record();
        if !keys.is_empty() {
            let cmd = Command::Stick { keys };
            if self.propose_placement(pl, &cmd) {
                self.trace(|| format!("scheduler: {cmd:?}"));
                self.drive(pl);
            }
        }
        self.scheduler = Some(ss);
    }

    /// Carries out one decision as a server does (see the module comment).
    fn carry_out_decision(
        &mut self,
        pl: usize,
        leaders: &BTreeMap<u64, usize>,
        d: &Decision,
    ) -> Result<(), String> {
        let region = raft::GroupId(d.region);
        let epoch = RegionEpoch {
            conf_version: d.conf_version,
            version: d.version,
        };
        if let Action::Target { stores } = &d.action {
            let cmd = Command::Move {
                region: d.region,
                stores: stores.clone(),
            };
            if !self.propose_placement(pl, &cmd) {
                return Err("placement refused the move".into());
            }
            self.out.scheduler_moves += 1;
            self.trace(|| format!("scheduler: {cmd:?}"));
            self.drive(pl);
            return Ok(());
        }
        let Some(&i) = leaders.get(&d.region) else {
            return Err("no leader reported".into());
        };
        if matches!(d.action, Action::Split { .. })
            && self.out.scheduler_splits >= MAX_SCHEDULER_SPLITS
        {
            return Err("the simulation's split budget is spent".into());
        }
        let Some(s) = self.stores[i].store.as_mut() else {
            return Err("the leader's store is down".into());
        };
        let result = match &d.action {
            Action::Split { reason } => {
                let key = match reason {
                    SplitReason::Size => s.size_split_key(region),
                    SplitReason::Load => s.load_split_key(region),
                };
                key.and_then(|k| s.propose_split(region, epoch, &k).map(|_| ()))
            }
            Action::Merge { into } => s
                .propose_merge(region, epoch, raft::GroupId(*into))
                .map(|_| ()),
            Action::TransferLeader { store } => s.transfer_leader(region, StoreId(*store)),
            Action::Target { .. } => unreachable!("handled above"),
        };
        match result {
            Ok(()) => {
                match d.action {
                    Action::Split { .. } => self.out.scheduler_splits += 1,
                    Action::Merge { .. } => self.out.scheduler_merges += 1,
                    _ => self.out.scheduler_transfers += 1,
                }
                self.trace(|| format!("scheduler: {:?} on s{}", d, i + 1));
                self.drive(i);
                Ok(())
            }
            Err(e @ StoreError::Storage(_)) => {
                let why = e.to_string();
                self.storage_failed(i, e);
                Err(why)
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// The store whose placement replica leads with the highest term (among running
    /// stores) and has applied all it knows committed, and that replica's state. Not "under
    /// a lease": a leader that sent a transfer's TimeoutNow forfeits its lease for the rest
    /// of its term (the message may arrive late), and when that message is lost it stays
    /// leader without one (seed 57), serving through ReadIndex as the server does.
    pub(super) fn placement_leader(&self) -> Option<(usize, &PlacementState)> {
        let mut best: Option<(u64, usize)> = None;
        for (i, st) in self.stores.iter().enumerate() {
            let Some(s) = st.store.as_ref().filter(|_| !self.paused(i)) else {
                continue;
            };
            let Some(rs) = s.status().into_iter().find(|rs| rs.region.is_placement()) else {
                continue;
            };
            if rs.role == Role::Leader
                && rs.applied >= rs.commit
                && best.is_none_or(|(t, _)| rs.term.0 > t)
            {
                best = Some((rs.term.0, i));
            }
        }
        let (_, i) = best?;
        let s = self.stores[i].store.as_ref()?;
        match s.state_machine(PLACEMENT_REGION)? {
            placement::Hosted::Placement(p) => Some((i, p)),
            placement::Hosted::Kv(_) => {
                panic!("store {} hosts kv state in the placement group", i + 1)
            }
        }
    }

    /// Proposes a placement verb on store `at`'s replica of the placement group (its
    /// answer is not awaited: every verb is idempotent, and the next round sees its effect).
    fn propose_placement(&mut self, at: usize, cmd: &Command) -> bool {
        let Some(s) = self.stores[at].store.as_mut() else {
            return false;
        };
        let Some(epoch) = s.region(PLACEMENT_REGION).map(|r| r.epoch) else {
            return false;
        };
        let data = bytes::Bytes::from(placement::encode_command(cmd));
        s.propose(PLACEMENT_REGION, epoch, b"", data).is_ok()
    }

    /// One heartbeat round (see the module comment). A store cut off from placement's
    /// leader (either way: the answer must come back) reports nothing.
    pub(super) fn placement_heartbeats(&mut self) {
        let Some((pl, state)) = self.placement_leader() else {
            return;
        };
        let config = state.latest().clone();
        self.out.placement_rounds += 1;
        // A joined store must have got the spare's id: the simulator knows no other.
        if let Some(&max) = config.stores.keys().max() {
            assert!(
                max as usize <= self.stores.len(),
                "placement gave out store id {max}, but the simulation has {} stores: {:?}",
                self.stores.len(),
                config.stores.keys().collect::<Vec<_>>()
            );
        }
        let mut reports = Vec::new();
        let mut operators = Vec::new();
        for i in 0..self.stores.len() {
            if self.paused(i) || !self.links[i][pl] || !self.links[pl][i] {
                continue;
            }
            let Some(s) = self.stores[i].store.as_ref() else {
                continue;
            };
            let me = i as u64 + 1;
            for rs in s.status() {
                if rs.role != Role::Leader {
                    continue;
                }
                let layout = RegionLayout::from_region(&rs.region);
                let Some(plan) = placement::plan_report(&config, &layout, me) else {
                    self.out.placement_reports_stale += 1;
                    continue;
                };
                if plan.record {
                    // Like the server: the operator waits until the report is recorded.
                    reports.push(layout);
                } else if let Some(op) = plan.operator {
                    operators.push((i, rs.region.id, rs.region.epoch, op));
                }
            }
        }
        for region in reports {
            let id = region.id;
            if self.propose_placement(pl, &Command::ReportRegion { region }) {
                self.out.placement_reports += 1;
                self.trace(|| format!("placement: region {id} reported"));
            }
        }
        self.drive(pl);
        for (i, region, epoch, op) in operators {
            self.carry_out(i, region, epoch, op);
        }
        if self.scheduler.is_some() {
            self.scheduler_round(pl, &config);
        }
    }

    /// Store `i`'s leader of `region` takes `op`, only while the region has `epoch`.
    fn carry_out(&mut self, i: usize, region: store::RegionId, epoch: RegionEpoch, op: Operator) {
        let Some(s) = self.stores[i].store.as_mut() else {
            return;
        };
        let done = match op {
            Operator::TransferLeader { store } => s.transfer_leader(region, StoreId(store)).is_ok(),
            Operator::AddLearner { store } => s
                .propose_replica_change(region, epoch, ReplicaChange::AddLearner(StoreId(store)))
                .is_ok(),
            Operator::Promote { store } => s
                .propose_replica_change(region, epoch, ReplicaChange::Promote(StoreId(store)))
                .is_ok(),
            Operator::Remove { store } => s
                .propose_replica_change(region, epoch, ReplicaChange::Remove(StoreId(store)))
                .is_ok(),
        };
        if done {
            self.out.placement_operators += 1;
            self.trace(|| format!("placement: region {} {op:?} on s{}", region.0, i + 1));
            self.drive(i);
        }
    }

    /// A verb a user could send (see the module comment), proposed on placement's leader.
    pub(super) fn placement_verb(&mut self) {
        let Some((pl, state)) = self.placement_leader() else {
            return;
        };
        let config = state.latest().clone();
        let cluster_id = state.cluster_id();
        let replicas = state.replicas() as usize;
        let up: Vec<u64> = config
            .stores
            .values()
            .filter(|s| s.state == StoreState::Up)
            .map(|s| s.id)
            .collect();
        let spare = self.stores.len() as u64;
        let cmd = match self.placement_rng.below(4) {
            0 if self.spare && !config.stores.contains_key(&spare) => Command::Join {
                token: SPARE_TOKEN,
                cluster_id,
                addrs: StoreAddrs {
                    peer: format!("sim-store-{spare}"),
                    client: format!("sim-client-{spare}"),
                    resp: String::new(),
                },
                labels: Default::default(),
                capacity: 0,
            },
            1 if self.out.placement_drains < MAX_DRAINS && up.len() > replicas => {
                let store = up[self.placement_rng.below(up.len() as u64) as usize];
                Command::Drain { store }
            }
            _ if up.len() >= replicas && !config.regions.is_empty() => {
                let ids: Vec<u64> = config.regions.keys().copied().collect();
                let region = ids[self.placement_rng.below(ids.len() as u64) as usize];
                let mut pool = up.clone();
                let mut stores = Vec::new();
                while stores.len() < replicas {
                    let k = self.placement_rng.below(pool.len() as u64) as usize;
                    stores.push(pool.swap_remove(k));
                }
                Command::Move { region, stores }
            }
            _ => return,
        };
        if !self.propose_placement(pl, &cmd) {
            return;
        }
        match &cmd {
            Command::Join { .. } => self.out.placement_joins += 1,
            Command::Drain { .. } => self.out.placement_drains += 1,
            _ => self.out.placement_moves += 1,
        }
        self.trace(|| format!("placement: {cmd:?} on s{}", pl + 1));
        self.drive(pl);
    }

    /// Every store's replica of the placement group (for a failure report).
    pub(super) fn placement_report(&self) -> String {
        let mut out = Vec::new();
        for (i, st) in self.stores.iter().enumerate() {
            let what = match st.store.as_ref() {
                None => "down".to_string(),
                Some(s) => s
                    .describe_replica(PLACEMENT_REGION)
                    .unwrap_or_else(|| "no replica".into()),
            };
            out.push(format!("s{}: {what}", i + 1));
        }
        format!("placement group: {}", out.join("; "))
    }

    /// `Ok(())` once placement knows every region as the routing table has it (same epoch,
    /// same replicas; nothing else), every target is reached (no learner left) and no store
    /// is still draining; else what is not there yet. The routing table must be fresh
    /// ([`Sim::refresh_routes`]).
    pub(super) fn placement_settled(&self) -> Result<(), String> {
        let Some((pl, state)) = self.placement_leader() else {
            return Err("placement has no leader".into());
        };
        let config = state.latest();
        let mut actual: Vec<RegionLayout> =
            self.regions.iter().map(RegionLayout::from_region).collect();
        if let Some(r) = self.stores[pl]
            .store
            .as_ref()
            .and_then(|s| s.region(PLACEMENT_REGION))
        {
            actual.push(RegionLayout::from_region(r));
        }
        for r in &actual {
            let Some(held) = config.regions.get(&r.id) else {
                return Err(format!("placement does not know region {}", r.id));
            };
            if held.epoch() != r.epoch() || held.replicas != r.replicas {
                return Err(format!(
                    "placement holds region {} as {held:?}, the stores have {r:?}",
                    r.id
                ));
            }
            if let Some(t) = &held.target {
                let mut on: Vec<u64> = r.replicas.iter().map(|p| p.store).collect();
                on.sort_unstable();
                if *t != on || r.replicas.iter().any(|p| p.learner) {
                    return Err(format!(
                        "region {} is on {:?}, its target is {t:?}",
                        r.id, r.replicas
                    ));
                }
            }
        }
        if config.regions.len() != actual.len() {
            let known: Vec<u64> = actual.iter().map(|r| r.id).collect();
            return Err(format!(
                "placement holds regions the stores no longer have: {:?} (the stores have {known:?})",
                config.regions.keys().filter(|id| !known.contains(id)).collect::<Vec<_>>()
            ));
        }
        if let Some(s) = config
            .stores
            .values()
            .find(|s| s.state == StoreState::Draining)
        {
            return Err(format!("store {} is still draining", s.id));
        }
        Ok(())
    }
}
