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
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
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
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0} ops/s ({} ops, {} errors in {:.1} s); latency us: mean {:.0} p50 {} p99 {} p99.9 {} max {}",
            self.ops_per_sec,
            self.ops,
            self.errors,
            self.seconds,
            self.mean_us,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us
        )
    }
}

/// xorshift64*: a cheap per-worker key generator (not for anything secret).
fn next_rand(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

pub async fn run(client_config: ClientConfig, config: BenchConfig) -> Result<BenchReport, String> {
    if config.connections == 0 || config.in_flight == 0 || config.keys == 0 {
        return Err("--connections, --in-flight and --keys must be positive".into());
    }
    if !(0.0..=1.0).contains(&config.get_ratio) {
        return Err(format!("--get-ratio {} must be within 0..=1", config.get_ratio));
    }
    let clients: Vec<Client> = (0..config.connections).map(|_| Client::new(client_config.clone())).collect();
    // Fail fast with a clear message if the cluster is not there.
    clients[0].mkdir("bench").await.map_err(|e| format!("cluster not ready: {e}"))?;
    let value = Bytes::from(vec![b'v'; config.value_size_bytes.max(1)]);
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(config.in_flight);
    for w in 0..config.in_flight {
        let client = clients[w % clients.len()].clone();
        let (measuring, stop, errors, value) =
            (measuring.clone(), stop.clone(), errors.clone(), value.clone());
        let config = config.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ ((w as u64 + 1) * 0xD1B5_4A32_D192_ED03);
            let mut latencies: Vec<u32> = Vec::with_capacity(1 << 12);
            let get_threshold = (config.get_ratio * u32::MAX as f64) as u64;
            while !stop.load(Ordering::Relaxed) {
                let r = next_rand(&mut rng);
                let key = format!("bench.k{}", r % config.keys);
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
    let start = Instant::now();
    tokio::time::sleep(config.duration).await;
    measuring.store(false, Ordering::Relaxed);
    let seconds = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut all: Vec<u32> = Vec::new();
    for t in tasks {
        all.extend(t.await.map_err(|e| e.to_string())?);
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
    })
}
