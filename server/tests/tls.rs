//! Security end to end (issue 19): TLS on the client and peer ports,
//! tokens and roles. Certificates are made at test time (rcgen) in a
//! temporary directory. Every refusal is checked for a clear error and for
//! the server serving on afterwards.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{fast, free_addr, poll_until, TestCluster};
use tarn_core::NodeId;
use tarn_kv::KvError;
use tarn_server::client::{Client, ClientConfig, ClientError};
use tarn_server::protocol::{ServerError, DEFAULT_GROUP};
use tarn_server::security::auth::{self, AuthTable, Role};
use tarn_server::security::certgen::{self, Validity};
use tarn_server::security::tls::{self, ClientTls, PeerTls, TlsFiles};
use tarn_server::security::{ClientSecurity, ServerSecurity};
use tarn_server::server::{Server, ServerConfig};

/// A CA and certificates made from it, as files in a temporary directory.
struct Pki {
    dir: PathBuf,
    ca_key: String,
}

impl Pki {
    fn new(dir: &Path, name: &'static str) -> Pki {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let ca = certgen::new_ca(Validity::CA).unwrap();
        std::fs::write(dir.join("ca.crt"), &ca.cert).unwrap();
        Pki { dir, ca_key: ca.key }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    fn write(&self, stem: &str, pem: certgen::Pem) -> (PathBuf, PathBuf) {
        let (cert, key) = (self.dir.join(format!("{stem}.crt")), self.dir.join(format!("{stem}.key")));
        std::fs::write(&cert, pem.cert).unwrap();
        std::fs::write(&key, pem.key).unwrap();
        (cert, key)
    }

    /// Node `id`'s certificate (valid, or expired a day ago).
    fn node(&self, id: NodeId, expired: bool) -> TlsFiles {
        let validity = if expired { Validity { days_before: 30, days_after: -1 } } else { Validity::LEAF };
        let pem = certgen::new_node(&self.ca_key, id, &[], validity).unwrap();
        let stem = format!("node-{id}{}", if expired { "-expired" } else { "" });
        let (cert, key) = self.write(&stem, pem);
        TlsFiles { cert, key, ca: Some(self.ca()) }
    }

    fn client_cert(&self, name: &str) -> (PathBuf, PathBuf) {
        let pem = certgen::new_leaf(&self.ca_key, name, &[name.to_owned()], false, Validity::LEAF).unwrap();
        self.write(&format!("client-{name}"), pem)
    }

    fn peer_security(&self, files: &TlsFiles) -> Arc<PeerTls> {
        Arc::new(PeerTls::new(files).unwrap())
    }
}

fn client_config(endpoints: Vec<SocketAddr>, security: ClientSecurity) -> ClientConfig {
    let mut c = ClientConfig::new(endpoints);
    c.request_timeout = Duration::from_secs(20);
    c.retry_backoff = Duration::from_millis(20);
    c.security = security;
    c
}

fn tls_client(pki: &Pki, cert: Option<(PathBuf, PathBuf)>, token: Option<&str>) -> ClientSecurity {
    let cert_key = cert.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
    ClientSecurity {
        tls: Some(ClientTls::new(&pki.ca(), cert_key, None).unwrap()),
        token: token.map(str::to_owned),
    }
}

async fn counter(server: &Server, name: &str) -> u64 {
    let status = server.status().await;
    status.counters.iter().find(|(n, _)| n == name).map(|(_, v)| *v).expect("counter exists")
}

/// One in-memory node serving clients over TLS.
async fn single_node(security: ServerSecurity) -> Server {
    let mut config = fast(ServerConfig::single("unused", "127.0.0.1:0".parse().unwrap()));
    config.in_memory = true;
    config.security = security;
    Server::start(config).await.unwrap()
}

fn expect_tls_error(r: Result<impl std::fmt::Debug, ClientError>, words: &str) {
    match r {
        Err(ClientError::Tls { reason, .. }) => assert!(reason.contains(words), "{reason:?} lacks {words:?}"),
        other => panic!("expected a TLS error with {words:?}, got {other:?}"),
    }
}

/// A three-node cluster, mutual TLS between peers, TLS and tokens for
/// clients: writes through the leader, reads from every node.
#[tokio::test]
async fn three_node_tls_cluster_writes_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "cluster");
    let auth_path = dir.path().join("auth");
    let token = auth::add_token(&auth_path, "ops", Role::Admin, &[]).unwrap();
    let table = AuthTable::load(&auth_path).unwrap();
    let files: Vec<TlsFiles> = (1..=3).map(|id| pki.node(id, false)).collect();
    let mut cluster = TestCluster {
        dir: tempfile::tempdir().unwrap(),
        peers: Default::default(),
        clients: Default::default(),
        servers: Default::default(),
        joiners: Default::default(),
        tweak: |_| {},
    };
    cluster
        .start_fresh(3, |c, id| {
            let mut config = c.config(id);
            let node = &files[id as usize - 1];
            config.security = ServerSecurity {
                client_tls: Some(tls::client_port_config(&TlsFiles { ca: None, ..node.clone() }).unwrap()),
                peer: Some(pki.peer_security(node)),
                auth: Some(table.clone()),
                ..ServerSecurity::default()
            };
            config
        })
        .await;
    let client = Client::new(client_config(cluster.endpoints(), tls_client(&pki, None, Some(&token))));
    client.mkdir("app").await.unwrap();
    client.put("app.greeting", "hello over tls").await.unwrap();
    for id in 1..=3 {
        let one =
            Client::new(client_config(vec![cluster.clients[&id]], tls_client(&pki, None, Some(&token))));
        let got = poll_until("the write applied on every node", || async {
            one.get_with("app.greeting", tarn_server::protocol::Consistency::Stale).await.ok().flatten()
        })
        .await;
        assert_eq!(&got.value[..], b"hello over tls", "node {id}");
    }
    for (id, server) in &cluster.servers {
        assert_eq!(counter(server, "peer_connections_open").await, 2, "node {id}");
        assert_eq!(counter(server, "peer_security_refusals").await, 0, "node {id}");
    }
    cluster.shutdown().await;
}

