//! `Hosted`: the state machine of every Raft group a store hosts — a data region's kv
//! state, or the placement group's state. One type, so the store, the server and the
//! simulator keep driving one `Store<Hosted>`; the variant follows from the group's id
//! ([`types::PLACEMENT_REGION`]).
//!
//! The placement group speaks the kv types at the store's boundary, so no caller needs a
//! second request path: a verb is proposed as [`crate::encode_command`] bytes and answered
//! as `Response::Value(Some(encode_reply(..)))`; a read is a kv `Get` whose key names the
//! query ([`query_command`]), answered with [`QueryAnswer`] as JSON. Verbs carry no client
//! session: each is idempotent by itself (a Join is keyed by the joining store's token).

use crate::machine::{decode_command, encode_reply, PlacementError, PlacementState};
use crate::model::Config;
use bytes::Bytes;
use kv::{ApplyOutcome, Command, CommandError, KvStateMachine, Response};
use serde::{Deserialize, Serialize};
use types::{ApproximateSize, Region, StateMachine};

/// Prefix of the key of a placement read (what follows: the configuration asked for, u64
/// big-endian; `u64::MAX` = the latest).
const QUERY_KEY_PREFIX: &[u8] = b"\xffplacement/query/";

/// A read of configuration `n` (`None`: the latest) as the kv command the store carries.
pub fn query_command(n: Option<u64>) -> Command {
    let mut key = QUERY_KEY_PREFIX.to_vec();
    key.extend_from_slice(&n.unwrap_or(u64::MAX).to_be_bytes());
    Command::Get {
        key: Bytes::from(key),
    }
}

/// What a placement read answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryAnswer {
    pub cluster_id: u64,
    /// Replicas per region.
    pub replicas: u64,
    /// The oldest configuration still answered.
    pub oldest: u64,
    pub config: Config,
}

/// The state machine of one hosted group.
#[derive(Clone, Debug)]
pub enum Hosted {
    Kv(KvStateMachine),
    Placement(PlacementState),
}

impl Hosted {
    /// The kv state of a data region (`None` for the placement group).
    pub fn kv(&self) -> Option<&KvStateMachine> {
        match self {
            Hosted::Kv(k) => Some(k),
            Hosted::Placement(_) => None,
        }
    }

    /// The first state of the placement group of a new cluster.
    pub fn bootstrap_placement(state: PlacementState) -> Bytes {
        Bytes::from(state.encode())
    }
}

/// Decodes a placement read's answer.
pub fn decode_answer(r: &Response) -> Result<QueryAnswer, PlacementError> {
    match r {
        Response::Value(Some(v)) => {
            let r: Result<QueryAnswer, PlacementError> =
                serde_json::from_slice(v).map_err(|e| PlacementError::Decode(e.to_string()))?;
            r
        }
        other => Err(PlacementError::Decode(format!(
            "not a placement answer: {other:?}"
        ))),
    }
}

/// A point-in-time copy for a snapshot (the placement state is serialized at once: it is
/// small next to the regions' data).
pub enum HostedView {
    Kv(Box<KvStateMachine>),
    Placement(Bytes),
}

impl StateMachine for Hosted {
    type Output = ApplyOutcome;
    type Query = Command;
    type ReadOutput = Result<Response, CommandError>;

    fn empty(region: &Region) -> Self {
        if region.is_placement() {
            // A placeholder until the first snapshot replaces it (a replica being added).
            Hosted::Placement(PlacementState::bootstrap(0, 1, Vec::new(), Vec::new()))
        } else {
            Hosted::Kv(<KvStateMachine as StateMachine>::empty(region))
        }
    }

    fn apply(&mut self, index: u64, data: &[u8]) -> ApplyOutcome {
        match self {
            Hosted::Kv(k) => StateMachine::apply(k, index, data),
            Hosted::Placement(p) => {
                let reply = decode_command(data).and_then(|cmd| p.apply(&cmd));
                ApplyOutcome {
                    index,
                    client: None,
                    result: Ok(Response::Value(Some(Bytes::from(encode_reply(&reply))))),
                    duplicate: false,
                }
            }
        }
    }

