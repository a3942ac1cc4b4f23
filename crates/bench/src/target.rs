//! What the load goes to: RaftKV's gRPC API, any RESP server (RaftKV's Redis port or
//! redis-server), or etcd v3. One [`Connection`] per logical client; clients share the
//! underlying TCP connections (`--connections`) where the protocol multiplexes.

use api::etcdpb;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// The system under load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// RaftKV's gRPC `Kv` service, through the Rust client (routing, sessions, retries).
    Raftkv,
    /// Any Redis-protocol server: RaftKV's `--resp-addr` or redis-server.
    Resp,
    /// etcd v3 (KV.Put / KV.Range; linearizable ranges unless `--stale`).
    Etcd,
}

impl std::str::FromStr for TargetKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "raftkv" => Ok(TargetKind::Raftkv),
            "resp" | "redis" => Ok(TargetKind::Resp),
            "etcd" => Ok(TargetKind::Etcd),
            other => Err(format!(
                "unknown target {other:?}: use raftkv, resp or etcd"
            )),
        }
    }
}

/// Why an operation failed (counted as an error; the run goes on).
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("raftkv: {0}")]
    Raftkv(#[from] client::ClientError),
    #[error("resp: {0}")]
    Resp(#[from] redis::RedisError),
    #[error("etcd: {0}")]
    Etcd(#[from] tonic::Status),
    #[error("connect: {0}")]
    Connect(String),
}

/// One logical client's handle.
pub enum Connection {
    Raftkv(client::Client),
    Resp(redis::aio::MultiplexedConnection),
    Etcd(etcdpb::kv_client::KvClient<Channel>),
}

/// Per-attempt deadline for etcd RPCs (the RaftKV client and redis have their own).
const ETCD_RPC_TIMEOUT: Duration = Duration::from_secs(10);

impl Connection {
    /// Opens `connections` shared connections to `endpoints` (round-robin) and hands out
    /// `clients` handles over them.
    pub async fn open_all(
        kind: TargetKind,
        endpoints: &[String],
        connections: usize,
        clients: usize,
    ) -> Result<Vec<Connection>, OpError> {
        if endpoints.is_empty() {
            return Err(OpError::Connect("no endpoints given".into()));
        }
        let connections = connections.clamp(1, clients.max(1));
        let mut shared = Vec::with_capacity(connections);
        for i in 0..connections {
            let endpoint = &endpoints[i % endpoints.len()];
            shared.push(Self::open(kind, endpoints, endpoint).await?);
        }
        Ok((0..clients)
            .map(|i| shared[i % connections].share())
            .collect())
    }

    async fn open(kind: TargetKind, all: &[String], endpoint: &str) -> Result<Connection, OpError> {
        Ok(match kind {
            TargetKind::Raftkv => {
                // The client routes to leaders itself; start it at this endpoint so the
                // connections' first requests spread over the stores.
                let mut order = vec![endpoint.to_string()];
                order.extend(all.iter().filter(|e| *e != endpoint).cloned());
                Connection::Raftkv(client::Client::connect(order).await?)
            }
            TargetKind::Resp => {
                let url = if endpoint.starts_with("redis://") {
                    endpoint.to_string()
                } else {
                    format!("redis://{endpoint}/")
                };
                let c = redis::Client::open(url)?;
                Connection::Resp(c.get_multiplexed_async_connection().await?)
            }
            TargetKind::Etcd => {
                let ep = Endpoint::from_shared(client::grpc_url(endpoint))
                    .map_err(|e| OpError::Connect(e.to_string()))?
                    .tcp_nodelay(true)
                    .connect_timeout(Duration::from_secs(2))
                    .timeout(ETCD_RPC_TIMEOUT);
                let channel = ep
                    .connect()
                    .await
                    .map_err(|e| OpError::Connect(format!("{endpoint}: {e}")))?;
                Connection::Etcd(etcdpb::kv_client::KvClient::new(channel))
            }
        })
    }

    /// Another handle over the same connection (RaftKV: a new session).
    fn share(&self) -> Connection {
        match self {
            Connection::Raftkv(c) => Connection::Raftkv(c.fork()),
            Connection::Resp(c) => Connection::Resp(c.clone()),
            Connection::Etcd(c) => Connection::Etcd(c.clone()),
        }
    }

    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), OpError> {
        match self {
            Connection::Raftkv(c) => c.put(key, value).await?,
            Connection::Resp(c) => {
                redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .query_async::<()>(c)
                    .await?
            }
            Connection::Etcd(c) => {
                c.put(etcdpb::PutRequest {
                    key: key.to_vec(),
                    value: value.to_vec(),
                    ..Default::default()
                })
                .await?;
            }
        }
        Ok(())
    }

    /// Reads `key`; returns whether it was found. `stale` asks for a local, possibly stale
    /// read (RaftKV stale read, etcd serializable); linearizable otherwise.
    pub async fn get(&mut self, key: &[u8], stale: bool) -> Result<bool, OpError> {
        Ok(match self {
            Connection::Raftkv(c) => {
                if stale {
                    c.get_stale(key).await?.is_some()
                } else {
                    c.get(key).await?.is_some()
                }
            }
            Connection::Resp(c) => redis::cmd("GET")
                .arg(key)
                .query_async::<Option<Vec<u8>>>(c)
                .await?
                .is_some(),
            Connection::Etcd(c) => !c
                .range(etcdpb::RangeRequest {
                    key: key.to_vec(),
                    serializable: stale,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .kvs
                .is_empty(),
        })
    }
}