/// Two in-memory nodes (1 dials 2) with the given peer TLS each; returns
/// them once node 2 counted a refused connection.
async fn two_peers(one: Arc<PeerTls>, two: Arc<PeerTls>, refused_by: NodeId) -> (Server, Server) {
    let peers: std::collections::BTreeMap<NodeId, SocketAddr> = [(1, free_addr()), (2, free_addr())].into();
    let mut servers = Vec::new();
    for (id, security) in [(1, one), (2, two)] {
        let mut config = fast(ServerConfig::cluster(id, "unused", free_addr(), peers.clone()));
        config.in_memory = true;
        config.security.peer = Some(security);
        servers.push(Server::start(config).await.unwrap());
    }
    let two = servers.pop().unwrap();
    let one = servers.pop().unwrap();
    let refuser = if refused_by == 1 { &one } else { &two };
    poll_until("a refused peer connection", || async {
        (counter(refuser, "peer_security_refusals").await > 0).then_some(())
    })
    .await;
    (one, two)
}

/// After refusals no peer connection is up, and both nodes still answer clients.
async fn still_serving_without_peers(one: Server, two: Server) {
    for server in [&one, &two] {
        assert_eq!(counter(server, "peer_connections_open").await, 0, "node {}", server.node_id());
        let client = Client::new(client_config(vec![server.client_addr()], ClientSecurity::default()));
        let status = client.status().await.expect("the node still serves clients");
        assert_eq!(status.node_id, server.node_id());
    }
    one.shutdown().await;
    two.shutdown().await;
}

/// A peer whose certificate comes from another CA is refused, both ways.
#[tokio::test]
async fn peer_with_certificate_of_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, stranger) = (Pki::new(dir.path(), "cluster"), Pki::new(dir.path(), "stranger"));
    let one = cluster.peer_security(&cluster.node(1, false));
    // Node 2's certificate is from another CA, and it trusts only that CA.
    let two = stranger.peer_security(&stranger.node(2, false));
    let (one, two) = two_peers(one, two, 2).await;
    poll_until("the dialer refused node 2's certificate too", || async {
        (counter(&one, "peer_security_refusals").await > 0).then_some(())
    })
    .await;
    still_serving_without_peers(one, two).await;
}

