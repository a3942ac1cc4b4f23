//! redis-py (PyPI `redis`, the version pinned in scripts/install-redis-py.sh) against real
//! `raftkv server` processes, with the client's default settings (redis-py 8 opens with
//! `HELLO 3`), with `protocol=3` and with `protocol=2`: the lock recipe (SET NX PX, DELIFEQ),
//! TTLs, hashes, MULTI/EXEC pipelines, WATCH increments from several threads, and the key
//! space. The checks are in `tests/redis_py/check.py`.
//!
//! The virtualenv comes from scripts/install-redis-py.sh (CI runs it and sets
//! RAFTKV_REQUIRE_REDIS_PY=1, which turns a missing virtualenv into a failure instead of a
//! loud skip).

mod common;

use common::TestCluster;
use std::path::PathBuf;
use std::time::Duration;

fn python() -> Option<PathBuf> {
    let env = std::env::var_os("RAFTKV_PYENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/pyenv"));
    let python = env.join("bin/python");
    let ok = std::process::Command::new(&python)
        .args(["-c", "import redis"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(python)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_with_default_settings_and_both_protocols() {
    let Some(python) = python() else {
        let msg = "redis-py is not installed: run scripts/install-redis-py.sh";
        if std::env::var_os("RAFTKV_REQUIRE_REDIS_PY").is_some() {
            panic!("{msg}");
        }
        eprintln!("SKIPPED redis_py_with_default_settings_and_both_protocols: {msg}");
        return;
    };
    let c = TestCluster::start(&[]);
    assert!(
        c.wait_ready(Duration::from_secs(30)).await,
        "cluster did not elect leaders in 30 s\n{}",
        c.logs()
    );
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/redis_py/check.py");
    let ports: Vec<String> = c.resp_ports.iter().map(u16::to_string).collect();
    // Bounded: the script's own waits are bounded, and this kills it past 240 s.
    let child = tokio::process::Command::new(&python)
        .arg(&script)
        .args(&ports)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(240), child)
        .await
        .expect("check.py ran over 240 s")
        .expect("run check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "redis-py checks failed ({}):\n{stdout}\n{stderr}\n{}",
        out.status,
        c.logs()
    );
    for protocol in ["default (RESP3)", "protocol=3", "protocol=2"] {
        assert!(
            stdout.contains(&format!(
                "ok protocol={}",
                protocol.trim_start_matches("protocol=")
            )),
            "no passing run for {protocol}:\n{stdout}"
        );
    }
}
