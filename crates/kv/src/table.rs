//! [`Table`]: a region's keys and their values (strings or hashes), ordered by key, stored
//! compactly, with an index of deadlines for expiry.
//!
//! Memory is the constraint here (a store holds every region replica it hosts in RAM), so
//! each **string** entry is **one** heap allocation,
//! `[key_len: u32 LE][version: u64 LE][deadline: u64 LE, only if key_len's top bit is set][key][value]`,
//! ordered by the key alone. A `BTreeMap<Bytes, Bytes>` cost two allocations per pair plus two
//! 32-byte `Bytes` handles in the tree and, once a value was cloned into a response, a shared
//! header per handle: about 300 bytes for an 11-byte key and a 100-byte value, against about
//! 160 here. A key without a deadline (the common case) does not pay for one. Reads copy the
//! value out (a value is at most the value limit, and reads were going to be encoded into a
//! response anyway).
//!
//! A **hash** entry is one entry of the table (a hash is never split across regions) holding an
//! `Arc` to a [`HashEntry`] whose fields live in a persistent ordered map
//! (`imbl::OrdMap<Bytes, Bytes>`, nodes shared by reference count). Why persistent: a hash
//! can hold 10^5 fields, and the table's clones (snapshots) share entries. With a plain
//! `BTreeMap`, changing one field of a hash that a snapshot still shares would have to copy
//! the whole hash first (O(n) per HSET while a snapshot is being written); with the
//! persistent map, the write copies the O(log n) nodes on the field's path and shares the
//! rest. A hash's size (key plus every field and value) is kept as fields come and go, so
//! [`Table::bytes`] never walks a hash.
//!
//! Every entry carries its `version` (the log index of the entry that last changed it: value,
//! type or deadline) and an optional `deadline` (log time in ms; a key whose deadline is
//! `<= now` is expired). The table itself does not judge time: it keeps expired entries until
//! they are removed, and keeps an index ordered by `(deadline, key)` so that the earliest
//! deadlines are found in O(log n) ([`Table::next_deadline`], [`Table::expired_keys`]).
//!
//! The trees are persistent B-trees (`imbl::OrdSet`) and each entry is reference-counted, so
//! [`Table::clone`] is O(1): a snapshot takes a point-in-time copy on the store thread and
//! serializes it on another, while writes that follow copy only the nodes on their path that
//! the copy still shares (a copied node clones its entries' handles, not their bytes).

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;

const LEN_BYTES: usize = 4;
const VERSION_BYTES: usize = 8;
const DEADLINE_BYTES: usize = 8;
/// Top bit of the stored key length: a deadline follows the version.
const HAS_DEADLINE: u32 = 1 << 31;

/// A key's type, as Redis `TYPE` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    String,
    Hash,
}

impl KeyType {
    /// The Redis `TYPE` name: `"string"` or `"hash"`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::String => "string",
            KeyType::Hash => "hash",
        }
    }
}

/// The fields of a hash: a persistent ordered map (O(1) clone, O(log n) update of a shared
/// copy) and its running size (every field plus value byte).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct HashFields {
    map: imbl::OrdMap<Bytes, Bytes>,
    bytes: u64,
}

impl std::fmt::Debug for HashFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.map.iter()).finish()
    }
}

impl HashFields {
    pub fn new() -> HashFields {
        HashFields::default()
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Field plus value bytes of every field (O(1)).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn get(&self, field: &[u8]) -> Option<&Bytes> {
        self.map.get(field)
    }

    /// Sets `field`; returns the value it replaced.
    pub fn insert(&mut self, field: Bytes, value: Bytes) -> Option<Bytes> {
        self.bytes += (field.len() + value.len()) as u64;
        let field_len = field.len() as u64;
        let old = self.map.insert(field, value);
        if let Some(old) = &old {
            self.bytes -= field_len + old.len() as u64;
        }
        old
    }

    /// Removes `field`; returns its value.
    pub fn remove(&mut self, field: &[u8]) -> Option<Bytes> {
        let old = self.map.remove_with_key(field);
        old.map(|(field, value)| {
            self.bytes -= (field.len() + value.len()) as u64;
            value
        })
    }

    /// Fields in order.
    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, &Bytes)> + '_ {
        self.map.iter()
    }

    /// Fields strictly after `after` (`None`: from the first), in order.
    pub fn iter_after<'a>(
        &'a self,
        after: Option<&'a [u8]>,
    ) -> impl Iterator<Item = (&'a Bytes, &'a Bytes)> + 'a {
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.map.range::<_, [u8]>((lower, Bound::Unbounded))
    }

    /// Whether both maps share their root node (a clone not changed since). For tests.
    pub fn ptr_eq(&self, other: &HashFields) -> bool {
        self.map.ptr_eq(&other.map)
    }
}

