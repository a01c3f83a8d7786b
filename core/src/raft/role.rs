//! Role transitions: after construction, the only code that assigns
//! `RawNode::state`. A follower campaigns (pre-candidate, then candidate), a
//! candidate that wins becomes leader and appends a blank entry of its term,
//! and any role steps down to follower, where a leader's proposals and
//! unconfirmed reads are answered.

use std::collections::{BTreeMap, VecDeque};

use super::{FollowerAck, LeaderState, RawNode, RoleState};
use crate::io::{Action, DropReason};
use crate::message::MessageBody;
use crate::progress::Progress;
use crate::read::Rounds;
use crate::types::{Entry, EntryPayload, NodeId, Term};

impl RawNode {
    /// Steps down (or stays) a follower of `leader` in `term`; a leader's state is dropped.
    pub(super) fn become_follower(&mut self, term: Term, leader: Option<NodeId>, actions: &mut Vec<Action>) {
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
        // The election timer runs again (a `Quiesce` of the new leader may
        // stop it once more).
        self.quiet = false;
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

    /// Starts a pre-vote round, or (without pre-vote, or for a transfer) an election.
    pub(super) fn campaign(&mut self, transfer: bool, actions: &mut Vec<Action>) {
        if self.state.is_leader() {
            return;
        }
        self.leader_id = None;
        self.quiet = false;
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

    /// Becomes candidate in the next term and votes for itself (counted once durable).
    pub(super) fn start_election(&mut self, transfer: bool, actions: &mut Vec<Action>) {
        self.state = RoleState::Candidate { votes: BTreeMap::new() };
        self.quiet = false;
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

    /// Won the election: fresh progress per member, then a blank entry of this term.
    pub(super) fn become_leader(&mut self, actions: &mut Vec<Action>) {
        debug_assert!(matches!(self.state, RoleState::Candidate { .. }) && !self.quiet);
        self.election_backoff = 0;
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

    /// A message of the current leader `from`: follow it and restart the election timer.
    pub(super) fn heard_from_leader(&mut self, from: NodeId, actions: &mut Vec<Action>) {
        if !matches!(self.state, RoleState::Follower) || self.leader_id != Some(from) {
            let term = self.term;
            self.become_follower(term, Some(from), actions);
        }
        self.last_leader_contact = Some(self.now);
        self.election_backoff = 0;
        self.reset_election_timer();
    }
}
