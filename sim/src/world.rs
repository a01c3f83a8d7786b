//! The world: N virtual nodes, each running the real `tarn-core` RawNode and
//! the real `tarn-kv` state machine over simulated storage, a virtual
//! network, per-node clocks, clients recording a history, a fault schedule,
//! and the checkers. One run is a pure function of its [`RunConfig`].

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tarn_core::{
    ConfChange, Config, Entry, EntryPayload, HardState, Index, LogId, Membership, Message, MessageBody,
    Nanos, NodeId, RawNode, Recovered, Role, SnapshotMeta, Term,
};
use tarn_io::driver::{
    align_deadline, effective_coalesce_quantum, GroupCounters, GroupExecutor, GroupInput, LogWrite,
    SnapEvent, SnapshotJobError, SnapshotProducer, StorageDone, StorageOp, StoreError, SyncPacer, Turn,
    HEARTBEAT_COALESCE_DEFAULT,
};
use tarn_kv::{
    decode_entry, Command, EventKind, KvConfig, KvStateMachine, LockOutcome, Reply as KvReply,
    SnapshotStreamDecoder, WatchId, WatchPoll,
};

use tarn_io::storage::{DeletionJob, FlushReport, Storage, StorageConfig, StorageError, SyncJob};
use tarn_service::admission::AdmissionLimits;
use tarn_service::protocol::{
    ClientFrame, Consistency, RequestBody, ResponseBody, ServerError, ServerFrame, DEFAULT_GROUP,
};
use tarn_service::retry::{self, Backoff, LeaderMove, Next, Route};
use tarn_service::{ConnWatches, RequestPath};

use crate::client_path::{decode_answer, decode_request, encode_answer, encode_request, ClientSink, SimPort};

use crate::clock::NodeClock;
use crate::disk::{DiskFaults, SimVfs};
use crate::exec::{payload_hash, KvResult, Mailbox, SimEvent, SimIo, SimSm, SnapshotDigests};
use crate::linearizability::{self, Key, Op, OpKind, OpResult, Verdict};
use crate::net::{DropReason as NetDrop, Network, SendOutcome, NODES_MAX};
use crate::profile::{Profile, ProfileKind, CORE_DRIFT_BOUND_PPM};
use crate::queue::{EventQueue, NANOS_PER_MICRO, NANOS_PER_MILLI, NANOS_PER_SECOND};
use crate::rng::{SimRng, Stream, PPM};
use crate::storage::ModelStorage;
use crate::trace::{hash_bytes, message_detail, Trace, TraceEvent, TraceKind};
use crate::watchers::{stream_item, Watcher, WATCHER_CLIENT_BASE};
use crate::workload::{self, ClientOp, Path};

#[cfg(feature = "planted-bugs")]
pub use tarn_core::PlantedBug;

/// Everything that determines a run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub seed: u64,
    pub nodes: usize,
    pub profile: ProfileKind,
    /// Virtual time with faults and new client operations.
    pub sim_ns: Nanos,
    /// After `sim_ns` every fault heals; every pending operation must then
    /// complete within this bound (the liveness check).
    pub liveness_bound_ns: Nanos,
    /// Print every event as it happens.
    pub trace: bool,
    /// The linearizability search gives up ("too big") after this many steps per key.
    pub linearizability_steps_max: u64,
    /// Which storage the nodes run on.
    pub storage: StorageKind,
    /// Check each linearizable read against the commit index known when it
    /// arrived (a direct check); off, stale reads are left to the
    /// linearizability checker alone (used to test that checker).
    pub read_floor_check: bool,
    /// Restart a wiped node with `Config::rejoin_after_data_loss` (off only
    /// to show that the simulator finds the double vote it prevents).
    pub rejoin_flag: bool,
    /// Run the storage engine in async write mode, syncing in the background
    /// every this many nanoseconds, paced by the driver's `SyncPacer`
    /// (`None`: sync mode). Async mode promises durability against a process
    /// crash, not a power loss, and the simulated crash is a power loss: such
    /// runs inject no crashes, wipes or disk faults, and check instead that
    /// every write is synced within the pacing bound (`async-sync-lag`).
    pub async_sync_ns: Option<Nanos>,
    #[cfg(feature = "planted-bugs")]
    pub planted_bug: Option<PlantedBug>,
}

/// The storage under each node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageKind {
    /// The real `tarn-io` storage engine over `SimVfs` (the default).
    Engine,
    /// The simulator's own model of a log (faster; no disk faults).
    Model,
}

impl std::str::FromStr for StorageKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "engine" => Ok(StorageKind::Engine),
            "model" => Ok(StorageKind::Model),
            other => Err(format!("unknown storage {other:?}: use engine or model")),
        }
    }
}

impl std::fmt::Display for StorageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StorageKind::Engine => "engine",
            StorageKind::Model => "model",
        })
    }
}

/// The Raft group every node runs (the simulator drives one group).
const GROUP: u64 = 1;
const CLUSTER_ID: u64 = 0x7a_726e;
/// Small segments so runs roll over many of them (and sync directories).
const SEGMENT_SIZE_BYTES: u64 = 64 * 1024;
const MAX_ENTRY_SIZE_BYTES: u32 = 32 * 1024;
/// The core's entry bound (`Config::max_entry_bytes`), which the request
/// path packs under: small, so the workload's large batches reach it. Under
/// the storage's record bound, as a server's startup check requires.
const MAX_ENTRY_BYTES: usize = workload::ENTRY_BYTES_MAX;
const _: () = assert!(MAX_ENTRY_BYTES < MAX_ENTRY_SIZE_BYTES as usize);
/// In lease-read runs, two clock jumps of one node are at least this far
/// apart (more than two election timeouts), so no timeout window sees two.
const LEASE_JUMP_SPACING_NS: Nanos = NANOS_PER_SECOND;
/// A node whose disk failed at startup tries again after this long.
const RESTART_RETRY_NS: Nanos = 50 * NANOS_PER_MILLI;

/// The kv's configuration: the defaults, plus the planted bug (the kv's
/// bugs are variants of the core's `PlantedBug`).
fn kv_config(config: &RunConfig) -> KvConfig {
    #[cfg(feature = "planted-bugs")]
    {
        KvConfig { planted_bug: config.planted_bug, ..KvConfig::default() }
    }
    #[cfg(not(feature = "planted-bugs"))]
    {
        let _ = config;
        KvConfig::default()
    }
}

/// The request path's admission bounds: the core's entry bound, plus the
/// planted bug.
fn admission_limits(config: &RunConfig) -> AdmissionLimits {
    #[cfg_attr(not(feature = "planted-bugs"), allow(unused_mut))]
    let mut limits = AdmissionLimits::new(MAX_ENTRY_BYTES);
    #[cfg(feature = "planted-bugs")]
    {
        limits.planted_bug = config.planted_bug;
    }
    #[cfg(not(feature = "planted-bugs"))]
    let _ = config;
    limits
}

/// A node's durable snapshot: what it serves to followers and restarts from.
#[derive(Debug)]
struct NodeSnapshot {
    meta: SnapshotMeta,
    /// The kv's chunks, concatenated (the blob the storage engine stores).
    data: Bytes,
    /// The kv digest of the state it holds.
    digest: u64,
}

/// The kv snapshot of `sm` as one blob of concatenated kv chunks.
#[cfg(test)]
fn encode_snapshot_blob(sm: &KvStateMachine) -> Bytes {
    let mut blob = Vec::new();
    for chunk in sm.snapshot_chunks(crate::exec::KV_SNAPSHOT_CHUNK_BYTES) {
        blob.extend_from_slice(&chunk);
    }
    Bytes::from(blob)
}

/// Decodes a blob of concatenated kv chunks with kv's stream decoder (the
/// server's restore path).
pub(crate) fn decode_snapshot_blob(blob: &[u8], config: KvConfig) -> Result<KvStateMachine, String> {
    let mut decoder = SnapshotStreamDecoder::new(config);
    decoder.push(blob)?;
    decoder.finish()
}

/// What a node recovered from its storage.
struct Recovery {
    hard_state: HardState,
    snapshot: Option<Arc<NodeSnapshot>>,
    /// The decoded state of `snapshot`.
    sm: Option<KvStateMachine>,
    /// The log after the snapshot (contiguous).
    log: Vec<Entry>,
}

/// A node's storage engine and the disk under it.
struct EngineDisk {
    vfs: SimVfs,
    storage: Option<Storage>,
    flush_scheduled: bool,
    report: FlushReport,
    /// Async write mode only: the background sync's pacing and progress.
    background: Option<BackgroundSync>,
}

/// The async write mode's background sync on one node, paced by the
/// driver's own [`SyncPacer`].
struct BackgroundSync {
    pacer: SyncPacer,
    /// A `SyncDue` event is queued.
    scheduled: bool,
    /// The running sync's job (it completes after a disk latency).
    job: Option<SyncJob>,
    /// When the oldest write no started sync covers was flushed.
    oldest_uncovered: Option<Nanos>,
    /// When the oldest write the running sync covers was flushed.
    oldest_in_flight: Option<Nanos>,
}

impl BackgroundSync {
    fn new(config: &RunConfig, interval_ns: Nanos) -> BackgroundSync {
        let pacer = SyncPacer::new(std::time::Duration::from_nanos(interval_ns));
        #[cfg(feature = "planted-bugs")]
        let pacer = pacer.with_planted_bug(config.planted_bug);
        #[cfg(not(feature = "planted-bugs"))]
        let _ = config;
        BackgroundSync { pacer, scheduled: false, job: None, oldest_uncovered: None, oldest_in_flight: None }
    }

