//! A leader sending a snapshot keeps one chunk in flight: the next chunk goes when the chunk
//! in flight is acknowledged, a chunk is sent again only after a few heartbeats without an
//! acknowledgement, and the acknowledgement of a duplicate sends nothing. (Before, every
//! heartbeat response resent the current chunk and every acknowledgement, duplicates
//! included, sent a chunk: the copies in flight grew by one per heartbeat.)

mod harness;

use bytes::Bytes;
use harness::Net;
use raft::*;

const CHUNK: u64 = 1024;

fn snapshot_chunks(msgs: &[Message], to: u64) -> Vec<(u64, usize)> {
    msgs.iter()
        .filter(|m| m.to.0 == to)
        .filter_map(|m| match &m.body {
            MessageBody::Snapshot { offset, data, .. } => Some((*offset, data.len())),
            _ => None,
        })
        .collect()
}

/// Node 1 leads; node 3 missed everything and node 1's log is compacted under a snapshot of
/// 8 chunks. Returns the net with node 3 reconnected and node 1's first chunk to it taken
/// off the queue.
fn leader_starting_a_transfer() -> (Net, Message) {
    let mut net = Net::with_config(&[1, 2, 3], |id| {
        let mut c = harness::config(id);
        c.snapshot_chunk_bytes = CHUNK;
        c
    });
    net.elect(1);
    net.isolate(3);
    for i in 0..5 {
        net.node(1).propose(Bytes::from(format!("x{i}"))).unwrap();
    }
    net.stabilize();
    let commit = net.node(1).commit_index();
    let data = Bytes::from(vec![7u8; 8 * CHUNK as usize]);
    net.node(1)
        .storage_mut()
        .create_snapshot(commit, ConfState::from_voters([1, 2, 3]), data);
    net.recover();
    // Heartbeats until node 3 is probed, found behind the compacted log and sent a chunk.
    for _ in 0..100 {
        net.node(1).tick();
        net.process(1);
        let mut first = None;
        for _ in 0..50 {
            let Some(m) = net.queue.pop_front() else {
                break;
            };
            if matches!(m.body, MessageBody::Snapshot { .. }) {
                first = Some(m);
                break;
            }
            let to = m.to.0;
            net.node(to).step(m).unwrap();
            net.process(to);
            net.process(1);
        }
        if let Some(m) = first {
            net.queue.clear();
            return (net, m);
        }
    }
    panic!("node 1 never sent node 3 a snapshot chunk");
}

/// Steps `m` into its node and returns what that node sends.
fn deliver(net: &mut Net, m: Message) -> Vec<Message> {
    let to = m.to.0;
    net.node(to).step(m).unwrap();
    net.process(to);
    net.queue.drain(..).collect()
}

#[test]
fn the_acknowledgement_of_a_duplicate_chunk_sends_nothing() {
    let (mut net, first) = leader_starting_a_transfer();
    assert!(matches!(
        first.body,
        MessageBody::Snapshot { offset: 0, .. }
    ));
    // The chunk arrives twice (the network duplicated it): two acknowledgements.
    let acks: Vec<Message> = deliver(&mut net, first.clone())
        .into_iter()
        .chain(deliver(&mut net, first))
        .filter(|m| matches!(m.body, MessageBody::SnapshotResponse { .. }))
        .collect();
    assert_eq!(acks.len(), 2);
    let mut sent = Vec::new();
    for a in acks {
        sent.extend(deliver(&mut net, a));
    }
    assert_eq!(
        snapshot_chunks(&sent, 3),
        vec![(CHUNK, CHUNK as usize)],
        "one acknowledgement, one next chunk"
    );
}

