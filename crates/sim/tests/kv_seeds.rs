//! Whole-cluster seeds: the real store + kv + log engine of 3-5 stores and 3-8 regions over
//! the fault-injecting file system (see `sim::kv_cluster` and docs/TESTING.md).
//!
//! `SIM_KV_SEEDS` / `SIM_KV_SECONDS` / `SIM_KV_START` / `SIM_KV_JOBS` choose how many seeds,
//! how many virtual seconds each, the first seed and the threads (default: 64 × 300 s on all
//! cores; the CI soak of 256 × 300 s is the release binary, see docs/TESTING.md).

use sim::kv_cluster::{
    queued_chance_by_seed, run_kv_seed, run_kv_seeds, torn_write_modes_by_seed, KvSimOptions,
};
use sim::FaultTally;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} must be a number"))
        })
        .unwrap_or(default)
}

fn jobs() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    env_u64("SIM_KV_JOBS", cores) as usize
}

/// Runs `seeds` for `seconds` each and fails with every failing seed's replay command;
/// returns what the seeds' faults did.
fn run(seeds: &[u64], seconds: u64) -> FaultTally {
    let results = run_kv_seeds(seeds, seconds, jobs(), &|_| {});
    let failures: Vec<&String> = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} seeds failed:\n{}",
        failures.len(),
        seeds.len(),
        failures
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let mut tally = FaultTally::new();
    let mut refused = 0;
    for (seed, r) in &results {
        let o = r.as_ref().expect("checked above");
        tally.add(*seed, &o.fault_counts(), o.writes_acknowledged);
        refused += o.recoveries_refused;
    }
    println!(
        "{}  recoveries that refused a torn tail (then salvaged): {refused}",
        tally.report()
    );
    tally
}

#[test]
fn whole_cluster_seeds_stay_linearizable_recover_and_converge() {
    let count = env_u64("SIM_KV_SEEDS", 64);
    let start = env_u64("SIM_KV_START", 0);
    let seconds = env_u64("SIM_KV_SECONDS", 300);
    let seeds: Vec<u64> = (start..start + count).collect();
    // Every seed runs the server's own loop (`store::Driver`), which writes a round inline
    // when the store is idle and hands it to the writer otherwise; the seed picks how often a
    // command is queued behind a round. Both paths must be taken (the tally checks the
    // counts: "rounds written inline", "rounds handed to the writer").
    let chances: std::collections::BTreeSet<u64> = seeds
        .iter()
        .map(|&seed| (queued_chance_by_seed(seed) * 100.0) as u64)
        .collect();
    assert!(
        count < 20 || chances.len() == 3,
        "seeds {start}.. cover queued chances {chances:?}: every level must be covered"
    );
    let torn_modes = seeds
        .iter()
        .filter(|&&seed| torn_write_modes_by_seed(seed))
        .count() as u64;
    assert!(
        count < 20 || (torn_modes >= count / 4 && torn_modes <= count * 3 / 4),
        "{torn_modes} of {count} seeds tore writes out of order or with garbage: both ways must be covered"
    );
    let tally = run(&seeds, seconds);
    // Every kind some seed turned on fired (each loss or duplication also on every seed
    // that turned it on), and acknowledged writes reach a floor per seed and virtual second.
    if let Err(e) = tally.check(count * seconds * ACK_FLOOR_PER_SEED_SECOND) {
        panic!("{e}");
    }
    // Floors per kind for the default run length, per 10 seeds (about a quarter of what
    // seeds 0-63 x 300 s show), so that a fault silenced on most seeds fails too. Sectors
    // persisted out of order need a tear of at least two sectors of unsynced log, which is
    // rare (8 in seeds 0-63): for them the check that they fired at all must do.
    if seconds >= 300 && count >= 10 {
        for (kind, per_10) in FLOORS_PER_10_SEEDS {
            let floor = per_10 * count / 10;
            let got = tally.count(kind);
            assert!(
                got >= floor,
                "{kind}: {got} over {count} seeds, floor {floor}\n{}",
                tally.report()
            );
        }
    }
}

/// Acknowledged client writes per seed and virtual second, on average.
const ACK_FLOOR_PER_SEED_SECOND: u64 = 20;

