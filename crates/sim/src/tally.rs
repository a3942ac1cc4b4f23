//! Proof that the faults happened. Every simulated seed reports, per fault kind, whether it
//! turned the kind on (swarm testing) and how often it fired; [`FaultTally`] sums that over
//! seeds together with the acknowledged client writes, prints it, and fails a run in which
//! a kind that some seed turned on never fired, or in which a kind a seed turned on did not
//! fire on a seed where it could not have failed to (an expected count of at least
//! [`SURE`]), or in which too few writes were acknowledged. Without it, a bug that silenced
//! fault injection (or the workload) would leave every test green.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// An expected count at or above which zero occurrences in one seed is taken as a broken
/// injector: with independent chances, zero has probability below e^-SURE (about 2e-9).
pub const SURE: f64 = 20.0;

/// Over many seeds, a kind whose count is estimated from its chances must have fired once
/// its expected total reaches this (zero then has probability below e^-5, under 1 %).
pub const SURE_OVER_SEEDS: f64 = 5.0;

/// One fault kind in one seed.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultCount {
    pub kind: &'static str,
    /// The seed turned this kind on.
    pub enabled: bool,
    /// How often it fired.
    pub count: u64,
    /// How often it was expected to fire given its chances in this seed (chances times
    /// probability), for kinds whose chances are counted; `None` for the others, which must
    /// fire at least once over the seeds that turned them on.
    pub expected: Option<f64>,
}

impl FaultCount {
    pub fn new(kind: &'static str, enabled: bool, count: u64, expected: Option<f64>) -> FaultCount {
        FaultCount {
            kind,
            enabled,
            count,
            expected,
        }
    }
}

/// The two network kinds both simulators inject, held to their expected counts: half the
/// messages sent times the rate (the half for those a partition cut first).
pub fn network_counts(
    messages: u64,
    (loss, drop_rate, dropped): (bool, f64, u64),
    (duplication, dup_rate, duplicated): (bool, f64, u64),
) -> [FaultCount; 2] {
    [
        FaultCount::new(
            "message loss",
            loss,
            dropped,
            Some(messages as f64 * drop_rate * 0.5),
        ),
        FaultCount::new(
            "duplication",
            duplication,
            duplicated,
            Some(messages as f64 * dup_rate * 0.5),
        ),
    ]
}

/// Kinds that a seed turned on and that did not fire although they surely should have
/// (expected count at least [`SURE`]).
pub fn surely_missing(counts: &[FaultCount]) -> Vec<String> {
    counts
        .iter()
        .filter(|c| c.enabled && c.count == 0 && c.expected.unwrap_or(0.0) >= SURE)
        .map(|c| format!("{} (expected {:.0})", c.kind, c.expected.unwrap_or(0.0)))
        .collect()
}

#[derive(Clone, Debug, Default)]
struct KindTotal {
    /// Seeds that turned the kind on.
    seeds_on: u64,
    /// Occurrences over all seeds.
    count: u64,
    /// Seeds that turned it on and saw none.
    seeds_on_without: u64,
    /// Sum of the expected counts, if the kind's chances are counted.
    expected: Option<f64>,
}

/// Fault counts and acknowledged writes summed over seeds.
#[derive(Clone, Debug, Default)]
pub struct FaultTally {
    kinds: BTreeMap<&'static str, KindTotal>,
    pub seeds: u64,
    pub acknowledged_writes: u64,
    /// Per-seed misses (see [`surely_missing`]), with the seed.
    pub sure_misses: Vec<String>,
}

impl FaultTally {
    pub fn new() -> FaultTally {
        FaultTally::default()
    }

    /// Adds one seed.
    pub fn add(&mut self, seed: u64, counts: &[FaultCount], acknowledged_writes: u64) {
        self.seeds += 1;
        self.acknowledged_writes += acknowledged_writes;
        for c in counts {
            let t = self.kinds.entry(c.kind).or_default();
            t.count += c.count;
            if c.enabled {
                t.seeds_on += 1;
                t.seeds_on_without += u64::from(c.count == 0);
                if let Some(e) = c.expected {
                    *t.expected.get_or_insert(0.0) += e;
                }
            }
        }
        for m in surely_missing(counts) {
            self.sure_misses.push(format!("seed {seed}: {m}"));
        }
    }

    /// Total occurrences of `kind` over the seeds.
    pub fn count(&self, kind: &str) -> u64 {
        self.kinds.get(kind).map_or(0, |t| t.count)
    }

    /// One line per kind: occurrences, seeds that turned it on, those of them without any.
    pub fn report(&self) -> String {
        let mut s = format!(
            "fault counts over {} seeds ({} acknowledged writes):\n",
            self.seeds, self.acknowledged_writes
        );
        for (kind, t) in &self.kinds {
            let expected = t
                .expected
                .map(|e| format!(", {e:.1} expected from its chances"))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "  {kind:<22} {:>9} (on in {} seeds, {} of them without any{expected})",
                t.count, t.seeds_on, t.seeds_on_without
            );
        }
        s
    }

    /// Fails when a kind some seed turned on never fired (for a kind whose chances are
    /// counted: once its expected total reaches [`SURE_OVER_SEEDS`]), when a seed surely
    /// should have seen a kind it turned on and did not, or when fewer than
    /// `min_acknowledged_writes` writes were acknowledged. The error holds the report.
    pub fn check(&self, min_acknowledged_writes: u64) -> Result<(), String> {
        let mut problems = Vec::new();
        for (kind, t) in &self.kinds {
            let claimed = t.seeds_on > 0 && t.expected.is_none_or(|e| e >= SURE_OVER_SEEDS);
            if claimed && t.count == 0 {
                let expected = t
                    .expected
                    .map(|e| format!(" ({e:.1} expected from its chances)"))
                    .unwrap_or_default();
                problems.push(format!(
                    "{kind} was turned on in {} seeds but never fired{expected}",
                    t.seeds_on
                ));
            }
        }
        problems.extend(self.sure_misses.iter().cloned());
        if self.acknowledged_writes < min_acknowledged_writes {
            problems.push(format!(
                "only {} writes acknowledged, fewer than the floor {min_acknowledged_writes}",
                self.acknowledged_writes
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the run does not prove its faults happened:\n  {}\n{}",
                problems.join("\n  "),
                self.report()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_turned_on_that_never_fired_fails_the_check() {
        let mut t = FaultTally::new();
        t.add(1, &[FaultCount::new("crashes", true, 0, None)], 10);
        t.add(2, &[FaultCount::new("crashes", false, 0, None)], 10);
        let e = t.check(5).unwrap_err();
        assert!(
            e.contains("crashes was turned on in 1 seeds but never fired"),
            "{e}"
        );
        t.add(3, &[FaultCount::new("crashes", true, 2, None)], 10);
        assert!(t.check(5).is_ok());
        assert!(t.check(100).unwrap_err().contains("only 30 writes"));
        // A kind counted by its chances: checked once they make a zero implausible.
        t.add(4, &[FaultCount::new("reorders", true, 0, Some(3.0))], 10);
        assert!(t.check(5).is_ok());
        t.add(5, &[FaultCount::new("reorders", true, 0, Some(3.0))], 10);
        let e = t.check(5).unwrap_err();
        assert!(e.contains("reorders was turned on in 2 seeds"), "{e}");
        t.add(6, &[FaultCount::new("loss", true, 0, Some(50.0))], 10);
        let e = t.check(5).unwrap_err();
        assert!(e.contains("seed 6: loss (expected 50)"), "{e}");
    }
}
