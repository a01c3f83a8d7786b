//! `tarn-sim`: run one seed exactly, or sweep many.
//!
//! Exit codes: 0 all passed; 2 bad arguments; 3 safety violation; 4 liveness
//! failure; 5 panic in the code under test; 6 linearizability check too big
//! to decide; 7 nondeterminism (`--check-determinism`). In a sweep, the exit
//! code is that of the lowest failing seed.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use tarn_sim::profile::ProfileKind;
use tarn_sim::queue::NANOS_PER_SECOND;
use tarn_sim::sweep::{
    config_label, describe_failure, kind_name, sweep, sweep_for, SeedOutcome, ROTATION_CONFIGS,
};
use tarn_sim::world::RunConfig;

/// Only the binary picks the allocator; the library and its tests keep the system one. The
/// simulator allocates and frees many small buffers per simulated event (messages, entries,
/// disk pages): glibc's malloc and free were about 15 % of a sweep's profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// tarn's deterministic simulator: real Raft core, kv and storage engine on a
/// virtual network, disks and clocks, with fault injection and checkers.
///
/// Examples:
///   tarn-sim --seeds 1000                 sweep seeds 0..1000 (swarm faults)
///   tarn-sim --seed 42 --trace            replay seed 42, printing every event
///   tarn-sim --seeds 50 --check-determinism
///   nice tarn-sim --minutes 600 --jobs 1 > log   sweep for ten hours, rotating configurations
#[derive(Parser, Debug)]
#[command(
    name = "tarn-sim",
    version,
    verbatim_doc_comment,
    after_help = "Exit codes: 0 all seeds passed; 2 bad arguments; 3 safety violation; 4 liveness failure; \
                  5 panic; 6 linearizability check too big to decide; 7 nondeterminism. A sweep exits with \
                  the code of its lowest failing seed; every failure prints its replay command."
)]
struct Args {
    /// Run exactly this seed (replays a failure bit for bit).
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Sweep this many seeds.
    #[arg(long)]
    seeds: Option<u64>,
    /// First seed of a sweep.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Sweep for this many minutes of wall time (fractions allowed), seeds
    /// from --start on. Each seed's profile, node count and run length follow
    /// from the seed alone: seed % 24 picks profile (swarm, chaos, lease) fastest,
    /// then nodes (1, 3, 5, 7), then simulated seconds (10, 40). Prints a
    /// progress line at least once a minute and every failure, with its replay
    /// command, on stdout as soon as it is found; seeds running when time is
    /// up finish.
    #[arg(long, conflicts_with_all = ["seed", "seeds", "nodes", "profile", "sim_seconds", "trace"])]
    minutes: Option<f64>,
    /// Number of nodes (1..=7).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=7))]
    nodes: u64,
    /// Fault profile: swarm (random per seed), calm (no faults) or chaos (everything, often).
    #[arg(long, default_value = "swarm")]
    profile: ProfileKind,
    /// Simulated seconds of faults and client load (then faults heal and the
    /// liveness check runs).
    #[arg(long, default_value_t = 10.0)]
    sim_seconds: f64,
    /// Simulated seconds after healing within which every pending operation must complete.
    #[arg(long, default_value_t = 20.0)]
    liveness_seconds: f64,
    /// Storage under each node: engine (the real tarn-io engine over the
    /// simulated disk, with disk faults) or model (the simulator's own log model).
    #[arg(long, default_value = "engine")]
    storage: tarn_sim::world::StorageKind,
    /// Leave stale reads to the linearizability checker alone (skip the direct
    /// per-read commit-index check).
    #[arg(long)]
    no_read_floor_check: bool,
    /// Restart wiped nodes without `rejoin_after_data_loss` (to see the
    /// double vote it prevents).
    #[arg(long)]
    no_rejoin_flag: bool,
    /// Run the storage engine in async write mode with a background sync
    /// every MS milliseconds (1..=1000), paced as the driver paces it. Such
    /// runs inject no crashes, wipes or disk faults (async mode does not
    /// survive a power loss) and check that every write is synced in time.
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..=1000))]
    async_writes_ms: Option<u64>,
    /// Print every event of the run (use with --seed).
    #[arg(long)]
    trace: bool,
    /// Run every seed twice and compare the trace digests.
    #[arg(long)]
    check_determinism: bool,
    /// Worker threads for a sweep (each seed still runs single-threaded).
    #[arg(long)]
    jobs: Option<usize>,
    /// Print one line per seed, not only failures.
    #[arg(long, short)]
    verbose: bool,
    /// Plant a Raft bug in the core (build with --features planted-bugs).
    #[cfg(feature = "planted-bugs")]
    #[arg(long, value_parser = tarn_sim::world::parse_planted_bug)]
    planted_bug: Option<tarn_sim::world::PlantedBug>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !(args.sim_seconds > 0.0 && args.sim_seconds <= 3600.0) {
        eprintln!("tarn-sim: --sim-seconds {} is out of range; use a value in (0, 3600]", args.sim_seconds);
        return ExitCode::from(2);
    }
    if !(args.liveness_seconds > 0.0 && args.liveness_seconds <= 3600.0) {
        eprintln!(
            "tarn-sim: --liveness-seconds {} is out of range; use a value in (0, 3600]",
            args.liveness_seconds
        );
        return ExitCode::from(2);
    }
    let mut config = RunConfig::new(0);
    config.nodes = args.nodes as usize;
    config.profile = args.profile;
    config.sim_ns = (args.sim_seconds * NANOS_PER_SECOND as f64) as u64;
    config.liveness_bound_ns = (args.liveness_seconds * NANOS_PER_SECOND as f64) as u64;
    config.trace = args.trace;
    config.storage = args.storage;
    config.read_floor_check = !args.no_read_floor_check;
    config.rejoin_flag = !args.no_rejoin_flag;
    if let Some(ms) = args.async_writes_ms {
        if config.storage != tarn_sim::world::StorageKind::Engine {
            eprintln!("tarn-sim: --async-writes-ms needs --storage engine (the model has no write modes)");
            return ExitCode::from(2);
        }
        config.async_sync_ns = Some(ms * tarn_sim::queue::NANOS_PER_MILLI);
    }
    #[cfg(feature = "planted-bugs")]
    {
        config.planted_bug = args.planted_bug;
    }
    if let Some(minutes) = args.minutes {
        return timed_sweep(&args, &config, minutes);
    }
    let (start, count) = match (args.seed, args.seeds) {
        (Some(seed), _) => (seed, 1),
        (None, Some(n)) => (args.start, n),
        (None, None) => (args.start, 1),
    };
    let jobs = if args.trace || count == 1 {
        1
    } else {
        args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    };
    let verbose = args.verbose || count == 1;
    let wall = Instant::now();
    let print = |o: &SeedOutcome| {
        if o.failed() {
            eprint!("{}", describe_failure(&config, o));
        }
        if verbose {
            println!("{}", seed_line(o));
        }
    };
    let outcomes = sweep(&config, start, count, jobs, args.check_determinism, &print);
    let wall_seconds = wall.elapsed().as_secs_f64();
    let failed: Vec<&SeedOutcome> = outcomes.iter().filter(|o| o.failed()).collect();
    let sim_seconds: f64 = outcomes.iter().map(|o| o.report.sim_ns as f64 / 1e9).sum();
    let total = |f: fn(&SeedOutcome) -> u64| outcomes.iter().map(f).sum::<u64>();
    println!(
        "seeds={} failed={} sim_seconds={:.1} wall_seconds={:.2} seeds_per_minute={:.0} sim_seconds_per_wall_second={:.1} \
         snapshots={} installs={} compactions={} restarts_in_place={} jobs_waited={} write_batches={} pipelined_writes={} \
         failovers={} failovers_slow={} failover_max_ms={} expiries={} wipes={} multi_changes={} joints={} truncations={} truncated_max={} ttl_races={} handoffs={} lease_reads_skewed={} watch_events={} \
         watch_resumes={}",
        outcomes.len(),
        failed.len(),
        sim_seconds,
        wall_seconds,
        outcomes.len() as f64 * 60.0 / wall_seconds.max(1e-9),
        sim_seconds / wall_seconds.max(1e-9),
        total(|o| o.report.snapshots),
        total(|o| o.report.installs),
        total(|o| o.report.compactions),
        total(|o| o.report.restarts_in_place),
        total(|o| o.report.jobs_waited),
        total(|o| o.report.write_batches),
        total(|o| o.report.pipelined_writes),
        total(|o| o.report.failovers),
        total(|o| o.report.failovers_slow),
        outcomes.iter().map(|o| o.report.failover_max_ms).max().unwrap_or(0),
        total(|o| o.report.expiries),
        total(|o| o.report.wipes),
        total(|o| o.report.multi_changes),
        total(|o| o.report.joints),
        total(|o| o.report.truncations),
        outcomes.iter().map(|o| o.report.truncated_max).max().unwrap_or(0),
        total(|o| o.report.ttl_races),
        total(|o| o.report.handoffs),
        total(|o| o.report.lease_reads_skewed),
        total(|o| o.report.watch_events),
        total(|o| o.report.watch_resumes),
    );
    if !failed.is_empty() {
        let seeds: Vec<String> = failed.iter().take(20).map(|o| o.report.seed.to_string()).collect();
        println!("failed seeds: {}{}", seeds.join(" "), if failed.len() > 20 { " ..." } else { "" });
    }
    match failed.first() {
        Some(o) => ExitCode::from(o.exit_code() as u8),
        None => ExitCode::SUCCESS,
    }
}

