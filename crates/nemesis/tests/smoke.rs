//! The CI nemesis smoke: 60 s of faults against three real `raftkv server` processes in
//! network namespaces (`NEMESIS_SECONDS` to change, `NEMESIS_SEED` to pick the seed).
//! Needs `target/<profile>/raftkv`: run `cargo build -p raftkv` first (CI's
//! `cargo test --workspace` builds it).

use std::time::Duration;

const DEFAULT_SECONDS: u64 = 60;

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
    let cfg = nemesis::RunConfig {
        bin,
        fault_time: Duration::from_secs(env_u64("NEMESIS_SECONDS").unwrap_or(DEFAULT_SECONDS)),
        seed: env_u64("NEMESIS_SEED").unwrap_or_else(nemesis::seed_from_clock),
        netns: nemesis::NetnsPolicy::from_env(),
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
    match runtime.block_on(nemesis::run(cfg)) {
        Ok(report) => {
            eprintln!("{report}");
            assert!(
                report.ops_completed > 100,
                "only {} operations completed",
                report.ops_completed
            );
            assert!(
                report.grpc_completed > 0 && report.resp_completed > 0,
                "{report}"
            );
        }
        Err(failure) => panic!("{failure}"),
    }
}
