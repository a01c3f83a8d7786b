//! A tarn server: one node of a cluster, hosting one or more DtKV groups,
//! serving clients on its client port and peers on its peer port.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tarn_core::{GroupId, Membership, Nanos, NodeId, Role};
use tarn_io::driver::{
    FileStore, GroupHandle, LogStore, MemStore, Node, NodeConfig, ProposeError, ProposeFn, ReadFn, WriteMode,
};
use tarn_io::transport::probe::ProbeState;
use tarn_io::wire::{self, FrameDecoder};
use tarn_kv::{KvConfig, Request};
use tarn_service::admission::AdmissionLimits;
use tarn_service::{ConnWatches, FrameSink, GroupPort, KvHost, PathMetrics, RequestPath};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

mod first_start;
mod join;
mod metrics;
mod metrics_http;

use crate::machine::KvMachine;
use crate::protocol::{
    ClientFrame, GroupStatus, MemberChange, NodeStatus, RequestBody, ResponseBody, ServerError, ServerFrame,
    DEFAULT_GROUP, MAX_CLIENT_FRAME_BYTES, MAX_GROUPS_PER_REQUEST,
};
use crate::security::auth::ConnAuth;
use crate::security::ServerSecurity;

/// Default client address of `tarn serve`.
pub const DEFAULT_CLIENT_ADDR: &str = "127.0.0.1:7700";
/// Default data directory of `tarn serve`.
pub const DEFAULT_DATA_DIR: &str = "./tarn-data";

/// Everything a server needs to start. Build with [`ServerConfig::single`]
/// or [`ServerConfig::cluster`], adjust fields, then [`Server::start`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    /// Where clients connect (port 0 picks a free port; see [`Server::client_addr`]).
    pub client_addr: SocketAddr,
    /// Where peers connect; `None` for a single node without peers.
    pub peer_addr: Option<SocketAddr>,
    /// Every voter of the cluster and its peer address (this node included);
    /// empty for a single node.
    pub cluster: BTreeMap<NodeId, SocketAddr>,
    /// Identifies the cluster; derived from `cluster` when `None`.
    pub cluster_id: Option<u64>,
    pub write_mode: WriteMode,
    /// Election timeout lower bound; the upper bound is twice this.
    pub election_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
    /// Quiescence (issue 17, the core's `Config::quiesce`): idle groups stop
    /// ticking and heartbeating; the peer transport's node-level liveness
    /// wakes the followers of a dead leader. On by default.
    pub quiesce: bool,
    /// Coalesced heartbeats (issue 17, the driver's
    /// `NodeConfig::heartbeat_coalesce`): every group's timers run on a
    /// node-wide grid of this many milliseconds, so the heartbeats of all
    /// groups to one peer travel as one frame per grid tick. 0: off (also
    /// the setting for a rolling upgrade from a build without it, whose
    /// nodes cannot read the batch frame). Default 10.
    pub heartbeat_coalesce_ms: u64,
    pub kv: KvConfig,
    /// Use an in-memory log store instead of the data directory (tests and
    /// `--embedded` benchmarks only: nothing survives a restart).
    pub in_memory: bool,
    /// Take a snapshot (and compact the log behind it) after this many
    /// applied entries or this many applied entry bytes, whichever first;
    /// keep `log_keep_tail_entries` entries before it for slow followers.
    pub snapshot_after_entries: u64,
    pub snapshot_after_bytes: u64,
    pub log_keep_tail_entries: u64,
    /// Size of each log segment file (compaction deletes whole segments).
    pub segment_size_bytes: u64,
    /// Join a running cluster through these client endpoints instead of
    /// bootstrapping one: the cluster id and the peers' addresses come from
    /// them, group 1 starts with no members (the node waits to be added with
    /// `tarn member add <id> <peer-addr> --learner`, then promoted), and the
    /// core's `rejoin_after_data_loss` keeps it from voting until a committed
    /// configuration lists it as a non-voter (so re-joining with a wiped data
    /// dir is safe too). Give it on every start of a joined node.
    pub join: Option<Vec<SocketAddr>>,
    /// The largest Raft entry (the core's `max_entry_bytes`): admission packs
    /// client writes into entries under it and refuses a request that alone
    /// exceeds it. Lowered at start to what the log segments can store; at
    /// most [`MAX_CLIENT_ENTRY_BYTES`] so such a request still fits a client
    /// frame and gets an answer. Every node of a cluster must use one value.
    pub max_entry_bytes: usize,
    /// Bounds on client connections (memory per connection, their number).
    pub connections: ConnectionLimits,
    /// Where to serve `GET /metrics` (Prometheus text format); `None`: no
    /// metrics endpoint. Port 0 picks a free port (see [`Server::metrics_addr`]).
    pub metrics_addr: Option<SocketAddr>,
    /// TLS on the client and peer ports, client authentication and roles
    /// (default: none, for the loopback quick start).
    pub security: ServerSecurity,
}

/// Bounds on the client port: every per-connection buffer and queue is
/// bounded, so neither many connections nor a client that never reads its
/// answers can grow the server without limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Client connections open at once; more are closed at accept, with a
    /// log line (and `client_connections_refused` counts them).
    pub max_connections: usize,
    /// Answers waiting for one client (requests read but not yet taken by
    /// the connection's writer). At the bound the server stops reading that
    /// connection until its answers drain (backpressure).
    pub max_pending_replies_per_connection: usize,
    /// A connection held at that bound this long (its client does not read)
    /// is closed, as is a writer stuck this long on a connection that ended.
    pub slow_client_timeout: Duration,
    /// A connection with no request, no pending answer and no watch for this
    /// long is closed (also clears half-open connections of vanished clients).
    pub idle_timeout: Duration,
    /// Bytes of large requests (frames over [`LARGE_REQUEST_BYTES`]) the
    /// server buffers at once, over all connections. A connection whose next
    /// frame is large waits (is not read) until the budget has room for the
    /// whole frame, so many clients each sending 16 MiB frames cannot hold
    /// more than this; one held at the wait for `slow_client_timeout` is
    /// closed. At least one maximal client frame.
    pub max_large_request_bytes: usize,
}

/// A request frame at least this large is buffered against
/// [`ConnectionLimits::max_large_request_bytes`]; smaller ones only against
/// their connection's bounds.
pub const LARGE_REQUEST_BYTES: usize = 1 << 20;

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            // Each open client connection costs about 150 KiB resident
            // (tasks, decoder, socket bookkeeping), so this many stay well
            // inside the stated 512 MiB (ARCHITECTURE.md, "The chain of limits").
            max_connections: 2_000,
            // Above `tarn bench`'s 2,000 requests in flight on one connection.
            max_pending_replies_per_connection: 8192,
            slow_client_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
            // Eight maximal frames at once; with 2,000 connections at about
            // 150 KiB each, within the stated 512 MiB.
            max_large_request_bytes: 128 << 20,
        }
    }
}

/// Bytes a client frame adds around the request that becomes an entry's
/// only request (frame id, group, body tag, session fields).
pub const CLIENT_FRAME_OVERHEAD_BYTES: usize = 64;

/// The largest `max_entry_bytes` a server accepts: a client request that
/// can produce a maximal entry must fit a client frame, so the server can
/// answer it (a frame over the bound only closes the connection).
pub const MAX_CLIENT_ENTRY_BYTES: usize = MAX_CLIENT_FRAME_BYTES - CLIENT_FRAME_OVERHEAD_BYTES;

// The default chain: the core's default entry fits a client frame.
const _: () = assert!(tarn_core::MAX_ENTRY_BYTES_DEFAULT <= MAX_CLIENT_ENTRY_BYTES);

/// Why a server refused to start. Each names what to change.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr} for {what}: {source} (is another tarn or program using it? pick another with --{flag})")]
    Bind { addr: SocketAddr, what: &'static str, flag: &'static str, source: std::io::Error },
    #[error("data directory {dir}: {reason}")]
    DataDir { dir: PathBuf, reason: String },
    #[error(transparent)]
    Driver(#[from] tarn_io::driver::DriverError),
}

impl ServerConfig {
    /// A single node (id 1) without peers.
    pub fn single(data_dir: impl Into<PathBuf>, client_addr: SocketAddr) -> Self {
        ServerConfig {
            node_id: 1,
            data_dir: data_dir.into(),
            client_addr,
            peer_addr: None,
            cluster: BTreeMap::new(),
            cluster_id: None,
            write_mode: WriteMode::Sync,
            election_timeout_ms: 300,
            heartbeat_interval_ms: 50,
            quiesce: true,
            heartbeat_coalesce_ms: tarn_io::driver::HEARTBEAT_COALESCE_DEFAULT.as_millis() as u64,
            kv: KvConfig::default(),
            in_memory: false,
            snapshot_after_entries: 100_000,
            snapshot_after_bytes: tarn_io::driver::DEFAULT_SNAPSHOT_AFTER_BYTES,
            log_keep_tail_entries: 10_000,
            segment_size_bytes: 64 << 20,
            join: None,
            max_entry_bytes: tarn_core::MAX_ENTRY_BYTES_DEFAULT,
            connections: ConnectionLimits::default(),
            metrics_addr: None,
            security: ServerSecurity::default(),
        }
    }

