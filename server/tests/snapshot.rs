//! Snapshots and log compaction on real servers (files, TCP on 127.0.0.1):
//! the leader compacts its log behind its snapshots and keeps serving the
//! same data; a follower stopped while the others compact past its log
//! catches up by installing the leader's snapshot; a node restarted from its
//! data directory restores its snapshot and replays the log tail.

mod common;

use std::path::Path;

use common::{poll_until, TestCluster, TEST_DEADLINE};
use tarn_core::{Index, LogId, NodeId};
use tarn_server::protocol::Consistency;
use tarn_server::server::ServerConfig;

/// A snapshot every 50 entries, 10 kept before it, 16 KiB segments (about
/// 100 of the test's entries each): compaction deletes segments quickly.
const SNAPSHOT_AFTER_ENTRIES: u64 = 50;
const KEEP_TAIL_ENTRIES: u64 = 10;
const SEGMENT_BYTES: u64 = 16 << 10;

fn small_snapshots(mut c: ServerConfig) -> ServerConfig {
    c.snapshot_after_entries = SNAPSHOT_AFTER_ENTRIES;
    c.log_keep_tail_entries = KEEP_TAIL_ENTRIES;
    c.segment_size_bytes = SEGMENT_BYTES;
    c
}

async fn start_node(cluster: &mut TestCluster, id: NodeId) {
    let config = small_snapshots(cluster.config(id));
    cluster.start_node_with(id, config).await;
}

async fn start_cluster(n: u64) -> TestCluster {
    // An empty cluster, then nodes started with small snapshot settings.
    let mut cluster = TestCluster::start(0).await;
    cluster.start_fresh(n, |c, id| small_snapshots(c.config(id))).await;
    cluster
}

fn value(i: u64) -> String {
    format!("value-{i:05}-{}", "x".repeat(80))
}

async fn put_range(cluster: &TestCluster, range: std::ops::Range<u64>) {
    let client = cluster.client();
    for i in range {
        client.put(&format!("k{i:05}"), value(i)).await.unwrap();
    }
}

/// First indexes of the log segments of group 1 on node `id`, ascending.
fn segments(cluster: &TestCluster, id: NodeId) -> Vec<Index> {
    let dir = cluster.data_dir(id).join(format!("group-{:020}", 1));
    let mut firsts: Vec<Index> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".seg")?.parse().ok()
        })
        .collect();
    firsts.sort_unstable();
    firsts
}

fn snapshot_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".snap"))).count()
        })
        .unwrap_or(0)
}

/// (applied index, kv digest) of group 1 on node `id`, read locally.
async fn applied_and_digest(cluster: &TestCluster, id: NodeId) -> (Index, u64) {
    let group = cluster.servers[&id].group(1).expect("group 1 runs");
    group.read(false, |m| (m.kv().applied_index(), m.kv().digest())).await.expect("local read")
}

/// Waits until every running node applied the same index with the same
/// digest; returns them.
async fn converged(cluster: &TestCluster) -> (Index, u64) {
    poll_until("every node applies the same state", || async {
        let mut seen = Vec::new();
        for &id in cluster.servers.keys() {
            seen.push(applied_and_digest(cluster, id).await);
        }
        let first = seen[0];
        seen.iter().all(|s| *s == first).then_some(first)
    })
    .await
}

