//! The sending side: per destination store, a bounded queue drained by a task that keeps one
//! long-lived TCP connection open and ships the messages of all regions in frames
//! ([`wire`](crate::wire)); snapshot chunks take a second, separately throttled connection.
//!
//! **Snapshot throttling.** Two limits, both transport-wide (over all destinations), as
//! TiKV's `concurrent-send-snap-limit` and `snap-io-max-bytes-per-sec`: at most
//! [`TransportConfig::snapshot_concurrency`] snapshot connections open at once (a semaphore),
//! and at most [`TransportConfig::snapshot_max_bytes_per_sec`] of snapshot frames written
//! (one [`TokenBucket`] that every snapshot connection pays, before writing, for each frame
//! of chunks it writes).
//!
//! **Direct path.** While a connection's task has nothing queued or half-written, a caller
//! of [`Transport::send_batch`] (the store thread) writes its frame to the socket itself with
//! one non-blocking `write`, instead of queueing it and waking the task: on the write path
//! of every request that hand-off cost ~50 µs per hop on a busy 2-CPU machine (traced,
//! docs/BENCHMARKS.md). Whatever the socket does not take at once (a full send buffer) goes
//! to the task, and from then on everything goes through the queue until the task has
//! written it all, so messages to one destination keep their order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raft::{Message, MessageBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use types::StoreId;

use crate::throttle::TokenBucket;
use crate::wire::{self, FrameBuilder};
use crate::TransportError;

/// The default of [`TransportConfig::snapshot_max_bytes_per_sec`], also the receiving side's
/// default ([`RaftIngress`](crate::RaftIngress)): 100 MiB/s.
pub const DEFAULT_SNAPSHOT_MAX_BYTES_PER_SEC: u64 = 100 << 20;

/// The default of [`TransportConfig::max_batch_bytes`]: the largest frame a default sender
/// writes (one larger message still goes alone).
pub(crate) const DEFAULT_MAX_BATCH_BYTES: usize = 4 << 20;

/// Tuning of a [`Transport`].
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Messages queued per destination in the normal queue. When a queue is full new
    /// messages are dropped and counted: Raft retransmits, and an unbounded queue to a dead
    /// or slow store would grow without limit.
    pub queue_capacity: usize,
    /// Snapshot chunks queued per destination (up to `raft::Config::snapshot_chunk_bytes`
    /// each, 1 MiB by default), dropped and counted past it like any message. Raft keeps one
    /// chunk per transfer in flight, but resends one that goes unacknowledged; behind a slow
    /// connection the copies queued here grew a sending store's memory by 146 MiB during one
    /// 512 MiB transfer on a busy machine when this queue took 4,096 messages.
    pub snapshot_queue_capacity: usize,
    /// Most messages in one frame.
    pub max_batch_messages: usize,
    /// Most encoded bytes in one frame (a single larger message still goes alone; keep
    /// snapshot chunks well below [`wire::MAX_FRAME_BYTES`]).
    pub max_batch_bytes: usize,
    /// First delay before reconnecting after a failure; doubles per consecutive failure.
    pub reconnect_backoff_min: Duration,
    /// Cap of the reconnect delay.
    pub reconnect_backoff_max: Duration,
    /// Most snapshot streams open at once across all destinations. Snapshots are large;
    /// sending many at once starves heartbeats of bandwidth and the receivers of disk.
    pub snapshot_concurrency: usize,
    /// Most bytes of snapshot frames written per second, over all destinations together
    /// (one token bucket, paid for each frame of chunks before it is written; TiKV's
    /// `snap-io-max-bytes-per-sec`). 0 = unlimited.
    ///
    /// The default, [`DEFAULT_SNAPSHOT_MAX_BYTES_PER_SEC`] (100 MiB/s), leaves room for
    /// client traffic and heartbeats on a 1 GbE or faster link: about 15% of 1 GbE (some
    /// 117 MiB/s of TCP payload), 90% of 10 GbE. On a busy 1 GbE link, lower it.
    ///
    /// The bucket holds one second's worth, at least one `max_batch_bytes` frame
    /// ([`throttle::default_burst_bytes`](crate::throttle::default_burst_bytes)), which goes
    /// out at once after an idle spell. A non-zero rate must let `snapshot_concurrency`
    /// frames of `max_batch_bytes` through within the receiver's idle timeout
    /// ([`IDLE_TIMEOUT`](crate::server::IDLE_TIMEOUT), 60 s), or a stream waiting behind the
    /// others would be closed by its receiver: with the other defaults, at least 274 KiB/s.
    pub snapshot_max_bytes_per_sec: u64,
    /// Bound on establishing a TCP connection.
    pub connect_timeout: Duration,
    /// An idle connection sends a keepalive frame this often, and a write that cannot finish
    /// within it ends the connection: a peer that vanished without closing it (power loss,
    /// partition) would otherwise stall the queue behind a full socket buffer for as long as
    /// TCP keeps retransmitting (many minutes).
    pub keepalive_interval: Duration,
    /// This store's cluster id, sent in every connection's preface ([`wire`](crate::wire)):
    /// a store of another cluster refuses the connection. 0 = unknown, accepted by every
    /// store (tests, callers that do not know it).
    pub cluster_id: u64,
}

