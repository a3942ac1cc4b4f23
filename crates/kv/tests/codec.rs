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

    /// The sampler's peek agrees with the decoded command: several keys exactly for the
    /// multi-key kinds, and never a panic on the way.
    #[test]
    fn names_several_keys_agrees_with_the_command(request in any_request()) {
        let encoded = request.encode();
        let multi = matches!(
            request.command,
            Command::BatchGet { .. }
                | Command::BatchPut { .. }
                | Command::MSetNx { .. }
                | Command::DeleteMany { .. }
                | Command::Pipeline { .. }
                | Command::Rename { .. }
                | Command::Copy { .. }
                | Command::Exec { .. }
        );
        prop_assert_eq!(Request::names_several_keys(&encoded), multi);
        prop_assert!(!Request::names_several_keys(&encoded[..encoded.len().min(3)]));
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

// ---------------------------------------------------------------------------------------
// Expiry flags, new tags, Exec nesting and the new responses.
// ---------------------------------------------------------------------------------------

use kv::{
    CommandError, ExpireCondition, Expiry, GetExExpiry, KeyInfo, KeyType, PutOptions, Response,
    SetExpiry,
};

fn put_with(options: PutOptions) -> Command {
    Command::Put {
        key: b("k"),
        value: b("v"),
        options,
    }
}

/// Entries written before expiries existed: every combination of the three old flag bits
/// decodes to the same options as before, with the default (clearing) expiry, and encodes
/// back to the same bytes.
#[test]
fn old_put_encodings_decode_exactly_as_before() {
    for flags in 0u8..8 {
        let old = [CODEC_VERSION, 2, 1, b'k', 1, b'v', flags];
        let expected = put_with(PutOptions {
            if_absent: flags & 1 != 0,
            if_present: flags & 2 != 0,
            return_previous: flags & 4 != 0,
            expiry: SetExpiry::Clear,
        });
        assert_eq!(Command::decode(&old), Ok(expected.clone()));
        assert_eq!(expected.encode().as_ref(), &old[..]);
    }
}

#[test]
fn put_expiry_rides_in_new_flag_bits_with_a_varint() {
    let cases = [
        (SetExpiry::Keep, vec![0x08]),
        (
            SetExpiry::Set(Expiry::In { ms: 300 }),
            vec![0x10, 0xac, 0x02],
        ),
        (
            SetExpiry::Set(Expiry::At { ms: 1 }),
            vec![0x18 | 0x04, 0x01],
        ),
    ];
    for (expiry, tail) in cases {
        let command = put_with(PutOptions {
            return_previous: tail[0] & 0x04 != 0,
            expiry,
            ..PutOptions::default()
        });
        let encoded = command.encode();
        assert_eq!(&encoded[6..], &tail[..], "{expiry:?}");
        assert_eq!(Command::decode(&encoded), Ok(command));
        // The payload is required.
        if tail.len() > 1 {
            assert!(Command::decode(&encoded[..encoded.len() - 1]).is_err());
        }
    }
    for bad in [0x20u8, 0x40, 0x80] {
        assert!(matches!(
            Command::decode(&[CODEC_VERSION, 2, 1, b'k', 1, b'v', bad]),
            Err(DecodeError::Invalid { .. })
        ));
    }
}

#[test]
fn new_commands_use_tags_19_to_35_in_order() {
    let k = || b("k");
    let commands = [
        Command::Expire {
            key: k(),
            when: Expiry::In { ms: 1 },
            condition: ExpireCondition::Lt,
        },
        Command::Persist { key: k() },
        Command::GetEx {
            key: k(),
            expiry: GetExExpiry::Set(Expiry::At { ms: 5 }),
        },
        Command::DelIfEq {
            key: k(),
            value: b("v"),
        },
        Command::PurgeExpired { limit: 100 },
        Command::Inspect { key: k() },
        Command::HSet {
            key: k(),
            fields: vec![(b("f"), b("v"))],
            if_absent: true,
        },
        Command::HGet {
            key: k(),
            fields: vec![b("f")],
        },
        Command::HGetAll { key: k() },
        Command::HDel {
            key: k(),
            fields: vec![b("f")],
        },
        Command::HIncrBy {
            key: k(),
            field: b("f"),
            delta: -3,
        },
        Command::HIncrByFloat {
            key: k(),
            field: b("f"),
            delta_bits: 1.5f64.to_bits(),
        },
        Command::HScan {
            key: k(),
            after: Some(b("f")),
            limit: 10,
        },
        Command::ScanKeys {
            start: k(),
            end: None,
            limit: 10,
            key_type: Some(KeyType::Hash),
        },
        Command::Rename {
            from: k(),
            to: b("l"),
            if_absent: true,
        },
        Command::Copy {
            from: k(),
            to: b("l"),
            replace: false,
        },
        Command::Exec {
            watches: vec![(k(), 7)],
            commands: vec![put("k", "v"), Command::HGetAll { key: k() }],
        },
    ];
    for (tag, command) in (19u8..).zip(commands) {
        let encoded = command.encode();
        assert_eq!(encoded[1], tag, "{command:?}");
        assert_eq!(Command::decode(&encoded), Ok(command.clone()));
        for cut in 0..encoded.len() {
            assert!(
                Command::decode(&encoded[..cut]).is_err(),
                "{command:?} cut at {cut}"
            );
        }
    }
    assert!(Command::decode(&[CODEC_VERSION, 36]).is_err());
}

#[test]
fn exec_may_not_nest_pipelines_or_execs() {
    let exec = |commands| Command::Exec {
        watches: vec![],
        commands,
    };
    let pipeline = |commands| Command::Pipeline { commands };
    for refused in [
        exec(vec![pipeline(vec![put("a", "1")])]),
        exec(vec![exec(vec![])]),
        pipeline(vec![exec(vec![pipeline(vec![put("a", "1")])])]),
        pipeline(vec![pipeline(vec![exec(vec![])])]),
    ] {
        assert!(
            matches!(
                Command::decode(&refused.encode()),
                Err(DecodeError::NestedPipeline { .. })
            ),
            "{refused:?}"
        );
    }
    for allowed in [
        exec(vec![]),
        pipeline(vec![exec(vec![put("a", "1")]), put("b", "2")]),
    ] {
        assert_eq!(Command::decode(&allowed.encode()), Ok(allowed));
    }
    // Deep nesting in crafted bytes is refused on the tag, not by recursion.
    let mut deep = vec![CODEC_VERSION];
    for _ in 0..10_000 {
        deep.extend_from_slice(&[35, 0, 1]);
    }
    assert!(Command::decode(&deep).is_err());
}

#[test]
fn new_results_round_trip_and_truncations_are_refused() {
    let info = KeyInfo {
        key_type: KeyType::Hash,
        expires_at_ms: Some(1_700_000_000_000),
        len: 3,
        memory_bytes: 400,
        is_integer: false,
    };
    let results: Vec<Result<Response, CommandError>> = vec![
        Ok(Response::Pairs(vec![(b("f"), b("v")), (b(""), b(""))])),
        Ok(Response::HScan {
            pairs: vec![(b("f"), b("v"))],
            more: true,
        }),
        Ok(Response::Keys {
            keys: vec![(b("a"), KeyType::String), (b("b"), KeyType::Hash)],
            more: false,
        }),
        Ok(Response::KeyInfo {
            info: Some(info.clone()),
            version: 42,
            now_ms: 9,
        }),
        Ok(Response::KeyInfo {
            info: Some(KeyInfo {
                expires_at_ms: None,
                is_integer: true,
                key_type: KeyType::String,
                ..info
            }),
            version: 0,
            now_ms: 0,
        }),
        Ok(Response::KeyInfo {
            info: None,
            version: 3,
            now_ms: 4,
        }),
        Ok(Response::Exec(None)),
        Ok(Response::Exec(Some(vec![]))),
        Ok(Response::Exec(Some(vec![
            Ok(Response::Integer(1)),
            Err(CommandError::WrongType),
        ]))),
        Ok(Response::Pipeline(vec![Ok(Response::Exec(Some(vec![
            Ok(Response::Done),
        ])))])),
        Err(CommandError::WrongType),
        Err(CommandError::NoSuchKey),
        Err(CommandError::HashValueNotAnInteger),
        Err(CommandError::HashValueNotAFloat),
        Err(CommandError::InvalidExpireTime),
    ];
    for result in results {
        let bytes = kv::encode_command_result(&result);
        assert_eq!(kv::decode_command_result(&bytes), Ok(result.clone()));
        for cut in 0..bytes.len() {
            assert!(
                kv::decode_command_result(&bytes[..cut]).is_err(),
                "{result:?}"
            );
        }
    }
    // Old tags unchanged: Integer is response tag 6, NotAnInteger error tag 5.
    assert_eq!(
        kv::encode_command_result(&Ok(Response::Integer(1))).as_ref(),
        &[CODEC_VERSION, 0, 6, 2]
    );
    assert_eq!(
        kv::encode_command_result(&Err(CommandError::NotAnInteger)).as_ref(),
        &[CODEC_VERSION, 1, 5]
    );
    // An Exec's result inside an Exec's, or a pipeline's inside an Exec's, is refused.
    for nested in [
        Response::Exec(Some(vec![Ok(Response::Exec(None))])),
        Response::Exec(Some(vec![Ok(Response::Pipeline(vec![]))])),
    ] {
        assert!(kv::decode_command_result(&kv::encode_command_result(&Ok(nested))).is_err());
    }
    // Error texts are Redis's (the front end adds the prefix).
    assert_eq!(
        CommandError::WrongType.to_string(),
        "Operation against a key holding the wrong kind of value"
    );
    assert_eq!(CommandError::NoSuchKey.to_string(), "no such key");
    assert_eq!(
        CommandError::HashValueNotAnInteger.to_string(),
        "hash value is not an integer"
    );
    assert_eq!(KeyType::Hash.as_str(), "hash");
    assert_eq!(KeyType::String.as_str(), "string");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    /// Fuzz from valid encodings of the new commands and Execs specifically.
    #[test]
    fn corrupted_new_commands_never_panic(
        command in prop_oneof![
            common::strategies::any_new_command(),
            common::strategies::any_exec(),
        ],
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        cut in any::<usize>(),
    ) {
        let mut bytes = command.encode().to_vec();
        prop_assert_eq!(Command::decode(&bytes), Ok(command));
        for (position, value) in edits {
            let len = bytes.len();
            bytes[position % len] = value;
        }
        let _ = Command::decode(&bytes);
        let cut = cut % (bytes.len() + 1);
        let _ = Command::decode(&bytes[..cut]);
        let mut machine = KvStateMachine::with_region(kv::RegionRange::full());
        let _ = machine.apply(1, &bytes);
    }
}
