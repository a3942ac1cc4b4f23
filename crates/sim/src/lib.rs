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
//! - `main.rs` (binary `raftkv-sim`): run or replay seeds from the command line.

pub mod checker;
pub mod cluster;
pub mod swarm;

pub use cluster::{Cluster, ClusterOptions, NetFaults};
pub use swarm::{run_seed, SwarmOptions, SwarmOutcome};

/// The command that replays one seed exactly; printed on every failure.
pub fn replay_command(seed: u64) -> String {
    format!("cargo run --release -p sim --bin raftkv-sim -- --seed {seed} --verbose")
}
