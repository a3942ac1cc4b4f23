//! Apply cost of the KV state machine on the server's hot path: encoded `Put` requests of 256
//! bytes from 64 clients (each its own session, sequences increasing), decoded and applied
//! one entry at a time, into a table that already holds the keys (overwrites). Two table
//! sizes: 3,334 keys (a third of `bench/compare`'s 10,000, one region of three) and 333,334
//! (a third of the memory measurement's 1M keys). `cargo bench -p kv --bench apply`.
//!
//! `hset_one_field_in_100k_hash`: applying an `HSet` of one field to a hash of 100,000
//! fields while a clone of the machine (a snapshot being written) shares the hash: the
//! persistent field map copies the field's path, O(log n), not the hash.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kv::{ClientId, Command, KvStateMachine, PutOptions, RegionRange, Request, Sequence};

const CLIENTS: u64 = 64;
const VALUE_BYTES: usize = 256;
/// Entries pre-encoded per measurement batch (reused round-robin).
const PAYLOADS: usize = 4096;

fn key(i: u64) -> Bytes {
    Bytes::from(format!("key{i:012}"))
}

fn put(client: u64, sequence: u64, key: Bytes) -> Bytes {
    Request {
        client_id: ClientId(client),
        sequence: Sequence(sequence),
        command: Command::Put {
            key,
            value: Bytes::from(vec![b'v'; VALUE_BYTES]),
            options: PutOptions::default(),
        },
        proposed_at_ms: sequence,
    }
    .encode()
}

fn apply_puts(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply_put_256B_64_clients");
    group.throughput(Throughput::Elements(1));
    for keys in [3_334u64, 333_334] {
        let mut sm = KvStateMachine::with_region(RegionRange::full());
        let mut index = 0u64;
        // Load the keys (client 1000+, not the measured clients).
        for i in 0..keys {
            index += 1;
            let out = sm.apply(index, &put(1000 + i % CLIENTS, i / CLIENTS + 1, key(i)));
            assert!(
                out.result.is_ok(),
                "load failed at key {i}: {:?}",
                out.result
            );
        }
        let mut sequence = vec![0u64; CLIENTS as usize];
        let mut next_key = 0u64;
        group.bench_function(BenchmarkId::from_parameter(keys), |b| {
            b.iter_custom(|iters| {
                // Encode outside the timed part, in bounded batches.
                let mut elapsed = std::time::Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(PAYLOADS as u64);
                    let payloads: Vec<Bytes> = (0..n)
                        .map(|i| {
                            let client = i % CLIENTS;
                            sequence[client as usize] += 1;
                            next_key = (next_key + 7919) % keys;
                            put(client + 1, sequence[client as usize], key(next_key))
                        })
                        .collect();
                    let start = std::time::Instant::now();
                    for p in &payloads {
                        index += 1;
                        let out = sm.apply(index, p);
                        assert!(out.result.is_ok(), "apply failed: {:?}", out.result);
                    }
                    elapsed += start.elapsed();
                    left -= n;
                }
                elapsed
            })
        });
        assert_eq!(sm.len() as u64, keys, "overwrites must not add keys");
    }
    group.finish();
}

fn hset_one_field_in_100k_hash(c: &mut Criterion) {
    const FIELDS: usize = 100_000;
    let limits = kv::Limits {
        max_batch_keys: FIELDS,
        ..kv::Limits::default()
    };
    let mut sm = KvStateMachine::new(RegionRange::full(), limits, kv::SessionPolicy::default());
    let hset = |sequence: u64, fields: Vec<(Bytes, Bytes)>| {
        Request {
            client_id: ClientId(1),
            sequence: Sequence(sequence),
            command: Command::HSet {
                key: Bytes::from_static(b"big"),
                fields,
                if_absent: false,
            },
            proposed_at_ms: sequence,
        }
        .encode()
    };
    let fields = (0..FIELDS)
        .map(|i| {
            (
                Bytes::from(format!("field{i:06}")),
                Bytes::from_static(b"value"),
            )
        })
        .collect();
    let mut index = 1;
    assert!(sm.apply(index, &hset(index, fields)).result.is_ok());
    // A clone shares the hash, as a snapshot in progress would, for the whole measurement.
    let view = sm.clone();
    let mut group = c.benchmark_group("hset_one_field_in_100k_hash");
    group.throughput(Throughput::Elements(1));
    group.bench_function("shared_with_a_clone", |b| {
        b.iter_custom(|iters| {
            let mut elapsed = std::time::Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(PAYLOADS as u64);
                let payloads: Vec<Bytes> = (0..n)
                    .map(|i| {
                        let field =
                            Bytes::from(format!("field{:06}", (index + i) * 7919 % 100_000));
                        hset(index + i + 1, vec![(field, Bytes::from_static(b"changed"))])
                    })
                    .collect();
                let start = std::time::Instant::now();
                for p in &payloads {
                    index += 1;
                    let out = sm.apply(index, p);
                    assert!(out.result.is_ok(), "apply failed: {:?}", out.result);
                }
                elapsed += start.elapsed();
                left -= n;
            }
            elapsed
        })
    });
    group.finish();
    assert_eq!(view.len(), 1);
}

criterion_group!(benches, apply_puts, hset_one_field_in_100k_hash);
criterion_main!(benches);
