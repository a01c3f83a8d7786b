//! Admission: packing the client writes of one read from a socket into Raft
//! entries. I/O-free, so it is unit-tested here and simulated.
//!
//! The chain of limits ends here: an entry must stay under the core's
//! `max_entry_bytes` (which storage and peer frames are sized for), so a
//! batch is split at that byte bound (and at a request count), measured on
//! the *encoded* entry. A request that alone would exceed it is refused with
//! [`KvError::RequestTooLarge`] before any log write, so no client input can
//! reach the storage check that stops a group.

use tarn_kv::{KvError, Request, ENTRY_ENVELOPE_MAX_BYTES};

/// Requests folded into one Raft entry at most: one apply stays short even
/// for tiny requests.
pub const MAX_REQUESTS_PER_ENTRY: usize = 1024;

/// The bounds admission packs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// The core's `max_entry_bytes`: no packed entry encodes to more.
    pub max_entry_bytes: usize,
    /// Requests per entry at most ([`MAX_REQUESTS_PER_ENTRY`] on a server).
    pub max_requests_per_entry: usize,
    /// A bug planted for the simulator to find (never in production).
    #[cfg(feature = "planted-bugs")]
    pub planted_bug: Option<tarn_core::PlantedBug>,
}

impl AdmissionLimits {
    /// Entries of at most `max_entry_bytes`, [`MAX_REQUESTS_PER_ENTRY`] requests each.
    pub fn new(max_entry_bytes: usize) -> Self {
        AdmissionLimits {
            max_entry_bytes,
            max_requests_per_entry: MAX_REQUESTS_PER_ENTRY,
            #[cfg(feature = "planted-bugs")]
            planted_bug: None,
        }
    }

    /// Whether the planted bug that loses the index after a watch's resume
    /// point is on.
    pub(crate) fn watch_resume_skips_an_index(&self) -> bool {
        #[cfg(feature = "planted-bugs")]
        {
            self.planted_bug == Some(tarn_core::PlantedBug::WatchResumeSkipsAnIndex)
        }
        #[cfg(not(feature = "planted-bugs"))]
        {
            false
        }
    }

    /// Whether the planted bug that ignores the entry bound is on.
    fn ignores_entry_bound(&self) -> bool {
        #[cfg(feature = "planted-bugs")]
        {
            self.planted_bug == Some(tarn_core::PlantedBug::AdmissionIgnoresEntryBound)
        }
        #[cfg(not(feature = "planted-bugs"))]
        {
            false
        }
    }
}

/// Client writes packed into entries, and those refused outright.
#[derive(Debug, Default)]
pub struct Packed {
    /// Each inner list becomes one Raft entry, in arrival order.
    pub entries: Vec<Vec<(u64, Request)>>,
    /// `(request id, why)`: requests too large for any entry.
    pub refused: Vec<(u64, KvError)>,
}

/// Packs `batch` (request id, request) into entries whose encoded size is at
/// most `max_entry_bytes` and which hold at most `max_requests` requests.
/// Order is kept: the entries, concatenated, are `batch` minus the refused.
pub fn pack_entries(
    batch: impl IntoIterator<Item = (u64, Request)>,
    max_entry_bytes: usize,
    max_requests: usize,
) -> Packed {
    let mut limits = AdmissionLimits::new(max_entry_bytes);
    limits.max_requests_per_entry = max_requests;
    pack(batch, &limits)
}

