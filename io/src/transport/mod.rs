//! TCP transport between the nodes of a cluster.
//!
//! # One connection per peer pair
//!
//! Two nodes share exactly one TCP connection, used in both directions by
//! every Raft group of both nodes (the group id travels in the
//! [`Envelope`]). The rule that makes this deterministic: **the node with the
//! lower id dials, the higher id only accepts.** So a pair can never end up
//! with two connections, and after either side crashes the lower id simply
//! dials again (exponential backoff, reset on success) while the higher id
//! waits; a newer accepted connection from a peer replaces the older one (the
//! dialer only abandons a connection it believes dead, so the newest wins).
//! A useful side effect for joining a running cluster: a node never needs the
//! address of a lower-id peer, only of the higher ones.
//!
//! The handshake goes both ways: the dialer sends `Hello{cluster, from, to}`,
//! the acceptor checks the cluster id, that it is the node meant, that the
//! dialer is a known peer with a lower id, and answers with its own Hello,
//! which the dialer checks the same way. Only then do messages flow.
//!
//! Per peer a single task owns the connection's write half: it drains a
//! bounded queue and writes every message queued so far as back-to-back
//! frames in one `write_all` (one syscall per flush, not per message); a
//! reader task per connection feeds the inbound sink.
//!
//! # Coalesced heartbeats
//!
//! Messages queued with [`Transport::send_heartbeat`] (the driver sends
//! Raft heartbeats, their responses and quiesce notices that way) are
//! gathered by the writer: all of them that one flush takes go out as a
//! single `PeerFrame::Heartbeats` frame (at most
//! [`wire::MAX_HEARTBEATS_PER_FRAME`] each), after the flush's other
//! frames, and the reader hands each to its group as if it had come alone.
//! The driver aligns every group's timers to a node-wide grid
//! (`NodeConfig::heartbeat_coalesce`), so the heartbeats of all groups are
//! queued at the same instants and one frame per peer pair per grid tick
//! carries them. Moving a heartbeat behind other messages of its flush is
//! a reordering Raft tolerates (the network may reorder anything; a
//! heartbeat carries no entries and a commit index no greater than what
//! the follower acknowledged). With [`TransportConfig::coalesce_heartbeats`]
//! off they are framed one by one, as before (a peer of an older build
//! cannot read the batch frame).
//!
//! Raft tolerates message loss, so the transport never blocks the caller:
//! when a peer's queue is full or its connection is down, messages are
//! dropped and counted, and the core's retransmission does the rest. A frame
//! that fails to decode closes that one connection with a logged error; the
//! node keeps running and the peer reconnects.
//!
//! Peers can be added, re-addressed and removed while the node runs
//! ([`Transport::set_peer`], [`Transport::remove_peer`]).
//!
//! # Bounded memory on the peer port
//!
//! Anyone who can reach the peer port can open connections to it, so what
//! an unauthenticated connection may hold is bounded:
//! - until its Hello arrives, a connection's decoder accepts frames of at
//!   most [`MAX_HELLO_FRAME_BYTES`] (a larger declared length is refused at
//!   once, before its body is buffered), and never reserves more than
//!   `wire::DECODER_RESERVE_AHEAD_BYTES` ahead of what arrived;
//! - at most [`TransportConfig::max_pending_handshakes`] inbound connections
//!   wait for their Hello at once; a newer one evicts the oldest (counted in
//!   `handshakes_evicted`), so a flood of silent connections costs a bounded
//!   amount of memory and cannot lock a real peer out (its handshake takes
//!   one round trip, the flood's connections wait for nothing);
//! - each waits at most `hello_timeout_ms`.
//!
//! An established connection on which nothing arrives for
//! [`TransportConfig::idle_timeout_ms`], or whose write makes no progress
//! that long, is closed (`idle_disconnects`): that clears half-open
//! connections of a peer that vanished without a FIN or RST. While a group
//! has a leader its heartbeats cross every connection many times a second,
//! so only a dead or truly silent pair reaches the timeout; the dialer then
//! dials again, one handshake per timeout at most.
//!
//! # Security
//!
//! With [`TransportConfig::security`] set (the tarn server's mutual TLS),
//! every dialed and accepted connection, probes included, is wrapped by it
//! before the handshake above, which then runs inside the wrapped stream;
//! the acceptor also checks that the dialer proved to be the node its Hello
//! names ([`stream::PeerIdentity`]). A refused connection is counted in
//! `security_refusals` and logged at most once per [`SECURITY_LOG_INTERVAL`]
//! (with the count refused meanwhile), so a misconfigured peer that redials
//! every second does not flood the log. Without it, connections are plain
//! TCP (the embedding API's default).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tarn_core::{GroupId, NodeId};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::wire::{self, Envelope, FrameDecoder, PeerFrame, ProbeAnswer, WireError};

pub mod liveness;
pub mod probe;
pub mod stream;
use probe::ProbeState;
use stream::{PeerSecurity, ReadHalf, Stream};

/// Bounds and identities of one node's transport.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    pub node_id: NodeId,
    /// Every node of a cluster shares it; a Hello from another cluster is refused.
    pub cluster_id: u64,
    /// The peers known at start and where to dial them (this node excluded).
    /// Only the addresses of higher ids are ever dialed.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    pub max_frame_bytes: usize,
    /// Messages queued for one peer before new ones are dropped.
    pub max_queued_messages_per_peer: usize,
    /// One flush stops adding frames past this many bytes.
    pub max_write_batch_bytes: usize,
    pub reconnect_backoff_min_ms: u64,
    pub reconnect_backoff_max_ms: u64,
    /// Both sides of a new connection must say Hello within this time (also
    /// bounds the dial itself).
    pub hello_timeout_ms: u64,
    /// Written back to an inbound connection whose first frame is not a peer
    /// Hello (typically a client pointed at the peer port by mistake), before
    /// closing it: the embedding server puts a frame there that its clients
    /// understand ("this is a peer port"), so they fail at once instead of
    /// retrying. `None`: just close.
    pub stranger_reply: Option<Vec<u8>>,
    /// What this node answers to a first-start probe (see [`probe`]). The
    /// default answers as a member that recognizes nobody.
    pub probe_state: Arc<ProbeState>,
    /// Inbound connections that may wait for their Hello at once; a newer
    /// one closes the oldest (`TransportStats::handshakes_evicted`). Bounds
    /// what a flood of connections to the peer port can hold.
    pub max_pending_handshakes: usize,
    /// An established peer connection on which no byte arrives for this
    /// long, or whose pending write makes no progress for this long, is
    /// closed (`TransportStats::idle_disconnects`) and the dialer dials
    /// again. Clears half-open connections. Keep it many heartbeat
    /// intervals long: heartbeats are what keeps a healthy pair busy.
    pub idle_timeout_ms: u64,
    /// Wraps every peer connection (mutual TLS in the tarn server; see
    /// [`stream`]). `None`: plain TCP.
    pub security: Option<Arc<dyn PeerSecurity>>,
    /// Node-level liveness (issue 17): every established connection carries
    /// a `PeerFrame::Ping` this often, however idle its groups are.
    pub ping_interval_ms: u64,
    /// A peer whose connection is down, or from which nothing arrived for
    /// this long, is suspected down and reported to the liveness sink
    /// ([`Transport::set_liveness_sink`]). Keep it well under the election
    /// timeout: a quiescent group's failover waits for it.
    pub suspect_after_ms: u64,
    /// Whether messages sent with [`Transport::send_heartbeat`] share a
    /// `PeerFrame::Heartbeats` frame per flush (issue 17). Off: each is its
    /// own `Message` frame, the only form a build older than the batch
    /// frame reads (turn it off for a rolling upgrade from one).
    pub coalesce_heartbeats: bool,
}

/// A refused peer connection (security) is logged at most once per this
/// interval, with the number refused since the last line.
pub const SECURITY_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// The largest frame accepted on an inbound connection before its Hello:
/// far above any Hello, far below the frame bound, so a stranger cannot make
/// the node buffer a large frame before it knows who is talking.
pub const MAX_HELLO_FRAME_BYTES: usize = 4096;

/// Default of [`TransportConfig::max_pending_handshakes`].
pub const MAX_PENDING_HANDSHAKES_DEFAULT: usize = 256;

/// Default of [`TransportConfig::idle_timeout_ms`]: 30 s, 600 heartbeats of
/// the default 50 ms interval.
pub const PEER_IDLE_TIMEOUT_MS_DEFAULT: u64 = 30_000;

/// Accepted connections waiting to be handed to their peer's task. Small:
/// a peer dials again only after its previous connection failed.
const MAX_PENDING_ACCEPTED_PER_PEER: usize = 4;

impl TransportConfig {
    pub fn new(node_id: NodeId, cluster_id: u64, peers: BTreeMap<NodeId, SocketAddr>) -> Self {
        TransportConfig {
            node_id,
            cluster_id,
            peers,
            max_frame_bytes: wire::MAX_FRAME_BYTES_DEFAULT,
            max_queued_messages_per_peer: 65_536,
            max_write_batch_bytes: 4 * 1024 * 1024,
            reconnect_backoff_min_ms: 10,
            reconnect_backoff_max_ms: 1_000,
            hello_timeout_ms: 5_000,
            stranger_reply: None,
            probe_state: Arc::default(),
            max_pending_handshakes: MAX_PENDING_HANDSHAKES_DEFAULT,
            security: None,
            idle_timeout_ms: PEER_IDLE_TIMEOUT_MS_DEFAULT,
            ping_interval_ms: liveness::PING_INTERVAL_MS_DEFAULT,
            suspect_after_ms: liveness::SUSPECT_AFTER_MS_DEFAULT,
            coalesce_heartbeats: true,
        }
    }

