//! Exactly-once sessions, apply-level rules, region checks and split.

mod common;

use bytes::Bytes;
use common::{b, exec, get, put, submit, CLIENT};
use kv::{
    ApplyError, ClientId, Command, CommandError, KvStateMachine, Limits, RegionRange, Request,
    Response, Sequence, SessionPolicy, SplitError,
};

fn machine_with(policy: SessionPolicy) -> KvStateMachine {
    KvStateMachine::new(RegionRange::full(), Limits::default(), policy)
}

fn append(value: &str) -> Command {
    Command::Append {
        key: b("k"),
        value: b(value),
    }
}

#[test]
fn duplicate_sequence_returns_cached_reply_without_reapplying() {
    let mut m = KvStateMachine::with_region(RegionRange::full());
    let first = submit(&mut m, CLIENT, 1, append("x"), 10);
    assert_eq!(first.result, Ok(Response::Length(1)));
    assert!(!first.duplicate);
    let data_before = m.data_hash();
    let retry = submit(&mut m, CLIENT, 1, append("x"), 20);
    assert_eq!(retry.result, Ok(Response::Length(1)));
    assert!(retry.duplicate);
    assert_eq!(m.data_hash(), data_before);
    assert_eq!(m.get(b"k"), Some(b("x")));
    // The retry refreshed the session's last_seen.
    assert_eq!(m.session(CLIENT).map(|s| s.last_seen_ms), Some(20));
}

#[test]
fn duplicate_of_a_failed_command_returns_the_same_error() {
    let mut m = KvStateMachine::with_region(RegionRange::full());
    submit(&mut m, CLIENT, 1, put("n", "abc"), 0);
    let incr = Command::Incr {
        key: b("n"),
        delta: 1,
    };
    let first = submit(&mut m, CLIENT, 2, incr.clone(), 0);
    assert_eq!(
        first.result,
        Err(ApplyError::Command(CommandError::NotAnInteger))
    );
    // Even if the value became an integer meanwhile (another client), the retry must get the
    // original reply, not a second execution.
    submit(&mut m, ClientId(99), 1, put("n", "5"), 0);
    let retry = submit(&mut m, CLIENT, 2, incr, 0);
    assert!(retry.duplicate);
    assert_eq!(
        retry.result,
        Err(ApplyError::Command(CommandError::NotAnInteger))
    );
    assert_eq!(m.get(b"n"), Some(b("5")));
}

#[test]
fn stale_sequence_is_refused_and_changes_nothing() {
    let mut m = KvStateMachine::with_region(RegionRange::full());
    submit(&mut m, CLIENT, 1, append("a"), 0);
    submit(&mut m, CLIENT, 2, append("b"), 0);
    let data_before = m.data_hash();
    let session_before = m.session(CLIENT).cloned();
    let stale = submit(&mut m, CLIENT, 1, append("a"), 0);
    assert_eq!(
        stale.result,
        Err(ApplyError::SessionStale {
            client_id: CLIENT,
            sequence: Sequence(1),
            last_applied: Sequence(2)
        })
    );
    assert_eq!(m.data_hash(), data_before);
    assert_eq!(m.session(CLIENT).cloned(), session_before);
}

#[test]
fn sequences_may_skip_but_not_be_zero() {
    let mut m = KvStateMachine::with_region(RegionRange::full());
    assert_eq!(
        submit(&mut m, CLIENT, 0, append("a"), 0).result,
        Err(ApplyError::InvalidSequence { client_id: CLIENT })
    );
    assert!(m.is_empty());
    assert_eq!(
        submit(&mut m, CLIENT, 5, append("a"), 0).result,
        Ok(Response::Length(1))
    );
    assert_eq!(
        submit(&mut m, CLIENT, 9, append("b"), 0).result,
        Ok(Response::Length(2))
    );
}

