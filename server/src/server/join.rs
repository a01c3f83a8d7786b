//! Growing a running cluster: how a `--join` node learns the cluster, and
//! how every node keeps its transport's peer list in step with the
//! replicated peer directory.
//!
//! Peer addresses added at runtime live in group 1's kv tree under
//! [`PEER_DIRECTORY`] (`_tarn.peers.<id> = <peer addr>`), written by the
//! client in `tarn member add <id> <addr>` before the membership change. So
//! the address is replicated like any write and survives restarts (the log
//! replays it); every node re-reads the directory every
//! [`PEER_DIRECTORY_POLL`] and adds, moves or forgets peers to match. A
//! reconcile loop rather than a watch: it needs no state to survive a
//! snapshot install, a leader change or a missed event.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tarn_core::NodeId;
use tarn_kv::KvError;
use tokio::sync::watch;

use super::{write_atomic, ServerConfig, Shared, StartError, IDENTITY_FILE};
use crate::client::{Client, ClientConfig};
use crate::machine::KvMachine;
use crate::protocol::{DEFAULT_GROUP, PEER_DIRECTORY};

/// How long a first `--join` keeps trying `--endpoints` before giving up.
const JOIN_CONTACT_TIMEOUT: Duration = Duration::from_secs(30);
/// The same for a joined node restarting (its data dir knows the cluster id).
const REJOIN_CONTACT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often every node re-reads the peer directory.
pub(super) const PEER_DIRECTORY_POLL: Duration = Duration::from_millis(200);
/// Written once every group of a joined node has finished rejoining: from
/// then on the node starts without `rejoin_after_data_loss` (the core asks
/// drivers to persist exactly this).
const REJOINED_FILE: &str = "tarn-rejoined";

