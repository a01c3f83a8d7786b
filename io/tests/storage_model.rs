//! Property test: seeded random sequences of append (with conflicts),
//! flush, truncate, snapshot + compact, snapshot past the end (log reset),
//! reopen and crash-after-flush, checked after every step against a plain
//! in-memory model. Seeds are fixed (ChaCha8), so a failure names its seed.

use std::sync::Arc;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tarn_core::{Entry, EntryPayload, LogId, Membership, SnapshotMeta};
use tarn_io::storage::{FlushReport, Storage, StorageConfig, WriteMode};
use tarn_io::vfs::{CrashMode, MemVfs};

const SEEDS: u64 = 1000;
const STEPS_PER_SEED: usize = 80;
const GROUP: u64 = 4;

/// The log as the test believes it is: entries `base.index + 1 ..`.
struct Model {
    base: LogId,
    entries: Vec<Entry>,
    /// The newest snapshot; entries behind it stay in the model (the engine
    /// may keep them until their whole segment is covered).
    snapshot: Option<LogId>,
}

impl Model {
    fn last(&self) -> LogId {
        self.entries.last().map_or(self.base, Entry::log_id)
    }

    fn get(&self, index: u64) -> Option<&Entry> {
        index.checked_sub(self.base.index + 1).and_then(|i| self.entries.get(i as usize))
    }

    /// Nothing at or below this may be overwritten (snapshot or base).
    fn floor(&self) -> u64 {
        self.snapshot.map_or(0, |s| s.index).max(self.base.index)
    }

    fn term(&self, index: u64) -> Option<u64> {
        if index == self.base.index {
            return Some(self.base.term);
        }
        self.get(index).map(|e| e.term)
    }
}

fn random_entry(rng: &mut ChaCha8Rng, term: u64, index: u64) -> Entry {
    let payload = match rng.gen_range(0..20) {
        0 => EntryPayload::Blank,
        1 => EntryPayload::Membership(Membership::new_voters(1..=rng.gen_range(1..6))),
        _ => {
            let len = if rng.gen_bool(0.1) { rng.gen_range(100..400) } else { rng.gen_range(0..40) };
            let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            EntryPayload::Normal(Bytes::from(data))
        }
    };
    Entry { term, index, payload }
}

fn check(s: &Storage, model: &Model, rng: &mut ChaCha8Rng, seed: u64, step: usize, what: &str) {
    let ctx = format!("seed {seed} step {step} ({what})");
    let st = s.log_state(GROUP).unwrap_or_else(|e| panic!("{ctx}: {e}"));
    assert_eq!(st.last_staged, model.last(), "{ctx}: last log id");
    assert!(st.last_durable.index <= st.last_written.index, "{ctx}: durable {st:?}");
    assert!(st.last_written.index <= st.last_staged.index, "{ctx}: written {st:?}");
    let floor = model.floor();
    assert!(st.first_index <= floor + 1, "{ctx}: first index {} > {}", st.first_index, floor + 1);
    // A random readable range matches the model where the model knows it.
    let lo_min = st.first_index.max(model.base.index + 1);
    let end = st.last_written.index + 1;
    if lo_min < end {
        let lo = rng.gen_range(lo_min..end);
        let hi = rng.gen_range(lo..=end);
        let mut got = Vec::new();
        s.entries(GROUP, lo, hi, u64::MAX, &mut got)
            .unwrap_or_else(|e| panic!("{ctx}: read {lo}..{hi}: {e}"));
        let want: Vec<Entry> = (lo..hi).map(|i| model.get(i).expect("in model").clone()).collect();
        assert_eq!(got, want, "{ctx}: read {lo}..{hi}");
    }
    for _ in 0..3 {
        let i = rng.gen_range((st.first_index - 1).max(model.base.index)..=model.last().index + 1);
        assert_eq!(s.term(GROUP, i).unwrap(), model.term(i), "{ctx}: term of {i}");
    }
}

