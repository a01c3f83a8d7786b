//! The client protocol: what travels on the client port.
//!
//! Frames use the same framing as the peer transport (`tarn_io::wire`): a
//! length prefix, a version byte, a postcard body. A client sends
//! [`ClientFrame`]s and receives [`ServerFrame`]s; every request carries its
//! own id, so many requests can be in flight on one connection and answers
//! may come back in any order. Every request names its Raft group
//! explicitly (the key-to-group mapping is the application's choice; the
//! default group is [`DEFAULT_GROUP`]).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use tarn_core::{GroupId, Index, LogId, NodeId, Term};
use tarn_kv::{Command, Request, Response, WatchEvent};

/// The group every server starts with and every client uses by default.
pub const DEFAULT_GROUP: GroupId = 1;

/// The replicated peer directory: `_tarn.peers.<node id>` in [`DEFAULT_GROUP`]
/// holds the peer address of every node added at runtime (`tarn member add
/// <id> <addr>`). Every node reads it and connects. It lies in the reserved
/// namespace ([`TARN_DIRECTORY`]): clients may read it, but only a server
/// writes it, on [`RequestBody::RecordPeer`] (`tarn member forget <id>` makes
/// nodes forget a peer).
pub const PEER_DIRECTORY: &str = "_tarn.peers";
/// The parent of [`PEER_DIRECTORY`]: the reserved namespace no client write may touch.
pub const TARN_DIRECTORY: &str = tarn_kv::RESERVED_NAMESPACE;

/// The directory key holding node `id`'s peer address.
pub fn peer_key(id: NodeId) -> String {
    format!("{PEER_DIRECTORY}.{id}")
}

/// Largest client frame the server accepts (a batch of puts near kv's value bound).
pub const MAX_CLIENT_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Consistency {
    /// Linearizable: served after the leader confirms its leadership (lease
    /// or ReadIndex round). The default.
    #[default]
    Linearizable,
    /// Whatever this node has applied, leader or not: fast, possibly stale.
    Stale,
}

/// Client → server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientFrame {
    /// Chosen by the client, echoed in the answer.
    pub id: u64,
    /// The Raft group the request is for.
    pub group: GroupId,
    /// The request.
    pub body: RequestBody,
}

/// What a client asks (each variant's doc names its fields).
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestBody {
    /// Who are you? Answered with `ResponseBody::Hello` (also works on followers).
    Hello,
    /// A write (or a read the client wants to go through the log): proposed
    /// on the leader, applied once per (client id, seq).
    Write(Request),
    /// A read of the tree, not through the log (`Get`, `BatchGet`, `List`).
    Read { command: Command, consistency: Consistency },
    /// Stream every event on `key` (or its subtree) after `after_index`
    /// (`None`: from now). Answered with `Watching`, then `ServerFrame::Watch`
    /// frames carrying this request's id until `Unwatch` or a cut-off.
    Watch { key: String, subtree: bool, after_index: Option<Index> },
    /// Stops the watch started by request `watch_request_id`.
    Unwatch { watch_request_id: u64 },
    /// Node and group status.
    Status,
    /// Ask the group's leader to hand leadership to `to`.
    TransferLeader { to: NodeId },
    /// Admin: start hosting group `group` with `voters` (send to every voter).
    AddGroup { voters: Vec<NodeId> },
    /// Admin: stop hosting the group and delete its data on this node.
    RemoveGroup,
    /// Admin: change the group's membership (sent to the leader). A node's
    /// peer address comes from `--cluster`, the peer directory, or `peers`
    /// (which the leader starts using at once; the client also writes them
    /// to the directory so that every node learns them).
    ChangeMembership { changes: Vec<MemberChange>, peers: Vec<(NodeId, SocketAddr)> },
    /// Admin: record node `node`'s peer address in the replicated peer
    /// directory (`None`: forget it), sent to group 1's leader. The server
    /// writes the directory itself: no client write may touch the reserved
    /// namespace. Refused for a current member at another address (remove it
    /// first), so a typo cannot re-point a live voter.
    RecordPeer { node: NodeId, addr: Option<SocketAddr> },
    /// Admin: start hosting groups `first..=last` (the frame's group is
    /// ignored), each with `voters`; groups already hosted with the same
    /// voters are skipped, so a retried batch is harmless. At most
    /// [`MAX_GROUPS_PER_REQUEST`] groups.
    AddGroups { first: GroupId, last: GroupId, voters: Vec<NodeId> },
    /// Authenticates this connection with a bearer token (see
    /// `security::auth`); later requests act as the token's principal.
    /// Answered with [`ResponseBody::Authenticated`], or
    /// [`ServerError::Unauthenticated`] for an unknown token.
    Authenticate { token: String },
}