impl Default for TransportConfig {
    fn default() -> TransportConfig {
        TransportConfig {
            queue_capacity: 4096,
            snapshot_queue_capacity: 16,
            max_batch_messages: 256,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            reconnect_backoff_min: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(5),
            snapshot_concurrency: 4,
            snapshot_max_bytes_per_sec: DEFAULT_SNAPSHOT_MAX_BYTES_PER_SEC,
            connect_timeout: Duration::from_secs(3),
            keepalive_interval: Duration::from_secs(10),
            cluster_id: 0,
        }
    }
}

/// Counters of a [`Transport`], summed over all destinations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Messages written to an open connection (normal and snapshot). Handed over is not
    /// delivered: messages in flight when a connection breaks are lost.
    pub sent: u64,
    /// Messages refused by [`Transport::send`] because the destination's queue was full.
    pub dropped_queue_full: u64,
    /// Snapshot messages dropped because their destination could not be reached; the
    /// leader restarts the transfer.
    pub dropped_snapshot_unreachable: u64,
    /// Connection or stream failures followed by a new attempt.
    pub reconnects: u64,
    /// Frames written.
    pub batches: u64,
    /// Of those, frames written by the caller of `send_batch` itself (the direct path).
    pub direct_batches: u64,
    /// Snapshot messages written to a snapshot connection (included in `sent`).
    pub snapshot_sent: u64,
    /// Snapshot connections open right now.
    pub snapshot_streams_active: u64,
    /// Most snapshot connections ever open at once; never above `snapshot_concurrency`.
    pub snapshot_streams_peak: u64,
    /// Bytes of snapshot frames written (framing included): what
    /// `snapshot_max_bytes_per_sec` meters.
    pub snapshot_bytes_sent: u64,
    /// Milliseconds snapshot connections spent waiting for the byte-rate limit, summed over
    /// connections (two waiting at once count twice).
    pub snapshot_throttled_ms: u64,
}

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_snapshot_unreachable: AtomicU64,
    reconnects: AtomicU64,
    batches: AtomicU64,
    direct_batches: AtomicU64,
    snapshot_sent: AtomicU64,
    snapshot_streams_active: AtomicU64,
    snapshot_streams_peak: AtomicU64,
    snapshot_bytes_sent: AtomicU64,
    /// Microseconds, so that many sub-millisecond waits still add up.
    snapshot_throttled_us: AtomicU64,
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
    /// The byte-rate limit of snapshot frames, shared by every destination.
    snapshot_bucket: Arc<TokenBucket>,
}

/// The sending ends of one destination's queues and its address.
struct Peer {
    normal: mpsc::Sender<Message>,
    snapshot: mpsc::Sender<Message>,
    address: watch::Sender<Option<String>>,
    direct: Arc<Direct>,
}

