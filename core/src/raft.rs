//! The Raft state machine, `RawNode`: one `step` per input. Role-independent
//! handling (time, terms, persistence acknowledgements) happens once here,
//! then the input goes to the module that owns its concern, whose handler
//! takes the state of the role it needs from `RoleState`.
//!
//! This file holds the node's state (`RawNode`, `RoleState`, `LeaderState`,
//! `FollowerAck`), construction, `step` and message dispatch, the tick, the
//! after-step hooks, and the accessors. The concerns live beside it:
//! `role` (every role change), `election` (timers, votes, check-quorum),
//! `transfer` (leadership transfer), `replication` (the leader's side),
//! `append` (the follower's side), `read_index` (reads and leases),
//! `apply` (apply, fetch, eviction), `membership`, and `snapshot_stream`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::confchange::ConfState;
use crate::config::{Config, ConfigError};
use crate::io::{Action, Input, Proposal, Recovered, Role, Status};
use crate::log::RaftLog;
use crate::message::{Message, MessageBody};
use crate::progress::{Progress, ProgressState};
use crate::read::{PendingRead, Requester, Rounds};
use crate::snapshot::Outgoing;
use crate::types::{Entry, Index, LogId, Membership, Nanos, NodeId, Term};
use snapshot_stream::SnapState;

/// Is planted bug `$bug` switched on? Always false without the feature.
macro_rules! bug {
    ($self:ident, $bug:ident) => {{
        #[cfg(feature = "planted-bugs")]
        let on = $self.cfg.bug(crate::config::PlantedBug::$bug);
        #[cfg(not(feature = "planted-bugs"))]
        let on = false;
        on
    }};
}

// After `bug!`, which they use. Each owns one concern of the `RawNode`.
mod append;
mod apply;
mod election;
mod membership;
mod quiesce;
mod read_index;
mod replication;
mod role;
mod snapshot_stream;
mod transfer;

/// State only the leader has.
#[derive(Debug)]
struct LeaderState {
    progress: BTreeMap<NodeId, Progress>,
    /// Proposals appended in this leadership, ascending by index.
    proposals: VecDeque<(LogId, u64)>,
    uncommitted_bytes: usize,
    /// An entry of this term has committed: reads may be served.
    committed_own_term: bool,
    /// Reads that arrived before `committed_own_term`.
    reads_before_commit: Vec<Requester>,
    /// Reads waiting for their heartbeat round to be acknowledged by a quorum.
    reads_pending: VecDeque<PendingRead>,
    rounds: Rounds,
    /// Latest heartbeat round sent (ids grow across leaderships, never reused).
    /// Send time of the newest round a quorum acknowledged.
    lease_start: Option<Nanos>,
    /// `(transferee, deadline)` of a leadership transfer in progress.
    transfer: Option<(NodeId, Nanos)>,
    /// A TimeoutNow went out in this term: the lease is void from now on
    /// (the transferee's election bypasses the voters' stickiness).
    timeout_now_sent: bool,
    heartbeat_deadline: Nanos,
    check_quorum_deadline: Nanos,
    /// Snapshot transfers in progress, by follower (replication to it is
    /// paused meanwhile).
    transfers: BTreeMap<NodeId, Outgoing>,
    /// The id of a joint membership change, answered when C(new) applies.
    conf_change_id: Option<u64>,
}

/// The role this node plays, with the state only that role has: a role
/// cannot disagree with its state (`Role` is what the outside sees).
#[derive(Debug)]
enum RoleState {
    Follower,
    /// Pre-vote round: pre-votes received, our own included (it needs no
    /// durability: nothing changes).
    PreCandidate {
        votes: BTreeMap<NodeId, bool>,
    },
    /// Election: votes received, our own once it is durable.
    Candidate {
        votes: BTreeMap<NodeId, bool>,
    },
    Leader(Box<LeaderState>),
}

