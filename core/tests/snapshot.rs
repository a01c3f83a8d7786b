//! Snapshots end to end on the in-memory cluster: compaction by policy, a
//! follower that rejoins after its entries were compacted receives the
//! snapshot in chunks, lost chunks are sent again, a transfer interrupted by
//! a leader change is abandoned (never half-installed), restart from a
//! snapshot.

use std::cell::Cell;
use std::rc::Rc;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tarn_core::testkit::Cluster;
use tarn_core::{Action, ConfChange, Input, LogId, MessageBody, NodeId};

const MS: u64 = 1_000_000;

fn small_snapshots(cfg: &mut tarn_core::Config) {
    cfg.snapshot_after_entries = 20;
    cfg.log_keep_tail_entries = 5;
    cfg.max_snapshot_chunk_bytes = 100;
    cfg.max_snapshot_inflight_chunks = 3;
}

fn propose_many(c: &mut Cluster, leader: NodeId, from_id: u64, n: u64) {
    for k in 0..n {
        c.propose(leader, from_id + k, format!("value-{:04}", from_id + k).as_bytes());
        if k % 10 == 9 {
            c.stabilize();
        }
    }
    c.stabilize();
}

fn count_actions(c: &Cluster, id: NodeId, f: impl Fn(&Action) -> bool) -> usize {
    c.trace.iter().filter(|(_, n, a)| *n == id && f(a)).count()
}

#[test]
fn policy_asks_for_snapshots_and_compacts_behind_them_keeping_a_tail() {
    let mut c = Cluster::with_config(3, 41, small_snapshots);
    c.elect(1);
    propose_many(&mut c, 1, 1, 50);
    let wanted = count_actions(&c, 1, |a| matches!(a, Action::SnapshotWanted { .. }));
    assert!(wanted >= 2, "50 entries with a snapshot every 20: asked {wanted} times");
    let compactions: Vec<LogId> = c
        .trace
        .iter()
        .filter(|(_, n, _)| *n == 1)
        .filter_map(|(_, _, a)| match a {
            Action::CompactLog { up_to } => Some(*up_to),
            _ => None,
        })
        .collect();
    let (meta, _) = c.node(1).snapshot.clone().expect("a snapshot was taken");
    let last = *compactions.last().expect("compacted");
    assert_eq!(last.index, meta.last_log_id.index - 5, "keeps log_keep_tail_entries before the snapshot");
    assert!(compactions.windows(2).all(|w| w[0].index < w[1].index));
    // Nobody needed a snapshot: everyone was up.
    assert_eq!(count_actions(&c, 2, |a| matches!(a, Action::InstallSnapshot { .. })), 0);
    // A stale snapshot report (not newer) is ignored.
    let before = c.trace.len();
    let stale = tarn_core::SnapshotMeta { last_log_id: LogId::new(1, 3), membership: Default::default() };
    c.step(1, Input::SnapshotCreated { meta: stale });
    assert!(c.trace[before..].iter().all(|(_, _, a)| !matches!(a, Action::CompactLog { .. })));
    c.check_invariants();
}

#[test]
fn a_follower_that_rejoins_after_compaction_receives_the_snapshot_in_chunks() {
    let mut c = Cluster::with_config(3, 42, small_snapshots);
    c.elect(1);
    propose_many(&mut c, 1, 1, 5);
    c.isolate(3);
    propose_many(&mut c, 1, 100, 60);
    assert!(c.node(1).compacted_to > c.raft(3).last_log_id().index, "3's next entry is compacted away");
    c.heal();
    c.run_for(500 * MS);
    assert_eq!(c.applied_payloads(3), c.applied_payloads(1), "3 caught up through the snapshot");
    let chunks = count_actions(&c, 3, |a| matches!(a, Action::ReceiveSnapshotChunk { .. }));
    assert!(chunks > 3, "the snapshot came in several bounded chunks ({chunks})");
    assert_eq!(count_actions(&c, 3, |a| matches!(a, Action::InstallSnapshot { .. })), 1);
    let max_chunk = c
        .trace
        .iter()
        .filter_map(|(_, _, a)| match a {
            Action::Send { message, .. } => match &message.body {
                MessageBody::InstallSnapshot { data, .. } => Some(data.len()),
                _ => None,
            },
            _ => None,
        })
        .max()
        .unwrap();
    assert!(max_chunk <= 100);
    // Replication resumed after the install.
    c.propose(1, 1000, b"after install");
    c.run_for(100 * MS);
    assert!(c.applied_payloads(3).contains(&b"after install".to_vec()));
    // And 3 restarts from its snapshot with the same state.
    let before = c.applied_payloads(3);
    c.crash(3);
    c.restart(3);
    c.run_for(200 * MS);
    assert_eq!(c.applied_payloads(3), before);
    c.check_invariants();
}