    pub fn validate(&self) -> Result<(), TransportError> {
        let bad = |reason: String| Err(TransportError::Config { reason });
        if self.node_id == 0 {
            return bad("node id 0 is reserved; ids start at 1".into());
        }
        for &peer in self.peers.keys() {
            check_peer_id(self.node_id, peer)?;
        }
        if let Err(reason) = wire::check_max_frame_bytes(self.max_frame_bytes) {
            return bad(reason);
        }
        if self.max_queued_messages_per_peer == 0 || self.max_write_batch_bytes == 0 {
            return bad("max_queued_messages_per_peer and max_write_batch_bytes must be positive".into());
        }
        if self.reconnect_backoff_min_ms == 0 || self.reconnect_backoff_min_ms > self.reconnect_backoff_max_ms
        {
            return bad(format!(
                "reconnect backoff must satisfy 0 < min ({}) <= max ({})",
                self.reconnect_backoff_min_ms, self.reconnect_backoff_max_ms
            ));
        }
        if self.hello_timeout_ms == 0 {
            return bad("hello_timeout_ms must be positive".into());
        }
        if self.max_pending_handshakes == 0 {
            return bad("max_pending_handshakes must be positive (peers could never connect)".into());
        }
        if self.ping_interval_ms == 0 || self.suspect_after_ms < 2 * self.ping_interval_ms {
            return bad(format!(
                "suspect_after_ms ({}) must be at least two ping_interval_ms ({}), and pings must be on",
                self.suspect_after_ms, self.ping_interval_ms
            ));
        }
        if self.idle_timeout_ms == 0 {
            return bad(format!(
                "idle_timeout_ms must be positive (default {PEER_IDLE_TIMEOUT_MS_DEFAULT}: many heartbeat intervals)"
            ));
        }
        Ok(())
    }
}

fn check_peer_id(node_id: NodeId, peer: NodeId) -> Result<(), TransportError> {
    let bad = |reason: String| Err(TransportError::Config { reason });
    if peer == node_id {
        return bad(format!("peer list contains this node's own id {node_id}"));
    }
    if peer == 0 {
        return bad("peer list contains node id 0; ids start at 1".into());
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("invalid transport configuration: {reason}")]
    Config { reason: String },
    #[error("peer connection {addr}: {source}")]
    Io { addr: String, source: std::io::Error },
    #[error("peer connection {addr}: {source}")]
    Wire { addr: String, source: WireError },
    #[error("peer connection {addr}: {reason}")]
    Handshake { addr: String, reason: String },
    /// The other side does not speak the peer protocol at all (a client at
    /// the wrong port, a port scanner): not a peer failing, so not an error.
    #[error("connection from {addr} to the peer port is not a peer ({reason}); closed it (a client pointed at the peer port instead of the client port?)")]
    NotAPeer { addr: String, reason: String },
    /// The connection's security (TLS) refused the other side, or the other
    /// side refused this node: a wrong CA, an expired certificate, a
    /// certificate naming another node.
    #[error("peer connection {addr} refused: {reason} (check the cluster CA and the node certificates; a node certificate names its node as node-<id>.tarn)")]
    Security { addr: String, reason: String },
}

/// Counters a user can read while the node runs (`tarn status`).
#[derive(Debug, Default)]
pub struct TransportStats {
    pub messages_sent: AtomicU64,
    pub messages_received: AtomicU64,
    /// Dropped because a peer's queue was full, it was unknown or unreachable.
    pub messages_dropped: AtomicU64,
    pub flushes: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Connections that completed the handshake (dialed or accepted).
    pub connects: AtomicU64,
    pub connect_failures: AtomicU64,
    /// Inbound connections closed because of a bad frame or handshake.
    pub bad_connections: AtomicU64,
    /// Inbound connections that did not speak the peer protocol at all
    /// (clients at the wrong port); also counted in `bad_connections`.
    pub stranger_connections: AtomicU64,
    /// Peer connections open right now (a gauge): one per connected peer.
    pub connections_open: AtomicU64,
    /// Inbound connections waiting for their Hello right now (a gauge; at
    /// most `max_pending_handshakes`).
    pub handshakes_pending: AtomicU64,
    /// Inbound connections closed before their Hello because
    /// `max_pending_handshakes` newer ones arrived (a flood of connections).
    pub handshakes_evicted: AtomicU64,
    /// Established connections closed because nothing arrived, or a write
    /// made no progress, for `idle_timeout_ms` (half-open or stalled).
    pub idle_disconnects: AtomicU64,
    /// Node-level liveness pings written (`PeerFrame::Ping`).
    pub pings_sent: AtomicU64,
    /// Times a peer became suspected down (node-level liveness).
    pub peer_suspicions: AtomicU64,
    /// How late (ms, decaying) this node's own liveness checks run: the
    /// slack added to `suspect_after_ms` so a stalled node does not blame its
    /// peers (a gauge).
    pub own_lag_ms: AtomicU64,
    /// Connections refused by the transport's security (TLS handshake or
    /// certificate identity), dialed or accepted.
    pub security_refusals: AtomicU64,
    /// `PeerFrame::Heartbeats` frames written: each carried at least two
    /// groups' heartbeats (a lone one goes as a plain `Message`).
    pub heartbeat_batches: AtomicU64,
    /// Messages those frames carried (also counted in `messages_sent`);
    /// divided by `heartbeat_batches`, how well heartbeats coalesce.
    pub heartbeat_batched_messages: AtomicU64,
}

/// A snapshot of [`TransportStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransportStatsSnapshot {
    pub messages_sent: u64,
    pub messages_received: u64,
    pub messages_dropped: u64,
    pub flushes: u64,
    pub bytes_sent: u64,
    pub connects: u64,
    pub connect_failures: u64,
    pub bad_connections: u64,
    pub connections_open: u64,
    pub stranger_connections: u64,
    pub handshakes_pending: u64,
    pub handshakes_evicted: u64,
    pub idle_disconnects: u64,
    pub security_refusals: u64,
    pub pings_sent: u64,
    pub peer_suspicions: u64,
    #[serde(default)]
    pub own_lag_ms: u64,
    #[serde(default)]
    pub heartbeat_batches: u64,
    #[serde(default)]
    pub heartbeat_batched_messages: u64,
}

impl TransportStats {
    pub fn snapshot(&self) -> TransportStatsSnapshot {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TransportStatsSnapshot {
            messages_sent: l(&self.messages_sent),
            messages_received: l(&self.messages_received),
            messages_dropped: l(&self.messages_dropped),
            flushes: l(&self.flushes),
            bytes_sent: l(&self.bytes_sent),
            connects: l(&self.connects),
            connect_failures: l(&self.connect_failures),
            bad_connections: l(&self.bad_connections),
            connections_open: l(&self.connections_open),
            stranger_connections: l(&self.stranger_connections),
            handshakes_pending: l(&self.handshakes_pending),
            handshakes_evicted: l(&self.handshakes_evicted),
            idle_disconnects: l(&self.idle_disconnects),
            security_refusals: l(&self.security_refusals),
            pings_sent: l(&self.pings_sent),
            peer_suspicions: l(&self.peer_suspicions),
            own_lag_ms: l(&self.own_lag_ms),
            heartbeat_batches: l(&self.heartbeat_batches),
            heartbeat_batched_messages: l(&self.heartbeat_batched_messages),
        }
    }
}

/// Where inbound messages go: called from the connection's reader task, so
/// it must not block (typically a `try_send` into the group's queue).
pub type InboundSink<M> = Arc<dyn Fn(NodeId, GroupId, M) + Send + Sync>;

/// The running transport. Cheap to clone; dropping every clone does not stop
/// the tasks, [`Transport::shutdown`] does.
pub struct Transport<M> {
    inner: Arc<Inner<M>>,
}

impl<M> Clone for Transport<M> {
    fn clone(&self) -> Self {
        Transport { inner: self.inner.clone() }
    }
}

/// What every task of the transport reads.
struct Shared<M> {
    config: TransportConfig,
    stats: Arc<TransportStats>,
    sink: InboundSink<M>,
    security_log: SecurityLog,
    liveness: liveness::Liveness,
}

/// Logs refused connections at most once per [`SECURITY_LOG_INTERVAL`].
#[derive(Default)]
struct SecurityLog {
    /// When the last line was logged, and how many were refused since.
    last: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl SecurityLog {
    /// Counts a refusal; logs it unless a line went out within the interval.
    fn refused(&self, stats: &TransportStats, node: NodeId, error: &TransportError) {
        stats.security_refusals.fetch_add(1, Ordering::Relaxed);
        // Nothing panics while holding it; a poisoned pair is still consistent.
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        match last.0 {
            Some(at) if now.duration_since(at) < SECURITY_LOG_INTERVAL => {
                last.1 += 1;
                tracing::debug!(node, error = %error, "refused a peer connection");
            }
            _ => {
                let suppressed = std::mem::take(&mut last.1);
                last.0 = Some(now);
                tracing::warn!(node, error = %error, refused_since_last_line = suppressed,
                    interval_s = SECURITY_LOG_INTERVAL.as_secs(),
                    "refused a peer connection; further refusals within the interval are logged at debug level");
            }
        }
    }
}

type Peers<M> = Arc<RwLock<HashMap<NodeId, PeerSlot<M>>>>;

struct Inner<M> {
    shared: Arc<Shared<M>>,
    peers: Peers<M>,
    shutdown: watch::Sender<bool>,
    local_addr: SocketAddr,
    runtime: tokio::runtime::Handle,
}

/// One known peer: its queue, its address (the dialer follows changes) and
/// where the accept task hands over connections the peer dialed.
struct PeerSlot<M> {
    addr: watch::Sender<SocketAddr>,
    queue: mpsc::Sender<Outbound<M>>,
    accepted: mpsc::Sender<Live>,
    /// A connection to the peer is up (set by its task).
    connected: Arc<AtomicBool>,
    /// When a frame last arrived from the peer (`liveness::Liveness` clock).
    last_heard_ms: Arc<AtomicU64>,
}

/// A queued message and whether it may share a heartbeat frame.
struct Outbound<M> {
    envelope: Envelope<M>,
    coalesce: bool,
}

/// A connection that completed the handshake.
struct Live {
    stream: Stream,
    /// Holds whatever arrived after the Hello.
    decoder: FrameDecoder,
    remote: SocketAddr,
}

fn read_peers<M>(
    peers: &RwLock<HashMap<NodeId, PeerSlot<M>>>,
) -> std::sync::RwLockReadGuard<'_, HashMap<NodeId, PeerSlot<M>>> {
    // The map is only ever replaced entry by entry and no code panics while
    // holding the lock; a poisoned lock still holds a consistent map.
    peers.read().unwrap_or_else(|e| e.into_inner())
}

