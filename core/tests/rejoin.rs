//! A voter that lost its disk and restarts empty under the same id
//! (`Config::rejoin_after_data_loss`): without the flag it can vote twice in
//! one term (two leaders); with it, it takes no part in elections until a
//! committed configuration without it as a voter is seen, after which the
//! operator can promote it again.

use std::panic::{catch_unwind, AssertUnwindSafe};

use tarn_core::testkit::{Cluster, Outcome};
use tarn_core::{Action, ConfChange, Config, Input, MessageBody, NodeId, RawNode, Recovered, Role, Term};

const MS: u64 = 1_000_000;

fn propose_n(c: &mut Cluster, leader: NodeId, from_id: u64, n: u64) {
    for k in 0..n {
        c.propose(leader, from_id + k, format!("v{}", from_id + k).as_bytes());
    }
}

/// Candidates `voter` sent a vote grant to in `term`, from trace position `from`.
fn grants(c: &Cluster, voter: NodeId, term: Term, from: usize) -> Vec<NodeId> {
    c.trace[from..]
        .iter()
        .filter(|(_, n, _)| *n == voter)
        .filter_map(|(_, _, a)| match a {
            Action::Send { to, message }
                if message.term == term
                    && matches!(message.body, MessageBody::VoteResponse { granted: true }) =>
            {
                Some(*to)
            }
            _ => None,
        })
        .collect()
}

/// Did `id` ask for (pre-)votes or change to a campaigning role since trace position `from`?
fn campaigned(c: &Cluster, id: NodeId, from: usize) -> bool {
    c.trace[from..].iter().filter(|(_, n, _)| *n == id).any(|(_, _, a)| match a {
        Action::Send { message, .. } => {
            matches!(message.body, MessageBody::PreVoteRequest { .. } | MessageBody::VoteRequest { .. })
        }
        Action::RoleChanged { role, .. } => *role != Role::Follower,
        _ => false,
    })
}

fn applied_ok(c: &Cluster, leader: NodeId, id: u64) {
    assert!(
        matches!(c.outcome(leader, id), Some(Outcome::Applied(_))),
        "change {id}: {:?}",
        c.outcome(leader, id)
    );
}

/// Node 2 wins term 1 with node 3's vote while node 1 is cut off from 2;
/// node 3 loses its disk; node 1 then campaigns in term 1 and asks node 3.
/// Returns the cluster, node 3's grants in term 1, and whether delivering
/// the rest made the testkit's election-safety check fire.
fn wiped_voter_in_a_contested_term(rejoin: bool) -> (Cluster, Vec<NodeId>, Option<String>) {
    let mut c = Cluster::with_config(3, 5, |cfg| {
        cfg.pre_vote = false;
        cfg.check_quorum = false;
        cfg.lease_read = false;
    });
    c.partition(&[1], &[2]);
    c.tick(2);
    c.stabilize();
    assert_eq!(c.raft(2).role(), Role::Leader);
    assert_eq!(c.raft(2).term(), 1);
    assert_eq!(c.raft(1).term(), 0, "node 1 heard nothing of term 1");
    let mark = c.trace.len();
    c.wipe(3, rejoin);
    c.tick(1);
    assert_eq!((c.raft(1).role(), c.raft(1).term()), (Role::Candidate, 1));
    // Node 1's vote request reaches node 3 before any message of node 2.
    c.deliver_filtered(|to, m| to == 3 && m.from == 1);
    let mut granted = grants(&c, 3, 1, 0);
    granted.dedup();
    let _ = mark;
    let panic = catch_unwind(AssertUnwindSafe(|| c.stabilize())).err().map(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    });
    (c, granted, panic)
}

#[test]
fn without_the_flag_a_wiped_voter_votes_twice_in_one_term() {
    let (_, granted, panic) = wiped_voter_in_a_contested_term(false);
    assert_eq!(granted, vec![2, 1], "node 3 granted term 1 to node 2 before the loss and to node 1 after it");
    let panic = panic.expect("two leaders of term 1 trip the testkit's election-safety check");
    assert!(panic.contains("two leaders in term 1"), "{panic}");
}

