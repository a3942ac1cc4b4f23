//! The wire format of one [`raft::Message`]: compact, versioned, and safe to decode from
//! untrusted bytes.
//!
//! Layout (all integers are unsigned LEB128 varints unless noted; `u8` is one raw byte):
//!
//! ```text
//! message  := version:u8 tag:u8 group from to term body
//! bytes    := len payload[len]
//! bool     := u8 (0 or 1, anything else is an error)
//! option   := u8 flag (0 = none, 1 = some) [value]
//! entry    := term index kind:u8 bytes           (kind: 0 normal, 1 conf change)
//! conf     := list(voters) list(learners) list(voters_outgoing) list(learners_next) bool
//! list     := count node_id*count
//! ```
//!
//! Why not protobuf for the message itself: the Raft core's types live in a sans-IO crate
//! that must not depend on prost, and a hand-written format keeps the hot path (Append with
//! many small entries, heartbeats) at a few bytes of overhead per field with no intermediate
//! allocation. A [`wire`](crate::wire) frame carries these encodings, each length-prefixed.
//!
//! Why the decoder is paranoid: the server decodes whatever a peer (or anything that can
//! reach the port) sends. Every length and count is checked against the bytes that remain
//! *before* anything is allocated, counts are capped by named limits, and decoding never
//! panics: bad input is a [`CodecError`], and the caller drops that one message.

use bytes::{BufMut, Bytes};
use raft::{
    ConfState, Entry, EntryKind, GroupId, LogIndex, Message, MessageBody, NodeId, RejectHint,
    SnapshotMetadata, Term,
};
use thiserror::Error;

/// The format version written by [`encode`]. A decoder refuses other versions instead of
/// guessing, so a mixed-version cluster fails loudly per message rather than misroutes.
pub const CODEC_VERSION: u8 = 2;

/// Most entries one encoded message may carry. The Raft core bounds Append size by bytes
/// far below this; the cap only stops a hostile count from driving allocation.
pub const MAX_ENTRIES_PER_MESSAGE: u64 = 1 << 16;

/// Most node ids in one role list of a [`ConfState`] (voters, learners, ...). Real groups
/// have a handful of members.
pub const MAX_CONF_STATE_NODES: u64 = 1 << 10;

/// Smallest possible encoded entry: term, index, kind and an empty payload length, one byte
/// each. Used to reject counts that the remaining input cannot possibly hold.
const MIN_ENTRY_BYTES: usize = 4;

/// Longest LEB128 encoding of a u64.
const MAX_VARINT_BYTES: usize = 10;

const TAG_PRE_VOTE: u8 = 1;
const TAG_PRE_VOTE_RESPONSE: u8 = 2;
const TAG_VOTE: u8 = 3;
const TAG_VOTE_RESPONSE: u8 = 4;
const TAG_APPEND: u8 = 5;
const TAG_APPEND_RESPONSE: u8 = 6;
const TAG_HEARTBEAT: u8 = 7;
const TAG_HEARTBEAT_RESPONSE: u8 = 8;
const TAG_SNAPSHOT: u8 = 9;
const TAG_SNAPSHOT_RESPONSE: u8 = 10;
const TAG_TIMEOUT_NOW: u8 = 11;
const TAG_READ_INDEX: u8 = 12;
const TAG_READ_INDEX_RESPONSE: u8 = 13;

const KIND_NORMAL: u8 = 0;
const KIND_CONF_CHANGE: u8 = 1;

