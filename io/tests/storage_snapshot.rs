//! Chunked snapshots in the storage engine over MemVfs: writer, reader,
//! chunk reads for transfers, the blob API on top, crashes while a snapshot
//! is written, damage detection, and group removal.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tarn_core::{Entry, EntryPayload, HardState, LogId, Membership, SnapshotMeta};
use tarn_io::storage::{FlushReport, Storage, StorageConfig, StorageError};
use tarn_io::vfs::{CrashMode, Faults, MemVfs, Vfs};

const GROUP: u64 = 3;

fn config() -> StorageConfig {
    let mut c = StorageConfig::new("/data", 7, 1);
    c.segment_size_bytes = 4096;
    c.max_entry_size_bytes = 1024;
    c
}

fn open(vfs: &MemVfs) -> Storage {
    Storage::open(Arc::new(vfs.clone()), config()).unwrap()
}

fn meta(term: u64, index: u64) -> SnapshotMeta {
    SnapshotMeta { last_log_id: LogId::new(term, index), membership: Membership::new_voters([1, 2, 3]) }
}

/// Deterministic, index-dependent bytes so a mix-up of two snapshots shows.
fn state_bytes(seed: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seed as usize * 131 + i * 7 + i / 251) as u8).collect()
}

fn append(s: &mut Storage, term: u64, range: std::ops::RangeInclusive<u64>) {
    let entries: Vec<Entry> = range
        .map(|i| Entry { term, index: i, payload: EntryPayload::Normal(Bytes::from(vec![i as u8; 200])) })
        .collect();
    s.stage(GROUP, &entries).unwrap();
    s.stage_hard_state(GROUP, HardState { term, vote: Some(1), commit: 0 }).unwrap();
    let mut report = FlushReport::default();
    s.flush(&mut report);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
}

fn group_dir() -> PathBuf {
    Path::new("/data").join(format!("group-{GROUP:020}"))
}

fn snapshot_path(m: &SnapshotMeta) -> PathBuf {
    group_dir().join(format!("snap-{:020}-{:020}.snap", m.last_log_id.index, m.last_log_id.term))
}

/// Writes `data` through a writer in chunks of `chunk` bytes and commits it.
fn write_chunked(s: &mut Storage, m: &SnapshotMeta, data: &[u8], chunk: usize) {
    let mut w = s.snapshot_writer(GROUP, m.last_log_id).unwrap();
    for piece in data.chunks(chunk) {
        w.write_chunk(piece).unwrap();
    }
    assert_eq!(w.len(), data.len() as u64);
    let file = w.finish(m).unwrap();
    assert_eq!(file.data_len, data.len() as u64);
    s.commit_snapshot(GROUP, file).unwrap();
}

/// Every chunk of `snapshot` in order, as a transfer reads them.
fn read_transfer(s: &mut Storage, snapshot: LogId, max: usize) -> Result<Option<Vec<u8>>, StorageError> {
    let mut out = Vec::new();
    loop {
        let Some((chunk, done)) = s.read_snapshot_chunk(GROUP, snapshot, out.len() as u64, max)? else {
            return Ok(None);
        };
        assert!(chunk.len() <= max.max(1));
        out.extend_from_slice(&chunk);
        if done {
            return Ok(Some(out));
        }
        assert!(!chunk.is_empty(), "a chunk that does not end the snapshot is not empty");
    }
}

