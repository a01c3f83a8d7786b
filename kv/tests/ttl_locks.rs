//! Temporary nodes (TTL, ownership, expiry as a replicated command) and locks (FIFO, lease
//! expiry, wait timeout, unlock only by the holder).

mod support;

use support::{b, mkdir, put, remove, Harness};
use tarn_kv::{Command, EventKind, KvError, LockOutcome, NodeKind, Reply, WatchPoll};

fn put_temp(key: &str, value: &str, ttl: u64) -> Command {
    Command::PutTemp { key: key.into(), value: b(value), ttl_nanos: ttl }
}

fn try_lock(key: &str, lease: u64, wait: u64) -> Command {
    Command::TryLock { key: key.into(), lease_nanos: lease, wait_nanos: wait }
}

#[test]
fn temp_node_expires_after_its_ttl_by_the_leaders_clock() {
    let mut h = Harness::new();
    h.run(1, put_temp("t", "v", 100)).unwrap();
    let node = h.kv.get("t").unwrap().unwrap();
    let temp = node.temp.unwrap();
    assert_eq!((temp.owner, temp.ttl_nanos), (1, 100));
    // The leader first sees its clock at 5_000: the deadline is 5_100.
    assert_eq!(h.kv.next_ttl_deadline(5_000), Some(5_100));
    assert!(h.expire_at(5_099).is_empty());
    assert!(h.exists("t"));
    assert_eq!(h.expire_at(5_100), vec![Ok(Reply::Expired(true))]);
    assert!(!h.exists("t"));
    assert_eq!(h.kv.ttl_count(), 0);
    assert_eq!(h.kv.next_ttl_deadline(6_000), None);
}

#[test]
fn only_the_owner_updates_or_removes_a_temp_node() {
    let mut h = Harness::new();
    h.run(1, put_temp("t", "v", 100)).unwrap();
    assert_eq!(h.run(2, put("t", "x")), Err(KvError::NotOwner { key: "t".into(), owner: 1 }));
    assert_eq!(h.run(2, remove("t")), Err(KvError::NotOwner { key: "t".into(), owner: 1 }));
    assert_eq!(
        h.run(2, Command::UpdateTtl { key: "t".into(), ttl_nanos: 50 }),
        Err(KvError::NotOwner { key: "t".into(), owner: 1 })
    );
    assert_eq!(h.run(2, put_temp("t", "x", 100)), Err(KvError::NotOwner { key: "t".into(), owner: 1 }));
    assert_eq!(h.value("t"), Some(b("v")));
    // The owner may: a plain put keeps it temporary.
    h.run(1, put("t", "w")).unwrap();
    assert!(h.kv.get("t").unwrap().unwrap().temp.is_some());
    h.run(1, remove("t")).unwrap();
    assert!(!h.exists("t"));
    assert_eq!(h.kv.ttl_count(), 0, "removing a temp node disarms its TTL");
}

#[test]
fn temp_rules_against_permanent_nodes_and_bad_ttls() {
    let mut h = Harness::new();
    h.run(1, put("p", "v")).unwrap();
    assert_eq!(h.run(1, put_temp("p", "x", 100)), Err(KvError::NotTemporaryConflict { key: "p".into() }));
    assert_eq!(
        h.run(1, Command::UpdateTtl { key: "p".into(), ttl_nanos: 100 }),
        Err(KvError::NotTemporary { key: "p".into() })
    );
    assert_eq!(
        h.run(1, Command::UpdateTtl { key: "nope".into(), ttl_nanos: 100 }),
        Err(KvError::NotFound { key: "nope".into() })
    );
    assert!(matches!(h.run(1, put_temp("t", "x", 1)), Err(KvError::InvalidTtl { ttl_nanos: 1, .. })));
    assert!(matches!(h.run(1, put_temp("t", "x", u64::MAX)), Err(KvError::InvalidTtl { .. })));
    assert!(!h.exists("t"));
}

#[test]
fn update_ttl_rearms_and_a_stale_expire_is_a_no_op() {
    let mut h = Harness::new();
    h.run(1, put_temp("t", "v", 100)).unwrap();
    assert_eq!(h.kv.next_ttl_deadline(0), Some(100));
    let stale = h.kv.expired(100, 10);
    assert_eq!(stale.len(), 1);
    // Before the expiry commits, the owner renews: the proposed expiry must not apply.
    h.run(1, Command::UpdateTtl { key: "t".into(), ttl_nanos: 300 }).unwrap();
    assert_eq!(h.send(&stale[0]), Ok(Reply::Expired(false)));
    assert!(h.exists("t"));
    assert_eq!(h.kv.get("t").unwrap().unwrap().temp.unwrap().ttl_nanos, 300);
    assert_eq!(h.kv.next_ttl_deadline(150), Some(450), "the new arming starts at the next clock reading");
    assert_eq!(h.expire_at(450), vec![Ok(Reply::Expired(true))]);
    assert!(!h.exists("t"));
}

