//! End-to-end behaviour of the storage engine over MemVfs and real files:
//! append/flush/read, reopen, truncation, compaction, hard state, snapshots,
//! configuration errors, poisoning.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use tarn_core::{Entry, EntryPayload, HardState, LogId, Membership, SnapshotMeta};
use tarn_io::storage::{FlushReport, Persisted, Storage, StorageConfig, StorageError, WriteMode};
use tarn_io::vfs::{CrashMode, Faults, MemVfs, StdVfs, Vfs};

fn config(dir: &str) -> StorageConfig {
    let mut c = StorageConfig::new(dir, 7, 1);
    c.segment_size_bytes = 4096;
    c.max_entry_size_bytes = 1024;
    c
}

fn entry(term: u64, index: u64, len: usize) -> Entry {
    let data: Vec<u8> = (0..len).map(|i| (index as usize * 31 + i) as u8).collect();
    Entry { term, index, payload: EntryPayload::Normal(Bytes::from(data)) }
}

fn entries(term: u64, range: std::ops::RangeInclusive<u64>, len: usize) -> Vec<Entry> {
    range.map(|i| entry(term, i, len)).collect()
}

fn read_all(s: &Storage, group: u64) -> Vec<Entry> {
    let st = s.log_state(group).unwrap();
    let mut out = Vec::new();
    s.entries(group, st.first_index, st.last_written.index + 1, u64::MAX, &mut out).unwrap();
    out
}

fn open(vfs: &MemVfs, cfg: &StorageConfig) -> Storage {
    Storage::open(Arc::new(vfs.clone()), cfg.clone()).unwrap()
}

#[test]
fn append_flush_read_reopen_across_segments() {
    let vfs = MemVfs::new();
    let cfg = config("/data");
    let mut s = open(&vfs, &cfg);
    let rec = s.open_group(1).unwrap();
    assert_eq!(rec.last_log_id, LogId::ZERO);
    let mut all = entries(1, 1..=40, 100);
    all.push(Entry {
        term: 2,
        index: 41,
        payload: EntryPayload::Membership(Membership::new_voters([1, 2, 3])),
    });
    all.push(Entry { term: 2, index: 42, payload: EntryPayload::Blank });
    s.stage(1, &all[..20]).unwrap();
    s.stage(1, &all[20..]).unwrap();
    s.stage_hard_state(1, HardState { term: 2, vote: Some(1), commit: 5 }).unwrap();
    let mut report = FlushReport::default();
    s.flush(&mut report);
    assert!(report.failed.is_empty());
    assert_eq!(report.log, vec![Persisted { group: 1, up_to: LogId::new(2, 42) }]);
    assert_eq!(report.hard_states, vec![(1, HardState { term: 2, vote: Some(1), commit: 5 })]);
    assert_eq!(read_all(&s, 1), all);
    // A bounded read stops early but returns at least one entry.
    let mut some = Vec::new();
    s.entries(1, 3, 40, 256, &mut some).unwrap();
    assert_eq!(some, all[2..4].to_vec());
    some.clear();
    s.entries(1, 3, 40, 1, &mut some).unwrap();
    assert_eq!(some, all[2..3].to_vec());
    assert_eq!(s.term(1, 41).unwrap(), Some(2));
    assert_eq!(s.term(1, 40).unwrap(), Some(1));
    assert_eq!(s.term(1, 43).unwrap(), None);
    // Only durable state survives a crash: all of it here.
    let after = vfs.crash(CrashMode::DropUnsynced);
    let mut s2 = open(&after, &cfg);
    let rec = s2.open_group(1).unwrap();
    assert_eq!(rec.last_log_id, LogId::new(2, 42));
    assert_eq!(rec.first_index, 1);
    assert_eq!(rec.hard_state, HardState { term: 2, vote: Some(1), commit: 5 });
    assert_eq!(rec.membership, Some((LogId::new(2, 41), Membership::new_voters([1, 2, 3]))));
    assert_eq!(rec.truncated_tail, None);
    assert_eq!(read_all(&s2, 1), all);
}