#[test]
fn with_the_flag_the_same_run_has_one_grant_and_one_leader() {
    let (c, granted, panic) = wiped_voter_in_a_contested_term(true);
    assert_eq!(panic, None);
    assert_eq!(granted, vec![2], "only the grant from before the loss");
    assert_ne!(c.raft(1).role(), Role::Leader);
    assert_eq!(c.leaders_by_term.get(&1), Some(&2));
    assert!(c.raft(3).status().rejoining);
    c.check_invariants();
}

#[test]
fn a_wiped_voter_with_the_flag_takes_no_part_in_elections_while_listed_as_a_voter() {
    // Contrast first: without the flag the wiped node campaigns when alone.
    let mut c = Cluster::new(3, 11);
    c.elect(1);
    c.isolate(3);
    let mark = c.trace.len();
    c.wipe(3, false);
    c.run_for(2_000 * MS);
    assert!(campaigned(&c, 3, mark), "an isolated voter without the flag campaigns");

    let mut c = Cluster::new(3, 11);
    c.elect(1);
    propose_n(&mut c, 1, 1, 10);
    c.stabilize();
    c.isolate(3);
    let mark = c.trace.len();
    c.wipe(3, true);
    assert!(c.raft(3).status().rejoining);
    assert!(c.raft(3).membership().is_voter(3), "restarted with the cluster's configuration");
    c.run_for(2_000 * MS);
    assert!(!campaigned(&c, 3, mark), "a rejoining node never campaigns");
    assert_eq!(c.raft(3).term(), 0);

    // Back in the cluster: its heartbeat answers show a log shorter than
    // what it acknowledged before the loss, so the leader replicates to it
    // afresh. It acknowledges appends and applies, but stays rejoining: the
    // committed configuration still lists it as a voter.
    c.heal();
    c.run_for(500 * MS);
    assert_eq!(c.applied_payloads(3), c.applied_payloads(1));
    assert_eq!(c.raft(3).commit_index(), c.raft(1).commit_index());
    assert!(c.raft(3).status().rejoining);

    // With the leader down, node 2 needs node 3's vote and does not get it.
    let mark = c.trace.len();
    c.crash(1);
    c.run_for(3_000 * MS);
    assert!(campaigned(&c, 2, mark), "node 2 tried");
    assert_eq!(c.leader(), None, "node 3 refuses every (pre-)vote");
    let pre_votes_granted = c.trace[mark..].iter().any(|(_, n, a)| {
        *n == 3
            && matches!(a, Action::Send { message, .. }
                if matches!(message.body, MessageBody::PreVoteResponse { granted: true } | MessageBody::VoteResponse { granted: true }))
    });
    assert!(!pre_votes_granted);
    assert!(!campaigned(&c, 3, mark));

    // Node 1 returns; nodes 1 and 2 elect a leader.
    c.restart(1);
    c.run_for(3_000 * MS);
    let leader = c.leader().expect("nodes 1 and 2 elect a leader");
    assert_ne!(leader, 3);
    assert_eq!(c.applied_payloads(3), c.applied_payloads(leader));
    assert_eq!(c.raft(3).commit_index(), c.raft(leader).commit_index());
    assert!(c.raft(3).status().rejoining);

    // A transfer to node 3 is not taken up (TimeoutNow ignored).
    let mark = c.trace.len();
    c.step(leader, Input::TransferLeadership { to: 3 });
    c.run_for(1_000 * MS);
    let timeout_now_sent = c.trace[mark..].iter().any(|(_, n, a)| {
        *n == leader
            && matches!(a, Action::Send { to: 3, message } if message.body == MessageBody::TimeoutNow)
    });
    assert!(timeout_now_sent, "the leader handed over");
    assert!(!campaigned(&c, 3, mark));
    assert_ne!(c.leader(), Some(3));
    assert!(c.raft(3).status().rejoining);
    c.check_invariants();
}

