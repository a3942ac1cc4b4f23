//! Semantics and errors of every command, one test per rule.

mod common;

use bytes::Bytes;
use common::{b, exec, get, put};
use kv::{
    ApplyError, Command, CommandError, KvStateMachine, Limits, PutOptions, RegionRange, Response,
    SessionPolicy,
};

fn machine() -> KvStateMachine {
    KvStateMachine::with_region(RegionRange::full())
}

fn small_limits_machine() -> KvStateMachine {
    let limits = Limits {
        max_key_bytes: 4,
        max_value_bytes: 8,
        max_batch_keys: 2,
        max_scan_limit: 3,
    };
    KvStateMachine::new(RegionRange::full(), limits, SessionPolicy::default())
}

fn value(text: &str) -> Response {
    Response::Value(Some(b(text)))
}

/// Applies a command that must fail and checks that no key changed.
fn assert_refused(machine: &mut KvStateMachine, command: Command, expected: CommandError) {
    let before = machine.data_hash();
    let snapshot_before: Vec<_> = machine
        .iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
    assert_eq!(exec(machine, command), Err(ApplyError::Command(expected)));
    assert_eq!(
        machine.data_hash(),
        before,
        "a refused command changed data"
    );
    let after: Vec<_> = machine
        .iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
    assert_eq!(after, snapshot_before);
}

#[test]
fn get_put_delete() {
    let mut m = machine();
    assert_eq!(exec(&mut m, get("a")), Ok(Response::Value(None)));
    assert_eq!(
        exec(&mut m, put("a", "1")),
        Ok(Response::Put {
            written: true,
            previous: None
        })
    );
    assert_eq!(exec(&mut m, get("a")), Ok(value("1")));
    assert_eq!(
        exec(&mut m, Command::Delete { key: b("a") }),
        Ok(Response::Deleted(true))
    );
    assert_eq!(
        exec(&mut m, Command::Delete { key: b("a") }),
        Ok(Response::Deleted(false))
    );
    assert!(m.is_empty());
}

#[test]
fn put_options_nx_xx_get() {
    let mut m = machine();
    let nx_get = PutOptions {
        if_absent: true,
        return_previous: true,
        ..Default::default()
    };
    let xx = PutOptions {
        if_present: true,
        ..Default::default()
    };
    let with = |key: &str, v: &str, options| Command::Put {
        key: b(key),
        value: b(v),
        options,
    };
    // XX on an absent key: not written.
    assert_eq!(
        exec(&mut m, with("k", "x", xx)),
        Ok(Response::Put {
            written: false,
            previous: None
        })
    );
    assert_eq!(m.get(b"k"), None);
    // NX GET on absent: written, previous nil.
    assert_eq!(
        exec(&mut m, with("k", "1", nx_get)),
        Ok(Response::Put {
            written: true,
            previous: None
        })
    );
    // NX GET on present: not written, previous returned.
    assert_eq!(
        exec(&mut m, with("k", "2", nx_get)),
        Ok(Response::Put {
            written: false,
            previous: Some(b("1"))
        })
    );
    assert_eq!(m.get(b"k"), Some(b("1")));
    // XX on present: written; without GET no previous is returned.
    assert_eq!(
        exec(&mut m, with("k", "3", xx)),
        Ok(Response::Put {
            written: true,
            previous: None
        })
    );
    assert_eq!(m.get(b"k"), Some(b("3")));
    let both = PutOptions {
        if_absent: true,
        if_present: true,
        return_previous: false,
        ..PutOptions::default()
    };
    assert_refused(
        &mut m,
        with("k", "4", both),
        CommandError::ConflictingOptions,
    );
}

#[test]
fn append_creates_and_extends() {
    let mut m = machine();
    let append = |v: &str| Command::Append {
        key: b("k"),
        value: b(v),
    };
    assert_eq!(exec(&mut m, append("ab")), Ok(Response::Length(2)));
    assert_eq!(exec(&mut m, append("cd")), Ok(Response::Length(4)));
    assert_eq!(m.get(b"k"), Some(b("abcd")));
}

