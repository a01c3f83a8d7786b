//! What the state machine answers.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use tarn_core::{Index, Nanos};

use crate::command::ClientId;
use crate::error::KvError;

/// The result of one request. Errors are values: a refused command changed nothing.
pub type Response = Result<Reply, KvError>;

/// What a node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeKind {
    /// Holds a value; never has children.
    Value,
    /// Holds children; never has a value.
    Dir,
    /// A distributed lock: a temporary leaf whose owner is the holder.
    Lock,
}

/// Owner and TTL of a temporary node (or the holder and lease of a lock).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TempInfo {
    pub owner: ClientId,
    pub ttl_nanos: Nanos,
    /// Names the current arming; an `Expire` must carry it to take effect.
    pub arm_id: u64,
}

/// A node as a reader sees it. `value` is a cheap clone of the stored `Bytes` (no copy).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub kind: NodeKind,
    /// Empty for directories and locks.
    pub value: Bytes,
    pub create_index: Index,
    pub create_time_nanos: Nanos,
    pub update_index: Index,
    pub update_time_nanos: Nanos,
    /// `Some` for temporary nodes and held locks.
    pub temp: Option<TempInfo>,
    /// For locks: clients queued behind the holder, first in line first.
    pub lock_waiters: Vec<ClientId>,
}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildView {
    /// The child's last segment (not the full key).
    pub name: String,
    pub node: NodeView,
}

/// What a try-lock achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockOutcome {
    /// The requesting client holds the lock (newly, or already held: the lease was renewed).
    Acquired,
    /// Queued behind the holder; `position` 0 is next in line. The client learns acquisition
    /// from a watch event on the lock key, or by retrying.
    Queued { position: u32 },
}

/// A successful result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// A write that returns nothing more (put, remove, mkdir, CAS, update-TTL, unlock, ...).
    Done,
    /// Get: the node, or `None` when the key does not exist (not an error).
    Node(Option<NodeView>),
    /// Batch get: one entry per requested key, in order.
    Nodes(Vec<Result<Option<NodeView>, KvError>>),
    /// List: the direct children in key order (a page of them when the request had a limit
    /// or an `after`); `more` is true when children after the last one remain.
    Children { children: Vec<ChildView>, more: bool },
    /// Batch put/remove: one result per item, in order.
    Batch(Vec<Result<(), KvError>>),
    /// Try-lock.
    Lock(LockOutcome),
    /// Expire proposed by the leader: whether it removed anything (false = stale, re-armed).
    Expired(bool),
}