#[test]
fn client_zero_may_read_but_not_write() {
    let mut m = KvStateMachine::with_region(RegionRange::full());
    exec(&mut m, put("a", "1")).unwrap();
    let read = submit(&mut m, ClientId::NONE, 0, get("a"), 0);
    assert_eq!(read.result, Ok(Response::Value(Some(b("1")))));
    assert!(m.session(ClientId::NONE).is_none());
    let before = m.data_hash();
    let write = submit(&mut m, ClientId::NONE, 1, put("a", "2"), 0);
    assert_eq!(write.result, Err(ApplyError::SessionRequired));
    assert_eq!(m.data_hash(), before);
}

#[test]
fn sessions_expire_by_log_time() {
    let policy = SessionPolicy {
        ttl_ms: 100,
        max_sessions: 10,
    };
    let mut m = machine_with(policy);
    submit(&mut m, ClientId(1), 1, append("a"), 1_000);
    submit(&mut m, ClientId(2), 1, put("other", "x"), 1_050);
    // At exactly last_seen + ttl the session is still alive (expiry is strict `<`).
    submit(&mut m, ClientId(3), 1, put("t", "x"), 1_100);
    assert!(m.session(ClientId(1)).is_some());
    submit(&mut m, ClientId(3), 2, put("t", "y"), 1_101);
    assert!(
        m.session(ClientId(1)).is_none(),
        "client 1 should be expired"
    );
    assert!(m.session(ClientId(2)).is_some());
    // A retry from the expired client is applied again: the documented reason why the TTL
    // must exceed the client's retry horizon.
    let late_retry = submit(&mut m, ClientId(1), 1, append("a"), 1_102);
    assert!(!late_retry.duplicate);
    assert_eq!(m.get(b"k"), Some(b("aa")));
}

#[test]
fn log_time_never_goes_backwards() {
    let policy = SessionPolicy {
        ttl_ms: 100,
        max_sessions: 10,
    };
    let mut m = machine_with(policy);
    submit(&mut m, ClientId(1), 1, append("a"), 1_000);
    submit(&mut m, ClientId(2), 1, append("b"), 2_000);
    // A new leader with a lagging clock proposes at 500: log time stays at 2_000.
    submit(&mut m, ClientId(2), 2, append("c"), 500);
    assert_eq!(m.clock_ms(), 2_000);
    assert!(m.session(ClientId(1)).is_none());
    assert_eq!(m.session(ClientId(2)).map(|s| s.last_seen_ms), Some(2_000));
}

#[test]
fn full_table_evicts_the_oldest_session_deterministically() {
    let policy = SessionPolicy {
        ttl_ms: u64::MAX,
        max_sessions: 2,
    };
    let mut m = machine_with(policy);
    submit(&mut m, ClientId(5), 1, put("a", "1"), 10);
    submit(&mut m, ClientId(4), 1, put("b", "1"), 10);
    // Tie on last_seen: the smaller client id (4) is evicted.
    submit(&mut m, ClientId(6), 1, put("c", "1"), 20);
    assert_eq!(m.session_count(), 2);
    assert!(m.session(ClientId(4)).is_none());
    assert!(m.session(ClientId(5)).is_some());
    // Client 5 touches its session; then a new client evicts 6 (older last_seen).
    submit(&mut m, ClientId(5), 1, put("a", "1"), 30);
    submit(&mut m, ClientId(7), 1, put("d", "1"), 40);
    assert!(m.session(ClientId(6)).is_none());
    assert!(m.session(ClientId(5)).is_some());
    assert!(m.session(ClientId(7)).is_some());
}

#[test]
fn malformed_payload_only_advances_the_applied_index() {
    let mut m = KvStateMachine::with_region(RegionRange::full());
    exec(&mut m, put("a", "1")).unwrap();
    let mut reference = m.clone();
    let outcome = m.apply(2, b"\x01\xff\xff");
    assert!(matches!(outcome.result, Err(ApplyError::Malformed(_))));
    assert_eq!(outcome.client, None);
    assert_eq!(m.applied_index(), 2);
    reference.apply_noop(2);
    assert_eq!(m.state_hash(), reference.state_hash());
    assert_eq!(m, reference);
}

