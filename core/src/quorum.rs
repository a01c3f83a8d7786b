//! Quorum arithmetic, kept apart from everything else so it can be tested
//! alone: the committed index and the vote result of a majority
//! configuration, and of a joint configuration (both majorities must agree).
//!
//! A joint configuration is `Membership { voters, voters_outgoing }` with a
//! non-empty `voters_outgoing`; a plain one has `voters_outgoing` empty, and an
//! empty majority agrees to everything, so one code path serves both.

use std::collections::BTreeSet;

use crate::types::{Index, Membership, NodeId};

/// The outcome of counting votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// Not decided yet: missing votes could still swing it.
    Pending,
    /// A quorum granted.
    Won,
    /// A quorum can no longer be reached.
    Lost,
}

/// The highest index acknowledged by a majority of `voters`, where `acked`
/// gives each voter's acknowledged index (`None` counts as 0). An empty
/// configuration returns `Index::MAX` so that it never limits a joint quorum.
pub fn majority_committed(voters: &BTreeSet<NodeId>, acked: impl Fn(NodeId) -> Option<Index>) -> Index {
    let n = voters.len();
    if n == 0 {
        return Index::MAX;
    }
    // Small clusters (the common case) sort on the stack.
    const STACK_VOTERS: usize = 16;
    let mut stack = [0 as Index; STACK_VOTERS];
    let mut heap;
    let values: &mut [Index] = if n <= STACK_VOTERS {
        &mut stack[..n]
    } else {
        heap = vec![0; n];
        &mut heap[..]
    };
    for (slot, &id) in values.iter_mut().zip(voters) {
        *slot = acked(id).unwrap_or(0);
    }
    values.sort_unstable();
    // With n voters, a majority is n/2+1: the (n - (n/2+1))-th smallest value
    // is held by at least a majority.
    values[n - (n / 2 + 1)]
}

/// The committed index of a (possibly joint) configuration: the smaller of
/// the two majorities' committed indexes.
pub fn joint_committed(membership: &Membership, acked: impl Fn(NodeId) -> Option<Index>) -> Index {
    let incoming = majority_committed(&membership.voters, &acked);
    let outgoing = majority_committed(&membership.voters_outgoing, &acked);
    let committed = incoming.min(outgoing);
    // Both halves empty means no voters at all: nothing can commit.
    if committed == Index::MAX {
        0
    } else {
        committed
    }
}

/// Counts votes of one majority configuration. `vote` gives `Some(granted)`
/// for voters that answered, `None` for those that did not (yet).
pub fn majority_vote(voters: &BTreeSet<NodeId>, vote: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
    if voters.is_empty() {
        return VoteResult::Won;
    }
    let (mut granted, mut missing) = (0, 0);
    for &id in voters {
        match vote(id) {
            Some(true) => granted += 1,
            Some(false) => {}
            None => missing += 1,
        }
    }
    let quorum = voters.len() / 2 + 1;
    if granted >= quorum {
        VoteResult::Won
    } else if granted + missing >= quorum {
        VoteResult::Pending
    } else {
        VoteResult::Lost
    }
}

