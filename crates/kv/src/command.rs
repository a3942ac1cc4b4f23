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
//!                    bit2 return_previous, bits3-4 expiry: 0 Clear, 1 Keep, 2 Set(In),
//!                    3 Set(At); other bits must be 0) [ms:varint, only for 2 and 3]
//!                    (entries written before expiries existed have bits 3-4 clear and
//!                    decode exactly as before: SetExpiry::Clear)
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
//!  19 Expire         key:bytes when:Expiry condition:u8 (0 Always 1 NX 2 XX 3 GT 4 LT)
//!  20 Persist        key:bytes
//!  21 GetEx          key:bytes expiry:u8 (0 Unchanged, 1 Persist, 2 In, 3 At) [ms:varint]
//!  22 DelIfEq        key:bytes value:bytes
//!  23 PurgeExpired   limit:varint (u32)
//!  24 Inspect        key:bytes
//!  25 HSet           key:bytes fields:list<(field:bytes value:bytes)> if_absent:bool
//!  26 HGet           key:bytes fields:list<bytes>
//!  27 HGetAll        key:bytes
//!  28 HDel           key:bytes fields:list<bytes>
//!  29 HIncrBy        key:bytes field:bytes delta:zigzag-varint
//!  30 HIncrByFloat   key:bytes field:bytes delta_bits:u64 fixed LE
//!  31 HScan          key:bytes after:option<bytes> limit:varint (u32)
//!  32 ScanKeys       start:bytes end:option<bytes> limit:varint (u32)
//!                    key_type:u8 (0 any, 1 string, 2 hash)
//!  33 Rename         from:bytes to:bytes if_absent:bool
//!  34 Copy           from:bytes to:bytes replace:bool
//!  35 Exec           watches:list<(key:bytes version:varint)> commands:list<CommandBody>
//!                    (may be empty; none may be a Pipeline or an Exec. An Exec may sit
//!                    in a Pipeline, so nesting is at most Pipeline > Exec > command)
//! Expiry := kind:u8 (0 In, 1 At) ms:varint
//! ```
//! Primitives are described in the `codec` module. Tags are never reused: a retired command
//! keeps its number so old log entries still decode to the same thing.

use bytes::Bytes;

use crate::codec::{DecodeError, Reader, Sink};
pub use crate::table::KeyType;

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

/// When a key expires, as a command asks. Relative times are resolved against the log
/// clock of the entry that applies them (`clock_ms + ms`), saturating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// `ms` after the applying entry's log time (EX / PX / EXPIRE / PEXPIRE).
    In { ms: u64 },
    /// At absolute log time `ms` since the Unix epoch (EXAT / PXAT / EXPIREAT).
    At { ms: u64 },
}

impl Expiry {
    /// The absolute deadline at log time `now_ms`.
    pub fn resolve(self, now_ms: u64) -> u64 {
        match self {
            Expiry::In { ms } => now_ms.saturating_add(ms),
            Expiry::At { ms } => ms,
        }
    }

    fn encode<S: Sink>(self, out: &mut S) {
        match self {
            Expiry::In { ms } => {
                out.put_u8(0);
                out.put_varint(ms);
            }
            Expiry::At { ms } => {
                out.put_u8(1);
                out.put_varint(ms);
            }
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match reader.u8("expiry kind")? {
            0 => Ok(Expiry::In {
                ms: reader.varint("expiry ms")?,
            }),
            1 => Ok(Expiry::At {
                ms: reader.varint("expiry ms")?,
            }),
            tag => Err(DecodeError::UnknownTag {
                what: "expiry",
                tag,
            }),
        }
    }
}

/// What a SET does to the key's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SetExpiry {
    /// Drop any deadline (Redis SET without options).
    #[default]
    Clear,
    /// `KEEPTTL`: keep the key's deadline.
    Keep,
    /// `EX` / `PX` / `EXAT` / `PXAT`.
    Set(Expiry),
}

/// `EXPIRE ... [NX|XX|GT|LT]` (Redis 7: a key without a deadline counts as an infinite one
/// for GT and LT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpireCondition {
    #[default]
    Always,
    /// Only if the key has no deadline.
    Nx,
    /// Only if the key has a deadline.
    Xx,
    /// Only if the new deadline is later than the current one.
    Gt,
    /// Only if the new deadline is earlier than the current one.
    Lt,
}