#[test]
fn append_beyond_value_limit_is_refused() {
    let mut m = small_limits_machine();
    exec(&mut m, put("k", "12345")).unwrap();
    assert_refused(
        &mut m,
        Command::Append {
            key: b("k"),
            value: b("6789"),
        },
        CommandError::ValueTooLarge { size: 9, max: 8 },
    );
}

#[test]
fn compare_and_swap() {
    let mut m = machine();
    let cas = |expected: Option<&str>, new: &str| Command::CompareAndSwap {
        key: b("k"),
        expected: expected.map(b),
        new: b(new),
    };
    // Expect absent: succeeds on an absent key.
    assert_eq!(
        exec(&mut m, cas(None, "1")),
        Ok(Response::Cas {
            swapped: true,
            previous: None
        })
    );
    // Expect absent on a present key: fails and reports the current value.
    assert_eq!(
        exec(&mut m, cas(None, "2")),
        Ok(Response::Cas {
            swapped: false,
            previous: Some(b("1"))
        })
    );
    assert_eq!(
        exec(&mut m, cas(Some("0"), "2")),
        Ok(Response::Cas {
            swapped: false,
            previous: Some(b("1"))
        })
    );
    assert_eq!(
        exec(&mut m, cas(Some("1"), "2")),
        Ok(Response::Cas {
            swapped: true,
            previous: Some(b("1"))
        })
    );
    assert_eq!(m.get(b"k"), Some(b("2")));
}

#[test]
fn scan_respects_bounds_limit_and_region() {
    let mut m = KvStateMachine::with_region(RegionRange::new(b("b"), Some(b("e"))));
    for key in ["b", "c", "ca", "d"] {
        exec(&mut m, put(key, key)).unwrap();
    }
    let scan = |start: &str, end: Option<&str>, limit| Command::Scan {
        start: b(start),
        end: end.map(b),
        limit,
    };
    let pairs =
        |keys: &[&str]| -> Vec<(Bytes, Bytes)> { keys.iter().map(|k| (b(k), b(k))).collect() };
    assert_eq!(
        exec(&mut m, scan("b", None, 10)),
        Ok(Response::Scan {
            pairs: pairs(&["b", "c", "ca", "d"]),
            more: false
        })
    );
    // End is exclusive.
    assert_eq!(
        exec(&mut m, scan("b", Some("ca"), 10)),
        Ok(Response::Scan {
            pairs: pairs(&["b", "c"]),
            more: false
        })
    );
    // Limit stops the scan and says there is more.
    assert_eq!(
        exec(&mut m, scan("c", None, 2)),
        Ok(Response::Scan {
            pairs: pairs(&["c", "ca"]),
            more: true
        })
    );
    // Exactly `limit` remaining: no more.
    assert_eq!(
        exec(&mut m, scan("ca", Some("zz"), 2)),
        Ok(Response::Scan {
            pairs: pairs(&["ca", "d"]),
            more: false
        })
    );
    // Inverted range is empty, not a panic.
    assert_eq!(
        exec(&mut m, scan("d", Some("c"), 2)),
        Ok(Response::Scan {
            pairs: vec![],
            more: false
        })
    );
    // Start outside the region.
    assert_refused(
        &mut m,
        scan("a", None, 1),
        CommandError::OutOfRange { key: b("a") },
    );
    assert_refused(
        &mut m,
        scan("e", None, 1),
        CommandError::OutOfRange { key: b("e") },
    );
}

#[test]
fn scan_limit_is_bounded() {
    let mut m = small_limits_machine();
    assert_refused(
        &mut m,
        Command::Scan {
            start: b(""),
            end: None,
            limit: 4,
        },
        CommandError::ScanLimitTooLarge { limit: 4, max: 3 },
    );
}

