//! Snapshots on the `RawNode`: recording the state machine's snapshots,
//! the compaction policy, and streaming a snapshot to a follower whose next
//! entry was compacted away (leader) / staging and installing it (follower).
//!
//! Flow control: the leader reads one chunk at a time from the driver and
//! keeps at most `max_snapshot_inflight_chunks` unacknowledged; the follower
//! acknowledges every chunk with the bytes it staged. A duplicate
//! acknowledgement (a chunk arrived out of order) or no progress for
//! `Progress::STALLED_HEARTBEATS_MAX` heartbeat intervals sends everything
//! again from the first unacknowledged byte.

use std::collections::BTreeMap;

use super::{LeaderState, RawNode, RoleState};
use crate::io::Action;
use crate::message::MessageBody;
use crate::progress::Progress;
use crate::snapshot::{Incoming, Outgoing};
use crate::types::{Index, LogId, Nanos, NodeId, SnapshotMeta};

/// What a node knows about snapshots.
#[derive(Debug, Default)]
pub(super) struct SnapState {
    /// The newest snapshot: recovered, reported by the state machine, or installed.
    pub meta: Option<SnapshotMeta>,
    /// The transfer this node (as a follower) is staging.
    pub incoming: Option<Incoming>,
    /// Applied index when a snapshot was last taken or asked for.
    pub wanted_at: Index,
    /// Entry bytes handed to `Apply` since then.
    pub applied_bytes: u64,
}

impl SnapState {
    pub fn new(meta: Option<SnapshotMeta>) -> SnapState {
        let wanted_at = meta.as_ref().map_or(0, |m| m.last_log_id.index);
        SnapState { meta, incoming: None, wanted_at, applied_bytes: 0 }
    }

    /// An install was requested and not acknowledged yet: the log must not change.
    pub fn installing(&self) -> bool {
        self.incoming.as_ref().is_some_and(|i| i.installing)
    }

    fn index(&self) -> Index {
        self.meta.as_ref().map_or(0, |m| m.last_log_id.index)
    }
}

impl LeaderState {
    /// `to` needs entries that were compacted away: replication to it pauses
    /// while snapshot `meta` streams. False if `to` has no progress here.
    pub(super) fn start_snapshot(&mut self, to: NodeId, meta: SnapshotMeta, now: Nanos) -> bool {
        let Some(p) = self.progress.get_mut(&to) else { return false };
        p.become_probe();
        self.transfers.insert(to, Outgoing::new(p.session, meta, now));
        true
    }
}

/// Leader, on a successful append response: a follower that reports a
/// match at or past the snapshot installed it; replication resumes.
pub(super) fn finish_transfer(transfers: &mut BTreeMap<NodeId, Outgoing>, from: NodeId, match_index: Index) {
    if transfers.get(&from).is_some_and(|t| match_index >= t.snapshot().index) {
        transfers.remove(&from);
    }
}

impl RawNode {
    /// `Input::SnapshotCreated`.
    pub(super) fn on_snapshot_created(&mut self, meta: SnapshotMeta, actions: &mut Vec<Action>) {
        let s = meta.last_log_id;
        let newer = s.index > self.snap.index().max(self.log.snapshot().index);
        if !newer || s.index > self.applied || !self.log.matches(s) {
            return; // Stale, not applied yet, or not of this log: ignore.
        }
        self.snap.meta = Some(meta);
        self.snap.wanted_at = self.snap.wanted_at.max(s.index);
        self.snap.applied_bytes = 0;
        let up_to = s.index.saturating_sub(self.cfg.log_keep_tail_entries);
        if up_to > self.log.snapshot().index {
            let term = self.log.term_at(up_to).expect("between the compaction point and the snapshot");
            let up_to = LogId::new(term, up_to);
            self.log.compact_to(up_to);
            actions.push(Action::CompactLog { up_to });
        }
    }

