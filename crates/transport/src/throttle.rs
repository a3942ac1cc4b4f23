//! Byte-rate limiting for snapshot traffic (TiKV's `snap-io-max-bytes-per-sec`): a
//! [`TokenBucket`] shared by every task that moves snapshot bytes in one direction of one
//! store, so that a store catching up a new replica, or several, leaves bandwidth to client
//! traffic and heartbeats.
//!
//! The bucket refills at `bytes_per_sec` up to `burst_bytes` and starts full. A taker reserves
//! its bytes at once and then waits until the rate has paid for them: the balance may go
//! negative, so takers are served in the order they reserved (a later one waits behind the
//! earlier ones' debt), and a request larger than the burst is served too, only later. Over
//! any interval of length `t`, the bytes handed out are at most `burst_bytes +
//! bytes_per_sec × t`.
//!
//! The arithmetic ([`BucketState`]) takes the time as an argument and is exact (integers,
//! no drift); [`TokenBucket::acquire`] waits on `tokio::time`, so tests under tokio's paused
//! clock see exact virtual durations.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Balances are kept in bytes × 10⁹, so that a refill of `bytes_per_sec × elapsed
/// nanoseconds` is an exact integer.
const SCALE: i128 = 1_000_000_000;

/// The default burst of a bucket of `bytes_per_sec`: one second's worth, and at least one
/// chunk of `max_chunk_bytes`, so that after an idle spell one chunk goes out without waiting
/// even at a rate below a chunk per second.
pub fn default_burst_bytes(bytes_per_sec: u64, max_chunk_bytes: u64) -> u64 {
    bytes_per_sec.max(max_chunk_bytes)
}

/// The state of a token bucket, without a clock or a lock: every call is told the time.
#[derive(Debug, Clone)]
pub struct BucketState {
    /// Available bytes × [`SCALE`]; negative while takers wait for bytes already reserved.
    balance_scaled: i128,
    /// When `balance_scaled` was last brought up to date.
    updated: Instant,
}

impl BucketState {
    /// A full bucket of `burst_bytes` at `now`.
    pub fn full(burst_bytes: u64, now: Instant) -> BucketState {
        BucketState {
            balance_scaled: i128::from(burst_bytes) * SCALE,
            updated: now,
        }
    }

    /// Brings the balance up to `now`: `bytes_per_sec` for every second since the last
    /// update, never above `burst_bytes`. A `now` earlier than the last update (two takers
    /// that read the clock in one order and took the lock in the other) counts as no time.
    pub fn refill(&mut self, now: Instant, bytes_per_sec: u64, burst_bytes: u64) {
        if now <= self.updated {
            return;
        }
        let elapsed_ns = now.duration_since(self.updated).as_nanos();
        let elapsed_ns = i128::try_from(elapsed_ns).unwrap_or(i128::MAX);
        let refill_scaled = i128::from(bytes_per_sec).saturating_mul(elapsed_ns);
        let cap_scaled = i128::from(burst_bytes) * SCALE;
        self.balance_scaled = self
            .balance_scaled
            .saturating_add(refill_scaled)
            .min(cap_scaled);
        self.updated = now;
    }

    /// Takes `bytes` at `now` (refilling first) and returns how long the taker must wait
    /// before using them: zero while the balance covers them, otherwise the time the rate
    /// needs to pay off the debt, rounded up to the nanosecond. `bytes_per_sec` 0 means
    /// unlimited: nothing is taken and nothing waits.
    pub fn take(
        &mut self,
        now: Instant,
        bytes: u64,
        bytes_per_sec: u64,
        burst_bytes: u64,
    ) -> Duration {
        if bytes_per_sec == 0 {
            return Duration::ZERO;
        }
        self.refill(now, bytes_per_sec, burst_bytes);
        self.balance_scaled = self
            .balance_scaled
            .saturating_sub(i128::from(bytes) * SCALE);
        if self.balance_scaled >= 0 {
            return Duration::ZERO;
        }
        let debt_scaled = self.balance_scaled.checked_neg().unwrap_or(i128::MAX);
        let rate = i128::from(bytes_per_sec);
        // ceil(debt / rate): the nanoseconds until the balance is back at zero.
        let wait_ns = debt_scaled.saturating_add(rate - 1) / rate;
        Duration::from_nanos(u64::try_from(wait_ns).unwrap_or(u64::MAX))
    }

