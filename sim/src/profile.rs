//! Fault profiles. A "swarm" profile draws, per seed, which faults are on and
//! how often they strike (Groce et al., "Swarm Testing"): a seed that turns
//! most faults off explores deep protocol paths under one fault type, while
//! another seed mixes everything. `calm` injects nothing (a baseline that
//! must always pass quickly); `chaos` turns everything on at high rates.

use std::fmt;
use std::str::FromStr;

use tarn_core::Nanos;

use crate::net::NetConfig;
use crate::queue::{NANOS_PER_MICRO, NANOS_PER_MILLI, NANOS_PER_SECOND};
use crate::rng::{SimRng, PPM};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfileKind {
    Swarm,
    Calm,
    Chaos,
    /// Lease reads under the worst clocks the core's bound allows (issue 15
    /// gap 5): every clock drifts at the bound, one way or the other; the
    /// leader is cut off and paused often; election timeouts are barely
    /// randomized, so followers give up on a leader right when the bound
    /// says its lease must have ended, and lease timing bugs surface.
    Lease,
}

impl FromStr for ProfileKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "swarm" => Ok(ProfileKind::Swarm),
            "calm" => Ok(ProfileKind::Calm),
            "chaos" => Ok(ProfileKind::Chaos),
            "lease" => Ok(ProfileKind::Lease),
            other => Err(format!("unknown fault profile {other:?}: use swarm, calm, chaos or lease")),
        }
    }
}

impl fmt::Display for ProfileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProfileKind::Swarm => "swarm",
            ProfileKind::Calm => "calm",
            ProfileKind::Chaos => "chaos",
            ProfileKind::Lease => "lease",
        })
    }
}

/// The mean interval between two faults of one kind; `0` turns it off.
#[derive(Clone, Debug, Default)]
pub struct FaultIntervals {
    pub partition_ns: Nanos,
    pub one_way_partition_ns: Nanos,
    pub isolate_ns: Nanos,
    pub clog_ns: Nanos,
    pub flap_ns: Nanos,
    pub crash_ns: Nanos,
    pub pause_ns: Nanos,
    pub clock_jump_ns: Nanos,
    pub transfer_leader_ns: Nanos,
    /// Membership changes: take a voter out, add it back as a learner, promote it.
    pub membership_ns: Nanos,
    /// Wiped disks: a node loses everything and rejoins empty (removed,
    /// re-added as a learner, promoted by the simulated operator).
    pub wipe_ns: Nanos,
}

/// Snapshot and compaction knobs, passed to the core's `Config`.
#[derive(Clone, Debug)]
pub struct SnapshotKnobs {
    /// `snapshot_after_entries`: small, so runs take snapshots, compact and
    /// install them on lagging followers.
    pub after_entries: u64,
    pub after_bytes: u64,
    /// `log_keep_tail_entries`: entries kept before a snapshot.
    pub keep_tail_entries: u64,
    /// `max_snapshot_chunk_bytes`: one transfer chunk.
    pub chunk_bytes: usize,
    /// `max_log_tail_entries`: the core's in-memory tail (smaller means
    /// more `FetchEntries` from storage).
    pub log_tail_entries: usize,
}

impl SnapshotKnobs {
    /// Moderate: a snapshot every few hundred entries.
    pub fn calm() -> SnapshotKnobs {
        SnapshotKnobs {
            after_entries: 500,
            after_bytes: 256 << 20,
            keep_tail_entries: 100,
            chunk_bytes: 4096,
            log_tail_entries: 65_536,
        }
    }

    fn draw(rng: &mut SimRng) -> SnapshotKnobs {
        SnapshotKnobs {
            after_entries: rng.between(20, 400),
            after_bytes: *rng.pick(&[4 << 10, 64 << 10, 256 << 20]),
            keep_tail_entries: *rng.pick(&[0, 5, 50, 500]),
            chunk_bytes: *rng.pick(&[64, 512, 4096, 1 << 20]),
            log_tail_entries: *rng.pick(&[16, 256, 65_536]),
        }
    }
}

/// Replication flow-control knobs, passed to the core's `Config`. Small
/// appends and a small window make a follower's catch-up take many rounds
/// through a divergent suffix instead of one (issue 15, gap 1: with the
/// defaults, backtracking almost always landed on the divergence at once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicationKnobs {
    /// `max_entries_per_msg`.
    pub entries_per_msg: usize,
    /// `max_inflight_msgs`.
    pub inflight_msgs: usize,
}

