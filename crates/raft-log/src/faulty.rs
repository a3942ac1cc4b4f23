//! `FaultyFileSystem`: an in-memory, deterministic file system that models what a crash does
//! to a real disk, for tests and the cluster simulator.
//!
//! # Crash model
//! * Each file has its *durable* contents (as of its last `sync_data`) and its current
//!   contents. Writes only append, so the unsynced part is a suffix of the file.
//! * [`FaultyFileSystem::crash`] keeps only the durable contents. [`crash_tearing`] keeps a
//!   prefix of the unsynced bytes of one file (a torn write: the disk wrote some sectors),
//!   [`crash_random`] tears every file's unsynced bytes in a seeded random way, by one of the
//!   [`TornWrite`] modes allowed with [`set_torn_writes`] (default: a prefix only):
//!   - [`TornWrite::Prefix`]: a random prefix of the unsynced bytes survives (the disk wrote
//!     its sectors in order and stopped);
//!   - [`TornWrite::Reordered`]: the disk wrote the unsynced sectors out of order: the
//!     sectors (of [`SECTOR_BYTES`], aligned to the file) before a random one survive, that
//!     one is lost (it reads as zeros, as a hole or preallocated space does), and a random
//!     non-empty subset of the later ones survives (the lost ones among them read as zeros);
//!     the file ends with the last surviving sector;
//!   - [`TornWrite::Garbage`]: a random prefix survives, then the sectors from there to a
//!     random later sector end (at most the end of the unsynced bytes) hold random bytes (a
//!     disk that lost power while writing them, or stale contents).
//!
//!   Only unsynced bytes are ever changed: what `sync_data` made durable survives any crash.
//! * `preallocate` adds durable zeros after a file's written bytes; writes overwrite them
//!   (in this model: written bytes are a prefix, the rest of the file reads as zeros), and a
//!   crash keeps the zeros wherever the written bytes were lost.
//! * Directory entries (create, rename, remove) are durable only after `sync_dir` of their
//!   parent directory; a crash reverts every later change: a created but unsynced file
//!   disappears (even if its data was fsynced), a removed one comes back with its durable
//!   contents, a rename is undone. This is stricter than ext4 with its ordered journal, on
//!   purpose.
//! * A crash drops all locks (the process died) and makes every open handle stale: using it
//!   returns an error, as the "old process" must not write after its death.
//! * [`FaultyFileSystem::flip_bit`] damages durable and current contents alike (bit rot).
//! * [`FaultyFileSystem::fail_next`] makes the next operation of a kind fail (once).
//! * [`FaultyFileSystem::set_capacity`] makes the disk hold at most that many bytes (over
//!   every existing file, written bytes and preallocated zeros): a write or preallocation
//!   that would go past it stores what fits and fails with `ENOSPC`, as a full disk does.
//!
//! [`crash_tearing`]: FaultyFileSystem::crash_tearing
//! [`crash_random`]: FaultyFileSystem::crash_random
//! [`set_torn_writes`]: FaultyFileSystem::set_torn_writes

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::fs::{parent_dir, FileSystem, LockGuard, WritableFile};

/// Kinds of operation for which a failure can be injected with
/// [`FaultyFileSystem::fail_next`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    /// `WritableFile::write_all` (nothing is written).
    Write,
    /// `WritableFile::sync_data` (nothing becomes durable).
    Sync,
    /// `FileSystem::sync_dir`.
    SyncDir,
    /// `FileSystem::create`.
    Create,
    /// `FileSystem::rename`.
    Rename,
    /// `FileSystem::remove`.
    Remove,
}

/// The unit a disk writes atomically; [`TornWrite::Reordered`] and [`TornWrite::Garbage`] work
/// in whole sectors of the file (the first and last unsynced ones may be partial).
pub const SECTOR_BYTES: usize = 512;

/// How a crash tears a file's unsynced bytes (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TornWrite {
    /// A prefix of the unsynced bytes survives.
    Prefix,
    /// Unsynced sectors persisted out of order: an earlier one lost (zeros), later ones kept.
    Reordered,
    /// A prefix survives, then sectors of random bytes.
    Garbage,
}

impl TornWrite {
    /// Every mode.
    pub const ALL: [TornWrite; 3] = [TornWrite::Prefix, TornWrite::Reordered, TornWrite::Garbage];
}

/// What one crash did to the unsynced bytes of the files, for reports and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TearCounts {
    /// Files whose unsynced bytes were torn to a strict, non-empty prefix.
    pub prefix: u64,
    /// Files that kept a later sector while losing an earlier one.
    pub reordered: u64,
    /// Files that got garbage after their surviving bytes.
    pub garbage: u64,
    /// Files with unsynced bytes that a torn crash (`crash_random`, `crash_torn`) tore, in
    /// any mode, and those of them whose unsynced bytes spanned at least two sectors (only
    /// those can be reordered): the chances each mode had.
    pub torn_files: u64,
    /// See `torn_files`.
    pub multi_sector_files: u64,
}