/// The hand-over between callers writing directly and a destination's connection task (see
/// the module docs). Invariant, kept under `state`'s lock: `idle` is `Some` only while the
/// queue is empty, `rest` is `None` and the task is not writing; callers put messages into
/// the queue only under the lock, so a direct write can never overtake a queued message.
#[derive(Default)]
struct Direct {
    state: Mutex<DirectState>,
    /// Wakes the task when a direct write left `rest` for it.
    wake: Notify,
}

#[derive(Default)]
struct DirectState {
    idle: Option<Arc<TcpStream>>,
    /// The unwritten end of a frame a direct write could not finish; written first.
    rest: Option<Vec<u8>>,
    /// Reused to encode direct frames.
    fb: FrameBuilder,
    /// A direct write reached the current connection (it carried traffic).
    wrote: bool,
}

impl Direct {
    fn lock(&self) -> std::sync::MutexGuard<'_, DirectState> {
        // Nothing panics while holding it; recover from poisoning rather than stop sending.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("my_store", &self.inner.my_store)
            .field("cluster_id", &self.inner.config.cluster_id)
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
    pub fn new(my_store: StoreId, config: TransportConfig) -> Transport {
        Transport::try_new(my_store, config).expect("Transport::new outside a tokio runtime")
    }

    /// Like [`Transport::new`], returning an error outside a tokio runtime or on a config
    /// that cannot work.
    pub fn try_new(
        my_store: StoreId,
        config: TransportConfig,
    ) -> Result<Transport, TransportError> {
        let my_store = my_store.0;
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| TransportError::NoRuntime)?;
        if config.queue_capacity == 0
            || config.snapshot_queue_capacity == 0
            || config.max_batch_messages == 0
            || config.max_batch_bytes == 0
            || config.snapshot_concurrency == 0
        {
            return Err(TransportError::InvalidConfig(
                "queue_capacity, snapshot_queue_capacity, max_batch_messages, max_batch_bytes and snapshot_concurrency must be positive",
            ));
        }
        if config.snapshot_concurrency > Semaphore::MAX_PERMITS {
            return Err(TransportError::InvalidConfig(
                "snapshot_concurrency exceeds tokio's semaphore limit",
            ));
        }
        if config.reconnect_backoff_min > config.reconnect_backoff_max {
            return Err(TransportError::InvalidConfig(
                "reconnect_backoff_min exceeds reconnect_backoff_max",
            ));
        }
        let rate = u128::from(config.snapshot_max_bytes_per_sec);
        let queued_bytes = config.snapshot_concurrency as u128 * config.max_batch_bytes as u128;
        if rate != 0 && rate * u128::from(crate::server::IDLE_TIMEOUT.as_secs()) < queued_bytes {
            return Err(TransportError::InvalidConfig(
                "snapshot_max_bytes_per_sec is too low: it must pass snapshot_concurrency frames of max_batch_bytes within the receiver's 60 s idle timeout (or be 0, unlimited)",
            ));
        }
        let snapshot_bucket = Arc::new(TokenBucket::with_default_burst(
            config.snapshot_max_bytes_per_sec,
            config.max_batch_bytes as u64,
        ));
        Ok(Transport {
            inner: Arc::new(Inner {
                my_store,
                snapshot_permits: Arc::new(Semaphore::new(config.snapshot_concurrency)),
                snapshot_bucket,
                config,
                runtime,
                peers: Mutex::new(HashMap::new()),
                counters: Arc::default(),
            }),
        })
    }

    /// The store this transport sends from.
    pub fn my_store(&self) -> StoreId {
        StoreId(self.inner.my_store)
    }

    /// Sets (or changes) the address of `store`, e.g. `10.0.0.7:20160` (an `http://`
    /// prefix is accepted and ignored). A change makes open connections to the old address
    /// reconnect to the new one.
    pub fn set_peer_address(&self, store: StoreId, addr: String) {
        let mut peers = self.lock_peers();
        let peer = self.peer_entry(&mut peers, store.0);
        let addr = addr
            .strip_prefix("http://")
            .map(str::to_string)
            .unwrap_or(addr);
        peer.address.send_replace(Some(addr));
    }

    /// Queues `msg` for `to_store` without blocking. If the destination's queue is full the
    /// message is dropped and counted: Raft tolerates loss, and the caller (the store's
    /// Ready loop) must never wait on a slow peer. Messages for a store whose address is not
    /// known yet wait in the queue.
    pub fn send(&self, to_store: StoreId, msg: Message) {
        self.send_batch(to_store, vec![msg]);
    }

    /// Sends `msgs` to `to_store` in order, like [`Transport::send`] for each; when the
    /// connection is idle they go out as one frame written by the calling thread (see the
    /// module docs), without waking the connection's task. Never blocks.
    pub fn send_batch(&self, to_store: StoreId, msgs: Vec<Message>) {
        let (normal, snapshot, direct) = {
            let mut peers = self.lock_peers();
            let peer = self.peer_entry(&mut peers, to_store.0);
            (
                peer.normal.clone(),
                peer.snapshot.clone(),
                peer.direct.clone(),
            )
        };
        let (snapshots, msgs): (Vec<Message>, Vec<Message>) = msgs
            .into_iter()
            .partition(|m| matches!(m.body, MessageBody::Snapshot { .. }));
        for m in snapshots {
            self.enqueue(&snapshot, m);
        }
        if msgs.is_empty() {
            return;
        }
        let mut state = direct.lock();
        let config = &self.inner.config;
        let bytes: usize = msgs.iter().map(|m| m.size_bytes() as usize).sum();
        if let Some(stream) = state.idle.clone() {
            if msgs.len() <= config.max_batch_messages && bytes <= config.max_batch_bytes {
                let DirectState {
                    fb,
                    rest,
                    idle,
                    wrote,
                } = &mut *state;
                fb.clear();
                for m in &msgs {
                    fb.push(m);
                }
                let count = fb.messages();
                let frame = fb.finish();
                match stream.try_write(frame) {
                    Ok(n) => {
                        *wrote = true;
                        if n < frame.len() {
                            // The socket took part of it: the task writes the rest, and
                            // everything after goes through the queue until it is done.
                            *rest = Some(frame[n..].to_vec());
                            *idle = None;
                            direct.wake.notify_one();
                        }
                        let c = &self.inner.counters;
                        c.batches.fetch_add(1, Ordering::Relaxed);
                        c.direct_batches.fetch_add(1, Ordering::Relaxed);
                        c.sent.fetch_add(count as u64, Ordering::Relaxed);
                        return;
                    }
                    // Would block, or failed (the task finds out and reconnects): queue.
                    Err(_) => *idle = None,
                }
            } else {
                // Too big for one frame: the task splits it.
                state.idle = None;
            }
        }
        // Under the lock: the task cannot go idle between our look at `idle` and the queue.
        for m in msgs {
            self.enqueue(&normal, m);
        }
        drop(state);
    }

    fn enqueue(&self, tx: &mpsc::Sender<Message>, msg: Message) {
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
            direct_batches: c.direct_batches.load(Ordering::Relaxed),
            snapshot_sent: c.snapshot_sent.load(Ordering::Relaxed),
            snapshot_streams_active: c.snapshot_streams_active.load(Ordering::Relaxed),
            snapshot_streams_peak: c.snapshot_streams_peak.load(Ordering::Relaxed),
            snapshot_bytes_sent: c.snapshot_bytes_sent.load(Ordering::Relaxed),
            snapshot_throttled_ms: c.snapshot_throttled_us.load(Ordering::Relaxed) / 1000,
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
            let (snap_tx, snap_rx) = mpsc::channel(inner.config.snapshot_queue_capacity);
            let (addr_tx, addr_rx) = watch::channel(None);
            let direct = Arc::new(Direct::default());
            let ctx = TaskCtx {
                my_store: inner.my_store,
                to_store: store,
                config: inner.config.clone(),
                counters: inner.counters.clone(),
                address: addr_rx,
            };
            inner
                .runtime
                .spawn(normal_task(ctx.clone(), normal_rx, direct.clone()));
            inner.runtime.spawn(snapshot_task(
                ctx,
                snap_rx,
                inner.snapshot_permits.clone(),
                inner.snapshot_bucket.clone(),
            ));
            Peer {
                normal: normal_tx,
                snapshot: snap_tx,
                address: addr_tx,
                direct,
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

    /// Connects to `addr` and writes the preface.
    async fn connect(&self, addr: &str) -> Result<TcpStream, TransportError> {
        let fail = |e: String| TransportError::Connect(addr.to_string(), e);
        let mut stream =
            tokio::time::timeout(self.config.connect_timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| fail("timed out".into()))?
                .map_err(|e| fail(e.to_string()))?;
        stream.set_nodelay(true).map_err(|e| fail(e.to_string()))?;
        stream
            .write_all(&wire::preface(self.my_store, self.config.cluster_id))
            .await
            .map_err(|e| fail(e.to_string()))?;
        Ok(stream)
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

/// Drains a destination queue into frames bounded by message count and encoded bytes.
struct Batcher {
    rx: mpsc::Receiver<Message>,
    /// A message that did not fit the previous frame; it opens the next one.
    carry: Option<Message>,
    max_messages: usize,
    max_bytes: usize,
}

impl Batcher {
    /// Waits for at least one message, then encodes whatever else is queued (up to the
    /// limits) into `fb`, which is cleared first. `false` once the queue is closed and empty.
    ///
    /// Cancel-safe: the only await is the first `recv`, which loses nothing if cancelled;
    /// after it everything runs without yielding.
    async fn next_frame(&mut self, fb: &mut FrameBuilder) -> bool {
        let first = match self.carry.take() {
            Some(m) => m,
            None => match self.rx.recv().await {
                Some(m) => m,
                None => return false,
            },
        };
        self.fill(fb, first);
        true
    }

    /// Like `next_frame` but never waits: `false` if nothing is queued.
    fn try_next_frame(&mut self, fb: &mut FrameBuilder) -> bool {
        let first = match self.carry.take() {
            Some(m) => m,
            None => match self.rx.try_recv() {
                Ok(m) => m,
                Err(_) => return false,
            },
        };
        self.fill(fb, first);
        true
    }

    fn fill(&mut self, fb: &mut FrameBuilder, first: Message) {
        fb.clear();
        fb.push(&first);
        while fb.messages() < self.max_messages && fb.payload_len() < self.max_bytes {
            let Ok(msg) = self.rx.try_recv() else { break };
            if fb.payload_len() + msg.size_bytes() as usize > self.max_bytes {
                self.carry = Some(msg);
                break;
            }
            fb.push(&msg);
        }
    }
}

/// How long one open connection lasted.
enum StreamEnd {
    /// The transport was dropped: stop the task.
    Shutdown,
    /// The connection failed, or the address changed: reconnect.
    Failed,
}

/// How long a connection must stay open (and carry a frame) to reset the reconnect delay.
const STABLE_CONNECTION: Duration = Duration::from_secs(1);

/// Keeps the normal connection to one destination open for the transport's lifetime.
async fn normal_task(mut ctx: TaskCtx, rx: mpsc::Receiver<Message>, direct: Arc<Direct>) {
    let mut batcher = Batcher {
        rx,
        carry: None,
        max_messages: ctx.config.max_batch_messages,
        max_bytes: ctx.config.max_batch_bytes,
    };
    let mut fb = FrameBuilder::new();
    let mut backoff = Backoff::new(&ctx.config);
    loop {
        let Some(addr) = ctx.wait_address().await else {
            return;
        };
        let stream = match ctx.connect(&addr).await {
            Ok(stream) => stream,
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
        tracing::debug!(to_store = ctx.to_store, %addr, "raft connection open");
        let opened = tokio::time::Instant::now();
        let mut carried = false;
        let stream = Arc::new(stream);
        let end = run_normal_connection(
            &mut ctx,
            &mut batcher,
            &mut fb,
            &stream,
            &direct,
            &mut carried,
        )
        .await;
        {
            // No direct writes to a connection that ended; a half-written frame dies with it
            // (lost messages, which Raft tolerates).
            let mut state = direct.lock();
            state.idle = None;
            state.rest = None;
            carried |= std::mem::take(&mut state.wrote);
        }
        match end {
            StreamEnd::Shutdown => return,
            StreamEnd::Failed => {
                // Only a connection that carried a frame and stayed open a while resets the
                // delay: a peer that accepts and closes at once (one of another cluster, or
                // of another version, refusing our preface) must not be redialled every
                // 50 ms, even when a frame got written before its close arrived.
                if carried && opened.elapsed() >= STABLE_CONNECTION {
                    backoff.reset();
                }
                ctx.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                backoff.wait().await;
            }
        }
    }
}

async fn run_normal_connection(
    ctx: &mut TaskCtx,
    batcher: &mut Batcher,
    fb: &mut FrameBuilder,
    stream: &Arc<TcpStream>,
    direct: &Direct,
    carried: &mut bool,
) -> StreamEnd {
    let interval = ctx.config.keepalive_interval;
    let mut probe = [0u8; 1];
    loop {
        // Offer the connection for direct writes when nothing is waiting to be written.
        {
            let mut state = direct.lock();
            if state.rest.is_none() && batcher.carry.is_none() && batcher.rx.is_empty() {
                state.idle = Some(Arc::clone(stream));
            }
        }
        let mut wrote_frame = false;
        let frame: Vec<u8> = tokio::select! {
            // The acceptor never writes; a readable socket means it closed or broke.
            ready = stream.readable() => {
                if ready.is_err() {
                    return StreamEnd::Failed;
                }
                match stream.try_read(&mut probe) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    _ => return StreamEnd::Failed,
                }
            }
            changed = ctx.address.changed() => {
                return if changed.is_ok() { StreamEnd::Failed } else { StreamEnd::Shutdown };
            }
            _ = direct.wake.notified() => {
                let Some(rest) = direct.lock().rest.take() else { continue };
                rest
            }
            more = tokio::time::timeout(interval, batcher.next_frame(fb)) => match more {
                Ok(true) => {
                    wrote_frame = true;
                    fb.finish().to_vec()
                }
                Ok(false) => return StreamEnd::Shutdown,
                Err(_) => wire::KEEPALIVE.to_vec(),
            },
        };
        // Ours until written: no direct write may interleave with it. A direct write may
        // have happened while we waited; anything it left is written first.
        let rest = {
            let mut state = direct.lock();
            state.idle = None;
            state.rest.take()
        };
        if let Some(rest) = rest {
            if !write_all_shared(ctx, stream, &rest, interval).await {
                return StreamEnd::Failed;
            }
        }
        if !write_all_shared(ctx, stream, &frame, interval).await {
            return StreamEnd::Failed;
        }
        *carried = true;
        if wrote_frame {
            ctx.count_batch(fb.messages(), false);
        }
    }
}

/// Writes all of `buf` to a connection shared with direct writers (see [`Direct`]), giving up
/// after `limit`: a peer that vanished without closing (power loss, partition) would
/// otherwise stall the queue behind a full socket buffer for as long as TCP retransmits.
async fn write_all_shared(
    ctx: &TaskCtx,
    stream: &TcpStream,
    mut buf: &[u8],
    limit: Duration,
) -> bool {
    let write = async {
        while !buf.is_empty() {
            stream.writable().await?;
            match stream.try_write(buf) {
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok::<(), std::io::Error>(())
    };
    match tokio::time::timeout(limit, write).await {
        Ok(Ok(())) => true,
        // Messages in a failed write are lost, which Raft tolerates.
        Ok(Err(e)) => {
            tracing::debug!(to_store = ctx.to_store, error = %e, "raft connection failed");
            false
        }
        Err(_) => {
            tracing::debug!(to_store = ctx.to_store, "raft connection write timed out");
            false
        }
    }
}

/// Sends snapshot chunks to one destination on their own connection, so a multi-megabyte
/// transfer never queues heartbeats and appends behind it (head-of-line blocking on one
/// TCP connection). A connection is opened only while chunks are queued and only with a
/// permit of the transport-wide snapshot semaphore; every frame is paid for in `bucket`, the
/// transport-wide byte-rate limit, before it is written.
async fn snapshot_task(
    mut ctx: TaskCtx,
    rx: mpsc::Receiver<Message>,
    permits: Arc<Semaphore>,
    bucket: Arc<TokenBucket>,
) {
    let mut batcher = Batcher {
        rx,
        carry: None,
        max_messages: ctx.config.max_batch_messages,
        max_bytes: ctx.config.max_batch_bytes,
    };
    let mut fb = FrameBuilder::new();
    let mut backoff = Backoff::new(&ctx.config);
    loop {
        if !batcher.next_frame(&mut fb).await {
            return;
        }
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

        let ok = match ctx.connect(&addr).await {
            Ok(stream) => {
                run_snapshot_connection(&ctx, &mut batcher, &mut fb, stream, &bucket).await
            }
            Err(e) => {
                tracing::debug!(to_store = ctx.to_store, error = %e, "snapshot connection failed");
                // Holding chunks for an unreachable store would hold a permit other
                // destinations need; drop them and let the leader retry the transfer.
                let mut dropped = fb.messages();
                while batcher.try_next_frame(&mut fb) {
                    dropped += fb.messages();
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
            ctx.counters.reconnects.fetch_add(1, Ordering::Relaxed);
            backoff.wait().await;
        }
    }
}

/// Longest wait for the receiver to confirm it consumed a snapshot transfer.
const SNAPSHOT_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a snapshot connection waits for the next chunk before closing. Raft sends a
/// transfer one chunk at a time (the next after the receiver's acknowledgement), so closing
/// as soon as the queue is empty would cost a new connection per chunk.
const SNAPSHOT_LINGER: Duration = Duration::from_secs(1);

/// Writes the frame in `fb` and every chunk that follows within [`SNAPSHOT_LINGER`] of the
/// previous one, each once `bucket` allowed its bytes, then ends the input and waits for the
/// receiver to close its side (it does once it handed every message to its store), so the
/// permit covers the whole transfer.
async fn run_snapshot_connection(
    ctx: &TaskCtx,
    batcher: &mut Batcher,
    fb: &mut FrameBuilder,
    stream: TcpStream,
    bucket: &TokenBucket,
) -> bool {
    let (mut rd, mut wr) = stream.into_split();
    let interval = ctx.config.keepalive_interval;
    loop {
        let n = fb.messages();
        let frame = fb.finish();
        let frame_bytes = frame.len() as u64;
        // Not under the write timeout: waiting for the rate is not a stalled peer.
        let waited = bucket.acquire(frame_bytes).await;
        if !waited.is_zero() {
            let waited_us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
            ctx.counters
                .snapshot_throttled_us
                .fetch_add(waited_us, Ordering::Relaxed);
        }
        match tokio::time::timeout(interval, wr.write_all(frame)).await {
            Ok(Ok(())) => {
                ctx.count_batch(n, true);
                ctx.counters
                    .snapshot_bytes_sent
                    .fetch_add(frame_bytes, Ordering::Relaxed);
            }
            _ => {
                tracing::debug!(to_store = ctx.to_store, "snapshot connection failed");
                return false;
            }
        }
        if !batcher.try_next_frame(fb) {
            match tokio::time::timeout(SNAPSHOT_LINGER, batcher.next_frame(fb)).await {
                Ok(true) => {}
                Ok(false) | Err(_) => break,
            }
        }
    }
    if wr.shutdown().await.is_err() {
        return false;
    }
    let mut sink = [0u8; 64];
    matches!(
        tokio::time::timeout(SNAPSHOT_DRAIN_TIMEOUT, rd.read(&mut sink)).await,
        Ok(Ok(0))
    )
}
