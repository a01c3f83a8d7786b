//! The tokio driver: runs Raft groups on a node.
//!
//! A [`Node`] hosts any number of Raft groups (multi-raft). Each group is one
//! tokio task that owns its `RawNode` and its [`StateMachine`]; the node
//! shares one [`Transport`] (one connection per peer for all groups) and one
//! storage worker (one write and one sync for the writes of all groups that
//! arrive together) between them. The driver has no protocol logic: it feeds
//! the core ticks, messages and persistence completions, and executes the
//! actions the core returns.
//!
//! # Embedding: run your own state machine
//!
//! ```
//! use bytes::Bytes;
//! use tarn_core::{Index, Membership};
//! use tarn_io::driver::{MemStore, Node, NodeConfig, StateMachine};
//!
//! #[derive(Default)]
//! struct Log { lines: Vec<String>, applied: Index }
//!
//! impl StateMachine for Log {
//!     type Response = usize;
//!     fn apply(&mut self, index: Index, data: &Bytes) -> usize {
//!         self.lines.push(String::from_utf8_lossy(data).into_owned());
//!         self.applied = index;
//!         self.lines.len()
//!     }
//!     fn apply_noop(&mut self, index: Index) { self.applied = index; }
//!     fn applied_index(&self) -> Index { self.applied }
//! }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // One node, one group, storage in memory (use the file-backed store in production).
//! let node = Node::start(NodeConfig::new(1, 7), Box::new(MemStore::new()), None, Default::default())?;
//! let group = node.add_group(1, Membership::new_voters([1]), Log::default()).await?;
//! group.wait_for_leader(std::time::Duration::from_secs(5)).await?;
//! let count = group.propose(Bytes::from_static(b"hello")).await?;
//! assert_eq!(count, 1);
//! let lines = group.read(true, |log: &mut Log| log.lines.clone()).await?;
//! assert_eq!(lines, vec!["hello".to_string()]);
//! node.shutdown().await;
//! # Ok(()) }
//! ```

mod errors;
mod executor;
mod group;
mod liveness_feed;
mod metrics;
mod role_log;
mod state_machine;
mod store;
mod sync_pacer;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tarn_core::{
    ConfChange, GroupId, Index, LogId, Membership, Message, NodeId, RawNode, Role, Status, Term,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

pub use errors::Refusal;
pub use executor::{
    boot_id_base, GroupExecutor, GroupInput, GroupIo, Observed, ProposeFn, ReadFn, ReplyFn, SnapEvent,
    SnapshotJobError, StorageOp, Turn,
};
pub use group::align_deadline;
use group::{GroupTask, TokioGroupIo};
pub use metrics::{GroupCounters, Histogram, HistogramSnapshot, COUNT_BOUNDS, DURATION_BOUNDS_NANOS};
pub use state_machine::{SnapshotInstaller, SnapshotProducer, SnapshotRestore, StateMachine};
pub use store::{
    FileStore, Flushed, LogStore, LogWrite, MemStore, SnapshotSink, SnapshotSource, StagedSnapshot,
    StorageDone, StoreError, StoreErrorKind, WriteMode,
};
use store::{StorageRequest, StorageWorker};
pub use sync_pacer::SyncPacer;

use crate::transport::probe::ProbeState;
use crate::transport::{InboundSink, Transport, TransportConfig, TransportError, TransportStats};

/// How a node runs its groups.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: NodeId,
    /// Shared by every node of the cluster; checked in the transport handshake.
    pub cluster_id: u64,
    /// Template for every group's core configuration (`id` is overwritten
    /// with `node_id`, the seed is mixed with the group id).
    pub raft: tarn_core::Config,
    pub write_mode: WriteMode,
    /// Inputs queued for one group before senders wait (proposals) or drop
    /// (peer messages; Raft retransmits).
    pub group_queue_capacity: usize,
    /// The driver also wakes this often to let the state machine propose
    /// (e.g. TTL expiry) even when the core sleeps longer.
    pub tick_interval: Duration,
    /// Bytes the peer port writes back to a connection that is not a peer
    /// (see `TransportConfig::stranger_reply`): lets the embedding server tell
    /// a misdirected client, in its own protocol, to use the client port.
    pub peer_port_stranger_reply: Option<Vec<u8>>,
    /// What the peer port answers to a first-start probe
    /// (`transport::probe`): the embedding server decides.
    pub probe_state: Arc<ProbeState>,
    /// Wraps every peer connection (the tarn server's mutual TLS; see
    /// `transport::stream`). `None`, the default: plain TCP, for
    /// applications that bring their own transport security.
    pub peer_security: Option<Arc<dyn crate::transport::stream::PeerSecurity>>,
    /// Coalesced heartbeats (issue 17): every group's timer deadline is
    /// rounded up to the next multiple of this quantum, counted from the
    /// node's one `origin`, so the heartbeats (and their answers) of all
    /// groups are sent at the same instants and the transport writes those
    /// for one peer as one frame (`TransportConfig::coalesce_heartbeats`).
    /// Zero: off (each group's own deadlines, one frame per message).
    ///
    /// Why a timer may run up to a quantum late: Raft needs heartbeats well
    /// inside the election timeout and a randomized spread of election
    /// timeouts, not punctual timers. A leader's next heartbeat deadline is
    /// `now + heartbeat_interval` from the instant it fired, so on the grid
    /// heartbeats go out every heartbeat interval plus one quantum at most:
    /// with the defaults, 50 + 10 = 60 ms, against a minimum election
    /// timeout of 150 ms (the core's default; the server's is 300 ms), still
    /// 2.5 heartbeats per timeout (5 on the server) and far inside the
    /// lease (the election timeout less the drift bound, 147 ms by default).
    /// A follower's randomized election timeout (150-300 ms) is rounded up
    /// to the grid too: it fires less than a quantum late (never early, so
    /// no election starts sooner than the core asked) and keeps its spread
    /// at 10 ms granularity, 16 distinct values. Check-quorum and transfer
    /// deadlines only run late by as much: a late step-down is harmless
    /// because lease reads check the lease against the clock at the read,
    /// not at a tick. `Node::start` lowers the quantum so that these bounds
    /// hold for any timing: at most a quarter of the heartbeat interval and
    /// at most half the gap between the heartbeat interval and the smaller
    /// of the minimum election timeout and the lease
    /// ([`effective_coalesce_quantum`]).
    pub heartbeat_coalesce: Duration,
}

