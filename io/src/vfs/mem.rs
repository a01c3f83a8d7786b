//! [`MemVfs`]: an in-memory [`Vfs`] that remembers what is durable, so a test
//! can crash it at any write, tear that write at any byte, drop unsynced
//! data, flip bits and inject `EIO` — then "reboot" and run recovery on what
//! survived.
//!
//! Model: every file has its current bytes and its durable bytes plus the
//! list of operations since its last `sync_data`; every directory entry has
//! a current and a durable binding (made durable by `sync_dir`). Directories
//! themselves are always durable (the engine creates them once, at setup).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Vfs, VfsFile};

/// What survives [`MemVfs::crash`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Only what was made durable (`sync_data`, `sync_dir`) survives.
    DropUnsynced,
    /// Everything written before the crash survives, including unsynced
    /// writes and names (the page cache happened to reach the disk).
    KeepUnsynced,
}

/// What a power loss keeps of one file's operations since its last
/// `sync_data` (see [`MemVfs::crash_per_file`]): an ordered prefix, the
/// write after it possibly torn. Files are independent of each other, as on
/// a real file system, where unsynced writes to different files reach the
/// disk in no particular order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unsynced {
    /// Operations kept whole, oldest first.
    pub ops: usize,
    /// Bytes kept of the write that follows them (0: none).
    pub torn_bytes: usize,
}

impl Unsynced {
    /// Nothing unsynced survives.
    pub const DROP: Unsynced = Unsynced { ops: 0, torn_bytes: 0 };
    /// Everything written survives.
    pub const KEEP: Unsynced = Unsynced { ops: usize::MAX, torn_bytes: 0 };
}

/// Faults armed on a [`MemVfs`]. Writes and syncs are counted from 0 across
/// all files since the `MemVfs` was made (see [`MemVfs::write_count`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// The process dies during write number `n`: only its first `bytes`
    /// bytes land, it returns an error, and every later call fails too.
    pub die_at_write: Option<(u64, usize)>,
    /// Write number `n` fails with `EIO` and changes nothing.
    pub fail_write: Option<u64>,
    /// Sync number `n` fails with `EIO` and, like Linux, drops that file's
    /// unsynced data (reverts it to its durable bytes).
    pub fail_sync: Option<u64>,
}

#[derive(Clone, Debug)]
enum PendingOp {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Clone, Debug, Default)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<PendingOp>,
}

fn apply(bytes: &mut Vec<u8>, op: &PendingOp) {
    match op {
        PendingOp::Write { offset, data } => {
            let offset = *offset as usize;
            let end = offset + data.len();
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            bytes[offset..end].copy_from_slice(data);
        }
        PendingOp::SetLen(len) => bytes.resize(*len as usize, 0),
    }
}

#[derive(Debug, Default)]
struct State {
    inodes: BTreeMap<u64, Inode>,
    next_inode: u64,
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
    faults: Faults,
    writes: u64,
    write_sizes: Vec<usize>,
    syncs: u64,
    dead: bool,
}

impl State {
    fn check_alive(&self) -> io::Result<()> {
        if self.dead {
            return Err(io::Error::other("simulated crash: the process is dead"));
        }
        Ok(())
    }

    fn check_parent(&self, path: &Path) -> io::Result<()> {
        let parent = path.parent().unwrap_or(Path::new(""));
        if parent.as_os_str().is_empty() || self.dirs.contains(parent) {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::NotFound, format!("no directory {}", parent.display())))
        }
    }

    fn inode(&mut self, id: u64) -> &mut Inode {
        // Inodes are never freed while a handle exists (handles keep ids of
        // inodes that stay in the map until the MemVfs is dropped).
        self.inodes.get_mut(&id).expect("inode of an open handle exists")
    }
}

/// An in-memory file system with crash and fault injection. Cloning shares
/// the same disk.
#[derive(Clone, Debug, Default)]
pub struct MemVfs {
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct MemFile {
    state: Arc<Mutex<State>>,
    inode: u64,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock leaves the model in a consistent state
    // (every method mutates only after its checks), so poison is ignorable.
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("simulated EIO on {what}"))
}

