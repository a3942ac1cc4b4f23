//! A new cluster's first layout: the data regions of the pre-split key space and the
//! placement group, each on `replicas` of the bootstrap stores, and placement's first
//! configuration describing exactly that. Every bootstrap store computes the same from the
//! same flags, so no store needs to ask another.

use crate::hosted::Hosted;
use crate::machine::PlacementState;
use crate::model::{RegionLayout, StoreAddrs, StoreMeta, StoreState};
use bytes::Bytes;
use std::collections::BTreeMap;
use types::{PeerMeta, Region, RegionEpoch, StoreId, PLACEMENT_REGION};

/// The regions to bootstrap, with the placement group's first state as its data (data
/// regions start empty: `None`). `stores` are `(id, peer address)`; the region with id
/// `i` goes on `replicas` consecutive stores in id order starting at the `i-1`th, so a
/// cluster bootstrapped with more stores than replicas starts balanced; the placement
/// group goes on the first `replicas` stores.
pub fn bootstrap_regions(
    cluster_id: u64,
    stores: &[(u64, String)],
    split_keys: &[Vec<u8>],
    replicas: u64,
) -> Vec<(Region, Option<Bytes>)> {
    let mut ids: Vec<u64> = stores.iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    let r = (replicas as usize).clamp(1, ids.len().max(1));
    let on = |first: usize| -> Vec<StoreId> {
        (0..r)
            .map(|j| StoreId(ids[(first + j) % ids.len()]))
            .collect()
    };
    let mut regions = Vec::new();
    let mut starts: Vec<Vec<u8>> = vec![Vec::new()];
    starts.extend(split_keys.iter().cloned());
    for (i, start) in starts.iter().enumerate() {
        let id = 1 + i as u64;
        regions.push(Region {
            id: raft::GroupId(id),
            start_key: start.clone(),
            end_key: split_keys.get(i).cloned(),
            epoch: RegionEpoch {
                conf_version: 1,
                version: 1,
            },
            peers: {
                // The store the rotation starts at goes to position `i mod r`: the replica
                // the store's static leader balancing prefers (`Store::balance_leaders`),
                // so region i+1's leader starts on the (i+1)th store.
                let mut on = on(i);
                on.rotate_right(i % r);
                on.into_iter()
                    .map(|s| PeerMeta::voter(raft::NodeId(id * 1000 + s.0), s))
                    .collect()
            },
        });
    }
    with_placement(cluster_id, stores, regions, r as u64)
}

/// Adds the placement group to the given data regions (on the first `replicas` stores in id
/// order) with a first configuration that describes them all (the simulator brings its
/// own layout this way).
pub fn with_placement(
    cluster_id: u64,
    stores: &[(u64, String)],
    regions: Vec<Region>,
    replicas: u64,
) -> Vec<(Region, Option<Bytes>)> {
    let mut ids: Vec<u64> = stores.iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    let r = (replicas as usize).clamp(1, ids.len().max(1));
    // Peer ids as a bootstrap region's (`region * 1000 + store` with region 1): below every
    // id a later re-addition gets (`types::peer_id`).
    let placement = Region {
        id: PLACEMENT_REGION,
        start_key: Vec::new(),
        end_key: None,
        epoch: RegionEpoch {
            conf_version: 1,
            version: 1,
        },
        peers: ids[..r]
            .iter()
            .map(|&s| PeerMeta::voter(raft::NodeId(1000 + s), StoreId(s)))
            .collect(),
    };
    let metas = stores
        .iter()
        .map(|(id, peer)| StoreMeta {
            id: *id,
            addrs: StoreAddrs {
                peer: peer.clone(),
                ..StoreAddrs::default()
            },
            state: StoreState::Up,
            labels: BTreeMap::new(),
            capacity: 0,
        })
        .collect();
    let layouts = regions
        .iter()
        .chain(std::iter::once(&placement))
        .map(RegionLayout::from_region)
        .collect();
    let state = PlacementState::bootstrap(cluster_id, r as u64, metas, layouts);
    let mut out: Vec<(Region, Option<Bytes>)> = regions.into_iter().map(|r| (r, None)).collect();
    out.push((placement, Some(Hosted::bootstrap_placement(state))));
    out
}

/// A cluster id every bootstrap store derives alike from its flags (FNV-1a over the
/// sorted store ids, the split keys and the replica count; never 0). Addresses are left
/// out: stores may list each other under different addresses (proxies, NAT, the nemesis
/// harness's namespaces). Stores bootstrapped with a different layout get different ids and
/// refuse each other; clusters of the same shape get the same id: give `--cluster-id` to
/// tell them apart (the playground and the test clusters do).
pub fn derive_cluster_id(stores: &[(u64, String)], split_keys: &[Vec<u8>], replicas: u64) -> u64 {
    let mut sorted: Vec<u64> = stores.iter().map(|(id, _)| *id).collect();
    sorted.sort_unstable();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: &[u8]| {
        for x in b {
            h ^= u64::from(*x);
            h = h.wrapping_mul(0x100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x100_0000_01b3);
    };
    for id in &sorted {
        eat(&id.to_le_bytes());
    }
    for k in split_keys {
        eat(k);
    }
    eat(&replicas.to_le_bytes());
    h.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stores(n: u64) -> Vec<(u64, String)> {
        (1..=n)
            .map(|i| (i, format!("127.0.0.1:{}", 7000 + i)))
            .collect()
    }

    /// Each region on `replicas` distinct stores, rotating over the stores, the one its
    /// position prefers for leadership being the (id)th store; the placement group on the
    /// first stores; configuration 1 lists them all.
    #[test]
    fn bootstrap_spreads_regions_and_their_preferred_leaders() {
        for n in 1..=7u64 {
            let out = bootstrap_regions(9, &stores(n), &[b"g".to_vec(), b"p".to_vec()], 3);
            let r = 3.min(n as usize);
            assert_eq!(out.len(), 4);
            let mut load = vec![0; n as usize + 1];
            for (i, (region, data)) in out.iter().enumerate().take(3) {
                assert!(data.is_none());
                let mut s: Vec<u64> = region.peers.iter().map(|p| p.store.0).collect();
                let preferred = s[i % r];
                assert_eq!(preferred, (i as u64 % n) + 1, "region {} on {s:?}", i + 1);
                s.sort_unstable();
                s.dedup();
                assert_eq!(s.len(), r);
                for x in s {
                    load[x as usize] += 1;
                }
            }
            let (placement, data) = &out[3];
            assert!(placement.is_placement());
            let state = crate::PlacementState::decode(data.as_ref().unwrap()).unwrap();
            assert_eq!(state.latest().regions.len(), 4);
            assert_eq!(state.latest().stores.len(), n as usize);
            assert_eq!(state.cluster_id(), 9);
            // Every store of the first `r + 2` (the rotations of three regions) holds one.
            assert!(
                load[1..].iter().take(r + 2).all(|&l| l > 0),
                "{n} stores: {load:?}"
            );
        }
    }
}