/// Default of [`NodeConfig::heartbeat_coalesce`]: a fifth of the default
/// 50 ms heartbeat interval.
pub const HEARTBEAT_COALESCE_DEFAULT: Duration = Duration::from_millis(10);

/// The timer grid a node runs under `raft`'s timing: `configured`, lowered
/// to at most a quarter of the heartbeat interval and to at most half the
/// gap between the heartbeat interval and the smaller of the minimum
/// election timeout and (with lease reads) the lease, so that a heartbeat
/// delayed by a quantum still comes well within both. Zero stays zero (off).
pub fn effective_coalesce_quantum(raft: &tarn_core::Config, configured: Duration) -> Duration {
    let heartbeat = raft.heartbeat_interval_ns;
    let mut bound = raft.election_timeout_min_ns;
    if raft.lease_read {
        bound = bound.min(raft.lease_duration_ns());
    }
    let cap = (heartbeat / 4).min(bound.saturating_sub(heartbeat) / 2);
    let q = u64::try_from(configured.as_nanos()).unwrap_or(u64::MAX).min(cap);
    Duration::from_nanos(q)
}

impl NodeConfig {
    pub fn new(node_id: NodeId, cluster_id: u64) -> Self {
        let mut raft = tarn_core::Config::new(node_id, cluster_id ^ node_id.rotate_left(32));
        // A snapshot every 100k entries or 64 MiB of entries, whichever
        // comes first (the core's entry default; a smaller byte bound so big
        // values do not keep gigabytes of log around).
        raft.snapshot_after_bytes = DEFAULT_SNAPSHOT_AFTER_BYTES;
        NodeConfig {
            node_id,
            cluster_id,
            raft,
            write_mode: WriteMode::Sync,
            group_queue_capacity: 65_536,
            tick_interval: Duration::from_millis(50),
            peer_port_stranger_reply: None,
            probe_state: Arc::default(),
            peer_security: None,
            heartbeat_coalesce: HEARTBEAT_COALESCE_DEFAULT,
        }
    }
}

/// The peer transport's idle timeout is at least this many heartbeat
/// intervals (its default, 30 s, is 600 of the default 50 ms).
pub const PEER_IDLE_TIMEOUT_HEARTBEATS: u64 = 20;

/// Bytes an AppendEntries frame may add per entry besides its payload
/// (postcard varints of term, index and length, and the payload tag).
pub const ENTRY_WIRE_OVERHEAD_BYTES: usize = 32;
/// Bytes a peer frame adds around a message's entries or snapshot chunk
/// (envelope, group, ids, term, log ids, commit index, vector lengths).
pub const MESSAGE_WIRE_OVERHEAD_BYTES: usize = 256;

/// The largest peer frame body a group under this configuration can send:
/// an AppendEntries holds at most `max_size_per_msg_bytes` of entries, plus
/// one entry of up to `max_entry_bytes` (at least one entry always goes),
/// each with its wire overhead; a snapshot chunk is smaller than that.
pub const fn max_peer_message_bytes(
    max_size_per_msg_bytes: usize,
    max_entry_bytes: usize,
    max_entries_per_msg: usize,
    max_snapshot_chunk_bytes: usize,
) -> usize {
    let append = max_size_per_msg_bytes
        .saturating_add(max_entry_bytes)
        .saturating_add(max_entries_per_msg.saturating_mul(ENTRY_WIRE_OVERHEAD_BYTES));
    let larger = if append > max_snapshot_chunk_bytes { append } else { max_snapshot_chunk_bytes };
    larger.saturating_add(MESSAGE_WIRE_OVERHEAD_BYTES)
}

