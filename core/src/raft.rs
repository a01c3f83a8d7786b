//! The Raft state machine: one `step` per input; role-independent handling
//! (time, terms, persistence acknowledgements) happens once, then the input is
//! dispatched to the step for the current role.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[cfg(feature = "planted-bugs")]
use crate::config::PlantedBug;
use crate::config::{Config, ConfigError};
use crate::io::{Action, DropReason, Input, Proposal, Recovered, Role, Status};
use crate::log::RaftLog;
use crate::message::{Message, MessageBody, RejectHint};
use crate::progress::{Progress, ProgressState};
use crate::quorum::{joint_committed, joint_vote, VoteResult};
use crate::read::{PendingRead, Requester, Rounds};
use crate::types::{Entry, EntryPayload, HardState, Index, LogId, Membership, Nanos, NodeId, Term};

mod membership;
mod snapshot_stream;

use crate::confchange::ConfState;
use crate::snapshot::Outgoing;
use snapshot_stream::{finish_transfer, SnapState};

/// Is planted bug `$bug` switched on? Always false without the feature.
macro_rules! bug {
    ($self:ident, $bug:ident) => {{
        #[cfg(feature = "planted-bugs")]
        let on = $self.cfg.bug(PlantedBug::$bug);
        #[cfg(not(feature = "planted-bugs"))]
        let on = false;
        on
    }};
}

/// Entries from `from` on out of the fetched run `fetched`, capped like one
/// append message; `None` if `fetched` does not hold `from`.
fn fetched_slice(fetched: &VecDeque<Entry>, cfg: &Config, from: Index) -> Option<Vec<Entry>> {
    let first = fetched.front()?.index;
    if from < first || from > fetched.back()?.index {
        return None;
    }
    let start = (from - first) as usize;
    let mut bytes = 0;
    let mut out = Vec::new();
    for e in fetched.range(start..).take(cfg.max_entries_per_msg) {
        if !out.is_empty() && bytes + e.size_bytes() > cfg.max_size_per_msg_bytes {
            break;
        }
        bytes += e.size_bytes();
        out.push(e.clone());
    }
    Some(out)
}

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

impl LeaderState {
    /// Ends a leadership transfer whose deadline passed.
    fn expire_transfer(&mut self, now: Nanos) {
        if let Some((_, deadline)) = self.transfer {
            if now >= deadline {
                self.transfer = None;
            }
        }
    }

    /// Check-quorum: did a quorum (this node included) show activity since
    /// the last check? Clears the activity marks for the next period.
    fn quorum_active(&mut self, membership: &Membership, id: NodeId) -> bool {
        let progress = &self.progress;
        let result = joint_vote(membership, |v| {
            Some(v == id || progress.get(&v).is_some_and(|p| p.recent_active && !p.rejoining))
        });
        for p in self.progress.values_mut() {
            p.recent_active = false;
        }
        result == VoteResult::Won
    }

    /// May a read be served from the lease at `now`, without a heartbeat round?
    fn lease_valid(&self, cfg: &Config, now: Nanos) -> bool {
        cfg.lease_read
            && self.committed_own_term
            && !self.timeout_now_sent
            && self.transfer.is_none()
            && self.lease_start.is_some_and(|s| now < s + cfg.lease_duration_ns())
    }

