//! `log_recovery`: appends, overwrites, truncations and flushes on the real
//! storage engine over `MemVfs`, optionally a torn write or an `EIO`, then a
//! crash (unsynced data dropped or kept), then arbitrary damage to the
//! segment files (bit flips, overwrites, zeroed ranges, truncation, garbage
//! appended), then recovery. Snapshots with compaction are interleaved
//! (a snapshot at an acknowledged entry, then `compact` drops the segments it
//! covers), so recovery also runs on a log that starts after index 1.
//!
//! Properties, after recovery:
//! - it returns a log or a corruption error naming an existing file and an
//!   offset inside it — never a panic, never another kind of error;
//! - every recovered entry is one that was staged at that index (a damaged
//!   record never comes back as an entry), indexes are contiguous and terms
//!   never go down;
//! - every entry acknowledged durable (a flush reported it persisted and no
//!   later truncation removed it) above the durable snapshot whose record
//!   lies wholly before the first damaged byte is recovered unchanged;
//! - the durable snapshot (or one written later, if a fault hit while it was
//!   written) is recovered; the log then reaches at least its index, and the
//!   first readable index is at most one past it (no gap between snapshot
//!   and log);
//! - recovery is idempotent: opening the repaired directory again gives the
//!   same log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use tarn_core::{Entry, EntryPayload, GroupId, Index, LogId, Membership, SnapshotMeta, Term};
use tarn_io::storage::record;
use tarn_io::storage::segment::{self, SEGMENT_HEADER_BYTES};
use tarn_io::storage::{FlushReport, Storage, StorageConfig, StorageError, MAX_ENTRY_SIZE_LIMIT_BYTES};
use tarn_io::vfs::{CrashMode, Faults, MemVfs, Vfs};

pub const GROUP: GroupId = 7;
pub const DATA_DIR: &str = "/data";
/// Small segments so a short run spans several files.
pub const SEGMENT_SIZE_BYTES: u64 = 1024;
pub const MAX_ENTRY_SIZE_BYTES: u32 = 200;
/// Bounds on the work one input can ask for.
pub const OPS_MAX: usize = 64;
pub const ENTRIES_PER_APPEND_MAX: u64 = 8;
pub const DAMAGES_MAX: usize = 8;
pub const GARBAGE_MAX_BYTES: usize = 96;