#[derive(Debug, Default, Clone)]
struct Inode {
    data: Vec<u8>,
    /// `data[..synced_len]` is durable, unless `shadow` holds the durable contents (after a
    /// truncation below `synced_len` that was not yet synced).
    synced_len: usize,
    shadow: Option<Vec<u8>>,
    /// The file is at least this long, reading zeros past `data` (`preallocate`).
    alloc: usize,
    /// `alloc` as of the last sync (a truncation below it is not durable before a sync).
    durable_alloc: usize,
}

impl Inode {
    /// What a reader sees: the written bytes, then preallocated zeros.
    fn visible(&self) -> std::borrow::Cow<'_, [u8]> {
        if self.alloc <= self.data.len() {
            return std::borrow::Cow::Borrowed(&self.data);
        }
        let mut bytes = self.data.clone();
        bytes.resize(self.alloc, 0);
        std::borrow::Cow::Owned(bytes)
    }

    fn visible_len(&self) -> usize {
        self.data.len().max(self.alloc)
    }

    /// What `sync_data` (and `preallocate`, which syncs) makes of it: all of it durable.
    fn mark_synced(&mut self) {
        self.shadow = None;
        self.synced_len = self.data.len();
        self.durable_alloc = self.alloc;
    }

    fn durable(&self) -> &[u8] {
        match &self.shadow {
            Some(shadow) => shadow,
            None => &self.data[..self.synced_len],
        }
    }

    fn unsynced_suffix(&self) -> &[u8] {
        match &self.shadow {
            // After an unsynced truncation the current contents are not an extension of the
            // durable ones; a crash keeps the durable ones only.
            Some(_) => &[],
            None => &self.data[self.synced_len..],
        }
    }
}

#[derive(Debug, Clone)]
struct State {
    /// Incremented by every crash; handles of an older generation are dead.
    generation: u64,
    next_inode: u64,
    inodes: HashMap<u64, Inode>,
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    locks: BTreeMap<PathBuf, u64>,
    rng: u64,
    failures: Vec<FaultOp>,
    sync_count: u64,
    write_count: u64,
    /// Modes `crash_random` draws from.
    torn_writes: Vec<TornWrite>,
    /// Totals over every crash so far.
    tears: TearCounts,
    /// The files the last crash tore: path, offset of their first unsynced byte, mode.
    last_tears: Vec<(PathBuf, u64, TornWrite)>,
    /// Bytes the disk holds at most (`set_capacity`); `None`: unlimited.
    capacity: Option<u64>,
    /// `ENOSPC` failures returned so far.
    no_space_failures: u64,
    /// Operations whose next call fails with `ENOSPC` (`fail_next_no_space`).
    no_space_next: Vec<FaultOp>,
}

impl State {
    /// Bytes in use: every named file's length (written bytes or preallocation).
    fn used_bytes(&self) -> u64 {
        self.names
            .values()
            .filter_map(|id| self.inodes.get(id))
            .map(|inode| inode.visible_len() as u64)
            .sum()
    }

    /// How far the file `inode` may grow: its current length plus the free space.
    fn growth_limit(&self, inode: u64) -> usize {
        let Some(capacity) = self.capacity else {
            return usize::MAX;
        };
        let own = self.inodes.get(&inode).map_or(0, Inode::visible_len);
        let free = capacity.saturating_sub(self.used_bytes());
        own.saturating_add(usize::try_from(free).unwrap_or(usize::MAX))
    }

