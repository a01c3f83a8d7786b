//! Snapshot files: `snap-<index>-<term>.snap`, each self-checking.
//!
//! Written under a temporary name, synced, renamed, and the directory synced:
//! so the final name exists only for a complete, durable file. Older
//! snapshots are removed after the new one is durable. Recovery ignores (and
//! removes) temporary files, so a half-written snapshot is never loaded.
//!
//! ```text
//! magic "TARNSNP1" | version u32 | meta_len u32 | data_len u64 | crc32c u32 | pad u32 | data | meta (postcard)
//! ```
//! The checksum covers bytes 0..24 of the header, then everything after the
//! header in file order. The data comes first (format version 2) so that a
//! follower can stage a leader's chunks before it knows the metadata (the
//! core hands it over only with `InstallSnapshot`), and a chunk's offset in
//! the data is its offset in the file plus the fixed header size.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tarn_core::{Index, LogId, SnapshotMeta, Term};

use super::error::{io_err, Result, StorageError};
use crate::vfs::{Vfs, VfsFile};

const MAGIC: &[u8; 8] = b"TARNSNP1";
const VERSION: u32 = 2;
pub const SNAPSHOT_HEADER_BYTES: usize = 32;
/// Where the data starts in a snapshot file.
const DATA_START: u64 = SNAPSHOT_HEADER_BYTES as u64;
/// Membership metadata is small; anything bigger is damage.
pub const MAX_SNAPSHOT_META_BYTES: u32 = 1 << 20;
pub const SNAPSHOT_TMP_SUFFIX: &str = ".snap.tmp";
/// Reads while verifying a whole file go this many bytes at a time.
const VERIFY_READ_BYTES: u64 = 1 << 20;

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

fn header_fields(meta_len: u32, data_len: u64) -> [u8; SNAPSHOT_HEADER_BYTES] {
    let mut h = [0u8; SNAPSHOT_HEADER_BYTES];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&meta_len.to_le_bytes());
    h[16..24].copy_from_slice(&data_len.to_le_bytes());
    h
}

/// The header of a file holding `data` then `meta_bytes`, checksum included.
pub fn encode_header(meta_bytes: &[u8], data: &[u8]) -> [u8; SNAPSHOT_HEADER_BYTES] {
    let mut h = header_fields(meta_bytes.len() as u32, data.len() as u64);
    let mut crc = crc32c::crc32c(&h[..24]);
    crc = crc32c::crc32c_append(crc, data);
    crc = crc32c::crc32c_append(crc, meta_bytes);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Writes a snapshot durably (see the module doc) in one piece. Returns its
/// path. A thin wrapper over [`SnapshotWriter`].
pub fn write(vfs: &dyn Vfs, dir: &Path, meta: &SnapshotMeta, data: &[u8]) -> Result<PathBuf> {
    let mut writer = SnapshotWriter::start(VfsRef::Borrowed(vfs), dir, meta.last_log_id, 0)?;
    writer.write_chunk(data)?;
    Ok(writer.finish(meta)?.path)
}

/// A snapshot being written, chunk by chunk, so a big state machine is never
/// one blob in memory. Owns its temporary file and needs nothing of the
/// engine, so it can be filled on any thread (`Send`).
/// [`SnapshotWriter::finish`] makes it durable under its final name; the
/// engine then records it as the group's snapshot
/// ([`super::Storage::commit_snapshot`]). Dropped unfinished, it removes its
/// temporary file (recovery also removes leftovers).
pub struct SnapshotWriter<'v> {
    vfs: VfsRef<'v>,
    dir: PathBuf,
    tmp: PathBuf,
    path: PathBuf,
    file: Option<Box<dyn VfsFile>>,
    snapshot: LogId,
    data_len: u64,
    /// Bound on the data (a leader streaming without end cannot fill the disk).
    max_data_bytes: u64,
    /// CRC32C of the data so far (header and metadata are folded in at the end).
    data_crc: u32,
    finished: bool,
}

/// A borrowed or shared file system: the blob API borrows, the engine shares.
enum VfsRef<'v> {
    Borrowed(&'v dyn Vfs),
    Shared(Arc<dyn Vfs>),
}