    /// Node `node_id` of `cluster`; listens for peers on its own entry.
    pub fn cluster(
        node_id: NodeId,
        data_dir: impl Into<PathBuf>,
        client_addr: SocketAddr,
        cluster: BTreeMap<NodeId, SocketAddr>,
    ) -> Self {
        let peer_addr = cluster.get(&node_id).copied();
        ServerConfig { node_id, peer_addr, cluster, ..ServerConfig::single(data_dir, client_addr) }
    }

    /// The voters of the initial group (none for a joining node: it waits to be added).
    pub fn voters(&self) -> Vec<NodeId> {
        if self.join.is_some() {
            Vec::new()
        } else if self.cluster.is_empty() {
            vec![self.node_id]
        } else {
            self.cluster.keys().copied().collect()
        }
    }

    /// The cluster id: explicit, or a hash of the cluster's ids and addresses.
    pub fn effective_cluster_id(&self) -> u64 {
        if let Some(id) = self.cluster_id {
            return id;
        }
        // FNV-1a over a canonical text: stable across builds and platforms.
        let text = if self.cluster.is_empty() {
            format!("single:{}", self.node_id)
        } else {
            self.cluster.iter().map(|(id, a)| format!("{id}={a}")).collect::<Vec<_>>().join(",")
        };
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    }

    /// Checks what can be checked without touching the network or the disk.
    pub fn validate(&self) -> Result<(), StartError> {
        let bad = |s: String| Err(StartError::Config(s));
        if self.connections.max_large_request_bytes < MAX_CLIENT_FRAME_BYTES + wire::FRAME_LEN_BYTES {
            return bad(format!(
                "max_large_request_bytes {} is below one maximal client frame ({} bytes): such a request could never be read",
                self.connections.max_large_request_bytes,
                MAX_CLIENT_FRAME_BYTES + wire::FRAME_LEN_BYTES
            ));
        }
        if self.node_id == 0 {
            return bad("--id 0 is reserved; node ids start at 1".into());
        }
        if let Some(endpoints) = &self.join {
            if endpoints.is_empty() {
                return bad("--join needs --endpoints: client addresses of the running cluster".into());
            }
            if !self.cluster.is_empty() {
                return bad("--join and --cluster exclude each other: a joining node learns the cluster from --endpoints".into());
            }
            match self.peer_addr {
                None => return bad("--join needs --peer: the address other nodes connect to".into()),
                Some(peer) if peer == self.client_addr && peer.port() != 0 => {
                    return bad(format!("--client and --peer are both {peer}; use two ports"));
                }
                Some(_) => {}
            }
        }
        if !self.cluster.is_empty() {
            if !self.cluster.contains_key(&self.node_id) {
                let ids: Vec<String> = self.cluster.keys().map(|i| i.to_string()).collect();
                return bad(format!(
                    "--id {} is not in --cluster (members: {}); add it or pick one of those ids",
                    self.node_id,
                    ids.join(",")
                ));
            }
            if self.cluster.contains_key(&0) {
                return bad("--cluster contains node id 0; node ids start at 1".into());
            }
            let Some(peer) = self.peer_addr else {
                return bad("a cluster member needs --peer (its address in --cluster)".into());
            };
            if self.cluster[&self.node_id] != peer && peer.port() != 0 {
                return bad(format!(
                    "--peer {peer} differs from this node's address in --cluster ({}); they must match",
                    self.cluster[&self.node_id]
                ));
            }
            if peer == self.client_addr && peer.port() != 0 {
                return bad(format!("--client and --peer are both {peer}; use two ports"));
            }
        }
        if self.election_timeout_ms > MAX_TIMING_MS {
            return bad(format!(
                "election timeout of {} ms is out of range; the longest accepted is {MAX_TIMING_MS} ms (1 hour)",
                self.election_timeout_ms
            ));
        }
        if self.heartbeat_interval_ms == 0 || self.election_timeout_ms <= self.heartbeat_interval_ms {
            return bad(format!(
                "election timeout ({} ms) must exceed the heartbeat interval ({} ms), typically 3-10x",
                self.election_timeout_ms, self.heartbeat_interval_ms
            ));
        }
        if self.max_entry_bytes == 0 || self.max_entry_bytes > MAX_CLIENT_ENTRY_BYTES {
            return bad(format!(
                "max_entry_bytes {} is out of range; it must be in 1..={MAX_CLIENT_ENTRY_BYTES} so a request that fills an entry fits a client frame ({MAX_CLIENT_FRAME_BYTES} bytes)",
                self.max_entry_bytes
            ));
        }
        let c = &self.connections;
        if c.max_connections == 0 || c.max_pending_replies_per_connection == 0 {
            return bad(
                "connection limits (max_connections, max_pending_replies_per_connection) must be > 0".into(),
            );
        }
        if c.max_pending_replies_per_connection > tokio::sync::Semaphore::MAX_PERMITS {
            return bad(format!(
                "max_pending_replies_per_connection {} is above {}",
                c.max_pending_replies_per_connection,
                tokio::sync::Semaphore::MAX_PERMITS
            ));
        }
        if c.slow_client_timeout.is_zero() || c.idle_timeout.is_zero() {
            return bad("slow_client_timeout and idle_timeout must be > 0".into());
        }
        self.kv.validate().map_err(StartError::Config)?;
        Ok(())
    }

    fn node_config(&self) -> NodeConfig {
        let mut c = NodeConfig::new(self.node_id, self.effective_cluster_id());
        // `validate` refuses values whose nanoseconds overflow; saturate
        // rather than wrap if it was skipped.
        c.raft.election_timeout_min_ns = self.election_timeout_ms.saturating_mul(MS_NANOS);
        c.raft.election_timeout_max_ns = self.election_timeout_ms.saturating_mul(2 * MS_NANOS);
        c.raft.heartbeat_interval_ns = self.heartbeat_interval_ms.saturating_mul(MS_NANOS);
        c.raft.quiesce = self.quiesce;
        c.heartbeat_coalesce = Duration::from_millis(self.heartbeat_coalesce_ms.min(MAX_TIMING_MS));
        c.raft.snapshot_after_entries = self.snapshot_after_entries;
        c.raft.snapshot_after_bytes = self.snapshot_after_bytes;
        c.raft.log_keep_tail_entries = self.log_keep_tail_entries;
        c.raft.max_entry_bytes = self.max_entry_bytes;
        c.write_mode = self.write_mode;
        c
    }
}

const MS_NANOS: Nanos = 1_000_000;
/// Longest election timeout (and so heartbeat) a server accepts: far above
/// any useful value, and far below where ms → ns conversions overflow.
const MAX_TIMING_MS: u64 = 3_600_000;

// ----- data directory identity and group list -------------------------------------------

const IDENTITY_FILE: &str = "tarn-node.id";
const GROUPS_FILE: &str = "tarn-groups";

/// Writes `bytes` to `dir/name` atomically (temp file, fsync, rename, fsync dir).
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Creates the data dir or checks that it belongs to this node and cluster.
/// Checks the identity file against `config`. `Ok(false)`: there is none
/// yet (write it with [`write_identity`] once the start is decided).
fn check_identity(config: &ServerConfig) -> Result<bool, StartError> {
    let dir = &config.data_dir;
    let err = |reason: String| StartError::DataDir { dir: dir.clone(), reason };
    std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create it: {e}")))?;
    let want = format!("node_id={}\ncluster_id={:#x}\n", config.node_id, config.effective_cluster_id());
    match std::fs::read_to_string(dir.join(IDENTITY_FILE)) {
        Ok(found) if found == want => Ok(true),
        Ok(found) => {
            let field = |key: &str| {
                found
                    .lines()
                    .find_map(|l| l.strip_prefix(key))
                    .map(str::to_string)
                    .unwrap_or_else(|| "?".into())
            };
            let (node, cluster) = (field("node_id="), field("cluster_id="));
            if node != config.node_id.to_string() {
                Err(err(format!(
                    "it belongs to node {node}, not node {}; use that node's --id or another --data-dir",
                    config.node_id
                )))
            } else {
                Err(err(format!(
                    "it belongs to cluster {cluster}, not {:#x} (the --cluster list changed?); use the original --cluster, pass --cluster-id {cluster}, or another --data-dir",
                    config.effective_cluster_id()
                )))
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(err(format!("cannot read {IDENTITY_FILE}: {e}"))),
    }
}

/// Writes the identity file: from now on the directory is this node's, and
/// its first start is decided (see `first_start`).
fn write_identity(config: &ServerConfig) -> Result<(), StartError> {
    let dir = &config.data_dir;
    let want = format!("node_id={}\ncluster_id={:#x}\n", config.node_id, config.effective_cluster_id());
    write_atomic(dir, IDENTITY_FILE, want.as_bytes())
        .map_err(|e| StartError::DataDir { dir: dir.clone(), reason: format!("cannot write identity: {e}") })
}

fn load_groups(config: &ServerConfig) -> Result<BTreeMap<GroupId, Vec<NodeId>>, StartError> {
    let dir = &config.data_dir;
    let err = |reason: String| StartError::DataDir { dir: dir.clone(), reason };
    let text = match std::fs::read_to_string(dir.join(GROUPS_FILE)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok([(DEFAULT_GROUP, config.voters())].into());
        }
        Err(e) => return Err(err(format!("cannot read {GROUPS_FILE}: {e}"))),
    };
    let mut groups = BTreeMap::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad =
            || err(format!("{GROUPS_FILE} line {}: expected `group voter,voter,...`, got {line:?}", n + 1));
        // `group` alone: a group this node joined (no initial voters).
        let (g, voters) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        let g: GroupId = g.parse().map_err(|_| bad())?;
        let voters: Vec<NodeId> = if voters.trim().is_empty() {
            Vec::new()
        } else {
            voters.split(',').map(|v| v.trim().parse()).collect::<Result<_, _>>().map_err(|_| bad())?
        };
        groups.insert(g, voters);
    }
    Ok(groups)
}

