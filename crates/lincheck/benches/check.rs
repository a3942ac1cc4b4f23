//! Checking speed on generated KV histories shaped like the simulator's:
//! ~10k operations, 10 keys, 16 clients, 1% unknown outcomes.

use criterion::{criterion_group, criterion_main, Criterion};
use lincheck::kv::KvModel;
use lincheck::testing::{generate_kv_history, KvWorkload};
use lincheck::{check, CheckOptions};

fn bench_check(c: &mut Criterion) {
    let mut group = c.benchmark_group("check_kv");
    group.sample_size(10);
    for (name, unknown_per_mille) in [
        ("10k_ops_10_keys_16_clients_0pct_unknown", 0),
        ("10k_ops_10_keys_16_clients_1pct_unknown", 10),
        ("10k_ops_10_keys_16_clients_5pct_unknown", 50),
    ] {
        let history = generate_kv_history(&KvWorkload {
            seed: 42,
            op_count: 10_000,
            key_count: 10,
            client_count: 16,
            unknown_per_mille,
            value_domain: None,
            op_duration_max: 20,
        });
        group.bench_function(name, |b| {
            b.iter(|| {
                let result = check(&KvModel, &history, &CheckOptions::default());
                assert!(matches!(result, Ok(ref verdict) if verdict.is_ok()));
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_check);
criterion_main!(benches);
