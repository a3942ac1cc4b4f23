//! Command dispatch: the command table, the per-connection [`Session`], the checks every
//! command goes through (unknown command, arity, authentication — in Redis's order), and one
//! module per command group, each with its handlers:
//! - [`connection`]: PING, ECHO, QUIT, RESET, SELECT, AUTH, CLIENT, HELLO (RESP3).
//! - [`server`]: COMMAND, INFO, DBSIZE, CONFIG GET.
//! - [`keys`]: TYPE, EXISTS, DEL, UNLINK, SCAN, KEYS, RENAME, RENAMENX, COPY, OBJECT,
//!   MEMORY USAGE.
//! - [`expiry`]: SETEX, PSETEX, GETEX, EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT, TTL, PTTL,
//!   EXPIRETIME, PEXPIRETIME, PERSIST, DELIFEQ, and SET's expiry options.
//! - [`strings`]: GET, SET, SETNX, GETSET, GETDEL, MGET, MSET, MSETNX, APPEND, STRLEN,
//!   GETRANGE, SETRANGE, INCR, INCRBY, DECR, DECRBY, INCRBYFLOAT.
//! - [`hashes`]: HSET, HMSET, HSETNX, HGET, HMGET, HGETALL, HDEL, HLEN, HEXISTS, HKEYS, HVALS,
//!   HINCRBY, HINCRBYFLOAT, HSTRLEN, HRANDFIELD, HSCAN.
//! - [`transactions`]: MULTI, EXEC, DISCARD, WATCH, UNWATCH (queueing happens in [`admit`]).
//! - [`pipeline`]: pipelined requests executed together, one log entry per region.
//!
//! Every handler gets the arguments after the command name, already arity-checked, and
//! answers with one [`Frame`] whatever protocol the connection speaks: a reply Redis 7 sends
//! as a RESP3 map, set, double or verbatim string is built as that type, and the connection
//! downgrades it to Redis's RESP2 form when it speaks RESP2 (see [`crate::frame`]).

mod connection;
mod expiry;
mod hashes;
mod keys;
mod pipeline;
mod transactions;

pub(crate) use pipeline::{request_bytes, Job, Pipeline, Segment, MAX_SEGMENTS_IN_FLIGHT};

pub(crate) use keys::CursorTable;
pub(crate) use transactions::Transaction;
mod server;
mod strings;

use std::sync::Arc;

use bytes::Bytes;

use crate::backend::BackendError;
use crate::clients::ClientRecord;
use crate::config::{RespConfig, UNAUTHENTICATED_MAX_ARRAY_LEN, UNAUTHENTICATED_MAX_BULK_BYTES};
use crate::frame::{parse_i64, Frame, Protocol, RequestLimits};
use crate::server::Shared;
use expiry::Unit;

/// What the connection does after a command.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    Reply(Frame),
    /// QUIT: send the reply, then close.
    ReplyAndClose(Frame),
}

impl From<Frame> for Outcome {
    fn from(frame: Frame) -> Self {
        Outcome::Reply(frame)
    }
}

/// Per-connection state.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    /// CLIENT ID: small, local, increasing.
    pub connection_id: u64,
    /// The exactly-once session id used for writes (see `Backend`).
    pub session_client_id: u64,
    /// The sequence the next write will carry; starts at 1.
    pub next_sequence: u64,
    pub authenticated: bool,
    /// What replies are encoded in: RESP2 until HELLO 3, again after RESET. Only barrier
    /// commands (HELLO, RESET) change it, so the connection reads it after each of them.
    /// Kept in `client`'s state too, for CLIENT LIST.
    pub protocol: Protocol,
    /// What CLIENT INFO and CLIENT LIST show about this connection (its name among them),
    /// shared with the server's registry and with this session's copies in pipeline segments.
    pub client: Arc<ClientRecord>,
    /// Inside MULTI: the queued requests (see [`transactions`]); `None` outside.
    pub transaction: Option<Transaction>,
    /// WATCHed keys with the version `Inspect` gave for each, until EXEC, DISCARD, UNWATCH or
    /// RESET.
    pub watches: Vec<(Bytes, u64)>,
}

impl Session {
    pub fn new(client: Arc<ClientRecord>, session_client_id: u64, authenticated: bool) -> Self {
        Session {
            connection_id: client.id,
            session_client_id,
            next_sequence: 1,
            authenticated,
            protocol: Protocol::Resp2,
            client,
            transaction: None,
            watches: Vec::new(),
        }
    }