    /// Reads waiting for a quorum or for an entry of this term to commit.
    fn reads_waiting(&self) -> usize {
        self.reads_pending.len() + self.reads_before_commit.len()
    }
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
        match input {
            Input::Tick => self.tick(actions),
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
    /// the first step).
    pub fn next_deadline(&self) -> Nanos {
        if self.started_at.is_none() {
            return 0;
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
            progress: self.state.leader().map_or(Vec::new(), |l| {
                l.progress
                    .iter()
                    .map(|(&id, p)| (id, p.match_index, p.next_index, p.state == ProgressState::Replicate))
                    .collect()
            }),
        }
    }

    // ---- time ----------------------------------------------------------------

    fn randomized_election_timeout(&mut self) -> Nanos {
        let span = self.cfg.election_timeout_max_ns - self.cfg.election_timeout_min_ns;
        self.cfg.election_timeout_min_ns + self.rng.next_u64() % span
    }

    fn reset_election_timer(&mut self) {
        self.election_deadline = self.now + self.randomized_election_timeout();
    }

    /// Leader stickiness: a node that heard from a leader within the minimum
    /// election timeout (or started less than that ago, having forgotten
    /// whom it heard from) does not help anyone else get elected.
    fn in_lease(&self) -> bool {
        if !self.cfg.check_quorum {
            return false;
        }
        if self.state.is_leader() {
            return true;
        }
        let window = self.cfg.election_timeout_min_ns;
        let heard =
            self.leader_id.is_some() && self.last_leader_contact.is_some_and(|t| self.now < t + window);
        let just_started = self.started_at.is_some_and(|t| self.now < t + window);
        heard || just_started
    }

    fn tick(&mut self, actions: &mut Vec<Action>) {
        self.expire_forwarded_reads(actions);
        let now = self.now;
        match &mut self.state {
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
                    self.broadcast_heartbeat(actions);
                }
            }
            RoleState::Follower | RoleState::PreCandidate { .. } | RoleState::Candidate { .. } => {
                if now >= self.election_deadline {
                    self.reset_election_timer();
                    if self.may_campaign() {
                        self.campaign(false, actions);
                    }
                }
            }
        }
    }

    // ---- roles ---------------------------------------------------------------

    fn persist_hard_state(&self, actions: &mut Vec<Action>) {
        let mut hs = HardState { term: self.term, vote: self.vote, commit: self.log.committed() };
        if bug!(self, ForgetToPersistVote) && self.vote != Some(self.id) {
            hs.vote = None;
        }
        actions.push(Action::PersistHardState(hs));
    }

    fn vote_durable(&self) -> bool {
        self.durable_vote == (self.term, self.vote)
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>, actions: &mut Vec<Action>) {
        if term > self.term || self.leader_id != leader {
            self.follower_ack = FollowerAck::default();
        }
        if term > self.term {
            self.term = term;
            self.vote = None;
            self.pending_vote_reply = None;
            self.persist_hard_state(actions);
        }
        if let RoleState::Leader(l) = std::mem::replace(&mut self.state, RoleState::Follower) {
            self.drop_leader_state(*l, leader, actions);
        }
        self.leader_id = leader;
        self.reset_election_timer();
    }

    /// Leadership is gone: every proposal and unconfirmed read gets an answer.
    fn drop_leader_state(&mut self, l: LeaderState, hint: Option<NodeId>, actions: &mut Vec<Action>) {
        let reason = DropReason::LeadershipLost { leader_hint: hint };
        for (_, id) in l.proposals {
            actions.push(Action::ProposalDropped { id, reason });
        }
        if let Some(id) = l.conf_change_id {
            actions.push(Action::ProposalDropped { id, reason });
        }
        let unconfirmed =
            l.reads_before_commit.into_iter().chain(l.reads_pending.into_iter().map(|r| r.requester));
        for r in unconfirmed {
            self.fail_read(r, reason, actions);
        }
    }

    fn fail_read(&mut self, r: Requester, reason: DropReason, actions: &mut Vec<Action>) {
        match r {
            Requester::Local(id) => {
                self.local_reads.remove(&id);
                actions.push(Action::ReadFailed { id, reason });
            }
            Requester::Remote(to, id) => {
                self.send(to, MessageBody::ReadIndexResponse { id, result: Err(()) }, actions);
            }
        }
    }

    fn campaign(&mut self, transfer: bool, actions: &mut Vec<Action>) {
        if self.state.is_leader() {
            return;
        }
        self.leader_id = None;
        self.reset_election_timer();
        if self.cfg.pre_vote && !transfer {
            // Our own pre-vote needs no durability: nothing changes.
            self.state = RoleState::PreCandidate { votes: BTreeMap::from([(self.id, true)]) };
            let body = MessageBody::PreVoteRequest { last_log_id: self.log.last() };
            self.send_to_voters(self.term + 1, body, actions);
            self.check_votes(actions);
        } else {
            self.start_election(transfer, actions);
        }
    }

    fn start_election(&mut self, transfer: bool, actions: &mut Vec<Action>) {
        self.state = RoleState::Candidate { votes: BTreeMap::new() };
        self.term += 1;
        self.vote = Some(self.id);
        self.leader_id = None;
        self.pending_vote_reply = None;
        self.follower_ack = FollowerAck::default();
        self.persist_hard_state(actions);
        // Our own vote counts once it is durable (HardStatePersisted).
        let body = MessageBody::VoteRequest { last_log_id: self.log.last(), transfer };
        self.send_to_voters(self.term, body, actions);
        self.check_votes(actions);
    }

    fn send_to_voters(&self, term: Term, body: MessageBody, actions: &mut Vec<Action>) {
        for id in self.membership.voters.union(&self.membership.voters_outgoing) {
            if *id != self.id {
                actions.push(Action::Send {
                    to: *id,
                    message: Message { from: self.id, term, rejoining: self.rejoining, body: body.clone() },
                });
            }
        }
    }

    /// Pre-candidate or candidate: acts on the outcome of the votes so far.
    fn check_votes(&mut self, actions: &mut Vec<Action>) {
        let (votes, pre_vote) = match &self.state {
            RoleState::PreCandidate { votes } => (votes, true),
            RoleState::Candidate { votes } => (votes, false),
            RoleState::Follower | RoleState::Leader(_) => return, // no votes to count
        };
        match joint_vote(&self.membership, |id| votes.get(&id).copied()) {
            VoteResult::Won if pre_vote => self.start_election(false, actions),
            VoteResult::Won => self.become_leader(actions),
            VoteResult::Lost => {
                let term = self.term;
                self.become_follower(term, None, actions);
            }
            VoteResult::Pending => {}
        }
    }

    fn become_leader(&mut self, actions: &mut Vec<Action>) {
        debug_assert!(matches!(self.state, RoleState::Candidate { .. }));
        self.leader_id = Some(self.id);
        let next = self.log.last().index + 1;
        let mut progress = BTreeMap::new();
        for id in self.membership.members() {
            if id != self.id {
                let session = self.next_session;
                self.next_session += 1;
                let mut p =
                    Progress::new(next, session, self.cfg.max_inflight_msgs, self.cfg.max_inflight_bytes);
                p.recent_active = true;
                p.last_progress_ns = self.now;
                progress.insert(id, p);
            }
        }
        self.state = RoleState::Leader(Box::new(LeaderState {
            progress,
            proposals: VecDeque::new(),
            uncommitted_bytes: 0,
            committed_own_term: false,
            reads_before_commit: Vec::new(),
            reads_pending: VecDeque::new(),
            rounds: Rounds::default(),
            lease_start: None,
            transfer: None,
            timeout_now_sent: false,
            heartbeat_deadline: self.now + self.cfg.heartbeat_interval_ns,
            check_quorum_deadline: self.now + self.cfg.election_timeout_min_ns,
            transfers: BTreeMap::new(),
            conf_change_id: None,
        }));
        // A blank entry of the new term lets everything before it commit (Figure 8).
        let entry = Entry { term: self.term, index: next, payload: EntryPayload::Blank };
        self.append_as_leader(vec![entry], actions);
        self.broadcast_append(actions);
    }

    // ---- messages ------------------------------------------------------------

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
                _ => {}
            }
            return;
        }
        let from = m.from;
        self.note_rejoining(from, m.rejoining);
        match m.body {
            MessageBody::PreVoteRequest { last_log_id } => {
                // Granted only for a later term than ours, from an up-to-date log.
                let granted = m.term > self.term && !self.rejoining && self.log_ok(last_log_id);
                let term = if granted { m.term } else { self.term };
                let body = MessageBody::PreVoteResponse { granted };
                let message = Message { from: self.id, term, rejoining: self.rejoining, body };
                actions.push(Action::Send { to: from, message });
            }
            MessageBody::VoteRequest { last_log_id, .. } => self.on_vote_request(from, last_log_id, actions),
            MessageBody::PreVoteResponse { granted } => {
                // A grant echoes the term we would campaign in; a refusal
                // carries the voter's term (not above ours, or we stepped down).
                let counts = self.membership.is_voter(from) && (!granted || m.term == self.term + 1);
                if let RoleState::PreCandidate { votes } = &mut self.state {
                    if counts {
                        votes.insert(from, granted);
                        self.check_votes(actions);
                    }
                }
            }
            MessageBody::VoteResponse { granted } => {
                if let RoleState::Candidate { votes } = &mut self.state {
                    if self.membership.is_voter(from) {
                        votes.insert(from, granted);
                        self.check_votes(actions);
                    }
                }
            }
            MessageBody::AppendEntries { session, prev_log_id, entries, commit } => {
                self.heard_from_leader(from, actions);
                self.on_append(from, session, prev_log_id, entries, commit, actions);
            }
            MessageBody::Heartbeat { commit, ctx } => {
                self.heard_from_leader(from, actions);
                // The leader caps `commit` at the match index it keeps for
                // us, which holds across our restarts (we acknowledge only
                // what is durable) but not across a lost disk: a wiped node
                // refilled by a stale leader holds other entries at those
                // indexes, and committed one of them here (sim seed 23064981,
                // 5 nodes chaos: it applied 1@53, the cluster 2@53). While
                // rejoining, commit only as far as an append of this leader
                // showed our log to match its own.
                let verified = if self.rejoining {
                    self.follower_ack.matched.max(self.log.committed())
                } else {
                    Index::MAX
                };
                let commit = commit.min(self.log.last().index).min(verified);
                self.log.commit_to(commit);
                let last_index = self.log.last().index;
                self.send(from, MessageBody::HeartbeatResponse { ctx, last_index }, actions);
            }
            MessageBody::TimeoutNow => {
                self.heard_from_leader(from, actions);
                if self.may_campaign() {
                    self.campaign(true, actions);
                }
            }
            MessageBody::AppendResponse { session, result } => {
                self.on_append_response(from, session, result, actions)
            }
            MessageBody::HeartbeatResponse { ctx, last_index } => {
                self.on_heartbeat_response(from, ctx, last_index, actions)
            }
            MessageBody::ReadIndexRequest { id } => {
                let has_room =
                    self.state.leader().is_some_and(|l| l.reads_waiting() < self.cfg.max_pending_reads);
                if has_room {
                    self.leader_read(Requester::Remote(from, id), actions);
                } else {
                    self.send(from, MessageBody::ReadIndexResponse { id, result: Err(()) }, actions);
                }
            }
            MessageBody::ReadIndexResponse { id, result } => {
                if self.forwarded.remove(&id).is_some() {
                    match result {
                        Ok(index) => self.reads_waiting_apply.push_back((index, id)),
                        Err(()) => {
                            self.local_reads.remove(&id);
                            let reason = DropReason::LeadershipLost { leader_hint: self.leader_id };
                            actions.push(Action::ReadFailed { id, reason });
                        }
                    }
                }
            }
            MessageBody::InstallSnapshot { session, meta, offset, data, done } => {
                self.on_install_snapshot(from, session, meta, offset, data, done, actions)
            }
            MessageBody::SnapshotResponse { session, snapshot, next_offset } => {
                self.on_snapshot_response(from, session, snapshot, next_offset, actions)
            }
        }
    }

    /// Leader: records whether follower `from` says it is rejoining after
    /// data loss. Sticky while it is a voter: a message it sent before it
    /// lost its disk may arrive late saying "not rejoining", and must not
    /// make its later acknowledgements count. It can only stop rejoining
    /// after leaving the voters (see `rejoin_evidence`), so the flag is
    /// followed as sent while it is a learner or not a member.
    fn note_rejoining(&mut self, from: NodeId, rejoining: bool) {
        let voter = self.membership.is_voter(from);
        if let Some(p) = self.state.leader_mut().and_then(|l| l.progress.get_mut(&from)) {
            p.rejoining = rejoining || (p.rejoining && voter);
        }
    }

    /// A voter that is not installing a snapshot and not rejoining after
    /// data loss may start an election (on timeout or `TimeoutNow`).
    ///
    /// "Voter" includes a node that the newest configuration in its log
    /// removes while that configuration is not committed: it may hold the
    /// only copy of that entry, and then the voters of the joint
    /// configuration need its log to elect anyone (sim seed 40000106, 5
    /// nodes: C({2,3,4},{1,5}), n5 alone had appended C({2,3,4}) and
    /// refused every vote, and never campaigned). It campaigns under its
    /// newest configuration without counting itself, as the thesis (§4.2.2)
    /// lets a leader manage a configuration it is not part of, and steps down
    /// once that configuration commits. Votes are always counted by the
    /// candidate's newest configuration, so this changes no safety argument.
    fn may_campaign(&self) -> bool {
        let voter = self.membership.is_voter(self.id) || self.conf.may_be_voter(self.id);
        voter && !self.snap.installing() && !self.rejoining
    }

    /// Rejoining: an append of the current leader told us its commit index
    /// `commit`. Leave rejoin mode if that index is an entry of the leader's
    /// term (not a new leader's stale commit), we hold the log up to it
    /// (`matched`), and the configuration in force there does not count us
    /// as a voter. See `Config::rejoin_after_data_loss` for why each part
    /// is needed.
    fn rejoin_evidence(&mut self, commit: Index, matched: Index) {
        debug_assert!(self.rejoining && matches!(self.state, RoleState::Follower));
        // Our commit index is above `commit` only if a later append of
        // this leader overtook this one; that append was the evidence.
        if commit > matched || self.log.committed() != commit || self.log.term_at(commit) != Some(self.term) {
            return;
        }
        self.conf.commit_to(commit);
        if !self.conf.committed().is_voter(self.id) {
            self.rejoining = false;
        }
    }

    /// §5.4.1: the candidate's log is at least as up to date as ours.
    fn log_ok(&self, candidate_last: LogId) -> bool {
        bug!(self, VoteWithoutLogCheck) || candidate_last >= self.log.last()
    }

    fn on_vote_request(&mut self, from: NodeId, last_log_id: LogId, actions: &mut Vec<Action>) {
        let can_vote = self.vote == Some(from) || (self.vote.is_none() && self.leader_id.is_none());
        if self.rejoining || !(can_vote && self.log_ok(last_log_id)) {
            self.send(from, MessageBody::VoteResponse { granted: false }, actions);
            return;
        }
        self.reset_election_timer();
        if self.vote == Some(from) && self.vote_durable() {
            self.send(from, MessageBody::VoteResponse { granted: true }, actions);
            return;
        }
        if self.vote != Some(from) {
            self.vote = Some(from);
            self.persist_hard_state(actions);
        }
        if bug!(self, ForgetToPersistVote) {
            self.send(from, MessageBody::VoteResponse { granted: true }, actions);
        } else {
            // The grant leaves only once the vote is durable.
            self.pending_vote_reply = Some(from);
        }
    }

    fn heard_from_leader(&mut self, from: NodeId, actions: &mut Vec<Action>) {
        if !matches!(self.state, RoleState::Follower) || self.leader_id != Some(from) {
            let term = self.term;
            self.become_follower(term, Some(from), actions);
        }
        self.last_leader_contact = Some(self.now);
        self.reset_election_timer();
    }

    // ---- follower replication -----------------------------------------------

    fn on_append(
        &mut self,
        from: NodeId,
        session: u64,
        prev: LogId,
        entries: Vec<Entry>,
        commit: Index,
        actions: &mut Vec<Action>,
    ) {
        if !Self::append_is_well_formed(self.term, prev, &entries) {
            return; // Not from a correct leader; changes nothing.
        }
        if self.snap.installing() {
            return; // The log is being replaced; the leader retries.
        }
        if session != self.follower_ack.session {
            self.follower_ack.session = session;
            self.follower_ack.acked = 0;
        }
        let committed = self.log.committed();
        if prev.index < committed {
            // Everything up to our commit index matches; tell the leader.
            let ack = committed.min(self.log.persisted());
            self.follower_ack.matched = self.follower_ack.matched.max(committed);
            self.follower_ack.acked = self.follower_ack.acked.max(ack);
            self.send(from, MessageBody::AppendResponse { session, result: Ok(ack) }, actions);
            return;
        }
        if !self.log.matches(prev) {
            let hint_index = prev.index.min(self.log.last().index);
            let hint = self.log.find_conflict_by_term(hint_index, prev.term);
            let result = Err(RejectHint { rejected_index: prev.index, hint });
            self.send(from, MessageBody::AppendResponse { session, result }, actions);
            return;
        }
        let matched = prev.index + entries.len() as Index;
        // Skip entries we already have; append from the first conflict.
        let mut skip = 0;
        for e in &entries {
            let held = self.log.term_at(e.index);
            if held == Some(e.term) || (bug!(self, KeepConflictingSuffix) && held.is_some()) {
                skip += 1;
            } else {
                break;
            }
        }
        if skip < entries.len() {
            let new: Vec<Entry> = if skip == 0 {
                entries
            } else {
                let mut entries = entries;
                entries.drain(skip..).collect()
            };
            if new[0].index <= committed {
                // A correct leader never contradicts a committed entry: refuse
                // rather than corrupt the log (the checkers flag the leader).
                return;
            }
            self.log.append(&new);
            self.on_entries_appended(&new);
            actions.push(Action::AppendLog { entries: new });
        }
        // The append was well formed and matched at `prev`: we now hold
        // `prev + entries` as the leader sent them.
        debug_assert!(matched <= self.log.last().index);
        debug_assert!(self.log.term_at(matched).is_some() || matched <= self.log.snapshot().index);
        self.follower_ack.matched = self.follower_ack.matched.max(matched);
        self.log.commit_to(commit.min(matched));
        if self.rejoining {
            self.rejoin_evidence(commit, matched);
        }
        let durable_now = matched <= self.durable_index();
        if durable_now {
            // Otherwise the acknowledgement leaves with the LogPersisted that
            // covers it (one response per append, no partial acks to resend).
            self.maybe_ack(from, true, actions);
        }
    }

    fn durable_index(&self) -> Index {
        if bug!(self, AckAppendBeforeDurable) {
            self.log.last().index
        } else {
            self.log.persisted()
        }
    }

    /// Entries must follow `prev` contiguously with terms that never decrease
    /// and never exceed the leader's term.
    fn append_is_well_formed(term: Term, prev: LogId, entries: &[Entry]) -> bool {
        let mut last = prev;
        for e in entries {
            if e.index != last.index + 1 || e.term < last.term || e.term > term {
                return false;
            }
            last = e.log_id();
        }
        true
    }

    /// Acknowledges the durable part of what matches the leader, if it grew.
    /// `force` answers even without growth: an append whose entries are all
    /// durable already (a probe, a repeat) always gets a response.
    fn maybe_ack(&mut self, leader: NodeId, force: bool, actions: &mut Vec<Action>) {
        let ack = self.durable_index().min(self.follower_ack.matched);
        if ack > self.follower_ack.acked || force {
            self.follower_ack.acked = self.follower_ack.acked.max(ack);
            let session = self.follower_ack.session;
            self.send(leader, MessageBody::AppendResponse { session, result: Ok(ack) }, actions);
        }
    }

    fn on_log_persisted(&mut self, up_to: LogId, actions: &mut Vec<Action>) {
        if !self.log.persisted_to(up_to) {
            return;
        }
        match self.state {
            RoleState::Leader(_) => {
                self.maybe_commit(actions);
            }
            RoleState::Follower | RoleState::PreCandidate { .. } | RoleState::Candidate { .. } => {
                if let Some(leader) = self.leader_id {
                    if self.follower_ack.matched > self.follower_ack.acked {
                        self.maybe_ack(leader, false, actions);
                    }
                }
            }
        }
    }

    fn on_hard_state_persisted(&mut self, term: Term, vote: Option<NodeId>, actions: &mut Vec<Action>) {
        if (term, vote) != (self.term, self.vote) {
            return;
        }
        self.durable_vote = (term, vote);
        if let Some(to) = self.pending_vote_reply.take() {
            if vote == Some(to) {
                self.send(to, MessageBody::VoteResponse { granted: true }, actions);
            }
        }
        if let RoleState::Candidate { votes } = &mut self.state {
            if vote == Some(self.id) {
                votes.insert(self.id, true);
                self.check_votes(actions);
            }
        }
    }

    // ---- leader replication ---------------------------------------------------

    fn append_as_leader(&mut self, entries: Vec<Entry>, actions: &mut Vec<Action>) {
        debug_assert!(!entries.is_empty());
        self.log.append(&entries);
        self.on_entries_appended(&entries);
        actions.push(Action::AppendLog { entries });
    }

    fn propose(&mut self, proposals: Vec<Proposal>, actions: &mut Vec<Action>) {
        let RoleState::Leader(l) = &mut self.state else {
            let reason = DropReason::NotLeader { leader_hint: self.leader_id };
            for p in proposals {
                actions.push(Action::ProposalDropped { id: p.id, reason });
            }
            return;
        };
        if l.transfer.is_some() {
            for p in proposals {
                actions.push(Action::ProposalDropped { id: p.id, reason: DropReason::TransferInProgress });
            }
            return;
        }
        let mut index = self.log.last().index;
        let mut entries = Vec::with_capacity(proposals.len());
        for Proposal { id, data } in proposals {
            if data.len() > self.cfg.max_entry_bytes {
                let reason =
                    DropReason::EntryTooLarge { size_bytes: data.len(), max_bytes: self.cfg.max_entry_bytes };
                actions.push(Action::ProposalDropped { id, reason });
                continue;
            }
            let entry = Entry { term: self.term, index: index + 1, payload: EntryPayload::Normal(data) };
            let size = entry.size_bytes();
            if l.uncommitted_bytes > 0 && l.uncommitted_bytes + size > self.cfg.max_uncommitted_bytes {
                actions.push(Action::ProposalDropped { id, reason: DropReason::UncommittedLimit });
                continue;
            }
            l.uncommitted_bytes += size;
            index += 1;
            l.proposals.push_back((entry.log_id(), id));
            entries.push(entry);
        }
        if entries.is_empty() {
            return;
        }
        self.append_as_leader(entries, actions);
        self.broadcast_append(actions);
    }

    fn broadcast_append(&mut self, actions: &mut Vec<Action>) {
        self.for_each_follower(|node, id| node.send_appends(id, false, actions));
    }

    /// Calls `f` for every follower in the progress map, in id order, without
    /// holding a borrow of the map (and without allocating a list of ids).
    fn for_each_follower(&mut self, mut f: impl FnMut(&mut Self, NodeId)) {
        let mut after = None;
        loop {
            let Some(l) = self.state.leader() else { return };
            let next = match after {
                None => l.progress.keys().next().copied(),
                Some(prev) => l.progress.range(prev + 1..).next().map(|(&id, _)| id),
            };
            let Some(id) = next else { return };
            f(self, id);
            after = Some(id);
        }
    }

    /// Sends as many appends to `to` as flow control allows (one in Probe).
    /// With `send_empty`, sends an empty append if there is nothing new (to
    /// carry the commit index or probe).
    fn send_appends(&mut self, to: NodeId, mut send_empty: bool, actions: &mut Vec<Action>) {
        loop {
            // On a non-leader (none calls this) there is nothing to send.
            let RoleState::Leader(l) = &mut self.state else { return };
            let Some(p) = l.progress.get_mut(&to) else { return };
            if p.is_paused() || l.transfers.contains_key(&to) {
                return;
            }
            let next = p.next_index;
            let last = self.log.last().index;
            // Nothing new: send only if asked to, or to carry a commit index
            // this follower has not been sent yet.
            let commit_news = self.log.committed() > p.commit_sent;
            if next > last && !send_empty && !commit_news {
                return;
            }
            let prev_index = next - 1;
            let Some(prev_term) = self.log.term_at(prev_index) else {
                // Compacted away: the follower needs a snapshot.
                if let Some(meta) = self.snap.meta.clone() {
                    if l.start_snapshot(to, meta, self.now) {
                        self.pump_snapshot(to, actions);
                    }
                }
                return;
            };
            let max_bytes = self.cfg.max_size_per_msg_bytes;
            let entries = match self.log.slice(next, self.cfg.max_entries_per_msg, max_bytes) {
                Some((entries, _)) => entries,
                None => match fetched_slice(&self.fetched, &self.cfg, next) {
                    Some(entries) => entries,
                    None => {
                        self.request_fetch(next, actions);
                        return;
                    }
                },
            };
            // What we send follows `prev` contiguously and never ends past
            // our log (a follower would otherwise refuse it as malformed).
            debug_assert!(entries.first().is_none_or(|e| e.index == next && e.term >= prev_term));
            debug_assert!(entries.last().is_none_or(|e| e.index <= last && e.term <= self.term));
            let bytes: usize = entries.iter().map(Entry::size_bytes).sum();
            let last_sent = entries.last().map(|e| e.index);
            let commit = self.log.committed();
            let session = p.session;
            p.sent(last_sent, bytes);
            p.commit_sent = commit;
            let body = MessageBody::AppendEntries {
                session,
                prev_log_id: LogId::new(prev_term, prev_index),
                entries,
                commit,
            };
            self.send(to, body, actions);
            send_empty = false;
            if last_sent.is_none() {
                return;
            }
        }
    }

    fn request_fetch(&mut self, from: Index, actions: &mut Vec<Action>) {
        if self.fetch_outstanding {
            return;
        }
        let to = self.log.tail_first().min(from + self.cfg.max_entries_per_msg as Index);
        debug_assert!(from < to);
        self.fetch_outstanding = true;
        actions.push(Action::FetchEntries { from, to, max_bytes: self.cfg.max_size_per_msg_bytes });
    }

    fn on_entries_fetched(&mut self, from: Index, entries: Vec<Entry>, actions: &mut Vec<Action>) {
        self.fetch_outstanding = false;
        // Keep only the contiguous prefix that agrees with our log.
        let mut good = VecDeque::with_capacity(entries.len());
        for (k, e) in entries.into_iter().enumerate() {
            if e.index != from + k as Index || !self.log.matches(e.log_id()) {
                break;
            }
            good.push_back(e);
        }
        if good.is_empty() {
            return;
        }
        self.fetched = good;
        if self.state.is_leader() {
            self.broadcast_append(actions);
        }
    }

    fn on_append_response(
        &mut self,
        from: NodeId,
        session: u64,
        result: Result<Index, RejectHint>,
        actions: &mut Vec<Action>,
    ) {
        let RoleState::Leader(l) = &mut self.state else { return };
        let Some(p) = l.progress.get_mut(&from) else { return };
        if p.session != session {
            return; // A response from another replication session.
        }
        p.recent_active = true;
        match result {
            Ok(match_index) => {
                if match_index > self.log.last().index {
                    return; // Cannot match beyond our log: corrupt or foreign.
                }
                finish_transfer(&mut l.transfers, from, match_index);
                let moved = p.maybe_update(match_index, self.next_ctx - 1);
                if moved {
                    p.last_progress_ns = self.now;
                }
                if p.state == ProgressState::Probe && (moved || p.match_index == match_index) {
                    p.become_replicate();
                    p.last_progress_ns = self.now;
                }
                if moved {
                    self.maybe_commit(actions);
                }
                self.maybe_send_timeout_now(from, actions);
                self.send_appends(from, false, actions);
            }
            Err(RejectHint { rejected_index, hint }) => {
                // Skip the follower's whole conflicting term if we can.
                let retry_at = if hint.term > 0 {
                    self.log.find_conflict_by_term(hint.index, hint.term).index
                } else {
                    hint.index.min(self.log.last().index)
                };
                if p.maybe_decrease_to(rejected_index, retry_at) {
                    self.send_appends(from, true, actions);
                }
            }
        }
    }

    fn on_heartbeat_response(
        &mut self,
        from: NodeId,
        ctx: u64,
        last_index: Index,
        actions: &mut Vec<Action>,
    ) {
        let RoleState::Leader(l) = &mut self.state else { return };
        let Some(p) = l.progress.get_mut(&from) else { return };
        p.recent_active = true;
        p.acked_ctx = p.acked_ctx.max(ctx);
        if l.transfers.contains_key(&from) {
            self.snapshot_heartbeat(from, actions);
            self.advance_reads(actions);
            return;
        }
        if p.lost_data(ctx, last_index) {
            // The follower lost its disk: its acknowledgements are void.
            // Replicate to it afresh (a new session ignores answers to
            // earlier appends); commits already made stand.
            let mut fresh = Progress::new(
                last_index + 1,
                self.next_session,
                self.cfg.max_inflight_msgs,
                self.cfg.max_inflight_bytes,
            );
            self.next_session += 1;
            fresh.recent_active = true;
            fresh.acked_ctx = p.acked_ctx;
            fresh.rejoining = p.rejoining;
            fresh.last_progress_ns = self.now;
            *p = fresh;
        }
        let our_last = self.log.last().index;
        if p.match_index < our_last {
            match p.state {
                ProgressState::Probe => p.probe_sent = false,
                ProgressState::Replicate => {
                    // Entries are outstanding but the match point has not
                    // moved for a while: an append (or its answer) was lost,
                    // or the follower holds a divergent suffix. Probe again.
                    let stalled_for = self.now.saturating_sub(p.last_progress_ns);
                    if last_index + 1 < p.next_index && stalled_for >= self.cfg.heartbeat_interval_ns
                        || stalled_for >= Progress::STALLED_HEARTBEATS_MAX * self.cfg.heartbeat_interval_ns
                    {
                        p.become_probe();
                    }
                }
            }
            self.send_appends(from, true, actions);
        }
        self.advance_reads(actions);
    }

    fn maybe_commit(&mut self, actions: &mut Vec<Action>) {
        let RoleState::Leader(l) = &mut self.state else { return };
        let id = self.id;
        let persisted = self.log.persisted();
        let acked = |v| {
            if v == id {
                Some(persisted)
            } else {
                // A rejoining voter's log is real but its word is not:
                // it may be acknowledging a stale leader (`Message::rejoining`).
                l.progress.get(&v).filter(|p| !p.rejoining).map(|p| p.match_index)
            }
        };
        let committed = if bug!(self, JointCommitByIncomingOnly) && self.membership.is_joint() {
            crate::quorum::majority_committed(&self.membership.voters, acked)
        } else {
            joint_committed(&self.membership, acked)
        };
        if committed <= self.log.committed() {
            return;
        }
        // Acknowledgements past our last index are refused on arrival, and
        // we count ourselves up to our durable index: it is in our log.
        debug_assert!(committed <= self.log.last().index && persisted <= self.log.last().index);
        // Figure 8: only an entry of the current term commits by counting.
        if self.log.term_at(committed) != Some(self.term) && !bug!(self, CommitPreviousTermByCounting) {
            return;
        }
        // Entries of this term past the old commit index are in memory: the
        // tail never drops what is not yet handed to the state machine.
        let mut freed = 0;
        for index in self.log.committed() + 1..=committed {
            if let Some(e) = self.log.entry(index) {
                if e.term == self.term && matches!(e.payload, EntryPayload::Normal(_)) {
                    freed += e.size_bytes();
                }
            }
        }
        l.uncommitted_bytes = l.uncommitted_bytes.saturating_sub(freed);
        self.log.commit_to(committed);
        let first_own = !l.committed_own_term;
        l.committed_own_term = true;
        if first_own {
            let waiting = std::mem::take(&mut l.reads_before_commit);
            for r in waiting {
                self.leader_read(r, actions);
            }
        }
        // Tell followers promptly (their next append would too).
        self.for_each_follower(|node, id| node.send_appends(id, false, actions));
    }

    // ---- leadership transfer ---------------------------------------------------

    fn transfer_leadership(&mut self, to: NodeId, actions: &mut Vec<Action>) {
        let RoleState::Leader(l) = &mut self.state else { return };
        if to == self.id || !self.membership.is_voter(to) {
            return;
        }
        let deadline = self.now + self.cfg.election_timeout_min_ns;
        if l.transfer.is_some_and(|(t, _)| t == to) {
            return;
        }
        l.transfer = Some((to, deadline));
        self.maybe_send_timeout_now(to, actions);
        self.send_appends(to, true, actions);
    }

    fn maybe_send_timeout_now(&mut self, to: NodeId, actions: &mut Vec<Action>) {
        let last = self.log.last().index;
        let RoleState::Leader(l) = &mut self.state else { return };
        let caught_up = l.progress.get(&to).is_some_and(|p| p.match_index == last);
        if l.transfer.is_some_and(|(t, _)| t == to) && caught_up && !l.timeout_now_sent {
            l.timeout_now_sent = true;
            self.send(to, MessageBody::TimeoutNow, actions);
        }
    }

    // ---- reads -------------------------------------------------------------------

    fn read(&mut self, id: u64, actions: &mut Vec<Action>) {
        if self.local_reads.contains(&id) {
            actions.push(Action::ReadFailed { id, reason: DropReason::DuplicateReadId });
            return;
        }
        if self.local_reads.len() >= self.cfg.max_pending_reads {
            actions.push(Action::ReadFailed { id, reason: DropReason::TooManyPendingReads });
            return;
        }
        match self.state {
            RoleState::Leader(_) => {
                self.local_reads.insert(id);
                self.leader_read(Requester::Local(id), actions);
            }
            RoleState::Follower | RoleState::PreCandidate { .. } | RoleState::Candidate { .. } => match self
                .leader_id
            {
                Some(leader) => {
                    self.local_reads.insert(id);
                    let deadline = self.now + self.cfg.election_timeout_min_ns;
                    self.forwarded.insert(id, deadline);
                    self.forwarded_order.push_back((deadline, id));
                    self.send(leader, MessageBody::ReadIndexRequest { id }, actions);
                }
                None => {
                    actions
                        .push(Action::ReadFailed { id, reason: DropReason::NotLeader { leader_hint: None } });
                }
            },
        }
    }

    fn expire_forwarded_reads(&mut self, actions: &mut Vec<Action>) {
        while let Some(&(deadline, id)) = self.forwarded_order.front() {
            if deadline > self.now {
                break;
            }
            self.forwarded_order.pop_front();
            if self.forwarded.get(&id) == Some(&deadline) {
                self.forwarded.remove(&id);
                self.local_reads.remove(&id);
                actions.push(Action::ReadFailed { id, reason: DropReason::Timeout });
            }
        }
    }

    fn leader_read(&mut self, r: Requester, actions: &mut Vec<Action>) {
        let commit = self.log.committed();
        if bug!(self, ReadWithoutLeadershipCheck) {
            self.read_confirmed(r, commit, actions);
            return;
        }
        // On a non-leader (none calls this) there is no read to serve.
        let RoleState::Leader(l) = &mut self.state else { return };
        if l.transfer.is_some() {
            self.fail_read(r, DropReason::TransferInProgress, actions);
            return;
        }
        if !l.committed_own_term {
            // etcd #7331: the commit index of a new leader may be stale.
            l.reads_before_commit.push(r);
            return;
        }
        let single_voter = self.membership.voters_outgoing.is_empty()
            && self.membership.voters.len() == 1
            && self.membership.voters.contains(&self.id);
        if single_voter || l.lease_valid(&self.cfg, self.now) {
            self.read_confirmed(r, commit, actions);
            return;
        }
        let ctx = self.next_ctx;
        l.reads_pending.push_back(PendingRead { ctx, index: commit, requester: r });
        self.broadcast_heartbeat(actions);
    }

    fn read_confirmed(&mut self, r: Requester, index: Index, actions: &mut Vec<Action>) {
        match r {
            Requester::Local(id) => self.reads_waiting_apply.push_back((index, id)),
            Requester::Remote(to, id) => {
                self.send(to, MessageBody::ReadIndexResponse { id, result: Ok(index) }, actions)
            }
        }
    }

    fn broadcast_heartbeat(&mut self, actions: &mut Vec<Action>) {
        let ctx = self.next_ctx;
        self.next_ctx += 1;
        let now = self.now;
        let commit = self.log.committed();
        let from = self.id;
        let term = self.term;
        // On a non-leader (none calls this) there is no one to send to.
        let RoleState::Leader(l) = &mut self.state else { return };
        l.rounds.push(ctx, now);
        for (&to, p) in &l.progress {
            let body = MessageBody::Heartbeat { commit: commit.min(p.match_index), ctx };
            actions.push(Action::Send { to, message: Message { from, term, rejoining: false, body } });
        }
        self.advance_reads(actions);
    }

    /// Confirms reads whose round a quorum acknowledged, and extends the lease.
    fn advance_reads(&mut self, actions: &mut Vec<Action>) {
        let id = self.id;
        let RoleState::Leader(l) = &mut self.state else { return };
        let own = self.next_ctx - 1;
        let quorum_ctx = joint_committed(&self.membership, |v| {
            if v == id {
                Some(own)
            } else {
                l.progress.get(&v).filter(|p| !p.rejoining).map(|p| p.acked_ctx)
            }
        });
        if quorum_ctx == 0 {
            return;
        }
        if let Some(sent_at) = l.rounds.confirm(quorum_ctx) {
            l.lease_start = Some(l.lease_start.map_or(sent_at, |s| s.max(sent_at)));
        }
        let mut confirmed = Vec::new();
        while l.reads_pending.front().is_some_and(|r| r.ctx <= quorum_ctx) {
            confirmed.push(l.reads_pending.pop_front().expect("checked non-empty"));
        }
        for r in confirmed {
            self.read_confirmed(r.requester, r.index, actions);
        }
    }

    // ---- after every step ------------------------------------------------------

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
    }

    fn maybe_apply(&mut self, actions: &mut Vec<Action>) {
        let upto = self.log.committed().min(self.log.persisted());
        // While a snapshot install is pending the driver is replacing the
        // state machine: entries applied now would land on the snapshot's
        // state (found by the raft_cluster fuzz target: a follower whose
        // earlier appends became durable after `InstallSnapshot` applied
        // them after the install). The install moves `applying` past them.
        if self.applying >= upto || self.snap.installing() {
            return;
        }
        let from = self.applying + 1;
        let max = (upto - self.applying) as usize;
        let entries = match self.log.slice(from, max, usize::MAX) {
            Some((e, _)) => e,
            None => match fetched_slice(&self.fetched, &self.cfg, from) {
                Some(mut e) => {
                    e.retain(|e| e.index <= upto);
                    e
                }
                None => {
                    self.request_fetch(from, actions);
                    return;
                }
            },
        };
        let Some(last) = entries.last().map(|e| e.index) else { return };
        debug_assert_eq!(entries[0].index, from);
        let mut proposals = Vec::new();
        if let RoleState::Leader(l) = &mut self.state {
            while let Some(&(log_id, id)) = l.proposals.front() {
                if log_id.index > last {
                    break;
                }
                l.proposals.pop_front();
                let entry = log_id.index.checked_sub(from).and_then(|k| entries.get(k as usize));
                if entry.is_some_and(|e| e.term == log_id.term) {
                    proposals.push((log_id.index, id));
                } else {
                    let reason = DropReason::LeadershipLost { leader_hint: self.leader_id };
                    actions.push(Action::ProposalDropped { id, reason });
                }
            }
        }
        self.applying = last;
        self.snap.applied_bytes += entries.iter().map(|e| e.size_bytes() as u64).sum::<u64>();
        actions.push(Action::Apply { entries, proposals });
    }

    fn maybe_evict(&mut self) {
        let (max_entries, max_bytes) = (self.cfg.max_log_tail_entries, self.cfg.max_log_tail_bytes);
        if self.log.tail_len() <= max_entries && self.log.tail_bytes() <= max_bytes {
            return;
        }
        // Never evict what is not durable or not yet handed to the state machine.
        let keep_from = self
            .log
            .tail_keep_from(max_entries, max_bytes)
            .min(self.log.persisted() + 1)
            .min(self.applying + 1);
        self.log.evict_before(keep_from);
    }
}
