//! Static configuration of one state machine: the key range it owns ([`RegionRange`]), size
//! limits ([`Limits`]) and the session policy ([`SessionPolicy`]).
//!
//! All replicas of a region must use the same configuration, or they would accept and
//! refuse different commands and diverge; that is why snapshots carry it.

use bytes::Bytes;

use crate::command::Command;
use crate::response::CommandError;

/// Default [`Limits::max_key_bytes`]: 8 KiB, TiKV's default.
pub const DEFAULT_MAX_KEY_BYTES: usize = 8 * 1024;
/// Default [`Limits::max_value_bytes`]: 8 MiB, so a value fits in one Raft entry.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 8 * 1024 * 1024;
/// Default [`Limits::max_batch_keys`].
pub const DEFAULT_MAX_BATCH_KEYS: usize = 1024;
/// Default [`Limits::max_scan_limit`].
pub const DEFAULT_MAX_SCAN_LIMIT: u32 = 10_000;
/// Default [`SessionPolicy::ttl_ms`]: 10 minutes.
pub const DEFAULT_SESSION_TTL_MS: u64 = 10 * 60 * 1000;
/// Default [`SessionPolicy::max_sessions`].
pub const DEFAULT_MAX_SESSIONS: usize = 100_000;

/// Size limits every command is checked against before it changes anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest key, in bytes.
    pub max_key_bytes: usize,
    /// Largest value, in bytes, including values grown by `Append` / `SetRange`.
    pub max_value_bytes: usize,
    /// Most keys in one `BatchGet` / `BatchPut` / `MSetNx` / `DeleteMany`, commands in one
    /// `Pipeline` / `Exec`, watches in one `Exec`, and fields in one `HSet` / `HGet` / `HDel`.
    pub max_batch_keys: usize,
    /// Largest `Scan` / `HScan` / `ScanKeys` limit.
    pub max_scan_limit: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: DEFAULT_MAX_KEY_BYTES,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            max_batch_keys: DEFAULT_MAX_BATCH_KEYS,
            max_scan_limit: DEFAULT_MAX_SCAN_LIMIT,
        }
    }
}

impl Limits {
    /// The checks of a command that need no state: every key and hash field (against
    /// `max_key_bytes`), value, batch, field-list, pipeline and Exec length, and scan limit. The front end runs them before proposing, so a command the
    /// state machine would refuse for its size never reaches the log; the state machine runs
    /// the same ones when applying (entries written by an older build), plus the checks that
    /// depend on the state (a value grown by `Append`/`SetRange`).
    pub fn check(&self, command: &Command) -> Result<(), CommandError> {
        for key in command.keys() {
            if key.len() > self.max_key_bytes {
                return Err(CommandError::KeyTooLarge {
                    size: key.len() as u64,
                    max: self.max_key_bytes as u64,
                });
            }
        }
        for field in command.fields() {
            if field.len() > self.max_key_bytes {
                return Err(CommandError::KeyTooLarge {
                    size: field.len() as u64,
                    max: self.max_key_bytes as u64,
                });
            }
        }
        for value in command.values() {
            if value.len() > self.max_value_bytes {
                return Err(CommandError::ValueTooLarge {
                    size: value.len() as u64,
                    max: self.max_value_bytes as u64,
                });
            }
        }
        self.check_counts(command)
    }

    fn check_counts(&self, command: &Command) -> Result<(), CommandError> {
        let batch = match command {
            Command::BatchGet { keys } | Command::DeleteMany { keys } => keys.len(),
            Command::BatchPut { pairs } | Command::MSetNx { pairs } => pairs.len(),
            Command::Pipeline { commands } => commands.len(),
            Command::Exec { watches, commands } => watches.len().max(commands.len()),
            Command::HSet { fields, .. } => fields.len(),
            Command::HGet { fields, .. } | Command::HDel { fields, .. } => fields.len(),
            Command::Scan { limit, .. }
            | Command::HScan { limit, .. }
            | Command::ScanKeys { limit, .. }
                if *limit > self.max_scan_limit =>
            {
                return Err(CommandError::ScanLimitTooLarge {
                    limit: u64::from(*limit),
                    max: u64::from(self.max_scan_limit),
                })
            }
            _ => 0,
        };
        if batch > self.max_batch_keys {
            return Err(CommandError::BatchTooLarge {
                size: batch as u64,
                max: self.max_batch_keys as u64,
            });
        }
        if let Command::Pipeline { commands } | Command::Exec { commands, .. } = command {
            commands.iter().try_for_each(|c| self.check_counts(c))?;
        }
        Ok(())
    }
}

/// How long, and how many, client sessions are kept.
///
/// - **Expiry.** Time is the `proposed_at_ms` carried by each log entry (never a local clock),
///   made monotonic by taking the maximum seen so far, since a new leader's clock may lag.
///   Before applying an entry at time `t`, every session with `last_seen_ms + ttl_ms < t` is
///   dropped.
/// - **Bound.** When a new client arrives and `max_sessions` are live, the session with the
///   smallest `(last_seen_ms, client_id)` is evicted: deterministic on every replica.
/// - **Consequence.** A request whose session was dropped is treated as a client's first
///   request and applied, even if its sequence is > 1, because we cannot tell a new client
///   from a forgotten one. So `ttl_ms` must exceed the longest time a client keeps retrying
///   one request, and `max_sessions` must exceed the number of concurrently active clients;
///   otherwise a late retry can be applied twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionPolicy {
    /// A session unused for longer than this is dropped.
    pub ttl_ms: u64,
    /// Most sessions kept; must be at least 1.
    pub max_sessions: usize,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        SessionPolicy {
            ttl_ms: DEFAULT_SESSION_TTL_MS,
            max_sessions: DEFAULT_MAX_SESSIONS,
        }
    }
}

/// The keys a region owns: `start <= key < end`, with `end == None` meaning no upper bound.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct RegionRange {
    pub start: Bytes,
    pub end: Option<Bytes>,
}

impl RegionRange {
    /// The range that owns every key (the first region of a cluster).
    pub fn full() -> Self {
        RegionRange::default()
    }

    /// `[start, end)`. Panics if `end <= start`: an empty region is a bug in the caller.
    pub fn new(start: impl Into<Bytes>, end: Option<Bytes>) -> Self {
        let range = RegionRange {
            start: start.into(),
            end,
        };
        assert!(
            range.is_well_formed(),
            "region range end must be greater than start: {range:?}"
        );
        range
    }

    /// True when `start < end` (or `end` is unbounded).
    pub fn is_well_formed(&self) -> bool {
        match &self.end {
            None => true,
            Some(end) => self.start < *end,
        }
    }

    /// Whether `key` belongs to this region.
    pub fn contains(&self, key: &[u8]) -> bool {
        // `is_none_or` would read better but needs Rust 1.82; the workspace targets 1.80.
        let below_end = match &self.end {
            None => true,
            Some(end) => key < end.as_ref(),
        };
        key >= self.start.as_ref() && below_end
    }
}