    /// Switches the protocol replies are encoded in.
    pub fn set_protocol(&mut self, protocol: Protocol) {
        self.protocol = protocol;
        self.client.update(|state| state.protocol = protocol);
    }

    /// The parse limits for the next request: tiny until the client has authenticated, so an
    /// anonymous peer cannot make the server buffer megabytes.
    pub fn request_limits(&self, config: &RespConfig) -> RequestLimits {
        if self.authenticated {
            RequestLimits {
                max_bulk_bytes: config.max_bulk_bytes,
                max_array_len: config.max_array_len,
                max_request_bytes: config.max_request_bytes,
            }
        } else {
            RequestLimits {
                max_bulk_bytes: UNAUTHENTICATED_MAX_BULK_BYTES.min(config.max_bulk_bytes),
                max_array_len: UNAUTHENTICATED_MAX_ARRAY_LEN.min(config.max_array_len),
                max_request_bytes: (UNAUTHENTICATED_MAX_BULK_BYTES + 64)
                    * UNAUTHENTICATED_MAX_ARRAY_LEN,
            }
        }
    }
}

/// One row of the command table, in the shape COMMAND reports.
#[derive(Debug)]
pub(crate) struct CommandSpec {
    pub name: &'static str,
    /// Redis arity: positive = exact argument count including the name, negative = minimum.
    pub arity: i64,
    pub flags: &'static [&'static str],
    pub first_key: i64,
    pub last_key: i64,
    pub step: i64,
    pub group: &'static str,
    pub summary: &'static str,
}

impl CommandSpec {
    /// Whether `count` arguments (the name included) satisfy the command's arity.
    pub fn arity_allows(&self, count: i64) -> bool {
        (self.arity > 0 && count == self.arity) || (self.arity < 0 && count >= -self.arity)
    }
}

const fn spec(
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    keys: (i64, i64, i64),
    group: &'static str,
    summary: &'static str,
) -> CommandSpec {
    CommandSpec {
        name,
        arity,
        flags,
        first_key: keys.0,
        last_key: keys.1,
        step: keys.2,
        group,
        summary,
    }
}

const NO_KEYS: (i64, i64, i64) = (0, 0, 0);
const ONE_KEY: (i64, i64, i64) = (1, 1, 1);
const ALL_KEYS: (i64, i64, i64) = (1, -1, 1);
const PAIRS: (i64, i64, i64) = (1, -1, 2);
const TWO_KEYS: (i64, i64, i64) = (1, 2, 1);
const READ: &[&str] = &["readonly", "fast"];
const WRITE: &[&str] = &["write", "denyoom"];
const FAST_WRITE: &[&str] = &["write", "denyoom", "fast"];
const FAST_WRITE_NO_OOM: &[&str] = &["write", "fast"];
const TRANSACTION: &[&str] = &["noscript", "loading", "stale", "fast", "allow_busy"];
const CONNECTION: &[&str] = &["fast", "no_auth", "loading", "stale"];
const ADMIN: &[&str] = &["loading", "stale"];

