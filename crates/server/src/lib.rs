//! # server — the tokio shell around one store
//!
//! A [`Server`] runs one [`store::Store`] of [`kv::KvStateMachine`] regions:
//! - the store runs on its own thread (`store_loop`), which owns it, ticks it, feeds it
//!   messages and requests from a bounded channel, runs its Ready rounds (one log write and
//!   one fsync for all regions per round) and hands completions back to waiting requests;
//! - the `Kv` gRPC service ([`service`]) turns client requests into state-machine commands,
//!   proposes writes on the region leader (forwarding once to the leader's store when this
//!   store does not lead) and serves linearizable reads on the leader, under its lease or
//!   with ReadIndex (`ServerConfig::read_mode`; lease by default);
//! - the `transport` crate carries Raft messages between stores, one TCP connection per pair.
//!
//! ## Module map
//! - [`config`]: `ServerConfig` and the `1=host:port,...` initial-cluster syntax.
//! - [`adapter`]: `HostedSm`, the state machine of every hosted group (`placement::Hosted`).
//! - `store_loop`: the store thread and its command channel.
//! - [`service`]: the `Kv` gRPC service, request validation, forwarding, error mapping.
//! - [`disk`]: bytes of the data directory on disk by kind (log, snapshots).
//! - [`metrics`]: counters and latency histograms in Prometheus text format.
//! - [`resp_backend`]: the Redis front end's `resp::Backend`, one `ENCODED` Kv request per
//!   Redis command (so it is routed and forwarded like any gRPC request), with retries.
//! - [`run`]: starting and stopping a server on passed-in listeners.

pub mod adapter;
pub mod admin;
pub mod cluster_view;
pub mod config;
pub mod disk;
pub mod heartbeat;
pub mod identity;
pub mod join;
pub mod metrics;
pub mod placement_svc;
pub mod resp_backend;
pub mod run;
pub mod service;
mod store_loop;

pub use config::{parse_initial_cluster, Scheduling, ServerConfig};
pub use run::{Server, ServerHandle, StartError};
