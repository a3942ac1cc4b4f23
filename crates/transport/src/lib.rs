//! # transport — RaftKV's store-to-store message transport
//!
//! Between any two stores one long-lived TCP connection carries the Raft messages of every
//! region, batched into checksummed frames; snapshot chunks travel on a connection of their
//! own, throttled on both ends (DESIGN.md, layer 6): a sending store caps its concurrent
//! snapshot connections and its snapshot bytes per second, a receiving store the snapshot
//! connections it reads at once and their bytes per second (TiKV's
//! `concurrent-send-snap-limit`, `concurrent-recv-snap-limit`, `snap-io-max-bytes-per-sec`).
//!
//! Module map:
//! - [`codec`]: the compact, versioned binary encoding of one [`raft::Message`], with a
//!   decoder that treats its input as hostile (bounded counts, no panics).
//! - [`wire`]: the connection preface (magic `RKVRAFT2`, the dialer's store id and cluster
//!   id) and the frame format (length, CRC-32C, messages).
//! - [`client`]: [`Transport`], the sending side. Per destination store: a bounded queue
//!   (overflow is dropped and counted, since Raft tolerates loss and the caller must never
//!   block), a task that drains it into frames on one connection (keepalives when idle,
//!   bounded writes) and reconnects with exponential backoff, and a second task for
//!   snapshot chunks gated by a semaphore (`snapshot_concurrency`) and paced by a token
//!   bucket shared by all destinations (`snapshot_max_bytes_per_sec`, 100 MiB/s by default).
//! - [`server`]: [`serve_peer_listener`] / [`RaftIngress`], the receiving side: tells
//!   store-to-store connections from gRPC ones on the shared peer port, refuses (closes at
//!   once, counts, logs) those from another cluster or from an older version's preface,
//!   decodes each message, drops and counts the ones that do not decode, and hands the rest
//!   to the store. A connection carrying snapshot chunks first takes one of the store's
//!   snapshot permits (4 by default; over the cap it waits, not reading) and pays every
//!   frame into the store's receiving token bucket
//!   ([`RaftIngress::with_snapshot_limits`]).
//! - [`throttle`]: [`TokenBucket`], the byte-rate limit of both ends: refills at a rate up to
//!   a burst (one second's worth, at least one frame), hands bytes out in the order asked,
//!   rate 0 = unlimited; its arithmetic takes the time as an argument.
//!
//! Cluster check: the dialer sends [`TransportConfig::cluster_id`] in its preface, the
//! acceptor compares it with [`RaftIngress::with_cluster_id`]'s; 0 on either side means
//! unknown and is accepted.
//!
//! Delivery contract: best effort, FIFO per destination for non-snapshot messages (one
//! queue, one connection at a time); messages may be lost on queue overflow or when a
//! connection breaks. Snapshot chunks are FIFO among themselves but not ordered with the
//! other messages, and may wait: for a sending permit, for the sending rate (over any
//! interval `t`, a store writes at most `snapshot_max_bytes_per_sec × t` plus one burst of
//! snapshot frames), for a receiving permit, and for the receiving rate. A wait drops
//! nothing itself: chunks wait in memory or in TCP buffers. But chunks queued behind it
//! beyond `snapshot_queue_capacity` are dropped as ever, and a wait longer than a
//! connection's timeouts (a sender's write timeout of `keepalive_interval`, the receiver's
//! [`IDLE_TIMEOUT`](server::IDLE_TIMEOUT)) ends the connection and loses what it carried.
//! Raft's own retransmission covers all of this.

pub mod client;
pub mod codec;
pub mod server;
pub mod throttle;
pub mod wire;

pub use client::{Transport, TransportConfig, TransportStats, DEFAULT_SNAPSHOT_MAX_BYTES_PER_SEC};
pub use codec::{decode, encode, CodecError};
pub use server::{
    serve_peer_listener, IngressStats, IngressStatsSnapshot, RaftIngress, Rejected,
    DEFAULT_SNAPSHOT_RECV_CONCURRENCY,
};
pub use throttle::TokenBucket;

use thiserror::Error;

/// Errors of the transport's own setup and connections. Send-side failures are not
/// reported per message (see the delivery contract above); they show in the stats.
#[derive(Debug, Error)]
pub enum TransportError {
    #[error("the transport must be created inside a tokio runtime")]
    NoRuntime,
    #[error("invalid transport config: {0}")]
    InvalidConfig(&'static str),
    #[error("invalid peer address {0:?}: {1}")]
    BadAddress(String, String),
    #[error("connecting to {0} failed: {1}")]
    Connect(String, String),
}
