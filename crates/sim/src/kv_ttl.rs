//! TTL writes under clock drift, on the seeds [`ttl_by_seed`] picks (half of them, own stream).
//!
//! - **Wall clocks**: every store's wall clock is `CLOCK_BASE_MS` + virtual time + a fixed
//!   offset in ±[`MAX_OFFSET_MS`], and on half the stores a slow step of up to
//!   ±[`MAX_STEP_MS`] spread over 2–20 virtual seconds (at most 15 % of the clock's rate, so
//!   a clock never runs backwards). The simulator hands it to the store on every wake-up
//!   (`Store::set_clock_ms`: ticks, resumes, restarts, and every client request, as the
//!   server's loop does), and a write is stamped (`proposed_at_ms`) with the clock of the
//!   store it is sent to, as the server stamps it. Seeds without TTL keep the clock they had
//!   (virtual time, no base, no offset), so their runs do not change.
//! - **TTL keys**: [`TTL_KEYS_PER_REGION`] keys per bootstrap region (`rNN/t0`, ...), outside
//!   the linearizability history (its model has no expiry). About [`TTL_SHARE_PERCENT`] % of
//!   the workload's operations are TTL operations: `Put` with `Expiry::At { ms: D }` (D = the
//!   client's clock + 50..3000 ms, the value `D=<D>`), `Get`, `Inspect`, and, on the last TTL
//!   key of each region only, `Expire` (`Expiry::In`) and `Persist`.
//! - **Oracle** ([`Ttl::judge`]): a `Get` of a key no `Expire`/`Persist` was ever issued for,
//!   answered `D=<D>` by store j for a read that reached it at virtual time t, violates "no
//!   replica serves a key after its deadline" iff `D <= wall_j(t)`: the store's clock when
//!   the read arrived is at least `wall_j(t)` and a read is judged at
//!   `max(that clock, log clock)`. An `Inspect` must say it judged the read at
//!   `now_ms >= wall_j(t)` and, for a present key, report a deadline after `now_ms` (and, for
//!   a judged key, one: only `Put ... At` writes it, so it has a deadline whose `D=<D>` has
//!   the reported length). A violation fails the seed.
//!
//! `KvSimOptions::mutant_ttl_clock_behind` feeds every store a clock 1,000 s behind its wall
//! clock (stamps follow it): the oracle, which judges by the wall clock, must catch the
//! values served after their deadline.

use super::{Micros, Sim, MS, SECOND};
use bytes::Bytes;
use kv::{Command, ExpireCondition, Expiry, KeyType, PutOptions, Response, SetExpiry};
use raft::SplitMix64;
use std::collections::{BTreeMap, BTreeSet};

/// The stores' wall clocks start here on TTL seeds (ms since the Unix epoch, November 2023),
/// so that no offset makes a clock negative.
pub const CLOCK_BASE_MS: u64 = 1_700_000_000_000;
/// The largest fixed offset of a store's wall clock.
pub const MAX_OFFSET_MS: u64 = 500;
/// The largest slow step of a store's wall clock during the run.
pub const MAX_STEP_MS: u64 = 300;
/// Share of the workload's operations that are TTL operations on TTL seeds, in percent.
pub const TTL_SHARE_PERCENT: u64 = 15;
/// TTL keys per bootstrap region; the last one also gets `Expire` and `Persist`.
pub const TTL_KEYS_PER_REGION: usize = 3;
/// How far behind its wall clock the mutant feeds a store's clock.
const MUTANT_BEHIND_MS: u64 = 1_000_000;

/// Whether `seed` runs TTL operations with drifting wall clocks (half of the seeds, own
/// stream, so every other choice of a seed stays what it was).
pub fn ttl_by_seed(seed: u64) -> bool {
    SplitMix64::new(seed ^ 0x7474_6c64_7269).below(2) == 0
}

/// One store's wall clock relative to virtual time.
#[derive(Clone, Debug, Default)]
struct Clock {
    offset_ms: i64,
    /// A slow step: `step_ms` spread evenly over `[step_at, step_at + step_over]`.
    step_ms: i64,
    step_at: Micros,
    step_over: Micros,
}

/// A TTL operation in flight (the client's `InFlight::ttl`).
#[derive(Clone, Copy, Debug)]
pub(super) enum TtlOp {
    Put,
    Expire,
    Persist,
    Get,
    Inspect,
}

