//! Crash and damage tests over MemVfs.
//!
//! `crash_at_every_write_torn_at_every_byte`: a fixed multi-group workload
//! (appends across segment rolls, a conflicting overwrite, hard state, a
//! snapshot with compaction) is run once to count its writes; then, for
//! every write n and every byte offset t, the process dies during write n
//! with only its first t bytes landing, and the disk is rebooted keeping the
//! unsynced data (an ordered prefix of writes, the last torn) or dropping it.
//! Recovery must succeed, return exactly a prefix of the log as it stood at
//! some moment, and include every entry acknowledged as durable.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use tarn_core::{Entry, EntryPayload, GroupId, HardState, LogId, Membership, SnapshotMeta};
use tarn_io::storage::record;
use tarn_io::storage::{FlushReport, Storage, StorageConfig, StorageError, WriteMode};
use tarn_io::vfs::{CrashMode, Faults, MemVfs, Vfs};

fn config() -> StorageConfig {
    config_with(WriteMode::Sync)
}

fn config_with(mode: WriteMode) -> StorageConfig {
    let mut c = StorageConfig::new("/data", 7, 1);
    c.segment_size_bytes = 512;
    c.max_entry_size_bytes = 256;
    // Small enough that flushes get padding records inside 512-byte segments.
    c.write_alignment_bytes = 128;
    c.write_mode = mode;
    c
}

fn entry(term: u64, index: u64, len: usize) -> Entry {
    let data: Vec<u8> = (0..len).map(|i| (index as usize * 7 + term as usize * 13 + i) as u8).collect();
    Entry { term, index, payload: EntryPayload::Normal(Bytes::from(data)) }
}

fn run(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    range.map(|i| entry(term, i, 20)).collect()
}

enum Op {
    Stage(GroupId, Vec<Entry>),
    Hs(GroupId, HardState),
    Flush,
    Snapshot(GroupId, LogId),
}

fn workload() -> Vec<Op> {
    use Op::*;
    vec![
        Stage(1, run(1..=4, 1)),
        Stage(2, run(1..=3, 1)),
        Hs(1, HardState { term: 1, vote: Some(1), commit: 0 }),
        Flush,
        Stage(1, run(5..=12, 1)),
        Flush,
        Stage(1, run(13..=15, 1)),
        Stage(2, run(4..=9, 1)),
        Flush,
        // A new leader's entries conflict from index 13 (mid-segment).
        Stage(1, run(13..=14, 2)),
        Hs(1, HardState { term: 2, vote: Some(2), commit: 3 }),
        Flush,
        Snapshot(2, LogId::new(1, 7)),
        Stage(2, run(10..=16, 1)),
        Stage(1, run(15..=26, 2)),
        Flush,
    ]
}

/// What the test knows: every state each group's log has been in, what was
/// acknowledged durable, and the newest durable hard state.
#[derive(Default)]
struct Model {
    logs: BTreeMap<GroupId, Vec<Entry>>,
    history: BTreeMap<GroupId, Vec<Vec<Entry>>>,
    acked: BTreeMap<GroupId, u64>,
    acked_hs: BTreeMap<GroupId, HardState>,
    snapshots: BTreeMap<GroupId, LogId>,
}

impl Model {
    fn stage(&mut self, g: GroupId, entries: &[Entry]) {
        let log = self.logs.entry(g).or_default();
        let first = entries[0].index;
        log.retain(|e| e.index < first);
        log.extend_from_slice(entries);
        let acked = self.acked.entry(g).or_default();
        *acked = (*acked).min(first - 1);
        self.history.entry(g).or_default().push(log.clone());
    }
}

fn execute(vfs: &MemVfs, model: &mut Model, mode: WriteMode) -> Result<(), StorageError> {
    for g in [1, 2] {
        model.history.entry(g).or_default().push(Vec::new());
    }
    let mut s = Storage::open(Arc::new(vfs.clone()), config_with(mode))?;
    for g in [1, 2] {
        s.open_group(g)?;
    }
    let mut report = FlushReport::default();
    for op in workload() {
        match op {
            Op::Stage(g, entries) => {
                // Asking to overwrite from an index releases the entries
                // after it, even if the call dies half way.
                model.stage(g, &entries);
                s.stage(g, &entries)?;
            }
            Op::Hs(g, hs) => s.stage_hard_state(g, hs)?,
            Op::Flush => {
                s.flush(&mut report);
                if let Some((_, e)) = report.failed.pop() {
                    return Err(e);
                }
                for p in &report.log {
                    model.acked.insert(p.group, p.up_to.index);
                }
                for &(g, hs) in &report.hard_states {
                    model.acked_hs.insert(g, hs);
                }
            }
            Op::Snapshot(g, upto) => {
                let meta = SnapshotMeta { last_log_id: upto, membership: Membership::new_voters([1]) };
                s.write_snapshot(g, &meta, b"snapshot")?;
                model.snapshots.insert(g, upto);
                s.compact(g, upto)?;
            }
        }
    }
    Ok(())
}

