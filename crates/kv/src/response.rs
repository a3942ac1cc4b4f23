//! What applying a command returns: [`Response`] on success, [`CommandError`] when the
//! command is refused, [`ApplyError`] when the request around it is refused, and
//! [`ApplyOutcome`] for one applied log entry.
//!
//! Responses and command errors are also cached in the session table and therefore written
//! into snapshots; their encoding lives here (`encode_result` / `decode_result`).
//!
//! # Encoding
//! ```text
//! Result   := 0 Response | 1 Error
//! Response := tag:u8 fields...
//!   0 Done   1 Value option<bytes>   2 Values list<option<bytes>>
//!   3 Scan list<(key:bytes value:bytes)> more:bool   4 Deleted bool   5 Length varint
//!   6 Integer zigzag-varint   7 Cas swapped:bool previous:option<bytes>
//!   8 Put written:bool previous:option<bytes>   9 Written bool
//!  10 Pipeline list<Result> (no Pipeline result inside)
//!  11 Pairs list<(field:bytes value:bytes)>
//!  12 HScan list<(field:bytes value:bytes)> more:bool
//!  13 Keys list<(key:bytes type:u8 (1 string, 2 hash))> more:bool
//!  14 KeyInfo present:bool [type:u8 has_deadline:bool [deadline:varint] len:varint
//!             memory_bytes:varint is_integer:bool] version:varint now_ms:varint
//!  15 Exec applied:bool [list<Result>] (no Pipeline or Exec result inside)
//! Error := tag:u8 fields...
//!   0 KeyTooLarge size max   1 ValueTooLarge size max   2 BatchTooLarge size max
//!   3 ScanLimitTooLarge limit max   4 OutOfRange key:bytes   5 NotAnInteger   6 NotAFloat
//!   7 Overflow   8 NotFinite   9 ConflictingOptions   10 NotReadOnly
//!  11 ResultNotKept size   12 WrongType   13 NoSuchKey   14 HashValueNotAnInteger
//!  15 HashValueNotAFloat   16 InvalidExpireTime
//! ```
//! Tags are never renumbered: snapshots hold cached results.

use bytes::Bytes;
use thiserror::Error;

use crate::codec::{DecodeError, Reader, Sink};
use crate::command::{decode_key_type, decode_pairs, encode_key_type, ClientId, Sequence};
use crate::table::KeyType;

/// What [`crate::Command::Inspect`] tells about a present key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub key_type: KeyType,
    /// The key's deadline (log time, ms since the Unix epoch), if it has one.
    pub expires_at_ms: Option<u64>,
    /// String: value length in bytes. Hash: number of fields.
    pub len: u64,
    /// Approximate bytes this key costs (key + value/fields + per-entry overhead).
    pub memory_bytes: u64,
    /// The string value is a canonical i64 (Redis `OBJECT ENCODING` "int").
    pub is_integer: bool,
}

