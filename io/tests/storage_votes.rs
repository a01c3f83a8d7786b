//! A flush in which many groups change term or vote at once (a node's
//! failover: every group its dead peer led elects together) syncs the votes
//! in two batches over all groups, not two fdatasyncs per group back to back;
//! and every vote is still durable in both slots before it is reported, with
//! a failing copy stopping only its own group.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tarn_core::HardState;
use tarn_io::storage::{FlushReport, Storage, StorageConfig, StorageError};
use tarn_io::vfs::{CrashMode, Faults, MemVfs, Vfs, VfsFile};

const GROUPS: u64 = 50;

/// `MemVfs`, recording the size of every `sync_data_batch` call.
#[derive(Debug)]
struct BatchLog {
    inner: MemVfs,
    batches: Mutex<Vec<usize>>,
}

impl BatchLog {
    /// The batches since the last call, leaving out empty ones (they cost
    /// nothing).
    fn take(&self) -> Vec<usize> {
        let batches = std::mem::take(&mut *self.batches.lock().unwrap());
        batches.into_iter().filter(|&n| n > 0).collect()
    }
}

impl Vfs for BatchLog {
    fn create(&self, path: &Path) -> io::Result<Box<dyn VfsFile>> {
        self.inner.create(path)
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn VfsFile>> {
        self.inner.open(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }
    fn sync_data_batch(&self, files: &[&dyn VfsFile]) -> Vec<io::Result<()>> {
        self.batches.lock().unwrap().push(files.len());
        self.inner.sync_data_batch(files)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }
}

fn config() -> StorageConfig {
    let mut c = StorageConfig::new("/data", 7, 1);
    c.segment_size_bytes = 4096;
    c.max_entry_size_bytes = 1024;
    c
}

/// A storage with `GROUPS` open groups, all at term 1 with no vote.
fn setup() -> (Arc<BatchLog>, Storage) {
    let vfs = Arc::new(BatchLog { inner: MemVfs::new(), batches: Mutex::new(Vec::new()) });
    let mut s = Storage::open(vfs.clone(), config()).unwrap();
    let mut report = FlushReport::default();
    for g in 1..=GROUPS {
        s.open_group(g).unwrap();
        s.stage_hard_state(g, HardState { term: 1, vote: None, commit: 0 }).unwrap();
    }
    s.flush(&mut report);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    vfs.take();
    (vfs, s)
}

/// Every group votes for node 2 in term 5 (as voters of one failover do).
fn vote_everywhere(s: &mut Storage) -> FlushReport {
    for g in 1..=GROUPS {
        s.stage_hard_state(g, HardState { term: 5, vote: Some(2), commit: 0 }).unwrap();
    }
    let mut report = FlushReport::default();
    s.flush(&mut report);
    report
}

fn recovered_term(vfs: &MemVfs, group: u64) -> (u64, Option<u64>) {
    let mut s = Storage::open(Arc::new(vfs.clone()), config()).unwrap();
    let hs = s.open_group(group).unwrap().hard_state;
    (hs.term, hs.vote)
}

#[test]
fn votes_of_many_groups_are_synced_in_two_batches_and_survive_a_crash() {
    let (vfs, mut s) = setup();
    let syncs = vfs.inner.sync_count();
    let report = vote_everywhere(&mut s);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.hard_states.len(), GROUPS as usize, "every vote is reported");
    assert!(report.hard_states.iter().all(|(_, hs)| hs.term == 5 && hs.vote == Some(2)));
    // Two copies per group, synced as two batches over all groups: the flush
    // costs two rounds of concurrent fdatasyncs, however many groups voted.
    assert_eq!(vfs.inner.sync_count() - syncs, 2 * GROUPS, "two synced copies per vote");
    assert_eq!(vfs.take(), vec![GROUPS as usize, GROUPS as usize]);
    // Durable before reported: a crash that drops everything unsynced keeps
    // every vote.
    let after = vfs.inner.crash(CrashMode::DropUnsynced);
    for g in 1..=GROUPS {
        assert_eq!(recovered_term(&after, g), (5, Some(2)), "group {g}");
    }
}

#[test]
fn a_failing_vote_copy_stops_only_its_group() {
    // Fail the sync of group 7's first copy, then (another run) of group
    // 30's second: batches sync in group order, one file per group.
    for (copy, victim) in [(0, 7), (1, 30)] {
        let (vfs, mut s) = setup();
        let n = vfs.inner.sync_count() + copy * GROUPS + (victim - 1);
        vfs.inner.set_faults(Faults { fail_sync: Some(n), ..Faults::default() });
        let report = vote_everywhere(&mut s);
        assert_eq!(report.failed.len(), 1, "copy {copy}: {:?}", report.failed);
        let (group, err) = &report.failed[0];
        assert_eq!(*group, victim);
        assert!(matches!(err, StorageError::Poisoned { .. }), "{err}");
        assert!(err.to_string().contains("fdatasync hard state"), "{err}");
        // The others' votes are reported, the victim's is not.
        assert_eq!(report.hard_states.len(), GROUPS as usize - 1);
        assert!(report.hard_states.iter().all(|&(g, hs)| g != victim && hs.term == 5));
        // The victim stays stopped; the others go on.
        assert!(s.stage_hard_state(victim, HardState { term: 6, vote: None, commit: 0 }).is_err());
        let after = vfs.inner.crash(CrashMode::DropUnsynced);
        for g in (1..=GROUPS).filter(|&g| g != victim) {
            assert_eq!(recovered_term(&after, g), (5, Some(2)), "group {g}");
        }
        // A failed first copy leaves the old vote (never reported); a failed
        // second copy leaves the first, synced one.
        let expect = if copy == 0 { (1, None) } else { (5, Some(2)) };
        assert_eq!(recovered_term(&after, victim), expect, "copy {copy}");
    }
}