fn save_groups(dir: &Path, groups: &BTreeMap<GroupId, Vec<NodeId>>) -> std::io::Result<()> {
    let mut text = String::new();
    for (g, voters) in groups {
        let v: Vec<String> = voters.iter().map(|v| v.to_string()).collect();
        text.push_str(&format!("{g} {}\n", v.join(",")));
    }
    write_atomic(dir, GROUPS_FILE, text.as_bytes())
}

/// The log store for `config`: the storage engine in the data directory.
fn open_store(config: &ServerConfig) -> Result<Box<dyn LogStore>, StartError> {
    if config.in_memory {
        return Ok(Box::new(MemStore::new()));
    }
    let store = FileStore::open_sized(
        &config.data_dir,
        config.effective_cluster_id(),
        config.node_id,
        config.write_mode,
        config.node_config().raft.max_log_tail_entries,
        config.segment_size_bytes,
    )
    .map_err(|e| StartError::DataDir { dir: config.data_dir.clone(), reason: e.kind.to_string() })?
    .with_max_tail_bytes(config.node_config().raft.max_log_tail_bytes);
    Ok(Box::new(store))
}

// ----- the running server ---------------------------------------------------------------

/// Counters readable while the server runs (shown by `tarn status`,
/// exported on `/metrics`).
#[derive(Debug, Default)]
pub struct ServerCounters {
    /// Client connections accepted.
    pub client_connections: AtomicU64,
    /// Client requests read (every kind).
    pub requests: AtomicU64,
    /// Write requests read.
    pub writes: AtomicU64,
    /// Read requests read.
    pub reads: AtomicU64,
    /// Raft entries proposed for client writes (each carries one or more).
    pub proposals: AtomicU64,
    /// Frames that did not decode (the connection is closed).
    pub bad_frames: AtomicU64,
    /// Requests answered `NotLeader`.
    pub not_leader: AtomicU64,
    /// Error answers sent, by [`ServerError::kind_index`].
    pub errors: [AtomicU64; ServerError::KINDS.len()],
    /// Bytes read from client connections.
    pub client_bytes_received: AtomicU64,
    /// Bytes written to client connections.
    pub client_bytes_sent: AtomicU64,
    /// From reading a write request to its answer being queued (proposal,
    /// commit and apply included), per request.
    pub write_seconds: tarn_io::driver::Histogram,
    /// From reading a read request to running it on the state machine
    /// (a linearizable read includes its ReadIndex or lease check).
    pub read_seconds: tarn_io::driver::Histogram,
    /// Client connections open now (a gauge).
    pub client_connections_open: AtomicU64,
    /// Connections closed at accept: `ConnectionLimits::max_connections` reached.
    pub client_connections_refused: AtomicU64,
    /// Client connections whose TLS handshake failed (plaintext client,
    /// wrong CA, missing client certificate).
    pub client_tls_refusals: AtomicU64,
    /// `Authenticate` requests with an unknown or revoked token.
    pub client_auth_refusals: AtomicU64,
    /// Answers queued for clients now, over all connections (a gauge; each
    /// connection holds at most `max_pending_replies_per_connection`).
    pub client_queued_replies: AtomicU64,
    /// Times a connection's reader paused because its answer queue was full.
    pub client_backpressure: AtomicU64,
    /// Connections closed because their client did not read its answers.
    pub client_slow_disconnects: AtomicU64,
    /// Connections closed as idle.
    pub client_idle_disconnects: AtomicU64,
    /// Times a connection waited for room in the large-request budget
    /// (`ConnectionLimits::max_large_request_bytes`).
    pub client_large_request_waits: AtomicU64,
    /// Bytes of large requests buffered now (a gauge).
    pub client_large_request_bytes: AtomicU64,
}

struct Shared {
    config: ServerConfig,
    cluster_id: u64,
    node: Node<KvMachine>,
    groups: Mutex<BTreeMap<GroupId, Vec<NodeId>>>,
    counters: Arc<ServerCounters>,
    /// The request path (writes, reads, watches) this node's connections feed.
    path: RequestPath<ServerCounters>,
    /// This node's peer address as bound (port 0 resolved).
    peer_addr: Option<SocketAddr>,
    /// Peers from `--cluster` or learned when joining: never forgotten by
    /// the directory reconciliation.
    base_peers: BTreeSet<NodeId>,
    /// Peer directory entries already warned about as malformed (each is
    /// logged once, not at every poll).
    malformed_directory_entries: Mutex<BTreeSet<String>>,
    /// What an undecided first start waits for (`None` once decided).
    first_start: Mutex<Option<String>>,
    /// The large-request budget in KiB (`ConnectionLimits::max_large_request_bytes`).
    large_requests: Arc<tokio::sync::Semaphore>,
}

/// How a connection's wait for room (an answer slot, large-request budget) ended.
enum Waited<P> {
    Got(P),
    /// The server stops, or the semaphore closed: end the connection.
    Stopped,
    /// `slow_client_timeout` passed (counted as a slow disconnect): the
    /// caller says why and ends the connection.
    TimedOut,
}

/// Waits for `room` at most `slow_client_timeout`, or until the server stops.
async fn wait_for_room<P>(
    room: impl std::future::Future<Output = Result<P, tokio::sync::AcquireError>>,
    shared: &Shared,
    stop: &mut watch::Receiver<bool>,
) -> Waited<P> {
    let wait = tokio::time::timeout(shared.config.connections.slow_client_timeout, room);
    match tokio::select! { r = wait => r, _ = stop.wait_for(|s| *s) => return Waited::Stopped } {
        Ok(Ok(p)) => Waited::Got(p),
        Ok(Err(_)) => Waited::Stopped,
        Err(_) => {
            shared.counters.client_slow_disconnects.fetch_add(1, Ordering::Relaxed);
            Waited::TimedOut
        }
    }
}

/// The answer for a request to group `g`, which does not run here. Until
/// the first start is decided no group runs yet: a passing state the client
/// waits out (`Unavailable`), not a missing group.
fn missing_group(shared: &Shared, g: GroupId) -> ServerError {
    match shared.first_start.lock().ok().and_then(|w| w.clone()) {
        Some(reason) => ServerError::Unavailable { reason },
        None => ServerError::NoSuchGroup { node: shared.config.node_id, group: g },
    }
}

/// Room held in the large-request budget for the frame a connection is
/// reading; given back (and the gauge lowered) when dropped.
struct LargeRequest {
    _permit: tokio::sync::OwnedSemaphorePermit,
    bytes: u64,
    shared: Arc<Shared>,
}