#[test]
fn conflicting_append_truncates_durably_and_survives_crash() {
    let vfs = MemVfs::new();
    let cfg = config("/data");
    let mut s = open(&vfs, &cfg);
    s.open_group(3).unwrap();
    let mut report = FlushReport::default();
    s.stage(3, &entries(1, 1..=60, 90)).unwrap();
    s.flush(&mut report);
    // A new leader overwrites from 25 with term 2.
    let new = entries(2, 25..=30, 10);
    s.stage(3, &new).unwrap();
    s.flush(&mut report);
    assert_eq!(report.log, vec![Persisted { group: 3, up_to: LogId::new(2, 30) }]);
    let mut expect = entries(1, 1..=24, 90);
    expect.extend(new.clone());
    assert_eq!(read_all(&s, 3), expect);
    for mode in [CrashMode::DropUnsynced, CrashMode::KeepUnsynced] {
        let mut s2 = open(&vfs.crash(mode), &cfg);
        assert_eq!(s2.open_group(3).unwrap().last_log_id, LogId::new(2, 30));
        assert_eq!(read_all(&s2, 3), expect);
    }
    // Bad appends are refused and change nothing.
    assert!(matches!(s.stage(3, &entries(2, 40..=41, 1)), Err(StorageError::InvalidRequest { .. })));
    assert!(matches!(s.stage(3, &entries(1, 31..=31, 1)), Err(StorageError::InvalidRequest { .. })));
    assert!(matches!(s.stage(3, &[entry(2, 31, 5000)]), Err(StorageError::InvalidRequest { .. })));
    assert_eq!(read_all(&s, 3), expect);
}

#[test]
fn snapshot_compaction_and_reset() {
    let vfs = MemVfs::new();
    let cfg = config("/data");
    let mut s = open(&vfs, &cfg);
    s.open_group(1).unwrap();
    let mut report = FlushReport::default();
    s.stage(1, &entries(1, 1..=100, 100)).unwrap();
    s.flush(&mut report);
    let dir = PathBuf::from("/data/group-00000000000000000001");
    let files = |vfs: &MemVfs, suffix: &str| {
        vfs.list(&dir).unwrap().into_iter().filter(|n| n.ends_with(suffix)).count()
    };
    let segments_before = files(&vfs, ".seg");
    let meta = SnapshotMeta { last_log_id: LogId::new(1, 70), membership: Membership::new_voters([1]) };
    s.write_snapshot(1, &meta, b"kv state at 70").unwrap();
    s.compact(1, meta.last_log_id).unwrap();
    let st = s.log_state(1).unwrap();
    assert!(st.first_index > 1 && st.first_index <= 71, "first index {}", st.first_index);
    assert!(files(&vfs, ".seg") < segments_before);
    // Compaction only renamed the covered segments: a crash now leaves them
    // for the next open to remove.
    let doomed = files(&vfs, ".seg.deleted");
    assert_eq!(doomed, segments_before - files(&vfs, ".seg"));
    let crashed_vfs = vfs.crash(CrashMode::KeepUnsynced);
    let mut crashed = open(&crashed_vfs, &cfg);
    let rec = crashed.open_group(1).unwrap();
    assert_eq!((rec.first_index, rec.last_log_id), (st.first_index, LogId::new(1, 100)));
    assert_eq!(files(&crashed_vfs, ".seg.deleted"), 0, "the open removed them");
    // The deletion job unlinks them, on any thread, once.
    let job = s.take_deletions().expect("compaction left segments to delete");
    assert_eq!(job.files().len(), doomed);
    assert!(job.run().is_empty());
    assert_eq!(files(&vfs, ".seg.deleted"), 0);
    assert!(s.take_deletions().is_none(), "handed out once");
    assert_eq!(s.read_snapshot(1).unwrap(), Some((meta.clone(), b"kv state at 70".to_vec())));
    let vfs = vfs.crash(CrashMode::DropUnsynced);
    let mut s2 = open(&vfs, &cfg);
    let rec = s2.open_group(1).unwrap();
    assert_eq!(rec.snapshot, Some(meta));
    assert_eq!(rec.last_log_id, LogId::new(1, 100));
    assert_eq!(rec.first_index, st.first_index);
    // A snapshot past the log's end resets the log.
    let meta2 = SnapshotMeta { last_log_id: LogId::new(3, 500), membership: Membership::new_voters([1, 2]) };
    s2.write_snapshot(1, &meta2, b"newer").unwrap();
    let st = s2.log_state(1).unwrap();
    assert_eq!((st.first_index, st.last_durable), (501, LogId::new(3, 500)));
    assert!(matches!(s2.stage(1, &entries(3, 500..=500, 1)), Err(StorageError::InvalidRequest { .. })));
    s2.stage(1, &entries(3, 501..=502, 1)).unwrap();
    s2.flush(&mut report);
    let mut s3 = open(&vfs.crash(CrashMode::DropUnsynced), &cfg);
    let rec = s3.open_group(1).unwrap();
    assert_eq!(rec.snapshot.unwrap().last_log_id, LogId::new(3, 500));
    assert_eq!((rec.first_index, rec.last_log_id), (501, LogId::new(3, 502)));
    assert_eq!(read_all(&s3, 1), entries(3, 501..=502, 1));
}

