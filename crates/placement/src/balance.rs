//! Where replicas should go after a store joins or leaves: every store that takes replicas
//! ends within one replica of the mean, and no replica moves that did not have to (the
//! 6.5840 shard controller's rule, applied to replicas instead of shards).
//!
//! Two passes over the *wanted* layout (each region's target, or where it is):
//! 1. **Repair**: replicas wanted on a store that takes none (draining or removed) go to
//!    the least-loaded store that lacks one of that region; regions with too few or too
//!    many get filled or trimmed. These moves are forced.
//! 2. **Balance**: while the most-loaded store has two or more replicas more than the least
//!    loaded, one replica moves from the first to the second. Each move lowers the excess
//!    of one over-full store by one, so the count is the least any plan needs: the sum over
//!    stores of what they hold above their final share, the larger shares going to the
//!    stores that hold most. A region to move always exists: the fuller store holds more
//!    regions than the emptier one, so at least one of its regions is not on the other.

use crate::model::{Change, Config, StoreState};
use std::collections::BTreeMap;

/// The target changes that rebalance `config` to `replicas` copies per region over its
/// `Up` stores (empty when it is balanced already).
pub fn rebalance(config: &Config, replicas: usize) -> Vec<Change> {
    let eligible: Vec<u64> = config
        .stores
        .values()
        .filter(|s| s.state == StoreState::Up)
        .map(|s| s.id)
        .collect();
    if eligible.is_empty() {
        return Vec::new();
    }
    let per_region = replicas.min(eligible.len());
    let mut load: BTreeMap<u64, usize> = eligible.iter().map(|&s| (s, 0)).collect();
    let mut wanted: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    // What each region wanted before this rebalance: moves are counted against it.
    let before: BTreeMap<u64, Vec<u64>> = config
        .regions
        .values()
        .map(|r| (r.id, r.wanted()))
        .collect();
    for r in config.regions.values() {
        let w: Vec<u64> = r
            .wanted()
            .into_iter()
            .filter(|s| load.contains_key(s))
            .collect();
        for s in &w {
            *load.get_mut(s).expect("filtered") += 1;
        }
        wanted.insert(r.id, w);
    }
    // 1. Repair: fill or trim every region to `per_region` replicas.
    for w in wanted.values_mut() {
        while w.len() < per_region {
            let s = least_loaded(&load, |s| !w.contains(&s)).expect("fewer replicas than stores");
            w.push(s);
            *load.get_mut(&s).expect("eligible") += 1;
        }
        while w.len() > per_region {
            let (i, _) = w
                .iter()
                .enumerate()
                .max_by_key(|(_, s)| (load[s], **s))
                .expect("non-empty");
            let s = w.remove(i);
            *load.get_mut(&s).expect("eligible") -= 1;
        }
    }
    // 2. Balance. Bounded: each shift lowers the spread's excess; the total is a bound.
    let total: usize = load.values().sum();
    for _ in 0..=2 * total {
        let (&max_s, &max_n) = load
            .iter()
            .max_by_key(|(s, n)| (**n, std::cmp::Reverse(**s)))
            .expect("non-empty");
        let (&min_s, &min_n) = load
            .iter()
            .min_by_key(|(s, n)| (**n, **s))
            .expect("non-empty");
        if max_n <= min_n + 1 {
            break;
        }
        if !shift(&mut wanted, &before, &mut load, max_s, min_s) {
            panic!("store {max_s} holds {max_n} > {min_n} on {min_s} yet no region to move");
        }
    }
    let mut out = Vec::new();
    for r in config.regions.values() {
        let mut w = wanted.remove(&r.id).expect("every region");
        w.sort_unstable();
        if w != r.wanted() {
            out.push(Change::Target {
                region: r.id,
                stores: Some(w),
            });
        }
    }
    out
}

/// Moves one replica's worth of load from `from` to `to` along the cheapest chain of
/// stores: each link hands one region's replica to the next store (which lacks that
/// region). A link costs a move unless the replica it hands on was placed by this
/// rebalance (handing it on changes where that move goes, not how many there are), so
/// forced moves find their destinations without extra moves wherever that is possible.
/// 0-1 breadth-first search over at most one path per store. False when no link leaves
/// `from` at all.
fn shift(
    wanted: &mut BTreeMap<u64, Vec<u64>>,
    before: &BTreeMap<u64, Vec<u64>>,
    load: &mut BTreeMap<u64, usize>,
    from: u64,
    to: u64,
) -> bool {
    // Best (cost, link into the store) found so far, per store.
    let mut best: BTreeMap<u64, (usize, Option<(u64, u64)>)> = BTreeMap::new();
    best.insert(from, (0, None));
    let mut queue = std::collections::VecDeque::from([from]);
    while let Some(a) = queue.pop_front() {
        let cost_a = best[&a].0;
        for (region, w) in wanted.iter() {
            if !w.contains(&a) {
                continue;
            }
            let link = usize::from(before[region].contains(&a));
            for &b in load.keys() {
                if w.contains(&b) {
                    continue;
                }
                let c = cost_a + link;
                if best.get(&b).map_or(true, |(old, _)| c < *old) {
                    best.insert(b, (c, Some((*region, a))));
                    if link == 0 {
                        queue.push_front(b);
                    } else {
                        queue.push_back(b);
                    }
                }
            }
        }
    }
    let mut path = Vec::new();
    let mut at = to;
    while let Some(&(_, Some((region, prev)))) = best.get(&at) {
        path.push((region, prev, at));
        at = prev;
        if path.len() > load.len() {
            break;
        }
    }
    if at != from || path.is_empty() {
        return false;
    }
    // Apply from the end nearest `from`; a region seen twice may make a later link invalid,
    // then the chain stops there and the loop outside tries again.
    for (region, a, b) in path.into_iter().rev() {
        let w = wanted.get_mut(&region).expect("path region");
        let Some(i) = w.iter().position(|s| *s == a) else {
            return true;
        };
        if w.contains(&b) {
            return true;
        }
        w[i] = b;
        *load.get_mut(&a).expect("eligible") -= 1;
        *load.get_mut(&b).expect("eligible") += 1;
    }
    true
}

/// The eligible store with the fewest replicas that passes `ok` (ties: the lowest id).
fn least_loaded(load: &BTreeMap<u64, usize>, ok: impl Fn(u64) -> bool) -> Option<u64> {
    load.iter()
        .filter(|(s, _)| ok(**s))
        .min_by_key(|(s, n)| (**n, **s))
        .map(|(s, _)| *s)
}
