//! One test per rule of the Raft paper (and of the extensions we implement), asserting the
//! exact output of the core: votes, appends, hints, commit indexes, errors.

mod harness;

use bytes::Bytes;
use harness::*;
use raft::*;

fn take_msgs(n: &mut RawNode<MemStorage>) -> Vec<Message> {
    if !n.has_ready() {
        return Vec::new();
    }
    let mut rd = n.ready();
    n.storage_mut().append(&rd.entries);
    if let Some(hs) = rd.hard_state {
        n.storage_mut().set_hard_state(hs);
    }
    let msgs = std::mem::take(&mut rd.messages);
    n.advance(rd);
    msgs
}

#[test]
fn election_safety_one_vote_per_term() {
    let mut n = RawNode::new(&config(1), storage_with_terms(&[1, 2, 3], &[], 1)).unwrap();
    n.step(msg(
        2,
        1,
        2,
        MessageBody::Vote {
            last_index: LogIndex(0),
            last_term: Term(0),
            leader_transfer: false,
        },
    ))
    .unwrap();
    n.step(msg(
        3,
        1,
        2,
        MessageBody::Vote {
            last_index: LogIndex(0),
            last_term: Term(0),
            leader_transfer: false,
        },
    ))
    .unwrap();
    let rd = n.ready();
    assert_eq!(
        rd.hard_state.unwrap().vote,
        NodeId(2),
        "the vote must be persisted with the grant"
    );
    let grants: Vec<(u64, bool)> = rd
        .messages
        .iter()
        .map(|m| match m.body {
            MessageBody::VoteResponse { reject } => (m.to.0, reject),
            ref b => panic!("unexpected {b:?}"),
        })
        .collect();
    assert_eq!(grants, vec![(2, false), (3, true)]);
    n.advance(rd);
}

#[test]
fn vote_refused_to_a_less_up_to_date_candidate() {
    // Our log: terms [1, 2]; the candidate's last entry is (index 5, term 1).
    let mut n = RawNode::new(&config(1), storage_with_terms(&[1, 2, 3], &[1, 2], 2)).unwrap();
    n.step(msg(
        2,
        1,
        3,
        MessageBody::Vote {
            last_index: LogIndex(5),
            last_term: Term(1),
            leader_transfer: false,
        },
    ))
    .unwrap();
    let msgs = take_msgs(&mut n);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].body, MessageBody::VoteResponse { reject: true });
    // Same last term, longer log: granted.
    n.step(msg(
        3,
        1,
        3,
        MessageBody::Vote {
            last_index: LogIndex(2),
            last_term: Term(2),
            leader_transfer: false,
        },
    ))
    .unwrap();
    let msgs = take_msgs(&mut n);
    assert_eq!(msgs[0].body, MessageBody::VoteResponse { reject: false });
}

#[test]
fn leader_commits_only_entries_of_its_own_term_by_counting_replicas() {
    // Figure 8: node 1 has entries of terms 1 and 2; it becomes leader of term 3.
    let mut n = RawNode::new(&config(1), storage_with_terms(&[1, 2, 3], &[1, 2], 2)).unwrap();
    n.campaign();
    let _ = take_msgs(&mut n); // PreVote requests
    n.step(msg(2, 1, 3, MessageBody::PreVoteResponse { reject: false }))
        .unwrap();
    let _ = take_msgs(&mut n); // Vote requests
    n.step(msg(2, 1, 3, MessageBody::VoteResponse { reject: false }))
        .unwrap();
    assert_eq!(n.role(), Role::Leader);
    let _ = take_msgs(&mut n); // appends with the noop (index 3, term 3), now persisted
    assert_eq!(n.log_term(LogIndex(3)), Some(Term(3)));
    // Follower 2 acknowledges index 2 (term 2) only: a majority holds index 2, but it is of
    // an older term, so it must not commit.
    n.step(msg(
        2,
        1,
        3,
        MessageBody::AppendResponse {
            index: LogIndex(2),
            reject: None,
        },
    ))
    .unwrap();
    let _ = take_msgs(&mut n);
    assert_eq!(
        n.commit_index(),
        LogIndex(0),
        "committed an old-term entry by counting"
    );
    // Once the current-term entry is on a majority, everything before it commits too.
    n.step(msg(
        2,
        1,
        3,
        MessageBody::AppendResponse {
            index: LogIndex(3),
            reject: None,
        },
    ))
    .unwrap();
    let _ = take_msgs(&mut n);
    assert_eq!(n.commit_index(), LogIndex(3));
}

