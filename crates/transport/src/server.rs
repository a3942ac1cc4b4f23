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
//!
//! **Snapshot throttling** (TiKV's `concurrent-recv-snap-limit` and
//! `snap-io-max-bytes-per-sec`, per receiving store; [`RaftIngress::with_snapshot_limits`]).
//! A connection becomes a snapshot connection at its first snapshot message (senders give
//! snapshot chunks a connection of their own and send nothing else on it) and stays one
//! until it ends. Before handing that message on it takes one of the store's snapshot
//! permits, held until the connection ends; a connection over the cap **waits** for a permit
//! without reading further (the frame it read stays in memory, the rest of the sender's
//! chunks back up over TCP; Raft only sends the next chunk of a transfer after the previous
//! one arrived). Every frame of a snapshot connection is paid for in the store's receiving
//! token bucket (separate from the sending one, same rate) before its messages are handed
//! on and the next frame is read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raft::{Message, MessageBody};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use types::StoreId;

use crate::client::{DEFAULT_MAX_BATCH_BYTES, DEFAULT_SNAPSHOT_MAX_BYTES_PER_SEC};
use crate::throttle::TokenBucket;
use crate::{codec, wire, TransportError};

/// How long an accepted connection may take to show its first bytes.
const SNIFF_TIMEOUT: Duration = Duration::from_secs(10);
/// A store-to-store connection silent for this long is closed: the dialer sends a keepalive
/// at least every `TransportConfig::keepalive_interval` (10 s by default), so this only
/// ends connections whose dialer vanished without closing (power loss, partition).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Accepted connections waiting for the gRPC server to take them.
const HANDOFF_QUEUE: usize = 128;
/// Most snapshot connections a store reads at once unless
/// [`RaftIngress::with_snapshot_limits`] says otherwise (TiKV's `concurrent-recv-snap-limit`).
pub const DEFAULT_SNAPSHOT_RECV_CONCURRENCY: usize = 4;
/// The smallest burst of the receiving token bucket: the largest frame a sender with the
/// default config writes (`TransportConfig::max_batch_bytes`), so that after an idle spell
/// one frame is read without waiting even at a low rate.
pub const SNAPSHOT_RECV_MIN_BURST_BYTES: u64 = DEFAULT_MAX_BATCH_BYTES as u64;

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
    snapshot_recv_active: AtomicU64,
    snapshot_recv_peak: AtomicU64,
    snapshot_recv_waiting: AtomicU64,
    snapshot_bytes_received: AtomicU64,
    /// Microseconds, so that many sub-millisecond waits still add up.
    snapshot_recv_throttled_us: AtomicU64,
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
    /// Snapshot connections being read right now (each holds a snapshot permit).
    pub snapshot_recv_active: u64,
    /// Most snapshot connections ever read at once; never above the ingress's snapshot
    /// concurrency.
    pub snapshot_recv_peak: u64,
    /// Snapshot connections waiting for a permit right now (over the cap, not reading).
    pub snapshot_recv_waiting: u64,
    /// Bytes of frames read on snapshot connections (framing included): what the
    /// receiving byte-rate limit meters.
    pub snapshot_bytes_received: u64,
    /// Milliseconds snapshot connections spent waiting for the receiving byte-rate limit,
    /// summed over connections.
    pub snapshot_recv_throttled_ms: u64,
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
            snapshot_recv_active: self.snapshot_recv_active.load(Ordering::Relaxed),
            snapshot_recv_peak: self.snapshot_recv_peak.load(Ordering::Relaxed),
            snapshot_recv_waiting: self.snapshot_recv_waiting.load(Ordering::Relaxed),
            snapshot_bytes_received: self.snapshot_bytes_received.load(Ordering::Relaxed),
            snapshot_recv_throttled_ms: self.snapshot_recv_throttled_us.load(Ordering::Relaxed)
                / 1000,
        }
    }
}

/// The counters of [`IngressStats`] that go up and down.
#[derive(Debug, Clone, Copy)]
enum Gauge {
    SnapshotRecvWaiting,
    SnapshotRecvActive,
}

impl IngressStats {
    fn gauge(&self, gauge: Gauge) -> &AtomicU64 {
        match gauge {
            Gauge::SnapshotRecvWaiting => &self.snapshot_recv_waiting,
            Gauge::SnapshotRecvActive => &self.snapshot_recv_active,
        }
    }
}

/// One unit of a gauge, given back when dropped: the gauge stays right when the future
/// holding it is cancelled (shutdown, a broken connection).
struct GaugeGuard {
    stats: Arc<IngressStats>,
    gauge: Gauge,
}

