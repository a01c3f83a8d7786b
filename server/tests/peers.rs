//! Peer connections and cluster growth: one TCP connection per node pair
//! that re-forms after a restart; a brand-new node joins a running cluster.

mod common;

use std::collections::BTreeSet;

use common::{poll_until, TestCluster, TEST_DEADLINE};
use tarn_server::protocol::{Consistency, MemberChange};

async fn counter(cluster: &TestCluster, id: u64, name: &str) -> u64 {
    let status = cluster.servers[&id].status().await;
    status.counters.iter().find(|(n, _)| n == name).map(|(_, v)| *v).expect("counter exists")
}

/// Established TCP connections whose remote end is one of `ports` and whose
/// local end is not: one per connection, seen from its dialer (Linux only).
#[cfg(target_os = "linux")]
fn dialed_connections(ports: &BTreeSet<u16>) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let port = |field: &str| field.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(remote)) =
                (f.get(1).and_then(|x| port(x)), f.get(2).and_then(|x| port(x)))
            else {
                return false;
            };
            f.get(3) == Some(&"01") && ports.contains(&remote) && !ports.contains(&local)
        })
        .count()
}

/// Some(()) once every running node has `want` peer connections open.
async fn all_pairs_up(cluster: &TestCluster, want: u64) -> Option<()> {
    for &id in cluster.servers.keys() {
        if counter(cluster, id, "peer_connections_open").await != want {
            return None;
        }
    }
    Some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_per_node_pair_that_reforms_after_a_restart() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let mut cluster = TestCluster::start(3).await;
        let ports: BTreeSet<u16> = cluster.peers.values().map(|a| a.port()).collect();
        poll_until("every node connected to its two peers", || all_pairs_up(&cluster, 2)).await;
        // Three pairs, three TCP connections (not six): each node holds two.
        #[cfg(target_os = "linux")]
        assert_eq!(dialed_connections(&ports), 3);
        for id in 1..=3 {
            assert_eq!(
                counter(&cluster, id, "peer_connects").await,
                2,
                "node {id}: no duplicate connections"
            );
        }
        let client = cluster.client();
        client.put("k", "before").await.unwrap();

        // Node 2 (the middle id: it dials 3 and is dialed by 1) crashes and comes back.
        cluster.stop_node(2).await;
        poll_until("nodes 1 and 3 notice node 2 is gone", || async {
            let one = counter(&cluster, 1, "peer_connections_open").await;
            let three = counter(&cluster, 3, "peer_connections_open").await;
            (one == 1 && three == 1).then_some(())
        })
        .await;
        client.put("k", "while 2 is down").await.unwrap();
        cluster.start_node(2).await;
        poll_until("the connections re-form", || all_pairs_up(&cluster, 2)).await;
        #[cfg(target_os = "linux")]
        poll_until("exactly one established connection per pair", || async {
            (dialed_connections(&ports) == 3).then_some(())
        })
        .await;
        assert_eq!(counter(&cluster, 2, "peer_connects").await, 2);
        client.put("k", "after").await.unwrap();
        let target = cluster.servers[&cluster.leader().await].group(1).unwrap().info().commit;
        poll_until("the restarted node to catch up", || async {
            (cluster.servers[&2].group(1)?.info().applied >= target).then_some(())
        })
        .await;
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_joins_a_running_cluster_catches_up_and_replaces_a_dead_one() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let mut cluster = TestCluster::start(3).await;
        let client = cluster.client();
        client.mkdir("d").await.unwrap();
        for i in 0..40 {
            client.put(&format!("d.before{i}"), format!("v{i}")).await.unwrap();
        }

        // Node 4 starts empty with --join: it learns the cluster from the
        // endpoints and does not bootstrap a cluster of its own.
        cluster.start_joiner(4).await;
        let status = cluster.servers[&4].status().await;
        assert_eq!(status.cluster_id, cluster.servers[&1].status().await.cluster_id);
        assert!(status.groups[0].voters.is_empty(), "a joiner starts with no members: {status:?}");
        assert_eq!(status.groups[0].applied, 0);
        assert_eq!((status.groups[0].role.as_str(), status.groups[0].leader), ("Follower", None));

        // Added as a learner with its peer address: every node connects to it.
        client.add_member(4, Some(cluster.peers[&4]), true).await.unwrap();
        poll_until("node 4 to catch up as a learner", || async {
            let leader = cluster.servers.get(&cluster.leader().await)?;
            let commit = leader.group(1)?.info().commit;
            (cluster.servers[&4].group(1)?.info().applied >= commit).then_some(())
        })
        .await;
        poll_until("one connection per pair among four nodes", || all_pairs_up(&cluster, 3)).await;
        // It votes once it has seen a committed configuration listing it.
        let marker = cluster.data_dir(4).join("tarn-rejoined");
        poll_until("node 4 records that it rejoined (it votes from now on)", || async {
            let rejoining = cluster.servers[&4].status().await.groups[0].rejoining;
            (!rejoining && marker.exists()).then_some(())
        })
        .await;
        // Promotion is refused while it lags; retry until it is a voter.
        poll_until("node 4 promoted", || async {
            client.change_membership(vec![MemberChange::Promote(4)]).await.ok()
        })
        .await;
        let leader = cluster.leader().await;
        let voters = cluster.servers[&leader].status().await.groups[0].voters.clone();
        assert_eq!(voters, vec![1, 2, 3, 4]);

        // The leader dies: three of four voters remain, node 4 among them,
        // so nothing commits without it.
        cluster.stop_node(leader).await;
        let survivor = cluster.client_of_running();
        for i in 0..20 {
            survivor.put(&format!("d.after{i}"), format!("w{i}")).await.unwrap();
        }
        assert_ne!(cluster.leader().await, leader);
        // Node 4 serves everything, written before and after it joined.
        let on4 = cluster.client_of(4);
        poll_until("node 4 to apply every write", || async {
            let n = on4.get_with("d.after19", Consistency::Stale).await.ok()??;
            (n.value[..] == b"w19"[..]).then_some(())
        })
        .await;
        for i in 0..40 {
            let n = on4.get_with(&format!("d.before{i}"), Consistency::Stale).await.unwrap().unwrap();
            assert_eq!(n.value, format!("v{i}").as_bytes());
        }
        assert_eq!(on4.list("d").await.unwrap().len(), 60);
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_behind_the_compacted_log_installs_a_snapshot() {
    tokio::time::timeout(TEST_DEADLINE, async {
        // A snapshot every 50 entries, 10 kept before it, small segments: the
        // log a joiner would need is gone long before it joins.
        let mut cluster = TestCluster::start_with(3, |c| {
            c.snapshot_after_entries = 50;
            c.log_keep_tail_entries = 10;
            c.segment_size_bytes = 16 << 10;
        })
        .await;
        let client = cluster.client();
        client.mkdir("d").await.unwrap();
        for i in 0..300 {
            client.put(&format!("d.k{i}"), format!("v{i}")).await.unwrap();
        }
        poll_until("every founder to snapshot past the first 200 entries", || async {
            let all = (1..=3)
                .all(|id| cluster.servers[&id].group(1).is_some_and(|g| g.info().snapshot.index >= 200));
            all.then_some(())
        })
        .await;
        // Node 4 never snapshots on its own: any snapshot it holds was installed.
        cluster.tweak = |c| c.snapshot_after_entries = 1_000_000;
        cluster.start_joiner(4).await;
        client.add_member(4, Some(cluster.peers[&4]), true).await.unwrap();
        poll_until("node 4 to catch up", || async {
            let leader = cluster.servers.get(&cluster.leader().await)?;
            let commit = leader.group(1)?.info().commit;
            (cluster.servers[&4].group(1)?.info().applied >= commit).then_some(())
        })
        .await;
        let info = cluster.servers[&4].group(1).unwrap().info();
        assert!(info.snapshot.index >= 200, "node 4 caught up by snapshot: {info:?}");
        poll_until("node 4 promoted", || async {
            client.change_membership(vec![MemberChange::Promote(4)]).await.ok()
        })
        .await;
        let on4 = cluster.client_of(4);
        for i in (0..300).step_by(7) {
            let n = on4.get_with(&format!("d.k{i}"), Consistency::Stale).await.unwrap().unwrap();
            assert_eq!(n.value, format!("v{i}").as_bytes());
        }
        assert_eq!(on4.list("d").await.unwrap().len(), 300);
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_that_lost_its_data_rejoins_with_join() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let mut cluster = TestCluster::start(3).await;
        let client = cluster.client();
        client.mkdir("d").await.unwrap();
        for i in 0..20 {
            client.put(&format!("d.k{i}"), "x").await.unwrap();
        }
        // Node 3 loses its disk and comes back with --join on the same addresses.
        let victim = if cluster.leader().await == 3 { 2 } else { 3 };
        cluster.stop_node(victim).await;
        std::fs::remove_dir_all(cluster.data_dir(victim)).unwrap();
        cluster.joiners.insert(victim);
        cluster.start_node(victim).await;
        cluster.walk_back_in(&client, victim).await;
        // The other survivor-to-be stops: nothing commits without the wiped node.
        let other = cluster.leader().await;
        cluster.stop_node(other).await;
        let survivors = cluster.client_of_running();
        survivors.put("d.after", "y").await.unwrap();
        let on_victim = cluster.client_of(victim);
        poll_until("the wiped node serves everything", || async {
            let n = on_victim.list("d").await.ok()?;
            (n.len() == 21).then_some(())
        })
        .await;
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}

/// The leader's view of `follower` in group 1: `Some(connected)`.
async fn follower_connected(cluster: &TestCluster, leader: u64, follower: u64) -> Option<bool> {
    let status = cluster.servers.get(&leader)?.status().await;
    let g = status.groups.iter().find(|g| g.group == 1)?;
    g.followers.iter().find(|f| f.0 == follower).map(|f| f.3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_a_stopped_follower_as_unreachable_not_as_lagging() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let mut cluster = TestCluster::start(3).await;
        let leader = cluster.leader().await;
        let victim = if leader == 3 { 2 } else { 3 };
        poll_until("the leader connected to the follower", || async {
            follower_connected(&cluster, leader, victim).await.filter(|c| *c).map(drop)
        })
        .await;
        cluster.stop_node(victim).await;
        poll_until("the stopped follower shown unreachable", || async {
            follower_connected(&cluster, leader, victim).await.filter(|c| !*c).map(drop)
        })
        .await;
        cluster.start_node(victim).await;
        poll_until("the restarted follower reachable again", || async {
            follower_connected(&cluster, leader, victim).await.filter(|c| *c).map(drop)
        })
        .await;
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}
