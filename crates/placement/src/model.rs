//! What a configuration is made of: stores, region layouts, and the changes that take one
//! configuration to the next.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use types::{PeerMeta, Region, RegionEpoch, RegionId, StoreId};

/// A store's place in the cluster. `Down` is not recorded here: it is judged from live
/// heartbeats by placement's leader (see `crate::live`), so a slow heartbeat never costs a
/// configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreState {
    /// Holds replicas and takes new ones.
    Up,
    /// Leaving: its replicas move elsewhere; it takes no new ones.
    Draining,
    /// Left: holds nothing, never takes a replica again, its id is never reused.
    Removed,
}

impl StoreState {
    pub fn name(self) -> &'static str {
        match self {
            StoreState::Up => "Up",
            StoreState::Draining => "Draining",
            StoreState::Removed => "Removed",
        }
    }
}

/// Where a store listens. Kept in placement so stores and clients find each other through
/// it; a store restarted on a new address updates them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreAddrs {
    /// Store-to-store Raft messages (`--peer-addr`).
    pub peer: String,
    /// gRPC clients (`--client-addr`).
    pub client: String,
    /// Redis clients (`--resp-addr`), empty when the store has none.
    #[serde(default)]
    pub resp: String,
}

/// A store as a configuration records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreMeta {
    pub id: u64,
    pub addrs: StoreAddrs,
    pub state: StoreState,
    /// Free-form labels such as `zone`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Bytes the store may use (0 = unknown).
    #[serde(default)]
    pub capacity: u64,
}

impl StoreMeta {
    pub fn store(&self) -> StoreId {
        StoreId(self.id)
    }
}

/// One replica of a region: `(peer id, store id, learner)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaMeta {
    pub peer: u64,
    pub store: u64,
    #[serde(default)]
    pub learner: bool,
}

/// A region as a configuration records it: the descriptor its leader last reported, and
/// where placement wants its replicas (`target`; `None` = where they are).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionLayout {
    pub id: u64,
    pub start_key: Vec<u8>,
    /// `None` = the end of the key space.
    pub end_key: Option<Vec<u8>>,
    pub conf_version: u64,
    pub version: u64,
    pub replicas: Vec<ReplicaMeta>,
    /// The stores the replicas should be on, sorted; set by Join, Leave (drain) and Move.
    #[serde(default)]
    pub target: Option<Vec<u64>>,
}

impl RegionLayout {
    pub fn from_region(r: &Region) -> RegionLayout {
        RegionLayout {
            id: r.id.0,
            start_key: r.start_key.clone(),
            end_key: r.end_key.clone(),
            conf_version: r.epoch.conf_version,
            version: r.epoch.version,
            replicas: r
                .peers
                .iter()
                .map(|p| ReplicaMeta {
                    peer: p.id.0,
                    store: p.store.0,
                    learner: p.learner,
                })
                .collect(),
            target: None,
        }
    }

    pub fn to_region(&self) -> Region {
        Region {
            id: raft::GroupId(self.id),
            start_key: self.start_key.clone(),
            end_key: self.end_key.clone(),
            epoch: self.epoch(),
            peers: self
                .replicas
                .iter()
                .map(|p| PeerMeta {
                    id: raft::NodeId(p.peer),
                    store: StoreId(p.store),
                    learner: p.learner,
                })
                .collect(),
        }
    }

    pub fn region_id(&self) -> RegionId {
        raft::GroupId(self.id)
    }

    pub fn epoch(&self) -> RegionEpoch {
        RegionEpoch {
            conf_version: self.conf_version,
            version: self.version,
        }
    }

    /// The stores holding a replica (voter or learner), in replica order.
    pub fn stores(&self) -> Vec<u64> {
        self.replicas.iter().map(|r| r.store).collect()
    }

    /// Where the replicas are meant to be: the target if one is set, else where they are.
    pub fn wanted(&self) -> Vec<u64> {
        match &self.target {
            Some(t) => t.clone(),
            None => {
                let mut s = self.stores();
                s.sort_unstable();
                s
            }
        }
    }

    /// Whether the key ranges of `self` and `other` share a key.
    pub fn overlaps(&self, other: &RegionLayout) -> bool {
        let starts_before_other_ends = other
            .end_key
            .as_ref()
            .map_or(true, |e| self.start_key.as_slice() < e.as_slice());
        let other_starts_before_self_ends = self
            .end_key
            .as_ref()
            .map_or(true, |e| other.start_key.as_slice() < e.as_slice());
        starts_before_other_ends && other_starts_before_self_ends
    }
}

