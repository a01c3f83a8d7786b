//! The `tarn` binary against a real server: plain and JSON output, exit
//! codes (0 ok, 1 error, 3 not found), one-line errors.

mod common;

use std::process::Output;
use std::time::Duration;

use common::TestCluster;

fn tarn(endpoint: &str, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tarn"))
        .arg("--endpoints")
        .arg(endpoint)
        .arg("--timeout-ms")
        .arg("10000")
        .args(args)
        .output()
        .expect("run the tarn binary")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_commands_print_plain_and_json_with_meaningful_exit_codes() {
    let cluster = tokio::time::timeout(Duration::from_secs(30), TestCluster::start(1)).await.expect("start");
    let ep = cluster.endpoints()[0].to_string();
    let ep2 = ep.clone();
    tokio::task::spawn_blocking(move || {
        let ep = ep2.as_str();
        let o = tarn(ep, &["mkdir", "app"]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(stdout(&o), "ok\n");
        assert!(tarn(ep, &["put", "app.greeting", "hello"]).status.success());
        let o = tarn(ep, &["get", "app.greeting"]);
        assert_eq!((o.status.code(), stdout(&o)), (Some(0), "hello\n".to_string()));
        let o = tarn(ep, &["--json", "get", "app.greeting"]);
        assert!(
            stdout(&o).starts_with("{\"key\":\"app.greeting\",\"kind\":\"value\",\"value\":\"hello\""),
            "{}",
            stdout(&o)
        );
        let o = tarn(ep, &["ls", "app"]);
        assert_eq!(stdout(&o), "greeting\n");
        // Not found has its own exit code and a one-line error.
        let o = tarn(ep, &["get", "app.missing"]);
        assert_eq!(o.status.code(), Some(3));
        assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
        assert!(stderr(&o).contains("app.missing"));
        // Other errors: exit 1, one line naming the key.
        let o = tarn(ep, &["put", "nodir.x", "1"]);
        assert_eq!(o.status.code(), Some(1));
        assert_eq!(stderr(&o).lines().count(), 1);
        assert!(stderr(&o).contains("nodir.x"), "{}", stderr(&o));
        let o = tarn(ep, &["cas", "app.greeting", "--expect", "nope", "--new", "x"]);
        assert_eq!(o.status.code(), Some(1));
        assert!(tarn(ep, &["cas", "app.greeting", "--expect", "hello", "--new", "bye"]).status.success());
        assert_eq!(stdout(&tarn(ep, &["get", "app.greeting"])), "bye\n");
        let o = tarn(ep, &["status"]);
        assert!(stdout(&o).contains("group 1: Leader"), "{}", stdout(&o));
        let o = tarn(ep, &["--json", "status"]);
        assert!(stdout(&o).contains("\"role\":\"Leader\""), "{}", stdout(&o));
        // Watch replays history from an index and exits after --count events.
        let o = tarn(ep, &["watch", "app", "--subtree", "--after", "0", "--count", "3"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let out = stdout(&o);
        assert!(
            out.contains("mkdir app")
                && out.contains("put app.greeting hello")
                && out.contains("put app.greeting bye"),
            "{out}"
        );
        // Lock: acquire, hold briefly, release.
        let o = tarn(ep, &["lock", "app.lock", "--lease-ms", "2000", "--hold-ms", "100"]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stdout(&o).contains("released lock app.lock"));
        // Unreachable endpoint: exit 1 with one line.
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_tarn"))
            .args(["--endpoints", "127.0.0.1:1", "--timeout-ms", "300", "get", "k"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1));
        assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
        // Bad usage: clap's exit code 2.
        let o = tarn(ep, &["frobnicate"]);
        assert_eq!(o.status.code(), Some(2));
    })
    .await
    .expect("cli checks");
    let _ = ep;
    cluster.shutdown().await;
}

/// Kills the child process it holds when dropped (also on a failed assertion).
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `tarn` until `check` accepts its stdout, or panics after the test deadline.
fn poll_tarn(what: &str, endpoint: &str, args: &[&str], check: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + common::TEST_DEADLINE;
    loop {
        let out = stdout(&tarn(endpoint, args));
        if check(&out) {
            return out;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}; last output: {out}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_join_then_member_add_and_promote_from_the_cli() {
    let cluster = tokio::time::timeout(Duration::from_secs(30), TestCluster::start(3)).await.expect("start");
    let founders: Vec<String> = cluster.endpoints().iter().map(|a| a.to_string()).collect();
    let (client4, peer4) = (common::free_addr().to_string(), common::free_addr().to_string());
    let data4 = cluster.dir.path().join("n4");
    tokio::task::spawn_blocking(move || {
        let all = founders.join(",");
        assert!(tarn(&all, &["put", "before", "1"]).status.success());
        // The README's commands: a fourth node joins, is added, then promoted.
        let _node4 = Child(
            std::process::Command::new(env!("CARGO_BIN_EXE_tarn"))
                .args(["serve", "--join", "--join-endpoints", &all, "--id", "4"])
                .args(["--client", &client4, "--peer", &peer4, "--election-timeout-ms", "150"])
                .arg("--data-dir")
                .arg(&data4)
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start tarn serve --join"),
        );
        poll_tarn("node 4 to serve", &client4, &["--json", "status"], |o| o.contains("\"node\":4"));
        let o = tarn(&all, &["member", "add", "4", &peer4, "--learner"]);
        assert!(o.status.success(), "{}", stderr(&o));
        poll_tarn("node 4 to rejoin", &client4, &["--json", "status"], |o| o.contains("\"rejoining\":false"));
        let o = tarn(&all, &["member", "promote", "4"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let o = tarn(&all, &["--json", "status"]);
        assert!(stdout(&o).contains("\"voters\":[1,2,3,4]"), "{}", stdout(&o));
        assert!(tarn(&all, &["put", "after", "2"]).status.success());
        // Node 4 holds both writes: a stale read is answered by node 4 itself.
        poll_tarn("node 4 to apply the last write", &client4, &["get", "--stale", "after"], |o| o == "2\n");
        assert_eq!(stdout(&tarn(&client4, &["get", "--stale", "before"])), "1\n");
    })
    .await
    .expect("cli join checks");
    cluster.shutdown().await;
}

/// Operator mistakes from the CLI (issue 13): each fails with exit 1 and one
/// line that says what is wrong, and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_refuses_operator_mistakes_in_one_line() {
    let cluster = tokio::time::timeout(Duration::from_secs(30), TestCluster::start(3)).await.expect("start");
    cluster.leader().await;
    let all: Vec<String> = cluster.endpoints().iter().map(|a| a.to_string()).collect();
    let peer1 = cluster.peers[&1].to_string();
    tokio::task::spawn_blocking(move || {
        let all = all.join(",");
        let fails = |o: &Output, says: &str| {
            assert_eq!(o.status.code(), Some(1), "{}", stderr(o));
            assert_eq!(stderr(o).lines().count(), 1, "{}", stderr(o));
            assert!(stderr(o).contains(says), "expected {says:?} in: {}", stderr(o));
        };
        assert!(tarn(&all, &["put", "k", "v"]).status.success());
        // Removing a group needs --yes, and says what it would delete.
        fails(&tarn(&all, &["group", "remove", "1"]), "Add --yes to confirm");
        assert_eq!(stdout(&tarn(&all, &["get", "k"])), "v\n", "group 1 untouched");
        fails(&tarn(&all, &["transfer-leader", "--to", "9"]), "node 9 is not a voter of group 1");
        // A TTL whose nanoseconds overflow u64 used to expire at once.
        fails(&tarn(&all, &["put", "t", "v", "--ttl-ms", "18446744073711"]), "out of range");
        assert_eq!(tarn(&all, &["get", "t"]).status.code(), Some(3), "nothing written");
        fails(&tarn(&all, &["mkdir", "_tarn"]), "reserved namespace _tarn");
        // A bench flag that only --embedded servers take is refused, not ignored.
        fails(
            &tarn(&all, &["bench", "--snapshot-after-entries", "5"]),
            "tarn serve --snapshot-after-entries",
        );
        // A peer port instead of a client port: at once, not after --timeout-ms.
        let started = std::time::Instant::now();
        fails(&tarn(&peer1, &["get", "k"]), &format!("{peer1} is a peer port"));
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    })
    .await
    .expect("cli mistake checks");
    let s = cluster.servers[&1].status().await;
    let count = s.counters.iter().find(|(n, _)| n == "peer_port_clients").map(|(_, v)| *v);
    assert_eq!(count, Some(1), "one connection, one try");
    cluster.shutdown().await;
}

/// Runs `tarn` with `input` on stdin.
fn tarn_with_stdin(endpoint: &str, args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tarn"))
        .arg("--endpoints")
        .arg(endpoint)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the tarn binary");
    child.stdin.take().expect("stdin").write_all(input).expect("write stdin");
    child.wait_with_output().expect("tarn output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_from_stdin_or_a_file_and_status_of_a_down_endpoint() {
    let cluster = tokio::time::timeout(Duration::from_secs(30), TestCluster::start(1)).await.expect("start");
    let ep = cluster.endpoints()[0].to_string();
    let dir = tempfile::tempdir().unwrap();
    tokio::task::spawn_blocking(move || {
        let ep = ep.as_str();
        assert!(tarn(ep, &["mkdir", "app"]).status.success());
        // 300 KiB: more than a command line holds.
        let big: Vec<u8> = (0..300 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
        let o = tarn_with_stdin(ep, &["put", "app.big", "-"], &big);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(tarn(ep, &["get", "app.big"]).stdout, [big.as_slice(), b"\n"].concat());
        let file = dir.path().join("v");
        std::fs::write(&file, b"from a file").unwrap();
        let o = tarn(ep, &["put", "app.f", "--file", file.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(stdout(&tarn(ep, &["get", "app.f"])), "from a file\n");
        let o = tarn(ep, &["put", "app.f", "--file", "/no/such/file"]);
        assert_eq!(o.status.code(), Some(1));
        assert!(stderr(&o).contains("/no/such/file"), "{}", stderr(&o));
        // Status with one endpoint down: the live one is shown, the dead one
        // is reported once, and the exit code says something is down.
        let dead = common::free_addr().to_string();
        let both = format!("{ep},{dead}");
        let o = tarn(&both, &["status"]);
        assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
        assert!(stdout(&o).contains("group 1: Leader"), "{}", stdout(&o));
        assert_eq!(stdout(&o).lines().filter(|l| l.contains(&dead)).count(), 1, "{}", stdout(&o));
        assert!(!stderr(&o).contains(&dead), "the error is printed once: {}", stderr(&o));
        assert!(stderr(&o).contains("1 of 2 endpoints unreachable"), "{}", stderr(&o));
    })
    .await
    .unwrap();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_of_groups_is_created_in_one_command_and_summarized_by_status() {
    let cluster = tokio::time::timeout(Duration::from_secs(30), TestCluster::start(1)).await.expect("start");
    let ep = cluster.endpoints()[0].to_string();
    tokio::task::spawn_blocking(move || {
        let ep = ep.as_str();
        let o = tarn(ep, &["group", "add", "2..41", "--voters", "1"]);
        assert!(o.status.success(), "{}", stderr(&o));
        // Again: the groups exist with these voters, so nothing to do.
        let o = tarn(ep, &["group", "add", "2..41", "--voters", "1"]);
        assert!(o.status.success(), "a repeated range is harmless: {}", stderr(&o));
        let o = tarn(ep, &["group", "add", "0..3", "--voters", "1"]);
        assert_eq!(o.status.code(), Some(2), "group 0 is refused at parsing: {}", stderr(&o));
        // 41 groups: a summary, until every group has elected itself.
        let out = poll_tarn("every group leads", ep, &["status"], |out| out.contains("41 groups: Leader 41"));
        assert!(!out.contains("group 17:"), "{out}");
        let o = tarn(ep, &["status", "--all-groups"]);
        assert_eq!(stdout(&o).lines().filter(|l| l.trim_start().starts_with("group ")).count(), 41);
        assert!(tarn(ep, &["--group", "41", "put", "k", "v"]).status.success());
        assert_eq!(stdout(&tarn(ep, &["--group", "41", "get", "k"])), "v\n");
    })
    .await
    .unwrap();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_is_valid_json_whatever_the_value() {
    let cluster = tokio::time::timeout(Duration::from_secs(30), TestCluster::start(1)).await.expect("start");
    let ep = cluster.endpoints()[0].to_string();
    tokio::task::spawn_blocking(move || {
        let ep = ep.as_str();
        assert!(tarn(ep, &["mkdir", "j"]).status.success());
        let tricky = "quote \" backslash \\ newline \n tab \t bell \u{7} é";
        assert!(tarn(ep, &["put", "j.v", tricky]).status.success());
        let parse = |o: &Output| -> Vec<serde_json::Value> {
            stdout(o)
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect()
        };
        let got = parse(&tarn(ep, &["--json", "get", "j.v"]));
        assert_eq!(got[0]["value"], tricky);
        assert_eq!(got[0]["kind"], "value");
        let listed = parse(&tarn(ep, &["--json", "ls", "j"]));
        assert_eq!(listed[0]["key"], "v");
        let status = parse(&tarn(ep, &["--json", "status"]));
        assert_eq!(status[0]["groups"][0]["role"], "Leader");
        assert!(status[0]["counters"]["requests"].as_u64().unwrap() > 0);
        assert_eq!(parse(&tarn(ep, &["--json", "rm", "j.v"]))[0]["ok"], true);
    })
    .await
    .unwrap();
    cluster.shutdown().await;
}

/// Runs `tarn` with exactly `args` (no endpoint added).
fn tarn_bare(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tarn")).args(args).output().expect("run the tarn binary")
}

const CLIENT_FLAGS: [&str; 4] = ["--endpoints", "--group", "--json", "--timeout-ms"];

/// Issue 18: the servers' help lists no client flag, every client command's
/// does, and the flags work after the command as well as before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_flags_belong_to_client_commands_only() {
    for server in [&["serve", "--help"][..], &["cluster", "--help"]] {
        let o = tarn_bare(server);
        assert!(o.status.success(), "{}", stderr(&o));
        for flag in CLIENT_FLAGS {
            assert!(!stdout(&o).contains(flag), "`tarn {server:?}` lists {flag}:\n{}", stdout(&o));
        }
    }
    assert!(stdout(&tarn_bare(&["serve", "--help"])).contains("--join-endpoints <ADDRS>"));
    for client in
        [&["get", "--help"][..], &["status", "--help"], &["group", "add", "--help"], &["bench", "--help"]]
    {
        let help = stdout(&tarn_bare(client));
        for flag in CLIENT_FLAGS {
            assert!(help.contains(flag), "`tarn {client:?}` lacks {flag}:\n{help}");
        }
    }
    // A client flag given to a server is bad usage (exit 2), not ignored.
    let o = tarn_bare(&["--json", "serve"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--json is a client flag"), "{}", stderr(&o));
    assert_eq!(tarn_bare(&["cluster", "--endpoints", "127.0.0.1:1"]).status.code(), Some(2));
    assert_eq!(
        tarn_bare(&["serve", "--join-endpoints", "127.0.0.1:1"]).status.code(),
        Some(2),
        "needs --join"
    );

    let cluster = tokio::time::timeout(Duration::from_secs(30), TestCluster::start(1)).await.expect("start");
    let ep = cluster.endpoints()[0].to_string();
    tokio::task::spawn_blocking(move || {
        let ep = ep.as_str();
        let dead = common::free_addr().to_string();
        assert!(tarn_bare(&["put", "k", "v", "--endpoints", ep]).status.success());
        let o = tarn_bare(&["get", "k", "--endpoints", ep, "--json"]);
        assert!(stdout(&o).starts_with("{\"key\":\"k\""), "{}{}", stdout(&o), stderr(&o));
        // After the command wins over before it: the dead endpoint is never used.
        let o = tarn_bare(&["--endpoints", &dead, "--timeout-ms", "300", "get", "k", "--endpoints", ep]);
        assert_eq!((o.status.code(), stdout(&o)), (Some(0), "v\n".to_string()), "{}", stderr(&o));
        // Before the command still works, and so do both halves mixed.
        let o = tarn_bare(&["--endpoints", ep, "get", "k", "--json"]);
        assert!(stdout(&o).contains("\"value\":\"v\""), "{}", stdout(&o));
    })
    .await
    .expect("client flag checks");
    cluster.shutdown().await;
}

/// Runs `tarn` until `key` no longer exists, or panics after the test deadline.
fn wait_until_gone(endpoint: &str, key: &str) {
    let deadline = std::time::Instant::now() + common::TEST_DEADLINE;
    loop {
        let o = tarn(endpoint, &["get", key]);
        if o.status.code() == Some(3) {
            return;
        }
        assert!(o.status.success(), "get {key}: {}", stderr(&o));
        assert!(std::time::Instant::now() < deadline, "{key} never expired");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Issue 18: `tarn ttl KEY --ttl-ms N` renews a temporary node from another
/// process than the one that wrote it; the README's "removed 5 s after its
/// last update" holds for a renewal, in both directions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_renews_a_temporary_node_from_another_process() {
    let cluster = tokio::time::timeout(Duration::from_secs(30), TestCluster::start(1)).await.expect("start");
    let ep = cluster.endpoints()[0].to_string();
    tokio::task::spawn_blocking(move || {
        let ep = ep.as_str();
        let owner_of = |key: &str| -> serde_json::Value {
            let o = tarn(ep, &["--json", "get", key]);
            assert!(o.status.success(), "{}", stderr(&o));
            let node: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("json");
            node["owner"].clone()
        };
        assert!(tarn(ep, &["mkdir", "app"]).status.success());
        assert!(tarn(ep, &["put", "app.s", "alive", "--ttl-ms", "2000"]).status.success());
        let owner = owner_of("app.s");
        assert!(owner.as_u64().is_some(), "a temporary node has an owner: {owner}");
        // Longer: renewed by this (other) process before its 2 s pass...
        let o = tarn(ep, &["ttl", "app.s", "--ttl-ms", "60000"]);
        assert_eq!((o.status.code(), stdout(&o)), (Some(0), "ok\n".to_string()), "{}", stderr(&o));
        // ...it outlives a node written after the renewal with a longer TTL
        // than the original: had the renewal not taken, the leader would have
        // expired app.s (earlier deadline) no later than the marker.
        assert!(tarn(ep, &["put", "app.marker", "m", "--ttl-ms", "2500"]).status.success());
        wait_until_gone(ep, "app.marker");
        assert_eq!(stdout(&tarn(ep, &["get", "app.s"])), "alive\n", "renewed: still there");
        assert_eq!(owner_of("app.s"), owner, "a renewal keeps the owner");
        // Shorter: the expiry moves to N ms from the renewal, never earlier.
        let renewed = std::time::Instant::now();
        assert!(tarn(ep, &["ttl", "app.s", "--ttl-ms", "1000"]).status.success());
        wait_until_gone(ep, "app.s");
        assert!(renewed.elapsed() >= Duration::from_millis(1000), "expired early: {:?}", renewed.elapsed());

        let fails = |o: &Output, code: i32, says: &str| {
            assert_eq!(o.status.code(), Some(code), "{}", stderr(o));
            assert_eq!(stderr(o).lines().count(), 1, "{}", stderr(o));
            assert!(stderr(o).contains(says), "expected {says:?} in: {}", stderr(o));
        };
        fails(&tarn(ep, &["ttl", "app.s", "--ttl-ms", "1000"]), 3, "app.s");
        assert!(tarn(ep, &["put", "app.p", "v"]).status.success());
        fails(&tarn(ep, &["ttl", "app.p", "--ttl-ms", "1000"]), 1, "\"app.p\" is not a temporary node");
        assert!(tarn(ep, &["put", "app.t", "v", "--ttl-ms", "60000"]).status.success());
        // Errors in the user's units: milliseconds.
        fails(
            &tarn(ep, &["ttl", "app.t", "--ttl-ms", "0"]),
            1,
            "TTL of 0 ms for key \"app.t\" is outside [1 ms,",
        );
        fails(&tarn(ep, &["ttl", "app.t", "--ttl-ms", "18446744073711"]), 1, "out of range");
        assert_eq!(tarn(ep, &["ttl", "app.t"]).status.code(), Some(2), "--ttl-ms is required");
    })
    .await
    .expect("ttl checks");
    cluster.shutdown().await;
}

/// Issue 18: `tarn top` shows each group's leader and commit rate, and which
/// endpoints and followers are down; `--iterations`/`--once` end it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_leaders_commit_rates_and_what_is_down() {
    let mut cluster =
        tokio::time::timeout(Duration::from_secs(30), TestCluster::start(3)).await.expect("start");
    let leader = cluster.leader().await;
    let live: Vec<String> = cluster.endpoints().iter().map(|a| a.to_string()).collect();
    let dead = common::free_addr().to_string();
    // Writes run from before the first sample until after the last one.
    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let (client, writing) = (cluster.client(), writing.clone());
        tokio::spawn(async move {
            let mut writes = 0u64;
            while writing.load(std::sync::atomic::Ordering::Relaxed) {
                client.put("w", writes.to_string()).await.expect("write");
                writes += 1;
            }
            writes
        })
    };
    let with_dead = format!("{},{dead}", live.join(","));
    let o = tokio::task::spawn_blocking(move || {
        tarn(&with_dead, &["--json", "top", "--iterations", "2", "--interval-ms", "1000"])
    })
    .await
    .expect("tarn top");
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    assert!(writer.await.expect("writer") > 0);
    assert_eq!(o.status.code(), Some(1), "an endpoint is down: {}", stderr(&o));
    assert!(stderr(&o).contains("1 of 4 endpoints unreachable"), "{}", stderr(&o));
    let frames: Vec<serde_json::Value> =
        stdout(&o).lines().map(|l| serde_json::from_str(l).expect("a JSON frame")).collect();
    assert_eq!(frames.len(), 2, "{}", stdout(&o));
    for f in &frames {
        assert_eq!(f["groups"][0]["group"], 1);
        assert_eq!(f["groups"][0]["leader"], leader, "{f}");
        let nodes = f["nodes"].as_array().expect("nodes");
        let leading: Vec<&serde_json::Value> = nodes.iter().filter(|n| n["leading"] == 1).collect();
        assert_eq!(leading.len(), 1, "{f}");
        assert_eq!(leading[0]["node"], leader);
        assert_eq!(nodes[3]["endpoint"], dead.as_str());
        assert_eq!(nodes[3]["up"], false);
    }
    assert!(frames[0]["groups"][0]["commits_per_s"].is_null(), "no rate from one sample");
    let rate = frames[1]["groups"][0]["commits_per_s"].as_f64().expect("a rate in the second frame");
    assert!(rate > 0.0, "writes ran between the samples: {}", frames[1]);

    // A stopped follower: the leader reports it unreachable, in plain text.
    let follower = (1..=3).find(|&id| id != leader).expect("a follower");
    cluster.stop_node(follower).await;
    let up: Vec<String> = cluster.servers.keys().map(|id| cluster.clients[id].to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let up = up.join(",");
        let deadline = std::time::Instant::now() + common::TEST_DEADLINE;
        loop {
            let o = tarn(&up, &["top", "--once"]);
            assert_eq!(o.status.code(), Some(0), "every endpoint given is up: {}", stderr(&o));
            let out = stdout(&o);
            assert!(out.starts_with("tarn top: 2 of 2 endpoints up, 1 group"), "{out}");
            // GROUP LEADER TERM COMMIT COMMITS/S APPLIED-MIN MAX-LAG UNREACHABLE
            let row: Vec<&str> = out
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .find(|cols| cols.first() == Some(&"1") && cols.get(1).is_some_and(|c| !c.contains(':')))
                .unwrap_or_else(|| panic!("no row for group 1: {out}"));
            assert_eq!(row[1], leader.to_string(), "{out}");
            if row.get(7) == Some(&follower.to_string().as_str()) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "follower {follower} never shown unreachable: {out}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .expect("top after a follower stopped");
    cluster.shutdown().await;
}
