//! What the multi-node driver tests share: a counting state machine and a
//! three-node cluster in one process over real TCP.

use bytes::Bytes;
use tarn_core::{Index, Membership};
use tarn_io::driver::{GroupHandle, MemStore, Node, NodeConfig, StateMachine};
use tokio::net::TcpListener;

/// Remembers the last applied index; answers each entry with its index.
#[derive(Default)]
pub struct Count {
    applied: Index,
}

impl StateMachine for Count {
    type Response = Index;
    fn apply(&mut self, index: Index, _data: &Bytes) -> Index {
        self.applied = index;
        index
    }
    fn apply_noop(&mut self, index: Index) {
        self.applied = index;
    }
    fn applied_index(&self) -> Index {
        self.applied
    }
}

/// Each node with its handles of groups `1..=groups`, in group order.
pub type Cluster = Vec<(Node<Count>, Vec<GroupHandle<Count>>)>;

/// Nodes 1, 2 and 3 over TCP on loopback, in-memory storage, each running
/// groups `1..=groups` with all three as voters. `config` adjusts each
/// node's configuration (its id is already set).
pub async fn tcp_cluster(seed: u64, groups: u64, config: impl Fn(&mut NodeConfig)) -> Cluster {
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let addrs: Vec<_> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let mut nodes = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let mut c = NodeConfig::new(id, seed);
        config(&mut c);
        let peers = (1..=3u64).filter(|&p| p != id).map(|p| (p, addrs[p as usize - 1])).collect();
        let node = Node::start(c, Box::new(MemStore::new()), Some(listener), peers).unwrap();
        let mut handles = Vec::new();
        for g in 1..=groups {
            handles
                .push(node.add_group(g, Membership::new_voters([1, 2, 3]), Count::default()).await.unwrap());
        }
        nodes.push((node, handles));
    }
    nodes
}
