//! The RESP front end's [`resp::Backend`] over this server's [`KvService`].
//!
//! Every Redis command becomes one `ENCODED` request to the `Kv` service (a pipeline's commands
//! for one region become one `Pipeline` command, see `resp::cmd::pipeline`), exactly as if a gRPC
//! client had sent it to this server: the service routes it to the key's region, proposes it
//! here when this store leads, and otherwise forwards it once to the leader's store. So a
//! Redis read-modify-write command (INCR, SETRANGE, MSETNX, ...) is one state-machine command
//! in one log entry wherever the connection landed.
//!
//! Retries: a request refused before it was proposed (no leader yet, leader elsewhere but
//! unreachable, store busy) is retried with the same `(client_id, sequence)` after a backoff,
//! within [`RESP_DEADLINE_FACTOR`] × the request timeout and at most [`MAX_ATTEMPTS`] times.
//! Because the sequence is reused, a write that did reach the log before its answer was lost is
//! recognised by the session table and applied once. When the deadline passes, a write whose
//! outcome may have been applied reports `Timeout`; anything else `Unavailable` (Redis
//! `TRYAGAIN`).

use crate::service::KvService;
use api::pb;
use api::pb::error::Code;
use bytes::Bytes;
use resp::{Backend, BackendError, BoxFuture};
use std::time::{Duration, Instant};
use store::{LiveRegions, Region};

/// Most attempts of one command (each bounded by the request timeout).
pub const MAX_ATTEMPTS: u32 = 64;
/// A command's total budget, in request timeouts.
pub const RESP_DEADLINE_FACTOR: u32 = 2;
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_millis(200);

/// `resp::Backend` for one server. Cheap to clone.
#[derive(Clone)]
pub struct RaftBackend {
    svc: KvService,
    /// The store's regions: the store thread's one live map. A store need not host every
    /// region (placement moves replicas): for keys of regions it lacks, the region of
    /// placement's latest configuration (the cluster view) stands in, and the Kv service
    /// forwards the request to a store holding it — so multi-key commands, SCAN and DBSIZE
    /// see the whole key space through every server.
    regions: LiveRegions,
}

impl RaftBackend {
    pub fn new(svc: KvService) -> Self {
        let regions = svc.handle.regions.clone();
        RaftBackend { svc, regions }
    }

    /// The region holding `key`: this store's own replica's descriptor (the freshest), else
    /// placement's.
    fn region_for(&self, key: &[u8]) -> Option<Region> {
        self.regions
            .load()
            .region_for_key(key)
            .cloned()
            .or_else(|| {
                self.svc
                    .handle
                    .cluster
                    .region_for_key(key)
                    .map(|l| l.to_region())
            })
    }

    /// A bound on the regions a walk over the key space visits (each step moves to the next).
    fn walk_bound(&self) -> usize {
        self.regions.load().len() + self.svc.handle.cluster.region_count() + 1
    }

