//! Swarm testing: each seed picks its own mix of faults (loss, duplication, delay,
//! partitions of every shape, crashes with torn writes, clock drift) and runs a safety phase
//! with faults followed by a liveness phase that heals everything.

use crate::cluster::{unit, Cluster, ClusterOptions, Micros, NetFaults, MS, SECOND};
use crate::partition::{shape_links, Shape};
use bytes::Bytes;
use raft::{ConfChange, ConfChangeItem, ConfChangeKind, LogIndex, NodeId, ReadMode, SplitMix64};

#[derive(Clone, Debug)]
pub struct SwarmOptions {
    pub seed: u64,
    /// Virtual seconds of the safety phase (faults active).
    pub sim_seconds: u64,
    /// Virtual time allowed after healing for a leader to be elected and a proposal to
    /// commit on every node.
    pub liveness_bound: Micros,
    pub record_trace: bool,
    pub print_trace: bool,
    /// Asynchronous persistence (`ClusterOptions::async_persist`); `None`: chosen by the
    /// seed (half of them).
    pub async_persist: Option<bool>,
    /// A deliberate bug for testing the convergence check: after healing, one member's
    /// state machine gets a register the others never wrote. Runs with it must fail.
    pub mutant_divergent_member: bool,
}

impl SwarmOptions {
    pub fn new(seed: u64) -> SwarmOptions {
        SwarmOptions {
            seed,
            sim_seconds: 20,
            liveness_bound: 10 * SECOND,
            record_trace: false,
            print_trace: false,
            async_persist: None,
            mutant_divergent_member: false,
        }
    }
}

/// What one seed did.
#[derive(Clone, Debug, Default)]
pub struct SwarmOutcome {
    pub seed: u64,
    pub nodes: usize,
    pub virtual_micros: u64,
    pub events_hash: u64,
    pub messages: u64,
    pub proposals_accepted: u64,
    pub committed: u64,
    pub crashes: u64,
    /// Crashes in the middle of a write (part of it on the disk).
    pub torn_writes: u64,
    pub restarts: u64,
    pub messages_dropped: u64,
    pub messages_duplicated: u64,
    /// Client writes acknowledged (applied with their payload) and reads answered.
    pub writes_acknowledged: u64,
    pub partitions: u64,
    pub conf_changes: u64,
    pub transfers: u64,
    pub snapshots: u64,
    pub snapshots_installed: u64,
    pub reads_completed: u64,
    pub history_ops: usize,
    pub checks: u64,
    pub fault_mix: String,
    /// Which kinds the seed turned on (swarm testing), in `fault_counts` order.
    pub enabled: SwarmKinds,
    pub trace: Vec<String>,
}

/// The fault kinds a core seed turns on or off.
#[derive(Clone, Copy, Debug, Default)]
pub struct SwarmKinds {
    pub loss: bool,
    pub duplication: bool,
    pub crashes: bool,
    pub torn_writes: bool,
    pub partitions: bool,
    pub membership: bool,
    pub transfers: bool,
    pub snapshots: bool,
    pub drop_rate: f64,
    pub dup_rate: f64,
}

impl SwarmOutcome {
    /// Each fault kind this seed can inject: whether it was on, how often it fired, and how
    /// often it was expected to given its chances (messages lost and duplicated; the other
    /// kinds must fire at least once over the seeds that turned them on).
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
            F::new("torn writes", k.torn_writes, self.torn_writes, None),
            F::new("partitions", k.partitions, self.partitions, None),
            F::new("conf changes", k.membership, self.conf_changes, None),
            F::new("leader transfers", k.transfers, self.transfers, None),
            F::new("snapshots", k.snapshots, self.snapshots, None),
            F::new(
                "snapshots installed",
                k.snapshots,
                self.snapshots_installed,
                None,
            ),
        ]
    }
}

/// Applies a partition shape (see [`crate::partition`]) to the cluster's links.
fn apply_shape(c: &mut Cluster, shape: Shape, rng: &mut SplitMix64) {
    let links = shape_links(c.n(), shape, rng);
    if shape == Shape::OneWay {
        // One-way cuts start from a healed network (disconnected nodes plugged back in).
        c.heal();
    }
    for (from, row) in links.iter().enumerate() {
        for (to, &up) in row.iter().enumerate() {
            c.set_link(from, to, up);
        }
    }
}

