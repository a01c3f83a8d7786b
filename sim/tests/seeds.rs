//! The fixed, fast seed set `cargo test -p tarn-sim` runs, and the
//! determinism test: the same seed twice gives the same trace digest.

use tarn_sim::profile::ProfileKind;
use tarn_sim::queue::NANOS_PER_SECOND;
use tarn_sim::sweep::{describe_failure, run_seed, sweep, SeedOutcome};
use tarn_sim::world::RunConfig;

fn config(profile: ProfileKind, nodes: usize, sim_seconds: u64) -> RunConfig {
    let mut c = RunConfig::new(0);
    c.profile = profile;
    c.nodes = nodes;
    c.sim_ns = sim_seconds * NANOS_PER_SECOND;
    c
}

fn assert_all_pass(template: &RunConfig, start: u64, count: u64) -> Vec<SeedOutcome> {
    let outcomes = sweep(template, start, count, 2, false, &|_| {});
    let failures: Vec<String> =
        outcomes.iter().filter(|o| o.failed()).map(|o| describe_failure(template, o)).collect();
    assert!(failures.is_empty(), "{} of {count} seeds failed:\n{}", failures.len(), failures.join("\n"));
    // Every run did real work: operations completed and entries committed.
    for o in &outcomes {
        assert!(o.report.ops_completed > 0, "seed {}: no operation completed", o.report.seed);
        assert!(o.report.max_commit > 0, "seed {}: nothing committed", o.report.seed);
        assert_eq!(o.report.ops_completed, o.report.ops_invoked, "seed {}: ops left pending", o.report.seed);
    }
    outcomes
}

#[test]
fn swarm_seeds_pass_on_five_nodes() {
    let outcomes = assert_all_pass(&config(ProfileKind::Swarm, 5, 5), 0, 24);
    // The swarm profile's small snapshot thresholds make nodes snapshot,
    // compact their logs and install snapshots on lagging followers.
    let total = |f: fn(&SeedOutcome) -> u64| outcomes.iter().map(f).sum::<u64>();
    let (snapshots, compactions, installs) =
        (total(|o| o.report.snapshots), total(|o| o.report.compactions), total(|o| o.report.installs));
    assert!(snapshots >= 50, "only {snapshots} snapshots taken in 24 seeds");
    assert!(compactions >= 50, "only {compactions} log compactions in 24 seeds");
    assert!(installs >= 5, "only {installs} snapshot installs in 24 seeds");
    let seeds_installing = outcomes.iter().filter(|o| o.report.installs > 0).count();
    assert!(seeds_installing >= 3, "only {seeds_installing} of 24 seeds installed a snapshot");
    // Temporary registers and short lock leases expire (the leader proposes
    // the expiries, recorded as system removes for the checkers).
    let expiries = total(|o| o.report.expiries);
    assert!(expiries >= 20, "only {expiries} TTL expiries took effect in 24 seeds");
    // Disks are wiped and their nodes rejoin (removed, re-added, promoted).
    let wipes = total(|o| o.report.wipes);
    assert!(wipes >= 3, "only {wipes} wiped disks in 24 seeds");
    // Issue 15 gaps 4 and 5: refreshes race expiries, lock waiters are
    // handed the lock, leaders serve lease reads while clocks drift.
    let (races, handoffs, lease_reads) =
        (total(|o| o.report.ttl_races), total(|o| o.report.handoffs), total(|o| o.report.lease_reads_skewed));
    assert!(races >= 5, "only {races} TTL refreshes raced an expiry in 24 seeds");
    assert!(handoffs >= 3, "only {handoffs} lock hand-offs in 24 seeds");
    assert!(lease_reads >= 100, "only {lease_reads} lease reads under clock skew in 24 seeds");
    // Issue 14: clients watch through the request path, and their watches
    // end (cut off, lost with a node, unwatched) and resume; the
    // client-watch checker judged every event.
    let (watch_events, watch_resumes) = (total(|o| o.report.watch_events), total(|o| o.report.watch_resumes));
    assert!(watch_events >= 500, "only {watch_events} events reached watching clients in 24 seeds");
    assert!(watch_resumes >= 20, "only {watch_resumes} watch resumes in 24 seeds");
    // Issue 14: nodes restart in place while snapshot jobs run (measured 6
    // of 6), and shared sessions keep several writes in flight, which
    // connection readers pack into one entry (measured 837 and 98).
    let (restarts, waited) = (total(|o| o.report.restarts_in_place), total(|o| o.report.jobs_waited));
    assert!(
        restarts >= 2 && waited >= 2,
        "{restarts} restarts in place waited for {waited} jobs in 24 seeds"
    );
    let (pipelined, batches) = (total(|o| o.report.pipelined_writes), total(|o| o.report.write_batches));
    assert!(
        pipelined >= 200,
        "only {pipelined} writes sent behind an unanswered one of their session in 24 seeds"
    );
    assert!(batches >= 20, "only {batches} connection reads found several writes at once in 24 seeds");
}

#[test]
fn chaos_seeds_pass_on_three_and_seven_nodes() {
    assert_all_pass(&config(ProfileKind::Chaos, 3, 4), 1000, 6);
    assert_all_pass(&config(ProfileKind::Chaos, 7, 3), 2000, 3);
}