/// Every supported command. COMMAND, COMMAND COUNT and COMMAND DOCS are generated from it.
pub(crate) const COMMANDS: &[CommandSpec] = &[
    spec(
        "ping",
        -1,
        &["fast"],
        NO_KEYS,
        "connection",
        "Returns the server's liveliness response.",
    ),
    spec(
        "echo",
        2,
        &["fast"],
        NO_KEYS,
        "connection",
        "Returns the given string.",
    ),
    spec(
        "quit",
        -1,
        CONNECTION,
        NO_KEYS,
        "connection",
        "Closes the connection.",
    ),
    spec(
        "reset",
        1,
        CONNECTION,
        NO_KEYS,
        "connection",
        "Resets the connection.",
    ),
    spec(
        "select",
        2,
        &["fast", "loading", "stale"],
        NO_KEYS,
        "connection",
        "Changes the selected database (only 0 exists).",
    ),
    spec(
        "auth",
        -2,
        CONNECTION,
        NO_KEYS,
        "connection",
        "Authenticates the connection.",
    ),
    spec(
        "hello",
        -1,
        CONNECTION,
        NO_KEYS,
        "connection",
        "Handshakes with the server and selects RESP2 or RESP3.",
    ),
    spec(
        "client",
        -2,
        ADMIN,
        NO_KEYS,
        "connection",
        "CLIENT ID, INFO, LIST, SETNAME, GETNAME, SETINFO, NO-EVICT, NO-TOUCH.",
    ),
    spec(
        "command",
        -1,
        ADMIN,
        NO_KEYS,
        "server",
        "Returns detailed information about all commands.",
    ),
    spec(
        "info",
        -1,
        ADMIN,
        NO_KEYS,
        "server",
        "Returns information and statistics about the server.",
    ),
    spec(
        "config",
        -2,
        ADMIN,
        NO_KEYS,
        "server",
        "CONFIG GET: a few read-only parameters (tools such as redis-benchmark ask for them).",
    ),
    spec(
        "dbsize",
        1,
        READ,
        NO_KEYS,
        "server",
        "Returns the number of keys.",
    ),
    spec(
        "type",
        2,
        READ,
        ONE_KEY,
        "generic",
        "Determines the type of value stored at a key.",
    ),
    spec(
        "ttl",
        2,
        READ,
        ONE_KEY,
        "generic",
        "Returns the expiration time in seconds of a key.",
    ),
    spec(
        "pttl",
        2,
        READ,
        ONE_KEY,
        "generic",
        "Returns the expiration time in milliseconds of a key.",
    ),
    spec(
        "expiretime",
        2,
        READ,
        ONE_KEY,
        "generic",
        "Returns the expiration time of a key as a Unix timestamp.",
    ),
    spec(
        "pexpiretime",
        2,
        READ,
        ONE_KEY,
        "generic",
        "Returns the expiration time of a key as a Unix milliseconds timestamp.",
    ),
    spec(
        "expire",
        -3,
        FAST_WRITE_NO_OOM,
        ONE_KEY,
        "generic",
        "Sets the expiration time of a key in seconds.",
    ),
    spec(
        "pexpire",
        -3,
        FAST_WRITE_NO_OOM,
        ONE_KEY,
        "generic",
        "Sets the expiration time of a key in milliseconds.",
    ),
    spec(
        "expireat",
        -3,
        FAST_WRITE_NO_OOM,
        ONE_KEY,
        "generic",
        "Sets the expiration time of a key to a Unix timestamp.",
    ),
    spec(
        "pexpireat",
        -3,
        FAST_WRITE_NO_OOM,
        ONE_KEY,
        "generic",
        "Sets the expiration time of a key to a Unix milliseconds timestamp.",
    ),
    spec(
        "persist",
        2,
        FAST_WRITE_NO_OOM,
        ONE_KEY,
        "generic",
        "Removes the expiration time of a key.",
    ),
    spec(
        "exists",
        -2,
        READ,
        ALL_KEYS,
        "generic",
        "Determines whether one or more keys exist.",
    ),
    spec(
        "del",
        -2,
        &["write"],
        ALL_KEYS,
        "generic",
        "Deletes one or more keys.",
    ),
    spec(
        "unlink",
        -2,
        &["write", "fast"],
        ALL_KEYS,
        "generic",
        "Deletes one or more keys.",
    ),
    spec(
        "scan",
        -2,
        &["readonly"],
        NO_KEYS,
        "generic",
        "Iterates over the key names.",
    ),
    spec(
        "keys",
        2,
        &["readonly"],
        NO_KEYS,
        "generic",
        "Returns all key names that match a pattern (bounded; see SCAN).",
    ),
    spec(
        "rename",
        3,
        &["write"],
        TWO_KEYS,
        "generic",
        "Renames a key and overwrites the destination.",
    ),
    spec(
        "renamenx",
        3,
        &["write", "fast"],
        TWO_KEYS,
        "generic",
        "Renames a key only when the target key name doesn't exist.",
    ),
    spec(
        "copy",
        -3,
        WRITE,
        TWO_KEYS,
        "generic",
        "Copies the value of a key to a new key.",
    ),
    spec(
        "object",
        -2,
        &[],
        NO_KEYS,
        "generic",
        "OBJECT ENCODING and HELP: the internal encoding of a key's value.",
    ),
    spec(
        "memory",
        -2,
        &[],
        NO_KEYS,
        "server",
        "MEMORY USAGE: estimates the memory usage of a key.",
    ),
    spec(
        "get",
        2,
        READ,
        ONE_KEY,
        "string",
        "Returns the string value of a key.",
    ),
    spec(
        "set",
        -3,
        WRITE,
        ONE_KEY,
        "string",
        "Sets the string value of a key.",
    ),
    spec(
        "setnx",
        3,
        FAST_WRITE,
        ONE_KEY,
        "string",
        "Set the string value of a key only when the key doesn't exist.",
    ),
    spec(
        "getset",
        3,
        FAST_WRITE,
        ONE_KEY,
        "string",
        "Returns the previous string value of a key after setting it to a new value.",
    ),
    spec(
        "getdel",
        2,
        &["write", "fast"],
        ONE_KEY,
        "string",
        "Returns the string value of a key after deleting the key.",
    ),
    spec(
        "mget",
        -2,
        READ,
        ALL_KEYS,
        "string",
        "Atomically returns the string values of one or more keys.",
    ),
    spec(
        "mset",
        -3,
        WRITE,
        PAIRS,
        "string",
        "Atomically creates or modifies the string values of one or more keys.",
    ),
    spec(
        "msetnx",
        -3,
        WRITE,
        PAIRS,
        "string",
        "Atomically sets the values of keys only when none of them exist.",
    ),
    spec(
        "append",
        3,
        FAST_WRITE,
        ONE_KEY,
        "string",
        "Appends a string to the value of a key.",
    ),
    spec(
        "strlen",
        2,
        READ,
        ONE_KEY,
        "string",
        "Returns the length of a string value.",
    ),
    spec(
        "getrange",
        4,
        &["readonly"],
        ONE_KEY,
        "string",
        "Returns a substring of the string stored at a key.",
    ),
    spec(
        "setrange",
        4,
        WRITE,
        ONE_KEY,
        "string",
        "Overwrites a part of a string value with another by an offset.",
    ),
    spec(
        "incr",
        2,
        FAST_WRITE,
        ONE_KEY,
        "string",
        "Increments the integer value of a key by one.",
    ),
    spec(
        "incrby",
        3,
        FAST_WRITE,
        ONE_KEY,
        "string",
        "Increments the integer value of a key by a number.",
    ),
    spec(
        "decr",
        2,
        FAST_WRITE,
        ONE_KEY,
        "string",
        "Decrements the integer value of a key by one.",
    ),
    spec(
        "decrby",
        3,
        FAST_WRITE,
        ONE_KEY,
        "string",
        "Decrements a number from the integer value of a key.",
    ),
    spec(
        "incrbyfloat",
        3,
        FAST_WRITE,
        ONE_KEY,
        "string",
        "Increment the floating point value of a key by a number.",
    ),
    spec(
        "setex",
        4,
        WRITE,
        ONE_KEY,
        "string",
        "Sets the string value and expiration time of a key.",
    ),
    spec(
        "psetex",
        4,
        WRITE,
        ONE_KEY,
        "string",
        "Sets both string value and expiration time in milliseconds of a key.",
    ),
    spec(
        "getex",
        -2,
        &["write", "fast"],
        ONE_KEY,
        "string",
        "Returns the string value of a key after setting its expiration time.",
    ),
    spec(
        "delifeq",
        3,
        &["write", "fast"],
        ONE_KEY,
        "string",
        "Deletes the key if its value equals the given value (Valkey 9).",
    ),
    spec(
        "hset",
        -4,
        FAST_WRITE,
        ONE_KEY,
        "hash",
        "Creates or modifies the value of a field in a hash.",
    ),
    spec(
        "hmset",
        -4,
        FAST_WRITE,
        ONE_KEY,
        "hash",
        "Sets the values of multiple fields.",
    ),
    spec(
        "hsetnx",
        4,
        FAST_WRITE,
        ONE_KEY,
        "hash",
        "Sets the value of a field in a hash only when the field doesn't exist.",
    ),
    spec(
        "hget",
        3,
        READ,
        ONE_KEY,
        "hash",
        "Returns the value of a field in a hash.",
    ),
    spec(
        "hmget",
        -3,
        READ,
        ONE_KEY,
        "hash",
        "Returns the values of all fields in a hash.",
    ),
    spec(
        "hgetall",
        2,
        &["readonly"],
        ONE_KEY,
        "hash",
        "Returns all fields and values in a hash.",
    ),
    spec(
        "hdel",
        -3,
        &["write", "fast"],
        ONE_KEY,
        "hash",
        "Deletes one or more fields and their values from a hash.",
    ),
    spec(
        "hlen",
        2,
        READ,
        ONE_KEY,
        "hash",
        "Returns the number of fields in a hash.",
    ),
    spec(
        "hexists",
        3,
        READ,
        ONE_KEY,
        "hash",
        "Determines whether a field exists in a hash.",
    ),
    spec(
        "hkeys",
        2,
        &["readonly"],
        ONE_KEY,
        "hash",
        "Returns all fields in a hash.",
    ),
    spec(
        "hvals",
        2,
        &["readonly"],
        ONE_KEY,
        "hash",
        "Returns all values in a hash.",
    ),
    spec(
        "hincrby",
        4,
        FAST_WRITE,
        ONE_KEY,
        "hash",
        "Increments the integer value of a field in a hash by a number.",
    ),
    spec(
        "hincrbyfloat",
        4,
        FAST_WRITE,
        ONE_KEY,
        "hash",
        "Increments the floating point value of a field by a number.",
    ),
    spec(
        "hstrlen",
        3,
        READ,
        ONE_KEY,
        "hash",
        "Returns the length of the value of a field.",
    ),
    spec(
        "hrandfield",
        -2,
        &["readonly"],
        ONE_KEY,
        "hash",
        "Returns one or more random fields from a hash.",
    ),
    spec(
        "hscan",
        -3,
        &["readonly"],
        ONE_KEY,
        "hash",
        "Iterates over fields and values of a hash.",
    ),
    spec(
        "multi",
        1,
        TRANSACTION,
        NO_KEYS,
        "transactions",
        "Starts a transaction.",
    ),
    spec(
        "exec",
        1,
        &["noscript", "loading", "stale", "skip_slowlog"],
        NO_KEYS,
        "transactions",
        "Executes all commands in a transaction.",
    ),
    spec(
        "discard",
        1,
        TRANSACTION,
        NO_KEYS,
        "transactions",
        "Discards a transaction.",
    ),
    spec(
        "watch",
        -2,
        TRANSACTION,
        ALL_KEYS,
        "transactions",
        "Monitors changes to keys to determine the execution of a transaction.",
    ),
    spec(
        "unwatch",
        1,
        TRANSACTION,
        NO_KEYS,
        "transactions",
        "Forgets about watched keys of a transaction.",
    ),
];

