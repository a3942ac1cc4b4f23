//! `raftkv status --json` against real servers: the shape scripts rely on (issue 17's admin
//! API: stores with addresses and state, each region once with its range, epoch, replicas,
//! leader and approximate size), values that match what was written, and a stopped store
//! shown as `Down`.

mod common;

use common::TestCluster;
use serde_json::Value;
use std::time::Duration;

fn status_json(endpoints: &str) -> Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_raftkv"))
        .args(["status", "--json", "--endpoints", endpoints])
        .output()
        .expect("run raftkv status");
    assert!(
        out.status.success(),
        "raftkv status --json failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_describes_stores_and_regions() {
    let mut c = TestCluster::start(&[]);
    assert!(
        c.wait_ready(Duration::from_secs(30)).await,
        "cluster not ready\n{}",
        c.logs()
    );
    // Region 2 ([g, p)) gets 10 keys of 5 + 100 bytes.
    let mut client = client::Client::connect(c.endpoints())
        .await
        .expect("client");
    for i in 0..10 {
        client
            .put(format!("h{i:04}").as_bytes(), &[b'v'; 100])
            .await
            .expect("put");
    }
    let endpoints = c.endpoints().join(",");
    // The approximate size is each leader's own count: wait until region 2's shows the writes.
    let mut status = status_json(&endpoints);
    for _ in 0..100 {
        if status["regions"][1]["approximate_keys"] == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = status_json(&endpoints);
    }

    let stores = status["stores"].as_array().expect("stores");
    assert_eq!(stores.len(), 3, "{status}");
    for (i, s) in stores.iter().enumerate() {
        assert_eq!(s["id"], i as u64 + 1);
        assert_eq!(s["state"], "Up");
        assert_eq!(s["peer_addr"], format!("127.0.0.1:{}", c.ports[i].0));
        assert_eq!(s["client_addr"], format!("127.0.0.1:{}", c.ports[i].1));
    }
    let regions = status["regions"].as_array().expect("regions");
    let ranges: Vec<(String, String)> = regions
        .iter()
        .map(|r| {
            (
                r["start_key"].as_str().unwrap().to_string(),
                r["end_key"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        ranges,
        [("", "g"), ("g", "p"), ("p", "")].map(|(a, b)| (a.to_string(), b.to_string()))
    );
    for r in regions {
        assert!(r["id"].is_u64(), "{r}");
        assert!(r["epoch"]["conf_version"].is_u64() && r["epoch"]["version"].is_u64());
        let replicas = r["replicas"].as_array().expect("replicas");
        assert_eq!(replicas.len(), 3, "{r}");
        for p in replicas {
            assert!(p["store"].is_u64() && p["peer_id"].is_u64(), "{p}");
            assert_eq!(p["role"], "voter");
        }
        let leader = r["leader_store"].as_u64().expect("a leader");
        assert!((1..=3).contains(&leader), "{r}");
    }
    assert_eq!(regions[1]["approximate_keys"], 10, "{status}");
    assert_eq!(regions[1]["approximate_bytes"], 10 * (5 + 100), "{status}");
    assert_eq!(regions[0]["approximate_keys"], 0);

    // A stopped store is Down (the others still know its peer address).
    c.kill(2);
    let endpoints: Vec<String> = (0..2).map(|i| c.endpoint(i)).collect();
    let status = status_json(&endpoints.join(","));
    let third = &status["stores"][2];
    assert_eq!(third["state"], "Down", "{status}");
    assert_eq!(third["peer_addr"], format!("127.0.0.1:{}", c.ports[2].0));
}
