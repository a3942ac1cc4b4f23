//! Snapshots: when a region's log is compacted (its thresholds, the log's purge, on
//! request), handing the builds to a [`SnapshotBuilder`](crate::SnapshotBuilder) and
//! committing what comes back, receiving and installing a leader's snapshot chunk by
//! chunk, and the timings the caller's metrics read.

use crate::error::StoreError;
use crate::peer::Peer;
use crate::region::RegionId;
use crate::snapshot_job::{BuiltSnapshot, SnapshotWork, MAX_SNAPSHOTS_BUILDING};
use crate::state_machine::StateMachine;
use crate::store::{engine_group, Store, StoreStats, PEER_KEY, REGION_KEY};
use raft::Snapshot;
use raft_log::{LogBatch, LogEngine};

/// Most store-thread snapshot durations kept for the caller's metrics between two reads.
const MAX_SNAPSHOT_DURATIONS_KEPT: usize = 1024;

impl<M: StateMachine> Store<M> {
    /// Starts snapshots of the regions the log's purge asked to compact, as far as the
    /// limit on snapshots building allows; the rest wait for the next call.
    pub(crate) fn compact_requested(&mut self) -> Result<(), StoreError> {
        for region in std::mem::take(&mut self.compact_wanted) {
            if !self.peers.contains_key(&region) {
                continue;
            }
            if self.start_snapshot(region)? {
                self.stats.snapshots_for_log_space += 1;
            } else {
                let p = &self.peers[&region];
                if p.applied > p.raw.persisted_index()
                    || p.building_snapshot.is_some()
                    || p.merge_wait.is_some()
                    || self.snapshots_building >= MAX_SNAPSHOTS_BUILDING
                {
                    // Not yet possible: next time.
                    self.compact_wanted.insert(region);
                }
            }
        }
        Ok(())
    }

