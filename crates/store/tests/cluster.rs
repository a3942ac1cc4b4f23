//! Three stores in one process, wired by an in-memory router, on real log engines in temp
//! directories: replication across many regions, epochs, group commit, restart, catch-up by
//! snapshot.

use bytes::Bytes;
use raft_log::StdFileSystem;
use std::collections::BTreeMap;
use std::sync::Arc;
use store::{
    Completion, Driver, HereBuilder, InlineWriter, Region, Reply, StateMachine, Store, StoreConfig,
    StoreError, StoreId, Ticket,
};

/// A map state machine: `P <u32 key len> key value` puts, `B (<u32 key len> key)*` puts
/// an empty value at each key; a read query is a key.
#[derive(Default, Debug, PartialEq)]
struct MapSm(BTreeMap<Vec<u8>, Vec<u8>>);

fn put(key: &[u8], value: &[u8]) -> Bytes {
    let mut v = vec![b'P'];
    v.extend_from_slice(&(key.len() as u32).to_le_bytes());
    v.extend_from_slice(key);
    v.extend_from_slice(value);
    Bytes::from(v)
}

/// A batch put of `keys` (empty values).
fn batch(keys: &[Vec<u8>]) -> Bytes {
    let mut v = vec![b'B'];
    for k in keys {
        v.extend_from_slice(&(k.len() as u32).to_le_bytes());
        v.extend_from_slice(k);
    }
    Bytes::from(v)
}

/// The keys of a `B` payload (None: not one, or malformed).
fn batch_keys(mut d: &[u8]) -> Option<Vec<&[u8]>> {
    d = d.strip_prefix(b"B")?;
    let mut keys = Vec::new();
    while !d.is_empty() {
        let n = u32::from_le_bytes(d.get(..4)?.try_into().unwrap()) as usize;
        keys.push(d.get(4..4 + n)?);
        d = &d[4 + n..];
    }
    Some(keys)
}

impl StateMachine for MapSm {
    fn payload_keys(data: &[u8], routing_key: &[u8], key: &mut dyn FnMut(&[u8]) -> bool) {
        match batch_keys(data) {
            Some(keys) => {
                for k in keys {
                    if !key(k) {
                        return;
                    }
                }
            }
            None => {
                key(routing_key);
            }
        }
    }
    fn approximate_size(&self) -> store::state_machine::ApproximateSize {
        store::state_machine::ApproximateSize {
            keys: self.0.len() as u64,
            bytes: self.0.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum(),
        }
    }
    fn size_split_key(&self) -> Option<Vec<u8>> {
        None // these tests split by hand
    }
    type Output = Bytes;
    type Query = Vec<u8>;
    type ReadOutput = Bytes;

    fn empty(_: &Region) -> Self {
        MapSm::default()
    }
    fn apply(&mut self, _index: u64, d: &[u8]) -> Bytes {
        if let Some(keys) = batch_keys(d) {
            for k in keys {
                self.0.insert(k.to_vec(), Vec::new());
            }
            return Bytes::from_static(b"OK");
        }
        if d.len() < 5 || d[0] != b'P' {
            return Bytes::from_static(b"ERR");
        }
        let n = u32::from_le_bytes(d[1..5].try_into().unwrap()) as usize;
        if d.len() < 5 + n {
            return Bytes::from_static(b"ERR");
        }
        self.0.insert(d[5..5 + n].to_vec(), d[5 + n..].to_vec());
        Bytes::from_static(b"OK")
    }
    fn split_off(&mut self, at_key: &[u8], _: &Region, _: u64) -> Self {
        MapSm(self.0.split_off(at_key))
    }
    fn absorb(&mut self, source: Self, _: &Region) {
        self.0.extend(source.0);
    }
    fn read(&self, q: &Vec<u8>, _now_ms: u64) -> Bytes {
        Bytes::from(self.0.get(q).cloned().unwrap_or_default())
    }
    fn housekeeping(&self, _now_ms: u64) -> Option<Bytes> {
        None
    }
    // A test state machine: the view is a full copy (the kv crate's is O(1)).
    type View = BTreeMap<Vec<u8>, Vec<u8>>;
    fn view(&self) -> Self::View {
        self.0.clone()
    }
    fn serialize(view: &Self::View) -> Bytes {
        let mut v = Vec::new();
        for (k, val) in view {
            v.extend_from_slice(&(k.len() as u32).to_le_bytes());
            v.extend_from_slice(k);
            v.extend_from_slice(&(val.len() as u32).to_le_bytes());
            v.extend_from_slice(val);
        }
        Bytes::from(v)
    }
    type RestoreError = String;
    fn restore(mut d: &[u8]) -> Result<Self, String> {
        let mut m = BTreeMap::new();
        let take = |d: &mut &[u8]| -> Result<Vec<u8>, String> {
            if d.len() < 4 {
                return Err("truncated".into());
            }
            let n = u32::from_le_bytes(d[..4].try_into().unwrap()) as usize;
            if d.len() < 4 + n {
                return Err("truncated".into());
            }
            let v = d[4..4 + n].to_vec();
            *d = &d[4 + n..];
            Ok(v)
        };
        while !d.is_empty() {
            let k = take(&mut d)?;
            let v = take(&mut d)?;
            m.insert(k, v);
        }
        Ok(MapSm(m))
    }
}

/// Virtual microseconds per tick of the stores' drivers.
const TICK_MICROS: u64 = 20_000;

/// Three stores in one process, each run by the one `store::Driver` (as the server and the
/// simulator run theirs), writing rounds inline and building snapshots on the test's thread.
struct Cluster {
    dirs: Vec<tempfile::TempDir>,
    stores: Vec<Option<Store<MapSm>>>,
    drivers: Vec<Driver>,
    builders: Vec<HereBuilder>,
    /// Virtual time, advanced by `tick`.
    now: u64,
    regions: Vec<Region>,
    cfg: StoreConfig,
    done: BTreeMap<Ticket, Result<Reply<MapSm>, StoreError>>,
}

impl Cluster {
    fn new(snapshot_threshold: u64) -> Cluster {
        Self::with_bytes_threshold(snapshot_threshold, u64::MAX)
    }

    fn with_bytes_threshold(snapshot_threshold: u64, bytes: u64) -> Cluster {
        Self::with_config(|cfg| {
            cfg.snapshot_threshold_entries = snapshot_threshold;
            cfg.snapshot_threshold_bytes = bytes;
        })
    }

    fn with_config(tune: impl FnOnce(&mut StoreConfig)) -> Cluster {
        let ids = [StoreId(1), StoreId(2), StoreId(3)];
        let regions = Region::presplit(&[b"g".to_vec(), b"p".to_vec()], 1, &ids);
        let mut cfg = StoreConfig::new(0);
        // These tests count ticks against a 10-tick election timeout and expect ReadIndex.
        cfg.election_tick = 10;
        cfg.read_mode = raft::ReadMode::Safe;
        cfg.balance_leaders_every_ticks = 0;
        tune(&mut cfg);
        let mut c = Cluster {
            dirs: (0..3).map(|_| tempfile::tempdir().unwrap()).collect(),
            stores: vec![None, None, None],
            drivers: (0..3)
                .map(|_| Driver::new(TICK_MICROS, TICK_MICROS))
                .collect(),
            builders: (0..3).map(|_| HereBuilder::new()).collect(),
            now: 0,
            regions,
            cfg,
            done: BTreeMap::new(),
        };
        for i in 0..3 {
            c.start(i);
        }
        // Region i+1 is led by store i+1.
        for i in 0..3 {
            let r = c.regions[i].id;
            c.stores[i].as_mut().unwrap().campaign(r);
            c.pump();
        }
        c
    }

    fn start(&mut self, i: usize) {
        let mut cfg = self.cfg.clone();
        cfg.store_id = StoreId(i as u64 + 1);
        let s = Store::open(
            self.dirs[i].path(),
            Arc::new(StdFileSystem),
            cfg,
            &self.regions,
        )
        .unwrap();
        self.stores[i] = Some(s);
        self.drivers[i] = Driver::new(TICK_MICROS, self.now + TICK_MICROS);
        self.builders[i] = HereBuilder::new();
    }

    fn stop(&mut self, i: usize) {
        self.stores[i] = None;
    }

    fn store(&mut self, i: usize) -> &mut Store<MapSm> {
        self.stores[i].as_mut().expect("store is up")
    }

