//! Hand-written histories with known verdicts, one anomaly per test.

use std::time::Duration;

use lincheck::kv::{KvInput, KvModel, KvOutput};
use lincheck::register::{RegisterInput, RegisterModel, RegisterOutput};
use lincheck::testing::{generate_kv_history, KvWorkload};
use lincheck::{check, CheckOptions, CheckResult, HistoryError, Operation};

type Op = Operation<KvInput, KvOutput>;

fn get(key: &str) -> KvInput {
    KvInput::Get {
        key: key.as_bytes().to_vec(),
    }
}

fn put(key: &str, value: &str) -> KvInput {
    KvInput::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    }
}

fn append(key: &str, value: &str) -> KvInput {
    KvInput::Append {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    }
}

fn delete(key: &str) -> KvInput {
    KvInput::Delete {
        key: key.as_bytes().to_vec(),
    }
}

fn cas(key: &str, expected: Option<&str>, new: &str) -> KvInput {
    KvInput::Cas {
        key: key.as_bytes().to_vec(),
        expected: expected.map(|value| value.as_bytes().to_vec()),
        new: new.as_bytes().to_vec(),
    }
}

fn read(value: Option<&str>) -> KvOutput {
    KvOutput::Get(value.map(|value| value.as_bytes().to_vec()))
}

fn done(client: u64, input: KvInput, call: u64, output: KvOutput, return_time: u64) -> Op {
    Operation::completed(client, input, call, output, return_time)
}

fn unknown(client: u64, input: KvInput, call: u64) -> Op {
    Operation::unknown(client, input, call)
}

fn verdict(history: &[Op]) -> CheckResult {
    check(&KvModel, history, &CheckOptions::default()).expect("valid history")
}

#[track_caller]
fn assert_ok(history: &[Op]) {
    let result = verdict(history);
    assert!(result.is_ok(), "expected linearizable, got: {result}");
}

#[track_caller]
fn assert_illegal(history: &[Op]) -> lincheck::IllegalReport {
    match verdict(history) {
        CheckResult::Illegal(report) => report,
        other => panic!("expected a violation, got: {other:?}"),
    }
}

#[test]
fn empty_history_is_linearizable() {
    assert_ok(&[]);
}

#[test]
fn sequential_history_is_linearizable() {
    assert_ok(&[
        done(1, get("x"), 0, read(None), 1),
        done(1, put("x", "1"), 2, KvOutput::Put, 3),
        done(2, get("x"), 4, read(Some("1")), 5),
        done(2, append("x", "2"), 6, KvOutput::Append, 7),
        done(1, get("x"), 8, read(Some("12")), 9),
        done(1, delete("x"), 10, KvOutput::Delete, 11),
        done(2, get("x"), 12, read(None), 13),
    ]);
}

#[test]
fn stale_read_after_completed_write_is_illegal() {
    let report = assert_illegal(&[
        done(1, put("x", "1"), 0, KvOutput::Put, 1),
        done(2, get("x"), 2, read(None), 3),
    ]);
    assert_eq!(report.partition, "key \"x\"");
    assert_eq!(report.longest_prefix, vec![0]);
    assert_eq!(report.blocking_op, 1);
    assert!(report.detail.contains("#1 client 2"), "{}", report.detail);
    assert!(
        report.detail.contains("impossible from this state"),
        "{}",
        report.detail
    );
}

#[test]
fn read_concurrent_with_write_may_see_either_value() {
    for observed in [None, Some("1")] {
        assert_ok(&[
            done(1, put("x", "1"), 0, KvOutput::Put, 10),
            done(2, get("x"), 2, read(observed), 5),
        ]);
    }
}

#[test]
fn concurrent_writes_either_order_is_linearizable() {
    for last in ["1", "2"] {
        assert_ok(&[
            done(1, put("x", "1"), 0, KvOutput::Put, 10),
            done(2, put("x", "2"), 1, KvOutput::Put, 9),
            done(3, get("x"), 11, read(Some(last)), 12),
            done(3, get("x"), 13, read(Some(last)), 14),
        ]);
    }
}

