//! Running many seeds: the sweep behind `tarn-sim --seeds N` and the tests.
//!
//! Each seed is an independent, single-threaded, deterministic run; a sweep
//! may spread seeds over worker threads (the runs share nothing), which
//! changes only the wall time, never a run's result.
//!
//! A timed sweep (`tarn-sim --minutes M`, [`sweep_for`]) keeps going until
//! its wall-clock budget is spent, rotating through fault profiles, cluster
//! sizes and run lengths by a fixed function of the seed ([`rotation`]), so a
//! seed names the same run in every timed sweep.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use crate::profile::ProfileKind;
use crate::queue::NANOS_PER_SECOND;
use crate::world::{run, Failure, FailureKind, RunConfig, RunReport};

/// Exit code when a seed gave different digests on two runs.
pub const EXIT_NONDETERMINISM: i32 = 7;

/// One seed's outcome in a sweep.
#[derive(Clone, Debug)]
pub struct SeedOutcome {
    pub report: RunReport,
    /// With `check_determinism`: the second run's digest when it differs.
    pub digest_mismatch: Option<u64>,
}

impl SeedOutcome {
    pub fn failed(&self) -> bool {
        self.report.failure.is_some() || self.digest_mismatch.is_some()
    }

    pub fn exit_code(&self) -> i32 {
        match (&self.report.failure, self.digest_mismatch) {
            (Some(f), _) => f.kind.exit_code(),
            (None, Some(_)) => EXIT_NONDETERMINISM,
            (None, None) => 0,
        }
    }
}

/// Runs `template` with seeds `start..start + count` on `jobs` threads and
/// calls `on_done` for each finished seed (in completion order). Returns all
/// outcomes sorted by seed.
pub fn sweep(
    template: &RunConfig,
    start: u64,
    count: u64,
    jobs: usize,
    check_determinism: bool,
    on_done: &(dyn Fn(&SeedOutcome) + Sync),
) -> Vec<SeedOutcome> {
    let next = AtomicU64::new(0);
    let results = Mutex::new(Vec::with_capacity(count as usize));
    let worker = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= count {
            break;
        }
        let outcome = run_seed(template, start.wrapping_add(i), check_determinism);
        on_done(&outcome);
        // A poisoned lock means another worker panicked outside a run, which
        // `run` prevents; propagate loudly if it ever happens.
        results.lock().expect("sweep results lock").push(outcome);
    };
    std::thread::scope(|scope| {
        for _ in 1..jobs.max(1) {
            scope.spawn(worker);
        }
        worker();
    });
    let mut results = results.into_inner().expect("sweep results lock");
    results.sort_by_key(|o| o.report.seed);
    results
}

/// One seed, optionally twice to compare digests.
pub fn run_seed(template: &RunConfig, seed: u64, check_determinism: bool) -> SeedOutcome {
    let mut config = template.clone();
    config.seed = seed;
    let report = run(config.clone());
    let digest_mismatch = if check_determinism {
        let again = run(config);
        (again.digest != report.digest).then_some(again.digest)
    } else {
        None
    };
    SeedOutcome { report, digest_mismatch }
}

/// The one-line command that replays `seed` with `config`'s settings.
pub fn replay_command(config: &RunConfig, seed: u64) -> String {
    let mut cmd = format!(
        "cargo run --release -p tarn-sim -- --seed {seed} --nodes {} --profile {} --storage {} --sim-seconds {}",
        config.nodes,
        config.profile,
        config.storage,
        config.sim_ns as f64 / 1e9
    );
    if config.liveness_bound_ns != RunConfig::new(seed).liveness_bound_ns {
        cmd.push_str(&format!(" --liveness-seconds {}", config.liveness_bound_ns as f64 / 1e9));
    }
    #[cfg(feature = "planted-bugs")]
    if let Some(bug) = config.planted_bug {
        cmd = cmd.replace("-p tarn-sim", "-p tarn-sim --features planted-bugs");
        cmd.push_str(&format!(" --planted-bug {}", crate::world::planted_bug_name(bug)));
    }
    if !config.read_floor_check {
        cmd.push_str(" --no-read-floor-check");
    }
    if !config.rejoin_flag {
        cmd.push_str(" --no-rejoin-flag");
    }
    if let Some(ns) = config.async_sync_ns {
        cmd.push_str(&format!(" --async-writes-ms {}", ns / crate::queue::NANOS_PER_MILLI));
    }
    cmd.push_str(" --trace");
    cmd
}

