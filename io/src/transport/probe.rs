//! The first-start probe: may a node with an empty data directory vote?
//!
//! A Raft voter must never forget a vote. A node whose data directory was
//! wiped and that restarts with its original `--cluster` has forgotten every
//! vote it gave, so if it voted again in a term it already voted in, two
//! leaders could be elected in one term. An empty directory looks the same
//! whether the cluster is brand new or the node lost its disk, so before its
//! groups start, such a node asks every peer ([`probe`]):
//!
//! - every peer answers [`ProbeAnswer::Fresh`], in two complete rounds in a
//!   row with the same incarnations: nobody has run Raft yet (a node
//!   answers `Fresh` only until it has decided, and runs no group before),
//!   so no vote exists anywhere and the cluster is new: start as a voter.
//!   Two rounds, because answers gathered over time could mix a peer that
//!   has decided since with the successor of a directory wiped meanwhile;
//!   every peer still fresh after the first round ended rules that out;
//! - a peer answers `Member { knew_you: true }`: the cluster was born with
//!   *this very directory* (same incarnation), fresh then, so it was never
//!   wiped since and this node never voted: start as a voter (a late first
//!   start), and keep the birth record the peer sent;
//! - a peer answers `Member { knew_you: false }`: the cluster has a history
//!   this directory was not part of. This node lost its data: it must
//!   rejoin without voting (`Config::rejoin_after_data_loss`).
//!
//! "Every peer" is what makes it safe under partitions: a majority of fresh
//! answers is not enough (with five nodes, the three that never heard of an
//! election may answer while the two that hold the term are cut off).
//! Residual assumption: at most one node is wiped during the seconds in
//! which the cluster is born (two wiped then could each be taken for a
//! fresh directory by the other's successor).
//! [`ProbeState`] is what this node answers others meanwhile.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::RwLock;
use std::time::Duration;

use tarn_core::NodeId;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{read_first, First, TransportError};
use crate::wire::{self, FrameDecoder, PeerFrame, ProbeAnswer};

/// What this node answers to a [`PeerFrame::Probe`]: shared between the
/// transport's acceptor and the server deciding its first start.
#[derive(Debug)]
pub struct ProbeState {
    inner: RwLock<Inner>,
}

#[derive(Debug, Clone)]
enum Inner {
    /// Still deciding; this directory's incarnation.
    Fresh(u64),
    /// Decided: the incarnation of every node at the cluster's birth
    /// (empty for a member that does not know it).
    Member(BTreeMap<NodeId, u64>),
}

impl Default for ProbeState {
    /// A member that knows nobody's birth: every prober that is not
    /// recognized must rejoin (the safe answer for a node with a history).
    fn default() -> Self {
        ProbeState::member(BTreeMap::new())
    }
}

impl ProbeState {
    /// A node still deciding, with data directory incarnation `incarnation`.
    pub fn fresh(incarnation: u64) -> ProbeState {
        ProbeState { inner: RwLock::new(Inner::Fresh(incarnation)) }
    }

    /// A node with a history; `born_with` holds every node's incarnation
    /// at the cluster's birth, as far as this node knows it.
    pub fn member(born_with: BTreeMap<NodeId, u64>) -> ProbeState {
        ProbeState { inner: RwLock::new(Inner::Member(born_with)) }
    }

    /// This node decided (and made the decision durable): answer as a member.
    pub fn decided(&self, born_with: BTreeMap<NodeId, u64>) {
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) = Inner::Member(born_with);
    }

    /// The answer to `from` probing with `incarnation`.
    pub fn answer(&self, from: NodeId, incarnation: u64) -> ProbeAnswer {
        // Never poisoned in a way that matters: writers replace the whole value.
        match &*self.inner.read().unwrap_or_else(|e| e.into_inner()) {
            Inner::Fresh(mine) => ProbeAnswer::Fresh { incarnation: *mine },
            Inner::Member(born) => ProbeAnswer::Member {
                knew_you: born.get(&from) == Some(&incarnation),
                born_with: born.iter().map(|(n, i)| (*n, *i)).collect(),
            },
        }
    }
}

/// Who is asking: this node's identity and directory incarnation.
#[derive(Debug, Clone)]
pub struct Prober {
    /// The cluster both nodes must belong to.
    pub cluster_id: u64,
    /// This node.
    pub node_id: NodeId,
    /// This data directory's incarnation.
    pub incarnation: u64,
    /// Wraps the probe's connection as the transport wraps its own (the
    /// peer port expects it); `None`: plain TCP.
    pub security: Option<std::sync::Arc<dyn super::stream::PeerSecurity>>,
}