impl ReplicationKnobs {
    /// The core's defaults.
    pub fn calm() -> ReplicationKnobs {
        ReplicationKnobs { entries_per_msg: 4096, inflight_msgs: 256 }
    }

    /// Half the seeds keep the defaults (so their runs are what they were
    /// before these knobs existed); the others take small values.
    fn draw(rng: &mut SimRng) -> ReplicationKnobs {
        if rng.chance(PPM / 2) {
            return ReplicationKnobs::calm();
        }
        ReplicationKnobs {
            entries_per_msg: *rng.pick(&[2, 3, 8, 64, 256]),
            inflight_msgs: *rng.pick(&[4, 16]),
        }
    }
}

/// Everything a run's faults and workload depend on, drawn from the seed.
#[derive(Clone, Debug)]
pub struct Profile {
    pub kind: ProfileKind,
    pub net: NetConfig,
    pub intervals: FaultIntervals,
    /// How long a partition, clog, flap, pause or crash lasts (uniform up to).
    pub fault_duration_max_ns: Nanos,
    /// Per-node clock drift is uniform in `-drift_ppm_max..=drift_ppm_max`.
    pub drift_ppm_max: i64,
    /// Clock jumps (forward) are at most this long (lease-read runs: at most
    /// what keeps the clock within the drift bound, which is far less).
    pub clock_jump_max_ns: Nanos,
    /// Lease reads on; if so, drift stays within the core's bound and clock
    /// jumps are small enough to stay within it too.
    pub lease_read: bool,
    /// `Config::election_backoff`. The lease profile turns it off: it wants
    /// a new leader as soon as the configuration allows, which is what an
    /// over-long lease must lose against.
    pub election_backoff: bool,
    /// Clients watching the tree through the request path (0-2 a run,
    /// drawn from their own stream). The lease profile has none: its runs
    /// are built around the few milliseconds of one lease race, and the
    /// watchers' turns moved the only seed of 1,500 that found a 2 % too
    /// long lease out of it.
    pub watchers: bool,
    /// The timer grid the production driver puts every group's timers on
    /// (`NodeConfig::heartbeat_coalesce`, lowered as `Node::start` lowers
    /// it): half the runs of swarm and chaos use the server's default,
    /// 10 ms, the others none. Drawn from its own stream.
    pub timer_grid_ns: Nanos,
    /// Disk completion latency, uniform, plus a slow tail.
    pub disk_latency_min_ns: Nanos,
    pub disk_latency_max_ns: Nanos,
    pub disk_slow_ppm: u32,
    pub disk_slow_max_ns: Nanos,
    /// Disk faults (storage engine over `SimVfs`): per operation.
    pub disk_write_error_ppm: u32,
    pub disk_sync_error_ppm: u32,
    pub disk_read_error_ppm: u32,
    pub disk_corruption_ppm: u32,
    /// Workload.
    pub clients: u32,
    pub keys: u64,
    pub client_think_max_ns: Nanos,
    /// Fraction of reads (vs writes) and of reads that go through the log.
    pub read_ppm: u32,
    pub log_read_ppm: u32,
    /// Probability that a client sends its next operation to a random node
    /// instead of the leader it last found (so some requests always reach
    /// followers and other would-be leaders).
    pub client_random_target_ppm: u32,
    /// A client waits this long for an answer before retrying elsewhere.
    pub client_timeout_ns: Nanos,
    /// Probability that the process dies in the middle of a storage flush
    /// (its last write torn), per flush.
    pub crash_mid_flush_ppm: u32,
    pub snapshots: SnapshotKnobs,
    /// Share of operations on temporary registers (`PutTemp` with a TTL
    /// drawn in `temp_ttl_min_ns..=temp_ttl_max_ns`, or a read of one).
    pub temp_ppm: u32,
    pub temp_ttl_min_ns: Nanos,
    pub temp_ttl_max_ns: Nanos,
    /// The lease of lock `l1` (lock `l0` keeps an hour-long lease): short
    /// enough that leases run out while a client holds the lock.
    pub short_lock_lease_ns: Nanos,
    pub replication: ReplicationKnobs,
    /// Every node's clock drifts by exactly `+-drift_ppm_max` (not uniform
    /// within it): the lease profile's worst case.
    pub drift_at_bound: bool,
    /// `election_timeout_max_ns - election_timeout_min_ns` (the core's
    /// default spread is 150 ms).
    pub election_timeout_spread_ns: Nanos,
    /// Share of isolations that cut off the leader rather than a random
    /// node: a leader keeps accepting writes (a divergent suffix) and
    /// serving lease reads until it notices.
    pub isolate_leader_ppm: u32,
    /// Quiescence (issue 17): the core's `Config::quiesce`, node-level
    /// liveness pings between every pair of nodes, client-free idle windows
    /// in which the group goes quiet, and crashed or cut-off leaders of a
    /// quiet group. Drawn from its own stream (`Profile::draw_quiesce`).
    pub quiesce: Option<QuiesceKnobs>,
}

