//! `SimVfs`: the simulated disk under the *real* storage engine.
//!
//! A file has its current bytes, its durable bytes, and the operations since
//! its last `sync_data`. A directory entry (create, rename, remove) is
//! durable only after `sync_dir` of its parent. A crash keeps, per file, an
//! ordered prefix of the unsynced operations with the last one possibly torn
//! at a sector boundary, and forgets every unsynced name.
//!
//! Faults, each with a per-operation probability:
//! - `EIO` on read, write and fsync. A failed fsync drops the file's unsynced
//!   data, as Linux does; a failed write changes nothing.
//! - on a "bad disk" only (at most one node per run, see the world): sticky
//!   read corruption (a byte that reads flipped from then on), silent write
//!   corruption (a bit flipped on its way to the platter) and misdirected
//!   writes (the data lands one block away).
//! - a crash in the middle of a flush: the n-th next write lands torn and the
//!   process is dead from then on (every call fails) until the world crashes
//!   and restarts it.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tarn_io::vfs::{Vfs, VfsFile};

use crate::rng::SimRng;

pub const SECTOR_BYTES: usize = 512;
/// A misdirected write lands this far from where it was aimed.
pub const MISDIRECT_BYTES: u64 = 4096;

/// Per-operation fault probabilities (ppm).
#[derive(Clone, Copy, Debug, Default)]
pub struct DiskFaults {
    pub read_error_ppm: u32,
    pub write_error_ppm: u32,
    pub sync_error_ppm: u32,
    /// Only honoured on a bad disk: each of sticky read corruption, silent
    /// write corruption and misdirected writes strikes with this probability.
    pub corruption_ppm: u32,
}

#[derive(Clone, Debug)]
enum Pending {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

fn apply(bytes: &mut Vec<u8>, op: &Pending) {
    match op {
        Pending::Write { offset, data } => {
            let (offset, end) = (*offset as usize, *offset as usize + data.len());
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            bytes[offset..end].copy_from_slice(data);
        }
        Pending::SetLen(len) => bytes.resize(*len as usize, 0),
    }
}

#[derive(Clone, Debug, Default)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Pending>,
    /// Offsets that read back with their lowest bit flipped (sticky).
    rotten: BTreeSet<u64>,
}

/// Counters, for the run report and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskStats {
    pub writes: u64,
    pub syncs: u64,
    pub reads: u64,
    pub errors: u64,
    pub corruptions: u64,
    pub torn_writes: u64,
}

#[derive(Debug)]
struct State {
    inodes: Vec<Inode>,
    names: BTreeMap<PathBuf, usize>,
    durable_names: BTreeMap<PathBuf, usize>,
    dirs: BTreeSet<PathBuf>,
    faults: DiskFaults,
    bad_disk: bool,
    rng: SimRng,
    /// The process dies during the write with this count.
    die_at_write: Option<u64>,
    dead: bool,
    stats: DiskStats,
}

impl State {
    fn alive(&self) -> io::Result<()> {
        if self.dead {
            return Err(io::Error::other("simulated crash: the process died during a flush"));
        }
        Ok(())
    }

    fn eio(&mut self, p_ppm: u32, what: &str) -> io::Result<()> {
        if self.rng.chance(p_ppm) {
            self.stats.errors += 1;
            return Err(io::Error::other(format!("simulated EIO on {what}")));
        }
        Ok(())
    }

    fn corrupt(&mut self) -> bool {
        self.bad_disk && self.rng.chance(self.faults.corruption_ppm)
    }

    fn parent_exists(&self, path: &Path) -> io::Result<()> {
        match path.parent() {
            Some(p) if !p.as_os_str().is_empty() && !self.dirs.contains(p) => {
                Err(io::Error::new(io::ErrorKind::NotFound, format!("no directory {}", p.display())))
            }
            _ => Ok(()),
        }
    }
}

/// A simulated disk. Cloning shares it (the engine holds one clone, the
/// world another to crash it).
#[derive(Clone, Debug)]
pub struct SimVfs {
    state: Arc<Mutex<State>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // Single-threaded use: the lock is never contended, and a panic while
    // holding it ends the run anyway; recover the guard either way.
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Debug)]
struct SimFile {
    state: Arc<Mutex<State>>,
    inode: usize,
}

