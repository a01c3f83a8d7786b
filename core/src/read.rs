//! Linearizable reads: who asked, the index they may read at, and the
//! heartbeat rounds that confirm leadership (ReadIndex) or extend the lease.

use std::collections::VecDeque;

use crate::types::{Index, Nanos, NodeId};

/// Who is waiting for a read index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requester {
    /// A read submitted on this node.
    Local(u64),
    /// A follower's read, forwarded to this leader: `(follower, its read id)`.
    Remote(NodeId, u64),
}

/// A read waiting for a heartbeat round `ctx` to be acknowledged by a quorum.
#[derive(Clone, Copy, Debug)]
pub struct PendingRead {
    pub ctx: u64,
    pub index: Index,
    pub requester: Requester,
}

/// Heartbeat rounds of the current leadership whose quorum acknowledgement
/// is still outstanding, with the local time each was sent (the lease starts
/// at the send time of an acknowledged round, never at the receive time).
#[derive(Clone, Debug, Default)]
pub struct Rounds {
    sent: VecDeque<(u64, Nanos)>,
}

impl Rounds {
    /// Bound on remembered rounds: older ones are forgotten, which can only
    /// shorten the lease (safe), never lengthen it.
    pub const MAX_ROUNDS: usize = 1024;

    pub fn push(&mut self, ctx: u64, sent_at: Nanos) {
        if self.sent.len() == Self::MAX_ROUNDS {
            self.sent.pop_front();
        }
        self.sent.push_back((ctx, sent_at));
    }

    /// Forgets rounds up to `ctx` and returns the send time of `ctx` itself if
    /// it was remembered.
    pub fn confirm(&mut self, ctx: u64) -> Option<Nanos> {
        let mut found = None;
        while let Some(&(c, at)) = self.sent.front() {
            if c > ctx {
                break;
            }
            if c == ctx {
                found = Some(at);
            }
            self.sent.pop_front();
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_confirm_returns_send_time() {
        let mut r = Rounds::default();
        r.push(1, 10);
        r.push(2, 20);
        r.push(3, 30);
        assert_eq!(r.confirm(2), Some(20));
        assert_eq!(r.confirm(2), None, "forgotten once confirmed");
        assert_eq!(r.confirm(3), Some(30));
    }
}
