//! Client sessions: a retried write is applied once and returns its first result.

mod support;

use support::{b, put, Harness};
use tarn_kv::{Command, KvConfig, KvError, Reply, Request};

fn req(client: u64, seq: u64, first_unacked: u64, command: Command) -> Request {
    Request { client_id: client, seq, first_unacked_seq: first_unacked, command }
}

#[test]
fn a_retried_write_returns_the_first_result_and_is_not_applied_twice() {
    let mut h = Harness::new();
    let cas = req(1, 1, 1, Command::CompareAndSet { key: "k".into(), expected: None, new: Some(b("1")) });
    assert_eq!(h.send(&cas), Ok(Reply::Done));
    // Someone changes k; a retry of the CAS must not re-run (it would now fail or clobber).
    h.send(&req(2, 1, 1, put("k", "2"))).unwrap();
    assert_eq!(h.send(&cas), Ok(Reply::Done), "first result, again");
    assert_eq!(h.value("k"), Some(b("2")), "not applied twice");
    let update_index = h.kv.get("k").unwrap().unwrap().update_index;
    assert_eq!(update_index, 2);
    // Errors are remembered too.
    let bad = req(1, 2, 1, put("x.y", "1"));
    let first = h.send(&bad);
    assert_eq!(first, Err(KvError::ParentMissing { key: "x.y".into() }));
    h.send(&req(2, 2, 2, Command::Mkdir { key: "x".into() })).unwrap();
    assert_eq!(h.send(&bad), first, "retry gives the first error even though it would now succeed");
    assert!(!h.exists("x.y"));
}

#[test]
fn out_of_order_seqs_are_fine_and_acknowledged_ones_are_forgotten() {
    let mut h = Harness::new();
    h.send(&req(1, 2, 1, put("b", "2"))).unwrap();
    h.send(&req(1, 1, 1, put("a", "1"))).unwrap();
    assert_eq!(h.value("a"), Some(b("1")));
    // The client acknowledges everything below 3: both responses may be dropped.
    h.send(&req(1, 3, 3, put("c", "3"))).unwrap();
    assert_eq!(
        h.send(&req(1, 1, 3, put("a", "again"))),
        Err(KvError::SessionSeqTooOld { client_id: 1, seq: 1, floor: 3 })
    );
    assert_eq!(h.value("a"), Some(b("1")));
}

#[test]
fn the_response_window_is_bounded() {
    let config = KvConfig { max_session_responses: 2, ..support::config() };
    let mut h = Harness::with_config(config);
    for seq in 1..=3 {
        h.send(&req(1, seq, 1, put("k", &seq.to_string()))).unwrap();
    }
    // Seq 1's response was pushed out by the bound: a retry is refused, not re-applied.
    assert_eq!(
        h.send(&req(1, 1, 1, put("k", "1"))),
        Err(KvError::SessionSeqTooOld { client_id: 1, seq: 1, floor: 2 })
    );
    assert_eq!(h.send(&req(1, 3, 1, put("k", "3"))), Ok(Reply::Done));
    assert_eq!(h.value("k"), Some(b("3")));
}

#[test]
fn sessions_expire_by_replicated_time() {
    let config = KvConfig { session_ttl_nanos: 1_000, session_sweep_interval_nanos: 10, ..support::config() };
    let mut h = Harness::with_config(config);
    h.time = 0;
    h.send(&req(1, 1, 1, put("a", "1"))).unwrap();
    h.send(&req(2, 1, 1, put("b", "1"))).unwrap();
    assert_eq!(h.kv.session_count(), 2);
    h.time = 900;
    h.send(&req(2, 2, 2, put("b", "2"))).unwrap(); // client 2 stays active
    h.time = 1_500;
    h.send(&req(2, 3, 3, put("b", "3"))).unwrap();
    assert_eq!(h.kv.session_count(), 1, "client 1 idle for more than the session TTL");
    // Client 1 comes back mid-stream: it must learn its session is gone.
    assert_eq!(h.send(&req(1, 2, 2, put("a", "2"))), Err(KvError::SessionExpired { client_id: 1 }));
    assert_eq!(h.value("a"), Some(b("1")));
    // A fresh session (nothing acknowledged yet) is created.
    assert_eq!(h.send(&req(3, 1, 1, put("a", "3"))), Ok(Reply::Done));
}

#[test]
fn session_count_is_bounded() {
    let config = KvConfig { max_sessions: 2, ..support::config() };
    let mut h = Harness::with_config(config);
    h.send(&req(1, 1, 1, Command::KeepAlive)).unwrap();
    h.send(&req(2, 1, 1, Command::KeepAlive)).unwrap();
    assert_eq!(h.send(&req(3, 1, 1, put("k", "v"))), Err(KvError::TooManySessions { max: 2 }));
    assert!(!h.exists("k"));
}

#[test]
fn reads_through_the_log_skip_the_session_table() {
    let mut h = Harness::new();
    h.send(&req(9, 5, 5, Command::Get { key: "k".into() })).unwrap();
    assert_eq!(h.kv.session_count(), 0);
}