/// [`max_peer_message_bytes`] of a core configuration.
pub fn max_peer_message_bytes_of(raft: &tarn_core::Config) -> usize {
    max_peer_message_bytes(
        raft.max_size_per_msg_bytes,
        raft.max_entry_bytes,
        raft.max_entries_per_msg,
        raft.max_snapshot_chunk_bytes,
    )
}

// The chain of limits, for the defaults: every entry a valid configuration
// allows is parsed by storage recovery, and an AppendEntries carrying a
// default-sized maximal entry fits a default peer frame. `Node::start` checks
// the configured values.
const _: () =
    assert!(tarn_core::MAX_ENTRY_BYTES_LIMIT <= crate::storage::MAX_ENTRY_SIZE_LIMIT_BYTES as usize);
const _: () = assert!(
    max_peer_message_bytes(1 << 20, tarn_core::MAX_ENTRY_BYTES_DEFAULT, 4096, 1 << 20)
        <= crate::wire::MAX_FRAME_BYTES_DEFAULT
);

/// The driver's default for `Config::snapshot_after_bytes`.
pub const DEFAULT_SNAPSHOT_AFTER_BYTES: u64 = 64 << 20;

/// Why a node or group could not start.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("invalid Raft configuration for group {group}: {reason}")]
    Config { group: GroupId, reason: String },
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("group {group} already runs on this node")]
    GroupExists { group: GroupId },
    #[error("group {group} does not run on this node")]
    NoSuchGroup { group: GroupId },
    #[error("node {node} is shutting down")]
    ShuttingDown { node: NodeId },
    #[error("group {group}: no leader elected within {waited_ms} ms (is a quorum of nodes running?)")]
    NoLeader { group: GroupId, waited_ms: u64 },
    #[error("group {group}: cannot restore the state machine from its snapshot: {reason}")]
    Restore { group: GroupId, reason: String },
}

/// Why a proposal has no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("this node is not the leader (leader: {leader_hint:?})")]
    NotLeader { leader_hint: Option<NodeId> },
    /// The entry was appended but leadership was lost: it may still commit.
    #[error(
        "leadership lost after the proposal was appended; it may still commit (leader: {leader_hint:?})"
    )]
    MaybeCommitted { leader_hint: Option<NodeId> },
    #[error("proposal refused: {reason}")]
    Refused { reason: Refusal },
    #[error("group stopped: {reason}")]
    Stopped { reason: String },
}

/// Why a read could not be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("this node cannot confirm a linearizable read (leader: {leader_hint:?})")]
    NotLeader { leader_hint: Option<NodeId> },
    #[error("read refused: {reason}")]
    Refused { reason: Refusal },
    #[error("group stopped: {reason}")]
    Stopped { reason: String },
}

/// What a group looks like from outside, updated by its task after every turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    pub group: GroupId,
    pub node_id: NodeId,
    pub role: Role,
    pub term: Term,
    pub leader: Option<NodeId>,
    pub commit: Index,
    pub applied: Index,
    pub last_log_id: LogId,
    /// The newest snapshot this node holds (taken, installed or recovered;
    /// zero if none): the log before it may be compacted.
    pub snapshot: LogId,
    /// Quiescent (`Config::quiesce`): the group runs no timer until work, a
    /// message or node-level liveness wakes it.
    pub quiescent: bool,
    pub stopped: bool,
    pub error: Option<String>,
}

/// Storage worker counters (readable while the node runs).
#[derive(Debug)]
pub struct StorageCounters {
    /// Flush rounds (each one write of everything staged, for all groups).
    pub flushes: AtomicU64,
    /// fdatasync rounds (sync mode: one per flush; async mode: background).
    pub syncs: AtomicU64,
    /// Log entries appended.
    pub entries_written: AtomicU64,
    /// How long one durable round took: in sync mode a flush (its writes
    /// and the fdatasync batch they share); in async mode one background
    /// fdatasync batch.
    pub sync_seconds: Histogram,
    /// Log entries appended per flush (flushes that appended none are not
    /// recorded).
    pub flush_entries: Histogram,
}

impl Default for StorageCounters {
    fn default() -> Self {
        StorageCounters {
            flushes: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            entries_written: AtomicU64::new(0),
            sync_seconds: Histogram::durations(),
            flush_entries: Histogram::counts(),
        }
    }
}

/// Talks to one group's task. Cheap to clone.
pub struct GroupHandle<SM: StateMachine> {
    group: GroupId,
    tx: mpsc::Sender<GroupInput<SM>>,
    info: watch::Receiver<GroupInfo>,
    counters: Arc<GroupCounters>,
}

