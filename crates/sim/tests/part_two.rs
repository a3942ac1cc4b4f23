//! Scenario tests for Raft part two: snapshots (MIT 6.5840's 3D tests), membership change
//! by joint consensus with learners, leader transfer, ReadIndex and lease reads.

use bytes::Bytes;
use raft::{ConfChange, ConfChangeItem, ConfChangeKind, LogIndex, NodeId, ReadMode, Role};
use sim::cluster::{encode_write, MS, SECOND};
use sim::{Cluster, ClusterOptions, NetFaults};

fn cluster(n: usize, seed: u64) -> Cluster {
    Cluster::new(ClusterOptions::new(n, seed))
}

/// `voters` founding voters plus `spares` nodes that are not members yet.
fn cluster_with_spares(voters: usize, spares: usize, seed: u64) -> Cluster {
    let mut o = ClusterOptions::new(voters + spares, seed);
    o.initial_voters = Some((1..=voters as u64).collect());
    Cluster::new(o)
}

fn leader(c: &mut Cluster) -> usize {
    let all: Vec<usize> = (0..c.n()).collect();
    let l = c.check_one_leader(&all, 5 * SECOND);
    c.assert_ok();
    l.expect("no leader")
}

fn one(c: &mut Cluster, data: Bytes, expected: usize) -> LogIndex {
    let r = c.one(data, expected, true);
    c.assert_ok();
    r.expect("agreement")
}

fn w(k: u64, v: u64) -> Bytes {
    encode_write(k, v)
}

/// Applies `cc` on the current leader and waits until every live member applied it and the
/// configuration is no longer joint.
fn change(c: &mut Cluster, cc: ConfChange) {
    let l = leader(c);
    let idx = c.propose_conf_change(l, &cc).expect("conf change accepted");
    let ok = c.run_until(5 * SECOND, |c| {
        c.leader_conf().is_some_and(|cs| !cs.is_joint())
            && c.leader()
                .is_some_and(|nl| c.nodes[nl].applied_index >= idx)
            && c.nodes
                .iter()
                .filter(|n| n.is_up())
                .filter_map(|n| n.raw())
                .filter(|r| {
                    c.leader_conf()
                        .is_some_and(|cs| cs.all_nodes().contains(&r.id()))
                })
                .all(|r| r.status().applied >= r.commit_index())
    });
    c.assert_ok();
    assert!(ok, "conf change {cc:?} did not settle");
}

fn voters(c: &Cluster) -> Vec<u64> {
    c.leader_conf()
        .unwrap()
        .voters
        .iter()
        .map(|v| v.0)
        .collect()
}

// ------------------------------------------------------------------ snapshots

#[test]
fn snapshot_basic_compacts_and_keeps_agreeing() {
    let mut c = cluster(3, 100);
    for i in 0..200 {
        one(&mut c, w(i % 5, i), 3);
        if i % 30 == 0 {
            for n in 0..3 {
                c.snapshot(n);
            }
        }
    }
    assert!(c.snapshots_taken >= 18);
    let first = c.nodes[0].raw().unwrap().status().first_index;
    assert!(
        first > LogIndex(100),
        "log was not compacted (first index {first})"
    );
    let kv = c.nodes[0].kv.clone();
    c.run_for(SECOND);
    for n in &c.nodes {
        assert_eq!(n.kv, kv, "state machines differ");
    }
}

fn snapshot_install(seed: u64, unreliable: bool, crash: bool) {
    let mut c = cluster(3, seed);
    if unreliable {
        c.net = NetFaults::unreliable();
    }
    one(&mut c, w(1, 1), 3);
    for round in 0..5u64 {
        let l = leader(&mut c);
        let victim = (l + 1) % 3;
        if crash {
            c.crash(victim);
        } else {
            c.disconnect(victim);
        }
        for i in 0..40 {
            one(&mut c, w(i % 7, round * 100 + i), 2);
        }
        // Everyone alive snapshots, so the victim's next index is compacted away.
        for n in 0..3 {
            c.snapshot(n);
        }
        if crash {
            c.restart(victim);
        } else {
            c.connect(victim);
        }
        one(&mut c, w(99, round), 3);
    }
    c.net = NetFaults::reliable();
    let last = one(&mut c, w(100, 1), 3);
    c.run_until(2 * SECOND, |c| {
        c.nodes.iter().all(|n| n.applied_index >= last)
    });
    assert!(
        c.snapshots_installed > 0,
        "no follower installed a snapshot"
    );
    let kv = c.nodes[0].kv.clone();
    for n in &c.nodes {
        assert_eq!(n.kv, kv);
    }
}

