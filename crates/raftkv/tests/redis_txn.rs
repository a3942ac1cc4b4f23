//! Redis transactions under leader kills (issue 20), with real `raftkv server` processes (3
//! stores; the keys `{ctr}:*` are all in the region [p, ∞)).
//!
//! First, on a quiet cluster, WATCH is per key: a write to another key of the same region
//! between WATCH and EXEC does not abort the transaction (EXEC applies it), a write to the
//! watched key does (EXEC answers nil and applies nothing).
//!
//! Then 12 connections (spread over the three stores) increment three counters `{ctr}:a`,
//! `{ctr}:b`, `{ctr}:c` the optimistic way — WATCH c; GET c; MULTI; SET c v+1;
//! INCR `{ctr}:total`; EXEC, retried when EXEC answers nil — half sending the commands one by
//! one, half sending MULTI..EXEC as one pipeline (`redis::pipe().atomic()`), for 20 s while
//! the store leading the region is SIGKILLed three times (each time while an EXEC is in
//! flight, restarted a second later). An EXEC that fails (connection reset, timeout) has an
//! unknown outcome. Once the load stopped:
//! - no increment is lost and none is doubled: for each counter, the acknowledged EXECs ≤
//!   its final value ≤ the acknowledged EXECs + the unknown ones, and no two acknowledged
//!   EXECs set a counter to the same value;
//! - EXEC is atomic: `{ctr}:total` (incremented in every transaction) equals the sum of the
//!   three counters exactly, and no two acknowledged EXECs saw the same total;
//! - every counter's history (its GETs, and each acknowledged transaction as a
//!   compare-and-set from the value read to that value + 1; an EXEC answered nil has no
//!   effect, one that failed may have had) is linearizable (`lincheck`);
//! - at least 100 transactions were acknowledged and the three kills happened.

mod common;

use common::{InFlight, Outcome, Rng, TestCluster};
use lincheck::kv::{KvInput, KvModel, KvOutput};
use redis::aio::MultiplexedConnection;
use redis::{cmd, Cmd, FromRedisValue, Value};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const READY: Duration = Duration::from_secs(30);
/// The counters; the hash tag (and the key range: `{` sorts after `p`) keeps them, the total
/// and [`OTHER`] in one region.
const COUNTERS: [&str; 3] = ["{ctr}:a", "{ctr}:b", "{ctr}:c"];
const TOTAL: &str = "{ctr}:total";
/// A key of the same region that no transaction watches.
const OTHER: &str = "{ctr}:other";
const CLIENTS: usize = 12;
/// How long the increments run; the kills come FIRST_KILL after the start, KILL_EVERY apart,
/// each store down for DOWN_FOR.
const LOAD_FOR: Duration = Duration::from_secs(20);
const KILLS: u32 = 3;
const FIRST_KILL: Duration = Duration::from_secs(2);
const KILL_EVERY: Duration = Duration::from_secs(5);
const DOWN_FOR: Duration = Duration::from_secs(1);
/// The clients' bound on one command (and on connecting).
const OP_TIMEOUT: Duration = Duration::from_secs(5);
const MIN_SUCCESSES: u64 = 100;
/// The `lincheck` client id of the test's own setup writes.
const SETUP_CLIENT: u64 = 1000;

type History = lincheck::History<KvInput, KvOutput>;

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