#[test]
fn a_chunk_is_sent_again_only_after_heartbeats_without_its_acknowledgement() {
    let (mut net, _lost) = leader_starting_a_transfer();
    // The chunk was lost. Heartbeats come and go; the chunk goes again only on the
    // fifth response without its acknowledgement, then waits five more.
    let mut resent_at = Vec::new();
    for response in 1..=11 {
        // One heartbeat round to node 3 and back.
        let mut heartbeat = None;
        for _ in 0..10 {
            net.node(1).tick();
            net.process(1);
            heartbeat = net
                .queue
                .iter()
                .position(|m| m.to.0 == 3 && matches!(m.body, MessageBody::Heartbeat { .. }));
            if heartbeat.is_some() {
                break;
            }
        }
        let hb = net.queue.remove(heartbeat.expect("a heartbeat")).unwrap();
        net.queue.clear();
        let answers = deliver(&mut net, hb);
        let hb_response = answers
            .into_iter()
            .find(|m| matches!(m.body, MessageBody::HeartbeatResponse { .. }))
            .expect("a heartbeat response");
        let sent = deliver(&mut net, hb_response);
        let chunks = snapshot_chunks(&sent, 3);
        if !chunks.is_empty() {
            assert_eq!(chunks, vec![(0, CHUNK as usize)], "the lost chunk again");
            resent_at.push(response);
        }
    }
    assert_eq!(resent_at, vec![5, 10]);
}

/// Simulator seed 55: a stale reject (duplicated and reordered) reaches the leader after the
/// follower took chunk 0 and chunk 1 of the same transfer. The leader goes back to chunk 0;
/// the follower answers every chunk 0 with "I am at 2 chunks", which the leader used to
/// drop as the answer to a duplicate — the transfer never ended. Now the leader continues
/// from where the follower is, and the whole snapshot arrives.
#[test]
fn a_stale_reject_does_not_stall_the_transfer() {
    let (mut net, first) = leader_starting_a_transfer();
    // Node 3 gets chunk 0 and 1; a reject for this snapshot (as a restarted follower sent
    // earlier) is kept back by the network.
    let mut to_leader: Vec<Message> = deliver(&mut net, first.clone());
    let ack0 = to_leader
        .iter()
        .position(|m| matches!(m.body, MessageBody::SnapshotResponse { .. }))
        .expect("an acknowledgement");
    let ack0 = to_leader.remove(ack0);
    let index = match &ack0.body {
        MessageBody::SnapshotResponse { index, .. } => *index,
        _ => unreachable!(),
    };
    let mut stale_reject = ack0.clone();
    stale_reject.body = MessageBody::SnapshotResponse {
        index,
        next_offset: 0,
        reject: true,
    };
    let chunk1 = deliver(&mut net, ack0)
        .into_iter()
        .find(|m| matches!(m.body, MessageBody::Snapshot { .. }))
        .expect("chunk 1");
    let ack1 = deliver(&mut net, chunk1)
        .into_iter()
        .find(|m| matches!(m.body, MessageBody::SnapshotResponse { .. }))
        .expect("its acknowledgement");
    // The stale reject arrives first: the leader goes back to chunk 0.
    let resent = deliver(&mut net, stale_reject);
    assert_eq!(snapshot_chunks(&resent, 3), vec![(0, CHUNK as usize)]);
    let _late_ack1 = ack1; // lost
                           // From here every message is delivered: the transfer must finish.
    let mut queue: std::collections::VecDeque<Message> = resent.into_iter().collect();
    for _ in 0..2_000 {
        if net.node(3).commit_index() >= net.node(1).commit_index() {
            break;
        }
        let m = match queue.pop_front() {
            Some(m) => m,
            None => {
                // Quiet: a heartbeat round moves things on (resends are due after a few).
                net.node(1).tick();
                net.process(1);
                net.queue
                    .drain(..)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .for_each(|m| queue.push_back(m));
                continue;
            }
        };
        for out in deliver(&mut net, m) {
            queue.push_back(out);
        }
    }
    assert!(
        net.node(3).commit_index() >= net.node(1).commit_index(),
        "node 3 never got the snapshot: commit {} of {}",
        net.node(3).commit_index(),
        net.node(1).commit_index()
    );
}
