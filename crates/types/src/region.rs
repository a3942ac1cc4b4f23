//! Regions: contiguous key ranges, each replicated by one Raft group, and the ids around
//! them. Every request carries the epoch it was routed with; a mismatch is refused.

use std::fmt;

/// Most peers a stored region descriptor may name (a guard against a corrupt count).
pub const MAX_PEERS: u64 = 64;

/// Why a stored region descriptor could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown region encoding version {0}")]
    Version(u8),
    #[error("truncated region descriptor: needs {needed} more bytes, {left} left")]
    Truncated { needed: usize, left: usize },
    #[error("bad end-key flag {0}")]
    EndKeyFlag(u8),
    #[error("bad peer role flag {0}")]
    RoleFlag(u8),
    #[error("region descriptor claims {0} peers (at most {MAX_PEERS})")]
    TooManyPeers(u64),
    #[error("{0} trailing bytes after the region descriptor")]
    TrailingBytes(usize),
}

/// A store (one server process, one data directory).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StoreId(pub u64);

impl fmt::Debug for StoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}
impl fmt::Display for StoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A region is a Raft group: its id is the group id carried by every Raft message.
pub type RegionId = raft::GroupId;

/// The placement service's own Raft group. Its id lies outside every data region's: the
/// bootstrap regions are `1..k` and allocated ids are `store << 40 | n` with store ≥ 1.
/// It is hosted like a region (same log engine, same replica changes) but holds no keys:
/// it is in no region map, never split or merged, and its descriptor spans the whole key
/// space only so that requests addressed to it pass the store's range check.
pub const PLACEMENT_REGION: RegionId = raft::GroupId((1 << 40) - 1);

/// Versions a region's shape. `conf_version` grows with each membership change, `version`
/// with each split or merge (key range change). A request routed with an older epoch may
/// target the wrong replicas or key range, so it is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct RegionEpoch {
    pub conf_version: u64,
    pub version: u64,
}

/// A replica of a region: its Raft node id, the store hosting it, and whether it is a
/// learner (receives the log, does not vote; a replica being added catches up as one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerMeta {
    pub id: raft::NodeId,
    pub store: StoreId,
    pub learner: bool,
}

impl PeerMeta {
    /// A voting replica.
    pub fn voter(id: raft::NodeId, store: StoreId) -> PeerMeta {
        PeerMeta {
            id,
            store,
            learner: false,
        }
    }
}

/// A region's descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Region {
    pub id: RegionId,
    /// Inclusive start key.
    pub start_key: Vec<u8>,
    /// Exclusive end key; `None` means the end of the key space.
    pub end_key: Option<Vec<u8>>,
    pub epoch: RegionEpoch,
    pub peers: Vec<PeerMeta>,
}

/// Bits of a peer id below the conf version (store ids are below 2^24).
pub const PEER_STORE_BITS: u32 = 24;

/// The id of a replica added to a region on `store` by the membership change that takes
/// the region to conf version `conf_version` (a split's new region: its first conf version).
/// Ids of one store's replicas in one region grow with every re-addition, so a message for
/// a higher id than the replica a store holds comes from a newer configuration (the one it
/// holds was removed), and a lower one from a stale leader (see `Store::step`). Bootstrap
/// regions use `region * 1000 + store`, below every id made here for their first 16,000
/// regions.
pub fn peer_id(conf_version: u64, store: StoreId) -> raft::NodeId {
    assert!(
        store.0 < 1 << PEER_STORE_BITS && conf_version < 1 << (64 - PEER_STORE_BITS),
        "peer id of store {store} at conf version {conf_version} out of range"
    );
    raft::NodeId(conf_version << PEER_STORE_BITS | store.0)
}

/// Whether peer id `id` can name a replica on `store`: an id made by [`peer_id`] carries its
/// store in its low bits; a bootstrap id (`region * 1000 + store`, below 2^24) cannot be
/// checked and passes.
pub fn peer_on_store(id: raft::NodeId, store: StoreId) -> bool {
    id.0 < 1 << PEER_STORE_BITS || id.0 >= 1 << 40 || id.0 & ((1 << PEER_STORE_BITS) - 1) == store.0
}

impl Region {
    /// The placement service's group (see [`PLACEMENT_REGION`]), not a data region.
    pub fn is_placement(&self) -> bool {
        self.id == PLACEMENT_REGION
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start_key.as_slice() && self.end_key.as_ref().is_none_or(|e| key < e.as_slice())
    }

    pub fn peer_on(&self, store: StoreId) -> Option<PeerMeta> {
        self.peers.iter().copied().find(|p| p.store == store)
    }

    pub fn peer(&self, id: raft::NodeId) -> Option<PeerMeta> {
        self.peers.iter().copied().find(|p| p.id == id)
    }

