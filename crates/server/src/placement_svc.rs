//! The `Placement` gRPC service: the placement group's verbs, queries and heartbeats, on
//! any server. A call runs on this store's placement replica when it leads the group, and
//! is otherwise forwarded once to the leader (its hint, then the group's replicas, then
//! every store known; at most [`MAX_FORWARD_TRIES`]).
//!
//! The leader also keeps the live view ([`placement::LiveAnswer`]): every store's and
//! region leader's latest heartbeat, in memory. A heartbeat's region reports go into the
//! log only when they are newer than the configuration (`ReportRegion`); each is answered
//! with the next replica change toward the region's target ([`placement::next_step`]),
//! decided for the reported epoch, so a change decided twice (a new leader, a retried
//! heartbeat) is refused by the region the second time instead of done twice.

use crate::config::ServerConfig;
use crate::service::store_error_pb;
use crate::store_loop::{Cmd, PlacementOp, StoreHandle};
use api::pb;
use api::pb::error::Code;
use placement::scheduler::{Action, Decision, Scheduler, SplitReason};
use placement::{
    decode_answer, encode_command, Command, Config, LiveAnswer, LiveRegion, LiveStore, Operator,
    RegionLayout, StoreAddrs,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use store::{Reply, StoreError};
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint};

/// Most stores one call is forwarded to before it is refused.
pub const MAX_FORWARD_TRIES: usize = 8;
/// Most region reports in one heartbeat (a store leading more reports the rest next time).
pub const MAX_HEARTBEAT_REGIONS: usize = 4096;

type Client = pb::placement_client::PlacementClient<Channel>;

/// The scheduler of this store's placement leadership (see [`placement::scheduler`]).
struct Sched {
    scheduler: Scheduler,
    /// When its last round ran (`None`: never).
    last_round: Option<Instant>,
    /// Split, merge and leader-transfer decisions waiting for their region's leader to
    /// heartbeat (bounded by the regions of the configuration: one per region).
    pending: BTreeMap<u64, Decision>,
}

/// The leader's memory of heartbeats (bounded by the stores and regions the configuration
/// names: entries for others are dropped at each heartbeat).
struct Live {
    /// When this view started: the server's start, or the moment it led placement again
    /// after a gap (a store never heard from since counts as silent since then).
    since: Instant,
    /// When this server last handled a heartbeat as placement's leader.
    last_local: Option<Instant>,
    stores: BTreeMap<u64, (Instant, pb::StoreStats)>,
    regions: BTreeMap<u64, LiveRegion>,
}

#[derive(Clone)]
pub struct PlacementService {
    handle: StoreHandle,
    cfg: Arc<ServerConfig>,
    live: Arc<Mutex<Live>>,
    sched: Arc<Mutex<Sched>>,
    /// Connections to other stores' servers, by store and address (a store that moved gets
    /// a new one).
    clients: Arc<Mutex<HashMap<(u64, String), Client>>>,
}

fn refused(code: Code, message: impl Into<String>) -> pb::Error {
    pb::Error {
        code: code as i32,
        message: message.into(),
        ..Default::default()
    }
}

/// Whether an error means "ask another store" (this one does not lead placement).
fn elsewhere(e: &StoreError) -> Option<Option<u64>> {
    match e {
        StoreError::NotLeader { leader, .. } => Some(leader.map(|l| l.store.0)),
        StoreError::RegionNotFound(_) => Some(None),
        _ => None,
    }
}

impl PlacementService {
    pub fn new(handle: StoreHandle, cfg: Arc<ServerConfig>) -> PlacementService {
        PlacementService {
            handle,
            live: Arc::new(Mutex::new(Live {
                since: Instant::now(),
                last_local: None,
                stores: BTreeMap::new(),
                regions: BTreeMap::new(),
            })),
            sched: Arc::new(Mutex::new(Sched {
                scheduler: Scheduler::new(
                    cfg.scheduling
                        .schedule_config(cfg.replicas as usize, cfg.placement_heartbeat),
                ),
                last_round: None,
                pending: BTreeMap::new(),
            })),
            clients: Arc::new(Mutex::new(HashMap::new())),
            cfg,
        }
    }