#[test]
fn reads_disagreeing_on_order_of_finished_writes_are_illegal() {
    assert_illegal(&[
        done(1, put("x", "1"), 0, KvOutput::Put, 10),
        done(2, put("x", "2"), 1, KvOutput::Put, 9),
        done(3, get("x"), 11, read(Some("1")), 12),
        done(4, get("x"), 13, read(Some("2")), 14),
    ]);
}

#[test]
fn new_old_inversion_between_readers_is_illegal() {
    // Reader 2 saw the new value and finished before reader 3 started, so
    // reader 3 may not see the old one, even though both overlap the write.
    assert_illegal(&[
        done(1, put("x", "new"), 0, KvOutput::Put, 100),
        done(2, get("x"), 10, read(Some("new")), 20),
        done(3, get("x"), 30, read(None), 40),
    ]);
}

#[test]
fn lost_append_is_illegal() {
    let history = |observed: &str| {
        vec![
            done(1, append("x", "a"), 0, KvOutput::Append, 1),
            done(2, append("x", "b"), 2, KvOutput::Append, 3),
            done(3, get("x"), 4, read(Some(observed)), 5),
        ]
    };
    assert_ok(&history("ab"));
    assert_illegal(&history("b"));
    assert_illegal(&history("ba"));
}

#[test]
fn concurrent_appends_in_either_order_are_linearizable() {
    for observed in ["ab", "ba"] {
        assert_ok(&[
            done(1, append("x", "a"), 0, KvOutput::Append, 5),
            done(2, append("x", "b"), 0, KvOutput::Append, 5),
            done(3, get("x"), 6, read(Some(observed)), 7),
        ]);
    }
}

#[test]
fn two_sequential_cas_from_the_same_value_cannot_both_succeed() {
    assert_illegal(&[
        done(1, put("x", "0"), 0, KvOutput::Put, 1),
        done(2, cas("x", Some("0"), "1"), 2, KvOutput::Cas(true), 3),
        done(3, cas("x", Some("0"), "2"), 4, KvOutput::Cas(true), 5),
    ]);
}

#[test]
fn two_concurrent_cas_from_the_same_value_cannot_both_succeed() {
    assert_illegal(&[
        done(1, put("x", "0"), 0, KvOutput::Put, 1),
        done(2, cas("x", Some("0"), "1"), 2, KvOutput::Cas(true), 10),
        done(3, cas("x", Some("0"), "2"), 2, KvOutput::Cas(true), 10),
    ]);
    // Exactly one winning is fine, and the loser sees the winner's value.
    assert_ok(&[
        done(1, put("x", "0"), 0, KvOutput::Put, 1),
        done(2, cas("x", Some("0"), "1"), 2, KvOutput::Cas(true), 10),
        done(3, cas("x", Some("0"), "2"), 2, KvOutput::Cas(false), 10),
        done(3, get("x"), 11, read(Some("1")), 12),
    ]);
}

#[test]
fn cas_that_should_have_swapped_but_reported_failure_is_illegal() {
    assert_illegal(&[
        done(1, put("x", "0"), 0, KvOutput::Put, 1),
        done(2, cas("x", Some("0"), "1"), 2, KvOutput::Cas(false), 3),
    ]);
}

#[test]
fn cas_expecting_absent_key() {
    assert_ok(&[
        done(1, cas("x", None, "1"), 0, KvOutput::Cas(true), 1),
        done(2, cas("x", None, "2"), 2, KvOutput::Cas(false), 3),
        done(2, get("x"), 4, read(Some("1")), 5),
    ]);
    assert_illegal(&[
        done(1, cas("x", None, "1"), 0, KvOutput::Cas(true), 1),
        done(2, get("x"), 2, read(None), 3),
    ]);
}

