//! Elections: the randomized election timer, leader stickiness
//! (`in_lease`), who may campaign, pre-votes and votes (the §5.4.1 log
//! check, a grant sent only once the vote is durable), counting them, and
//! check-quorum. The role changes they lead to live in `role.rs`.

use rand_chacha::rand_core::RngCore;

use super::{LeaderState, RawNode, RoleState};
use crate::io::Action;
use crate::message::{Message, MessageBody};
use crate::quorum::{joint_vote, VoteResult};
use crate::types::{HardState, LogId, Membership, Nanos, NodeId, Term};

impl LeaderState {
    /// Check-quorum: did a quorum (this node included) show activity since
    /// the last check? Clears the activity marks for the next period.
    pub(super) fn quorum_active(&mut self, membership: &Membership, id: NodeId) -> bool {
        let progress = &self.progress;
        let result = joint_vote(membership, |v| {
            Some(v == id || progress.get(&v).is_some_and(|p| p.recent_active && !p.rejoining))
        });
        for p in self.progress.values_mut() {
            p.recent_active = false;
        }
        result == VoteResult::Won
    }
}

/// The most doublings of the election timeout after late vote grants.
pub(super) const MAX_ELECTION_BACKOFF: u32 = 3;

impl RawNode {
    fn randomized_election_timeout(&mut self) -> Nanos {
        let span = self.cfg.election_timeout_max_ns - self.cfg.election_timeout_min_ns;
        let timeout = self.cfg.election_timeout_min_ns + self.rng.next_u64() % span;
        timeout.saturating_mul(1 << self.election_backoff)
    }

    /// A vote of our campaign in `term` took longer than our election
    /// timeout: a grant arrived after we gave that campaign up, or our own
    /// vote was not yet durable when it timed out. The round trip of a vote
    /// includes an fdatasync of it on both sides, and campaigning again at
    /// the same pace would only repeat that. It is what a node's failover
    /// looks like when thousands of groups elect at once and every vote waits
    /// for a disk busy with the others (issue 17): each timeout started a new
    /// term, whose vote cost another fdatasync on both sides, and no group
    /// ever finished an election. So each such term doubles the timeouts
    /// that follow, up to `2^MAX_ELECTION_BACKOFF`, until a leader is heard
    /// from or we win (`Config::election_backoff`). Timers only: safety does
    /// not depend on them, and stickiness and leases use the configured
    /// minimum, never this.
    pub(super) fn back_off_elections(&mut self, term: Term) {
        if self.cfg.election_backoff && term > self.backoff_term && !self.state.is_leader() {
            self.backoff_term = term;
            self.election_backoff = (self.election_backoff + 1).min(MAX_ELECTION_BACKOFF);
        }
    }

    /// A fresh randomized election deadline from now.
    pub(super) fn reset_election_timer(&mut self) {
        self.election_deadline = self.now + self.randomized_election_timeout();
    }

    /// Leader stickiness: a node that heard from a leader within the minimum
    /// election timeout (or started less than that ago, having forgotten
    /// whom it heard from) does not help anyone else get elected.
    pub(super) fn in_lease(&self) -> bool {
        if !self.cfg.check_quorum {
            return false;
        }
        if self.state.is_leader() {
            return true;
        }
        if self.quiet {
            // Quiescence: node-level liveness vouches for the leader until
            // a `PeerDown` wakes us (see `quiesce.rs`).
            return true;
        }
        let window = self.cfg.election_timeout_min_ns;
        let heard =
            self.leader_id.is_some() && self.last_leader_contact.is_some_and(|t| self.now < t + window);
        let just_started = self.started_at.is_some_and(|t| self.now < t + window);
        heard || just_started
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
    pub(super) fn may_campaign(&self) -> bool {
        let voter = self.membership.is_voter(self.id) || self.conf.may_be_voter(self.id);
        voter && !self.snap.installing() && !self.rejoining
    }

    /// Asks storage to persist term, vote and commit.
    pub(super) fn persist_hard_state(&self, actions: &mut Vec<Action>) {
        let mut hs = HardState { term: self.term, vote: self.vote, commit: self.log.committed() };
        if bug!(self, ForgetToPersistVote) && self.vote != Some(self.id) {
            hs.vote = None;
        }
        actions.push(Action::PersistHardState(hs));
    }

    /// Storage acknowledged the current (term, vote).
    pub(super) fn vote_durable(&self) -> bool {
        self.durable_vote == (self.term, self.vote)
    }

    /// Sends `body` in `term` to every voter of the configuration (both halves of a joint one).
    pub(super) fn send_to_voters(&self, term: Term, body: MessageBody, actions: &mut Vec<Action>) {
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
    pub(super) fn check_votes(&mut self, actions: &mut Vec<Action>) {
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

    /// §5.4.1: the candidate's log is at least as up to date as ours.
    fn log_ok(&self, candidate_last: LogId) -> bool {
        bug!(self, VoteWithoutLogCheck) || candidate_last >= self.log.last()
    }

    /// Any role: a pre-vote for a later term than ours, granted only from
    /// an up-to-date log (and never while rejoining after data loss).
    pub(super) fn on_pre_vote_request(
        &mut self,
        from: NodeId,
        term: Term,
        last_log_id: LogId,
        actions: &mut Vec<Action>,
    ) {
        let granted = term > self.term && !self.rejoining && self.log_ok(last_log_id);
        let term = if granted { term } else { self.term };
        let body = MessageBody::PreVoteResponse { granted };
        let message = Message { from: self.id, term, rejoining: self.rejoining, body };
        actions.push(Action::Send { to: from, message });
    }

    /// Any role: grants a vote at most once per term, only to an up-to-date log; the grant leaves
    /// once the vote is durable.
    pub(super) fn on_vote_request(&mut self, from: NodeId, last_log_id: LogId, actions: &mut Vec<Action>) {
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

    /// Pre-candidate: counts a pre-vote answer of the voter `from`.
    pub(super) fn on_pre_vote_response(
        &mut self,
        from: NodeId,
        term: Term,
        granted: bool,
        actions: &mut Vec<Action>,
    ) {
        // A grant echoes the term we would campaign in; a refusal
        // carries the voter's term (not above ours, or we stepped down).
        let counts = self.membership.is_voter(from) && (!granted || term == self.term + 1);
        if let RoleState::PreCandidate { votes } = &mut self.state {
            if counts {
                votes.insert(from, granted);
                self.check_votes(actions);
            }
        }
    }

    /// Candidate: counts a vote of the voter `from`.
    pub(super) fn on_vote_response(&mut self, from: NodeId, granted: bool, actions: &mut Vec<Action>) {
        if let RoleState::Candidate { votes } = &mut self.state {
            if self.membership.is_voter(from) {
                votes.insert(from, granted);
                self.check_votes(actions);
            }
        }
    }

    /// Storage acknowledged (term, vote): a pending vote grant leaves, and a candidate counts its
    /// own vote.
    pub(super) fn on_hard_state_persisted(
        &mut self,
        term: Term,
        vote: Option<NodeId>,
        actions: &mut Vec<Action>,
    ) {
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
}
