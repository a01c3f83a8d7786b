//! The first start of a `--cluster` node: an empty data directory votes
//! only in a cluster that is new (every peer still fresh) or that saw this
//! very directory at its birth; a wiped node restarted with its original
//! command rejoins without voting (issue 13 item 9).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{free_addr, poll_until, TestCluster, TEST_DEADLINE};
use tarn_core::NodeId;

/// A 3-node cluster whose ports are chosen but whose nodes are not started.
fn unstarted() -> TestCluster {
    TestCluster {
        dir: tempfile::tempdir().expect("tempdir"),
        peers: (1..=3).map(|i| (i, free_addr())).collect(),
        clients: (1..=3).map(|i| (i, free_addr())).collect(),
        servers: BTreeMap::new(),
        joiners: BTreeSet::new(),
        tweak: |_| {},
    }
}

async fn rejoining(cluster: &TestCluster, id: NodeId) -> Option<bool> {
    let status = cluster.servers[&id].status().await;
    status.groups.iter().find(|g| g.group == 1).map(|g| g.rejoining)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cluster_waits_for_every_node_then_every_node_votes() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let mut cluster = unstarted();
        cluster.start_node(1).await;
        cluster.start_node(2).await;
        // Nodes 1 and 2 answered each other, but node 3 has not started:
        // no group may start yet (a wiped node cannot tell this apart from
        // a cluster whose history lives on node 3).
        for id in [1, 2] {
            let note = poll_until("the first start names the node it waits for", || async {
                let note = cluster.servers[&id].status().await.first_start?;
                note.contains("{3}").then_some(note)
            })
            .await;
            assert!(
                cluster.servers[&id].group(1).is_none(),
                "node {id} started a group while waiting: {note}"
            );
        }
        cluster.start_node(3).await;
        let leader = cluster.leader().await;
        let client = cluster.client();
        client.put("k", "v").await.unwrap();
        for id in 1..=3 {
            assert_eq!(rejoining(&cluster, id).await, Some(false), "node {id} votes");
            assert!(cluster.servers[&id].status().await.first_start.is_none());
            // Decided "new cluster", or "late start" when its peers decided
            // first: either way it recorded the birth.
            let dir = cluster.data_dir(id);
            assert!(dir.join("tarn-born-with").exists() && !dir.join("tarn-rejoin-required").exists());
        }
        // Every node is a voter that counts: with the leader gone, the two
        // others elect one of themselves and commit.
        cluster.stop_node(leader).await;
        cluster.client_of_running().put("k2", "v2").await.unwrap();
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_voter_restarted_with_its_cluster_command_rejoins_without_voting() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let mut cluster = TestCluster::start(3).await;
        let client = cluster.client();
        client.mkdir("d").await.unwrap();
        for i in 0..20 {
            client.put(&format!("d.k{i}"), "x").await.unwrap();
        }
        let leader = cluster.leader().await;
        let victim = if leader == 3 { 2 } else { 3 };
        let other = (1..=3).find(|id| *id != leader && *id != victim).unwrap();
        cluster.stop_node(victim).await;
        std::fs::remove_dir_all(cluster.data_dir(victim)).unwrap();
        // The operator's original command, not --join.
        cluster.start_node(victim).await;
        poll_until("the wiped node starts its group as rejoining", || async {
            rejoining(&cluster, victim).await.filter(|r| *r)
        })
        .await;
        assert!(cluster.data_dir(victim).join("tarn-rejoin-required").exists());
        // It must not vote: with the leader stopped, the other node and the
        // wiped one are a majority of the voters, yet no leader may emerge.
        cluster.stop_node(leader).await;
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            for id in [other, victim] {
                let role = cluster.servers[&id].group(1).map(|g| g.info().role);
                assert_ne!(
                    role,
                    Some(tarn_core::Role::Leader),
                    "node {id} won an election with the wiped node's vote"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The documented walk back: remove it, add it as a learner, wait
        // until it stops rejoining, promote it.
        cluster.start_node(leader).await;
        cluster.walk_back_in(&cluster.client_of_running(), victim).await;
        // Now it counts: with `other` stopped, the old leader and the wiped
        // node commit together, and the wiped node holds everything.
        cluster.stop_node(other).await;
        cluster.client_of_running().put("d.after", "y").await.unwrap();
        let on_victim = cluster.client_of(victim);
        poll_until("the wiped node serves everything", || async {
            (on_victim.list("d").await.ok()?.len() == 21).then_some(())
        })
        .await;
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_its_peers_saw_at_the_birth_starts_as_a_voter() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let mut cluster = TestCluster::start(3).await;
        let client = cluster.client();
        client.put("a", "1").await.unwrap();
        // Node 3 as if it crashed after its peers decided but before it
        // recorded its own decision: same incarnation, no identity file.
        cluster.stop_node(3).await;
        std::fs::remove_file(cluster.data_dir(3).join("tarn-node.id")).unwrap();
        cluster.start_node(3).await;
        poll_until("node 3 decided", || async { rejoining(&cluster, 3).await }).await;
        assert_eq!(rejoining(&cluster, 3).await, Some(false));
        assert!(!cluster.data_dir(3).join("tarn-rejoin-required").exists());
        // Its acknowledgements count: with one other node stopped, writes
        // still commit.
        let stop = if cluster.leader().await == 1 { 2 } else { 1 };
        cluster.stop_node(stop).await;
        cluster.client_of_running().put("b", "2").await.unwrap();
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}