fn lookup(name: &[u8]) -> Option<&'static CommandSpec> {
    lookup_index(name).map(|index| &COMMANDS[index])
}

/// The position of the command called `name` (any case) in [`COMMANDS`].
fn lookup_index(name: &[u8]) -> Option<usize> {
    COMMANDS
        .iter()
        .position(|spec| spec.name.as_bytes().eq_ignore_ascii_case(name))
}

/// The name of the command at `index` in [`COMMANDS`] (CLIENT LIST's `cmd=`).
pub(crate) fn command_name(index: usize) -> Option<&'static str> {
    COMMANDS.get(index).map(|spec| spec.name)
}

// Redis's exact error texts, shared by several handlers.
pub(crate) const NOT_AN_INTEGER: &str = "ERR value is not an integer or out of range";
pub(crate) const NOT_A_FLOAT: &str = "ERR value is not a valid float";
pub(crate) const SYNTAX_ERROR: &str = "ERR syntax error";
pub(crate) const CROSSSLOT: &str = "CROSSSLOT Keys in request don't hash to the same slot";
pub(crate) const NOAUTH: &str = "NOAUTH Authentication required.";
pub(crate) const WRONGTYPE: &str =
    "WRONGTYPE Operation against a key holding the wrong kind of value";

pub(crate) fn wrong_arity(name: &str) -> Frame {
    Frame::error(format!(
        "ERR wrong number of arguments for '{name}' command"
    ))
}

