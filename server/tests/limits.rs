//! The chain of limits (issue 13 items 2-4): no client request can stop a
//! group, oversized replies are refused in words, and per-connection memory
//! is bounded.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{poll_until, TestCluster, TEST_DEADLINE};
use tarn_io::wire;
use tarn_kv::{Command, KvError};
use tarn_server::client::{Client, ClientConfig, ClientError};
use tarn_server::protocol::{ClientFrame, Consistency, RequestBody, ServerError, MAX_CLIENT_FRAME_BYTES};
use tokio::io::AsyncWriteExt;

const MIB: usize = 1 << 20;

/// The request: a batch-put of twelve values of 1 MiB - 1 passes
/// every per-value check, but its entry (12 MiB) is larger than storage
/// takes. It used to be replicated and then stop group 1 on every node; now
/// admission refuses it naming the limit, and every node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_batch_is_refused_and_the_group_keeps_serving_on_every_node() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let cluster = TestCluster::start(3).await;
        let items: Vec<(String, Bytes)> =
            (0..12).map(|i| (format!("big{i}"), Bytes::from(vec![b'v'; MIB - 1]))).collect();
        // The library refuses it before sending (and before taking a seq).
        let err = cluster.client().batch_put(items.clone()).await.expect_err("refused by the client");
        assert!(matches!(err, ClientError::Kv(KvError::RequestTooLarge { .. })), "{err:?}");
        // A client that does not check (an old or foreign one) reaches the
        // server's admission, which refuses it without a log write.
        let mut config = ClientConfig::new(cluster.endpoints());
        config.request_timeout = Duration::from_secs(20);
        config.max_entry_bytes = usize::MAX;
        let client = Client::new(config);
        client.put("before", "1").await.expect("opens the session");
        let err = client.batch_put(items).await.expect_err("refused by the server");
        match &err {
            ClientError::Kv(KvError::RequestTooLarge { command, size_bytes, max_bytes }) => {
                assert_eq!(command, "batch-put");
                assert!(*size_bytes > 12 * (MIB - 1), "{size_bytes}");
                assert_eq!(*max_bytes, tarn_core::MAX_ENTRY_BYTES_DEFAULT);
            }
            other => panic!("expected RequestTooLarge, got {other:?}"),
        }
        assert!(err.to_string().contains("more than max_entry_bytes 4194304"), "{err}");
        // Twelve such values sent at once on one connection are split into
        // several entries by admission, and all commit.
        let puts = (0..12).map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.put(&format!("each{i}"), vec![b'w'; MIB - 1]).await })
        });
        for put in puts.collect::<Vec<_>>() {
            put.await.expect("task").expect("a 1 MiB put commits");
        }
        client.put("after", "ok").await.expect("a later put succeeds");
        for (id, server) in &cluster.servers {
            let local = cluster.client_of(*id);
            poll_until(&format!("node {id} applies the later put"), || async {
                let got = local.get_with("after", Consistency::Stale).await.ok()??;
                (got.value == "ok").then_some(())
            })
            .await;
            let info = server.group(1).expect("group 1").info();
            assert!(info.error.is_none() && !info.stopped, "node {id}: {info:?}");
            assert!(local.get_with("big0", Consistency::Stale).await.unwrap().is_none(), "node {id}");
        }
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}

/// A request whose frame is over `MAX_CLIENT_FRAME_BYTES` used to be
/// dropped silently by the client's writer, and the call waited for its
/// timeout. Now the library refuses it at once, naming both sizes, sends
/// nothing and takes no session seq (the next write still succeeds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_client_frame_bound_is_refused_by_the_library_without_sending() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let cluster = TestCluster::start(1).await;
        // A client that does not check the entry bound: only the frame
        // bound stands between it and the socket.
        let mut config = ClientConfig::new(cluster.endpoints());
        config.request_timeout = Duration::from_secs(30);
        config.max_entry_bytes = usize::MAX;
        let client = Client::new(config);
        client.put("before", "1").await.expect("opens the session");
        let started = std::time::Instant::now();
        let items: Vec<(String, Bytes)> =
            (0..17).map(|i| (format!("big{i}"), Bytes::from(vec![b'v'; MIB - 1]))).collect();
        let err = client.batch_put(items).await.expect_err("over the frame bound");
        match &err {
            ClientError::RequestTooLarge { bytes, max } => {
                assert!(*bytes > 17 * (MIB - 1), "{bytes}");
                assert_eq!(*max, MAX_CLIENT_FRAME_BYTES);
            }
            other => panic!("expected RequestTooLarge, got {other:?}"),
        }
        assert!(err.to_string().contains("split it into smaller requests"), "{err}");
        // A read too: 2,100 keys of 8,000 bytes, each one a valid key.
        let keys: Vec<String> = (0..2100).map(|i| format!("k{i:04}{}", "x".repeat(7995))).collect();
        let err = cluster.client().batch_get(keys).await.expect_err("over the frame bound");
        assert!(matches!(err, ClientError::RequestTooLarge { .. }), "{err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "refused at once, not after the 30 s timeout: {:?}",
            started.elapsed()
        );
        // The server saw no bad frame, and the session lost no seq.
        assert_eq!(counter(&client, "bad_frames").await, 0);
        client.put("after", "2").await.expect("the next write succeeds");
        assert_eq!(client.get("after").await.unwrap().expect("written").value, "2");
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}