impl<SM: StateMachine> Clone for GroupHandle<SM> {
    fn clone(&self) -> Self {
        GroupHandle {
            group: self.group,
            tx: self.tx.clone(),
            info: self.info.clone(),
            counters: self.counters.clone(),
        }
    }
}

impl<SM: StateMachine> GroupHandle<SM> {
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// The group's counters on this node (leader changes, snapshots).
    pub fn counters(&self) -> &Arc<GroupCounters> {
        &self.counters
    }

    fn stopped(&self) -> String {
        self.info.borrow().error.clone().unwrap_or_else(|| format!("group {} stopped", self.group))
    }

    /// Proposes `data`; resolves once it is applied here (the response) or
    /// cannot be (the reason).
    pub async fn propose(&self, data: Bytes) -> Result<SM::Response, ProposeError> {
        let (tx, rx) = oneshot::channel();
        let reply: ProposeFn<SM> = Box::new(move |r| {
            let _ = tx.send(r);
        });
        if self.tx.send(GroupInput::Propose { data, reply }).await.is_err() {
            return Err(ProposeError::Stopped { reason: self.stopped() });
        }
        rx.await.unwrap_or_else(|_| Err(ProposeError::Stopped { reason: self.stopped() }))
    }

    /// Proposes `data` without waiting: `reply` gets the outcome on the
    /// group's task. Gives `reply` back if the group's queue is full, so the
    /// caller can wait ([`GroupHandle::propose`]) or refuse.
    pub fn try_propose(&self, data: Bytes, reply: ProposeFn<SM>) -> Result<(), (Bytes, ProposeFn<SM>)> {
        match self.tx.try_send(GroupInput::Propose { data, reply }) {
            Ok(()) => Ok(()),
            Err(e) => match e.into_inner() {
                GroupInput::Propose { data, reply } => Err((data, reply)),
                _ => unreachable!("try_send gives back the Propose it was given"),
            },
        }
    }

    /// Like [`GroupHandle::try_propose`], waiting for room in the queue.
    /// If the group has stopped, `reply` is called with the reason.
    pub async fn propose_with(&self, data: Bytes, reply: ProposeFn<SM>) {
        if let Err(mpsc::error::SendError(GroupInput::Propose { reply, .. })) =
            self.tx.send(GroupInput::Propose { data, reply }).await
        {
            reply(Err(ProposeError::Stopped { reason: self.stopped() }));
        }
    }

    /// Runs `f` on the state machine: after a ReadIndex/lease confirmation if
    /// `linearizable`, else at once on the local (possibly stale) state.
    pub async fn read<R, F>(&self, linearizable: bool, f: F) -> Result<R, ReadError>
    where
        R: Send + 'static,
        F: FnOnce(&mut SM) -> R + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let f: ReadFn<SM> = Box::new(move |sm| {
            let _ = reply.send(sm.map(f));
        });
        if self.tx.send(GroupInput::Read { linearizable, f }).await.is_err() {
            return Err(ReadError::Stopped { reason: self.stopped() });
        }
        rx.await.unwrap_or_else(|_| Err(ReadError::Stopped { reason: self.stopped() }))
    }

    /// Queues a read without waiting; gives `f` back if the queue is full or
    /// the group stopped.
    pub fn try_read(&self, linearizable: bool, f: ReadFn<SM>) -> Result<(), ReadFn<SM>> {
        match self.tx.try_send(GroupInput::Read { linearizable, f }) {
            Ok(()) => Ok(()),
            Err(e) => match e.into_inner() {
                GroupInput::Read { f, .. } => Err(f),
                _ => unreachable!("try_send gives back the Read it was given"),
            },
        }
    }

    /// Queues a read, waiting for room; if the group stopped, `f` gets the reason.
    pub async fn read_with(&self, linearizable: bool, f: ReadFn<SM>) {
        if let Err(mpsc::error::SendError(GroupInput::Read { f, .. })) =
            self.tx.send(GroupInput::Read { linearizable, f }).await
        {
            f(Err(ReadError::Stopped { reason: self.stopped() }));
        }
    }

    /// Asks the leader to hand leadership to `to`.
    pub async fn transfer_leader(&self, to: NodeId) -> Result<(), ProposeError> {
        self.tx
            .send(GroupInput::TransferLeader { to })
            .await
            .map_err(|_| ProposeError::Stopped { reason: self.stopped() })
    }

    /// Changes the group's membership (leader only); resolves once the
    /// change is complete (after the joint step when voters change) or refused.
    pub async fn change_membership(&self, changes: Vec<ConfChange>) -> Result<(), ProposeError> {
        let (tx, rx) = oneshot::channel();
        let reply = Box::new(move |r| {
            let _ = tx.send(r);
        });
        if self.tx.send(GroupInput::ChangeMembership { changes, reply }).await.is_err() {
            return Err(ProposeError::Stopped { reason: self.stopped() });
        }
        rx.await.unwrap_or_else(|_| Err(ProposeError::Stopped { reason: self.stopped() }))
    }

    /// The core's full status (members, progress of followers on a leader).
    pub async fn status(&self) -> Option<Status> {
        let (tx, rx) = oneshot::channel();
        let reply = Box::new(move |status| {
            let _ = tx.send(status);
        });
        self.tx.send(GroupInput::Status { reply }).await.ok()?;
        rx.await.ok()
    }

    /// The latest published summary (no round trip to the task).
    pub fn info(&self) -> GroupInfo {
        self.info.borrow().clone()
    }

    /// A receiver that changes whenever the summary does.
    pub fn subscribe(&self) -> watch::Receiver<GroupInfo> {
        self.info.clone()
    }

    /// Waits until the group knows a leader.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, DriverError> {
        let mut rx = self.info.clone();
        let r = tokio::time::timeout(timeout, rx.wait_for(|i| i.leader.is_some() || i.stopped)).await;
        match r {
            Ok(Ok(i)) if i.leader.is_some() => Ok(i.leader.expect("checked is_some")),
            _ => Err(DriverError::NoLeader {
                group: self.group,
                waited_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            }),
        }
    }
}

