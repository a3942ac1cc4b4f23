//! The fault schedule: a seeded random sequence of [`Step`]s, each one fault on one store
//! (so at most one of three stores is ever down or cut off: a minority) for 1–5 s, optionally
//! with a slow link between two stores on top, then a gap. Pure: the same seed always gives
//! the same schedule, which `cargo test` checks.
//!
//! Every run exercises every [`FaultKind`] it claims: the schedule *opens* with one step of
//! each claimed kind, alone and in a seeded random order ([`Schedule::opening_pending`] tells
//! the runner it must not stop before they are done), and only then draws steps at random.

use std::time::Duration;

/// The Raft core's seedable SplitMix64 with the helpers the schedule and workload use.
#[derive(Clone, Debug)]
pub struct Rng(raft::SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(raft::SplitMix64::new(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `low..=high`.
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        debug_assert!(low <= high);
        low + self.next_u64() % (high - low + 1)
    }

    /// True with probability `numerator / denominator`.
    pub fn chance(&mut self, numerator: u64, denominator: u64) -> bool {
        self.next_u64() % denominator < numerator
    }
}

pub const FAULT_MS_MIN: u64 = 1_000;
pub const FAULT_MS_MAX: u64 = 5_000;
pub const GAP_MS_MIN: u64 = 500;
pub const GAP_MS_MAX: u64 = 2_000;
pub const LOSS_PERCENT_MIN: u32 = 10;
pub const LOSS_PERCENT_MAX: u32 = 30;
pub const SLOW_LINK_MS_MIN: u64 = 20;
pub const SLOW_LINK_MS_MAX: u64 = 200;

/// One fault on one store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL at the start, restart on the same data directory at the end.
    KillRestart,
    /// SIGSTOP at the start, SIGCONT at the end.
    Pause,
    /// The victim and its peers cannot exchange packets.
    Partition,
    /// Only the victim's inbound (or only its outbound) packets to/from peers are dropped.
    PartitionOneWay { inbound: bool },
    /// A share of the packets arriving at the victim (from peers and clients) is dropped.
    Loss { percent: u32 },
    /// No fault on a store; only the step's slow link (if any).
    None,
    /// An operator reshaping regions through `raftkv region ...` while the load runs.
    Admin(AdminAction),
}

/// What an admin step does, to the region holding keys that start with `letter`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminAction {
    /// Split it at `letter` followed by the step's number (a fresh key every time).
    Split { letter: u8 },
    /// Move its leadership to the victim store (if that store has a replica).
    TransferLeader { letter: u8 },
    /// Remove its replica on the victim store at the start, add it back at the end.
    MoveReplica { letter: u8 },
    /// Merge its right neighbour into it (when there is one on the same stores).
    Merge { letter: u8 },
}

impl Fault {
    pub fn is_network(&self) -> bool {
        matches!(
            self,
            Fault::Partition | Fault::PartitionOneWay { .. } | Fault::Loss { .. }
        )
    }

    /// A short name for counters and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Fault::KillRestart => "kill-restart",
            Fault::Pause => "pause",
            Fault::Partition => "partition",
            Fault::PartitionOneWay { .. } => "partition-one-way",
            Fault::Loss { .. } => "loss",
            Fault::None => "none",
            Fault::Admin(_) => "admin",
        }
    }
}

/// The fault kinds a run claims to exercise, as counted in the report. A one-way partition is
/// two kinds (inbound, outbound): each direction breaks Raft differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    KillRestart,
    Pause,
    Partition,
    OneWayInbound,
    OneWayOutbound,
    Loss,
    SlowLink,
    Admin,
}

impl FaultKind {
    pub const ALL: [FaultKind; 8] = [
        FaultKind::KillRestart,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::OneWayInbound,
        FaultKind::OneWayOutbound,
        FaultKind::Loss,
        FaultKind::SlowLink,
        FaultKind::Admin,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillRestart => "kill+restart",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::OneWayInbound => "one-way-in",
            FaultKind::OneWayOutbound => "one-way-out",
            FaultKind::Loss => "loss",
            FaultKind::SlowLink => "slow-link",
            FaultKind::Admin => "admin",
        }
    }

    /// Needs network namespaces (slow links do not strictly, but a run without namespaces
    /// promises process faults only).
    pub fn is_network(self) -> bool {
        !matches!(
            self,
            FaultKind::KillRestart | FaultKind::Pause | FaultKind::Admin
        )
    }

    /// The kinds a run claims: all of them with network faults, else kills and pauses.
    pub fn claimed(network_faults: bool) -> Vec<FaultKind> {
        FaultKind::ALL
            .into_iter()
            .filter(|k| network_faults || !k.is_network())
            .collect()
    }
}