impl MemVfs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Arms faults (replacing any armed before).
    pub fn set_faults(&self, faults: Faults) {
        lock(&self.state).faults = faults;
    }

    /// Writes attempted so far, across all files.
    pub fn write_count(&self) -> u64 {
        lock(&self.state).writes
    }

    /// The size of every write attempted so far, in order (to tear each one
    /// at every byte in a crash test).
    pub fn write_sizes(&self) -> Vec<usize> {
        lock(&self.state).write_sizes.clone()
    }

    /// Syncs (`sync_data`) attempted so far, across all files.
    pub fn sync_count(&self) -> u64 {
        lock(&self.state).syncs
    }

    /// Whether an armed `die_at_write` fired.
    pub fn is_dead(&self) -> bool {
        lock(&self.state).dead
    }

    /// The disk after a crash and reboot: a new, independent `MemVfs` holding
    /// what survived under `mode`, with no faults armed. Handles of the old
    /// one keep working on the old one only.
    pub fn crash(&self, mode: CrashMode) -> MemVfs {
        let old = lock(&self.state);
        let names = match mode {
            CrashMode::DropUnsynced => old.durable_names.clone(),
            CrashMode::KeepUnsynced => old.names.clone(),
        };
        let mut inodes = BTreeMap::new();
        for &id in names.values() {
            let inode = &old.inodes[&id];
            let bytes = match mode {
                CrashMode::DropUnsynced => inode.durable.clone(),
                CrashMode::KeepUnsynced => inode.data.clone(),
            };
            inodes.insert(id, Inode { data: bytes.clone(), durable: bytes, pending: Vec::new() });
        }
        MemVfs::after_power_loss(&old, names, inodes)
    }

    /// The disk a power loss leaves: only durable `names`, each file with
    /// the bytes in `inodes` and nothing pending (shared by both crashes).
    fn after_power_loss(old: &State, names: BTreeMap<PathBuf, u64>, inodes: BTreeMap<u64, Inode>) -> MemVfs {
        let state = State {
            inodes,
            next_inode: old.next_inode,
            durable_names: names.clone(),
            names,
            dirs: old.dirs.clone(),
            ..State::default()
        };
        MemVfs { state: Arc::new(Mutex::new(state)) }
    }

    /// Every durably named file with operations since its last `sync_data`,
    /// with the size of each (a size change counts as 0 bytes), oldest
    /// first: what [`MemVfs::crash_per_file`] can keep or tear.
    pub fn unsynced_files(&self) -> Vec<(PathBuf, Vec<usize>)> {
        let state = lock(&self.state);
        let sizes = |ops: &[PendingOp]| {
            ops.iter()
                .map(|op| match op {
                    PendingOp::Write { data, .. } => data.len(),
                    PendingOp::SetLen(_) => 0,
                })
                .collect::<Vec<_>>()
        };
        state
            .durable_names
            .iter()
            .filter(|(_, id)| !state.inodes[id].pending.is_empty())
            .map(|(path, id)| (path.clone(), sizes(&state.inodes[id].pending)))
            .collect()
    }

    /// The disk after a power loss that kept, of each durably named file's
    /// unsynced operations, what `fate(path)` says (unsynced names are lost,
    /// as in [`CrashMode::DropUnsynced`]). Unlike [`MemVfs::crash`], this can
    /// keep one file's unsynced writes while losing another's, which a real
    /// file system may do: it orders writes across files only by fsync.
    pub fn crash_per_file(&self, fate: impl Fn(&Path) -> Unsynced) -> MemVfs {
        let old = lock(&self.state);
        let names = old.durable_names.clone();
        let mut inodes = BTreeMap::new();
        for (path, &id) in &names {
            let inode = &old.inodes[&id];
            let Unsynced { ops, torn_bytes } = fate(path);
            let mut bytes = inode.durable.clone();
            let kept = ops.min(inode.pending.len());
            for op in &inode.pending[..kept] {
                apply(&mut bytes, op);
            }
            if let Some(PendingOp::Write { offset, data }) = inode.pending.get(kept) {
                let torn =
                    PendingOp::Write { offset: *offset, data: data[..torn_bytes.min(data.len())].to_vec() };
                apply(&mut bytes, &torn);
            }
            inodes.insert(id, Inode { data: bytes.clone(), durable: bytes, pending: Vec::new() });
        }
        MemVfs::after_power_loss(&old, names, inodes)
    }

    /// Flips bit `bit` (0..8) of byte `offset` of `path`, in both the current
    /// and the durable contents (bit rot on the medium).
    pub fn flip_bit(&self, path: &Path, offset: u64, bit: u8) {
        let mut state = lock(&self.state);
        let id = state.names[path];
        let inode = state.inode(id);
        inode.data[offset as usize] ^= 1 << bit;
        if let Some(byte) = inode.durable.get_mut(offset as usize) {
            *byte ^= 1 << bit;
        }
    }

    /// The current contents of `path`, if it exists.
    pub fn file_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let state = lock(&self.state);
        state.names.get(path).map(|id| state.inodes[id].data.clone())
    }
}

