//! The log record format: one entry per record, framed so recovery can tell
//! a clean end, a torn tail and real corruption apart.
//!
//! ```text
//! offset  size  field
//!      0     4  crc32c over bytes 4..24 of this header and the payload
//!      4     4  kind (top 4 bits: 1 blank, 2 normal, 3 membership) and
//!               payload length in bytes (low 28 bits)
//!      8     8  term
//!     16     8  index
//!     24     n  payload (normal: the data; membership: postcard; blank: none)
//!   24+n     p  zero padding up to RECORD_ALIGNMENT_BYTES
//! ```
//!
//! All integers little endian. An all-zero header is never valid (kind 0),
//! which is how the zero-filled rest of a preallocated segment reads as "end".
//! The kind lives in the header so that a 64-byte entry takes 88 bytes, not
//! 96: framing is the engine's main cost over the raw disk for small entries.

use bytes::Bytes;
use tarn_core::{Entry, EntryPayload, Index, Term};

/// Records start at multiples of this; segment sizes must be multiples too.
pub const RECORD_ALIGNMENT_BYTES: u64 = 8;
pub const RECORD_HEADER_BYTES: usize = 24;

const KIND_SHIFT: u32 = 28;
const LEN_MASK: u32 = (1 << KIND_SHIFT) - 1;
/// Largest payload the format can frame (the engine's limit is lower).
pub const MAX_FRAMED_PAYLOAD_BYTES: u32 = LEN_MASK;

pub const KIND_BLANK: u8 = 1;
pub const KIND_NORMAL: u8 = 2;
pub const KIND_MEMBERSHIP: u8 = 3;
/// Filler that carries no entry: ends a flush's write on a page boundary so
/// the next flush never rewrites a page the kernel may be writing back.
/// Recovery and reads skip it; it is checksummed like any record.
pub const KIND_PADDING: u8 = 4;

pub const fn align_up(n: u64) -> u64 {
    n.div_ceil(RECORD_ALIGNMENT_BYTES) * RECORD_ALIGNMENT_BYTES
}

/// Bytes a record with `payload_bytes` of payload takes.
pub const fn record_size_bytes(payload_bytes: u64) -> u64 {
    align_up(RECORD_HEADER_BYTES as u64 + payload_bytes)
}

/// The payload size of `entry`, without encoding it, except for membership
/// entries which are rare and small.
pub fn payload_size_bytes(entry: &Entry) -> u64 {
    match &entry.payload {
        EntryPayload::Blank => 0,
        EntryPayload::Normal(data) => data.len() as u64,
        EntryPayload::Membership(m) => postcard::to_allocvec(m).map_or(0, |v| v.len()) as u64,
    }
}

/// Appends the record of `entry` to `buf` (header, payload, padding) and
/// returns its size. The caller has checked the size bound.
pub fn encode(entry: &Entry, buf: &mut Vec<u8>) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; RECORD_HEADER_BYTES]);
    let kind = match &entry.payload {
        EntryPayload::Blank => KIND_BLANK,
        EntryPayload::Normal(data) => {
            buf.extend_from_slice(data);
            KIND_NORMAL
        }
        EntryPayload::Membership(m) => {
            // Serializing a BTreeSet-based struct into a Vec cannot fail.
            let encoded = postcard::to_allocvec(m).expect("membership serializes");
            buf.extend_from_slice(&encoded);
            KIND_MEMBERSHIP
        }
    };
    let payload_len = buf.len() - start - RECORD_HEADER_BYTES;
    assert!(payload_len <= LEN_MASK as usize, "caller bounds entry size");
    let len_and_kind = payload_len as u32 | (kind as u32) << KIND_SHIFT;
    let header = &mut buf[start..start + RECORD_HEADER_BYTES];
    header[4..8].copy_from_slice(&len_and_kind.to_le_bytes());
    header[8..16].copy_from_slice(&entry.term.to_le_bytes());
    header[16..24].copy_from_slice(&entry.index.to_le_bytes());
    let crc = crc32c::crc32c(&buf[start + 4..]);
    buf[start..start + 4].copy_from_slice(&crc.to_le_bytes());
    let end = start + align_up((buf.len() - start) as u64) as usize;
    buf.resize(end, 0);
    end - start
}

/// Appends a padding record of exactly `size_bytes` (a multiple of the
/// record alignment, at least a header) to `buf`.
pub fn encode_padding(size_bytes: usize, buf: &mut Vec<u8>) {
    assert!(size_bytes >= RECORD_HEADER_BYTES && (size_bytes as u64).is_multiple_of(RECORD_ALIGNMENT_BYTES));
    let start = buf.len();
    buf.resize(start + size_bytes, 0);
    let payload_len = (size_bytes - RECORD_HEADER_BYTES) as u32;
    assert!(payload_len <= LEN_MASK, "padding is bounded by the alignment");
    let len_and_kind = payload_len | (KIND_PADDING as u32) << KIND_SHIFT;
    buf[start + 4..start + 8].copy_from_slice(&len_and_kind.to_le_bytes());
    let crc = crc32c::crc32c(&buf[start + 4..]);
    buf[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// A record that passed its checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub kind: u8,
    pub term: Term,
    pub index: Index,
    pub payload: &'a [u8],
    /// Header + payload + padding.
    pub size_bytes: usize,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4-byte slice"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8-byte slice"))
}