    /// The balance in whole bytes at the last update, rounded down; negative while takers
    /// wait.
    pub fn balance_bytes(&self) -> i128 {
        self.balance_scaled.div_euclid(SCALE)
    }
}

/// A token bucket of bytes, shared by reference (put it in an `Arc`) among every task that
/// draws from it. `bytes_per_sec` 0 = unlimited.
#[derive(Debug)]
pub struct TokenBucket {
    bytes_per_sec: u64,
    burst_bytes: u64,
    state: Mutex<BucketState>,
}

impl TokenBucket {
    /// A bucket refilling at `bytes_per_sec` up to `burst_bytes`, full at creation.
    /// `bytes_per_sec` 0 = unlimited. A burst of 0 is allowed: every taker then waits for
    /// its bytes at the rate.
    pub fn new(bytes_per_sec: u64, burst_bytes: u64) -> TokenBucket {
        TokenBucket {
            bytes_per_sec,
            burst_bytes,
            state: Mutex::new(BucketState::full(burst_bytes, Instant::now())),
        }
    }

    /// A bucket of `bytes_per_sec` with the [default burst](default_burst_bytes): one
    /// second's worth, at least `max_chunk_bytes`.
    pub fn with_default_burst(bytes_per_sec: u64, max_chunk_bytes: u64) -> TokenBucket {
        TokenBucket::new(
            bytes_per_sec,
            default_burst_bytes(bytes_per_sec, max_chunk_bytes),
        )
    }

    /// A bucket that never waits.
    pub fn unlimited() -> TokenBucket {
        TokenBucket::new(0, 0)
    }

    pub fn bytes_per_sec(&self) -> u64 {
        self.bytes_per_sec
    }

    pub fn burst_bytes(&self) -> u64 {
        self.burst_bytes
    }

    /// Whether the rate is 0: [`TokenBucket::acquire`] never waits.
    pub fn is_unlimited(&self) -> bool {
        self.bytes_per_sec == 0
    }

    /// Takes `bytes` at `now` and returns how long the caller must wait before using them
    /// (see [`BucketState::take`]). Never blocks; [`TokenBucket::acquire`] is this plus the
    /// wait.
    pub fn reserve(&self, bytes: u64, now: Instant) -> Duration {
        if self.is_unlimited() || bytes == 0 {
            return Duration::ZERO;
        }
        // Nothing panics while holding the lock; recover from poisoning rather than stop
        // sending snapshots.
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.take(now, bytes, self.bytes_per_sec, self.burst_bytes)
    }

