//! Leader-local TTL deadlines.
//!
//! The replicated state holds, for every temporary node, lock holder and lock waiter, a
//! duration and an `arm_id`. It holds no deadline, because the nodes' clocks share no origin.
//! Each node keeps this tracker beside its state machine: an arming learnt in `apply` gets
//! its deadline from the local clock the first time the leader asks (`now + duration`),
//! and `rearm_all` restarts every deadline from scratch when a node becomes leader. A deadline
//! is therefore never shorter than the TTL by any leader's clock, and a leader change only
//! lengthens it. When a deadline passes, the leader proposes `Expire { key, arm_id }`; the
//! state machine applies it only if that arming is still current.
//!
//! Nothing here is replicated or part of the digest.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use tarn_core::Nanos;

/// Stale ids tolerated in `pending` before it is compacted.
const PENDING_SLACK: usize = 1024;

#[derive(Debug)]
struct Armed {
    key: Arc<str>,
    duration_nanos: Nanos,
    /// `None` until the leader's clock has been seen after the arming was applied.
    deadline_nanos: Option<Nanos>,
}

/// Deadlines by arming, with a deadline-ordered index for "what has passed at `now`".
#[derive(Debug, Default)]
pub(crate) struct TtlTracker {
    armed: HashMap<u64, Armed>,
    by_deadline: BTreeSet<(Nanos, u64)>,
    /// Armings without a deadline yet, in arming order.
    pending: Vec<u64>,
}

impl TtlTracker {
    pub fn arm(&mut self, arm_id: u64, key: Arc<str>, duration_nanos: Nanos) {
        let previous = self.armed.insert(arm_id, Armed { key, duration_nanos, deadline_nanos: None });
        debug_assert!(previous.is_none(), "arm id {arm_id} reused");
        // Followers never resolve pending armings, and disarmed ids stay in `pending` until
        // resolved: compact when it outgrows what can still be pending (amortized O(1)).
        if self.pending.len() >= 2 * self.armed.len() + PENDING_SLACK {
            let armed = &self.armed;
            self.pending.retain(|id| armed.get(id).is_some_and(|a| a.deadline_nanos.is_none()));
        }
        self.pending.push(arm_id);
    }

    /// An arming whose deadline is already known (the planted bug
    /// `TtlDeadlineFromProposerClock`: a deadline in another node's clock).
    #[cfg(feature = "planted-bugs")]
    pub fn arm_with_deadline(&mut self, arm_id: u64, key: Arc<str>, duration_nanos: Nanos, deadline: Nanos) {
        let armed = Armed { key, duration_nanos, deadline_nanos: Some(deadline) };
        self.armed.insert(arm_id, armed);
        self.by_deadline.insert((deadline, arm_id));
    }

    pub fn disarm(&mut self, arm_id: u64) {
        if let Some(armed) = self.armed.remove(&arm_id) {
            if let Some(deadline) = armed.deadline_nanos {
                self.by_deadline.remove(&(deadline, arm_id));
            }
            // A pending id is skipped when it is resolved (it is no longer in `armed`).
        }
    }

    pub fn len(&self) -> usize {
        self.armed.len()
    }

    fn resolve_pending(&mut self, now: Nanos) {
        for arm_id in self.pending.drain(..) {
            if let Some(armed) = self.armed.get_mut(&arm_id) {
                if armed.deadline_nanos.is_none() {
                    let deadline = now.saturating_add(armed.duration_nanos);
                    armed.deadline_nanos = Some(deadline);
                    self.by_deadline.insert((deadline, arm_id));
                }
            }
        }
    }

    /// The earliest deadline, after giving pending armings their deadline from `now`.
    pub fn next_deadline(&mut self, now: Nanos) -> Option<Nanos> {
        self.resolve_pending(now);
        self.by_deadline.first().map(|&(deadline, _)| deadline)
    }

