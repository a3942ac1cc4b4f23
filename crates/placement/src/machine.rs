//! The placement state machine: configurations, the store id allocator and the verbs that
//! change them. Pure and deterministic: every replica of the placement group applies the
//! same commands in the same order and holds the same configurations.

use crate::balance::rebalance;
use crate::model::{Change, Config, RegionLayout, StoreAddrs, StoreMeta, StoreState};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// Configurations kept for `Query(n)`: the latest and the 1,023 before it. Older ones are
/// folded into the oldest kept; asking for them is an error that names the oldest.
pub const HISTORY_LEN: usize = 1024;
/// Most replicas a region may have (`--replicas`, a `Move`): its Raft group stays small.
pub const MAX_REPLICAS: usize = 7;
/// Largest store id placement hands out (peer ids keep the store in 24 bits).
pub const MAX_STORE_ID: u64 = (1 << 24) - 1;
/// Longest region boundary key a report may carry (the kv state machine's own key limit
/// is far below it).
pub const MAX_KEY_BYTES: usize = 64 << 10;
/// Most keys one `Stick` names.
pub const MAX_STICK_KEYS: usize = 64;
/// Most labels a store may carry, and the longest label key, value or address.
pub const MAX_LABELS: usize = 16;
pub const MAX_FIELD_BYTES: usize = 256;

/// A verb, as it travels through the placement group's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A new store asks for an id. `token` is the joining store's own random number, kept in
    /// its data directory: a join retried with the same token gets the same id.
    Join {
        token: u64,
        cluster_id: u64,
        addrs: StoreAddrs,
        labels: BTreeMap<String, String>,
        capacity: u64,
    },
    /// A store restarted on new addresses (or with new labels or capacity).
    UpdateStore {
        store: u64,
        addrs: StoreAddrs,
        labels: BTreeMap<String, String>,
        capacity: u64,
    },
    /// A region's leader reports a descriptor newer than the one held.
    ReportRegion { region: RegionLayout },
    /// Leave: move every replica off the store, then mark it removed.
    Drain { store: u64 },
    /// Put a region's replicas on exactly these stores.
    Move { region: u64, stores: Vec<u64> },
    /// These region boundaries were made by hand: the scheduler never merges them away
    /// ([`Config::sticky`]). Placement's leader proposes it for splits its scheduler saw
    /// and did not make; keys that are not a data region's start (any more), or already
    /// sticky, are left out; at most [`MAX_STICK_KEYS`].
    Stick { keys: Vec<Vec<u8>> },
}

/// What an applied verb answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// `Join`: the store's id (new, or the one this token got before).
    Joined { store: u64, config: u64 },
    /// The configuration after the verb (unchanged when it changed nothing).
    Config(u64),
    /// `ReportRegion` with an epoch older than the one held: nothing changed.
    Stale,
}

/// Why a verb was refused (it changed nothing).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum PlacementError {
    #[error("store belongs to cluster {got}, this is cluster {expected}")]
    WrongCluster { expected: u64, got: u64 },
    #[error("unknown store {0}")]
    UnknownStore(u64),
    #[error("store {0} was removed from the cluster; start a new store with --join instead")]
    StoreRemoved(u64),
    #[error("unknown region {0}")]
    UnknownRegion(u64),
    #[error(
        "{reason}: regions keep {replicas} replicas and only {available} stores could hold them"
    )]
    TooFewStores {
        replicas: u64,
        available: u64,
        reason: String,
    },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("configuration {asked} is no longer kept (the oldest kept is {oldest})")]
    HistoryGone { asked: u64, oldest: u64 },
    #[error("undecodable placement command: {0}")]
    Decode(String),
}

/// Everything a placement replica holds; what its snapshot carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacementState {
    cluster_id: u64,
    replicas: u64,
    next_store_id: u64,
    join_tokens: BTreeMap<u64, u64>,
    /// The oldest configuration kept, and the changes from it to each later one.
    base: Config,
    deltas: VecDeque<Vec<Change>>,
    latest: Config,
}

/// The persistent form (`serde_json`, versioned).
#[derive(Serialize, Deserialize)]
struct Persisted {
    format: u32,
    cluster_id: u64,
    replicas: u64,
    next_store_id: u64,
    join_tokens: BTreeMap<u64, u64>,
    base: Config,
    deltas: VecDeque<Vec<Change>>,
}

