//! The simulator's side of the production group executor
//! (`tarn_io::driver::GroupExecutor`): the state machine and the I/O it is
//! given, so that the code users run (action execution, proposal, read and
//! membership bookkeeping, apply, snapshot orchestration, TTL expiry
//! proposals) is the code the simulator runs. Only the I/O is swapped.
//!
//! Neither part may touch the world: the executor owns them for the length
//! of a turn. Both write what happened, in order, into one [`Mailbox`]
//! shared with the closures that answer proposals and reads; after the turn
//! the world reads it back in that order and plays each event against the
//! network, the disks and the checkers (see `World::drain`). Anything that
//! answers (a fetch, a snapshot chunk, a snapshot job) goes into the next
//! turn, at the same virtual instant.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tarn_core::{EntryPayload, Index, LogId, Membership, Message, Nanos, NodeId, Role, SnapshotMeta, Term};
use tarn_io::driver::{
    GroupIo, Observed, SnapshotInstaller, SnapshotProducer, SnapshotRestore, StateMachine, StorageOp,
};
use tarn_kv::{KvStateMachine, SnapshotStreamDecoder};
use tarn_service::protocol::ServerFrame;
use tarn_service::watch::WatchSinks;
use tarn_service::KvHost;

use crate::trace::hash_bytes;

/// Expiry requests a leader proposes per turn (as the server's machine).
pub(crate) const EXPIRE_PER_TURN_MAX: usize = 1024;
/// Payload bytes per kv snapshot chunk. Small, so the chunk framing, the
/// transfer and restores across chunk boundaries are exercised.
pub(crate) const KV_SNAPSHOT_CHUNK_BYTES: usize = 2 * 1024;

/// What a turn did, in the order it happened.
pub(crate) enum SimEvent {
    /// The core sent `message` to `to`.
    Send { to: NodeId, message: Message },
    /// A storage request (log writes of the whole turn come as one `Write`).
    Storage(StorageOp),
    /// Take this node's snapshot at `meta` by running `producer`.
    CreateSnapshot { meta: SnapshotMeta, producer: SnapshotProducer },
    /// Install the staged leader's snapshot `meta`.
    InstallSnapshot { meta: SnapshotMeta },
    /// The core released the reads waiting on barrier `id` at `index`.
    ReadReady { index: Index },
    /// The core handed these entries over for applying (ids, payload
    /// hashes, configurations), before the state machine saw them.
    Apply { entries: Vec<(LogId, u64, Option<Membership>)> },
    /// The node's role changed.
    RoleChanged { role: Role, term: Term, leader: Option<NodeId> },
    /// The state machine applied `index` (`data: None`: a blank or
    /// configuration entry); `digest` when a snapshot of that index exists.
    Applied {
        index: Index,
        data: Option<Bytes>,
        responses: Result<Vec<tarn_kv::Response>, String>,
        digest: Option<u64>,
    },
    /// The state machine was asked for a snapshot: its digest now.
    SnapshotDigest { digest: u64 },
    /// The leader proposes the expiry of `count` armings as `data`.
    Expiry { data_hash: u64, count: u64 },
    /// The request path answered `client` (see `crate::client_path`).
    Frame { client: u32, frame: ServerFrame },
    /// A client's read (request `attempt`) ran on the state machine at
    /// `applied`; `floor` was the highest commit index when it arrived.
    ReadServed { attempt: u64, applied: Index, floor: Index },
    /// An answer no request path may give (a bug): fail the run.
    BadAnswer { property: &'static str, detail: String },
}

/// The state machine's answer to one entry.
pub(crate) type KvResult = Result<Vec<tarn_kv::Response>, String>;

/// The ordered record of a node's turns. A mutex only because the answer
/// closures must be `Send`; the simulator is single-threaded per run.
#[derive(Clone, Default)]
pub(crate) struct Mailbox(Arc<Mutex<Vec<SimEvent>>>);

impl Mailbox {
    pub fn push(&self, event: SimEvent) {
        self.lock().push(event);
    }

    pub fn take(&self) -> Vec<SimEvent> {
        std::mem::take(&mut *self.lock())
    }

    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> MutexGuard<'_, Vec<SimEvent>> {
        // A panic while holding it fails the run anyway.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The digests of the snapshots taken so far, by index (shared by all nodes:
/// a node applying up to such an index must reach the same state).
pub(crate) type SnapshotDigests = Arc<Mutex<BTreeMap<Index, u64>>>;

/// The real kv state machine, as the executor drives it, with the
/// simulator's eyes on every application.
pub(crate) struct SimSm {
    pub kv: KvStateMachine,
    /// The sinks of watches clients started through the request path (the
    /// world's own whole-tree watches have none: it polls them itself).
    sinks: WatchSinks,
    mailbox: Mailbox,
    digests: SnapshotDigests,
}

impl SimSm {
    pub fn new(kv: KvStateMachine, mailbox: Mailbox, digests: SnapshotDigests) -> Self {
        SimSm { kv, sinks: WatchSinks::default(), mailbox, digests }
    }

    fn digest_if_snapshotted(&self, index: Index) -> Option<u64> {
        let known = self.digests.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&index);
        known.then(|| self.kv.digest())
    }
}

impl StateMachine for SimSm {
    type Response = KvResult;

    fn apply(&mut self, index: Index, data: &Bytes) -> KvResult {
        let responses = self.kv.apply_entry_bytes(index, data).map_err(|e| e.to_string());
        let digest = self.digest_if_snapshotted(index);
        let event =
            SimEvent::Applied { index, data: Some(data.clone()), responses: responses.clone(), digest };
        self.mailbox.push(event);
        responses
    }

