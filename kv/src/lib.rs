//! tarn-kv: the DtKV state machine, pure and deterministic.
//!
//! A tree of nodes addressed by `.`-separated keys (`app.db.url`): values, directories,
//! temporary nodes with TTL and owner, and locks. Committed Raft entries carry a [`KvEntry`]
//! (the leader's clock plus requests); [`KvStateMachine::apply`] turns each [`Request`] into a
//! [`Response`], identically on every node. No I/O, no clock: time arrives inside entries.
//!
//! Map of the crate:
//! - [`key`]: key/value rules, shared with the client (`validate_key`).
//! - [`command`], [`response`], [`error`]: the wire contract between client, server and
//!   simulator, and the entry encoding (`encode_entry`/`decode_entry`).
//! - `tree`: the node arena and index; `machine`: apply and reads; `lock`: locks;
//!   `session`: de-duplication; `ttl`: leader-local deadlines; [`watch`]: events.
//! - [`snapshot`]: chunked, checksummed encode/decode and the state digest.
//! - `model` (feature `testkit`): a deliberately simple reference model for tests and fuzzing.
//!
//! Who calls what:
//! - the client library: `validate_key`, `Command::validate` (fail fast, no round trip);
//! - the server, before proposing a client's request: `Request::validate_from_client`;
//! - every node: `apply_entry_bytes` for each committed entry; `get`/`list`/`batch_get` after
//!   a ReadIndex (reads need not go through the log);
//! - the leader: `rearm_ttls(now)` on winning an election, then on each timer
//!   `expired(now, max)` → propose the returned requests in a `KvEntry`;
//! - the server: `watch`/`poll_watch`/`ready_watches` for its clients' watches;
//! - snapshots: `fork()` then `snapshot_chunks` on the fork (any thread) / `SnapshotDecoder`
//!   + `install`; `digest()` to compare replicas.

pub mod command;
pub mod config;
pub mod error;
pub mod key;
mod lock;
mod machine;
#[cfg(any(test, feature = "testkit"))]
pub mod model;
#[cfg(test)]
mod model_check;
pub mod response;
mod session;
pub mod snapshot;
mod tree;
mod ttl;
pub mod watch;

pub use command::{
    decode_entry, decode_request, decode_response, encode_entry, encode_request, encode_response,
    encoded_request_bytes, ClientId, Command, KvEntry, Request, ENTRY_ENVELOPE_MAX_BYTES, SYSTEM_CLIENT_ID,
};
pub use config::KvConfig;
pub use error::{DecodeError, KvError, SnapshotError};
pub use key::{
    is_in_subtree, is_reserved, validate_key, validate_key_or_root, validate_value, KeyProblem,
    RESERVED_NAMESPACE,
};
pub use machine::{KvStateMachine, WatchRegisterError};
pub use response::{ChildView, LockOutcome, NodeKind, NodeView, Reply, Response, TempInfo};
pub use snapshot::{decode_snapshot, SnapshotDecoder, SnapshotEncoder, SnapshotStreamDecoder};
pub use watch::{CutOffReason, EventKind, WatchError, WatchEvent, WatchId, WatchPoll};