/// A hash entry: its key, metadata and fields. Shared by `Arc` between table clones.
#[derive(Clone, Debug)]
pub struct HashEntry {
    key: Bytes,
    version: u64,
    deadline: Option<u64>,
    fields: HashFields,
}

/// One entry of the table (a key and its value), shared (not copied) by the table's clones.
#[derive(Clone)]
pub enum Entry {
    /// One allocation: see the module docs.
    String(Arc<[u8]>),
    Hash(Arc<HashEntry>),
}

/// What an entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    String(&'a [u8]),
    Hash(&'a HashFields),
}

fn read_u32(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

fn read_u64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

impl Entry {
    /// A string entry. Panics if the key is 2 GiB or more (keys are bounded far below).
    pub fn string(key: &[u8], value: &[u8], deadline: Option<u64>, version: u64) -> Entry {
        let key_len = u32::try_from(key.len())
            .ok()
            .filter(|len| len & HAS_DEADLINE == 0)
            .unwrap_or_else(|| panic!("key of {} bytes does not fit an entry", key.len()));
        let header = LEN_BYTES + VERSION_BYTES + deadline.map_or(0, |_| DEADLINE_BYTES);
        let mut buf = Vec::with_capacity(header + key.len() + value.len());
        let flagged = if deadline.is_some() {
            key_len | HAS_DEADLINE
        } else {
            key_len
        };
        buf.extend_from_slice(&flagged.to_le_bytes());
        buf.extend_from_slice(&version.to_le_bytes());
        if let Some(deadline) = deadline {
            buf.extend_from_slice(&deadline.to_le_bytes());
        }
        buf.extend_from_slice(key);
        buf.extend_from_slice(value);
        Entry::String(Arc::from(buf))
    }

    /// A hash entry (the caller keeps hashes non-empty).
    pub fn hash(key: Bytes, fields: HashFields, deadline: Option<u64>, version: u64) -> Entry {
        Entry::Hash(Arc::new(HashEntry {
            key,
            version,
            deadline,
            fields,
        }))
    }

    /// (offset of the key, key length) in a string entry's buffer.
    fn string_layout(buf: &[u8]) -> (usize, usize) {
        let raw = read_u32(buf, 0);
        let header = LEN_BYTES
            + VERSION_BYTES
            + if raw & HAS_DEADLINE != 0 {
                DEADLINE_BYTES
            } else {
                0
            };
        (header, (raw & !HAS_DEADLINE) as usize)
    }

    pub fn key(&self) -> &[u8] {
        match self {
            Entry::String(buf) => {
                let (at, len) = Self::string_layout(buf);
                &buf[at..at + len]
            }
            Entry::Hash(hash) => &hash.key,
        }
    }

    pub fn value(&self) -> Value<'_> {
        match self {
            Entry::String(buf) => {
                let (at, len) = Self::string_layout(buf);
                Value::String(&buf[at + len..])
            }
            Entry::Hash(hash) => Value::Hash(&hash.fields),
        }
    }

    pub fn key_type(&self) -> KeyType {
        match self {
            Entry::String(_) => KeyType::String,
            Entry::Hash(_) => KeyType::Hash,
        }
    }

    /// The string value, `None` for a hash.
    pub fn as_string(&self) -> Option<&[u8]> {
        match self.value() {
            Value::String(value) => Some(value),
            Value::Hash(_) => None,
        }
    }

    /// The hash fields, `None` for a string.
    pub fn as_hash(&self) -> Option<&HashFields> {
        match self {
            Entry::Hash(hash) => Some(&hash.fields),
            Entry::String(_) => None,
        }
    }

    /// The log index of the entry that last changed this key.
    pub fn version(&self) -> u64 {
        match self {
            Entry::String(buf) => read_u64(buf, LEN_BYTES),
            Entry::Hash(hash) => hash.version,
        }
    }

    /// The key's deadline (log time, ms), if it has one.
    pub fn deadline(&self) -> Option<u64> {
        match self {
            Entry::String(buf) => {
                (read_u32(buf, 0) & HAS_DEADLINE != 0).then(|| read_u64(buf, LEN_BYTES + 8))
            }
            Entry::Hash(hash) => hash.deadline,
        }
    }

    /// Whether the key is expired at `now_ms` (its deadline is `<= now_ms`).
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.deadline().is_some_and(|deadline| deadline <= now_ms)
    }

    /// Key plus value bytes (a hash: key plus every field and value), what the table's size
    /// counts.
    pub fn weight(&self) -> u64 {
        match self {
            Entry::String(buf) => (buf.len() - Self::string_layout(buf).0) as u64,
            Entry::Hash(hash) => hash.key.len() as u64 + hash.fields.bytes,
        }
    }

    /// The same key and value with another deadline and version. O(key + value) for a
    /// string (one new allocation), O(1) for a hash (the persistent map is shared).
    pub fn with_meta(&self, deadline: Option<u64>, version: u64) -> Entry {
        self.renamed(self.key(), deadline, version)
    }

    /// The same value under another key, deadline and version (RENAME, COPY).
    pub fn renamed(&self, key: &[u8], deadline: Option<u64>, version: u64) -> Entry {
        match self.value() {
            Value::String(value) => Entry::string(key, value, deadline, version),
            Value::Hash(fields) => Entry::hash(
                Bytes::copy_from_slice(key),
                fields.clone(),
                deadline,
                version,
            ),
        }
    }

    /// Mutable access to a hash entry's parts, copying the `HashEntry` (O(1): the map is
    /// persistent) only when a table clone still shares it. `None` for a string.
    pub fn hash_mut(&mut self) -> Option<(&mut HashFields, &mut u64)> {
        match self {
            Entry::Hash(hash) => {
                let hash = Arc::make_mut(hash);
                Some((&mut hash.fields, &mut hash.version))
            }
            Entry::String(_) => None,
        }
    }

    /// Whether key, type, value, version and deadline are all equal.
    pub fn same_as(&self, other: &Entry) -> bool {
        self.key() == other.key()
            && self.version() == other.version()
            && self.deadline() == other.deadline()
            && self.value() == other.value()
    }
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut t = f.debug_struct("Entry");
        t.field("key", &Bytes::copy_from_slice(self.key()));
        match self.value() {
            Value::String(value) => t.field("string", &Bytes::copy_from_slice(value)),
            Value::Hash(fields) => t.field("hash", fields),
        };
        t.field("version", &self.version())
            .field("deadline", &self.deadline())
            .finish()
    }
}

