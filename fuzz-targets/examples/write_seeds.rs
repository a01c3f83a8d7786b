//! Writes the seed corpus of every target to `fuzz/corpus/<target>/seed-*`.
//!
//! `cargo run --release -p tarn-fuzz-targets --example write_seeds [--hand-built]`
//! Deterministic: re-running rewrites the same bytes. `--hand-built` skips the
//! (slower) hill-climbed seeds of the structured targets.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let hand_built_only = std::env::args().any(|a| a == "--hand-built");
    let seeds = if hand_built_only {
        tarn_fuzz_targets::seeds::hand_built()
    } else {
        tarn_fuzz_targets::seeds::all()
    };
    for (target, name, bytes) in seeds {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("seed-{name}"));
        std::fs::write(&path, &bytes)?;
        println!("{} ({} bytes)", path.display(), bytes.len());
    }
    Ok(())
}
