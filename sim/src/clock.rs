//! Per-node clocks: the monotonic clock each node's core sees.
//!
//! `local(t) = offset + t + t * drift_ppm / 10^6 + jumped`, where `t` is the
//! world's virtual time. Offsets are harmless for a monotonic clock (each node
//! has its own origin) but catch code that compares clocks across nodes;
//! drift within the configured bound is what lease reads must survive;
//! large forward jumps (a suspended VM, a stalled host) and drift beyond the
//! bound are injected only in runs with lease reads off, where they must not
//! break safety; lease-read runs get only small jumps that keep each clock
//! within the bound over any election timeout (`World::lease_safe_jump_max_ns`).
//! A monotonic clock never goes backwards, so jumps are forward only.

use tarn_core::Nanos;

const PPM_I128: i128 = 1_000_000;

#[derive(Clone, Copy, Debug)]
pub struct NodeClock {
    pub offset_ns: Nanos,
    /// Rate error in parts per million; negative means slow.
    pub drift_ppm: i64,
    /// Sum of all forward jumps so far.
    pub jumped_ns: Nanos,
}

impl NodeClock {
    pub fn new(offset_ns: Nanos, drift_ppm: i64) -> Self {
        assert!(drift_ppm.abs() < 500_000, "drift of {drift_ppm} ppm is not a clock");
        NodeClock { offset_ns, drift_ppm, jumped_ns: 0 }
    }

    /// The node's local monotonic time at world time `t`.
    pub fn local(&self, t: Nanos) -> Nanos {
        let t = i128::from(t);
        let drifted = t + t * i128::from(self.drift_ppm) / PPM_I128;
        (i128::from(self.offset_ns) + drifted + i128::from(self.jumped_ns)) as Nanos
    }

    /// The earliest world time at which the local clock reads at least
    /// `local_deadline` (never earlier than `now`).
    pub fn world_time_of(&self, now: Nanos, local_deadline: Nanos) -> Nanos {
        if self.local(now) >= local_deadline {
            return now;
        }
        let base = i128::from(self.offset_ns) + i128::from(self.jumped_ns);
        let want = i128::from(local_deadline) - base;
        let rate = PPM_I128 + i128::from(self.drift_ppm);
        // Ceiling division, then fix the rounding of `local` by stepping.
        let mut t = ((want * PPM_I128 + rate - 1) / rate).max(i128::from(now)) as Nanos;
        while self.local(t) < local_deadline {
            t += 1;
        }
        while t > now && self.local(t - 1) >= local_deadline {
            t -= 1;
        }
        t
    }

    pub fn jump(&mut self, by_ns: Nanos) {
        self.jumped_ns += by_ns;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_and_offset_shape_local_time() {
        let c = NodeClock::new(1_000, 100);
        assert_eq!(c.local(0), 1_000);
        assert_eq!(c.local(1_000_000_000), 1_000 + 1_000_000_000 + 100_000);
        let slow = NodeClock::new(0, -100);
        assert_eq!(slow.local(1_000_000_000), 1_000_000_000 - 100_000);
    }

    #[test]
    fn world_time_of_inverts_local_exactly() {
        for drift in [-200_000, -333, 0, 7, 1000, 250_000] {
            let mut c = NodeClock::new(12_345, drift);
            c.jump(999);
            for deadline in [0, 12_345, 1_000_000, 987_654_321, 5_000_000_000] {
                let t = c.world_time_of(0, deadline);
                assert!(c.local(t) >= deadline, "drift {drift} deadline {deadline}");
                assert!(
                    t == 0 || c.local(t - 1) < deadline,
                    "drift {drift} deadline {deadline}: not earliest"
                );
            }
        }
    }

    #[test]
    fn clocks_are_monotonic_through_jumps() {
        let mut c = NodeClock::new(0, -1000);
        let before = c.local(500);
        c.jump(1_000_000);
        assert!(c.local(500) > before);
        assert!(c.local(501) >= c.local(500));
    }
}