impl VfsFile for MemFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.check_alive()?;
        let data = &state.inode(self.inode).data;
        let start = offset as usize;
        let end = start.checked_add(buf.len()).filter(|&end| end <= data.len());
        let Some(end) = end else {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of the file"));
        };
        buf.copy_from_slice(&data[start..end]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.check_alive()?;
        let n = state.writes;
        state.writes += 1;
        state.write_sizes.push(buf.len());
        if state.faults.fail_write == Some(n) {
            return Err(eio("write"));
        }
        let mut len = buf.len();
        if let Some((die_at, keep_bytes)) = state.faults.die_at_write {
            if die_at == n {
                state.dead = true;
                len = keep_bytes.min(buf.len());
            }
        }
        let op = PendingOp::Write { offset, data: buf[..len].to_vec() };
        let inode = state.inode(self.inode);
        apply(&mut inode.data, &op);
        inode.pending.push(op);
        if state.dead {
            return Err(io::Error::other("simulated crash during write"));
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.check_alive()?;
        let n = state.syncs;
        state.syncs += 1;
        let fail = state.faults.fail_sync == Some(n);
        let inode = state.inode(self.inode);
        if fail {
            inode.pending.clear();
            inode.data = inode.durable.clone();
            return Err(eio("fdatasync"));
        }
        for op in std::mem::take(&mut inode.pending) {
            apply(&mut inode.durable, &op);
        }
        debug_assert_eq!(inode.durable, inode.data);
        Ok(())
    }

    fn truncate(&self, len_bytes: u64) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.check_alive()?;
        let op = PendingOp::SetLen(len_bytes);
        let inode = state.inode(self.inode);
        apply(&mut inode.data, &op);
        inode.pending.push(op);
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let mut state = lock(&self.state);
        state.check_alive()?;
        Ok(state.inode(self.inode).data.len() as u64)
    }
}

