//! Why a proposal or read failed, as callers see it: the core's typed drop
//! reasons turned into [`ProposeError`] and [`ReadError`], displayed as
//! sentences an operator can act on.

use tarn_core::{ConfChangeError, DropReason, NodeId};

use super::{ProposeError, ReadError};

pub(crate) fn propose_error(reason: DropReason) -> ProposeError {
    match reason {
        DropReason::NotLeader { leader_hint } => ProposeError::NotLeader { leader_hint },
        DropReason::LeadershipLost { leader_hint } => ProposeError::MaybeCommitted { leader_hint },
        other => ProposeError::Refused { reason: Refusal(other) },
    }
}

pub(crate) fn read_error(reason: DropReason) -> ReadError {
    match reason {
        DropReason::NotLeader { leader_hint } | DropReason::LeadershipLost { leader_hint } => {
            ReadError::NotLeader { leader_hint }
        }
        other => ReadError::Refused { reason: Refusal(other) },
    }
}

/// Why the core refused a proposal, read or membership change: the core's
/// typed reason, for callers that act on it (`match refusal.0`), displayed as
/// a sentence an operator can act on (the `Debug` form, e.g.
/// `InvalidConfChange(NoVoters)`, is not one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal(pub DropReason);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&describe_drop(&self.0))
    }
}

fn describe_drop(reason: &DropReason) -> String {
    let hint = |l: &Option<NodeId>| l.map_or_else(|| "unknown".to_string(), |l| format!("node {l}"));
    match reason {
        DropReason::NotLeader { leader_hint } => {
            format!("this node is not the leader (leader: {}); send it to the leader", hint(leader_hint))
        }
        DropReason::LeadershipLost { leader_hint } => format!(
            "leadership was lost before the request finished (leader now: {}); it may still take effect, retry at the leader",
            hint(leader_hint)
        ),
        DropReason::TransferInProgress => {
            "a leadership transfer is in progress; retry at the new leader in a moment".into()
        }
        DropReason::UncommittedLimit => {
            "too many uncommitted writes are queued on the leader; back off and retry".into()
        }
        DropReason::TooManyPendingReads => "too many reads are waiting on this node; back off and retry".into(),
        DropReason::DuplicateReadId => "a read with this id is already pending (a driver bug; retry)".into(),
        DropReason::Timeout => {
            "the leader did not confirm the read within an election timeout; retry".into()
        }
        DropReason::ConfChangeInProgress => "a membership change is still in progress (or the new leader has not committed an entry of its term yet); retry once it completes".into(),
        DropReason::InvalidConfChange(e) => describe_conf_change_error(e),
        DropReason::EntryTooLarge { size_bytes, max_bytes } => format!(
            "the proposal is {size_bytes} bytes, more than max_entry_bytes {max_bytes} (the largest Raft entry); split it"
        ),
    }
}

/// A refused membership change in words: what is wrong and what to do.
fn describe_conf_change_error(e: &ConfChangeError) -> String {
    match e {
        ConfChangeError::Empty => "the membership change lists no change; name at least one node".into(),
        ConfChangeError::InvalidNodeId => "node id 0 is reserved; node ids start at 1".into(),
        ConfChangeError::DuplicateNode(id) => {
            format!("node {id} appears twice in one membership change; list each node once")
        }
        ConfChangeError::AlreadyMember(id) => format!(
            "node {id} is already a member; use `member promote {id}` to make a learner a voter, or `member remove {id}` first"
        ),
        ConfChangeError::NotMember(id) => format!("node {id} is not a member of this group; nothing to remove"),
        ConfChangeError::NotLearner(id) => {
            format!("node {id} is not a learner, so it cannot be promoted (add it with `member add {id} --learner` first)")
        }
        ConfChangeError::NoVoters => {
            "the change would leave the group without a voter, and a group without voters can never elect a leader; add another voter first, or remove the group with `group remove`".into()
        }
        ConfChangeError::LearnerBehind { id, match_index, last_index } => format!(
            "learner {id} has replicated up to index {match_index} of {last_index}; promoting it now could stall commits, retry once it caught up"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_membership_changes_are_sentences_not_debug_output() {
        let errors = [
            ConfChangeError::Empty,
            ConfChangeError::InvalidNodeId,
            ConfChangeError::DuplicateNode(3),
            ConfChangeError::AlreadyMember(3),
            ConfChangeError::NotMember(3),
            ConfChangeError::NotLearner(3),
            ConfChangeError::NoVoters,
            ConfChangeError::LearnerBehind { id: 3, match_index: 5, last_index: 9 },
        ];
        for e in errors {
            let debug = format!("{e:?}");
            let ProposeError::Refused { reason } = propose_error(DropReason::InvalidConfChange(e)) else {
                panic!("an invalid change is a refusal");
            };
            assert_eq!(reason.0, DropReason::InvalidConfChange(e), "the typed reason is kept");
            let reason = reason.to_string();
            let variant = debug.split(['(', ' ']).next().unwrap_or_default();
            assert!(!reason.contains(variant), "{reason:?} repeats the Debug name {variant}");
            assert!(reason.contains(' ') && reason.len() > 30, "{reason:?}");
        }
        let ProposeError::Refused { reason } =
            propose_error(DropReason::InvalidConfChange(ConfChangeError::NoVoters))
        else {
            panic!("refusal");
        };
        assert!(reason.to_string().contains("without a voter"), "{reason}");
    }
}