/// The successful result of a command. Which command yields which variant is documented on
/// [`crate::Command`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The command succeeded and has nothing to return (`BatchPut`).
    Done,
    /// One value or its absence (`Get`, `GetSet`, `GetDel`, `IncrByFloat`, `GetEx`,
    /// `HIncrByFloat`).
    Value(Option<Bytes>),
    /// One entry per requested key or field, in request order (`BatchGet`, `HGet`).
    Values(Vec<Option<Bytes>>),
    /// `Scan`: the pairs in key order; `more` is true when `limit` stopped the scan before
    /// the end of the (clamped) range, so the caller should continue after the last key.
    Scan {
        pairs: Vec<(Bytes, Bytes)>,
        more: bool,
    },
    /// `Delete`: whether the key existed.
    Deleted(bool),
    /// The value's length after the command (`Append`, `SetRange`), as Redis returns it.
    Length(u64),
    /// `Incr`, `HIncrBy`: the new value. Also the counts and 0/1 answers of `DeleteMany`,
    /// `Count`, `Expire`, `Persist`, `DelIfEq`, `PurgeExpired`, `HSet`, `HDel`, `Rename`,
    /// `Copy`.
    Integer(i64),
    /// `CompareAndSwap`: whether the swap happened, and the value before the command (on
    /// failure this tells the caller what it raced with).
    Cas {
        swapped: bool,
        previous: Option<Bytes>,
    },
    /// `Put`: whether the value was written (false only when NX/XX prevented it), and the
    /// previous value if `return_previous` was requested (otherwise always `None`).
    Put {
        written: bool,
        previous: Option<Bytes>,
    },
    /// `SetNx`, `MSetNx`: whether the write happened.
    Written(bool),
    /// `Pipeline`: each command's own result, in the order of the commands.
    Pipeline(Vec<Result<Response, CommandError>>),
    /// `HGetAll`: field/value pairs in field order.
    Pairs(Vec<(Bytes, Bytes)>),
    /// `HScan`: one page of fields in order; `more` when fields remain after the last one.
    HScan {
        pairs: Vec<(Bytes, Bytes)>,
        more: bool,
    },
    /// `ScanKeys`: keys in order with their types; `more` as `Scan`'s.
    Keys {
        keys: Vec<(Bytes, KeyType)>,
        more: bool,
    },
    /// `Inspect`: the key's info (`None` if absent), its WATCH `version` (the log index of
    /// the entry that last changed it; for an absent key, the region's `deleted_version`,
    /// the index of the last entry that deleted or expired any key of the region, 0 if
    /// none), and `now_ms`, the time the read was judged at. After a split or merge,
    /// versions continue from the largest the region held (see
    /// [`crate::KvStateMachine::version_now`]) rather than equal the new log's index; only
    /// equality matters to a watch.
    KeyInfo {
        info: Option<KeyInfo>,
        version: u64,
        now_ms: u64,
    },
    /// `Exec`: `None` when a watch failed (nothing applied), else each command's result.
    Exec(Option<Vec<Result<Response, CommandError>>>),
}

/// Why a command was refused. A refused command changes no key. These errors are
/// deterministic (they depend only on the command and the state), so they are cached in the
/// client's session like any response, except `OutOfRange` (see [`crate::KvStateMachine`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CommandError {
    #[error("key of {size} bytes exceeds the limit of {max} bytes")]
    KeyTooLarge { size: u64, max: u64 },
    #[error("value of {size} bytes exceeds the limit of {max} bytes")]
    ValueTooLarge { size: u64, max: u64 },
    #[error("batch of {size} keys exceeds the limit of {max}; split it into smaller batches")]
    BatchTooLarge { size: u64, max: u64 },
    #[error("scan limit {limit} exceeds the maximum of {max}; page through with smaller limits")]
    ScanLimitTooLarge { limit: u64, max: u64 },
    /// The key is not in this region: the client's routing is stale. Refresh the route and
    /// retry with the same sequence number.
    #[error("key {key:?} is outside this region; refresh the routing table and retry")]
    OutOfRange { key: Bytes },
    /// Redis: "value is not an integer or out of range".
    #[error("value is not an integer or out of range")]
    NotAnInteger,
    /// Redis: "value is not a valid float".
    #[error("value is not a valid float")]
    NotAFloat,
    /// Redis: "increment or decrement would overflow".
    #[error("increment or decrement would overflow")]
    Overflow,
    /// Redis: "increment would produce NaN or Infinity".
    #[error("increment would produce NaN or Infinity")]
    NotFinite,
    /// `Put` with both `if_absent` (NX) and `if_present` (XX). Also: an `HSet` with no field
    /// or an HSETNX with other than one field, and an `Exec` holding a `Pipeline` or `Exec`
    /// (shapes the front end never sends and the codec cannot carry).
    #[error("if_absent (NX) and if_present (XX) are mutually exclusive")]
    ConflictingOptions,
    /// A write was passed to [`crate::KvStateMachine::read`]; writes must go through the log.
    #[error("command is not read-only; propose it through Raft instead")]
    NotReadOnly,
    /// The answer to a retried `Pipeline`: it was applied (once), but its answer was larger
    /// than [`crate::MAX_KEPT_PIPELINE_RESULT_BYTES`] and so was not kept in the session.
    #[error(
        "the pipeline was applied, but its answer ({size} bytes) was too large to keep for a retry"
    )]
    ResultNotKept { size: u64 },
    /// Redis WRONGTYPE: a string command on a hash or a hash command on a string.
    #[error("Operation against a key holding the wrong kind of value")]
    WrongType,
    /// `Rename` of an absent key.
    #[error("no such key")]
    NoSuchKey,
    /// `HIncrBy` on a field that is not a canonical i64.
    #[error("hash value is not an integer")]
    HashValueNotAnInteger,
    /// `HIncrByFloat` on a field that is not a finite float.
    #[error("hash value is not a float")]
    HashValueNotAFloat,
    /// `Put` or `GetEx` with a relative expiry of 0 ms (Redis refuses `EX 0` / `PX 0`); the
    /// front end picks the exact text.
    #[error("invalid expire time")]
    InvalidExpireTime,
}

