//! The leader's view of one follower's replication: how far it matches, what
//! to send next, and the flow-control window (bounded in messages and bytes).

use std::collections::VecDeque;

use crate::types::{Index, Nanos};

/// Probe: one append at a time until the match point is found (after a
/// rejection, a new leadership or a lost message). Replicate: the match point
/// is known, appends are pipelined up to the inflight window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    Probe,
    Replicate,
}

/// Appends in flight to one follower, oldest first, bounded by count and bytes.
#[derive(Clone, Debug)]
pub struct Inflights {
    /// `(last index of the append, entry bytes)` per message.
    window: VecDeque<(Index, usize)>,
    bytes: usize,
    max_msgs: usize,
    max_bytes: usize,
}

impl Inflights {
    pub fn new(max_msgs: usize, max_bytes: usize) -> Inflights {
        assert!(max_msgs > 0 && max_bytes > 0);
        Inflights { window: VecDeque::new(), bytes: 0, max_msgs, max_bytes }
    }

    /// Full when either bound is reached; a message is only sent while not full,
    /// so the bytes bound may be exceeded by at most one message.
    pub fn full(&self) -> bool {
        self.window.len() >= self.max_msgs || self.bytes >= self.max_bytes
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.window.len()
    }

    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn add(&mut self, last_index: Index, bytes: usize) {
        debug_assert!(self.window.back().is_none_or(|&(i, _)| i < last_index));
        self.window.push_back((last_index, bytes));
        self.bytes += bytes;
    }

    /// Frees every message whose entries are all acknowledged (index <= `to`).
    pub fn free_to(&mut self, to: Index) {
        while let Some(&(last, bytes)) = self.window.front() {
            if last > to {
                break;
            }
            self.window.pop_front();
            self.bytes -= bytes;
        }
    }

    pub fn reset(&mut self) {
        self.window.clear();
        self.bytes = 0;
    }
}

/// Replication state of one follower (or learner) on the leader.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Highest index known to match the leader's log and be durable there.
    pub match_index: Index,
    /// Next index to send.
    pub next_index: Index,
    pub state: ProgressState,
    /// In Probe: an append is out and unanswered; send no other until a
    /// response or a heartbeat response.
    pub probe_sent: bool,
    pub inflights: Inflights,
    /// Replication session id carried by appends and echoed by responses.
    pub session: u64,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// The follower reports it lost its data and is rejoining: none of its
    /// acknowledgements count toward commit, reads, lease or check-quorum.
    pub rejoining: bool,
    /// Highest heartbeat round this follower acknowledged.
    pub acked_ctx: u64,
    /// Local time the match point last moved (or replication started).
    pub last_progress_ns: Nanos,
    /// The commit index carried by the last append sent.
    pub commit_sent: Index,
    /// The newest heartbeat round already sent when the match point last
    /// moved. A heartbeat of a later round reached the follower after it
    /// acknowledged `match_index`, so its answer reports at least that much
    /// log unless the follower lost its disk (`lost_data`).
    pub match_round: u64,
}

impl Progress {
    /// With entries outstanding and no progress for this many heartbeat
    /// intervals, an append is presumed lost and the follower is probed again.
    pub const STALLED_HEARTBEATS_MAX: u64 = 2;

    pub fn new(next_index: Index, session: u64, max_msgs: usize, max_bytes: usize) -> Progress {
        Progress {
            match_index: 0,
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            inflights: Inflights::new(max_msgs, max_bytes),
            session,
            recent_active: false,
            rejoining: false,
            acked_ctx: 0,
            last_progress_ns: 0,
            commit_sent: 0,
            match_round: 0,
        }
    }