    fn take_failure(&mut self, op: FaultOp) -> io::Result<()> {
        if let Some(position) = self.failures.iter().position(|failure| *failure == op) {
            self.failures.remove(position);
            return Err(io::Error::other(format!("injected {op:?} failure")));
        }
        if let Some(position) = self.no_space_next.iter().position(|failure| *failure == op) {
            self.no_space_next.remove(position);
            self.no_space_failures += 1;
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }

    fn inode_of(&self, path: &Path) -> io::Result<u64> {
        self.names.get(path).copied().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} does not exist", path.display()),
            )
        })
    }

    fn next_random(&mut self) -> u64 {
        // splitmix64: tiny, deterministic, good enough for choosing crash points.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Power loss: `tear` gets each file's unsynced bytes (and the file offset where they
    /// start) and returns what of them reaches the disk.
    fn crash(&mut self, mut tear: impl FnMut(&Path, &[u8], usize, &mut State) -> Vec<u8>) {
        self.generation += 1;
        self.locks.clear();
        self.last_tears.clear();
        self.names = self.durable_names.clone();
        let live: Vec<(PathBuf, u64)> = self
            .names
            .iter()
            .map(|(path, inode)| (path.clone(), *inode))
            .collect();
        let mut survivors = HashMap::new();
        for (path, id) in live {
            if survivors.contains_key(&id) {
                continue;
            }
            let Some(inode) = self.inodes.get(&id) else {
                continue;
            };
            let unsynced = inode.unsynced_suffix().to_vec();
            let mut data = inode.durable().to_vec();
            let alloc = inode.durable_alloc;
            let start = data.len();
            let kept = if unsynced.is_empty() {
                Vec::new()
            } else {
                tear(&path, &unsynced, start, self)
            };
            data.extend_from_slice(&kept);
            let synced_len = data.len();
            survivors.insert(
                id,
                Inode {
                    data,
                    synced_len,
                    shadow: None,
                    alloc,
                    durable_alloc: alloc,
                },
            );
        }
        self.inodes = survivors;
    }

    /// Below `n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next_random() % n as u64) as usize
    }

    /// What survives of `unsynced` (starting at file offset `start`) under `mode`; counts
    /// the tear.
    fn tear(&mut self, path: &Path, mode: TornWrite, unsynced: &[u8], start: usize) -> Vec<u8> {
        self.last_tears
            .push((path.to_path_buf(), start as u64, mode));
        let len = unsynced.len();
        // Sector boundaries inside the unsynced bytes: [bounds[k], bounds[k + 1]) is sector k.
        let mut bounds = vec![0];
        let mut at = (start / SECTOR_BYTES + 1) * SECTOR_BYTES - start;
        while at < len {
            bounds.push(at);
            at += SECTOR_BYTES;
        }
        bounds.push(len);
        let sectors = bounds.len() - 1;
        self.tears.torn_files += 1;
        self.tears.multi_sector_files += u64::from(sectors >= 2);
        match mode {
            TornWrite::Reordered if sectors >= 2 => {
                let lost = self.below(sectors - 1);
                let mut kept = unsynced[..bounds[lost]].to_vec();
                kept.resize(bounds[lost + 1], 0);
                // A non-empty subset of the later sectors persisted.
                let later = sectors - lost - 1;
                let mask = 1 + self.below((1usize << later.min(16)) - 1);
                let last_kept = lost + 1 + (usize::BITS - 1 - mask.leading_zeros()) as usize;
                for k in lost + 1..=last_kept {
                    let range = bounds[k]..bounds[k + 1];
                    if (mask >> (k - lost - 1)) & 1 == 1 {
                        kept.extend_from_slice(&unsynced[range]);
                    } else {
                        kept.resize(range.end, 0);
                    }
                }
                self.tears.reordered += 1;
                kept
            }
            TornWrite::Garbage => {
                let cut = self.below(len);
                let sector_of_cut = bounds.partition_point(|b| *b <= cut) - 1;
                let end_sector = sector_of_cut + self.below(sectors - sector_of_cut);
                let end = bounds[end_sector + 1];
                let mut kept = unsynced[..cut].to_vec();
                while kept.len() < end {
                    let word = self.next_random().to_le_bytes();
                    let room = (end - kept.len()).min(8);
                    kept.extend_from_slice(&word[..room]);
                }
                self.tears.garbage += 1;
                kept
            }
            // A prefix (also what a reordering of a single sector amounts to).
            _ => {
                let keep = self.below(len + 1);
                if keep > 0 && keep < len {
                    self.tears.prefix += 1;
                }
                unsynced[..keep].to_vec()
            }
        }
    }
}

/// The in-memory fault-injecting file system (see the module docs for its crash model).
/// Cloning it gives another handle on the same disk.
#[derive(Clone)]
pub struct FaultyFileSystem {
    state: Arc<Mutex<State>>,
    sync_delay: Arc<Mutex<Duration>>,
}

impl fmt::Debug for FaultyFileSystem {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("FaultyFileSystem")
    }
}

