//! Segment files: `<first_index>.seg`, fixed size, preallocated, starting with
//! a checksummed header that names the group and the first index.
//!
//! ```text
//! magic "TARNSEG1" | group u64 | first_index u64 | prev_term u64 | version u32 | crc32c u32 over 0..36
//! records (see `record`), zero-filled to the segment size
//! ```
//! A segment is created under a temporary name, sized, given its header,
//! synced, renamed and its directory synced: a `.seg` name always holds a
//! complete header, so a bad header is corruption, never a torn creation.

use tarn_core::{GroupId, Index, Term};

/// Header size; records start here (a multiple of the record alignment).
pub const SEGMENT_HEADER_BYTES: u64 = 40;
const MAGIC: &[u8; 8] = b"TARNSEG1";
const VERSION: u32 = 1;
pub const SEGMENT_SUFFIX: &str = ".seg";
pub const SEGMENT_TMP_SUFFIX: &str = ".seg.tmp";
/// Suffix of a compacted segment renamed out of the log's way, to be
/// unlinked off the storage thread (see `Storage::take_deletions`); removed
/// at open if a crash came first.
pub const SEGMENT_DELETED_SUFFIX: &str = ".seg.deleted";

pub fn file_name(first_index: Index) -> String {
    format!("{first_index:020}{SEGMENT_SUFFIX}")
}

pub fn parse_name(name: &str) -> Option<Index> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// `prev_term` is the term of entry `first_index - 1`, so that a log whose
/// older segments were compacted away still knows the term at its base.
pub fn encode_header(
    group: GroupId,
    first_index: Index,
    prev_term: Term,
) -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES as usize];
    h[0..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&group.to_le_bytes());
    h[16..24].copy_from_slice(&first_index.to_le_bytes());
    h[24..32].copy_from_slice(&prev_term.to_le_bytes());
    h[32..36].copy_from_slice(&VERSION.to_le_bytes());
    let crc = crc32c::crc32c(&h[..36]);
    h[36..40].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a segment header against the group and the index its name says,
/// and returns the `prev_term` it records.
pub fn check_header(h: &[u8], group: GroupId, first_index: Index) -> Result<Term, String> {
    if h.len() < SEGMENT_HEADER_BYTES as usize {
        return Err("file is shorter than a segment header".into());
    }
    if &h[0..8] != MAGIC {
        return Err("not a tarn segment (bad magic)".into());
    }
    let crc = u32::from_le_bytes(h[36..40].try_into().expect("4 bytes"));
    if crc32c::crc32c(&h[..36]) != crc {
        return Err("segment header checksum mismatch".into());
    }
    let version = u32::from_le_bytes(h[32..36].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(format!(
            "segment format version {version} is not supported (this build reads {VERSION})"
        ));
    }
    let found_group = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
    let found_first = u64::from_le_bytes(h[16..24].try_into().expect("8 bytes"));
    if found_group != group {
        return Err(format!("segment belongs to group {found_group}, not {group}"));
    }
    if found_first != first_index {
        return Err(format!("segment header says first index {found_first}, its name says {first_index}"));
    }
    Ok(u64::from_le_bytes(h[24..32].try_into().expect("8 bytes")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_headers() {
        assert_eq!(parse_name(&file_name(42)), Some(42));
        assert_eq!(parse_name("42.seg"), None);
        assert_eq!(parse_name("00000000000000000042.seg.tmp"), None);
        let h = encode_header(5, 42, 3);
        assert_eq!(check_header(&h, 5, 42), Ok(3));
        assert!(check_header(&h, 6, 42).unwrap_err().contains("group"));
        assert!(check_header(&h, 5, 43).unwrap_err().contains("name"));
        let mut bad = h;
        bad[17] ^= 4;
        assert!(check_header(&bad, 5, 42).unwrap_err().contains("checksum"));
    }
}