impl SimVfs {
    pub fn new(rng: SimRng, faults: DiskFaults, bad_disk: bool) -> Self {
        let mut dirs = BTreeSet::new();
        dirs.insert(PathBuf::from("/"));
        SimVfs {
            state: Arc::new(Mutex::new(State {
                inodes: Vec::new(),
                names: BTreeMap::new(),
                durable_names: BTreeMap::new(),
                dirs,
                faults,
                bad_disk,
                rng,
                die_at_write: None,
                dead: false,
                stats: DiskStats::default(),
            })),
        }
    }

    pub fn set_faults(&self, faults: DiskFaults) {
        lock(&self.state).faults = faults;
    }

    pub fn stats(&self) -> DiskStats {
        lock(&self.state).stats
    }

    pub fn is_bad_disk(&self) -> bool {
        lock(&self.state).bad_disk
    }

    /// The process dies during the `n`-th write from now (0 = the next).
    pub fn die_during_write(&self, n: u64) {
        let mut s = lock(&self.state);
        s.die_at_write = Some(s.stats.writes + n);
    }

    /// The disk is replaced by an empty one (a wiped or lost disk): no
    /// names, no directories but the root. Old inodes stay allocated but
    /// unreachable (open handles must have been dropped with the process).
    pub fn wipe(&self) {
        let mut s = lock(&self.state);
        s.names.clear();
        s.durable_names.clear();
        s.dirs.clear();
        s.dirs.insert(PathBuf::from("/"));
        s.dead = false;
        s.die_at_write = None;
    }

    /// Power loss: keeps durable data, an ordered prefix of each file's
    /// unsynced operations (the last kept one torn at a sector boundary),
    /// and only durable names. The process may run again afterwards.
    pub fn crash(&self) {
        let mut guard = lock(&self.state);
        let s = &mut *guard;
        for inode in &mut s.inodes {
            if inode.pending.is_empty() {
                // Nothing unsynced: the current bytes are the durable bytes.
                debug_assert_eq!(inode.data, inode.durable);
                continue;
            }
            let pending = std::mem::take(&mut inode.pending);
            let mut bytes = std::mem::take(&mut inode.durable);
            let keep = s.rng.below(pending.len() as u64 + 1) as usize;
            for op in &pending[..keep] {
                apply(&mut bytes, op);
            }
            if let Some(Pending::Write { offset, data }) = pending.get(keep) {
                let sectors = data.len().div_ceil(SECTOR_BYTES) as u64;
                let torn = (s.rng.below(sectors + 1) as usize * SECTOR_BYTES).min(data.len());
                if torn > 0 {
                    s.stats.torn_writes += 1;
                    apply(&mut bytes, &Pending::Write { offset: *offset, data: data[..torn].to_vec() });
                }
            }
            inode.data = bytes.clone();
            inode.durable = bytes;
        }
        s.names = s.durable_names.clone();
        s.dead = false;
        s.die_at_write = None;
    }
}