#[test]
fn failed_cas_does_not_change_the_value() {
    assert_illegal(&[
        done(1, put("x", "0"), 0, KvOutput::Put, 1),
        done(2, cas("x", Some("9"), "1"), 2, KvOutput::Cas(false), 3),
        done(3, get("x"), 4, read(Some("1")), 5),
    ]);
}

#[test]
fn unknown_write_later_observed_is_linearizable() {
    assert_ok(&[
        unknown(1, put("x", "1"), 0),
        done(2, get("x"), 5, read(Some("1")), 6),
    ]);
}

#[test]
fn unknown_write_may_take_effect_long_after_the_client_gave_up() {
    assert_ok(&[
        unknown(1, put("x", "1"), 0),
        done(2, get("x"), 5, read(None), 6),
        done(2, get("x"), 7, read(None), 8),
        done(3, get("x"), 100, read(Some("1")), 101),
    ]);
}

#[test]
fn unknown_write_never_observed_is_linearizable() {
    assert_ok(&[
        unknown(1, put("x", "1"), 0),
        done(2, get("x"), 5, read(None), 6),
        done(2, put("x", "2"), 7, KvOutput::Put, 8),
        done(2, get("x"), 9, read(Some("2")), 10),
    ]);
}

#[test]
fn unknown_write_cannot_take_effect_before_its_call() {
    assert_illegal(&[
        done(2, get("x"), 0, read(Some("1")), 1),
        unknown(1, put("x", "1"), 5),
    ]);
}

#[test]
fn unknown_write_takes_effect_at_most_once() {
    // Observed, then overwritten, then observed again: it would have to take
    // effect twice.
    assert_illegal(&[
        unknown(1, put("x", "1"), 0),
        done(2, get("x"), 1, read(Some("1")), 2),
        done(2, put("x", "2"), 3, KvOutput::Put, 4),
        done(2, get("x"), 5, read(Some("1")), 6),
    ]);
}

#[test]
fn unknown_value_observed_then_unobserved_is_illegal() {
    assert_illegal(&[
        unknown(1, put("x", "1"), 0),
        done(2, get("x"), 1, read(Some("1")), 2),
        done(2, get("x"), 3, read(None), 4),
    ]);
}

#[test]
fn unknown_cas_and_append_take_effect_through_the_model() {
    assert_ok(&[
        done(1, put("x", "a"), 0, KvOutput::Put, 1),
        unknown(2, cas("x", Some("a"), "b"), 2),
        unknown(3, append("x", "c"), 2),
        done(4, get("x"), 10, read(Some("bc")), 11),
    ]);
    // The unknown CAS cannot succeed from "ac".
    assert_illegal(&[
        done(1, put("x", "a"), 0, KvOutput::Put, 1),
        unknown(2, cas("x", Some("a"), "b"), 2),
        done(3, append("x", "c"), 2, KvOutput::Append, 3),
        done(4, get("x"), 10, read(Some("b")), 11),
    ]);
}

#[test]
fn unknown_reads_constrain_nothing() {
    assert_ok(&[
        done(1, put("x", "1"), 0, KvOutput::Put, 1),
        unknown(2, get("x"), 2),
        done(1, put("x", "2"), 3, KvOutput::Put, 4),
    ]);
}

#[test]
fn read_of_value_nobody_wrote_is_illegal() {
    let report = assert_illegal(&[
        done(1, put("y", "1"), 0, KvOutput::Put, 10),
        done(2, put("x", "1"), 0, KvOutput::Put, 10),
        done(3, get("x"), 2, read(Some("ghost")), 5),
    ]);
    assert_eq!(report.partition, "key \"x\"");
    assert_eq!(report.blocking_op, 2);
    assert!(report.detail.contains("ghost"), "{}", report.detail);
}

#[test]
fn keys_are_independent() {
    assert_ok(&[
        done(1, put("x", "1"), 0, KvOutput::Put, 1),
        done(1, put("y", "2"), 2, KvOutput::Put, 3),
        done(2, get("x"), 4, read(Some("1")), 5),
        done(2, get("y"), 4, read(Some("2")), 5),
        done(2, get("z"), 4, read(None), 5),
    ]);
}