impl RoleState {
    fn role(&self) -> Role {
        match self {
            RoleState::Follower => Role::Follower,
            RoleState::PreCandidate { .. } => Role::PreCandidate,
            RoleState::Candidate { .. } => Role::Candidate,
            RoleState::Leader(_) => Role::Leader,
        }
    }

    fn is_leader(&self) -> bool {
        matches!(self, RoleState::Leader(_))
    }

    /// The leader's state, for code that runs in any role.
    fn leader(&self) -> Option<&LeaderState> {
        match self {
            RoleState::Leader(l) => Some(l),
            _ => None,
        }
    }

    /// The leader's state, for code that runs in any role.
    fn leader_mut(&mut self) -> Option<&mut LeaderState> {
        match self {
            RoleState::Leader(l) => Some(l),
            _ => None,
        }
    }
}

/// What a follower knows about acknowledging the current leader's appends.
#[derive(Debug, Default)]
struct FollowerAck {
    session: u64,
    /// Highest index known to match the current leader's log.
    matched: Index,
    /// Highest index acknowledged to the leader.
    acked: Index,
}

/// One node of one Raft group: a pure state machine driven by [`RawNode::step`].
///
/// See the crate docs for an example.
pub struct RawNode {
    cfg: Config,
    id: NodeId,
    rng: ChaCha8Rng,
    now: Nanos,
    started_at: Option<Nanos>,

    term: Term,
    vote: Option<NodeId>,
    /// The (term, vote) storage acknowledged last.
    durable_vote: (Term, Option<NodeId>),
    state: RoleState,
    leader_id: Option<NodeId>,
    membership: Membership,
    log: RaftLog,
    /// Highest index handed out in `Action::Apply`.
    applying: Index,
    /// Highest index the state machine reported applied.
    applied: Index,

    election_deadline: Nanos,
    /// Election timeouts are stretched by `2^election_backoff` after votes
    /// took too long (see `back_off_elections`); back to 0 on hearing from a
    /// leader or winning.
    election_backoff: u32,
    /// The newest term whose slow vote raised `election_backoff`.
    backoff_term: Term,
    last_leader_contact: Option<Nanos>,
    /// A vote grant waiting for its `HardStatePersisted`.
    pending_vote_reply: Option<NodeId>,
    follower_ack: FollowerAck,
    next_session: u64,
    next_ctx: u64,

    /// Entries fetched from storage (older than the tail), contiguous.
    fetched: VecDeque<Entry>,
    fetch_outstanding: bool,

    /// Ids of reads submitted here and not yet answered (duplicate check).
    local_reads: BTreeSet<u64>,
    /// Reads confirmed at `index`, waiting for the state machine to apply it.
    reads_waiting_apply: VecDeque<(Index, u64)>,
    /// Reads forwarded to the leader: id -> deadline; plus deadlines in order.
    forwarded: BTreeMap<u64, Nanos>,
    forwarded_order: VecDeque<(Nanos, u64)>,

    last_reported: (Role, Term, Option<NodeId>),

    /// The configuration in force and the uncommitted history (`membership`
    /// is a copy of `conf.current()`).
    conf: ConfState,
    snap: SnapState,
    /// Rejoining after data loss: no votes, no campaigns until a committed
    /// configuration without this node as a voter is seen
    /// (`Config::rejoin_after_data_loss`).
    rejoining: bool,
    /// Quiescent (`Config::quiesce`, see `quiesce.rs`): a leader that told
    /// its followers it went quiet, or a follower that heard so from its
    /// leader. No heartbeat, check-quorum or election timer runs.
    quiet: bool,
    /// Peers the driver's node-level liveness suspects are down
    /// (`Input::PeerDown` until `Input::PeerUp`).
    suspected: BTreeSet<NodeId>,
}