    /// One command to one region (`region_id` 0 = route by key), with retries (module docs).
    async fn call(
        &self,
        client_id: u64,
        sequence: u64,
        region_id: u64,
        command: &kv::Command,
    ) -> Result<kv::Response, BackendError> {
        let write = !command.is_read_only();
        let encoded = command.encode().to_vec();
        let deadline = Instant::now() + self.svc.cfg.request_timeout * RESP_DEADLINE_FACTOR;
        let mut backoff = FIRST_BACKOFF;
        // Whether an attempt may have reached the log (its outcome is unknown).
        let mut maybe_applied = false;
        let mut last = String::new();
        for _ in 0..MAX_ATTEMPTS {
            let request = pb::KvRequest {
                header: Some(pb::RequestHeader {
                    client_id,
                    sequence,
                    region_id,
                    ..Default::default()
                }),
                command: Some(pb::Command {
                    kind: pb::command::Kind::Encoded as i32,
                    encoded: encoded.clone(),
                    ..Default::default()
                }),
            };
            let response = self.svc.execute(request).await;
            let Some(error) = response.error.filter(|e| e.code != Code::Ok as i32) else {
                return match kv::decode_command_result(&response.encoded_result) {
                    Ok(result) => result.map_err(BackendError::from),
                    Err(e) => Err(BackendError::Other(format!(
                        "undecodable answer from the store: {e}"
                    ))),
                };
            };
            let code = Code::try_from(error.code).unwrap_or(Code::Internal);
            match code {
                Code::KeyTooLarge => return Err(BackendError::KeyTooLarge),
                Code::ValueTooLarge => return Err(BackendError::ValueTooLarge),
                Code::InvalidArgument => return Err(BackendError::Other(error.message)),
                Code::SessionStale => {
                    return Err(BackendError::Other(format!(
                        "{}; reconnect to start a new session",
                        error.message
                    )))
                }
                // The request may have been proposed (a timeout, a forward that failed after
                // sending, a store that stopped): retrying with the same sequence is safe.
                Code::Timeout | Code::Internal => maybe_applied = true,
                Code::NotLeader if error.message.starts_with("forwarding") => maybe_applied = true,
                // The disk is full: refused before proposing. Not retried (it lasts until an
                // operator frees space), unless an earlier attempt may have been applied: then
                // the honest answer is that the outcome is unknown.
                Code::NoSpace if maybe_applied => return Err(BackendError::Timeout),
                Code::NoSpace => return Err(BackendError::NoSpace(error.message)),
                // Refused before proposing: nothing applied.
                Code::NotLeader
                | Code::EpochNotMatch
                | Code::RegionNotFound
                | Code::Busy
                | Code::Ok => {}
            }
            last = error.message;
            if Instant::now() + backoff >= deadline {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        if write && maybe_applied {
            Err(BackendError::Timeout)
        } else {
            Err(BackendError::Unavailable(last))
        }
    }

    /// `Scan { end: None }` and `ScanKeys { end: None }` across region boundaries (the
    /// `Backend` contract, rule 4): one page per region from `start` on, until `limit` items.
    /// `key_type` is `None` for `Scan` (pairs of string keys and values) and `Some(filter)`
    /// for `ScanKeys` (keys of every type, or of one).
    async fn scan_keyspace(
        &self,
        mut start: Bytes,
        limit: u32,
        key_type: Option<Option<kv::KeyType>>,
    ) -> Result<kv::Response, BackendError> {
        let mut page = ScanPage::new(key_type.is_some());
        // Each pass moves to the next region, so this ends after at most one pass per region.
        for _ in 0..self.walk_bound() {
            let Some(region) = self.region_for(&start) else {
                break;
            };
            let want = limit - page.len() as u32;
            let end = region.end_key.clone().map(Bytes::from);
            let command = match key_type {
                None => kv::Command::Scan {
                    start: start.clone(),
                    end,
                    limit: want,
                },
                Some(key_type) => kv::Command::ScanKeys {
                    start: start.clone(),
                    end,
                    limit: want,
                    key_type,
                },
            };
            let answer = self.call(0, 0, region.id.0, &command).await?;
            if page.extend(answer)? {
                return Ok(page.into_response(true));
            }
            match region.end_key {
                Some(end) if (page.len() as u32) < limit => start = Bytes::from(end),
                // The page is full at a region boundary: the caller resumes after its last key.
                Some(_) => {
                    let more = page.len() > 0;
                    return Ok(page.into_response(more));
                }
                None => break,
            }
        }
        Ok(page.into_response(false))
    }
}

/// What a walk over the key space collected: `Scan`'s pairs or `ScanKeys`' typed keys.
enum ScanPage {
    Pairs(Vec<(Bytes, Bytes)>),
    Keys(Vec<(Bytes, kv::KeyType)>),
}

impl ScanPage {
    fn new(keys: bool) -> ScanPage {
        if keys {
            ScanPage::Keys(Vec::new())
        } else {
            ScanPage::Pairs(Vec::new())
        }
    }

    fn len(&self) -> usize {
        match self {
            ScanPage::Pairs(p) => p.len(),
            ScanPage::Keys(k) => k.len(),
        }
    }

    /// Adds one region's answer; returns its `more`.
    fn extend(&mut self, answer: kv::Response) -> Result<bool, BackendError> {
        match (self, answer) {
            (ScanPage::Pairs(all), kv::Response::Scan { pairs, more }) => {
                all.extend(pairs);
                Ok(more)
            }
            (ScanPage::Keys(all), kv::Response::Keys { keys, more }) => {
                all.extend(keys);
                Ok(more)
            }
            (_, other) => Err(BackendError::Other(format!(
                "unexpected scan answer {other:?}"
            ))),
        }
    }

    fn into_response(self, more: bool) -> kv::Response {
        match self {
            ScanPage::Pairs(pairs) => kv::Response::Scan { pairs, more },
            ScanPage::Keys(keys) => kv::Response::Keys { keys, more },
        }
    }
}

impl Backend for RaftBackend {
    fn execute(
        &self,
        client_id: u64,
        sequence: u64,
        command: kv::Command,
    ) -> BoxFuture<Result<kv::Response, BackendError>> {
        let this = self.clone();
        Box::pin(async move {
            match command {
                kv::Command::Scan {
                    start,
                    end: None,
                    limit,
                } if limit > 0 => this.scan_keyspace(start, limit, None).await,
                kv::Command::ScanKeys {
                    start,
                    end: None,
                    limit,
                    key_type,
                } if limit > 0 => this.scan_keyspace(start, limit, Some(key_type)).await,
                command => this.call(client_id, sequence, 0, &command).await,
            }
        })
    }

    fn region_of(&self, key: &[u8]) -> Option<u64> {
        self.region_for(key).map(|region| region.id.0)
    }

    fn same_region(&self, keys: &[&[u8]]) -> bool {
        match keys.first().and_then(|k| self.region_for(k)) {
            Some(region) => keys.iter().all(|k| region.contains(k)),
            None => false,
        }
    }

    fn dbsize(&self) -> BoxFuture<Result<u64, BackendError>> {
        let this = self.clone();
        Box::pin(async move {
            // A walk over the key space, region by region (this store's and placement's).
            let mut total = 0u64;
            let mut start: Vec<u8> = Vec::new();
            for _ in 0..this.walk_bound() {
                let Some(region) = this.region_for(&start) else {
                    break;
                };
                match this.call(0, 0, region.id.0, &kv::Command::Count).await? {
                    kv::Response::Integer(n) => total += u64::try_from(n).unwrap_or(0),
                    other => {
                        return Err(BackendError::Other(format!(
                            "unexpected count answer {other:?}"
                        )))
                    }
                }
                match region.end_key {
                    Some(end) => start = end,
                    None => break,
                }
            }
            Ok(total)
        })
    }

    fn info(&self) -> Vec<(String, String)> {
        let cfg = &self.svc.cfg;
        vec![
            ("raftkv_store_id".into(), cfg.store_id.to_string()),
            (
                "raftkv_regions".into(),
                self.regions.load().len().to_string(),
            ),
            (
                "raftkv_cluster_stores".into(),
                cfg.initial_cluster.len().to_string(),
            ),
            (
                "raftkv_linearizable".into(),
                match cfg.read_mode {
                    raft::ReadMode::Lease => {
                        "yes (writes through Raft, reads under the leader's lease or by ReadIndex)"
                    }
                    raft::ReadMode::Safe => "yes (writes through Raft, reads by ReadIndex)",
                }
                .into(),
            ),
        ]
    }
}