/// One step from a configuration to the next.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// A store joined, or its addresses, labels, capacity or state changed.
    Store(StoreMeta),
    /// A region appeared or its descriptor changed (its target is carried over unless the
    /// change sets it).
    Region(RegionLayout),
    /// A region is gone (merged into a neighbour that now covers its range).
    RegionGone(u64),
    /// Where a region's replicas should be (`None`: leave them where they are).
    Target {
        region: u64,
        stores: Option<Vec<u64>>,
    },
    /// Region boundaries someone meant (split by hand): added to [`Config::sticky`].
    Stick(Vec<Vec<u8>>),
}

/// A configuration: the numbered layout of stores and regions. Every change to it gets a
/// new number.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub number: u64,
    pub stores: BTreeMap<u64, StoreMeta>,
    pub regions: BTreeMap<u64, RegionLayout>,
    /// Sticky region boundaries (CockroachDB's sticky split bit): the start keys of regions
    /// made by `--split-keys` at bootstrap or split by hand, which the scheduler never
    /// merges away (it may merge any other boundary). A boundary that is gone (a region
    /// reported covering it: merged) is dropped, so this never outgrows the regions.
    /// (Defaulted: configurations from before stickiness have none.)
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub sticky: BTreeSet<Vec<u8>>,
}

impl Config {
    /// Applies one change in place (the number is the caller's business).
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::Store(s) => {
                self.stores.insert(s.id, s.clone());
            }
            Change::Region(r) => {
                let target = match &r.target {
                    Some(t) => Some(t.clone()),
                    None => self.regions.get(&r.id).and_then(|old| old.target.clone()),
                };
                let mut r = r.clone();
                r.target = target;
                // A target reached is a target no more: the layout says it all.
                if r.target.as_ref().is_some_and(|t| {
                    let mut s = r.stores();
                    s.sort_unstable();
                    *t == s && r.replicas.iter().all(|p| !p.learner)
                }) {
                    r.target = None;
                }
                let nonempty = r.end_key.as_ref().map_or(true, |e| *e > r.start_key);
                if r.id != types::PLACEMENT_REGION.0 && nonempty && !self.sticky.is_empty() {
                    // A key strictly inside a data region's range is no boundary any more.
                    let inside: Vec<Vec<u8>> = self
                        .sticky
                        .range::<[u8], _>((
                            std::ops::Bound::Excluded(r.start_key.as_slice()),
                            match &r.end_key {
                                Some(e) => std::ops::Bound::Excluded(e.as_slice()),
                                None => std::ops::Bound::Unbounded,
                            },
                        ))
                        .cloned()
                        .collect();
                    for k in inside {
                        self.sticky.remove(&k);
                    }
                }
                self.regions.insert(r.id, r);
            }
            Change::RegionGone(id) => {
                self.regions.remove(id);
            }
            Change::Target { region, stores } => {
                if let Some(r) = self.regions.get_mut(region) {
                    r.target = stores.clone();
                }
            }
            Change::Stick(keys) => {
                self.sticky.extend(keys.iter().cloned());
            }
        }
    }

    /// Whether a data region starts at `key` (the key is a region boundary).
    pub fn is_boundary(&self, key: &[u8]) -> bool {
        !key.is_empty()
            && self
                .regions
                .values()
                .any(|r| r.id != types::PLACEMENT_REGION.0 && r.start_key == key)
    }

    /// Replicas each store holds or is meant to hold (its targets), for every store that
    /// can take replicas; a store with none counts 0.
    pub fn load(&self) -> BTreeMap<u64, usize> {
        let mut load: BTreeMap<u64, usize> = self
            .stores
            .values()
            .filter(|s| s.state == StoreState::Up)
            .map(|s| (s.id, 0))
            .collect();
        for r in self.regions.values() {
            for s in r.wanted() {
                if let Some(n) = load.get_mut(&s) {
                    *n += 1;
                }
            }
        }
        load
    }

    /// Regions with a replica (present, or wanted) on `store`.
    pub fn regions_on(&self, store: u64) -> usize {
        self.regions
            .values()
            .filter(|r| r.stores().contains(&store) || r.wanted().contains(&store))
            .count()
    }
}