impl VfsFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut s = lock(&self.state);
        s.alive()?;
        s.stats.reads += 1;
        let p = s.faults.read_error_ppm;
        s.eio(p, "read")?;
        let len = s.inodes[self.inode].data.len() as u64;
        if offset + buf.len() as u64 > len {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("read past end ({len} bytes)")));
        }
        if !buf.is_empty() && s.corrupt() {
            let at = offset + s.rng.below(buf.len() as u64);
            s.inodes[self.inode].rotten.insert(at);
            s.stats.corruptions += 1;
        }
        let inode = &s.inodes[self.inode];
        buf.copy_from_slice(&inode.data[offset as usize..offset as usize + buf.len()]);
        for &at in inode.rotten.range(offset..offset + buf.len() as u64) {
            buf[(at - offset) as usize] ^= 1;
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut guard = lock(&self.state);
        let s = &mut *guard;
        s.alive()?;
        let count = s.stats.writes;
        s.stats.writes += 1;
        if s.die_at_write == Some(count) {
            // Dies mid-write: a sector-aligned prefix reaches the page cache.
            let sectors = buf.len().div_ceil(SECTOR_BYTES) as u64;
            let torn = (s.rng.below(sectors) as usize * SECTOR_BYTES).min(buf.len());
            if torn > 0 {
                let op = Pending::Write { offset, data: buf[..torn].to_vec() };
                apply(&mut s.inodes[self.inode].data, &op);
                s.inodes[self.inode].pending.push(op);
            }
            s.dead = true;
            return Err(io::Error::other("simulated crash during write"));
        }
        let p = s.faults.write_error_ppm;
        s.eio(p, "write")?;
        let mut data = buf.to_vec();
        let mut offset = offset;
        if !data.is_empty() && s.corrupt() {
            s.stats.corruptions += 1;
            if s.rng.chance(500_000) {
                let bit = s.rng.below(data.len() as u64 * 8);
                data[(bit / 8) as usize] ^= 1 << (bit % 8);
            } else {
                offset = if offset >= MISDIRECT_BYTES && s.rng.chance(500_000) {
                    offset - MISDIRECT_BYTES
                } else {
                    offset + MISDIRECT_BYTES
                };
            }
        }
        let op = Pending::Write { offset, data };
        apply(&mut s.inodes[self.inode].data, &op);
        s.inodes[self.inode].pending.push(op);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut guard = lock(&self.state);
        let s = &mut *guard;
        s.alive()?;
        s.stats.syncs += 1;
        let p = s.faults.sync_error_ppm;
        if let Err(e) = s.eio(p, "fsync") {
            // Linux: the dirty pages are dropped and the error is reported once.
            let inode = &mut s.inodes[self.inode];
            inode.pending.clear();
            inode.data = inode.durable.clone();
            return Err(e);
        }
        let inode = &mut s.inodes[self.inode];
        for op in std::mem::take(&mut inode.pending) {
            apply(&mut inode.durable, &op);
        }
        debug_assert_eq!(inode.durable, inode.data);
        Ok(())
    }

    fn truncate(&self, len_bytes: u64) -> io::Result<()> {
        let mut s = lock(&self.state);
        s.alive()?;
        let op = Pending::SetLen(len_bytes);
        apply(&mut s.inodes[self.inode].data, &op);
        s.inodes[self.inode].pending.push(op);
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let s = lock(&self.state);
        s.alive()?;
        Ok(s.inodes[self.inode].data.len() as u64)
    }
}

