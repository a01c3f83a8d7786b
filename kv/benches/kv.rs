//! Applied commands per second on a large tree, and snapshot throughput.
//!
//! `cargo bench -p tarn-kv` (set `TARN_KV_BENCH_KEYS` to change the key count, default 1M;
//! `TARN_KV_BENCH_ROUNDS` for repetitions, default 3, the median is printed).
//! Keys are spread over 1,000 directories (`d123.k456789`), values are 256 bytes (shared
//! `Bytes`, as a decoded entry would hand them over). One client session, acknowledging as
//! it goes, so the session table is on the path like in production.

use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use tarn_kv::{decode_snapshot, encode_entry, Command, KvConfig, KvEntry, KvStateMachine, Request};

const DIRS: usize = 1_000;
const VALUE_SIZE_BYTES: usize = 256;

fn key(i: usize) -> String {
    format!("d{}.k{:07}", i % DIRS, i)
}

/// A simple xorshift so the access pattern is random but the bench needs no RNG crate.
fn shuffled(n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for i in (1..n).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        order.swap(i, (state % (i as u64 + 1)) as usize);
    }
    order
}

struct Run {
    kv: KvStateMachine,
    index: u64,
    seq: u64,
}

impl Run {
    fn new() -> Self {
        let mut run = Run { kv: KvStateMachine::new(KvConfig::default()), index: 0, seq: 0 };
        for d in 0..DIRS {
            run.apply(Command::Mkdir { key: format!("d{d}") });
        }
        run
    }

    fn request(&mut self, command: Command) -> Request {
        self.seq += 1;
        Request { client_id: 1, seq: self.seq, first_unacked_seq: self.seq, command }
    }

    fn apply(&mut self, command: Command) {
        let request = self.request(command);
        self.index += 1;
        let response = self.kv.apply(self.index, self.index, &request);
        debug_assert!(response.is_ok(), "{response:?}");
        black_box(response).ok();
    }
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    samples[samples.len() / 2]
}

fn report(name: &str, samples: Vec<f64>, unit: &str) {
    let min = samples.iter().cloned().fold(f64::MAX, f64::min);
    let max = samples.iter().cloned().fold(0.0, f64::max);
    println!("{name:<44} median {:>12.0} {unit}   (min {min:.0}, max {max:.0})", median(samples));
}