    fn apply_noop(&mut self, index: Index) {
        self.kv.advance_to(index);
        let digest = self.digest_if_snapshotted(index);
        self.mailbox.push(SimEvent::Applied { index, data: None, responses: Ok(Vec::new()), digest });
    }

    fn applied_index(&self) -> Index {
        self.kv.applied_index()
    }

    fn after_apply(&mut self) {
        self.sinks.deliver_ready(&mut self.kv);
    }

    fn on_leadership(&mut self, is_leader: bool, wall_clock_nanos: Nanos) {
        if is_leader {
            // Like the server: deadlines restart from this leader's clock
            // (they never shrink).
            self.kv.rearm_ttls(wall_clock_nanos);
        }
    }

    fn wants_leader_ticks(&self) -> bool {
        self.kv.ttl_armed() > 0
    }

    fn leader_proposals(&mut self, wall_clock_nanos: Nanos) -> Vec<Bytes> {
        let Some((data, count)) = self.kv.expiry_entry(wall_clock_nanos, EXPIRE_PER_TURN_MAX) else {
            return Vec::new();
        };
        let data = Bytes::from(data);
        self.mailbox.push(SimEvent::Expiry { data_hash: hash_bytes(&data) | 1, count: count as u64 });
        vec![data]
    }

    fn snapshot(&mut self) -> Option<SnapshotProducer> {
        self.mailbox.push(SimEvent::SnapshotDigest { digest: self.kv.digest() });
        let fork = self.kv.fork();
        Some(Box::new(move |sink| fork.write_snapshot(KV_SNAPSHOT_CHUNK_BYTES, sink)))
    }

    fn snapshot_restore(&mut self) -> Option<Box<dyn SnapshotRestore<Self>>> {
        Some(Box::new(StreamRestore(SnapshotStreamDecoder::new(self.kv.config().clone()))))
    }
}

impl KvHost for SimSm {
    fn kv(&self) -> &KvStateMachine {
        &self.kv
    }

    fn kv_and_sinks(&mut self) -> (&mut KvStateMachine, &mut WatchSinks) {
        (&mut self.kv, &mut self.sinks)
    }
}

/// kv's stream decoder as the executor's restore. (The world decodes the
/// staged blob with the same decoder itself, to check it before it
/// installs; this is what the executor is given for the same purpose.)
struct StreamRestore(SnapshotStreamDecoder);

impl SnapshotRestore<SimSm> for StreamRestore {
    fn push(&mut self, data: &[u8]) -> Result<(), String> {
        self.0.push(data)
    }

    fn finish(self: Box<Self>) -> Result<SnapshotInstaller<SimSm>, String> {
        Ok(installer(self.0.finish()?))
    }
}

/// What replaces a node's state with a decoded snapshot.
pub(crate) fn installer(decoded: KvStateMachine) -> SnapshotInstaller<SimSm> {
    Box::new(move |sm: &mut SimSm| {
        sm.kv.install(decoded);
        // Client watches are cut off with a resumable reason, as on a server.
        sm.sinks.deliver_ready(&mut sm.kv);
    })
}

/// The executor's I/O in the simulator: everything goes to the mailbox.
pub(crate) struct SimIo {
    /// The node's local clock reading for the current turn.
    pub now: Nanos,
    mailbox: Mailbox,
}

impl SimIo {
    pub fn new(mailbox: Mailbox) -> Self {
        SimIo { now: 0, mailbox }
    }
}

impl GroupIo<SimSm> for SimIo {
    fn observe(&mut self, event: Observed<'_>) {
        match event {
            Observed::ReadReleased { index } => self.mailbox.push(SimEvent::ReadReady { index }),
            Observed::Applying(entries) => {
                let entries = entries
                    .iter()
                    .map(|e| {
                        let m = match &e.payload {
                            EntryPayload::Membership(m) => Some(m.clone()),
                            _ => None,
                        };
                        (e.log_id(), payload_hash(&e.payload), m)
                    })
                    .collect();
                self.mailbox.push(SimEvent::Apply { entries });
            }
            Observed::RoleChanged { role, term, leader } => {
                self.mailbox.push(SimEvent::RoleChanged { role, term, leader })
            }
        }
    }

    fn send(&mut self, to: NodeId, message: Message) {
        self.mailbox.push(SimEvent::Send { to, message });
    }

    fn storage(&mut self, op: StorageOp) -> bool {
        self.mailbox.push(SimEvent::Storage(op));
        true
    }

    fn create_snapshot(&mut self, meta: SnapshotMeta, producer: SnapshotProducer) {
        self.mailbox.push(SimEvent::CreateSnapshot { meta, producer });
    }

    fn install_snapshot(&mut self, meta: SnapshotMeta, _restore: Box<dyn SnapshotRestore<SimSm>>) {
        self.mailbox.push(SimEvent::InstallSnapshot { meta });
    }

    fn now(&self) -> Nanos {
        self.now
    }

    fn wall_clock(&self) -> Nanos {
        // The kv derives replicated time from the proposing leader's clock;
        // each simulated node has one clock (offset, drift, jumps).
        self.now
    }
}

/// A stable hash of an entry's payload (log matching and state machine
/// safety compare these across nodes).
pub(crate) fn payload_hash(payload: &EntryPayload) -> u64 {
    match payload {
        EntryPayload::Blank => 0,
        EntryPayload::Normal(data) => hash_bytes(data) | 1,
        EntryPayload::Membership(m) => {
            let mut s = String::new();
            let _ = write!(s, "{m:?}");
            hash_bytes(s.as_bytes()) | 2
        }
    }
}
