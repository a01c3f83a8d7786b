//! What goes into the core ([`Input`]) and what comes out ([`Action`]).

use bytes::Bytes;

use crate::confchange::{ConfChange, ConfChangeError};
use crate::message::Message;
use crate::types::{Entry, HardState, Index, LogId, Membership, Nanos, NodeId, SnapshotMeta, Term};

/// One proposal: opaque data plus the caller's id, used to route the outcome
/// back (see [`Action::Apply`] and [`Action::ProposalDropped`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    pub id: u64,
    pub data: Bytes,
}

/// Everything the core learns arrives as one of these, with `now`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Time passed; call at or after [`RawNode::next_deadline`](crate::RawNode::next_deadline).
    /// (Any input advances time; `Tick` only makes the core look at its timers.)
    Tick,
    /// A message from a peer.
    Message(Message),
    /// Propose one entry. Exactly one outcome per id: the entry shows up in
    /// [`Action::Apply`] with this id, or [`Action::ProposalDropped`] with a reason.
    Propose { id: u64, data: Bytes },
    /// Propose several entries at once (one log append and one message per
    /// follower for the whole batch); same outcome rules as `Propose`.
    ProposeBatch { proposals: Vec<Proposal> },
    /// A linearizable read barrier. Answered by exactly one `ReadReady` (the
    /// state machine may be read once it has applied `index`, which the core
    /// guarantees has already happened — see `Applied`) or `ReadFailed`. Ids
    /// must not be reused (etcd-io/raft #397); a duplicate of a pending id is
    /// refused with `DropReason::DuplicateReadId`.
    Read { id: u64 },
    /// The storage engine made the log durable up to `up_to` (and everything
    /// before it that was in the same or earlier `AppendLog` actions).
    /// Matched by (term, index): an acknowledgement for an entry that has been
    /// replaced since is ignored. May arrive late or out of order.
    LogPersisted { up_to: LogId },
    /// The storage engine made `(term, vote)` durable (from a `PersistHardState`
    /// action; the `commit` field needs no acknowledgement). Matched against
    /// the current term and vote; stale acknowledgements are ignored.
    HardStatePersisted { term: Term, vote: Option<NodeId> },
    /// The answer to `Action::FetchEntries`: contiguous entries starting at
    /// `from` (possibly fewer than asked; empty if they are gone).
    EntriesFetched { from: Index, entries: Vec<Entry> },
    /// The state machine has applied every entry up to `index`.
    Applied { index: Index },
    /// Ask the leader to hand leadership to `to` (ignored on a follower).
    TransferLeadership { to: NodeId },
    /// Change the membership (leader only). Exactly one outcome per `id`, like
    /// a proposal: `Apply` lists `id` at the entry that completes the change
    /// (C(new), after the joint step when voters change), or
    /// `ProposalDropped` says why not (`ConfChangeInProgress` while another
    /// change is not finished, `InvalidConfChange`, `NotLeader`, ...). An
    /// empty `changes` list in a joint configuration leaves it (needed only
    /// with `Config::auto_leave_joint` off).
    ChangeMembership { id: u64, changes: Vec<ConfChange> },
    /// The state machine wrote a snapshot covering everything up to
    /// `meta.last_log_id` (at or below what it applied), durably, and can
    /// serve its chunks (`Action::FetchSnapshotChunk`) until it reports a
    /// newer one. The core records it, may compact the log behind it
    /// (`Action::CompactLog`) and sends it to followers that need it. A
    /// snapshot not newer than the current one, or not matching the log, is
    /// ignored.
    SnapshotCreated { meta: SnapshotMeta },
    /// The answer to `Action::FetchSnapshotChunk`: `data` is the chunk at
    /// `offset` (at most `max_bytes`, non-empty unless the snapshot is empty),
    /// `done` if it ends the snapshot. `data: None` means the snapshot is no
    /// longer available (a newer one replaced it): the transfer restarts with
    /// the core's current snapshot. Answers that no longer match the transfer
    /// (another offset, snapshot or follower) are ignored.
    SnapshotChunkRead { to: NodeId, snapshot: LogId, offset: u64, data: Option<Bytes>, done: bool },
    /// The driver finished `Action::InstallSnapshot { meta }`: the snapshot is
    /// durable, the state machine holds it, the log was discarded. Ignored
    /// unless it matches the install the core asked for.
    SnapshotInstalled { meta: SnapshotMeta },
    /// Node-level liveness (shared by all groups of a node): the driver
    /// suspects `node` is down (its connection broke, or nothing arrived from
    /// it for the suspicion timeout). A quiescent follower whose leader is
    /// `node` resumes its election timer. Harmless when wrong: it only wakes.
    PeerDown { node: NodeId },
    /// `node` is reachable again. A quiescent leader wakes (the peer may have
    /// restarted and need its heartbeat).
    PeerUp { node: NodeId },
}

