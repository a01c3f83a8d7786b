//! Membership changes (Raft thesis §4.3, joint consensus): checking a
//! requested change against the configuration in force, the two joint steps
//! (enter C(old,new), leave to C(new)), and the history of configurations
//! that are appended but not committed.
//!
//! A configuration takes effect as soon as its entry is appended (not when it
//! commits), so a log truncation must put back the configuration that was in
//! force before the truncated entries: [`ConfState`] keeps the committed
//! configuration plus every later, uncommitted configuration entry.

use crate::types::{Entry, EntryPayload, Index, Membership, NodeId};

/// One step of a membership change. A request is a list of these, applied
/// together (several voters may change at once: joint consensus makes any
/// change safe).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConfChange {
    /// A new node joins as a voter. It starts with an empty log, so the
    /// cluster may be unable to commit until it catches up: prefer
    /// `AddLearner` then `PromoteLearner`.
    AddVoter(NodeId),
    /// A new node joins as a learner: it replicates but never votes or counts.
    AddLearner(NodeId),
    /// A voter or learner leaves.
    RemoveNode(NodeId),
    /// A learner becomes a voter. Refused while the learner is more than
    /// `Config::max_promotion_lag_entries` behind the leader's log.
    PromoteLearner(NodeId),
}

impl ConfChange {
    pub fn node(&self) -> NodeId {
        match *self {
            ConfChange::AddVoter(id)
            | ConfChange::AddLearner(id)
            | ConfChange::RemoveNode(id)
            | ConfChange::PromoteLearner(id) => id,
        }
    }
}

/// Why a membership change was refused (inside
/// [`DropReason::InvalidConfChange`](crate::DropReason::InvalidConfChange)).
/// Nothing was appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConfChangeError {
    /// An empty change list outside a joint configuration (an empty list in a
    /// joint configuration means "leave it now").
    Empty,
    /// Node id 0 is reserved.
    InvalidNodeId,
    /// The same node appears twice in one request.
    DuplicateNode(NodeId),
    /// `AddVoter`/`AddLearner` of a node that is already a member (use
    /// `PromoteLearner` to turn a learner into a voter).
    AlreadyMember(NodeId),
    /// `RemoveNode` of a node that is not a member.
    NotMember(NodeId),
    /// `PromoteLearner` of a node that is not a learner.
    NotLearner(NodeId),
    /// The change would leave no voter.
    NoVoters,
    /// `PromoteLearner` of a learner whose log is too far behind the
    /// leader's: promoting it now could stall commits. Retry once it caught up.
    LearnerBehind { id: NodeId, match_index: Index, last_index: Index },
}

/// The plain configuration a change list leads to from `current` (which
/// must not be joint), or why it is refused.
pub fn target(current: &Membership, changes: &[ConfChange]) -> Result<Membership, ConfChangeError> {
    debug_assert!(!current.is_joint());
    if changes.is_empty() {
        return Err(ConfChangeError::Empty);
    }
    let mut next = current.clone();
    for (k, change) in changes.iter().enumerate() {
        let id = change.node();
        if id == 0 {
            return Err(ConfChangeError::InvalidNodeId);
        }
        if changes[..k].iter().any(|c| c.node() == id) {
            return Err(ConfChangeError::DuplicateNode(id));
        }
        match *change {
            ConfChange::AddVoter(_) | ConfChange::AddLearner(_) if next.contains(id) => {
                return Err(ConfChangeError::AlreadyMember(id));
            }
            ConfChange::AddVoter(_) => {
                next.voters.insert(id);
            }
            ConfChange::AddLearner(_) => {
                next.learners.insert(id);
            }
            ConfChange::RemoveNode(_) => {
                if !next.voters.remove(&id) && !next.learners.remove(&id) {
                    return Err(ConfChangeError::NotMember(id));
                }
            }
            ConfChange::PromoteLearner(_) => {
                if !next.learners.remove(&id) {
                    return Err(ConfChangeError::NotLearner(id));
                }
                next.voters.insert(id);
            }
        }
    }
    if next.voters.is_empty() {
        return Err(ConfChangeError::NoVoters);
    }
    Ok(next)
}

/// The configuration to append first: `target` itself when the voter set
/// does not change (learners only: no quorum changes, no joint step needed),
/// else the joint configuration C(old,new).
pub fn enter(current: &Membership, target: &Membership) -> Membership {
    debug_assert!(!current.is_joint() && !target.is_joint());
    if current.voters == target.voters {
        return target.clone();
    }
    Membership {
        voters: target.voters.clone(),
        voters_outgoing: current.voters.clone(),
        learners: target.learners.clone(),
    }
}

