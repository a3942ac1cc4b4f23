//! The automatic scheduler with real processes (issue 19): data growth splits regions and a
//! joined store takes its share; a hot range is split by load; a store SIGKILLed and left
//! down past `--store-down-timeout` has its replicas re-created elsewhere, nothing is lost,
//! and when it comes back it is cleaned of the replicas it no longer holds.

mod common;

use common::TestCluster;
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

/// `raftkv placement query --json` through `endpoints`.
fn placement(endpoints: &str) -> Option<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_raftkv"))
        .args(["placement", "query", "--json", "--endpoints", endpoints])
        .output()
        .expect("run raftkv");
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).expect("placement JSON"))
}

/// Data regions in a placement answer.
fn regions(p: &Value) -> &Vec<Value> {
    p["regions"].as_array().expect("regions")
}

/// Replicas per store (data regions and the placement group).
fn replicas_per_store(p: &Value) -> BTreeMap<u64, usize> {
    let mut per = BTreeMap::new();
    for r in regions(p) {
        for rep in r["replicas"].as_array().unwrap() {
            *per.entry(rep["store"].as_u64().unwrap()).or_default() += 1;
        }
    }
    for s in p["placement"]["replicas"].as_array().unwrap() {
        *per.entry(s.as_u64().unwrap()).or_default() += 1;
    }
    per
}

/// The regions store `i`'s process itself holds a replica of (its metrics page lists one
/// term per replica).
fn replicas_held(c: &TestCluster, i: usize) -> std::collections::BTreeSet<u64> {
    c.metrics(i)
        .lines()
        .filter_map(|l| l.strip_prefix("raftkv_region_term{region=\""))
        .filter_map(|l| l.split('"').next()?.parse().ok())
        .collect()
}

