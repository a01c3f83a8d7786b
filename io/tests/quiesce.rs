//! Quiescence under the tokio driver (issue 17), three nodes in one process
//! over real TCP: an idle group goes quiet on every node; a write to the
//! quiet group commits within one election timeout; and when the quiet
//! leader's node dies, node-level liveness on the peer transport wakes the
//! followers and a new leader is elected within two election timeouts.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{tcp_cluster, Count};
use tarn_core::Role;
use tarn_io::driver::{GroupHandle, Node};

const ELECTION_MS: u64 = 150;
const DEADLINE: Duration = Duration::from_secs(30);

/// One group on three nodes: each node with its handle of it.
async fn cluster() -> Vec<(Node<Count>, GroupHandle<Count>)> {
    let nodes = tcp_cluster(77, 1, |c| {
        c.raft.election_timeout_min_ns = ELECTION_MS * 1_000_000;
        c.raft.election_timeout_max_ns = 2 * ELECTION_MS * 1_000_000;
        c.raft.heartbeat_interval_ns = 50_000_000;
        c.raft.quiesce = true;
    })
    .await;
    nodes.into_iter().map(|(node, mut groups)| (node, groups.remove(0))).collect()
}

/// Waits until every given group reports itself quiescent.
async fn until_quiet(groups: &[&GroupHandle<Count>]) {
    tokio::time::timeout(DEADLINE, async {
        loop {
            let mut all = true;
            for g in groups {
                all &= g.status().await.is_some_and(|s| s.quiescent);
            }
            if all {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the idle group goes quiet on every node");
}

fn leader_of(nodes: &[(Node<Count>, GroupHandle<Count>)]) -> Option<usize> {
    nodes.iter().position(|(_, g)| g.info().role == Role::Leader)
}

/// Fails without quiescence (never quiet), if a proposal does not wake a
/// quiet group promptly, or if a quiet follower of a dead leader waits for
/// anything but node-level liveness and one election.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_group_commits_promptly_and_fails_over_within_two_election_timeouts() {
    let mut nodes = cluster().await;
    let leader = nodes[0].1.wait_for_leader(DEADLINE).await.unwrap() as usize - 1;
    nodes[leader].1.propose(Bytes::from_static(b"x")).await.unwrap();
    let groups: Vec<&GroupHandle<Count>> = nodes.iter().map(|(_, g)| g).collect();
    until_quiet(&groups).await;

    // Writes to the quiet group: each waits for quiet again first.
    let mut latencies = Vec::new();
    for _ in 0..10 {
        let start = Instant::now();
        nodes[leader].1.propose(Bytes::from_static(b"y")).await.unwrap();
        latencies.push(start.elapsed());
        until_quiet(&groups).await;
    }
    latencies.sort();
    let worst = *latencies.last().expect("ten writes");
    println!("write to a quiet group: worst of 10 {worst:?} (election timeout {ELECTION_MS} ms)");
    assert!(worst < Duration::from_millis(ELECTION_MS), "{latencies:?}");

    // Kill the quiet leader's node (its connections close).
    let (dead, _) = nodes.remove(leader);
    let killed = Instant::now();
    dead.shutdown().await;
    let new_leader = tokio::time::timeout(DEADLINE, async {
        loop {
            if let Some(l) = leader_of(&nodes) {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("a new leader");
    let failover = killed.elapsed();
    let timeouts = failover.as_secs_f64() * 1000.0 / ELECTION_MS as f64;
    println!("failover of a quiet group: {failover:?} = {timeouts:.2} minimum election timeouts");
    // Two election timeouts of the randomized range's top (2 x 300 ms),
    // with slack for a loaded test machine.
    assert!(failover < Duration::from_millis(4 * 2 * ELECTION_MS), "{failover:?}");
    assert_ne!(nodes[new_leader].0.node_id(), leader as u64 + 1);
    for (node, _) in nodes {
        node.shutdown().await;
    }
}