/// A group's handle and the task running it.
type RunningGroup<SM> = (GroupHandle<SM>, tokio::task::JoinHandle<()>);

type Routes<SM> = Arc<RwLock<HashMap<GroupId, mpsc::Sender<GroupInput<SM>>>>>;

struct NodeInner<SM: StateMachine> {
    config: NodeConfig,
    storage: StorageWorker,
    transport: Option<Transport<Message>>,
    routes: Routes<SM>,
    handles: RwLock<BTreeMap<GroupId, RunningGroup<SM>>>,
    /// The node's clock origin, shared by every group: their `now`, and the
    /// timer grid heartbeats are coalesced on, count from it.
    origin: Instant,
    /// [`effective_coalesce_quantum`] of the configuration, in nanoseconds.
    coalesce_quantum: u64,
    storage_counters: Arc<StorageCounters>,
    dropped_inbound: Arc<AtomicU64>,
    /// Node-level liveness changes, read by every group task.
    liveness: liveness_feed::LivenessTx,
    role_log: Arc<role_log::RoleLog>,
}

/// A running node: its groups, its transport and its storage worker.
pub struct Node<SM: StateMachine> {
    inner: Arc<NodeInner<SM>>,
}

impl<SM: StateMachine> Clone for Node<SM> {
    fn clone(&self) -> Self {
        Node { inner: self.inner.clone() }
    }
}

