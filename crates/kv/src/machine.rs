//! [`KvStateMachine`]: one region's data and sessions, and the rules for applying committed
//! entries to them: command semantics (strings, hashes, expiry, WATCH/EXEC), time (writes at
//! the log clock, reads at `max(now_ms, log clock)`), versions, split and merge.

use bytes::Bytes;
use thiserror::Error;

use crate::command::{
    ClientId, Command, ExpireCondition, Expiry, GetExExpiry, PutOptions, Request, Sequence,
    SetExpiry,
};
use crate::config::{Limits, RegionRange, SessionPolicy};
use crate::response::{ApplyError, ApplyOutcome, CommandError, KeyInfo, Response};
use crate::session::{Session, SessionTable};
use crate::table::{Entry, HashFields, KeyType, Table, Value};

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

/// A live string's value and deadline.
type StringView<'a> = (&'a [u8], Option<u64>);

/// Largest `Pipeline` answer (encoded) a session keeps for a retry; a retry of a pipeline with
/// a larger answer gets [`CommandError::ResultNotKept`] (it was applied once all the same).
pub const MAX_KEPT_PIPELINE_RESULT_BYTES: usize = 64 * 1024;

/// Most expired keys one housekeeping entry (`Command::PurgeExpired`, proposed by the leader)
/// deletes: bounded so an entry stays small and applying it short; more are left for the next.
pub const PURGE_BATCH_KEYS: u32 = 1_000;

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
/// [`CommandError::ResultNotKept`] (applied once, answer gone). The same holds for `Exec`.
///
/// # Time, expiry and versions
/// A key whose deadline is `<= now` is absent to every command. For a write, `now` is the log
/// clock ([`Self::clock_ms`], the largest `proposed_at_ms` applied), so every replica judges
/// expiry identically; for a read ([`Self::read_at`]) it is `max(now_ms, clock_ms)`. Expired
/// keys stay in memory until `Command::PurgeExpired` (or a write that replaces or deletes
/// them) drops them. Every change of a key sets its version to the index of the entry being
/// applied; every removal of a key (delete, purge, lazy drop) sets the region's
/// [`Self::deleted_version`] to that index. `Inspect` and `Exec` watches use these.
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
    /// Index of the last entry that removed any key (delete, purge, lazy drop); 0 if none.
    pub(crate) deleted_version: u64,
    /// Added to the applied index to make a version (0 until a split or merge): a region
    /// created by a split starts a new log at a small index, and a merge brings keys versioned
    /// by another log, so versions continue from the largest one the region may hold and a
    /// WATCHed version can never be given again to a later change.
    pub(crate) version_offset: u64,
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
            deleted_version: 0,
            version_offset: 0,
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

    /// Number of keys in memory, expired ones not yet purged included.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Key plus value bytes of every key in memory (a hash: key plus every field and value;
    /// O(1); sessions not counted).
    pub fn data_bytes(&self) -> u64 {
        self.data.bytes()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Direct read of one string key at the log clock (a copy), for tests and diagnostics
    /// (clients use [`Self::read`]). `None` for an absent, expired or hash key.
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.live(key, self.clock_ms)
            .and_then(Entry::as_string)
            .map(Bytes::copy_from_slice)
    }

    /// All string pairs in memory, in key order (hashes skipped, expired keys included).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.data.iter()
    }

    /// The region's table (every entry with its type, deadline and version).
    pub fn table(&self) -> &Table {
        &self.data
    }

    /// The version the entry being applied gives the keys it changes: its log index, plus an
    /// offset that a split or merge sets so versions never repeat in a region's lineage
    /// (see [`Self::reset_applied_index`]). Equal to the applied index until then.
    pub fn version_now(&self) -> u64 {
        self.applied_index.saturating_add(self.version_offset)
    }

    /// Sets the applied index of a machine that starts a new log (the right side of a split,
    /// whose region's log starts over), keeping versions increasing: later changes get
    /// versions above every version already held.
    pub fn reset_applied_index(&mut self, applied: u64) {
        let clock = self.version_now();
        self.applied_index = applied;
        self.version_offset = clock.saturating_sub(applied);
    }

    /// The last version that deleted or expired any key of the region (0 if none): the
    /// WATCH version of an absent key.
    pub fn deleted_version(&self) -> u64 {
        self.deleted_version
    }

    /// Earliest deadline in the region, if any (the leader's purge timer uses it).
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.data.next_deadline()
    }

    /// Number of keys whose deadline is `<= now_ms` (what a purge would delete).
    pub fn expired_count(&self, now_ms: u64) -> usize {
        self.data.expired_count(now_ms)
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
    /// after ReadIndex (or under a lease), judged at the log clock: `read_at(command,
    /// clock_ms)`. No session, no state change.
    pub fn read(&self, command: &Command) -> Result<Response, CommandError> {
        self.read_at(command, self.clock_ms)
    }

    /// Serves a read judged at `max(now_ms, self.clock_ms())`: a key whose deadline is at or
    /// before that time is absent. The server passes its wall clock, so a key does not
    /// outlive its deadline just because no entry has been applied since.
    pub fn read_at(&self, command: &Command, now_ms: u64) -> Result<Response, CommandError> {
        if !command.is_read_only() {
            return Err(CommandError::NotReadOnly);
        }
        self.check_range(command)?;
        self.execute_read(command, now_ms.max(self.clock_ms))
    }

    /// Splits the region at `at_key`: `self` keeps `[start, at_key)` and the returned state
    /// machine gets `[at_key, end)` with the keys there (with their types, deadlines and
    /// versions). Sessions are copied to both sides, so a retry that lands on either side
    /// after the split is still recognised. Both keep the same applied index, log time,
    /// `deleted_version` and configuration.
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
            deleted_version: self.deleted_version,
            version_offset: self.version_offset,
        })
    }

    /// Takes in every key and session of `source`, the region adjacent to this one (on
    /// either side); this region then spans both. A client known to both keeps the session
    /// with the higher sequence (its latest request, whichever region applied it). The log
    /// time and `deleted_version` are the later of the two; keys keep their types, deadlines
    /// and versions.
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
        let mut source_versions = source.deleted_version;
        for entry in source.data.entries() {
            source_versions = source_versions.max(entry.version());
            self.data.put(entry.clone());
        }
        self.deleted_version = self.deleted_version.max(source.deleted_version);
        // Later changes get versions above every version either side's data carries. Not
        // above the source's version clock: that counts the source replica's applied index,
        // which differs between replicas (one applied an empty entry of a new source leader
        // that another never saw before the merge), and every replica must absorb to the same
        // state. A version is only ever compared for equality with one a client read, and
        // every version a client could have read is in the data or is `deleted_version`.
        let clock = self.version_now().max(source_versions);
        self.version_offset = clock - self.applied_index;
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
    /// every key lies in the region, the table's size count, deadline index and hash sizes
    /// match its entries, no key's version and not `deleted_version` is after the applied
    /// index, the session table is within its bound, no session was seen after the log time,
    /// and the session age index matches the table. O(n): for tests and the simulator, not
    /// the apply path.
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
        self.data.assert_consistent();
        for entry in self.data.entries() {
            assert!(
                entry.version() <= self.version_now(),
                "{entry:?} has a version after the version clock {}",
                self.version_now()
            );
        }
        assert!(
            self.deleted_version <= self.version_now(),
            "deleted_version {} after the version clock {}",
            self.deleted_version,
            self.version_now()
        );
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
            // The leader's expiry housekeeping carries no session: it is idempotent (it
            // deletes only what is due at this entry's log time), so a duplicate is harmless
            // and nothing needs to be remembered.
            if let Command::PurgeExpired { .. } = command {
                let result = self.execute(command);
                return (result.map_err(ApplyError::from), false);
            }
            if !command.is_read_only() {
                return (Err(ApplyError::SessionRequired), false);
            }
            let result = self
                .check_range(command)
                .and_then(|()| self.execute_read(command, self.clock_ms));
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
            Ok(Response::Pipeline(_) | Response::Exec(Some(_))) => {
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

    /// The key's entry if it is present (not expired) at `now_ms`.
    fn live(&self, key: &[u8], now_ms: u64) -> Option<&Entry> {
        self.data
            .entry(key)
            .filter(|entry| !entry.is_expired(now_ms))
    }

    /// The key's string value and deadline if present; `WrongType` for a hash.
    fn live_string(&self, key: &[u8], now_ms: u64) -> Result<Option<StringView<'_>>, CommandError> {
        match self.live(key, now_ms) {
            None => Ok(None),
            Some(entry) => match entry.as_string() {
                Some(value) => Ok(Some((value, entry.deadline()))),
                None => Err(CommandError::WrongType),
            },
        }
    }

    /// The key's hash fields if present; `WrongType` for a string.
    fn live_hash(&self, key: &[u8], now_ms: u64) -> Result<Option<&HashFields>, CommandError> {
        match self.live(key, now_ms) {
            None => Ok(None),
            Some(entry) => entry.as_hash().map(Some).ok_or(CommandError::WrongType),
        }
    }

    /// The WATCH version of `key` at `now_ms`: the entry's version if present, else the
    /// region's `deleted_version`.
    fn watch_version(&self, key: &[u8], now_ms: u64) -> u64 {
        self.live(key, now_ms)
            .map_or(self.deleted_version, Entry::version)
    }

    /// Stores `entry` (write path). Replacing an expired entry is a lazy expiry: it counts as
    /// a delete for WATCH.
    fn store(&mut self, entry: Entry) {
        if let Some(old) = self.data.put(entry) {
            if old.is_expired(self.clock_ms) {
                self.deleted_version = self.version_now();
            }
        }
    }

    /// Stores a string at the applying entry's version.
    fn store_string(&mut self, key: &[u8], value: &[u8], deadline: Option<u64>) {
        self.store(Entry::string(key, value, deadline, self.version_now()));
    }

    /// Removes `key` (write path), expired or not, and returns its entry if it was present.
    /// Any removal sets `deleted_version`.
    fn delete(&mut self, key: &[u8]) -> Option<Entry> {
        let old = self.data.remove(key)?;
        self.deleted_version = self.version_now();
        (!old.is_expired(self.clock_ms)).then_some(old)
    }

    /// Runs `change` on the hash at `key` (a new empty one if absent or expired), then stores
    /// it at the applying entry's version, or deletes the key if no field remains. The caller
    /// has checked that the key is not a string. Copies O(log fields) when a table clone
    /// shares the hash, nothing otherwise (see `table`).
    fn change_hash<R>(&mut self, key: &Bytes, change: impl FnOnce(&mut HashFields) -> R) -> R {
        let index = self.version_now();
        let mut entry = match self.data.remove(key) {
            Some(entry) if !entry.is_expired(self.clock_ms) && entry.as_hash().is_some() => entry,
            old => {
                if old.is_some() {
                    self.deleted_version = index;
                }
                Entry::hash(key.clone(), HashFields::new(), None, index)
            }
        };
        let (fields, version) = entry.hash_mut().expect("a hash entry");
        let result = change(fields);
        *version = index;
        if fields.is_empty() {
            self.deleted_version = index;
        } else {
            self.data.put(entry);
        }
        result
    }

    fn check_scan_limit(&self, limit: u32) -> Result<(), CommandError> {
        if limit > self.limits.max_scan_limit {
            return Err(CommandError::ScanLimitTooLarge {
                limit: u64::from(limit),
                max: u64::from(self.limits.max_scan_limit),
            });
        }
        Ok(())
    }

    /// Serves a read-only command judged at `now_ms` (a key whose deadline is `<= now_ms` is
    /// absent).
    fn execute_read(&self, command: &Command, now_ms: u64) -> Result<Response, CommandError> {
        match command {
            Command::Get { key } => {
                self.check_key(key)?;
                Ok(Response::Value(
                    self.live_string(key, now_ms)?
                        .map(|(value, _)| Bytes::copy_from_slice(value)),
                ))
            }
            Command::BatchGet { keys } => {
                self.check_batch(keys.len())?;
                keys.iter().try_for_each(|key| self.check_key(key))?;
                // Redis MGET answers nil for a key of another type.
                Ok(Response::Values(
                    keys.iter()
                        .map(|key| {
                            self.live(key, now_ms)
                                .and_then(Entry::as_string)
                                .map(Bytes::copy_from_slice)
                        })
                        .collect(),
                ))
            }
            Command::Scan { start, end, limit } => self.scan(start, end.as_ref(), *limit, now_ms),
            Command::Count => Ok(Response::Integer(
                i64::try_from(self.data.len() - self.data.expired_count(now_ms))
                    .unwrap_or(i64::MAX),
            )),
            Command::Inspect { key } => {
                self.check_key(key)?;
                let entry = self.live(key, now_ms);
                Ok(Response::KeyInfo {
                    info: entry.map(key_info),
                    version: entry.map_or(self.deleted_version, Entry::version),
                    now_ms,
                })
            }
            Command::HGet { key, fields } => {
                self.limits.check(command)?;
                let hash = self.live_hash(key, now_ms)?;
                Ok(Response::Values(
                    fields
                        .iter()
                        .map(|field| hash.and_then(|h| h.get(field)).cloned())
                        .collect(),
                ))
            }
            Command::HGetAll { key } => {
                self.check_key(key)?;
                Ok(Response::Pairs(
                    self.live_hash(key, now_ms)?.map_or_else(Vec::new, |h| {
                        h.iter().map(|(f, v)| (f.clone(), v.clone())).collect()
                    }),
                ))
            }
            Command::HScan { key, after, limit } => {
                self.limits.check(command)?;
                let Some(hash) = self.live_hash(key, now_ms)? else {
                    return Ok(Response::HScan {
                        pairs: Vec::new(),
                        more: false,
                    });
                };
                let mut iter = hash.iter_after(after.as_deref());
                let pairs: Vec<(Bytes, Bytes)> = iter
                    .by_ref()
                    .take(*limit as usize)
                    .map(|(f, v)| (f.clone(), v.clone()))
                    .collect();
                let more = iter.next().is_some();
                Ok(Response::HScan { pairs, more })
            }
            Command::ScanKeys {
                start,
                end,
                limit,
                key_type,
            } => {
                self.check_key(start)?;
                self.check_scan_limit(*limit)?;
                let Some(end) = self.clamp_end(start, end.as_ref()) else {
                    return Ok(Response::Keys {
                        keys: Vec::new(),
                        more: false,
                    });
                };
                let mut iter = self
                    .data
                    .range(start, end.map(|e| e.as_ref()))
                    .filter(|entry| {
                        !entry.is_expired(now_ms)
                            && key_type.map_or(true, |wanted| entry.key_type() == wanted)
                    });
                let keys: Vec<(Bytes, KeyType)> = iter
                    .by_ref()
                    .take(*limit as usize)
                    .map(|entry| (Bytes::copy_from_slice(entry.key()), entry.key_type()))
                    .collect();
                let more = iter.next().is_some();
                Ok(Response::Keys { keys, more })
            }
            Command::Pipeline { commands } => {
                self.check_batch(commands.len())?;
                if !command.is_read_only() {
                    return Err(CommandError::NotReadOnly);
                }
                Ok(Response::Pipeline(
                    commands
                        .iter()
                        .map(|c| self.execute_read(c, now_ms))
                        .collect(),
                ))
            }
            _ => Err(CommandError::NotReadOnly),
        }
    }

    /// The scan end clamped to the region (keys past its end belong to another region);
    /// `None` when the range is empty.
    fn clamp_end<'a>(&'a self, start: &Bytes, end: Option<&'a Bytes>) -> Option<Option<&'a Bytes>> {
        let end = match (end, self.region.end.as_ref()) {
            (Some(requested), Some(region_end)) => Some(requested.min(region_end)),
            (requested, region_end) => requested.or(region_end),
        };
        if end.is_some_and(|end| end <= start) {
            // An inverted range would panic in the tree; an empty range is the answer.
            return None;
        }
        Some(end)
    }

    /// Raw KV scan: string keys only (hashes are skipped), expired keys skipped.
    fn scan(
        &self,
        start: &Bytes,
        end: Option<&Bytes>,
        limit: u32,
        now_ms: u64,
    ) -> Result<Response, CommandError> {
        self.check_key(start)?;
        self.check_scan_limit(limit)?;
        let Some(end) = self.clamp_end(start, end) else {
            return Ok(Response::Scan {
                pairs: Vec::new(),
                more: false,
            });
        };
        let mut iter = self
            .data
            .range(start, end.map(|e| e.as_ref()))
            .filter(|entry| !entry.is_expired(now_ms))
            .filter_map(|entry| entry.as_string().map(|value| (entry.key(), value)));
        let pairs: Vec<(Bytes, Bytes)> = iter
            .by_ref()
            .take(limit as usize)
            .map(|(key, value)| (Bytes::copy_from_slice(key), Bytes::copy_from_slice(value)))
            .collect();
        let more = iter.next().is_some();
        Ok(Response::Scan { pairs, more })
    }

    /// Runs a command whose keys are known to be in the region, at the log time `clock_ms`
    /// and version `applied_index` (the entry being applied). Each arm validates everything
    /// first and mutates last, so an error leaves the state untouched.
    fn execute(&mut self, command: &Command) -> Result<Response, CommandError> {
        let now = self.clock_ms;
        let index = self.version_now();
        match command {
            Command::Get { .. }
            | Command::Scan { .. }
            | Command::BatchGet { .. }
            | Command::Count
            | Command::Inspect { .. }
            | Command::HGet { .. }
            | Command::HGetAll { .. }
            | Command::HScan { .. }
            | Command::ScanKeys { .. } => self.execute_read(command, now),
            // Each command validates before it mutates (below), so one that fails leaves the
            // state as it was and the next one runs on it, as in a Redis pipeline.
            Command::Pipeline { commands } => {
                self.check_batch(commands.len())?;
                Ok(Response::Pipeline(
                    commands.iter().map(|c| self.execute(c)).collect(),
                ))
            }
            Command::Exec { watches, commands } => {
                self.check_batch(watches.len())?;
                self.check_batch(commands.len())?;
                watches
                    .iter()
                    .try_for_each(|(key, _)| self.check_key(key))?;
                if commands
                    .iter()
                    .any(|c| matches!(c, Command::Pipeline { .. } | Command::Exec { .. }))
                {
                    return Err(CommandError::ConflictingOptions);
                }
                if watches
                    .iter()
                    .any(|(key, version)| self.watch_version(key, now) != *version)
                {
                    return Ok(Response::Exec(None));
                }
                Ok(Response::Exec(Some(
                    commands.iter().map(|c| self.execute(c)).collect(),
                )))
            }
            Command::DeleteMany { keys } => {
                self.check_batch(keys.len())?;
                keys.iter().try_for_each(|key| self.check_key(key))?;
                let removed = keys.iter().filter(|key| self.delete(key).is_some()).count();
                Ok(Response::Integer(removed as i64))
            }
            Command::Put {
                key,
                value,
                options,
            } => self.put(key, value, *options),
            Command::Delete { key } => {
                self.check_key(key)?;
                Ok(Response::Deleted(self.delete(key).is_some()))
            }
            Command::Append { key, value } => {
                self.check_pair(key, value)?;
                let (current, deadline) = self.live_string(key, now)?.unwrap_or((&[], None));
                let new_len = current.len() as u64 + value.len() as u64;
                self.check_value_len(new_len)?;
                let mut joined = Vec::with_capacity(current.len() + value.len());
                joined.extend_from_slice(current);
                joined.extend_from_slice(value);
                self.store_string(key, &joined, deadline);
                Ok(Response::Length(new_len))
            }
            Command::CompareAndSwap { key, expected, new } => {
                self.check_pair(key, new)?;
                let previous = self
                    .live_string(key, now)?
                    .map(|(value, _)| Bytes::copy_from_slice(value));
                let swapped = previous == *expected;
                if swapped {
                    self.store_string(key, new, None);
                }
                Ok(Response::Cas { swapped, previous })
            }
            Command::BatchPut { pairs } => {
                self.check_batch(pairs.len())?;
                pairs
                    .iter()
                    .try_for_each(|(key, value)| self.check_pair(key, value))?;
                for (key, value) in pairs {
                    self.store_string(key, value, None);
                }
                Ok(Response::Done)
            }
            Command::Incr { key, delta } => {
                self.check_key(key)?;
                let (current, deadline) = match self.live_string(key, now)? {
                    None => (0, None),
                    Some((value, deadline)) => (
                        parse_redis_integer(value).ok_or(CommandError::NotAnInteger)?,
                        deadline,
                    ),
                };
                let updated = current.checked_add(*delta).ok_or(CommandError::Overflow)?;
                self.store_string(key, updated.to_string().as_bytes(), deadline);
                Ok(Response::Integer(updated))
            }
            Command::IncrByFloat { key, delta_bits } => {
                self.check_key(key)?;
                let (current, deadline) = match self.live_string(key, now)? {
                    None => (0.0, None),
                    Some((value, deadline)) => {
                        (parse_float(value).ok_or(CommandError::NotAFloat)?, deadline)
                    }
                };
                let formatted = float_sum(current, *delta_bits)?;
                self.check_value_len(formatted.len() as u64)?;
                self.store_string(key, &formatted, deadline);
                Ok(Response::Value(Some(formatted)))
            }
            Command::SetRange { key, offset, value } => self.set_range(key, *offset, value),
            Command::GetSet { key, value } => {
                self.check_pair(key, value)?;
                let previous = self
                    .live_string(key, now)?
                    .map(|(value, _)| Bytes::copy_from_slice(value));
                self.store_string(key, value, None);
                Ok(Response::Value(previous))
            }
            Command::GetDel { key } => {
                self.check_key(key)?;
                let previous = self
                    .live_string(key, now)?
                    .map(|(value, _)| Bytes::copy_from_slice(value));
                self.delete(key);
                Ok(Response::Value(previous))
            }
            Command::SetNx { key, value } => {
                self.check_pair(key, value)?;
                if self.live(key, now).is_some() {
                    return Ok(Response::Written(false));
                }
                self.store_string(key, value, None);
                Ok(Response::Written(true))
            }
            Command::MSetNx { pairs } => {
                self.check_batch(pairs.len())?;
                pairs
                    .iter()
                    .try_for_each(|(key, value)| self.check_pair(key, value))?;
                if pairs.iter().any(|(key, _)| self.live(key, now).is_some()) {
                    return Ok(Response::Written(false));
                }
                for (key, value) in pairs {
                    self.store_string(key, value, None);
                }
                Ok(Response::Written(true))
            }
            Command::Expire {
                key,
                when,
                condition,
            } => {
                self.check_key(key)?;
                let Some(entry) = self.live(key, now).cloned() else {
                    return Ok(Response::Integer(0));
                };
                let deadline = when.resolve(now);
                let current = entry.deadline();
                // Redis 7: no deadline counts as an infinite one for GT and LT.
                let allowed = match condition {
                    ExpireCondition::Always => true,
                    ExpireCondition::Nx => current.is_none(),
                    ExpireCondition::Xx => current.is_some(),
                    ExpireCondition::Gt => current.is_some_and(|c| deadline > c),
                    ExpireCondition::Lt => current.map_or(true, |c| deadline < c),
                };
                if !allowed {
                    return Ok(Response::Integer(0));
                }
                if deadline <= now {
                    self.delete(key);
                } else {
                    self.store(entry.with_meta(Some(deadline), index));
                }
                Ok(Response::Integer(1))
            }
            Command::Persist { key } => {
                self.check_key(key)?;
                match self.live(key, now) {
                    Some(entry) if entry.deadline().is_some() => {
                        let persisted = entry.with_meta(None, index);
                        self.store(persisted);
                        Ok(Response::Integer(1))
                    }
                    _ => Ok(Response::Integer(0)),
                }
            }
            Command::GetEx { key, expiry } => {
                self.check_key(key)?;
                if *expiry == GetExExpiry::Set(Expiry::In { ms: 0 }) {
                    return Err(CommandError::InvalidExpireTime);
                }
                let Some((value, deadline)) = self.live_string(key, now)? else {
                    return Ok(Response::Value(None));
                };
                let value = Bytes::copy_from_slice(value);
                match expiry {
                    GetExExpiry::Unchanged => {}
                    GetExExpiry::Persist => {
                        if deadline.is_some() {
                            self.store_string(key, &value, None);
                        }
                    }
                    GetExExpiry::Set(when) => {
                        let deadline = when.resolve(now);
                        if deadline <= now {
                            self.delete(key);
                        } else {
                            self.store_string(key, &value, Some(deadline));
                        }
                    }
                }
                Ok(Response::Value(Some(value)))
            }
            Command::DelIfEq { key, value } => {
                self.check_pair(key, value)?;
                match self.live_string(key, now)? {
                    Some((current, _)) if current == value.as_ref() => {
                        self.delete(key);
                        Ok(Response::Integer(1))
                    }
                    _ => Ok(Response::Integer(0)),
                }
            }
            Command::PurgeExpired { limit } => {
                let due: Vec<Bytes> = self
                    .data
                    .expired_keys(now)
                    .take(*limit as usize)
                    .cloned()
                    .collect();
                for key in &due {
                    self.data.remove(key);
                }
                if !due.is_empty() {
                    self.deleted_version = index;
                }
                Ok(Response::Integer(due.len() as i64))
            }
            Command::HSet {
                key,
                fields,
                if_absent,
            } => {
                self.limits.check(command)?;
                if fields.is_empty() || (*if_absent && fields.len() != 1) {
                    return Err(CommandError::ConflictingOptions);
                }
                let hash = self.live_hash(key, now)?;
                if *if_absent && hash.is_some_and(|h| h.get(&fields[0].0).is_some()) {
                    return Ok(Response::Integer(0));
                }
                let added = self.change_hash(key, |hash| {
                    fields
                        .iter()
                        .filter(|(field, value)| {
                            hash.insert(field.clone(), value.clone()).is_none()
                        })
                        .count()
                });
                Ok(Response::Integer(added as i64))
            }
            Command::HDel { key, fields } => {
                self.limits.check(command)?;
                let Some(hash) = self.live_hash(key, now)? else {
                    return Ok(Response::Integer(0));
                };
                if !fields.iter().any(|field| hash.get(field).is_some()) {
                    return Ok(Response::Integer(0));
                }
                let removed = self.change_hash(key, |hash| {
                    fields
                        .iter()
                        .filter(|field| hash.remove(field).is_some())
                        .count()
                });
                Ok(Response::Integer(removed as i64))
            }
            Command::HIncrBy { key, field, delta } => {
                self.limits.check(command)?;
                let current = match self.live_hash(key, now)?.and_then(|h| h.get(field)) {
                    None => 0,
                    Some(value) => {
                        parse_redis_integer(value).ok_or(CommandError::HashValueNotAnInteger)?
                    }
                };
                let updated = current.checked_add(*delta).ok_or(CommandError::Overflow)?;
                self.change_hash(key, |hash| {
                    hash.insert(field.clone(), Bytes::from(updated.to_string()))
                });
                Ok(Response::Integer(updated))
            }
            Command::HIncrByFloat {
                key,
                field,
                delta_bits,
            } => {
                self.limits.check(command)?;
                let current = match self.live_hash(key, now)?.and_then(|h| h.get(field)) {
                    None => 0.0,
                    Some(value) => parse_float(value).ok_or(CommandError::HashValueNotAFloat)?,
                };
                let formatted = float_sum(current, *delta_bits)?;
                self.check_value_len(formatted.len() as u64)?;
                self.change_hash(key, |hash| hash.insert(field.clone(), formatted.clone()));
                Ok(Response::Value(Some(formatted)))
            }
            Command::Rename {
                from,
                to,
                if_absent,
            } => {
                self.check_key(from)?;
                self.check_key(to)?;
                let Some(source) = self.live(from, now).cloned() else {
                    return Err(CommandError::NoSuchKey);
                };
                if from == to {
                    return Ok(Response::Integer(if *if_absent { 0 } else { 1 }));
                }
                if *if_absent && self.live(to, now).is_some() {
                    return Ok(Response::Integer(0));
                }
                self.delete(from);
                self.store(source.renamed(to, source.deadline(), index));
                Ok(Response::Integer(1))
            }
            Command::Copy { from, to, replace } => {
                self.check_key(from)?;
                self.check_key(to)?;
                let Some(source) = self.live(from, now).cloned() else {
                    return Ok(Response::Integer(0));
                };
                if from == to || (!*replace && self.live(to, now).is_some()) {
                    return Ok(Response::Integer(0));
                }
                // O(1) for a hash: the copy shares the persistent field map.
                self.store(source.renamed(to, source.deadline(), index));
                Ok(Response::Integer(1))
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
        if options.expiry == SetExpiry::Set(Expiry::In { ms: 0 }) {
            return Err(CommandError::InvalidExpireTime);
        }
        let now = self.clock_ms;
        if !options.if_absent
            && !options.if_present
            && !options.return_previous
            && options.expiry == SetExpiry::Clear
        {
            // Unconditional, the common case: one B-tree operation (a lookup before the
            // write was a second descent per write, on every replica). SET overwrites any
            // type.
            self.store_string(key, value, None);
            return Ok(Response::Put {
                written: true,
                previous: None,
            });
        }
        let current = self.live(key, now);
        // SET ... GET on a hash: WRONGTYPE, nothing written (Redis).
        if options.return_previous && current.is_some_and(|e| e.key_type() != KeyType::String) {
            return Err(CommandError::WrongType);
        }
        let exists = current.is_some();
        let allowed = if options.if_absent {
            !exists
        } else if options.if_present {
            exists
        } else {
            true
        };
        let previous = if options.return_previous {
            current
                .and_then(Entry::as_string)
                .map(Bytes::copy_from_slice)
        } else {
            None
        };
        if allowed {
            let deadline = match options.expiry {
                SetExpiry::Clear => None,
                SetExpiry::Keep => current.and_then(Entry::deadline),
                SetExpiry::Set(when) => Some(when.resolve(now)),
            };
            if deadline.is_some_and(|deadline| deadline <= now) {
                // A deadline already past (EXAT in the past): the key is gone at once.
                self.delete(key);
            } else {
                self.store_string(key, value, deadline);
            }
        }
        Ok(Response::Put {
            written: allowed,
            previous,
        })
    }

    /// Redis `SETRANGE`: an empty `value` changes nothing (and does not create the key).
    /// Keeps the key's deadline.
    fn set_range(
        &mut self,
        key: &Bytes,
        offset: u64,
        value: &Bytes,
    ) -> Result<Response, CommandError> {
        self.check_key(key)?;
        let (current, deadline) = self.live_string(key, self.clock_ms)?.unwrap_or((&[], None));
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
        self.store_string(key, &updated, deadline);
        Ok(Response::Length(new_len as u64))
    }
}

/// Per-entry overhead `Inspect` adds to a string's bytes: the entry header, the `Arc`
/// header and the entry's slot in the tree (approximate).
const STRING_OVERHEAD_BYTES: u64 = 56;
/// Per-hash overhead: the `HashEntry`, its `Arc` and the key handle (approximate).
const HASH_OVERHEAD_BYTES: u64 = 120;
/// Per-field overhead of a hash: two `Bytes` handles and a share of a tree node.
const FIELD_OVERHEAD_BYTES: u64 = 72;

fn key_info(entry: &Entry) -> KeyInfo {
    let key_len = entry.key().len() as u64;
    match entry.value() {
        Value::String(value) => KeyInfo {
            key_type: KeyType::String,
            expires_at_ms: entry.deadline(),
            len: value.len() as u64,
            memory_bytes: key_len + value.len() as u64 + STRING_OVERHEAD_BYTES,
            is_integer: parse_redis_integer(value).is_some(),
        },
        Value::Hash(fields) => KeyInfo {
            key_type: KeyType::Hash,
            expires_at_ms: entry.deadline(),
            len: fields.len() as u64,
            memory_bytes: key_len
                + fields.bytes()
                + HASH_OVERHEAD_BYTES
                + fields.len() as u64 * FIELD_OVERHEAD_BYTES,
            is_integer: false,
        },
    }
}

/// `current + delta` as Redis INCRBYFLOAT stores it (Rust's shortest round-trip formatting;
/// see the crate docs for how this can differ from Redis's long-double output).
fn float_sum(current: f64, delta_bits: u64) -> Result<Bytes, CommandError> {
    let updated = current + f64::from_bits(delta_bits);
    if !updated.is_finite() {
        return Err(CommandError::NotFinite);
    }
    Ok(Bytes::from(updated.to_string()))
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