impl RawNode {
    /// Builds a node from its configuration and what storage recovered.
    /// Fails if the configuration is invalid or the recovered state is
    /// inconsistent (e.g. `tail` does not end at `last_log_id`).
    ///
    /// The node starts as a follower; its first election timer starts at the
    /// first `step` (until then `next_deadline` is 0).
    pub fn new(config: Config, recovered: Recovered) -> Result<RawNode, ConfigError> {
        config.validate()?;
        let bad = |reason: String| ConfigError { field: "recovered", reason };
        let snapshot = recovered.snapshot.as_ref().map_or(LogId::ZERO, |s| s.last_log_id);
        let base = match &recovered.snapshot {
            Some(s) => Some((s.last_log_id.index, s.membership.clone())),
            None => recovered.initial_membership.clone().map(|m| (0, m)),
        };
        let conf = ConfState::recover(
            recovered.membership.clone(),
            base,
            &recovered.tail,
            recovered.hard_state.commit,
        );
        let snap = SnapState::new(recovered.snapshot.clone());
        let log = RaftLog::new(
            snapshot,
            recovered.term_starts,
            recovered.last_log_id,
            recovered.tail,
            recovered.hard_state.commit,
        )
        .map_err(bad)?;
        let hs = recovered.hard_state;
        // A log entry of a later term than the hard state means the term was
        // not persisted but the entry was; no vote was granted in that term
        // (grants wait for durability), so no vote.
        let (term, vote) =
            if log.last().term > hs.term { (log.last().term, None) } else { (hs.term, hs.vote) };
        let applied = recovered.applied.max(snapshot.index);
        let m = &recovered.membership;
        if config.rejoin_after_data_loss && m.voters.len() == 1 && m.is_voter(config.id) && !m.is_joint() {
            return Err(ConfigError {
                field: "rejoin_after_data_loss",
                reason: format!(
                    "node {} is the only voter of its group: no other node can remove it, so it could never \
                     rejoin; restore the group from a backup or bootstrap a new one",
                    config.id
                ),
            });
        }
        if applied > log.last().index {
            return Err(bad(format!("applied {applied} is beyond the last log index {}", log.last())));
        }
        let seed = config.seed ^ config.id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let id = config.id;
        let mut node = RawNode {
            id,
            rng: ChaCha8Rng::seed_from_u64(seed),
            now: 0,
            started_at: None,
            term,
            vote,
            durable_vote: (hs.term, hs.vote),
            state: RoleState::Follower,
            leader_id: None,
            membership: recovered.membership,
            applying: applied,
            applied,
            log,
            election_deadline: 0,
            election_backoff: 0,
            backoff_term: 0,
            last_leader_contact: None,
            pending_vote_reply: None,
            follower_ack: FollowerAck::default(),
            next_session: 1,
            next_ctx: 1,
            fetched: VecDeque::new(),
            fetch_outstanding: false,
            local_reads: BTreeSet::new(),
            reads_waiting_apply: VecDeque::new(),
            forwarded: BTreeMap::new(),
            forwarded_order: VecDeque::new(),
            last_reported: (Role::Follower, term, None),
            rejoining: config.rejoin_after_data_loss,
            quiet: false,
            suspected: BTreeSet::new(),
            cfg: config,
            conf,
            snap,
        };
        node.log.commit_to(node.applying.min(node.log.last().index));
        Ok(node)
    }

