//! `StoreConfig`: a store's tunables, and their defaults.

use crate::region::StoreId;
use raft::{Config, ReadMode};

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
    /// replica when that replica is fully caught up (0 = never). See
    /// [`Store::balance_leaders`].
    ///
    /// [`Store::balance_leaders`]: crate::Store::balance_leaders
    pub balance_leaders_every_ticks: u64,
    /// Every this many ticks the store checks whether its log outgrew its budget and if so
    /// reclaims space ([`Store::reclaim_log`]; 0 = never, for tests of the engine alone).
    ///
    /// [`Store::reclaim_log`]: crate::Store::reclaim_log
    pub log_purge_every_ticks: u64,
    /// Chunk size of snapshots sent to followers (the core's default; the simulator makes it
    /// small so that transfers take many round trips and crashes cut them).
    pub snapshot_chunk_bytes: u64,
}

impl StoreConfig {
    pub fn new(store_id: u64) -> StoreConfig {
        StoreConfig {
            store_id: StoreId(store_id),
            election_tick: 10,
            heartbeat_tick: 2,
            snapshot_threshold_entries: DEFAULT_SNAPSHOT_THRESHOLD_ENTRIES,
            snapshot_threshold_bytes: DEFAULT_SNAPSHOT_THRESHOLD_BYTES,
            max_pending_per_region: 10_000,
            read_mode: ReadMode::Safe,
            engine: raft_log::Config::default(),
            balance_leaders_every_ticks: 0,
            log_purge_every_ticks: DEFAULT_LOG_PURGE_EVERY_TICKS,
            snapshot_chunk_bytes: Config::new(1, 1).snapshot_chunk_bytes,
        }
    }
}
