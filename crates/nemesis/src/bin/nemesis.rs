//! Long nemesis runs: `cargo build --release -p raftkv -p nemesis && target/release/nemesis
//! --seconds 600`. Exits non-zero on any failure, printing the seed, the kept logs and why.
//!
//! A run that broke no invariant still fails (exit 1, `NEMESIS FAILED ... tested less than it
//! claims`) when it did not test what it claims ([`nemesis::Report::shortfalls`]): a claimed
//! fault kind never executed, fewer acknowledged writes over gRPC or over RESP than the floor,
//! or nothing read back at the end. The floor per protocol is 125 acknowledged writes per
//! client of that protocol and minute of `--seconds` (`nemesis::acked_writes_floor`; 500 for
//! the default 4 clients and 60 s, as `tests/smoke.rs` asserts), or `--min-acked-writes`.

use clap::Parser;
use std::time::Duration;

#[derive(Parser)]
#[command(about = "Black-box nemesis run against real raftkv server processes")]
struct Args {
    /// Seconds of fault schedule.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Seed of the fault schedule and client choices (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, default_value_t = 4)]
    grpc_clients: usize,
    #[arg(long, default_value_t = 4)]
    resp_clients: usize,
    /// The raftkv binary (default: next to this one).
    #[arg(long, env = "RAFTKV_BIN")]
    raftkv_bin: Option<std::path::PathBuf>,
    /// Servers' `--snapshot-threshold-entries` (default: the seed picks 200, 2000 or 10000).
    #[arg(long)]
    snapshot_threshold_entries: Option<u64>,
    /// Canary: gRPC reads use `get_stale`, so the run should FAIL (shows stale reads are caught).
    #[arg(long)]
    stale_reads_canary: bool,
    /// Fail if network namespaces cannot be made (default: fall back to process faults).
    #[arg(long)]
    require_netns: bool,
    /// Process faults only, on 127.0.0.1.
    #[arg(long, conflicts_with = "require_netns")]
    no_netns: bool,
    /// Fail unless at least this many writes were acknowledged over gRPC and over RESP each
    /// (default: 125 per client of the protocol and minute of --seconds, e.g. 5,000 for 4
    /// clients and 600 s; a protocol without clients has no floor).
    #[arg(long)]
    min_acked_writes: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = match args.raftkv_bin {
        Some(b) => b,
        None => nemesis::locate_raftkv().map_err(anyhow::Error::msg)?,
    };
    let netns = if args.require_netns {
        nemesis::NetnsPolicy::Require
    } else if args.no_netns {
        nemesis::NetnsPolicy::Off
    } else {
        nemesis::NetnsPolicy::from_env()
    };
    let seed = args.seed.unwrap_or_else(nemesis::seed_from_clock);
    let fault_time = Duration::from_secs(args.seconds);
    let floor = |clients: usize| {
        args.min_acked_writes
            .unwrap_or_else(|| nemesis::acked_writes_floor(clients, fault_time))
    };
    let (min_grpc_writes, min_resp_writes) = (floor(args.grpc_clients), floor(args.resp_clients));
    let cfg = nemesis::RunConfig {
        bin,
        fault_time,
        seed,
        netns,
        grpc_clients: args.grpc_clients,
        resp_clients: args.resp_clients,
        snapshot_threshold_entries: args.snapshot_threshold_entries,
        stale_reads: args.stale_reads_canary,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match runtime.block_on(nemesis::run(cfg)) {
        Ok(report) => {
            println!("{report}");
            let shortfalls = report.shortfalls(min_grpc_writes, min_resp_writes);
            if !shortfalls.is_empty() {
                eprintln!(
                    "NEMESIS FAILED (seed {seed}): no invariant broke, but the run tested less than it claims:"
                );
                for shortfall in &shortfalls {
                    eprintln!("  - {shortfall}");
                }
                eprintln!(
                    "rerun the same schedule and client choices (timing differs): nemesis --seed {seed} --seconds {}",
                    args.seconds
                );
                std::process::exit(1);
            }
            println!(
                "NEMESIS PASSED: every claimed fault kind executed, acknowledged writes gRPC {} (floor {min_grpc_writes}), RESP {} (floor {min_resp_writes})",
                report.grpc_writes_acked, report.resp_writes_acked
            );
            Ok(())
        }
        Err(failure) => {
            eprintln!("{failure}");
            std::process::exit(1);
        }
    }
}