impl VfsRef<'_> {
    fn get(&self) -> &dyn Vfs {
        match self {
            VfsRef::Borrowed(v) => *v,
            VfsRef::Shared(v) => v.as_ref(),
        }
    }
}

impl std::fmt::Debug for SnapshotWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotWriter")
            .field("tmp", &self.tmp)
            .field("snapshot", &self.snapshot)
            .field("data_len", &self.data_len)
            .finish()
    }
}

/// A snapshot made durable by [`SnapshotWriter::finish`], not yet recorded
/// as its group's current one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    pub meta: SnapshotMeta,
    pub path: PathBuf,
    /// Bytes of state-machine data.
    pub data_len: u64,
}

impl SnapshotWriter<'static> {
    /// A writer the engine hands out: shares the file system, so it can move
    /// to another thread. `nonce` keeps concurrent writers of one group apart.
    pub(crate) fn create_shared(
        vfs: Arc<dyn Vfs>,
        dir: &Path,
        snapshot: LogId,
        nonce: u64,
        max_data_bytes: u64,
    ) -> Result<SnapshotWriter<'static>> {
        let mut w = SnapshotWriter::start(VfsRef::Shared(vfs), dir, snapshot, nonce)?;
        w.max_data_bytes = max_data_bytes;
        Ok(w)
    }
}

impl<'v> SnapshotWriter<'v> {
    fn start(vfs: VfsRef<'v>, dir: &Path, snapshot: LogId, nonce: u64) -> Result<SnapshotWriter<'v>> {
        let path = dir.join(file_name(snapshot.index, snapshot.term));
        let tmp = dir
            .join(format!("snap-{:020}-{:020}.{nonce}{SNAPSHOT_TMP_SUFFIX}", snapshot.index, snapshot.term));
        match vfs.get().remove(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &tmp)(e)),
        }
        let file = vfs.get().create(&tmp).map_err(io_err("create", &tmp))?;
        Ok(SnapshotWriter {
            vfs,
            dir: dir.to_path_buf(),
            tmp,
            path,
            file: Some(file),
            snapshot,
            data_len: 0,
            max_data_bytes: u64::MAX,
            data_crc: 0,
            finished: false,
        })
    }

    fn file(&self) -> &dyn VfsFile {
        // Taken only by `finish`, which consumes the writer.
        self.file.as_deref().expect("the file is open until finish")
    }

    /// The last log id the snapshot covers.
    pub fn snapshot(&self) -> LogId {
        self.snapshot
    }

    /// Data bytes written so far: the offset the next chunk lands at.
    pub fn len(&self) -> u64 {
        self.data_len
    }

    pub fn is_empty(&self) -> bool {
        self.data_len == 0
    }

    /// Appends `data` to the snapshot's data (not durable until `finish`).
    pub fn write_chunk(&mut self, data: &[u8]) -> Result<()> {
        let end = self.data_len.checked_add(data.len() as u64).filter(|&e| e <= self.max_data_bytes);
        let Some(end) = end else {
            return Err(StorageError::InvalidRequest {
                group: 0,
                reason: format!(
                    "snapshot {} grows past the bound of {} bytes (max_snapshot_size_bytes)",
                    self.snapshot, self.max_data_bytes
                ),
            });
        };
        self.file().write_at(data, DATA_START + self.data_len).map_err(io_err("write", &self.tmp))?;
        self.data_crc = crc32c::crc32c_append(self.data_crc, data);
        self.data_len = end;
        Ok(())
    }

    /// Appends `meta` (whose last log id must be the writer's), seals the
    /// header, fdatasyncs the file, renames it to its final name and syncs
    /// the directory: from here on the snapshot survives a crash.
    pub fn finish(mut self, meta: &SnapshotMeta) -> Result<SnapshotFile> {
        if meta.last_log_id != self.snapshot {
            return Err(StorageError::InvalidRequest {
                group: 0,
                reason: format!("snapshot written as {} finished as {}", self.snapshot, meta.last_log_id),
            });
        }
        let meta_bytes = postcard::to_allocvec(meta).expect("snapshot meta serializes");
        assert!(meta_bytes.len() as u32 <= MAX_SNAPSHOT_META_BYTES, "membership metadata is bounded");
        let mut h = header_fields(meta_bytes.len() as u32, self.data_len);
        let mut crc = crc32c::crc32c_combine(crc32c::crc32c(&h[..24]), self.data_crc, self.data_len as usize);
        crc = crc32c::crc32c_append(crc, &meta_bytes);
        h[24..28].copy_from_slice(&crc.to_le_bytes());
        let file = self.file.take().expect("the file is open until finish");
        file.write_at(&meta_bytes, DATA_START + self.data_len).map_err(io_err("write", &self.tmp))?;
        file.write_at(&h, 0).map_err(io_err("write", &self.tmp))?;
        file.sync_data().map_err(io_err("fdatasync", &self.tmp))?;
        drop(file);
        let vfs = self.vfs.get();
        vfs.rename(&self.tmp, &self.path).map_err(io_err("rename", &self.tmp))?;
        self.finished = true;
        vfs.sync_dir(&self.dir).map_err(io_err("fsync directory", &self.dir))?;
        Ok(SnapshotFile { meta: meta.clone(), path: self.path.clone(), data_len: self.data_len })
    }
}