/// Asks the running cluster (any of `endpoints`) for its id and peers.
/// Returns the configuration with the cluster id set, and the peers.
pub(super) async fn learn_cluster(
    mut config: ServerConfig,
    endpoints: &[SocketAddr],
) -> Result<(ServerConfig, BTreeMap<NodeId, SocketAddr>), StartError> {
    let known = identity_cluster_id(&config);
    let mut cc = ClientConfig::new(endpoints.to_vec());
    cc.request_timeout = Duration::from_secs(2);
    cc.connect_timeout = Duration::from_secs(1);
    let client = Client::new(cc);
    let deadline =
        Instant::now() + if known.is_some() { REJOIN_CONTACT_TIMEOUT } else { JOIN_CONTACT_TIMEOUT };
    let mut last = String::from("none");
    loop {
        for (i, endpoint) in endpoints.iter().enumerate() {
            let status = match client.status_of(i).await {
                Ok(s) => s,
                Err(e) => {
                    last = format!("{endpoint}: {e}");
                    continue;
                }
            };
            if status.node_id == config.node_id {
                return Err(StartError::Config(format!(
                    "--endpoints {endpoint} is node {} itself; give the client addresses of the running nodes",
                    status.node_id
                )));
            }
            for (what, expected) in [("--cluster-id", config.cluster_id), ("the data directory", known)] {
                if let Some(expected) = expected.filter(|e| *e != status.cluster_id) {
                    return Err(StartError::Config(format!(
                        "{endpoint} belongs to cluster {:#x}, but {what} says {expected:#x}; join the right cluster or use another --data-dir",
                        status.cluster_id
                    )));
                }
            }
            config.cluster_id = Some(status.cluster_id);
            let peers: BTreeMap<NodeId, SocketAddr> =
                status.peers.into_iter().filter(|(id, _)| *id != config.node_id).collect();
            tracing::info!(node = config.node_id, cluster_id = status.cluster_id, ?peers, via = %endpoint, "joining cluster");
            return Ok((config, peers));
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if let Some(cluster_id) = known {
        // A joined node restarting while the endpoints are down: the lower
        // ids dial it, and it learns the higher ones from the directory.
        tracing::warn!(node = config.node_id, last = %last, "no endpoint answered; restarting with the cluster id of the data directory");
        config.cluster_id = Some(cluster_id);
        return Ok((config, BTreeMap::new()));
    }
    Err(StartError::Config(format!(
        "--join: no endpoint answered within {} s (last problem: {last}); check --endpoints (client addresses of running nodes)",
        JOIN_CONTACT_TIMEOUT.as_secs()
    )))
}

/// The cluster id recorded in this node's data directory, if any.
fn identity_cluster_id(config: &ServerConfig) -> Option<u64> {
    if config.in_memory {
        return None;
    }
    let text = std::fs::read_to_string(config.data_dir.join(IDENTITY_FILE)).ok()?;
    let field = |key: &str| text.lines().find_map(|l| l.strip_prefix(key)).map(str::to_string);
    if field("node_id=")? != config.node_id.to_string() {
        return None; // the identity check at start names the problem
    }
    u64::from_str_radix(field("cluster_id=")?.trim_start_matches("0x"), 16).ok()
}

/// Whether this joined node already finished rejoining (see [`REJOINED_FILE`]).
pub(super) fn rejoined(config: &ServerConfig) -> bool {
    !config.in_memory && config.data_dir.join(REJOINED_FILE).exists()
}

/// Runs until `stop`: keeps the transport's peers equal to the base peers
/// plus the directory, and records when a joining node has rejoined.
pub(super) async fn maintain_peers(
    shared: Arc<Shared>,
    mut rejoining: bool,
    mut stop: watch::Receiver<bool>,
) {
    let mut from_directory: BTreeSet<NodeId> = BTreeSet::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PEER_DIRECTORY_POLL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        reconcile(&shared, false, Some(&mut from_directory)).await;
        if rejoining && all_groups_rejoined(&shared).await {
            rejoining = false;
            tracing::info!(
                node = shared.config.node_id,
                "rejoined: a committed configuration lists this node; it votes from now on"
            );
            if !shared.config.in_memory {
                if let Err(e) = write_atomic(&shared.config.data_dir, REJOINED_FILE, b"rejoined\n") {
                    tracing::error!(node = shared.config.node_id, error = %e, "cannot record that this node rejoined; it will wait for a configuration again after a restart");
                }
            }
        }
    }
}

/// Adds the peers of the directory now, without waiting for the next poll:
/// a node that just became leader may be asked to change membership before
/// its poll ran. Reads linearizably when this node leads group 1 (so every
/// committed address is seen), else what it has applied.
pub(super) async fn learn_directory_now(shared: &Shared) {
    let leads = shared.node.group(DEFAULT_GROUP).is_some_and(|g| g.info().role == tarn_core::Role::Leader);
    reconcile(shared, leads, None).await;
}

/// Makes the transport's peers match the directory. `from_directory`
/// remembers which peers came from it, so that a removed key removes the
/// peer; `None` only adds.
async fn reconcile(shared: &Shared, linearizable: bool, from_directory: Option<&mut BTreeSet<NodeId>>) {
    let (Some(transport), Some(group)) = (shared.node.transport(), shared.node.group(DEFAULT_GROUP)) else {
        return;
    };
    let listed = group.read(linearizable, |m: &mut KvMachine| m.kv().list(PEER_DIRECTORY)).await;
    let children = match listed {
        Ok(Ok(children)) => children,
        Ok(Err(KvError::NotFound { .. })) => Vec::new(),
        // Group stopping or refusing: try again at the next poll.
        _ => return,
    };
    let node_id = shared.config.node_id;
    let mut directory: BTreeMap<NodeId, SocketAddr> = BTreeMap::new();
    for child in children {
        let id = child.name.parse::<NodeId>().ok();
        let addr = std::str::from_utf8(&child.node.value).ok().and_then(|v| v.parse::<SocketAddr>().ok());
        match (id, addr) {
            (Some(id), Some(addr)) if id != 0 => {
                directory.insert(id, addr);
            }
            _ => {
                tracing::debug!(node = node_id, name = %child.name, "ignoring a malformed peer directory entry")
            }
        }
    }
    let current = transport.peers();
    for (&id, &addr) in directory.iter().filter(|(id, _)| **id != node_id) {
        if current.get(&id) != Some(&addr) {
            tracing::info!(node = node_id, peer = id, %addr, "peer learned from the directory");
            if let Err(e) = transport.set_peer(id, addr) {
                tracing::warn!(node = node_id, peer = id, error = %e, "cannot add peer from the directory");
            }
        }
    }
    let Some(from_directory) = from_directory else { return };
    from_directory.extend(directory.keys().copied().filter(|id| *id != node_id));
    let gone: Vec<NodeId> = from_directory.iter().copied().filter(|id| !directory.contains_key(id)).collect();
    for id in gone {
        from_directory.remove(&id);
        if !shared.base_peers.contains(&id) {
            transport.remove_peer(id);
        }
    }
}

async fn all_groups_rejoined(shared: &Shared) -> bool {
    for g in shared.node.groups() {
        let Some(handle) = shared.node.group(g) else { return false };
        match handle.status().await {
            Some(status) if !status.rejoining => {}
            _ => return false,
        }
    }
    true
}
