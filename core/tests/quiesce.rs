//! Quiescence (issue 17, `Config::quiesce`): an idle group goes quiet, stays
//! silent, wakes on work, and a quiet follower of a dead leader campaigns
//! once node-level liveness reports the leader down.

use tarn_core::testkit::{Cluster, Outcome};
use tarn_core::{Action, Input, Role, NO_DEADLINE};

const MS: u64 = 1_000_000;

fn quiet_cluster(seed: u64) -> Cluster {
    let mut c = Cluster::with_config(3, seed, |cfg| cfg.quiesce = true);
    c.elect(1);
    c.propose(1, 1, b"a");
    c.run_for(500 * MS);
    c
}

fn sends_since(c: &Cluster, mark: usize) -> usize {
    c.trace[mark..].iter().filter(|(_, _, a)| matches!(a, Action::Send { .. })).count()
}

fn all_quiet(c: &Cluster) -> bool {
    (1..=3).all(|id| c.raft(id).is_quiescent() && c.raft(id).next_deadline() == NO_DEADLINE)
}

/// Fails without quiescence: heartbeats go on forever.
#[test]
fn an_idle_group_goes_quiet_and_sends_nothing() {
    let mut c = quiet_cluster(1);
    assert!(all_quiet(&c), "{:?}", (1..=3).map(|i| c.raft(i).status()).collect::<Vec<_>>());
    assert_eq!(c.outcome(1, 1), Some(&Outcome::Applied(2)));
    let mark = c.trace.len();
    c.run_for(10_000 * MS);
    assert_eq!(sends_since(&c, mark), 0, "a quiet group sends nothing");
    assert_eq!(c.raft(1).role(), Role::Leader);
    c.check_invariants();
}

/// Fails if a proposal does not wake the leader or the followers.
#[test]
fn a_proposal_wakes_the_group_commits_and_it_goes_quiet_again() {
    let mut c = quiet_cluster(2);
    c.propose(1, 2, b"b");
    assert!(!c.raft(1).is_quiescent(), "the proposal woke the leader");
    c.stabilize();
    for id in 1..=3 {
        assert_eq!(c.raft(id).commit_index(), 3, "node {id}");
    }
    assert_eq!(c.outcome(1, 2), Some(&Outcome::Applied(3)));
    c.run_for(500 * MS);
    assert!(all_quiet(&c));
    assert_eq!(c.raft(1).term(), c.raft(2).term(), "no election on the way");
    c.check_invariants();
}

/// Fails if a quiet leader serves a read from the lease it held before
/// going quiet: the read must take a ReadIndex round.
#[test]
fn a_read_on_a_quiet_leader_takes_a_read_index_round() {
    let mut c = Cluster::with_config(3, 3, |cfg| cfg.quiesce = true);
    c.elect(1);
    c.run_for(20 * MS);
    // Tick the leader until it goes quiet: its last round's lease would
    // still be valid now.
    for _ in 0..10 {
        if c.raft(1).is_quiescent() {
            break;
        }
        c.tick(1);
        c.stabilize();
    }
    assert!(c.raft(1).is_quiescent());
    c.read(1, 7);
    assert_eq!(c.outcome(1, 7), None, "not served from the old lease");
    assert!(c.network.iter().any(|(_, m)| m.body.kind() == "Heartbeat"), "a ReadIndex round went out");
    c.stabilize();
    assert!(matches!(c.outcome(1, 7), Some(Outcome::ReadReady(_))));
    c.check_invariants();
}

/// Fails when a quiet follower ignores `PeerDown` of its leader (nobody
/// ever campaigns), and shows that without `PeerDown` a quiet group with a
/// dead leader stays leaderless.
#[test]
fn quiet_followers_of_a_crashed_leader_elect_a_new_one_after_peer_down() {
    let mut c = quiet_cluster(4);
    c.crash(1);
    c.run_for(5_000 * MS);
    assert_eq!(c.leader(), None, "quiet followers alone never notice");
    let at = c.now;
    for id in [2, 3] {
        c.step(id, Input::PeerDown { node: 1 });
        assert!(!c.raft(id).is_quiescent());
    }
    // One election timeout (at most 300 ms) plus the rounds.
    c.run_for(400 * MS);
    let leader = c.leader().expect("a new leader within an election timeout of PeerDown");
    assert_ne!(leader, 1);
    assert!(c.now - at <= 400 * MS);
    c.check_invariants();
}

