//! The `raft::Storage` conformance suite against `GroupStorage` on the shared log engine:
//! on a real directory, and on `FaultyFileSystem` where every reopen is also a crash (so
//! whatever a write did not sync is lost, as the contract allows only for unsynced data).

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use raft::storage_suite::{run_all, StorageUnderTest};
use raft::{
    ConfState, Entry, HardState, LogIndex, RaftState, Snapshot, SnapshotMetadata, Storage,
    StorageError, Term,
};
use raft_log::raft_storage::GroupStorage;
use raft_log::{Config, FaultyFileSystem, FileSystem, GroupId, LogEngine, StdFileSystem};

/// A `GroupStorage` with what it takes to reopen it from its files.
struct Disk {
    storage: GroupStorage,
    fs: Arc<dyn FileSystem>,
    /// Set for `FaultyFileSystem`: reopen crashes the disk first.
    faulty: Option<FaultyFileSystem>,
    dir: PathBuf,
    _temp: Option<Arc<tempfile::TempDir>>,
}

const GROUP: GroupId = GroupId(7);

fn open(fs: &Arc<dyn FileSystem>, dir: &std::path::Path) -> GroupStorage {
    let engine = LogEngine::open(dir.join("log"), Config::default(), fs.clone()).expect("open");
    // Another group on the same engine, so that GroupStorage must keep to its own.
    let mut batch = raft_log::LogBatch::new();
    batch
        .append(
            GroupId(8),
            vec![raft_log::LogEntry {
                index: engine.last_index(GroupId(8)).map_or(1, |last| last + 1),
                term: 9,
                data: Bytes::from_static(b"\x00neighbour"),
            }],
        )
        .expect("batch");
    batch.put_state(GroupId(8), b"raft/hard_state", &[9, 0, 0]);
    engine.write(&mut batch, true).expect("write neighbour");
    GroupStorage::open(Arc::new(engine), GROUP, dir.join("snap"), fs.clone())
        .expect("open group storage")
}

impl Disk {
    fn real() -> Disk {
        let temp = tempfile::tempdir().expect("tempdir");
        let dir = temp.path().to_path_buf();
        let fs: Arc<dyn FileSystem> = Arc::new(StdFileSystem);
        Disk {
            storage: open(&fs, &dir),
            fs,
            faulty: None,
            dir,
            _temp: Some(Arc::new(temp)),
        }
    }

    fn faulty() -> Disk {
        let faulty = FaultyFileSystem::new(11);
        let fs: Arc<dyn FileSystem> = Arc::new(faulty.clone());
        let dir = PathBuf::from("/store");
        Disk {
            storage: open(&fs, &dir),
            fs,
            faulty: Some(faulty),
            dir,
            _temp: None,
        }
    }
}

impl Storage for Disk {
    fn initial_state(&self) -> Result<RaftState, StorageError> {
        self.storage.initial_state()
    }
    fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.storage.entries(low, high, max_bytes)
    }
    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        self.storage.term(index)
    }
    fn first_index(&self) -> Result<LogIndex, StorageError> {
        self.storage.first_index()
    }
    fn last_index(&self) -> Result<LogIndex, StorageError> {
        self.storage.last_index()
    }
    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        self.storage.snapshot()
    }
}

impl StorageUnderTest for Disk {
    fn append(&mut self, entries: &[Entry]) {
        self.storage.append(entries).expect("append");
    }
    fn set_hard_state(&mut self, hs: HardState) {
        self.storage.set_hard_state(hs).expect("set_hard_state");
    }
    fn apply_snapshot(&mut self, snapshot: Snapshot) {
        self.storage
            .apply_snapshot(snapshot)
            .expect("apply_snapshot");
    }
    fn create_snapshot(&mut self, index: LogIndex, conf_state: ConfState, data: Bytes) {
        self.storage
            .create_snapshot(index, conf_state, data)
            .expect("create_snapshot");
    }
    fn reopen(self) -> Disk {
        let Disk {
            storage,
            fs,
            faulty,
            dir,
            _temp,
        } = self;
        // Drop the engine (and its directory lock) before reopening.
        drop(storage);
        if let Some(faulty) = &faulty {
            faulty.crash();
        }
        Disk {
            storage: open(&fs, &dir),
            fs,
            faulty,
            dir,
            _temp,
        }
    }
}

#[test]
fn group_storage_on_a_real_directory_passes_the_conformance_suite() {
    run_all(Disk::real);
}

#[test]
fn group_storage_on_faulty_file_system_passes_the_conformance_suite() {
    run_all(Disk::faulty);
}