#[derive(Arbitrary, Debug, Clone)]
pub enum LogOp {
    /// Appends `1 + count % 8` entries; `rewind > 0` first steps back that
    /// many entries (a new leader overwriting a suffix, with a higher term).
    Append {
        rewind: u8,
        count: u8,
        size: u8,
        new_term: bool,
        membership: bool,
    },
    Flush,
    HardState {
        term: u8,
        commit: u8,
    },
    /// Truncates the last `1 + back % 16` entries (never below the snapshot).
    Truncate {
        back: u8,
    },
    /// Writes a snapshot at the acknowledged entry `back % acked` before the
    /// last acknowledged one (never below the previous snapshot), then
    /// compacts the log up to it.
    Compact {
        back: u8,
    },
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Fault {
    /// The process dies during the `nth` write from now, `bytes` of it landing.
    DieAtWrite {
        nth: u8,
        bytes: u16,
    },
    FailWrite {
        nth: u8,
    },
    FailSync {
        nth: u8,
    },
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Damage {
    FlipBit { file: u8, offset: u16, bit: u8 },
    Overwrite { file: u8, offset: u16, bytes: Vec<u8> },
    Zero { file: u8, offset: u16, len: u16 },
    Truncate { file: u8, len: u16 },
    AppendGarbage { file: u8, bytes: Vec<u8> },
}

#[derive(Debug, Clone)]
pub struct LogInput {
    pub keep_unsynced: bool,
    pub fault: Option<Fault>,
    pub damage: Vec<Damage>,
    /// Last, so it takes the rest of the input (a long op sequence).
    pub ops: Vec<LogOp>,
}

/// What one run reached, for tests that check the corpus goes deep.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reached {
    pub acked_entries: u64,
    pub segments: usize,
    pub damaged_files: usize,
    pub recovered_entries: u64,
    pub torn_tail_repaired: bool,
    pub corruption_reported: bool,
    /// Index of the snapshot recovery found (0: none).
    pub snapshot_index: Index,
    /// Recovery's first readable index was above 1 (compaction happened).
    pub compacted: bool,
}

pub fn log_recovery(data: &[u8]) {
    if let Some(input) = parse(data) {
        run(&input);
    }
}

/// The structured input `data` encodes (`None`: too short to say).
pub fn parse(data: &[u8]) -> Option<LogInput> {
    let mut u = Unstructured::new(data);
    let keep_unsynced = bool::arbitrary(&mut u).ok()?;
    let fault = Option::<Fault>::arbitrary(&mut u).ok()?;
    let damage = Vec::<Damage>::arbitrary(&mut u).ok()?;
    let ops = crate::elements_until_empty(&mut u, OPS_MAX);
    Some(LogInput { keep_unsynced, fault, damage, ops })
}

fn config() -> StorageConfig {
    let mut config = StorageConfig::new(DATA_DIR, 1, 1);
    config.segment_size_bytes = SEGMENT_SIZE_BYTES;
    config.max_entry_size_bytes = MAX_ENTRY_SIZE_BYTES;
    config
}

fn group_dir() -> PathBuf {
    Path::new(DATA_DIR).join(format!("group-{GROUP:020}"))
}

/// The log as the caller of the engine sees it.
struct Model {
    /// Staged entries, index `i` at `log[i - 1]`.
    log: Vec<Entry>,
    /// Length of the prefix acknowledged durable.
    acked: u64,
    /// Every entry ever staged, by index.
    ever: BTreeMap<Index, Vec<Entry>>,
    max_term: Term,
    /// The snapshot `write_snapshot` reported durable.
    snapshot: Option<SnapshotMeta>,
    /// A snapshot whose write failed part way (it may or may not be durable).
    snapshot_maybe: Option<SnapshotMeta>,
}

impl Model {
    fn last(&self) -> LogId {
        self.log.last().map_or(LogId::ZERO, Entry::log_id)
    }