#[test]
fn follower_rejects_mismatched_append_with_conflict_hint() {
    // Follower log terms: [1, 1, 2, 2, 2]. Leader probes at (index 5, term 3).
    let mut n = RawNode::new(
        &config(2),
        storage_with_terms(&[1, 2, 3], &[1, 1, 2, 2, 2], 3),
    )
    .unwrap();
    n.step(msg(
        1,
        2,
        3,
        MessageBody::Append {
            prev_index: LogIndex(5),
            prev_term: Term(3),
            entries: vec![],
            commit: LogIndex(0),
        },
    ))
    .unwrap();
    let msgs = take_msgs(&mut n);
    // The hint names the last index whose term is <= 3 (index 5, term 2): the leader can
    // skip straight past its own term-3 entries.
    assert_eq!(
        msgs[0].body,
        MessageBody::AppendResponse {
            index: LogIndex(5),
            reject: Some(RejectHint {
                index: LogIndex(5),
                term: Term(2)
            })
        }
    );
    // Probing beyond our log: the hint is our last index.
    n.step(msg(
        1,
        2,
        3,
        MessageBody::Append {
            prev_index: LogIndex(9),
            prev_term: Term(3),
            entries: vec![],
            commit: LogIndex(0),
        },
    ))
    .unwrap();
    let msgs = take_msgs(&mut n);
    assert_eq!(
        msgs[0].body,
        MessageBody::AppendResponse {
            index: LogIndex(9),
            reject: Some(RejectHint {
                index: LogIndex(5),
                term: Term(2)
            })
        }
    );
}

#[test]
fn fast_backtracking_repairs_a_long_divergent_log_in_few_round_trips() {
    // Leader log: 100 entries of term 1 then 100 of term 3. Follower: 100 of term 1 then 300
    // of term 2. Naive backtracking would need ~300 round trips.
    let mut leader_terms = vec![1u64; 100];
    leader_terms.extend(vec![3u64; 100]);
    let mut follower_terms = vec![1u64; 100];
    follower_terms.extend(vec![2u64; 300]);
    let mut net = Net::new(&[1, 2, 3]);
    net.nodes.insert(
        1,
        RawNode::new(&config(1), storage_with_terms(&[1, 2, 3], &leader_terms, 3)).unwrap(),
    );
    net.nodes.insert(
        2,
        RawNode::new(
            &config(2),
            storage_with_terms(&[1, 2, 3], &follower_terms, 3),
        )
        .unwrap(),
    );
    net.nodes.insert(
        3,
        RawNode::new(&config(3), storage_with_terms(&[1, 2, 3], &leader_terms, 3)).unwrap(),
    );
    net.elect(1);
    let rejects = net
        .sent
        .iter()
        .filter(|m| {
            m.from == NodeId(2)
                && matches!(
                    m.body,
                    MessageBody::AppendResponse {
                        reject: Some(_),
                        ..
                    }
                )
        })
        .count();
    assert!(rejects <= 3, "{rejects} rejections to find the match point");
    let l = net.node(1).last_index();
    assert_eq!(net.node(2).last_index(), l);
    assert_eq!(net.node(2).log_term(LogIndex(150)), Some(Term(3)));
}

#[test]
fn proposal_on_follower_names_the_leader() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    assert_eq!(
        net.node(2).propose(Bytes::from("x")),
        Err(ProposeError::NotLeader {
            leader: Some(NodeId(1))
        })
    );
    let mut lone = RawNode::new(&config(9), MemStorage::new()).unwrap();
    assert_eq!(
        lone.propose(Bytes::from("x")),
        Err(ProposeError::NotLeader { leader: None })
    );
}

#[test]
fn oversized_entries_and_uncommitted_backlog_are_refused() {
    let mut net = Net::with_config(&[1, 2, 3], |id| {
        let mut c = config(id);
        c.max_entry_bytes = 1000;
        c.max_uncommitted_bytes = 10_000;
        c
    });
    net.elect(1);
    assert_eq!(
        net.node(1).propose(Bytes::from(vec![0; 1001])),
        Err(ProposeError::EntryTooLarge {
            size: 1001,
            max: 1000
        })
    );
    // Followers unreachable: proposals pile up uncommitted until the limit.
    net.isolate(1);
    let mut accepted = 0;
    let err = loop {
        match net.node(1).propose(Bytes::from(vec![1; 1000])) {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 100, "limit never reached");
    };
    assert!(
        matches!(err, ProposeError::UncommittedLimit { max: 10_000, .. }),
        "{err:?}"
    );
    assert_eq!(accepted, 9);
    // The refused proposal changed nothing: after healing, exactly the accepted ones commit.
    net.recover();
    net.stabilize();
    net.node(1).tick();
    net.node(1).tick();
    net.stabilize();
    assert_eq!(net.applied_data(2).len(), accepted);
}

