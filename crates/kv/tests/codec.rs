//! The entry codec: round trips, and no input makes decoding panic or over-allocate.

mod common;

use common::strategies::{any_command, any_request};
use common::{b, put};
use kv::{ClientId, Command, DecodeError, KvStateMachine, Request, Sequence, CODEC_VERSION};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn request_round_trips(request in any_request()) {
        let encoded = request.encode();
        prop_assert_eq!(Request::decode(&encoded), Ok(request));
    }

    #[test]
    fn command_round_trips(command in any_command()) {
        let encoded = command.encode();
        prop_assert_eq!(Command::decode(&encoded), Ok(command));
    }

    /// Fuzz: arbitrary bytes never panic, in any decoder, and `apply` turns them into an
    /// error outcome rather than a crash.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = Request::decode(&bytes);
        let _ = Command::decode(&bytes);
        let _ = KvStateMachine::restore(&bytes);
        let mut machine = KvStateMachine::with_region(kv::RegionRange::full());
        let _ = machine.apply(1, &bytes);
        prop_assert_eq!(machine.applied_index(), 1);
    }

    /// Fuzz from valid encodings: random bytes rarely get past the version byte, so also
    /// corrupt real requests (overwrite, truncate) and decode those.
    #[test]
    fn corrupted_requests_never_panic(
        request in any_request(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        cut in any::<usize>(),
    ) {
        let mut bytes = request.encode().to_vec();
        for (position, value) in edits {
            let len = bytes.len();
            bytes[position % len] = value;
        }
        let _ = Request::decode(&bytes);
        let cut = cut % (bytes.len() + 1);
        let _ = Request::decode(&bytes[..cut]);
    }
}

#[test]
fn every_truncation_of_a_request_is_rejected() {
    let request = Request {
        client_id: ClientId(300),
        sequence: Sequence(70_000),
        command: Command::MSetNx {
            pairs: vec![(b("key"), b("value")), (b(""), b("x"))],
        },
        proposed_at_ms: 1_700_000_000_000,
    };
    let encoded = request.encode();
    for cut in 0..encoded.len() {
        assert!(
            Request::decode(&encoded[..cut]).is_err(),
            "truncation at {cut} decoded"
        );
    }
    let mut padded = encoded.to_vec();
    padded.push(0);
    assert_eq!(
        Request::decode(&padded),
        Err(DecodeError::TrailingBytes { count: 1 })
    );
}

#[test]
fn unknown_version_and_tag_are_rejected() {
    let mut encoded = put("a", "b").encode().to_vec();
    encoded[0] = CODEC_VERSION + 1;
    assert_eq!(
        Command::decode(&encoded),
        Err(DecodeError::UnsupportedVersion {
            found: CODEC_VERSION + 1,
            supported: CODEC_VERSION
        })
    );
    assert_eq!(
        Command::decode(&[CODEC_VERSION, 200]),
        Err(DecodeError::UnknownTag {
            what: "command",
            tag: 200
        })
    );
}

#[test]
fn put_flags_reject_unknown_bits() {
    let mut encoded = put("a", "b").encode().to_vec();
    let last = encoded.len() - 1;
    encoded[last] = 0x80;
    assert!(matches!(
        Command::decode(&encoded),
        Err(DecodeError::Invalid { .. })
    ));
}

#[test]
fn huge_counts_are_rejected_before_allocation() {
    // BatchGet claiming u64::MAX keys in a 12-byte payload.
    let mut bytes = vec![CODEC_VERSION, 7];
    bytes.extend_from_slice(&[0xff; 9]);
    bytes.push(0x01);
    assert!(matches!(
        Command::decode(&bytes),
        Err(DecodeError::Truncated { .. })
    ));
    // A key claiming 2^62 bytes.
    let mut bytes = vec![CODEC_VERSION, 1];
    bytes.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40]);
    assert!(matches!(
        Command::decode(&bytes),
        Err(DecodeError::Truncated { .. })
    ));
}

#[test]
fn encoding_is_compact() {
    // version + client + sequence + time(1 byte each for small values) + tag + 2 + 2 + flags
    let request = Request {
        client_id: ClientId(1),
        sequence: Sequence(1),
        command: put("k", "v"),
        proposed_at_ms: 0,
    };
    assert_eq!(request.encode().len(), 1 + 3 + 1 + 2 + 2 + 1);
}
