//! # client — the RaftKV Rust client
//!
//! - **Routing cache**: on connect (and whenever a server says the routing changed, or names
//!   a leader on a store this client has no address for) the client asks placement
//!   (`Placement/Query`, through any endpoint, which forwards it to placement's leader) for
//!   every region, its leader and every store's client address, and sends each request
//!   straight to the leader of its key's region; any server would also accept it and forward
//!   it. When placement does not answer (no leader, none of the endpoints tried reachable)
//!   the client asks its endpoints' `Kv/Status` instead, as it did before placement, so the
//!   data path never depends on placement. Refreshes that errors trigger are at most one per
//!   [`REFRESH_MIN_INTERVAL`].
//! - **Endpoints learned**: a store address placement lists that the client was not given is
//!   added to its endpoints (a connection and a batch stream of its own), so a store that
//!   joined after the client started is reached directly, and the client keeps working when
//!   every endpoint it was given is gone. `status` and stale reads stay on the endpoints
//!   given at connect time (a stale read asks the replicas the caller named).
//! - **Leader redirects**: a `NOT_LEADER` answer with a hint updates the cache.
//! - **Retries with backoff**: unavailable servers, timeouts, busy or re-routing answers are
//!   retried with exponential backoff (bounded) until the operation deadline.
//! - **Exactly-once sessions**: a write carries this client's id and a sequence number; a
//!   retry reuses the sequence, so a write whose answer was lost is applied once and the
//!   retry gets the original answer. One client runs one operation at a time (`&mut self`).
//! - **One batch stream per server**: requests travel on a long-lived `Kv/Batch` stream per
//!   endpoint ([`Mux`]), shared by every [`Client::fork`]; requests queued at the same time
//!   leave in one message. A broken stream fails its in-flight requests (retried like any
//!   transport error) and the next request opens a new one.

pub use api::pb;
use api::pb::error::Code;
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::{Channel, Endpoint};
pub use types::StoreId;