impl GaugeGuard {
    /// Adds one to `gauge`: the new value, and the guard that takes it back.
    fn raise(stats: &Arc<IngressStats>, gauge: Gauge) -> (u64, GaugeGuard) {
        let value = stats.gauge(gauge).fetch_add(1, Ordering::Relaxed) + 1;
        let guard = GaugeGuard {
            stats: stats.clone(),
            gauge,
        };
        (value, guard)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.stats.gauge(self.gauge).fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a snapshot connection holds while it is read: one of the store's snapshot permits,
/// and its place in `snapshot_recv_active`.
struct SnapshotReceiving {
    _active: GaugeGuard,
    _permit: OwnedSemaphorePermit,
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

/// Where decoded messages go, the cluster connections must belong to, the limits on
/// snapshot connections, and the counters of everything received. Clones share the
/// counters and the snapshot limits: one ingress per store.
#[derive(Clone)]
pub struct RaftIngress {
    sink: Sink,
    stats: Arc<IngressStats>,
    /// This store's cluster id; 0 = unknown, accepting every cluster.
    cluster_id: u64,
    /// Most snapshot connections read at once: the permits of `snapshot_permits`.
    snapshot_recv_concurrency: usize,
    snapshot_permits: Arc<Semaphore>,
    /// The byte-rate limit of snapshot connections, shared by all of them.
    snapshot_bucket: Arc<TokenBucket>,
}

impl std::fmt::Debug for RaftIngress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftIngress")
            .field("cluster_id", &self.cluster_id)
            .field("snapshot_recv_concurrency", &self.snapshot_recv_concurrency)
            .field(
                "snapshot_recv_bytes_per_sec",
                &self.snapshot_bucket.bytes_per_sec(),
            )
            .field("stats", &self.stats.snapshot())
            .finish()
    }
}

impl RaftIngress {
    /// Messages go into `inbound`, waiting for space. Cluster id 0 (accepts every cluster)
    /// until [`RaftIngress::with_cluster_id`]; the default snapshot limits until
    /// [`RaftIngress::with_snapshot_limits`].
    pub fn new(inbound: mpsc::Sender<Message>) -> RaftIngress {
        RaftIngress::with_sink(Sink::Channel(inbound))
    }

    /// Messages go through `sink`, which must not block. Cluster id 0 (accepts every
    /// cluster) until [`RaftIngress::with_cluster_id`]; the default snapshot limits until
    /// [`RaftIngress::with_snapshot_limits`].
    pub fn direct(sink: Arc<SinkFn>) -> RaftIngress {
        RaftIngress::with_sink(Sink::Direct(sink))
    }

    fn with_sink(sink: Sink) -> RaftIngress {
        RaftIngress {
            sink,
            stats: Arc::default(),
            cluster_id: 0,
            snapshot_recv_concurrency: DEFAULT_SNAPSHOT_RECV_CONCURRENCY,
            snapshot_permits: Arc::new(Semaphore::new(DEFAULT_SNAPSHOT_RECV_CONCURRENCY)),
            snapshot_bucket: Arc::new(TokenBucket::with_default_burst(
                DEFAULT_SNAPSHOT_MAX_BYTES_PER_SEC,
                SNAPSHOT_RECV_MIN_BURST_BYTES,
            )),
        }
    }

