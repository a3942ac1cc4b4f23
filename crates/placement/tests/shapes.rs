//! The placement state machine as a pure function, in the shapes of 6.5840's ShardCtrler
//! tests: Join, Leave (drain), Move and Query semantics, every replica agreeing on every
//! configuration, balance within one after every Join and Leave with the fewest moves, and
//! verbs from several clients interleaved.

use placement::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

const CLUSTER: u64 = 0xC1;

fn addrs(id: u64) -> StoreAddrs {
    StoreAddrs {
        peer: format!("127.0.0.1:{}", 17000 + id),
        client: format!("127.0.0.1:{}", 17100 + id),
        resp: String::new(),
    }
}

fn store(id: u64) -> StoreMeta {
    StoreMeta {
        id,
        addrs: addrs(id),
        state: StoreState::Up,
        labels: BTreeMap::new(),
        capacity: 0,
    }
}

/// `k` regions splitting the key space at "r1", "r2", ..., each on stores 1..=3.
fn boot(k: u64) -> PlacementState {
    let regions = (1..=k)
        .map(|i| RegionLayout {
            id: i,
            start_key: if i == 1 {
                vec![]
            } else {
                format!("r{}", i - 1).into_bytes()
            },
            end_key: (i < k).then(|| format!("r{i}").into_bytes()),
            conf_version: 1,
            version: 1,
            replicas: (1..=3)
                .map(|s| ReplicaMeta {
                    peer: i * 1000 + s,
                    store: s,
                    learner: false,
                })
                .collect(),
            target: None,
        })
        .collect();
    PlacementState::bootstrap(CLUSTER, 3, (1..=3).map(store).collect(), regions)
}

fn join(p: &mut PlacementState, token: u64) -> u64 {
    match p.apply(&Command::Join {
        token,
        cluster_id: CLUSTER,
        addrs: addrs(token),
        labels: BTreeMap::new(),
        capacity: 0,
    }) {
        Ok(Reply::Joined { store, .. }) => store,
        other => panic!("join: {other:?}"),
    }
}

/// Wanted replicas per Up store.
fn loads(c: &Config) -> BTreeMap<u64, usize> {
    c.load()
}

fn assert_balanced(c: &Config, replicas: usize) {
    let load = loads(c);
    let (min, max) = (*load.values().min().unwrap(), *load.values().max().unwrap());
    assert!(max - min <= 1, "config {}: loads {load:?}", c.number);
    for r in c.regions.values() {
        let w = r.wanted();
        let mut d = w.clone();
        d.dedup();
        assert_eq!(d, w, "region {} wants a store twice", r.id);
        assert_eq!(w.len(), replicas.min(load.len()), "region {}: {w:?}", r.id);
        for s in &w {
            assert!(
                load.contains_key(s),
                "region {} wants store {s}, not Up",
                r.id
            );
        }
    }
}

/// (region, store) pairs wanted in `after` and not in `before`: the replicas that move.
fn moves(before: &Config, after: &Config) -> usize {
    after
        .regions
        .values()
        .map(|r| {
            let old = before
                .regions
                .get(&r.id)
                .map(|o| o.wanted())
                .unwrap_or_default();
            r.wanted().iter().filter(|s| !old.contains(s)).count()
        })
        .sum()
}

/// The fewest moves any plan needs to take `before`'s wanted layout to a balanced one over
/// `after`'s Up stores: replicas on stores that take none must move, and every store above
/// its final share sheds the excess (larger shares go to the stores holding most).
fn min_moves(before: &Config, after: &Config) -> usize {
    let up: Vec<u64> = after
        .stores
        .values()
        .filter(|s| s.state == StoreState::Up)
        .map(|s| s.id)
        .collect();
    let mut held: Vec<usize> = up
        .iter()
        .map(|s| {
            before
                .regions
                .values()
                .filter(|r| r.wanted().contains(s))
                .count()
        })
        .collect();
    let forced: usize = before
        .regions
        .values()
        .map(|r| r.wanted().iter().filter(|s| !up.contains(s)).count())
        .sum();
    let total: usize = held.iter().sum::<usize>() + forced;
    held.sort_unstable_by(|a, b| b.cmp(a));
    let (q, rem) = (total / up.len(), total % up.len());
    let shed: usize = held
        .iter()
        .enumerate()
        .map(|(i, h)| h.saturating_sub(q + usize::from(i < rem)))
        .sum();
    forced + shed
}

