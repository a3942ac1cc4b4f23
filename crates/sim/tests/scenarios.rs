//! Scenario tests, named after what they prove. They cover what MIT 6.5840's Raft tests
//! check (2A-2C / 3A-3C), plus PreVote and CheckQuorum, on the real core in the simulator.

use bytes::Bytes;
use raft::{LogIndex, Role};
use sim::cluster::{MS, SECOND};
use sim::{Cluster, ClusterOptions, NetFaults};

fn cluster(n: usize, seed: u64) -> Cluster {
    Cluster::new(ClusterOptions::new(n, seed))
}

fn unreliable_cluster(n: usize, seed: u64) -> Cluster {
    let mut o = ClusterOptions::new(n, seed);
    o.net = NetFaults::unreliable();
    Cluster::new(o)
}

fn cmd(x: u64) -> Bytes {
    Bytes::from(format!("cmd-{x}"))
}

fn leader(c: &mut Cluster) -> usize {
    let all: Vec<usize> = (0..c.n()).collect();
    let l = c.check_one_leader(&all, 5 * SECOND);
    c.assert_ok();
    l.expect("no leader elected within 5 virtual seconds")
}

fn leader_among(c: &mut Cluster, among: &[usize]) -> usize {
    let l = c.check_one_leader(among, 5 * SECOND);
    c.assert_ok();
    l.expect("no leader elected among the connected nodes")
}

fn one(c: &mut Cluster, data: Bytes, expected: usize) -> LogIndex {
    let r = c.one(data, expected, true);
    c.assert_ok();
    r.expect("agreement")
}

fn connected_except(n: usize, out: &[usize]) -> Vec<usize> {
    (0..n).filter(|i| !out.contains(i)).collect()
}

#[test]
fn initial_election_elects_one_leader_and_keeps_it() {
    let mut c = cluster(3, 1);
    leader(&mut c);
    let terms: Vec<_> = (0..3).map(|i| c.term_of(i).unwrap()).collect();
    assert!(
        terms.iter().all(|t| *t == terms[0]),
        "terms disagree: {terms:?}"
    );
    let t1 = terms[0];
    c.run_for(2 * SECOND);
    assert_eq!(c.term_of(0).unwrap(), t1, "term changed with no failures");
    leader(&mut c);
}

#[test]
fn re_election_after_leader_disconnects_and_without_quorum_none() {
    let mut c = cluster(3, 2);
    let l1 = leader(&mut c);
    c.disconnect(l1);
    leader_among(&mut c, &connected_except(3, &[l1]));
    // The old leader rejoins: still exactly one leader in the newest term.
    c.connect(l1);
    let l2 = leader(&mut c);
    // No quorum: no leader may be elected among the remaining one.
    c.disconnect(l2);
    c.disconnect((l2 + 1) % 3);
    c.run_for(2 * SECOND);
    let alone = (l2 + 2) % 3;
    assert_ne!(c.nodes[alone].raw().unwrap().role(), Role::Leader);
    c.connect((l2 + 1) % 3);
    leader_among(&mut c, &[alone, (l2 + 1) % 3]);
    c.connect(l2);
    leader(&mut c);
}

#[test]
fn many_elections_with_random_disconnects() {
    let mut c = cluster(7, 3);
    leader(&mut c);
    for iter in 0..10u64 {
        let mut out = Vec::new();
        while out.len() < 3 {
            let i = c.rng().below(7) as usize;
            if !out.contains(&i) {
                out.push(i);
            }
        }
        for &i in &out {
            c.disconnect(i);
        }
        leader_among(&mut c, &connected_except(7, &out));
        for &i in &out {
            c.connect(i);
        }
        assert!(c.violation.is_none(), "iteration {iter}");
    }
    leader(&mut c);
}

#[test]
fn basic_agreement_commits_in_order() {
    let mut c = cluster(3, 4);
    leader(&mut c);
    let mut last = LogIndex::ZERO;
    for i in 1..=3 {
        let (n, _) = c.n_applied(last.next().next());
        assert_eq!(n, 0, "committed before start");
        let idx = one(&mut c, cmd(i * 100), 3);
        assert!(idx > last, "index {idx} not after {last}");
        last = idx;
    }
}

