//! The store thread: owns the `Store`, drives it with ticks, messages and requests, runs its
//! Ready rounds and answers waiting requests. All access to the store goes through its
//! bounded command channel, so the store itself needs no locks.

use crate::adapter::HostedSm;
use crate::metrics::Metrics;
use kv::{Command, Request};
use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{
    LiveRegions, Region, RegionEpoch, RegionId, RegionStatus, Reply, Store, StoreError, StoreId,
    Ticket,
};
use tokio::sync::oneshot;

/// Commands waiting in the channel before senders are refused (`Busy`).
pub const COMMAND_QUEUE_CAPACITY: usize = 65_536;
/// Commands handled between two Ready rounds, so a flood cannot starve ticks.
const MAX_COMMANDS_PER_ROUND: usize = 4_096;

pub type ReplyTx = oneshot::Sender<Result<Reply<HostedSm>, StoreError>>;

/// What a [`Cmd::Placement`] asks of the placement group.
pub enum PlacementOp {
    Propose(bytes::Bytes),
    /// Configuration `n` (`None`: the latest), linearizably (ReadIndex).
    Query(Option<u64>),
}

/// Where a scheduler split cuts a region (the region's leader picks the key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitBy {
    /// Near the middle of its bytes (`Store::size_split_key`).
    Size,
    /// Where its sampled requests divide (`Store::load_split_key`).
    Load,
}

pub enum Cmd {
    /// A message and the store it came from.
    Raft(StoreId, raft::Message),
    Propose {
        region: RegionId,
        epoch: RegionEpoch,
        key: Vec<u8>,
        request: Request,
        reply: ReplyTx,
    },
    Read {
        region: RegionId,
        epoch: RegionEpoch,
        key: Vec<u8>,
        command: Command,
        reply: ReplyTx,
    },
    StaleRead {
        region: RegionId,
        epoch: RegionEpoch,
        key: Vec<u8>,
        command: Command,
        reply: ReplyTx,
    },
    Status(oneshot::Sender<Vec<RegionStatus>>),
    /// Split a region at `key` (see `Store::propose_split`); answered once applied here.
    Split {
        region: RegionId,
        epoch: RegionEpoch,
        key: Vec<u8>,
        reply: ReplyTx,
    },
    /// Split a region at a key its leader picks (`by`); answered once applied here, or
    /// with why no key was found.
    SplitBy {
        region: RegionId,
        epoch: RegionEpoch,
        by: SplitBy,
        reply: ReplyTx,
    },
    /// Placement says the region is now `current`, without a replica here: destroy this
    /// store's replica if it is an older one (`Store::destroy_stale_replica`).
    DestroyStale {
        current: store::Region,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    /// Start a new window of the regions' load samples (every heartbeat).
    RotateLoadSamples,
    /// A replica change (see `Store::propose_replica_change`); answered once applied here.
    ChangeReplica {
        region: RegionId,
        epoch: RegionEpoch,
        change: store::ReplicaChange,
        reply: ReplyTx,
    },
    /// Merge `source` into `target` (see `Store::propose_merge`); answered once the source
    /// is frozen here.
    Merge {
        source: RegionId,
        epoch: RegionEpoch,
        target: RegionId,
        reply: ReplyTx,
    },
    /// Start handing a region's leadership to the replica on store `to`.
    TransferLeader {
        region: RegionId,
        to: StoreId,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// A verb for the placement group (`placement::encode_command` bytes) or a read of it,
    /// on this store's replica of it (see `crate::placement_svc`).
    Placement {
        op: PlacementOp,
        reply: ReplyTx,
    },
    /// A log write submitted by this loop finished (sent by the engine's writer thread).
    WriteDone,
    Shutdown,
}

/// Wakes the store thread when one of its log writes finishes: a `WriteDone` in its queue,
/// at most one outstanding (a full queue needs none: the loop polls its writes on every
/// wake-up, and ticks wake it regardless).
struct WriteWaker {
    tx: SyncSender<Cmd>,
    queued: std::sync::atomic::AtomicBool,
}

impl std::task::Wake for WriteWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if !self.queued.swap(true, Ordering::AcqRel) && self.tx.try_send(Cmd::WriteDone).is_err() {
            self.queued.store(false, Ordering::Release);
        }
    }
}