/// A failure report a human can act on: seed, property, detail, the last
/// events in virtual time, and the replay command.
pub fn describe_failure(config: &RunConfig, outcome: &SeedOutcome) -> String {
    let r = &outcome.report;
    let mut out = String::new();
    let (kind, property, detail) = match (&r.failure, outcome.digest_mismatch) {
        (Some(Failure { kind, property, detail }), _) => (kind_name(*kind), *property, detail.clone()),
        (None, Some(other)) => (
            "nondeterminism",
            "determinism",
            format!("two runs of the same seed gave trace digests {:016x} and {other:016x}", r.digest),
        ),
        (None, None) => return out,
    };
    out.push_str(&format!("FAIL seed={} kind={kind} property={property}\n", r.seed));
    out.push_str(&format!("  profile: {}\n", r.profile));
    for line in detail.lines() {
        out.push_str(&format!("  {line}\n"));
    }
    out.push_str(&format!("  last {} events (virtual time):\n", r.last_events.len()));
    for e in &r.last_events {
        out.push_str(&format!("    {e}\n"));
    }
    out.push_str(&format!("  replay: {}\n", replay_command(config, r.seed)));
    out
}

pub fn kind_name(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::Safety => "safety",
        FailureKind::Liveness => "liveness",
        FailureKind::Panic => "panic",
        FailureKind::CheckerTooBig => "checker-too-big",
    }
}

/// The fault profiles a timed sweep rotates through: random faults, every
/// fault often, and lease reads under the worst clocks the core allows
/// (issue 15: without it, long sweeps rarely combined skewed clocks, leader
/// isolation and lease reads).
pub const ROTATION_PROFILES: [ProfileKind; 3] = [ProfileKind::Swarm, ProfileKind::Chaos, ProfileKind::Lease];
/// The cluster sizes a timed sweep rotates through.
pub const ROTATION_NODES: [usize; 4] = [1, 3, 5, 7];
/// The run lengths (simulated seconds of faults and load) a timed sweep rotates through.
pub const ROTATION_SIM_SECONDS: [u64; 2] = [10, 40];
/// How many configurations the rotation has: every run of this many
/// consecutive seeds covers each once.
pub const ROTATION_CONFIGS: u64 =
    (ROTATION_PROFILES.len() * ROTATION_NODES.len() * ROTATION_SIM_SECONDS.len()) as u64;

/// The run of `seed` in a timed sweep: `template` with the profile, node
/// count and run length that `seed % ROTATION_CONFIGS` selects (profile
/// fastest, then nodes, then length). A fixed function of the seed alone,
/// whatever the sweep's start, so a seed always means the same run.
pub fn rotation(template: &RunConfig, seed: u64) -> RunConfig {
    let i = (seed % ROTATION_CONFIGS) as usize;
    let (profiles, nodes) = (ROTATION_PROFILES.len(), ROTATION_NODES.len());
    let mut config = template.clone();
    config.seed = seed;
    config.profile = ROTATION_PROFILES[i % profiles];
    config.nodes = ROTATION_NODES[i / profiles % nodes];
    config.sim_ns = ROTATION_SIM_SECONDS[i / (profiles * nodes)] * NANOS_PER_SECOND;
    config
}

/// A short name for a configuration: `chaos/5n/40s`.
pub fn config_label(config: &RunConfig) -> String {
    format!("{}/{}n/{}s", config.profile, config.nodes, config.sim_ns as f64 / 1e9)
}

/// One configuration's share of a timed sweep.
#[derive(Clone, Debug)]
pub struct ConfigTally {
    pub label: String,
    pub done: u64,
    pub failed: u64,
}

/// One failed seed of a timed sweep, without its trace.
#[derive(Clone, Debug)]
pub struct FailedSeed {
    pub seed: u64,
    pub label: String,
    pub exit_code: i32,
    pub kind: &'static str,
    pub property: &'static str,
    pub replay: String,
}

