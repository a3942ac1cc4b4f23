//! Snapshots of a [`KvStateMachine`] and its deterministic state hash.
//!
//! # Format (version [`SNAPSHOT_VERSION`] = 2)
//! ```text
//! magic "RKVS" (4 bytes)
//! version: u8
//! body_len: u64 little endian
//! body (body_len bytes):
//!   applied_index:varint  clock_ms:varint
//!   region.start:bytes  region.end:option<bytes>
//!   limits: max_key_bytes:varint max_value_bytes:varint max_batch_keys:varint
//!           max_scan_limit:varint
//!   session policy: ttl_ms:varint max_sessions:varint
//!   deleted_version:varint  version_offset:varint  (deleted_version <= applied_index +
//!                                                  version_offset, the version clock)
//!   data: list<Entry>                              keys strictly increasing, in region
//!   sessions: list<(client_id:varint last_sequence:varint last_seen_ms:varint result)>
//!                                                  client ids strictly increasing, non-zero
//! crc32c: u32 little endian, over everything before it (magic through body)
//!
//! Entry := key:bytes type:u8 (1 string, 2 hash) version:varint (<= the version clock)
//!          has_deadline:u8 (0/1) [deadline_ms:varint]
//!          string: value:bytes
//!          hash:   fields:list<(field:bytes value:bytes)>  at least one, strictly increasing
//! ```
//! `result` is the cached reply (see `response.rs`): `0 response` or `1 error`. Expired keys
//! not yet purged are written like any other (purging is a logged command).
//!
//! Version 1 (still restored): no `deleted_version` nor `version_offset`, and `data` is
//! `list<(key:bytes value:bytes)>`: strings without deadlines, restored with version 0.
//!
//! The configuration travels with the data because replicas that disagree on limits would
//! accept different commands and diverge.
//!
//! The state hash is 64-bit FNV-1a over exactly the body bytes, so two machines have the same
//! hash iff (barring collisions) they have the same snapshot body.

use crate::table::{Entry, HashFields, Table, Value};

use bytes::Bytes;
use thiserror::Error;

use crate::codec::{DecodeError, Fnv64, Reader, Sink};
use crate::command::{ClientId, Sequence};
use crate::config::{Limits, RegionRange, SessionPolicy};
use crate::machine::KvStateMachine;
use crate::response::{decode_result, encode_result};
use crate::session::{Session, SessionTable};

/// First bytes of every snapshot.
pub const SNAPSHOT_MAGIC: [u8; 4] = *b"RKVS";
/// The snapshot format version this build writes (it also reads [`SNAPSHOT_VERSION_1`]).
pub const SNAPSHOT_VERSION: u8 = 2;
/// The first format: string pairs only, no deadlines, versions or `deleted_version`.
pub const SNAPSHOT_VERSION_1: u8 = 1;
const HEADER_LEN: usize = 4 + 1 + 8;
const CHECKSUM_LEN: usize = 4;

