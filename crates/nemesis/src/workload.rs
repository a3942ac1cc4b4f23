//! Concurrent clients, gRPC (crate `client`) and Redis protocol (crate `redis`), recording
//! every operation in a `lincheck` [`History`].
//!
//! Operations and how they map onto [`KvInput`]:
//!
//! | model | gRPC | RESP |
//! |---|---|---|
//! | `Get` | `get` (linearizable) | `GET` |
//! | `Put` | `put` | `SET` |
//! | `Append` | `append` | `APPEND` |
//! | `Cas` | `cas` from the value this client last read | `SET key value NX` = `Cas(expected: None)` |
//! | `Delete` | `delete` | `DEL` (one key) |
//!
//! Outcomes: a reply is recorded as it came; a failed read is dropped (it changed nothing); a
//! failed write is recorded as *unknown* (it may take effect at any later time), except errors
//! that promise nothing was done: the client's argument errors and the RESP front end's
//! `TRYAGAIN`, which its contract (`crates/server/src/resp_backend.rs`) reserves for requests
//! never proposed. The nemesis holds the server to that promise.
//!
//! Keys rotate by operation count, not by time ([`KeyRotation`]): the clients share
//! [`LIVE_KEYS`] key slots (four per region) and draw one at random per operation; a slot's key
//! retires after exactly [`OPS_PER_KEY`] operations (from all clients together) and the slot
//! moves on to a fresh key. So no key's history is ever longer than [`OPS_PER_KEY`] operations
//! plus its final reads, whatever the machine's speed or the run's length, and the checker's
//! state budget is sized for that; writes that are still unknown stay in their own keys'
//! histories. Besides, 1 in 20 operations is a *write-once* put to a key nobody else writes;
//! every acknowledged one must be read back at the end (the plainest form of "no acknowledged
//! write is lost").

use crate::cluster::Cluster;
use crate::schedule::Rng;
use lincheck::kv::{KvInput, KvOutput};
use lincheck::History;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub type KvHistory = History<KvInput, KvOutput>;

/// Register keys in use at any time (spread over the three regions split at `g` and `p`).
pub const LIVE_KEYS: usize = 12;
/// Operations (invocations, reads included, from all clients) a register key receives before
/// it retires. With 8 clients this is a few seconds of a key's life on a 2-core debug run.
pub const OPS_PER_KEY: u32 = 100;
const REGION_PREFIXES: [&str; 3] = ["a", "h", "q"];
/// One gRPC operation across all its retries.
/// Shorter than most faults, so that some writes end unknown and the checker has to place
/// them (the client's exactly-once retries are what is exercised then).
const GRPC_OP_TIMEOUT: Duration = Duration::from_secs(3);
const GRPC_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longer than the RESP front end's own budget (2 × its 5 s request timeout), so that the
/// server's answer, not our timeout, usually decides the outcome.
const RESP_OP_TIMEOUT: Duration = Duration::from_secs(12);
const RESP_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed operation (grows to the max), so a client facing a dead store does
/// not spin.
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// How long stopping may wait for the clients' in-flight operations.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// The history client id of the final reader (workers use 0.. and 100..).
pub const FINAL_READER_ID: u64 = 1_000;

/// Live counts, read by the scheduler's liveness checks and the report.
#[derive(Debug, Default)]
pub struct Counters {
    /// Operations answered (any answer, including "not swapped").
    pub completed: AtomicU64,
    /// Writes whose outcome is unknown.
    pub unknown: AtomicU64,
    /// Reads that failed, and writes refused with a definite error.
    pub failed_definite: AtomicU64,
    pub grpc_completed: AtomicU64,
    pub resp_completed: AtomicU64,
    /// Writes the server acknowledged as done (put, append, delete, write-once put, a CAS
    /// that swapped; a CAS answered "not swapped" is not a write), per protocol.
    pub grpc_writes_acked: AtomicU64,
    pub resp_writes_acked: AtomicU64,
}