#[test]
fn appends_are_batched_within_byte_and_count_limits() {
    let mut net = Net::with_config(&[1, 2], |id| {
        let mut c = config(id);
        c.max_size_per_msg = 10_000;
        c.max_entries_per_msg = 50;
        c
    });
    net.elect(1);
    net.sent.clear();
    let datas: Vec<Bytes> = (0..200).map(|_| Bytes::from(vec![7; 100])).collect();
    net.node(1).propose_batch(&datas).unwrap();
    net.stabilize();
    let appends: Vec<usize> = net
        .sent
        .iter()
        .filter_map(|m| match &m.body {
            MessageBody::Append { entries, .. } if !entries.is_empty() => Some(entries.len()),
            _ => None,
        })
        .collect();
    assert!(appends.iter().all(|n| *n <= 50), "{appends:?}");
    assert_eq!(appends.iter().sum::<usize>(), 200);
    assert!(
        appends.len() <= 5,
        "200 entries should need 4 appends, took {appends:?}"
    );
    assert_eq!(net.applied_data(2).len(), 200);
}

#[test]
fn pipelining_stops_at_the_inflight_window() {
    let mut net = Net::with_config(&[1, 2], |id| {
        let mut c = config(id);
        c.max_inflight_msgs = 4;
        c
    });
    net.elect(1);
    // Drop everything follower 2 sends: the leader may pipeline only 4 appends.
    net.cut.insert((2, 1));
    net.sent.clear();
    for i in 0..20 {
        net.node(1).propose(Bytes::from(format!("p{i}"))).unwrap();
        net.stabilize();
    }
    let appends = net
        .sent
        .iter()
        .filter(|m| {
            m.from == NodeId(1)
                && matches!(&m.body, MessageBody::Append { entries, .. } if !entries.is_empty())
        })
        .count();
    assert_eq!(
        appends, 4,
        "the in-flight window must bound unacknowledged appends"
    );
}

#[test]
fn ready_carries_the_vote_with_the_grant_and_forbids_double_ready() {
    let mut n = RawNode::new(&config(1), storage_with_terms(&[1, 2, 3], &[], 1)).unwrap();
    n.step(msg(
        2,
        1,
        5,
        MessageBody::Vote {
            last_index: LogIndex(0),
            last_term: Term(0),
            leader_transfer: false,
        },
    ))
    .unwrap();
    let rd = n.ready();
    assert_eq!(
        rd.hard_state,
        Some(HardState {
            term: Term(5),
            vote: NodeId(2),
            commit: LogIndex(0)
        })
    );
    assert_eq!(rd.messages.len(), 1);
    let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = n.ready();
    }));
    assert!(again.is_err(), "ready() twice without advance() must panic");
}

#[test]
fn prevote_does_not_change_terms() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    let term = net.node(1).term();
    net.isolate(3);
    for _ in 0..100 {
        net.node(3).tick();
        net.stabilize();
    }
    assert_eq!(
        net.node(3).term(),
        term,
        "an isolated node must not inflate its term"
    );
    assert_eq!(net.node(3).role(), Role::PreCandidate);
}

#[test]
fn check_quorum_followers_ignore_votes_while_the_leader_is_alive() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    let term = net.node(2).term();
    // A vote request of a higher term arrives at 2 while it just heard from leader 1.
    net.node(2)
        .step(msg(
            3,
            2,
            term.0 + 5,
            MessageBody::Vote {
                last_index: LogIndex(99),
                last_term: Term(term.0 + 4),
                leader_transfer: false,
            },
        ))
        .unwrap();
    assert_eq!(
        net.node(2).term(),
        term,
        "in-lease follower must ignore the vote"
    );
    // The same request flagged as a leader transfer is honoured.
    net.node(2)
        .step(msg(
            3,
            2,
            term.0 + 5,
            MessageBody::Vote {
                last_index: LogIndex(99),
                last_term: Term(term.0 + 4),
                leader_transfer: true,
            },
        ))
        .unwrap();
    assert_eq!(net.node(2).term(), Term(term.0 + 5));
}