/// How a quiescent run idles and what strikes its quiet leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuiesceKnobs {
    /// A client-free idle window starts every this long on average.
    pub idle_every_ns: Nanos,
    /// ... and lasts up to this long.
    pub idle_max_ns: Nanos,
    /// Share of idle windows in which the (by then quiet) leader crashes
    /// or is cut off.
    pub leader_fault_ppm: u32,
}

impl Profile {
    /// Half the runs of every profile but `calm` quiesce. From the
    /// `Quiesce` stream only: the other knobs are the same with or without.
    pub fn draw_quiesce(&mut self, rng: &mut SimRng) {
        if self.kind == ProfileKind::Calm || !rng.chance(PPM / 2) {
            return;
        }
        self.quiesce = Some(QuiesceKnobs {
            idle_every_ns: rng.between(500 * NANOS_PER_MILLI, 3 * NANOS_PER_SECOND),
            idle_max_ns: rng.between(300 * NANOS_PER_MILLI, 1500 * NANOS_PER_MILLI),
            leader_fault_ppm: rng.between(u64::from(PPM / 4), u64::from(PPM)) as u32,
        });
    }
}

/// The core's default election timeout spread (300 ms - 150 ms).
pub const ELECTION_TIMEOUT_SPREAD_NS: Nanos = 150 * NANOS_PER_MILLI;

/// The core's clock-drift bound the simulator configures (`max_clock_drift_ppm`).
pub const CORE_DRIFT_BOUND_PPM: u64 = 10_000;

impl Profile {
    pub fn new(kind: ProfileKind, rng: &mut SimRng) -> Profile {
        match kind {
            ProfileKind::Calm => Profile::calm(),
            ProfileKind::Chaos => Profile::chaos(rng),
            ProfileKind::Swarm => Profile::swarm(rng),
            ProfileKind::Lease => Profile::lease(rng),
        }
    }

    pub fn calm() -> Profile {
        Profile {
            kind: ProfileKind::Calm,
            net: NetConfig::calm(),
            intervals: FaultIntervals::default(),
            fault_duration_max_ns: 0,
            drift_ppm_max: 0,
            clock_jump_max_ns: 0,
            lease_read: true,
            election_backoff: true,
            watchers: true,
            timer_grid_ns: 0,
            disk_latency_min_ns: 50 * NANOS_PER_MICRO,
            disk_latency_max_ns: 500 * NANOS_PER_MICRO,
            disk_slow_ppm: 0,
            disk_slow_max_ns: 0,
            disk_write_error_ppm: 0,
            disk_sync_error_ppm: 0,
            disk_read_error_ppm: 0,
            disk_corruption_ppm: 0,
            clients: 4,
            keys: 4,
            client_think_max_ns: 20 * NANOS_PER_MILLI,
            read_ppm: PPM / 2,
            log_read_ppm: PPM / 10,
            client_random_target_ppm: 0,
            client_timeout_ns: 600 * NANOS_PER_MILLI,
            crash_mid_flush_ppm: 0,
            snapshots: SnapshotKnobs::calm(),
            temp_ppm: PPM / 10,
            temp_ttl_min_ns: 50 * NANOS_PER_MILLI,
            temp_ttl_max_ns: 300 * NANOS_PER_MILLI,
            short_lock_lease_ns: 30 * NANOS_PER_MILLI,
            replication: ReplicationKnobs::calm(),
            drift_at_bound: false,
            election_timeout_spread_ns: ELECTION_TIMEOUT_SPREAD_NS,
            isolate_leader_ppm: PPM / 2,
            quiesce: None,
        }
    }

