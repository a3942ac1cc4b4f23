//! Redis expiry is exact across leader changes (issue 20), with real `raftkv server`
//! processes (3 stores, regions split at `g` and `p`; every key of this test is in [p, ∞)).
//!
//! Writers give keys deadlines (`SET k v PX d`, `SET k v PXAT t`, `PEXPIRE`, `PERSIST`,
//! `GETEX PX`, d drawn from 200–1500 ms) while readers `GET` and `PTTL` them through all
//! three stores, and about every 1.5 s the leadership of the keys' region moves: by
//! `raftkv region transfer-leader`, or by SIGKILLing the store leading it and restarting
//! that store a second later. All stores run on this machine and share its clock, so a
//! write's deadline as the log sees it (the leader's clock in the entry, plus d) lies in
//! [S + d, A + d], S being the write's send time and A its acknowledgement (ms since the
//! Unix epoch). Each key has one writer, which waits for an acknowledgement before the next
//! write. Every read that began after the key's latest acknowledged write and ended before
//! its next write was sent (send time R0, reply time R1) is judged:
//! - no replica serves a key after its deadline: a read sent after A + d + 5 ms (5 ms: ms
//!   rounding only) finds nothing (GET nil, PTTL -2);
//! - none drops one before: a read answered before S + d finds the value, and its PTTL is
//!   between 0 and d and consistent with the deadline's window;
//! - in between, either, but never another value, and once a read found the key gone no
//!   read sent later finds it again;
//! - a key without a deadline (after PERSIST) reads its value with PTTL -1, a key that is
//!   gone reads nil / -2.
//!
//! The writes' own replies are judged the same way (PEXPIRE, PERSIST and GETEX tell whether
//! the key still existed when they applied). A write whose outcome is unknown (connection
//! error, timeout) retires its key name: its writer goes on under a fresh name, so a write
//! that applies late can never touch a key that is still judged. The test asserts that no
//! read or reply broke these rules, that at least 50 reads were judged on each side of a
//! deadline, and that both kinds of fault happened. Finally every key gets one last
//! deadline and `DBSIZE` must fall to the keys written without one within 15 s of the last
//! deadline: expired keys are deleted in the background through the log, so their memory
//! comes back even though nobody reads them.

mod common;

use common::{Rng, TestCluster};
use redis::aio::MultiplexedConnection;
use redis::{cmd, Cmd, FromRedisValue};
use serde_json::Value as Json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const READY: Duration = Duration::from_secs(30);
/// Every key starts with this: the region [p, ∞) holds them all.
const PREFIX: &str = "ttl:";
const WRITERS: usize = 4;
/// Keys per writer; each key has exactly one writer.
const SLOTS_PER_WRITER: usize = 6;
const SLOTS: usize = WRITERS * SLOTS_PER_WRITER;
const READERS: usize = 6;
/// How long the fault task runs, how long it waits between faults, and how long a killed
/// store stays down.
const FAULTS_FOR: Duration = Duration::from_secs(12);
const FAULT_EVERY: Duration = Duration::from_millis(1500);
const DOWN_FOR: Duration = Duration::from_secs(1);
/// The load's bound on one command (and on connecting).
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// Milliseconds of rounding a deadline comparison allows (times are whole ms on both sides).
const SLACK_MS: u64 = 5;
/// Reads that must have been judged on each side of a deadline.
const MIN_JUDGED: u64 = 50;
/// Keys written without a deadline at the end: what `DBSIZE` must come down to.
const KEEP: usize = 5;
/// How long after the last deadline the background deletion may take.
const MEMORY_BOUND: Duration = Duration::from_secs(15);

/// Wall-clock ms since the Unix epoch: the clock the servers put into their log entries.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

fn key_name(slot: usize, generation: u64) -> String {
    format!("{PREFIX}{slot}:{generation}")
}

/// A connection to one RESP port, or None if it does not accept one now.
async fn try_connect(url: &str) -> Option<MultiplexedConnection> {
    let client = redis::Client::open(url).ok()?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(OP_TIMEOUT)
        .set_response_timeout(OP_TIMEOUT);
    let connecting = client.get_multiplexed_async_connection_with_config(&config);
    tokio::time::timeout(OP_TIMEOUT + Duration::from_millis(500), connecting)
        .await
        .ok()?
        .ok()
}

