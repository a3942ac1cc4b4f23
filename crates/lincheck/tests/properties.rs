//! Property tests: generated linearizable histories must pass, a planted
//! impossible read must fail, and on tiny histories the search must agree
//! with a brute-force enumeration of every order.

use std::collections::BTreeMap;

use lincheck::kv::{apply, KvInput, KvModel, KvOutput};
use lincheck::testing::{generate_kv_history, KvWorkload};
use lincheck::{check, CheckOptions, CheckResult, Operation};
use proptest::prelude::*;

type Op = Operation<KvInput, KvOutput>;

/// No generated value contains 0xff, so a read returning it is impossible.
const NEVER_WRITTEN: &[u8] = b"\xffnever written";

fn workload_strategy(op_count_max: usize) -> impl Strategy<Value = KvWorkload> {
    (
        any::<u64>(),
        1..=op_count_max,
        1usize..=4,
        1usize..=8,
        // Proving a violation is exponential in the unknown ops pending at
        // that point (the checker's known limit), so keep
        // them to a realistic few percent here.
        0u64..=30,
        prop_oneof![Just(None), (1u64..=3).prop_map(Some)],
        1u64..=30,
    )
        .prop_map(
            |(
                seed,
                op_count,
                key_count,
                client_count,
                unknown_per_mille,
                value_domain,
                op_duration_max,
            )| {
                KvWorkload {
                    seed,
                    op_count,
                    key_count,
                    client_count,
                    unknown_per_mille,
                    value_domain,
                    op_duration_max,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn generated_histories_are_linearizable_and_a_planted_ghost_read_is_not(
        workload in workload_strategy(300),
        pick in any::<prop::sample::Index>(),
    ) {
        let mut history = generate_kv_history(&workload);
        let result = check(&KvModel, &history, &CheckOptions::default()).expect("valid history");
        prop_assert!(result.is_ok(), "generated history rejected: {}", result);

        let reads: Vec<usize> = history
            .iter()
            .enumerate()
            .filter(|(_, op)| matches!(op.input, KvInput::Get { .. }) && !op.is_unknown())
            .map(|(index, _)| index)
            .collect();
        prop_assume!(!reads.is_empty());
        let victim = reads[pick.index(reads.len())];
        history[victim].output = Some(KvOutput::Get(Some(NEVER_WRITTEN.to_vec())));
        match check(&KvModel, &history, &CheckOptions::default()).expect("valid history") {
            CheckResult::Illegal(report) => {
                // The ghost read is to blame: it is the operation that could not take effect
                // in time, or one of those pending with it that no order could place next
                // (a concurrent read that returns first is reported instead: seen in CI).
                // With operations of unknown outcome on the key the report describes the
                // longest prefix over all the placements it tried, which may stop at an
                // earlier, legitimate read (seen in CI: an unknown CAS placed late made it
                // impossible); then only the verdict and the partition are the checker's
                // promise, and the original history passing above shows the ghost caused it.
                let key = history[victim].input.key().to_vec();
                let unknown_on_key = history
                    .iter()
                    .any(|op| op.is_unknown() && op.input.key() == key.as_slice());
                prop_assert!(
                    unknown_on_key
                        || report.blocking_op == victim
                        || report.unplaced_ops.contains(&victim),
                    "the planted ghost read #{} is not implicated: {}",
                    victim,
                    report.detail
                );
                let expected_label = format!("key {:?}", lincheck::kv::Bytes(history[victim].input.key()));
                prop_assert_eq!(report.partition, expected_label);
            }
            // The search's state limit (its documented limit: proving a violation is
            // exponential in the unknown operations pending around it) says nothing either
            // way; seen once in 30,000 cases (1 key, 8 clients, ~5 unknown operations).
            CheckResult::Unknown { .. } => prop_assume!(false),
            other => prop_assert!(false, "planted ghost read not caught: {:?}", other),
        }
    }
}

/// Tries every subset of the unknown operations and every order of the
/// chosen ones that respects real time, on a whole-store state (so it also
/// cross-checks the per-key partitioning).
fn brute_force_linearizable(history: &[Op]) -> bool {
    let unknown: Vec<usize> = (0..history.len())
        .filter(|&index| history[index].is_unknown())
        .collect();
    (0u32..(1 << unknown.len())).any(|mask| {
        let included: Vec<usize> = (0..history.len())
            .filter(|&index| match unknown.iter().position(|&u| u == index) {
                Some(bit) => mask & (1 << bit) != 0,
                None => true,
            })
            .collect();
        let mut placed = vec![false; history.len()];
        search_orders(history, &included, &mut placed, &BTreeMap::new())
    })
}

fn search_orders(
    history: &[Op],
    included: &[usize],
    placed: &mut [bool],
    store: &BTreeMap<Vec<u8>, Vec<u8>>,
) -> bool {
    let remaining: Vec<usize> = included.iter().copied().filter(|&i| !placed[i]).collect();
    if remaining.is_empty() {
        return true;
    }
    for &candidate in &remaining {
        // Real time: nothing still unplaced may have returned before the
        // candidate was called.
        let blocked = remaining.iter().any(|&other| {
            history[other]
                .return_time
                .is_some_and(|return_time| return_time < history[candidate].call)
        });
        if blocked {
            continue;
        }
        let op = &history[candidate];
        let key = op.input.key().to_vec();
        let (next, output) = apply(&store.get(&key).cloned(), &op.input);
        if op
            .output
            .as_ref()
            .is_some_and(|observed| *observed != output)
        {
            continue;
        }
        let mut next_store = store.clone();
        match next {
            Some(value) => next_store.insert(key, value),
            None => next_store.remove(&key),
        };
        placed[candidate] = true;
        let found = search_orders(history, included, placed, &next_store);
        placed[candidate] = false;
        if found {
            return true;
        }
    }
    false
}

fn tiny_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![Just(b"0".to_vec()), Just(b"1".to_vec())]
}

fn tiny_input() -> impl Strategy<Value = KvInput> {
    let key = prop_oneof![Just(b"a".to_vec()), Just(b"b".to_vec())];
    (key, 0u8..5, tiny_value(), prop::option::of(tiny_value())).prop_map(
        |(key, kind, value, expected)| match kind {
            0 => KvInput::Get { key },
            1 => KvInput::Put { key, value },
            2 => KvInput::Delete { key },
            3 => KvInput::Append { key, value },
            _ => KvInput::Cas {
                key,
                expected,
                new: value,
            },
        },
    )
}

/// An output of the right kind for `input`, with a random payload.
fn random_output(input: &KvInput, choice: u8) -> KvOutput {
    match input {
        KvInput::Get { .. } => KvOutput::Get(match choice % 5 {
            0 => None,
            1 => Some(b"0".to_vec()),
            2 => Some(b"1".to_vec()),
            3 => Some(b"01".to_vec()),
            _ => Some(b"10".to_vec()),
        }),
        KvInput::Put { .. } => KvOutput::Put,
        KvInput::Delete { .. } => KvOutput::Delete,
        KvInput::Append { .. } => KvOutput::Append,
        KvInput::Cas { .. } => KvOutput::Cas(choice % 2 == 0),
    }
}

/// Fully random tiny histories: random intervals and random outputs, so
/// mostly illegal, with odd overlaps and equal timestamps.
fn random_tiny_history() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        (0u64..3, tiny_input(), 0u64..8, 0u64..5, any::<u8>(), 0u8..5),
        0..=7,
    )
    .prop_map(|ops| {
        ops.into_iter()
            .map(|(client_id, input, call, duration, choice, unknown)| {
                if unknown == 0 {
                    Operation::unknown(client_id, input, call)
                } else {
                    let output = random_output(&input, choice);
                    Operation::completed(client_id, input, call, output, call + duration)
                }
            })
            .collect()
    })
}

