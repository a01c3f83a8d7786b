use tarn_core::testkit::Cluster;
use tarn_core::Role;

#[test]
fn three_nodes_elect_and_replicate() {
    let mut c = Cluster::new(3, 1);
    let l = c.elect(1);
    for i in 0..10u64 {
        c.propose(l, i, format!("v{i}").as_bytes());
    }
    c.stabilize();
    c.run_for(200_000_000);
    for id in 1..=3 {
        assert_eq!(c.applied_payloads(id).len(), 10, "node {id}");
    }
    assert_eq!(c.raft(2).role(), Role::Follower);
    c.check_invariants();
}