#[test]
#[should_panic(expected = "increasing index order")]
fn applying_an_old_index_panics() {
    let mut m = KvStateMachine::with_region(RegionRange::full());
    m.apply_noop(5);
    m.apply(5, &[]);
}

#[test]
fn out_of_range_is_refused_and_not_recorded() {
    let mut m = KvStateMachine::with_region(RegionRange::new(b("m"), Some(b("t"))));
    submit(&mut m, CLIENT, 1, put("n", "1"), 0);
    let before = m.clone();
    for (sequence, command) in [
        (2, put("a", "1")),
        (2, put("t", "1")),
        (
            2,
            Command::BatchPut {
                pairs: vec![(b("n"), b("2")), (b("z"), b("2"))],
            },
        ),
        (
            2,
            Command::MSetNx {
                pairs: vec![(b("o"), b("2")), (b("a"), b("2"))],
            },
        ),
    ] {
        let outcome = submit(&mut m, CLIENT, sequence, command, 0);
        assert!(
            matches!(
                outcome.result,
                Err(ApplyError::Command(CommandError::OutOfRange { .. }))
            ),
            "{outcome:?}"
        );
    }
    assert_eq!(m.data_hash(), before.data_hash());
    // Not recorded: the session still says sequence 1, so the re-routed retry with
    // sequence 2 is applied wherever it lands.
    assert_eq!(
        m.session(CLIENT).map(|s| s.last_sequence),
        Some(Sequence(1))
    );
    assert_eq!(
        submit(&mut m, CLIENT, 2, put("s", "1"), 0).result,
        Ok(Response::Put {
            written: true,
            previous: None
        })
    );
}

#[test]
fn region_bounds_are_start_inclusive_end_exclusive() {
    let range = RegionRange::new(b("b"), Some(b("d")));
    assert!(!range.contains(b"a"));
    assert!(range.contains(b"b"));
    assert!(range.contains(b"czzz"));
    assert!(!range.contains(b"d"));
    let unbounded = RegionRange::new(b("b"), None);
    assert!(unbounded.contains(b"\xff\xff\xff"));
    assert!(RegionRange::full().contains(b""));
}

#[test]
fn split_off_moves_keys_and_copies_sessions() {
    let mut left = KvStateMachine::with_region(RegionRange::new(b("a"), Some(b("z"))));
    for (sequence, key) in (1..).zip(["a", "f", "m", "mm", "y"]) {
        submit(&mut left, ClientId(1), sequence, put(key, key), 5);
    }
    let total_before = left.len();
    let mut right = left.split_off(b("m")).expect("m is inside [a, z)");
    assert_eq!(left.region(), &RegionRange::new(b("a"), Some(b("m"))));
    assert_eq!(right.region(), &RegionRange::new(b("m"), Some(b("z"))));
    let left_keys: Vec<_> = left.iter().map(|(k, _)| k.to_vec()).collect();
    let right_keys: Vec<_> = right.iter().map(|(k, _)| k.to_vec()).collect();
    assert_eq!(left_keys, vec![b("a"), b("f")]);
    assert_eq!(right_keys, vec![b("m"), b("mm"), b("y")]);
    assert_eq!(left.len() + right.len(), total_before);
    assert_eq!(left.applied_index(), right.applied_index());
    assert_eq!(left.session(ClientId(1)), right.session(ClientId(1)));

    // The retry of the last request is recognised on both sides.
    let last = left
        .session(ClientId(1))
        .map(|s| s.last_sequence.0)
        .unwrap_or(0);
    assert!(submit(&mut right, ClientId(1), last, put("y", "y"), 6).duplicate);
    assert!(submit(&mut left, ClientId(1), last, put("y", "y"), 6).duplicate);
    // Each side now refuses the other's keys.
    assert_eq!(
        left.read(&get("m")),
        Err(CommandError::OutOfRange { key: b("m") })
    );
    assert_eq!(right.read(&get("m")), Ok(Response::Value(Some(b("m")))));
}

