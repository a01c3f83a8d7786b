//! `GET /metrics`: a running server scraped over plain TCP, as Prometheus
//! would, and the bounds of the metrics port.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{poll_until, TestCluster, TEST_DEADLINE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn with_metrics(c: &mut tarn_server::ServerConfig) {
    c.metrics_addr = Some("127.0.0.1:0".parse().expect("addr"));
}

/// Sends `request` as is and reads the whole answer (the server closes the
/// connection after one answer).
async fn http(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect to the metrics port");
    stream.write_all(request).await.expect("send request");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read answer");
    String::from_utf8(answer).expect("utf-8 answer")
}

/// Scrapes `/metrics`; panics unless the answer is 200 in the Prometheus text format.
async fn scrape(addr: SocketAddr) -> String {
    let answer = http(addr, b"GET /metrics HTTP/1.1\r\nHost: tarn\r\n\r\n").await;
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    body.to_string()
}

/// The value of the sample `series` (name and labels exactly as exported).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn must(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_shows_groups_requests_latencies_and_storage() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let cluster = TestCluster::start_with(1, with_metrics).await;
        let addr = cluster.servers[&1].metrics_addr().expect("metrics port bound");
        let client = cluster.client();
        client.mkdir("m").await.unwrap();
        const WRITES: u64 = 10;
        for i in 0..WRITES {
            client.put(&format!("m.k{i}"), "v").await.unwrap();
        }
        for i in 0..5 {
            assert!(client.get(&format!("m.k{i}")).await.unwrap().is_some());
        }
        let text = scrape(addr).await;
        // Every answer above was counted before it was sent.
        let writes = (WRITES + 1) as f64;
        assert!(must(&text, "tarn_group_commit_index{group=\"1\"}") >= writes, "{text}");
        assert!(must(&text, "tarn_group_applied_index{group=\"1\"}") >= writes);
        assert!(must(&text, "tarn_group_last_index{group=\"1\"}") >= writes);
        assert!(must(&text, "tarn_group_term{group=\"1\"}") >= 1.0);
        assert_eq!(must(&text, "tarn_group_role{group=\"1\",role=\"leader\"}"), 1.0);
        assert_eq!(must(&text, "tarn_group_role{group=\"1\",role=\"follower\"}"), 0.0);
        assert!(must(&text, "tarn_group_leader_changes_total{group=\"1\"}") >= 1.0);
        assert!(must(&text, "tarn_client_writes_total") >= writes);
        assert!(must(&text, "tarn_client_reads_total") >= 5.0);
        assert!(must(&text, "tarn_client_proposals_total") >= 1.0);
        assert!(must(&text, "tarn_write_duration_seconds_count") >= writes);
        assert!(must(&text, "tarn_write_duration_seconds_sum") > 0.0);
        assert!(must(&text, "tarn_write_duration_seconds_bucket{le=\"+Inf\"}") >= writes);
        assert!(must(&text, "tarn_read_duration_seconds_count") >= 5.0);
        assert!(must(&text, "tarn_group_apply_duration_seconds_count{group=\"1\"}") >= 1.0);
        // Every write this test made was proposed on this node and answered.
        assert!(must(&text, "tarn_group_propose_duration_seconds_count{group=\"1\"}") >= 1.0);
        assert!(must(&text, "tarn_storage_fsync_duration_seconds_count") >= 1.0);
        assert!(must(&text, "tarn_storage_flush_entries_count") >= 1.0);
        assert!(must(&text, "tarn_storage_entries_written_total") >= writes);
        assert!(must(&text, "tarn_client_connections_open") >= 1.0);
        assert!(must(&text, "tarn_client_received_bytes_total") > 0.0);
        assert!(must(&text, "tarn_client_sent_bytes_total") > 0.0);
        assert_eq!(must(&text, "tarn_client_errors_total{kind=\"no_such_group\"}"), 0.0);
        assert!(text.contains("# TYPE tarn_group_snapshot_duration_seconds histogram"), "{text}");
        // No peers: no peer connection states, but the series that exist are typed.
        assert!(!text.contains("tarn_peer_connected{"), "{text}");
        // An error answer is counted by kind before it is sent.
        client.remove_group(99).await.unwrap_err();
        let text = scrape(addr).await;
        assert_eq!(must(&text, "tarn_client_errors_total{kind=\"no_such_group\"}"), 1.0, "{text}");
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_exports_follower_lag_and_peer_connections() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let cluster = TestCluster::start_with(3, with_metrics).await;
        let leader = cluster.leader().await;
        let client = cluster.client();
        client.put("x", "1").await.unwrap();
        let addr = cluster.servers[&leader].metrics_addr().expect("metrics port bound");
        let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
        let text = poll_until("both peers connected and replicated on the leader's metrics", || async {
            let text = scrape(addr).await;
            let done = followers.iter().all(|f| {
                sample(&text, &format!("tarn_peer_connected{{peer=\"{f}\"}}")) == Some(1.0)
                    && sample(
                        &text,
                        &format!("tarn_group_follower_match_lag{{group=\"1\",follower=\"{f}\"}}"),
                    ) == Some(0.0)
            });
            done.then_some(text)
        })
        .await;
        assert_eq!(must(&text, "tarn_group_role{group=\"1\",role=\"leader\"}"), 1.0);
        assert!(must(&text, "tarn_peer_messages_sent_total") > 0.0);
        // Idle now: the group goes quiet, and only node-level pings cross.
        let text = poll_until("the idle group quiescent on the leader", || async {
            let text = scrape(addr).await;
            (sample(&text, "tarn_groups_quiescent") == Some(1.0)).then_some(text)
        })
        .await;
        assert!(must(&text, "tarn_peer_pings_sent_total") > 0.0, "{text}");
        assert!(sample(&text, "tarn_peer_suspicions_total").is_some(), "{text}");
        assert!(sample(&text, "tarn_peer_heartbeat_batches_total").is_some(), "{text}");
        assert!(sample(&text, "tarn_peer_heartbeat_batched_messages_total").is_some(), "{text}");
        assert_eq!(must(&text, "tarn_peer_connections_open"), 2.0);
        // A follower knows the leader but no progress.
        let follower = cluster.servers[&followers[0]].metrics_addr().expect("bound");
        let text = scrape(follower).await;
        assert_eq!(must(&text, "tarn_group_role{group=\"1\",role=\"follower\"}"), 1.0);
        assert!(!text.contains("tarn_group_follower_match_lag{"), "{text}");
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_port_refuses_other_paths_large_heads_and_silence() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let cluster = TestCluster::start_with(1, with_metrics).await;
        let addr = cluster.servers[&1].metrics_addr().expect("metrics port bound");
        let answer = http(addr, b"GET /other HTTP/1.1\r\nHost: tarn\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
        // A head over 8 KiB is refused without being read to its end.
        let mut big = b"GET /metrics HTTP/1.1\r\nHost: tarn\r\nX-Filler: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 16 * 1024));
        big.extend(b"\r\n\r\n");
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let _ = stream.write_all(&big).await; // the server may close before all of it is sent
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 431"), "{answer}");
        // A connection that sends nothing is closed after the head timeout.
        let started = std::time::Instant::now();
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(20), silent.read_to_end(&mut buf))
            .await
            .expect("a silent connection is closed by the server");
        assert!(started.elapsed() >= Duration::from_secs(4), "closed after {:?}", started.elapsed());
        // The port still answers.
        scrape(addr).await;
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}