/// What a timed sweep has done so far: kept as counts, so a sweep may run
/// for hours without holding every outcome.
#[derive(Clone, Debug, Default)]
pub struct TimedSweep {
    /// The first seed; seeds `start..start + seeds()` all ran (seeds are
    /// handed out in order and every one handed out runs to its end).
    pub start: u64,
    /// By rotation index (`seed % ROTATION_CONFIGS`).
    pub configs: BTreeMap<u64, ConfigTally>,
    /// In completion order.
    pub failures: Vec<FailedSeed>,
    pub sim_ns: u64,
    pub snapshots: u64,
    pub installs: u64,
    pub compactions: u64,
    pub restarts_in_place: u64,
    pub jobs_waited: u64,
    pub write_batches: u64,
    pub pipelined_writes: u64,
    pub failovers: u64,
    pub failovers_slow: u64,
    pub failover_max_ms: u64,
    pub expiries: u64,
    pub wipes: u64,
    /// Coverage (see `RunReport`): a sweep that never reaches one of these
    /// situations shows a 0 at a glance.
    pub multi_changes: u64,
    pub joints: u64,
    pub truncations: u64,
    pub truncated_max: u64,
    pub ttl_races: u64,
    pub handoffs: u64,
    pub lease_reads_skewed: u64,
    pub watch_events: u64,
    pub watch_resumes: u64,
}

impl TimedSweep {
    pub fn seeds(&self) -> u64 {
        self.configs.values().map(|t| t.done).sum()
    }

    pub fn failed(&self) -> u64 {
        self.failures.len() as u64
    }

    /// The exit code of the lowest failing seed, as in any sweep; 0 if none failed.
    pub fn exit_code(&self) -> i32 {
        self.failures.iter().min_by_key(|f| f.seed).map_or(0, |f| f.exit_code)
    }

    fn record(&mut self, config: &RunConfig, outcome: &SeedOutcome) {
        let r = &outcome.report;
        let tally = self.configs.entry(r.seed % ROTATION_CONFIGS).or_insert_with(|| ConfigTally {
            label: config_label(config),
            done: 0,
            failed: 0,
        });
        tally.done += 1;
        if outcome.failed() {
            tally.failed += 1;
            let (kind, property) = match &r.failure {
                Some(f) => (kind_name(f.kind), f.property),
                None => ("nondeterminism", "determinism"),
            };
            self.failures.push(FailedSeed {
                seed: r.seed,
                label: tally.label.clone(),
                exit_code: outcome.exit_code(),
                kind,
                property,
                replay: replay_command(config, r.seed),
            });
        }
        self.sim_ns += r.sim_ns;
        self.snapshots += r.snapshots;
        self.installs += r.installs;
        self.compactions += r.compactions;
        self.restarts_in_place += r.restarts_in_place;
        self.jobs_waited += r.jobs_waited;
        self.write_batches += r.write_batches;
        self.pipelined_writes += r.pipelined_writes;
        self.failovers += r.failovers;
        self.failovers_slow += r.failovers_slow;
        self.failover_max_ms = self.failover_max_ms.max(r.failover_max_ms);
        self.expiries += r.expiries;
        self.wipes += r.wipes;
        self.multi_changes += r.multi_changes;
        self.joints += r.joints;
        self.truncations += r.truncations;
        self.truncated_max = self.truncated_max.max(r.truncated_max);
        self.ttl_races += r.ttl_races;
        self.handoffs += r.handoffs;
        self.lease_reads_skewed += r.lease_reads_skewed;
        self.watch_events += r.watch_events;
        self.watch_resumes += r.watch_resumes;
    }

    /// `profile/nodes/length=done/failed` for every configuration run so far.
    pub fn per_config(&self) -> String {
        let parts: Vec<String> =
            self.configs.values().map(|t| format!("{}={}/{}", t.label, t.done, t.failed)).collect();
        parts.join(",")
    }

    /// The periodic line: `progress elapsed=... seeds=... failed=... ...`.
    pub fn progress_line(&self, elapsed: Duration) -> String {
        let wall = elapsed.as_secs_f64();
        format!(
            "progress elapsed={:.0}s seeds={} failed={} seeds_per_minute={:.0} next_seed={} per_config={}",
            wall,
            self.seeds(),
            self.failed(),
            self.seeds() as f64 * 60.0 / wall.max(1e-9),
            self.start.wrapping_add(self.seeds()),
            self.per_config()
        )
    }