/// Redis: "unknown command 'x', with args beginning with: 'a' 'b' " (each argument quoted and
/// followed by a space, the list cut once it reaches 128 bytes).
fn unknown_command(arguments: &[Bytes]) -> Frame {
    const SHOWN_BYTES: usize = 128;
    let name = &arguments[0][..arguments[0].len().min(SHOWN_BYTES)];
    let mut shown = String::new();
    for argument in &arguments[1..] {
        if shown.len() >= SHOWN_BYTES {
            break;
        }
        let room = SHOWN_BYTES - shown.len();
        let cut = &argument[..argument.len().min(room)];
        shown.push('\'');
        shown.push_str(&String::from_utf8_lossy(cut));
        shown.push_str("' ");
    }
    Frame::error(format!(
        "ERR unknown command '{}', with args beginning with: {shown}",
        String::from_utf8_lossy(name)
    ))
}

/// Parses an integer argument with Redis's strictness.
pub(crate) fn integer_argument(argument: &[u8]) -> Result<i64, Frame> {
    parse_i64(argument).ok_or_else(|| Frame::error(NOT_AN_INTEGER))
}

/// The Redis error text for a backend error.
pub(crate) fn backend_error_frame(error: BackendError) -> Frame {
    let text = match error {
        BackendError::KeyTooLarge => "ERR key exceeds the maximum allowed size".to_string(),
        // Redis's text for SETRANGE/APPEND past proto-max-bulk-len.
        BackendError::ValueTooLarge => {
            "ERR string exceeds maximum allowed size (proto-max-bulk-len)".to_string()
        }
        BackendError::NotAnInteger => NOT_AN_INTEGER.to_string(),
        BackendError::NotAFloat => NOT_A_FLOAT.to_string(),
        BackendError::Overflow => "ERR increment or decrement would overflow".to_string(),
        BackendError::NotFinite => "ERR increment would produce NaN or Infinity".to_string(),
        BackendError::WrongType => WRONGTYPE.to_string(),
        BackendError::NoSuchKey => "ERR no such key".to_string(),
        BackendError::HashValueNotAnInteger => "ERR hash value is not an integer".to_string(),
        BackendError::HashValueNotAFloat => "ERR hash value is not a float".to_string(),
        // TRYAGAIN is what Redis Cluster answers when a command may be retried as is.
        BackendError::Unavailable(reason) => format!("TRYAGAIN {reason}"),
        BackendError::Timeout => {
            "ERR timed out; the command may or may not have been applied".to_string()
        }
        BackendError::Other(reason) => format!("ERR {reason}"),
        // Not TRYAGAIN: retrying at once does not help until an operator frees space.
        BackendError::NoSpace(reason) => format!("ERR {reason}"),
    };
    Frame::error(text)
}