impl<M> Transport<M>
where
    M: Serialize + DeserializeOwned + Send + 'static,
{
    /// Starts accepting on `listener` and connecting to every peer in the
    /// configuration (dialing those with a higher id). Must run inside a
    /// tokio runtime.
    pub fn start(
        config: TransportConfig,
        listener: TcpListener,
        sink: InboundSink<M>,
    ) -> Result<Transport<M>, TransportError> {
        config.validate()?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| TransportError::Io { addr: "peer listener".into(), source })?;
        let initial = config.peers.clone();
        let stats = Arc::new(TransportStats::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let liveness = liveness::Liveness::default();
        let shared = Arc::new(Shared { config, stats, sink, security_log: SecurityLog::default(), liveness });
        let peers: Peers<M> = Arc::default();
        let runtime = tokio::runtime::Handle::current();
        let accept = accept_task(shared.clone(), peers.clone(), listener, shutdown_rx);
        let transport = Transport { inner: Arc::new(Inner { shared, peers, shutdown, local_addr, runtime }) };
        for (peer, addr) in initial {
            transport.set_peer(peer, addr)?;
        }
        // Accept only once the initial peers are known, or an early dialer
        // would be refused as unknown (and retry after a backoff).
        transport.inner.runtime.spawn(accept);
        let monitor = liveness::monitor(
            transport.inner.shared.clone(),
            transport.inner.peers.clone(),
            transport.inner.shutdown.subscribe(),
        );
        transport.inner.runtime.spawn(monitor);
        Ok(transport)
    }

    /// Adds peer `peer` at `addr`, or moves it there (a dialer reconnects to
    /// the new address). Idempotent.
    pub fn set_peer(&self, peer: NodeId, addr: SocketAddr) -> Result<(), TransportError> {
        let shared = &self.inner.shared;
        check_peer_id(shared.config.node_id, peer)?;
        let mut peers = self.inner.peers.write().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = peers.get(&peer) {
            let changed = slot.addr.send_if_modified(|a| {
                let changed = *a != addr;
                *a = addr;
                changed
            });
            if changed {
                tracing::info!(node = shared.config.node_id, peer, %addr, "peer address changed");
            }
            return Ok(());
        }
        let (addr_tx, addr_rx) = watch::channel(addr);
        let (queue, queue_rx) = mpsc::channel(shared.config.max_queued_messages_per_peer);
        let (accepted, accepted_rx) = mpsc::channel(MAX_PENDING_ACCEPTED_PER_PEER);
        let connected = Arc::new(AtomicBool::new(false));
        let last_heard_ms = Arc::new(AtomicU64::new(shared.liveness.now_ms()));
        let task = PeerTask {
            shared: shared.clone(),
            peer,
            connected: connected.clone(),
            last_heard_ms: last_heard_ms.clone(),
            addr: addr_rx,
            queue: queue_rx,
            accepted: accepted_rx,
            shutdown: self.inner.shutdown.subscribe(),
            buf: Vec::with_capacity(64 * 1024),
            heartbeats: Vec::new(),
        };
        self.inner.runtime.spawn(task.run());
        peers.insert(peer, PeerSlot { addr: addr_tx, queue, accepted, connected, last_heard_ms });
        tracing::debug!(node = shared.config.node_id, peer, %addr, "peer added");
        Ok(())
    }
}

impl<M> Transport<M> {
    /// Forgets peer `peer`: closes its connection and drops what is queued
    /// for it; its connections are refused from now on. False if unknown.
    pub fn remove_peer(&self, peer: NodeId) -> bool {
        let removed = self.inner.peers.write().unwrap_or_else(|e| e.into_inner()).remove(&peer).is_some();
        if removed {
            tracing::info!(node = self.inner.shared.config.node_id, peer, "peer removed");
        }
        removed
    }

    /// Every known peer and its address.
    pub fn peers(&self) -> BTreeMap<NodeId, SocketAddr> {
        read_peers(&self.inner.peers).iter().map(|(id, slot)| (*id, *slot.addr.borrow())).collect()
    }

    /// Queues `message` for `group` on node `to`. Never blocks; returns false
    /// (and counts a drop) when the peer is unknown or its queue is full.
    pub fn send(&self, to: NodeId, group: GroupId, message: M) -> bool {
        self.queue(to, Outbound { envelope: Envelope { group, message }, coalesce: false })
    }

    /// [`Transport::send`] for a heartbeat-class message (a Raft heartbeat,
    /// its response, a quiesce notice): small, frequent, sent by every
    /// group at the same grid instants. With
    /// [`TransportConfig::coalesce_heartbeats`] those queued for the same
    /// flush travel as one `PeerFrame::Heartbeats` frame; the receiver sees
    /// no difference. Never blocks; false as `send`.
    pub fn send_heartbeat(&self, to: NodeId, group: GroupId, message: M) -> bool {
        let coalesce = self.inner.shared.config.coalesce_heartbeats;
        self.queue(to, Outbound { envelope: Envelope { group, message }, coalesce })
    }