#[test]
fn bytes_sent_are_proportional_to_payload() {
    let mut c = cluster(3, 5);
    leader(&mut c);
    one(&mut c, cmd(99), 3);
    let before = c.bytes_sent;
    let mut total = 0u64;
    for i in 0..10u64 {
        let payload = Bytes::from(vec![b'x' + (i % 3) as u8; 5000 + i as usize]);
        total += payload.len() as u64;
        one(&mut c, payload, 3);
    }
    let sent = c.bytes_sent - before;
    let expected = 2 * total; // each payload to two followers
    assert!(
        sent <= expected + 50_000,
        "sent {sent} bytes for {total} bytes of payload (expected about {expected})"
    );
}

#[test]
fn follower_failure_progress_with_majority_and_none_without() {
    let mut c = cluster(3, 6);
    one(&mut c, cmd(101), 3);
    let l = leader(&mut c);
    c.disconnect((l + 1) % 3);
    one(&mut c, cmd(102), 2);
    c.run_for(SECOND);
    one(&mut c, cmd(103), 2);
    // Disconnect the remaining follower and the leader: nothing can commit.
    let l2 = leader(&mut c);
    c.disconnect((l2 + 1) % 3);
    c.disconnect((l2 + 2) % 3);
    let idx = c.propose(l2, cmd(104));
    c.run_for(2 * SECOND);
    if let Ok(idx) = idx {
        assert_eq!(c.n_applied(idx).0, 0, "committed without a majority");
    }
    c.assert_ok();
}

#[test]
fn leader_failure_new_leader_commits_then_none_without_majority() {
    let mut c = cluster(3, 7);
    one(&mut c, cmd(101), 3);
    let l1 = leader(&mut c);
    c.disconnect(l1);
    one(&mut c, cmd(102), 2);
    c.run_for(SECOND);
    one(&mut c, cmd(103), 2);
    let l2 = leader_among(&mut c, &connected_except(3, &[l1]));
    c.disconnect(l2);
    let mut idxs = Vec::new();
    for i in 0..3 {
        if let Ok(idx) = c.propose(i, cmd(104)) {
            idxs.push(idx);
        }
    }
    c.run_for(2 * SECOND);
    for idx in idxs {
        assert_eq!(
            c.n_applied(idx).0,
            0,
            "cmd 104 committed without a majority"
        );
    }
    c.assert_ok();
}

#[test]
fn fail_agree_rejoined_follower_catches_up() {
    let mut c = cluster(3, 8);
    one(&mut c, cmd(101), 3);
    let l = leader(&mut c);
    let f = (l + 1) % 3;
    c.disconnect(f);
    for x in 102..=106 {
        one(&mut c, cmd(x), 2);
    }
    c.connect(f);
    one(&mut c, cmd(107), 3);
    one(&mut c, cmd(108), 3);
}

#[test]
fn fail_no_agree_without_majority_then_recovers() {
    let mut c = cluster(5, 9);
    one(&mut c, cmd(10), 5);
    let l = leader(&mut c);
    for d in 1..=3 {
        c.disconnect((l + d) % 5);
    }
    let idx = c.propose(l, cmd(20)).expect("leader accepts");
    c.run_for(2 * SECOND);
    assert_eq!(c.n_applied(idx).0, 0, "committed with 2 of 5");
    for d in 1..=3 {
        c.connect((l + d) % 5);
    }
    leader(&mut c);
    one(&mut c, cmd(1000), 5);
}

#[test]
fn concurrent_proposals_all_commit() {
    let mut c = cluster(3, 10);
    let l = leader(&mut c);
    one(&mut c, cmd(1), 3);
    let mut idxs = Vec::new();
    for i in 0..5 {
        idxs.push(c.propose(l, cmd(100 + i)).expect("leader accepts"));
    }
    let ok = c.run_until(2 * SECOND, |c| idxs.iter().all(|i| c.n_applied(*i).0 == 3));
    c.assert_ok();
    assert!(ok, "concurrent proposals did not all commit");
    for (k, i) in idxs.iter().enumerate() {
        assert_eq!(c.n_applied(*i).1, Some(cmd(100 + k as u64)));
    }
}

#[test]
fn rejoin_of_partitioned_leader_discards_its_uncommitted_entries() {
    let mut c = cluster(3, 11);
    one(&mut c, cmd(101), 3);
    let l1 = leader(&mut c);
    c.disconnect(l1);
    for x in 102..=104 {
        let _ = c.propose(l1, cmd(x));
    }
    one(&mut c, cmd(103), 2);
    let l2 = leader_among(&mut c, &connected_except(3, &[l1]));
    c.disconnect(l2);
    c.connect(l1);
    one(&mut c, cmd(104), 2);
    c.connect(l2);
    one(&mut c, cmd(105), 3);
}