    /// Runs every store's rounds (the driver's) and delivers messages until quiet (bounded).
    fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            let mut mail = Vec::new();
            let mut done = Vec::new();
            for (i, slot) in self.stores.iter_mut().enumerate() {
                let Some(s) = slot.as_mut() else {
                    continue;
                };
                moved |= s.has_ready() || self.builders[i].has_finished();
                let from = StoreId(i as u64 + 1);
                let mut deliver = |s: &mut Store<MapSm>| {
                    mail.extend(s.take_outbox().into_iter().map(|(to, m)| (from, to, m)));
                    done.extend(s.take_completions());
                };
                self.drivers[i]
                    .run_rounds(
                        s,
                        &mut InlineWriter,
                        &mut self.builders[i],
                        &mut || false,
                        &mut deliver,
                    )
                    .unwrap();
                moved |= self.builders[i].has_finished();
            }
            moved |= !done.is_empty();
            for Completion { ticket, result } in done {
                self.done.insert(ticket, result);
            }
            for (from, to, m) in mail {
                moved = true;
                if let Some(s) = self.stores[to.0 as usize - 1].as_mut() {
                    let _ = s.step(from, m);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("cluster did not quiesce");
    }

    /// `n` ticks of virtual time: each store's driver runs the ticks that came due.
    fn tick(&mut self, n: usize) {
        for _ in 0..n {
            self.now += TICK_MICROS;
            for (i, slot) in self.stores.iter_mut().enumerate() {
                if let Some(s) = slot.as_mut() {
                    self.drivers[i].catch_up(s, self.now).expect("tick");
                }
            }
            self.pump();
        }
    }

    fn write(
        &mut self,
        store: usize,
        region: usize,
        key: &[u8],
        value: &[u8],
    ) -> Result<Bytes, StoreError> {
        let r = self.regions[region].clone();
        let t = self
            .store(store)
            .propose(r.id, r.epoch, key, put(key, value))?;
        self.pump();
        match self.done.remove(&t).expect("write completed")? {
            Reply::Applied(b) => Ok(b),
            other => panic!("unexpected reply {other:?}"),
        }
    }

    fn read(&mut self, store: usize, region: usize, key: &[u8]) -> Result<Bytes, StoreError> {
        let r = self.regions[region].clone();
        let t = self.store(store).read(r.id, r.epoch, key, key.to_vec())?;
        self.pump();
        match self.done.remove(&t).expect("read completed")? {
            Reply::Read(b) => Ok(b),
            other => panic!("unexpected reply {other:?}"),
        }
    }
}

#[test]
fn many_regions_replicate_and_serve_linearizable_reads_on_every_store() {
    let mut c = Cluster::new(10_000);
    for (region, key) in [(0, &b"apple"[..]), (1, b"kiwi"), (2, b"zebra")] {
        assert_eq!(c.write(region, region, key, b"v1").unwrap().as_ref(), b"OK");
        for s in 0..3 {
            assert_eq!(
                c.read(s, region, key).unwrap().as_ref(),
                b"v1",
                "store {s} region {region}"
            );
        }
    }
}

#[test]
fn stale_epoch_wrong_key_and_follower_proposals_are_refused_with_routing_help() {
    let mut c = Cluster::new(10_000);
    let r = c.regions[0].clone();
    let mut stale = r.epoch;
    stale.version -= 1;
    match c.store(0).propose(r.id, stale, b"a", put(b"a", b"x")) {
        Err(StoreError::EpochNotMatch { current }) => assert_eq!(*current, r),
        other => panic!("expected EpochNotMatch, got {other:?}"),
    }
    assert!(matches!(
        c.store(0).propose(r.id, r.epoch, b"zzz", put(b"zzz", b"x")),
        Err(StoreError::KeyNotInRegion { .. })
    ));
    match c.store(1).propose(r.id, r.epoch, b"a", put(b"a", b"x")) {
        Err(StoreError::NotLeader {
            leader: Some(l), ..
        }) => assert_eq!(l.store, StoreId(1)),
        other => panic!("expected NotLeader with a hint, got {other:?}"),
    }
    assert!(matches!(
        c.store(0)
            .propose(raft::GroupId(99), r.epoch, b"a", put(b"a", b"x")),
        Err(StoreError::RegionNotFound(_))
    ));
    // None of the refusals changed anything.
    assert_eq!(c.read(0, 0, b"a").unwrap().as_ref(), b"");
}

#[test]
fn a_proposal_during_a_leader_transfer_is_redirected_to_the_transferee() {
    let mut c = Cluster::new(10_000);
    // Region 1 is led by store 2 (index 1); hand it to store 1 but do not deliver anything:
    // the old leader is mid-transfer and must point clients at the transferee, with an
    // error the client retries (leader balancing does this routinely under load).
    let r = c.regions[1].clone();
    c.store(1).transfer_leader(r.id, StoreId(1)).unwrap();
    match c.store(1).propose(r.id, r.epoch, b"h", put(b"h", b"x")) {
        Err(StoreError::NotLeader {
            leader: Some(l), ..
        }) => assert_eq!(l.store, StoreId(1)),
        other => panic!("expected NotLeader pointing at the transferee, got {other:?}"),
    }
    c.pump();
    c.tick(5);
    c.pump();
    assert_eq!(c.write(0, 1, b"h", b"y").unwrap().as_ref(), b"OK");
}

#[test]
fn a_commit_index_change_alone_is_written_without_an_fsync() {
    let mut c = Cluster::new(10_000);
    c.pump();
    let leader_before = c.store(0).stats;
    let follower_before = c.store(1).stats;
    assert_eq!(c.write(0, 0, b"a", b"1").unwrap().as_ref(), b"OK");
    c.pump();
    let leader = c.store(0).stats;
    let follower = c.store(1).stats;
    // The leader: one synced round for the entry, then the commit index moves (its own
    // hard state and the followers' learn it) in rounds that write without syncing.
    assert_eq!(
        leader.synced_rounds - leader_before.synced_rounds,
        1,
        "leader synced more than the entry's round: {leader_before:?} -> {leader:?}"
    );
    assert!(
        leader.write_rounds - leader_before.write_rounds >= 2,
        "the leader's commit index was not written: {leader_before:?} -> {leader:?}"
    );
    assert_eq!(
        follower.synced_rounds - follower_before.synced_rounds,
        1,
        "follower synced more than the entry's round: {follower_before:?} -> {follower:?}"
    );
    // And a restart still finds the write (the entry was synced; the commit index is
    // re-learned).
    c.stop(0);
    c.start(0);
    c.tick(30);
    assert_eq!(c.read(0, 0, b"a").unwrap().as_ref(), b"1");
}

#[test]
fn one_write_and_one_sync_per_round_for_many_regions() {
    let mut c = Cluster::new(10_000);
    // Move all three leaders to store 1 so one store writes for every region.
    for region in 1..3 {
        let id = c.regions[region].id;
        c.store(region).transfer_leader(id, StoreId(1)).unwrap();
        c.tick(5);
    }
    c.pump();
    let before = c.store(0).stats;
    let mut tickets = Vec::new();
    for (region, key) in [(0, &b"a"[..]), (1, b"h"), (2, b"q")] {
        let r = c.regions[region].clone();
        tickets.push(
            c.store(0)
                .propose(r.id, r.epoch, key, put(key, b"1"))
                .unwrap(),
        );
    }
    c.store(0).process_ready().unwrap();
    let after = c.store(0).stats;
    assert_eq!(
        after.write_rounds - before.write_rounds,
        1,
        "one engine write for the round"
    );
    assert_eq!(
        after.groups_written - before.groups_written,
        3,
        "all three regions in it"
    );
    c.pump();
    for t in tickets {
        assert_eq!(
            c.done.remove(&t).unwrap().unwrap(),
            Reply::Applied(Bytes::from_static(b"OK"))
        );
    }
}

#[test]
fn restarted_store_recovers_everything_from_its_log() {
    let mut c = Cluster::new(10_000);
    for i in 0..20u32 {
        c.write(0, 0, format!("a{i:02}").as_bytes(), b"v").unwrap();
    }
    c.stop(1);
    c.start(1);
    c.tick(5);
    let r0 = c.regions[0].id;
    let sm = c.store(1).state_machine(r0).unwrap();
    assert_eq!(sm.0.len(), 20, "replayed state after restart");
    // All stores restart: the cluster serves again with all data.
    for i in 0..3 {
        c.stop(i);
    }
    for i in 0..3 {
        c.start(i);
    }
    c.tick(60);
    let leader = (0..3)
        .find(|&i| c.write(i, 0, b"a99", b"after").is_ok())
        .expect("a leader after full restart");
    assert_eq!(c.read(leader, 0, b"a05").unwrap().as_ref(), b"v");
}

#[test]
fn store_down_long_enough_catches_up_by_snapshot() {
    let mut c = Cluster::new(20);
    c.stop(2);
    for i in 0..100u32 {
        c.write(
            0,
            0,
            format!("a{i:03}").as_bytes(),
            format!("{i}").as_bytes(),
        )
        .unwrap();
    }
    assert!(
        c.store(0).stats.snapshots_created > 0,
        "leader never snapshotted"
    );
    c.start(2);
    c.tick(20);
    assert!(
        c.store(2).stats.snapshots_installed > 0,
        "no snapshot installed"
    );
    let r0 = c.regions[0].id;
    let sm = c.store(2).state_machine(r0).unwrap();
    assert_eq!(sm.0.len(), 100);
    assert_eq!(c.read(2, 0, b"a042").unwrap().as_ref(), b"42");
}

#[test]
fn a_region_snapshots_when_its_log_passes_the_byte_threshold() {
    let mut c = Cluster::with_bytes_threshold(u64::MAX, 4096);
    let value = vec![b'v'; 200];
    for i in 0..15u32 {
        c.write(0, 0, format!("a{i:02}").as_bytes(), &value)
            .unwrap();
    }
    assert_eq!(
        c.store(0).stats.snapshots_created,
        0,
        "3 KB is under the threshold"
    );
    for i in 15..30u32 {
        c.write(0, 0, format!("a{i:02}").as_bytes(), &value)
            .unwrap();
    }
    assert!(
        c.store(0).stats.snapshots_created >= 1,
        "6 KB of writes did not trigger a snapshot"
    );
}

/// The split Ready round: a leader's appends leave before its own log write (prepare), a
/// follower's acknowledgement only after its write (finish), and a committed write is
/// answered in prepare, before the fsync of whatever that round also writes.
#[test]
fn leader_replicates_before_its_own_fsync_and_followers_ack_only_after_theirs() {
    let mut c = Cluster::new(1_000_000);
    let r = c.regions[0].clone(); // led by store 1 (index 0)
    let t = c
        .store(0)
        .propose(r.id, r.epoch, b"a", put(b"a", b"1"))
        .unwrap();
    let syncs_before = c.store(0).engine().stats().syncs;
    let pending = c.store(0).prepare_ready().unwrap();
    let early = c.store(0).take_outbox();
    assert!(
        early.iter().any(|(to, m)| to.0 != 1
            && matches!(&m.body, raft::MessageBody::Append { entries, .. } if !entries.is_empty())),
        "the leader's append must be sendable before its fsync: {early:?}"
    );
    assert_eq!(
        c.store(0).engine().stats().syncs,
        syncs_before,
        "prepare_ready must not write"
    );
    c.store(0).finish_ready(pending).unwrap();
    assert!(c.store(0).engine().stats().syncs > syncs_before);
    // A follower: its append response waits for its own write.
    for (to, m) in early {
        let _ = c.store(to.0 as usize - 1).step(StoreId(1), m);
    }
    let pending = c.store(1).prepare_ready().unwrap();
    let before_write = c.store(1).take_outbox();
    assert!(
        before_write
            .iter()
            .all(|(_, m)| m.kind_name() != "AppendResponse"),
        "a follower acknowledged entries before they were durable: {before_write:?}"
    );
    c.store(1).finish_ready(pending).unwrap();
    let after = c.store(1).take_outbox();
    assert!(after.iter().any(|(_, m)| m.kind_name() == "AppendResponse"));
    // The ack commits the entry; the leader answers in prepare, before any write of that
    // round.
    for (_, m) in after {
        let _ = c.store(0).step(StoreId(2), m);
    }
    let pending = c.store(0).prepare_ready().unwrap();
    let answered: Vec<_> = c.store(0).take_completions();
    assert!(
        answered.iter().any(|done| done.ticket == t),
        "the committed write must be answered before the round's fsync"
    );
    c.store(0).finish_ready(pending).unwrap();
    c.pump();
    assert_eq!(c.read(1, 0, b"a").unwrap(), Bytes::from_static(b"1"));
}

/// Asynchronous writes (`submit_ready` + `poll_writes`, what the server does; and
/// `queue_ready` + `persist_queued`, what the whole-cluster simulation does): a follower's
/// acknowledgement leaves only once its write is durable, rounds after it keep running
/// meanwhile, and the leader answers once a quorum has the entry durable.
#[test]
fn with_writes_in_flight_a_follower_acks_only_what_is_durable() {
    let mut c = Cluster::new(1_000_000);
    let r = c.regions[0].clone(); // led by store 1 (index 0)
    let waker = std::task::Waker::noop();
    let t = c
        .store(0)
        .propose(r.id, r.epoch, b"a", put(b"a", b"1"))
        .unwrap();
    let pending = c.store(0).prepare_ready().unwrap();
    let early = c.store(0).take_outbox();
    c.store(0).queue_ready(pending).unwrap();
    assert_eq!(c.store(0).writes_in_flight(), 1);
    for (to, m) in early {
        let _ = c.store(to.0 as usize - 1).step(StoreId(1), m);
    }
    // Follower store 2 queues its write: no acknowledgement yet, and a second round (a
    // tick's worth of nothing) does not release it either.
    let pending = c.store(1).prepare_ready().unwrap();
    c.store(1).queue_ready(pending).unwrap();
    c.store(1).tick().unwrap();
    if c.store(1).has_ready() {
        let pending = c.store(1).prepare_ready().unwrap();
        c.store(1).queue_ready(pending).unwrap();
    }
    assert_eq!(
        c.store(1).poll_writes(waker).unwrap(),
        0,
        "queued writes wait"
    );
    let held = c.store(1).take_outbox();
    assert!(
        held.iter().all(|(_, m)| m.kind_name() != "AppendResponse"),
        "acknowledged before durable: {held:?}"
    );
    let in_flight = c.store(1).writes_in_flight();
    assert!(in_flight >= 1);
    assert_eq!(c.store(1).persist_queued(usize::MAX).unwrap(), in_flight);
    let acks = c.store(1).take_outbox();
    assert!(acks.iter().any(|(_, m)| m.kind_name() == "AppendResponse"));
    // One follower's durable copy and the leader's unwritten one are not a quorum: the
    // write is not answered until the leader's own write completes.
    for (_, m) in acks {
        let _ = c.store(0).step(StoreId(2), m);
    }
    let pending = c.store(0).prepare_ready().unwrap();
    assert!(c.store(0).take_completions().iter().all(|d| d.ticket != t));
    c.store(0).queue_ready(pending).unwrap();
    // The leader's own writes complete: two durable copies, committed in the next round,
    // which goes to the real engine this time (submitted, then polled until durable).
    c.store(0).persist_queued(usize::MAX).unwrap();
    let mut answered = c.store(0).take_completions();
    for _ in 0..1000 {
        if answered.iter().any(|d| d.ticket == t) {
            break;
        }
        if c.store(0).writes_in_flight() == 0 {
            let pending = c.store(0).prepare_ready().unwrap();
            c.store(0).submit_ready(pending, waker).unwrap();
        } else {
            c.store(0).wait_writes().unwrap();
        }
        answered.extend(c.store(0).take_completions());
    }
    assert!(
        answered.iter().any(|d| d.ticket == t),
        "the write was never answered"
    );
    c.pump();
    assert_eq!(c.read(1, 0, b"a").unwrap(), Bytes::from_static(b"1"));
}

#[test]
fn snapshot_now_is_a_point_in_time_and_a_restart_recovers_from_it() {
    let mut c = Cluster::new(u64::MAX);
    let r0 = c.regions[0].id;
    for i in 0..10u32 {
        c.write(0, 0, format!("a{i:02}").as_bytes(), b"v").unwrap();
    }
    let before = c.store(0).status()[0].first_index;
    let viewed_at = c.store(0).status()[0].applied;
    assert!(c.store(0).snapshot_now(r0).unwrap());
    assert!(
        !c.store(0).snapshot_now(r0).unwrap(),
        "a second snapshot of a region while one is building"
    );
    assert_eq!(c.store(0).stats.snapshots_created, 0, "not built yet");
    // Writes between the view and the build are not in the snapshot: the log keeps them.
    for i in 10..15u32 {
        c.write(0, 0, format!("a{i:02}").as_bytes(), b"v").unwrap();
    }
    c.pump();
    assert_eq!(c.store(0).stats.snapshots_created, 1);
    let after = c.store(0).status()[0].first_index;
    assert_eq!(
        after,
        viewed_at.next(),
        "log compacted to the view's index (first index was {before})"
    );
    assert!(after > before);
    c.stop(0);
    c.start(0);
    c.tick(5);
    assert_eq!(c.store(0).state_machine(r0).unwrap().0.len(), 15);
}

/// With balancing on, regions all led by one store move to their preferred stores (region
/// i+1 to store i+1) once those are caught up, and writes keep working through the moves.
#[test]
fn leaders_move_to_their_preferred_stores() {
    let mut c = Cluster::new(1_000_000);
    // Put every region's leadership on store 1.
    for i in 1..3 {
        let r = c.regions[i].id;
        c.store(i).transfer_leader(r, StoreId(1)).unwrap();
        c.pump();
    }
    c.tick(5);
    let leaders = |c: &mut Cluster| -> Vec<u64> {
        let st = c.store(0).status();
        st.iter().map(|s| s.leader.map_or(0, |l| l.0)).collect()
    };
    assert_eq!(leaders(&mut c), vec![1, 1, 1]);
    assert_eq!(
        c.store(0).balance_leaders(),
        2,
        "regions 2 and 3 should move"
    );
    c.pump();
    c.tick(30);
    assert_eq!(leaders(&mut c), vec![1, 2, 3]);
    // Balanced already: nothing to do, and the cluster still serves.
    for i in 0..3 {
        assert_eq!(c.store(i).balance_leaders(), 0);
    }
    c.write(1, 1, b"h", b"x").unwrap();
    assert_eq!(c.read(2, 1, b"h").unwrap(), Bytes::from_static(b"x"));
}

/// Leaders are balanced by the store's ticks only for a new cluster's first
/// `balance_leaders_for_ticks` (bootstrap), never later and never after a restart: a leader
/// moved by hand afterwards stays where it was put (issue 17: nothing fights
/// `transfer-leader`; placement balances leaders later).
#[test]
fn leaders_are_balanced_only_in_a_new_clusters_first_ticks() {
    let leaders = |c: &mut Cluster| -> Vec<u64> {
        let st = c.store(0).status();
        st.iter().map(|s| s.leader.map_or(0, |l| l.0)).collect()
    };
    let move_all_to_store_1 = |c: &mut Cluster| {
        for i in 1..3 {
            let r = c.regions[i].id;
            c.store(i).transfer_leader(r, StoreId(1)).unwrap();
            c.pump();
        }
        c.tick(3);
    };
    let mut c = Cluster::with_config(|cfg| {
        cfg.balance_leaders_every_ticks = 2;
        cfg.balance_leaders_for_ticks = 40;
    });
    // Inside the window: moved back by the stores themselves.
    move_all_to_store_1(&mut c);
    c.tick(20);
    assert_eq!(leaders(&mut c), vec![1, 2, 3], "balanced inside the window");
    // Past it: a hand-made layout stays.
    c.tick(40);
    move_all_to_store_1(&mut c);
    assert_eq!(leaders(&mut c), vec![1, 1, 1]);
    c.tick(60);
    assert_eq!(leaders(&mut c), vec![1, 1, 1], "balanced after the window");
    // A restarted store did not bootstrap: its first ticks balance nothing either.
    for i in 0..3 {
        c.stop(i);
        c.start(i);
    }
    for i in 0..3 {
        let r = c.regions[i].id;
        c.store(0).campaign(r);
        c.pump();
    }
    assert_eq!(leaders(&mut c), vec![1, 1, 1]);
    c.tick(20);
    assert_eq!(leaders(&mut c), vec![1, 1, 1], "balanced after a restart");
}

/// A region whose state is large next to its log's growth waits with its snapshot: the
/// entry threshold alone would serialize the whole state again every few entries. Small
/// writes after a large state wait until their bytes reach a quarter of the last snapshot,
/// or until the log is ten times the entry threshold long.
#[test]
fn a_large_region_snapshots_only_when_its_log_is_worth_it() {
    let mut c = Cluster::new(10);
    let big = vec![b'b'; 4096];
    for i in 0..20u32 {
        c.write(0, 0, format!("a{i:02}").as_bytes(), &big).unwrap();
    }
    let after_big = c.store(0).stats.snapshots_created;
    assert!(
        after_big >= 1,
        "20 entries of 4 KiB did not trigger a snapshot at the 10-entry threshold"
    );
    // ~80 KiB of state; 50 small writes add ~1 KiB of log: not worth serializing 80 KiB.
    for i in 0..50u32 {
        c.write(0, 0, format!("b{i:02}").as_bytes(), b"s").unwrap();
    }
    assert_eq!(
        c.store(0).stats.snapshots_created,
        after_big,
        "a small log next to a large state was snapshotted"
    );
    // Past ten times the entry threshold the log is compacted whatever the state.
    for i in 50..120u32 {
        c.write(0, 0, format!("b{i:03}").as_bytes(), b"s").unwrap();
    }
    assert!(
        c.store(0).stats.snapshots_created > after_big,
        "a log of {} entries past the last snapshot was never compacted",
        120
    );
}

/// The log stays within its budget (`purge_rewrite_threshold_segments` segments, plus the
/// few a purge interval adds) whatever the regions do: region 1 busy, region 3 idle after
/// three small writes (copied forward by the purge), region 2 with a long log written once
/// and its own snapshot thresholds never reached (snapshotted because the purge names it).
/// Without `Store::reclaim_log` in the tick, or with the named regions ignored, the segment
/// count grows with the writes.
#[test]
fn the_log_stays_within_its_budget_whatever_the_regions_do() {
    const SEGMENT: u64 = 16 << 10;
    const THRESHOLD: usize = 4;
    let mut c = Cluster::with_config(|cfg| {
        cfg.snapshot_threshold_entries = u64::MAX;
        cfg.snapshot_threshold_bytes = u64::MAX;
        cfg.engine.segment_size_bytes = SEGMENT;
        cfg.engine.purge_rewrite_threshold_segments = THRESHOLD;
        cfg.engine.purge_rewrite_max_group_bytes = 4 << 10;
        cfg.log_purge_every_ticks = 1;
    });
    for i in 0..3u32 {
        c.write(2, 2, format!("q{i}").as_bytes(), b"idle").unwrap();
    }
    let slow = vec![b's'; 1024];
    for i in 0..40u32 {
        c.write(1, 1, format!("h{i:02}").as_bytes(), &slow).unwrap();
    }
    let busy = vec![b'b'; 1024];
    let mut most_segments = 0;
    for i in 0..1_000u32 {
        c.write(0, 0, format!("a{:03}", i % 100).as_bytes(), &busy)
            .unwrap();
        if i % 8 == 7 {
            c.tick(1);
            for s in 0..3 {
                most_segments = most_segments.max(c.store(s).engine().stats().segment_count);
            }
        }
    }
    // ~1 MiB written per store, 64 segments' worth.
    assert!(
        most_segments <= THRESHOLD + 2,
        "a store held {most_segments} segments of {SEGMENT} bytes (budget {THRESHOLD}): {:?}",
        c.store(0).stats
    );
    for s in 0..3 {
        let stats = c.store(s).stats;
        assert!(stats.log_segments_deleted >= 50, "store {s}: {stats:?}");
        assert!(stats.log_groups_rewritten >= 1, "store {s}: {stats:?}");
        assert!(
            stats.snapshots_for_log_space >= 1,
            "store {s}: region 2 was never compacted: {stats:?}"
        );
    }
    // Nothing live was lost: every region's data after a restart from the reclaimed log.
    c.stop(0);
    c.start(0);
    c.tick(5);
    let sm = |c: &mut Cluster, r: usize| {
        let id = c.regions[r].id;
        c.store(0).state_machine(id).unwrap().0.len()
    };
    assert_eq!((sm(&mut c, 0), sm(&mut c, 1), sm(&mut c, 2)), (100, 40, 3));
    assert_eq!(c.read(0, 2, b"q2").unwrap().as_ref(), b"idle");
}

impl Cluster {
    /// Splits region `region` (index into `regions`) at `key` on store `store`, waits for it,
    /// and records the two halves: the left keeps its index, the right is appended.
    fn split(&mut self, store: usize, region: usize, key: &[u8]) -> Result<(), StoreError> {
        let r = self.regions[region].clone();
        let t = self.store(store).propose_split(r.id, r.epoch, key)?;
        self.pump();
        match self.done.remove(&t).expect("split completed")? {
            Reply::Empty => {}
            other => panic!("unexpected reply {other:?}"),
        }
        let map = self.store(store).live_regions().load();
        let left = map.get(r.id).expect("left half in the map").clone();
        let right = map
            .region_for_key(key)
            .expect("right half in the map")
            .clone();
        assert_ne!(left.id, right.id);
        self.regions[region] = left;
        self.regions.push(right);
        Ok(())
    }

