//! What a client can ask for ([`Command`]), the envelope that goes into a Raft entry
//! ([`Request`]), and their binary codec.
//!
//! # Wire format (version [`CODEC_VERSION`])
//! ```text
//! Request  := version:u8 client_id:varint sequence:varint proposed_at_ms:varint CommandBody
//! Command  := version:u8 CommandBody          (standalone encoding, e.g. for reads)
//! CommandBody := tag:u8 fields...
//!   1 Get            key:bytes
//!   2 Put            key:bytes value:bytes flags:u8 (bit0 if_absent, bit1 if_present,
//!                    bit2 return_previous; other bits must be 0)
//!   3 Delete         key:bytes
//!   4 Append         key:bytes value:bytes
//!   5 CompareAndSwap key:bytes expected:option<bytes> new:bytes
//!   6 Scan           start:bytes end:option<bytes> limit:varint
//!   7 BatchGet       keys:list<bytes>
//!   8 BatchPut       pairs:list<(key:bytes value:bytes)>
//!   9 Incr           key:bytes delta:zigzag-varint
//!  10 IncrByFloat    key:bytes delta_bits:u64 fixed LE (IEEE-754 bits)
//!  11 SetRange       key:bytes offset:varint value:bytes
//!  12 GetSet         key:bytes value:bytes
//!  13 GetDel         key:bytes
//!  14 SetNx          key:bytes value:bytes
//!  15 MSetNx         pairs:list<(key:bytes value:bytes)>
//!  16 DeleteMany     keys:list<bytes>
//!  17 Count          (no fields)
//!  18 Pipeline       commands:list<CommandBody> (at least one; none may be a Pipeline)
//! ```
//! Primitives are described in the `codec` module. Tags are never reused: a retired command
//! keeps its number so old log entries still decode to the same thing.

use bytes::Bytes;

use crate::codec::{DecodeError, Reader, Sink};

/// Version byte that starts every [`Request`] and standalone [`Command`] encoding. Bump it
/// (and keep decoding the old one) when a field changes meaning.
pub const CODEC_VERSION: u8 = 1;

/// A client's identity for exactly-once sessions. `ClientId(0)` is reserved for
/// "no session" and may only be used for read-only commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ClientId(pub u64);

impl ClientId {
    /// The reserved "no session" id.
    pub const NONE: ClientId = ClientId(0);
}

/// A client's per-request sequence number. Starts at 1 and increases by at least one for
/// every new request; a retry reuses the number of the request it retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Sequence(pub u64);

/// Options of [`Command::Put`], mirroring Redis `SET ... [NX|XX] [GET]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PutOptions {
    /// `NX`: write only if the key is absent.
    pub if_absent: bool,
    /// `XX`: write only if the key is present.
    pub if_present: bool,
    /// `GET`: return the value the key held before (whether or not the write happened).
    pub return_previous: bool,
}

impl PutOptions {
    const IF_ABSENT: u8 = 1;
    const IF_PRESENT: u8 = 1 << 1;
    const RETURN_PREVIOUS: u8 = 1 << 2;

    fn to_flags(self) -> u8 {
        let mut flags = 0;
        if self.if_absent {
            flags |= Self::IF_ABSENT;
        }
        if self.if_present {
            flags |= Self::IF_PRESENT;
        }
        if self.return_previous {
            flags |= Self::RETURN_PREVIOUS;
        }
        flags
    }

    fn from_flags(flags: u8) -> Result<Self, DecodeError> {
        if flags & !(Self::IF_ABSENT | Self::IF_PRESENT | Self::RETURN_PREVIOUS) != 0 {
            return Err(DecodeError::Invalid {
                what: "put flags",
                reason: "unknown flag bits set",
            });
        }
        Ok(PutOptions {
            if_absent: flags & Self::IF_ABSENT != 0,
            if_present: flags & Self::IF_PRESENT != 0,
            return_previous: flags & Self::RETURN_PREVIOUS != 0,
        })
    }
}

