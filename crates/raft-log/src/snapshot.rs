//! Snapshot files: one checksummed file per group, replaced atomically.
//!
//! ```text
//! file name: snap-{group:016x}-{index:016x}-{term:016x}.snap
//! header (48 B) = magic "RKVSNAP1" (8) | group u64 | index u64 | term u64 | data_len u64
//!                 | crc32c of data u32 | crc32c of the previous 44 header bytes u32
//! then data_len bytes of data
//! ```
//! Writing: temp file, fdatasync, rename, sync the directory, then delete older snapshots of
//! the group. A crash leaves either the old or the new snapshot (or both), never a partial
//! one under a final name. Reading verifies both checksums and returns an error, never data,
//! when they fail.

use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::format::{read_u32, read_u64};
use crate::fs::FileSystem;
use crate::GroupId;

const SNAPSHOT_MAGIC: [u8; 8] = *b"RKVSNAP1";
const SNAPSHOT_HEADER_BYTES: usize = 48;
const SNAPSHOT_SUFFIX: &str = ".snap";
const TEMP_SUFFIX: &str = ".tmp";
/// A snapshot being received from a leader ([`StreamedSnapshot`]); never read, removed when
/// its group opens.
const RECEIVING_SUFFIX: &str = ".recv";

/// A snapshot read back from disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    /// The group it belongs to.
    pub group: GroupId,
    /// Index of the last entry it covers.
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
    /// The state machine's serialized data.
    pub data: Bytes,
}

fn snapshot_name(group: GroupId, index: u64, term: u64) -> String {
    format!(
        "snap-{:016x}-{index:016x}-{term:016x}{SNAPSHOT_SUFFIX}",
        group.0
    )
}

fn parse_snapshot_name(name: &str) -> Option<(GroupId, u64, u64)> {
    let stem = name.strip_prefix("snap-")?.strip_suffix(SNAPSHOT_SUFFIX)?;
    let mut parts = stem.split('-');
    let group = u64::from_str_radix(parts.next()?, 16).ok()?;
    let index = u64::from_str_radix(parts.next()?, 16).ok()?;
    let term = u64::from_str_radix(parts.next()?, 16).ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((GroupId(group), index, term))
}

/// Durably writes the snapshot of `group` at (`index`, `term`) into `dir` and removes the
/// group's older snapshots. Returns the file's path.
pub fn write_snapshot(
    fs: &dyn FileSystem,
    dir: &Path,
    group: GroupId,
    index: u64,
    term: u64,
    data: &[u8],
) -> Result<PathBuf> {
    write_snapshot_parts(fs, dir, group, index, term, &[data])
}

/// [`write_snapshot`] of the concatenation of `parts`, without concatenating them: a region's
/// state is tens of MiB, and a copy of it (a fresh mapping, a page fault per 4 KiB) was part of
/// the time a snapshot stalls its store.
pub fn write_snapshot_parts(
    fs: &dyn FileSystem,
    dir: &Path,
    group: GroupId,
    index: u64,
    term: u64,
    parts: &[&[u8]],
) -> Result<PathBuf> {
    let prepared = prepare_snapshot_parts(fs, dir, group, index, term, parts)?;
    let path = publish_snapshot(fs, &prepared)?;
    remove_older_snapshots(fs, &prepared)?;
    Ok(path)
}

/// A snapshot file written and synced under its temporary name ([`prepare_snapshot_parts`]),
/// then published under its final name ([`publish_snapshot`]): a snapshot built on another
/// thread waits in that state until its owner commits it (the group's metadata names it) or
/// discards it ([`discard_snapshot`]). Readers of the committed snapshot ask for it by index
/// ([`read_snapshot_at`]), so a newer file beside it changes nothing for them; a crash before
/// the commit leaves a file newer than the metadata, which the group's owner may complete the
/// commit from (`GroupStorage::open`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedSnapshot {
    /// The group it belongs to.
    pub group: GroupId,
    /// Index of the last entry it covers.
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
    /// Bytes of the whole file (header and data).
    pub file_bytes: u64,
    dir: PathBuf,
    name: String,
}

