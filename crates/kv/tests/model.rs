//! Property tests against a deliberately simple model: a `BTreeMap` plus a map of
//! client → (last sequence, reply). Random request streams with retries and stale
//! re-deliveries; snapshot/restore in the middle; duplicate delivery of everything.

mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use common::strategies::put_options;
use kv::{
    ApplyError, ClientId, Command, CommandError, KvStateMachine, Limits, RegionRange, Request,
    Response, Sequence, SessionPolicy,
};
use proptest::prelude::*;

/// Keys "a".."e"; the region is [a, d), so "d" and "e" are out of range.
const KEYS: [&str; 5] = ["a", "b", "c", "d", "e"];
const VALUES: [&str; 6] = ["", "1", "x", "-3", "9223372036854775807", "07"];

fn region() -> RegionRange {
    RegionRange::new(Bytes::from_static(b"a"), Some(Bytes::from_static(b"d")))
}

/// Sessions that never expire nor get evicted (the duplicate-delivery test needs that).
const KEEP_SESSIONS: SessionPolicy = SessionPolicy {
    ttl_ms: u64::MAX,
    max_sessions: 1_000,
};

/// Tight enough that random streams (time advances 0..=3 ms per step, up to 4 clients)
/// expire and evict sessions often.
const CHURN_SESSIONS: SessionPolicy = SessionPolicy {
    ttl_ms: 6,
    max_sessions: 2,
};

fn new_machine() -> KvStateMachine {
    machine_with(KEEP_SESSIONS)
}

fn machine_with(policy: SessionPolicy) -> KvStateMachine {
    KvStateMachine::new(region(), LIMITS, policy)
}

/// Small enough that random commands hit every limit: `Append` and `SetRange` grow values
/// past `max_value_bytes`, batches of three exceed `max_batch_keys`, scan limits of 4 exceed
/// `max_scan_limit`.
const LIMITS: Limits = Limits {
    max_key_bytes: 8 * 1024,
    max_value_bytes: 24,
    max_batch_keys: 2,
    max_scan_limit: 3,
};

fn session_policy() -> impl Strategy<Value = SessionPolicy> {
    prop_oneof![Just(KEEP_SESSIONS), Just(CHURN_SESSIONS)]
}

fn key() -> impl Strategy<Value = Bytes> {
    proptest::sample::select(&KEYS[..]).prop_map(|k| Bytes::from_static(k.as_bytes()))
}

fn value() -> impl Strategy<Value = Bytes> {
    proptest::sample::select(&VALUES[..]).prop_map(|v| Bytes::from_static(v.as_bytes()))
}

fn pairs() -> impl Strategy<Value = Vec<(Bytes, Bytes)>> {
    proptest::collection::vec((key(), value()), 0..3)
}

/// Commands the model implements, over a tiny key and value space so they collide; one in
/// eight is a pipeline of them (the model runs its commands one after the other).
fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        7 => single_command(),
        1 => proptest::collection::vec(single_command(), 1..5)
            .prop_map(|commands| Command::Pipeline { commands }),
    ]
}

fn single_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        key().prop_map(|key| Command::Get { key }),
        (key(), value(), put_options()).prop_map(|(key, value, options)| Command::Put {
            key,
            value,
            options
        }),
        key().prop_map(|key| Command::Delete { key }),
        (key(), value()).prop_map(|(key, value)| Command::Append { key, value }),
        (key(), proptest::option::of(value()), value())
            .prop_map(|(key, expected, new)| Command::CompareAndSwap { key, expected, new }),
        (key(), proptest::option::of(key()), 0u32..5)
            .prop_map(|(start, end, limit)| Command::Scan { start, end, limit }),
        proptest::collection::vec(key(), 0..3).prop_map(|keys| Command::BatchGet { keys }),
        pairs().prop_map(|pairs| Command::BatchPut { pairs }),
        (key(), prop_oneof![Just(i64::MAX), Just(i64::MIN), -5i64..5])
            .prop_map(|(key, delta)| Command::Incr { key, delta }),
        (key(), value()).prop_map(|(key, value)| Command::GetSet { key, value }),
        key().prop_map(|key| Command::GetDel { key }),
        (key(), value()).prop_map(|(key, value)| Command::SetNx { key, value }),
        pairs().prop_map(|pairs| Command::MSetNx { pairs }),
        proptest::collection::vec(key(), 0..4).prop_map(|keys| Command::DeleteMany { keys }),
        Just(Command::Count),
        (key(), 0u64..30, value()).prop_map(|(key, offset, value)| Command::SetRange {
            key,
            offset,
            value
        }),
        (
            key(),
            proptest::sample::select(vec![1.5f64, -0.25, 0.0, f64::INFINITY, f64::NAN])
        )
            .prop_map(|(key, delta)| Command::IncrByFloat {
                key,
                delta_bits: delta.to_bits()
            }),
    ]
}

