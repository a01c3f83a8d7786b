//! Snapshot transfer state on both sides, kept apart from the state machine
//! that drives it (`raft/snapshot_stream.rs`).
//!
//! The core never holds snapshot data: the leader asks the driver for chunk
//! `offset..` of the snapshot it names (`Action::FetchSnapshotChunk`) and
//! forwards what comes back; the follower hands each in-order chunk to the
//! driver (`Action::ReceiveSnapshotChunk`) and, after the last one, asks it to
//! install (`Action::InstallSnapshot`). A transfer is one (leader term,
//! leader, replication session, snapshot) tuple: a chunk of any other
//! transfer restarts staging from offset 0 or is ignored, so staged bytes of
//! two transfers never mix and nothing is installed before the last chunk.

use std::collections::VecDeque;

use crate::types::{LogId, Nanos, NodeId, SnapshotMeta, Term};

/// The leader's side of one transfer to one follower.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// The follower's replication session when the transfer started: a
    /// response from another session belongs to another transfer.
    pub session: u64,
    pub meta: SnapshotMeta,
    /// Bytes the follower confirmed, contiguous from 0.
    pub acked: u64,
    /// Next offset to read from the driver.
    pub next: u64,
    /// The highest `next` of this transfer: bytes up to here were sent at
    /// least once, so the follower may hold them even after a rewind.
    pub sent_max: u64,
    /// The read in progress (`FetchSnapshotChunk` emitted, no answer yet).
    pub reading: Option<u64>,
    /// `(offset, end)` of chunks sent and not yet acknowledged, ascending.
    pub inflight: VecDeque<(u64, u64)>,
    /// Size of the snapshot, known once the last chunk was read.
    pub len: Option<u64>,
    /// Local time the follower last confirmed new bytes (or the transfer started).
    pub last_progress_ns: Nanos,
    /// `acked` at the last fast retransmission (one per stall, not one per
    /// duplicate acknowledgement).
    pub rewound_at: Option<u64>,
    /// Chunks allowed in flight right now (within the configured window):
    /// one after a retransmission, doubling with every acknowledgement, so a
    /// loss pattern that matches the window cannot hit the same chunk forever.
    pub cwnd: usize,
}

impl Outgoing {
    pub fn new(session: u64, meta: SnapshotMeta, now: Nanos) -> Outgoing {
        Outgoing {
            session,
            meta,
            acked: 0,
            next: 0,
            sent_max: 0,
            reading: None,
            inflight: VecDeque::new(),
            len: None,
            last_progress_ns: now,
            rewound_at: None,
            cwnd: usize::MAX,
        }
    }

    pub fn snapshot(&self) -> LogId {
        self.meta.last_log_id
    }

    /// May another chunk be read now (window not full, more to read)?
    pub fn can_read(&self, max_inflight_chunks: usize) -> bool {
        self.reading.is_none()
            && self.inflight.len() < max_inflight_chunks.min(self.cwnd)
            && self.len.is_none_or(|len| self.next < len)
    }

    /// A chunk `offset..offset+len` was read and sent; `done` if it is the last.
    pub fn sent(&mut self, offset: u64, len: u64, done: bool) {
        debug_assert_eq!(offset, self.next);
        self.reading = None;
        self.next = offset + len;
        self.sent_max = self.sent_max.max(self.next);
        self.inflight.push_back((offset, self.next));
        if done {
            self.len = Some(self.next);
        }
    }

    /// The follower holds `next_offset` bytes. Returns whether it moved.
    ///
    /// After a rewind the follower may answer with more than was re-sent
    /// since: chunks sent before the rewind did arrive, only their
    /// acknowledgements were lost. Any offset up to `sent_max` is bytes of
    /// this same transfer, so the leader skips ahead instead of re-sending a
    /// prefix the follower keeps rejecting as already staged (which looped
    /// forever: sim seed 163010, 3 nodes).
    pub fn acked_to(&mut self, next_offset: u64, now: Nanos) -> bool {
        if next_offset <= self.acked || next_offset > self.next.max(self.sent_max) {
            return false;
        }
        if next_offset > self.next {
            // Everything re-sent since the rewind is below `next_offset`; a
            // read in progress is for an offset we no longer want.
            self.next = next_offset;
            self.reading = None;
        }
        self.acked = next_offset;
        self.last_progress_ns = now;
        self.rewound_at = None;
        self.cwnd = self.cwnd.saturating_mul(2);
        while self.inflight.front().is_some_and(|&(_, end)| end <= next_offset) {
            self.inflight.pop_front();
        }
        true
    }

    /// Start again from byte 0: the follower answered with less than it
    /// had confirmed. That is a follower that restarted, or just a stale
    /// duplicate of an earlier answer from one that did not: it may still
    /// hold everything it staged. `sent_max` is kept so that its answers up
    /// to there are taken (the bytes are this same transfer's); forgetting
    /// it left the leader re-sending a prefix that the follower answered
    /// with an offset the leader refused as never sent, forever (sim seed
    /// 7005004, 3 nodes: leader at offset 192, follower at 512).
    pub fn restart(&mut self, now: Nanos) {
        let sent_max = self.sent_max;
        *self = Outgoing::new(self.session, self.meta.clone(), now);
        self.sent_max = sent_max;
    }