#[test]
fn stale_leader_learns_the_new_term_from_a_rejection() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    net.isolate(1);
    // Let 2 and 3 notice the leader is gone; one of them wins.
    for _ in 0..40 {
        net.node(2).tick();
        net.node(3).tick();
        net.stabilize();
    }
    let new_leader = if net.node(2).role() == Role::Leader {
        2
    } else {
        3
    };
    assert_eq!(net.node(new_leader).role(), Role::Leader);
    net.recover();
    // Old leader 1 heartbeats with its old term; the response makes it step down.
    for _ in 0..2 {
        net.node(1).tick();
    }
    net.stabilize();
    assert_eq!(net.node(1).role(), Role::Follower);
    assert_eq!(net.node(1).term(), net.node(new_leader).term());
}

#[test]
fn wrong_group_or_node_is_refused() {
    let mut n = RawNode::new(&config(1), MemStorage::new()).unwrap();
    let mut m = msg(2, 1, 1, MessageBody::TimeoutNow);
    m.group = GroupId(7);
    assert!(matches!(n.step(m), Err(StepError::WrongGroup { .. })));
    let m = msg(2, 5, 1, MessageBody::TimeoutNow);
    assert!(matches!(n.step(m), Err(StepError::WrongNode { .. })));
}

#[test]
fn invalid_config_is_refused_with_reason() {
    let mut c = config(1);
    c.heartbeat_tick = 10;
    c.election_tick = 10;
    let e = RawNode::new(&c, MemStorage::new()).err().unwrap();
    assert!(e.to_string().contains("election_tick"), "{e}");
}

#[test]
fn same_seed_same_outputs() {
    fn run(seed: u64) -> Vec<String> {
        let mut net = Net::with_config(&[1, 2, 3], |id| {
            let mut c = config(id);
            c.seed = seed * 31 + id;
            c
        });
        for _ in 0..50 {
            for id in 1..=3 {
                net.node(id).tick();
            }
            net.stabilize();
        }
        net.sent.iter().map(|m| format!("{m:?}")).collect()
    }
    assert_eq!(run(1), run(1));
    assert_ne!(
        run(1),
        run(2),
        "different seeds should give different elections"
    );
}

/// The chunk `data` at `offset` of the snapshot whose whole data is `whole`.
fn snapshot_chunk(
    from: u64,
    term: u64,
    index: u64,
    offset: u64,
    whole: &[u8],
    data: &[u8],
    done: bool,
) -> Message {
    msg(
        from,
        2,
        term,
        MessageBody::Snapshot {
            metadata: SnapshotMetadata {
                index: LogIndex(index),
                term: Term(term),
                conf_state: ConfState::from_voters([1, 2, 3]),
            },
            offset,
            total_bytes: whole.len() as u64,
            checksum: crc32c::crc32c(whole),
            data: Bytes::copy_from_slice(data),
            done,
        },
    )
}

fn snapshot_responses(msgs: &[Message]) -> Vec<(u64, u64, bool)> {
    msgs.iter()
        .filter_map(|m| match m.body {
            MessageBody::SnapshotResponse {
                index,
                next_offset,
                reject,
            } => Some((index.0, next_offset, reject)),
            _ => None,
        })
        .collect()
}

#[test]
fn snapshot_chunk_of_an_unknown_transfer_is_rejected_so_the_leader_restarts() {
    let mut n = RawNode::new(&config(2), storage_with_terms(&[1, 2, 3], &[1], 2)).unwrap();
    // A middle chunk arrives without its start (the follower restarted, or the first chunk
    // was lost): reject, so the leader restarts the transfer from offset 0.
    n.step(snapshot_chunk(1, 2, 50, 4, b"abcdefgh", b"efgh", true))
        .unwrap();
    let msgs = take_msgs(&mut n);
    assert_eq!(snapshot_responses(&msgs), vec![(50, 0, true)]);
    // The transfer from the start completes and installs.
    n.step(snapshot_chunk(1, 2, 50, 0, b"abcdefgh", b"abcd", false))
        .unwrap();
    assert_eq!(snapshot_responses(&take_msgs(&mut n)), vec![(50, 4, false)]);
    n.step(snapshot_chunk(1, 2, 50, 4, b"abcdefgh", b"efgh", true))
        .unwrap();
    let rd = n.ready();
    let snap = rd.snapshot.clone().expect("snapshot installed");
    assert_eq!(snap.data.as_ref(), b"abcdefgh");
    assert_eq!(snap.metadata.index, LogIndex(50));
    n.storage_mut().apply_snapshot(snap);
    n.advance(rd);
    assert_eq!(n.commit_index(), LogIndex(50));
}

