//! The receiving side. [`PeerListener`] accepts on a store's peer port and tells the two
//! protocols spoken there apart by their first bytes: store-to-store connections (the
//! [`wire`](crate::wire) preface) are served here; anything else (gRPC from a forwarding
//! server or a client) is handed on to the caller's gRPC server. A served connection decodes
//! every message of every frame and hands it to the store through [`RaftIngress`]; a message
//! that does not decode is dropped and counted, never allowed to end the connection or crash
//! the server (one bad message must not cut off the healthy traffic of every other region
//! sharing the connection). A frame that fails its checksum ends the connection.
//!
//! The preface carries the dialer's cluster id: a connection from another cluster (both ids
//! non-zero and different), or from a store of an older version whose preface has no
//! cluster id, is refused before anything of it is read past the preface, counted in
//! [`IngressStatsSnapshot::wrong_cluster`] and logged once per connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raft::Message;
use tokio::io::{AsyncWriteExt, BufReader};
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
    wrong_cluster: AtomicU64,
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
    /// Connections refused because the dialer belongs to another cluster (its preface's
    /// cluster id and ours both non-zero and different), or cannot say (it sent the older
    /// `RKVRAFT1` preface, without a cluster id). Also counted in `streams`.
    pub wrong_cluster: u64,
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
            wrong_cluster: self.wrong_cluster.load(Ordering::Relaxed),
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

/// Where decoded messages go, the cluster connections must belong to, and the counters of
/// everything received.
#[derive(Clone)]
pub struct RaftIngress {
    sink: Sink,
    stats: Arc<IngressStats>,
    /// This store's cluster id; 0 = unknown, accepting every cluster.
    cluster_id: u64,
}

impl std::fmt::Debug for RaftIngress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftIngress")
            .field("cluster_id", &self.cluster_id)
            .field("stats", &self.stats.snapshot())
            .finish()
    }
}

impl RaftIngress {
    /// Messages go into `inbound`, waiting for space. Cluster id 0 (accepts every cluster)
    /// until [`RaftIngress::with_cluster_id`].
    pub fn new(inbound: mpsc::Sender<Message>) -> RaftIngress {
        RaftIngress {
            sink: Sink::Channel(inbound),
            stats: Arc::default(),
            cluster_id: 0,
        }
    }

    /// Messages go through `sink`, which must not block. Cluster id 0 (accepts every
    /// cluster) until [`RaftIngress::with_cluster_id`].
    pub fn direct(sink: Arc<SinkFn>) -> RaftIngress {
        RaftIngress {
            sink: Sink::Direct(sink),
            stats: Arc::default(),
            cluster_id: 0,
        }
    }

    /// Refuse connections from stores of another cluster than `cluster_id`: a connection
    /// whose preface carries a different, non-zero cluster id is closed at once, nothing of
    /// it delivered. 0 (the default) accepts every cluster; a dialer's 0 is accepted too.
    pub fn with_cluster_id(mut self, cluster_id: u64) -> RaftIngress {
        self.cluster_id = cluster_id;
        self
    }

    /// The cluster id connections are checked against; 0 = no check.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
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
            // Refused: returning drops both halves, which closes the connection at once.
            Err(wire::FrameError::WrongCluster {
                from_store,
                theirs,
                ours,
            }) => {
                self.stats.wrong_cluster.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    from_store,
                    their_cluster_id = theirs,
                    our_cluster_id = ours,
                    "refusing a raft connection from a store of another cluster"
                );
            }
            Err(wire::FrameError::OldVersion { from_store }) => {
                self.stats.wrong_cluster.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    from_store,
                    our_cluster_id = self.cluster_id,
                    "refusing a raft connection from a store running an older RaftKV version \
                     (transport preface RKVRAFT1, without a cluster id): upgrade it"
                );
            }
            Err(e) => {
                if !matches!(e, wire::FrameError::Io(_)) {
                    self.stats.broken.fetch_add(1, Ordering::Relaxed);
                }
                tracing::debug!(error = %e, "raft connection ended");
            }
        }
    }

    /// Reads the preface and checks the dialer's cluster; the dialer's store id.
    async fn read_preface<R: tokio::io::AsyncRead + Unpin>(
        &self,
        rd: &mut R,
    ) -> Result<u64, wire::FrameError> {
        let p = tokio::time::timeout(SNIFF_TIMEOUT, wire::read_preface(rd))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if p.cluster_id != 0 && self.cluster_id != 0 && p.cluster_id != self.cluster_id {
            return Err(wire::FrameError::WrongCluster {
                from_store: p.from_store,
                theirs: p.cluster_id,
                ours: self.cluster_id,
            });
        }
        Ok(p.from_store)
    }

    async fn read_all<R: tokio::io::AsyncRead + Unpin>(
        &self,
        rd: &mut R,
    ) -> Result<(), wire::FrameError> {
        let from_store = self.read_preface(rd).await?;
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
    // Only the magic decides: a preface of either version is ours (the first version's to
    // be refused with a clear reason by the ingress, not handed to gRPC).
    let mut buf = [0u8; wire::MAGIC_LEN];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Sniffed::Gone,
            Ok(Ok(n)) => n,
        };
        if !wire::is_magic_prefix(&buf[..n]) {
            return Sniffed::Other;
        }
        if n == wire::MAGIC_LEN {
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
