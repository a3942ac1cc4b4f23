//! Snapshot round trips, determinism, and rejection of every truncation and bit flip.

mod common;

use common::{b, put, submit};
use kv::{ClientId, Command, KvStateMachine, Limits, RegionRange, SessionPolicy, SnapshotError};

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