/// A node presenting a valid cluster certificate that names another node
/// id is refused: node 1 holds node 3's certificate and dials node 2.
#[tokio::test]
async fn peer_whose_certificate_names_another_node_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "cluster");
    let impostor = pki.peer_security(&pki.node(3, false));
    let two = pki.peer_security(&pki.node(2, false));
    let (one, two) = two_peers(impostor, two, 2).await;
    still_serving_without_peers(one, two).await;
}

/// A client certificate of the cluster CA that carries a node's name is not
/// a node certificate: it allows client use only, and the peer port refuses it.
#[tokio::test]
async fn peer_with_a_client_certificate_naming_it_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "cluster");
    let (cert, key) = pki.client_cert("node-1.tarn");
    let impostor = pki.peer_security(&TlsFiles { cert, key, ca: Some(pki.ca()) });
    let two = pki.peer_security(&pki.node(2, false));
    let (one, two) = two_peers(impostor, two, 2).await;
    still_serving_without_peers(one, two).await;
}

/// A peer with an expired certificate is refused.
#[tokio::test]
async fn peer_with_expired_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "cluster");
    let expired = pki.peer_security(&pki.node(1, true));
    let two = pki.peer_security(&pki.node(2, false));
    let (one, two) = two_peers(expired, two, 2).await;
    still_serving_without_peers(one, two).await;
}

/// The client port: a client trusting another CA, a server certificate that
/// has expired, a missing client certificate where one is required, and a
/// plaintext client are each refused with an error that says so; a good
/// client is served afterwards.
#[tokio::test]
async fn client_port_refuses_bad_tls_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (pki, other) = (Pki::new(dir.path(), "cluster"), Pki::new(dir.path(), "other"));
    // Mutual TLS on the client port: client certificates from the cluster CA.
    let server = single_node(ServerSecurity {
        client_tls: Some(tls::client_port_config(&pki.node(1, false)).unwrap()),
        ..ServerSecurity::default()
    })
    .await;
    let endpoints = vec![server.client_addr()];
    let good_cert = pki.client_cert("app.clients.tarn");

    let wrong_ca = Client::new(client_config(endpoints.clone(), tls_client(&other, None, None)));
    expect_tls_error(wrong_ca.get("x").await, "does not chain to --cacert");

    let no_cert = Client::new(client_config(endpoints.clone(), tls_client(&pki, None, None)));
    expect_tls_error(no_cert.get("x").await, "requires a client certificate");

    let foreign_cert = Client::new(client_config(
        endpoints.clone(),
        tls_client(&pki, Some(other.client_cert("x.tarn")), None),
    ));
    expect_tls_error(foreign_cert.get("x").await, "refused this client's certificate");

    let plaintext = Client::new(client_config(endpoints.clone(), ClientSecurity::default()));
    match plaintext.get("x").await {
        Err(ClientError::Server(ServerError::Unauthenticated { reason })) => {
            assert!(reason.contains("requires TLS"), "{reason}")
        }
        other => panic!("expected a plaintext client to be told to use TLS, got {other:?}"),
    }

    let good = Client::new(client_config(endpoints, tls_client(&pki, Some(good_cert), None)));
    good.put("x", "served").await.expect("a good client is served after the refusals");
    assert_eq!(&good.get("x").await.unwrap().unwrap().value[..], b"served");
    assert!(counter(&server, "client_tls_refusals").await >= 3);
    server.shutdown().await;

    // A server whose own certificate expired is refused by the client.
    let expired = single_node(ServerSecurity {
        client_tls: Some(tls::client_port_config(&TlsFiles { ca: None, ..pki.node(1, true) }).unwrap()),
        ..ServerSecurity::default()
    })
    .await;
    let client = Client::new(client_config(vec![expired.client_addr()], tls_client(&pki, None, None)));
    expect_tls_error(client.get("x").await, "expired");
    expired.shutdown().await;
}