    fn swarm(rng: &mut SimRng) -> Profile {
        // Each fault kind is off with probability 1/2, else strikes on
        // average every 0.3..5 s.
        let interval = |rng: &mut SimRng| {
            if rng.chance(PPM / 2) {
                0
            } else {
                rng.between(300 * NANOS_PER_MILLI, 5 * NANOS_PER_SECOND)
            }
        };
        let intervals = FaultIntervals {
            partition_ns: interval(rng),
            one_way_partition_ns: interval(rng),
            isolate_ns: interval(rng),
            clog_ns: interval(rng),
            flap_ns: interval(rng),
            crash_ns: interval(rng),
            pause_ns: interval(rng),
            clock_jump_ns: interval(rng),
            transfer_leader_ns: interval(rng),
            membership_ns: 0,
            wipe_ns: 0,
        };
        let latency_min_ns = rng.between(50 * NANOS_PER_MICRO, 2 * NANOS_PER_MILLI);
        let net = NetConfig {
            latency_min_ns,
            latency_max_ns: latency_min_ns + rng.between(0, 10 * NANOS_PER_MILLI),
            tail_ppm: rng.swarm_ppm(PPM / 2, PPM / 20),
            tail_max_ns: rng.between(20 * NANOS_PER_MILLI, 2 * NANOS_PER_SECOND),
            drop_ppm: rng.swarm_ppm(PPM / 2, PPM / 5),
            duplicate_ppm: rng.swarm_ppm(PPM / 2, PPM / 10),
            link_queue_max_msgs: *rng.pick(&[16, 64, 1024]),
        };
        let lease_read = rng.chance(PPM / 2);
        let drift_ppm_max = if lease_read {
            rng.between(0, CORE_DRIFT_BOUND_PPM) as i64
        } else {
            rng.between(0, 100_000) as i64
        };
        let disk_latency_min_ns = rng.between(10 * NANOS_PER_MICRO, NANOS_PER_MILLI);
        let mut profile = Profile {
            kind: ProfileKind::Swarm,
            net,
            intervals,
            fault_duration_max_ns: rng.between(100 * NANOS_PER_MILLI, 3 * NANOS_PER_SECOND),
            drift_ppm_max,
            clock_jump_max_ns: rng.between(NANOS_PER_MILLI, NANOS_PER_SECOND),
            lease_read,
            election_backoff: true,
            watchers: true,
            timer_grid_ns: 0,
            disk_latency_min_ns,
            disk_latency_max_ns: disk_latency_min_ns + rng.between(0, 5 * NANOS_PER_MILLI),
            disk_slow_ppm: rng.swarm_ppm(PPM / 2, PPM / 20),
            disk_slow_max_ns: rng.between(10 * NANOS_PER_MILLI, 500 * NANOS_PER_MILLI),
            disk_write_error_ppm: rng.swarm_ppm(PPM * 3 / 4, 2_000),
            disk_sync_error_ppm: rng.swarm_ppm(PPM * 3 / 4, 2_000),
            disk_read_error_ppm: rng.swarm_ppm(PPM * 3 / 4, 2_000),
            disk_corruption_ppm: rng.swarm_ppm(PPM * 3 / 4, 2_000),
            clients: rng.between(1, 6) as u32,
            keys: rng.between(1, 8),
            client_think_max_ns: rng.between(NANOS_PER_MILLI, 50 * NANOS_PER_MILLI),
            read_ppm: rng.between(u64::from(PPM / 5), u64::from(PPM * 4 / 5)) as u32,
            log_read_ppm: rng.between(0, u64::from(PPM / 2)) as u32,
            client_random_target_ppm: rng.swarm_ppm(PPM / 3, PPM / 2),
            client_timeout_ns: rng.between(100 * NANOS_PER_MILLI, NANOS_PER_SECOND),
            crash_mid_flush_ppm: rng.swarm_ppm(PPM / 2, 3_000),
            snapshots: SnapshotKnobs::calm(),
            temp_ppm: 0,
            temp_ttl_min_ns: 0,
            temp_ttl_max_ns: 0,
            short_lock_lease_ns: 0,
            replication: ReplicationKnobs::calm(),
            drift_at_bound: false,
            election_timeout_spread_ns: ELECTION_TIMEOUT_SPREAD_NS,
            isolate_leader_ppm: PPM / 2,
            quiesce: None,
        };
        // Drawn last so that adding them did not reshuffle the knobs above.
        profile.intervals.membership_ns = interval(rng);
        profile.snapshots = SnapshotKnobs::draw(rng);
        profile.temp_ppm = rng.swarm_ppm(PPM / 3, PPM / 4);
        profile.temp_ttl_min_ns = rng.between(NANOS_PER_MILLI, 200 * NANOS_PER_MILLI);
        profile.temp_ttl_max_ns = profile.temp_ttl_min_ns + rng.between(0, 2 * NANOS_PER_SECOND);
        profile.short_lock_lease_ns = rng.between(NANOS_PER_MILLI, NANOS_PER_SECOND);
        profile.intervals.wipe_ns = interval(rng);
        profile.replication = ReplicationKnobs::draw(rng);

        profile
    }

