//! The sending side: per destination store, a bounded queue drained by a task that keeps one
//! long-lived gRPC stream open and ships the messages of all regions in batches; snapshot
//! chunks take a second, separately throttled stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::pb::raft_client::RaftClient;
use api::pb::RaftBatch;
use raft::{Message, MessageBody};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::codec;
use crate::TransportError;

/// Tuning of a [`Transport`].
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Messages queued per destination (normal and snapshot queues each). When a queue is
    /// full new messages are dropped and counted: Raft retransmits, and an unbounded queue
    /// to a dead or slow store would grow without limit.
    pub queue_capacity: usize,
    /// Most messages in one `RaftBatch`.
    pub max_batch_messages: usize,
    /// Most encoded bytes in one `RaftBatch` (a single larger message still goes alone).
    pub max_batch_bytes: usize,
    /// First delay before reconnecting after a failure; doubles per consecutive failure.
    pub reconnect_backoff_min: Duration,
    /// Cap of the reconnect delay.
    pub reconnect_backoff_max: Duration,
    /// Most snapshot streams open at once across all destinations. Snapshots are large;
    /// sending many at once starves heartbeats of bandwidth and the receivers of disk.
    pub snapshot_concurrency: usize,
    /// Bound on establishing a TCP + HTTP/2 connection.
    pub connect_timeout: Duration,
    /// HTTP/2 keepalive ping interval: detects a peer that vanished without closing the
    /// connection (power loss, partition), which would otherwise stall a stream forever.
    pub keepalive_interval: Duration,
}

impl Default for TransportConfig {
    fn default() -> TransportConfig {
        TransportConfig {
            queue_capacity: 4096,
            max_batch_messages: 256,
            max_batch_bytes: 4 << 20,
            reconnect_backoff_min: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(5),
            snapshot_concurrency: 4,
            connect_timeout: Duration::from_secs(3),
            keepalive_interval: Duration::from_secs(10),
        }
    }
}

/// Counters of a [`Transport`], summed over all destinations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Messages handed to an open gRPC stream (normal and snapshot). Handed over is not
    /// delivered: messages in flight when a connection breaks are lost.
    pub sent: u64,
    /// Messages refused by [`Transport::send`] because the destination's queue was full.
    pub dropped_queue_full: u64,
    /// Snapshot messages dropped because their destination could not be reached; the
    /// leader restarts the transfer.
    pub dropped_snapshot_unreachable: u64,
    /// Connection or stream failures followed by a new attempt.
    pub reconnects: u64,
    /// Batches handed to a stream.
    pub batches: u64,
    /// Snapshot messages handed to a snapshot stream (included in `sent`).
    pub snapshot_sent: u64,
    /// Snapshot streams open right now.
    pub snapshot_streams_active: u64,
    /// Most snapshot streams ever open at once; never above `snapshot_concurrency`.
    pub snapshot_streams_peak: u64,
}

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_snapshot_unreachable: AtomicU64,
    reconnects: AtomicU64,
    batches: AtomicU64,
    snapshot_sent: AtomicU64,
    snapshot_streams_active: AtomicU64,
    snapshot_streams_peak: AtomicU64,
}

/// A handle on the transport of one store. Cheap to clone; the background tasks stop once
/// every handle is dropped (their queues close).
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

struct Inner {
    my_store: u64,
    config: TransportConfig,
    runtime: tokio::runtime::Handle,
    peers: Mutex<HashMap<u64, Peer>>,
    counters: Arc<Counters>,
    snapshot_permits: Arc<Semaphore>,
}

/// The sending ends of one destination's queues and its address.
struct Peer {
    normal: mpsc::Sender<Message>,
    snapshot: mpsc::Sender<Message>,
    address: watch::Sender<Option<String>>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("my_store", &self.inner.my_store)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Transport {
    /// Creates the transport of store `my_store`. Must be called inside a tokio runtime:
    /// the per-destination tasks are spawned on it.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn new(my_store: u64, config: TransportConfig) -> Transport {
        Transport::try_new(my_store, config).expect("Transport::new outside a tokio runtime")
    }

