//! Static leader balancing: each region's leadership goes to its preferred replica.

use crate::state_machine::StateMachine;
use crate::store::Store;
use raft::Role;

impl<M: StateMachine> Store<M> {
    /// Static leader balancing of a new cluster's regions: each region prefers the replica at
    /// position `(region id - 1) mod replicas` of its peer list, which spreads the leaders of
    /// pre-split regions over the stores (region 1 on the first, region 2 on the second, ...).
    /// A store leading a region it is not preferred for transfers leadership to the preferred
    /// replica, but only once that replica holds the leader's whole log (so it is alive and the
    /// transfer is immediate). Without this, whichever store won the first elections led every
    /// region and did all the client work (measured: one store at 63 % of a core, the others
    /// idle, during 64-client reads). Returns how many transfers it started.
    pub fn balance_leaders(&mut self) -> usize {
        let me = self.cfg.store_id;
        let mut started = 0;
        for p in self.peers.values_mut() {
            if p.raw.role() != Role::Leader || p.region.peers.is_empty() {
                continue;
            }
            // Only the bootstrap layout (no membership change yet) has a preferred replica: once
            // placement changed a region's replicas it also decides where its leader goes (it
            // moves the leader off a replica it is about to remove; sending it back would undo
            // that forever — the simulator saw a region's term climb past 140 that way).
            if p.region.epoch.conf_version > 1 {
                continue;
            }
            let slot = (p.region.id.0.saturating_sub(1) % p.region.peers.len() as u64) as usize;
            let preferred = p.region.peers[slot];
            // A learner cannot lead (and a transfer to it would only hold proposals up until
            // the transfer timed out).
            if preferred.store == me || preferred.learner {
                continue;
            }
            if p.raw.follower_match(preferred.id) == Some(p.raw.last_index())
                && p.raw.transfer_leader(preferred.id).is_ok()
            {
                started += 1;
            }
        }
        started
    }
}
