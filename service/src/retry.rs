//! What a client does with an error answer: the leader-discovery and retry
//! decisions of the client library (`tarn_server::client`), without its
//! sockets and timers, so the simulator's clients decide the same way.

use tarn_core::NodeId;

use crate::protocol::ServerError;

/// The client's next step after an error answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// The node is not the leader: try the hinted node (`None`: no leader
    /// known; try another node after a pause).
    Redirect(Option<NodeId>),
    /// Leadership changed after the write was appended: retry the same
    /// request (same session seq: it applies once either way) after a pause.
    RetrySame,
    /// The node cannot serve now (no leader yet, a group stopping, a
    /// refused proposal): try another node after a pause.
    RetryElsewhere,
    /// Retrying cannot fix it: report the error.
    Fail,
}

/// The step after `error`.
pub fn after_error(error: &ServerError) -> Next {
    match error {
        ServerError::NotLeader { leader, .. } => Next::Redirect(*leader),
        ServerError::MaybeCommitted { .. } => Next::RetrySame,
        ServerError::Unavailable { .. } => Next::RetryElsewhere,
        ServerError::NoSuchGroup { .. }
        | ServerError::BadRequest { .. }
        | ServerError::PeerPort { .. }
        | ServerError::ReplyTooLarge { .. }
        | ServerError::PermissionDenied { .. }
        | ServerError::Unauthenticated { .. } => Next::Fail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_are_followed_maybe_committed_retried_in_place_and_refusals_final() {
        let not_leader = ServerError::NotLeader { node: 1, group: 1, leader: Some(3) };
        assert_eq!(after_error(&not_leader), Next::Redirect(Some(3)));
        assert_eq!(after_error(&ServerError::MaybeCommitted { leader: None }), Next::RetrySame);
        assert_eq!(
            after_error(&ServerError::Unavailable { reason: "no leader".into() }),
            Next::RetryElsewhere
        );
        assert_eq!(after_error(&ServerError::BadRequest { reason: "bad key".into() }), Next::Fail);
    }
}