/// Read-only commands, which may be sent without a session.
fn read_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        7 => single_read_command(),
        1 => proptest::collection::vec(single_read_command(), 1..5)
            .prop_map(|commands| Command::Pipeline { commands }),
    ]
}

fn single_read_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        key().prop_map(|key| Command::Get { key }),
        (key(), proptest::option::of(key()), 0u32..5)
            .prop_map(|(start, end, limit)| Command::Scan { start, end, limit }),
        proptest::collection::vec(key(), 0..4).prop_map(|keys| Command::BatchGet { keys }),
        Just(Command::Count),
    ]
}

/// What a client does next.
#[derive(Debug, Clone)]
enum Step {
    /// A request with `ClientId::NONE` (sequence 0): a read, or a write that must be refused.
    Anonymous { command: Command },
    /// A new request with the next sequence.
    Fresh { client: u64, command: Command },
    /// Re-deliver one of the client's earlier requests (`back` = 0 is the latest: a retry;
    /// older ones are stale).
    Redeliver { client: u64, back: usize },
}

/// Steps, each with how far the leader's clock advanced before it (sometimes backwards, as
/// after a leader change with a lagging clock).
fn steps() -> impl Strategy<Value = Vec<(Step, i64)>> {
    let step = prop_oneof![
        4 => (1u64..5, command()).prop_map(|(client, command)| Step::Fresh { client, command }),
        1 => (1u64..5, 0usize..3).prop_map(|(client, back)| Step::Redeliver { client, back }),
        1 => prop_oneof![read_command(), command()].prop_map(|command| Step::Anonymous { command }),
    ];
    proptest::collection::vec((step, prop_oneof![9 => 0i64..4, 1 => -8i64..0]), 1..60)
}

/// Turns steps into concrete requests, tracking each client's sequence and history.
fn requests(steps: &[(Step, i64)]) -> Vec<Request> {
    let mut history: BTreeMap<u64, Vec<Request>> = BTreeMap::new();
    let mut out = Vec::new();
    let mut time: u64 = 100;
    for (step, advance_ms) in steps {
        time = time.saturating_add_signed(*advance_ms);
        match step {
            Step::Fresh { client, command } => {
                let sent = history.entry(*client).or_default();
                let request = Request {
                    client_id: ClientId(*client),
                    sequence: Sequence(sent.len() as u64 + 1),
                    command: command.clone(),
                    proposed_at_ms: time,
                };
                sent.push(request.clone());
                out.push(request);
            }
            Step::Anonymous { command } => out.push(Request {
                client_id: ClientId::NONE,
                sequence: Sequence(0),
                command: command.clone(),
                proposed_at_ms: time,
            }),
            Step::Redeliver { client, back } => {
                let Some(sent) = history.get(client) else {
                    continue;
                };
                if let Some(original) = sent.iter().rev().nth(*back) {
                    let mut retry = original.clone();
                    retry.proposed_at_ms = time;
                    out.push(retry);
                }
            }
        }
    }
    out
}

/// A model session: last sequence, its reply, last seen (log time).
type ModelSession = (Sequence, Result<Response, ApplyError>, u64);

/// The reference: obviously-correct, slow, and independent of the implementation (integers
/// are checked by round-tripping through `to_string`, sessions are expired by a full scan
/// and evicted by a linear search, for instance).
struct Model {
    data: BTreeMap<Bytes, Bytes>,
    sessions: BTreeMap<ClientId, ModelSession>,
    clock_ms: u64,
    policy: SessionPolicy,
}

impl Model {
    fn new(policy: SessionPolicy) -> Self {
        Model {
            data: BTreeMap::new(),
            sessions: BTreeMap::new(),
            clock_ms: 0,
            policy,
        }
    }

    fn apply(&mut self, request: &Request) -> Result<Response, ApplyError> {
        self.clock_ms = self.clock_ms.max(request.proposed_at_ms);
        let (now, ttl) = (self.clock_ms, self.policy.ttl_ms);
        self.sessions
            .retain(|_, session| session.2.saturating_add(ttl) >= now);
        if request.client_id == ClientId::NONE {
            if !request.command.is_read_only() {
                return Err(ApplyError::SessionRequired);
            }
            if let Some(key) = first_key_outside_region(&request.command) {
                return Err(CommandError::OutOfRange { key }.into());
            }
            return self.execute(&request.command).map_err(ApplyError::from);
        }
        if let Some((last, reply, last_seen)) = self.sessions.get_mut(&request.client_id) {
            if request.sequence == *last {
                *last_seen = now;
                return reply.clone();
            }
            if request.sequence < *last {
                return Err(ApplyError::SessionStale {
                    client_id: request.client_id,
                    sequence: request.sequence,
                    last_applied: *last,
                });
            }
        }
        if let Some(key) = first_key_outside_region(&request.command) {
            return Err(CommandError::OutOfRange { key }.into());
        }
        let reply = self.execute(&request.command).map_err(ApplyError::from);
        if !self.sessions.contains_key(&request.client_id)
            && self.sessions.len() >= self.policy.max_sessions
        {
            let oldest = self
                .sessions
                .iter()
                .min_by_key(|(client, session)| (session.2, **client))
                .map(|(client, _)| *client);
            if let Some(oldest) = oldest {
                self.sessions.remove(&oldest);
            }
        }
        self.sessions
            .insert(request.client_id, (request.sequence, reply.clone(), now));
        reply
    }

