//! The CI nemesis smoke: 60 s of faults against three real `raftkv server` processes in
//! network namespaces (`NEMESIS_SECONDS` to change, `NEMESIS_SEED` to pick the seed).
//! Needs `target/<profile>/raftkv`: run `cargo build -p raftkv` first (CI's
//! `cargo test --workspace` builds it).
//!
//! A pass must mean something: besides the run's own invariants (no crash, liveness,
//! acknowledged writes read back, linearizability), this test asserts that the faults and the
//! writes it claims to have tested happened — at least one of every fault kind the run claims,
//! a floor of acknowledged writes over each protocol, and namespaces when CI requires them.

use nemesis::schedule::FaultKind;
use std::time::Duration;

const DEFAULT_SECONDS: u64 = 60;
/// Writes acknowledged over each protocol, at least. A 60 s debug run on 2 shared cores
/// acknowledges thousands per protocol; a run that acknowledged fewer than this tested
/// (almost) nothing but reads.
const MIN_ACKED_WRITES_PER_PROTOCOL: u64 = 500;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number")),
    )
}

#[test]
fn nemesis_smoke_keeps_linearizability_and_acknowledged_writes() {
    let bin = nemesis::locate_raftkv().unwrap_or_else(|e| panic!("{e}"));
    let seed = env_u64("NEMESIS_SEED").unwrap_or_else(nemesis::seed_from_clock);
    let netns = nemesis::NetnsPolicy::from_env();
    eprintln!("NEMESIS smoke: seed {seed} (NEMESIS_SEED={seed} replays the schedule)");
    let cfg = nemesis::RunConfig {
        bin,
        fault_time: Duration::from_secs(env_u64("NEMESIS_SECONDS").unwrap_or(DEFAULT_SECONDS)),
        seed,
        netns,
        grpc_clients: 4,
        resp_clients: 4,
        snapshot_threshold_entries: env_u64("NEMESIS_SNAPSHOT_THRESHOLD"),
        stale_reads: false,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let report = match runtime.block_on(nemesis::run(cfg)) {
        Ok(report) => report,
        Err(failure) => panic!("{failure}"),
    };
    eprintln!("{report}");

    if netns == nemesis::NetnsPolicy::Require {
        assert!(
            report.namespaces,
            "RAFTKV_REQUIRE_NETNS=1 but the run used no namespaces\n{report}"
        );
    }
    // The kinds are decided here, not taken from the report's own claim.
    let expected = FaultKind::claimed(report.namespaces);
    for kind in &expected {
        assert!(
            report.executed(*kind) >= 1,
            "seed {seed}: no {} fault was executed\n{report}",
            kind.name()
        );
    }
    assert!(
        report.grpc_writes_acked >= MIN_ACKED_WRITES_PER_PROTOCOL
            && report.resp_writes_acked >= MIN_ACKED_WRITES_PER_PROTOCOL,
        "seed {seed}: fewer than {MIN_ACKED_WRITES_PER_PROTOCOL} acknowledged writes over gRPC \
         or RESP\n{report}"
    );
    assert!(
        report.write_once_checked > 0 && report.keys_checked > 0,
        "seed {seed}: nothing was read back\n{report}"
    );
}
