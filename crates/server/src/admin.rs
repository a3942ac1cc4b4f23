//! The `Admin` gRPC service: reshaping regions at runtime (`raftkv region ...`). A request
//! goes to this store's replica of the region; when another store leads it, it is forwarded
//! once to that store's server (as the `Kv` service forwards).

use crate::config::ServerConfig;
use crate::service::{region_to_pb, store_error_pb};
use crate::store_loop::{Cmd, StoreHandle};
use api::pb;
use api::pb::error::Code;
use std::sync::Arc;
use store::{Reply, StoreError, StoreId};
use tokio::sync::oneshot;
use tonic::transport::Endpoint;

#[derive(Clone)]
pub struct AdminService {
    handle: StoreHandle,
    cfg: Arc<ServerConfig>,
}

fn refused(code: Code, message: impl Into<String>) -> pb::AdminResponse {
    pb::AdminResponse {
        error: Some(pb::Error {
            code: code as i32,
            message: message.into(),
            ..Default::default()
        }),
        regions: Vec::new(),
    }
}

fn from_store(e: StoreError) -> pb::AdminResponse {
    pb::AdminResponse {
        error: Some(store_error_pb(e)),
        regions: Vec::new(),
    }
}

impl AdminService {
    pub fn new(handle: StoreHandle, cfg: Arc<ServerConfig>) -> AdminService {
        AdminService { handle, cfg }
    }

    /// Waits for the store thread's answer, bounded by the request timeout.
    async fn answer<T>(
        &self,
        rx: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, pb::AdminResponse> {
        match tokio::time::timeout(self.cfg.request_timeout, rx).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(from_store(e)),
            Ok(Err(_)) => Err(refused(Code::Internal, "the store stopped")),
            Err(_) => Err(refused(
                Code::Timeout,
                "no answer in time; the change may still happen: check `raftkv status`",
            )),
        }
    }

