//! Which key an operation touches: uniform or zipfian over `0..n`, and the key's bytes.

/// The Raft core's seedable SplitMix64: each client has its own, so runs do not contend on a
/// shared RNG and a seed reproduces the key sequence.
#[derive(Debug, Clone)]
pub struct Rng(raft::SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(raft::SplitMix64::new(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// How keys are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    Uniform,
    /// YCSB's scrambled zipfian (theta 0.99): a few keys are hot, and the hot keys are
    /// scattered over the key space (so over regions) rather than being the smallest ones.
    Zipfian,
}

/// YCSB's Zipfian constant.
pub const ZIPFIAN_THETA: f64 = 0.99;

/// Draws key indexes in `0..n`. Cheap to clone (the zeta constants are computed once).
#[derive(Debug, Clone)]
pub struct KeyChooser {
    n: u64,
    zipf: Option<Zipf>,
}

#[derive(Debug, Clone)]
struct Zipf {
    alpha: f64,
    zetan: f64,
    eta: f64,
    half_pow_theta: f64,
}

impl KeyChooser {
    /// `n` must be at least 1.
    pub fn new(distribution: Distribution, n: u64) -> Self {
        assert!(n >= 1, "a key space needs at least one key");
        let zipf = (distribution == Distribution::Zipfian).then(|| {
            // Gray et al., "Quickly generating billion-record synthetic databases" (as in
            // YCSB's ZipfianGenerator). zeta(n) is O(n), done once per run.
            let theta = ZIPFIAN_THETA;
            let zetan: f64 = (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum();
            let zeta2 = 1.0 + 0.5f64.powf(theta);
            Zipf {
                alpha: 1.0 / (1.0 - theta),
                zetan,
                eta: (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan),
                half_pow_theta: 0.5f64.powf(theta),
            }
        });
        KeyChooser { n, zipf }
    }

    pub fn key_count(&self) -> u64 {
        self.n
    }

    pub fn next(&self, rng: &mut Rng) -> u64 {
        match &self.zipf {
            None => rng.next_u64() % self.n,
            Some(z) => {
                let u = rng.next_f64();
                let uz = u * z.zetan;
                let rank = if uz < 1.0 {
                    0
                } else if uz < 1.0 + z.half_pow_theta {
                    1
                } else {
                    let r = (self.n as f64 * (z.eta * u - z.eta + 1.0).powf(z.alpha)) as u64;
                    r.min(self.n - 1)
                };
                // Scramble (FNV-1a of the rank) so hot keys are spread over the key space.
                fnv1a(rank) % self.n
            }
        }
    }
}

fn fnv1a(x: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in x.to_le_bytes() {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The bytes of key `index`: a letter `a`..`z` picked by a hash of the index, then the
/// zero-padded index. The letter spreads keys over RaftKV regions pre-split at letters (the
/// playground splits at `g` and `p`), as keys of a real application would be; etcd and Redis
/// are indifferent to it.
pub fn key_bytes(index: u64) -> Vec<u8> {
    let letter = b'a' + (fnv1a(index ^ 0x5bd1_e995) % 26) as u8;
    let mut key = Vec::with_capacity(12);
    key.push(letter);
    key.extend_from_slice(format!("{index:010}").as_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_covers_the_key_space_evenly() {
        let chooser = KeyChooser::new(Distribution::Uniform, 10);
        let mut rng = Rng::new(7);
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            counts[chooser.next(&mut rng) as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "uneven: {counts:?}");
        }
    }

    #[test]
    fn zipfian_is_skewed_and_in_range() {
        let n = 1_000;
        let chooser = KeyChooser::new(Distribution::Zipfian, n);
        let mut rng = Rng::new(3);
        let mut counts = vec![0u32; n as usize];
        for _ in 0..200_000 {
            let k = chooser.next(&mut rng);
            assert!(k < n);
            counts[k as usize] += 1;
        }
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let top10: u32 = counts[..10].iter().sum();
        // With theta 0.99 over 1,000 keys the 10 hottest take roughly 35-40 % of draws;
        // uniform would give them 1 %.
        assert!(top10 > 200_000 / 4, "not skewed: top 10 keys got {top10}");
        assert!(
            counts[0] < 200_000 / 4,
            "one key takes everything: {}",
            counts[0]
        );
    }

    #[test]
    fn keys_spread_over_letters_and_are_distinct() {
        let mut letters = std::collections::BTreeSet::new();
        let mut all = std::collections::BTreeSet::new();
        for i in 0..1_000 {
            let k = key_bytes(i);
            letters.insert(k[0]);
            assert!(all.insert(k));
        }
        assert_eq!(letters.len(), 26);
    }
}
