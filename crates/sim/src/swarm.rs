//! Swarm testing: each seed picks its own mix of faults (loss, duplication, delay,
//! partitions of every shape, crashes with torn writes, clock drift) and runs a safety phase
//! with faults followed by a liveness phase that heals everything.

use crate::cluster::{unit, Cluster, ClusterOptions, Micros, NetFaults, MS, SECOND};
use bytes::Bytes;
use raft::{LogIndex, SplitMix64};

#[derive(Clone, Debug)]
pub struct SwarmOptions {
    pub seed: u64,
    /// Virtual seconds of the safety phase (faults active).
    pub sim_seconds: u64,
    /// Virtual time allowed after healing for a leader to be elected and a proposal to
    /// commit on every node.
    pub liveness_bound: Micros,
    pub record_trace: bool,
}

impl SwarmOptions {
    pub fn new(seed: u64) -> SwarmOptions {
        SwarmOptions {
            seed,
            sim_seconds: 20,
            liveness_bound: 10 * SECOND,
            record_trace: false,
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
    pub partitions: u64,
    pub checks: u64,
    pub fault_mix: String,
    pub trace: Vec<String>,
}

/// The partition shapes the swarm chooses from.
#[derive(Clone, Copy, Debug)]
enum Shape {
    IsolateOne,
    MinorityMajority,
    MajoritiesRing,
    Bridge,
    OneWay,
}

fn apply_shape(c: &mut Cluster, shape: Shape, rng: &mut SplitMix64) {
    let n = c.n();
    let mut perm: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        perm.swap(i, j);
    }
    match shape {
        Shape::IsolateOne => c.partition(&[vec![perm[0]], perm[1..].to_vec()]),
        Shape::MinorityMajority => {
            let k = 1 + rng.below(((n - 1) / 2).max(1) as u64) as usize;
            c.partition(&[perm[..k].to_vec(), perm[k..].to_vec()]);
        }
        Shape::MajoritiesRing => {
            // Each node hears its ring neighbours only: every node sees a majority
            // (with 3 or 5 nodes) but no two nodes see the same one.
            c.partition(&[]);
            for i in 0..n {
                let a = perm[i];
                for d in [1, n - 1] {
                    let b = perm[(i + d) % n];
                    c.set_link(a, b, true);
                }
                c.set_link(a, a, true);
            }
        }
        Shape::Bridge => {
            // Two halves that only talk through one bridge node.
            let bridge = perm[0];
            let half = (n - 1) / 2;
            let a: Vec<usize> = perm[1..1 + half].to_vec();
            let b: Vec<usize> = perm[1 + half..].to_vec();
            let mut ga = a.clone();
            ga.push(bridge);
            c.partition(&[ga]);
            for &x in &b {
                for &y in &b {
                    c.set_link(x, y, true);
                }
                c.set_link(x, bridge, true);
                c.set_link(bridge, x, true);
            }
        }
        Shape::OneWay => {
            // One node can send but not receive (or receive but not send).
            c.heal();
            let x = perm[0];
            let inbound = rng.below(2) == 0;
            for j in 0..n {
                if j != x {
                    if inbound {
                        c.set_link(j, x, false);
                    } else {
                        c.set_link(x, j, false);
                    }
                }
            }
        }
    }
}

/// Runs one seed: safety phase with faults, then the liveness phase. Returns the outcome,
/// or a description of the failure (the caller prints the seed and the replay command).
pub fn run_seed(opts: &SwarmOptions) -> Result<SwarmOutcome, String> {
    let mut rng = SplitMix64::new(opts.seed ^ 0x5157_4152_4d00);
    let nodes = if rng.below(3) == 0 { 5 } else { 3 };
    let mut co = ClusterOptions::new(nodes, opts.seed);
    // Swarm: each seed enables a random subset of faults with random intensities.
    let lossy = rng.below(2) == 0;
    let net = NetFaults {
        drop_rate: if lossy { unit(&mut rng) * 0.3 } else { 0.0 },
        dup_rate: if rng.below(2) == 0 { unit(&mut rng) * 0.1 } else { 0.0 },
        delay_min: 100,
        delay_max: (1 + rng.below(30)) * MS,
    };
    co.net = net;
    co.clock_drift = if rng.below(2) == 0 { 0.05 } else { 0.0 };
    co.pre_vote = rng.below(8) != 0;
    co.check_quorum = rng.below(8) != 0;
    co.record_trace = opts.record_trace;
    let crashes_on = rng.below(3) != 0;
    let partitions_on = rng.below(4) != 0;
    let tear_on = rng.below(2) == 0;
    let fault_mix = format!(
        "nodes={nodes} drop={:.2} dup={:.2} delay<={}ms drift={} prevote={} checkquorum={} crashes={crashes_on} tear={tear_on} partitions={partitions_on}",
        net.drop_rate, net.dup_rate, net.delay_max / MS, co.clock_drift, co.pre_vote, co.check_quorum
    );
    let mut c = Cluster::new(co);
    let mut out = SwarmOutcome {
        seed: opts.seed,
        nodes,
        fault_mix: fault_mix.clone(),
        ..Default::default()
    };
    let fail = |c: &Cluster, what: String| -> String {
        format!(
            "seed {} failed at {:.3}s [{fault_mix}]: {what}",
            opts.seed,
            c.now as f64 / 1e6
        )
    };

    // ---- safety phase
    let end = opts.sim_seconds * SECOND;
    let mut next_fault = 200 * MS;
    let mut payload_id = 0u64;
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
                let data = crate::cluster::encode_write(rng.below(8), payload_id);
                if c.propose(l, data).is_ok() {
                    out.proposals_accepted += 1;
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
                        out.crashes += 1;
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
                    let shape = match rng.below(5) {
                        0 => Shape::IsolateOne,
                        1 => Shape::MinorityMajority,
                        2 => Shape::MajoritiesRing,
                        3 => Shape::Bridge,
                        _ => Shape::OneWay,
                    };
                    apply_shape(&mut c, shape, &mut rng);
                    out.partitions += 1;
                }
                7..=8 => c.heal(),
                _ => {}
            }
        }
    }

    // ---- liveness phase: heal everything and require progress within a bound.
    c.heal();
    c.net = NetFaults::reliable();
    for i in 0..c.n() {
        c.restart(i);
    }
    let heal_at = c.now;
    let bound = opts.liveness_bound;
    let all: Vec<usize> = (0..c.n()).collect();
    if c.check_one_leader(&all, bound).is_none() {
        return Err(fail(&c, format!("no leader within {}ms of healing", bound / MS)));
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
                format!("no proposal committed on all nodes within {}ms of healing", bound / MS),
            ));
        }
    };
    // Every node reaches the same applied state.
    let converged = c.run_until(bound, |c| {
        c.nodes
            .iter()
            .all(|n| n.applied_index >= idx && n.raw().is_some())
    });
    if !converged {
        return Err(fail(&c, format!("nodes did not all apply index {idx}")));
    }
    let kv0 = c.nodes[0].kv.clone();
    for n in &c.nodes {
        if n.applied_index == c.nodes[0].applied_index && n.kv != kv0 {
            return Err(fail(&c, format!("node {} state differs at the same applied index", n.id)));
        }
    }
    if let Some(v) = &c.violation {
        return Err(fail(&c, v.to_string()));
    }
    out.virtual_micros = c.now;
    out.events_hash = c.trace_hash;
    out.messages = c.messages_sent;
    out.committed = c.checker.applied_len().0;
    out.checks = c.checker.checks;
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
                let n = c.n();
                let wait = (deadline - c.now).min(2 * SECOND);
                if c.run_until(wait, |c| {
                    let (k, got) = c.n_applied(idx);
                    k >= n && got.as_ref() == Some(&d)
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