#[test]
fn renew_ttl_rearms_any_clients_temp_node_and_keeps_value_and_owner() {
    let mut h = Harness::new();
    h.run(1, put_temp("t", "v", 100)).unwrap();
    h.run(1, Command::MkdirTemp { key: "d".into(), ttl_nanos: 100 }).unwrap();
    assert_eq!(h.kv.next_ttl_deadline(0), Some(100));
    let stale = h.kv.expired(100, 10);
    assert_eq!(stale.len(), 2);
    // Client 2 owns neither node: it may renew them, not change them.
    let renew = |key: &str, ttl_nanos| Command::RenewTtl { key: key.into(), ttl_nanos };
    h.run(2, renew("t", 300)).unwrap();
    h.run(2, renew("d", 300)).unwrap();
    for expiry in &stale {
        assert_eq!(h.send(expiry), Ok(Reply::Expired(false)), "the renewal disarmed the old deadline");
    }
    let node = h.kv.get("t").unwrap().unwrap();
    let temp = node.temp.unwrap();
    assert_eq!((node.value, temp.owner, temp.ttl_nanos), (b("v"), 1, 300));
    assert_eq!(h.run(2, put("t", "x")), Err(KvError::NotOwner { key: "t".into(), owner: 1 }));
    assert_eq!(h.kv.next_ttl_deadline(150), Some(450));
    assert!(h.expire_at(449).is_empty());
    assert_eq!(h.expire_at(450).len(), 2);
    assert!(!h.exists("t") && !h.exists("d"));
}

#[test]
fn renew_ttl_refuses_missing_permanent_and_lock_nodes_and_bad_ttls() {
    let mut h = Harness::new();
    let renew = |key: &str, ttl_nanos| Command::RenewTtl { key: key.into(), ttl_nanos };
    assert_eq!(h.run(2, renew("nope", 100)), Err(KvError::NotFound { key: "nope".into() }));
    h.run(1, put("p", "v")).unwrap();
    assert_eq!(h.run(2, renew("p", 100)), Err(KvError::NotTemporary { key: "p".into() }));
    assert_eq!(h.run(1, try_lock("l", 100, 0)), Ok(Reply::Lock(LockOutcome::Acquired)));
    assert_eq!(h.run(2, renew("l", 100)), Err(KvError::IsALock { key: "l".into() }));
    h.run(1, put_temp("t", "v", 100)).unwrap();
    assert!(matches!(h.run(2, renew("t", 1)), Err(KvError::InvalidTtl { ttl_nanos: 1, .. })));
    assert_eq!(
        h.kv.get("t").unwrap().unwrap().temp.unwrap().ttl_nanos,
        100,
        "a refused renewal changes nothing"
    );
}

#[test]
fn children_of_a_temp_dir_expire_with_it() {
    let mut h = Harness::new();
    h.run(1, Command::MkdirTemp { key: "session".into(), ttl_nanos: 100 }).unwrap();
    h.run(2, mkdir("session.sub")).unwrap();
    h.run(2, put("session.sub.x", "1")).unwrap();
    h.run(1, put_temp("session.mine", "1", 500)).unwrap();
    assert_eq!(h.run(1, remove("session")), Err(KvError::DirNotEmpty { key: "session".into() }));
    let watch = h.kv.watch("session", true, None).unwrap();
    h.kv.next_ttl_deadline(0);
    assert_eq!(h.expire_at(100), vec![Ok(Reply::Expired(true))]);
    for key in ["session", "session.sub", "session.sub.x", "session.mine"] {
        assert!(!h.exists(key), "{key} expired with its temp parent");
    }
    assert_eq!(h.kv.ttl_count(), 0, "the child's own TTL is disarmed too");
    let WatchPoll::Events(events) = h.kv.poll_watch(watch, 100) else { panic!() };
    let removed: Vec<&str> =
        events.iter().filter(|e| e.kind == EventKind::Removed).map(|e| &*e.key).collect();
    assert_eq!(removed, ["session.mine", "session.sub.x", "session.sub", "session"], "children first");
}

