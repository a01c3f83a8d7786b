//! The Raft state machine (placeholder until the implementation lands).
use crate::config::{Config, ConfigError};
use crate::io::{Action, Input, Recovered, Role, Status};
use crate::types::{Index, LogId, Membership, Nanos, NodeId, Term};

/// One node of one Raft group: a pure state machine driven by [`RawNode::step`].
pub struct RawNode {
    config: Config,
    recovered: Recovered,
}

impl RawNode {
    /// Builds a node from its configuration and what storage recovered.
    /// Fails if the configuration is invalid or the recovered state is
    /// inconsistent (e.g. `tail` does not end at `last_log_id`).
    pub fn new(config: Config, recovered: Recovered) -> Result<RawNode, ConfigError> {
        config.validate()?;
        Ok(RawNode { config, recovered })
    }

    /// The only way in: apply one input observed at local monotonic time `now`
    /// (never decreasing across calls) and push the resulting actions.
    pub fn step(&mut self, now: Nanos, input: Input, actions: &mut Vec<Action>) {
        let _ = (now, input, actions);
    }

    /// The local time at which the core next needs an `Input::Tick`.
    pub fn next_deadline(&self) -> Nanos {
        self.config.election_timeout_min_ns
    }

    pub fn id(&self) -> NodeId {
        self.config.id
    }
    pub fn role(&self) -> Role {
        Role::Follower
    }
    pub fn term(&self) -> Term {
        self.recovered.hard_state.term
    }
    pub fn leader(&self) -> Option<NodeId> {
        None
    }
    pub fn commit_index(&self) -> Index {
        self.recovered.hard_state.commit
    }
    pub fn last_log_id(&self) -> LogId {
        self.recovered.last_log_id
    }
    pub fn membership(&self) -> &Membership {
        &self.recovered.membership
    }
    pub fn status(&self) -> Status {
        Status {
            id: self.config.id,
            role: Role::Follower,
            term: self.term(),
            vote: self.recovered.hard_state.vote,
            leader: None,
            commit: self.commit_index(),
            applied: self.recovered.applied,
            last_log_id: self.last_log_id(),
            persisted: self.last_log_id().index,
            membership: self.recovered.membership.clone(),
            progress: Vec::new(),
        }
    }
}
