//! Randomized runs of the in-memory cluster with an unfriendly network and
//! disk: messages dropped, duplicated and reordered; persistence delayed;
//! nodes crashed and restarted; partitions; leadership transfers; time moving
//! in uneven steps. Safety is checked at every apply (the test kit's applied
//! history) and at the end (one leader per term, log matching, reads see
//! every write acknowledged before they started); liveness after healing.

use std::collections::BTreeMap;

use tarn_core::testkit::{Cluster, Outcome};
use tarn_core::{Input, Role};

const MS: u64 = 1_000_000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic and good enough to pick faults.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn advance(c: &mut Cluster, by: u64) {
    c.now += by;
    let due: Vec<u64> = c
        .nodes
        .iter()
        .filter(|(_, n)| n.up && n.next_deadline_global() <= c.now)
        .map(|(&id, _)| id)
        .collect();
    for id in due {
        c.step(id, Input::Tick);
    }
}

fn deliver_chaotically(c: &mut Cluster, rng: &mut Rng, budget: u64) {
    for _ in 0..budget {
        if c.network.is_empty() {
            return;
        }
        let k = rng.below(c.network.len() as u64) as usize;
        let (to, msg) = c.network.remove(k).expect("index in range");
        if rng.chance(8) {
            continue; // dropped
        }
        if rng.chance(4) {
            c.network.push_back((to, msg.clone())); // duplicated
        }
        if c.cut.contains(&(msg.from, to)) || !c.node(to).up {
            continue;
        }
        c.step(to, Input::Message(msg));
    }
}