/// What the TTL workload did (summed into `KvSimOutcome`).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct TtlCounts {
    pub writes: u64,
    /// Answered `Get`/`Inspect` reads of keys the oracle judges.
    pub reads_judged: u64,
    /// Of those, reads that found the key present (the value checked against its deadline).
    pub live_values_judged: u64,
}

pub(super) struct Ttl {
    pub enabled: bool,
    rng: SplitMix64,
    base_ms: u64,
    clocks: Vec<Clock>,
    /// TTL keys by bootstrap region.
    keys: Vec<Vec<Vec<u8>>>,
    /// Keys some `Expire` or `Persist` was issued for: their deadline is no longer the one
    /// their value names, so the oracle skips them.
    changed: BTreeSet<Vec<u8>>,
    mutant_clock_behind: bool,
    /// Violations found, by kind: how many, and the first one.
    violations: BTreeMap<&'static str, (u64, String)>,
    pub counts: TtlCounts,
}

impl Ttl {
    /// The TTL state of a seed: `slots` stores, `regions` bootstrap regions, a fault phase
    /// of `sim_seconds`. Draws only from its own stream, and only when `enabled`.
    pub fn new(
        seed: u64,
        enabled: bool,
        slots: usize,
        regions: usize,
        sim_seconds: u64,
        mutant_clock_behind: bool,
    ) -> Ttl {
        let mut rng = SplitMix64::new(seed ^ 0x7474_6c6f_7073);
        let clocks = (0..slots)
            .map(|_| {
                if !enabled {
                    return Clock::default();
                }
                let offset_ms = rng.below(2 * MAX_OFFSET_MS + 1) as i64 - MAX_OFFSET_MS as i64;
                if rng.below(2) == 0 {
                    return Clock {
                        offset_ms,
                        ..Clock::default()
                    };
                }
                Clock {
                    offset_ms,
                    step_ms: rng.below(2 * MAX_STEP_MS + 1) as i64 - MAX_STEP_MS as i64,
                    step_at: rng.below(sim_seconds.max(1) * SECOND),
                    step_over: 2 * SECOND + rng.below(18 * SECOND),
                }
            })
            .collect();
        let keys = (0..regions)
            .map(|r| {
                (0..TTL_KEYS_PER_REGION)
                    .map(|j| super::key_of(r, &format!("t{j}")))
                    .collect()
            })
            .collect();
        Ttl {
            enabled,
            rng,
            base_ms: if enabled { CLOCK_BASE_MS } else { 0 },
            clocks,
            keys,
            changed: BTreeSet::new(),
            mutant_clock_behind,
            violations: BTreeMap::new(),
            counts: TtlCounts::default(),
        }
    }

