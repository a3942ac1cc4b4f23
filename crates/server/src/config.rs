//! Server configuration.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Smallest accepted `--log-segment-bytes`: a segment must hold at least one large batch
/// without rolling over on every write.
pub const MIN_LOG_SEGMENT_BYTES: u64 = 64 << 10;
/// Largest accepted `--log-segment-bytes`.
pub const MAX_LOG_SEGMENT_BYTES: u64 = 1 << 30;

/// Everything one `raftkv server` needs. Built from flags or a TOML file by the binary.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// This store's id (1-based), unique in the cluster.
    pub store_id: u64,
    pub data_dir: PathBuf,
    /// store id -> peer address (host:port) of every store, this one included.
    pub initial_cluster: Vec<(u64, String)>,
    /// Keys at which the key space is pre-split into regions at bootstrap (sorted).
    pub split_keys: Vec<Vec<u8>>,
    /// Milliseconds per Raft tick.
    pub tick_ms: u64,
    pub election_tick: u32,
    pub heartbeat_tick: u32,
    /// A request not answered within this time gets a Timeout error (its outcome unknown).
    pub request_timeout: Duration,
    /// Applied entries kept in a region's log before it is snapshotted and compacted.
    pub snapshot_threshold_entries: u64,
    /// ...or once this many payload bytes were applied since its last snapshot.
    pub snapshot_threshold_bytes: u64,
    /// Size of the log's segment files; the log's disk budget is
    /// `raft_log::Config::purge_rewrite_threshold_segments` (8) of them.
    pub log_segment_bytes: u64,
    /// When set, RESP clients must `AUTH` with it first.
    pub resp_password: Option<String>,
    /// How linearizable reads are confirmed: `Lease` (default; served by the leader while its
    /// lease holds, ReadIndex otherwise) or `Safe` (always ReadIndex).
    pub read_mode: raft::ReadMode,
    /// Replicas of each region and of the placement group at bootstrap (`--replicas`).
    pub replicas: u64,
    /// The cluster's id (`--cluster-id`); 0 = derived from the initial cluster and split
    /// keys at bootstrap (`placement::derive_cluster_id`).
    pub cluster_id: u64,
    /// This store joined a running cluster (`--join`): it bootstraps no regions, and
    /// `initial_cluster` is only where the other stores were when it started.
    pub joined: bool,
    /// How often the store reports itself and the regions it leads to placement.
    pub placement_heartbeat: Duration,
    /// A store not heard from for this long shows as down (placement's live view).
    pub store_down_after: Duration,
    /// This store's labels (`--labels zone=z1,rack=r2`), sent with its Join and every
    /// heartbeat; placement records them (see [`parse_labels`] for what is accepted).
    pub labels: BTreeMap<String, String>,
    /// The capacity reported to placement (`--capacity-bytes`); `None`: the size of the
    /// filesystem holding `data_dir`.
    pub capacity_bytes: Option<u64>,
    /// The automatic scheduler's settings (used while this store leads placement) and the
    /// store's snapshot bandwidth.
    pub scheduling: Scheduling,
}

/// What the automatic scheduler does (see `placement::scheduler`). Every store has these
/// settings; the store that leads placement schedules with its own, so where stores
/// disagree placement's value wins (the playground passes the same to every store).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scheduling {
    /// `--scheduler on|off`: off decides nothing automatically (hand verbs still work).
    pub enabled: bool,
    /// `--region-max-bytes`: a region larger than this is split near its middle.
    pub region_max_bytes: u64,
    /// `--region-split-qps`: a region serving more reads + writes per second than this for
    /// the scheduler's window is split where its sampled load divides (0 = never).
    pub region_split_qps: u64,
    /// `--store-down-timeout` (seconds): a store silent this long has its replicas
    /// re-created elsewhere.
    pub store_down_timeout: Duration,
    /// `--scheduler-quiet-secs`: a region changed by hand is left alone this long.
    pub quiet: Duration,
    /// `--snapshot-max-bytes-per-sec`: snapshot bytes this store sends, and receives, per
    /// second (0 = unlimited).
    pub snapshot_max_bytes_per_sec: u64,
}

