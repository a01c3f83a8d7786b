//! Three real servers on 127.0.0.1 ports: elections, writes through any node,
//! leader failure, catch-up after restart, watches across a leader change,
//! locks released by TTL when their holder dies.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{poll_until, TestCluster, TEST_DEADLINE};
use tarn_kv::{EventKind, KvError, LockOutcome};
use tarn_server::client::{Client, ClientConfig, ClientError};
use tarn_server::protocol::Consistency;

fn client_starting_at(cluster: &TestCluster, first: u64) -> Client {
    let mut endpoints = cluster.endpoints();
    endpoints.rotate_left((first - 1) as usize);
    let mut c = ClientConfig::new(endpoints);
    c.request_timeout = Duration::from_secs(20);
    c.retry_backoff = Duration::from_millis(20);
    Client::new(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_a_leader_and_take_writes_through_any_node() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let cluster = TestCluster::start(3).await;
        let leader = cluster.leader().await;
        assert!((1..=3).contains(&leader));
        for first in 1..=3u64 {
            let client = client_starting_at(&cluster, first);
            client.put(&format!("via{first}"), format!("node{first}")).await.unwrap();
        }
        // Every node applies every write: stale reads on each node converge.
        for id in 1..=3u64 {
            let c = cluster.client_of(id);
            for first in 1..=3u64 {
                let key = format!("via{first}");
                poll_until("the write to reach every node", || {
                    let (c, key) = (c.clone(), key.clone());
                    async move {
                        let v = c.get_with(&key, Consistency::Stale).await.ok()??;
                        (v.value[..] == *format!("node{first}").as_bytes()).then_some(())
                    }
                })
                .await;
            }
        }
        let status = cluster.client().status_of(0).await.unwrap();
        assert_eq!(status.groups[0].voters, vec![1, 2, 3]);
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_writes_continue_and_restarted_node_catches_up() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let mut cluster = TestCluster::start(3).await;
        let client = cluster.client();
        client.mkdir("d").await.unwrap();
        for i in 0..20 {
            client.put(&format!("d.before{i}"), "x").await.unwrap();
        }
        let old = cluster.leader().await;
        cluster.stop_node(old).await;
        // Writes continue once the two survivors elect a new leader.
        for i in 0..20 {
            client.put(&format!("d.after{i}"), "y").await.unwrap();
        }
        let new = cluster.leader().await;
        assert_ne!(new, old);
        // The old leader restarts from its data dir and catches up.
        cluster.start_node(old).await;
        let target = cluster.servers[&new].group(1).unwrap().info().commit;
        poll_until("the restarted node to apply everything", || async {
            let info = cluster.servers[&old].group(1)?.info();
            (info.applied >= target).then_some(())
        })
        .await;
        let c = cluster.client_of(old);
        let v = c.get_with("d.after19", Consistency::Stale).await.unwrap();
        assert_eq!(v.map(|n| n.value), Some(Bytes::from_static(b"y")));
        assert_eq!(client.list("d").await.unwrap().len(), 40);
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_deliver_every_event_across_a_leader_change() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let mut cluster = TestCluster::start(3).await;
        let client = cluster.client();
        client.mkdir("w").await.unwrap();
        let leader = cluster.leader().await;
        // Watch through the leader first, so killing it forces a resume elsewhere.
        let mut watch_endpoints = cluster.endpoints();
        watch_endpoints.rotate_left((leader - 1) as usize);
        let mut wc = ClientConfig::new(watch_endpoints);
        wc.retry_backoff = Duration::from_millis(20);
        let watcher = Client::new(wc);
        let mut stream = watcher.watch("w", true, Some(0));
        for i in 0..20 {
            client.put(&format!("w.k{i}"), format!("{i}")).await.unwrap();
        }
        cluster.stop_node(leader).await;
        for i in 20..40 {
            client.put(&format!("w.k{i}"), format!("{i}")).await.unwrap();
        }
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        let mut last_index = 0;
        while seen.len() < 40 {
            let e = stream.next().await.expect("stream open").expect("no error");
            assert!(
                e.index > last_index,
                "events in index order, never repeated: {} after {last_index}",
                e.index
            );
            last_index = e.index;
            if let EventKind::Put { value } = e.kind {
                seen.insert(e.key.to_string(), String::from_utf8_lossy(&value).into_owned());
            }
        }
        for i in 0..40 {
            assert_eq!(seen.get(&format!("w.k{i}")).map(String::as_str), Some(format!("{i}").as_str()));
        }
        drop(stream);
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_has_one_holder_and_is_released_when_the_holder_dies() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let cluster = TestCluster::start(3).await;
        let setup = cluster.client();
        setup.mkdir("locks").await.unwrap();
        let a = cluster.client();
        let b = cluster.client();
        let lease = Duration::from_millis(1500);
        assert_eq!(a.try_lock("locks.job", lease, Duration::ZERO).await.unwrap(), LockOutcome::Acquired);
        let taken_at = Instant::now();
        // B cannot take it while A holds it.
        match b.try_lock("locks.job", lease, Duration::ZERO).await {
            Err(ClientError::Kv(KvError::LockBusy { holder, .. })) => assert_eq!(holder, a.client_id()),
            other => panic!("expected LockBusy, got {other:?}"),
        }
        // A renews once, then "dies": it stops renewing and never unlocks.
        // The renewed lease starts when the leader stamps the request, which
        // is after it was sent (its reply may come much later on a loaded
        // machine): measure from the sending.
        let renewed_at = Instant::now();
        a.update_lease("locks.job", lease).await.unwrap();
        drop(a);
        let acquired = poll_until("the lease to expire and B to get the lock", || {
            let b = b.clone();
            async move {
                match b.try_lock("locks.job", lease, Duration::ZERO).await {
                    Ok(LockOutcome::Acquired) => Some(Instant::now()),
                    _ => None,
                }
            }
        })
        .await;
        assert!(
            acquired.duration_since(renewed_at) >= lease.mul_f64(0.9),
            "B got the lock {:?} after A's last renewal, before A's lease of {lease:?} ran out (taken {:?} ago)",
            acquired.duration_since(renewed_at),
            taken_at.elapsed()
        );
        let node = setup.get("locks.job").await.unwrap().expect("lock node");
        assert_eq!(node.temp.map(|t| t.owner), Some(b.client_id()));
        b.unlock("locks.job").await.unwrap();
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_are_added_and_removed_at_runtime() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let mut cluster = TestCluster::start(3).await;
        let admin = cluster.client();
        admin.add_group(2, vec![1, 2, 3]).await.unwrap();
        let mut c2 = ClientConfig::new(cluster.endpoints());
        c2.group = 2;
        c2.request_timeout = Duration::from_secs(20);
        let g2 = Client::new(c2);
        g2.put("only-in-2", "x").await.unwrap();
        // Group 1 is a different state machine: the key is not there.
        assert_eq!(admin.get("only-in-2").await.unwrap(), None);
        assert_eq!(&g2.get("only-in-2").await.unwrap().unwrap().value[..], b"x");
        // Adding it again is refused with a clear error.
        let err = admin.add_group(2, vec![1, 2, 3]).await.unwrap_err();
        assert!(err.to_string().contains("already runs"), "{err}");
        // The group list survives a restart.
        cluster.stop_node(1).await;
        cluster.start_node(1).await;
        assert!(cluster.servers[&1].group(2).is_some());
        admin.remove_group(2).await.unwrap();
        for s in cluster.servers.values() {
            assert!(s.group(2).is_none());
        }
        let mut c2 = ClientConfig::new(cluster.endpoints());
        c2.group = 2;
        c2.request_timeout = Duration::from_secs(20);
        let err = Client::new(c2.clone()).put("k", "v").await.unwrap_err();
        assert!(err.to_string().contains("not hosted"), "{err}");
        // Its files are gone on every node ...
        for id in 1..=3 {
            let dir = cluster.data_dir(id).join(format!("group-{:020}", 2));
            assert!(!dir.exists(), "{} still exists after group remove", dir.display());
            assert!(cluster.data_dir(id).join(format!("group-{:020}", 1)).exists());
        }
        // ... and adding it again (same processes) starts it empty.
        admin.add_group(2, vec![1, 2, 3]).await.unwrap();
        let g2 = Client::new(c2);
        assert_eq!(g2.get("only-in-2").await.unwrap(), None, "a re-added group starts empty");
        g2.put("fresh", "y").await.unwrap();
        assert_eq!(&g2.get("fresh").await.unwrap().unwrap().value[..], b"y");
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_lock_holders_take_turns() {
    use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
    use std::sync::Arc;
    tokio::time::timeout(TEST_DEADLINE, async {
        let cluster = TestCluster::start(3).await;
        cluster.client().mkdir("locks").await.unwrap();
        let holders = Arc::new(AtomicI64::new(0));
        let acquired = Arc::new(AtomicU64::new(0));
        let lease = Duration::from_millis(2000);
        let mut locks = Vec::new();
        for _ in 0..2 {
            let (h1, h2, a) = (holders.clone(), holders.clone(), acquired.clone());
            locks.push(cluster.client().auto_lock(
                "locks.auto",
                lease,
                move || {
                    h1.fetch_add(1, Ordering::SeqCst);
                    a.fetch_add(1, Ordering::SeqCst);
                },
                move || {
                    h2.fetch_sub(1, Ordering::SeqCst);
                },
            ));
        }
        poll_until("one auto-lock to acquire", || async {
            (acquired.load(Ordering::SeqCst) == 1).then_some(())
        })
        .await;
        assert_eq!(holders.load(Ordering::SeqCst), 1);
        // The holder keeps it over several leases (renewal works) ...
        let first = if locks[0].is_held() { 0 } else { 1 };
        for _ in 0..3 {
            tokio::time::sleep(lease / 2).await;
            assert!(locks[first].is_held());
            assert!(!locks[1 - first].is_held());
        }
        // ... and releasing it hands it to the other.
        locks.remove(first).release().await;
        poll_until("the other auto-lock to acquire", || async {
            (acquired.load(Ordering::SeqCst) == 2).then_some(())
        })
        .await;
        assert!(locks[0].is_held());
        locks.pop().unwrap().release().await;
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_leader_moves_leadership_and_writes_follow() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let cluster = TestCluster::start(3).await;
        let client = cluster.client();
        client.put("before", "1").await.unwrap();
        let old = cluster.leader().await;
        let target = if old == 3 { 1 } else { old + 1 };
        // The core may refuse while the target catches up: retry until it moves.
        poll_until("leadership to move to the target", || {
            let client = client.clone();
            let cluster = &cluster;
            async move {
                let _ = client.transfer_leader(target).await;
                let leader = cluster.servers[&target].group(1)?.info().leader?;
                (leader == target).then_some(())
            }
        })
        .await;
        client.put("after", "2").await.unwrap();
        assert_eq!(cluster.leader().await, target);
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_removed_added_as_learners_and_promoted() {
    use tarn_server::protocol::MemberChange;
    tokio::time::timeout(TEST_DEADLINE, async {
        let cluster = TestCluster::start(3).await;
        let client = cluster.client();
        client.put("m", "1").await.unwrap();
        let leader = cluster.leader().await;
        let other = (1..=3).find(|&n| n != leader).unwrap();
        let voters = |cluster: &TestCluster| {
            let s = cluster.servers[&leader].group(1).unwrap();
            async move { s.status().await.map(|s| (s.membership.voters.clone(), s.membership.learners.clone())) }
        };
        client.change_membership(vec![MemberChange::Remove(other)]).await.unwrap();
        let (v, _) = voters(&cluster).await.unwrap();
        assert!(!v.contains(&other) && v.len() == 2, "{v:?}");
        // Two voters still commit.
        client.put("m", "2").await.unwrap();
        client.change_membership(vec![MemberChange::AddLearner(other)]).await.unwrap();
        let (_, l) = voters(&cluster).await.unwrap();
        assert!(l.contains(&other), "{l:?}");
        // Promotion is refused while the learner lags: retry until it has caught up.
        poll_until("the learner to be promoted", || {
            let client = client.clone();
            async move { client.change_membership(vec![MemberChange::Promote(other)]).await.ok() }
        })
        .await;
        let (v, l) = voters(&cluster).await.unwrap();
        assert!(v.contains(&other) && v.len() == 3 && l.is_empty(), "{v:?} {l:?}");
        client.put("m", "3").await.unwrap();
        // A node without a peer address is refused with a clear error.
        let err = client.change_membership(vec![MemberChange::AddLearner(9)]).await.unwrap_err();
        assert!(err.to_string().contains("--cluster"), "{err}");
        // The status of any node lists the new configuration once that node
        // has the entry; the commit did not wait for every follower (and a
        // loaded machine runs one well behind), so wait for it.
        let observer = cluster.client();
        let status = poll_until("node 1's status to list three voters", || {
            let observer = observer.clone();
            async move {
                let s = observer.status_of(0).await.ok()?;
                (s.groups[0].voters.len() == 3).then_some(s)
            }
        })
        .await;
        assert!(status.groups[0].voters.contains(&other), "{:?}", status.groups[0]);
        assert!(status.groups[0].learners.is_empty(), "{:?}", status.groups[0]);
        cluster.shutdown().await;
    })
    .await
    .expect("test deadline");
}