/// Roles and tokens on one node: a readonly token reads but cannot write, a
/// readwrite token writes but cannot do admin operations, a key prefix
/// limits a token, `_tarn` is never writable (not even by admin), an
/// unknown token and a revoked one are refused; each refusal names what
/// was missing, and the connection and server serve on.
#[tokio::test]
async fn roles_tokens_and_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "cluster");
    let auth_path = dir.path().join("auth");
    let admin = auth::add_token(&auth_path, "ops", Role::Admin, &[]).unwrap();
    let readonly = auth::add_token(&auth_path, "dash", Role::ReadOnly, &[]).unwrap();
    let readwrite = auth::add_token(&auth_path, "svc", Role::ReadWrite, &[]).unwrap();
    let scoped = auth::add_token(&auth_path, "jobs", Role::ReadWrite, &["jobs".into()]).unwrap();
    let table = AuthTable::load(&auth_path).unwrap();
    let server = single_node(ServerSecurity {
        client_tls: Some(tls::client_port_config(&TlsFiles { ca: None, ..pki.node(1, false) }).unwrap()),
        auth: Some(table.clone()),
        ..ServerSecurity::default()
    })
    .await;
    let as_token = |token: &str| {
        Client::new(client_config(vec![server.client_addr()], tls_client(&pki, None, Some(token))))
    };
    let denied = |r: Result<(), ClientError>, permission: &str| match r {
        Err(ClientError::Server(e @ ServerError::PermissionDenied { .. })) => {
            let text = e.to_string();
            assert!(text.contains(&format!("lacks the {permission} permission")), "{text}");
        }
        other => panic!("expected permission denied ({permission}), got {other:?}"),
    };

    let admin = as_token(&admin);
    admin.mkdir("app").await.unwrap();
    admin.mkdir("jobs").await.unwrap();
    admin.put("app.x", "1").await.unwrap();

    let readonly = as_token(&readonly);
    denied(readonly.put("app.x", "2").await, "write");
    assert_eq!(&readonly.get("app.x").await.unwrap().unwrap().value[..], b"1", "reads still work");

    let readwrite = as_token(&readwrite);
    readwrite.put("app.x", "3").await.unwrap();
    denied(readwrite.transfer_leader(1).await, "admin");
    denied(readwrite.add_group(7, vec![1]).await, "admin");
    denied(readwrite.remove_group(DEFAULT_GROUP).await, "admin");
    readwrite.put("app.x", "4").await.expect("the connection serves on after refusals");

    let scoped = as_token(&scoped);
    scoped.put("jobs.a", "1").await.unwrap();
    denied(scoped.put("app.y", "1").await, "write");
    denied(scoped.get("app.x").await.map(|_| ()), "read");

    match admin.put("_tarn.peers.9", "127.0.0.1:1").await {
        Err(ClientError::Kv(KvError::ReservedKey { .. })) => {}
        other => panic!("the reserved namespace must refuse even admin, got {other:?}"),
    }

    let unknown = as_token("tarn-not-a-token");
    match unknown.get("app.x").await {
        Err(ClientError::Server(ServerError::Unauthenticated { reason })) => {
            assert!(reason.contains("unknown or revoked token"), "{reason}")
        }
        other => panic!("expected an unknown token refused, got {other:?}"),
    }
    let anonymous = Client::new(client_config(vec![server.client_addr()], tls_client(&pki, None, None)));
    match anonymous.get("app.x").await {
        Err(ClientError::Server(ServerError::Unauthenticated { reason })) => {
            assert!(reason.contains("--token"), "{reason}")
        }
        other => panic!("expected a client without a token refused, got {other:?}"),
    }

    // A revoked credential's watch ends at the reload, though its connection
    // sends nothing: the server closes it, and the client's re-watch is
    // refused.
    let watcher = as_token(&auth::add_token(&auth_path, "tail", Role::ReadOnly, &[]).unwrap());
    table.reload().unwrap();
    let mut watch = watcher.watch("app", true, Some(0));
    admin.put("app.w", "1").await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), watch.next()).await.expect("an event");
    assert!(matches!(first, Some(Ok(_))), "{first:?}");
    assert!(auth::remove(&auth_path, "tail").unwrap());
    table.reload().unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match watch.next().await {
                Some(Ok(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the watch ends after the revocation");
    assert!(
        matches!(&ended, Some(Err(ClientError::Server(ServerError::Unauthenticated { .. })))),
        "{ended:?}"
    );

    // Revocation: the readwrite token's line removed and the file reloaded
    // (SIGHUP in `tarn serve`); its open connection is refused at its next
    // request, and so is a new one.
    assert!(auth::remove(&auth_path, "svc").unwrap());
    table.reload().unwrap();
    match readwrite.put("app.x", "5").await {
        Err(ClientError::Server(ServerError::Unauthenticated { reason })) => {
            assert!(reason.contains("revoked"), "{reason}")
        }
        other => panic!("expected the revoked token refused, got {other:?}"),
    }
    admin.put("app.x", "6").await.expect("the server serves on after a revocation");
    assert_eq!(&readonly.get("app.x").await.unwrap().unwrap().value[..], b"6");
    assert!(counter(&server, "client_auth_refusals").await >= 1);
    server.shutdown().await;
}

/// The `tarn` binary: `tarn cert` and `tarn auth` make what `tarn serve`
/// reads; a plaintext listener beyond loopback needs --insecure; a client
/// with --cacert and --token is served and a readonly one refused; a token
/// removed with `tarn auth remove` stops working after SIGHUP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_serves_tls_with_tokens_and_reloads_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let path = |p: &str| dir.path().join(p).to_str().unwrap().to_owned();
    let tarn = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tarn"))
            .args(args)
            .output()
            .expect("run the tarn binary")
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let certs = path("certs");
    assert!(tarn(&["cert", "init", &certs]).status.success());
    let o = tarn(&["cert", "node", "1", &certs]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("node-1.crt"), "{}", text(&o.stdout));
    let auth_file = path("auth");
    let add = |name: &str, role: &str| {
        let o = tarn(&["auth", "add-token", name, "--role", role, "--auth-file", &auth_file]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        text(&o.stdout).trim().to_owned()
    };
    let (ops, viewer) = (add("ops", "admin"), add("viewer", "readonly"));

    let o = tarn(&["serve", "--data-dir", &path("d0"), "--client", "0.0.0.0:0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("refusing to serve plaintext beyond loopback"), "{}", text(&o.stderr));

    let client = free_addr().to_string();
    let (cert, key, ca) =
        (format!("{certs}/node-1.crt"), format!("{certs}/node-1.key"), format!("{certs}/ca.crt"));
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_tarn"))
        .args([
            "serve",
            "--data-dir",
            &path("d1"),
            "--client",
            &client,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ])
        .args(["--auth-file", &auth_file])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start tarn serve");
    let as_token = move |token: &str, args: &[&str]| {
        let mut all = vec!["--endpoints", client.as_str(), "--cacert", ca.as_str(), "--token", token];
        all.extend_from_slice(args);
        std::process::Command::new(env!("CARGO_BIN_EXE_tarn"))
            .args(&all)
            .output()
            .expect("run the tarn binary")
    };
    let as_token = std::sync::Arc::new(as_token);
    let run = |token: String, args: Vec<&'static str>| {
        let as_token = as_token.clone();
        async move { tokio::task::spawn_blocking(move || as_token(&token, &args)).await.unwrap() }
    };
    poll_until("tarn serve answers over TLS", || async {
        run(ops.clone(), vec!["mkdir", "app"]).await.status.success().then_some(())
    })
    .await;
    assert!(run(ops.clone(), vec!["put", "app.x", "1"]).await.status.success());
    let o = run(viewer.clone(), vec!["put", "app.x", "2"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("permission denied") && text(&o.stderr).contains("write"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(text(&run(viewer.clone(), vec!["get", "app.x"]).await.stdout), "1\n");

    assert!(tarn(&["auth", "remove", "viewer", "--auth-file", &auth_file]).status.success());
    // SAFETY: kill(2) on the child this test started; no memory is involved.
    let sent = unsafe { libc::kill(server.id() as libc::pid_t, libc::SIGHUP) };
    assert_eq!(sent, 0, "SIGHUP delivered");
    let o = poll_until("the removed token refused after SIGHUP", || async {
        let o = run(viewer.clone(), vec!["get", "app.x"]).await;
        (!o.status.success()).then_some(o)
    })
    .await;
    assert!(text(&o.stderr).contains("unknown or revoked token"), "{}", text(&o.stderr));
    assert!(run(ops.clone(), vec!["get", "app.x"]).await.status.success(), "still serving");
    server.kill().unwrap();
    server.wait().unwrap();
}

/// A token never crosses the network in plaintext: without TLS the client
/// refuses, before connecting, to send it anywhere but a loopback address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_not_sent_in_plaintext_beyond_loopback() {
    let plaintext = ClientSecurity { tls: None, token: Some("tarn-secret".into()) };
    // TEST-NET-1: nothing answers there, and nothing is dialed.
    let far: SocketAddr = "192.0.2.1:7700".parse().unwrap();
    let client = Client::new(client_config(vec![far], plaintext.clone()));
    let r = tokio::time::timeout(Duration::from_secs(5), client.get("k")).await.expect("refused at once");
    assert!(matches!(r, Err(ClientError::PlaintextToken { addr }) if addr == far), "{r:?}");
    // On loopback the token goes (a server without --auth-file ignores it).
    let server = single_node(ServerSecurity::default()).await;
    let client = Client::new(client_config(vec![server.client_addr()], plaintext));
    client.put("k", "v").await.unwrap();
    server.shutdown().await;
}

/// Sessions are namespaced by principal: one that learned another's session
/// id (a temporary node's owner is visible to every reader) and wrote under
/// it used to record answers for that session's next sequence numbers, so
/// the victim's next write was answered as a duplicate and never applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_cannot_write_under_another_principals_session() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "cluster");
    let auth_path = dir.path().join("auth");
    let victim = auth::add_token(&auth_path, "victim", Role::ReadWrite, &[]).unwrap();
    let mallory = auth::add_token(&auth_path, "mallory", Role::ReadWrite, &[]).unwrap();
    let server = single_node(ServerSecurity {
        client_tls: Some(tls::client_port_config(&TlsFiles { ca: None, ..pki.node(1, false) }).unwrap()),
        auth: Some(AuthTable::load(&auth_path).unwrap()),
        ..ServerSecurity::default()
    })
    .await;
    let as_token = |token: &str, client_id: Option<u64>| {
        let mut c = client_config(vec![server.client_addr()], tls_client(&pki, None, Some(token)));
        c.client_id = client_id;
        Client::new(c)
    };
    let victim = as_token(&victim, None);
    victim.mkdir("app").await.unwrap(); // the victim's seq 1
    victim.put_temp("app.t", "mine", Duration::from_secs(60)).await.unwrap(); // seq 2
    let owner = victim.get("app.t").await.unwrap().and_then(|n| n.temp).expect("a temporary node").owner;
    // Mallory writes as that session, at the victim's next numbers.
    let mallory = as_token(&mallory, Some(owner));
    for i in 0..4 {
        mallory.put(&format!("app.m{i}"), "x").await.unwrap();
    }
    victim.put("app.v", "applied").await.unwrap(); // the victim's seq 3
    let v = victim.get("app.v").await.unwrap().map(|n| n.value);
    assert_eq!(v.as_deref(), Some(&b"applied"[..]), "the victim's write was taken for a duplicate");
    for i in 0..4 {
        assert!(victim.get(&format!("app.m{i}")).await.unwrap().is_some(), "mallory's own writes apply");
    }
    server.shutdown().await;
}
