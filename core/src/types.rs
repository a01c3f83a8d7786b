//! The vocabulary every other crate shares: ids, log positions, entries, hard
//! state, membership and snapshot metadata.
//!
//! These types cross crate boundaries (storage persists them, the wire carries
//! them, the simulator checks them), so they are plain data with serde derives
//! and no behaviour beyond small helpers. Changing a field here changes the
//! on-disk and on-wire formats: bump the format versions in `tarn-io` too.

use std::collections::BTreeSet;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Identifies a node (a server process) in a cluster. `0` is never a valid id:
/// it is reserved to mean "none" in compact encodings.
pub type NodeId = u64;
/// Identifies one Raft group hosted by a node (multi-raft).
pub type GroupId = u64;
/// A Raft term. Terms only grow.
pub type Term = u64;
/// A log index. The first real entry has index 1; index 0 is the empty prefix.
pub type Index = u64;

/// Monotonic time of the local clock, in nanoseconds since an arbitrary origin.
/// The core never reads a clock: every input carries one of these.
pub type Nanos = u64;

/// A position in the log: the pair that uniquely names an entry.
///
/// Ordered by term first, then index, which is the order the election
/// restriction (§5.4.1) uses to compare "up-to-date"-ness.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LogId {
    pub term: Term,
    pub index: Index,
}

impl LogId {
    pub const ZERO: LogId = LogId { term: 0, index: 0 };

    pub const fn new(term: Term, index: Index) -> Self {
        LogId { term, index }
    }
}

impl std::fmt::Display for LogId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.term, self.index)
    }
}

/// What an entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryPayload {
    /// Appended by a new leader so that an entry of its own term can commit
    /// (commits everything before it, and unblocks reads: etcd #7331).
    Blank,
    /// Opaque application data (a kv command, a register write, ...).
    Normal(Bytes),
    /// A membership configuration. Takes effect when appended, not when
    /// committed (Raft thesis §4.1).
    Membership(Membership),
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub term: Term,
    pub index: Index,
    pub payload: EntryPayload,
}

impl Entry {
    pub fn log_id(&self) -> LogId {
        LogId::new(self.term, self.index)
    }

    /// Approximate encoded size, used for byte bounds on batches and inflight
    /// windows. Cheap and stable; not the exact wire size.
    pub fn size_bytes(&self) -> usize {
        const OVERHEAD: usize = 24;
        OVERHEAD
            + match &self.payload {
                EntryPayload::Blank => 0,
                EntryPayload::Normal(data) => data.len(),
                EntryPayload::Membership(m) => {
                    8 * (m.voters.len() + m.voters_outgoing.len() + m.learners.len())
                }
            }
    }
}

/// The state that must be durable before the node speaks: the current term,
/// whom it voted for in that term, and the commit index it has learned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    pub term: Term,
    pub vote: Option<NodeId>,
    pub commit: Index,
}

/// A cluster configuration.
///
/// In a joint configuration (`voters_outgoing` non-empty) every quorum decision
/// needs a majority of `voters` *and* a majority of `voters_outgoing`.
/// `BTreeSet` keeps iteration order deterministic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub voters: BTreeSet<NodeId>,
    /// The old voter set while a joint change is in progress; empty otherwise.
    pub voters_outgoing: BTreeSet<NodeId>,
    /// Non-voting members: they replicate but never vote or count for quorum.
    pub learners: BTreeSet<NodeId>,
}

impl Membership {
    /// A plain (non-joint) configuration of voters only.
    pub fn new_voters(voters: impl IntoIterator<Item = NodeId>) -> Self {
        Membership { voters: voters.into_iter().collect(), ..Default::default() }
    }

    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.voters_outgoing.contains(&id)
    }

    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.contains(&id)
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.is_learner(id)
    }

    /// Every member (voters of both halves and learners), ascending, once each.
    pub fn members(&self) -> BTreeSet<NodeId> {
        self.voters.iter().chain(&self.voters_outgoing).chain(&self.learners).copied().collect()
    }
}

/// What a snapshot covers: everything up to and including `last_log_id`, and
/// the membership in force at that point.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub last_log_id: LogId,
    pub membership: Membership,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_id_orders_by_term_then_index() {
        assert!(LogId::new(2, 1) > LogId::new(1, 100));
        assert!(LogId::new(2, 5) > LogId::new(2, 4));
        assert_eq!(LogId::ZERO, LogId::default());
    }

    #[test]
    fn membership_joint_and_members() {
        let mut m = Membership::new_voters([1, 2, 3]);
        assert!(!m.is_joint());
        m.voters_outgoing = [1, 2, 4].into_iter().collect();
        m.learners.insert(9);
        assert!(m.is_joint());
        assert!(m.is_voter(4) && !m.is_voter(9) && m.is_learner(9));
        assert_eq!(m.members().into_iter().collect::<Vec<_>>(), vec![1, 2, 3, 4, 9]);
    }
}