/// No timer: what [`RawNode::next_deadline`](crate::RawNode::next_deadline)
/// returns while a quiescent node needs no tick.
pub const NO_DEADLINE: Nanos = Nanos::MAX;

/// Everything the core wants done. Execute in order; the storage engine must
/// apply `AppendLog` and `PersistHardState` in the order they were emitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send `message` to peer `to`. Unreliable delivery is fine.
    Send { to: NodeId, message: Message },
    /// Append `entries` (contiguous, non-empty) to the log. If the first
    /// entry's index is at or below the last stored index, the stored suffix
    /// starting at that index is replaced: truncate it first, then append.
    /// Acknowledge with `Input::LogPersisted { up_to: last entry's LogId }`.
    AppendLog { entries: Vec<Entry> },
    /// Make the hard state durable. Acknowledge with
    /// `Input::HardStatePersisted { term, vote }`. The core sends no vote grant
    /// (and counts no own vote) until that acknowledgement arrives. Emitted
    /// when the term or vote changes; `commit` rides along as a hint only (it
    /// may lag: after a restart the node relearns the commit index from the
    /// leader, and nothing above the recovered commit is applied before that).
    PersistHardState(HardState),
    /// Apply committed `entries` to the state machine, in order; every
    /// committed index is emitted exactly once, at or below the node's durable
    /// log. `proposals` lists `(index, proposal id)` for those entries that
    /// this node proposed as leader, ascending: that id's outcome is the result
    /// of applying that index. Report progress with `Input::Applied`.
    Apply { entries: Vec<Entry>, proposals: Vec<(Index, u64)> },
    /// Read log entries `[from, to)` from storage (at most `max_bytes` of
    /// payload, at least one entry) and hand them back with
    /// `Input::EntriesFetched`. Used for entries older than the in-memory tail.
    FetchEntries { from: Index, to: Index, max_bytes: usize },
    /// Read `id` may be served: the state machine has applied `index`, which
    /// is at least the commit index at the time leadership was confirmed.
    ReadReady { id: u64, index: Index },
    /// Read `id` could not be confirmed; retry with a fresh id.
    ReadFailed { id: u64, reason: DropReason },
    /// Proposal `id` has no result from this node. With `LeadershipLost` the
    /// entry was appended and may still commit (retry idempotently); with any
    /// other reason it was never appended.
    ProposalDropped { id: u64, reason: DropReason },
    /// Role, term or known leader changed.
    RoleChanged { role: Role, term: Term, leader: Option<NodeId> },
    /// The compaction policy (`Config::snapshot_after_entries` /
    /// `snapshot_after_bytes`) says a snapshot is due: the state machine has
    /// applied `up_to`. Take one at any applied index (off the apply path if
    /// possible) and report it with `Input::SnapshotCreated`. Asked again only
    /// after as many further entries, so a driver may also ignore it.
    SnapshotWanted { up_to: Index },
    /// Entries up to and including `up_to` are covered by a durable snapshot
    /// and will not be asked for again: storage may delete them (keeping
    /// later ones; deleting fewer is fine). `Config::log_keep_tail_entries`
    /// entries before the snapshot are kept for slow followers.
    CompactLog { up_to: LogId },
    /// Leader: read the chunk at byte `offset` (at most `max_bytes`) of the
    /// snapshot whose last log id is `snapshot` (the one reported with
    /// `SnapshotCreated` or installed), and answer `Input::SnapshotChunkRead`
    /// with the same `to`, `snapshot` and `offset`. Chunk boundaries are the
    /// driver's choice; reads of one transfer come in ascending order, but a
    /// lost chunk is read again from an earlier offset.
    FetchSnapshotChunk { to: NodeId, snapshot: LogId, offset: u64, max_bytes: usize },
    /// Follower: stage `data` at byte `offset` of the incoming snapshot
    /// `snapshot`. Chunks arrive in order without gaps; `offset == 0` starts a
    /// new transfer: discard anything staged before. Nothing is applied until
    /// `InstallSnapshot`.
    ReceiveSnapshotChunk { snapshot: LogId, offset: u64, data: Bytes, done: bool },
    /// Follower: the staged snapshot is complete. Make it durable, replace
    /// the state machine with it and discard the whole log (it does not
    /// contain `meta.last_log_id`), after executing the actions before this
    /// one; then answer `Input::SnapshotInstalled { meta }`. Until then the
    /// core appends nothing. The installed snapshot becomes this node's
    /// current one: keep serving its chunks (`FetchSnapshotChunk`) until the
    /// node reports a newer one, in case it leads later.
    InstallSnapshot { meta: SnapshotMeta },
}

