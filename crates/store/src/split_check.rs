//! Where to split a region, as its leader sees it: by size (the state machine's
//! [`StateMachine::size_split_key`]) or by load (a sample of the keys its requests were for).
//! Placement decides *whether* to split (a region too large, or too hot); the store answers
//! *where*, and `Store::propose_split` does it.
//!
//! ## Load sampling
//! Every request the leader accepts (`Store::propose`, `Store::read`, `Store::stale_read`:
//! where `RegionStatus::reads` / `writes` are counted) offers its keys to the replica's
//! [`LoadSampler`]: a reservoir of at most [`LOAD_SAMPLES_PER_WINDOW`] keys, a uniform sample
//! of the window's keys. A request's keys are the ones its state machine names
//! ([`StateMachine::payload_keys`], [`StateMachine::query_keys`]; by default the routing key
//! alone): a batch (a kv `Pipeline`, `BatchGet`, `BatchPut`, `DeleteMany`: the RESP port's
//! pipelines and MGET) offers each of its keys, at most [`MAX_SAMPLED_KEYS_PER_REQUEST`] of
//! them (its first ones), so a hot range read in batches is a range, not one hot key at
//! the batch's first key. A key served is one unit of load, whatever the request it came
//! in. Windows rotate after [`LOAD_WINDOW_REQUESTS`] keys offered, or when
//! the caller says so (`Store::rotate_load_samples`, which the server calls every
//! heartbeat); the current and the previous window are kept, so a split key reflects the
//! last one or two windows. The random choices come from an xorshift seeded with the region
//! id: the simulator replays them exactly.
//!
//! `Store::load_split_key` takes the median sampled key (as many sampled requests below it
//! as at or above it), moved out of any hash tag by [`types::split_boundary`], and refuses
//! when the sample is too small, when one key holds most of it (a single hot key cannot be
//! split), or when the key would not be strictly inside the region.

use crate::error::StoreError;
use crate::region::RegionId;
use crate::state_machine::StateMachine;
use crate::store::Store;

/// Most keys a window samples.
pub const LOAD_SAMPLES_PER_WINDOW: usize = 256;
/// Keys offered (requests' keys) after which a window ends by itself.
pub const LOAD_WINDOW_REQUESTS: u64 = 8192;
/// Most keys of one request offered to the sampler (its first ones): bounds the sampling
/// work per request (a batch of thousands of keys costs 64 offers) while a batch still
/// counts as the range it spans. A request naming no key offers its routing key.
pub const MAX_SAMPLED_KEYS_PER_REQUEST: usize = 64;
/// Fewest samples (both windows) a load split key is chosen from.
pub const MIN_LOAD_SAMPLES: usize = 32;
/// Longest prefix of a key that is sampled: bounds a replica's samples to
/// `2 * LOAD_SAMPLES_PER_WINDOW * MAX_SAMPLED_KEY_BYTES` bytes (128 KiB) whatever the keys
/// (up to 8 KiB each). A prefix is as good a split key as the key (it is no greater, and the
/// result is checked against the region); keys that agree on their first
/// `MAX_SAMPLED_KEY_BYTES` bytes count as one.
pub const MAX_SAMPLED_KEY_BYTES: usize = 256;

/// A bounded uniform sample of the keys of a replica's recent requests (see the module
/// docs).
#[derive(Debug)]
pub(crate) struct LoadSampler {
    /// The current window's reservoir.
    current: Vec<Vec<u8>>,
    /// The previous window's.
    previous: Vec<Vec<u8>>,
    /// Requests offered in the current window.
    seen: u64,
    /// xorshift64 state, never 0.
    rng: u64,
}

