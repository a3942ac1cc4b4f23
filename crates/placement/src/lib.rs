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
//! - [`bootstrap`]: a new cluster's regions and placement's first configuration.
//! - [`balance`]: the minimal-move rebalance that Join and Drain run.
//! - [`operator`]: the next replica change that takes a region toward its target.
//! - [`live`]: the placement leader's in-memory view of heartbeats (`LiveAnswer`).
//! - [`scheduler`]: the automatic scheduler's decisions over that view (split, merge,
//!   repair of Down stores, zone spread, replica and leader balance), operators in flight
//!   limited per store.
//! - [`hosted`]: `Hosted`, the state machine of every group a store hosts (a data region's
//!   kv state or the placement state), and how placement reads and verbs ride the kv types.

pub mod balance;
pub mod bootstrap;
pub mod hosted;
pub mod live;
pub mod machine;
pub mod model;
pub mod operator;
pub mod scheduler;

pub use bootstrap::{bootstrap_regions, derive_cluster_id, with_placement};
pub use hosted::{decode_answer, query_command, Hosted, QueryAnswer};
pub use machine::{
    decode_command, decode_reply, encode_command, encode_reply, Command, PlacementError,
    PlacementState, Reply, HISTORY_LEN, MAX_REPLICAS, MAX_STICK_KEYS,
};
/// The placement group's id as a number (configurations key regions by `u64`).
pub fn hosted_group_id() -> u64 {
    types::PLACEMENT_REGION.0
}

pub use live::{LiveAnswer, LiveRegion, LiveStore};
pub use model::{Change, Config, RegionLayout, ReplicaMeta, StoreAddrs, StoreMeta, StoreState};
pub use operator::{next_step, plan_report, Operator, ReportPlan};
pub use scheduler::{
    Action, Decision, OperatorRecord, Outcome, Reason, ScheduleConfig, Scheduler, SplitReason,
};