#[test]
fn fast_backup_over_long_divergent_logs() {
    let mut c = cluster(5, 12);
    one(&mut c, cmd(1), 5);
    let l = leader(&mut c);
    // Leader and one follower partitioned: they get 50 entries that never commit.
    c.partition(&[
        vec![l, (l + 1) % 5],
        vec![(l + 2) % 5, (l + 3) % 5, (l + 4) % 5],
    ]);
    for i in 0..50 {
        let _ = c.propose(l, cmd(1000 + i));
    }
    c.run_for(500 * MS);
    // The other three commit 50 entries of their own.
    c.partition(&[
        vec![(l + 2) % 5, (l + 3) % 5, (l + 4) % 5],
        vec![l, (l + 1) % 5],
    ]);
    for i in 0..50 {
        one(&mut c, cmd(2000 + i), 3);
    }
    // Now a leader in the majority with one partner diverges further.
    let l2 = leader_among(&mut c, &[(l + 2) % 5, (l + 3) % 5, (l + 4) % 5]);
    let other = [(l + 2) % 5, (l + 3) % 5, (l + 4) % 5]
        .into_iter()
        .find(|&x| x != l2)
        .unwrap();
    c.disconnect(other);
    for i in 0..50 {
        let _ = c.propose(l2, cmd(3000 + i));
    }
    c.run_for(500 * MS);
    // Bring back the original leader's pair plus `other`: they must catch up quickly.
    c.heal();
    c.disconnect(l2);
    c.disconnect((l2 + 5 - 1) % 5);
    let before = c.messages_sent;
    let survivors: Vec<usize> = (0..5).filter(|&i| i != l2 && i != (l2 + 4) % 5).collect();
    leader_among(&mut c, &survivors);
    for i in 0..50 {
        one(&mut c, cmd(4000 + i), 3);
    }
    c.heal();
    one(&mut c, cmd(5000), 5);
    let msgs = c.messages_sent - before;
    // Without fast backtracking the divergent suffixes cost one round trip per entry.
    assert!(msgs < 20_000, "{msgs} messages to repair logs");
}

#[test]
fn message_count_is_bounded() {
    let mut c = cluster(3, 13);
    leader(&mut c);
    let election_msgs = c.messages_sent;
    assert!(
        election_msgs < 60,
        "{election_msgs} messages to elect a leader"
    );
    let l = leader(&mut c);
    let before = c.messages_sent;
    let term = c.term_of(l).unwrap();
    let mut idxs = Vec::new();
    for i in 0..10 {
        idxs.push(c.propose(l, cmd(i)).unwrap());
    }
    let ok = c.run_until(2 * SECOND, |c| idxs.iter().all(|i| c.n_applied(*i).0 == 3));
    assert!(ok);
    assert_eq!(c.term_of(l).unwrap(), term, "term changed during agreement");
    let used = c.messages_sent - before;
    // Heartbeats included: about (1 + 10) * 2 appends + responses, plus heartbeats.
    assert!(used < 200, "{used} messages for 10 agreements");
    c.run_for(SECOND);
    let idle = c.messages_sent - before - used;
    // Idle: 2 followers * (heartbeat + response) every 20ms = ~200/s.
    assert!(idle < 300, "{idle} messages in one idle second");
}

#[test]
fn persistence_across_crash_and_restart_of_all_leader_and_followers() {
    let mut c = cluster(3, 14);
    one(&mut c, cmd(11), 3);
    for i in 0..3 {
        c.crash(i);
    }
    for i in 0..3 {
        c.restart(i);
    }
    one(&mut c, cmd(12), 3);
    let l1 = leader(&mut c);
    c.crash(l1);
    c.restart(l1);
    one(&mut c, cmd(13), 3);
    let l2 = leader(&mut c);
    c.crash(l2);
    one(&mut c, cmd(14), 2);
    c.restart(l2);
    c.run_until(4 * SECOND, |c| c.n_applied(LogIndex(1)).0 == 3);
    let l3 = leader(&mut c);
    let f = (l3 + 1) % 3;
    c.crash(f);
    one(&mut c, cmd(15), 2);
    c.restart(f);
    one(&mut c, cmd(16), 3);
}