/// What `GETEX` does to the key's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GetExExpiry {
    #[default]
    Unchanged,
    /// `PERSIST`: drop the deadline.
    Persist,
    /// `EX` / `PX` / `EXAT` / `PXAT`.
    Set(Expiry),
}

/// Options of [`Command::Put`], mirroring Redis `SET ... [NX|XX] [GET] [EX|PX|EXAT|PXAT|KEEPTTL]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PutOptions {
    /// `NX`: write only if the key is absent.
    pub if_absent: bool,
    /// `XX`: write only if the key is present.
    pub if_present: bool,
    /// `GET`: return the value the key held before (whether or not the write happened).
    pub return_previous: bool,
    /// What happens to the key's deadline (default: cleared, as Redis SET does).
    pub expiry: SetExpiry,
}

impl PutOptions {
    const IF_ABSENT: u8 = 1;
    const IF_PRESENT: u8 = 1 << 1;
    const RETURN_PREVIOUS: u8 = 1 << 2;
    const EXPIRY_SHIFT: u8 = 3;
    const EXPIRY_MASK: u8 = 0b11 << Self::EXPIRY_SHIFT;

    fn to_flags(self) -> u8 {
        let mut flags = match self.expiry {
            SetExpiry::Clear => 0,
            SetExpiry::Keep => 1,
            SetExpiry::Set(Expiry::In { .. }) => 2,
            SetExpiry::Set(Expiry::At { .. }) => 3,
        } << Self::EXPIRY_SHIFT;
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

    /// The expiry's payload, written after the flags byte (nothing for Clear / Keep).
    fn encode_expiry_payload<S: Sink>(self, out: &mut S) {
        if let SetExpiry::Set(Expiry::In { ms } | Expiry::At { ms }) = self.expiry {
            out.put_varint(ms);
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let flags = reader.u8("put flags")?;
        let known = Self::IF_ABSENT | Self::IF_PRESENT | Self::RETURN_PREVIOUS | Self::EXPIRY_MASK;
        if flags & !known != 0 {
            return Err(DecodeError::Invalid {
                what: "put flags",
                reason: "unknown flag bits set",
            });
        }
        let expiry = match (flags & Self::EXPIRY_MASK) >> Self::EXPIRY_SHIFT {
            0 => SetExpiry::Clear,
            1 => SetExpiry::Keep,
            2 => SetExpiry::Set(Expiry::In {
                ms: reader.varint("put expiry ms")?,
            }),
            _ => SetExpiry::Set(Expiry::At {
                ms: reader.varint("put expiry ms")?,
            }),
        };
        Ok(PutOptions {
            if_absent: flags & Self::IF_ABSENT != 0,
            if_present: flags & Self::IF_PRESENT != 0,
            return_previous: flags & Self::RETURN_PREVIOUS != 0,
            expiry,
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
    /// Redis `EXPIRE`/`PEXPIRE`/`EXPIREAT`/`PEXPIREAT` with `NX|XX|GT|LT`. → `Response::Integer(1)`
    /// if the deadline was set (or the key deleted because the time is already past),
    /// `Integer(0)` if the key is absent or the condition failed.
    Expire {
        key: Bytes,
        when: Expiry,
        condition: ExpireCondition,
    },
    /// Redis `PERSIST`. → `Response::Integer(1)` if a deadline was removed, else 0.
    Persist { key: Bytes },
    /// Redis `GETEX`. → `Response::Value(current value)`. `WrongType` on a hash;
    /// `InvalidExpireTime` for `Set(In { ms: 0 })`.
    GetEx { key: Bytes, expiry: GetExExpiry },
    /// Valkey `DELIFEQ`: delete only if the string value equals `value`.
    /// → `Response::Integer(1/0)`. `WrongType` on a hash.
    DelIfEq { key: Bytes, value: Bytes },
    /// Internal (the leader's background expiry): deletes up to `limit` keys whose deadline is
    /// `<=` the log time of this entry, earliest deadline first. → `Response::Integer(deleted)`.
    PurgeExpired { limit: u32 },
    /// Read: the key's type, deadline, size and WATCH version.
    /// → `Response::KeyInfo { info, version, now_ms }` (see [`crate::Response::KeyInfo`]).
    Inspect { key: Bytes },
    /// Redis `HSET` (`if_absent = false`) → `Integer(number of new fields)`; `HSETNX`
    /// (`if_absent = true`, exactly one pair) → `Integer(1/0)`. A repeated field: the last
    /// wins. Keeps the key's deadline. No field, or `if_absent` with other than one field, is
    /// `ConflictingOptions` (the front end never sends them).
    HSet {
        key: Bytes,
        fields: Vec<(Bytes, Bytes)>,
        if_absent: bool,
    },
    /// Read: Redis `HMGET`/`HGET`. → `Response::Values`, one per field.
    HGet { key: Bytes, fields: Vec<Bytes> },
    /// Read: Redis `HGETALL`. → `Response::Pairs` in field order (`[]` for an absent key).
    HGetAll { key: Bytes },
    /// Redis `HDEL`. → `Integer(fields removed)`; the key goes when no field remains.
    HDel { key: Bytes, fields: Vec<Bytes> },
    /// Redis `HINCRBY`. → `Integer(new)`. `HashValueNotAnInteger` / `Overflow`.
    HIncrBy {
        key: Bytes,
        field: Bytes,
        delta: i64,
    },
    /// Redis `HINCRBYFLOAT`. → `Value(Some(new as stored))`. `HashValueNotAFloat` / `NotFinite`.
    HIncrByFloat {
        key: Bytes,
        field: Bytes,
        delta_bits: u64,
    },
    /// Read: one page of Redis `HSCAN`: fields strictly after `after` (`None`: from the
    /// first), at most `limit` (`<= max_scan_limit`). → `Response::HScan { pairs, more }`.
    HScan {
        key: Bytes,
        after: Option<Bytes>,
        limit: u32,
    },
    /// Read: keys with `start <= key < end` (`end` clamped to the region, `None` = region end),
    /// at most `limit`, only of `key_type` if given, expired keys skipped.
    /// → `Response::Keys { keys, more }` (`more` as `Scan`'s).
    ScanKeys {
        start: Bytes,
        end: Option<Bytes>,
        limit: u32,
        key_type: Option<KeyType>,
    },
    /// Redis `RENAME` / `RENAMENX` (`if_absent`): value, type and deadline move.
    /// → `Integer(1)` renamed, `Integer(0)` RENAMENX target existed. `NoSuchKey` if `from`
    /// is absent. To itself: 1 (RENAMENX: 0), nothing changes.
    Rename {
        from: Bytes,
        to: Bytes,
        if_absent: bool,
    },
    /// Redis `COPY [REPLACE]`: the copy keeps type and deadline. → `Integer(1/0)` (0 also
    /// when `from` is absent or `from == to`; Redis errors on the latter, the front end checks).
    Copy {
        from: Bytes,
        to: Bytes,
        replace: bool,
    },
    /// Redis `MULTI`/`EXEC` with `WATCH`: every `(key, version)` watch is compared with the
    /// version [`Command::Inspect`] would return now; any difference → `Response::Exec(None)`
    /// and nothing is applied. Otherwise `commands` run in order like a `Pipeline` (a failing
    /// command changes nothing and the next one still runs) → `Exec(Some(results))`. None of
    /// `commands` may be a `Pipeline` or `Exec` (refused at decode; `ConflictingOptions` if
    /// built in memory). Empty `commands` is allowed.
    Exec {
        watches: Vec<(Bytes, u64)>,
        commands: Vec<Command>,
    },
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
const TAG_EXPIRE: u8 = 19;
const TAG_PERSIST: u8 = 20;
const TAG_GET_EX: u8 = 21;
const TAG_DEL_IF_EQ: u8 = 22;
const TAG_PURGE_EXPIRED: u8 = 23;
const TAG_INSPECT: u8 = 24;
const TAG_HSET: u8 = 25;
const TAG_HGET: u8 = 26;
const TAG_HGET_ALL: u8 = 27;
const TAG_HDEL: u8 = 28;
const TAG_HINCR_BY: u8 = 29;
const TAG_HINCR_BY_FLOAT: u8 = 30;
const TAG_HSCAN: u8 = 31;
const TAG_SCAN_KEYS: u8 = 32;
const TAG_RENAME: u8 = 33;
const TAG_COPY: u8 = 34;
const TAG_EXEC: u8 = 35;

/// Where a command body is being decoded: nesting is bounded (Pipeline > Exec > command).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Nesting {
    Top,
    InPipeline,
    InExec,
}

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
            | Command::Count
            | Command::Inspect { .. }
            | Command::HGet { .. }
            | Command::HGetAll { .. }
            | Command::HScan { .. }
            | Command::ScanKeys { .. } => true,
            Command::Pipeline { commands } => commands.iter().all(Command::is_read_only),
            _ => false,
        }
    }

    /// Every key the command names, in order (`Scan`, `ScanKeys`: the start; `Count`,
    /// `PurgeExpired`: none; `Rename`, `Copy`: from then to; `Exec`: the watched keys, then
    /// the commands' keys). Hash fields are not keys. Routing and front-end validation use
    /// this; the state machine checks the same keys again.
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
            | Command::SetNx { key, .. }
            | Command::Expire { key, .. }
            | Command::Persist { key }
            | Command::GetEx { key, .. }
            | Command::DelIfEq { key, .. }
            | Command::Inspect { key }
            | Command::HSet { key, .. }
            | Command::HGet { key, .. }
            | Command::HGetAll { key }
            | Command::HDel { key, .. }
            | Command::HIncrBy { key, .. }
            | Command::HIncrByFloat { key, .. }
            | Command::HScan { key, .. } => vec![key],
            Command::Scan { start, .. } | Command::ScanKeys { start, .. } => vec![start],
            Command::Rename { from, to, .. } | Command::Copy { from, to, .. } => vec![from, to],
            Command::PurgeExpired { .. } => vec![],
            Command::Exec { watches, commands } => watches
                .iter()
                .map(|(key, _)| key)
                .chain(commands.iter().flat_map(Command::keys))
                .collect(),
            Command::BatchGet { keys } | Command::DeleteMany { keys } => keys.iter().collect(),
            Command::BatchPut { pairs } | Command::MSetNx { pairs } => {
                pairs.iter().map(|(key, _)| key).collect()
            }
            Command::Count => vec![],
            Command::Pipeline { commands } => commands.iter().flat_map(Command::keys).collect(),
        }
    }

