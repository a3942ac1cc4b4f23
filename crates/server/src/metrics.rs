//! Counters and histograms, exported in the Prometheus text format on `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Histogram bucket upper bounds, in seconds.
const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
];

#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; 12],
    overflow: AtomicU64,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        match BUCKETS.iter().position(|b| s <= *b) {
            Some(i) => self.counts[i].fetch_add(1, Ordering::Relaxed),
            None => self.overflow.fetch_add(1, Ordering::Relaxed),
        };
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let sep = if labels.is_empty() { "" } else { "," };
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let total = self.count.load(Ordering::Relaxed);
        let sep = if labels.is_empty() { "" } else { "," };
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {total}");
        let brace = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(
            out,
            "{name}_sum{brace} {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{brace} {total}");
    }
}

#[derive(Default)]
pub struct Metrics {
    pub proposals: AtomicU64,
    /// Requests this server sent on to the leader's store.
    pub forwarded: AtomicU64,
    pub leader_changes: AtomicU64,
    pub entries_applied: AtomicU64,
    pub write_rounds: AtomicU64,
    pub synced_rounds: AtomicU64,
    /// The log engine's group commits (one write syscall each) and fdatasyncs: with
    /// asynchronous writes several rounds share one.
    pub log_group_commits: AtomicU64,
    pub log_syncs: AtomicU64,
    pub snapshots_created: AtomicU64,
    pub snapshots_installed: AtomicU64,
    pub snapshots_for_log_space: AtomicU64,
    /// The log's reclamation (`Store::reclaim_log`).
    pub log_purges: AtomicU64,
    pub log_segments_deleted: AtomicU64,
    pub log_bytes_deleted: AtomicU64,
    pub log_bytes_rewritten: AtomicU64,
    pub fsync: Histogram,
    /// How long each snapshot made by this store held its store thread.
    pub snapshot_stall: Histogram,
    /// How long each snapshot took to serialize, and to write and sync, off the store thread.
    pub snapshot_serialize: Histogram,
    pub snapshot_write: Histogram,
    /// Of each snapshot received: first chunk to installed, and the install alone.
    pub snapshot_receive: Histogram,
    pub snapshot_install: Histogram,
    pub snapshot_chunks_received: AtomicU64,
    pub snapshot_transfers_dropped: AtomicU64,
    pub snapshot_receiving_bytes: AtomicU64,
    /// Snapshots being built now (a gauge).
    pub snapshots_building: AtomicU64,
    /// The transport's counters (`transport::TransportStats`), set once per tick.
    pub transport_sent: AtomicU64,
    pub transport_snapshot_sent: AtomicU64,
    pub transport_snapshot_bytes_sent: AtomicU64,
    pub transport_snapshot_throttled_ms: AtomicU64,
    pub transport_dropped_queue_full: AtomicU64,
    pub transport_dropped_unreachable: AtomicU64,
    /// What opening the log read at startup, and how long it took.
    pub log_recovery_bytes: AtomicU64,
    pub log_recovery_micros: AtomicU64,
    /// The store's data directory, measured on each scrape (`disk::usage`).
    pub data_dir: std::sync::OnceLock<std::path::PathBuf>,
    /// Per region: (commit index, applied index, term, is leader).
    pub regions: Mutex<std::collections::BTreeMap<u64, (u64, u64, u64, bool)>>,
    /// Request latency by command name.
    pub requests: Mutex<std::collections::BTreeMap<&'static str, std::sync::Arc<Histogram>>>,
}

impl Metrics {
    pub fn observe_fsync(&self, d: Duration) {
        self.fsync.observe(d);
    }

    pub fn set_store_stats(&self, s: &store::StoreStats) {
        self.entries_applied
            .store(s.entries_applied, Ordering::Relaxed);
        self.write_rounds.store(s.write_rounds, Ordering::Relaxed);
        self.synced_rounds.store(s.synced_rounds, Ordering::Relaxed);
        self.snapshots_created
            .store(s.snapshots_created, Ordering::Relaxed);
        self.snapshots_installed
            .store(s.snapshots_installed, Ordering::Relaxed);
        self.snapshots_for_log_space
            .store(s.snapshots_for_log_space, Ordering::Relaxed);
        self.snapshot_chunks_received
            .store(s.snapshot_chunks_received, Ordering::Relaxed);
        self.snapshot_transfers_dropped
            .store(s.snapshot_transfers_dropped, Ordering::Relaxed);
        self.snapshot_receiving_bytes
            .store(s.snapshot_receiving_bytes, Ordering::Relaxed);
        self.log_purges.store(s.log_purges, Ordering::Relaxed);
        self.log_segments_deleted
            .store(s.log_segments_deleted, Ordering::Relaxed);
        self.log_bytes_deleted
            .store(s.log_bytes_deleted, Ordering::Relaxed);
        self.log_bytes_rewritten
            .store(s.log_bytes_rewritten, Ordering::Relaxed);
    }

