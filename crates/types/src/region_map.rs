//! The one region map: regions indexed by start key (O(log n) lookup by key) and by id, and
//! the live handle through which the store thread publishes a new map whenever a descriptor
//! changes and every reader (the gRPC service, the Redis backend, forwarding) takes the
//! current one.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, RwLock};

use crate::region::{Region, RegionId};

/// An immutable set of non-overlapping regions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionMap {
    by_start: BTreeMap<Vec<u8>, Region>,
    start_of: BTreeMap<RegionId, Vec<u8>>,
}

impl RegionMap {
    /// A map of `regions`. Regions must not overlap; a broken invariant panics with both.
    pub fn new(regions: impl IntoIterator<Item = Region>) -> RegionMap {
        let mut map = RegionMap::default();
        for r in regions {
            map.start_of.insert(r.id, r.start_key.clone());
            map.by_start.insert(r.start_key.clone(), r);
        }
        let mut prev: Option<&Region> = None;
        for r in map.by_start.values() {
            if let Some(p) = prev {
                assert!(
                    p.end_key.as_ref().is_some_and(|e| *e <= r.start_key),
                    "regions overlap: {p:?} and {r:?}"
                );
            }
            prev = Some(r);
        }
        assert_eq!(
            map.start_of.len(),
            map.by_start.len(),
            "two regions start at the same key, or one id names two regions"
        );
        map
    }

    /// The region holding `key`, if any.
    pub fn region_for_key(&self, key: &[u8]) -> Option<&Region> {
        self.by_start
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()
            .map(|(_, r)| r)
            .filter(|r| r.contains(key))
    }

    /// The region with this id, if any.
    pub fn get(&self, id: RegionId) -> Option<&Region> {
        self.start_of.get(&id).and_then(|s| self.by_start.get(s))
    }

    /// The regions in key order.
    pub fn iter(&self) -> impl Iterator<Item = &Region> {
        self.by_start.values()
    }

    pub fn len(&self) -> usize {
        self.by_start.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_start.is_empty()
    }
}

/// The current [`RegionMap`], shared: the owner publishes a new map whole, readers take the
/// current one (a clone of an `Arc` under a read lock) and keep it as long as they like.
#[derive(Clone, Debug, Default)]
pub struct LiveRegions(Arc<RwLock<Arc<RegionMap>>>);

impl LiveRegions {
    pub fn new(map: RegionMap) -> LiveRegions {
        LiveRegions(Arc::new(RwLock::new(Arc::new(map))))
    }

    /// The current map.
    pub fn load(&self) -> Arc<RegionMap> {
        // A writer never panics while holding the lock (it swaps an Arc), but recover anyway.
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the map.
    pub fn publish(&self, map: RegionMap) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(map);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::StoreId;

    fn regions() -> Vec<Region> {
        Region::presplit(&[b"g".to_vec(), b"p".to_vec()], 1, &[StoreId(1)])
    }

    #[test]
    fn lookup_by_key_and_id() {
        let map = RegionMap::new(regions());
        assert_eq!(map.len(), 3);
        for (key, want) in [("", 0), ("a", 0), ("g", 1), ("o~", 1), ("p", 2), ("zzz", 2)] {
            assert_eq!(
                map.region_for_key(key.as_bytes())
                    .map(|r| r.start_key.clone()),
                Some(regions()[want].start_key.clone()),
                "key {key:?}"
            );
        }
        for r in regions() {
            assert_eq!(map.get(r.id), Some(&r));
        }
        let keys: Vec<Vec<u8>> = map.iter().map(|r| r.start_key.clone()).collect();
        assert_eq!(keys, vec![b"".to_vec(), b"g".to_vec(), b"p".to_vec()]);
    }

    #[test]
    fn a_gap_is_no_region() {
        let mut rs = regions();
        rs.remove(1);
        let map = RegionMap::new(rs);
        assert!(map.region_for_key(b"h").is_none());
        assert!(map.region_for_key(b"q").is_some());
    }

    #[test]
    #[should_panic(expected = "regions overlap")]
    fn overlapping_regions_are_refused() {
        let mut rs = regions();
        rs[0].end_key = Some(b"h".to_vec());
        RegionMap::new(rs);
    }

    #[test]
    fn a_published_map_replaces_the_old_one_for_new_loads_only() {
        let live = LiveRegions::new(RegionMap::new(regions()));
        let before = live.load();
        let mut rs = regions();
        rs.truncate(1);
        rs[0].end_key = None;
        live.publish(RegionMap::new(rs));
        assert_eq!(before.len(), 3, "a loaded map never changes");
        assert_eq!(live.load().len(), 1);
    }
}