const FORMAT: u32 = 1;
/// First byte of every encoded command and snapshot (`{` of the JSON would be ambiguous
/// with a future binary format).
const COMMAND_MAGIC: u8 = 0xB1;
const SNAPSHOT_MAGIC: u8 = 0xB2;

impl PlacementState {
    /// Configuration 1 of a new cluster: its bootstrap stores and regions.
    pub fn bootstrap(
        cluster_id: u64,
        replicas: u64,
        stores: Vec<StoreMeta>,
        regions: Vec<RegionLayout>,
    ) -> PlacementState {
        assert!(replicas >= 1, "a region needs a replica");
        let mut base = Config {
            number: 1,
            ..Config::default()
        };
        let next_store_id = stores.iter().map(|s| s.id).max().unwrap_or(0) + 1;
        for s in stores {
            base.stores.insert(s.id, s);
        }
        for r in regions {
            base.regions.insert(r.id, r);
        }
        // The boundaries of the first regions (`--split-keys`) were meant: sticky.
        let starts: Vec<Vec<u8>> = base
            .regions
            .values()
            .filter(|r| r.id != types::PLACEMENT_REGION.0 && !r.start_key.is_empty())
            .map(|r| r.start_key.clone())
            .collect();
        base.sticky.extend(starts);
        PlacementState {
            cluster_id,
            replicas,
            next_store_id,
            join_tokens: BTreeMap::new(),
            latest: base.clone(),
            base,
            deltas: VecDeque::new(),
        }
    }

    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    pub fn replicas(&self) -> u64 {
        self.replicas
    }

    /// The latest configuration.
    pub fn latest(&self) -> &Config {
        &self.latest
    }

    /// The oldest configuration `query` still answers.
    pub fn oldest(&self) -> u64 {
        self.base.number
    }

    /// `Query(n)`: configuration `n`; `None` (the seed's -1), or a number past the latest,
    /// is the latest.
    pub fn query(&self, n: Option<u64>) -> Result<Config, PlacementError> {
        let n = match n {
            Some(n) if n < self.latest.number => n,
            _ => return Ok(self.latest.clone()),
        };
        if n < self.base.number {
            return Err(PlacementError::HistoryGone {
                asked: n,
                oldest: self.base.number,
            });
        }
        let mut c = self.base.clone();
        for d in self.deltas.iter().take((n - self.base.number) as usize) {
            for ch in d {
                c.apply(ch);
            }
            c.number += 1;
        }
        debug_assert_eq!(c.number, n);
        Ok(c)
    }