/// Leave's moves: every replica wanted on the drained store moves; beyond the lower bound of
/// [`min_moves`] (which ignores the distinct-store rule), at most one more per Up store: a
/// store that needs a replica but already holds the drained regions on offer gets another
/// region's replica instead, which then has to leave a fuller store.
fn assert_leave_moves(before: &Config, after: &Config, drained: u64) {
    for r in after.regions.values() {
        assert!(
            !r.wanted().contains(&drained),
            "region {} still wants {drained}",
            r.id
        );
    }
    let blocked = after
        .stores
        .values()
        .filter(|s| s.state == StoreState::Up)
        .count();
    let (m, lower) = (moves(before, after), min_moves(before, after));
    assert!(
        (lower..=lower + blocked).contains(&m),
        "{m} moves, at least {lower}, {blocked} stores blocked"
    );
}

#[test]
fn join_balances_with_the_fewest_moves() {
    let mut p = boot(10);
    for token in 100..106 {
        let before = p.latest().clone();
        let id = join(&mut p, token);
        assert!(!before.stores.contains_key(&id), "id {id} reused");
        let after = p.latest().clone();
        assert_eq!(after.number, before.number + 1);
        assert_balanced(&after, 3);
        assert_eq!(moves(&before, &after), min_moves(&before, &after));
        assert!(moves(&before, &after) > 0, "a new store gets replicas");
    }
}

#[test]
fn join_is_idempotent_per_token_and_checks_the_cluster() {
    let mut p = boot(4);
    let a = join(&mut p, 7);
    let n = p.latest().number;
    assert_eq!(join(&mut p, 7), a, "a retried join gets the same id");
    assert_eq!(p.latest().number, n, "and changes nothing");
    assert_ne!(join(&mut p, 8), a);
    let wrong = p.apply(&Command::Join {
        token: 9,
        cluster_id: CLUSTER + 1,
        addrs: addrs(9),
        labels: BTreeMap::new(),
        capacity: 0,
    });
    assert!(
        matches!(wrong, Err(PlacementError::WrongCluster { .. })),
        "{wrong:?}"
    );
    let empty = p.apply(&Command::Join {
        token: 10,
        cluster_id: CLUSTER,
        addrs: StoreAddrs::default(),
        labels: BTreeMap::new(),
        capacity: 0,
    });
    assert!(
        matches!(empty, Err(PlacementError::Invalid(_))),
        "{empty:?}"
    );
}

/// Executes every region's operators the way stores would (one replica change at a time,
/// each reported with a new conf version), checking that no step leaves fewer voters than
/// the smaller of the current and target sizes.
fn execute(p: &mut PlacementState) -> usize {
    let mut steps = 0;
    for _ in 0..10_000 {
        let c = p.latest().clone();
        let mut progressed = false;
        for r in c.regions.values() {
            let leader = r.replicas.iter().find(|x| !x.learner).unwrap().store;
            let Some(op) = next_step(r, leader) else {
                continue;
            };
            let mut n = r.clone();
            let voters = |l: &RegionLayout| l.replicas.iter().filter(|x| !x.learner).count();
            match op {
                Operator::AddLearner { store } => n.replicas.push(ReplicaMeta {
                    peer: 900_000 + store * 1000 + r.id,
                    store,
                    learner: true,
                }),
                Operator::Promote { store } => {
                    n.replicas
                        .iter_mut()
                        .find(|x| x.store == store)
                        .unwrap()
                        .learner = false
                }
                Operator::Remove { store } => {
                    assert_ne!(store, leader, "the leader removes itself");
                    n.replicas.retain(|x| x.store != store)
                }
                // The leader is the first voter in this model: move the new one to the front.
                Operator::TransferLeader { store } => {
                    let i = n.replicas.iter().position(|x| x.store == store).unwrap();
                    let x = n.replicas.remove(i);
                    n.replicas.insert(0, x);
                    n.conf_version -= 1; // leadership is not part of the layout
                }
            }
            n.conf_version += 1;
            let want = r.target.as_ref().unwrap().len();
            assert!(
                voters(&n) >= voters(r).min(want),
                "step {op:?} on {r:?} drops to {} voters",
                voters(&n)
            );
            n.target = None;
            if n.conf_version > r.conf_version {
                p.apply(&Command::ReportRegion { region: n }).unwrap();
            } else {
                // Only the order changed: model it without a report (placement does not track leaders here).
                let mut c2 = n.clone();
                c2.conf_version += 1;
                p.apply(&Command::ReportRegion { region: c2 }).unwrap();
            }
            steps += 1;
            progressed = true;
        }
        if !progressed {
            return steps;
        }
    }
    panic!("operators did not converge");
}

