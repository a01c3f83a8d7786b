//! Storage engine throughput on the real file system, beside the raw limit of
//! the disk measured the same way.
//!
//! For each entry size (64 B, 1 KiB), write mode (sync, async) and group count
//! (1, 16): the engine stages `ENTRIES_PER_FLUSH` entries spread over the
//! groups and flushes (one write per group, then in sync mode one fdatasync
//! per group file); the raw run does exactly the same with plain files: per
//! flush, one sequential `write` of the same payload bytes into each group's
//! preallocated file, then one fdatasync per file (sync mode). In async mode
//! both write without fdatasync and, on a background thread, fdatasync
//! everything every `ASYNC_SYNC_INTERVAL` (the engine via
//! `Storage::begin_sync` / `SyncJob::run` / `Storage::finish_sync`).
//! Runs alternate raw / engine `ROUNDS` times; medians are reported.
//! Columns: engine; raw writing the payload bytes (the disk's limit for the
//! user's data) and the ratio; raw writing the same framed bytes the engine
//! writes and the ratio (the engine's own overhead, format aside); with many
//! groups raw fdatasyncs the files concurrently, like the engine's batched
//! sync, and `rawseq` shows one-after-the-other fdatasyncs for comparison.
//!
//! `cargo bench -p tarn-io --bench storage` (env `TARN_BENCH_SECS` = seconds
//! per run, default 0.5; `TARN_BENCH_ROUNDS`, default 3; `TARN_BENCH_DIR` = where to write, default a temp
//! dir under the system temp dir).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tarn_core::{Entry, EntryPayload};
use tarn_io::storage::{record, FlushReport, Storage, StorageConfig, SyncJob, WriteMode};
use tarn_io::vfs::StdVfs;

const ENTRIES_PER_FLUSH: usize = 256;
/// Default alternating rounds per case (env `TARN_BENCH_ROUNDS`).
const ROUNDS: usize = 3;
const SEGMENT_SIZE_BYTES: u64 = 64 << 20;
const ASYNC_SYNC_INTERVAL: Duration = Duration::from_millis(10);

#[derive(Clone, Copy, Debug)]
struct Case {
    entry_bytes: usize,
    mode: WriteMode,
    groups: usize,
}

#[derive(Clone, Copy, Debug, Default)]
struct Rate {
    entries_per_sec: f64,
    payload_mb_per_sec: f64,
}

fn rate(entries: u64, entry_bytes: usize, elapsed: Duration) -> Rate {
    let secs = elapsed.as_secs_f64();
    Rate {
        entries_per_sec: entries as f64 / secs,
        payload_mb_per_sec: (entries * entry_bytes as u64) as f64 / secs / 1e6,
    }
}

