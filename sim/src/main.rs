//! `tarn-sim`: run one seed exactly, or sweep many.
//!
//! Exit codes: 0 all passed; 2 bad arguments; 3 safety violation; 4 liveness
//! failure; 5 panic in the code under test; 6 linearizability check too big
//! to decide; 7 nondeterminism (`--check-determinism`). In a sweep, the exit
//! code is that of the lowest failing seed.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use tarn_sim::profile::ProfileKind;
use tarn_sim::queue::NANOS_PER_SECOND;
use tarn_sim::sweep::{describe_failure, sweep, SeedOutcome};
use tarn_sim::world::RunConfig;

/// tarn's deterministic simulator: real Raft core, kv and storage engine on a
/// virtual network, disks and clocks, with fault injection and checkers.
///
/// Examples:
///   tarn-sim --seeds 1000                 sweep seeds 0..1000 (swarm faults)
///   tarn-sim --seed 42 --trace            replay seed 42, printing every event
///   tarn-sim --seeds 50 --check-determinism
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
    #[cfg(feature = "planted-bugs")]
    {
        config.planted_bug = args.planted_bug;
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
            let r = &o.report;
            println!(
                "seed={} {} sim_seconds={:.3} events={} ops={}/{} commit={} snapshots={} installs={} compactions={} expiries={} wipes={} digest={:016x}",
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
                r.expiries,
                r.wipes,
                r.digest
            );
        }
    };
    let outcomes = sweep(&config, start, count, jobs, args.check_determinism, &print);
    let wall_seconds = wall.elapsed().as_secs_f64();
    let failed: Vec<&SeedOutcome> = outcomes.iter().filter(|o| o.failed()).collect();
    let sim_seconds: f64 = outcomes.iter().map(|o| o.report.sim_ns as f64 / 1e9).sum();
    let total = |f: fn(&SeedOutcome) -> u64| outcomes.iter().map(f).sum::<u64>();
    println!(
        "seeds={} failed={} sim_seconds={:.1} wall_seconds={:.2} seeds_per_minute={:.0} sim_seconds_per_wall_second={:.1} \
         snapshots={} installs={} compactions={} expiries={} wipes={}",
        outcomes.len(),
        failed.len(),
        sim_seconds,
        wall_seconds,
        outcomes.len() as f64 * 60.0 / wall_seconds.max(1e-9),
        sim_seconds / wall_seconds.max(1e-9),
        total(|o| o.report.snapshots),
        total(|o| o.report.installs),
        total(|o| o.report.compactions),
        total(|o| o.report.expiries),
        total(|o| o.report.wipes),
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