/// Handle for handlers: the shared state plus this connection's session.
pub(crate) struct Context<'a> {
    pub shared: &'a Shared,
    pub session: &'a mut Session,
    /// Set while the command runs as part of a pipeline: its one backend call is collected
    /// there and executed together with the others' (see [`pipeline`]).
    deferred: Option<(&'a pipeline::Deferred, usize)>,
}

impl Context<'_> {
    /// Executes a read: no session (client id 0).
    pub async fn read(&mut self, command: kv::Command) -> Result<kv::Response, Frame> {
        debug_assert!(command.is_read_only());
        if let Some(deferred) = self.deferred {
            return through_pipeline(deferred, command).await;
        }
        self.shared
            .backend
            .execute(0, 0, command)
            .await
            .map_err(backend_error_frame)
    }

    /// Executes a write with the next sequence of this connection's session. The sequence is
    /// consumed whatever the outcome: a new command must never reuse the number of an earlier
    /// one that may have been applied.
    pub async fn write(&mut self, command: kv::Command) -> Result<kv::Response, Frame> {
        if let Some(deferred) = self.deferred {
            // The pipeline numbers its entries itself, from the connection's session.
            return through_pipeline(deferred, command).await;
        }
        let sequence = self.session.next_sequence;
        self.session.next_sequence += 1;
        self.shared
            .backend
            .execute(self.session.session_client_id, sequence, command)
            .await
            .map_err(backend_error_frame)
    }

    /// CROSSSLOT unless all keys are in one region.
    pub fn check_same_region(&self, keys: &[&[u8]]) -> Result<(), Frame> {
        if keys.len() > 1 && !self.shared.backend.same_region(keys) {
            return Err(Frame::error(CROSSSLOT));
        }
        Ok(())
    }
}

/// A command's one backend call inside a pipeline: handed to the segment's collector.
async fn through_pipeline(
    (deferred, request): (&pipeline::Deferred, usize),
    command: kv::Command,
) -> Result<kv::Response, Frame> {
    deferred
        .call(request, command)
        .await
        .map_err(backend_error_frame)
}

/// A reply for a response variant the command never yields: a backend bug, reported to the
/// client instead of panicking the connection.
pub(crate) fn unexpected(response: &kv::Response) -> Frame {
    tracing::error!(?response, "backend returned an unexpected response variant");
    Frame::error("ERR internal error: unexpected backend response")
}