/// Kills the child process it holds when dropped (also on a failed assertion).
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Issue 18: `tarn cluster --metrics-addr` serves every node's metrics on a
/// port of its own and prints which node is where.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_cluster_serves_each_nodes_metrics_and_says_where() {
    use std::io::BufRead;
    const NODES: u64 = 3;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_tarn"))
            .args(["cluster", "--nodes", &NODES.to_string(), "--base-port", "0"])
            .args(["--metrics-addr", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start tarn cluster"),
    );
    let out = child.0.stdout.take().expect("piped stdout");
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    // "node I: client ADDR, metrics http://ADDR/metrics", one per node, before "try:".
    let printed = tokio::task::spawn_blocking(move || {
        let mut metrics = Vec::new();
        loop {
            let line =
                lines.recv_timeout(TEST_DEADLINE).expect("tarn cluster prints its nodes").expect("utf-8");
            if line.starts_with("try:") {
                return metrics;
            }
            if let Some((node, rest)) = line.strip_prefix("node ").and_then(|l| l.split_once(':')) {
                let addr = rest.split("metrics http://").nth(1).expect("a metrics address");
                let addr: SocketAddr = addr.trim_end_matches("/metrics").parse().expect("HOST:PORT");
                metrics.push((node.parse::<u64>().expect("node id"), addr));
            }
        }
    })
    .await
    .expect("read tarn cluster's output");
    let ids: Vec<u64> = printed.iter().map(|&(id, _)| id).collect();
    assert_eq!(ids, (1..=NODES).collect::<Vec<_>>());
    let mut ports: Vec<u16> = printed.iter().map(|(_, a)| a.port()).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), NODES as usize, "a port per node: {printed:?}");
    assert!(!ports.contains(&0), "the bound ports are printed, not port 0: {printed:?}");
    // Each port is the node it is printed as: it reports a connection to
    // every other node and none to itself. Together they elect one leader.
    poll_until("every node connected, one leader", || {
        let printed = printed.clone();
        async move {
            let mut leaders = 0.0;
            for &(id, addr) in &printed {
                let text = scrape(addr).await;
                assert!(sample(&text, &format!("tarn_peer_connected{{peer=\"{id}\"}}")).is_none(), "{text}");
                for peer in (1..=NODES).filter(|&p| p != id) {
                    if sample(&text, &format!("tarn_peer_connected{{peer=\"{peer}\"}}")) != Some(1.0) {
                        return None;
                    }
                }
                leaders += sample(&text, "tarn_group_role{group=\"1\",role=\"leader\"}")?;
            }
            (leaders == 1.0).then_some(())
        }
    })
    .await;
}
