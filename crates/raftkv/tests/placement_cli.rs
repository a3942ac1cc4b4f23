//! Placement's command-line paths with real processes, each bounded in time: `raftkv region
//! move` puts a region's replicas on exactly the stores asked for (a joined one among them)
//! and its keys stay readable; `raftkv placement query N` answers an old configuration as it
//! was, a number past the latest with the latest, and refuses one never kept; a store is
//! kept out of a cluster that is not its own (a new one given another cluster's id, and the
//! data directory of another cluster's store); `raftkv playground --restart-crashed`
//! restarts a store that was SIGKILLed and says so.

mod common;

use common::TestCluster;
use serde_json::Value;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Pause between two checks of a condition a test waits for.
const POLL: Duration = Duration::from_millis(100);

/// Runs the `raftkv` binary: (success, stdout, stderr).
fn raftkv(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_raftkv"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run raftkv");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `raftkv placement query [N] --json` through `endpoints`.
fn placement(endpoints: &str, config: Option<u64>) -> Result<Value, String> {
    let n = config.map(|n| n.to_string());
    let mut args = vec!["placement", "query"];
    if let Some(n) = &n {
        args.push(n.as_str());
    }
    args.extend(["--json", "--endpoints", endpoints]);
    let (ok, out, err) = raftkv(&args);
    if !ok {
        return Err(format!("raftkv {args:?} failed: {err}"));
    }
    serde_json::from_str(&out).map_err(|e| format!("not JSON ({e}): {out}"))
}

/// The ids of the stores a placement answer lists, sorted.
fn store_ids(p: &Value) -> Vec<u64> {
    let mut ids: Vec<u64> = p["stores"]
        .as_array()
        .expect("stores")
        .iter()
        .map(|s| s["id"].as_u64().expect("store id"))
        .collect();
    ids.sort_unstable();
    ids
}

/// A store's entry in a placement answer.
fn store(p: &Value, id: u64) -> Option<&Value> {
    p["stores"]
        .as_array()
        .expect("stores")
        .iter()
        .find(|s| s["id"] == id)
}

/// A region's entry in a placement answer.
fn region(p: &Value, id: u64) -> Option<&Value> {
    p["regions"]
        .as_array()
        .expect("regions")
        .iter()
        .find(|r| r["id"] == id)
}

/// The region of a placement answer that holds `key`.
fn region_holding<'a>(p: &'a Value, key: &str) -> &'a Value {
    p["regions"]
        .as_array()
        .expect("regions")
        .iter()
        .find(|r| {
            let start = r["start_key"].as_str().expect("start_key");
            key >= start && r["end_key"].as_str().is_none_or(|end| key < end)
        })
        .unwrap_or_else(|| panic!("no region holds {key:?}: {p}"))
}

