//! Snapshots are streamed both ways between real `raftkv server` processes (issue 16 part 4):
//! a store that was down while one region grew to `RAFTKV_SNAPSHOT_TEST_MIB` MiB (default
//! 512) catches up by a snapshot transfer, and neither the sending nor the receiving store's
//! resident memory grows by 64 MiB or more while the chunks flow. The sender reads each 1 MiB
//! chunk from its snapshot file; the receiver appends each to a file of its own and installs
//! from disk. (Installing then restores the in-memory state machine, which takes the region's
//! size in memory: that is the state itself, after the transfer, and not measured here.)
//!
//! How a sample is known to fall inside the transfer: the receiver publishes the bytes it has
//! written of unfinished transfers (`raftkv_snapshot_receiving_bytes`) after every round. A
//! resident-set sample counts when that gauge, read *after* the sample, is non-zero and at
//! least two chunks short of the snapshot: the round that writes the last chunk (and then
//! installs) had not begun when the gauge was read, so not when the sample was taken.

mod common;

use common::TestCluster;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// The region's values: this many bytes each (one Raft entry per value, under kv's 8 MiB
/// value limit).
const VALUE_BYTES: usize = MIB as usize;
/// Allowed growth of either store's resident set during the transfer.
const MAX_GROWTH: u64 = 64 * MIB;

