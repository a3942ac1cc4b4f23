//! Property test: random write patterns over several groups (appends with overlap and
//! truncation, states, compactions, cleans, purges) with random crashes on the
//! `FaultyFileSystem`. After every crash and reopen the engine must equal the model of some
//! prefix of the written batches that contains every batch acknowledged as durable: nothing
//! acknowledged is lost, no batch is partly there, nothing appears that was not written.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::{diff, to_batch, Model, ModelOp};
use proptest::prelude::*;
use raft_log::{Config, FaultyFileSystem, LogEngine, RecoveryMode};

#[derive(Debug, Clone)]
enum RawOp {
    Append {
        group: u64,
        position: u64,
        count: usize,
        term: u64,
    },
    Put {
        group: u64,
        key: u8,
        value: u8,
    },
    Delete {
        group: u64,
        key: u8,
    },
    Compact {
        group: u64,
        position: u64,
    },
    Clean {
        group: u64,
    },
}

#[derive(Debug, Clone)]
enum Step {
    Write { ops: Vec<RawOp>, sync: bool },
    Purge,
    Crash { how: u8, tear: usize },
}

const GROUPS: u64 = 4;

fn raw_op() -> impl Strategy<Value = RawOp> {
    prop_oneof![
        6 => (0..GROUPS, any::<u64>(), 1..6usize, 1..4u64)
            .prop_map(|(group, position, count, term)| RawOp::Append { group, position, count, term }),
        2 => (0..GROUPS, 0..3u8, any::<u8>()).prop_map(|(group, key, value)| RawOp::Put { group, key, value }),
        1 => (0..GROUPS, 0..3u8).prop_map(|(group, key)| RawOp::Delete { group, key }),
        2 => (0..GROUPS, any::<u64>()).prop_map(|(group, position)| RawOp::Compact { group, position }),
        1 => (0..GROUPS).prop_map(|group| RawOp::Clean { group }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        12 => (prop::collection::vec(raw_op(), 1..5), any::<bool>()).prop_map(|(ops, sync)| Step::Write { ops, sync }),
        2 => Just(Step::Purge),
        2 => (0..3u8, any::<usize>()).prop_map(|(how, tear)| Step::Crash { how, tear }),
    ]
}

fn key(n: u8) -> Vec<u8> {
    vec![b'k', n]
}

/// Turns random numbers into operations valid for the model as it is (and as it becomes
/// through the earlier operations of the same batch).
fn concretize(raw: &[RawOp], model: &Model, tag: &mut u64) -> Vec<ModelOp> {
    let mut scratch = model.clone();
    let mut ops = Vec::new();
    for op in raw {
        let op = match op {
            RawOp::Append {
                group,
                position,
                count,
                term,
            } => {
                *tag += 1;
                let first = match scratch.first_last(*group) {
                    Some((first, last)) => first + position % (last + 2 - first),
                    None => scratch.compacted_to(*group).max(1) + position % 3,
                };
                ModelOp::Append {
                    group: *group,
                    first,
                    terms: vec![*term; *count],
                    tag: *tag,
                }
            }
            RawOp::Put {
                group,
                key: k,
                value,
            } => ModelOp::Put {
                group: *group,
                key: key(*k),
                value: vec![*value; 1 + (*value as usize % 9)],
            },
            RawOp::Delete { group, key: k } => ModelOp::Delete {
                group: *group,
                key: key(*k),
            },
            RawOp::Compact { group, position } => {
                let index = match scratch.first_last(*group) {
                    Some((first, last)) => first + position % (last + 2 - first),
                    None => scratch.compacted_to(*group) + position % 2,
                };
                ModelOp::Compact {
                    group: *group,
                    index,
                }
            }
            RawOp::Clean { group } => ModelOp::Clean { group: *group },
        };
        scratch.apply(&op);
        ops.push(op);
    }
    ops
}

fn run(
    seed: u64,
    segment_size_bytes: u64,
    threshold: usize,
    steps: Vec<Step>,
) -> Result<(), TestCaseError> {
    let fs = FaultyFileSystem::new(seed);
    let dir = PathBuf::from("/store/raft-log");
    let config = Config {
        segment_size_bytes,
        purge_rewrite_threshold_segments: threshold,
        // Every third seed copies only small groups (larger ones are named for compaction
        // and only their states are copied); the others copy every pinning group.
        purge_rewrite_max_group_bytes: if seed % 3 == 0 { 512 } else { u64::MAX },
        // Crashes only ever tear the tail (a prefix of the unsynced bytes survives), so even
        // the strictest mode must always open.
        recovery_mode: if seed % 2 == 0 {
            RecoveryMode::AbsoluteConsistency
        } else {
            RecoveryMode::TolerateTailCorruption
        },
        // Two of three seeds write into zeroed (preallocated) segments, where a torn write
        // is followed by zeros instead of the end of the file. No helper thread: the disk's
        // state at a crash must not depend on thread timing.
        preallocate_segments: seed % 3 != 0,
        prepare_segments_in_background: false,
        no_space_retry: raft_log::Config::default().no_space_retry,
    };
    let keys: Vec<Vec<u8>> = (0..3).map(key).collect();
    let open = || LogEngine::open(&dir, config.clone(), Arc::new(fs.clone()));
    let mut engine = open().map_err(|error| TestCaseError::fail(format!("open: {error}")))?;
    // The state every prefix starts from, the batches written since, and how many of them
    // are known to be durable.
    let mut base = Model::default();
    let mut history: Vec<Vec<ModelOp>> = Vec::new();
    let mut durable = 0usize;
    let mut current = Model::default();
    let mut tag = 0u64;

    let crash_and_check = |engine: LogEngine,
                           how: u8,
                           tear: usize,
                           base: &mut Model,
                           history: &mut Vec<Vec<ModelOp>>,
                           durable: &mut usize,
                           current: &mut Model|
     -> Result<LogEngine, TestCaseError> {
        let active = raft_log::segment_path(&dir, engine.stats().active_segment_seq);
        drop(engine);
        match how {
            0 => fs.crash(),
            1 => fs.crash_random(),
            _ => {
                let unsynced = fs.unsynced_len(&active);
                fs.crash_tearing(
                    &active,
                    if unsynced == 0 {
                        0
                    } else {
                        tear % (unsynced + 1)
                    },
                );
            }
        }
        let engine =
            open().map_err(|error| TestCaseError::fail(format!("reopen after crash: {error}")))?;
        // Several prefixes can look the same (a batch that only compacts or cleans an empty
        // group). Take the longest match, with each group's compaction point the highest
        // among the matches, so the ops generated next are valid whichever one is on disk.
        let mut matched: Option<Model> = None;
        for k in (*durable..=history.len()).rev() {
            let mut candidate = base.clone();
            for batch in &history[..k] {
                for op in batch {
                    candidate.apply(op);
                }
            }
            if diff(&engine, &candidate, &keys).is_empty() {
                match &mut matched {
                    None => matched = Some(candidate),
                    Some(best) => {
                        for (group, state) in candidate.groups {
                            let entry = best.groups.entry(group).or_default();
                            entry.compacted_to = entry.compacted_to.max(state.compacted_to);
                        }
                    }
                }
            }
        }
        let Some(matched) = matched else {
            let mut durable_model = base.clone();
            for batch in &history[..*durable] {
                for op in batch {
                    durable_model.apply(op);
                }
            }
            return Err(TestCaseError::fail(format!(
                "after crash (mode {how}) the engine matches no prefix between {} and {} batches; \
                 vs durable prefix: {:?}; report {:?}",
                *durable,
                history.len(),
                diff(&engine, &durable_model, &keys),
                engine.recovery_report()
            )));
        };
        *base = matched.clone();
        *current = matched;
        history.clear();
        *durable = 0;
        Ok(engine)
    };

    for step in steps {
        match step {
            Step::Write { ops, sync } => {
                let ops = concretize(&ops, &current, &mut tag);
                let mut batch = to_batch(&ops);
                engine
                    .write(&mut batch, sync)
                    .map_err(|error| TestCaseError::fail(format!("write {ops:?}: {error}")))?;
                for op in &ops {
                    current.apply(op);
                }
                history.push(ops);
                if sync {
                    durable = history.len();
                }
            }
            Step::Purge => {
                let report = engine
                    .purge()
                    .map_err(|error| TestCaseError::fail(format!("purge: {error}")))?;
                if report.bytes_rewritten > 0 || report.segments_deleted > 0 {
                    // Purge syncs before it rewrites or deletes, and with that everything
                    // written before.
                    durable = history.len();
                }
            }
            Step::Crash { how, tear } => {
                engine = crash_and_check(
                    engine,
                    how,
                    tear,
                    &mut base,
                    &mut history,
                    &mut durable,
                    &mut current,
                )?;
            }
        }
        let problems = diff(&engine, &current, &keys);
        prop_assert!(
            problems.is_empty(),
            "engine differs from the model: {problems:?}"
        );
    }
    let engine = crash_and_check(
        engine,
        1,
        0,
        &mut base,
        &mut history,
        &mut durable,
        &mut current,
    )?;
    // And once more without a crash in between: recovery must be repeatable.
    drop(engine);
    let engine = open().map_err(|error| TestCaseError::fail(format!("final reopen: {error}")))?;
    let problems = diff(&engine, &current, &keys);
    prop_assert!(problems.is_empty(), "after a clean reopen: {problems:?}");
    prop_assert!(
        engine.recovery_report().torn_tail.is_none(),
        "clean reopen found a torn tail"
    );
    Ok(())
}

proptest! {
    // PROPTEST_CASES=20000 for a longer hunt.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(512),
        ..ProptestConfig::default()
    })]

    #[test]
    fn durable_prefix_survives_random_crashes(
        seed in any::<u64>(),
        segment_size_bytes in prop_oneof![Just(256u64), Just(1024), Just(64 << 10)],
        threshold in 1usize..5,
        steps in prop::collection::vec(step(), 1..60),
    ) {
        run(seed, segment_size_bytes, threshold, steps)?;
    }
}