/// One operation on the region's keys. Each variant is applied atomically; the matching
/// [`crate::Response`] variant is documented on each.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Read one key. → `Response::Value`.
    Get { key: Bytes },
    /// Write one key, optionally conditional (NX/XX) and returning the old value (GET).
    /// → `Response::Put { written, previous }`; `previous` is only filled when
    /// `options.return_previous` is set. `if_absent && if_present` is `ConflictingOptions`.
    Put {
        key: Bytes,
        value: Bytes,
        options: PutOptions,
    },
    /// Remove one key. → `Response::Deleted(existed)`.
    Delete { key: Bytes },
    /// Append to the value (an absent key counts as empty). → `Response::Length(new_len)`.
    Append { key: Bytes, value: Bytes },
    /// Write `new` only if the current value equals `expected` (`None` = key must be absent).
    /// → `Response::Cas { swapped, previous }`.
    CompareAndSwap {
        key: Bytes,
        expected: Option<Bytes>,
        new: Bytes,
    },
    /// Up to `limit` pairs with `start <= key < end`, in key order. `start` must lie in the
    /// region; `end` is clamped to the region's end (`None` = to the end of the region).
    /// → `Response::Scan { pairs, more }`.
    Scan {
        start: Bytes,
        end: Option<Bytes>,
        limit: u32,
    },
    /// Read several keys. → `Response::Values` in the same order.
    BatchGet { keys: Vec<Bytes> },
    /// Write several keys atomically (Redis `MSET`; a repeated key: the last pair wins).
    /// → `Response::Done`.
    BatchPut { pairs: Vec<(Bytes, Bytes)> },
    /// Redis `INCRBY`: the value (absent = 0) must be a canonical decimal i64; overflow is an
    /// error. → `Response::Integer(new_value)`.
    Incr { key: Bytes, delta: i64 },
    /// Redis `INCRBYFLOAT`, with `delta` carried as IEEE-754 bits so the encoding is exact.
    /// → `Response::Value(Some(new_value_as_stored))`.
    IncrByFloat { key: Bytes, delta_bits: u64 },
    /// Redis `SETRANGE`: overwrite from `offset`, zero-padding as needed.
    /// → `Response::Length(new_len)`.
    SetRange {
        key: Bytes,
        offset: u64,
        value: Bytes,
    },
    /// Redis `GETSET` (`SET k v GET`). → `Response::Value(previous)`.
    GetSet { key: Bytes, value: Bytes },
    /// Redis `GETDEL`. → `Response::Value(previous)`.
    GetDel { key: Bytes },
    /// Redis `SETNX`. → `Response::Written(written)`.
    SetNx { key: Bytes, value: Bytes },
    /// Redis `MSETNX`: writes all pairs only if none of the keys exists.
    /// → `Response::Written(written)`.
    MSetNx { pairs: Vec<(Bytes, Bytes)> },
    /// Redis multi-key `DEL`/`UNLINK`: removes every listed key in one atomic step (a repeated
    /// key counts once). → `Response::Integer(number_of_keys_that_existed)`.
    DeleteMany { keys: Vec<Bytes> },
    /// Number of keys in the region (Redis `DBSIZE` sums it over regions). Read-only.
    /// → `Response::Integer(count)`.
    Count,
    /// Several commands of one client applied in order as one log entry (or, when all are
    /// read-only, served as one read), each with its own result: a failing command changes
    /// nothing and the next one still runs, as in a Redis pipeline (this is not MULTI: the
    /// commands are not all-or-nothing). The Redis front end turns a pipeline's commands for
    /// one region into one of these. At least one command, none of them a `Pipeline`.
    /// → `Response::Pipeline` with one result per command, in order.
    Pipeline { commands: Vec<Command> },
}

// Tags: see the module docs. Never renumber.
const TAG_GET: u8 = 1;
const TAG_PUT: u8 = 2;
const TAG_DELETE: u8 = 3;
const TAG_APPEND: u8 = 4;
const TAG_CAS: u8 = 5;
const TAG_SCAN: u8 = 6;
const TAG_BATCH_GET: u8 = 7;
const TAG_BATCH_PUT: u8 = 8;
const TAG_INCR: u8 = 9;
const TAG_INCR_BY_FLOAT: u8 = 10;
const TAG_SET_RANGE: u8 = 11;
const TAG_GET_SET: u8 = 12;
const TAG_GET_DEL: u8 = 13;
const TAG_SET_NX: u8 = 14;
const TAG_MSET_NX: u8 = 15;
const TAG_DELETE_MANY: u8 = 16;
const TAG_COUNT: u8 = 17;
const TAG_PIPELINE: u8 = 18;

/// Smallest encoding of one `bytes` field (an empty one: its length byte).
const MIN_BYTES_FIELD: u64 = 1;