/// `acked_must_survive`: sync mode, or async mode after a process crash
/// (the OS kept the written pages).
fn check_recovery(after: &MemVfs, model: &Model, what: &str, acked_must_survive: bool) {
    let mut s = Storage::open(Arc::new(after.clone()), config()).unwrap_or_else(|e| panic!("{what}: {e}"));
    for g in [1, 2] {
        let rec = s.open_group(g).unwrap_or_else(|e| panic!("{what}: group {g}: {e}"));
        let acked = if acked_must_survive { model.acked.get(&g).copied().unwrap_or(0) } else { 0 };
        assert!(rec.last_log_id.index >= acked, "{what}: group {g} lost acked entries: {rec:?} < {acked}");
        let hs = if acked_must_survive {
            model.acked_hs.get(&g).copied().unwrap_or_default()
        } else {
            HardState::default()
        };
        assert!(
            (rec.hard_state.term, rec.hard_state.vote) >= (hs.term, hs.vote) || rec.hard_state.term > hs.term,
            "{what}: group {g} hard state {:?} older than acked {hs:?}",
            rec.hard_state
        );
        let mut got = Vec::new();
        let start = rec.first_index;
        s.entries(g, start, rec.last_log_id.index + 1, u64::MAX, &mut got)
            .unwrap_or_else(|e| panic!("{what}: group {g}: read: {e}"));
        let snap = rec.snapshot.as_ref().map_or(0, |m| m.last_log_id.index);
        let is_prefix_of_some_state = model.history[&g].iter().any(|state| {
            let want: Vec<&Entry> = state.iter().filter(|e| e.index >= start).collect();
            got.len() <= want.len() && got.iter().zip(&want).all(|(a, b)| a == *b)
        });
        let covered_by_snapshot = got.is_empty() && rec.last_log_id.index == snap;
        assert!(
            is_prefix_of_some_state || covered_by_snapshot,
            "{what}: group {g} recovered {:?} which is no prefix of any state",
            got.iter().map(Entry::log_id).collect::<Vec<_>>()
        );
    }
}

#[test]
fn crash_at_every_write_torn_at_every_byte() {
    crash_everywhere(WriteMode::Sync);
}

#[test]
fn crash_at_every_write_torn_at_every_byte_async_mode() {
    crash_everywhere(WriteMode::Async);
}

fn crash_everywhere(write_mode: WriteMode) {
    let sync = write_mode == WriteMode::Sync;
    let clean = MemVfs::new();
    let mut model = Model::default();
    execute(&clean, &mut model, write_mode).unwrap();
    check_recovery(&clean.crash(CrashMode::DropUnsynced), &model, "clean run", sync);
    check_recovery(&clean.crash(CrashMode::KeepUnsynced), &model, "clean run", true);
    let sizes = clean.write_sizes();
    assert!(sizes.len() > 20, "the workload exercises many writes ({})", sizes.len());
    let mut cases = 0;
    for (n, &size) in sizes.iter().enumerate() {
        for torn_bytes in 0..=size {
            let vfs = MemVfs::new();
            vfs.set_faults(Faults { die_at_write: Some((n as u64, torn_bytes)), ..Faults::default() });
            let mut model = Model::default();
            let result = execute(&vfs, &mut model, write_mode);
            assert!(result.is_err() && vfs.is_dead(), "write {n} must be reached");
            for mode in [CrashMode::KeepUnsynced, CrashMode::DropUnsynced] {
                let what = format!("died at write {n} of {size} bytes after {torn_bytes} bytes, {mode:?}");
                let must_survive = sync || mode == CrashMode::KeepUnsynced;
                check_recovery(&vfs.crash(mode), &model, &what, must_survive);
                cases += 1;
            }
        }
    }
    eprintln!("{} writes, {cases} crash images checked", sizes.len());
    assert!(cases > 1000, "{cases} crash images checked");
}

/// Builds group 1 with entries 1..=last (several segments), fully durable.
fn durable_log(last: u64) -> MemVfs {
    let vfs = MemVfs::new();
    let mut s = Storage::open(Arc::new(vfs.clone()), config()).unwrap();
    s.open_group(1).unwrap();
    s.stage(1, &run(1..=last, 1)).unwrap();
    let mut report = FlushReport::default();
    s.flush(&mut report);
    assert!(report.failed.is_empty());
    vfs
}

/// (segment path, offset) of every record of group 1, in index order.
fn record_positions(vfs: &MemVfs) -> Vec<(std::path::PathBuf, u64, usize)> {
    let dir = Path::new("/data/group-00000000000000000001");
    let mut out = Vec::new();
    for name in vfs.list(dir).unwrap().iter().filter(|n| n.ends_with(".seg")) {
        let path = dir.join(name);
        let bytes = vfs.file_bytes(&path).unwrap();
        let mut pos = 40; // segment header
        while let Some(view) = record::parse(&bytes[pos..], 1 << 20) {
            out.push((path.clone(), pos as u64, view.size_bytes));
            pos += view.size_bytes;
        }
    }
    out
}