    /// Whether no append may be sent now.
    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.full(),
        }
    }

    pub fn become_probe(&mut self) {
        self.state = ProgressState::Probe;
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
        self.inflights.reset();
    }

    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
        self.inflights.reset();
    }

    /// Records an append of entries up to `last_index` (`bytes` of entries)
    /// as sent. Empty appends move nothing and take no window slot.
    pub fn sent(&mut self, last_index: Option<Index>, bytes: usize) {
        match self.state {
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Replicate => {
                if let Some(last) = last_index {
                    debug_assert!(last >= self.next_index, "sent entries end before next");
                    self.next_index = last + 1;
                    self.inflights.add(last, bytes);
                }
            }
        }
    }

    /// Applies a success response received when `round` was the newest
    /// heartbeat round sent; returns whether the match point moved.
    pub fn maybe_update(&mut self, match_index: Index, round: u64) -> bool {
        let moved = match_index > self.match_index;
        if moved {
            self.match_index = match_index;
            self.match_round = round;
            self.probe_sent = false;
        }
        self.next_index = self.next_index.max(match_index + 1);
        self.inflights.free_to(match_index);
        debug_assert!(self.match_index < self.next_index);
        moved
    }

    /// A heartbeat answer of round `ctx` reports a log that ends at
    /// `last_index`: is that shorter than what the follower acknowledged
    /// before the round was sent? Acknowledged entries are durable and a
    /// follower never truncates entries that match its leader in the same
    /// term, so only a lost disk explains it (a wiped node restarted under
    /// the same id). Answers of earlier rounds may be overtaken by the
    /// acknowledgement and prove nothing.
    pub fn lost_data(&self, ctx: u64, last_index: Index) -> bool {
        ctx > self.match_round && last_index < self.match_index
    }

    /// Applies a rejection of an append whose `prev` index was `rejected`,
    /// retrying at `retry_at` (computed from the follower's hint). Returns
    /// false if the rejection is stale and was ignored.
    pub fn maybe_decrease_to(&mut self, rejected: Index, retry_at: Index) -> bool {
        match self.state {
            ProgressState::Replicate => {
                // Anything at or below the match point was answered before.
                if rejected <= self.match_index {
                    return false;
                }
                self.become_probe();
                self.next_index = (retry_at.min(rejected) + 1).max(self.match_index + 1);
                true
            }
            ProgressState::Probe => {
                // Only the answer to the probe in flight counts.
                if self.next_index == 0 || rejected != self.next_index - 1 {
                    return false;
                }
                self.next_index = (retry_at.min(rejected) + 1).max(self.match_index + 1);
                self.probe_sent = false;
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_later_round_showing_a_shorter_log_means_lost_data() {
        let mut p = Progress::new(1, 1, 4, 1 << 20);
        assert!(p.maybe_update(10, 5));
        assert!(!p.lost_data(5, 3), "round 5 was sent before the ack arrived: may be overtaken");
        assert!(!p.lost_data(6, 10), "a later round with the whole log");
        assert!(!p.lost_data(6, 12));
        assert!(p.lost_data(6, 9), "a later round with less than was acknowledged");
        assert!(!p.maybe_update(8, 9), "an older ack moves nothing");
        assert!(p.lost_data(6, 0));
    }

    #[test]
    fn inflights_bounded_by_msgs_and_bytes() {
        let mut w = Inflights::new(3, 100);
        w.add(1, 10);
        w.add(2, 10);
        assert!(!w.full());
        w.add(5, 10);
        assert!(w.full(), "3 messages is the message bound");
        w.free_to(2);
        assert_eq!((w.len(), w.bytes()), (1, 10));
        assert!(!w.full());
        w.add(6, 95);
        assert!(w.full(), "105 bytes is over the byte bound");
        w.free_to(100);
        assert_eq!((w.len(), w.bytes()), (0, 0));
    }

    #[test]
    fn probe_then_replicate_then_reject() {
        let mut p = Progress::new(11, 1, 4, 1 << 20);
        assert!(!p.is_paused());
        p.sent(Some(12), 10);
        assert!(p.is_paused(), "one probe at a time");
        // Stale rejection (for another prev index) is ignored.
        assert!(!p.maybe_decrease_to(3, 3));
        assert!(p.maybe_decrease_to(10, 4));
        assert_eq!(p.next_index, 5);
        assert!(!p.is_paused());
        assert!(p.maybe_update(6, 0));
        p.become_replicate();
        assert_eq!(p.next_index, 7);
        for last in 7..11 {
            assert!(!p.is_paused());
            p.sent(Some(last), 1);
        }
        assert!(p.is_paused(), "window of 4 is full");
        assert_eq!(p.next_index, 11);
        p.maybe_update(8, 0);
        assert!(!p.is_paused());
        // A rejection at or below match is stale.
        assert!(!p.maybe_decrease_to(8, 0));
        assert!(p.maybe_decrease_to(9, 8));
        assert_eq!((p.state, p.next_index), (ProgressState::Probe, 9));
    }
}
