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