#[test]
fn a_snapshot_whose_chunks_miss_the_announced_checksum_is_refused() {
    let mut n = RawNode::new(&config(2), storage_with_terms(&[1, 2, 3], &[1], 2)).unwrap();
    n.step(snapshot_chunk(1, 2, 50, 0, b"abcdefgh", b"abcd", false))
        .unwrap();
    let _ = take_msgs(&mut n);
    // The second half was damaged on the way: the transfer restarts, nothing is installed.
    n.step(snapshot_chunk(1, 2, 50, 4, b"abcdefgh", b"efgX", true))
        .unwrap();
    let rd = n.ready();
    assert!(rd.snapshot.is_none(), "a damaged snapshot was installed");
    assert_eq!(snapshot_responses(&rd.messages), vec![(50, 0, true)]);
    n.advance(rd);
    assert!(n.commit_index() < LogIndex(50), "{}", n.commit_index());
    assert!(n.storage().snapshot().unwrap().is_empty());
}

#[test]
fn streamed_chunks_are_handed_out_in_order_once_and_the_snapshot_comes_without_data() {
    let mut cfg = config(2);
    cfg.stream_snapshot_chunks = true;
    let mut n = RawNode::new(&cfg, storage_with_terms(&[1, 2, 3], &[1], 2)).unwrap();
    let whole = b"abcdefghij";
    n.step(snapshot_chunk(1, 2, 50, 0, whole, b"abcd", false))
        .unwrap();
    // The same chunk again (a resend after a lost response) is not handed out twice, and a
    // chunk past the next offset is not handed out at all.
    n.step(snapshot_chunk(1, 2, 50, 0, whole, b"abcd", false))
        .unwrap();
    n.step(snapshot_chunk(1, 2, 50, 8, whole, b"ij", true))
        .unwrap();
    let rd = n.ready();
    let chunks: Vec<(u64, Vec<u8>)> = rd
        .snapshot_chunks
        .iter()
        .map(|c| (c.offset, c.data.to_vec()))
        .collect();
    assert_eq!(chunks, vec![(0, b"abcd".to_vec())]);
    assert_eq!(rd.snapshot_chunks[0].checksum, crc32c::crc32c(whole));
    assert_eq!(rd.snapshot_chunks[0].total_bytes, 10);
    assert!(!rd.snapshot_chunks[0].is_last());
    assert!(rd.snapshot.is_none());
    n.advance(rd);
    n.step(snapshot_chunk(1, 2, 50, 4, whole, b"efgh", false))
        .unwrap();
    n.step(snapshot_chunk(1, 2, 50, 8, whole, b"ij", true))
        .unwrap();
    let rd = n.ready();
    let offsets: Vec<u64> = rd.snapshot_chunks.iter().map(|c| c.offset).collect();
    assert_eq!(offsets, vec![4, 8]);
    assert!(rd.snapshot_chunks[1].is_last());
    let snap = rd
        .snapshot
        .clone()
        .expect("the snapshot follows its last chunk");
    assert_eq!(snap.metadata.index, LogIndex(50));
    assert!(
        snap.data.is_empty(),
        "a streamed snapshot's data stays with the caller"
    );
    assert_eq!(
        snapshot_responses(&rd.messages),
        vec![(50, 8, false), (50, 10, false)]
    );
    n.advance(rd);
    assert_eq!(n.commit_index(), LogIndex(50));
}