/// Why an applied entry produced no command result.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ApplyError {
    /// The command itself was refused (no key changed).
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The entry payload is not a valid [`crate::Request`]. Nothing changed but the applied
    /// index: a bad entry must not stop the replica.
    #[error("malformed entry payload: {0}")]
    Malformed(#[from] DecodeError),
    /// The client already sent a newer request; the reply to this one is gone.
    #[error("stale request from client {client_id:?}: sequence {sequence:?} is older than the last applied {last_applied:?}")]
    SessionStale {
        client_id: ClientId,
        sequence: Sequence,
        last_applied: Sequence,
    },
    /// Sequence numbers start at 1.
    #[error("sequence 0 is invalid for client {client_id:?}; sequences start at 1")]
    InvalidSequence { client_id: ClientId },
    /// A write was sent with `ClientId::NONE`: writes must carry a session so a retry cannot
    /// apply twice.
    #[error("writes require a client session (client id 0 is for reads only)")]
    SessionRequired,
}

/// The result of applying one log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// The log index that was applied.
    pub index: u64,
    /// Who proposed the entry, if the payload decoded.
    pub client: Option<(ClientId, Sequence)>,
    /// The reply to hand back to the waiting client.
    pub result: Result<Response, ApplyError>,
    /// True when `result` came from the session cache: the entry was a retry of an
    /// already-applied request and was not applied again.
    pub duplicate: bool,
}

// Result tags.
const RESULT_OK: u8 = 0;
const RESULT_ERR: u8 = 1;

// Response tags. Never renumber: snapshots store them.
const RESPONSE_DONE: u8 = 0;
const RESPONSE_VALUE: u8 = 1;
const RESPONSE_VALUES: u8 = 2;
const RESPONSE_SCAN: u8 = 3;
const RESPONSE_DELETED: u8 = 4;
const RESPONSE_LENGTH: u8 = 5;
const RESPONSE_INTEGER: u8 = 6;
const RESPONSE_CAS: u8 = 7;
const RESPONSE_PUT: u8 = 8;
const RESPONSE_WRITTEN: u8 = 9;
const RESPONSE_PIPELINE: u8 = 10;
const RESPONSE_PAIRS: u8 = 11;
const RESPONSE_HSCAN: u8 = 12;
const RESPONSE_KEYS: u8 = 13;
const RESPONSE_KEY_INFO: u8 = 14;
const RESPONSE_EXEC: u8 = 15;

