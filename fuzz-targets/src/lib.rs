//! The logic of tarn's fuzz targets, as plain functions of `&[u8]`.
//!
//! Each function is what one cargo-fuzz binary in `fuzz/fuzz_targets/` calls,
//! and what `tests/corpus.rs` calls for every checked-in corpus file, so the
//! corpora run under stable `cargo test` (CI has no nightly and no
//! cargo-fuzz). A target returns normally for every input that the code
//! under test handles correctly, including every input it rightly refuses;
//! it panics — which libFuzzer reports as a crash — only when a property
//! fails. Each module's doc says which properties it checks.
//!
//! Every target bounds its own work (ops per input, bytes per op) so one
//! input runs in milliseconds: the fuzzer's speed is its coverage.

pub mod alloc_probe;
pub mod hard_state;
pub mod kv_apply;
pub mod log_recovery;
pub mod raft_cluster;
pub mod seeds;
pub mod snapshot_decode;
pub mod wire_frame;

pub use hard_state::hard_state;
pub use kv_apply::kv_apply;
pub use log_recovery::log_recovery;
pub use raft_cluster::raft_cluster;
pub use snapshot_decode::snapshot_decode;
pub use wire_frame::wire_frame;

/// A target: name (of its fuzz binary and corpus directory) and function.
pub type Target = (&'static str, fn(&[u8]));

/// Every target by name, as the corpus test iterates them.
pub const TARGETS: &[Target] = &[
    ("wire_frame", wire_frame),
    ("log_recovery", log_recovery),
    ("hard_state", hard_state),
    ("snapshot_decode", snapshot_decode),
    ("raft_cluster", raft_cluster),
    ("kv_apply", kv_apply),
];

/// Decodes elements with `arbitrary` until the input is used up (at most
/// `max`). `arbitrary`'s own `Vec` decoding spends a continuation byte per
/// element, so random bytes make two-element sequences; here every byte
/// feeds an op, which gives the fuzzer (and the seed search) long streams.
pub fn elements_until_empty<'a, T: arbitrary::Arbitrary<'a>>(
    u: &mut arbitrary::Unstructured<'a>,
    max: usize,
) -> Vec<T> {
    let mut out = Vec::new();
    while !u.is_empty() && out.len() < max {
        match T::arbitrary(u) {
            Ok(element) => out.push(element),
            Err(_) => break,
        }
    }
    out
}

#[global_allocator]
static PROBE: alloc_probe::Probe = alloc_probe::Probe;