/// A connection to the first store (from `first` on, in turn) that accepts one; panics
/// after 30 s.
async fn connect_retrying(urls: &[String], first: usize) -> MultiplexedConnection {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = first;
    loop {
        if let Some(conn) = try_connect(&urls[i % urls.len()]).await {
            return conn;
        }
        assert!(
            Instant::now() < deadline,
            "no store's RESP port accepted a connection within 30 s"
        );
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One command, bounded by [`OP_TIMEOUT`]; any failure as text.
async fn run<T: FromRedisValue>(conn: &mut MultiplexedConnection, c: &Cmd) -> Result<T, String> {
    match tokio::time::timeout(
        OP_TIMEOUT + Duration::from_millis(500),
        c.query_async::<T>(conn),
    )
    .await
    {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {OP_TIMEOUT:?}")),
    }
}

/// A task's connections, one per store, made when first needed and dropped after an error.
struct Conns {
    urls: Arc<Vec<String>>,
    conns: Vec<Option<MultiplexedConnection>>,
}

impl Conns {
    fn new(urls: Arc<Vec<String>>) -> Conns {
        let conns = urls.iter().map(|_| None).collect();
        Conns { urls, conns }
    }

    /// Store `i`'s connection; None if it does not accept one now.
    async fn get(&mut self, i: usize) -> Option<&mut MultiplexedConnection> {
        if self.conns[i].is_none() {
            self.conns[i] = try_connect(&self.urls[i]).await;
        }
        self.conns[i].as_mut()
    }

    fn drop_conn(&mut self, i: usize) {
        self.conns[i] = None;
    }
}

/// What a key holds once a write was acknowledged, as far as the test can know.
#[derive(Clone, Debug, PartialEq)]
enum State {
    /// No key: never written, or found gone by an acknowledged command.
    Absent,
    /// The value, without a deadline.
    Persistent(String),
    /// The value until a deadline somewhere in `lo..=hi` (ms since the epoch, as the log sees
    /// it); no PTTL may exceed `pttl_max` (the d of the write that set the deadline).
    Expiring {
        value: String,
        lo: u64,
        hi: u64,
        pttl_max: u64,
    },
}

impl State {
    fn value(&self) -> Option<&str> {
        match self {
            State::Absent => None,
            State::Persistent(v) | State::Expiring { value: v, .. } => Some(v),
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum WriteOp {
    SetPx,
    SetPxat,
    Pexpire,
    Persist,
    GetexPx,
}

#[derive(Clone, Debug)]
enum Reply {
    Ok,
    Int(i64),
    Value(Option<String>),
}

/// One write, as its writer saw it.
#[derive(Clone, Debug)]
struct WriteRec {
    key: String,
    /// The command as sent.
    what: String,
    /// The store it was sent to (0-based).
    store: usize,
    /// Send time.
    s: u64,
    /// Acknowledgement time; None: outcome unknown (the key name was retired).
    a: Option<u64>,
    /// The key's state once acknowledged; None when the outcome is unknown or the reply
    /// broke the rules (the key name was retired either way).
    after: Option<State>,
}

#[derive(Clone, Debug)]
enum ReadReply {
    Get(Option<String>),
    Pttl(i64),
}

impl ReadReply {
    /// Whether the reply shows the key existing.
    fn present(&self) -> bool {
        match self {
            ReadReply::Get(v) => v.is_some(),
            ReadReply::Pttl(p) => *p >= 0 || *p == -1,
        }
    }
}

/// One answered read.
#[derive(Clone, Debug)]
struct ReadRec {
    key: String,
    store: usize,
    r0: u64,
    r1: u64,
    reply: ReadReply,
}

/// Whether the key must (Some(true)) or must not (Some(false)) exist when a command sent at
/// `s` and acknowledged at `a` applied, given the state before it; None: either.
fn must_exist(prior: &State, s: u64, a: u64) -> Option<bool> {
    match prior {
        State::Absent => Some(false),
        State::Persistent(_) => Some(true),
        State::Expiring { lo, hi, .. } => {
            if a < *lo {
                Some(true)
            } else if s > hi + SLACK_MS {
                Some(false)
            } else {
                None
            }
        }
    }
}

/// The key's state after an acknowledged write, or why the reply breaks the rules.
fn next_state(
    prior: &State,
    op: WriteOp,
    reply: &Reply,
    (s, a, d): (u64, u64, u64),
    value: &str,
) -> Result<State, String> {
    let expiring = |v: &str| State::Expiring {
        value: v.to_string(),
        lo: s + d,
        hi: a + d,
        pttl_max: d,
    };
    let must = must_exist(prior, s, a);
    let check = |exists: bool| -> Result<(), String> {
        match must {
            Some(m) if m != exists => Err(format!(
                "the reply says the key {} when the command applied; it {}",
                if exists { "existed" } else { "was gone" },
                if m {
                    "must still have existed"
                } else {
                    "must have been gone"
                }
            )),
            _ => Ok(()),
        }
    };
    match (op, reply) {
        (WriteOp::SetPx, Reply::Ok) => Ok(expiring(value)),
        (WriteOp::SetPxat, Reply::Ok) => Ok(State::Expiring {
            value: value.to_string(),
            lo: s + d,
            hi: s + d,
            pttl_max: d,
        }),
        (WriteOp::Pexpire, Reply::Int(1)) => {
            check(true)?;
            let v = prior
                .value()
                .ok_or("PEXPIRE found a key its writer had not set")?;
            Ok(expiring(v))
        }
        (WriteOp::Pexpire, Reply::Int(0)) => {
            check(false)?;
            Ok(State::Absent)
        }
        (WriteOp::Persist, Reply::Int(1)) => {
            check(true)?;
            match prior {
                State::Expiring { value, .. } => Ok(State::Persistent(value.clone())),
                _ => Err("PERSIST answered 1 on a key without a deadline".to_string()),
            }
        }
        (WriteOp::Persist, Reply::Int(0)) => match prior {
            State::Persistent(v) => Ok(State::Persistent(v.clone())),
            _ => {
                check(false)?;
                Ok(State::Absent)
            }
        },
        (WriteOp::GetexPx, Reply::Value(Some(x))) => {
            check(true)?;
            match prior.value() {
                Some(v) if v == x.as_str() => Ok(expiring(x.as_str())),
                v => Err(format!("GETEX returned {x:?}; the key held {v:?}")),
            }
        }
        (WriteOp::GetexPx, Reply::Value(None)) => {
            check(false)?;
            Ok(State::Absent)
        }
        (op, reply) => Err(format!("unexpected reply {reply:?} to {op:?}")),
    }
}

/// One key of a writer: its current name (a new generation after an unknown outcome).
struct Slot {
    slot: usize,
    generation: u64,
    name: String,
    state: State,
    /// When the writer writes it next.
    due: Instant,
}

/// Moves a slot to a fresh key name, published to the readers.
fn retire(slot: &mut Slot, names: &[Mutex<String>]) {
    slot.generation += 1;
    slot.name = key_name(slot.slot, slot.generation);
    slot.state = State::Absent;
    *names[slot.slot].lock().unwrap() = slot.name.clone();
}

#[derive(Default)]
struct WriterReport {
    writes: Vec<WriteRec>,
    /// Replies that broke the rules.
    violations: Vec<String>,
    /// The first errors seen.
    errors: Vec<String>,
    acked: u64,
    unknown: u64,
}

/// Writer `w`: owns keys `w * SLOTS_PER_WRITER ..`; writes each in turn, at random times
/// (100–2500 ms apart, so keys often outlive their deadlines unwritten), through a random
/// store, waiting for each write's answer.
async fn writer(
    w: usize,
    seed: u64,
    urls: Arc<Vec<String>>,
    names: Arc<Vec<Mutex<String>>>,
    stop: Arc<AtomicBool>,
) -> WriterReport {
    let mut rng = Rng::new(seed ^ (w as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407));
    let mut conns = Conns::new(urls);
    let mut report = WriterReport::default();
    let mut slots: Vec<Slot> = (0..SLOTS_PER_WRITER)
        .map(|j| {
            let slot = w * SLOTS_PER_WRITER + j;
            Slot {
                slot,
                generation: 0,
                name: key_name(slot, 0),
                state: State::Absent,
                due: Instant::now(),
            }
        })
        .collect();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let j = (0..slots.len())
            .min_by_key(|&j| slots[j].due)
            .expect("a writer has keys");
        let now = Instant::now();
        if slots[j].due > now {
            // Pacing, not a wait for a condition: the key is left alone until then.
            tokio::time::sleep((slots[j].due - now).min(Duration::from_millis(50))).await;
            continue;
        }
        let store = rng.below(3) as usize;
        let Some(conn) = conns.get(store).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        n += 1;
        let d = 200 + rng.below(1301);
        let op = match rng.below(100) {
            0..=49 => WriteOp::SetPx,
            50..=59 => WriteOp::SetPxat,
            60..=74 => WriteOp::Pexpire,
            75..=84 => WriteOp::Persist,
            _ => WriteOp::GetexPx,
        };
        let key = slots[j].name.clone();
        let value = format!("v{w}.{n}");
        let s = now_ms();
        let (what, reply) = match op {
            WriteOp::SetPx => (
                format!("SET {key} {value} PX {d}"),
                run::<()>(conn, cmd("SET").arg(&key).arg(&value).arg("PX").arg(d))
                    .await
                    .map(|_| Reply::Ok),
            ),
            WriteOp::SetPxat => {
                let at = s + d;
                (
                    format!("SET {key} {value} PXAT {at}"),
                    run::<()>(conn, cmd("SET").arg(&key).arg(&value).arg("PXAT").arg(at))
                        .await
                        .map(|_| Reply::Ok),
                )
            }
            WriteOp::Pexpire => (
                format!("PEXPIRE {key} {d}"),
                run::<i64>(conn, cmd("PEXPIRE").arg(&key).arg(d))
                    .await
                    .map(Reply::Int),
            ),
            WriteOp::Persist => (
                format!("PERSIST {key}"),
                run::<i64>(conn, cmd("PERSIST").arg(&key))
                    .await
                    .map(Reply::Int),
            ),
            WriteOp::GetexPx => (
                format!("GETEX {key} PX {d}"),
                run::<Option<String>>(conn, cmd("GETEX").arg(&key).arg("PX").arg(d))
                    .await
                    .map(Reply::Value),
            ),
        };
        let a = now_ms();
        match reply {
            Err(e) => {
                // Outcome unknown: it may still apply, later. The name is never judged again.
                conns.drop_conn(store);
                if report.errors.len() < 20 {
                    report
                        .errors
                        .push(format!("{what} via store {}: {e}", store + 1));
                }
                report.writes.push(WriteRec {
                    key,
                    what,
                    store,
                    s,
                    a: None,
                    after: None,
                });
                report.unknown += 1;
                retire(&mut slots[j], &names);
            }
            Ok(reply) => {
                let prior = slots[j].state.clone();
                match next_state(&prior, op, &reply, (s, a, d), &value) {
                    Ok(state) => {
                        report.writes.push(WriteRec {
                            key,
                            what,
                            store,
                            s,
                            a: Some(a),
                            after: Some(state.clone()),
                        });
                        slots[j].state = state;
                        report.acked += 1;
                    }
                    Err(why) => {
                        report.violations.push(format!(
                            "{what} via store {}: sent at S={s}, answered at A={a} with \
                             {reply:?}: {why} (state before: {prior:?})",
                            store + 1
                        ));
                        report.writes.push(WriteRec {
                            key,
                            what,
                            store,
                            s,
                            a: Some(a),
                            after: None,
                        });
                        retire(&mut slots[j], &names);
                    }
                }
            }
        }
        slots[j].due = Instant::now() + Duration::from_millis(100 + rng.below(2401));
    }
    report
}

#[derive(Default)]
struct ReaderReport {
    reads: Vec<ReadRec>,
    failed: u64,
    errors: Vec<String>,
}

/// Reader `r`: GET or PTTL of a random key through a random store, continuously.
async fn reader(
    r: usize,
    seed: u64,
    urls: Arc<Vec<String>>,
    names: Arc<Vec<Mutex<String>>>,
    stop: Arc<AtomicBool>,
) -> ReaderReport {
    let mut rng = Rng::new(seed ^ (r as u64 + 101).wrapping_mul(0x9FB2_1C65_1E98_DF25));
    let mut conns = Conns::new(urls);
    let mut report = ReaderReport::default();
    while !stop.load(Ordering::Relaxed) {
        let store = rng.below(3) as usize;
        let slot = rng.below(SLOTS as u64) as usize;
        let key = names[slot].lock().unwrap().clone();
        let get = rng.below(2) == 0;
        let Some(conn) = conns.get(store).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let r0 = now_ms();
        let reply = if get {
            run::<Option<String>>(conn, cmd("GET").arg(&key))
                .await
                .map(ReadReply::Get)
        } else {
            run::<i64>(conn, cmd("PTTL").arg(&key))
                .await
                .map(ReadReply::Pttl)
        };
        let r1 = now_ms();
        match reply {
            Ok(reply) => report.reads.push(ReadRec {
                key,
                store,
                r0,
                r1,
                reply,
            }),
            Err(e) => {
                conns.drop_conn(store);
                report.failed += 1;
                if report.errors.len() < 10 {
                    report.errors.push(format!(
                        "{} {key} via store {}: {e}",
                        if get { "GET" } else { "PTTL" },
                        store + 1
                    ));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    report
}

/// A judged read of a key with a deadline, for the check that a key found gone stays gone.
struct WindowRead {
    r0: u64,
    r1: u64,
    present: bool,
    store: usize,
}

/// Where a judged read lies relative to its key's deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Zone {
    /// The key was gone.
    Gone,
    /// The key had no deadline.
    NoDeadline,
    /// Answered before the earliest possible deadline.
    Before,
    /// Could have been on either side.
    Between,
    /// Sent after the latest possible deadline.
    After,
}

/// Judges one read against the key's state; Err says what was expected.
fn judge(state: &State, read: &ReadRec) -> (Zone, Result<(), String>) {
    let (r0, r1) = (read.r0 as i64, read.r1 as i64);
    let slack = SLACK_MS as i64;
    let verdict = |ok: bool, expected: &str| {
        if ok {
            Ok(())
        } else {
            Err(expected.to_string())
        }
    };
    match state {
        State::Absent => (
            Zone::Gone,
            verdict(
                matches!(read.reply, ReadReply::Get(None) | ReadReply::Pttl(-2)),
                "the key was gone: GET nil / PTTL -2 expected",
            ),
        ),
        State::Persistent(value) => (
            Zone::NoDeadline,
            verdict(
                match &read.reply {
                    ReadReply::Get(got) => got.as_ref() == Some(value),
                    ReadReply::Pttl(p) => *p == -1,
                },
                "the key had no deadline: its value / PTTL -1 expected",
            ),
        ),
        State::Expiring {
            value,
            lo,
            hi,
            pttl_max,
        } => {
            let (lo, hi, pttl_max) = (*lo as i64, *hi as i64, *pttl_max as i64);
            if r0 > hi + slack {
                (
                    Zone::After,
                    verdict(
                        matches!(read.reply, ReadReply::Get(None) | ReadReply::Pttl(-2)),
                        "sent after the deadline: GET nil / PTTL -2 expected",
                    ),
                )
            } else if r1 < lo {
                let ok = match &read.reply {
                    ReadReply::Get(got) => got.as_ref() == Some(value),
                    ReadReply::Pttl(p) => {
                        *p >= 0 && *p <= pttl_max && *p + slack >= lo - r1 && *p <= hi - r0 + slack
                    }
                };
                (
                    Zone::Before,
                    verdict(
                        ok,
                        "answered before the deadline: the value / a PTTL of 0..=d within \
                         the deadline's window expected",
                    ),
                )
            } else {
                let ok = match &read.reply {
                    ReadReply::Get(None) => true,
                    ReadReply::Get(Some(got)) => got == value,
                    ReadReply::Pttl(p) => *p == -2 || (*p >= 0 && *p <= pttl_max),
                };
                (
                    Zone::Between,
                    verdict(
                        ok,
                        "at the deadline: the value or nil / PTTL -2 or 0..=d expected",
                    ),
                )
            }
        }
    }
}

fn describe(read: &ReadRec, state: &State, set_by: Option<&WriteRec>, why: &str) -> String {
    let by = match set_by {
        Some(w) => format!(
            "`{}` via store {}, sent at S={}, acknowledged at A={:?}",
            w.what,
            w.store + 1,
            w.s,
            w.a
        ),
        None => "nothing: not yet written".to_string(),
    };
    format!(
        "{} via store {}: sent at R0={}, answered at R1={} with {:?}: {why}; state {state:?}, \
         set by {by}",
        read.key,
        read.store + 1,
        read.r0,
        read.r1,
        read.reply
    )
}

/// Runs the `raftkv` binary off the async threads: (success, stdout, stderr).
async fn raftkv(args: &[&str]) -> (bool, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_raftkv"))
            .args(&args)
            .output()
            .expect("run raftkv");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("raftkv runner")
}

/// Moves the leadership of the keys' region to another store (`raftkv region
/// transfer-leader`, which returns once that store leads it); a line saying what moved.
async fn transfer_leadership(c: &TestCluster, rng: &mut Rng) -> Result<String, String> {
    let endpoints = c.endpoints().join(",");
    let (ok, out, err) = raftkv(&["status", "--json", "--endpoints", &endpoints]).await;
    if !ok {
        return Err(format!("raftkv status failed: {err}"));
    }
    let st: Json =
        serde_json::from_str(&out).map_err(|e| format!("status is not JSON ({e}): {out}"))?;
    let region = st["regions"]
        .as_array()
        .and_then(|regions| {
            regions.iter().find(|r| {
                let start = r["start_key"].as_str().unwrap_or("");
                let end = r["end_key"].as_str().unwrap_or("");
                PREFIX >= start && (end.is_empty() || PREFIX < end)
            })
        })
        .ok_or_else(|| format!("no region holds {PREFIX:?}: {st}"))?;
    let id = region["id"].as_u64().ok_or("a region without an id")?;
    let leader = region["leader_store"].as_u64();
    let others: Vec<u64> = (1..=3u64).filter(|s| Some(*s) != leader).collect();
    let to = others[rng.below(others.len() as u64) as usize];
    let (ok, out, err) = raftkv(&[
        "region",
        "transfer-leader",
        &id.to_string(),
        &to.to_string(),
        "--endpoints",
        &endpoints,
    ])
    .await;
    if ok {
        Ok(format!(
            "moved region {id} from store {leader:?} to store {to}: {}",
            out.trim()
        ))
    } else {
        Err(format!(
            "transfer of region {id} to store {to}: {}",
            err.trim()
        ))
    }
}

/// Sends a write until it is acknowledged (bounded: 30 s); returns the acknowledgement time.
async fn write_until_acked(
    urls: &[String],
    conn: &mut Option<MultiplexedConnection>,
    c: &Cmd,
) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut store = 0;
    let mut last_error;
    loop {
        if conn.is_none() {
            *conn = try_connect(&urls[store % urls.len()]).await;
        }
        let result = match conn.as_mut() {
            Some(cn) => Some(run::<()>(cn, c).await),
            None => None,
        };
        match result {
            Some(Ok(())) => return now_ms(),
            Some(Err(e)) => {
                last_error = e;
                *conn = None;
            }
            None => last_error = format!("store {} refused a connection", store % urls.len() + 1),
        }
        assert!(
            Instant::now() < deadline,
            "a write was not acknowledged within 30 s: {last_error}"
        );
        store += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The keys SCAN shows (for a failure message).
async fn scan_all(conn: &mut MultiplexedConnection) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    for _ in 0..100 {
        let Ok((next, page)) =
            run::<(u64, Vec<String>)>(conn, cmd("SCAN").arg(cursor).arg("COUNT").arg(100)).await
        else {
            break;
        };
        keys.extend(page);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_is_exact_across_leader_changes() {
    let seed = common::test_seed("expiry_is_exact_across_leader_changes");
    let mut rng = Rng::new(seed);
    // The scheduler off: one fixed region holds every key (no load-based split under the
    // readers), and the only leadership moves are this test's.
    let mut c = TestCluster::start(&["--scheduler", "off"]);
    assert!(
        c.wait_ready(READY).await,
        "cluster did not elect leaders\n{}",
        c.logs()
    );
    let urls: Arc<Vec<String>> = Arc::new((0..3).map(|i| c.redis_url(i)).collect());
    {
        // A clear failure if expiry is refused outright, rather than nothing judged.
        let mut conn = connect_retrying(&urls, 0).await;
        let probe: Result<(), String> = run(
            &mut conn,
            cmd("SET")
                .arg(format!("{PREFIX}probe"))
                .arg("x")
                .arg("PX")
                .arg(300),
        )
        .await;
        assert!(probe.is_ok(), "SET ... PX is refused: {probe:?}");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let names: Arc<Vec<Mutex<String>>> =
        Arc::new((0..SLOTS).map(|s| Mutex::new(key_name(s, 0))).collect());
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(w, seed, urls.clone(), names.clone(), stop.clone())))
        .collect();
    let readers: Vec<_> = (0..READERS)
        .map(|r| tokio::spawn(reader(r, seed, urls.clone(), names.clone(), stop.clone())))
        .collect();

    // Faults: a leadership transfer or a SIGKILL of the leader (restarted DOWN_FOR later),
    // one every FAULT_EVERY; at least one of each (whichever has not happened yet comes next).
    let faults_start = Instant::now();
    let kill_first = rng.below(2) == 0;
    let (mut kills, mut transfers) = (0u32, 0u32);
    let mut fault_log: Vec<String> = Vec::new();
    while faults_start.elapsed() < FAULTS_FOR {
        tokio::time::sleep(FAULT_EVERY).await;
        let kill = match (kills, transfers) {
            (0, 0) => kill_first,
            (0, _) => true,
            (_, 0) => false,
            _ => rng.below(2) == 0,
        };
        if kill {
            let Some(leader) = c.leader_of(PREFIX.as_bytes()).await else {
                fault_log.push(format!("{}: no leader known: no kill", now_ms()));
                continue;
            };
            let at = now_ms();
            c.kill(leader);
            tokio::time::sleep(DOWN_FOR).await;
            c.spawn(leader);
            kills += 1;
            fault_log.push(format!(
                "{at}: SIGKILLed store {} (the keys' leader), restarted at {}",
                leader + 1,
                now_ms()
            ));
            assert!(
                c.wait_ready(READY).await,
                "no leaders after store {} restarted\n{}",
                leader + 1,
                c.logs()
            );
        } else {
            let at = now_ms();
            match transfer_leadership(&c, &mut rng).await {
                Ok(line) => {
                    transfers += 1;
                    fault_log.push(format!("{at}: {line}"));
                }
                Err(e) => fault_log.push(format!("{at}: no transfer: {e}")),
            }
        }
    }
    // A little load with no fault, then stop (each task after its command in flight).
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut writer_reports = Vec::new();
    for t in writers {
        writer_reports.push(
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("a writer stopped within 30 s")
                .expect("writer task"),
        );
    }
    let mut reader_reports = Vec::new();
    for t in readers {
        reader_reports.push(
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("a reader stopped within 30 s")
                .expect("reader task"),
        );
    }

    // Judge every read against its key's writes (one writer per key: in order).
    let mut by_key: HashMap<String, Vec<WriteRec>> = HashMap::new();
    let mut violations: Vec<String> = Vec::new();
    for rep in &writer_reports {
        for w in &rep.writes {
            by_key.entry(w.key.clone()).or_default().push(w.clone());
        }
        violations.extend(rep.violations.iter().cloned());
    }
    let mut zones: HashMap<Zone, u64> = HashMap::new();
    let mut unjudged = 0u64;
    // The reads of one deadline, by (key, index of the write that set it).
    let mut windows: HashMap<(String, usize), Vec<WindowRead>> = HashMap::new();
    let reads: Vec<&ReadRec> = reader_reports.iter().flat_map(|r| &r.reads).collect();
    for read in &reads {
        let writes = by_key.get(&read.key).map(Vec::as_slice).unwrap_or(&[]);
        // Writes sent at or before R0; the next one must have been sent after R1.
        let k = writes.partition_point(|w| w.s <= read.r0);
        if writes.get(k).is_some_and(|next| next.s <= read.r1) {
            unjudged += 1;
            continue;
        }
        let (state, set_by) = if k == 0 {
            (State::Absent, None)
        } else {
            let w = &writes[k - 1];
            match (w.a, &w.after) {
                (Some(a), Some(state)) if a < read.r0 => (state.clone(), Some(w)),
                _ => {
                    unjudged += 1;
                    continue;
                }
            }
        };
        let (zone, verdict) = judge(&state, read);
        *zones.entry(zone).or_default() += 1;
        if let Err(why) = verdict {
            violations.push(describe(read, &state, set_by, &why));
        }
        if matches!(state, State::Expiring { .. }) {
            windows
                .entry((read.key.clone(), k))
                .or_default()
                .push(WindowRead {
                    r0: read.r0,
                    r1: read.r1,
                    present: read.reply.present(),
                    store: read.store,
                });
        }
    }
    // Once a read found a key gone, no read sent later (same deadline) finds it.
    for ((key, _), window) in &windows {
        let first_gone = window.iter().filter(|r| !r.present).map(|r| r.r1).min();
        if let Some(gone_at) = first_gone {
            for r in window.iter().filter(|r| r.present && r.r0 > gone_at) {
                violations.push(format!(
                    "{key} via store {}: sent at R0={}, answered at R1={}, found the key; a \
                     read answered at {gone_at} had found it gone",
                    r.store + 1,
                    r.r0,
                    r.r1
                ));
            }
        }
    }
    let zone = |z: Zone| zones.get(&z).copied().unwrap_or(0);
    let acked: u64 = writer_reports.iter().map(|r| r.acked).sum();
    let unknown: u64 = writer_reports.iter().map(|r| r.unknown).sum();
    let failed_reads: u64 = reader_reports.iter().map(|r| r.failed).sum();
    let errors: Vec<&String> = writer_reports
        .iter()
        .flat_map(|r| &r.errors)
        .chain(reader_reports.iter().flat_map(|r| &r.errors))
        .take(20)
        .collect();
    eprintln!(
        "writes: {acked} acknowledged, {unknown} unknown; reads: {} answered ({} before a \
         deadline, {} after, {} at one, {} without a deadline, {} of gone keys; {unjudged} not \
         judged), {failed_reads} failed; faults: {kills} kills, {transfers} transfers\n{}\n\
         first errors: {errors:#?}",
        reads.len(),
        zone(Zone::Before),
        zone(Zone::After),
        zone(Zone::Between),
        zone(Zone::NoDeadline),
        zone(Zone::Gone),
        fault_log.join("\n"),
    );
    assert!(
        violations.is_empty(),
        "{} violations (seed {seed}); the first:\n{}\nfaults:\n{}",
        violations.len(),
        violations
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        fault_log.join("\n")
    );
    assert!(
        zone(Zone::Before) >= MIN_JUDGED && zone(Zone::After) >= MIN_JUDGED,
        "too few reads judged: {} before a deadline, {} after (at least {MIN_JUDGED} each); \
         first errors: {errors:#?}",
        zone(Zone::Before),
        zone(Zone::After)
    );
    assert!(
        kills >= 1 && transfers >= 1,
        "faults: {kills} kills and {transfers} transfers, at least one of each wanted:\n{}",
        fault_log.join("\n")
    );

    // Memory comes back: every key written gets one last deadline, KEEP keys none; once the
    // last deadline passed, DBSIZE falls to KEEP within MEMORY_BOUND, nobody reading them.
    assert!(c.wait_ready(READY).await, "cluster not ready\n{}", c.logs());
    let mut conn = Some(connect_retrying(&urls, 0).await);
    let mut names_written: Vec<&String> = by_key.keys().collect();
    names_written.sort();
    let (mut earliest_last, mut last_deadline) = (0u64, 0u64);
    for name in names_written {
        let d = 200 + rng.below(1301);
        let s = now_ms();
        let a = write_until_acked(
            &urls,
            &mut conn,
            cmd("SET").arg(name).arg("last").arg("PX").arg(d),
        )
        .await;
        earliest_last = earliest_last.max(s + d);
        last_deadline = last_deadline.max(a + d);
    }
    for i in 0..KEEP {
        write_until_acked(
            &urls,
            &mut conn,
            cmd("SET").arg(format!("{PREFIX}keep:{i}")).arg("kept"),
        )
        .await;
    }
    let until = Instant::now()
        + Duration::from_millis(last_deadline.saturating_sub(now_ms()))
        + MEMORY_BOUND;
    let mut size: Option<i64> = None;
    loop {
        let answer = match conn.as_mut() {
            Some(cn) => Some(run::<i64>(cn, &cmd("DBSIZE")).await),
            None => None,
        };
        let at = now_ms();
        match answer {
            Some(Ok(n)) => {
                size = Some(n);
                if n == KEEP as i64 {
                    assert!(
                        at + SLACK_MS >= earliest_last,
                        "DBSIZE was {KEEP} at {at}, before the last key's deadline (not \
                         before {earliest_last})"
                    );
                    eprintln!(
                        "DBSIZE fell to {KEEP} {} ms after the last deadline",
                        at.saturating_sub(last_deadline)
                    );
                    break;
                }
            }
            Some(Err(_)) => conn = None,
            None => conn = try_connect(&urls[0]).await,
        }
        if Instant::now() >= until {
            let left = match conn.as_mut() {
                Some(cn) => scan_all(cn).await,
                None => Vec::new(),
            };
            panic!(
                "DBSIZE is {size:?}, not {KEEP}, {MEMORY_BOUND:?} after the last deadline \
                 ({last_deadline}): expired keys are not deleted in the background; SCAN \
                 shows {left:?}\n{}",
                c.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // DBSIZE leaves expired keys out as soon as they are due; the memory is given back only
    // when the leader's housekeeping entry deleted them: the region's own key count (what
    // `raftkv status` reports, expired keys not yet deleted included) must come down too.
    let endpoints = c.endpoints().join(",");
    let mut last = String::new();
    loop {
        let (ok, out, err) = raftkv(&["status", "--json", "--endpoints", &endpoints]).await;
        let keys = if ok {
            serde_json::from_str::<Json>(&out).ok().and_then(|st| {
                st["regions"].as_array().and_then(|regions| {
                    regions
                        .iter()
                        .find(|r| {
                            let start = r["start_key"].as_str().unwrap_or("");
                            let end = r["end_key"].as_str().unwrap_or("");
                            PREFIX >= start && (end.is_empty() || PREFIX < end)
                        })
                        .and_then(|r| r["approximate_keys"].as_u64())
                })
            })
        } else {
            last = err;
            None
        };
        if keys == Some(KEEP as u64) {
            eprintln!("the region holds {KEEP} keys: expired keys were deleted through the log");
            break;
        }
        if let Some(k) = keys {
            last = format!("the region holds {k} keys");
        }
        assert!(
            Instant::now() < until,
            "expired keys were not deleted in the background within {MEMORY_BOUND:?} of the \
             last deadline: {last}\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
