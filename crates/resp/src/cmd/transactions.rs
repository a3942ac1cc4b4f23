//! Transactions: MULTI, EXEC, DISCARD, WATCH, UNWATCH, with Redis 7's behaviour and texts.
//!
//! # Queueing
//! After MULTI every request except EXEC, DISCARD, MULTI, WATCH, QUIT and RESET is checked
//! (unknown command, arity, authentication) and queued, answered `+QUEUED` (see
//! `cmd::admit`). A request failing a check is answered with its error and aborts the
//! transaction: EXEC then answers `EXECABORT Transaction discarded because of previous
//! errors.` and runs nothing. Nested MULTI, and WATCH inside MULTI, are answered with Redis's
//! errors and abort nothing, as in Redis.
//!
//! Only commands that become one state-machine command (or answer without one) can be queued:
//! the string, expiry, hash and key commands a pipeline groups (`pipeline::SEGMENT_COMMANDS`:
//! GET, SET, INCR, MGET, DEL, EXISTS, TTL, EXPIRE, HSET, HGETALL, RENAME, COPY, ...), plus
//! HSCAN, PING, ECHO and UNWATCH. Any other command (KEYS, SCAN, DBSIZE, INFO, CLIENT, CONFIG,
//! COMMAND, SELECT, AUTH, HELLO, OBJECT, MEMORY) is refused when queued, with
//! `ERR <NAME> inside MULTI is not supported by RaftKV`, and aborts the transaction
//! (EXECABORT): it would not be part of the atomic step. This is a deviation: Redis queues
//! them. The queue is bounded ([`MAX_TRANSACTION_COMMANDS`], [`MAX_TRANSACTION_BYTES`]); past
//! it a command is refused the same way.
//!
//! # EXEC
//! EXEC runs each queued request's own handler, exactly as outside a transaction, except that
//! its one backend call is collected (`pipeline::Deferred`) instead of sent. A handler that
//! answers without a call (PING, or an argument error only the handler sees, such as
//! `SET k v EX 0`) keeps its answer: like Redis's runtime errors, it is an error element of
//! EXEC's reply and the other commands still run. The collected commands (EXISTS's per-key
//! `Inspect`s spliced in) and the watches become ONE `kv::Command::Exec { watches, commands }`,
//! sent as a write with the session's next sequence (one log entry, applied atomically and
//! exactly once). Every key it names, watched keys included, must be in one region, else
//! EXEC answers `CROSSSLOT Keys in request don't hash to the same slot` and nothing is
//! applied. `Exec(None)` (a watched key changed) is a null array (`*-1`, RESP3 `_`);
//! `Exec(Some(results))` is an array of each command's reply rendered by its own handler
//! (errors as error elements). Reads inside EXEC see the transaction's earlier writes and are
//! judged at the entry's log clock. EXEC, DISCARD, UNWATCH and RESET forget the watches.
//!
//! # WATCH
//! WATCH reads `Inspect` for its keys (one read) and remembers each key's version; EXEC sends
//! them and the state machine compares them at apply time. A watched key that is absent is
//! compared by its region's deleted-version, so EXEC may also abort when another key of the
//! region was deleted or expired in between (conservative; present keys are exact).

use bytes::Bytes;

use super::keys::inspect_many;
use super::pipeline::{
    flatten, poll_handlers, spans_fit, unflatten, Deferred, Handler, SEGMENT_COMMANDS,
};
use super::{execute_in, request_bytes, unexpected, Context, Outcome, Session, CROSSSLOT};
use crate::backend::BackendError;
use crate::config::{MAX_TRANSACTION_BYTES, MAX_TRANSACTION_COMMANDS, MAX_WATCHED_KEYS};
use crate::frame::Frame;

/// A connection's open transaction (between MULTI and EXEC or DISCARD).
#[derive(Debug, Clone, Default)]
pub(crate) struct Transaction {
    /// The queued requests, command name first.
    pub queued: Vec<Vec<Bytes>>,
    /// Their bytes (bounded by [`MAX_TRANSACTION_BYTES`]).
    pub bytes: usize,
    /// A queued request was refused: EXEC answers EXECABORT.
    pub aborted: bool,
}