impl LoadSampler {
    pub(crate) fn new(region: RegionId) -> LoadSampler {
        LoadSampler {
            current: Vec::new(),
            previous: Vec::new(),
            seen: 0,
            // Any odd number is a valid (non-zero) xorshift state.
            rng: region.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    /// Offers the key of one request: kept with probability `LOAD_SAMPLES_PER_WINDOW / n`
    /// for the window's `n`-th request (Algorithm R), so each of the window's requests is
    /// equally likely to be in the sample. Copies the key only when it is kept.
    pub(crate) fn record(&mut self, key: &[u8]) {
        if self.seen >= LOAD_WINDOW_REQUESTS {
            self.rotate();
        }
        self.seen += 1;
        let key = &key[..key.len().min(MAX_SAMPLED_KEY_BYTES)];
        if self.current.len() < LOAD_SAMPLES_PER_WINDOW {
            self.current.push(key.to_vec());
            return;
        }
        let slot = self.next_random() % self.seen;
        if let Some(kept) = self.current.get_mut(slot as usize) {
            kept.clear();
            kept.extend_from_slice(key);
        }
    }

    /// Ends the current window: it becomes the previous one, the one before is dropped.
    pub(crate) fn rotate(&mut self) {
        self.previous = std::mem::take(&mut self.current);
        self.seen = 0;
    }

    /// Keys sampled in the current and the previous window.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    /// Bytes of the sampled keys (the sampler's memory, about).
    #[cfg(test)]
    pub(crate) fn key_bytes(&self) -> usize {
        self.current
            .iter()
            .chain(&self.previous)
            .map(|k| k.len())
            .sum()
    }

    /// The load split key of the region `[start, end)` (see the module docs), or why there
    /// is none. Samples outside the range (taken before a split or merge reshaped the
    /// region) are left out.
    pub(crate) fn split_key(&self, start: &[u8], end: Option<&[u8]>) -> Result<Vec<u8>, String> {
        let inside = |k: &[u8]| k >= start && end.is_none_or(|e| k < e);
        let mut keys: Vec<&[u8]> = self
            .current
            .iter()
            .chain(&self.previous)
            .map(Vec::as_slice)
            .filter(|&k| inside(k))
            .collect();
        if keys.len() < MIN_LOAD_SAMPLES {
            return Err(format!(
                "only {} request keys sampled (at least {MIN_LOAD_SAMPLES} needed); retry under more load",
                keys.len()
            ));
        }
        keys.sort_unstable();
        // The longest run of one key in the sorted sample.
        let (mut hot, mut hot_count) = (keys[0], 0);
        let mut i = 0;
        while i < keys.len() {
            let run = keys[i..].iter().take_while(|k| **k == keys[i]).count();
            if run > hot_count {
                (hot, hot_count) = (keys[i], run);
            }
            i += run;
        }
        if hot_count * 2 > keys.len() {
            return Err(format!(
                "{hot_count} of {} sampled requests are for the one key {}: a single hot key cannot be split",
                keys.len(),
                printable(hot)
            ));
        }
        let median = keys[keys.len() / 2];
        let at = types::split_boundary(median);
        if at.as_slice() <= start || !inside(at.as_slice()) {
            return Err(format!(
                "the median sampled key {} gives the split key {}, which is not strictly inside the region",
                printable(median),
                printable(&at)
            ));
        }
        if keys[0] >= at.as_slice() {
            // Every sampled key shares the text up to `at` (one hash tag holds the load).
            return Err(format!(
                "every sampled key is at or after the split key {} (one hash tag holds the load): a split would move none of it",
                printable(&at)
            ));
        }
        Ok(at)
    }

    /// xorshift64: cheap, and the same sequence on every run (the simulator replays it).
    fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

/// A key for an error message: printable ASCII as is, other bytes escaped, at most 64 bytes
/// of it.
/// Passes the keys `keys` names (to the callback it is given) to `record`, at most
/// [`MAX_SAMPLED_KEYS_PER_REQUEST`] of them, or `routing_key` when it names none.
pub(crate) fn offer_request_keys(
    routing_key: &[u8],
    keys: impl FnOnce(&mut dyn FnMut(&[u8]) -> bool),
    mut record: impl FnMut(&[u8]),
) {
    let mut offered = 0usize;
    keys(&mut |k: &[u8]| {
        if offered < MAX_SAMPLED_KEYS_PER_REQUEST {
            record(k);
            offered += 1;
        }
        offered < MAX_SAMPLED_KEYS_PER_REQUEST
    });
    if offered == 0 {
        record(routing_key);
    }
}

/// Offers the keys of a request `p` took to its load sampler, if it leads (followers'
/// reads are not the leader's load to split; the keys are not even asked for).
pub(crate) fn sample_request<M: StateMachine>(
    p: &mut crate::peer::Peer<M>,
    routing_key: &[u8],
    keys: impl FnOnce(&mut dyn FnMut(&[u8]) -> bool),
) {
    if p.raw.role() == raft::Role::Leader {
        offer_request_keys(routing_key, keys, |k| p.sample_load(k));
    }
}

fn printable(key: &[u8]) -> String {
    const SHOWN: usize = 64;
    let shown = key[..key.len().min(SHOWN)].escape_ascii().to_string();
    if key.len() > SHOWN {
        format!("\"{shown}...\" ({} bytes)", key.len())
    } else {
        format!("\"{shown}\"")
    }
}

impl<M: StateMachine> Store<M> {
    /// Where to split `region` by load: the median of the keys its recent requests were for
    /// (see the module docs). Only on the region's leader (`NotLeader` otherwise). Refused
    /// with `Proposal` and the reason when there are too few samples, when most of them are
    /// one key, or when the key is not strictly inside the region.
    pub fn load_split_key(&self, region: RegionId) -> Result<Vec<u8>, StoreError> {
        let p = self.split_check_peer(region)?;
        p.load
            .split_key(&p.region.start_key, p.region.end_key.as_deref())
            .map_err(|why| {
                StoreError::Proposal(format!("no load split key for region {region}: {why}"))
            })
    }

    /// Where to split `region` by size: its state machine's
    /// [`StateMachine::size_split_key`]. Only on the region's leader (`NotLeader`
    /// otherwise); refused with `Proposal` when the state machine names no key.
    pub fn size_split_key(&self, region: RegionId) -> Result<Vec<u8>, StoreError> {
        let p = self.split_check_peer(region)?;
        let at = p.sm.size_split_key().ok_or_else(|| {
            StoreError::Proposal(format!(
                "no size split key for region {region}: it holds no keys, one key, or only keys of one hash tag"
            ))
        })?;
        if at.as_slice() <= p.region.start_key.as_slice() || !p.region.contains(&at) {
            return Err(StoreError::Proposal(format!(
                "no size split key for region {region}: its state machine named {}, which is not strictly inside the region",
                printable(&at)
            )));
        }
        Ok(at)
    }

    /// Ends the load-sampling window of every replica here (see the module docs); the
    /// server calls it once per heartbeat.
    pub fn rotate_load_samples(&mut self) {
        for p in self.peers.values_mut() {
            p.load.rotate();
        }
    }

    /// The leader replica of `region` here, if it can be split at all.
    fn split_check_peer(&self, region: RegionId) -> Result<&crate::peer::Peer<M>, StoreError> {
        self.check_leader(region)?;
        let p = self
            .peers
            .get(&region)
            .filter(|p| p.merged_into.is_none())
            .ok_or(StoreError::RegionNotFound(region))?;
        if p.merging.is_some() {
            return Err(StoreError::Merging { region });
        }
        if p.region.is_placement() {
            return Err(StoreError::Proposal(
                "the placement group holds no keys and is never split".into(),
            ));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::Region;

    /// The region a sampler test splits: all keys.
    fn whole() -> Region {
        Region {
            id: raft::GroupId(7),
            start_key: Vec::new(),
            end_key: None,
            epoch: Default::default(),
            peers: Vec::new(),
        }
    }

    fn split_key(s: &LoadSampler, region: &Region) -> Result<Vec<u8>, String> {
        s.split_key(&region.start_key, region.end_key.as_deref())
    }

    /// A deterministic request stream: `n` keys drawn from `key(i)` for a pseudo-random `i`.
    fn offer(s: &mut LoadSampler, n: u64, mut key: impl FnMut(u64) -> Vec<u8>) {
        let mut x: u64 = 12345;
        for _ in 0..n {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s.record(&key(x >> 33));
        }
    }

    /// Requests that are batches of `width` distinct keys each, all routed by the batch's
    /// first key `b100` (as a MGET of a hot range is).
    fn offer_batches(s: &mut LoadSampler, batches: u64, width: u64, each_key: bool) {
        for _ in 0..batches {
            let keys: Vec<Vec<u8>> = (0..width)
                .map(|i| format!("b{}", 100 + i).into_bytes())
                .collect();
            let offered = |offer: &mut dyn FnMut(&[u8]) -> bool| {
                if each_key {
                    for k in &keys {
                        if !offer(k) {
                            return;
                        }
                    }
                } else {
                    // A state machine that names only the routing key (the default).
                    offer(&keys[0]);
                }
            };
            offer_request_keys(&keys[0], offered, |k| s.record(k));
        }
    }

    #[test]
    fn a_batch_of_distinct_keys_splits_inside_its_range() {
        // Sampled by their routing key alone, the batches look like one hot key.
        let mut one = LoadSampler::new(whole().id);
        offer_batches(&mut one, 200, 50, false);
        let why = split_key(&one, &whole()).unwrap_err();
        assert!(why.contains("single hot key"), "{why}");
        // Each key sampled: the median lies inside the batch's range, strictly after its
        // first key.
        let mut each = LoadSampler::new(whole().id);
        offer_batches(&mut each, 200, 50, true);
        let at = split_key(&each, &whole()).unwrap();
        assert!(
            at.as_slice() > b"b100".as_slice() && at.as_slice() <= b"b149".as_slice(),
            "{}",
            printable(&at)
        );
    }

    #[test]
    fn a_request_offers_at_most_its_first_64_keys_or_else_its_routing_key() {
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut asked = 0;
        offer_request_keys(
            b"r",
            |offer| {
                for i in 0..1_000u32 {
                    asked += 1;
                    if !offer(&i.to_be_bytes()) {
                        return;
                    }
                }
            },
            |k| got.push(k.to_vec()),
        );
        assert_eq!(got.len(), MAX_SAMPLED_KEYS_PER_REQUEST);
        assert_eq!(asked, MAX_SAMPLED_KEYS_PER_REQUEST, "asked to stop");
        assert_eq!(got[63], 63u32.to_be_bytes());
        // A request naming no key (a count) is sampled at its routing key.
        let mut got: Vec<Vec<u8>> = Vec::new();
        offer_request_keys(b"r", |_| {}, |k| got.push(k.to_vec()));
        assert_eq!(got, vec![b"r".to_vec()]);
    }

    #[test]
    fn uniform_keys_split_near_the_middle() {
        let mut s = LoadSampler::new(whole().id);
        offer(&mut s, 20_000, |r| {
            format!("k{:04}", r % 10_000).into_bytes()
        });
        let at = String::from_utf8(split_key(&s, &whole()).unwrap()).unwrap();
        let n: u32 = at[1..].parse().unwrap();
        assert!(
            (3_500..6_500).contains(&n),
            "median {at} far from the middle"
        );
    }

    #[test]
    fn the_same_requests_give_the_same_split_key() {
        let run = || {
            let mut s = LoadSampler::new(whole().id);
            offer(&mut s, 5_000, |r| format!("k{:04}", r % 1_000).into_bytes());
            split_key(&s, &whole()).unwrap()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn a_single_hot_key_is_refused() {
        let mut s = LoadSampler::new(whole().id);
        // Three requests in four for one key.
        offer(&mut s, 10_000, |r| {
            if r % 4 == 0 {
                format!("k{r}").into_bytes()
            } else {
                b"hot".to_vec()
            }
        });
        let why = split_key(&s, &whole()).unwrap_err();
        assert!(
            why.contains("single hot key") && why.contains("\"hot\""),
            "{why}"
        );
    }

    #[test]
    fn too_few_samples_are_refused() {
        let mut s = LoadSampler::new(whole().id);
        for i in 0..(MIN_LOAD_SAMPLES - 1) {
            s.record(format!("k{i:02}").as_bytes());
        }
        let why = split_key(&s, &whole()).unwrap_err();
        assert!(why.contains("only 31 request keys sampled"), "{why}");
        s.record(b"k99");
        assert_eq!(split_key(&s, &whole()).unwrap(), b"k16");
    }

    #[test]
    fn the_split_key_stays_out_of_hash_tags_and_inside_the_region() {
        let mut s = LoadSampler::new(whole().id);
        offer(&mut s, 1_000, |r| format!("{{t}}{r}").into_bytes());
        let why = split_key(&s, &whole()).unwrap_err();
        assert!(why.contains("one hash tag"), "{why}");
        // Starting at the tag, the region cannot be split at it.
        let mut at_tag = whole();
        at_tag.start_key = b"{t}".to_vec();
        let why = split_key(&s, &at_tag).unwrap_err();
        assert!(why.contains("not strictly inside"), "{why}");
        // Two tags: the boundary is a tag's start.
        let mut s = LoadSampler::new(whole().id);
        // (A third of the load on `{t0}`: the median is a `{t1}` key.)
        offer(&mut s, 1_000, |r| {
            format!("{{t{}}}{r}", u64::from(r % 3 != 0)).into_bytes()
        });
        assert_eq!(split_key(&s, &whole()).unwrap(), b"{t1}");
        // Samples outside the region (from before a split) are left out.
        let mut left = whole();
        left.end_key = Some(b"{t1}".to_vec());
        let why = split_key(&s, &left).unwrap_err();
        assert!(why.contains("one hash tag"), "{why}");
    }

    #[test]
    fn memory_is_bounded_and_windows_rotate() {
        let mut s = LoadSampler::new(whole().id);
        offer(&mut s, 100_000, |r| {
            let mut k = format!("{r:010}").into_bytes();
            k.resize(4096, b'x');
            k
        });
        assert!(s.len() <= 2 * LOAD_SAMPLES_PER_WINDOW, "{}", s.len());
        assert!(
            s.key_bytes() <= 2 * LOAD_SAMPLES_PER_WINDOW * MAX_SAMPLED_KEY_BYTES,
            "{}",
            s.key_bytes()
        );
        // Two rotations with no requests between them forget everything.
        s.rotate();
        assert_eq!(s.len(), LOAD_SAMPLES_PER_WINDOW);
        s.rotate();
        assert_eq!(s.len(), 0);
        assert!(split_key(&s, &whole()).is_err());
    }

    #[test]
    fn a_window_ends_by_itself_after_its_requests() {
        let mut s = LoadSampler::new(whole().id);
        offer(&mut s, LOAD_WINDOW_REQUESTS, |_| b"old".to_vec());
        offer(&mut s, LOAD_WINDOW_REQUESTS, |r| {
            format!("new{r}").into_bytes()
        });
        // The old window is the previous one now; one more window and it is gone.
        assert!(s.previous.iter().all(|k| k == b"old"));
        offer(&mut s, LOAD_WINDOW_REQUESTS + 1, |r| {
            format!("new{r}").into_bytes()
        });
        assert!(s
            .current
            .iter()
            .chain(&s.previous)
            .all(|k| k.starts_with(b"new")));
    }
}
