//! `KvStateMachine` as a store region's state machine (`types::StateMachine`): the one
//! adapter used by the server and the whole-cluster simulator.

use crate::{ApplyOutcome, Command, CommandError, KvStateMachine, RegionRange, Response};
use bytes::Bytes;
use types::{Region, StateMachine};

impl StateMachine for KvStateMachine {
    type Output = ApplyOutcome;
    type Query = Command;
    type ReadOutput = Result<Response, CommandError>;

    fn empty(region: &Region) -> Self {
        KvStateMachine::with_region(RegionRange {
            start: Bytes::from(region.start_key.clone()),
            end: region.end_key.clone().map(Bytes::from),
        })
    }

    fn apply(&mut self, index: u64, data: &[u8]) -> ApplyOutcome {
        KvStateMachine::apply(self, index, data)
    }

    fn apply_noop(&mut self, index: u64) {
        KvStateMachine::apply_noop(self, index)
    }

    fn split_off(&mut self, at_key: &[u8], right: &Region, applied: u64) -> Self {
        let mut r = KvStateMachine::split_off(self, Bytes::copy_from_slice(at_key))
            .unwrap_or_else(|e| panic!("split of a region the store checked: {e}"));
        debug_assert_eq!(r.region().end.as_deref(), right.end_key.as_deref());
        r.reset_applied_index(applied);
        r
    }

    fn absorb(&mut self, source: Self, merged: &Region) {
        KvStateMachine::absorb(self, source)
            .unwrap_or_else(|e| panic!("merge of regions the store checked: {e}"));
        debug_assert_eq!(self.region().start.as_ref(), merged.start_key.as_slice());
    }

    /// Every key of a multi-key request (decoded only when its tag says it names several,
    /// see [`crate::Request::names_several_keys`]); the routing key otherwise.
    fn payload_keys(data: &[u8], routing_key: &[u8], key: &mut dyn FnMut(&[u8]) -> bool) {
        if !crate::Request::names_several_keys(data) {
            key(routing_key);
            return;
        }
        match crate::Request::decode(data) {
            Ok(request) => {
                for k in request.command.keys() {
                    if !key(k) {
                        return;
                    }
                }
            }
            Err(_) => {
                key(routing_key);
            }
        }
    }

    fn query_keys(query: &Command, routing_key: &[u8], key: &mut dyn FnMut(&[u8]) -> bool) {
        let keys = query.keys();
        if keys.is_empty() {
            key(routing_key);
            return;
        }
        for k in keys {
            if !key(k) {
                return;
            }
        }
    }

    fn read(&self, query: &Command, now_ms: u64) -> Result<Response, CommandError> {
        KvStateMachine::read_at(self, query, now_ms)
    }

    /// Deletes keys whose deadline passed, through the log (so every replica frees them at
    /// the same entry), at most [`crate::PURGE_BATCH_KEYS`] per entry. Proposed only when a
    /// deadline is due by `now_ms`; the entry's log time is `now_ms`, so what it deletes is
    /// what this leader's clock says is due.
    fn housekeeping(&self, now_ms: u64) -> Option<Bytes> {
        let due = self.next_deadline_ms()?;
        if due > now_ms {
            return None;
        }
        let request = crate::Request {
            client_id: crate::ClientId::NONE,
            sequence: crate::Sequence(0),
            command: Command::PurgeExpired {
                limit: crate::PURGE_BATCH_KEYS,
            },
            proposed_at_ms: now_ms,
        };
        Some(request.encode())
    }

    fn approximate_size(&self) -> types::ApproximateSize {
        types::ApproximateSize {
            keys: self.len() as u64,
            bytes: self.data_bytes(),
        }
    }

    /// The better of the table's two halving keys (see [`crate::table::Table::halving_keys`])
    /// that, moved out of any hash tag by [`types::split_boundary`], still has keys on both
    /// sides (so lies strictly inside the region): walks half the table, copies only the key.
    fn size_split_key(&self) -> Option<Vec<u8>> {
        let first = self.data.first_key()?;
        self.data
            .halving_keys()
            .into_iter()
            .map(types::split_boundary)
            .find(|at| {
                // Keys on the left (`first < at`) and on the right (`at` is at most the
                // halving key it came from, which is in the table).
                first < at.as_slice()
                    && at.as_slice() > self.region.start.as_ref()
                    && self.region.contains(at)
            })
    }

    /// A clone: O(1), the table and the sessions are persistent maps.
    type View = KvStateMachine;

    fn view(&self) -> KvStateMachine {
        self.clone()
    }

    fn serialize(view: &KvStateMachine) -> Bytes {
        view.snapshot()
    }

    type RestoreError = crate::SnapshotError;

    fn restore(data: &[u8]) -> Result<Self, crate::SnapshotError> {
        KvStateMachine::restore(data)
    }
}

#[cfg(test)]
mod tests {
    use crate::{KvStateMachine, RegionRange};
    use bytes::Bytes;
    use types::StateMachine;

    fn machine(range: RegionRange, pairs: &[(Vec<u8>, usize)]) -> KvStateMachine {
        let mut m = KvStateMachine::with_region(range);
        for (key, value_len) in pairs {
            m.data.insert(key, &vec![b'v'; *value_len]);
        }
        m
    }

    fn split_key(m: &KvStateMachine) -> Option<String> {
        StateMachine::size_split_key(m).map(|k| String::from_utf8(k).expect("ascii keys"))
    }

