//! The one loop that runs a [`Store`]: tick catch-up, Ready rounds, and the choice between
//! writing a round on the store thread and handing it to an asynchronous writer. The server's
//! store thread (tokio around it) and the whole-cluster simulator (virtual time around it) both
//! call it, so the simulator runs exactly the production rules; only where time comes from,
//! how a round's write is carried out, and whether something is queued differ, and those are
//! the [`RoundWriter`] and the arguments.
//!
//! One wake-up of a store, in order:
//! 1. [`Driver::catch_up`] with the current time: the ticks that came due, replayed (capped at
//!    [`MAX_CATCH_UP_TICKS`]) *before* any message or request that queued meanwhile.
//! 2. The caller hands the store its messages and requests.
//! 3. [`Driver::run_rounds`]: rounds whose writes are durable are finished, then every Ready
//!    is prepared, its early messages and answers delivered, and its write either done here
//!    (the store is idle: nothing in flight and nothing queued, so nothing could overlap the
//!    fsync, and the hand-off to a writer thread and back would cost two wake-ups) or
//!    submitted to the writer. Snapshots built meanwhile are handed back to the store first,
//!    and the snapshot work the store started goes to the [`SnapshotBuilder`] last.

use crate::error::StoreError;
use crate::snapshot_job::SnapshotBuilder;
use crate::state_machine::StateMachine;
use crate::store::{PendingWrite, Store};

/// Most ticks replayed after a stall (more than any election timeout or lease, in ticks).
pub const MAX_CATCH_UP_TICKS: u64 = 100;
/// Most Ready rounds in one [`Driver::run_rounds`] call; when it is reached with more ready,
/// the call says so and the caller comes back without waiting.
pub const MAX_ROUNDS_PER_CALL: usize = 64;

/// How a round's log write is carried out when it is not done on the store thread.
pub trait RoundWriter<M: StateMachine> {
    /// Starts `pending`'s write without waiting for it.
    fn submit(&mut self, store: &mut Store<M>, pending: PendingWrite) -> Result<(), StoreError>;
    /// Finishes, in order, the rounds whose writes are durable; returns how many.
    fn poll(&mut self, store: &mut Store<M>) -> Result<usize, StoreError>;
}

/// What the driver did, for tests and metrics: proof that both write paths and the tick
/// catch-up ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriverStats {
    pub ticks: u64,
    /// Ticks replayed beyond the first of a wake-up (the store had stalled).
    pub ticks_caught_up: u64,
    /// Wake-ups that found more ticks due than the cap, which were dropped.
    pub catch_ups_capped: u64,
    /// Rounds written on the store thread because it was idle.
    pub rounds_written_inline: u64,
    /// Rounds handed to the writer.
    pub rounds_submitted: u64,
}

impl DriverStats {
    /// Adds `other`'s counts (one store's lives summed, say).
    pub fn add(&mut self, other: &DriverStats) {
        self.ticks += other.ticks;
        self.ticks_caught_up += other.ticks_caught_up;
        self.catch_ups_capped += other.catch_ups_capped;
        self.rounds_written_inline += other.rounds_written_inline;
        self.rounds_submitted += other.rounds_submitted;
    }
}

/// Time and round bookkeeping of one store's loop. Times are microseconds on the caller's
/// clock (real or virtual).
#[derive(Debug)]
pub struct Driver {
    tick_micros: u64,
    next_tick: u64,
    pub stats: DriverStats,
}

impl Driver {
    /// A driver whose first tick is due at `first_tick` (microseconds).
    pub fn new(tick_micros: u64, first_tick: u64) -> Driver {
        assert!(tick_micros > 0, "a tick must last some time");
        Driver {
            tick_micros,
            next_tick: first_tick,
            stats: DriverStats::default(),
        }
    }

    /// When the next tick is due.
    pub fn next_tick(&self) -> u64 {
        self.next_tick
    }