#[test]
fn snapshot_install_to_a_disconnected_follower() {
    snapshot_install(101, false, false);
}

#[test]
fn snapshot_install_on_an_unreliable_network() {
    snapshot_install(102, true, false);
}

#[test]
fn snapshot_install_to_a_crashed_follower() {
    snapshot_install(103, false, true);
}

#[test]
fn snapshot_install_with_crashes_on_an_unreliable_network() {
    snapshot_install(104, true, true);
}

#[test]
fn snapshot_all_crash_restarts_from_snapshot_and_applied_never_goes_back() {
    let mut c = cluster(3, 105);
    for round in 0..5u64 {
        for i in 0..20 {
            one(&mut c, w(i % 3, round * 100 + i), 3);
        }
        for n in 0..3 {
            c.snapshot(n);
        }
        let before: Vec<LogIndex> = c.nodes.iter().map(|n| n.applied_index).collect();
        let snap: Vec<LogIndex> = (0..3)
            .map(|n| raft::Storage::snapshot(c.disk(n)).unwrap().metadata.index)
            .collect();
        for n in 0..3 {
            c.crash(n);
        }
        for (n, snap_index) in snap.iter().enumerate() {
            c.restart(n);
            // Restart = snapshot + log tail: the state machine starts at the snapshot.
            assert_eq!(c.nodes[n].applied_index, *snap_index);
        }
        let idx = one(&mut c, w(50, round), 3);
        c.run_until(2 * SECOND, |c| {
            c.nodes.iter().all(|n| n.applied_index >= idx)
        });
        for (node, earlier) in c.nodes.iter().zip(&before) {
            assert!(
                node.applied_index >= *earlier,
                "applied index went backwards"
            );
        }
    }
}

#[test]
fn snapshot_restart_recovers_identical_state() {
    let mut c = cluster(3, 106);
    for i in 0..50 {
        one(&mut c, w(i % 4, i), 3);
    }
    c.run_for(200 * MS);
    let kv = c.nodes[0].kv.clone();
    for n in 0..3 {
        c.snapshot(n);
        c.crash(n);
        c.restart(n);
    }
    leader(&mut c);
    for n in &c.nodes {
        assert_eq!(n.kv, kv, "state after restart from snapshot differs");
    }
    one(&mut c, w(9, 9), 3);
}

// ------------------------------------------------------------------ membership

#[test]
fn learner_receives_the_log_but_never_counts() {
    let mut c = cluster_with_spares(3, 1, 200);
    one(&mut c, w(1, 1), 3);
    change(&mut c, ConfChange::add_learner(4));
    let idx = one(&mut c, w(1, 2), 4);
    assert!(c.n_applied(idx).0 == 4, "learner did not apply");
    assert_eq!(c.nodes[3].raw().unwrap().role(), Role::Follower);
    // Two voters cut off: leader + learner are not a quorum.
    let l = leader(&mut c);
    let others: Vec<usize> = (0..3).filter(|&i| i != l).collect();
    for &o in &others {
        c.disconnect(o);
    }
    let idx = c.propose(l, w(2, 2)).unwrap();
    c.run_for(2 * SECOND);
    assert_eq!(
        c.n_applied(idx).0,
        0,
        "a learner was counted towards commit"
    );
    for &o in &others {
        c.connect(o);
    }
    one(&mut c, w(3, 3), 4);
}

#[test]
fn learner_promotion_makes_it_a_voter() {
    let mut c = cluster_with_spares(3, 1, 201);
    one(&mut c, w(1, 1), 3);
    change(&mut c, ConfChange::add_learner(4));
    one(&mut c, w(1, 2), 4);
    c.run_for(50 * MS); // the learner's acknowledgement reaches the leader
    change(&mut c, ConfChange::add_voter(4));
    assert_eq!(voters(&c), vec![1, 2, 3, 4]);
    // With 4 voters, two down means no quorum; with node 4 a voter, 3 of 4 commit.
    let l = leader(&mut c);
    let f = (0..3).find(|&i| i != l).unwrap();
    c.disconnect(f);
    one(&mut c, w(5, 5), 3);
}

