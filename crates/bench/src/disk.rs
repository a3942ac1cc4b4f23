//! The disk's own write + `fdatasync` latency: the floor under any durable write, measured
//! the way the log engine writes (append a small record, then fdatasync).

use crate::report::Latency;
use hdrhistogram::Histogram;
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::Instant;

/// Most syncs one probe runs.
pub const MAX_SYNCS: u64 = 1_000_000;

/// Result of [`probe`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct DiskReport {
    pub dir: String,
    pub syncs: u64,
    pub record_bytes: usize,
    pub syncs_per_sec: f64,
    pub latency: Latency,
}

/// Appends `record_bytes` and fdatasyncs, `syncs` times, in a temporary file under `dir`
/// (removed afterwards).
pub fn probe(dir: &Path, syncs: u64, record_bytes: usize) -> Result<DiskReport, String> {
    if syncs == 0 || syncs > MAX_SYNCS {
        return Err(format!("--syncs must be in 1..={MAX_SYNCS}"));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join(format!(".raftkv-disk-probe-{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let record = vec![0xA5u8; record_bytes];
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    let start = Instant::now();
    let mut result = Ok(());
    for _ in 0..syncs {
        let t0 = Instant::now();
        if let Err(e) = file.write_all(&record) {
            result = Err(format!("write: {e}"));
            break;
        }
        // SAFETY: fdatasync on a file descriptor we own and keep open.
        if unsafe { libc::fdatasync(file.as_raw_fd()) } != 0 {
            result = Err(format!("fdatasync: {}", std::io::Error::last_os_error()));
            break;
        }
        hist.saturating_record(t0.elapsed().as_micros().max(1) as u64);
    }
    let elapsed = start.elapsed();
    drop(file);
    let _ = std::fs::remove_file(&path);
    result?;
    Ok(DiskReport {
        dir: dir.display().to_string(),
        syncs,
        record_bytes,
        syncs_per_sec: syncs as f64 / elapsed.as_secs_f64().max(1e-9),
        latency: crate::run::latency_of(&hist),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_measures_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let r = probe(dir.path(), 20, 512).unwrap();
        assert_eq!(r.syncs, 20);
        assert!(r.latency.p50_ms > 0.0 && r.latency.max_ms >= r.latency.p50_ms);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(probe(dir.path(), 0, 512).is_err());
    }
}