    /// The only way in: apply one input observed at local monotonic time `now`
    /// and push the resulting actions. `now` must not decrease across calls
    /// (a smaller value is treated as the previous one).
    pub fn step(&mut self, now: Nanos, input: Input, actions: &mut Vec<Action>) {
        self.now = self.now.max(now);
        if self.started_at.is_none() {
            self.started_at = Some(self.now);
            self.reset_election_timer();
        }
        if self.quiet && self.state.is_leader() && Self::wakes_leader(&input) {
            self.wake_leader();
        }
        if self.quiet
            && !self.state.is_leader()
            && Self::wakes_follower(&input)
            && !bug!(self, QuietFollowerNeverSuspectsItsLeader)
        {
            // Clients knock: resume the election timer from the last real
            // contact. Node-level liveness cannot see a leader whose group
            // stopped on a live node; a quiet group must not wait on it forever.
            self.wake_follower(false);
        }
        match input {
            Input::Tick => self.tick(actions),
            Input::PeerDown { node } => self.on_peer_down(node),
            Input::PeerUp { node } => self.on_peer_up(node, actions),
            Input::Message(m) => self.on_message(m, actions),
            Input::Propose { id, data } => self.propose(vec![Proposal { id, data }], actions),
            Input::ProposeBatch { proposals } => self.propose(proposals, actions),
            Input::Read { id } => self.read(id, actions),
            Input::LogPersisted { up_to } => self.on_log_persisted(up_to, actions),
            Input::HardStatePersisted { term, vote } => self.on_hard_state_persisted(term, vote, actions),
            Input::EntriesFetched { from, entries } => self.on_entries_fetched(from, entries, actions),
            Input::Applied { index } => {
                self.applied = self.applied.max(index.min(self.applying));
            }
            Input::TransferLeadership { to } => self.transfer_leadership(to, actions),
            Input::ChangeMembership { id, changes } => self.change_membership(id, changes, actions),
            Input::SnapshotCreated { meta } => self.on_snapshot_created(meta, actions),
            Input::SnapshotChunkRead { to, snapshot, offset, data, done } => {
                self.on_snapshot_chunk_read(to, snapshot, offset, data, done, actions)
            }
            Input::SnapshotInstalled { meta } => self.on_snapshot_installed(meta, actions),
        }
        self.after_step(actions);
    }

    /// The local time at which the core next needs an `Input::Tick` (0 before
    /// the first step; [`NO_DEADLINE`](crate::NO_DEADLINE) while quiescent
    /// with nothing to time out).
    pub fn next_deadline(&self) -> Nanos {
        if self.started_at.is_none() {
            return 0;
        }
        if self.quiet {
            return self.forwarded_order.front().map_or(crate::io::NO_DEADLINE, |&(t, _)| t);
        }
        let mut d = match &self.state {
            RoleState::Leader(l) => {
                let mut d = l.heartbeat_deadline;
                if self.cfg.check_quorum {
                    d = d.min(l.check_quorum_deadline);
                }
                if let Some((_, t)) = l.transfer {
                    d = d.min(t);
                }
                d
            }
            _ => self.election_deadline,
        };
        if let Some(&(t, _)) = self.forwarded_order.front() {
            d = d.min(t);
        }
        d
    }

    pub fn id(&self) -> NodeId {
        self.id
    }
    /// Quiescent (`Config::quiesce`): no timer runs until an input wakes it.
    pub fn is_quiescent(&self) -> bool {
        self.quiet
    }
    pub fn role(&self) -> Role {
        self.state.role()
    }
    pub fn term(&self) -> Term {
        self.term
    }
    pub fn leader(&self) -> Option<NodeId> {
        self.leader_id
    }
    pub fn commit_index(&self) -> Index {
        self.log.committed()
    }
    pub fn last_log_id(&self) -> LogId {
        self.log.last()
    }
    /// The bug planted in this node's configuration, for the layers above
    /// the core that plant their own (the driver's executor, the kv).
    #[cfg(feature = "planted-bugs")]
    pub fn planted_bug(&self) -> Option<crate::PlantedBug> {
        self.cfg.planted_bug
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }
    pub fn status(&self) -> Status {
        Status {
            id: self.id,
            role: self.state.role(),
            term: self.term,
            vote: self.vote,
            leader: self.leader_id,
            commit: self.log.committed(),
            applied: self.applied,
            last_log_id: self.log.last(),
            persisted: self.log.persisted(),
            membership: self.membership.clone(),
            rejoining: self.rejoining,
            quiescent: self.quiet,
            progress: self.state.leader().map_or(Vec::new(), |l| {
                l.progress
                    .iter()
                    .map(|(&id, p)| (id, p.match_index, p.next_index, p.state == ProgressState::Replicate))
                    .collect()
            }),
        }
    }