/// The URL tonic wants for a `host:port` endpoint (kept as is when it has a scheme).
pub fn grpc_url(endpoint: &str) -> String {
    if endpoint.starts_with("http") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

/// Requests waiting for a stream's task (per endpoint); callers wait for space beyond it.
const MUX_QUEUE: usize = 1024;
/// Most requests in one `BatchRequest` (the server's limit).
const MUX_MAX_BATCH: usize = 1024;
/// Most requests awaiting answers on one stream; past it new ones wait in the queue.
const MUX_MAX_IN_FLIGHT: usize = 4096;
/// A `BatchRequest` is closed once its requests reach this many bytes (a single larger
/// request still travels, alone), far below the gRPC message limit.
const MUX_MAX_BATCH_BYTES: usize = 4 << 20;

/// Roughly the encoded size of a request: what dominates it (keys and values).
fn request_bytes(r: &pb::KvRequest) -> usize {
    64 + r.command.as_ref().map_or(0, |c| {
        c.key.len()
            + c.value.len()
            + c.expected.len()
            + c.end_key.len()
            + c.encoded.len()
            + c.keys.iter().map(|k| k.len() + 2).sum::<usize>()
            + c.pairs
                .iter()
                .map(|p| p.key.len() + p.value.len() + 4)
                .sum::<usize>()
    })
}

type MuxReply = oneshot::Sender<Result<pb::KvResponse, String>>;

/// One endpoint's `Kv/Batch` stream, shared by clones. The stream is opened on the first
/// request and re-opened on the first request after it broke.
#[derive(Clone)]
struct Mux {
    tx: mpsc::Sender<(pb::KvRequest, MuxReply)>,
}

impl Mux {
    fn new(client: pb::kv_client::KvClient<Channel>) -> Mux {
        let (tx, rx) = mpsc::channel(MUX_QUEUE);
        tokio::spawn(mux_task(client, rx));
        Mux { tx }
    }

    /// Sends `req` and waits for its answer, at most `timeout`.
    async fn call(&self, req: pb::KvRequest, timeout: Duration) -> Result<pb::KvResponse, String> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let attempt = async {
            self.tx
                .send((req, reply_tx))
                .await
                .map_err(|_| "client runtime is shutting down".to_string())?;
            reply_rx
                .await
                .map_err(|_| "batch stream task ended".to_string())?
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
    }
}

/// Drives one endpoint's stream until every `Mux` handle is gone.
async fn mux_task(
    client: pb::kv_client::KvClient<Channel>,
    mut rx: mpsc::Receiver<(pb::KvRequest, MuxReply)>,
) {
    while let Some(first) = rx.recv().await {
        run_mux_stream(client.clone(), &mut rx, first).await;
    }
}

/// The requests of one stream awaiting answers, by id.
#[derive(Default)]
struct InFlight {
    replies: HashMap<u64, MuxReply>,
    next_id: u64,
}

impl InFlight {
    /// `first` and whatever else is queued (within the limits), as one message; `None` if
    /// every one of them was already given up by its caller (timed out), which is not sent.
    fn take(
        &mut self,
        rx: &mut mpsc::Receiver<(pb::KvRequest, MuxReply)>,
        first: (pb::KvRequest, MuxReply),
    ) -> Option<pb::BatchRequest> {
        let mut batch = pb::BatchRequest::default();
        let mut bytes = 0;
        let mut item = Some(first);
        while let Some((req, reply)) = item.take() {
            if !reply.is_closed() {
                self.next_id += 1;
                bytes += request_bytes(&req);
                batch.ids.push(self.next_id);
                batch.requests.push(req);
                self.replies.insert(self.next_id, reply);
            }
            if batch.ids.len() < MUX_MAX_BATCH
                && self.replies.len() < MUX_MAX_IN_FLIGHT
                && bytes < MUX_MAX_BATCH_BYTES
            {
                item = rx.try_recv().ok();
            }
        }
        (!batch.ids.is_empty()).then_some(batch)
    }

    fn fail_all(&mut self, why: &str) {
        for (_, reply) in self.replies.drain() {
            let _ = reply.send(Err(why.to_string()));
        }
    }
}

/// One stream's life, from `first` until it breaks or every handle is gone; a break fails
/// the requests in flight on it.
async fn run_mux_stream(
    mut client: pb::kv_client::KvClient<Channel>,
    rx: &mut mpsc::Receiver<(pb::KvRequest, MuxReply)>,
    first: (pb::KvRequest, MuxReply),
) {
    // Unbounded on purpose, bounded in fact: a batch only leaves with new requests while
    // fewer than MUX_MAX_IN_FLIGHT await answers. A bounded queue here could block this task
    // in a send while it must keep reading answers (the server, its send window full, stops
    // reading requests until we read): a deadlock with large values.
    let (out_tx, out_rx) = mpsc::unbounded_channel::<pb::BatchRequest>();
    let mut pending = InFlight::default();
    // The first batch goes into the request body before the call waits for the answer's
    // headers, so it travels with the stream's HEADERS.
    let Some(batch) = pending.take(rx, first) else {
        return; // Its caller gave up already: no stream needed.
    };
    if out_tx.send(batch).is_err() {
        unreachable!("the receiver is alive until the call below ends");
    }
    let mut inbound = match client
        .batch(tokio_stream::wrappers::UnboundedReceiverStream::new(out_rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(status) => {
            pending.fail_all(status.message());
            return;
        }
    };
    loop {
        tokio::select! {
            item = rx.recv(), if pending.replies.len() < MUX_MAX_IN_FLIGHT => {
                let Some(item) = item else {
                    return; // Every handle is gone.
                };
                if let Some(batch) = pending.take(rx, item) {
                    if out_tx.send(batch).is_err() {
                        pending.fail_all("batch stream closed");
                        return;
                    }
                }
            }
            msg = inbound.message() => match msg {
                Ok(Some(b)) => {
                    for (id, resp) in b.ids.into_iter().zip(b.responses) {
                        if let Some(reply) = pending.replies.remove(&id) {
                            let _ = reply.send(Ok(resp));
                        }
                    }
                }
                Ok(None) => {
                    pending.fail_all("server ended the batch stream");
                    return;
                }
                Err(status) => {
                    pending.fail_all(status.message());
                    return;
                }
            },
        }
    }
}

/// Largest gRPC message sent or received (the server's value limit plus framing).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// A refresh that an error triggers is skipped when the last one ended less than this long
/// ago: many operations failing at once (a split spreading) need one refresh, not one each.
pub const REFRESH_MIN_INTERVAL: Duration = Duration::from_millis(50);
/// How long one endpoint gets to answer a `Status` or a placement query in a refresh.
const REFRESH_ASK_TIMEOUT: Duration = Duration::from_secs(1);
/// Endpoints asked for placement's answer in one refresh: when placement has no leader every
/// server says so, and asking more would only delay the fallback to `Status`.
const MAX_PLACEMENT_TRIES: usize = 3;
/// Most endpoints a client holds (the given ones and those learned from placement); an
/// address beyond it is not added and its store is reached through forwarding.
const MAX_ENDPOINTS: usize = 1024;

type PlacementClient = pb::placement_client::PlacementClient<Channel>;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ClientError {
    #[error("no server answered within the deadline; the outcome is unknown: {0}")]
    Timeout(String),
    #[error("key too large: {0}")]
    KeyTooLarge(String),
    #[error("value too large: {0}")]
    ValueTooLarge(String),
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    #[error("server error {code:?}: {message}")]
    Server { code: i32, message: String },
    #[error("bad endpoint {0}: use host:port")]
    BadEndpoint(String),
    /// The leader's disk is full: the write was refused before it was proposed, so it was not
    /// applied (unless an earlier attempt of it timed out, which is reported as `Timeout`).
    /// Not retried beyond a few attempts: it lasts until an operator frees space.
    #[error("{0}")]
    NoSpace(String),
}

/// Attempts of a write refused with `NO_SPACE` before [`ClientError::NoSpace`] is returned.
pub const MAX_NO_SPACE_ATTEMPTS: u32 = 3;

/// Client tunables.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// How long one operation may take across all its retries.
    pub op_timeout: Duration,
    /// Per-attempt RPC deadline.
    pub attempt_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            op_timeout: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(6),
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(1000),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct RegionRoute {
    id: u64,
    start: Vec<u8>,
    end: Option<Vec<u8>>,
    /// The region's epoch version as reported: stores that have not applied a split yet
    /// report the older, wider range; the newest one wins.
    version: u64,
    leader_store: u64,
}

impl RegionRoute {
    fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_ref().is_none_or(|e| key < e.as_slice())
    }
}

/// The Kv and Placement clients of one endpoint, over one lazily opened connection.
fn open_endpoint(
    endpoint: &str,
    cfg: &ClientConfig,
) -> Result<(pb::kv_client::KvClient<Channel>, PlacementClient), ClientError> {
    let ep = Endpoint::from_shared(grpc_url(endpoint))
        .map_err(|_| ClientError::BadEndpoint(endpoint.to_string()))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .timeout(cfg.attempt_timeout);
    let channel = ep.connect_lazy();
    let kv = pb::kv_client::KvClient::new(channel.clone())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let placement = PlacementClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
    Ok((kv, placement))
}

/// Placement's answer in a `Placement/Query` response; `None` for a refusal (placement has
/// no leader) or JSON that does not decode (a server of another version): the caller then
/// routes with `Status` instead.
fn decode_placement(resp: &pb::PlacementResponse) -> Option<placement::LiveAnswer> {
    if resp
        .error
        .as_ref()
        .is_some_and(|e| e.code != Code::Ok as i32)
    {
        return None;
    }
    serde_json::from_slice(&resp.json).ok()
}

/// The routes and store addresses in placement's answer: a route per data region (not the
/// placement group, which no kv request reaches) with its leader as placement's leader last
/// heard it (0: unknown), and the client address of every store that is not `Removed` and
/// has one (a bootstrap store has none until its first heartbeat reached placement).
fn routes_from_placement(live: &placement::LiveAnswer) -> (Vec<RegionRoute>, Vec<(u64, String)>) {
    let config = &live.answer.config;
    let leaders: HashMap<u64, u64> = live
        .regions
        .iter()
        .map(|l| (l.id, l.leader_store))
        .collect();
    let routes: Vec<RegionRoute> = config
        .regions
        .values()
        .filter(|r| r.id != placement::hosted_group_id())
        .map(|r| RegionRoute {
            id: r.id,
            start: r.start_key.clone(),
            end: r.end_key.clone(),
            version: r.version,
            leader_store: leaders.get(&r.id).copied().unwrap_or(0),
        })
        .collect();
    let stores: Vec<(u64, String)> = config
        .stores
        .values()
        .filter(|s| s.state != placement::StoreState::Removed && !s.addrs.client.is_empty())
        .map(|s| (s.id, s.addrs.client.clone()))
        .collect();
    (routes, stores)
}

pub struct Client {
    /// The endpoints given at connect time, then the store addresses learned from
    /// placement (see [`Client::refresh_routes`]).
    endpoints: Vec<String>,
    /// How many of `endpoints` were given at connect time: `status` asks only those, and a
    /// stale read stays on them (see `execute`).
    given: usize,
    channels: Vec<pb::kv_client::KvClient<Channel>>,
    /// Per endpoint, the Placement service over the same connection.
    placement: Vec<PlacementClient>,
    /// Per endpoint, the shared batch stream that carries `execute`.
    muxes: Vec<Mux>,
    /// store id -> endpoint index, learned from placement's addresses or from Status.
    store_endpoint: HashMap<u64, usize>,
    routes: Vec<RegionRoute>,
    next_endpoint: usize,
    /// When the last refresh of the routes ended (see [`REFRESH_MIN_INTERVAL`]).
    last_refresh: Option<Instant>,
    client_id: u64,
    sequence: u64,
    cfg: ClientConfig,
}

fn random_client_id() -> u64 {
    // Unique enough across processes: time in nanoseconds mixed with the process id.
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // A per-process counter, so ids made in the same nanosecond still differ.
    static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut z = t
        ^ ((std::process::id() as u64) << 32)
        ^ 0x9E37_79B9_7F4A_7C15
        ^ n.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) | 1
}

