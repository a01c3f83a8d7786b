//! Linearizable reads: ReadIndex on the leader (an index confirmed by a
//! heartbeat round a quorum acknowledged, only after an entry of its own
//! term committed), lease reads, reads forwarded from followers and their
//! timeouts, and answering each read exactly once.

use super::{LeaderState, RawNode, RoleState};
use crate::config::Config;
use crate::io::{Action, DropReason};
use crate::message::{Message, MessageBody};
use crate::quorum::joint_committed;
use crate::read::{PendingRead, Requester};
use crate::types::{Index, Nanos, NodeId};

impl LeaderState {
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

impl RawNode {
    /// `Input::Read`: served by the leader, forwarded by a follower that knows one, else refused.
    pub(super) fn read(&mut self, id: u64, actions: &mut Vec<Action>) {
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

    /// Fails forwarded reads whose deadline passed.
    pub(super) fn expire_forwarded_reads(&mut self, actions: &mut Vec<Action>) {
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

    /// Leader: a read forwarded by `from`; refused by a non-leader or when
    /// too many reads wait.
    pub(super) fn on_read_index_request(&mut self, from: NodeId, id: u64, actions: &mut Vec<Action>) {
        let has_room = self.state.leader().is_some_and(|l| l.reads_waiting() < self.cfg.max_pending_reads);
        if has_room {
            self.leader_read(Requester::Remote(from, id), actions);
        } else {
            self.send(from, MessageBody::ReadIndexResponse { id, result: Err(()) }, actions);
        }
    }

    /// The leader's answer to a read this node forwarded (ignored once the
    /// read timed out).
    pub(super) fn on_read_index_response(
        &mut self,
        id: u64,
        result: Result<Index, ()>,
        actions: &mut Vec<Action>,
    ) {
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

    /// Leader: confirms a read by lease or a heartbeat round, or parks it until an entry of this
    /// term commits.
    pub(super) fn leader_read(&mut self, r: Requester, actions: &mut Vec<Action>) {
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

    /// A read may be served at `index`: locally once applied there, or answered to the follower
    /// that forwarded it.
    fn read_confirmed(&mut self, r: Requester, index: Index, actions: &mut Vec<Action>) {
        match r {
            Requester::Local(id) => self.reads_waiting_apply.push_back((index, id)),
            Requester::Remote(to, id) => {
                self.send(to, MessageBody::ReadIndexResponse { id, result: Ok(index) }, actions)
            }
        }
    }

    /// Answers a read with a failure (locally, or to the follower that forwarded it).
    pub(super) fn fail_read(&mut self, r: Requester, reason: DropReason, actions: &mut Vec<Action>) {
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

    /// Leader: a heartbeat round to every follower; its acknowledgements confirm reads and extend
    /// the lease.
    pub(super) fn broadcast_heartbeat(&mut self, actions: &mut Vec<Action>) {
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
    pub(super) fn advance_reads(&mut self, actions: &mut Vec<Action>) {
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
}
