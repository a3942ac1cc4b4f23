//! The Rust client routes with placement (issue 18, item 6), real processes: a client given
//! only store 1's endpoint learns every store's address from placement, a store that joined
//! after the client started included, and keeps serving every key once store 1, the only
//! endpoint it was given, is SIGKILLed; a new client given only the joined store's endpoint
//! reads every key too.

mod common;

use api::pb;
use common::TestCluster;
use std::time::{Duration, Instant};

/// Keys over the three regions (split keys `g` and `p`).
fn key(prefix: &str, n: usize) -> Vec<u8> {
    format!("{}-{prefix}-{n:02}", ["c", "k", "t"][n % 3]).into_bytes()
}

fn value(prefix: &str, n: usize) -> Vec<u8> {
    format!("{prefix}-value-{n}").into_bytes()
}

/// Placement's answer asked through `endpoint` (`None`: no answer within 5 s, e.g. no
/// leader).
async fn placement_answer(endpoint: &str) -> Option<placement::LiveAnswer> {
    tokio::time::timeout(Duration::from_secs(5), ask_placement(endpoint))
        .await
        .ok()
        .flatten()
}

async fn ask_placement(endpoint: &str) -> Option<placement::LiveAnswer> {
    let url = format!("http://{endpoint}");
    let mut c = pb::placement_client::PlacementClient::connect(url)
        .await
        .ok()?;
    let r = c
        .query(pb::PlacementQueryRequest {
            config: -1,
            forwarded: false,
        })
        .await
        .ok()?
        .into_inner();
    if r.error.is_some() {
        return None;
    }
    serde_json::from_slice(&r.json).ok()
}

/// Whether the store listening on `client_addr` is Up in `live` and holds a voter of a data
/// region, and nothing is moving (no target, no learner): the rebalance its join started
/// is done, so one store can die without a region losing its majority.
fn joined_and_settled(live: &placement::LiveAnswer, client_addr: &str) -> bool {
    let config = &live.answer.config;
    let Some(me) = config
        .stores
        .values()
        .find(|s| s.addrs.client == client_addr)
    else {
        return false;
    };
    let moving = config
        .regions
        .values()
        .any(|r| r.target.is_some() || r.replicas.iter().any(|p| p.learner));
    let holds = config
        .regions
        .values()
        .filter(|r| r.id != placement::hosted_group_id())
        .any(|r| r.replicas.iter().any(|p| p.store == me.id && !p.learner));
    me.state == placement::StoreState::Up && holds && !moving
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_given_one_store_learns_a_joined_store_and_outlives_the_one_it_was_given() {
    let mut c = TestCluster::start(&["--placement-heartbeat-ms", "200"]);
    assert!(
        c.wait_ready(Duration::from_secs(30)).await,
        "cluster not ready\n{}",
        c.logs()
    );
    let cfg = client::ClientConfig {
        op_timeout: Duration::from_secs(30),
        attempt_timeout: Duration::from_secs(3),
        ..Default::default()
    };
    // Given store 1 only: everything else it must learn.
    let mut cl = client::Client::with_config(vec![c.endpoint(0)], cfg.clone())
        .await
        .expect("client");

    let s4 = c.join_new_store();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(live) = placement_answer(&c.endpoint(0)).await {
            if joined_and_settled(&live, &c.endpoint(s4)) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "store {} did not get replicas within 90 s: {:?}\n{}",
            s4 + 1,
            placement_answer(&c.endpoint(0)).await,
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The client learns every store's address, the joined one's too, each once.
    let every: Vec<String> = (0..c.stores()).map(|i| c.endpoint(i)).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        cl.refresh_routes().await;
        if every.iter().all(|e| cl.endpoints().contains(e)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the client's endpoints {:?} still miss some of {every:?} after 30 s\n{}",
            cl.endpoints(),
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        cl.endpoints().len(),
        every.len(),
        "an address added twice: {:?}",
        cl.endpoints()
    );
    for n in 0..50 {
        cl.put(&key("before", n), &value("before", n))
            .await
            .unwrap_or_else(|e| panic!("put {n} before the kill: {e}\n{}", c.logs()));
    }

    // Store 1, the only endpoint the client was given, dies: the learned ones serve.
    c.kill(0);
    for n in 0..50 {
        cl.put(&key("after", n), &value("after", n))
            .await
            .unwrap_or_else(|e| panic!("put {n} after the kill: {e}\n{}", c.logs()));
    }
    for prefix in ["before", "after"] {
        for n in 0..50 {
            let got = cl
                .get(&key(prefix, n))
                .await
                .unwrap_or_else(|e| panic!("get {prefix} {n} after the kill: {e}\n{}", c.logs()));
            assert_eq!(
                got.as_deref(),
                Some(&value(prefix, n)[..]),
                "{prefix} {n} read back"
            );
        }
    }

    // A client that starts from the joined store alone reaches every key.
    let mut from4 = client::Client::with_config(vec![c.endpoint(s4)], cfg)
        .await
        .expect("client of the joined store");
    for prefix in ["before", "after"] {
        for n in 0..50 {
            let got = from4.get(&key(prefix, n)).await.unwrap_or_else(|e| {
                panic!(
                    "get {prefix} {n} through the joined store: {e}\n{}",
                    c.logs()
                )
            });
            assert_eq!(
                got.as_deref(),
                Some(&value(prefix, n)[..]),
                "{prefix} {n} read through the joined store"
            );
        }
    }
}