#[test]
fn snapshot_transfer_survives_dropped_chunks() {
    let mut c = Cluster::with_config(3, 43, small_snapshots);
    c.elect(1);
    c.isolate(3);
    propose_many(&mut c, 1, 1, 60);
    // Lose 30% of the chunks and of their acknowledgements.
    let lost = Rc::new(Cell::new((0u32, 0u32)));
    let seen = lost.clone();
    let mut rng = ChaCha8Rng::seed_from_u64(43);
    c.lose = Some(Box::new(move |_, m| {
        let (chunks, acks) = seen.get();
        let lose = rng.next_u32() % 10 < 3;
        match m.body {
            MessageBody::InstallSnapshot { .. } if lose => seen.set((chunks + 1, acks)),
            MessageBody::SnapshotResponse { .. } if lose => seen.set((chunks, acks + 1)),
            _ => return false,
        }
        true
    }));
    c.heal();
    c.run_for(2_000 * MS);
    let (chunks, acks) = lost.get();
    assert!(chunks >= 2 && acks >= 2, "losses happened: {chunks} chunks, {acks} acks");
    assert_eq!(c.applied_payloads(3), c.applied_payloads(1));
    assert_eq!(count_actions(&c, 3, |a| matches!(a, Action::InstallSnapshot { .. })), 1, "installed once");
    c.check_invariants();
}

#[test]
fn a_transfer_cut_by_a_leader_change_is_abandoned_and_restarted_by_the_new_leader() {
    let mut c = Cluster::with_config(3, 44, small_snapshots);
    c.elect(1);
    c.isolate(3);
    propose_many(&mut c, 1, 1, 60);
    // 2 also has a snapshot (every node follows the policy).
    assert!(c.node(2).snapshot.is_some());
    // Deliver only the first two chunks from 1 to 3, then 1 dies.
    let sent = Rc::new(Cell::new(0u32));
    let s = sent.clone();
    c.lose = Some(Box::new(move |to, m| {
        if to == 3 && matches!(m.body, MessageBody::InstallSnapshot { .. }) {
            s.set(s.get() + 1);
            return s.get() > 2;
        }
        false
    }));
    c.heal();
    c.run_for(300 * MS);
    assert_eq!(count_actions(&c, 3, |a| matches!(a, Action::ReceiveSnapshotChunk { .. })), 2);
    c.lose = None;
    c.crash(1);
    c.run_for(2_000 * MS);
    let leader = c.leader().expect("2 or 3 leads");
    assert_ne!(leader, 1);
    // 3 staged two chunks of 1's transfer, then got a whole one from 2 (the
    // testkit asserts chunks of two transfers never mix and the install
    // decodes completely).
    assert_eq!(count_actions(&c, 3, |a| matches!(a, Action::InstallSnapshot { .. })), 1);
    assert_eq!(c.applied_payloads(3), c.applied_payloads(2));
    c.check_invariants();
}