    /// The leader heartbeats and checks its quorum; anyone else campaigns
    /// when its election timer runs out.
    fn tick(&mut self, actions: &mut Vec<Action>) {
        self.expire_forwarded_reads(actions);
        let now = self.now;
        match &mut self.state {
            RoleState::Leader(_) if self.quiet => {}
            RoleState::Leader(l) => {
                l.expire_transfer(now);
                if self.cfg.check_quorum && now >= l.check_quorum_deadline {
                    l.check_quorum_deadline = now + self.cfg.election_timeout_min_ns;
                    if !l.quorum_active(&self.membership, self.id) {
                        // Lost contact with a quorum: someone else may lead by now.
                        let term = self.term;
                        self.become_follower(term, None, actions);
                        return;
                    }
                }
                if now >= l.heartbeat_deadline {
                    l.heartbeat_deadline = now + self.cfg.heartbeat_interval_ns;
                    if self.leader_may_quiesce() {
                        self.quiesce_leader(actions);
                    } else {
                        self.broadcast_heartbeat(actions);
                    }
                }
            }
            RoleState::Follower if self.quiet => {}
            RoleState::Follower | RoleState::PreCandidate { .. } | RoleState::Candidate { .. } => {
                if now >= self.election_deadline {
                    if matches!(self.state, RoleState::Candidate { .. }) && !self.vote_durable() {
                        // Our own disk took longer than the timeout to
                        // persist our vote: the same slowness as a late grant.
                        self.back_off_elections(self.term);
                    }
                    self.reset_election_timer();
                    if self.may_campaign() {
                        self.campaign(false, actions);
                    }
                }
            }
        }
    }

    fn send(&self, to: NodeId, body: MessageBody, actions: &mut Vec<Action>) {
        let message = Message { from: self.id, term: self.term, rejoining: self.rejoining, body };
        actions.push(Action::Send { to, message });
    }

