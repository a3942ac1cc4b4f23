//! Pipelined requests, executed together and overlapped.
//!
//! A client that pipelines (sends requests without waiting for answers, or multiplexes many
//! callers on one connection, as most Redis client libraries do) should neither pay one
//! consensus round per command nor wait for one batch to finish before the next starts. The
//! connection hands every request that has fully arrived (up to
//! [`crate::config::MAX_PIPELINE_COMMANDS`]) to [`Pipeline::next_job`], one job at a time,
//! which
//! 1. cuts them into *segments*: runs of key commands that make exactly one backend call each
//!    (GET, SET, INCR, MGET, DEL, ...; see [`SEGMENT_COMMANDS`]) and whose key the backend can
//!    route, within the byte and argument budgets. Anything else (AUTH, CLIENT, SCAN, INFO,
//!    QUIT, a key no region holds, ...) is a *barrier*: the connection waits for every
//!    segment in flight, then runs it alone;
//! 2. groups a segment's requests by the region of their first key, numbers each group with
//!    the next sequence of the connection's session (a group that turns out to only read is
//!    sent without it), and chains it behind the previous group of the same region from this
//!    connection (in flight or not);
//! 3. returns the segment as a future. Up to [`MAX_SEGMENTS_IN_FLIGHT`] run at once: the
//!    connection reads the next requests while earlier segments wait for consensus.
//!
//! A segment's future runs its handlers side by side until each has either answered (a syntax
//! or arity error) or asked for its one backend call, which [`Deferred`] collects instead of
//! sending; then each group waits for its predecessor in the region's chain, sends its calls as
//! one [`kv::Command::Pipeline`] (one log entry, or one linearizable read when all are reads;
//! a lone call is sent as itself), and answers each handler with its own result.
//!
//! A call that is itself a `Pipeline` (EXISTS of several keys: one `Inspect` per key) is
//! spliced into its group's `Pipeline` ([`flatten`]), since the state machine does not nest
//! them. MULTI, EXEC, DISCARD, WATCH and UNWATCH are barriers, and so is every request while
//! the session is inside MULTI: it is queued by `cmd::admit`, never grouped into a region's
//! `Pipeline`, so `MULTI; SET a 1; EXEC` in one write is one transaction, as sent one by one.
//!
//! What a client observes is what Redis gives: its commands take effect in order (within a
//! region the chain orders the groups and a group is one entry applied in order; commands on
//! different regions touch different keys), each command succeeds or fails on its own, and
//! the answers come in request order (the connection writes segments' replies in order).
//! Another client may see two commands of one pipeline on different regions take effect in
//! either order, as with a pipeline spread over Redis Cluster nodes. A group that fails as a
//! whole (timeout, no leader) gives every command in it that error. Per region at most one
//! group of a connection is in flight, so its session sequences reach the region in order and
//! a retry never meets a newer sequence of its own connection.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::Poll;

use bytes::Bytes;
use futures_util::future::{FutureExt, Shared};
use tokio::sync::oneshot;

use super::{execute_in, lookup, Outcome, Session};
use crate::backend::BackendError;
use crate::config::{MAX_PIPELINE_ARGUMENTS, MAX_PIPELINE_BYTES, MAX_PIPELINE_COMMANDS};
use crate::server::Shared as ServerShared;

/// Segments of one connection running at once; the connection stops reading past this, and
/// what arrives meanwhile makes the next segment larger. Two: one waiting for consensus while
/// the next one forms. (Measured with `raftkv bench --target resp --connections 1`: more in
/// flight made smaller log entries and lowered throughput at 256 clients, 75k -> 45k writes/s
/// with 16; see docs/BENCHMARKS.md.)
pub(crate) const MAX_SEGMENTS_IN_FLIGHT: usize = 2;

