//! The simulator must find bugs: with each classic Raft bug planted in the
//! core (feature `planted-bugs`), a sweep fails within a bounded number of
//! seeds (on a safety property, or as lost liveness); without the bug, the
//! same seeds pass.
//!
//! Run: `cargo test -p tarn-sim --features planted-bugs --release --test planted_bugs -- --nocapture`
#![cfg(feature = "planted-bugs")]

use tarn_sim::profile::ProfileKind;
use tarn_sim::queue::{NANOS_PER_MILLI, NANOS_PER_SECOND};
use tarn_sim::sweep::{describe_failure, run_seed};
use tarn_sim::world::{planted_bug_name, FailureKind, PlantedBug, RunConfig, PLANTED_BUGS};

/// A sweep must find each bug within this many seeds (measured: see the
/// simulator's notes; the worst bug needed 42 seeds when this was written).
const SEEDS_MAX: u64 = 300;

fn template(profile: ProfileKind, bug: Option<PlantedBug>) -> RunConfig {
    let mut c = RunConfig::new(0);
    c.profile = profile;
    c.sim_ns = 5 * NANOS_PER_SECOND;
    c.planted_bug = bug;
    if profile == ProfileKind::Lease {
        // Three nodes: the cut-off leader's lease and the two others'
        // election race line up about three times as often as with five.
        c.nodes = 3;
    }
    c
}

/// The lease profile's search bound: its bug is rarer (14 in 1,500 seeds on
/// 3 nodes, the first at seed 0, since the profile's prober reads at a
/// stale leader right after a new leader's first commit; 1-2 in 1,500
/// before it).
const LEASE_SEEDS_MAX: u64 = 1_000;

/// The first failing seed in `0..SEEDS_MAX`, with the property it violated.
fn seeds_to_find(profile: ProfileKind, bug: PlantedBug) -> Option<(u64, &'static str)> {
    seeds_to_find_within(profile, bug, SEEDS_MAX)
}

/// The first failing seed in `0..max`, with the property it violated.
fn seeds_to_find_within(profile: ProfileKind, bug: PlantedBug, max: u64) -> Option<(u64, &'static str)> {
    let config = template(profile, Some(bug));
    for seed in 0..max {
        let outcome = run_seed(&config, seed, false);
        if let Some(failure) = &outcome.report.failure {
            // A planted bug shows as a safety violation, or as a cluster that
            // can no longer make progress (e.g. a leader elected without the log
            // check whose log the followers must refuse) — never as a panic.
            assert!(
                matches!(failure.kind, FailureKind::Safety | FailureKind::Liveness),
                "{}: expected a safety or liveness failure, got:\n{}",
                planted_bug_name(bug),
                describe_failure(&config, &outcome)
            );
            // The same seed without the bug must pass: the failure is the bug's.
            let control = run_seed(&template(profile, None), seed, false);
            assert!(
                !control.failed(),
                "seed {seed} fails even without the planted bug:\n{}",
                describe_failure(&template(profile, None), &control)
            );
            return Some((seed + 1, failure.property));
        }
    }
    None
}

/// Bugs only their own profile or mode finds within `SEEDS_MAX` (see the
/// tests below): swarm and chaos sweeps in sync write mode are not expected to.
const PROFILE_SPECIFIC: [PlantedBug; 2] = [PlantedBug::LeaseIgnoresDrift, PlantedBug::AsyncSyncWaitsForQuiet];

fn check_all(profile: ProfileKind) {
    let mut missed = Vec::new();
    for bug in PLANTED_BUGS.into_iter().filter(|b| !PROFILE_SPECIFIC.contains(b)) {
        match seeds_to_find(profile, bug) {
            Some((seeds, property)) => {
                println!("{profile} {}: found after {seeds} seed(s) by {property}", planted_bug_name(bug))
            }
            None => missed.push(planted_bug_name(bug)),
        }
    }
    assert!(missed.is_empty(), "{profile}: not found within {SEEDS_MAX} seeds: {missed:?}");
}

#[test]
fn swarm_sweep_finds_every_planted_bug() {
    check_all(ProfileKind::Swarm);
}

#[test]
fn chaos_sweep_finds_every_planted_bug() {
    check_all(ProfileKind::Chaos);
}