impl Drop for SnapshotWriter<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.file = None;
            // Best effort: recovery removes any temporary file left behind.
            let _ = self.vfs.get().remove(&self.tmp);
        }
    }
}

/// Reads a snapshot's data in chunks, checking the file's checksum on the
/// way: a chunk that ends the data is handed out only once the whole file
/// verified. `Send`, so a restore can run on any thread.
pub struct SnapshotReader {
    file: Box<dyn VfsFile>,
    path: PathBuf,
    meta: SnapshotMeta,
    meta_bytes: Vec<u8>,
    data_len: u64,
    /// End of the prefix of the data the running checksum covers.
    next: u64,
    crc: u32,
    expected_crc: u32,
    /// `next_chunk` returned the (single, empty) chunk of an empty snapshot.
    empty_read: bool,
}

impl std::fmt::Debug for SnapshotReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotReader").field("path", &self.path).field("next", &self.next).finish()
    }
}

impl SnapshotReader {
    /// Opens the snapshot at `path`, checking its header and metadata.
    pub fn open(vfs: &dyn Vfs, path: &Path) -> Result<SnapshotReader> {
        let file = vfs.open(path).map_err(io_err("open", path))?;
        let Header { bytes: h, meta_len, data_len, crc, .. } = read_header(file.as_ref(), path)?;
        let mut meta_bytes = vec![0u8; meta_len as usize];
        file.read_at(&mut meta_bytes, DATA_START + data_len).map_err(io_err("read", path))?;
        let meta = decode_meta(&meta_bytes, path, data_len)?;
        Ok(SnapshotReader {
            file,
            path: path.to_path_buf(),
            meta,
            meta_bytes,
            data_len,
            next: 0,
            crc: crc32c::crc32c(&h[..24]),
            expected_crc: crc,
            empty_read: false,
        })
    }

    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// Bytes of state-machine data in the file.
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// The next chunk (at most `max_bytes`, at least 1) and whether it is
    /// the last; `None` once everything was read. The last chunk comes only
    /// after the checksum over the whole file matched.
    pub fn next_chunk(&mut self, max_bytes: usize) -> Result<Option<(Vec<u8>, bool)>> {
        if (self.empty_read || self.data_len != 0) && self.next >= self.data_len {
            return Ok(None);
        }
        self.empty_read = true;
        self.read_chunk_at(self.next, max_bytes).map(Some)
    }

    /// The chunk at data offset `offset` (at most `max_bytes`, at least one
    /// byte unless the data is empty) and whether it ends the data. Reads
    /// that continue the verified prefix extend the running checksum; a
    /// chunk that ends the data is returned only once the whole file's
    /// checksum matched (reading what was skipped, if anything was).
    pub fn read_chunk_at(&mut self, offset: u64, max_bytes: usize) -> Result<(Vec<u8>, bool)> {
        if offset > self.data_len {
            return Err(StorageError::InvalidRequest {
                group: 0,
                reason: format!(
                    "snapshot {} read at offset {offset}, past its {} data bytes",
                    self.meta.last_log_id, self.data_len
                ),
            });
        }
        let n = (self.data_len - offset).min(max_bytes.max(1) as u64) as usize;
        let mut buf = vec![0u8; n];
        self.file.read_at(&mut buf, DATA_START + offset).map_err(io_err("read", &self.path))?;
        if offset == self.next {
            self.crc = crc32c::crc32c_append(self.crc, &buf);
            self.next += n as u64;
        }
        let done = offset + n as u64 == self.data_len;
        if done {
            self.verify_rest()?;
        }
        Ok((buf, done))
    }