/// The per-seed line of `--verbose`.
fn seed_line(o: &SeedOutcome) -> String {
    let r = &o.report;
    format!(
        "seed={} {} sim_seconds={:.3} events={} ops={}/{} commit={} snapshots={} installs={} compactions={} restarts_in_place={} jobs_waited={} write_batches={} pipelined_writes={} failovers={} failovers_slow={} failover_max_ms={} expiries={} wipes={} multi_changes={} joints={} truncations={} truncated_max={} ttl_races={} handoffs={} lease_reads_skewed={} watch_events={} watch_resumes={} digest={:016x}",
        r.seed,
        if o.failed() { "FAIL" } else { "ok" },
        r.sim_ns as f64 / 1e9,
        r.events,
        r.ops_completed,
        r.ops_invoked,
        r.max_commit,
        r.snapshots,
        r.installs,
        r.compactions,
        r.restarts_in_place,
        r.jobs_waited,
        r.write_batches,
        r.pipelined_writes,
        r.failovers,
        r.failovers_slow,
        r.failover_max_ms,
        r.expiries,
        r.wipes,
        r.multi_changes,
        r.joints,
        r.truncations,
        r.truncated_max,
        r.ttl_races,
        r.handoffs,
        r.lease_reads_skewed,
        r.watch_events,
        r.watch_resumes,
        r.digest
    )
}

