//! A run's results: a table row for people, JSON for scripts.

use crate::keys::Distribution;
use crate::run::{latency_of, BenchConfig, Workload};
use crate::target::TargetKind;
use hdrhistogram::Histogram;
use std::time::Duration;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// One run's results.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Free-form name of what was measured (`--label`), e.g. "raftkv" or "etcd".
    pub label: String,
    pub target: TargetKind,
    pub workload: Workload,
    pub distribution: Distribution,
    pub keys: u64,
    pub value_size: usize,
    pub clients: usize,
    pub connections: usize,
    pub rate_limit: Option<u64>,
    pub stale_reads: bool,
    pub elapsed_s: f64,
    /// Operations that succeeded.
    pub ops: u64,
    pub errors: u64,
    /// Successful operations per second.
    pub throughput: f64,
    pub latency: Latency,
}

impl Report {
    pub(crate) fn new(
        cfg: &BenchConfig,
        elapsed: Duration,
        hist: &Histogram<u64>,
        errors: u64,
    ) -> Report {
        let ops = hist.len();
        Report {
            label: String::new(),
            target: cfg.target,
            workload: cfg.workload,
            distribution: cfg.distribution,
            keys: cfg.keys,
            value_size: cfg.value_size,
            clients: cfg.clients,
            connections: if cfg.connections == 0 {
                cfg.clients
            } else {
                cfg.connections.min(cfg.clients)
            },
            rate_limit: cfg.rate,
            stale_reads: cfg.stale,
            elapsed_s: elapsed.as_secs_f64(),
            ops,
            errors,
            throughput: ops as f64 / elapsed.as_secs_f64().max(1e-9),
            latency: latency_of(hist),
        }
    }

    pub const TABLE_HEADER: &'static str =
        "label        workload  clients      ops/s   p50 ms   p90 ms   p99 ms p99.9 ms   max ms  errors";

    /// One table row matching [`Report::TABLE_HEADER`].
    pub fn table_row(&self) -> String {
        let label = if self.label.is_empty() {
            format!("{:?}", self.target).to_lowercase()
        } else {
            self.label.clone()
        };
        let workload = serde_json::to_value(self.workload)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        format!(
            "{label:<12} {workload:<9} {:>7} {:>10.0} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>7}",
            self.clients,
            self.throughput,
            self.latency.p50_ms,
            self.latency.p90_ms,
            self.latency.p99_ms,
            self.latency.p999_ms,
            self.latency.max_ms,
            self.errors
        )
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serializes")
    }

    /// Whether the run counts as a pass: at least one operation succeeded and at most
    /// `max_errors` failed. A benchmark with error replies measures something else than the
    /// one asked for (a failed operation is often much faster or slower than a served one),
    /// so callers fail on errors unless they chose to tolerate some (`--max-errors`).
    pub fn check_errors(&self, max_errors: u64) -> Result<(), String> {
        if self.ops == 0 {
            return Err(format!("no operation succeeded ({} errors)", self.errors));
        }
        if self.errors > max_errors {
            return Err(format!(
                "{} of {} operations failed, more than --max-errors {max_errors}",
                self.errors,
                self.errors + self.ops
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(ops: u64, errors: u64) -> Report {
        let cfg = BenchConfig {
            target: TargetKind::Raftkv,
            endpoints: vec!["127.0.0.1:1".into()],
            workload: Workload::Write,
            distribution: Distribution::Uniform,
            keys: 10,
            value_size: 1,
            clients: 1,
            connections: 0,
            duration: Duration::from_secs(1),
            ops: None,
            rate: None,
            preload: false,
            stale: false,
            progress: false,
            seed: 1,
        };
        let mut hist = crate::run::new_histogram();
        for _ in 0..ops {
            hist.record(100).unwrap();
        }
        Report::new(&cfg, Duration::from_secs(1), &hist, errors)
    }

    #[test]
    fn any_error_fails_by_default_and_max_errors_tolerates_that_many() {
        assert_eq!(report(100, 0).check_errors(0), Ok(()));
        let one = report(100, 1).check_errors(0).unwrap_err();
        assert!(one.contains("1 of 101 operations failed"), "{one}");
        assert_eq!(report(100, 1).check_errors(1), Ok(()));
        assert!(report(100, 2).check_errors(1).is_err());
        // 99 % errors used to pass (only zero successes failed).
        assert!(report(1, 99).check_errors(0).is_err());
        // Nothing succeeded: a failure whatever the tolerance.
        let none = report(0, 0).check_errors(u64::MAX).unwrap_err();
        assert!(none.contains("no operation succeeded"), "{none}");
    }
}