#[test]
fn enter_and_leave_joint_replacing_a_voter() {
    let mut c = cluster_with_spares(3, 1, 202);
    one(&mut c, w(1, 1), 3);
    change(&mut c, ConfChange::add_learner(4));
    one(&mut c, w(1, 2), 4);
    c.run_for(50 * MS);
    let l = leader(&mut c);
    let out = (0..3u64).find(|&i| i as usize != l).unwrap() + 1;
    let cc = ConfChange {
        changes: vec![
            ConfChangeItem {
                kind: ConfChangeKind::AddVoter,
                node: NodeId(4),
            },
            ConfChangeItem {
                kind: ConfChangeKind::RemoveNode,
                node: NodeId(out),
            },
        ],
        joint: true,
        context: Default::default(),
    };
    c.propose_conf_change(l, &cc).unwrap();
    let mut saw_joint = false;
    let settled = c.run_until(5 * SECOND, |c| {
        if let Some(cs) = c.leader_conf() {
            saw_joint |= cs.is_joint();
            !cs.is_joint() && cs.voters.contains(&NodeId(4))
        } else {
            false
        }
    });
    c.assert_ok();
    assert!(saw_joint, "never observed the joint configuration");
    assert!(settled, "did not leave the joint configuration");
    let mut expect: Vec<u64> = vec![1, 2, 3, 4].into_iter().filter(|&v| v != out).collect();
    expect.sort();
    assert_eq!(voters(&c), expect);
    one(&mut c, w(7, 7), 3);
}

#[test]
fn removing_the_leader_makes_it_step_down() {
    let mut c = cluster(3, 203);
    one(&mut c, w(1, 1), 3);
    let l = leader(&mut c);
    c.propose_conf_change(l, &ConfChange::remove_node(l as u64 + 1))
        .unwrap();
    let ok = c.run_until(3 * SECOND, |c| c.leader().is_some_and(|nl| nl != l));
    c.assert_ok();
    assert!(ok, "no new leader after removing the old one");
    assert_ne!(c.nodes[l].raw().unwrap().role(), Role::Leader);
    assert_eq!(voters(&c).len(), 2);
    let nl = c.leader().unwrap();
    let idx = c.propose(nl, w(2, 2)).unwrap();
    let ok = c.run_until(2 * SECOND, |c| {
        (0..3)
            .filter(|&i| i != l)
            .all(|i| c.nodes[i].applied_index >= idx)
    });
    assert!(ok, "the remaining voters did not commit");
}

#[test]
fn node_removed_during_a_partition_does_not_disrupt_on_return() {
    let mut c = cluster(5, 204);
    one(&mut c, w(1, 1), 5);
    let l = leader(&mut c);
    let victim = (l + 1) % 5;
    c.disconnect(victim);
    change(&mut c, ConfChange::remove_node(victim as u64 + 1));
    c.run_for(3 * SECOND); // the victim times out over and over
    let term = c.term_of(l).unwrap();
    c.connect(victim);
    c.run_for(3 * SECOND);
    assert_eq!(
        c.leader(),
        Some(l),
        "leader changed after the removed node returned"
    );
    assert_eq!(
        c.term_of(l).unwrap(),
        term,
        "the removed node disrupted the term"
    );
    one(&mut c, w(2, 2), 4);
}

#[test]
fn promoting_a_learner_that_is_behind_is_refused() {
    let mut c = cluster_with_spares(3, 1, 206);
    one(&mut c, w(1, 1), 3);
    change(&mut c, ConfChange::add_learner(4));
    c.disconnect(3);
    for i in 0..5 {
        one(&mut c, w(2, i), 3);
    }
    let l = leader(&mut c);
    let r = c.propose_conf_change(l, &ConfChange::add_voter(4));
    assert!(
        matches!(r, Err(raft::ProposeError::InvalidConfChange(_))),
        "{r:?}"
    );
}

#[test]
fn second_conf_change_waits_for_the_first() {
    let mut c = cluster_with_spares(3, 2, 205);
    one(&mut c, w(1, 1), 3);
    let l = leader(&mut c);
    c.propose_conf_change(l, &ConfChange::add_learner(4))
        .unwrap();
    let r = c.propose_conf_change(l, &ConfChange::add_learner(5));
    assert!(
        matches!(r, Err(raft::ProposeError::ConfChangePending { .. })),
        "{r:?}"
    );
}

// ------------------------------------------------------------------ leader transfer

#[test]
fn leader_transfer_to_an_up_to_date_voter() {
    let mut c = cluster(3, 300);
    one(&mut c, w(1, 1), 3);
    let l = leader(&mut c);
    let target = (l + 1) % 3;
    assert!(c.transfer_leader(l, NodeId(target as u64 + 1)));
    // Proposals are refused while the transfer is in flight.
    assert!(matches!(
        c.propose(l, w(2, 2)),
        Err(raft::ProposeError::LeaderTransferring { .. })
    ));
    let ok = c.run_until(SECOND, |c| c.leader() == Some(target));
    assert!(ok, "leadership did not move to {target}");
    one(&mut c, w(3, 3), 3);
}