/// Runs one seed: safety phase with faults, then the liveness phase. Returns the outcome,
/// or a description of the failure (the caller prints the seed and the replay command).
pub fn run_seed(opts: &SwarmOptions) -> Result<SwarmOutcome, String> {
    let mut rng = SplitMix64::new(opts.seed ^ 0x5157_4152_4d00);
    let voters = if rng.below(3) == 0 { 5 } else { 3 };
    // Two spare nodes that membership changes can add (as learners, then voters).
    let nodes = voters + 2;
    let mut co = ClusterOptions::new(nodes, opts.seed);
    co.initial_voters = Some((1..=voters as u64).collect());
    // Swarm: each seed enables a random subset of faults with random intensities.
    let lossy = rng.below(2) == 0;
    let net = NetFaults {
        drop_rate: if lossy { unit(&mut rng) * 0.3 } else { 0.0 },
        dup_rate: if rng.below(2) == 0 {
            unit(&mut rng) * 0.1
        } else {
            0.0
        },
        delay_min: 100,
        delay_max: (1 + rng.below(30)) * MS,
    };
    co.net = net;
    co.clock_drift = if rng.below(2) == 0 { 0.05 } else { 0.0 };
    co.pre_vote = rng.below(8) != 0;
    co.check_quorum = rng.below(8) != 0;
    co.record_trace = opts.record_trace || opts.print_trace;
    co.assert_no_violation_on_drop = false;
    co.print_trace = opts.print_trace;
    let crashes_on = rng.below(3) != 0;
    let partitions_on = rng.below(4) != 0;
    let tear_on = rng.below(2) == 0;
    let membership_on = rng.below(3) != 0;
    let transfers_on = rng.below(2) == 0;
    let snapshots_on = rng.below(3) != 0;
    let lease_reads = rng.below(2) == 0;
    // From its own stream, so that adding it kept every earlier seed's other choices.
    co.async_persist = opts
        .async_persist
        .unwrap_or_else(|| SplitMix64::new(opts.seed ^ 0x0061_7379_6e63).below(2) == 0);
    let fault_mix = format!(
        "async_persist={} voters={voters} spares=2 membership={membership_on} transfers={transfers_on} snapshots={snapshots_on} lease_reads={lease_reads} drop={:.2} dup={:.2} delay<={}ms drift={} prevote={} checkquorum={} crashes={crashes_on} tear={tear_on} partitions={partitions_on}",
        co.async_persist, net.drop_rate, net.dup_rate, net.delay_max / MS, co.clock_drift, co.pre_vote, co.check_quorum
    );
    let mut c = Cluster::new(co);
    let mut out = SwarmOutcome {
        seed: opts.seed,
        nodes,
        fault_mix: fault_mix.clone(),
        enabled: SwarmKinds {
            loss: net.drop_rate > 0.0,
            duplication: net.dup_rate > 0.0,
            crashes: crashes_on,
            torn_writes: crashes_on && tear_on,
            partitions: partitions_on,
            membership: membership_on,
            transfers: transfers_on,
            snapshots: snapshots_on,
            drop_rate: net.drop_rate,
            dup_rate: net.dup_rate,
        },
        ..Default::default()
    };
    let fail = |c: &Cluster, what: String| -> String {
        let mut state = String::new();
        for n in &c.nodes {
            if let Some(r) = n.raw() {
                let st = r.status();
                state.push_str(&format!(
                    "\n  n{}: {:?} term {} leader {} commit {} applied {} log [{}, {}] conf {:?}/{:?} learners {:?}",
                    n.id, st.soft_state.role, st.hard_state.term, st.soft_state.leader, st.hard_state.commit,
                    st.applied, st.first_index, st.last_index, st.conf_state.voters, st.conf_state.voters_outgoing,
                    st.conf_state.learners
                ));
            }
        }
        format!(
            "seed {} failed at {:.3}s [{fault_mix}]: {what}{state}",
            opts.seed,
            c.now as f64 / 1e6
        )
    };

    // ---- safety phase
    let end = opts.sim_seconds * SECOND;
    let mut next_fault = 200 * MS;
    let mut payload_id = 0u64;
    let mut read_id = 0u64;
    const KEYS: u64 = 16;
    while c.now < end {
        // Clients: propose to whoever leads now, every few milliseconds.
        let step = (1 + rng.below(10)) * MS;
        c.run_for(step);
        if let Some(v) = &c.violation {
            return Err(fail(&c, v.to_string()));
        }
        if let Some(l) = c.leader() {
            for _ in 0..1 + rng.below(4) {
                payload_id += 1;
                let client = rng.below(8);
                if c.client_write(l, client, rng.below(KEYS), payload_id) {
                    out.proposals_accepted += 1;
                }
            }
        }
        // Readers: linearizable reads on any node (followers forward to the leader).
        for _ in 0..rng.below(3) {
            let i = rng.below(c.n() as u64) as usize;
            read_id += 1;
            let mode = if lease_reads && rng.below(2) == 0 {
                ReadMode::Lease
            } else {
                ReadMode::Safe
            };
            let client = 100 + rng.below(8);
            c.client_read(i, client, rng.below(KEYS), read_id, mode);
        }
        if snapshots_on && rng.below(100) < 3 {
            let i = rng.below(c.n() as u64) as usize;
            if c.snapshot(i) {
                out.snapshots += 1;
            }
        }
        if transfers_on && rng.below(1000) < 8 {
            if let (Some(l), Some(cs)) = (c.leader(), c.leader_conf()) {
                let to = cs.voters[rng.below(cs.voters.len() as u64) as usize];
                if c.transfer_leader(l, to) {
                    out.transfers += 1;
                }
            }
        }
        if membership_on && rng.below(1000) < 15 {
            if let Some(cc) = random_conf_change(&c, &mut rng) {
                if let Some(l) = c.leader() {
                    if c.propose_conf_change(l, &cc).is_ok() {
                        out.conf_changes += 1;
                    }
                }
            }
        }
        if c.now >= next_fault {
            next_fault = c.now + (50 + rng.below(950)) * MS;
            match rng.below(10) {
                0..=2 if crashes_on => {
                    let up = c.up_nodes();
                    // Keep at most n-1 down; sometimes even the majority.
                    if up.len() > 1 {
                        let i = up[rng.below(up.len() as u64) as usize];
                        let tear = tear_on && rng.below(2) == 0;
                        c.crash_with(i, tear);
                    }
                }
                3..=4 if crashes_on => {
                    let down: Vec<usize> = (0..c.n()).filter(|&i| !c.nodes[i].is_up()).collect();
                    if !down.is_empty() {
                        let i = down[rng.below(down.len() as u64) as usize];
                        c.restart(i);
                    }
                }
                5..=6 if partitions_on => {
                    let shape = Shape::pick(&mut rng);
                    apply_shape(&mut c, shape, &mut rng);
                    out.partitions += 1;
                }
                7..=8 => c.heal(),
                _ => {}
            }
        }
    }

    // ---- liveness phase: heal everything and require progress within a bound.
    // What the fault phase did (the nodes' own counts: a silenced crash counts nothing).
    out.crashes = c.crashes;
    out.restarts = c.restarts;
    c.heal();
    c.net = NetFaults::reliable();
    for i in 0..c.n() {
        c.restart(i);
    }
    let heal_at = c.now;
    let bound = opts.liveness_bound;
    let all: Vec<usize> = (0..c.n()).collect();
    if c.check_one_leader(&all, bound).is_none() {
        return Err(fail(
            &c,
            format!("no leader within {}ms of healing", bound / MS),
        ));
    }
    payload_id += 1;
    let marker = crate::cluster::encode_write(99, payload_id);
    let remaining = (heal_at + bound).saturating_sub(c.now);
    let idx = match one_within(&mut c, marker, remaining) {
        Some(i) => i,
        None => {
            if let Some(v) = &c.violation {
                return Err(fail(&c, v.to_string()));
            }
            return Err(fail(
                &c,
                format!(
                    "no proposal committed on all nodes within {}ms of healing",
                    bound / MS
                ),
            ));
        }
    };
    // Convergence: every member of the configuration (voters and learners; a node removed
    // from it is no member and is left alone) applies the marker, then all of them reach
    // one applied index (the highest among them) with identical state machines, within the
    // bound.
    let members: Vec<usize> = match c.leader_conf() {
        Some(cs) => cs.all_nodes().iter().map(|id| id.0 as usize - 1).collect(),
        None => return Err(fail(&c, "leader lost after the marker committed".into())),
    };
    let converged = c.run_until(bound, |c| {
        let top = members.iter().map(|&m| c.nodes[m].applied_index).max();
        members
            .iter()
            .all(|&m| c.nodes[m].applied_index >= idx && Some(c.nodes[m].applied_index) == top)
    });
    if !converged {
        let applied: Vec<String> = members
            .iter()
            .map(|&m| format!("n{}: {}", m + 1, c.nodes[m].applied_index))
            .collect();
        return Err(fail(
            &c,
            format!(
                "members did not all reach one applied index at or above {idx} within {}ms: {}",
                bound / MS,
                applied.join(", ")
            ),
        ));
    }
    if opts.mutant_divergent_member {
        let m = members[members.len() - 1];
        c.nodes[m].kv.insert(u64::MAX, 1);
    }
    let r = members[0];
    for &m in &members {
        if c.nodes[m].kv != c.nodes[r].kv {
            return Err(fail(
                &c,
                format!(
                    "node {} state differs from node {} at applied index {}",
                    m + 1,
                    r + 1,
                    c.nodes[r].applied_index
                ),
            ));
        }
    }
    // Every read and write the clients saw is linearizable (per key).
    match c.check_linearizable() {
        Ok(n) => out.history_ops = n,
        Err(e) => return Err(fail(&c, e)),
    }
    if let Some(v) = &c.violation {
        return Err(fail(&c, v.to_string()));
    }
    out.virtual_micros = c.now;
    out.events_hash = c.trace_hash;
    out.messages = c.messages_sent;
    out.messages_dropped = c.messages_dropped;
    out.messages_duplicated = c.messages_duplicated;
    out.torn_writes = c.torn_writes;
    out.writes_acknowledged = c.writes_acknowledged();
    out.committed = c.checker.applied_len().0;
    out.checks = c.checker.checks;
    out.snapshots_installed = c.snapshots_installed;
    out.reads_completed = c.nodes.iter().map(|n| n.completed_reads.len() as u64).sum();
    out.trace = std::mem::take(&mut c.trace);
    Ok(out)
}

