//! The client-facing `Kv` gRPC service.

use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::store_loop::{Cmd, StoreHandle};
use api::pb;
use api::pb::error::Code;
use bytes::Bytes;
use kv::{ApplyError, ClientId, Command, CommandError, PutOptions, Request, Response, Sequence};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use store::{Region, RegionEpoch, Reply, StoreError};
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint};

/// Most requests in one `BatchRequest` message.
pub const MAX_STREAM_BATCH: usize = 1024;
/// Most requests of one `Batch` stream in flight at once; past it the server stops reading
/// the stream (HTTP/2 flow control then holds the client back).
pub const MAX_STREAM_IN_FLIGHT: usize = 4096;
/// Answer messages queued towards one `Batch` stream's client.
const STREAM_RESPONSE_QUEUE: usize = 64;
/// A `BatchResponse` is closed once its answers reach this many bytes (a single larger answer
/// still travels, alone), far below the gRPC message limit.
const STREAM_MAX_BATCH_BYTES: usize = 4 << 20;

/// Roughly the encoded size of an answer: what dominates it (values and pairs).
fn response_bytes(r: &pb::KvResponse) -> usize {
    64 + r.value.len()
        + r.encoded_result.len()
        + r.pairs
            .iter()
            .map(|p| p.key.len() + p.value.len() + 4)
            .sum::<usize>()
        + r.error.as_ref().map_or(0, |e| e.message.len())
}

#[derive(Clone)]
pub struct KvService {
    pub(crate) handle: StoreHandle,
    pub(crate) cfg: Arc<ServerConfig>,
    /// The size limits of every command: the state machines' own (`kv::Limits::default()`,
    /// which every replica of a region must share and its snapshots carry), checked here
    /// before anything is proposed (`Limits::check`), so nothing the state machine would
    /// refuse for its size reaches the log. Before, this service allowed 10,000 keys in a
    /// batch and the state machine 1,024: a 2,000-pair BatchPut was replicated and then
    /// refused at apply on every replica.
    pub(crate) limits: kv::Limits,
    pub(crate) metrics: Arc<Metrics>,
    forward: Arc<Mutex<HashMap<u64, (String, KvClient)>>>,
    /// Region id → the store its leader was last said to be on, learned from this store's
    /// `NotLeader` answers: a write for such a region is forwarded there at once instead of
    /// first asking this store's thread (which would only answer `NotLeader` again). A wrong
    /// hint costs one refused forward, after which the request takes the usual path and the
    /// hint is dropped. Bounded by [`MAX_LEADER_HINTS`].
    leader_hints: Arc<Mutex<HashMap<u64, u64>>>,
    /// The address clients reach this server at, as its listener is bound (reported by
    /// `Status`).
    client_addr: String,
}

/// Most leader hints a service keeps (see `KvService::leader_hints`).
pub const MAX_LEADER_HINTS: usize = 100_000;