#[test]
fn leader_transfer_to_a_lagging_voter_catches_it_up_first() {
    let mut c = cluster(3, 301);
    one(&mut c, w(1, 1), 3);
    let l = leader(&mut c);
    let target = (l + 1) % 3;
    c.disconnect(target);
    for i in 0..20 {
        one(&mut c, w(i, i), 2);
    }
    c.connect(target);
    assert!(c.transfer_leader(l, NodeId(target as u64 + 1)));
    let ok = c.run_until(2 * SECOND, |c| c.leader() == Some(target));
    assert!(ok, "transfer to a lagging voter did not complete");
    let (n, _) = c.n_applied(LogIndex(20));
    assert!(n >= 2);
}

#[test]
fn leader_transfer_aborts_after_an_election_timeout() {
    let mut c = cluster(3, 302);
    one(&mut c, w(1, 1), 3);
    let l = leader(&mut c);
    let target = (l + 1) % 3;
    c.disconnect(target);
    assert!(c.transfer_leader(l, NodeId(target as u64 + 1)));
    assert!(c.propose(l, w(2, 2)).is_err());
    // Election timeout is 10 ticks of 10 ms.
    c.run_for(300 * MS);
    assert_eq!(c.leader(), Some(l));
    assert!(
        c.propose(l, w(3, 3)).is_ok(),
        "proposals still refused after the transfer aborted"
    );
}

// ------------------------------------------------------------------ reads

fn read_value(
    c: &mut Cluster,
    node: usize,
    key: u64,
    id: u64,
    mode: ReadMode,
) -> Option<Option<u64>> {
    let before = c.nodes[node].completed_reads.len();
    if !c.read(node, key, id, mode) {
        return None;
    }
    c.run_until(SECOND, |c| c.nodes[node].completed_reads.len() > before);
    c.nodes[node]
        .completed_reads
        .iter()
        .find(|(ctx, _)| sim::cluster::read_id(ctx) == id)
        .map(|(_, v)| *v)
}

#[test]
fn read_index_on_leader_and_followers_sees_the_latest_write() {
    let mut c = cluster(3, 400);
    one(&mut c, w(7, 41), 3);
    one(&mut c, w(7, 42), 1); // committed, maybe not applied everywhere yet
    for n in 0..3 {
        let got = read_value(&mut c, n, 7, 1000 + n as u64, ReadMode::Safe);
        assert_eq!(got, Some(Some(42)), "node {n} read a stale value");
    }
}

#[test]
fn lease_read_is_served_without_a_heartbeat_round() {
    let mut c = cluster(3, 401);
    one(&mut c, w(1, 5), 3);
    c.run_for(100 * MS); // a few heartbeat rounds establish the lease
    let l = leader(&mut c);
    assert!(c.nodes[l].raw().unwrap().lease_valid());
    let sent = c.messages_sent;
    let before = c.nodes[l].completed_reads.len();
    assert!(c.read(l, 1, 9, ReadMode::Lease));
    c.run_until(10 * MS, |c| c.nodes[l].completed_reads.len() > before);
    assert_eq!(c.nodes[l].completed_reads.last().unwrap().1, Some(5));
    // Heartbeats may have gone out on their timer, but no read confirmation round: the
    // read completed within the first few events.
    assert!(c.messages_sent - sent <= 4);
}

#[test]
fn isolated_leader_loses_its_lease_and_serves_no_reads() {
    let mut c = cluster(3, 402);
    one(&mut c, w(1, 5), 3);
    c.run_for(100 * MS);
    let l = leader(&mut c);
    c.disconnect(l);
    c.run_for(120 * MS); // longer than the lease (8 ticks of 10 ms)
    assert!(
        !c.nodes[l].raw().is_some_and(|r| r.lease_valid()),
        "lease outlived the quorum"
    );
    // Meanwhile the majority elects a new leader and writes.
    let others: Vec<usize> = (0..3).filter(|&i| i != l).collect();
    let nl = c.check_one_leader(&others, 3 * SECOND).unwrap();
    let idx = c.propose(nl, w(1, 6)).unwrap();
    c.run_until(SECOND, |c| c.nodes[nl].applied_index >= idx);
    // A read on the old leader must not return the stale 5.
    for mode in [ReadMode::Lease, ReadMode::Safe] {
        let got = read_value(&mut c, l, 1, 77 + mode as u64, mode);
        assert_ne!(
            got,
            Some(Some(5)),
            "stale read served by an isolated leader ({mode:?})"
        );
    }
}