    fn regions_on(&mut self, store: usize) -> Vec<Region> {
        let mut rs = self.store(store).regions();
        rs.sort_by(|a, b| a.start_key.cmp(&b.start_key));
        rs
    }
}

/// A split goes through the region's log: every store ends with both halves (same ids,
/// ranges and epochs), each half holds exactly its keys, the new region elects a leader (the
/// old leader's store campaigns at once) and serves, and both survive a restart of every
/// store. A request routed with the old epoch is refused with the current region.
#[test]
fn a_split_divides_the_region_on_every_store_and_survives_restarts() {
    let mut c = Cluster::new(10_000);
    for k in ["a", "b", "c", "d", "e", "f"] {
        c.write(0, 0, k.as_bytes(), b"v").unwrap();
    }
    let old = c.regions[0].clone();
    c.split(0, 0, b"c").unwrap();
    let (left, right) = (c.regions[0].clone(), c.regions[3].clone());
    assert_eq!(left.end_key.as_deref(), Some(&b"c"[..]));
    assert_eq!(right.start_key, b"c".to_vec());
    assert_eq!(right.end_key, old.end_key);
    assert_eq!(left.epoch.version, old.epoch.version + 1);
    assert_eq!(right.epoch.version, old.epoch.version + 1);
    assert!(
        right.id.0 >= 1 << store::ID_COUNTER_BITS,
        "allocated id {}",
        right.id
    );
    let stores: Vec<StoreId> = right.peers.iter().map(|p| p.store).collect();
    assert_eq!(stores, vec![StoreId(1), StoreId(2), StoreId(3)]);
    c.tick(3);
    for s in 0..3 {
        let rs = c.regions_on(s);
        assert_eq!(rs.len(), 4, "store {s}: {rs:?}");
        assert!(
            rs.contains(&left) && rs.contains(&right),
            "store {s}: {rs:?}"
        );
        let l = c.store(s).state_machine(left.id).unwrap();
        assert_eq!(
            l.0.keys().cloned().collect::<Vec<_>>(),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        let r = c.store(s).state_machine(right.id).unwrap();
        assert_eq!(r.0.len(), 4, "store {s}: the right half holds c..f");
    }
    // The old epoch is refused, with the current region to re-route by.
    match c.store(0).propose(old.id, old.epoch, b"a", put(b"a", b"x")) {
        Err(StoreError::EpochNotMatch { current }) => assert_eq!(*current, left),
        other => panic!("expected EpochNotMatch, got {other:?}"),
    }
    // The new region has a leader (store 1's replica campaigned) and serves writes and reads.
    assert_eq!(c.write(0, 3, b"d", b"v2").unwrap().as_ref(), b"OK");
    for s in 0..3 {
        assert_eq!(c.read(s, 3, b"d").unwrap().as_ref(), b"v2");
    }
    // A split key outside the region, or at its start, changes nothing.
    let left_now = c.regions[0].clone();
    assert!(matches!(
        c.store(0).propose_split(left_now.id, left_now.epoch, b"x"),
        Err(StoreError::KeyNotInRegion { .. })
    ));
    assert!(matches!(
        c.store(0).propose_split(left_now.id, left_now.epoch, b""),
        Err(StoreError::KeyNotInRegion { .. })
    ));
    for i in 0..3 {
        c.stop(i);
    }
    for i in 0..3 {
        c.start(i);
    }
    c.tick(60);
    for s in 0..3 {
        let rs = c.regions_on(s);
        assert!(
            rs.contains(&left) && rs.contains(&right),
            "store {s} after restart: {rs:?}"
        );
    }
    let leader = (0..3)
        .find(|&i| c.write(i, 3, b"e", b"after").is_ok())
        .expect("the new region has a leader after a full restart");
    assert_eq!(c.read(leader, 3, b"d").unwrap().as_ref(), b"v2");
    assert_eq!(c.read(leader, 3, b"f").unwrap().as_ref(), b"v");
}

/// A write routed with the region's epoch before a split and committed after it is refused
/// at apply (its version no longer matches), on every replica alike: nothing lands.
#[test]
fn a_write_proposed_before_a_split_and_applied_after_it_is_refused() {
    let mut c = Cluster::new(10_000);
    let r = c.regions[0].clone();
    let split = c.store(0).propose_split(r.id, r.epoch, b"c").unwrap();
    let write = c
        .store(0)
        .propose(r.id, r.epoch, b"a", put(b"a", b"late"))
        .unwrap();
    c.pump();
    assert_eq!(c.done.remove(&split).unwrap().unwrap(), Reply::Empty);
    match c.done.remove(&write).unwrap() {
        Err(StoreError::EpochNotMatch { current }) => {
            assert_eq!(current.end_key.as_deref(), Some(&b"c"[..]))
        }
        other => panic!("expected EpochNotMatch at apply, got {other:?}"),
    }
    for s in 0..3 {
        assert!(
            c.store(s).state_machine(r.id).unwrap().0.is_empty(),
            "store {s}"
        );
    }
}

/// A store that was down during a split, and whose old region's log was compacted past the
/// split meanwhile, catches up by snapshot: the old region's snapshot narrows it, and the new
/// region's leader creates the new replica there by its first message and fills it with a
/// snapshot. Every store ends with the same regions and data.
#[test]
fn a_store_down_during_a_split_gets_the_new_region_from_its_leader() {
    let mut c = Cluster::new(20);
    for k in ["a", "d"] {
        c.write(0, 0, k.as_bytes(), b"v").unwrap();
    }
    c.stop(2);
    c.split(0, 0, b"c").unwrap();
    c.tick(3);
    // Enough writes on both halves that their logs are compacted past the split.
    for i in 0..60u32 {
        c.write(0, 0, format!("a{i:02}").as_bytes(), b"l").unwrap();
        c.tick(1);
        (0..2)
            .find(|&s| c.write(s, 3, format!("d{i:02}").as_bytes(), b"r").is_ok())
            .expect("the new region has a leader");
    }
    c.start(2);
    c.tick(60);
    let (left, right) = (c.regions[0].id, c.regions[3].id);
    for s in 0..3 {
        let rs = c.regions_on(s);
        assert!(
            rs.contains(&c.regions[0]) && rs.contains(&c.regions[3]),
            "store {s}: {rs:?}"
        );
    }
    let want_left = c.store(0).state_machine(left).unwrap().0.clone();
    let want_right = c.store(0).state_machine(right).unwrap().0.clone();
    assert_eq!(want_left.len(), 61);
    assert_eq!(want_right.len(), 61);
    assert_eq!(c.store(2).state_machine(left).unwrap().0, want_left);
    assert_eq!(c.store(2).state_machine(right).unwrap().0, want_right);
    // The old region's log no longer held the split: store 3 never applied it; the new
    // region's leader created the replica there.
    let stats = c.store(2).stats;
    assert_eq!(stats.splits_applied, 0, "{stats:?}");
    assert_eq!(stats.peers_created_by_message, 1, "{stats:?}");
    assert!(stats.snapshots_installed >= 2, "{stats:?}");
}

impl Cluster {
    /// Proposes `change` to region `region` on store `store` and waits; updates `regions`.
    fn change(
        &mut self,
        store: usize,
        region: usize,
        change: store::ReplicaChange,
    ) -> Result<(), StoreError> {
        let r = self.regions[region].clone();
        let t = self
            .store(store)
            .propose_replica_change(r.id, r.epoch, change)?;
        self.pump();
        match self.done.remove(&t).expect("change completed")? {
            Reply::Empty => {}
            other => panic!("unexpected reply {other:?}"),
        }
        self.regions[region] = self
            .store(store)
            .live_regions()
            .load()
            .get(r.id)
            .expect("still here")
            .clone();
        Ok(())
    }
}

/// A replica removed from a store is destroyed there (its log group and snapshot files go, a
/// tombstone keeps a late message from bringing it back); added again it comes back as a new
/// peer that its leader's message creates and a snapshot fills, first as a learner, then
/// promoted once caught up. The descriptor follows every change on every replica.
#[test]
fn a_replica_removed_and_added_back_moves_its_data_and_leaves_nothing_behind() {
    use store::ReplicaChange::{AddLearner, Promote, Remove};
    let mut c = Cluster::new(20);
    for i in 0..30u32 {
        c.write(0, 0, format!("a{i:02}").as_bytes(), b"v").unwrap();
    }
    let before = c.regions[0].clone();
    let old_peer = before.peer_on(StoreId(3)).unwrap().id;
    let snap_dir = c.dirs[2].path().join("snap");
    let group_files = |dir: &std::path::Path, id: u64| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name().into_string().unwrap();
                name.starts_with(&format!("{id:016x}")) || name.starts_with(&format!("{id}-"))
            })
            .count()
    };
    c.change(0, 0, Remove(StoreId(3))).unwrap();
    c.tick(3);
    let after = c.regions[0].clone();
    assert_eq!(after.peers.len(), 2, "{after:?}");
    assert_eq!(after.epoch.conf_version, before.epoch.conf_version + 1);
    for s in 0..2 {
        assert!(
            c.regions_on(s).contains(&after),
            "store {s}: {:?}",
            c.regions_on(s)
        );
    }
    // Gone from store 3: no replica, no log group, no snapshot file.
    assert!(c.regions_on(2).iter().all(|r| r.id != before.id));
    assert!(c.store(2).state_machine(before.id).is_none());
    assert!(!c
        .store(2)
        .engine()
        .groups()
        .contains(&raft_log::GroupId(before.id.0)));
    assert_eq!(group_files(&snap_dir, before.id.0), 0);
    assert_eq!(c.store(2).stats.peers_destroyed, 1);
    // A late message for the removed peer is dropped, not a new replica.
    let late = raft::Message {
        group: before.id,
        from: before.peer_on(StoreId(1)).unwrap().id,
        to: old_peer,
        term: raft::Term(1),
        body: raft::MessageBody::Heartbeat {
            commit: raft::LogIndex(0),
            read_context: None,
            lease_tick: 0,
        },
    };
    assert!(c.store(2).step(StoreId(1), late.clone()).is_err());
    assert_eq!(c.store(2).stats.messages_to_tombstones, 1);
    assert!(c.store(2).state_machine(before.id).is_none());
    // The region still serves with two replicas.
    c.write(0, 0, b"b", b"two").unwrap();
    // Back on store 3 as a new peer: a learner filled by a snapshot, then a voter.
    c.change(0, 0, AddLearner(StoreId(3))).unwrap();
    let learner = c.regions[0].peer_on(StoreId(3)).expect("added");
    assert!(learner.learner);
    assert_ne!(learner.id, old_peer);
    c.tick(20);
    let (stats, leader) = (
        c.store(2).stats,
        c.store(0)
            .status()
            .into_iter()
            .find(|st| st.region.id == before.id),
    );
    assert_eq!(
        c.store(2).state_machine(before.id).map(|m| m.0.len()),
        Some(31),
        "the learner caught up: {stats:?} {leader:?}"
    );
    assert_eq!(c.store(2).stats.peers_created_by_message, 1);
    let mut promoted = false;
    for _ in 0..20 {
        match c.change(0, 0, Promote(StoreId(3))) {
            Ok(()) => {
                promoted = true;
                break;
            }
            Err(StoreError::Proposal(why)) if why.contains("not caught up") => c.tick(1),
            Err(e) => panic!("promote: {e}"),
        }
    }
    assert!(promoted, "the learner was never caught up");
    let r = c.regions[0].clone();
    assert_eq!(r.peers.len(), 3);
    assert!(r.peers.iter().all(|p| !p.learner), "{r:?}");
    assert_eq!(r.epoch.conf_version, before.epoch.conf_version + 3);
    c.tick(3);
    for s in 0..3 {
        assert!(
            c.regions_on(s).contains(&r),
            "store {s}: {:?}",
            c.regions_on(s)
        );
    }
    // Store 3 now votes: with store 2 down, stores 1 and 3 still commit.
    c.stop(1);
    c.write(0, 0, b"c", b"with-3").unwrap();
    // The tombstone survives a restart; the new peer too.
    c.stop(2);
    c.start(2);
    c.start(1);
    c.tick(30);
    assert!(c.store(2).step(StoreId(1), late).is_err());
    assert_eq!(c.store(2).stats.messages_to_tombstones, 1);
    assert_eq!(
        c.store(2).state_machine(before.id).map(|m| m.0.len()),
        Some(32)
    );
    // Bad changes are refused and change nothing.
    assert!(matches!(
        c.store(0)
            .propose_replica_change(r.id, r.epoch, AddLearner(StoreId(2))),
        Err(StoreError::Proposal(_))
    ));
    assert!(matches!(
        c.store(0)
            .propose_replica_change(r.id, r.epoch, Remove(StoreId(9))),
        Err(StoreError::Proposal(_))
    ));
    // A leader does not remove its own replica (it would destroy it on applying the change,
    // maybe before a follower learned the change committed): transfer first.
    let own = c
        .store(0)
        .propose_replica_change(r.id, r.epoch, Remove(StoreId(1)));
    assert!(
        matches!(&own, Err(StoreError::Proposal(why)) if why.contains("transfer the leadership")),
        "{own:?}"
    );
}