    /// Applies a verb. Deterministic; a refused verb changes nothing.
    pub fn apply(&mut self, cmd: &Command) -> Result<Reply, PlacementError> {
        match cmd {
            Command::Join {
                token,
                cluster_id,
                addrs,
                labels,
                capacity,
            } => {
                if *cluster_id != self.cluster_id {
                    return Err(PlacementError::WrongCluster {
                        expected: self.cluster_id,
                        got: *cluster_id,
                    });
                }
                check_store_fields(addrs, labels)?;
                if let Some(&store) = self.join_tokens.get(token) {
                    return Ok(Reply::Joined {
                        store,
                        config: self.latest.number,
                    });
                }
                let id = self.next_store_id;
                if id > MAX_STORE_ID {
                    return Err(PlacementError::Invalid(format!(
                        "every store id up to {MAX_STORE_ID} is taken"
                    )));
                }
                self.next_store_id += 1;
                self.join_tokens.insert(*token, id);
                let meta = StoreMeta {
                    id,
                    addrs: addrs.clone(),
                    state: StoreState::Up,
                    labels: labels.clone(),
                    capacity: *capacity,
                };
                let config = self.commit_with_rebalance(vec![Change::Store(meta)]);
                Ok(Reply::Joined { store: id, config })
            }
            Command::UpdateStore {
                store,
                addrs,
                labels,
                capacity,
            } => {
                check_store_fields(addrs, labels)?;
                let old = self.store(*store)?;
                let mut meta = old.clone();
                meta.addrs = addrs.clone();
                meta.labels = labels.clone();
                meta.capacity = *capacity;
                if meta == *old {
                    return Ok(Reply::Config(self.latest.number));
                }
                Ok(Reply::Config(self.commit(vec![Change::Store(meta)])))
            }
            Command::ReportRegion { region } => self.report_region(region),
            Command::Drain { store } => {
                let old = self.store(*store)?.clone();
                if old.state == StoreState::Draining {
                    // Again: regions reported since (a split's new half) get targets too.
                    return Ok(Reply::Config(self.commit_with_rebalance(Vec::new())));
                }
                let available = self
                    .latest
                    .stores
                    .values()
                    .filter(|s| s.state == StoreState::Up && s.id != *store)
                    .count() as u64;
                if available < self.replicas {
                    return Err(PlacementError::TooFewStores {
                        replicas: self.replicas,
                        available,
                        reason: format!("draining store {store} would leave too few stores"),
                    });
                }
                let meta = StoreMeta {
                    state: StoreState::Draining,
                    ..old
                };
                Ok(Reply::Config(
                    self.commit_with_rebalance(vec![Change::Store(meta)]),
                ))
            }
            Command::Move { region, stores } => {
                let r = self
                    .latest
                    .regions
                    .get(region)
                    .ok_or(PlacementError::UnknownRegion(*region))?;
                let mut target = stores.clone();
                target.sort_unstable();
                target.dedup();
                if target.len() != stores.len() {
                    return Err(PlacementError::Invalid(format!(
                        "a store is named twice in {stores:?}"
                    )));
                }
                if target.is_empty() || target.len() > MAX_REPLICAS {
                    return Err(PlacementError::Invalid(format!(
                        "a region needs 1 to {MAX_REPLICAS} replicas, not {}",
                        target.len()
                    )));
                }
                for s in &target {
                    let m = self.store(*s)?;
                    if m.state != StoreState::Up {
                        return Err(PlacementError::Invalid(format!(
                            "store {s} is {} and takes no replicas",
                            m.state.name()
                        )));
                    }
                }
                if r.wanted() == target {
                    return Ok(Reply::Config(self.latest.number));
                }
                Ok(Reply::Config(self.commit(vec![Change::Target {
                    region: *region,
                    stores: Some(target),
                }])))
            }
            Command::Stick { keys } => {
                if keys.len() > MAX_STICK_KEYS {
                    return Err(PlacementError::Invalid(format!(
                        "{} keys to make sticky (at most {MAX_STICK_KEYS})",
                        keys.len()
                    )));
                }
                let mut new: Vec<Vec<u8>> = keys
                    .iter()
                    .filter(|k| !self.latest.sticky.contains(*k) && self.latest.is_boundary(k))
                    .cloned()
                    .collect();
                new.sort_unstable();
                new.dedup();
                if new.is_empty() {
                    return Ok(Reply::Config(self.latest.number));
                }
                Ok(Reply::Config(self.commit(vec![Change::Stick(new)])))
            }
        }
    }

    fn store(&self, id: u64) -> Result<&StoreMeta, PlacementError> {
        let s = self
            .latest
            .stores
            .get(&id)
            .ok_or(PlacementError::UnknownStore(id))?;
        if s.state == StoreState::Removed {
            return Err(PlacementError::StoreRemoved(id));
        }
        Ok(s)
    }