#[test]
fn a_learner_added_after_compaction_starts_from_a_snapshot() {
    let mut c = Cluster::with_config(3, 45, small_snapshots);
    c.elect(1);
    propose_many(&mut c, 1, 1, 60);
    c.add_node(4, 45, small_snapshots);
    c.change_membership(1, 500, &[ConfChange::AddLearner(4)]);
    c.run_for(500 * MS);
    assert_eq!(count_actions(&c, 4, |a| matches!(a, Action::InstallSnapshot { .. })), 1);
    assert_eq!(c.applied_payloads(4), c.applied_payloads(1));
    assert!(c.raft(4).membership().is_learner(4), "the membership came with the log after the snapshot");
    c.check_invariants();
}

#[test]
fn membership_and_snapshot_runs_replay_identically() {
    let mut c = Cluster::with_config(3, 46, small_snapshots);
    c.add_node(4, 46, small_snapshots);
    c.elect(1);
    c.isolate(3);
    propose_many(&mut c, 1, 1, 40);
    c.change_membership(1, 500, &[ConfChange::AddLearner(4)]);
    c.run_for(200 * MS);
    c.heal();
    c.run_for(200 * MS);
    c.change_membership(1, 501, &[ConfChange::PromoteLearner(4), ConfChange::RemoveNode(2)]);
    c.run_for(300 * MS);
    assert_eq!(c.raft(1).membership().voters, [1, 3, 4].into_iter().collect());
    for (&id, node) in &c.nodes {
        let mut fresh = tarn_core::RawNode::new(node.config.clone(), node.recovered.clone()).unwrap();
        let mut actions = Vec::new();
        for (now, input) in &node.inputs {
            fresh.step(*now, input.clone(), &mut actions);
        }
        assert_eq!(actions, node.actions, "node {id}");
        assert_eq!(fresh.status(), node.raft.status(), "node {id}");
    }
    let installs: usize =
        [3, 4].iter().map(|&id| count_actions(&c, id, |a| matches!(a, Action::InstallSnapshot { .. }))).sum();
    assert!(installs >= 2, "both 3 and 4 caught up through snapshots ({installs})");
}

#[test]
fn a_loss_pattern_matching_the_window_does_not_stall_the_transfer() {
    // Every third chunk is lost and the window is three chunks: without
    // slowing down after a retransmission the same chunk would be lost forever.
    let mut c = Cluster::with_config(3, 47, small_snapshots);
    c.elect(1);
    c.isolate(3);
    propose_many(&mut c, 1, 1, 60);
    let sent = Rc::new(Cell::new(0u32));
    let s = sent.clone();
    c.lose = Some(Box::new(move |_, m| {
        if matches!(m.body, MessageBody::InstallSnapshot { .. }) {
            s.set(s.get() + 1);
            return s.get().is_multiple_of(3);
        }
        false
    }));
    c.heal();
    c.run_for(3_000 * MS);
    assert!(sent.get() >= 9);
    assert_eq!(c.applied_payloads(3), c.applied_payloads(1));
    c.check_invariants();
}

