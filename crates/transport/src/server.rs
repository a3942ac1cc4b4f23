//! The receiving side. [`PeerListener`] accepts on a store's peer port and tells the two
//! protocols spoken there apart by their first bytes: store-to-store connections (the
//! [`wire`](crate::wire) preface) are served here; anything else (gRPC from a forwarding
//! server or a client) is handed on to the caller's gRPC server. A served connection decodes
//! every message of every frame and hands it to the store through [`RaftIngress`]; a message
//! that does not decode is dropped and counted, never allowed to end the connection or crash
//! the server (one bad message must not cut off the healthy traffic of every other region
//! sharing the connection). A frame that fails its checksum ends the connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raft::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use types::StoreId;

use crate::{codec, wire};

/// How long an accepted connection may take to show its first bytes.
const SNIFF_TIMEOUT: Duration = Duration::from_secs(10);
/// A store-to-store connection silent for this long is closed: the dialer sends a keepalive
/// at least every `TransportConfig::keepalive_interval` (10 s by default), so this only
/// ends connections whose dialer vanished without closing (power loss, partition).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Accepted connections waiting for the gRPC server to take them.
const HANDOFF_QUEUE: usize = 128;

/// Counters of the receiving side, shared by every connection of one [`RaftIngress`].
#[derive(Debug, Default)]
pub struct IngressStats {
    batches: AtomicU64,
    received: AtomicU64,
    dropped_decode: AtomicU64,
    dropped_full: AtomicU64,
    streams: AtomicU64,
    broken: AtomicU64,
}

/// A point-in-time copy of [`IngressStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngressStatsSnapshot {
    /// Frames received (keepalives included).
    pub batches: u64,
    /// Messages decoded and handed to the store.
    pub received: u64,
    /// Messages that failed to decode and were dropped.
    pub dropped_decode: u64,
    /// Messages dropped because the store's queue was full.
    pub dropped_full: u64,
    /// Store-to-store connections accepted since start.
    pub streams: u64,
    /// Connections ended by a framing error (bad preface, checksum, length).
    pub broken: u64,
}

impl IngressStats {
    pub fn snapshot(&self) -> IngressStatsSnapshot {
        IngressStatsSnapshot {
            batches: self.batches.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            dropped_decode: self.dropped_decode.load(Ordering::Relaxed),
            dropped_full: self.dropped_full.load(Ordering::Relaxed),
            streams: self.streams.load(Ordering::Relaxed),
            broken: self.broken.load(Ordering::Relaxed),
        }
    }
}

/// Why a message could not be handed to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// The store's queue is full; the message is dropped (Raft retransmits).
    Full,
    /// The store is gone; the connection ends.
    Closed,
}

/// A synchronous hand-off into the store (the server's bounded store channel), with the
/// store the message came from (the connection's preface names it): a replica that does not
/// know its peers yet answers there.
pub type SinkFn = dyn Fn(StoreId, Message) -> Result<(), Rejected> + Send + Sync;

#[derive(Clone)]
enum Sink {
    /// Awaits space: backpressure reaches the sender through TCP (tests use this; the
    /// sending store is not passed on).
    Channel(mpsc::Sender<Message>),
    /// Never waits: a full store queue drops the message. Used by the server, where this
    /// saves a task hand-off per message on the path of every write.
    Direct(Arc<SinkFn>),
}

/// Where decoded messages go, and the counters of everything received.
#[derive(Clone)]
pub struct RaftIngress {
    sink: Sink,
    stats: Arc<IngressStats>,
}

impl std::fmt::Debug for RaftIngress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftIngress")
            .field("stats", &self.stats.snapshot())
            .finish()
    }
}

impl RaftIngress {
    /// Messages go into `inbound`, waiting for space.
    pub fn new(inbound: mpsc::Sender<Message>) -> RaftIngress {
        RaftIngress {
            sink: Sink::Channel(inbound),
            stats: Arc::default(),
        }
    }

    /// Messages go through `sink`, which must not block.
    pub fn direct(sink: Arc<SinkFn>) -> RaftIngress {
        RaftIngress {
            sink: Sink::Direct(sink),
            stats: Arc::default(),
        }
    }