    pub fn set_recovery(&self, bytes_read: u64, took: Duration) {
        self.log_recovery_bytes.store(bytes_read, Ordering::Relaxed);
        self.log_recovery_micros
            .store(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn observe_snapshot_stall(&self, d: Duration) {
        self.snapshot_stall.observe(d);
    }

    pub fn observe_snapshot_build(&self, serialize: Duration, write: Duration) {
        self.snapshot_serialize.observe(serialize);
        self.snapshot_write.observe(write);
    }

    pub fn observe_snapshot_received(&self, transfer: Duration, install: Duration) {
        self.snapshot_receive.observe(transfer);
        self.snapshot_install.observe(install);
    }

    pub fn set_transport_stats(&self, s: &transport::TransportStats) {
        self.transport_sent.store(s.sent, Ordering::Relaxed);
        self.transport_snapshot_sent
            .store(s.snapshot_sent, Ordering::Relaxed);
        self.transport_snapshot_bytes_sent
            .store(s.snapshot_bytes_sent, Ordering::Relaxed);
        self.transport_snapshot_throttled_ms
            .store(s.snapshot_throttled_ms, Ordering::Relaxed);
        self.transport_dropped_queue_full
            .store(s.dropped_queue_full, Ordering::Relaxed);
        self.transport_dropped_unreachable
            .store(s.dropped_snapshot_unreachable, Ordering::Relaxed);
    }

    pub fn set_engine_stats(&self, s: &raft_log::Stats) {
        self.log_group_commits
            .store(s.group_commits, Ordering::Relaxed);
        self.log_syncs.store(s.syncs, Ordering::Relaxed);
    }

    pub fn set_regions(&self, status: &[store::RegionStatus]) {
        let mut m = self.regions.lock().unwrap_or_else(|e| e.into_inner());
        // `status` lists every replica the store holds: one destroyed since (moved away,
        // merged) must not linger on the page.
        m.clear();
        for st in status {
            m.insert(
                st.region.id.0,
                (
                    st.commit.0,
                    st.applied.0,
                    st.term.0,
                    st.role == raft::Role::Leader,
                ),
            );
        }
    }

    pub fn observe_request(&self, command: &'static str, d: Duration) {
        let h = {
            let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
            m.entry(command).or_default().clone()
        };
        h.observe(d);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters = [
            ("raftkv_proposals_total", &self.proposals),
            ("raftkv_forwarded_requests_total", &self.forwarded),
            ("raftkv_leader_changes_total", &self.leader_changes),
            ("raftkv_entries_applied_total", &self.entries_applied),
            ("raftkv_log_write_rounds_total", &self.write_rounds),
            ("raftkv_log_synced_rounds_total", &self.synced_rounds),
            ("raftkv_log_group_commits_total", &self.log_group_commits),
            ("raftkv_log_fdatasyncs_total", &self.log_syncs),
            ("raftkv_snapshots_created_total", &self.snapshots_created),
            (
                "raftkv_snapshots_installed_total",
                &self.snapshots_installed,
            ),
            (
                "raftkv_snapshots_for_log_space_total",
                &self.snapshots_for_log_space,
            ),
            (
                "raftkv_snapshot_chunks_received_total",
                &self.snapshot_chunks_received,
            ),
            (
                "raftkv_snapshot_transfers_dropped_total",
                &self.snapshot_transfers_dropped,
            ),
            ("raftkv_transport_messages_sent_total", &self.transport_sent),
            (
                "raftkv_transport_snapshot_chunks_sent_total",
                &self.transport_snapshot_sent,
            ),
            (
                "raftkv_transport_snapshot_bytes_sent_total",
                &self.transport_snapshot_bytes_sent,
            ),
            (
                "raftkv_transport_snapshot_throttled_ms_total",
                &self.transport_snapshot_throttled_ms,
            ),
            (
                "raftkv_transport_dropped_queue_full_total",
                &self.transport_dropped_queue_full,
            ),
            (
                "raftkv_transport_dropped_unreachable_total",
                &self.transport_dropped_unreachable,
            ),
            ("raftkv_log_purges_total", &self.log_purges),
            (
                "raftkv_log_segments_deleted_total",
                &self.log_segments_deleted,
            ),
            ("raftkv_log_bytes_reclaimed_total", &self.log_bytes_deleted),
            (
                "raftkv_log_bytes_rewritten_total",
                &self.log_bytes_rewritten,
            ),
        ];
        for (name, v) in counters {
            let _ = writeln!(
                out,
                "# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# TYPE raftkv_snapshot_receiving_bytes gauge\nraftkv_snapshot_receiving_bytes {}",
            self.snapshot_receiving_bytes.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# TYPE raftkv_snapshots_building gauge\nraftkv_snapshots_building {}",
            self.snapshots_building.load(Ordering::Relaxed)
        );
        {
            let m = self.regions.lock().unwrap_or_else(|e| e.into_inner());
            for (name, pick) in [
                ("raftkv_region_commit_index", 0usize),
                ("raftkv_region_applied_index", 1),
                ("raftkv_region_term", 2),
                ("raftkv_region_is_leader", 3),
            ] {
                let _ = writeln!(out, "# TYPE {name} gauge");
                for (region, v) in m.iter() {
                    let value = match pick {
                        0 => v.0,
                        1 => v.1,
                        2 => v.2,
                        _ => v.3 as u64,
                    };
                    let _ = writeln!(out, "{name}{{region=\"{region}\"}} {value}");
                }
            }
        }
        let _ = writeln!(
            out,
            "# TYPE raftkv_log_recovery_bytes gauge\nraftkv_log_recovery_bytes {}",
            self.log_recovery_bytes.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# TYPE raftkv_log_recovery_seconds gauge\nraftkv_log_recovery_seconds {}",
            self.log_recovery_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        if let Some(dir) = self.data_dir.get() {
            let u = crate::disk::usage(dir);
            let _ = writeln!(out, "# TYPE raftkv_disk_bytes gauge");
            for (kind, v) in [
                ("log", u.log_bytes),
                ("snapshots", u.snapshot_bytes),
                ("other", u.other_bytes),
            ] {
                let _ = writeln!(out, "raftkv_disk_bytes{{kind=\"{kind}\"}} {v}");
            }
            let _ = writeln!(
                out,
                "# TYPE raftkv_log_segments gauge\nraftkv_log_segments {}",
                u.log_segments
            );
        }
        let _ = writeln!(out, "# TYPE raftkv_fsync_seconds histogram");
        self.fsync.render(&mut out, "raftkv_fsync_seconds", "");
        let _ = writeln!(out, "# TYPE raftkv_snapshot_stall_seconds histogram");
        self.snapshot_stall
            .render(&mut out, "raftkv_snapshot_stall_seconds", "");
        let _ = writeln!(out, "# TYPE raftkv_snapshot_serialize_seconds histogram");
        self.snapshot_serialize
            .render(&mut out, "raftkv_snapshot_serialize_seconds", "");
        let _ = writeln!(out, "# TYPE raftkv_snapshot_write_seconds histogram");
        self.snapshot_write
            .render(&mut out, "raftkv_snapshot_write_seconds", "");
        let _ = writeln!(out, "# TYPE raftkv_snapshot_receive_seconds histogram");
        self.snapshot_receive
            .render(&mut out, "raftkv_snapshot_receive_seconds", "");
        let _ = writeln!(out, "# TYPE raftkv_snapshot_install_seconds histogram");
        self.snapshot_install
            .render(&mut out, "raftkv_snapshot_install_seconds", "");
        let _ = writeln!(out, "# TYPE raftkv_request_seconds histogram");
        let m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        for (cmd, h) in m.iter() {
            h.render(
                &mut out,
                "raftkv_request_seconds",
                &format!("command=\"{cmd}\""),
            );
        }
        out
    }
}

/// Appends the scheduler's operators by kind and outcome (`raftkv_scheduler_operators_total`;
/// counted on the store that led placement when they were decided, so sum over stores).
pub fn render_operators(
    out: &mut String,
    counts: &std::collections::BTreeMap<(String, String), u64>,
) {
    use std::fmt::Write;
    let _ = writeln!(out, "# TYPE raftkv_scheduler_operators_total counter");
    for ((kind, outcome), n) in counts {
        let _ = writeln!(
            out,
            "raftkv_scheduler_operators_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} {n}"
        );
    }
}