    fn chaos(rng: &mut SimRng) -> Profile {
        let mut p = Profile::swarm(rng);
        p.kind = ProfileKind::Chaos;
        let every = 700 * NANOS_PER_MILLI;
        p.intervals = FaultIntervals {
            partition_ns: every,
            one_way_partition_ns: every,
            isolate_ns: every,
            clog_ns: every,
            flap_ns: every,
            crash_ns: every,
            pause_ns: every,
            clock_jump_ns: every,
            transfer_leader_ns: every,
            membership_ns: every,
            wipe_ns: every,
        };
        p.net.drop_ppm = PPM / 20;
        p.net.duplicate_ppm = PPM / 20;
        p.net.tail_ppm = PPM / 50;
        p.fault_duration_max_ns = NANOS_PER_SECOND;
        p.crash_mid_flush_ppm = p.crash_mid_flush_ppm.max(1_000);
        p
    }

    /// The swarm's draws, then lease reads on with clocks at the drift
    /// bound, a fast network and disks (an election and a commit fit in the
    /// few milliseconds between a follower's timeout and the end of an
    /// over-long lease), a leader cut off or paused every few hundred
    /// milliseconds, and read-heavy clients.
    fn lease(rng: &mut SimRng) -> Profile {
        let mut p = Profile::swarm(rng);
        p.kind = ProfileKind::Lease;
        p.lease_read = true;
        p.drift_ppm_max = CORE_DRIFT_BOUND_PPM as i64;
        p.drift_at_bound = true;
        p.election_timeout_spread_ns = rng.between(500 * NANOS_PER_MICRO, 2 * NANOS_PER_MILLI);
        // The leader is the node whose lease matters.
        p.isolate_leader_ppm = PPM;
        let every = rng.between(150 * NANOS_PER_MILLI, 400 * NANOS_PER_MILLI);
        p.intervals.isolate_ns = every;
        p.intervals.one_way_partition_ns = every;
        p.intervals.pause_ns = every;
        p.intervals.clock_jump_ns = every;
        p.fault_duration_max_ns = rng.between(200 * NANOS_PER_MILLI, 600 * NANOS_PER_MILLI);
        p.net.latency_min_ns = rng.between(20 * NANOS_PER_MICRO, 60 * NANOS_PER_MICRO);
        p.net.latency_max_ns = p.net.latency_min_ns + rng.between(0, 60 * NANOS_PER_MICRO);
        p.net.drop_ppm = 0;
        p.net.tail_ppm = 0;
        p.disk_latency_min_ns = rng.between(10 * NANOS_PER_MICRO, 40 * NANOS_PER_MICRO);
        p.disk_latency_max_ns = p.disk_latency_min_ns + rng.between(0, 40 * NANOS_PER_MICRO);
        p.disk_slow_ppm = 0;
        // Mostly reads (a commit by the new leader is all a stale lease read
        // needs), and short client timeouts: a client stuck on a write to a
        // cut-off leader soon comes back to read.
        p.clients = rng.between(4, 8) as u32;
        p.read_ppm = PPM * 95 / 100;
        p.log_read_ppm = 0;
        p.temp_ppm = 0;
        p.client_timeout_ns = rng.between(20 * NANOS_PER_MILLI, 60 * NANOS_PER_MILLI);
        p.client_think_max_ns = rng.between(100 * NANOS_PER_MICRO, 2 * NANOS_PER_MILLI);
        p.election_backoff = false;
        p.watchers = false;
        p
    }