// CommandError tags. Never renumber: snapshots store them.
const ERROR_KEY_TOO_LARGE: u8 = 0;
const ERROR_VALUE_TOO_LARGE: u8 = 1;
const ERROR_BATCH_TOO_LARGE: u8 = 2;
const ERROR_SCAN_LIMIT_TOO_LARGE: u8 = 3;
const ERROR_OUT_OF_RANGE: u8 = 4;
const ERROR_NOT_AN_INTEGER: u8 = 5;
const ERROR_NOT_A_FLOAT: u8 = 6;
const ERROR_OVERFLOW: u8 = 7;
const ERROR_NOT_FINITE: u8 = 8;
const ERROR_CONFLICTING_OPTIONS: u8 = 9;
const ERROR_NOT_READ_ONLY: u8 = 10;
const ERROR_RESULT_NOT_KEPT: u8 = 11;
const ERROR_WRONG_TYPE: u8 = 12;
const ERROR_NO_SUCH_KEY: u8 = 13;
const ERROR_HASH_VALUE_NOT_AN_INTEGER: u8 = 14;
const ERROR_HASH_VALUE_NOT_A_FLOAT: u8 = 15;
const ERROR_INVALID_EXPIRE_TIME: u8 = 16;

/// Where a result is being decoded: nesting is bounded (Pipeline > Exec > result), as for
/// commands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Nesting {
    Top,
    InPipeline,
    InExec,
}

/// Encodes a command's result on its own (version byte + result), for carrying it between
/// servers (a forwarded request's answer). Inverse: [`decode_command_result`].
pub fn encode_command_result(result: &Result<Response, CommandError>) -> Bytes {
    let mut buf = Vec::with_capacity(32);
    buf.put_u8(crate::CODEC_VERSION);
    encode_result(&mut buf, result);
    Bytes::from(buf)
}

/// Decodes [`encode_command_result`]'s output. Never panics, whatever the input.
pub fn decode_command_result(input: &[u8]) -> Result<Result<Response, CommandError>, DecodeError> {
    let mut reader = Reader::new(input);
    let found = reader.u8("codec version")?;
    if found != crate::CODEC_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            found,
            supported: crate::CODEC_VERSION,
        });
    }
    let result = decode_result(&mut reader)?;
    reader.finish()?;
    Ok(result)
}

pub(crate) fn encode_result<S: Sink>(out: &mut S, result: &Result<Response, CommandError>) {
    match result {
        Ok(response) => {
            out.put_u8(RESULT_OK);
            encode_response(out, response);
        }
        Err(error) => {
            out.put_u8(RESULT_ERR);
            encode_error(out, error);
        }
    }
}

pub(crate) fn decode_result(
    reader: &mut Reader<'_>,
) -> Result<Result<Response, CommandError>, DecodeError> {
    decode_result_in(reader, Nesting::Top)
}

/// `nesting`: one of a pipeline's results may not be a pipeline's; one of an Exec's may be
/// neither a pipeline's nor an Exec's.
fn decode_result_in(
    reader: &mut Reader<'_>,
    nesting: Nesting,
) -> Result<Result<Response, CommandError>, DecodeError> {
    match reader.u8("result tag")? {
        RESULT_OK => Ok(Ok(decode_response_in(reader, nesting)?)),
        RESULT_ERR => Ok(Err(decode_error(reader)?)),
        tag => Err(DecodeError::UnknownTag {
            what: "result",
            tag,
        }),
    }
}

