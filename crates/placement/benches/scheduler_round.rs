//! Cost of one scheduling round as the cluster grows: `Scheduler::round` over 10^3 and 10^4
//! regions on 5 stores (3 replicas each, regions of 32 MiB, a steady load), the round the
//! placement leader runs every heartbeat interval. The first round of a fresh scheduler
//! observes everything; the measured rounds are later ones over an unchanged view, which is
//! the steady state of a big, balanced cluster. Results: docs/BENCHMARKS.md, "The scheduler".

use std::collections::BTreeMap;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use placement::scheduler::{ScheduleConfig, Scheduler};
use placement::{Config, LiveRegion, LiveStore, RegionLayout, ReplicaMeta, StoreMeta, StoreState};

const STORES: u64 = 5;

fn key(n: u64) -> Vec<u8> {
    n.to_be_bytes().to_vec()
}

fn cluster(regions: u64) -> (Config, Vec<LiveStore>, Vec<LiveRegion>) {
    let mut config = Config::default();
    for id in 1..=STORES {
        config.stores.insert(
            id,
            StoreMeta {
                id,
                addrs: Default::default(),
                state: StoreState::Up,
                labels: BTreeMap::new(),
                capacity: 1 << 40,
            },
        );
    }
    let step = u64::MAX / regions;
    let mut live = Vec::new();
    for i in 1..=regions {
        // Round-robin placement: balanced replicas and leaders, so no move is due.
        let on: Vec<u64> = (0..3).map(|r| (i + r) % STORES + 1).collect();
        config.regions.insert(
            i,
            RegionLayout {
                id: i,
                start_key: key((i - 1) * step),
                end_key: (i != regions).then(|| key(i * step)),
                conf_version: 1,
                version: 1,
                replicas: on
                    .iter()
                    .map(|&s| ReplicaMeta {
                        peer: i * 1000 + s,
                        store: s,
                        learner: false,
                    })
                    .collect(),
                target: None,
            },
        );
        live.push(LiveRegion {
            id: i,
            leader_store: on[0],
            approximate_keys: 100_000,
            approximate_bytes: 32 << 20,
            ..LiveRegion::default()
        });
    }
    let stores = (1..=STORES)
        .map(|id| LiveStore {
            id,
            up: true,
            last_heartbeat_ms_ago: Some(1_000),
            capacity_bytes: 1 << 40,
            ..LiveStore::default()
        })
        .collect();
    (config, stores, live)
}

fn rounds(c: &mut Criterion) {
    let mut group = c.benchmark_group("scheduler_round");
    group.sample_size(10);
    for regions in [1_000u64, 10_000] {
        let (config, stores, live) = cluster(regions);
        let mut scheduler = Scheduler::new(ScheduleConfig::default());
        let mut now_ms = 1_000_000;
        // Warm: the first rounds observe every region and settle whatever they decide.
        for _ in 0..3 {
            scheduler.round(&config, &stores, &live, now_ms, 600_000);
            now_ms += 10_000;
        }
        group.bench_with_input(BenchmarkId::from_parameter(regions), &regions, |b, _| {
            b.iter(|| {
                now_ms += 10_000;
                scheduler.round(&config, &stores, &live, now_ms, 600_000)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, rounds);
criterion_main!(benches);
