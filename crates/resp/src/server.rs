//! [`serve`]: the accept loop, the connection limit, one task per connection, and graceful
//! shutdown (mini-redis `server.rs`).
//!
//! Shutdown contract:
//! 1. When `shutdown` completes, the listener stops accepting.
//! 2. Every connection finishes what it is executing (a command, or the pipelined segments
//!    in flight: at most two batches of up to 256 commands), writes its queued replies, and
//!    closes; requests not yet planned are not executed.
//! 3. `serve` returns once every connection task has ended.

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use futures_util::stream::{FuturesOrdered, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::backend::Backend;
use crate::clients::{ClientRecord, ClientRegistry};
use crate::cmd::{
    self, CursorTable, Job, Outcome, Pipeline, Segment, Session, MAX_SEGMENTS_IN_FLIGHT,
};
use crate::config::{RespConfig, MAX_PIPELINE_BYTES, MAX_PIPELINE_COMMANDS};
use crate::connection::{Connection, ConnectionError};
use crate::frame::Frame;

/// State shared by all connections of one [`serve`] call.
pub(crate) struct Shared {
    pub backend: Arc<dyn Backend>,
    pub config: RespConfig,
    pub started: Instant,
    pub port: u16,
    pub connection_limit: Arc<Semaphore>,
    /// SCAN cursors of all connections (bounded; see `cmd::keys`).
    pub cursors: Mutex<CursorTable>,
    /// The open connections, for CLIENT LIST (bounded by the connection limit).
    pub clients: ClientRegistry,
    next_connection_id: AtomicU64,
}

impl Shared {
    /// Connections currently open (INFO `connected_clients`).
    pub fn connected_clients(&self) -> usize {
        self.config
            .max_connections
            .saturating_sub(self.connection_limit.available_permits())
    }
}

/// Serves the Redis protocol (RESP2, and RESP3 after `HELLO 3`) on `listener` until `shutdown`
/// completes (see the module docs for what happens then). Accept errors are logged and
/// retried, never fatal: a transient EMFILE must not take the front end down.
pub async fn serve(
    listener: TcpListener,
    backend: Arc<dyn Backend>,
    config: RespConfig,
    shutdown: impl Future,
) {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let shared = Arc::new(Shared {
        backend,
        connection_limit: Arc::new(Semaphore::new(config.max_connections)),
        clients: ClientRegistry::new(config.max_connections),
        config,
        started: Instant::now(),
        port,
        next_connection_id: AtomicU64::new(1),
        cursors: Mutex::new(CursorTable::new(new_session_client_id(0))),
    });
    let (shutdown_sender, shutdown_receiver) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // Reap finished connection tasks so the set does not grow with history.
        while tasks.try_join_next().is_some() {}
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => break,
        };
        let socket = match accepted {
            Ok((socket, _)) => socket,
            Err(error) => {
                warn!(%error, "accept failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let shared = shared.clone();
        let shutdown = shutdown_receiver.clone();
        tasks.spawn(async move {
            let Ok(permit) = shared.connection_limit.clone().try_acquire_owned() else {
                refuse(socket).await;
                return;
            };
            let id = shared.next_connection_id.fetch_add(1, Ordering::Relaxed);
            handle_connection(&shared, socket, id, shutdown).await;
            drop(permit);
        });
    }
    let _ = shutdown_sender.send(true);
    while tasks.join_next().await.is_some() {}
}

/// Over the connection limit: tell the client why, as Redis does, then close.
async fn refuse(socket: TcpStream) {
    let mut connection = Connection::new(socket);
    if connection
        .queue(&Frame::error("ERR max number of clients reached"))
        .await
        .is_ok()
    {
        let _ = connection.flush().await;
    }
}

/// A session client id for exactly-once writes: random, so it does not collide with other
/// front ends or with this one before a restart (a reused id with a restarted sequence would be
/// taken for stale retries). Never 0, which is reserved for reads.
fn new_session_client_id(connection_id: u64) -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(connection_id);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    hasher.write_u128(nanos);
    hasher.finish().max(1)
}

/// Queues the replies of one job in order. False when the connection is to close: the reply
/// could not be written, or the command was QUIT.
async fn answer(connection: &mut Connection, outcomes: Vec<Outcome>) -> bool {
    for outcome in outcomes {
        let (reply, close) = match outcome {
            Outcome::Reply(reply) => (reply, false),
            Outcome::ReplyAndClose(reply) => (reply, true),
        };
        if connection.queue(&reply).await.is_err() || close {
            return false;
        }
    }
    true
}

/// Waits for every segment in flight and queues their replies, in order.
async fn answer_all<'a>(
    connection: &mut Connection,
    in_flight: &mut FuturesOrdered<Segment<'a>>,
) -> bool {
    while let Some(outcomes) = in_flight.next().await {
        if !answer(connection, outcomes).await {
            return false;
        }
    }
    true
}

/// A request that could not be read: a protocol error is answered (Redis's text) before the
/// connection closes; anything else just closes it.
async fn report_read_error(
    connection: &mut Connection,
    connection_id: u64,
    error: ConnectionError,
) {
    match error {
        ConnectionError::Protocol(error) => {
            debug!(connection_id, %error, "protocol error; closing");
            let reply = Frame::error(format!("ERR Protocol error: {error}"));
            if connection.queue(&reply).await.is_ok() {
                let _ = connection.flush().await;
            }
        }
        error => debug!(connection_id, %error, "connection closed"),
    }
}

