//! Membership changes on the `RawNode`: the leader validates a request and
//! appends C(old,new) (or a learner-only C(new)), proposes C(new) once the
//! joint entry commits, keeps one replication session per member, and steps
//! down when a committed configuration no longer counts it as a voter. Every
//! node switches configuration when an entry is appended and reverts when
//! the entry is truncated (`ConfState`).

use super::{RawNode, RoleState};
use crate::confchange::{self, ConfChange, ConfChangeError};
use crate::io::{Action, DropReason};
use crate::message::MessageBody;
use crate::progress::Progress;
use crate::types::{Entry, EntryPayload, NodeId};

impl RawNode {
    pub(super) fn change_membership(&mut self, id: u64, changes: Vec<ConfChange>, actions: &mut Vec<Action>) {
        let drop = |reason, actions: &mut Vec<Action>| actions.push(Action::ProposalDropped { id, reason });
        let RoleState::Leader(l) = &mut self.state else {
            return drop(DropReason::NotLeader { leader_hint: self.leader_id }, actions);
        };
        if l.transfer.is_some() {
            return drop(DropReason::TransferInProgress, actions);
        }
        // One change at a time, and only once this leader's commit index is
        // current (an entry of its term committed): a configuration entry
        // from an earlier term might otherwise look committed when it is not.
        let leaving = self.membership.is_joint() && changes.is_empty();
        if self.conf.has_pending() || !l.committed_own_term || (l.conf_change_id.is_some() && !leaving) {
            return drop(DropReason::ConfChangeInProgress, actions);
        }
        let next = if self.membership.is_joint() {
            if !leaving {
                return drop(DropReason::ConfChangeInProgress, actions);
            }
            confchange::leave(&self.membership)
        } else {
            let target = match confchange::target(&self.membership, &changes) {
                Ok(t) => t,
                Err(e) => return drop(DropReason::InvalidConfChange(e), actions),
            };
            let last_index = self.log.last().index;
            for c in &changes {
                if let ConfChange::PromoteLearner(learner) = *c {
                    let match_index = l.progress.get(&learner).map_or(0, |p| p.match_index);
                    if match_index + self.cfg.max_promotion_lag_entries < last_index {
                        let e = ConfChangeError::LearnerBehind { id: learner, match_index, last_index };
                        return drop(DropReason::InvalidConfChange(e), actions);
                    }
                }
            }
            confchange::enter(&self.membership, &target)
        };
        let joint = next.is_joint();
        let entry = Entry {
            term: self.term,
            index: self.log.last().index + 1,
            payload: EntryPayload::Membership(next),
        };
        let log_id = entry.log_id();
        if joint {
            // The outcome is the entry that completes the change: C(new).
            l.conf_change_id = Some(id);
        } else {
            if let Some(entered) = l.conf_change_id.take() {
                l.proposals.push_back((log_id, entered));
            }
            l.proposals.push_back((log_id, id));
        }
        self.append_as_leader(vec![entry], actions);
        self.broadcast_append(actions);
    }

    /// Entries were appended to the log (by the leader, or a follower from
    /// its leader, possibly replacing a suffix): the configuration in force
    /// follows the newest configuration entry still in the log.
    pub(super) fn on_entries_appended(&mut self, entries: &[Entry]) {
        if !self.conf.on_append(entries) {
            return;
        }
        self.membership = self.conf.current().clone();
        let RoleState::Leader(l) = &mut self.state else { return };
        // One progress (and a fresh replication session) per member; a node
        // removed and added again gets a new session, so stale responses from
        // its earlier membership are ignored.
        let members = self.membership.members();
        let next = self.log.last().index + 1;
        let (max_msgs, max_bytes) = (self.cfg.max_inflight_msgs, self.cfg.max_inflight_bytes);
        l.progress.retain(|n, _| members.contains(n));
        l.transfers.retain(|n, _| members.contains(n));
        for &m in &members {
            if m != self.id && !l.progress.contains_key(&m) {
                let mut p = Progress::new(next, self.next_session, max_msgs, max_bytes);
                self.next_session += 1;
                p.recent_active = true;
                p.last_progress_ns = self.now;
                l.progress.insert(m, p);
            }
        }
    }

    /// After every step: fold committed configurations, then (leader, with
    /// `auto_leave_joint`) propose C(new) once C(old,new) is committed.
    /// Stepping down when removed happens after `Apply` (see below).
    pub(super) fn after_step_membership(&mut self, actions: &mut Vec<Action>) {
        self.conf.commit_to(self.log.committed());
        let RoleState::Leader(l) = &mut self.state else { return };
        if self.conf.has_pending() {
            return;
        }
        if self.membership.is_joint() && self.cfg.auto_leave_joint {
            let next = confchange::leave(&self.membership);
            let entry = Entry {
                term: self.term,
                index: self.log.last().index + 1,
                payload: EntryPayload::Membership(next),
            };
            let log_id = entry.log_id();
            if let Some(id) = l.conf_change_id.take() {
                l.proposals.push_back((log_id, id));
            }
            self.append_as_leader(vec![entry], actions);
            self.broadcast_append(actions);
        }
    }

    /// After `Apply`: a leader that a committed configuration no longer
    /// counts as a voter steps down once it handed that entry to its state
    /// machine (so the change's outcome is delivered here first).
    pub(super) fn maybe_step_down_removed(&mut self, actions: &mut Vec<Action>) {
        let RoleState::Leader(l) = &self.state else { return };
        let removed = self.cfg.step_down_when_removed
            && !self.conf.has_pending()
            && !self.membership.is_joint()
            && !self.membership.is_voter(self.id)
            && self.applying >= self.conf.committed_at();
        if !removed {
            return;
        }
        // Hand over to a voter that holds our whole log (it can win at
        // once), so the cluster does not wait for an election timeout.
        let last = self.log.last().index;
        let best: Option<NodeId> = self
            .membership
            .voters
            .iter()
            .copied()
            .find(|v| l.progress.get(v).is_some_and(|p| p.match_index == last));
        if let Some(to) = best {
            self.send(to, MessageBody::TimeoutNow, actions);
        }
        let term = self.term;
        self.become_follower(term, None, actions);
    }
}