#[test]
fn new_leader_finishes_a_joint_change_its_predecessor_started() {
    let mut c = cluster_with_spares(3, 1, 207);
    one(&mut c, w(1, 1), 3);
    change(&mut c, ConfChange::add_learner(4));
    one(&mut c, w(1, 2), 4);
    c.run_for(50 * MS);
    let l = leader(&mut c);
    let out = (0..3u64).find(|&i| i as usize != l).unwrap() + 1;
    let cc = ConfChange {
        changes: vec![
            ConfChangeItem {
                kind: ConfChangeKind::AddVoter,
                node: NodeId(4),
            },
            ConfChangeItem {
                kind: ConfChangeKind::AddLearner,
                node: NodeId(out),
            },
        ],
        joint: true,
        context: Default::default(),
    };
    c.propose_conf_change(l, &cc).unwrap();
    // Crash the leader as soon as any follower applied the joint configuration: the leave
    // entry may or may not exist yet.
    let joint = c.run_until(2 * SECOND, |c| {
        (0..4).filter(|&i| i != l).any(|i| {
            c.nodes[i]
                .raw()
                .is_some_and(|r| r.status().conf_state.is_joint())
        })
    });
    assert!(joint, "the joint configuration was never applied");
    c.crash(l);
    let settled = c.run_until(5 * SECOND, |c| {
        c.leader().is_some_and(|nl| nl != l)
            && c.leader_conf()
                .is_some_and(|cs| !cs.is_joint() && cs.voters.contains(&NodeId(4)))
    });
    c.assert_ok();
    assert!(settled, "the new leader did not finish the joint change");
    let cs = c.leader_conf().unwrap();
    assert!(
        cs.learners.contains(&NodeId(out)),
        "demoted voter should end as a learner: {cs:?}"
    );
    c.restart(l);
    one(&mut c, w(2, 2), 4);
}

// ------------------------------------------------------------------ asynchronous persistence

/// With asynchronous persistence a leader's messages may leave before their Ready's write
/// only while the term and vote they speak for are durable. A single voter wins its election
/// inside `campaign`, before the Ready recording its new term is written; had it sent its
/// entries early, a crash before that write would bring it back in the old term, to be
/// elected into the same term again and give the same index a different entry, while a
/// learner kept the first one. Checked directly after every event: while the leader's disk
/// holds an older term, the learner holds no entry of the new one.
#[test]
fn a_leader_sends_nothing_of_a_term_that_is_not_durable() {
    let mut windows = 0;
    for seed in 0..40u64 {
        let mut o = ClusterOptions::new(2, 9_000 + seed);
        o.initial_voters = Some(vec![1]);
        o.async_persist = true;
        // Slow writes: several heartbeats (every 20 ms) fit inside one.
        o.disk_delay_max = 30 * MS;
        let mut c = Cluster::new(o);
        one(&mut c, w(1, seed), 1);
        change(&mut c, ConfChange::add_learner(2));
        for round in 0..10u64 {
            let elected = c.run_until(2 * SECOND, |c| c.leader() == Some(0));
            assert!(
                elected,
                "seed {seed}: the single voter was not elected again"
            );
            let term = c.term_of(0).unwrap();
            if c.disk(0).hard_state().term < term {
                windows += 1;
            }
            let violated = |c: &Cluster| {
                let learner_has_term = c.nodes[1]
                    .raw()
                    .is_some_and(|r| r.log_term(r.last_index()) == Some(term));
                c.disk(0).hard_state().term < term && learner_has_term
            };
            let mut broken = false;
            for k in 0..4 {
                let _ = c.propose(0, w(2, round * 10 + k));
                let wait = 1 + c.rng().below(20 * MS);
                broken |= c.run_until(wait, violated);
            }
            // Then until the term is durable (or long after): heartbeats, the learner's
            // answers and the leader's appends to it all happen meanwhile.
            broken |= c.run_until(SECOND, |c| {
                violated(c) || c.disk(0).hard_state().term >= term
            }) && violated(&c);
            assert!(
                !broken,
                "seed {seed} round {round}: the learner got term {term} entries before the leader's term was durable"
            );
            c.crash_with(0, round % 2 == 0);
            c.restart(0);
            c.assert_ok();
        }
        c.run_until(2 * SECOND, |c| c.leader() == Some(0));
        one(&mut c, w(3, seed), 2);
    }
    assert!(
        windows > 40,
        "only {windows} elections left their term in flight: the test proves little"
    );
}