/// Proposes `data` on the leader (retrying through leader changes) until every node applied
/// it, within `timeout`.
fn one_within(c: &mut Cluster, data: Bytes, timeout: Micros) -> Option<LogIndex> {
    let deadline = c.now + timeout;
    while c.now < deadline && c.violation.is_none() {
        if let Some(l) = c.leader() {
            if let Ok(idx) = c.propose(l, data.clone()) {
                let d = data.clone();
                let wait = (deadline - c.now).min(2 * SECOND);
                if c.run_until(wait, |c| {
                    let Some(cs) = c.leader_conf() else {
                        return false;
                    };
                    let members = cs.all_nodes();
                    let (_, got) = c.n_applied(idx);
                    got.as_ref() == Some(&d)
                        && members
                            .iter()
                            .all(|m| c.nodes[m.0 as usize - 1].applied_index >= idx)
                }) {
                    return Some(idx);
                }
                continue;
            }
        }
        c.run_for(20 * MS);
    }
    None
}

/// A random membership change that is valid for the leader's current configuration.
fn random_conf_change(c: &Cluster, rng: &mut SplitMix64) -> Option<ConfChange> {
    let cs = c.leader_conf()?;
    if cs.is_joint() {
        return None;
    }
    let all: Vec<NodeId> = (1..=c.n() as u64).map(NodeId).collect();
    let outsiders: Vec<NodeId> = all
        .iter()
        .copied()
        .filter(|n| !cs.all_nodes().contains(n))
        .collect();
    let pick = |v: &[NodeId], rng: &mut SplitMix64| v[rng.below(v.len() as u64) as usize];
    let item = |kind, node| ConfChangeItem { kind, node };
    match rng.below(5) {
        0 if !outsiders.is_empty() => Some(ConfChange {
            changes: vec![item(ConfChangeKind::AddLearner, pick(&outsiders, rng))],
            joint: false,
            context: Default::default(),
        }),
        1 if !cs.learners.is_empty() => Some(ConfChange {
            changes: vec![item(ConfChangeKind::AddVoter, pick(&cs.learners, rng))],
            joint: false,
            context: Default::default(),
        }),
        2 if cs.voters.len() > 3 => Some(ConfChange {
            changes: vec![item(ConfChangeKind::RemoveNode, pick(&cs.voters, rng))],
            joint: false,
            context: Default::default(),
        }),
        3 if cs.voters.len() > 3 => Some(ConfChange {
            changes: vec![item(ConfChangeKind::AddLearner, pick(&cs.voters, rng))],
            joint: false,
            context: Default::default(),
        }),
        4 if !cs.learners.is_empty() => {
            // Replace a voter by a learner in one joint change.
            let add = pick(&cs.learners, rng);
            let remove = pick(&cs.voters, rng);
            Some(ConfChange {
                changes: vec![
                    item(ConfChangeKind::AddVoter, add),
                    item(
                        if rng.below(2) == 0 {
                            ConfChangeKind::RemoveNode
                        } else {
                            ConfChangeKind::AddLearner
                        },
                        remove,
                    ),
                ],
                joint: true,
                context: Default::default(),
            })
        }
        _ => None,
    }
}