/// Commands whose handler makes exactly one backend call, on the key named by the command's
/// first key argument, and changes no session state: only these can be collected. (A handler
/// making two calls would see its second run after later commands' first.) PING and ECHO make
/// no call at all.
pub(super) const SEGMENT_COMMANDS: &[&str] = &[
    "ping",
    "echo",
    "get",
    "set",
    "setnx",
    "getset",
    "getdel",
    "mget",
    "mset",
    "msetnx",
    "append",
    "strlen",
    "getrange",
    "setrange",
    "incr",
    "decr",
    "incrby",
    "decrby",
    "incrbyfloat",
    "type",
    "ttl",
    "pttl",
    "exists",
    "del",
    "unlink",
    "setex",
    "psetex",
    "getex",
    "delifeq",
    "expire",
    "pexpire",
    "expireat",
    "pexpireat",
    "persist",
    "expiretime",
    "pexpiretime",
    "hset",
    "hmset",
    "hsetnx",
    "hget",
    "hmget",
    "hgetall",
    "hdel",
    "hlen",
    "hexists",
    "hkeys",
    "hvals",
    "hincrby",
    "hincrbyfloat",
    "hstrlen",
    "hrandfield",
    "rename",
    "renamenx",
    "copy",
];

/// One handler's collected backend call.
pub(super) struct Call {
    /// Which request of the segment (or transaction) made it.
    pub(super) request: usize,
    pub(super) command: kv::Command,
    pub(super) reply: oneshot::Sender<Result<kv::Response, BackendError>>,
}

/// Collects the backend calls of a segment's handlers (see the module docs).
#[derive(Default)]
pub(crate) struct Deferred {
    calls: Mutex<Vec<Call>>,
}

impl Deferred {
    /// Registers request `request`'s `command` and waits for its group to run it.
    pub(crate) async fn call(
        &self,
        request: usize,
        command: kv::Command,
    ) -> Result<kv::Response, BackendError> {
        let (reply, answer) = oneshot::channel();
        self.lock().push(Call {
            request,
            command,
            reply,
        });
        answer.await.unwrap_or_else(|_| {
            Err(BackendError::Other(
                "internal error: pipelined command dropped".into(),
            ))
        })
    }

    pub(super) fn take(&self) -> Vec<Call> {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Call>> {
        // Only this segment's future touches it, and nothing panics while holding it.
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Resolves when a group has finished: its `oneshot::Sender` is dropped when the group has
/// answered its calls, or when its segment is dropped (the connection closing).
type Done = Shared<oneshot::Receiver<()>>;

/// A group of one segment: the requests of one region.
struct Group {
    client_id: u64,
    sequence: u64,
    /// The previous group of this connection on the same region.
    after: Option<Done>,
    /// Dropped when this group has finished, which releases the next one.
    finished: oneshot::Sender<()>,
}

/// A segment's future: yields one outcome per request, in order.
pub(crate) type Segment<'a> = Pin<Box<dyn Future<Output = Vec<Outcome>> + Send + 'a>>;

/// What the connection does next with the requests it has read.
pub(crate) enum Job<'a> {
    /// Runs alone once nothing is in flight.
    Barrier(Vec<Bytes>),
    /// Runs concurrently with the other segments in flight.
    Segment(Segment<'a>),
}

/// A connection's pipeline state: the last group sent to each region (bounded by the number
/// of regions).
#[derive(Default)]
pub(crate) struct Pipeline {
    tails: HashMap<u64, Done>,
}

impl Pipeline {
    /// Takes the next job from the front of `requests` (none empty; module docs, steps 1–3):
    /// a barrier, or a segment of as many requests as join it. One job at a time, because a
    /// barrier may change the session (AUTH, RESET) that decides how later requests run.
    pub(crate) fn next_job<'a>(
        &mut self,
        shared: &'a ServerShared,
        session: &mut Session,
        requests: &mut VecDeque<Vec<Bytes>>,
    ) -> Option<Job<'a>> {
        let mut segment: Vec<(Vec<Bytes>, Option<u64>)> = Vec::new();
        let (mut bytes, mut arguments) = (0usize, 0usize);
        while let Some(request) = requests.front() {
            let Some(region) = joins_segment(shared, session, request) else {
                if segment.is_empty() {
                    return requests.pop_front().map(Job::Barrier);
                }
                break;
            };
            let size = request_bytes(request);
            let fits = segment.len() < MAX_PIPELINE_COMMANDS
                && bytes + size <= MAX_PIPELINE_BYTES
                && arguments + request.len() <= MAX_PIPELINE_ARGUMENTS;
            if !segment.is_empty() && !fits {
                break;
            }
            bytes += size;
            arguments += request.len();
            let request = requests.pop_front().expect("front exists");
            segment.push((request, region));
        }
        (!segment.is_empty()).then(|| self.segment(shared, session, segment))
    }

    /// Places one group: takes the session's next sequence (whether or not the group turns
    /// out to write: a read-only group is sent without the session, and an unused number is
    /// harmless) and chains it behind the region's previous group.
    fn group(&mut self, session: &mut Session, region: u64) -> Group {
        let sequence = session.next_sequence;
        session.next_sequence += 1;
        let (finished, done) = oneshot::channel();
        Group {
            client_id: session.session_client_id,
            sequence,
            after: self.tails.insert(region, done.shared()),
            finished,
        }
    }

    /// Groups, numbers and chains one segment (steps 2–3) and returns its future.
    fn segment<'a>(
        &mut self,
        shared: &'a ServerShared,
        session: &mut Session,
        requests: Vec<(Vec<Bytes>, Option<u64>)>,
    ) -> Job<'a> {
        // Region of each group, in order of first appearance; the group of each request
        // (None: it makes no backend call).
        let mut regions: Vec<u64> = Vec::new();
        let mut group_of: Vec<Option<usize>> = Vec::with_capacity(requests.len());
        for (_, region) in &requests {
            let Some(region) = *region else {
                group_of.push(None);
                continue;
            };
            let index = match regions.iter().position(|r| *r == region) {
                Some(index) => index,
                None => {
                    regions.push(region);
                    regions.len() - 1
                }
            };
            group_of.push(Some(index));
        }
        let groups: Vec<Group> = regions
            .into_iter()
            .map(|region| self.group(session, region))
            .collect();
        let copy = session.clone();
        let requests: Vec<Vec<Bytes>> = requests.into_iter().map(|(r, _)| r).collect();
        Job::Segment(Box::pin(run_segment(
            shared, copy, requests, group_of, groups,
        )))
    }
}