#[test]
fn async_mode_acks_on_write_and_syncs_on_request() {
    let vfs = MemVfs::new();
    let mut cfg = config("/data");
    cfg.write_mode = WriteMode::Async;
    let mut s = open(&vfs, &cfg);
    s.open_group(1).unwrap();
    let mut report = FlushReport::default();
    s.stage(1, &entries(1, 1..=1, 10)).unwrap();
    s.flush(&mut report); // creates the segment (which syncs its header)
    let syncs = vfs.sync_count();
    s.stage(1, &entries(1, 2..=10, 10)).unwrap();
    s.flush(&mut report);
    assert_eq!(report.log, vec![Persisted { group: 1, up_to: LogId::new(1, 10) }]);
    assert_eq!(vfs.sync_count(), syncs, "async flush does not fdatasync");
    assert_eq!(s.log_state(1).unwrap().last_durable, LogId::ZERO);
    s.sync(&mut report);
    assert!(report.failed.is_empty());
    assert_eq!(s.log_state(1).unwrap().last_durable, LogId::new(1, 10));
    let mut s2 = open(&vfs.crash(CrashMode::DropUnsynced), &cfg);
    assert_eq!(s2.open_group(1).unwrap().last_log_id, LogId::new(1, 10));
}

#[test]
fn background_sync_job_runs_on_another_thread_while_appends_go_on() {
    let vfs = MemVfs::new();
    let mut cfg = config("/data");
    cfg.write_mode = WriteMode::Async;
    let mut s = open(&vfs, &cfg);
    s.open_group(1).unwrap();
    let mut report = FlushReport::default();
    s.stage(1, &entries(1, 1..=10, 10)).unwrap();
    s.stage_hard_state(1, HardState { term: 1, vote: Some(1), commit: 0 }).unwrap();
    s.flush(&mut report);
    assert_eq!(report.hard_states, vec![(1, HardState { term: 1, vote: Some(1), commit: 0 })]);
    let job = s.begin_sync(&mut report);
    assert!(!job.is_empty());
    let runner = std::thread::spawn(move || {
        let results = job.run();
        (job, results)
    });
    // Appends continue while the job runs.
    s.stage(1, &entries(1, 11..=12, 10)).unwrap();
    s.flush(&mut report);
    assert!(report.hard_states.is_empty(), "no hard state staged in this flush");
    let (job, results) = runner.join().unwrap();
    s.finish_sync(job, results, &mut report);
    assert!(report.failed.is_empty());
    // The job vouches for what was written when it began, not after.
    assert_eq!(s.log_state(1).unwrap().last_durable, LogId::new(1, 10));
    let mut s2 = open(&vfs.crash(CrashMode::DropUnsynced), &cfg);
    let rec = s2.open_group(1).unwrap();
    assert!(rec.last_log_id.index >= 10);
    assert_eq!(rec.hard_state.vote, Some(1));
}

