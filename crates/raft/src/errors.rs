//! Errors returned to the caller of the core. Broken internal invariants are not errors:
//! they panic with the values that broke them.

use crate::storage::StorageError;
use crate::types::{GroupId, LogIndex, NodeId};
use thiserror::Error;

/// A proposal (data or membership change) was not accepted.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProposeError {
    #[error("not the leader{}", leader_hint(*.leader))]
    NotLeader { leader: Option<NodeId> },
    #[error("entry of {size} bytes exceeds the limit of {max} bytes")]
    EntryTooLarge { size: u64, max: u64 },
    #[error(
        "too much uncommitted data ({pending} bytes pending, limit {max}); retry after commits catch up"
    )]
    UncommittedLimit { pending: u64, max: u64 },
    #[error("leadership is being transferred to {to}; retry on the new leader")]
    LeaderTransferring { to: NodeId },
    #[error("a membership change (index {index}) is still in flight; retry after it applies")]
    ConfChangePending { index: LogIndex },
    #[error("invalid membership change: {0}")]
    InvalidConfChange(String),
}

fn leader_hint(leader: Option<NodeId>) -> String {
    match leader {
        Some(l) => format!(" (leader is {l})"),
        None => " (leader unknown)".to_string(),
    }
}

/// A linearizable read could not be started.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ReadError {
    #[error("not the leader and no leader known to forward to")]
    NoLeader,
    #[error("too many pending reads (limit {max}); retry later")]
    TooManyPending { max: usize },
}

/// A leadership transfer could not be started.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TransferError {
    #[error("not the leader{}", leader_hint(*.leader))]
    NotLeader { leader: Option<NodeId> },
    #[error("node {0} is not a voter of this group")]
    NotVoter(NodeId),
}

/// A message handed to `step` was not for this peer.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StepError {
    #[error("message for group {got} delivered to group {expected}")]
    WrongGroup { expected: GroupId, got: GroupId },
    #[error("message for node {got} delivered to node {expected}")]
    WrongNode { expected: NodeId, got: NodeId },
}

/// What [`crate::Config::validate`] found wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    #[error("id must not be 0")]
    ZeroId,
    #[error("heartbeat_tick must be at least 1")]
    ZeroHeartbeatTick,
    #[error(
        "election_tick ({election_tick}) must be greater than heartbeat_tick ({heartbeat_tick})"
    )]
    ElectionNotAboveHeartbeat {
        election_tick: u32,
        heartbeat_tick: u32,
    },
    #[error("lease_drift_ticks ({lease_drift_ticks}) must be smaller than election_tick ({election_tick})")]
    LeaseDriftTooLarge {
        lease_drift_ticks: u32,
        election_tick: u32,
    },
    #[error("{0} must be at least 1")]
    Zero(&'static str),
}

/// The core could not be created.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum InitError {
    #[error("invalid config: {0}")]
    Config(#[from] ConfigError),
    #[error("reading initial state from storage: {0}")]
    Storage(#[from] StorageError),
    #[error(
        "persisted commit index {commit} is beyond the last log index {last_index}: the log lost entries"
    )]
    CommitBeyondLog {
        commit: LogIndex,
        last_index: LogIndex,
    },
}
