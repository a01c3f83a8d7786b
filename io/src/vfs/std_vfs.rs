//! [`Vfs`] over the real file system (`std::fs`, positioned I/O, fdatasync).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{Vfs, VfsFile};

/// Upper bound on threads one [`Vfs::sync_data_batch`] call uses.
const MAX_SYNC_THREADS: usize = 16;

/// The production file system. Stateless: every call goes straight to the OS.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdVfs;

#[derive(Debug)]
struct StdFile {
    file: File,
}

impl VfsFile for StdFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn truncate(&self, len_bytes: u64) -> io::Result<()> {
        self.file.set_len(len_bytes)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
}

impl Vfs for StdVfs {
    fn create(&self, path: &Path) -> io::Result<Box<dyn VfsFile>> {
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(path)?;
        Ok(Box::new(StdFile { file }))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn VfsFile>> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Box::new(StdFile { file }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            // Names that are not UTF-8 cannot be ours; skip rather than fail.
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn sync_data_batch(&self, files: &[&dyn VfsFile]) -> Vec<io::Result<()>> {
        sync_concurrently(files)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::remove_dir(dir)
    }
}

/// fdatasyncs `files` on up to [`MAX_SYNC_THREADS`] threads at once, one
/// result per file in order (the real file systems' [`Vfs::sync_data_batch`]).
pub(super) fn sync_concurrently(files: &[&dyn VfsFile]) -> Vec<io::Result<()>> {
    if files.len() < 2 {
        return files.iter().map(|f| f.sync_data()).collect();
    }
    // Concurrent fdatasyncs let the file system (ext4's jbd2, XFS's log)
    // commit them as one group instead of one device flush each.
    // Threads are scoped and bounded; on a spawn failure we fall back to
    // syncing inline, so every file is synced exactly once either way.
    let workers = files.len().min(MAX_SYNC_THREADS);
    let mut results: Vec<Option<io::Result<()>>> = (0..files.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        let mut handles = Vec::with_capacity(workers);
        let chunk = files.len().div_ceil(workers);
        for (w, group) in files.chunks(chunk).enumerate() {
            let spawned = std::thread::Builder::new()
                .name("tarn-fdatasync".into())
                .spawn_scoped(scope, move || group.iter().map(|f| f.sync_data()).collect::<Vec<_>>());
            match spawned {
                Ok(handle) => handles.push((w * chunk, Some(handle))),
                Err(_) => {
                    for (i, f) in group.iter().enumerate() {
                        results[w * chunk + i] = Some(f.sync_data());
                    }
                }
            }
        }
        for (start, handle) in handles {
            let handle = handle.expect("pushed with a handle");
            let out = handle.join().unwrap_or_else(|_| {
                (0..chunk).map(|_| Err(io::Error::other("fdatasync thread panicked"))).collect()
            });
            for (i, r) in out.into_iter().enumerate() {
                if start + i < results.len() {
                    results[start + i] = Some(r);
                }
            }
        }
    });
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(io::Error::other("fdatasync result missing"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let vfs = StdVfs;
        let path = dir.path().join("a");
        let file = vfs.create(&path).unwrap();
        assert_eq!(vfs.create(&path).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        file.truncate(16).unwrap();
        file.write_at(b"hello", 4).unwrap();
        file.sync_data().unwrap();
        let mut buf = [0u8; 9];
        file.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"\0\0\0\0hello");
        assert_eq!(file.len().unwrap(), 16);
        let mut past_end = [0u8; 4];
        assert_eq!(file.read_at(&mut past_end, 14).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        vfs.rename(&path, &dir.path().join("b")).unwrap();
        vfs.sync_dir(dir.path()).unwrap();
        assert_eq!(vfs.list(dir.path()).unwrap(), vec!["b".to_string()]);
        vfs.remove(&dir.path().join("b")).unwrap();
        assert!(vfs.list(dir.path()).unwrap().is_empty());
        assert_eq!(vfs.open(&path).unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn batch_sync_reports_each_file() {
        let dir = tempfile::tempdir().unwrap();
        let vfs = StdVfs;
        let files: Vec<Box<dyn VfsFile>> =
            (0..20).map(|i| vfs.create(&dir.path().join(format!("f{i}"))).unwrap()).collect();
        for f in &files {
            f.write_at(b"data", 0).unwrap();
        }
        let refs: Vec<&dyn VfsFile> = files.iter().map(|f| f.as_ref()).collect();
        let results = vfs.sync_data_batch(&refs);
        assert_eq!(results.len(), 20);
        assert!(results.iter().all(|r| r.is_ok()));
        assert!(vfs.sync_data_batch(&[]).is_empty());
    }
}