    /// For the seed's description line.
    pub fn describe(&self) -> String {
        if !self.enabled {
            return " ttl=false".to_string();
        }
        let clocks: Vec<String> = self
            .clocks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let step = if c.step_ms != 0 {
                    format!(
                        "{:+}ms@{}s/{}s",
                        c.step_ms,
                        c.step_at / SECOND,
                        c.step_over / SECOND
                    )
                } else {
                    String::new()
                };
                format!("s{}:{:+}ms{step}", i + 1, c.offset_ms)
            })
            .collect();
        format!(" ttl=true(clocks {})", clocks.join(","))
    }

    /// Store `i`'s wall clock at virtual time `now`, in µs (never decreasing in `now`).
    fn wall_us(&self, i: usize, now: Micros) -> u64 {
        let c = &self.clocks[i];
        let mut us = i128::from(self.base_ms) * i128::from(MS)
            + i128::from(now)
            + i128::from(c.offset_ms) * i128::from(MS);
        if c.step_ms != 0 && now > c.step_at {
            let elapsed = (now - c.step_at).min(c.step_over);
            us += i128::from(c.step_ms) * i128::from(MS) * i128::from(elapsed)
                / i128::from(c.step_over);
        }
        us.max(0) as u64
    }

    /// Store `i`'s wall clock at `now`, in ms: what the oracle judges by.
    pub fn wall_ms(&self, i: usize, now: Micros) -> u64 {
        self.wall_us(i, now) / MS
    }

    /// The clock handed to store `i` at `now` (its wall clock, unless the mutant runs).
    pub fn fed_ms(&self, i: usize, now: Micros) -> u64 {
        let wall = self.wall_ms(i, now);
        if self.mutant_clock_behind {
            wall.saturating_sub(MUTANT_BEHIND_MS)
        } else {
            wall
        }
    }

    /// What the oracle found, if anything: per kind the count and the first case.
    pub fn violation(&self) -> Option<String> {
        if self.violations.is_empty() {
            return None;
        }
        let kinds: Vec<String> = self
            .violations
            .iter()
            .map(|(kind, (n, first))| format!("{n} x {kind}; the first: {first}"))
            .collect();
        Some(format!("TTL oracle: {}", kinds.join("\n  ")))
    }

    /// Store `i`'s wall clock minus virtual time at `now` (its offset, step included).
    fn offset_ms(&self, i: usize, now: Micros) -> i64 {
        self.wall_ms(i, now) as i64 - (self.base_ms + now / MS) as i64
    }

    /// A TTL operation for the next workload operation, about one in
    /// [`TTL_SHARE_PERCENT`] % of them on TTL seeds (no draw on the others).
    pub fn maybe_op(&mut self, now: Micros) -> Option<(TtlOp, Command, Vec<u8>)> {
        if !self.enabled || self.rng.below(100) >= TTL_SHARE_PERCENT {
            return None;
        }
        let region = &self.keys[self.rng.below(self.keys.len() as u64) as usize];
        let any = region[self.rng.below(region.len() as u64) as usize].clone();
        let free = region[region.len() - 1].clone();
        // The client's own clock (no offset: clients keep good time, the stores drift).
        let client_ms = self.base_ms + now / MS;
        let roll = self.rng.below(100);
        let (op, key) = match roll {
            0..40 => (TtlOp::Put, any),
            40..75 => (TtlOp::Get, any),
            75..85 => (TtlOp::Inspect, any),
            85..95 => (TtlOp::Expire, free),
            _ => (TtlOp::Persist, free),
        };
        let k = Bytes::from(key.clone());
        let command = match op {
            TtlOp::Put => {
                let deadline = client_ms + 50 + self.rng.below(2_951);
                Command::Put {
                    key: k,
                    value: Bytes::from(format!("D={deadline}")),
                    options: PutOptions {
                        expiry: SetExpiry::Set(Expiry::At { ms: deadline }),
                        ..PutOptions::default()
                    },
                }
            }
            TtlOp::Get => Command::Get { key: k },
            TtlOp::Inspect => Command::Inspect { key: k },
            TtlOp::Expire => {
                self.changed.insert(key.clone());
                Command::Expire {
                    key: k,
                    when: Expiry::In {
                        ms: 50 + self.rng.below(2_951),
                    },
                    condition: ExpireCondition::Always,
                }
            }
            TtlOp::Persist => {
                self.changed.insert(key.clone());
                Command::Persist { key: k }
            }
        };
        Some((op, command, key))
    }

    /// Judges the answer `r` to TTL operation `op` on `key`, started at `started`; a read
    /// reached store `store` at `arrived`. Records the first violation.
    pub fn judge(
        &mut self,
        op: TtlOp,
        key: &[u8],
        r: &Response,
        started: Micros,
        arrived: Option<(usize, Micros)>,
    ) {
        let (store, at) = match op {
            TtlOp::Put | TtlOp::Expire | TtlOp::Persist => {
                self.counts.writes += 1;
                return;
            }
            TtlOp::Get | TtlOp::Inspect => arrived.expect("a read's answer comes from a store"),
        };
        let wall = self.wall_ms(store, at);
        let judged = !self.changed.contains(key);
        let name = String::from_utf8_lossy(key).into_owned();
        let context = format!(
            "read started at {started}us, reached s{} at {at}us, whose clock was then {wall} (offset {:+}ms)",
            store + 1,
            self.offset_ms(store, at)
        );
        let problem: Option<(&'static str, String)> = match (op, r) {
            (TtlOp::Get, Response::Value(v)) => {
                if !judged {
                    return;
                }
                self.counts.reads_judged += 1;
                let Some(v) = v else { return };
                self.counts.live_values_judged += 1;
                let deadline: u64 = std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.strip_prefix("D="))
                    .and_then(|d| d.parse().ok())
                    .unwrap_or_else(|| panic!("TTL key {name} holds {v:?}, not D=<deadline>"));
                (deadline <= wall).then(|| {
                    (
                        "value served after its deadline (GET)",
                        format!("{name} = D={deadline}, {context}"),
                    )
                })
            }
            (TtlOp::Inspect, Response::KeyInfo { info, now_ms, .. }) => {
                if judged {
                    self.counts.reads_judged += 1;
                    if info.is_some() {
                        self.counts.live_values_judged += 1;
                    }
                }
                let now_ms = *now_ms;
                match info.as_ref().map(|i| (i, i.expires_at_ms)) {
                    _ if now_ms < wall => Some((
                        "read judged before the store's clock (INSPECT)",
                        format!("{name} judged at now_ms {now_ms}, {context}"),
                    )),
                    Some((_, Some(d))) if d <= now_ms => Some((
                        "key present after its deadline (INSPECT)",
                        format!("{name} has deadline {d} <= now_ms {now_ms}, {context}"),
                    )),
                    Some((i, Some(d)))
                        if judged
                            && (i.key_type != KeyType::String
                                || i.len != format!("D={d}").len() as u64) =>
                    {
                        Some((
                            "deadline not the one written with the value (INSPECT)",
                            format!("{name}: {i:?}, {context}"),
                        ))
                    }
                    Some((i, None)) if judged => Some((
                        "no deadline on a key only PUT ... PXAT wrote (INSPECT)",
                        format!("{name}: {i:?}, {context}"),
                    )),
                    _ => None,
                }
            }
            (op, r) => panic!("unexpected response {r:?} to TTL {op:?} of {name}"),
        };
        if let Some((kind, what)) = problem {
            let v = self.violations.entry(kind).or_insert((0, what));
            v.0 += 1;
        }
    }
}

