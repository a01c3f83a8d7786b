//! Client sessions: an idle client keeps its session alive on its own.

mod common;

use std::time::Duration;

use common::{poll_until, TestCluster, TEST_DEADLINE};
use tarn_kv::KvError;
use tarn_server::client::{Client, ClientConfig, ClientError};

const SESSION_TTL: Duration = Duration::from_millis(1_000);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_with_keep_alive_keeps_its_session_and_one_without_loses_it() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let cluster = TestCluster::start_with(1, |c| {
            c.kv.session_ttl_nanos = SESSION_TTL.as_nanos() as u64;
            c.kv.session_sweep_interval_nanos = 50_000_000;
        })
        .await;
        let client = |keep_alive: Option<Duration>| {
            let mut c = ClientConfig::new(cluster.endpoints());
            c.request_timeout = Duration::from_secs(20);
            c.keep_alive_interval = keep_alive;
            Client::new(c)
        };
        let alive = client(Some(SESSION_TTL / 5));
        let idle = client(None);
        alive.put("a", "1").await.unwrap();
        idle.put("b", "1").await.unwrap();
        let group = cluster.servers[&1].group(1).unwrap();
        let start = group.read(false, |m| m.kv().time_nanos()).await.unwrap();
        // Replicated time only moves with entries: here, only the keep-alives
        // of `alive` move it. Wait until three TTLs have passed by it and the
        // idle session was swept while the kept-alive one stayed.
        poll_until("the idle session swept, the kept-alive one still there", || async {
            let (now, sessions) =
                group.read(false, |m| (m.kv().time_nanos(), m.kv().session_count())).await.ok()?;
            (now >= start + 3 * SESSION_TTL.as_nanos() as u64 && sessions == 1).then_some(())
        })
        .await;
        alive.put("a", "2").await.expect("the session survived its idle time");
        let err = idle.put("b", "2").await.unwrap_err();
        assert!(matches!(err, ClientError::Kv(KvError::SessionExpired { .. })), "{err:?}");
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}