fn encode_response<S: Sink>(out: &mut S, response: &Response) {
    match response {
        Response::Done => out.put_u8(RESPONSE_DONE),
        Response::Value(value) => {
            out.put_u8(RESPONSE_VALUE);
            out.put_opt_bytes(value.as_ref());
        }
        Response::Values(values) => {
            out.put_u8(RESPONSE_VALUES);
            out.put_varint(values.len() as u64);
            for value in values {
                out.put_opt_bytes(value.as_ref());
            }
        }
        Response::Scan { pairs, more } => {
            out.put_u8(RESPONSE_SCAN);
            out.put_varint(pairs.len() as u64);
            for (key, value) in pairs {
                out.put_bytes(key);
                out.put_bytes(value);
            }
            out.put_bool(*more);
        }
        Response::Deleted(existed) => {
            out.put_u8(RESPONSE_DELETED);
            out.put_bool(*existed);
        }
        Response::Length(length) => {
            out.put_u8(RESPONSE_LENGTH);
            out.put_varint(*length);
        }
        Response::Integer(value) => {
            out.put_u8(RESPONSE_INTEGER);
            out.put_i64(*value);
        }
        Response::Cas { swapped, previous } => {
            out.put_u8(RESPONSE_CAS);
            out.put_bool(*swapped);
            out.put_opt_bytes(previous.as_ref());
        }
        Response::Put { written, previous } => {
            out.put_u8(RESPONSE_PUT);
            out.put_bool(*written);
            out.put_opt_bytes(previous.as_ref());
        }
        Response::Written(written) => {
            out.put_u8(RESPONSE_WRITTEN);
            out.put_bool(*written);
        }
        Response::Pipeline(results) => {
            out.put_u8(RESPONSE_PIPELINE);
            out.put_varint(results.len() as u64);
            for result in results {
                encode_result(out, result);
            }
        }
        Response::Pairs(pairs) => {
            out.put_u8(RESPONSE_PAIRS);
            encode_pairs(out, pairs);
        }
        Response::HScan { pairs, more } => {
            out.put_u8(RESPONSE_HSCAN);
            encode_pairs(out, pairs);
            out.put_bool(*more);
        }
        Response::Keys { keys, more } => {
            out.put_u8(RESPONSE_KEYS);
            out.put_varint(keys.len() as u64);
            for (key, key_type) in keys {
                out.put_bytes(key);
                out.put_u8(encode_key_type(*key_type));
            }
            out.put_bool(*more);
        }
        Response::KeyInfo {
            info,
            version,
            now_ms,
        } => {
            out.put_u8(RESPONSE_KEY_INFO);
            match info {
                None => out.put_u8(0),
                Some(info) => {
                    out.put_u8(1);
                    out.put_u8(encode_key_type(info.key_type));
                    match info.expires_at_ms {
                        None => out.put_u8(0),
                        Some(ms) => {
                            out.put_u8(1);
                            out.put_varint(ms);
                        }
                    }
                    out.put_varint(info.len);
                    out.put_varint(info.memory_bytes);
                    out.put_bool(info.is_integer);
                }
            }
            out.put_varint(*version);
            out.put_varint(*now_ms);
        }
        Response::Exec(results) => {
            out.put_u8(RESPONSE_EXEC);
            match results {
                None => out.put_u8(0),
                Some(results) => {
                    out.put_u8(1);
                    out.put_varint(results.len() as u64);
                    for result in results {
                        encode_result(out, result);
                    }
                }
            }
        }
    }
}

fn encode_pairs<S: Sink>(out: &mut S, pairs: &[(Bytes, Bytes)]) {
    out.put_varint(pairs.len() as u64);
    for (key, value) in pairs {
        out.put_bytes(key);
        out.put_bytes(value);
    }
}

