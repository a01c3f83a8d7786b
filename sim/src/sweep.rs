//! Running many seeds: the sweep behind `tarn-sim --seeds N` and the tests.
//!
//! Each seed is an independent, single-threaded, deterministic run; a sweep
//! may spread seeds over worker threads (the runs share nothing), which
//! changes only the wall time, never a run's result.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

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
