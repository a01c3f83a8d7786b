//! Each planted bug (feature `planted-bugs`) is caught by a scenario that
//! passes without it: proof that the scenarios (and the simulator built on the
//! same checks) can see these failures.
#![cfg(feature = "planted-bugs")]

use std::panic::{catch_unwind, AssertUnwindSafe};

use tarn_core::testkit::{log_with_terms, Cluster, Outcome};
use tarn_core::{Config, HardState, Membership, PlantedBug, Role};

const MS: u64 = 1_000_000;

fn with_bug(bug: Option<PlantedBug>) -> impl Fn(&mut Config) {
    move |cfg| cfg.planted_bug = bug
}

/// Runs `scenario` with and without `bug`; the scenario panics (a failed
/// check) or returns false when it sees a violation.
fn caught(bug: PlantedBug, scenario: impl Fn(Option<PlantedBug>) -> bool) {
    assert!(scenario(None), "{bug:?}: the scenario must pass without the bug");
    let result = catch_unwind(AssertUnwindSafe(|| scenario(Some(bug))));
    assert!(!matches!(result, Ok(true)), "{bug:?} went unnoticed");
}

#[test]
fn vote_without_log_check_is_caught() {
    caught(PlantedBug::VoteWithoutLogCheck, |bug| {
        let hs = HardState { term: 2, vote: None, commit: 0 };
        let logs = vec![
            (1, hs, log_with_terms(&[1, 1, 2])),
            (2, hs, log_with_terms(&[1, 1, 2])),
            (3, hs, log_with_terms(&[1, 1])),
        ];
        let mut c = Cluster::with_logs(4, Membership::new_voters([1, 2, 3]), logs, with_bug(bug));
        c.tick(3);
        c.stabilize();
        c.raft(3).role() != Role::Leader
    });
}

#[test]
fn commit_previous_term_by_counting_is_caught() {
    caught(PlantedBug::CommitPreviousTermByCounting, |bug| {
        let hs = |term, vote| HardState { term, vote: Some(vote), commit: 0 };
        let logs = vec![
            (1, hs(2, 1), log_with_terms(&[1, 2])),
            (2, hs(2, 1), log_with_terms(&[1, 2])),
            (3, hs(3, 5), log_with_terms(&[1])),
            (4, hs(3, 5), log_with_terms(&[1])),
            (5, hs(3, 5), log_with_terms(&[1, 3])),
        ];
        let mut c = Cluster::with_logs(6, Membership::new_voters(1..=5), logs, |cfg| {
            cfg.max_entries_per_msg = 1;
            cfg.planted_bug = bug;
        });
        c.partition(&[1, 2, 3], &[4, 5]);
        for _ in 0..3 {
            c.tick(1);
            for _ in 0..20 {
                let s3_has_2 = c.last_log_id(3).index >= 2;
                c.deliver_filtered(move |to, m| {
                    let has_3 = matches!(&m.body, tarn_core::MessageBody::AppendEntries { entries, .. } if entries.iter().any(|e| e.index == 3));
                    !(to == 3 && has_3 && s3_has_2)
                });
            }
            if c.raft(1).role() == Role::Leader {
                break;
            }
        }
        c.crash(1);
        c.heal();
        c.isolate(2);
        c.run_for(3_000 * MS);
        c.check_invariants();
        true
    });
}

#[test]
fn forget_to_persist_vote_is_caught() {
    caught(PlantedBug::ForgetToPersistVote, |bug| {
        let mut c = Cluster::with_config(3, 3, |cfg| {
            cfg.pre_vote = false;
            cfg.check_quorum = false;
            cfg.lease_read = false;
            cfg.planted_bug = bug;
        });
        // Node 1 wins term 1 with node 2's vote; node 3 hears nothing.
        c.partition(&[3], &[1, 2]);
        // Deliver the election but no append: node 2's log stays empty.
        for _ in 0..5 {
            c.tick(1);
            for _ in 0..5 {
                c.deliver_filtered(|_, m| !matches!(m.body, tarn_core::MessageBody::AppendEntries { .. }));
            }
            if c.raft(1).role() == Role::Leader {
                break;
            }
        }
        assert_eq!(c.raft(1).role(), Role::Leader);
        // Node 2 crashes and forgets; node 3 campaigns in the same term.
        c.crash(2);
        c.restart(2);
        c.heal();
        c.isolate(1);
        c.tick(3);
        c.stabilize();
        let term1 = c.raft(1).term();
        let two_leaders = c.raft(3).role() == Role::Leader && c.raft(3).term() == term1;
        !two_leaders
    });
}

#[test]
fn read_without_leadership_check_is_caught() {
    caught(PlantedBug::ReadWithoutLeadershipCheck, |bug| {
        let mut c = Cluster::with_config(5, 22, |cfg| {
            cfg.lease_read = false;
            cfg.planted_bug = bug;
        });
        c.elect(1);
        c.run_for(100 * MS);
        c.isolate(1);
        c.tick(2);
        c.stabilize();
        c.propose(2, 1, b"new");
        c.stabilize();
        c.read(1, 9);
        c.run_for(50 * MS);
        !matches!(c.outcome(1, 9), Some(Outcome::ReadReady(_)))
    });
}

#[test]
fn ack_append_before_durable_is_caught() {
    caught(PlantedBug::AckAppendBeforeDurable, |bug| {
        let mut c = Cluster::with_config(3, 5, with_bug(bug));
        c.elect(1);
        c.run_for(100 * MS);
        // Node 2 does not persist; node 3 hears nothing.
        c.nodes.get_mut(&2).unwrap().auto_persist = false;
        c.isolate(3);
        c.propose(1, 1, b"acknowledged");
        c.stabilize();
        // Leader and node 2 crash; node 2 loses its unsynced write.
        c.crash(1);
        c.crash(2);
        c.restart(2);
        c.heal();
        c.isolate(1);
        c.run_for(2_000 * MS);
        let l = c.leader().expect("2 and 3 elect a leader");
        c.propose(l, 2, b"other");
        c.run_for(500 * MS);
        c.check_invariants();
        true
    });
}
