//! What placement's leader knows beyond the replicated configurations: the stores' and
//! region leaders' latest heartbeats. Kept in the leader's memory only (a heartbeat is not
//! worth a log entry); a new leader learns it again within one heartbeat interval.

use crate::hosted::QueryAnswer;
use serde::{Deserialize, Serialize};

/// A store as its heartbeats show it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveStore {
    pub id: u64,
    /// Heard from within the down timeout (a store never heard from by this leader counts
    /// as up until the timeout has passed since this server started).
    pub up: bool,
    /// Milliseconds since its last heartbeat reached this leader (`None`: never).
    pub last_heartbeat_ms_ago: Option<u64>,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub region_count: u64,
    pub leader_count: u64,
}

/// A region's leader and size as its leader last reported them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveRegion {
    pub id: u64,
    pub leader_store: u64,
    pub approximate_keys: u64,
    pub approximate_bytes: u64,
}

/// A query's answer with the leader's live view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveAnswer {
    pub answer: QueryAnswer,
    /// The store whose placement replica answered (it led the group then).
    pub leader_store: u64,
    pub stores: Vec<LiveStore>,
    pub regions: Vec<LiveRegion>,
}
