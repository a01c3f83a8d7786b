//! The `tarn-sim` binary's user interface: the summary line and exit codes.

use std::process::Command;

fn tarn_sim(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tarn-sim")).args(args).output().expect("run tarn-sim");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn sweep_prints_the_summary_line_and_exits_zero() {
    let (code, stdout, stderr) =
        tarn_sim(&["--seeds", "3", "--start", "10", "--sim-seconds", "1", "--jobs", "1"]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let summary = stdout.lines().find(|l| l.starts_with("seeds=")).expect("summary line");
    assert!(summary.starts_with("seeds=3 failed=0 sim_seconds="), "{summary}");
    assert!(summary.contains(" wall_seconds="), "{summary}");
}

#[test]
fn one_seed_replays_with_the_same_digest() {
    let digest = |out: &str| out.lines().find(|l| l.starts_with("seed=42 ")).map(|l| l.to_string());
    let (c1, o1, _) = tarn_sim(&["--seed", "42", "--sim-seconds", "1"]);
    let (c2, o2, _) = tarn_sim(&["--seed", "42", "--sim-seconds", "1"]);
    assert_eq!((c1, c2), (0, 0));
    assert!(digest(&o1).is_some_and(|l| l.contains("digest=")), "{o1}");
    assert_eq!(digest(&o1), digest(&o2));
}

#[test]
fn bad_arguments_are_refused_with_a_clear_message() {
    let (code, _, stderr) = tarn_sim(&["--nodes", "9"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--nodes"), "{stderr}");
    let (code, _, stderr) = tarn_sim(&["--profile", "wild"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("swarm"), "{stderr}");
    let (code, _, stderr) = tarn_sim(&["--sim-seconds", "-1"]);
    assert_eq!(code, 2, "{stderr}");
}

#[test]
fn trace_prints_every_event() {
    let (code, stdout, _) =
        tarn_sim(&["--seed", "1", "--sim-seconds", "0.5", "--trace", "--profile", "calm"]);
    assert_eq!(code, 0);
    assert!(stdout.lines().filter(|l| l.contains("AppendEntries")).count() > 10, "{stdout}");
    assert!(stdout.contains("role Leader"), "no election in the trace");
}

/// A failing seed: exit code 3 (safety), the property, the last events and
/// the one-line replay command; replaying gives the same failure.
#[cfg(feature = "planted-bugs")]
#[test]
fn a_safety_failure_prints_seed_property_trace_and_replay_command() {
    let args = [
        "--seed",
        "0",
        "--profile",
        "chaos",
        "--sim-seconds",
        "5",
        "--planted-bug",
        "forget-to-persist-vote",
    ];
    let (code, stdout, stderr) = tarn_sim(&args);
    assert_eq!(code, 3, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("FAIL seed=0 kind=safety property=vote-durability"), "{stderr}");
    assert!(stderr.contains("last 60 events (virtual time):"), "{stderr}");
    let replay = stderr.lines().find(|l| l.trim_start().starts_with("replay: ")).expect("replay line");
    assert!(
        replay.contains("--seed 0") && replay.contains("--planted-bug forget-to-persist-vote"),
        "{replay}"
    );
    assert!(stdout.contains("seeds=1 failed=1"), "{stdout}");
    let (code_again, _, stderr_again) = tarn_sim(&args);
    assert_eq!((code_again, stderr_again), (code, stderr));
}
