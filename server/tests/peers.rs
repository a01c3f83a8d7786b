//! Peer connections and cluster growth: one TCP connection per node pair
//! that re-forms after a restart.

mod common;

use std::collections::BTreeSet;

use common::{poll_until, TestCluster, TEST_DEADLINE};

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