/// C(new): the joint configuration without its outgoing half.
pub fn leave(joint: &Membership) -> Membership {
    Membership {
        voters: joint.voters.clone(),
        voters_outgoing: Default::default(),
        learners: joint.learners.clone(),
    }
}

/// The configuration in force and the history needed to undo truncations.
#[derive(Clone, Debug)]
pub struct ConfState {
    /// The newest configuration at or below the commit index.
    committed: Membership,
    /// The index of its entry (0 if it came from recovery or a snapshot).
    committed_at: Index,
    /// Configuration entries above the commit index, ascending by index; the
    /// last one is the configuration in force.
    pending: Vec<(Index, Membership)>,
}

impl ConfState {
    /// Starts from the configuration in force at the commit index.
    pub fn new(committed: Membership) -> ConfState {
        ConfState { committed, committed_at: 0, pending: Vec::new() }
    }

    /// The index of the entry of the committed configuration (0: not from an entry).
    pub fn committed_at(&self) -> Index {
        self.committed_at
    }

    /// Recovery: `latest` is the newest configuration in the log (or the
    /// snapshot's). Configuration entries of `tail` above `commit` are the
    /// uncommitted history; the configuration before them is the newest one
    /// at or below `commit` in `tail`, else `base` (the snapshot's, at its
    /// index, or `Recovered::initial_membership` at index 0) when `tail`
    /// covers everything after it. If nothing can tell, `latest` is taken as
    /// committed (a later truncation of those entries then cannot revert them;
    /// drivers avoid this by handing over `initial_membership` and a tail that
    /// starts at or below the commit index).
    pub fn recover(
        latest: Membership,
        base: Option<(Index, Membership)>,
        tail: &[Entry],
        commit: Index,
    ) -> ConfState {
        let mut before: Option<Membership> = None;
        let mut pending = Vec::new();
        for e in tail {
            if let EntryPayload::Membership(m) = &e.payload {
                if e.index <= commit {
                    before = Some(m.clone());
                } else {
                    pending.push((e.index, m.clone()));
                }
            }
        }
        if pending.is_empty() {
            return ConfState::new(latest);
        }
        let covered = |first: Index| base.as_ref().is_some_and(|(i, _)| *i + 1 >= first);
        let committed = match (before, tail.first()) {
            (Some(m), _) => m,
            (None, Some(first)) if covered(first.index) => base.expect("checked by covered").1,
            _ => return ConfState::new(latest),
        };
        ConfState { committed, committed_at: 0, pending }
    }

    /// The configuration in force at the commit index.
    pub fn committed(&self) -> &Membership {
        &self.committed
    }

    /// The configuration in force (the newest appended).
    pub fn current(&self) -> &Membership {
        self.pending.last().map_or(&self.committed, |(_, m)| m)
    }

    /// A configuration entry is appended but not committed.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether `id` is a voter (incoming or outgoing) of the committed
    /// configuration or of any uncommitted one after it: the configurations
    /// that may still be in force somewhere in the cluster.
    pub fn may_be_voter(&self, id: NodeId) -> bool {
        self.committed.is_voter(id) || self.pending.iter().any(|(_, m)| m.is_voter(id))
    }

    /// Records `entries` appended at `entries[0].index` (replacing any suffix
    /// from there). Returns whether the configuration in force changed.
    pub fn on_append(&mut self, entries: &[Entry]) -> bool {
        let Some(first) = entries.first() else { return false };
        let before = self.pending.len();
        self.pending.retain(|(i, _)| *i < first.index);
        let mut changed = self.pending.len() != before;
        for e in entries {
            if let EntryPayload::Membership(m) = &e.payload {
                self.pending.push((e.index, m.clone()));
                changed = true;
            }
        }
        changed
    }

    /// Folds configuration entries at or below `commit` into the committed one.
    pub fn commit_to(&mut self, commit: Index) {
        let n = self.pending.partition_point(|(i, _)| *i <= commit);
        if n > 0 {
            let mut folded: Vec<_> = self.pending.drain(..n).collect();
            let (at, m) = folded.pop().expect("n > 0");
            self.committed = m;
            self.committed_at = at;
        }
    }