/// The shared key slots: see the module comment.
#[derive(Debug)]
pub struct KeyRotation {
    /// Per slot: (generation, operations charged to its current key).
    slots: Mutex<[(u64, u32); LIVE_KEYS]>,
}

impl Default for KeyRotation {
    fn default() -> Self {
        KeyRotation {
            slots: Mutex::new([(0, 0); LIVE_KEYS]),
        }
    }
}

impl KeyRotation {
    /// The key of slot `slot`'s generation `generation`: region by slot, so each region
    /// always has [`LIVE_KEYS`]` / 3` live keys.
    pub fn key(slot: usize, generation: u64) -> Vec<u8> {
        format!("{}r{generation}k{slot}", REGION_PREFIXES[slot % 3]).into_bytes()
    }

    /// Charges one operation to a random live key and returns it; the operation that uses
    /// up a key's [`OPS_PER_KEY`] retires it (the slot's next operation gets a fresh key).
    pub fn next_key(&self, rng: &mut Rng) -> Vec<u8> {
        let slot = rng.range(0, LIVE_KEYS as u64 - 1) as usize;
        let mut slots = lock(&self.slots);
        let (generation, used) = &mut slots[slot];
        let key = KeyRotation::key(slot, *generation);
        *used += 1;
        if *used == OPS_PER_KEY {
            *generation += 1;
            *used = 0;
        }
        key
    }
}