/// Parses the record at the start of `bytes`, or `None` if there is no valid
/// one there (zeros, torn, damaged, or longer than `max_payload_bytes`).
/// Never panics, never allocates.
pub fn parse(bytes: &[u8], max_payload_bytes: u32) -> Option<RecordView<'_>> {
    if bytes.len() < RECORD_HEADER_BYTES {
        return None;
    }
    let len_and_kind = u32_at(bytes, 4);
    let kind = (len_and_kind >> KIND_SHIFT) as u8;
    let payload_len = len_and_kind & LEN_MASK;
    if !(KIND_BLANK..=KIND_PADDING).contains(&kind) || payload_len > max_payload_bytes {
        return None;
    }
    let end = RECORD_HEADER_BYTES + payload_len as usize;
    if end > bytes.len() {
        return None;
    }
    if crc32c::crc32c(&bytes[4..end]) != u32_at(bytes, 0) {
        return None;
    }
    let size_bytes = (align_up(end as u64) as usize).min(bytes.len());
    Some(RecordView {
        kind,
        term: u64_at(bytes, 8),
        index: u64_at(bytes, 16),
        payload: &bytes[RECORD_HEADER_BYTES..end],
        size_bytes,
    })
}

/// Decodes a checksummed payload into an entry. `Err` names what is wrong.
pub fn decode(record: &RecordView<'_>) -> Result<Entry, String> {
    let body = record.payload;
    let payload = match record.kind {
        KIND_BLANK if body.is_empty() => EntryPayload::Blank,
        KIND_NORMAL => EntryPayload::Normal(Bytes::copy_from_slice(body)),
        KIND_MEMBERSHIP => {
            // postcard reads from a bounded slice: it cannot allocate more
            // than the body's length worth of elements.
            let membership = postcard::from_bytes(body).map_err(|e| format!("bad membership: {e}"))?;
            EntryPayload::Membership(membership)
        }
        KIND_PADDING => return Err("padding record where an entry belongs".into()),
        other => return Err(format!("unknown entry kind {other} (length {})", body.len())),
    };
    Ok(Entry { term: record.term, index: record.index, payload })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tarn_core::Membership;

    fn entries() -> Vec<Entry> {
        vec![
            Entry { term: 1, index: 1, payload: EntryPayload::Blank },
            Entry { term: 1, index: 2, payload: EntryPayload::Normal(Bytes::from_static(b"hello")) },
            Entry { term: 2, index: 3, payload: EntryPayload::Membership(Membership::new_voters([1, 2, 3])) },
            Entry { term: 2, index: 4, payload: EntryPayload::Normal(Bytes::new()) },
        ]
    }

    #[test]
    fn round_trip_aligned() {
        let mut buf = Vec::new();
        for e in entries() {
            let before = buf.len();
            let n = encode(&e, &mut buf);
            assert_eq!(n as u64, record_size_bytes(payload_size_bytes(&e)));
            assert_eq!(n % RECORD_ALIGNMENT_BYTES as usize, 0);
            let view = parse(&buf[before..], 1 << 20).unwrap();
            assert_eq!(view.size_bytes, n);
            assert_eq!(decode(&view).unwrap(), e);
        }
    }

    #[test]
    fn every_bit_flip_and_truncation_is_rejected() {
        let mut buf = Vec::new();
        encode(&entries()[1], &mut buf);
        let payload_end = RECORD_HEADER_BYTES + 5;
        for byte in 0..payload_end {
            for bit in 0..8 {
                let mut damaged = buf.clone();
                damaged[byte] ^= 1 << bit;
                assert!(parse(&damaged, 1 << 20).is_none(), "flip {byte}:{bit} accepted");
            }
        }
        for len in 0..payload_end {
            assert!(parse(&buf[..len], 1 << 20).is_none());
        }
        assert!(parse(&[0u8; 64], 1 << 20).is_none());
        assert!(parse(&buf, 4).is_none(), "payload bound");
        assert_eq!(record_size_bytes(64), 88, "a 64-byte entry needs no padding");
    }

    #[test]
    fn padding_records_parse_and_are_not_entries() {
        let mut buf = Vec::new();
        encode_padding(24, &mut buf);
        encode_padding(4096, &mut buf);
        assert_eq!(buf.len(), 4120);
        let first = parse(&buf, 1 << 20).unwrap();
        assert_eq!((first.kind, first.size_bytes), (KIND_PADDING, 24));
        let second = parse(&buf[24..], 1 << 20).unwrap();
        assert_eq!((second.kind, second.size_bytes), (KIND_PADDING, 4096));
        assert!(decode(&second).is_err());
    }

    #[test]
    fn bad_kind_is_an_error_not_a_panic() {
        let view = RecordView { kind: 9, term: 1, index: 1, payload: &[1, 2], size_bytes: 32 };
        assert!(decode(&view).is_err());
        let view =
            RecordView { kind: KIND_MEMBERSHIP, term: 1, index: 1, payload: &[0xff, 0xff], size_bytes: 32 };
        assert!(decode(&view).is_err());
        let view = RecordView { kind: KIND_BLANK, term: 1, index: 1, payload: &[0], size_bytes: 32 };
        assert!(decode(&view).is_err(), "a blank entry has no payload");
    }
}
