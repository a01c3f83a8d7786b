//! Leadership transfer: the leader stops taking proposals, brings the
//! transferee up to date, sends it `TimeoutNow` once it holds the whole log,
//! and gives up after an election timeout; the transferee campaigns at once,
//! bypassing the voters' stickiness.

use super::{LeaderState, RawNode, RoleState};
use crate::io::Action;
use crate::message::MessageBody;
use crate::types::{Nanos, NodeId};

impl LeaderState {
    /// Ends a leadership transfer whose deadline passed.
    pub(super) fn expire_transfer(&mut self, now: Nanos) {
        if let Some((_, deadline)) = self.transfer {
            if now >= deadline {
                self.transfer = None;
            }
        }
    }
}

impl RawNode {
    /// Leader: starts handing leadership to the voter `to` (proposals wait meanwhile).
    pub(super) fn transfer_leadership(&mut self, to: NodeId, actions: &mut Vec<Action>) {
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

    /// Leader: tells the transferee to campaign once it holds the whole log (once per term).
    pub(super) fn maybe_send_timeout_now(&mut self, to: NodeId, actions: &mut Vec<Action>) {
        let last = self.log.last().index;
        let RoleState::Leader(l) = &mut self.state else { return };
        let caught_up = l.progress.get(&to).is_some_and(|p| p.match_index == last);
        if l.transfer.is_some_and(|(t, _)| t == to) && caught_up && !l.timeout_now_sent {
            l.timeout_now_sent = true;
            self.send(to, MessageBody::TimeoutNow, actions);
        }
    }

    /// Follower: the leader `from` asks this node to campaign at once
    /// (leadership transfer).
    pub(super) fn on_timeout_now(&mut self, from: NodeId, actions: &mut Vec<Action>) {
        self.heard_from_leader(from, actions);
        if self.may_campaign() {
            self.campaign(true, actions);
        }
    }
}