#[test]
fn operators_reach_the_targets_and_drained_stores_are_removed() {
    let mut p = boot(8);
    let s4 = join(&mut p, 4);
    let s5 = join(&mut p, 5);
    assert!(execute(&mut p) > 0);
    let c = p.latest().clone();
    assert_balanced(&c, 3);
    for r in c.regions.values() {
        assert_eq!(r.target, None, "region {} still moving: {r:?}", r.id);
        assert!(r.replicas.iter().all(|x| !x.learner));
    }
    for s in [s4, s5] {
        assert!(c.regions_on(s) >= 4, "store {s} holds {}", c.regions_on(s));
    }
    // Leave: store 1 drains; it is Removed once it holds nothing.
    let before = p.latest().clone();
    p.apply(&Command::Drain { store: 1 }).unwrap();
    let after = p.latest().clone();
    assert_eq!(after.stores[&1].state, StoreState::Draining);
    assert_balanced(&after, 3);
    assert_leave_moves(&before, &after, 1);
    execute(&mut p);
    let end = p.latest();
    assert_eq!(
        end.stores[&1].state,
        StoreState::Removed,
        "{:?}",
        end.stores[&1]
    );
    assert_eq!(end.regions_on(1), 0);
    assert_balanced(end, 3);
    assert!(matches!(
        p.apply(&Command::Drain { store: 1 }),
        Err(PlacementError::StoreRemoved(1))
    ));
}

#[test]
fn drain_refuses_to_leave_too_few_stores() {
    let mut p = boot(3);
    let n = p.latest().number;
    let r = p.apply(&Command::Drain { store: 2 });
    assert!(
        matches!(r, Err(PlacementError::TooFewStores { .. })),
        "{r:?}"
    );
    assert_eq!(p.latest().number, n);
    join(&mut p, 4);
    assert!(p.apply(&Command::Drain { store: 2 }).is_ok());
    assert!(matches!(
        p.apply(&Command::Drain { store: 3 }),
        Err(PlacementError::TooFewStores { .. })
    ));
    assert!(matches!(
        p.apply(&Command::Drain { store: 42 }),
        Err(PlacementError::UnknownStore(42))
    ));
}

#[test]
fn move_sets_a_target_that_operators_reach() {
    let mut p = boot(3);
    let s4 = join(&mut p, 4);
    execute(&mut p);
    let n = p.latest().number;
    // Onto the store that lacks region 2, off the lowest of those that hold it.
    let mut now = p.latest().regions[&2].stores();
    now.sort_unstable();
    let lacking = (1..=s4).find(|s| !now.contains(s)).unwrap();
    let mut target = vec![lacking, now[1], now[2]];
    p.apply(&Command::Move {
        region: 2,
        stores: target.clone(),
    })
    .unwrap();
    assert_eq!(p.latest().number, n + 1, "a move is a new configuration");
    execute(&mut p);
    let mut on = p.latest().regions[&2].stores();
    on.sort_unstable();
    target.sort_unstable();
    assert_eq!(on, target);
    for bad in [
        Command::Move {
            region: 2,
            stores: vec![1, 1, 2],
        },
        Command::Move {
            region: 2,
            stores: vec![],
        },
        Command::Move {
            region: 2,
            stores: vec![1, 2, 99],
        },
        Command::Move {
            region: 77,
            stores: vec![1, 2, 3],
        },
    ] {
        let before = p.latest().clone();
        assert!(p.apply(&bad).is_err(), "{bad:?} accepted");
        assert_eq!(*p.latest(), before, "{bad:?} changed something");
    }
}

#[test]
fn reports_older_than_held_are_ignored_and_merges_drop_the_source() {
    let mut p = boot(3);
    let mut r1 = p.latest().regions[&1].clone();
    r1.version = 3;
    r1.end_key = Some(b"r2".to_vec()); // region 1 absorbed region 2 ([r1, r2))
    p.apply(&Command::ReportRegion { region: r1.clone() })
        .unwrap();
    assert!(
        !p.latest().regions.contains_key(&2),
        "merged source still listed"
    );
    let mut stale = r1.clone();
    stale.version = 2;
    stale.end_key = Some(b"r1".to_vec());
    let n = p.latest().number;
    assert_eq!(
        p.apply(&Command::ReportRegion { region: stale }),
        Ok(Reply::Stale)
    );
    assert_eq!(p.latest().number, n);
    // A split's new half arrives before its parent's own report: the parent stays.
    let mut right = r1.clone();
    right.id = 50;
    right.version = 4;
    right.start_key = b"m".to_vec();
    p.apply(&Command::ReportRegion { region: right }).unwrap();
    assert!(p.latest().regions.contains_key(&1));
    assert!(p.latest().regions.contains_key(&50));
    // Bad reports change nothing.
    let mut empty = r1.clone();
    empty.replicas.clear();
    assert!(p.apply(&Command::ReportRegion { region: empty }).is_err());
}