    /// Splits the key space at the given keys into consecutive regions with ids from
    /// `first_id`, each replicated on `stores` (peer id = region id * 1000 + store id: unique
    /// within each region whatever the store ids, which is what Raft and the tombstones key
    /// on; below every allocated id, `store << 40 | n`).
    pub fn presplit(split_keys: &[Vec<u8>], first_id: u64, stores: &[StoreId]) -> Vec<Region> {
        let mut bounds: Vec<Option<Vec<u8>>> = vec![None];
        bounds.extend(split_keys.iter().cloned().map(Some));
        let mut out = Vec::with_capacity(bounds.len());
        for (i, start) in bounds.iter().enumerate() {
            let id = first_id + i as u64;
            out.push(Region {
                id: raft::GroupId(id),
                start_key: start.clone().unwrap_or_default(),
                end_key: split_keys.get(i).cloned(),
                epoch: RegionEpoch {
                    conf_version: 1,
                    version: 1,
                },
                peers: stores
                    .iter()
                    .map(|s| PeerMeta::voter(raft::NodeId(id * 1000 + s.0), *s))
                    .collect(),
            });
        }
        out
    }

    /// Compact binary encoding (stored in the log engine with each group, and in each
    /// snapshot). Version 2 adds each peer's role; version 1 (all voters) still decodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64 + self.start_key.len());
        b.push(2); // version
        put_u64(&mut b, self.id.0);
        put_bytes(&mut b, &self.start_key);
        match &self.end_key {
            Some(e) => {
                b.push(1);
                put_bytes(&mut b, e);
            }
            None => b.push(0),
        }
        put_u64(&mut b, self.epoch.conf_version);
        put_u64(&mut b, self.epoch.version);
        put_u64(&mut b, self.peers.len() as u64);
        for p in &self.peers {
            put_u64(&mut b, p.id.0);
            put_u64(&mut b, p.store.0);
            b.push(p.learner as u8);
        }
        b
    }

    pub fn decode(mut data: &[u8]) -> Result<Region, DecodeError> {
        let d = &mut data;
        let version = take(d, 1)?[0];
        if version != 1 && version != 2 {
            return Err(DecodeError::Version(version));
        }
        let id = raft::GroupId(get_u64(d)?);
        let start_key = get_bytes(d)?;
        let end_key = match take(d, 1)?[0] {
            0 => None,
            1 => Some(get_bytes(d)?),
            x => return Err(DecodeError::EndKeyFlag(x)),
        };
        let epoch = RegionEpoch {
            conf_version: get_u64(d)?,
            version: get_u64(d)?,
        };
        let n = get_u64(d)?;
        if n > MAX_PEERS {
            return Err(DecodeError::TooManyPeers(n));
        }
        let mut peers = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let id = raft::NodeId(get_u64(d)?);
            let store = StoreId(get_u64(d)?);
            let learner = match version {
                1 => false,
                _ => match take(d, 1)?[0] {
                    0 => false,
                    1 => true,
                    x => return Err(DecodeError::RoleFlag(x)),
                },
            };
            peers.push(PeerMeta { id, store, learner });
        }
        if !d.is_empty() {
            return Err(DecodeError::TrailingBytes(d.len()));
        }
        Ok(Region {
            id,
            start_key,
            end_key,
            epoch,
            peers,
        })
    }
}

fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(b: &mut Vec<u8>, v: &[u8]) {
    put_u64(b, v.len() as u64);
    b.extend_from_slice(v);
}

fn take<'a>(d: &mut &'a [u8], n: usize) -> Result<&'a [u8], DecodeError> {
    if d.len() < n {
        return Err(DecodeError::Truncated {
            needed: n,
            left: d.len(),
        });
    }
    let (a, rest) = d.split_at(n);
    *d = rest;
    Ok(a)
}

fn get_u64(d: &mut &[u8]) -> Result<u64, DecodeError> {
    let b = take(d, 8)?;
    Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

fn get_bytes(d: &mut &[u8]) -> Result<Vec<u8>, DecodeError> {
    let n = get_u64(d)?;
    if n > d.len() as u64 {
        return Err(DecodeError::Truncated {
            needed: usize::try_from(n).unwrap_or(usize::MAX),
            left: d.len(),
        });
    }
    Ok(take(d, n as usize)?.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presplit_covers_the_key_space_and_round_trips() {
        let stores = [StoreId(1), StoreId(2), StoreId(3)];
        let rs = Region::presplit(&[b"g".to_vec(), b"p".to_vec()], 10, &stores);
        assert_eq!(rs.len(), 3);
        assert!(rs[0].contains(b"") && rs[0].contains(b"f") && !rs[0].contains(b"g"));
        assert!(rs[1].contains(b"g") && !rs[1].contains(b"p"));
        assert!(rs[2].contains(b"zzz"));
        for r in &rs {
            assert_eq!(Region::decode(&r.encode()).unwrap(), *r);
            let enc = r.encode();
            for cut in 0..enc.len() {
                assert!(
                    Region::decode(&enc[..cut]).is_err(),
                    "truncation at {cut} accepted"
                );
            }
        }
    }
}