/// Generated (linearizable) tiny histories, optionally with one output
/// replaced by a random one, so both verdicts are common.
fn perturbed_tiny_history() -> impl Strategy<Value = Vec<Op>> {
    (
        any::<u64>(),
        1usize..=7,
        1usize..=2,
        1usize..=4,
        0u64..=300,
        1u64..=6,
        prop::option::of((any::<prop::sample::Index>(), any::<u8>())),
    )
        .prop_map(
            |(
                seed,
                op_count,
                key_count,
                client_count,
                unknown_per_mille,
                op_duration_max,
                perturb,
            )| {
                let mut history = generate_kv_history(&KvWorkload {
                    seed,
                    op_count,
                    key_count,
                    client_count,
                    unknown_per_mille,
                    value_domain: Some(2),
                    op_duration_max,
                });
                if let Some((index, choice)) = perturb {
                    let victim = index.index(history.len());
                    if !history[victim].is_unknown() {
                        let output = random_output(&history[victim].input, choice);
                        history[victim].output = Some(output);
                    }
                }
                history
            },
        )
}

fn assert_agrees(history: &[Op]) -> Result<(), TestCaseError> {
    let expected = brute_force_linearizable(history);
    let result = check(&KvModel, history, &CheckOptions::default()).expect("valid history");
    prop_assert!(
        !matches!(result, CheckResult::Unknown { .. }),
        "tiny history exhausted the budget"
    );
    prop_assert_eq!(
        result.is_ok(),
        expected,
        "checker says {}, brute force says {} for {:#?}",
        result,
        expected,
        history
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn agrees_with_brute_force_on_random_tiny_histories(history in random_tiny_history()) {
        assert_agrees(&history)?;
    }

    #[test]
    fn agrees_with_brute_force_on_perturbed_tiny_histories(history in perturbed_tiny_history()) {
        assert_agrees(&history)?;
    }
}