    /// The oldest flushed write no finished sync covers.
    fn oldest_unsynced(&self) -> Option<Nanos> {
        match (self.oldest_in_flight, self.oldest_uncovered) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

fn storage_config(id: NodeId, config: &RunConfig) -> StorageConfig {
    let mut c = StorageConfig::new(format!("/node-{id}"), CLUSTER_ID, id);
    c.segment_size_bytes = SEGMENT_SIZE_BYTES;
    c.max_entry_size_bytes = MAX_ENTRY_SIZE_BYTES;
    #[cfg(feature = "planted-bugs")]
    {
        c.planted_bug = config.planted_bug;
    }
    #[cfg(not(feature = "planted-bugs"))]
    let _ = config;
    if config.async_sync_ns.is_some() {
        c.write_mode = tarn_io::storage::WriteMode::Async;
    }
    c
}

impl RunConfig {
    pub fn new(seed: u64) -> Self {
        RunConfig {
            seed,
            nodes: 5,
            profile: ProfileKind::Swarm,
            sim_ns: 10 * NANOS_PER_SECOND,
            liveness_bound_ns: 20 * NANOS_PER_SECOND,
            trace: false,
            linearizability_steps_max: 2_000_000,
            storage: StorageKind::Engine,
            read_floor_check: true,
            rejoin_flag: true,
            async_sync_ns: None,
            #[cfg(feature = "planted-bugs")]
            planted_bug: None,
        }
    }
}

/// The class of a failure; each has its own process exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// A Raft or kv safety property was violated (or the history is not linearizable).
    Safety,
    /// After faults healed, some operation did not complete within the bound.
    Liveness,
    /// Something panicked (the core, kv, the simulator's own assertions).
    Panic,
    /// The linearizability search hit its bound: undecided.
    CheckerTooBig,
}

impl FailureKind {
    pub fn exit_code(self) -> i32 {
        match self {
            FailureKind::Safety => 3,
            FailureKind::Liveness => 4,
            FailureKind::Panic => 5,
            FailureKind::CheckerTooBig => 6,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Failure {
    pub kind: FailureKind,
    /// A short stable name: "election-safety", "linearizability", ...
    pub property: &'static str,
    pub detail: String,
}

/// What a run produced.
#[derive(Clone, Debug)]
pub struct RunReport {
    pub seed: u64,
    pub failure: Option<Failure>,
    /// Digest of the whole trace: equal for equal runs.
    pub digest: u64,
    /// Virtual time the run covered (faulty phase plus healing).
    pub sim_ns: Nanos,
    pub events: u64,
    pub ops_invoked: u64,
    pub ops_completed: u64,
    pub max_commit: Index,
    /// Node crashes (injected, mid-flush, or after a storage error).
    pub crashes: u64,
    /// Disk faults injected by `SimVfs` (errors, corruptions, torn writes).
    pub disk_faults: u64,
    /// Snapshots taken (`SnapshotWanted` answered), installed on a follower
    /// from a leader's chunks, and log compactions executed.
    pub snapshots: u64,
    pub installs: u64,
    pub compactions: u64,
    /// Coverage (issue 14): restarts in place, and the snapshot jobs their
    /// stopping groups waited for.
    pub restarts_in_place: u64,
    pub jobs_waited: u64,
    /// Coverage (issue 14): a connection reader finding several writes of a
    /// shared session at once (packed together into entries), and writes
    /// sent while an earlier write of their session was unanswered.
    pub write_batches: u64,
    pub pipelined_writes: u64,
    /// Issue 17: quiet leaders replaced after a crash or cut-off in a
    /// healthy cluster with no other fault meanwhile (`failover-time`
    /// bounds them), how many took over two election timeouts, and the
    /// longest (ms).
    pub failovers: u64,
    pub failovers_slow: u64,
    pub failover_max_ms: u64,
    /// TTL expiries that took effect (temporary registers removed, lock
    /// leases run out), counted at their first application.
    pub expiries: u64,
    /// Disks wiped (the node rejoined empty).
    pub wipes: u64,
    /// Coverage: membership changes of several nodes at once proposed, and
    /// joint configurations (C(old,new)) appended by a leader.
    pub multi_changes: u64,
    pub joints: u64,
    /// Coverage: appends that cut a suffix of a node's log, and the longest
    /// suffix cut.
    pub truncations: u64,
    pub truncated_max: u64,
    /// Coverage (issue 15 gap 4): TTL refreshes that raced an expiry (an
    /// expiry applied as a no-op because a refresh re-armed the node after
    /// it was proposed, or a refresh that found its node already expired),
    /// and lock waiters that became holders (hand-offs, seen by their poll).
    pub ttl_races: u64,
    pub handoffs: u64,
    /// Coverage (gap 5): reads a leader served from its lease (no heartbeat
    /// round) in a run whose clocks drift or jump.
    pub lease_reads_skewed: u64,
    /// Coverage (issue 14): events the watching clients received through
    /// the request path, and their resumes (cut-offs, lost nodes, unwatches).
    pub watch_events: u64,
    pub watch_resumes: u64,
    pub profile: String,
    pub last_events: Vec<TraceEvent>,
}

/// How many trailing events a failure report carries.
pub const FAILURE_TRACE_EVENTS: usize = 60;

/// Events that were held back by a pause are replayed in a random order
/// within this window after the node wakes (a woken process drains its
/// timers and sockets in no particular order).
const PAUSE_WAKE_JITTER_NS: Nanos = 2 * NANOS_PER_MILLI;
const CLIENT_LATENCY_MIN_NS: Nanos = 50 * NANOS_PER_MICRO;
const CLIENT_LATENCY_MAX_NS: Nanos = 500 * NANOS_PER_MICRO;
/// Smallest step between two ticks of one node (guards a core that asks for
/// a tick in the past from spinning the simulation).
const TICK_MIN_STEP_NS: Nanos = NANOS_PER_MICRO;
/// Clock offsets are bounded: the kv derives replicated time from the
/// proposing leader's clock, so wildly different origins would expire
/// sessions; the offset still catches code comparing clocks across nodes.
const CLOCK_OFFSET_MAX_NS: Nanos = 50 * NANOS_PER_MILLI;

#[derive(Debug)]
enum DiskDone {
    /// The storage engine's group commit: write and fdatasync everything staged.
    Flush,
    /// Async write mode: the background sync may be due.
    SyncDue,
    /// Async write mode: the running background sync's fdatasyncs returned.
    SyncDone,
    /// The storage worker's janitor deletes the segments a compaction
    /// renamed away (a crash before it leaves them to the next open).
    Delete(DeletionJob),
    Log(LogId),
    HardState {
        term: Term,
        vote: Option<NodeId>,
    },
}

#[derive(Debug)]
enum Reply {
    Result(OpResult),
    /// An error answer: the client library's route decides where and when
    /// to retry (`tarn_service::retry::Route`).
    Refused(ServerError),
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Partition,
    OneWayPartition,
    Isolate,
    Clog,
    Flap,
    Crash,
    Pause,
    ClockJump,
    TransferLeader,
    Membership,
    Wipe,
}

const FAULTS: [Fault; 11] = [
    Fault::Partition,
    Fault::OneWayPartition,
    Fault::Isolate,
    Fault::Clog,
    Fault::Flap,
    Fault::Crash,
    Fault::Pause,
    Fault::ClockJump,
    Fault::TransferLeader,
    Fault::Membership,
    Fault::Wipe,
];

#[derive(Debug)]
enum Event {
    Deliver {
        from: u8,
        to: u8,
        message: Message,
    },
    Tick {
        node: u8,
        incarnation: u32,
    },
    Disk {
        node: u8,
        incarnation: u32,
        done: DiskDone,
    },
    ClientWake {
        client: u32,
    },
    /// A client's request frame reaches a node.
    ClientArrive {
        node: u8,
        client: u32,
        bytes: Bytes,
    },
    /// The reader of process `process`'s connection to node `node` runs.
    ConnRead {
        node: u8,
        process: u32,
    },
    /// A node's answer frame reaches a client.
    ClientReply {
        client: u32,
        bytes: Bytes,
    },
    ClientTimeout {
        client: u32,
        attempt: u64,
    },
    ClientRetry {
        client: u32,
        attempt: u64,
    },
    Fault(Fault),
    HealNetwork,
    Restart {
        node: u8,
    },
    EndOfFaults,
    /// The simulated operator's next step for a wiped node.
    Operator,
    /// Quiescence runs: every node pings every other and judges liveness.
    LivenessRound,
    /// A node-level liveness ping arrives.
    Ping {
        from: u8,
        to: u8,
    },
    /// Quiescence runs: clients stop starting operations for a while.
    IdleStart,
    /// Quiescence runs: the leader of a (by now quiet) group crashes or is cut off.
    QuietLeaderFault,
    /// The bound on replacing the quiet leader faulted at `at` is up.
    FailoverDeadline {
        at: Nanos,
    },
    /// A snapshot job of node `node` (see [`PendingJob`]) commits.
    SnapshotJob {
        node: u8,
        job: u64,
    },
    /// The node is restarted in place (see `World::restart_in_place`).
    RestartInPlace {
        node: u8,
    },
    /// A watching client (re)starts its watch, unless one is running.
    WatcherStart {
        watcher: u32,
    },
    /// A watch request not yet answered is given up and resumed elsewhere.
    WatcherTimeout {
        watcher: u32,
        request: u64,
    },
}

/// The production group executor, with the simulator's state machine and I/O.
type Exec = GroupExecutor<SimSm, SimIo>;

struct Node {
    id: NodeId,
    /// The running group (`None` while the node is down).
    exec: Option<Exec>,
    /// What the executor's turns did, for `World::drain`.
    mailbox: Mailbox,
    /// The digest the state machine reported for the snapshot being taken.
    snapshot_digest: Option<u64>,
    /// Entries handed over for applying and not yet applied (id, payload hash).
    applying: VecDeque<(LogId, u64)>,
    incarnation: u32,
    clock: NodeClock,
    last_local_ns: Nanos,
    paused_until: Nanos,
    /// The latest wake time any pause scheduled (a heal may wake the node
    /// earlier, but events it held back still come at that time).
    held_until: Nanos,
    storage: ModelStorage,
    applied: Index,
    /// World time of the live scheduled tick (`Nanos::MAX`: none).
    tick_at: Nanos,
    restart_scheduled: bool,
    /// The last vote this node granted, as `(term, candidate)`: it must
    /// survive any crash while the node is still in that term.
    granted_vote: Option<(Term, NodeId)>,
    /// The newest log position reported durable to the core (and still in
    /// the log): it must survive any crash.
    acked_log: LogId,
    /// `None` with modelled storage.
    engine: Option<EngineDisk>,
    /// Every node watches the whole tree from index 0; its stream must match
    /// the global stream and the node's own state (see `check_watch`).
    watch: Option<WatchId>,
    /// How many events of the global watch stream this node has produced.
    watch_pos: usize,
    /// A bad disk detected corruption: the node stays down (it would need
    /// repair from its peers, which is outside this simulator's scope).
    retired: bool,
    /// The durable snapshot (survives crashes; re-read from the engine at restart).
    snap: Option<Arc<NodeSnapshot>>,
    /// An incoming snapshot's chunks (lost at a crash).
    staged: Option<(LogId, Vec<u8>)>,
    /// The configuration in force at the applied index (a snapshot's meta).
    applied_membership: Membership,
    /// Lost its disk and has not rejoined yet: restarts pass
    /// `rejoin_after_data_loss` until the core's status says it is done
    /// (what a driver persists).
    rejoining: bool,
    /// The server's request path, which the clients' frames go through.
    path: RequestPath,
    /// The watches clients started here (none yet: the world watches itself).
    watches: ConnWatches,
    /// Snapshot jobs running on the storage side, in start order.
    jobs: Vec<PendingJob>,
}

/// A snapshot job (taking this node's snapshot, installing a leader's) as
/// the tokio shell runs it: off the group, committing to storage after its
/// writes and syncs, then reporting to the group that started it. Checked
/// and encoded when it starts; its commit is a later [`Event::SnapshotJob`].
struct PendingJob {
    id: u64,
    /// The incarnation whose group started it. Another one means the job
    /// outlived its group: a stop that did not wait for it (see
    /// `World::restart_in_place`).
    incarnation: u32,
    meta: SnapshotMeta,
    data: Bytes,
    digest: u64,
    /// An install's decoded state (`None`: a snapshot of this node's own).
    install: Option<KvStateMachine>,
}

impl Node {
    /// The core, if the node is up.
    fn raw(&self) -> Option<&RawNode> {
        self.exec.as_ref().map(|e| e.raw())
    }

    /// The kv state machine, if the node is up.
    fn kv(&self) -> Option<&KvStateMachine> {
        self.exec.as_ref().map(|e| &e.sm().kv)
    }

    fn kv_mut(&mut self) -> Option<&mut KvStateMachine> {
        self.exec.as_mut().map(|e| &mut e.sm_mut().kv)
    }

    /// The core is told `up_to` is durable; remember it if it is still in
    /// the log (a late acknowledgement of a replaced suffix is not).
    fn note_persisted(&mut self, up_to: LogId) {
        let term = self.storage.term_at(up_to.index);
        if term == Some(up_to.term) && up_to.index >= self.acked_log.index {
            self.acked_log = up_to;
        }
    }
}

struct CurrentOp {
    op: ClientOp,
    seq: u64,
    history_index: usize,
    /// The first request id (attempt) of this operation: answers to ids from
    /// here to `attempt` are about it.
    first_attempt: u64,
    attempt: u64,
    /// Where and when its tries go: the client library's own decisions.
    route: Route,
}

struct Client {
    /// The lock this client holds (it releases it as its next operation).
    holding: Option<u64>,
    /// The lock this client is queued for (it polls or leaves next).
    waiting: Option<(u64, Nanos, Nanos)>,
    id: u64,
    /// The process this client is a task of (see [`Process`]).
    process: usize,
    target: usize,
    current: Option<CurrentOp>,
}

/// A client process: its tasks (clients, each one operation at a time, each
/// its own process for the linearizability checker) share one session and
/// one connection per node, as the tasks of one application share a
/// `tarn::Client`. So several writes of a session are in flight at once
/// (`first_unacked_seq` below `seq`, answered out of order), and a node's
/// reader may find several writes on a connection at once and pack them
/// into one entry. Locks and TTL nodes belong to a session: only the task
/// whose id is the session's takes locks and arms TTLs, so the lock and
/// TTL checkers still know who holds what.
struct Process {
    /// The session's client id (the id of its first task).
    session: u64,
    /// The last write seq taken.
    seq: u64,
    /// Write seqs taken and not yet answered.
    outstanding: BTreeSet<u64>,
    tasks: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Faulty,
    Healing { deadline: Nanos },
}

pub struct World {
    config: RunConfig,
    profile: Profile,
    queue: EventQueue<Event>,
    net: Network,
    nodes: Vec<Node>,
    clients: Vec<Client>,
    history: Vec<Op>,
    /// Operations no client invoked: TTL expiries that removed a temporary register.
    system_ops: Vec<Op>,
    trace: Trace,
    phase: Phase,
    rng_process: SimRng,
    rng_disk: SimRng,
    rng_workload: SimRng,
    rng_partition: SimRng,
    rng_ops: SimRng,
    rng_clock: SimRng,
    next_attempt: u64,
    next_value: u64,
    ops_completed: u64,
    events: u64,
    crashes: u64,
    // Checker state.
    leaders: HashMap<Term, NodeId>,
    /// Term and payload hash of every committed (applied somewhere) index, from 1.
    applied_log: Vec<(Term, u64)>,
    /// Payload hash of every entry ever appended anywhere, by (term, index).
    entry_ids: HashMap<(Term, Index), u64>,
    /// The whole-tree watch stream, as (index, key hash, event hash).
    watch_stream: Vec<(Index, u64, u64)>,
    /// The smallest voter set (either half of a joint one) appended so far.
    voters_min: usize,
    /// Vote grants by (voter, voter incarnation, term). A wiped node that saw
    /// its removal committed is a new member when it is added back (see
    /// `check_vote`), so its incarnation counts up there.
    votes: HashMap<(NodeId, u64, Term), NodeId>,
    /// Per node: how many times it came back as a new member after a wipe.
    incarnations: Vec<u64>,
    /// The kv digest after applying each index at which some node took,
    /// installed or restarted from a snapshot: every node applying that index
    /// (or installing a snapshot of it) must reach the same digest.
    snapshot_digests: SnapshotDigests,
    snapshots: u64,
    installs: u64,
    compactions: u64,
    expiries: u64,
    /// The node whose disk was wiped and that has not rejoined as a voter yet.
    wiped: Option<usize>,
    wipes: u64,
    multi_changes: u64,
    joints: u64,
    truncations: u64,
    truncated_max: u64,
    ttl_races: u64,
    handoffs: u64,
    lease_reads_skewed: u64,
    /// The timer grid in effect (`Profile::timer_grid_ns` as the driver
    /// lowers it for this run's timing; 0: none).
    timer_grid_ns: Nanos,
    /// Clients watching the whole tree through the request path (0-2 a run).
    watchers: Vec<Watcher>,
    rng_watch: SimRng,
    watch_events: u64,
    watch_resumes: u64,
    /// The read being stepped in `client_arrive`, and whether its node
    /// served it in that same turn (from the lease).
    lease_probe: Option<u64>,
    lease_probe_served: bool,
    /// The index the latest released read barrier was confirmed at (reads
    /// answered after it in the mailbox were released by it).
    read_ready_index: Index,
    /// Invocation time of each temporary write or own refresh, by (client
    /// id, seq), until its first application.
    temp_invokes: HashMap<(u64, u64), Nanos>,
    /// Per temporary register, the arming in force in log order: the
    /// invocation time and TTL of the last write or refresh that armed it.
    temp_arms: HashMap<String, (Nanos, Nanos)>,
    /// Per node, its clock jumps as (world time, total jumped after it).
    jump_log: Vec<Vec<(Nanos, Nanos)>>,
    /// The next node to grant a vote gets its disk wiped.
    wipe_armed: bool,
    /// Lease profile: the newest term whose first commit steered a read at
    /// the nodes still leading an older term, and the (client, node) of the
    /// read `client_start` is about to draw.
    probed_term: Term,
    probe: Option<(usize, usize)>,
    prober: Option<usize>,
    /// The next node to start a snapshot job is restarted in place while
    /// the job runs.
    restart_armed: bool,
    next_job: u64,
    restarts_in_place: u64,
    jobs_waited: u64,
    rng_ttl: SimRng,
    rng_locks: SimRng,
    /// World time at which each expiry entry (by payload hash) was first
    /// proposed, and by which node: the invocation of the system remove it
    /// records, and the clock its deadline was read from.
    expiry_proposals: HashMap<u64, (Nanos, usize)>,
    /// Lock holders in log order (at each entry's first application), and
    /// the newest request seq executed per client (retries are answered
    /// from the session, not executed again).
    lock_holders: HashMap<String, u64>,
    /// (session, seq) of every request executed: a session's writes may
    /// apply out of seq order, so a set, not a high-water mark.
    executed: HashSet<(u64, u64)>,
    processes: Vec<Process>,
    rng_sessions: SimRng,
    /// How long a node's connection reader may take to run after a frame
    /// arrives (0 without shared sessions: every frame is served at once).
    reader_delay_ns: Nanos,
    /// Frames a connection's reader has not read yet, by (process, node).
    conns: HashMap<(usize, u8), Vec<(u32, Bytes)>>,
    write_batches: u64,
    pipelined_writes: u64,
    /// World time of each node's last clock jump (lease runs space them).
    last_jump_ns: Vec<Nanos>,
    /// Quiescence runs: node-level liveness and idle windows.
    quiet: QuietWorld,
    failure: Option<Failure>,
}

/// Node-level liveness pings go out this often (the transport's default).
const PING_INTERVAL_NS: Nanos = 25 * NANOS_PER_MILLI;
/// A peer silent this long is suspected down (under the 150 ms minimum
/// election timeout, as the driver configures it).
const SUSPECT_AFTER_NS: Nanos = 100 * NANOS_PER_MILLI;
/// A quiescent leader with armed TTLs is still ticked this often (the
/// driver's periodic tick) so its expiry proposals go out.
const QUIET_LEADER_TICK_NS: Nanos = 50 * NANOS_PER_MILLI;

/// What quiescence runs add to the world (issue 17): every pair of nodes
/// pings each other through the simulated network (so partitions, drops,
/// pauses and crashes silence them), each node suspects a peer it has not
/// heard from for `SUSPECT_AFTER_NS` and tells its group (`PeerDown`,
/// `PeerUp`), as the tokio transport does; and clients go idle in windows
/// during which the group quiesces and its leader may crash or be cut off.
struct QuietWorld {
    rng: SimRng,
    /// `last_heard[i][j]`: world time node `i` last heard a ping of `j`.
    last_heard: Vec<Vec<Nanos>>,
    /// `suspected[i][j]`: what node `i` last told its group about `j`.
    suspected: Vec<Vec<bool>>,
    /// `reset[i][j]`: `j` restarted while `i` was paused; `i` suspects it
    /// at its next liveness round.
    reset: Vec<Vec<bool>>,
    /// No client starts an operation before this world time.
    idle_until: Nanos,
    /// Quiet leaders crashed or cut off (coverage).
    leader_faults: u64,
    /// The latest quiet leader's fault, until another node leads.
    failover: Option<PendingFailover>,
    /// Timed failovers (another node led in a later term while the faulted
    /// leader was still down or cut off, in a healthy cluster with no other
    /// fault meanwhile), how many took longer than two election timeouts
    /// (the largest of the run), and the longest.
    failovers: u64,
    failovers_slow: u64,
    failover_max_ns: Nanos,
}

/// A quiet leader crashed or cut off at `at`, leader in `term`: its group
/// must elect another leader (issue 17: within two election timeouts).
struct PendingFailover {
    leader: usize,
    term: Term,
    at: Nanos,
    /// Another fault struck meanwhile: counted, but not timed.
    disturbed: bool,
}

/// A small stable code per message kind (for the trace and digest).
pub fn message_code(body: &MessageBody) -> u64 {
    match body {
        MessageBody::PreVoteRequest { .. } => 0,
        MessageBody::PreVoteResponse { .. } => 1,
        MessageBody::VoteRequest { .. } => 2,
        MessageBody::VoteResponse { .. } => 3,
        MessageBody::AppendEntries { .. } => 4,
        MessageBody::AppendResponse { .. } => 5,
        MessageBody::Heartbeat { .. } => 6,
        MessageBody::HeartbeatResponse { .. } => 7,
        MessageBody::TimeoutNow => 8,
        MessageBody::ReadIndexRequest { .. } => 9,
        MessageBody::ReadIndexResponse { .. } => 10,
        MessageBody::InstallSnapshot { .. } => 11,
        MessageBody::SnapshotResponse { .. } => 12,
        MessageBody::Quiesce { .. } => 13,
    }
}

fn role_code(role: Role) -> u64 {
    match role {
        Role::Follower => 0,
        Role::PreCandidate => 1,
        Role::Candidate => 2,
        Role::Leader => 3,
    }
}

fn net_drop_code(reason: NetDrop) -> u64 {
    match reason {
        NetDrop::Loss => 0,
        NetDrop::Partition => 1,
        NetDrop::QueueFull => 2,
        NetDrop::Flapping => 3,
    }
}

fn result_code(r: &OpResult) -> u64 {
    match r {
        OpResult::Unknown => 0,
        OpResult::Ok => 1,
        OpResult::Read(None) => 2,
        OpResult::Read(Some(v)) => 3 | (v << 8),
        OpResult::Cas(ok) => 4 | (u64::from(*ok) << 8),
        OpResult::Removed(e) => 5 | (u64::from(*e) << 8),
        OpResult::Lock(acquired) => 6 | (u64::from(*acquired) << 8),
        OpResult::Queued => 7,
        OpResult::Exists(e) => 8 | (u64::from(*e) << 8),
    }
}

impl World {
    pub fn new(config: RunConfig) -> World {
        assert!((1..=NODES_MAX).contains(&config.nodes), "--nodes {}: want 1..={NODES_MAX}", config.nodes);
        let seed = config.seed;
        let mut profile = Profile::new(config.profile, &mut SimRng::new(seed, Stream::Profile));
        let mut rng_quiesce = SimRng::new(seed, Stream::Quiesce);
        profile.draw_quiesce(&mut rng_quiesce);
        if config.async_sync_ns.is_some() {
            // Async mode does not survive a power loss, which is what a
            // simulated crash is (see `RunConfig::async_sync_ns`).
            profile.intervals.crash_ns = 0;
            profile.intervals.wipe_ns = 0;
            profile.crash_mid_flush_ppm = 0;
            profile.disk_read_error_ppm = 0;
            profile.disk_write_error_ppm = 0;
            profile.disk_sync_error_ppm = 0;
            profile.disk_corruption_ppm = 0;
        }
        let net = Network::new(config.nodes, profile.net.clone(), SimRng::new(seed, Stream::Network));
        // Not in the lease profile: a grid only makes timers later, and the
        // lease race it is built for needs a new leader as early as the
        // configuration allows (with the grid its one seed in 1,500 that
        // finds a 2 % too long lease no longer does).
        if profile.kind != ProfileKind::Lease && SimRng::new(seed, Stream::Grid).chance(PPM / 2) {
            profile.timer_grid_ns = HEARTBEAT_COALESCE_DEFAULT.as_nanos() as Nanos;
        }
        let mut rng_watch = SimRng::new(seed, Stream::Watch);
        let watchers = (0..if profile.watchers { rng_watch.below(3) } else { 0 })
            .map(|_| Watcher { target: rng_watch.below(config.nodes as u64) as usize, ..Watcher::default() })
            .collect();
        let mut rng_clock = SimRng::new(seed, Stream::Clock);
        let nodes = (0..config.nodes)
            .map(|i| {
                let drift = if profile.drift_ppm_max == 0 {
                    0
                } else if profile.drift_at_bound {
                    if rng_clock.chance(PPM / 2) {
                        profile.drift_ppm_max
                    } else {
                        -profile.drift_ppm_max
                    }
                } else {
                    rng_clock.between(0, 2 * profile.drift_ppm_max as u64) as i64 - profile.drift_ppm_max
                };
                let offset = if profile.kind == ProfileKind::Calm {
                    0
                } else {
                    rng_clock.between(0, CLOCK_OFFSET_MAX_NS)
                };
                Node {
                    id: i as NodeId + 1,
                    exec: None,
                    mailbox: Mailbox::default(),
                    snapshot_digest: None,
                    applying: VecDeque::new(),
                    incarnation: 0,
                    clock: NodeClock::new(offset, drift),
                    last_local_ns: 0,
                    paused_until: 0,
                    held_until: 0,
                    storage: ModelStorage::new(),
                    applied: 0,
                    tick_at: Nanos::MAX,
                    restart_scheduled: false,
                    granted_vote: None,
                    acked_log: LogId::ZERO,
                    engine: None,
                    retired: false,
                    watch: None,
                    watch_pos: 0,
                    snap: None,
                    staged: None,
                    applied_membership: Membership::default(),
                    rejoining: false,
                    path: RequestPath::new(
                        i as NodeId + 1,
                        kv_config(&config),
                        admission_limits(&config),
                        Arc::new(tarn_service::NoMetrics),
                    ),
                    watches: ConnWatches::default(),
                    jobs: Vec::new(),
                }
            })
            .collect();
        let mut rng_workload = SimRng::new(seed, Stream::Workload);
        let mut clients: Vec<Client> = (0..profile.clients)
            .map(|i| Client {
                holding: None,
                waiting: None,
                id: u64::from(i) + 1,
                process: 0,
                target: rng_workload.below(config.nodes as u64) as usize,
                current: None,
            })
            .collect();
        // Half the swarm and chaos runs group their clients into processes
        // of 1-4 tasks sharing a session (not the lease profile: its race
        // needs its timing as it is).
        let mut rng_sessions = SimRng::new(seed, Stream::Sessions);
        let shared = profile.kind != ProfileKind::Lease && rng_sessions.chance(PPM / 2);
        let mut processes = Vec::new();
        let mut first = 0;
        while first < clients.len() {
            let tasks = if shared { 1 + rng_sessions.below(4) as usize } else { 1 };
            let tasks = tasks.min(clients.len() - first);
            for c in &mut clients[first..first + tasks] {
                c.process = processes.len();
            }
            let session = clients[first].id;
            processes.push(Process { session, seq: 0, outstanding: BTreeSet::new(), tasks });
            first += tasks;
        }
        let reader_delay_ns =
            if shared { rng_sessions.between(50 * NANOS_PER_MICRO, 2 * NANOS_PER_MILLI) } else { 0 };
        // The lease profile's prober: a client of its own that reads only
        // when `probe_stale_leaders` sends it (the others are mostly busy).
        let prober = (profile.kind == ProfileKind::Lease).then(|| {
            let c = clients.len();
            let id = c as u64 + 1;
            clients.push(Client {
                holding: None,
                waiting: None,
                id,
                process: processes.len(),
                target: 0,
                current: None,
            });
            processes.push(Process { session: id, seq: 0, outstanding: BTreeSet::new(), tasks: 1 });
            c
        });
        let trace = Trace::new(config.trace);
        let mut nodes: Vec<Node> = nodes;
        if config.storage == StorageKind::Engine {
            let mut rng_bad = SimRng::new(seed, Stream::Disk);
            let bad = if config.nodes >= 3 && profile.disk_corruption_ppm > 0 {
                Some(rng_bad.below(config.nodes as u64) as usize)
            } else {
                None
            };
            let faults = DiskFaults {
                read_error_ppm: profile.disk_read_error_ppm,
                write_error_ppm: profile.disk_write_error_ppm,
                sync_error_ppm: profile.disk_sync_error_ppm,
                corruption_ppm: profile.disk_corruption_ppm,
            };
            for (i, n) in nodes.iter_mut().enumerate() {
                let vfs =
                    SimVfs::new(SimRng::for_node(seed, Stream::Disk, i as u64 + 1), faults, bad == Some(i));
                n.engine = Some(EngineDisk {
                    vfs,
                    storage: None,
                    flush_scheduled: false,
                    report: FlushReport::default(),
                    background: config.async_sync_ns.map(|ns| BackgroundSync::new(&config, ns)),
                });
            }
        }
        World {
            profile,
            queue: EventQueue::new(),
            net,
            nodes,
            clients,
            history: Vec::new(),
            system_ops: Vec::new(),
            trace,
            phase: Phase::Faulty,
            rng_process: SimRng::new(seed, Stream::Process),
            rng_disk: SimRng::new(seed, Stream::Disk),
            rng_workload,
            rng_partition: SimRng::new(seed, Stream::Partition),
            rng_ops: SimRng::new(seed, Stream::Operations),
            rng_clock,
            next_attempt: 1,
            next_value: 0,
            ops_completed: 0,
            events: 0,
            crashes: 0,
            leaders: HashMap::new(),
            applied_log: Vec::new(),
            entry_ids: HashMap::new(),
            watch_stream: Vec::new(),
            voters_min: config.nodes,
            votes: HashMap::new(),
            incarnations: vec![0; config.nodes],
            snapshot_digests: SnapshotDigests::default(),
            snapshots: 0,
            installs: 0,
            compactions: 0,
            expiries: 0,
            wiped: None,
            wipes: 0,
            multi_changes: 0,
            joints: 0,
            truncations: 0,
            truncated_max: 0,
            ttl_races: 0,
            handoffs: 0,
            lease_reads_skewed: 0,
            lease_probe: None,
            lease_probe_served: false,
            read_ready_index: 0,
            temp_invokes: HashMap::new(),
            temp_arms: HashMap::new(),
            jump_log: vec![Vec::new(); config.nodes],
            wipe_armed: false,
            probed_term: 0,
            probe: None,
            prober,
            restart_armed: false,
            next_job: 0,
            restarts_in_place: 0,
            jobs_waited: 0,
            rng_ttl: SimRng::new(seed, Stream::Ttl),
            rng_locks: SimRng::new(seed, Stream::Locks),
            timer_grid_ns: 0,
            watchers,
            rng_watch,
            watch_events: 0,
            watch_resumes: 0,
            expiry_proposals: HashMap::new(),
            lock_holders: HashMap::new(),
            executed: HashSet::new(),
            processes,
            rng_sessions,
            reader_delay_ns,
            conns: HashMap::new(),
            write_batches: 0,
            pipelined_writes: 0,
            last_jump_ns: vec![0; config.nodes],
            quiet: QuietWorld {
                rng: rng_quiesce,
                last_heard: vec![vec![0; config.nodes]; config.nodes],
                suspected: vec![vec![false; config.nodes]; config.nodes],
                reset: vec![vec![false; config.nodes]; config.nodes],
                idle_until: 0,
                leader_faults: 0,
                failover: None,
                failovers: 0,
                failovers_slow: 0,
                failover_max_ns: 0,
            },
            failure: None,
            config,
        }
    }

    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    fn now(&self) -> Nanos {
        self.queue.now()
    }

    fn record(&mut self, node: u64, kind: TraceKind, a: u64, b: u64, c: u64) {
        self.trace.record(TraceEvent { at_ns: self.queue.now(), node, kind, a, b, c });
    }

    fn fail(&mut self, kind: FailureKind, property: &'static str, detail: String) {
        if self.failure.is_none() {
            self.failure = Some(Failure { kind, property, detail });
        }
    }

    /// The smallest majority any configuration of the run needed: a
    /// committed entry is durable on at least this many nodes.
    fn majority(&self) -> usize {
        self.voters_min / 2 + 1
    }

    fn raft_config(&self, idx: usize) -> Config {
        let mut c =
            Config::new(idx as NodeId + 1, self.config.seed.wrapping_mul(31).wrapping_add(idx as u64));
        c.max_clock_drift_ppm = CORE_DRIFT_BOUND_PPM;
        c.election_timeout_max_ns =
            c.election_timeout_min_ns + self.profile.election_timeout_spread_ns.max(1);
        c.lease_read = self.profile.lease_read;
        let s = &self.profile.snapshots;
        c.snapshot_after_entries = s.after_entries;
        c.snapshot_after_bytes = s.after_bytes;
        c.log_keep_tail_entries = s.keep_tail_entries;
        c.max_snapshot_chunk_bytes = s.chunk_bytes;
        c.max_log_tail_entries = s.log_tail_entries;
        c.max_entries_per_msg = self.profile.replication.entries_per_msg;
        c.max_inflight_msgs = self.profile.replication.inflight_msgs;
        c.max_entry_bytes = MAX_ENTRY_BYTES;
        c.rejoin_after_data_loss = self.nodes[idx].rejoining && self.config.rejoin_flag;
        c.quiesce = self.profile.quiesce.is_some();
        c.election_backoff = self.profile.election_backoff;
        #[cfg(feature = "planted-bugs")]
        {
            c.planted_bug = self.config.planted_bug;
        }
        c
    }

    fn membership(&self) -> Membership {
        Membership::new_voters((1..=self.nodes.len() as NodeId).collect::<Vec<_>>())
    }

    /// Runs to the end and checks everything. Panics propagate (the caller
    /// catches them to keep the trace).
    pub fn run(&mut self) {
        let grid = std::time::Duration::from_nanos(self.profile.timer_grid_ns);
        self.timer_grid_ns = effective_coalesce_quantum(&self.raft_config(0), grid).as_nanos() as Nanos;
        for idx in 0..self.nodes.len() {
            self.start_node(idx);
            if self.failure.is_some() {
                return;
            }
        }
        for c in (0..self.clients.len()).filter(|&c| Some(c) != self.prober) {
            let at = self.rng_workload.between(0, 10 * NANOS_PER_MILLI);
            self.queue.push(at, Event::ClientWake { client: c as u32 });
        }
        for w in 0..self.watchers.len() {
            let at = self.rng_watch.between(0, 500 * NANOS_PER_MILLI);
            self.queue.push(at, Event::WatcherStart { watcher: w as u32 });
        }
        for fault in FAULTS {
            self.schedule_fault(fault);
        }
        self.queue.push(self.config.sim_ns, Event::EndOfFaults);
        if let Some(q) = self.profile.quiesce {
            self.queue.push(PING_INTERVAL_NS, Event::LivenessRound);
            let at = self.quiet.rng.between(0, q.idle_every_ns);
            self.queue.push(at, Event::IdleStart);
        }
        while self.failure.is_none() {
            if let Phase::Healing { deadline } = self.phase {
                if self.clients.iter().all(|c| c.current.is_none()) {
                    break;
                }
                if self.queue.peek_time().is_none_or(|t| t > deadline) {
                    self.liveness_failure();
                    break;
                }
            }
            let Some((_, event)) = self.queue.pop() else { break };
            self.events += 1;
            self.handle(event);
        }
        if self.failure.is_none() {
            self.final_checks();
        }
    }

    fn liveness_failure(&mut self) {
        let mut detail =
            String::from("after every fault healed, these operations did not complete within the bound:");
        for c in &self.clients {
            if let Some(cur) = &c.current {
                let op = &self.history[cur.history_index];
                let _ = write!(
                    detail,
                    "\n  client {} op #{} {:?} on k{} invoked at {:.3}s",
                    c.id,
                    cur.history_index,
                    op.kind,
                    op.key,
                    op.invoke_ns as f64 / 1e9
                );
            }
        }
        for n in &self.nodes {
            match n.raw() {
                Some(raw) => {
                    let _ = write!(
                        detail,
                        "\n  n{}: {:?} term={} leader={:?} commit={} last={} {}{}",
                        n.id,
                        raw.role(),
                        raw.term(),
                        raw.leader(),
                        raw.commit_index(),
                        raw.last_log_id(),
                        describe_membership(raw.membership()),
                        if raw.status().rejoining { " rejoining" } else { "" }
                    );
                }
                None => {
                    let _ = write!(detail, "\n  n{}: down", n.id);
                }
            }
        }
        self.fail(FailureKind::Liveness, "liveness", detail);
    }

    fn report_fields(&self) -> (u64, u64) {
        let max_commit = self.applied_log.len() as u64;
        (self.history.len() as u64, max_commit)
    }

    /// Builds the report (also after a panic, from whatever state is left).
    pub fn report(&self, failure: Option<Failure>) -> RunReport {
        let (ops_invoked, max_commit) = self.report_fields();
        RunReport {
            seed: self.config.seed,
            failure,
            digest: self.trace.digest(),
            sim_ns: self.now(),
            events: self.events,
            ops_invoked,
            ops_completed: self.ops_completed,
            max_commit,
            crashes: self.crashes,
            disk_faults: self
                .nodes
                .iter()
                .filter_map(|n| n.engine.as_ref())
                .map(|e| {
                    let s = e.vfs.stats();
                    s.errors + s.corruptions + s.torn_writes
                })
                .sum(),
            snapshots: self.snapshots,
            installs: self.installs,
            compactions: self.compactions,
            restarts_in_place: self.restarts_in_place,
            jobs_waited: self.jobs_waited,
            write_batches: self.write_batches,
            pipelined_writes: self.pipelined_writes,
            failovers: self.quiet.failovers,
            failovers_slow: self.quiet.failovers_slow,
            failover_max_ms: self.quiet.failover_max_ns / NANOS_PER_MILLI,
            expiries: self.expiries,
            wipes: self.wipes,
            multi_changes: self.multi_changes,
            joints: self.joints,
            truncations: self.truncations,
            truncated_max: self.truncated_max,
            ttl_races: self.ttl_races,
            handoffs: self.handoffs,
            lease_reads_skewed: self.lease_reads_skewed,
            watch_events: self.watch_events,
            watch_resumes: self.watch_resumes,
            profile: self.profile.to_string(),
            last_events: self.trace.last(FAILURE_TRACE_EVENTS),
        }
    }

    pub fn take_failure(&mut self) -> Option<Failure> {
        self.failure.take()
    }

    // ----- events ----------------------------------------------------------------------

    fn handle(&mut self, event: Event) {
        let now = self.now();
        match event {
            Event::Deliver { from, to, message } => {
                let t = to as usize;
                if self.nodes[t].paused_until > now {
                    let at = self.wake_time(t);
                    self.queue.push(at, Event::Deliver { from, to, message });
                    return;
                }
                if !self.net.arrive(now, from as usize, t) {
                    self.record(u64::from(from) + 1, TraceKind::Drop, u64::from(to) + 1, 1, 0);
                    return;
                }
                if self.nodes[t].exec.is_none() {
                    return;
                }
                let code = message_code(&message.body);
                let entries = match &message.body {
                    MessageBody::AppendEntries { entries, .. } => entries.len() as u64,
                    _ => 0,
                };
                self.record(
                    u64::from(to) + 1,
                    TraceKind::Deliver,
                    u64::from(from) + 1,
                    message.term,
                    (code << 32) | entries,
                );
                if self.trace.prints_all() {
                    let rejoining = if message.rejoining { " (rejoining)" } else { "" };
                    println!("{:>30}{rejoining} {}", "", message_detail(&message));
                }
                self.step(t, GroupInput::Message(message));
            }
            Event::Tick { node, incarnation } => {
                let n = &mut self.nodes[node as usize];
                if n.incarnation != incarnation || n.tick_at != now || n.exec.is_none() {
                    return;
                }
                if n.paused_until > now {
                    let at = self.wake_time(node as usize);
                    self.nodes[node as usize].tick_at = at;
                    self.queue.push(at, Event::Tick { node, incarnation });
                    return;
                }
                n.tick_at = Nanos::MAX;
                // A leader's TTL expiry proposals ride on its turns (the
                // state machine's `leader_proposals`, as in the server).
                self.turn(node as usize, Turn { tick: true, ..Turn::default() });
            }
            Event::Disk { node, incarnation, done } => {
                let n = &mut self.nodes[node as usize];
                if n.incarnation != incarnation || n.exec.is_none() {
                    return;
                }
                if n.paused_until > now {
                    let at = self.wake_time(node as usize);
                    self.queue.push(at, Event::Disk { node, incarnation, done });
                    return;
                }
                let done = match done {
                    DiskDone::Flush => {
                        self.flush(node as usize);
                        return;
                    }
                    DiskDone::SyncDue => {
                        self.background_sync_due(node as usize);
                        return;
                    }
                    DiskDone::SyncDone => {
                        self.background_sync_done(node as usize);
                        return;
                    }
                    DiskDone::Delete(job) => {
                        // A failed unlink leaves a file the next open removes,
                        // as the driver's janitor only logs it.
                        job.run();
                        return;
                    }
                    DiskDone::Log(up_to) => {
                        n.storage.sync();
                        n.note_persisted(up_to);
                        StorageDone::Persisted { log: Some(up_to), hard_state: None }
                    }
                    DiskDone::HardState { term, vote } => {
                        n.storage.sync();
                        StorageDone::Persisted { log: None, hard_state: Some((term, vote)) }
                    }
                };
                self.persisted(node as usize, vec![done]);
            }
            Event::ClientWake { client } => {
                if now < self.quiet.idle_until {
                    self.queue.push(self.quiet.idle_until, Event::ClientWake { client });
                    return;
                }
                self.client_start(client as usize)
            }
            Event::LivenessRound => self.liveness_round(),
            Event::Ping { from, to } => {
                let t = to as usize;
                let arrived = self.net.ping_arrives(now, from as usize, t);
                let n = &self.nodes[t];
                if arrived && n.exec.is_some() && n.paused_until <= now {
                    self.quiet.last_heard[t][from as usize] = now;
                }
            }
            Event::IdleStart => self.idle_start(),
            Event::QuietLeaderFault => self.quiet_leader_fault(),
            Event::FailoverDeadline { at } => self.failover_deadline(at),
            Event::ClientArrive { node, client, bytes }
                if client < WATCHER_CLIENT_BASE
                    && self.processes[self.clients[client as usize].process].tasks > 1 =>
            {
                self.conn_arrive(node as usize, client, bytes)
            }
            Event::ClientArrive { node, client, bytes } => self.client_arrive(node as usize, client, bytes),
            Event::ConnRead { node, process } => self.conn_read(node as usize, process as usize),
            Event::ClientReply { client, bytes } if client >= WATCHER_CLIENT_BASE => {
                self.watcher_reply((client - WATCHER_CLIENT_BASE) as usize, bytes)
            }
            Event::ClientReply { client, bytes } => self.client_reply(client as usize, bytes),
            Event::WatcherStart { watcher } => {
                if self.watchers[watcher as usize].request.is_none() {
                    self.watcher_send(watcher as usize);
                }
            }
            Event::WatcherTimeout { watcher, request } => {
                let w = &self.watchers[watcher as usize];
                if w.request == Some(request) && !w.watching {
                    self.watcher_abandon(watcher as usize, request);
                    self.watcher_resume(watcher as usize, true);
                }
            }
            Event::ClientTimeout { client, attempt } => {
                let nodes = self.nodes.len();
                let c = &mut self.clients[client as usize];
                if let Some(cur) = c.current.as_mut().filter(|cur| cur.attempt == attempt) {
                    // The wait was the pause: the next node at once.
                    let retry = cur.route.timed_out(c.target);
                    c.target = route_target(c.target, retry.leader, nodes);
                    self.client_send(client as usize);
                }
            }
            Event::ClientRetry { client, attempt } => {
                if self.clients[client as usize].current.as_ref().is_some_and(|cur| cur.attempt == attempt) {
                    self.client_send(client as usize);
                }
            }
            Event::Fault(fault) => {
                if self.phase == Phase::Faulty {
                    self.inject(fault);
                    self.schedule_fault(fault);
                }
            }
            Event::HealNetwork => {
                // A cut-off quiet leader is back before anyone replaced it:
                // nothing to time.
                self.quiet.failover = None;
                self.net.heal();
                self.record(0, TraceKind::Heal, 0, 0, 0);
            }
            Event::Restart { node } => self.restart(node as usize),
            Event::SnapshotJob { node, job } => self.snapshot_job_done(node as usize, job),
            Event::RestartInPlace { node } => self.restart_in_place(node as usize),
            Event::EndOfFaults => self.end_of_faults(),
            Event::Operator => self.operator(),
        }
    }

    // ----- nodes -----------------------------------------------------------------------

    fn start_node(&mut self, idx: usize) {
        let now = self.now();
        // A fresh process has heard from everyone just now and suspects nobody.
        self.quiet.last_heard[idx].iter_mut().for_each(|t| *t = now);
        self.quiet.suspected[idx].iter_mut().for_each(|s| *s = false);
        self.quiet.reset[idx].iter_mut().for_each(|r| *r = false);
        let config = self.raft_config(idx);
        let membership = self.membership();
        let Some(rec) = self.open_storage(idx) else { return };
        self.check_recovered(idx, &rec);
        let Recovery { hard_state: hs, snapshot, sm, log } = rec;
        let recovered = match &snapshot {
            None if log.is_empty() && hs == HardState::default() => {
                Recovered::new_cluster(membership.voters.iter().copied())
            }
            None => Recovered::from_log_and_initial(hs, membership.clone(), log),
            Some(s) => {
                let meta = s.meta.clone();
                let latest = log.iter().rev().find_map(|e| match &e.payload {
                    EntryPayload::Membership(m) => Some(m.clone()),
                    _ => None,
                });
                let mut r = Recovered::from_log(hs, latest.unwrap_or_else(|| meta.membership.clone()), log);
                if r.tail.is_empty() {
                    r.last_log_id = meta.last_log_id;
                }
                r.applied = meta.last_log_id.index;
                r.snapshot = Some(meta);
                r.initial_membership = Some(membership.clone());
                r
            }
        };
        let kv_config = kv_config(&self.config);
        let digests = self.snapshot_digests.clone();
        let n = &mut self.nodes[idx];
        n.snap.clone_from(&snapshot);
        match RawNode::new(config, recovered) {
            Ok(raw) => {
                n.staged = None;
                n.mailbox.clear();
                n.applying.clear();
                n.snapshot_digest = None;
                let (kv, snapshot_at) = match (sm, &snapshot) {
                    (Some(sm), Some(s)) => {
                        n.applied = s.meta.last_log_id.index;
                        n.applied_membership = s.meta.membership.clone();
                        (sm, s.meta.last_log_id)
                    }
                    _ => {
                        n.applied = 0;
                        n.applied_membership = membership;
                        (KvStateMachine::new(kv_config), LogId::ZERO)
                    }
                };
                let sm = SimSm::new(kv, n.mailbox.clone(), digests);
                // The executor steps the core once as it is built: at the
                // node's clock, never at zero.
                let mut io = SimIo::new(n.mailbox.clone());
                io.now = n.clock.local(now).max(n.last_local_ns);
                n.last_local_ns = io.now;
                let counters = Arc::new(GroupCounters::default());
                let membership = n.applied_membership.clone();
                // Ids unique per incarnation (seed 950024272).
                let id_base = u64::from(n.incarnation) << 40;
                n.exec = Some(
                    GroupExecutor::new(GROUP, raw, sm, io, counters, snapshot_at, membership, snapshot_at)
                        .with_id_base(id_base),
                );
                n.tick_at = Nanos::MAX;
                n.restart_scheduled = false;
                if !self.rewatch(idx) {
                    return;
                }
                self.turn(idx, Turn { tick: true, ..Turn::default() });
            }
            Err(error) => {
                let id = n.id;
                self.fail(
                    FailureKind::Safety,
                    "recovery",
                    format!("n{id} cannot restart from its storage: {error}"),
                );
            }
        }
    }

    /// (Re)registers node `idx`'s whole-tree watch from its applied index
    /// (at a start or after a snapshot install cut the old one off), and
    /// positions it in the global stream after the events up to that index.
    fn rewatch(&mut self, idx: usize) -> bool {
        let n = &mut self.nodes[idx];
        let old = n.watch.take();
        let Some(kv) = n.kv_mut() else { return true };
        if let Some(old) = old {
            kv.unwatch(old);
        }
        let applied = kv.applied_index();
        let registered = kv.watch("", true, None);
        n.watch_pos = self.watch_stream.partition_point(|&(index, _, _)| index <= applied);
        match registered {
            Ok(id) => {
                n.watch = Some(id);
                true
            }
            Err(error) => {
                let detail = format!("n{}: cannot watch the tree: {error:?}", n.id);
                self.fail(FailureKind::Safety, "watch-register", detail);
                false
            }
        }
    }

    /// Opens the node's storage and reads back its hard state, snapshot and
    /// log. `None` if the node cannot start now (retired, retrying, or failed).
    fn open_storage(&mut self, idx: usize) -> Option<Recovery> {
        let now = self.now();
        let storage_config = storage_config(self.nodes[idx].id, &self.config);
        let n = &mut self.nodes[idx];
        let id = n.id;
        let Some(engine) = n.engine.as_mut() else {
            // Modelled storage: the snapshot was durable when written.
            let snap_index = n.snap.as_ref().map_or(0, |s| s.meta.last_log_id.index);
            let log: Vec<Entry> = n.storage.log().iter().filter(|e| e.index > snap_index).cloned().collect();
            let snapshot = n.snap.clone();
            let hard_state = n.storage.hard_state();
            let sm = match snapshot
                .as_ref()
                .map(|s| decode_snapshot_blob(&s.data, kv_config(&self.config)))
                .transpose()
            {
                Ok(sm) => sm,
                Err(error) => {
                    self.fail(FailureKind::Safety, "recovery", format!("n{id}: own snapshot: {error}"));
                    return None;
                }
            };
            return Some(Recovery { hard_state, snapshot, sm, log });
        };
        let vfs = engine.vfs.clone();
        type Opened = (Storage, HardState, Option<(SnapshotMeta, Vec<u8>)>, Vec<Entry>);
        let opened = (|| -> Result<Opened, StorageError> {
            let mut storage = Storage::open(Arc::new(vfs), storage_config)?;
            let rec = storage.open_group(GROUP)?;
            let snap = storage.read_snapshot(GROUP)?;
            let after = snap.as_ref().map_or(0, |(m, _)| m.last_log_id.index);
            let lo = rec.first_index.max(after + 1);
            let mut log = Vec::new();
            if rec.last_log_id.index >= lo {
                storage.entries(GROUP, lo, rec.last_log_id.index + 1, u64::MAX, &mut log)?;
            }
            Ok((storage, rec.hard_state, snap, log))
        })();
        let bad_disk = engine.vfs.is_bad_disk();
        match opened {
            Ok((storage, hs, snap, log)) => {
                let snap_last = snap.as_ref().map_or(LogId::ZERO, |(m, _)| m.last_log_id);
                if log.first().is_some_and(|e| e.index != snap_last.index + 1) {
                    let detail = format!(
                        "n{id}: recovered log starts at {} after the snapshot at {snap_last}",
                        log[0].index
                    );
                    self.fail(FailureKind::Safety, "recovery", detail);
                    return None;
                }
                let (snapshot, sm) = match snap {
                    None => (None, None),
                    Some((meta, data)) => match decode_snapshot_blob(&data, kv_config(&self.config)) {
                        Ok(sm) => {
                            let digest = sm.digest();
                            let s = NodeSnapshot { meta, data: Bytes::from(data), digest };
                            (Some(Arc::new(s)), Some(sm))
                        }
                        Err(error) if bad_disk => {
                            let _ = error;
                            n.retired = true;
                            self.record(idx as u64 + 1, TraceKind::DiskError, 2, 0, 0);
                            return None;
                        }
                        Err(error) => {
                            let detail = format!(
                                "n{id}: the storage engine returned snapshot {snap_last} and it does not decode: {error}"
                            );
                            self.fail(FailureKind::Safety, "recovery", detail);
                            return None;
                        }
                    },
                };
                engine.storage = Some(storage);
                engine.flush_scheduled = false;
                n.storage = ModelStorage::recovered(hs, snap_last, &log);
                Some(Recovery { hard_state: hs, snapshot, sm, log })
            }
            Err(StorageError::Corruption { .. }) if bad_disk => {
                n.retired = true;
                self.record(idx as u64 + 1, TraceKind::DiskError, 2, 0, 0);
                None
            }
            Err(
                StorageError::Io { .. } | StorageError::Unwritable { .. } | StorageError::Poisoned { .. },
            ) => {
                // An injected EIO during recovery: try again a little later.
                n.restart_scheduled = true;
                self.record(idx as u64 + 1, TraceKind::DiskError, 1, 0, 0);
                self.queue.push(now + RESTART_RETRY_NS, Event::Restart { node: idx as u8 });
                None
            }
            Err(error) => {
                let detail = format!("n{id} cannot recover its storage on a healthy disk: {error}");
                self.fail(FailureKind::Safety, "recovery", detail);
                None
            }
        }
    }

    /// What a restarted node recovered must include everything it
    /// acknowledged as durable: the log up to its last `LogPersisted` (or a
    /// snapshot covering it), every vote it granted in its current term, and
    /// at least the snapshot it last wrote; and a recovered snapshot must
    /// hold the state every node had at its index.
    fn check_recovered(&mut self, idx: usize, rec: &Recovery) {
        let n = &self.nodes[idx];
        if n.engine.as_ref().is_some_and(|e| e.vfs.is_bad_disk()) {
            return;
        }
        let (id, acked, granted_vote) = (n.id, n.acked_log, n.granted_vote);
        let snap_last = rec.snapshot.as_ref().map_or(LogId::ZERO, |s| s.meta.last_log_id);
        let written = n.snap.as_ref().map(|s| s.meta.last_log_id);
        if let Some(s) = &rec.snapshot {
            if !self.check_snapshot_state(idx, s.meta.last_log_id, s.digest, "restarts from") {
                return;
            }
        }
        if let Some(written) = written {
            if snap_last.index < written.index {
                let detail = format!(
                    "n{id} wrote snapshot {written} durably, but after a crash it recovered {}",
                    if snap_last == LogId::ZERO { "none".to_string() } else { snap_last.to_string() }
                );
                self.fail(FailureKind::Safety, "snapshot-durability", detail);
                return;
            }
        }
        let in_log = |index: Index| -> Option<Term> {
            let first = rec.log.first()?.index;
            rec.log.get(index.checked_sub(first)? as usize).map(|e| e.term)
        };
        let covered = acked.index <= snap_last.index;
        // A recovered snapshot of a later term than the acknowledged entry,
        // below it, means the entry sat on a branch the snapshot's committed
        // state left behind (terms never decrease along a log, so it cannot
        // follow the snapshot), and installing the snapshot discards it: an
        // install whose snapshot was durable when the node crashed, before it
        // could drop the log itself (seed 24078876, 5 nodes 40 s: acked
        // 28@1457, recovered snapshot 29@1456 and no log).
        let superseded = snap_last.index < acked.index && acked.term < snap_last.term;
        if acked.index > 0 && !covered && !superseded && in_log(acked.index) != Some(acked.term) {
            let detail = format!(
                "n{id} acknowledged its log durable up to {acked}, but after a crash it recovered {} entries \
                 (last {:?}, snapshot {snap_last})",
                rec.log.len(),
                rec.log.last().map(Entry::log_id)
            );
            self.fail(FailureKind::Safety, "storage-durability", detail);
            return;
        }
        let hs = rec.hard_state;
        if let Some((term, candidate)) = granted_vote {
            if hs.term < term || (hs.term == term && hs.vote != Some(candidate)) {
                let detail = format!(
                    "n{id} granted its vote in term {term} to n{candidate}, but after a crash its durable hard state \
                     is term {} vote {:?}: a vote must be durable before it is granted",
                    hs.term, hs.vote
                );
                self.fail(FailureKind::Safety, "vote-durability", detail);
            }
        }
    }

    /// A snapshot at `last` with kv digest `digest` (taken, installed or
    /// recovered by node `idx`) must lie on the committed chain and hold the
    /// state every node reaches at its index. False after a failure.
    fn check_snapshot_state(&mut self, idx: usize, last: LogId, digest: u64, what: &str) -> bool {
        let id = idx + 1;
        let committed = last.index.checked_sub(1).and_then(|i| self.applied_log.get(i as usize)).map(|e| e.0);
        if last.index > 0 && committed != Some(last.term) {
            let detail = format!(
                "n{id} {what} a snapshot at {last}, but the committed entry at index {} is {committed:?}",
                last.index
            );
            self.fail(FailureKind::Safety, "snapshot-committed", detail);
            return false;
        }
        let known = *self
            .snapshot_digests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(last.index)
            .or_insert(digest);
        if known != digest {
            let detail = format!(
                "n{id} {what} a snapshot at {last} with kv digest {digest:016x}, but another node's state at index \
                 {} had digest {known:016x}",
                last.index
            );
            self.fail(FailureKind::Safety, "state-machine-safety", detail);
            return false;
        }
        true
    }

    /// The storage engine's group commit for node `idx`, pipelined as the
    /// tokio driver runs it: each flush syncs the staged entries with the
    /// watermark of the previous flush's, and reports entries up to that
    /// watermark. While one is owed, another flush is scheduled (it carries
    /// whatever was staged meanwhile, or only the watermark).
    fn flush(&mut self, idx: usize) {
        let now = self.now();
        let mid_flush_crash = self.profile.crash_mid_flush_ppm;
        let crash_now = self.phase == Phase::Faulty && self.rng_process.chance(mid_flush_crash);
        let die_at = self.rng_process.below(3);
        let n = &mut self.nodes[idx];
        let Some(engine) = n.engine.as_mut() else { return };
        engine.flush_scheduled = false;
        let Some(storage) = engine.storage.as_mut() else { return };
        if crash_now {
            engine.vfs.die_during_write(die_at);
        }
        storage.flush_pipelined(&mut engine.report);
        let owed = storage.needs_flush();
        let refused =
            engine.report.failed.iter().position(|(_, e)| !is_disk_fault(e, engine.vfs.is_bad_disk()));
        if let Some(i) = refused.filter(|_| !crash_now) {
            let (_, error) = engine.report.failed.swap_remove(i);
            self.storage_error(idx, 3, error);
            return;
        }
        if !engine.report.failed.is_empty() || crash_now {
            self.record(idx as u64 + 1, TraceKind::DiskError, 3, u64::from(crash_now), 0);
            let downtime = self.rng_process.between(NANOS_PER_MILLI, 100 * NANOS_PER_MILLI);
            self.crash(idx, downtime);
            return;
        }
        // The model's durable view is what survives the faults this run
        // injects: in async mode (no power loss) that is what was written.
        n.storage.sync();
        if let Some(bg) = n.engine.as_mut().and_then(|e| e.background.as_mut()) {
            bg.pacer.wrote(now);
            bg.oldest_uncovered.get_or_insert(now);
        }
        let report = &n.engine.as_ref().expect("engine present").report;
        let mut done = Vec::new();
        for p in &report.log {
            done.push(StorageDone::Persisted { log: Some(p.up_to), hard_state: None });
        }
        for (_, hs) in &report.hard_states {
            done.push(StorageDone::Persisted { log: None, hard_state: Some((hs.term, hs.vote)) });
        }
        for p in &done {
            if let StorageDone::Persisted { log: Some(up_to), .. } = p {
                self.nodes[idx].note_persisted(*up_to);
            }
        }
        if !done.is_empty() {
            self.persisted(idx, done);
        }
        if owed && self.nodes[idx].exec.is_some() {
            self.schedule_flush(idx);
        }
        self.schedule_background_sync(idx);
        self.check_sync_lag(idx);
    }

    /// Async write mode: queues a `SyncDue` for when the pacer says the next
    /// background sync is due.
    fn schedule_background_sync(&mut self, idx: usize) {
        let now = self.now();
        let n = &mut self.nodes[idx];
        let incarnation = n.incarnation;
        let Some(bg) = n.engine.as_mut().and_then(|e| e.background.as_mut()) else { return };
        if bg.scheduled {
            return;
        }
        if let Some(at) = bg.pacer.due_at() {
            bg.scheduled = true;
            let done = DiskDone::SyncDue;
            self.queue.push(at.max(now), Event::Disk { node: idx as u8, incarnation, done });
        }
    }

    /// Async write mode: starts the background sync if the pacer says so;
    /// its fdatasyncs return after a disk latency.
    fn background_sync_due(&mut self, idx: usize) {
        let now = self.now();
        let latency = self.disk_latency();
        let n = &mut self.nodes[idx];
        let incarnation = n.incarnation;
        let Some(engine) = n.engine.as_mut() else { return };
        let Some(bg) = engine.background.as_mut() else { return };
        bg.scheduled = false;
        let Some(storage) = engine.storage.as_mut() else { return };
        if bg.pacer.start(now) {
            let job = storage.begin_sync(&mut engine.report);
            if job.is_empty() {
                bg.pacer.finished(false);
                bg.oldest_uncovered = None;
            } else {
                bg.job = Some(job);
                bg.oldest_in_flight = bg.oldest_uncovered.take();
                let done = DiskDone::SyncDone;
                self.queue.push(now + latency, Event::Disk { node: idx as u8, incarnation, done });
            }
        }
        self.schedule_background_sync(idx);
        self.check_sync_lag(idx);
    }

    /// Async write mode: the running background sync returned; what it made
    /// durable is reported (hard states) and recorded by the next one
    /// (the watermark).
    fn background_sync_done(&mut self, idx: usize) {
        let n = &mut self.nodes[idx];
        let Some(engine) = n.engine.as_mut() else { return };
        let Some(bg) = engine.background.as_mut() else { return };
        let Some(storage) = engine.storage.as_mut() else { return };
        let Some(job) = bg.job.take() else { return };
        let results = job.run();
        engine.report.clear();
        storage.finish_sync(job, results, &mut engine.report);
        bg.pacer.finished(storage.needs_sync());
        bg.oldest_in_flight = None;
        if let Some((_, error)) = engine.report.failed.pop() {
            // No disk faults are injected in async runs: a failed sync is the
            // engine's doing.
            self.storage_error(idx, 3, error);
            return;
        }
        let done: Vec<StorageDone> = engine
            .report
            .hard_states
            .iter()
            .map(|(_, hs)| StorageDone::Persisted { log: None, hard_state: Some((hs.term, hs.vote)) })
            .collect();
        if !done.is_empty() {
            self.persisted(idx, done);
        }
        if self.nodes[idx].exec.is_some() && self.failure.is_none() {
            self.schedule_background_sync(idx);
        }
    }

    /// Async write mode promises that a flushed write is synced within one
    /// pacing interval plus the syncs' own time: a pacer that lets writes
    /// sit unsynced longer (under steady load, say) fails the run. Time a
    /// node spent paused does not count: the check skips writes made before
    /// the end of the node's latest pause.
    fn check_sync_lag(&mut self, idx: usize) {
        let Some(interval) = self.config.async_sync_ns else { return };
        let now = self.now();
        let latency_max = self.profile.disk_latency_max_ns.max(self.profile.disk_slow_max_ns);
        let n = &self.nodes[idx];
        let Some(oldest) =
            n.engine.as_ref().and_then(|e| e.background.as_ref()).and_then(|b| b.oldest_unsynced())
        else {
            return;
        };
        if n.held_until + PAUSE_WAKE_JITTER_NS > oldest || n.exec.is_none() {
            return;
        }
        // A write waits for the running sync (one latency), then for the
        // next start (at most one interval after the last), then for that
        // sync (one more latency); a millisecond covers event scheduling.
        let bound = interval + 2 * latency_max + NANOS_PER_MILLI;
        if now - oldest > bound {
            let detail = format!(
                "n{}: a write flushed at {} ms is still unsynced at {} ms (async mode syncs every {} ms; bound {} ms)",
                idx + 1,
                oldest / NANOS_PER_MILLI,
                now / NANOS_PER_MILLI,
                interval / NANOS_PER_MILLI,
                bound / NANOS_PER_MILLI
            );
            self.fail(FailureKind::Safety, "async-sync-lag", detail);
        }
    }

    fn schedule_flush(&mut self, idx: usize) {
        let at = self.now() + self.disk_latency();
        let n = &mut self.nodes[idx];
        let Some(engine) = n.engine.as_mut() else { return };
        if !engine.flush_scheduled {
            engine.flush_scheduled = true;
            let incarnation = n.incarnation;
            self.queue.push(at, Event::Disk { node: idx as u8, incarnation, done: DiskDone::Flush });
        }
    }

    /// A storage call returned `error`. A disk fault (an I/O error, a group
    /// poisoned by an earlier one, corruption on the bad disk) stops the node,
    /// which restarts from what is durable. Anything else is the engine
    /// refusing a request on a healthy disk, such as a snapshot "older than the
    /// stored one" or an entry too large: the protocol asked for something
    /// wrong, and crashing and restarting would hide it, so the run fails
    /// (issue 15, gap 3).
    fn storage_error(&mut self, idx: usize, what: u64, error: StorageError) {
        let bad_disk = self.nodes[idx].engine.as_ref().is_some_and(|e| e.vfs.is_bad_disk());
        match error {
            e if is_disk_fault(&e, bad_disk) => self.storage_failed(idx, what),
            other => {
                let call = match what {
                    3 => "flush",
                    4 => "stage entries",
                    5 => "stage the hard state",
                    6 => "read entries",
                    _ => "write a snapshot or compact",
                };
                let detail =
                    format!("n{}: the storage engine refused to {call} on a healthy disk: {other}", idx + 1);
                self.fail(FailureKind::Safety, "storage-refused", detail);
            }
        }
    }

    /// A storage call failed: the node stops (fail-stop) and restarts from
    /// what is durable.
    fn storage_failed(&mut self, idx: usize, what: u64) {
        self.record(idx as u64 + 1, TraceKind::DiskError, what, 0, 0);
        let downtime = self.rng_process.between(NANOS_PER_MILLI, 100 * NANOS_PER_MILLI);
        self.crash(idx, downtime);
    }

    /// Node-level liveness (quiescence runs): every running, unpaused node
    /// pings every other through the network, then each judges its peers
    /// and tells its group what changed (the transport's monitor).
    fn liveness_round(&mut self) {
        let now = self.now();
        let count = self.nodes.len();
        for from in 0..count {
            let n = &self.nodes[from];
            if n.exec.is_none() || n.paused_until > now {
                continue;
            }
            for to in (0..count).filter(|&t| t != from) {
                if let Some(at) = self.net.send_ping(now, from, to) {
                    self.queue.push(at, Event::Ping { from: from as u8, to: to as u8 });
                }
            }
        }
        for idx in 0..count {
            let n = &self.nodes[idx];
            if n.exec.is_none() || n.paused_until > now {
                continue;
            }
            for peer in (0..count).filter(|&p| p != idx) {
                let reset = std::mem::take(&mut self.quiet.reset[idx][peer]);
                let down = reset || now.saturating_sub(self.quiet.last_heard[idx][peer]) >= SUSPECT_AFTER_NS;
                if self.quiet.suspected[idx][peer] != down && self.nodes[idx].exec.is_some() {
                    self.quiet.suspected[idx][peer] = down;
                    let node = peer as NodeId + 1;
                    self.record(idx as u64 + 1, TraceKind::Liveness, node, u64::from(down), 0);
                    let input = if down { GroupInput::PeerDown(node) } else { GroupInput::PeerUp(node) };
                    self.step(idx, input);
                    if self.failure.is_some() {
                        return;
                    }
                }
            }
        }
        self.queue.push(now + PING_INTERVAL_NS, Event::LivenessRound);
    }

    /// Quiescence runs: clients start nothing for a while, so the group goes
    /// quiet; in some windows its quiet leader then crashes or is cut off.
    fn idle_start(&mut self) {
        let Some(q) = self.profile.quiesce else { return };
        if self.phase != Phase::Faulty {
            return;
        }
        let now = self.now();
        let length = self.quiet.rng.between(q.idle_max_ns / 3, q.idle_max_ns);
        self.quiet.idle_until = now + length;
        if self.nodes.len() > 1 && self.quiet.rng.chance(q.leader_fault_ppm) {
            // Late enough that the group quiesced (a few heartbeats after
            // the last operation), early enough to fall in the window.
            let after = self.quiet.rng.between(length / 3, length * 2 / 3);
            self.queue.push(now + after, Event::QuietLeaderFault);
        }
        let next = now + length + self.quiet.rng.between(q.idle_every_ns / 2, q.idle_every_ns * 3 / 2);
        self.queue.push(next, Event::IdleStart);
    }

    /// Crashes (for a while) or isolates the current leader, quiet or not.
    fn quiet_leader_fault(&mut self) {
        if self.phase != Phase::Faulty {
            return;
        }
        let now = self.now();
        let Some(l) = self.nodes.iter().position(|n| n.raw().is_some_and(|r| r.role() == Role::Leader))
        else {
            return;
        };
        self.quiet.leader_faults += 1;
        let term = self.nodes[l].raw().map_or(0, RawNode::term);
        // Timed only where nothing but Raft decides how long it takes: the
        // network healthy and lossless, disks without slow outliers (a vote
        // not durable in time backs elections off), every other node up, and
        // one stable configuration of all nodes.
        let all_voters = self.nodes[l].raw().is_some_and(|r| {
            let m = r.membership();
            !m.is_joint() && m.learners.is_empty() && m.voters.len() == self.nodes.len()
        });
        let timed = all_voters
            && !self.net.is_faulty(now)
            && self.profile.net.drop_ppm == 0
            && self.profile.net.tail_ppm == 0
            && self.profile.disk_slow_ppm == 0
            && self.wiped.is_none()
            && self
                .nodes
                .iter()
                .enumerate()
                .all(|(i, n)| i == l || (n.exec.is_some() && n.paused_until <= now));
        let duration = self.quiet.rng.between(100 * NANOS_PER_MILLI, 2 * NANOS_PER_SECOND);
        // Async runs never crash (an unsynced write is lost by design, see
        // `RunConfig::async_sync_ns`): their quiet leaders are only cut off.
        if self.quiet.rng.chance(PPM / 2) && self.config.async_sync_ns.is_none() {
            self.crash(l, duration);
        } else {
            self.net.isolate(l);
            let (a, b) = (1u64 << l, self.net.all() & !(1 << l));
            self.record(0, TraceKind::Partition, a, b, Fault::Isolate as u64 | (duration << 8));
            self.queue.push(now + duration, Event::HealNetwork);
        }
        self.quiet.failover = Some(PendingFailover { leader: l, term, at: now, disturbed: !timed });
        if timed {
            let bound = self.failover_bound_ns();
            self.queue.push(now + bound, Event::FailoverDeadline { at: now });
        }
    }

    /// How long a healthy group may take to replace its faulted quiet
    /// leader: node-level liveness suspects it (pings every
    /// `PING_INTERVAL_NS`, suspicion after `SUSPECT_AFTER_NS`), then a
    /// follower campaigns after its election timeout; two timeouts are the
    /// target (issue 17), four leave room for a pre-vote refused by a
    /// follower whose log is ahead and a split vote, and the network's and
    /// disks' latencies fit in the last 100 ms.
    fn failover_bound_ns(&self) -> Nanos {
        let timeout_max = self.raft_config(0).election_timeout_max_ns;
        SUSPECT_AFTER_NS + PING_INTERVAL_NS + 4 * timeout_max + 100 * NANOS_PER_MILLI
    }

    /// The failover of the quiet leader faulted at `at` is still pending at
    /// its bound, though nothing else went wrong since: the group is stuck
    /// (or too slow) without its leader.
    fn failover_deadline(&mut self, at: Nanos) {
        let Some(f) = self.quiet.failover.as_ref() else { return };
        if f.at != at || f.disturbed {
            return;
        }
        let detail = format!(
            "n{}, quiet leader of term {}, crashed or was cut off at {:.6}s; no other node led by {:.6}s ({} ms: \
             suspicion after {} ms, pings every {} ms, four election timeouts of at most {} ms, 100 ms of latency), \
             though the network was healthy and lossless and every other node up all along",
            f.leader + 1,
            f.term,
            at as f64 / 1e9,
            self.now() as f64 / 1e9,
            self.failover_bound_ns() / NANOS_PER_MILLI,
            SUSPECT_AFTER_NS / NANOS_PER_MILLI,
            PING_INTERVAL_NS / NANOS_PER_MILLI,
            self.raft_config(0).election_timeout_max_ns / NANOS_PER_MILLI
        );
        self.fail(FailureKind::Liveness, "failover-time", detail);
    }

    /// Any other fault while a failover is pending: it is still counted,
    /// not timed.
    fn disturb_failover(&mut self, except: Option<usize>) {
        if let Some(f) = self.quiet.failover.as_mut() {
            if except != Some(f.leader) {
                f.disturbed = true;
            }
        }
    }

    /// Node `idx` leads in `term`: if it replaced a faulted quiet leader,
    /// the failover is counted and timed.
    fn failover_done(&mut self, idx: usize, term: Term) {
        let Some(f) = self.quiet.failover.as_ref() else { return };
        if f.leader == idx || term <= f.term {
            return;
        }
        let (took, disturbed) = (self.now() - f.at, f.disturbed);
        self.quiet.failover = None;
        if !disturbed {
            self.quiet.failovers += 1;
            self.quiet.failover_max_ns = self.quiet.failover_max_ns.max(took);
            let timeout_max = self.raft_config(idx).election_timeout_max_ns;
            if took > 2 * timeout_max {
                self.quiet.failovers_slow += 1;
            }
        }
    }

    fn crash(&mut self, idx: usize, downtime_ns: Nanos) {
        let now = self.now();
        self.disturb_failover(Some(idx));
        let n = &mut self.nodes[idx];
        if n.exec.is_none() {
            return;
        }
        // Waiting proposers and readers are never answered (their closures
        // die with the executor): clients time out, as with a real crash.
        n.exec = None;
        // Its snapshot jobs die with the process.
        n.jobs.clear();
        n.mailbox.clear();
        n.applying.clear();
        n.snapshot_digest = None;
        n.incarnation += 1;
        n.storage.crash();
        n.staged = None;
        n.tick_at = Nanos::MAX;
        n.paused_until = 0;
        n.restart_scheduled = true;
        self.crashes += 1;
        let n = &mut self.nodes[idx];
        if let Some(engine) = n.engine.as_mut() {
            engine.vfs.crash();
            engine.storage = None;
            engine.flush_scheduled = false;
            if let Some(bg) = engine.background.as_mut() {
                // The restarted node's pacer starts over with nothing written.
                bg.job = None;
                bg.scheduled = false;
                bg.pacer.finished(false);
                bg.pacer.synced_all();
                bg.oldest_uncovered = None;
                bg.oldest_in_flight = None;
            }
        }
        // Its clients' connections die with it: watches end, and their
        // clients resume elsewhere; frames not read yet are lost.
        self.nodes[idx].watches = ConnWatches::default();
        self.conns.retain(|&(_, node), _| node as usize != idx);
        for w in 0..self.watchers.len() {
            if self.watchers[w].target == idx && self.watchers[w].request.is_some() {
                self.watcher_resume(w, true);
            }
        }
        self.record(idx as u64 + 1, TraceKind::Crash, 0, 0, 0);
        self.queue.push(now + downtime_ns, Event::Restart { node: idx as u8 });
        self.check_committed_on_majority("after a crash");
    }

    fn restart(&mut self, idx: usize) {
        if self.nodes[idx].exec.is_some() || self.nodes[idx].retired {
            return;
        }
        if self.quiet.failover.as_ref().is_some_and(|f| f.leader == idx) {
            // The crashed quiet leader is back before anyone replaced it.
            self.quiet.failover = None;
        }
        let hs = self.nodes[idx].storage.hard_state();
        let last = self.nodes[idx].storage.last_index();
        self.record(idx as u64 + 1, TraceKind::Restart, hs.term, last, hs.commit);
        self.start_node(idx);
        if self.profile.quiesce.is_some() && self.nodes[idx].exec.is_some() {
            self.connection_reset(idx);
        }
    }

    /// Node-level liveness: a restarted process dials its peers anew, and
    /// each peer's transport reports the old connection's end as a
    /// suspicion at once (however short the downtime; pings clear it).
    fn connection_reset(&mut self, idx: usize) {
        let now = self.now();
        for peer in (0..self.nodes.len()).filter(|&p| p != idx) {
            let n = &self.nodes[peer];
            if n.exec.is_none() || self.quiet.suspected[peer][idx] {
                continue;
            }
            if n.paused_until > now {
                // A paused process learns of it when it runs again.
                self.quiet.reset[peer][idx] = true;
                continue;
            }
            self.quiet.suspected[peer][idx] = true;
            let node = idx as NodeId + 1;
            self.record(peer as u64 + 1, TraceKind::Liveness, node, 1, 0);
            self.step(peer, GroupInput::PeerDown(node));
            if self.failure.is_some() {
                return;
            }
        }
    }

    /// Runs one turn of node `idx`'s executor with `turn`'s inputs, plays
    /// what it did against the world (`drain`), runs the turns that answers
    /// produced (fetched entries, snapshot chunks, snapshot jobs) at the same
    /// instant, then checks the per-step invariants.
    fn turn(&mut self, idx: usize, mut turn: Turn<SimSm>) {
        let before = self.nodes[idx].raw().map(|r| (r.role(), r.term(), r.commit_index()));
        let mut rounds = 0;
        loop {
            let now = self.now();
            let n = &mut self.nodes[idx];
            let local = n.clock.local(now).max(n.last_local_ns);
            n.last_local_ns = local;
            let Some(exec) = n.exec.as_mut() else { break };
            exec.io_mut().now = local;
            let installs = turn.snapshots.iter().any(|e| matches!(e, SnapEvent::Installed(Ok(_))));
            exec.turn(turn);
            // The installer cut the node's watch off: watch again from the
            // snapshot before the entries applied after it are checked.
            if installs && !self.rewatch(idx) {
                break;
            }
            turn = self.drain(idx);
            if self.nodes[idx].exec.is_none() || self.failure.is_some() {
                break;
            }
            if self.nodes[idx].exec.as_ref().is_some_and(|e| e.is_stopped()) {
                let detail = format!(
                    "n{}: the group executor stopped: {}",
                    idx + 1,
                    self.nodes[idx].exec.as_ref().and_then(|e| e.failure()).unwrap_or("asked to stop")
                );
                self.fail(FailureKind::Safety, "executor-stopped", detail);
                break;
            }
            if turn.snapshots.is_empty() && turn.storage.is_empty() && turn.inputs.is_empty() {
                break;
            }
            rounds += 1;
            assert!(rounds < 10_000, "n{}: turns keep producing answers", idx + 1);
        }
        if let Some((Role::Leader, term, commit_before)) = before {
            self.check_commit_rule(idx, term, commit_before);
        }
        if self.profile.kind == ProfileKind::Lease && self.failure.is_none() {
            let n = &self.nodes[idx];
            let first_commit = n.raw().and_then(|r| {
                let own = r.role() == Role::Leader && n.storage.term_at(r.commit_index()) == Some(r.term());
                (own && r.term() > self.probed_term).then_some(r.term())
            });
            if let Some(term) = first_commit {
                self.probed_term = term;
                self.probe_stale_leaders(idx, term);
            }
        }
        self.after_step(idx);
    }

    /// One input as a turn.
    fn step(&mut self, idx: usize, input: GroupInput<SimSm>) {
        self.turn(idx, Turn { inputs: vec![input], ..Turn::default() });
    }

    /// Storage completions as a turn.
    fn persisted(&mut self, idx: usize, done: Vec<StorageDone>) {
        self.turn(idx, Turn { storage: done, ..Turn::default() });
    }

    /// Raft §5.4.2: a leader advances its commit index only to an entry of
    /// its own term (older entries commit indirectly). Counting replicas of
    /// an older entry is the bug of the paper's Figure 8.
    fn check_commit_rule(&mut self, idx: usize, term: Term, commit_before: Index) {
        let n = &self.nodes[idx];
        let Some(raw) = n.raw() else { return };
        let commit = raw.commit_index();
        if raw.role() != Role::Leader || raw.term() != term || commit <= commit_before {
            return;
        }
        let at = n.storage.term_at(commit);
        if at.is_some_and(|t| t != term) {
            let detail = format!(
                "leader n{} of term {term} advanced its commit index {commit_before} -> {commit}, \
                 but the entry at {commit} has term {at:?}: only entries of the leader's own term commit by counting",
                n.id
            );
            self.fail(FailureKind::Safety, "commit-rule", detail);
            return;
        }

        // Joint consensus (issue 15 gap 2): in C(old,new) an entry commits
        // only once a majority of each half holds it durably; a majority of
        // the new voters alone need not intersect the old configuration's
        // next quorum.
        let m = raw.membership().clone();
        if !m.is_joint() {
            return;
        }
        let holds = |v: &NodeId| {
            let n = &self.nodes[*v as usize - 1];
            n.storage.covers(commit) || n.storage.durable_term(commit) == Some(term)
        };
        for (half, voters) in [("incoming", &m.voters), ("outgoing", &m.voters_outgoing)] {
            let held = voters.iter().filter(|v| holds(v)).count();
            if held <= voters.len() / 2 {
                let detail = format!(
                    "leader n{} of term {term} committed up to {commit} in the joint configuration {}, but the \
                     {half} half holds that entry durably on only {held} of {} voters",
                    idx + 1,
                    describe_membership(&m),
                    voters.len()
                );
                self.fail(FailureKind::Safety, "joint-commit-quorum", detail);
                return;
            }
        }
    }

    /// Lease profile: the new leader `idx` of `term` just committed its
    /// first entry. A node still leading an older term (cut off, paused)
    /// may serve a read from its lease only if the lease outlived every
    /// follower's election timeout, which a correct lease never does: the
    /// prober client reads there now, so a lease that is too long (the
    /// planted `lease-ignores-drift`) answers stale whenever the timing
    /// allows it, not only when a random read happens to land then.
    fn probe_stale_leaders(&mut self, idx: usize, term: Term) {
        let now = self.now();
        let stale: Vec<usize> = (0..self.nodes.len())
            .filter(|&l| {
                l != idx
                    && self.nodes[l].paused_until <= now
                    && self.nodes[l].raw().is_some_and(|r| r.role() == Role::Leader && r.term() < term)
            })
            .collect();
        let Some(c) = self.prober else { return };
        for l in stale {
            // One probe at a time: a read still out (its answer, a retry)
            // keeps the prober busy.
            if self.clients[c].current.is_some() {
                return;
            }
            self.probe = Some((c, l));
            self.client_start(c);
            self.probe = None;
        }
    }

    fn after_step(&mut self, idx: usize) {
        let now = self.now();
        let n = &self.nodes[idx];
        let Some(raw) = n.raw() else { return };
        let (role, term, id) = (raw.role(), raw.term(), n.id);
        let deadline_local = raw.next_deadline();
        if n.rejoining && !raw.status().rejoining {
            // What a driver persists: later restarts pass no flag.
            self.nodes[idx].rejoining = false;
            if self.config.rejoin_flag {
                // It rejoined by the protocol (saw its removal committed):
                // added back, it is a new member. Without the flag it never
                // was out, and its forgotten votes still bind it.
                self.incarnations[idx] += 1;
            }
            self.record(id, TraceKind::Membership, 6, id, 0);
        }
        if role == Role::Leader {
            let leader = *self.leaders.entry(term).or_insert(id);
            if leader != id {
                self.fail(
                    FailureKind::Safety,
                    "election-safety",
                    format!("two leaders in term {term}: n{leader} and n{id}"),
                );
            }
        }
        let n = &mut self.nodes[idx];
        let deadline_local = if deadline_local != tarn_core::NO_DEADLINE {
            deadline_local
        } else if n.exec.as_ref().is_some_and(|e| e.wants_periodic_turns()) {
            // Quiet, but the state machine has timed leader proposals: the
            // driver's periodic tick.
            n.clock.local(now).max(n.last_local_ns) + QUIET_LEADER_TICK_NS
        } else {
            return; // Quiescent: no tick until something wakes it.
        };
        // On the driver's grid, as the tokio shell runs every group's timers
        // (up to a quantum late, never early).
        let deadline_local = align_deadline(deadline_local, self.timer_grid_ns);
        let at = n.clock.world_time_of(now, deadline_local).max(now + TICK_MIN_STEP_NS);
        if at < n.tick_at || n.tick_at < now {
            n.tick_at = at;
            let incarnation = n.incarnation;
            self.queue.push(at, Event::Tick { node: idx as u8, incarnation });
        }
    }

    /// When an event held back by node `idx`'s pause is replayed.
    fn wake_time(&mut self, idx: usize) -> Nanos {
        self.nodes[idx].paused_until + self.rng_process.between(0, PAUSE_WAKE_JITTER_NS)
    }

    fn disk_latency(&mut self) -> Nanos {
        let p = &self.profile;
        let (lo, hi, slow_ppm, slow_max) =
            (p.disk_latency_min_ns, p.disk_latency_max_ns, p.disk_slow_ppm, p.disk_slow_max_ns);
        if self.rng_disk.chance(slow_ppm) {
            self.rng_disk.between(hi, hi.max(slow_max))
        } else {
            self.rng_disk.between(lo, hi)
        }
    }

    /// Plays what node `idx`'s executor did in its last turn, in order,
    /// against the network, the disks and the checkers. Returns the answers
    /// that make the next turn (fetched entries, snapshot chunks, finished
    /// snapshot jobs). Stops early if the node crashed or the run failed.
    fn drain(&mut self, idx: usize) -> Turn<SimSm> {
        let mut next = Turn::default();
        let mut applied: Option<LogId> = None;
        for event in self.nodes[idx].mailbox.take() {
            if self.nodes[idx].exec.is_none() || self.failure.is_some() {
                break;
            }
            // A batch of applications is checked before anything after it
            // runs: a snapshot job that follows may crash the node, and its
            // watch events must reach the global stream first (a restart
            // from that snapshot positions its new watch after them; seed
            // 900042453).
            if !matches!(event, SimEvent::Applied { .. }) {
                if let Some(last) = applied.take() {
                    self.applied_batch_done(idx, last);
                    if self.failure.is_some() {
                        break;
                    }
                }
            }
            match event {
                SimEvent::Send { to, message } => self.on_send(idx, to, message),
                SimEvent::Storage(StorageOp::Write(writes)) => {
                    for w in writes {
                        if self.nodes[idx].exec.is_none() || self.failure.is_some() {
                            break;
                        }
                        match w {
                            LogWrite::Append(entries) => self.on_append(idx, entries),
                            LogWrite::HardState(hs) => self.on_hard_state(idx, hs),
                        }
                    }
                }
                SimEvent::Storage(StorageOp::Fetch { from, to, max_bytes }) => {
                    if let Some(entries) = self.fetch(idx, from, to, max_bytes) {
                        next.storage.push(StorageDone::Fetched { from, entries });
                    }
                }
                SimEvent::Storage(StorageOp::Compact { up_to }) => self.compact(idx, up_to),
                SimEvent::Storage(StorageOp::ReadSnapshotChunk { to, snapshot, offset, max_bytes }) => {
                    if let Some(done) = self.read_snapshot_chunk(idx, to, snapshot, offset, max_bytes) {
                        next.storage.push(done);
                    }
                }
                SimEvent::Storage(StorageOp::StageChunk { snapshot, offset, data }) => {
                    self.stage_chunk(idx, snapshot, offset, &data)
                }
                SimEvent::SnapshotDigest { digest } => self.nodes[idx].snapshot_digest = Some(digest),
                SimEvent::CreateSnapshot { meta, producer } => self.take_snapshot(idx, meta, producer),
                SimEvent::InstallSnapshot { meta } => self.install_snapshot(idx, meta),
                SimEvent::ReadReady { index } => self.read_ready_index = index,
                SimEvent::Apply { entries } => {
                    for (id, hash, m) in entries {
                        if let Some(m) = m {
                            self.nodes[idx].applied_membership = m;
                        }
                        self.nodes[idx].applying.push_back((id, hash));
                    }
                }
                SimEvent::Applied { index, data, responses, digest } => {
                    applied = self.on_applied(idx, index, data, responses, digest).or(applied);
                }
                SimEvent::RoleChanged { role, term, leader } => {
                    if role == Role::Leader {
                        self.failover_done(idx, term);
                    }
                    self.record(
                        idx as u64 + 1,
                        TraceKind::RoleChanged,
                        role_code(role),
                        term,
                        leader.unwrap_or(0),
                    );
                }
                SimEvent::Expiry { data_hash, count } => {
                    let now = self.now();
                    self.expiry_proposals.entry(data_hash).or_insert((now, idx));
                    self.record(idx as u64 + 1, TraceKind::Expire, 1, count, 0);
                }
                SimEvent::Frame { client, frame } => self.on_frame(idx, client, frame),
                SimEvent::ReadServed { attempt, applied, floor } => {
                    self.on_read_served(idx, attempt, applied, floor)
                }
                SimEvent::BadAnswer { property, detail } => {
                    self.fail(FailureKind::Safety, property, format!("n{}: {detail}", idx + 1))
                }
            }
        }
        if let Some(last) = applied.filter(|_| self.nodes[idx].exec.is_some() && self.failure.is_none()) {
            self.applied_batch_done(idx, last);
        }
        next
    }

    /// A batch of applications up to `last` was played: trace it and check
    /// the node's watch stream against everyone's.
    fn applied_batch_done(&mut self, idx: usize, last: LogId) {
        self.record(idx as u64 + 1, TraceKind::Apply, last.index, last.term, 0);
        self.check_watch(idx);
    }

    fn on_send(&mut self, idx: usize, to: NodeId, message: Message) {
        let now = self.now();
        let to_idx = (to as usize).wrapping_sub(1);
        assert!(to_idx < self.nodes.len() && to_idx != idx, "n{} sends to unknown node {to}", idx + 1);
        let granted = matches!(message.body, MessageBody::VoteResponse { granted: true });
        if granted {
            self.check_vote(idx, message.term, to);
        }
        match self.net.send(now, idx, to_idx) {
            SendOutcome::Dropped(reason) => {
                self.record(idx as u64 + 1, TraceKind::Drop, to, net_drop_code(reason), 0);
            }
            SendOutcome::Deliver { at, duplicate_at } => {
                let (from, to) = (idx as u8, to_idx as u8);
                if let Some(dup) = duplicate_at {
                    self.queue.push(dup, Event::Deliver { from, to, message: message.clone() });
                }
                self.queue.push(at, Event::Deliver { from, to, message });
            }
        }
        if granted {
            self.maybe_wipe_voter(idx);
        }
    }

    fn on_append(&mut self, idx: usize, entries: Vec<Entry>) {
        let now = self.now();
        for e in &entries {
            let h = payload_hash(&e.payload);
            let known = *self.entry_ids.entry((e.term, e.index)).or_insert(h);
            if known != h {
                self.fail(
                    FailureKind::Safety,
                    "log-matching",
                    format!(
                        "two different entries at {}@{} (n{} appends the second)",
                        e.term,
                        e.index,
                        idx + 1
                    ),
                );
            }
        }
        let Some(last) = entries.last().map(Entry::log_id) else { return };
        for e in &entries {
            if let EntryPayload::Membership(m) = &e.payload {
                let smallest =
                    if m.is_joint() { m.voters.len().min(m.voters_outgoing.len()) } else { m.voters.len() };
                self.voters_min = self.voters_min.min(smallest.max(1));
                let leader = self.nodes[idx].raw().is_some_and(|r| r.role() == Role::Leader);
                if m.is_joint() && leader {
                    self.joints += 1;
                }
            }
        }
        let n = &mut self.nodes[idx];
        let first = entries[0].index;
        if first <= n.acked_log.index {
            // A suffix is replaced: the acknowledgement now covers the kept prefix.
            let index = first - 1;
            let term = n.storage.term_at(index).unwrap_or(0);
            n.acked_log = LogId::new(term, index);
        }
        let stored_last = n.storage.last_index();
        if first <= stored_last {
            // A divergent suffix is cut (coverage: how long they get).
            self.truncations += 1;
            self.truncated_max = self.truncated_max.max(stored_last - first + 1);
        }
        let n = &mut self.nodes[idx];
        n.storage.append(&entries);
        if let Some(engine) = n.engine.as_mut() {
            let Some(storage) = engine.storage.as_mut() else { return };
            if let Err(error) = storage.stage(GROUP, &entries) {
                self.storage_error(idx, 4, error);
                return;
            }
            self.schedule_flush(idx);
            return;
        }
        let at = now + self.disk_latency();
        let incarnation = self.nodes[idx].incarnation;
        self.queue.push(at, Event::Disk { node: idx as u8, incarnation, done: DiskDone::Log(last) });
    }

    fn on_hard_state(&mut self, idx: usize, hs: HardState) {
        let now = self.now();
        self.nodes[idx].storage.set_hard_state(hs);
        if let Some(engine) = self.nodes[idx].engine.as_mut() {
            let Some(storage) = engine.storage.as_mut() else { return };
            if let Err(error) = storage.stage_hard_state(GROUP, hs) {
                self.storage_error(idx, 5, error);
                return;
            }
            self.schedule_flush(idx);
            return;
        }
        let at = now + self.disk_latency();
        let incarnation = self.nodes[idx].incarnation;
        let done = DiskDone::HardState { term: hs.term, vote: hs.vote };
        self.queue.push(at, Event::Disk { node: idx as u8, incarnation, done });
    }

    fn fetch(&mut self, idx: usize, from: Index, to: Index, max_bytes: usize) -> Option<Vec<Entry>> {
        let n = &self.nodes[idx];
        match n.engine.as_ref() {
            None => Some(n.storage.entries(from, to, max_bytes)),
            Some(engine) => {
                let mut out = Vec::new();
                let storage = engine.storage.as_ref()?;
                if let Err(error) = storage.entries(GROUP, from, to, max_bytes as u64, &mut out) {
                    self.storage_error(idx, 6, error);
                    return None;
                }
                Some(out)
            }
        }
    }

    fn compact(&mut self, idx: usize, up_to: LogId) {
        let n = &mut self.nodes[idx];
        if up_to.index > n.storage.snapshot().index {
            let detail = format!(
                "n{}: asked to compact up to {up_to}, past its durable snapshot {}",
                n.id,
                n.storage.snapshot()
            );
            self.fail(FailureKind::Safety, "compaction", detail);
            return;
        }
        let mut deletions = None;
        let first = match n.engine.as_mut() {
            None => up_to.index + 1,
            Some(engine) => {
                let Some(storage) = engine.storage.as_mut() else { return };
                match storage.compact(GROUP, up_to).and_then(|()| storage.log_state(GROUP)) {
                    Ok(state) => {
                        deletions = storage.take_deletions();
                        state.first_index
                    }
                    Err(error) => {
                        self.storage_error(idx, 7, error);
                        return;
                    }
                }
            }
        };
        n.storage.compact_below(first.min(up_to.index + 1));
        let incarnation = n.incarnation;
        if let Some(job) = deletions {
            let at = self.now() + self.disk_latency();
            self.queue.push(at, Event::Disk { node: idx as u8, incarnation, done: DiskDone::Delete(job) });
        }
        self.compactions += 1;
        self.record(idx as u64 + 1, TraceKind::Snapshot, 2, up_to.index, up_to.term);
    }

    fn read_snapshot_chunk(
        &mut self,
        idx: usize,
        to: NodeId,
        snapshot: LogId,
        offset: u64,
        max_bytes: usize,
    ) -> Option<StorageDone> {
        if offset == 0 && !self.reread_snapshot(idx, snapshot) {
            return None;
        }
        let n = &self.nodes[idx];
        let data = n.snap.as_ref().filter(|s| s.meta.last_log_id == snapshot).and_then(|s| {
            let start = usize::try_from(offset).ok().filter(|&o| o <= s.data.len())?;
            let end = start.saturating_add(max_bytes.max(1)).min(s.data.len());
            Some((s.data.slice(start..end), end == s.data.len()))
        });
        Some(match data {
            Some((data, done)) => StorageDone::SnapshotChunk { to, snapshot, offset, data: Some(data), done },
            None => StorageDone::SnapshotChunk { to, snapshot, offset, data: None, done: false },
        })
    }

    fn stage_chunk(&mut self, idx: usize, snapshot: LogId, offset: u64, data: &Bytes) {
        let n = &mut self.nodes[idx];
        if offset == 0 {
            n.staged = Some((snapshot, data.to_vec()));
            return;
        }
        match n.staged.as_mut() {
            Some((id, bytes)) if *id == snapshot && bytes.len() as u64 == offset => {
                bytes.extend_from_slice(data);
            }
            other => {
                let had = other.map(|(id, bytes)| (*id, bytes.len()));
                let detail = format!(
                    "n{}: snapshot chunk of {snapshot} at offset {offset}, but staged is {had:?}: chunks \
                     must arrive in order without gaps",
                    n.id
                );
                self.fail(FailureKind::Safety, "snapshot-transfer", detail);
            }
        }
    }

    /// The state machine applied `index`: apply order, state machine safety
    /// against every other node, the first application's effects (locks,
    /// expiries), and the digest of a snapshot of that index.
    fn on_applied(
        &mut self,
        idx: usize,
        index: Index,
        data: Option<Bytes>,
        responses: KvResult,
        digest: Option<u64>,
    ) -> Option<LogId> {
        let n = &mut self.nodes[idx];
        let Some((id, h)) = n.applying.pop_front() else {
            let detail = format!("n{} applied index {index} that the core never handed over", n.id);
            self.fail(FailureKind::Safety, "apply-order", detail);
            return None;
        };
        if id.index != index || index != n.applied + 1 {
            let detail = format!("n{} applies index {index} ({id} handed over) after {}", n.id, n.applied);
            self.fail(FailureKind::Safety, "apply-order", detail);
            return None;
        }
        n.applied = index;
        let mut first = false;
        let i = (index - 1) as usize;
        if let Some(&(term, known)) = self.applied_log.get(i) {
            if (term, known) != (id.term, h) {
                let detail = format!(
                    "n{} applies {id} but index {index} was applied elsewhere as term {term} (different entry)",
                    idx + 1
                );
                self.fail(FailureKind::Safety, "state-machine-safety", detail);
                return None;
            }
        } else if i == self.applied_log.len() {
            self.applied_log.push((id.term, h));
            first = true;
        } else {
            let detail = format!(
                "n{} applies {id} but only {} entries are known committed (it skipped some)",
                idx + 1,
                self.applied_log.len()
            );
            self.fail(FailureKind::Safety, "state-machine-safety", detail);
            return None;
        }
        let responses = match responses {
            Ok(r) => r,
            Err(error) => {
                self.fail(FailureKind::Safety, "kv-decode", format!("entry {id}: {error}"));
                return None;
            }
        };
        if first {
            if let Some(data) = &data {
                self.first_application(index, data, &responses);
                if self.failure.is_some() {
                    return None;
                }
            }
        }
        let known = self.snapshot_digests.lock().unwrap_or_else(|p| p.into_inner()).get(&index).copied();
        if let (Some(known), Some(digest)) = (known, digest) {
            if digest != known {
                let detail = format!(
                    "n{} applied up to {id} and its kv digest is {digest:016x}, but a snapshot of index {index} has \
                     digest {known:016x}",
                    idx + 1
                );
                self.fail(FailureKind::Safety, "state-machine-safety", detail);
            }
        }
        Some(id)
    }

    /// `SnapshotWanted`, as the executor carried it out: encode the kv's fork
    /// with the real encoder, write it durably with the real engine, report
    /// it. `None` if the node stopped or the run failed.
    /// Starts the job that takes node `idx`'s snapshot at `meta`: the state
    /// is checked and encoded now (the producer holds the state machine's
    /// fork); the job commits later (`snapshot_job_done`).
    fn take_snapshot(&mut self, idx: usize, meta: SnapshotMeta, producer: SnapshotProducer) {
        let n = &mut self.nodes[idx];
        let applied = meta.last_log_id.index;
        let Some(digest) = n.snapshot_digest.take() else {
            let detail =
                format!("n{}: a snapshot at {} without the state machine's digest", n.id, meta.last_log_id);
            self.fail(FailureKind::Safety, "snapshot-take", detail);
            return;
        };
        if n.storage.term_at(applied) != Some(meta.last_log_id.term) {
            let detail = format!(
                "n{}: snapshot at {} but the log holds term {:?} there (first {})",
                n.id,
                meta.last_log_id,
                n.storage.term_at(applied),
                n.storage.first_index()
            );
            self.fail(FailureKind::Safety, "snapshot-take", detail);
            return;
        }
        let mut blob = Vec::new();
        if let Err(error) = producer(&mut |bytes: &[u8]| {
            blob.extend_from_slice(bytes);
            Ok(())
        }) {
            self.fail(
                FailureKind::Safety,
                "snapshot-take",
                format!("n{}: encoding failed: {error}", idx + 1),
            );
            return;
        }
        let data = Bytes::from(blob);
        if !self.check_snapshot_state(idx, meta.last_log_id, digest, "takes") {
            return;
        }
        self.start_job(idx, meta, data, digest, None);
    }

    /// Queues a snapshot job's commit after its writes and syncs (two disk
    /// latencies). An armed restart in place strikes while it runs.
    fn start_job(
        &mut self,
        idx: usize,
        meta: SnapshotMeta,
        data: Bytes,
        digest: u64,
        install: Option<KvStateMachine>,
    ) {
        let now = self.now();
        let latency = self.disk_latency() + self.disk_latency();
        let id = self.next_job;
        self.next_job += 1;
        let n = &mut self.nodes[idx];
        let incarnation = n.incarnation;
        n.jobs.push(PendingJob { id, incarnation, meta, data, digest, install });
        self.queue.push(now + latency, Event::SnapshotJob { node: idx as u8, job: id });
        if self.restart_armed && self.phase == Phase::Faulty {
            self.restart_armed = false;
            let at = now + self.rng_process.below(latency);
            self.queue.push(at, Event::RestartInPlace { node: idx as u8 });
        }
    }

    /// Snapshot job `id` of node `idx` commits: its snapshot is written to
    /// storage and recorded, and the group that started it hears of it. A
    /// job of an earlier incarnation (its group stopped without waiting for
    /// it) commits into whatever storage the node has now and reports to
    /// nobody, as a leaked task would.
    fn snapshot_job_done(&mut self, idx: usize, id: u64) {
        let now = self.now();
        let n = &mut self.nodes[idx];
        // Not found: it died with its process.
        let Some(pos) = n.jobs.iter().position(|j| j.id == id) else { return };
        if n.paused_until > now {
            let at = self.wake_time(idx);
            self.queue.push(at, Event::SnapshotJob { node: idx as u8, job: id });
            return;
        }
        let job = n.jobs.remove(pos);
        let own = job.incarnation == n.incarnation && n.exec.is_some();
        let report = self.commit_job(idx, job, own);
        if let Some(event) = report.filter(|_| own && self.failure.is_none()) {
            self.turn(idx, Turn { snapshots: vec![event], ..Turn::default() });
        }
        if self.failure.is_none() {
            self.check_snapshot_owner(idx);
        }
    }

    /// Writes and records job `job`'s snapshot in node `idx`'s storage. With
    /// `own`, also updates what the world knows of the group that started
    /// it and returns the report for it.
    fn commit_job(&mut self, idx: usize, job: PendingJob, own: bool) -> Option<SnapEvent<SimSm>> {
        let PendingJob { meta, data, digest, install, .. } = job;
        let last = meta.last_log_id;
        let n = &mut self.nodes[idx];
        // An install finished first with a newer snapshot: storage refuses
        // this older one, and the group only logs it (the tokio shell's
        // `SnapshotJobError::Store`).
        let superseded = n.storage.snapshot().index > last.index;
        let mut first = 0;
        if let Some(engine) = n.engine.as_mut() {
            let storage = engine.storage.as_mut()?;
            match storage.write_snapshot(GROUP, &meta, &data).and_then(|()| storage.log_state(GROUP)) {
                Ok(state) => first = state.first_index,
                Err(error @ StorageError::InvalidRequest { .. }) if superseded && install.is_none() => {
                    let error = SnapshotJobError::Store(StoreError::engine(GROUP, error));
                    return own.then(|| SnapEvent::Created(Err(error)));
                }
                Err(error) => {
                    if own {
                        self.storage_error(idx, 7, error);
                    }
                    return None;
                }
            }
        } else if superseded && install.is_none() {
            let error =
                StorageError::InvalidRequest { group: GROUP, reason: format!("snapshot at {last} is older") };
            let error = SnapshotJobError::Store(StoreError::engine(GROUP, error));
            return own.then(|| SnapEvent::Created(Err(error)));
        }
        let snap = Some(Arc::new(NodeSnapshot { meta: meta.clone(), data, digest }));
        let n = &mut self.nodes[idx];
        match install {
            None => {
                n.storage.set_snapshot(last);
                // The engine discards the whole log when the snapshot reaches its end.
                n.storage.compact_below(first.min(last.index + 1));
                n.snap = snap;
                self.snapshots += 1;
                self.record(idx as u64 + 1, TraceKind::Snapshot, 1, last.index, last.term);
                own.then(|| SnapEvent::Created(Ok(meta)))
            }
            Some(sm) => {
                n.storage.install(last);
                n.snap = snap;
                self.installs += 1;
                self.record(idx as u64 + 1, TraceKind::Snapshot, 3, last.index, last.term);
                if !own {
                    return None;
                }
                let n = &mut self.nodes[idx];
                n.acked_log = last;
                n.applied = last.index;
                n.applying.clear();
                n.applied_membership = meta.membership.clone();
                Some(SnapEvent::Installed(Ok((meta, crate::exec::installer(sm)))))
            }
        }
    }

    /// The storage holds the snapshot its running group took, installed or
    /// started from, never a newer one: a snapshot job that outlived its
    /// group and committed into the next incarnation's storage moves it
    /// behind that group's back (the driver bug fixed in e541d96; its
    /// restore then met a newer snapshot than its core had recovered).
    fn check_snapshot_owner(&mut self, idx: usize) {
        let n = &self.nodes[idx];
        let Some(exec) = n.exec.as_ref() else { return };
        let (stored, known) = (n.storage.snapshot(), exec.snapshot());
        if stored.index > known.index {
            let detail = format!(
                "n{}: storage records snapshot {stored}, but the running group holds {known}: a snapshot job \
                 committed behind its back (one that outlived the group that started it?)",
                idx + 1
            );
            self.fail(FailureKind::Safety, "snapshot-owner", detail);
        }
    }

    /// A restart in place: the application stops the node and starts it
    /// again in the same process (an upgrade of the embedding service, a
    /// configuration reload), as `Node::shutdown` then `Node::start` do. The
    /// group stops; the shell waits for the snapshot jobs the executor says
    /// are running (`GroupExecutor::jobs_in_flight`), which commit now;
    /// storage flushes everything; the node starts again at once. A job the
    /// executor did not count keeps running into the new incarnation.
    fn restart_in_place(&mut self, idx: usize) {
        let now = self.now();
        let n = &mut self.nodes[idx];
        let Some(exec) = n.exec.as_ref() else { return };
        if n.paused_until > now {
            return;
        }
        let mut wait = exec.jobs_in_flight();
        let incarnation = n.incarnation;
        let (mut waited, mut running) = (Vec::new(), Vec::new());
        for job in std::mem::take(&mut n.jobs) {
            if job.incarnation == incarnation && wait > 0 {
                wait -= 1;
                waited.push(job);
            } else {
                running.push(job);
            }
        }
        self.restarts_in_place += 1;
        self.jobs_waited += waited.len() as u64;
        self.record(idx as u64 + 1, TraceKind::Crash, 2, waited.len() as u64, running.len() as u64);
        for job in waited {
            self.commit_job(idx, job, false);
            if self.failure.is_some() {
                return;
            }
        }
        // `Node::shutdown`'s last flush: what was staged is durable.
        let n = &mut self.nodes[idx];
        let flushed = match n.engine.as_mut() {
            None => true,
            Some(engine) => match engine.storage.as_mut() {
                Some(storage) => {
                    storage.flush(&mut engine.report);
                    engine.report.failed.is_empty()
                }
                None => false,
            },
        };
        if flushed {
            n.storage.sync();
        }
        self.crash(idx, 0);
        self.nodes[idx].jobs = running;
    }

    /// At the start of a transfer, the leader reads its snapshot back through
    /// the engine (like a server streaming the file), so read errors and
    /// corruption of snapshot files meet the serving path too: an error
    /// stops the node; bytes that differ from what was written, on a healthy
    /// disk, are a storage bug. False if the node stopped or the run failed.
    fn reread_snapshot(&mut self, idx: usize, snapshot: LogId) -> bool {
        let n = &self.nodes[idx];
        let Some(engine) = n.engine.as_ref() else { return true };
        let Some(storage) = engine.storage.as_ref() else { return true };
        let Some(cached) = n.snap.as_ref().filter(|s| s.meta.last_log_id == snapshot) else { return true };
        match storage.read_snapshot(GROUP) {
            Ok(Some((meta, data))) if meta == cached.meta && data[..] == cached.data[..] => true,
            Ok(other) if !engine.vfs.is_bad_disk() => {
                let got = other.map(|(m, d)| (m.last_log_id, d.len()));
                let detail = format!(
                    "n{}: wrote snapshot {snapshot} ({} bytes) but reads back {got:?}",
                    idx + 1,
                    cached.data.len()
                );
                self.fail(FailureKind::Safety, "snapshot-read", detail);
                false
            }
            Ok(_) | Err(_) => {
                self.storage_failed(idx, 8);
                false
            }
        }
    }

    /// `InstallSnapshot`, as the executor asked for it: decode the staged
    /// chunks with the real decoder, write the snapshot durably, and hand
    /// the executor what replaces its state. `None` if the run failed.
    /// Starts the job that installs the staged leader's snapshot `meta`:
    /// decoded and checked now, committed later (`snapshot_job_done`).
    fn install_snapshot(&mut self, idx: usize, meta: SnapshotMeta) {
        let n = &mut self.nodes[idx];
        let id = n.id;
        let last = meta.last_log_id;
        let staged = n.staged.take();
        let blob = match staged {
            Some((staged_id, blob)) if staged_id == last => blob,
            other => {
                let had = other.map(|(s, b)| (s, b.len()));
                let detail = format!("n{id}: asked to install {last}, but the staged snapshot is {had:?}");
                self.fail(FailureKind::Safety, "snapshot-transfer", detail);
                return;
            }
        };
        let sm = match decode_snapshot_blob(&blob, kv_config(&self.config)) {
            Ok(sm) if sm.applied_index() == last.index => sm,
            Ok(sm) => {
                let detail =
                    format!("n{id}: snapshot {last} holds the state at index {}", sm.applied_index());
                self.fail(FailureKind::Safety, "snapshot-transfer", detail);
                return;
            }
            Err(error) => {
                let detail = format!("n{id}: the chunks received for snapshot {last} do not decode: {error}");
                self.fail(FailureKind::Safety, "snapshot-transfer", detail);
                return;
            }
        };
        let digest = sm.digest();
        if !self.check_snapshot_state(idx, last, digest, "installs") {
            return;
        }
        self.start_job(idx, meta, Bytes::from(blob), digest, Some(sm));
    }

    /// The largest clock jump node `n` may take in a lease-read run: a
    /// follower whose clock jumps by `J` times out `J` early, which the
    /// leader's lease tolerates only within the drift bound the core
    /// assumes: `(T_min - J) / (1 + d) >= T_min / (1 + D)` for the node's
    /// drift `d` and the bound `D`, i.e. `J <= T_min (D - d) / (1 + D)`;
    /// halved for margin (jumps are spaced so one window sees one).
    fn lease_safe_jump_max_ns(&self, n: usize) -> Nanos {
        let t_min = u128::from(self.raft_config(n).election_timeout_min_ns);
        let bound = i128::from(CORE_DRIFT_BOUND_PPM as i64);
        let slack = (bound - i128::from(self.nodes[n].clock.drift_ppm)).max(0) as u128;
        (t_min * slack / (u128::from(PPM) + bound as u128) / 2) as Nanos
    }

    /// The TTL lower bound (issue 15 gap 4): the earliest world time at which
    /// node `node` may propose the expiry of an arming invoked at `invoke`
    /// with TTL `ttl`. The kv arms the deadline on the leader's own clock no
    /// earlier than the arming's application (after `invoke`), and a new
    /// leader re-arms from its own clock, so the proposer's clock advanced by
    /// at least `ttl` since `invoke`; a clock of drift `d` ppm with forward
    /// jumps `J` in between does that in no less than `(ttl - J) / (1 + d)`
    /// of world time (as `check_locks` bounds lock leases). Only the lower
    /// bound is checked: expiring late is allowed.
    fn ttl_expiry_earliest(&self, node: usize, invoke: Nanos, ttl: Nanos, proposed: Nanos) -> Nanos {
        let cumulative = |t: Nanos| {
            self.jump_log[node].iter().take_while(|&&(at, _)| at <= t).last().map_or(0, |&(_, total)| total)
        };
        let jumps = cumulative(proposed) - cumulative(invoke.saturating_sub(1));
        let usable = i128::from(ttl.saturating_sub(jumps));
        let rate = i128::from(PPM) + i128::from(self.nodes[node].clock.drift_ppm);
        // Minus a microsecond for the clock's integer rounding.
        let elapsed = (usable * i128::from(PPM) / rate) as Nanos;
        invoke.saturating_add(elapsed.saturating_sub(NANOS_PER_MICRO))
    }

    /// At the first application of a committed entry anywhere: lock holders
    /// in log order (an acquire while another client holds the lock, with
    /// no unlock or lease expiry between, is a violation), and each expiry
    /// that removed a temporary register becomes a system remove in the
    /// history, invoked when first proposed and returned now (its effect is
    /// visible from its first application, and not before its proposal).
    fn first_application(&mut self, index: Index, data: &Bytes, responses: &[tarn_kv::Response]) {
        let now = self.now();
        let proposal = self.expiry_proposals.remove(&(hash_bytes(data) | 1));
        let proposed_at = proposal.map(|(at, _)| at);
        let Ok(entry) = decode_entry(data) else { return };
        for (request, response) in entry.requests.iter().zip(responses) {
            let client = request.client_id;
            // A read through the log carries a seq but never reaches the
            // session table (`Command::is_read_only`): no dedup for it.
            if client != 0 && !request.command.is_read_only() && !self.executed.insert((client, request.seq))
            {
                continue;
            }
            match (&request.command, response) {
                (Command::TryLock { key, .. }, Ok(KvReply::Lock(LockOutcome::Acquired))) => {
                    if let Some(&holder) = self.lock_holders.get(key) {
                        if holder != client {
                            let detail = format!(
                                "entry {index}: client {client} acquires lock {key} while client {holder} holds it \
                                 (no unlock or lease expiry between them in the log)"
                            );
                            self.fail(FailureKind::Safety, "lock-mutual-exclusion-log", detail);
                            return;
                        }
                    }
                    self.lock_holders.insert(key.clone(), client);
                }
                (Command::Unlock { key }, Ok(KvReply::Done))
                    if self.lock_holders.get(key) == Some(&client) =>
                {
                    self.lock_holders.remove(key);
                }
                (Command::PutTemp { key, ttl_nanos, .. }, Ok(KvReply::Done))
                | (Command::UpdateTtl { key, ttl_nanos }, Ok(KvReply::Done)) => {
                    if let Some(invoke) = self.temp_invokes.remove(&(client, request.seq)) {
                        self.temp_arms.insert(key.clone(), (invoke, *ttl_nanos));
                    }
                }
                (Command::UpdateTtl { .. }, Err(tarn_kv::KvError::NotFound { .. })) => self.ttl_races += 1,
                (Command::Expire { key, .. }, Ok(KvReply::Expired(false))) if key.starts_with('t') => {
                    self.ttl_races += 1
                }
                (Command::Expire { key, .. }, Ok(KvReply::Expired(true))) => {
                    self.expiries += 1;
                    if let Some(n) = key.strip_prefix('t').and_then(|n| n.parse::<u64>().ok()) {
                        let arm = self.temp_arms.remove(key);
                        if let (Some((invoke, ttl)), Some((proposed, node))) = (arm, proposal) {
                            let earliest = self.ttl_expiry_earliest(node, invoke, ttl, proposed);
                            if proposed < earliest {
                                let detail = format!(
                                    "entry {index}: n{} proposed the expiry of {key} at {:.6}s, but it was last \
                                     armed by an operation invoked at {:.6}s with a TTL of {:.3} ms: by n{}'s clock \
                                     (drift {} ppm) it cannot expire before {:.6}s",
                                    node + 1,
                                    proposed as f64 / 1e9,
                                    invoke as f64 / 1e9,
                                    ttl as f64 / 1e6,
                                    node + 1,
                                    self.nodes[node].clock.drift_ppm,
                                    earliest as f64 / 1e9
                                );
                                self.fail(FailureKind::Safety, "ttl-lower-bound", detail);
                                return;
                            }
                        }
                        self.system_ops.push(Op {
                            client: 0,
                            key: workload::TEMP_KEY_BASE + n,
                            kind: OpKind::Remove,
                            result: OpResult::Ok,
                            invoke_ns: proposed_at.unwrap_or(0),
                            return_ns: now,
                        });
                    } else {
                        self.lock_holders.remove(key);
                    }
                }
                _ => {}
            }
        }
    }

    /// Watch streams: every node's whole-tree watch yields, in index order
    /// and without gaps, the same events as every other node (the first
    /// node to reach an event defines it), and the last event for each key
    /// touched agrees with the node's state machine.
    fn check_watch(&mut self, idx: usize) {
        const WATCH_POLL_EVENTS_MAX: usize = 1 << 20;
        let n = &mut self.nodes[idx];
        let Some(id) = n.watch else { return };
        let Some(kv) = n.kv_mut() else { return };
        let events = match kv.poll_watch(id, WATCH_POLL_EVENTS_MAX) {
            WatchPoll::Events(events) => events,
            other => {
                let detail = format!("n{}: whole-tree watch ended: {other:?}", n.id);
                self.fail(FailureKind::Safety, "watch-stream", detail);
                return;
            }
        };
        let node_id = n.id;
        let applied = n.kv().map_or(0, KvStateMachine::applied_index);
        let mut last_index = 0;
        let mut last_by_key: Vec<(&str, Option<Bytes>)> = Vec::new();
        for ev in &events {
            let item = stream_item(ev);
            let pos = self.nodes[idx].watch_pos;
            if ev.index < last_index || ev.index > applied {
                let detail = format!(
                    "n{node_id}: watch event at index {} after {last_index} (applied {applied})",
                    ev.index
                );
                self.fail(FailureKind::Safety, "watch-stream", detail);
                return;
            }
            last_index = ev.index;
            match self.watch_stream.get(pos) {
                Some(known) if *known != item => {
                    let detail = format!(
                        "n{node_id}: watch event #{pos} is {} {:?} at index {}, but another node's event #{pos} was \
                         at index {} (streams differ: a gap, a reorder or a divergent state machine)",
                        ev.key, ev.kind, ev.index, known.0
                    );
                    self.fail(FailureKind::Safety, "watch-stream", detail);
                    return;
                }
                Some(_) => {}
                None => self.watch_stream.push(item),
            }
            self.nodes[idx].watch_pos += 1;
            let value = match &ev.kind {
                EventKind::Put { value } => Some(value.clone()),
                EventKind::Removed => None,
                // A lock node exists (with an empty value) while it has a holder.
                EventKind::LockHolder { .. } => Some(Bytes::new()),
                EventKind::DirCreated => continue,
            };
            match last_by_key.iter_mut().find(|(k, _)| *k == &*ev.key) {
                Some(entry) => entry.1 = value,
                None => last_by_key.push((&ev.key, value)),
            }
        }
        let Some(sm) = self.nodes[idx].kv() else { return };
        for (key, value) in last_by_key {
            let now = sm.get(key).ok().flatten().map(|v| v.value);
            if now != value {
                let detail = format!(
                    "n{node_id}: the watch's last event for {key} says {value:?}, the state machine holds {now:?}"
                );
                self.fail(FailureKind::Safety, "watch-stream", detail);
                return;
            }
        }
    }

    // ----- clients ---------------------------------------------------------------------

    fn client_latency(&mut self) -> Nanos {
        self.rng_workload.between(CLIENT_LATENCY_MIN_NS, CLIENT_LATENCY_MAX_NS)
    }

    fn client_start(&mut self, c: usize) {
        if self.phase != Phase::Faulty || self.clients[c].current.is_some() {
            return;
        }
        if Some(c) == self.prober && self.probe.is_none() {
            // The prober reads only when sent.
            return;
        }
        let p = &self.profile;
        let (keys, read_ppm, log_read_ppm) = (p.keys, p.read_ppm, p.log_read_ppm);
        let process = self.clients[c].process;
        let owner = self.processes[process].session == self.clients[c].id;
        let mut op =
            workload::next_op(&mut self.rng_workload, keys, read_ppm, log_read_ppm, &mut self.next_value);
        if owner && self.rng_ttl.chance(self.profile.temp_ppm) {
            let p = &self.profile;
            let ttl = self.rng_ttl.between(p.temp_ttl_min_ns, p.temp_ttl_max_ns).max(NANOS_PER_MILLI);
            let clients = self.clients.len() as u64;
            op = workload::temp_op(
                &mut self.rng_ttl,
                c as u64,
                clients,
                ttl,
                log_read_ppm,
                &mut self.next_value,
            );
        }
        if op.kind == OpKind::TryLock && op.key == 1 && self.profile.short_lock_lease_ns > 0 {
            op.ttl_ns = self.profile.short_lock_lease_ns.max(NANOS_PER_MILLI);
        }
        if op.kind == OpKind::TryLock {
            self.vary_lock_op(c, &mut op);
        }
        if !owner && matches!(op.kind, OpKind::TryLock | OpKind::Unlock | OpKind::Refresh { .. }) {
            // Locks belong to the session (see `Process`): another task reads.
            op.kind = OpKind::Read;
            op.path = Path::Log;
            op.ttl_ns = 0;
            op.wait_ns = 0;
        }
        if self.processes[process].tasks > 1 {
            // Only a lone task's refused write hands its seq back (see
            // `client_act`): shared sessions send nothing admission refuses.
            op.pad_bytes = 0;
        }
        if let Some((lock, lease, wait)) = self.clients[c].waiting {
            // Queued: poll with the same try-lock (it answers Acquired once
            // the lock was handed over), or give up with an unlock.
            op = if self.rng_locks.chance(PPM * 2 / 3) {
                ClientOp {
                    key: lock,
                    kind: OpKind::TryLock,
                    path: Path::Log,
                    batch: 1,
                    keys,
                    ttl_ns: lease,
                    wait_ns: wait,
                    pad_bytes: 0,
                }
            } else {
                ClientOp {
                    key: lock,
                    kind: OpKind::Unlock,
                    path: Path::Log,
                    batch: 1,
                    keys,
                    ttl_ns: 0,
                    wait_ns: 0,
                    pad_bytes: 0,
                }
            };
        }
        if let Some(lock) = self.clients[c].holding {
            op = ClientOp {
                key: lock,
                kind: OpKind::Unlock,
                path: Path::Log,
                batch: 1,
                keys,
                ttl_ns: 0,
                wait_ns: 0,
                pad_bytes: 0,
            };
        }
        let now = self.now();
        if self.rng_workload.chance(self.profile.client_random_target_ppm) {
            self.clients[c].target = self.rng_workload.below(self.nodes.len() as u64) as usize;
        }
        if let Some((_, target)) = self.probe.filter(|&(client, _)| client == c) {
            // A read steered at a node still leading an older term.
            op = ClientOp {
                key: op.key,
                kind: OpKind::Read,
                path: Path::ReadIndex,
                batch: 1,
                keys,
                ttl_ns: 0,
                wait_ns: 0,
                pad_bytes: 0,
            };
            self.clients[c].target = target;
        }
        let client = &mut self.clients[c];
        let session = &mut self.processes[process];
        // Sessions number writes only: a read never reaches the session table,
        // and a session starts at the client's first write with seq 1.
        if op.kind != OpKind::Read {
            session.seq += 1;
            session.outstanding.insert(session.seq);
        }
        let seq = session.seq;
        let temp_arming = matches!(op.kind, OpKind::Write(_) | OpKind::Refresh { own: true })
            && workload::is_temp_key(op.key);
        if temp_arming {
            // Only a session's owner task arms TTLs: its id is the session's.
            self.temp_invokes.insert((client.id, seq), now);
        }
        let history_index = self.history.len();
        let record = |key, kind| Op {
            client: client.id as u32,
            key,
            kind,
            result: OpResult::Unknown,
            invoke_ns: now,
            return_ns: Nanos::MAX,
        };
        if op.batch > 1 {
            // A batch is recorded as one write per key over the batch's interval.
            for (key, value) in op.batch_items() {
                self.history.push(record(key, OpKind::Write(value)));
            }
        } else {
            self.history.push(record(op.key, op.kind));
        }
        let first_attempt = self.next_attempt;
        // The client library's defaults: pauses from 10 ms up to 200 ms,
        // seeded per request; each timed-out try doubles the next one's wait
        // (not in the lease profile, whose reads race on short timeouts).
        let timeout = Duration::from_nanos(self.profile.client_timeout_ns);
        let timeout_max = if self.profile.kind == ProfileKind::Lease { timeout } else { timeout * 4 };
        let backoff =
            Backoff::new(RETRY_BACKOFF_FIRST, RETRY_BACKOFF_MAX, client.id << 32 ^ history_index as u64);
        let route = Route::new(backoff, timeout, timeout_max, self.nodes.len());
        client.current = Some(CurrentOp { op, seq, history_index, first_attempt, attempt: 0, route });
        let (target, id) = (client.target as u64 + 1, client.id);
        self.record(target, TraceKind::Invoke, id, history_index as u64, 0);
        self.client_send(c);
    }

    /// Issue 15 gap 4: a drawn try-lock sometimes queues (`wait_nanos` > 0,
    /// so holders hand the lock to waiters), and sometimes becomes an unlock
    /// by a client that does not hold the lock (the kv's owner check must
    /// refuse it; the lock checkers see it if it does not).
    fn vary_lock_op(&mut self, c: usize, op: &mut ClientOp) {
        if self.clients[c].holding.is_some() || self.clients[c].waiting.is_some() {
            return;
        }
        if self.rng_locks.chance(PPM / 10) {
            op.kind = OpKind::Unlock;
            op.ttl_ns = 0;
        } else if self.rng_locks.chance(PPM / 2) {
            op.wait_ns = self.rng_locks.between(NANOS_PER_MILLI, 300 * NANOS_PER_MILLI);
        }
    }

    fn client_send(&mut self, c: usize) {
        let attempt = self.next_attempt;
        self.next_attempt += 1;
        let now = self.now();
        let latency = self.client_latency();
        let client = &mut self.clients[c];
        let client_id = client.id;
        let session = &self.processes[client.process];
        let Some(cur) = client.current.as_mut() else { return };
        cur.attempt = attempt;
        let (node, seq, op) = (client.target as u8, cur.seq, cur.op);
        // What the client library sends: every seq below the session's
        // oldest unanswered write is acknowledged.
        let first_unacked = session.outstanding.first().copied().unwrap_or(seq);
        let session_id = session.session;
        if op.kind != OpKind::Read && first_unacked < seq {
            self.pipelined_writes += 1;
        }
        // What the client library sends: a write through the log (reads too,
        // when the workload says so), or a linearizable read.
        let body = if op.path == Path::ReadIndex {
            debug_assert_eq!(op.kind, OpKind::Read);
            let command = Command::Get { key: workload::key_path(op.key) };
            RequestBody::Read { command, consistency: Consistency::Linearizable }
        } else {
            RequestBody::Write(workload::request(session_id, seq, first_unacked, &op))
        };
        let frame = ClientFrame { id: attempt, group: DEFAULT_GROUP, body };
        match encode_request(&frame) {
            Ok(bytes) => {
                self.queue.push(now + latency, Event::ClientArrive { node, client: c as u32, bytes });
            }
            Err(error) => {
                let detail = format!("client {client_id}: request {attempt} does not frame: {error}");
                self.fail(FailureKind::Safety, "client-frame", detail);
                return;
            }
        }
        let timeout = self.clients[c].current.as_ref().map_or(self.profile.client_timeout_ns, |cur| {
            u64::try_from(cur.route.attempt_timeout().as_nanos()).unwrap_or(Nanos::MAX)
        });
        self.queue.push(now + timeout, Event::ClientTimeout { client: c as u32, attempt });
    }

    /// A client's frame reaches node `idx`: decoded as the server decodes
    /// it and served by the node's request path.
    fn client_arrive(&mut self, idx: usize, client: u32, bytes: Bytes) {
        let now = self.now();
        let n = &mut self.nodes[idx];
        if n.exec.is_none() {
            return;
        }
        if n.paused_until > now {
            let at = self.wake_time(idx);
            self.queue.push(at, Event::ClientArrive { node: idx as u8, client, bytes });
            return;
        }
        let Some(frame) = self.decode_frame(idx, client, &bytes) else { return };
        self.serve_frame(idx, client, frame);
    }

    /// Decodes a client's request frame as the server decodes it; one that
    /// does not decode fails the run (the client encoded it).
    fn decode_frame(&mut self, idx: usize, client: u32, bytes: &[u8]) -> Option<ClientFrame> {
        match decode_request(bytes) {
            Ok(frame) => Some(frame),
            Err(error) => {
                let detail = format!("n{}: a request of client {client} does not decode: {error}", idx + 1);
                self.fail(FailureKind::Safety, "client-frame", detail);
                None
            }
        }
    }

    /// A frame of a shared session's connection reaches node `idx`: it
    /// waits for the connection's reader, which runs within the run's
    /// reader delay and reads every frame there by then at once.
    fn conn_arrive(&mut self, idx: usize, client: u32, bytes: Bytes) {
        let key = (self.clients[client as usize].process, idx as u8);
        let pending = self.conns.entry(key).or_default();
        pending.push((client, bytes));
        if pending.len() == 1 {
            let at = self.now() + self.rng_sessions.below(self.reader_delay_ns + 1);
            self.queue.push(at, Event::ConnRead { node: idx as u8, process: key.0 as u32 });
        }
    }

    /// Node `idx`'s reader of process `p`'s connection runs, as the server's
    /// connection reader does: the writes it finds go to the request path
    /// together (`RequestPath::writes`, packed into as few entries as the
    /// entry bound allows, each answer under its own request id); anything
    /// else is served one frame at a time.
    fn conn_read(&mut self, idx: usize, p: usize) {
        let now = self.now();
        if self.nodes[idx].exec.is_none() {
            // The connection died with the node: its frames are lost.
            self.conns.remove(&(p, idx as u8));
            return;
        }
        if self.nodes[idx].paused_until > now {
            let at = self.wake_time(idx);
            self.queue.push(at, Event::ConnRead { node: idx as u8, process: p as u32 });
            return;
        }
        let Some(frames) = self.conns.remove(&(p, idx as u8)) else { return };
        let (mut writes, mut routes) = (Vec::new(), Vec::new());
        for (client, bytes) in frames {
            let Some(frame) = self.decode_frame(idx, client, &bytes) else { return };
            match frame.body {
                RequestBody::Write(request) if frame.group == DEFAULT_GROUP => {
                    routes.push((frame.id, client));
                    writes.push((frame.id, request));
                }
                _ => {
                    self.serve_frame(idx, client, frame);
                    if self.failure.is_some() || self.nodes[idx].exec.is_none() {
                        return;
                    }
                }
            }
        }
        let Some(&(attempt, client)) = routes.first() else { return };
        if writes.len() > 1 {
            self.write_batches += 1;
        }
        let n = &mut self.nodes[idx];
        let local = n.clock.local(now).max(n.last_local_ns);
        let mailbox = n.mailbox.clone();
        let sink = ClientSink { client, mailbox: mailbox.clone(), routes: Some(Arc::new(routes)) };
        let mut port = SimPort { inputs: Vec::new(), mailbox, attempt, floor: 0 };
        n.path.writes(DEFAULT_GROUP, &mut port, writes, local, &sink);
        if port.inputs.is_empty() {
            // Answered by admission alone: play the answers.
            self.drain(idx);
        } else {
            self.turn(idx, Turn { inputs: port.inputs, ..Turn::default() });
        }
    }

    /// Serves one decoded frame of `client` on node `idx` (running, not paused).
    fn serve_frame(&mut self, idx: usize, client: u32, frame: ClientFrame) {
        let now = self.now();
        let attempt = frame.id;
        let is_read = matches!(frame.body, RequestBody::Read { .. });
        let floor = if is_read {
            self.lease_probe = Some(attempt);
            self.lease_probe_served = false;
            self.nodes.iter().filter_map(|n| n.raw().map(RawNode::commit_index)).max().unwrap_or(0)
        } else {
            0
        };
        let n = &mut self.nodes[idx];
        // The proposer's wall clock, as a server reads its own.
        let local = n.clock.local(now).max(n.last_local_ns);
        let mailbox = n.mailbox.clone();
        let sink = ClientSink { client, mailbox: mailbox.clone(), routes: None };
        let mut port = SimPort { inputs: Vec::new(), mailbox, attempt, floor };
        if let Err(other) = n.path.serve(frame, &mut port, &n.watches, local, &sink) {
            let detail =
                format!("n{}: client {client} sent a request the path does not serve: {other:?}", idx + 1);
            self.fail(FailureKind::Safety, "client-frame", detail);
            return;
        }
        if port.inputs.is_empty() {
            // Answered by admission alone: play the answer.
            let next = self.drain(idx);
            debug_assert!(next.inputs.is_empty() && next.storage.is_empty() && next.snapshots.is_empty());
        } else {
            self.turn(idx, Turn { inputs: port.inputs, ..Turn::default() });
        }
        if self.lease_probe.take().is_some() && self.lease_probe_served {
            // Served within the turn that brought it: no heartbeat round, so
            // from the lease (a single voter needs none: not counted).
            let n = &self.nodes[idx];
            let voters = n.raw().map_or(0, |r| r.membership().voters.len());
            let skewed = self.profile.drift_ppm_max > 0 || self.nodes.iter().any(|n| n.clock.jumped_ns > 0);
            if voters > 1 && skewed {
                self.lease_reads_skewed += 1;
            }
        }
    }

    /// A client's read (request `attempt`) ran on node `idx`'s state
    /// machine at `applied`: it must have waited for the index the core
    /// released it at, and that index must cover everything committed
    /// anywhere when the read arrived.
    fn on_read_served(&mut self, idx: usize, attempt: u64, applied: Index, floor: Index) {
        let index = self.read_ready_index;
        if applied < index {
            let detail =
                format!("n{}: read {attempt} ready at index {index} but only {applied} applied", idx + 1);
            self.fail(FailureKind::Safety, "read-index", detail);
            return;
        }
        if self.lease_probe == Some(attempt) {
            self.lease_probe_served = true;
        }
        if index < floor && self.config.read_floor_check {
            let detail = format!(
                "n{}: read {attempt} served at index {index}, but index {floor} was already committed when the read arrived",
                idx + 1
            );
            self.fail(FailureKind::Safety, "read-index-stale", detail);
        }
    }

    /// Node `idx`'s request path answered `client`: the frame travels back
    /// encoded, as a server's writer sends it.
    fn on_frame(&mut self, idx: usize, client: u32, frame: ServerFrame) {
        match encode_answer(&frame) {
            Ok(bytes) => {
                let at = if client >= WATCHER_CLIENT_BASE {
                    // In order on the watcher's connection.
                    let at = self.now() + self.watcher_latency();
                    let w = &mut self.watchers[(client - WATCHER_CLIENT_BASE) as usize];
                    w.answer_at = w.answer_at.max(at);
                    w.answer_at
                } else {
                    self.now() + self.client_latency()
                };
                self.queue.push(at, Event::ClientReply { client, bytes });
            }
            Err(error) => {
                let detail = format!("n{}: an answer to client {client} does not frame: {error}", idx + 1);
                self.fail(FailureKind::Safety, "client-frame", detail);
            }
        }
    }

    /// An answer frame reaches client `c`: decoded, matched to its
    /// operation, and acted on as the client library decides
    /// (`tarn_service::retry`). An answer to an earlier attempt of the same
    /// operation must still make sense for it; one to an earlier operation
    /// is ignored (nobody waits for it).
    /// Decodes an answer frame for `who`; one that does not decode fails
    /// the run (`client-frame`): the request path encoded it.
    fn decode_reply(&mut self, who: impl FnOnce() -> String, bytes: &[u8]) -> Option<ServerFrame> {
        match decode_answer(bytes) {
            Ok(frame) => Some(frame),
            Err(error) => {
                let detail = format!("{}: an answer does not decode: {error}", who());
                self.fail(FailureKind::Safety, "client-frame", detail);
                None
            }
        }
    }

    fn client_reply(&mut self, c: usize, bytes: Bytes) {
        let id = self.clients[c].id;
        let Some(frame) = self.decode_reply(|| format!("client {id}"), &bytes) else { return };
        let ServerFrame::Response { id: attempt, result } = frame else {
            let detail = format!("client {id} started no watch but got {frame:?}");
            self.fail(FailureKind::Safety, "client-answer", detail);
            return;
        };
        let Some(cur) = self.clients[c].current.as_ref() else { return };
        if attempt < cur.first_attempt || attempt > cur.attempt {
            return;
        }
        let (op, latest) = (cur.op, attempt == cur.attempt);
        let reply = match result {
            Ok(ResponseBody::Kv(response)) => match workload::interpret(&op, &response) {
                Ok(result) => Reply::Result(result),
                Err(detail) => {
                    self.fail(FailureKind::Safety, "kv-response", detail);
                    return;
                }
            },
            Ok(other) => {
                let detail = format!("client {id}: request {attempt} was answered {other:?}");
                self.fail(FailureKind::Safety, "client-answer", detail);
                return;
            }
            // The workload sends only requests a server accepts.
            Err(error) if retry::after_error(&error) == Next::Fail => {
                let detail = format!("client {id}: request {attempt} of {op:?} was refused: {error}");
                self.fail(FailureKind::Safety, "client-answer", detail);
                return;
            }
            Err(error) => Reply::Refused(error),
        };
        if latest {
            self.client_act(c, attempt, reply);
        }
    }

    fn client_act(&mut self, c: usize, attempt: u64, reply: Reply) {
        let now = self.now();
        let client = &mut self.clients[c];
        match reply {
            Reply::Result(result) => {
                let Some(cur) = client.current.take() else { return };
                let session = &mut self.processes[client.process];
                if cur.op.kind != OpKind::Read {
                    session.outstanding.remove(&cur.seq);
                }
                match (cur.op.kind, result) {
                    (OpKind::TryLock, OpResult::Lock(true)) => {
                        if client.waiting.take().is_some() {
                            self.handoffs += 1;
                        }
                        client.holding = Some(cur.op.key);
                    }
                    (OpKind::TryLock, OpResult::Queued) => {
                        client.waiting = Some((cur.op.key, cur.op.ttl_ns, cur.op.wait_ns))
                    }
                    (OpKind::TryLock, _) => client.waiting = None,
                    (OpKind::Unlock, _) => {
                        client.holding = None;
                        client.waiting = None;
                    }
                    _ => {}
                }
                let count = usize::from(cur.op.batch.max(1));
                // A refused write (`Unknown`: it did not happen) stays open
                // in the history: the checker may place it after everything,
                // where it changes nothing anyone read.
                let return_ns = if result == OpResult::Unknown { Nanos::MAX } else { now };
                if result == OpResult::Unknown && session.tasks == 1 {
                    // Refused by admission, so its seq never reached the log:
                    // the next write takes it (a session starts at the first
                    // write that applies, with seq 1; the client library takes
                    // a seq only for a request that fits).
                    debug_assert_eq!(cur.seq, session.seq);
                    session.seq -= 1;
                }
                for op in &mut self.history[cur.history_index..cur.history_index + count] {
                    op.result = result;
                    op.return_ns = return_ns;
                }
                self.ops_completed += count as u64;
                let id = client.id;
                self.record(0, TraceKind::Complete, id, cur.history_index as u64, result_code(&result));
                let think = self.rng_workload.between(0, self.profile.client_think_max_ns);
                self.queue.push(now + think, Event::ClientWake { client: c as u32 });
            }
            Reply::Refused(error) => {
                let nodes = self.nodes.len();
                let Some(cur) = client.current.as_mut() else { return };
                let hint = match retry::after_error(&error) {
                    Next::Redirect(Some(l)) if (1..=nodes as NodeId).contains(&l) => Some(l as usize - 1),
                    _ => None,
                };
                let Some(retry) = cur.route.refused(client.target, &error, hint, false) else {
                    let detail = format!("client {}: request {attempt} was refused: {error}", client.id);
                    self.fail(FailureKind::Safety, "client-answer", detail);
                    return;
                };
                client.target = route_target(client.target, retry.leader, nodes);
                let pause = u64::try_from(retry.pause.as_nanos()).unwrap_or(Nanos::MAX);
                self.queue.push(now.saturating_add(pause), Event::ClientRetry { client: c as u32, attempt });
            }
        }
    }

    // ----- watching clients (see watchers.rs) ------------------------------------------

    fn watcher_latency(&mut self) -> Nanos {
        self.rng_watch.between(CLIENT_LATENCY_MIN_NS, CLIENT_LATENCY_MAX_NS)
    }

    /// Watcher `w` sends a `Watch` of the whole tree to its node, after the
    /// last index it saw (or from the node's present the first time).
    fn watcher_send(&mut self, w: usize) {
        let request = self.next_attempt;
        self.next_attempt += 1;
        let (now, latency) = (self.now(), self.watcher_latency());
        let watcher = &mut self.watchers[w];
        let after = watcher.resume_after();
        watcher.sent(request, after);
        let body = RequestBody::Watch { key: String::new(), subtree: true, after_index: after };
        let frame = ClientFrame { id: request, group: DEFAULT_GROUP, body };
        self.watcher_frame(w, &frame, now + latency);
        let timeout = self.profile.client_timeout_ns;
        self.queue.push(now + timeout, Event::WatcherTimeout { watcher: w as u32, request });
    }

    /// Sends watcher `w`'s `frame` to arrive at its node at `at`.
    fn watcher_frame(&mut self, w: usize, frame: &ClientFrame, at: Nanos) {
        match encode_request(frame) {
            Ok(bytes) => {
                let (node, client) = (self.watchers[w].target as u8, WATCHER_CLIENT_BASE + w as u32);
                let watcher = &mut self.watchers[w];
                watcher.request_at = watcher.request_at.max(at);
                self.queue.push(watcher.request_at, Event::ClientArrive { node, client, bytes });
            }
            Err(error) => {
                let detail = format!("watcher {w}: request {} does not frame: {error}", frame.id);
                self.fail(FailureKind::Safety, "client-frame", detail);
            }
        }
    }

    /// Watcher `w`'s watch is over (ended, refused, lost or unwatched): it
    /// watches again after a pause, on another node if `elsewhere`.
    /// Watcher `w` gives up on its unanswered `Watch` `request`, as the
    /// client library does: it asks the node to drop it (the registration
    /// may have landed late, and a node would otherwise feed a watch nobody
    /// reads until the connection closes). The answer is ignored.
    fn watcher_abandon(&mut self, w: usize, request: u64) {
        let id = self.next_attempt;
        self.next_attempt += 1;
        let frame = ClientFrame {
            id,
            group: DEFAULT_GROUP,
            body: RequestBody::Unwatch { watch_request_id: request },
        };
        let at = self.now() + self.watcher_latency();
        self.watcher_frame(w, &frame, at);
    }

    fn watcher_resume(&mut self, w: usize, elsewhere: bool) {
        let nodes = self.nodes.len() as u64;
        let target = elsewhere.then(|| self.rng_watch.below(nodes) as usize);
        let delay = self.rng_watch.between(NANOS_PER_MILLI, 50 * NANOS_PER_MILLI);
        let watcher = &mut self.watchers[w];
        watcher.request = None;
        watcher.watching = false;
        watcher.unwatch = None;
        if let Some(target) = target {
            watcher.target = target;
        }
        self.watch_resumes += 1;
        self.queue.push(self.now() + delay, Event::WatcherStart { watcher: w as u32 });
    }

    /// A frame reaches watcher `w`: what it carries is judged against the
    /// world's watch stream, as `watchers.rs` describes.
    fn watcher_reply(&mut self, w: usize, bytes: Bytes) {
        let Some(frame) = self.decode_reply(|| format!("watcher {w}"), &bytes) else { return };
        let node = self.watchers[w].target + 1;
        let watcher = &mut self.watchers[w];
        let outcome = match frame {
            ServerFrame::Response { id, result: Ok(ResponseBody::Done) } if watcher.unwatch == Some(id) => {
                self.watcher_resume(w, true);
                return;
            }
            ServerFrame::Response { id, .. } if watcher.request != Some(id) => return,
            ServerFrame::Response { result: Ok(ResponseBody::Watching { after_index }), .. } => {
                watcher.started(&self.watch_stream, after_index)
            }
            ServerFrame::Response { result: Err(ServerError::BadRequest { reason }), .. }
                if reason.contains("compacted") =>
            {
                watcher.restart_from_now();
                self.watcher_resume(w, false);
                return;
            }
            ServerFrame::Response { id, result: Err(error) } => match retry::after_error(&error) {
                Next::Fail => Err(format!("watch request {id} was refused: {error}")),
                _ => {
                    self.watcher_resume(w, true);
                    return;
                }
            },
            ServerFrame::Response { id, result: Ok(other) } => {
                Err(format!("watch request {id} was answered {other:?}"))
            }
            ServerFrame::Watch { id, .. } | ServerFrame::WatchEnded { id, .. }
                if watcher.request != Some(id) =>
            {
                return;
            }
            ServerFrame::Watch { events, .. } => match watcher.receive(&self.watch_stream, &events) {
                Ok(n) => {
                    self.watch_events += n as u64;
                    // Now and then the client stops watching, then resumes.
                    if self.watchers[w].watching
                        && self.watchers[w].unwatch.is_none()
                        && self.rng_watch.chance(PPM / 50)
                    {
                        self.watcher_unwatch(w);
                    }
                    Ok(())
                }
                Err(e) => Err(e),
            },
            ServerFrame::WatchEnded { .. } => {
                self.watcher_resume(w, false);
                return;
            }
        };
        if let Err(e) = outcome {
            self.fail(FailureKind::Safety, "client-watch", format!("watcher {w} on n{node}: {e}"));
        }
    }

    /// Watcher `w` asks its node to stop its watch; the `Done` resumes it.
    fn watcher_unwatch(&mut self, w: usize) {
        let Some(watch) = self.watchers[w].request else { return };
        let id = self.next_attempt;
        self.next_attempt += 1;
        self.watchers[w].unwatch = Some(id);
        let frame =
            ClientFrame { id, group: DEFAULT_GROUP, body: RequestBody::Unwatch { watch_request_id: watch } };
        let at = self.now() + self.watcher_latency();
        self.watcher_frame(w, &frame, at);
    }

    // ----- faults ----------------------------------------------------------------------

    fn interval(&self, fault: Fault) -> Nanos {
        let i = &self.profile.intervals;
        match fault {
            Fault::Partition => i.partition_ns,
            Fault::OneWayPartition => i.one_way_partition_ns,
            Fault::Isolate => i.isolate_ns,
            Fault::Clog => i.clog_ns,
            Fault::Flap => i.flap_ns,
            Fault::Crash => i.crash_ns,
            Fault::Pause => i.pause_ns,
            Fault::ClockJump => i.clock_jump_ns,
            Fault::TransferLeader => i.transfer_leader_ns,
            Fault::Wipe => i.wipe_ns,
            Fault::Membership => {
                // With one voter out and a bad disk retired, a 3-node cluster
                // would have no majority left: that is not a bug to find.
                let bad_disk =
                    self.nodes.iter().any(|n| n.engine.as_ref().is_some_and(|e| e.vfs.is_bad_disk()));
                if self.nodes.len() >= 4 || (self.nodes.len() == 3 && !bad_disk) {
                    i.membership_ns
                } else {
                    0
                }
            }
        }
    }

    fn schedule_fault(&mut self, fault: Fault) {
        let mean = self.interval(fault);
        if mean == 0 {
            return;
        }
        let at = self.now() + self.rng_process.between(mean / 2, mean + mean / 2);
        if at < self.config.sim_ns {
            self.queue.push(at, Event::Fault(fault));
        }
    }

    fn fault_duration(&mut self) -> Nanos {
        let max = self.profile.fault_duration_max_ns.max(20 * NANOS_PER_MILLI);
        self.rng_process.between(10 * NANOS_PER_MILLI, max)
    }

    fn random_node(&mut self) -> usize {
        self.rng_partition.below(self.nodes.len() as u64) as usize
    }

    fn random_side(&mut self) -> u64 {
        let all = self.net.all();
        loop {
            let side = self.rng_partition.next_u64() & all;
            if side != 0 && side != all {
                return side;
            }
        }
    }

    fn inject(&mut self, fault: Fault) {
        let now = self.now();
        self.disturb_failover(None);
        let nodes = self.nodes.len();
        if nodes < 2 && !matches!(fault, Fault::Crash | Fault::Pause | Fault::ClockJump) {
            return;
        }
        let duration = self.fault_duration();
        match fault {
            Fault::Partition | Fault::OneWayPartition | Fault::Isolate => {
                let (a, b) = match fault {
                    Fault::Partition => {
                        let side = self.random_side();
                        self.net.partition(side);
                        (side, self.net.all() & !side)
                    }
                    Fault::OneWayPartition => {
                        let from = self.random_side();
                        let to = self.net.all() & !from;
                        self.net.block(from, to);
                        (from, to)
                    }
                    _ => {
                        // Some isolations cut off the leader: the clients
                        // that found it keep writing to it until check-quorum
                        // deposes it, so it holds a suffix of its term that
                        // nobody else has, and the next leader must find
                        // and cut the divergence (issue 15, gap 1).
                        let leader =
                            self.nodes.iter().position(|n| n.raw().is_some_and(|r| r.role() == Role::Leader));
                        let n = match leader {
                            Some(l) if self.rng_partition.chance(self.profile.isolate_leader_ppm) => l,
                            _ => self.random_node(),
                        };
                        self.net.isolate(n);
                        (1 << n, self.net.all() & !(1 << n))
                    }
                };
                let kind = fault as u64;
                self.record(0, TraceKind::Partition, a, b, kind | (duration << 8));
                self.queue.push(now + duration, Event::HealNetwork);
            }
            Fault::Clog => {
                let from = self.random_node();
                let to = (from + 1 + self.rng_partition.below(nodes as u64 - 1) as usize) % nodes;
                self.net.clog(from, to, now + duration);
                self.record(0, TraceKind::Partition, 1 << from, 1 << to, 3 | (duration << 8));
            }
            Fault::Flap => {
                let from = self.random_node();
                let to = (from + 1 + self.rng_partition.below(nodes as u64 - 1) as usize) % nodes;
                let period = self.rng_partition.between(5 * NANOS_PER_MILLI, 200 * NANOS_PER_MILLI);
                self.net.flap(from, to, period);
                self.net.flap(to, from, period);
                self.record(0, TraceKind::Partition, 1 << from, 1 << to, 4 | (duration << 8));
                self.queue.push(now + duration, Event::HealNetwork);
            }
            Fault::Crash if self.rng_process.chance(PPM / 4) => {
                // A quarter of them are restarts in place, most while a
                // snapshot job runs (the next one to start, if none does).
                let busy = self.nodes.iter().position(|n| n.exec.is_some() && !n.jobs.is_empty());
                match busy {
                    Some(n) => self.restart_in_place(n),
                    None => self.restart_armed = true,
                }
            }
            Fault::Crash => {
                let n = self.random_node();
                // Half the crashes are quick reboots: the node returns while
                // its peers still remember what it said before.
                let downtime = if self.rng_process.chance(PPM / 2) {
                    self.rng_process.between(NANOS_PER_MILLI, 30 * NANOS_PER_MILLI)
                } else {
                    duration
                };
                self.crash(n, downtime);
            }
            Fault::Pause => {
                let n = self.random_node();
                if self.nodes[n].exec.is_some() {
                    self.nodes[n].paused_until = now + duration;
                    self.nodes[n].held_until = self.nodes[n].held_until.max(now + duration);
                    self.record(n as u64 + 1, TraceKind::Pause, duration, 0, 0);
                }
            }
            Fault::ClockJump => {
                let n = self.random_node();
                let by = if self.profile.clock_jumps_allowed() {
                    self.rng_clock.between(1, self.profile.clock_jump_max_ns.max(1))
                } else {
                    // Lease reads on: a jump must keep the clock within the
                    // core's drift bound over any election timeout (see
                    // `lease_safe_jump_max_ns`); at most one per node per window.
                    let max = self.lease_safe_jump_max_ns(n);
                    if max == 0 || now < self.last_jump_ns[n] + LEASE_JUMP_SPACING_NS {
                        return;
                    }
                    self.rng_clock.between(1, max)
                };
                self.last_jump_ns[n] = now;
                self.nodes[n].clock.jump(by);
                self.jump_log[n].push((now, self.nodes[n].clock.jumped_ns));
                self.record(n as u64 + 1, TraceKind::ClockJump, by, 0, 0);
                if self.nodes[n].exec.is_some() && self.nodes[n].paused_until <= now {
                    self.after_step(n);
                }
            }
            Fault::TransferLeader => {
                let leader = self
                    .nodes
                    .iter()
                    .position(|n| n.raw().is_some_and(|r| r.role() == Role::Leader) && n.paused_until <= now);
                if let Some(l) = leader {
                    let to = (l + 1 + self.rng_ops.below(nodes as u64 - 1) as usize) % nodes;
                    self.record(l as u64 + 1, TraceKind::Transfer, to as u64 + 1, 0, 0);
                    self.step(l, GroupInput::TransferLeader { to: to as NodeId + 1 });
                }
            }
            Fault::Membership => {
                if self.wiped.is_none() {
                    self.change_membership();
                }
            }
            Fault::Wipe => self.wipe(),
        }
    }

    /// One step of a membership cycle, proposed at the leader: take a voter
    /// out, add it back as a learner, promote it. At most one node is out of
    /// the voter set at a time, so a majority of the nodes stays enough.
    fn change_membership(&mut self) {
        let now = self.now();
        let Some(l) = self
            .nodes
            .iter()
            .position(|n| n.raw().is_some_and(|r| r.role() == Role::Leader) && n.paused_until <= now)
        else {
            return;
        };
        let Some(raw) = self.nodes[l].raw() else { return };
        let m = raw.membership().clone();
        if m.is_joint() {
            return;
        }
        let all: Vec<NodeId> = (1..=self.nodes.len() as NodeId).collect();
        // From 4 nodes on, half of the changes move several voters at once
        // (issue 15, gap 2): with one voter at a time a majority of the new
        // configuration always holds a majority of the old one, so the joint
        // consensus arithmetic was never really tried.
        if self.nodes.len() >= 4 && self.rng_ops.chance(500_000) {
            let changes = self.multi_voter_change(&m, &all);
            if changes.len() >= 2 {
                self.multi_changes += 1;
                for c in &changes {
                    let (kind, node) = conf_change_code(c);
                    self.record(l as u64 + 1, TraceKind::Membership, kind, node, 0);
                }
                self.step(l, change_membership(changes));
                return;
            }
        }
        let change = if let Some(&learner) = m.learners.iter().next() {
            ConfChange::PromoteLearner(learner)
        } else if let Some(&out) = all.iter().find(|id| !m.contains(**id)) {
            ConfChange::AddLearner(out)
        } else {
            let victim = *self.rng_ops.pick(&all);
            ConfChange::RemoveNode(victim)
        };
        let (kind, node) = conf_change_code(&change);
        self.record(l as u64 + 1, TraceKind::Membership, kind, node, 0);
        self.step(l, change_membership(vec![change]));
    }

    /// A change of several voters at once from `m` (not joint):
    /// - with learners: promote all of them, and with even odds also remove
    ///   as many voters as are promoted (replacing up to a majority);
    /// - with nodes outside the group: add them all as learners;
    /// - else remove 2 or more voters together, keeping at least 2.
    fn multi_voter_change(&mut self, m: &Membership, all: &[NodeId]) -> Vec<ConfChange> {
        let learners: Vec<NodeId> = m.learners.iter().copied().collect();
        let mut voters: Vec<NodeId> = m.voters.iter().copied().collect();
        self.rng_ops.shuffle(&mut voters);
        let mut changes = Vec::new();
        if !learners.is_empty() {
            changes.extend(learners.iter().map(|&id| ConfChange::PromoteLearner(id)));
            if self.rng_ops.chance(500_000) {
                let remove = learners.len().min(voters.len());
                changes.extend(voters[..remove].iter().map(|&id| ConfChange::RemoveNode(id)));
            }
        } else if all.iter().any(|id| !m.contains(*id)) {
            changes.extend(all.iter().filter(|id| !m.contains(**id)).map(|&id| ConfChange::AddLearner(id)));
        } else if voters.len() >= 4 {
            let remove = self.rng_ops.between(2, voters.len() as u64 - 2) as usize;
            changes.extend(voters[..remove].iter().map(|&id| ConfChange::RemoveNode(id)));
        }
        // A bad disk's node may be retired for good: the new voters without
        // it must still be a majority of themselves, or no quorum is left
        // and that is not a bug to find.
        let bad = (0..self.nodes.len())
            .find(|&i| self.nodes[i].engine.as_ref().is_some_and(|e| e.vfs.is_bad_disk()))
            .map(|i| i as NodeId + 1);
        let mut next: Vec<NodeId> = m.voters.iter().copied().collect();
        for c in &changes {
            match *c {
                ConfChange::RemoveNode(id) => next.retain(|&v| v != id),
                ConfChange::PromoteLearner(id) | ConfChange::AddVoter(id) => next.push(id),
                ConfChange::AddLearner(_) => {}
            }
        }
        let healthy = next.iter().filter(|&&v| Some(v) != bad).count();
        if healthy < next.len() / 2 + 1 {
            changes.clear();
        }
        changes
    }

    /// The configuration of a live, unpaused leader, if there is one.
    fn leader_membership(&self) -> Option<(usize, Membership)> {
        let now = self.now();
        let l = self
            .nodes
            .iter()
            .position(|n| n.raw().is_some_and(|r| r.role() == Role::Leader) && n.paused_until <= now)?;
        Some((l, self.nodes[l].raw()?.membership().clone()))
    }

    /// True if every committed entry, and every entry durable on node
    /// `victim` (which it may have acknowledged, an answer a leader may count
    /// after the wipe), is durable (or covered by a durable snapshot) on a
    /// majority without `victim`.
    fn committed_durable_without(&self, victim: usize) -> bool {
        let majority = self.majority();
        let held_elsewhere = |index: Index, term: Term| {
            let holders = self
                .nodes
                .iter()
                .enumerate()
                .filter(|&(j, n)| {
                    j != victim && (n.storage.covers(index) || n.storage.durable_term(index) == Some(term))
                })
                .count();
            holders >= majority
        };
        let committed =
            self.applied_log.iter().enumerate().all(|(i, &(term, _))| held_elsewhere(i as Index + 1, term));
        let v = &self.nodes[victim].storage;
        let acked = (v.first_index().max(v.snapshot().index + 1)..=v.durable_last_index())
            .all(|index| v.durable_term(index).is_none_or(|term| held_elsewhere(index, term)));
        committed && acked
    }

    /// A wiped disk: the node crashes and loses everything, then restarts
    /// empty with `rejoin_after_data_loss` (it must not vote until it has
    /// been removed); the simulated operator then removes it, re-adds it as a
    /// learner and promotes it (`Event::Operator`). Only one at a time, only
    /// when every node is a voter and every committed entry is durable on a
    /// majority without it, so its loss never loses a committed entry.
    fn wipe(&mut self) {
        if self.nodes.len() < 3 || self.wiped.is_some() {
            return;
        }
        // Half the wipes strike the next node that grants a vote, right after
        // it sent the grant: without the rejoin flag, the restarted node could
        // grant a second vote in the same term when a delayed request arrives.
        if self.rng_ops.chance(PPM / 2) {
            self.wipe_armed = true;
            return;
        }
        let victim = self.random_node();
        let downtime = self.rng_process.between(NANOS_PER_MILLI, 200 * NANOS_PER_MILLI);
        self.wipe_node(victim, downtime);
    }

    /// Wipes `victim`'s disk if the preconditions of [`World::wipe`] hold.
    fn wipe_node(&mut self, victim: usize, downtime: Nanos) {
        let nodes = self.nodes.len();
        if nodes < 3 || self.wiped.is_some() {
            return;
        }
        // The wiped node votes for nobody until it has been removed, and the
        // bad disk's node may be retired for good: the others must still be
        // a majority of every node, or nobody can remove it.
        let bad_disks =
            self.nodes.iter().filter(|n| n.engine.as_ref().is_some_and(|e| e.vfs.is_bad_disk())).count();
        if nodes - 1 - bad_disks < nodes / 2 + 1 {
            return;
        }
        // Every node must be up and know a configuration of all voters: no
        // change in progress in any log (a down node's log may hold a joint
        // configuration that needs the wiped voter, and then nobody could
        // ever be elected to remove it — 3 nodes, chaos seed 1002).
        let all_voters = self.nodes.iter().all(|n| {
            n.raw().is_some_and(|r| {
                let m = r.membership();
                !m.is_joint() && m.learners.is_empty() && m.voters.len() == nodes
            })
        });
        if !all_voters || self.nodes[victim].retired || !self.committed_durable_without(victim) {
            return;
        }
        // Nor in flight: an append still on the wire may carry a
        // configuration change into a log after the wipe, and then it needs
        // the wiped voter (3 nodes, chaos seed 200156699: the leader proposed
        // "remove n3", crashed, and was wiped; its delayed append then gave
        // n2 C({1,2},{1,2,3}), which no node could ever win without n1's
        // vote, and nobody could be elected to remove n1). Losing the disk
        // of a voter an in-flight configuration needs is beyond what a
        // protocol that never lets a wiped node vote can survive.
        let change_in_flight = self.queue.pending().any(|e| match e {
            Event::Deliver { message, .. } => match &message.body {
                MessageBody::AppendEntries { entries, .. } => {
                    entries.iter().any(|en| matches!(en.payload, EntryPayload::Membership(_)))
                }
                _ => false,
            },
            _ => false,
        });
        if change_in_flight {
            return;
        }
        if self.nodes[victim].exec.is_some() {
            self.crash(victim, downtime);
        } else if !self.nodes[victim].restart_scheduled {
            let at = self.now() + downtime;
            self.nodes[victim].restart_scheduled = true;
            self.queue.push(at, Event::Restart { node: victim as u8 });
        }
        let n = &mut self.nodes[victim];
        if let Some(engine) = n.engine.as_mut() {
            engine.storage = None;
            engine.vfs.wipe();
        }
        n.storage.wipe();
        n.snap = None;
        n.staged = None;
        n.acked_log = LogId::ZERO;
        n.granted_vote = None;
        n.rejoining = true;
        self.wiped = Some(victim);
        self.wipes += 1;
        self.record(victim as u64 + 1, TraceKind::Crash, 1, 0, 0);
        self.check_committed_on_majority("after a wiped disk");
        let at = self.now() + self.rng_ops.between(20 * NANOS_PER_MILLI, 100 * NANOS_PER_MILLI);
        self.queue.push(at, Event::Operator);
    }

    /// The operator's next step for the wiped node: remove it while it is
    /// still a voter and rejoining, add it back as a learner, promote it
    /// (refused while it lags; retried). Done once it is a voter again and
    /// no longer rejoining.
    fn operator(&mut self) {
        let Some(v) = self.wiped else { return };
        let id = v as NodeId + 1;
        let next = self.now() + self.rng_ops.between(20 * NANOS_PER_MILLI, 100 * NANOS_PER_MILLI);
        let Some((l, m)) = self.leader_membership() else {
            self.queue.push(next, Event::Operator);
            return;
        };
        let change = if m.is_joint() {
            None
        } else if m.voters.contains(&id) {
            if self.nodes[v].rejoining {
                Some(ConfChange::RemoveNode(id))
            } else {
                self.wiped = None;
                self.record(id, TraceKind::Membership, 5, id, 0);
                return;
            }
        } else if m.learners.contains(&id) {
            Some(ConfChange::PromoteLearner(id))
        } else {
            Some(ConfChange::AddLearner(id))
        };
        if let Some(change) = change {
            let (kind, _) = conf_change_code(&change);
            self.record(l as u64 + 1, TraceKind::Membership, kind, id, 1);
            self.step(l, change_membership(vec![change]));
        }
        self.queue.push(next, Event::Operator);
    }

    fn end_of_faults(&mut self) {
        let now = self.now();
        self.phase = Phase::Healing { deadline: now + self.config.liveness_bound_ns };
        self.net.heal();
        self.record(0, TraceKind::Heal, 1, 0, 0);
        for idx in 0..self.nodes.len() {
            if let Some(engine) = &self.nodes[idx].engine {
                engine.vfs.set_faults(DiskFaults::default());
            }
            self.nodes[idx].paused_until = self.nodes[idx].paused_until.min(now);
            if self.nodes[idx].exec.is_none() {
                self.restart(idx);
            }
        }
    }

    // ----- checkers --------------------------------------------------------------------

    /// Election safety at the source: a node grants at most one vote per term,
    /// across restarts.
    ///
    /// Across a wipe, per incarnation: a node restarted with
    /// `rejoin_after_data_loss` forgot the votes it granted, and it may
    /// grant again only after it saw its removal committed and was added
    /// back. It is then a new member: a candidate counting its forgotten
    /// vote uses a configuration that still lists the old member, and cannot
    /// win any more (a majority of the configuration without it committed
    /// that configuration, so it holds the entry the candidate lacks and was
    /// at a term that refused the candidate's older term when it acked).
    /// Two leaders in one term remain `election-safety`'s to catch. Without
    /// the flag the node never leaves an incarnation, and a second grant is
    /// still a violation here (sim/tests/seeds.rs holds that case). Seed
    /// 60125543 (7 nodes, chaos) granted term 3 before its wipe and again
    /// after it rejoined, with no second leader possible.
    fn check_vote(&mut self, idx: usize, term: Term, candidate: NodeId) {
        let voter = idx as NodeId + 1;
        self.nodes[idx].granted_vote = Some((term, candidate));
        let incarnation = self.incarnations[idx];
        let first = *self.votes.entry((voter, incarnation, term)).or_insert(candidate);
        if first != candidate {
            let detail =
                format!("n{voter} granted its vote in term {term} to n{first} and then to n{candidate}");
            self.fail(FailureKind::Safety, "one-vote-per-term", detail);
        }
    }

    /// After node `idx` sent a vote grant (the node is still mid-step): an
    /// armed wipe strikes it now, with a quick reboot.
    fn maybe_wipe_voter(&mut self, idx: usize) {
        if self.wipe_armed && self.phase == Phase::Faulty {
            self.wipe_armed = false;
            let downtime = self.rng_process.between(NANOS_PER_MILLI, 30 * NANOS_PER_MILLI);
            self.wipe_node(idx, downtime);
        }
    }

    /// Every committed entry is still durable on a majority.
    fn check_committed_on_majority(&mut self, when: &str) {
        let majority = self.majority();
        for (i, &(term, _)) in self.applied_log.iter().enumerate() {
            let index = i as Index + 1;
            let holders = self
                .nodes
                .iter()
                .filter(|n| n.storage.covers(index) || n.storage.durable_term(index) == Some(term))
                .count();
            if holders < majority {
                let detail = format!(
                    "{when}: committed entry {term}@{index} is durable on {holders} of {} nodes (need {majority})",
                    self.nodes.len()
                );
                self.fail(FailureKind::Safety, "committed-durable-on-majority", detail);
                return;
            }
        }
    }

    /// Log matching over the nodes' current logs (each from its first
    /// uncompacted index): if two logs hold an entry with the same index and
    /// term, they agree on everything before it that both still hold. (The
    /// prefixes covered by snapshots are checked when a snapshot is taken,
    /// installed or recovered: it must lie on the committed chain with the
    /// state every node had at its index.)
    fn check_log_matching(&mut self) {
        for a in 0..self.nodes.len() {
            for b in a + 1..self.nodes.len() {
                let (sa, sb) = (&self.nodes[a].storage, &self.nodes[b].storage);
                let lo = sa.first_index().max(sb.first_index());
                let hi = sa.last_index().min(sb.last_index());
                let pair = |i: Index| sa.entry(i).zip(sb.entry(i));
                let Some(top) = (lo..=hi).rev().find(|&i| pair(i).is_some_and(|(x, y)| x.term == y.term))
                else {
                    continue;
                };
                let differs =
                    |i: Index| pair(i).is_none_or(|(x, y)| x.term != y.term || x.payload != y.payload);
                if let Some(i) = (lo..top).find(|&i| differs(i)) {
                    let detail = format!(
                        "n{} and n{} agree at index {top} (term {:?}) but differ at index {i}",
                        a + 1,
                        b + 1,
                        sa.term_at(top),
                    );
                    self.fail(FailureKind::Safety, "log-matching", detail);
                    return;
                }
            }
        }
    }

    /// Lock mutual exclusion, from the clients' side: a client holds a lock
    /// from the moment it learns it acquired it until it asks to release it;
    /// two clients' holding intervals on one lock never overlap.
    ///
    /// With leases, a client may count on the lock only until its lease
    /// could have run out: the leader arms the lease when it applies the
    /// acquire (after the client invoked it) and expires it when its own
    /// clock has advanced by the lease; a clock running at most `d` ppm fast
    /// with forward jumps totalling `J` advances by the lease in no less
    /// than `(lease - J) / (1 + d)` of world time. So a client holds from
    /// its acquire's response until the earlier of its unlock's invocation
    /// and `invoke + (lease - J) / (1 + d)` (new leaders re-arm from their
    /// own clock, which only extends it).
    fn check_locks(&mut self) {
        let jumps_ns = self.nodes.iter().map(|n| n.clock.jumped_ns).max().unwrap_or(0);
        let fast_ppm = self.nodes.iter().map(|n| n.clock.drift_ppm).max().unwrap_or(0).max(0) as u128;
        let short = self.profile.short_lock_lease_ns.max(NANOS_PER_MILLI);
        let safe_ns = |lease: Nanos| -> Nanos {
            let usable = u128::from(lease.saturating_sub(jumps_ns));
            // Minus a microsecond for the clock's integer rounding.
            ((usable * u128::from(PPM) / (u128::from(PPM) + fast_ppm)) as Nanos)
                .saturating_sub(NANOS_PER_MICRO)
        };
        let mut held: Vec<(Key, Nanos, Nanos, u32)> = Vec::new();
        for (i, op) in self.history.iter().enumerate() {
            if op.kind != OpKind::TryLock || op.result != OpResult::Lock(true) {
                continue;
            }
            let lease = if op.key == 1 && self.profile.short_lock_lease_ns > 0 {
                short
            } else {
                workload::LOCK_LEASE_NS
            };
            let unlock = self.history[i + 1..]
                .iter()
                .find(|o| o.client == op.client && o.kind == OpKind::Unlock && o.key == op.key)
                .map_or(Nanos::MAX, |o| o.invoke_ns);
            let release = unlock.min(op.invoke_ns.saturating_add(safe_ns(lease)));
            if release > op.return_ns {
                held.push((op.key, op.return_ns, release, op.client));
            }
        }
        held.sort_unstable();
        for pair in held.windows(2) {
            let ((lock, from_a, to_a, a), (lock_b, from_b, _, b)) = (pair[0], pair[1]);
            if lock == lock_b && from_b < to_a {
                let detail = format!(
                    "lock l{lock}: client {a} held it from {:.6}s until {}, client {b} acquired it at {:.6}s",
                    from_a as f64 / 1e9,
                    if to_a == Nanos::MAX {
                        "the end".to_string()
                    } else {
                        format!("{:.6}s", to_a as f64 / 1e9)
                    },
                    from_b as f64 / 1e9
                );
                self.fail(FailureKind::Safety, "lock-mutual-exclusion", detail);
                return;
            }
        }
    }

    fn final_checks(&mut self) {
        self.check_locks();
        if self.failure.is_some() {
            return;
        }
        self.check_committed_on_majority("at the end");
        if self.failure.is_some() {
            return;
        }
        self.check_log_matching();
        if self.failure.is_some() {
            return;
        }
        let mut history = self.history.clone();
        history.extend_from_slice(&self.system_ops);
        match linearizability::check(&history, self.config.linearizability_steps_max) {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable { key, ops, linearized_max, stuck_at } => {
                // Show the operations around the one that could not be placed:
                // those overlapping the second before it, at most a screenful.
                const CONTEXT_NS: Nanos = NANOS_PER_SECOND;
                const CONTEXT_OPS_MAX: usize = 40;
                let from = stuck_at.invoke_ns.saturating_sub(CONTEXT_NS);
                let near: Vec<&Op> =
                    ops.iter().filter(|o| o.return_ns >= from && o.invoke_ns <= stuck_at.return_ns).collect();
                let shown = &near[near.len().saturating_sub(CONTEXT_OPS_MAX)..];
                let mut detail = format!(
                    "key k{key}: no linearization of its {} operations exists (the search placed at most \
                     {linearized_max}); it could never place:\n    {}\n  operations on k{key} overlapping the second \
                     before it ({} of {} shown; invoke..return, client, op -> result):",
                    ops.len(),
                    describe_op(&stuck_at),
                    shown.len(),
                    near.len(),
                );
                for op in shown {
                    let _ = write!(detail, "\n    {}", describe_op(op));
                }
                self.fail(FailureKind::Safety, "linearizability", detail);
            }
            Verdict::TooBig { key, ops, steps } => {
                let detail = format!("key k{key}: {ops} operations, search gave up after {steps} steps (undecided, not a pass)");
                self.fail(FailureKind::CheckerTooBig, "linearizability-too-big", detail);
            }
        }
        // Digest the outcome so two runs that differ only in results differ.
        let (invoked, commit) = self.report_fields();
        self.trace.mix(invoked);
        self.trace.mix(commit);
        self.trace.mix(self.ops_completed);
    }
}

/// A membership change nobody waits for (the operator and the fault
/// schedule only look at the configuration the leader reports).
fn change_membership(changes: Vec<ConfChange>) -> GroupInput<SimSm> {
    GroupInput::ChangeMembership { changes, reply: Box::new(|_| {}) }
}

/// `voters=[1, 2] outgoing=[3] learners=[4]` (empty parts left out).
fn describe_membership(m: &Membership) -> String {
    let mut out = format!("voters={:?}", m.voters.iter().collect::<Vec<_>>());
    if m.is_joint() {
        let _ = write!(out, " outgoing={:?}", m.voters_outgoing.iter().collect::<Vec<_>>());
    }
    if !m.learners.is_empty() {
        let _ = write!(out, " learners={:?}", m.learners.iter().collect::<Vec<_>>());
    }
    out
}

/// A membership change's trace code (see `TraceKind::Membership`) and node.
fn conf_change_code(change: &ConfChange) -> (u64, NodeId) {
    match *change {
        ConfChange::RemoveNode(n) => (1, n),
        ConfChange::AddLearner(n) => (2, n),
        ConfChange::PromoteLearner(n) => (3, n),
        ConfChange::AddVoter(n) => (4, n),
    }
}

/// Whether `error` is what a faulty disk causes (an I/O error, a group
/// poisoned by an earlier one, corruption on the bad disk), as opposed to the
/// engine refusing a request.
/// The client library's first and largest pause between retries
/// (`ClientConfig::retry_backoff`, `retry_backoff_max`).
const RETRY_BACKOFF_FIRST: Duration = Duration::from_millis(10);
const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(200);

/// The node a client tries next after `leader` (of `nodes`), from `target`.
fn route_target(target: usize, leader: LeaderMove, nodes: usize) -> usize {
    match leader {
        LeaderMove::Stay => target,
        LeaderMove::Next => (target + 1) % nodes,
        LeaderMove::To(node) => node,
    }
}

fn is_disk_fault(error: &StorageError, bad_disk: bool) -> bool {
    match error {
        StorageError::Io { .. } | StorageError::Poisoned { .. } | StorageError::Unwritable { .. } => true,
        StorageError::Corruption { .. } => bad_disk,
        _ => false,
    }
}

fn describe_op(op: &Op) -> String {
    let ret = if op.return_ns == Nanos::MAX {
        "never".to_string()
    } else {
        format!("{:.6}s", op.return_ns as f64 / 1e9)
    };
    format!("{:.6}s..{ret} c{} {:?} -> {:?}", op.invoke_ns as f64 / 1e9, op.client, op.kind, op.result)
}

/// Runs one seed, catching panics so that a crash of the code under test is
/// reported (with its seed and trace) like any other failure.
pub fn run(config: RunConfig) -> RunReport {
    let mut world = World::new(config);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| world.run()));
    match result {
        Ok(()) => {
            let failure = world.take_failure();
            world.report(failure)
        }
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "non-string panic payload".into());
            world.report(Some(Failure { kind: FailureKind::Panic, property: "no-panic", detail: message }))
        }
    }
}