    /// A snapshot replaced the log: its configuration is committed, nothing is pending.
    pub fn reset(&mut self, committed: Membership) {
        self.committed = committed;
        self.committed_at = 0;
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(voters: &[NodeId], learners: &[NodeId]) -> Membership {
        let mut m = Membership::new_voters(voters.iter().copied());
        m.learners = learners.iter().copied().collect();
        m
    }

    fn conf_entry(index: Index, m: Membership) -> Entry {
        Entry { term: 1, index, payload: EntryPayload::Membership(m) }
    }

    #[test]
    fn targets_and_refusals() {
        let cur = m(&[1, 2, 3], &[4]);
        assert_eq!(target(&cur, &[ConfChange::PromoteLearner(4)]), Ok(m(&[1, 2, 3, 4], &[])));
        assert_eq!(
            target(&cur, &[ConfChange::AddVoter(5), ConfChange::RemoveNode(1)]),
            Ok(m(&[2, 3, 5], &[4]))
        );
        assert_eq!(target(&cur, &[]), Err(ConfChangeError::Empty));
        assert_eq!(target(&cur, &[ConfChange::AddVoter(0)]), Err(ConfChangeError::InvalidNodeId));
        assert_eq!(target(&cur, &[ConfChange::AddVoter(4)]), Err(ConfChangeError::AlreadyMember(4)));
        assert_eq!(target(&cur, &[ConfChange::AddLearner(2)]), Err(ConfChangeError::AlreadyMember(2)));
        assert_eq!(target(&cur, &[ConfChange::RemoveNode(9)]), Err(ConfChangeError::NotMember(9)));
        assert_eq!(target(&cur, &[ConfChange::PromoteLearner(2)]), Err(ConfChangeError::NotLearner(2)));
        assert_eq!(
            target(&cur, &[ConfChange::AddVoter(5), ConfChange::RemoveNode(5)]),
            Err(ConfChangeError::DuplicateNode(5))
        );
        let all = [ConfChange::RemoveNode(1), ConfChange::RemoveNode(2), ConfChange::RemoveNode(3)];
        assert_eq!(target(&cur, &all), Err(ConfChangeError::NoVoters));
    }

    #[test]
    fn joint_only_when_voters_change() {
        let cur = m(&[1, 2, 3], &[]);
        let learner_only = m(&[1, 2, 3], &[4]);
        assert_eq!(enter(&cur, &learner_only), learner_only);
        let replace = m(&[1, 2, 4], &[]);
        let joint = enter(&cur, &replace);
        assert!(joint.is_joint());
        assert_eq!(joint.voters_outgoing, cur.voters);
        assert_eq!(joint.voters, replace.voters);
        assert_eq!(leave(&joint), replace);
    }

    #[test]
    fn truncation_reverts_to_the_configuration_before() {
        let c0 = m(&[1, 2, 3], &[]);
        let c1 = m(&[1, 2, 3], &[4]);
        let c2 = enter(&c1, &m(&[1, 2, 3, 4], &[]));
        let mut s = ConfState::new(c0.clone());
        assert!(s.on_append(&[conf_entry(5, c1.clone())]));
        assert!(s.on_append(&[conf_entry(6, c2.clone())]));
        assert_eq!(s.current(), &c2);
        // Entries from 6 replaced by a normal entry: back to c1.
        let blank = Entry { term: 2, index: 6, payload: EntryPayload::Blank };
        assert!(s.on_append(std::slice::from_ref(&blank)));
        assert_eq!(s.current(), &c1);
        s.commit_to(5);
        assert!(!s.has_pending());
        // Committed configurations are never reverted.
        assert!(!s.on_append(&[blank]));
        assert_eq!(s.current(), &c1);
        s.reset(c0.clone());
        assert_eq!(s.current(), &c0);
    }

    #[test]
    fn recovery_rebuilds_uncommitted_history() {
        let c0 = m(&[1, 2, 3], &[]);
        let c1 = m(&[1, 2, 3], &[4]);
        let c2 = m(&[1, 2, 3], &[4, 5]);
        let tail = vec![conf_entry(3, c1.clone()), conf_entry(4, c2.clone())];
        // 3 committed, 4 not: truncating 4 goes back to c1.
        let mut s = ConfState::recover(c2.clone(), None, &tail, 3);
        assert_eq!(s.current(), &c2);
        s.on_append(&[Entry { term: 2, index: 4, payload: EntryPayload::Blank }]);
        assert_eq!(s.current(), &c1);
        // Nothing committed in the tail: the base covers what is before it.
        let mut s = ConfState::recover(c2.clone(), Some((2, c0.clone())), &tail, 2);
        s.on_append(&[Entry { term: 2, index: 3, payload: EntryPayload::Blank }]);
        assert_eq!(s.current(), &c0);
        // A gap between base and tail: cannot tell, the latest counts as committed.
        let s = ConfState::recover(c2.clone(), Some((1, c0)), &tail, 2);
        assert!(!s.has_pending());
        assert_eq!(s.current(), &c2);
    }
}