    /// A connection to store `store`'s server, for a request this store cannot serve.
    fn client_of(
        &self,
        store: u64,
    ) -> Result<pb::admin_client::AdminClient<tonic::transport::Channel>, pb::AdminResponse> {
        let addr = self.handle.cluster.peer_addr(store).ok_or_else(|| {
            refused(
                Code::NotLeader,
                format!("leader store {store} has no known address"),
            )
        })?;
        let ep = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| refused(Code::Internal, e.to_string()))?
            .connect_timeout(std::time::Duration::from_secs(1))
            .timeout(self.cfg.request_timeout);
        Ok(pb::admin_client::AdminClient::new(ep.connect_lazy()))
    }

    fn leader_of(resp: &pb::AdminResponse) -> Option<u64> {
        resp.error
            .as_ref()
            .filter(|e| e.code == Code::NotLeader as i32 && e.leader_store_id != 0)
            .map(|e| e.leader_store_id)
    }

    /// Forwards a request this store could not serve once to the leader's server, if the
    /// refusal names one (and the request was not forwarded already); else the refusal.
    async fn forward<F, Fut>(
        &self,
        resp: pb::AdminResponse,
        forwarded: bool,
        call: F,
    ) -> pb::AdminResponse
    where
        F: FnOnce(pb::admin_client::AdminClient<tonic::transport::Channel>) -> Fut,
        Fut:
            std::future::Future<Output = Result<tonic::Response<pb::AdminResponse>, tonic::Status>>,
    {
        match Self::leader_of(&resp) {
            Some(leader) if !forwarded && leader != self.cfg.store_id => {
                let client = match self.client_of(leader) {
                    Ok(c) => c,
                    Err(r) => return r,
                };
                match call(client).await {
                    Ok(r) => r.into_inner(),
                    Err(s) => refused(
                        Code::NotLeader,
                        format!("forwarding to store {leader} failed: {}", s.message()),
                    ),
                }
            }
            _ => resp,
        }
    }

    pub async fn split_region(&self, req: pb::SplitRegionRequest) -> pb::AdminResponse {
        let key = req.split_key.clone();
        let Some(region) = self.handle.region_for_key(&key) else {
            return refused(
                Code::RegionNotFound,
                "no region on this store holds the key",
            );
        };
        if region.start_key == key {
            return refused(
                Code::InvalidArgument,
                format!(
                    "region {} already starts at {:?}: nothing to split",
                    region.id,
                    String::from_utf8_lossy(&key)
                ),
            );
        }
        let (tx, rx) = oneshot::channel();
        if let Err(e) = self.handle.send(Cmd::Split {
            region: region.id,
            epoch: region.epoch,
            key: key.clone(),
            reply: tx,
        }) {
            return from_store(e);
        }
        match self.answer(rx).await {
            Ok(Reply::Empty) => {
                let map = self.handle.regions.load();
                let halves = [map.get(region.id), map.region_for_key(&key)];
                pb::AdminResponse {
                    error: None,
                    regions: halves.into_iter().flatten().map(region_to_pb).collect(),
                }
            }
            Ok(other) => refused(
                Code::Internal,
                format!("unexpected answer to a split: {other:?}"),
            ),
            Err(resp) => {
                let fwd = pb::SplitRegionRequest {
                    forwarded: true,
                    ..req.clone()
                };
                self.forward(resp, req.forwarded, |mut c| async move {
                    c.split_region(fwd).await
                })
                .await
            }
        }
    }

    pub async fn change_replica(&self, req: pb::ChangeReplicaRequest) -> pb::AdminResponse {
        use pb::change_replica_request::Kind;
        let region_id = raft::GroupId(req.region_id);
        let Some(region) = self.handle.regions.load().get(region_id).cloned() else {
            return refused(
                Code::RegionNotFound,
                format!("region {region_id} is not on this store"),
            );
        };
        let store = StoreId(req.store_id);
        let change = match Kind::try_from(req.kind) {
            Ok(Kind::AddLearner) => store::ReplicaChange::AddLearner(store),
            Ok(Kind::Promote) => store::ReplicaChange::Promote(store),
            Ok(Kind::Remove) => store::ReplicaChange::Remove(store),
            Err(_) => {
                return refused(
                    Code::InvalidArgument,
                    format!("unknown replica change kind {}", req.kind),
                )
            }
        };
        if matches!(change, store::ReplicaChange::AddLearner(_))
            && self.handle.cluster.peer_addr(req.store_id).is_none()
        {
            return refused(
                Code::InvalidArgument,
                format!("store {store} is not in the cluster"),
            );
        }
        let (tx, rx) = oneshot::channel();
        if let Err(e) = self.handle.send(Cmd::ChangeReplica {
            region: region.id,
            epoch: region.epoch,
            change,
            reply: tx,
        }) {
            return from_store(e);
        }
        match self.answer(rx).await {
            Ok(_) => pb::AdminResponse {
                error: None,
                regions: self
                    .handle
                    .regions
                    .load()
                    .get(region_id)
                    .map(region_to_pb)
                    .into_iter()
                    .collect(),
            },
            Err(resp) => {
                let fwd = pb::ChangeReplicaRequest {
                    forwarded: true,
                    ..req
                };
                self.forward(resp, req.forwarded, |mut c| async move {
                    c.change_replica(fwd).await
                })
                .await
            }
        }
    }

    /// Merges the source region into the target (see `Store::propose_merge`); answered once
    /// the source is frozen on its leader, with both regions as they are then.
    pub async fn merge_region(&self, req: pb::MergeRegionRequest) -> pb::AdminResponse {
        let (source_id, target_id) = (
            raft::GroupId(req.source_region_id),
            raft::GroupId(req.target_region_id),
        );
        let Some(source) = self.handle.regions.load().get(source_id).cloned() else {
            return refused(
                Code::RegionNotFound,
                format!("region {source_id} is not on this store"),
            );
        };
        let (tx, rx) = oneshot::channel();
        if let Err(e) = self.handle.send(Cmd::Merge {
            source: source.id,
            epoch: source.epoch,
            target: target_id,
            reply: tx,
        }) {
            return from_store(e);
        }
        match self.answer(rx).await {
            Ok(_) => pb::AdminResponse::default(),
            Err(resp) => {
                let fwd = pb::MergeRegionRequest {
                    forwarded: true,
                    ..req
                };
                self.forward(resp, req.forwarded, |mut c| async move {
                    c.merge_region(fwd).await
                })
                .await
            }
        }
    }

    pub async fn transfer_leader(&self, req: pb::TransferLeaderRequest) -> pb::AdminResponse {
        let (tx, rx) = oneshot::channel();
        if let Err(e) = self.handle.send(Cmd::TransferLeader {
            region: raft::GroupId(req.region_id),
            to: StoreId(req.to_store),
            reply: tx,
        }) {
            return from_store(e);
        }
        match self.answer(rx).await {
            Ok(()) => pb::AdminResponse::default(),
            Err(resp) if Self::leader_of(&resp) == Some(req.to_store) => {
                pb::AdminResponse::default()
            }
            Err(resp) => {
                let fwd = pb::TransferLeaderRequest {
                    forwarded: true,
                    ..req
                };
                self.forward(resp, req.forwarded, |mut c| async move {
                    c.transfer_leader(fwd).await
                })
                .await
            }
        }
    }
}

/// The tonic face of [`AdminService`].
pub struct AdminGrpc(pub AdminService);

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminGrpc {
    async fn split_region(
        &self,
        req: tonic::Request<pb::SplitRegionRequest>,
    ) -> Result<tonic::Response<pb::AdminResponse>, tonic::Status> {
        Ok(tonic::Response::new(
            self.0.split_region(req.into_inner()).await,
        ))
    }

    async fn change_replica(
        &self,
        req: tonic::Request<pb::ChangeReplicaRequest>,
    ) -> Result<tonic::Response<pb::AdminResponse>, tonic::Status> {
        Ok(tonic::Response::new(
            self.0.change_replica(req.into_inner()).await,
        ))
    }

    async fn merge_region(
        &self,
        req: tonic::Request<pb::MergeRegionRequest>,
    ) -> Result<tonic::Response<pb::AdminResponse>, tonic::Status> {
        Ok(tonic::Response::new(
            self.0.merge_region(req.into_inner()).await,
        ))
    }

    async fn transfer_leader(
        &self,
        req: tonic::Request<pb::TransferLeaderRequest>,
    ) -> Result<tonic::Response<pb::AdminResponse>, tonic::Status> {
        Ok(tonic::Response::new(
            self.0.transfer_leader(req.into_inner()).await,
        ))
    }
}