    /// Like [`Transport::new`], returning an error outside a tokio runtime or on a config
    /// that cannot work.
    pub fn try_new(my_store: u64, config: TransportConfig) -> Result<Transport, TransportError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| TransportError::NoRuntime)?;
        if config.queue_capacity == 0
            || config.max_batch_messages == 0
            || config.max_batch_bytes == 0
            || config.snapshot_concurrency == 0
        {
            return Err(TransportError::InvalidConfig(
                "queue_capacity, max_batch_messages, max_batch_bytes and snapshot_concurrency must be positive",
            ));
        }
        if config.reconnect_backoff_min > config.reconnect_backoff_max {
            return Err(TransportError::InvalidConfig(
                "reconnect_backoff_min exceeds reconnect_backoff_max",
            ));
        }
        Ok(Transport {
            inner: Arc::new(Inner {
                my_store,
                snapshot_permits: Arc::new(Semaphore::new(config.snapshot_concurrency)),
                config,
                runtime,
                peers: Mutex::new(HashMap::new()),
                counters: Arc::default(),
            }),
        })
    }

    /// The store this transport sends from.
    pub fn my_store(&self) -> u64 {
        self.inner.my_store
    }

    /// Sets (or changes) the address of `store`, e.g. `http://10.0.0.7:20160`. A change
    /// makes open streams to the old address reconnect to the new one.
    pub fn set_peer_address(&self, store: u64, addr: String) {
        let mut peers = self.lock_peers();
        let peer = self.peer_entry(&mut peers, store);
        peer.address.send_replace(Some(addr));
    }

    /// Queues `msg` for `to_store` without blocking. If the destination's queue is full the
    /// message is dropped and counted: Raft tolerates loss, and the caller (the store's
    /// Ready loop) must never wait on a slow peer. Messages for a store whose address is not
    /// known yet wait in the queue.
    pub fn send(&self, to_store: u64, msg: Message) {
        let tx = {
            let mut peers = self.lock_peers();
            let peer = self.peer_entry(&mut peers, to_store);
            if matches!(msg.body, MessageBody::Snapshot { .. }) {
                peer.snapshot.clone()
            } else {
                peer.normal.clone()
            }
        };
        if tx.try_send(msg).is_err() {
            // Full, or closed because the task ended (only when the runtime shuts down).
            self.inner
                .counters
                .dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A copy of the counters.
    pub fn stats(&self) -> TransportStats {
        let c = &self.inner.counters;
        TransportStats {
            sent: c.sent.load(Ordering::Relaxed),
            dropped_queue_full: c.dropped_queue_full.load(Ordering::Relaxed),
            dropped_snapshot_unreachable: c.dropped_snapshot_unreachable.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            snapshot_sent: c.snapshot_sent.load(Ordering::Relaxed),
            snapshot_streams_active: c.snapshot_streams_active.load(Ordering::Relaxed),
            snapshot_streams_peak: c.snapshot_streams_peak.load(Ordering::Relaxed),
        }
    }

    fn lock_peers(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Peer>> {
        // The map is only inserted into under the lock and no code panics while holding it;
        // recover from poisoning anyway rather than take the store down.
        self.inner
            .peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The destination's queues, creating them and spawning its tasks on first use.
    fn peer_entry<'a>(&self, peers: &'a mut HashMap<u64, Peer>, store: u64) -> &'a Peer {
        peers.entry(store).or_insert_with(|| {
            let inner = &self.inner;
            let cap = inner.config.queue_capacity;
            let (normal_tx, normal_rx) = mpsc::channel(cap);
            let (snap_tx, snap_rx) = mpsc::channel(cap);
            let (addr_tx, addr_rx) = watch::channel(None);
            let ctx = TaskCtx {
                my_store: inner.my_store,
                to_store: store,
                config: inner.config.clone(),
                counters: inner.counters.clone(),
                address: addr_rx,
            };
            inner.runtime.spawn(normal_task(ctx.clone(), normal_rx));
            inner
                .runtime
                .spawn(snapshot_task(ctx, snap_rx, inner.snapshot_permits.clone()));
            Peer {
                normal: normal_tx,
                snapshot: snap_tx,
                address: addr_tx,
            }
        })
    }
}

/// What a destination's task needs. Deliberately no `Arc<Inner>`: the tasks must not keep
/// the transport alive, so that dropping every handle closes the queues and ends them.
#[derive(Clone)]
struct TaskCtx {
    my_store: u64,
    to_store: u64,
    config: TransportConfig,
    counters: Arc<Counters>,
    address: watch::Receiver<Option<String>>,
}

impl TaskCtx {
    /// Waits until an address is known; `None` once the transport is gone.
    async fn wait_address(&mut self) -> Option<String> {
        loop {
            if let Some(addr) = self.address.borrow_and_update().clone() {
                return Some(addr);
            }
            self.address.changed().await.ok()?;
        }
    }

    async fn connect(&self, addr: &str) -> Result<Channel, TransportError> {
        let endpoint = Endpoint::from_shared(addr.to_string())
            .map_err(|e| TransportError::BadAddress(addr.to_string(), e.to_string()))?
            .connect_timeout(self.config.connect_timeout)
            .http2_keep_alive_interval(self.config.keepalive_interval)
            .keep_alive_timeout(self.config.keepalive_interval)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        endpoint
            .connect()
            .await
            .map_err(|e| TransportError::Connect(addr.to_string(), e.to_string()))
    }

    fn count_batch(&self, messages: usize, snapshot: bool) {
        let c = &self.counters;
        c.batches.fetch_add(1, Ordering::Relaxed);
        c.sent.fetch_add(messages as u64, Ordering::Relaxed);
        if snapshot {
            c.snapshot_sent
                .fetch_add(messages as u64, Ordering::Relaxed);
        }
    }
}

/// Exponential reconnect delay between the configured bounds.
struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    fn new(config: &TransportConfig) -> Backoff {
        Backoff {
            next: config.reconnect_backoff_min,
            min: config.reconnect_backoff_min,
            max: config.reconnect_backoff_max,
        }
    }

    fn reset(&mut self) {
        self.next = self.min;
    }

    async fn wait(&mut self) {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        tokio::time::sleep(delay).await;
    }
}

