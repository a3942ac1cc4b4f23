//! The [`Backend`] trait: everything the RESP server needs from the rest of RaftKV. The crate
//! does not depend on the server; the server implements this trait over its router and
//! stores, and tests implement it over one in-memory [`kv::KvStateMachine`].

use std::future::Future;
use std::pin::Pin;

use thiserror::Error;

/// A boxed, sendable future, as returned by [`Backend`]'s async methods.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What the RESP server executes its commands against.
///
/// # To ensure correctness
/// An implementation must guarantee:
/// 1. Each [`kv::Command`] is executed atomically: a read-modify-write command (`Incr`,
///    `GetSet`, `MSetNx`, `Put` with options, ...) is one state-machine command, never a read
///    followed by a write.
/// 2. Writes are applied at most once per `(client_id, sequence)`: if the backend retries a
///    write internally (leader change, timeout), it reuses the same pair so the state machine
///    recognises the retry. The RESP layer never reuses a sequence for a different command.
/// 3. `BackendError::Unavailable` means the command was certainly not applied (safe for the
///    client to retry); `BackendError::Timeout` means the outcome is unknown.
/// 4. For `Command::Scan { end: None, .. }` and `Command::ScanKeys { end: None, .. }` the
///    backend scans the whole keyspace from `start`, crossing region boundaries as needed, and
///    sets `more` whenever keys may remain after the last pair (key) it returned. A reply with
///    `more == true` carries at least one pair (key). SCAN and KEYS rely on this.
/// 5. Multi-key commands are only sent when [`Backend::same_region`] said yes for their keys;
///    the backend may still refuse them (a split in between) with `Unavailable`.
/// 6. A pipeline's commands for one region (as [`Backend::region_of`] names it) arrive as one
///    [`kv::Command::Pipeline`], executed like any command: atomically as one step, at most
///    once per `(client_id, sequence)`, answered with one result per command. Commands for
///    different regions are sent concurrently (different keys, so no order between them is
///    observable on this connection, as with a pipeline over Redis Cluster's nodes). Their
///    keys and values are within [`crate::RespConfig`]'s `max_key_bytes` / `max_value_bytes`
///    (a larger one is sent alone), so a backend refusing a whole `Pipeline` for a size limit
///    means those two are set wrong. `region_of` should name a small set (the regions):
///    a connection remembers its last group per region.
/// 7. Reads are judged at the serving leader's current clock (`KvStateMachine::read_at` with
///    the leader's wall clock, never earlier than the last applied entry's time), so a key read
///    after its deadline is absent at once; writes carry the proposing leader's clock in
///    `proposed_at_ms`. TTL, PTTL and friends compute from the `now_ms` an `Inspect` returns.
/// 8. `Command::Exec` (MULTI/EXEC) is a write like any other: one log entry, at most once per
///    `(client_id, sequence)`. It is only sent when `same_region` said yes for every key it
///    names (watched keys included), so it can be routed by its first key.
pub trait Backend: Send + Sync + 'static {
    /// Executes one state-machine command. Writes carry the connection's session (client id,
    /// sequences from 1, increasing, with gaps; at most one in flight per region; retries of
    /// the same write reuse the sequence so it is applied once). Reads use client_id 0 and
    /// sequence 0.
    fn execute(
        &self,
        client_id: u64,
        sequence: u64,
        command: kv::Command,
    ) -> BoxFuture<Result<kv::Response, BackendError>>;

    /// Whether all keys live in one region (multi-key commands are refused otherwise).
    fn same_region(&self, keys: &[&[u8]]) -> bool;

    /// The region holding `key`, as an opaque number, so a pipeline's commands can be grouped
    /// by region (rule 6). `None` when unknown; the default knows no region, and then the
    /// commands of a pipeline are executed one at a time, in order.
    fn region_of(&self, _key: &[u8]) -> Option<u64> {
        None
    }

    /// Number of keys in the whole keyspace (`DBSIZE`, INFO keyspace).
    fn dbsize(&self) -> BoxFuture<Result<u64, BackendError>>;

    /// Extra fields for `INFO`, shown in its `raftkv` section. Names should start with
    /// `raftkv_`; values must not contain CR or LF.
    fn info(&self) -> Vec<(String, String)>;
}

/// Why the backend could not execute a command. Each variant maps to one Redis error text
/// (see `cmd::backend_error_frame`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BackendError {
    #[error("key exceeds the maximum allowed size")]
    KeyTooLarge,
    #[error("string exceeds maximum allowed size")]
    ValueTooLarge,
    #[error("value is not an integer or out of range")]
    NotAnInteger,
    #[error("value is not a valid float")]
    NotAFloat,
    #[error("increment or decrement would overflow")]
    Overflow,
    /// INCRBYFLOAT would store NaN or an infinity.
    #[error("increment would produce NaN or Infinity")]
    NotFinite,
    /// A command for one type (string, hash) on a key holding the other.
    #[error("Operation against a key holding the wrong kind of value")]
    WrongType,
    /// RENAME / RENAMENX of an absent key.
    #[error("no such key")]
    NoSuchKey,
    /// HINCRBY on a field whose value is not an integer.
    #[error("hash value is not an integer")]
    HashValueNotAnInteger,
    /// HINCRBYFLOAT on a field whose value is not a float.
    #[error("hash value is not a float")]
    HashValueNotAFloat,
    /// Not applied (no leader, region unavailable); safe to retry.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The outcome is unknown.
    #[error("timed out; the command may or may not have been applied")]
    Timeout,
    /// The store's disk is full: the write was refused before it was proposed (not applied).
    /// The text starts with "no space left on device".
    #[error("{0}")]
    NoSpace(String),
    #[error("{0}")]
    Other(String),
}

impl From<kv::CommandError> for BackendError {
    fn from(error: kv::CommandError) -> Self {
        use kv::CommandError as E;
        match error {
            E::KeyTooLarge { .. } => BackendError::KeyTooLarge,
            E::ValueTooLarge { .. } => BackendError::ValueTooLarge,
            E::NotAnInteger => BackendError::NotAnInteger,
            E::NotAFloat => BackendError::NotAFloat,
            E::Overflow => BackendError::Overflow,
            E::NotFinite => BackendError::NotFinite,
            E::WrongType => BackendError::WrongType,
            E::NoSuchKey => BackendError::NoSuchKey,
            E::HashValueNotAnInteger => BackendError::HashValueNotAnInteger,
            E::HashValueNotAFloat => BackendError::HashValueNotAFloat,
            // Stale routing: the caller should have refreshed and retried; nothing applied.
            E::OutOfRange { .. } => BackendError::Unavailable(error.to_string()),
            other => BackendError::Other(other.to_string()),
        }
    }
}