/// `nesting`: see [`Nesting`] (checked on the tag, so a crafted input cannot recurse deeply).
fn decode_response_in(reader: &mut Reader<'_>, nesting: Nesting) -> Result<Response, DecodeError> {
    let response = match reader.u8("response tag")? {
        RESPONSE_DONE => Response::Done,
        RESPONSE_VALUE => Response::Value(reader.opt_bytes("value")?),
        RESPONSE_VALUES => {
            // Smallest item: an absent option, one byte.
            let count = reader.count("values", 1)?;
            let mut values = Vec::with_capacity(count);
            for _ in 0..count {
                values.push(reader.opt_bytes("value")?);
            }
            Response::Values(values)
        }
        RESPONSE_SCAN => {
            let pairs = decode_pairs(reader)?;
            let more = reader.bool("scan more")?;
            Response::Scan { pairs, more }
        }
        RESPONSE_DELETED => Response::Deleted(reader.bool("deleted")?),
        RESPONSE_LENGTH => Response::Length(reader.varint("length")?),
        RESPONSE_INTEGER => Response::Integer(reader.i64("integer")?),
        RESPONSE_CAS => Response::Cas {
            swapped: reader.bool("swapped")?,
            previous: reader.opt_bytes("previous")?,
        },
        RESPONSE_PUT => Response::Put {
            written: reader.bool("written")?,
            previous: reader.opt_bytes("previous")?,
        },
        RESPONSE_WRITTEN => Response::Written(reader.bool("written")?),
        RESPONSE_PIPELINE if nesting != Nesting::Top => {
            return Err(DecodeError::NestedPipeline {
                what: "pipeline result",
            })
        }
        RESPONSE_EXEC if nesting == Nesting::InExec => {
            return Err(DecodeError::NestedPipeline {
                what: "exec result",
            })
        }
        RESPONSE_PIPELINE => {
            // Smallest result: its tag and a one-byte response or error.
            let count = reader.count("pipeline results", 2)?;
            let mut results = Vec::with_capacity(count);
            for _ in 0..count {
                results.push(decode_result_in(reader, Nesting::InPipeline)?);
            }
            Response::Pipeline(results)
        }
        RESPONSE_PAIRS => Response::Pairs(decode_pairs(reader)?),
        RESPONSE_HSCAN => {
            let pairs = decode_pairs(reader)?;
            let more = reader.bool("hscan more")?;
            Response::HScan { pairs, more }
        }
        RESPONSE_KEYS => {
            // Smallest item: an empty key and its type byte.
            let count = reader.count("keys", 2)?;
            let mut keys = Vec::with_capacity(count);
            for _ in 0..count {
                let key = reader.bytes("key")?;
                keys.push((key, decode_key_type(reader)?));
            }
            let more = reader.bool("keys more")?;
            Response::Keys { keys, more }
        }
        RESPONSE_KEY_INFO => {
            let info = if reader.bool("key info present")? {
                let key_type = decode_key_type(reader)?;
                let expires_at_ms = if reader.bool("key info deadline present")? {
                    Some(reader.varint("key info deadline")?)
                } else {
                    None
                };
                Some(KeyInfo {
                    key_type,
                    expires_at_ms,
                    len: reader.varint("key info len")?,
                    memory_bytes: reader.varint("key info memory")?,
                    is_integer: reader.bool("key info is_integer")?,
                })
            } else {
                None
            };
            Response::KeyInfo {
                info,
                version: reader.varint("key version")?,
                now_ms: reader.varint("key info now_ms")?,
            }
        }
        RESPONSE_EXEC => {
            if reader.bool("exec applied")? {
                let count = reader.count("exec results", 2)?;
                let mut results = Vec::with_capacity(count);
                for _ in 0..count {
                    results.push(decode_result_in(reader, Nesting::InExec)?);
                }
                Response::Exec(Some(results))
            } else {
                Response::Exec(None)
            }
        }
        tag => {
            return Err(DecodeError::UnknownTag {
                what: "response",
                tag,
            })
        }
    };
    Ok(response)
}