    /// Up to `max` armings whose deadline is `<= now`, earliest first. Each is pushed back by
    /// `retry_nanos`, so a proposal lost to a leader change is retried, not forgotten.
    pub fn expired(&mut self, now: Nanos, max: usize, retry_nanos: Nanos) -> Vec<(Arc<str>, u64)> {
        self.resolve_pending(now);
        let mut out = Vec::new();
        while out.len() < max {
            let Some(&(deadline, arm_id)) = self.by_deadline.first() else { break };
            if deadline > now {
                break;
            }
            self.by_deadline.pop_first();
            let armed = self.armed.get_mut(&arm_id).expect("by_deadline only holds armed ids");
            let retry = now.saturating_add(retry_nanos.max(1));
            armed.deadline_nanos = Some(retry);
            self.by_deadline.insert((retry, arm_id));
            out.push((armed.key.clone(), arm_id));
        }
        out
    }

    /// Restarts every deadline at `now + duration` (a node became leader).
    pub fn rearm_all(&mut self, now: Nanos) {
        self.pending.clear();
        self.by_deadline.clear();
        for (&arm_id, armed) in self.armed.iter_mut() {
            let deadline = now.saturating_add(armed.duration_nanos);
            armed.deadline_nanos = Some(deadline);
            // Insertion order does not matter: the set orders by (deadline, arm id).
            self.by_deadline.insert((deadline, arm_id));
        }
    }

    /// The same armings with no deadline yet, armed in id order: what rebuilding from the
    /// tree gives (the tracker mirrors the tree's armings), in O(armings) instead of a pass
    /// over every node.
    pub fn pending_copy(&self) -> TtlTracker {
        let mut armings: Vec<(u64, &Armed)> = self.armed.iter().map(|(&id, a)| (id, a)).collect();
        armings.sort_unstable_by_key(|&(id, _)| id);
        let mut copy = TtlTracker::default();
        for (arm_id, armed) in armings {
            copy.arm(arm_id, armed.key.clone(), armed.duration_nanos);
        }
        copy
    }

    pub fn clear(&mut self) {
        self.armed.clear();
        self.by_deadline.clear();
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_starts_at_first_sight_of_the_clock_and_retries() {
        let mut tracker = TtlTracker::default();
        tracker.arm(1, Arc::from("a"), 100);
        assert_eq!(tracker.next_deadline(1_000), Some(1_100));
        assert!(tracker.expired(1_099, 10, 50).is_empty());
        let fired = tracker.expired(1_100, 10, 50);
        assert_eq!(fired, vec![(Arc::from("a"), 1)]);
        assert_eq!(tracker.next_deadline(1_100), Some(1_150), "re-offered after retry_nanos");
        tracker.disarm(1);
        assert_eq!(tracker.next_deadline(2_000), None);
    }

    #[test]
    fn rearm_restarts_from_now_never_earlier() {
        let mut tracker = TtlTracker::default();
        tracker.arm(1, Arc::from("a"), 100);
        tracker.arm(2, Arc::from("b"), 300);
        assert_eq!(tracker.next_deadline(0), Some(100));
        tracker.rearm_all(50);
        assert!(tracker.expired(149, 10, 1).is_empty());
        assert_eq!(tracker.expired(150, 10, 1000), vec![(Arc::from("a"), 1)]);
        assert_eq!(tracker.expired(350, 10, 1000), vec![(Arc::from("b"), 2)]);
    }

    #[test]
    fn pending_stays_bounded_when_nobody_asks_for_deadlines() {
        // A follower arms and disarms forever without ever calling next_deadline/expired.
        let mut tracker = TtlTracker::default();
        for id in 0..100_000 {
            tracker.arm(id, Arc::from("k"), 10);
            if id % 10 != 0 {
                tracker.disarm(id);
            }
        }
        assert_eq!(tracker.len(), 10_000);
        assert!(tracker.pending.len() <= 2 * tracker.len() + PENDING_SLACK + 1, "{}", tracker.pending.len());
        assert_eq!(tracker.next_deadline(0), Some(10));
        assert_eq!(tracker.expired(10, usize::MAX, 5).len(), 10_000);
    }

    #[test]
    fn expired_respects_max() {
        let mut tracker = TtlTracker::default();
        for id in 0..10 {
            tracker.arm(id, Arc::from("k"), 1);
        }
        assert_eq!(tracker.next_deadline(0), Some(1));
        assert_eq!(tracker.expired(5, 3, 100).len(), 3);
        assert_eq!(tracker.expired(5, 100, 100).len(), 7);
        assert_eq!(tracker.len(), 10);
    }
}