/// A replica of a split-off region removed from a store stays removed when that store
/// restarts and its old region replays the split (the tombstone stops the re-creation; a
/// real-process test found it coming back).
#[test]
fn a_removed_split_replica_does_not_come_back_when_the_split_replays() {
    let mut c = Cluster::new(10_000);
    c.write(0, 0, b"d", b"v").unwrap();
    c.split(0, 0, b"c").unwrap();
    c.tick(3);
    let right = c.regions[3].clone();
    let leader = (0..3)
        .find(|&s| {
            c.store(s)
                .status()
                .iter()
                .any(|st| st.region.id == right.id && st.role == raft::Role::Leader)
        })
        .expect("the new region has a leader");
    c.change(leader, 3, store::ReplicaChange::Remove(StoreId(3)))
        .unwrap();
    c.tick(3);
    assert!(c.store(2).state_machine(right.id).is_none());
    c.stop(2);
    c.start(2);
    c.tick(30);
    assert!(
        c.regions_on(2).iter().all(|r| r.id != right.id),
        "{:?}",
        c.regions_on(2)
    );
    assert!(
        c.store(2).stats.split_peers_existing >= 1,
        "{:?}",
        c.store(2).stats
    );
}

impl Cluster {
    /// Proposes merging region `source` into `target` (indexes into `regions`) on store
    /// `store` and waits for the freeze to apply there.
    fn prepare_merge(
        &mut self,
        store: usize,
        source: usize,
        target: usize,
    ) -> Result<(), StoreError> {
        let (s, t) = (self.regions[source].clone(), self.regions[target].id);
        let ticket = self.store(store).propose_merge(s.id, s.epoch, t)?;
        self.pump();
        match self.done.remove(&ticket).expect("prepare completed")? {
            Reply::Empty => Ok(()),
            other => panic!("unexpected reply {other:?}"),
        }
    }