/// Runs one request (`arguments[0]` is the command name; never empty). EXEC runs only here
/// (not in [`execute_in`]): it runs the queued commands through `execute_in`, and keeping it
/// out of there keeps the futures from being recursive.
pub(crate) async fn execute(
    shared: &Shared,
    session: &mut Session,
    arguments: Vec<Bytes>,
) -> Outcome {
    let index = match admit(session, &arguments) {
        Admission::Answer(outcome) => return outcome,
        Admission::Run(index) => index,
    };
    if COMMANDS[index].name == "exec" {
        let mut context = Context {
            shared,
            session,
            deferred: None,
        };
        return match transactions::exec(&mut context).await {
            Ok(frame) | Err(frame) => frame.into(),
        };
    }
    dispatch(shared, session, index, arguments, None).await
}

/// What [`admit`] decided about a request.
enum Admission {
    /// Answered already: refused, or queued inside MULTI.
    Answer(Outcome),
    /// Run the command at this index of [`COMMANDS`].
    Run(usize),
}

/// The checks every request goes through, in Redis's order (unknown command, arity,
/// authentication), then MULTI's queueing: inside a transaction every command but EXEC,
/// DISCARD, MULTI, WATCH, QUIT and RESET is queued and answered `+QUEUED`; a request refused
/// by a check (or one RaftKV cannot run inside a transaction, see [`transactions`]) is
/// answered with its error and aborts the transaction (EXEC answers EXECABORT).
fn admit(session: &mut Session, arguments: &[Bytes]) -> Admission {
    let Some(index) = lookup_index(&arguments[0]) else {
        return refuse(session, unknown_command(arguments));
    };
    let spec = &COMMANDS[index];
    // Before the arity and AUTH checks, as Redis sets a client's last command.
    session.client.touch(index);
    if !spec.arity_allows(arguments.len() as i64) {
        return refuse(session, wrong_arity(spec.name));
    }
    if !session.authenticated && !spec.flags.contains(&"no_auth") {
        return refuse(session, Frame::error(NOAUTH));
    }
    if session.transaction.is_some() && !transactions::runs_inside_multi(spec.name) {
        return match transactions::queue(session, spec.name, arguments) {
            Ok(frame) => Admission::Answer(frame.into()),
            Err(frame) => refuse(session, frame),
        };
    }
    Admission::Run(index)
}

/// A refusal: inside MULTI it also aborts the transaction, as Redis's `rejectCommand` does.
fn refuse(session: &mut Session, frame: Frame) -> Admission {
    if let Some(transaction) = session.transaction.as_mut() {
        transaction.aborted = true;
    }
    Admission::Answer(frame.into())
}

/// [`execute`], with the backend call collected by `deferred` (for request number `.1` of a
/// segment or of a transaction) when it is set.
async fn execute_in(
    shared: &Shared,
    session: &mut Session,
    arguments: Vec<Bytes>,
    deferred: Option<(&pipeline::Deferred, usize)>,
) -> Outcome {
    match admit(session, &arguments) {
        Admission::Answer(outcome) => outcome,
        Admission::Run(index) => dispatch(shared, session, index, arguments, deferred).await,
    }
}

