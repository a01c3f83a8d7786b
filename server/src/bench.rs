//! `tarn bench`: a closed-loop load generator.
//!
//! Mirrors Dongting's benchmark so the two compare side by side: by default
//! one connection with 2,000 requests in flight, 256-byte values over
//! 100,000 random keys, 3 s of warm-up, then a fixed duration; it prints
//! throughput and latency percentiles measured after the warm-up.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::client::{Client, ClientConfig};
use crate::protocol::Consistency;
use tarn_kv::Command;

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub connections: usize,
    /// Requests in flight in total (spread over the connections).
    pub in_flight: usize,
    /// Share of gets, 0.0..=1.0 (the rest are puts).
    pub get_ratio: f64,
    pub keys: u64,
    pub value_size_bytes: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub consistency: Consistency,
    /// Keys are spread over groups `1..=groups` (each must exist).
    pub groups: u64,
    /// Put every key once before the warm-up, so gets find them.
    pub prefill: bool,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            connections: 1,
            in_flight: 2_000,
            get_ratio: 0.0,
            keys: 100_000,
            value_size_bytes: 256,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(3),
            consistency: Consistency::Linearizable,
            groups: 1,
            prefill: false,
        }
    }
}

/// What `tarn bench` prints (also as one JSON object with `--json`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BenchReport {
    pub ops: u64,
    pub errors: u64,
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
    /// User plus system CPU time of this whole process over the measured
    /// seconds (the servers too with `--embedded`): what a second of work
    /// costs, comparable across machines with different core counts.
    pub cpu_seconds: f64,
    pub ops_per_cpu_sec: f64,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0} ops/s ({} ops, {} errors in {:.1} s); latency us: mean {:.0} p50 {} p99 {} p99.9 {} max {}; \
             CPU {:.2} s, {:.0} ops/CPU-s",
            self.ops_per_sec,
            self.ops,
            self.errors,
            self.seconds,
            self.mean_us,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.cpu_seconds,
            self.ops_per_cpu_sec
        )
    }
}

/// User plus system CPU seconds of this process so far.
#[cfg(unix)]
fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes only into `usage`, a zeroed plain C struct
    // owned by this frame; RUSAGE_SELF is always valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return f64::NAN;
    }
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

#[cfg(not(unix))]
fn process_cpu_seconds() -> f64 {
    f64::NAN
}