/// The regions placement lists a replica of on `store` (the placement group included).
fn regions_on(p: &Value, store: u64) -> std::collections::BTreeSet<u64> {
    let mut out: std::collections::BTreeSet<u64> = regions(p)
        .iter()
        .filter(|r| {
            r["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["store"] == store)
        })
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    if p["placement"]["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| *s == store)
    {
        out.insert(placement::hosted_group_id());
    }
    out
}

/// Writes `keys` keys of `value_bytes` bytes with `tasks` concurrent clients; returns them.
async fn load(c: &TestCluster, keys: usize, value_bytes: usize, tasks: usize) -> Vec<Vec<u8>> {
    let base = client::Client::connect(c.endpoints())
        .await
        .expect("client");
    let mut handles = Vec::new();
    for t in 0..tasks {
        let mut cl = base.fork();
        handles.push(tokio::spawn(async move {
            let mut written = Vec::new();
            for i in (t..keys).step_by(tasks) {
                // Keys spread over the whole key space, as `raftkv bench --workload load`.
                let key = format!("{}{:07}", (b'a' + (i % 26) as u8) as char, i).into_bytes();
                let value = vec![b'a' + (i % 26) as u8; value_bytes];
                cl.put(&key, &value)
                    .await
                    .unwrap_or_else(|e| panic!("put {i}: {e}"));
                written.push(key);
            }
            written
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.expect("load task"));
    }
    all
}

/// Polls placement every 250 ms until `done` holds for its answer; fails after `timeout`
/// naming `what`, with the last answer and the stores' logs.
async fn wait_placement(
    c: &TestCluster,
    endpoints: &str,
    what: &str,
    timeout: Duration,
    mut done: impl FnMut(&Value) -> bool,
) -> (Value, Duration) {
    let start = Instant::now();
    let mut last = None;
    loop {
        if let Some(p) = placement(endpoints) {
            if done(&p) {
                return (p, start.elapsed());
            }
            last = Some(p);
        }
        assert!(
            start.elapsed() < timeout,
            "{what}: not within {timeout:?}; last placement answer: {}\n{}",
            last.map_or("none".to_string(), |p| p.to_string()),
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The first check, at the playground's flags: 30,000 keys × 1 KiB with a 1 MiB
/// region limit make at least 12 regions within 60 s; a 4th store joined with `--join`
/// then holds at least 20 % of all replicas within 120 s; every key reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growing_data_is_split_and_a_joined_store_takes_its_share() {
    let mut c = TestCluster::start(&[
        "--placement-heartbeat-ms",
        "500",
        "--region-max-bytes",
        "1048576",
    ]);
    assert!(
        c.wait_ready(Duration::from_secs(30)).await,
        "cluster not ready\n{}",
        c.logs()
    );
    let endpoints = c.endpoints().join(",");
    let t0 = Instant::now();
    let keys = load(&c, 30_000, 1024, 32).await;
    eprintln!("loaded {} keys in {:?}", keys.len(), t0.elapsed());
    let (p, took) = wait_placement(
        &c,
        &endpoints,
        "at least 12 regions after 30,000 keys x 1 KiB",
        Duration::from_secs(60),
        |p| regions(p).len() >= 12,
    )
    .await;
    eprintln!(
        "{} regions {:?} after the load ({:?} after it started)",
        regions(&p).len(),
        took,
        t0.elapsed()
    );
    // The scheduler split them: its history says so.
    assert!(
        p["history"]
            .as_array()
            .unwrap()
            .iter()
            .chain(p["operators"].as_array().unwrap())
            .any(|o| o["reason"] == "Size"),
        "no split by size in the scheduler's history: {}",
        p["history"]
    );

    // Visible: `raftkv store list` and `raftkv status` list the scheduler's splits, and the
    // store leading placement counts them on its metrics page.
    for cmd in ["store list", "status"] {
        let mut args: Vec<&str> = cmd.split(' ').collect();
        args.extend(["--endpoints", &endpoints]);
        let out = Command::new(env!("CARGO_BIN_EXE_raftkv"))
            .args(&args)
            .output()
            .expect("run raftkv");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("scheduler:") && text.contains("reason Size"),
            "`raftkv {cmd}` does not show the scheduler's splits:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // (Counted by the store that led placement when they were decided.)
    let splits_done = (0..3).any(|i| {
        c.metrics(i).lines().any(|l| {
            l.starts_with("raftkv_scheduler_operators_total{kind=\"split\",outcome=\"done\"}")
                && !l.ends_with(" 0")
        })
    });
    assert!(
        splits_done,
        "no store counts a split done:\n{}",
        c.metrics(p["placement"]["leader_store"].as_u64().unwrap() as usize - 1)
    );

    let s4 = c.join_new_store();
    let new_id = 4u64;
    let (p, took) = wait_placement(
        &c,
        &endpoints,
        "the joined store holding 20 % of all replicas",
        Duration::from_secs(120),
        |p| {
            let per = replicas_per_store(p);
            let total: usize = per.values().sum();
            per.get(&new_id).is_some_and(|n| *n * 5 >= total)
        },
    )
    .await;
    eprintln!(
        "store {} holds its share after {took:?}: {:?}",
        s4 + 1,
        replicas_per_store(&p)
    );

    // Nothing was lost on the way.
    let mut cl = client::Client::connect(c.endpoints())
        .await
        .expect("client");
    for (i, key) in keys.iter().enumerate().step_by(7) {
        let v = cl
            .get(key)
            .await
            .unwrap_or_else(|e| panic!("get {:?}: {e}", String::from_utf8_lossy(key)));
        assert_eq!(
            v.as_deref().map(|v| (v.len(), v[0])),
            Some((1024, key[0])),
            "key {i} {:?} after the splits and moves",
            String::from_utf8_lossy(key)
        );
    }
}

/// `--region-split-qps 500`: reads on a narrow hot range (200 keys inside one region) split
/// it by load; the split key falls inside the hot range, so its keys end in two regions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_range_is_split_by_load() {
    let c = TestCluster::start(&[
        "--placement-heartbeat-ms",
        "500",
        "--region-split-qps",
        "500",
    ]);
    assert!(
        c.wait_ready(Duration::from_secs(30)).await,
        "cluster not ready\n{}",
        c.logs()
    );
    let endpoints = c.endpoints().join(",");
    let mut cl = client::Client::connect(c.endpoints())
        .await
        .expect("client");
    let hot: Vec<Vec<u8>> = (0..200).map(|i| format!("h{i:03}").into_bytes()).collect();
    for k in &hot {
        cl.put(k, b"v").await.expect("put");
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for t in 0..8 {
        let mut cl = cl.fork();
        let (hot, stop) = (hot.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut n = t;
            let mut errors = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n = (n * 31 + 7) % hot.len();
                if cl.get(&hot[n]).await.is_err() {
                    errors += 1;
                }
            }
            errors
        }));
    }
    let in_range = |p: &Value, key: &str| {
        regions(p)
            .iter()
            .filter(|r| {
                r["start_key"].as_str().unwrap() <= key
                    && r["end_key"].as_str().is_none_or(|e| key < e)
            })
            .map(|r| r["id"].as_u64().unwrap())
            .next()
    };
    let (p, took) = wait_placement(
        &c,
        &endpoints,
        "the hot range h000..h199 split over two regions",
        Duration::from_secs(60),
        |p| in_range(p, "h000") != in_range(p, "h199"),
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut errors = 0;
    for r in readers {
        errors += r.await.expect("reader");
    }
    eprintln!("split by load after {took:?}: {}", p["regions"]);
    assert!(
        p["history"]
            .as_array()
            .unwrap()
            .iter()
            .chain(p["operators"].as_array().unwrap())
            .any(|o| o["reason"] == "Load"),
        "the split was not by load: {}",
        p["history"]
    );
    assert_eq!(errors, 0, "reads failed while the hot range split");
}

/// `--store-down-timeout 10`: of four stores, one is SIGKILLed and left down; within 60 s
/// every region has its 3 replicas on the other stores, every key reads back, and when the
/// store comes back it holds no replica of a region it was removed from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_store_is_repaired_and_cleaned_when_it_returns() {
    let mut c = TestCluster::start(&[
        "--placement-heartbeat-ms",
        "500",
        "--store-down-timeout",
        "10",
    ]);
    assert!(
        c.wait_ready(Duration::from_secs(30)).await,
        "cluster not ready\n{}",
        c.logs()
    );
    let first_three = c.endpoints().join(",");
    let s4 = c.join_new_store();
    // Wait until the joined store holds replicas and nothing moves.
    let (p, _) = wait_placement(
        &c,
        &first_three,
        "store 4 holding replicas",
        Duration::from_secs(90),
        |p| {
            replicas_per_store(p).get(&4).is_some_and(|n| *n >= 1)
                && regions(p).iter().all(|r| r["target"].is_null())
        },
    )
    .await;
    let mut cl = client::Client::connect(c.endpoints())
        .await
        .expect("client");
    let keys: Vec<Vec<u8>> = (0..300)
        .map(|i| format!("{}{i:04}", (b'a' + (i % 26) as u8) as char).into_bytes())
        .collect();
    for k in &keys {
        cl.put(k, k).await.expect("put");
    }
    // The victim: a store with replicas that does not lead placement (placement's own
    // leader going down is covered by `placement.rs`).
    let leader = p["placement"]["leader_store"].as_u64().unwrap();
    let victim = (1..=4u64)
        .filter(|s| *s != leader)
        .max_by_key(|s| replicas_per_store(&p).get(s).copied().unwrap_or(0))
        .unwrap();
    let held_before = replicas_per_store(&p)[&victim];
    eprintln!("killing store {victim} (holding {held_before} replicas)");
    c.kill(victim as usize - 1);
    let alive: Vec<String> = (0..c.stores())
        .filter(|i| *i as u64 + 1 != victim)
        .map(|i| c.endpoint(i))
        .collect();
    let alive = alive.join(",");
    let (p, took) = wait_placement(
        &c,
        &alive,
        "every region back to 3 replicas without the dead store",
        Duration::from_secs(60),
        |p| {
            let groups = regions(p)
                .iter()
                .map(|r| {
                    r["replicas"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|x| !x["learner"].as_bool().unwrap())
                        .map(|x| x["store"].as_u64().unwrap())
                        .collect::<Vec<_>>()
                })
                .chain(std::iter::once(
                    p["placement"]["replicas"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|s| s.as_u64().unwrap())
                        .collect(),
                ));
            let mut ok = true;
            for g in groups {
                ok &= g.len() == 3 && !g.contains(&victim);
            }
            ok
        },
    )
    .await;
    eprintln!(
        "repaired {took:?} after the kill: {:?}",
        replicas_per_store(&p)
    );
    let mut cl = client::Client::connect(
        (0..c.stores())
            .filter(|i| *i as u64 + 1 != victim)
            .map(|i| c.endpoint(i))
            .collect(),
    )
    .await
    .expect("client");
    for k in &keys {
        assert_eq!(
            cl.get(k).await.expect("get after the repair").as_deref(),
            Some(k.as_slice()),
            "key {:?} after store {victim} was repaired away",
            String::from_utf8_lossy(k)
        );
    }

    // The store comes back: placement tells it which replicas were removed meanwhile, and
    // it destroys them.
    c.spawn(victim as usize - 1);
    let i = victim as usize - 1;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut opened = false;
    loop {
        let should = placement(&alive).map(|p| regions_on(&p, victim));
        let held = c.is_up(i).then(|| replicas_held(&c, i));
        if let (Some(should), Some(held)) = (&should, &held) {
            // First the store reopens with the replicas it had (removed ones included)...
            opened |= !held.is_empty();
            // ...then everything it holds is a region placement lists it in (it may get new
            // replicas meanwhile: the scheduler balances onto it).
            if opened && held.is_subset(should) {
                eprintln!("store {victim} back, holding {held:?}; placement: {should:?}");
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "store {victim} still holds {held:?}, placement lists it in {should:?}\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = s4;
}