/// Driver answers that do not match anything the core asked for (wrong
/// offsets, snapshots, followers; installs never requested; snapshots the
/// state machine cannot have taken; random membership requests) are ignored
/// or refused: nothing panics and the safety checks keep holding.
#[test]
fn mismatched_driver_inputs_are_ignored() {
    let mut c = Cluster::with_config(3, 48, small_snapshots);
    c.elect(1);
    c.isolate(3);
    propose_many(&mut c, 1, 1, 40);
    c.heal();
    let mut rng = ChaCha8Rng::seed_from_u64(48);
    for round in 0..400u64 {
        let id = 1 + rng.next_u64() % 3;
        let index = rng.next_u64() % 80;
        let term = rng.next_u64() % 4;
        let meta = tarn_core::SnapshotMeta {
            last_log_id: LogId::new(term, index),
            membership: tarn_core::Membership::new_voters([1, 2, 3]),
        };
        let input = match rng.next_u32() % 4 {
            0 => Input::SnapshotChunkRead {
                to: 1 + rng.next_u64() % 4,
                snapshot: meta.last_log_id,
                offset: rng.next_u64() % 500,
                data: (rng.next_u32() % 2 == 0).then(|| bytes::Bytes::from_static(b"junk")),
                done: rng.next_u32() % 2 == 0,
            },
            1 => Input::SnapshotInstalled { meta },
            2 => Input::SnapshotCreated { meta },
            _ => Input::ChangeMembership {
                id: 10_000 + round,
                changes: vec![match rng.next_u32() % 4 {
                    0 => ConfChange::AddVoter(rng.next_u64() % 6),
                    1 => ConfChange::AddLearner(rng.next_u64() % 6),
                    2 => ConfChange::RemoveNode(rng.next_u64() % 6),
                    _ => ConfChange::PromoteLearner(rng.next_u64() % 6),
                }],
            },
        };
        c.step(id, input);
        if round % 20 == 0 {
            c.run_for(50 * MS);
            c.check_invariants();
        }
    }
    c.heal();
    c.run_for(1_000 * MS);
    c.check_invariants();
    let leader = c.leader().expect("a leader");
    c.propose(leader, 99_999, b"still works");
    c.run_for(500 * MS);
    let m = c.raft(leader).membership().clone();
    for id in m.members().into_iter().filter(|id| c.nodes.contains_key(id)) {
        assert!(c.applied_payloads(id).contains(&b"still works".to_vec()), "member {id}");
    }
}

#[test]
fn a_lost_install_acknowledgement_does_not_stall_replication() {
    let mut c = Cluster::with_config(3, 49, small_snapshots);
    c.elect(1);
    c.isolate(3);
    propose_many(&mut c, 1, 1, 60);
    let dropped = Rc::new(Cell::new(false));
    let d = dropped.clone();
    // Drop 3's first success answer after its install.
    c.lose = Some(Box::new(move |to, m| {
        let ack = to == 1
            && m.from == 3
            && matches!(m.body, MessageBody::AppendResponse { result: Ok(i), .. } if i >= 60);
        if ack && !d.get() {
            d.set(true);
            return true;
        }
        false
    }));
    c.heal();
    c.run_for(1_000 * MS);
    assert!(dropped.get(), "the acknowledgement was lost");
    c.propose(1, 1000, b"after");
    c.run_for(200 * MS);
    assert!(c.applied_payloads(3).contains(&b"after".to_vec()), "replication resumed");
    assert_eq!(count_actions(&c, 3, |a| matches!(a, Action::InstallSnapshot { .. })), 1, "installed once");
    c.check_invariants();
}

/// Found by the raft_cluster fuzz target: a follower whose disk had not yet
/// acknowledged some appends received a snapshot; the appends became durable
/// after `InstallSnapshot` and before `SnapshotInstalled`, and the core
/// applied them then — on top of the state machine the driver was replacing
/// with the snapshot's (the testkit's "apply out of order" check fires).
#[test]
fn nothing_is_applied_while_a_snapshot_install_is_pending() {
    let mut c = Cluster::with_config(3, 7, small_snapshots);
    c.elect(1);
    propose_many(&mut c, 1, 1, 3);
    c.nodes.get_mut(&3).expect("node 3").auto_persist = false;
    propose_many(&mut c, 1, 10, 3);
    c.isolate(3);
    propose_many(&mut c, 1, 100, 40);
    c.heal();
    c.run_for(500 * MS);
    let pending = |c: &Cluster| {
        let asked = count_actions(c, 3, |a| matches!(a, Action::InstallSnapshot { .. })) > 0;
        let done = c.nodes[&3].inputs.iter().any(|(_, i)| matches!(i, Input::SnapshotInstalled { .. }));
        asked && !done
    };
    assert!(pending(&c), "node 3 was sent a snapshot and waits for its (held) install");
    // Release the held writes: its old appends become durable first, then
    // the install completes (the testkit panics on an out-of-order apply).
    c.nodes.get_mut(&3).expect("node 3").auto_persist = true;
    c.persist(3);
    assert!(!pending(&c));
    c.run_for(500 * MS);
    assert_eq!(c.applied_payloads(3), c.applied_payloads(1));
    c.check_invariants();
}
