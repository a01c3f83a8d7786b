//! Snapshot files: `snap-<index>-<term>.snap`, each self-checking.
//!
//! Written under a temporary name, synced, renamed, and the directory synced:
//! so the final name exists only for a complete, durable file. Older
//! snapshots are removed after the new one is durable. Recovery ignores (and
//! removes) temporary files, so a half-written snapshot is never loaded.
//!
//! ```text
//! magic "TARNSNP1" | version u32 | meta_len u32 | data_len u64 | crc32c u32 | pad u32 | meta (postcard) | data
//! ```
//! The checksum covers bytes 0..24 of the header, the meta and the data.

use std::path::{Path, PathBuf};

use tarn_core::{Index, SnapshotMeta, Term};

use super::error::{io_err, Result, StorageError};
use crate::vfs::{Vfs, VfsFile};

const MAGIC: &[u8; 8] = b"TARNSNP1";
const VERSION: u32 = 1;
pub const SNAPSHOT_HEADER_BYTES: usize = 32;
/// Membership metadata is small; anything bigger is damage.
pub const MAX_SNAPSHOT_META_BYTES: u32 = 1 << 20;
pub const SNAPSHOT_TMP_SUFFIX: &str = ".snap.tmp";

pub fn file_name(index: Index, term: Term) -> String {
    format!("snap-{index:020}-{term:020}.snap")
}

/// Parses `snap-<index>-<term>.snap`.
pub fn parse_name(name: &str) -> Option<(Index, Term)> {
    let rest = name.strip_prefix("snap-")?.strip_suffix(".snap")?;
    let (index, term) = rest.split_once('-')?;
    if index.len() != 20 || term.len() != 20 {
        return None;
    }
    Some((index.parse().ok()?, term.parse().ok()?))
}

pub fn encode_header(meta_bytes: &[u8], data: &[u8]) -> [u8; SNAPSHOT_HEADER_BYTES] {
    let mut h = [0u8; SNAPSHOT_HEADER_BYTES];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(meta_bytes.len() as u32).to_le_bytes());
    h[16..24].copy_from_slice(&(data.len() as u64).to_le_bytes());
    let mut crc = crc32c::crc32c(&h[..24]);
    crc = crc32c::crc32c_append(crc, meta_bytes);
    crc = crc32c::crc32c_append(crc, data);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Writes a snapshot durably (see the module doc). Returns its path.
pub fn write(vfs: &dyn Vfs, dir: &Path, meta: &SnapshotMeta, data: &[u8]) -> Result<PathBuf> {
    let meta_bytes = postcard::to_allocvec(meta).expect("snapshot meta serializes");
    assert!(meta_bytes.len() as u32 <= MAX_SNAPSHOT_META_BYTES, "membership metadata is bounded");
    let last = meta.last_log_id;
    let path = dir.join(file_name(last.index, last.term));
    let tmp = dir.join(format!("snap-{:020}-{:020}{SNAPSHOT_TMP_SUFFIX}", last.index, last.term));
    match vfs.remove(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove", &tmp)(e)),
    }
    let file = vfs.create(&tmp).map_err(io_err("create", &tmp))?;
    let header = encode_header(&meta_bytes, data);
    file.write_at(&header, 0).map_err(io_err("write", &tmp))?;
    file.write_at(&meta_bytes, SNAPSHOT_HEADER_BYTES as u64).map_err(io_err("write", &tmp))?;
    file.write_at(data, (SNAPSHOT_HEADER_BYTES + meta_bytes.len()) as u64).map_err(io_err("write", &tmp))?;
    file.sync_data().map_err(io_err("fdatasync", &tmp))?;
    drop(file);
    vfs.rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
    vfs.sync_dir(dir).map_err(io_err("fsync directory", dir))?;
    Ok(path)
}

/// A snapshot file's header, checked: magic, version, and lengths that add
/// up to the file's size. `read` and `verify` both parse it here, so they
/// cannot disagree on what a valid header is (the `snapshot_decode` fuzz
/// target once found `verify` accepting a version that `read` refused).
struct Header {
    bytes: [u8; SNAPSHOT_HEADER_BYTES],
    file_len: u64,
    meta_len: u32,
    crc: u32,
}

fn read_header(file: &dyn VfsFile, path: &Path) -> Result<Header> {
    let corrupt =
        |offset: u64, reason: String| StorageError::Corruption { path: path.to_path_buf(), offset, reason };
    let len = file.len().map_err(io_err("stat", path))?;
    if len < SNAPSHOT_HEADER_BYTES as u64 {
        return Err(corrupt(0, format!("snapshot file is {len} bytes, shorter than its header")));
    }
    let mut h = [0u8; SNAPSHOT_HEADER_BYTES];
    file.read_at(&mut h, 0).map_err(io_err("read", path))?;
    if &h[0..8] != MAGIC {
        return Err(corrupt(0, "not a tarn snapshot (bad magic)".into()));
    }
    // The slices have fixed lengths, so these conversions cannot fail.
    let u32_at = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().expect("4 bytes"));
    let version = u32_at(8);
    if version != VERSION {
        return Err(corrupt(8, format!("snapshot format version {version} is not supported")));
    }
    let meta_len = u32_at(12);
    let data_len = u64::from_le_bytes(h[16..24].try_into().expect("8 bytes"));
    let crc = u32_at(24);
    if meta_len > MAX_SNAPSHOT_META_BYTES
        || (meta_len as u64).checked_add(data_len) != Some(len - SNAPSHOT_HEADER_BYTES as u64)
    {
        return Err(corrupt(12, format!("bad lengths: meta {meta_len}, data {data_len}, file {len} bytes")));
    }
    Ok(Header { bytes: h, file_len: len, meta_len, crc })
}

