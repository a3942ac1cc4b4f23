//! # transport — RaftKV's store-to-store message transport
//!
//! Between any two stores one long-lived gRPC stream (`raftkv.Raft/Stream`) carries the
//! Raft messages of every region, batched; snapshot chunks travel on a stream of their own,
//! with a transport-wide cap on concurrent snapshot streams (DESIGN.md, layer 6).
//!
//! Module map:
//! - [`codec`]: the compact, versioned binary encoding of one [`raft::Message`], with a
//!   decoder that treats its input as hostile (bounded counts, no panics).
//! - [`client`]: [`Transport`], the sending side. Per destination store: a bounded queue
//!   (overflow is dropped and counted, since Raft tolerates loss and the caller must never
//!   block), a task that drains it into `RaftBatch`es on one stream and reconnects with
//!   exponential backoff, and a second task for snapshot chunks gated by a semaphore.
//! - [`server`]: [`RaftIngress`] / [`raft_service`], the receiving side: decodes each
//!   message, drops and counts the ones that do not decode, and forwards the rest into the
//!   store's channel with backpressure.
//!
//! Delivery contract: best effort, FIFO per destination for non-snapshot messages (one
//! queue, one stream at a time); messages may be lost on queue overflow or when a
//! connection breaks. Snapshot chunks are FIFO among themselves but not ordered with the
//! other messages. Raft's own retransmission covers all of this.

pub mod client;
pub mod codec;
pub mod server;

pub use client::{Transport, TransportConfig, TransportStats};
pub use codec::{decode, encode, CodecError};
pub use server::{raft_service, IngressStats, IngressStatsSnapshot, RaftIngress};

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
