//! # sim — deterministic simulation of Raft clusters
//!
//! Runs the real `raft` core of a whole cluster in one thread, with virtual time and one
//! seeded RNG. Nothing here reads a clock or spawns a thread, so a seed replays exactly.
//!
//! ## Module map
//! - [`cluster`]: `Cluster`, N peers plus their "disks" (what survives a crash), a network
//!   that drops, delays, duplicates, reorders and partitions, and an event queue in virtual
//!   time. Scenario tests drive it step by step.
//! - [`checker`]: the safety invariants checked after every event (Election Safety, Log
//!   Matching, Leader Completeness, State Machine Safety, monotonic commit) and the
//!   linearizability check of reads.
//! - [`swarm`]: the randomized fault schedule (swarm testing: each seed picks its own fault
//!   mix), a safety phase with faults and a liveness phase that heals.
//! - [`kv_cluster`]: whole-cluster simulation of the real `store` + `kv` + `raft-log` code of
//!   3-5 stores with 3-8 regions, over the fault-injecting file system, with swarm-chosen
//!   network faults, partitions, crashes (inside an fsync too), pauses, tick drift, leader
//!   transfers and snapshots, and clients that retry with sessions; checks per-key
//!   linearizability with final reads (no lost acknowledged write), recovery within a bound
//!   after healing, and that every replica of a region converges to the same state hash.
//! - [`partition`]: the partition shapes (isolate one, minority/majority, majorities ring,
//!   bridge, one-way) as link matrices, shared by both simulations.
//! - [`tally`]: what each seed's faults did (per kind, with whether the seed turned the
//!   kind on), summed over seeds, printed, and checked: a test or soak fails when a kind it
//!   claims to inject never fired, or clients had too few writes acknowledged.
//! - `main.rs` (binary `raftkv-sim`): run or replay seeds from the command line.

pub mod checker;
pub mod cluster;
pub mod kv_cluster;
pub mod partition;
pub mod swarm;
pub mod tally;

pub use cluster::{Cluster, ClusterOptions, NetFaults};
pub use swarm::{run_seed, SwarmOptions, SwarmOutcome};
pub use tally::{FaultCount, FaultTally};

/// The command that replays one whole-cluster (store + kv + log engine) seed exactly (the
/// length of the fault phase is part of the seed's schedule, so it is in the command).
pub fn replay_kv_command(seed: u64, sim_seconds: u64) -> String {
    format!(
        "cargo run --release -p sim --bin raftkv-sim -- --kv --seed {seed} --sim-seconds {sim_seconds} --verbose"
    )
}

/// The command that replays one seed exactly; printed on every failure.
pub fn replay_command(seed: u64) -> String {
    format!("cargo run --release -p sim --bin raftkv-sim -- --seed {seed} --verbose")
}