    fn report_region(&mut self, r: &RegionLayout) -> Result<Reply, PlacementError> {
        if r.replicas.is_empty() || r.replicas.len() > types::MAX_PEERS as usize {
            return Err(PlacementError::Invalid(format!(
                "region {} reported with {} replicas",
                r.id,
                r.replicas.len()
            )));
        }
        let key_bytes = r
            .start_key
            .len()
            .max(r.end_key.as_ref().map_or(0, Vec::len));
        if key_bytes > MAX_KEY_BYTES {
            return Err(PlacementError::Invalid(format!(
                "region {} reported with a {key_bytes}-byte boundary (at most {MAX_KEY_BYTES})",
                r.id
            )));
        }
        if r.end_key.as_ref().is_some_and(|e| *e <= r.start_key) {
            return Err(PlacementError::Invalid(format!(
                "region {} reported with an empty key range",
                r.id
            )));
        }
        let mut changes = Vec::new();
        if let Some(held) = self.latest.regions.get(&r.id) {
            if r.version < held.version || r.conf_version < held.conf_version {
                return Ok(Reply::Stale);
            }
            if r.version == held.version
                && r.conf_version == held.conf_version
                && r.replicas == held.replicas
            {
                return Ok(Reply::Config(self.latest.number));
            }
        }
        // A late report of a region a newer one has since absorbed or reshaped (a merge's
        // source reporting after its target): not brought back.
        if r.id != types::PLACEMENT_REGION.0
            && self.latest.regions.values().any(|o| {
                o.id != r.id
                    && o.id != types::PLACEMENT_REGION.0
                    && o.version > r.version
                    && o.overlaps(r)
            })
        {
            return Ok(Reply::Stale);
        }
        let mut layout = r.clone();
        // A report never sets a target: that is placement's own decision.
        layout.target = None;
        // Regions whose whole range newer regions cover, the reported one among them, were
        // merged away (or split and merged: a split whose halves merged elsewhere before
        // the split region reported its smaller range — the simulator's seed 113). One only
        // partly covered is a split's parent whose own report (with its smaller range) is
        // on its way: it stays until then.
        if r.id != types::PLACEMENT_REGION.0 {
            let data: Vec<&RegionLayout> = self
                .latest
                .regions
                .values()
                .filter(|o| o.id != r.id && o.id != types::PLACEMENT_REGION.0)
                .chain(std::iter::once(&layout))
                .collect();
            for old in data.iter().filter(|o| o.id != r.id) {
                if old.version < r.version && old.overlaps(r) && covered_by_newer(old, &data) {
                    changes.push(Change::RegionGone(old.id));
                }
            }
        }
        // A region with a replica on a store that takes none (a split's new half of a region
        // that was moving off a draining store) gets a target at once.
        let off_limits = layout.replicas.iter().any(|p| {
            self.latest
                .stores
                .get(&p.store)
                .map_or(true, |s| s.state != StoreState::Up)
        });
        let no_target = self
            .latest
            .regions
            .get(&layout.id)
            .map_or(true, |h| h.target.is_none());
        changes.insert(0, Change::Region(layout));
        if off_limits && no_target {
            return Ok(Reply::Config(self.commit_with_rebalance(changes)));
        }
        Ok(Reply::Config(self.commit(changes)))
    }

    /// Applies `changes` and the rebalance they make necessary as one configuration.
    fn commit_with_rebalance(&mut self, mut changes: Vec<Change>) -> u64 {
        let mut next = self.latest.clone();
        for c in &changes {
            next.apply(c);
        }
        changes.extend(rebalance(&next, self.replicas as usize));
        self.commit(changes)
    }

    /// Applies `changes` as the next configuration (stores left with nothing while
    /// draining become removed in the same step) and returns its number.
    fn commit(&mut self, mut changes: Vec<Change>) -> u64 {
        let mut next = self.latest.clone();
        for c in &changes {
            next.apply(c);
        }
        let emptied: Vec<StoreMeta> = next
            .stores
            .values()
            .filter(|s| s.state == StoreState::Draining && next.regions_on(s.id) == 0)
            .map(|s| StoreMeta {
                state: StoreState::Removed,
                ..s.clone()
            })
            .collect();
        for s in emptied {
            let c = Change::Store(s);
            next.apply(&c);
            changes.push(c);
        }
        next.number += 1;
        self.latest = next;
        self.deltas.push_back(changes);
        while self.deltas.len() >= HISTORY_LEN {
            let d = self.deltas.pop_front().expect("non-empty");
            for c in &d {
                self.base.apply(c);
            }
            self.base.number += 1;
        }
        self.latest.number
    }

    /// The whole state, for a snapshot.
    pub fn encode(&self) -> Vec<u8> {
        let p = Persisted {
            format: FORMAT,
            cluster_id: self.cluster_id,
            replicas: self.replicas,
            next_store_id: self.next_store_id,
            join_tokens: self.join_tokens.clone(),
            base: self.base.clone(),
            deltas: self.deltas.clone(),
        };
        let mut out = vec![SNAPSHOT_MAGIC];
        serde_json::to_writer(&mut out, &p).expect("serializing to memory");
        out
    }

