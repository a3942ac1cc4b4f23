//! Regions reshaped at runtime with real processes (issue 17): while 8 clients (6 gRPC, 2 on
//! the Redis port) run a linearizability-checked workload over all three bootstrap regions,
//! `raftkv region split` splits two of them, `raftkv region transfer-leader` moves a new
//! region's leadership, `remove-replica` / `add-replica` move a replica off a store and
//! back after that store restarted, and `raftkv region merge` merges a split-off region
//! back; no client sees an error, the history is linearizable, every region
//! ends with a leader, and bad admin input is refused with a clear error and changes nothing.

mod common;

use common::{Load, LoadConfig, TestCluster};
use lincheck::kv::KvModel;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

const CLIENTS: usize = 8;
/// Of them, the ones speaking the Redis protocol.
const RESP_CLIENTS: usize = 2;

/// Runs the `raftkv` binary: (success, stdout, stderr).
fn raftkv(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_raftkv"))
        .args(args)
        .output()
        .expect("run raftkv");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn status(endpoints: &str) -> Value {
    let (ok, out, err) = raftkv(&["status", "--json", "--endpoints", endpoints]);
    assert!(ok, "raftkv status failed: {err}");
    serde_json::from_str(&out).expect("status JSON")
}

/// The id of the region holding `key` in a status report.
fn region_of(st: &Value, key: &str) -> Value {
    st["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| {
            let start = r["start_key"].as_str().unwrap();
            let end = r["end_key"].as_str().unwrap();
            key >= start && (end.is_empty() || key < end)
        })
        .unwrap_or_else(|| panic!("no region holds {key:?}: {st}"))
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splits_and_leader_transfers_under_load_lose_nothing_and_surface_no_error() {
    let mut c = TestCluster::start(&[]);
    assert!(
        c.wait_ready(Duration::from_secs(30)).await,
        "cluster not ready\n{}",
        c.logs()
    );
    let endpoints = c.endpoints().join(",");
    let load = Load::start(
        &c,
        LoadConfig {
            clients: CLIENTS,
            resp_clients: RESP_CLIENTS,
            op_timeout: Duration::from_secs(15),
        },
    )
    .await;
    load.progress(&c, "before the first split").await;

    // Split region [..g) at "c5" and [g, p) at "k5", under load.
    for key in ["c5", "k5"] {
        let (ok, out, err) = raftkv(&["region", "split", key, "--endpoints", &endpoints]);
        assert!(
            ok,
            "split at {key} failed: {err}
{}",
            c.logs()
        );
        assert!(out.contains("region"), "{out}");
        load.progress(&c, "after a split").await;
    }
    let st = status(&endpoints);
    assert_eq!(st["regions"].as_array().unwrap().len(), 5, "{st}");
    let right = region_of(&st, "c5");
    assert_eq!(right["start_key"], "c5", "{st}");
    assert_eq!(region_of(&st, "c4")["end_key"], "c5", "{st}");
    assert_eq!(region_of(&st, "k5")["start_key"], "k5", "{st}");

    // Move the new region's leadership to another store, under load.
    let id = right["id"].as_u64().unwrap();
    let leader = right["leader_store"]
        .as_u64()
        .expect("the new region has a leader");
    let to = leader % 3 + 1;
    let (ok, out, err) = raftkv(&[
        "region",
        "transfer-leader",
        &id.to_string(),
        &to.to_string(),
        "--endpoints",
        &endpoints,
    ]);
    assert!(
        ok,
        "transfer-leader failed: {err}
{}",
        c.logs()
    );
    assert!(
        out.contains(&format!("store {to} leads region {id}")),
        "{out}"
    );
    load.progress(&c, "after the transfer").await;

    // Move a replica: off store 3 (its data goes), store 3 restarted, back onto it.
    let moved = region_of(&status(&endpoints), "k5")["id"].as_u64().unwrap();
    let moved_arg = moved.to_string();
    let (ok, out, err) = raftkv(&[
        "region",
        "remove-replica",
        &moved_arg,
        "3",
        "--endpoints",
        &endpoints,
    ]);
    assert!(ok, "remove-replica failed: {err}\n{}", c.logs());
    assert!(out.contains("no replica on store 3"), "{out}");
    let st = status(&endpoints);
    let r = region_of(&st, "k5");
    assert_eq!(r["replicas"].as_array().unwrap().len(), 2, "{st}");
    assert_eq!(r["epoch"]["conf_version"], 2, "{st}");
    load.progress(&c, "after the removal").await;
    c.kill(2);
    c.spawn(2);
    assert!(
        c.wait_ready(Duration::from_secs(30)).await,
        "not ready after store 3 restarted: {}\n{}",
        raftkv(&["status", "--endpoints", &endpoints]).1,
        c.logs()
    );
    let (ok, out, err) = raftkv(&[
        "region",
        "add-replica",
        &moved_arg,
        "3",
        "--endpoints",
        &endpoints,
    ]);
    assert!(ok, "add-replica failed: {err}\n{}", c.logs());
    assert!(out.contains("store 3 holds a voting replica"), "{out}");
    let st = status(&endpoints);
    let r = region_of(&st, "k5");
    let replicas = r["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 3, "{st}");
    assert!(replicas.iter().all(|p| p["role"] == "voter"), "{st}");
    assert_eq!(r["epoch"]["conf_version"], 4, "{st}");
    load.progress(&c, "after the replica came back").await;

    // Merge the split-off [c5, g) back into [.., c5), under load.
    let st = status(&endpoints);
    let (left, right) = (region_of(&st, "c4"), region_of(&st, "c5"));
    let (left_arg, right_arg) = (left["id"].to_string(), right["id"].to_string());
    let (ok, out, err) = raftkv(&[
        "region",
        "merge",
        &left_arg,
        &right_arg,
        "--endpoints",
        &endpoints,
    ]);
    assert!(ok, "merge failed: {err}\n{}", c.logs());
    assert!(out.contains("merged region"), "{out}");
    let st = status(&endpoints);
    assert_eq!(st["regions"].as_array().unwrap().len(), 4, "{st}");
    let merged = region_of(&st, "c5");
    assert_eq!(merged["id"], left["id"], "{st}");
    assert_eq!(merged["end_key"], "g", "{st}");
    load.progress(&c, "after the merge").await;

    // Bad input: refused with a reason, nothing changes.
    for (args, why) in [
        (vec!["region", "split", "k5"], "already starts"),
        (
            vec!["region", "transfer-leader", &moved_arg, "9"],
            "no replica on store 9",
        ),
        (
            vec!["region", "transfer-leader", "12345", "1"],
            "not on this store",
        ),
        (
            vec!["region", "merge", &left_arg, &moved_arg],
            "not adjacent",
        ),
        (
            vec!["region", "merge", &right_arg, &left_arg],
            "no server reports",
        ),
    ] {
        let mut args = args.clone();
        args.extend(["--endpoints", &endpoints]);
        let (ok, _, err) = raftkv(&args);
        assert!(!ok, "{args:?} succeeded");
        assert!(err.contains(why), "{args:?}: {err}");
    }
    assert_eq!(status(&endpoints)["regions"].as_array().unwrap().len(), 4);

    let outcome = load.finish().await;
    let errors = outcome.errors;
    assert!(
        errors.is_empty(),
        "clients saw errors: {errors:?}\n{}",
        c.logs()
    );
    let st = status(&endpoints);
    for r in st["regions"].as_array().unwrap() {
        assert!(
            r["leader_store"].is_u64(),
            "a region without a leader: {st}"
        );
    }
    let ops = outcome.operations;
    eprintln!("{} operations, {} completed", ops.len(), outcome.completed);
    let r = lincheck::check(&KvModel, &ops, &lincheck::CheckOptions::default())
        .expect("well-formed history");
    assert!(
        r.is_ok(),
        "history of {} ops is not linearizable: {r}",
        ops.len()
    );
}
