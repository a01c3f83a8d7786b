//! One seeded generator per run, split into independent sub-streams.
//!
//! Every subsystem (network, disk, clocks, workload, ...) draws from its own
//! ChaCha stream derived from the run seed and a fixed stream id. Adding a
//! new fault type, or drawing one more number in the network, therefore does
//! not reshuffle the disk's or the workload's decisions: a seed keeps meaning
//! roughly the same scenario as the simulator grows.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// The sub-streams of a run. The discriminants are part of what a seed
/// means: never renumber, only append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Stream {
    Profile = 1,
    Network = 2,
    Disk = 3,
    Clock = 4,
    Workload = 5,
    Process = 6,
    Core = 7,
    Operations = 8,
    Partition = 9,
    /// Temporary nodes and lock leases (drawn apart from the base workload).
    Ttl = 10,
    /// Lock waiters, polls, renewals and non-holder operations (issue 15 gap 4).
    Locks = 11,
    /// Quiescence (issue 17): whether a run quiesces, its idle windows and
    /// the faults of quiet leaders (drawn apart, so runs without it are
    /// what they were before).
    Quiesce = 12,
    /// Watching clients (drawn apart, so the workload is what it was).
    Watch = 13,
    /// Whether a run's timers fire on the driver's coalescing grid.
    Grid = 14,
    /// Client processes whose tasks share one session and one connection
    /// per node, and when a connection's reader runs (drawn apart, so runs
    /// without them are what they were).
    Sessions = 15,
}

/// Parts per million: the unit of every probability in the simulator.
pub const PPM: u32 = 1_000_000;

/// A deterministic generator: ChaCha8 keyed by the run seed, on one stream.
#[derive(Clone, Debug)]
pub struct SimRng {
    inner: ChaCha8Rng,
}

impl SimRng {
    /// The stream `stream` of run `seed`.
    pub fn new(seed: u64, stream: Stream) -> Self {
        Self::with_stream_id(seed, stream as u64)
    }

    /// A per-node stream: same subsystem, independent per node, so that a
    /// node's decisions do not depend on how many numbers another node drew.
    pub fn for_node(seed: u64, stream: Stream, node: u64) -> Self {
        Self::with_stream_id(seed, ((stream as u64) << 32) | (node & 0xffff_ffff))
    }

    fn with_stream_id(seed: u64, stream_id: u64) -> Self {
        let mut inner = ChaCha8Rng::seed_from_u64(seed);
        inner.set_stream(stream_id);
        SimRng { inner }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.inner.next_u64()
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias is below 2^-32 for
    /// every `n` the simulator uses, which is irrelevant for fault injection).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "SimRng::below(0): empty range");
        ((u128::from(self.inner.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi, "SimRng::between({lo}, {hi}): empty range");
        if hi - lo == u64::MAX {
            return self.next_u64();
        }
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `p_ppm` parts per million.
    pub fn chance(&mut self, p_ppm: u32) -> bool {
        debug_assert!(p_ppm <= PPM);
        p_ppm > 0 && (self.below(u64::from(PPM)) as u32) < p_ppm
    }

    /// A probability for a swarm profile: zero with probability
    /// `off_ppm` (so some seeds do not inject this fault at all), else
    /// uniform in `0..=max_ppm`.
    pub fn swarm_ppm(&mut self, off_ppm: u32, max_ppm: u32) -> u32 {
        if self.chance(off_ppm) {
            0
        } else {
            self.between(0, u64::from(max_ppm)) as u32
        }
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_same_numbers() {
        let mut a = SimRng::new(42, Stream::Network);
        let mut b = SimRng::new(42, Stream::Network);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }

    #[test]
    fn streams_are_independent() {
        let mut a = SimRng::new(42, Stream::Network);
        let mut b = SimRng::new(42, Stream::Disk);
        let xs: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        assert_ne!(xs, ys);
        let mut n1 = SimRng::for_node(42, Stream::Clock, 1);
        let mut n2 = SimRng::for_node(42, Stream::Clock, 2);
        assert_ne!(n1.next_u64(), n2.next_u64());
    }

    #[test]
    fn ranges_stay_in_bounds_and_cover() {
        let mut r = SimRng::new(7, Stream::Workload);
        let mut seen = [false; 5];
        for _ in 0..1000 {
            let x = r.between(10, 14);
            assert!((10..=14).contains(&x));
            seen[(x - 10) as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
        assert!(!r.chance(0));
        assert!(r.chance(PPM));
    }
}