#[test]
fn mkdir_temp_on_existing_dirs() {
    let mut h = Harness::new();
    h.run(1, Command::MkdirTemp { key: "d".into(), ttl_nanos: 100 }).unwrap();
    // Same owner: re-armed.
    let before = h.kv.get("d").unwrap().unwrap().temp.unwrap();
    h.run(1, Command::MkdirTemp { key: "d".into(), ttl_nanos: 200 }).unwrap();
    let after = h.kv.get("d").unwrap().unwrap().temp.unwrap();
    assert_eq!(after.ttl_nanos, 200);
    assert_ne!(after.arm_id, before.arm_id);
    assert_eq!(
        h.run(2, Command::MkdirTemp { key: "d".into(), ttl_nanos: 100 }),
        Err(KvError::NotOwner { key: "d".into(), owner: 1 })
    );
    h.run(1, mkdir("p")).unwrap();
    assert_eq!(
        h.run(1, Command::MkdirTemp { key: "p".into(), ttl_nanos: 100 }),
        Err(KvError::NotTemporaryConflict { key: "p".into() })
    );
    // A plain mkdir of an existing temp dir is success and leaves it temporary.
    assert_eq!(h.run(2, mkdir("d")), Ok(Reply::Done));
    assert!(h.kv.get("d").unwrap().unwrap().temp.is_some());
}

#[test]
fn a_new_leader_rearms_from_scratch_and_never_shortens() {
    let mut h = Harness::new();
    h.run(1, put_temp("t", "v", 1_000)).unwrap();
    assert_eq!(h.kv.next_ttl_deadline(10_000), Some(11_000));
    // 900 ns later the leader changes. The new leader's clock has another origin (reads 50).
    h.kv.rearm_ttls(50);
    assert!(h.expire_at(1_049).is_empty(), "a full TTL from the new leader's clock");
    assert_eq!(h.expire_at(1_050), vec![Ok(Reply::Expired(true))]);
}

#[test]
fn a_lost_expiry_proposal_is_offered_again() {
    let mut h = Harness::new();
    h.run(1, put_temp("t", "v", 100)).unwrap();
    h.kv.next_ttl_deadline(0);
    let lost = h.kv.expired(100, 10);
    assert_eq!(lost.len(), 1);
    assert!(h.kv.expired(100, 10).is_empty(), "not offered twice at once");
    let retry_nanos = h.kv.config().expire_retry_nanos;
    let again = h.kv.expired(100 + retry_nanos, 10);
    assert_eq!(again, lost);
}

#[test]
fn locks_are_fifo_and_only_the_holder_unlocks() {
    let mut h = Harness::new();
    let watch = h.kv.watch("lk", false, None).unwrap();
    assert_eq!(h.run(1, try_lock("lk", 100, 0)), Ok(Reply::Lock(LockOutcome::Acquired)));
    assert_eq!(h.run(2, try_lock("lk", 100, 0)), Err(KvError::LockBusy { key: "lk".into(), holder: 1 }));
    assert_eq!(h.run(2, try_lock("lk", 100, 500)), Ok(Reply::Lock(LockOutcome::Queued { position: 0 })));
    assert_eq!(h.run(3, try_lock("lk", 100, 500)), Ok(Reply::Lock(LockOutcome::Queued { position: 1 })));
    assert_eq!(
        h.run(2, try_lock("lk", 100, 500)),
        Ok(Reply::Lock(LockOutcome::Queued { position: 0 })),
        "idempotent"
    );
    assert_eq!(h.run(1, try_lock("lk", 100, 0)), Ok(Reply::Lock(LockOutcome::Acquired)), "holder re-locks");
    let node = h.kv.get("lk").unwrap().unwrap();
    assert_eq!(node.kind, NodeKind::Lock);
    assert_eq!(node.temp.unwrap().owner, 1);
    assert_eq!(node.lock_waiters, vec![2, 3]);

    assert_eq!(
        h.run(4, Command::Unlock { key: "lk".into() }),
        Err(KvError::LockNotHeld { key: "lk".into() })
    );
    assert_eq!(
        h.run(2, Command::UpdateLease { key: "lk".into(), lease_nanos: 50 }),
        Err(KvError::LockNotHeld { key: "lk".into() })
    );
    assert_eq!(h.run(1, remove("lk")), Err(KvError::IsALock { key: "lk".into() }));
    assert_eq!(h.run(1, put("lk", "x")), Err(KvError::IsALock { key: "lk".into() }));

    h.run(1, Command::Unlock { key: "lk".into() }).unwrap();
    assert_eq!(h.kv.get("lk").unwrap().unwrap().temp.unwrap().owner, 2, "first waiter takes over");
    h.run(2, Command::Unlock { key: "lk".into() }).unwrap();
    assert_eq!(h.kv.get("lk").unwrap().unwrap().temp.unwrap().owner, 3);
    h.run(3, Command::Unlock { key: "lk".into() }).unwrap();
    assert!(!h.exists("lk"), "the last holder's unlock removes the lock");
    assert_eq!(h.kv.ttl_count(), 0);

    let WatchPoll::Events(events) = h.kv.poll_watch(watch, 100) else { panic!() };
    let kinds: Vec<EventKind> = events.into_iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EventKind::LockHolder { holder: 1 },
            EventKind::LockHolder { holder: 2 },
            EventKind::LockHolder { holder: 3 },
            EventKind::Removed
        ]
    );
}