impl FaultyFileSystem {
    /// An empty disk; `seed` drives every random choice ([`FaultyFileSystem::crash_random`]).
    pub fn new(seed: u64) -> FaultyFileSystem {
        FaultyFileSystem {
            state: Arc::new(Mutex::new(State {
                generation: 0,
                next_inode: 1,
                inodes: HashMap::new(),
                names: BTreeMap::new(),
                durable_names: BTreeMap::new(),
                locks: BTreeMap::new(),
                rng: seed,
                failures: Vec::new(),
                sync_count: 0,
                write_count: 0,
                torn_writes: vec![TornWrite::Prefix],
                tears: TearCounts::default(),
                last_tears: Vec::new(),
                capacity: None,
                no_space_failures: 0,
                no_space_next: Vec::new(),
            })),
            sync_delay: Arc::new(Mutex::new(Duration::ZERO)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock can only come from a bug in this file; the state is
        // still usable for the remaining assertions of the test that panicked.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes every `sync_data` sleep this long (outside any lock), to emulate a real disk's
    /// latency, e.g. to observe group commit.
    pub fn set_sync_delay(&self, delay: Duration) {
        *self.sync_delay.lock().unwrap_or_else(|p| p.into_inner()) = delay;
    }

    /// An independent copy of this disk as it is now (durable and unsynced contents, directory
    /// state); locks are not copied. Lets a test try many crash points from one state.
    pub fn fork(&self) -> FaultyFileSystem {
        let mut state = self.lock().clone();
        state.locks.clear();
        let delay = *self.sync_delay.lock().unwrap_or_else(|p| p.into_inner());
        FaultyFileSystem {
            state: Arc::new(Mutex::new(state)),
            sync_delay: Arc::new(Mutex::new(delay)),
        }
    }

    /// Simulates power loss: every unsynced byte and directory change is lost.
    pub fn crash(&self) {
        self.lock().crash(|_, _, _, _| Vec::new());
    }

    /// Simulates power loss during a write to `path`: the first `keep_unsynced_bytes` of its
    /// unsynced bytes reach the disk (a torn write); everything else unsynced is lost.
    pub fn crash_tearing(&self, path: &Path, keep_unsynced_bytes: usize) {
        let target = path.to_path_buf();
        self.lock().crash(|file, unsynced, _, _| {
            if file == target {
                unsynced[..keep_unsynced_bytes.min(unsynced.len())].to_vec()
            } else {
                Vec::new()
            }
        });
    }

    /// The torn-write modes [`FaultyFileSystem::crash_random`] draws from (each crash, each
    /// file: one of them, uniformly). Default: [`TornWrite::Prefix`] only.
    pub fn set_torn_writes(&self, modes: &[TornWrite]) {
        assert!(!modes.is_empty(), "at least one torn-write mode");
        self.lock().torn_writes = modes.to_vec();
    }

    /// Simulates power loss tearing every file's unsynced bytes by a mode drawn (seeded) from
    /// those allowed by [`FaultyFileSystem::set_torn_writes`] (a prefix only by default).
    pub fn crash_random(&self) {
        self.lock().crash(|path, unsynced, start, state| {
            // One mode: no draw, so that the default replays crashes as before modes existed.
            let mode = match state.torn_writes.len() {
                1 => state.torn_writes[0],
                n => {
                    let k = state.below(n);
                    state.torn_writes[k]
                }
            };
            state.tear(path, mode, unsynced, start)
        });
    }

    /// Simulates power loss tearing every file's unsynced bytes by `mode` (seeded).
    pub fn crash_torn(&self, mode: TornWrite) {
        self.lock()
            .crash(|path, unsynced, start, state| state.tear(path, mode, unsynced, start));
    }

    /// The files the last crash tore (by `crash_random` or `crash_torn`): each file's path,
    /// the offset of its first unsynced byte (all damage lies at or after it), and the mode.
    pub fn last_tears(&self) -> Vec<(PathBuf, u64, TornWrite)> {
        self.lock().last_tears.clone()
    }

    /// How many files the crashes so far tore, by mode (a tear that kept all or none of the
    /// unsynced bytes is not counted).
    pub fn tear_counts(&self) -> TearCounts {
        self.lock().tears
    }

    /// Flips bit `bit` (0..8) of the byte at `offset` of `path`, in its durable and current
    /// contents.
    pub fn flip_bit(&self, path: &Path, offset: u64, bit: u8) -> io::Result<()> {
        let mut state = self.lock();
        let id = state.inode_of(path)?;
        let inode = state
            .inodes
            .get_mut(&id)
            .ok_or_else(|| io::Error::other("dangling inode"))?;
        let offset = usize::try_from(offset).map_err(io::Error::other)?;
        if offset >= inode.data.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "offset {offset} is past the end ({}) of {}",
                    inode.data.len(),
                    path.display()
                ),
            ));
        }
        let mask = 1u8 << (bit % 8);
        inode.data[offset] ^= mask;
        if let Some(shadow) = &mut inode.shadow {
            if offset < shadow.len() {
                shadow[offset] ^= mask;
            }
        }
        Ok(())
    }

    /// Overwrites bytes at `offset` (durable and current), e.g. to plant a forged length.
    pub fn overwrite(&self, path: &Path, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let mut state = self.lock();
        let id = state.inode_of(path)?;
        let inode = state
            .inodes
            .get_mut(&id)
            .ok_or_else(|| io::Error::other("dangling inode"))?;
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start + bytes.len();
        if end > inode.data.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "overwrite past end of file",
            ));
        }
        inode.data[start..end].copy_from_slice(bytes);
        if let Some(shadow) = &mut inode.shadow {
            if end <= shadow.len() {
                shadow[start..end].copy_from_slice(bytes);
            }
        }
        Ok(())
    }

    /// Limits the disk to `bytes` (`None`: unlimited): writes and preallocations that would
    /// use more store what fits and fail with `ENOSPC` (a real disk's partial write). Lower it
    /// below what is used to fill the disk at once; raise it to free space.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.lock().capacity = bytes;
    }

    /// Bytes the existing files take (written bytes and preallocated zeros).
    pub fn used_bytes(&self) -> u64 {
        self.lock().used_bytes()
    }

    /// `ENOSPC` failures returned since the disk was made.
    pub fn no_space_failures(&self) -> u64 {
        self.lock().no_space_failures
    }

    /// Makes the next operation of kind `op` fail once with `ENOSPC` (nothing done), e.g. an
    /// `fdatasync` that reports a full disk.
    pub fn fail_next_no_space(&self, op: FaultOp) {
        self.lock().no_space_next.push(op);
    }

    /// Makes the next operation of kind `op` fail once.
    pub fn fail_next(&self, op: FaultOp) {
        self.lock().failures.push(op);
    }

    /// Number of `sync_data` calls so far.
    pub fn sync_count(&self) -> u64 {
        self.lock().sync_count
    }

    /// Number of `write_all` calls so far.
    pub fn write_count(&self) -> u64 {
        self.lock().write_count
    }

    /// Bytes of `path` that a crash now would lose (0 if missing).
    pub fn unsynced_len(&self, path: &Path) -> usize {
        let state = self.lock();
        state
            .names
            .get(path)
            .and_then(|id| state.inodes.get(id))
            .map_or(0, |inode| inode.unsynced_suffix().len())
    }

    /// Every file path that currently exists.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.lock().names.keys().cloned().collect()
    }
}