/// The sending side, shared by gRPC handlers and the transport ingress.
#[derive(Clone)]
pub struct StoreHandle {
    tx: SyncSender<Cmd>,
    /// The store's regions, as its thread last published them (the one region map).
    pub regions: LiveRegions,
    /// The other stores' addresses and the latest placement configuration seen.
    pub cluster: Arc<crate::cluster_view::ClusterView>,
    /// Stops the store thread when the last handle is dropped. The thread's queue never
    /// disconnects by itself (the loop's write waker holds a sender of it), so this is how
    /// a server dropped without `shutdown` still stops its store.
    _stop: Arc<StopOnDrop>,
}

struct StopOnDrop(SyncSender<Cmd>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        // Blocks only while the queue is full and the thread alive (it is draining it);
        // fails at once if the thread is gone.
        let _ = self.0.send(Cmd::Shutdown);
    }
}

impl StoreHandle {
    pub fn new(
        tx: SyncSender<Cmd>,
        regions: LiveRegions,
        cluster: Arc<crate::cluster_view::ClusterView>,
    ) -> Self {
        StoreHandle {
            _stop: Arc::new(StopOnDrop(tx.clone())),
            tx,
            regions,
            cluster,
        }
    }

    /// Sends without blocking; a full queue is `QueueFull` (the client's `BUSY`), a stopped
    /// store `Stopped`.
    pub fn send(&self, cmd: Cmd) -> Result<(), StoreError> {
        match self.tx.try_send(cmd) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(StoreError::QueueFull {
                limit: COMMAND_QUEUE_CAPACITY,
            }),
            Err(TrySendError::Disconnected(_)) => Err(StoreError::Stopped),
        }
    }

    /// Hands a message from another store to the store thread without blocking.
    pub fn send_raft(&self, from: StoreId, m: raft::Message) -> Result<(), transport::Rejected> {
        match self.tx.try_send(Cmd::Raft(from, m)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(transport::Rejected::Full),
            Err(TrySendError::Disconnected(_)) => Err(transport::Rejected::Closed),
        }
    }

    /// The region of this store holding `key`, from the current map (O(log n)).
    pub fn region_for_key(&self, key: &[u8]) -> Option<Region> {
        self.regions.load().region_for_key(key).cloned()
    }
}