    /// The compaction policy, after every step.
    pub(super) fn maybe_want_snapshot(&mut self, actions: &mut Vec<Action>) {
        let since = self.snap.wanted_at.max(self.snap.index());
        let by_entries = self.applied >= since.saturating_add(self.cfg.snapshot_after_entries);
        let by_bytes = self.snap.applied_bytes >= self.cfg.snapshot_after_bytes;
        if (by_entries || by_bytes) && self.applied > self.snap.index() {
            self.snap.wanted_at = self.applied;
            self.snap.applied_bytes = 0;
            actions.push(Action::SnapshotWanted { up_to: self.applied });
        }
    }

    /// Reads the next chunk if the window allows.
    pub(super) fn pump_snapshot(&mut self, to: NodeId, actions: &mut Vec<Action>) {
        let window = self.cfg.max_snapshot_inflight_chunks;
        let max_bytes = self.cfg.max_snapshot_chunk_bytes;
        let RoleState::Leader(l) = &mut self.state else { return };
        let Some(t) = l.transfers.get_mut(&to) else { return };
        if t.can_read(window) {
            t.reading = Some(t.next);
            actions.push(Action::FetchSnapshotChunk {
                to,
                snapshot: t.snapshot(),
                offset: t.next,
                max_bytes,
            });
        }
    }

    /// `Input::SnapshotChunkRead`.
    pub(super) fn on_snapshot_chunk_read(
        &mut self,
        to: NodeId,
        snapshot: LogId,
        offset: u64,
        data: Option<bytes::Bytes>,
        done: bool,
        actions: &mut Vec<Action>,
    ) {
        let RoleState::Leader(l) = &mut self.state else { return };
        let Some(t) = l.transfers.get_mut(&to) else { return };
        if t.snapshot() != snapshot || t.reading != Some(offset) {
            return; // An answer for an abandoned read.
        }
        let data = match data {
            Some(d) if !d.is_empty() || done => d,
            _ => {
                // The snapshot is gone (or the driver cannot read on): start
                // over with the newest one now, or at the next heartbeat
                // response if it is the same (no tight loop with the driver).
                l.transfers.remove(&to);
                let newer = self.snap.meta.as_ref().filter(|m| m.last_log_id != snapshot);
                if let Some(meta) = newer.cloned() {
                    if l.start_snapshot(to, meta, self.now) {
                        self.pump_snapshot(to, actions);
                    }
                }
                return;
            }
        };
        t.sent(offset, data.len() as u64, done);
        let session = t.session;
        let meta = t.meta.clone();
        self.send(to, MessageBody::InstallSnapshot { session, meta, offset, data, done }, actions);
        self.pump_snapshot(to, actions);
    }

    /// Leader: the follower staged `next_offset` bytes.
    pub(super) fn on_snapshot_response(
        &mut self,
        from: NodeId,
        session: u64,
        snapshot: LogId,
        next_offset: u64,
        actions: &mut Vec<Action>,
    ) {
        let now = self.now;
        let RoleState::Leader(l) = &mut self.state else { return };
        let Some(p) = l.progress.get_mut(&from) else { return };
        if p.session != session {
            return;
        }
        p.recent_active = true;
        let Some(t) = l.transfers.get_mut(&from) else { return };
        if t.session != session || t.snapshot() != snapshot {
            return;
        }
        if t.acked_to(next_offset, now) {
            // Progress.
        } else if next_offset < t.acked {
            // The follower lost what it staged (it restarted), or this is a
            // stale duplicate of an early answer: from the top either way.
            t.restart(now);
        } else if next_offset == t.acked && !t.inflight.is_empty() && t.rewound_at != Some(t.acked) {
            // A chunk arrived out of order: one before it was lost.
            t.rewind(now);
        }
        self.pump_snapshot(from, actions);
    }