/// Counts votes of a (possibly joint) configuration: won only if both halves
/// won, lost if either half lost.
pub fn joint_vote(membership: &Membership, vote: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
    if membership.voters.is_empty() && membership.voters_outgoing.is_empty() {
        return VoteResult::Lost;
    }
    let incoming = majority_vote(&membership.voters, &vote);
    let outgoing = majority_vote(&membership.voters_outgoing, &vote);
    match (incoming, outgoing) {
        (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
        (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
        _ => VoteResult::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    fn acks(pairs: &'static [(NodeId, Index)]) -> impl Fn(NodeId) -> Option<Index> {
        move |id| pairs.iter().find(|(n, _)| *n == id).map(|(_, i)| *i)
    }

    #[test]
    fn majority_committed_index() {
        assert_eq!(majority_committed(&set(&[1]), acks(&[(1, 5)])), 5);
        assert_eq!(majority_committed(&set(&[1, 2]), acks(&[(1, 5), (2, 3)])), 3);
        assert_eq!(majority_committed(&set(&[1, 2, 3]), acks(&[(1, 5), (2, 3), (3, 9)])), 5);
        assert_eq!(majority_committed(&set(&[1, 2, 3]), acks(&[(1, 5)])), 0);
        assert_eq!(majority_committed(&set(&[1, 2, 3, 4]), acks(&[(1, 5), (2, 7), (3, 9)])), 5);
        assert_eq!(
            majority_committed(&set(&[1, 2, 3, 4, 5]), acks(&[(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)])),
            3
        );
        assert_eq!(majority_committed(&set(&[]), acks(&[])), Index::MAX);
        let big: BTreeSet<NodeId> = (1..=20).collect();
        assert_eq!(majority_committed(&big, Some), 10);
    }

    #[test]
    fn joint_committed_is_min_of_both_majorities() {
        let mut m = Membership::new_voters([1, 2, 3]);
        assert_eq!(joint_committed(&m, acks(&[(1, 9), (2, 9), (3, 1), (4, 2), (5, 2)])), 9);
        m.voters_outgoing = set(&[3, 4, 5]);
        assert_eq!(joint_committed(&m, acks(&[(1, 9), (2, 9), (3, 1), (4, 2), (5, 2)])), 2);
        assert_eq!(joint_committed(&Membership::default(), acks(&[])), 0);
    }

    #[test]
    fn majority_and_joint_votes() {
        let v = set(&[1, 2, 3]);
        assert_eq!(majority_vote(&v, |id| (id == 1).then_some(true)), VoteResult::Pending);
        assert_eq!(majority_vote(&v, |id| (id <= 2).then_some(true)), VoteResult::Won);
        assert_eq!(majority_vote(&v, |id| (id <= 2).then_some(id == 1)), VoteResult::Pending);
        assert_eq!(majority_vote(&v, |id| Some(id == 1)), VoteResult::Lost);
        assert_eq!(majority_vote(&set(&[1, 2, 3, 4]), |id| Some(id <= 2)), VoteResult::Lost);
        let mut m = Membership::new_voters([1, 2, 3]);
        m.voters_outgoing = set(&[3, 4, 5]);
        // Incoming won, outgoing pending.
        assert_eq!(joint_vote(&m, |id| (id <= 3).then_some(true)), VoteResult::Pending);
        assert_eq!(joint_vote(&m, |id| (id <= 4).then_some(true)), VoteResult::Won);
        // Outgoing lost.
        assert_eq!(joint_vote(&m, |id| Some(id <= 3)), VoteResult::Lost);
        assert_eq!(joint_vote(&Membership::default(), |_| Some(true)), VoteResult::Lost);
    }

    #[test]
    fn even_sizes_need_more_than_half() {
        // Four voters: two acks are not a majority, three are.
        let v = set(&[1, 2, 3, 4]);
        assert_eq!(majority_committed(&v, acks(&[(1, 9), (2, 9)])), 0);
        assert_eq!(majority_committed(&v, acks(&[(1, 9), (2, 9), (3, 4)])), 4);
        assert_eq!(majority_vote(&v, |id| (id <= 2).then_some(true)), VoteResult::Pending);
        assert_eq!(majority_vote(&v, |id| Some(id <= 2)), VoteResult::Lost, "a 2-2 split loses");
        assert_eq!(majority_vote(&v, |id| (id <= 3).then_some(true)), VoteResult::Won);
        // Two voters: both are needed.
        let two = set(&[1, 2]);
        assert_eq!(majority_vote(&two, |id| (id == 1).then_some(true)), VoteResult::Pending);
        assert_eq!(majority_vote(&two, |id| Some(id == 1)), VoteResult::Lost);
        // Joint of two even halves: 2 of {1,2,3,4} and 3 of {3,4,5,6}... both must hold.
        let mut m = Membership::new_voters([1, 2, 3, 4]);
        m.voters_outgoing = set(&[3, 4, 5, 6]);
        assert_eq!(joint_committed(&m, acks(&[(1, 7), (2, 7), (3, 7), (4, 1), (5, 1), (6, 1)])), 1);
        assert_eq!(joint_committed(&m, acks(&[(1, 7), (3, 7), (4, 7), (5, 7), (6, 1)])), 7);
    }

    #[test]
    fn learners_never_count() {
        let mut m = Membership::new_voters([1, 2, 3]);
        m.learners = set(&[4, 5, 6]);
        // Learners acknowledging everything do not make a quorum.
        assert_eq!(joint_committed(&m, acks(&[(1, 9), (4, 9), (5, 9), (6, 9)])), 0);
        assert_eq!(joint_vote(&m, |id| Some(id == 1 || id >= 4)), VoteResult::Lost);
        assert_eq!(joint_vote(&m, |id| (id <= 2).then_some(true)), VoteResult::Won);
        // A joint configuration promoting learner 4 counts it in the incoming half only.
        m.voters_outgoing = m.voters.clone();
        m.voters.insert(4);
        m.learners.remove(&4);
        assert_eq!(joint_committed(&m, acks(&[(1, 5), (4, 5), (5, 5), (6, 5)])), 0);
        assert_eq!(joint_committed(&m, acks(&[(1, 5), (2, 5), (4, 5)])), 5);
        assert_eq!(joint_committed(&m, acks(&[(1, 5), (2, 5)])), 0, "the incoming half of four needs three");
    }
}
