//! Typed storage errors. Every variant names the file (or group) involved and
//! says what to do about it.

use std::io;
use std::path::PathBuf;

use tarn_core::{GroupId, Index};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The configuration cannot work; nothing was touched.
    #[error("invalid storage configuration: {0}")]
    InvalidConfig(String),

    /// The data directory cannot be created or written.
    #[error("data directory {path} is not writable ({source}); check that it exists, its permissions and free space")]
    Unwritable { path: PathBuf, source: io::Error },

    /// The directory belongs to another cluster, node or group.
    #[error("{path} belongs to {found}, not to {expected}; point the data directory at the right node or move it away")]
    WrongIdentity { path: PathBuf, expected: String, found: String },

    /// An I/O call failed outside the append path (open, read, recovery,
    /// snapshot). The group is not poisoned by a failed *read*.
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: io::Error },

    /// Stored bytes are damaged where they cannot be a torn tail (synced
    /// data, a missing file, a zeroed hard state): acknowledged data might
    /// be lost, so recovery stops instead of truncating, and says how to
    /// rebuild the group from its peers.
    #[error(
        "corrupt data in {path} at byte offset {offset}: {reason}; the group will not start. Restore it from \
         a peer: move the group's directory aside and restart the node with --join, or remove the node from \
         the group and add it back as a learner"
    )]
    Corruption { path: PathBuf, offset: u64, reason: String },

    /// A write or fdatasync failed earlier: the page cache may have dropped
    /// the data, so the group refuses every further write and read of its log.
    #[error("group {group} is stopped after a failed {op} on {path}: {cause}; restart the node to recover from what is durable")]
    Poisoned { group: GroupId, op: &'static str, path: PathBuf, cause: String },

    /// The group was never opened on this engine.
    #[error("group {0} is not open in this storage engine; call open_group first")]
    UnknownGroup(GroupId),

    /// The caller asked for something that contradicts the log (a gap, a term
    /// going backwards, an entry too large, an index already compacted).
    #[error("group {group}: {reason}")]
    InvalidRequest { group: GroupId, reason: String },

    /// Entries asked for are gone (compacted) or not written yet.
    #[error("group {group}: entries {lo}..{hi} are not available (log holds {first}..{end})")]
    Unavailable { group: GroupId, lo: Index, hi: Index, first: Index, end: Index },
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(io::Error) -> StorageError + 'a {
    move |source| StorageError::Io { op, path: path.to_path_buf(), source }
}