impl Command {
    /// True for commands that never change state; only these may be sent with
    /// [`ClientId::NONE`] or served by [`crate::KvStateMachine::read`].
    pub fn is_read_only(&self) -> bool {
        match self {
            Command::Get { .. }
            | Command::Scan { .. }
            | Command::BatchGet { .. }
            | Command::Count => true,
            Command::Pipeline { commands } => commands.iter().all(Command::is_read_only),
            _ => false,
        }
    }

    /// Every key the command names, in order (`Scan`: its start; `Count`: none). Routing and
    /// front-end validation use this; the state machine checks the same keys again.
    pub fn keys(&self) -> Vec<&Bytes> {
        match self {
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
            | Command::SetNx { key, .. } => vec![key],
            Command::Scan { start, .. } => vec![start],
            Command::BatchGet { keys } | Command::DeleteMany { keys } => keys.iter().collect(),
            Command::BatchPut { pairs } | Command::MSetNx { pairs } => {
                pairs.iter().map(|(key, _)| key).collect()
            }
            Command::Count => vec![],
            Command::Pipeline { commands } => commands.iter().flat_map(Command::keys).collect(),
        }
    }

    /// Every value the command would write (the CAS expected value included), for front-end
    /// size checks.
    pub fn values(&self) -> Vec<&Bytes> {
        match self {
            Command::Put { value, .. }
            | Command::Append { value, .. }
            | Command::SetRange { value, .. }
            | Command::GetSet { value, .. }
            | Command::SetNx { value, .. } => vec![value],
            Command::CompareAndSwap { expected, new, .. } => {
                expected.iter().chain(std::iter::once(new)).collect()
            }
            Command::BatchPut { pairs } | Command::MSetNx { pairs } => {
                pairs.iter().map(|(_, value)| value).collect()
            }
            Command::Pipeline { commands } => commands.iter().flat_map(Command::values).collect(),
            _ => vec![],
        }
    }

    /// Encodes the command on its own (version byte + body).
    pub fn encode(&self) -> Bytes {
        let mut buf = Vec::with_capacity(16 + self.approximate_payload_len());
        buf.put_u8(CODEC_VERSION);
        self.encode_body(&mut buf);
        Bytes::from(buf)
    }

