//! The storage engine over [`PooledVfs`] with far fewer descriptors than its
//! groups hold files: appends, hard states, snapshots, compaction, async
//! syncs and a reopen all behave as over plain files, while the pool keeps
//! closing and reopening descriptors under them (issue 17: 10,000 groups
//! in one process).

use std::sync::Arc;

use bytes::Bytes;
use tarn_core::{Entry, EntryPayload, HardState, LogId, Membership, SnapshotMeta};
use tarn_io::storage::{FlushReport, Storage, StorageConfig, WriteMode};
use tarn_io::vfs::PooledVfs;

const GROUPS: u64 = 40;

fn config(dir: &std::path::Path) -> StorageConfig {
    let mut c = StorageConfig::new(dir, 7, 1);
    c.segment_size_bytes = 4096;
    c.max_entry_size_bytes = 1024;
    c
}

fn entry(term: u64, index: u64, group: u64) -> Entry {
    let data: Vec<u8> = (0..100).map(|i| (index as usize * 31 + i + group as usize) as u8).collect();
    Entry { term, index, payload: EntryPayload::Normal(Bytes::from(data)) }
}

fn read_all(s: &Storage, group: u64) -> Vec<Entry> {
    let st = s.log_state(group).unwrap();
    let mut out = Vec::new();
    s.entries(group, st.first_index, st.last_written.index + 1, u64::MAX, &mut out).unwrap();
    out
}

fn run(write_mode: WriteMode) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.write_mode = write_mode;
    // Each group holds two files at least; 40 groups over 6 descriptors.
    let vfs = PooledVfs::new(6);
    let mut s = Storage::open(Arc::new(vfs.clone()), cfg.clone()).unwrap();
    let mut report = FlushReport::default();
    for g in 1..=GROUPS {
        s.open_group(g).unwrap();
    }
    // Rounds of appends touching every group in turn, so each round reopens
    // descriptors the previous one's groups made the pool close.
    for round in 0..5u64 {
        for g in 1..=GROUPS {
            let batch: Vec<Entry> = (round * 20 + 1..=round * 20 + 20).map(|i| entry(1, i, g)).collect();
            s.stage(g, &batch).unwrap();
            s.stage_hard_state(g, HardState { term: 1, vote: Some(1), commit: round * 20 + 10 }).unwrap();
            s.flush(&mut report);
            assert!(report.failed.is_empty(), "round {round} group {g}: {:?}", report.failed);
            if write_mode == WriteMode::Async {
                let job = s.begin_sync(&mut report);
                let results = job.run();
                s.finish_sync(job, results, &mut report);
                assert!(report.failed.is_empty(), "{:?}", report.failed);
            }
        }
    }
    // Snapshots and compaction on half the groups (renames under the pool).
    for g in (1..=GROUPS).step_by(2) {
        let meta = SnapshotMeta { last_log_id: LogId::new(1, 60), membership: Membership::new_voters([1]) };
        s.write_snapshot(g, &meta, format!("state of {g}").as_bytes()).unwrap();
        s.compact(g, meta.last_log_id).unwrap();
    }
    if let Some(job) = s.take_deletions() {
        assert!(job.run().is_empty());
    }
    let stats = vfs.stats();
    assert!(stats.evictions > 0 && stats.reopens > 0, "the pool never cycled: {stats:?}");
    assert!(stats.open <= 12, "descriptors held: {stats:?}");
    for g in 1..=GROUPS {
        let all = read_all(&s, g);
        assert_eq!(all.last().map(|e| e.index), Some(100), "group {g}");
        assert!(all.iter().all(|e| *e == entry(1, e.index, g)), "group {g} reads back what it wrote");
    }
    drop(s);
    assert_eq!(vfs.stats().open, 0, "a closed engine holds no descriptor: {:?}", vfs.stats());
    // Reopen: everything recovered, through the pool again.
    let mut s = Storage::open(Arc::new(vfs.clone()), cfg).unwrap();
    for g in 1..=GROUPS {
        let rec = s.open_group(g).unwrap();
        assert_eq!(rec.last_log_id, LogId::new(1, 100), "group {g}");
        assert_eq!(rec.hard_state.vote, Some(1));
        assert_eq!(rec.hard_state.term, 1);
        if g % 2 == 1 {
            assert_eq!(rec.snapshot.map(|m| m.last_log_id), Some(LogId::new(1, 60)));
            assert_eq!(
                s.read_snapshot(g).unwrap().map(|(_, d)| d),
                Some(format!("state of {g}").into_bytes())
            );
        }
    }
    for g in 1..=GROUPS {
        assert!(read_all(&s, g).iter().all(|e| *e == entry(1, e.index, g)));
    }
    assert!(vfs.stats().open <= 12, "{:?}", vfs.stats());
}

#[test]
fn forty_groups_over_six_descriptors_sync_mode() {
    run(WriteMode::Sync);
}

#[test]
fn forty_groups_over_six_descriptors_async_mode() {
    run(WriteMode::Async);
}