/// Drains a destination queue into batches bounded by message count and encoded bytes.
struct Batcher {
    rx: mpsc::Receiver<Message>,
    /// An encoded message that did not fit the previous batch; it opens the next one.
    carry: Option<Vec<u8>>,
    max_messages: usize,
    max_bytes: usize,
}

impl Batcher {
    /// Waits for at least one message, then takes whatever else is queued up to the limits.
    /// `None` once the queue is closed and empty.
    ///
    /// Cancel-safe: the only await is the first `recv`, which loses nothing if cancelled;
    /// after it everything runs without yielding.
    async fn next_batch(&mut self) -> Option<Vec<Vec<u8>>> {
        let first = match self.carry.take() {
            Some(encoded) => encoded,
            None => codec::encode_to_vec(&self.rx.recv().await?),
        };
        Some(self.fill(first))
    }

    /// Like `next_batch` but never waits: `None` if nothing is queued.
    fn try_next_batch(&mut self) -> Option<Vec<Vec<u8>>> {
        let first = match self.carry.take() {
            Some(encoded) => encoded,
            None => codec::encode_to_vec(&self.rx.try_recv().ok()?),
        };
        Some(self.fill(first))
    }

    fn fill(&mut self, first: Vec<u8>) -> Vec<Vec<u8>> {
        let mut bytes = first.len();
        let mut batch = vec![first];
        while batch.len() < self.max_messages && bytes < self.max_bytes {
            let Ok(msg) = self.rx.try_recv() else { break };
            let encoded = codec::encode_to_vec(&msg);
            if bytes + encoded.len() > self.max_bytes {
                self.carry = Some(encoded);
                break;
            }
            bytes += encoded.len();
            batch.push(encoded);
        }
        batch
    }
}

/// How long one open stream lasted.
enum StreamEnd {
    /// The transport was dropped: stop the task.
    Shutdown,
    /// The connection or stream failed, or the address changed: reconnect.
    Failed,
}

/// Keeps the normal stream to one destination open for the transport's lifetime.
async fn normal_task(mut ctx: TaskCtx, rx: mpsc::Receiver<Message>) {
    let mut batcher = Batcher {
        rx,
        carry: None,
        max_messages: ctx.config.max_batch_messages,
        max_bytes: ctx.config.max_batch_bytes,
    };
    let mut backoff = Backoff::new(&ctx.config);
    loop {
        let Some(addr) = ctx.wait_address().await else {
            return;
        };
        let channel = match ctx.connect(&addr).await {
            Ok(channel) => channel,
            Err(e) => {
                tracing::debug!(to_store = ctx.to_store, error = %e, "raft connection failed");
                if batcher.rx.is_closed() {
                    return;
                }
                ctx.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                backoff.wait().await;
                continue;
            }
        };
        backoff.reset();
        tracing::debug!(to_store = ctx.to_store, %addr, "raft stream open");
        match run_normal_stream(&mut ctx, &mut batcher, channel).await {
            StreamEnd::Shutdown => return,
            StreamEnd::Failed => {
                ctx.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                backoff.wait().await;
            }
        }
    }
}

/// How many batches may wait between us and tonic. Kept tiny so that a slow connection
/// backs up into the bounded destination queue, where overflow is dropped and counted,
/// instead of piling up here.
const STREAM_BUFFER_BATCHES: usize = 2;

