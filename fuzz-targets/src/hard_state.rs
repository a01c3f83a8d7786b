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
//! clamped to the log), in either format version (1: no watermark; 2: with
//! the sync watermark) — or a corruption error: naming the hard-state file
//! when it is not exactly two slots long, when no slot is valid (both
//! damaged), or when no slot was ever written (zeroed: the group holds a
//! log, so its vote would be lost); and when the chosen watermark claims
//! entries the log does not hold (past its end, or with another term). After
//! recovery, a new hard state written on top survives a reopen (it must win
//! over whatever slot survived the damage).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tarn_core::{Entry, EntryPayload, GroupId, HardState, LogId};
use tarn_io::storage::hard_state::{
    seq_is_newer, HARD_STATE_FILE_BYTES, HARD_STATE_SLOT_BYTES, HARD_STATE_SLOT_STRIDE_BYTES,
};
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

const MAGIC_V1: &[u8; 8] = b"TARNHS01";
const MAGIC_V2: &[u8; 8] = b"TARNHS02";
const CRC_AT_V1: usize = 40;
const CRC_AT_V2: usize = 56;

fn hs_path() -> PathBuf {
    Path::new(DATA_DIR).join(format!("group-{GROUP:020}")).join("hardstate")
}

/// What an independent reading of one slot says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Empty,
    Valid(u64, HardState, LogId),
    Damaged,
}

/// Where the checksum of the slot at `b` sits, by its magic (version 2, or
/// else version 1).
fn crc_at(b: &[u8]) -> usize {
    if &b[..8] == MAGIC_V2 {
        CRC_AT_V2
    } else {
        CRC_AT_V1
    }
}

fn read_slot(file: &[u8], at: usize) -> Slot {
    let b = &file[at..at + HARD_STATE_SLOT_BYTES];
    if b.iter().all(|&x| x == 0) {
        return Slot::Empty;
    }
    let word = |k: usize| u64::from_le_bytes(b[k..k + 8].try_into().expect("8 bytes"));
    let crc_at = crc_at(b);
    let crc = u32::from_le_bytes(b[crc_at..crc_at + 4].try_into().expect("4 bytes"));
    if (&b[..8] != MAGIC_V1 && &b[..8] != MAGIC_V2) || crc != crc32c::crc32c(&b[..crc_at]) {
        return Slot::Damaged;
    }
    let vote = if word(24) == 0 { None } else { Some(word(24)) };
    let synced = if crc_at == CRC_AT_V2 { LogId::new(word(40), word(48)) } else { LogId::ZERO };
    Slot::Valid(word(8), HardState { term: word(16), vote, commit: word(32) }, synced)
}

fn reseal(file: &mut [u8], at: usize) {
    if file.len() >= at + HARD_STATE_SLOT_BYTES {
        let crc_at = crc_at(&file[at..]);
        let crc = crc32c::crc32c(&file[at..at + crc_at]);
        file[at + crc_at..at + crc_at + 4].copy_from_slice(&crc.to_le_bytes());
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
    let refused = |opened: Result<_, StorageError>, why: &str| match opened {
        Err(StorageError::Corruption { path: p, .. }) => {
            assert_eq!(p, path, "{why}: error names the wrong file")
        }
        other => panic!("{why}: must be a corruption error, got {other:?}"),
    };
    if file.len() as u64 != HARD_STATE_FILE_BYTES {
        refused(opened.map(drop), &format!("a {}-byte hard state file", file.len()));
        return;
    }
    let expected = match (read_slot(&file, 0), read_slot(&file, second)) {
        // Serial-number order (RFC 1982): the pair stays ordered across the
        // wrap from u64::MAX to 0.
        (Slot::Valid(sa, a, wa), Slot::Valid(sb, b, wb)) => {
            Some(if sa == sb || seq_is_newer(sa, sb) { (sa, a, wa) } else { (sb, b, wb) })
        }
        (Slot::Valid(s, h, w), _) | (_, Slot::Valid(s, h, w)) => Some((s, h, w)),
        // Never written, beside a log: zeroed, the vote lost.
        (Slot::Empty, _) | (_, Slot::Empty) => None,
        (Slot::Damaged, Slot::Damaged) => None,
    };
    let Some((seq, mut hs, synced)) = expected else {
        refused(opened.map(drop), "no valid slot");
        return;
    };
    // The log holds 1..=LOG_ENTRIES, all of term 1.
    if synced.index > 0 && (synced.index > LOG_ENTRIES || synced.term != 1) {
        match opened {
            Err(StorageError::Corruption { .. }) => return,
            other => panic!("watermark {synced} is not in the log, got {other:?}"),
        }
    }
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