    #[test]
    fn a_split_side_starting_a_new_log_keeps_versions_increasing() {
        use crate::{ClientId, Command, Request, Response, Sequence};
        let mut m = KvStateMachine::with_region(RegionRange::full());
        let put = |key: &str, sequence: u64| Request {
            client_id: ClientId(1),
            sequence: Sequence(sequence),
            command: Command::Put {
                key: Bytes::copy_from_slice(key.as_bytes()),
                value: Bytes::from_static(b"v"),
                options: Default::default(),
            },
            proposed_at_ms: 0,
        };
        for i in 1..=100 {
            m.apply_request(i, &put("z", i));
        }
        let right_region = types::Region {
            id: types::PLACEMENT_REGION,
            start_key: b"m".to_vec(),
            end_key: None,
            epoch: types::RegionEpoch::default(),
            peers: vec![],
        };
        // The right side's log starts over at a small index.
        let mut right = StateMachine::split_off(&mut m, b"m", &right_region, 5);
        right.assert_invariants();
        let inspect = |m: &KvStateMachine| match m.read(&Command::Inspect {
            key: Bytes::from_static(b"z"),
        }) {
            Ok(Response::KeyInfo { version, .. }) => version,
            other => panic!("{other:?}"),
        };
        let watched = inspect(&right);
        assert_eq!(watched, 100);
        // Its entries 6..=100 change the key; none may hand out version 100 again.
        for i in 6..=100 {
            right.apply_request(i, &put("z", 100 + i));
            assert_ne!(inspect(&right), watched);
        }
        right.assert_invariants();
    }

    #[test]
    fn equal_pairs_split_in_the_middle() {
        let pairs: Vec<_> = (0..100u32)
            .map(|i| (format!("key{i:03}").into_bytes(), 20))
            .collect();
        let m = machine(RegionRange::full(), &pairs);
        assert_eq!(split_key(&m).as_deref(), Some("key050"));
    }

    #[test]
    fn an_empty_region_has_no_split_key() {
        assert_eq!(split_key(&machine(RegionRange::full(), &[])), None);
        let one = machine(RegionRange::full(), &[(b"k".to_vec(), 5)]);
        assert_eq!(split_key(&one), None, "one key cannot be split");
    }

    #[test]
    fn a_huge_pair_ends_up_on_a_side_of_its_own() {
        let small = |prefix: &str| -> Vec<(Vec<u8>, usize)> {
            (0..50u32)
                .map(|i| (format!("{prefix}{i:02}").into_bytes(), 8))
                .collect()
        };
        let huge = (b"m".to_vec(), 100_000);
        // In the middle: split right before it or right after it.
        let mut pairs = small("a");
        pairs.push(huge.clone());
        pairs.extend(small("z"));
        let m = machine(RegionRange::full(), &pairs);
        let at = split_key(&m).expect("a split key");
        assert!(at == "m" || at == "z00", "{at}");
        // First: right after it (a split before the first key would leave nothing left).
        let mut pairs = vec![(b"0".to_vec(), 100_000)];
        pairs.extend(small("a"));
        let m = machine(RegionRange::full(), &pairs);
        assert_eq!(split_key(&m).as_deref(), Some("a00"));
        // Last: right before it.
        let mut pairs = small("a");
        pairs.push(huge);
        let m = machine(RegionRange::full(), &pairs);
        assert_eq!(split_key(&m).as_deref(), Some("m"));
    }

    #[test]
    fn keys_of_one_hash_tag_stay_together() {
        let tagged = |tag: &str, n: u32| -> Vec<(Vec<u8>, usize)> {
            (0..n)
                .map(|i| (format!("{{{tag}}}:{i:03}").into_bytes(), 10))
                .collect()
        };
        let m = machine(RegionRange::full(), &tagged("user1", 100));
        assert_eq!(split_key(&m), None, "every key shares one tag");
        // Two tags: the boundary is the second tag, whatever the sizes.
        let mut pairs = tagged("a", 10);
        pairs.extend(tagged("b", 90));
        let m = machine(RegionRange::full(), &pairs);
        assert_eq!(split_key(&m).as_deref(), Some("{b}"));
    }

    #[test]
    fn the_split_key_is_strictly_inside_the_region() {
        // The region starts at the tag itself: cutting the halving key back to its tag
        // would land on the region's start.
        let range = RegionRange::new(Bytes::from_static(b"{t}"), Some(Bytes::from_static(b"{u}")));
        let pairs: Vec<_> = (0..10u32)
            .map(|i| (format!("{{t}}{i}").into_bytes(), 10))
            .collect();
        assert_eq!(split_key(&machine(range.clone(), &pairs)), None);
        let pairs: Vec<_> = (0..10u32)
            .map(|i| (format!("{{t}}{i}x").into_bytes(), 10))
            .collect();
        assert_eq!(split_key(&machine(range, &pairs)), None);
        // A plain region: the key comes back as it is.
        let range = RegionRange::new(Bytes::from_static(b"k"), Some(Bytes::from_static(b"l")));
        let pairs: Vec<_> = (0..10u32)
            .map(|i| (format!("k{i}").into_bytes(), 10))
            .collect();
        assert_eq!(split_key(&machine(range, &pairs)).as_deref(), Some("k5"));
    }
}