impl PreparedSnapshot {
    /// The snapshot of `group` at (`index`, `term`) in `dir`, whose payload is `payload_len`
    /// bytes; creates `dir` if missing.
    fn new(
        fs: &dyn FileSystem,
        dir: &Path,
        group: GroupId,
        index: u64,
        term: u64,
        payload_len: u64,
    ) -> Result<PreparedSnapshot> {
        fs.create_dir_all(dir)
            .map_err(|error| Error::io("create directory", dir, error))?;
        Ok(PreparedSnapshot {
            group,
            index,
            term,
            file_bytes: SNAPSHOT_HEADER_BYTES as u64 + payload_len,
            dir: dir.to_path_buf(),
            name: snapshot_name(group, index, term),
        })
    }

    fn temp_path(&self) -> PathBuf {
        self.dir.join(format!("{}{TEMP_SUFFIX}", self.name))
    }

    fn receiving_path(&self) -> PathBuf {
        self.dir.join(format!("{}{RECEIVING_SUFFIX}", self.name))
    }
}

/// The first half of [`write_snapshot_parts`]: writes the file under its temporary name and
/// syncs it. On error the temporary file is removed (a full disk needs the space back) and
/// nothing else has changed, so a full disk here is not fatal to the caller.
pub fn prepare_snapshot_parts(
    fs: &dyn FileSystem,
    dir: &Path,
    group: GroupId,
    index: u64,
    term: u64,
    parts: &[&[u8]],
) -> Result<PreparedSnapshot> {
    let payload_len = parts.iter().map(|p| p.len() as u64).sum();
    let prepared = PreparedSnapshot::new(fs, dir, group, index, term, payload_len)?;
    let temp_path = prepared.temp_path();

    let crc = parts
        .iter()
        .fold(0, |crc, part| crc32c::crc32c_append(crc, part));
    let header = snapshot_header(group, index, term, payload_len, crc);

    let mut file = fs
        .create(&temp_path)
        .map_err(|error| Error::io("create", &temp_path, error))?;
    let written = file
        .write_all(&header)
        .and_then(|()| parts.iter().try_for_each(|part| file.write_all(part)))
        .map_err(|error| Error::io("write", &temp_path, error))
        .and_then(|()| {
            file.sync_data()
                .map_err(|error| Error::io("fdatasync", &temp_path, error))
        });
    drop(file);
    if let Err(error) = written {
        // The temporary file is never read: give its space back and report.
        let _ = fs.remove(&temp_path);
        return Err(error);
    }
    Ok(prepared)
}

/// A snapshot file written as its payload arrives (a snapshot received from a leader chunk
/// by chunk): the header goes first, with the payload's length and checksum as the sender
/// announced them, then each piece is appended while a running checksum is kept; `finish`
/// refuses a payload that is short, long or does not match, syncs the file and publishes it
/// ([`publish_snapshot`]). Memory: none beyond the caller's piece. The file lives under a
/// name of its own (`….snap.recv`), which nothing reads; a crash leaves it for
/// [`remove_receiving`] when the group opens again.
#[derive(Debug)]
pub struct StreamedSnapshot {
    prepared: PreparedSnapshot,
    file: Box<dyn crate::fs::WritableFile>,
    payload_len: u64,
    payload_crc: u32,
    written: u64,
    crc: u32,
}

impl StreamedSnapshot {
    /// Creates the file of `group`'s snapshot at (`index`, `term`) whose payload will be
    /// `payload_len` bytes with crc32c `payload_crc`.
    pub fn create(
        fs: &dyn FileSystem,
        dir: &Path,
        group: GroupId,
        index: u64,
        term: u64,
        payload_len: u64,
        payload_crc: u32,
    ) -> Result<StreamedSnapshot> {
        let prepared = PreparedSnapshot::new(fs, dir, group, index, term, payload_len)?;
        let path = prepared.receiving_path();
        let mut file = fs
            .create(&path)
            .map_err(|error| Error::io("create", &path, error))?;
        let header = snapshot_header(group, index, term, payload_len, payload_crc);
        if let Err(error) = file.write_all(&header) {
            drop(file);
            let _ = fs.remove(&path);
            return Err(Error::io("write", &path, error));
        }
        Ok(StreamedSnapshot {
            prepared,
            file,
            payload_len,
            payload_crc,
            written: 0,
            crc: 0,
        })
    }