fn main() {
    let keys: usize =
        std::env::var("TARN_KV_BENCH_KEYS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let rounds: usize = std::env::var("TARN_KV_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let value = Bytes::from(vec![b'x'; VALUE_SIZE_BYTES]);
    let other = Bytes::from(vec![b'y'; VALUE_SIZE_BYTES]);
    let names: Vec<String> = (0..keys).map(key).collect();
    let order = shuffled(keys);
    println!("tarn-kv bench: {keys} keys in {DIRS} dirs, {VALUE_SIZE_BYTES}-byte values, {rounds} rounds");

    let (mut insert, mut overwrite, mut get, mut cas, mut decode_apply) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut encode_mb, mut decode_mb, mut digest_mb) = (vec![], vec![], vec![]);
    let mut remove = vec![];
    let mut fork_ms = vec![];
    let (mut after_fork, mut after_fork_max_ms) = (vec![], vec![]);
    let mut snapshot_bytes = 0usize;
    for _ in 0..rounds {
        let mut run = Run::new();
        // Requests are built before timing: a decoded entry hands them over ready-made.
        let requests: Vec<Request> = order
            .iter()
            .map(|&i| run.request(Command::Put { key: names[i].clone(), value: value.clone() }))
            .collect();
        let start = Instant::now();
        for request in &requests {
            run.index += 1;
            black_box(run.kv.apply(run.index, run.index, request)).ok();
        }
        insert.push(keys as f64 / start.elapsed().as_secs_f64());
        assert_eq!(run.kv.node_count(), keys + DIRS);

        let requests: Vec<Request> = order
            .iter()
            .map(|&i| run.request(Command::Put { key: names[i].clone(), value: other.clone() }))
            .collect();
        let start = Instant::now();
        for request in &requests {
            run.index += 1;
            black_box(run.kv.apply(run.index, run.index, request)).ok();
        }
        overwrite.push(keys as f64 / start.elapsed().as_secs_f64());

        let start = Instant::now();
        for &i in &order {
            black_box(run.kv.get(&names[i]).unwrap());
        }
        get.push(keys as f64 / start.elapsed().as_secs_f64());

        let requests: Vec<Request> = order
            .iter()
            .map(|&i| {
                run.request(Command::CompareAndSet {
                    key: names[i].clone(),
                    expected: Some(other.clone()),
                    new: Some(value.clone()),
                })
            })
            .collect();
        let start = Instant::now();
        for request in &requests {
            run.index += 1;
            let response = run.kv.apply(run.index, run.index, request);
            debug_assert!(response.is_ok());
            black_box(response).ok();
        }
        cas.push(keys as f64 / start.elapsed().as_secs_f64());

        // The production path: decode the entry payload, then apply (one request per entry).
        let payloads: Vec<Vec<u8>> = order
            .iter()
            .map(|&i| {
                let request = run.request(Command::Put { key: names[i].clone(), value: other.clone() });
                encode_entry(&KvEntry { leader_time_nanos: 1, requests: vec![request] })
            })
            .collect();
        let start = Instant::now();
        for payload in &payloads {
            run.index += 1;
            black_box(run.kv.apply_entry_bytes(run.index, payload).unwrap());
        }
        decode_apply.push(keys as f64 / start.elapsed().as_secs_f64());

        let start = Instant::now();
        let fork = run.kv.fork();
        fork_ms.push(start.elapsed().as_secs_f64() * 1e3);
        // Writes while the fork is alive (being encoded elsewhere) pay the copy on write,
        // one chunk or index shard at a time: the slowest single apply is the pause a client
        // sees; the throughput over all keys is what the copy costs in total.
        let requests: Vec<Request> = order
            .iter()
            .map(|&i| run.request(Command::Put { key: names[i].clone(), value: value.clone() }))
            .collect();
        let (start, mut slowest) = (Instant::now(), 0f64);
        for request in &requests {
            run.index += 1;
            let one = Instant::now();
            black_box(run.kv.apply(run.index, run.index, request)).ok();
            slowest = slowest.max(one.elapsed().as_secs_f64() * 1e3);
        }
        after_fork.push(keys as f64 / start.elapsed().as_secs_f64());
        after_fork_max_ms.push(slowest);
        drop(fork);

        let start = Instant::now();
        let chunks: Vec<Bytes> = run.kv.snapshot_chunks(1 << 20).collect();
        let elapsed = start.elapsed().as_secs_f64();
        snapshot_bytes = chunks.iter().map(|c| c.len()).sum();
        encode_mb.push(snapshot_bytes as f64 / 1e6 / elapsed);

        let start = Instant::now();
        let decoded = decode_snapshot(KvConfig::default(), chunks.iter().map(|c| &c[..])).unwrap();
        decode_mb.push(snapshot_bytes as f64 / 1e6 / start.elapsed().as_secs_f64());

        let start = Instant::now();
        let digest = run.kv.digest();
        digest_mb.push(snapshot_bytes as f64 / 1e6 / start.elapsed().as_secs_f64());
        assert_eq!(decoded.digest(), digest);
        drop(decoded);

        let requests: Vec<Request> =
            order.iter().map(|&i| run.request(Command::Remove { key: names[i].clone() })).collect();
        let start = Instant::now();
        for request in &requests {
            run.index += 1;
            black_box(run.kv.apply(run.index, run.index, request)).ok();
        }
        remove.push(keys as f64 / start.elapsed().as_secs_f64());
        assert_eq!(run.kv.node_count(), DIRS);
    }
    report("put, new keys (apply)", insert, "ops/s");
    report("put, overwrite (apply)", overwrite, "ops/s");
    report("get (read path)", get, "ops/s");
    report("compare-and-set, success (apply)", cas, "ops/s");
    report("put overwrite, decode entry + apply", decode_apply, "ops/s");
    report("remove (apply)", remove, "ops/s");
    println!("snapshot size: {:.1} MB", snapshot_bytes as f64 / 1e6);
    report("fork (copy of the state for encoding elsewhere)", fork_ms, "ms");
    report("put overwrite while a fork is alive (copy on write)", after_fork, "ops/s");
    report("slowest single apply while a fork is alive", after_fork_max_ms, "ms");
    report("snapshot encode", encode_mb, "MB/s");
    report("snapshot decode (verify + rebuild + digest)", decode_mb, "MB/s");
    report("digest", digest_mb, "MB/s");
}
