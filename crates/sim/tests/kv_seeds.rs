//! Whole-cluster seeds: the real store + kv + log engine of 3 stores over the fault-injecting
//! file system. `SIM_KV_SEEDS` / `SIM_KV_SECONDS` choose how many and how long (CI: 32 × 20 s).

use sim::kv_cluster::{run_kv_seed, KvSimOptions};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} must be a number"))
        })
        .unwrap_or(default)
}

#[test]
fn whole_cluster_seeds_stay_linearizable_and_converge() {
    let seeds = env_u64("SIM_KV_SEEDS", 32);
    let seconds = env_u64("SIM_KV_SECONDS", 20);
    let mut failures = Vec::new();
    let mut completed = 0;
    for seed in 0..seeds {
        let mut o = KvSimOptions::new(seed);
        o.sim_seconds = seconds;
        match std::panic::catch_unwind(|| run_kv_seed(&o)) {
            Ok(Ok(out)) => completed += out.ops_completed,
            Ok(Err(e)) => failures.push(e),
            Err(_) => failures.push(format!(
                "seed {seed} panicked\n  replay: {}",
                sim::replay_kv_command(seed)
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        completed as u64 > seeds * 100,
        "clients completed only {completed} operations"
    );
}

/// The check can fail: with reads served from the local replica (no ReadIndex) the same
/// workload must be caught as not linearizable.
#[test]
fn whole_cluster_checker_catches_stale_local_reads() {
    let caught = (0..4).any(|seed| {
        let mut o = KvSimOptions::new(seed);
        o.mutant_local_reads = true;
        matches!(run_kv_seed(&o), Err(e) if e.contains("not linearizable"))
    });
    assert!(
        caught,
        "local reads without ReadIndex went unnoticed on seeds 0-3"
    );
}
