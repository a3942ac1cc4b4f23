//! The `FileSystem` boundary: every byte the engine reads or writes goes through it, so the
//! simulator and tests can substitute [`crate::FaultyFileSystem`].
//!
//! # To ensure correctness an implementation must
//! 1. make `WritableFile::write_all` write at the handle's position, right after everything
//!    written before (never in the middle of written data); past the position there is nothing
//!    or only the zeros of [`WritableFile::preallocate`], which writes overwrite;
//! 2. make everything written through a handle durable when `sync_data` returns `Ok`, including
//!    the file length (like `fdatasync`); `preallocate` is durable when it returns `Ok`;
//! 3. make directory changes (create, rename, remove) durable only when `sync_dir` of the
//!    parent directory returns `Ok`; the engine never relies on them earlier;
//! 4. report every failure, in particular of `sync_data` (the engine then poisons itself), and
//!    a full disk as `ENOSPC` (the engine then cuts the partial record off with `truncate`
//!    and retries later); after a failed `write_all` the position is where the write began;
//! 5. make `lock_exclusive` fail with `io::ErrorKind::WouldBlock` while another holder (of
//!    this or another process) holds the lock.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// An append-only handle on one file: writes go at its position, which starts at the end of
/// the file and only moves forward (or back with `truncate`).
pub trait WritableFile: Send + fmt::Debug {
    /// Writes `buf` at the position (the end of what was written) and moves past it.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes every byte written so far (and the file length) durable.
    fn sync_data(&mut self) -> io::Result<()>;
    /// Cuts the file to `len` bytes and moves the position there if it was further (not
    /// durable until `sync_data`).
    fn truncate(&mut self, len: u64) -> io::Result<()>;
    /// Makes the file `len` bytes long by adding zeros after its end, durably (like a write
    /// and `fdatasync`), without moving the position: later writes overwrite the zeros. Why:
    /// on ext4 the `fdatasync` of a write that grows a file also commits the journal (the new
    /// size and block allocation); overwriting allocated blocks does not: a 4 KiB write plus
    /// `fdatasync` took half the time alone and 47 % less with three writers on this
    /// project's disk (`bench/fsync-probe`, docs/BENCHMARKS.md).
    /// Does nothing when the file is already that long.
    fn preallocate(&mut self, len: u64) -> io::Result<()>;
}

/// Held while a directory lock is held; dropping it releases the lock.
pub trait LockGuard: Send + Sync + fmt::Debug {}

/// Every file operation the engine needs (see the module docs for the contract).
pub trait FileSystem: Send + Sync + fmt::Debug {
    /// Creates `dir` and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Creates `path` empty (truncating an existing file) and opens it for appending.
    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>>;
    /// Opens an existing file for appending at its end.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>>;
    /// Reads the whole file.
    fn read_all(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// The current length of the file in bytes.
    fn file_len(&self, path: &Path) -> io::Result<u64>;
    /// Whether `path` exists.
    fn exists(&self, path: &Path) -> bool;
    /// Atomically renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// The names (not paths) of the files in `dir`.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Makes the directory's entries (creates, renames, removes) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive advisory lock on `path` (created if missing), without blocking.
    fn lock_exclusive(&self, path: &Path) -> io::Result<Box<dyn LockGuard>>;
}

/// The real file system (`std::fs`, `fdatasync`, `flock`).
#[derive(Debug, Default, Clone, Copy)]
pub struct StdFileSystem;

#[derive(Debug)]
struct StdWritableFile {
    file: File,
    /// Where the next write goes (the file's cursor; kept here to avoid asking the kernel).
    position: u64,
}

/// Zeros are written in pieces of this size (bounded memory for any preallocation length).
const ZERO_CHUNK_BYTES: usize = 1 << 20;

impl WritableFile for StdWritableFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        if let Err(error) = self.file.write_all(buf) {
            // Part of `buf` may have been written (ENOSPC midway): put the cursor back where
            // the write began, so that a `truncate` there and the next write start clean.
            self.file.seek(SeekFrom::Start(self.position))?;
            return Err(error);
        }
        self.position += buf.len() as u64;
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        if self.position >= len {
            self.file.seek(SeekFrom::Start(len))?;
            self.position = len;
        }
        Ok(())
    }

    fn preallocate(&mut self, len: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut at = self.file.metadata()?.len().max(self.position);
        if at >= len {
            return Ok(());
        }
        let zeros = vec![0u8; ZERO_CHUNK_BYTES];
        while at < len {
            let n = usize::try_from(len - at).map_or(ZERO_CHUNK_BYTES, |n| n.min(ZERO_CHUNK_BYTES));
            // Positional writes leave the cursor where the next record goes.
            self.file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        self.file.sync_data()
    }
}

#[derive(Debug)]
struct StdLockGuard {
    // Closing the file releases the flock; kept only for its Drop.
    _file: File,
}

impl LockGuard for StdLockGuard {}

impl FileSystem for StdFileSystem {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)?;
        // O_APPEND is not used: writes must go at the position, before preallocated zeros.
        Ok(Box::new(StdWritableFile { file, position: 0 }))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let mut file = OpenOptions::new().write(true).open(path)?;
        let position = file.seek(SeekFrom::End(0))?;
        Ok(Box::new(StdWritableFile { file, position }))
    }

    fn read_all(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut file = File::open(path)?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        Ok(buf)
    }

    fn read_at(&self, path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        File::open(path)?.read_exact_at(buf, offset)
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        Ok(std::fs::metadata(path)?.len())
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                if let Some(name) = entry.file_name().to_str() {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn lock_exclusive(&self, path: &Path) -> io::Result<Box<dyn LockGuard>> {
        use fs2::FileExt;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)?;
        // flock is per open file description, so a second open in the same process conflicts
        // too, which is what we want.
        file.try_lock_exclusive().map_err(|error| {
            if error.kind() == io::ErrorKind::WouldBlock
                || error.raw_os_error() == Some(libc::EWOULDBLOCK)
            {
                io::Error::new(io::ErrorKind::WouldBlock, error.to_string())
            } else {
                error
            }
        })?;
        Ok(Box::new(StdLockGuard { _file: file }))
    }
}

/// The parent directory of `path` (`.` for a bare name).
pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