#[test]
fn batch_get_and_put() {
    let mut m = machine();
    assert_eq!(
        exec(
            &mut m,
            Command::BatchPut {
                pairs: vec![(b("a"), b("1")), (b("b"), b("2")), (b("a"), b("3"))]
            }
        ),
        Ok(Response::Done)
    );
    assert_eq!(
        exec(
            &mut m,
            Command::BatchGet {
                keys: vec![b("b"), b("x"), b("a")]
            }
        ),
        Ok(Response::Values(vec![Some(b("2")), None, Some(b("3"))]))
    );
}

#[test]
fn batch_put_is_all_or_nothing_on_limits() {
    let mut m = small_limits_machine();
    // Second pair's value is too large: the first must not be written either.
    assert_refused(
        &mut m,
        Command::BatchPut {
            pairs: vec![(b("a"), b("1")), (b("b"), b("123456789"))],
        },
        CommandError::ValueTooLarge { size: 9, max: 8 },
    );
    assert_refused(
        &mut m,
        Command::BatchPut {
            pairs: vec![(b("a"), b("1")), (b("b"), b("2")), (b("c"), b("3"))],
        },
        CommandError::BatchTooLarge { size: 3, max: 2 },
    );
    assert_refused(
        &mut m,
        Command::BatchGet {
            keys: vec![b("a"), b("b"), b("c")],
        },
        CommandError::BatchTooLarge { size: 3, max: 2 },
    );
}

#[test]
fn key_and_value_limits() {
    let mut m = small_limits_machine();
    assert_refused(
        &mut m,
        put("12345", "v"),
        CommandError::KeyTooLarge { size: 5, max: 4 },
    );
    assert_refused(
        &mut m,
        put("k", "123456789"),
        CommandError::ValueTooLarge { size: 9, max: 8 },
    );
    assert_refused(
        &mut m,
        get("12345"),
        CommandError::KeyTooLarge { size: 5, max: 4 },
    );
    // Exactly at the limits is fine.
    assert!(exec(&mut m, put("1234", "12345678")).is_ok());
}

#[test]
fn default_limits_are_8k_keys_and_8m_values() {
    let limits = Limits::default();
    assert_eq!(limits.max_key_bytes, 8 * 1024);
    assert_eq!(limits.max_value_bytes, 8 * 1024 * 1024);
    let mut m = machine();
    let big_key = Bytes::from(vec![b'k'; 8 * 1024 + 1]);
    assert_refused(
        &mut m,
        Command::Get { key: big_key },
        CommandError::KeyTooLarge {
            size: 8 * 1024 + 1,
            max: 8 * 1024,
        },
    );
}

#[test]
fn incr_follows_redis() {
    let mut m = machine();
    let incr = |delta| Command::Incr { key: b("n"), delta };
    assert_eq!(exec(&mut m, incr(5)), Ok(Response::Integer(5)));
    assert_eq!(exec(&mut m, incr(-7)), Ok(Response::Integer(-2)));
    assert_eq!(m.get(b"n"), Some(b("-2")));
    exec(&mut m, put("n", "9223372036854775807")).unwrap();
    assert_refused(&mut m, incr(1), CommandError::Overflow);
    exec(&mut m, put("n", "-9223372036854775808")).unwrap();
    assert_refused(&mut m, incr(-1), CommandError::Overflow);
    for bad in ["abc", " 1", "01", "1.5", ""] {
        exec(&mut m, put("n", bad)).unwrap();
        assert_refused(&mut m, incr(1), CommandError::NotAnInteger);
    }
}

#[test]
fn incr_by_float() {
    let mut m = machine();
    let incr = |delta: f64| Command::IncrByFloat {
        key: b("f"),
        delta_bits: delta.to_bits(),
    };
    assert_eq!(exec(&mut m, incr(10.5)), Ok(value("10.5")));
    assert_eq!(exec(&mut m, incr(0.5)), Ok(value("11")));
    assert_eq!(exec(&mut m, incr(-1.25)), Ok(value("9.75")));
    assert_refused(&mut m, incr(f64::INFINITY), CommandError::NotFinite);
    assert_refused(&mut m, incr(f64::NAN), CommandError::NotFinite);
    exec(&mut m, put("f", "1.7976931348623157e308")).unwrap();
    assert_refused(
        &mut m,
        incr(1.7976931348623157e308),
        CommandError::NotFinite,
    );
    exec(&mut m, put("f", "pi")).unwrap();
    assert_refused(&mut m, incr(1.0), CommandError::NotAFloat);
}

