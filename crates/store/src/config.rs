//! `StoreConfig`: a store's tunables, and their defaults.

use crate::region::StoreId;
use raft::{Config, ReadMode};

/// Default of [`StoreConfig::election_tick`]: the server's clock ticks every 50 ms by
/// default, so elections time out after 1–2 s.
pub const DEFAULT_ELECTION_TICK: u32 = 20;
/// Default of [`StoreConfig::heartbeat_tick`].
pub const DEFAULT_HEARTBEAT_TICK: u32 = 2;
/// Default of [`StoreConfig::read_mode`]: a leader serves linearizable reads on its lease
/// (ReadIndex when the lease cannot be trusted).
pub const DEFAULT_READ_MODE: ReadMode = ReadMode::Lease;
/// Default of [`StoreConfig::balance_leaders_for_ticks`]: 30 s at the default tick.
pub const DEFAULT_BALANCE_LEADERS_FOR_TICKS: u64 = 600;
/// Default of [`StoreConfig::snapshot_threshold_entries`].
pub const DEFAULT_SNAPSHOT_THRESHOLD_ENTRIES: u64 = 10_000;
/// Default of [`StoreConfig::snapshot_threshold_bytes`]: with the default log budget (8
/// segments of `raft_log::DEFAULT_SEGMENT_SIZE_BYTES`, 128 MiB) three busy regions compact
/// by their own thresholds before the log's purge has to force them.
pub const DEFAULT_SNAPSHOT_THRESHOLD_BYTES: u64 = 32 << 20;
/// Default of [`StoreConfig::log_purge_every_ticks`]: every tick (the check reads one
/// counter; a purge runs only once the log is over its budget), so that however fast
/// segments fill, the log overshoots its budget by at most a tick's writes.
pub const DEFAULT_LOG_PURGE_EVERY_TICKS: u64 = 1;

/// Default of [`StoreConfig::housekeeping_every_ticks`]: once a second at the default tick.
pub const DEFAULT_HOUSEKEEPING_EVERY_TICKS: u64 = 20;

/// Tunables of a store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub store_id: StoreId,
    pub election_tick: u32,
    pub heartbeat_tick: u32,
    /// Snapshot a region (and compact its log) once this many applied entries sit in its log
    /// and they are large enough next to the state (see [`SNAPSHOT_AMORTIZATION`]; a log of
    /// [`SNAPSHOT_MAX_ENTRIES_FACTOR`] times this many entries is compacted regardless)...
    ///
    /// [`SNAPSHOT_AMORTIZATION`]: crate::store::SNAPSHOT_AMORTIZATION
    /// [`SNAPSHOT_MAX_ENTRIES_FACTOR`]: crate::store::SNAPSHOT_MAX_ENTRIES_FACTOR
    pub snapshot_threshold_entries: u64,
    /// ...or once the entries applied since its last snapshot carry this many payload bytes.
    pub snapshot_threshold_bytes: u64,
    /// Proposals plus reads waiting in one region before new ones are refused with `Busy`.
    pub max_pending_per_region: usize,
    /// How linearizable reads are confirmed.
    pub read_mode: ReadMode,
    /// Engine configuration (segment size, recovery mode).
    pub engine: raft_log::Config,
    /// Every this many ticks, a leader hands each region it leads to the region's preferred
    /// founding replica when that replica is fully caught up (0 = never). See
    /// [`Store::balance_leaders`]...
    ///
    /// [`Store::balance_leaders`]: crate::Store::balance_leaders
    pub balance_leaders_every_ticks: u64,
    /// ...but only during this many ticks after the store bootstrapped its regions (a fresh
    /// data directory), never after a restart: leaders are spread over a new cluster's stores
    /// once, and from then on stay wherever elections and `transfer-leader` put them (the
    /// placement service balances them, issue 18).
    pub balance_leaders_for_ticks: u64,
    /// Every this many ticks the store checks whether its log outgrew its budget and if so
    /// reclaims space ([`Store::reclaim_log`]; 0 = never, for tests of the engine alone).
    ///
    /// [`Store::reclaim_log`]: crate::Store::reclaim_log
    pub log_purge_every_ticks: u64,
    /// Every this many ticks a leader asks each region's state machine for housekeeping
    /// (`StateMachine::housekeeping`: the KV machine deletes expired keys through the log) and
    /// proposes what it returns; 0 = never.
    pub housekeeping_every_ticks: u64,
    /// Chunk size of snapshots sent to followers (the core's default; the simulator makes it
    /// small so that transfers take many round trips and crashes cut them).
    pub snapshot_chunk_bytes: u64,
}

impl StoreConfig {
    pub fn new(store_id: u64) -> StoreConfig {
        StoreConfig {
            store_id: StoreId(store_id),
            election_tick: DEFAULT_ELECTION_TICK,
            heartbeat_tick: DEFAULT_HEARTBEAT_TICK,
            snapshot_threshold_entries: DEFAULT_SNAPSHOT_THRESHOLD_ENTRIES,
            snapshot_threshold_bytes: DEFAULT_SNAPSHOT_THRESHOLD_BYTES,
            max_pending_per_region: 10_000,
            read_mode: DEFAULT_READ_MODE,
            engine: raft_log::Config::default(),
            balance_leaders_every_ticks: DEFAULT_ELECTION_TICK as u64,
            balance_leaders_for_ticks: DEFAULT_BALANCE_LEADERS_FOR_TICKS,
            log_purge_every_ticks: DEFAULT_LOG_PURGE_EVERY_TICKS,
            housekeeping_every_ticks: DEFAULT_HOUSEKEEPING_EVERY_TICKS,
            snapshot_chunk_bytes: Config::new(1, 1).snapshot_chunk_bytes,
        }
    }
}