    /// The limit checks, in the order the implementation documents: batch size first, then
    /// each key/value in order, then the command's own rule.
    fn validate(&self, command: &Command) -> Result<(), CommandError> {
        let max = LIMITS.max_value_bytes as u64;
        let value_fits = |value: &Bytes| {
            let size = value.len() as u64;
            if size > max {
                Err(CommandError::ValueTooLarge { size, max })
            } else {
                Ok(())
            }
        };
        let batch_fits = |size: usize| {
            if size > LIMITS.max_batch_keys {
                Err(CommandError::BatchTooLarge {
                    size: size as u64,
                    max: LIMITS.max_batch_keys as u64,
                })
            } else {
                Ok(())
            }
        };
        match command {
            Command::Put { value, .. }
            | Command::GetSet { value, .. }
            | Command::SetNx { value, .. }
            | Command::CompareAndSwap { new: value, .. } => value_fits(value),
            Command::Append { key, value } => {
                value_fits(value)?;
                let current = self.data.get(key).map_or(0, |v| v.len());
                value_fits(&Bytes::from(vec![0; current + value.len()]))
            }
            Command::SetRange { key, offset, value } => {
                if value.is_empty() {
                    return Ok(());
                }
                let current = self.data.get(key).map_or(0, |v| v.len()) as u64;
                let size = (offset + value.len() as u64).max(current);
                if size > max {
                    return Err(CommandError::ValueTooLarge { size, max });
                }
                Ok(())
            }
            Command::BatchPut { pairs } | Command::MSetNx { pairs } => {
                batch_fits(pairs.len())?;
                pairs.iter().try_for_each(|(_, value)| value_fits(value))
            }
            Command::BatchGet { keys } | Command::DeleteMany { keys } => batch_fits(keys.len()),
            Command::Pipeline { commands } => batch_fits(commands.len()),
            Command::Scan { limit, .. } if *limit > LIMITS.max_scan_limit => {
                Err(CommandError::ScanLimitTooLarge {
                    limit: u64::from(*limit),
                    max: u64::from(LIMITS.max_scan_limit),
                })
            }
            _ => Ok(()),
        }
    }