fn reopen(vfs: &MemVfs) -> Result<tarn_io::storage::Recovered, StorageError> {
    let mut s = Storage::open(Arc::new(vfs.clone()), config())?;
    s.open_group(1)
}

#[test]
fn bit_flip_in_tail_truncates_but_in_middle_is_corruption() {
    let last = 30;
    let positions = record_positions(&durable_log(last));
    assert_eq!(positions.len(), last as usize);
    assert!(positions.first().unwrap().0 != positions.last().unwrap().0, "spans several segments");
    // Every bit of the last record: cut off as a torn tail.
    let (path, offset, size) = positions.last().unwrap().clone();
    for byte in 0..(24 + 20) {
        let vfs = durable_log(last);
        vfs.flip_bit(&path, offset + byte as u64, (byte % 8) as u8);
        let rec = reopen(&vfs).unwrap_or_else(|e| panic!("flip at +{byte}: {e}"));
        assert_eq!(rec.last_log_id, LogId::new(1, last - 1));
        assert_eq!(rec.truncated_tail, Some((path.clone(), offset)));
        // The repair is durable and the log appends again.
        let rec = reopen(&vfs.crash(CrashMode::DropUnsynced)).unwrap();
        assert_eq!((rec.last_log_id.index, rec.truncated_tail), (last - 1, None));
    }
    assert!(size >= 24);
    // Any record before the last one: corruption naming file and offset.
    for (i, (path, offset, _)) in positions[..positions.len() - 1].iter().enumerate() {
        let vfs = durable_log(last);
        vfs.flip_bit(path, offset + 30, 3);
        match reopen(&vfs) {
            Err(StorageError::Corruption { path: p, offset: o, reason }) => {
                assert_eq!((&p, o), (path, *offset), "record {}: {reason}", i + 1);
                let msg = StorageError::Corruption { path: p, offset: o, reason }.to_string();
                assert!(msg.contains(".seg") && msg.contains(&format!("offset {offset}")), "{msg}");
            }
            other => panic!("flip in record {} gave {other:?}", i + 1),
        }
    }
}

#[test]
fn index_gap_and_term_going_backwards_are_corruption() {
    // A missing middle segment: an index gap.
    let vfs = durable_log(30);
    let positions = record_positions(&vfs);
    let middle = positions[positions.len() / 2].0.clone();
    vfs.remove(&middle).unwrap();
    let err = reopen(&vfs).unwrap_err();
    assert!(matches!(err, StorageError::Corruption { .. }) && err.to_string().contains("index gap"), "{err}");

    // A record with a lower term appended after the last one.
    let vfs = durable_log(10);
    let positions = record_positions(&vfs);
    let (path, offset, size) = positions.last().unwrap().clone();
    let mut buf = Vec::new();
    record::encode(&Entry { term: 0, index: 11, payload: EntryPayload::Blank }, &mut buf);
    vfs.open(&path).unwrap().write_at(&buf, offset + size as u64).unwrap();
    let err = reopen(&vfs).unwrap_err();
    match &err {
        StorageError::Corruption { path: p, offset: o, reason } => {
            assert_eq!((p, *o), (&path, offset + size as u64));
            assert!(reason.contains("term goes backwards"), "{reason}");
        }
        other => panic!("{other:?}"),
    }

    // A record with a skipped index.
    let vfs = durable_log(10);
    let mut buf = Vec::new();
    record::encode(&entry(1, 12, 20), &mut buf);
    vfs.open(&path).unwrap().write_at(&buf, offset + size as u64).unwrap();
    let err = reopen(&vfs).unwrap_err();
    assert!(err.to_string().contains("index gap: record holds index 12, expected 11"), "{err}");
}

#[test]
fn damaged_hard_state_slot_falls_back_and_both_damaged_is_corruption() {
    let vfs = MemVfs::new();
    let mut s = Storage::open(Arc::new(vfs.clone()), config()).unwrap();
    s.open_group(1).unwrap();
    let mut report = FlushReport::default();
    for term in 1..=3 {
        s.stage_hard_state(1, HardState { term, vote: Some(term), commit: 0 }).unwrap();
        s.flush(&mut report);
    }
    let path = Path::new("/data/group-00000000000000000001/hardstate");
    // seq 3 is in slot 1 (offset 512); damage it: term 2 comes back.
    vfs.flip_bit(path, 512 + 17, 1);
    let rec = reopen(&vfs).unwrap();
    assert_eq!(rec.hard_state, HardState { term: 2, vote: Some(2), commit: 0 });
    vfs.flip_bit(path, 17, 1);
    let err = reopen(&vfs).unwrap_err();
    assert!(matches!(err, StorageError::Corruption { .. }) && err.to_string().contains("hardstate"), "{err}");
}
