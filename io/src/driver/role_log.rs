//! Role changes at INFO, a bounded number a second per node.
//!
//! One line per role change is what an operator of a few groups wants. When
//! a node dies, every group it led elects at once on each survivor: with
//! 10,000 groups that was 460,000 INFO lines per node in 90 seconds, and
//! formatting them cost the CPU the elections needed. So each node logs the
//! first [`ROLE_LINES_PER_SECOND`] role changes of every second at INFO, the
//! rest at DEBUG, and says at INFO how many it moved there. The counts a
//! dashboard needs are metrics (`tarn_group_leader_changes`), not log lines.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use tarn_core::{GroupId, NodeId, Role, Term};

/// Role changes logged at INFO per node and second.
pub(crate) const ROLE_LINES_PER_SECOND: u64 = 20;

/// The node's role-change logger, shared by its group tasks.
#[derive(Debug)]
pub(crate) struct RoleLog {
    origin: Instant,
    /// The second (since `origin`) the counts below belong to.
    second: AtomicU64,
    /// Role changes seen in that second.
    seen: AtomicU64,
    /// Of those, logged at DEBUG only.
    demoted: AtomicU64,
}

/// Where a role change goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// An INFO line; `demoted_before` role changes of an earlier second
    /// went to DEBUG and are reported with it.
    Info {
        demoted_before: u64,
    },
    Debug,
}

impl RoleLog {
    pub(crate) fn new() -> RoleLog {
        RoleLog {
            origin: Instant::now(),
            second: AtomicU64::new(0),
            seen: AtomicU64::new(0),
            demoted: AtomicU64::new(0),
        }
    }

    /// Logs one role change of `group`.
    pub(crate) fn role_changed(&self, group: GroupId, role: Role, term: Term, leader: Option<NodeId>) {
        match self.verdict(self.origin.elapsed().as_secs()) {
            Verdict::Info { demoted_before: 0 } => {
                tracing::info!(group, ?role, term, ?leader, "role changed")
            }
            Verdict::Info { demoted_before } => {
                tracing::info!(
                    demoted_before,
                    "{demoted_before} earlier role changes were logged at DEBUG only (more than {ROLE_LINES_PER_SECOND} a second; see tarn_group_leader_changes)"
                );
                tracing::info!(group, ?role, term, ?leader, "role changed");
            }
            Verdict::Debug => tracing::debug!(group, ?role, term, ?leader, "role changed"),
        }
    }

    /// The verdict for a role change in second `now`. Racing callers may
    /// let a few more than the limit through when a second turns over;
    /// it is a log, not an invariant.
    pub(crate) fn verdict(&self, now: u64) -> Verdict {
        let mut demoted_before = 0;
        let second = self.second.load(Relaxed);
        if now > second && self.second.compare_exchange(second, now, Relaxed, Relaxed).is_ok() {
            self.seen.store(0, Relaxed);
            demoted_before = self.demoted.swap(0, Relaxed);
        }
        if self.seen.fetch_add(1, Relaxed) < ROLE_LINES_PER_SECOND {
            Verdict::Info { demoted_before }
        } else {
            self.demoted.fetch_add(1 + demoted_before, Relaxed);
            Verdict::Debug
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storm_is_cut_to_the_limit_and_the_rest_is_counted_at_the_next_second() {
        let log = RoleLog::new();
        let verdicts: Vec<Verdict> = (0..1000).map(|_| log.verdict(5)).collect();
        let info = verdicts.iter().filter(|v| matches!(v, Verdict::Info { .. })).count() as u64;
        assert_eq!(info, ROLE_LINES_PER_SECOND);
        assert!(verdicts.iter().all(|v| *v != Verdict::Info { demoted_before: 1 }));
        // The next second starts a fresh allowance and reports the demoted.
        assert_eq!(log.verdict(6), Verdict::Info { demoted_before: 1000 - ROLE_LINES_PER_SECOND });
        assert_eq!(log.verdict(6), Verdict::Info { demoted_before: 0 });
    }

    #[test]
    fn a_quiet_node_logs_every_role_change() {
        let log = RoleLog::new();
        for second in 0..100 {
            for _ in 0..3 {
                assert_eq!(log.verdict(second), Verdict::Info { demoted_before: 0 });
            }
        }
    }
}
