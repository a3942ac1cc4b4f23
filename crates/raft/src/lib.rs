//! # raft — RaftKV's sans-IO consensus core
//!
//! One [`RawNode`] is one peer of one Raft group. It owns no threads, clocks, sockets or
//! files: the caller feeds it ticks, messages and requests, and it answers with a [`Ready`]
//! describing what to persist, send and apply. Every random choice comes from
//! [`Config::seed`], so the same inputs always produce the same outputs.
//!
//! ## Module map
//! - [`types`]: newtypes (`NodeId`, `GroupId`, `Term`, `LogIndex`), entries, hard state,
//!   membership, snapshots and messages.
//! - [`storage`]: the [`Storage`] trait the core reads the persisted log through, and
//!   [`MemStorage`].
//! - [`storage_suite`]: a conformance suite every [`Storage`] implementation runs
//!   ([`storage_suite::run_all`]).
//! - `log`: the core's view of the log (persisted prefix + unstable suffix, commit/apply).
//! - `progress`: per-follower replication state, the in-flight window, quorum arithmetic
//!   (including joint configurations).
//! - `raft`: the protocol: elections (PreVote, CheckQuorum), replication (batching,
//!   pipelining, fast backtracking), snapshots in chunks, membership change, leader
//!   transfer, ReadIndex and lease reads.
//! - [`conf_change`]: membership change requests and how they transform a configuration.
//! - `raw_node`: [`RawNode`] and [`Ready`].
//! - [`errors`]: what the caller can get wrong.
//!
//! ## The contract
//! Drive each peer in a loop:
//! 1. Feed input: [`RawNode::tick`] on a timer, [`RawNode::step`] for each received message,
//!    [`RawNode::propose`] / [`RawNode::read_index`] / ... for client requests.
//! 2. If [`RawNode::has_ready`], take the [`Ready`] with [`RawNode::ready`] and:
//!    1. **persist** `snapshot`, `entries` (truncating any conflicting tail) and
//!       `hard_state`, and make them durable;
//!    2. then **send** `messages` (a vote or an acknowledgement must never leave before the
//!       state it promises is durable);
//!    3. then **apply** `committed_entries` in order, and serve `read_states` once the
//!       applied index reaches theirs;
//!    4. then call [`RawNode::advance`] with the `Ready`.
//!
//! `advance` consumes the `Ready`, so it cannot be handed back twice, and `ready` panics if
//! called again before `advance`.
//!
//! **Asynchronous persistence** (what the store does): instead of step 4, call
//! [`RawNode::advance_async`] as soon as the Ready is applied and its write started, keep
//! going (the next `ready` hands out only what is new), and call [`RawNode::on_persisted`]
//! with its token once the write is durable, Readies in the order handed out. Then step 2
//! becomes: a leader's messages may leave at once when the Ready changes neither term nor
//! vote (the core counts the leader's own copy only once persisted); every other message
//! waits until its Ready's write and all earlier ones are durable. Writes reach the disk in
//! the order handed out, and the application never snapshots past
//! [`RawNode::persisted_index`].
//!
//! ```
//! use raft::{Config, MemStorage, RawNode, ConfState};
//! let storage = MemStorage::with_conf_state(ConfState::from_voters([1]));
//! let mut node = RawNode::new(&Config::new(1, 1), storage).unwrap();
//! node.campaign(); // a single voter elects itself
//! node.propose("hello".into()).unwrap();
//! let mut applied = Vec::new();
//! while node.has_ready() {
//!     let rd = node.ready();
//!     // 1. persist
//!     node.storage_mut().append(&rd.entries);
//!     if let Some(hs) = rd.hard_state { node.storage_mut().set_hard_state(hs); }
//!     // 2. send rd.messages (none in a one-node group)
//!     // 3. apply
//!     applied.extend(rd.committed_entries.iter().map(|e| e.data.clone()));
//!     // 4. advance
//!     node.advance(rd);
//! }
//! assert!(applied.iter().any(|d| d.as_ref() == b"hello"));
//! ```

pub mod conf_change;
pub mod errors;
mod log;
mod progress;
mod raft;
mod raw_node;
mod rng;
pub mod storage;
pub mod storage_suite;
pub mod types;

pub use conf_change::{ConfChange, ConfChangeItem, ConfChangeKind};
pub use errors::{ConfigError, InitError, ProposeError, ReadError, StepError, TransferError};
pub use progress::ProgressState;
pub use raft::{Config, ReadMode};
pub use raw_node::{Persisted, RawNode, Ready, Status};
pub use rng::SplitMix64;
pub use storage::{MemStorage, RaftState, Storage, StorageError, INIT_LOG_INDEX, INIT_TERM};
pub use types::*;