    /// Entries at or below this index are covered by the durable snapshot:
    /// never overwritten (they were committed) and possibly compacted away.
    fn floor(&self) -> Index {
        self.snapshot.as_ref().map_or(0, |m| m.last_log_id.index)
    }
}

fn payload(index: Index, size: u8, membership: bool) -> EntryPayload {
    if membership {
        return EntryPayload::Membership(Membership::new_voters(1..=(1 + index % 5)));
    }
    match size % 8 {
        0 => EntryPayload::Blank,
        _ => {
            let len = size as usize % (MAX_ENTRY_SIZE_BYTES as usize - 8);
            EntryPayload::Normal(Bytes::from(
                (0..len).map(|k| (index as usize * 31 + k) as u8).collect::<Vec<_>>(),
            ))
        }
    }
}

pub fn run(input: &LogInput) -> Reached {
    let mut reached = Reached::default();
    let vfs = MemVfs::new();
    let mut storage = Storage::open(Arc::new(vfs.clone()), config()).expect("a fresh MemVfs opens");
    storage.open_group(GROUP).expect("a new group opens");
    let mut model = Model {
        log: Vec::new(),
        acked: 0,
        ever: BTreeMap::new(),
        max_term: 1,
        snapshot: None,
        snapshot_maybe: None,
    };
    if let Some(fault) = &input.fault {
        let base = vfs.write_count();
        let faults = match *fault {
            Fault::DieAtWrite { nth, bytes } => {
                Faults { die_at_write: Some((base + nth as u64 % 32, bytes as usize)), ..Faults::default() }
            }
            Fault::FailWrite { nth } => {
                Faults { fail_write: Some(base + nth as u64 % 32), ..Faults::default() }
            }
            Fault::FailSync { nth } => {
                Faults { fail_sync: Some(vfs.sync_count() + nth as u64 % 32), ..Faults::default() }
            }
        };
        vfs.set_faults(faults);
    }
    let mut report = FlushReport::default();
    for op in input.ops.iter().take(OPS_MAX) {
        if !apply_op(&mut storage, &mut model, op, &mut report) {
            break;
        }
    }
    reached.acked_entries = model.acked;
    drop(storage);

    let mode = if input.keep_unsynced { CrashMode::KeepUnsynced } else { CrashMode::DropUnsynced };
    let disk = vfs.crash(mode);
    let dir = group_dir();
    let segments = segment_files(&disk, &dir);
    reached.segments = segments.len();
    // Where each acknowledged entry's record ends, before any damage.
    let mut record_end: BTreeMap<Index, (usize, u64)> = BTreeMap::new();
    let before: Vec<Vec<u8>> =
        segments.iter().map(|(_, p)| disk.file_bytes(p).expect("listed file exists")).collect();
    for (position, ((first, _), bytes)) in segments.iter().zip(&before).enumerate() {
        let mut at = SEGMENT_HEADER_BYTES as usize;
        let mut index = *first;
        while at < bytes.len() {
            let Some(view) = record::parse(&bytes[at..], MAX_ENTRY_SIZE_LIMIT_BYTES) else { break };
            if view.index != index {
                break;
            }
            at += view.size_bytes;
            record_end.insert(index, (position, at as u64));
            index += 1;
        }
    }
    for damage in input.damage.iter().take(DAMAGES_MAX) {
        apply_damage(&disk, &segments, damage);
    }
    // The first damaged byte of each file (None: unchanged).
    let first_damage: Vec<Option<u64>> = segments
        .iter()
        .zip(&before)
        .map(|((_, path), old)| {
            let new = disk.file_bytes(path).expect("damage never removes a file");
            let common = old.len().min(new.len());
            match (0..common).find(|&k| old[k] != new[k]) {
                Some(k) => Some(k as u64),
                None if old.len() != new.len() => Some(common as u64),
                None => None,
            }
        })
        .collect();
    reached.damaged_files = first_damage.iter().filter(|d| d.is_some()).count();
    let damage_start =
        first_damage.iter().enumerate().find_map(|(position, d)| d.map(|offset| (position, offset)));
    // Acknowledged entries above the snapshot whose record lies wholly
    // before the first damage: 1..=protected are owed (the snapshot covers
    // the rest of the prefix).
    let floor = model.floor();
    let protected: u64 = floor
        + (floor + 1..=model.acked)
            .take_while(|index| match (record_end.get(index), damage_start) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(&(position, end)), Some((damaged, offset))) => {
                    position < damaged || (position == damaged && end <= offset)
                }
            })
            .count() as u64;
    // Every acknowledged entry above the snapshot is on disk and parses,
    // before damage.
    assert!(
        (floor + 1..=model.acked).all(|index| record_end.contains_key(&index)),
        "acknowledged entries {}..={} are not all on disk after the crash (found {:?})",
        floor + 1,
        model.acked,
        record_end.keys().last()
    );

    let recovered = open_and_read(&disk);
    match recovered {
        Ok((rec, entries)) => {
            reached.torn_tail_repaired = rec.truncated_tail.is_some();
            reached.recovered_entries = entries.len() as u64;
            reached.compacted = rec.first_index > 1;
            let snapshot = rec.snapshot.clone();
            reached.snapshot_index = snapshot.as_ref().map_or(0, |m| m.last_log_id.index);
            let expected = [&model.snapshot, &model.snapshot_maybe];
            match (&snapshot, &model.snapshot) {
                (None, None) => {}
                (None, Some(owed)) => panic!("the durable snapshot {owed:?} was not recovered"),
                (Some(found), _) => assert!(
                    expected.iter().any(|m| m.as_ref() == Some(found)),
                    "recovered snapshot {found:?} was never written (durable: {:?})",
                    model.snapshot
                ),
            }
            if let Some(meta) = &snapshot {
                let s = meta.last_log_id;
                assert!(
                    rec.first_index <= s.index + 1,
                    "gap between the snapshot at {s} and the first log index {}",
                    rec.first_index
                );
                assert!(
                    rec.last_log_id.index >= s.index,
                    "the log ends at {} below the snapshot at {s}",
                    rec.last_log_id
                );
            }
            assert!(
                rec.last_log_id.index >= protected,
                "recovery dropped acknowledged entries: log ends at {}, but 1..={protected} were durable and \
                 undamaged (damage at {damage_start:?}, input {input:?})",
                rec.last_log_id.index
            );
            let mut previous_term = 0;
            for (k, entry) in entries.iter().enumerate() {
                assert_eq!(entry.index, rec.first_index + k as u64, "recovered indexes are not contiguous");
                assert!(entry.term >= previous_term, "recovered terms go down at {}", entry.index);
                previous_term = entry.term;
                let known = model.ever.get(&entry.index).is_some_and(|all| all.contains(entry));
                assert!(known, "recovered entry {entry:?} was never written: a damaged record came back");
                if entry.index <= protected {
                    assert_eq!(entry, &model.log[entry.index as usize - 1], "acknowledged entry changed");
                }
            }
            if let Some(last) = entries.last() {
                assert_eq!(last.log_id(), rec.last_log_id);
            }
            let again = open_and_read(&disk).expect("a repaired log opens again");
            assert_eq!(again.1, entries, "reopening the repaired log changed it");
            assert_eq!(again.0.last_log_id, rec.last_log_id);
            assert_eq!(again.0.snapshot, rec.snapshot);
            assert_eq!(again.0.truncated_tail, None, "a repaired tail is found torn again");
        }
        Err(StorageError::Corruption { path, offset, reason }) => {
            reached.corruption_reported = true;
            let len = disk.file_bytes(&path).map(|b| b.len() as u64);
            let len =
                len.unwrap_or_else(|| panic!("corruption names a missing file {}: {reason}", path.display()));
            assert!(
                offset <= len,
                "corruption offset {offset} is past the end of {} ({len} bytes)",
                path.display()
            );
        }
        Err(other) => panic!("recovery failed with a non-corruption error: {other}"),
    }
    reached
}