/// Promotes the learner 3, checks that it votes (node 1 down: nodes 2 and
/// 3 can only elect with its vote) and that it can lead.
fn promote_and_lead(c: &mut Cluster, leader: NodeId) {
    c.change_membership(leader, 900, &[ConfChange::PromoteLearner(3)]);
    c.run_for(500 * MS);
    applied_ok(c, leader, 900);
    assert!(c.raft(3).membership().is_voter(3));
    assert!(!c.raft(3).status().rejoining);
    let mark = c.trace.len();
    c.crash(leader);
    c.run_for(3_000 * MS);
    let new_leader = c.leader().expect("the two others elect a leader");
    assert_ne!(new_leader, leader);
    let term = c.raft(new_leader).term();
    if new_leader != 3 {
        assert_eq!(grants(c, 3, term, mark), vec![new_leader], "node 3 voted");
        c.step(new_leader, Input::TransferLeadership { to: 3 });
        c.run_for(1_000 * MS);
    }
    assert_eq!(c.leader(), Some(3), "node 3 leads");
    c.restart(leader);
    propose_n(c, 3, 1_000, 3);
    c.run_for(500 * MS);
    assert_eq!(c.applied_payloads(leader), c.applied_payloads(3));
    c.check_invariants();
}

#[test]
fn remove_then_readd_as_learner_catch_up_by_appends_then_promote() {
    let mut c = Cluster::new(3, 21);
    c.elect(1);
    propose_n(&mut c, 1, 1, 10);
    c.stabilize();
    c.wipe(3, true);
    c.run_for(300 * MS);
    assert!(c.raft(3).status().rejoining);
    assert_eq!(c.applied_payloads(3), c.applied_payloads(1), "caught up as a (silent) voter");

    c.change_membership(1, 100, &[ConfChange::RemoveNode(3)]);
    c.run_for(300 * MS);
    applied_ok(&c, 1, 100);
    assert!(!c.raft(1).membership().contains(3));
    // The leader stops talking to a removed node, so it cannot see its removal.
    assert!(c.raft(3).status().rejoining);

    c.change_membership(1, 101, &[ConfChange::AddLearner(3)]);
    c.run_for(300 * MS);
    applied_ok(&c, 1, 101);
    assert!(c.raft(3).membership().is_learner(3));
    assert!(!c.raft(3).status().rejoining, "learner configuration committed and seen");
    assert_eq!(c.applied_payloads(3), c.applied_payloads(1));
    // A later restart of the node is a normal one (the flag is not passed again).
    c.crash(3);
    c.restart(3);
    assert!(!c.raft(3).status().rejoining);
    c.run_for(300 * MS);
    promote_and_lead(&mut c, 1);
}

#[test]
fn remove_then_readd_as_learner_catch_up_by_snapshot_then_promote() {
    let tweak = |cfg: &mut Config| {
        cfg.snapshot_after_entries = 8;
        cfg.log_keep_tail_entries = 2;
        cfg.max_snapshot_chunk_bytes = 64;
    };
    let mut c = Cluster::with_config(3, 23, tweak);
    c.elect(1);
    propose_n(&mut c, 1, 1, 10);
    c.stabilize();
    c.isolate(3);
    c.wipe(3, true);
    c.change_membership(1, 100, &[ConfChange::RemoveNode(3)]);
    c.run_for(300 * MS);
    applied_ok(&c, 1, 100);
    c.change_membership(1, 101, &[ConfChange::AddLearner(3)]);
    c.run_for(300 * MS);
    applied_ok(&c, 1, 101);
    // Snapshots past the learner's configuration; the log before them is compacted.
    propose_n(&mut c, 1, 200, 30);
    c.run_for(300 * MS);
    assert!(c.raft(3).status().rejoining);
    let mark = c.trace.len();
    c.heal();
    c.run_for(1_000 * MS);
    let installed = c.trace[mark..]
        .iter()
        .find_map(|(_, n, a)| match a {
            Action::InstallSnapshot { meta } if *n == 3 => Some(meta.clone()),
            _ => None,
        })
        .expect("node 3 caught up from a snapshot");
    assert!(installed.membership.is_learner(3), "the snapshot's configuration has it as a learner");
    assert!(!c.raft(3).status().rejoining);
    assert_eq!(c.applied_payloads(3).last(), c.applied_payloads(1).last());
    promote_and_lead(&mut c, 1);
}

