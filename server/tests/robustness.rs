//! Bad input and bad configuration: clear errors, nothing changes, the
//! server keeps serving.

mod common;

use std::collections::BTreeMap;

use common::{free_addr, TestCluster, TEST_DEADLINE};
use tarn_io::wire;
use tarn_server::protocol::{ServerError, ServerFrame, MAX_CLIENT_FRAME_BYTES};
use tarn_server::server::{Server, ServerConfig, StartError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn read_frame(stream: &mut TcpStream) -> Option<ServerFrame> {
    let mut decoder = wire::FrameDecoder::new(MAX_CLIENT_FRAME_BYTES);
    loop {
        if let Ok(Some(f)) = decoder.next_frame::<ServerFrame>() {
            return Some(f);
        }
        match stream.read_buf(decoder.buffer_mut()).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_on_the_client_port_get_an_error_and_the_server_keeps_serving() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let cluster = TestCluster::start(1).await;
        let client = cluster.client();
        client.put("before", "1").await.unwrap();
        let addr = cluster.endpoints()[0];
        let garbage: [&[u8]; 4] = [
            &[0xff, 0xff, 0xff, 0x7f, 1], // length far over the bound
            &[0, 0, 0, 0],                // empty body
            &[3, 0, 0, 0, 9, 1, 2],       // unknown version
            &[6, 0, 0, 0, wire::WIRE_VERSION, 200, 200, 200, 200, 200], // body that is not a request
        ];
        for bytes in garbage {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(bytes).await.unwrap();
            match read_frame(&mut s).await {
                Some(ServerFrame::Response { id: 0, result: Err(ServerError::BadRequest { reason }) }) => {
                    assert!(reason.contains("bad frame"), "{reason}");
                }
                other => panic!("expected a bad-request answer for {bytes:?}, got {other:?}"),
            }
            // Then the server closes that connection.
            assert!(read_frame(&mut s).await.is_none());
        }
        // Everybody else is unaffected.
        client.put("after", "2").await.unwrap();
        assert_eq!(&client.get("before").await.unwrap().unwrap().value[..], b"1");
        let status = client.status().await.unwrap();
        let bad = status.counters.iter().find(|(k, _)| k == "bad_frames").map(|(_, v)| *v);
        assert_eq!(bad, Some(4));
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}

#[tokio::test]
async fn configuration_errors_are_refused_at_start_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    // An id that is not in --cluster.
    let cluster: BTreeMap<u64, _> = [(1, free_addr()), (2, free_addr())].into();
    let mut c = ServerConfig::cluster(3, dir.path().join("x"), free_addr(), cluster.clone());
    c.peer_addr = Some(free_addr());
    let err = Server::start(c).await.err().expect("refused");
    assert!(err.to_string().contains("--id 3 is not in --cluster"), "{err}");

    // An election timeout whose nanoseconds overflow u64 (it used to wrap).
    let mut c = ServerConfig::single(dir.path().join("t"), free_addr());
    c.election_timeout_ms = 18_446_744_073_710;
    let err = Server::start(c).await.err().expect("refused");
    assert!(err.to_string().contains("out of range") && err.to_string().contains("3600000 ms"), "{err}");

    // A client port already in use.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let c = ServerConfig::single(dir.path().join("busy"), busy.local_addr().unwrap());
    let err = Server::start(c).await.err().expect("refused");
    assert!(matches!(err, StartError::Bind { what: "clients", .. }), "{err}");
    assert!(err.to_string().contains("--client"), "{err}");

    // A data dir that belongs to another node.
    let data = dir.path().join("n1");
    let s = Server::start(ServerConfig::cluster(1, &data, free_addr(), cluster.clone())).await.unwrap();
    s.shutdown().await;
    let err = Server::start(ServerConfig::cluster(2, &data, free_addr(), cluster.clone()))
        .await
        .err()
        .expect("refused");
    // Refused by the identity file, or (if node 1 had not finished its
    // first start) by the storage engine's own record of its node.
    let e = err.to_string();
    assert!(e.contains("belongs to node 1") || e.contains("node 1, not to cluster"), "{err}");

    // ... or to another cluster.
    let other: BTreeMap<u64, _> = [(1, free_addr()), (2, free_addr())].into();
    let err =
        Server::start(ServerConfig::cluster(1, &data, free_addr(), other)).await.err().expect("refused");
    assert!(err.to_string().contains("belongs to cluster"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_pose_as_the_leader() {
    use tarn_kv::{Command, KvError, Request};
    use tarn_server::protocol::{ClientFrame, RequestBody, ResponseBody};
    tokio::time::timeout(TEST_DEADLINE, async {
        let cluster = TestCluster::start(1).await;
        let client = cluster.client();
        client.put("t", "v").await.unwrap();
        let mut s = TcpStream::connect(cluster.endpoints()[0]).await.unwrap();
        let forged = [
            Request::system(Command::Remove { key: "t".into() }),
            Request {
                client_id: 9,
                seq: 1,
                first_unacked_seq: 1,
                command: Command::Expire { key: "t".into(), arm_id: 1 },
            },
        ];
        for (i, request) in forged.into_iter().enumerate() {
            let frame = ClientFrame { id: 100 + i as u64, group: 1, body: RequestBody::Write(request) };
            s.write_all(&wire::encode_frame_vec(&frame, MAX_CLIENT_FRAME_BYTES).unwrap()).await.unwrap();
            match read_frame(&mut s).await {
                Some(ServerFrame::Response { result: Ok(ResponseBody::Kv(Err(e))), .. }) => {
                    assert!(matches!(e, KvError::ReservedClientId | KvError::SystemOnly { .. }), "{e:?}");
                }
                other => panic!("expected a kv refusal, got {other:?}"),
            }
        }
        // Nothing changed.
        assert_eq!(&client.get("t").await.unwrap().unwrap().value[..], b"v");
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}
