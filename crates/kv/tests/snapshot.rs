//! Snapshot round trips, determinism, and rejection of every truncation and bit flip.

mod common;

use common::{b, put, submit};
use kv::{
    ClientId, Command, ExpireCondition, Expiry, KvStateMachine, Limits, RegionRange, Response,
    SessionPolicy, SnapshotError,
};

/// A machine with data, several sessions (one caching an error) and non-default config.
fn populated() -> KvStateMachine {
    let limits = Limits {
        max_key_bytes: 100,
        max_value_bytes: 1_000,
        max_batch_keys: 5,
        max_scan_limit: 50,
    };
    let policy = SessionPolicy {
        ttl_ms: 5_000,
        max_sessions: 10,
    };
    let mut m = KvStateMachine::new(RegionRange::new(b("a"), Some(b("q"))), limits, policy);
    submit(&mut m, ClientId(1), 1, put("apple", "red"), 100);
    submit(&mut m, ClientId(2), 1, put("banana", "yellow"), 200);
    submit(
        &mut m,
        ClientId(2),
        2,
        Command::Incr {
            key: b("banana"),
            delta: 1,
        },
        300,
    );
    submit(
        &mut m,
        ClientId(300),
        9,
        Command::Scan {
            start: b("a"),
            end: None,
            limit: 10,
        },
        400,
    );
    // A hash, a deadline, and a delete (deleted_version).
    submit(
        &mut m,
        ClientId(300),
        10,
        Command::HSet {
            key: b("hash"),
            fields: vec![(b("f1"), b("v1")), (b("f2"), b(""))],
            if_absent: false,
        },
        400,
    );
    submit(
        &mut m,
        ClientId(300),
        11,
        Command::Expire {
            key: b("apple"),
            when: Expiry::At { ms: 10_000 },
            condition: ExpireCondition::Always,
        },
        400,
    );
    submit(&mut m, ClientId(300), 12, put("gone", "x"), 400);
    submit(
        &mut m,
        ClientId(300),
        13,
        Command::Delete { key: b("gone") },
        400,
    );
    m.apply_noop(10);
    m
}

#[test]
fn round_trip_preserves_everything() {
    let m = populated();
    assert_eq!(m.session_count(), 3);
    let snapshot = m.snapshot();
    let restored = KvStateMachine::restore(&snapshot).expect("valid snapshot");
    assert_eq!(restored, m);
    assert_eq!(restored.state_hash(), m.state_hash());
    assert_eq!(restored.applied_index(), 10);
    assert_eq!(restored.region(), m.region());
    assert_eq!(restored.limits(), m.limits());
    assert_eq!(restored.session_policy(), m.session_policy());
    // Restoring then snapshotting again gives the same bytes.
    assert_eq!(restored.snapshot(), snapshot);
}

#[test]
fn restored_machine_still_deduplicates() {
    let m = populated();
    let mut restored = KvStateMachine::restore(&m.snapshot()).expect("valid snapshot");
    let retry = submit(
        &mut restored,
        ClientId(2),
        2,
        Command::Incr {
            key: b("banana"),
            delta: 1,
        },
        500,
    );
    assert!(retry.duplicate);
    assert_eq!(
        retry.result,
        Err(kv::ApplyError::Command(kv::CommandError::NotAnInteger))
    );
}

#[test]
fn equal_histories_give_identical_bytes_and_hashes() {
    assert_eq!(populated().snapshot(), populated().snapshot());
    assert_eq!(populated().state_hash(), populated().state_hash());
    let mut other = populated();
    submit(&mut other, ClientId(1), 2, put("apple", "green"), 600);
    assert_ne!(other.state_hash(), populated().state_hash());
    assert_ne!(other.data_hash(), populated().data_hash());
}

#[test]
fn state_hash_covers_sessions_and_applied_index() {
    let base = populated();
    let mut advanced = base.clone();
    advanced.apply_noop(11);
    assert_ne!(advanced.state_hash(), base.state_hash());
    assert_eq!(advanced.data_hash(), base.data_hash());

    let mut with_session = base.clone();
    // A read from a new client adds a session but changes no data.
    submit(
        &mut with_session,
        ClientId(50),
        1,
        Command::Get { key: b("apple") },
        400,
    );
    let mut without_session = base.clone();
    submit(
        &mut without_session,
        ClientId::NONE,
        0,
        Command::Get { key: b("apple") },
        400,
    );
    assert_eq!(with_session.data_hash(), without_session.data_hash());
    assert_ne!(with_session.state_hash(), without_session.state_hash());
}

#[test]
fn every_truncation_is_rejected() {
    let snapshot = populated().snapshot();
    for len in 0..snapshot.len() {
        assert!(
            KvStateMachine::restore(&snapshot[..len]).is_err(),
            "truncation to {len} of {} bytes was accepted",
            snapshot.len()
        );
    }
    let mut padded = snapshot.to_vec();
    padded.push(0);
    assert!(matches!(
        KvStateMachine::restore(&padded),
        Err(SnapshotError::LengthMismatch { .. })
    ));
}