    /// Restores [`PlacementState::encode`] output; refuses anything else.
    pub fn decode(data: &[u8]) -> Result<PlacementState, PlacementError> {
        let body = match data.split_first() {
            Some((&SNAPSHOT_MAGIC, body)) => body,
            _ => return Err(PlacementError::Decode("not a placement snapshot".into())),
        };
        let p: Persisted =
            serde_json::from_slice(body).map_err(|e| PlacementError::Decode(e.to_string()))?;
        if p.format != FORMAT {
            return Err(PlacementError::Decode(format!(
                "unknown placement snapshot format {}",
                p.format
            )));
        }
        if p.deltas.len() >= HISTORY_LEN || p.replicas == 0 {
            return Err(PlacementError::Decode(format!(
                "{} configurations kept (at most {}), {} replicas",
                p.deltas.len(),
                HISTORY_LEN - 1,
                p.replicas
            )));
        }
        let mut latest = p.base.clone();
        for d in &p.deltas {
            for c in d {
                latest.apply(c);
            }
            latest.number += 1;
        }
        Ok(PlacementState {
            cluster_id: p.cluster_id,
            replicas: p.replicas,
            next_store_id: p.next_store_id,
            join_tokens: p.join_tokens,
            base: p.base,
            deltas: p.deltas,
            latest,
        })
    }
}

/// Whether `outer`'s key range contains all of `inner`'s.
/// Whether regions of `all` with a newer version than `old` cover its whole key range
/// together (a sweep from its start over them in key order).
fn covered_by_newer(old: &RegionLayout, all: &[&RegionLayout]) -> bool {
    let mut newer: Vec<&RegionLayout> = all
        .iter()
        .filter(|t| t.id != old.id && t.version > old.version && t.overlaps(old))
        .copied()
        .collect();
    newer.sort_by(|a, b| a.start_key.cmp(&b.start_key));
    // `None`: covered to the end of the key space.
    let mut reach: Option<Vec<u8>> = Some(old.start_key.clone());
    for t in newer {
        let Some(at) = reach.as_ref() else { break };
        if t.start_key > *at {
            break; // a gap
        }
        reach = match (&t.end_key, at) {
            (None, _) => None,
            (Some(e), at) if e > at => Some(e.clone()),
            _ => reach,
        };
    }
    match (&reach, &old.end_key) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(r), Some(e)) => r >= e,
    }
}

fn check_store_fields(
    addrs: &StoreAddrs,
    labels: &BTreeMap<String, String>,
) -> Result<(), PlacementError> {
    if addrs.peer.is_empty() || addrs.client.is_empty() {
        return Err(PlacementError::Invalid(
            "a store needs a peer and a client address".into(),
        ));
    }
    let long = [&addrs.peer, &addrs.client, &addrs.resp]
        .into_iter()
        .chain(labels.keys())
        .chain(labels.values())
        .find(|f| f.len() > MAX_FIELD_BYTES);
    if let Some(f) = long {
        return Err(PlacementError::Invalid(format!(
            "{} bytes in one field (at most {MAX_FIELD_BYTES})",
            f.len()
        )));
    }
    if labels.len() > MAX_LABELS {
        return Err(PlacementError::Invalid(format!(
            "{} labels (at most {MAX_LABELS})",
            labels.len()
        )));
    }
    Ok(())
}

/// Whether `data` is a placement snapshot (and not a kv one).
pub fn is_placement_snapshot(data: &[u8]) -> bool {
    data.first() == Some(&SNAPSHOT_MAGIC)
}

/// Encodes a verb for the log.
pub fn encode_command(cmd: &Command) -> Vec<u8> {
    let mut out = vec![COMMAND_MAGIC];
    serde_json::to_writer(&mut out, cmd).expect("serializing to memory");
    out
}

/// Decodes a verb from the log; what does not decode is refused, never a panic.
pub fn decode_command(data: &[u8]) -> Result<Command, PlacementError> {
    match data.split_first() {
        Some((&COMMAND_MAGIC, body)) => {
            serde_json::from_slice(body).map_err(|e| PlacementError::Decode(e.to_string()))
        }
        _ => Err(PlacementError::Decode("not a placement command".into())),
    }
}

/// Encodes a reply (what the proposer gets back).
pub fn encode_reply(r: &Result<Reply, PlacementError>) -> Vec<u8> {
    serde_json::to_vec(r).expect("serializing to memory")
}

pub fn decode_reply(data: &[u8]) -> Result<Result<Reply, PlacementError>, PlacementError> {
    serde_json::from_slice(data).map_err(|e| PlacementError::Decode(e.to_string()))
}
