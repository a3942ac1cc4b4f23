//! What the end-to-end tests share (`tests/server.rs`, `tests/redis_two.rs`): an in-memory
//! `Backend` over `kv::KvStateMachine`s with a clock the test controls, a server on port 0,
//! and helpers to talk to it with the `redis` crate and raw sockets.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kv::{ClientId, KvStateMachine, RegionRange, Request, Sequence};
use resp::{serve, Backend, BackendError, BoxFuture, Frame, RespConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One region in memory, or two when `routes` is set (keys below "m", and the rest: each with
/// its own state machine and so its own session table, as in the server). Writes go through
/// `Request` encode/decode and `apply_request` with increasing indexes, exactly like committed
/// Raft entries, stamped with the backend's clock (`proposed_at_ms`); reads use `read_at` that
/// clock, which starts at the system time and moves only when a test moves it
/// ([`MemoryBackend::advance`]), so expiry is tested without sleeping.
pub struct MemoryBackend {
    /// Per region: the state machine and its last applied index.
    pub state: Arc<Mutex<Vec<(KvStateMachine, u64)>>>,
    /// The leader's clock, ms since the Unix epoch.
    pub now_ms: Arc<AtomicU64>,
    /// Each command runs after a delay of 0–3 ms that depends on the command, when its future
    /// is awaited (as a real backend would: commands of one pipeline then finish out of order).
    pub delays: AtomicBool,
    /// Delayed commands running now, and the most ever at once.
    pub running: Arc<(AtomicUsize, AtomicUsize)>,
    pub same_region: AtomicBool,
    /// Whether there are two regions and `region_of` answers.
    pub routes: AtomicBool,
    /// Every command executed, in order, to see how a pipeline was sent.
    pub executed: Mutex<Vec<kv::Command>>,
}

impl MemoryBackend {
    pub fn new() -> Arc<Self> {
        Self::with_routes(false)
    }

    pub fn with_routes(routes: bool) -> Arc<Self> {
        Arc::new(MemoryBackend {
            state: Arc::new(Mutex::new(if routes {
                let split = bytes::Bytes::from_static(b"m");
                vec![
                    (
                        KvStateMachine::with_region(RegionRange {
                            start: bytes::Bytes::new(),
                            end: Some(split.clone()),
                        }),
                        0,
                    ),
                    (
                        KvStateMachine::with_region(RegionRange {
                            start: split,
                            end: None,
                        }),
                        0,
                    ),
                ]
            } else {
                vec![(KvStateMachine::with_region(RegionRange::full()), 0)]
            })),
            now_ms: Arc::new(AtomicU64::new(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0),
            )),
            delays: AtomicBool::new(false),
            running: Arc::new((AtomicUsize::new(0), AtomicUsize::new(0))),
            same_region: AtomicBool::new(true),
            routes: AtomicBool::new(routes),
            executed: Mutex::new(Vec::new()),
        })
    }

    pub fn executed(&self) -> Vec<kv::Command> {
        self.executed.lock().unwrap().clone()
    }

    /// The backend's clock now.
    pub fn now(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }

    /// Moves the backend's clock forward by `ms`.
    pub fn advance(&self, ms: u64) {
        self.now_ms.fetch_add(ms, Ordering::SeqCst);
    }

    pub fn with_delays(routes: bool) -> Arc<Self> {
        let backend = Self::with_routes(routes);
        backend.delays.store(true, Ordering::Relaxed);
        backend
    }

    fn run(
        state: &Mutex<Vec<(KvStateMachine, u64)>>,
        now_ms: u64,
        client_id: u64,
        sequence: u64,
        command: kv::Command,
    ) -> Result<kv::Response, BackendError> {
        let mut guard = state
            .lock()
            .map_err(|_| BackendError::Other("poisoned".into()))?;
        // The region of the first key (the front end sends a command to one region).
        let region = match command.keys().first() {
            Some(key) if guard.len() == 2 && key.as_ref() >= b"m".as_slice() => 1,
            _ => 0,
        };
        if client_id == 0 {
            if let kv::Command::ScanKeys {
                start,
                end: None,
                limit,
                key_type,
            } = &command
            {
                return Self::scan_keys_across(&guard, region, start, *limit, *key_type, now_ms);
            }
            return guard[region]
                .0
                .read_at(&command, now_ms)
                .map_err(BackendError::from);
        }
        let (machine, index) = &mut guard[region];
        let payload = Request {
            client_id: ClientId(client_id),
            sequence: Sequence(sequence),
            command,
            proposed_at_ms: now_ms,
        }
        .encode();
        let request = Request::decode(&payload).map_err(|e| BackendError::Other(e.to_string()))?;
        *index += 1;
        match machine.apply_request(*index, &request).result {
            Ok(response) => Ok(response),
            Err(kv::ApplyError::Command(error)) => Err(error.into()),
            Err(other) => Err(BackendError::Other(other.to_string())),
        }
    }
}

impl MemoryBackend {
    /// `ScanKeys { end: None }` from `region` on, crossing into the next regions while the
    /// limit allows (the `Backend` contract's rule 4).
    fn scan_keys_across(
        regions: &[(KvStateMachine, u64)],
        region: usize,
        start: &bytes::Bytes,
        limit: u32,
        key_type: Option<kv::KeyType>,
        now_ms: u64,
    ) -> Result<kv::Response, BackendError> {
        let mut found = Vec::new();
        let mut at = region;
        let mut from = start.clone();
        loop {
            let command = kv::Command::ScanKeys {
                start: from,
                end: None,
                limit: limit - found.len() as u32,
                key_type,
            };
            let (keys, more) = match regions[at].0.read_at(&command, now_ms) {
                Ok(kv::Response::Keys { keys, more }) => (keys, more),
                Ok(other) => return Err(BackendError::Other(format!("unexpected {other:?}"))),
                Err(error) => return Err(error.into()),
            };
            found.extend(keys);
            let last_region = at + 1 == regions.len();
            if more || last_region || found.len() as u32 >= limit {
                return Ok(kv::Response::Keys {
                    keys: found,
                    more: more || !last_region,
                });
            }
            at += 1;
            from = regions[at].0.region().start.clone();
        }
    }
}

impl Backend for MemoryBackend {
    fn execute(
        &self,
        client_id: u64,
        sequence: u64,
        command: kv::Command,
    ) -> BoxFuture<Result<kv::Response, BackendError>> {
        self.executed.lock().unwrap().push(command.clone());
        if self.delays.load(Ordering::Relaxed) {
            let micros = command.encode().iter().map(|b| u64::from(*b)).sum::<u64>() * 7919 % 3000;
            let state = self.state.clone();
            let running = self.running.clone();
            let now_ms = self.now();
            return Box::pin(async move {
                let now = running.0.fetch_add(1, Ordering::SeqCst) + 1;
                running.1.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_micros(micros)).await;
                running.0.fetch_sub(1, Ordering::SeqCst);
                Self::run(&state, now_ms, client_id, sequence, command)
            });
        }
        let result = Self::run(&self.state, self.now(), client_id, sequence, command);
        Box::pin(async move { result })
    }

    fn same_region(&self, keys: &[&[u8]]) -> bool {
        let first = keys.first().and_then(|k| self.region_of(k));
        self.same_region.load(Ordering::Relaxed) && keys.iter().all(|k| self.region_of(k) == first)
    }

    fn region_of(&self, key: &[u8]) -> Option<u64> {
        self.routes
            .load(Ordering::Relaxed)
            .then(|| if key < b"m".as_slice() { 1 } else { 2 })
    }

    fn dbsize(&self) -> BoxFuture<Result<u64, BackendError>> {
        let result = self
            .state
            .lock()
            .map(|guard| guard.iter().map(|(m, _)| m.len() as u64).sum())
            .map_err(|_| BackendError::Other("poisoned".into()));
        Box::pin(async move { result })
    }

    fn info(&self) -> Vec<(String, String)> {
        vec![("raftkv_regions".into(), "1".into())]
    }
}

