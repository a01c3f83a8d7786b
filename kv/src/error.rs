//! The typed, stable errors of the DtKV model.
//!
//! `KvError` travels to clients inside responses (serde), so its variants are part of the wire
//! contract: add variants at the end, never reorder or change existing ones. Every message
//! names the key involved and says what to do.

use serde::{Deserialize, Serialize};

use crate::command::ClientId;
use crate::key::KeyProblem;

/// Why a command was refused. A refused command changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum KvError {
    #[error("invalid key {key:?}: {problem}")]
    InvalidKey { key: String, problem: KeyProblem },
    #[error("value for key {key:?} is {size_bytes} bytes, more than the maximum {max_bytes}")]
    ValueTooLarge { key: String, size_bytes: usize, max_bytes: usize },
    #[error("value for key {key:?} is empty; values must be non-empty (use remove to delete)")]
    EmptyValue { key: String },
    #[error("key {key:?} does not exist")]
    NotFound { key: String },
    #[error("key {key:?} is not a directory")]
    NotADir { key: String },
    #[error("key {key:?} is a directory; it has no value (remove it or use another key)")]
    IsADir { key: String },
    #[error("directory {key:?} is not empty; remove its children first")]
    DirNotEmpty { key: String },
    #[error("parent directory of {key:?} does not exist; mkdir it first")]
    ParentMissing { key: String },
    #[error("compare-and-set on {key:?} failed: the current value is not the expected one")]
    CasMismatch { key: String },
    #[error("compare-and-set on {key:?} has both expected and new value absent; nothing to do")]
    CasBothAbsent { key: String },
    #[error("key {key:?} is a temporary node owned by client {owner}; only the owner may change it")]
    NotOwner { key: String, owner: ClientId },
    #[error("key {key:?} is not a temporary node (it has no TTL or owner)")]
    NotTemporary { key: String },
    #[error("key {key:?} already exists as a permanent node; a temporary node cannot replace it")]
    NotTemporaryConflict { key: String },
    #[error("key {key:?} is a lock; use the lock operations on it")]
    IsALock { key: String },
    #[error("key {key:?} is not a lock")]
    NotALock { key: String },
    #[error("lock {key:?} is not held by this client")]
    LockNotHeld { key: String },
    #[error("lock {key:?} is held by client {holder}")]
    LockBusy { key: String, holder: ClientId },
    #[error("lock {key:?} already has {max} waiters; retry later")]
    TooManyWaiters { key: String, max: usize },
    #[error("TTL of {ttl_nanos} ns for key {key:?} is outside [{min_nanos}, {max_nanos}] ns")]
    InvalidTtl { key: String, ttl_nanos: u64, min_nanos: u64, max_nanos: u64 },
    #[error("batch of {count} items is larger than the maximum {max}; split it")]
    TooManyItems { count: usize, max: usize },
    #[error(
        "session of client {client_id} expired or is unknown; open a new session (new client id, seq 1)"
    )]
    SessionExpired { client_id: ClientId },
    #[error("request seq {seq} of client {client_id} is older than the session keeps ({floor}); its result is gone")]
    SessionSeqTooOld { client_id: ClientId, seq: u64, floor: u64 },
    #[error("too many client sessions ({max}); retry later or raise max_sessions")]
    TooManySessions { max: usize },
    #[error("client id 0 is reserved for commands the leader proposes")]
    ReservedClientId,
    #[error("command {command} may only be proposed by the leader with client id 0")]
    SystemOnly { command: String },
    #[error("key {key:?} is in the reserved namespace _tarn; it is written by the cluster itself (use another key; reading it is fine)")]
    ReservedKey { key: String },
    /// Refused at admission, before any log write: the request alone would make a Raft entry
    /// larger than the cluster's `max_entry_bytes`, which storage and peer frames are sized for.
    #[error("{command} request encodes to {size_bytes} bytes, more than max_entry_bytes {max_bytes} (the largest Raft entry); split it into smaller requests")]
    RequestTooLarge { command: String, size_bytes: usize, max_bytes: usize },
}

/// Why bytes could not be decoded into a request, entry or response.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("encoded {what} is empty")]
    Empty { what: &'static str },
    #[error("encoded {what} is {size_bytes} bytes, more than the maximum {max_bytes}")]
    TooLarge { what: &'static str, size_bytes: usize, max_bytes: usize },
    #[error("encoded {what} has format version {found}, this build reads version {expected}")]
    Version { what: &'static str, found: u8, expected: u8 },
    #[error("encoded {what} is malformed: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("encoded {what} has {extra} trailing bytes")]
    Trailing { what: &'static str, extra: usize },
}

/// Why a snapshot could not be decoded. A failed decode leaves no partial state behind.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot chunk {chunk}: {detail}")]
    BadChunk { chunk: u32, detail: String },
    #[error("snapshot chunk {chunk}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x}); the snapshot is damaged, fetch it again")]
    Checksum { chunk: u32, stored: u32, computed: u32 },
    #[error("snapshot chunk {found} arrived where chunk {expected} was expected")]
    OutOfOrder { expected: u32, found: u32 },
    #[error("snapshot record in chunk {chunk} is invalid: {detail}")]
    BadRecord { chunk: u32, detail: String },
    #[error("snapshot ended before its final chunk")]
    Incomplete,
    #[error("snapshot digest mismatch: header says {expected:#018x}, rebuilt state has {actual:#018x}")]
    Digest { expected: u64, actual: u64 },
}
