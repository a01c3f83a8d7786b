//! One test per bug the fuzzers found, replaying the (minimized) input that
//! found it. The same files also sit in the corpus; a named test says what
//! broke, so a failure here reads as a sentence.

/// `hard_state`: a well-formed slot with sequence number `u64::MAX` made the
/// engine panic on the next hard-state write (`hs_seq + 1` overflowed), and a
/// wrapped number would have lost that write behind the old slot. Recovery
/// now refuses such a file as corruption of the hard-state file.
#[test]
fn hard_state_slot_with_exhausted_sequence_number_is_refused() {
    let input = include_bytes!("../../fuzz/corpus/hard_state/seed-resealed-max-seq");
    tarn_fuzz_targets::hard_state(input);
}

/// `snapshot_decode`: `snapshot::verify` (used when a group is opened) did
/// not check the format version that `snapshot::read` refuses, so recovery
/// accepted a snapshot that could then not be read. Both now refuse it.
#[test]
fn snapshot_of_unknown_version_is_refused_by_verify_and_read() {
    let input = include_bytes!("../../fuzz/corpus/snapshot_decode/regress-verify-accepts-unknown-version");
    tarn_fuzz_targets::snapshot_decode(input);
}