    /// Limits the snapshot connections this store reads: at most `concurrency` at once
    /// (TiKV's `concurrent-recv-snap-limit`; default [`DEFAULT_SNAPSHOT_RECV_CONCURRENCY`],
    /// 4), and `bytes_per_sec` of their frames over all of them (default
    /// [`DEFAULT_SNAPSHOT_MAX_BYTES_PER_SEC`](crate::client::DEFAULT_SNAPSHOT_MAX_BYTES_PER_SEC),
    /// 100 MiB/s; 0 = unlimited), with a burst of one second's worth, at least
    /// [`SNAPSHOT_RECV_MIN_BURST_BYTES`]. A connection over the cap waits for a permit
    /// without reading (see the module docs).
    ///
    /// The rate is this store's alone; keep it near the senders' `snapshot_max_bytes_per_sec`.
    /// A rate far below it backs chunks up in the senders' writes, which give up after their
    /// `keepalive_interval` (the transfer is retried): at the senders' defaults (4 MiB frames,
    /// 10 s) keep it at or above `concurrency` × 4 MiB / 10 s, 1.6 MiB/s for 4.
    ///
    /// Call it before serving: connections already accepted keep the limits they had.
    ///
    /// # Errors
    /// [`TransportError::InvalidConfig`] if `concurrency` is 0 (no snapshot could ever be
    /// received) or above tokio's semaphore limit.
    pub fn with_snapshot_limits(
        mut self,
        concurrency: usize,
        bytes_per_sec: u64,
    ) -> Result<RaftIngress, TransportError> {
        if concurrency == 0 {
            return Err(TransportError::InvalidConfig(
                "snapshot_recv_concurrency must be positive: with 0 no snapshot is ever received",
            ));
        }
        if concurrency > Semaphore::MAX_PERMITS {
            return Err(TransportError::InvalidConfig(
                "snapshot_recv_concurrency exceeds tokio's semaphore limit",
            ));
        }
        self.snapshot_recv_concurrency = concurrency;
        self.snapshot_permits = Arc::new(Semaphore::new(concurrency));
        self.snapshot_bucket = Arc::new(TokenBucket::with_default_burst(
            bytes_per_sec,
            SNAPSHOT_RECV_MIN_BURST_BYTES,
        ));
        Ok(self)
    }

    /// Most snapshot connections read at once.
    pub fn snapshot_recv_concurrency(&self) -> usize {
        self.snapshot_recv_concurrency
    }

    /// The receiving byte-rate limit of snapshot connections; 0 = unlimited.
    pub fn snapshot_recv_bytes_per_sec(&self) -> u64 {
        self.snapshot_bucket.bytes_per_sec()
    }

    /// The burst of the receiving byte-rate limit.
    pub fn snapshot_recv_burst_bytes(&self) -> u64 {
        self.snapshot_bucket.burst_bytes()
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

    /// Waits for one of the store's snapshot permits (counted in `snapshot_recv_waiting`
    /// meanwhile), then counts the connection in `snapshot_recv_active` until the returned
    /// value is dropped.
    async fn start_receiving_snapshot(&self) -> Result<SnapshotReceiving, wire::FrameError> {
        let (_, waiting) = GaugeGuard::raise(&self.stats, Gauge::SnapshotRecvWaiting);
        let permit = self.snapshot_permits.clone().acquire_owned().await;
        drop(waiting);
        // The semaphore is never closed; should it be, the connection ends like a broken one.
        let permit =
            permit.map_err(|_| std::io::Error::other("the snapshot semaphore was closed"))?;
        let (active, active_guard) = GaugeGuard::raise(&self.stats, Gauge::SnapshotRecvActive);
        self.stats
            .snapshot_recv_peak
            .fetch_max(active, Ordering::Relaxed);
        Ok(SnapshotReceiving {
            _active: active_guard,
            _permit: permit,
        })
    }

    /// Counts a frame of a snapshot connection and waits until the receiving byte-rate
    /// limit allows its bytes.
    async fn pay_snapshot_frame(&self, frame_bytes: u64) {
        self.stats
            .snapshot_bytes_received
            .fetch_add(frame_bytes, Ordering::Relaxed);
        let waited = self.snapshot_bucket.acquire(frame_bytes).await;
        if !waited.is_zero() {
            let waited_us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
            self.stats
                .snapshot_recv_throttled_us
                .fetch_add(waited_us, Ordering::Relaxed);
        }
    }

    async fn read_all<R: tokio::io::AsyncRead + Unpin>(
        &self,
        rd: &mut R,
    ) -> Result<(), wire::FrameError> {
        let from_store = self.read_preface(rd).await?;
        let mut payload = Vec::new();
        // Set at the first snapshot message; held until the connection ends.
        let mut receiving: Option<SnapshotReceiving> = None;
        loop {
            let more = tokio::time::timeout(IDLE_TIMEOUT, wire::read_frame(rd, &mut payload))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            if !more {
                return Ok(());
            }
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
            let frame_bytes = (wire::FRAME_HEADER_LEN + payload.len()) as u64;
            if receiving.is_some() {
                self.pay_snapshot_frame(frame_bytes).await;
            }
            for raw in wire::messages(&payload) {
                let raw = raw?;
                match codec::decode(raw) {
                    Ok(msg) => {
                        if receiving.is_none() && matches!(msg.body, MessageBody::Snapshot { .. }) {
                            // Over the cap this waits, reading nothing more meanwhile.
                            receiving = Some(self.start_receiving_snapshot().await?);
                            self.pay_snapshot_frame(frame_bytes).await;
                        }
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