    /// Ticks the store for every tick period that passed by `now` (none if the next tick is
    /// not due), at most [`MAX_CATCH_UP_TICKS`]. Ticks measure real time: leases and election
    /// timeouts are counted in ticks, so after a stall (a long fsync, SIGSTOP, a descheduled
    /// process) the missed ticks are replayed before the messages that queued up meanwhile.
    /// Otherwise a paused leader would resume believing its lease still holds, and a follower
    /// would acknowledge a fresh heartbeat (renewing the leader's lease) and only then catch up
    /// on ticks, believe its leader silent and vote for another inside that lease (the
    /// whole-cluster simulation found this order bug: regression seed 20108). The price: a
    /// leader whose fsync stalled for a whole election timeout may step down (CheckQuorum)
    /// before it reads the acknowledgements that did arrive. Returns the ticks run.
    pub fn catch_up<M: StateMachine>(
        &mut self,
        store: &mut Store<M>,
        now: u64,
    ) -> Result<u64, StoreError> {
        if now < self.next_tick {
            return Ok(0);
        }
        let due = (now - self.next_tick) / self.tick_micros + 1;
        let run = due.min(MAX_CATCH_UP_TICKS);
        if due > MAX_CATCH_UP_TICKS {
            self.stats.catch_ups_capped += 1;
        }
        self.next_tick = now + self.tick_micros;
        for _ in 0..run {
            store.tick()?;
        }
        self.stats.ticks += run;
        self.stats.ticks_caught_up += run - 1;
        Ok(run)
    }

    /// Runs the store's Ready rounds (see the module's steps). `queued` says whether a message
    /// or request is waiting to be handled (asked only when nothing is in flight); `deliver`
    /// sends the store's outbox and answers its completions. Returns whether rounds are still
    /// ready (the per-call bound was reached): come back without waiting.
    pub fn run_rounds<M: StateMachine>(
        &mut self,
        store: &mut Store<M>,
        writer: &mut dyn RoundWriter<M>,
        builder: &mut dyn SnapshotBuilder<M>,
        queued: &mut dyn FnMut() -> bool,
        deliver: &mut dyn FnMut(&mut Store<M>),
    ) -> Result<bool, StoreError> {
        writer.poll(store)?;
        for built in builder.finished() {
            store.finish_snapshot(built)?;
        }
        for _ in 0..MAX_ROUNDS_PER_CALL {
            if !store.has_ready() {
                break;
            }
            // Leader messages and finished requests go out before this round's write is
            // durable (see `Store::prepare_ready`); the rest when the write is finished.
            let pending = store.prepare_ready()?;
            deliver(store);
            if store.writes_in_flight() == 0 && !queued() {
                // Idle: nothing queued behind this round and no write in flight, so nothing
                // would overlap with its fsync; writing it here saves the hand-off to the
                // writer thread and back (at one client the p50 write was 0.401 ms
                // asynchronous vs 0.383 ms like this, three runs each).
                store.finish_ready(pending)?;
                self.stats.rounds_written_inline += 1;
            } else {
                writer.submit(store, pending)?;
                self.stats.rounds_submitted += 1;
            }
        }
        deliver(store);
        for work in store.take_snapshot_work() {
            builder.start(work);
        }
        Ok(store.has_ready())
    }
}

/// A writer that writes every round on the caller's thread at once (tests, and tools that
/// drive a store without a writer thread): the driver's rules still run, only no round is
/// ever in flight.
pub struct InlineWriter;

impl<M: StateMachine> RoundWriter<M> for InlineWriter {
    fn submit(&mut self, store: &mut Store<M>, pending: PendingWrite) -> Result<(), StoreError> {
        store.finish_ready(pending)
    }

    fn poll(&mut self, _store: &mut Store<M>) -> Result<usize, StoreError> {
        Ok(0)
    }
}

/// The server's writer: the log engine's own writer thread, which wakes the store thread
/// through `waker` when a write is durable.
pub struct EngineWriter {
    pub waker: std::task::Waker,
}

impl<M: StateMachine> RoundWriter<M> for EngineWriter {
    fn submit(&mut self, store: &mut Store<M>, pending: PendingWrite) -> Result<(), StoreError> {
        store.submit_ready(pending, &self.waker)
    }

    fn poll(&mut self, store: &mut Store<M>) -> Result<usize, StoreError> {
        store.poll_writes(&self.waker)
    }
}