#[test]
fn set_range_pads_with_zeros() {
    let mut m = machine();
    let set_range = |offset, v: &str| Command::SetRange {
        key: b("k"),
        offset,
        value: b(v),
    };
    // Empty value on an absent key: length 0 and no key created (Redis).
    assert_eq!(exec(&mut m, set_range(5, "")), Ok(Response::Length(0)));
    assert_eq!(m.get(b"k"), None);
    assert_eq!(exec(&mut m, set_range(2, "ab")), Ok(Response::Length(4)));
    assert_eq!(m.get(b"k"), Some(Bytes::from_static(b"\0\0ab")));
    assert_eq!(exec(&mut m, set_range(0, "X")), Ok(Response::Length(4)));
    assert_eq!(m.get(b"k"), Some(Bytes::from_static(b"X\0ab")));
    assert_eq!(exec(&mut m, set_range(1, "")), Ok(Response::Length(4)));
}

#[test]
fn set_range_beyond_limits_is_refused() {
    let mut m = small_limits_machine();
    assert_refused(
        &mut m,
        Command::SetRange {
            key: b("k"),
            offset: 8,
            value: b("x"),
        },
        CommandError::ValueTooLarge { size: 9, max: 8 },
    );
    assert_refused(
        &mut m,
        Command::SetRange {
            key: b("k"),
            offset: u64::MAX,
            value: b("x"),
        },
        CommandError::ValueTooLarge {
            size: u64::MAX,
            max: 8,
        },
    );
}

#[test]
fn get_set_get_del_set_nx() {
    let mut m = machine();
    assert_eq!(
        exec(
            &mut m,
            Command::GetSet {
                key: b("k"),
                value: b("1")
            }
        ),
        Ok(Response::Value(None))
    );
    assert_eq!(
        exec(
            &mut m,
            Command::GetSet {
                key: b("k"),
                value: b("2")
            }
        ),
        Ok(value("1"))
    );
    assert_eq!(
        exec(
            &mut m,
            Command::SetNx {
                key: b("k"),
                value: b("3")
            }
        ),
        Ok(Response::Written(false))
    );
    assert_eq!(
        exec(&mut m, Command::GetDel { key: b("k") }),
        Ok(value("2"))
    );
    assert_eq!(
        exec(&mut m, Command::GetDel { key: b("k") }),
        Ok(Response::Value(None))
    );
    assert_eq!(
        exec(
            &mut m,
            Command::SetNx {
                key: b("k"),
                value: b("3")
            }
        ),
        Ok(Response::Written(true))
    );
    assert_eq!(m.get(b"k"), Some(b("3")));
}

#[test]
fn mset_nx_is_all_or_nothing() {
    let mut m = machine();
    exec(&mut m, put("b", "old")).unwrap();
    let before = m.data_hash();
    assert_eq!(
        exec(
            &mut m,
            Command::MSetNx {
                pairs: vec![(b("a"), b("1")), (b("b"), b("2"))]
            }
        ),
        Ok(Response::Written(false))
    );
    assert_eq!(m.data_hash(), before);
    assert_eq!(
        exec(
            &mut m,
            Command::MSetNx {
                pairs: vec![(b("a"), b("1")), (b("c"), b("3"))]
            }
        ),
        Ok(Response::Written(true))
    );
    assert_eq!(m.get(b"a"), Some(b("1")));
    assert_eq!(m.get(b"c"), Some(b("3")));
}

#[test]
fn read_serves_reads_without_changing_state() {
    let mut m = machine();
    exec(&mut m, put("a", "1")).unwrap();
    let before = m.state_hash();
    assert_eq!(m.read(&get("a")), Ok(value("1")));
    assert_eq!(
        m.read(&Command::BatchGet {
            keys: vec![b("a"), b("z")]
        }),
        Ok(Response::Values(vec![Some(b("1")), None]))
    );
    assert_eq!(m.read(&put("a", "2")), Err(CommandError::NotReadOnly));
    assert_eq!(m.state_hash(), before);
}