async fn run_normal_stream(
    ctx: &mut TaskCtx,
    batcher: &mut Batcher,
    channel: Channel,
) -> StreamEnd {
    let (batch_tx, batch_rx) = mpsc::channel::<RaftBatch>(STREAM_BUFFER_BATCHES);
    let mut client = RaftClient::new(channel).max_encoding_message_size(usize::MAX);
    let call = client.stream(ReceiverStream::new(batch_rx));
    tokio::pin!(call);
    loop {
        tokio::select! {
            // The server never answers a healthy stream; any answer means it ended.
            result = &mut call => {
                match result {
                    Ok(_) => tracing::debug!(to_store = ctx.to_store, "raft stream closed by peer"),
                    Err(status) => tracing::debug!(to_store = ctx.to_store, %status, "raft stream failed"),
                }
                return StreamEnd::Failed;
            }
            changed = ctx.address.changed() => {
                return if changed.is_ok() { StreamEnd::Failed } else { StreamEnd::Shutdown };
            }
            batch = batcher.next_batch() => {
                let Some(messages) = batch else { return StreamEnd::Shutdown };
                let n = messages.len();
                let batch = RaftBatch { from_store: ctx.my_store, messages };
                // Keep watching the call while waiting for buffer space: if the stream
                // dies now, this batch is lost, which Raft tolerates.
                tokio::select! {
                    sent = batch_tx.send(batch) => {
                        if sent.is_err() {
                            return StreamEnd::Failed;
                        }
                        ctx.count_batch(n, false);
                    }
                    _ = &mut call => return StreamEnd::Failed,
                }
            }
        }
    }
}

/// Sends snapshot chunks to one destination on their own connection, so a multi-megabyte
/// transfer never queues heartbeats and appends behind it (head-of-line blocking on one
/// TCP connection). A stream is opened only while chunks are queued and only with a permit
/// of the transport-wide snapshot semaphore.
async fn snapshot_task(mut ctx: TaskCtx, rx: mpsc::Receiver<Message>, permits: Arc<Semaphore>) {
    let mut batcher = Batcher {
        rx,
        carry: None,
        max_messages: ctx.config.max_batch_messages,
        max_bytes: ctx.config.max_batch_bytes,
    };
    let mut backoff = Backoff::new(&ctx.config);
    // Kept across transfers: opening a stream on a live HTTP/2 connection is cheap.
    let mut channel: Option<(String, Channel)> = None;
    loop {
        let Some(first) = batcher.next_batch().await else {
            return;
        };
        let Some(addr) = ctx.wait_address().await else {
            return;
        };
        let Ok(_permit) = permits.clone().acquire_owned().await else {
            return; // The semaphore is never closed.
        };
        let active = ctx
            .counters
            .snapshot_streams_active
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        ctx.counters
            .snapshot_streams_peak
            .fetch_max(active, Ordering::Relaxed);

        let ch = match &channel {
            Some((a, ch)) if *a == addr => Ok(ch.clone()),
            _ => ctx.connect(&addr).await,
        };
        let ok = match ch {
            Ok(ch) => {
                channel = Some((addr, ch.clone()));
                run_snapshot_stream(&ctx, &mut batcher, ch, first).await
            }
            Err(e) => {
                tracing::debug!(to_store = ctx.to_store, error = %e, "snapshot connection failed");
                // Holding chunks for an unreachable store would hold a permit other
                // destinations need; drop them and let the leader retry the transfer.
                let mut dropped = first.len();
                while let Some(batch) = batcher.try_next_batch() {
                    dropped += batch.len();
                }
                ctx.counters
                    .dropped_snapshot_unreachable
                    .fetch_add(dropped as u64, Ordering::Relaxed);
                false
            }
        };
        ctx.counters
            .snapshot_streams_active
            .fetch_sub(1, Ordering::Relaxed);
        drop(_permit);
        if ok {
            backoff.reset();
        } else {
            channel = None;
            ctx.counters.reconnects.fetch_add(1, Ordering::Relaxed);
            backoff.wait().await;
        }
    }
}

/// Streams `first` and everything queued behind it, then closes the stream and waits for
/// the server to confirm it consumed it all, so the permit covers the whole transfer.
async fn run_snapshot_stream(
    ctx: &TaskCtx,
    batcher: &mut Batcher,
    channel: Channel,
    first: Vec<Vec<u8>>,
) -> bool {
    let (batch_tx, batch_rx) = mpsc::channel::<RaftBatch>(STREAM_BUFFER_BATCHES);
    let mut client = RaftClient::new(channel).max_encoding_message_size(usize::MAX);
    let call = client.stream(ReceiverStream::new(batch_rx));
    tokio::pin!(call);
    let mut next = Some(first);
    while let Some(messages) = next.take() {
        let n = messages.len();
        let batch = RaftBatch {
            from_store: ctx.my_store,
            messages,
        };
        tokio::select! {
            sent = batch_tx.send(batch) => {
                if sent.is_err() {
                    return false;
                }
                ctx.count_batch(n, true);
            }
            result = &mut call => {
                tracing::debug!(to_store = ctx.to_store, ok = result.is_ok(), "snapshot stream ended early");
                return false;
            }
        }
        next = batcher.try_next_batch();
    }
    // End of input: the server answers once it has forwarded every message.
    drop(batch_tx);
    match call.await {
        Ok(_) => true,
        Err(status) => {
            tracing::debug!(to_store = ctx.to_store, %status, "snapshot stream failed");
            false
        }
    }
}