impl Step {
    /// The kinds this step exercises: its store fault's, and a slow link's if it has one.
    pub fn kinds(&self) -> Vec<FaultKind> {
        let mut kinds: Vec<FaultKind> = match self.fault {
            Fault::KillRestart => vec![FaultKind::KillRestart],
            Fault::Pause => vec![FaultKind::Pause],
            Fault::Partition => vec![FaultKind::Partition],
            Fault::PartitionOneWay { inbound: true } => vec![FaultKind::OneWayInbound],
            Fault::PartitionOneWay { inbound: false } => vec![FaultKind::OneWayOutbound],
            Fault::Loss { .. } => vec![FaultKind::Loss],
            Fault::None => vec![],
            Fault::Admin(_) => vec![FaultKind::Admin],
        };
        if self.slow_link.is_some() {
            kinds.push(FaultKind::SlowLink);
        }
        kinds
    }
}

/// A slow link between stores `a` and `b` (both directions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlowLink {
    pub a: usize,
    pub b: usize,
    pub delay: Duration,
}

/// One step of the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub fault: Fault,
    pub victim: usize,
    /// Aim at the store leading region `victim` (0, 1, 2 = keys `a`, `h`, `q`) when the
    /// fault starts, instead of store `victim`: leaders are where faults hurt most.
    pub target_leader: bool,
    pub slow_link: Option<SlowLink>,
    /// How long the fault lasts.
    pub duration: Duration,
    /// Quiet time after healing, before the next step.
    pub gap: Duration,
}

/// Draws steps from a seed.
pub struct Schedule {
    rng: Rng,
    stores: usize,
    network_faults: bool,
    /// Claimed kinds not yet drawn, in the order the opening steps take them.
    opening: Vec<FaultKind>,
}

impl Schedule {
    /// `network_faults: false` (no namespaces) draws only kills and pauses.
    pub fn new(seed: u64, stores: usize, network_faults: bool) -> Schedule {
        assert!(stores >= 3, "a minority fault needs at least 3 stores");
        let mut rng = Rng::new(seed);
        // Fisher-Yates; popped from the back, so the opening order is `opening` reversed.
        let mut opening = FaultKind::claimed(network_faults);
        for i in (1..opening.len()).rev() {
            opening.swap(i, rng.range(0, i as u64) as usize);
        }
        Schedule {
            rng,
            stores,
            network_faults,
            opening,
        }
    }

    /// Opening steps still to come: a run must not end before they are done, so that every
    /// claimed kind is exercised whatever the run's length.
    pub fn opening_pending(&self) -> usize {
        self.opening.len()
    }

    /// The kinds of the opening steps still to come, in the order they will run.
    pub fn opening(&self) -> Vec<FaultKind> {
        self.opening.iter().rev().copied().collect()
    }

    pub fn next_step(&mut self) -> Step {
        match self.opening.pop() {
            Some(kind) => self.opening_step(kind),
            None => self.random_step(),
        }
    }

    /// A step of exactly `kind`, alone (no slow link on top of a store fault).
    fn opening_step(&mut self, kind: FaultKind) -> Step {
        let r = &mut self.rng;
        let victim = r.range(0, self.stores as u64 - 1) as usize;
        let fault = match kind {
            FaultKind::KillRestart => Fault::KillRestart,
            FaultKind::Pause => Fault::Pause,
            FaultKind::Partition => Fault::Partition,
            FaultKind::OneWayInbound => Fault::PartitionOneWay { inbound: true },
            FaultKind::OneWayOutbound => Fault::PartitionOneWay { inbound: false },
            FaultKind::Loss => Fault::Loss {
                percent: r.range(LOSS_PERCENT_MIN.into(), LOSS_PERCENT_MAX.into()) as u32,
            },
            FaultKind::SlowLink => Fault::None,
            FaultKind::Admin => Fault::Admin(Self::admin_action(r)),
        };
        let slow_link = (kind == FaultKind::SlowLink).then(|| self.slow_link());
        self.finish_step(fault, victim, slow_link)
    }

    fn admin_action(r: &mut Rng) -> AdminAction {
        let letter = b'a' + r.range(0, 25) as u8;
        match r.range(0, 3) {
            0 => AdminAction::Split { letter },
            1 => AdminAction::TransferLeader { letter },
            2 => AdminAction::Merge { letter },
            _ => AdminAction::MoveReplica { letter },
        }
    }

    fn slow_link(&mut self) -> SlowLink {
        let r = &mut self.rng;
        let a = r.range(0, self.stores as u64 - 1) as usize;
        let b = (a + r.range(1, self.stores as u64 - 1) as usize) % self.stores;
        SlowLink {
            a,
            b,
            delay: Duration::from_millis(r.range(SLOW_LINK_MS_MIN, SLOW_LINK_MS_MAX)),
        }
    }