#[derive(Debug)]
struct FaultyFile {
    fs: FaultyFileSystem,
    inode: u64,
    generation: u64,
    path: PathBuf,
}

impl FaultyFile {
    fn with_inode<T>(
        &self,
        op: FaultOp,
        action: impl FnOnce(&mut Inode) -> T,
    ) -> io::Result<(T, MutexGuard<'_, State>)> {
        let mut state = self.fs.lock();
        if state.generation != self.generation {
            return Err(io::Error::other(format!(
                "stale handle on {}: the disk crashed since it was opened",
                self.path.display()
            )));
        }
        state.take_failure(op)?;
        let inode = state
            .inodes
            .get_mut(&self.inode)
            .ok_or_else(|| io::Error::other("handle on a deleted inode"))?;
        let result = action(inode);
        Ok((result, state))
    }
}

impl WritableFile for FaultyFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let limit = self.fs.lock().growth_limit(self.inode);
        let (full, mut state) = self.with_inode(FaultOp::Write, |inode| {
            // Overwriting preallocated zeros takes no new space; growing the file does.
            let fits = limit.saturating_sub(inode.data.len()).min(buf.len());
            let fits = if inode.data.len() + buf.len() <= inode.alloc {
                buf.len()
            } else {
                fits
            };
            inode.data.extend_from_slice(&buf[..fits]);
            fits < buf.len()
        })?;
        state.write_count += 1;
        if full {
            state.no_space_failures += 1;
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let delay = *self.fs.sync_delay.lock().unwrap_or_else(|p| p.into_inner());
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let ((), mut state) = self.with_inode(FaultOp::Sync, Inode::mark_synced)?;
        state.sync_count += 1;
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(io::Error::other)?;
        let ((), _state) = self.with_inode(FaultOp::Write, |inode| {
            inode.alloc = inode.alloc.min(len);
            if len >= inode.data.len() {
                inode.data.resize(len, 0);
                return;
            }
            if inode.shadow.is_none() && len < inode.synced_len {
                inode.shadow = Some(inode.data[..inode.synced_len].to_vec());
            }
            inode.data.truncate(len);
        })?;
        Ok(())
    }

    fn preallocate(&mut self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(io::Error::other)?;
        let limit = self.fs.lock().growth_limit(self.inode);
        let (full, mut state) = self.with_inode(FaultOp::Write, |inode| {
            if len > inode.visible_len() {
                // What fits is allocated (zeros written chunk by chunk until the disk filled).
                inode.alloc = len.min(limit.max(inode.visible_len()));
                if inode.alloc < len {
                    return true;
                }
            }
            // Durable on return, like the real one (zeros written, then fdatasync).
            inode.mark_synced();
            false
        })?;
        if full {
            state.no_space_failures += 1;
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        state.sync_count += 1;
        Ok(())
    }
}

#[derive(Debug)]
struct FaultyLock {
    fs: FaultyFileSystem,
    path: PathBuf,
    generation: u64,
}

impl LockGuard for FaultyLock {}

impl Drop for FaultyLock {
    fn drop(&mut self) {
        let mut state = self.fs.lock();
        if state.locks.get(&self.path) == Some(&self.generation) {
            state.locks.remove(&self.path);
        }
    }
}

