//! [`Table`]: a region's keys and values, ordered by key, stored compactly.
//!
//! Memory is the constraint here (a store holds every region replica it hosts in RAM), so
//! each pair is **one** heap allocation, `[key_len: u32 LE][key][value]`, ordered by the key
//! alone. A `BTreeMap<Bytes, Bytes>` cost two allocations per pair plus two 32-byte `Bytes`
//! handles in the tree and, once a value was cloned into a response, a shared header per
//! handle: about 300 bytes for an 11-byte key and a 100-byte value, against about 150 here.
//! Reads copy the value out (a value is at most the value limit, and reads were going to be
//! encoded into a response anyway).
//!
//! The tree is a persistent B-tree (`imbl::OrdSet`, nodes shared by reference count) and each
//! pair is reference-counted, so [`Table::clone`] is O(1): a snapshot takes a point-in-time
//! copy on the store thread and serializes it on another, while writes that follow copy only
//! the nodes on their path that the copy still shares (a copied node clones its pairs'
//! handles, not their bytes). Snapshotting a region used to stall its store thread for the
//! whole serialization.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;

const LEN_BYTES: usize = 4;

/// One pair in one allocation, shared (not copied) by the table's clones.
#[derive(Clone)]
pub struct Pair(Arc<[u8]>);

impl Pair {
    fn new(key: &[u8], value: &[u8]) -> Pair {
        let key_len = u32::try_from(key.len())
            .unwrap_or_else(|_| panic!("key of {} bytes does not fit a pair", key.len()));
        let mut buf = Vec::with_capacity(LEN_BYTES + key.len() + value.len());
        buf.extend_from_slice(&key_len.to_le_bytes());
        buf.extend_from_slice(key);
        buf.extend_from_slice(value);
        Pair(Arc::from(buf))
    }

    fn key_len(&self) -> usize {
        let mut len = [0u8; LEN_BYTES];
        len.copy_from_slice(&self.0[..LEN_BYTES]);
        u32::from_le_bytes(len) as usize
    }

    pub fn key(&self) -> &[u8] {
        &self.0[LEN_BYTES..LEN_BYTES + self.key_len()]
    }

    pub fn value(&self) -> &[u8] {
        &self.0[LEN_BYTES + self.key_len()..]
    }
}

impl std::fmt::Debug for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Pair")
            .field(&Bytes::copy_from_slice(self.key()))
            .field(&Bytes::copy_from_slice(self.value()))
            .finish()
    }
}

// Ordering and equality are by key only, consistent with `Borrow<[u8]>` (the key), as
// `BTreeSet` lookups by `&[u8]` require.
impl PartialEq for Pair {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Pair {}
impl PartialOrd for Pair {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pair {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(other.key())
    }
}
impl Borrow<[u8]> for Pair {
    fn borrow(&self) -> &[u8] {
        self.key()
    }
}

/// A region's data. Equality compares keys *and* values (unlike [`Pair`]'s ordering).
/// Cloning is O(1) (see the module docs).
#[derive(Clone, Default)]
pub struct Table {
    pairs: imbl::OrdSet<Pair>,
    /// Key plus value bytes of every pair (the region's approximate size).
    bytes: u64,
}

fn pair_bytes(p: &Pair) -> u64 {
    (p.key().len() + p.value().len()) as u64
}

impl PartialEq for Table {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}
impl Eq for Table {}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.pairs.iter()).finish()
    }
}

impl Table {
    pub fn new() -> Table {
        Table::default()
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Key plus value bytes of every pair, kept as pairs come and go (O(1)).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The value of `key`, borrowed.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.pairs.get(key).map(Pair::value)
    }