/// A connection to the first store (from `first` on, in turn) that accepts one; None once
/// `stop` is set; panics after 60 s.
async fn connect_until(
    urls: &[String],
    first: usize,
    stop: &AtomicBool,
) -> Option<MultiplexedConnection> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = first;
    loop {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        if let Some(conn) = try_connect(&urls[i % urls.len()]).await {
            return Some(conn);
        }
        assert!(
            Instant::now() < deadline,
            "no store's RESP port accepted a connection within 60 s"
        );
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn connect_retrying(urls: &[String], first: usize) -> MultiplexedConnection {
    connect_until(urls, first, &AtomicBool::new(false))
        .await
        .expect("not stopped")
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

/// One command that must succeed (a quiet cluster).
async fn must<T: FromRedisValue>(conn: &mut MultiplexedConnection, c: &Cmd, what: &str) -> T {
    run(conn, c)
        .await
        .unwrap_or_else(|e| panic!("{what} failed: {e}"))
}

fn is_queued(v: &Value) -> bool {
    matches!(v, Value::SimpleString(s) if s == "QUEUED")
}

/// WATCH is per key: a write to another key of the region does not abort EXEC, a write to
/// the watched key does. Two connections, through two different stores.
async fn watch_aborts_only_for_the_watched_key(urls: &[String]) {
    let key = COUNTERS[0];
    let mut a = connect_retrying(urls, 0).await;
    let mut b = connect_retrying(urls, 1).await;
    must::<()>(&mut b, cmd("SET").arg(key).arg(41), "SET (setup)").await;

    must::<()>(&mut a, cmd("WATCH").arg(key), "WATCH").await;
    let v: i64 = must(&mut a, cmd("GET").arg(key), "GET under WATCH").await;
    assert_eq!(v, 41);
    must::<()>(&mut a, &cmd("MULTI"), "MULTI").await;
    let queued: Value = must(&mut a, cmd("SET").arg(key).arg(42), "SET in MULTI").await;
    assert!(
        is_queued(&queued),
        "SET in MULTI answered {queued:?}, not QUEUED"
    );
    must::<()>(&mut b, cmd("SET").arg(OTHER).arg("x"), "SET of another key").await;
    let exec: Value = must(&mut a, &cmd("EXEC"), "EXEC").await;
    assert!(
        matches!(&exec, Value::Array(items) if items.len() == 1),
        "EXEC after a write to another key of the same region (not watched) must apply, \
         answered {exec:?}"
    );
    let v: i64 = must(&mut b, cmd("GET").arg(key), "GET").await;
    assert_eq!(v, 42, "the transaction's SET applied");

    must::<()>(&mut a, cmd("WATCH").arg(key), "WATCH").await;
    must::<()>(&mut a, &cmd("MULTI"), "MULTI").await;
    let queued: Value = must(&mut a, cmd("SET").arg(key).arg(43), "SET in MULTI").await;
    assert!(
        is_queued(&queued),
        "SET in MULTI answered {queued:?}, not QUEUED"
    );
    must::<()>(
        &mut b,
        cmd("SET").arg(key).arg(100),
        "SET of the watched key",
    )
    .await;
    let exec: Value = must(&mut a, &cmd("EXEC"), "EXEC").await;
    assert_eq!(
        exec,
        Value::Nil,
        "EXEC after a write to the watched key must answer nil, answered {exec:?}"
    );
    let v: i64 = must(&mut a, cmd("GET").arg(key), "GET").await;
    assert_eq!(v, 100, "the aborted transaction's SET must not apply");
}

/// How one transaction ended.
enum Exec {
    /// EXEC answered an array: applied.
    Applied(Vec<Value>),
    /// EXEC answered nil: a watched key changed; nothing applied.
    Aborted,
    /// Failed before EXEC was sent: nothing can have applied.
    NotSent(String),
    /// EXEC was sent and no usable answer came: applied or not.
    Unknown(String),
    /// An answer no Redis gives (e.g. a queued command not answered QUEUED): counted as
    /// unknown and reported as an anomaly.
    Broken(String),
}

/// MULTI; SET key next; INCR total; EXEC — one command at a time.
async fn exec_by_hand(conn: &mut MultiplexedConnection, key: &str, next: i64) -> Exec {
    if let Err(e) = run::<()>(conn, &cmd("MULTI")).await {
        return Exec::NotSent(format!("MULTI: {e}"));
    }
    let queued = [
        ("SET", cmd("SET").arg(key).arg(next).clone()),
        ("INCR", cmd("INCR").arg(TOTAL).clone()),
    ];
    for (what, c) in &queued {
        match run::<Value>(conn, c).await {
            Ok(v) if is_queued(&v) => {}
            Ok(v) => return Exec::Broken(format!("{what} in MULTI answered {v:?}, not QUEUED")),
            Err(e) => return Exec::NotSent(format!("{what} in MULTI: {e}")),
        }
    }
    match run::<Value>(conn, &cmd("EXEC")).await {
        Ok(Value::Nil) => Exec::Aborted,
        Ok(Value::Array(items)) => Exec::Applied(items),
        Ok(other) => Exec::Broken(format!("EXEC answered {other:?}")),
        Err(e) => Exec::Unknown(format!("EXEC: {e}")),
    }
}

/// The same transaction as one pipeline: `redis::pipe().atomic()` sends MULTI, the two
/// commands and EXEC together.
async fn exec_pipelined(conn: &mut MultiplexedConnection, key: &str, next: i64) -> Exec {
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("SET")
        .arg(key)
        .arg(next)
        .cmd("INCR")
        .arg(TOTAL);
    match tokio::time::timeout(
        OP_TIMEOUT + Duration::from_millis(500),
        pipe.query_async::<Value>(conn),
    )
    .await
    {
        Ok(Ok(Value::Nil)) => Exec::Aborted,
        Ok(Ok(Value::Array(items))) => Exec::Applied(items),
        Ok(Ok(other)) => Exec::Broken(format!("the MULTI/EXEC pipeline answered {other:?}")),
        Ok(Err(e)) => Exec::Unknown(format!("MULTI/EXEC pipeline: {e}")),
        Err(_) => Exec::Unknown(format!(
            "MULTI/EXEC pipeline: no answer within {OP_TIMEOUT:?}"
        )),
    }
}

/// The total's new value from an applied EXEC's replies ([OK, total]).
fn applied_total(items: &[Value]) -> Result<i64, String> {
    match items {
        [first, Value::Int(total)]
            if matches!(first, Value::Okay)
                || matches!(first, Value::SimpleString(s) if s == "OK") =>
        {
            Ok(*total)
        }
        _ => Err(format!("EXEC answered {items:?}, not [OK, <total>]")),
    }
}

/// What one client saw.
#[derive(Default)]
struct Tally {
    /// Acknowledged transactions, per counter.
    successes: [u64; 3],
    /// Transactions with an unknown outcome, per counter.
    unknown: [u64; 3],
    /// EXECs answered nil.
    aborted: u64,
    /// Transactions given up before EXEC was sent.
    not_sent: u64,
    /// (counter, value set) of every acknowledged transaction.
    set_values: Vec<(usize, i64)>,
    /// The total's value answered by every acknowledged transaction.
    totals: Vec<i64>,
    /// The first errors.
    errors: Vec<String>,
    /// Answers no correct server gives.
    anomalies: Vec<String>,
}

impl Tally {
    fn error(&mut self, e: String) {
        if self.errors.len() < 10 {
            self.errors.push(e);
        }
    }
}

/// Client `w`: increments random counters until `stop`, on its own connection (to store
/// `w % 3` first); reconnects after any error.
async fn client_task(
    w: usize,
    seed: u64,
    urls: Arc<Vec<String>>,
    h: Arc<History>,
    ops: Arc<InFlight>,
    stop: Arc<AtomicBool>,
) -> Tally {
    let mut rng = Rng::new(seed ^ (w as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
    let pipelined = w % 2 == 1;
    let mut tally = Tally::default();
    let mut conn: Option<MultiplexedConnection> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            conn = connect_until(&urls, w % 3, &stop).await;
            continue;
        }
        let cn = conn.as_mut().expect("connected");
        n += 1;
        let ci = rng.below(3) as usize;
        let key = COUNTERS[ci];
        if let Err(e) = run::<()>(cn, cmd("WATCH").arg(key)).await {
            tally.error(format!("WATCH {key}: {e}"));
            tally.not_sent += 1;
            conn = None;
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let get = h.invoke(
            w as u64,
            KvInput::Get {
                key: key.as_bytes().to_vec(),
            },
        );
        let cur = match run::<Option<Vec<u8>>>(cn, cmd("GET").arg(key)).await {
            Ok(v) => {
                h.complete(get, KvOutput::Get(v.clone()));
                v
            }
            Err(e) => {
                h.fail_definite(get);
                tally.error(format!("GET {key}: {e}"));
                tally.not_sent += 1;
                conn = None;
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Some(v) = cur
            .as_deref()
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|s| s.parse::<i64>().ok())
        else {
            tally
                .anomalies
                .push(format!("GET {key} answered {cur:?}, not a number"));
            conn = None;
            continue;
        };
        let next = v + 1;
        let cas = h.invoke(
            w as u64,
            KvInput::Cas {
                key: key.as_bytes().to_vec(),
                expected: cur.clone(),
                new: next.to_string().into_bytes(),
            },
        );
        ops.begin(w, n, key.as_bytes(), true);
        let exec = if pipelined {
            exec_pipelined(cn, key, next).await
        } else {
            exec_by_hand(cn, key, next).await
        };
        ops.end(
            w,
            match exec {
                Exec::Applied(_) | Exec::Aborted => Outcome::Done,
                _ => Outcome::Failed,
            },
        );
        match exec {
            Exec::Applied(items) => {
                h.complete(cas, KvOutput::Cas(true));
                tally.successes[ci] += 1;
                tally.set_values.push((ci, next));
                match applied_total(&items) {
                    Ok(total) => tally.totals.push(total),
                    Err(e) => tally.anomalies.push(e),
                }
            }
            Exec::Aborted => {
                // Applied nothing. (Not a failed compare-and-set: the watched key may have
                // changed between WATCH and GET, so the value read may still be current.)
                h.fail_definite(cas);
                tally.aborted += 1;
            }
            Exec::NotSent(e) => {
                h.fail_definite(cas);
                tally.not_sent += 1;
                tally.error(e);
                conn = None;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Exec::Unknown(e) => {
                h.fail_unknown(cas);
                tally.unknown[ci] += 1;
                tally.error(e);
                conn = None;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Exec::Broken(e) => {
                h.fail_unknown(cas);
                tally.unknown[ci] += 1;
                tally.anomalies.push(e);
                conn = None;
            }
        }
    }
    tally
}

/// GET of an integer key, retried (bounded: 30 s) across the stores.
async fn read_i64(urls: &[String], conn: &mut Option<MultiplexedConnection>, key: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut store = 0;
    let mut last_error;
    loop {
        if conn.is_none() {
            *conn = try_connect(&urls[store % urls.len()]).await;
        }
        let answer = match conn.as_mut() {
            Some(cn) => Some(run::<Option<i64>>(cn, cmd("GET").arg(key)).await),
            None => None,
        };
        match answer {
            Some(Ok(v)) => return v.unwrap_or_else(|| panic!("{key} is gone")),
            Some(Err(e)) => {
                last_error = e;
                *conn = None;
            }
            None => last_error = format!("store {} refused a connection", store % urls.len() + 1),
        }
        assert!(
            Instant::now() < deadline,
            "GET {key} failed for 30 s: {last_error}"
        );
        store += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The values that occur more than once.
fn repeated(values: impl IntoIterator<Item = i64>) -> Vec<i64> {
    let mut seen = HashSet::new();
    let mut twice: Vec<i64> = values.into_iter().filter(|v| !seen.insert(*v)).collect();
    twice.sort_unstable();
    twice.dedup();
    twice
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_multi_exec_increments_lose_none_and_double_none_under_leader_kills() {
    let seed = common::test_seed(
        "watch_multi_exec_increments_lose_none_and_double_none_under_leader_kills",
    );
    // The scheduler off: the region holding the counters stays whole (no load-based split)
    // and the only leadership changes are this test's.
    let mut c = TestCluster::start(&["--scheduler", "off"]);
    assert!(
        c.wait_ready(READY).await,
        "cluster did not elect leaders\n{}",
        c.logs()
    );
    let urls: Arc<Vec<String>> = Arc::new((0..3).map(|i| c.redis_url(i)).collect());
    watch_aborts_only_for_the_watched_key(&urls).await;

    // The counters start at 0: in the history as the setup client's writes.
    let h: Arc<History> = Arc::new(lincheck::History::new());
    {
        let mut setup = connect_retrying(&urls, 0).await;
        for key in COUNTERS {
            let id = h.invoke(
                SETUP_CLIENT,
                KvInput::Put {
                    key: key.as_bytes().to_vec(),
                    value: b"0".to_vec(),
                },
            );
            must::<()>(&mut setup, cmd("SET").arg(key).arg(0), "SET counter 0").await;
            h.complete(id, KvOutput::Put);
        }
        must::<()>(&mut setup, cmd("SET").arg(TOTAL).arg(0), "SET total 0").await;
    }

    let ops = Arc::new(InFlight::new(CLIENTS));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|w| {
            tokio::spawn(client_task(
                w,
                seed,
                urls.clone(),
                h.clone(),
                ops.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let started = Instant::now();
    let mut hits = Vec::new();
    let mut kills = 0u32;
    for k in 0..KILLS {
        tokio::time::sleep_until(tokio::time::Instant::from_std(
            started + FIRST_KILL + KILL_EVERY * k,
        ))
        .await;
        let deadline = Instant::now() + Duration::from_secs(30);
        let leader = loop {
            if let Some(l) = c.leader_of(TOTAL.as_bytes()).await {
                break l;
            }
            assert!(
                Instant::now() < deadline,
                "the counters' region had no leader for 30 s\n{}",
                c.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // While a transaction is in flight (kill_during waits, bounded, for one).
        let hit = c.kill_during(leader, &ops, |op| op.write).await;
        eprintln!(
            "kill {}: store {} (the counters' leader) at {:?}, {} transactions in flight",
            k + 1,
            leader + 1,
            started.elapsed(),
            hit.len()
        );
        hits.extend(hit);
        kills += 1;
        tokio::time::sleep(DOWN_FOR).await;
        c.spawn(leader);
        assert!(
            c.wait_ready(READY).await,
            "no leaders after store {} restarted\n{}",
            leader + 1,
            c.logs()
        );
    }
    tokio::time::sleep_until(tokio::time::Instant::from_std(started + LOAD_FOR)).await;
    stop.store(true, Ordering::Relaxed);
    let mut tallies = Vec::new();
    for t in tasks {
        tallies.push(
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("a client stopped within 60 s")
                .expect("client task"),
        );
    }
    for op in &hits {
        assert!(
            ops.outcome(op).is_some(),
            "{op:?}, in flight at a kill, never ended"
        );
    }

    // The final values.
    assert!(c.wait_ready(READY).await, "cluster not ready\n{}", c.logs());
    let mut conn = None;
    let mut finals = [0i64; 3];
    for (i, key) in COUNTERS.iter().enumerate() {
        finals[i] = read_i64(&urls, &mut conn, key).await;
    }
    let total = read_i64(&urls, &mut conn, TOTAL).await;

    let mut successes = [0u64; 3];
    let mut unknown = [0u64; 3];
    for t in &tallies {
        for (sum, n) in successes.iter_mut().zip(t.successes) {
            *sum += n;
        }
        for (sum, n) in unknown.iter_mut().zip(t.unknown) {
            *sum += n;
        }
    }
    let aborted: u64 = tallies.iter().map(|t| t.aborted).sum();
    let not_sent: u64 = tallies.iter().map(|t| t.not_sent).sum();
    let anomalies: Vec<&String> = tallies.iter().flat_map(|t| &t.anomalies).collect();
    let errors: Vec<&String> = tallies.iter().flat_map(|t| &t.errors).take(20).collect();
    eprintln!(
        "counters {finals:?}, total {total}; acknowledged {successes:?}, unknown {unknown:?}, \
         {aborted} EXECs answered nil, {not_sent} given up before EXEC; first errors: \
         {errors:#?}"
    );
    assert!(
        anomalies.is_empty(),
        "answers no Redis gives: {anomalies:#?}"
    );
    assert_eq!(kills, KILLS, "the leader kills happened");
    let acknowledged: u64 = successes.iter().sum();
    assert!(
        acknowledged >= MIN_SUCCESSES,
        "only {acknowledged} transactions were acknowledged (at least {MIN_SUCCESSES} \
         wanted); first errors: {errors:#?}"
    );
    for (i, key) in COUNTERS.iter().enumerate() {
        let (known, maybe, got) = (successes[i], unknown[i], finals[i]);
        assert!(
            known as i64 <= got,
            "{key}: {known} acknowledged increments but the value is {got}: increments lost \
             (seed {seed})"
        );
        assert!(
            got <= (known + maybe) as i64,
            "{key}: the value is {got}, more than the {known} acknowledged + {maybe} unknown \
             increments: increments applied twice (seed {seed})"
        );
        let values: Vec<i64> = tallies
            .iter()
            .flat_map(|t| &t.set_values)
            .filter(|(c, _)| *c == i)
            .map(|(_, v)| *v)
            .collect();
        let twice = repeated(values.iter().copied());
        assert!(
            twice.is_empty(),
            "{key}: two acknowledged transactions both set it to each of {twice:?}: WATCH let an \
             increment be lost (seed {seed})"
        );
        let highest = values.iter().copied().max().unwrap_or(0);
        assert!(
            highest <= got,
            "{key}: an acknowledged transaction set it to {highest}, but it ends at {got}"
        );
    }
    assert_eq!(
        total,
        finals.iter().sum::<i64>(),
        "{TOTAL} must equal the sum of the counters {finals:?}: a transaction applied in part \
         (seed {seed})"
    );
    let totals: Vec<i64> = tallies
        .iter()
        .flat_map(|t| t.totals.iter().copied())
        .collect();
    let twice = repeated(totals.iter().copied());
    assert!(
        twice.is_empty(),
        "two acknowledged transactions' INCR {TOTAL} both answered each of {twice:?} (seed \
         {seed})"
    );
    assert!(
        totals.iter().all(|t| *t <= total),
        "an acknowledged transaction's INCR answered more than the final {total}"
    );

    // Per-counter linearizability of the GETs and the transactions (as compare-and-sets).
    let history = h.operations();
    let r = lincheck::check(&KvModel, &history, &lincheck::CheckOptions::default())
        .expect("well-formed history");
    assert!(
        !r.is_illegal(),
        "the history of {} operations is not linearizable (seed {seed}): {r}",
        history.len()
    );
    if !r.is_ok() {
        eprintln!("lincheck gave no verdict (its search budget ran out): {r}");
    }
}