impl Vfs for MemVfs {
    fn create(&self, path: &Path) -> io::Result<Box<dyn VfsFile>> {
        let mut state = lock(&self.state);
        state.check_alive()?;
        state.check_parent(path)?;
        if state.names.contains_key(path) || state.dirs.contains(path) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} exists", path.display())));
        }
        let id = state.next_inode;
        state.next_inode += 1;
        state.inodes.insert(id, Inode::default());
        state.names.insert(path.to_path_buf(), id);
        Ok(Box::new(MemFile { state: self.state.clone(), inode: id }))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn VfsFile>> {
        let state = lock(&self.state);
        state.check_alive()?;
        match state.names.get(path) {
            Some(&id) => Ok(Box::new(MemFile { state: self.state.clone(), inode: id })),
            None => Err(io::Error::new(io::ErrorKind::NotFound, format!("no file {}", path.display()))),
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.check_alive()?;
        state.check_parent(to)?;
        let Some(id) = state.names.remove(from) else {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no file {}", from.display())));
        };
        state.names.insert(to.to_path_buf(), id);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.check_alive()?;
        match state.names.remove(path) {
            Some(_) => Ok(()),
            None => Err(io::Error::new(io::ErrorKind::NotFound, format!("no file {}", path.display()))),
        }
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = lock(&self.state);
        state.check_alive()?;
        if !state.dirs.contains(dir) {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no directory {}", dir.display())));
        }
        let files = state.names.keys();
        let dirs = state.dirs.iter();
        let mut names: Vec<String> = files
            .chain(dirs)
            .filter(|path| path.parent() == Some(dir))
            .filter_map(|path| path.file_name()?.to_str().map(str::to_owned))
            .collect();
        names.sort();
        Ok(names)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.check_alive()?;
        if !state.dirs.contains(dir) {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no directory {}", dir.display())));
        }
        let State { names, durable_names, .. } = &mut *state;
        durable_names.retain(|path, _| path.parent() != Some(dir));
        for (path, &id) in names.iter().filter(|(path, _)| path.parent() == Some(dir)) {
            durable_names.insert(path.clone(), id);
        }
        Ok(())
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.check_alive()?;
        for ancestor in dir.ancestors() {
            if ancestor.as_os_str().is_empty() {
                break;
            }
            if state.names.contains_key(ancestor) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} is a file", ancestor.display()),
                ));
            }
            state.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    /// Directories are always durable here, so the removal is too.
    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.check_alive()?;
        if !state.dirs.contains(dir) {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no directory {}", dir.display())));
        }
        let inside = |p: &PathBuf| p.parent() == Some(dir);
        if state.names.keys().any(inside) || state.dirs.iter().any(inside) {
            return Err(io::Error::new(
                io::ErrorKind::DirectoryNotEmpty,
                format!("directory {} is not empty", dir.display()),
            ));
        }
        state.dirs.remove(dir);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (MemVfs, PathBuf) {
        let vfs = MemVfs::new();
        let dir = PathBuf::from("/d");
        vfs.create_dir_all(&dir).unwrap();
        (vfs, dir)
    }

    #[test]
    fn unsynced_data_and_names_are_dropped_by_a_crash() {
        let (vfs, dir) = setup();
        let a = dir.join("a");
        let file = vfs.create(&a).unwrap();
        file.write_at(b"abc", 0).unwrap();
        file.sync_data().unwrap();
        // Data synced, name not: the file vanishes.
        assert!(vfs.crash(CrashMode::DropUnsynced).open(&a).is_err());
        vfs.sync_dir(&dir).unwrap();
        file.write_at(b"XY", 1).unwrap();
        let after = vfs.crash(CrashMode::DropUnsynced);
        assert_eq!(after.file_bytes(&a).unwrap(), b"abc");
        let kept = vfs.crash(CrashMode::KeepUnsynced);
        assert_eq!(kept.file_bytes(&a).unwrap(), b"aXY");
    }

    #[test]
    fn die_at_write_tears_and_stops_everything() {
        let (vfs, dir) = setup();
        let file = vfs.create(&dir.join("a")).unwrap();
        vfs.set_faults(Faults { die_at_write: Some((1, 2)), ..Faults::default() });
        file.write_at(b"1111", 0).unwrap();
        assert!(file.write_at(b"2222", 4).is_err());
        assert!(vfs.is_dead());
        assert!(file.sync_data().is_err());
        let after = vfs.crash(CrashMode::KeepUnsynced);
        assert_eq!(after.file_bytes(&dir.join("a")).unwrap(), b"111122");
    }

    #[test]
    fn failed_sync_drops_unsynced_pages() {
        let (vfs, dir) = setup();
        let file = vfs.create(&dir.join("a")).unwrap();
        file.write_at(b"ok", 0).unwrap();
        file.sync_data().unwrap();
        vfs.set_faults(Faults { fail_sync: Some(1), ..Faults::default() });
        file.write_at(b"lost", 2).unwrap();
        assert!(file.sync_data().is_err());
        assert_eq!(vfs.file_bytes(&dir.join("a")).unwrap(), b"ok");
    }

    #[test]
    fn crash_per_file_keeps_each_file_independently() {
        let (vfs, dir) = setup();
        let (a, b) = (dir.join("a"), dir.join("b"));
        let fa = vfs.create(&a).unwrap();
        let fb = vfs.create(&b).unwrap();
        vfs.sync_dir(&dir).unwrap();
        fa.write_at(b"1111", 0).unwrap();
        fa.write_at(b"2222", 4).unwrap();
        fb.write_at(b"bb", 0).unwrap();
        assert_eq!(vfs.unsynced_files(), vec![(a.clone(), vec![4, 4]), (b.clone(), vec![2])]);
        let after =
            vfs.crash_per_file(|p| if p == a { Unsynced { ops: 1, torn_bytes: 3 } } else { Unsynced::DROP });
        assert_eq!(after.file_bytes(&a).unwrap(), b"1111222");
        assert_eq!(after.file_bytes(&b).unwrap(), b"");
        let after = vfs.crash_per_file(|p| if p == b { Unsynced::KEEP } else { Unsynced::DROP });
        assert_eq!(after.file_bytes(&a).unwrap(), b"");
        assert_eq!(after.file_bytes(&b).unwrap(), b"bb");
        assert!(after.unsynced_files().is_empty());
    }

    #[test]
    fn rename_and_list() {
        let (vfs, dir) = setup();
        vfs.create(&dir.join("b.tmp")).unwrap();
        vfs.rename(&dir.join("b.tmp"), &dir.join("b")).unwrap();
        vfs.create_dir_all(&dir.join("sub")).unwrap();
        assert_eq!(vfs.list(&dir).unwrap(), vec!["b".to_string(), "sub".to_string()]);
        assert_eq!(vfs.create(&dir.join("b")).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        assert!(vfs.create(Path::new("/nodir/x")).is_err());
    }
}