#[test]
fn a_removal_from_before_the_data_loss_does_not_end_rejoining() {
    // Node 3 was removed, re-added and promoted long ago; its log history
    // holds a committed configuration without it. Small appends make the
    // wiped node's commit index walk past that entry while catching up.
    let mut c = Cluster::with_config(3, 41, |cfg| cfg.max_entries_per_msg = 2);
    c.elect(1);
    propose_n(&mut c, 1, 1, 4);
    c.change_membership(1, 100, &[ConfChange::RemoveNode(3)]);
    c.run_for(300 * MS);
    c.change_membership(1, 101, &[ConfChange::AddLearner(3)]);
    c.run_for(300 * MS);
    c.change_membership(1, 102, &[ConfChange::PromoteLearner(3)]);
    c.run_for(300 * MS);
    for id in [100, 101, 102] {
        applied_ok(&c, 1, id);
    }
    propose_n(&mut c, 1, 10, 10);
    c.stabilize();
    c.wipe(3, true);
    c.run_for(1_000 * MS);
    assert_eq!(c.applied_payloads(3), c.applied_payloads(1));
    let old_removal = c
        .node(3)
        .applied
        .iter()
        .any(|e| matches!(&e.payload, tarn_core::EntryPayload::Membership(m) if !m.contains(3)));
    assert!(old_removal, "the node applied a committed configuration without it");
    assert!(c.raft(3).status().rejoining, "an old removal says nothing about votes given since");
}

#[test]
fn the_only_voter_of_a_group_cannot_rejoin() {
    let mut cfg = Config::new(1, 1);
    cfg.rejoin_after_data_loss = true;
    let err = RawNode::new(cfg.clone(), Recovered::new_cluster([1])).err().expect("refused");
    assert_eq!(err.field, "rejoin_after_data_loss");
    assert!(err.reason.contains("only voter"), "{}", err.reason);
    let node = RawNode::new(cfg, Recovered::new_cluster([1, 2, 3])).expect("one of three may rejoin");
    assert!(node.status().rejoining);
    assert!(!RawNode::new(Config::new(1, 1), Recovered::new_cluster([1])).unwrap().status().rejoining);
}

/// May a node lose its disk without losing committed data? No node is
/// rejoining, and every node any node counts as a member is up and holds
/// durably everything any node knows committed.
fn wipe_allowed(c: &Cluster) -> bool {
    let commit = c.nodes.values().map(|n| n.raft.commit_index()).max().unwrap_or(0);
    let members: std::collections::BTreeSet<NodeId> =
        c.nodes.values().flat_map(|n| n.raft.membership().members()).collect();
    c.nodes.values().all(|n| !n.raft.status().rejoining)
        && members.iter().all(|id| c.node(*id).up && c.node(*id).durable_log.len() as u64 >= commit)
}

/// The operator's next step for a rejoining node: remove it while it is a
/// voter, add it back as a learner, promote it once it left rejoin mode.
fn operator_step(c: &mut Cluster, id: NodeId, next_id: &mut u64) {
    let Some(leader) = c.leader() else { return };
    let m = c.raft(leader).membership().clone();
    let change = if m.is_learner(id) {
        if c.raft(id).status().rejoining {
            return;
        }
        ConfChange::PromoteLearner(id)
    } else if m.is_voter(id) {
        if !c.raft(id).status().rejoining || leader == id {
            return;
        }
        ConfChange::RemoveNode(id)
    } else {
        ConfChange::AddLearner(id)
    };
    *next_id += 1;
    c.change_membership(leader, *next_id, &[change]);
}