    fn queue(&self, to: NodeId, outbound: Outbound<M>) -> bool {
        debug_assert_ne!(to, self.inner.shared.config.node_id, "a node never sends Raft messages to itself");
        let sent = match read_peers(&self.inner.peers).get(&to) {
            Some(slot) => slot.queue.try_send(outbound).is_ok(),
            None => false,
        };
        if !sent {
            self.inner.shared.stats.messages_dropped.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.shared.config.node_id
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    pub fn stats(&self) -> Arc<TransportStats> {
        self.inner.shared.stats.clone()
    }

    /// Whether a connection to `peer` is up right now (`None`: not a known
    /// peer). What `tarn status` shows instead of a stale match index.
    pub fn is_connected(&self, peer: NodeId) -> Option<bool> {
        read_peers(&self.inner.peers).get(&peer).map(|slot| slot.connected.load(Ordering::Relaxed))
    }

    /// Stops accepting, dialing and writing; closes every connection.
    /// Queued messages are dropped (Raft state is on disk; peers catch up).
    pub fn shutdown(&self) {
        let _ = self.inner.shutdown.send(true);
    }
}

async fn wait_shutdown(rx: &mut watch::Receiver<bool>) {
    // A dropped sender also means shutdown.
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Decrements the open-connections gauge and clears the peer's connected
/// flag when a connection ends, however it ends.
struct OpenGuard(Arc<TransportStats>, Arc<AtomicBool>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
        self.1.store(false, Ordering::Relaxed);
    }
}

/// Why a connection's run ended.
enum Ended {
    /// Shutdown, or the peer was removed.
    Stop,
    /// The connection broke (or the dialer must move to a new address).
    Lost,
    /// The peer dialed again: this newer connection replaces the old one.
    Replaced(Live),
}

/// The task owning one peer: dials it (lower id here) or waits for its
/// connections (higher id here), then writes its queue to the connection.
struct PeerTask<M> {
    shared: Arc<Shared<M>>,
    peer: NodeId,
    connected: Arc<AtomicBool>,
    last_heard_ms: Arc<AtomicU64>,
    addr: watch::Receiver<SocketAddr>,
    queue: mpsc::Receiver<Outbound<M>>,
    accepted: mpsc::Receiver<Live>,
    shutdown: watch::Receiver<bool>,
    buf: Vec<u8>,
    /// The heartbeats of the flush being built (reused between flushes).
    heartbeats: Vec<Envelope<M>>,
}

impl<M> PeerTask<M>
where
    M: Serialize + DeserializeOwned + Send + 'static,
{
    fn dialer(&self) -> bool {
        self.shared.config.node_id < self.peer
    }

    async fn run(mut self) {
        let config = &self.shared.config;
        let (min_ms, max_ms) = (config.reconnect_backoff_min_ms, config.reconnect_backoff_max_ms);
        let mut backoff_ms = min_ms;
        let mut next: Option<Live> = None;
        loop {
            if *self.shutdown.borrow() {
                return;
            }
            let live = match next.take() {
                Some(live) => live,
                None if self.dialer() => {
                    let addr = *self.addr.borrow_and_update();
                    let dialed = tokio::select! {
                        r = dial::<M>(&self.shared, self.peer, addr, &mut self.buf) => r,
                        _ = wait_shutdown(&mut self.shutdown) => return,
                    };
                    match dialed {
                        Ok(live) => live,
                        Err(e) => {
                            self.shared.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                            if let TransportError::Security { .. } = e {
                                self.shared.security_log.refused(
                                    &self.shared.stats,
                                    self.shared.config.node_id,
                                    &e,
                                );
                            }
                            tracing::debug!(node = self.shared.config.node_id, peer = self.peer, %addr, error = %e, backoff_ms, "connect to peer failed");
                            if !self.wait_before_redial(backoff_ms).await {
                                return;
                            }
                            backoff_ms = (backoff_ms * 2).min(max_ms);
                            continue;
                        }
                    }
                }
                None => {
                    // The peer dials us. Meanwhile messages for it are stale
                    // by the time it connects: drop them (Raft resends).
                    loop {
                        tokio::select! {
                            l = self.accepted.recv() => match l {
                                Some(live) => break live,
                                None => return,
                            },
                            m = self.queue.recv() => match m {
                                Some(_) => {
                                    self.shared.stats.messages_dropped.fetch_add(1, Ordering::Relaxed);
                                }
                                None => return,
                            },
                            _ = wait_shutdown(&mut self.shutdown) => return,
                        }
                    }
                }
            };
            backoff_ms = min_ms;
            let ended = self.run_connection(live).await;
            if !matches!(ended, Ended::Stop) {
                // The connection died (or the peer dialed anew: it may have
                // restarted). Suspect it now; the monitor clears it once a
                // connection is up and heard from again.
                self.shared.liveness.set(&self.shared, self.peer, true);
            }
            match ended {
                Ended::Stop => return,
                Ended::Replaced(live) => next = Some(live),
                Ended::Lost => {
                    if self.dialer() && !self.wait_before_redial(backoff_ms).await {
                        return;
                    }
                }
            }
        }
    }

    /// Sleeps `backoff_ms` (cut short by an address change), dropping what
    /// queues up meanwhile. False when the task must stop.
    async fn wait_before_redial(&mut self, backoff_ms: u64) -> bool {
        let wake = tokio::time::Instant::now() + Duration::from_millis(backoff_ms);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => return true,
                m = self.queue.recv() => match m {
                    Some(_) => {
                        self.shared.stats.messages_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    None => return false,
                },
                r = self.addr.changed() => return r.is_ok(),
                _ = wait_shutdown(&mut self.shutdown) => return false,
            }
        }
    }

    async fn run_connection(&mut self, live: Live) -> Ended {
        let Live { stream, decoder, remote } = live;
        let (node, peer, dialer) = (self.shared.config.node_id, self.peer, self.dialer());
        let stats = self.shared.stats.clone();
        stats.connects.fetch_add(1, Ordering::Relaxed);
        stats.connections_open.fetch_add(1, Ordering::Relaxed);
        self.connected.store(true, Ordering::Relaxed);
        let _open = OpenGuard(stats.clone(), self.connected.clone());
        tracing::info!(node, peer, %remote, dialer, "peer connection up");
        let (read_half, mut write_half) = stream.into_split();
        let max_batch = self.shared.config.max_write_batch_bytes;
        let max_frame = self.shared.config.max_frame_bytes;
        let idle = Duration::from_millis(self.shared.config.idle_timeout_ms);
        // An accepted connection's decoder took only a Hello-sized frame;
        // the peer is known now.
        let mut decoder = decoder;
        decoder.set_max_frame_bytes(max_frame);
        self.last_heard_ms.store(self.shared.liveness.now_ms(), Ordering::Relaxed);
        let heard = self.last_heard_ms.clone();
        let mut reader =
            tokio::spawn(read_loop(self.shared.clone(), peer, read_half, decoder, remote, heard));
        let mut ping = tokio::time::interval(Duration::from_millis(self.shared.config.ping_interval_ms));
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ended = loop {
            tokio::select! {
                _ = ping.tick() => {
                    // Node-level liveness: one small frame per interval,
                    // whatever the groups say (a quiet pair says nothing).
                    self.buf.clear();
                    if wire::encode_frame(&PeerFrame::<M>::Ping, max_frame, &mut self.buf).is_err() {
                        continue;
                    }
                    let write = async {
                        write_half.write_all(&self.buf).await?;
                        write_half.flush().await
                    };
                    match tokio::time::timeout(idle, write).await {
                        Ok(Ok(())) => stats.pings_sent.fetch_add(1, Ordering::Relaxed),
                        _ => {
                            tracing::warn!(node, peer, %remote, "peer ping write failed; reconnecting");
                            break Ended::Lost;
                        }
                    };
                }
                m = self.queue.recv() => {
                    let Some(first) = m else { break Ended::Stop };
                    // Let the other groups' messages of this wakeup queue up.
                    tokio::task::yield_now().await;
                    self.buf.clear();
                    let mut count = 0u64;
                    let mut next = Some(first);
                    while let Some(Outbound { envelope, coalesce }) = next.take() {
                        if coalesce {
                            self.heartbeats.push(envelope);
                            if self.heartbeats.len() == wire::MAX_HEARTBEATS_PER_FRAME {
                                count += self.frame_heartbeats(max_frame);
                            }
                        } else {
                            match wire::encode_frame(&PeerFrame::Message(envelope), max_frame, &mut self.buf) {
                                Ok(()) => count += 1,
                                Err(e) => {
                                    stats.messages_dropped.fetch_add(1, Ordering::Relaxed);
                                    tracing::error!(node, peer, error = %e, "dropping message that cannot be framed");
                                }
                            }
                        }
                        // Heartbeats are a few dozen bytes each and at most
                        // MAX_HEARTBEATS_PER_FRAME wait unframed.
                        if self.buf.len() < max_batch {
                            next = self.queue.try_recv().ok();
                        }
                    }
                    count += self.frame_heartbeats(max_frame);
                    if self.buf.is_empty() {
                        continue;
                    }
                    // A wrapped (TLS) stream may hold back what `write_all`
                    // took until flushed; for TCP the flush is free.
                    let write = async {
                        write_half.write_all(&self.buf).await?;
                        write_half.flush().await
                    };
                    match tokio::time::timeout(idle, write).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            stats.messages_dropped.fetch_add(count, Ordering::Relaxed);
                            tracing::warn!(node, peer, %remote, error = %e, "peer write failed; reconnecting");
                            break Ended::Lost;
                        }
                        Err(_) => {
                            stats.messages_dropped.fetch_add(count, Ordering::Relaxed);
                            stats.idle_disconnects.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(node, peer, %remote, idle_ms = idle.as_millis() as u64,
                                "a write to the peer made no progress for idle_timeout_ms (half-open or stalled); reconnecting");
                            break Ended::Lost;
                        }
                    }
                    stats.messages_sent.fetch_add(count, Ordering::Relaxed);
                    stats.bytes_sent.fetch_add(self.buf.len() as u64, Ordering::Relaxed);
                    stats.flushes.fetch_add(1, Ordering::Relaxed);
                }
                _ = &mut reader => {
                    tracing::info!(node, peer, %remote, "peer connection closed");
                    break Ended::Lost;
                }
                l = self.accepted.recv(), if !dialer => match l {
                    Some(live) => {
                        tracing::info!(node, peer, old = %remote, new = %live.remote, "peer dialed again; the new connection replaces the old");
                        break Ended::Replaced(live);
                    }
                    None => break Ended::Stop,
                },
                r = self.addr.changed(), if dialer => match r {
                    Ok(()) => break Ended::Lost,
                    Err(_) => break Ended::Stop,
                },
                _ = wait_shutdown(&mut self.shutdown) => break Ended::Stop,
            }
        };
        reader.abort();
        let _ = write_half.shutdown().await;
        ended
    }
}

impl<M: Serialize> PeerTask<M> {
    /// Appends the gathered heartbeats to the flush: one
    /// `PeerFrame::Heartbeats` frame, or a plain `Message` frame for a lone
    /// one (or each one alone should the batch exceed the frame bound).
    /// Returns how many were framed; the others are counted as dropped.
    fn frame_heartbeats(&mut self, max_frame: usize) -> u64 {
        let mut batch = std::mem::take(&mut self.heartbeats);
        let n = batch.len() as u64;
        let framed = if n < 2 {
            self.frame_one(batch.pop(), max_frame)
        } else {
            let frame = PeerFrame::Heartbeats(wire::HeartbeatBatch(batch));
            let result = wire::encode_frame(&frame, max_frame, &mut self.buf);
            // Take the vector back to reuse its allocation.
            batch = match frame {
                PeerFrame::Heartbeats(wire::HeartbeatBatch(back)) => back,
                _ => Vec::new(),
            };
            if result.is_ok() {
                let stats = &self.shared.stats;
                stats.heartbeat_batches.fetch_add(1, Ordering::Relaxed);
                stats.heartbeat_batched_messages.fetch_add(n, Ordering::Relaxed);
                batch.clear();
                n
            } else {
                // Only a frame bound configured far below the default gets
                // here (the batch is bounded in count): a frame each.
                let mut framed = 0;
                for envelope in batch.drain(..) {
                    framed += self.frame_one(Some(envelope), max_frame);
                }
                framed
            }
        };
        self.heartbeats = batch;
        framed
    }

    /// Appends one envelope as a `Message` frame; 1 if it fit, else 0 (dropped).
    fn frame_one(&mut self, envelope: Option<Envelope<M>>, max_frame: usize) -> u64 {
        let Some(envelope) = envelope else { return 0 };
        match wire::encode_frame(&PeerFrame::Message(envelope), max_frame, &mut self.buf) {
            Ok(()) => 1,
            Err(e) => {
                self.shared.stats.messages_dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(node = self.shared.config.node_id, peer = self.peer, error = %e,
                    "dropping message that cannot be framed");
                0
            }
        }
    }
}

/// Reads one connection until EOF, a bad frame, or abort by its writer.
async fn read_loop<M: DeserializeOwned>(
    shared: Arc<Shared<M>>,
    peer: NodeId,
    mut read_half: ReadHalf,
    mut decoder: FrameDecoder,
    remote: SocketAddr,
    last_heard_ms: Arc<AtomicU64>,
) {
    let node = shared.config.node_id;
    let idle = Duration::from_millis(shared.config.idle_timeout_ms);
    loop {
        loop {
            match decoder.next_frame::<PeerFrame<M>>() {
                Ok(Some(PeerFrame::Message(Envelope { group, message }))) => {
                    shared.stats.messages_received.fetch_add(1, Ordering::Relaxed);
                    (shared.sink)(peer, group, message);
                }
                Ok(Some(PeerFrame::Heartbeats(wire::HeartbeatBatch(batch)))) => {
                    shared.stats.messages_received.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    for Envelope { group, message } in batch {
                        (shared.sink)(peer, group, message);
                    }
                }
                Ok(Some(PeerFrame::Ping)) => {}
                Ok(Some(
                    PeerFrame::Hello { .. } | PeerFrame::Probe { .. } | PeerFrame::ProbeReply { .. },
                )) => {
                    shared.stats.bad_connections.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(node, peer, %remote, "a handshake frame in the middle of a peer connection; closing it");
                    return;
                }
                Ok(None) => break,
                Err(e) => {
                    shared.stats.bad_connections.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(node, peer, %remote, error = %e, "bad frame from peer; closing the connection");
                    return;
                }
            }
        }
        match tokio::time::timeout(idle, read_half.read_buf(decoder.buffer_mut())).await {
            Ok(Ok(0)) => return,
            Ok(Ok(_)) => last_heard_ms.store(shared.liveness.now_ms(), Ordering::Relaxed),
            Ok(Err(e)) => {
                tracing::debug!(node, peer, %remote, error = %e, "peer connection read failed");
                return;
            }
            Err(_) => {
                shared.stats.idle_disconnects.fetch_add(1, Ordering::Relaxed);
                tracing::info!(node, peer, %remote, idle_ms = shared.config.idle_timeout_ms,
                    "nothing arrived from the peer for idle_timeout_ms (half-open or silent); closing the connection");
                return;
            }
        }
    }
}

/// The first frame of a connection: a handshake, never a message.
enum First {
    Hello { cluster_id: u64, from: NodeId, to: NodeId },
    Probe { cluster_id: u64, from: NodeId, to: NodeId, incarnation: u64 },
    ProbeReply { cluster_id: u64, from: NodeId, answer: ProbeAnswer },
}