impl Drop for LargeRequest {
    fn drop(&mut self) {
        self.shared.counters.client_large_request_bytes.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// The first start of a `--cluster` node with an empty directory: decide
/// whether it may vote (`first_start`), make that durable, then start its
/// groups and keep its peers, as a start with a decided directory does at
/// once.
async fn first_start_then_run(
    shared: Arc<Shared>,
    incarnation: u64,
    probe_state: Arc<ProbeState>,
    mut stop: watch::Receiver<bool>,
) {
    let config = &shared.config;
    let node = config.node_id;
    let decision = tokio::select! {
        d = first_start::decide(config, incarnation, &shared.first_start) => d,
        _ = stop.wait_for(|s| *s) => return,
    };
    let recorded = first_start::record(config, &decision)
        .map_err(|e| e.to_string())
        .and_then(|()| write_identity(config).map_err(|e| e.to_string()));
    if let Err(e) = recorded {
        // Without a durable decision, starting could vote twice after a
        // crash: stay without groups, and say why.
        tracing::error!(node, error = %e, "cannot record the first start's decision; the node serves no group (fix the data directory and restart)");
        *shared.first_start.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(format!("first start could not be recorded: {e}"));
        return;
    }
    probe_state.decided(decision.born_with());
    match &decision {
        first_start::Decision::New(_) => tracing::info!(node, "first start: every peer is new too; a new cluster"),
        first_start::Decision::LateStart { peer, .. } => {
            tracing::info!(node, peer, "first start: node {peer} saw this directory at the cluster's birth; starting as a voter")
        }
        first_start::Decision::DataLost { peer } => tracing::warn!(
            node,
            peer,
            "this data directory is empty but node {peer} has a history: this node lost its data. It will not vote until \
             a committed configuration lists it as a non-voter: run `tarn member remove {node}`, then \
             `tarn member add {node} <peer-addr> --learner`, wait until `tarn status` no longer shows it rejoining, then promote it"
        ),
    }
    let rejoin = decision.rejoin();
    let groups = shared.groups.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for (g, voters) in groups {
        let membership = Membership::new_voters(voters.iter().copied());
        if let Err(e) =
            shared.node.add_group_with(g, membership, KvMachine::new(config.kv.clone()), rejoin).await
        {
            tracing::error!(node, group = g, error = %e, "cannot start group after the first start");
        }
    }
    *shared.first_start.lock().unwrap_or_else(|e| e.into_inner()) = None;
    join::maintain_peers(shared.clone(), rejoin, stop).await;
}

/// A running server. Stop it with [`Server::shutdown`].
pub struct Server {
    shared: Arc<Shared>,
    client_addr: SocketAddr,
    peer_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl Server {
    /// Validates the configuration, checks the data directory, binds both
    /// ports, recovers every group and starts serving.
    pub async fn start(config: ServerConfig) -> Result<Server, StartError> {
        config.validate()?;
        let (config, joined_peers) = match &config.join {
            Some(endpoints) => {
                let endpoints = endpoints.clone();
                join::learn_cluster(config, &endpoints).await?
            }
            None => (config, BTreeMap::new()),
        };
        // A `--cluster` node with an empty directory decides, by asking its
        // peers, whether it may vote (`first_start`); any other start is
        // decided at once.
        let mut probe_incarnation = None;
        let probe_state = if config.in_memory {
            ProbeState::default()
        } else {
            std::fs::create_dir_all(&config.data_dir).map_err(|e| StartError::DataDir {
                dir: config.data_dir.clone(),
                reason: format!("cannot create it: {e}"),
            })?;
            let decided = check_identity(&config)?;
            if !decided && config.join.is_none() && config.cluster.len() > 1 {
                let incarnation = first_start::incarnation(&config)?;
                probe_incarnation = Some(incarnation);
                ProbeState::fresh(incarnation)
            } else {
                if !decided {
                    write_identity(&config)?;
                }
                ProbeState::member(first_start::born_with(&config)?)
            }
        };
        let probe_state = Arc::new(probe_state);
        let client_listener = TcpListener::bind(config.client_addr).await.map_err(|source| {
            StartError::Bind { addr: config.client_addr, what: "clients", flag: "client", source }
        })?;
        let peer_listener = match config.peer_addr {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| StartError::Bind {
                addr,
                what: "peers",
                flag: "peer",
                source,
            })?),
            None => None,
        };
        let metrics_listener = match config.metrics_addr {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| StartError::Bind {
                addr,
                what: "metrics",
                flag: "metrics-addr",
                source,
            })?),
            None => None,
        };
        let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
        let client_addr = client_listener.local_addr().map_err(|e| StartError::Config(e.to_string()))?;
        let peer_addr = peer_listener.as_ref().and_then(|l| l.local_addr().ok());
        let groups =
            if config.in_memory { [(DEFAULT_GROUP, config.voters())].into() } else { load_groups(&config)? };
        let store = open_store(&config)?;
        let peers: BTreeMap<NodeId, SocketAddr> = config
            .cluster
            .iter()
            .chain(&joined_peers)
            .filter(|(id, _)| **id != config.node_id)
            .map(|(i, a)| (*i, *a))
            .collect();
        let base_peers = peers.keys().copied().collect();
        let mut node_config = config.node_config();
        // Until a committed configuration lists it as a non-voter, a joining
        // node must not vote: it may have voted before losing its data.
        let rejoin =
            (config.join.is_some() || first_start::rejoin_required(&config)) && !join::rejoined(&config);
        node_config.raft.rejoin_after_data_loss = rejoin;
        node_config.probe_state = probe_state.clone();
        node_config.peer_security = config.security.peer.clone();
        // A client pointed at the peer port reads this and gives up at once.
        let stranger =
            ServerFrame::Response { id: 0, result: Err(ServerError::PeerPort { node: config.node_id }) };
        node_config.peer_port_stranger_reply = wire::encode_frame_vec(&stranger, MAX_CLIENT_FRAME_BYTES).ok();
        // The chain of limits: an entry must be storable in this node's log
        // segments. Small segments (tests) lower the bound rather than let an
        // entry through that storage would refuse, stopping the group.
        if let Some(store_max) = store.max_entry_bytes() {
            if store_max < node_config.raft.max_entry_bytes {
                tracing::info!(
                    configured = node_config.raft.max_entry_bytes,
                    storage = store_max,
                    "max_entry_bytes lowered to what a log segment holds (segment_size_bytes / 2)"
                );
                node_config.raft.max_entry_bytes = store_max;
            }
        }
        let max_entry_bytes = node_config.raft.max_entry_bytes;
        let node = Node::start(node_config, store, peer_listener, peers)?;
        if probe_incarnation.is_none() {
            for (g, voters) in &groups {
                node.add_group(
                    *g,
                    Membership::new_voters(voters.iter().copied()),
                    KvMachine::new(config.kv.clone()),
                )
                .await?;
            }
        }
        tracing::info!(node = config.node_id, %client_addr, ?peer_addr, groups = groups.len(), "tarn server started");
        let large_requests =
            Arc::new(tokio::sync::Semaphore::new(config.connections.max_large_request_bytes.div_ceil(1024)));
        let counters = Arc::new(ServerCounters::default());
        // Admission packs under the core's `max_entry_bytes` as started.
        let path = RequestPath::new(
            config.node_id,
            config.kv.clone(),
            AdmissionLimits::new(max_entry_bytes),
            counters.clone(),
        );
        let shared = Arc::new(Shared {
            cluster_id: config.effective_cluster_id(),
            config,
            node,
            groups: Mutex::new(groups),
            counters,
            path,
            peer_addr,
            base_peers,
            malformed_directory_entries: Mutex::default(),
            first_start: Mutex::default(),
            large_requests,
        });
        let (stop, stop_rx) = watch::channel(false);
        if let Some(incarnation) = probe_incarnation {
            *shared.first_start.lock().unwrap_or_else(|e| e.into_inner()) =
                Some("first start: asking the peers whether this empty data directory may vote".into());
            tokio::spawn(first_start_then_run(shared.clone(), incarnation, probe_state, stop_rx.clone()));
        } else if shared.peer_addr.is_some() {
            tokio::spawn(join::maintain_peers(shared.clone(), rejoin, stop_rx.clone()));
        }
        if let (Some(listener), Some(addr)) = (metrics_listener, metrics_addr) {
            tracing::info!(node = shared.config.node_id, %addr, "serving GET /metrics");
            tokio::spawn(metrics_http::serve(shared.clone(), listener, stop_rx.clone()));
        }
        let accept = tokio::spawn(accept_clients(shared.clone(), client_listener, stop_rx));
        Ok(Server { shared, client_addr, peer_addr, metrics_addr, stop, accept })
    }

    /// Where `GET /metrics` is served, as bound (`None` without
    /// [`ServerConfig::metrics_addr`]).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The metrics `GET /metrics` serves now, in the Prometheus text format.
    pub async fn metrics_text(&self) -> String {
        metrics::render(&self.shared).await
    }

    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer_addr
    }

    pub fn node_id(&self) -> NodeId {
        self.shared.config.node_id
    }

    /// The group's handle, for in-process use (tests, embedded benchmarks).
    pub fn group(&self, group: GroupId) -> Option<GroupHandle<KvMachine>> {
        self.shared.node.group(group)
    }

    pub async fn status(&self) -> NodeStatus {
        node_status(&self.shared).await
    }

    /// Stops accepting clients, stops every group, syncs storage and closes
    /// the peer connections.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.accept.await;
        self.shared.node.shutdown().await;
        tracing::info!(node = self.shared.config.node_id, "tarn server stopped");
    }
}

