//! The README's embedding example, verbatim: a user-defined state machine
//! under the driver (and the same on a 3-node in-process cluster over TCP).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use tarn_core::{Index, Membership};
use tarn_io::driver::{MemStore, Node, NodeConfig, StateMachine};

#[derive(Default)]
struct Counter {
    value: u64,
    applied: Index,
}

impl StateMachine for Counter {
    type Response = u64;
    fn apply(&mut self, index: Index, data: &Bytes) -> u64 {
        self.value += data.len() as u64; // every committed entry, in order, once
        self.applied = index;
        self.value
    }
    fn apply_noop(&mut self, index: Index) {
        self.applied = index;
    }
    fn applied_index(&self) -> Index {
        self.applied
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    // MemStore keeps the log in memory; `FileStore::open(dir, ...)` is the durable engine.
    let node = Node::start(NodeConfig::new(1, 42), Box::new(MemStore::new()), None, Default::default())?;
    let group = node.add_group(1, Membership::new_voters([1]), Counter::default()).await?;
    group.wait_for_leader(std::time::Duration::from_secs(5)).await?;
    assert_eq!(group.propose(Bytes::from_static(b"abc")).await?, 3);
    let value = group.read(true, |c: &mut Counter| c.value).await?; // linearizable read
    assert_eq!(value, 3);
    node.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn readme_embedding_example_runs() {
    tokio::time::timeout(Duration::from_secs(30), run()).await.expect("deadline").expect("example");
}

/// Three nodes in one process over real TCP, several groups (multi-raft):
/// every node applies the same sequence in every group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_two_groups_over_tcp() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let listeners: Vec<tokio::net::TcpListener> = {
            let mut v = Vec::new();
            for _ in 0..3 {
                v.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
            }
            v
        };
        let addrs: BTreeMap<u64, _> =
            listeners.iter().enumerate().map(|(i, l)| (i as u64 + 1, l.local_addr().unwrap())).collect();
        let mut nodes = Vec::new();
        for (i, l) in listeners.into_iter().enumerate() {
            let id = i as u64 + 1;
            let peers = addrs.iter().filter(|(p, _)| **p != id).map(|(p, a)| (*p, *a)).collect();
            let mut config = NodeConfig::new(id, 7);
            config.raft.election_timeout_min_ns = 150_000_000;
            config.raft.election_timeout_max_ns = 300_000_000;
            config.raft.heartbeat_interval_ns = 30_000_000;
            let node: Node<Counter> = Node::start(config, Box::new(MemStore::new()), Some(l), peers).unwrap();
            nodes.push(node);
        }
        let mut groups = Vec::new();
        for g in [1u64, 2] {
            let mut handles = Vec::new();
            for n in &nodes {
                handles.push(
                    n.add_group(g, Membership::new_voters([1, 2, 3]), Counter::default()).await.unwrap(),
                );
            }
            groups.push(handles);
        }
        for (gi, handles) in groups.iter().enumerate() {
            let leader = handles[0].wait_for_leader(Duration::from_secs(20)).await.unwrap();
            let h = &handles[(leader - 1) as usize];
            for _ in 0..10 {
                h.propose(Bytes::from(vec![0u8; gi + 1])).await.unwrap();
            }
            let want = 10 * (gi as u64 + 1);
            for h in handles {
                let mut info = h.subscribe();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                loop {
                    let v = h.read(false, |c: &mut Counter| c.value).await.unwrap();
                    if v == want {
                        break;
                    }
                    assert!(tokio::time::Instant::now() < deadline, "group {} stuck at {v}", gi + 1);
                    let _ = tokio::time::timeout(Duration::from_millis(50), info.changed()).await;
                }
            }
        }
        // Removing a group at runtime stops it on that node; the other group keeps going.
        nodes[2].remove_group(2).await.unwrap();
        assert!(nodes[2].group(2).is_none());
        assert_eq!(nodes[2].groups(), vec![1]);
        for n in &nodes {
            n.shutdown().await;
        }
    })
    .await
    .expect("deadline");
}
