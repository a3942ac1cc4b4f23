//! The placement service with real processes (issue 18): a 3-store cluster under a
//! linearizability-checked 8-client load; a 4th and a 5th store join with `--join`, one of
//! the first three is drained and removed while placement's leader is SIGKILLed (and
//! restarted); every client finishes without an error, the history is linearizable, and
//! `raftkv store list` / `placement query` show the final layout, balanced within one.

mod common;

use common::{Load, LoadConfig, TestCluster};
use lincheck::kv::KvModel;
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

const CLIENTS: usize = 8;

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

/// `raftkv placement query --json` through `endpoints`.
fn placement(endpoints: &str) -> Option<Value> {
    let (ok, out, _) = raftkv(&["placement", "query", "--json", "--endpoints", endpoints]);
    ok.then(|| serde_json::from_str(&out).expect("placement JSON"))
}

/// Replicas per store (Up and Draining stores) in a placement answer, and whether any
/// region is still moving (a target set, or a learner).
fn layout(p: &Value) -> (std::collections::BTreeMap<u64, usize>, bool) {
    let mut per: std::collections::BTreeMap<u64, usize> = p["stores"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"] != "Removed")
        .map(|s| (s["id"].as_u64().unwrap(), 0))
        .collect();
    let mut moving = false;
    for r in p["regions"].as_array().unwrap() {
        moving |= !r["target"].is_null();
        for rep in r["replicas"].as_array().unwrap() {
            moving |= rep["learner"].as_bool().unwrap();
            *per.entry(rep["store"].as_u64().unwrap()).or_default() += 1;
        }
    }
    for s in p["placement"]["replicas"].as_array().unwrap() {
        *per.entry(s.as_u64().unwrap()).or_default() += 1;
    }
    (per, moving)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_join_and_leave_under_load_and_placement_survives_its_leader() {
    let mut c = TestCluster::start(&["--placement-heartbeat-ms", "200"]);
    assert!(
        c.wait_ready(Duration::from_secs(30)).await,
        "cluster not ready\n{}",
        c.logs()
    );
    let first_three = c.endpoints().join(",");
    let t0 = Instant::now();
    // The clients know only the first three stores (as a client started before the cluster
    // grew): every key stays reachable through them.
    let load = Load::start(
        &c,
        LoadConfig {
            clients: CLIENTS,
            resp_clients: 0,
            op_timeout: Duration::from_secs(20),
        },
    )
    .await;
    load.progress(&c, "before the joins").await;

    // Two stores join; placement rebalances onto them.
    eprintln!("joining at {:?}", t0.elapsed());
    let s4 = c.join_new_store();
    let s5 = c.join_new_store();
    let deadline = Instant::now() + Duration::from_secs(90);
    let joined = loop {
        if let Some(p) = placement(&first_three) {
            let (per, moving) = layout(&p);
            let ids: Vec<u64> = per.keys().copied().collect();
            if ids.len() == 5
                && !moving
                && per.values().max().unwrap() - per.values().min().unwrap() <= 1
            {
                break p;
            }
        }
        assert!(
            Instant::now() < deadline,
            "stores {} and {} did not get their share within 90 s: {:?}\n{}",
            s4 + 1,
            s5 + 1,
            placement(&first_three),
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    load.progress(&c, "after the joins").await;

    // Drain one of the first three that does not lead placement, and SIGKILL placement's
    // leader while the drain runs.
    let leader = joined["placement"]["leader_store"].as_u64().unwrap() as usize;
    let drained = (1..=3).find(|s| *s != leader).unwrap();
    let all = c.endpoints().join(",");
    eprintln!("draining store {drained} at {:?}", t0.elapsed());
    let drain = {
        let all = all.clone();
        std::thread::spawn(move || {
            raftkv(&[
                "store",
                "drain",
                &drained.to_string(),
                "--wait-secs",
                "120",
                "--endpoints",
                &all,
            ])
        })
    };
    load.progress(&c, "into the drain").await;
    eprintln!("killing store {leader} at {:?}", t0.elapsed());
    c.kill(leader - 1);
    load.progress(&c, "with placement's leader dead").await;
    eprintln!("restarting store {leader} at {:?}", t0.elapsed());
    c.spawn(leader - 1);
    let (ok, out, err) = tokio::task::spawn_blocking(move || drain.join().unwrap())
        .await
        .unwrap();
    assert!(
        ok,
        "drain of store {drained} failed: {out}{err}\n{}",
        c.logs()
    );
    assert!(out.contains("removed"), "{out}");
    load.progress(&c, "after the drain").await;

    let outcome = load.finish().await;
    let errors = outcome.errors;
    assert!(
        errors.is_empty(),
        "{} client errors: {:#?}\n{}",
        errors.len(),
        errors,
        c.logs()
    );

    // The final layout: the drained store removed, four stores balanced within one.
    let (ok, list, err) = raftkv(&["store", "list", "--endpoints", &all]);
    assert!(ok, "store list: {err}");
    let removed_line = list
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&drained.to_string()))
        .unwrap_or_else(|| panic!("store {drained} missing from:\n{list}"));
    assert!(removed_line.contains("Removed"), "{list}");
    // The drain is done once the store holds nothing; the rebalance it started may still
    // be moving other replicas for a moment.
    let deadline = Instant::now() + Duration::from_secs(60);
    let p = loop {
        let p = placement(&all).expect("placement answers");
        if !layout(&p).1 {
            break p;
        }
        if Instant::now() >= deadline {
            let (_, st, _) = raftkv(&["status", "--endpoints", &all]);
            panic!(
                "still moving 60 s after the drain: {p}\nstatus:\n{st}\n{}",
                c.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (per, _) = layout(&p);
    assert_eq!(per.len(), 4, "{p}");
    assert!(
        per.values().max().unwrap() - per.values().min().unwrap() <= 1,
        "unbalanced: {per:?}"
    );
    assert!(!per.contains_key(&(drained as u64)), "{p}");

    let ops = outcome.operations;
    eprintln!(
        "placement: {} operations, {} completed, final layout {per:?}, config {}",
        ops.len(),
        outcome.completed,
        p["config"]
    );
    let r = lincheck::check(&KvModel, &ops, &lincheck::CheckOptions::default())
        .expect("well-formed history");
    assert!(
        r.is_ok(),
        "history of {} ops is not linearizable: {r}",
        ops.len()
    );
}