fn encode_error<S: Sink>(out: &mut S, error: &CommandError) {
    match error {
        CommandError::KeyTooLarge { size, max } => {
            out.put_u8(ERROR_KEY_TOO_LARGE);
            out.put_varint(*size);
            out.put_varint(*max);
        }
        CommandError::ValueTooLarge { size, max } => {
            out.put_u8(ERROR_VALUE_TOO_LARGE);
            out.put_varint(*size);
            out.put_varint(*max);
        }
        CommandError::BatchTooLarge { size, max } => {
            out.put_u8(ERROR_BATCH_TOO_LARGE);
            out.put_varint(*size);
            out.put_varint(*max);
        }
        CommandError::ScanLimitTooLarge { limit, max } => {
            out.put_u8(ERROR_SCAN_LIMIT_TOO_LARGE);
            out.put_varint(*limit);
            out.put_varint(*max);
        }
        CommandError::OutOfRange { key } => {
            out.put_u8(ERROR_OUT_OF_RANGE);
            out.put_bytes(key);
        }
        CommandError::NotAnInteger => out.put_u8(ERROR_NOT_AN_INTEGER),
        CommandError::NotAFloat => out.put_u8(ERROR_NOT_A_FLOAT),
        CommandError::Overflow => out.put_u8(ERROR_OVERFLOW),
        CommandError::NotFinite => out.put_u8(ERROR_NOT_FINITE),
        CommandError::ConflictingOptions => out.put_u8(ERROR_CONFLICTING_OPTIONS),
        CommandError::NotReadOnly => out.put_u8(ERROR_NOT_READ_ONLY),
        CommandError::ResultNotKept { size } => {
            out.put_u8(ERROR_RESULT_NOT_KEPT);
            out.put_varint(*size);
        }
        CommandError::WrongType => out.put_u8(ERROR_WRONG_TYPE),
        CommandError::NoSuchKey => out.put_u8(ERROR_NO_SUCH_KEY),
        CommandError::HashValueNotAnInteger => out.put_u8(ERROR_HASH_VALUE_NOT_AN_INTEGER),
        CommandError::HashValueNotAFloat => out.put_u8(ERROR_HASH_VALUE_NOT_A_FLOAT),
        CommandError::InvalidExpireTime => out.put_u8(ERROR_INVALID_EXPIRE_TIME),
    }
}

fn decode_error(reader: &mut Reader<'_>) -> Result<CommandError, DecodeError> {
    let error = match reader.u8("error tag")? {
        ERROR_KEY_TOO_LARGE => CommandError::KeyTooLarge {
            size: reader.varint("size")?,
            max: reader.varint("max")?,
        },
        ERROR_VALUE_TOO_LARGE => CommandError::ValueTooLarge {
            size: reader.varint("size")?,
            max: reader.varint("max")?,
        },
        ERROR_BATCH_TOO_LARGE => CommandError::BatchTooLarge {
            size: reader.varint("size")?,
            max: reader.varint("max")?,
        },
        ERROR_SCAN_LIMIT_TOO_LARGE => CommandError::ScanLimitTooLarge {
            limit: reader.varint("limit")?,
            max: reader.varint("max")?,
        },
        ERROR_OUT_OF_RANGE => CommandError::OutOfRange {
            key: reader.bytes("key")?,
        },
        ERROR_NOT_AN_INTEGER => CommandError::NotAnInteger,
        ERROR_NOT_A_FLOAT => CommandError::NotAFloat,
        ERROR_OVERFLOW => CommandError::Overflow,
        ERROR_NOT_FINITE => CommandError::NotFinite,
        ERROR_CONFLICTING_OPTIONS => CommandError::ConflictingOptions,
        ERROR_NOT_READ_ONLY => CommandError::NotReadOnly,
        ERROR_RESULT_NOT_KEPT => CommandError::ResultNotKept {
            size: reader.varint("size")?,
        },
        ERROR_WRONG_TYPE => CommandError::WrongType,
        ERROR_NO_SUCH_KEY => CommandError::NoSuchKey,
        ERROR_HASH_VALUE_NOT_AN_INTEGER => CommandError::HashValueNotAnInteger,
        ERROR_HASH_VALUE_NOT_A_FLOAT => CommandError::HashValueNotAFloat,
        ERROR_INVALID_EXPIRE_TIME => CommandError::InvalidExpireTime,
        tag => return Err(DecodeError::UnknownTag { what: "error", tag }),
    };
    Ok(error)
}