    /// Every value the command would write or compare (the CAS expected value, the DelIfEq
    /// value and HSet's field values included), for size checks against `max_value_bytes`.
    pub fn values(&self) -> Vec<&Bytes> {
        match self {
            Command::Put { value, .. }
            | Command::Append { value, .. }
            | Command::SetRange { value, .. }
            | Command::GetSet { value, .. }
            | Command::SetNx { value, .. }
            | Command::DelIfEq { value, .. } => vec![value],
            Command::HSet { fields, .. } => fields.iter().map(|(_, value)| value).collect(),
            Command::CompareAndSwap { expected, new, .. } => {
                expected.iter().chain(std::iter::once(new)).collect()
            }
            Command::BatchPut { pairs } | Command::MSetNx { pairs } => {
                pairs.iter().map(|(_, value)| value).collect()
            }
            Command::Pipeline { commands } | Command::Exec { commands, .. } => {
                commands.iter().flat_map(Command::values).collect()
            }
            _ => vec![],
        }
    }

    /// Every hash field the command names (checked against `max_key_bytes`, like keys).
    pub fn fields(&self) -> Vec<&Bytes> {
        match self {
            Command::HSet { fields, .. } => fields.iter().map(|(field, _)| field).collect(),
            Command::HGet { fields, .. } | Command::HDel { fields, .. } => fields.iter().collect(),
            Command::HIncrBy { field, .. } | Command::HIncrByFloat { field, .. } => vec![field],
            Command::HScan { after, .. } => after.iter().collect(),
            Command::Pipeline { commands } | Command::Exec { commands, .. } => {
                commands.iter().flat_map(Command::fields).collect()
            }
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

    /// Roughly the encoded size of the command's fields (a buffer capacity hint).
    pub fn approximate_payload_len(&self) -> usize {
        match self {
            Command::Get { key }
            | Command::Delete { key }
            | Command::GetDel { key }
            | Command::Persist { key }
            | Command::Inspect { key }
            | Command::HGetAll { key } => key.len(),
            Command::Expire { key, .. } | Command::GetEx { key, .. } => key.len() + 12,
            Command::DelIfEq { key, value } => key.len() + value.len(),
            Command::PurgeExpired { .. } => 5,
            Command::HSet { key, fields, .. } => {
                key.len()
                    + fields
                        .iter()
                        .map(|(f, v)| f.len() + v.len() + 4)
                        .sum::<usize>()
            }
            Command::HGet { key, fields } | Command::HDel { key, fields } => {
                key.len() + fields.iter().map(|f| f.len() + 2).sum::<usize>()
            }
            Command::HIncrBy { key, field, .. } | Command::HIncrByFloat { key, field, .. } => {
                key.len() + field.len() + 10
            }
            Command::HScan { key, after, .. } => {
                key.len() + after.as_ref().map_or(0, Bytes::len) + 6
            }
            Command::ScanKeys { start, end, .. } => {
                start.len() + end.as_ref().map_or(0, Bytes::len) + 7
            }
            Command::Rename { from, to, .. } | Command::Copy { from, to, .. } => {
                from.len() + to.len() + 3
            }
            Command::Exec { watches, commands } => {
                watches.iter().map(|(k, _)| k.len() + 10).sum::<usize>()
                    + commands
                        .iter()
                        .map(|c| c.approximate_payload_len() + 4)
                        .sum::<usize>()
            }
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
                options.encode_expiry_payload(out);
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
            Command::Expire {
                key,
                when,
                condition,
            } => {
                out.put_u8(TAG_EXPIRE);
                out.put_bytes(key);
                when.encode(out);
                out.put_u8(match condition {
                    ExpireCondition::Always => 0,
                    ExpireCondition::Nx => 1,
                    ExpireCondition::Xx => 2,
                    ExpireCondition::Gt => 3,
                    ExpireCondition::Lt => 4,
                });
            }
            Command::Persist { key } => {
                out.put_u8(TAG_PERSIST);
                out.put_bytes(key);
            }
            Command::GetEx { key, expiry } => {
                out.put_u8(TAG_GET_EX);
                out.put_bytes(key);
                match expiry {
                    GetExExpiry::Unchanged => out.put_u8(0),
                    GetExExpiry::Persist => out.put_u8(1),
                    GetExExpiry::Set(Expiry::In { ms }) => {
                        out.put_u8(2);
                        out.put_varint(*ms);
                    }
                    GetExExpiry::Set(Expiry::At { ms }) => {
                        out.put_u8(3);
                        out.put_varint(*ms);
                    }
                }
            }
            Command::DelIfEq { key, value } => {
                out.put_u8(TAG_DEL_IF_EQ);
                out.put_bytes(key);
                out.put_bytes(value);
            }
            Command::PurgeExpired { limit } => {
                out.put_u8(TAG_PURGE_EXPIRED);
                out.put_varint(u64::from(*limit));
            }
            Command::Inspect { key } => {
                out.put_u8(TAG_INSPECT);
                out.put_bytes(key);
            }
            Command::HSet {
                key,
                fields,
                if_absent,
            } => {
                out.put_u8(TAG_HSET);
                out.put_bytes(key);
                encode_pairs(out, fields);
                out.put_bool(*if_absent);
            }
            Command::HGet { key, fields } => {
                out.put_u8(TAG_HGET);
                out.put_bytes(key);
                encode_list(out, fields);
            }
            Command::HGetAll { key } => {
                out.put_u8(TAG_HGET_ALL);
                out.put_bytes(key);
            }
            Command::HDel { key, fields } => {
                out.put_u8(TAG_HDEL);
                out.put_bytes(key);
                encode_list(out, fields);
            }
            Command::HIncrBy { key, field, delta } => {
                out.put_u8(TAG_HINCR_BY);
                out.put_bytes(key);
                out.put_bytes(field);
                out.put_i64(*delta);
            }
            Command::HIncrByFloat {
                key,
                field,
                delta_bits,
            } => {
                out.put_u8(TAG_HINCR_BY_FLOAT);
                out.put_bytes(key);
                out.put_bytes(field);
                out.put_u64_fixed(*delta_bits);
            }
            Command::HScan { key, after, limit } => {
                out.put_u8(TAG_HSCAN);
                out.put_bytes(key);
                out.put_opt_bytes(after.as_ref());
                out.put_varint(u64::from(*limit));
            }
            Command::ScanKeys {
                start,
                end,
                limit,
                key_type,
            } => {
                out.put_u8(TAG_SCAN_KEYS);
                out.put_bytes(start);
                out.put_opt_bytes(end.as_ref());
                out.put_varint(u64::from(*limit));
                out.put_u8(encode_opt_key_type(*key_type));
            }
            Command::Rename {
                from,
                to,
                if_absent,
            } => {
                out.put_u8(TAG_RENAME);
                out.put_bytes(from);
                out.put_bytes(to);
                out.put_bool(*if_absent);
            }
            Command::Copy { from, to, replace } => {
                out.put_u8(TAG_COPY);
                out.put_bytes(from);
                out.put_bytes(to);
                out.put_bool(*replace);
            }
            Command::Exec { watches, commands } => {
                out.put_u8(TAG_EXEC);
                out.put_varint(watches.len() as u64);
                for (key, version) in watches {
                    out.put_bytes(key);
                    out.put_varint(*version);
                }
                out.put_varint(commands.len() as u64);
                for command in commands {
                    command.encode_body(out);
                }
            }
        }
    }

    pub(crate) fn decode_body(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Self::decode_body_in(reader, Nesting::Top)
    }

    /// `nesting`: a command inside a pipeline may not be a pipeline; one inside an Exec may
    /// be neither a pipeline nor an Exec. Checked on the tag, before decoding further, so a
    /// crafted input cannot recurse deeply.
    fn decode_body_in(reader: &mut Reader<'_>, nesting: Nesting) -> Result<Self, DecodeError> {
        let tag = reader.u8("command tag")?;
        let command = match tag {
            TAG_GET => Command::Get {
                key: reader.bytes("key")?,
            },
            TAG_PUT => Command::Put {
                key: reader.bytes("key")?,
                value: reader.bytes("value")?,
                options: PutOptions::decode(reader)?,
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
            TAG_PIPELINE if nesting != Nesting::Top => {
                return Err(DecodeError::NestedPipeline { what: "pipeline" })
            }
            TAG_EXEC if nesting == Nesting::InExec => {
                return Err(DecodeError::NestedPipeline { what: "exec" })
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
                    commands.push(Self::decode_body_in(reader, Nesting::InPipeline)?);
                }
                Command::Pipeline { commands }
            }
            TAG_EXPIRE => Command::Expire {
                key: reader.bytes("key")?,
                when: Expiry::decode(reader)?,
                condition: match reader.u8("expire condition")? {
                    0 => ExpireCondition::Always,
                    1 => ExpireCondition::Nx,
                    2 => ExpireCondition::Xx,
                    3 => ExpireCondition::Gt,
                    4 => ExpireCondition::Lt,
                    tag => {
                        return Err(DecodeError::UnknownTag {
                            what: "expire condition",
                            tag,
                        })
                    }
                },
            },
            TAG_PERSIST => Command::Persist {
                key: reader.bytes("key")?,
            },
            TAG_GET_EX => Command::GetEx {
                key: reader.bytes("key")?,
                expiry: match reader.u8("getex expiry")? {
                    0 => GetExExpiry::Unchanged,
                    1 => GetExExpiry::Persist,
                    2 => GetExExpiry::Set(Expiry::In {
                        ms: reader.varint("expiry ms")?,
                    }),
                    3 => GetExExpiry::Set(Expiry::At {
                        ms: reader.varint("expiry ms")?,
                    }),
                    tag => {
                        return Err(DecodeError::UnknownTag {
                            what: "getex expiry",
                            tag,
                        })
                    }
                },
            },
            TAG_DEL_IF_EQ => Command::DelIfEq {
                key: reader.bytes("key")?,
                value: reader.bytes("value")?,
            },
            TAG_PURGE_EXPIRED => Command::PurgeExpired {
                limit: decode_u32(reader, "purge limit")?,
            },
            TAG_INSPECT => Command::Inspect {
                key: reader.bytes("key")?,
            },
            TAG_HSET => Command::HSet {
                key: reader.bytes("key")?,
                fields: decode_pairs(reader)?,
                if_absent: reader.bool("hset if_absent")?,
            },
            TAG_HGET => Command::HGet {
                key: reader.bytes("key")?,
                fields: decode_list(reader, "hash fields")?,
            },
            TAG_HGET_ALL => Command::HGetAll {
                key: reader.bytes("key")?,
            },
            TAG_HDEL => Command::HDel {
                key: reader.bytes("key")?,
                fields: decode_list(reader, "hash fields")?,
            },
            TAG_HINCR_BY => Command::HIncrBy {
                key: reader.bytes("key")?,
                field: reader.bytes("field")?,
                delta: reader.i64("delta")?,
            },
            TAG_HINCR_BY_FLOAT => Command::HIncrByFloat {
                key: reader.bytes("key")?,
                field: reader.bytes("field")?,
                delta_bits: reader.u64_fixed("float delta")?,
            },
            TAG_HSCAN => Command::HScan {
                key: reader.bytes("key")?,
                after: reader.opt_bytes("hscan after")?,
                limit: decode_u32(reader, "hscan limit")?,
            },
            TAG_SCAN_KEYS => Command::ScanKeys {
                start: reader.bytes("scan start")?,
                end: reader.opt_bytes("scan end")?,
                limit: decode_u32(reader, "scan limit")?,
                key_type: decode_opt_key_type(reader)?,
            },
            TAG_RENAME => Command::Rename {
                from: reader.bytes("rename from")?,
                to: reader.bytes("rename to")?,
                if_absent: reader.bool("rename if_absent")?,
            },
            TAG_COPY => Command::Copy {
                from: reader.bytes("copy from")?,
                to: reader.bytes("copy to")?,
                replace: reader.bool("copy replace")?,
            },
            TAG_EXEC => {
                // Smallest watch: an empty key and a one-byte version.
                let count = reader.count("exec watches", 2)?;
                let mut watches = Vec::with_capacity(count);
                for _ in 0..count {
                    let key = reader.bytes("watched key")?;
                    watches.push((key, reader.varint("watched version")?));
                }
                let count = reader.count("exec commands", 1)?;
                let mut commands = Vec::with_capacity(count);
                for _ in 0..count {
                    commands.push(Self::decode_body_in(reader, Nesting::InExec)?);
                }
                Command::Exec { watches, commands }
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

fn encode_list<S: Sink>(out: &mut S, items: &[Bytes]) {
    out.put_varint(items.len() as u64);
    for item in items {
        out.put_bytes(item);
    }
}

fn decode_list(reader: &mut Reader<'_>, what: &'static str) -> Result<Vec<Bytes>, DecodeError> {
    let count = reader.count(what, MIN_BYTES_FIELD)?;
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        items.push(reader.bytes(what)?);
    }
    Ok(items)
}

fn decode_u32(reader: &mut Reader<'_>, what: &'static str) -> Result<u32, DecodeError> {
    u32::try_from(reader.varint(what)?).map_err(|_| DecodeError::Invalid {
        what,
        reason: "exceeds u32",
    })
}

pub(crate) fn encode_key_type(key_type: KeyType) -> u8 {
    match key_type {
        KeyType::String => 1,
        KeyType::Hash => 2,
    }
}

fn encode_opt_key_type(key_type: Option<KeyType>) -> u8 {
    key_type.map_or(0, encode_key_type)
}

pub(crate) fn decode_key_type(reader: &mut Reader<'_>) -> Result<KeyType, DecodeError> {
    match decode_opt_key_type(reader)? {
        Some(key_type) => Ok(key_type),
        None => Err(DecodeError::Invalid {
            what: "key type",
            reason: "must be 1 (string) or 2 (hash)",
        }),
    }
}

fn decode_opt_key_type(reader: &mut Reader<'_>) -> Result<Option<KeyType>, DecodeError> {
    match reader.u8("key type")? {
        0 => Ok(None),
        1 => Ok(Some(KeyType::String)),
        2 => Ok(Some(KeyType::Hash)),
        tag => Err(DecodeError::UnknownTag {
            what: "key type",
            tag,
        }),
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
    /// Whether an encoded request's command may name more than one key (a batch, pipeline,
    /// transaction, rename or copy), read from its header and tag alone, without decoding
    /// the rest: the leader's load sampler decodes only those to sample each key. False for
    /// input that does not decode that far.
    pub fn names_several_keys(input: &[u8]) -> bool {
        let mut reader = Reader::new(input);
        let tag = check_version(&mut reader)
            .and_then(|()| reader.varint("client id"))
            .and_then(|_| reader.varint("sequence"))
            .and_then(|_| reader.varint("proposed_at_ms"))
            .and_then(|_| reader.u8("command tag"));
        matches!(
            tag,
            Ok(TAG_BATCH_GET
                | TAG_BATCH_PUT
                | TAG_MSET_NX
                | TAG_DELETE_MANY
                | TAG_PIPELINE
                | TAG_RENAME
                | TAG_COPY
                | TAG_EXEC)
        )
    }

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