/// Asks the node `peer` at peer address `addr` what it knows (see the
/// module documentation). Bounded by `timeout` in all.
pub async fn probe(
    prober: Prober,
    peer: NodeId,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<ProbeAnswer, TransportError> {
    let addr_s = addr.to_string();
    let attempt = async {
        let io = |source| TransportError::Io { addr: addr_s.clone(), source };
        let tcp = TcpStream::connect(addr).await.map_err(io)?;
        let mut stream = match &prober.security {
            None => super::stream::Stream::Tcp(tcp),
            Some(security) => security
                .dial(tcp, peer)
                .await
                .map_err(|reason| TransportError::Security { addr: addr_s.clone(), reason })?,
        };
        let frame: PeerFrame<()> = PeerFrame::Probe {
            cluster_id: prober.cluster_id,
            from: prober.node_id,
            to: peer,
            incarnation: prober.incarnation,
        };
        let bytes = wire::encode_frame_vec(&frame, PROBE_FRAME_BYTES)
            .map_err(|source| TransportError::Wire { addr: addr_s.clone(), source })?;
        stream.write_all(&bytes).await.map_err(io)?;
        stream.flush().await.map_err(io)?;
        let mut decoder = FrameDecoder::new(PROBE_FRAME_BYTES);
        let handshake = |reason: String| TransportError::Handshake { addr: addr_s.clone(), reason };
        match read_first::<(), _>(&mut stream, &mut decoder, &addr_s).await? {
            Some(First::ProbeReply { cluster_id, from, answer }) => {
                if cluster_id != prober.cluster_id {
                    return Err(handshake(format!(
                        "it belongs to cluster {cluster_id:#x}, this node to cluster {:#x}",
                        prober.cluster_id
                    )));
                }
                if from != peer {
                    return Err(handshake(format!(
                        "expected node {peer}, node {from} answered (is the address right?)"
                    )));
                }
                Ok(answer)
            }
            Some(_) => Err(handshake("answered a probe with something else than a probe reply".into())),
            None => Err(handshake(format!(
                "node {peer} closed the connection without answering the probe (an older tarn, or it refused this node; see its log)"
            ))),
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(TransportError::Handshake {
            addr: addr.to_string(),
            reason: format!("no probe answer within {} ms", timeout.as_millis()),
        }),
    }
}

/// A probe and its reply: a few dozen bytes, plus about 11 bytes per
/// node of the cluster's birth.
pub(super) const PROBE_FRAME_BYTES: usize = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{InboundSink, Transport, TransportConfig};
    use std::sync::Arc;
    use tokio::net::TcpListener;

    const CLUSTER: u64 = 42;
    const T: Duration = Duration::from_secs(5);

    /// Node 2's transport answering with `state`; returns its peer address.
    async fn answering(state: Arc<ProbeState>) -> (Transport<String>, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sink: InboundSink<String> = Arc::new(|_, _, _| {});
        let mut config = TransportConfig::new(2, CLUSTER, [(1, "127.0.0.1:1".parse().unwrap())].into());
        config.probe_state = state;
        (Transport::start(config, listener, sink).unwrap(), addr)
    }

    fn prober(incarnation: u64) -> Prober {
        Prober { cluster_id: CLUSTER, node_id: 1, incarnation, security: None }
    }

    #[tokio::test]
    async fn a_fresh_node_answers_fresh_with_its_incarnation_then_as_member_once_decided() {
        let state = Arc::new(ProbeState::fresh(77));
        let (t, addr) = answering(state.clone()).await;
        assert_eq!(probe(prober(5), 2, addr, T).await.unwrap(), ProbeAnswer::Fresh { incarnation: 77 });
        state.decided([(1, 5), (2, 77)].into());
        let born_with = vec![(1, 5), (2, 77)];
        // The directory it saw fresh: a late first start.
        let late = ProbeAnswer::Member { knew_you: true, born_with: born_with.clone() };
        assert_eq!(probe(prober(5), 2, addr, T).await.unwrap(), late);
        // Another incarnation of node 1: its directory was wiped since.
        let lost = ProbeAnswer::Member { knew_you: false, born_with };
        assert_eq!(probe(prober(6), 2, addr, T).await.unwrap(), lost);
        // A probe is not a peer connection and not an error.
        let stats = t.stats().snapshot();
        assert_eq!((stats.connects, stats.bad_connections), (0, 0));
        t.shutdown();
    }

    #[tokio::test]
    async fn a_member_by_default_recognizes_nobody() {
        let (t, addr) = answering(Arc::default()).await;
        let answer = probe(prober(5), 2, addr, T).await.unwrap();
        assert_eq!(answer, ProbeAnswer::Member { knew_you: false, born_with: Vec::new() });
        t.shutdown();
    }

    #[tokio::test]
    async fn a_probe_of_another_cluster_or_node_gets_no_answer() {
        let (t, addr) = answering(Arc::new(ProbeState::fresh(1))).await;
        let other_cluster = Prober { cluster_id: CLUSTER + 1, ..prober(5) };
        assert!(probe(other_cluster, 2, addr, T).await.is_err());
        // Addressed to node 3, answered (or rather refused) by node 2.
        assert!(probe(prober(5), 3, addr, T).await.is_err());
        assert_eq!(t.stats().snapshot().bad_connections, 2);
        t.shutdown();
    }
}
