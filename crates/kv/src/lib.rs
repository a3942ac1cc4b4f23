//! # kv — RaftKV's replicated key-value state machine
//!
//! Every replica of a region applies the region's committed Raft entries to one
//! [`KvStateMachine`]. It does no IO and reads no clock, so it is deterministic: the same
//! entries give the same state, the same [`KvStateMachine::state_hash`] and byte-identical
//! [`KvStateMachine::snapshot`]s on every replica.
//!
//! ## Module map
//! - [`command`]: [`Command`] (Get, Put with NX/XX/GET and an expiry, Delete, Append,
//!   CompareAndSwap, Scan, batches, the atomic read-modify-write ops the Redis front end
//!   needs, key expiry (Expire, Persist, GetEx, PurgeExpired), Inspect (type, TTL, WATCH
//!   version), hashes (HSet, HGet, HGetAll, HDel, HIncrBy, HIncrByFloat, HScan), ScanKeys,
//!   Rename, Copy, DelIfEq and Exec (MULTI/EXEC with WATCH)), [`Expiry`], [`SetExpiry`],
//!   [`ExpireCondition`], [`GetExExpiry`], the [`Request`] envelope that is a Raft entry's
//!   payload, [`ClientId`] and [`Sequence`], and their versioned binary codec.
//! - [`response`]: [`Response`], [`KeyInfo`], [`CommandError`] (the command was refused),
//!   [`ApplyError`] (the request around it was refused) and [`ApplyOutcome`].
//! - [`config`]: [`RegionRange`], [`Limits`], [`SessionPolicy`] (session expiry and eviction
//!   rules are documented there).
//! - `machine`: [`KvStateMachine`] itself: `apply`, `read`/`read_at`, `split_off`, the
//!   exactly-once rules, and the rules for time (expiry judged at the log clock for writes,
//!   at `max(now, log clock)` for reads), versions and WATCH.
//! - [`table`]: [`table::Table`], the region's entries: a string in one allocation, a hash
//!   as a persistent field map, each with its type, deadline and version; plus the
//!   `(deadline, key)` index that expiry purges walk. [`KeyType`].
//! - `session`: the session table (client → last sequence, cached reply, last seen).
//! - [`snapshot`]: the checksummed snapshot format, `restore`, and the state hash.
//! - `store_adapter`: `KvStateMachine` implements `types::StateMachine`, so a store hosts
//!   KV regions directly.
//! - `codec`: varints, length-prefixed bytes and a bounds-checked reader shared by every
//!   format; [`DecodeError`].
//!
//! ## Contract with the store
//! 1. Propose `Request::encode()` as the entry payload, with the leader's wall clock in
//!    `proposed_at_ms`.
//! 2. For each committed entry, in index order: call [`KvStateMachine::apply`] for a request
//!    entry or [`KvStateMachine::apply_noop`] for any other entry, and reply to the waiting
//!    client with the [`ApplyOutcome`]. Indexes must increase (it panics otherwise: that
//!    would be a store bug).
//! 3. Serve linearizable reads with [`KvStateMachine::read_at`] (passing the wall clock, so
//!    a key is absent from its deadline on even if no entry was applied since) once
//!    `applied_index` has reached the read index.
//! 4. Expire keys: when [`KvStateMachine::next_deadline_ms`] has passed, the leader proposes
//!    `Command::PurgeExpired` (every replica then drops the same keys, in deadline order).
//! 5. To snapshot, store [`KvStateMachine::snapshot`]; on restart or InstallSnapshot,
//!    [`KvStateMachine::restore`] it and replay the log after its `applied_index`.
//!
//! ```
//! use bytes::Bytes;
//! use kv::{ClientId, Command, KvStateMachine, PutOptions, RegionRange, Request, Response, Sequence};
//!
//! let mut replica = KvStateMachine::with_region(RegionRange::full());
//! let request = Request {
//!     client_id: ClientId(42),
//!     sequence: Sequence(1),
//!     command: Command::Put {
//!         key: Bytes::from_static(b"k"),
//!         value: Bytes::from_static(b"v"),
//!         options: PutOptions::default(),
//!     },
//!     proposed_at_ms: 1_700_000_000_000,
//! };
//! let payload = request.encode(); // what the leader proposes
//! let outcome = replica.apply(1, &payload);
//! assert_eq!(outcome.result, Ok(Response::Put { written: true, previous: None }));
//! // The client timed out and retried: same sequence, applied once, same reply.
//! let retry = replica.apply(2, &payload);
//! assert!(retry.duplicate);
//! assert_eq!(retry.result, outcome.result);
//! // A linearizable read after ReadIndex.
//! let value = replica.read(&Command::Get { key: Bytes::from_static(b"k") });
//! assert_eq!(value, Ok(Response::Value(Some(Bytes::from_static(b"v")))));
//! // Snapshot and restore reproduce the exact state.
//! let restored = KvStateMachine::restore(&replica.snapshot()).expect("fresh snapshot");
//! assert_eq!(restored.state_hash(), replica.state_hash());
//! ```
//!
//! ## Cost notes
//! Every session caches its last reply, including read results, so the table can hold up to
//! `max_sessions` values; snapshots are built in memory as one buffer. Both are fine for the
//! default limits and are the first things to revisit for very large regions.
//!
//! ## Known deviations from Redis
//! `IncrByFloat` computes in `f64` and stores Rust's shortest round-trip decimal, where Redis
//! uses `long double` and `%.17Lg`; results can differ in the last digits (e.g. Redis prints
//! `0.1 + 0.2` as `0.3`, we store `0.30000000000000004`); `HIncrByFloat` likewise.
//!
//! A WATCHed key that is absent compares the region's `deleted_version`, so its EXEC aborts
//! when any other key of the region was deleted or expired in between (conservative; Redis
//! tracks the key itself). Present keys are compared exactly. Deadlines are judged at the
//! log clock for writes (the leader's wall clock at proposal time), not at apply time.

mod codec;
pub mod command;
pub mod config;
mod machine;
pub mod response;
mod session;
pub mod snapshot;
mod store_adapter;
pub mod table;

pub use codec::DecodeError;
pub use command::{
    ClientId, Command, ExpireCondition, Expiry, GetExExpiry, PutOptions, Request, Sequence,
    SetExpiry, CODEC_VERSION,
};
pub use config::{Limits, RegionRange, SessionPolicy};
pub use machine::{KvStateMachine, SplitError, MAX_KEPT_PIPELINE_RESULT_BYTES, PURGE_BATCH_KEYS};
pub use response::{
    decode_command_result, encode_command_result, ApplyError, ApplyOutcome, CommandError, KeyInfo,
    Response,
};
pub use session::Session;
pub use snapshot::SnapshotError;
pub use table::KeyType;