    /// Ticks until every store up holds exactly `want` regions (bounded).
    fn tick_until_regions(&mut self, want: usize) {
        for _ in 0..300 {
            let up: Vec<usize> = (0..3).filter(|&i| self.stores[i].is_some()).collect();
            let counts: Vec<usize> = up.iter().map(|&i| self.regions_on(i).len()).collect();
            if counts.iter().all(|&n| n == want) {
                return;
            }
            self.tick(1);
        }
        let up: Vec<usize> = (0..3).filter(|&i| self.stores[i].is_some()).collect();
        let all: Vec<Vec<Region>> = up.iter().map(|&i| self.regions_on(i)).collect();
        panic!("stores did not reach {want} regions: {all:#?}");
    }
}

/// A merge: the source (led by another store than the target) freezes, its leadership moves
/// to the target leader's store, the target absorbs it on every store, and the source's
/// replicas are destroyed once the target's snapshot covers the merge. Every key written to
/// either region is in the merged one on every store, the source's old epoch is refused,
/// and all of it survives a restart of every store.
#[test]
fn a_merge_moves_every_key_into_the_target_and_the_source_goes() {
    let mut c = Cluster::new(10_000);
    for k in ["a", "b"] {
        c.write(0, 0, k.as_bytes(), b"left").unwrap();
    }
    for k in ["h", "i", "o"] {
        c.write(1, 1, k.as_bytes(), b"right").unwrap();
    }
    let (target, source) = (c.regions[0].clone(), c.regions[1].clone());
    // Region 2 is led by store 2, region 1 by store 1.
    c.prepare_merge(1, 1, 0).unwrap();
    // Frozen: the source takes no writes (with its new epoch either).
    let frozen = c
        .store(1)
        .regions()
        .into_iter()
        .find(|r| r.id == source.id)
        .unwrap();
    assert_eq!(frozen.epoch.version, source.epoch.version + 1);
    assert!(matches!(
        c.store(1)
            .propose(frozen.id, frozen.epoch, b"h", put(b"h", b"x")),
        Err(StoreError::Merging { .. })
    ));
    c.tick_until_regions(2);
    c.tick(5);
    let merged = c
        .store(0)
        .live_regions()
        .load()
        .get(target.id)
        .unwrap()
        .clone();
    assert_eq!(merged.start_key, target.start_key);
    assert_eq!(merged.end_key, source.end_key);
    assert!(merged.epoch.version > source.epoch.version + 1);
    let want: Vec<Vec<u8>> = ["a", "b", "h", "i", "o"]
        .iter()
        .map(|k| k.as_bytes().to_vec())
        .collect();
    for s in 0..3 {
        assert!(
            c.regions_on(s).contains(&merged),
            "store {s}: {:?}",
            c.regions_on(s)
        );
        let keys: Vec<Vec<u8>> = c
            .store(s)
            .state_machine(target.id)
            .unwrap()
            .0
            .keys()
            .cloned()
            .collect();
        assert_eq!(keys, want, "store {s}");
        let st = c.store(s).stats;
        assert_eq!(st.merges_applied, 1, "store {s}: {st:?}");
        assert_eq!(st.merge_sources_destroyed, 1, "store {s}: {st:?}");
        assert!(c.store(s).state_machine(source.id).is_none(), "store {s}");
        assert!(
            !c.store(s)
                .engine()
                .groups()
                .contains(&raft_log::GroupId(source.id.0)),
            "store {s}: the source's log group is gone"
        );
    }
    // The source's epochs are refused; the merged region serves the whole range.
    assert!(c
        .store(0)
        .propose(source.id, frozen.epoch, b"h", put(b"h", b"x"))
        .is_err());
    c.regions[0] = merged.clone();
    assert_eq!(c.write(0, 0, b"h", b"merged").unwrap().as_ref(), b"OK");
    for s in 0..3 {
        assert_eq!(c.read(s, 0, b"i").unwrap().as_ref(), b"right");
    }
    for i in 0..3 {
        c.stop(i);
    }
    for i in 0..3 {
        c.start(i);
    }
    c.tick(60);
    for s in 0..3 {
        assert!(c.regions_on(s).contains(&merged), "store {s} after restart");
        assert_eq!(c.regions_on(s).len(), 2, "store {s} after restart");
    }
    let leader = (0..3)
        .find(|&i| c.write(i, 0, b"j", b"after").is_ok())
        .expect("the merged region has a leader after a full restart");
    assert_eq!(c.read(leader, 0, b"h").unwrap().as_ref(), b"merged");
    assert_eq!(c.read(leader, 0, b"o").unwrap().as_ref(), b"right");
}