#[test]
fn configuration_and_identity_errors() {
    let vfs = MemVfs::new();
    let mut cfg = config("/data");
    cfg.segment_size_bytes = 4100;
    let err = Storage::open(Arc::new(vfs.clone()), cfg).unwrap_err();
    assert!(err.to_string().contains("not a multiple of the record alignment 8"), "{err}");
    let mut cfg = config("/data");
    cfg.segment_size_bytes = 512;
    assert!(matches!(Storage::open(Arc::new(vfs.clone()), cfg), Err(StorageError::InvalidConfig(_))));
    let cfg = config("/data");
    drop(open(&vfs, &cfg));
    let mut other = config("/data");
    other.cluster_id = 8;
    let err = Storage::open(Arc::new(vfs.clone()), other).unwrap_err();
    assert!(matches!(err, StorageError::WrongIdentity { .. }), "{err}");
    assert!(err.to_string().contains("cluster 8 node 1"), "{err}");
    // A group directory copied from another group is refused.
    let mut s = open(&vfs, &cfg);
    s.open_group(1).unwrap();
    let bytes = vfs.file_bytes(&PathBuf::from("/data/group-00000000000000000001/group.id")).unwrap();
    vfs.create_dir_all(&PathBuf::from("/data/group-00000000000000000002")).unwrap();
    let f = vfs.create(&PathBuf::from("/data/group-00000000000000000002/group.id")).unwrap();
    f.write_at(&bytes, 0).unwrap();
    let err = s.open_group(2).unwrap_err();
    assert!(matches!(err, StorageError::WrongIdentity { .. }), "{err}");
    assert!(err.to_string().contains("group 1"), "{err}");
}

#[test]
fn unwritable_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let cfg = StorageConfig::new(file.join("data"), 7, 1);
    let err = Storage::open(Arc::new(StdVfs), cfg).unwrap_err();
    assert!(matches!(err, StorageError::Unwritable { .. }), "{err}");
    assert!(err.to_string().contains("not writable"), "{err}");
}

#[test]
fn eio_on_write_and_on_sync_poisons_only_that_group() {
    for fail_sync in [false, true] {
        let vfs = MemVfs::new();
        let cfg = config("/data");
        let mut s = open(&vfs, &cfg);
        s.open_group(1).unwrap();
        s.open_group(2).unwrap();
        let mut report = FlushReport::default();
        s.stage(1, &entries(1, 1..=3, 10)).unwrap();
        s.stage(2, &entries(1, 1..=3, 10)).unwrap();
        s.flush(&mut report);
        assert!(report.failed.is_empty());
        // Next flush: group 1's write (or its sync) fails.
        let faults = if fail_sync {
            Faults { fail_sync: Some(vfs.sync_count()), ..Faults::default() }
        } else {
            Faults { fail_write: Some(vfs.write_count()), ..Faults::default() }
        };
        vfs.set_faults(faults);
        s.stage(1, &entries(1, 4..=5, 10)).unwrap();
        s.stage(2, &entries(1, 4..=5, 10)).unwrap();
        s.flush(&mut report);
        assert_eq!(report.failed.len(), 1);
        let (group, err) = &report.failed[0];
        assert_eq!(*group, 1);
        let msg = err.to_string();
        assert!(matches!(err, StorageError::Poisoned { .. }), "{msg}");
        assert!(msg.contains("00000000000000000001.seg") && msg.contains("simulated EIO"), "{msg}");
        assert_eq!(report.log, vec![Persisted { group: 2, up_to: LogId::new(1, 5) }]);
        // No retry: every later call on group 1 fails with the same cause.
        let again = s.stage(1, &entries(1, 4..=4, 1)).unwrap_err();
        assert!(again.to_string().contains("simulated EIO"), "{again}");
        assert!(s.entries(1, 1, 2, 100, &mut Vec::new()).is_err());
        s.stage(2, &entries(1, 6..=6, 10)).unwrap();
        s.flush(&mut report);
        assert!(report.failed.is_empty());
        // After a restart, group 1 has its durable prefix.
        let mut s2 = open(&vfs.crash(CrashMode::DropUnsynced), &cfg);
        assert_eq!(s2.open_group(1).unwrap().last_log_id, LogId::new(1, 3));
        assert_eq!(s2.open_group(2).unwrap().last_log_id, LogId::new(1, 6));
    }
}