    /// Appends the next piece of the payload. More than the announced length is refused.
    pub fn write(&mut self, piece: &[u8]) -> Result<()> {
        let path = self.prepared.receiving_path();
        if self.written + piece.len() as u64 > self.payload_len {
            return Err(Error::InvalidArgument(format!(
                "{}: {} payload bytes written, {} more would pass the announced {}",
                path.display(),
                self.written,
                piece.len(),
                self.payload_len
            )));
        }
        self.file
            .write_all(piece)
            .map_err(|error| Error::io("write", &path, error))?;
        self.written += piece.len() as u64;
        self.crc = crc32c::crc32c_append(self.crc, piece);
        Ok(())
    }

    /// Payload bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Checks length and checksum, syncs the file and publishes it under its final name. On
    /// error the file is removed.
    pub fn finish(mut self, fs: &dyn FileSystem) -> Result<PreparedSnapshot> {
        let path = self.prepared.receiving_path();
        let checked = if self.written != self.payload_len {
            Err(Error::InvalidArgument(format!(
                "{}: {} payload bytes written, {} announced",
                path.display(),
                self.written,
                self.payload_len
            )))
        } else if self.crc != self.payload_crc {
            Err(Error::corruption(
                &path,
                SNAPSHOT_HEADER_BYTES as u64,
                format!(
                    "received payload has crc32c {:#010x}, the sender announced {:#010x}",
                    self.crc, self.payload_crc
                ),
            ))
        } else {
            self.file
                .sync_data()
                .map_err(|error| Error::io("fdatasync", &path, error))
        };
        drop(self.file);
        let published = checked.and_then(|()| publish_from(fs, &self.prepared, &path));
        if let Err(error) = published {
            let _ = fs.remove(&path);
            return Err(error);
        }
        Ok(self.prepared)
    }

    /// Gives the transfer up and removes its file (best effort).
    pub fn discard(self, fs: &dyn FileSystem) {
        let path = self.prepared.receiving_path();
        drop(self.file);
        let _ = fs.remove(&path);
    }
}

/// Removes the files of snapshots `group` was receiving when its store stopped (a transfer
/// does not survive a restart: the leader starts it over).
pub fn remove_receiving(fs: &dyn FileSystem, dir: &Path, group: GroupId) -> Result<()> {
    let names = match fs.list_dir(dir) {
        Ok(names) => names,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(Error::io("list directory", dir, error)),
    };
    for name in names {
        let ours = name
            .strip_suffix(RECEIVING_SUFFIX)
            .and_then(parse_snapshot_name)
            .is_some_and(|(other, _, _)| other == group);
        if ours {
            let path = dir.join(&name);
            fs.remove(&path)
                .map_err(|error| Error::io("remove", &path, error))?;
        }
    }
    Ok(())
}