/// A region split and its left half merged into its neighbour before the split region
/// ever reported its smaller range: newer regions cover its old range only together, and it
/// is dropped then, not kept forever (the simulator's seed 113).
#[test]
fn a_region_covered_by_several_newer_ones_is_gone() {
    let mut p = boot(3);
    // Region 2 [r1, r2) splits at r1m: 2 keeps [r1, r1m), 60 gets [r1m, r2).
    let mut right = p.latest().regions[&2].clone();
    right.id = 60;
    right.version = 2;
    right.start_key = b"r1m".to_vec();
    p.apply(&Command::ReportRegion { region: right }).unwrap();
    assert!(
        p.latest().regions.contains_key(&2),
        "a split's parent is dropped before its own report"
    );
    // Region 1 absorbs 2's left half ([r1, r1m)) without 2 ever reporting it.
    let mut r1 = p.latest().regions[&1].clone();
    r1.version = 3;
    r1.end_key = Some(b"r1m".to_vec());
    p.apply(&Command::ReportRegion { region: r1 }).unwrap();
    let ids: Vec<u64> = p.latest().regions.keys().copied().collect();
    assert_eq!(
        ids,
        vec![1, 3, 60],
        "region 2 is covered by 1 and 60 together"
    );
}

/// A data region spanning the whole key space after a merge does not make the placement
/// group (whose layout also spans it) look merged away.
#[test]
fn a_region_covering_everything_leaves_the_placement_group_alone() {
    let mut p = boot(2);
    let mut pg = p.latest().regions[&1].clone();
    pg.id = types::PLACEMENT_REGION.0;
    pg.start_key = vec![];
    pg.end_key = None;
    p.apply(&Command::ReportRegion { region: pg }).unwrap();
    let mut all = p.latest().regions[&1].clone();
    all.version = 5;
    all.end_key = None;
    p.apply(&Command::ReportRegion { region: all }).unwrap();
    assert!(
        !p.latest().regions.contains_key(&2),
        "the merged source is gone"
    );
    assert!(
        p.latest().regions.contains_key(&types::PLACEMENT_REGION.0),
        "the placement group was dropped"
    );
}

/// A merge's source reporting after its target's covering report is not brought back, and
/// a split's new half that still has a replica on a draining store gets a target at once
/// (else the drain would never end).
#[test]
fn late_sources_stay_gone_and_split_halves_of_a_drained_store_move() {
    let mut p = boot(3);
    join(&mut p, 4);
    execute(&mut p);
    let mut merged = p.latest().regions[&1].clone();
    merged.version = 3;
    merged.end_key = Some(b"r2".to_vec());
    p.apply(&Command::ReportRegion { region: merged }).unwrap();
    let mut late = p.latest().regions.get(&1).unwrap().clone();
    late.id = 2;
    late.version = 2;
    late.start_key = b"r1".to_vec();
    late.end_key = Some(b"r2".to_vec());
    assert_eq!(
        p.apply(&Command::ReportRegion { region: late }),
        Ok(Reply::Stale)
    );
    assert!(!p.latest().regions.contains_key(&2));
    // Store 1 drains; before its regions moved, region 3 splits and its new half reports.
    let holder = *p.latest().regions[&3].stores().first().unwrap();
    p.apply(&Command::Drain { store: holder }).unwrap();
    let mut half = p.latest().regions[&3].clone();
    half.id = 77;
    half.version = 2;
    half.start_key = b"r9".to_vec();
    half.target = None;
    p.apply(&Command::ReportRegion { region: half }).unwrap();
    let mut parent = p.latest().regions[&3].clone();
    parent.version = 2;
    parent.end_key = Some(b"r9".to_vec());
    p.apply(&Command::ReportRegion { region: parent }).unwrap();
    let t = p.latest().regions[&77]
        .target
        .clone()
        .expect("a target for the new half");
    assert!(
        !t.contains(&holder),
        "{t:?} still on the draining store {holder}"
    );
    execute(&mut p);
    assert_eq!(p.latest().stores[&holder].state, StoreState::Removed);
}

