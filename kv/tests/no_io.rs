//! Architecture invariant: tarn-kv does no I/O and reads no clock (time arrives in entries).

#[test]
fn the_crate_source_uses_no_io_clock_thread_or_global_rng() {
    let forbidden = [
        "std::fs",
        "std::net",
        "std::thread",
        "std::time",
        "Instant::now",
        "SystemTime",
        "tokio",
        "thread_rng",
        "std::process",
        "std::env",
    ];
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut checked = 0;
    for entry in std::fs::read_dir(&src).expect("kv/src is readable") {
        let path = entry.expect("directory entry").path();
        if path.extension().is_some_and(|ext| ext == "rs") {
            let text = std::fs::read_to_string(&path).expect("source is UTF-8");
            for word in forbidden {
                assert!(!text.contains(word), "{} mentions {word}: tarn-kv must stay pure", path.display());
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "found only {checked} source files in {}", src.display());
}
