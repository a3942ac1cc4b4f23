//! The fault schedule: a seeded random sequence of [`Step`]s, each one fault on one store
//! (so at most one of three stores is ever down or cut off: a minority) for 1–5 s, optionally
//! with a slow link between two stores on top, then a gap. Pure: the same seed always gives
//! the same schedule, which `cargo test` checks.

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
        }
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
}

impl Schedule {
    /// `network_faults: false` (no namespaces) draws only kills and pauses.
    pub fn new(seed: u64, stores: usize, network_faults: bool) -> Schedule {
        assert!(stores >= 3, "a minority fault needs at least 3 stores");
        Schedule {
            rng: Rng::new(seed),
            stores,
            network_faults,
        }
    }

    pub fn next_step(&mut self) -> Step {
        let r = &mut self.rng;
        let victim = r.range(0, self.stores as u64 - 1) as usize;
        let fault = if self.network_faults {
            match r.range(0, 5) {
                0 => Fault::KillRestart,
                1 => Fault::Pause,
                2 => Fault::Partition,
                3 => Fault::PartitionOneWay {
                    inbound: r.chance(1, 2),
                },
                4 => Fault::Loss {
                    percent: r.range(LOSS_PERCENT_MIN.into(), LOSS_PERCENT_MAX.into()) as u32,
                },
                _ => Fault::None,
            }
        } else if r.chance(1, 2) {
            Fault::KillRestart
        } else {
            Fault::Pause
        };
        // Slow links are userspace, so they work without namespaces too; but without
        // namespaces the run promises process faults only.
        let slow_link =
            (self.network_faults && (fault == Fault::None || r.chance(1, 3))).then(|| {
                let a = r.range(0, self.stores as u64 - 1) as usize;
                let b = (a + r.range(1, self.stores as u64 - 1) as usize) % self.stores;
                SlowLink {
                    a,
                    b,
                    delay: Duration::from_millis(r.range(SLOW_LINK_MS_MIN, SLOW_LINK_MS_MAX)),
                }
            });
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
        assert_eq!(kinds.len(), 6, "every fault kind is drawn: {kinds:?}");
    }

    #[test]
    fn without_namespaces_only_process_faults_are_drawn() {
        let mut s = Schedule::new(3, 3, false);
        for _ in 0..10_000 {
            let step = s.next_step();
            assert!(matches!(step.fault, Fault::KillRestart | Fault::Pause));
            assert!(step.slow_link.is_none());
        }
    }
}
