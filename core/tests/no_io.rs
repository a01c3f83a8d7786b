//! Architecture invariant: tarn-core does no I/O and reads no clock. Fails if
//! the source or the manifest gains tokio, std::fs, std::net, std::thread,
//! std::time::{Instant, SystemTime}, or a global RNG.

use std::path::Path;

const FORBIDDEN_IN_SOURCE: &[&str] = &[
    "tokio",
    "std::fs",
    "std::net",
    "std::thread",
    "Instant",
    "SystemTime",
    "thread_rng",
    "rand::random",
    "std::process",
    "std::env",
];

const FORBIDDEN_DEPENDENCIES: &[&str] =
    &["tokio", "mio", "async-std", "rand", "getrandom", "libc", "socket2"];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("core/src is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn core_source_has_no_io_clock_or_threads() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() >= 5, "found the sources");
    let mut violations = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("source is readable");
        for (n, line) in text.lines().enumerate() {
            for word in FORBIDDEN_IN_SOURCE {
                if line.contains(word) {
                    violations.push(format!("{}:{}: `{word}`: {}", f.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(violations.is_empty(), "tarn-core must stay sans-IO:\n{}", violations.join("\n"));
}

#[test]
fn core_manifest_has_no_io_dependencies() {
    let manifest = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    // Only [dependencies] matters; dev-dependencies are for tests.
    let mut in_deps = false;
    let mut deps = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps && !line.is_empty() && !line.starts_with('#') {
            let name = line.split(['=', '.', ' ']).next().unwrap_or("").trim();
            deps.push(name.to_string());
        }
    }
    assert!(deps.iter().any(|d| d == "rand_chacha"), "parsed the [dependencies] section: {deps:?}");
    for dep in &deps {
        assert!(
            !FORBIDDEN_DEPENDENCIES.contains(&dep.as_str()),
            "forbidden dependency `{dep}` in core/Cargo.toml"
        );
    }
}
