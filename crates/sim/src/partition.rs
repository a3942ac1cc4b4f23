//! Partition shapes shared by the core simulator (`swarm`) and the whole-cluster simulation
//! (`kv_cluster`): one place that knows what "a majorities ring" or "a bridge" means.

use raft::SplitMix64;

/// The partition shapes the fault schedules choose from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// One node cut off from everyone.
    IsolateOne,
    /// A minority on one side, the majority on the other.
    MinorityMajority,
    /// Each node hears its ring neighbours only: every node sees a majority (with 3 or 5
    /// nodes) but no two nodes see the same one.
    MajoritiesRing,
    /// Two halves that only talk through one bridge node.
    Bridge,
    /// One node can send but not receive, or receive but not send.
    OneWay,
}

impl Shape {
    /// Picks a shape uniformly.
    pub fn pick(rng: &mut SplitMix64) -> Shape {
        match rng.below(5) {
            0 => Shape::IsolateOne,
            1 => Shape::MinorityMajority,
            2 => Shape::MajoritiesRing,
            3 => Shape::Bridge,
            _ => Shape::OneWay,
        }
    }
}

/// The link matrix of `shape` over `n` nodes, with the nodes' roles drawn from `rng`:
/// `links[from][to]` says whether messages from `from` reach `to`. A node always reaches
/// itself.
pub fn shape_links(n: usize, shape: Shape, rng: &mut SplitMix64) -> Vec<Vec<bool>> {
    let mut perm: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        perm.swap(i, j);
    }
    let groups = |groups: &[Vec<usize>]| -> Vec<Vec<bool>> {
        let mut group_of = vec![usize::MAX; n];
        for (g, members) in groups.iter().enumerate() {
            for &m in members {
                group_of[m] = g;
            }
        }
        (0..n)
            .map(|a| {
                (0..n)
                    .map(|b| a == b || (group_of[a] == group_of[b] && group_of[a] != usize::MAX))
                    .collect()
            })
            .collect()
    };
    match shape {
        Shape::IsolateOne => groups(&[vec![perm[0]], perm[1..].to_vec()]),
        Shape::MinorityMajority => {
            let k = 1 + rng.below(((n - 1) / 2).max(1) as u64) as usize;
            groups(&[perm[..k].to_vec(), perm[k..].to_vec()])
        }
        Shape::MajoritiesRing => {
            let mut links = groups(&[]);
            for i in 0..n {
                let a = perm[i];
                for d in [1, n - 1] {
                    links[a][perm[(i + d) % n]] = true;
                }
            }
            links
        }
        Shape::Bridge => {
            let bridge = perm[0];
            let half = (n - 1) / 2;
            let mut ga: Vec<usize> = perm[1..1 + half].to_vec();
            let b: Vec<usize> = perm[1 + half..].to_vec();
            ga.push(bridge);
            let mut links = groups(&[ga]);
            for &x in &b {
                for &y in &b {
                    links[x][y] = true;
                }
                links[x][bridge] = true;
                links[bridge][x] = true;
            }
            links
        }
        Shape::OneWay => {
            let mut links = vec![vec![true; n]; n];
            let x = perm[0];
            let inbound = rng.below(2) == 0;
            for j in (0..n).filter(|&j| j != x) {
                if inbound {
                    links[j][x] = false;
                } else {
                    links[x][j] = false;
                }
            }
            links
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reach(links: &[Vec<bool>], a: usize) -> usize {
        links[a].iter().filter(|&&l| l).count()
    }

    #[test]
    fn every_shape_matches_its_description_on_3_and_5_nodes() {
        let mut rng = SplitMix64::new(7);
        for n in [3, 5] {
            for _ in 0..20 {
                let l = shape_links(n, Shape::IsolateOne, &mut rng);
                assert_eq!((0..n).filter(|&a| reach(&l, a) == 1).count(), 1);
                let l = shape_links(n, Shape::MajoritiesRing, &mut rng);
                assert!(
                    (0..n).all(|a| reach(&l, a) == 3),
                    "each sees itself and 2 others"
                );
                let l = shape_links(n, Shape::OneWay, &mut rng);
                let cut = (0..n)
                    .flat_map(|a| (0..n).map(move |b| (a, b)))
                    .filter(|&(a, b)| !l[a][b])
                    .count();
                assert_eq!(cut, n - 1, "one node loses one direction to everyone");
                let l = shape_links(n, Shape::Bridge, &mut rng);
                let bridge = (0..n).filter(|&a| reach(&l, a) == n).count();
                assert_eq!(bridge, 1, "exactly one node reaches everyone");
                let symmetric = (0..n).all(|a| (0..n).all(|b| l[a][b] == l[b][a]));
                assert!(symmetric, "bridge links are symmetric");
            }
        }
    }
}
