//! One test per bug the fuzzers found, replaying the (minimized) input that
//! found it. The same files also sit in the corpus; a named test says what
//! broke, so a failure here reads as a sentence.

/// `hard_state`: a well-formed slot with sequence number `u64::MAX` made the
/// engine panic on the next hard-state write (`hs_seq + 1` overflowed), and a
/// plainly wrapped number would have lost that write behind the old slot.
/// Slots now compare as serial numbers (RFC 1982): the state is recovered and
/// the next write, numbered 0, is what the next open sees.
#[test]
fn hard_state_slot_with_max_sequence_number_wraps_safely() {
    let input = include_bytes!("../../fuzz/corpus/hard_state/seed-resealed-max-seq");
    tarn_fuzz_targets::hard_state(input);
}

/// `hard_state`: the first fix refused a slot numbered `u64::MAX`, which only
/// moved the failure by one: from `u64::MAX - 1` the next write took
/// `u64::MAX` and the next open refused the file. Fixed by the serial-number
/// comparison in io's `hard_state::choose`.
#[test]
fn hard_state_write_numbered_max_is_recovered() {
    let input = include_bytes!("../../fuzz/corpus/hard_state/regress-seq-max-minus-1");
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

/// `raft_cluster` (found by the seed climb once the target learned snapshots
/// and membership changes): a follower whose disk held back some appends
/// was sent a snapshot; the appends became durable between `InstallSnapshot`
/// and `SnapshotInstalled` and the core applied them on top of the state
/// machine being replaced (testkit: "apply out of order"). The core now
/// applies nothing while an install is pending (core/tests/snapshot.rs
/// `nothing_is_applied_while_a_snapshot_install_is_pending`).
#[test]
fn raft_cluster_no_apply_while_a_snapshot_install_is_pending() {
    let input = include_bytes!("../../fuzz/corpus/raft_cluster/regress-apply-during-snapshot-install");
    let parsed = tarn_fuzz_targets::raft_cluster::parse(input).expect("a structured input");
    let reached = tarn_fuzz_targets::raft_cluster::run(&parsed);
    assert!(reached.installs >= 1, "the input still reaches a snapshot install: {reached:?}");
}
