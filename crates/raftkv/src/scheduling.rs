//! The automatic scheduler's flags, shared by `raftkv server` (and its config file) and
//! `raftkv playground` (which passes them to every store it starts): one definition, so
//! the two cannot drift apart.

use anyhow::{bail, Result};
use std::ffi::OsString;
use std::time::Duration;

/// `--scheduler on|off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum OnOff {
    On,
    Off,
}

#[derive(clap::Args, Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SchedulingArgs {
    /// Automatic scheduling (splits, merges, balancing, repair) while this store leads
    /// placement: on (default) or off. Hand verbs (region split/merge/move, store drain)
    /// work either way.
    #[arg(long, value_enum)]
    pub scheduler: Option<OnOff>,
    /// A region whose data passes this many bytes is split near its middle key (default
    /// 64 MiB; at least 4096).
    #[arg(long, value_name = "BYTES")]
    pub region_max_bytes: Option<u64>,
    /// A region serving more reads + writes per second than this for about ten seconds is
    /// split where its sampled load divides (default 3000; 0 = never). A single hot key is
    /// never split.
    #[arg(long, value_name = "QPS")]
    pub region_split_qps: Option<u64>,
    /// Seconds a store may be silent before its replicas are re-created on other stores
    /// (default 300).
    #[arg(long, value_name = "SECS")]
    pub store_down_timeout: Option<u64>,
    /// Seconds the scheduler leaves a region alone after it was split, merged or moved by
    /// hand (default 600).
    #[arg(long, value_name = "SECS")]
    pub scheduler_quiet_secs: Option<u64>,
    /// Snapshot bytes per second this store sends, and receives (default 100 MiB/s, which
    /// leaves room for client traffic; 0 = unlimited).
    #[arg(long, value_name = "BYTES")]
    pub snapshot_max_bytes_per_sec: Option<u64>,
}

impl SchedulingArgs {
    /// Flags given on the command line win over the config file's.
    pub fn or(self, file: SchedulingArgs) -> SchedulingArgs {
        SchedulingArgs {
            scheduler: self.scheduler.or(file.scheduler),
            region_max_bytes: self.region_max_bytes.or(file.region_max_bytes),
            region_split_qps: self.region_split_qps.or(file.region_split_qps),
            store_down_timeout: self.store_down_timeout.or(file.store_down_timeout),
            scheduler_quiet_secs: self.scheduler_quiet_secs.or(file.scheduler_quiet_secs),
            snapshot_max_bytes_per_sec: self
                .snapshot_max_bytes_per_sec
                .or(file.snapshot_max_bytes_per_sec),
        }
    }

    /// Sets what was given on `s`; the rest keeps its default.
    pub fn apply(&self, s: &mut server::Scheduling) -> Result<()> {
        if let Some(v) = self.scheduler {
            s.enabled = v == OnOff::On;
        }
        if let Some(b) = self.region_max_bytes {
            s.region_max_bytes = b;
        }
        if let Some(q) = self.region_split_qps {
            s.region_split_qps = q;
        }
        if let Some(t) = self.store_down_timeout {
            if t == 0 || t > 86_400 * 30 {
                bail!("--store-down-timeout must be 1 to 2592000 seconds, not {t}");
            }
            s.store_down_timeout = Duration::from_secs(t);
        }
        if let Some(t) = self.scheduler_quiet_secs {
            if t > 86_400 * 30 {
                bail!("--scheduler-quiet-secs must be at most 2592000, not {t}");
            }
            s.quiet = Duration::from_secs(t);
        }
        if let Some(b) = self.snapshot_max_bytes_per_sec {
            s.snapshot_max_bytes_per_sec = b;
        }
        Ok(())
    }

    /// The flags as `raftkv server` arguments (what the playground passes to each store).
    pub fn to_args(&self) -> Vec<OsString> {
        let mut out: Vec<OsString> = Vec::new();
        if let Some(v) = self.scheduler {
            out.push("--scheduler".into());
            out.push(if v == OnOff::On { "on" } else { "off" }.into());
        }
        let numbers = [
            ("--region-max-bytes", self.region_max_bytes),
            ("--region-split-qps", self.region_split_qps),
            ("--store-down-timeout", self.store_down_timeout),
            ("--scheduler-quiet-secs", self.scheduler_quiet_secs),
            (
                "--snapshot-max-bytes-per-sec",
                self.snapshot_max_bytes_per_sec,
            ),
        ];
        for (flag, v) in numbers {
            if let Some(v) = v {
                out.push(flag.into());
                out.push(v.to_string().into());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        s: SchedulingArgs,
    }

    /// What the playground passes on parses back to the same settings.
    #[test]
    fn flags_round_trip_through_the_playground() {
        let t = T::try_parse_from([
            "t",
            "--scheduler",
            "off",
            "--region-max-bytes",
            "1048576",
            "--region-split-qps",
            "500",
            "--store-down-timeout",
            "10",
            "--scheduler-quiet-secs",
            "0",
            "--snapshot-max-bytes-per-sec",
            "0",
        ])
        .unwrap();
        let args = t.s.to_args();
        let back = T::try_parse_from(std::iter::once(OsString::from("t")).chain(args)).unwrap();
        let (mut a, mut b) = (server::Scheduling::default(), server::Scheduling::default());
        t.s.apply(&mut a).unwrap();
        back.s.apply(&mut b).unwrap();
        assert_eq!(a, b);
        assert!(!a.enabled);
        assert_eq!(a.region_max_bytes, 1 << 20);
        assert_eq!(a.region_split_qps, 500);
        assert_eq!(a.store_down_timeout, Duration::from_secs(10));
        assert_eq!(a.quiet, Duration::ZERO);
        assert_eq!(a.snapshot_max_bytes_per_sec, 0);
    }

    #[test]
    fn nothing_given_keeps_the_defaults_and_passes_nothing() {
        let t = T::try_parse_from(["t"]).unwrap();
        assert!(t.s.to_args().is_empty());
        let mut a = server::Scheduling::default();
        t.s.apply(&mut a).unwrap();
        assert_eq!(a, server::Scheduling::default());
    }

    #[test]
    fn bad_values_are_refused() {
        let t = T::try_parse_from(["t", "--store-down-timeout", "0"]).unwrap();
        let e = t.s.apply(&mut server::Scheduling::default()).unwrap_err();
        assert!(e.to_string().contains("--store-down-timeout"), "{e}");
        assert!(T::try_parse_from(["t", "--scheduler", "maybe"]).is_err());
        assert!(T::try_parse_from(["t", "--region-max-bytes", "-1"]).is_err());
    }
}