/// The most groups one `AddGroups` request creates (the CLI sends larger
/// ranges in batches of this size).
pub const MAX_GROUPS_PER_REQUEST: u64 = 1_000;

/// One membership change (see `tarn_core::ConfChange`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberChange {
    /// Join as a voter directly (prefer learner, then promote).
    AddVoter(NodeId),
    /// Join as a learner: replicates, never votes.
    AddLearner(NodeId),
    /// A voter or learner leaves.
    Remove(NodeId),
    /// A learner becomes a voter (refused while it lags too far behind).
    Promote(NodeId),
}

impl From<MemberChange> for tarn_core::ConfChange {
    fn from(c: MemberChange) -> Self {
        match c {
            MemberChange::AddVoter(id) => tarn_core::ConfChange::AddVoter(id),
            MemberChange::AddLearner(id) => tarn_core::ConfChange::AddLearner(id),
            MemberChange::Remove(id) => tarn_core::ConfChange::RemoveNode(id),
            MemberChange::Promote(id) => tarn_core::ConfChange::PromoteLearner(id),
        }
    }
}

impl MemberChange {
    /// The node the change is about.
    pub fn node(&self) -> NodeId {
        match *self {
            MemberChange::AddVoter(id)
            | MemberChange::AddLearner(id)
            | MemberChange::Remove(id)
            | MemberChange::Promote(id) => id,
        }
    }
}

/// Server → client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFrame {
    /// The answer to request `id`.
    #[allow(missing_docs)]
    Response { id: u64, result: Result<ResponseBody, ServerError> },
    /// Events for the watch started by request `id`.
    #[allow(missing_docs)]
    Watch { id: u64, events: Vec<WatchEvent> },
    /// The watch started by request `id` ended; resume after `last_index`.
    #[allow(missing_docs)]
    WatchEnded { id: u64, reason: String },
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseBody {
    /// Who answered.
    Hello {
        /// The answering node.
        node_id: NodeId,
        /// Its cluster.
        cluster_id: u64,
    },
    /// The kv's answer to a write or a read.
    Kv(Response),
    /// The watch runs: events with an index above `after_index` follow
    /// (for a watch "from now", the node's applied index at registration).
    Watching {
        /// Events above this index follow.
        after_index: Index,
    },
    /// `tarn status`.
    Status(NodeStatus),
    /// Done, nothing to say.
    Done,
    /// The connection now acts as `name` with `role`. `enabled` false: the
    /// server checks no credentials (no `--auth-file`); everyone may do everything.
    Authenticated {
        /// The principal's name.
        name: String,
        /// Its role.
        role: String,
        /// Whether the server checks credentials at all.
        enabled: bool,
    },
}

/// What `tarn status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// This node.
    pub node_id: NodeId,
    /// Its cluster.
    pub cluster_id: u64,
    /// Every node this one can reach and its peer address, itself included
    /// (a joining node learns the cluster from it).
    pub peers: Vec<(NodeId, SocketAddr)>,
    /// Every group this node hosts.
    pub groups: Vec<GroupStatus>,
    /// The server's counters, by name.
    pub counters: Vec<(String, u64)>,
    /// Set while an empty data directory waits for its peers' answers
    /// before its groups start (first start of a `--cluster` node): says
    /// which nodes it waits for.
    pub first_start: Option<String>,
}

