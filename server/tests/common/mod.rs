//! Helpers for the end-to-end tests: real servers on 127.0.0.1, free ports,
//! polling with deadlines (never sleeping and hoping).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use tarn_core::NodeId;
use tarn_server::client::{Client, ClientConfig};
use tarn_server::protocol::MemberChange;
use tarn_server::server::{Server, ServerConfig, StartError};

/// Every test gives up after this long.
pub const TEST_DEADLINE: Duration = Duration::from_secs(60);

/// A port the OS considers free right now, and never handed out before in
/// this test process (the OS may offer a just-released port again: two calls
/// in a row could otherwise give one node the same client and peer port, or
/// two concurrent tests the same port).
pub fn free_addr() -> SocketAddr {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = l.local_addr().expect("local addr");
        if HANDED_OUT.lock().expect("free_addr lock").insert(addr.port()) {
            return addr;
        }
    }
}

/// How many times a new node or cluster is started on fresh ports before giving up.
const FRESH_PORT_ATTEMPTS: u32 = 5;

pub fn fast(mut c: ServerConfig) -> ServerConfig {
    c.election_timeout_ms = 150;
    c.heartbeat_interval_ms = 30;
    c
}

/// A cluster of `n` nodes whose servers can be stopped and restarted.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub peers: BTreeMap<NodeId, SocketAddr>,
    pub clients: BTreeMap<NodeId, SocketAddr>,
    pub servers: BTreeMap<NodeId, Server>,
    /// Nodes started with `--join` (not in the others' `--cluster`).
    pub joiners: BTreeSet<NodeId>,
    /// Applied to every node's configuration (e.g. short session TTLs).
    pub tweak: fn(&mut ServerConfig),
}

impl TestCluster {
    pub async fn start(n: u64) -> TestCluster {
        TestCluster::start_with(n, |_| {}).await
    }