/// The CLI name of a planted bug.
#[cfg(feature = "planted-bugs")]
pub fn planted_bug_name(bug: PlantedBug) -> &'static str {
    match bug {
        PlantedBug::VoteWithoutLogCheck => "vote-without-log-check",
        PlantedBug::CommitPreviousTermByCounting => "commit-previous-term-by-counting",
        PlantedBug::ForgetToPersistVote => "forget-to-persist-vote",
        PlantedBug::ReadWithoutLeadershipCheck => "read-without-leadership-check",
        PlantedBug::AckAppendBeforeDurable => "ack-append-before-durable",
        PlantedBug::KeepConflictingSuffix => "keep-conflicting-suffix",
        PlantedBug::JointCommitByIncomingOnly => "joint-commit-by-incoming-only",
        PlantedBug::LeaseIgnoresDrift => "lease-ignores-drift",
        PlantedBug::TtlDeadlineFromProposerClock => "ttl-deadline-from-proposer-clock",
        PlantedBug::ExecutorAnswersByPosition => "executor-answers-by-position",
        PlantedBug::SnapshotAtLastEntryDropsLog => "snapshot-at-last-entry-drops-log",
        PlantedBug::AsyncSyncWaitsForQuiet => "async-sync-waits-for-quiet",
        PlantedBug::AdmissionIgnoresEntryBound => "admission-ignores-entry-bound",
        PlantedBug::QuietFollowerNeverSuspectsItsLeader => "quiet-follower-never-suspects-its-leader",
        PlantedBug::WatchResumeSkipsAnIndex => "watch-resume-skips-an-index",
        PlantedBug::StoppedGroupLeavesSnapshotJobs => "stopped-group-leaves-snapshot-jobs",
        PlantedBug::SessionResponsesUnsorted => "session-responses-unsorted",
    }
}