#[test]
fn read_checks_the_region() {
    let m = KvStateMachine::with_region(RegionRange::new(b("m"), None));
    assert_eq!(
        m.read(&get("a")),
        Err(CommandError::OutOfRange { key: b("a") })
    );
}

#[test]
fn delete_many_removes_all_keys_at_once_and_counts_existing_ones() {
    let mut m = machine();
    exec(&mut m, put("a", "1")).unwrap();
    exec(&mut m, put("c", "3")).unwrap();
    let keys = vec![b("a"), b("b"), b("c"), b("a")];
    assert_eq!(
        exec(&mut m, Command::DeleteMany { keys }),
        Ok(Response::Integer(2)),
        "a repeated key counts once; a missing key counts zero"
    );
    assert!(m.is_empty());
    assert_eq!(
        exec(&mut m, Command::DeleteMany { keys: vec![b("a")] }),
        Ok(Response::Integer(0))
    );
}

#[test]
fn delete_many_is_refused_whole_when_one_key_is_bad() {
    let mut m = small_limits_machine();
    exec(&mut m, put("a", "1")).unwrap();
    assert_refused(
        &mut m,
        Command::DeleteMany {
            keys: vec![b("a"), b("toolong")],
        },
        CommandError::KeyTooLarge { size: 7, max: 4 },
    );
    assert_refused(
        &mut m,
        Command::DeleteMany {
            keys: vec![b("a"), b("b"), b("c")],
        },
        CommandError::BatchTooLarge { size: 3, max: 2 },
    );
}

#[test]
fn delete_many_outside_the_region_changes_nothing() {
    let mut m = KvStateMachine::with_region(RegionRange::new(b("b"), Some(b("d"))));
    exec(&mut m, put("b", "1")).unwrap();
    assert_refused(
        &mut m,
        Command::DeleteMany {
            keys: vec![b("b"), b("e")],
        },
        CommandError::OutOfRange { key: b("e") },
    );
}

#[test]
fn count_is_the_number_of_keys_and_read_only() {
    let mut m = machine();
    assert_eq!(m.read(&Command::Count), Ok(Response::Integer(0)));
    exec(&mut m, put("a", "1")).unwrap();
    exec(&mut m, put("b", "2")).unwrap();
    assert_eq!(m.read(&Command::Count), Ok(Response::Integer(2)));
    assert!(Command::Count.is_read_only());
    assert!(!Command::DeleteMany { keys: vec![] }.is_read_only());
}

#[test]
fn command_results_round_trip_and_garbage_is_refused() {
    let results = [
        Ok(Response::Integer(-5)),
        Ok(Response::Put {
            written: false,
            previous: Some(b("x")),
        }),
        Err(CommandError::NotAnInteger),
    ];
    for r in results {
        let bytes = kv::encode_command_result(&r);
        assert_eq!(kv::decode_command_result(&bytes), Ok(r));
        for cut in 0..bytes.len() {
            assert!(kv::decode_command_result(&bytes[..cut]).is_err());
        }
    }
    assert!(kv::decode_command_result(&[9, 0, 0]).is_err());
}