// Ordering and equality are by key only, consistent with `Borrow<[u8]>` (the key), as
// `OrdSet` lookups by `&[u8]` require.
impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(other.key())
    }
}
impl Borrow<[u8]> for Entry {
    fn borrow(&self) -> &[u8] {
        self.key()
    }
}

/// A region's data. Equality compares keys, values, versions and deadlines (unlike
/// [`Entry`]'s ordering). Cloning is O(1) (see the module docs).
#[derive(Clone, Default)]
pub struct Table {
    entries: imbl::OrdSet<Entry>,
    /// `(deadline, key)` of every entry with a deadline.
    deadlines: imbl::OrdSet<(u64, Bytes)>,
    /// Sum of [`Entry::weight`] (the region's approximate size).
    bytes: u64,
}

impl PartialEq for Table {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self
                .entries
                .iter()
                .zip(other.entries.iter())
                .all(|(a, b)| a.same_as(b))
    }
}
impl Eq for Table {}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.entries.iter()).finish()
    }
}

impl Table {
    pub fn new() -> Table {
        Table::default()
    }

    /// Number of entries, expired ones included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sum of every entry's weight (key plus value bytes; a hash: key plus fields and values),
    /// kept as entries come and go (O(1)).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The entry of `key`, expired or not.
    pub fn entry(&self, key: &[u8]) -> Option<&Entry> {
        self.entries.get(key)
    }

