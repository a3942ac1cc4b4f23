//! Errors a store returns for requests. Each names what was wrong and what to do.

use crate::region::{PeerMeta, Region, RegionId};
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    #[error("region {0} is not on this store; refresh the routing table")]
    RegionNotFound(RegionId),
    #[error("region epoch changed; re-route with the current region {current:?}")]
    EpochNotMatch { current: Box<Region> },
    #[error("key is outside region {region}; re-route")]
    KeyNotInRegion { region: RegionId },
    #[error("this replica of region {region} is not the leader{}", match .leader { Some(l) => format!(" (try store {})", l.store), None => String::new() })]
    NotLeader {
        region: RegionId,
        leader: Option<PeerMeta>,
    },
    #[error("proposal dropped by a leadership change before it committed; retry (sessions make the retry safe)")]
    Dropped,
    #[error("proposal refused: {0}")]
    Proposal(String),
    #[error("too many requests in flight on region {region} (limit {limit}); retry later")]
    Busy { region: RegionId, limit: usize },
    /// The region is being merged into a neighbour: frozen, it takes no requests until the
    /// merge commits (then its keys belong to the neighbour) or rolls back.
    #[error("region {region} is being merged; retry shortly (its keys move to the merged region)")]
    Merging { region: RegionId },
    /// The store thread's command queue is full (all regions of the store together).
    #[error("the store's request queue is full ({limit} queued); retry later")]
    QueueFull { limit: usize },
    /// The store thread has stopped (shutting down, or a fatal storage error stopped it).
    #[error("the store has stopped; retry on another store")]
    Stopped,
    #[error("storage failure: {0}")]
    Storage(String),
    /// The store's disk is full: the write was refused before it was proposed (certainly not
    /// applied). Reads are still served; writes are accepted again once space is freed.
    #[error("no space left on device on store {store}: write refused, not applied; free disk space on that store (reads are still served, writes resume by themselves)")]
    NoSpace { store: u64 },
    #[error("invalid store configuration: {0}")]
    Config(String),
}

impl From<raft_log::Error> for StoreError {
    fn from(e: raft_log::Error) -> Self {
        StoreError::Storage(e.to_string())
    }
}
