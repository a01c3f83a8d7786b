//! One real server on 127.0.0.1: the basic kv API through the client library.

mod common;

use bytes::Bytes;
use common::{TestCluster, TEST_DEADLINE};
use tarn_kv::{KvError, NodeKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_list_remove_cas_on_one_node() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let cluster = TestCluster::start(1).await;
        let client = cluster.client();
        client.mkdir("app").await.unwrap();
        client.put("app.greeting", "hello").await.unwrap();
        let node = client.get("app.greeting").await.unwrap().expect("just written");
        assert_eq!(&node.value[..], b"hello");
        assert_eq!(node.kind, NodeKind::Value);
        let children = client.list("app").await.unwrap();
        assert_eq!(children.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), vec!["greeting"]);
        // CAS: wrong expectation changes nothing.
        let err = client
            .compare_and_set(
                "app.greeting",
                Some(Bytes::from_static(b"nope")),
                Some(Bytes::from_static(b"x")),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, tarn_server::ClientError::Kv(KvError::CasMismatch { .. })), "{err:?}");
        client
            .compare_and_set(
                "app.greeting",
                Some(Bytes::from_static(b"hello")),
                Some(Bytes::from_static(b"bye")),
            )
            .await
            .unwrap();
        assert_eq!(&client.get("app.greeting").await.unwrap().unwrap().value[..], b"bye");
        client.remove("app.greeting").await.unwrap();
        assert_eq!(client.get("app.greeting").await.unwrap(), None);
        // A missing parent is a clear kv error, not a server failure.
        let err = client.put("nodir.key", "v").await.unwrap_err();
        assert!(matches!(err, tarn_server::ClientError::Kv(KvError::ParentMissing { .. })), "{err:?}");
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_recovers_from_the_data_dir() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let mut cluster = TestCluster::start(1).await;
        let client = cluster.client();
        client.mkdir("d").await.unwrap();
        for i in 0..50 {
            client.put(&format!("d.k{i}"), format!("v{i}")).await.unwrap();
        }
        cluster.stop_node(1).await;
        cluster.start_node(1).await;
        let client = cluster.client();
        for i in 0..50 {
            let v = client.get(&format!("d.k{i}")).await.unwrap().expect("recovered");
            assert_eq!(v.value, Bytes::from(format!("v{i}")));
        }
        // And it still takes writes.
        client.put("d.after", "restart").await.unwrap();
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reads_and_status() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let cluster = TestCluster::start(1).await;
        let client = cluster.client();
        client.put("k", "v").await.unwrap();
        let v = client.get_with("k", tarn_server::protocol::Consistency::Stale).await.unwrap();
        assert_eq!(&v.unwrap().value[..], b"v");
        let status = client.status().await.unwrap();
        assert_eq!(status.node_id, 1);
        assert_eq!(status.groups.len(), 1);
        assert_eq!(status.groups[0].role, "Leader");
        assert!(status.groups[0].applied >= 2, "{status:?}");
        let writes = status.counters.iter().find(|(k, _)| k == "writes").map(|(_, v)| *v);
        // Retries while the node elected itself count too.
        assert!(writes.is_some_and(|w| w >= 1), "{status:?}");
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_are_batched_into_fewer_entries_and_each_applies_once() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let cluster = TestCluster::start(1).await;
        let client = cluster.client();
        client.mkdir("c").await.unwrap();
        let before = client.status().await.unwrap().groups[0].commit;
        const WRITES: u64 = 500;
        let mut tasks = Vec::new();
        for i in 0..WRITES {
            let c = client.clone();
            tasks.push(tokio::spawn(async move { c.put(&format!("c.k{i}"), format!("{i}")).await }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let after = client.status().await.unwrap().groups[0].commit;
        assert!(after - before < WRITES, "{WRITES} writes took {} entries: not batched", after - before);
        let children = client.list("c").await.unwrap();
        assert_eq!(children.len() as u64, WRITES);
        for c in children {
            let i: u64 = c.name.trim_start_matches('k').parse().unwrap();
            assert_eq!(c.node.value, Bytes::from(format!("{i}")));
        }
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}
