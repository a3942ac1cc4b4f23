//! Pipelined requests executed together.
//!
//! A client that pipelines (sends requests without waiting for answers) should not pay one
//! consensus round per command: the connection hands every request that has fully arrived
//! (up to [`MAX_PIPELINE_COMMANDS`]) to [`execute_pipeline`], which
//! 1. cuts them into *segments*: runs of key commands that make exactly one backend call each
//!    (GET, SET, INCR, MGET, DEL, ...; see [`joins_segment`]), within the byte and argument
//!    budgets. Anything else (AUTH, CLIENT, SCAN, INFO, QUIT, ...) runs alone, in its place;
//! 2. runs a segment's handlers side by side until each has either answered (a syntax error, an
//!    arity error) or asked for its one backend call, which [`Deferred`] collects instead of
//!    sending;
//! 3. groups the collected calls by region ([`crate::Backend::region_of`]): the commands of
//!    one region become one [`kv::Command::Pipeline`] — one log entry, or one linearizable read
//!    when all are reads — carrying one sequence number of the connection's session;
//!    different regions go concurrently;
//! 4. hands each handler its own result and lets it build its reply. Replies are written in
//!    request order.
//!
//! What a client can observe is what Redis gives: its commands take effect in order (one
//! region's commands are one entry, applied in order; commands on different regions touch
//! different keys), each command succeeds or fails on its own, and the answers come in order.
//! Other clients may see a later command of the pipeline take effect before an earlier one
//! when the two are in different regions, as with a pipeline spread over Redis Cluster
//! nodes. A pipeline's entry fails as a whole (timeout, no leader): every command in it then
//! gets that error.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::Poll;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::{execute, execute_in, lookup, Outcome, Session};
use crate::backend::BackendError;
use crate::config::{MAX_PIPELINE_ARGUMENTS, MAX_PIPELINE_BYTES, MAX_PIPELINE_COMMANDS};
use crate::server::Shared;

/// Commands whose handler makes exactly one backend call and touches no session state:
/// only these can be collected. (A handler making two calls would see its second one run
/// after later commands' first ones.) PING and ECHO make none.
const SEGMENT_COMMANDS: &[&str] = &[
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
];

/// Whether a request may run inside a segment. An unknown command may: it is answered
/// without a backend call.
fn joins_segment(arguments: &[Bytes]) -> bool {
    match lookup(&arguments[0]) {
        Some(spec) => SEGMENT_COMMANDS.contains(&spec.name),
        None => true,
    }
}

/// One handler's collected backend call.
struct Call {
    command: kv::Command,
    reply: oneshot::Sender<Result<kv::Response, BackendError>>,
}

/// Collects the backend calls of a segment's handlers (see the module docs).
#[derive(Default)]
pub(crate) struct Deferred {
    calls: Mutex<Vec<Call>>,
}

impl Deferred {
    /// Registers `command` and waits for the segment to run it.
    pub(crate) async fn call(&self, command: kv::Command) -> Result<kv::Response, BackendError> {
        let (reply, answer) = oneshot::channel();
        self.lock().push(Call { command, reply });
        answer.await.unwrap_or_else(|_| {
            Err(BackendError::Other(
                "internal error: pipelined command dropped".into(),
            ))
        })
    }