/// The socket's file descriptor, for CLIENT LIST's `fd=` (-1 where there is none).
#[cfg(unix)]
fn socket_fd(socket: &TcpStream) -> i64 {
    use std::os::unix::io::AsRawFd;
    i64::from(socket.as_raw_fd())
}

#[cfg(not(unix))]
fn socket_fd(_socket: &TcpStream) -> i64 {
    -1
}

async fn handle_connection(
    shared: &Shared,
    socket: TcpStream,
    connection_id: u64,
    mut shutdown: watch::Receiver<bool>,
) {
    let shown = |address: std::io::Result<std::net::SocketAddr>| {
        address.map(|a| a.to_string()).unwrap_or_default()
    };
    let client = Arc::new(ClientRecord::new(
        connection_id,
        shown(socket.peer_addr()),
        shown(socket.local_addr()),
        socket_fd(&socket),
    ));
    // Listed in CLIENT LIST until this function returns (or its task is dropped).
    let _registration = shared.clients.register(client.clone());
    let mut connection = Connection::new(socket);
    let mut session = Session::new(
        client,
        new_session_client_id(connection_id),
        shared.config.password.is_none(),
    );
    // Segments of pipelined requests run concurrently (`cmd::pipeline`); their replies are
    // written in order as they finish.
    let mut pipeline = Pipeline::default();
    let mut in_flight = FuturesOrdered::new();
    let mut drain = true;
    'connection: loop {
        let limits = session.request_limits(&shared.config);
        let request = tokio::select! {
            biased;
            // First, so a client that never stops sending cannot hold shutdown off.
            _ = shutdown.changed() => break,
            Some(outcomes) = in_flight.next(), if !in_flight.is_empty() => {
                // Flush at once: `read_request` flushes only when no complete request waits.
                if !answer(&mut connection, outcomes).await || connection.flush().await.is_err() {
                    drain = false;
                    break;
                }
                continue;
            }
            request = connection.read_request(&limits), if in_flight.len() < MAX_SEGMENTS_IN_FLIGHT => request,
        };
        let arguments = match request {
            Ok(Some(arguments)) => arguments,
            Ok(None) => break,
            Err(error) => {
                answer_all(&mut connection, &mut in_flight).await;
                report_read_error(&mut connection, connection_id, error).await;
                drain = false;
                break;
            }
        };
        // Requests pipelined behind this one that have fully arrived are planned with it. Not
        // before AUTH: the limits a request is parsed with depend on it.
        let mut requests = VecDeque::from([arguments]);
        let mut read_error = None;
        if session.authenticated {
            let mut bytes = cmd::request_bytes(&requests[0]);
            while requests.len() < MAX_PIPELINE_COMMANDS && bytes < MAX_PIPELINE_BYTES {
                match connection.buffered_request(&limits) {
                    Ok(Some(next)) => {
                        bytes += cmd::request_bytes(&next);
                        requests.push_back(next);
                    }
                    // The first read took at most a buffer's worth: take what else has
                    // arrived, without waiting (not for a large request still arriving: the
                    // next read_request waits for it properly).
                    Ok(None)
                        if connection.buffered_bytes() < MAX_PIPELINE_BYTES
                            && connection.read_ready() > 0 => {}
                    Ok(None) => break,
                    // Answer what came before the bad request first, as Redis does.
                    Err(error) => {
                        read_error = Some(error);
                        break;
                    }
                }
            }
        }
        // Redis ignores empty requests (*0, blank inline lines).
        requests.retain(|arguments| !arguments.is_empty());
        while let Some(job) = pipeline.next_job(shared, &mut session, &mut requests) {
            match job {
                Job::Segment(segment) => {
                    if in_flight.len() >= MAX_SEGMENTS_IN_FLIGHT {
                        if let Some(outcomes) = in_flight.next().await {
                            if !answer(&mut connection, outcomes).await
                                || connection.flush().await.is_err()
                            {
                                drain = false;
                                break 'connection;
                            }
                        }
                    }
                    in_flight.push_back(segment);
                }
                // Alone, after everything before it, with the session as it is then.
                Job::Barrier(request) => {
                    if !answer_all(&mut connection, &mut in_flight).await {
                        drain = false;
                        break 'connection;
                    }
                    let outcome = cmd::execute(shared, &mut session, request).await;
                    // HELLO and RESET switch the protocol, their own reply included.
                    connection.set_protocol(session.protocol);
                    if !answer(&mut connection, vec![outcome]).await {
                        drain = false;
                        break 'connection;
                    }
                }
            }
        }
        if let Some(error) = read_error {
            answer_all(&mut connection, &mut in_flight).await;
            report_read_error(&mut connection, connection_id, error).await;
            drain = false;
            break;
        }
    }
    // Shutdown or a clean close: what is in flight finishes and is answered. After a failed
    // write or QUIT there is no one to answer (and after QUIT nothing is in flight).
    if drain {
        answer_all(&mut connection, &mut in_flight).await;
    }
    let _ = connection.flush().await;
}