#[test]
fn chunked_write_then_chunk_reads_stream_and_blob_reads_agree() {
    let vfs = MemVfs::new();
    let mut s = open(&vfs);
    s.open_group(GROUP).unwrap();
    append(&mut s, 1, 1..=60);
    let m = meta(1, 50);
    let data = state_bytes(50, 100_000);
    write_chunked(&mut s, &m, &data, 7_001);
    assert_eq!(s.snapshot_meta(GROUP).unwrap(), Some(m.clone()));
    // A transfer in small chunks, and one rewound after a lost chunk.
    assert_eq!(read_transfer(&mut s, m.last_log_id, 4096).unwrap().as_deref(), Some(&data[..]));
    let (a, _) = s.read_snapshot_chunk(GROUP, m.last_log_id, 8192, 4096).unwrap().unwrap();
    let (b, _) = s.read_snapshot_chunk(GROUP, m.last_log_id, 4096, 4096).unwrap().unwrap();
    assert_eq!((&a[..], &b[..]), (&data[8192..12288], &data[4096..8192]));
    // Blob and streaming readers see the same.
    assert_eq!(s.read_snapshot(GROUP).unwrap(), Some((m.clone(), data.clone())));
    let mut reader = s.snapshot_reader(GROUP).unwrap().unwrap();
    let mut streamed = Vec::new();
    while let Some((chunk, _)) = reader.next_chunk(10_000).unwrap() {
        streamed.extend_from_slice(&chunk);
    }
    assert_eq!(streamed, data);
    // The log is still there (the snapshot matches it); compaction is separate.
    assert_eq!(s.log_state(GROUP).unwrap().last_written, LogId::new(1, 60));
    // A wrong snapshot id reads as "no longer available".
    assert_eq!(s.read_snapshot_chunk(GROUP, LogId::new(1, 49), 0, 10).unwrap(), None);

    // A newer snapshot replaces it: old reads answer None, the old file is gone.
    let m2 = meta(1, 58);
    let data2 = state_bytes(58, 30_000);
    write_chunked(&mut s, &m2, &data2, 30_000);
    assert_eq!(s.read_snapshot_chunk(GROUP, m.last_log_id, 0, 10).unwrap(), None);
    assert!(vfs.file_bytes(&snapshot_path(&m)).is_none(), "the replaced snapshot file is removed");
    assert_eq!(read_transfer(&mut s, m2.last_log_id, 1 << 20).unwrap().as_deref(), Some(&data2[..]));

    // Reopen: the newest snapshot, verified.
    drop(s);
    let mut s = open(&vfs);
    let rec = s.open_group(GROUP).unwrap();
    assert_eq!(rec.snapshot, Some(m2.clone()));
    assert_eq!(s.read_snapshot(GROUP).unwrap(), Some((m2, data2)));
}

#[test]
fn empty_snapshot_is_one_empty_final_chunk() {
    let vfs = MemVfs::new();
    let mut s = open(&vfs);
    s.open_group(GROUP).unwrap();
    append(&mut s, 1, 1..=3);
    let m = meta(1, 3);
    write_chunked(&mut s, &m, &[], 1);
    assert_eq!(s.read_snapshot_chunk(GROUP, m.last_log_id, 0, 100).unwrap(), Some((Bytes::new(), true)));
    let mut r = s.snapshot_reader(GROUP).unwrap().unwrap();
    assert_eq!(r.next_chunk(10).unwrap(), Some((Vec::new(), true)));
    assert_eq!(r.next_chunk(10).unwrap(), None);
}

#[test]
fn dropped_writer_removes_its_temporary_file_and_changes_nothing() {
    let vfs = MemVfs::new();
    let mut s = open(&vfs);
    s.open_group(GROUP).unwrap();
    append(&mut s, 1, 1..=20);
    write_chunked(&mut s, &meta(1, 10), b"first", 100);
    let before = vfs.list(&group_dir()).unwrap();
    let mut w = s.snapshot_writer(GROUP, LogId::new(1, 15)).unwrap();
    w.write_chunk(b"abandoned").unwrap();
    assert_ne!(vfs.list(&group_dir()).unwrap(), before, "the writer has a temporary file");
    drop(w);
    assert_eq!(vfs.list(&group_dir()).unwrap(), before);
    assert_eq!(s.read_snapshot(GROUP).unwrap(), Some((meta(1, 10), b"first".to_vec())));
}

