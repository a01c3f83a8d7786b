//! Hard state (term, vote, commit) and the sync watermark, in two
//! alternating checksummed slots.
//!
//! Each update writes the slot the previous update did *not* write, with a
//! sequence number one higher. A torn write can only damage the slot being
//! written, so the other still holds the previous value: recovery takes the
//! valid slot with the highest sequence number. No rename, no directory sync
//! on the update path.
//!
//! The watermark (`synced`) is the last log position that was fdatasynced
//! *before* the slot holding it was written. Recovery may cut a damaged
//! record as a torn tail only above it: at or below it the record was
//! synced, so damage there is corruption (see `log::GroupLog::recover`).
//!
//! ```text
//! slot, format version 2 (at 0 and at HARD_STATE_SLOT_STRIDE_BYTES):
//! magic "TARNHS02" | seq u64 | term u64 | vote u64 (0 = none) | commit u64
//!   | synced_term u64 | synced_index u64 | crc32c u32 (of the bytes before it) | pad u32
//! format version 1 (older builds; read as watermark 0, never written):
//! magic "TARNHS01" | seq u64 | term u64 | vote u64 | commit u64 | crc32c u32 | pad u32
//! ```
//!
//! The magic's last two digits are the format version. A new group's file is
//! created holding a valid slot (sequence 0), so in a group written by this
//! build an all-zero slot pair is damage, never "not written yet".

use tarn_core::{HardState, LogId};

const MAGIC_V1: &[u8; 8] = b"TARNHS01";
const MAGIC_V2: &[u8; 8] = b"TARNHS02";
const CRC_AT_V1: usize = 40;
const CRC_AT_V2: usize = 56;
/// Bytes read and written per slot (a version 1 slot uses the first 48; the
/// rest of its stride was always zero).
pub const HARD_STATE_SLOT_BYTES: usize = 64;
/// Slots live in different 512-byte sectors so one torn sector write cannot
/// touch both.
pub const HARD_STATE_SLOT_STRIDE_BYTES: u64 = 512;
pub const HARD_STATE_FILE_BYTES: u64 = 2 * HARD_STATE_SLOT_STRIDE_BYTES;

pub fn slot_offset(seq: u64) -> u64 {
    (seq % 2) * HARD_STATE_SLOT_STRIDE_BYTES
}

/// A version 2 slot holding `hs` and the watermark `synced`.
pub fn encode(seq: u64, hs: &HardState, synced: LogId) -> [u8; HARD_STATE_SLOT_BYTES] {
    let mut b = [0u8; HARD_STATE_SLOT_BYTES];
    b[0..8].copy_from_slice(MAGIC_V2);
    b[8..16].copy_from_slice(&seq.to_le_bytes());
    b[16..24].copy_from_slice(&hs.term.to_le_bytes());
    b[24..32].copy_from_slice(&hs.vote.unwrap_or(0).to_le_bytes());
    b[32..40].copy_from_slice(&hs.commit.to_le_bytes());
    b[40..48].copy_from_slice(&synced.term.to_le_bytes());
    b[48..56].copy_from_slice(&synced.index.to_le_bytes());
    let crc = crc32c::crc32c(&b[..CRC_AT_V2]);
    b[CRC_AT_V2..CRC_AT_V2 + 4].copy_from_slice(&crc.to_le_bytes());
    b
}

/// What one slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Never written (all zeros).
    Empty,
    Valid {
        seq: u64,
        hard_state: HardState,
        /// The sync watermark (zero in a version 1 slot: it knew none).
        synced: LogId,
    },
    /// Written but does not check out: a torn write or bit rot.
    Damaged,
}

pub fn decode(b: &[u8]) -> Slot {
    if b.len() != HARD_STATE_SLOT_BYTES {
        return Slot::Damaged;
    }
    if b.iter().all(|&x| x == 0) {
        return Slot::Empty;
    }
    let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    let crc_at = match &b[0..8] {
        m if m == MAGIC_V2 => CRC_AT_V2,
        m if m == MAGIC_V1 => CRC_AT_V1,
        _ => return Slot::Damaged,
    };
    let crc = u32::from_le_bytes(b[crc_at..crc_at + 4].try_into().expect("4 bytes"));
    if crc32c::crc32c(&b[..crc_at]) != crc {
        return Slot::Damaged;
    }
    let vote = match u64_at(24) {
        0 => None,
        v => Some(v),
    };
    let synced = if crc_at == CRC_AT_V2 { LogId::new(u64_at(40), u64_at(48)) } else { LogId::ZERO };
    Slot::Valid {
        seq: u64_at(8),
        hard_state: HardState { term: u64_at(16), vote, commit: u64_at(32) },
        synced,
    }
}

/// The newest valid slot: its sequence number, hard state and watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chosen {
    pub seq: u64,
    pub hard_state: HardState,
    pub synced: LogId,
}

