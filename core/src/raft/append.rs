//! The follower's side of replication: accepting the leader's appends
//! (well-formed, matching at `prev`, never contradicting a committed
//! entry), taking its commit index from appends and heartbeats, and
//! acknowledging only what is durable (`FollowerAck`). Rejoining after data
//! loss ends here too, on evidence from an append (`rejoin_evidence`).

use super::{RawNode, RoleState};
use crate::io::Action;
use crate::message::{MessageBody, RejectHint};
use crate::types::{Entry, Index, LogId, NodeId, Term};

impl RawNode {
    /// Follower: appends from the leader `from` after the first entry that differs, and
    /// acknowledges what is durable.
    pub(super) fn on_append(
        &mut self,
        from: NodeId,
        session: u64,
        prev: LogId,
        entries: Vec<Entry>,
        commit: Index,
        actions: &mut Vec<Action>,
    ) {
        self.heard_from_leader(from, actions);
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

    fn durable_index(&self) -> Index {
        if bug!(self, AckAppendBeforeDurable) {
            self.log.last().index
        } else {
            self.log.persisted()
        }
    }

    /// Acknowledges the durable part of what matches the leader, if it grew.
    /// `force` answers even without growth: an append whose entries are all
    /// durable already (a probe, a repeat) always gets a response.
    pub(super) fn maybe_ack(&mut self, leader: NodeId, force: bool, actions: &mut Vec<Action>) {
        let ack = self.durable_index().min(self.follower_ack.matched);
        if ack > self.follower_ack.acked || force {
            self.follower_ack.acked = self.follower_ack.acked.max(ack);
            let session = self.follower_ack.session;
            self.send(leader, MessageBody::AppendResponse { session, result: Ok(ack) }, actions);
        }
    }

    /// Follower: a heartbeat of the leader `from` carries its commit index.
    pub(super) fn on_heartbeat(&mut self, from: NodeId, commit: Index, ctx: u64, actions: &mut Vec<Action>) {
        self.heard_from_leader(from, actions);
        self.commit_from_leader(commit);
        let last_index = self.log.last().index;
        self.send(from, MessageBody::HeartbeatResponse { ctx, last_index }, actions);
    }

    /// Follower: takes the commit index a heartbeat (or `Quiesce`) of the
    /// current leader carries.
    pub(super) fn commit_from_leader(&mut self, commit: Index) {
        // The leader caps `commit` at the match index it keeps for
        // us, which holds across our restarts (we acknowledge only
        // what is durable) but not across a lost disk: a wiped node
        // refilled by a stale leader holds other entries at those
        // indexes, and committed one of them here (sim seed 23064981,
        // 5 nodes chaos: it applied 1@53, the cluster 2@53). While
        // rejoining, commit only as far as an append of this leader
        // showed our log to match its own.
        let verified =
            if self.rejoining { self.follower_ack.matched.max(self.log.committed()) } else { Index::MAX };
        let commit = commit.min(self.log.last().index).min(verified);
        self.log.commit_to(commit);
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
}