/// `Some(region)` if the request joins a segment (`Some(None)`: it joins but makes no backend
/// call: an unknown command, a wrong arity or a missing key are answered without one, or it
/// is refused before authentication); `None` if it must run alone: not a segment command, a
/// key the backend cannot route, or a key or value over the backend's limits (the backend
/// refuses a whole `Pipeline` for that, and the other commands must not share the refusal).
fn joins_segment(
    shared: &ServerShared,
    session: &Session,
    arguments: &[Bytes],
) -> Option<Option<u64>> {
    // Inside MULTI every request runs alone, in order, so it is queued (not executed) and
    // MULTI; SET a 1; EXEC sent in one write behaves as sent one by one.
    if session.transaction.is_some() {
        return None;
    }
    let Some(spec) = lookup(&arguments[0]) else {
        return Some(None);
    };
    if !SEGMENT_COMMANDS.contains(&spec.name) {
        return None;
    }
    if !spec.arity_allows(arguments.len() as i64) || !session.authenticated || spec.first_key == 0 {
        return Some(None);
    }
    // A hash's fields are checked against the key limit by the state machine: every argument
    // of a hash command is held to it here (a larger value just runs alone).
    let oversized = arguments.iter().enumerate().skip(1).any(|(i, argument)| {
        let limit = if spec.group == "hash" || is_key(spec, i, arguments.len()) {
            shared.config.max_key_bytes
        } else {
            shared.config.max_value_bytes
        };
        argument.len() > limit
    });
    if oversized {
        return None;
    }
    let key = arguments.get(usize::try_from(spec.first_key).ok()?)?;
    // A key the backend cannot route runs alone, in order.
    shared.backend.region_of(key).map(Some)
}

/// A request's size for the pipeline byte budget ([`MAX_PIPELINE_BYTES`]): its arguments.
pub(crate) fn request_bytes(arguments: &[Bytes]) -> usize {
    arguments.iter().map(Bytes::len).sum()
}