/// A merge prepared while a store is down waits (the source stays frozen: its writes are
/// refused as retryable) until that store holds the source's log; then it completes on every
/// store, the late one included.
#[test]
fn a_merge_waits_for_a_store_that_is_down_and_then_completes_there() {
    let mut c = Cluster::new(10_000);
    c.write(1, 1, b"h", b"v").unwrap();
    c.write(0, 0, b"a", b"v").unwrap();
    c.stop(2);
    c.prepare_merge(1, 1, 0).unwrap();
    c.tick(40);
    assert_eq!(c.regions_on(0).len(), 3, "no commit without store 3's copy");
    assert_eq!(c.store(0).stats.merges_applied, 0);
    c.start(2);
    c.tick_until_regions(2);
    c.tick(5);
    let target = c.regions[0].id;
    for s in 0..3 {
        let keys: Vec<Vec<u8>> = c
            .store(s)
            .state_machine(target)
            .unwrap()
            .0
            .keys()
            .cloned()
            .collect();
        assert_eq!(keys, vec![b"a".to_vec(), b"h".to_vec()], "store {s}");
    }
}

/// A merge whose target changed after the prepare (here: split) can never commit: the
/// source's leader rolls it back, and the source serves again with a newer epoch and all its
/// keys. Merging non-adjacent regions, or a region with itself, is refused up front.
#[test]
fn a_merge_whose_target_changed_rolls_back() {
    let mut c = Cluster::new(10_000);
    c.write(1, 1, b"h", b"v").unwrap();
    let (s, t) = (c.regions[1].clone(), c.regions[2].clone());
    let far = c.regions[0].clone();
    assert!(matches!(
        c.store(1).propose_merge(far.id, far.epoch, t.id),
        Err(StoreError::RegionNotFound(_) | StoreError::Proposal(_))
    ));
    assert!(matches!(
        c.store(1).propose_merge(s.id, s.epoch, s.id),
        Err(StoreError::Proposal(_))
    ));
    // Source region 2 (store 2 leads) into region 1 (store 1 leads); before any tick (the
    // commit is driven by ticks) the target splits.
    c.prepare_merge(1, 1, 0).unwrap();
    c.split(0, 0, b"c").unwrap();
    c.tick(60);
    let st = c.store(1).stats;
    assert!(st.merge_rollbacks_proposed >= 1, "{st:?}");
    let now = c
        .store(1)
        .regions()
        .into_iter()
        .find(|r| r.id == s.id)
        .unwrap();
    assert_eq!(
        now.epoch.version,
        s.epoch.version + 2,
        "frozen, then unfrozen"
    );
    c.regions[1] = now;
    for s in 0..3 {
        assert_eq!(c.store(s).stats.merges_applied, 0);
        assert_eq!(c.regions_on(s).len(), 4);
    }
    let leader = (0..3)
        .find(|&i| c.write(i, 1, b"i", b"w").is_ok())
        .expect("serves again");
    assert_eq!(c.read(leader, 1, b"h").unwrap().as_ref(), b"v");
}

