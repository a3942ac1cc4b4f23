//! Command dispatch: the command table, the per-connection [`Session`], the checks every
//! command goes through (unknown command, arity, authentication — in Redis's order), and one
//! module per command group, each with its handlers:
//! - [`connection`]: PING, ECHO, QUIT, RESET, SELECT, AUTH, CLIENT, HELLO (RESP3).
//! - [`server`]: COMMAND, INFO, DBSIZE, CONFIG GET.
//! - [`keys`]: TYPE, TTL, PTTL, EXISTS, DEL, UNLINK, SCAN.
//! - [`strings`]: GET, SET, SETNX, GETSET, GETDEL, MGET, MSET, MSETNX, APPEND, STRLEN,
//!   GETRANGE, SETRANGE, INCR, INCRBY, DECR, DECRBY, INCRBYFLOAT.
//! - [`pipeline`]: pipelined requests executed together, one log entry per region.
//!
//! Every handler gets the arguments after the command name, already arity-checked, and
//! answers with one [`Frame`] whatever protocol the connection speaks: a reply Redis 7 sends
//! as a RESP3 map, set, double or verbatim string is built as that type, and the connection
//! downgrades it to Redis's RESP2 form when it speaks RESP2 (see [`crate::frame`]).

mod connection;
mod keys;
mod pipeline;

pub(crate) use pipeline::{request_bytes, Job, Pipeline, Segment, MAX_SEGMENTS_IN_FLIGHT};

pub(crate) use keys::CursorTable;
mod server;
mod strings;

use std::sync::Arc;

use bytes::Bytes;

use crate::backend::BackendError;
use crate::clients::ClientRecord;
use crate::config::{RespConfig, UNAUTHENTICATED_MAX_ARRAY_LEN, UNAUTHENTICATED_MAX_BULK_BYTES};
use crate::frame::{parse_i64, Frame, Protocol, RequestLimits};
use crate::server::Shared;

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
const READ: &[&str] = &["readonly", "fast"];
const WRITE: &[&str] = &["write", "denyoom"];
const FAST_WRITE: &[&str] = &["write", "denyoom", "fast"];
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

/// Runs one request (`arguments[0]` is the command name; never empty).
pub(crate) async fn execute(
    shared: &Shared,
    session: &mut Session,
    arguments: Vec<Bytes>,
) -> Outcome {
    execute_in(shared, session, arguments, None).await
}

/// [`execute`], with the backend call collected by `deferred` (for request number `.1` of a
/// segment) when it is set.
async fn execute_in(
    shared: &Shared,
    session: &mut Session,
    arguments: Vec<Bytes>,
    deferred: Option<(&pipeline::Deferred, usize)>,
) -> Outcome {
    let Some(index) = lookup_index(&arguments[0]) else {
        return unknown_command(&arguments).into();
    };
    let spec = &COMMANDS[index];
    // Before the arity and AUTH checks, as Redis sets a client's last command.
    session.client.touch(index);
    let count = arguments.len() as i64;
    if !spec.arity_allows(count) {
        return wrong_arity(spec.name).into();
    }
    if !session.authenticated && !spec.flags.contains(&"no_auth") {
        return Frame::error(NOAUTH).into();
    }
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
        "ttl" | "pttl" => keys::ttl(&mut context, arguments).await,
        "exists" => keys::exists(&mut context, arguments).await,
        "del" | "unlink" => keys::del(&mut context, arguments).await,
        "scan" => keys::scan(&mut context, arguments).await,
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
        // Unreachable while every table row has an arm above; answering beats panicking.
        _ => Err(unknown_command(&[Bytes::from_static(spec.name.as_bytes())])),
    };
    match result {
        Ok(frame) | Err(frame) => frame.into(),
    }
}