    /// Starts a snapshot of `region` if one may start now (see [`Peer::start_snapshot`] and
    /// [`MAX_SNAPSHOTS_BUILDING`]); returns whether it did.
    pub(crate) fn start_snapshot(&mut self, region: RegionId) -> Result<bool, StoreError> {
        if self.snapshots_building >= MAX_SNAPSHOTS_BUILDING {
            return Ok(false);
        }
        let Some(p) = self.peers.get_mut(&region) else {
            return Ok(false);
        };
        match p.start_snapshot(&self.snap_dir, &self.fs)? {
            Some(job) => {
                self.snapshots_building += 1;
                self.snapshot_work.push(SnapshotWork::Build(job));
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Starts a snapshot of this store's replica of `region` at its applied index,
    /// whatever the thresholds say (operators, tests, the simulator's snapshots at random
    /// points); it is built like any other ([`Store::take_snapshot_work`]) and compacts the
    /// log when committed. Returns false when none could start (see
    /// [`Store::start_snapshot`]).
    pub fn snapshot_now(&mut self, region: RegionId) -> Result<bool, StoreError> {
        if !self.peers.contains_key(&region) {
            return Err(StoreError::RegionNotFound(region));
        }
        self.start_snapshot(region)
    }

    /// The snapshot work since the last call, for the caller's
    /// [`SnapshotBuilder`](crate::SnapshotBuilder); each build must come back through
    /// [`Store::finish_snapshot`].
    pub fn take_snapshot_work(&mut self) -> Vec<SnapshotWork<M>> {
        std::mem::take(&mut self.snapshot_work)
    }

    /// A snapshot job is done: it is committed (published, the log compacted to it) now if
    /// no log write is in flight, else once none is. An I/O error other than a full disk,
    /// in the job or in the commit, is fatal as for any log write.
    pub fn finish_snapshot(&mut self, built: BuiltSnapshot) -> Result<(), StoreError> {
        self.snapshots_built.push(built);
        self.commit_snapshots()
    }

    /// Whether a snapshot may be made now: no round is in flight or prepared. A snapshot's
    /// metadata write carries the group's hard state as staged, and with a round in flight
    /// that may name a commit index beyond what the log has durable (a crash would then
    /// leave a hard state the log cannot back).
    fn snapshots_allowed(&self) -> bool {
        self.in_flight.is_empty() && !self.round_prepared
    }

    /// Commits the built snapshots, if no log write is in flight (see
    /// [`Store::snapshots_allowed`]).
    pub(crate) fn commit_snapshots(&mut self) -> Result<(), StoreError> {
        if self.snapshots_built.is_empty() || !self.snapshots_allowed() {
            return Ok(());
        }
        let mut merged_targets = Vec::new();
        let mut retry = Vec::new();
        for built in std::mem::take(&mut self.snapshots_built) {
            assert!(
                self.snapshots_building > 0,
                "snapshot of region {} finished but none was building",
                built.region
            );
            self.snapshots_building -= 1;
            let started = std::time::Instant::now();
            let Some(p) = self
                .peers
                .get_mut(&built.region)
                .filter(|p| p.raw.id() == built.peer)
            else {
                // The region left this store meanwhile (or came back as a new replica).
                if let Ok(prepared) = &built.file {
                    raft_log::discard_snapshot(self.fs.as_ref(), prepared);
                }
                self.stats.snapshots_overtaken += 1;
                continue;
            };
            let base = p.building_snapshot.take().unwrap_or_else(|| {
                panic!(
                    "snapshot of region {} built but the region was not building one",
                    built.region
                )
            });
            // Overtaken first: a snapshot installed meanwhile may have removed this one's
            // file under it, so its error would mean nothing.
            if !p.raw.storage().can_commit_snapshot(built.index, built.term) {
                if let Ok(prepared) = &built.file {
                    raft_log::discard_snapshot(self.fs.as_ref(), prepared);
                }
                self.stats.snapshots_overtaken += 1;
                continue;
            }
            let prepared = match built.file {
                Ok(prepared) => prepared,
                // The file did not fit (it was removed; the log is unchanged): the log stays
                // as it is, and the next round past the thresholds tries again (a merge's
                // target, whose sources wait for this snapshot, asks again at once).
                Err(e) if e.is_no_space() => {
                    retry.push(built.region);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            match p
                .raw
                .storage_mut()
                .commit_prepared(&prepared, built.conf_state)
            {
                Ok(committed) => {
                    assert!(
                        committed,
                        "snapshot of region {} at {} could be committed and then could not",
                        built.region, built.index
                    );
                    self.snapshots_unsynced.push(prepared);
                }
                Err(e) if e.is_no_space() => {
                    raft_log::discard_snapshot(self.fs.as_ref(), &prepared);
                    retry.push(built.region);
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            p.bytes_since_snapshot = p.bytes_since_snapshot.saturating_sub(base);
            p.last_snapshot_bytes = built.data_bytes;
            p.legacy_snapshot = false;
            merged_targets.push((built.region, built.index));
            self.stats.snapshots_created += 1;
            // Bounded: a caller that never reads them (the simulations) keeps only the first.
            if self.snapshot_durations.len() < MAX_SNAPSHOT_DURATIONS_KEPT {
                self.snapshot_durations
                    .push(built.stall + started.elapsed());
                self.snapshot_build_times
                    .push((built.serialize, built.write));
            }
        }
        // A merge's source goes once its target's snapshot covers the merge (the synced
        // write of its destruction also makes the snapshot's commit durable first).
        for (target, index) in merged_targets {
            self.destroy_merged_sources(target, index, None)?;
        }
        for region in retry {
            let has_sources = self
                .peers
                .values()
                .any(|p| p.merged_into.is_some_and(|(t, _)| t == region));
            if has_sources {
                self.compact_wanted.insert(region);
            }
        }
        Ok(())
    }

    /// Writes the chunks of a snapshot being received to its file ([`raft::SnapshotChunk`]):
    /// a chunk at offset 0 starts a new file (dropping an unfinished one), every other chunk
    /// continues the current one where it ended (the core hands them out in order).
    pub(crate) fn receive_snapshot_chunks(
        id: RegionId,
        p: &mut Peer<M>,
        chunks: &[raft::SnapshotChunk],
        stats: &mut StoreStats,
    ) -> Result<(), StoreError> {
        for chunk in chunks {
            if chunk.offset == 0 {
                if let Some((old, _)) = p.receiving.take() {
                    stats.snapshot_receiving_bytes -= old.received();
                    old.discard();
                    stats.snapshot_transfers_dropped += 1;
                }
                let receiver = p.raw.storage().receive_snapshot(
                    chunk.metadata.clone(),
                    chunk.total_bytes,
                    chunk.checksum,
                )?;
                p.receiving = Some((receiver, std::time::Instant::now()));
            }
            let (receiver, _) = p.receiving.as_mut().unwrap_or_else(|| {
                panic!("region {id}: snapshot chunk {chunk:?} without a transfer started")
            });
            assert!(
                receiver.metadata() == &chunk.metadata && receiver.received() == chunk.offset,
                "region {id}: snapshot chunk {chunk:?} does not continue {:?} at {}",
                receiver.metadata(),
                receiver.received()
            );
            receiver.write(&chunk.data)?;
            stats.snapshot_chunks_received += 1;
            stats.snapshot_receiving_bytes += chunk.data.len() as u64;
        }
        Ok(())
    }

    /// Installs the snapshot a replica received chunk by chunk, now handed out by its Ready
    /// (`snap`): its file replaces the log with its own synced write, the state machine is
    /// restored from the file, and the region's descriptor is written back.
    pub(crate) fn install_received_snapshot(
        id: RegionId,
        p: &mut Peer<M>,
        snap: &Snapshot,
        engine: &LogEngine,
        stats: &mut StoreStats,
        receive_times: &mut Vec<(std::time::Duration, std::time::Duration)>,
    ) -> Result<(), StoreError> {
        let install_started = std::time::Instant::now();
        let (receiver, first_chunk) = p.receiving.take().unwrap_or_else(|| {
            panic!(
                "region {id}: snapshot {:?} handed out without its chunks",
                snap.metadata
            )
        });
        assert_eq!(
            receiver.metadata(),
            &snap.metadata,
            "region {id}: the snapshot handed out is not the one received"
        );
        let data_bytes = receiver.data_len();
        stats.snapshot_receiving_bytes -= receiver.received();
        let newer = p.raw.storage_mut().install_received(receiver)?;
        assert!(
            newer,
            "region {id}: the core handed out snapshot {:?}, not newer than the stored one",
            snap.metadata
        );
        // Restored from the file just written (read back once, checksum verified).
        let installed = raft::Storage::snapshot(p.raw.storage())
            .map_err(|e| StoreError::Storage(format!("region {id}: {e}")))?;
        assert_eq!(
            installed.metadata, snap.metadata,
            "region {id}: the installed snapshot is not the one received"
        );
        let crate::snapshot_data::Carried {
            region: descriptor,
            merging,
            absorbed,
            sm_data,
        } = crate::snapshot_data::parse(&installed.data)
            .map_err(|e| StoreError::Storage(format!("received snapshot of region {id}: {e}")))?;
        p.sm = M::restore(sm_data)
            .map_err(|e| StoreError::Storage(format!("received snapshot of region {id}: {e}")))?;
        let descriptor_missing = descriptor.is_none();
        if let Some(descriptor) = descriptor {
            // The region as of the snapshot's index: this replica may have missed the entries
            // that reshaped it, or (created by a message) had no descriptor at all.
            assert_eq!(
                descriptor.id, id,
                "region {id} installed a snapshot of region {}",
                descriptor.id
            );
            p.region = descriptor;
            p.learned.clear();
        }
        // The freeze as of the snapshot's index; a merge this replica was waiting on is in
        // the snapshot already (its source here is then dead, see `crate::merge`).
        p.legacy_snapshot = descriptor_missing;
        p.merging = merging;
        p.absorbed = absorbed;
        p.merge_wait = None;
        p.raw.set_apply_limit(None);
        drop(installed);
        p.applied = snap.metadata.index;
        p.last_snapshot_bytes = data_bytes;
        p.bytes_since_snapshot = 0;
        stats.snapshots_installed += 1;
        if receive_times.len() < MAX_SNAPSHOT_DURATIONS_KEPT {
            receive_times.push((first_chunk.elapsed(), install_started.elapsed()));
        }
        // Installing a snapshot may clean the group's state keys: restore ours at
        // once (not in this round's write, which may land later: a crash in between
        // would leave a group the store no longer knows as its region).
        let mut b = LogBatch::new();
        b.put_state(engine_group(id), REGION_KEY, &p.region.encode());
        b.put_state(engine_group(id), PEER_KEY, &p.raw.id().0.to_le_bytes());
        engine.write(&mut b, true)?;
        Ok(())
    }

    /// Drops a replica's unfinished snapshot transfer once its log has caught up with it.
    pub(crate) fn drop_caught_up_transfer(p: &mut Peer<M>, stats: &mut StoreStats) {
        if p.receiving
            .as_ref()
            .is_some_and(|(r, _)| r.metadata().index <= p.raw.commit_index())
        {
            // The log got there first (or the snapshot was older than what we have, or its
            // last entry was in our log already): nothing to install.
            if let Some((receiver, _)) = p.receiving.take() {
                stats.snapshot_receiving_bytes -= receiver.received();
                receiver.discard();
                stats.snapshot_transfers_dropped += 1;
            }
        }
    }

    /// How long each snapshot made since the last call held the store thread (taking its
    /// view, then publishing it and compacting the log).
    pub fn take_snapshot_durations(&mut self) -> Vec<std::time::Duration> {
        std::mem::take(&mut self.snapshot_durations)
    }

    /// Regions receiving a snapshot right now (a transfer started and not yet installed).
    pub fn snapshots_receiving(&self) -> usize {
        self.peers
            .values()
            .filter(|p| p.receiving.is_some())
            .count()
    }

    /// Of each snapshot received since the last call: how long from its first chunk to its
    /// install, and how long the install took (on the store thread).
    pub fn take_snapshot_receive_times(
        &mut self,
    ) -> Vec<(std::time::Duration, std::time::Duration)> {
        std::mem::take(&mut self.snapshot_receive_times)
    }

    /// How long each snapshot made since the last call took to serialize, and to write and
    /// sync, off the store thread.
    pub fn take_snapshot_build_times(&mut self) -> Vec<(std::time::Duration, std::time::Duration)> {
        std::mem::take(&mut self.snapshot_build_times)
    }
}
