//! [`PooledVfs`]: the real file system with a bounded number of open file
//! descriptors, so that one process can hold many more groups than its
//! `RLIMIT_NOFILE` allows open files.
//!
//! Every group keeps at least two files (its active log segment and its hard
//! state) for its whole life. Three nodes of 10,000 groups in one process
//! would hold 60,000 descriptors; a typical hard limit is 1,024 to 65,536.
//! Idle groups, the many-groups case of issue 17, never touch their files,
//! so their descriptors can be closed and reopened on next use.
//!
//! # When a descriptor may be closed
//!
//! A handle ([`VfsFile`]) stays valid for its whole life; only the descriptor
//! under it comes and goes. The pool closes one only when doing so cannot
//! change what the engine observes:
//!
//! - **Clean only.** Every write and truncate through the handle has been
//!   followed by a successful `sync_data`. Closing a descriptor with unsynced
//!   data would move a later writeback error to a descriptor opened after it,
//!   which Linux does not always report (the fsync error problem); so a dirty
//!   descriptor is never closed, and a closed one needs no sync at all:
//!   `sync_data` on it returns `Ok` at once.
//! - **Named.** The descriptor is reopened by path, so the pool follows the
//!   path of every handle through [`Vfs::rename`]. A handle whose name goes
//!   away (removed, or replaced by a rename onto it) keeps its descriptor
//!   open for good (*pinned*): the descriptor is then the only way to the
//!   data, as it would be without the pool.
//! - **Idle.** No read, write or sync is running on it (the pool holds the
//!   only reference to the `File`).
//!
//! Eviction is the clock (second chance) algorithm over the open, evictable
//! descriptors; an access sets the handle's reference bit. If nothing can be
//! evicted (every open descriptor is dirty, pinned or busy), the pool opens
//! past its limit rather than fail, and counts it: the limit is a target
//! below the process's own, not a second hard limit.
//!
//! A rename or remove racing an `open` of the same path on another thread may
//! leave the new handle's name stale; its next reopen then fails with
//! `NotFound`, which the engine treats as any I/O error (the group stops):
//! it fails safe. The storage engine never does that.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use super::{std_vfs, StdVfs, Vfs, VfsFile};

/// The real file system, holding at most about `limit` descriptors open for
/// the files it hands out. Clones share one pool.
#[derive(Clone, Debug)]
pub struct PooledVfs {
    pool: Arc<Pool>,
}

/// What a pool did, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Descriptors open now (pooled handles only).
    pub open: usize,
    /// The target the pool evicts down to.
    pub limit: usize,
    /// Descriptors closed to make room.
    pub evictions: u64,
    /// Descriptors reopened for a handle whose descriptor had been closed.
    pub reopens: u64,
    /// Opens that went past the limit because nothing could be evicted.
    pub over_limit: u64,
}

#[derive(Debug)]
struct Pool {
    limit: usize,
    /// Descriptors open now, held by slots.
    open: AtomicUsize,
    /// Open descriptors in clock order (weak: a dropped handle leaves a dead
    /// entry, pruned by the sweep).
    clock: Mutex<Clock>,
    /// Live handles by path, to follow renames and pin removed files.
    names: Mutex<HashMap<PathBuf, Vec<Weak<Slot>>>>,
    evictions: AtomicU64,
    reopens: AtomicU64,
    over_limit: AtomicU64,
}

#[derive(Debug, Default)]
struct Clock {
    entries: Vec<Weak<Slot>>,
    hand: usize,
}

/// One handle's descriptor and what the pool must know to close it.
#[derive(Debug)]
struct Slot {
    state: Mutex<SlotState>,
    /// Set on every access; cleared by the clock hand (second chance).
    referenced: AtomicBool,
    /// The pool's open counter, to give the descriptor back on drop.
    pool: Weak<Pool>,
}

#[derive(Debug)]
struct SlotState {
    path: PathBuf,
    file: Option<Arc<File>>,
    /// Writes and truncates finished (successfully or not) through this
    /// handle.
    written: u64,
    /// The `written` count the last successful sync covered.
    synced: u64,
    /// The name is gone: the descriptor is never closed.
    pinned: bool,
}

