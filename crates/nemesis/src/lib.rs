//! # nemesis — black-box fault testing of real `raftkv server` processes
//!
//! Three stores run as separate processes, each in its own network namespace, driven by
//! concurrent gRPC and Redis-protocol clients while a seeded schedule injects faults (SIGKILL +
//! restart, SIGSTOP/SIGCONT, partitions, one-way partitions, random loss, slow links). At the
//! end everything is healed, every key is read back, and the recorded history is checked for
//! per-key linearizability by `lincheck`; every acknowledged write-once put must be readable.
//! Where namespaces cannot be made, the run says so loudly and injects process faults only
//! (or fails, with `RAFTKV_REQUIRE_NETNS=1`). See `docs/TESTING.md`, "Black-box nemesis".
//!
//! ## Module map
//! - [`net`]: the bridge, namespaces and veths on 127.0.0.0/8, firewall rules (iptables or
//!   nft) for partitions and loss, teardown.
//! - [`proxy`]: [`proxy::NsRuntime`] (a tokio runtime whose sockets live in a namespace) and
//!   [`proxy::LinkProxy`], the delaying TCP proxy that makes slow links without `tc netem`.
//! - [`cluster`]: [`cluster::Cluster`], the server processes, their addresses and process
//!   faults.
//! - [`schedule`]: the seeded fault [`schedule::Schedule`] (pure, unit-tested).
//! - [`workload`]: the clients and the mapping of gRPC and RESP commands onto `lincheck`'s
//!   `KvModel`.
//! - [`run`]: one run end to end, the [`run::Report`] and the [`run::Failure`].
//!
//! The test `tests/smoke.rs` runs 60 s of faults (`NEMESIS_SECONDS` for more); the binary
//! `nemesis` runs long soaks. Both fail a run that did not test what it claims: a claimed
//! fault kind never executed or too few acknowledged writes per protocol.

pub mod cluster;
pub mod net;
pub mod proxy;
pub mod run;
pub mod schedule;
pub mod workload;

pub use run::{
    acked_writes_floor, run, Failure, NemesisError, NetnsPolicy, Report, RunConfig,
    MIN_ACKED_WRITES_PER_CLIENT_MINUTE,
};

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Crates whose sources go into the `raftkv` binary: a binary older than any of them is stale.
const SERVER_CRATES: [&str; 10] = [
    "api",
    "client",
    "kv",
    "raft",
    "raft-log",
    "raftkv",
    "resp",
    "server",
    "store",
    "transport",
];
/// Directory levels searched for sources (bounds the walk).
const SOURCE_DEPTH_MAX: usize = 8;

/// Finds the `raftkv` binary: `$RAFTKV_BIN`, or `raftkv` next to the running executable or
/// one directory up (a test runs from `target/<profile>/deps/`). The error says how to build
/// it. A binary older than the workspace's server sources is refused as stale.
pub fn locate_raftkv() -> Result<PathBuf, String> {
    if let Ok(path) = std::env::var("RAFTKV_BIN") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("RAFTKV_BIN={} is not a file", path.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("raftkv"))
        .collect();
    let Some(bin) = candidates.iter().find(|p| p.is_file()) else {
        return Err(format!(
            "no raftkv binary at {}; build it first with `cargo build -p raftkv` (same profile \
             and CARGO_TARGET_DIR as this run), or set RAFTKV_BIN",
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" or ")
        ));
    };
    check_fresh(bin)?;
    Ok(bin.clone())
}

fn newest_mtime(dir: &Path, depth: usize, newest: &mut Option<(SystemTime, PathBuf)>) {
    if depth > SOURCE_DEPTH_MAX {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            newest_mtime(&path, depth + 1, newest);
        } else if let Ok(modified) = entry.metadata().and_then(|m| m.modified()) {
            if newest.as_ref().map_or(true, |(t, _)| modified > *t) {
                *newest = Some((modified, path));
            }
        }
    }
}

/// Refuses a binary older than the server sources of this checkout (when they are present),
/// because testing a stale server would pass or fail for the wrong code.
fn check_fresh(bin: &Path) -> Result<(), String> {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let built = std::fs::metadata(bin)
        .and_then(|m| m.modified())
        .map_err(|e| format!("cannot stat {}: {e}", bin.display()))?;
    let mut newest = None;
    for name in SERVER_CRATES {
        newest_mtime(&crates.join(name).join("src"), 0, &mut newest);
    }
    match newest {
        Some((modified, path)) if modified > built => Err(format!(
            "{} is older than {}; rebuild it with `cargo build -p raftkv` (or set RAFTKV_BIN)",
            bin.display(),
            path.display()
        )),
        _ => Ok(()),
    }
}

/// A seed from the clock, for runs that were not given one.
pub fn seed_from_clock() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ u64::from(std::process::id())
}