/// A pipeline runs its commands in order as one entry: a later command sees an earlier one's
/// write, a failing command changes nothing and does not stop the next, and a retry of the
/// entry (same sequence) is answered from the session without running anything again.
#[test]
fn pipeline_runs_in_order_and_each_command_fails_alone() {
    let mut m = machine();
    exec(&mut m, put("n", "not a number")).expect("put");
    let pipeline = Command::Pipeline {
        commands: vec![
            Command::Put {
                key: b("a"),
                value: b("1"),
                options: PutOptions::default(),
            },
            Command::Incr {
                key: b("a"),
                delta: 41,
            },
            Command::Incr {
                key: b("n"),
                delta: 1,
            },
            Command::Get { key: b("a") },
            Command::Delete { key: b("n") },
        ],
    };
    let expected = Response::Pipeline(vec![
        Ok(Response::Put {
            written: true,
            previous: None,
        }),
        Ok(Response::Integer(42)),
        Err(CommandError::NotAnInteger),
        Ok(value("42")),
        Ok(Response::Deleted(true)),
    ]);
    let first = common::submit(&mut m, common::CLIENT, 100, pipeline.clone(), 0);
    assert_eq!(first.result, Ok(expected.clone()));
    assert!(!first.duplicate);
    let hash = m.data_hash();
    let retry = common::submit(&mut m, common::CLIENT, 100, pipeline, 0);
    assert!(retry.duplicate, "a retried pipeline must not run again");
    assert_eq!(retry.result, Ok(expected));
    assert_eq!(m.data_hash(), hash);
    assert_eq!(m.get(b"a"), Some(b("42")));
    assert_eq!(m.get(b"n"), None);
}

/// Read-only pipelines are served by `read`; one write inside makes the whole pipeline a
/// write; a key outside the region refuses the whole pipeline before anything runs; too many
/// commands are refused like an oversized batch.
#[test]
fn pipeline_reads_region_and_size_rules() {
    let mut m = machine();
    exec(&mut m, put("k", "v")).expect("put");
    let reads = Command::Pipeline {
        commands: vec![Command::Get { key: b("k") }, Command::Get { key: b("x") }],
    };
    assert!(reads.is_read_only());
    assert_eq!(
        m.read(&reads),
        Ok(Response::Pipeline(vec![
            Ok(value("v")),
            Ok(Response::Value(None))
        ]))
    );
    let mixed = Command::Pipeline {
        commands: vec![
            Command::Get { key: b("k") },
            Command::Delete { key: b("k") },
        ],
    };
    assert!(!mixed.is_read_only());
    assert_eq!(m.read(&mixed), Err(CommandError::NotReadOnly));

    let mut left = KvStateMachine::with_region(RegionRange {
        start: Bytes::new(),
        end: Some(b("m")),
    });
    let straddling = Command::Pipeline {
        commands: vec![
            Command::Delete { key: b("a") },
            Command::Delete { key: b("z") },
        ],
    };
    assert_refused(
        &mut left,
        straddling,
        CommandError::OutOfRange { key: b("z") },
    );

    let mut small = small_limits_machine();
    let three = Command::Pipeline {
        commands: vec![Command::Get { key: b("a") }; 3],
    };
    assert_refused(
        &mut small,
        three,
        CommandError::BatchTooLarge { size: 3, max: 2 },
    );
}

/// The codec refuses a pipeline inside a pipeline, looking only at the tag, so a crafted
/// entry of a million nested pipelines is one quick error, not a deep recursion; an empty
/// pipeline is refused too. Pipeline results round-trip.
#[test]
fn pipeline_codec_refuses_nesting_and_empty() {
    let one = Command::Pipeline {
        commands: vec![Command::Count],
    };
    assert_eq!(Command::decode(&one.encode()), Ok(one.clone()));
    // version, then (tag 18, count 1) a million times.
    let mut nested = vec![kv::CODEC_VERSION];
    for _ in 0..1_000_000 {
        nested.extend_from_slice(&[18, 1]);
    }
    nested.push(17);
    assert!(matches!(
        Command::decode(&nested),
        Err(kv::DecodeError::NestedPipeline { .. })
    ));
    assert!(Command::decode(&[kv::CODEC_VERSION, 18, 0]).is_err());

    let result: Result<Response, CommandError> = Ok(Response::Pipeline(vec![
        Ok(Response::Integer(3)),
        Err(CommandError::Overflow),
        Ok(Response::Values(vec![None, Some(b("v"))])),
    ]));
    let bytes = kv::encode_command_result(&result);
    assert_eq!(kv::decode_command_result(&bytes), Ok(result));
    for cut in 0..bytes.len() {
        assert!(kv::decode_command_result(&bytes[..cut]).is_err());
    }
    // Result: version, Ok, pipeline of one Ok pipeline (refused on its tag).
    let mut nested = vec![kv::CODEC_VERSION, 0];
    for _ in 0..1_000_000 {
        nested.extend_from_slice(&[10, 1, 0]);
    }
    nested.push(0);
    assert!(matches!(
        kv::decode_command_result(&nested),
        Err(kv::DecodeError::NestedPipeline { .. })
    ));
}

