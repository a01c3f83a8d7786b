//! Identity files: small checksummed records saying which cluster, node and
//! group a directory belongs to, so a misconfigured path is refused instead
//! of silently mixing two clusters' logs.
//!
//! ```text
//! magic "TARNID01" | version u32 | kind u32 | cluster u64 | node u64 | group u64 | crc32c u32 | pad u32
//! ```

use std::path::Path;

use tarn_core::{GroupId, NodeId};

use super::error::{io_err, Result, StorageError};
use crate::vfs::Vfs;

const MAGIC: &[u8; 8] = b"TARNID01";
const VERSION: u32 = 1;
pub const IDENTITY_BYTES: usize = 48;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub cluster_id: u64,
    pub node_id: NodeId,
    /// `None` for the node-level file.
    pub group: Option<GroupId>,
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cluster {} node {}", self.cluster_id, self.node_id)?;
        if let Some(group) = self.group {
            write!(f, " group {group}")?;
        }
        Ok(())
    }
}

impl Identity {
    pub fn encode(&self) -> [u8; IDENTITY_BYTES] {
        let mut b = [0u8; IDENTITY_BYTES];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        let (kind, group) = match self.group {
            None => (1u32, 0),
            Some(g) => (2u32, g),
        };
        b[12..16].copy_from_slice(&kind.to_le_bytes());
        b[16..24].copy_from_slice(&self.cluster_id.to_le_bytes());
        b[24..32].copy_from_slice(&self.node_id.to_le_bytes());
        b[32..40].copy_from_slice(&group.to_le_bytes());
        let crc = crc32c::crc32c(&b[..40]);
        b[40..44].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> std::result::Result<Identity, String> {
        if b.len() != IDENTITY_BYTES {
            return Err(format!("identity file is {} bytes, expected {IDENTITY_BYTES}", b.len()));
        }
        if &b[0..8] != MAGIC {
            return Err("not a tarn identity file (bad magic)".into());
        }
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        if crc32c::crc32c(&b[..40]) != u32_at(40) {
            return Err("identity checksum mismatch".into());
        }
        if u32_at(8) != VERSION {
            return Err(format!(
                "identity format version {} is not supported (this build reads {VERSION})",
                u32_at(8)
            ));
        }
        let group = match u32_at(12) {
            1 => None,
            2 => Some(u64_at(32)),
            other => return Err(format!("unknown identity kind {other}")),
        };
        Ok(Identity { cluster_id: u64_at(16), node_id: u64_at(24), group })
    }
}

/// Writes `bytes` to `path` atomically and durably: temp name, sync, rename,
/// directory sync. `dir` is the parent of `path`.
pub fn write_file_atomic(vfs: &dyn Vfs, dir: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    match vfs.remove(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove", &tmp)(e)),
    }
    let file = vfs.create(&tmp).map_err(io_err("create", &tmp))?;
    file.write_at(bytes, 0).map_err(io_err("write", &tmp))?;
    file.sync_data().map_err(io_err("fdatasync", &tmp))?;
    drop(file);
    vfs.rename(&tmp, path).map_err(io_err("rename", &tmp))?;
    vfs.sync_dir(dir).map_err(io_err("fsync directory", dir))
}

/// Checks (or, on first use, writes) the identity file `path` in `dir`.
pub fn check_or_write(vfs: &dyn Vfs, dir: &Path, path: &Path, expected: Identity) -> Result<()> {
    match vfs.open(path) {
        Ok(file) => {
            let len = file.len().map_err(io_err("stat", path))?;
            if len != IDENTITY_BYTES as u64 {
                return Err(StorageError::Corruption {
                    path: path.to_path_buf(),
                    offset: 0,
                    reason: format!("identity file is {len} bytes, expected {IDENTITY_BYTES}"),
                });
            }
            let mut buf = [0u8; IDENTITY_BYTES];
            file.read_at(&mut buf, 0).map_err(io_err("read", path))?;
            let found = Identity::decode(&buf).map_err(|reason| StorageError::Corruption {
                path: path.to_path_buf(),
                offset: 0,
                reason,
            })?;
            if found != expected {
                return Err(StorageError::WrongIdentity {
                    path: path.to_path_buf(),
                    expected: expected.to_string(),
                    found: found.to_string(),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write_file_atomic(vfs, dir, path, &expected.encode())
        }
        Err(e) => Err(io_err("open", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trip_and_damage() {
        let id = Identity { cluster_id: 7, node_id: 3, group: Some(9) };
        let bytes = id.encode();
        assert_eq!(Identity::decode(&bytes).unwrap(), id);
        let node = Identity { group: None, ..id };
        assert_eq!(Identity::decode(&node.encode()).unwrap(), node);
        let mut bad = bytes;
        bad[20] ^= 1;
        assert!(Identity::decode(&bad).unwrap_err().contains("checksum"));
        assert!(Identity::decode(&bytes[..10]).is_err());
    }
}