#[test]
fn every_single_bit_flip_is_rejected() {
    let snapshot = populated().snapshot();
    for bit in 0..snapshot.len() * 8 {
        let mut corrupt = snapshot.to_vec();
        corrupt[bit / 8] ^= 1 << (bit % 8);
        assert!(
            KvStateMachine::restore(&corrupt).is_err(),
            "flip of bit {bit} was accepted"
        );
    }
}

#[test]
fn header_errors_are_specific() {
    let snapshot = populated().snapshot().to_vec();
    let mut bad_magic = snapshot.clone();
    bad_magic[0] = b'X';
    assert_eq!(
        KvStateMachine::restore(&bad_magic),
        Err(SnapshotError::BadMagic)
    );
    let mut bad_version = snapshot.clone();
    bad_version[4] = 99;
    assert!(matches!(
        KvStateMachine::restore(&bad_version),
        Err(SnapshotError::UnsupportedVersion { found: 99, .. })
    ));
    let mut bad_body = snapshot.clone();
    bad_body[20] ^= 0xff;
    assert!(matches!(
        KvStateMachine::restore(&bad_body),
        Err(SnapshotError::ChecksumMismatch { .. })
    ));
    assert!(matches!(
        KvStateMachine::restore(&[]),
        Err(SnapshotError::TooShort { .. })
    ));
}

/// Re-seals a body edit with a valid checksum, to reach the semantic checks.
fn reseal(mut bytes: Vec<u8>) -> Vec<u8> {
    let body_end = bytes.len() - 4;
    let checksum = crc32c::crc32c(&bytes[..body_end]);
    bytes[body_end..].copy_from_slice(&checksum.to_le_bytes());
    bytes
}

#[test]
fn checksummed_but_inconsistent_bodies_are_rejected() {
    // Region [b, ...) holding key "bb"; rewrite the region start to "c" so the key falls
    // outside it. Body: applied(1) clock(1) start_len(1) start("b").
    let mut m = KvStateMachine::with_region(RegionRange::new(b("b"), None));
    submit(&mut m, ClientId(1), 1, put("bb", "v"), 0);
    let mut bytes = m.snapshot().to_vec();
    let header = 4 + 1 + 8;
    assert_eq!(bytes[header + 3], b'b');
    bytes[header + 3] = b'c';
    assert!(matches!(
        KvStateMachine::restore(&reseal(bytes)),
        Err(SnapshotError::Inconsistent(_))
    ));
}