    fn take(&self) -> Vec<Call> {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Call>> {
        // Only this connection's task touches it, and nothing panics while holding it.
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Executes `requests` (none empty) in order and returns their outcomes, in order. Stops
/// after a command that closes the connection (QUIT): later requests are not executed.
pub(crate) async fn execute_pipeline(
    shared: &Shared,
    session: &mut Session,
    requests: Vec<Vec<Bytes>>,
) -> Vec<Outcome> {
    let mut outcomes = Vec::with_capacity(requests.len());
    let mut segment: Vec<Vec<Bytes>> = Vec::new();
    let (mut bytes, mut arguments) = (0usize, 0usize);
    for request in requests {
        let size: usize = request.iter().map(Bytes::len).sum();
        let fits = segment.len() < MAX_PIPELINE_COMMANDS
            && bytes + size <= MAX_PIPELINE_BYTES
            && arguments + request.len() <= MAX_PIPELINE_ARGUMENTS;
        if !segment.is_empty() && (!fits || !joins_segment(&request)) {
            outcomes.extend(run_segment(shared, session, std::mem::take(&mut segment)).await);
            (bytes, arguments) = (0, 0);
        }
        if joins_segment(&request) {
            bytes += size;
            arguments += request.len();
            segment.push(request);
            continue;
        }
        let outcome = execute(shared, session, request).await;
        let close = matches!(outcome, Outcome::ReplyAndClose(_));
        outcomes.push(outcome);
        if close {
            return outcomes;
        }
    }
    if !segment.is_empty() {
        outcomes.extend(run_segment(shared, session, segment).await);
    }
    outcomes
}

type Handler<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// Runs one segment (module docs, steps 2–4).
async fn run_segment(
    shared: &Shared,
    session: &mut Session,
    requests: Vec<Vec<Bytes>>,
) -> Vec<Outcome> {
    if requests.len() == 1 {
        let request = requests.into_iter().next().expect("one request");
        return vec![execute(shared, session, request).await];
    }
    let deferred = Deferred::default();
    // Segment commands change no session state; each handler gets a copy to satisfy the
    // borrow, and the real session numbers the entries (in `dispatch`).
    let mut copies: Vec<Session> = requests.iter().map(|_| session.clone()).collect();
    let mut handlers: Vec<Handler<'_>> = requests
        .into_iter()
        .zip(copies.iter_mut())
        .map(|(request, copy)| {
            Box::pin(execute_in(shared, copy, request, Some(&deferred))) as Handler<'_>
        })
        .collect();
    let mut done: Vec<Option<Outcome>> = handlers.iter().map(|_| None).collect();
    loop {
        // One pass, in request order, so the calls are collected in request order: every
        // unfinished handler runs until it answers or waits for its call.
        let mut progressed = false;
        std::future::poll_fn(|cx| {
            for (handler, slot) in handlers.iter_mut().zip(done.iter_mut()) {
                if slot.is_none() {
                    if let Poll::Ready(outcome) = handler.as_mut().poll(cx) {
                        *slot = Some(outcome);
                        progressed = true;
                    }
                }
            }
            Poll::Ready(())
        })
        .await;
        if done.iter().all(Option::is_some) {
            break;
        }
        let calls = deferred.take();
        if calls.is_empty() && !progressed {
            // Every unfinished handler waits for a call already answered or for something
            // else: wait to be woken rather than spin.
            std::future::poll_fn(|cx| {
                let mut any = false;
                for (handler, slot) in handlers.iter_mut().zip(done.iter_mut()) {
                    if slot.is_none() {
                        if let Poll::Ready(outcome) = handler.as_mut().poll(cx) {
                            *slot = Some(outcome);
                            any = true;
                        }
                    }
                }
                if any {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
            continue;
        }
        dispatch(shared, session, calls).await;
    }
    drop(handlers);
    done.into_iter()
        .map(|outcome| outcome.expect("the loop ends only when every handler has answered"))
        .collect()
}

type Running = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Sends the collected calls (module docs, step 3) and answers each.
async fn dispatch(shared: &Shared, session: &mut Session, calls: Vec<Call>) {
    let backend = &shared.backend;
    let regions: Vec<Option<u64>> = calls
        .iter()
        .map(|call| {
            let keys = call.command.keys();
            keys.first().and_then(|key| backend.region_of(key))
        })
        .collect();
    // A backend that cannot route a key gets one command at a time, in order.
    let routed = regions.iter().all(Option::is_some);
    let mut groups: Vec<(Option<u64>, Vec<Call>)> = Vec::new();
    for (call, region) in calls.into_iter().zip(regions) {
        match groups.iter_mut().find(|(r, _)| routed && *r == region) {
            Some((_, members)) => members.push(call),
            None => groups.push((region, vec![call])),
        }
    }
    let mut running: Vec<Running> = Vec::with_capacity(groups.len());
    for (_, members) in groups {
        let write = members.iter().any(|call| !call.command.is_read_only());
        let (client_id, sequence) = if write {
            let sequence = session.next_sequence;
            session.next_sequence += 1;
            (session.session_client_id, sequence)
        } else {
            (0, 0)
        };
        let mut members = members;
        let group: Running = if members.len() == 1 {
            let call = members.pop().expect("one member");
            let answer = backend.execute(client_id, sequence, call.command);
            Box::pin(async move {
                let _ = call.reply.send(answer.await);
            })
        } else {
            let (commands, replies): (Vec<_>, Vec<_>) = members
                .into_iter()
                .map(|call| (call.command, call.reply))
                .unzip();
            let count = commands.len();
            let answer = backend.execute(client_id, sequence, kv::Command::Pipeline { commands });
            Box::pin(async move {
                let results = match answer.await {
                    Ok(kv::Response::Pipeline(results)) if results.len() == count => results
                        .into_iter()
                        .map(|result| result.map_err(BackendError::from))
                        .collect(),
                    Ok(other) => {
                        tracing::error!(?other, count, "unexpected answer to a pipeline");
                        let error = BackendError::Other(
                            "internal error: unexpected answer to a pipeline".into(),
                        );
                        vec![Err(error); count]
                    }
                    Err(error) => vec![Err(error); count],
                };
                for (result, reply) in results.into_iter().zip(replies) {
                    let _ = reply.send(result);
                }
            })
        };
        if !routed {
            group.await;
        } else {
            running.push(group);
        }
    }
    futures_util::future::join_all(running).await;
}