#[test]
fn lease_expiry_hands_the_lock_to_the_next_waiter_with_a_fresh_lease() {
    let mut h = Harness::new();
    h.run(1, try_lock("lk", 100, 0)).unwrap();
    h.run(2, try_lock("lk", 300, 10_000)).unwrap();
    h.kv.next_ttl_deadline(0); // holder lease ends at 100, waiter gives up at 10_000
    assert_eq!(h.expire_at(100), vec![Ok(Reply::Expired(true))]);
    let node = h.kv.get("lk").unwrap().unwrap();
    assert_eq!(node.temp.unwrap().owner, 2);
    assert_eq!(node.temp.unwrap().ttl_nanos, 300);
    assert!(node.lock_waiters.is_empty());
    // The new holder's lease starts when the leader next reads its clock, not earlier.
    assert_eq!(h.kv.next_ttl_deadline(120), Some(420));
    // The holder renews: the old arming no longer expires it.
    h.run(2, Command::UpdateLease { key: "lk".into(), lease_nanos: 1_000 }).unwrap();
    assert!(h.expire_at(420).is_empty());
    assert_eq!(h.expire_at(1_420), vec![Ok(Reply::Expired(true))]);
    assert!(!h.exists("lk"));
}

#[test]
fn a_waiter_that_times_out_leaves_the_queue() {
    let mut h = Harness::new();
    h.run(1, try_lock("lk", 1_000, 0)).unwrap();
    h.run(2, try_lock("lk", 100, 200)).unwrap();
    h.run(3, try_lock("lk", 100, 5_000)).unwrap();
    h.kv.next_ttl_deadline(0);
    assert_eq!(h.expire_at(200), vec![Ok(Reply::Expired(true))]);
    assert_eq!(h.kv.get("lk").unwrap().unwrap().lock_waiters, vec![3]);
    // A waiter may also give up by unlocking.
    h.run(3, Command::Unlock { key: "lk".into() }).unwrap();
    assert!(h.kv.get("lk").unwrap().unwrap().lock_waiters.is_empty());
    assert_eq!(h.kv.get("lk").unwrap().unwrap().temp.unwrap().owner, 1);
    assert_eq!(h.kv.ttl_count(), 1);
}

#[test]
fn lock_queue_is_bounded_and_kinds_are_checked() {
    let mut h = Harness::new();
    let max = h.kv.config().max_lock_waiters as u64;
    h.run(1, try_lock("lk", 100, 0)).unwrap();
    for client in 2..max + 2 {
        h.run(client, try_lock("lk", 100, 500)).unwrap();
    }
    assert!(matches!(h.run(max + 2, try_lock("lk", 100, 500)), Err(KvError::TooManyWaiters { .. })));
    h.run(1, put("v", "1")).unwrap();
    assert_eq!(h.run(1, try_lock("v", 100, 0)), Err(KvError::NotALock { key: "v".into() }));
    assert_eq!(h.run(1, Command::Unlock { key: "v".into() }), Err(KvError::NotALock { key: "v".into() }));
    assert_eq!(
        h.run(1, Command::Unlock { key: "none".into() }),
        Err(KvError::LockNotHeld { key: "none".into() })
    );
    assert_eq!(h.run(1, try_lock("x.y", 100, 0)), Err(KvError::ParentMissing { key: "x.y".into() }));
}
