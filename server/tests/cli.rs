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