/// A pipeline's answer larger than `MAX_KEPT_PIPELINE_RESULT_BYTES` is returned in full, but
/// the session keeps only a marker: a retry is answered `ResultNotKept` and applies nothing
/// again. A small answer is kept whole (see `pipeline_runs_in_order_and_each_command_fails_alone`).
#[test]
fn a_large_pipeline_answer_is_not_kept_for_a_retry() {
    let mut m = machine();
    let big = "v".repeat(40 * 1024);
    exec(&mut m, put("big", &big)).expect("put");
    let pipeline = Command::Pipeline {
        commands: vec![
            Command::Incr {
                key: b("n"),
                delta: 1,
            },
            Command::Get { key: b("big") },
            Command::Get { key: b("big") },
        ],
    };
    let first = common::submit(&mut m, common::CLIENT, 100, pipeline.clone(), 0);
    assert_eq!(
        first.result,
        Ok(Response::Pipeline(vec![
            Ok(Response::Integer(1)),
            Ok(value(&big)),
            Ok(value(&big))
        ]))
    );
    let retry = common::submit(&mut m, common::CLIENT, 100, pipeline, 0);
    assert!(retry.duplicate);
    assert!(
        matches!(
            retry.result,
            Err(ApplyError::Command(CommandError::ResultNotKept { size }))
                if size as usize > kv::MAX_KEPT_PIPELINE_RESULT_BYTES
        ),
        "{:?}",
        retry.result
    );
    assert_eq!(m.get(b"n"), Some(b("1")), "the retry must not apply again");
}

/// `Limits::check` (what the front end runs before proposing) refuses exactly what applying
/// refuses for size, with the same error, so an oversized command never reaches the log.
#[test]
fn limits_check_at_the_edge_agrees_with_apply() {
    let limits = *small_limits_machine().limits();
    let pair = |k: &str, v: &str| (b(k), b(v));
    let get = |k: &str| Command::Get { key: b(k) };
    let cases = vec![
        (
            Command::Put {
                key: b("kkkkk"),
                value: b("v"),
                options: PutOptions::default(),
            },
            Some(CommandError::KeyTooLarge { size: 5, max: 4 }),
        ),
        (
            Command::Put {
                key: b("k"),
                value: b("123456789"),
                options: PutOptions::default(),
            },
            Some(CommandError::ValueTooLarge { size: 9, max: 8 }),
        ),
        (
            Command::BatchPut {
                pairs: vec![pair("a", "1"), pair("b", "2"), pair("c", "3")],
            },
            Some(CommandError::BatchTooLarge { size: 3, max: 2 }),
        ),
        (
            Command::BatchPut {
                pairs: vec![pair("a", "1"), pair("b", "2")],
            },
            None,
        ),
        (
            Command::Pipeline {
                commands: vec![get("a"), get("b"), get("c")],
            },
            Some(CommandError::BatchTooLarge { size: 3, max: 2 }),
        ),
        (
            Command::Scan {
                start: b("a"),
                end: None,
                limit: 4,
            },
            Some(CommandError::ScanLimitTooLarge { limit: 4, max: 3 }),
        ),
        (
            Command::Scan {
                start: b("a"),
                end: None,
                limit: 3,
            },
            None,
        ),
    ];
    for (i, (command, refused)) in cases.into_iter().enumerate() {
        assert_eq!(
            limits.check(&command).err(),
            refused,
            "case {i}: {command:?}"
        );
        let mut m = small_limits_machine();
        let applied = exec(&mut m, command.clone());
        match refused {
            Some(e) => assert_eq!(applied, Err(ApplyError::Command(e)), "case {i}"),
            None => assert!(applied.is_ok(), "case {i}: {applied:?}"),
        }
    }
}
