//! Asynchronous persistence (`RawNode::advance_async` / `on_persisted`): what a leader may
//! count as committed while writes are in flight. The whole-cluster and core simulators run
//! the same contract under faults (half their seeds); these pin the basic cases exactly.

mod harness;

use bytes::Bytes;
use harness::Net;
use raft::*;

/// What `leader_with_an_unpersisted_entry` leaves: leader 1's commit index before the
/// proposal, the proposed entry, its appends to the followers and its write's token.
struct Unpersisted {
    before: LogIndex,
    index: LogIndex,
    appends: Vec<Message>,
    token: Persisted,
    entries: Vec<Entry>,
}

/// Elects node 1 of three, proposes one entry and hands out its Ready without persisting it.
fn leader_with_an_unpersisted_entry() -> (Net, Unpersisted) {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    let before = net.node(1).commit_index();
    let index = net.node(1).propose(Bytes::from_static(b"x")).unwrap();
    let mut rd = net.node(1).ready();
    assert_eq!(
        rd.entries.iter().map(|e| e.index).collect::<Vec<_>>(),
        [index],
        "the Ready hands out the new entry"
    );
    let appends = std::mem::take(&mut rd.messages);
    let entries = std::mem::take(&mut rd.entries);
    let token = net.node(1).advance_async(&rd);
    // The same entry is not handed out again while its write is in flight.
    if net.node(1).has_ready() {
        let rd = net.node(1).ready();
        assert!(rd.entries.is_empty(), "entry handed out twice");
        net.node(1).advance(rd);
    }
    let u = Unpersisted {
        before,
        index,
        appends,
        token,
        entries,
    };
    (net, u)
}

/// Delivers `m` to its follower, which persists synchronously, and its answer to node 1.
fn follower_acks(net: &mut Net, m: Message) {
    let to = m.to.0;
    net.node(to).step(m).unwrap();
    net.process(to);
    let acks: Vec<Message> = net.queue.drain(..).filter(|m| m.to.0 == 1).collect();
    assert!(!acks.is_empty(), "follower {to} did not answer");
    for a in acks {
        net.node(1).step(a).unwrap();
    }
}

#[test]
fn a_leader_counts_its_own_copy_only_once_persisted() {
    let (mut net, u) = leader_with_an_unpersisted_entry();
    let (before, index) = (u.before, u.index);

    // Its own write completes: one durable copy of three, nothing commits.
    net.node(1).storage_mut().append(&u.entries);
    net.node(1).on_persisted(u.token);
    assert_eq!(net.node(1).commit_index(), before);
    assert_eq!(net.node(1).persisted_index(), index);

    // A follower's durable copy makes two: committed.
    let to_2 = u.appends.into_iter().find(|m| m.to.0 == 2).unwrap();
    follower_acks(&mut net, to_2);
    assert_eq!(net.node(1).commit_index(), index);
}

#[test]
fn two_followers_commit_an_entry_the_leader_has_not_written() {
    let (mut net, u) = leader_with_an_unpersisted_entry();
    let (before, index) = (u.before, u.index);
    let mut appends = u.appends.into_iter().filter(|m| m.to.0 != 1);
    let first = appends.next().unwrap();
    let second = appends.next().unwrap();

    follower_acks(&mut net, first);
    assert_eq!(
        net.node(1).commit_index(),
        before,
        "one follower plus an unwritten leader copy is not a quorum"
    );
    follower_acks(&mut net, second);
    assert_eq!(
        net.node(1).commit_index(),
        index,
        "two durable followers are"
    );
    assert!(net.node(1).persisted_index() < index);

    // The leader's late write is then counted without changing anything.
    net.node(1).storage_mut().append(&u.entries);
    net.node(1).on_persisted(u.token);
    assert_eq!(net.node(1).persisted_index(), index);
    assert_eq!(net.node(1).commit_index(), index);
}
