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
    #[error("invalid key {}: {problem}", ShortKey(key))]
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
    #[error("TTL of {} for key {key:?} is outside [{}, {}]", Ms(*ttl_nanos), Ms(*min_nanos), Ms(*max_nanos))]
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

/// A key in an error message: quoted, and cut after 64 bytes (an invalid
/// key may be kilobytes long; the message is for a person).
struct ShortKey<'a>(&'a str);

impl std::fmt::Display for ShortKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN: usize = 64;
        if self.0.len() <= SHOWN {
            return write!(f, "{:?}", self.0);
        }
        let cut = (0..=SHOWN).rev().find(|i| self.0.is_char_boundary(*i)).unwrap_or(0);
        write!(f, "{:?}... ({} bytes)", &self.0[..cut], self.0.len())
    }
}

/// Nanoseconds shown in milliseconds, the unit clients give TTLs and leases in.
struct Ms(u64);

impl std::fmt::Display for Ms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const NS_PER_MS: u64 = 1_000_000;
        if self.0.is_multiple_of(NS_PER_MS) {
            write!(f, "{} ms", self.0 / NS_PER_MS)
        } else {
            write!(f, "{:.6} ms", self.0 as f64 / NS_PER_MS as f64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyProblem;

    #[test]
    fn a_long_invalid_key_is_cut_and_its_limit_named() {
        let key = "k".repeat(9000);
        let e = KvError::InvalidKey {
            key: key.clone(),
            problem: KeyProblem::LongerThan { size_bytes: 9000, max_bytes: 8192 },
        };
        let msg = e.to_string();
        assert!(msg.len() < 200, "{msg}");
        assert!(msg.contains("9000 bytes") && msg.contains("8192"), "{msg}");
    }

    #[test]
    fn ttls_are_shown_in_milliseconds() {
        let e = KvError::InvalidTtl {
            key: "t".into(),
            ttl_nanos: 1_500_000,
            min_nanos: 1_000_000,
            max_nanos: 2_000_000,
        };
        assert_eq!(e.to_string(), "TTL of 1.500000 ms for key \"t\" is outside [1 ms, 2 ms]");
    }
}