/// Both followers suspect a live quiet leader that suspects nobody (its
/// pings went missing one way), then see it again before their election
/// timeout: the poke on `PeerUp` wakes the leader, and the group goes quiet
/// again under it. Without the poke the woken followers grant each other's
/// pre-votes and elect a new leader (the control run).
#[test]
fn a_leader_suspected_for_a_moment_keeps_its_quiet_group() {
    for poke in [true, false] {
        let mut c = quiet_cluster(6);
        assert!(all_quiet(&c));
        let term = c.raft(1).term();
        for id in [2, 3] {
            c.step(id, Input::PeerDown { node: 1 });
            assert!(!c.raft(id).is_quiescent(), "PeerDown of the leader wakes node {id}");
        }
        c.run_for(20 * MS);
        for id in [2, 3] {
            c.step(id, Input::PeerUp { node: 1 });
        }
        if !poke {
            // What the followers knew before the poke: the leader is no
            // longer suspected, and nothing else (the two pokes are lost).
            let mut pokes = 2;
            c.lose = Some(Box::new(move |to, m| {
                let poke = to == 1 && m.body.kind() == "HeartbeatResponse" && pokes > 0;
                pokes -= u32::from(poke);
                poke
            }));
        }
        c.run_for(2_000 * MS);
        if poke {
            assert_eq!(c.leader(), Some(1), "the leader keeps its group");
            assert_eq!(c.raft(2).term(), term, "no election");
            assert!(all_quiet(&c), "quiet again");
        } else {
            assert!(c.raft(2).term() > term, "control: without the poke the followers elect");
        }
        c.check_invariants();
    }
}

/// A follower that missed the `Quiesce` times out; its pre-vote wakes the
/// leader, which quiesces again, and nobody changes term.
#[test]
fn a_lost_quiesce_message_heals_without_an_election() {
    let mut c = Cluster::with_config(3, 5, |cfg| cfg.quiesce = true);
    c.elect(1);
    c.run_for(20 * MS);
    c.lose = Some(Box::new(|to, m| to == 3 && m.body.kind() == "Quiesce"));
    c.run_for(100 * MS);
    assert!(c.raft(1).is_quiescent() && c.raft(2).is_quiescent());
    assert!(!c.raft(3).is_quiescent());
    c.lose = None;
    let term = c.raft(1).term();
    c.run_for(2_000 * MS);
    assert!(all_quiet(&c));
    assert_eq!(c.raft(1).role(), Role::Leader);
    assert_eq!(c.raft(3).term(), term, "the pre-vote changed no term");
    c.check_invariants();
}

/// A quiet follower refuses a pre-vote (stickiness holds while liveness
/// vouches for the leader) and stays quiet.
#[test]
fn a_quiet_follower_refuses_pre_votes_and_stays_quiet() {
    let mut c = quiet_cluster(6);
    c.partition(&[3], &[1]);
    c.step(3, Input::PeerDown { node: 1 });
    c.run_for(2_000 * MS);
    assert_eq!(c.raft(1).role(), Role::Leader, "node 3 alone cannot depose it");
    assert!(c.raft(2).is_quiescent(), "node 2 ignored node 3's pre-votes");
    assert_eq!(c.raft(2).term(), c.raft(1).term());
    c.check_invariants();
}

/// A leader that crashes and restarts faster than node-level liveness
/// notices finds quiet followers: its own pre-vote wakes them (it leads no
/// more), so it is not refused forever by its own stickiness. Fails if a
/// quiet follower refuses its own leader's campaign.
#[test]
fn a_leader_restarted_before_anyone_suspected_it_is_elected_again() {
    let mut c = quiet_cluster(7);
    c.crash(1);
    c.restart(1);
    c.run_for(3_000 * MS);
    assert!(c.leader().is_some(), "{:?}", (1..=3).map(|i| c.raft(i).status()).collect::<Vec<_>>());
    c.check_invariants();
}

/// A leader whose group stopped while its node stays up (a storage error
/// stops one group; node-level liveness still vouches for the node): no
/// `PeerDown` ever comes, so client work on the quiet followers must wake
/// them, and they elect a new leader. Fails if a proposal or read leaves a
/// quiet follower quiet.
#[test]
fn client_work_wakes_quiet_followers_of_a_leader_whose_group_stopped() {
    let mut c = quiet_cluster(8);
    c.crash(1); // the group only: no PeerDown follows
    c.run_for(2_000 * MS);
    assert_eq!(c.leader(), None, "nothing else wakes them");
    c.propose(2, 10, b"w");
    assert!(!c.raft(2).is_quiescent(), "a proposal wakes a quiet follower");
    assert!(matches!(c.outcome(2, 10), Some(Outcome::Dropped(_))), "and is refused as before");
    c.read(3, 11);
    assert!(!c.raft(3).is_quiescent(), "a read wakes a quiet follower");
    c.run_for(1_000 * MS);
    let leader = c.leader().expect("the woken followers elect a leader");
    assert_ne!(leader, 1);
    c.check_invariants();
}