#[test]
fn persistence_with_repeated_partial_crashes() {
    let mut c = cluster(5, 15);
    let mut x = 10;
    for _ in 0..5 {
        one(&mut c, cmd(x), 5);
        x += 1;
        let l = leader(&mut c);
        c.crash((l + 1) % 5);
        c.crash((l + 2) % 5);
        one(&mut c, cmd(x), 3);
        x += 1;
        c.crash(l);
        c.crash((l + 3) % 5);
        c.crash((l + 4) % 5);
        c.restart((l + 1) % 5);
        c.restart((l + 2) % 5);
        c.run_for(SECOND);
        c.restart((l + 3) % 5);
        one(&mut c, cmd(x), 3);
        x += 1;
        c.restart((l + 4) % 5);
        c.restart(l);
    }
    one(&mut c, cmd(1000), 5);
}

#[test]
fn persistence_of_entries_committed_by_a_crashed_leader() {
    let mut c = cluster(3, 16);
    one(&mut c, cmd(101), 3);
    let l = leader(&mut c);
    c.disconnect((l + 2) % 3);
    one(&mut c, cmd(102), 2);
    c.crash(l);
    c.crash((l + 1) % 3);
    c.connect((l + 2) % 3);
    c.restart(l);
    one(&mut c, cmd(103), 2);
    c.restart((l + 1) % 3);
    one(&mut c, cmd(104), 3);
}

/// MIT's Figure 8 test: leaders crash soon after proposing, so entries of old terms sit
/// replicated on a majority without being committed; the current-term rule must hold.
fn figure8(c: &mut Cluster, iterations: u64, unreliable: bool) {
    let n = c.n();
    one(c, cmd(0), 1);
    let mut nup = n;
    for iter in 0..iterations {
        if unreliable && iter == 200 {
            c.net.delay_max = 500 * MS;
        }
        let mut l = None;
        for i in 0..n {
            if c.nodes[i].is_up() && c.propose(i, cmd(1000 + iter)).is_ok() {
                l = Some(i);
            }
        }
        let r = c.rng().below(1000);
        let pause = if r < 100 {
            c.rng().below(500)
        } else {
            c.rng().below(13)
        };
        c.run_for(pause * MS);
        c.assert_ok();
        if let Some(l) = l {
            if unreliable {
                if c.rng().below(1000) < 500 {
                    c.disconnect(l);
                }
            } else {
                c.crash(l);
                nup -= 1;
            }
        }
        if unreliable {
            let i = c.rng().below(n as u64) as usize;
            if c.rng().below(1000) < 500 {
                c.connect(i);
            }
        } else if nup < 3 {
            let i = c.rng().below(n as u64) as usize;
            if !c.nodes[i].is_up() {
                c.restart(i);
                nup += 1;
            }
        }
    }
    c.net = NetFaults::reliable();
    for i in 0..n {
        c.restart(i);
        c.connect(i);
    }
    one(c, cmd(424242), n);
}

#[test]
fn figure8_old_term_entries_never_commit_by_count() {
    for seed in 0..4 {
        let mut c = cluster(5, 1700 + seed);
        figure8(&mut c, 300, false);
    }
}

#[test]
fn figure8_on_an_unreliable_network() {
    let mut c = unreliable_cluster(5, 18);
    figure8(&mut c, 600, true);
}

#[test]
fn unreliable_agreement() {
    let mut c = unreliable_cluster(5, 19);
    for iter in 1..50u64 {
        for j in 0..4 {
            if let Some(l) = c.leader() {
                let _ = c.propose(l, cmd(100 * iter + j));
            }
        }
        one(&mut c, cmd(iter), 1);
    }
    c.net = NetFaults::reliable();
    one(&mut c, cmd(100), 5);
}

