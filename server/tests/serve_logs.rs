//! `tarn serve` as an operator runs it: `--log-format json`, `RUST_LOG`,
//! `--metrics-addr`, and no log line per request at the default level.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{free_addr, TEST_DEADLINE};
use tarn_server::client::{Client, ClientConfig};

/// A `tarn serve` child, killed when dropped; its stderr lines arrive on `lines`.
struct Served {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    client: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(extra: &[&str], rust_log: Option<&str>) -> Served {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = free_addr();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tarn"));
    cmd.arg("serve").arg("--data-dir").arg(dir.path()).arg("--client").arg(client.to_string());
    cmd.args(extra).stdout(Stdio::null()).stderr(Stdio::piped());
    match rust_log {
        Some(level) => cmd.env("RUST_LOG", level),
        None => cmd.env_remove("RUST_LOG"),
    };
    let mut child = cmd.spawn().expect("start tarn serve");
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    Served { child, lines, client, _dir: dir }
}

impl Served {
    /// Lines up to and including the first that `is_it` accepts.
    fn lines_until(&self, what: &str, is_it: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + TEST_DEADLINE;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = is_it(&line);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(_) => panic!("no log line {what}; saw:\n{}", seen.join("\n")),
            }
        }
    }

    /// Kills the server and returns every line it logged and was not yet taken.
    fn kill(&mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The reader thread ends at the end of the pipe and drops its sender.
        self.lines.iter().collect()
    }

    fn client(&self) -> Client {
        let mut c = ClientConfig::new(vec![self.client]);
        c.request_timeout = Duration::from_secs(20);
        Client::new(c)
    }
}

fn scrape(addr: SocketAddr) -> String {
    let deadline = Instant::now() + TEST_DEADLINE;
    let mut stream = loop {
        match std::net::TcpStream::connect(addr) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("metrics port {addr}: {e}"),
        }
    };
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: tarn\r\n\r\n").expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_node_and_group_and_stay_quiet_per_request() {
    let metrics = free_addr();
    let mut served = serve(
        &[
            "--log-format",
            "json",
            "--metrics-addr",
            &metrics.to_string(),
            "--election-timeout-ms",
            "150",
            "--heartbeat-ms",
            "30",
        ],
        None,
    );
    let leader_line = r#""role":"Leader""#;
    let before =
        tokio::task::block_in_place(|| served.lines_until("saying it leads", |l| l.contains(leader_line)));
    for line in &before {
        assert!(line.starts_with('{') && line.ends_with('}'), "not a JSON line: {line}");
        assert!(line.contains(r#""level":"INFO""#), "{line}");
    }
    let leads = before.last().expect("the leader line");
    assert!(leads.contains(r#""span":{"group":1,"node":1,"name":"group"}"#), "{leads}");
    assert!(before.iter().any(|l| l.contains("serving GET /metrics")), "{before:?}");
    // Requests, on fresh connections too: nothing at info per request.
    for i in 0..20 {
        let client = served.client();
        client.put(&format!("k{i}"), "v").await.expect("put");
        assert!(client.get(&format!("k{i}")).await.expect("get").is_some());
    }
    let answer = tokio::task::block_in_place(|| scrape(metrics));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("tarn_group_role{group=\"1\",role=\"leader\"} 1"), "{answer}");
    assert!(answer.contains("tarn_client_writes_total 20"), "{answer}");
    let during = served.kill();
    assert!(during.is_empty(), "lines logged while serving requests: {during:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_sets_the_level() {
    let mut served = serve(&["--election-timeout-ms", "150", "--heartbeat-ms", "30"], Some("warn"));
    // Once a client is answered, the group elected itself: at info that
    // logged "role changed"; at warn nothing.
    let client = served.client();
    client.put("k", "v").await.expect("put");
    let quiet = served.kill();
    assert!(quiet.iter().all(|l| !l.contains("INFO")), "{quiet:?}");
    let verbose =
        serve(&["--election-timeout-ms", "150", "--heartbeat-ms", "30"], Some("tarn_io=debug,info"));
    tokio::task::block_in_place(|| {
        verbose.lines_until("at info", |l| l.contains("INFO") && l.contains("role changed"))
    });
}