#[test]
fn reply_of_the_wrong_kind_is_illegal() {
    assert_illegal(&[done(1, put("x", "1"), 0, KvOutput::Cas(true), 1)]);
}

#[test]
fn equal_timestamps_count_as_concurrent() {
    // The read is called at the same tick the write returns: the checker
    // may order the read first rather than raise a false alarm.
    assert_ok(&[
        done(1, put("x", "1"), 0, KvOutput::Put, 5),
        done(2, get("x"), 5, read(None), 6),
    ]);
}

#[test]
fn report_lists_the_longest_prefix_and_unplaced_ops() {
    let report = assert_illegal(&[
        done(1, put("x", "1"), 0, KvOutput::Put, 1),
        done(1, put("x", "2"), 2, KvOutput::Put, 3),
        done(2, get("x"), 4, read(Some("2")), 10),
        done(3, get("x"), 4, read(Some("1")), 10),
    ]);
    assert_eq!(report.longest_prefix.len(), 3, "{}", report.detail);
    assert_eq!(report.unplaced_ops, vec![3], "{}", report.detail);
    assert!(report.detail.contains("value \"2\""), "{}", report.detail);
}

#[test]
fn malformed_histories_are_refused() {
    let backwards = [done(1, get("x"), 5, read(None), 4)];
    assert_eq!(
        check(&KvModel, &backwards, &CheckOptions::default()),
        Err(HistoryError::ReturnBeforeCall {
            index: 0,
            call: 5,
            return_time: 4
        })
    );
    let half = [Operation {
        client_id: 1,
        input: get("x"),
        call: 0,
        output: Some(read(None)),
        return_time: None,
    }];
    assert!(matches!(
        check(&KvModel, &half, &CheckOptions::default()),
        Err(HistoryError::HalfCompleted { index: 0, .. })
    ));
}

#[test]
fn state_budget_gives_unknown_not_a_hang() {
    let history = generate_kv_history(&KvWorkload {
        op_count: 2000,
        key_count: 1,
        ..KvWorkload::default()
    });
    let options = CheckOptions {
        max_states_per_partition: 100,
        max_duration: None,
    };
    let result = check(&KvModel, &history, &options).expect("valid history");
    assert!(
        matches!(result, CheckResult::Unknown { .. }),
        "expected Unknown, got {result}"
    );
}

#[test]
fn time_budget_gives_unknown_not_a_hang() {
    let history = generate_kv_history(&KvWorkload {
        op_count: 20_000,
        key_count: 1,
        ..KvWorkload::default()
    });
    let options = CheckOptions {
        max_states_per_partition: u64::MAX,
        max_duration: Some(Duration::ZERO),
    };
    let result = check(&KvModel, &history, &options).expect("valid history");
    assert!(
        matches!(result, CheckResult::Unknown { .. }),
        "expected Unknown, got {result}"
    );
}

#[test]
fn register_model() {
    let model = RegisterModel { initial: 7 };
    let write = |client, value, call, return_time| {
        Operation::completed(
            client,
            RegisterInput::Write(value),
            call,
            RegisterOutput::Write,
            return_time,
        )
    };
    let read = |client, value, call, return_time| {
        Operation::completed(
            client,
            RegisterInput::Read,
            call,
            RegisterOutput::Read(value),
            return_time,
        )
    };
    let options = CheckOptions::default();
    let ok = [read(1, 7, 0, 1), write(1, 3, 2, 3), read(2, 3, 4, 5)];
    assert!(check(&model, &ok, &options).expect("valid").is_ok());
    let stale = [write(1, 3, 0, 1), read(2, 7, 2, 3)];
    assert!(check(&model, &stale, &options).expect("valid").is_illegal());
    let unknown_write = [
        Operation::unknown(1, RegisterInput::Write(9), 0),
        read(2, 9, 5, 6),
    ];
    assert!(check(&model, &unknown_write, &options)
        .expect("valid")
        .is_ok());
}
