//! Every seed that ever failed at scale, replayed with the flags it failed
//! with. Each one was a bug report; docs/sim-failures.md says what each
//! root cause was and which commit fixed it. A new failing seed found by a
//! sweep joins this list in the commit that fixes it.
//!
//! A seed names a run of the generator of its day: when the simulator
//! learns new faults or knobs, an old seed's run changes, and the bug it
//! found is then held by the unit test written with its fix (listed in the
//! docs). The seeds stay here as more runs that must pass.

use tarn_sim::profile::ProfileKind;
use tarn_sim::queue::NANOS_PER_SECOND;
use tarn_sim::sweep::{describe_failure, run_seed};
use tarn_sim::world::RunConfig;

/// (nodes, profile, simulated seconds, seeds).
const FAILED_SEEDS: &[(usize, ProfileKind, u64, &[u64])] = &[
    // Issue 12, 3-node swarm.
    (
        3,
        ProfileKind::Swarm,
        10,
        &[
            7003387, 7003729, 7004079, 7004693, 7005004, 7006899, 7007404, 7010018, 7013392, 7014330,
            7015021, 7015260, 7019401, 7021713, 7022408, 7029738, 7031264, 7032954, 7035852, 7038009,
            7044184, 7047495, 7050371,
        ],
    ),
    // Issue 12, 3-node chaos (the first 20 of 111 failures in 154,000 seeds).
    (
        3,
        ProfileKind::Chaos,
        10,
        &[
            5000063, 5001765, 5006149, 5006797, 5010008, 5011678, 5012422, 5013042, 5015602, 5015758,
            5018149, 5018769, 5019504, 5019960, 5020231, 5020859, 5025135, 5025196, 5025355, 5029932,
        ],
    ),
    // Issue 12, 5-node swarm, 40 simulated seconds.
    (5, ProfileKind::Swarm, 40, &[8002878, 8004415, 8007530]),
    // Issue 12, defaults (5-node swarm, 10 s).
    (5, ProfileKind::Swarm, 10, &[17598, 29699]),
    // Found by sweeps while fixing issue 12 (docs/sim-failures.md).
    (5, ProfileKind::Swarm, 40, &[7004300]),
    (5, ProfileKind::Chaos, 10, &[40000106]),
    (5, ProfileKind::Swarm, 10, &[42001059, 91]),
    (3, ProfileKind::Chaos, 40, &[22016619]),
    (7, ProfileKind::Chaos, 10, &[60125543]),
    (5, ProfileKind::Chaos, 10, &[23064981]),
    (5, ProfileKind::Chaos, 40, &[23056445]),
    (5, ProfileKind::Swarm, 40, &[24078876]),
    (5, ProfileKind::Chaos, 10, &[24103109]),
    // Session 4's sweep of 3664e15 (a vote lost to a damaged slot; a wipe
    // of a voter an in-flight configuration needed).
    (3, ProfileKind::Chaos, 40, &[200183627, 200156699, 200215371, 200217563]),
    // Session 5's first sweep of the executor-driven simulator (the watch
    // checker positioned a restarted node's watch before events no node had
    // reported yet).
    (7, ProfileKind::Swarm, 40, &[900042453]),
    (3, ProfileKind::Swarm, 10, &[900045171]),
    // Forwarded read ids reused after a restart (a stale ReadIndexResponse
    // released a new read).
    (3, ProfileKind::Chaos, 40, &[950024272]),
    // Issue 17 (quiescence): followers of a wiped leader that restarted
    // before anyone suspected it; pings starving 16-message link queues.
    (3, ProfileKind::Swarm, 10, &[7002302]),
    (3, ProfileKind::Chaos, 10, &[7000165]),
    (5, ProfileKind::Chaos, 10, &[7000165, 7002194]),
    (5, ProfileKind::Swarm, 10, &[7002112]),
    (7, ProfileKind::Swarm, 10, &[7000033, 7000038, 7000165, 7000694, 7001477]),
    // The client route bounced between a stale hint and a node that knew
    // no leader (session 10).
    (7, ProfileKind::Swarm, 10, &[358]),
    (7, ProfileKind::Chaos, 40, &[1900007326]),
];

#[test]
fn every_seed_that_ever_failed_passes() {
    let mut failures = Vec::new();
    let mut ran = 0;
    for &(nodes, profile, sim_seconds, seeds) in FAILED_SEEDS {
        let mut template = RunConfig::new(0);
        template.nodes = nodes;
        template.profile = profile;
        template.sim_ns = sim_seconds * NANOS_PER_SECOND;
        for &seed in seeds {
            let outcome = run_seed(&template, seed, false);
            ran += 1;
            if outcome.failed() {
                failures.push(describe_failure(&template, &outcome));
            } else {
                // The run did real work: it is a replay, not a vacuous pass.
                assert!(outcome.report.ops_completed > 0, "seed {seed}: no operation completed");
            }
        }
    }
    assert!(ran >= 48, "the list holds at least every seed of issue 12");
    assert!(
        failures.is_empty(),
        "{} of {ran} past failures fail again:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