    /// Leader, on a heartbeat response: a transfer without progress for a
    /// while lost its chunks (or their acknowledgements); send them again.
    pub(super) fn snapshot_heartbeat(&mut self, from: NodeId, actions: &mut Vec<Action>) {
        let now = self.now;
        let stall = Progress::STALLED_HEARTBEATS_MAX * self.cfg.heartbeat_interval_ns;
        let RoleState::Leader(l) = &mut self.state else { return };
        let Some(t) = l.transfers.get_mut(&from) else { return };
        if now.saturating_sub(t.last_progress_ns) < stall {
            return;
        }
        if t.len == Some(t.acked) {
            // Every byte arrived but no install acknowledgement: it was lost
            // (or the follower restarted). Start over: a follower that
            // installed answers the first chunk with its match at once.
            l.transfers.remove(&from);
            self.send_appends(from, true, actions);
            return;
        }
        t.rewind(now);
        t.rewound_at = None;
        self.pump_snapshot(from, actions);
    }

    /// Follower: one chunk of the leader's snapshot.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_install_snapshot(
        &mut self,
        from: NodeId,
        session: u64,
        meta: SnapshotMeta,
        offset: u64,
        data: bytes::Bytes,
        done: bool,
        actions: &mut Vec<Action>,
    ) {
        self.heard_from_leader(from, actions);
        if self.snap.installing() {
            return; // The answer leaves with `SnapshotInstalled`.
        }
        if session != self.follower_ack.session {
            self.follower_ack.session = session;
            self.follower_ack.acked = 0;
        }
        let s = meta.last_log_id;
        let committed = self.log.committed();
        if s.index <= committed || self.log.matches(s) {
            // We hold everything it covers: no install, just acknowledge.
            if s.index > committed {
                self.log.commit_to(s.index);
            }
            self.follower_ack.matched = self.follower_ack.matched.max(self.log.committed());
            self.maybe_ack(from, true, actions);
            return;
        }
        let term = self.term;
        let same = self.snap.incoming.as_ref().is_some_and(|i| i.is_same_transfer(term, from, session, s));
        if !same {
            if offset != 0 {
                let body = MessageBody::SnapshotResponse { session, snapshot: s, next_offset: 0 };
                self.send(from, body, actions);
                return;
            }
            // A new transfer replaces any other being staged (offset 0 tells
            // the driver to discard what it staged).
            self.snap.incoming = Some(Incoming {
                term,
                leader: from,
                session,
                meta: meta.clone(),
                next: 0,
                installing: false,
            });
        }
        let inc = self.snap.incoming.as_mut().expect("set above");
        if offset != inc.next {
            let next_offset = inc.next;
            self.send(from, MessageBody::SnapshotResponse { session, snapshot: s, next_offset }, actions);
            return;
        }
        inc.next += data.len() as u64;
        let next_offset = inc.next;
        actions.push(Action::ReceiveSnapshotChunk { snapshot: s, offset, data, done });
        if done {
            inc.installing = true;
            actions.push(Action::InstallSnapshot { meta });
        }
        self.send(from, MessageBody::SnapshotResponse { session, snapshot: s, next_offset }, actions);
    }

    /// `Input::SnapshotInstalled`: the log is now the snapshot.
    pub(super) fn on_snapshot_installed(&mut self, meta: SnapshotMeta, actions: &mut Vec<Action>) {
        if !self.snap.incoming.as_ref().is_some_and(|i| i.installing && i.meta == meta) {
            return;
        }
        let inc = self.snap.incoming.take().expect("checked above");
        let s = meta.last_log_id;
        debug_assert!(s.index > self.log.committed());
        self.log.install_snapshot(s);
        self.conf.reset(meta.membership.clone());
        self.membership = meta.membership.clone();
        self.applying = s.index;
        self.applied = s.index;
        self.fetched.clear();
        self.snap.meta = Some(meta);
        self.snap.wanted_at = s.index;
        self.snap.applied_bytes = 0;
        if !self.state.is_leader() && self.term == inc.term && self.leader_id == Some(inc.leader) {
            self.follower_ack.session = inc.session;
            self.follower_ack.matched = s.index;
            self.follower_ack.acked = s.index;
            let body = MessageBody::AppendResponse { session: inc.session, result: Ok(s.index) };
            self.send(inc.leader, body, actions);
        }
    }
}
