//! TCP transport between the nodes of a cluster.
//!
//! Each node keeps one outbound connection to every peer and accepts one
//! inbound connection from every peer; every Raft group of the node shares
//! them (multi-raft), the group id travelling in the [`Envelope`]. Per peer a
//! single writer task drains a bounded queue and writes every message queued
//! so far as back-to-back frames in one `write_all`: one syscall per flush,
//! not per message.
//!
//! Raft tolerates message loss, so the transport never blocks the caller:
//! when a peer's queue is full or its connection is down, messages are
//! dropped and counted, and the core's retransmission does the rest. A frame
//! that fails to decode closes that one connection with a logged error; the
//! node keeps running and the peer reconnects.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tarn_core::{GroupId, NodeId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::wire::{self, Envelope, FrameDecoder, PeerFrame, WireError};

/// Bounds and identities of one node's transport.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    pub node_id: NodeId,
    /// Every node of a cluster shares it; a Hello from another cluster is refused.
    pub cluster_id: u64,
    /// Where to dial each peer (this node excluded).
    pub peers: BTreeMap<NodeId, SocketAddr>,
    pub max_frame_bytes: usize,
    /// Messages queued for one peer before new ones are dropped.
    pub max_queued_messages_per_peer: usize,
    /// One flush stops adding frames past this many bytes.
    pub max_write_batch_bytes: usize,
    pub reconnect_backoff_min_ms: u64,
    pub reconnect_backoff_max_ms: u64,
    /// An accepted connection must say Hello within this time.
    pub hello_timeout_ms: u64,
}

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
        }
    }

    pub fn validate(&self) -> Result<(), TransportError> {
        let bad = |reason: String| Err(TransportError::Config { reason });
        if self.node_id == 0 {
            return bad("node id 0 is reserved; ids start at 1".into());
        }
        if self.peers.contains_key(&self.node_id) {
            return bad(format!("peer list contains this node's own id {}", self.node_id));
        }
        if self.peers.contains_key(&0) {
            return bad("peer list contains node id 0; ids start at 1".into());
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
        Ok(())
    }
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
}