    /// True if clocks may misbehave beyond the core's lease bound (large
    /// jumps, large drift); with lease reads on, jumps stay within the bound.
    pub fn clock_jumps_allowed(&self) -> bool {
        !self.lease_read
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |ns: Nanos| ns / NANOS_PER_MILLI;
        let i = &self.intervals;
        write!(
            f,
            "{} lease_read={} net[lat={}..{}us drop={}ppm dup={}ppm tail={}ppm/{}ms queue={}] \
             every_ms[partition={} one_way={} isolate={} clog={} flap={} crash={} pause={} jump={} transfer={} \
             membership={} wipe={}] \
             drift<={}ppm disk[{}..{}us slow={}ppm] clients={} keys={} snapshot[every={} keep={} chunk={}B tail={}] temp={}ppm ttl={}..{}ms lease_l1={}ms \
             append[entries={} inflight={}] drift_at_bound={} timeout_spread={}us grid={}ms",
            self.kind,
            self.lease_read,
            self.net.latency_min_ns / NANOS_PER_MICRO,
            self.net.latency_max_ns / NANOS_PER_MICRO,
            self.net.drop_ppm,
            self.net.duplicate_ppm,
            self.net.tail_ppm,
            ms(self.net.tail_max_ns),
            self.net.link_queue_max_msgs,
            ms(i.partition_ns),
            ms(i.one_way_partition_ns),
            ms(i.isolate_ns),
            ms(i.clog_ns),
            ms(i.flap_ns),
            ms(i.crash_ns),
            ms(i.pause_ns),
            ms(i.clock_jump_ns),
            ms(i.transfer_leader_ns),
            ms(i.membership_ns),
            ms(i.wipe_ns),
            self.drift_ppm_max,
            self.disk_latency_min_ns / NANOS_PER_MICRO,
            self.disk_latency_max_ns / NANOS_PER_MICRO,
            self.disk_slow_ppm,
            self.clients,
            self.keys,
            self.snapshots.after_entries,
            self.snapshots.keep_tail_entries,
            self.snapshots.chunk_bytes,
            self.snapshots.log_tail_entries,
            self.temp_ppm,
            ms(self.temp_ttl_min_ns),
            ms(self.temp_ttl_max_ns),
            ms(self.short_lock_lease_ns),
            self.replication.entries_per_msg,
            self.replication.inflight_msgs,
            self.drift_at_bound,
            self.election_timeout_spread_ns / NANOS_PER_MICRO,
            ms(self.timer_grid_ns),
        )?;
        if let Some(q) = self.quiesce {
            write!(
                f,
                " quiesce[idle_every={}ms idle_max={}ms leader_faults={}ppm]",
                ms(q.idle_every_ns),
                ms(q.idle_max_ns),
                q.leader_fault_ppm
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Stream;

    #[test]
    fn swarm_profiles_differ_between_seeds_and_respect_the_lease_bound() {
        let mut off_counts = 0;
        let mut descriptions = std::collections::BTreeSet::new();
        for seed in 0..50 {
            let p = Profile::new(ProfileKind::Swarm, &mut SimRng::new(seed, Stream::Profile));
            if p.lease_read {
                assert!(p.drift_ppm_max as u64 <= CORE_DRIFT_BOUND_PPM, "seed {seed}: {p}");
            }
            off_counts += u32::from(p.intervals.crash_ns == 0);
            descriptions.insert(p.to_string());
        }
        assert_eq!(descriptions.len(), 50);
        assert!((5..45).contains(&off_counts), "crash off in {off_counts}/50 seeds");
    }

    #[test]
    fn profile_names_parse() {
        assert_eq!("chaos".parse::<ProfileKind>(), Ok(ProfileKind::Chaos));
        assert!("wild".parse::<ProfileKind>().unwrap_err().contains("swarm"));
    }
}