/// xorshift64*: a cheap per-worker key generator (not for anything secret).
fn next_rand(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// How long the bench's own directory lives without a renewal: it is a
/// temporary directory, so a bench that dies leaves nothing behind for long.
const BENCH_DIR_TTL: Duration = Duration::from_secs(60);

pub async fn run(client_config: ClientConfig, config: BenchConfig) -> Result<BenchReport, String> {
    if config.connections == 0 || config.in_flight == 0 || config.keys == 0 || config.groups == 0 {
        return Err("--connections, --in-flight, --keys and --groups must be positive".into());
    }
    if !(0.0..=1.0).contains(&config.get_ratio) {
        return Err(format!("--get-ratio {} must be within 0..=1", config.get_ratio));
    }
    // A client session lives in one group: one client per group and connection.
    let clients: Vec<Vec<Client>> = (1..=config.groups)
        .map(|group| {
            let c = ClientConfig { group, ..client_config.clone() };
            (0..config.connections).map(|_| Client::new(c.clone())).collect()
        })
        .collect();
    // One temporary directory per group, named for this run: removed when
    // the bench ends (or dies: its TTL runs out), never mixed with another
    // run's keys.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let dir = format!("bench{:08x}", next_rand(&mut (now as u64 ^ u64::from(std::process::id()) | 1)) as u32);
    let ttl_nanos = BENCH_DIR_TTL.as_nanos() as u64;
    let owners: Vec<Client> = clients.iter().map(|per_group| per_group[0].clone()).collect();
    for (g, owner) in owners.iter().enumerate() {
        // Fail fast with a clear message if the cluster or a group is not there.
        owner
            .write(Command::MkdirTemp { key: dir.clone(), ttl_nanos })
            .await
            .map_err(|e| format!("group {} not ready: {e}", g + 1))?;
    }
    let renew = {
        let (owners, dir) = (owners.clone(), dir.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(BENCH_DIR_TTL / 3).await;
                for owner in &owners {
                    let _ = owner.write(Command::UpdateTtl { key: dir.clone(), ttl_nanos }).await;
                }
            }
        })
    };
    let value = Bytes::from(vec![b'v'; config.value_size_bytes.max(1)]);
    if config.prefill {
        prefill(&clients, &config, &value, &dir).await?;
    }
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(config.in_flight);
    for w in 0..config.in_flight {
        let clients: Vec<Client> =
            clients.iter().map(|per_group| per_group[w % config.connections].clone()).collect();
        let (measuring, stop, errors, value) =
            (measuring.clone(), stop.clone(), errors.clone(), value.clone());
        let (config, dir) = (config.clone(), dir.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (w as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
            let mut latencies: Vec<u32> = Vec::with_capacity(1 << 12);
            let get_threshold = (config.get_ratio * u32::MAX as f64) as u64;
            while !stop.load(Ordering::Relaxed) {
                let r = next_rand(&mut rng);
                let n = r % config.keys;
                let (client, key) = (&clients[(n % config.groups) as usize], format!("{dir}.k{n}"));
                let start = Instant::now();
                let ok = if (r >> 32) < get_threshold {
                    client.get_with(&key, config.consistency).await.is_ok()
                } else {
                    client.put(&key, value.clone()).await.is_ok()
                };
                if measuring.load(Ordering::Relaxed) {
                    if ok {
                        latencies.push(start.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        }));
    }
    tokio::time::sleep(config.warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let (start, cpu_start) = (Instant::now(), process_cpu_seconds());
    tokio::time::sleep(config.duration).await;
    measuring.store(false, Ordering::Relaxed);
    let (seconds, cpu_seconds) = (start.elapsed().as_secs_f64(), process_cpu_seconds() - cpu_start);
    stop.store(true, Ordering::Relaxed);
    let mut all: Vec<u32> = Vec::new();
    for t in tasks {
        all.extend(t.await.map_err(|e| e.to_string())?);
    }
    renew.abort();
    // Let the directories go now rather than after their TTL.
    for owner in &owners {
        let short = Duration::from_millis(1).as_nanos() as u64;
        let _ = owner.write(Command::UpdateTtl { key: dir.clone(), ttl_nanos: short }).await;
    }
    all.sort_unstable();
    let pct = |p: f64| -> u64 {
        if all.is_empty() {
            return 0;
        }
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        all[i] as u64
    };
    let ops = all.len() as u64;
    Ok(BenchReport {
        ops,
        errors: errors.load(Ordering::Relaxed),
        seconds,
        ops_per_sec: ops as f64 / seconds,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
        max_us: all.last().copied().unwrap_or(0) as u64,
        mean_us: if all.is_empty() { 0.0 } else { all.iter().map(|&l| l as f64).sum::<f64>() / ops as f64 },
        cpu_seconds,
        ops_per_cpu_sec: ops as f64 / cpu_seconds,
    })
}

/// Puts every key once, `in_flight` at a time, so that gets find values.
async fn prefill(
    clients: &[Vec<Client>],
    config: &BenchConfig,
    value: &Bytes,
    dir: &str,
) -> Result<(), String> {
    let workers = config.in_flight.min(config.keys as usize).max(1);
    let mut tasks = Vec::with_capacity(workers);
    for w in 0..workers {
        let clients: Vec<Client> =
            clients.iter().map(|per_group| per_group[w % config.connections].clone()).collect();
        let keys: Vec<u64> = (w as u64..config.keys).step_by(workers).collect();
        let (value, dir, groups) = (value.clone(), dir.to_string(), config.groups);
        tasks.push(tokio::spawn(async move {
            for n in keys {
                let key = format!("{dir}.k{n}");
                clients[(n % groups) as usize]
                    .put(&key, value.clone())
                    .await
                    .map_err(|e| format!("prefill of {key}: {e}"))?;
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}