impl Vfs for SimVfs {
    fn create(&self, path: &Path) -> io::Result<Box<dyn VfsFile>> {
        let mut s = lock(&self.state);
        s.alive()?;
        s.parent_exists(path)?;
        if s.names.contains_key(path) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} exists", path.display())));
        }
        let inode = s.inodes.len();
        s.inodes.push(Inode::default());
        s.names.insert(path.to_path_buf(), inode);
        Ok(Box::new(SimFile { state: self.state.clone(), inode }))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn VfsFile>> {
        let s = lock(&self.state);
        s.alive()?;
        match s.names.get(path) {
            Some(&inode) => Ok(Box::new(SimFile { state: self.state.clone(), inode })),
            None => Err(io::Error::new(io::ErrorKind::NotFound, format!("no file {}", path.display()))),
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = lock(&self.state);
        s.alive()?;
        s.parent_exists(to)?;
        let inode = s
            .names
            .remove(from)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no file {}", from.display())))?;
        s.names.insert(to.to_path_buf(), inode);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = lock(&self.state);
        s.alive()?;
        s.names
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no file {}", path.display())))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = lock(&self.state);
        s.alive()?;
        if !s.dirs.contains(dir) {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no directory {}", dir.display())));
        }
        let mut out: Vec<String> = s
            .names
            .keys()
            .chain(s.dirs.iter())
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut guard = lock(&self.state);
        let s = &mut *guard;
        s.alive()?;
        let p = s.faults.sync_error_ppm;
        s.eio(p, "fsync directory")?;
        s.durable_names.retain(|path, _| path.parent() != Some(dir));
        for (path, &inode) in &s.names {
            if path.parent() == Some(dir) {
                s.durable_names.insert(path.clone(), inode);
            }
        }
        Ok(())
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut s = lock(&self.state);
        s.alive()?;
        // Directories are durable once made (the engine syncs their parents).
        let mut p = Some(dir);
        while let Some(d) = p {
            if d.as_os_str().is_empty() {
                break;
            }
            s.dirs.insert(d.to_path_buf());
            p = d.parent();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Stream;

    fn disk(faults: DiskFaults, bad: bool) -> SimVfs {
        SimVfs::new(SimRng::new(9, Stream::Disk), faults, bad)
    }

    fn read_all(vfs: &SimVfs, path: &str) -> Vec<u8> {
        let f = vfs.open(Path::new(path)).expect("open");
        let mut buf = vec![0; f.len().expect("len") as usize];
        f.read_at(&mut buf, 0).expect("read");
        buf
    }

    #[test]
    fn synced_data_and_names_survive_a_crash_unsynced_may_not() {
        let vfs = disk(DiskFaults::default(), false);
        vfs.create_dir_all(Path::new("/d")).unwrap();
        let f = vfs.create(Path::new("/d/a")).unwrap();
        f.write_at(b"hello", 0).unwrap();
        f.sync_data().unwrap();
        vfs.sync_dir(Path::new("/d")).unwrap();
        let g = vfs.create(Path::new("/d/b")).unwrap();
        g.write_at(b"lost", 0).unwrap();
        g.sync_data().unwrap();
        vfs.crash();
        assert_eq!(read_all(&vfs, "/d/a"), b"hello");
        assert!(vfs.open(Path::new("/d/b")).is_err(), "an unsynced name must not survive");
        assert_eq!(vfs.list(Path::new("/d")).unwrap(), vec!["a".to_string()]);
    }

    #[test]
    fn crash_keeps_an_ordered_prefix_with_a_torn_sector_aligned_tail() {
        for seed in 0..40 {
            let vfs = SimVfs::new(SimRng::new(seed, Stream::Disk), DiskFaults::default(), false);
            vfs.create_dir_all(Path::new("/d")).unwrap();
            let f = vfs.create(Path::new("/d/a")).unwrap();
            vfs.sync_dir(Path::new("/d")).unwrap();
            f.sync_data().unwrap();
            f.write_at(&[1; 2048], 0).unwrap();
            f.write_at(&[2; 2048], 2048).unwrap();
            vfs.crash();
            let bytes = read_all(&vfs, "/d/a");
            assert_eq!(bytes.len() % SECTOR_BYTES, 0, "seed {seed}: tear inside a sector");
            assert!(bytes.iter().take(2048).all(|&b| b == 1), "seed {seed}");
            assert!(bytes.iter().skip(2048).all(|&b| b == 2), "seed {seed}");
            assert!(bytes.len() <= 2048 || bytes.len() > 2048, "prefix order");
            if bytes.len() > 2048 {
                assert_eq!(bytes[..2048], [1; 2048], "seed {seed}: second write kept without the first");
            }
        }
    }

    #[test]
    fn failed_fsync_drops_unsynced_data_and_failed_write_changes_nothing() {
        let vfs = disk(DiskFaults { sync_error_ppm: 1_000_000, ..Default::default() }, false);
        vfs.create_dir_all(Path::new("/d")).unwrap();
        let f = vfs.create(Path::new("/d/a")).unwrap();
        f.write_at(b"abc", 0).unwrap();
        assert!(f.sync_data().is_err());
        assert_eq!(f.len().unwrap(), 0);
        vfs.set_faults(DiskFaults { write_error_ppm: 1_000_000, ..Default::default() });
        assert!(f.write_at(b"xyz", 0).is_err());
        assert_eq!(f.len().unwrap(), 0);
        assert!(vfs.stats().errors >= 2);
    }

    #[test]
    fn dying_mid_write_fails_every_later_call_until_the_crash() {
        let vfs = disk(DiskFaults::default(), false);
        vfs.create_dir_all(Path::new("/d")).unwrap();
        let f = vfs.create(Path::new("/d/a")).unwrap();
        vfs.die_during_write(0);
        assert!(f.write_at(&[7; 4096], 0).is_err());
        assert!(f.sync_data().is_err());
        assert!(vfs.list(Path::new("/d")).is_err());
        vfs.crash();
        assert!(vfs.list(Path::new("/d")).is_ok());
    }

    #[test]
    fn corruption_happens_only_on_a_bad_disk() {
        let faults = DiskFaults { corruption_ppm: 1_000_000, ..Default::default() };
        for bad in [false, true] {
            let vfs = disk(faults, bad);
            vfs.create_dir_all(Path::new("/d")).unwrap();
            let f = vfs.create(Path::new("/d/a")).unwrap();
            f.write_at(&[0; 8192], 0).unwrap();
            f.write_at(&[5; 64], 0).unwrap();
            let mut buf = [0u8; 64];
            let _ = f.read_at(&mut buf, 0);
            assert_eq!(buf == [5; 64], !bad, "bad disk {bad}");
            assert_eq!(vfs.stats().corruptions > 0, bad);
        }
    }
}