/// Why a byte string is not a valid encoded message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CodecError {
    #[error("unsupported codec version {0} (this build speaks {CODEC_VERSION})")]
    UnsupportedVersion(u8),
    #[error("unknown message tag {0}")]
    UnknownTag(u8),
    #[error("truncated {what}: needs {needed} bytes, {remaining} left")]
    Truncated {
        what: &'static str,
        needed: u64,
        remaining: usize,
    },
    #[error("varint in {what} overflows u64")]
    VarintOverflow { what: &'static str },
    #[error("invalid bool byte {value} in {what}")]
    InvalidBool { what: &'static str, value: u8 },
    #[error("invalid option flag {value} in {what}")]
    InvalidOption { what: &'static str, value: u8 },
    #[error("{what} out of range")]
    OutOfRange { what: &'static str },
    #[error("invalid entry kind {0}")]
    InvalidEntryKind(u8),
    #[error("{what}: count {count} exceeds limit {limit}")]
    TooMany {
        what: &'static str,
        count: u64,
        limit: u64,
    },
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
}

/// Encodes `m` in the current format version.
///
/// Encoding cannot fail. A message whose entry or member counts exceed
/// [`MAX_ENTRIES_PER_MESSAGE`] / [`MAX_CONF_STATE_NODES`] is still encoded, but the receiver
/// will refuse it; the Raft core never builds such messages.
pub fn encode(m: &Message) -> Bytes {
    Bytes::from(encode_to_vec(m))
}

/// Like [`encode`], into a fresh `Vec` (what the protobuf envelope stores, saving a copy).
pub fn encode_to_vec(m: &Message) -> Vec<u8> {
    let mut buf = Vec::with_capacity(m.size_bytes() as usize);
    encode_into(m, &mut buf);
    buf
}

/// Appends the encoding of `m` to `buf`.
pub fn encode_into(m: &Message, buf: &mut Vec<u8>) {
    buf.put_u8(CODEC_VERSION);
    buf.put_u8(tag_of(&m.body));
    put_varint(buf, m.group.0);
    put_varint(buf, m.from.0);
    put_varint(buf, m.to.0);
    put_varint(buf, m.term.0);
    match &m.body {
        MessageBody::PreVote {
            last_index,
            last_term,
        } => {
            put_varint(buf, last_index.0);
            put_varint(buf, last_term.0);
        }
        MessageBody::PreVoteResponse { reject } | MessageBody::VoteResponse { reject } => {
            put_bool(buf, *reject);
        }
        MessageBody::Vote {
            last_index,
            last_term,
            leader_transfer,
        } => {
            put_varint(buf, last_index.0);
            put_varint(buf, last_term.0);
            put_bool(buf, *leader_transfer);
        }
        MessageBody::Append {
            prev_index,
            prev_term,
            entries,
            commit,
        } => {
            put_varint(buf, prev_index.0);
            put_varint(buf, prev_term.0);
            put_varint(buf, commit.0);
            put_varint(buf, entries.len() as u64);
            for e in entries {
                put_varint(buf, e.term.0);
                put_varint(buf, e.index.0);
                buf.put_u8(match e.kind {
                    EntryKind::Normal => KIND_NORMAL,
                    EntryKind::ConfChange => KIND_CONF_CHANGE,
                });
                put_bytes(buf, &e.data);
            }
        }
        MessageBody::AppendResponse { index, reject } => {
            put_varint(buf, index.0);
            match reject {
                None => buf.put_u8(0),
                Some(hint) => {
                    buf.put_u8(1);
                    put_varint(buf, hint.index.0);
                    put_varint(buf, hint.term.0);
                }
            }
        }
        MessageBody::Heartbeat {
            commit,
            read_context,
            lease_tick,
        } => {
            put_varint(buf, commit.0);
            put_varint(buf, *lease_tick);
            put_opt_bytes(buf, read_context.as_ref());
        }
        MessageBody::HeartbeatResponse {
            read_context,
            lease_tick,
        } => {
            put_varint(buf, *lease_tick);
            put_opt_bytes(buf, read_context.as_ref());
        }
        MessageBody::Snapshot {
            metadata,
            offset,
            total_bytes,
            checksum,
            data,
            done,
        } => {
            put_varint(buf, metadata.index.0);
            put_varint(buf, metadata.term.0);
            put_conf_state(buf, &metadata.conf_state);
            put_varint(buf, *offset);
            put_varint(buf, *total_bytes);
            put_varint(buf, u64::from(*checksum));
            put_bool(buf, *done);
            put_bytes(buf, data);
        }
        MessageBody::SnapshotResponse {
            index,
            next_offset,
            reject,
        } => {
            put_varint(buf, index.0);
            put_varint(buf, *next_offset);
            put_bool(buf, *reject);
        }
        MessageBody::TimeoutNow => {}
        MessageBody::ReadIndex { context } => put_bytes(buf, context),
        MessageBody::ReadIndexResponse { index, context } => {
            put_varint(buf, index.0);
            put_bytes(buf, context);
        }
    }
}

/// Decodes one message. The whole input must be exactly one message: trailing bytes are an
/// error, since they mean the sender and receiver disagree about the format.
pub fn decode(b: &[u8]) -> Result<Message, CodecError> {
    let mut r = Reader { buf: b };
    let version = r.u8("version")?;
    if version != CODEC_VERSION {
        return Err(CodecError::UnsupportedVersion(version));
    }
    let tag = r.u8("tag")?;
    let group = GroupId(r.varint("group")?);
    let from = NodeId(r.varint("from")?);
    let to = NodeId(r.varint("to")?);
    let term = Term(r.varint("term")?);
    let body = match tag {
        TAG_PRE_VOTE => MessageBody::PreVote {
            last_index: LogIndex(r.varint("last_index")?),
            last_term: Term(r.varint("last_term")?),
        },
        TAG_PRE_VOTE_RESPONSE => MessageBody::PreVoteResponse {
            reject: r.bool("reject")?,
        },
        TAG_VOTE => MessageBody::Vote {
            last_index: LogIndex(r.varint("last_index")?),
            last_term: Term(r.varint("last_term")?),
            leader_transfer: r.bool("leader_transfer")?,
        },
        TAG_VOTE_RESPONSE => MessageBody::VoteResponse {
            reject: r.bool("reject")?,
        },
        TAG_APPEND => {
            let prev_index = LogIndex(r.varint("prev_index")?);
            let prev_term = Term(r.varint("prev_term")?);
            let commit = LogIndex(r.varint("commit")?);
            let n = r.count("entries", MAX_ENTRIES_PER_MESSAGE, MIN_ENTRY_BYTES)?;
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                let term = Term(r.varint("entry term")?);
                let index = LogIndex(r.varint("entry index")?);
                let kind = match r.u8("entry kind")? {
                    KIND_NORMAL => EntryKind::Normal,
                    KIND_CONF_CHANGE => EntryKind::ConfChange,
                    other => return Err(CodecError::InvalidEntryKind(other)),
                };
                let data = r.bytes("entry data")?;
                entries.push(Entry {
                    term,
                    index,
                    kind,
                    data,
                });
            }
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            }
        }
        TAG_APPEND_RESPONSE => {
            let index = LogIndex(r.varint("index")?);
            let reject = if r.option("reject hint")? {
                Some(RejectHint {
                    index: LogIndex(r.varint("hint index")?),
                    term: Term(r.varint("hint term")?),
                })
            } else {
                None
            };
            MessageBody::AppendResponse { index, reject }
        }
        TAG_HEARTBEAT => {
            let commit = LogIndex(r.varint("commit")?);
            let lease_tick = r.varint("lease_tick")?;
            let read_context = r.opt_bytes("read_context")?;
            MessageBody::Heartbeat {
                commit,
                read_context,
                lease_tick,
            }
        }
        TAG_HEARTBEAT_RESPONSE => {
            let lease_tick = r.varint("lease_tick")?;
            let read_context = r.opt_bytes("read_context")?;
            MessageBody::HeartbeatResponse {
                read_context,
                lease_tick,
            }
        }
        TAG_SNAPSHOT => {
            let index = LogIndex(r.varint("snapshot index")?);
            let term = Term(r.varint("snapshot term")?);
            let conf_state = r.conf_state()?;
            let offset = r.varint("offset")?;
            let total_bytes = r.varint("total_bytes")?;
            let checksum =
                u32::try_from(r.varint("checksum")?).map_err(|_| CodecError::OutOfRange {
                    what: "snapshot checksum",
                })?;
            let done = r.bool("done")?;
            let data = r.bytes("snapshot data")?;
            MessageBody::Snapshot {
                metadata: SnapshotMetadata {
                    index,
                    term,
                    conf_state,
                },
                offset,
                total_bytes,
                checksum,
                data,
                done,
            }
        }
        TAG_SNAPSHOT_RESPONSE => MessageBody::SnapshotResponse {
            index: LogIndex(r.varint("index")?),
            next_offset: r.varint("next_offset")?,
            reject: r.bool("reject")?,
        },
        TAG_TIMEOUT_NOW => MessageBody::TimeoutNow,
        TAG_READ_INDEX => MessageBody::ReadIndex {
            context: r.bytes("context")?,
        },
        TAG_READ_INDEX_RESPONSE => MessageBody::ReadIndexResponse {
            index: LogIndex(r.varint("index")?),
            context: r.bytes("context")?,
        },
        other => return Err(CodecError::UnknownTag(other)),
    };
    if !r.buf.is_empty() {
        return Err(CodecError::TrailingBytes(r.buf.len()));
    }
    Ok(Message {
        group,
        from,
        to,
        term,
        body,
    })
}

fn tag_of(body: &MessageBody) -> u8 {
    match body {
        MessageBody::PreVote { .. } => TAG_PRE_VOTE,
        MessageBody::PreVoteResponse { .. } => TAG_PRE_VOTE_RESPONSE,
        MessageBody::Vote { .. } => TAG_VOTE,
        MessageBody::VoteResponse { .. } => TAG_VOTE_RESPONSE,
        MessageBody::Append { .. } => TAG_APPEND,
        MessageBody::AppendResponse { .. } => TAG_APPEND_RESPONSE,
        MessageBody::Heartbeat { .. } => TAG_HEARTBEAT,
        MessageBody::HeartbeatResponse { .. } => TAG_HEARTBEAT_RESPONSE,
        MessageBody::Snapshot { .. } => TAG_SNAPSHOT,
        MessageBody::SnapshotResponse { .. } => TAG_SNAPSHOT_RESPONSE,
        MessageBody::TimeoutNow => TAG_TIMEOUT_NOW,
        MessageBody::ReadIndex { .. } => TAG_READ_INDEX,
        MessageBody::ReadIndexResponse { .. } => TAG_READ_INDEX_RESPONSE,
    }
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

fn put_bool(buf: &mut Vec<u8>, v: bool) {
    buf.put_u8(v as u8);
}

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    put_varint(buf, b.len() as u64);
    buf.put_slice(b);
}

fn put_opt_bytes(buf: &mut Vec<u8>, b: Option<&Bytes>) {
    match b {
        None => buf.put_u8(0),
        Some(b) => {
            buf.put_u8(1);
            put_bytes(buf, b);
        }
    }
}

fn put_conf_state(buf: &mut Vec<u8>, cs: &ConfState) {
    for list in [
        &cs.voters,
        &cs.learners,
        &cs.voters_outgoing,
        &cs.learners_next,
    ] {
        put_varint(buf, list.len() as u64);
        for id in list {
            put_varint(buf, id.0);
        }
    }
    put_bool(buf, cs.auto_leave);
}

/// A cursor over untrusted input. Every read checks the remaining length first.
struct Reader<'a> {
    buf: &'a [u8],
}