impl Default for Scheduling {
    fn default() -> Scheduling {
        let d = placement::scheduler::ScheduleConfig::default();
        Scheduling {
            enabled: d.enabled,
            region_max_bytes: d.region_max_bytes,
            region_split_qps: d.region_split_qps,
            store_down_timeout: Duration::from_millis(d.store_down_timeout_ms),
            quiet: Duration::from_millis(d.quiet_ms),
            snapshot_max_bytes_per_sec: transport::DEFAULT_SNAPSHOT_MAX_BYTES_PER_SEC,
        }
    }
}

/// Smallest non-zero `--snapshot-max-bytes-per-sec` (the transport refuses rates that cannot
/// pass its queued snapshot frames within the receiver's idle timeout; 1 MiB/s is well
/// above that).
pub const MIN_SNAPSHOT_BYTES_PER_SEC: u64 = 1 << 20;

/// Smallest accepted `--region-max-bytes`: below this a region of a few keys would split.
pub const MIN_REGION_MAX_BYTES: u64 = 4 << 10;

impl Scheduling {
    /// The placement scheduler's settings for a cluster of `replicas` replicas per region
    /// whose stores heartbeat every `heartbeat`.
    pub fn schedule_config(
        &self,
        replicas: usize,
        heartbeat: Duration,
    ) -> placement::scheduler::ScheduleConfig {
        let d = placement::scheduler::ScheduleConfig::default();
        let ms = |t: Duration| u64::try_from(t.as_millis()).unwrap_or(u64::MAX);
        placement::scheduler::ScheduleConfig {
            enabled: self.enabled,
            replicas,
            region_max_bytes: self.region_max_bytes,
            region_split_qps: self.region_split_qps,
            store_down_timeout_ms: ms(self.store_down_timeout),
            quiet_ms: ms(self.quiet),
            // Windows shorter than a few heartbeats cannot be observed: each rate covers
            // one heartbeat interval.
            split_qps_window_ms: d.split_qps_window_ms.max(3 * ms(heartbeat)),
            merge_cold_ms: d.merge_cold_ms.max(10 * ms(heartbeat)),
            ..d
        }
    }

    /// Checks the settings; the error names the flag.
    pub fn validate(&self) -> Result<(), String> {
        if self.region_max_bytes < MIN_REGION_MAX_BYTES {
            return Err(format!(
                "--region-max-bytes must be at least {MIN_REGION_MAX_BYTES} (got {})",
                self.region_max_bytes
            ));
        }
        if self.snapshot_max_bytes_per_sec != 0
            && self.snapshot_max_bytes_per_sec < MIN_SNAPSHOT_BYTES_PER_SEC
        {
            return Err(format!(
                "--snapshot-max-bytes-per-sec must be 0 (unlimited) or at least {MIN_SNAPSHOT_BYTES_PER_SEC} (got {}): slower snapshot streams would be closed as idle",
                self.snapshot_max_bytes_per_sec
            ));
        }
        if self.store_down_timeout.is_zero() {
            return Err("--store-down-timeout must be at least 1 second".into());
        }
        Ok(())
    }
}

/// Default of [`ServerConfig::placement_heartbeat`]: every few seconds, like TiKV's
/// region heartbeats (60 s there for regions, 10 s for stores; ours are one message per
/// store carrying all its regions).
pub const DEFAULT_PLACEMENT_HEARTBEAT: Duration = Duration::from_secs(2);
/// Default of [`ServerConfig::store_down_after`]: five missed heartbeats.
pub const DEFAULT_STORE_DOWN_AFTER: Duration = Duration::from_secs(10);

/// Default of `--replicas`.
pub const DEFAULT_REPLICAS: u64 = 3;