#[test]
fn real_files_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = StorageConfig::new(tmp.path().join("data"), 7, 1);
    cfg.segment_size_bytes = 1 << 16;
    cfg.max_entry_size_bytes = 1 << 10;
    let mut s = Storage::open(Arc::new(StdVfs), cfg.clone()).unwrap();
    s.open_group(9).unwrap();
    let mut report = FlushReport::default();
    s.stage(9, &entries(1, 1..=500, 300)).unwrap();
    s.stage_hard_state(9, HardState { term: 1, vote: Some(1), commit: 0 }).unwrap();
    s.flush(&mut report);
    assert!(report.failed.is_empty());
    drop(s);
    let mut s = Storage::open(Arc::new(StdVfs), cfg).unwrap();
    let rec = s.open_group(9).unwrap();
    assert_eq!(rec.last_log_id, LogId::new(1, 500));
    assert_eq!(rec.hard_state.vote, Some(1));
    assert_eq!(read_all(&s, 9), entries(1, 1..=500, 300));
    assert_eq!(s.groups_on_disk().unwrap(), vec![9]);
}

/// Sync mode's watermark, two ways. `flush` syncs the records, then the
/// watermark covering them, and reports them. `flush_pipelined` syncs the
/// records together with the watermark of the previous flush and reports
/// only what that covers; the next flush — with new entries, or idle, then
/// writing the watermark alone — reports the rest.
#[test]
fn pipelined_flush_reports_a_flush_late_and_an_idle_flush_writes_only_the_watermark() {
    let vfs = MemVfs::new();
    let cfg = config("/data");
    let mut s = open(&vfs, &cfg);
    s.open_group(1).unwrap();
    let mut report = FlushReport::default();
    s.stage(1, &entries(1, 1..=10, 10)).unwrap();
    let syncs = vfs.sync_count();
    s.flush(&mut report);
    assert_eq!(report.log, vec![Persisted { group: 1, up_to: LogId::new(1, 10) }]);
    assert_eq!(vfs.sync_count() - syncs, 2, "records, then the watermark");
    assert!(!s.needs_flush());

    s.stage(1, &entries(1, 11..=12, 10)).unwrap();
    s.flush_pipelined(&mut report);
    assert!(report.log.is_empty(), "11..=12 are synced but no durable watermark covers them yet");
    assert!(s.needs_flush());
    assert_eq!(s.log_state(1).unwrap().last_durable, LogId::new(1, 12));
    s.stage(1, &entries(1, 13..=13, 10)).unwrap();
    let (writes, syncs) = (vfs.write_count(), vfs.sync_count());
    s.flush_pipelined(&mut report);
    assert_eq!(report.log, vec![Persisted { group: 1, up_to: LogId::new(1, 12) }]);
    assert_eq!((vfs.write_count() - writes, vfs.sync_count() - syncs), (2, 2), "one batch: log and slot");
    let (writes, syncs) = (vfs.write_count(), vfs.sync_count());
    s.flush_pipelined(&mut report);
    assert_eq!(report.log, vec![Persisted { group: 1, up_to: LogId::new(1, 13) }]);
    assert_eq!((vfs.write_count() - writes, vfs.sync_count() - syncs), (1, 1), "the watermark alone");
    assert!(!s.needs_flush());
    s.flush_pipelined(&mut report);
    assert!(report.log.is_empty() && vfs.sync_count() == syncs + 1, "nothing to do");

    // Records synced but not yet covered survive a crash too (a torn tail
    // may only be cut above the watermark, and these are intact).
    s.stage(1, &entries(1, 14..=15, 10)).unwrap();
    s.flush_pipelined(&mut report);
    let mut s2 = open(&vfs.crash(CrashMode::DropUnsynced), &cfg);
    assert_eq!(s2.open_group(1).unwrap().last_log_id, LogId::new(1, 15));
}