#[test]
fn a_crash_between_snapshot_file_and_metadata_is_completed_on_open() {
    // The engine and the snapshot files on two disks, so that a fault hits only the engine.
    let log_disk = FaultyFileSystem::new(3);
    let snap_disk = FaultyFileSystem::new(4);
    let log_fs: Arc<dyn FileSystem> = Arc::new(log_disk.clone());
    let snap_fs: Arc<dyn FileSystem> = Arc::new(snap_disk.clone());
    let reopen = || {
        let engine = LogEngine::open("/log", Config::default(), log_fs.clone()).expect("open");
        GroupStorage::open(Arc::new(engine), GROUP, "/snap", snap_fs.clone()).expect("open")
    };
    let mut storage = reopen();
    storage
        .append(&raft::storage_suite::entries(1, 6, 2))
        .expect("append");
    let conf_state = ConfState::from_voters([1, 2, 3]);
    // The snapshot file is written, the metadata batch fails.
    log_disk.fail_next(raft_log::FaultOp::Write);
    let result = storage.create_snapshot(LogIndex(4), conf_state.clone(), Bytes::from("s4"));
    assert!(result.is_err(), "the injected failure must surface");
    drop(storage);
    log_disk.crash();
    snap_disk.crash();
    let storage = reopen();
    let snapshot = storage.snapshot().expect("snapshot");
    assert_eq!(snapshot.metadata.index, LogIndex(4));
    assert_eq!(snapshot.metadata.term, Term(2));
    assert_eq!(snapshot.metadata.conf_state, conf_state);
    assert_eq!(snapshot.data, Bytes::from("s4"));
    assert_eq!(storage.first_index(), Ok(LogIndex(5)));
    assert_eq!(storage.last_index(), Ok(LogIndex(6)));
    assert_eq!(storage.term(LogIndex(4)), Ok(Term(2)));
    assert_eq!(
        storage.initial_state().expect("state").conf_state,
        conf_state
    );
    // A snapshot only covers committed entries, so completing it raises the commit index.
    assert_eq!(storage.hard_state().commit, LogIndex(4));
}

