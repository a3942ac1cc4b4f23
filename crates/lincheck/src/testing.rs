//! Synthetic, linearizable-by-construction KV histories for tests and
//! benchmarks (of this crate and of its users).
//!
//! Each operation gets a random interval per client and a random
//! linearization point inside it; applying the operations to a sequential
//! store in linearization-point order yields the outputs, so the history is
//! linearizable by construction. Unknown operations take effect at a random
//! point after their call (possibly after the client gave up) or never.

use std::collections::HashMap;

use crate::kv::{apply, KeyState, KvInput, KvOutput};
use crate::model::Operation;

/// Shape of a generated history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvWorkload {
    /// Everything random derives from this.
    pub seed: u64,
    /// Operations to generate.
    pub op_count: usize,
    /// Distinct keys (`k0`, `k1`, ...); at least 1.
    pub key_count: usize,
    /// Concurrent clients, each issuing one operation at a time; at least 1.
    pub client_count: usize,
    /// Per mille of operations whose outcome is unknown.
    pub unknown_per_mille: u64,
    /// `Some(n)`: values are drawn from `n` small strings, so values repeat
    /// and CAS often succeeds. `None`: every written value is unique.
    pub value_domain: Option<u64>,
    /// Longest operation interval in clock ticks; at least 1.
    pub op_duration_max: u64,
}

impl Default for KvWorkload {
    fn default() -> Self {
        KvWorkload {
            seed: 1,
            op_count: 1000,
            key_count: 10,
            client_count: 8,
            unknown_per_mille: 10,
            value_domain: None,
            op_duration_max: 20,
        }
    }
}

/// Small deterministic RNG (splitmix64), so the crate needs no `rand`.
#[derive(Clone, Debug)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// Next random word.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound`; 0 if `bound` is 0.
    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            0
        } else {
            self.next_u64() % bound
        }
    }
}

struct Planned {
    client_id: u64,
    input: KvInput,
    call: u64,
    return_time: u64,
    unknown: bool,
    /// `None`: the operation never took effect.
    linearization_point: Option<u64>,
}

/// Generates a linearizable history as described in the module docs.
pub fn generate_kv_history(workload: &KvWorkload) -> Vec<Operation<KvInput, KvOutput>> {
    let mut rng = SplitMix(workload.seed);
    let client_count = workload.client_count.max(1);
    let key_count = workload.key_count.max(1) as u64;
    let duration_max = workload.op_duration_max.max(1);
    let mut client_free_at = vec![0u64; client_count];
    let mut written: HashMap<Vec<u8>, Vec<Vec<u8>>> = HashMap::new();
    let mut planned = Vec::with_capacity(workload.op_count);

    for index in 0..workload.op_count {
        let client = rng.below(client_count as u64) as usize;
        let call = client_free_at[client] + rng.below(3);
        let duration = rng.below(duration_max + 1);
        let return_time = call + duration;
        client_free_at[client] = return_time + 1;
        let unknown = rng.below(1000) < workload.unknown_per_mille;
        let linearization_point = if !unknown {
            Some(call + rng.below(duration + 1))
        } else if rng.below(2) == 0 {
            None
        } else {
            // The client gave up at return_time, but the request may still
            // be applied long after.
            Some(call + rng.below(4 * duration + 1))
        };

        let key = format!("k{}", rng.below(key_count)).into_bytes();
        let value = match workload.value_domain {
            Some(domain) => format!("{}", rng.below(domain)).into_bytes(),
            None => format!("c{client}.{index};").into_bytes(),
        };
        let input = match rng.below(100) {
            0..=39 => KvInput::Get { key },
            40..=59 => KvInput::Put { key, value },
            60..=64 => KvInput::Delete { key },
            65..=79 => KvInput::Append { key, value },
            _ => {
                let candidates = written.get(&key).map(Vec::as_slice).unwrap_or(&[]);
                let expected = if candidates.is_empty() || rng.below(4) == 0 {
                    None
                } else {
                    let recent = candidates.len().min(3) as u64;
                    let pick = candidates.len() - 1 - rng.below(recent) as usize;
                    Some(candidates[pick].clone())
                };
                KvInput::Cas {
                    key,
                    expected,
                    new: value,
                }
            }
        };
        if let KvInput::Put { key, value }
        | KvInput::Cas {
            key, new: value, ..
        } = &input
        {
            written.entry(key.clone()).or_default().push(value.clone());
        }
        planned.push(Planned {
            client_id: client as u64,
            input,
            call,
            return_time,
            unknown,
            linearization_point,
        });
    }

    let mut order: Vec<usize> = (0..planned.len())
        .filter(|&index| planned[index].linearization_point.is_some())
        .collect();
    order.sort_by_key(|&index| (planned[index].linearization_point, index));
    let mut store: HashMap<Vec<u8>, KeyState> = HashMap::new();
    let mut outputs: Vec<Option<KvOutput>> = vec![None; planned.len()];
    for index in order {
        let input = &planned[index].input;
        let state = store.entry(input.key().to_vec()).or_default();
        let (next, output) = apply(state, input);
        *state = next;
        outputs[index] = Some(output);
    }

    planned
        .into_iter()
        .zip(outputs)
        .map(|(op, output)| match output {
            Some(output) if !op.unknown => {
                Operation::completed(op.client_id, op.input, op.call, output, op.return_time)
            }
            _ => Operation::unknown(op.client_id, op.input, op.call),
        })
        .collect()
}