/// State shared by the clients and read after they stop.
#[derive(Debug, Default)]
pub struct Shared {
    pub history: KvHistory,
    pub counters: Counters,
    /// Acknowledged write-once puts: (key, value).
    pub write_once_acked: Mutex<Vec<(Vec<u8>, Vec<u8>)>>,
    /// Every register key an operation was invoked on.
    pub register_keys: Mutex<BTreeSet<Vec<u8>>>,
    pub keys: KeyRotation,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each update is one push/insert, so a poisoned lock still holds consistent data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct Workload {
    pub shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// One operation a client is about to run.
#[derive(Clone, Debug)]
enum Op {
    Get(Vec<u8>),
    Put(Vec<u8>, Vec<u8>),
    Append(Vec<u8>, Vec<u8>),
    Cas(Vec<u8>, Option<Vec<u8>>, Vec<u8>),
    Delete(Vec<u8>),
    WriteOnce(Vec<u8>, Vec<u8>),
}

impl Op {
    fn input(&self) -> KvInput {
        match self.clone() {
            Op::Get(key) => KvInput::Get { key },
            Op::Put(key, value) | Op::WriteOnce(key, value) => KvInput::Put { key, value },
            Op::Append(key, value) => KvInput::Append { key, value },
            Op::Cas(key, expected, new) => KvInput::Cas { key, expected, new },
            Op::Delete(key) => KvInput::Delete { key },
        }
    }

    fn is_read(&self) -> bool {
        matches!(self, Op::Get(_))
    }

    /// Whether `out`, this operation's answer, acknowledges a write that took effect.
    fn acknowledges_write(&self, out: &KvOutput) -> bool {
        match self {
            Op::Get(_) => false,
            Op::Cas(..) => matches!(out, KvOutput::Cas(true)),
            Op::Put(..) | Op::Append(..) | Op::Delete(_) | Op::WriteOnce(..) => true,
        }
    }
}

/// What came back.
enum Outcome {
    Done(KvOutput),
    /// The operation surely did not take effect.
    Definite,
    Unknown,
}

/// Draws operations for one client.
struct OpSource {
    rng: Rng,
    client: u64,
    sequence: u64,
    /// The value this client last read per key: CAS expects it.
    last_read: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// SET NX is the only compare-and-set Redis has.
    cas_expects_absent_only: bool,
}

impl OpSource {
    fn next(&mut self, keys: &KeyRotation) -> Op {
        self.sequence += 1;
        // Unique, so the checker can tell every write apart.
        let value = format!("c{}n{};", self.client, self.sequence).into_bytes();
        let draw = self.rng.range(0, 99);
        // Write-once puts use their own keys and charge no register key.
        let key = if draw < 95 {
            keys.next_key(&mut self.rng)
        } else {
            Vec::new()
        };
        match draw {
            0..=29 => Op::Get(key),
            30..=49 => Op::Put(key, value),
            50..=69 => Op::Append(key, value),
            70..=84 => {
                let expected = if self.cas_expects_absent_only {
                    None
                } else {
                    self.last_read.get(&key).cloned().flatten()
                };
                Op::Cas(key, expected, value)
            }
            85..=94 => Op::Delete(key),
            _ => {
                let region = REGION_PREFIXES[self.rng.range(0, 2) as usize];
                let key = format!("{region}w{}-{}", self.client, self.sequence).into_bytes();
                Op::WriteOnce(key, value)
            }
        }
    }
}

fn grpc_outcome(op: &Op, e: &client::ClientError) -> Outcome {
    use client::ClientError::*;
    match e {
        _ if op.is_read() => Outcome::Definite,
        // NoSpace: refused before proposing (the client reports Timeout when an earlier
        // attempt's outcome was unknown).
        KeyTooLarge(_) | ValueTooLarge(_) | InvalidArgument(_) | BadEndpoint(_) | NoSpace(_) => {
            Outcome::Definite
        }
        Timeout(_) | Server { .. } => Outcome::Unknown,
    }
}

async fn run_grpc(cl: &mut client::Client, op: &Op, stale_reads: bool) -> Outcome {
    let result = match op {
        // The canary: a replica's local state, not linearizable (see `RunConfig::stale_reads`).
        Op::Get(key) if stale_reads => cl.get_stale(key).await.map(KvOutput::Get),
        Op::Get(key) => cl.get(key).await.map(KvOutput::Get),
        Op::Put(key, value) | Op::WriteOnce(key, value) => {
            cl.put(key, value).await.map(|_| KvOutput::Put)
        }
        Op::Append(key, value) => cl.append(key, value).await.map(|_| KvOutput::Append),
        Op::Cas(key, expected, new) => cl
            .cas(key, expected.as_deref(), new)
            .await
            .map(KvOutput::Cas),
        Op::Delete(key) => cl.delete(key).await.map(|_| KvOutput::Delete),
    };
    match result {
        Ok(out) => Outcome::Done(out),
        Err(e) => grpc_outcome(op, &e),
    }
}

async fn run_resp(conn: &mut redis::aio::MultiplexedConnection, op: &Op) -> Outcome {
    use redis::{cmd, Value};
    let query = async {
        match op {
            Op::Get(key) => cmd("GET")
                .arg(key)
                .query_async::<Option<Vec<u8>>>(conn)
                .await
                .map(KvOutput::Get),
            Op::Put(key, value) | Op::WriteOnce(key, value) => cmd("SET")
                .arg(key)
                .arg(value)
                .query_async::<()>(conn)
                .await
                .map(|_| KvOutput::Put),
            Op::Append(key, value) => cmd("APPEND")
                .arg(key)
                .arg(value)
                .query_async::<i64>(conn)
                .await
                .map(|_| KvOutput::Append),
            Op::Cas(key, _, new) => cmd("SET")
                .arg(key)
                .arg(new)
                .arg("NX")
                .query_async::<Value>(conn)
                .await
                .map(|v| KvOutput::Cas(matches!(v, Value::Okay))),
            Op::Delete(key) => cmd("DEL")
                .arg(key)
                .query_async::<i64>(conn)
                .await
                .map(|_| KvOutput::Delete),
        }
    };
    match tokio::time::timeout(RESP_OP_TIMEOUT, query).await {
        Ok(Ok(out)) => Outcome::Done(out),
        Ok(Err(_)) if op.is_read() => Outcome::Definite,
        Ok(Err(e)) if e.code() == Some("TRYAGAIN") => Outcome::Definite,
        Ok(Err(_)) | Err(_) => {
            if op.is_read() {
                Outcome::Definite
            } else {
                Outcome::Unknown
            }
        }
    }
}

/// Resolves operation `id` in the history by its outcome and counts it.
fn record(shared: &Shared, op: &Op, id: lincheck::OpId, outcome: &Outcome, resp: bool) {
    let h = &shared.history;
    let c = &shared.counters;
    match outcome {
        Outcome::Done(out) => {
            h.complete(id, out.clone());
            c.completed.fetch_add(1, Ordering::Relaxed);
            let (done, writes) = if resp {
                (&c.resp_completed, &c.resp_writes_acked)
            } else {
                (&c.grpc_completed, &c.grpc_writes_acked)
            };
            done.fetch_add(1, Ordering::Relaxed);
            if op.acknowledges_write(out) {
                writes.fetch_add(1, Ordering::Relaxed);
            }
            if let Op::WriteOnce(key, value) = op {
                lock(&shared.write_once_acked).push((key.clone(), value.clone()));
            }
        }
        Outcome::Definite => {
            h.fail_definite(id);
            c.failed_definite.fetch_add(1, Ordering::Relaxed);
        }
        Outcome::Unknown => {
            h.fail_unknown(id);
            c.unknown.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Workload {
    /// Starts `grpc_clients` + `resp_clients` client tasks on the current runtime.
    pub async fn start(
        cluster: &Cluster,
        seed: u64,
        grpc_clients: usize,
        resp_clients: usize,
        stale_reads: bool,
    ) -> Workload {
        let shared = Arc::new(Shared::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        let source = |client: u64, absent_only: bool| OpSource {
            rng: Rng::new(seed ^ (client + 1).wrapping_mul(0x2545_F491_4F6C_DD1D)),
            client,
            sequence: 0,
            last_read: HashMap::new(),
            cas_expects_absent_only: absent_only,
        };
        for g in 0..grpc_clients as u64 {
            let endpoints = cluster.endpoints();
            let cfg = client::ClientConfig {
                op_timeout: GRPC_OP_TIMEOUT,
                attempt_timeout: GRPC_ATTEMPT_TIMEOUT,
                ..Default::default()
            };
            let mut ops = source(g, false);
            let (shared, stop) = (shared.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let Ok(mut cl) = client::Client::with_config(endpoints, cfg).await else {
                    return;
                };
                let mut backoff = BACKOFF_MIN;
                while !stop.load(Ordering::Relaxed) {
                    let op = ops.next(&shared.keys);
                    if !matches!(op, Op::WriteOnce(..)) {
                        lock(&shared.register_keys).insert(op.input().key().to_vec());
                    }
                    let id = shared.history.invoke(g, op.input());
                    let outcome = run_grpc(&mut cl, &op, stale_reads).await;
                    if let (Op::Get(key), Outcome::Done(KvOutput::Get(v))) = (&op, &outcome) {
                        ops.last_read.insert(key.clone(), v.clone());
                    }
                    let failed = !matches!(outcome, Outcome::Done(_));
                    record(&shared, &op, id, &outcome, false);
                    if failed {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    } else {
                        backoff = BACKOFF_MIN;
                    }
                }
            }));
        }
        let urls: Vec<String> = (0..cluster.stores())
            .map(|i| cluster.redis_url(i))
            .collect();
        // RESP clients share one connection per store (as users of a multiplexing client
        // library do), so their concurrent commands reach the server as a pipeline and run as
        // one `Pipeline` entry per region (`resp::cmd::pipeline`).
        let pool: RespPool = Arc::new(tokio::sync::Mutex::new(vec![None; urls.len()]));
        for r in 0..resp_clients {
            let id_base = 100 + r as u64;
            let mut ops = source(id_base, true);
            let (shared, stop, urls, pool) =
                (shared.clone(), stop.clone(), urls.clone(), pool.clone());
            tasks.push(tokio::spawn(async move {
                // Clients start two to a store and move to the next store on failures.
                let mut store = (r / 2) % urls.len();
                let mut conn: Option<redis::aio::MultiplexedConnection> = None;
                let mut backoff = BACKOFF_MIN;
                while !stop.load(Ordering::Relaxed) {
                    if conn.is_none() {
                        conn = pooled_resp(&pool, store, &urls[store]).await;
                        if conn.is_none() {
                            store = (store + 1) % urls.len();
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(BACKOFF_MAX);
                            continue;
                        }
                    }
                    let Some(c) = conn.as_mut() else { continue };
                    let op = ops.next(&shared.keys);
                    if !matches!(op, Op::WriteOnce(..)) {
                        lock(&shared.register_keys).insert(op.input().key().to_vec());
                    }
                    let id = shared.history.invoke(id_base, op.input());
                    let outcome = run_resp(c, &op).await;
                    let failed = !matches!(outcome, Outcome::Done(_));
                    record(&shared, &op, id, &outcome, true);
                    if failed {
                        // A fresh connection, to the next store: the old one may be wedged.
                        conn = None;
                        pool.lock().await[store] = None;
                        store = (store + 1) % urls.len();
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    } else {
                        backoff = BACKOFF_MIN;
                    }
                }
            }));
        }
        Workload {
            shared,
            stop,
            tasks,
        }
    }

    /// Stops the clients and waits (bounded) for their last operations.
    pub async fn stop(self) -> Result<Arc<Shared>, String> {
        self.stop.store(true, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
        for task in self.tasks {
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                return Err(format!("a client did not stop within {STOP_TIMEOUT:?}"));
            }
        }
        Ok(self.shared)
    }
}

/// One shared RESP connection per store, made on first use and dropped on a failure.
type RespPool = Arc<tokio::sync::Mutex<Vec<Option<redis::aio::MultiplexedConnection>>>>;

async fn pooled_resp(
    pool: &RespPool,
    store: usize,
    url: &str,
) -> Option<redis::aio::MultiplexedConnection> {
    let mut slots = pool.lock().await;
    if slots[store].is_none() {
        slots[store] = connect_resp(url).await;
    }
    slots[store].clone()
}

async fn connect_resp(url: &str) -> Option<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url).ok()?;
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(RESP_CONNECT_TIMEOUT)
        .set_response_timeout(RESP_OP_TIMEOUT);
    tokio::time::timeout(
        RESP_CONNECT_TIMEOUT * 2,
        client.get_multiplexed_async_connection_with_config(&cfg),
    )
    .await
    .ok()?
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bound the checker's budget relies on: however the clients draw, no key gets more
    /// than [`OPS_PER_KEY`] operations, and retired keys are never handed out again.
    #[test]
    fn no_key_gets_more_than_ops_per_key_operations() {
        let keys = KeyRotation::default();
        let mut rngs: Vec<Rng> = (0..8).map(Rng::new).collect();
        let mut per_key: HashMap<Vec<u8>, u32> = HashMap::new();
        let total = 50 * OPS_PER_KEY as usize * LIVE_KEYS;
        for n in 0..total {
            *per_key.entry(keys.next_key(&mut rngs[n % 8])).or_default() += 1;
        }
        assert!(per_key.values().all(|&n| n <= OPS_PER_KEY), "{per_key:?}");
        // Fully used keys are the norm: only the live ones are partly used at the end.
        let full = per_key.values().filter(|&&n| n == OPS_PER_KEY).count();
        assert!(
            full + LIVE_KEYS >= per_key.len(),
            "{full} of {}",
            per_key.len()
        );
        assert!(per_key.len() >= total / OPS_PER_KEY as usize);
    }
}
