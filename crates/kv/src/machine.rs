//! [`KvStateMachine`]: one region's data and sessions, and the rules for applying committed
//! entries to them.

use bytes::Bytes;
use thiserror::Error;

use crate::command::{ClientId, Command, PutOptions, Request, Sequence};
use crate::config::{Limits, RegionRange, SessionPolicy};
use crate::response::{ApplyError, ApplyOutcome, CommandError, Response};
use crate::session::{Session, SessionTable};
use crate::table::Table;

/// Why [`KvStateMachine::split_off`] refused a split key.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SplitError {
    /// The split key must lie strictly inside the region (not at its start, not outside),
    /// otherwise one side would be empty.
    #[error("split key {at_key:?} is not strictly inside the region {region:?}")]
    KeyNotInside { at_key: Bytes, region: RegionRange },
    /// Regions merge only with a neighbour that shares a boundary.
    #[error("region {other:?} is not adjacent to {region:?}")]
    NotAdjacent {
        region: Box<RegionRange>,
        other: Box<RegionRange>,
    },
}

/// Largest `Pipeline` answer (encoded) a session keeps for a retry; a retry of a pipeline with
/// a larger answer gets [`CommandError::ResultNotKept`] (it was applied once all the same).
pub const MAX_KEPT_PIPELINE_RESULT_BYTES: usize = 64 * 1024;

/// The replicated state of one region: an ordered map of keys to values, the client session
/// table, and the index of the last applied entry.
///
/// # Determinism
/// Everything here is a function of the sequence of applied entries (and the configuration,
/// which all replicas share): there is no clock (time is `proposed_at_ms` from the log), no
/// randomness, no hash-map iteration order. Two replicas that applied the same entries have
/// equal [`state_hash`](Self::state_hash)es and byte-identical [`snapshot`](Self::snapshot)s.
///
/// # Exactly-once
/// For a request from client `c` with sequence `s` (after expiring old sessions, see
/// [`SessionPolicy`]):
/// 1. `c == ClientId::NONE`: read-only commands run without a session; writes get
///    [`ApplyError::SessionRequired`].
/// 2. `s == 0`: [`ApplyError::InvalidSequence`].
/// 3. `s == last(c)`: a retry; the cached reply is returned and nothing is re-applied
///    (`duplicate = true`). The session's `last_seen_ms` is refreshed.
/// 4. `s < last(c)`: [`ApplyError::SessionStale`]; the client has moved on.
/// 5. Otherwise the command runs. A key outside the region gives
///    [`CommandError::OutOfRange`], which is *not* recorded in the session: the request was
///    misrouted rather than executed, and the client retries it, with the same sequence, at
///    the right region. Any other result, success or error, is recorded as `last(c)`.
///
/// A refused command (any error) changes no key.
///
/// Only the *last* reply per client is kept (Raft thesis §6.3), so a client must have at most
/// one request in flight per session *and region* (each region's state machine has its own
/// session table): if it pipelined sequences 5 and 6 to one region and 5's retry arrives
/// after 6 was applied, the retry gets `SessionStale`. That is safe (nothing is applied
/// twice) but the reply is lost; a client that pipelines should use one session per
/// in-flight request, or, like the Redis front end, batch a region's commands into one
/// `Pipeline` and send the next only after it. A `Pipeline`'s reply is kept only when it
/// encodes to at most [`MAX_KEPT_PIPELINE_RESULT_BYTES`]; a retry of a larger one gets
/// [`CommandError::ResultNotKept`] (applied once, answer gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvStateMachine {
    pub(crate) region: RegionRange,
    pub(crate) limits: Limits,
    pub(crate) session_policy: SessionPolicy,
    pub(crate) applied_index: u64,
    /// Log time: the largest `proposed_at_ms` applied so far. Monotonic even when a new
    /// leader's wall clock is behind the old one's.
    pub(crate) clock_ms: u64,
    pub(crate) data: Table,
    pub(crate) sessions: SessionTable,
}

