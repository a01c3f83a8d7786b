//! `hard_state`: arbitrary bytes as the two-slot hard-state file of a group,
//! then the real recovery (`Storage::open_group` over `MemVfs`).
//!
//! Input: a flag byte, then the file. Flag bits 0 and 1 re-seal slot 0 / 1
//! (recompute its checksum), so the fuzzer also explores semantically odd
//! but well-formed slots (equal or extreme sequence numbers, vote 0, commit
//! past the log), not only checksum failures.
//!
//! Properties: recovery yields exactly what an independent reading of the
//! slots says — the valid slot with the highest sequence number (commit
//! clamped to the log), the initial state when a slot was never written, or
//! a corruption error naming the hard-state file (both slots damaged, or a
//! sequence number of `u64::MAX`, which cannot be followed) — or, for a file too short
//! to hold both slots, a read error naming it. After recovery, a new hard
//! state written on top survives a reopen (it must win over whatever slot
//! survived the damage).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tarn_core::{Entry, EntryPayload, GroupId, HardState};
use tarn_io::storage::hard_state::{seq_is_newer, HARD_STATE_SLOT_BYTES, HARD_STATE_SLOT_STRIDE_BYTES};
use tarn_io::storage::{FlushReport, Storage, StorageConfig, StorageError};
use tarn_io::vfs::{MemVfs, Vfs};

pub const GROUP: GroupId = 3;
pub const DATA_DIR: &str = "/data";
/// Entries in the log under the hard state (commit is clamped to it).
pub const LOG_ENTRIES: u64 = 5;
pub const SEGMENT_SIZE_BYTES: u64 = 4096;
pub const MAX_ENTRY_SIZE_BYTES: u32 = 256;
/// Longest hard-state file the target builds (the real one is 1 KiB).
pub const FILE_MAX_BYTES: usize = 4096;

const MAGIC: &[u8; 8] = b"TARNHS01";
const CRC_AT: usize = 40;

fn hs_path() -> PathBuf {
    Path::new(DATA_DIR).join(format!("group-{GROUP:020}")).join("hardstate")
}

/// What an independent reading of one slot says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Empty,
    Valid(u64, HardState),
    Damaged,
}

fn read_slot(file: &[u8], at: usize) -> Slot {
    let b = &file[at..at + HARD_STATE_SLOT_BYTES];
    if b.iter().all(|&x| x == 0) {
        return Slot::Empty;
    }
    let word = |k: usize| u64::from_le_bytes(b[k..k + 8].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(b[CRC_AT..CRC_AT + 4].try_into().expect("4 bytes"));
    if &b[..8] != MAGIC || crc != crc32c::crc32c(&b[..CRC_AT]) {
        return Slot::Damaged;
    }
    let vote = if word(24) == 0 { None } else { Some(word(24)) };
    Slot::Valid(word(8), HardState { term: word(16), vote, commit: word(32) })
}

fn reseal(file: &mut [u8], at: usize) {
    if file.len() >= at + HARD_STATE_SLOT_BYTES {
        let crc = crc32c::crc32c(&file[at..at + CRC_AT]);
        file[at + CRC_AT..at + CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Small segments: the engine creates (and recovery scans) the first
/// segment at open, and the default 64 MiB one would cost ~1 s per input.
pub fn config() -> StorageConfig {
    let mut config = StorageConfig::new(DATA_DIR, 1, 1);
    config.segment_size_bytes = SEGMENT_SIZE_BYTES;
    config.max_entry_size_bytes = MAX_ENTRY_SIZE_BYTES;
    config
}

/// A disk holding the group with `LOG_ENTRIES` entries and a hard state.
fn prepared_disk() -> MemVfs {
    let vfs = MemVfs::new();
    let mut storage = Storage::open(Arc::new(vfs.clone()), config()).expect("fresh disk opens");
    storage.open_group(GROUP).expect("new group opens");
    let entries: Vec<Entry> =
        (1..=LOG_ENTRIES).map(|index| Entry { term: 1, index, payload: EntryPayload::Blank }).collect();
    storage.stage(GROUP, &entries).expect("stage");
    storage.stage_hard_state(GROUP, HardState { term: 1, vote: Some(1), commit: 2 }).expect("stage hs");
    let mut report = FlushReport::default();
    storage.flush(&mut report);
    assert!(report.failed.is_empty());
    vfs
}

pub fn hard_state(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else { return };
    let mut file = rest[..rest.len().min(FILE_MAX_BYTES)].to_vec();
    if flags & 1 != 0 {
        reseal(&mut file, 0);
    }
    if flags & 2 != 0 {
        reseal(&mut file, HARD_STATE_SLOT_STRIDE_BYTES as usize);
    }
    let vfs = prepared_disk();
    let path = hs_path();
    let handle = vfs.open(&path).expect("hard state file exists");
    handle.truncate(0).expect("truncate");
    handle.write_at(&file, 0).expect("write");
    handle.sync_data().expect("sync");
    drop(handle);

    let mut storage = Storage::open(Arc::new(vfs.clone()), config()).expect("node directory is intact");
    let opened = storage.open_group(GROUP);
    let second = HARD_STATE_SLOT_STRIDE_BYTES as usize;
    if file.len() < second + HARD_STATE_SLOT_BYTES {
        match opened {
            Err(StorageError::Io { path: p, .. }) | Err(StorageError::Corruption { path: p, .. }) => {
                assert_eq!(p, path, "error names the wrong file");
            }
            other => panic!("a {}-byte hard state file must be refused, got {other:?}", file.len()),
        }
        return;
    }
    let expected = match (read_slot(&file, 0), read_slot(&file, second)) {
        // Serial-number order (RFC 1982): the pair stays ordered across the
        // wrap from u64::MAX to 0.
        (Slot::Valid(sa, a), Slot::Valid(sb, b)) => {
            Some(if sa == sb || seq_is_newer(sa, sb) { (sa, a) } else { (sb, b) })
        }
        (Slot::Valid(s, h), _) | (_, Slot::Valid(s, h)) => Some((s, h)),
        (Slot::Empty, _) | (_, Slot::Empty) => Some((0, HardState::default())),
        (Slot::Damaged, Slot::Damaged) => None,
    };
    // No valid slot (both damaged): refused as corruption of the hard-state file.
    let Some((seq, mut hs)) = expected else {
        match opened {
            Err(StorageError::Corruption { path: p, .. }) => assert_eq!(p, path),
            other => panic!("{expected:?} must be a corruption error, got {other:?}"),
        }
        return;
    };
    hs.commit = hs.commit.min(LOG_ENTRIES);
    let recovered = opened.unwrap_or_else(|e| panic!("slot {seq} holds {hs:?}, but recovery failed: {e}"));
    assert_eq!(recovered.hard_state, hs, "recovery did not pick the newest valid slot (seq {seq})");

    // An update on top of whatever survived must be what the next open sees,
    // including when its sequence number wraps past u64::MAX.
    let update = HardState { term: hs.term.saturating_add(1), vote: Some(2), commit: hs.commit };
    storage.stage_hard_state(GROUP, update).expect("stage");
    let mut report = FlushReport::default();
    storage.flush(&mut report);
    assert!(report.failed.is_empty(), "flush failed: {:?}", report.failed);
    drop(storage);
    let mut storage = Storage::open(Arc::new(vfs), config()).expect("reopen");
    let again = storage.open_group(GROUP).expect("reopen group");
    assert_eq!(
        again.hard_state, update,
        "the hard state written after recovery was lost (old slot seq {seq})"
    );
}
