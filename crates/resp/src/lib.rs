//! # resp — RaftKV's Redis (RESP2 and RESP3) front end
//!
//! A Redis protocol server laid out like mini-redis: a task per connection, a listener and a
//! shutdown future passed in, and everything it executes going through one trait, [`Backend`],
//! so this crate does not depend on the server. Multi-key commands whose keys span regions are
//! refused with `CROSSSLOT`, never half applied.
//!
//! ## Module map
//! - [`frame`]: [`Frame`] (encode in RESP2 or RESP3, see [`Protocol`]; general parse) and
//!   [`frame::parse_request`], the bounded request parser (multibulk and inline), with Redis's
//!   protocol error texts.
//! - [`connection`]: [`connection::Connection`], buffered reads for pipelining, one write per
//!   drained pipeline.
//! - `cmd::pipeline`: the requests a client pipelined run together, one
//!   [`kv::Command::Pipeline`] per region (one log entry), regions concurrently.
//! - [`backend`]: the [`Backend`] trait and its contract, [`BackendError`].
//! - [`config`]: [`RespConfig`] and every limit as a named constant.
//! - `server`: [`serve`] — accept loop, connection limit, sessions, graceful shutdown.
//! - `clients`: what CLIENT INFO / CLIENT LIST show, and the bounded registry of this front
//!   end's open connections.
//! - `cmd`: the command table and dispatch, one module per group (`connection`, `server`,
//!   `keys`, `expiry`, `strings`, `hashes`, `transactions`); Redis's error texts live there.
//!
//! ## Contract with the server
//! 1. Implement [`Backend`] (see its "to ensure correctness" section).
//! 2. Bind a `TcpListener` and call [`serve`] with a shutdown future; it returns after every
//!    connection has finished its current command.
//!
//! ## Known deviations from Redis
//! - Strings and hashes exist (TYPE is `string`, `hash` or `none`; WRONGTYPE across them);
//!   no lists, sets, sorted sets or streams. Expiry is Redis's (SET EX/PX/EXAT/PXAT/KEEPTTL,
//!   EXPIRE & co. with NX/XX/GT/LT, TTL, PERSIST, GETEX), with deadlines in log time: a
//!   relative time is resolved by the log entry that applies it and TTL is computed at the
//!   serving leader's clock (see `cmd::expiry`). EXPIRE's `XX LT` together is refused.
//!   DELIFEQ (Valkey 9) deletes a key only if it holds a given value.
//! - SCAN cursors are integers naming server-side resume keys (see `cmd::keys`); a front end
//!   remembers the newest 10,000 (SCAN and HSCAN together) and a forgotten one answers
//!   `ERR invalid cursor`. KEYS is bounded: past 100,000 keys examined it answers an error
//!   (use SCAN). OBJECT ENCODING and MEMORY USAGE are estimates in Redis's terms; OBJECT
//!   FREQ/IDLETIME/REFCOUNT are refused.
//! - Multi-key commands (MGET, MSET, MSETNX, DEL, UNLINK, EXISTS, RENAME, RENAMENX, COPY, WATCH
//!   and a whole MULTI/EXEC) must keep their keys in one region: they are then one atomic
//!   step, otherwise they are refused with CROSSSLOT.
//! - MULTI/EXEC (see `cmd::transactions`): EXEC is one log entry; only key commands that are
//!   one state-machine command can be queued (KEYS, SCAN, INFO, CLIENT, ... inside MULTI are
//!   refused and abort the transaction). WATCH of an absent key may also abort EXEC when
//!   another key of its region was deleted meanwhile. HRANDFIELD's negative count is bounded.
//! - RESP3 after `HELLO 3` (RESP2 by default, and again after RESET): replies use RESP3's
//!   types where Redis 7 does (nulls, maps for HELLO, CONFIG GET and COMMAND DOCS, sets in
//!   COMMAND's entries, verbatim strings for INFO and CLIENT INFO/LIST). No push messages:
//!   there is no pub/sub and no client tracking (CLIENT TRACKING is an unknown subcommand).
//!   HELLO reports `version` 7.2.0 (`RespConfig::redis_version`), `mode` standalone, `role`
//!   master, no modules.
//! - The only user is `default` (no ACL users): `AUTH`/`HELLO AUTH` with another name is
//!   WRONGPASS. A HELLO that fails changes nothing (Redis keeps an AUTH that succeeded before
//!   a bad SETNAME).
//! - CLIENT LIST lists the connections of this server's front end only, not the cluster's;
//!   its memory and buffer fields are 0. CLIENT NO-EVICT / NO-TOUCH are accepted and change
//!   nothing. COMMAND DOCS gives each command's summary, since and group only; COMMAND INFO
//!   has no tips, key specs or subcommands. Only database 0.
//! - Commands of one pipeline on different regions run concurrently: the client sees its own
//!   commands take effect in order, but another client may see two of them (on different keys)
//!   in either order — as with a pipeline spread over Redis Cluster's nodes.

pub mod backend;
mod clients;
mod cmd;
pub mod config;
pub mod connection;
pub mod frame;
mod server;

pub use backend::{Backend, BackendError, BoxFuture};
pub use config::RespConfig;
pub use frame::{Frame, Protocol, ProtocolError};
pub use server::serve;