    /// Extends the running checksum to the end of the file and compares it.
    fn verify_rest(&mut self) -> Result<()> {
        let mut scratch = Vec::new();
        while self.next < self.data_len {
            let n = (self.data_len - self.next).min(VERIFY_READ_BYTES) as usize;
            scratch.resize(n, 0);
            self.file.read_at(&mut scratch, DATA_START + self.next).map_err(io_err("read", &self.path))?;
            self.crc = crc32c::crc32c_append(self.crc, &scratch);
            self.next += n as u64;
        }
        let crc = crc32c::crc32c_append(self.crc, &self.meta_bytes);
        if crc != self.expected_crc {
            return Err(StorageError::Corruption {
                path: self.path.clone(),
                offset: 0,
                reason: format!(
                    "snapshot checksum mismatch over the whole file ({} bytes of data); \
                     the file was damaged after it was written",
                    self.data_len
                ),
            });
        }
        Ok(())
    }
}

fn decode_meta(meta_bytes: &[u8], path: &Path, data_len: u64) -> Result<SnapshotMeta> {
    postcard::from_bytes(meta_bytes).map_err(|e| StorageError::Corruption {
        path: path.to_path_buf(),
        offset: DATA_START + data_len,
        reason: format!("bad snapshot metadata: {e}"),
    })
}

/// A snapshot file's header, checked: magic, version, and lengths that add
/// up to the file's size. `read` and `verify` both parse it here, so they
/// cannot disagree on what a valid header is (the `snapshot_decode` fuzz
/// target once found `verify` accepting a version that `read` refused).
struct Header {
    bytes: [u8; SNAPSHOT_HEADER_BYTES],
    file_len: u64,
    meta_len: u32,
    data_len: u64,
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
    Ok(Header { bytes: h, file_len: len, meta_len, data_len, crc })
}

/// Reads and verifies the snapshot at `path`. `max_bytes` bounds the
/// allocation (a damaged length field cannot make it allocate more).
pub fn read(vfs: &dyn Vfs, path: &Path, max_bytes: u64) -> Result<(SnapshotMeta, Vec<u8>)> {
    let corrupt =
        |offset: u64, reason: String| StorageError::Corruption { path: path.to_path_buf(), offset, reason };
    let file = vfs.open(path).map_err(io_err("open", path))?;
    let Header { bytes: h, file_len: len, data_len, crc, .. } = read_header(file.as_ref(), path)?;
    if len > max_bytes {
        return Err(corrupt(16, format!("snapshot file is {len} bytes, above the bound of {max_bytes}")));
    }
    let mut body = vec![0u8; (len - SNAPSHOT_HEADER_BYTES as u64) as usize];
    file.read_at(&mut body, DATA_START).map_err(io_err("read", path))?;
    let actual = crc32c::crc32c_append(crc32c::crc32c(&h[..24]), &body);
    if actual != crc {
        return Err(corrupt(0, "snapshot checksum mismatch".into()));
    }
    let meta = decode_meta(&body[data_len as usize..], path, data_len)?;
    body.truncate(data_len as usize);
    Ok((meta, body))
}

/// Verifies the snapshot at `path` end to end (streaming, in bounded chunks)
/// and returns its metadata without loading the data.
pub fn verify(vfs: &dyn Vfs, path: &Path) -> Result<SnapshotMeta> {
    let mut reader = SnapshotReader::open(vfs, path)?;
    reader.verify_rest()?;
    Ok(reader.meta)
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
        bytes[8] = 3;
        let file = vfs.open(&path).unwrap();
        file.write_at(&bytes, 0).unwrap();
        assert!(matches!(read(&vfs, &path, 1 << 20), Err(StorageError::Corruption { offset: 8, .. })));
        assert!(matches!(verify(&vfs, &path), Err(StorageError::Corruption { offset: 8, .. })));
        assert_eq!(parse_name("snap-1-2.snap"), None);
        assert_eq!(parse_name("snap-00000000000000000042-00000000000000000003.snap.tmp"), None);
    }
}