    /// [`TestCluster::start`] with `tweak` applied to every node's configuration.
    pub async fn start_with(n: u64, tweak: fn(&mut ServerConfig)) -> TestCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = TestCluster {
            dir,
            peers: BTreeMap::new(),
            clients: BTreeMap::new(),
            servers: BTreeMap::new(),
            joiners: BTreeSet::new(),
            tweak,
        };
        c.start_fresh(n, |c, id| c.config(id)).await;
        c
    }

    /// Starts nodes `1..=n` of a new cluster on fresh ports, each with
    /// `config(self, id)`. A fresh port can still be taken before the server
    /// binds it (by another process, or as the local port of some
    /// connection); retrying the same port would wait in vain, so every node
    /// started so far is stopped and the cluster starts over on new ports and
    /// empty data directories. (A node stopped and restarted must keep its
    /// ports: [`TestCluster::start_node_with`] retries those.)
    pub async fn start_fresh(&mut self, n: u64, config: impl Fn(&TestCluster, NodeId) -> ServerConfig) {
        for attempt in 1..=FRESH_PORT_ATTEMPTS {
            self.peers = (1..=n).map(|i| (i, free_addr())).collect();
            self.clients = (1..=n).map(|i| (i, free_addr())).collect();
            let mut failed = None;
            for id in 1..=n {
                match Server::start(config(self, id)).await {
                    Ok(s) => {
                        self.servers.insert(id, s);
                    }
                    Err(e @ StartError::Bind { .. }) => {
                        failed = Some(e);
                        break;
                    }
                    Err(e) => panic!("node {id} did not start: {e}"),
                }
            }
            let Some(e) = failed else {
                // A new cluster's nodes start their groups once every node
                // answered the first-start probe.
                poll_until("every node decided its first start", || async {
                    self.servers.values().all(|s| s.group(1).is_some()).then_some(())
                })
                .await;
                return;
            };
            eprintln!("cluster start failed (attempt {attempt}, retrying on fresh ports): {e}");
            for (_, s) in std::mem::take(&mut self.servers) {
                s.shutdown().await;
            }
            for id in 1..=n {
                let _ = std::fs::remove_dir_all(self.data_dir(id));
            }
        }
        panic!("the cluster did not start on fresh ports in {FRESH_PORT_ATTEMPTS} attempts");
    }

    pub fn data_dir(&self, id: NodeId) -> PathBuf {
        self.dir.path().join(format!("n{id}"))
    }

    pub fn config(&self, id: NodeId) -> ServerConfig {
        if self.joiners.contains(&id) {
            let mut c = ServerConfig::single(self.data_dir(id), self.clients[&id]);
            c.node_id = id;
            c.peer_addr = Some(self.peers[&id]);
            c.join = Some(self.founder_endpoints());
            (self.tweak)(&mut c);
            return fast(c);
        }
        let peers: BTreeMap<NodeId, SocketAddr> =
            self.peers.iter().filter(|(id, _)| !self.joiners.contains(id)).map(|(i, a)| (*i, *a)).collect();
        let peers = if peers.len() == 1 { BTreeMap::new() } else { peers };
        let mut c = if peers.is_empty() {
            ServerConfig::single(self.data_dir(id), self.clients[&id])
        } else {
            ServerConfig::cluster(id, self.data_dir(id), self.clients[&id], peers)
        };
        c.node_id = id;
        (self.tweak)(&mut c);
        fast(c)
    }

    pub async fn start_node(&mut self, id: NodeId) {
        let config = self.config(id);
        self.start_node_with(id, config).await;
    }

    /// Starts node `id` with a config derived from `self.config(id)`.
    pub async fn start_node_with(&mut self, id: NodeId, config: ServerConfig) {
        // The port may linger briefly after a stop: retry binding for a while.
        let server = poll_until("server start", || {
            let config = config.clone();
            async move {
                match Server::start(config).await {
                    Ok(s) => Some(s),
                    Err(e) => {
                        eprintln!("server start failed (retrying): {e}");
                        None
                    }
                }
            }
        })
        .await;
        self.servers.insert(id, server);
    }

    pub async fn stop_node(&mut self, id: NodeId) {
        if let Some(s) = self.servers.remove(&id) {
            s.shutdown().await;
        }
    }

    pub fn endpoints(&self) -> Vec<SocketAddr> {
        self.clients.values().copied().collect()
    }

    /// Client addresses of the nodes that formed the cluster (not joiners).
    pub fn founder_endpoints(&self) -> Vec<SocketAddr> {
        self.clients.iter().filter(|(id, _)| !self.joiners.contains(id)).map(|(_, a)| *a).collect()
    }

    /// Starts node `id` with `--join` on fresh ports and an empty data dir
    /// (on new fresh ports if one was taken before the bind; see
    /// [`TestCluster::start_fresh`]; other errors are retried as a restart's).
    pub async fn start_joiner(&mut self, id: NodeId) {
        self.joiners.insert(id);
        for attempt in 1..=FRESH_PORT_ATTEMPTS {
            self.peers.insert(id, free_addr());
            self.clients.insert(id, free_addr());
            match Server::start(self.config(id)).await {
                Ok(s) => {
                    self.servers.insert(id, s);
                    return;
                }
                Err(e @ StartError::Bind { .. }) => {
                    eprintln!("joiner start failed (attempt {attempt}, retrying on fresh ports): {e}");
                    let _ = std::fs::remove_dir_all(self.data_dir(id));
                }
                Err(e) => {
                    eprintln!("joiner start failed (retrying): {e}");
                    self.start_node(id).await;
                    return;
                }
            }
        }
        panic!("node {id} did not start on fresh ports in {FRESH_PORT_ATTEMPTS} attempts");
    }

    pub fn client(&self) -> Client {
        let mut c = ClientConfig::new(self.endpoints());
        c.request_timeout = Duration::from_secs(20);
        c.retry_backoff = Duration::from_millis(20);
        Client::new(c)
    }

    /// A client of every node now running.
    pub fn client_of_running(&self) -> Client {
        let endpoints = self.servers.keys().map(|id| self.clients[id]).collect();
        let mut c = ClientConfig::new(endpoints);
        c.request_timeout = Duration::from_secs(20);
        c.retry_backoff = Duration::from_millis(20);
        Client::new(c)
    }

    /// The operator's walk back in for a node that lost its data and
    /// rejoins: remove it, add it as a learner, wait until it no longer
    /// rejoins (and recorded so), then promote it. Promoted earlier, it would
    /// stay a voter that never votes.
    pub async fn walk_back_in(&self, client: &Client, node: NodeId) {
        poll_until("the wiped node removed", || async {
            client.change_membership(vec![MemberChange::Remove(node)]).await.ok()
        })
        .await;
        client.add_member(node, None, true).await.unwrap();
        let marker = self.data_dir(node).join("tarn-rejoined");
        poll_until("the wiped node records that it rejoined", || async {
            let status = self.servers[&node].status().await;
            let rejoining = status.groups.iter().find(|g| g.group == 1)?.rejoining;
            (!rejoining && marker.exists()).then_some(())
        })
        .await;
        poll_until("the wiped node promoted", || async {
            client.change_membership(vec![MemberChange::Promote(node)]).await.ok()
        })
        .await;
    }

    pub fn client_of(&self, id: NodeId) -> Client {
        let mut c = ClientConfig::new(vec![self.clients[&id]]);
        c.request_timeout = Duration::from_secs(20);
        Client::new(c)
    }

    /// The node all running servers agree leads group 1.
    pub async fn leader(&self) -> NodeId {
        poll_until("a leader known to every running node", || async {
            let mut leaders = self.servers.values().map(|s| s.group(1).and_then(|g| g.info().leader));
            let first = leaders.next()??;
            if leaders.all(|l| l == Some(first)) && self.servers.contains_key(&first) {
                Some(first)
            } else {
                None
            }
        })
        .await
    }

    pub async fn shutdown(self) {
        for (_, s) in self.servers {
            s.shutdown().await;
        }
    }
}

/// Polls `f` every 10 ms until it yields `Some`, or panics after the test deadline.
pub async fn poll_until<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let r = tokio::time::timeout(TEST_DEADLINE, async {
        loop {
            if let Some(v) = f().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    match r {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
}