/// Why a proposal or read was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// This node is not the leader; `leader_hint` is the leader it knows of.
    NotLeader { leader_hint: Option<NodeId> },
    /// The node lost leadership after appending the entry (proposal) or
    /// before confirming the read. A proposal may still commit.
    LeadershipLost { leader_hint: Option<NodeId> },
    /// A leadership transfer is in progress; retry at the new leader.
    TransferInProgress,
    /// `max_uncommitted_bytes` reached; back off and retry.
    UncommittedLimit,
    /// `max_pending_reads` reached.
    TooManyPendingReads,
    /// A read with this id is already pending.
    DuplicateReadId,
    /// The leader did not answer a forwarded read within an election timeout.
    Timeout,
    /// A membership change is not finished yet (its entries are not
    /// committed, or the joint configuration is not left yet), or this leader
    /// has not committed an entry of its term; retry later.
    ConfChangeInProgress,
    /// The membership change is not valid against the configuration in force.
    InvalidConfChange(ConfChangeError),
    /// The proposal's data is larger than `Config::max_entry_bytes`: storage
    /// or a peer frame could not carry it. Split it; retrying cannot help.
    EntryTooLarge { size_bytes: usize, max_bytes: usize },
}

/// A node's role in its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// What the storage engine recovered, handed to [`RawNode::new`](crate::RawNode::new).
///
/// The log after the snapshot runs from `first_index()` to `last_log_id.index`.
/// The core keeps only a tail in memory and a compact index of terms, so the
/// driver hands over `term_starts` (the first `LogId` of every run of equal
/// terms in the log, ascending) and a `tail` (a contiguous suffix of the log,
/// possibly empty). [`Recovered::from_log`] builds one from a whole log.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Recovered {
    pub hard_state: HardState,
    pub snapshot: Option<SnapshotMeta>,
    /// The latest membership in the log, else the snapshot's, else the initial one.
    pub membership: Membership,
    pub last_log_id: LogId,
    pub term_starts: Vec<LogId>,
    pub tail: Vec<Entry>,
    /// The state machine has already applied up to here (e.g. its snapshot).
    pub applied: Index,
    /// The configuration the group was created with (before any membership
    /// entry), if known. With no snapshot, it is what an uncommitted
    /// configuration entry in the recovered log reverts to when a new leader
    /// truncates it; unknown (`None`), such an entry is taken as committed.
    pub initial_membership: Option<Membership>,
}

impl Recovered {
    /// A brand-new node of a brand-new cluster with `voters`.
    pub fn new_cluster(voters: impl IntoIterator<Item = NodeId>) -> Recovered {
        let membership = Membership::new_voters(voters);
        Recovered { initial_membership: Some(membership.clone()), membership, ..Default::default() }
    }

    /// Like [`Recovered::from_log`], from the group's initial configuration:
    /// the configuration in force is the newest membership entry of `log`,
    /// else `initial`.
    pub fn from_log_and_initial(hard_state: HardState, initial: Membership, log: Vec<Entry>) -> Recovered {
        let latest = log.iter().rev().find_map(|e| match &e.payload {
            crate::types::EntryPayload::Membership(m) => Some(m.clone()),
            _ => None,
        });
        let mut r = Recovered::from_log(hard_state, latest.unwrap_or_else(|| initial.clone()), log);
        r.initial_membership = Some(initial);
        r
    }

    /// Recovered state from a whole log (no snapshot) held in memory.
    pub fn from_log(hard_state: HardState, membership: Membership, log: Vec<Entry>) -> Recovered {
        let mut term_starts: Vec<LogId> = Vec::new();
        for e in &log {
            if term_starts.last().is_none_or(|l| l.term != e.term) {
                term_starts.push(e.log_id());
            }
        }
        Recovered {
            hard_state,
            snapshot: None,
            membership,
            last_log_id: log.last().map_or(LogId::ZERO, Entry::log_id),
            term_starts,
            tail: log,
            applied: 0,
            initial_membership: None,
        }
    }
}

/// A snapshot of the core's state, for tests, metrics and debugging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub role: Role,
    pub term: Term,
    pub vote: Option<NodeId>,
    pub leader: Option<NodeId>,
    pub commit: Index,
    pub applied: Index,
    pub last_log_id: LogId,
    /// The durable prefix of the local log.
    pub persisted: Index,
    pub membership: Membership,
    /// Per follower (leader only): `(id, match_index, next_index, replicating)`.
    pub progress: Vec<(NodeId, Index, Index, bool)>,
    /// Still rejoining after data loss (`Config::rejoin_after_data_loss`):
    /// grants no votes and never campaigns. Drivers persist the moment this
    /// turns false and stop passing the flag from then on.
    pub rejoining: bool,
    /// Quiescent (`Config::quiesce`): no timer runs until something wakes it.
    pub quiescent: bool,
}