    /// The string value of `key`, borrowed (`None` if absent or a hash; expiry not judged).
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.entries.get(key).and_then(Entry::as_string)
    }

    /// The string value of `key`, copied out.
    pub fn get_bytes(&self, key: &[u8]) -> Option<Bytes> {
        self.get(key).map(Bytes::copy_from_slice)
    }

    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.entries.contains(key)
    }

    /// Sets `key` to the string `value` with version 0 and no deadline; returns the entry it
    /// replaced. (Tests and tools; the state machine uses [`Table::put`].)
    pub fn insert(&mut self, key: &[u8], value: &[u8]) -> Option<Entry> {
        self.put(Entry::string(key, value, None, 0))
    }

    /// Stores `entry` under its key; returns the entry it replaced (one B-tree operation,
    /// plus one per deadline involved).
    pub fn put(&mut self, entry: Entry) -> Option<Entry> {
        self.bytes += entry.weight();
        let indexed = entry
            .deadline()
            .map(|deadline| (deadline, Bytes::copy_from_slice(entry.key())));
        let old = self.entries.insert(entry);
        // The old entry's index item first: it may be the same (deadline, key).
        if let Some(old) = &old {
            self.forget(old);
        }
        if let Some(item) = indexed {
            self.deadlines.insert(item);
        }
        old
    }

    /// Removes `key`; returns the entry it held.
    pub fn remove(&mut self, key: &[u8]) -> Option<Entry> {
        let old = self.entries.remove(key);
        if let Some(old) = &old {
            self.forget(old);
        }
        old
    }

    /// Accounting for an entry that left the table (removed or replaced).
    fn forget(&mut self, old: &Entry) {
        self.bytes -= old.weight();
        if let Some(deadline) = old.deadline() {
            // The key is the entry's own (a `Bytes` copy is needed for the tuple lookup).
            let removed = self
                .deadlines
                .remove(&(deadline, Bytes::copy_from_slice(old.key())));
            debug_assert!(removed.is_some(), "deadline index out of sync");
        }
    }

    /// All entries in key order (expired ones included).
    pub fn entries(&self) -> impl Iterator<Item = &Entry> + '_ {
        self.entries.iter()
    }

    /// All string pairs in key order (hashes skipped; expired ones included).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.entries
            .iter()
            .filter_map(|e| e.as_string().map(|v| (e.key(), v)))
    }

    /// Entries with `start <= key` and `key < end` (no end: to the last key), in key order.
    pub fn range<'a>(
        &'a self,
        start: &'a [u8],
        end: Option<&'a [u8]>,
    ) -> impl Iterator<Item = &'a Entry> + 'a {
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        self.entries
            .range::<_, [u8]>((Bound::Included(start), upper))
    }

    /// The earliest deadline of any entry.
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.get_min().map(|(deadline, _)| *deadline)
    }

    /// Keys whose deadline is `<= now_ms`, earliest deadline first (ties by key).
    pub fn expired_keys(&self, now_ms: u64) -> impl Iterator<Item = &Bytes> + '_ {
        self.deadlines
            .iter()
            .take_while(move |(deadline, _)| *deadline <= now_ms)
            .map(|(_, key)| key)
    }

    /// Number of entries whose deadline is `<= now_ms` (O(that number)).
    pub fn expired_count(&self, now_ms: u64) -> usize {
        self.expired_keys(now_ms).count()
    }

    /// Number of entries with a deadline.
    pub fn deadline_count(&self) -> usize {
        self.deadlines.len()
    }

    /// Moves every entry with `key >= at` into a new table (deadlines follow their keys).
    pub fn split_off(&mut self, at: &[u8]) -> Table {
        let at_entry = self.entries.get(at).cloned();
        let (left, mut right) = std::mem::take(&mut self.entries).split(at);
        if let Some(entry) = at_entry {
            right.insert(entry);
        }
        self.entries = left;
        // O(entries moved + deadlines): splits are rare, and the counts must stay exact on
        // both sides.
        let moved: u64 = right.iter().map(Entry::weight).sum();
        self.bytes -= moved;
        let (stay, go): (Vec<_>, Vec<_>) = std::mem::take(&mut self.deadlines)
            .into_iter()
            .partition(|(_, key)| key.as_ref() < at);
        self.deadlines = stay.into_iter().collect();
        Table {
            entries: right,
            deadlines: go.into_iter().collect(),
            bytes: moved,
        }
    }

    /// Where a split would halve the table's bytes (a split key goes to the right side):
    /// the key whose entry crosses the halfway point and the key after it, best first (the
    /// one whose left side is closer to half the bytes; the first on a tie). At most two
    /// keys, none for an empty table. Walks the entries in key order up to the key after the
    /// crossing, in place (no copy); the caller decides which of them may be used (one at
    /// the table's first key would leave the left side empty). A hash is one entry weighing
    /// its key, fields and values: it is never split.
    pub fn halving_keys(&self) -> Vec<&[u8]> {
        let total = self.bytes;
        let mut before: u64 = 0;
        let mut entries = self.entries.iter().peekable();
        while let Some(entry) = entries.next() {
            let through = before + entry.weight();
            if through.saturating_mul(2) < total {
                before = through;
                continue;
            }
            // `entry` crosses the halfway point: split before it (left = `before`) or after
            // it (left = `through`), whichever is closer to half.
            let Some(next) = entries.peek() else {
                return vec![entry.key()];
            };
            let off_half = |left: u64| total.abs_diff(left.saturating_mul(2));
            return if off_half(through) < off_half(before) {
                vec![next.key(), entry.key()]
            } else {
                vec![entry.key(), next.key()]
            };
        }
        Vec::new()
    }

    pub fn first_key(&self) -> Option<&[u8]> {
        self.entries.get_min().map(Entry::key)
    }

    pub fn last_key(&self) -> Option<&[u8]> {
        self.entries.get_max().map(Entry::key)
    }

    /// Panics unless the byte count, the deadline index and every hash's running size match
    /// the entries (O(n + fields); for tests and the simulator).
    pub fn assert_consistent(&self) {
        let mut bytes = 0u64;
        let mut with_deadline = 0usize;
        for entry in self.entries.iter() {
            bytes += entry.weight();
            if let Some(deadline) = entry.deadline() {
                with_deadline += 1;
                assert!(
                    self.deadlines
                        .contains(&(deadline, Bytes::copy_from_slice(entry.key()))),
                    "deadline of {entry:?} missing from the deadline index"
                );
            }
            if let Some(fields) = entry.as_hash() {
                assert!(!fields.is_empty(), "empty hash {entry:?}");
                let sum: u64 = fields.iter().map(|(f, v)| (f.len() + v.len()) as u64).sum();
                assert_eq!(sum, fields.bytes(), "hash size of {entry:?} drifted");
            }
        }
        assert_eq!(bytes, self.bytes, "table size count drifted");
        assert_eq!(
            with_deadline,
            self.deadlines.len(),
            "deadline index holds keys that have no deadline"
        );
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
                        t.remove(&key).map(|p| p.as_string().unwrap().to_vec()),
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
            .map(|e| e.key().to_vec())
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

#[cfg(test)]
mod value_model_tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn string_entries_carry_version_and_deadline() {
        let e = Entry::string(b"key", b"value", Some(1234), 7);
        assert_eq!(
            (e.key(), e.as_string(), e.version(), e.deadline()),
            (&b"key"[..], Some(&b"value"[..]), 7, Some(1234))
        );
        assert_eq!(e.weight(), 8);
        let plain = Entry::string(b"", b"", None, u64::MAX);
        assert_eq!(
            (plain.key(), plain.deadline(), plain.version()),
            (&b""[..], None, u64::MAX)
        );
        assert!(e.is_expired(1234) && !e.is_expired(1233));
    }

    #[test]
    fn deadline_index_follows_puts_removes_and_splits() {
        let mut t = Table::new();
        t.put(Entry::string(b"a", b"1", Some(30), 1));
        t.put(Entry::string(b"b", b"1", Some(10), 2));
        t.put(Entry::string(b"c", b"1", None, 3));
        let mut fields = HashFields::new();
        fields.insert(b("f"), b("vv"));
        t.put(Entry::hash(b("d"), fields, Some(20), 4));
        t.assert_consistent();
        assert_eq!(t.next_deadline(), Some(10));
        assert_eq!(t.expired_keys(25).collect::<Vec<_>>(), [&b("b"), &b("d")]);
        assert_eq!(t.expired_count(30), 3);
        // Replacing drops the old deadline.
        t.put(Entry::string(b"b", b"1", None, 5));
        assert_eq!(t.next_deadline(), Some(20));
        t.assert_consistent();
        let right = t.split_off(b"c");
        t.assert_consistent();
        right.assert_consistent();
        assert_eq!(t.next_deadline(), Some(30));
        assert_eq!(right.next_deadline(), Some(20));
        assert_eq!(right.bytes(), 2 + 1 + 1 + 2);
        assert_eq!(right.entry(b"d").map(Entry::version), Some(4));
        t.remove(b"a");
        assert_eq!(t.next_deadline(), None);
        t.assert_consistent();
    }

    #[test]
    fn a_hash_weighs_its_key_fields_and_values() {
        let mut fields = HashFields::new();
        fields.insert(b("f1"), b("abc"));
        fields.insert(b("f2"), b("d"));
        fields.insert(b("f1"), b("x"));
        assert_eq!(fields.bytes(), 2 + 1 + 2 + 1);
        assert_eq!(fields.remove(b"f2"), Some(b("d")));
        assert_eq!(fields.bytes(), 3);
        let mut t = Table::new();
        t.insert(b"a", b"1");
        t.put(Entry::hash(b("h"), fields, None, 1));
        t.insert(b"z", b"1");
        assert_eq!(t.bytes(), 2 + 4 + 2);
        let mut h = t.remove(b"h").unwrap();
        let (fields, version) = h.hash_mut().unwrap();
        fields.insert(b("new"), b("v"));
        *version = 9;
        t.put(h);
        assert_eq!(t.bytes(), 2 + 8 + 2);
        t.assert_consistent();
        assert_eq!(t.get(b"h"), None, "a hash has no string value");
    }
}