/// Reads frames until the first one, which must be a handshake frame.
/// `Ok(None)`: the other side closed before saying anything.
async fn read_first<M: DeserializeOwned, S: AsyncRead + Unpin>(
    stream: &mut S,
    decoder: &mut FrameDecoder,
    addr: &str,
) -> Result<Option<First>, TransportError> {
    loop {
        let frame = decoder
            .next_frame::<PeerFrame<M>>()
            .map_err(|source| TransportError::Wire { addr: addr.into(), source })?;
        match frame {
            Some(PeerFrame::Hello { cluster_id, from, to }) => {
                return Ok(Some(First::Hello { cluster_id, from, to }))
            }
            Some(PeerFrame::Probe { cluster_id, from, to, incarnation }) => {
                return Ok(Some(First::Probe { cluster_id, from, to, incarnation }))
            }
            Some(PeerFrame::ProbeReply { cluster_id, from, answer }) => {
                return Ok(Some(First::ProbeReply { cluster_id, from, answer }))
            }
            Some(PeerFrame::Message(_) | PeerFrame::Ping | PeerFrame::Heartbeats(_)) => {
                return Err(TransportError::Handshake {
                    addr: addr.into(),
                    reason: "message before hello".into(),
                })
            }
            None => {}
        }
        match stream.read_buf(decoder.buffer_mut()).await {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(source) => return Err(TransportError::Io { addr: addr.into(), source }),
        }
    }
}

fn check_cluster(config: &TransportConfig, cluster_id: u64, addr: &str) -> Result<(), TransportError> {
    if cluster_id != config.cluster_id {
        return Err(TransportError::Handshake {
            addr: addr.into(),
            reason: format!(
                "peer belongs to cluster {cluster_id:#x}, this node to cluster {:#x}",
                config.cluster_id
            ),
        });
    }
    Ok(())
}

/// Connects to `peer` at `addr` and runs the dialer's half of the handshake.
async fn dial<M: Serialize + DeserializeOwned>(
    shared: &Shared<M>,
    peer: NodeId,
    addr: SocketAddr,
    buf: &mut Vec<u8>,
) -> Result<Live, TransportError> {
    let config = &shared.config;
    let addr_s = addr.to_string();
    let attempt = async {
        let io = |source| TransportError::Io { addr: addr_s.clone(), source };
        let tcp = TcpStream::connect(addr).await.map_err(io)?;
        let _ = tcp.set_nodelay(true);
        let mut stream = match &config.security {
            None => Stream::Tcp(tcp),
            Some(security) => security
                .dial(tcp, peer)
                .await
                .map_err(|reason| TransportError::Security { addr: addr_s.clone(), reason })?,
        };
        buf.clear();
        let hello: PeerFrame<M> =
            PeerFrame::Hello { cluster_id: config.cluster_id, from: config.node_id, to: peer };
        wire::encode_frame(&hello, config.max_frame_bytes, buf)
            .map_err(|source| TransportError::Wire { addr: addr_s.clone(), source })?;
        stream.write_all(buf).await.map_err(io)?;
        stream.flush().await.map_err(io)?;
        let mut decoder = FrameDecoder::new(config.max_frame_bytes);
        let (cluster_id, from, to) = match read_first::<M, _>(&mut stream, &mut decoder, &addr_s).await? {
            Some(First::Hello { cluster_id, from, to }) => (cluster_id, from, to),
            Some(_) => {
                return Err(TransportError::Handshake {
                    addr: addr_s.clone(),
                    reason: format!("node {peer} answered the hello with another handshake frame"),
                })
            }
            None => {
                return Err(TransportError::Handshake {
                    addr: addr_s.clone(),
                    reason: format!("node {peer} closed the connection during the handshake (it refused this node; see its log)"),
                })
            }
        };
        check_cluster(config, cluster_id, &addr_s)?;
        if from != peer || to != config.node_id {
            return Err(TransportError::Handshake {
                addr: addr_s.clone(),
                reason: format!(
                    "expected node {peer} answering node {}, got node {from} answering node {to} (is the address right?)",
                    config.node_id
                ),
            });
        }
        Ok(Live { stream, decoder, remote: addr })
    };
    match tokio::time::timeout(Duration::from_millis(config.hello_timeout_ms), attempt).await {
        Ok(r) => r,
        Err(_) => Err(TransportError::Handshake {
            addr: addr.to_string(),
            reason: format!("no connection and hello within {} ms", config.hello_timeout_ms),
        }),
    }
}

async fn accept_task<M: Serialize + DeserializeOwned + Send + 'static>(
    shared: Arc<Shared<M>>,
    peers: Peers<M>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let node = shared.config.node_id;
    let handshakes = Handshakes::default();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = wait_shutdown(&mut shutdown) => return,
        };
        match accepted {
            Ok((stream, addr)) => {
                let (shared, peers) = (shared.clone(), peers.clone());
                let timeout = Duration::from_millis(shared.config.hello_timeout_ms);
                let stats = shared.stats.clone();
                let max_pending = shared.config.max_pending_handshakes;
                let evicted = handshakes.admit(&stats, max_pending, |guard| {
                    tokio::spawn(async move {
                        let _pending = guard;
                        accept_one(&shared, &peers, stream, addr, timeout).await
                    })
                    .abort_handle()
                });
                if evicted > 0 {
                    let total = stats.handshakes_evicted.fetch_add(evicted, Ordering::Relaxed) + evicted;
                    // One line per 1,000 evictions: a flood must not flood the log too.
                    if (total - evicted) / 1000 != total / 1000 || total == evicted {
                        tracing::warn!(node, max_pending_handshakes = max_pending, evicted = total,
                            "closing the oldest peer-port connection still without a Hello: max_pending_handshakes reached (a flood of connections to the peer port? it should be reachable by the cluster's nodes only)");
                    }
                }
            }
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(node, error = %e, "accept on peer port failed");
                tokio::time::sleep(Duration::from_millis(shared.config.reconnect_backoff_min_ms)).await;
            }
        }
    }
}

/// The inbound connections still in their handshake, oldest first, so the
/// accept loop can bound their number ([`TransportConfig::max_pending_handshakes`]).
#[derive(Clone, Default)]
struct Handshakes {
    inner: Arc<std::sync::Mutex<HandshakesInner>>,
}

#[derive(Default)]
struct HandshakesInner {
    next: u64,
    /// `None` only between registering a handshake and spawning its task.
    pending: BTreeMap<u64, Option<tokio::task::AbortHandle>>,
}

impl Handshakes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HandshakesInner> {
        // Nothing panics while holding it; a poisoned map is still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new handshake started by `spawn` (which gets the guard
    /// that unregisters it when the task ends, however it ends), first
    /// evicting the oldest ones so at most `max` are pending. Returns how
    /// many were evicted. Called by the accept loop only, one at a time.
    fn admit(
        &self,
        stats: &Arc<TransportStats>,
        max: usize,
        spawn: impl FnOnce(PendingHandshake) -> tokio::task::AbortHandle,
    ) -> u64 {
        let mut evicted = Vec::new();
        let seq = {
            let mut inner = self.lock();
            while inner.pending.len() >= max {
                let Some((_, oldest)) = inner.pending.pop_first() else { break };
                stats.handshakes_pending.fetch_sub(1, Ordering::Relaxed);
                evicted.push(oldest);
            }
            let seq = inner.next;
            inner.next += 1;
            inner.pending.insert(seq, None);
            stats.handshakes_pending.fetch_add(1, Ordering::Relaxed);
            seq
        };
        // Outside the lock: spawning on a runtime that shuts down drops the
        // task (and its guard, which takes the lock) at once, and so may
        // aborting one.
        for handle in evicted.iter().flatten() {
            handle.abort();
        }
        let handle = spawn(PendingHandshake { seq, handshakes: self.clone(), stats: stats.clone() });
        // Absent if the task already ended (its guard unregistered it).
        if let Some(slot) = self.lock().pending.get_mut(&seq) {
            *slot = Some(handle);
        }
        evicted.len() as u64
    }
}

/// Held by a handshake's task; unregisters it when the task ends or is aborted.
struct PendingHandshake {
    seq: u64,
    handshakes: Handshakes,
    stats: Arc<TransportStats>,
}

