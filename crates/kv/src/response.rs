//! What applying a command returns: [`Response`] on success, [`CommandError`] when the
//! command is refused, [`ApplyError`] when the request around it is refused, and
//! [`ApplyOutcome`] for one applied log entry.
//!
//! Responses and command errors are also cached in the session table and therefore written
//! into snapshots; their encoding lives here (`encode_result` / `decode_result`).

use bytes::Bytes;
use thiserror::Error;

use crate::codec::{DecodeError, Reader, Sink};
use crate::command::{decode_pairs, ClientId, Sequence};

/// The successful result of a command. Which command yields which variant is documented on
/// [`crate::Command`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The command succeeded and has nothing to return (`BatchPut`).
    Done,
    /// One value or its absence (`Get`, `GetSet`, `GetDel`, `IncrByFloat`).
    Value(Option<Bytes>),
    /// One entry per requested key, in request order (`BatchGet`).
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
    /// `Incr`: the new value.
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
    /// `Put` with both `if_absent` (NX) and `if_present` (XX).
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
    decode_result_in(reader, false)
}

/// `in_pipeline`: one of a pipeline's results, which may not be a pipeline's itself.
fn decode_result_in(
    reader: &mut Reader<'_>,
    in_pipeline: bool,
) -> Result<Result<Response, CommandError>, DecodeError> {
    match reader.u8("result tag")? {
        RESULT_OK => Ok(Ok(decode_response_in(reader, in_pipeline)?)),
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
    }
}

/// `in_pipeline`: a response inside a pipeline's, which may not be a pipeline's itself
/// (checked on the tag, so a crafted input cannot recurse deeply).
fn decode_response_in(reader: &mut Reader<'_>, in_pipeline: bool) -> Result<Response, DecodeError> {
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
        RESPONSE_PIPELINE if in_pipeline => {
            return Err(DecodeError::NestedPipeline {
                what: "pipeline result",
            })
        }
        RESPONSE_PIPELINE => {
            // Smallest result: its tag and a one-byte response or error.
            let count = reader.count("pipeline results", 2)?;
            let mut results = Vec::with_capacity(count);
            for _ in 0..count {
                results.push(decode_result_in(reader, true)?);
            }
            Response::Pipeline(results)
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
        tag => return Err(DecodeError::UnknownTag { what: "error", tag }),
    };
    Ok(error)
}