/// Random partitions, crashes, transfers and proposals on 5 nodes, with one
/// node at a time losing its disk and walking the operator's path back
/// (remove → learner → promote). The testkit checks at every `RoleChanged`
/// that no term has two leaders, and at every `Apply` that every node
/// applies the same entry at an index.
fn randomized(seeds: std::ops::Range<u64>, tweak: impl Fn(&mut Config) + Copy) -> (u64, u64) {
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    const NODES: u64 = 5;
    const ROUNDS: usize = 80;
    let (mut wipes, mut rejoined) = (0, 0);
    for seed in seeds {
        let mut c = Cluster::with_config(NODES, 500 + seed, tweak);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut next_id = 10_000u64;
        let mut wiped: Option<NodeId> = None;
        for _ in 0..ROUNDS {
            match rng.next_u32() % 12 {
                0 => {
                    let side: Vec<NodeId> = (1..=NODES).filter(|_| rng.next_u32() % 2 == 0).collect();
                    let other: Vec<NodeId> = (1..=NODES).filter(|id| !side.contains(id)).collect();
                    c.partition(&side, &other);
                }
                1 => c.heal(),
                2 => {
                    let a = 1 + rng.next_u64() % NODES;
                    if c.node(a).up {
                        c.crash(a);
                    } else {
                        c.restart(a);
                    }
                }
                3 => {
                    if wiped.is_none() && wipe_allowed(&c) {
                        let a = 1 + rng.next_u64() % NODES;
                        c.wipe(a, true);
                        wiped = Some(a);
                        wipes += 1;
                    }
                }
                4 | 5 => {
                    if let Some(a) = wiped {
                        operator_step(&mut c, a, &mut next_id);
                    }
                }
                6 => {
                    if let Some(l) = c.leader() {
                        let to = 1 + rng.next_u64() % NODES;
                        c.step(l, Input::TransferLeadership { to });
                    }
                }
                _ => {
                    if let Some(l) = c.leader() {
                        propose_n(&mut c, l, next_id + 1, 1 + rng.next_u64() % 3);
                        next_id += 3;
                    }
                }
            }
            c.run_for(rng.next_u64() % 400 * MS);
            if let Some(a) = wiped {
                let m = c.leader().map(|l| c.raft(l).membership().clone());
                if !c.raft(a).status().rejoining && m.is_some_and(|m| m.is_voter(a)) {
                    wiped = None;
                    rejoined += 1;
                }
            }
            c.check_invariants();
        }
        // Everyone back: the cluster converges.
        c.heal();
        for id in 1..=NODES {
            if !c.node(id).up {
                c.restart(id);
            }
        }
        c.run_for(3_000 * MS);
        c.check_invariants();
    }
    (wipes, rejoined)
}

#[test]
fn randomized_wipes_and_rejoins_never_break_election_or_apply_safety() {
    let (wipes, rejoined) = randomized(0..80, |_| {});
    assert!(wipes >= 25 && rejoined >= 10, "the runs exercise the path: {wipes} wipes, {rejoined} rejoined");
}

#[test]
fn randomized_wipes_and_rejoins_without_pre_vote_or_check_quorum() {
    let (wipes, rejoined) = randomized(1000..1080, |cfg| {
        cfg.pre_vote = false;
        cfg.check_quorum = false;
        cfg.lease_read = false;
    });
    assert!(wipes >= 25 && rejoined >= 10, "the runs exercise the path: {wipes} wipes, {rejoined} rejoined");
}

/// A wiped voter forgot every term it voted in, so it follows whichever
/// leader reaches it first, a stale one included. Its acknowledgements must
/// not make a quorum: here leader 1 has only node 2 (wiped, rejoining) beside
/// it, and must neither commit, confirm a read, nor keep its leadership by
/// check-quorum on node 2's word (sim seed 7006899, 3 nodes: a stale leader
/// committed over an entry of a newer term this way).
#[test]
fn a_rejoining_voters_acknowledgements_make_no_quorum() {
    let mut c = Cluster::with_config(3, 21, |cfg| {
        cfg.lease_read = false;
    });
    c.elect(1);
    propose_n(&mut c, 1, 1, 3);
    c.stabilize();
    let committed = c.raft(1).status().commit;
    c.isolate(3);
    c.wipe(2, true);
    c.partition(&[2], &[3]);
    assert!(c.raft(2).status().rejoining);
    propose_n(&mut c, 1, 100, 2);
    c.read(1, 500);
    c.stabilize();
    // Node 2 holds the new entries (its log is real) ...
    assert!(c.last_log_id(2).index > committed, "node 2 caught up with the leader's log");
    // ... but its word commits nothing and confirms no read.
    assert_eq!(c.raft(1).status().commit, committed, "no commit counted on a rejoining voter");
    assert!(c.outcome(1, 100).is_none(), "{:?}", c.outcome(1, 100));
    assert!(c.outcome(1, 500).is_none(), "read confirmed by a rejoining voter: {:?}", c.outcome(1, 500));
    // Check-quorum: node 2's activity does not keep node 1 leading.
    c.run_for(2_000 * MS);
    assert_ne!(c.raft(1).role(), Role::Leader, "check-quorum counted a rejoining voter");
    // Node 3 back: a real quorum commits again (and a leader emerges).
    c.heal();
    c.run_for(3_000 * MS);
    let leader = c.leader().expect("a leader with node 3 back");
    assert_ne!(leader, 2, "a rejoining node never leads");
    propose_n(&mut c, leader, 200, 1);
    c.stabilize();
    applied_ok(&c, leader, 200);
    c.check_invariants();
}
