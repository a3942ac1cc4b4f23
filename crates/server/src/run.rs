//! Starting and stopping a server on passed-in listeners (tests bind port 0).

use crate::adapter::HostedSm;
use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::service::{KvGrpc, KvService};
use crate::store_loop::{self, Cmd, StoreHandle, COMMAND_QUEUE_CAPACITY};
use api::pb::kv_server::KvServer;
use raft_log::StdFileSystem;
use std::sync::Arc;
use std::time::Duration;
use store::{Store, StoreConfig, StoreError, StoreId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

/// Bytes of an HTTP request to `/metrics` read before answering (the request is ignored).
const METRICS_REQUEST_MAX_BYTES: usize = 4096;

/// Largest gRPC message a client may send or receive: the value limit plus room for the key
/// and framing. Larger messages are refused by gRPC itself with a clear status.
pub const MAX_GRPC_MESSAGE_BYTES: usize = 16 << 20;

fn admin_server(
    svc: crate::admin::AdminService,
) -> api::pb::admin_server::AdminServer<crate::admin::AdminGrpc> {
    api::pb::admin_server::AdminServer::new(crate::admin::AdminGrpc(svc))
}

fn placement_server(
    svc: crate::placement_svc::PlacementService,
) -> api::pb::placement_server::PlacementServer<crate::placement_svc::PlacementGrpc> {
    api::pb::placement_server::PlacementServer::new(crate::placement_svc::PlacementGrpc(svc))
        .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES)
}

fn kv_server(svc: KvService) -> KvServer<KvGrpc> {
    KvServer::new(KvGrpc(svc))
        .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES)
}

/// Accepted connections with Nagle's algorithm off: gRPC writes a response as several small
/// frames, and Nagle holding the later ones until the peer's delayed ACK added ~40 ms to
/// every small request (measured: single-client reads at 44 ms p50 before this).
///
/// Every listener serving gRPC must go through this, the client listener included: h2 sends
/// a DATA payload of 256 bytes or more as its own buffer, so the trailers (END_STREAM) follow
/// in a second write, which Nagle held until the client's delayed ACK (~40 ms). Responses
/// with a value of 256+ bytes (reads) were hit; small ones (write acks) went in one write.
fn nodelay(
    l: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(l).map(|s| {
        if let Ok(s) = &s {
            let _ = s.set_nodelay(true);
        }
        s
    })
}

pub struct Server;

/// A running server. Dropping it does not stop it; call [`ServerHandle::shutdown`].
pub struct ServerHandle {
    shutdown_tx: watch::Sender<bool>,
    store: StoreHandle,
    store_thread: Option<std::thread::JoinHandle<Result<(), store::StoreError>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub metrics: Arc<Metrics>,
}

/// Why [`Server::start`] failed; nothing is left running.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot create data dir {}: {source}", dir.display())]
    DataDir {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the store in {}: {source}", dir.display())]
    Store {
        dir: std::path::PathBuf,
        source: StoreError,
    },
    #[error("cannot start the store thread: {0}")]
    Thread(std::io::Error),
}