const EXECABORT: &str = "EXECABORT Transaction discarded because of previous errors.";

/// The commands that run at once even inside MULTI (Redis's `processCommand` list).
pub(super) fn runs_inside_multi(name: &str) -> bool {
    matches!(
        name,
        "exec" | "discard" | "multi" | "watch" | "quit" | "reset"
    )
}

/// Whether `name` can be queued (module docs).
fn queueable(name: &str) -> bool {
    SEGMENT_COMMANDS.contains(&name) || matches!(name, "hscan" | "unwatch")
}

/// Queues a request inside MULTI: `+QUEUED`, or the error refusing it (the caller then aborts
/// the transaction).
pub(super) fn queue(
    session: &mut Session,
    name: &str,
    arguments: &[Bytes],
) -> Result<Frame, Frame> {
    if !queueable(name) {
        return Err(Frame::error(format!(
            "ERR {} inside MULTI is not supported by RaftKV",
            name.to_ascii_uppercase()
        )));
    }
    let Some(transaction) = session.transaction.as_mut() else {
        return Err(Frame::error("ERR internal error: queueing outside MULTI"));
    };
    let size = request_bytes(arguments);
    if transaction.queued.len() >= MAX_TRANSACTION_COMMANDS
        || transaction.bytes + size > MAX_TRANSACTION_BYTES
    {
        return Err(Frame::error(format!(
            "ERR a transaction holds at most {MAX_TRANSACTION_COMMANDS} commands and \
             {MAX_TRANSACTION_BYTES} bytes in RaftKV"
        )));
    }
    transaction.bytes += size;
    transaction.queued.push(arguments.to_vec());
    Ok(Frame::simple("QUEUED"))
}

pub(super) fn multi(context: &mut Context<'_>) -> Result<Frame, Frame> {
    if context.session.transaction.is_some() {
        return Err(Frame::error("ERR MULTI calls can not be nested"));
    }
    context.session.transaction = Some(Transaction::default());
    Ok(Frame::simple("OK"))
}

pub(super) fn discard(context: &mut Context<'_>) -> Result<Frame, Frame> {
    if context.session.transaction.take().is_none() {
        return Err(Frame::error("ERR DISCARD without MULTI"));
    }
    context.session.watches.clear();
    Ok(Frame::simple("OK"))
}

pub(super) fn unwatch(context: &mut Context<'_>) -> Frame {
    context.session.watches.clear();
    Frame::simple("OK")
}

/// WATCH key [key ...] (module docs). A key already watched keeps its first version.
pub(super) async fn watch(context: &mut Context<'_>, keys: &[Bytes]) -> Result<Frame, Frame> {
    if context.session.transaction.is_some() {
        return Err(Frame::error("ERR WATCH inside MULTI is not allowed"));
    }
    let mut new_keys: Vec<Bytes> = Vec::new();
    for key in keys {
        let watched = context.session.watches.iter().any(|(k, _)| k == key);
        if !watched && !new_keys.contains(key) {
            new_keys.push(key.clone());
        }
    }
    if new_keys.is_empty() {
        return Ok(Frame::simple("OK"));
    }
    if context.session.watches.len() + new_keys.len() > MAX_WATCHED_KEYS {
        return Err(Frame::error(format!(
            "ERR a connection watches at most {MAX_WATCHED_KEYS} keys in RaftKV"
        )));
    }
    {
        let mut all: Vec<&[u8]> = context
            .session
            .watches
            .iter()
            .map(|(key, _)| &key[..])
            .collect();
        all.extend(new_keys.iter().map(|key| &key[..]));
        context.check_same_region(&all)?;
    }
    let inspected = inspect_many(context, &new_keys).await?;
    for (key, inspected) in new_keys.into_iter().zip(inspected) {
        context.session.watches.push((key, inspected.version));
    }
    Ok(Frame::simple("OK"))
}

