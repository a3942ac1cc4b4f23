//! Helpers shared by the integration tests.
#![allow(dead_code)]

use bytes::Bytes;
use kv::{
    ApplyError, ApplyOutcome, ClientId, Command, KvStateMachine, Request, Response, Sequence,
};

/// The client every single-client test uses.
pub const CLIENT: ClientId = ClientId(7);

pub fn b(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

/// Applies `command` as the next entry, from `CLIENT`, with a fresh sequence number (the
/// entry index, which only grows), at log time 0. Goes through the encoded payload path.
pub fn exec(machine: &mut KvStateMachine, command: Command) -> Result<Response, ApplyError> {
    let index = machine.applied_index() + 1;
    submit(machine, CLIENT, index, command, 0).result
}

/// Applies one request as the next entry.
pub fn submit(
    machine: &mut KvStateMachine,
    client: ClientId,
    sequence: u64,
    command: Command,
    proposed_at_ms: u64,
) -> ApplyOutcome {
    let index = machine.applied_index() + 1;
    let request = Request {
        client_id: client,
        sequence: Sequence(sequence),
        command,
        proposed_at_ms,
    };
    machine.apply(index, &request.encode())
}

pub fn put(key: &str, value: &str) -> Command {
    Command::Put {
        key: b(key),
        value: b(value),
        options: Default::default(),
    }
}

pub fn get(key: &str) -> Command {
    Command::Get { key: b(key) }
}

pub mod strategies {
    //! proptest strategies for commands and requests.
    use bytes::Bytes;
    use kv::{
        ClientId, Command, ExpireCondition, Expiry, GetExExpiry, KeyType, PutOptions, Request,
        Sequence, SetExpiry,
    };
    use proptest::prelude::*;

    pub fn any_bytes() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..12).prop_map(Bytes::from)
    }

    fn pairs() -> impl Strategy<Value = Vec<(Bytes, Bytes)>> {
        proptest::collection::vec((any_bytes(), any_bytes()), 0..4)
    }

    /// Put options without an expiry (what the model understands).
    pub fn put_options() -> impl Strategy<Value = PutOptions> {
        (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
            |(if_absent, if_present, return_previous)| PutOptions {
                if_absent,
                if_present,
                return_previous,
                ..PutOptions::default()
            },
        )
    }

    pub fn expiry() -> impl Strategy<Value = Expiry> {
        prop_oneof![
            any::<u64>().prop_map(|ms| Expiry::In { ms }),
            any::<u64>().prop_map(|ms| Expiry::At { ms }),
        ]
    }

    pub fn set_expiry() -> impl Strategy<Value = SetExpiry> {
        prop_oneof![
            Just(SetExpiry::Clear),
            Just(SetExpiry::Keep),
            expiry().prop_map(SetExpiry::Set),
        ]
    }

    /// Put options with any expiry (codec tests).
    pub fn any_put_options() -> impl Strategy<Value = PutOptions> {
        (put_options(), set_expiry()).prop_map(|(options, expiry)| PutOptions { expiry, ..options })
    }

    fn condition() -> impl Strategy<Value = ExpireCondition> {
        prop_oneof![
            Just(ExpireCondition::Always),
            Just(ExpireCondition::Nx),
            Just(ExpireCondition::Xx),
            Just(ExpireCondition::Gt),
            Just(ExpireCondition::Lt),
        ]
    }

    fn get_ex_expiry() -> impl Strategy<Value = GetExExpiry> {
        prop_oneof![
            Just(GetExExpiry::Unchanged),
            Just(GetExExpiry::Persist),
            expiry().prop_map(GetExExpiry::Set),
        ]
    }

    fn key_type() -> impl Strategy<Value = Option<KeyType>> {
        prop_oneof![
            Just(None),
            Just(Some(KeyType::String)),
            Just(Some(KeyType::Hash))
        ]
    }

    fn fields() -> impl Strategy<Value = Vec<Bytes>> {
        proptest::collection::vec(any_bytes(), 0..4)
    }

    /// The commands added for expiry, hashes, renames and scans (not Exec).
    pub fn any_new_command() -> impl Strategy<Value = Command> {
        prop_oneof![
            (any_bytes(), expiry(), condition()).prop_map(|(key, when, condition)| {
                Command::Expire {
                    key,
                    when,
                    condition,
                }
            }),
            any_bytes().prop_map(|key| Command::Persist { key }),
            (any_bytes(), get_ex_expiry()).prop_map(|(key, expiry)| Command::GetEx { key, expiry }),
            (any_bytes(), any_bytes()).prop_map(|(key, value)| Command::DelIfEq { key, value }),
            any::<u32>().prop_map(|limit| Command::PurgeExpired { limit }),
            any_bytes().prop_map(|key| Command::Inspect { key }),
            (any_bytes(), pairs(), any::<bool>()).prop_map(|(key, fields, if_absent)| {
                Command::HSet {
                    key,
                    fields,
                    if_absent,
                }
            }),
            (any_bytes(), fields()).prop_map(|(key, fields)| Command::HGet { key, fields }),
            any_bytes().prop_map(|key| Command::HGetAll { key }),
            (any_bytes(), fields()).prop_map(|(key, fields)| Command::HDel { key, fields }),
            (any_bytes(), any_bytes(), any::<i64>())
                .prop_map(|(key, field, delta)| Command::HIncrBy { key, field, delta }),
            (any_bytes(), any_bytes(), any::<u64>()).prop_map(|(key, field, delta_bits)| {
                Command::HIncrByFloat {
                    key,
                    field,
                    delta_bits,
                }
            }),
            (any_bytes(), proptest::option::of(any_bytes()), any::<u32>())
                .prop_map(|(key, after, limit)| Command::HScan { key, after, limit }),
            (
                any_bytes(),
                proptest::option::of(any_bytes()),
                any::<u32>(),
                key_type()
            )
                .prop_map(|(start, end, limit, key_type)| Command::ScanKeys {
                    start,
                    end,
                    limit,
                    key_type,
                }),
            (any_bytes(), any_bytes(), any::<bool>()).prop_map(|(from, to, if_absent)| {
                Command::Rename {
                    from,
                    to,
                    if_absent,
                }
            }),
            (any_bytes(), any_bytes(), any::<bool>())
                .prop_map(|(from, to, replace)| Command::Copy { from, to, replace }),
        ]
    }

    /// An Exec of single commands (possibly none) with arbitrary watches.
    pub fn any_exec() -> impl Strategy<Value = Command> {
        (
            proptest::collection::vec((any_bytes(), any::<u64>()), 0..3),
            proptest::collection::vec(any_single_command(), 0..4),
        )
            .prop_map(|(watches, commands)| Command::Exec { watches, commands })
    }

    /// Any command with arbitrary field values (for codec tests), pipelines and Execs
    /// (also inside pipelines) included.
    pub fn any_command() -> impl Strategy<Value = Command> {
        prop_oneof![
            6 => any_single_command(),
            1 => proptest::collection::vec(any_single_command(), 1..4)
                .prop_map(|commands| Command::Pipeline { commands }),
            1 => any_exec(),
            1 => proptest::collection::vec(prop_oneof![any_single_command(), any_exec()], 1..3)
                .prop_map(|commands| Command::Pipeline { commands }),
        ]
    }

    /// Any command but a pipeline or an Exec.
    pub fn any_single_command() -> impl Strategy<Value = Command> {
        prop_oneof![
            3 => any_old_command(),
            2 => any_new_command(),
        ]
    }

    /// Any of the commands that existed before expiries and hashes (the Put may carry an
    /// expiry).
    pub fn any_old_command() -> impl Strategy<Value = Command> {
        prop_oneof![
            any_bytes().prop_map(|key| Command::Get { key }),
            (any_bytes(), any_bytes(), any_put_options()).prop_map(|(key, value, options)| {
                Command::Put {
                    key,
                    value,
                    options,
                }
            }),
            any_bytes().prop_map(|key| Command::Delete { key }),
            (any_bytes(), any_bytes()).prop_map(|(key, value)| Command::Append { key, value }),
            (any_bytes(), proptest::option::of(any_bytes()), any_bytes())
                .prop_map(|(key, expected, new)| Command::CompareAndSwap { key, expected, new }),
            (any_bytes(), proptest::option::of(any_bytes()), any::<u32>())
                .prop_map(|(start, end, limit)| Command::Scan { start, end, limit }),
            proptest::collection::vec(any_bytes(), 0..4)
                .prop_map(|keys| Command::BatchGet { keys }),
            pairs().prop_map(|pairs| Command::BatchPut { pairs }),
            (any_bytes(), any::<i64>()).prop_map(|(key, delta)| Command::Incr { key, delta }),
            (any_bytes(), any::<u64>())
                .prop_map(|(key, delta_bits)| Command::IncrByFloat { key, delta_bits }),
            (any_bytes(), any::<u64>(), any_bytes())
                .prop_map(|(key, offset, value)| Command::SetRange { key, offset, value }),
            (any_bytes(), any_bytes()).prop_map(|(key, value)| Command::GetSet { key, value }),
            any_bytes().prop_map(|key| Command::GetDel { key }),
            (any_bytes(), any_bytes()).prop_map(|(key, value)| Command::SetNx { key, value }),
            pairs().prop_map(|pairs| Command::MSetNx { pairs }),
            proptest::collection::vec(any_bytes(), 0..4)
                .prop_map(|keys| Command::DeleteMany { keys }),
            Just(Command::Count),
        ]
    }

    pub fn any_request() -> impl Strategy<Value = Request> {
        (any::<u64>(), any::<u64>(), any_command(), any::<u64>()).prop_map(
            |(client, sequence, command, proposed_at_ms)| Request {
                client_id: ClientId(client),
                sequence: Sequence(sequence),
                command,
                proposed_at_ms,
            },
        )
    }
}