impl Server {
    /// Opens the store in `cfg.data_dir` (bootstrapping it on first start) and serves the
    /// Raft and Kv services on `peer`, the Kv service on `client`, Redis (RESP2) on `resp`,
    /// and `/metrics` on `metrics`. Must run inside a tokio runtime.
    pub async fn start(
        cfg: ServerConfig,
        peer: TcpListener,
        client: TcpListener,
        metrics_listener: Option<TcpListener>,
        resp_listener: Option<TcpListener>,
    ) -> Result<ServerHandle, StartError> {
        cfg.validate().map_err(StartError::Config)?;
        let cfg = Arc::new(cfg);
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| StartError::DataDir {
            dir: cfg.data_dir.clone(),
            source: e,
        })?;
        // The data directory's identity: a first start records it, later ones must match.
        let identity = match crate::identity::load(&cfg.data_dir).map_err(StartError::Config)? {
            Some(id) if id.store_id != cfg.store_id => {
                return Err(StartError::Config(format!(
                    "{} holds store {}, not store {}",
                    cfg.data_dir.display(),
                    id.store_id,
                    cfg.store_id
                )))
            }
            Some(id) if cfg.cluster_id != 0 && id.cluster_id != cfg.cluster_id => {
                return Err(StartError::Config(format!(
                    "{} belongs to cluster {}, not --cluster-id {}",
                    cfg.data_dir.display(),
                    id.cluster_id,
                    cfg.cluster_id
                )))
            }
            Some(id) => id,
            None if cfg.joined => {
                return Err(StartError::Config(format!(
                    "{} has no identity: join the cluster first",
                    cfg.data_dir.display()
                )))
            }
            None => {
                let id = crate::identity::Identity {
                    store_id: cfg.store_id,
                    cluster_id: cfg.bootstrap_cluster_id(),
                };
                crate::identity::save(&cfg.data_dir, &id).map_err(StartError::Config)?;
                id
            }
        };
        let cluster_id = identity.cluster_id;
        // A joined store bootstraps nothing: its replicas come from placement's moves.
        let initial = if cfg.joined {
            Vec::new()
        } else {
            placement::bootstrap_regions(
                cluster_id,
                &cfg.initial_cluster,
                &cfg.split_keys,
                cfg.replicas,
            )
        };
        let mut scfg = StoreConfig::new(cfg.store_id);
        scfg.election_tick = cfg.election_tick;
        scfg.heartbeat_tick = cfg.heartbeat_tick;
        scfg.snapshot_threshold_entries = cfg.snapshot_threshold_entries;
        scfg.snapshot_threshold_bytes = cfg.snapshot_threshold_bytes;
        scfg.engine = raft_log::Config::with_segment_size(cfg.log_segment_bytes);
        scfg.read_mode = cfg.read_mode;
        // Spread a new cluster's region leaders over the stores (once, for the store's first
        // `balance_leaders_for_ticks` after bootstrap; see `Store::balance_leaders`), checked
        // once per election timeout.
        scfg.balance_leaders_every_ticks = u64::from(cfg.election_tick);
        let store: Store<HostedSm> =
            Store::open_bootstrap(&cfg.data_dir, Arc::new(StdFileSystem), scfg, &initial).map_err(
                |e| StartError::Store {
                    dir: cfg.data_dir.clone(),
                    source: e,
                },
            )?;
        let regions = store.live_regions();
        let metrics = Arc::new(Metrics::default());
        let _ = metrics.data_dir.set(cfg.data_dir.clone());
        {
            // (raft-log logs the recovery itself.)
            let r = store.engine().recovery_report();
            metrics.set_recovery(r.bytes_read, r.duration);
        }