impl<SM: StateMachine> Node<SM> {
    /// Starts the storage worker and, if `peer_listener` is given, the
    /// transport to `peers` (other nodes' peer addresses). Must run inside a
    /// tokio runtime.
    pub fn start(
        config: NodeConfig,
        store: Box<dyn LogStore>,
        peer_listener: Option<TcpListener>,
        peers: BTreeMap<NodeId, SocketAddr>,
    ) -> Result<Node<SM>, DriverError> {
        let mut probe = config.raft.clone();
        probe.id = config.node_id;
        probe.validate().map_err(|e| DriverError::Config { group: 0, reason: e.to_string() })?;
        // The chain of limits: an entry the core accepts must be storable on
        // every node and fit a peer frame, or one proposal stops the group.
        if let Some(store_max) = store.max_entry_bytes() {
            if probe.max_entry_bytes > store_max {
                return Err(DriverError::Config {
                    group: 0,
                    reason: format!(
                        "max_entry_bytes {} exceeds the storage engine's max_entry_size_bytes {store_max}; lower max_entry_bytes (or use larger log segments)",
                        probe.max_entry_bytes
                    ),
                });
            }
        }
        let storage_counters = Arc::new(StorageCounters::default());
        let storage =
            StorageWorker::start(config.node_id, store, config.write_mode, storage_counters.clone());
        let routes: Routes<SM> = Arc::default();
        let dropped_inbound = Arc::new(AtomicU64::new(0));
        let (liveness, _) = watch::channel(liveness_feed::PeerLiveness::default());
        let transport = match peer_listener {
            None => None,
            Some(listener) => {
                let (r, dropped) = (routes.clone(), dropped_inbound.clone());
                let spoofed = Arc::new(AtomicU64::new(0));
                let sink: InboundSink<Message> = Arc::new(move |from, group, message| {
                    // A connection speaks for the node it authenticated as
                    // (its Hello, checked against its certificate under
                    // TLS): a message claiming another sender would let one
                    // node's key forge another's votes and acknowledgements.
                    if message.from != from {
                        let n = spoofed.fetch_add(1, Ordering::Relaxed) + 1;
                        dropped.fetch_add(1, Ordering::Relaxed);
                        if n.is_power_of_two() {
                            tracing::warn!(
                                peer = from,
                                claimed = message.from,
                                dropped = n,
                                "dropped a peer message that claims another sender"
                            );
                        }
                        return;
                    }
                    // Never blocks the connection reader: a full or unknown
                    // group drops the message and Raft retransmits.
                    let delivered = r
                        .read()
                        .ok()
                        .and_then(|routes| {
                            routes.get(&group).map(|tx| tx.try_send(GroupInput::Message(message)).is_ok())
                        })
                        .unwrap_or(false);
                    if !delivered {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                });
                let mut tc = TransportConfig::new(config.node_id, config.cluster_id, peers);
                tc.stranger_reply = config.peer_port_stranger_reply.clone();
                tc.probe_state = config.probe_state.clone();
                tc.security = config.peer_security.clone();
                // Heartbeats keep a healthy pair busy: never time a
                // connection out within a few of them, however slow they are.
                let heartbeat_ms = probe.heartbeat_interval_ns / 1_000_000;
                tc.idle_timeout_ms =
                    tc.idle_timeout_ms.max(heartbeat_ms.saturating_mul(PEER_IDLE_TIMEOUT_HEARTBEATS));
                // Node-level liveness must suspect a dead peer well within
                // an election timeout (a quiescent group's failover waits
                // for it): at most two thirds of it, pinged four times.
                let election_ms = probe.election_timeout_min_ns / 1_000_000;
                tc.suspect_after_ms = tc.suspect_after_ms.min((election_ms * 2 / 3).max(4));
                tc.ping_interval_ms = tc.ping_interval_ms.min(tc.suspect_after_ms / 4).max(1);
                tc.coalesce_heartbeats = !config.heartbeat_coalesce.is_zero();
                let needed = max_peer_message_bytes_of(&probe);
                if needed > tc.max_frame_bytes {
                    return Err(DriverError::Config {
                        group: 0,
                        reason: format!(
                            "a peer message under this configuration can be {needed} bytes (max_size_per_msg_bytes {} + max_entry_bytes {} + overhead), more than the peer frame limit {}; lower them",
                            probe.max_size_per_msg_bytes, probe.max_entry_bytes, tc.max_frame_bytes
                        ),
                    });
                }
                let transport = Transport::start(tc, listener, sink)?;
                // Node-level liveness, shared by all groups: a change goes to
                // every group through the watch each group task polls (a
                // bounded queue would drop it for a busy group).
                let feed = liveness.clone();
                transport.set_liveness_sink(Arc::new(move |peer, alive| {
                    feed.send_modify(|l| l.record(peer, alive));
                }));
                Some(transport)
            }
        };
        let coalesce_quantum =
            effective_coalesce_quantum(&probe, config.heartbeat_coalesce).as_nanos() as u64;
        Ok(Node {
            inner: Arc::new(NodeInner {
                config,
                storage,
                transport,
                routes,
                handles: RwLock::default(),
                origin: Instant::now(),
                coalesce_quantum,
                storage_counters,
                dropped_inbound,
                liveness,
                role_log: Arc::new(role_log::RoleLog::new()),
            }),
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.config.node_id
    }

    /// Starts group `group` with the given state machine. `membership` is the
    /// initial configuration of a brand-new group; a group found in storage
    /// recovers its own.
    pub async fn add_group(
        &self,
        group: GroupId,
        membership: Membership,
        sm: SM,
    ) -> Result<GroupHandle<SM>, DriverError> {
        let rejoin = self.inner.config.raft.rejoin_after_data_loss;
        self.add_group_with(group, membership, sm, rejoin).await
    }

    /// [`Node::add_group`], but with the core's `rejoin_after_data_loss`
    /// chosen for this group (rather than the node's template): a server
    /// learns only after its transport runs whether its empty data
    /// directory lost a history (`transport::probe`).
    pub async fn add_group_with(
        &self,
        group: GroupId,
        membership: Membership,
        mut sm: SM,
        rejoin_after_data_loss: bool,
    ) -> Result<GroupHandle<SM>, DriverError> {
        if self.handles_read().contains_key(&group) {
            return Err(DriverError::GroupExists { group });
        }
        let (reply, rx) = oneshot::channel();
        let node = self.inner.config.node_id;
        let (done, done_rx) = mpsc::unbounded_channel();
        let initial = membership.clone();
        if !self.inner.storage.submit(StorageRequest::Open { group, initial, done, reply }) {
            return Err(DriverError::ShuttingDown { node });
        }
        let recovered = rx.await.map_err(|_| DriverError::ShuttingDown { node })??;
        let recovered_snapshot = recovered.snapshot.as_ref().map_or(LogId::ZERO, |m| m.last_log_id);
        // The state machine starts from the stored snapshot (the core takes
        // everything up to it as applied), then the log tail is replayed.
        let (applied_log_id, applied_membership) = match &recovered.snapshot {
            Some(meta) => {
                if sm.applied_index() < meta.last_log_id.index {
                    self.restore(group, meta.last_log_id, &mut sm).await?;
                }
                (meta.last_log_id, meta.membership.clone())
            }
            None => (LogId::ZERO, membership),
        };
        let mut raft = self.inner.config.raft.clone();
        raft.id = node;
        raft.rejoin_after_data_loss = rejoin_after_data_loss;
        raft.seed ^= group.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let raw = RawNode::new(raft, recovered)
            .map_err(|e| DriverError::Config { group, reason: e.to_string() })?;
        let (tx, inputs) = mpsc::channel(self.inner.config.group_queue_capacity);
        let initial = GroupInfo {
            group,
            node_id: node,
            role: raw.role(),
            term: raw.term(),
            leader: raw.leader(),
            commit: raw.commit_index(),
            applied: sm.applied_index(),
            last_log_id: raw.last_log_id(),
            snapshot: recovered_snapshot,
            quiescent: false,
            stopped: false,
            error: None,
        };
        let (info_tx, info) = watch::channel(initial);
        let (snap_tx, snap_rx) = mpsc::unbounded_channel();
        let counters = Arc::new(GroupCounters::default());
        let io = TokioGroupIo {
            group,
            storage: self.inner.storage.clone(),
            transport: self.inner.transport.clone(),
            origin: self.inner.origin,
            snap_tx,
            counters: counters.clone(),
            role_log: self.inner.role_log.clone(),
        };
        // Ids unique per boot (sim seed 950024272): the wall clock in the high bits.
        let boot = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let exec = GroupExecutor::new(
            group,
            raw,
            sm,
            io,
            counters.clone(),
            applied_log_id,
            applied_membership,
            recovered_snapshot,
        )
        .with_id_base(executor::boot_id_base(boot));
        let task = GroupTask {
            node_id: node,
            exec,
            inputs,
            done_rx,
            snap_rx,
            origin: self.inner.origin,
            info: info_tx,
            tick_interval: self.inner.config.tick_interval,
            coalesce_quantum: self.inner.coalesce_quantum,
            counters: counters.clone(),
            seen_leader: None,
            liveness: self.inner.liveness.subscribe(),
            liveness_seen: self.inner.liveness.borrow().seq(),
        };
        let handle = GroupHandle { group, tx: tx.clone(), info, counters };
        let mut handles = self.inner.handles.write().map_err(|_| DriverError::ShuttingDown { node })?;
        if handles.contains_key(&group) {
            return Err(DriverError::GroupExists { group });
        }
        let join = tokio::spawn(task.run());
        handles.insert(group, (handle.clone(), join));
        if let Ok(mut routes) = self.inner.routes.write() {
            routes.insert(group, tx);
        }
        Ok(handle)
    }

    /// Streams the group's stored snapshot into `sm` (decoded on a blocking
    /// thread; the checksum of the whole file is checked before the state
    /// is replaced).
    async fn restore(&self, group: GroupId, snapshot: LogId, sm: &mut SM) -> Result<(), DriverError> {
        let node = self.inner.config.node_id;
        let fail = |reason: String| DriverError::Restore { group, reason };
        let mut restore = sm.snapshot_restore().ok_or_else(|| {
            fail("the group has a snapshot but the state machine cannot restore one".into())
        })?;
        let (reply, rx) = oneshot::channel();
        if !self.inner.storage.submit(StorageRequest::SnapshotSource { group, reply }) {
            return Err(DriverError::ShuttingDown { node });
        }
        let source = rx.await.map_err(|_| DriverError::ShuttingDown { node })??;
        let mut source = source.ok_or_else(|| fail("the snapshot disappeared".into()))?;
        if source.meta().last_log_id != snapshot {
            let found = source.meta().last_log_id;
            return Err(fail(format!(
                "the stored snapshot changed from {snapshot} to {found} while opening"
            )));
        }
        let installer = tokio::task::spawn_blocking(move || {
            while let Some((chunk, _)) =
                source.next_chunk(group::RESTORE_READ_BYTES).map_err(|e| e.to_string())?
            {
                restore.push(&chunk)?;
            }
            restore.finish()
        })
        .await
        .map_err(|e| fail(format!("restore task panicked: {e}")))?
        .map_err(fail)?;
        installer(sm);
        Ok(())
    }

    /// Stops group `group` on this node and deletes its data (log, hard
    /// state, snapshots) durably: adding it again starts it empty.
    pub async fn remove_group(&self, group: GroupId) -> Result<(), DriverError> {
        self.stop_group(group).await?;
        let (reply, rx) = oneshot::channel();
        let node = self.inner.config.node_id;
        if !self.inner.storage.submit(StorageRequest::Close { group, reply }) {
            return Err(DriverError::ShuttingDown { node });
        }
        rx.await.map_err(|_| DriverError::ShuttingDown { node })??;
        Ok(())
    }

    async fn stop_group(&self, group: GroupId) -> Result<(), DriverError> {
        if let Ok(mut routes) = self.inner.routes.write() {
            routes.remove(&group);
        }
        let entry = self.inner.handles.write().ok().and_then(|mut h| h.remove(&group));
        let Some((handle, join)) = entry else { return Err(DriverError::NoSuchGroup { group }) };
        let _ = handle.tx.send(GroupInput::Stop).await;
        let _ = join.await;
        Ok(())
    }

    fn handles_read(&self) -> BTreeMap<GroupId, GroupHandle<SM>> {
        self.inner
            .handles
            .read()
            .map(|h| h.iter().map(|(g, (handle, _))| (*g, handle.clone())).collect())
            .unwrap_or_default()
    }

    pub fn group(&self, group: GroupId) -> Option<GroupHandle<SM>> {
        self.inner.handles.read().ok()?.get(&group).map(|(h, _)| h.clone())
    }

    pub fn groups(&self) -> Vec<GroupId> {
        self.handles_read().into_keys().collect()
    }

    /// The peer transport, to add, move or remove peers while the node runs
    /// (`None` without a peer listener).
    pub fn transport(&self) -> Option<Transport<Message>> {
        self.inner.transport.clone()
    }

    pub fn transport_stats(&self) -> Option<Arc<TransportStats>> {
        self.inner.transport.as_ref().map(|t| t.stats())
    }

    pub fn storage_counters(&self) -> Arc<StorageCounters> {
        self.inner.storage_counters.clone()
    }

    /// Inbound peer messages dropped because their group was unknown or full.
    pub fn dropped_inbound(&self) -> u64 {
        self.inner.dropped_inbound.load(Ordering::Relaxed)
    }

    /// Stops every group, makes every write durable and closes the transport.
    pub async fn shutdown(&self) {
        for group in self.groups() {
            let _ = self.stop_group(group).await;
        }
        let (reply, rx) = oneshot::channel();
        if self.inner.storage.submit(StorageRequest::Flush { reply }) {
            let _ = rx.await;
        }
        if let Some(t) = &self.inner.transport {
            t.shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chain of limits with every default: the core's largest entry is
    /// storable, and a message carrying it fits a peer frame.
    #[test]
    fn defaults_form_one_chain_of_limits() {
        let raft = tarn_core::Config::new(1, 1);
        let storage = crate::storage::StorageConfig::new("/x", 1, 1);
        assert!(raft.max_entry_bytes <= storage.max_entry_size_bytes as usize);
        assert!(max_peer_message_bytes_of(&raft) <= crate::wire::MAX_FRAME_BYTES_DEFAULT);
    }

    /// The grid keeps a late heartbeat well inside the election timeout
    /// and the lease, whatever the configured quantum.
    #[test]
    fn the_coalescing_quantum_is_bounded_by_the_timing() {
        const MS: u64 = 1_000_000;
        let raft = tarn_core::Config::new(1, 1);
        let q = |raft: &tarn_core::Config, ms| effective_coalesce_quantum(raft, Duration::from_millis(ms));
        assert_eq!(q(&raft, 10), Duration::from_millis(10), "the default stands under the default timing");
        assert_eq!(q(&raft, 0), Duration::ZERO, "off stays off");
        assert_eq!(q(&raft, 1_000), Duration::from_nanos(raft.heartbeat_interval_ns / 4));
        let mut tight = raft.clone();
        tight.heartbeat_interval_ns = 100 * MS;
        tight.election_timeout_min_ns = 120 * MS;
        tight.election_timeout_max_ns = 240 * MS;
        tight.lease_read = false;
        assert_eq!(q(&tight, 25), Duration::from_millis(10), "half the 20 ms gap to the election timeout");
        tight.lease_read = true;
        let lease_gap = tight.lease_duration_ns() - tight.heartbeat_interval_ns;
        assert_eq!(q(&tight, 25), Duration::from_nanos(lease_gap / 2), "and to the lease");
    }

    #[derive(Default)]
    struct Nothing(tarn_core::Index);

    impl StateMachine for Nothing {
        type Response = ();
        fn apply(&mut self, index: tarn_core::Index, _: &Bytes) {
            self.0 = index;
        }
        fn apply_noop(&mut self, index: tarn_core::Index) {
            self.0 = index;
        }
        fn applied_index(&self) -> tarn_core::Index {
            self.0
        }
    }

    #[tokio::test]
    async fn a_core_entry_bound_above_storage_is_refused_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::open_sized(dir.path(), 1, 1, WriteMode::Sync, 1000, 64 << 10).expect("open");
        let mut config = NodeConfig::new(1, 1);
        config.raft.max_entry_bytes = 1 << 20;
        let err =
            Node::<Nothing>::start(config, Box::new(store), None, BTreeMap::new()).err().expect("refused");
        let text = err.to_string();
        assert!(
            text.contains("max_entry_bytes 1048576 exceeds the storage engine's max_entry_size_bytes 32768"),
            "{text}"
        );
    }
}