#[test]
fn split_off_refuses_keys_not_strictly_inside() {
    let mut m = KvStateMachine::with_region(RegionRange::new(b("b"), Some(b("d"))));
    for at in ["a", "b", "d", "e"] {
        let before = m.clone();
        assert!(matches!(
            m.split_off(b(at)),
            Err(SplitError::KeyNotInside { .. })
        ));
        assert_eq!(m, before);
    }
    let mut unbounded = KvStateMachine::with_region(RegionRange::full());
    let right = unbounded.split_off(Bytes::from_static(b"\x80")).unwrap();
    assert_eq!(right.region().end, None);
    assert_eq!(unbounded.region().end, Some(Bytes::from_static(b"\x80")));
}

#[test]
fn absorb_takes_the_neighbours_keys_and_newest_sessions() {
    let mut left = KvStateMachine::with_region(RegionRange::new(b("a"), Some(b("z"))));
    for (sequence, key) in (1..).zip(["a", "f", "m", "y"]) {
        submit(&mut left, ClientId(1), sequence, put(key, key), 5);
    }
    let mut right = left.split_off(b("m")).expect("m is inside");
    // Client 1 goes on in the right half only; client 2 writes only on the left.
    submit(&mut right, ClientId(1), 10, put("n", "n"), 7);
    submit(&mut left, ClientId(2), 1, put("b", "b"), 6);
    let (l, r) = (left.clone(), right.clone());

    // Either side can absorb the other.
    let mut merged = left.clone();
    merged.absorb(right.clone()).expect("adjacent");
    let mut merged_right = right;
    merged_right.absorb(left).expect("adjacent");
    for m in [&merged, &merged_right] {
        assert_eq!(m.region(), &RegionRange::new(b("a"), Some(b("z"))));
        let keys: Vec<_> = m.iter().map(|(k, _)| k.to_vec()).collect();
        assert_eq!(keys, vec![b("a"), b("b"), b("f"), b("m"), b("n"), b("y")]);
        assert_eq!(m.session(ClientId(1)).unwrap().last_sequence.0, 10);
        assert_eq!(m.session(ClientId(2)), l.session(ClientId(2)));
        assert_eq!(m.clock_ms(), 7);
        m.assert_invariants();
    }
    // The retry of client 1's last request (applied by the right half) is recognised.
    let mut merged = merged;
    assert!(submit(&mut merged, ClientId(1), 10, put("n", "n"), 8).duplicate);

    // The union of two full session tables is cut back to the bound, oldest first.
    let policy = SessionPolicy {
        max_sessions: 2,
        ..SessionPolicy::default()
    };
    let mut a = KvStateMachine::new(
        RegionRange::new(b("a"), Some(b("m"))),
        Limits::default(),
        policy,
    );
    let mut bm = KvStateMachine::new(RegionRange::new(b("m"), None), Limits::default(), policy);
    submit(&mut a, ClientId(1), 1, put("a", "1"), 10);
    submit(&mut a, ClientId(2), 1, put("b", "1"), 20);
    submit(&mut bm, ClientId(3), 1, put("n", "1"), 15);
    submit(&mut bm, ClientId(4), 1, put("o", "1"), 30);
    a.absorb(bm).expect("adjacent");
    assert_eq!(a.session_count(), 2);
    assert!(a.session(ClientId(2)).is_some() && a.session(ClientId(4)).is_some());
    a.assert_invariants();

    // Regions that do not touch are refused, and nothing changes.
    let mut far = KvStateMachine::with_region(RegionRange::new(b("za"), None));
    let before = far.clone();
    assert!(matches!(far.absorb(r), Err(SplitError::NotAdjacent { .. })));
    assert_eq!(far, before);
}

#[test]
fn apply_request_matches_apply_of_encoded_payload() {
    let request = Request {
        client_id: CLIENT,
        sequence: Sequence(3),
        command: put("a", "b"),
        proposed_at_ms: 42,
    };
    let mut decoded = KvStateMachine::with_region(RegionRange::full());
    let mut raw = decoded.clone();
    let a = decoded.apply_request(1, &request);
    let b = raw.apply(1, &request.encode());
    assert_eq!(a, b);
    assert_eq!(decoded, raw);
}