/// The end-to-end checker on its own: with the direct read check off, the
/// linearizability checker must catch the stale reads of a leader that
/// serves reads without confirming its leadership.
#[test]
fn linearizability_checker_alone_finds_stale_reads() {
    let mut config = template(ProfileKind::Chaos, Some(PlantedBug::ReadWithoutLeadershipCheck));
    config.read_floor_check = false;
    // Rarer than a direct check's find (about 16 seeds in 1,000 since issue
    // 15's workload; the first was seed 346), hence a longer search.
    const STALE_READ_SEEDS_MAX: u64 = 1_000;
    let found = (0..STALE_READ_SEEDS_MAX).find_map(|seed| {
        let outcome = run_seed(&config, seed, false);
        outcome.report.failure.map(|f| (seed + 1, f.property))
    });
    let (seeds, property) = found.expect("stale reads not found by the linearizability checker");
    println!("chaos read-without-leadership-check (linearizability only): found after {seeds} seed(s) by {property}");
    assert_eq!(property, "linearizability");
}

/// Issue 15 gap 4: an expiry that comes too early is linearizable (the
/// system remove may land anywhere from its proposal on), so only the TTL
/// lower-bound checker can see it. It must name the planted bug's early
/// expiry, and stay quiet on every seed before that one without the bug.
#[test]
fn ttl_lower_bound_checker_finds_early_expiries() {
    let bug = PlantedBug::TtlDeadlineFromProposerClock;
    for profile in [ProfileKind::Swarm, ProfileKind::Chaos] {
        let (seeds, property) = seeds_to_find(profile, bug).expect("early expiry not found");
        assert_eq!(property, "ttl-lower-bound", "{profile}");
        for seed in 0..seeds {
            let control = run_seed(&template(profile, None), seed, false);
            assert!(!control.failed(), "{}", describe_failure(&template(profile, None), &control));
        }
    }
}

/// Issue 15 gap 5: a lease that ignores the drift bound is 2 % too long;
/// only the lease profile (clocks at the bound, barely randomized election
/// timeouts, a cut-off leader, fast network and disks) builds the few
/// milliseconds in which a new leader commits while the old one still
/// serves reads from its lease. Rare even there: 7 seeds in 1,500 on 3
/// nodes with every isolation cutting off the leader (the first at seed
/// 312), 0 in swarm and chaos sweeps of 300.
#[test]
fn lease_profile_finds_a_lease_that_ignores_drift() {
    let (seeds, property) =
        seeds_to_find_within(ProfileKind::Lease, PlantedBug::LeaseIgnoresDrift, LEASE_SEEDS_MAX)
            .expect("lease bug not found");
    println!("lease lease-ignores-drift: found after {seeds} seed(s) by {property}");
}

/// The async write mode's background sync (paced by the driver's
/// `SyncPacer`): a pacer that waits for a quiet interval never syncs under
/// steady load, and the sync-lag check catches it; the correct pacer passes
/// the same seeds.
#[test]
fn async_writes_find_a_sync_that_waits_for_a_quiet_moment() {
    let bug = PlantedBug::AsyncSyncWaitsForQuiet;
    for profile in [ProfileKind::Swarm, ProfileKind::Chaos] {
        let async_template = |bug| {
            let mut c = template(profile, bug);
            c.async_sync_ns = Some(20 * NANOS_PER_MILLI);
            c
        };
        let config = async_template(Some(bug));
        let found = (0..SEEDS_MAX).find_map(|seed| {
            let outcome = run_seed(&config, seed, false);
            let failure = outcome.report.failure.as_ref()?;
            assert_eq!(failure.property, "async-sync-lag", "{}", describe_failure(&config, &outcome));
            let control = run_seed(&async_template(None), seed, false);
            assert!(!control.failed(), "{}", describe_failure(&async_template(None), &control));
            Some(seed + 1)
        });
        let seeds = found
            .unwrap_or_else(|| panic!("{profile}: {} not found in {SEEDS_MAX} seeds", planted_bug_name(bug)));
        println!(
            "{profile} (async writes) {}: found after {seeds} seed(s) by async-sync-lag",
            planted_bug_name(bug)
        );
    }
}