/// A replica added to the merged region right after the merge starts from a snapshot that
/// holds the merge (never an older one: its store has no source replica to replay the merge
/// with) and ends with every key of both regions.
#[test]
fn a_replica_added_to_the_target_after_a_merge_starts_from_a_snapshot_that_holds_it() {
    use store::ReplicaChange::{AddLearner, Promote, Remove};
    let mut c = Cluster::new(10_000);
    c.write(0, 0, b"a", b"left").unwrap();
    c.write(1, 1, b"h", b"right").unwrap();
    let source = c.regions[1].id;
    c.prepare_merge(1, 1, 0).unwrap();
    c.tick_until_regions(2);
    let target = c.regions[0].id;
    c.regions[0] = c
        .store(0)
        .live_regions()
        .load()
        .get(target)
        .unwrap()
        .clone();
    c.change(0, 0, Remove(StoreId(3))).unwrap();
    c.tick(3);
    assert!(
        c.store(2).state_machine(target).is_none(),
        "store 3 left the region"
    );
    assert!(
        c.store(2).state_machine(source).is_none(),
        "and its source replica went with it"
    );
    c.change(0, 0, AddLearner(StoreId(3))).unwrap();
    c.tick(20);
    c.change(0, 0, Promote(StoreId(3))).unwrap();
    c.tick(5);
    let keys: Vec<Vec<u8>> = c
        .store(2)
        .state_machine(target)
        .expect("store 3 holds the merged region")
        .0
        .keys()
        .cloned()
        .collect();
    assert_eq!(keys, vec![b"a".to_vec(), b"h".to_vec()]);
    assert_eq!(c.store(2).stats.merge_waits_without_source, 0);
    assert!(c.store(2).state_machine(source).is_none());
}