impl KvStateMachine {
    /// An empty state machine for `region`. Panics if the region is empty or
    /// `session_policy.max_sessions == 0` (configuration bugs, not input).
    pub fn new(region: RegionRange, limits: Limits, session_policy: SessionPolicy) -> Self {
        assert!(
            region.is_well_formed(),
            "region end must be greater than start: {region:?}"
        );
        assert!(
            session_policy.max_sessions >= 1,
            "max_sessions must be at least 1"
        );
        KvStateMachine {
            region,
            limits,
            session_policy,
            applied_index: 0,
            clock_ms: 0,
            data: Table::new(),
            sessions: SessionTable::default(),
        }
    }

    /// [`KvStateMachine::new`] with default limits and session policy.
    pub fn with_region(region: RegionRange) -> Self {
        Self::new(region, Limits::default(), SessionPolicy::default())
    }

    /// Index of the last applied entry (0 before any).
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Log time: the largest `proposed_at_ms` applied so far.
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    pub fn region(&self) -> &RegionRange {
        &self.region
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn session_policy(&self) -> &SessionPolicy {
        &self.session_policy
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Key plus value bytes of every key (O(1); sessions not counted).
    pub fn data_bytes(&self) -> u64 {
        self.data.bytes()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Direct read of one key (a copy), for tests and diagnostics (clients use
    /// [`Self::read`]).
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.data.get_bytes(key)
    }

    /// All pairs in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.data.iter()
    }

    /// The session of `client`, if it is live.
    pub fn session(&self, client: ClientId) -> Option<&Session> {
        self.sessions.get(client)
    }

    /// Number of live sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Applies one committed entry whose payload is an encoded [`Request`].
    ///
    /// A payload that does not decode yields [`ApplyError::Malformed`] and changes nothing
    /// but the applied index: a replica must never crash on a bad entry, and every replica
    /// rejects it the same way.
    ///
    /// Panics if `index` is not greater than [`Self::applied_index`]: applying an entry
    /// twice or out of order is a bug in the caller, and continuing would diverge.
    pub fn apply(&mut self, index: u64, payload: &[u8]) -> ApplyOutcome {
        match Request::decode(payload) {
            Ok(request) => self.apply_request(index, &request),
            Err(error) => {
                self.advance_applied_index(index);
                ApplyOutcome {
                    index,
                    client: None,
                    result: Err(ApplyError::Malformed(error)),
                    duplicate: false,
                }
            }
        }
    }

    /// Applies an already decoded request (what [`Self::apply`] does after decoding).
    pub fn apply_request(&mut self, index: u64, request: &Request) -> ApplyOutcome {
        self.advance_applied_index(index);
        self.clock_ms = self.clock_ms.max(request.proposed_at_ms);
        self.sessions
            .expire(self.clock_ms, self.session_policy.ttl_ms);
        let (result, duplicate) = self.apply_with_session(request);
        ApplyOutcome {
            index,
            client: Some((request.client_id, request.sequence)),
            result,
            duplicate,
        }
    }

    /// Records an entry that carries no KV request (a new leader's empty entry, a membership
    /// change handled by the store) so that `applied_index` follows the log.
    pub fn apply_noop(&mut self, index: u64) {
        self.advance_applied_index(index);
    }

    /// Serves a read-only command without going through the log, for linearizable reads
    /// after ReadIndex (or under a lease). No session, no state change.
    pub fn read(&self, command: &Command) -> Result<Response, CommandError> {
        if !command.is_read_only() {
            return Err(CommandError::NotReadOnly);
        }
        self.check_range(command)?;
        self.execute_read(command)
    }

    /// Splits the region at `at_key`: `self` keeps `[start, at_key)` and the returned state
    /// machine gets `[at_key, end)` with the keys there. Sessions are copied to both sides,
    /// so a retry that lands on either side after the split is still recognised. Both keep
    /// the same applied index, log time and configuration.
    pub fn split_off(&mut self, at_key: Bytes) -> Result<KvStateMachine, SplitError> {
        if !self.region.contains(&at_key) || at_key == self.region.start {
            return Err(SplitError::KeyNotInside {
                at_key,
                region: self.region.clone(),
            });
        }
        let moved = self.data.split_off(at_key.as_ref());
        let right_region = RegionRange {
            start: at_key.clone(),
            end: self.region.end.take(),
        };
        self.region.end = Some(at_key);
        Ok(KvStateMachine {
            region: right_region,
            limits: self.limits,
            session_policy: self.session_policy,
            applied_index: self.applied_index,
            clock_ms: self.clock_ms,
            data: moved,
            sessions: self.sessions.clone(),
        })
    }

    /// Takes in every key and session of `source`, the region adjacent to this one (on
    /// either side); this region then spans both. A client known to both keeps the session
    /// with the higher sequence (its latest request, whichever region applied it). The log
    /// time is the later of the two.
    pub fn absorb(&mut self, source: KvStateMachine) -> Result<(), SplitError> {
        let merged = if self.region.end.as_ref() == Some(&source.region.start) {
            RegionRange {
                start: self.region.start.clone(),
                end: source.region.end.clone(),
            }
        } else if source.region.end.as_ref() == Some(&self.region.start) {
            RegionRange {
                start: source.region.start.clone(),
                end: self.region.end.clone(),
            }
        } else {
            return Err(SplitError::NotAdjacent {
                region: Box::new(self.region.clone()),
                other: Box::new(source.region),
            });
        };
        for (k, v) in source.data.iter() {
            self.data.insert(k, v);
        }
        for (client, session) in source.sessions.iter() {
            let newer = self
                .sessions
                .get(*client)
                .map_or(true, |mine| session.last_sequence > mine.last_sequence);
            if newer {
                self.sessions.insert(*client, session.clone());
            }
        }
        // The union may exceed the bound (a snapshot holding more would be refused at
        // restore): the oldest go, as when a new client arrives at a full table.
        self.sessions.evict_to(self.session_policy.max_sessions);
        self.clock_ms = self.clock_ms.max(source.clock_ms);
        self.region = merged;
        Ok(())
    }

    /// Checks every structural invariant and panics, naming the broken one, if any fails:
    /// every key lies in the region, the session table is within its bound, no session was
    /// seen after the log time, and the session age index matches the table. O(n): for
    /// tests and the simulator, not the apply path.
    pub fn assert_invariants(&self) {
        assert!(
            self.region.is_well_formed(),
            "region {:?} is empty",
            self.region
        );
        if let Some(first) = self.data.first_key() {
            assert!(
                self.region.contains(first),
                "key {first:?} below region {:?}",
                self.region
            );
        }
        if let Some(last) = self.data.last_key() {
            assert!(
                self.region.contains(last),
                "key {last:?} above region {:?}",
                self.region
            );
        }
        assert!(
            self.sessions.len() <= self.session_policy.max_sessions,
            "{} sessions exceed max_sessions {}",
            self.sessions.len(),
            self.session_policy.max_sessions
        );
        for (client, session) in self.sessions.iter() {
            assert!(
                session.last_seen_ms <= self.clock_ms,
                "session {client:?} seen at {} after log time {}",
                session.last_seen_ms,
                self.clock_ms
            );
        }
        self.sessions.assert_consistent();
    }

    fn advance_applied_index(&mut self, index: u64) {
        assert!(
            index > self.applied_index,
            "entries must be applied in increasing index order: got {index} after {}",
            self.applied_index
        );
        self.applied_index = index;
    }

    fn apply_with_session(&mut self, request: &Request) -> (Result<Response, ApplyError>, bool) {
        let client = request.client_id;
        let command = &request.command;
        if client == ClientId::NONE {
            if !command.is_read_only() {
                return (Err(ApplyError::SessionRequired), false);
            }
            let result = self
                .check_range(command)
                .and_then(|()| self.execute_read(command));
            return (result.map_err(ApplyError::from), false);
        }
        if request.sequence == Sequence(0) {
            return (
                Err(ApplyError::InvalidSequence { client_id: client }),
                false,
            );
        }
        if let Some(session) = self.sessions.get(client) {
            if request.sequence == session.last_sequence {
                let cached = session.result.clone().map_err(ApplyError::from);
                self.sessions.touch(client, self.clock_ms);
                return (cached, true);
            }
            if request.sequence < session.last_sequence {
                let stale = ApplyError::SessionStale {
                    client_id: client,
                    sequence: request.sequence,
                    last_applied: session.last_sequence,
                };
                return (Err(stale), false);
            }
        }
        // Misrouted: not executed, so not recorded; the client retries elsewhere with the
        // same sequence number.
        if let Err(error) = self.check_range(command) {
            return (Err(error.into()), false);
        }
        let result = self.execute(command);
        let kept = match &result {
            // A pipeline's answer can hold many values (reads that follow writes go through
            // the log with them): keep it for a retry only when small, so a session's cached
            // answer stays bounded. The size is the encoding's, the same on every replica.
            Ok(Response::Pipeline(_)) => {
                let size = crate::encode_command_result(&result).len();
                if size > MAX_KEPT_PIPELINE_RESULT_BYTES {
                    Err(CommandError::ResultNotKept { size: size as u64 })
                } else {
                    result.clone()
                }
            }
            _ => result.clone(),
        };
        self.sessions.record(
            client,
            request.sequence,
            kept,
            self.clock_ms,
            self.session_policy.max_sessions,
        );
        (result.map_err(ApplyError::from), false)
    }

    /// Every key the command touches must be in the region (for `Scan`, its start).
    fn check_range(&self, command: &Command) -> Result<(), CommandError> {
        command.keys().into_iter().try_for_each(|key| {
            if self.region.contains(key) {
                Ok(())
            } else {
                Err(CommandError::OutOfRange { key: key.clone() })
            }
        })
    }

    fn check_key(&self, key: &[u8]) -> Result<(), CommandError> {
        if key.len() > self.limits.max_key_bytes {
            return Err(CommandError::KeyTooLarge {
                size: key.len() as u64,
                max: self.limits.max_key_bytes as u64,
            });
        }
        Ok(())
    }

    fn check_value_len(&self, len: u64) -> Result<(), CommandError> {
        if len > self.limits.max_value_bytes as u64 {
            return Err(CommandError::ValueTooLarge {
                size: len,
                max: self.limits.max_value_bytes as u64,
            });
        }
        Ok(())
    }

    fn check_pair(&self, key: &[u8], value: &[u8]) -> Result<(), CommandError> {
        self.check_key(key)?;
        self.check_value_len(value.len() as u64)
    }

    fn check_batch(&self, size: usize) -> Result<(), CommandError> {
        if size > self.limits.max_batch_keys {
            return Err(CommandError::BatchTooLarge {
                size: size as u64,
                max: self.limits.max_batch_keys as u64,
            });
        }
        Ok(())
    }

    fn execute_read(&self, command: &Command) -> Result<Response, CommandError> {
        match command {
            Command::Get { key } => {
                self.check_key(key)?;
                Ok(Response::Value(self.data.get_bytes(key)))
            }
            Command::BatchGet { keys } => {
                self.check_batch(keys.len())?;
                keys.iter().try_for_each(|key| self.check_key(key))?;
                Ok(Response::Values(
                    keys.iter().map(|key| self.data.get_bytes(key)).collect(),
                ))
            }
            Command::Scan { start, end, limit } => self.scan(start, end.as_ref(), *limit),
            Command::Count => Ok(Response::Integer(
                i64::try_from(self.data.len()).unwrap_or(i64::MAX),
            )),
            Command::Pipeline { commands } => {
                self.check_batch(commands.len())?;
                if !command.is_read_only() {
                    return Err(CommandError::NotReadOnly);
                }
                Ok(Response::Pipeline(
                    commands.iter().map(|c| self.execute_read(c)).collect(),
                ))
            }
            _ => Err(CommandError::NotReadOnly),
        }
    }

    fn scan(
        &self,
        start: &Bytes,
        end: Option<&Bytes>,
        limit: u32,
    ) -> Result<Response, CommandError> {
        self.check_key(start)?;
        if limit > self.limits.max_scan_limit {
            return Err(CommandError::ScanLimitTooLarge {
                limit: u64::from(limit),
                max: u64::from(self.limits.max_scan_limit),
            });
        }
        // Clamp to the region: keys past its end belong to another region.
        let end = match (end, self.region.end.as_ref()) {
            (Some(requested), Some(region_end)) => Some(requested.min(region_end)),
            (requested, region_end) => requested.or(region_end),
        };
        if end.is_some_and(|end| end <= start) {
            // BTreeMap::range panics on an inverted range; an empty range is the answer.
            return Ok(Response::Scan {
                pairs: Vec::new(),
                more: false,
            });
        }
        let mut iter = self.data.range(start, end.map(|e| e.as_ref()));
        let pairs: Vec<(Bytes, Bytes)> = iter
            .by_ref()
            .take(limit as usize)
            .map(|(key, value)| (Bytes::copy_from_slice(key), Bytes::copy_from_slice(value)))
            .collect();
        let more = iter.next().is_some();
        Ok(Response::Scan { pairs, more })
    }

    /// Runs a command whose keys are known to be in the region. Each arm validates
    /// everything first and mutates last, so an error leaves the state untouched.
    fn execute(&mut self, command: &Command) -> Result<Response, CommandError> {
        match command {
            Command::Get { .. }
            | Command::Scan { .. }
            | Command::BatchGet { .. }
            | Command::Count => self.execute_read(command),
            // Each command validates before it mutates (below), so one that fails leaves the
            // state as it was and the next one runs on it, as in a Redis pipeline.
            Command::Pipeline { commands } => {
                self.check_batch(commands.len())?;
                Ok(Response::Pipeline(
                    commands.iter().map(|c| self.execute(c)).collect(),
                ))
            }
            Command::DeleteMany { keys } => {
                self.check_batch(keys.len())?;
                keys.iter().try_for_each(|key| self.check_key(key))?;
                let removed = keys
                    .iter()
                    .filter(|key| self.data.remove(key).is_some())
                    .count();
                Ok(Response::Integer(removed as i64))
            }
            Command::Put {
                key,
                value,
                options,
            } => self.put(key, value, *options),
            Command::Delete { key } => {
                self.check_key(key)?;
                Ok(Response::Deleted(self.data.remove(key).is_some()))
            }
            Command::Append { key, value } => {
                self.check_pair(key, value)?;
                let current = self.data.get(key).unwrap_or(&[]);
                let new_len = current.len() as u64 + value.len() as u64;
                self.check_value_len(new_len)?;
                let mut joined = Vec::with_capacity(current.len() + value.len());
                joined.extend_from_slice(current);
                joined.extend_from_slice(value);
                self.data.insert(key, &joined);
                Ok(Response::Length(new_len))
            }
            Command::CompareAndSwap { key, expected, new } => {
                self.check_pair(key, new)?;
                let previous = self.data.get_bytes(key);
                let swapped = previous == *expected;
                if swapped {
                    self.data.insert(key, new);
                }
                Ok(Response::Cas { swapped, previous })
            }
            Command::BatchPut { pairs } => {
                self.check_batch(pairs.len())?;
                pairs
                    .iter()
                    .try_for_each(|(key, value)| self.check_pair(key, value))?;
                for (key, value) in pairs {
                    self.data.insert(key, value);
                }
                Ok(Response::Done)
            }
            Command::Incr { key, delta } => {
                self.check_key(key)?;
                let current = match self.data.get(key) {
                    None => 0,
                    Some(value) => parse_redis_integer(value).ok_or(CommandError::NotAnInteger)?,
                };
                let updated = current.checked_add(*delta).ok_or(CommandError::Overflow)?;
                self.data.insert(key, updated.to_string().as_bytes());
                Ok(Response::Integer(updated))
            }
            Command::IncrByFloat { key, delta_bits } => {
                self.check_key(key)?;
                let current = match self.data.get(key) {
                    None => 0.0,
                    Some(value) => parse_float(value).ok_or(CommandError::NotAFloat)?,
                };
                let updated = current + f64::from_bits(*delta_bits);
                if !updated.is_finite() {
                    return Err(CommandError::NotFinite);
                }
                // Rust's shortest round-trip formatting; see the crate docs for how this can
                // differ from Redis's long-double output.
                let formatted = Bytes::from(updated.to_string());
                self.check_value_len(formatted.len() as u64)?;
                self.data.insert(key, &formatted);
                Ok(Response::Value(Some(formatted)))
            }
            Command::SetRange { key, offset, value } => self.set_range(key, *offset, value),
            Command::GetSet { key, value } => {
                self.check_pair(key, value)?;
                let previous = self.data.get_bytes(key);
                self.data.insert(key, value);
                Ok(Response::Value(previous))
            }
            Command::GetDel { key } => {
                self.check_key(key)?;
                Ok(Response::Value(
                    self.data
                        .remove(key)
                        .map(|pair| Bytes::copy_from_slice(pair.value())),
                ))
            }
            Command::SetNx { key, value } => {
                self.check_pair(key, value)?;
                if self.data.contains_key(key) {
                    return Ok(Response::Written(false));
                }
                self.data.insert(key, value);
                Ok(Response::Written(true))
            }
            Command::MSetNx { pairs } => {
                self.check_batch(pairs.len())?;
                pairs
                    .iter()
                    .try_for_each(|(key, value)| self.check_pair(key, value))?;
                if pairs.iter().any(|(key, _)| self.data.contains_key(key)) {
                    return Ok(Response::Written(false));
                }
                for (key, value) in pairs {
                    self.data.insert(key, value);
                }
                Ok(Response::Written(true))
            }
        }
    }

    fn put(
        &mut self,
        key: &Bytes,
        value: &Bytes,
        options: PutOptions,
    ) -> Result<Response, CommandError> {
        self.check_pair(key, value)?;
        if options.if_absent && options.if_present {
            return Err(CommandError::ConflictingOptions);
        }
        if !options.if_absent && !options.if_present {
            // Unconditional, the common case: one B-tree operation, which also yields the
            // previous value (a lookup before the write was a second descent per write, on
            // every replica).
            let previous = self.data.insert(key, value);
            return Ok(Response::Put {
                written: true,
                previous: previous
                    .filter(|_| options.return_previous)
                    .map(|p| Bytes::copy_from_slice(p.value())),
            });
        }
        // Conditional (exactly one of NX, XX).
        let exists = self.data.contains_key(key);
        let allowed = if options.if_absent { !exists } else { exists };
        let previous = if options.return_previous {
            self.data.get_bytes(key)
        } else {
            None
        };
        if allowed {
            self.data.insert(key, value);
        }
        Ok(Response::Put {
            written: allowed,
            previous,
        })
    }

    /// Redis `SETRANGE`: an empty `value` changes nothing (and does not create the key).
    fn set_range(
        &mut self,
        key: &Bytes,
        offset: u64,
        value: &Bytes,
    ) -> Result<Response, CommandError> {
        self.check_key(key)?;
        let current = self.data.get(key).unwrap_or(&[]);
        if value.is_empty() {
            return Ok(Response::Length(current.len() as u64));
        }
        let write_end =
            offset
                .checked_add(value.len() as u64)
                .ok_or(CommandError::ValueTooLarge {
                    size: u64::MAX,
                    max: self.limits.max_value_bytes as u64,
                })?;
        let new_len = write_end.max(current.len() as u64);
        self.check_value_len(new_len)?;
        // new_len <= max_value_bytes, a usize, so these conversions cannot truncate.
        let (offset, new_len) = (offset as usize, new_len as usize);
        let mut updated = Vec::with_capacity(new_len);
        updated.extend_from_slice(current);
        updated.resize(new_len, 0);
        updated[offset..offset + value.len()].copy_from_slice(value);
        self.data.insert(key, &updated);
        Ok(Response::Length(new_len as u64))
    }
}

/// Redis `string2ll`: an optional `-`, then digits with no leading zero (except `0`
/// itself), no `+`, no spaces, and `-0` is not an integer.
fn parse_redis_integer(bytes: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(bytes).ok()?;
    let digits = text.strip_prefix('-').unwrap_or(text);
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && text != "-0";
    if !canonical {
        return None;
    }
    text.parse::<i64>().ok()
}

/// A stored value usable by `IncrByFloat`: a finite decimal float without surrounding
/// spaces (Redis rejects spaces too).
fn parse_float(bytes: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(bytes).ok()?;
    let value = text.parse::<f64>().ok()?;
    value.is_finite().then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_integer_parsing_is_strict() {
        assert_eq!(parse_redis_integer(b"0"), Some(0));
        assert_eq!(parse_redis_integer(b"-12"), Some(-12));
        assert_eq!(parse_redis_integer(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"-",
            b"+1",
            b" 1",
            b"1 ",
            b"01",
            b"-0",
            b"1.0",
            b"9223372036854775808",
            b"\xff",
        ] {
            assert_eq!(parse_redis_integer(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn float_parsing_rejects_non_finite() {
        assert_eq!(parse_float(b"1.5"), Some(1.5));
        assert_eq!(parse_float(b"inf"), None);
        assert_eq!(parse_float(b"NaN"), None);
        assert_eq!(parse_float(b" 1"), None);
    }
}