/// Pages through `dir` `page` children at a time; every name once, in order.
async fn page_through(client: &Client, dir: &str, page: u32) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    loop {
        let after = names.last().cloned();
        let (children, more) = client.list_page(dir, Some(page), after.as_deref()).await.expect("a page");
        assert!(children.len() <= page as usize, "a page holds at most the limit");
        names.extend(children.into_iter().map(|c| c.name));
        if !more {
            return names;
        }
    }
}

/// A listing over the frame bound used to be dropped, and `ls` waited for
/// it until its timeout. Now the answer is an error naming both sizes and
/// the way out, and paging returns every child exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_listing_is_refused_in_words_and_paging_returns_every_child_once() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let cluster = TestCluster::start(1).await;
        let client = cluster.client();
        client.mkdir("big").await.unwrap();
        // 17 values of 1 MiB - 1: the listing carries them, over 16 MiB.
        for i in 0..17 {
            client.put(&format!("big.v{i:02}"), vec![b'x'; MIB - 1]).await.unwrap();
        }
        let err = client.list("big").await.expect_err("too large for one frame");
        match &err {
            ClientError::Server(ServerError::ReplyTooLarge { size_bytes, max_bytes }) => {
                assert!(*size_bytes > 17 * (MIB - 1), "{size_bytes}");
                assert_eq!(*max_bytes, MAX_CLIENT_FRAME_BYTES);
            }
            other => panic!("expected ReplyTooLarge, got {other:?}"),
        }
        assert!(err.to_string().contains("use ls --limit/--after to page"), "{err}");
        let want: Vec<String> = (0..17).map(|i| format!("v{i:02}")).collect();
        assert_eq!(page_through(&client, "big", 5).await, want);
        // Many small children, a page size that does not divide them.
        client.mkdir("many").await.unwrap();
        let items: Vec<(String, Bytes)> =
            (0..300).map(|i| (format!("many.k{i:03}"), Bytes::from_static(b"1"))).collect();
        assert!(client.batch_put(items).await.unwrap().iter().all(Result::is_ok));
        let want: Vec<String> = (0..300).map(|i| format!("k{i:03}")).collect();
        assert_eq!(page_through(&client, "many", 7).await, want);
        assert_eq!(page_through(&client, "many", 300).await, want, "one full page, nothing more");
        // The unpaged listing of a small directory is unchanged.
        assert_eq!(client.list("many").await.unwrap().len(), 300);
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}

const SLOW_CLIENT_BOUND: usize = 64;

fn slow_client_limits(c: &mut tarn_server::server::ServerConfig) {
    c.connections.max_pending_replies_per_connection = SLOW_CLIENT_BOUND;
    c.connections.slow_client_timeout = Duration::from_secs(2);
}

async fn counter(client: &Client, name: &str) -> u64 {
    let status = client.status_of(0).await.expect("status");
    status.counters.iter().find(|(n, _)| n == name).map(|(_, v)| *v).expect(name)
}

/// A client that sends thousands of reads and never reads an answer used to
/// grow the server without limit (a task per answer once the queue filled).
/// Now the server stops reading it at `max_pending_replies_per_connection`
/// queued answers, keeps serving everyone else, and closes it after the
/// slow-client timeout, returning what it held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_held_at_the_bound_then_closed() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let cluster = TestCluster::start_with(1, slow_client_limits).await;
        let client = cluster.client();
        // Large answers, so the kernel's socket buffers absorb only a few.
        client.put("v", vec![b'x'; 256 << 10]).await.unwrap();
        const SENT: u64 = 5000;
        let mut bytes = Vec::new();
        for id in 1..=SENT {
            let body = RequestBody::Read {
                command: Command::Get { key: "v".into() },
                consistency: Consistency::Stale,
            };
            wire::encode_frame(&ClientFrame { id, group: 1, body }, MAX_CLIENT_FRAME_BYTES, &mut bytes)
                .unwrap();
        }
        let stream = tokio::net::TcpStream::connect(cluster.clients[&1]).await.unwrap();
        let (_never_read, mut write_half) = stream.into_split();
        let sender = tokio::spawn(async move {
            let _ = write_half.write_all(&bytes).await;
            write_half
        });
        let requests_before = counter(&client, "requests").await;
        poll_until("the reader pauses at the bound", || async {
            (counter(&client, "client_backpressure").await >= 1).then_some(())
        })
        .await;
        // Held at the bound: at most the bound queued (plus this status
        // request's own answer), and most requests left unread.
        let queued = counter(&client, "client_queued_replies").await;
        assert!(queued <= SLOW_CLIENT_BOUND as u64 + 1, "{queued} answers queued");
        let read = counter(&client, "requests").await - requests_before;
        assert!(read < SENT / 5, "the server read {read} of {SENT} requests from a client that never reads");
        // Everyone else is served meanwhile.
        client.put("other", "1").await.expect("other clients are served");
        poll_until("the slow client is closed", || async {
            (counter(&client, "client_slow_disconnects").await == 1).then_some(())
        })
        .await;
        let queued = poll_until("its answers are released", || async {
            let q = counter(&client, "client_queued_replies").await;
            (q <= 1).then_some(q)
        })
        .await;
        assert!(queued <= 1, "only this status request's answer: {queued}");
        let read_total = counter(&client, "requests").await - requests_before;
        assert!(read_total < SENT / 5, "{read_total}");
        sender.abort();
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}
