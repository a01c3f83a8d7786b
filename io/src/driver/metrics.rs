//! Fixed-bucket histograms and per-group counters the driver keeps while it
//! runs, for the embedding server to export (tarn's `/metrics`).
//!
//! Lock-free on the hot path: an observation is a bucket search over a
//! short static table and two relaxed atomic adds. A reader takes a
//! [`HistogramSnapshot`]; its buckets, sum and count are read one by one, so
//! a snapshot taken during observations may be off by those in flight.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds (nanoseconds) of the duration histograms: 50 µs to 60 s.
pub const DURATION_BOUNDS_NANOS: &[u64] = &[
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
    60_000_000_000,
];

/// Upper bounds of the size histograms (entries or requests per batch).
pub const COUNT_BOUNDS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384];

/// A histogram over fixed bucket bounds, updated with relaxed atomics.
#[derive(Debug)]
pub struct Histogram {
    /// Inclusive upper bounds, ascending, in recorded units.
    bounds: &'static [u64],
    /// One count per bound, then the overflow (`+Inf`) bucket.
    buckets: Box<[AtomicU64]>,
    /// Sum of the recorded values, in recorded units.
    sum: AtomicU64,
    /// Recorded units per exported unit (1e9 for nanoseconds → seconds).
    per_unit: f64,
}

impl Histogram {
    /// A histogram over `bounds` (ascending, in recorded units), exported
    /// divided by `per_unit` (1e9 to record nanoseconds and export seconds).
    pub fn new(bounds: &'static [u64], per_unit: f64) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bounds must ascend");
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            per_unit,
        }
    }

    /// Durations, recorded in nanoseconds and exported in seconds.
    pub fn durations() -> Self {
        Histogram::new(DURATION_BOUNDS_NANOS, 1e9)
    }

    /// Batch sizes (entries, requests), exported as counts.
    pub fn counts() -> Self {
        Histogram::new(COUNT_BOUNDS, 1.0)
    }

    /// Records `value` `n` times (one batch of `n` requests that took as long).
    pub fn observe_n(&self, value: u64, n: u64) {
        let i = self.bounds.partition_point(|b| *b < value);
        self.buckets[i].fetch_add(n, Relaxed);
        self.sum.fetch_add(value.saturating_mul(n), Relaxed);
    }

    /// Records `value` once.
    pub fn observe(&self, value: u64) {
        self.observe_n(value, 1);
    }

    /// Records a duration (for a histogram made by [`Histogram::durations`]).
    pub fn observe_duration(&self, d: Duration) {
        self.observe(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// The counts so far, in exported units.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut buckets = Vec::with_capacity(self.buckets.len());
        let mut count = 0u64;
        for (i, b) in self.buckets.iter().enumerate() {
            let n = b.load(Relaxed);
            count = count.saturating_add(n);
            let bound = self.bounds.get(i).map_or(f64::INFINITY, |b| *b as f64 / self.per_unit);
            buckets.push((bound, n));
        }
        HistogramSnapshot { buckets, sum: self.sum.load(Relaxed) as f64 / self.per_unit, count }
    }
}

impl Default for Histogram {
    /// A duration histogram ([`Histogram::durations`]).
    fn default() -> Self {
        Histogram::durations()
    }
}

/// A histogram's counts at one moment, in exported units.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound, count in this bucket alone)`, ascending; the last
    /// bound is `f64::INFINITY`. Not cumulative.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of all observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

/// Counters of one group on this node, kept by its task (see
/// [`GroupHandle::counters`](super::GroupHandle::counters)).
#[derive(Debug, Default)]
pub struct GroupCounters {
    /// Times this node saw a new leader (a different node, or the same in a
    /// new term) for the group.
    pub leader_changes: AtomicU64,
    /// Snapshots this node took of its own state (durable and recorded).
    pub snapshots_taken: AtomicU64,
    /// Leader snapshots this node installed.
    pub snapshots_installed: AtomicU64,
    /// Snapshots that failed (taken or installed).
    pub snapshot_failures: AtomicU64,
    /// How long a snapshot took: encoding and writing it (taken), or
    /// decoding the staged transfer (installed), until durable and recorded.
    pub snapshot_seconds: Histogram,
    /// How long applying one batch of committed entries took, answers to
    /// their proposers included. The core hands entries over in the turn
    /// that commits them once they are durable here (a follower whose own
    /// write lags, or an entry fetched back from disk, waits first: that
    /// wait is not counted).
    pub apply_seconds: Histogram,
    /// How long a proposal made on this node took from reaching the group
    /// to its answer (appended, replicated to a quorum, durable, applied):
    /// what a client's write costs inside the server. Refused proposals are
    /// not counted.
    pub propose_seconds: Histogram,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket_and_the_sum() {
        let h = Histogram::counts();
        h.observe(1);
        h.observe(3);
        h.observe_n(5, 2);
        h.observe(1 << 20);
        let s = h.snapshot();
        assert_eq!(s.count, 5);
        assert_eq!(s.sum, (1 + 3 + 10 + (1 << 20)) as f64);
        assert_eq!(s.buckets[0], (1.0, 1));
        assert_eq!(s.buckets[2], (4.0, 1));
        assert_eq!(s.buckets[3], (8.0, 2));
        assert_eq!(*s.buckets.last().expect("+Inf"), (f64::INFINITY, 1));
    }

    #[test]
    fn durations_export_seconds() {
        let h = Histogram::durations();
        h.observe_duration(Duration::from_millis(3));
        let s = h.snapshot();
        assert!((s.sum - 0.003).abs() < 1e-12, "{}", s.sum);
        let (bound, n) = s.buckets.iter().copied().find(|(_, n)| *n > 0).expect("one bucket");
        assert_eq!((bound, n), (0.005, 1));
    }
}