/// One group as `tarn status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// The group.
    pub group: GroupId,
    /// This node's role in it.
    pub role: String,
    /// Its current term.
    pub term: Term,
    /// The leader this node knows.
    pub leader: Option<NodeId>,
    /// The commit index.
    pub commit: Index,
    /// The applied index.
    pub applied: Index,
    /// The last log entry.
    pub last_log_id: LogId,
    /// The voters.
    pub voters: Vec<NodeId>,
    /// The learners.
    pub learners: Vec<NodeId>,
    /// On the leader: (follower, match index, lag in entries, connected):
    /// `connected` is false while this node has no connection to it, so its
    /// match index is only the last one heard.
    pub followers: Vec<(NodeId, Index, u64, bool)>,
    /// Started with `--join` and not yet seen a committed configuration
    /// listing it as a non-voter: it does not vote. Promote it only after
    /// this turns false.
    pub rejoining: bool,
    /// Why the group stopped, if it did.
    pub error: Option<String>,
}

/// Why a request failed on the server side (kv errors travel inside `Kv`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[allow(missing_docs)] // the fields say what the messages say
pub enum ServerError {
    /// Ask the leader instead (`leader`: the one this node knows).
    #[error("node {node} is not the leader of group {group} (leader: {leader:?})")]
    NotLeader { node: NodeId, group: GroupId, leader: Option<NodeId> },
    /// The write may have applied: retry it under the same seq.
    #[error("leadership changed after the write was appended; it may or may not have applied (retry with the same seq)")]
    MaybeCommitted { leader: Option<NodeId> },
    /// The node does not host the group.
    #[error("group {group} is not hosted on node {node}")]
    NoSuchGroup { node: NodeId, group: GroupId },
    /// The request is malformed; retrying cannot help.
    #[error("bad request: {reason}")]
    BadRequest { reason: String },
    /// The node cannot serve now; try again or elsewhere.
    #[error("unavailable: {reason}")]
    Unavailable { reason: String },
    /// Sent by a node's *peer* port to a client that connected there by
    /// mistake, so the client fails at once instead of retrying.
    #[error("this is node {node}'s peer port, not a client port; use its --client address")]
    PeerPort { node: NodeId },
    /// The answer would not fit a client frame; it was not sent. A listing
    /// is paged with `List { limit, after }` (`tarn ls --limit/--after`).
    #[error(
        "reply of {size_bytes} bytes exceeds the frame limit {max_bytes}; use ls --limit/--after to page"
    )]
    ReplyTooLarge { size_bytes: usize, max_bytes: usize },
    /// The connection's principal lacks a permission this request needs
    /// (the connection stays open).
    #[error("permission denied: {principal} lacks the {permission} permission ({detail})")]
    PermissionDenied { principal: String, permission: String, detail: String },
    /// The server requires credentials and this connection has none that
    /// it accepts (the connection stays open).
    #[error("unauthenticated: {reason}")]
    Unauthenticated { reason: String },
}

impl ServerError {
    /// Every [`ServerError::kind`], in [`ServerError::kind_index`] order.
    pub const KINDS: [&'static str; 9] = [
        "not_leader",
        "maybe_committed",
        "no_such_group",
        "bad_request",
        "unavailable",
        "peer_port",
        "reply_too_large",
        "permission_denied",
        "unauthenticated",
    ];

    /// The variant's name in snake case (a metrics label).
    pub fn kind(&self) -> &'static str {
        Self::KINDS[self.kind_index()]
    }

    /// The variant's position in [`ServerError::KINDS`].
    pub fn kind_index(&self) -> usize {
        match self {
            ServerError::NotLeader { .. } => 0,
            ServerError::MaybeCommitted { .. } => 1,
            ServerError::NoSuchGroup { .. } => 2,
            ServerError::BadRequest { .. } => 3,
            ServerError::Unavailable { .. } => 4,
            ServerError::PeerPort { .. } => 5,
            ServerError::ReplyTooLarge { .. } => 6,
            ServerError::PermissionDenied { .. } => 7,
            ServerError::Unauthenticated { .. } => 8,
        }
    }
}