    fn on_message(&mut self, m: Message, actions: &mut Vec<Action>) {
        if m.from == self.id || m.from == 0 {
            return;
        }
        if m.term > self.term {
            match &m.body {
                MessageBody::PreVoteRequest { .. } | MessageBody::VoteRequest { .. } => {
                    let transfer = matches!(m.body, MessageBody::VoteRequest { transfer: true, .. });
                    if self.quiet
                        && Some(m.from) == self.leader_id
                        && !bug!(self, QuietFollowerNeverSuspectsItsLeader)
                    {
                        // Our own leader campaigns: it restarted (faster than
                        // node-level liveness noticed) and leads no more.
                        self.wake_follower(false);
                    }
                    if !transfer && self.in_lease() {
                        // Stickiness: a leader we heard from recently is alive.
                        return;
                    }
                }
                _ => {}
            }
            match &m.body {
                MessageBody::PreVoteRequest { .. } => {}
                // A granted pre-vote echoes the term we would campaign in.
                MessageBody::PreVoteResponse { granted: true } => {}
                MessageBody::AppendEntries { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::Quiesce { .. }
                | MessageBody::TimeoutNow
                | MessageBody::InstallSnapshot { .. } => {
                    self.become_follower(m.term, Some(m.from), actions);
                }
                _ => self.become_follower(m.term, None, actions),
            }
        } else if m.term < self.term {
            match m.body {
                MessageBody::AppendEntries { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::Quiesce { .. }
                | MessageBody::InstallSnapshot { .. } => {
                    // Tell a stale leader about the newer term so it steps down.
                    let last_index = self.log.last().index;
                    self.send(m.from, MessageBody::HeartbeatResponse { ctx: 0, last_index }, actions);
                }
                MessageBody::PreVoteRequest { .. } => {
                    self.send(m.from, MessageBody::PreVoteResponse { granted: false }, actions);
                }
                MessageBody::ReadIndexRequest { id } => {
                    self.send(m.from, MessageBody::ReadIndexResponse { id, result: Err(()) }, actions);
                }
                MessageBody::VoteResponse { granted: true } => self.back_off_elections(m.term),
                _ => {}
            }
            return;
        }
        let from = m.from;
        if self.quiet && !self.state.is_leader() && Some(from) == self.leader_id {
            // Our leader speaks: it is awake, so we are (a `Quiesce` keeps us quiet).
            if !matches!(m.body, MessageBody::Quiesce { .. }) {
                self.wake_follower(true);
            }
        }
        self.note_rejoining(from, m.rejoining);
        match m.body {
            // Any role answers a (pre-)vote request.
            MessageBody::PreVoteRequest { last_log_id } => {
                self.on_pre_vote_request(from, m.term, last_log_id, actions)
            }
            MessageBody::VoteRequest { last_log_id, .. } => self.on_vote_request(from, last_log_id, actions),
            // For a (pre-)candidate.
            MessageBody::PreVoteResponse { granted } => {
                self.on_pre_vote_response(from, m.term, granted, actions)
            }
            MessageBody::VoteResponse { granted } => self.on_vote_response(from, granted, actions),
            // From the leader of this term: whatever this node was, it follows now.
            MessageBody::AppendEntries { session, prev_log_id, entries, commit } => {
                self.on_append(from, session, prev_log_id, entries, commit, actions)
            }
            MessageBody::Heartbeat { commit, ctx } => self.on_heartbeat(from, commit, ctx, actions),
            MessageBody::Quiesce { commit } => self.on_quiesce(from, commit, actions),
            MessageBody::TimeoutNow => self.on_timeout_now(from, actions),
            MessageBody::InstallSnapshot { session, meta, offset, data, done } => {
                self.on_install_snapshot(from, session, meta, offset, data, done, actions)
            }
            // For a leader (a node that is no longer one ignores them).
            MessageBody::AppendResponse { session, result } => {
                self.on_append_response(from, session, result, actions)
            }
            MessageBody::HeartbeatResponse { ctx, last_index } => {
                self.on_heartbeat_response(from, ctx, last_index, actions)
            }
            MessageBody::SnapshotResponse { session, snapshot, next_offset } => {
                self.on_snapshot_response(from, session, snapshot, next_offset, actions)
            }
            // Reads forwarded to a leader, and its answers.
            MessageBody::ReadIndexRequest { id } => self.on_read_index_request(from, id, actions),
            MessageBody::ReadIndexResponse { id, result } => self.on_read_index_response(id, result, actions),
        }
    }

    /// After every input: membership, apply, snapshots, reads whose index
    /// applied, eviction, and a `RoleChanged` if role, term or leader moved.
    fn after_step(&mut self, actions: &mut Vec<Action>) {
        self.after_step_membership(actions);
        self.maybe_apply(actions);
        self.maybe_step_down_removed(actions);
        self.maybe_want_snapshot(actions);
        while let Some(&(index, id)) = self.reads_waiting_apply.front() {
            if index > self.applied {
                break;
            }
            self.reads_waiting_apply.pop_front();
            self.local_reads.remove(&id);
            actions.push(Action::ReadReady { id, index });
        }
        self.maybe_evict();
        let now = (self.state.role(), self.term, self.leader_id);
        if now != self.last_reported {
            self.last_reported = now;
            actions.push(Action::RoleChanged { role: now.0, term: now.1, leader: now.2 });
        }
        debug_assert!(self.log.committed() <= self.log.last().index);
        debug_assert!(self.applied <= self.applying && self.applying <= self.log.committed());
        debug_assert!(!self.state.is_leader() || self.leader_id == Some(self.id));
        self.check_quiet_invariants();
    }
}