#[test]
fn empty_machine_round_trips() {
    let m = KvStateMachine::with_region(RegionRange::full());
    let restored = KvStateMachine::restore(&m.snapshot()).expect("valid snapshot");
    assert_eq!(restored, m);
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn bytes_field(out: &mut Vec<u8>, bytes: &[u8]) {
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Magic, version, body length, body, checksum.
fn seal(version: u8, body: &[u8]) -> Vec<u8> {
    let mut out = b"RKVS".to_vec();
    out.push(version);
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(body);
    let checksum = crc32c::crc32c(&out);
    out.extend_from_slice(&checksum.to_le_bytes());
    out
}

/// The body fields every version shares: applied 5, clock 100, the full region, default
/// limits and session policy.
fn body_header() -> Vec<u8> {
    let mut body = Vec::new();
    varint(&mut body, 5);
    varint(&mut body, 100);
    bytes_field(&mut body, b"");
    body.push(0);
    let limits = Limits::default();
    varint(&mut body, limits.max_key_bytes as u64);
    varint(&mut body, limits.max_value_bytes as u64);
    varint(&mut body, limits.max_batch_keys as u64);
    varint(&mut body, u64::from(limits.max_scan_limit));
    let policy = SessionPolicy::default();
    varint(&mut body, policy.ttl_ms);
    varint(&mut body, policy.max_sessions as u64);
    body
}

/// A version 1 snapshot, as the previous build wrote it: string pairs only.
fn v1_snapshot(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut body = body_header();
    varint(&mut body, pairs.len() as u64);
    for (key, value) in pairs {
        bytes_field(&mut body, key.as_bytes());
        bytes_field(&mut body, value.as_bytes());
    }
    varint(&mut body, 0); // no sessions
    seal(1, &body)
}

#[test]
fn version_1_snapshots_still_restore_as_strings_without_deadlines() {
    let old = v1_snapshot(&[("a", "1"), ("b", "two")]);
    let m = KvStateMachine::restore(&old).expect("a version 1 snapshot");
    m.assert_invariants();
    assert_eq!((m.applied_index(), m.clock_ms(), m.len()), (5, 100, 2));
    assert_eq!(m.get(b"b"), Some(b("two")));
    assert_eq!(m.deleted_version(), 0);
    assert_eq!(m.next_deadline_ms(), None);
    match m.read(&Command::Inspect { key: b("a") }) {
        Ok(Response::KeyInfo {
            info: Some(info),
            version,
            ..
        }) => {
            assert_eq!((info.expires_at_ms, version), (None, 0));
        }
        other => panic!("{other:?}"),
    }
    // Written back in the current format, which restores to the same machine.
    let current = m.snapshot();
    assert_eq!(current[4], kv::snapshot::SNAPSHOT_VERSION);
    assert_eq!(KvStateMachine::restore(&current), Ok(m));
    // Version 1 rules still hold: sorted keys, every truncation refused.
    assert!(matches!(
        KvStateMachine::restore(&v1_snapshot(&[("b", "1"), ("a", "1")])),
        Err(SnapshotError::Inconsistent(_))
    ));
    for len in 0..old.len() {
        assert!(KvStateMachine::restore(&old[..len]).is_err());
    }
}

#[test]
fn version_2_round_trips_hashes_deadlines_versions_and_deleted_version() {
    let m = populated();
    assert_eq!(m.deleted_version(), 8);
    assert_eq!(m.next_deadline_ms(), Some(10_000));
    let restored = KvStateMachine::restore(&m.snapshot()).expect("valid snapshot");
    restored.assert_invariants();
    assert_eq!(restored, m);
    assert_eq!(restored.deleted_version(), 8);
    assert_eq!(restored.next_deadline_ms(), Some(10_000));
    for key in ["apple", "banana", "hash", "gone"] {
        let inspect = Command::Inspect { key: b(key) };
        assert_eq!(restored.read(&inspect), m.read(&inspect), "{key}");
    }
    assert_eq!(
        restored.read(&Command::HGetAll { key: b("hash") }),
        Ok(Response::Pairs(vec![(b("f1"), b("v1")), (b("f2"), b(""))]))
    );
    // The state hash covers deadlines, versions, types and deleted_version.
    let variants: Vec<(&str, Command)> = vec![
        (
            "deadline",
            Command::Expire {
                key: b("apple"),
                when: Expiry::At { ms: 10_001 },
                condition: ExpireCondition::Always,
            },
        ),
        (
            "version only",
            Command::HSet {
                key: b("hash"),
                fields: vec![(b("f1"), b("v1"))],
                if_absent: false,
            },
        ),
        ("deleted_version only", Command::Delete { key: b("gone") }),
    ];
    for (what, command) in variants {
        let mut changed = populated();
        let before = changed.state_hash();
        let mut noop = populated();
        // Same index advance on both, so only the command's effect differs.
        submit(&mut changed, ClientId(300), 20, command, 400);
        submit(&mut noop, ClientId(300), 20, Command::Count, 400);
        assert_ne!(changed.state_hash(), noop.state_hash(), "{what}");
        assert_ne!(changed.state_hash(), before, "{what}");
    }
    // A split side's version offset survives a snapshot.
    let mut left = populated();
    let mut right = left.split_off(b("c")).unwrap();
    right.reset_applied_index(2);
    let restored = KvStateMachine::restore(&right.snapshot()).unwrap();
    assert_eq!(restored.version_now(), right.version_now());
    assert_eq!(restored.version_now(), 10);
    left.assert_invariants();
    restored.assert_invariants();
}

/// A v2 body around one hand-written entry (after its key "k").
fn v2_with_entry(entry: &[u8]) -> Vec<u8> {
    let mut body = body_header();
    varint(&mut body, 0); // deleted_version
    varint(&mut body, 0); // version_offset
    varint(&mut body, 1);
    bytes_field(&mut body, b"k");
    body.extend_from_slice(entry);
    varint(&mut body, 0); // no sessions
    seal(2, &body)
}

#[test]
fn checksummed_but_inconsistent_v2_entries_are_rejected() {
    // type 2 (hash), version 5, no deadline, then the fields.
    let good = v2_with_entry(&[2, 5, 0, 1, 1, b'f', 1, b'v']);
    let m = KvStateMachine::restore(&good).expect("a valid hand-written entry");
    assert_eq!(
        m.read(&Command::HGetAll { key: b("k") }),
        Ok(Response::Pairs(vec![(b("f"), b("v"))]))
    );
    // String with a deadline.
    let m = KvStateMachine::restore(&v2_with_entry(&[1, 0, 1, 200, 1, 1, b'v'])).unwrap();
    assert_eq!(m.next_deadline_ms(), Some(200));
    let inconsistent = [
        ("an empty hash", vec![2, 5, 0, 0]),
        ("unsorted fields", vec![2, 5, 0, 2, 1, b'g', 0, 1, b'f', 0]),
        ("repeated fields", vec![2, 5, 0, 2, 1, b'f', 0, 1, b'f', 0]),
        ("a version after the applied index", vec![1, 6, 0, 1, b'v']),
    ];
    for (what, entry) in inconsistent {
        assert!(
            matches!(
                KvStateMachine::restore(&v2_with_entry(&entry)),
                Err(SnapshotError::Inconsistent(_))
            ),
            "{what}"
        );
    }
    for (what, entry) in [
        ("an unknown type", vec![3, 0, 0, 1, b'v']),
        ("a deadline flag of 2", vec![1, 0, 2, 1, b'v']),
        ("a truncated hash", vec![2, 0, 0, 3, 1, b'f', 1, b'v']),
    ] {
        assert!(
            matches!(
                KvStateMachine::restore(&v2_with_entry(&entry)),
                Err(SnapshotError::Malformed(_))
            ),
            "{what}"
        );
    }
}
