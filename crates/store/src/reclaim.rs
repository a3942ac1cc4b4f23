//! Log reclamation: keeping the shared log within its budget.

use crate::error::StoreError;
use crate::state_machine::StateMachine;
use crate::store::Store;

impl<M: StateMachine> Store<M> {
    /// Keeps the log within its budget: the engine deletes segments nothing live is left
    /// in and copies small regions' live entries out of old ones (`LogEngine::purge`); the
    /// regions it names as too large to copy are snapshotted here, which compacts their log
    /// and frees those segments at a later purge. So an idle region, or one whose own
    /// snapshot thresholds are far off, cannot pin the whole log.
    pub fn reclaim_log(&mut self) -> Result<(), StoreError> {
        let report = self.engine.purge()?;
        // A purge that freed and copied nothing is not repeated until the log has another
        // segment: a region it names may be unable to compact for a while (its pinning
        // entries not yet applied), and each purge holds the engine's writer.
        self.fruitless_purge_at = (report.segments_deleted == 0 && report.groups_rewritten == 0)
            .then(|| self.engine.segment_count());
        self.stats.log_purges += 1;
        self.stats.log_segments_deleted += report.segments_deleted as u64;
        self.stats.log_bytes_deleted += report.bytes_deleted;
        self.stats.log_groups_rewritten += report.groups_rewritten as u64;
        self.stats.log_bytes_rewritten += report.bytes_rewritten;
        for group in report.groups_to_compact {
            let region = raft::GroupId(group.0);
            if self.peers.contains_key(&region) {
                self.compact_wanted.insert(region);
            }
        }
        self.compact_requested()
    }
}
