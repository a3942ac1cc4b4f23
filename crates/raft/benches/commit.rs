//! Commit throughput of a 3-voter in-memory cluster with no IO: 128-byte entries, proposed
//! in batches and one at a time, plus linearizable read throughput (ReadIndex and lease)
//! and snapshot install throughput. `cargo bench -p raft --bench commit`.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use raft::*;
use std::collections::VecDeque;
use std::time::Duration;

struct Cluster {
    nodes: Vec<RawNode<MemStorage>>,
    queue: VecDeque<Message>,
    applied: Vec<LogIndex>,
    reads_done: u64,
    /// Messages to this node index are dropped (a node that is down).
    down: Option<usize>,
}

impl Cluster {
    fn new(n: u64) -> Cluster {
        let voters: Vec<u64> = (1..=n).collect();
        let nodes = voters
            .iter()
            .map(|&id| {
                let mut c = Config::new(id, 1);
                c.max_inflight_msgs = 1024;
                c.max_snapshot_bytes = 1 << 30;
                c.max_uncommitted_bytes = 1 << 30;
                RawNode::new(
                    &c,
                    MemStorage::with_conf_state(ConfState::from_voters(voters.clone())),
                )
                .unwrap()
            })
            .collect();
        let mut c = Cluster {
            nodes,
            queue: VecDeque::new(),
            applied: vec![LogIndex::ZERO; n as usize],
            reads_done: 0,
            down: None,
        };
        c.nodes[0].campaign();
        c.run();
        assert_eq!(c.nodes[0].role(), Role::Leader);
        c
    }

    fn process(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if !n.has_ready() {
            return;
        }
        let mut rd = n.ready();
        if let Some(s) = &rd.snapshot {
            n.storage_mut().apply_snapshot(s.clone());
        }
        n.storage_mut().append(&rd.entries);
        if let Some(hs) = rd.hard_state {
            n.storage_mut().set_hard_state(hs);
        }
        self.queue.extend(std::mem::take(&mut rd.messages));
        if let Some(e) = rd.committed_entries.last() {
            self.applied[i] = e.index;
        }
        if let Some(s) = &rd.snapshot {
            self.applied[i] = self.applied[i].max(s.metadata.index);
        }
        self.reads_done += rd.read_states.len() as u64;
        n.advance(rd);
    }

    fn run(&mut self) {
        loop {
            for i in 0..self.nodes.len() {
                self.process(i);
            }
            if self.queue.is_empty() {
                if self.nodes.iter().all(|n| !n.has_ready()) {
                    return;
                }
                continue;
            }
            while let Some(m) = self.queue.pop_front() {
                let to = m.to.0 as usize - 1;
                if Some(to) == self.down {
                    continue;
                }
                self.nodes[to].step(m).unwrap();
            }
        }
    }

    fn commit(&mut self, datas: &[Bytes]) {
        let last = self.nodes[0].propose_batch(datas).unwrap();
        self.run();
        assert!(self.applied[0] >= last);
    }

    fn compact_all(&mut self) {
        for i in 0..self.nodes.len() {
            let a = self.applied[i];
            let cs = self.nodes[i].status().conf_state;
            self.nodes[i].storage_mut().compact(a);
            let _ = cs;
        }
    }
}

fn bench_commit(c: &mut Criterion) {
    let mut g = c.benchmark_group("commit_3_voters_128B");
    g.measurement_time(Duration::from_secs(5));
    let payload = Bytes::from(vec![0xAB; 128]);
    for batch in [1usize, 4096] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(
            BenchmarkId::new("entries_per_proposal", batch),
            &batch,
            |b, &batch| {
                let mut cl = Cluster::new(3);
                let datas: Vec<Bytes> = (0..batch).map(|_| payload.clone()).collect();
                let mut rounds = 0u64;
                b.iter(|| {
                    cl.commit(&datas);
                    rounds += 1;
                    // Keep memory flat: the in-memory log is compacted as a real store would.
                    if rounds.is_multiple_of(64) {
                        cl.compact_all();
                    }
                });
            },
        );
    }
    g.finish();
}

fn bench_reads(c: &mut Criterion) {
    let mut g = c.benchmark_group("reads_3_voters");
    g.measurement_time(Duration::from_secs(5));
    const READS: u64 = 1024;
    g.throughput(Throughput::Elements(READS));
    for (name, mode) in [("read_index", ReadMode::Safe), ("lease", ReadMode::Lease)] {
        g.bench_function(name, |b| {
            let mut cl = Cluster::new(3);
            cl.commit(&[Bytes::from_static(b"x")]);
            // Establish the lease: one heartbeat round acknowledged by the followers.
            for _ in 0..2 {
                cl.nodes[0].tick();
            }
            cl.run();
            if mode == ReadMode::Lease {
                assert!(cl.nodes[0].lease_valid(), "lease not established");
            }
            let mut ctx_id = 0u64;
            b.iter(|| {
                let before = cl.reads_done;
                for _ in 0..READS {
                    ctx_id += 1;
                    cl.nodes[0]
                        .read_index(Bytes::copy_from_slice(&ctx_id.to_le_bytes()), mode)
                        .unwrap();
                    if mode == ReadMode::Safe && ctx_id.is_multiple_of(64) {
                        // Confirm in rounds, as a server batching its reads would.
                        cl.run();
                    }
                }
                cl.run();
                assert_eq!(cl.reads_done - before, READS);
            });
        });
    }
    g.finish();
}

fn bench_snapshot_install(c: &mut Criterion) {
    let mut g = c.benchmark_group("snapshot_install");
    g.measurement_time(Duration::from_secs(5));
    g.sample_size(10);
    const SNAPSHOT_BYTES: usize = 64 << 20;
    g.throughput(Throughput::Bytes(SNAPSHOT_BYTES as u64));
    g.bench_function("64MiB_in_1MiB_chunks", |b| {
        let data = Bytes::from(vec![0x5A; SNAPSHOT_BYTES]);
        b.iter_with_setup(
            || {
                // Node 3 is down while the leader commits and compacts its log into a
                // 64 MiB snapshot; when it returns it can only catch up by snapshot.
                let mut cl = Cluster::new(3);
                cl.down = Some(2);
                for _ in 0..10 {
                    cl.commit(&[Bytes::from_static(b"e")]);
                }
                let applied = cl.applied[0];
                let cs = cl.nodes[0].status().conf_state;
                cl.nodes[0]
                    .storage_mut()
                    .create_snapshot(applied, cs, data.clone());
                cl.down = None;
                (cl, applied)
            },
            |(mut cl, applied)| {
                // A heartbeat makes the leader probe the empty follower, which needs the
                // snapshot.
                for _ in 0..2 {
                    cl.nodes[0].tick();
                }
                cl.run();
                assert!(cl.applied[2] >= applied, "snapshot not installed");
            },
        );
    });
    g.finish();
}

criterion_group!(benches, bench_commit, bench_reads, bench_snapshot_install);
criterion_main!(benches);
