//! What placement's leader knows beyond the replicated configurations: the stores' and
//! region leaders' latest heartbeats. Kept in the leader's memory only (a heartbeat is not
//! worth a log entry); a new leader learns it again within one heartbeat interval.

use crate::hosted::QueryAnswer;
use crate::scheduler::OperatorRecord;
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
    /// Reads and writes per second over its last heartbeat interval, summed over the data
    /// regions it leads. (Defaulted: answers from servers before rates decode.)
    #[serde(default)]
    pub reads_per_sec: u64,
    #[serde(default)]
    pub writes_per_sec: u64,
}

/// A region's leader, size and load as its leader last reported them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveRegion {
    pub id: u64,
    pub leader_store: u64,
    pub approximate_keys: u64,
    pub approximate_bytes: u64,
    /// Reads started or served and writes proposed per second on the leader's replica, over
    /// the leader's last heartbeat interval. (Defaulted: answers from servers before rates
    /// decode.)
    #[serde(default)]
    pub reads_per_sec: u64,
    #[serde(default)]
    pub writes_per_sec: u64,
}

/// A query's answer with the leader's live view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveAnswer {
    pub answer: QueryAnswer,
    /// The store whose placement replica answered (it led the group then).
    pub leader_store: u64,
    pub stores: Vec<LiveStore>,
    pub regions: Vec<LiveRegion>,
    /// The scheduler's operators in flight (decided, not yet seen done). (Defaulted:
    /// answers from servers before the scheduler decode.)
    #[serde(default)]
    pub operators: Vec<OperatorRecord>,
    /// Its recent operators, finished, oldest first (at most
    /// [`crate::scheduler::HISTORY_OPS`]).
    #[serde(default)]
    pub history: Vec<OperatorRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server without rates answers without their fields: the CLI still decodes it.
    #[test]
    fn a_view_from_before_rates_decodes_with_zero_rates() {
        let store: LiveStore = serde_json::from_str(
            r#"{"id":1,"up":true,"last_heartbeat_ms_ago":5,"capacity_bytes":0,
                "used_bytes":7,"region_count":2,"leader_count":1}"#,
        )
        .unwrap();
        assert_eq!(
            (store.used_bytes, store.reads_per_sec, store.writes_per_sec),
            (7, 0, 0)
        );
        let region: LiveRegion = serde_json::from_str(
            r#"{"id":3,"leader_store":1,"approximate_keys":4,"approximate_bytes":40}"#,
        )
        .unwrap();
        assert_eq!(
            region,
            LiveRegion {
                id: 3,
                leader_store: 1,
                approximate_keys: 4,
                approximate_bytes: 40,
                ..LiveRegion::default()
            }
        );
    }
}