    /// Waits until `bytes` may be used, and returns how long it waited (zero if the balance
    /// covered them, always zero at rate 0).
    ///
    /// Cancelling the wait (dropping the future) does not give the bytes back: the bucket
    /// cannot tell whether they were used, so later takers wait for them too.
    pub async fn acquire(&self, bytes: u64) -> Duration {
        let wait = self.reserve(bytes, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        wait
    }

    /// The balance in whole bytes as of the last taker (negative while takers wait).
    pub fn balance_bytes(&self) -> i128 {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .balance_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    const MIB: u64 = 1 << 20;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_full_bucket_hands_out_its_burst_then_makes_takers_wait_for_the_rate() {
        let t0 = Instant::now();
        let mut s = BucketState::full(4 * MIB, t0);
        for _ in 0..4 {
            assert_eq!(s.take(t0, MIB, 4 * MIB, 4 * MIB), Duration::ZERO);
        }
        assert_eq!(s.balance_bytes(), 0);
        // The fifth MiB at 4 MiB/s: a quarter of a second.
        assert_eq!(s.take(t0, MIB, 4 * MIB, 4 * MIB), ms(250));
        // A second taker at the same instant waits behind the first one's debt.
        assert_eq!(s.take(t0, MIB, 4 * MIB, 4 * MIB), ms(500));
        assert_eq!(s.balance_bytes(), -2 * i128::from(MIB));
        // 100 ms later the rate paid 0.4 MiB of the debt: the next MiB waits 0.65 s.
        assert_eq!(s.take(t0 + ms(100), MIB, 4 * MIB, 4 * MIB), ms(650));
    }

    #[test]
    fn refill_stops_at_the_burst() {
        let t0 = Instant::now();
        let mut s = BucketState::full(MIB, t0);
        assert_eq!(s.take(t0, MIB, MIB, MIB), Duration::ZERO);
        // An hour idle refills one burst, not 3,600 of them.
        s.refill(t0 + Duration::from_secs(3600), MIB, MIB);
        assert_eq!(s.balance_bytes(), i128::from(MIB));
        assert_eq!(
            s.take(t0 + Duration::from_secs(3600), 2 * MIB, MIB, MIB),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn a_request_above_the_burst_is_served_after_the_rate_pays_for_it() {
        let t0 = Instant::now();
        let mut s = BucketState::full(MIB, t0);
        // 64 MiB through a 1 MiB bucket at 1 MiB/s: 63 s, not never.
        assert_eq!(s.take(t0, 64 * MIB, MIB, MIB), Duration::from_secs(63));
    }

    #[test]
    fn a_clock_read_before_the_last_update_counts_as_no_time() {
        let t0 = Instant::now();
        let later = t0 + ms(500);
        let mut s = BucketState::full(0, t0);
        assert_eq!(s.take(later, 1000, 1000, 0), Duration::from_secs(1));
        // This taker read the clock before the previous one but locked after it.
        assert_eq!(s.take(t0, 1000, 1000, 0), Duration::from_secs(2));
    }

    #[test]
    fn waits_round_up_to_the_nanosecond() {
        let t0 = Instant::now();
        let mut s = BucketState::full(0, t0);
        // 1 byte at 3 bytes/s: 333,333,333.33… ns, rounded up.
        assert_eq!(s.take(t0, 1, 3, 0), Duration::from_nanos(333_333_334));
    }

    #[test]
    fn rate_zero_takes_nothing() {
        let t0 = Instant::now();
        let mut s = BucketState::full(0, t0);
        assert_eq!(s.take(t0, u64::MAX, 0, 0), Duration::ZERO);
        assert_eq!(s.balance_bytes(), 0);
        let b = TokenBucket::unlimited();
        assert_eq!(b.reserve(u64::MAX, t0), Duration::ZERO);
        assert!(b.is_unlimited());
    }

    #[test]
    fn the_default_burst_is_a_second_and_at_least_a_chunk() {
        assert_eq!(default_burst_bytes(100 * MIB, 4 * MIB), 100 * MIB);
        assert_eq!(default_burst_bytes(MIB, 4 * MIB), 4 * MIB);
        let b = TokenBucket::with_default_burst(MIB, 4 * MIB);
        assert_eq!((b.bytes_per_sec(), b.burst_bytes()), (MIB, 4 * MIB));
    }

    proptest! {
        /// Whatever the takers' sizes and arrival times: by the time each is allowed to use
        /// its bytes, everything handed out so far is within `burst + rate × elapsed`, and
        /// takers finish in the order they arrived.
        #[test]
        fn handed_out_bytes_stay_within_burst_plus_rate_times_elapsed(
            rate in 1u64..(64 * MIB),
            burst in 0u64..(8 * MIB),
            takers in proptest::collection::vec((0u64..2_000_000_000, 0u64..(16 * MIB)), 1..64),
        ) {
            let t0 = Instant::now();
            let mut s = BucketState::full(burst, t0);
            let mut now = t0;
            let mut total: u128 = 0;
            let mut last_done = t0;
            for (gap_ns, bytes) in takers {
                now += Duration::from_nanos(gap_ns);
                let wait = s.take(now, bytes, rate, burst);
                let done = now + wait;
                prop_assert!(done >= last_done, "a later taker finished first");
                last_done = done;
                total += u128::from(bytes);
                let elapsed_ns = done.duration_since(t0).as_nanos();
                prop_assert!(
                    total * 1_000_000_000
                        <= u128::from(rate) * elapsed_ns + u128::from(burst) * 1_000_000_000,
                    "{total} bytes by {elapsed_ns} ns at {rate} B/s, burst {burst}"
                );
                // And no taker waits while the balance covered it.
                if wait > Duration::ZERO {
                    prop_assert!(s.balance_bytes() < 0);
                }
            }
        }
    }

    /// The brief's example: 10 × 1 MiB at 4 MiB/s once the bucket's burst is spent take
    /// 2.5 s of virtual time (the rate alone decides).
    #[tokio::test(start_paused = true)]
    async fn ten_mebibytes_at_four_per_second_take_two_and_a_half_seconds_after_the_burst() {
        let bucket = TokenBucket::with_default_burst(4 * MIB, MIB);
        assert_eq!(bucket.burst_bytes(), 4 * MIB);
        assert_eq!(bucket.acquire(4 * MIB).await, Duration::ZERO, "the burst");
        let start = Instant::now();
        for _ in 0..10 {
            bucket.acquire(MIB).await;
        }
        let elapsed = start.elapsed();
        // Timers fire on whole milliseconds, never early.
        assert!(
            elapsed >= ms(2500) && elapsed <= ms(2510),
            "10 MiB at 4 MiB/s took {elapsed:?}"
        );
    }

    /// From a fresh bucket the first second's worth goes at once: 10 MiB take 1.5 s.
    #[tokio::test(start_paused = true)]
    async fn a_fresh_bucket_sends_its_burst_at_once_then_at_the_rate() {
        let bucket = TokenBucket::with_default_burst(4 * MIB, MIB);
        let start = Instant::now();
        let mut waits = Vec::new();
        for _ in 0..10 {
            waits.push(bucket.acquire(MIB).await);
        }
        let elapsed = start.elapsed();
        assert!(waits[..4].iter().all(|w| w.is_zero()), "{waits:?}");
        assert!(waits[4..].iter().all(|w| !w.is_zero()), "{waits:?}");
        assert!(
            elapsed >= ms(1500) && elapsed <= ms(1510),
            "10 MiB at 4 MiB/s with a 4 MiB burst took {elapsed:?}"
        );
    }

    /// Four tasks drawing from one bucket share its rate: 4 × 10 × 256 KiB = 10 MiB at
    /// 4 MiB/s after the burst take 2.5 s in all, not 2.5 s / 4.
    #[tokio::test(start_paused = true)]
    async fn tasks_sharing_a_bucket_share_its_rate() {
        let bucket = Arc::new(TokenBucket::with_default_burst(4 * MIB, MIB));
        bucket.acquire(4 * MIB).await;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let bucket = bucket.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..10 {
                    bucket.acquire(MIB / 4).await;
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        let elapsed = start.elapsed();
        assert!(
            elapsed >= ms(2500) && elapsed <= ms(2510),
            "10 MiB shared at 4 MiB/s took {elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn rate_zero_never_waits() {
        let bucket = TokenBucket::unlimited();
        let start = Instant::now();
        for _ in 0..1000 {
            assert_eq!(bucket.acquire(u64::MAX).await, Duration::ZERO);
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
