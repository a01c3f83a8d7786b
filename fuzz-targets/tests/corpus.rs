//! Replays every checked-in corpus file through the function its fuzz target
//! calls, on stable Rust: CI runs the corpora without nightly or cargo-fuzz.
//! Also checks that the seeds still reach deep code (a refactor that made
//! every seed bounce off an early check would silently gut the fuzzers).

use std::path::{Path, PathBuf};

use tarn_fuzz_targets::{kv_apply, log_recovery, raft_cluster, TARGETS};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target)
}

fn corpus_files(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus directory {} is missing: {e}", dir.display()))
        .map(|entry| entry.expect("readable directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            (path, bytes)
        })
        .collect()
}

#[test]
fn every_corpus_file_passes_its_target() {
    for &(target, run) in TARGETS {
        let files = corpus_files(target);
        assert!(!files.is_empty(), "target {target} has no corpus files");
        for (path, bytes) in files {
            let outcome = std::panic::catch_unwind(|| run(&bytes));
            if let Err(cause) = outcome {
                let message = cause
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| cause.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!("{target}: corpus file {} fails: {message}", path.display());
            }
        }
    }
}

#[test]
fn every_hand_built_seed_is_checked_in_unchanged() {
    for (target, name, bytes) in tarn_fuzz_targets::seeds::hand_built() {
        let path = corpus_dir(target).join(format!("seed-{name}"));
        let stored = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{} is missing ({e}); run `cargo run -p tarn-fuzz-targets --example write_seeds`",
                path.display()
            )
        });
        assert!(stored == bytes, "{} is stale; rerun the write_seeds example", path.display());
    }
}

#[test]
fn raft_cluster_corpus_elects_commits_reads_and_restarts() {
    let reached: Vec<_> = corpus_files("raft_cluster")
        .iter()
        .filter_map(|(_, bytes)| raft_cluster::parse(bytes))
        .map(|input| raft_cluster::run(&input))
        .collect();
    assert!(reached.iter().any(|r| r.committed >= 3), "no corpus file commits 3 entries: {reached:?}");
    assert!(reached.iter().any(|r| r.proposals_applied >= 1), "no proposal applied: {reached:?}");
    assert!(reached.iter().any(|r| r.reads_ready >= 1), "no read served: {reached:?}");
    assert!(reached.iter().any(|r| r.restarts >= 1 && r.committed >= 1), "no restart: {reached:?}");
    assert!(reached.iter().any(|r| r.conf_changes >= 2), "no membership changes: {reached:?}");
    assert!(reached.iter().any(|r| r.installs >= 1), "no snapshot installed: {reached:?}");
    assert!(reached.iter().any(|r| r.wipes >= 1 && r.rejoined >= 1), "no wiped node rejoined: {reached:?}");
}

#[test]
fn log_recovery_corpus_recovers_repairs_and_reports_corruption() {
    let reached: Vec<_> = corpus_files("log_recovery")
        .iter()
        .filter_map(|(_, bytes)| log_recovery::parse(bytes))
        .map(|input| log_recovery::run(&input))
        .collect();
    assert!(
        reached.iter().any(|r| r.segments >= 2 && r.recovered_entries >= 5),
        "no multi-segment log: {reached:?}"
    );
    assert!(reached.iter().any(|r| r.torn_tail_repaired), "no torn tail repaired: {reached:?}");
    assert!(reached.iter().any(|r| r.corruption_reported), "no corruption reported: {reached:?}");
    assert!(
        reached.iter().any(|r| r.compacted && r.snapshot_index > 0 && r.recovered_entries >= 1),
        "no recovery after compaction: {reached:?}"
    );
}

#[test]
fn kv_apply_corpus_writes_expires_and_snapshots() {
    let reached: Vec<_> = corpus_files("kv_apply")
        .iter()
        .filter_map(|(_, bytes)| kv_apply::parse(bytes))
        .map(|input| kv_apply::run(&input))
        .collect();
    assert!(reached.iter().any(|r| r.ok_writes >= 5 && r.nodes >= 3), "no file builds a tree: {reached:?}");
    assert!(reached.iter().any(|r| r.expiries >= 1), "no expiry: {reached:?}");
    assert!(reached.iter().any(|r| r.renewals >= 1), "no RenewTtl re-armed a temporary node: {reached:?}");
    assert!(
        reached.iter().any(|r| r.snapshots >= 1 && r.ok_writes >= 1),
        "no snapshot of a state: {reached:?}"
    );
}
