//! Growing a running cluster: how a `--join` node learns the cluster, and
//! how every node keeps its transport's peer list in step with the
//! replicated peer directory.
//!
//! Peer addresses added at runtime live in group 1's kv tree under
//! [`PEER_DIRECTORY`] (`_tarn.peers.<id> = <peer addr>`), written by group
//! 1's leader on the client's [`RequestBody::RecordPeer`] in `tarn member add
//! <id> <addr>` before the membership change ([`record_peer`]: system
//! requests, the only writes the reserved namespace admits). So
//! the address is replicated like any write and survives restarts (the log
//! replays it); every node re-reads the directory every
//! [`PEER_DIRECTORY_POLL`] and adds, moves or forgets peers to match. A
//! reconcile loop rather than a watch: it needs no state to survive a
//! snapshot install, a leader change or a missed event.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tarn_core::NodeId;
use tarn_io::driver::{GroupHandle, ProposeError};
use tarn_kv::{encode_entry, Command, KvEntry, KvError, Request};
use tokio::sync::watch;

use super::{not_leader, wall_clock_nanos, write_atomic, ServerConfig, Shared, StartError, IDENTITY_FILE};
use crate::client::{Client, ClientConfig};
use crate::machine::KvMachine;
use crate::protocol::{peer_key, ResponseBody, ServerError, DEFAULT_GROUP, PEER_DIRECTORY, TARN_DIRECTORY};

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
    cc.security = config.security.join_client.clone();
    let client = Client::new(cc);
    let deadline =
        Instant::now() + if known.is_some() { REJOIN_CONTACT_TIMEOUT } else { JOIN_CONTACT_TIMEOUT };
    let mut last = String::from("none");
    loop {
        for (i, endpoint) in endpoints.iter().enumerate() {
            let status = match client.status_of(i).await {
                Ok(s) => s,
                // Retrying cannot turn a peer port into a client port.
                Err(e @ crate::client::ClientError::PeerPort { .. }) => {
                    return Err(StartError::Config(format!("--endpoints: {e}")));
                }
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

/// Why `addr` cannot be a peer address other nodes dial (`None`: it can).
fn bad_peer_addr(addr: SocketAddr) -> Option<&'static str> {
    if addr.port() == 0 {
        Some("port 0 is not a listening port")
    } else if addr.ip().is_unspecified() {
        Some("an unspecified address (0.0.0.0 or ::) cannot be dialed; give the address peers reach")
    } else if addr.ip().is_multicast() {
        Some("a multicast address cannot be dialed")
    } else {
        None
    }
}

/// Writes (or, with `addr: None`, removes) node `node`'s entry of the peer
/// directory, on group 1's leader. This is the one write path into the
/// reserved namespace: system requests proposed by the server itself, never
/// a client's request (clients are refused at admission). A current member
/// of a hosted group cannot be re-pointed to another address: that is how a
/// stray write cut a cluster off its voters.
pub(super) async fn record_peer(
    shared: &Shared,
    g: tarn_core::GroupId,
    group: &GroupHandle<KvMachine>,
    node: NodeId,
    addr: Option<SocketAddr>,
) -> Result<ResponseBody, ServerError> {
    let bad = |reason: String| Err(ServerError::BadRequest { reason });
    if g != DEFAULT_GROUP {
        return bad(format!("the peer directory lives in group {DEFAULT_GROUP}, not group {g}"));
    }
    if node == 0 {
        return bad("node id 0 is reserved; node ids start at 1".into());
    }
    let info = group.info();
    if info.role != tarn_core::Role::Leader {
        return Err(not_leader(shared, g, info.leader));
    }
    if let Some(addr) = addr {
        if let Some(problem) = bad_peer_addr(addr) {
            return bad(format!("peer address {addr} of node {node}: {problem}"));
        }
        let current = if node == shared.config.node_id { shared.peer_addr } else { known_addr(shared, node) };
        if current.is_some_and(|c| c != addr) && is_member_anywhere(shared, node).await {
            return bad(format!(
                "node {node} is a member at {} now; remove it (`tarn member remove {node}`) before giving it another address",
                current.map_or_else(|| "?".into(), |c| c.to_string())
            ));
        }
    }
    let commands = match addr {
        Some(addr) => vec![
            Command::Mkdir { key: TARN_DIRECTORY.into() },
            Command::Mkdir { key: PEER_DIRECTORY.into() },
            Command::Put { key: peer_key(node), value: Bytes::from(addr.to_string()) },
        ],
        None => vec![Command::Remove { key: peer_key(node) }],
    };
    let requests = commands.into_iter().map(Request::system).collect();
    let data = Bytes::from(encode_entry(&KvEntry { leader_time_nanos: wall_clock_nanos(), requests }));
    match group.propose(data).await {
        Ok(Ok(responses)) => match responses.into_iter().find_map(Result::err) {
            None => Ok(ResponseBody::Done),
            Some(e) => bad(format!("cannot write the peer directory: {e}")),
        },
        Ok(Err(e)) => bad(e),
        Err(ProposeError::NotLeader { leader_hint }) => Err(not_leader(shared, g, leader_hint)),
        Err(ProposeError::MaybeCommitted { leader_hint }) => {
            Err(ServerError::MaybeCommitted { leader: leader_hint })
        }
        Err(e) => Err(ServerError::Unavailable { reason: e.to_string() }),
    }
}

/// The address this node's transport dials for `node`, if any.
fn known_addr(shared: &Shared, node: NodeId) -> Option<SocketAddr> {
    shared.node.transport().and_then(|t| t.peers().get(&node).copied())
}

/// Whether `node` is a voter or learner of any group this node hosts.
async fn is_member_anywhere(shared: &Shared, node: NodeId) -> bool {
    for g in shared.node.groups() {
        let Some(handle) = shared.node.group(g) else { continue };
        if let Some(status) = handle.status().await {
            let m = &status.membership;
            if m.voters.contains(&node) || m.voters_outgoing.contains(&node) || m.learners.contains(&node) {
                return true;
            }
        }
    }
    false
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
        let value = String::from_utf8_lossy(&child.node.value);
        match parse_entry(&child.name, &value) {
            Ok((id, addr)) => {
                directory.insert(id, addr);
            }
            Err(problem) => {
                // Written before the namespace was reserved, or by another
                // version: never dialed. Warned once per entry, not per poll.
                let first = shared
                    .malformed_directory_entries
                    .lock()
                    .map(|mut seen| seen.insert(format!("{}={value}", child.name)))
                    .unwrap_or(false);
                if first {
                    tracing::warn!(node = node_id, key = %peer_key_text(&child.name), %value, %problem, "ignoring a malformed peer directory entry; remove it with `tarn member forget <id>` if it names a node");
                }
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

fn peer_key_text(name: &str) -> String {
    format!("{PEER_DIRECTORY}.{name}")
}

/// One directory entry `name = value` as (node id, peer address), or why it
/// cannot be one.
fn parse_entry(name: &str, value: &str) -> Result<(NodeId, SocketAddr), String> {
    let id = match name.parse::<NodeId>() {
        Ok(0) => return Err("node id 0 is reserved".into()),
        Ok(id) => id,
        Err(_) => return Err(format!("{name:?} is not a node id (a number)")),
    };
    let addr =
        value.parse::<SocketAddr>().map_err(|_| format!("{value:?} is not a HOST:PORT socket address"))?;
    if let Some(problem) = bad_peer_addr(addr) {
        return Err(problem.into());
    }
    Ok((id, addr))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_entries_that_cannot_name_a_peer_are_refused_with_a_reason() {
        assert_eq!(parse_entry("4", "127.0.0.1:7804"), Ok((4, "127.0.0.1:7804".parse().unwrap())));
        for (name, value, says) in [
            ("x", "127.0.0.1:7804", "not a node id"),
            ("0", "127.0.0.1:7804", "reserved"),
            ("4", "nowhere", "not a HOST:PORT"),
            ("4", "0.0.0.0:7804", "unspecified"),
            ("4", "127.0.0.1:0", "port 0"),
        ] {
            let err = parse_entry(name, value).expect_err(name);
            assert!(err.contains(says), "{name}={value}: {err}");
        }
    }
}
