//! What a store's data directory holds on disk, by kind, as `du` counts it (allocated
//! blocks, so a preallocated segment counts whole): for `/metrics` and `raftkv status`; and
//! the size of the filesystem holding it (the capacity a store reports to placement).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Bytes on disk by kind, and file counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// The log engine's segment files (and its zeroed spare, lock file).
    pub log_bytes: u64,
    /// Segment files (`*.rlog`).
    pub log_segments: u64,
    /// Snapshot files (and any temporary one being written).
    pub snapshot_bytes: u64,
    pub snapshot_files: u64,
    /// Everything else in the directory (the store's id, lock files, ...).
    pub other_bytes: u64,
}

impl DiskUsage {
    pub fn total_bytes(&self) -> u64 {
        self.log_bytes + self.snapshot_bytes + self.other_bytes
    }
}

/// Walks `data_dir` (two levels: `log/`, `snap/` and loose files). A file that vanishes
/// while being looked at (a purge, a snapshot replacing another) is skipped.
pub fn usage(data_dir: &Path) -> DiskUsage {
    let mut usage = DiskUsage::default();
    let Ok(top) = std::fs::read_dir(data_dir) else {
        return usage;
    };
    for entry in top.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        let name = entry.file_name();
        if !meta.is_dir() {
            usage.other_bytes += on_disk(&meta);
            continue;
        }
        let Ok(inner) = std::fs::read_dir(entry.path()) else {
            continue;
        };
        for file in inner.flatten() {
            let Ok(meta) = file.metadata() else { continue };
            let bytes = on_disk(&meta);
            match name.to_str() {
                Some("log") => {
                    usage.log_bytes += bytes;
                    if file
                        .file_name()
                        .to_string_lossy()
                        .ends_with(raft_log::engine::SEGMENT_SUFFIX)
                    {
                        usage.log_segments += 1;
                    }
                }
                Some("snap") => {
                    usage.snapshot_bytes += bytes;
                    usage.snapshot_files += 1;
                }
                _ => usage.other_bytes += bytes,
            }
        }
    }
    usage
}

/// Allocated bytes, as `du` reports them.
fn on_disk(meta: &std::fs::Metadata) -> u64 {
    meta.blocks() * 512
}

/// The total size in bytes of the filesystem holding `dir` (as `df` shows it), or of the one
/// holding its nearest existing ancestor (a data directory not created yet); 0 when none
/// can be asked. Stable while the filesystem is not resized, so placement records it once.
pub fn filesystem_bytes(dir: &Path) -> u64 {
    dir.ancestors()
        .map(|p| {
            // `Path::ancestors` of a relative path ends with "": the working directory.
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .find_map(statvfs_total_bytes)
        .unwrap_or(0)
}

/// `statvfs(2)` of `path`: blocks times fragment size, `None` on any error.
fn statvfs_total_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a NUL-terminated string that lives across the call, and `st`
    // points to writable memory the size and alignment of a `statvfs`, which the call only
    // writes. Nothing else holds either pointer.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled in the whole struct.
    let st = unsafe { st.assume_init() };
    // The field types are u64 on 64-bit Linux but narrower on some targets.
    #[allow(clippy::unnecessary_cast)]
    let (blocks, fragment) = (st.f_blocks as u64, st.f_frsize as u64);
    Some(blocks.saturating_mul(fragment))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_kind_and_missing_dirs_are_zero() {
        let dir = std::env::temp_dir().join(format!("raftkv-disk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(usage(&dir), DiskUsage::default());
        std::fs::create_dir_all(dir.join("log")).unwrap();
        std::fs::create_dir_all(dir.join("snap")).unwrap();
        std::fs::write(dir.join("log/0000000000000001.rlog"), vec![1u8; 64 << 10]).unwrap();
        std::fs::write(dir.join("log/LOCK"), b"").unwrap();
        std::fs::write(dir.join("snap/snap-1-5-1.snap"), vec![2u8; 16 << 10]).unwrap();
        std::fs::write(dir.join("store_id"), b"1").unwrap();
        let u = usage(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(u.log_segments, 1);
        assert_eq!(u.snapshot_files, 1);
        assert!(u.log_bytes >= 64 << 10, "{u:?}");
        assert!(
            u.snapshot_bytes >= 16 << 10 && u.snapshot_bytes < 64 << 10,
            "{u:?}"
        );
        assert_eq!(
            u.total_bytes(),
            u.log_bytes + u.snapshot_bytes + u.other_bytes
        );
    }

    #[test]
    fn the_filesystem_size_is_found_from_the_nearest_existing_ancestor() {
        let tmp = std::env::temp_dir();
        let size = filesystem_bytes(&tmp);
        assert!(size > 0, "statvfs of {}", tmp.display());
        // A data directory not created yet lives on its parent's filesystem.
        assert_eq!(filesystem_bytes(&tmp.join("raftkv-not-there/store1")), size);
        assert!(filesystem_bytes(Path::new("relative-not-there")) > 0);
    }
}