    /// Go back to the first unacknowledged byte (chunks were lost). An
    /// outstanding read is forgotten: its answer no longer matches `reading`.
    pub fn rewind(&mut self, now: Nanos) {
        self.next = self.acked;
        self.reading = None;
        self.inflight.clear();
        self.last_progress_ns = now;
        self.rewound_at = Some(self.acked);
        self.cwnd = 1;
    }
}

/// The follower's side: the transfer being staged by the driver.
#[derive(Clone, Debug)]
pub struct Incoming {
    pub term: Term,
    pub leader: NodeId,
    pub session: u64,
    pub meta: SnapshotMeta,
    /// Bytes handed to the driver so far (the next expected offset).
    pub next: u64,
    /// The last chunk arrived and `InstallSnapshot` was emitted: waiting for
    /// `SnapshotInstalled`. The log must not change meanwhile.
    pub installing: bool,
}

impl Incoming {
    pub fn is_same_transfer(&self, term: Term, leader: NodeId, session: u64, snapshot: LogId) -> bool {
        self.term == term
            && self.leader == leader
            && self.session == session
            && self.meta.last_log_id == snapshot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ack_past_a_rewind_skips_ahead() {
        let meta = SnapshotMeta { last_log_id: LogId::new(2, 50), membership: Default::default() };
        let mut o = Outgoing::new(7, meta, 0);
        for offset in [0, 64, 128, 192] {
            o.reading = Some(offset);
            o.sent(offset, 64, false);
        }
        // Every acknowledgement was lost: the stall rewinds to 0 and re-sends one chunk.
        o.rewind(1);
        o.reading = Some(0);
        o.sent(0, 64, false);
        assert_eq!(o.sent_max, 256);
        o.reading = Some(64);
        // The follower staged 192 bytes of this transfer before the rewind.
        assert!(o.acked_to(192, 2), "bytes sent before the rewind count");
        assert_eq!((o.acked, o.next, o.reading, o.inflight.len()), (192, 192, None, 0));
        assert!(!o.acked_to(300, 3), "never past what was sent");
    }

    #[test]
    fn a_stale_answer_below_the_acked_point_does_not_forget_what_was_sent() {
        let meta = SnapshotMeta { last_log_id: LogId::new(2, 50), membership: Default::default() };
        let mut o = Outgoing::new(7, meta, 0);
        for offset in [0, 64, 128, 192, 256, 320, 384, 448] {
            o.reading = Some(offset);
            o.sent(offset, 64, false);
        }
        assert!(o.acked_to(192, 1));
        // A duplicated early answer (64) arrives late: the leader restarts
        // the transfer, but the follower still holds 512 bytes of it.
        o.restart(2);
        assert_eq!((o.acked, o.next, o.inflight.len()), (0, 0, 0));
        o.reading = Some(0);
        o.sent(0, 64, false);
        assert!(o.acked_to(512, 3), "the follower's real position is accepted");
        assert_eq!((o.acked, o.next), (512, 512));
    }

    #[test]
    fn window_acks_and_rewind() {
        let meta = SnapshotMeta { last_log_id: LogId::new(2, 50), membership: Default::default() };
        let mut o = Outgoing::new(7, meta, 0);
        assert!(o.can_read(2));
        o.reading = Some(0);
        assert!(!o.can_read(2), "one read at a time");
        o.sent(0, 10, false);
        o.reading = Some(10);
        o.sent(10, 10, false);
        assert!(!o.can_read(2), "window of 2 chunks is full");
        assert!(!o.acked_to(25, 1), "beyond what was sent");
        assert!(o.acked_to(10, 1));
        assert!(o.can_read(2));
        assert!(!o.acked_to(10, 2), "duplicate");
        o.rewind(3);
        assert_eq!((o.next, o.inflight.len(), o.rewound_at), (10, 0, Some(10)));
        o.reading = Some(10);
        o.sent(10, 5, false);
        assert!(!o.can_read(2), "one chunk at a time after a retransmission");
        assert!(o.acked_to(15, 4));
        o.reading = Some(15);
        o.sent(15, 5, false);
        assert!(o.can_read(2), "the window opens again with acknowledgements");
        o.reading = Some(20);
        o.sent(20, 0, true);
        o.inflight.clear();
        o.reading = None;
        o.acked = 20;
        assert!(!o.can_read(2), "everything read");
        let mut o = Outgoing::new(7, o.meta.clone(), 0);
        o.reading = Some(0);
        o.sent(0, 10, true);
        assert_eq!(o.len, Some(10));
        assert!(o.acked_to(10, 4));
        assert!(!o.can_read(2), "everything read");
    }
}