/// [`pack_entries`] under `limits`.
pub fn pack(batch: impl IntoIterator<Item = (u64, Request)>, limits: &AdmissionLimits) -> Packed {
    let (max_entry_bytes, max_requests) = (limits.max_entry_bytes, limits.max_requests_per_entry);
    let ignores_bound = limits.ignores_entry_bound();
    let mut packed = Packed::default();
    let mut current: Vec<(u64, Request)> = Vec::new();
    let mut current_bytes = ENTRY_ENVELOPE_MAX_BYTES;
    for (id, request) in batch {
        let size = match request.check_fits_entry(max_entry_bytes) {
            Ok(size) => size,
            // Planted: measured as if it fit, so it is proposed whole.
            Err(_) if ignores_bound => max_entry_bytes,
            Err(error) => {
                packed.refused.push((id, error));
                continue;
            }
        };
        if !current.is_empty() && (current_bytes + size > max_entry_bytes || current.len() >= max_requests) {
            packed.entries.push(std::mem::take(&mut current));
            current_bytes = ENTRY_ENVELOPE_MAX_BYTES;
        }
        current_bytes += size;
        current.push((id, request));
    }
    if !current.is_empty() {
        packed.entries.push(current);
    }
    packed
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tarn_kv::{encode_entry, Command, KvEntry};

    fn put(seq: u64, value_bytes: usize) -> (u64, Request) {
        let command = Command::Put { key: format!("k{seq}"), value: Bytes::from(vec![b'x'; value_bytes]) };
        (seq, Request { client_id: 9, seq, first_unacked_seq: 1, command })
    }

    fn encoded(entry: &[(u64, Request)]) -> usize {
        let requests = entry.iter().map(|(_, r)| r.clone()).collect();
        encode_entry(&KvEntry { leader_time_nanos: u64::MAX, requests }).len()
    }

    #[test]
    fn batches_split_at_the_encoded_byte_bound_in_order() {
        const MAX: usize = 10_000;
        let batch: Vec<_> = (1..=20).map(|i| put(i, 900)).collect();
        let packed = pack_entries(batch.clone(), MAX, MAX_REQUESTS_PER_ENTRY);
        assert!(packed.refused.is_empty());
        assert!(packed.entries.len() >= 2, "20 x ~910 bytes cannot fit one 10 KB entry");
        for entry in &packed.entries {
            let size = encoded(entry);
            assert!(size <= MAX, "an entry of {size} bytes exceeds {MAX}");
            // Packed tightly: one more request would not have fit.
            assert!(size + 900 > MAX || entry.len() == 20, "{size}");
        }
        let flat: Vec<_> = packed.entries.into_iter().flatten().collect();
        assert_eq!(flat, batch, "every request once, in order");
    }

    #[test]
    fn batches_split_at_the_request_count() {
        let packed = pack_entries((1..=10).map(|i| put(i, 1)), 1 << 20, 4);
        let sizes: Vec<usize> = packed.entries.iter().map(Vec::len).collect();
        assert_eq!(sizes, [4, 4, 2]);
    }

    /// The request: twelve values of 1 MiB - 1 in one batch-put is
    /// refused in words; the small writes around it still go through.
    #[test]
    fn a_request_larger_than_an_entry_is_refused_naming_the_limit() {
        const MAX: usize = 4 << 20;
        let items = (0..12).map(|i| (format!("big{i}"), Bytes::from(vec![0u8; (1 << 20) - 1]))).collect();
        let big =
            Request { client_id: 9, seq: 2, first_unacked_seq: 1, command: Command::BatchPut { items } };
        let packed = pack_entries(vec![put(1, 10), (2, big), put(3, 10)], MAX, MAX_REQUESTS_PER_ENTRY);
        assert_eq!(packed.refused.len(), 1);
        let (id, error) = &packed.refused[0];
        assert_eq!(*id, 2);
        assert!(
            matches!(error, KvError::RequestTooLarge { size_bytes, max_bytes: MAX, .. } if *size_bytes > 12 << 20)
        );
        let text = error.to_string();
        assert!(
            text.contains("batch-put request encodes to") && text.contains("max_entry_bytes 4194304"),
            "{text}"
        );
        let ids: Vec<u64> = packed.entries.iter().flatten().map(|(id, _)| *id).collect();
        assert_eq!(ids, [1, 3]);
    }
}