    fn execute(&mut self, command: &Command) -> Result<Response, CommandError> {
        self.validate(command)?;
        if let Command::Pipeline { commands } = command {
            return Ok(Response::Pipeline(
                commands.iter().map(|c| self.execute(c)).collect(),
            ));
        }
        let data = &mut self.data;
        Ok(match command.clone() {
            Command::Pipeline { .. } => unreachable!("pipelines are run above"),
            Command::Get { key } => Response::Value(data.get(&key).cloned()),
            Command::Put {
                key,
                value,
                options,
            } => {
                if options.if_absent && options.if_present {
                    return Err(CommandError::ConflictingOptions);
                }
                let previous = data.get(&key).cloned();
                let written = !(options.if_absent && previous.is_some()
                    || options.if_present && previous.is_none());
                if written {
                    data.insert(key, value);
                }
                Response::Put {
                    written,
                    previous: previous.filter(|_| options.return_previous),
                }
            }
            Command::Delete { key } => Response::Deleted(data.remove(&key).is_some()),
            Command::Append { key, value } => {
                let mut joined = data.get(&key).map(|v| v.to_vec()).unwrap_or_default();
                joined.extend_from_slice(&value);
                let len = joined.len() as u64;
                data.insert(key, Bytes::from(joined));
                Response::Length(len)
            }
            Command::CompareAndSwap { key, expected, new } => {
                let previous = data.get(&key).cloned();
                let swapped = previous == expected;
                if swapped {
                    data.insert(key, new);
                }
                Response::Cas { swapped, previous }
            }
            Command::Scan { start, end, limit } => {
                let end = match end {
                    Some(end) if end.as_ref() < b"d".as_slice() => end,
                    _ => Bytes::from_static(b"d"),
                };
                let all: Vec<(Bytes, Bytes)> = data
                    .iter()
                    .filter(|(k, _)| **k >= start && **k < end)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let more = all.len() > limit as usize;
                Response::Scan {
                    pairs: all.into_iter().take(limit as usize).collect(),
                    more,
                }
            }
            Command::BatchGet { keys } => {
                Response::Values(keys.iter().map(|k| data.get(k).cloned()).collect())
            }
            Command::DeleteMany { keys } => {
                Response::Integer(keys.iter().filter(|k| data.remove(*k).is_some()).count() as i64)
            }
            Command::Count => Response::Integer(data.len() as i64),
            Command::BatchPut { pairs } => {
                data.extend(pairs);
                Response::Done
            }
            Command::Incr { key, delta } => {
                let current = match data.get(&key) {
                    None => 0,
                    Some(text) => {
                        let text =
                            std::str::from_utf8(text).map_err(|_| CommandError::NotAnInteger)?;
                        let parsed: i64 = text.parse().map_err(|_| CommandError::NotAnInteger)?;
                        if parsed.to_string() != text {
                            return Err(CommandError::NotAnInteger);
                        }
                        parsed
                    }
                };
                let new = current.checked_add(delta).ok_or(CommandError::Overflow)?;
                data.insert(key, Bytes::from(new.to_string()));
                Response::Integer(new)
            }
            Command::GetSet { key, value } => Response::Value(data.insert(key, value)),
            Command::GetDel { key } => Response::Value(data.remove(&key)),
            Command::SetNx { key, value } => {
                let written = !data.contains_key(&key);
                if written {
                    data.insert(key, value);
                }
                Response::Written(written)
            }
            Command::MSetNx { pairs } => {
                let written = pairs.iter().all(|(k, _)| !data.contains_key(k));
                if written {
                    data.extend(pairs);
                }
                Response::Written(written)
            }
            Command::SetRange { key, offset, value } => {
                let mut bytes = data.get(&key).map(|v| v.to_vec()).unwrap_or_default();
                if value.is_empty() {
                    return Ok(Response::Length(bytes.len() as u64));
                }
                let offset = offset as usize;
                if bytes.len() < offset + value.len() {
                    bytes.resize(offset + value.len(), 0);
                }
                bytes[offset..offset + value.len()].copy_from_slice(&value);
                let len = bytes.len() as u64;
                data.insert(key, Bytes::from(bytes));
                Response::Length(len)
            }
            Command::IncrByFloat { key, delta_bits } => {
                let current = match data.get(&key) {
                    None => 0.0,
                    Some(text) => std::str::from_utf8(text)
                        .ok()
                        .and_then(|t| t.parse::<f64>().ok())
                        .filter(|f| f.is_finite())
                        .ok_or(CommandError::NotAFloat)?,
                };
                let new = current + f64::from_bits(delta_bits);
                if !new.is_finite() {
                    return Err(CommandError::NotFinite);
                }
                let text = Bytes::from(new.to_string());
                data.insert(key, text.clone());
                Response::Value(Some(text))
            }
            other => unreachable!("the model does not generate {other:?}"),
        })
    }
}

fn first_key_outside_region(command: &Command) -> Option<Bytes> {
    let inside = |k: &Bytes| k.as_ref() >= b"a".as_slice() && k.as_ref() < b"d".as_slice();
    let keys: Vec<Bytes> = match command {
        Command::Get { key }
        | Command::Put { key, .. }
        | Command::Delete { key }
        | Command::Append { key, .. }
        | Command::CompareAndSwap { key, .. }
        | Command::Incr { key, .. }
        | Command::IncrByFloat { key, .. }
        | Command::SetRange { key, .. }
        | Command::GetSet { key, .. }
        | Command::GetDel { key }
        | Command::SetNx { key, .. } => vec![key.clone()],
        Command::Scan { start, .. } => vec![start.clone()],
        Command::BatchGet { keys } | Command::DeleteMany { keys } => keys.clone(),
        Command::Count => vec![],
        Command::BatchPut { pairs } | Command::MSetNx { pairs } => {
            pairs.iter().map(|(k, _)| k.clone()).collect()
        }
        Command::Pipeline { commands } => {
            return commands.iter().find_map(first_key_outside_region);
        }
        other => other.keys().into_iter().cloned().collect(),
    };
    keys.into_iter().find(|k| !inside(k))
}