impl ServerConfig {
    pub fn new(store_id: u64, data_dir: PathBuf, initial_cluster: Vec<(u64, String)>) -> Self {
        ServerConfig {
            store_id,
            data_dir,
            initial_cluster,
            split_keys: Vec::new(),
            tick_ms: 50,
            election_tick: store::DEFAULT_ELECTION_TICK,
            heartbeat_tick: store::DEFAULT_HEARTBEAT_TICK,
            request_timeout: Duration::from_secs(5),
            snapshot_threshold_entries: store::DEFAULT_SNAPSHOT_THRESHOLD_ENTRIES,
            snapshot_threshold_bytes: store::DEFAULT_SNAPSHOT_THRESHOLD_BYTES,
            log_segment_bytes: raft_log::DEFAULT_SEGMENT_SIZE_BYTES,
            resp_password: None,
            read_mode: store::DEFAULT_READ_MODE,
            replicas: DEFAULT_REPLICAS,
            cluster_id: 0,
            joined: false,
            placement_heartbeat: DEFAULT_PLACEMENT_HEARTBEAT,
            store_down_after: DEFAULT_STORE_DOWN_AFTER,
            labels: BTreeMap::new(),
            capacity_bytes: None,
            scheduling: Scheduling::default(),
        }
    }

    /// The cluster id this store bootstraps with (see [`ServerConfig::cluster_id`]).
    pub fn bootstrap_cluster_id(&self) -> u64 {
        if self.cluster_id != 0 {
            self.cluster_id
        } else {
            placement::derive_cluster_id(&self.initial_cluster, &self.split_keys, self.replicas)
        }
    }

    /// Checks the configuration; the error says what is wrong and how to fix it.
    pub fn validate(&self) -> Result<(), String> {
        if self.store_id == 0 {
            return Err("--id must be at least 1".into());
        }
        if !self
            .initial_cluster
            .iter()
            .any(|(id, _)| *id == self.store_id)
        {
            return Err(format!(
                "--initial-cluster does not name this store ({}); list every store as id=host:port",
                self.store_id
            ));
        }
        let mut ids: Vec<u64> = self.initial_cluster.iter().map(|(i, _)| *i).collect();
        ids.sort();
        ids.dedup();
        if ids.len() != self.initial_cluster.len() {
            return Err("--initial-cluster names a store id twice".into());
        }
        if self
            .initial_cluster
            .iter()
            .any(|(id, _)| *id == 0 || *id > store::MAX_STORE_ID)
        {
            return Err(format!(
                "store ids must be in 1..={} (allocated ids are store << 40 | n)",
                store::MAX_STORE_ID
            ));
        }
        let mut sorted = self.split_keys.clone();
        sorted.sort();
        sorted.dedup();
        if sorted != self.split_keys || self.split_keys.iter().any(|k| k.is_empty()) {
            return Err("split keys must be non-empty, distinct and sorted".into());
        }
        if !(1..=placement::MAX_REPLICAS as u64).contains(&self.replicas) {
            return Err(format!(
                "--replicas must be between 1 and {} (got {})",
                placement::MAX_REPLICAS as u64,
                self.replicas
            ));
        }
        if self.tick_ms == 0 || self.election_tick <= self.heartbeat_tick {
            return Err("tick_ms must be > 0 and election_tick > heartbeat_tick".into());
        }
        if !(MIN_LOG_SEGMENT_BYTES..=MAX_LOG_SEGMENT_BYTES).contains(&self.log_segment_bytes) {
            return Err(format!(
                "--log-segment-bytes must be between {MIN_LOG_SEGMENT_BYTES} and {MAX_LOG_SEGMENT_BYTES} (got {})",
                self.log_segment_bytes
            ));
        }
        // Labels set in code rather than parsed from a flag get the same checks.
        if self.labels.len() > MAX_LABELS {
            return Err(format!(
                "--labels: at most {MAX_LABELS} labels (got {})",
                self.labels.len()
            ));
        }
        for (k, v) in &self.labels {
            check_label(k, v)?;
        }
        if self.capacity_bytes == Some(0) {
            return Err(
                "--capacity-bytes must be at least 1 (leave it out to report the filesystem's size)"
                    .into(),
            );
        }
        self.scheduling.validate()
    }