#[test]
fn older_snapshots_are_refused_and_the_size_is_bounded() {
    let vfs = MemVfs::new();
    let mut cfg = config();
    cfg.max_snapshot_size_bytes = 1000;
    let mut s = Storage::open(Arc::new(vfs.clone()), cfg).unwrap();
    s.open_group(GROUP).unwrap();
    append(&mut s, 1, 1..=20);
    // Two writers race: the newer commits first, the older is then refused
    // and its file removed; the newer one stays.
    let mut old = s.snapshot_writer(GROUP, LogId::new(1, 10)).unwrap();
    old.write_chunk(b"old").unwrap();
    let mut new = s.snapshot_writer(GROUP, LogId::new(1, 12)).unwrap();
    new.write_chunk(b"new").unwrap();
    let (old, new) = (old.finish(&meta(1, 10)).unwrap(), new.finish(&meta(1, 12)).unwrap());
    s.commit_snapshot(GROUP, new).unwrap();
    assert!(matches!(s.commit_snapshot(GROUP, old), Err(StorageError::InvalidRequest { group: GROUP, .. })));
    assert!(vfs.file_bytes(&snapshot_path(&meta(1, 10))).is_none());
    assert_eq!(s.read_snapshot(GROUP).unwrap(), Some((meta(1, 12), b"new".to_vec())));
    assert!(matches!(s.snapshot_writer(GROUP, LogId::new(1, 11)), Err(StorageError::InvalidRequest { .. })));
    let mut mismatched = s.snapshot_writer(GROUP, LogId::new(1, 13)).unwrap();
    mismatched.write_chunk(b"x").unwrap();
    assert!(matches!(mismatched.finish(&meta(1, 14)), Err(StorageError::InvalidRequest { .. })));
    let mut big = s.snapshot_writer(GROUP, LogId::new(1, 20)).unwrap();
    big.write_chunk(&[0; 600]).unwrap();
    let err = big.write_chunk(&[0; 600]).unwrap_err();
    assert!(err.to_string().contains("max_snapshot_size_bytes"), "{err}");
}

#[test]
fn a_snapshot_past_the_log_discards_it() {
    let vfs = MemVfs::new();
    let mut s = open(&vfs);
    s.open_group(GROUP).unwrap();
    append(&mut s, 1, 1..=20);
    // A follower installs the leader's snapshot at 2@40.
    write_chunked(&mut s, &meta(2, 40), b"leader state", 5);
    let st = s.log_state(GROUP).unwrap();
    assert_eq!((st.first_index, st.last_written), (41, LogId::new(2, 40)));
    drop(s);
    let mut s = open(&vfs);
    let rec = s.open_group(GROUP).unwrap();
    assert_eq!((rec.last_log_id, rec.snapshot), (LogId::new(2, 40), Some(meta(2, 40))));
}

/// A bit flipped anywhere in the file: the transfer's last chunk, the
/// streaming reader and recovery all refuse it with the file's path.
#[test]
fn damaged_snapshot_is_detected_by_every_reader() {
    let data = state_bytes(9, 20_000);
    let vfs = MemVfs::new();
    let mut s = open(&vfs);
    s.open_group(GROUP).unwrap();
    append(&mut s, 1, 1..=12);
    let m = meta(1, 12);
    write_chunked(&mut s, &m, &data, 3000);
    drop(s);
    let path = snapshot_path(&m);
    let len = vfs.file_bytes(&path).unwrap().len() as u64;
    for offset in [0, 9, 17, 25, 40, len / 2, len - 1] {
        vfs.flip_bit(&path, offset, 3);
        let mut s = open(&vfs);
        match s.open_group(GROUP) {
            Err(StorageError::Corruption { path: p, .. }) => assert_eq!(p, path),
            other => panic!("recovery accepted a flipped bit at {offset}: {other:?}"),
        }
        vfs.flip_bit(&path, offset, 3);
    }
    // Damage after the group was opened (verified): a transfer does not get
    // its final chunk, the reader reports corruption with the path.
    let mut s = open(&vfs);
    s.open_group(GROUP).unwrap();
    vfs.flip_bit(&path, len - 100, 0);
    match read_transfer(&mut s, m.last_log_id, 4096) {
        Err(StorageError::Corruption { path: p, .. }) => assert_eq!(p, path),
        other => {
            panic!("a transfer of a damaged snapshot completed: {:?}", other.map(|o| o.map(|d| d.len())))
        }
    }
    let mut r = s.snapshot_reader(GROUP).unwrap().unwrap();
    let err = loop {
        match r.next_chunk(4096) {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the streaming reader finished a damaged snapshot"),
            Err(e) => break e,
        }
    };
    assert!(matches!(&err, StorageError::Corruption { path: p, .. } if *p == path), "{err}");
    assert!(s.read_snapshot(GROUP).is_err());
    // Torn: the file cut short is refused at once (bad lengths).
    let bytes = vfs.file_bytes(&path).unwrap();
    vfs.remove(&path).unwrap();
    vfs.create(&path).unwrap().write_at(&bytes[..bytes.len() - 10], 0).unwrap();
    assert!(matches!(s.snapshot_reader(GROUP), Err(StorageError::Corruption { .. })));
}