impl Client {
    /// Connects lazily to `endpoints` (client addresses, `host:port`).
    pub async fn connect(endpoints: Vec<String>) -> Result<Client, ClientError> {
        Self::with_config(endpoints, ClientConfig::default()).await
    }

    pub async fn with_config(
        endpoints: Vec<String>,
        cfg: ClientConfig,
    ) -> Result<Client, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::BadEndpoint("no endpoints given".into()));
        }
        let mut channels = Vec::new();
        let mut placement = Vec::new();
        for e in &endpoints {
            let (kv, p) = open_endpoint(e, &cfg)?;
            channels.push(kv);
            placement.push(p);
        }
        let muxes = channels.iter().cloned().map(Mux::new).collect();
        let mut c = Client {
            given: endpoints.len(),
            endpoints,
            channels,
            placement,
            muxes,
            store_endpoint: HashMap::new(),
            routes: Vec::new(),
            next_endpoint: 0,
            last_refresh: None,
            client_id: random_client_id(),
            sequence: 0,
            cfg,
        };
        c.refresh_routes().await;
        Ok(c)
    }

    /// A new session (its own client id and sequence) over this client's connections and
    /// routing cache: many logical clients can share a few connections (HTTP/2 multiplexes
    /// their requests).
    pub fn fork(&self) -> Client {
        Client {
            endpoints: self.endpoints.clone(),
            given: self.given,
            channels: self.channels.clone(),
            placement: self.placement.clone(),
            muxes: self.muxes.clone(),
            store_endpoint: self.store_endpoint.clone(),
            routes: self.routes.clone(),
            next_endpoint: 0,
            last_refresh: self.last_refresh,
            client_id: random_client_id(),
            sequence: 0,
            cfg: self.cfg.clone(),
        }
    }

    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// Every endpoint this client uses: those given at connect time, then the store
    /// addresses learned from placement.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Refreshes the routing cache: regions, their leaders and the stores' client addresses
    /// from placement (an address not among the endpoints is added to them, so a store that
    /// joined since is reached directly); when placement does not answer, from each
    /// endpoint's `Status` (which store it is, the regions it holds and the leaders it
    /// knows), so routing never depends on placement. `Status` is also asked when placement
    /// names a leader on a store it has no address for (a bootstrap store whose first
    /// heartbeat has not reached placement yet): the endpoints say which store they are.
    pub async fn refresh_routes(&mut self) {
        let placed = self.refresh_from_placement().await;
        // Stores whose client address placement does not hold yet (a new cluster's stores
        // until their first heartbeat is recorded): their endpoints' `Status` says which
        // store each endpoint is. Without it no answer's `served_by_store` could be followed
        // and every request would go round the endpoints.
        let unmapped = (0..self.given).any(|i| !self.store_endpoint.values().any(|&e| e == i))
            || self
                .routes
                .iter()
                .any(|r| r.leader_store != 0 && !self.store_endpoint.contains_key(&r.leader_store));
        if !placed || unmapped {
            self.refresh_from_status(!placed).await;
        }
        self.last_refresh = Some(Instant::now());
    }

    /// [`Client::refresh_routes`], unless the last refresh ended within
    /// [`REFRESH_MIN_INTERVAL`] (its answer is as good).
    async fn refresh_routes_soon(&mut self) {
        if self
            .last_refresh
            .is_none_or(|t| t.elapsed() >= REFRESH_MIN_INTERVAL)
        {
            self.refresh_routes().await;
        }
    }

    /// Routes and store addresses from placement, asked through at most
    /// [`MAX_PLACEMENT_TRIES`] endpoints in rotation (each forwards the query to
    /// placement's leader); false when none answered with a layout.
    async fn refresh_from_placement(&mut self) -> bool {
        let n = self.placement.len();
        let start = self.next_endpoint % n;
        let mut answer = None;
        for k in 0..n.min(MAX_PLACEMENT_TRIES) {
            let i = (start + k) % n;
            let mut pc = self.placement[i].clone();
            let query = pc.query(pb::PlacementQueryRequest {
                config: -1,
                forwarded: false,
            });
            if let Ok(Ok(resp)) = tokio::time::timeout(REFRESH_ASK_TIMEOUT, query).await {
                if let Some(live) = decode_placement(resp.get_ref()) {
                    // The next rotation starts at an endpoint that answers.
                    self.next_endpoint = i;
                    answer = Some(live);
                    break;
                }
            }
        }
        let Some(live) = answer else {
            return false;
        };
        let (routes, stores) = routes_from_placement(&live);
        // A removed store serves nothing again: no request goes to its old address.
        let config_stores = &live.answer.config.stores;
        self.store_endpoint.retain(|s, _| {
            config_stores
                .get(s)
                .is_none_or(|m| m.state != placement::StoreState::Removed)
        });
        for (store, addr) in stores {
            if let Some(i) = self.endpoint_index(&addr) {
                self.store_endpoint.insert(store, i);
            }
        }
        if routes.is_empty() {
            return false;
        }
        // A leader placement has not heard of yet (a placement leader elected since the last
        // heartbeats) is the one this client knew, if it knew one.
        let known: HashMap<u64, u64> = self
            .routes
            .iter()
            .filter(|r| r.leader_store != 0)
            .map(|r| (r.id, r.leader_store))
            .collect();
        self.routes = routes
            .into_iter()
            .map(|mut r| {
                if r.leader_store == 0 {
                    r.leader_store = known.get(&r.id).copied().unwrap_or(0);
                }
                r
            })
            .collect();
        true
    }

    /// Asks every endpoint's `Status` which store it is (what it says overrides an address
    /// placement holds: this endpoint reaches that store) and, with `routes_too`, rebuilds
    /// the routes from the regions they hold and the leaders they know.
    async fn refresh_from_status(&mut self, routes_too: bool) {
        let mut routes: HashMap<u64, RegionRoute> = HashMap::new();
        for i in 0..self.channels.len() {
            let mut ch = self.channels[i].clone();
            let r =
                tokio::time::timeout(REFRESH_ASK_TIMEOUT, ch.status(pb::StatusRequest {})).await;
            let Ok(Ok(st)) = r else { continue };
            let st = st.into_inner();
            self.store_endpoint.insert(st.store_id, i);
            for rs in st.regions {
                let Some(region) = rs.region else { continue };
                let version = region.epoch.map_or(0, |e| e.version);
                let e = routes.entry(region.id).or_insert(RegionRoute {
                    id: region.id,
                    start: region.start_key.clone(),
                    end: region.has_end.then(|| region.end_key.clone()),
                    version,
                    leader_store: 0,
                });
                if version > e.version {
                    e.start = region.start_key.clone();
                    e.end = region.has_end.then(|| region.end_key.clone());
                    e.version = version;
                }
                if rs.leader_store_id != 0 {
                    e.leader_store = rs.leader_store_id;
                }
            }
        }
        if routes_too && !routes.is_empty() {
            self.routes = routes.into_values().collect();
        }
    }

    /// The index of endpoint `addr`, added (with its own connection and batch stream) if it
    /// is new; `None` for an address that does not parse, or past [`MAX_ENDPOINTS`].
    fn endpoint_index(&mut self, addr: &str) -> Option<usize> {
        let url = grpc_url(addr);
        if let Some(i) = self.endpoints.iter().position(|e| grpc_url(e) == url) {
            return Some(i);
        }
        if self.endpoints.len() >= MAX_ENDPOINTS {
            return None;
        }
        let (kv, placement) = open_endpoint(addr, &self.cfg).ok()?;
        self.muxes.push(Mux::new(kv.clone()));
        self.channels.push(kv);
        self.placement.push(placement);
        self.endpoints.push(addr.to_string());
        Some(self.endpoints.len() - 1)
    }

    /// The endpoint for a request on `key`: its region leader's, if that is one of the
    /// first `within` endpoints; else the next of those in rotation (an endpoint that never
    /// answers is tried only then).
    fn endpoint_for(&mut self, key: &[u8], within: usize) -> usize {
        let within = within.min(self.channels.len()).max(1);
        // Ranges may overlap while a split spreads (a route from a store that has not applied
        // it yet): the newest holds the key.
        let leader = self
            .routes
            .iter()
            .filter(|r| r.contains(key))
            .max_by_key(|r| r.version)
            .map(|r| r.leader_store);
        if let Some(&i) = leader.and_then(|l| self.store_endpoint.get(&l)) {
            if i < within {
                return i;
            }
        }
        let i = self.next_endpoint % within;
        self.next_endpoint += 1;
        i
    }

    fn note_leader(&mut self, key: &[u8], store: u64) {
        if let Some(r) = self
            .routes
            .iter_mut()
            .filter(|r| r.contains(key))
            .max_by_key(|r| r.version)
        {
            r.leader_store = store;
        }
    }

    /// Runs one command with retries; writes get the next sequence number of the session.
    pub async fn execute(
        &mut self,
        command: pb::Command,
        write: bool,
        stale: bool,
    ) -> Result<pb::KvResponse, ClientError> {
        let (client_id, sequence) = if write {
            self.sequence += 1;
            (self.client_id, self.sequence)
        } else {
            (0, 0)
        };
        let key = command.key.clone();
        let deadline = Instant::now() + self.cfg.op_timeout;
        let mut backoff = self.cfg.backoff_min;
        let mut last = String::from("no attempt");
        // Redirects to a hinted leader are retried at once, a few times in a row; beyond
        // that (stores pointing at each other during an election) the backoff applies.
        let mut quick_redirects = 0;
        let mut no_space_refusals = 0;
        // Whether an attempt may have reached the log (timeout, lost answer).
        let mut uncertain = false;
        // A stale read goes to the endpoints the caller gave, reading a replica it chose
        // (`raftkv get --stale` on a store that just restarted reads that store), until as
        // many attempts on them failed as there are; then to any endpoint.
        let mut given_failures = 0;
        // Whether this operation refreshed the routes for a hinted leader on a store without
        // a known address (once: a hint may name a store that is gone).
        let mut refreshed_for_hint = false;
        // Bounded by the deadline; the attempt count bound is a second guard.
        for _attempt in 0..10_000 {
            if Instant::now() >= deadline {
                break;
            }
            let within = if stale && given_failures < self.given {
                self.given
            } else {
                self.channels.len()
            };
            let i = self.endpoint_for(&key, within);
            let req = pb::KvRequest {
                header: Some(pb::RequestHeader {
                    client_id,
                    sequence,
                    stale_read: stale,
                    ..Default::default()
                }),
                command: Some(command.clone()),
            };
            match self.muxes[i].call(req, self.cfg.attempt_timeout).await {
                Ok(resp) => {
                    let Some(e) = resp.error.clone().filter(|e| e.code != Code::Ok as i32) else {
                        // Served elsewhere (the server forwarded it to the leader): send the
                        // region's next requests straight there.
                        let by = resp.served_by_store;
                        if by != 0 {
                            if let Some(&at) = self.store_endpoint.get(&by) {
                                if at != i {
                                    self.note_leader(&key, by);
                                }
                            }
                        }
                        return Ok(resp);
                    };
                    last = e.message.clone();
                    match Code::try_from(e.code).unwrap_or(Code::Internal) {
                        Code::KeyTooLarge => return Err(ClientError::KeyTooLarge(e.message)),
                        Code::ValueTooLarge => return Err(ClientError::ValueTooLarge(e.message)),
                        Code::InvalidArgument => {
                            return Err(ClientError::InvalidArgument(e.message))
                        }
                        Code::SessionStale | Code::Internal => {
                            return Err(ClientError::Server {
                                code: e.code,
                                message: e.message,
                            })
                        }
                        Code::NotLeader if e.leader_store_id != 0 => {
                            let leader = e.leader_store_id;
                            // A leader on a store this client has no address for (one that
                            // joined since it refreshed): placement has the address.
                            if !refreshed_for_hint && !self.store_endpoint.contains_key(&leader) {
                                refreshed_for_hint = true;
                                self.refresh_routes_soon().await;
                            }
                            // After the refresh: the hint is newer than placement's view.
                            self.note_leader(&key, leader);
                            let elsewhere = self.store_endpoint.get(&leader) != Some(&i);
                            if elsewhere && quick_redirects < 3 {
                                quick_redirects += 1;
                                continue;
                            }
                        }
                        Code::EpochNotMatch | Code::RegionNotFound => {
                            self.refresh_routes_soon().await
                        }
                        // The leader is right but overloaded: back off, same place.
                        Code::Busy => {}
                        // A full disk: a few tries with backoff (a leader change may move the
                        // region to a store with room), then give up rather than spin until the
                        // deadline. An earlier attempt with an unknown outcome makes the whole
                        // outcome unknown.
                        Code::NoSpace => {
                            no_space_refusals += 1;
                            if no_space_refusals >= MAX_NO_SPACE_ATTEMPTS {
                                return Err(if uncertain {
                                    ClientError::Timeout(e.message)
                                } else {
                                    ClientError::NoSpace(e.message)
                                });
                            }
                        }
                        _ => {
                            // Leader unknown, timeout, busy: rotate and back off.
                            uncertain |= e.code == Code::Timeout as i32;
                            self.note_leader(&key, 0);
                        }
                    }
                }
                Err(why) => {
                    uncertain = true;
                    last = why;
                    if i < self.given {
                        given_failures += 1;
                    }
                    self.note_leader(&key, 0);
                    self.next_endpoint = i + 1;
                }
            }
            tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())))
                .await;
            backoff = (backoff * 2).min(self.cfg.backoff_max);
        }
        Err(ClientError::Timeout(last))
    }

    fn cmd(kind: pb::command::Kind, key: &[u8]) -> pb::Command {
        pb::Command {
            kind: kind as i32,
            key: key.to_vec(),
            ..Default::default()
        }
    }

    /// Linearizable read.
    pub async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        let r = self
            .execute(Self::cmd(pb::command::Kind::Get, key), false, false)
            .await?;
        Ok(r.found.then_some(r.value))
    }

    /// Stale (follower) read: served by whichever replica answers, without ReadIndex.
    pub async fn get_stale(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        let r = self
            .execute(Self::cmd(pb::command::Kind::Get, key), false, true)
            .await?;
        Ok(r.found.then_some(r.value))
    }

    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), ClientError> {
        let mut c = Self::cmd(pb::command::Kind::Put, key);
        c.value = value.to_vec();
        self.execute(c, true, false).await.map(|_| ())
    }

    /// Returns whether the key existed.
    pub async fn delete(&mut self, key: &[u8]) -> Result<bool, ClientError> {
        let r = self
            .execute(Self::cmd(pb::command::Kind::Delete, key), true, false)
            .await?;
        Ok(r.existed)
    }

    /// Returns the new length.
    pub async fn append(&mut self, key: &[u8], value: &[u8]) -> Result<u64, ClientError> {
        let mut c = Self::cmd(pb::command::Kind::Append, key);
        c.value = value.to_vec();
        Ok(self.execute(c, true, false).await?.length)
    }

    /// Sets `key` to `new` if it holds `expected` (`None`: if absent); returns whether it did.
    pub async fn cas(
        &mut self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, ClientError> {
        let mut c = Self::cmd(pb::command::Kind::Cas, key);
        c.value = new.to_vec();
        match expected {
            Some(e) => c.expected = e.to_vec(),
            None => c.expect_absent = true,
        }
        Ok(self.execute(c, true, false).await?.swapped)
    }

    /// Up to `limit` pairs from `start` (within its region) to `end`.
    pub async fn scan(
        &mut self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: u32,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, ClientError> {
        let mut c = Self::cmd(pb::command::Kind::Scan, start);
        c.end_key = end.map(|e| e.to_vec()).unwrap_or_default();
        c.limit = limit;
        let r = self.execute(c, false, false).await?;
        Ok(r.pairs.into_iter().map(|p| (p.key, p.value)).collect())
    }

    /// Fetches the status of every endpoint given at connect time that answers (not of the
    /// addresses learned from placement: callers ask about the stores they named).
    pub async fn status(&mut self) -> Vec<pb::StatusResponse> {
        let mut out = Vec::new();
        for ch in &self.channels[..self.given] {
            let mut ch = ch.clone();
            if let Ok(Ok(r)) =
                tokio::time::timeout(Duration::from_secs(2), ch.status(pb::StatusRequest {})).await
            {
                out.push(r.into_inner());
            }
        }
        out
    }

    /// Waits (polling `Status`, bounded by `timeout`) until exactly `stores` of the servers
    /// given at connect time answer, the regions they report tile the whole key space (no
    /// gap, no overlap) and every replica they report knows its region's leader. For tests
    /// and tools that must not start before the cluster settled. Assumes no layout: a store
    /// may hold any subset of the regions, and the number of regions is whatever the reports
    /// add up to.
    pub async fn wait_until_led(&mut self, stores: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let st = self.status().await;
            if st.len() == stores && settled(&st) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// The store id leading the region that holds `key`, as the first server that knows it
    /// reports.
    pub async fn leader_store_of(&mut self, key: &[u8]) -> Option<StoreId> {
        for st in self.status().await {
            for r in st.regions {
                let reg = r.region.unwrap_or_default();
                let inside = key >= reg.start_key.as_slice()
                    && (!reg.has_end || key < reg.end_key.as_slice());
                if inside && r.leader_store_id != 0 {
                    return Some(StoreId(r.leader_store_id));
                }
            }
        }
        None
    }
}

/// Whether status reports show a settled cluster: every replica knows its leader, and the
/// distinct regions reported tile the key space from the empty key to the end.
fn settled(reports: &[pb::StatusResponse]) -> bool {
    let mut ranges: Vec<(u64, Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    for r in reports.iter().flat_map(|s| &s.regions) {
        if r.leader_store_id == 0 {
            return false;
        }
        let reg = r.region.clone().unwrap_or_default();
        let range = (reg.id, reg.start_key, reg.has_end.then_some(reg.end_key));
        if !ranges.contains(&range) {
            ranges.push(range);
        }
    }
    ranges.sort_by(|a, b| a.1.cmp(&b.1));
    let mut next: Option<Vec<u8>> = Some(Vec::new());
    for (_, start, end) in ranges {
        if next.as_ref() != Some(&start) {
            return false; // a gap, an overlap, or something after the unbounded end
        }
        next = end;
    }
    next.is_none() && !reports.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(regions: &[(u64, &str, Option<&str>, u64)]) -> pb::StatusResponse {
        pb::StatusResponse {
            regions: regions
                .iter()
                .map(|&(id, start, end, leader)| pb::RegionStatus {
                    region: Some(pb::Region {
                        id,
                        start_key: start.as_bytes().to_vec(),
                        end_key: end.unwrap_or("").as_bytes().to_vec(),
                        has_end: end.is_some(),
                        ..Default::default()
                    }),
                    leader_store_id: leader,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn settled_needs_the_key_space_tiled_and_every_leader_known() {
        let whole = [
            report(&[(1, "", Some("g"), 1), (2, "g", None, 2)]),
            // Another store holds only one of them.
            report(&[(2, "g", None, 2)]),
        ];
        assert!(settled(&whole));
        // A gap between the regions.
        assert!(!settled(&[report(&[
            (1, "", Some("g"), 1),
            (2, "h", None, 2)
        ])]));
        // The end of the key space missing.
        assert!(!settled(&[report(&[(1, "", Some("g"), 1)])]));
        // An overlap (a stale descriptor beside the split halves).
        assert!(!settled(&[report(&[
            (1, "", None, 1),
            (1, "", Some("g"), 1),
            (2, "g", None, 1)
        ])]));
        // A replica that does not know its leader.
        assert!(!settled(&[
            report(&[(1, "", None, 1)]),
            report(&[(1, "", None, 0)])
        ]));
        assert!(!settled(&[]));
    }

    fn store(id: u64, client: &str, state: placement::StoreState) -> placement::StoreMeta {
        placement::StoreMeta {
            id,
            addrs: placement::StoreAddrs {
                peer: format!("10.0.0.{id}:7000"),
                client: client.to_string(),
                resp: String::new(),
            },
            state,
            labels: Default::default(),
            capacity: 0,
        }
    }

    fn layout(id: u64, start: &str, end: Option<&str>, version: u64) -> placement::RegionLayout {
        placement::RegionLayout {
            id,
            start_key: start.as_bytes().to_vec(),
            end_key: end.map(|e| e.as_bytes().to_vec()),
            conf_version: 1,
            version,
            replicas: vec![placement::ReplicaMeta {
                peer: 1,
                store: 1,
                learner: false,
            }],
            target: None,
        }
    }

    /// Stores 1 (Up), 2 (Draining), 3 (Removed) and 4 (no client address yet); regions 1
    /// and 2 (region 1's leader known, region 2's not) and the placement group (led by 1).
    fn live_answer() -> placement::LiveAnswer {
        let stores = [
            store(1, "10.0.0.1:7001", placement::StoreState::Up),
            store(2, "10.0.0.2:7001", placement::StoreState::Draining),
            store(3, "10.0.0.3:7001", placement::StoreState::Removed),
            store(4, "", placement::StoreState::Up),
        ];
        let group = placement::hosted_group_id();
        let regions = [
            layout(1, "", Some("g"), 2),
            layout(2, "g", None, 3),
            layout(group, "", None, 1),
        ];
        placement::LiveAnswer {
            answer: placement::QueryAnswer {
                cluster_id: 9,
                replicas: 3,
                oldest: 1,
                config: placement::Config {
                    number: 5,
                    stores: stores.into_iter().map(|s| (s.id, s)).collect(),
                    regions: regions.into_iter().map(|r| (r.id, r)).collect(),
                    sticky: Default::default(),
                },
            },
            leader_store: 1,
            stores: Vec::new(),
            regions: vec![
                placement::LiveRegion {
                    id: 1,
                    leader_store: 2,
                    ..Default::default()
                },
                placement::LiveRegion {
                    id: group,
                    leader_store: 1,
                    ..Default::default()
                },
            ],
            operators: Vec::new(),
            history: Vec::new(),
        }
    }

    /// Placement's answer gives a route per data region with the leader its live view
    /// names (0 when it names none), never the placement group's, and the addresses of the
    /// stores that are not removed and have one.
    #[test]
    fn routes_and_addresses_come_from_placements_answer() {
        let (mut routes, stores) = routes_from_placement(&live_answer());
        routes.sort_by_key(|r| r.id);
        assert_eq!(
            routes,
            vec![
                RegionRoute {
                    id: 1,
                    start: Vec::new(),
                    end: Some(b"g".to_vec()),
                    version: 2,
                    leader_store: 2,
                },
                RegionRoute {
                    id: 2,
                    start: b"g".to_vec(),
                    end: None,
                    version: 3,
                    leader_store: 0,
                },
            ]
        );
        assert_eq!(
            stores,
            vec![
                (1, "10.0.0.1:7001".to_string()),
                (2, "10.0.0.2:7001".to_string()),
            ]
        );
    }

    /// The answer is read from the JSON a server sends; a refusal or JSON that does not
    /// decode gives no answer (the client then routes by `Status`), never a panic.
    #[test]
    fn a_refused_or_garbled_placement_answer_is_no_answer() {
        let live = live_answer();
        let ok = pb::PlacementResponse {
            leader_store_id: 1,
            json: serde_json::to_vec(&live).unwrap(),
            ..Default::default()
        };
        assert_eq!(decode_placement(&ok), Some(live.clone()));
        let refused = pb::PlacementResponse {
            error: Some(pb::Error {
                code: Code::NotLeader as i32,
                message: "placement has no leader".into(),
                ..Default::default()
            }),
            json: serde_json::to_vec(&live).unwrap(),
            ..Default::default()
        };
        assert_eq!(decode_placement(&refused), None);
        let mut json = serde_json::to_vec(&live).unwrap();
        json.truncate(json.len() / 2);
        for garbled in [Vec::new(), b"{\"answer\": 1}".to_vec(), json] {
            let resp = pb::PlacementResponse {
                json: garbled,
                ..Default::default()
            };
            assert_eq!(decode_placement(&resp), None);
        }
    }

    fn put(value_len: usize) -> pb::KvRequest {
        pb::KvRequest {
            header: None,
            command: Some(pb::Command {
                kind: pb::command::Kind::Put as i32,
                key: b"k".to_vec(),
                value: vec![0; value_len],
                ..Default::default()
            }),
        }
    }

    /// Requests queued together leave together, but a message never grows past the byte cap
    /// (three 6 MiB values in one message would pass gRPC's 16 MiB limit and kill the stream),
    /// and a request whose caller already gave up is not sent at all.
    #[tokio::test]
    async fn take_caps_a_batch_by_bytes() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut replies = Vec::new();
        for _ in 0..3 {
            let (r, keep) = oneshot::channel();
            replies.push(keep);
            tx.send((put(6 << 20), r)).await.unwrap();
        }
        let (gone, dropped) = oneshot::channel();
        drop(dropped);
        tx.send((put(10), gone)).await.unwrap();
        let mut inflight = InFlight::default();
        let first = rx.try_recv().unwrap();
        let b1 = inflight.take(&mut rx, first).unwrap();
        assert_eq!(b1.ids.len(), 1, "6 MiB already reaches the cap");
        let next = rx.try_recv().unwrap();
        let b2 = inflight.take(&mut rx, next).unwrap();
        assert_eq!(b2.ids.len(), 1);
        let next = rx.try_recv().unwrap();
        let b3 = inflight.take(&mut rx, next).unwrap();
        assert_eq!(b3.ids.len(), 1);
        let next = rx.try_recv().unwrap();
        assert!(
            inflight.take(&mut rx, next).is_none(),
            "a request whose caller gave up is not sent"
        );
        assert!(rx.try_recv().is_err());
        assert_eq!(inflight.replies.len(), 3);
        let ids: Vec<u64> = [b1, b2, b3].iter().flat_map(|b| b.ids.clone()).collect();
        assert_eq!(ids, vec![1, 2, 3]);

        // Small requests do travel together.
        for _ in 0..5 {
            let (r, keep) = oneshot::channel();
            replies.push(keep);
            tx.send((put(100), r)).await.unwrap();
        }
        let first = rx.try_recv().unwrap();
        assert_eq!(inflight.take(&mut rx, first).unwrap().ids.len(), 5);
    }
}