/// Reads and verifies the snapshot at `path`. `max_bytes` bounds the
/// allocation (a damaged length field cannot make it allocate more).
pub fn read(vfs: &dyn Vfs, path: &Path, max_bytes: u64) -> Result<(SnapshotMeta, Vec<u8>)> {
    let corrupt =
        |offset: u64, reason: String| StorageError::Corruption { path: path.to_path_buf(), offset, reason };
    let file = vfs.open(path).map_err(io_err("open", path))?;
    let Header { bytes: h, file_len: len, meta_len, crc } = read_header(file.as_ref(), path)?;
    if len > max_bytes {
        return Err(corrupt(16, format!("snapshot file is {len} bytes, above the bound of {max_bytes}")));
    }
    let mut body = vec![0u8; (len - SNAPSHOT_HEADER_BYTES as u64) as usize];
    file.read_at(&mut body, SNAPSHOT_HEADER_BYTES as u64).map_err(io_err("read", path))?;
    let actual = crc32c::crc32c_append(crc32c::crc32c(&h[..24]), &body);
    if actual != crc {
        return Err(corrupt(0, "snapshot checksum mismatch".into()));
    }
    let meta: SnapshotMeta = postcard::from_bytes(&body[..meta_len as usize])
        .map_err(|e| corrupt(SNAPSHOT_HEADER_BYTES as u64, format!("bad snapshot metadata: {e}")))?;
    let data = body.split_off(meta_len as usize);
    Ok((meta, data))
}

/// Verifies the snapshot at `path` end to end (streaming, in bounded chunks)
/// and returns its metadata without loading the data.
pub fn verify(vfs: &dyn Vfs, path: &Path) -> Result<SnapshotMeta> {
    const CHUNK_BYTES: u64 = 1 << 20;
    let corrupt =
        |offset: u64, reason: String| StorageError::Corruption { path: path.to_path_buf(), offset, reason };
    let file = vfs.open(path).map_err(io_err("open", path))?;
    let Header { bytes: h, file_len: len, meta_len, crc } = read_header(file.as_ref(), path)?;
    let mut actual = crc32c::crc32c(&h[..24]);
    let mut chunk = vec![0u8; CHUNK_BYTES.min(len) as usize];
    let mut meta_bytes = Vec::with_capacity(meta_len as usize);
    let mut offset = SNAPSHOT_HEADER_BYTES as u64;
    while offset < len {
        let n = (len - offset).min(CHUNK_BYTES) as usize;
        file.read_at(&mut chunk[..n], offset).map_err(io_err("read", path))?;
        actual = crc32c::crc32c_append(actual, &chunk[..n]);
        let meta_end = SNAPSHOT_HEADER_BYTES as u64 + meta_len as u64;
        if offset < meta_end {
            let take = ((meta_end - offset) as usize).min(n);
            meta_bytes.extend_from_slice(&chunk[..take]);
        }
        offset += n as u64;
    }
    if actual != crc {
        return Err(corrupt(0, "snapshot checksum mismatch".into()));
    }
    postcard::from_bytes(&meta_bytes)
        .map_err(|e| corrupt(SNAPSHOT_HEADER_BYTES as u64, format!("bad snapshot metadata: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfs::MemVfs;
    use tarn_core::{LogId, Membership};

    #[test]
    fn write_read_and_reject_damage() {
        let vfs = MemVfs::new();
        let dir = Path::new("/g");
        vfs.create_dir_all(dir).unwrap();
        let meta =
            SnapshotMeta { last_log_id: LogId::new(3, 42), membership: Membership::new_voters([1, 2]) };
        let path = write(&vfs, dir, &meta, b"state bytes").unwrap();
        assert_eq!(parse_name(path.file_name().unwrap().to_str().unwrap()), Some((42, 3)));
        assert_eq!(read(&vfs, &path, 1 << 20).unwrap(), (meta.clone(), b"state bytes".to_vec()));
        assert_eq!(verify(&vfs, &path).unwrap(), meta);
        assert!(read(&vfs, &path, 8).is_err(), "size bound");
        let len = vfs.file_bytes(&path).unwrap().len() as u64;
        for offset in [0, 13, 20, 26, 33, len - 1] {
            vfs.flip_bit(&path, offset, 2);
            assert!(matches!(read(&vfs, &path, 1 << 20), Err(StorageError::Corruption { .. })), "{offset}");
            assert!(matches!(verify(&vfs, &path), Err(StorageError::Corruption { .. })), "{offset}");
            vfs.flip_bit(&path, offset, 2);
        }
        // An unknown format version is refused by both readers alike.
        let mut bytes = vfs.file_bytes(&path).unwrap();
        bytes[8] = 2;
        let file = vfs.open(&path).unwrap();
        file.write_at(&bytes, 0).unwrap();
        assert!(matches!(read(&vfs, &path, 1 << 20), Err(StorageError::Corruption { offset: 8, .. })));
        assert!(matches!(verify(&vfs, &path), Err(StorageError::Corruption { offset: 8, .. })));
        assert_eq!(parse_name("snap-1-2.snap"), None);
        assert_eq!(parse_name("snap-00000000000000000042-00000000000000000003.snap.tmp"), None);
    }
}