/// The process dies during every write of a second snapshot (with half the
/// bytes of that write landed), with unsynced data kept or lost: after a
/// reboot the group holds either the first snapshot or, once the second's
/// rename is durable, the second one — never a mix, never neither.
#[test]
fn crash_while_writing_a_snapshot_keeps_the_previous_one() {
    let data1 = state_bytes(1, 9000);
    let data2 = state_bytes(2, 12_000);
    let (m1, m2) = (meta(1, 10), meta(1, 18));
    let prepare = || {
        let vfs = MemVfs::new();
        let mut s = open(&vfs);
        s.open_group(GROUP).unwrap();
        append(&mut s, 1, 1..=20);
        write_chunked(&mut s, &m1, &data1, 4000);
        (vfs, s)
    };
    let second = |s: &mut Storage| -> Result<(), StorageError> {
        let mut w = s.snapshot_writer(GROUP, m2.last_log_id)?;
        for piece in data2.chunks(2500) {
            w.write_chunk(piece)?;
        }
        let file = w.finish(&m2)?;
        s.commit_snapshot(GROUP, file)
    };
    // Count the writes of the second snapshot.
    let (vfs, mut s) = prepare();
    let base = vfs.write_count();
    second(&mut s).unwrap();
    let writes = vfs.write_count() - base;
    assert!(writes >= 6, "five chunks, meta and header: {writes}");
    let mut saw = [0usize; 2];
    for n in 0..writes {
        for mode in [CrashMode::DropUnsynced, CrashMode::KeepUnsynced] {
            let (vfs, mut s) = prepare();
            let base = vfs.write_count();
            let size = 1; // bytes of the dying write that land
            vfs.set_faults(Faults { die_at_write: Some((base + n, size)), ..Faults::default() });
            assert!(second(&mut s).is_err(), "the process died at write {n}");
            drop(s);
            let after = vfs.crash(mode);
            let mut s = open(&after);
            let rec = s.open_group(GROUP).unwrap();
            let got = s.read_snapshot(GROUP).unwrap().expect("a snapshot survives");
            if rec.snapshot == Some(m1.clone()) {
                assert_eq!(got, (m1.clone(), data1.clone()));
                saw[0] += 1;
            } else {
                assert_eq!(got, (m2.clone(), data2.clone()), "write {n} {mode:?}");
                saw[1] += 1;
            }
            let names = after.list(&group_dir()).unwrap();
            assert!(names.iter().all(|n| !n.ends_with(".tmp")), "recovery removes temporaries: {names:?}");
        }
    }
    assert_eq!(saw, [2 * writes as usize, 0], "every write precedes the rename: the first snapshot stays");
    // Finished (renamed, directory synced) but not committed when the
    // process died: the newer complete snapshot wins at recovery.
    let (vfs, mut s) = prepare();
    let mut w = s.snapshot_writer(GROUP, m2.last_log_id).unwrap();
    w.write_chunk(&data2).unwrap();
    let _file = w.finish(&m2).unwrap();
    drop(s);
    let mut s = open(&vfs.crash(CrashMode::DropUnsynced));
    assert_eq!(s.open_group(GROUP).unwrap().snapshot, Some(m2.clone()));
    assert_eq!(s.read_snapshot(GROUP).unwrap(), Some((m2, data2)));
}