/// Applies one op; false once the engine has failed (stop issuing ops).
fn apply_op(storage: &mut Storage, model: &mut Model, op: &LogOp, report: &mut FlushReport) -> bool {
    match *op {
        LogOp::Append { rewind, count, size, new_term, membership } => {
            let last = model.last().index;
            let rewind = (rewind as u64) % (last - model.floor() + 1);
            let start = last + 1 - rewind;
            if rewind > 0 || new_term {
                model.max_term += 1;
            }
            let term = model.max_term;
            let n = 1 + count as u64 % ENTRIES_PER_APPEND_MAX;
            let entries: Vec<Entry> = (start..start + n)
                .map(|index| Entry {
                    term,
                    index,
                    payload: payload(index, size, membership && index == start),
                })
                .collect();
            for entry in &entries {
                model.ever.entry(entry.index).or_default().push(entry.clone());
            }
            // An overwrite truncates the old suffix first: even if staging
            // fails part way, those entries are no longer owed to anyone.
            model.acked = model.acked.min(start - 1);
            match storage.stage(GROUP, &entries) {
                Ok(()) => {
                    model.log.truncate(start as usize - 1);
                    model.log.extend(entries);
                    true
                }
                Err(_) => false,
            }
        }
        LogOp::Flush => {
            storage.flush(report);
            for persisted in &report.log {
                assert_eq!(persisted.group, GROUP);
                let up_to = persisted.up_to;
                assert!(up_to.index <= model.log.len() as u64, "persisted past the staged log: {up_to}");
                if up_to.index > 0 {
                    assert_eq!(model.log[up_to.index as usize - 1].log_id(), up_to, "persisted id mismatch");
                }
                model.acked = model.acked.max(up_to.index);
            }
            report.failed.is_empty()
        }
        LogOp::HardState { term, commit } => {
            let hs = tarn_core::HardState { term: term as u64, vote: Some(1), commit: commit as u64 };
            storage.stage_hard_state(GROUP, hs).is_ok()
        }
        LogOp::Truncate { back } => {
            let last = model.last().index;
            if last == 0 {
                return true;
            }
            let from = last + 1 - (1 + back as u64 % 16).min(last);
            if from <= model.floor() {
                return true;
            }
            model.acked = model.acked.min(from - 1);
            match storage.truncate_suffix(GROUP, from) {
                Ok(()) => {
                    model.log.truncate(from as usize - 1);
                    true
                }
                Err(_) => false,
            }
        }
        LogOp::Compact { back } => {
            let floor = model.floor();
            if model.acked <= floor {
                return true;
            }
            let index = model.acked - back as u64 % (model.acked - floor);
            debug_assert!(index > floor && index <= model.acked);
            let last_log_id = model.log[index as usize - 1].log_id();
            let membership = Membership::new_voters(1..=(1 + index % 3));
            let meta = SnapshotMeta { last_log_id, membership };
            let data: Vec<u8> = (0..index % 40).map(|k| (k * 7 + index) as u8).collect();
            match storage.write_snapshot(GROUP, &meta, &data) {
                Ok(()) => {
                    model.snapshot = Some(meta);
                    model.snapshot_maybe = None;
                }
                Err(_) => {
                    model.snapshot_maybe = Some(meta);
                    return false;
                }
            }
            storage.compact(GROUP, last_log_id).is_ok()
        }
    }
}