    /// Decodes [`Command::encode`]'s output. Never panics, whatever the input.
    pub fn decode(input: &[u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(input);
        check_version(&mut reader)?;
        let command = Self::decode_body(&mut reader)?;
        reader.finish()?;
        Ok(command)
    }

    fn approximate_payload_len(&self) -> usize {
        match self {
            Command::Get { key } | Command::Delete { key } | Command::GetDel { key } => key.len(),
            Command::Put { key, value, .. }
            | Command::Append { key, value }
            | Command::SetRange { key, value, .. }
            | Command::GetSet { key, value }
            | Command::SetNx { key, value } => key.len() + value.len(),
            Command::CompareAndSwap { key, expected, new } => {
                key.len() + expected.as_ref().map_or(0, Bytes::len) + new.len()
            }
            Command::Scan { start, end, .. } => start.len() + end.as_ref().map_or(0, Bytes::len),
            Command::BatchGet { keys } | Command::DeleteMany { keys } => {
                keys.iter().map(|k| k.len() + 2).sum()
            }
            Command::Count => 0,
            Command::BatchPut { pairs } | Command::MSetNx { pairs } => {
                pairs.iter().map(|(k, v)| k.len() + v.len() + 4).sum()
            }
            Command::Incr { key, .. } | Command::IncrByFloat { key, .. } => key.len() + 10,
            Command::Pipeline { commands } => commands
                .iter()
                .map(|c| c.approximate_payload_len() + 4)
                .sum(),
        }
    }

    pub(crate) fn encode_body<S: Sink>(&self, out: &mut S) {
        match self {
            Command::Get { key } => {
                out.put_u8(TAG_GET);
                out.put_bytes(key);
            }
            Command::Put {
                key,
                value,
                options,
            } => {
                out.put_u8(TAG_PUT);
                out.put_bytes(key);
                out.put_bytes(value);
                out.put_u8(options.to_flags());
            }
            Command::Delete { key } => {
                out.put_u8(TAG_DELETE);
                out.put_bytes(key);
            }
            Command::Append { key, value } => {
                out.put_u8(TAG_APPEND);
                out.put_bytes(key);
                out.put_bytes(value);
            }
            Command::CompareAndSwap { key, expected, new } => {
                out.put_u8(TAG_CAS);
                out.put_bytes(key);
                out.put_opt_bytes(expected.as_ref());
                out.put_bytes(new);
            }
            Command::Scan { start, end, limit } => {
                out.put_u8(TAG_SCAN);
                out.put_bytes(start);
                out.put_opt_bytes(end.as_ref());
                out.put_varint(u64::from(*limit));
            }
            Command::BatchGet { keys } => {
                out.put_u8(TAG_BATCH_GET);
                out.put_varint(keys.len() as u64);
                for key in keys {
                    out.put_bytes(key);
                }
            }
            Command::BatchPut { pairs } => {
                out.put_u8(TAG_BATCH_PUT);
                encode_pairs(out, pairs);
            }
            Command::Incr { key, delta } => {
                out.put_u8(TAG_INCR);
                out.put_bytes(key);
                out.put_i64(*delta);
            }
            Command::IncrByFloat { key, delta_bits } => {
                out.put_u8(TAG_INCR_BY_FLOAT);
                out.put_bytes(key);
                out.put_u64_fixed(*delta_bits);
            }
            Command::SetRange { key, offset, value } => {
                out.put_u8(TAG_SET_RANGE);
                out.put_bytes(key);
                out.put_varint(*offset);
                out.put_bytes(value);
            }
            Command::GetSet { key, value } => {
                out.put_u8(TAG_GET_SET);
                out.put_bytes(key);
                out.put_bytes(value);
            }
            Command::GetDel { key } => {
                out.put_u8(TAG_GET_DEL);
                out.put_bytes(key);
            }
            Command::SetNx { key, value } => {
                out.put_u8(TAG_SET_NX);
                out.put_bytes(key);
                out.put_bytes(value);
            }
            Command::MSetNx { pairs } => {
                out.put_u8(TAG_MSET_NX);
                encode_pairs(out, pairs);
            }
            Command::DeleteMany { keys } => {
                out.put_u8(TAG_DELETE_MANY);
                out.put_varint(keys.len() as u64);
                for key in keys {
                    out.put_bytes(key);
                }
            }
            Command::Count => out.put_u8(TAG_COUNT),
            Command::Pipeline { commands } => {
                out.put_u8(TAG_PIPELINE);
                out.put_varint(commands.len() as u64);
                for command in commands {
                    command.encode_body(out);
                }
            }
        }
    }

    pub(crate) fn decode_body(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Self::decode_body_in(reader, false)
    }

    /// `in_pipeline`: a command inside a pipeline, which may not be a pipeline itself. Checked
    /// on the tag, before decoding further, so a crafted input cannot recurse deeply.
    fn decode_body_in(reader: &mut Reader<'_>, in_pipeline: bool) -> Result<Self, DecodeError> {
        let tag = reader.u8("command tag")?;
        let command = match tag {
            TAG_GET => Command::Get {
                key: reader.bytes("key")?,
            },
            TAG_PUT => Command::Put {
                key: reader.bytes("key")?,
                value: reader.bytes("value")?,
                options: PutOptions::from_flags(reader.u8("put flags")?)?,
            },
            TAG_DELETE => Command::Delete {
                key: reader.bytes("key")?,
            },
            TAG_APPEND => Command::Append {
                key: reader.bytes("key")?,
                value: reader.bytes("value")?,
            },
            TAG_CAS => Command::CompareAndSwap {
                key: reader.bytes("key")?,
                expected: reader.opt_bytes("expected value")?,
                new: reader.bytes("new value")?,
            },
            TAG_SCAN => Command::Scan {
                start: reader.bytes("scan start")?,
                end: reader.opt_bytes("scan end")?,
                limit: u32::try_from(reader.varint("scan limit")?).map_err(|_| {
                    DecodeError::Invalid {
                        what: "scan limit",
                        reason: "exceeds u32",
                    }
                })?,
            },
            TAG_BATCH_GET => {
                let count = reader.count("batch keys", MIN_BYTES_FIELD)?;
                let mut keys = Vec::with_capacity(count);
                for _ in 0..count {
                    keys.push(reader.bytes("key")?);
                }
                Command::BatchGet { keys }
            }
            TAG_BATCH_PUT => Command::BatchPut {
                pairs: decode_pairs(reader)?,
            },
            TAG_INCR => Command::Incr {
                key: reader.bytes("key")?,
                delta: reader.i64("delta")?,
            },
            TAG_INCR_BY_FLOAT => Command::IncrByFloat {
                key: reader.bytes("key")?,
                delta_bits: reader.u64_fixed("float delta")?,
            },
            TAG_SET_RANGE => Command::SetRange {
                key: reader.bytes("key")?,
                offset: reader.varint("offset")?,
                value: reader.bytes("value")?,
            },
            TAG_GET_SET => Command::GetSet {
                key: reader.bytes("key")?,
                value: reader.bytes("value")?,
            },
            TAG_GET_DEL => Command::GetDel {
                key: reader.bytes("key")?,
            },
            TAG_SET_NX => Command::SetNx {
                key: reader.bytes("key")?,
                value: reader.bytes("value")?,
            },
            TAG_MSET_NX => Command::MSetNx {
                pairs: decode_pairs(reader)?,
            },
            TAG_DELETE_MANY => {
                let count = reader.count("delete keys", MIN_BYTES_FIELD)?;
                let mut keys = Vec::with_capacity(count);
                for _ in 0..count {
                    keys.push(reader.bytes("key")?);
                }
                Command::DeleteMany { keys }
            }
            TAG_COUNT => Command::Count,
            TAG_PIPELINE if in_pipeline => {
                return Err(DecodeError::NestedPipeline { what: "pipeline" })
            }
            TAG_PIPELINE => {
                // Smallest command body: its tag byte (Count).
                let count = reader.count("pipeline commands", 1)?;
                if count == 0 {
                    return Err(DecodeError::Invalid {
                        what: "pipeline",
                        reason: "holds no command",
                    });
                }
                let mut commands = Vec::with_capacity(count);
                for _ in 0..count {
                    commands.push(Self::decode_body_in(reader, true)?);
                }
                Command::Pipeline { commands }
            }
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "command",
                    tag,
                })
            }
        };
        Ok(command)
    }
}