fn info(cluster: &TestCluster, id: NodeId) -> tarn_io::driver::GroupInfo {
    cluster.servers[&id].group(1).expect("group 1 runs").info()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_compacts_its_log_behind_snapshots_and_data_stays_correct() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let cluster = start_cluster(3).await;
        let leader = cluster.leader().await;
        put_range(&cluster, 0..400).await;
        let (applied, digest) = converged(&cluster).await;
        assert!(applied >= 400, "every put applied ({applied})");
        for id in 1..=3 {
            // Every node snapshots on its own and compacts its own log.
            let snap = poll_until("a recent snapshot", || async {
                let s = info(&cluster, id).snapshot;
                (s.index + SNAPSHOT_AFTER_ENTRIES > applied).then_some(s)
            })
            .await;
            let segs = poll_until("old segments deleted", || async {
                let segs = segments(&cluster, id);
                (segs.first().is_some_and(|&f| f > 1)).then_some(segs)
            })
            .await;
            // Compaction never runs past the kept tail before the snapshot.
            assert!(segs[0] <= snap.index - KEEP_TAIL_ENTRIES + 1, "node {id}: {segs:?} vs {snap}");
            let dir = cluster.data_dir(id).join(format!("group-{:020}", 1));
            assert_eq!(snapshot_files(&dir), 1, "older snapshot files are removed");
        }
        // Reads of keys whose entries are compacted away, through the leader.
        let client = cluster.client_of(leader);
        for i in [0, 1, 57, 199, 399] {
            let v = client.get(&format!("k{i:05}")).await.unwrap().expect("key present");
            assert_eq!(v.value, value(i).as_bytes());
        }
        assert_eq!(client.list("").await.unwrap().len(), 400);
        assert_eq!(applied_and_digest(&cluster, leader).await.1, digest);
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_compacted_log_catches_up_by_snapshot() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let mut cluster = start_cluster(3).await;
        let leader = cluster.leader().await;
        let lagger = (1..=3).find(|&id| id != leader).expect("a follower");
        put_range(&cluster, 0..20).await;
        converged(&cluster).await;
        let last_before: LogId = info(&cluster, lagger).last_log_id;
        cluster.stop_node(lagger).await;

        put_range(&cluster, 20..400).await;
        // The leader compacted its log past everything the lagger holds.
        poll_until("the leader's log starts after the lagger's", || async {
            let first = *segments(&cluster, leader).first()?;
            (first > last_before.index + 1).then_some(())
        })
        .await;
        let leader_snapshot = info(&cluster, leader).snapshot;
        assert!(leader_snapshot.index > last_before.index + KEEP_TAIL_ENTRIES);

        start_node(&mut cluster, lagger).await;
        let (applied, digest) = converged(&cluster).await;
        assert!(applied >= 400);
        // It holds a snapshot past its old log that it could not have taken
        // itself (nothing was written since it restarted, and taking one
        // needs 50 applied entries after its old log): it installed it.
        let installed = info(&cluster, lagger).snapshot;
        assert!(installed.index > last_before.index + SNAPSHOT_AFTER_ENTRIES, "{installed} vs {last_before}");
        // The metrics count both sides: the leader took, the lagger installed.
        let counters = cluster.servers[&lagger].group(1).expect("group 1").counters().clone();
        assert!(counters.snapshots_installed.load(std::sync::atomic::Ordering::Relaxed) >= 1);
        assert!(counters.snapshot_seconds.snapshot().count >= 1);
        let text = cluster.servers[&leader].metrics_text().await;
        let taken: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("tarn_group_snapshots_taken_total{group=\"1\"} "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no snapshots_taken sample in:\n{text}"));
        assert!(taken >= 1, "{text}");
        // Its own log was discarded and restarted after the snapshot.
        let segs = segments(&cluster, lagger);
        assert!(segs.iter().all(|&f| f > last_before.index), "{segs:?}");
        // And it serves the same data (stale reads are its own state).
        let client = cluster.client_of(lagger);
        for i in [0, 19, 20, 250, 399] {
            let v = client.get_with(&format!("k{i:05}"), Consistency::Stale).await.unwrap();
            assert_eq!(v.expect("key present").value, value(i).as_bytes(), "k{i}");
        }
        assert_eq!(applied_and_digest(&cluster, lagger).await, (applied, digest));
        // Writes keep working with it in the group.
        put_range(&cluster, 400..420).await;
        assert_eq!(converged(&cluster).await.0, applied + 20);
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_restores_its_snapshot_then_replays_the_log_tail() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let mut cluster = start_cluster(1).await;
        cluster.leader().await;
        // 230 puts: the last snapshot is at about a multiple of 50, and the
        // entries after it are only in the log. While one snapshot is being
        // written, further requests fold into one taken when it is done, so
        // on a loaded machine the last can land on the last entry: then 10
        // more puts (too few for another snapshot) make the tail.
        let mut n = 230;
        put_range(&cluster, 0..n).await;
        let (applied, digest, snapshot) = loop {
            let (applied, digest) = converged(&cluster).await;
            let snapshot = poll_until("the last snapshot due", || async {
                let s = info(&cluster, 1).snapshot;
                (s.index + SNAPSHOT_AFTER_ENTRIES > applied).then_some(s)
            })
            .await;
            if snapshot.index < applied {
                break (applied, digest, snapshot);
            }
            put_range(&cluster, n..n + 10).await;
            n += 10;
        };
        assert!(snapshot.index < applied, "a tail of entries after the snapshot ({snapshot}, {applied})");
        let segs = poll_until("old segments deleted", || async {
            let segs = segments(&cluster, 1);
            (segs.first().is_some_and(|&f| f > 1)).then_some(segs)
        })
        .await;
        cluster.stop_node(1).await;

        // The log alone cannot rebuild the state (its start is gone): the
        // node must restore the snapshot, then replay the tail.
        start_node(&mut cluster, 1).await;
        let g = cluster.servers[&1].group(1).expect("group 1");
        assert!(g.info().snapshot.index >= snapshot.index, "recovered snapshot {}", g.info().snapshot);
        assert!(segments(&cluster, 1)[0] >= segs[0]);
        let after = poll_until("the tail replayed", || async {
            let (a, d) = applied_and_digest(&cluster, 1).await;
            (a >= applied).then_some((a, d))
        })
        .await;
        // Replaying adds only the new leader's blank entry (the digest
        // covers the applied index, so it moves): every key is back.
        assert!(after.0 <= applied + 1, "applied {applied} then {}", after.0);
        assert_ne!(after.1, 0);
        let _ = digest;
        let client = cluster.client();
        for i in 0..n {
            let v = client.get(&format!("k{i:05}")).await.unwrap().expect("key present");
            assert_eq!(v.value, value(i).as_bytes());
        }
        put_range(&cluster, n..n + 10).await;
        assert_eq!(client.list("").await.unwrap().len(), n as usize + 10);
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}