fn region_mib() -> u64 {
    std::env::var("RAFTKV_SNAPSHOT_TEST_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

/// Resident set of process `pid`, in bytes (`VmRSS` of /proc/PID/status).
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The largest snapshot file of store `i` (the region's snapshot: the other two regions are
/// empty), in bytes.
fn largest_snapshot_file(c: &TestCluster, i: usize) -> u64 {
    std::fs::read_dir(c.data_dir(i).join("snap"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".snap"))
                .filter_map(|e| e.metadata().ok().map(|m| m.len()))
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

fn value_of(i: usize) -> Vec<u8> {
    let mut v = vec![(i % 251) as u8; VALUE_BYTES];
    v[..8].copy_from_slice(&(i as u64).to_le_bytes());
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_snapshot_is_streamed_without_growing_either_store() {
    let region_mib = region_mib();
    let values = region_mib as usize;
    // Snapshots by bytes only, every eighth of the load (so the last one is made within an
    // eighth of its end, whatever the interleaving of the writers and the leaders' empty
    // entries; with the entry threshold and its amortization rule it could stop at 3/4).
    // The log's budget is 8 segments: with segments of a quarter of the load it holds the
    // whole load twice, so the purge never asks for a snapshot of the region (which would
    // serialize all of it into memory while the transfer is being measured: a CI run saw the
    // sender grow by 89 MiB with 64 MiB segments and a 512 MiB load).
    let threshold = ((region_mib / 8).max(1) * MIB).to_string();
    let segment = (region_mib / 4).clamp(64, 1024) * MIB;
    // One big region is the point: the automatic scheduler would split it at 64 MiB.
    let mut c = TestCluster::start(&[
        "--scheduler",
        "off",
        "--snapshot-threshold-entries",
        "1000000000",
        "--snapshot-threshold-bytes",
        &threshold,
        "--log-segment-bytes",
        &segment.to_string(),
    ]);
    assert!(
        c.wait_ready(Duration::from_secs(60)).await,
        "cluster not ready\n{}",
        c.logs()
    );
    // Store 3 misses the whole load.
    c.kill(2);
    let endpoints: Vec<String> = (0..2).map(|i| c.endpoint(i)).collect();

    // The load: every value in region 1 (keys below "g").
    let started = Instant::now();
    let writers = 4;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let endpoints = endpoints.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = client::Client::connect(endpoints).await.expect("client");
            for i in (w..values).step_by(writers) {
                client
                    .put(format!("a{i:05}").as_bytes(), &value_of(i))
                    .await
                    .unwrap_or_else(|e| panic!("put a{i:05}: {e}"));
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    eprintln!("loaded {region_mib} MiB in {:?}", started.elapsed());

    // Both live stores' snapshots must cover most of it before store 3 comes back (either
    // may be the leader that sends), and no snapshot may still be building: a build
    // serializes the whole region into memory, which would land in the measurement.
    let wanted = (region_mib - region_mib / 4) * MIB;
    let building = |c: &TestCluster, i: usize| c.metric(i, "raftkv_snapshots_building");
    let created = |c: &TestCluster, i: usize| {
        c.metric(i, "raftkv_snapshots_created_total")
            .expect("snapshots created")
    };
    common::wait_until(
        "the live stores' snapshots cover the load",
        Duration::from_secs(120),
        || (0..2).all(|i| largest_snapshot_file(&c, i) >= wanted),
    )
    .await;
    let mut settled = [created(&c, 0), created(&c, 1)];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = [created(&c, 0), created(&c, 1)];
        let idle = (0..2).all(|i| building(&c, i) == Some(0));
        if now == settled && idle {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "snapshots never stopped being made"
        );
        settled = now;
    }
    let leader = c.leader_of(b"a").await.expect("a leader for region 1");
    assert!(leader < 2, "store 3 is down but leads region 1");
    let snapshot_bytes = largest_snapshot_file(&c, leader);
    let chunks_before = c
        .metric(2, "raftkv_snapshot_chunks_received_total")
        .unwrap_or(0);
    let sender_pid = c.pid(leader).expect("leader pid");
    let other = 1 - leader;
    let other_pid = c.pid(other).expect("pid");
    let created_before = settled;
    let sender_base = rss(sender_pid).expect("sender rss");
    let other_base = rss(other_pid).expect("rss");

    // Store 3 comes back: it needs the snapshot.
    c.spawn(2);
    let receiver_pid = c.pid(2).expect("receiver pid");
    // Its baseline: the first sample after the spawn, before it has done anything (so the
    // growth counted below includes its own start-up: stricter, not looser).
    let receiver_base = rss(receiver_pid).expect("receiver rss");
    let mut sender_max = sender_base;
    let mut other_max = other_base;
    let mut receiver_max = receiver_base;
    let mut samples = 0u32;
    let mut first_seen: Option<u64> = None;
    let mut last_seen = 0u64;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        assert!(
            Instant::now() < deadline,
            "store 3 never installed the snapshot\n{}",
            c.logs()
        );
        let (s, o, r) = (rss(sender_pid), rss(other_pid), rss(receiver_pid));
        let receiving = c.metric(2, "raftkv_snapshot_receiving_bytes");
        let installed = c.metric(2, "raftkv_snapshots_installed_total").unwrap_or(0);
        if installed > 0 {
            break;
        }
        if let (Some(s), Some(o), Some(r), Some(receiving)) = (s, o, r, receiving) {
            if receiving > 0 && receiving + 2 * MIB < snapshot_bytes {
                if s > sender_max && s > sender_base + 32 * MIB {
                    // Which kind of memory grew (anonymous, file-backed), for the log.
                    let status = std::fs::read_to_string(format!("/proc/{sender_pid}/status"))
                        .unwrap_or_default();
                    let kinds: Vec<&str> =
                        status.lines().filter(|l| l.starts_with("Rss")).collect();
                    eprintln!("sender at {} MiB: {kinds:?}", s / MIB);
                }
                sender_max = sender_max.max(s);
                other_max = other_max.max(o);
                receiver_max = receiver_max.max(r);
                samples += 1;
                first_seen.get_or_insert(receiving);
                last_seen = receiving;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Nothing else took memory on the live stores meanwhile: no snapshot was built there
    // (a build serializes the whole region into memory, which is not what this measures).
    assert_eq!(
        [created(&c, 0), created(&c, 1)],
        created_before,
        "a live store built a snapshot during the transfer"
    );
    assert!(
        (0..2).all(|i| building(&c, i) == Some(0)),
        "a live store is building a snapshot"
    );
    let sent = |name: &str| c.metric(leader, name).unwrap_or(0);
    eprintln!(
        "sender's transport: {} snapshot chunks sent, {} messages dropped (queue full), {} dropped (unreachable), {} sent in all",
        sent("raftkv_transport_snapshot_chunks_sent_total"),
        sent("raftkv_transport_dropped_queue_full_total"),
        sent("raftkv_transport_dropped_unreachable_total"),
        sent("raftkv_transport_messages_sent_total"),
    );
    let chunks = c
        .metric(2, "raftkv_snapshot_chunks_received_total")
        .unwrap_or(0)
        - chunks_before;
    let growth = |max: u64, base: u64| max.saturating_sub(base);
    eprintln!(
        "snapshot file {snapshot_bytes} B, {chunks} chunks received, {samples} samples during the \
         transfer (from {:?} to {last_seen} B received); RSS growth: sender (store {}) {} KiB \
         (base {} MiB), other {} KiB, receiver {} KiB (base {} MiB)",
        first_seen,
        leader + 1,
        growth(sender_max, sender_base) / 1024,
        sender_base / MIB,
        growth(other_max, other_base) / 1024,
        growth(receiver_max, receiver_base) / 1024,
        receiver_base / MIB,
    );
    // The transfer was watched from near its start to near its end.
    assert!(
        chunks >= region_mib - region_mib / 8,
        "only {chunks} chunks received for a {region_mib} MiB region"
    );
    let first = first_seen.expect("no sample fell inside the transfer");
    assert!(
        samples >= 10 && first <= snapshot_bytes / 4 && last_seen >= snapshot_bytes / 2,
        "the samples did not span the transfer: {samples} from {first} to {last_seen} of {snapshot_bytes} B"
    );
    assert!(
        growth(sender_max, sender_base) < MAX_GROWTH,
        "the sender's RSS grew by {} MiB while sending",
        growth(sender_max, sender_base) / MIB
    );
    assert!(
        growth(other_max, other_base) < MAX_GROWTH,
        "the other follower's RSS grew by {} MiB during the transfer",
        growth(other_max, other_base) / MIB
    );
    assert!(
        growth(receiver_max, receiver_base) < MAX_GROWTH,
        "the receiver's RSS grew by {} MiB while receiving",
        growth(receiver_max, receiver_base) / MIB
    );

    // What was installed is the region: read back from store 3 alone, stale (no leader),
    // once it caught up past the snapshot with the log's tail (bounded).
    let mut only3 = client::Client::connect(vec![c.endpoint(2)])
        .await
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in [0, values / 2, values - 1] {
        let key = format!("a{i:05}");
        loop {
            let got = only3
                .get_stale(key.as_bytes())
                .await
                .unwrap_or_else(|e| panic!("stale get {key} from store 3: {e}"));
            if got.as_deref() == Some(&value_of(i)[..]) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "store 3 still has the wrong value for {key} 60 s after the install"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