/// Every planted bug, for sweeps and the CLI.
#[cfg(feature = "planted-bugs")]
pub const PLANTED_BUGS: [PlantedBug; 17] = [
    PlantedBug::VoteWithoutLogCheck,
    PlantedBug::CommitPreviousTermByCounting,
    PlantedBug::ForgetToPersistVote,
    PlantedBug::ReadWithoutLeadershipCheck,
    PlantedBug::AckAppendBeforeDurable,
    PlantedBug::KeepConflictingSuffix,
    PlantedBug::JointCommitByIncomingOnly,
    PlantedBug::LeaseIgnoresDrift,
    PlantedBug::TtlDeadlineFromProposerClock,
    PlantedBug::ExecutorAnswersByPosition,
    PlantedBug::SnapshotAtLastEntryDropsLog,
    PlantedBug::AsyncSyncWaitsForQuiet,
    PlantedBug::AdmissionIgnoresEntryBound,
    PlantedBug::QuietFollowerNeverSuspectsItsLeader,
    PlantedBug::WatchResumeSkipsAnIndex,
    PlantedBug::StoppedGroupLeavesSnapshotJobs,
    PlantedBug::SessionResponsesUnsorted,
];

#[cfg(feature = "planted-bugs")]
pub fn parse_planted_bug(name: &str) -> Result<PlantedBug, String> {
    PLANTED_BUGS.iter().copied().find(|b| planted_bug_name(*b) == name).ok_or_else(|| {
        let names: Vec<&str> = PLANTED_BUGS.iter().map(|b| planted_bug_name(*b)).collect();
        format!("unknown planted bug {name:?}; one of: {}", names.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tarn_kv::{Command, KvEntry, Request};

    /// Half the runs put every node's timers on the production driver's
    /// grid (10 ms, as `Node::start` keeps it for these timings), and those
    /// runs pass like the others.
    #[test]
    fn half_the_runs_tick_on_the_drivers_grid() {
        let mut on_grid = 0;
        for seed in 0..40 {
            let mut config = RunConfig::new(seed);
            config.sim_ns = 2 * NANOS_PER_SECOND;
            let mut world = World::new(config);
            world.run();
            assert!(world.take_failure().is_none(), "seed {seed} failed");
            match world.profile.timer_grid_ns {
                0 => assert_eq!(world.timer_grid_ns, 0),
                drawn => {
                    assert_eq!(drawn, 10 * NANOS_PER_MILLI);
                    assert_eq!(world.timer_grid_ns, drawn, "seed {seed}: 50 ms heartbeats keep a 10 ms grid");
                    on_grid += 1;
                }
            }
        }
        assert!((10..=30).contains(&on_grid), "{on_grid} of 40 runs on the grid");
    }

    #[test]
    fn lease_read_runs_jump_clocks_only_within_the_drift_bound() {
        const SIM_NS: Nanos = 3 * NANOS_PER_SECOND;
        let mut nodes_jumped = 0;
        for seed in 0..200 {
            let mut config = RunConfig::new(seed);
            config.sim_ns = SIM_NS;
            let mut world = World::new(config);
            if !world.profile.lease_read || world.profile.intervals.clock_jump_ns == 0 {
                continue;
            }
            world.run();
            assert!(world.take_failure().is_none(), "seed {seed} failed");
            for (i, n) in world.nodes.iter().enumerate() {
                let max = world.lease_safe_jump_max_ns(i);
                // 150 ms election timeout, 10,000 ppm bound, a clock at most
                // 10,000 ppm slow: at most 150 ms * 2 % / 2 = 1.5 ms.
                assert!(max <= 1_500 * NANOS_PER_MICRO, "seed {seed} n{}: {max} ns", i + 1);
                let jumps_max = SIM_NS / LEASE_JUMP_SPACING_NS + 1;
                assert!(
                    n.clock.jumped_ns <= max * jumps_max,
                    "seed {seed} n{}: jumped {}",
                    i + 1,
                    n.clock.jumped_ns
                );
                nodes_jumped += usize::from(n.clock.jumped_ns > 0);
            }
            if nodes_jumped >= 5 {
                return;
            }
        }
        panic!("only {nodes_jumped} nodes' clocks jumped in lease-read runs");
    }

    fn decode_snapshot_blob_default(blob: &[u8]) -> Result<KvStateMachine, String> {
        decode_snapshot_blob(blob, KvConfig::default())
    }

    #[test]
    fn snapshot_blobs_round_trip_and_refuse_damage() {
        let mut sm = KvStateMachine::new(KvConfig::default());
        for i in 1..=200u64 {
            let command =
                Command::Put { key: format!("k{}", i % 50), value: Bytes::from(vec![i as u8; 100]) };
            let request = Request { client_id: 1, seq: i, first_unacked_seq: i, command };
            let entry = KvEntry { leader_time_nanos: i, requests: vec![request] };
            sm.apply_entry(i, &entry);
        }
        let blob = encode_snapshot_blob(&sm);
        assert!(
            blob.len() > 2 * crate::exec::KV_SNAPSHOT_CHUNK_BYTES,
            "several kv chunks: {} bytes",
            blob.len()
        );
        let back = decode_snapshot_blob_default(&blob).expect("round trip");
        assert_eq!(back.digest(), sm.digest());
        assert_eq!(back.applied_index(), 200);
        assert!(decode_snapshot_blob_default(&blob[..blob.len() - 1]).is_err(), "truncated");
        assert!(
            decode_snapshot_blob_default(&blob[..13]).is_err(),
            "short header (a chunk header is 14 bytes)"
        );
        let mut flipped = blob.to_vec();
        flipped[blob.len() / 2] ^= 1;
        assert!(decode_snapshot_blob_default(&flipped).is_err(), "bit flip");
    }
}