fn apply_all(machine: &mut KvStateMachine, requests: &[Request]) {
    for request in requests {
        let index = machine.applied_index() + 1;
        machine.apply(index, &request.encode());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// Every reply and the final data match the model.
    #[test]
    fn matches_the_model(steps in steps(), policy in session_policy()) {
        let requests = requests(&steps);
        let mut machine = machine_with(policy);
        let mut model = Model::new(policy);
        for (position, request) in requests.iter().enumerate() {
            let expected = model.apply(request);
            let index = machine.applied_index() + 1;
            let outcome = machine.apply(index, &request.encode());
            prop_assert_eq!(
                &outcome.result, &expected,
                "request #{} {:?}", position, request
            );
            machine.assert_invariants();
        }
        let actual: BTreeMap<Bytes, Bytes> =
            machine
                .iter()
                .map(|(k, v)| (Bytes::copy_from_slice(k), Bytes::copy_from_slice(v)))
                .collect();
        prop_assert_eq!(actual, model.data);
        for (client, (sequence, _, last_seen)) in &model.sessions {
            let session = machine.session(*client).map(|s| (s.last_sequence, s.last_seen_ms));
            prop_assert_eq!(session, Some((*sequence, *last_seen)));
        }
        prop_assert_eq!(machine.clock_ms(), model.clock_ms);
        prop_assert_eq!(machine.session_count(), model.sessions.len());
    }

    /// Snapshot + restore at any point, then continuing, ends in the same state (same hash,
    /// same snapshot bytes) as never stopping.
    #[test]
    fn snapshot_restore_midway_is_invisible(
        steps in steps(),
        policy in session_policy(),
        cut in any::<prop::sample::Index>(),
        truncate_at in any::<prop::sample::Index>(),
        flip_bit in any::<prop::sample::Index>(),
    ) {
        let requests = requests(&steps);
        let cut = cut.index(requests.len() + 1);
        let mut straight = machine_with(policy);
        apply_all(&mut straight, &requests);

        let mut first_half = machine_with(policy);
        apply_all(&mut first_half, &requests[..cut]);
        let snapshot = first_half.snapshot();
        let mut resumed = KvStateMachine::restore(&snapshot)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        // Whatever the state, a truncated or bit-flipped copy of its snapshot is rejected.
        prop_assert!(KvStateMachine::restore(&snapshot[..truncate_at.index(snapshot.len())]).is_err());
        let mut flipped = snapshot.to_vec();
        let bit = flip_bit.index(snapshot.len() * 8);
        flipped[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(KvStateMachine::restore(&flipped).is_err());
        prop_assert_eq!(resumed.state_hash(), first_half.state_hash());
        resumed.assert_invariants();
        apply_all(&mut resumed, &requests[cut..]);

        prop_assert_eq!(resumed.state_hash(), straight.state_hash());
        prop_assert_eq!(resumed.snapshot(), straight.snapshot());
    }

    /// Delivering every request twice (a retry right after the original), plus re-deliveries
    /// of older requests, leaves the same data and sessions as delivering each once; each
    /// retry gets exactly the original reply.
    #[test]
    fn duplicate_delivery_changes_nothing(
        commands in proptest::collection::vec((1u64..4, command()), 1..40),
        redeliver_back in proptest::collection::vec(0usize..10, 40),
    ) {
        let steps: Vec<(Step, i64)> = commands
            .into_iter()
            .map(|(client, command)| (Step::Fresh { client, command }, 1))
            .collect();
        let requests = requests(&steps);

        let mut once = new_machine();
        let mut replies = Vec::new();
        for request in &requests {
            let index = once.applied_index() + 1;
            replies.push(once.apply(index, &request.encode()).result);
        }

        let mut twice = new_machine();
        for (position, request) in requests.iter().enumerate() {
            let payload = request.encode();
            let index = twice.applied_index() + 1;
            let first = twice.apply(index, &payload);
            prop_assert_eq!(&first.result, &replies[position]);
            let retry = twice.apply(index + 1, &payload);
            // An out-of-range request is not recorded, so its retry runs (and fails) again.
            prop_assert_eq!(&retry.result, &replies[position]);
            // A late re-delivery of an older request: the original reply again (it is still
            // the client's last recorded request, or it was misrouted and fails the same way
            // again) or stale; never a second application.
            let back = redeliver_back[position];
            if let Some(old_position) = (0..=position)
                .rev()
                .filter(|&p| requests[p].client_id == request.client_id)
                .nth(back)
            {
                let index = twice.applied_index() + 1;
                let late = twice.apply(index, &requests[old_position].encode());
                let is_stale = matches!(late.result, Err(ApplyError::SessionStale { .. }));
                prop_assert!(
                    is_stale || late.result == replies[old_position],
                    "{:?} vs original {:?}", late, replies[old_position]
                );
                if back == 0 {
                    prop_assert_eq!(&late.result, &replies[position]);
                }
            }
        }
        prop_assert_eq!(twice.data_hash(), once.data_hash());
        let sequences = |m: &KvStateMachine| -> Vec<Option<Sequence>> {
            (1..4).map(|c| m.session(ClientId(c)).map(|s| s.last_sequence)).collect()
        };
        prop_assert_eq!(sequences(&twice), sequences(&once));
    }
}

// ---------------------------------------------------------------------------------------
// A second model for types, deadlines, versions and purges: strings and hashes with
// optional deadlines, the log clock advancing (and a new leader's clock lagging), and
// `Inspect` compared exactly (versions and deleted_version included).
// ---------------------------------------------------------------------------------------

mod typed {
    use std::collections::BTreeMap;

    use bytes::Bytes;
    use kv::{
        ClientId, Command, CommandError, ExpireCondition, Expiry, KeyInfo, KeyType, KvStateMachine,
        PutOptions, RegionRange, Request, Response, Sequence, SetExpiry,
    };
    use proptest::prelude::*;

    #[derive(Debug, Clone, PartialEq)]
    enum Value {
        Str(Bytes),
        Hash(BTreeMap<Bytes, Bytes>),
    }

    #[derive(Debug, Clone)]
    struct Item {
        value: Value,
        deadline: Option<u64>,
        version: u64,
    }

    /// Entries stay until deleted, replaced or purged, expired or not, as in the machine.
    #[derive(Default)]
    struct Model {
        data: BTreeMap<Bytes, Item>,
        clock: u64,
        index: u64,
        deleted_version: u64,
    }

    impl Model {
        fn live(&self, key: &Bytes) -> Option<&Item> {
            self.data
                .get(key)
                .filter(|item| item.deadline.map_or(true, |d| d > self.clock))
        }

        fn set(&mut self, key: &Bytes, value: Value, deadline: Option<u64>) {
            let item = Item {
                value,
                deadline,
                version: self.index,
            };
            if let Some(old) = self.data.insert(key.clone(), item) {
                if old.deadline.is_some_and(|d| d <= self.clock) {
                    self.deleted_version = self.index;
                }
            }
        }

        fn delete(&mut self, key: &Bytes) -> bool {
            match self.data.remove(key) {
                None => false,
                Some(old) => {
                    self.deleted_version = self.index;
                    old.deadline.map_or(true, |d| d > self.clock)
                }
            }
        }

        fn apply(
            &mut self,
            index: u64,
            at_ms: u64,
            command: &Command,
        ) -> Result<Response, CommandError> {
            self.index = index;
            self.clock = self.clock.max(at_ms);
            let now = self.clock;
            Ok(match command.clone() {
                Command::Get { key } => match self.live(&key).map(|i| &i.value) {
                    None => Response::Value(None),
                    Some(Value::Str(v)) => Response::Value(Some(v.clone())),
                    Some(Value::Hash(_)) => return Err(CommandError::WrongType),
                },
                Command::Put {
                    key,
                    value,
                    options,
                } => {
                    if options.expiry == SetExpiry::Set(Expiry::In { ms: 0 }) {
                        return Err(CommandError::InvalidExpireTime);
                    }
                    let current = self.live(&key).cloned();
                    let previous = match (&current, options.return_previous) {
                        (
                            Some(Item {
                                value: Value::Hash(_),
                                ..
                            }),
                            true,
                        ) => return Err(CommandError::WrongType),
                        (
                            Some(Item {
                                value: Value::Str(v),
                                ..
                            }),
                            true,
                        ) => Some(v.clone()),
                        _ => None,
                    };
                    let written = !(options.if_absent && current.is_some()
                        || options.if_present && current.is_none());
                    if written {
                        let deadline = match options.expiry {
                            SetExpiry::Clear => None,
                            SetExpiry::Keep => current.and_then(|i| i.deadline),
                            SetExpiry::Set(Expiry::In { ms }) => Some(now.saturating_add(ms)),
                            SetExpiry::Set(Expiry::At { ms }) => Some(ms),
                        };
                        if deadline.is_some_and(|d| d <= now) {
                            self.delete(&key);
                        } else {
                            self.set(&key, Value::Str(value), deadline);
                        }
                    }
                    Response::Put { written, previous }
                }
                Command::Delete { key } => Response::Deleted(self.delete(&key)),
                Command::Incr { key, delta } => {
                    let (current, deadline) = match self.live(&key) {
                        None => (0, None),
                        Some(Item {
                            value: Value::Hash(_),
                            ..
                        }) => return Err(CommandError::WrongType),
                        Some(Item {
                            value: Value::Str(v),
                            deadline,
                            ..
                        }) => {
                            let text =
                                std::str::from_utf8(v).map_err(|_| CommandError::NotAnInteger)?;
                            let n: i64 = text.parse().map_err(|_| CommandError::NotAnInteger)?;
                            if n.to_string() != text {
                                return Err(CommandError::NotAnInteger);
                            }
                            (n, *deadline)
                        }
                    };
                    let new = current.checked_add(delta).ok_or(CommandError::Overflow)?;
                    self.set(&key, Value::Str(Bytes::from(new.to_string())), deadline);
                    Response::Integer(new)
                }
                Command::Expire {
                    key,
                    when,
                    condition,
                } => {
                    let Some(item) = self.live(&key).cloned() else {
                        return Ok(Response::Integer(0));
                    };
                    let new = match when {
                        Expiry::In { ms } => now.saturating_add(ms),
                        Expiry::At { ms } => ms,
                    };
                    // No deadline = infinite.
                    let current = item.deadline.unwrap_or(u64::MAX) as u128
                        + u128::from(item.deadline.is_none());
                    let ok = match condition {
                        ExpireCondition::Always => true,
                        ExpireCondition::Nx => item.deadline.is_none(),
                        ExpireCondition::Xx => item.deadline.is_some(),
                        ExpireCondition::Gt => u128::from(new) > current,
                        ExpireCondition::Lt => u128::from(new) < current,
                    };
                    if !ok {
                        return Ok(Response::Integer(0));
                    }
                    if new <= now {
                        self.delete(&key);
                    } else {
                        self.set(&key, item.value, Some(new));
                    }
                    Response::Integer(1)
                }
                Command::Persist { key } => match self.live(&key).cloned() {
                    Some(item) if item.deadline.is_some() => {
                        self.set(&key, item.value, None);
                        Response::Integer(1)
                    }
                    _ => Response::Integer(0),
                },
                Command::HSet { key, fields, .. } => {
                    let (mut map, deadline) = match self.live(&key) {
                        None => (BTreeMap::new(), None),
                        Some(Item {
                            value: Value::Str(_),
                            ..
                        }) => return Err(CommandError::WrongType),
                        Some(Item {
                            value: Value::Hash(map),
                            deadline,
                            ..
                        }) => (map.clone(), *deadline),
                    };
                    let mut added = 0;
                    for (f, v) in fields {
                        if map.insert(f, v).is_none() {
                            added += 1;
                        }
                    }
                    self.set(&key, Value::Hash(map), deadline);
                    Response::Integer(added)
                }
                Command::HDel { key, fields } => {
                    let (mut map, deadline) = match self.live(&key) {
                        None => return Ok(Response::Integer(0)),
                        Some(Item {
                            value: Value::Str(_),
                            ..
                        }) => return Err(CommandError::WrongType),
                        Some(Item {
                            value: Value::Hash(map),
                            deadline,
                            ..
                        }) => (map.clone(), *deadline),
                    };
                    let removed = fields.iter().filter(|f| map.remove(*f).is_some()).count();
                    if removed > 0 {
                        if map.is_empty() {
                            self.delete(&key);
                        } else {
                            self.set(&key, Value::Hash(map), deadline);
                        }
                    }
                    Response::Integer(removed as i64)
                }
                Command::HGetAll { key } => match self.live(&key).map(|i| &i.value) {
                    None => Response::Pairs(vec![]),
                    Some(Value::Str(_)) => return Err(CommandError::WrongType),
                    Some(Value::Hash(map)) => {
                        Response::Pairs(map.iter().map(|(f, v)| (f.clone(), v.clone())).collect())
                    }
                },
                Command::Count => Response::Integer(
                    self.data.keys().filter(|k| self.live(k).is_some()).count() as i64,
                ),
                Command::PurgeExpired { limit } => {
                    let mut due: Vec<(u64, Bytes)> = self
                        .data
                        .iter()
                        .filter_map(|(k, i)| {
                            i.deadline.filter(|d| *d <= now).map(|d| (d, k.clone()))
                        })
                        .collect();
                    due.sort();
                    due.truncate(limit as usize);
                    for (_, key) in &due {
                        self.data.remove(key);
                    }
                    if !due.is_empty() {
                        self.deleted_version = index;
                    }
                    Response::Integer(due.len() as i64)
                }
                Command::Inspect { key } => {
                    let item = self.live(&key);
                    Response::KeyInfo {
                        info: item.map(|item| KeyInfo {
                            key_type: match item.value {
                                Value::Str(_) => KeyType::String,
                                Value::Hash(_) => KeyType::Hash,
                            },
                            expires_at_ms: item.deadline,
                            len: match &item.value {
                                Value::Str(v) => v.len() as u64,
                                Value::Hash(map) => map.len() as u64,
                            },
                            memory_bytes: 0, // not modelled: masked below
                            is_integer: matches!(&item.value, Value::Str(v)
                                if std::str::from_utf8(v).ok().and_then(|t| t.parse::<i64>().ok().filter(|n| n.to_string() == t)).is_some()),
                        }),
                        version: item.map_or(self.deleted_version, |i| i.version),
                        now_ms: now,
                    }
                }
                other => unreachable!("not generated: {other:?}"),
            })
        }
    }

    fn mask(result: Result<Response, CommandError>) -> Result<Response, CommandError> {
        match result {
            Ok(Response::KeyInfo {
                info,
                version,
                now_ms,
            }) => Ok(Response::KeyInfo {
                info: info.map(|info| KeyInfo {
                    memory_bytes: 0,
                    ..info
                }),
                version,
                now_ms,
            }),
            other => other,
        }
    }

    fn key() -> impl Strategy<Value = Bytes> {
        proptest::sample::select(vec!["a", "b", "c"]).prop_map(|s: &str| Bytes::from(s))
    }

    fn value() -> impl Strategy<Value = Bytes> {
        proptest::sample::select(vec!["", "1", "x", "-2"]).prop_map(|s: &str| Bytes::from(s))
    }

    fn expiry() -> impl Strategy<Value = Expiry> {
        prop_oneof![
            (0u64..40).prop_map(|ms| Expiry::In { ms }),
            (900u64..1_300).prop_map(|ms| Expiry::At { ms }),
        ]
    }

    fn command() -> impl Strategy<Value = Command> {
        let set_expiry = prop_oneof![
            Just(SetExpiry::Clear),
            Just(SetExpiry::Keep),
            expiry().prop_map(SetExpiry::Set),
        ];
        let condition = prop_oneof![
            Just(ExpireCondition::Always),
            Just(ExpireCondition::Nx),
            Just(ExpireCondition::Xx),
            Just(ExpireCondition::Gt),
            Just(ExpireCondition::Lt),
        ];
        prop_oneof![
            key().prop_map(|key| Command::Get { key }),
            (key(), value(), any::<(bool, bool)>(), set_expiry).prop_map(
                |(key, value, (nx, get), expiry)| Command::Put {
                    key,
                    value,
                    options: PutOptions {
                        if_absent: nx,
                        return_previous: get,
                        expiry,
                        ..PutOptions::default()
                    },
                }
            ),
            key().prop_map(|key| Command::Delete { key }),
            (key(), -2i64..3).prop_map(|(key, delta)| Command::Incr { key, delta }),
            (key(), expiry(), condition).prop_map(|(key, when, condition)| Command::Expire {
                key,
                when,
                condition
            }),
            key().prop_map(|key| Command::Persist { key }),
            (key(), proptest::collection::vec((key(), value()), 1..3)).prop_map(|(key, fields)| {
                Command::HSet {
                    key,
                    fields,
                    if_absent: false,
                }
            }),
            (key(), proptest::collection::vec(key(), 1..3))
                .prop_map(|(key, fields)| Command::HDel { key, fields }),
            key().prop_map(|key| Command::HGetAll { key }),
            Just(Command::Count),
            (0u32..3).prop_map(|limit| Command::PurgeExpired { limit }),
            key().prop_map(|key| Command::Inspect { key }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1_000))]

        /// Replies (Inspect's versions included), purges and memory accounting match the
        /// model; a replica restored from a snapshot midway ends identical.
        #[test]
        fn types_deadlines_and_versions_match_the_model(
            steps in proptest::collection::vec(
                (command(), prop_oneof![8 => 0u64..25, 1 => Just(0u64)], any::<bool>()),
                1..60,
            ),
            restore_at in 0usize..60,
        ) {
            let mut machine = KvStateMachine::with_region(RegionRange::full());
            let mut model = Model::default();
            let mut time = 1_000u64;
            let mut restored: Option<KvStateMachine> = None;
            for (position, (command, advance, lagging)) in steps.iter().enumerate() {
                time += advance;
                // A new leader's clock may lag: the log clock must not go back.
                let at_ms = if *lagging { time.saturating_sub(30) } else { time };
                let index = position as u64 + 1;
                let request = Request {
                    client_id: ClientId(1),
                    sequence: Sequence(index),
                    command: command.clone(),
                    proposed_at_ms: at_ms,
                };
                let expected = model.apply(index, at_ms, command);
                let got = machine.apply(index, &request.encode()).result.map_err(|e| match e {
                    kv::ApplyError::Command(e) => e,
                    other => panic!("{other:?}"),
                });
                prop_assert_eq!(mask(got), expected, "step {} {:?}", position, command);
                if let Some(r) = restored.as_mut() {
                    r.apply(index, &request.encode());
                }
                if position == restore_at {
                    restored = Some(KvStateMachine::restore(&machine.snapshot()).unwrap());
                }
                machine.assert_invariants();
                let bytes: u64 = model.data.iter().map(|(k, i)| k.len() as u64 + match &i.value {
                    Value::Str(v) => v.len() as u64,
                    Value::Hash(map) => map.iter().map(|(f, v)| (f.len() + v.len()) as u64).sum(),
                }).sum();
                prop_assert_eq!(machine.data_bytes(), bytes);
                prop_assert_eq!(machine.len(), model.data.len());
                prop_assert_eq!(machine.deleted_version(), model.deleted_version);
                prop_assert_eq!(
                    machine.next_deadline_ms(),
                    model.data.values().filter_map(|i| i.deadline).min()
                );
            }
            if let Some(r) = restored {
                prop_assert_eq!(r.state_hash(), machine.state_hash());
            }
        }
    }
}
