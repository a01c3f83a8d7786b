//! Same seed and inputs give byte-identical action streams; a different seed
//! changes the stream (randomized timeouts really are seeded).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use tarn_core::testkit::Cluster;

const MS: u64 = 1_000_000;

fn run(seed: u64) -> (u64, usize) {
    let mut c = Cluster::new(5, seed);
    c.run_for(1_000 * MS);
    for i in 0..50u64 {
        if let Some(l) = c.leader() {
            c.propose(l, i, &i.to_le_bytes());
        }
        if i % 10 == 3 {
            c.isolate(1 + i % 5);
        }
        if i % 10 == 7 {
            c.heal();
        }
        c.read(1 + i % 5, 1_000 + i);
        c.run_for(37 * MS);
    }
    c.heal();
    c.run_for(1_000 * MS);
    c.check_invariants();
    // DefaultHasher::new() uses fixed keys: stable within a build.
    let mut h = DefaultHasher::new();
    for (now, id, action) in &c.trace {
        format!("{now} {id} {action:?}").hash(&mut h);
    }
    (h.finish(), c.trace.len())
}

#[test]
fn same_seed_same_actions() {
    let a = run(42);
    let b = run(42);
    assert_eq!(a, b);
    assert!(a.1 > 1_000, "a real run: {} actions", a.1);
    let c = run(43);
    assert_ne!(a.0, c.0, "the seed drives the election timeouts");
}

#[test]
fn raw_node_replays_a_recorded_input_stream() {
    use tarn_core::{Action, RawNode};
    // Record the inputs every node saw in a cluster run with partitions,
    // then replay each stream into a fresh node: identical actions.
    let mut c = Cluster::new(3, 9);
    c.run_for(1_000 * MS);
    for i in 0..20u64 {
        if let Some(l) = c.leader() {
            c.propose(l, i, b"x");
        }
        if i == 5 {
            c.isolate(c.leader().unwrap_or(1));
        }
        if i == 12 {
            c.heal();
        }
        c.run_for(50 * MS);
    }
    for id in 1..=3 {
        let node = c.node(id);
        assert!(node.inputs.len() > 50, "node {id} saw {} inputs", node.inputs.len());
        let mut fresh = RawNode::new(node.config.clone(), node.recovered.clone()).unwrap();
        let mut actions: Vec<Action> = Vec::new();
        for (now, input) in &node.inputs {
            fresh.step(*now, input.clone(), &mut actions);
        }
        assert_eq!(format!("{actions:?}"), format!("{:?}", node.actions), "node {id}");
        assert_eq!(fresh.status(), node.raft.status());
    }
}