/// Counters a user can read while the node runs (`tarn status`).
#[derive(Debug, Default)]
pub struct TransportStats {
    pub messages_sent: AtomicU64,
    pub messages_received: AtomicU64,
    /// Dropped because a peer's queue was full or it was unknown.
    pub messages_dropped: AtomicU64,
    pub flushes: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub connects: AtomicU64,
    pub connect_failures: AtomicU64,
    /// Inbound connections closed because of a bad frame or handshake.
    pub bad_connections: AtomicU64,
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

struct Inner<M> {
    node_id: NodeId,
    outbound: BTreeMap<NodeId, mpsc::Sender<Envelope<M>>>,
    stats: Arc<TransportStats>,
    shutdown: watch::Sender<bool>,
    local_addr: SocketAddr,
}

impl<M> Transport<M>
where
    M: Serialize + DeserializeOwned + Send + 'static,
{
    /// Starts accepting on `listener` and dialing every peer.
    pub fn start(
        config: TransportConfig,
        listener: TcpListener,
        sink: InboundSink<M>,
    ) -> Result<Transport<M>, TransportError> {
        config.validate()?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| TransportError::Io { addr: "peer listener".into(), source })?;
        let stats = Arc::new(TransportStats::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let config = Arc::new(config);
        let mut outbound = BTreeMap::new();
        for (&peer, &addr) in &config.peers {
            let (tx, rx) = mpsc::channel(config.max_queued_messages_per_peer);
            outbound.insert(peer, tx);
            tokio::spawn(writer_task(config.clone(), peer, addr, rx, stats.clone(), shutdown_rx.clone()));
        }
        tokio::spawn(accept_task(config.clone(), listener, sink, stats.clone(), shutdown_rx));
        Ok(Transport {
            inner: Arc::new(Inner { node_id: config.node_id, outbound, stats, shutdown, local_addr }),
        })
    }
}

impl<M> Transport<M> {
    /// Queues `message` for `group` on node `to`. Never blocks; returns false
    /// (and counts a drop) when the peer is unknown or its queue is full.
    pub fn send(&self, to: NodeId, group: GroupId, message: M) -> bool {
        debug_assert_ne!(to, self.inner.node_id, "a node never sends Raft messages to itself");
        let Some(tx) = self.inner.outbound.get(&to) else {
            self.inner.stats.messages_dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        match tx.try_send(Envelope { group, message }) {
            Ok(()) => true,
            Err(_) => {
                self.inner.stats.messages_dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    pub fn stats(&self) -> Arc<TransportStats> {
        self.inner.stats.clone()
    }

    /// Stops accepting, dialing and writing. Queued messages are dropped
    /// (Raft state is on disk; peers catch up on their own).
    pub fn shutdown(&self) {
        let _ = self.inner.shutdown.send(true);
    }
}

async fn wait_shutdown(rx: &mut watch::Receiver<bool>) {
    // A dropped sender also means shutdown.
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn writer_task<M: Serialize>(
    config: Arc<TransportConfig>,
    peer: NodeId,
    addr: SocketAddr,
    mut rx: mpsc::Receiver<Envelope<M>>,
    stats: Arc<TransportStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff_ms = config.reconnect_backoff_min_ms;
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let hello: PeerFrame<M> =
        PeerFrame::Hello { cluster_id: config.cluster_id, from: config.node_id, to: peer };
    'connect: loop {
        if *shutdown.borrow() {
            return;
        }
        let connect = tokio::select! {
            r = TcpStream::connect(addr) => r,
            _ = wait_shutdown(&mut shutdown) => return,
        };
        let mut stream = match connect {
            Ok(s) => s,
            Err(e) => {
                stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(node = config.node_id, peer, %addr, error = %e, backoff_ms, "connect to peer failed");
                // Drop what queued up while the peer is unreachable: it is
                // stale by the time we connect, and the core resends.
                while rx.try_recv().is_ok() {
                    stats.messages_dropped.fetch_add(1, Ordering::Relaxed);
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(backoff_ms)) => {}
                    _ = wait_shutdown(&mut shutdown) => return,
                }
                backoff_ms = (backoff_ms * 2).min(config.reconnect_backoff_max_ms);
                continue 'connect;
            }
        };
        let _ = stream.set_nodelay(true);
        stats.connects.fetch_add(1, Ordering::Relaxed);
        tracing::info!(node = config.node_id, peer, %addr, "connected to peer");
        buf.clear();
        if let Err(e) = wire::encode_frame(&hello, config.max_frame_bytes, &mut buf) {
            tracing::error!(node = config.node_id, peer, error = %e, "cannot encode hello");
            return;
        }
        if let Err(e) = stream.write_all(&buf).await {
            tracing::warn!(node = config.node_id, peer, %addr, error = %e, "peer write failed; reconnecting");
            continue 'connect;
        }
        backoff_ms = config.reconnect_backoff_min_ms;
        loop {
            let first = tokio::select! {
                m = rx.recv() => m,
                _ = wait_shutdown(&mut shutdown) => None,
            };
            let Some(first) = first else {
                let _ = stream.shutdown().await;
                return;
            };
            // Let the other groups' messages of this wakeup queue up.
            tokio::task::yield_now().await;
            buf.clear();
            let mut count = 0u64;
            let mut next = Some(first);
            while let Some(envelope) = next.take() {
                let frame = PeerFrame::Message(envelope);
                match wire::encode_frame(&frame, config.max_frame_bytes, &mut buf) {
                    Ok(()) => count += 1,
                    Err(e) => {
                        stats.messages_dropped.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(node = config.node_id, peer, error = %e, "dropping message that cannot be framed");
                    }
                }
                if buf.len() < config.max_write_batch_bytes {
                    next = rx.try_recv().ok();
                }
            }
            if buf.is_empty() {
                continue;
            }
            if let Err(e) = stream.write_all(&buf).await {
                stats.messages_dropped.fetch_add(count, Ordering::Relaxed);
                tracing::warn!(node = config.node_id, peer, %addr, error = %e, "peer write failed; reconnecting");
                continue 'connect;
            }
            stats.messages_sent.fetch_add(count, Ordering::Relaxed);
            stats.bytes_sent.fetch_add(buf.len() as u64, Ordering::Relaxed);
            stats.flushes.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn accept_task<M: DeserializeOwned + Send + 'static>(
    config: Arc<TransportConfig>,
    listener: TcpListener,
    sink: InboundSink<M>,
    stats: Arc<TransportStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = wait_shutdown(&mut shutdown) => return,
        };
        match accepted {
            Ok((stream, addr)) => {
                let _ = stream.set_nodelay(true);
                let (config, sink, stats, shutdown) =
                    (config.clone(), sink.clone(), stats.clone(), shutdown.clone());
                tokio::spawn(async move {
                    if let Err(e) = read_connection(&config, stream, addr, &sink, &stats, shutdown).await {
                        stats.bad_connections.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(node = config.node_id, error = %e, "closing peer connection");
                    }
                });
            }
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(node = config.node_id, error = %e, "accept on peer port failed");
                tokio::time::sleep(Duration::from_millis(config.reconnect_backoff_min_ms)).await;
            }
        }
    }
}

/// Reads one inbound connection until EOF, error or shutdown. Returns an
/// error only for what should be counted as a bad connection.
async fn read_connection<M: DeserializeOwned>(
    config: &TransportConfig,
    mut stream: TcpStream,
    addr: SocketAddr,
    sink: &InboundSink<M>,
    stats: &TransportStats,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), TransportError> {
    let addr_s = addr.to_string();
    let mut decoder = FrameDecoder::new(config.max_frame_bytes);
    let mut from: Option<NodeId> = None;
    let hello_deadline = tokio::time::Instant::now() + Duration::from_millis(config.hello_timeout_ms);
    loop {
        // Drain every whole frame already buffered.
        loop {
            let frame = decoder
                .next_frame::<PeerFrame<M>>()
                .map_err(|source| TransportError::Wire { addr: addr_s.clone(), source })?;
            let Some(frame) = frame else { break };
            match (frame, from) {
                (PeerFrame::Hello { cluster_id, from: peer, to }, None) => {
                    if cluster_id != config.cluster_id {
                        return Err(TransportError::Handshake {
                            addr: addr_s,
                            reason: format!(
                                "peer belongs to cluster {cluster_id:#x}, this node to cluster {:#x}",
                                config.cluster_id
                            ),
                        });
                    }
                    if to != config.node_id {
                        return Err(TransportError::Handshake {
                            addr: addr_s,
                            reason: format!("peer dialed node {to}, but this is node {}", config.node_id),
                        });
                    }
                    if !config.peers.contains_key(&peer) {
                        return Err(TransportError::Handshake {
                            addr: addr_s,
                            reason: format!("node {peer} is not in this node's --cluster list"),
                        });
                    }
                    from = Some(peer);
                }
                (PeerFrame::Hello { .. }, Some(peer)) => {
                    return Err(TransportError::Handshake {
                        addr: addr_s,
                        reason: format!("second hello from node {peer}"),
                    });
                }
                (PeerFrame::Message(_), None) => {
                    return Err(TransportError::Handshake {
                        addr: addr_s,
                        reason: "message before hello".into(),
                    });
                }
                (PeerFrame::Message(Envelope { group, message }), Some(peer)) => {
                    stats.messages_received.fetch_add(1, Ordering::Relaxed);
                    sink(peer, group, message);
                }
            }
        }
        let read = tokio::select! {
            r = stream.read_buf(decoder.buffer_mut()) => r,
            _ = wait_shutdown(&mut shutdown) => return Ok(()),
            _ = tokio::time::sleep_until(hello_deadline), if from.is_none() => {
                return Err(TransportError::Handshake { addr: addr_s, reason: "no hello within the timeout".into() });
            }
        };
        match read {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(node = config.node_id, %addr, error = %e, "peer connection read failed");
                return Ok(());
            }
        }
    }
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
        let got: Got = Arc::default();
        let g = got.clone();
        let sink: InboundSink<String> =
            Arc::new(move |from, group, m| g.lock().unwrap().push((from, group, m)));
        let mut config = TransportConfig::new(id, 42, peers);
        config.reconnect_backoff_min_ms = 5;
        config.reconnect_backoff_max_ms = 50;
        (Transport::start(config, listener, sink).unwrap(), got)
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

    #[tokio::test]
    async fn two_nodes_exchange_messages_for_many_groups() {
        let l1 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let l2 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (a1, a2) = (l1.local_addr().unwrap(), l2.local_addr().unwrap());
        let (t1, got1) = node(1, l1, [(2, a2)].into()).await;
        let (t2, got2) = node(2, l2, [(1, a1)].into()).await;
        // Messages sent before the connection is up may be dropped (by
        // design); keep resending until one arrives, then send a burst.
        wait_for(5_000, || {
            t1.send(2, 7, "ping".into());
            !got2.lock().unwrap().is_empty()
        })
        .await;
        got2.lock().unwrap().clear();
        for i in 0..1000u64 {
            assert!(t1.send(2, i % 3, format!("m{i}")));
        }
        t2.send(1, 9, "back".into());
        let burst =
            || got2.lock().unwrap().iter().filter(|(_, _, m)| m != "ping").cloned().collect::<Vec<_>>();
        wait_for(5_000, || burst().len() == 1000 && !got1.lock().unwrap().is_empty()).await;
        let got = burst();
        for (i, (from, group, m)) in got.iter().enumerate() {
            assert_eq!((*from, *group, m.as_str()), (1, i as u64 % 3, format!("m{i}").as_str()));
        }
        assert_eq!(got1.lock().unwrap()[0], (2, 9, "back".to_string()));
        let s = t1.stats().snapshot();
        assert!(s.flushes < s.messages_sent, "writes are batched: {s:?}");
        t1.shutdown();
        t2.shutdown();
    }

    #[tokio::test]
    async fn reconnects_after_peer_restart() {
        let l1 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let l2 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (a1, a2) = (l1.local_addr().unwrap(), l2.local_addr().unwrap());
        let (t1, _got1) = node(1, l1, [(2, a2)].into()).await;
        let (t2, got2) = node(2, l2, [(1, a1)].into()).await;
        wait_for(5_000, || {
            t1.send(2, 1, "a".into());
            !got2.lock().unwrap().is_empty()
        })
        .await;
        t2.shutdown();
        // Restart node 2 on the same address.
        let l2 = loop {
            match TcpListener::bind(a2).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        };
        let (t2b, got2b) = node(2, l2, [(1, a1)].into()).await;
        wait_for(5_000, || {
            t1.send(2, 1, "after".into());
            got2b.lock().unwrap().iter().any(|(_, _, m)| m == "after")
        })
        .await;
        assert!(t1.stats().snapshot().connects >= 2);
        t1.shutdown();
        t2b.shutdown();
    }

    #[tokio::test]
    async fn bad_frame_closes_only_that_connection() {
        let l1 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let l2 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (a1, a2) = (l1.local_addr().unwrap(), l2.local_addr().unwrap());
        let (t1, _got1) = node(1, l1, [(2, a2)].into()).await;
        let (t2, got2) = node(2, l2, [(1, a1)].into()).await;
        // A stranger connects and writes garbage, then a wrong-cluster hello.
        let mut bad = TcpStream::connect(a2).await.unwrap();
        bad.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).await.unwrap();
        let mut n = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(5), bad.read(&mut n)).await.unwrap();
        assert!(matches!(closed, Ok(0) | Err(_)), "server closes the bad connection");
        let mut wrong = TcpStream::connect(a2).await.unwrap();
        let hello: PeerFrame<String> = PeerFrame::Hello { cluster_id: 7, from: 1, to: 2 };
        wrong.write_all(&wire::encode_frame_vec(&hello, 1024).unwrap()).await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(5), wrong.read(&mut n)).await.unwrap();
        assert!(matches!(closed, Ok(0) | Err(_)));
        wait_for(5_000, || t2.stats().snapshot().bad_connections >= 2).await;
        // The real peer still gets through.
        wait_for(5_000, || {
            t1.send(2, 1, "ok".into());
            !got2.lock().unwrap().is_empty()
        })
        .await;
        t1.shutdown();
        t2.shutdown();
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
    }
}