    fn apply_noop(&mut self, index: u64) {
        if let Hosted::Kv(k) = self {
            StateMachine::apply_noop(k, index)
        }
    }

    fn split_off(&mut self, at_key: &[u8], right: &Region, applied: u64) -> Self {
        match self {
            Hosted::Kv(k) => Hosted::Kv(StateMachine::split_off(k, at_key, right, applied)),
            Hosted::Placement(_) => panic!("the store split the placement group at {at_key:?}"),
        }
    }

    fn absorb(&mut self, source: Self, merged: &Region) {
        match (self, source) {
            (Hosted::Kv(k), Hosted::Kv(s)) => StateMachine::absorb(k, s, merged),
            _ => panic!("the store merged the placement group into {merged:?}"),
        }
    }

    fn housekeeping(&self, now_ms: u64) -> Option<Bytes> {
        match self {
            Hosted::Kv(k) => StateMachine::housekeeping(k, now_ms),
            // Placement's own state does not expire.
            Hosted::Placement(_) => None,
        }
    }

    fn read(&self, query: &Command, now_ms: u64) -> Result<Response, CommandError> {
        match self {
            Hosted::Kv(k) => StateMachine::read(k, query, now_ms),
            Hosted::Placement(p) => {
                let n = match query {
                    Command::Get { key } if key.starts_with(QUERY_KEY_PREFIX) => {
                        let rest = &key[QUERY_KEY_PREFIX.len()..];
                        <[u8; 8]>::try_from(rest).ok().map(u64::from_be_bytes)
                    }
                    _ => None,
                };
                let answer = match n {
                    Some(n) => p
                        .query((n != u64::MAX).then_some(n))
                        .map(|config| QueryAnswer {
                            cluster_id: p.cluster_id(),
                            replicas: p.replicas(),
                            oldest: p.oldest(),
                            config,
                        }),
                    None => Err(PlacementError::Invalid(format!(
                        "the placement group answers placement queries, not {query:?}"
                    ))),
                };
                let json = serde_json::to_vec(&answer).expect("serializing to memory");
                Ok(Response::Value(Some(Bytes::from(json))))
            }
        }
    }

    type RestoreError = String;
    type View = HostedView;

    fn view(&self) -> HostedView {
        match self {
            Hosted::Kv(k) => HostedView::Kv(Box::new(StateMachine::view(k))),
            Hosted::Placement(p) => HostedView::Placement(Bytes::from(p.encode())),
        }
    }

    fn serialize(view: &HostedView) -> Bytes {
        match view {
            HostedView::Kv(k) => <KvStateMachine as StateMachine>::serialize(k),
            HostedView::Placement(b) => b.clone(),
        }
    }

    fn size_split_key(&self) -> Option<Vec<u8>> {
        match self {
            Hosted::Kv(k) => StateMachine::size_split_key(k),
            // Never split (the store refuses it too).
            Hosted::Placement(_) => None,
        }
    }

    /// The kv state machine's: a data region's load sampler sees every key of a batch.
    /// (A placement command is not a kv payload: kv names its routing key, and the
    /// placement group is never split anyway.)
    fn payload_keys(data: &[u8], routing_key: &[u8], key: &mut dyn FnMut(&[u8]) -> bool) {
        <KvStateMachine as StateMachine>::payload_keys(data, routing_key, key)
    }

    fn query_keys(query: &Command, routing_key: &[u8], key: &mut dyn FnMut(&[u8]) -> bool) {
        <KvStateMachine as StateMachine>::query_keys(query, routing_key, key)
    }

    fn approximate_size(&self) -> ApproximateSize {
        match self {
            Hosted::Kv(k) => StateMachine::approximate_size(k),
            Hosted::Placement(p) => ApproximateSize {
                keys: p.latest().regions.len() as u64,
                bytes: 0,
            },
        }
    }

    fn restore(data: &[u8]) -> Result<Self, String> {
        if crate::machine::is_placement_snapshot(data) {
            PlacementState::decode(data)
                .map(Hosted::Placement)
                .map_err(|e| e.to_string())
        } else {
            <KvStateMachine as StateMachine>::restore(data)
                .map(Hosted::Kv)
                .map_err(|e| e.to_string())
        }
    }
}
