//! The `History` recorder: real-time order, outcomes, and use from many
//! threads against a real (mutex-protected, hence linearizable) store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread;

use lincheck::kv::{apply, KvInput, KvModel, KvOutput};
use lincheck::testing::SplitMix;
use lincheck::{check, CheckOptions, History};

fn put(value: &str) -> KvInput {
    KvInput::Put {
        key: b"x".to_vec(),
        value: value.as_bytes().to_vec(),
    }
}

#[test]
fn completion_before_invocation_orders_the_operations() {
    let history = History::new();
    let first = history.invoke(1, put("1"));
    history.complete(first, KvOutput::Put);
    let second = history.invoke(2, KvInput::Get { key: b"x".to_vec() });
    history.complete(second, KvOutput::Get(Some(b"1".to_vec())));
    let ops = history.into_operations();
    assert_eq!(ops.len(), 2);
    let first_return = ops[0].return_time.expect("completed");
    assert!(first_return < ops[1].call, "{ops:?}");
}

#[test]
fn outcomes_map_to_operations() {
    let history = History::new();
    let completed = history.invoke(1, put("1"));
    let unknown = history.invoke(2, put("2"));
    let dropped = history.invoke(3, put("3"));
    let _pending = history.invoke(4, put("4"));
    history.complete(completed, KvOutput::Put);
    history.fail_unknown(unknown);
    history.fail_definite(dropped);
    assert_eq!(history.len(), 4);

    let ops = history.operations();
    let clients: Vec<u64> = ops.iter().map(|op| op.client_id).collect();
    assert_eq!(clients, vec![1, 2, 4], "definite failures are dropped");
    assert!(!ops[0].is_unknown());
    assert!(ops[1].is_unknown());
    assert!(ops[2].is_unknown(), "still-pending ops count as unknown");
}

#[test]
#[should_panic(expected = "resolved twice")]
fn resolving_twice_is_a_client_bug() {
    let history = History::new();
    let id = history.invoke(1, put("1"));
    history.complete(id, KvOutput::Put);
    history.fail_unknown(id);
}

#[test]
fn concurrent_clients_against_a_linearizable_store_pass() {
    const CLIENTS: u64 = 8;
    const OPS_PER_CLIENT: u64 = 300;
    let history = Arc::new(History::new());
    let store: Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>> = Arc::default();

    let workers: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let history = Arc::clone(&history);
            let store = Arc::clone(&store);
            thread::spawn(move || {
                let mut rng = SplitMix(client);
                for index in 0..OPS_PER_CLIENT {
                    let key = format!("k{}", rng.below(3)).into_bytes();
                    let value = format!("{client}.{index};").into_bytes();
                    let input = match rng.below(4) {
                        0 => KvInput::Get { key },
                        1 => KvInput::Put { key, value },
                        2 => KvInput::Append { key, value },
                        _ => KvInput::Cas {
                            key,
                            expected: None,
                            new: value,
                        },
                    };
                    let id = history.invoke(client, input.clone());
                    let output = {
                        let mut store = store.lock().expect("store lock");
                        let current = store.get(input.key()).cloned();
                        let (next, output) = apply(&current, &input);
                        match next {
                            Some(value) => store.insert(input.key().to_vec(), value),
                            None => store.remove(input.key()),
                        };
                        output
                    };
                    // Some replies are "lost": the client cannot tell whether
                    // the op happened (here it always did).
                    match rng.below(20) {
                        0 => history.fail_unknown(id),
                        _ => history.complete(id, output),
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("client thread");
    }

    let history = Arc::try_unwrap(history).expect("all clients done");
    let ops = history.into_operations();
    assert_eq!(ops.len() as u64, CLIENTS * OPS_PER_CLIENT);
    let result = check(&KvModel, &ops, &CheckOptions::default()).expect("valid history");
    assert!(result.is_ok(), "{result}");
}

#[test]
fn store_serving_reads_from_a_lagging_replica_is_caught() {
    let history = History::new();
    let mut leader: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut lagging_replica = leader.clone();
    let mut rng = SplitMix(7);
    for index in 0..200u64 {
        let key = format!("k{}", rng.below(2)).into_bytes();
        let input = if rng.below(2) == 0 {
            KvInput::Get { key }
        } else {
            KvInput::Put {
                key,
                value: index.to_string().into_bytes(),
            }
        };
        let id = history.invoke(index % 4, input.clone());
        let output = if let KvInput::Get { key } = &input {
            // The bug: reads skip the leader.
            KvOutput::Get(lagging_replica.get(key).cloned())
        } else {
            let (next, output) = apply(&leader.get(input.key()).cloned(), &input);
            if let Some(value) = next {
                leader.insert(input.key().to_vec(), value);
            }
            output
        };
        history.complete(id, output);
        if index % 10 == 9 {
            lagging_replica = leader.clone();
        }
    }
    let result = check(
        &KvModel,
        &history.into_operations(),
        &CheckOptions::default(),
    )
    .expect("valid history");
    assert!(result.is_illegal(), "{result}");
}