impl Reader<'_> {
    fn u8(&mut self, what: &'static str) -> Result<u8, CodecError> {
        match self.buf.split_first() {
            Some((&b, rest)) => {
                self.buf = rest;
                Ok(b)
            }
            None => Err(CodecError::Truncated {
                what,
                needed: 1,
                remaining: 0,
            }),
        }
    }

    fn varint(&mut self, what: &'static str) -> Result<u64, CodecError> {
        let mut v: u64 = 0;
        for i in 0..MAX_VARINT_BYTES {
            let b = self.u8(what)?;
            let low = u64::from(b & 0x7f);
            // The 10th byte may only contribute the single top bit of a u64.
            if i == MAX_VARINT_BYTES - 1 && (b & 0x80 != 0 || low > 1) {
                return Err(CodecError::VarintOverflow { what });
            }
            v |= low << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        // Unreachable: the 10th byte either ends the varint or is rejected above.
        Err(CodecError::VarintOverflow { what })
    }

    fn bool(&mut self, what: &'static str) -> Result<bool, CodecError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(CodecError::InvalidBool { what, value }),
        }
    }

    fn option(&mut self, what: &'static str) -> Result<bool, CodecError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(CodecError::InvalidOption { what, value }),
        }
    }

    fn bytes(&mut self, what: &'static str) -> Result<Bytes, CodecError> {
        let len = self.varint(what)?;
        if len > self.buf.len() as u64 {
            return Err(CodecError::Truncated {
                what,
                needed: len,
                remaining: self.buf.len(),
            });
        }
        let (data, rest) = self.buf.split_at(len as usize);
        self.buf = rest;
        Ok(Bytes::copy_from_slice(data))
    }

    fn opt_bytes(&mut self, what: &'static str) -> Result<Option<Bytes>, CodecError> {
        if self.option(what)? {
            self.bytes(what).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Reads an element count, refusing counts above `limit` and counts the remaining input
    /// cannot hold (`min_item_bytes` each), so the caller may allocate `count` slots safely.
    fn count(
        &mut self,
        what: &'static str,
        limit: u64,
        min_item_bytes: usize,
    ) -> Result<usize, CodecError> {
        let count = self.varint(what)?;
        if count > limit {
            return Err(CodecError::TooMany { what, count, limit });
        }
        // count <= limit keeps this product far from overflow.
        let needed = count * min_item_bytes as u64;
        if needed > self.buf.len() as u64 {
            return Err(CodecError::Truncated {
                what,
                needed,
                remaining: self.buf.len(),
            });
        }
        Ok(count as usize)
    }

    fn node_list(&mut self, what: &'static str) -> Result<Vec<NodeId>, CodecError> {
        let n = self.count(what, MAX_CONF_STATE_NODES, 1)?;
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            ids.push(NodeId(self.varint(what)?));
        }
        Ok(ids)
    }

    fn conf_state(&mut self) -> Result<ConfState, CodecError> {
        Ok(ConfState {
            voters: self.node_list("voters")?,
            learners: self.node_list("learners")?,
            voters_outgoing: self.node_list("voters_outgoing")?,
            learners_next: self.node_list("learners_next")?,
            auto_leave: self.bool("auto_leave")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_bytes() -> impl Strategy<Value = Bytes> {
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
    }

    fn arb_nodes() -> impl Strategy<Value = Vec<NodeId>> {
        prop::collection::vec(any::<u64>().prop_map(NodeId), 0..6)
    }

    fn arb_conf_state() -> impl Strategy<Value = ConfState> {
        (
            arb_nodes(),
            arb_nodes(),
            arb_nodes(),
            arb_nodes(),
            any::<bool>(),
        )
            .prop_map(
                |(voters, learners, voters_outgoing, learners_next, auto_leave)| ConfState {
                    voters,
                    learners,
                    voters_outgoing,
                    learners_next,
                    auto_leave,
                },
            )
    }

    fn arb_entry() -> impl Strategy<Value = Entry> {
        (any::<u64>(), any::<u64>(), any::<bool>(), arb_bytes()).prop_map(
            |(term, index, conf, data)| Entry {
                term: Term(term),
                index: LogIndex(index),
                kind: if conf {
                    EntryKind::ConfChange
                } else {
                    EntryKind::Normal
                },
                data,
            },
        )
    }

    fn arb_body() -> impl Strategy<Value = MessageBody> {
        let idx = || any::<u64>().prop_map(LogIndex);
        let term = || any::<u64>().prop_map(Term);
        prop_oneof![
            (idx(), term()).prop_map(|(last_index, last_term)| MessageBody::PreVote {
                last_index,
                last_term
            }),
            any::<bool>().prop_map(|reject| MessageBody::PreVoteResponse { reject }),
            (idx(), term(), any::<bool>()).prop_map(|(last_index, last_term, leader_transfer)| {
                MessageBody::Vote {
                    last_index,
                    last_term,
                    leader_transfer,
                }
            }),
            any::<bool>().prop_map(|reject| MessageBody::VoteResponse { reject }),
            (
                idx(),
                term(),
                prop::collection::vec(arb_entry(), 0..8),
                idx()
            )
                .prop_map(|(prev_index, prev_term, entries, commit)| {
                    MessageBody::Append {
                        prev_index,
                        prev_term,
                        entries,
                        commit,
                    }
                }),
            (idx(), prop::option::of((idx(), term()))).prop_map(|(index, hint)| {
                MessageBody::AppendResponse {
                    index,
                    reject: hint.map(|(index, term)| RejectHint { index, term }),
                }
            }),
            (idx(), prop::option::of(arb_bytes()), any::<u64>()).prop_map(
                |(commit, read_context, lease_tick)| MessageBody::Heartbeat {
                    commit,
                    read_context,
                    lease_tick,
                }
            ),
            (prop::option::of(arb_bytes()), any::<u64>()).prop_map(|(read_context, lease_tick)| {
                MessageBody::HeartbeatResponse {
                    read_context,
                    lease_tick,
                }
            }),
            (
                idx(),
                term(),
                arb_conf_state(),
                any::<u64>(),
                any::<u64>(),
                any::<u32>(),
                arb_bytes(),
                any::<bool>()
            )
                .prop_map(
                    |(index, term, conf_state, offset, total_bytes, checksum, data, done)| {
                        MessageBody::Snapshot {
                            metadata: SnapshotMetadata {
                                index,
                                term,
                                conf_state,
                            },
                            offset,
                            total_bytes,
                            checksum,
                            data,
                            done,
                        }
                    }
                ),
            (idx(), any::<u64>(), any::<bool>()).prop_map(|(index, next_offset, reject)| {
                MessageBody::SnapshotResponse {
                    index,
                    next_offset,
                    reject,
                }
            }),
            Just(MessageBody::TimeoutNow),
            arb_bytes().prop_map(|context| MessageBody::ReadIndex { context }),
            (idx(), arb_bytes())
                .prop_map(|(index, context)| MessageBody::ReadIndexResponse { index, context }),
        ]
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            arb_body(),
        )
            .prop_map(|(group, from, to, term, body)| Message {
                group: GroupId(group),
                from: NodeId(from),
                to: NodeId(to),
                term: Term(term),
                body,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn round_trip(m in arb_message()) {
            let enc = encode(&m);
            prop_assert_eq!(decode(&enc), Ok(m));
        }

        /// The format is prefix-free and decoding demands exactly one message, so every
        /// strict prefix of a valid encoding must fail, and fail without panicking.
        #[test]
        fn every_truncation_is_an_error(m in arb_message()) {
            let enc = encode(&m);
            for cut in 0..enc.len() {
                prop_assert!(decode(&enc[..cut]).is_err(), "prefix {} of {} decoded", cut, enc.len());
            }
        }

        #[test]
        fn trailing_bytes_are_an_error(m in arb_message(), extra in prop::collection::vec(any::<u8>(), 1..8)) {
            let mut enc = encode_to_vec(&m);
            enc.extend_from_slice(&extra);
            prop_assert!(decode(&enc).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&b);
        }

        /// Arbitrary bytes behind a valid header reach deep into the body decoders, which
        /// purely random input rarely does.
        #[test]
        fn arbitrary_bodies_never_panic(tag in 0u8..16, b in prop::collection::vec(any::<u8>(), 0..256)) {
            let mut input = vec![CODEC_VERSION, tag, 1, 2, 3, 4];
            input.extend_from_slice(&b);
            let _ = decode(&input);
        }

        /// Flipping one byte of a valid encoding either still decodes or errors; never panics.
        #[test]
        fn corrupted_encodings_never_panic(m in arb_message(), pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut enc = encode_to_vec(&m);
            let i = pos.index(enc.len());
            enc[i] = byte;
            let _ = decode(&enc);
        }
    }

    #[test]
    fn huge_counts_are_refused_before_allocating() {
        // An Append claiming u64::MAX entries with no bytes behind the count.
        let mut b = vec![CODEC_VERSION, TAG_APPEND, 1, 1, 2, 1, 0, 0, 0];
        put_varint(&mut b, u64::MAX);
        assert!(matches!(decode(&b), Err(CodecError::TooMany { .. })));

        // A count under the limit that the remaining input cannot hold.
        let mut b = vec![CODEC_VERSION, TAG_APPEND, 1, 1, 2, 1, 0, 0, 0];
        put_varint(&mut b, 1000);
        assert!(matches!(decode(&b), Err(CodecError::Truncated { .. })));

        // A byte string claiming more bytes than remain.
        let mut b = vec![CODEC_VERSION, TAG_READ_INDEX, 1, 1, 2, 1];
        put_varint(&mut b, u64::MAX);
        assert!(matches!(decode(&b), Err(CodecError::Truncated { .. })));

        // A conf state with too many voters.
        let mut b = vec![CODEC_VERSION, TAG_SNAPSHOT, 1, 1, 2, 1, 5, 1];
        put_varint(&mut b, MAX_CONF_STATE_NODES + 1);
        assert!(matches!(decode(&b), Err(CodecError::TooMany { .. })));
    }

    #[test]
    fn varint_edges() {
        for v in [0, 1, 127, 128, 300, u64::MAX >> 1, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            let mut r = Reader { buf: &b };
            assert_eq!(r.varint("v"), Ok(v));
            assert!(r.buf.is_empty());
        }
        // 11-byte varint and a 10th byte carrying bits past 64 are refused.
        let mut r = Reader {
            buf: &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
        };
        assert!(matches!(
            r.varint("v"),
            Err(CodecError::VarintOverflow { .. })
        ));
        let mut r = Reader { buf: &[0xff; 11] };
        assert!(matches!(
            r.varint("v"),
            Err(CodecError::VarintOverflow { .. })
        ));
    }

    #[test]
    fn wrong_version_and_tag() {
        let m = Message {
            group: GroupId(1),
            from: NodeId(2),
            to: NodeId(3),
            term: Term(4),
            body: MessageBody::TimeoutNow,
        };
        let mut enc = encode_to_vec(&m);
        enc[0] = 99;
        assert_eq!(decode(&enc), Err(CodecError::UnsupportedVersion(99)));
        enc[0] = CODEC_VERSION;
        enc[1] = 200;
        assert_eq!(decode(&enc), Err(CodecError::UnknownTag(200)));
    }
}