impl Drop for PendingHandshake {
    fn drop(&mut self) {
        if self.handshakes.lock().pending.remove(&self.seq).is_some() {
            self.stats.handshakes_pending.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Runs the acceptor's half of one handshake under the hello timeout and
/// logs (and counts) why a connection was refused.
async fn accept_one<M: Serialize + DeserializeOwned>(
    shared: &Shared<M>,
    peers: &RwLock<HashMap<NodeId, PeerSlot<M>>>,
    stream: TcpStream,
    addr: SocketAddr,
    timeout: Duration,
) {
    let node = shared.config.node_id;
    let r = tokio::time::timeout(timeout, accept_handshake(shared, peers, stream, addr)).await;
    let error = match r {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e,
        Err(_) => {
            TransportError::Handshake { addr: addr.to_string(), reason: "no hello within the timeout".into() }
        }
    };
    shared.stats.bad_connections.fetch_add(1, Ordering::Relaxed);
    if let TransportError::Security { .. } = error {
        shared.security_log.refused(&shared.stats, node, &error);
        return;
    }
    if let TransportError::NotAPeer { .. } = error {
        // A misdirected client retries: say it once, loudly
        // enough to be seen, then only at debug level.
        if shared.stats.stranger_connections.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!(node, error = %error, "not a peer; further such connections are logged at debug level");
        } else {
            tracing::debug!(node, error = %error, "not a peer");
        }
        return;
    }
    tracing::error!(node, error = %error, "closing peer connection");
}

/// The acceptor's half of the handshake; hands the connection to its peer's task.
async fn accept_handshake<M: Serialize + DeserializeOwned>(
    shared: &Shared<M>,
    peers: &RwLock<HashMap<NodeId, PeerSlot<M>>>,
    tcp: TcpStream,
    remote: SocketAddr,
) -> Result<(), TransportError> {
    let config = &shared.config;
    let addr_s = remote.to_string();
    let _ = tcp.set_nodelay(true);
    let (mut stream, identity) = match &config.security {
        None => (Stream::Tcp(tcp), None),
        Some(security) => {
            let (stream, identity) = security
                .accept(tcp)
                .await
                .map_err(|reason| TransportError::Security { addr: addr_s.clone(), reason })?;
            (stream, Some(identity))
        }
    };
    // The node id a Hello or probe claims must be the one the other side
    // proved (its certificate), or anyone with a cluster certificate could
    // pose as any node.
    let check_identity = |from: NodeId| match &identity {
        Some(identity) => identity.check(from).map_err(|reason| TransportError::Security {
            addr: addr_s.clone(),
            reason: format!("it says it is node {from}, but {reason}"),
        }),
        None => Ok(()),
    };
    let mut decoder = FrameDecoder::new(config.max_frame_bytes.min(MAX_HELLO_FRAME_BYTES));
    // A connection closed before saying anything (a port probe) is not an error.
    let (cluster_id, from, to) = match read_first::<M, _>(&mut stream, &mut decoder, &addr_s).await {
        Ok(Some(First::Hello { cluster_id, from, to })) => (cluster_id, from, to),
        Ok(Some(First::Probe { cluster_id, from, to, incarnation })) => {
            check_identity(from)?;
            return answer_probe(config, stream, &addr_s, (cluster_id, from, to, incarnation)).await;
        }
        Ok(Some(First::ProbeReply { .. })) => {
            return Err(TransportError::Handshake {
                addr: addr_s,
                reason: "a probe reply nobody asked for".into(),
            })
        }
        Ok(None) => return Ok(()),
        // Another wire version is a peer of another build: a real error.
        Err(e @ TransportError::Wire { source: WireError::UnsupportedVersion { .. }, .. }) => return Err(e),
        // A first frame that is not a peer Hello: not a peer at all.
        Err(e @ (TransportError::Wire { .. } | TransportError::Handshake { .. })) => {
            if let Some(reply) = &config.stranger_reply {
                let _ = stream.write_all(reply).await;
                let _ = stream.flush().await;
                let _ = stream.shutdown().await;
            }
            let reason = match e {
                TransportError::Wire { source, .. } => source.to_string(),
                other => other.to_string(),
            };
            return Err(TransportError::NotAPeer { addr: addr_s, reason });
        }
        Err(e) => return Err(e),
    };
    let refuse = |reason: String| Err(TransportError::Handshake { addr: addr_s.clone(), reason });
    check_identity(from)?;
    check_cluster(config, cluster_id, &addr_s)?;
    if to != config.node_id {
        return refuse(format!("peer dialed node {to}, but this is node {}", config.node_id));
    }
    if from >= config.node_id {
        return refuse(format!(
            "node {from} dialed node {}, but only the lower id dials (one connection per pair); is node {from} running an older tarn?",
            config.node_id
        ));
    }
    let Some(handover) = read_peers(peers).get(&from).map(|slot| slot.accepted.clone()) else {
        return refuse(format!(
            "node {from} is not a known peer of node {} (list it in --cluster or add it with `tarn member add {from} <peer-addr>`)",
            config.node_id
        ));
    };
    let mut buf = Vec::new();
    let hello: PeerFrame<M> =
        PeerFrame::Hello { cluster_id: config.cluster_id, from: config.node_id, to: from };
    wire::encode_frame(&hello, config.max_frame_bytes, &mut buf)
        .map_err(|source| TransportError::Wire { addr: addr_s.clone(), source })?;
    let io = |source| TransportError::Io { addr: addr_s.clone(), source };
    stream.write_all(&buf).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    if handover.try_send(Live { stream, decoder, remote }).is_err() {
        // The peer was removed meanwhile, or dials faster than we hand over:
        // it will dial again.
        tracing::debug!(node = config.node_id, peer = from, "dropping an accepted connection nobody takes");
    }
    Ok(())
}

/// Answers a first-start probe (see [`probe`]) and closes the connection.
async fn answer_probe(
    config: &TransportConfig,
    mut stream: Stream,
    addr: &str,
    (cluster_id, from, to, incarnation): (u64, NodeId, NodeId, u64),
) -> Result<(), TransportError> {
    check_cluster(config, cluster_id, addr)?;
    if to != config.node_id {
        return Err(TransportError::Handshake {
            addr: addr.into(),
            reason: format!("node {from} probed node {to}, but this is node {}", config.node_id),
        });
    }
    let answer = config.probe_state.answer(from, incarnation);
    tracing::info!(node = config.node_id, peer = from, ?answer, "answered a first-start probe");
    let reply: PeerFrame<()> =
        PeerFrame::ProbeReply { cluster_id: config.cluster_id, from: config.node_id, answer };
    let bytes = wire::encode_frame_vec(&reply, probe::PROBE_FRAME_BYTES)
        .map_err(|source| TransportError::Wire { addr: addr.into(), source })?;
    let io = |source| TransportError::Io { addr: addr.into(), source };
    stream.write_all(&bytes).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    stream.shutdown().await.map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    type Got = Arc<Mutex<Vec<(NodeId, GroupId, String)>>>;

    async fn node(
        id: NodeId,
        listener: TcpListener,
        peers: BTreeMap<NodeId, SocketAddr>,
    ) -> (Transport<String>, Got) {
        node_with(id, listener, peers, None)
    }

    /// A transport whose inbound messages land in the returned list, with
    /// fast reconnects and an optional security hook.
    fn node_with(
        id: NodeId,
        listener: TcpListener,
        peers: BTreeMap<NodeId, SocketAddr>,
        security: Option<Arc<dyn stream::PeerSecurity>>,
    ) -> (Transport<String>, Got) {
        let (got, sink) = recorder();
        let mut config = TransportConfig::new(id, 42, peers);
        config.reconnect_backoff_min_ms = 5;
        config.reconnect_backoff_max_ms = 50;
        config.security = security;
        (Transport::start(config, listener, sink).unwrap(), got)
    }

    /// A sink that records every message it receives, and the record.
    fn recorder() -> (Got, InboundSink<String>) {
        let got: Got = Arc::default();
        let g = got.clone();
        (got, Arc::new(move |from, group, m| g.lock().unwrap().push((from, group, m))))
    }

    async fn listeners<const N: usize>() -> ([TcpListener; N], [SocketAddr; N]) {
        let mut ls = Vec::new();
        for _ in 0..N {
            ls.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let addrs: Vec<SocketAddr> = ls.iter().map(|l| l.local_addr().unwrap()).collect();
        (ls.try_into().expect("N listeners"), addrs.try_into().expect("N addresses"))
    }

    async fn wait_for(deadline_ms: u64, mut cond: impl FnMut() -> bool) {
        tokio::time::timeout(Duration::from_millis(deadline_ms), async {
            while !cond() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("condition not reached before the deadline");
    }

    /// Sends from `t` until `got` holds a message with `text`.
    async fn until_delivered(t: &Transport<String>, to: NodeId, got: &Got, text: &str) {
        wait_for(10_000, || {
            t.send(to, 1, text.to_string());
            got.lock().unwrap().iter().any(|(_, _, m)| m == text)
        })
        .await;
    }

    fn open(t: &Transport<String>) -> u64 {
        t.stats().snapshot().connections_open
    }

    async fn rebind(addr: SocketAddr) -> TcpListener {
        loop {
            match TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    #[tokio::test]
    async fn two_nodes_share_one_connection_for_many_groups() {
        let ([l1, l2], [a1, a2]) = listeners().await;
        let (t1, got1) = node(1, l1, [(2, a2)].into()).await;
        let (t2, got2) = node(2, l2, [(1, a1)].into()).await;
        // Messages sent before the connection is up may be dropped (by
        // design); keep resending until one arrives each way, then a burst.
        until_delivered(&t1, 2, &got2, "ping").await;
        until_delivered(&t2, 1, &got1, "pong").await;
        got2.lock().unwrap().clear();
        for i in 0..1000u64 {
            assert!(t1.send(2, i % 3, format!("m{i}")));
        }
        t2.send(1, 9, "back".into());
        let burst =
            || got2.lock().unwrap().iter().filter(|(_, _, m)| m != "ping").cloned().collect::<Vec<_>>();
        wait_for(5_000, || burst().len() == 1000 && got1.lock().unwrap().iter().any(|(_, _, m)| m == "back"))
            .await;
        for (i, (from, group, m)) in burst().iter().enumerate() {
            assert_eq!((*from, *group, m.as_str()), (1, i as u64 % 3, format!("m{i}").as_str()));
        }
        let (s1, s2) = (t1.stats().snapshot(), t2.stats().snapshot());
        assert!(s1.flushes < s1.messages_sent, "writes are batched: {s1:?}");
        // One TCP connection carries both directions: one handshake each side.
        assert_eq!((s1.connections_open, s2.connections_open), (1, 1), "{s1:?} {s2:?}");
        assert_eq!((s1.connects, s2.connects), (1, 1), "{s1:?} {s2:?}");
        assert_eq!(s2.connect_failures, 0, "the higher id never dials: {s2:?}");
        t1.shutdown();
        t2.shutdown();
    }

    #[tokio::test]
    async fn three_nodes_have_one_connection_per_pair() {
        let ([l1, l2, l3], [a1, a2, a3]) = listeners().await;
        let (t1, g1) = node(1, l1, [(2, a2), (3, a3)].into()).await;
        let (t2, g2) = node(2, l2, [(1, a1), (3, a3)].into()).await;
        let (t3, g3) = node(3, l3, [(1, a1), (2, a2)].into()).await;
        let ts = [(1, &t1, &g1), (2, &t2, &g2), (3, &t3, &g3)];
        for (from, t, _) in ts {
            for (to, _, got) in ts {
                if from != to {
                    until_delivered(t, to, got, &format!("{from}->{to}")).await;
                }
            }
        }
        for (id, t, _) in ts {
            assert_eq!(open(t), 2, "node {id}: {:?}", t.stats().snapshot());
            assert_eq!(t.stats().snapshot().connects, 2, "node {id}");
        }
        for t in [t1, t2, t3] {
            t.shutdown();
        }
    }

    #[tokio::test]
    async fn reconnects_after_either_side_restarts() {
        let ([l1, l2], [a1, a2]) = listeners().await;
        let (t1, got1) = node(1, l1, [(2, a2)].into()).await;
        let (t2, got2) = node(2, l2, [(1, a1)].into()).await;
        until_delivered(&t1, 2, &got2, "a").await;
        // The acceptor (2) restarts on the same address: 1 dials again.
        t2.shutdown();
        let (t2b, got2b) = node(2, rebind(a2).await, [(1, a1)].into()).await;
        until_delivered(&t1, 2, &got2b, "after 2 restarted").await;
        until_delivered(&t2b, 1, &got1, "from the new 2").await;
        wait_for(5_000, || open(&t1) == 1 && open(&t2b) == 1).await;
        assert!(t1.stats().snapshot().connects >= 2);
        // The dialer (1) restarts: its new connection replaces the old one on 2.
        t1.shutdown();
        let (t1b, got1b) = node(1, rebind(a1).await, [(2, a2)].into()).await;
        until_delivered(&t2b, 1, &got1b, "after 1 restarted").await;
        until_delivered(&t1b, 2, &got2b, "from the new 1").await;
        wait_for(5_000, || open(&t1b) == 1 && open(&t2b) == 1).await;
        t1b.shutdown();
        t2b.shutdown();
    }

    /// Node-level liveness (issue 17): pings keep an otherwise silent pair
    /// from being suspected; a peer that stops is reported down once, and
    /// up once it is back. Fails without pings (the quiet pair is suspected)
    /// or without the report of a lost connection.
    #[tokio::test]
    async fn a_silent_pair_stays_alive_and_a_stopped_peer_is_reported_down_then_up() {
        let ([l1, l2], [a1, a2]) = listeners().await;
        let (t1, _got1) = node(1, l1, [(2, a2)].into()).await;
        let (t2, got2) = node(2, l2, [(1, a1)].into()).await;
        let seen: Arc<Mutex<Vec<(NodeId, bool)>>> = Arc::default();
        let s = seen.clone();
        t1.set_liveness_sink(Arc::new(move |peer, alive| s.lock().unwrap().push((peer, alive))));
        until_delivered(&t1, 2, &got2, "a").await;
        // Four suspicion timeouts of silence from the groups: pings carry it.
        tokio::time::sleep(Duration::from_millis(4 * liveness::SUSPECT_AFTER_MS_DEFAULT)).await;
        assert_eq!(t1.suspects(2), Some(false));
        assert!(seen.lock().unwrap().is_empty(), "{:?}", seen.lock().unwrap());
        assert!(t1.stats().pings_sent.load(Ordering::Relaxed) > 0);
        t2.shutdown();
        wait_for(5_000, || seen.lock().unwrap().contains(&(2, false))).await;
        let (t2b, _) = node(2, rebind(a2).await, [(1, a1)].into()).await;
        wait_for(5_000, || seen.lock().unwrap().contains(&(2, true))).await;
        assert_eq!(*seen.lock().unwrap(), vec![(2, false), (2, true)]);
        t1.shutdown();
        t2b.shutdown();
    }

    #[tokio::test]
    async fn peers_are_added_moved_and_removed_at_runtime() {
        let ([l1, l2], [a1, a2]) = listeners().await;
        // Node 1 starts knowing nobody; node 2 knows node 1 (it never dials it).
        let (t1, got1) = node(1, l1, BTreeMap::new()).await;
        let (t2, got2) = node(2, l2, [(1, a1)].into()).await;
        assert!(!t1.send(2, 1, "unknown".into()), "no such peer yet");
        t1.set_peer(2, a2).unwrap();
        t1.set_peer(2, a2).unwrap(); // idempotent
        assert_eq!(t1.peers(), [(2, a2)].into());
        until_delivered(&t1, 2, &got2, "hello 2").await;
        until_delivered(&t2, 1, &got1, "hello 1").await;
        // Node 2 moves to a new address: node 1 follows.
        t2.shutdown();
        let ([l2b], [a2b]) = listeners().await;
        let (t2b, got2b) = node(2, l2b, [(1, a1)].into()).await;
        t1.set_peer(2, a2b).unwrap();
        until_delivered(&t1, 2, &got2b, "at the new address").await;
        // Removing the peer closes the connection on both sides.
        assert!(t1.remove_peer(2));
        assert!(!t1.remove_peer(2));
        wait_for(5_000, || open(&t1) == 0 && open(&t2b) == 0).await;
        assert!(!t1.send(2, 1, "gone".into()));
        assert!(t1.set_peer(1, a1).is_err(), "a node is not its own peer");
        assert!(t1.set_peer(0, a1).is_err());
        t1.shutdown();
        t2b.shutdown();
    }

    #[tokio::test]
    async fn bad_hellos_and_frames_close_only_that_connection() {
        let ([l1, l2], [a1, a2]) = listeners().await;
        let (t1, _got1) = node(1, l1, [(2, a2)].into()).await;
        let (t2, got2) = node(2, l2, [(1, a1), (3, "127.0.0.1:1".parse().unwrap())].into()).await;
        async fn expect_closed(addr: SocketAddr, bytes: Vec<u8>) {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&bytes).await.unwrap();
            let mut n = [0u8; 1];
            let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut n)).await.unwrap();
            assert!(matches!(r, Ok(0) | Err(_)), "the node closes a bad connection: {r:?}");
        }
        let hello = |cluster_id, from, to| {
            wire::encode_frame_vec(&PeerFrame::<String>::Hello { cluster_id, from, to }, 1024).unwrap()
        };
        expect_closed(a2, vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3]).await; // oversize frame
        expect_closed(a2, hello(7, 1, 2)).await; // another cluster
        expect_closed(a2, hello(42, 1, 5)).await; // meant for another node
        expect_closed(a2, hello(42, 3, 2)).await; // a higher id dials: against the rule
        expect_closed(a2, hello(42, 9, 2)).await; // unknown (and higher) node
        let msg = PeerFrame::Message(Envelope { group: 1, message: "x".to_string() });
        expect_closed(a2, wire::encode_frame_vec(&msg, 1024).unwrap()).await; // message before hello
        wait_for(5_000, || t2.stats().snapshot().bad_connections >= 6).await;
        // The real peer still gets through, on its one connection.
        until_delivered(&t1, 2, &got2, "ok").await;
        assert_eq!(open(&t2), 1);
        t1.shutdown();
        t2.shutdown();
    }

    #[tokio::test]
    async fn a_stranger_on_the_peer_port_gets_the_reply_and_is_not_an_error() {
        let ([l1], [a1]) = listeners().await;
        let sink: InboundSink<String> = Arc::new(|_, _, _| {});
        let mut config = TransportConfig::new(1, 42, BTreeMap::new());
        config.stranger_reply = Some(b"use the client port".to_vec());
        let t1 = Transport::start(config, l1, sink).unwrap();
        // Frames that are not a peer Hello: a client's request (here a
        // tuple that does not decode as a PeerFrame) and a message first.
        let not_hello = wire::encode_frame_vec(&(7u64, 0u64, 0u8), 1024).unwrap();
        let msg = PeerFrame::Message(Envelope { group: 1, message: "x".to_string() });
        for bytes in [not_hello, wire::encode_frame_vec(&msg, 1024).unwrap()] {
            let mut s = TcpStream::connect(a1).await.unwrap();
            s.write_all(&bytes).await.unwrap();
            let mut got = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await.unwrap().unwrap();
            assert_eq!(got, b"use the client port");
        }
        wait_for(5_000, || t1.stats().snapshot().stranger_connections == 2).await;
        // A peer of another wire version is a real error, not a stranger.
        let mut other_version =
            wire::encode_frame_vec(&PeerFrame::<String>::Hello { cluster_id: 42, from: 0, to: 1 }, 1024)
                .unwrap();
        other_version[4] = other_version[4].wrapping_add(1);
        let mut s = TcpStream::connect(a1).await.unwrap();
        s.write_all(&other_version).await.unwrap();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await.unwrap();
        assert!(got.is_empty(), "no stranger reply to a peer of another version");
        wait_for(5_000, || t1.stats().snapshot().bad_connections == 3).await;
        assert_eq!(t1.stats().snapshot().stranger_connections, 2);
        t1.shutdown();
    }

    /// Connects to `addr` and says nothing.
    async fn silent(addr: SocketAddr) -> TcpStream {
        TcpStream::connect(addr).await.unwrap()
    }

    /// True once the node closed `s` (EOF or reset), within `ms`.
    async fn closed_within(s: &mut TcpStream, ms: u64) -> bool {
        let mut byte = [0u8; 1];
        matches!(tokio::time::timeout(Duration::from_millis(ms), s.read(&mut byte)).await, Ok(Ok(0) | Err(_)))
    }

    /// A flood of connections that never say Hello holds at most
    /// `max_pending_handshakes` of them; each newer one evicts the oldest,
    /// and the real peer still connects through the flood.
    #[tokio::test]
    async fn silent_connections_beyond_the_cap_evict_the_oldest_and_the_peer_still_connects() {
        let ([l1, l2], [a1, a2]) = listeners().await;
        let (got2, sink) = recorder();
        let mut config = TransportConfig::new(2, 42, [(1, a1)].into());
        config.max_pending_handshakes = 4;
        config.hello_timeout_ms = 60_000; // only eviction closes them here
        let t2 = Transport::<String>::start(config, l2, sink).unwrap();
        let mut flood = Vec::new();
        for _ in 0..10 {
            flood.push(silent(a2).await);
        }
        wait_for(5_000, || t2.stats().snapshot().handshakes_evicted == 6).await;
        let s = t2.stats().snapshot();
        assert_eq!(s.handshakes_pending, 4, "{s:?}");
        // The six oldest were closed, the four newest are still waiting.
        for (i, stream) in flood.iter_mut().enumerate() {
            if i < 6 {
                assert!(closed_within(stream, 5_000).await, "connection {i} is evicted");
            } else {
                assert!(!closed_within(stream, 50).await, "connection {i} still waits");
            }
        }
        // A real peer's handshake evicts one more and completes.
        let (t1, _got1) = node(1, l1, [(2, a2)].into()).await;
        until_delivered(&t1, 2, &got2, "through the flood").await;
        let s = t2.stats().snapshot();
        assert_eq!((s.handshakes_pending, s.connections_open), (3, 1), "{s:?}");
        assert_eq!(s.handshakes_evicted, 7, "{s:?}");
        // Closing the flood frees the slots.
        drop(flood);
        wait_for(5_000, || t2.stats().snapshot().handshakes_pending == 0).await;
        t1.shutdown();
        t2.shutdown();
    }

    /// Before its Hello a connection may not declare a frame larger than
    /// `MAX_HELLO_FRAME_BYTES`: refused at once, never buffered.
    #[tokio::test]
    async fn a_first_frame_larger_than_a_hello_is_refused_at_once() {
        let ([l1], [a1]) = listeners().await;
        let sink: InboundSink<String> = Arc::new(|_, _, _| {});
        let mut config = TransportConfig::new(1, 42, BTreeMap::new());
        config.hello_timeout_ms = 60_000;
        let t1 = Transport::start(config, l1, sink).unwrap();
        let mut s = TcpStream::connect(a1).await.unwrap();
        // 1 MiB: under the 16 MiB frame bound, over the Hello bound.
        let mut header = ((1u32 << 20).to_le_bytes()).to_vec();
        header.push(wire::WIRE_VERSION);
        s.write_all(&header).await.unwrap();
        assert!(closed_within(&mut s, 5_000).await, "refused without waiting for the body");
        wait_for(5_000, || t1.stats().snapshot().bad_connections == 1).await;
        assert_eq!(t1.stats().snapshot().handshakes_pending, 0);
        t1.shutdown();
    }

    /// A pair that exchanges nothing for `idle_timeout_ms` is closed on the
    /// silent side and the dialer dials again; messages flow afterwards.
    #[tokio::test]
    async fn an_idle_connection_is_closed_and_redialed() {
        let ([l1, l2], [a1, a2]) = listeners().await;
        let sink = |got: &Got| -> InboundSink<String> {
            let g = got.clone();
            Arc::new(move |from, group, m| g.lock().unwrap().push((from, group, m)))
        };
        let (got1, got2): (Got, Got) = Default::default();
        let start = |id, l, peers: BTreeMap<NodeId, SocketAddr>, got: &Got| {
            let mut config = TransportConfig::new(id, 42, peers);
            config.reconnect_backoff_min_ms = 5;
            config.reconnect_backoff_max_ms = 50;
            config.idle_timeout_ms = 300;
            // Liveness pings would keep the pair busy: this is the silent case.
            config.ping_interval_ms = 60_000;
            config.suspect_after_ms = 120_000;
            Transport::<String>::start(config, l, sink(got)).unwrap()
        };
        let t1 = start(1, l1, [(2, a2)].into(), &got1);
        let t2 = start(2, l2, [(1, a1)].into(), &got2);
        until_delivered(&t1, 2, &got2, "first").await;
        // Nothing is sent now: both readers reach the timeout.
        wait_for(10_000, || {
            t1.stats().snapshot().idle_disconnects + t2.stats().snapshot().idle_disconnects >= 1
        })
        .await;
        wait_for(10_000, || t1.stats().snapshot().connects >= 2).await;
        until_delivered(&t1, 2, &got2, "after the idle close").await;
        until_delivered(&t2, 1, &got1, "and back").await;
        t1.shutdown();
        t2.shutdown();
    }

    /// Traffic well within the idle timeout keeps one connection up: a busy
    /// pair never flaps.
    #[tokio::test]
    async fn a_busy_connection_is_never_closed_as_idle() {
        let ([l1, l2], [a1, a2]) = listeners().await;
        let (got2, sink) = recorder();
        let mut c1 = TransportConfig::new(1, 42, [(2, a2)].into());
        let mut c2 = TransportConfig::new(2, 42, [(1, a1)].into());
        // Generous against a loaded machine: 40 sends of 50 ms per timeout.
        c1.idle_timeout_ms = 2_000;
        c2.idle_timeout_ms = 2_000;
        let t1 = Transport::<String>::start(c1, l1, Arc::new(|_, _, _| {})).unwrap();
        let t2 = Transport::<String>::start(c2, l2, sink).unwrap();
        until_delivered(&t1, 2, &got2, "up").await;
        // Both directions, as Raft's heartbeats and their answers do.
        let until = tokio::time::Instant::now() + Duration::from_millis(5_000);
        let mut i = 0u64;
        while tokio::time::Instant::now() < until {
            t1.send(2, 1, format!("beat {i}"));
            t2.send(1, 1, format!("back {i}"));
            i += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (s1, s2) = (t1.stats().snapshot(), t2.stats().snapshot());
        assert_eq!((s1.idle_disconnects, s2.idle_disconnects), (0, 0), "{s1:?} {s2:?}");
        assert_eq!((s1.connects, s2.connects), (1, 1), "{s1:?} {s2:?}");
        t1.shutdown();
        t2.shutdown();
    }

    /// Heartbeats queued for one flush share `Heartbeats` frames (split at
    /// the per-frame cap), plain messages between them still arrive, and
    /// the receiver gets every one; with coalescing off none is batched.
    #[tokio::test]
    async fn heartbeats_of_one_flush_travel_in_one_frame() {
        for coalesce in [true, false] {
            let ([l1, l2], [a1, a2]) = listeners().await;
            let (got2, sink) = recorder();
            let mut c1 = TransportConfig::new(1, 42, [(2, a2)].into());
            c1.coalesce_heartbeats = coalesce;
            let t1 = Transport::<String>::start(c1, l1, Arc::new(|_, _, _| {})).unwrap();
            let t2 =
                Transport::<String>::start(TransportConfig::new(2, 42, [(1, a1)].into()), l2, sink).unwrap();
            until_delivered(&t1, 2, &got2, "up").await;
            got2.lock().unwrap().clear();
            // No await in between: the writer finds all of them queued.
            let n = wire::MAX_HEARTBEATS_PER_FRAME as u64 + 100;
            for group in 0..n {
                assert!(t1.send_heartbeat(2, group, format!("hb {group}")));
                if group % 1000 == 0 {
                    assert!(t1.send(2, group, format!("append {group}")));
                }
            }
            // ("up" may still arrive: until_delivered sent it repeatedly.)
            let ours = |got: &Got| got.lock().unwrap().iter().filter(|(_, _, m)| m != "up").count() as u64;
            wait_for(10_000, || ours(&got2) == n + 5).await;
            let got = got2.lock().unwrap().clone();
            for group in 0..n {
                assert!(got.contains(&(1, group, format!("hb {group}"))), "heartbeat of group {group}");
            }
            let s = t1.stats().snapshot();
            if coalesce {
                assert!(s.heartbeat_batches >= 2, "split at the cap: {s:?}");
                assert_eq!(s.heartbeat_batched_messages, n, "{s:?}");
            } else {
                assert_eq!((s.heartbeat_batches, s.heartbeat_batched_messages), (0, 0), "{s:?}");
            }
            assert_eq!(t2.stats().snapshot().bad_connections, 0);
            t1.shutdown();
            t2.shutdown();
        }
    }

    #[test]
    fn config_validation_names_the_problem() {
        let mut c = TransportConfig::new(1, 1, [(1, "127.0.0.1:1".parse().unwrap())].into());
        assert!(c.validate().unwrap_err().to_string().contains("own id 1"));
        c.peers.clear();
        c.max_frame_bytes = 0;
        assert!(c.validate().is_err());
        c.max_frame_bytes = 1024;
        assert!(c.validate().is_ok());
        c.hello_timeout_ms = 0;
        assert!(c.validate().is_err());
        c.hello_timeout_ms = 1;
        c.max_pending_handshakes = 0;
        assert!(c.validate().unwrap_err().to_string().contains("max_pending_handshakes"));
        c.max_pending_handshakes = 1;
        c.idle_timeout_ms = 0;
        assert!(c.validate().unwrap_err().to_string().contains("idle_timeout_ms"));
    }

    /// A `PeerSecurity` that wraps streams without changing their bytes and
    /// accepts only the dialer ids in `allowed`.
    #[derive(Debug)]
    struct FakeSecurity {
        allowed: Vec<NodeId>,
    }

    struct AllowList(Vec<NodeId>);

    impl stream::PeerIdentity for AllowList {
        fn check(&self, claimed: NodeId) -> Result<(), String> {
            if self.0.contains(&claimed) {
                Ok(())
            } else {
                Err(format!("node {claimed} is not allowed"))
            }
        }
    }

    impl PeerSecurity for FakeSecurity {
        fn dial(&self, tcp: TcpStream, _peer: NodeId) -> stream::BoxFuture<'_, Result<Stream, String>> {
            Box::pin(async move { Ok(Stream::Wrapped(Box::new(tcp))) })
        }

        fn accept(&self, tcp: TcpStream) -> stream::BoxFuture<'_, Result<stream::Accepted, String>> {
            let identity: Box<dyn stream::PeerIdentity> = Box::new(AllowList(self.allowed.clone()));
            Box::pin(async move { Ok((Stream::Wrapped(Box::new(tcp)), identity)) })
        }
    }

    async fn secured_node(
        id: NodeId,
        listener: TcpListener,
        peers: BTreeMap<NodeId, SocketAddr>,
        allowed: Vec<NodeId>,
    ) -> (Transport<String>, Got) {
        node_with(id, listener, peers, Some(Arc::new(FakeSecurity { allowed })))
    }

    #[tokio::test]
    async fn wrapped_streams_carry_messages_and_a_refused_identity_is_counted() {
        // Allowed: messages flow both ways over wrapped (split) streams.
        let ([l1, l2], [a1, a2]) = listeners().await;
        let (t1, got1) = secured_node(1, l1, [(2, a2)].into(), vec![]).await;
        let (t2, got2) = secured_node(2, l2, [(1, a1)].into(), vec![1]).await;
        until_delivered(&t1, 2, &got2, "ping").await;
        until_delivered(&t2, 1, &got1, "pong").await;
        assert_eq!(t2.stats().snapshot().security_refusals, 0);
        t1.shutdown();
        t2.shutdown();
        // Node 2 does not accept node 1's identity: refused, counted, no connection.
        let ([l1, l2], [a1, a2]) = listeners().await;
        let (t1, _) = secured_node(1, l1, [(2, a2)].into(), vec![]).await;
        let (t2, got2) = secured_node(2, l2, [(1, a1)].into(), vec![3]).await;
        wait_for(10_000, || t2.stats().snapshot().security_refusals >= 2).await;
        t1.send(2, 1, "never".into());
        assert_eq!(open(&t2), 0, "{:?}", t2.stats().snapshot());
        assert!(got2.lock().unwrap().is_empty(), "nothing delivered from a refused peer");
        t1.shutdown();
        t2.shutdown();
    }
}