/// Runs the admitted command at `index` of [`COMMANDS`].
async fn dispatch(
    shared: &Shared,
    session: &mut Session,
    index: usize,
    arguments: Vec<Bytes>,
    deferred: Option<(&pipeline::Deferred, usize)>,
) -> Outcome {
    let spec = &COMMANDS[index];
    let mut context = Context {
        shared,
        session,
        deferred,
    };
    let arguments = &arguments[1..];
    let result = match spec.name {
        "ping" => connection::ping(arguments),
        "echo" => Ok(Frame::Bulk(arguments[0].clone())),
        "quit" => return Outcome::ReplyAndClose(Frame::simple("OK")),
        "reset" => Ok(connection::reset(&mut context)),
        "select" => connection::select(arguments),
        "auth" => connection::auth(&mut context, arguments),
        "hello" => connection::hello(&mut context, arguments),
        "client" => connection::client(&mut context, arguments),
        "command" => server::command(arguments),
        "info" => Ok(server::info(&mut context, arguments).await),
        "dbsize" => server::dbsize(&mut context).await,
        "config" => server::config(&context, arguments),
        "type" => keys::key_type(&mut context, arguments).await,
        "ttl" => expiry::ttl(&mut context, arguments, false, false).await,
        "pttl" => expiry::ttl(&mut context, arguments, true, false).await,
        "expiretime" => expiry::ttl(&mut context, arguments, false, true).await,
        "pexpiretime" => expiry::ttl(&mut context, arguments, true, true).await,
        "expire" => expiry::expire(&mut context, arguments, Unit::Seconds, false, "expire").await,
        "pexpire" => {
            expiry::expire(
                &mut context,
                arguments,
                Unit::Milliseconds,
                false,
                "pexpire",
            )
            .await
        }
        "expireat" => {
            expiry::expire(&mut context, arguments, Unit::Seconds, true, "expireat").await
        }
        "pexpireat" => {
            expiry::expire(
                &mut context,
                arguments,
                Unit::Milliseconds,
                true,
                "pexpireat",
            )
            .await
        }
        "persist" => expiry::persist(&mut context, arguments).await,
        "exists" => keys::exists(&mut context, arguments).await,
        "del" | "unlink" => keys::del(&mut context, arguments).await,
        "scan" => keys::scan(&mut context, arguments).await,
        "keys" => keys::keys(&mut context, arguments).await,
        "rename" => keys::rename(&mut context, arguments, false).await,
        "renamenx" => keys::rename(&mut context, arguments, true).await,
        "copy" => keys::copy(&mut context, arguments).await,
        "object" => keys::object(&mut context, arguments).await,
        "memory" => keys::memory(&mut context, arguments).await,
        "get" => strings::get(&mut context, arguments).await,
        "set" => strings::set(&mut context, arguments).await,
        "setnx" => strings::setnx(&mut context, arguments).await,
        "getset" => strings::getset(&mut context, arguments).await,
        "getdel" => strings::getdel(&mut context, arguments).await,
        "mget" => strings::mget(&mut context, arguments).await,
        "mset" => strings::mset(&mut context, arguments).await,
        "msetnx" => strings::msetnx(&mut context, arguments).await,
        "append" => strings::append(&mut context, arguments).await,
        "strlen" => strings::strlen(&mut context, arguments).await,
        "getrange" => strings::getrange(&mut context, arguments).await,
        "setrange" => strings::setrange(&mut context, arguments).await,
        "incr" => strings::incr_by(&mut context, &arguments[0], 1).await,
        "decr" => strings::incr_by(&mut context, &arguments[0], -1).await,
        "incrby" => strings::incrby(&mut context, arguments, false).await,
        "decrby" => strings::incrby(&mut context, arguments, true).await,
        "incrbyfloat" => strings::incrbyfloat(&mut context, arguments).await,
        "setex" => expiry::setex(&mut context, arguments, Unit::Seconds, "setex").await,
        "psetex" => expiry::setex(&mut context, arguments, Unit::Milliseconds, "psetex").await,
        "getex" => expiry::getex(&mut context, arguments).await,
        "delifeq" => expiry::delifeq(&mut context, arguments).await,
        "hset" => hashes::hset(&mut context, arguments, "hset").await,
        "hmset" => hashes::hset(&mut context, arguments, "hmset").await,
        "hsetnx" => hashes::hsetnx(&mut context, arguments).await,
        "hget" => hashes::hget(&mut context, arguments).await,
        "hmget" => hashes::hmget(&mut context, arguments).await,
        "hgetall" => hashes::hgetall(&mut context, arguments).await,
        "hkeys" => hashes::hkeys_or_hvals(&mut context, arguments, true).await,
        "hvals" => hashes::hkeys_or_hvals(&mut context, arguments, false).await,
        "hdel" => hashes::hdel(&mut context, arguments).await,
        "hlen" => hashes::hlen(&mut context, arguments).await,
        "hexists" => hashes::hexists(&mut context, arguments).await,
        "hstrlen" => hashes::hstrlen(&mut context, arguments).await,
        "hincrby" => hashes::hincrby(&mut context, arguments).await,
        "hincrbyfloat" => hashes::hincrbyfloat(&mut context, arguments).await,
        "hrandfield" => hashes::hrandfield(&mut context, arguments).await,
        "hscan" => hashes::hscan(&mut context, arguments).await,
        "multi" => transactions::multi(&mut context),
        "discard" => transactions::discard(&mut context),
        "watch" => transactions::watch(&mut context, arguments).await,
        "unwatch" => Ok(transactions::unwatch(&mut context)),
        // EXEC runs in `execute` only; a queued or pipelined EXEC never reaches here.
        "exec" => Err(Frame::error("ERR EXEC without MULTI")),
        // Unreachable while every table row has an arm above; answering beats panicking.
        _ => Err(unknown_command(&[Bytes::from_static(spec.name.as_bytes())])),
    };
    match result {
        Ok(frame) | Err(frame) => frame.into(),
    }
}