/// Whether argument `index` of a request with `count` arguments is a key, by the command
/// table's (first, last, step).
fn is_key(spec: &super::CommandSpec, index: usize, count: usize) -> bool {
    let (first, step) = (spec.first_key, spec.step.max(1));
    let last = if spec.last_key < 0 {
        count as i64 + spec.last_key
    } else {
        spec.last_key
    };
    let index = index as i64;
    first > 0 && index >= first && index <= last && (index - first) % step == 0
}

pub(super) type Handler<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;
type Running<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// A segment's future (module docs).
async fn run_segment(
    shared: &ServerShared,
    session: Session,
    requests: Vec<Vec<Bytes>>,
    group_of: Vec<Option<usize>>,
    groups: Vec<Group>,
) -> Vec<Outcome> {
    let deferred = Deferred::default();
    // Segment commands change no session state; each handler gets its own copy to satisfy
    // the borrow (the sequences were taken from the real session when the segment was made).
    let mut copies: Vec<Session> = requests.iter().map(|_| session.clone()).collect();
    let mut handlers: Vec<Handler<'_>> = requests
        .into_iter()
        .zip(copies.iter_mut())
        .enumerate()
        .map(|(index, (request, copy))| {
            Box::pin(execute_in(shared, copy, request, Some((&deferred, index)))) as Handler<'_>
        })
        .collect();
    let mut done: Vec<Option<Outcome>> = handlers.iter().map(|_| None).collect();
    // Every handler runs until it answers or waits for its one call.
    poll_handlers(&mut handlers, &mut done, false).await;
    let mut members: Vec<Vec<Call>> = groups.iter().map(|_| Vec::new()).collect();
    for call in deferred.take() {
        match group_of.get(call.request).copied().flatten() {
            Some(group) => members[group].push(call),
            None => {
                let _ = call.reply.send(Err(BackendError::Other(
                    "internal error: a pipelined command without a region".into(),
                )));
            }
        }
    }
    let running: Vec<Running<'_>> = groups
        .into_iter()
        .zip(members)
        .map(|(group, calls)| Box::pin(run_group(shared, group, calls)) as Running<'_>)
        .collect();
    futures_util::future::join_all(running).await;
    // Every call is answered, so the handlers finish. A call made only now (a handler that
    // awaited something before its call, or made a second one: not a segment command by
    // definition) is refused rather than left waiting forever.
    loop {
        poll_handlers(&mut handlers, &mut done, false).await;
        if done.iter().all(Option::is_some) {
            break;
        }
        let late = deferred.take();
        debug_assert!(
            late.is_empty(),
            "a segment command made a late backend call"
        );
        if late.is_empty() {
            poll_handlers(&mut handlers, &mut done, true).await;
        }
        for call in late {
            let _ = call.reply.send(Err(BackendError::Other(
                "internal error: a pipelined command made a second backend call".into(),
            )));
        }
    }
    drop(handlers);
    done.into_iter()
        .map(|outcome| outcome.expect("the loop ends only when every handler has answered"))
        .collect()
}

/// Polls every unfinished handler once, in order; with `until_progress`, again whenever woken
/// until at least one has finished.
pub(super) async fn poll_handlers(
    handlers: &mut [Handler<'_>],
    done: &mut [Option<Outcome>],
    until_progress: bool,
) {
    std::future::poll_fn(|cx| {
        let mut progressed = false;
        for (handler, slot) in handlers.iter_mut().zip(done.iter_mut()) {
            if slot.is_none() {
                if let Poll::Ready(outcome) = handler.as_mut().poll(cx) {
                    *slot = Some(outcome);
                    progressed = true;
                }
            }
        }
        if progressed || !until_progress {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
}

/// Where one call's results sit among those of a flattened list of commands (see
/// [`flatten`]).
#[derive(Debug, Clone, Copy)]
pub(super) enum Span {
    /// A plain command: its one result, at this position.
    One(usize),
    /// A call that was itself a `Pipeline`: `.1` results from position `.0`.
    Many(usize, usize),
}

/// The commands of several calls as one flat list, a call whose command is a `Pipeline`
/// (EXISTS of several keys: one `Inspect` each) contributing its commands; and each call's
/// [`Span`] in it. Used for a region's group and for EXEC, which cannot nest pipelines.
pub(super) fn flatten(commands: Vec<kv::Command>) -> (Vec<kv::Command>, Vec<Span>) {
    let mut flat = Vec::with_capacity(commands.len());
    let mut spans = Vec::with_capacity(commands.len());
    for command in commands {
        match command {
            kv::Command::Pipeline { commands } => {
                spans.push(Span::Many(flat.len(), commands.len()));
                flat.extend(commands);
            }
            command => {
                spans.push(Span::One(flat.len()));
                flat.push(command);
            }
        }
    }
    (flat, spans)
}

/// Whether `count` results are exactly what `spans` (from [`flatten`]) expect.
pub(super) fn spans_fit(spans: &[Span], count: usize) -> bool {
    let expected = spans.last().map_or(0, |span| match *span {
        Span::One(start) => start + 1,
        Span::Many(start, len) => start + len,
    });
    expected == count
}

/// Each call's result from the results of the flattened list (checked with [`spans_fit`]):
/// a spliced `Pipeline` gets its results back as one `Response::Pipeline`.
pub(super) fn unflatten(
    results: Vec<Result<kv::Response, kv::CommandError>>,
    spans: &[Span],
) -> Vec<Result<kv::Response, BackendError>> {
    spans
        .iter()
        .map(|span| match *span {
            Span::One(at) => results[at].clone().map_err(BackendError::from),
            Span::Many(start, len) => {
                Ok(kv::Response::Pipeline(results[start..start + len].to_vec()))
            }
        })
        .collect()
}

/// Waits for the region's previous group, sends this group's calls, answers them, and then
/// releases the next group (by dropping `finished`), even when it had no call.
async fn run_group(shared: &ServerShared, group: Group, mut calls: Vec<Call>) {
    let Group {
        client_id,
        sequence,
        after,
        finished,
    } = group;
    if let Some(previous) = after {
        // Err is the only outcome (the sender is dropped, never used): it is over.
        let _ = previous.await;
    }
    let backend = &shared.backend;
    let reads_only = calls.iter().all(|call| call.command.is_read_only());
    let (client_id, sequence) = if reads_only {
        (0, 0)
    } else {
        (client_id, sequence)
    };
    match calls.len() {
        0 => {}
        1 => {
            let call = calls.pop().expect("one call");
            let _ = call
                .reply
                .send(backend.execute(client_id, sequence, call.command).await);
        }
        count => {
            let (commands, replies): (Vec<_>, Vec<_>) = calls
                .into_iter()
                .map(|call| (call.command, call.reply))
                .unzip();
            let retry_commands = if reads_only {
                commands.clone()
            } else {
                Vec::new()
            };
            // A call that is itself a Pipeline (EXISTS of several keys) is spliced in: the
            // state machine does not nest pipelines.
            let (commands, spans) = flatten(commands);
            let answer = backend
                .execute(client_id, sequence, kv::Command::Pipeline { commands })
                .await;
            let results: Vec<Result<kv::Response, BackendError>> = match answer {
                Ok(kv::Response::Pipeline(results)) if spans_fit(&spans, results.len()) => {
                    unflatten(results, &spans)
                }
                Ok(other) => {
                    tracing::error!(?other, count, "unexpected answer to a pipeline");
                    let error = BackendError::Other(
                        "internal error: unexpected answer to a pipeline".into(),
                    );
                    vec![Err(error); count]
                }
                // Reads change nothing, so a read group refused as a whole (its answer over
                // the forwarding size limit, say) is retried one command at a time.
                Err(_) if reads_only => {
                    let mut results = Vec::with_capacity(count);
                    for command in retry_commands {
                        results.push(backend.execute(0, 0, command).await);
                    }
                    results
                }
                Err(error) => vec![Err(error); count],
            };
            for (result, reply) in results.into_iter().zip(replies) {
                let _ = reply.send(result);
            }
        }
    }
    drop(finished);
}