impl SlotState {
    fn clean(&self) -> bool {
        self.written == self.synced
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        if state.file.take().is_some() {
            if let Some(pool) = self.pool.upgrade() {
                pool.open.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// Locks ignoring poison: a panic while holding a slot or pool lock leaves
/// only counters and an `Option<File>` behind, both still consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn open_rw(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

impl PooledVfs {
    /// A pool keeping about `limit` descriptors open (at least 1).
    pub fn new(limit: usize) -> PooledVfs {
        PooledVfs {
            pool: Arc::new(Pool {
                limit: limit.max(1),
                open: AtomicUsize::new(0),
                clock: Mutex::new(Clock::default()),
                names: Mutex::new(HashMap::new()),
                evictions: AtomicU64::new(0),
                reopens: AtomicU64::new(0),
                over_limit: AtomicU64::new(0),
            }),
        }
    }

    /// The process's pool, shared by every storage engine in it (all nodes of
    /// a `tarn cluster` share one descriptor limit). Its limit is half the
    /// soft `RLIMIT_NOFILE` at first use, leaving the rest to sockets,
    /// snapshot streams and everything else the process opens.
    pub fn shared() -> PooledVfs {
        static SHARED: OnceLock<PooledVfs> = OnceLock::new();
        SHARED.get_or_init(|| PooledVfs::new(open_files_soft_limit() / 2)).clone()
    }

    /// What the pool did so far.
    pub fn stats(&self) -> PoolStats {
        let p = &self.pool;
        PoolStats {
            open: p.open.load(Ordering::Relaxed),
            limit: p.limit,
            evictions: p.evictions.load(Ordering::Relaxed),
            reopens: p.reopens.load(Ordering::Relaxed),
            over_limit: p.over_limit.load(Ordering::Relaxed),
        }
    }

    fn handle(&self, path: &Path, file: File) -> Box<dyn VfsFile> {
        let slot = Arc::new(Slot {
            state: Mutex::new(SlotState {
                path: path.to_path_buf(),
                file: Some(Arc::new(file)),
                written: 0,
                synced: 0,
                pinned: false,
            }),
            referenced: AtomicBool::new(true),
            pool: Arc::downgrade(&self.pool),
        });
        self.pool.admit(&slot);
        {
            let mut names = lock(&self.pool.names);
            let list = names.entry(path.to_path_buf()).or_default();
            list.retain(|w| w.strong_count() > 0);
            list.push(Arc::downgrade(&slot));
            // Prune names whose handles all dropped, amortized over opens.
            if names.len() > 64 && names.len() > 2 * self.pool.open.load(Ordering::Relaxed) {
                names.retain(|_, l| {
                    l.retain(|w| w.strong_count() > 0);
                    !l.is_empty()
                });
            }
        }
        Box::new(PooledFile { slot, pool: self.pool.clone() })
    }

    /// The live handles named `path` now.
    fn named(&self, path: &Path) -> Vec<Arc<Slot>> {
        let names = lock(&self.pool.names);
        names.get(path).map(|l| l.iter().filter_map(Weak::upgrade).collect()).unwrap_or_default()
    }

    /// Makes sure each handle in `slots` keeps its file after its name goes:
    /// reopens a closed descriptor while the name still works, and pins it.
    fn pin(&self, slots: &[Arc<Slot>]) -> io::Result<()> {
        for slot in slots {
            let mut st = lock(&slot.state);
            if st.file.is_none() {
                let file = open_rw(&st.path)?;
                st.file = Some(Arc::new(file));
                self.pool.open.fetch_add(1, Ordering::Relaxed);
                self.pool.reopens.fetch_add(1, Ordering::Relaxed);
            }
            st.pinned = true;
        }
        Ok(())
    }
}

impl Pool {
    /// Counts a newly opened descriptor, evicting others down to the limit.
    fn admit(&self, slot: &Arc<Slot>) {
        let now = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        let mut clock = lock(&self.clock);
        if now > self.limit && !self.evict(&mut clock, now - self.limit) {
            self.over_limit.fetch_add(1, Ordering::Relaxed);
        }
        clock.entries.push(Arc::downgrade(slot));
    }

    /// Closes up to `want` idle descriptors; false if it found fewer.
    /// Never blocks on a slot (`try_lock`), so it cannot deadlock with a
    /// thread that holds a slot and waits for the clock.
    fn evict(&self, clock: &mut Clock, mut want: usize) -> bool {
        // Two turns of the hand: the first may only clear reference bits.
        let mut budget = clock.entries.len() * 2;
        while want > 0 && budget > 0 && !clock.entries.is_empty() {
            budget -= 1;
            if clock.hand >= clock.entries.len() {
                clock.hand = 0;
            }
            let i = clock.hand;
            let Some(slot) = clock.entries[i].upgrade() else {
                clock.entries.swap_remove(i);
                continue;
            };
            let Ok(mut st) = slot.state.try_lock() else {
                clock.hand += 1;
                continue;
            };
            if st.file.is_none() {
                // Closed by a pin's reopen race or already evicted: not ours.
                drop(st);
                clock.entries.swap_remove(i);
                continue;
            }
            if slot.referenced.swap(false, Ordering::Relaxed) {
                drop(st);
                clock.hand += 1;
                continue;
            }
            let idle = st.file.as_ref().is_some_and(|f| Arc::strong_count(f) == 1);
            if st.pinned || !st.clean() || !idle {
                drop(st);
                clock.hand += 1;
                continue;
            }
            st.file = None;
            drop(st);
            self.open.fetch_sub(1, Ordering::Relaxed);
            self.evictions.fetch_add(1, Ordering::Relaxed);
            clock.entries.swap_remove(i);
            want -= 1;
        }
        want == 0
    }
}

/// A handle whose descriptor the pool may close while it is clean and idle.
#[derive(Debug)]
struct PooledFile {
    slot: Arc<Slot>,
    pool: Arc<Pool>,
}

impl PooledFile {
    /// The descriptor, reopened by path if the pool had closed it. The
    /// returned `Arc` keeps the descriptor busy (not evictable) while held.
    fn file(&self) -> io::Result<Arc<File>> {
        self.slot.referenced.store(true, Ordering::Relaxed);
        let mut st = lock(&self.slot.state);
        if let Some(f) = &st.file {
            return Ok(f.clone());
        }
        let f = Arc::new(open_rw(&st.path)?);
        st.file = Some(f.clone());
        drop(st);
        self.pool.reopens.fetch_add(1, Ordering::Relaxed);
        self.pool.admit(&self.slot);
        Ok(f)
    }

    /// Runs a write or truncate, then counts it (failed or not) while still
    /// holding the descriptor: from then on the file is dirty until a sync
    /// that began after it succeeds.
    fn write_op(&self, op: impl FnOnce(&File) -> io::Result<()>) -> io::Result<()> {
        let file = self.file()?;
        let result = op(&file);
        lock(&self.slot.state).written += 1;
        drop(file);
        result
    }
}

impl VfsFile for PooledFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file()?.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_op(|f| f.write_all_at(buf, offset))
    }

    fn sync_data(&self) -> io::Result<()> {
        // Only writes finished before the fdatasync starts are covered by it:
        // one still running is counted after it ends, leaving the file dirty.
        let (file, covered) = {
            let st = lock(&self.slot.state);
            match &st.file {
                // Closed means clean: every write was already synced.
                None => return Ok(()),
                Some(f) => (f.clone(), st.written),
            }
        };
        file.sync_data()?;
        let mut st = lock(&self.slot.state);
        st.synced = st.synced.max(covered);
        Ok(())
    }

    fn truncate(&self, len_bytes: u64) -> io::Result<()> {
        self.write_op(|f| f.set_len(len_bytes))
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file()?.metadata()?.len())
    }
}

impl Vfs for PooledVfs {
    fn create(&self, path: &Path) -> io::Result<Box<dyn VfsFile>> {
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(path)?;
        Ok(self.handle(path, file))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn VfsFile>> {
        let file = open_rw(path)?;
        Ok(self.handle(path, file))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        // The file the rename replaces loses its name: pin its handles first.
        self.pin(&self.named(to))?;
        let mut moving = self.named(from);
        moving.sort_by_key(|s| Arc::as_ptr(s) as usize);
        // Hold the moving handles while the name changes, so none reopens by
        // a stale path; lock them in address order (two renames never
        // deadlock).
        let mut guards: Vec<_> = moving.iter().map(|s| lock(&s.state)).collect();
        std::fs::rename(from, to)?;
        for g in &mut guards {
            g.path = to.to_path_buf();
        }
        drop(guards);
        let mut names = lock(&self.pool.names);
        let weak: Vec<Weak<Slot>> = moving.iter().map(Arc::downgrade).collect();
        names.remove(from);
        names.insert(to.to_path_buf(), weak);
        drop(names);
        drop(moving);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let named = self.named(path);
        self.pin(&named)?;
        std::fs::remove_file(path)?;
        lock(&self.pool.names).remove(path);
        drop(named);
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        StdVfs.list(dir)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        StdVfs.sync_dir(dir)
    }

    fn sync_data_batch(&self, files: &[&dyn VfsFile]) -> Vec<io::Result<()>> {
        std_vfs::sync_concurrently(files)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        StdVfs.create_dir_all(dir)
    }

    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        StdVfs.remove_dir(dir)
    }
}

/// The process's soft limit on open files (1,024 if it cannot be read).
pub fn open_files_soft_limit() -> usize {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct we pass, which outlives the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
    if rc != 0 || rl.rlim_cur == libc::RLIM_INFINITY {
        return if rc != 0 { 1024 } else { 1 << 20 };
    }
    usize::try_from(rl.rlim_cur).unwrap_or(1 << 20)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (what Go's runtime does
/// at start): servers holding many groups need more than the default 1,024.
/// Returns the soft limit in force afterwards.
pub fn raise_open_files_limit() -> usize {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write only the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur < rl.rlim_max {
            let raised = libc::rlimit { rlim_cur: rl.rlim_max, rlim_max: rl.rlim_max };
            libc::setrlimit(libc::RLIMIT_NOFILE, &raised);
        }
    }
    open_files_soft_limit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_handles_hold_at_most_the_limit_open_and_reopen_transparently() {
        let dir = tempfile::tempdir().unwrap();
        let vfs = PooledVfs::new(8);
        let mut files = Vec::new();
        for i in 0..100u32 {
            let f = vfs.create(&dir.path().join(format!("f{i}"))).unwrap();
            f.write_at(&i.to_le_bytes(), 0).unwrap();
            f.sync_data().unwrap();
            files.push(f);
        }
        let s = vfs.stats();
        assert!(s.open <= 9, "{s:?}");
        assert!(s.evictions >= 90, "{s:?}");
        assert_eq!(s.over_limit, 0, "{s:?}");
        // Every handle still reads its own file, reopened as needed.
        for (i, f) in files.iter().enumerate() {
            let mut buf = [0u8; 4];
            f.read_at(&mut buf, 0).unwrap();
            assert_eq!(u32::from_le_bytes(buf), i as u32);
            assert_eq!(f.len().unwrap(), 4);
        }
        assert!(vfs.stats().reopens >= 90);
        assert!(vfs.stats().open <= 9);
        drop(files);
        assert_eq!(vfs.stats().open, 0, "dropping handles gives their descriptors back");
    }

    #[test]
    fn a_dirty_descriptor_is_never_closed_and_a_closed_one_needs_no_sync() {
        let dir = tempfile::tempdir().unwrap();
        let vfs = PooledVfs::new(1);
        let dirty = vfs.create(&dir.path().join("dirty")).unwrap();
        dirty.write_at(b"unsynced", 0).unwrap();
        let others: Vec<_> = (0..5).map(|i| vfs.create(&dir.path().join(format!("o{i}"))).unwrap()).collect();
        // The dirty one stayed open; the pool went over its limit instead.
        assert!(lock(&slot_of(&*dirty).state).file.is_some());
        assert!(vfs.stats().over_limit > 0);
        dirty.sync_data().unwrap();
        // Now clean: the next opens may close it, and a sync of a closed
        // handle succeeds without reopening.
        let more: Vec<_> = (0..5).map(|i| vfs.create(&dir.path().join(format!("m{i}"))).unwrap()).collect();
        assert!(lock(&slot_of(&*dirty).state).file.is_none(), "{:?}", vfs.stats());
        let reopens = vfs.stats().reopens;
        dirty.sync_data().unwrap();
        assert_eq!(vfs.stats().reopens, reopens);
        let mut buf = [0u8; 8];
        dirty.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"unsynced");
        drop((others, more));
    }

    #[test]
    fn renames_are_followed_and_a_removed_or_replaced_file_stays_readable() {
        let dir = tempfile::tempdir().unwrap();
        let vfs = PooledVfs::new(1);
        let (a, b, c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
        let fa = vfs.create(&a).unwrap();
        fa.write_at(b"AAAA", 0).unwrap();
        fa.sync_data().unwrap();
        let fb = vfs.create(&b).unwrap();
        fb.write_at(b"BBBB", 0).unwrap();
        fb.sync_data().unwrap();
        let fc = vfs.create(&c).unwrap();
        fc.write_at(b"CCCC", 0).unwrap();
        fc.sync_data().unwrap();
        // a is closed by now (limit 1): renaming it must carry the handle.
        vfs.rename(&a, &dir.path().join("a2")).unwrap();
        // b is replaced by c: b's handle keeps the old file, pinned.
        vfs.rename(&c, &b).unwrap();
        // Force everything unpinned closed.
        let churn: Vec<_> = (0..4).map(|i| vfs.create(&dir.path().join(format!("x{i}"))).unwrap()).collect();
        let read = |f: &dyn VfsFile| {
            let mut buf = [0u8; 4];
            f.read_at(&mut buf, 0).unwrap();
            buf
        };
        assert_eq!(&read(&*fa), b"AAAA");
        assert_eq!(&read(&*fb), b"BBBB", "the replaced file is still the handle's");
        assert_eq!(&read(&*fc), b"CCCC", "the renamed file follows its new name");
        // A removed file stays readable through its handle.
        vfs.remove(&dir.path().join("a2")).unwrap();
        drop(churn);
        let churn: Vec<_> = (0..4).map(|i| vfs.create(&dir.path().join(format!("y{i}"))).unwrap()).collect();
        assert_eq!(&read(&*fa), b"AAAA");
        assert!(lock(&slot_of(&*fa).state).pinned);
        drop(churn);
    }

    #[test]
    fn a_reopen_of_a_vanished_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let vfs = PooledVfs::new(1);
        let path = dir.path().join("gone");
        let f = vfs.create(&path).unwrap();
        // Limit 1: the second open closes the first (clean, idle) descriptor.
        let _other = vfs.create(&dir.path().join("other")).unwrap();
        assert!(lock(&slot_of(&*f).state).file.is_none());
        // Removed behind the pool's back (not through the Vfs).
        std::fs::remove_file(&path).unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(f.read_at(&mut buf, 0).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(f.write_at(b"x", 0).unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn descriptors_really_close() {
        let dir = tempfile::tempdir().unwrap();
        let vfs = PooledVfs::new(4);
        // Descriptors of this process pointing into our directory (other
        // tests' files do not count).
        let ours = || {
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|target| target.starts_with(dir.path()))
                .count()
        };
        let files: Vec<_> = (0..64).map(|i| vfs.create(&dir.path().join(format!("f{i}"))).unwrap()).collect();
        assert!(ours() <= 5, "64 handles hold {} descriptors", ours());
        drop(files);
        assert_eq!(ours(), 0);
        assert!(open_files_soft_limit() >= 1);
    }

    fn slot_of(f: &dyn VfsFile) -> Arc<Slot> {
        // SAFETY: every handle these tests pass comes from a PooledVfs, whose
        // only VfsFile type is PooledFile; the cast drops the vtable only.
        let f = unsafe { &*(f as *const dyn VfsFile as *const PooledFile) };
        f.slot.clone()
    }
}