/// The stores holding a replica (voter or learner) of a region entry, sorted.
fn replica_stores(r: &Value) -> Vec<u64> {
    let mut s: Vec<u64> = r["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .map(|rep| rep["store"].as_u64().expect("replica store"))
        .collect();
    s.sort_unstable();
    s
}

/// Whether a region entry is still moving: a target set, or a learner.
fn region_moving(r: &Value) -> bool {
    !r["target"].is_null()
        || r["replicas"]
            .as_array()
            .expect("replicas")
            .iter()
            .any(|rep| rep["learner"].as_bool() == Some(true))
}

/// Whether any data region of a placement answer is still moving.
fn moving(p: &Value) -> bool {
    p["regions"]
        .as_array()
        .expect("regions")
        .iter()
        .any(region_moving)
}

/// Asks `probe` every [`POLL`] until it answers `Ok`, for at most `timeout`; `Err` with its
/// last answer after that.
async fn poll<T>(
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe() {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(last);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits (bounded) until the cluster behind `endpoints` lists a store beyond the bootstrap
/// three as Up and nothing moves any more (the rebalance of its Join done); returns that
/// answer and the new store's id.
async fn wait_joined(c: &TestCluster, endpoints: &str) -> (Value, u64) {
    poll(Duration::from_secs(90), || {
        let p = placement(endpoints, None)?;
        let new: Vec<u64> = store_ids(&p).into_iter().filter(|s| *s > 3).collect();
        match new.as_slice() {
            [id] if store(&p, *id).is_some_and(|s| s["state"] == "Up") && !moving(&p) => {
                Ok((p, *id))
            }
            _ => Err(format!("not yet: {p}")),
        }
    })
    .await
    .unwrap_or_else(|last| {
        panic!(
            "the joined store was not Up with its share within 90 s: {last}\n{}",
            c.logs()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_move_puts_replicas_where_asked() {
    let mut c = TestCluster::start(&["--placement-heartbeat-ms", "200"]);
    assert!(
        c.wait_ready(Duration::from_secs(30)).await,
        "cluster not ready\n{}",
        c.logs()
    );
    let first_three = c.endpoints().join(",");
    // Keys in each bootstrap region ([.., g), [g, p), [p, ..)).
    let keys: Vec<(String, String)> = ["a", "h", "q"]
        .iter()
        .flat_map(|p| (0..4).map(move |i| (format!("{p}{i}"), format!("{p}{i}-value"))))
        .collect();
    for (k, v) in &keys {
        let (ok, out, err) = raftkv(&["put", k, v, "--endpoints", &first_three]);
        assert!(
            ok && out.trim() == "OK",
            "put {k}: {out}{err}\n{}",
            c.logs()
        );
    }
    c.join_new_store();
    let (p, new_id) = wait_joined(&c, &first_three).await;
    let config_before = p["config"].as_u64().expect("config number");

    // Move the region of "h" onto three stores, the joined one among them, that differ from
    // where it is now (the rebalance may have put a replica on the joined store already).
    let r = region_holding(&p, "h0");
    let id = r["id"].as_u64().expect("region id");
    let current = replica_stores(r);
    assert_eq!(current.len(), 3, "{p}");
    let mut target: Vec<u64> = if current.contains(&new_id) {
        // Keep the joined store and one other; swap the third for the store it lacks.
        let lacking = (1..=3)
            .find(|s| !current.contains(s))
            .expect("a bootstrap store without a replica");
        let kept = current.iter().copied().filter(|s| *s != new_id).take(1);
        kept.chain([new_id, lacking]).collect()
    } else {
        vec![current[0], current[1], new_id]
    };
    target.sort_unstable();
    assert_ne!(target, current, "the move must change something: {p}");
    let to = target
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let all = c.endpoints().join(",");
    let (ok, out, err) = raftkv(&[
        "region",
        "move",
        &id.to_string(),
        "--to",
        &to,
        "--wait-secs",
        "120",
        "--endpoints",
        &all,
    ]);
    assert!(
        ok,
        "region move {id} --to {to} failed: {out}{err}\n{}",
        c.logs()
    );
    assert!(
        out.contains(&format!("region {id} is on stores {target:?}")),
        "{out}"
    );

    // Placement shows the region exactly there, all voters, its target reached (cleared).
    let after = poll(Duration::from_secs(30), || {
        let p = placement(&all, None)?;
        let there =
            region(&p, id).is_some_and(|r| replica_stores(r) == target && !region_moving(r));
        if there {
            Ok(p)
        } else {
            Err(format!("not yet: {p}"))
        }
    })
    .await
    .unwrap_or_else(|last| {
        panic!(
            "region {id} not on exactly {target:?} within 30 s of the move: {last}\n{}",
            c.logs()
        )
    });
    let config_after = after["config"].as_u64().expect("config number");
    assert!(
        config_after > config_before,
        "the move made no new configuration ({config_before} before, {config_after} after)"
    );

    // Every key reads back with its value, the moved region's included.
    for (k, v) in &keys {
        let (ok, out, err) = raftkv(&["get", k, "--endpoints", &all]);
        assert!(ok, "get {k} after the move: {err}\n{}", c.logs());
        assert_eq!(out.trim_end(), v.as_str(), "value of {k} after the move");
    }

    // Through the Redis port of a bootstrap store the region left: multi-key commands on its
    // keys, SCAN and DBSIZE see it (placed by placement's configuration, forwarded).
    let outside = (1..=3u64)
        .find(|s| !target.contains(s))
        .expect("a bootstrap store the region left");
    let redis = redis::Client::open(c.redis_url(outside as usize - 1)).expect("redis url");
    let mut conn = redis
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let moved: Vec<&(String, String)> = keys.iter().filter(|(k, _)| k.starts_with('h')).collect();
    let names: Vec<&str> = moved.iter().map(|(k, _)| k.as_str()).collect();
    let got: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&names)
        .query_async(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("MGET {names:?} via store {outside}: {e}\n{}", c.logs()));
    let want: Vec<Option<String>> = moved.iter().map(|(_, v)| Some(v.clone())).collect();
    assert_eq!(
        got, want,
        "MGET via store {outside}, which holds no replica of region {id}"
    );
    let _: () = redis::cmd("MSET")
        .arg(names[0])
        .arg("m0")
        .arg(names[1])
        .arg("m1")
        .query_async(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("MSET via store {outside}: {e}"));
    let got: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&names[..2])
        .query_async(&mut conn)
        .await
        .expect("MGET after MSET");
    assert_eq!(got, vec![Some("m0".to_string()), Some("m1".to_string())]);
    let size: u64 = redis::cmd("DBSIZE")
        .query_async(&mut conn)
        .await
        .expect("DBSIZE");
    assert_eq!(size, keys.len() as u64, "DBSIZE via store {outside}");
    let mut seen = Vec::new();
    let mut cursor = 0u64;
    for _ in 0..100 {
        let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(5)
            .query_async(&mut conn)
            .await
            .expect("SCAN");
        seen.extend(page);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    seen.sort();
    let mut all_keys: Vec<String> = keys.iter().map(|(k, _)| k.clone()).collect();
    all_keys.sort();
    assert_eq!(seen, all_keys, "SCAN via store {outside}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_query_of_an_old_configuration() {
    let mut c = TestCluster::start(&["--placement-heartbeat-ms", "200"]);
    assert!(
        c.wait_ready(Duration::from_secs(30)).await,
        "cluster not ready\n{}",
        c.logs()
    );
    let endpoints = c.endpoints().join(",");
    c.join_new_store();
    let (latest, new_id) = wait_joined(&c, &endpoints).await;
    let latest_n = latest["config"].as_u64().expect("config number");
    assert!(latest_n > 1, "the join made no new configuration: {latest}");

    // Configuration 1 is the bootstrap layout, as it was before the join.
    let first = placement(&endpoints, Some(1)).unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert_eq!(first["config"], 1, "{first}");
    assert_eq!(first["oldest_config"], 1, "{first}");
    assert_eq!(store_ids(&first), vec![1, 2, 3], "{first}");
    for r in first["regions"].as_array().expect("regions") {
        assert!(
            replica_stores(r).iter().all(|s| (1..=3).contains(s)),
            "configuration 1 has a replica off the bootstrap stores: {first}"
        );
    }
    // The table form names it too.
    let (ok, out, err) = raftkv(&["placement", "query", "1", "--endpoints", &endpoints]);
    assert!(ok, "placement query 1: {err}");
    assert!(out.starts_with("configuration 1 (kept from 1),"), "{out}");

    // A number past the latest answers the latest (the shard controller's Query(n); see
    // PlacementState::query), not an error.
    let past = placement(&endpoints, Some(999_999)).unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let past_n = past["config"].as_u64().expect("config number");
    assert!(
        past_n >= latest_n && past_n < 999_999,
        "query 999999 answered configuration {past_n}, latest seen {latest_n}"
    );
    assert!(store_ids(&past).contains(&new_id), "{past}");

    // Configuration 0 never existed: refused as older than the oldest kept, naming the number
    // asked and the oldest — through every store, the ones that forward the query to
    // placement's leader included (the refusal is final: passed on with its reason, and the
    // CLI does not retry it).
    let want = "configuration 0 is no longer kept (the oldest kept is 1)";
    for ep in &c.endpoints() {
        let (ok, out, err) = raftkv(&["placement", "query", "0", "--json", "--endpoints", ep]);
        assert!(!ok, "placement query 0 answered: {out}");
        assert!(out.is_empty(), "placement query 0 printed: {out}");
        assert!(
            err.contains(want),
            "placement query 0 via {ep} was not refused with {want:?}: {err}"
        );
        assert!(
            !err.contains("did not answer"),
            "a final refusal was retried as if placement had not answered: {err}"
        );
    }
}

/// Runs `raftkv server ARGS` on fresh 127.0.0.1 ports, its stderr into the file `log`, for at
/// most `timeout` (then kills it: `None`). Returns how it ended and its stderr.
fn run_server(log: &Path, args: &[&str], timeout: Duration) -> (Option<ExitStatus>, String) {
    let (peer, client) = (common::free_port(), common::free_port());
    let file = std::fs::File::create(log).expect("log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_raftkv"))
        .arg("server")
        .args(args)
        .args(["--peer-addr", &format!("127.0.0.1:{peer}")])
        .args(["--client-addr", &format!("127.0.0.1:{client}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("spawn raftkv server");
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    (status, std::fs::read_to_string(log).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_another_cluster_is_refused() {
    let mut a = TestCluster::start(&["--placement-heartbeat-ms", "200"]);
    let b = TestCluster::start(&["--placement-heartbeat-ms", "200"]);
    for (name, c) in [("A", &a), ("B", &b)] {
        assert!(
            c.wait_ready(Duration::from_secs(30)).await,
            "cluster {name} not ready\n{}",
            c.logs()
        );
    }
    let (a_eps, b_eps) = (a.endpoints().join(","), b.endpoints().join(","));
    let id_of = |endpoints: &str| {
        let p = placement(endpoints, None).unwrap_or_else(|e| panic!("{e}"));
        p["cluster_id"].as_u64().expect("cluster_id")
    };
    let (a_id, b_id) = (id_of(a_eps.as_str()), id_of(b_eps.as_str()));
    assert_eq!(
        a_id,
        a.cluster_id(),
        "placement of A has another cluster id"
    );
    assert_eq!(
        b_id,
        b.cluster_id(),
        "placement of B has another cluster id"
    );
    assert_ne!(a_id, b_id, "the two test clusters got the same id");
    let dir = tempfile::tempdir().expect("temp dir");
    let a_seed = format!("127.0.0.1:{}", a.ports[0].0);
    let b_seed = format!("127.0.0.1:{}", b.ports[0].0);

    // A new store told it belongs to B, joining through A: refused before it asks to join.
    let fresh = dir.path().join("fresh");
    let fresh_arg = fresh.to_str().expect("UTF-8 temp path");
    let (status, stderr) = run_server(
        &dir.path().join("fresh.log"),
        &[
            "--join",
            &a_seed,
            "--cluster-id",
            &b_id.to_string(),
            "--data-dir",
            fresh_arg,
        ],
        Duration::from_secs(45),
    );
    let status = status.unwrap_or_else(|| {
        panic!(
            "a store of cluster {b_id} joining cluster {a_id} still ran after 45 s:\n{stderr}\n{}",
            a.logs()
        )
    });
    assert!(!status.success(), "it exited with {status}:\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "--join {a_seed} reaches cluster {a_id}, not --cluster-id {b_id}"
        )),
        "the refusal should name both cluster ids:\n{stderr}"
    );
    assert!(
        !fresh.join("identity").exists() && !fresh.join("join-token").exists(),
        "the refused store kept an identity or a join token"
    );
    // A is untouched: it serves, and placement lists no new store.
    let (ok, out, err) = raftkv(&["put", "after-refusal", "served", "--endpoints", &a_eps]);
    assert!(
        ok,
        "A refused a write after the refusal: {out}{err}\n{}",
        a.logs()
    );
    let (ok, out, err) = raftkv(&["get", "after-refusal", "--endpoints", &a_eps]);
    assert!(ok && out.trim_end() == "served", "A: {out}{err}");
    let p = placement(&a_eps, None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(store_ids(&p), vec![1, 2, 3], "{p}");

    // The data directory of a store that joined A, started to join B: refused too, and the
    // directory still belongs to A.
    let joined = a.join_new_store();
    let (_, a4) = wait_joined(&a, &a_eps).await;
    assert!(a.terminate(joined), "A's store {a4} did not stop cleanly");
    let a4_dir = a.data_dir(joined);
    let identity = |dir: &Path| -> Value {
        let text = std::fs::read_to_string(dir.join("identity")).expect("identity file");
        serde_json::from_str(&text).expect("identity JSON")
    };
    let before = identity(a4_dir.as_path());
    assert_eq!(before["store_id"], a4, "{before}");
    assert_eq!(before["cluster_id"], a_id, "{before}");
    let (status, stderr) = run_server(
        &dir.path().join("a-store-to-b.log"),
        &[
            "--join",
            &b_seed,
            "--data-dir",
            a4_dir.to_str().expect("UTF-8 temp path"),
        ],
        Duration::from_secs(45),
    );
    let status = status.unwrap_or_else(|| {
        panic!(
            "store {a4} of cluster {a_id} still ran 45 s after --join to {b_id}:\n{stderr}\n{}",
            b.logs()
        )
    });
    assert!(!status.success(), "it exited with {status}:\n{stderr}");
    // Refused for what it is (a store of A), not for an accident of ids in B.
    let why =
        format!("holds store {a4} of cluster {a_id}, but --join {b_seed} reaches cluster {b_id}");
    assert!(stderr.contains(&why), "not refused with {why:?}:\n{stderr}");
    let p = placement(&b_eps, None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(store_ids(&p), vec![1, 2, 3], "B lists a store of A: {p}");
    assert_eq!(
        identity(a4_dir.as_path()),
        before,
        "the refused start changed the identity"
    );
}

/// Sends `sig` to process `pid`; whether it was delivered.
fn signal(pid: u32, sig: libc::c_int) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) touches no memory of ours; `pid` is a process this test started.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// The parent of process `pid`, from /proc.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": the command name may hold spaces and parentheses.
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Every process with an argument for which `matches` holds, from /proc.
fn pids_with_arg(matches: &dyn Fn(&[u8]) -> bool) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(matches))
        })
        .collect()
}

/// The running `raftkv server` of a playground store: the playground's child whose
/// `--data-dir` is `dir`.
fn store_pids(dir: &Path, playground: u32) -> Vec<u32> {
    let want = dir.as_os_str().as_bytes();
    pids_with_arg(&|a| a == want)
        .into_iter()
        .filter(|pid| parent_of(*pid) == Some(playground))
        .collect()
}

/// Every process with an argument under `dir`.
fn pids_under(dir: &Path) -> Vec<u32> {
    let prefix = dir.as_os_str().as_bytes();
    pids_with_arg(&|a| a.starts_with(prefix))
}

/// A base port for a 3-store playground (ports base+1..=base+3, +101.., +201.., +301..), all
/// checked free: below `common::free_port`'s windows (12000 and up) and the ephemeral ports,
/// chosen by process id so that two test runs at once try different ones first.
fn playground_base_port() -> u16 {
    const SLOTS: u16 = 20;
    let first = (std::process::id() % u32::from(SLOTS)) as u16;
    for k in 0..SLOTS {
        let base = 2_000 + ((first + k) % SLOTS) * 400;
        let free = (1..=3u16).all(|i| {
            [0u16, 100, 200, 300]
                .iter()
                .all(|off| std::net::TcpListener::bind(("127.0.0.1", base + off + i)).is_ok())
        });
        if free {
            return base;
        }
    }
    panic!("no free playground ports from 2000 to 10000");
}

/// A running `raftkv playground` with its data and output in a temp dir. Dropped (a failed
/// assertion too), it is stopped, and whatever still runs with an argument in its data dir
/// is killed.
struct Playground {
    child: Option<Child>,
    root: tempfile::TempDir,
}

impl Playground {
    fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.root.path().join("playground.err")).unwrap_or_default()
    }

    /// The last lines of its stderr (its own and its stores'), for failure messages.
    fn stderr_tail(&self) -> String {
        let text = self.stderr();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("playground running").id()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// SIGTERM (the playground stops its stores), then up to 30 s for it to exit: how it
    /// exited, or `None` when it had to be killed (or was stopped before).
    fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Playground {
    fn drop(&mut self) {
        self.stop();
        // Stores orphaned by a playground that was killed (or died) must not outlive the test.
        for pid in pids_under(&self.data_dir()) {
            signal(pid, libc::SIGKILL);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playground_restarts_a_crashed_store_when_asked() {
    let root = tempfile::tempdir().expect("temp dir");
    let data = root.path().join("data");
    let base = playground_base_port();
    let out = std::fs::File::create(root.path().join("playground.out")).expect("stdout file");
    let err = std::fs::File::create(root.path().join("playground.err")).expect("stderr file");
    let child = Command::new(env!("CARGO_BIN_EXE_raftkv"))
        .args(["playground", "--stores", "3", "--restart-crashed"])
        .args(["--base-port", &base.to_string()])
        .arg("--data-dir")
        .arg(&data)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn raftkv playground");
    let mut pg = Playground {
        child: Some(child),
        root,
    };
    let pg_pid = pg.pid();

    // Ready once endpoints.json is written (every store answers on its ports).
    let endpoints_path = data.join("endpoints.json");
    let deadline = Instant::now() + Duration::from_secs(90);
    while !endpoints_path.exists() {
        if let Some(st) = pg.exited() {
            panic!(
                "the playground exited ({st}) before it was ready:\n{}",
                pg.stderr_tail()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no endpoints.json within 90 s:\n{}",
            pg.stderr_tail()
        );
        tokio::time::sleep(POLL).await;
    }
    let eps: Value = serde_json::from_str(
        &std::fs::read_to_string(endpoints_path).expect("read endpoints.json"),
    )
    .expect("endpoints.json is JSON");
    let stores = eps["stores"].as_array().expect("stores");
    assert_eq!(stores.len(), 3, "{eps}");
    assert_eq!(stores[1]["id"], 2, "{eps}");
    let clients: Vec<String> = stores
        .iter()
        .map(|s| s["client"].as_str().expect("client address").to_string())
        .collect();
    let all = clients.join(",");
    let store2 = clients[1].clone();

    // A write the restarted store must still serve.
    poll(Duration::from_secs(60), || {
        let (ok, out, err) = raftkv(&["put", "pg-key", "before-the-crash", "--endpoints", &all]);
        if ok {
            Ok(())
        } else {
            Err(format!("{out}{err}"))
        }
    })
    .await
    .unwrap_or_else(|last| panic!("no write within 60 s: {last}\n{}", pg.stderr_tail()));

    // SIGKILL store 2's server.
    let store2_dir = data.join("store2");
    let old_pid = poll(Duration::from_secs(10), || {
        match store_pids(&store2_dir, pg_pid).as_slice() {
            [pid] => Ok(*pid),
            other => Err(format!("store 2's processes: {other:?}")),
        }
    })
    .await
    .unwrap_or_else(|last| panic!("store 2's server not found: {last}"));
    assert!(
        signal(old_pid, libc::SIGKILL),
        "SIGKILL to store 2 (pid {old_pid}) failed"
    );

    // The playground reports the crash and the restart.
    poll(Duration::from_secs(30), || {
        let text = pg.stderr();
        if text.contains("playground: store 2 crashed (signal: 9")
            && text.contains("playground: store 2 restarted (restart 1 of 5")
        {
            Ok(())
        } else {
            Err(String::new())
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no report of store 2's crash and restart within 30 s:\n{}",
            pg.stderr_tail()
        )
    });

    // Store 2 answers on its client port again, as a new process the playground started.
    poll(Duration::from_secs(60), || {
        let (ok, out, err) = raftkv(&["status", "--json", "--endpoints", &store2]);
        if !ok {
            return Err(err);
        }
        let st: Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
        match store(&st, 2) {
            Some(s) if s["state"] == "Up" => Ok(()),
            _ => Err(format!("store 2 not up: {st}")),
        }
    })
    .await
    .unwrap_or_else(|last| {
        panic!(
            "store 2 did not answer within 60 s of its restart: {last}\n{}",
            pg.stderr_tail()
        )
    });
    let new_pid = match store_pids(&store2_dir, pg_pid).as_slice() {
        [pid] => *pid,
        other => panic!("store 2's processes after the restart: {other:?}"),
    };
    assert_ne!(new_pid, old_pid, "store 2 was not restarted");
    assert!(
        pg.stderr().contains(&format!(", pid {new_pid})")),
        "the playground did not report starting pid {new_pid}:\n{}",
        pg.stderr_tail()
    );
    let value = poll(Duration::from_secs(30), || {
        let (ok, out, err) = raftkv(&["get", "pg-key", "--endpoints", &store2]);
        if ok {
            Ok(out)
        } else {
            Err(err)
        }
    })
    .await
    .unwrap_or_else(|last| panic!("get through store 2: {last}\n{}", pg.stderr_tail()));
    assert_eq!(value.trim_end(), "before-the-crash");

    // SIGTERM stops the playground and every store of it.
    let tail = pg.stderr_tail();
    let status = pg
        .stop()
        .expect("the playground stops within 30 s of SIGTERM");
    assert!(
        status.success(),
        "the playground exited with {status}:\n{tail}"
    );
    let left = pids_under(&data);
    assert!(
        left.is_empty(),
        "processes of the playground still run: {left:?}"
    );
}

/// What heartbeats carry reaches placement: every store's `--labels` and `--capacity-bytes`
/// (recorded through the log), and per-second read and write rates of stores and regions
/// under a load (placement's leader's live view). A malformed `--labels` is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_carry_labels_capacity_and_rates() {
    let c = TestCluster::start(&[
        "--placement-heartbeat-ms",
        "200",
        "--labels",
        "zone=z1,rack=r-7",
        "--capacity-bytes",
        "123456789",
    ]);
    assert!(
        c.wait_ready(Duration::from_secs(30)).await,
        "cluster not ready\n{}",
        c.logs()
    );
    let endpoints = c.endpoints().join(",");
    // A load of puts and gets over the three bootstrap regions until the rates show.
    let mut client = client::Client::connect(c.endpoints())
        .await
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    let mut round = 0u64;
    let answer = loop {
        for k in ["a", "h", "q"] {
            let key = format!("{k}{}", round % 16);
            client
                .put(key.as_bytes(), b"v")
                .await
                .unwrap_or_else(|e| panic!("put {key}: {e}\n{}", c.logs()));
            client
                .get(key.as_bytes())
                .await
                .unwrap_or_else(|e| panic!("get {key}: {e}\n{}", c.logs()));
        }
        round += 1;
        if round.is_multiple_of(20) {
            match placement(&endpoints, None) {
                Ok(p) => {
                    let stores = p["stores"].as_array().cloned().unwrap_or_default();
                    let regions = p["regions"].as_array().cloned().unwrap_or_default();
                    let labelled = stores.len() == 3
                        && stores.iter().all(|s| {
                            s["labels"]["zone"] == "z1"
                                && s["labels"]["rack"] == "r-7"
                                && s["capacity_bytes"] == 123_456_789u64
                        });
                    let rated = |v: &[Value], f: &str| v.iter().any(|x| x[f].as_u64() > Some(0));
                    if labelled
                        && rated(&stores, "writes_per_sec")
                        && rated(&stores, "reads_per_sec")
                        && rated(&regions, "writes_per_sec")
                        && rated(&regions, "reads_per_sec")
                    {
                        break p;
                    }
                    last = p.to_string();
                }
                Err(e) => last = e,
            }
        }
        assert!(
            Instant::now() < deadline,
            "labels, capacity and rates not all in placement within 60 s: {last}\n{}",
            c.logs()
        );
    };
    // `store list` shows them too.
    let (ok, out, err) = raftkv(&["store", "list", "--endpoints", &endpoints]);
    assert!(ok, "store list: {err}");
    assert!(
        out.contains("zone=z1"),
        "store list shows no labels:\n{out}\n{answer}"
    );

    // A malformed label: a clear refusal naming it, before the store binds or joins.
    let dir = tempfile::tempdir().expect("temp dir");
    let (status, stderr) = run_server(
        &dir.path().join("bad-labels.log"),
        &[
            "--join",
            &format!("127.0.0.1:{}", c.ports[0].0),
            "--data-dir",
            dir.path().join("bad").to_str().expect("UTF-8 temp path"),
            "--labels",
            "bad key=x",
        ],
        Duration::from_secs(30),
    );
    let status = status.unwrap_or_else(|| panic!("still running with a bad label:\n{stderr}"));
    assert!(!status.success(), "a bad label was accepted:\n{stderr}");
    assert!(
        stderr.contains("--labels") && stderr.contains("bad key"),
        "the refusal does not name the label:\n{stderr}"
    );
}