/// Random crashes, restarts, disconnects and reconnects while clients propose; everything a
/// client saw committed is in the final log.
fn churn(c: &mut Cluster, unreliable: bool) {
    let n = c.n();
    let mut acked: Vec<(LogIndex, Bytes)> = Vec::new();
    let mut pending: Vec<(usize, LogIndex, Bytes)> = Vec::new();
    let mut x = 0u64;
    let end = c.now + 20 * SECOND;
    while c.now < end {
        // Clients.
        for _ in 0..3 {
            let i = c.rng().below(n as u64) as usize;
            x += 1;
            let d = cmd(x);
            if let Ok(idx) = c.propose(i, d.clone()) {
                pending.push((i, idx, d));
            }
        }
        let pause = c.rng().below(50);
        c.run_for(pause * MS);
        // A client's write is acknowledged when the node it asked applied it.
        pending.retain(|(i, idx, d)| {
            match c.nodes[*i].applied.iter().find(|(ai, _, _)| ai == idx) {
                Some((_, _, got)) => {
                    if got == d {
                        acked.push((*idx, d.clone()));
                    }
                    false
                }
                None => c.nodes[*i].is_up(),
            }
        });
        let r = c.rng().below(1000);
        let i = c.rng().below(n as u64) as usize;
        if r < 200 {
            c.disconnect(i);
        } else if r < 500 {
            c.connect(i);
        } else if r < 600 && c.up_nodes().len() > n / 2 + 1 {
            c.crash_with(i, true);
        } else if r < 800 {
            c.restart(i);
        }
        if unreliable {
            c.net = if c.rng().below(2) == 0 {
                NetFaults::unreliable()
            } else {
                NetFaults::reliable()
            };
        }
        c.assert_ok();
    }
    c.net = NetFaults::reliable();
    for i in 0..n {
        c.restart(i);
        c.connect(i);
    }
    let last = one(c, cmd(999_999), n);
    c.run_until(5 * SECOND, |c| {
        c.nodes.iter().all(|nd| nd.applied_index >= last)
    });
    assert!(!acked.is_empty(), "churn acknowledged nothing");
    for (idx, d) in &acked {
        let (count, got) = c.n_applied(*idx);
        assert!(count > 0, "acknowledged entry {idx} missing");
        assert_eq!(got.as_ref(), Some(d), "acknowledged entry {idx} changed");
    }
}

#[test]
fn reliable_churn_keeps_every_acknowledged_write() {
    let mut c = cluster(5, 20);
    churn(&mut c, false);
}

#[test]
fn unreliable_churn_keeps_every_acknowledged_write() {
    let mut c = cluster(5, 21);
    churn(&mut c, true);
}

#[test]
fn prevote_partitioned_node_rejoining_does_not_depose_stable_leader() {
    let mut c = cluster(3, 22);
    let l = leader(&mut c);
    let term = c.term_of(l).unwrap();
    let f = (l + 1) % 3;
    c.disconnect(f);
    // Long enough for many election timeouts on the isolated node.
    c.run_for(5 * SECOND);
    assert_eq!(
        c.term_of(f).unwrap(),
        term,
        "PreVote should keep the isolated node's term"
    );
    c.connect(f);
    c.run_for(2 * SECOND);
    assert_eq!(
        c.leader(),
        Some(l),
        "leader changed after the partitioned node rejoined"
    );
    assert_eq!(c.term_of(l).unwrap(), term, "term changed after rejoin");
    one(&mut c, cmd(1), 3);
}

#[test]
fn without_prevote_a_rejoining_node_disrupts_the_term() {
    // The control for the PreVote test: the same schedule without PreVote or CheckQuorum
    // bumps the term, so the test above proves something.
    let mut o = ClusterOptions::new(3, 22);
    o.pre_vote = false;
    o.check_quorum = false;
    let mut c = Cluster::new(o);
    let l = leader(&mut c);
    let term = c.term_of(l).unwrap();
    let f = (l + 1) % 3;
    c.disconnect(f);
    c.run_for(5 * SECOND);
    assert!(c.term_of(f).unwrap() > term);
    c.connect(f);
    c.run_for(2 * SECOND);
    let l2 = leader(&mut c);
    assert!(c.term_of(l2).unwrap() > term, "expected a disrupted term");
}

#[test]
fn check_quorum_leader_cut_off_from_quorum_steps_down() {
    let mut c = cluster(5, 23);
    let l = leader(&mut c);
    c.disconnect(l);
    // Within two election timeouts (max 2 * 10 ticks of 10ms), it must step down.
    let stepped = c.run_until(500 * MS, |c| {
        c.nodes[l].raw().unwrap().role() != Role::Leader
    });
    assert!(stepped, "isolated leader kept leading");
    // It keeps its term (it only stepped down), and proposals there now fail.
    assert!(c.propose(l, cmd(1)).is_err());
    c.assert_ok();
}