impl Sim {
    /// The clock to hand store `i` now (see [`Ttl::fed_ms`]).
    pub(super) fn store_clock_ms(&self, i: usize) -> u64 {
        self.ttl.fed_ms(i, self.now)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{run_kv_seed, KvSimOptions};
    use super::*;

    #[test]
    fn wall_clocks_never_run_backwards_and_stay_near_virtual_time() {
        for seed in 0..64 {
            let t = Ttl::new(seed, true, 6, 3, 300, false);
            for i in 0..6 {
                let mut last = 0;
                for now in (0..300 * SECOND).step_by(997) {
                    let w = t.wall_us(i, now);
                    assert!(w >= last, "seed {seed} s{i}: clock went back at {now}us");
                    last = w;
                    let off = t.offset_ms(i, now).unsigned_abs();
                    assert!(off <= MAX_OFFSET_MS + MAX_STEP_MS + 1, "offset {off}");
                }
            }
        }
        let off = Ttl::new(1, false, 3, 3, 300, false);
        assert_eq!(off.fed_ms(2, 123_456_789), 123_456, "no TTL: virtual time");
    }

    /// A TTL seed with drifting clocks: TTL reads are judged (some of them find live
    /// values), leaders purge expired keys through the log, nothing is served after its
    /// deadline, and the replicas (whose state hashes include deadlines) converge.
    #[test]
    fn ttl_seed_with_clock_drift_judges_reads_and_purges() {
        let mut o = KvSimOptions::new(5);
        o.sim_seconds = 60;
        o.ttl = Some(true);
        let out = run_kv_seed(&o).unwrap_or_else(|e| panic!("{e}"));
        println!(
            "seed 5: {} TTL reads judged ({} live), {} housekeeping entries proposed, {} TTL writes",
            out.ttl_reads_judged, out.ttl_live_values_judged, out.housekeeping_proposed, out.ttl_writes
        );
        assert!(out.fault_mix.contains("ttl=true"), "{}", out.fault_mix);
        assert!(out.ttl_reads_judged > 0, "no TTL read judged");
        assert!(
            out.ttl_live_values_judged > 0,
            "no TTL read found a live value"
        );
        assert!(out.housekeeping_proposed > 0, "no PurgeExpired proposed");
    }

    /// The oracle can fail: stores fed a clock far behind their wall clock serve TTL keys
    /// long after their deadline.
    #[test]
    fn ttl_oracle_catches_stores_with_a_clock_far_behind() {
        let mut o = KvSimOptions::new(5);
        o.sim_seconds = 20;
        o.ttl = Some(true);
        o.mutant_ttl_clock_behind = true;
        let e = run_kv_seed(&o).expect_err("values served after their deadline went unnoticed");
        println!("{e}");
        assert!(e.contains("value served after its deadline (GET)"), "{e}");
    }
}
