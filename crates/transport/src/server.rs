//! The receiving side: the `Raft` gRPC service. It decodes every message of every batch and
//! forwards it to the store; a message that does not decode is dropped and counted, never
//! allowed to end the stream or crash the server (one bad message must not cut off the
//! healthy traffic of every other region sharing the connection).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use api::pb::raft_server::{Raft, RaftServer};
use api::pb::{RaftBatch, RaftDone};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::codec;

/// Largest gRPC message (one `RaftBatch`) the server accepts. tonic's default of 4 MiB is
/// below a large snapshot chunk plus framing; keep senders' `max_batch_bytes` and snapshot
/// chunk size well under this.
pub const MAX_GRPC_MESSAGE_BYTES: usize = 64 << 20;

/// Counters of the receiving side, shared by every stream of one [`RaftIngress`].
#[derive(Debug, Default)]
pub struct IngressStats {
    batches: AtomicU64,
    received: AtomicU64,
    dropped_decode: AtomicU64,
    streams: AtomicU64,
}

/// A point-in-time copy of [`IngressStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngressStatsSnapshot {
    /// Batches received.
    pub batches: u64,
    /// Messages decoded and forwarded to the store.
    pub received: u64,
    /// Messages that failed to decode and were dropped.
    pub dropped_decode: u64,
    /// Streams accepted since start.
    pub streams: u64,
}

impl IngressStats {
    pub fn snapshot(&self) -> IngressStatsSnapshot {
        IngressStatsSnapshot {
            batches: self.batches.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            dropped_decode: self.dropped_decode.load(Ordering::Relaxed),
            streams: self.streams.load(Ordering::Relaxed),
        }
    }
}

/// Implements the `Raft` service: decodes inbound batches and forwards each message into
/// the store's inbound channel.
#[derive(Debug, Clone)]
pub struct RaftIngress {
    inbound: mpsc::Sender<raft::Message>,
    stats: Arc<IngressStats>,
}

impl RaftIngress {
    pub fn new(inbound: mpsc::Sender<raft::Message>) -> RaftIngress {
        RaftIngress {
            inbound,
            stats: Arc::default(),
        }
    }

    /// A handle on this service's counters; stays valid after the service is moved into a
    /// server.
    pub fn stats(&self) -> Arc<IngressStats> {
        self.stats.clone()
    }

    /// Wraps this service in the generated tonic server with our message size limit.
    pub fn into_server(self) -> RaftServer<RaftIngress> {
        RaftServer::new(self).max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
    }
}

/// The `Raft` service forwarding decoded messages into `inbound`. Use
/// [`RaftIngress::new`] + [`RaftIngress::into_server`] instead to keep a handle on the
/// counters.
pub fn raft_service(inbound: mpsc::Sender<raft::Message>) -> RaftServer<RaftIngress> {
    RaftIngress::new(inbound).into_server()
}

#[tonic::async_trait]
impl Raft for RaftIngress {
    async fn stream(
        &self,
        request: Request<Streaming<RaftBatch>>,
    ) -> Result<Response<RaftDone>, Status> {
        self.stats.streams.fetch_add(1, Ordering::Relaxed);
        let mut stream = request.into_inner();
        // A stream error (peer gone, malformed gRPC frame) ends only this stream; the
        // sender reconnects.
        while let Some(batch) = stream.message().await? {
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
            let from_store = batch.from_store;
            for raw in batch.messages {
                match codec::decode(&raw) {
                    Ok(msg) => {
                        // Awaiting here is the backpressure: a store that cannot keep up
                        // stops reading, HTTP/2 flow control stalls the sender, and its
                        // bounded queue starts dropping instead of memory growing here.
                        if self.inbound.send(msg).await.is_err() {
                            return Err(Status::unavailable("store is shutting down"));
                        }
                        self.stats.received.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        self.stats.dropped_decode.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(from_store, error = %e, len = raw.len(), "dropping undecodable raft message");
                    }
                }
            }
        }
        Ok(Response::new(RaftDone {}))
    }
}
