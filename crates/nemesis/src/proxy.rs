//! Slow links without `tc netem` (this kernel has none): a userspace TCP proxy per directed
//! store pair, whose delay can be changed while it runs.
//!
//! Store `i` reaches store `j` only through proxy `i→j`, because `i`'s `--initial-cluster`
//! names the proxy's address for `j`. The proxy runs inside `i`'s namespace (on an
//! [`NsRuntime`] whose thread entered it), so its outgoing connections leave from `i`'s
//! address and the firewall rules of [`crate::net`] still see who talks to whom.
//!
//! Every chunk read is stamped with `arrival + delay` and written no earlier than that, in
//! order: latency grows, bandwidth does not shrink, bytes are never reordered (TCP could not
//! deliver them reordered either).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Chunks in flight per direction of one connection; a full queue stops reading, so the
/// sender feels back-pressure instead of the proxy buffering without bound.
const CHUNKS_IN_FLIGHT_MAX: usize = 256;
const CHUNK_BYTES: usize = 64 * 1024;
/// How long the proxy tries to reach the target before dropping the inbound connection (the
/// store then reconnects with its own backoff).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long starting a runtime or a listener may take.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A single-threaded tokio runtime on its own OS thread, optionally inside a network
/// namespace. Tasks spawned on it create their sockets in that namespace.
pub struct NsRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsRuntime {
    /// Starts the runtime; `namespace_path` is `/var/run/netns/NAME`, or `None` for the host.
    pub fn start(name: &str, namespace_path: Option<String>) -> Result<NsRuntime, String> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("ns-{name}"))
            .spawn(move || {
                if let Some(path) = &namespace_path {
                    if let Err(e) = crate::net::enter_namespace(path) {
                        let _ = ready_tx.send(Err(format!("cannot enter {path}: {e}")));
                        return;
                    }
                }
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("cannot build a runtime: {e}")));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(rt.handle().clone()));
                rt.block_on(async {
                    let _ = stop_rx.await;
                });
                // Dropping `rt` cancels every proxy task and closes its sockets.
            })
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        let handle = ready_rx
            .recv_timeout(START_TIMEOUT)
            .map_err(|_| format!("runtime {name} did not start"))??;
        Ok(NsRuntime {
            handle,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// Runs `future` on this runtime (so inside its namespace) and returns its output.
    pub async fn run<F, T>(&self, future: F) -> Result<T, String>
    where
        F: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let task = self.handle.spawn(future);
        match tokio::time::timeout(START_TIMEOUT, task).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("task failed: {e}")),
            Err(_) => Err("task did not finish in time".into()),
        }
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One directed link's proxy. Dropping it stops accepting; open connections end when the
/// runtime it runs on stops.
pub struct LinkProxy {
    listen: SocketAddr,
    delay_ms: Arc<AtomicU64>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl LinkProxy {
    /// Listens on `listen` (port 0 picks one) inside `runtime`'s namespace and forwards every
    /// connection to `target`.
    pub async fn start(
        runtime: &NsRuntime,
        listen: SocketAddr,
        target: SocketAddr,
    ) -> Result<LinkProxy, String> {
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (bound_tx, bound_rx) = oneshot::channel();
        let delay = delay_ms.clone();
        let accept_task = runtime.handle().spawn(async move {
            let listener = match TcpListener::bind(listen).await {
                Ok(l) => l,
                Err(e) => {
                    let _ = bound_tx.send(Err(format!("proxy cannot listen on {listen}: {e}")));
                    return;
                }
            };
            let local = listener.local_addr().map_err(|e| e.to_string());
            let _ = bound_tx.send(local);
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    // Out of descriptors or similar: back off rather than spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                tokio::spawn(serve_connection(inbound, target, delay.clone()));
            }
        });
        let listen = tokio::time::timeout(START_TIMEOUT, bound_rx)
            .await
            .map_err(|_| format!("proxy on {listen} did not start"))?
            .map_err(|_| format!("proxy on {listen} stopped while starting"))??;
        Ok(LinkProxy {
            listen,
            delay_ms,
            accept_task,
        })
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Sets the one-way delay added to bytes entering the proxy from now on.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn delay(&self) -> Duration {
        Duration::from_millis(self.delay_ms.load(Ordering::Relaxed))
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

async fn serve_connection(inbound: TcpStream, target: SocketAddr, delay_ms: Arc<AtomicU64>) {
    let outbound = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(s)) => s,
        _ => return, // dropping `inbound` tells the store to reconnect later
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    // Either direction ending (EOF, reset, the store killed) closes both: gRPC over HTTP/2
    // never relies on a half-closed connection.
    tokio::select! {
        _ = pump(in_read, out_write, delay_ms.clone()) => {}
        _ = pump(out_read, in_write, delay_ms) => {}
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay_ms: Arc<AtomicU64>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(CHUNKS_IN_FLIGHT_MAX);
    let reader = async move {
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let due = Instant::now() + Duration::from_millis(delay_ms.load(Ordering::Relaxed));
            if tx.send((due, buf[..n].to_vec())).await.is_err() {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    // The writer drains what the reader queued before the reader's EOF ends the channel.
    tokio::join!(reader, writer);
}