/// Removes every snapshot file (published, being written, being received) of the groups
/// `keep` says no to: a region destroyed on this store, once the write that cleaned its group
/// is durable, or at open the files of groups the log no longer has (a crash between the two).
/// Returns how many files went.
pub fn remove_group_snapshots(
    fs: &dyn FileSystem,
    dir: &Path,
    keep: &dyn Fn(GroupId) -> bool,
) -> Result<usize> {
    let names = match fs.list_dir(dir) {
        Ok(names) => names,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(error) => return Err(Error::io("list directory", dir, error)),
    };
    let mut removed = 0;
    for name in names {
        let base = name
            .strip_suffix(TEMP_SUFFIX)
            .or_else(|| name.strip_suffix(RECEIVING_SUFFIX))
            .unwrap_or(&name);
        if parse_snapshot_name(base).is_some_and(|(group, _, _)| !keep(group)) {
            let path = dir.join(&name);
            fs.remove(&path)
                .map_err(|error| Error::io("remove", &path, error))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The 48-byte header of a snapshot file.
fn snapshot_header(
    group: GroupId,
    index: u64,
    term: u64,
    payload_len: u64,
    payload_crc: u32,
) -> [u8; SNAPSHOT_HEADER_BYTES] {
    let mut header = [0u8; SNAPSHOT_HEADER_BYTES];
    header[..8].copy_from_slice(&SNAPSHOT_MAGIC);
    header[8..16].copy_from_slice(&group.0.to_le_bytes());
    header[16..24].copy_from_slice(&index.to_le_bytes());
    header[24..32].copy_from_slice(&term.to_le_bytes());
    header[32..40].copy_from_slice(&payload_len.to_le_bytes());
    header[40..44].copy_from_slice(&payload_crc.to_le_bytes());
    let header_crc = crc32c::crc32c(&header[..44]);
    header[44..48].copy_from_slice(&header_crc.to_le_bytes());
    header
}

/// Removes a prepared snapshot that will not be committed (a newer one got there first),
/// under whichever name it has. Best effort: a file left behind is removed by the group's
/// next committed snapshot.
pub fn discard_snapshot(fs: &dyn FileSystem, prepared: &PreparedSnapshot) {
    let _ = fs.remove(&prepared.temp_path());
    let _ = fs.remove(&prepared.dir.join(&prepared.name));
}

/// The second step of [`write_snapshot_parts`]: renames the prepared file to its final name
/// and syncs the directory, so the file survives a crash. Returns the final path.
pub fn publish_snapshot(fs: &dyn FileSystem, prepared: &PreparedSnapshot) -> Result<PathBuf> {
    publish_from(fs, prepared, &prepared.temp_path())
}

/// Renames `from` (a prepared or received file) to `prepared`'s final name and syncs the
/// directory. Returns the final path.
fn publish_from(fs: &dyn FileSystem, prepared: &PreparedSnapshot, from: &Path) -> Result<PathBuf> {
    let dir = prepared.dir.as_path();
    let final_path = dir.join(&prepared.name);
    fs.rename(from, &final_path)
        .map_err(|error| Error::io("rename", from, error))?;
    fs.sync_dir(dir)
        .map_err(|error| Error::io("sync directory", dir, error))?;
    Ok(final_path)
}

/// The last step, once the group's metadata names `kept` durably: deletes the group's older
/// snapshot files and older temporary ones (newer ones may belong to a snapshot being built
/// or committed meanwhile). The directory is not synced: a deleted file that a crash brings
/// back is older than the one kept, which is the one a reader picks.
pub fn remove_older_snapshots(fs: &dyn FileSystem, kept: &PreparedSnapshot) -> Result<()> {
    let dir = kept.dir.as_path();
    let group = kept.group;
    let kept_id = (kept.index, kept.term);
    let older = |name: &str| {
        parse_snapshot_name(name).is_some_and(|(other_group, index, term)| {
            other_group == group && index <= kept.index && (index, term) != kept_id
        })
    };
    for other in fs
        .list_dir(dir)
        .map_err(|error| Error::io("list directory", dir, error))?
    {
        let stale_temp = other.strip_suffix(TEMP_SUFFIX).is_some_and(older);
        if stale_temp || older(&other) {
            let path = dir.join(&other);
            fs.remove(&path)
                .map_err(|error| Error::io("remove", &path, error))?;
        }
    }
    Ok(())
}

/// Reads the latest snapshot of `group` in `dir`, if any. A damaged file is an
/// `Error::Corruption` naming it: the caller must fetch a new snapshot from a peer.
pub fn read_snapshot(
    fs: &dyn FileSystem,
    dir: &Path,
    group: GroupId,
) -> Result<Option<SnapshotFile>> {
    let names = match fs.list_dir(dir) {
        Ok(names) => names,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(Error::io("list directory", dir, error)),
    };
    let latest = names
        .into_iter()
        .filter_map(|name| {
            let (other_group, index, term) = parse_snapshot_name(&name)?;
            (other_group == group).then_some((index, term))
        })
        .max();
    let Some((index, term)) = latest else {
        return Ok(None);
    };
    read_snapshot_at(fs, dir, group, index, term).map(Some)
}

/// Where the payload of a snapshot file lies and what its header says about it, for reading
/// it a chunk at a time ([`snapshot_file_info`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFileInfo {
    /// The file.
    pub path: PathBuf,
    /// Offset of the payload in the file.
    pub payload_offset: u64,
    /// Length of the payload.
    pub payload_len: u64,
    /// crc32c of the whole payload.
    pub payload_crc: u32,
}

/// Reads and checks the header of the snapshot file of `group` at (`index`, `term`), without
/// its payload.
pub fn snapshot_file_info(
    fs: &dyn FileSystem,
    dir: &Path,
    group: GroupId,
    index: u64,
    term: u64,
) -> Result<SnapshotFileInfo> {
    let path = dir.join(snapshot_name(group, index, term));
    let mut header = [0u8; SNAPSHOT_HEADER_BYTES];
    fs.read_at(&path, 0, &mut header)
        .map_err(|error| Error::io("read", &path, error))?;
    if header[..8] != SNAPSHOT_MAGIC || crc32c::crc32c(&header[..44]) != read_u32(&header, 44) {
        return Err(Error::corruption(&path, 0, "bad snapshot header"));
    }
    if (
        read_u64(&header, 8),
        read_u64(&header, 16),
        read_u64(&header, 24),
    ) != (group.0, index, term)
    {
        return Err(Error::corruption(
            &path,
            0,
            "snapshot header disagrees with the file name",
        ));
    }
    let payload_len = read_u64(&header, 32);
    let file_len = fs
        .file_len(&path)
        .map_err(|error| Error::io("stat", &path, error))?;
    if file_len != SNAPSHOT_HEADER_BYTES as u64 + payload_len {
        return Err(Error::corruption(
            &path,
            32,
            format!("snapshot header claims {payload_len} data bytes, the file has {file_len} bytes in all"),
        ));
    }
    Ok(SnapshotFileInfo {
        path,
        payload_offset: SNAPSHOT_HEADER_BYTES as u64,
        payload_len,
        payload_crc: read_u32(&header, 40),
    })
}

/// Reads the snapshot of `group` at (`index`, `term`): the one the group's metadata names,
/// whatever newer file is being committed beside it. A missing or damaged file is an error.
pub fn read_snapshot_at(
    fs: &dyn FileSystem,
    dir: &Path,
    group: GroupId,
    index: u64,
    term: u64,
) -> Result<SnapshotFile> {
    let name = snapshot_name(group, index, term);
    let path = dir.join(name);
    let bytes = fs
        .read_all(&path)
        .map_err(|error| Error::io("read", &path, error))?;
    if bytes.len() < SNAPSHOT_HEADER_BYTES {
        return Err(Error::corruption(
            &path,
            0,
            format!(
                "snapshot header needs {SNAPSHOT_HEADER_BYTES} bytes, file has {}",
                bytes.len()
            ),
        ));
    }
    if bytes[..8] != SNAPSHOT_MAGIC {
        return Err(Error::corruption(
            &path,
            0,
            "not a snapshot file (bad magic)",
        ));
    }
    if crc32c::crc32c(&bytes[..44]) != read_u32(&bytes, 44) {
        return Err(Error::corruption(
            &path,
            0,
            "snapshot header checksum mismatch",
        ));
    }
    let header_group = read_u64(&bytes, 8);
    let header_index = read_u64(&bytes, 16);
    let header_term = read_u64(&bytes, 24);
    if (GroupId(header_group), header_index, header_term) != (group, index, term) {
        return Err(Error::corruption(
            &path,
            0,
            format!(
                "snapshot header says group {header_group} index {header_index} term {header_term}, the file name disagrees"
            ),
        ));
    }
    let data_len = read_u64(&bytes, 32);
    let available = (bytes.len() - SNAPSHOT_HEADER_BYTES) as u64;
    if data_len != available {
        return Err(Error::corruption(
            &path,
            32,
            format!("snapshot header claims {data_len} data bytes, the file has {available}"),
        ));
    }
    let data = &bytes[SNAPSHOT_HEADER_BYTES..];
    if crc32c::crc32c(data) != read_u32(&bytes, 40) {
        return Err(Error::corruption(
            &path,
            SNAPSHOT_HEADER_BYTES as u64,
            "snapshot data checksum mismatch",
        ));
    }
    Ok(SnapshotFile {
        group,
        index,
        term,
        data: Bytes::from(bytes).slice(SNAPSHOT_HEADER_BYTES..),
    })
}