#[test]
fn every_configuration_is_answered_until_it_falls_out_of_the_history() {
    let mut p = boot(4);
    let mut seen = vec![p.latest().clone()];
    let mut token = 10;
    while seen.len() < HISTORY_LEN + 50 {
        // Alternate joins and moves so configurations keep coming.
        if seen.len() % 5 == 0 {
            join(&mut p, token);
            token += 1;
        } else {
            let c = p.latest();
            let ids: Vec<u64> = c.stores.keys().copied().collect();
            let k = seen.len();
            let stores = vec![
                ids[k % ids.len()],
                ids[(k + 1) % ids.len()],
                ids[(k + 2) % ids.len()],
            ];
            let region = (k as u64 % 4) + 1;
            if p.latest().regions[&region].wanted() == {
                let mut s = stores.clone();
                s.sort_unstable();
                s
            } {
                join(&mut p, token);
                token += 1;
            } else {
                p.apply(&Command::Move { region, stores }).unwrap();
            }
        }
        assert_eq!(p.latest().number, seen.last().unwrap().number + 1);
        seen.push(p.latest().clone());
    }
    let oldest = p.oldest();
    assert!(oldest > 1, "the history is bounded");
    assert_eq!(p.latest().number - oldest + 1, HISTORY_LEN as u64);
    for c in &seen {
        if c.number < oldest {
            assert!(matches!(
                p.query(Some(c.number)),
                Err(PlacementError::HistoryGone { .. })
            ));
        } else {
            assert_eq!(&p.query(Some(c.number)).unwrap(), c, "config {}", c.number);
        }
    }
    assert_eq!(&p.query(None).unwrap(), seen.last().unwrap());
    assert_eq!(&p.query(Some(u64::MAX)).unwrap(), seen.last().unwrap());
    // A replica restored from a snapshot answers the same.
    let q = PlacementState::decode(&p.encode()).unwrap();
    assert_eq!(q, p);
    for n in oldest..=p.latest().number {
        assert_eq!(q.query(Some(n)).unwrap(), p.query(Some(n)).unwrap());
    }
}

#[test]
fn garbage_is_refused() {
    for bad in [
        &b""[..],
        b"{}",
        b"\xB1{\"Join\":1}",
        b"\xB2[]",
        b"\xB1\xff\xff",
    ] {
        assert!(decode_command(bad).is_err());
        assert!(PlacementState::decode(bad).is_err());
    }
    let p = boot(2);
    let mut enc = p.encode();
    enc.truncate(enc.len() / 2);
    assert!(PlacementState::decode(&enc).is_err());
}

#[derive(Clone, Debug)]
enum Verb {
    Join(u64),
    Drain(u64),
    Move(u64, Vec<u64>),
    Execute,
}