fn run_engine(dir: &Path, case: Case, duration: Duration) -> Rate {
    let _ = std::fs::remove_dir_all(dir);
    let mut cfg = StorageConfig::new(dir, 1, 1);
    cfg.segment_size_bytes = SEGMENT_SIZE_BYTES;
    cfg.write_mode = case.mode;
    let mut storage = Storage::open(Arc::new(StdVfs), cfg).expect("open storage");
    for g in 0..case.groups as u64 {
        storage.open_group(g + 1).expect("open group");
    }
    // A static payload: cloning it into each entry costs no atomic
    // refcount, as a driver's entries arrive already built.
    let payload = Bytes::from_static(Box::leak(vec![0xA5u8; case.entry_bytes].into_boxed_slice()));
    let per_group = ENTRIES_PER_FLUSH / case.groups;
    let mut next_index = vec![1u64; case.groups];
    let mut batch: Vec<Entry> = Vec::with_capacity(per_group);
    let mut report = FlushReport::default();
    let mut entries = 0u64;
    // Async mode: the background fdatasync runs on its own thread, as a
    // driver would run it, while appends go on.
    let (job_tx, job_rx) = mpsc::channel::<SyncJob>();
    let (done_tx, done_rx) = mpsc::channel::<(SyncJob, Vec<std::io::Result<()>>)>();
    let syncer = std::thread::spawn(move || {
        for job in job_rx {
            let results = job.run();
            if done_tx.send((job, results)).is_err() {
                break;
            }
        }
    });
    let mut in_flight = false;
    let start = Instant::now();
    let mut last_sync = start;
    while start.elapsed() < duration {
        for (g, next) in next_index.iter_mut().enumerate() {
            batch.clear();
            for _ in 0..per_group {
                batch.push(Entry { term: 1, index: *next, payload: EntryPayload::Normal(payload.clone()) });
                *next += 1;
            }
            storage.stage(g as u64 + 1, &batch).expect("stage");
        }
        storage.flush(&mut report);
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        assert_eq!(report.log.len(), case.groups);
        entries += (per_group * case.groups) as u64;
        if case.mode == WriteMode::Async {
            if let Ok((job, results)) = done_rx.try_recv() {
                storage.finish_sync(job, results, &mut report);
                assert!(report.failed.is_empty(), "{:?}", report.failed);
                in_flight = false;
            }
            if !in_flight && last_sync.elapsed() >= ASYNC_SYNC_INTERVAL {
                let job = storage.begin_sync(&mut report);
                job_tx.send(job).expect("sync thread alive");
                in_flight = true;
                last_sync = Instant::now();
            }
        }
    }
    if in_flight {
        let (job, results) = done_rx.recv().expect("sync thread alive");
        storage.finish_sync(job, results, &mut report);
    }
    storage.sync(&mut report);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let elapsed = start.elapsed();
    drop(job_tx);
    syncer.join().expect("sync thread");
    drop(storage);
    let _ = std::fs::remove_dir_all(dir);
    rate(entries, case.entry_bytes, elapsed)
}

fn raw_file(dir: &Path, g: usize, n: u64) -> File {
    let path = dir.join(format!("raw-{g}-{n}"));
    let file =
        OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path).expect("raw file");
    file.set_len(SEGMENT_SIZE_BYTES).expect("preallocate");
    file
}

/// fdatasync every file, one after the other or all at once (one thread
/// each, the way `StdVfs::sync_data_batch` does it).
fn sync_all(files: &[(File, u64, u64)], parallel: bool) {
    if parallel && files.len() > 1 {
        std::thread::scope(|scope| {
            for (file, _, _) in files {
                scope.spawn(move || file.sync_data().expect("raw fdatasync"));
            }
        });
    } else {
        for (file, _, _) in files {
            file.sync_data().expect("raw fdatasync");
        }
    }
}