/// How many failures of one property get the full report (detail and last
/// events); later ones get one line with the replay command, so a sweep that
/// keeps hitting one bug for hours does not fill the disk.
const FULL_REPORTS_PER_PROPERTY: u64 = 5;

/// `--minutes`: sweep until the wall-clock budget is spent. Everything goes
/// to stdout (so `> log` keeps it), one line at a time.
fn timed_sweep(args: &Args, template: &tarn_sim::world::RunConfig, minutes: f64) -> ExitCode {
    if !(minutes.is_finite() && minutes > 0.0 && minutes <= 100_000.0) {
        eprintln!("tarn-sim: --minutes {minutes} is out of range; use a value in (0, 100000]");
        return ExitCode::from(2);
    }
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let budget = Duration::from_secs_f64(minutes * 60.0);
    let progress_every = (budget / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    println!(
        "timed sweep: minutes={minutes} jobs={jobs} start={} storage={} check_determinism={} \
         rotation=seed%{ROTATION_CONFIGS}->profile(swarm,chaos,lease)/nodes(1,3,5,7)/sim_seconds(10,40)",
        args.start, template.storage, args.check_determinism
    );
    let mut reports: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut on_done = |config: &tarn_sim::world::RunConfig,
                       o: &SeedOutcome,
                       _: &tarn_sim::sweep::TimedSweep| {
        if args.verbose {
            println!("{} config={}", seed_line(o), config_label(config));
        }
        if !o.failed() {
            return;
        }
        let (kind, property) = match &o.report.failure {
            Some(f) => (kind_name(f.kind), f.property),
            None => ("nondeterminism", "determinism"),
        };
        let n = reports.entry(property).or_default();
        *n += 1;
        if *n <= FULL_REPORTS_PER_PROPERTY {
            print!("{}", describe_failure(config, o));
        } else {
            println!(
                "FAIL seed={} kind={kind} property={property} config={} (report {} of this property; replay for the trace)\n  replay: {}",
                o.report.seed,
                config_label(config),
                n,
                tarn_sim::sweep::replay_command(config, o.report.seed)
            );
        }
    };
    let mut on_progress =
        |t: &tarn_sim::sweep::TimedSweep, elapsed: Duration| println!("{}", t.progress_line(elapsed));
    let wall = Instant::now();
    let done = sweep_for(
        template,
        args.start,
        budget,
        jobs,
        args.check_determinism,
        progress_every,
        &mut on_done,
        &mut on_progress,
    );
    println!("{}", done.summary_line(wall.elapsed()));
    if !done.failures.is_empty() {
        let mut failures = done.failures.clone();
        failures.sort_by_key(|f| f.seed);
        for f in failures.iter().take(20) {
            println!(
                "failed seed={} config={} kind={} property={} replay: {}",
                f.seed, f.label, f.kind, f.property, f.replay
            );
        }
        if failures.len() > 20 {
            println!("... and {} more failed seeds (each printed above when found)", failures.len() - 20);
        }
    }
    ExitCode::from(done.exit_code() as u8)
}