/// Per 10 seeds of 300 virtual seconds: (kind, floor).
const FLOORS_PER_10_SEEDS: [(&str, u64); 23] = [
    ("message loss", 40_000),
    ("duplication", 12_000),
    ("crashes", 60),
    ("restarts", 60),
    ("torn crashes", 40),
    ("deaths in fsync", 20),
    ("tears: prefix", 25),
    ("tears: reordered", 0),
    ("tears: garbage", 2),
    ("partitions", 120),
    ("pauses", 35),
    ("leader transfers", 45),
    ("snapshots forced", 40),
    ("snapshots installed", 60),
    // The shared driver and log reclamation: floors far below what any run shows (printed
    // in the tally), so that a silenced path fails.
    ("rounds written inline", 1_000),
    ("rounds handed to the writer", 1_000),
    ("ticks caught up", 35),
    ("log purges", 10),
    // Regions split at runtime (half the seeds): seeds 0-255 x 300 s proposed 1,316 and
    // applied 12,871 (per replica, over every store's lives; 2026-12-03).
    ("splits proposed", 12),
    ("splits applied", 15),
    // Replicas moved at runtime (half the seeds): seeds 0-255 x 300 s proposed 12,794
    // changes (2,034 joint swaps) and destroyed 4,603 replicas (2026-12-03).
    ("replica moves proposed", 100),
    ("joint swaps proposed", 15),
    ("replicas destroyed", 35),
];

/// Seeds that once failed, kept so that the bug stays fixed (each with what it found): bugs
/// of the harness, and (121, 196, 214) of the store's background snapshots.
#[test]
fn regression_seeds() {
    // (seed, virtual seconds, deferred writes). The seeds found before deferred writes
    // existed keep synchronous writes, so that they replay the run that found the bug.
    let cases: &[(u64, u64, bool)] = &[
        // A sync failure injected twice into one store: the second one fired during
        // recovery, which the harness took for a real storage error.
        (201, 300, false),
        // A forced snapshot aimed at a store without a replica of the region.
        (180, 300, false),
        // A stale lease read: a paused follower, on resuming, handled its queued messages
        // (acknowledging a fresh heartbeat, which renewed the leader's lease) and only then
        // replayed the ticks it missed, so it believed the leader silent and voted for a
        // new one while the old leader's lease still held. Ticks must be replayed first.
        (20108, 200, false),
        // Not a bug found, a mutation caught: with every message of a Ready sent before its
        // write was durable (a follower acknowledging entries it had not written), this
        // deferred-writes seed lost an acknowledged write (a stale read of a register).
        (107, 300, true),
    ];
    for &(seed, seconds, deferred) in cases {
        let mut o = KvSimOptions::new(seed);
        // Found before TTL keys ran in the simulator: the schedule that found the bug.
        o.ttl = Some(false);
        o.sim_seconds = seconds;
        o.deferred_writes = Some(deferred);
        o.torn_write_modes = Some(false);
        o.placement = Some(false);
        if let Err(e) = run_kv_seed(&o) {
            panic!("seed {seed} failed:\n{e}");
        }
    }
    // Found by the CI soak (`raftkv-sim --kv --seeds 256`) while background snapshots were
    // built: a store failed to reopen after a crash ("metadata names a snapshot at N but no
    // file exists") because removing a region's other snapshot files also removed a newer
    // one committed meanwhile. They run with the seed's own choices, as in the soak. With
    // that bug put back (`raft_log::remove_older_snapshots` removing newer files too) each of
    // the three fails again, the same way (checked 2026-12-03). The other bug fixed then,
    // older files removed before the commit replacing them was durable, these seeds do not
    // catch today: with the removal queued at the commit instead of after the next synced
    // round, all three passed (same day).
    for seed in [121u64, 196, 214] {
        let mut o = KvSimOptions::new(seed);
        // Found before TTL keys ran in the simulator: the schedule that found the bug.
        o.ttl = Some(false);
        o.sim_seconds = 300;
        // Found before placement ran in the simulator: the schedule that found the bug.
        o.placement = Some(false);
        let out = run_kv_seed(&o).unwrap_or_else(|e| panic!("seed {seed} failed:\n{e}"));
        println!(
            "seed {seed}: {} crashes, {} snapshots built later",
            out.crashes, out.snapshots_built_later
        );
        // What the seed is kept for: crashes while snapshots are built in the background.
        assert!(
            out.crashes > 0 && out.snapshots_built_later > 0,
            "seed {seed} no longer crashes stores while snapshots are built: {} crashes, {} \
             snapshots built later",
            out.crashes,
            out.snapshots_built_later
        );
    }
}