fn err(code: Code, message: impl Into<String>) -> pb::KvResponse {
    pb::KvResponse {
        error: Some(pb::Error {
            code: code as i32,
            message: message.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn region_to_pb(r: &Region) -> pb::Region {
    pb::Region {
        id: r.id.0,
        start_key: r.start_key.clone(),
        end_key: r.end_key.clone().unwrap_or_default(),
        has_end: r.end_key.is_some(),
        epoch: Some(pb::RegionEpoch {
            conf_version: r.epoch.conf_version,
            version: r.epoch.version,
        }),
        peers: r
            .peers
            .iter()
            .map(|p| pb::Peer {
                id: p.id.0,
                store_id: p.store.0,
                learner: p.learner,
            })
            .collect(),
    }
}

/// The inverse of [`region_to_pb`]; `None` when fields are missing or out of bounds.
pub fn region_from_pb(r: &pb::Region) -> Option<Region> {
    let e = r.epoch.as_ref()?;
    if r.peers.is_empty() || r.peers.len() as u64 > types::MAX_PEERS {
        return None;
    }
    Some(Region {
        id: raft::GroupId(r.id),
        start_key: r.start_key.clone(),
        end_key: r.has_end.then(|| r.end_key.clone()),
        epoch: RegionEpoch {
            conf_version: e.conf_version,
            version: e.version,
        },
        peers: r
            .peers
            .iter()
            .map(|p| store::PeerMeta {
                id: raft::NodeId(p.id),
                store: store::StoreId(p.store_id),
                learner: p.learner,
            })
            .collect(),
    })
}

type KvClient = pb::kv_client::KvClient<Channel>;

/// A refused request: the response to send (boxed, it is large).
type Refusal = Box<pb::KvResponse>;

fn refuse(code: Code, message: impl Into<String>) -> Refusal {
    Box::new(err(code, message))
}

fn store_error(e: StoreError) -> pb::KvResponse {
    pb::KvResponse {
        error: Some(store_error_pb(e)),
        ..Default::default()
    }
}

/// The wire form of a store's refusal (shared with the `Admin` service).
pub(crate) fn store_error_pb(e: StoreError) -> pb::Error {
    let code = match e {
        StoreError::NotLeader { .. } => Code::NotLeader,
        StoreError::EpochNotMatch { .. } | StoreError::KeyNotInRegion { .. } => Code::EpochNotMatch,
        StoreError::RegionNotFound(_) => Code::RegionNotFound,
        StoreError::Busy { .. } | StoreError::QueueFull { .. } | StoreError::Merging { .. } => {
            Code::Busy
        }
        StoreError::Dropped => Code::Timeout,
        StoreError::NoSpace { .. } => Code::NoSpace,
        _ => Code::Internal,
    };
    let mut error = pb::Error {
        code: code as i32,
        message: e.to_string(),
        ..Default::default()
    };
    match e {
        StoreError::NotLeader { leader, .. } => {
            error.leader_store_id = leader.map_or(0, |l| l.store.0)
        }
        StoreError::EpochNotMatch { current } => {
            error.current_regions = vec![region_to_pb(&current)]
        }
        _ => {}
    }
    error
}

fn command_error(e: &CommandError) -> pb::KvResponse {
    let code = match e {
        CommandError::KeyTooLarge { .. } => Code::KeyTooLarge,
        CommandError::ValueTooLarge { .. } => Code::ValueTooLarge,
        CommandError::OutOfRange { .. } => Code::EpochNotMatch,
        _ => Code::InvalidArgument,
    };
    err(code, e.to_string())
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn command_name(kind: i32) -> &'static str {
    match pb::command::Kind::try_from(kind) {
        Ok(pb::command::Kind::Get) => "get",
        Ok(pb::command::Kind::Put) => "put",
        Ok(pb::command::Kind::Delete) => "delete",
        Ok(pb::command::Kind::Append) => "append",
        Ok(pb::command::Kind::Cas) => "cas",
        Ok(pb::command::Kind::Scan) => "scan",
        Ok(pb::command::Kind::BatchGet) => "batch_get",
        Ok(pb::command::Kind::BatchPut) => "batch_put",
        Ok(pb::command::Kind::Encoded) => "encoded",
        Err(_) => "unknown",
    }
}

impl KvService {
    pub fn new(handle: StoreHandle, cfg: Arc<ServerConfig>, metrics: Arc<Metrics>) -> Self {
        KvService {
            handle,
            cfg,
            metrics,
            forward: Arc::new(Mutex::new(HashMap::new())),
            leader_hints: Arc::new(Mutex::new(HashMap::new())),
            limits: kv::Limits::default(),
            client_addr: String::new(),
        }
    }

    /// Sets the client address `Status` reports.
    pub fn with_client_addr(mut self, addr: String) -> Self {
        self.client_addr = addr;
        self
    }

    fn check_key(&self, key: &[u8]) -> Result<(), Refusal> {
        if key.len() > self.limits.max_key_bytes {
            return Err(refuse(
                Code::KeyTooLarge,
                format!(
                    "key of {} bytes exceeds the limit of {} bytes",
                    key.len(),
                    self.limits.max_key_bytes
                ),
            ));
        }
        Ok(())
    }

    fn check_value(&self, v: &[u8]) -> Result<(), Refusal> {
        if v.len() > self.limits.max_value_bytes {
            return Err(refuse(
                Code::ValueTooLarge,
                format!(
                    "value of {} bytes exceeds the limit of {} bytes",
                    v.len(),
                    self.limits.max_value_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Validates and converts a wire command; returns it with the key used for routing.
    fn convert(&self, c: &pb::Command) -> Result<(Command, Vec<u8>), Refusal> {
        use pb::command::Kind;
        let kind = Kind::try_from(c.kind).map_err(|_| {
            err(
                Code::InvalidArgument,
                format!("unknown command kind {}", c.kind),
            )
        })?;
        if kind == Kind::Encoded {
            return self.convert_encoded(&c.encoded);
        }
        let key = c.key.clone();
        let b = |v: &Vec<u8>| Bytes::copy_from_slice(v);
        match kind {
            Kind::Get | Kind::Delete | Kind::Put | Kind::Append | Kind::Cas | Kind::Scan => {
                self.check_key(&key)?
            }
            _ => {}
        }
        let cmd = match kind {
            Kind::Get => Command::Get { key: b(&key) },
            Kind::Put => {
                self.check_value(&c.value)?;
                Command::Put {
                    key: b(&key),
                    value: b(&c.value),
                    options: PutOptions::default(),
                }
            }
            Kind::Delete => Command::Delete { key: b(&key) },
            Kind::Append => {
                self.check_value(&c.value)?;
                Command::Append {
                    key: b(&key),
                    value: b(&c.value),
                }
            }
            Kind::Cas => {
                self.check_value(&c.value)?;
                Command::CompareAndSwap {
                    key: b(&key),
                    expected: (!c.expect_absent).then(|| b(&c.expected)),
                    new: b(&c.value),
                }
            }
            Kind::Scan => {
                let max = self.limits.max_scan_limit;
                if c.limit == 0 || c.limit > max {
                    return Err(refuse(
                        Code::InvalidArgument,
                        format!("scan limit must be in 1..={max}"),
                    ));
                }
                Command::Scan {
                    start: b(&key),
                    end: (!c.end_key.is_empty()).then(|| b(&c.end_key)),
                    limit: c.limit,
                }
            }
            Kind::BatchGet => {
                let max = self.limits.max_batch_keys;
                if c.keys.is_empty() || c.keys.len() > max {
                    return Err(refuse(
                        Code::InvalidArgument,
                        format!("a batch holds 1..={max} keys"),
                    ));
                }
                for k in &c.keys {
                    self.check_key(k)?;
                }
                Command::BatchGet {
                    keys: c.keys.iter().map(b).collect(),
                }
            }
            Kind::Encoded => unreachable!("handled above"),
            Kind::BatchPut => {
                let max = self.limits.max_batch_keys;
                if c.pairs.is_empty() || c.pairs.len() > max {
                    return Err(refuse(
                        Code::InvalidArgument,
                        format!("a batch holds 1..={max} pairs"),
                    ));
                }
                for p in &c.pairs {
                    self.check_key(&p.key)?;
                    self.check_value(&p.value)?;
                }
                Command::BatchPut {
                    pairs: c.pairs.iter().map(|p| (b(&p.key), b(&p.value))).collect(),
                }
            }
        };
        let route_key = match kind {
            Kind::BatchGet => c.keys[0].clone(),
            Kind::BatchPut => c.pairs[0].key.clone(),
            _ => key,
        };
        self.check_batch_in_one_region(c, kind, &route_key)?;
        Ok((cmd, route_key))
    }

    /// An `ENCODED` command: decoded with the state machine's own codec (which never panics
    /// and bounds every count by the input length), then held to the same limits as the typed
    /// kinds. `Count` has no key: it is routed by `header.region_id` (see `execute_inner`).
    fn convert_encoded(&self, encoded: &[u8]) -> Result<(Command, Vec<u8>), Refusal> {
        let cmd = Command::decode(encoded).map_err(|e| {
            refuse(
                Code::InvalidArgument,
                format!("malformed encoded command: {e}"),
            )
        })?;
        if let Command::Pipeline { commands } = &cmd {
            // Their own rules (scan limit, COUNT's region) are checked at the top level only.
            if commands
                .iter()
                .any(|c| matches!(c, Command::Scan { .. } | Command::Count))
            {
                return Err(refuse(
                    Code::InvalidArgument,
                    "SCAN and COUNT cannot be part of a pipeline",
                ));
            }
        }
        // The state machine's own size rules, checked here so that nothing it would refuse
        // for its size is proposed.
        self.limits.check(&cmd).map_err(|e| {
            let mut refusal = command_error(&e);
            if let Some(error) = refusal.error.as_mut() {
                error.message = format!("{e} (refused before proposing: nothing was applied)");
            }
            Box::new(refusal)
        })?;
        if let Command::Scan { limit: 0, .. } = &cmd {
            return Err(refuse(
                Code::InvalidArgument,
                format!("scan limit must be in 1..={}", self.limits.max_scan_limit),
            ));
        }
        let keys = cmd.keys();
        if keys.is_empty() && !matches!(cmd, Command::Count) {
            return Err(refuse(Code::InvalidArgument, "the command names no key"));
        }
        let route_key = keys.first().map(|k| k.to_vec()).unwrap_or_default();
        if let Some(region) = self.handle.region_for_key(&route_key) {
            if keys.iter().any(|k| !region.contains(k)) {
                return Err(refuse(
                    Code::InvalidArgument,
                    "the keys of a multi-key command span more than one region",
                ));
            }
        }
        drop(keys);
        Ok((cmd, route_key))
    }

    fn check_batch_in_one_region(
        &self,
        c: &pb::Command,
        kind: pb::command::Kind,
        route_key: &[u8],
    ) -> Result<(), Refusal> {
        use pb::command::Kind;
        // Multi-key commands must stay within one region: refuse rather than half-apply.
        let keys: Vec<&[u8]> = match kind {
            Kind::BatchGet => c.keys.iter().map(|k| k.as_slice()).collect(),
            Kind::BatchPut => c.pairs.iter().map(|p| p.key.as_slice()).collect(),
            _ => vec![],
        };
        if let Some(region) = self.handle.region_for_key(route_key) {
            if keys.iter().any(|k| !region.contains(k)) {
                return Err(refuse(
                    Code::InvalidArgument,
                    "the keys of a batch span more than one region; split the batch by region",
                ));
            }
        }
        Ok(())
    }

    pub async fn execute(&self, req: pb::KvRequest) -> pb::KvResponse {
        let t0 = Instant::now();
        let name = req
            .command
            .as_ref()
            .map_or("unknown", |c| command_name(c.kind));
        let resp = self.execute_inner(req).await;
        self.metrics.observe_request(name, t0.elapsed());
        resp
    }

    async fn execute_inner(&self, req: pb::KvRequest) -> pb::KvResponse {
        let header = req.header.unwrap_or_default();
        let Some(c) = req.command.as_ref() else {
            return err(Code::InvalidArgument, "request has no command");
        };
        let (command, mut key) = match self.convert(c) {
            Ok(x) => x,
            Err(e) => return *e,
        };
        let encoded = c.kind == pb::command::Kind::Encoded as i32;
        if matches!(command, Command::Count) && header.region_id == 0 {
            return err(
                Code::InvalidArgument,
                "COUNT is per region: set header.region_id",
            );
        }
        let region = if header.region_id != 0 {
            match self
                .handle
                .regions
                .load()
                .get(raft::GroupId(header.region_id))
            {
                Some(r) => {
                    let mut r = r.clone();
                    // The client's epoch is checked by the store.
                    if let Some(e) = &header.epoch {
                        r.epoch = RegionEpoch {
                            conf_version: e.conf_version,
                            version: e.version,
                        };
                    }
                    r
                }
                None if !header.forwarded => {
                    let id = header.region_id;
                    return self.forward_elsewhere(&key, id, req).await;
                }
                None => {
                    return err(
                        Code::RegionNotFound,
                        format!("region {} is not on this store", header.region_id),
                    )
                }
            }
        } else {
            match self.handle.region_for_key(&key) {
                Some(r) => r,
                None if !header.forwarded => return self.forward_elsewhere(&key, 0, req).await,
                None => {
                    return err(
                        Code::RegionNotFound,
                        "no region on this store holds the key",
                    )
                }
            }
        };
        if matches!(command, Command::Count) {
            // Keyless: route by the region's own first key, which it always contains.
            key = region.start_key.clone();
        }
        let read_only = command.is_read_only();
        // Writes only: a follower serves reads itself (ReadIndex), cheaper than a forward.
        if !header.forwarded && !read_only {
            if let Some(store) = self.leader_hint(region.id.0) {
                let answer = self.forward(store, req.clone()).await;
                match answer.error.as_ref().map(|e| e.code) {
                    // Not applied there (that store does not lead it, or is unreachable):
                    // forget the hint and ask this store as if there had been none.
                    Some(code)
                        if code == Code::NotLeader as i32
                            || code == Code::RegionNotFound as i32 =>
                    {
                        self.forget_leader_hint(region.id.0, store);
                    }
                    _ => return answer,
                }
            }
        }
        let (tx, rx) = oneshot::channel();
        let cmd = if read_only && header.stale_read {
            Cmd::StaleRead {
                region: region.id,
                epoch: region.epoch,
                key: key.clone(),
                command: command.clone(),
                reply: tx,
            }
        } else if read_only {
            Cmd::Read {
                region: region.id,
                epoch: region.epoch,
                key: key.clone(),
                command: command.clone(),
                reply: tx,
            }
        } else {
            if header.client_id == 0 || header.sequence == 0 {
                return err(
                    Code::InvalidArgument,
                    "writes need a session: set header.client_id and header.sequence (from 1)",
                );
            }
            Cmd::Propose {
                region: region.id,
                epoch: region.epoch,
                key: key.clone(),
                request: Request {
                    client_id: ClientId(header.client_id),
                    sequence: Sequence(header.sequence),
                    command: command.clone(),
                    proposed_at_ms: now_ms(),
                },
                reply: tx,
            }
        };
        if let Err(e) = self.handle.send(cmd) {
            return store_error(e);
        }
        let result = match tokio::time::timeout(self.cfg.request_timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => return err(Code::Internal, "the store stopped"),
            Err(_) => {
                return err(
                    Code::Timeout,
                    "no answer in time; the outcome is unknown, retry with the same sequence",
                )
            }
        };
        let mut resp = match result {
            Ok(Reply::Applied(outcome)) if encoded => match outcome.result {
                Ok(r) => encoded_response(Ok(r)),
                Err(ApplyError::Command(ce)) => encoded_response(Err(ce)),
                Err(e @ ApplyError::SessionStale { .. }) => err(Code::SessionStale, e.to_string()),
                Err(e) => err(Code::InvalidArgument, e.to_string()),
            },
            Ok(Reply::Read(r)) if encoded => encoded_response(r),
            Ok(Reply::Applied(outcome)) => match outcome.result {
                Ok(r) => response(&command, r),
                Err(ApplyError::Command(ce)) => command_error(&ce),
                Err(e @ ApplyError::SessionStale { .. }) => err(Code::SessionStale, e.to_string()),
                Err(e) => err(Code::InvalidArgument, e.to_string()),
            },
            Ok(Reply::Read(Ok(r))) => response(&command, r),
            Ok(Reply::Read(Err(ce))) => command_error(&ce),
            Ok(Reply::Empty) => err(Code::Internal, "proposal committed without a result"),
            Err(StoreError::NotLeader {
                leader: Some(l), ..
            }) if !header.forwarded && l.store.0 != self.cfg.store_id => {
                self.remember_leader_hint(region.id.0, l.store.0);
                return self.forward(l.store.0, req).await;
            }
            Err(e @ StoreError::EpochNotMatch { .. }) => {
                // After a split the key may be in the other half: name that region too.
                let mut r = store_error(e);
                if let (Some(error), Some(holder)) =
                    (r.error.as_mut(), self.handle.region_for_key(&key))
                {
                    if error.current_regions.iter().all(|c| c.id != holder.id.0) {
                        error.current_regions.push(region_to_pb(&holder));
                    }
                }
                r
            }
            Err(e) => store_error(e),
        };
        resp.region_id = region.id.0;
        resp.served_by_store = self.cfg.store_id;
        resp
    }

    /// A request for a region this store has no replica of: forwarded to a store that has
    /// one, as placement's latest configuration (in the cluster view) places it, and once
    /// more to the leader that store names. A store that joined, or a cluster that moved
    /// regions off this store, keeps serving every key through every server.
    async fn forward_elsewhere(
        &self,
        key: &[u8],
        region_id: u64,
        req: pb::KvRequest,
    ) -> pb::KvResponse {
        // A request naming its region (COUNT has no key) goes to that region's stores.
        let layout = if region_id != 0 {
            self.handle.cluster.region(region_id)
        } else {
            self.handle.cluster.region_for_key(key)
        };
        let Some(layout) = layout else {
            return err(
                Code::RegionNotFound,
                "no region on this store holds the key, and placement's layout is not known yet",
            );
        };
        let me = self.cfg.store_id;
        let mut tried = Vec::new();
        let mut next: Vec<u64> = layout
            .replicas
            .iter()
            .filter(|p| !p.learner && p.store != me)
            .map(|p| p.store)
            .collect();
        next.reverse();
        let mut last = err(
            Code::RegionNotFound,
            format!("region {} has no replica this store can reach", layout.id),
        );
        // At most one try per replica plus the leader they name.
        for _ in 0..=layout.replicas.len() {
            let Some(store) = next.pop() else { break };
            if tried.contains(&store) {
                continue;
            }
            tried.push(store);
            last = self.forward(store, req.clone()).await;
            match &last.error {
                None => return last,
                Some(e) if e.code == Code::NotLeader as i32 && e.leader_store_id != 0 => {
                    if e.leader_store_id != me && !tried.contains(&e.leader_store_id) {
                        next.push(e.leader_store_id);
                    }
                }
                Some(e) if e.code == Code::RegionNotFound as i32 => {}
                Some(_) => return last,
            }
        }
        last
    }

    fn leader_hint(&self, region: u64) -> Option<u64> {
        let hints = self.leader_hints.lock().unwrap_or_else(|e| e.into_inner());
        hints
            .get(&region)
            .copied()
            .filter(|&s| s != self.cfg.store_id)
    }

    fn remember_leader_hint(&self, region: u64, store: u64) {
        let mut hints = self.leader_hints.lock().unwrap_or_else(|e| e.into_inner());
        if hints.len() >= MAX_LEADER_HINTS && !hints.contains_key(&region) {
            // Regions come and go; rather than track which, start over (a hint is only an
            // optimisation).
            hints.clear();
        }
        hints.insert(region, store);
    }

    fn forget_leader_hint(&self, region: u64, store: u64) {
        let mut hints = self.leader_hints.lock().unwrap_or_else(|e| e.into_inner());
        if hints.get(&region) == Some(&store) {
            hints.remove(&region);
        }
    }

    /// Forwards a request once to the leader's store (any server accepts any request).
    async fn forward(&self, store: u64, mut req: pb::KvRequest) -> pb::KvResponse {
        let Some(addr) = self.handle.cluster.peer_addr(store) else {
            return err(
                Code::NotLeader,
                format!("leader store {store} has no known address"),
            );
        };
        let client = {
            let mut m = self.forward.lock().unwrap_or_else(|e| e.into_inner());
            match m.get(&store).filter(|(a, _)| *a == addr) {
                Some((_, c)) => c.clone(),
                None => {
                    let ep = match Endpoint::from_shared(format!("http://{addr}")) {
                        Ok(ep) => ep
                            .connect_timeout(std::time::Duration::from_secs(1))
                            .tcp_nodelay(true),
                        Err(e) => return err(Code::Internal, e.to_string()),
                    };
                    let c = pb::kv_client::KvClient::new(ep.connect_lazy())
                        .max_decoding_message_size(crate::run::MAX_GRPC_MESSAGE_BYTES)
                        .max_encoding_message_size(crate::run::MAX_GRPC_MESSAGE_BYTES);
                    // Keyed by store, with the address it was made for: a store that moved
                    // (placement gave it a new address) gets a new connection.
                    m.insert(store, (addr.clone(), c.clone()));
                    c
                }
            }
        };
        self.metrics
            .forwarded
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut header = req.header.take().unwrap_or_default();
        header.forwarded = true;
        req.header = Some(header);
        let mut client = client;
        match tokio::time::timeout(self.cfg.request_timeout, client.execute(req)).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => {
                let mut r = err(
                    Code::NotLeader,
                    format!("forwarding to store {store} failed: {}", status.message()),
                );
                if let Some(e) = r.error.as_mut() {
                    e.leader_store_id = store;
                }
                r
            }
            Err(_) => err(
                Code::Timeout,
                format!("store {store} did not answer a forwarded request in time"),
            ),
        }
    }

    pub async fn status(&self) -> pb::StatusResponse {
        let (tx, rx) = oneshot::channel();
        let regions = match self.handle.send(Cmd::Status(tx)) {
            Ok(()) => rx.await.unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        let data_dir = self.cfg.data_dir.clone();
        let disk = tokio::task::spawn_blocking(move || crate::disk::usage(&data_dir))
            .await
            .unwrap_or_default();
        pb::StatusResponse {
            store_id: self.cfg.store_id,
            client_addr: self.client_addr.clone(),
            peer_addr: self
                .cfg
                .peer_addr_of(self.cfg.store_id)
                .unwrap_or_default()
                .to_string(),
            stores: self
                .cfg
                .initial_cluster
                .iter()
                .map(|(id, addr)| pb::StoreAddress {
                    id: *id,
                    peer_addr: addr.clone(),
                })
                .collect(),
            disk: Some(pb::DiskUsage {
                log_bytes: disk.log_bytes,
                log_segments: disk.log_segments,
                snapshot_bytes: disk.snapshot_bytes,
                snapshot_files: disk.snapshot_files,
                other_bytes: disk.other_bytes,
            }),
            regions: regions
                .into_iter()
                .filter(|s| !s.region.is_placement())
                .map(|s| pb::RegionStatus {
                    region: Some(region_to_pb(&s.region)),
                    role: format!("{:?}", s.role),
                    leader_store_id: s.leader.map_or(0, |l| l.0),
                    term: s.term.0,
                    commit: s.commit.0,
                    applied: s.applied.0,
                    approximate_keys: s.approximate.keys,
                    approximate_bytes: s.approximate.bytes,
                })
                .collect(),
        }
    }
}

/// The answer to an `ENCODED` command: its whole result in the state machine's encoding, so
/// every response variant and command error survives forwarding. A key outside the region is
/// a routing error, not a result, and keeps its typed code so clients re-route.
fn encoded_response(result: Result<Response, CommandError>) -> pb::KvResponse {
    match result {
        Err(ce @ CommandError::OutOfRange { .. }) => command_error(&ce),
        result => pb::KvResponse {
            encoded_result: kv::encode_command_result(&result).to_vec(),
            ..Default::default()
        },
    }
}

fn response(command: &Command, r: Response) -> pb::KvResponse {
    let mut out = pb::KvResponse::default();
    match r {
        Response::Done => {}
        Response::Value(v) => {
            out.found = v.is_some();
            out.value = v.map(|b| b.to_vec()).unwrap_or_default();
        }
        Response::Values(vs) => {
            if let Command::BatchGet { keys } = command {
                out.pairs = keys
                    .iter()
                    .zip(vs)
                    .filter_map(|(k, v)| {
                        v.map(|v| pb::KeyValue {
                            key: k.to_vec(),
                            value: v.to_vec(),
                        })
                    })
                    .collect();
            }
        }
        Response::Scan { pairs, more } => {
            out.pairs = pairs
                .into_iter()
                .map(|(k, v)| pb::KeyValue {
                    key: k.to_vec(),
                    value: v.to_vec(),
                })
                .collect();
            out.more = more;
        }
        Response::Deleted(b) => out.existed = b,
        Response::Length(n) => out.length = n,
        Response::Integer(i) => out.value = i.to_string().into_bytes(),
        Response::Cas { swapped, previous } => {
            out.swapped = swapped;
            out.found = previous.is_some();
            out.value = previous.map(|b| b.to_vec()).unwrap_or_default();
        }
        Response::Put { written, previous } => {
            out.swapped = written;
            out.found = previous.is_some();
            out.value = previous.map(|b| b.to_vec()).unwrap_or_default();
        }
        Response::Written(b) => out.swapped = b,
        // Only ENCODED commands (pipelines, transactions, hashes, expiry) yield these, and
        // ENCODED answers go through `encoded_response`; no typed kind can ask for one.
        Response::Pipeline(_)
        | Response::Pairs(_)
        | Response::HScan { .. }
        | Response::Keys { .. }
        | Response::KeyInfo { .. }
        | Response::Exec(_) => {}
    }
    out
}

/// The tonic service wrapper.
pub struct KvGrpc(pub KvService);

/// One request of a `Batch` stream, answered with its id.
async fn run_tagged(svc: KvService, id: u64, req: pb::KvRequest) -> (u64, pb::KvResponse) {
    (id, svc.execute(req).await)
}

/// Serves one `Batch` stream: every request runs concurrently inside this one task (no task
/// per request), and whatever answers are ready go back together in one message.
async fn serve_batch_stream(
    svc: KvService,
    mut inbound: tonic::Streaming<pb::BatchRequest>,
    out: tokio::sync::mpsc::Sender<Result<pb::BatchResponse, tonic::Status>>,
) {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    use futures_util::FutureExt;
    let mut in_flight = FuturesUnordered::new();
    let mut input_open = true;
    loop {
        tokio::select! {
            biased;
            Some((id, resp)) = in_flight.next(), if !in_flight.is_empty() => {
                let mut bytes = response_bytes(&resp);
                let mut batch = pb::BatchResponse { ids: vec![id], responses: vec![resp] };
                while batch.ids.len() < MAX_STREAM_BATCH && bytes < STREAM_MAX_BATCH_BYTES {
                    match in_flight.next().now_or_never() {
                        Some(Some((id, resp))) => {
                            bytes += response_bytes(&resp);
                            batch.ids.push(id);
                            batch.responses.push(resp);
                        }
                        _ => break,
                    }
                }
                if out.send(Ok(batch)).await.is_err() {
                    return; // The client went away.
                }
            }
            msg = inbound.message(), if input_open && in_flight.len() < MAX_STREAM_IN_FLIGHT => {
                match msg {
                    Ok(Some(b)) => {
                        if b.ids.len() != b.requests.len() || b.ids.len() > MAX_STREAM_BATCH {
                            let _ = out
                                .send(Err(tonic::Status::invalid_argument(format!(
                                    "a BatchRequest needs as many ids as requests, at most {MAX_STREAM_BATCH} (got {} ids, {} requests)",
                                    b.ids.len(),
                                    b.requests.len()
                                ))))
                                .await;
                            return;
                        }
                        for (id, req) in b.ids.into_iter().zip(b.requests) {
                            in_flight.push(run_tagged(svc.clone(), id, req));
                        }
                    }
                    Ok(None) => input_open = false,
                    Err(_) => return, // Broken stream: the client reconnects.
                }
            }
            else => return, // Input closed and everything answered.
        }
    }
}

#[tonic::async_trait]
impl pb::kv_server::Kv for KvGrpc {
    type BatchStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::BatchResponse, tonic::Status>>;

    async fn batch(
        &self,
        request: tonic::Request<tonic::Streaming<pb::BatchRequest>>,
    ) -> Result<tonic::Response<Self::BatchStream>, tonic::Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_RESPONSE_QUEUE);
        tokio::spawn(serve_batch_stream(self.0.clone(), request.into_inner(), tx));
        Ok(tonic::Response::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
    }

    async fn execute(
        &self,
        request: tonic::Request<pb::KvRequest>,
    ) -> Result<tonic::Response<pb::KvResponse>, tonic::Status> {
        Ok(tonic::Response::new(
            self.0.execute(request.into_inner()).await,
        ))
    }

    async fn status(
        &self,
        _request: tonic::Request<pb::StatusRequest>,
    ) -> Result<tonic::Response<pb::StatusResponse>, tonic::Status> {
        Ok(tonic::Response::new(self.0.status().await))
    }
}
