//! `tarn bench` as a library: it spreads keys over groups, prefills, reports
//! CPU figures, and leaves no keys behind.

mod common;

use std::time::Duration;

use common::{poll_until, TestCluster, TEST_DEADLINE};
use tarn_server::bench::{self, BenchConfig};
use tarn_server::client::{Client, ClientConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bench_over_two_groups_reports_cpu_and_cleans_up() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let cluster = TestCluster::start(1).await;
        let client = cluster.client();
        client.add_group(2, vec![1]).await.unwrap();
        let config = BenchConfig {
            in_flight: 16,
            keys: 200,
            get_ratio: 0.5,
            duration: Duration::from_millis(500),
            warmup: Duration::from_millis(100),
            groups: 2,
            prefill: true,
            ..BenchConfig::default()
        };
        let report = bench::run(ClientConfig::new(cluster.endpoints()), config).await.unwrap();
        assert!(report.ops > 0 && report.errors == 0, "{report}");
        assert!(report.cpu_seconds > 0.0 && report.ops_per_cpu_sec > 0.0, "{report}");
        // Both groups got keys (the prefill alone puts 100 in each)...
        for group in [1, 2] {
            let applied = cluster.servers[&1].group(group).unwrap().info().applied;
            assert!(applied > 100, "group {group} applied only {applied} entries");
        }
        // ...and both lose them once the bench is done.
        for group in [1, 2] {
            let c = Client::new(ClientConfig { group, ..ClientConfig::new(cluster.endpoints()) });
            poll_until("the bench directory expired", || async {
                let root = c.list("").await.ok()?;
                root.iter().all(|child| !child.name.starts_with("bench")).then_some(())
            })
            .await;
        }
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}