    /// The final line, in the format of every sweep's summary, plus the
    /// seed range and the configurations covered.
    pub fn summary_line(&self, elapsed: Duration) -> String {
        let wall = elapsed.as_secs_f64();
        let sim = self.sim_ns as f64 / 1e9;
        format!(
            "seeds={} failed={} sim_seconds={:.1} wall_seconds={:.2} seeds_per_minute={:.0} sim_seconds_per_wall_second={:.1} \
             snapshots={} installs={} compactions={} restarts_in_place={} jobs_waited={} write_batches={} pipelined_writes={} \
             failovers={} failovers_slow={} failover_max_ms={} expiries={} wipes={} \
             multi_changes={} joints={} truncations={} truncated_max={} ttl_races={} handoffs={} lease_reads_skewed={} watch_events={} watch_resumes={} start={} end={} \
             configs={} per_config={}",
            self.seeds(),
            self.failed(),
            sim,
            wall,
            self.seeds() as f64 * 60.0 / wall.max(1e-9),
            sim / wall.max(1e-9),
            self.snapshots,
            self.installs,
            self.compactions,
            self.restarts_in_place,
            self.jobs_waited,
            self.write_batches,
            self.pipelined_writes,
            self.failovers,
            self.failovers_slow,
            self.failover_max_ms,
            self.expiries,
            self.wipes,
            self.multi_changes,
            self.joints,
            self.truncations,
            self.truncated_max,
            self.ttl_races,
            self.handoffs,
            self.lease_reads_skewed,
            self.watch_events,
            self.watch_resumes,
            self.start,
            self.start.wrapping_add(self.seeds()),
            self.configs.len(),
            self.per_config()
        )
    }
}

/// Runs seeds `start, start + 1, ...` (each with its [`rotation`]
/// configuration) on `jobs` threads until `budget` of wall time has passed:
/// no seed starts after that, and the ones running finish (the first `jobs`
/// seeds always run). Calls `on_done` for each finished seed (in completion
/// order, with the tally including it) and `on_progress` every
/// `progress_every` while seeds run, all on the calling thread.
#[allow(clippy::too_many_arguments)]
pub fn sweep_for(
    template: &RunConfig,
    start: u64,
    budget: Duration,
    jobs: usize,
    check_determinism: bool,
    progress_every: Duration,
    on_done: &mut dyn FnMut(&RunConfig, &SeedOutcome, &TimedSweep),
    on_progress: &mut dyn FnMut(&TimedSweep, Duration),
) -> TimedSweep {
    let began = Instant::now();
    let deadline = began.checked_add(budget);
    let jobs = jobs.max(1) as u64;
    // Seeds handed out so far, and whether time is up: under one lock, so
    // the seeds that run are always a contiguous range.
    let next = Mutex::new((0u64, false));
    let claim = || {
        let mut next = next.lock().expect("sweep seed lock");
        let (handed_out, stopped) = &mut *next;
        if *stopped || (*handed_out >= jobs && deadline.is_some_and(|d| Instant::now() >= d)) {
            *stopped = true;
            return None;
        }
        *handed_out += 1;
        Some(start.wrapping_add(*handed_out - 1))
    };
    let mut tally = TimedSweep { start, ..TimedSweep::default() };
    let (tx, rx) = mpsc::channel::<(RunConfig, SeedOutcome)>();
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            let tx = tx.clone();
            let claim = &claim;
            scope.spawn(move || {
                while let Some(seed) = claim() {
                    let config = rotation(template, seed);
                    let outcome = run_seed(&config, seed, check_determinism);
                    if tx.send((config, outcome)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let every = progress_every.max(Duration::from_millis(10));
        let mut next_progress = began + every;
        loop {
            let now = Instant::now();
            if now >= next_progress {
                on_progress(&tally, began.elapsed());
                next_progress = now + every;
            }
            match rx.recv_timeout(next_progress - now) {
                Ok((config, outcome)) => {
                    tally.record(&config, &outcome);
                    on_done(&config, &outcome, &tally);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
    });
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rotation_covers_every_configuration_once_per_cycle_and_ignores_the_start() {
        let template = RunConfig::new(0);
        let labels: std::collections::BTreeSet<String> =
            (1000..1000 + ROTATION_CONFIGS).map(|s| config_label(&rotation(&template, s))).collect();
        assert_eq!(labels.len() as u64, ROTATION_CONFIGS);
        assert_eq!(ROTATION_CONFIGS, 24);
        for seed in [0, 5, 13, 123_456_789] {
            let a = rotation(&template, seed);
            let b = rotation(&template, seed + ROTATION_CONFIGS);
            assert_eq!((a.seed, a.profile, a.nodes, a.sim_ns), (seed, b.profile, b.nodes, b.sim_ns));
        }
        let c = rotation(&template, 19); // 19 = 1 + 3*2 + 12: chaos, 5 nodes, 40 s
        assert_eq!(config_label(&c), "chaos/5n/40s");
        assert!(replay_command(&c, 19)
            .contains("--seed 19 --nodes 5 --profile chaos --storage engine --sim-seconds 40"));
        let l = rotation(&template, 5); // 5 = 2 + 3*1: lease, 3 nodes, 10 s
        assert_eq!(config_label(&l), "lease/3n/10s");
    }
}