    pub fn peer_addr_of(&self, store: u64) -> Option<&str> {
        self.initial_cluster
            .iter()
            .find(|(id, _)| *id == store)
            .map(|(_, a)| a.as_str())
    }
}

/// Parses etcd-style `1=127.0.0.1:7001,2=127.0.0.1:7002`.
pub fn parse_initial_cluster(s: &str) -> Result<Vec<(u64, String)>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("'{part}' is not id=host:port"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("'{id}' in '{part}' is not a store id"))?;
        let addr = addr.trim();
        addr.parse::<SocketAddr>()
            .map_err(|_| format!("'{addr}' in '{part}' is not host:port (use an IP address)"))?;
        out.push((id, addr.to_string()));
    }
    if out.is_empty() {
        return Err("the initial cluster is empty".into());
    }
    Ok(out)
}

/// Most labels a store may carry (`--labels`); placement holds no more either.
pub const MAX_LABELS: usize = placement::machine::MAX_LABELS;
/// Longest label key or value, in bytes (placement would take longer ones; short names keep
/// `store list` readable and a heartbeat small).
pub const MAX_LABEL_BYTES: usize = 64;

/// Parses `--labels`: `key=value` pairs separated by commas, e.g. `zone=z1,rack=r2`. A key
/// and a value are 1 to [`MAX_LABEL_BYTES`] of `A-Z a-z 0-9 . _ -`; at most [`MAX_LABELS`]
/// labels, each key once. The empty string is no labels. The error names the bad label.
pub fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("--labels: {part:?} is not key=value"))?;
        check_label(key, value)?;
        if out.insert(key.to_string(), value.to_string()).is_some() {
            return Err(format!("--labels: the key {key:?} is given twice"));
        }
        if out.len() > MAX_LABELS {
            return Err(format!("--labels: at most {MAX_LABELS} labels"));
        }
    }
    Ok(out)
}