pub struct TestServer {
    pub address: std::net::SocketAddr,
    pub backend: Arc<MemoryBackend>,
    pub _stop: tokio::sync::oneshot::Sender<()>,
}

pub async fn start(config: RespConfig) -> TestServer {
    start_with(config, MemoryBackend::new()).await
}

pub async fn start_with(config: RespConfig, backend: Arc<MemoryBackend>) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, backend.clone(), config, stopped));
    TestServer {
        address,
        backend,
        _stop: stop,
    }
}

pub async fn client(server: &TestServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://{}/", server.address))
        .expect("url")
        .get_multiplexed_tokio_connection()
        .await
        .expect("connect")
}

/// Sends raw bytes and reads until `expected_len` bytes arrived or the server closed.
pub async fn raw(server: &TestServer, request: &[u8]) -> (Vec<u8>, TcpStream) {
    let mut stream = TcpStream::connect(server.address).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let reply = read_some(&mut stream).await;
    (reply, stream)
}

pub async fn read_some(stream: &mut TcpStream) -> Vec<u8> {
    let mut reply = vec![0; 64 * 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut reply))
        .await
        .expect("reply in time")
        .expect("read");
    reply.truncate(read);
    reply
}

/// Reads replies until the stream holds `count` complete frames.
pub async fn read_frames(stream: &mut TcpStream, count: usize) -> Vec<Frame> {
    let mut buffer = Vec::new();
    let mut frames = Vec::new();
    while frames.len() < count {
        let mut position = 0;
        frames.clear();
        while let Ok(Some((frame, used))) = Frame::parse(&buffer[position..]) {
            frames.push(frame);
            position += used;
        }
        if frames.len() >= count {
            break;
        }
        let more = read_some(stream).await;
        assert!(!more.is_empty(), "server closed early");
        buffer.extend_from_slice(&more);
    }
    frames
}

pub async fn assert_closed(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "connection should be closed, got {rest:?}"
    );
}

pub async fn error_text<T: redis::FromRedisValue + std::fmt::Debug>(
    connection: &mut redis::aio::MultiplexedConnection,
    command: &redis::Cmd,
) -> String {
    let error = command
        .query_async::<T>(connection)
        .await
        .expect_err("command should fail");
    // redis-rs splits "CODE detail"; put it back together.
    match (error.code(), error.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        (Some(code), None) => code.to_string(),
        _ => error.to_string(),
    }
}

pub fn cmd(name: &str) -> redis::Cmd {
    redis::cmd(name)
}
