//! # placement — where every store and region is, and where it should be
//!
//! The shard controller of RaftKV (the seed's Join / Leave / Move / Query, TiKV's PD): a
//! deterministic state machine that the stores host as one more Raft group (see
//! `docs/ARCHITECTURE.md`, "Placement"). Every change to the layout of stores, regions or
//! their replicas is a new numbered **configuration**; `Query(n)` answers any of the last
//! [`machine::HISTORY_LEN`].
//!
//! ## Module map
//! - [`model`]: what a configuration holds (`StoreMeta`, `RegionLayout`, `Config`) and the
//!   `Change`s between configurations.
//! - [`machine`]: `PlacementState` (configurations, the store id allocator, the verbs Join,
//!   UpdateStore, ReportRegion, Drain, Move) and the encodings of commands, replies and
//!   snapshots.
//! - [`balance`]: the minimal-move rebalance that Join and Drain run.
//! - [`operator`]: the next replica change that takes a region toward its target.

pub mod balance;
pub mod machine;
pub mod model;
pub mod operator;

pub use machine::{
    decode_command, decode_reply, encode_command, encode_reply, Command, PlacementError,
    PlacementState, Reply, HISTORY_LEN,
};
pub use model::{Change, Config, RegionLayout, ReplicaMeta, StoreAddrs, StoreMeta, StoreState};
pub use operator::{next_step, Operator};
