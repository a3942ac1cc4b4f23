//! Times the checker on a generated history and on the same history with an
//! impossible read planted (the expensive case: the search must exhaust
//! every order before answering Illegal).
//!
//! `cargo run --release -p lincheck --example check_speed -- [ops] [keys] [clients] [unknown_per_mille] [ghost_position_percent]`

use std::time::Instant;

use lincheck::kv::{KvInput, KvModel, KvOutput};
use lincheck::testing::{generate_kv_history, KvWorkload};
use lincheck::{check, CheckOptions, CheckResult};

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|arg| arg.parse().ok())
        .collect();
    let arg = |position: usize, default: u64| args.get(position).copied().unwrap_or(default);
    let workload = KvWorkload {
        seed: 42,
        op_count: arg(0, 10_000) as usize,
        key_count: arg(1, 10) as usize,
        client_count: arg(2, 16) as usize,
        unknown_per_mille: arg(3, 10),
        value_domain: None,
        op_duration_max: 20,
    };
    let mut history = generate_kv_history(&workload);
    let unknown_count = history.iter().filter(|op| op.is_unknown()).count();
    println!(
        "{workload:?}: {} ops, {unknown_count} unknown",
        history.len()
    );

    let options = CheckOptions::default();
    let started = Instant::now();
    let result = check(&KvModel, &history, &options);
    println!(
        "linearizable history: {:?} in {:?}",
        verdict(&result),
        started.elapsed()
    );

    // Plant the ghost read in the last completed Get before the requested
    // position: the later it is, the more the search must explore first.
    let position = (history.len() as u64 * arg(4, 100).min(100) / 100) as usize;
    let Some(victim) = history[..position]
        .iter()
        .rposition(|op| matches!(op.input, KvInput::Get { .. }) && !op.is_unknown())
    else {
        println!("no completed read to corrupt");
        return;
    };
    history[victim].output = Some(KvOutput::Get(Some(b"\xffghost".to_vec())));
    let started = Instant::now();
    let result = check(&KvModel, &history, &options);
    println!(
        "with ghost read #{victim}: {:?} in {:?}",
        verdict(&result),
        started.elapsed()
    );
    if let Ok(CheckResult::Illegal(report)) = &result {
        let lines: Vec<&str> = report.detail.lines().collect();
        println!("{}", lines[..lines.len().min(3)].join("\n"));
    }
}

fn verdict(result: &Result<CheckResult, lincheck::HistoryError>) -> &'static str {
    match result {
        Ok(CheckResult::Ok) => "Ok",
        Ok(CheckResult::Illegal(_)) => "Illegal",
        Ok(CheckResult::Unknown { .. }) => "Unknown",
        Err(_) => "invalid history",
    }
}