impl FileSystem for FaultyFileSystem {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        // Directories are implicit: a file's parent is its directory.
        Ok(())
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let mut state = self.lock();
        state.take_failure(FaultOp::Create)?;
        let id = state.next_inode;
        state.next_inode += 1;
        state.inodes.insert(id, Inode::default());
        state.names.insert(path.to_path_buf(), id);
        Ok(Box::new(FaultyFile {
            fs: self.clone(),
            inode: id,
            generation: state.generation,
            path: path.to_path_buf(),
        }))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let state = self.lock();
        let id = state.inode_of(path)?;
        Ok(Box::new(FaultyFile {
            fs: self.clone(),
            inode: id,
            generation: state.generation,
            path: path.to_path_buf(),
        }))
    }

    fn read_all(&self, path: &Path) -> io::Result<Vec<u8>> {
        let state = self.lock();
        let id = state.inode_of(path)?;
        Ok(state
            .inodes
            .get(&id)
            .map(|inode| inode.visible().into_owned())
            .unwrap_or_default())
    }

    fn read_at(&self, path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let state = self.lock();
        let id = state.inode_of(path)?;
        let (data, len) = state.inodes.get(&id).map_or((&[][..], 0), |inode| {
            (inode.data.as_slice(), inode.visible_len())
        });
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start.saturating_add(buf.len());
        if end > len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past end of file",
            ));
        }
        // Written bytes, then the preallocated zeros (not materialized: segments are large).
        let written_end = end.min(data.len()).max(start);
        if start < written_end {
            buf[..written_end - start].copy_from_slice(&data[start..written_end]);
        }
        buf[written_end - start..].fill(0);
        Ok(())
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        let state = self.lock();
        let id = state.inode_of(path)?;
        Ok(state
            .inodes
            .get(&id)
            .map_or(0, |inode| inode.visible_len() as u64))
    }

    fn exists(&self, path: &Path) -> bool {
        let state = self.lock();
        // A directory exists while it holds a file.
        state.names.contains_key(path) || state.names.keys().any(|name| name.starts_with(path))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.take_failure(FaultOp::Rename)?;
        let id = state.inode_of(from)?;
        state.names.remove(from);
        state.names.insert(to.to_path_buf(), id);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.take_failure(FaultOp::Remove)?;
        state.inode_of(path)?;
        state.names.remove(path);
        // The inode stays while the durable namespace may still name it (a crash brings it
        // back); it is dropped by the next crash otherwise.
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.lock();
        Ok(state
            .names
            .keys()
            .filter(|path| parent_dir(path) == dir)
            .filter_map(|path| path.file_name()?.to_str().map(str::to_string))
            .collect())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.take_failure(FaultOp::SyncDir)?;
        let State {
            names,
            durable_names,
            ..
        } = &mut *state;
        durable_names.retain(|path, _| parent_dir(path) != dir);
        for (path, id) in names.iter() {
            if parent_dir(path) == dir {
                durable_names.insert(path.clone(), *id);
            }
        }
        Ok(())
    }

    fn lock_exclusive(&self, path: &Path) -> io::Result<Box<dyn LockGuard>> {
        let mut state = self.lock();
        if state.locks.contains_key(path) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is locked", path.display()),
            ));
        }
        let generation = state.generation;
        state.locks.insert(path.to_path_buf(), generation);
        Ok(Box::new(FaultyLock {
            fs: self.clone(),
            path: path.to_path_buf(),
            generation,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(name: &str) -> PathBuf {
        PathBuf::from("/d").join(name)
    }

    #[test]
    fn crash_keeps_only_synced_bytes_and_synced_directory_entries() {
        let fs = FaultyFileSystem::new(1);
        let mut file = fs.create(&path("a")).expect("create");
        file.write_all(b"durable").expect("write");
        file.sync_data().expect("sync");
        // Not yet in a synced directory: a crash would lose the file.
        assert_eq!(fs.unsynced_len(&path("a")), 0);
        fs.sync_dir(Path::new("/d")).expect("sync dir");
        file.write_all(b"+lost").expect("write");
        let mut unsynced_dir_entry = fs.create(&path("b")).expect("create");
        unsynced_dir_entry.write_all(b"x").expect("write");
        unsynced_dir_entry.sync_data().expect("sync");
        fs.crash();
        assert_eq!(fs.read_all(&path("a")).expect("read"), b"durable");
        assert!(
            !fs.exists(&path("b")),
            "file whose directory entry was never synced survived"
        );
        // Old handles are dead after the crash.
        assert!(file.write_all(b"zombie").is_err());
    }

    #[test]
    fn torn_crash_keeps_a_prefix_and_removes_are_undone_unless_synced() {
        let fs = FaultyFileSystem::new(2);
        let mut file = fs.create(&path("a")).expect("create");
        fs.sync_dir(Path::new("/d")).expect("sync dir");
        file.write_all(b"0123456789").expect("write");
        let disk = fs.fork();
        disk.crash_tearing(&path("a"), 4);
        assert_eq!(disk.read_all(&path("a")).expect("read"), b"0123");
        fs.remove(&path("a")).expect("remove");
        fs.crash();
        assert!(
            fs.exists(&path("a")),
            "unsynced remove must be undone by a crash"
        );
        fs.remove(&path("a")).expect("remove");
        fs.sync_dir(Path::new("/d")).expect("sync dir");
        fs.crash();
        assert!(!fs.exists(&path("a")));
    }

    #[test]
    fn unsynced_truncation_is_undone_by_a_crash() {
        let fs = FaultyFileSystem::new(3);
        let mut file = fs.create(&path("a")).expect("create");
        fs.sync_dir(Path::new("/d")).expect("sync dir");
        file.write_all(b"abcdef").expect("write");
        file.sync_data().expect("sync");
        file.truncate(2).expect("truncate");
        fs.crash();
        assert_eq!(fs.read_all(&path("a")).expect("read"), b"abcdef");
    }

    #[test]
    fn random_crashes_are_deterministic_per_seed() {
        let run = |seed| {
            let fs = FaultyFileSystem::new(seed);
            let mut file = fs.create(&path("a")).expect("create");
            fs.sync_dir(Path::new("/d")).expect("sync dir");
            file.write_all(&[7u8; 1000]).expect("write");
            fs.crash_random();
            fs.read_all(&path("a")).expect("read").len()
        };
        assert_eq!(run(5), run(5));
        assert!(
            (0..20)
                .map(run)
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                > 1
        );
    }

    #[test]
    fn injected_failures_fire_once_and_locks_exclude() {
        let fs = FaultyFileSystem::new(4);
        let mut file = fs.create(&path("a")).expect("create");
        fs.fail_next(FaultOp::Sync);
        assert!(file.sync_data().is_err());
        assert!(file.sync_data().is_ok());
        let guard = fs.lock_exclusive(&path("LOCK")).expect("lock");
        let error = fs.lock_exclusive(&path("LOCK")).expect_err("held");
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
        drop(guard);
        fs.lock_exclusive(&path("LOCK")).expect("released");
    }

    #[test]
    fn flip_bit_changes_durable_contents() {
        let fs = FaultyFileSystem::new(5);
        let mut file = fs.create(&path("a")).expect("create");
        fs.sync_dir(Path::new("/d")).expect("sync dir");
        file.write_all(&[0u8; 4]).expect("write");
        file.sync_data().expect("sync");
        fs.flip_bit(&path("a"), 2, 3).expect("flip");
        fs.crash();
        assert_eq!(fs.read_all(&path("a")).expect("read"), vec![0, 0, 8, 0]);
        assert!(fs.flip_bit(&path("a"), 4, 0).is_err());
    }

    /// Every mode keeps the durable bytes and changes only the unsynced ones, each as its
    /// name says; a single-mode `crash_random` draws nothing to choose it.
    #[test]
    fn torn_write_modes_keep_durable_bytes_and_tear_as_described() {
        let durable: Vec<u8> = (0..700u32).map(|i| (i % 251) as u8 + 1).collect();
        let unsynced: Vec<u8> = (0..3000u32).map(|i| (i % 241) as u8 + 1).collect();
        let fs = FaultyFileSystem::new(6);
        let mut file = fs.create(&path("a")).expect("create");
        fs.sync_dir(Path::new("/d")).expect("sync dir");
        file.write_all(&durable).expect("write");
        file.sync_data().expect("sync");
        file.write_all(&unsynced).expect("write");
        let mut seen = std::collections::BTreeSet::new();
        for round in 0..200 {
            let disk = fs.fork();
            // A fork copies the generator: advance it so every round tears differently.
            for _ in 0..round {
                disk.lock().next_random();
            }
            let mode = TornWrite::ALL[round % 3];
            disk.crash_torn(mode);
            let after = disk.read_all(&path("a")).expect("read");
            assert_eq!(
                &after[..durable.len()],
                &durable[..],
                "{mode:?} changed durable bytes"
            );
            let tail = &after[durable.len()..];
            assert!(tail.len() <= unsynced.len(), "{mode:?} grew the file");
            let same = |k: usize| tail[k] == unsynced[k];
            match mode {
                TornWrite::Prefix => assert_eq!(tail, &unsynced[..tail.len()]),
                TornWrite::Reordered => {
                    // A lost (zeroed) byte before a kept one; losses are whole sectors.
                    let first_lost = (0..tail.len()).find(|&k| !same(k)).expect("a loss");
                    assert!(
                        tail[first_lost..].iter().any(|b| *b != 0),
                        "nothing kept later"
                    );
                    assert!((first_lost + durable.len()) % SECTOR_BYTES == 0 || first_lost == 0);
                    for (k, byte) in tail.iter().enumerate().skip(first_lost) {
                        assert!(*byte == 0 || same(k), "{mode:?} invented byte {k}");
                    }
                    assert_eq!((after.len()) % SECTOR_BYTES == 0, after.len() < 3700);
                }
                TornWrite::Garbage => {
                    let first_diff = (0..tail.len()).find(|&k| !same(k));
                    assert!(first_diff.is_some(), "garbage equal to the data");
                }
            }
            seen.insert(mode);
        }
        assert_eq!(seen.len(), 3);
        let counts = fs.tear_counts();
        assert_eq!(
            counts,
            TearCounts::default(),
            "forks count on their own disk"
        );
        // Determinism of the default: one mode draws no choice (seed-compatible).
        let a = fs.fork();
        let b = fs.fork();
        b.set_torn_writes(&[TornWrite::Prefix]);
        a.crash_random();
        b.crash_torn(TornWrite::Prefix);
        assert_eq!(a.read_all(&path("a")).ok(), b.read_all(&path("a")).ok());
    }

    /// The log engine's recovery over every torn-write mode, both strict and tolerant
    /// recovery, with and without preallocated segments: random batches (some synced, some
    /// not), a crash, a reopen. The engine must either open with a prefix of the batches
    /// that holds every synced one (nothing acknowledged lost, nothing invented), or refuse
    /// with a `Corruption` error that names the active segment at an offset past its durable
    /// bytes. Counts of each outcome are printed; what each mode must do is asserted below.
    #[test]
    fn log_engine_recovers_or_refuses_clearly_after_every_torn_write_mode() {
        use crate::{Config, GroupId, LogBatch, LogEngine, LogEntry, RecoveryMode};
        let dir = PathBuf::from("/store/raft-log");
        let group = GroupId(1);
        let mut outcomes: BTreeMap<(String, bool, TornWrite), [u64; 3]> = BTreeMap::new();
        let mut example_refusals: BTreeMap<(String, TornWrite), String> = BTreeMap::new();
        for trial in 0..360u64 {
            let mode = TornWrite::ALL[(trial % 3) as usize];
            let strict = trial % 2 == 0;
            let preallocate = (trial / 6) % 2 == 0;
            let recovery_mode = if strict {
                RecoveryMode::AbsoluteConsistency
            } else {
                RecoveryMode::TolerateTailCorruption
            };
            let config = Config {
                segment_size_bytes: 64 << 10,
                recovery_mode,
                preallocate_segments: preallocate,
                prepare_segments_in_background: false,
                ..Config::default()
            };
            let fs = FaultyFileSystem::new(trial);
            let engine = LogEngine::open(&dir, config.clone(), Arc::new(fs.clone())).expect("open");
            let mut rng = FaultyFileSystem::new(trial ^ 0x7e57).lock().clone();
            let mut written: Vec<Vec<u8>> = Vec::new();
            let mut synced = 0usize;
            for _ in 0..2 + rng.below(12) {
                let count = 1 + rng.below(4);
                let mut batch = LogBatch::new();
                let entries = (0..count)
                    .map(|k| {
                        let index = written.len() as u64 + 1 + k as u64;
                        let data: Vec<u8> = (0..20 + rng.below(600))
                            .map(|j| (index as usize * 7 + j) as u8)
                            .collect();
                        LogEntry {
                            index,
                            term: 1,
                            data: data.into(),
                        }
                    })
                    .collect::<Vec<_>>();
                for e in &entries {
                    written.push(e.data.to_vec());
                }
                batch.append(group, entries).expect("batch");
                let sync = rng.below(3) == 0;
                engine.write(&mut batch, sync).expect("write");
                if sync {
                    synced = written.len();
                }
            }
            let active = crate::segment_path(&dir, engine.stats().active_segment_seq);
            let durable_len = {
                let state = fs.lock();
                let id = state.names.get(&active).copied();
                id.and_then(|id| state.inodes.get(&id).map(|inode| inode.durable().len()))
            };
            drop(engine);
            fs.crash_torn(mode);
            let key = (format!("{recovery_mode:?}"), preallocate, mode);
            let slot = outcomes.entry(key).or_default();
            match LogEngine::open(&dir, config, Arc::new(fs.clone())) {
                Ok(engine) => {
                    let last = engine.last_index(group).unwrap_or(0) as usize;
                    assert!(
                        last >= synced,
                        "trial {trial} {mode:?}: synced entry {synced} lost (last {last})"
                    );
                    let entries = engine
                        .entries(group, 1, last as u64 + 1, usize::MAX)
                        .expect("entries");
                    for e in &entries {
                        assert_eq!(
                            &e.data[..],
                            &written[e.index as usize - 1][..],
                            "trial {trial} {mode:?}: entry {} is not what was written",
                            e.index
                        );
                    }
                    slot[usize::from(engine.recovery_report().torn_tail.is_some())] += 1;
                }
                Err(crate::Error::Corruption {
                    file,
                    offset,
                    reason,
                }) => {
                    assert_eq!(
                        file, active,
                        "trial {trial}: blamed another file ({reason})"
                    );
                    let durable_len = durable_len.expect("the active segment existed") as u64;
                    assert!(
                        offset >= durable_len,
                        "trial {trial} {mode:?}: blamed offset {offset} inside the durable {durable_len} bytes ({reason})"
                    );
                    slot[2] += 1;
                    example_refusals
                        .entry((format!("{recovery_mode:?}"), mode))
                        .or_insert(format!("at {offset} (durable {durable_len}): {reason}"));
                }
                Err(other) => panic!("trial {trial} {mode:?}: unexpected error {other}"),
            }
        }
        println!("(recovery mode, preallocated, torn write) -> [opened clean, opened after truncating a torn tail, refused]");
        for (key, counts) in &outcomes {
            println!("  {key:?} -> {counts:?}");
        }
        for (key, reason) in &example_refusals {
            println!("  a refusal {key:?}: {reason}");
        }
        for ((recovery, _, mode), [clean, torn, refused]) in &outcomes {
            match mode {
                // A torn prefix is what every mode must take.
                TornWrite::Prefix => assert_eq!(*refused, 0, "{recovery} refused a torn prefix"),
                // Garbage after the last record is a torn tail to the tolerant mode.
                TornWrite::Garbage if recovery == "TolerateTailCorruption" => {
                    assert_eq!(*refused, 0, "{recovery} refused a garbage tail");
                    assert!(*torn > 0, "garbage never reached the engine: {clean}");
                }
                _ => {}
            }
        }
    }
}