#[test]
fn each_replica_counts_the_reads_and_writes_it_took_and_not_the_refused_ones() {
    let mut c = Cluster::new(10_000);
    let r = c.regions[0].clone();
    let counts = |c: &mut Cluster, s: usize| {
        let st = c
            .store(s)
            .status()
            .into_iter()
            .find(|st| st.region.id == r.id)
            .expect("every store has a replica of region 1");
        (st.reads, st.writes)
    };
    // Store 1 (index 0) leads region 1: three writes and two reads there.
    for i in 0..3u32 {
        c.write(0, 0, format!("a{i}").as_bytes(), b"v").unwrap();
    }
    c.read(0, 0, b"a0").unwrap();
    c.read(0, 0, b"a1").unwrap();
    // A follower's read counts on the follower; a stale read on the replica serving it.
    c.read(1, 0, b"a2").unwrap();
    c.store(2)
        .stale_read(r.id, r.epoch, b"a0", &b"a0".to_vec())
        .unwrap();
    // Refusals: a stale epoch, a follower's proposal, a key outside the region.
    let mut stale = r.epoch;
    stale.version -= 1;
    assert!(c
        .store(0)
        .propose(r.id, stale, b"a", put(b"a", b"x"))
        .is_err());
    assert!(c
        .store(1)
        .propose(r.id, r.epoch, b"a", put(b"a", b"x"))
        .is_err());
    assert!(c
        .store(0)
        .read(r.id, r.epoch, b"zzz", b"zzz".to_vec())
        .is_err());
    assert!(c
        .store(2)
        .stale_read(r.id, stale, b"a0", &b"a0".to_vec())
        .is_err());
    c.pump();
    assert_eq!(counts(&mut c, 0), (2, 3), "the leader's reads and writes");
    assert_eq!(counts(&mut c, 1), (1, 0), "a follower's read");
    assert_eq!(counts(&mut c, 2), (1, 0), "a stale read");
    // Another region's replica counted nothing.
    let other = c.regions[1].id;
    let st = c.store(0).status();
    let o = st.iter().find(|s| s.region.id == other).unwrap();
    assert_eq!((o.reads, o.writes), (0, 0));
    // A restart starts the counters again (the heartbeat's rate saturates at 0).
    c.stop(0);
    c.start(0);
    assert_eq!(counts(&mut c, 0), (0, 0));
}

/// A replica removed while its store was down never hears of it (nobody messages a removed
/// peer). Placement's descriptor of the region as it is now lets its store destroy it, as
/// its removal would have: gone from the store, its log group and the region map, and it
/// stays gone across a restart and a late message. Members, replicas as new as the
/// descriptor, and other regions' replicas are never destroyed.
#[test]
fn a_replica_removed_while_its_store_was_away_goes_when_placement_names_the_region() {
    use store::ReplicaChange::Remove;
    let mut c = Cluster::new(10_000);
    for i in 0..10u32 {
        c.write(0, 0, format!("a{i}").as_bytes(), b"v").unwrap();
    }
    c.tick(3);
    let before = c.regions[0].clone();
    let old_peer = before.peer_on(StoreId(3)).unwrap().id;
    // Store 3 is away while its replica is removed.
    c.stop(2);
    c.change(0, 0, Remove(StoreId(3))).unwrap();
    let current = c.regions[0].clone();
    assert!(current.peer_on(StoreId(3)).is_none(), "{current:?}");
    assert!(current.epoch.conf_version > before.epoch.conf_version);
    c.start(2);
    c.tick(30);
    // Nobody told it: it still holds the region at its old configuration.
    assert_eq!(
        c.store(2).region(before.id).map(|r| r.epoch),
        Some(before.epoch)
    );
    // Refused, changing nothing: a descriptor that still names this store, one no newer
    // than the replica, a member's store, another region.
    assert!(!c
        .store(2)
        .destroy_stale_replica(before.id, &before)
        .unwrap());
    let mut not_newer = current.clone();
    not_newer.epoch.conf_version = before.epoch.conf_version;
    assert!(!c
        .store(2)
        .destroy_stale_replica(before.id, &not_newer)
        .unwrap());
    assert!(!c
        .store(0)
        .destroy_stale_replica(current.id, &current)
        .unwrap());
    assert!(!c
        .store(1)
        .destroy_stale_replica(current.id, &current)
        .unwrap());
    let other = c.regions[1].id;
    assert!(!c.store(2).destroy_stale_replica(other, &current).unwrap());
    assert_eq!(c.store(2).stats.peers_destroyed, 0);
    assert!(c.store(2).state_machine(before.id).is_some());
    // Placement's descriptor: destroyed, once.
    assert!(c
        .store(2)
        .destroy_stale_replica(before.id, &current)
        .unwrap());
    assert!(!c
        .store(2)
        .destroy_stale_replica(before.id, &current)
        .unwrap());
    assert!(c.regions_on(2).iter().all(|r| r.id != before.id));
    assert!(c.store(2).state_machine(before.id).is_none());
    assert!(c.store(2).live_regions().load().get(before.id).is_none());
    assert!(!c
        .store(2)
        .engine()
        .groups()
        .contains(&raft_log::GroupId(before.id.0)));
    let stats = c.store(2).stats;
    assert_eq!(
        (stats.peers_destroyed, stats.stale_replicas_destroyed),
        (1, 1)
    );
    // Gone for good: a restart does not bring it back, nor does a late message for it.
    c.stop(2);
    c.start(2);
    c.tick(30);
    assert!(
        c.regions_on(2).iter().all(|r| r.id != before.id),
        "{:?}",
        c.regions_on(2)
    );
    assert!(c.store(2).state_machine(before.id).is_none());
    let late = raft::Message {
        group: before.id,
        from: before.peer_on(StoreId(1)).unwrap().id,
        to: old_peer,
        term: raft::Term(1),
        body: raft::MessageBody::Heartbeat {
            commit: raft::LogIndex(0),
            read_context: None,
            lease_tick: 0,
        },
    };
    assert!(c.store(2).step(StoreId(1), late).is_err());
    assert!(c.store(2).state_machine(before.id).is_none());
    // The region serves on with its two replicas; store 3's other regions too.
    c.write(0, 0, b"b", b"two").unwrap();
    assert_eq!(c.read(2, 2, b"q").unwrap().as_ref(), b"");
}

/// Batches of distinct keys, all routed by their first key, are sampled key by key: the
/// load split key falls inside the batches' range, not at the routing key.
#[test]
fn a_batch_of_keys_is_sampled_by_each_key() {
    let mut c = Cluster::new(10_000);
    let r = c.regions[0].clone();
    let keys: Vec<Vec<u8>> = (0..40u32)
        .map(|i| format!("a{i:02}").into_bytes())
        .collect();
    for _ in 0..3 {
        let t = c
            .store(0)
            .propose(r.id, r.epoch, &keys[0], batch(&keys))
            .unwrap();
        c.pump();
        assert!(matches!(c.done.remove(&t), Some(Ok(Reply::Applied(_)))));
    }
    // 120 keys sampled, 3 of each: the median is the 21st key, not the routing key a00.
    assert_eq!(c.store(0).load_split_key(r.id).unwrap(), b"a20");
}

/// The region's leader names a load split key from the keys of the requests it took (the
/// median), followers refuse, and a state machine that cannot tell its size split key
/// (this test's map) is refused with the reason.
#[test]
fn the_leader_names_a_load_split_key_from_its_requests() {
    let mut c = Cluster::new(10_000);
    let r = c.regions[0].clone();
    let refused = |e: StoreError| match e {
        StoreError::Proposal(why) => why,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let why = refused(c.store(0).load_split_key(r.id).unwrap_err());
    assert!(why.contains("only 0 request keys sampled"), "{why}");
    for i in 0..40u32 {
        c.write(0, 0, format!("a{i:02}").as_bytes(), b"v").unwrap();
    }
    // 40 keys sampled (fewer than a window holds): the 21st is the median.
    assert_eq!(c.store(0).load_split_key(r.id).unwrap(), b"a20");
    assert!(matches!(
        c.store(1).load_split_key(r.id),
        Err(StoreError::NotLeader { .. })
    ));
    assert!(matches!(
        c.store(1).size_split_key(r.id),
        Err(StoreError::NotLeader { .. })
    ));
    let why = refused(c.store(0).size_split_key(r.id).unwrap_err());
    assert!(why.contains("no size split key"), "{why}");
    // Two windows end with no requests: nothing is left to split by.
    c.store(0).rotate_load_samples();
    assert_eq!(c.store(0).load_split_key(r.id).unwrap(), b"a20");
    c.store(0).rotate_load_samples();
    let why = refused(c.store(0).load_split_key(r.id).unwrap_err());
    assert!(why.contains("only 0 request keys sampled"), "{why}");
}