/// A harness bug found with regions split at runtime (2026-12-03): crashes in the middle of
/// streamed snapshot installs went on after healing, and a store that came back with
/// snapshots to receive for 20 regions (hundreds of 64-byte chunks, a 1-in-16 crash per
/// chunk) never finished one, so replicas did not converge. Kept with the seed's own choices.
#[test]
fn regression_seed_split_regions_converge_after_healing() {
    let mut o = KvSimOptions::new(127);
    // Found before TTL keys ran in the simulator: the schedule that found the bug.
    o.ttl = Some(false);
    o.sim_seconds = 300;
    // Found before placement ran in the simulator: the schedule that found the bug.
    o.placement = Some(false);
    let out = run_kv_seed(&o).unwrap_or_else(|e| panic!("seed 127 failed:\n{e}"));
    assert!(
        out.splits_proposed > 0 && out.regions_at_end > out.regions,
        "seed 127 no longer splits regions: {} proposed, {} -> {} regions",
        out.splits_proposed,
        out.regions,
        out.regions_at_end
    );
}

/// Seeds that failed once replicas moved at runtime (2026-12-03), each kept with its own
/// choices for what it found: 4, an uninitialized replica (created by a message) ignored
/// vote requests as coming from outside its (empty) configuration, so a region whose
/// quorum needed it never elected a leader; 27, a replica removed without learning it
/// blocked the new replica the region later added on the same store; 43, a snapshot built by
/// a replica destroyed and replaced meanwhile was committed to the new one; 232, a region
/// whose quorum needed a replica on a store that missed the split creating it (down, then
/// caught up by a snapshot of the old region) had no leader to create it.
#[test]
fn regression_seeds_moving_replicas() {
    for seed in [4u64, 27, 43, 232] {
        let mut o = KvSimOptions::new(seed);
        // Found before TTL keys ran in the simulator: the schedule that found the bug.
        o.ttl = Some(false);
        o.sim_seconds = 300;
        // Found before placement ran in the simulator: the schedule that found the bug.
        o.placement = Some(false);
        let out = run_kv_seed(&o).unwrap_or_else(|e| panic!("seed {seed} failed:\n{e}"));
        assert!(
            out.moves_proposed > 0,
            "seed {seed} no longer moves replicas"
        );
    }
}

/// One seed replays exactly: the same layout, faults, history and outcome.
#[test]
fn a_seed_is_deterministic() {
    let mut o = KvSimOptions::new(11);
    o.sim_seconds = 20;
    let a = format!("{:?}", run_kv_seed(&o));
    let b = format!("{:?}", run_kv_seed(&o));
    assert_eq!(a, b);
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

/// The lost-write check can fail: an acknowledged write that never reached a store (the
/// mutant acknowledges region 0's probe write without sending it) must be caught by the
/// final read of its key.
#[test]
fn whole_cluster_checker_catches_a_lost_acknowledged_write() {
    let mut o = KvSimOptions::new(3);
    o.sim_seconds = 5;
    o.mutant_lost_probe_write = true;
    let e = run_kv_seed(&o).expect_err("a lost acknowledged write went unnoticed");
    assert!(e.contains("not linearizable"), "{e}");
}

/// The convergence check can fail: a replica whose state differs from the others'.
#[test]
fn whole_cluster_checker_catches_a_divergent_replica() {
    let mut o = KvSimOptions::new(3);
    o.sim_seconds = 5;
    o.mutant_divergent_replica = true;
    let e = run_kv_seed(&o).expect_err("a divergent replica went unnoticed");
    assert!(e.contains("differ"), "{e}");
}

/// Seeds that found bugs once placement ran in the simulator (2026-12-03, 60 virtual s each):
/// 69, static leader balancing handed a region's leadership back to the replica placement
/// was moving it off, forever (the region's term passed 140, its move never finished); 160,
/// the placement group's snapshot took longer to stream in 64-byte chunks than the settle
/// bound; 113, a region split and then merged into its neighbour before it reported its
/// smaller range stayed in placement (covered only by two newer regions together); 57 (300
/// s, a harness bug), the simulator looked for placement's leader among replicas under a
/// lease, and a leader whose transfer's TimeoutNow was lost keeps leading without one; 230
/// (300 s, a harness bug), a probe's read retried forever on a learner removed without
/// learning it (its ReadIndex never completes): after healing a timed-out read goes to
/// another replica, as a real client's does.
#[test]
fn regression_seeds_placement() {
    for (seed, seconds) in [(69u64, 60), (113, 60), (160, 60), (57, 300), (230, 300)] {
        let mut o = KvSimOptions::new(seed);
        // Found before TTL keys ran in the simulator: the schedule that found the bug.
        o.ttl = Some(false);
        o.sim_seconds = seconds;
        // Found before the scheduler ran in the simulator: the schedule that found the bug.
        o.scheduler = Some(false);
        let out = run_kv_seed(&o).unwrap_or_else(|e| panic!("seed {seed} failed:\n{e}"));
        assert!(
            out.placement_rounds > 0 && out.placement_operators > 0,
            "seed {seed} no longer runs placement"
        );
    }
}
