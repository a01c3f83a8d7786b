//! A peer connection speaks for the node it authenticated as: a Raft message
//! that claims another sender is dropped by the driver, so one node's
//! credentials cannot forge another node's votes, acknowledgements or
//! appends.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tarn_core::{Index, Membership, Message, MessageBody, NodeId, Term};
use tarn_io::driver::{MemStore, Node, NodeConfig, StateMachine};
use tarn_io::transport::{Transport, TransportConfig};
use tokio::net::TcpListener;

#[derive(Default)]
struct Nothing {
    applied: Index,
}

impl StateMachine for Nothing {
    type Response = ();
    fn apply(&mut self, index: Index, _data: &Bytes) {
        self.applied = index;
    }
    fn apply_noop(&mut self, index: Index) {
        self.applied = index;
    }
    fn applied_index(&self) -> Index {
        self.applied
    }
}

fn heartbeat(from: NodeId, term: Term) -> Message {
    Message { from, term, rejoining: false, body: MessageBody::Heartbeat { commit: 0, ctx: 1 } }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_message_claiming_another_sender_is_dropped() {
    let (l1, l2, l3) = (
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    );
    let (a1, a2, a3) = (l1.local_addr().unwrap(), l2.local_addr().unwrap(), l3.local_addr().unwrap());
    drop(l2); // node 2 never runs
    let mut config = NodeConfig::new(1, 99);
    config.raft.election_timeout_min_ns = 300_000_000;
    config.raft.election_timeout_max_ns = 600_000_000;
    config.raft.heartbeat_interval_ns = 50_000_000;
    let node: Node<Nothing> =
        Node::start(config, Box::new(MemStore::new()), Some(l1), [(2, a2), (3, a3)].into()).unwrap();
    let group = node.add_group(1, Membership::new_voters([1, 2, 3]), Nothing::default()).await.unwrap();
    // Node 3, as a bare transport: its connection to node 1 is node 3's.
    let fake = Transport::<Message>::start(
        TransportConfig::new(3, 99, [(1, a1)].into()),
        l3,
        Arc::new(|_, _, _| {}),
    )
    .unwrap();
    // In order on one connection: a heartbeat of a made-up leader 2 in term
    // 70, then node 3's own in term 60. Taken, the first would leave node 1
    // in term 70 and the second too old to matter.
    let status = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            fake.send(1, 1, heartbeat(2, 70));
            fake.send(1, 1, heartbeat(3, 60));
            if let Some(s) = group.status().await.filter(|s| s.term >= 60) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("node 3's heartbeat arrives");
    assert_eq!(
        (status.term, status.leader),
        (60, Some(3)),
        "the claim to be node 2 was believed: {status:?}"
    );
    fake.shutdown();
    node.shutdown().await;
}