/// A leader reads a snapshot chunk by chunk from its file: the chunks put together are the
/// snapshot's data, a chunk of a snapshot that a newer one replaced is refused as
/// temporarily unavailable (the leader starts over), and a corrupt file fails its last chunk.
#[test]
fn snapshot_chunks_come_from_the_file_and_are_verified() {
    let faulty = FaultyFileSystem::new(5);
    let fs: Arc<dyn FileSystem> = Arc::new(faulty.clone());
    let mut storage = open(&fs, std::path::Path::new("/store"));
    storage
        .append(&raft::storage_suite::entries(1, 10, 2))
        .expect("append");
    let data: Bytes = (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let conf_state = ConfState::from_voters([1, 2, 3]);
    storage
        .create_snapshot(LogIndex(5), conf_state.clone(), data.clone())
        .expect("snapshot");
    let info = storage.snapshot_info().expect("metadata");
    let (metadata, len) = (info.metadata, info.total_bytes);
    assert_eq!(metadata.index, LogIndex(5));
    assert_eq!(metadata.conf_state, conf_state);
    assert_eq!(len, data.len() as u64);
    // The data's checksum, derived from the file header's without reading the data.
    assert_eq!(info.checksum, crc32c::crc32c(&data));
    let mut joined = Vec::new();
    let mut offset = 0;
    while offset < len {
        let chunk = storage
            .snapshot_chunk(LogIndex(5), offset, 4096)
            .expect("chunk");
        assert!(!chunk.is_empty() && chunk.len() <= 4096);
        offset += chunk.len() as u64;
        joined.extend_from_slice(&chunk);
    }
    assert_eq!(Bytes::from(joined), data);

    // A newer snapshot replaces it: the old index is refused.
    storage
        .create_snapshot(LogIndex(8), conf_state.clone(), data.clone())
        .expect("snapshot");
    assert_eq!(
        storage.snapshot_chunk(LogIndex(5), 0, 4096),
        Err(StorageError::SnapshotTemporarilyUnavailable)
    );

    // One flipped byte in the file's data: reading in order fails at the last chunk.
    let name = fs
        .list_dir(std::path::Path::new("/store/snap"))
        .expect("list")
        .into_iter()
        .find(|n| n.ends_with(".snap"))
        .expect("a snapshot file");
    let path = std::path::Path::new("/store/snap").join(name);
    let mut bytes = fs.read_all(&path).expect("read");
    let at = bytes.len() - 100;
    bytes[at] ^= 0x40;
    let mut file = fs.create(&path).expect("rewrite");
    file.write_all(&bytes).expect("write");
    file.sync_data().expect("sync");
    drop(file);
    let len = storage.snapshot_info().expect("metadata").total_bytes;
    let mut offset = 0;
    let mut failed = None;
    while offset < len {
        match storage.snapshot_chunk(LogIndex(8), offset, 4096) {
            Ok(chunk) => offset += chunk.len() as u64,
            Err(e) => {
                failed = Some((offset, e));
                break;
            }
        }
    }
    let (offset, e) = failed.expect("the corrupt file must fail");
    assert!(
        offset + 4096 >= len && e.to_string().contains("checksum mismatch"),
        "failed at {offset} of {len}: {e}"
    );
}

/// Receiving a snapshot chunk by chunk: the file it makes is the one the sender has (chunks
/// come back byte for byte, with the same checksum), the log is replaced, a damaged or short
/// transfer installs nothing, and a transfer cut off by a restart leaves no file.
#[test]
fn a_snapshot_received_in_chunks_is_checked_and_installed_from_its_file() {
    let faulty = FaultyFileSystem::new(6);
    let fs: Arc<dyn FileSystem> = Arc::new(faulty.clone());
    let mut sender = open(&fs, std::path::Path::new("/a"));
    sender
        .append(&raft::storage_suite::entries(1, 40, 3))
        .expect("append");
    let data: Bytes = (0..50_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let conf_state = ConfState::from_voters([1, 2, 3]);
    sender
        .create_snapshot(LogIndex(30), conf_state.clone(), data.clone())
        .expect("snapshot");
    let info = sender.snapshot_info().expect("info");

    let mut receiver_storage = open(&fs, std::path::Path::new("/b"));
    receiver_storage
        .append(&raft::storage_suite::entries(1, 5, 1))
        .expect("append");
    let send = |receiver: &mut raft_log::raft_storage::SnapshotReceiver, damage: bool| {
        let mut offset = 0;
        while offset < info.total_bytes {
            let mut chunk = sender
                .snapshot_chunk(LogIndex(30), offset, 7_000)
                .expect("chunk")
                .to_vec();
            if damage && offset == 14_000 {
                chunk[3] ^= 1;
            }
            receiver.write(&chunk).expect("write");
            offset += chunk.len() as u64;
        }
    };

    // Damaged on the way: refused as corruption, nothing installed, no file left.
    let mut receiver = receiver_storage
        .receive_snapshot(info.metadata.clone(), info.total_bytes, info.checksum)
        .expect("receive");
    send(&mut receiver, true);
    let e = receiver_storage
        .install_received(receiver)
        .expect_err("damaged data installed");
    assert!(e.to_string().contains("crc32c"), "{e}");
    assert_eq!(receiver_storage.last_index(), Ok(LogIndex(5)));
    let left: Vec<String> = fs.list_dir(std::path::Path::new("/b/snap")).unwrap();
    assert!(left.is_empty(), "files left behind: {left:?}");

    // Short: refused.
    let mut receiver = receiver_storage
        .receive_snapshot(info.metadata.clone(), info.total_bytes, info.checksum)
        .expect("receive");
    receiver.write(&data[..100]).expect("write");
    assert_eq!(receiver.received(), 100);
    assert!(receiver_storage.install_received(receiver).is_err());
    assert_eq!(receiver_storage.last_index(), Ok(LogIndex(5)));

    // More than announced: refused at the write.
    let mut receiver = receiver_storage
        .receive_snapshot(info.metadata.clone(), 10, crc32c::crc32c(&data[..10]))
        .expect("receive");
    assert!(receiver.write(&data[..11]).is_err());
    receiver.discard();

    // Whole: installed from its file, and sent on chunk by chunk exactly as received.
    let mut receiver = receiver_storage
        .receive_snapshot(info.metadata.clone(), info.total_bytes, info.checksum)
        .expect("receive");
    send(&mut receiver, false);
    assert_eq!(receiver.received(), info.total_bytes);
    assert!(receiver_storage
        .install_received(receiver)
        .expect("install"));
    assert_eq!(receiver_storage.first_index(), Ok(LogIndex(31)));
    assert_eq!(receiver_storage.last_index(), Ok(LogIndex(30)));
    let installed = receiver_storage.snapshot().expect("snapshot");
    assert_eq!(installed.metadata, info.metadata);
    assert_eq!(installed.data, data);
    assert_eq!(receiver_storage.snapshot_info().expect("info"), info);

    // A transfer cut off by a crash leaves no file once the group opens again.
    let mut receiver = receiver_storage
        .receive_snapshot(
            SnapshotMetadata {
                index: LogIndex(35),
                ..info.metadata.clone()
            },
            info.total_bytes,
            info.checksum,
        )
        .expect("receive");
    receiver.write(&data[..1000]).expect("write");
    std::mem::forget(receiver);
    drop(receiver_storage);
    let reopened = open(&fs, std::path::Path::new("/b"));
    let names = fs.list_dir(std::path::Path::new("/b/snap")).unwrap();
    assert!(
        names.iter().all(|n| !n.ends_with(".recv")),
        "a partial transfer survived a restart: {names:?}"
    );
    assert_eq!(reopened.snapshot().expect("snapshot").data, data);
}