/// Runs the store until `Shutdown` (sent by `ServerHandle::shutdown` or when the last
/// `StoreHandle` is dropped). A storage error is fatal: the store stops, because the disk
/// may no longer hold what was acknowledged. `wake` is a sender of the loop's own
/// queue, used to learn that a log write finished.
///
/// Log writes are asynchronous (`Store::submit_ready`): while the engine's writer thread
/// writes and fsyncs one round, this thread keeps stepping messages, proposing, applying
/// and answering, and the next rounds' writes queue behind it (the engine writes whatever
/// queued with one fdatasync). Before, the thread sat in every round's fdatasync (73 % of its
/// time under 64-client writes, `raftkv_fsync_seconds`), and every message and request that
/// arrived meanwhile waited for it.
pub fn run(
    mut store: Store<HostedSm>,
    rx: Receiver<Cmd>,
    wake: SyncSender<Cmd>,
    tick: Duration,
    transport: transport::Transport,
    metrics: Arc<Metrics>,
) -> Result<(), StoreError> {
    let write_waker = Arc::new(WriteWaker {
        tx: wake,
        queued: std::sync::atomic::AtomicBool::new(false),
    });
    let mut writer = store::EngineWriter {
        waker: std::task::Waker::from(write_waker.clone()),
    };
    // Snapshots are serialized and written on their own thread, which wakes this one like a
    // finished log write does.
    let mut snapshots = store::ThreadBuilder::new(
        format!("snapshot-{}", store.id()),
        std::task::Waker::from(write_waker.clone()),
    )
    .map_err(|e| StoreError::Storage(format!("starting the snapshot thread: {e}")))?;
    let mut waiting: HashMap<Ticket, ReplyTx> = HashMap::new();
    // The driver counts time in microseconds since the loop started.
    let epoch = Instant::now();
    let micros = |at: Instant| at.duration_since(epoch).as_micros() as u64;
    let mut driver = store::Driver::new(tick.as_micros().max(1) as u64, micros(epoch + tick));
    let mut leaders_seen: HashMap<RegionId, Option<store::StoreId>> = HashMap::new();
    // A command taken from the queue to see whether it was empty, handled next.
    let mut peeked: Option<Cmd> = None;
    // Rounds left ready by the driver's per-call bound: come back without waiting.
    let mut more_rounds = false;
    loop {
        let timeout = if more_rounds {
            Duration::ZERO
        } else {
            Duration::from_micros(driver.next_tick().saturating_sub(micros(Instant::now())))
        };
        let first = match peeked.take() {
            Some(c) => Some(c),
            None => match rx.recv_timeout(timeout) {
                Ok(c) => Some(c),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return store.wait_writes(),
            },
        };
        // Time first (see `Driver::catch_up`): the ticks that came due, before the messages
        // that queued up meanwhile.
        // The wall clock reads and expiry housekeeping are judged at (Unix ms, as the
        // `proposed_at_ms` of this store's proposals).
        store.set_clock_ms(crate::service::now_ms());
        let ticked = driver.catch_up(&mut store, micros(Instant::now()))? > 0;
        let mut handled = 0;
        let mut next = first;
        while let Some(cmd) = next.take() {
            if matches!(cmd, Cmd::WriteDone) {
                write_waker
                    .queued
                    .store(false, std::sync::atomic::Ordering::Release);
            }
            if !handle(&mut store, cmd, &mut waiting, &metrics)? {
                // Finish the writes in flight (nothing acknowledged depends on them: a
                // client is answered only for what a quorum has durable).
                return store.wait_writes();
            }
            handled += 1;
            if handled >= MAX_COMMANDS_PER_ROUND {
                break;
            }
            next = rx.try_recv().ok();
        }
        // Rounds whose writes are durable, then every Ready: written here when idle (nothing
        // in flight, nothing queued behind it), else handed to the engine's writer thread.
        more_rounds = driver.run_rounds(
            &mut store,
            &mut writer,
            &mut snapshots,
            &mut || {
                if peeked.is_none() {
                    peeked = rx.try_recv().ok();
                }
                peeked.is_some()
            },
            &mut |s| deliver(s, &transport, &mut waiting),
        )?;
        for d in store.take_write_latencies() {
            metrics.observe_fsync(d);
        }
        for d in store.take_snapshot_durations() {
            metrics.observe_snapshot_stall(d);
        }
        for (serialize, write) in store.take_snapshot_build_times() {
            metrics.observe_snapshot_build(serialize, write);
        }
        for (transfer, install) in store.take_snapshot_receive_times() {
            metrics.observe_snapshot_received(transfer, install);
        }
        metrics.set_store_stats(&store.stats);
        metrics.snapshots_building.store(
            store.snapshots_building() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        if !ticked {
            continue;
        }
        // Region gauges and leader changes once per tick, not on every wake-up: the status
        // clones every region's descriptor, which on a busy store is tens of thousands of
        // allocations per second for numbers nobody reads faster than a tick. (A leader change
        // undone within one tick is not counted.)
        metrics.set_engine_stats(&store.engine().stats());
        metrics.set_transport_stats(&transport.stats());
        let status = store.status();
        metrics.set_regions(&status);
        for st in status {
            let prev = leaders_seen.insert(st.region.id, st.leader);
            if prev.is_some() && prev != Some(st.leader) {
                metrics
                    .leader_changes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

/// Answers completed requests and sends the store's outbox.
fn deliver(
    store: &mut Store<HostedSm>,
    transport: &transport::Transport,
    waiting: &mut HashMap<Ticket, ReplyTx>,
) {
    // Answers first: the network threads run woken tasks in wake order, and a client waiting
    // for its answer should not queue behind the commit-index messages to followers.
    for c in store.take_completions() {
        if let Some(tx) = waiting.remove(&c.ticket) {
            let _ = tx.send(c.result);
        }
    }
    // One frame per destination: on an idle connection the transport writes it from this
    // thread, one syscall, no hand-off to the network thread (see `Transport::send_batch`).
    let mut by_store: Vec<(store::StoreId, Vec<raft::Message>)> = Vec::new();
    for (to, m) in store.take_outbox() {
        match by_store.iter_mut().find(|(s, _)| *s == to) {
            Some((_, msgs)) => msgs.push(m),
            None => by_store.push((to, vec![m])),
        }
    }
    for (to, msgs) in by_store {
        transport.send_batch(to, msgs);
    }
}

/// Returns false on shutdown; a storage error (a replica created or destroyed by a message
/// writes synced) is fatal like a round's.
fn handle(
    store: &mut Store<HostedSm>,
    cmd: Cmd,
    waiting: &mut HashMap<Ticket, ReplyTx>,
    metrics: &Metrics,
) -> Result<bool, StoreError> {
    match cmd {
        Cmd::Raft(from, m) => {
            // Other refusals (an unknown region, a message the core rejects) are dropped.
            if let Err(e @ StoreError::Storage(_)) = store.step(from, m) {
                return Err(e);
            }
        }
        Cmd::Propose {
            region,
            epoch,
            key,
            request,
            reply,
        } => {
            metrics
                .proposals
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match store.propose(region, epoch, &key, request.encode()) {
                Ok(t) => {
                    waiting.insert(t, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
        Cmd::Read {
            region,
            epoch,
            key,
            command,
            reply,
        } => match store.read(region, epoch, &key, command) {
            Ok(t) => {
                waiting.insert(t, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        },
        Cmd::StaleRead {
            region,
            epoch,
            key,
            command,
            reply,
        } => {
            let r = store
                .stale_read(region, epoch, &key, &command)
                .map(Reply::Read);
            let _ = reply.send(r);
        }
        Cmd::Status(tx) => {
            let _ = tx.send(store.status());
        }
        Cmd::Placement { op, reply } => {
            // The placement group holds no keys; its descriptor spans the key space, so the
            // empty key passes the range check.
            // Only the leader answers: it holds the live view, and a heartbeat's answer
            // may need proposals.
            let r = match store.region(store::PLACEMENT_REGION).map(|r| r.epoch) {
                None => Err(StoreError::RegionNotFound(store::PLACEMENT_REGION)),
                Some(_) if store.check_leader(store::PLACEMENT_REGION).is_err() => store
                    .check_leader(store::PLACEMENT_REGION)
                    .map(|()| Ticket(0)),
                Some(epoch) => match op {
                    PlacementOp::Propose(data) => {
                        store.propose(store::PLACEMENT_REGION, epoch, b"", data)
                    }
                    PlacementOp::Query(n) => store.read(
                        store::PLACEMENT_REGION,
                        epoch,
                        b"",
                        placement::query_command(n),
                    ),
                },
            };
            match r {
                Ok(t) => {
                    waiting.insert(t, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
        Cmd::Split {
            region,
            epoch,
            key,
            reply,
        } => match store.propose_split(region, epoch, &key) {
            Ok(t) => {
                waiting.insert(t, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        },
        Cmd::SplitBy {
            region,
            epoch,
            by,
            reply,
        } => {
            let key = match by {
                SplitBy::Size => store.size_split_key(region),
                SplitBy::Load => store.load_split_key(region),
            };
            match key.and_then(|k| store.propose_split(region, epoch, &k)) {
                Ok(t) => {
                    waiting.insert(t, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
        Cmd::DestroyStale { current, reply } => {
            let _ = reply.send(store.destroy_stale_replica(current.id, &current));
        }
        Cmd::RotateLoadSamples => store.rotate_load_samples(),
        Cmd::ChangeReplica {
            region,
            epoch,
            change,
            reply,
        } => match store.propose_replica_change(region, epoch, change) {
            Ok(t) => {
                waiting.insert(t, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        },
        Cmd::Merge {
            source,
            epoch,
            target,
            reply,
        } => match store.propose_merge(source, epoch, target) {
            Ok(t) => {
                waiting.insert(t, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        },
        Cmd::TransferLeader { region, to, reply } => {
            let _ = reply.send(store.transfer_leader(region, to));
        }
        Cmd::WriteDone => {}
        Cmd::Shutdown => return Ok(false),
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full queue is `QueueFull` (not `Busy` of some region), a stopped store is
    /// `Stopped` (not a storage failure).
    #[test]
    fn send_reports_a_full_queue_and_a_stopped_store_for_what_they_are() {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let handle = StoreHandle::new(
            tx,
            LiveRegions::default(),
            Arc::new(crate::cluster_view::ClusterView::new(1, &[], None)),
        );
        assert_eq!(handle.send(Cmd::WriteDone), Ok(()));
        assert_eq!(
            handle.send(Cmd::WriteDone),
            Err(StoreError::QueueFull {
                limit: COMMAND_QUEUE_CAPACITY
            })
        );
        drop(rx);
        assert_eq!(handle.send(Cmd::WriteDone), Err(StoreError::Stopped));
    }
}