    /// The value of `key`, copied out.
    pub fn get_bytes(&self, key: &[u8]) -> Option<Bytes> {
        self.get(key).map(Bytes::copy_from_slice)
    }

    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.pairs.contains(key)
    }

    /// Sets `key` to `value`; returns the pair it replaced (one B-tree operation).
    pub fn insert(&mut self, key: &[u8], value: &[u8]) -> Option<Pair> {
        self.bytes += (key.len() + value.len()) as u64;
        let old = self.pairs.insert(Pair::new(key, value));
        if let Some(old) = &old {
            self.bytes -= pair_bytes(old);
        }
        old
    }

    /// Removes `key`; returns the pair it held.
    pub fn remove(&mut self, key: &[u8]) -> Option<Pair> {
        let old = self.pairs.remove(key);
        if let Some(old) = &old {
            self.bytes -= pair_bytes(old);
        }
        old
    }

    /// All pairs in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.pairs.iter().map(|p| (p.key(), p.value()))
    }

    /// Pairs with `start <= key` and `key < end` (no end: to the last key), in key order.
    pub fn range<'a>(
        &'a self,
        start: &'a [u8],
        end: Option<&'a [u8]>,
    ) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        self.pairs
            .range::<_, [u8]>((Bound::Included(start), upper))
            .map(|p| (p.key(), p.value()))
    }

    /// Moves every pair with `key >= at` into a new table.
    pub fn split_off(&mut self, at: &[u8]) -> Table {
        let at_pair = self.pairs.get(at).cloned();
        let (left, mut right) = std::mem::take(&mut self.pairs).split(at);
        if let Some(pair) = at_pair {
            right.insert(pair);
        }
        self.pairs = left;
        // O(pairs moved): splits are rare, and the count must stay exact on both sides.
        let moved: u64 = right.iter().map(pair_bytes).sum();
        self.bytes -= moved;
        Table {
            pairs: right,
            bytes: moved,
        }
    }

    /// Where a split would halve the table's bytes (a split key goes to the right side):
    /// the key whose pair crosses the halfway point and the key after it, best first (the
    /// one whose left side is closer to half the bytes; the first on a tie). At most two
    /// keys, none for an empty table. Walks the pairs in key order up to the key after the
    /// crossing, in place (no copy); the caller decides which of them may be used (one at
    /// the table's first key would leave the left side empty).
    pub fn halving_keys(&self) -> Vec<&[u8]> {
        let total = self.bytes;
        let mut before: u64 = 0;
        let mut pairs = self.pairs.iter().peekable();
        while let Some(pair) = pairs.next() {
            let through = before + pair_bytes(pair);
            if through.saturating_mul(2) < total {
                before = through;
                continue;
            }
            // `pair` crosses the halfway point: split before it (left = `before`) or after
            // it (left = `through`), whichever is closer to half.
            let Some(next) = pairs.peek() else {
                return vec![pair.key()];
            };
            let off_half = |left: u64| total.abs_diff(left.saturating_mul(2));
            return if off_half(through) < off_half(before) {
                vec![next.key(), pair.key()]
            } else {
                vec![pair.key(), next.key()]
            };
        }
        Vec::new()
    }

    pub fn first_key(&self) -> Option<&[u8]> {
        self.pairs.get_min().map(Pair::key)
    }

    pub fn last_key(&self) -> Option<&[u8]> {
        self.pairs.get_max().map(Pair::key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_an_ordered_map() {
        let mut t = Table::new();
        let mut model = std::collections::BTreeMap::new();
        let mut x: u64 = 7;
        for _ in 0..2_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let key = format!("k{}", (x >> 33) % 300).into_bytes();
            let value = format!("v{}", x >> 50).into_bytes();
            match (x >> 20) % 3 {
                0 => {
                    assert_eq!(
                        t.remove(&key).map(|p| p.value().to_vec()),
                        model.remove(&key)
                    );
                }
                _ => {
                    t.insert(&key, &value);
                    model.insert(key.clone(), value);
                }
            }
            assert_eq!(t.get(&key), model.get(&key).map(|v| v.as_slice()));
            assert_eq!(t.len(), model.len());
            let model_bytes: usize = model.iter().map(|(k, v)| k.len() + v.len()).sum();
            assert_eq!(t.bytes(), model_bytes as u64, "the size count drifted");
        }
        let ours: Vec<_> = t.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        let theirs: Vec<_> = model.clone().into_iter().collect();
        assert_eq!(ours, theirs);
        let ours: Vec<_> = t
            .range(b"k1", Some(b"k2"))
            .map(|(k, _)| k.to_vec())
            .collect();
        let theirs: Vec<_> = model
            .range::<[u8], _>((Bound::Included(&b"k1"[..]), Bound::Excluded(&b"k2"[..])))
            .map(|(k, _)| k.clone())
            .collect();
        assert_eq!(ours, theirs);
        let total = t.bytes();
        let right = t.split_off(b"k2");
        assert!(t.last_key().unwrap() < &b"k2"[..]);
        assert!(right.first_key().unwrap() >= &b"k2"[..]);
        assert_eq!(t.len() + right.len(), model.len());
        let count = |t: &Table| {
            t.iter()
                .map(|(k, v)| (k.len() + v.len()) as u64)
                .sum::<u64>()
        };
        assert_eq!((t.bytes(), right.bytes()), (count(&t), count(&right)));
        assert_eq!(t.bytes() + right.bytes(), total);
    }

    #[test]
    fn split_off_keeps_the_split_key_on_the_right() {
        let mut t = Table::new();
        for k in [&b"a"[..], b"b", b"c"] {
            t.insert(k, k);
        }
        let right = t.split_off(b"b");
        assert_eq!(t.iter().map(|(k, _)| k).collect::<Vec<_>>(), [&b"a"[..]]);
        assert_eq!(
            right.iter().collect::<Vec<_>>(),
            [(&b"b"[..], &b"b"[..]), (&b"c"[..], &b"c"[..])]
        );
    }

    #[test]
    fn a_clone_is_a_point_in_time_copy() {
        let mut t = Table::new();
        for i in 0..1_000u32 {
            t.insert(&i.to_be_bytes(), b"old");
        }
        let copy = t.clone();
        for i in 0..1_000u32 {
            if i % 2 == 0 {
                t.insert(&i.to_be_bytes(), b"new");
            } else {
                t.remove(&i.to_be_bytes());
            }
        }
        t.insert(b"extra", b"x");
        assert_eq!(copy.len(), 1_000);
        assert!(copy.iter().all(|(_, v)| v == b"old"));
        assert_eq!(t.len(), 501);
        assert_eq!(t.get(&0u32.to_be_bytes()), Some(&b"new"[..]));
    }

    #[test]
    fn empty_keys_and_values_round_trip() {
        let mut t = Table::new();
        t.insert(b"", b"");
        t.insert(b"a", b"");
        assert_eq!(t.get(b""), Some(&b""[..]));
        assert_eq!(t.get(b"a"), Some(&b""[..]));
        assert_eq!(t.first_key(), Some(&b""[..]));
    }

    #[test]
    fn halving_keys_are_where_the_running_size_crosses_half() {
        assert!(Table::new().halving_keys().is_empty());
        let mut t = Table::new();
        for i in 0..100u32 {
            t.insert(format!("k{i:03}").as_bytes(), b"0123456789");
        }
        // 100 equal pairs: 50 on each side when split at the 51st key.
        assert_eq!(t.halving_keys(), [&b"k050"[..], b"k049"]);
        let mut one = Table::new();
        one.insert(b"only", b"v");
        assert_eq!(one.halving_keys(), [&b"only"[..]]);
        // A huge pair in the middle: either side of it is as far from half.
        let mut t = Table::new();
        for i in 0..10u32 {
            t.insert(format!("a{i}").as_bytes(), b"x");
            t.insert(format!("c{i}").as_bytes(), b"x");
        }
        t.insert(b"b", &[0u8; 1000]);
        assert_eq!(t.halving_keys(), [&b"b"[..], b"c0"]);
    }

    #[test]
    fn equality_compares_values_too() {
        let mut a = Table::new();
        let mut b = Table::new();
        a.insert(b"k", b"1");
        b.insert(b"k", b"2");
        assert_ne!(a, b);
        b.insert(b"k", b"1");
        assert_eq!(a, b);
    }
}