/// Picks the newest valid slot. `Ok(None)` when no slot was ever written
/// (both empty, or the first update torn beside an empty slot): the caller
/// decides whether that can be a new group. `Err` when both slots are
/// damaged: one torn write cannot do that, so it is bit rot and the vote may
/// be lost.
///
/// Sequence numbers compare as serial numbers (RFC 1982), so the pair
/// stays ordered across the wrap from `u64::MAX` to 0: the two slots always
/// differ by one, far inside half the number space. (The `hard_state` fuzz
/// target found that any fixed ceiling only moves the refusal by one.)
pub fn choose(a: Slot, b: Slot) -> Result<Option<Chosen>, &'static str> {
    let chosen = match (a, b) {
        (
            Slot::Valid { seq: sa, hard_state: ha, synced: wa },
            Slot::Valid { seq: sb, hard_state: hb, synced: wb },
        ) => {
            if sa == sb || seq_is_newer(sa, sb) {
                Chosen { seq: sa, hard_state: ha, synced: wa }
            } else {
                Chosen { seq: sb, hard_state: hb, synced: wb }
            }
        }
        (Slot::Valid { seq, hard_state, synced }, _) | (_, Slot::Valid { seq, hard_state, synced }) => {
            Chosen { seq, hard_state, synced }
        }
        // A damaged slot beside an empty one is the very first update of a
        // version 1 file, torn: it was never acknowledged.
        (Slot::Empty, _) | (_, Slot::Empty) => return Ok(None),
        (Slot::Damaged, Slot::Damaged) => return Err("both hard state slots are damaged"),
    };
    Ok(Some(chosen))
}

/// Whether sequence number `a` was written after `b` (RFC 1982 serial
/// number order; meaningful while they are less than 2^63 apart, and the
/// engine's are at most one apart).
pub fn seq_is_newer(a: u64, b: u64) -> bool {
    (a.wrapping_sub(b) as i64) > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(seq: u64, hard_state: HardState, synced: LogId) -> Result<Option<Chosen>, &'static str> {
        Ok(Some(Chosen { seq, hard_state, synced }))
    }

    #[test]
    fn newest_valid_slot_wins_and_torn_slot_falls_back() {
        let old = HardState { term: 3, vote: Some(2), commit: 10 };
        let new = HardState { term: 4, vote: None, commit: 11 };
        let (w_old, w_new) = (LogId::new(3, 9), LogId::new(4, 12));
        let a = decode(&encode(7, &old, w_old));
        let b = decode(&encode(8, &new, w_new));
        assert_eq!(choose(a, b), pick(8, new, w_new));
        assert_eq!(choose(b, a), pick(8, new, w_new));
        let mut torn = encode(9, &new, w_new);
        torn[20] ^= 0x10;
        assert_eq!(decode(&torn), Slot::Damaged);
        assert_eq!(choose(decode(&torn), a), pick(7, old, w_old));
        // A flipped watermark bit is damage too: the checksum covers it.
        let mut rotten_mark = encode(9, &new, w_new);
        rotten_mark[50] ^= 0x01;
        assert_eq!(decode(&rotten_mark), Slot::Damaged);
        assert_eq!(choose(Slot::Empty, Slot::Empty), Ok(None));
        assert_eq!(choose(Slot::Damaged, Slot::Empty), Ok(None));
        assert!(choose(Slot::Damaged, Slot::Damaged).is_err());
        // Across the wrap: MAX is newer than MAX - 1, and 0 newer than MAX.
        let at_max = decode(&encode(u64::MAX, &new, w_new));
        let before_max = decode(&encode(u64::MAX - 1, &old, w_old));
        assert_eq!(choose(before_max, at_max), pick(u64::MAX, new, w_new));
        let wrapped = decode(&encode(0, &old, w_old));
        assert_eq!(choose(at_max, wrapped), pick(0, old, w_old));
        assert_eq!(choose(wrapped, at_max), pick(0, old, w_old));
        assert_ne!(slot_offset(u64::MAX), slot_offset(0), "the wrap still alternates slots");
        assert_eq!(slot_offset(7), HARD_STATE_SLOT_STRIDE_BYTES);
        assert_eq!(slot_offset(8), 0);
    }

    /// A slot written by an older build (format version 1) still reads, as
    /// watermark 0, and a newer version 2 slot beside it wins by sequence.
    #[test]
    fn version_1_slots_read_as_watermark_zero() {
        let hs = HardState { term: 5, vote: Some(3), commit: 7 };
        let mut v1 = [0u8; HARD_STATE_SLOT_BYTES];
        v1[0..8].copy_from_slice(MAGIC_V1);
        v1[8..16].copy_from_slice(&4u64.to_le_bytes());
        v1[16..24].copy_from_slice(&hs.term.to_le_bytes());
        v1[24..32].copy_from_slice(&3u64.to_le_bytes());
        v1[32..40].copy_from_slice(&hs.commit.to_le_bytes());
        let crc = crc32c::crc32c(&v1[..CRC_AT_V1]);
        v1[CRC_AT_V1..CRC_AT_V1 + 4].copy_from_slice(&crc.to_le_bytes());
        let old = decode(&v1);
        assert_eq!(old, Slot::Valid { seq: 4, hard_state: hs, synced: LogId::ZERO });
        assert_eq!(choose(old, Slot::Empty), pick(4, hs, LogId::ZERO));
        let newer = HardState { term: 6, ..hs };
        let v2 = decode(&encode(5, &newer, LogId::new(5, 40)));
        assert_eq!(choose(old, v2), pick(5, newer, LogId::new(5, 40)));
        v1[17] ^= 1;
        assert_eq!(decode(&v1), Slot::Damaged);
    }
}
