//! Writes the seed corpus of every target to `fuzz/corpus/<target>/seed-*`.
//!
//! `cargo run -p tarn-fuzz-targets --example write_seeds`
//! Deterministic: re-running rewrites the same bytes.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (target, name, bytes) in tarn_fuzz_targets::seeds::all() {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("seed-{name}"));
        std::fs::write(&path, &bytes)?;
        println!("{} ({} bytes)", path.display(), bytes.len());
    }
    Ok(())
}