fn verb() -> impl Strategy<Value = Verb> {
    prop_oneof![
        3 => (0u64..12).prop_map(Verb::Join),
        2 => (1u64..14).prop_map(Verb::Drain),
        2 => ((1u64..7), proptest::collection::vec(1u64..14, 3)).prop_map(|(r, s)| Verb::Move(r, s)),
        2 => Just(Verb::Execute),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Verbs from several clients in any interleaving (retried joins included): two
    /// replicas (one restarted from a snapshot midway) agree on every configuration; every
    /// Join and Drain leaves the wanted layout balanced within one with the fewest moves;
    /// a refused verb changes nothing.
    #[test]
    fn interleaved_verbs(verbs in proptest::collection::vec(verb(), 1..40), cut in 0usize..40) {
        let mut a = boot(6);
        let mut b = boot(6);
        for (i, v) in verbs.iter().enumerate() {
            if i == cut {
                b = PlacementState::decode(&b.encode()).unwrap();
            }
            let before = a.latest().clone();
            let cmd = match v {
                Verb::Join(t) => Command::Join {
                    token: *t,
                    cluster_id: CLUSTER,
                    addrs: addrs(*t),
                    labels: BTreeMap::new(),
                    capacity: 0,
                },
                Verb::Drain(s) => Command::Drain { store: *s },
                Verb::Move(r, s) => Command::Move { region: *r, stores: s.clone() },
                Verb::Execute => {
                    execute(&mut a);
                    execute(&mut b);
                    prop_assert_eq!(a.latest(), b.latest());
                    continue;
                }
            };
            let ra = a.apply(&cmd);
            let rb = b.apply(&cmd);
            prop_assert_eq!(&ra, &rb);
            prop_assert_eq!(a.latest(), b.latest());
            let after = a.latest().clone();
            match &ra {
                Err(_) => prop_assert_eq!(&after, &before),
                Ok(_) if after.number > before.number => match v {
                    Verb::Join(_) => {
                        assert_balanced(&after, 3);
                        prop_assert_eq!(moves(&before, &after), min_moves(&before, &after));
                    }
                    Verb::Drain(s) => {
                        assert_balanced(&after, 3);
                        // After a hand Move the layout was not balanced, and the drain's
                        // rebalance moves more than the drained replicas, rightly.
                        let l = before.load();
                        if l.values().max() <= l.values().min().map(|m| m + 1).as_ref() {
                            assert_leave_moves(&before, &after, *s);
                        }
                    }
                    _ => {}
                },
                Ok(_) => {}
            }
        }
        for n in a.oldest()..=a.latest().number {
            prop_assert_eq!(a.query(Some(n)).unwrap(), b.query(Some(n)).unwrap());
        }
    }
}

/// Bootstrap boundaries (`--split-keys`) are sticky; `Stick` adds boundaries made by hand,
/// only real ones, once; a merge reported drops the boundary it removed; all of it survives
/// a snapshot, and a snapshot from before stickiness decodes with none.
#[test]
fn sticky_boundaries_are_replicated_and_dropped_when_merged() {
    let mut p = boot(3);
    let sticky = |p: &PlacementState| p.latest().sticky.iter().cloned().collect::<Vec<_>>();
    assert_eq!(sticky(&p), vec![b"r1".to_vec(), b"r2".to_vec()]);
    // Region 2 [r1, r2) split by hand at r1m.
    let mut left = p.latest().regions[&2].clone();
    left.version = 2;
    left.end_key = Some(b"r1m".to_vec());
    let mut right = left.clone();
    right.id = 60;
    right.start_key = b"r1m".to_vec();
    right.end_key = Some(b"r2".to_vec());
    p.apply(&Command::ReportRegion { region: left }).unwrap();
    p.apply(&Command::ReportRegion { region: right }).unwrap();
    let n = p.latest().number;
    // Only a data region's start is a boundary; an already sticky key changes nothing.
    assert_eq!(
        p.apply(&Command::Stick {
            keys: vec![b"nowhere".to_vec(), b"r1".to_vec(), Vec::new()]
        }),
        Ok(Reply::Config(n))
    );
    assert_eq!(
        p.apply(&Command::Stick {
            keys: vec![b"r1m".to_vec(), b"r1m".to_vec()]
        }),
        Ok(Reply::Config(n + 1))
    );
    assert_eq!(
        sticky(&p),
        vec![b"r1".to_vec(), b"r1m".to_vec(), b"r2".to_vec()]
    );
    assert!(p
        .apply(&Command::Stick {
            keys: vec![b"r1m".to_vec(); MAX_STICK_KEYS + 1]
        })
        .is_err());
    // Every configuration from then on answers it, and a snapshot keeps it.
    assert_eq!(p.query(Some(n)).unwrap().sticky.len(), 2);
    let back = PlacementState::decode(&p.encode()).unwrap();
    assert_eq!(back, p);
    // Region 60 merged into 2 ([r1, r2) again): r1m is no boundary, nor sticky, any more.
    let mut merged = p.latest().regions[&2].clone();
    merged.version = 4;
    merged.end_key = Some(b"r2".to_vec());
    p.apply(&Command::ReportRegion { region: merged }).unwrap();
    assert!(!p.latest().regions.contains_key(&60));
    assert_eq!(sticky(&p), vec![b"r1".to_vec(), b"r2".to_vec()]);
    // A snapshot written before stickiness (no `sticky` in its configurations) decodes.
    let body: serde_json::Value = serde_json::from_slice(&p.encode()[1..]).unwrap();
    let mut old = body.clone();
    old["base"].as_object_mut().unwrap().remove("sticky");
    assert!(old["base"].get("sticky").is_none() && body["base"].get("sticky").is_some());
    let mut bytes = p.encode()[..1].to_vec();
    bytes.extend(serde_json::to_vec(&old).unwrap());
    let decoded = PlacementState::decode(&bytes).unwrap();
    assert_eq!(decoded.query(Some(1)).unwrap().sticky.len(), 0);
}