    fn finish_step(&mut self, fault: Fault, victim: usize, slow_link: Option<SlowLink>) -> Step {
        let r = &mut self.rng;
        let target_leader = r.chance(1, 2);
        Step {
            fault,
            victim,
            target_leader,
            slow_link,
            duration: Duration::from_millis(r.range(FAULT_MS_MIN, FAULT_MS_MAX)),
            gap: Duration::from_millis(r.range(GAP_MS_MIN, GAP_MS_MAX)),
        }
    }

    fn random_step(&mut self) -> Step {
        let r = &mut self.rng;
        let victim = r.range(0, self.stores as u64 - 1) as usize;
        let fault = if self.network_faults {
            match r.range(0, 6) {
                0 => Fault::KillRestart,
                1 => Fault::Pause,
                2 => Fault::Partition,
                3 => Fault::PartitionOneWay {
                    inbound: r.chance(1, 2),
                },
                4 => Fault::Loss {
                    percent: r.range(LOSS_PERCENT_MIN.into(), LOSS_PERCENT_MAX.into()) as u32,
                },
                5 => Fault::None,
                _ => Fault::Admin(Self::admin_action(r)),
            }
        } else {
            match r.range(0, 2) {
                0 => Fault::KillRestart,
                1 => Fault::Pause,
                _ => Fault::Admin(Self::admin_action(r)),
            }
        };
        // Slow links are userspace, so they work without namespaces too; but without
        // namespaces the run promises process faults only.
        let slow = self.network_faults && (fault == Fault::None || r.chance(1, 3));
        let slow_link = slow.then(|| self.slow_link());
        self.finish_step(fault, victim, slow_link)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_always_gives_the_same_schedule() {
        let mut a = Schedule::new(7, 3, true);
        let mut b = Schedule::new(7, 3, true);
        for _ in 0..100 {
            assert_eq!(a.next_step(), b.next_step());
        }
    }

    #[test]
    fn every_step_faults_at_most_one_store_within_the_bounds() {
        let mut s = Schedule::new(1, 3, true);
        let mut kinds = std::collections::BTreeSet::new();
        for _ in 0..10_000 {
            let step = s.next_step();
            assert!(step.victim < 3);
            assert!(step.duration >= Duration::from_millis(FAULT_MS_MIN));
            assert!(step.duration <= Duration::from_millis(FAULT_MS_MAX));
            if let Some(link) = step.slow_link {
                assert_ne!(link.a, link.b);
                assert!(link.a < 3 && link.b < 3);
            }
            if let Fault::Loss { percent } = step.fault {
                assert!((LOSS_PERCENT_MIN..=LOSS_PERCENT_MAX).contains(&percent));
            }
            kinds.insert(step.fault.name());
        }
        assert_eq!(kinds.len(), 7, "every fault kind is drawn: {kinds:?}");
    }

    /// The guarantee the smoke's floors rely on: whatever the seed, the first steps cover
    /// every claimed kind (and only those), each alone, in an order the seed varies.
    #[test]
    fn every_seed_opens_with_one_step_of_each_claimed_kind() {
        let mut first_kinds = std::collections::BTreeSet::new();
        for network_faults in [true, false] {
            let claimed = FaultKind::claimed(network_faults);
            assert_eq!(claimed.len(), if network_faults { 8 } else { 3 });
            for seed in 0..2_000 {
                let mut s = Schedule::new(seed, 3, network_faults);
                assert_eq!(s.opening_pending(), claimed.len());
                let mut seen = Vec::new();
                for n in 0..claimed.len() {
                    let step = s.next_step();
                    assert_eq!(s.opening_pending(), claimed.len() - n - 1);
                    let kinds = step.kinds();
                    assert_eq!(kinds.len(), 1, "an opening step is one kind: {step:?}");
                    seen.push(kinds[0]);
                }
                if network_faults {
                    first_kinds.insert(seen[0]);
                }
                seen.sort();
                assert_eq!(seen, claimed, "seed {seed}");
                // Then the random part, still within the claim.
                for _ in 0..20 {
                    for kind in s.next_step().kinds() {
                        assert!(claimed.contains(&kind), "seed {seed}: {kind:?}");
                    }
                }
            }
        }
        assert_eq!(first_kinds.len(), 8, "the seed varies the opening order");
    }

    #[test]
    fn without_namespaces_only_process_faults_are_drawn() {
        let mut s = Schedule::new(3, 3, false);
        for _ in 0..10_000 {
            let step = s.next_step();
            assert!(matches!(
                step.fault,
                Fault::KillRestart | Fault::Pause | Fault::Admin(_)
            ));
            assert!(step.slow_link.is_none());
        }
    }
}