/// EXEC (module docs). Called by `cmd::execute` only, never from a pipeline segment or from
/// inside another EXEC.
pub(super) async fn exec(context: &mut Context<'_>) -> Result<Frame, Frame> {
    let Some(transaction) = context.session.transaction.take() else {
        return Err(Frame::error("ERR EXEC without MULTI"));
    };
    let watches = std::mem::take(&mut context.session.watches);
    if transaction.aborted {
        return Err(Frame::error(EXECABORT));
    }
    let shared = context.shared;
    // Each handler gets its own copy of the session (out of MULTI now, so nothing is queued
    // again); the queued commands change no session state.
    let template = context.session.clone();
    let deferred = Deferred::default();
    let mut copies: Vec<Session> = transaction
        .queued
        .iter()
        .map(|_| template.clone())
        .collect();
    let mut handlers: Vec<Handler<'_>> = transaction
        .queued
        .into_iter()
        .zip(copies.iter_mut())
        .enumerate()
        .map(|(index, (request, copy))| {
            Box::pin(execute_in(shared, copy, request, Some((&deferred, index)))) as Handler<'_>
        })
        .collect();
    let mut done: Vec<Option<Outcome>> = handlers.iter().map(|_| None).collect();
    // Every handler runs until it answers or asks for its one call.
    poll_handlers(&mut handlers, &mut done, false).await;
    // A command whose own keys span regions refuses the whole transaction, as Redis Cluster
    // does (there at queue time).
    let crossslot = done.iter().flatten().any(|outcome| {
        matches!(outcome, Outcome::Reply(Frame::Error(text)) if text.starts_with("CROSSSLOT"))
    });
    if crossslot {
        return Err(Frame::error(CROSSSLOT));
    }
    let mut calls = deferred.take();
    calls.sort_by_key(|call| call.request);
    let (commands, replies): (Vec<kv::Command>, Vec<_>) = calls
        .into_iter()
        .map(|call| (call.command, call.reply))
        .unzip();
    let (commands, spans) = flatten(commands);
    {
        let mut keys: Vec<&[u8]> = watches.iter().map(|(key, _)| &key[..]).collect();
        for command in &commands {
            keys.extend(command.keys().into_iter().map(|key| &key[..]));
        }
        context.check_same_region(&keys)?;
    }
    let results = if commands.is_empty() && watches.is_empty() {
        // Nothing to apply or check (an empty MULTI, or only PINGs and argument errors).
        Some(Vec::new())
    } else {
        match context
            .write(kv::Command::Exec { watches, commands })
            .await?
        {
            kv::Response::Exec(results) => results,
            other => return Err(unexpected(&other)),
        }
    };
    let Some(results) = results else {
        // A watched key changed: nothing was applied.
        return Ok(Frame::NullArray);
    };
    if !spans_fit(&spans, results.len()) {
        return Err(unexpected(&kv::Response::Exec(Some(results))));
    }
    for (result, reply) in unflatten(results, &spans).into_iter().zip(replies) {
        let _ = reply.send(result);
    }
    // Every call is answered, so the handlers finish (a second call, which no queueable
    // command makes, is refused rather than left waiting).
    loop {
        poll_handlers(&mut handlers, &mut done, false).await;
        if done.iter().all(Option::is_some) {
            break;
        }
        let late = deferred.take();
        if late.is_empty() {
            poll_handlers(&mut handlers, &mut done, true).await;
        }
        for call in late {
            let _ = call.reply.send(Err(BackendError::Other(
                "internal error: a command inside EXEC made a second backend call".into(),
            )));
        }
    }
    drop(handlers);
    let frames = done
        .into_iter()
        .map(|outcome| match outcome {
            Some(Outcome::Reply(frame)) | Some(Outcome::ReplyAndClose(frame)) => frame,
            None => Frame::error("ERR internal error: a command inside EXEC did not answer"),
        })
        .collect();
    Ok(Frame::Array(frames))
}
