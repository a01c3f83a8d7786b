//! Messages between the Raft nodes of one group.
//!
//! Plain serde data: the transport postcard-encodes them (the group id rides
//! in the transport envelope, not here). New variants are only ever appended
//! at the end of an enum, so existing encodings stay valid.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::types::{Entry, Index, LogId, NodeId, SnapshotMeta, Term};

/// One message from `from` to a peer. `term` is the sender's current term,
/// except in `PreVoteRequest`, where it is the term the sender *would* campaign
/// in, and in `PreVoteResponse`, where it echoes the request's term when granted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub from: NodeId,
    pub term: Term,
    /// The sender lost its data and is rejoining (`Config::rejoin_after_data_loss`).
    /// Its acknowledgements are real durability but not a promise: it forgot
    /// the terms it voted in, so it may have acknowledged a stale leader, and
    /// a leader must not count it toward a commit, a read or a lease until it
    /// has left the voters. Without this a stale leader committed with a wiped
    /// voter over an entry a newer leader had already written (seed 7006899).
    pub rejoining: bool,
    pub body: MessageBody,
}

/// Why an append was rejected, and where the leader should try next (fast
/// back-tracking, etcd's `findConflictByTerm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectHint {
    /// The `prev_log_id.index` of the rejected append.
    pub rejected_index: Index,
    /// The follower's last index that may match: the leader retries at or
    /// below this point, skipping a whole conflicting term at once.
    pub hint: LogId,
}

/// What a message says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// "Would you vote for me in `term`?" (does not change anyone's term).
    PreVoteRequest {
        last_log_id: LogId,
    },
    PreVoteResponse {
        granted: bool,
    },
    /// A real vote request. `transfer` is set when campaigning on a
    /// `TimeoutNow`: it bypasses leader stickiness on the voters.
    VoteRequest {
        last_log_id: LogId,
        transfer: bool,
    },
    /// Sent only after the vote is durable (`HardStatePersisted`).
    VoteResponse {
        granted: bool,
    },
    /// Replicate `entries` after `prev_log_id`. `session` identifies the
    /// leader's replication session with this follower (a fresh value for each
    /// progress the leader creates); it is echoed in the response, and a
    /// response from another session is ignored, so a stale response from an
    /// earlier leadership or membership cannot move progress (etcd-io/raft #349).
    AppendEntries {
        session: u64,
        prev_log_id: LogId,
        entries: Vec<Entry>,
        commit: Index,
    },
    /// `Ok(match_index)`: the follower's log matches the leader's up to and
    /// including `match_index`, and that prefix is durable on the follower.
    /// `Err(hint)`: `prev_log_id` did not match.
    AppendResponse {
        session: u64,
        result: Result<Index, RejectHint>,
    },
    /// Leader liveness plus commit index (never beyond the follower's match).
    /// `ctx` is the leader's heartbeat round: an acknowledged round confirms
    /// leadership for ReadIndex and extends the lease.
    Heartbeat {
        commit: Index,
        ctx: u64,
    },
    /// Echoes the round; `last_index` lets the leader resume a paused follower.
    HeartbeatResponse {
        ctx: u64,
        last_index: Index,
    },
    /// Leadership transfer: campaign now, skipping pre-vote and stickiness.
    TimeoutNow,
    /// A follower asks the leader for a read index on behalf of read `id`
    /// (the follower's caller's id; the leader treats it as opaque).
    ReadIndexRequest {
        id: u64,
    },
    /// `Ok(index)`: linearizable to read at `index` once applied.
    /// `Err(())`: the leader could not confirm (not leader any more, transfer ...).
    ReadIndexResponse {
        id: u64,
        result: Result<Index, ()>,
    },
    /// One chunk of the leader's snapshot `meta` at byte `offset` (`done`:
    /// the last one). `session` is the follower's replication session; a
    /// follower stages only in-order chunks of one transfer (term, leader,
    /// session, snapshot) and installs after the last.
    InstallSnapshot {
        session: u64,
        meta: SnapshotMeta,
        offset: u64,
        data: Bytes,
        done: bool,
    },
    /// The follower staged `next_offset` bytes of `snapshot` (its answer to
    /// every chunk, in order or not). Once installed, it answers with an
    /// `AppendResponse { Ok(snapshot index) }` instead.
    SnapshotResponse {
        session: u64,
        snapshot: LogId,
        next_offset: u64,
    },
    /// The leader is going quiet (`Config::quiesce`): a heartbeat that says
    /// every member holds the log up to `commit`, which is committed, and
    /// that no heartbeat follows until something happens. A follower whose
    /// log ends at `commit` stops its election timer. Not answered.
    Quiesce {
        commit: Index,
    },
}

impl MessageBody {
    /// Short name for traces.
    pub fn kind(&self) -> &'static str {
        match self {
            MessageBody::PreVoteRequest { .. } => "PreVoteRequest",
            MessageBody::PreVoteResponse { .. } => "PreVoteResponse",
            MessageBody::VoteRequest { .. } => "VoteRequest",
            MessageBody::VoteResponse { .. } => "VoteResponse",
            MessageBody::AppendEntries { .. } => "AppendEntries",
            MessageBody::AppendResponse { .. } => "AppendResponse",
            MessageBody::Heartbeat { .. } => "Heartbeat",
            MessageBody::HeartbeatResponse { .. } => "HeartbeatResponse",
            MessageBody::TimeoutNow => "TimeoutNow",
            MessageBody::ReadIndexRequest { .. } => "ReadIndexRequest",
            MessageBody::ReadIndexResponse { .. } => "ReadIndexResponse",
            MessageBody::InstallSnapshot { .. } => "InstallSnapshot",
            MessageBody::SnapshotResponse { .. } => "SnapshotResponse",
            MessageBody::Quiesce { .. } => "Quiesce",
        }
    }
}