fn max_acknowledged(c: &Cluster) -> u64 {
    c.nodes
        .values()
        .flat_map(|n| n.outcomes.values())
        .filter_map(|o| match o {
            Outcome::Applied(i) => Some(*i),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

fn chaos_run(seed: u64, lease: bool) -> usize {
    chaos_run_with(seed, |cfg| cfg.lease_read = lease)
}

fn chaos_run_with(seed: u64, tweak: impl Fn(&mut tarn_core::Config)) -> usize {
    chaos_run_skewed(seed, 0, tweak)
}

/// `skew_ppm`: every node's clock runs up to this much fast or slow.
fn chaos_run_skewed(seed: u64, skew_ppm: i64, tweak: impl Fn(&mut tarn_core::Config)) -> usize {
    let mut c = Cluster::with_config(5, seed, |cfg| {
        cfg.max_entries_per_msg = 4;
        cfg.max_inflight_msgs = 4;
        cfg.max_log_tail_entries = 16;
        tweak(cfg);
    });
    c.record_trace = false;
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    if skew_ppm > 0 {
        for n in c.nodes.values_mut() {
            n.clock_skew_ppm = rng.below(2 * skew_ppm as u64 + 1) as i64 - skew_ppm;
            n.clock_offset_ns = rng.below(1_000 * MS);
        }
    }
    let mut next_id = 1u64;
    // read id -> (node, writes acknowledged before the read started)
    let mut reads: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for _round in 0..400 {
        match rng.below(20) {
            0..=5 => {
                let target = c.leader().filter(|_| rng.chance(80)).unwrap_or(1 + rng.below(5));
                for _ in 0..1 + rng.below(4) {
                    c.propose(target, next_id, &next_id.to_le_bytes());
                    next_id += 1;
                }
            }
            6..=8 => {
                let target = 1 + rng.below(5);
                reads.insert(next_id, (target, max_acknowledged(&c)));
                c.read(target, next_id);
                next_id += 1;
            }
            9 => {
                let a = 1 + rng.below(5);
                c.isolate(a);
            }
            10 => {
                let (a, b) = (1 + rng.below(5), 1 + rng.below(5));
                c.cut.insert((a, b));
            }
            11 | 12 => c.heal(),
            13 => {
                let a = 1 + rng.below(5);
                let down = c.nodes.values().filter(|n| !n.up).count();
                if c.node(a).up && down < 2 {
                    c.crash(a);
                } else if !c.node(a).up {
                    c.restart(a);
                }
            }
            14 => {
                let a = 1 + rng.below(5);
                let n = c.nodes.get_mut(&a).expect("node");
                n.auto_persist = !n.auto_persist;
            }
            15 => {
                if let Some(l) = c.leader() {
                    c.step(l, Input::TransferLeadership { to: 1 + rng.below(5) });
                }
            }
            _ => {}
        }
        // Slow disks catch up now and then.
        for id in 1..=5 {
            if c.node(id).up && rng.chance(30) {
                c.persist(id);
            }
        }
        let budget = rng.below(300);
        deliver_chaotically(&mut c, &mut rng, budget);
        advance(&mut c, rng.below(40 * MS));
        c.check_invariants();
    }
    // Heal everything: the cluster must converge and make progress.
    c.heal();
    for id in 1..=5 {
        if !c.node(id).up {
            c.restart(id);
        }
        c.nodes.get_mut(&id).expect("node").auto_persist = true;
        c.persist(id);
    }
    c.run_for(3_000 * MS);
    let l = c.leader().unwrap_or_else(|| panic!("seed {seed}: no leader after healing"));
    c.propose(l, u64::MAX, b"final");
    c.run_for(1_000 * MS);
    for id in 1..=5 {
        if !c.applied_payloads(id).contains(&b"final".to_vec()) {
            for id in 1..=5 {
                eprintln!(
                    "{:?} applied_len={} auto={} up={}",
                    c.raft(id).status(),
                    c.node(id).applied.len(),
                    c.node(id).auto_persist,
                    c.node(id).up
                );
            }
        }
        assert!(
            c.applied_payloads(id).contains(&b"final".to_vec()),
            "seed {seed}: node {id} missed the final write"
        );
        assert_ne!(c.raft(id).role(), Role::Candidate);
    }
    c.check_invariants();
    // Reads: a read never misses a write acknowledged before it started.
    let mut served = 0;
    for (rid, (node, acked_before)) in reads {
        if let Some(Outcome::ReadReady(index)) = c.outcome(node, rid) {
            served += 1;
            assert!(
                *index >= acked_before,
                "seed {seed}: read {rid} on {node} at {index} < acknowledged {acked_before}"
            );
        }
    }
    if std::env::var("CHAOS_VERBOSE").is_ok() {
        eprintln!(
            "seed {seed}: applied {} entries, term {}, served {served} reads",
            c.applied_history.len(),
            c.raft(l).term()
        );
    }
    served
}

#[test]
fn chaos_with_lease_reads() {
    let seeds: u64 = std::env::var("CHAOS_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(12);
    let first: u64 = std::env::var("CHAOS_FIRST").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let served: usize = (first..first + seeds).map(|seed| chaos_run(seed, true)).sum();
    assert!(served > seeds as usize, "reads were served: {served}");
}

#[test]
fn chaos_with_read_index_only() {
    let seeds: u64 = std::env::var("CHAOS_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(12);
    let served: usize = (100_000..100_000 + seeds).map(|seed| chaos_run(seed, false)).sum();
    assert!(served > seeds as usize, "reads were served: {served}");
}

#[test]
fn chaos_with_clock_drift_within_the_bound() {
    // Clocks up to 5% fast or slow, with a configured bound of 5%: lease
    // reads must stay linearizable (checked by `chaos_run`).
    let seeds: u64 = std::env::var("CHAOS_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(12);
    let served: usize = (200_000..200_000 + seeds)
        .map(|seed| chaos_run_skewed(seed, 50_000, |cfg| cfg.max_clock_drift_ppm = 50_000))
        .sum();
    assert!(served > seeds as usize, "reads were served: {served}");
}

/// The chaos test finds planted bugs on its own, within a few seeds.
#[cfg(feature = "planted-bugs")]
#[test]
fn chaos_finds_planted_bugs() {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use tarn_core::PlantedBug;
    let bugs = [
        PlantedBug::VoteWithoutLogCheck,
        PlantedBug::CommitPreviousTermByCounting,
        PlantedBug::ForgetToPersistVote,
        PlantedBug::ReadWithoutLeadershipCheck,
        PlantedBug::AckAppendBeforeDurable,
    ];
    let mut report = Vec::new();
    for bug in bugs {
        let found = (1..=CHAOS_SEEDS_PER_BUG).find(|&seed| {
            // Odd seeds run without pre-vote and check-quorum (so without
            // stickiness, which otherwise masks a forgotten vote for a while).
            let plain = seed % 2 == 1;
            catch_unwind(AssertUnwindSafe(|| {
                chaos_run_with(seed, |cfg| {
                    cfg.planted_bug = Some(bug);
                    if plain {
                        cfg.pre_vote = false;
                        cfg.check_quorum = false;
                        cfg.lease_read = false;
                    }
                })
            }))
            .is_err()
        });
        report.push(format!("{bug:?}: {found:?}"));
    }
    eprintln!("first failing seed per planted bug: {report:?}");
    let missed: Vec<_> = report.iter().filter(|r| r.ends_with("None")).collect();
    assert!(missed.len() <= 1, "chaos missed planted bugs: {missed:?}");
}

/// Seeds tried per planted bug. The first find, measured: VoteWithoutLogCheck 1,
/// CommitPreviousTermByCounting 21, ReadWithoutLeadershipCheck 4, AckAppendBeforeDurable 743
/// (24 before f4c5108: a leader now replicates afresh to a follower whose log came back
/// shorter, which repairs most lost acknowledgements before they matter), ForgetToPersistVote
/// not within 1,000 (the one miss allowed). This in-memory harness is the quick check; the
/// simulator's `planted_bugs` test, run by CI, finds every one within 300 seeds. The bound
/// was 60 and this test failed unnoticed for two weeks, because CI did not run it:
/// `.ci/extra` does now.
#[cfg(feature = "planted-bugs")]
const CHAOS_SEEDS_PER_BUG: u64 = 1000;