        // Every store-to-store connection carries the cluster id; a store of another
        // cluster is refused.
        let transport = transport::Transport::try_new(
            StoreId(cfg.store_id),
            transport::TransportConfig {
                cluster_id,
                snapshot_max_bytes_per_sec: cfg.scheduling.snapshot_max_bytes_per_sec,
                ..transport::TransportConfig::default()
            },
        )
        .map_err(|e| StartError::Config(e.to_string()))?;
        // The view gives the transport every store's address: the initial cluster's now,
        // joined and moved stores' as placement reports them.
        let cluster = Arc::new(crate::cluster_view::ClusterView::with_file(
            cfg.store_id,
            &cfg.initial_cluster,
            Some(transport.clone()),
            Some(&cfg.data_dir),
        ));
        let (tx, rx) = std::sync::mpsc::sync_channel(COMMAND_QUEUE_CAPACITY);
        let wake = tx.clone();
        let handle = StoreHandle::new(tx, regions, cluster);
        let tick = Duration::from_millis(cfg.tick_ms);
        let loop_metrics = metrics.clone();
        let loop_transport = transport.clone();
        let store_thread = std::thread::Builder::new()
            .name(format!("store-{}", cfg.store_id))
            .spawn(move || {
                let r = store_loop::run(store, rx, wake, tick, loop_transport, loop_metrics);
                if let Err(e) = &r {
                    tracing::error!("store stopped on a storage error: {e}");
                }
                r
            })
            .map_err(StartError::Thread)?;

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        // Raft messages from other stores go straight into the store thread's queue (a full
        // queue drops the message: Raft retransmits). The peer port also serves gRPC, for
        // requests forwarded by other servers.
        let h = handle.clone();
        let ingress = transport::RaftIngress::direct(Arc::new(move |from, m| h.send_raft(from, m)))
            .with_cluster_id(cluster_id)
            .with_snapshot_limits(
                transport::server::DEFAULT_SNAPSHOT_RECV_CONCURRENCY,
                cfg.scheduling.snapshot_max_bytes_per_sec,
            )
            .map_err(|e| StartError::Config(e.to_string()))?;
        let client_addr = client
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let advertised = crate::heartbeat::Advertised {
            peer: peer.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            client: client_addr.clone(),
            resp: resp_listener
                .as_ref()
                .and_then(|l| l.local_addr().ok())
                .map(|a| a.to_string())
                .unwrap_or_default(),
        };
        let svc = KvService::new(handle.clone(), cfg.clone(), metrics.clone())
            .with_client_addr(client_addr);
        let wait = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|v| *v).await;
        };
        let peer_incoming = transport::serve_peer_listener(peer, ingress, shutdown_rx.clone());
        let admin = crate::admin::AdminService::new(handle.clone(), cfg.clone());
        let placement_svc =
            crate::placement_svc::PlacementService::new(handle.clone(), cfg.clone());
        let peer_server = tonic::transport::Server::builder()
            .add_service(kv_server(svc.clone()))
            .add_service(admin_server(admin.clone()))
            .add_service(placement_server(placement_svc.clone()))
            .serve_with_incoming_shutdown(peer_incoming, wait(shutdown_rx.clone()));
        tasks.push(tokio::spawn(async move {
            if let Err(e) = peer_server.await {
                tracing::error!("peer server failed: {e}");
            }
        }));
        if let Some(l) = resp_listener {
            let backend = Arc::new(crate::resp_backend::RaftBackend::new(svc.clone()));
            let limits = svc.limits;
            let resp_cfg = resp::RespConfig {
                password: cfg.resp_password.clone(),
                max_bulk_bytes: limits.max_value_bytes.max(limits.max_key_bytes),
                max_key_bytes: limits.max_key_bytes,
                max_value_bytes: limits.max_value_bytes,
                ..resp::RespConfig::default()
            };
            let stop = wait(shutdown_rx.clone());
            tasks.push(tokio::spawn(async move {
                resp::serve(l, backend, resp_cfg, stop).await;
            }));
        }
        let client_server = tonic::transport::Server::builder()
            .add_service(kv_server(svc))
            .add_service(admin_server(admin))
            .add_service(placement_server(placement_svc.clone()))
            .serve_with_incoming_shutdown(nodelay(client), wait(shutdown_rx.clone()));
        tasks.push(tokio::spawn(async move {
            if let Err(e) = client_server.await {
                tracing::error!("client server failed: {e}");
            }
        }));
        let metrics_placement = placement_svc.clone();
        tasks.push(tokio::spawn(crate::heartbeat::run(
            handle.clone(),
            placement_svc,
            cfg.clone(),
            advertised,
            cluster_id,
            shutdown_rx.clone(),
        )));
        if let Some(l) = metrics_listener {
            let m = metrics.clone();
            let mut stop = shutdown_rx.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.wait_for(|v| *v) => return,
                        accepted = l.accept() => {
                            let Ok((mut sock, _)) = accepted else { continue };
                            let mut body = m.render();
                            crate::metrics::render_operators(
                                &mut body,
                                &metrics_placement.operator_counts(),
                            );
                            tokio::spawn(async move {
                                let mut buf = vec![0u8; METRICS_REQUEST_MAX_BYTES];
                                let _ = tokio::time::timeout(Duration::from_secs(2), sock.read(&mut buf)).await;
                                let head = format!(
                                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                    body.len()
                                );
                                let _ = sock.write_all(head.as_bytes()).await;
                                let _ = sock.write_all(body.as_bytes()).await;
                            });
                        }
                    }
                }
            }));
        }
        Ok(ServerHandle {
            shutdown_tx,
            store: handle,
            store_thread: Some(store_thread),
            tasks,
            metrics,
        })
    }
}

impl ServerHandle {
    /// Stops serving, then stops the store thread after its current round (every write it
    /// acknowledged is already durable).
    pub async fn shutdown(mut self) {
        let _ = self.shutdown_tx.send(true);
        let _ = self.store.send(Cmd::Shutdown);
        if let Some(t) = self.store_thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }

    /// Whether the store thread is still running (it stops on a fatal storage error).
    pub fn store_running(&self) -> bool {
        self.store_thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    /// Every gRPC listener goes through `nodelay`: without it, responses with a value of 256
    /// bytes or more (h2 sends the trailers in a second small write) waited ~40 ms for the
    /// client's delayed ACK. Checked on the socket itself rather than by timing a request.
    #[tokio::test]
    async fn accepted_sockets_have_nagle_off() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut incoming = Box::pin(nodelay(l));
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let accepted = incoming
            .next()
            .await
            .expect("a connection")
            .expect("accepted");
        assert!(
            accepted.nodelay().unwrap(),
            "accepted socket still uses Nagle's algorithm"
        );
    }
}