fn run_raw(dir: &Path, case: Case, duration: Duration, parallel: bool, bytes_per_entry: usize) -> Rate {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("raw dir");
    let per_group = ENTRIES_PER_FLUSH / case.groups;
    let chunk = vec![0xA5u8; per_group * bytes_per_entry];
    let mut files: Vec<(File, u64, u64)> = (0..case.groups).map(|g| (raw_file(dir, g, 0), 0, 0)).collect();
    let mut entries = 0u64;
    let (job_tx, job_rx) = mpsc::channel::<Vec<(File, u64, u64)>>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let syncer = std::thread::spawn(move || {
        for files in job_rx {
            sync_all(&files, parallel);
            if done_tx.send(()).is_err() {
                break;
            }
        }
    });
    let mut in_flight = false;
    let start = Instant::now();
    let mut last_sync = start;
    while start.elapsed() < duration {
        for (g, (file, offset, n)) in files.iter_mut().enumerate() {
            if *offset + chunk.len() as u64 > SEGMENT_SIZE_BYTES {
                *n += 1;
                *file = raw_file(dir, g, *n);
                *offset = 0;
            }
            file.write_all_at(&chunk, *offset).expect("raw write");
            *offset += chunk.len() as u64;
        }
        if case.mode == WriteMode::Sync {
            sync_all(&files, parallel);
        } else {
            // Same background fdatasync as the engine's async mode.
            if done_rx.try_recv().is_ok() {
                in_flight = false;
            }
            if !in_flight && last_sync.elapsed() >= ASYNC_SYNC_INTERVAL {
                let handles = files.iter().map(|(f, o, n)| (f.try_clone().expect("dup"), *o, *n)).collect();
                job_tx.send(handles).expect("sync thread alive");
                in_flight = true;
                last_sync = Instant::now();
            }
        }
        entries += (per_group * case.groups) as u64;
    }
    if in_flight {
        done_rx.recv().expect("sync thread alive");
    }
    sync_all(&files, parallel);
    let elapsed = start.elapsed();
    drop(job_tx);
    syncer.join().expect("sync thread");
    drop(files);
    let _ = std::fs::remove_dir_all(dir);
    rate(entries, case.entry_bytes, elapsed)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument selects cases by name.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let secs: f64 = std::env::var("TARN_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(0.5);
    let duration = Duration::from_secs_f64(secs);
    let rounds: usize =
        std::env::var("TARN_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(ROUNDS).max(1);
    let tmp = match std::env::var("TARN_BENCH_DIR") {
        Ok(dir) => tempfile::tempdir_in(dir),
        Err(_) => tempfile::tempdir(),
    }
    .expect("bench dir");
    let engine_dir: PathBuf = tmp.path().join("engine");
    let raw_dir: PathBuf = tmp.path().join("raw");
    println!(
        "storage bench: {ENTRIES_PER_FLUSH} entries per flush spread over the groups, {rounds} alternating \
         rounds of {secs} s, medians; dir {}",
        tmp.path().display()
    );
    println!(
        "{:<16} {:>11} {:>7} | {:>11} {:>7} {:>5} | {:>11} {:>5} | {:>11}",
        "case", "engine e/s", "MB/s", "raw e/s", "MB/s", "ratio", "rawfrm e/s", "ratio", "rawseq e/s"
    );
    for entry_bytes in [64, 1024] {
        for mode in [WriteMode::Sync, WriteMode::Async] {
            for groups in [1, 16] {
                let case = Case { entry_bytes, mode, groups };
                let name = format!(
                    "{}B {} {}g",
                    entry_bytes,
                    if mode == WriteMode::Sync { "sync" } else { "async" },
                    groups
                );
                if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
                    continue;
                }
                // Raw: payload bytes only; "framed": the same bytes the engine
                // puts on disk (record headers and padding included), which
                // separates the format's overhead from the engine's.
                let framed = record::record_size_bytes(entry_bytes as u64) as usize;
                let parallel = groups > 1;
                let (mut engine, mut raw, mut raw_framed, mut raw_seq) = (vec![], vec![], vec![], vec![]);
                for _ in 0..rounds {
                    raw.push(run_raw(&raw_dir, case, duration, parallel, entry_bytes));
                    engine.push(run_engine(&engine_dir, case, duration));
                    raw_framed.push(run_raw(&raw_dir, case, duration, parallel, framed));
                    if parallel {
                        raw_seq.push(run_raw(&raw_dir, case, duration, false, entry_bytes));
                    }
                }
                let med = |v: &[Rate]| {
                    (
                        median(v.iter().map(|r| r.entries_per_sec).collect()),
                        median(v.iter().map(|r| r.payload_mb_per_sec).collect()),
                    )
                };
                let (e, e_mb) = med(&engine);
                let (r, r_mb) = med(&raw);
                let (f, _) = med(&raw_framed);
                let seq =
                    if raw_seq.is_empty() { "-".to_string() } else { format!("{:.0}", med(&raw_seq).0) };
                println!(
                    "{name:<16} {e:>11.0} {e_mb:>7.1} | {r:>11.0} {r_mb:>7.1} {:>5.2} | {f:>11.0} {:>5.2} | {seq:>11}",
                    e / r,
                    e / f
                );
            }
        }
    }
}
