//! Quiescence in the simulator (issue 17): half the runs of every profile
//! but `calm` turn on `Config::quiesce`, simulate node-level liveness
//! (pings through the faulty network, `PeerDown`/`PeerUp` to the group),
//! idle their clients in windows, and crash or cut off the quiet leader.
//! Every checker, liveness included, must pass.

use tarn_sim::profile::ProfileKind;
use tarn_sim::queue::NANOS_PER_SECOND;
use tarn_sim::sweep::{describe_failure, sweep};
use tarn_sim::world::RunConfig;

/// Fails if a quiet group's crashed leader is never replaced (liveness),
/// if quiescence breaks a safety checker, or if the runs stop drawing it.
#[test]
fn quiescent_runs_with_crashed_and_cut_off_quiet_leaders_pass() {
    for (profile, nodes) in [(ProfileKind::Swarm, 3), (ProfileKind::Chaos, 5)] {
        let mut template = RunConfig::new(0);
        template.profile = profile;
        template.nodes = nodes;
        template.sim_ns = 5 * NANOS_PER_SECOND;
        let outcomes = sweep(&template, 7_000_000, 60, 2, false, &|_| {});
        let failures: Vec<String> =
            outcomes.iter().filter(|o| o.failed()).map(|o| describe_failure(&template, o)).collect();
        assert!(failures.is_empty(), "{profile}: {}", failures.join("\n"));
        let quiet = outcomes.iter().filter(|o| o.report.profile.contains("quiesce[")).count();
        assert!((15..=45).contains(&quiet), "{profile}: {quiet} of 60 runs quiesce");
    }
}

/// Issue 17: a quiet group replaces a crashed or cut-off leader within two
/// election timeouts, counted from the fault (node-level liveness needs up
/// to 125 ms of it to suspect the leader). Timed only where nothing but
/// Raft decides (see `World::quiet_leader_fault`); the `failover-time`
/// checker fails a run at four timeouts. Measured on these seeds: 17
/// failovers, none over two timeouts, the longest 0.4 s; over 6,000 seeds
/// of 3 and 7 nodes 325 failovers, one 11 ms over two timeouts (611 ms).
#[test]
fn quiet_leaders_are_replaced_within_two_election_timeouts() {
    let mut template = RunConfig::new(0);
    template.profile = ProfileKind::Swarm;
    template.nodes = 3;
    template.sim_ns = 10 * NANOS_PER_SECOND;
    let outcomes = sweep(&template, 7_100_000, 600, 2, false, &|_| {});
    let failures: Vec<String> =
        outcomes.iter().filter(|o| o.failed()).map(|o| describe_failure(&template, o)).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let failovers: u64 = outcomes.iter().map(|o| o.report.failovers).sum();
    let slow: u64 = outcomes.iter().map(|o| o.report.failovers_slow).sum();
    let longest = outcomes.iter().map(|o| o.report.failover_max_ms).max().unwrap_or(0);
    assert!(failovers >= 10, "only {failovers} timed failovers in 600 seeds");
    assert!(slow * 10 <= failovers, "{slow} of {failovers} failovers took over two election timeouts");
    assert!(longest < 1_000, "the longest failover took {longest} ms");
}
