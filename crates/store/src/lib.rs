//! # store — one RaftKV store: many region replicas over one shared log
//!
//! A store hosts a replica ("peer") of many regions. Each region is its own Raft group with
//! its own state machine; all of the store's groups persist through one
//! [`raft_log::LogEngine`], and every round of Readies is written with **one write and one
//! fdatasync for all regions** (group commit across regions).
//!
//! The store is sans-IO towards the network and the clock, like the Raft core: the caller
//! feeds it ticks and messages and collects messages to send, so the same code runs under a
//! tokio shell and under the deterministic simulator.
//!
//! ## Module map
//! - [`region`], [`state_machine`]: re-exported from the `types` crate (ids, `Region`, the
//!   `StateMachine` trait), which the crates that need only the vocabulary use directly.
//! - [`store`]: `Store` — bootstrap/open, routing messages by region, proposals and reads
//!   with epoch checks, ticks, status. Its other jobs are `impl Store` blocks in private
//!   modules, whose public items are re-exported from [`store`] (the main ones from the root):
//!   - `config`: `StoreConfig`, a store's tunables, and their defaults.
//!   - `peer`: `Peer`, one region replica, and when it wants a snapshot.
//!   - `ready`: the Ready round with cross-region group commit, applying, serving reads.
//!   - `snapshots`: snapshotting past the thresholds, committing, installing received ones.
//!   - `balance`: spreading a new cluster's leaders over its stores, once
//!     (`Store::balance_leaders`).
//!   - (the live region map, `types::LiveRegions`, is published by `store`.)
//!   - `reclaim`: keeping the shared log within its budget (`Store::reclaim_log`).
//!   - `split`: regions that change shape at runtime: `Store::propose_split`, the effects
//!     of applied admin entries (`Store::apply_effects`), cluster-unique ids
//!     (`Store::alloc_id`), replicas created by a leader's first message.
//!   - `merge`: merging a region into its neighbour (`Store::propose_merge`; prepare,
//!     commit, rollback, destroying the absorbed source).
//!   - `membership`: replica changes (`Store::propose_replica_change`), applying them to
//!     the descriptor, destroying a removed replica (tombstone, data deleted), and one
//!     removed while its store was away once placement names it
//!     (`Store::destroy_stale_replica`).
//!   - `split_check`: where to split a region, on its leader: by size
//!     (`Store::size_split_key`, asking the state machine) or by load
//!     (`Store::load_split_key`, the median of a bounded sample of its requests' keys;
//!     `Store::rotate_load_samples` ends a sampling window).
//!   - `entry`: what a normal log entry carries (a command with the region version it was
//!     routed with, or an admin command); `snapshot_data`: a snapshot's descriptor + state.
//! - [`snapshot_job`]: snapshots built off the store thread — a point-in-time view taken on
//!   it, serialized and written by a `SnapshotBuilder` (`ThreadBuilder` in the server),
//!   published and compacted to back on it.
//! - [`driver`]: `Driver` — the one loop that runs a store (tick catch-up, Ready rounds,
//!   writing a round inline when idle or handing it to a `RoundWriter`), used by the server's
//!   store thread and by the whole-cluster simulator alike.
//! - [`error`]: what a request can be refused with (`EpochNotMatch` carries the current
//!   region so that a client re-routes).
//!
//! ## Durability
//! A write is acknowledged (its completion returned) only after its entry was applied, which
//! happens only after it was committed, which the leader counts only after its own copy was
//! persisted with sync; followers acknowledge only after their sync. So an acknowledged
//! write is on the disks of a majority.

// `Store`'s jobs besides the store itself, one module each (see the module map above).
mod balance;
mod config;
mod entry;
mod membership;
mod merge;
mod peer;
mod ready;
mod reclaim;
mod snapshot_data;
mod snapshots;
mod split;
mod split_check;

pub mod driver;
pub mod error;
pub mod snapshot_job;
pub mod store;
pub use types::{region, state_machine};

pub use driver::{Driver, DriverStats, EngineWriter, InlineWriter, RoundWriter};
pub use entry::AdminCommand;
pub use error::StoreError;
pub use membership::ReplicaChange;
pub use merge::MergeState;
pub use region::{PeerMeta, Region, RegionEpoch, RegionId, StoreId, PLACEMENT_REGION};
pub use snapshot_job::{
    BuiltSnapshot, HereBuilder, SnapshotBuilder, SnapshotJob, SnapshotWork, ThreadBuilder,
    MAX_SNAPSHOTS_BUILDING,
};
pub use split::{ID_BATCH, ID_COUNTER_BITS, MAX_STORE_ID};
pub use split_check::{
    LOAD_SAMPLES_PER_WINDOW, LOAD_WINDOW_REQUESTS, MAX_SAMPLED_KEY_BYTES, MIN_LOAD_SAMPLES,
};
pub use state_machine::StateMachine;
pub use store::{
    Completion, PendingWrite, RegionStatus, Reply, Store, StoreConfig, StoreStats, Ticket,
    DEFAULT_BALANCE_LEADERS_FOR_TICKS, DEFAULT_ELECTION_TICK, DEFAULT_HEARTBEAT_TICK,
    DEFAULT_LOG_PURGE_EVERY_TICKS, DEFAULT_READ_MODE, DEFAULT_SNAPSHOT_THRESHOLD_BYTES,
    DEFAULT_SNAPSHOT_THRESHOLD_ENTRIES,
};
pub use types::{LiveRegions, RegionMap};