    /// Milliseconds since this service started: the scheduler's clock.
    fn now_ms(&self) -> u64 {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        u64::try_from(live.since.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Runs `op` on this store's placement replica.
    async fn local(&self, op: PlacementOp) -> Result<kv::Response, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.handle.send(Cmd::Placement { op, reply: tx })?;
        match tokio::time::timeout(self.cfg.request_timeout, rx).await {
            Ok(Ok(Ok(Reply::Applied(o)))) => o
                .result
                .map_err(|e| StoreError::Proposal(format!("placement entry refused: {e}"))),
            Ok(Ok(Ok(Reply::Read(r)))) => {
                r.map_err(|e| StoreError::Proposal(format!("placement read refused: {e}")))
            }
            Ok(Ok(Ok(Reply::Empty))) => Err(StoreError::Proposal("no placement answer".into())),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(StoreError::Stopped),
            Err(_) => Err(StoreError::Dropped),
        }
    }

    fn client(&self, store: u64) -> Option<Client> {
        let addr = self.handle.cluster.peer_addr(store)?;
        let mut m = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = m.get(&(store, addr.clone())) {
            return Some(c.clone());
        }
        // One connection per store: an old address's goes.
        m.retain(|(s, _), _| *s != store);
        let ep = Endpoint::from_shared(format!("http://{addr}"))
            .ok()?
            .connect_timeout(std::time::Duration::from_secs(1))
            .timeout(self.cfg.request_timeout);
        let c = Client::new(ep.connect_lazy())
            .max_decoding_message_size(crate::run::MAX_GRPC_MESSAGE_BYTES);
        m.insert((store, addr), c.clone());
        Some(c)
    }

    /// The stores to forward to: `hint` first, then the view's candidates; never this one.
    fn forward_targets(&self, hint: Option<u64>) -> Vec<u64> {
        let me = self.cfg.store_id;
        let mut out: Vec<u64> = hint.into_iter().collect();
        for s in self.handle.cluster.placement_candidates() {
            if !out.contains(&s) {
                out.push(s);
            }
        }
        out.retain(|s| *s != me);
        out.truncate(MAX_FORWARD_TRIES);
        out
    }

    /// Tries `send` on the stores of [`Self::forward_targets`] in turn, and on a leader one
    /// of them names (once each, at most [`MAX_FORWARD_TRIES`]); the first answer without
    /// an error.
    async fn forward<R, F, Fut>(&self, hint: Option<u64>, send: F) -> Option<R>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Option<Result<R, Option<u64>>>>,
    {
        let mut queue = self.forward_targets(hint);
        queue.reverse();
        let mut tried = Vec::new();
        while let Some(s) = queue.pop() {
            if tried.len() >= MAX_FORWARD_TRIES {
                break;
            }
            if tried.contains(&s) || s == self.cfg.store_id {
                continue;
            }
            tried.push(s);
            let Some(c) = self.client(s) else { continue };
            match send(c).await {
                Some(Ok(r)) => return Some(r),
                Some(Err(Some(leader))) if !tried.contains(&leader) => queue.push(leader),
                _ => {}
            }
        }
        None
    }

    /// Configuration `n` (`None`: the latest) with the live view, as JSON.
    pub async fn query(&self, req: pb::PlacementQueryRequest) -> pb::PlacementResponse {
        let n = u64::try_from(req.config).ok();
        match self.local(PlacementOp::Query(n)).await {
            Ok(resp) => match decode_answer(&resp) {
                Ok(answer) => {
                    let live = self.live_answer(answer);
                    pb::PlacementResponse {
                        leader_store_id: self.cfg.store_id,
                        json: serde_json::to_vec(&live).expect("serializing to memory"),
                        ..Default::default()
                    }
                }
                Err(e) => pb::PlacementResponse {
                    error: Some(refused(Code::InvalidArgument, e.to_string())),
                    leader_store_id: self.cfg.store_id,
                    ..Default::default()
                },
            },
            Err(e) => match elsewhere(&e) {
                Some(hint) if !req.forwarded => {
                    let fwd = pb::PlacementQueryRequest {
                        forwarded: true,
                        ..req
                    };
                    self.forward(hint, |mut c| async move {
                        let r = c.query(fwd).await.ok()?.into_inner();
                        Some(hinted(
                            r.error.as_ref().map(|e| (e.code, e.leader_store_id)),
                            r,
                        ))
                    })
                    .await
                    .unwrap_or_else(no_leader)
                }
                _ => pb::PlacementResponse {
                    error: Some(store_error_pb(e)),
                    ..Default::default()
                },
            },
        }
    }

    /// A verb (JSON of `placement::Command`); the answer is the JSON of its result.
    pub async fn call(&self, req: pb::PlacementCallRequest) -> pb::PlacementResponse {
        let cmd: Command = match serde_json::from_slice(&req.command_json) {
            // Reports and address updates come from heartbeats only: a client cannot make
            // placement believe a layout.
            Ok(c @ (Command::Join { .. } | Command::Drain { .. } | Command::Move { .. })) => c,
            Ok(other) => {
                return pb::PlacementResponse {
                    error: Some(refused(
                        Code::InvalidArgument,
                        format!("{other:?} is not a verb clients may call"),
                    )),
                    ..Default::default()
                }
            }
            Err(e) => {
                return pb::PlacementResponse {
                    error: Some(refused(
                        Code::InvalidArgument,
                        format!("not a placement command: {e}"),
                    )),
                    ..Default::default()
                }
            }
        };
        match self.propose(&cmd).await {
            Ok(json) => {
                if let Command::Move { region, .. } = &cmd {
                    // A region moved by hand is left alone by the scheduler for a while.
                    let now = self.now_ms();
                    let mut sched = self.sched.lock().unwrap_or_else(|e| e.into_inner());
                    sched.scheduler.hand_changed(*region, now);
                }
                pb::PlacementResponse {
                    leader_store_id: self.cfg.store_id,
                    json,
                    ..Default::default()
                }
            }
            Err(e) => match elsewhere(&e) {
                Some(hint) if !req.forwarded => {
                    let fwd = pb::PlacementCallRequest {
                        forwarded: true,
                        ..req.clone()
                    };
                    self.forward(hint, |mut c| {
                        let fwd = fwd.clone();
                        async move {
                            let r = c.call(fwd).await.ok()?.into_inner();
                            Some(hinted(
                                r.error.as_ref().map(|e| (e.code, e.leader_store_id)),
                                r,
                            ))
                        }
                    })
                    .await
                    .unwrap_or_else(no_leader)
                }
                _ => pb::PlacementResponse {
                    error: Some(store_error_pb(e)),
                    ..Default::default()
                },
            },
        }
    }

    /// Proposes a verb here; its result's JSON.
    async fn propose(&self, cmd: &Command) -> Result<Vec<u8>, StoreError> {
        let data = bytes::Bytes::from(encode_command(cmd));
        match self.local(PlacementOp::Propose(data)).await? {
            kv::Response::Value(Some(v)) => Ok(v.to_vec()),
            other => Err(StoreError::Proposal(format!(
                "unexpected placement answer {other:?}"
            ))),
        }
    }

    /// A store's heartbeat: on the leader, records it, writes newer region descriptors to
    /// the log, and answers each region with its next replica change.
    pub async fn heartbeat(&self, req: pb::HeartbeatRequest) -> pb::HeartbeatResponse {
        let answer = match self.local(PlacementOp::Query(None)).await {
            Ok(resp) => match decode_answer(&resp) {
                Ok(a) => a,
                Err(e) => {
                    return pb::HeartbeatResponse {
                        error: Some(refused(Code::Internal, e.to_string())),
                        ..Default::default()
                    }
                }
            },
            Err(e) => {
                return match elsewhere(&e) {
                    Some(hint) if !req.forwarded => {
                        let fwd = pb::HeartbeatRequest {
                            forwarded: true,
                            ..req.clone()
                        };
                        self.forward(hint, |mut c| {
                            let fwd = fwd.clone();
                            async move {
                                let r = c.heartbeat(fwd).await.ok()?.into_inner();
                                Some(hinted(
                                    r.error.as_ref().map(|e| (e.code, e.leader_store_id)),
                                    r,
                                ))
                            }
                        })
                        .await
                        .unwrap_or_else(|| pb::HeartbeatResponse {
                            error: no_leader().error,
                            ..Default::default()
                        })
                    }
                    _ => pb::HeartbeatResponse {
                        error: Some(store_error_pb(e)),
                        ..Default::default()
                    },
                }
            }
        };
        let config = &answer.config;
        self.renew_view_after_a_gap();
        let Some(st) = req.store.clone() else {
            return pb::HeartbeatResponse {
                error: Some(refused(
                    Code::InvalidArgument,
                    "a heartbeat names its store",
                )),
                ..Default::default()
            };
        };
        if st.cluster_id != answer.cluster_id {
            return pb::HeartbeatResponse {
                error: Some(refused(
                    Code::InvalidArgument,
                    format!(
                        "store {} belongs to cluster {}, this is cluster {}",
                        st.store_id, st.cluster_id, answer.cluster_id
                    ),
                )),
                ..Default::default()
            };
        }
        // A store that restarted on new addresses, labels or capacity (or reports them for
        // the first time: bootstrap stores) updates them through the log. Only a difference
        // costs an entry: capacity is the filesystem's size, which does not drift.
        if let Some(meta) = config.stores.get(&st.store_id) {
            let reported = StoreAddrs {
                peer: st.peer_addr.clone(),
                client: st.client_addr.clone(),
                resp: st.resp_addr.clone(),
            };
            // A wildcard address is reported empty: the one held stays.
            let addrs = if reported.peer.is_empty() || reported.client.is_empty() {
                meta.addrs.clone()
            } else {
                reported
            };
            let labels: BTreeMap<String, String> = st
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            // 0: the store could not tell (statvfs failed); the capacity held stays.
            let capacity = if st.capacity_bytes == 0 {
                meta.capacity
            } else {
                st.capacity_bytes
            };
            let changed = meta.addrs != addrs || meta.labels != labels || meta.capacity != capacity;
            // Placement refuses a store without both addresses; proposing that again at
            // every heartbeat would only fill the log.
            if changed && !addrs.peer.is_empty() && !addrs.client.is_empty() {
                let cmd = Command::UpdateStore {
                    store: st.store_id,
                    addrs,
                    labels,
                    capacity,
                };
                if let Err(e) = self.propose(&cmd).await {
                    tracing::debug!("updating store {}'s record: {e}", st.store_id);
                }
            }
        }
        let mut operators = Vec::new();
        for rep in req.regions.iter().take(MAX_HEARTBEAT_REGIONS) {
            let Some(region) = rep.region.as_ref().and_then(crate::service::region_from_pb) else {
                continue;
            };
            let layout = RegionLayout::from_region(&region);
            let Some(plan) = placement::plan_report(config, &layout, st.store_id) else {
                continue; // older than placement's: ignored, no operator
            };
            if plan.record {
                if let Err(e) = self
                    .propose(&Command::ReportRegion {
                        region: layout.clone(),
                    })
                    .await
                {
                    tracing::debug!("reporting region {}: {e}", layout.id);
                    continue;
                }
            }
            {
                let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
                live.regions.insert(
                    layout.id,
                    LiveRegion {
                        id: layout.id,
                        leader_store: st.store_id,
                        approximate_keys: rep.approximate_keys,
                        approximate_bytes: rep.approximate_bytes,
                        reads_per_sec: rep.reads_per_sec,
                        writes_per_sec: rep.writes_per_sec,
                    },
                );
            }
            if let Some(op) = plan.operator {
                let (kind, store) = match op {
                    Operator::AddLearner { store } => {
                        (pb::region_operator::Kind::AddLearner, store)
                    }
                    Operator::Promote { store } => (pb::region_operator::Kind::Promote, store),
                    Operator::Remove { store } => (pb::region_operator::Kind::Remove, store),
                    Operator::TransferLeader { store } => {
                        (pb::region_operator::Kind::TransferLeader, store)
                    }
                };
                operators.push(pb::RegionOperator {
                    region_id: layout.id,
                    kind: kind as i32,
                    store_id: store,
                    epoch: Some(pb::RegionEpoch {
                        conf_version: layout.conf_version,
                        version: layout.version,
                    }),
                    merge_into: 0,
                });
            }
        }
        let store_id = st.store_id;
        {
            let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
            live.stores.insert(st.store_id, (Instant::now(), st));
            live.stores.retain(|id, _| config.stores.contains_key(id));
            live.regions.retain(|id, _| config.regions.contains_key(id));
        }
        self.schedule(config, answer.replicas, &req, &mut operators)
            .await;
        // Replicas this store holds that were removed while it was away: it cannot learn
        // of that from the region (it is no longer sent anything), so placement tells it.
        let stale_replicas = req
            .replicas
            .iter()
            .take(MAX_HEARTBEAT_REGIONS)
            .filter_map(|rep| {
                let held = config.regions.get(&rep.region_id)?;
                (held.conf_version > rep.conf_version && !held.stores().contains(&store_id))
                    .then(|| crate::service::region_to_pb(&held.to_region()))
            })
            .collect();
        pb::HeartbeatResponse {
            error: None,
            leader_store_id: self.cfg.store_id,
            config: config.number,
            stale_replicas,
            operators,
            stores: config
                .stores
                .values()
                .map(|s| pb::StoreStats {
                    store_id: s.id,
                    peer_addr: s.addrs.peer.clone(),
                    client_addr: s.addrs.client.clone(),
                    resp_addr: s.addrs.resp.clone(),
                    ..Default::default()
                })
                .collect(),
        }
    }

    /// Called for each heartbeat handled here as placement's leader. At the first, or after a
    /// gap of more
    /// than [`LEADERSHIP_GAP_BEATS`] intervals this server did not lead placement meanwhile:
    /// its heartbeat times are from its earlier leadership and would make every store look
    /// Down (the scheduler would then "repair" healthy stores), and its scheduler's
    /// operators may have been overtaken by another leader's. Both start afresh.
    fn renew_view_after_a_gap(&self) {
        let gap = self.cfg.placement_heartbeat * LEADERSHIP_GAP_BEATS;
        let now = Instant::now();
        let renewed = {
            let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
            // The first heartbeat led here starts the view too: before it this server heard
            // from nobody, and a store would look silent since the server started.
            let renew = live.last_local.is_none_or(|t| now.duration_since(t) > gap);
            if renew {
                live.since = now;
                live.stores.clear();
                live.regions.clear();
            }
            live.last_local = Some(now);
            renew
        };
        if renewed {
            let mut sched = self.sched.lock().unwrap_or_else(|e| e.into_inner());
            sched.scheduler.restart();
            sched.pending.clear();
            sched.last_round = None;
        }
    }

    /// The scheduler's part of a heartbeat: the failures it reports, a round
    /// when one is due (targets proposed at once; splits, merges and transfers kept for
    /// their region's leader), and the kept decisions for the regions this heartbeat
    /// reports, if still for the reported epoch, added to `operators`.
    async fn schedule(
        &self,
        config: &Config,
        replicas: u64,
        req: &pb::HeartbeatRequest,
        operators: &mut Vec<pb::RegionOperator>,
    ) {
        let now = self.now_ms();
        let mut targets = Vec::new();
        let mut sticky = Vec::new();
        {
            let (stores, regions, view_age_ms) = self.live_view(config);
            let mut sched = self.sched.lock().unwrap_or_else(|e| e.into_inner());
            // Placement's recorded replica count, not this store's `--replicas`: they differ
            // on a cluster bootstrapped on fewer stores, or a store started with another.
            let replicas = replicas as usize;
            if sched.scheduler.config().replicas != replicas {
                let mut c = sched.scheduler.config().clone();
                c.replicas = replicas;
                sched.scheduler.set_config(c);
            }
            for f in req.failed.iter().take(MAX_OPERATOR_FAILURES) {
                sched.scheduler.failed(f.region_id, f.message.clone(), now);
                sched.pending.remove(&f.region_id);
            }
            let every = self.cfg.placement_heartbeat;
            let due = sched.last_round.is_none_or(|t| t.elapsed() >= every);
            if due {
                sched.last_round = Some(Instant::now());
                let decisions = sched
                    .scheduler
                    .round(config, &stores, &regions, now, view_age_ms);
                for d in decisions {
                    match &d.action {
                        Action::Target { stores } => targets.push((d.region, stores.clone())),
                        _ => {
                            sched.pending.insert(d.region, d);
                        }
                    }
                }
                sched
                    .pending
                    .retain(|id, _| config.regions.contains_key(id));
                // Splits by hand it saw: sticky in the replicated configuration, so no
                // placement leader merges them away.
                sticky = sched.scheduler.sticky_to_record();
            }
            for rep in &req.regions {
                let Some(r) = rep.region.as_ref() else {
                    continue;
                };
                let Some(d) = sched.pending.remove(&r.id) else {
                    continue;
                };
                let epoch = r.epoch.unwrap_or_default();
                if (epoch.conf_version, epoch.version) != (d.conf_version, d.version) {
                    // Decided for an epoch the region left: the round that follows decides
                    // again from what it is now.
                    continue;
                }
                if let Some(op) = operator_pb(&d) {
                    operators.push(op);
                }
            }
        }
        if !sticky.is_empty() {
            if let Err(e) = self.propose(&Command::Stick { keys: sticky }).await {
                // Proposed again after the next round: the scheduler keeps them until the
                // configuration has them.
                tracing::debug!("scheduler: recording sticky boundaries: {e}");
            }
        }
        for (region, stores) in targets {
            if let Err(e) = self.propose(&Command::Move { region, stores }).await {
                tracing::debug!("scheduler: moving region {region}: {e}");
                let mut sched = self.sched.lock().unwrap_or_else(|e| e.into_inner());
                sched
                    .scheduler
                    .failed(region, format!("placement refused: {e}"), now);
            }
        }
    }

    /// The live stores and regions for `config`, and how long this view has been kept.
    fn live_view(&self, config: &Config) -> (Vec<LiveStore>, Vec<LiveRegion>, u64) {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let down_after = self.cfg.store_down_after;
        let stores = config
            .stores
            .keys()
            .map(|id| match live.stores.get(id) {
                Some((at, s)) => LiveStore {
                    id: *id,
                    up: now.duration_since(*at) < down_after,
                    last_heartbeat_ms_ago: Some(now.duration_since(*at).as_millis() as u64),
                    capacity_bytes: s.capacity_bytes,
                    used_bytes: s.used_bytes,
                    region_count: s.region_count,
                    leader_count: s.leader_count,
                    reads_per_sec: s.reads_per_sec,
                    writes_per_sec: s.writes_per_sec,
                },
                None => LiveStore {
                    id: *id,
                    up: now.duration_since(live.since) < down_after,
                    last_heartbeat_ms_ago: None,
                    ..LiveStore::default()
                },
            })
            .collect();
        let age = u64::try_from(now.duration_since(live.since).as_millis()).unwrap_or(u64::MAX);
        (stores, live.regions.values().cloned().collect(), age)
    }

    /// Operators by kind and outcome, for the metrics page (empty unless this store has
    /// led placement).
    pub fn operator_counts(&self) -> BTreeMap<(String, String), u64> {
        let sched = self.sched.lock().unwrap_or_else(|e| e.into_inner());
        sched.scheduler.counts()
    }

    fn live_answer(&self, answer: placement::QueryAnswer) -> LiveAnswer {
        let (stores, regions, _) = self.live_view(&answer.config);
        let (operators, history) = {
            let sched = self.sched.lock().unwrap_or_else(|e| e.into_inner());
            (sched.scheduler.in_flight(), sched.scheduler.history())
        };
        LiveAnswer {
            answer,
            leader_store: self.cfg.store_id,
            stores,
            regions,
            operators,
            history,
        }
    }
}

/// A store's answer to a forwarded request: final (`Ok`: an answer, or a refusal such as
/// a configuration no longer kept, passed on with its reason), or "not here" with the
/// leader it names, if any, for the next try (it does not lead placement, holds no
/// replica of it, or could not get an answer in time).
/// `error` is the answer's error code and the leader it names (0: none).
fn hinted<R>(error: Option<(i32, u64)>, r: R) -> Result<R, Option<u64>> {
    match error {
        None => Ok(r),
        Some((code, leader))
            if [
                Code::NotLeader,
                Code::RegionNotFound,
                Code::EpochNotMatch,
                Code::Timeout,
                Code::Busy,
            ]
            .iter()
            .any(|c| *c as i32 == code) =>
        {
            Err((leader != 0).then_some(leader))
        }
        Some(_) => Ok(r),
    }
}

/// Heartbeat intervals without a heartbeat handled here after which this server is taken
/// to have not led placement meanwhile (every store beats once an interval).
pub const LEADERSHIP_GAP_BEATS: u32 = 3;

/// Most operator failures one heartbeat reports (a store keeps the latest).
pub const MAX_OPERATOR_FAILURES: usize = 64;

/// A scheduler decision for a region's leader as the heartbeat answer carries it (`None`
/// for a target: those are proposed to placement, not sent).
fn operator_pb(d: &Decision) -> Option<pb::RegionOperator> {
    use pb::region_operator::Kind;
    let (kind, store_id, merge_into) = match &d.action {
        Action::Split {
            reason: SplitReason::Size,
        } => (Kind::SplitBySize, 0, 0),
        Action::Split {
            reason: SplitReason::Load,
        } => (Kind::SplitByLoad, 0, 0),
        Action::Merge { into } => (Kind::Merge, 0, *into),
        Action::TransferLeader { store } => (Kind::TransferLeader, *store, 0),
        Action::Target { .. } => return None,
    };
    Some(pb::RegionOperator {
        region_id: d.region,
        kind: kind as i32,
        store_id,
        epoch: Some(pb::RegionEpoch {
            conf_version: d.conf_version,
            version: d.version,
        }),
        merge_into,
    })
}

fn no_leader() -> pb::PlacementResponse {
    pb::PlacementResponse {
        error: Some(refused(
            Code::NotLeader,
            "no store answered for the placement group (its leader may be changing); retry",
        )),
        ..Default::default()
    }
}

/// The gRPC face of [`PlacementService`].
pub struct PlacementGrpc(pub PlacementService);

#[tonic::async_trait]
impl pb::placement_server::Placement for PlacementGrpc {
    async fn query(
        &self,
        req: tonic::Request<pb::PlacementQueryRequest>,
    ) -> Result<tonic::Response<pb::PlacementResponse>, tonic::Status> {
        Ok(tonic::Response::new(self.0.query(req.into_inner()).await))
    }

    async fn call(
        &self,
        req: tonic::Request<pb::PlacementCallRequest>,
    ) -> Result<tonic::Response<pb::PlacementResponse>, tonic::Status> {
        Ok(tonic::Response::new(self.0.call(req.into_inner()).await))
    }

    async fn heartbeat(
        &self,
        req: tonic::Request<pb::HeartbeatRequest>,
    ) -> Result<tonic::Response<pb::HeartbeatResponse>, tonic::Status> {
        Ok(tonic::Response::new(
            self.0.heartbeat(req.into_inner()).await,
        ))
    }
}
