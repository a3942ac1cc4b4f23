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
    use kv::{ClientId, Command, PutOptions, Request, Sequence};
    use proptest::prelude::*;

    pub fn any_bytes() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..12).prop_map(Bytes::from)
    }

    fn pairs() -> impl Strategy<Value = Vec<(Bytes, Bytes)>> {
        proptest::collection::vec((any_bytes(), any_bytes()), 0..4)
    }

    pub fn put_options() -> impl Strategy<Value = PutOptions> {
        (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
            |(if_absent, if_present, return_previous)| PutOptions {
                if_absent,
                if_present,
                return_previous,
            },
        )
    }

    /// Any command with arbitrary field values (for codec tests), pipelines included.
    pub fn any_command() -> impl Strategy<Value = Command> {
        prop_oneof![
            6 => any_single_command(),
            1 => proptest::collection::vec(any_single_command(), 1..4)
                .prop_map(|commands| Command::Pipeline { commands }),
        ]
    }

    /// Any command but a pipeline.
    pub fn any_single_command() -> impl Strategy<Value = Command> {
        prop_oneof![
            any_bytes().prop_map(|key| Command::Get { key }),
            (any_bytes(), any_bytes(), put_options()).prop_map(|(key, value, options)| {
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