fn encode_pairs<S: Sink>(out: &mut S, pairs: &[(Bytes, Bytes)]) {
    out.put_varint(pairs.len() as u64);
    for (key, value) in pairs {
        out.put_bytes(key);
        out.put_bytes(value);
    }
}

pub(crate) fn decode_pairs(reader: &mut Reader<'_>) -> Result<Vec<(Bytes, Bytes)>, DecodeError> {
    let count = reader.count("pairs", 2 * MIN_BYTES_FIELD)?;
    let mut pairs = Vec::with_capacity(count);
    for _ in 0..count {
        let key = reader.bytes("key")?;
        let value = reader.bytes("value")?;
        pairs.push((key, value));
    }
    Ok(pairs)
}

fn check_version(reader: &mut Reader<'_>) -> Result<(), DecodeError> {
    let found = reader.u8("codec version")?;
    if found != CODEC_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            found,
            supported: CODEC_VERSION,
        });
    }
    Ok(())
}

/// A client proposal: the payload of one Raft entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Session owner; [`ClientId::NONE`] only for read-only commands.
    pub client_id: ClientId,
    /// Position in the client's request stream (see [`Sequence`]).
    pub sequence: Sequence,
    /// What to do.
    pub command: Command,
    /// The leader's wall clock when it proposed the entry. It travels in the log so every
    /// replica expires sessions at the same entry, whatever its own clock says.
    pub proposed_at_ms: u64,
}

impl Request {
    /// Encodes the request as a Raft entry payload.
    pub fn encode(&self) -> Bytes {
        let mut buf = Vec::with_capacity(32 + self.command.approximate_payload_len());
        buf.put_u8(CODEC_VERSION);
        buf.put_varint(self.client_id.0);
        buf.put_varint(self.sequence.0);
        buf.put_varint(self.proposed_at_ms);
        self.command.encode_body(&mut buf);
        Bytes::from(buf)
    }

    /// Decodes a Raft entry payload. Never panics, whatever the input.
    pub fn decode(input: &[u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(input);
        check_version(&mut reader)?;
        let client_id = ClientId(reader.varint("client id")?);
        let sequence = Sequence(reader.varint("sequence")?);
        let proposed_at_ms = reader.varint("proposed_at_ms")?;
        let command = Command::decode_body(&mut reader)?;
        reader.finish()?;
        Ok(Request {
            client_id,
            sequence,
            command,
            proposed_at_ms,
        })
    }
}
