//! [`RespConfig`] and the limits the server enforces, as named constants.

/// Default most concurrent client connections (Redis `maxclients`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default largest bulk string accepted: the state machine's value limit, which is larger than
/// its key limit, so one bound covers both.
pub const DEFAULT_MAX_BULK_BYTES: usize = kv::config::DEFAULT_MAX_VALUE_BYTES;
/// Default most arguments in one request. MSET of the state machine's largest batch
/// (1024 pairs) needs 2049; anything above that cannot succeed anyway.
pub const DEFAULT_MAX_ARRAY_LEN: usize = 4 * kv::config::DEFAULT_MAX_BATCH_KEYS;
/// Default largest single request, all arguments included.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;
/// Before AUTH (when a password is set) a client may send bulks of at most this size...
pub const UNAUTHENTICATED_MAX_BULK_BYTES: usize = 1024;
/// ...and at most this many arguments (Redis uses the same 10), so an anonymous peer cannot
/// make the server buffer anything large.
pub const UNAUTHENTICATED_MAX_ARRAY_LEN: usize = 10;
/// Replies are flushed once this many bytes are pending, even mid-pipeline, so a long pipeline
/// cannot grow the output buffer without bound.
pub const OUTPUT_FLUSH_BYTES: usize = 64 * 1024;
/// Most pipelined requests read from the buffer and executed together (see `cmd::pipeline`):
/// the commands of one region among them become one log entry.
pub const MAX_PIPELINE_COMMANDS: usize = 256;
/// Most request bytes gathered into one such batch (a single larger request runs alone).
pub const MAX_PIPELINE_BYTES: usize = 1024 * 1024;
/// Most arguments (so, at most this many keys) in one such batch: within the state machine's
/// batch limit.
pub const MAX_PIPELINE_ARGUMENTS: usize = kv::config::DEFAULT_MAX_BATCH_KEYS;
/// SCAN's COUNT is clamped to this (the state machine refuses larger scan limits).
pub const MAX_SCAN_COUNT: u32 = 1_000;
/// Outstanding SCAN cursors remembered per front end (see `cmd::keys`); past this the oldest
/// is forgotten and continuing it answers `ERR invalid cursor`.
pub const MAX_SCAN_CURSORS: usize = 10_000;
/// SCAN's COUNT when none is given (Redis's default).
pub const DEFAULT_SCAN_COUNT: u32 = 10;
/// KEYS stops with an error once it has examined this many keys (the keys under the
/// pattern's literal prefix, or every key when the pattern starts with a wildcard): KEYS is
/// answered in one reply built in memory, and a whole-cluster KEYS must not make the front end
/// read an unbounded key space. Past it, clients are told to use SCAN.
pub const MAX_KEYS_EXAMINED: usize = 100_000;
/// The error KEYS answers past [`MAX_KEYS_EXAMINED`].
pub const KEYS_TOO_MANY: &str = "ERR KEYS examined more than 100000 keys; use SCAN instead";
/// Most commands queued in one MULTI: EXEC is one log entry holding all of them (and each
/// EXISTS key counts as one), within the state machine's batch limit. The next one is refused
/// and the transaction is aborted (EXECABORT).
pub const MAX_TRANSACTION_COMMANDS: usize = kv::config::DEFAULT_MAX_BATCH_KEYS;
/// Most request bytes queued in one MULTI (the EXEC entry's size, roughly).
pub const MAX_TRANSACTION_BYTES: usize = 16 * 1024 * 1024;
/// Most keys one connection WATCHes at once (each is carried in the EXEC entry).
pub const MAX_WATCHED_KEYS: usize = kv::config::DEFAULT_MAX_BATCH_KEYS;
/// Most fields HRANDFIELD with a negative count (repeats allowed) answers; Redis has no bound,
/// but the reply is built in memory.
pub const MAX_RANDOM_FIELDS: u64 = 100_000;
/// Longest client name (CLIENT SETNAME), so names stay small in memory.
pub const MAX_CLIENT_NAME_BYTES: usize = 1024;
/// Longest library name or version (CLIENT SETINFO LIB-NAME / LIB-VER): real ones are a few
/// bytes ("redis-py", "5.0.1"), and every connection keeps them for CLIENT LIST.
pub const MAX_CLIENT_LIB_BYTES: usize = 256;

/// Configuration of [`crate::serve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RespConfig {
    /// When set, clients must `AUTH` before any other command.
    pub password: Option<String>,
    /// Most concurrent connections; the next one gets "ERR max number of clients reached".
    pub max_connections: usize,
    /// Largest bulk string in a request (after AUTH).
    pub max_bulk_bytes: usize,
    /// Most arguments in a request (after AUTH).
    pub max_array_len: usize,
    /// Largest request in bytes (after AUTH).
    pub max_request_bytes: usize,
    /// The backend's key and value limits. A request with a longer key or value is not
    /// pipelined with others (it runs alone, so its refusal is its own and no other command
    /// of the pipeline shares it).
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Reported by INFO (`redis_version`) and HELLO (`version`). Clients key features on it
    /// (whether to send CLIENT SETINFO or CLIENT NO-TOUCH, which COMMAND DOCS shape to
    /// expect), so it names the Redis release whose connection commands this front end
    /// answers, not one whose data types it has (see the crate docs for what is missing).
    pub redis_version: String,
}

impl Default for RespConfig {
    fn default() -> Self {
        RespConfig {
            password: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_bulk_bytes: DEFAULT_MAX_BULK_BYTES,
            max_array_len: DEFAULT_MAX_ARRAY_LEN,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_key_bytes: kv::config::DEFAULT_MAX_KEY_BYTES,
            max_value_bytes: kv::config::DEFAULT_MAX_VALUE_BYTES,
            // 7.2: HELLO 3, CLIENT SETINFO (new in 7.2), CLIENT NO-TOUCH (7.2), CLIENT
            // INFO/LIST with lib-name and lib-ver, and COMMAND DOCS are answered as 7.2 does.
            redis_version: "7.2.0".to_string(),
        }
    }
}