#[test]
fn a_streamed_transfer_with_a_bad_checksum_hands_out_no_snapshot() {
    let mut cfg = config(2);
    cfg.stream_snapshot_chunks = true;
    let mut n = RawNode::new(&cfg, storage_with_terms(&[1, 2, 3], &[1], 2)).unwrap();
    n.step(snapshot_chunk(1, 2, 50, 0, b"abcdefgh", b"abcd", false))
        .unwrap();
    n.step(snapshot_chunk(1, 2, 50, 4, b"abcdefgh", b"XXXX", true))
        .unwrap();
    let rd = n.ready();
    assert_eq!(rd.snapshot_chunks.len(), 2);
    assert!(rd.snapshot.is_none(), "a damaged snapshot was installed");
    assert_eq!(
        snapshot_responses(&rd.messages),
        vec![(50, 4, false), (50, 0, true)]
    );
    n.advance(rd);
    // The restarted transfer's first chunk comes out again at offset 0.
    n.step(snapshot_chunk(1, 2, 50, 0, b"abcdefgh", b"abcd", false))
        .unwrap();
    let rd = n.ready();
    assert_eq!(rd.snapshot_chunks.len(), 1);
    assert_eq!(rd.snapshot_chunks[0].offset, 0);
    n.advance(rd);
}

#[test]
fn a_newer_transfer_replaces_an_interrupted_one() {
    let mut n = RawNode::new(&config(2), storage_with_terms(&[1, 2, 3], &[1], 2)).unwrap();
    n.step(snapshot_chunk(1, 2, 50, 0, b"abcdefgh", b"abcd", false))
        .unwrap();
    let _ = take_msgs(&mut n);
    // The leader compacted again and starts over with a newer snapshot.
    n.step(snapshot_chunk(1, 2, 60, 0, b"wxyz", b"wxyz", true))
        .unwrap();
    let rd = n.ready();
    let snap = rd.snapshot.clone().expect("newer snapshot installed");
    assert_eq!(
        (snap.metadata.index, snap.data.as_ref()),
        (LogIndex(60), &b"wxyz"[..])
    );
    n.storage_mut().apply_snapshot(snap);
    n.advance(rd);
    // A late chunk of the abandoned transfer is covered by what we have: it is acknowledged
    // as complete (so the leader stops sending it) and changes nothing.
    n.step(snapshot_chunk(1, 2, 50, 4, b"abcdefgh", b"efgh", true))
        .unwrap();
    let msgs = take_msgs(&mut n);
    assert_eq!(snapshot_responses(&msgs), vec![(50, 8, false)]);
    assert!(msgs.iter().any(|m| m.body
        == MessageBody::AppendResponse {
            index: LogIndex(60),
            reject: None
        }));
    assert_eq!(n.commit_index(), LogIndex(60));
    assert_eq!(n.storage().snapshot().unwrap().metadata.index, LogIndex(60));
}

#[test]
fn stale_snapshot_below_the_commit_index_is_ignored() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    for i in 0..5 {
        net.node(1).propose(Bytes::from(format!("x{i}"))).unwrap();
    }
    net.stabilize();
    let committed = net.node(2).commit_index();
    assert!(committed >= LogIndex(5));
    let last = net.node(2).last_index();
    let term = net.node(2).term().0;
    net.node(2)
        .step(snapshot_chunk(1, term, 3, 0, b"old!", b"old!", true))
        .unwrap();
    let msgs = take_msgs(net.node(2));
    assert!(msgs.iter().any(|m| m.body
        == MessageBody::AppendResponse {
            index: committed,
            reject: None
        }));
    assert_eq!(
        net.node(2).last_index(),
        last,
        "a stale snapshot changed the log"
    );
    assert!(net.node(2).storage().snapshot().unwrap().is_empty());
}

#[test]
fn a_leader_that_sent_timeout_now_never_trusts_its_lease_again_in_that_term() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    for _ in 0..2 {
        net.node(1).tick();
    }
    net.stabilize();
    assert!(
        net.node(1).lease_valid(),
        "lease should hold after a heartbeat round"
    );
    // The target is up to date, so TimeoutNow goes out at once; it is lost, so the transfer
    // eventually aborts while node 1 stays leader.
    net.cut.insert((1, 2));
    net.node(1).transfer_leader(NodeId(2)).unwrap();
    net.stabilize();
    assert!(!net.node(1).lease_valid());
    for _ in 0..25 {
        net.node(1).tick();
        net.stabilize();
    }
    assert_eq!(net.node(1).role(), Role::Leader);
    assert_eq!(
        net.node(1).status().lead_transferee,
        NodeId::NONE,
        "transfer should have aborted"
    );
    // Node 2 may still act on a delayed TimeoutNow and skip the other followers' leases, so
    // node 1 must keep using ReadIndex for the rest of its term.
    assert!(
        !net.node(1).lease_valid(),
        "lease trusted after TimeoutNow was sent"
    );
}