/// Why `key=value` is not an acceptable label (see [`parse_labels`]).
fn check_label(key: &str, value: &str) -> Result<(), String> {
    let label = format!("{key}={value}");
    for (what, text) in [("key", key), ("value", value)] {
        if text.is_empty() {
            return Err(format!("--labels: {label:?} has an empty {what}"));
        }
        if text.len() > MAX_LABEL_BYTES {
            return Err(format!(
                "--labels: {label:?} has a {what} of {} bytes (at most {MAX_LABEL_BYTES})",
                text.len()
            ));
        }
        if let Some(c) = text
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(format!(
                "--labels: {label:?} has {c:?} in its {what} (only A-Z a-z 0-9 . _ - are allowed)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse() {
        let l = parse_labels("zone=z1, rack=r-2.a_b").unwrap();
        assert_eq!(
            l.into_iter().collect::<Vec<_>>(),
            vec![
                ("rack".to_string(), "r-2.a_b".to_string()),
                ("zone".to_string(), "z1".to_string())
            ]
        );
        assert!(parse_labels("").unwrap().is_empty());
        // Trailing commas are tolerated, like --initial-cluster's.
        assert_eq!(parse_labels("zone=z1,").unwrap().len(), 1);
        let sixteen: Vec<String> = (0..MAX_LABELS).map(|i| format!("k{i}=v")).collect();
        assert_eq!(parse_labels(&sixteen.join(",")).unwrap().len(), MAX_LABELS);
        let longest = "x".repeat(MAX_LABEL_BYTES);
        assert!(parse_labels(&format!("{longest}={longest}")).is_ok());
    }

    #[test]
    fn bad_labels_are_refused_naming_the_label() {
        let long = "x".repeat(MAX_LABEL_BYTES + 1);
        let (long_key, long_value) = (format!("{long}=v"), format!("k={long}"));
        let cases = [
            ("zone", "\"zone\" is not key=value"),
            ("zone=z1,rack", "\"rack\" is not key=value"),
            ("=z1", "\"=z1\" has an empty key"),
            ("zone=", "\"zone=\" has an empty value"),
            ("zone=z 1", "\"zone=z 1\" has ' ' in its value"),
            ("zo/ne=z1", "\"zo/ne=z1\" has '/' in its key"),
            ("zone=z=1", "\"zone=z=1\" has '=' in its value"),
            ("zone=zé", "has 'é' in its value"),
            (long_key.as_str(), "has a key of 65 bytes"),
            (long_value.as_str(), "has a value of 65 bytes"),
            ("zone=z1,zone=z2", "the key \"zone\" is given twice"),
        ];
        for (input, want) in cases {
            let e = parse_labels(input).unwrap_err();
            assert!(e.contains(want), "{input:?}: {e}");
            assert!(e.starts_with("--labels: "), "{input:?}: {e}");
        }
        let seventeen: Vec<String> = (0..=MAX_LABELS).map(|i| format!("k{i}=v")).collect();
        let e = parse_labels(&seventeen.join(",")).unwrap_err();
        assert!(e.contains("at most 16 labels"), "{e}");
    }

    #[test]
    fn validate_checks_labels_and_capacity_set_in_code() {
        let c = parse_initial_cluster("1=127.0.0.1:7001").unwrap();
        let mut cfg = ServerConfig::new(1, "/tmp/x".into(), c);
        cfg.labels = parse_labels("zone=z1").unwrap();
        cfg.capacity_bytes = Some(1 << 30);
        assert!(cfg.validate().is_ok());
        cfg.labels.insert("bad key".into(), "v".into());
        assert!(cfg.validate().unwrap_err().contains("bad key"));
        cfg.labels.remove("bad key");
        cfg.capacity_bytes = Some(0);
        assert!(cfg.validate().unwrap_err().contains("--capacity-bytes"));
    }

    #[test]
    fn initial_cluster_parses_and_rejects_garbage() {
        let c = parse_initial_cluster("1=127.0.0.1:7001, 2=127.0.0.1:7002").unwrap();
        assert_eq!(
            c,
            vec![(1, "127.0.0.1:7001".into()), (2, "127.0.0.1:7002".into())]
        );
        assert!(parse_initial_cluster("1:127.0.0.1:7001").is_err());
        assert!(parse_initial_cluster("x=127.0.0.1:7001").is_err());
        assert!(parse_initial_cluster("1=localhost").is_err());
        assert!(parse_initial_cluster("").is_err());
        let mut cfg = ServerConfig::new(3, "/tmp/x".into(), c);
        assert!(cfg
            .validate()
            .unwrap_err()
            .contains("does not name this store"));
        cfg.store_id = 1;
        cfg.split_keys = vec![b"b".to_vec(), b"a".to_vec()];
        assert!(cfg.validate().is_err());
        cfg.split_keys = vec![b"a".to_vec(), b"b".to_vec()];
        assert!(cfg.validate().is_ok());
    }

    /// Store ids are no longer limited to 1..=999 (issue 17): any id the id allocator can
    /// name is accepted, 0 and larger ones are refused.
    #[test]
    fn store_ids_up_to_the_allocators_limit_are_accepted() {
        let big = store::MAX_STORE_ID;
        let c =
            parse_initial_cluster(&format!("1000=127.0.0.1:7001,{big}=127.0.0.1:7002")).unwrap();
        assert!(ServerConfig::new(1000, "/tmp/x".into(), c.clone())
            .validate()
            .is_ok());
        assert!(ServerConfig::new(big, "/tmp/x".into(), c)
            .validate()
            .is_ok());
        for bad in [0, big + 1] {
            let c = parse_initial_cluster(&format!("{bad}=127.0.0.1:7001")).unwrap();
            let e = ServerConfig::new(bad, "/tmp/x".into(), c)
                .validate()
                .unwrap_err();
            assert!(
                e.contains("store ids must be in") || e.contains("at least 1"),
                "{bad}: {e}"
            );
        }
    }
}
