//! # resp — RaftKV's Redis (RESP2) front end
//!
//! A RESP2 server laid out like mini-redis: a task per connection, a listener and a shutdown
//! future passed in, and everything it executes going through one trait, [`Backend`], so this
//! crate does not depend on the server. Multi-key commands whose keys span regions are refused
//! with `CROSSSLOT`, never half applied.
//!
//! ## Module map
//! - [`frame`]: [`Frame`] (encode, general parse) and [`frame::parse_request`], the bounded
//!   request parser (multibulk and inline), with Redis's protocol error texts.
//! - [`connection`]: [`connection::Connection`], buffered reads for pipelining, one write per
//!   drained pipeline.
//! - `cmd::pipeline`: the requests a client pipelined run together, one
//!   [`kv::Command::Pipeline`] per region (one log entry), regions concurrently.
//! - [`backend`]: the [`Backend`] trait and its contract, [`BackendError`].
//! - [`config`]: [`RespConfig`] and every limit as a named constant.
//! - `server`: [`serve`] — accept loop, connection limit, sessions, graceful shutdown.
//! - `cmd`: the command table and dispatch, one module per group (`connection`, `server`,
//!   `keys`, `strings`); Redis's error texts live there.
//!
//! ## Contract with the server
//! 1. Implement [`Backend`] (see its "to ensure correctness" section).
//! 2. Bind a `TcpListener` and call [`serve`] with a shutdown future; it returns after every
//!    connection has finished its current command.
//!
//! ## Known deviations from Redis
//! - Only strings exist (TYPE is `string` or `none`; no WRONGTYPE), keys never expire (TTL is
//!   -1/-2; SET EX/PX/EXAT/PXAT/KEEPTTL is refused with an explicit error).
//! - SCAN cursors are integers naming server-side resume keys (see `cmd::keys`); a front end
//!   remembers the newest 10,000 and a forgotten one answers `ERR invalid cursor`.
//! - Multi-key commands (MGET, MSET, MSETNX, DEL, UNLINK, EXISTS) must keep their keys in one
//!   region: they are then one atomic step, otherwise they are refused with CROSSSLOT.
//! - Only RESP2: `HELLO 3` answers NOPROTO. Only database 0.
//! - Commands of one pipeline on different regions run concurrently: the client sees its own
//!   commands take effect in order, but another client may see two of them (on different keys)
//!   in either order — as with a pipeline spread over Redis Cluster's nodes.

pub mod backend;
mod cmd;
pub mod config;
pub mod connection;
pub mod frame;
mod server;

pub use backend::{Backend, BackendError, BoxFuture};
pub use config::RespConfig;
pub use frame::{Frame, ProtocolError};
pub use server::serve;
