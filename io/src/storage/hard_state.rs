//! Hard state (term, vote, commit) in two alternating checksummed slots.
//!
//! Each update writes the slot the previous update did *not* write, with a
//! sequence number one higher. A torn write can only damage the slot being
//! written, so the other still holds the previous value: recovery takes the
//! valid slot with the highest sequence number. No rename, no directory sync
//! on the update path.
//!
//! ```text
//! slot (at 0 and at HARD_STATE_SLOT_STRIDE_BYTES):
//! magic "TARNHS01" | seq u64 | term u64 | vote u64 (0 = none) | commit u64 | crc32c u32 | pad u32
//! ```

use tarn_core::HardState;

const MAGIC: &[u8; 8] = b"TARNHS01";
pub const HARD_STATE_SLOT_BYTES: usize = 48;
/// Slots live in different 512-byte sectors so one torn sector write cannot
/// touch both.
pub const HARD_STATE_SLOT_STRIDE_BYTES: u64 = 512;
pub const HARD_STATE_FILE_BYTES: u64 = 2 * HARD_STATE_SLOT_STRIDE_BYTES;

pub fn slot_offset(seq: u64) -> u64 {
    (seq % 2) * HARD_STATE_SLOT_STRIDE_BYTES
}

pub fn encode(seq: u64, hs: &HardState) -> [u8; HARD_STATE_SLOT_BYTES] {
    let mut b = [0u8; HARD_STATE_SLOT_BYTES];
    b[0..8].copy_from_slice(MAGIC);
    b[8..16].copy_from_slice(&seq.to_le_bytes());
    b[16..24].copy_from_slice(&hs.term.to_le_bytes());
    b[24..32].copy_from_slice(&hs.vote.unwrap_or(0).to_le_bytes());
    b[32..40].copy_from_slice(&hs.commit.to_le_bytes());
    let crc = crc32c::crc32c(&b[..40]);
    b[40..44].copy_from_slice(&crc.to_le_bytes());
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
    let crc = u32::from_le_bytes(b[40..44].try_into().expect("4 bytes"));
    if &b[0..8] != MAGIC || crc32c::crc32c(&b[..40]) != crc {
        return Slot::Damaged;
    }
    let vote = match u64_at(24) {
        0 => None,
        v => Some(v),
    };
    Slot::Valid { seq: u64_at(8), hard_state: HardState { term: u64_at(16), vote, commit: u64_at(32) } }
}

/// Picks the newest valid slot. `Err` when both slots are damaged: one torn
/// write cannot do that, so it is bit rot and the vote may be lost.
///
/// Sequence numbers compare as serial numbers (RFC 1982), so the pair
/// stays ordered across the wrap from `u64::MAX` to 0: the two slots always
/// differ by one, far inside half the number space. (The `hard_state` fuzz
/// target found that any fixed ceiling only moves the refusal by one.)
pub fn choose(a: Slot, b: Slot) -> Result<(u64, HardState), &'static str> {
    let chosen = match (a, b) {
        (Slot::Valid { seq: sa, hard_state: ha }, Slot::Valid { seq: sb, hard_state: hb }) => {
            if sa == sb || seq_is_newer(sa, sb) {
                (sa, ha)
            } else {
                (sb, hb)
            }
        }
        (Slot::Valid { seq, hard_state }, _) | (_, Slot::Valid { seq, hard_state }) => (seq, hard_state),
        // A damaged slot beside an empty one is the very first update, torn:
        // it was never acknowledged, so the state is still the initial one.
        (Slot::Empty, _) | (_, Slot::Empty) => (0, HardState::default()),
        (Slot::Damaged, Slot::Damaged) => return Err("both hard state slots are damaged"),
    };
    Ok(chosen)
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

    #[test]
    fn newest_valid_slot_wins_and_torn_slot_falls_back() {
        let old = HardState { term: 3, vote: Some(2), commit: 10 };
        let new = HardState { term: 4, vote: None, commit: 11 };
        let a = decode(&encode(7, &old));
        let b = decode(&encode(8, &new));
        assert_eq!(choose(a, b), Ok((8, new)));
        assert_eq!(choose(b, a), Ok((8, new)));
        let mut torn = encode(9, &new);
        torn[20] ^= 0x10;
        assert_eq!(decode(&torn), Slot::Damaged);
        assert_eq!(choose(decode(&torn), a), Ok((7, old)));
        assert_eq!(choose(Slot::Empty, Slot::Empty), Ok((0, HardState::default())));
        assert_eq!(choose(Slot::Damaged, Slot::Empty), Ok((0, HardState::default())));
        assert!(choose(Slot::Damaged, Slot::Damaged).is_err());
        // Across the wrap: MAX is newer than MAX - 1, and 0 newer than MAX.
        let at_max = decode(&encode(u64::MAX, &new));
        let before_max = decode(&encode(u64::MAX - 1, &old));
        assert_eq!(choose(before_max, at_max), Ok((u64::MAX, new)));
        let wrapped = decode(&encode(0, &old));
        assert_eq!(choose(at_max, wrapped), Ok((0, old)));
        assert_eq!(choose(wrapped, at_max), Ok((0, old)));
        assert_ne!(slot_offset(u64::MAX), slot_offset(0), "the wrap still alternates slots");
        assert_eq!(slot_offset(7), HARD_STATE_SLOT_STRIDE_BYTES);
        assert_eq!(slot_offset(8), 0);
    }
}