/// Segment files of the group, ascending by first index.
fn segment_files(disk: &MemVfs, dir: &Path) -> Vec<(Index, PathBuf)> {
    let mut out: Vec<(Index, PathBuf)> = match disk.list(dir) {
        Ok(names) => {
            names.iter().filter_map(|n| segment::parse_name(n).map(|first| (first, dir.join(n)))).collect()
        }
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

fn apply_damage(disk: &MemVfs, segments: &[(Index, PathBuf)], damage: &Damage) {
    if segments.is_empty() {
        return;
    }
    let file = match damage {
        Damage::FlipBit { file, .. }
        | Damage::Overwrite { file, .. }
        | Damage::Zero { file, .. }
        | Damage::Truncate { file, .. }
        | Damage::AppendGarbage { file, .. } => *file,
    };
    let path = &segments[file as usize % segments.len()].1;
    let len = disk.file_bytes(path).map_or(0, |b| b.len() as u64);
    if len == 0 {
        return;
    }
    let handle = disk.open(path).expect("segment opens");
    match damage {
        Damage::FlipBit { offset, bit, .. } => disk.flip_bit(path, *offset as u64 % len, bit % 8),
        Damage::Overwrite { offset, bytes, .. } => {
            let bytes = &bytes[..bytes.len().min(GARBAGE_MAX_BYTES)];
            let at = *offset as u64 % len;
            let keep = bytes.len().min((len - at) as usize);
            handle.write_at(&bytes[..keep], at).expect("MemVfs write");
        }
        Damage::Zero { offset, len: zero_len, .. } => {
            let at = *offset as u64 % len;
            let n = (*zero_len as u64).min(len - at) as usize;
            handle.write_at(&vec![0u8; n], at).expect("MemVfs write");
        }
        Damage::Truncate { len: new_len, .. } => {
            handle.truncate(*new_len as u64 % len).expect("MemVfs truncate");
        }
        Damage::AppendGarbage { bytes, .. } => {
            let bytes = &bytes[..bytes.len().min(GARBAGE_MAX_BYTES)];
            handle.write_at(bytes, len).expect("MemVfs write");
        }
    }
}

type Opened = (tarn_io::storage::Recovered, Vec<Entry>);

fn open_and_read(disk: &MemVfs) -> Result<Opened, StorageError> {
    let mut storage = Storage::open(Arc::new(disk.clone()), config())?;
    let rec = storage.open_group(GROUP)?;
    let mut entries = Vec::new();
    if rec.last_log_id.index >= rec.first_index {
        storage
            .entries(GROUP, rec.first_index, rec.last_log_id.index + 1, u64::MAX, &mut entries)
            .expect("recovered entries read back");
    }
    Ok((rec, entries))
}
