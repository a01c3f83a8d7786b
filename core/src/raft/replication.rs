//! The leader's side of replication: accepting proposals (with the
//! uncommitted-bytes bound), sending appends under per-follower flow control
//! (`Progress`: probe, replicate, inflight window), handling the followers'
//! answers (fast back-tracking by conflict term, lost-data detection), and
//! advancing the commit index by quorum, counting its own entry only once
//! durable and only by an entry of its term (Figure 8).

use super::apply::fetched_slice;
use super::snapshot_stream::finish_transfer;
use super::{RawNode, RoleState};
use crate::io::{Action, DropReason, Proposal};
use crate::message::{MessageBody, RejectHint};
use crate::progress::{Progress, ProgressState};
use crate::quorum::joint_committed;
use crate::types::{Entry, EntryPayload, Index, LogId, NodeId};

impl RawNode {
    /// Storage made the log durable up to `up_to`: the leader may commit, a follower
    /// acknowledges.
    pub(super) fn on_log_persisted(&mut self, up_to: LogId, actions: &mut Vec<Action>) {
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

    /// Appends entries of this term to the local log (persisted in parallel with replication).
    pub(super) fn append_as_leader(&mut self, entries: Vec<Entry>, actions: &mut Vec<Action>) {
        debug_assert!(!entries.is_empty());
        self.log.append(&entries);
        self.on_entries_appended(&entries);
        actions.push(Action::AppendLog { entries });
    }

    /// Leader: appends what fits the entry and uncommitted-bytes bounds and replicates it; others
    /// drop with a hint.
    pub(super) fn propose(&mut self, proposals: Vec<Proposal>, actions: &mut Vec<Action>) {
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

    /// Sends whatever each follower's flow control allows.
    pub(super) fn broadcast_append(&mut self, actions: &mut Vec<Action>) {
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
    pub(super) fn send_appends(&mut self, to: NodeId, mut send_empty: bool, actions: &mut Vec<Action>) {
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

    /// Leader: a follower matched (advance, maybe commit) or refused (back off by its hint).
    pub(super) fn on_append_response(
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

    /// Leader: a follower is alive and acknowledged a read round; resumes stalled replication.
    pub(super) fn on_heartbeat_response(
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

    /// Leader: advances the commit index to what a quorum holds durably, then serves reads
    /// waiting for it.
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

    /// Leader: records whether follower `from` says it is rejoining after
    /// data loss. Sticky while it is a voter: a message it sent before it
    /// lost its disk may arrive late saying "not rejoining", and must not
    /// make its later acknowledgements count. It can only stop rejoining
    /// after leaving the voters (see `rejoin_evidence`), so the flag is
    /// followed as sent while it is a learner or not a member.
    pub(super) fn note_rejoining(&mut self, from: NodeId, rejoining: bool) {
        let voter = self.membership.is_voter(from);
        if let Some(p) = self.state.leader_mut().and_then(|l| l.progress.get_mut(&from)) {
            p.rejoining = rejoining || (p.rejoining && voter);
        }
    }
}
