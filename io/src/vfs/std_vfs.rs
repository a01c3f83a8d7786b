//! [`Vfs`] over the real file system (`std::fs`, positioned I/O, fdatasync).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{Vfs, VfsFile};

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

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }
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
}
