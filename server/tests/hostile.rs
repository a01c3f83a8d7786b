//! Hostile clients and operator mistakes (issue 13): the reserved namespace,
//! refusals in words, bounded retries while no leader answers, failing over
//! from a frozen leader, and a client pointed at a peer port.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{free_addr, poll_until, TestCluster, TEST_DEADLINE};
use tarn_io::wire::{self, FrameDecoder};
use tarn_kv::KvError;
use tarn_server::client::{Client, ClientConfig, ClientError};
use tarn_server::protocol::{
    ClientFrame, MemberChange, RequestBody, ResponseBody, ServerFrame, MAX_CLIENT_FRAME_BYTES,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn client_with(endpoints: Vec<SocketAddr>, request_timeout: Duration) -> Client {
    let mut c = ClientConfig::new(endpoints);
    c.request_timeout = request_timeout;
    Client::new(c)
}

fn reserved(r: Result<impl std::fmt::Debug, ClientError>) -> String {
    match r {
        Err(ClientError::Kv(e @ KvError::ReservedKey { .. })) => e.to_string(),
        other => panic!("expected a reserved-namespace refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cannot_write_the_reserved_namespace_but_the_cluster_still_records_peers() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let cluster = TestCluster::start(3).await;
        let client = cluster.client();
        // The attack of the issue: a forged directory entry for a live voter.
        let msg = reserved(client.mkdir("_tarn").await);
        assert!(msg.contains("\"_tarn\" is in the reserved namespace _tarn"), "{msg}");
        let msg = reserved(client.put("_tarn.peers.3", "127.0.0.1:1").await);
        assert!(msg.contains("written by the cluster itself"), "{msg}");
        reserved(client.remove("_tarn.peers.3").await);
        reserved(
            client
                .batch_put(vec![("ok".into(), Bytes::from("1")), ("_tarn.x".into(), Bytes::from("1"))])
                .await,
        );
        reserved(client.compare_and_set("_tarn.peers.3", None, Some(Bytes::from("x"))).await);
        reserved(client.put_temp("_tarn.t", "x", Duration::from_secs(5)).await);
        reserved(client.try_lock("_tarn.lock", Duration::from_secs(5), Duration::ZERO).await);
        // Refusals take no seq: the session's first real write is accepted.
        client.put("first", "1").await.expect("first write after refusals");
        assert!(client.get("ok").await.unwrap().is_none(), "a refused batch writes nothing");
        // The internal path still works: the leader records a peer...
        let addr4 = free_addr();
        client.add_member(4, Some(addr4), true).await.expect("member add with an address");
        let entry = client.get("_tarn.peers.4").await.unwrap().expect("recorded");
        assert_eq!(entry.value, Bytes::from(addr4.to_string()));
        // ...but never re-points a current member.
        let err = client.add_member(3, Some(free_addr()), true).await.expect_err("refused");
        assert!(err.to_string().contains("node 3 is a member at"), "{err}");
        assert!(client.get("_tarn.peers.3").await.unwrap().is_none());
        // Forgetting a removed node goes through the same path.
        client.change_membership(vec![MemberChange::Remove(4)]).await.unwrap();
        client.forget_peer(4).await.unwrap();
        assert!(client.get("_tarn.peers.4").await.unwrap().is_none());
        // The cluster is whole: writes commit and every node keeps a leader.
        client.put("after", "1").await.unwrap();
        cluster.leader().await;
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_mistakes_are_refused_in_words() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let cluster = TestCluster::start(1).await;
        let client = cluster.client();
        // A write answered means the leader committed an entry of its term;
        // until then it refuses every membership change as "in progress"
        // (Raft's rule), whatever the change, and on a loaded machine the
        // checks below could meet that answer instead of the one they test.
        client.put("ready", "1").await.unwrap();
        let err = client.transfer_leader(9).await.expect_err("no such node");
        assert!(err.to_string().contains("node 9 is not a voter of group 1"), "{err}");
        let err = client.change_membership(vec![MemberChange::Remove(1)]).await.expect_err("last voter");
        let text = err.to_string();
        assert!(text.contains("without a voter") && !text.contains("NoVoters"), "{text}");
        let err = client.change_membership(vec![MemberChange::Promote(1)]).await.expect_err("not a learner");
        assert!(err.to_string().contains("node 1 is not a learner"), "{err}");
        client.put("still", "here").await.unwrap();
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durations_that_overflow_nanoseconds_are_refused_not_wrapped() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let cluster = TestCluster::start(1).await;
        let client = cluster.client();
        // 18446744073711 ms is just above u64::MAX ns: `as u64` made it ~1.6 ms.
        let huge = Duration::from_millis(18_446_744_073_711);
        let err = client.put_temp("k", "v", huge).await.expect_err("out of range");
        assert!(matches!(err, ClientError::DurationOutOfRange { .. }), "{err:?}");
        assert!(err.to_string().contains("2592000000 ms"), "names the limit: {err}");
        let err = client.try_lock("l", huge, Duration::ZERO).await.expect_err("out of range");
        assert!(matches!(err, ClientError::DurationOutOfRange { .. }), "{err:?}");
        assert!(client.get("k").await.unwrap().is_none(), "nothing was written");
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}

/// A leader killed while the survivors still name it (their election timeout
/// has not run out): the old client bounced between the dead leader and the
/// survivors with no pause, thousands of tries a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_while_no_leader_answers_are_bounded() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let dir = tempfile::tempdir().expect("tempdir");
        let peers = (1..=3).map(|i| (i, free_addr())).collect();
        let clients = (1..=3).map(|i| (i, free_addr())).collect();
        let mut cluster = TestCluster {
            dir,
            peers,
            clients,
            servers: Default::default(),
            joiners: Default::default(),
            tweak: |_| {},
        };
        for id in 1..=3 {
            let mut config = cluster.config(id);
            // Survivors keep naming the dead leader for at least 3 s.
            config.election_timeout_ms = 3_000;
            config.heartbeat_interval_ms = 50;
            cluster.start_node_with(id, config).await;
        }
        let leader = cluster.leader().await;
        cluster.stop_node(leader).await;
        // The dead leader first, then the survivors: the order in which the
        // old client never paused.
        let mut endpoints = vec![cluster.clients[&leader]];
        endpoints.extend(cluster.clients.iter().filter(|(id, _)| **id != leader).map(|(_, a)| *a));
        let client = client_with(endpoints, Duration::from_secs(2));
        let started = Instant::now();
        let r = client.put("k", "v").await;
        let waited = started.elapsed();
        let attempts = client.attempts();
        assert!(attempts < 200, "{attempts} tries in {waited:?} ({r:?})");
        assert!(matches!(r, Err(ClientError::Timeout { .. })), "no leader within 2 s: {r:?}");
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}

/// A "frozen" node: accepts connections, and answers hello (or not), never a
/// request, like a SIGSTOPped leader whose kernel still accepts.
async fn frozen_node(answer_hello: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut decoder = FrameDecoder::new(MAX_CLIENT_FRAME_BYTES);
                loop {
                    while let Ok(Some(frame)) = decoder.next_frame::<ClientFrame>() {
                        if answer_hello && frame.body == RequestBody::Hello {
                            let hello = ServerFrame::Response {
                                id: frame.id,
                                result: Ok(ResponseBody::Hello { node_id: 99, cluster_id: 0 }),
                            };
                            let bytes =
                                wire::encode_frame_vec(&hello, MAX_CLIENT_FRAME_BYTES).expect("encode");
                            if stream.write_all(&bytes).await.is_err() {
                                return;
                            }
                        }
                    }
                    match stream.read_buf(decoder.buffer_mut()).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_endpoint_costs_about_an_election_timeout_not_the_whole_try() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let cluster = TestCluster::start(1).await;
        let live = cluster.endpoints()[0];
        cluster.client().put("warm", "up").await.unwrap();
        // Answers hello, never a request: the old client waited its 3 s per try.
        let frozen = frozen_node(true).await;
        let client = client_with(vec![frozen, live], Duration::from_secs(10));
        let started = Instant::now();
        client.put("k", "v").await.expect("served by the live node");
        let waited = started.elapsed();
        assert!(waited < Duration::from_millis(2_500), "fail-over took {waited:?}");
        // Silent even to hello: bounded by the try, not the 2 s connect timeout.
        let silent = frozen_node(false).await;
        let client = client_with(vec![silent, live], Duration::from_secs(10));
        let started = Instant::now();
        client.get("k").await.expect("served by the live node");
        let waited = started.elapsed();
        assert!(waited < Duration::from_millis(1_500), "fail-over took {waited:?}");
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_at_a_peer_port_fails_at_once_and_is_logged_once() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let cluster = TestCluster::start(3).await;
        cluster.leader().await;
        let peer = cluster.peers[&1];
        let client = client_with(vec![peer], Duration::from_secs(10));
        let started = Instant::now();
        let err = client.put("k", "v").await.expect_err("a peer port serves no client");
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
        assert!(matches!(err, ClientError::PeerPort { node: 1, .. }), "{err:?}");
        assert!(err.to_string().starts_with(&format!("{peer} is a peer port")), "{err}");
        assert_eq!(client.attempts(), 1, "one try, no retries");
        let server = &cluster.servers[&1];
        let counter = |name: &'static str| async move {
            server.status().await.counters.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
        };
        poll_until("the peer port counted the client", || async {
            (counter("peer_port_clients").await == Some(1)).then_some(())
        })
        .await;
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}