#[test]
fn remove_group_deletes_everything_durably_and_reopens_empty() {
    let vfs = MemVfs::new();
    let mut s = open(&vfs);
    s.open_group(GROUP).unwrap();
    s.open_group(GROUP + 1).unwrap();
    append(&mut s, 2, 1..=40);
    write_chunked(&mut s, &meta(2, 30), b"state", 2);
    s.compact(GROUP, LogId::new(2, 25)).unwrap();
    assert_eq!(s.groups_on_disk().unwrap(), vec![GROUP, GROUP + 1]);
    s.remove_group(GROUP).unwrap();
    assert!(matches!(s.log_state(GROUP), Err(StorageError::UnknownGroup(GROUP))));
    assert!(matches!(s.remove_group(GROUP), Err(StorageError::UnknownGroup(GROUP))));
    assert_eq!(s.groups_on_disk().unwrap(), vec![GROUP + 1]);
    // Durable: a crash right after loses nothing of the removal.
    let after = vfs.crash(CrashMode::DropUnsynced);
    assert!(after.list(&group_dir()).is_err(), "the directory is gone");
    let mut s = open(&after);
    let rec = s.open_group(GROUP).unwrap();
    assert_eq!((rec.last_log_id, rec.snapshot, rec.hard_state), (LogId::ZERO, None, HardState::default()));
    // The other group is untouched.
    assert_eq!(s.open_group(GROUP + 1).unwrap().last_log_id, LogId::ZERO);
}

#[test]
fn a_removal_cut_short_by_a_crash_is_finished_at_the_next_open() {
    let vfs = MemVfs::new();
    let mut s = open(&vfs);
    s.open_group(GROUP).unwrap();
    append(&mut s, 2, 1..=40);
    write_chunked(&mut s, &meta(2, 30), b"state", 2);
    let base = vfs.write_count();
    s.remove_group(GROUP).unwrap();
    assert_eq!(vfs.write_count() - base, 1, "one write: the marker");
    // A crash right after the marker became durable (before any delete):
    // marker present, files still there. Built by hand.
    let vfs = MemVfs::new();
    let mut s = open(&vfs);
    s.open_group(GROUP).unwrap();
    append(&mut s, 2, 1..=40);
    write_chunked(&mut s, &meta(2, 30), b"state", 2);
    drop(s);
    let marker = group_dir().join("removing");
    let f = vfs.create(&marker).unwrap();
    f.write_at(b"removing", 0).unwrap();
    f.sync_data().unwrap();
    vfs.sync_dir(&group_dir()).unwrap();
    let mut s = open(&vfs);
    assert_eq!(s.groups_on_disk().unwrap(), Vec::<u64>::new(), "a group being removed is not listed");
    let rec = s.open_group(GROUP).unwrap();
    assert_eq!((rec.last_log_id, rec.snapshot), (LogId::ZERO, None));
}

/// A leader snapshots everything it has (idle: applied = last): its log
/// stays, so the entries the core keeps before the snapshot for slow
/// followers can still be read.
#[test]
fn a_snapshot_of_the_last_entry_keeps_the_log() {
    let vfs = MemVfs::new();
    let mut s = open(&vfs);
    s.open_group(GROUP).unwrap();
    append(&mut s, 1, 1..=30);
    write_chunked(&mut s, &meta(1, 30), b"all of it", 4);
    let st = s.log_state(GROUP).unwrap();
    assert_eq!((st.first_index, st.last_written), (1, LogId::new(1, 30)));
    let mut out = Vec::new();
    s.entries(GROUP, 21, 31, u64::MAX, &mut out).unwrap();
    assert_eq!(out.len(), 10, "the kept tail before the snapshot is readable");
    append(&mut s, 1, 31..=32);
    assert_eq!(s.log_state(GROUP).unwrap().last_written, LogId::new(1, 32));
}