async fn accept_clients(shared: Arc<Shared>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        match accepted {
            Ok((stream, addr)) => {
                let max = shared.config.connections.max_connections as u64;
                if shared.counters.client_connections_open.load(Ordering::Relaxed) >= max {
                    let refused = shared.counters.client_connections_refused.fetch_add(1, Ordering::Relaxed);
                    // One line per 1,000 refusals: a flood must not flood the log too.
                    if refused.is_multiple_of(1000) {
                        tracing::warn!(client = %addr, max_connections = max, refused = refused + 1,
                            "refusing a client connection: max_connections reached (raise it or find the client that leaks connections)");
                    }
                    drop(stream);
                    continue;
                }
                shared.counters.client_connections_open.fetch_add(1, Ordering::Relaxed);
                let _ = stream.set_nodelay(true);
                shared.counters.client_connections.fetch_add(1, Ordering::Relaxed);
                // Every line a connection logs says which node and client.
                let span = tracing::info_span!("client", node = shared.config.node_id, client = %addr);
                let (shared, stop) = (shared.clone(), stop.clone());
                // The TLS handshake runs on the connection's task, never in
                // the accept loop: a slow or silent client holds only itself.
                tokio::spawn(
                    async move {
                        let Some((stream, cert)) = secure_client(&shared, stream, addr).await else {
                            shared.counters.client_connections_open.fetch_sub(1, Ordering::Relaxed);
                            return;
                        };
                        serve_client(shared, stream, cert, addr, stop).await
                    }
                    .instrument(span),
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept on client port failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// A client's TLS handshake must finish within this time.
const CLIENT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the client port's TLS handshake when it has TLS; `None` when the
/// handshake failed (counted; logged at most once per 1,000 failures).
async fn secure_client(
    shared: &Shared,
    tcp: TcpStream,
    addr: SocketAddr,
) -> Option<(tarn_io::transport::stream::Stream, Option<rustls_pki_types::CertificateDer<'static>>)> {
    let Some(config) = &shared.config.security.client_tls else {
        return Some((tarn_io::transport::stream::Stream::Tcp(tcp), None));
    };
    // A TLS connection opens with a handshake record (0x16); anything else
    // is a plaintext client: tell it, in its own protocol, instead of just
    // closing (it would retry until its timeout).
    let mut first = [0u8; 1];
    if let Ok(Ok(1)) = tokio::time::timeout(CLIENT_TLS_HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await {
        if first[0] != 0x16 {
            shared.counters.client_tls_refusals.fetch_add(1, Ordering::Relaxed);
            let farewell = ServerFrame::Response {
                id: 0,
                result: Err(ServerError::Unauthenticated {
                    reason: "this client port requires TLS: pass --cacert (the cluster's CA certificate)"
                        .into(),
                }),
            };
            if let Ok(bytes) = wire::encode_frame_vec(&farewell, MAX_CLIENT_FRAME_BYTES) {
                let mut tcp = tcp;
                let _ = tcp.write_all(&bytes).await;
                let _ = tcp.shutdown().await;
            }
            tracing::debug!(client = %addr, "a plaintext client on the TLS client port; told it to use TLS");
            return None;
        }
    }
    let error = match tokio::time::timeout(
        CLIENT_TLS_HANDSHAKE_TIMEOUT,
        crate::security::tls::accept_client(config, tcp),
    )
    .await
    {
        Ok(Ok(secured)) => return Some(secured),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no TLS handshake within {} s", CLIENT_TLS_HANDSHAKE_TIMEOUT.as_secs()),
    };
    let refused = shared.counters.client_tls_refusals.fetch_add(1, Ordering::Relaxed);
    // One line per 1,000 refusals: a scan or a misconfigured client must not flood the log.
    if refused.is_multiple_of(1000) {
        tracing::warn!(client = %addr, error = %error, refused = refused + 1,
            "refusing a client connection: TLS handshake failed (a plaintext client, a wrong CA, or no client certificate where --tls-ca requires one); further ones are counted in tarn_client_tls_refusals");
    } else {
        tracing::debug!(client = %addr, error = %error, "client TLS handshake failed");
    }
    None
}

/// One flush to a client stops adding frames past this many bytes.
const MAX_CLIENT_WRITE_BATCH_BYTES: usize = 1024 * 1024;
/// Watch frames queued for one connection; past it a watch is cut off (the
/// client resumes from its last index), never the server's memory.
const MAX_QUEUED_WATCH_FRAMES_PER_CLIENT: usize = 1024;

/// What travels from the request path to one connection's writer.
type FrameTx = mpsc::UnboundedSender<ServerFrame>;

/// Per-connection accounting that bounds the reply queue. The reader takes
/// a permit per request before handling it; the writer returns it when it
/// takes the answer off the queue. So at most
/// `max_pending_replies_per_connection` answers wait for a client, and a
/// client that stops reading stops being read (backpressure).
struct ConnQueue {
    permits: tokio::sync::Semaphore,
    watch_frames: AtomicU64,
}

async fn serve_client(
    shared: Arc<Shared>,
    stream: tarn_io::transport::stream::Stream,
    client_cert: Option<rustls_pki_types::CertificateDer<'static>>,
    addr: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let mut auth = ConnAuth::new(shared.config.security.auth.clone(), client_cert);
    let mut reloads = auth.reloads();
    let limits = shared.config.connections.clone();
    let (mut reader, mut writer) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<ServerFrame>();
    let queue = Arc::new(ConnQueue {
        permits: tokio::sync::Semaphore::new(limits.max_pending_replies_per_connection),
        watch_frames: AtomicU64::new(0),
    });
    let writer_queue = queue.clone();
    let writer_shared = shared.clone();
    let mut writer_task = tokio::spawn(async move {
        let (queue, shared) = (writer_queue, writer_shared);
        // Takes a frame off the queue: its permit (or watch slot) goes back.
        let taken = |f: &ServerFrame| match f {
            ServerFrame::Response { result, .. } => {
                queue.permits.add_permits(1);
                shared.counters.client_queued_replies.fetch_sub(1, Ordering::Relaxed);
                if let Err(e) = result {
                    shared.counters.errors[e.kind_index()].fetch_add(1, Ordering::Relaxed);
                }
            }
            ServerFrame::Watch { .. } | ServerFrame::WatchEnded { .. } => {
                queue.watch_frames.fetch_sub(1, Ordering::Relaxed);
            }
        };
        let mut buf = Vec::with_capacity(64 * 1024);
        while let Some(frame) = rx.recv().await {
            // Let the other answers of this wakeup queue up: one syscall for many.
            tokio::task::yield_now().await;
            buf.clear();
            let mut next = Some(frame);
            while let Some(f) = next.take() {
                taken(&f);
                if let Err(e) = wire::encode_frame(&f, MAX_CLIENT_FRAME_BYTES, &mut buf) {
                    // Never drop an answer (the client would wait for it until
                    // its timeout): say why in a frame that fits.
                    let substitute = oversized_reply(&f, &e);
                    if let Err(e) = wire::encode_frame(&substitute, MAX_CLIENT_FRAME_BYTES, &mut buf) {
                        tracing::error!(error = %e, "dropping an answer that cannot be framed");
                    }
                }
                if buf.len() < MAX_CLIENT_WRITE_BATCH_BYTES {
                    next = rx.try_recv().ok();
                }
            }
            // A TLS stream may hold back what `write_all` took until flushed.
            if writer.write_all(&buf).await.is_err() || writer.flush().await.is_err() {
                return;
            }
            shared.counters.client_bytes_sent.fetch_add(buf.len() as u64, Ordering::Relaxed);
        }
        let _ = writer.shutdown().await;
    });
    let watches = ConnWatches::default();
    let mut decoder = FrameDecoder::new(MAX_CLIENT_FRAME_BYTES);
    // Writes of one read from the socket, per group: proposed together.
    let mut writes: HashMap<GroupId, Vec<(u64, Request)>> = HashMap::new();
    let conn = Conn { tx: tx.clone(), queue: queue.clone() };
    // Budget held for the large frame at the head of the decoder, if any.
    let mut large: Option<LargeRequest> = None;
    'conn: loop {
        loop {
            // Backpressure: no permit, no next request. Propose what this
            // read gave first, so its answers can come back and free permits.
            let permit = match queue.permits.try_acquire() {
                Ok(p) => p,
                Err(_) => {
                    for (group, batch) in writes.drain() {
                        propose_writes(&shared, group, batch, &conn);
                    }
                    shared.counters.client_backpressure.fetch_add(1, Ordering::Relaxed);
                    match wait_for_room(queue.permits.acquire(), &shared, &mut stop).await {
                        Waited::Got(p) => p,
                        Waited::Stopped => break 'conn,
                        Waited::TimedOut => {
                            tracing::warn!(
                                client = %addr,
                                pending = limits.max_pending_replies_per_connection,
                                timeout_ms = limits.slow_client_timeout.as_millis() as u64,
                                "client does not read its answers; closing its connection"
                            );
                            break 'conn;
                        }
                    }
                }
            };
            match decoder.next_frame::<ClientFrame>() {
                Ok(Some(frame)) => {
                    // Frames decode in order: with room held, this is the
                    // large frame it was held for. Its bytes are out of the
                    // buffer now; give the room and the memory back.
                    if large.take().is_some() {
                        decoder.release_excess();
                    }
                    // The permit now belongs to this request's answer; the
                    // writer returns it.
                    permit.forget();
                    shared.counters.client_queued_replies.fetch_add(1, Ordering::Relaxed);
                    shared.counters.requests.fetch_add(1, Ordering::Relaxed);
                    if let RequestBody::Authenticate { token } = &frame.body {
                        let result = authenticate(&shared, &mut auth, token, addr);
                        send_frame(&conn.tx, ServerFrame::Response { id: frame.id, result });
                        continue;
                    }
                    // Refused requests are answered in order with the rest;
                    // the connection keeps serving.
                    if let Err(e) = auth.authorize(&frame.body) {
                        tracing::debug!(client = %addr, error = %e, "refused a request");
                        send_frame(&conn.tx, ServerFrame::Response { id: frame.id, result: Err(e) });
                        continue;
                    }
                    match frame {
                        ClientFrame { id, group, body: RequestBody::Write(mut request) } => {
                            request.client_id = auth.session_id(request.client_id);
                            writes.entry(group).or_default().push((id, request));
                        }
                        other => handle_request(&shared, other, &conn, &watches),
                    }
                }
                Ok(None) => {
                    for (group, batch) in writes.drain() {
                        propose_writes(&shared, group, batch, &conn);
                    }
                    break;
                }
                Err(e) => {
                    for (group, batch) in writes.drain() {
                        propose_writes(&shared, group, batch, &conn);
                    }
                    shared.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(client = %addr, error = %e, "bad frame from client; closing its connection");
                    permit.forget();
                    shared.counters.client_queued_replies.fetch_add(1, Ordering::Relaxed);
                    send_frame(
                        &conn.tx,
                        ServerFrame::Response {
                            id: 0,
                            result: Err(ServerError::BadRequest { reason: format!("bad frame: {e}") }),
                        },
                    );
                    break 'conn;
                }
            }
        }
        // A large frame is read only with room for all of it in the
        // server-wide budget: without it, each connection could hold a
        // partial 16 MiB frame.
        if let (None, Some(total)) =
            (&large, decoder.pending_frame_bytes().filter(|t| *t >= LARGE_REQUEST_BYTES))
        {
            // At most one maximal frame (validated against the budget).
            let kib = u32::try_from(total.div_ceil(1024)).unwrap_or(u32::MAX);
            let permit = match shared.large_requests.clone().try_acquire_many_owned(kib) {
                Ok(p) => p,
                Err(_) => {
                    shared.counters.client_large_request_waits.fetch_add(1, Ordering::Relaxed);
                    let room = shared.large_requests.clone().acquire_many_owned(kib);
                    match wait_for_room(room, &shared, &mut stop).await {
                        Waited::Got(p) => p,
                        Waited::Stopped => break 'conn,
                        Waited::TimedOut => {
                            tracing::warn!(
                                client = %addr,
                                frame_bytes = total,
                                budget_bytes = limits.max_large_request_bytes,
                                "no room for a large request within the timeout; closing the connection (raise max_large_request_bytes or send smaller requests)"
                            );
                            break 'conn;
                        }
                    }
                }
            };
            shared.counters.client_large_request_bytes.fetch_add(total as u64, Ordering::Relaxed);
            large = Some(LargeRequest { _permit: permit, bytes: total as u64, shared: shared.clone() });
        }
        let reloaded = async {
            let changed = match reloads.as_mut() {
                Some(r) => r.changed().await.is_ok(),
                None => false,
            };
            if !changed {
                std::future::pending::<()>().await;
            }
        };
        let read = tokio::select! {
            r = reader.read_buf(decoder.buffer_mut()) => r,
            _ = stop.wait_for(|s| *s) => break 'conn,
            () = reloaded => {
                if !auth.unchanged_after_reload() {
                    // Its watches were authorized under the old rights.
                    tracing::info!(client = %addr, "closing a client connection: the reloaded auth file revoked or changed its credential");
                    break 'conn;
                }
                continue 'conn;
            }
            _ = tokio::time::sleep(limits.idle_timeout) => {
                let idle = queue.permits.available_permits() == limits.max_pending_replies_per_connection
                    && watches.is_empty();
                if idle {
                    shared.counters.client_idle_disconnects.fetch_add(1, Ordering::Relaxed);
                    // Debug: routine for pooled clients, and counted in
                    // `client_idle_disconnects` (info logs nothing per client).
                    tracing::debug!(
                        client = %addr,
                        idle_ms = limits.idle_timeout.as_millis() as u64,
                        "closing an idle client connection (no request, answer or watch)"
                    );
                    break 'conn;
                }
                continue 'conn;
            }
        };
        match read {
            Ok(0) | Err(_) => break 'conn,
            Ok(n) => {
                shared.counters.client_bytes_received.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
    // Remove this connection's watches.
    for (g, watch_id) in watches.drain() {
        if let Some(group) = shared.node.group(g) {
            let _ = group.read(false, move |m: &mut KvMachine| m.unwatch(watch_id)).await;
        }
    }
    drop(conn);
    drop(tx);
    // A writer stuck on a client that does not read is given the slow-client
    // timeout, then dropped with whatever it still holds.
    if tokio::time::timeout(limits.slow_client_timeout, &mut writer_task).await.is_err() {
        writer_task.abort();
    }
    // Answers that never reached the writer no longer wait for anyone.
    let unanswered =
        limits.max_pending_replies_per_connection.saturating_sub(queue.permits.available_permits()) as u64;
    shared.counters.client_queued_replies.fetch_sub(unanswered, Ordering::Relaxed);
    queue.permits.close();
    shared.counters.client_connections_open.fetch_sub(1, Ordering::Relaxed);
}

/// `RequestBody::Authenticate`: the connection's principal from now on.
fn authenticate(
    shared: &Shared,
    auth: &mut ConnAuth,
    token: &str,
    addr: SocketAddr,
) -> Result<ResponseBody, ServerError> {
    match auth.authenticate(token) {
        Ok(Some(p)) => Ok(ResponseBody::Authenticated {
            name: p.name.clone(),
            role: p.role.name().into(),
            enabled: true,
        }),
        Ok(None) => {
            Ok(ResponseBody::Authenticated { name: String::new(), role: "admin".into(), enabled: false })
        }
        Err(e) => {
            let refused = shared.counters.client_auth_refusals.fetch_add(1, Ordering::Relaxed);
            // One line per 1,000 refusals: a token guesser must not flood the log.
            if refused.is_multiple_of(1000) {
                tracing::warn!(client = %addr, refused = refused + 1,
                    "refused a client token (unknown or revoked); further ones are counted in tarn_client_auth_refusals");
            }
            Err(e)
        }
    }
}

/// One connection as the request path sees it: where answers go, and the
/// accounting that bounds them.
#[derive(Clone)]
struct Conn {
    tx: FrameTx,
    queue: Arc<ConnQueue>,
}

/// What a connection's writer sends instead of `frame` when `frame` does not
/// encode within the client frame bound: the same request id with an error
/// that names both sizes and how to page (a watch batch ends the watch; the
/// client resumes after its last index, in smaller batches).
fn oversized_reply(frame: &ServerFrame, error: &wire::WireError) -> ServerFrame {
    let (size_bytes, max_bytes) = match error {
        wire::WireError::FrameTooLarge { len_bytes, max_frame_bytes } => (*len_bytes, *max_frame_bytes),
        _ => (0, MAX_CLIENT_FRAME_BYTES),
    };
    match frame {
        ServerFrame::Response { id, .. } => ServerFrame::Response {
            id: *id,
            result: Err(ServerError::ReplyTooLarge { size_bytes, max_bytes }),
        },
        ServerFrame::Watch { id, .. } | ServerFrame::WatchEnded { id, .. } => ServerFrame::WatchEnded {
            id: *id,
            reason: format!(
                "a batch of watch events of {size_bytes} bytes exceeds the frame limit {max_bytes}"
            ),
        },
    }
}

/// Queues an answer for a connection's writer. Never waits and never
/// spawns: the reader took a permit for every request, so the answers queued
/// are bounded by `max_pending_replies_per_connection`. A closed connection
/// drops it.
fn send_frame(out: &FrameTx, frame: ServerFrame) {
    let _ = out.send(frame);
}

fn wall_clock_nanos() -> Nanos {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as Nanos).unwrap_or(0)
}

fn not_leader(shared: &Shared, group: GroupId, leader: Option<NodeId>) -> ServerError {
    shared.counters.not_leader.fetch_add(1, Ordering::Relaxed);
    ServerError::NotLeader { node: shared.config.node_id, group, leader }
}

/// Proposes the writes `(request id, request)` for group `g` through the
/// request path, many requests per Raft entry; each answer goes back under
/// its own request id.
fn propose_writes(shared: &Arc<Shared>, g: GroupId, batch: Vec<(u64, Request)>, conn: &Conn) {
    shared.counters.writes.fetch_add(batch.len() as u64, Ordering::Relaxed);
    let Some(group) = shared.node.group(g) else {
        for (id, _) in batch {
            send_frame(&conn.tx, ServerFrame::Response { id, result: Err(missing_group(shared, g)) });
        }
        return;
    };
    shared.path.writes(g, &mut Port(group), batch, wall_clock_nanos(), conn);
}

/// A tokio group as the request path sees it: an input is queued without
/// waiting, or by a task that waits for room when the queue is full.
struct Port(GroupHandle<KvMachine>);

impl GroupPort<KvMachine> for Port {
    fn propose(&mut self, data: Bytes, reply: ProposeFn<KvMachine>) {
        if let Err((data, reply)) = self.0.try_propose(data, reply) {
            let group = self.0.clone();
            tokio::spawn(async move { group.propose_with(data, reply).await });
        }
    }

    fn read(&mut self, linearizable: bool, f: ReadFn<KvMachine>) {
        if let Err(f) = self.0.try_read(linearizable, f) {
            let group = self.0.clone();
            tokio::spawn(async move { group.read_with(linearizable, f).await });
        }
    }
}

/// The request path's answers go to the connection's writer.
impl FrameSink for Conn {
    fn send(&self, frame: ServerFrame) {
        send_frame(&self.tx, frame);
    }

    fn send_watch(&self, frame: ServerFrame) -> bool {
        // A client too slow to take its frames loses the watch (it resumes
        // from its last index), never the server's memory.
        let queued = self.queue.watch_frames.fetch_add(1, Ordering::Relaxed);
        if queued >= MAX_QUEUED_WATCH_FRAMES_PER_CLIENT as u64 {
            self.queue.watch_frames.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        self.tx.send(frame).is_ok()
    }
}

/// The request path's counters and timings are the server's.
impl PathMetrics for ServerCounters {
    type Timer = Instant;

    fn start(&self) -> Instant {
        Instant::now()
    }

    fn proposal(&self) {
        self.proposals.fetch_add(1, Ordering::Relaxed);
    }

    fn write_answered(&self, started: Instant, count: u64) {
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.write_seconds.observe_n(nanos, count);
    }

    fn read_answered(&self, started: Instant) {
        self.read_seconds.observe_duration(started.elapsed());
    }

    fn not_leader(&self) {
        self.not_leader.fetch_add(1, Ordering::Relaxed);
    }
}

fn handle_request(shared: &Arc<Shared>, frame: ClientFrame, conn: &Conn, watches: &ConnWatches) {
    let ClientFrame { id, group: g, body } = frame;
    let tx = &conn.tx;
    let reply = tx.clone();
    let respond = move |result: Result<ResponseBody, ServerError>| async move {
        send_frame(&reply, ServerFrame::Response { id, result });
    };
    let node_id = shared.config.node_id;
    let group = match &body {
        RequestBody::Hello
        | RequestBody::Status
        | RequestBody::AddGroup { .. }
        | RequestBody::AddGroups { .. } => None,
        _ => match shared.node.group(g) {
            Some(h) => Some(h),
            None => {
                tokio::spawn(respond(Err(missing_group(shared, g))));
                return;
            }
        },
    };
    let shared = shared.clone();
    match body {
        RequestBody::Hello => {
            let body = ResponseBody::Hello { node_id, cluster_id: shared.cluster_id };
            tokio::spawn(respond(Ok(body)));
        }
        RequestBody::Write(request) => propose_writes(&shared, g, vec![(id, request)], conn),
        RequestBody::Read { command, consistency } => {
            shared.counters.reads.fetch_add(1, Ordering::Relaxed);
            let group = group.expect("checked above");
            shared.path.read(id, g, &mut Port(group), command, consistency, conn);
        }
        RequestBody::Watch { key, subtree, after_index } => {
            let group = group.expect("checked above");
            shared.path.watch(id, g, &mut Port(group), key, subtree, after_index, watches, conn);
        }
        RequestBody::Unwatch { watch_request_id } => {
            let group = group.expect("checked above");
            shared.path.unwatch(id, &mut Port(group), watch_request_id, watches, conn);
        }
        RequestBody::Status => {
            tokio::spawn(async move {
                let status = node_status(&shared).await;
                respond(Ok(ResponseBody::Status(status))).await;
            });
        }
        RequestBody::TransferLeader { to } => {
            let group = group.expect("checked above");
            tokio::spawn(async move {
                respond(transfer_leader(&shared, g, &group, to).await).await;
            });
        }
        RequestBody::RecordPeer { node, addr } => {
            let group = group.expect("checked above");
            tokio::spawn(async move {
                respond(join::record_peer(&shared, g, &group, node, addr).await).await;
            });
        }
        RequestBody::AddGroup { voters } => {
            tokio::spawn(async move {
                respond(add_group(&shared, g, voters).await).await;
            });
        }
        RequestBody::ChangeMembership { changes, peers } => {
            let group = group.expect("checked above");
            tokio::spawn(async move {
                let result = change_membership(&shared, g, &group, changes, peers).await;
                respond(result).await;
            });
        }
        RequestBody::RemoveGroup => {
            tokio::spawn(async move {
                respond(remove_group(&shared, g).await).await;
            });
        }
        RequestBody::AddGroups { first, last, voters } => {
            tokio::spawn(async move {
                respond(add_groups(&shared, first, last, voters).await).await;
            });
        }
        RequestBody::Authenticate { .. } => {
            // The connection's reader answers it itself: its principal is
            // connection state, in order with the requests around it.
            tokio::spawn(respond(Err(ServerError::BadRequest {
                reason: "authenticate is answered by the connection".into(),
            })));
        }
    }
}

/// Hands leadership of group `g` to `to`. The core silently ignores a target
/// that is not a voter, so that is refused here, in words, instead of
/// answering "ok" for a transfer that never happens.
async fn transfer_leader(
    shared: &Shared,
    g: GroupId,
    group: &GroupHandle<KvMachine>,
    to: NodeId,
) -> Result<ResponseBody, ServerError> {
    let info = group.info();
    if info.role != Role::Leader {
        return Err(not_leader(shared, g, info.leader));
    }
    let Some(status) = group.status().await else {
        return Err(ServerError::Unavailable { reason: format!("group {g} stopped") });
    };
    let voters: BTreeSet<NodeId> =
        status.membership.voters.iter().chain(&status.membership.voters_outgoing).copied().collect();
    if !voters.contains(&to) {
        let list: Vec<String> = voters.iter().map(|v| v.to_string()).collect();
        let reason = if status.membership.learners.contains(&to) {
            format!(
                "node {to} is a learner, not a voter of group {g} (voters: {}); promote it first: `tarn member promote {to}`",
                list.join(",")
            )
        } else {
            format!("node {to} is not a voter of group {g} (voters: {}); pick one of them", list.join(","))
        };
        return Err(ServerError::BadRequest { reason });
    }
    group
        .transfer_leader(to)
        .await
        .map(|()| ResponseBody::Done)
        .map_err(|e| ServerError::Unavailable { reason: e.to_string() })
}

async fn add_group(shared: &Shared, g: GroupId, voters: Vec<NodeId>) -> Result<ResponseBody, ServerError> {
    if g == 0 {
        return Err(ServerError::BadRequest { reason: "group id 0 is reserved".into() });
    }
    check_group_voters(shared, &voters)?;
    shared
        .node
        .add_group(
            g,
            Membership::new_voters(voters.iter().copied()),
            KvMachine::new(shared.config.kv.clone()),
        )
        .await
        .map_err(|e| ServerError::BadRequest { reason: e.to_string() })?;
    persist_groups(shared, |groups| {
        groups.insert(g, voters);
    })?;
    Ok(ResponseBody::Done)
}

/// Starts groups `first..=last` with `voters`, and records the group list
/// once for the whole batch (one file write instead of one per group: what
/// made creating groups one by one cost a quarter second each). A group
/// already hosted with these voters is skipped.
async fn add_groups(
    shared: &Shared,
    first: GroupId,
    last: GroupId,
    voters: Vec<NodeId>,
) -> Result<ResponseBody, ServerError> {
    let bad = |reason: String| Err(ServerError::BadRequest { reason });
    if first == 0 || last < first {
        return bad(format!("group range {first}..{last} is empty or includes the reserved group 0"));
    }
    if last - first + 1 > MAX_GROUPS_PER_REQUEST {
        return bad(format!(
            "{} groups in one request; at most {MAX_GROUPS_PER_REQUEST} (the CLI splits larger ranges)",
            last - first + 1
        ));
    }
    check_group_voters(shared, &voters)?;
    let existing = shared.groups.lock().map(|g| g.clone()).unwrap_or_default();
    let mut added = Vec::new();
    let mut failure = None;
    for g in first..=last {
        match existing.get(&g) {
            Some(v) if *v == voters => continue,
            Some(v) => {
                failure = Some(format!("group {g} already exists with voters {v:?}"));
                break;
            }
            None => {}
        }
        let membership = Membership::new_voters(voters.iter().copied());
        match shared.node.add_group(g, membership, KvMachine::new(shared.config.kv.clone())).await {
            Ok(_) => added.push(g),
            Err(e) => {
                failure = Some(format!("group {g}: {e}"));
                break;
            }
        }
    }
    // Record what started even if a later group failed: those groups run.
    persist_groups(shared, |groups| {
        for g in &added {
            groups.insert(*g, voters.clone());
        }
    })?;
    match failure {
        Some(reason) => Err(ServerError::BadRequest {
            reason: format!("{reason} ({} groups of {first}..{last} started before it)", added.len()),
        }),
        None => Ok(ResponseBody::Done),
    }
}

/// Whether this node may host a group with `voters`: it is one of them, and
/// it knows every other voter's peer address.
fn check_group_voters(shared: &Shared, voters: &[NodeId]) -> Result<(), ServerError> {
    let node_id = shared.config.node_id;
    let bad = |reason: String| Err(ServerError::BadRequest { reason });
    if voters.is_empty() || !voters.contains(&node_id) {
        return bad(format!(
            "voters {voters:?} must include this node ({node_id}); send the request to every voter"
        ));
    }
    if shared.peer_addr.is_some() {
        let known = known_peers(shared);
        if let Some(v) = voters.iter().find(|v| **v != node_id && !known.contains_key(v)) {
            return bad(format!(
                "voter {v} has no peer address here (not in --cluster, nor added with `tarn member add {v} <peer-addr>`)"
            ));
        }
    } else if voters != [node_id] {
        return bad("a single node without --cluster can only host groups with itself as the voter".into());
    }
    Ok(())
}

async fn change_membership(
    shared: &Arc<Shared>,
    g: GroupId,
    group: &GroupHandle<KvMachine>,
    changes: Vec<MemberChange>,
    peers: Vec<(NodeId, SocketAddr)>,
) -> Result<ResponseBody, ServerError> {
    let node_id = shared.config.node_id;
    // Only the leader checks addresses: a follower may not have applied the
    // directory yet, and its answer must send the client to the leader.
    let info = group.info();
    if info.role != Role::Leader {
        return Err(not_leader(shared, g, info.leader));
    }
    if !peers.is_empty() {
        let Some(transport) = shared.node.transport() else {
            return Err(ServerError::BadRequest { reason: "this node has no peer port (--peer)".into() });
        };
        for (id, addr) in peers.iter().filter(|(id, _)| *id != node_id) {
            transport.set_peer(*id, *addr).map_err(|e| ServerError::BadRequest { reason: e.to_string() })?;
        }
    }
    let unknown = |known: &BTreeMap<NodeId, SocketAddr>| {
        changes.iter().find(|c| c.node() != node_id && !known.contains_key(&c.node())).copied()
    };
    if unknown(&known_peers(shared)).is_some() {
        join::learn_directory_now(shared).await;
    }
    if let Some(c) = unknown(&known_peers(shared)) {
        return Err(ServerError::BadRequest {
            reason: format!(
                "node {} has no peer address here; give it: `tarn member add {} <peer-addr>` (or list it in --cluster)",
                c.node(),
                c.node()
            ),
        });
    }
    match group.change_membership(changes.into_iter().map(Into::into).collect()).await {
        Ok(()) => Ok(ResponseBody::Done),
        Err(ProposeError::NotLeader { leader_hint }) => Err(not_leader(shared, g, leader_hint)),
        Err(ProposeError::Refused { reason }) => Err(ServerError::BadRequest { reason: reason.to_string() }),
        Err(e) => Err(ServerError::Unavailable { reason: e.to_string() }),
    }
}

async fn remove_group(shared: &Shared, g: GroupId) -> Result<ResponseBody, ServerError> {
    shared.node.remove_group(g).await.map_err(|e| ServerError::BadRequest { reason: e.to_string() })?;
    persist_groups(shared, |groups| {
        groups.remove(&g);
    })?;
    Ok(ResponseBody::Done)
}

fn persist_groups(
    shared: &Shared,
    change: impl FnOnce(&mut BTreeMap<GroupId, Vec<NodeId>>),
) -> Result<(), ServerError> {
    let mut groups =
        shared.groups.lock().map_err(|_| ServerError::Unavailable { reason: "poisoned".into() })?;
    change(&mut groups);
    if shared.config.in_memory {
        return Ok(());
    }
    save_groups(&shared.config.data_dir, &groups)
        .map_err(|e| ServerError::Unavailable { reason: format!("cannot save the group list: {e}") })
}

/// Every peer this node can reach now (not itself).
fn known_peers(shared: &Shared) -> BTreeMap<NodeId, SocketAddr> {
    shared.node.transport().map(|t| t.peers()).unwrap_or_default()
}

async fn node_status(shared: &Shared) -> NodeStatus {
    let transport = shared.node.transport();
    let connected = |peer: NodeId| transport.as_ref().and_then(|t| t.is_connected(peer)).unwrap_or(false);
    let mut groups = Vec::new();
    for g in shared.node.groups() {
        let Some(handle) = shared.node.group(g) else { continue };
        let info = handle.info();
        let status = handle.status().await;
        let (voters, learners, followers) = match &status {
            Some(s) => (
                s.membership
                    .voters
                    .iter()
                    .chain(&s.membership.voters_outgoing)
                    .copied()
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect(),
                s.membership.learners.iter().copied().collect(),
                s.progress
                    .iter()
                    .map(|(id, m, _, _)| (*id, *m, s.last_log_id.index.saturating_sub(*m), connected(*id)))
                    .collect(),
            ),
            None => (Vec::new(), Vec::new(), Vec::new()),
        };
        groups.push(GroupStatus {
            group: g,
            role: format!("{:?}", info.role),
            term: info.term,
            leader: info.leader,
            commit: info.commit,
            applied: info.applied,
            last_log_id: info.last_log_id,
            voters,
            learners,
            followers,
            rejoining: status.as_ref().is_some_and(|s| s.rejoining),
            error: info.error.clone(),
        });
    }
    let c = &shared.counters;
    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut counters = vec![
        ("client_connections".to_string(), l(&c.client_connections)),
        ("requests".into(), l(&c.requests)),
        ("writes".into(), l(&c.writes)),
        ("reads".into(), l(&c.reads)),
        ("proposals".into(), l(&c.proposals)),
        ("client_bytes_received".into(), l(&c.client_bytes_received)),
        ("client_bytes_sent".into(), l(&c.client_bytes_sent)),
        ("bad_frames".into(), l(&c.bad_frames)),
        ("not_leader".into(), l(&c.not_leader)),
        ("client_connections_open".into(), l(&c.client_connections_open)),
        ("client_connections_refused".into(), l(&c.client_connections_refused)),
        ("client_tls_refusals".into(), l(&c.client_tls_refusals)),
        ("client_auth_refusals".into(), l(&c.client_auth_refusals)),
        ("client_queued_replies".into(), l(&c.client_queued_replies)),
        ("client_backpressure".into(), l(&c.client_backpressure)),
        ("client_slow_disconnects".into(), l(&c.client_slow_disconnects)),
        ("client_idle_disconnects".into(), l(&c.client_idle_disconnects)),
        ("client_large_request_waits".into(), l(&c.client_large_request_waits)),
        ("client_large_request_bytes".into(), l(&c.client_large_request_bytes)),
    ];
    let s = shared.node.storage_counters();
    counters.push(("storage_flushes".into(), l(&s.flushes)));
    counters.push(("storage_syncs".into(), l(&s.syncs)));
    counters.push(("storage_entries_written".into(), l(&s.entries_written)));
    if let Some(t) = shared.node.transport_stats() {
        let t = t.snapshot();
        counters.push(("peer_messages_sent".into(), t.messages_sent));
        counters.push(("peer_messages_received".into(), t.messages_received));
        counters.push(("peer_messages_dropped".into(), t.messages_dropped));
        counters.push(("peer_flushes".into(), t.flushes));
        counters.push(("peer_bad_connections".into(), t.bad_connections));
        // Clients that connected to the peer port by mistake (told so).
        counters.push(("peer_port_clients".into(), t.stranger_connections));
        // One connection per peer pair: a node of an n-node cluster shows n - 1.
        counters.push(("peer_connections_open".into(), t.connections_open));
        counters.push(("peer_connects".into(), t.connects));
        // The peer port's own bounds (see tarn_io::transport's module docs).
        counters.push(("peer_handshakes_pending".into(), t.handshakes_pending));
        counters.push(("peer_handshakes_evicted".into(), t.handshakes_evicted));
        counters.push(("peer_idle_disconnects".into(), t.idle_disconnects));
        counters.push(("peer_security_refusals".into(), t.security_refusals));
    }
    let mut peers: Vec<(NodeId, SocketAddr)> = known_peers(shared).into_iter().collect();
    if let Some(addr) = shared.peer_addr {
        peers.push((shared.config.node_id, addr));
        peers.sort();
    }
    let first_start = shared.first_start.lock().unwrap_or_else(|e| e.into_inner()).clone();
    NodeStatus {
        node_id: shared.config.node_id,
        cluster_id: shared.cluster_id,
        peers,
        groups,
        counters,
        first_start,
    }
}