/// A bounded sweep for the mutation judge (`scripts/mutants.sh` runs this
/// crate's tests): chaos on five nodes reaches windows the short runs above
/// miss. A vote granted again on a repeated request before it was durable
/// (the mutant `vote_durable -> true`) first fails at seed 411 of 0..1000,
/// by `vote-durability`, and survived the judge without this test.
#[test]
fn chaos_sweep_on_five_nodes_passes() {
    assert_all_pass(&config(ProfileKind::Chaos, 5, 10), 0, 600);
}

#[test]
fn calm_runs_commit_steadily() {
    let template = config(ProfileKind::Calm, 5, 3);
    let outcome = run_seed(&template, 7, false);
    assert!(!outcome.failed(), "{}", describe_failure(&template, &outcome));
    // 4 clients, each thinking at most 20 ms, for 3 s: hundreds of operations.
    assert!(outcome.report.ops_completed > 300, "only {} ops completed", outcome.report.ops_completed);
}

#[test]
fn the_same_seed_gives_the_same_trace_digest() {
    let template = config(ProfileKind::Chaos, 5, 3);
    let mut digests = Vec::new();
    for seed in [3, 4, 5] {
        let outcome = run_seed(&template, seed, true);
        assert_eq!(outcome.digest_mismatch, None, "seed {seed} is not deterministic");
        digests.push(outcome.report.digest);
    }
    digests.dedup();
    assert_eq!(digests.len(), 3, "different seeds should give different runs");
}

#[test]
fn a_single_node_cluster_works() {
    assert_all_pass(&config(ProfileKind::Swarm, 1, 2), 50, 3);
}

#[test]
fn the_real_storage_engine_is_attacked_and_recovers() {
    let template = config(ProfileKind::Chaos, 5, 5);
    let outcomes = sweep(&template, 500, 6, 2, false, &|_| {});
    for o in &outcomes {
        assert!(!o.failed(), "{}", describe_failure(&template, o));
    }
    let crashes: u64 = outcomes.iter().map(|o| o.report.crashes).sum();
    let disk_faults: u64 = outcomes.iter().map(|o| o.report.disk_faults).sum();
    assert!(crashes >= 6, "chaos runs crashed nodes only {crashes} times");
    assert!(disk_faults > 0, "no disk fault was injected in 6 chaos runs");
}

#[test]
fn modelled_storage_runs_pass_too() {
    let mut template = config(ProfileKind::Swarm, 5, 4);
    template.storage = tarn_sim::world::StorageKind::Model;
    assert_all_pass(&template, 700, 6);
}

/// Regression: these chaos seeds once lost acknowledged entries. A node's
/// first storage open failed (injected EIO) before the group directory was
/// fsynced; the retry found the segment by name and acknowledged appends into
/// it, and a power loss then took the never-durable name with them. The engine
/// now fsyncs the directories on every open.
#[test]
fn storage_open_makes_found_names_durable() {
    let template = config(ProfileKind::Chaos, 5, 10);
    for seed in [50802, 50846] {
        let outcome = run_seed(&template, seed, false);
        assert!(!outcome.failed(), "{}", describe_failure(&template, &outcome));
        assert!(outcome.report.max_commit > 0, "seed {seed}: nothing committed");
    }
}

/// A wiped node restarted without `rejoin_after_data_loss` forgets the vote
/// it granted and can grant another in the same term; the simulator finds
/// it (about 1 chaos seed in 400 on 5 nodes, more ending in state machine
/// safety), and the flag prevents it. The seeds that show it move whenever
/// simulated behaviour changes, so the test looks for the first one from
/// 300000 (`tarn-sim --seeds 4000 --start 300000 --nodes 5 --profile chaos
/// --no-rejoin-flag` lists them) and replays it with the flag.
#[test]
fn a_wiped_node_without_the_rejoin_flag_votes_twice() {
    let mut template = config(ProfileKind::Chaos, 5, 10);
    template.rejoin_flag = false;
    let outcomes = sweep(&template, 300_000, 3_000, 2, false, &|_| {});
    let double_vote = outcomes
        .iter()
        .find(|o| o.report.failure.as_ref().is_some_and(|f| f.property == "one-vote-per-term"))
        .expect("without the flag, a wiped node votes twice in some term within 3,000 chaos seeds");
    let seed = double_vote.report.seed;
    template.rejoin_flag = true;
    let with_flag = run_seed(&template, seed, false);
    assert!(!with_flag.failed(), "seed {seed} with the flag: {}", describe_failure(&template, &with_flag));
    assert!(with_flag.report.wipes > 0, "seed {seed} wipes a disk");
}

/// Regression: a snapshot transfer looped forever. The follower had staged
/// chunks whose acknowledgements were lost; the leader rewound to offset 0
/// and ignored the follower's "next offset 256" because it had not re-sent
/// that far. The leader now skips ahead to any offset it sent before.
/// (Seed 163010 showed it; it passes, and since the simulator's
/// trajectories moved it need not install, so the seeds around it must.)
#[test]
fn a_snapshot_transfer_resumes_past_a_rewind() {
    let template = config(ProfileKind::Swarm, 3, 10);
    let outcomes = assert_all_pass(&template, 163_010, 24);
    let installs: u64 = outcomes.iter().map(|o| o.report.installs).sum();
    assert!(installs > 0, "seeds 163010-163033 must still install snapshots");
}
