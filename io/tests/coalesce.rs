//! Coalesced heartbeats (issue 17) under the tokio driver: three nodes in
//! one process over real TCP, many groups with quiescence off (so every
//! group heartbeats all the time). The groups' timers run on the node's
//! grid, so their heartbeats and answers to one peer leave in shared
//! `Heartbeats` frames, and no group loses its leader meanwhile.

mod common;

use std::time::Duration;

use common::{tcp_cluster, Cluster};
use tarn_core::{Role, Term};
use tarn_io::transport::TransportStatsSnapshot;

const GROUPS: u64 = 24;
/// Generous against a loaded machine: the test is about frames, not about
/// how tight the timing can be.
const ELECTION_MS: u64 = 600;
const HEARTBEAT_MS: u64 = 50;
const DEADLINE: Duration = Duration::from_secs(60);

async fn cluster(coalesce: Duration) -> Cluster {
    tcp_cluster(78, GROUPS, |c| {
        c.raft.election_timeout_min_ns = ELECTION_MS * 1_000_000;
        c.raft.election_timeout_max_ns = 2 * ELECTION_MS * 1_000_000;
        c.raft.heartbeat_interval_ns = HEARTBEAT_MS * 1_000_000;
        c.raft.quiesce = false;
        c.heartbeat_coalesce = coalesce;
    })
    .await
}

/// Every group's term on every node, once every group has a leader that
/// all three nodes agree on.
async fn settled_terms(nodes: &Cluster) -> Vec<Term> {
    tokio::time::timeout(DEADLINE, async {
        loop {
            let agreed = (0..GROUPS as usize).all(|g| {
                let infos: Vec<_> = nodes.iter().map(|(_, groups)| groups[g].info()).collect();
                infos.iter().filter(|i| i.role == Role::Leader).count() == 1
                    && infos.iter().all(|i| i.leader.is_some() && i.leader == infos[0].leader)
                    && infos.iter().all(|i| i.term == infos[0].term)
            });
            if agreed {
                return nodes.iter().flat_map(|(_, groups)| groups.iter().map(|g| g.info().term)).collect();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every group elects a leader")
}

/// The cluster's transport counters, summed over the nodes.
fn stats(nodes: &Cluster) -> TransportStatsSnapshot {
    let mut sum = TransportStatsSnapshot::default();
    for (node, _) in nodes {
        let s = node.transport_stats().expect("a transport").snapshot();
        sum.messages_sent += s.messages_sent;
        sum.flushes += s.flushes;
        sum.heartbeat_batches += s.heartbeat_batches;
        sum.heartbeat_batched_messages += s.heartbeat_batched_messages;
    }
    sum
}

/// With the grid (10 ms) idle groups' heartbeats and answers share frames:
/// most messages of an idle window travel batched, several per frame, and
/// no group holds an election in that window. Fails without coalescing
/// (no batch frame at all) and without the grid (most heartbeats then
/// leave alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_groups_heartbeat_in_shared_frames_and_keep_their_leaders() {
    let nodes = cluster(Duration::from_millis(10)).await;
    let before_terms = settled_terms(&nodes).await;
    let before = stats(&nodes);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = stats(&nodes);
    let after_terms: Vec<Term> =
        nodes.iter().flat_map(|(_, groups)| groups.iter().map(|g| g.info().term)).collect();

    let sent = after.messages_sent - before.messages_sent;
    let batches = after.heartbeat_batches - before.heartbeat_batches;
    let batched = after.heartbeat_batched_messages - before.heartbeat_batched_messages;
    let flushes = after.flushes - before.flushes;
    let per_batch = batched as f64 / batches.max(1) as f64;
    println!(
        "idle window: {sent} messages, {batched} of them in {batches} heartbeat frames ({per_batch:.1} per frame), {flushes} flushes"
    );
    // 24 groups heartbeat two followers about every 60 ms for 2 s: some
    // 1,600 heartbeats and as many answers. The bounds are loose.
    assert!(sent > 500, "the groups heartbeat (quiescence is off): {sent} messages");
    assert!(batches > 0, "no heartbeat was coalesced: {after:?}");
    assert!(per_batch >= 2.0, "{per_batch:.1} messages per batch");
    // The grid is what makes most of it coalesce: here 77 % of the
    // messages went batched (3.4 per frame); with the same wire batching
    // but each group on its own timers, 20-26 % (2.1-2.5 per frame).
    assert!(batched * 2 > sent, "most idle traffic travels batched: {batched} of {sent}");
    assert_eq!(before_terms, after_terms, "no election while idle (terms moved)");
    for (node, _) in nodes {
        node.shutdown().await;
    }
}