fn run_seed(seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut vfs = MemVfs::new();
    let mut cfg = StorageConfig::new("/data", 1, 2);
    cfg.max_entry_size_bytes = 512;
    cfg.segment_size_bytes = rng.gen_range(74..300) * 8;
    cfg.write_mode = if rng.gen_bool(0.5) { WriteMode::Sync } else { WriteMode::Async };
    cfg.write_alignment_bytes = [0, 64, 512, 4096][rng.gen_range(0..4)];
    let mut s = Storage::open(Arc::new(vfs.clone()), cfg.clone()).unwrap();
    s.open_group(GROUP).unwrap();
    let mut model = Model { base: LogId::ZERO, entries: Vec::new(), snapshot: None };
    let mut report = FlushReport::default();
    let mut term = 1;
    // A background sync job in flight (async mode's fdatasync thread).
    let mut pending: Option<tarn_io::storage::SyncJob> = None;
    for step in 0..STEPS_PER_SEED {
        let what = match rng.gen_range(0..110) {
            100..=104 if pending.is_none() => {
                pending = Some(s.begin_sync(&mut report));
                assert!(report.failed.is_empty());
                "begin background sync"
            }
            100..=109 => {
                if let Some(job) = pending.take() {
                    let results = job.run();
                    s.finish_sync(job, results, &mut report);
                    assert!(report.failed.is_empty());
                }
                "finish background sync"
            }
            0..=44 => {
                let last = model.last().index;
                let lo = (model.floor() + 1).max(last.saturating_sub(4));
                let start = rng.gen_range(lo..=last + 1);
                if rng.gen_bool(0.2) {
                    term += 1;
                }
                let term_before = model.term(start - 1).unwrap_or(0);
                let t = term.max(term_before);
                let n = rng.gen_range(1..12);
                let entries: Vec<Entry> = (start..start + n).map(|i| random_entry(&mut rng, t, i)).collect();
                s.stage(GROUP, &entries).unwrap_or_else(|e| panic!("seed {seed} step {step}: stage: {e}"));
                model.entries.truncate((start - model.base.index - 1) as usize);
                model.entries.extend(entries);
                "append"
            }
            45..=69 => {
                s.flush(&mut report);
                assert!(report.failed.is_empty(), "seed {seed}: {:?}", report.failed);
                "flush"
            }
            70..=77 => {
                let from = rng.gen_range(model.floor() + 1..=model.last().index + 1);
                s.truncate_suffix(GROUP, from).unwrap();
                model.entries.truncate((from - model.base.index - 1) as usize);
                "truncate"
            }
            78..=85 => {
                // Snapshot at a point in the log, then compact behind it.
                let at = rng.gen_range(model.base.index..=model.last().index);
                if at == 0 || model.snapshot.is_some_and(|s| s.index > at) {
                    continue;
                }
                s.flush(&mut report);
                let upto = LogId::new(model.term(at).unwrap(), at);
                let meta = SnapshotMeta { last_log_id: upto, membership: Membership::new_voters([1]) };
                s.write_snapshot(GROUP, &meta, &at.to_le_bytes()).unwrap();
                s.compact(GROUP, upto).unwrap();
                model.snapshot = Some(upto);
                if at == model.last().index {
                    model.entries.clear();
                    model.base = upto;
                }
                "snapshot+compact"
            }
            86..=88 => {
                // A snapshot from a leader, past our log: the log restarts.
                term += 1;
                let upto = LogId::new(term, model.last().index + rng.gen_range(1..20));
                let meta = SnapshotMeta { last_log_id: upto, membership: Membership::new_voters([1, 2]) };
                s.write_snapshot(GROUP, &meta, b"leader").unwrap();
                model.entries.clear();
                model.base = upto;
                model.snapshot = Some(upto);
                "install snapshot"
            }
            _ => {
                // Flush (and sync), then restart cleanly or after a crash.
                if let Some(job) = pending.take() {
                    let results = job.run();
                    s.finish_sync(job, results, &mut report);
                }
                s.flush(&mut report);
                s.sync(&mut report);
                assert!(report.failed.is_empty());
                let crash = rng.gen_bool(0.5);
                drop(s);
                if crash {
                    vfs = vfs.crash(CrashMode::DropUnsynced);
                }
                s = Storage::open(Arc::new(vfs.clone()), cfg.clone()).unwrap();
                let rec =
                    s.open_group(GROUP).unwrap_or_else(|e| panic!("seed {seed} step {step}: reopen: {e}"));
                assert_eq!(rec.last_log_id, model.last(), "seed {seed} step {step}: recovered last");
                assert_eq!(rec.snapshot.map(|m| m.last_log_id), model.snapshot, "seed {seed} step {step}");
                assert_eq!(rec.truncated_tail, None, "seed {seed} step {step}: clean log has no torn tail");
                if crash {
                    "crash+reopen"
                } else {
                    "reopen"
                }
            }
        };
        check(&s, &model, &mut rng, seed, step, what);
    }
}

#[test]
fn random_operations_agree_with_the_model() {
    for seed in 0..SEEDS {
        run_seed(seed);
    }
}
