//! What this server knows of the rest of the cluster: every store's addresses and the
//! latest placement configuration it has seen. Filled from `--initial-cluster` at start and
//! from placement afterwards (every heartbeat answer carries the addresses; a changed
//! configuration number makes the heartbeat loop fetch the configuration), so stores that
//! joined later, and stores restarted on new addresses, are reachable. Everything that
//! contacts another store (forwarding, admin calls, the transport) asks here.
//!
//! The addresses are also kept in the data directory (`stores.json`, rewritten when they
//! change): a store restarted while placement's leader is on a store it only learned of
//! from placement can still reach it (and everything else it knew) at once.

use placement::{Config, StoreAddrs};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// File in the data directory with the addresses last known.
const STORES_FILE: &str = "stores.json";

pub struct ClusterView {
    me: u64,
    /// Stores whose peer address this server was given (`--initial-cluster`): that address
    /// is how this server reaches them (it may differ from the one they advertise: a proxy,
    /// NAT, the nemesis harness's namespaces), so placement's never replaces it.
    pinned: std::collections::BTreeSet<u64>,
    /// Where the addresses are kept (none in tests without a data directory).
    file: Option<std::path::PathBuf>,
    addrs: RwLock<BTreeMap<u64, StoreAddrs>>,
    config: RwLock<Option<Arc<Config>>>,
    placement_leader: AtomicU64,
    transport: Option<transport::Transport>,
}

impl ClusterView {
    /// A view of the stores in `initial` (`(id, peer address)`); `transport` (when given)
    /// learns every address change.
    pub fn new(
        me: u64,
        initial: &[(u64, String)],
        transport: Option<transport::Transport>,
    ) -> ClusterView {
        Self::with_file(me, initial, transport, None)
    }

    /// [`ClusterView::new`] that also loads and keeps the addresses in `data_dir` (those
    /// kept there come first; `initial` fills in the rest).
    pub fn with_file(
        me: u64,
        initial: &[(u64, String)],
        transport: Option<transport::Transport>,
        data_dir: Option<&std::path::Path>,
    ) -> ClusterView {
        let file = data_dir.map(|d| d.join(STORES_FILE));
        let kept: BTreeMap<u64, StoreAddrs> = file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let v = ClusterView {
            me,
            pinned: initial.iter().map(|(id, _)| *id).collect(),
            file,
            addrs: RwLock::new(BTreeMap::new()),
            config: RwLock::new(None),
            placement_leader: AtomicU64::new(0),
            transport,
        };
        for (id, peer) in initial {
            v.set_addrs(
                *id,
                StoreAddrs {
                    peer: peer.clone(),
                    ..StoreAddrs::default()
                },
            );
        }
        for (id, a) in kept {
            v.set_addrs(id, a);
        }
        v
    }

    /// Records a store's addresses (an empty client or RESP address keeps the known one).
    pub fn set_addrs(&self, store: u64, mut a: StoreAddrs) {
        if a.peer.is_empty() {
            return;
        }
        let mut m = self.addrs.write().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = m.get(&store) {
            if self.pinned.contains(&store) {
                a.peer = old.peer.clone();
            }
            if a.client.is_empty() {
                a.client = old.client.clone();
            }
            if a.resp.is_empty() {
                a.resp = old.resp.clone();
            }
            if *old == a {
                return;
            }
        }
        if store != self.me {
            if let Some(t) = &self.transport {
                t.set_peer_address(store::StoreId(store), a.peer.clone());
            }
        }
        m.insert(store, a);
        if let Some(f) = &self.file {
            // Rare (an address changed): a small synchronous write is fine. Losing it costs
            // only a slower start, so a failure is logged, not fatal.
            let tmp = f.with_extension("tmp");
            let json = serde_json::to_vec(&*m).expect("serializing");
            if let Err(e) = std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, f)) {
                tracing::warn!("keeping store addresses in {}: {e}", f.display());
            }
        }
    }

    pub fn peer_addr(&self, store: u64) -> Option<String> {
        let m = self.addrs.read().unwrap_or_else(|e| e.into_inner());
        m.get(&store).map(|a| a.peer.clone())
    }

    /// Every store known, with its addresses.
    pub fn stores(&self) -> Vec<(u64, StoreAddrs)> {
        let m = self.addrs.read().unwrap_or_else(|e| e.into_inner());
        m.iter().map(|(k, v)| (*k, v.clone())).collect()
    }

    /// The latest placement configuration seen (none before the first heartbeat answer).
    pub fn config(&self) -> Option<Arc<Config>> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Keeps `c` if it is newer than the one held, and learns its stores' addresses.
    pub fn set_config(&self, c: Config) {
        for s in c.stores.values() {
            self.set_addrs(s.id, s.addrs.clone());
        }
        let mut held = self.config.write().unwrap_or_else(|e| e.into_inner());
        if held.as_ref().is_none_or(|h| h.number < c.number) {
            *held = Some(Arc::new(c));
        }
    }

    /// The store last seen leading the placement group (0: unknown).
    pub fn placement_leader(&self) -> u64 {
        self.placement_leader.load(Ordering::Relaxed)
    }

    pub fn set_placement_leader(&self, store: u64) {
        if store != 0 {
            self.placement_leader.store(store, Ordering::Relaxed);
        }
    }

    /// The stores to ask for placement, best first: the last leader seen, then the placement
    /// group's replicas in the configuration held, then every store known.
    pub fn placement_candidates(&self) -> Vec<u64> {
        let mut out = Vec::new();
        let mut push = |s: u64| {
            if s != 0 && !out.contains(&s) {
                out.push(s);
            }
        };
        push(self.placement_leader());
        if let Some(c) = self.config() {
            if let Some(r) = c.regions.get(&store::PLACEMENT_REGION.0) {
                for rep in &r.replicas {
                    push(rep.store);
                }
            }
        }
        for (s, _) in self.stores() {
            push(s);
        }
        out
    }

    /// Region `id` of the latest configuration (not the placement group).
    pub fn region(&self, id: u64) -> Option<placement::RegionLayout> {
        let c = self.config()?;
        c.regions
            .get(&id)
            .filter(|r| r.id != store::PLACEMENT_REGION.0)
            .cloned()
    }

    /// How many data regions the latest configuration holds (0 before the first arrives).
    pub fn region_count(&self) -> usize {
        self.config().map_or(0, |c| {
            c.regions
                .keys()
                .filter(|id| **id != store::PLACEMENT_REGION.0)
                .count()
        })
    }

    /// The region of the latest configuration holding `key`, for a key this store has no
    /// replica for.
    pub fn region_for_key(&self, key: &[u8]) -> Option<placement::RegionLayout> {
        let c = self.config()?;
        c.regions
            .values()
            .filter(|r| r.id != store::PLACEMENT_REGION.0)
            .find(|r| {
                key >= r.start_key.as_slice()
                    && r.end_key.as_ref().is_none_or(|e| key < e.as_slice())
            })
            .cloned()
    }
}