/// Why a snapshot could not be restored. Restoring never half-succeeds.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SnapshotError {
    #[error("snapshot of {len} bytes is shorter than the minimum {min}: truncated")]
    TooShort { len: usize, min: usize },
    #[error("not a RaftKV KV snapshot (bad magic bytes)")]
    BadMagic,
    #[error("unsupported snapshot version {found} (this build reads {supported})")]
    UnsupportedVersion { found: u8, supported: u8 },
    #[error(
        "snapshot body is {actual} bytes but the header declares {declared}: truncated or padded"
    )]
    LengthMismatch { declared: u64, actual: u64 },
    #[error(
        "snapshot checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): corrupt"
    )]
    ChecksumMismatch { stored: u32, computed: u32 },
    /// The checksum matched but the body does not parse: written by a buggy encoder.
    #[error("snapshot body is malformed: {0}")]
    Malformed(#[from] DecodeError),
    /// The body parses but breaks an invariant of the state machine.
    #[error("snapshot body is inconsistent: {0}")]
    Inconsistent(&'static str),
}

impl KvStateMachine {
    /// Serializes the whole state (see the module docs for the format). Deterministic: equal
    /// states give equal bytes.
    pub fn snapshot(&self) -> Bytes {
        let mut out = Vec::with_capacity(HEADER_LEN + self.approximate_body_len() + CHECKSUM_LEN);
        out.extend_from_slice(&SNAPSHOT_MAGIC);
        out.push(SNAPSHOT_VERSION);
        out.extend_from_slice(&[0u8; 8]); // body_len, patched below
        self.encode_body(&mut out);
        let body_len = (out.len() - HEADER_LEN) as u64;
        out[5..HEADER_LEN].copy_from_slice(&body_len.to_le_bytes());
        let checksum = crc32c::crc32c(&out);
        out.extend_from_slice(&checksum.to_le_bytes());
        Bytes::from(out)
    }

    /// Rebuilds a state machine from [`Self::snapshot`]'s output, verifying the checksum,
    /// every length and the state's invariants.
    pub fn restore(bytes: &[u8]) -> Result<KvStateMachine, SnapshotError> {
        let min = HEADER_LEN + CHECKSUM_LEN;
        if bytes.len() < min {
            return Err(SnapshotError::TooShort {
                len: bytes.len(),
                min,
            });
        }
        if bytes[..4] != SNAPSHOT_MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        let version = bytes[4];
        if version != SNAPSHOT_VERSION && version != SNAPSHOT_VERSION_1 {
            return Err(SnapshotError::UnsupportedVersion {
                found: bytes[4],
                supported: SNAPSHOT_VERSION,
            });
        }
        let mut declared = [0u8; 8];
        declared.copy_from_slice(&bytes[5..HEADER_LEN]);
        let declared = u64::from_le_bytes(declared);
        let actual = (bytes.len() - min) as u64;
        if declared != actual {
            return Err(SnapshotError::LengthMismatch { declared, actual });
        }
        let (covered, stored) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        let mut stored_array = [0u8; 4];
        stored_array.copy_from_slice(stored);
        let stored = u32::from_le_bytes(stored_array);
        let computed = crc32c::crc32c(covered);
        if stored != computed {
            return Err(SnapshotError::ChecksumMismatch { stored, computed });
        }
        Self::decode_body(&covered[HEADER_LEN..], version)
    }

    /// A deterministic 64-bit hash of the applied index, log time, region, configuration,
    /// data and sessions, for the simulator to compare replicas. Stable across processes,
    /// platforms and Rust versions.
    pub fn state_hash(&self) -> u64 {
        let mut hasher = Fnv64::new();
        self.encode_body(&mut hasher);
        hasher.finish()
    }

    /// A hash of the region and its entries only (keys, types, values, deadlines), without
    /// versions (log indexes), the applied index, log time, `deleted_version` or sessions:
    /// lets a test check that a refused command changed no key, or that two histories of
    /// different lengths left the same data.
    pub fn data_hash(&self) -> u64 {
        let mut hasher = Fnv64::new();
        hasher.put_bytes(&self.region.start);
        hasher.put_opt_bytes(self.region.end.as_ref());
        encode_data(&mut hasher, &self.data, false);
        hasher.finish()
    }

    fn approximate_body_len(&self) -> usize {
        // Capacity hint: weights plus a few bytes of framing per entry (not per field).
        64 + self.data.bytes() as usize + self.data.len() * 16 + self.sessions.len() * 32
    }

    fn encode_body<S: Sink>(&self, out: &mut S) {
        out.put_varint(self.applied_index);
        out.put_varint(self.clock_ms);
        out.put_bytes(&self.region.start);
        out.put_opt_bytes(self.region.end.as_ref());
        out.put_varint(self.limits.max_key_bytes as u64);
        out.put_varint(self.limits.max_value_bytes as u64);
        out.put_varint(self.limits.max_batch_keys as u64);
        out.put_varint(u64::from(self.limits.max_scan_limit));
        out.put_varint(self.session_policy.ttl_ms);
        out.put_varint(self.session_policy.max_sessions as u64);
        out.put_varint(self.deleted_version);
        out.put_varint(self.version_offset);
        encode_data(out, &self.data, true);
        out.put_varint(self.sessions.len() as u64);
        for (client, session) in self.sessions.iter() {
            out.put_varint(client.0);
            out.put_varint(session.last_sequence.0);
            out.put_varint(session.last_seen_ms);
            encode_result(out, &session.result);
        }
    }

    fn decode_body(body: &[u8], version: u8) -> Result<KvStateMachine, SnapshotError> {
        let mut reader = Reader::new(body);
        let applied_index = reader.varint("applied index")?;
        let clock_ms = reader.varint("clock_ms")?;
        let region = RegionRange {
            start: reader.bytes("region start")?,
            end: reader.opt_bytes("region end")?,
        };
        if !region.is_well_formed() {
            return Err(SnapshotError::Inconsistent(
                "region end is not after its start",
            ));
        }
        let limits = Limits {
            max_key_bytes: reader.usize("max_key_bytes")?,
            max_value_bytes: reader.usize("max_value_bytes")?,
            max_batch_keys: reader.usize("max_batch_keys")?,
            max_scan_limit: u32::try_from(reader.varint("max_scan_limit")?)
                .map_err(|_| SnapshotError::Inconsistent("max_scan_limit exceeds u32"))?,
        };
        let session_policy = SessionPolicy {
            ttl_ms: reader.varint("session ttl")?,
            max_sessions: reader.usize("max_sessions")?,
        };
        if session_policy.max_sessions == 0 {
            return Err(SnapshotError::Inconsistent("max_sessions is 0"));
        }

        let (deleted_version, version_offset) = if version == SNAPSHOT_VERSION_1 {
            (0, 0)
        } else {
            (
                reader.varint("deleted_version")?,
                reader.varint("version_offset")?,
            )
        };
        let version_clock = applied_index.saturating_add(version_offset);
        if deleted_version > version_clock {
            return Err(SnapshotError::Inconsistent(
                "deleted_version after the version clock",
            ));
        }

        // Smallest entry: v1 two empty byte fields; v2 a key, type, version, deadline flag
        // and an empty value.
        let min_entry = if version == SNAPSHOT_VERSION_1 { 2 } else { 5 };
        let entry_count = reader.count("data entries", min_entry)?;
        let mut data = Table::new();
        let mut previous_key: Option<Bytes> = None;
        for _ in 0..entry_count {
            let key = reader.bytes("key")?;
            let entry = if version == SNAPSHOT_VERSION_1 {
                Entry::string(&key, reader.bytes_ref("value")?, None, 0)
            } else {
                decode_entry(&mut reader, &key)?
            };
            if entry.version() > version_clock {
                return Err(SnapshotError::Inconsistent(
                    "a key's version is after the version clock",
                ));
            }
            if previous_key
                .as_ref()
                .is_some_and(|previous| *previous >= key)
            {
                return Err(SnapshotError::Inconsistent(
                    "keys are not strictly increasing",
                ));
            }
            if !region.contains(&key) {
                return Err(SnapshotError::Inconsistent("a key lies outside the region"));
            }
            data.put(entry);
            previous_key = Some(key);
        }

        // Smallest session: three one-byte varints, a result tag and a response tag.
        let session_count = reader.count("sessions", 5)?;
        if session_count > session_policy.max_sessions {
            return Err(SnapshotError::Inconsistent(
                "more sessions than max_sessions",
            ));
        }
        let mut sessions = SessionTable::default();
        let mut previous_client: Option<ClientId> = None;
        for _ in 0..session_count {
            let client = ClientId(reader.varint("client id")?);
            let last_sequence = Sequence(reader.varint("session sequence")?);
            let last_seen_ms = reader.varint("session last_seen_ms")?;
            let result = decode_result(&mut reader)?;
            if client == ClientId::NONE || last_sequence == Sequence(0) {
                return Err(SnapshotError::Inconsistent(
                    "session with client 0 or sequence 0",
                ));
            }
            if previous_client.is_some_and(|previous| previous >= client) {
                return Err(SnapshotError::Inconsistent(
                    "session client ids are not strictly increasing",
                ));
            }
            if last_seen_ms > clock_ms {
                return Err(SnapshotError::Inconsistent(
                    "session seen after the log time",
                ));
            }
            previous_client = Some(client);
            sessions.insert(
                client,
                Session {
                    last_sequence,
                    result,
                    last_seen_ms,
                },
            );
        }
        reader.finish()?;
        Ok(KvStateMachine {
            region,
            limits,
            session_policy,
            applied_index,
            clock_ms,
            data,
            sessions,
            deleted_version,
            version_offset,
        })
    }
}

const ENTRY_STRING: u8 = 1;
const ENTRY_HASH: u8 = 2;

/// `with_versions`: false only for [`KvStateMachine::data_hash`] (it then writes 0).
fn encode_data<S: Sink>(out: &mut S, data: &Table, with_versions: bool) {
    out.put_varint(data.len() as u64);
    for entry in data.entries() {
        out.put_bytes(entry.key());
        out.put_u8(match entry.value() {
            Value::String(_) => ENTRY_STRING,
            Value::Hash(_) => ENTRY_HASH,
        });
        out.put_varint(if with_versions { entry.version() } else { 0 });
        match entry.deadline() {
            None => out.put_u8(0),
            Some(deadline) => {
                out.put_u8(1);
                out.put_varint(deadline);
            }
        }
        match entry.value() {
            Value::String(value) => out.put_bytes(value),
            Value::Hash(fields) => {
                out.put_varint(fields.len() as u64);
                for (field, value) in fields.iter() {
                    out.put_bytes(field);
                    out.put_bytes(value);
                }
            }
        }
    }
}

/// One v2 entry after its key.
fn decode_entry(reader: &mut Reader<'_>, key: &Bytes) -> Result<Entry, SnapshotError> {
    let kind = reader.u8("entry type")?;
    let version = reader.varint("entry version")?;
    let deadline = if reader.bool("entry has deadline")? {
        Some(reader.varint("entry deadline")?)
    } else {
        None
    };
    match kind {
        ENTRY_STRING => Ok(Entry::string(
            key,
            reader.bytes_ref("value")?,
            deadline,
            version,
        )),
        ENTRY_HASH => {
            let count = reader.count("hash fields", 2)?;
            if count == 0 {
                return Err(SnapshotError::Inconsistent("a hash has no field"));
            }
            let mut fields = HashFields::new();
            let mut previous: Option<Bytes> = None;
            for _ in 0..count {
                let field = reader.bytes("field")?;
                let value = reader.bytes("field value")?;
                if previous.as_ref().is_some_and(|p| *p >= field) {
                    return Err(SnapshotError::Inconsistent(
                        "hash fields are not strictly increasing",
                    ));
                }
                previous = Some(field.clone());
                fields.insert(field, value);
            }
            Ok(Entry::hash(key.clone(), fields, deadline, version))
        }
        tag => Err(SnapshotError::Malformed(DecodeError::UnknownTag {
            what: "entry type",
            tag,
        })),
    }
}