/// Async mode acknowledges on write; its background syncs still record
/// what they made durable: a later job raises the watermark to it, and
/// `sync` (shutdown) leaves it covering everything.
#[test]
fn async_background_syncs_raise_the_watermark_one_job_behind() {
    let vfs = MemVfs::new();
    let mut cfg = config("/data");
    cfg.write_mode = WriteMode::Async;
    let mut s = open(&vfs, &cfg);
    s.open_group(1).unwrap();
    let mut report = FlushReport::default();
    s.stage(1, &entries(1, 1..=10, 10)).unwrap();
    s.flush(&mut report);
    assert!(s.needs_sync());
    let job = s.begin_sync(&mut report);
    let results = job.run();
    s.finish_sync(job, results, &mut report);
    assert_eq!(s.log_state(1).unwrap().last_durable, LogId::new(1, 10));
    assert!(s.needs_sync(), "the watermark still lags the sync");
    let job = s.begin_sync(&mut report);
    assert!(!job.is_empty());
    let results = job.run();
    s.finish_sync(job, results, &mut report);
    assert!(!s.needs_sync());
    // Now the last record is covered: bit rot in it is refused.
    let dir = PathBuf::from("/data/group-00000000000000000001");
    let seg = dir.join(format!("{:020}.seg", 1));
    let bytes = vfs.file_bytes(&seg).unwrap();
    let mut pos = 40;
    let mut last = pos;
    while let Some(view) = tarn_io::storage::record::parse(&bytes[pos..], 1 << 20) {
        last = pos;
        pos += view.size_bytes;
    }
    let after = vfs.crash(CrashMode::DropUnsynced);
    after.flip_bit(&seg, last as u64 + 30, 0);
    let err = Storage::open(Arc::new(after), cfg.clone()).unwrap().open_group(1).unwrap_err();
    assert!(matches!(err, StorageError::Corruption { .. }), "{err}");
    // `sync` does both rounds at once.
    s.stage(1, &entries(1, 11..=12, 10)).unwrap();
    s.flush(&mut report);
    s.sync(&mut report);
    assert!(report.failed.is_empty() && !s.needs_sync());
}

/// `tarn-sim --seed 8004121 --sim-seconds 40` (with pipelined flushes): a
/// follower's flush synced entry 3789 but owed its watermark; before the
/// next flush the node snapshotted and compacted its log, and compaction
/// marked everything durable as reported. The next flush reported nothing,
/// the follower never acknowledged 3789, and the joint configuration could
/// not commit again. Compaction must not mark unreported entries reported.
#[test]
fn compaction_while_a_watermark_is_owed_still_reports_the_entries() {
    let vfs = MemVfs::new();
    let mut s = open(&vfs, &config("/data"));
    s.open_group(1).unwrap();
    let mut report = FlushReport::default();
    s.stage(1, &entries(1, 1..=60, 90)).unwrap();
    s.flush(&mut report);
    assert_eq!(report.log, vec![Persisted { group: 1, up_to: LogId::new(1, 60) }]);
    s.stage(1, &entries(1, 61..=61, 90)).unwrap();
    s.flush_pipelined(&mut report);
    assert!(report.log.is_empty() && s.needs_flush());
    let meta = SnapshotMeta { last_log_id: LogId::new(1, 50), membership: Membership::new_voters([1]) };
    s.write_snapshot(1, &meta, b"state at 50").unwrap();
    s.compact(1, meta.last_log_id).unwrap();
    assert!(s.log_state(1).unwrap().first_index > 1, "segments were compacted");
    s.flush_pipelined(&mut report);
    assert_eq!(report.log, vec![Persisted { group: 1, up_to: LogId::new(1, 61) }]);

    // Compacted whole (a snapshot at the last entry) while 62 is owed: the
    // next flush reports at least what the snapshot covers.
    s.stage(1, &entries(1, 62..=62, 90)).unwrap();
    s.flush_pipelined(&mut report);
    assert!(report.log.is_empty() && s.needs_flush());
    let meta = SnapshotMeta { last_log_id: LogId::new(1, 62), membership: Membership::new_voters([1]) };
    s.write_snapshot(1, &meta, b"state at 62").unwrap();
    s.compact(1, meta.last_log_id).unwrap();
    s.flush_pipelined(&mut report);
    assert_eq!(report.log, vec![Persisted { group: 1, up_to: LogId::new(1, 62) }]);
    assert!(!s.needs_flush());
}