    /// A handle on this ingress's counters; stays valid after the ingress is moved.
    pub fn stats(&self) -> Arc<IngressStats> {
        self.stats.clone()
    }

    async fn deliver(&self, from: StoreId, m: Message) -> Result<(), Rejected> {
        let r = match &self.sink {
            Sink::Channel(tx) => tx.send(m).await.map_err(|_| Rejected::Closed),
            Sink::Direct(f) => f(from, m),
        };
        match r {
            Ok(()) => {
                self.stats.received.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(Rejected::Full) => {
                self.stats.dropped_full.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(Rejected::Closed) => Err(Rejected::Closed),
        }
    }

    /// Serves one store-to-store connection whose preface has not been read yet, until the
    /// dialer closes it, it breaks, it idles past [`IDLE_TIMEOUT`], or `shutdown` turns true.
    pub async fn serve_connection(&self, stream: TcpStream, mut shutdown: watch::Receiver<bool>) {
        self.stats.streams.fetch_add(1, Ordering::Relaxed);
        let (rd, mut wr) = stream.into_split();
        let mut rd = BufReader::with_capacity(64 << 10, rd);
        let served = tokio::select! {
            r = self.read_all(&mut rd) => r,
            _ = shutdown.wait_for(|v| *v) => return,
        };
        match served {
            Ok(()) => {
                // End of input and everything handed over: say so by closing our side
                // (a snapshot sender holds its permit until it sees this).
                let _ = wr.shutdown().await;
            }
            Err(e) => {
                if !matches!(e, wire::FrameError::Io(_)) {
                    self.stats.broken.fetch_add(1, Ordering::Relaxed);
                }
                tracing::debug!(error = %e, "raft connection ended");
            }
        }
    }

    async fn read_all<R: tokio::io::AsyncRead + Unpin>(
        &self,
        rd: &mut R,
    ) -> Result<(), wire::FrameError> {
        let mut preface = [0u8; wire::PREFACE_LEN];
        tokio::time::timeout(SNIFF_TIMEOUT, rd.read_exact(&mut preface))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let from_store = wire::parse_preface(&preface)?;
        let mut payload = Vec::new();
        loop {
            let more = tokio::time::timeout(IDLE_TIMEOUT, wire::read_frame(rd, &mut payload))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            if !more {
                return Ok(());
            }
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
            for raw in wire::messages(&payload) {
                let raw = raw?;
                match codec::decode(raw) {
                    Ok(msg) => {
                        if self.deliver(StoreId(from_store), msg).await.is_err() {
                            return Err(std::io::Error::other("the store is shutting down").into());
                        }
                    }
                    Err(e) => {
                        self.stats.dropped_decode.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(from_store, error = %e, len = raw.len(), "dropping undecodable raft message");
                    }
                }
            }
        }
    }
}

/// What the first bytes of a connection say it is.
enum Sniffed {
    Raft,
    Other,
    Gone,
}

async fn sniff(stream: &TcpStream) -> Sniffed {
    let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
    let mut buf = [0u8; wire::MAGIC.len()];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Sniffed::Gone,
            Ok(Ok(n)) => n,
        };
        if buf[..n] != wire::MAGIC[..n] {
            return Sniffed::Other;
        }
        if n == wire::MAGIC.len() {
            return Sniffed::Raft;
        }
        // A prefix of the magic so far: wait for the rest (peek does not consume, so
        // waiting on readiness again would spin).
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Accepts on a peer port: store-to-store connections are served by `ingress`; every other
/// connection is yielded by the returned stream, for a gRPC server's `serve_with_incoming`.
/// Every accepted socket has Nagle's algorithm off. Stops when `shutdown` turns true or the
/// returned stream is dropped.
pub fn serve_peer_listener(
    listener: TcpListener,
    ingress: RaftIngress,
    shutdown: watch::Receiver<bool>,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TcpStream>> {
    let (tx, rx) = mpsc::channel(HANDOFF_QUEUE);
    let mut stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.wait_for(|v| *v) => return,
                _ = tx.closed() => return,
            };
            let stream = match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "peer accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let tx = tx.clone();
            let ingress = ingress.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                match sniff(&stream).await {
                    Sniffed::Raft => ingress.serve_connection(stream, shutdown).await,
                    Sniffed::Other => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Sniffed::Gone => {}
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
