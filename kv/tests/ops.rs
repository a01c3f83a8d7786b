//! Each operation's semantics and error cases, through the public API.

mod support;

use bytes::Bytes;
use support::{b, mkdir, put, remove, Harness};
use tarn_kv::{Command, KeyProblem, KvConfig, KvError, NodeKind, Reply};

#[test]
fn get_of_a_missing_key_is_none_and_root_exists() {
    let h = Harness::new();
    assert_eq!(h.kv.get("nope").unwrap(), None);
    let root = h.kv.get("").unwrap().unwrap();
    assert_eq!(root.kind, NodeKind::Dir);
    assert!(matches!(h.kv.get("a..b"), Err(KvError::InvalidKey { problem: KeyProblem::EmptySegment, .. })));
}

#[test]
fn put_needs_its_parent_directory() {
    let mut h = Harness::new();
    assert_eq!(h.run(1, put("a.b", "v")), Err(KvError::ParentMissing { key: "a.b".into() }));
    assert!(!h.exists("a.b"));
    assert_eq!(h.run(1, mkdir("a")), Ok(Reply::Done));
    assert_eq!(h.run(1, put("a.b", "v")), Ok(Reply::Done));
    assert_eq!(h.value("a.b"), Some(b("v")));
    // A value is not a directory: no children under it.
    assert_eq!(h.run(1, put("a.b.c", "v")), Err(KvError::NotADir { key: "a.b".into() }));
}

#[test]
fn put_overwrites_values_but_never_directories() {
    let mut h = Harness::new();
    h.run(1, put("k", "1")).unwrap();
    h.run(1, put("k", "2")).unwrap();
    assert_eq!(h.value("k"), Some(b("2")));
    h.run(1, mkdir("d")).unwrap();
    assert_eq!(h.run(1, put("d", "x")), Err(KvError::IsADir { key: "d".into() }));
    assert_eq!(h.kv.get("d").unwrap().unwrap().kind, NodeKind::Dir);
}

#[test]
fn put_refuses_bad_keys_and_values_naming_the_key() {
    let mut h = Harness::with_config(KvConfig {
        max_value_size_bytes: 4,
        max_key_size_bytes: 8,
        ..support::config()
    });
    for (key, problem) in [
        ("", KeyProblem::Empty),
        (".a", KeyProblem::LeadingSeparator),
        ("a.", KeyProblem::TrailingSeparator),
        ("a..b", KeyProblem::EmptySegment),
        ("a b", KeyProblem::Whitespace),
        ("abcdefghi", KeyProblem::LongerThan { size_bytes: 9, max_bytes: 8 }),
    ] {
        let err = h.run(1, put(key, "v")).unwrap_err();
        assert_eq!(err, KvError::InvalidKey { key: key.into(), problem });
        assert!(err.to_string().contains(&format!("{key:?}")), "{err}");
    }
    assert_eq!(
        h.run(1, Command::Put { key: "k".into(), value: Bytes::new() }),
        Err(KvError::EmptyValue { key: "k".into() })
    );
    assert_eq!(
        h.run(1, put("k", "12345")),
        Err(KvError::ValueTooLarge { key: "k".into(), size_bytes: 5, max_bytes: 4 })
    );
    assert_eq!(h.kv.node_count(), 0, "refused commands change nothing");
}

#[test]
fn remove_missing_is_success_and_non_empty_dir_is_refused() {
    let mut h = Harness::new();
    assert_eq!(h.run(1, remove("ghost")), Ok(Reply::Done));
    h.run(1, mkdir("d")).unwrap();
    h.run(1, put("d.x", "1")).unwrap();
    assert_eq!(h.run(1, remove("d")), Err(KvError::DirNotEmpty { key: "d".into() }));
    h.run(1, remove("d.x")).unwrap();
    h.run(1, remove("d")).unwrap();
    assert!(!h.exists("d"));
}

#[test]
fn mkdir_existing_dir_is_success_existing_value_is_error() {
    let mut h = Harness::new();
    h.run(1, mkdir("d")).unwrap();
    let created = h.kv.get("d").unwrap().unwrap();
    assert_eq!(h.run(1, mkdir("d")), Ok(Reply::Done));
    assert_eq!(h.kv.get("d").unwrap().unwrap(), created, "a second mkdir changes nothing");
    h.run(1, put("v", "1")).unwrap();
    assert_eq!(h.run(1, mkdir("v")), Err(KvError::NotADir { key: "v".into() }));
    assert_eq!(h.run(1, mkdir("x.y")), Err(KvError::ParentMissing { key: "x.y".into() }));
}

#[test]
fn list_gives_direct_children_in_order_with_metadata() {
    let mut h = Harness::new();
    h.run(1, mkdir("d")).unwrap();
    h.run(1, put("d.b", "2")).unwrap();
    h.run(1, put("d.a", "1")).unwrap();
    h.run(1, mkdir("d.c")).unwrap();
    h.run(1, put("d.c.deep", "3")).unwrap();
    let children = h.kv.list("d").unwrap();
    let names: Vec<&str> = children.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(children[0].node.value, b("1"));
    assert_eq!(children[2].node.kind, NodeKind::Dir);
    assert_eq!(h.kv.list("").unwrap().len(), 1);
    assert_eq!(h.kv.list("d.a"), Err(KvError::NotADir { key: "d.a".into() }));
    assert_eq!(h.kv.list("zz"), Err(KvError::NotFound { key: "zz".into() }));
}

#[test]
fn stamps_record_create_and_update_and_bump_every_ancestor() {
    let mut h = Harness::new();
    h.time = 10;
    h.run(1, mkdir("a")).unwrap(); // index 1
    h.time = 20;
    h.run(1, mkdir("a.b")).unwrap(); // index 2
    h.time = 30;
    h.run(1, put("a.b.c", "v")).unwrap(); // index 3
    h.time = 40;
    h.run(1, put("a.b.c", "w")).unwrap(); // index 4
    let c = h.kv.get("a.b.c").unwrap().unwrap();
    assert_eq!((c.create_index, c.create_time_nanos, c.update_index, c.update_time_nanos), (3, 30, 4, 40));
    for key in ["a.b", "a", ""] {
        let node = h.kv.get(key).unwrap().unwrap();
        assert_eq!((node.update_index, node.update_time_nanos), (4, 40), "ancestor {key:?}");
    }
    let a = h.kv.get("a").unwrap().unwrap();
    assert_eq!((a.create_index, a.create_time_nanos), (1, 10));
    // A removal is a write too.
    h.time = 50;
    h.run(1, remove("a.b.c")).unwrap(); // index 5
    assert_eq!(h.kv.get("a").unwrap().unwrap().update_index, 5);
    // A refused write bumps nothing.
    h.run(1, put("a", "x")).unwrap_err(); // index 6
    assert_eq!(h.kv.get("a").unwrap().unwrap().update_index, 5);
}

#[test]
fn leader_time_never_goes_back() {
    let mut h = Harness::new();
    h.time = 100;
    h.run(1, put("a", "1")).unwrap();
    h.time = 50; // a new leader whose clock reads less
    h.run(1, put("a", "2")).unwrap();
    assert_eq!(h.kv.get("a").unwrap().unwrap().update_time_nanos, 100);
    assert_eq!(h.kv.time_nanos(), 100);
}

#[test]
fn batch_operations_give_one_result_per_item() {
    let mut h = Harness::new();
    h.run(1, mkdir("d")).unwrap();
    let items = vec![("d.a".into(), b("1")), ("x.y".into(), b("2")), ("d.b".into(), b("3"))];
    let Ok(Reply::Batch(results)) = h.run(1, Command::BatchPut { items }) else { panic!("batch put") };
    assert_eq!(results, vec![Ok(()), Err(KvError::ParentMissing { key: "x.y".into() }), Ok(())]);
    let a = h.kv.get("d.a").unwrap().unwrap();
    let bb = h.kv.get("d.b").unwrap().unwrap();
    assert_eq!(a.update_index, bb.update_index, "one entry, one index");

    let keys = vec!["d.a".into(), "d".into(), "nope".into()];
    let Ok(Reply::Batch(results)) = h.run(1, Command::BatchRemove { keys }) else { panic!("batch remove") };
    assert_eq!(results, vec![Ok(()), Err(KvError::DirNotEmpty { key: "d".into() }), Ok(())]);

    let got = h.kv.batch_get(&["d.b".into(), "d.a".into(), "bad..key".into()]).unwrap();
    assert_eq!(got[0].as_ref().unwrap().as_ref().unwrap().value, b("3"));
    assert_eq!(got[1], Ok(None));
    assert!(matches!(got[2], Err(KvError::InvalidKey { .. })));

    let too_many = (0..h.kv.config().max_batch_items + 1).map(|i| (format!("k{i}"), b("v"))).collect();
    assert!(matches!(h.run(1, Command::BatchPut { items: too_many }), Err(KvError::TooManyItems { .. })));
    assert_eq!(h.kv.node_count(), 2, "only d and d.b remain");
}

#[test]
fn compare_and_set_covers_create_update_delete_and_mismatch() {
    let mut h = Harness::new();
    let cas = |key: &str, expected: Option<&str>, new: Option<&str>| Command::CompareAndSet {
        key: key.into(),
        expected: expected.map(b),
        new: new.map(b),
    };
    assert_eq!(h.run(1, cas("k", None, None)), Err(KvError::CasBothAbsent { key: "k".into() }));
    // expected absent = create only if absent
    assert_eq!(h.run(1, cas("k", None, Some("1"))), Ok(Reply::Done));
    assert_eq!(h.run(1, cas("k", None, Some("2"))), Err(KvError::CasMismatch { key: "k".into() }));
    assert_eq!(h.value("k"), Some(b("1")));
    // expected value = update if equal
    assert_eq!(h.run(1, cas("k", Some("9"), Some("2"))), Err(KvError::CasMismatch { key: "k".into() }));
    assert_eq!(h.run(1, cas("k", Some("1"), Some("2"))), Ok(Reply::Done));
    assert_eq!(h.value("k"), Some(b("2")));
    // new absent = delete if equal
    assert_eq!(h.run(1, cas("k", Some("1"), None)), Err(KvError::CasMismatch { key: "k".into() }));
    assert_eq!(h.run(1, cas("k", Some("2"), None)), Ok(Reply::Done));
    assert!(!h.exists("k"));
    assert_eq!(h.run(1, cas("k", Some("2"), None)), Err(KvError::CasMismatch { key: "k".into() }));
    h.run(1, mkdir("d")).unwrap();
    assert_eq!(h.run(1, cas("d", None, Some("1"))), Err(KvError::IsADir { key: "d".into() }));
    assert_eq!(h.run(1, cas("x.y", None, Some("1"))), Err(KvError::ParentMissing { key: "x.y".into() }));
}

#[test]
fn commands_round_trip_through_entry_bytes() {
    let mut h = Harness::new();
    let entry = tarn_kv::KvEntry {
        leader_time_nanos: 77,
        requests: vec![
            tarn_kv::Request { client_id: 3, seq: 1, first_unacked_seq: 1, command: mkdir("d") },
            tarn_kv::Request { client_id: 3, seq: 2, first_unacked_seq: 1, command: put("d.k", "v") },
        ],
    };
    let bytes = tarn_kv::encode_entry(&entry);
    let responses = h.kv.apply_entry_bytes(1, &bytes).unwrap();
    assert_eq!(responses, vec![Ok(Reply::Done), Ok(Reply::Done)]);
    assert_eq!(h.kv.get("d.k").unwrap().unwrap().update_time_nanos, 77);
    // A payload that does not decode is skipped on every node alike; the index advances.
    assert!(h.kv.apply_entry_bytes(2, &[0xff, 1, 2]).is_err());
    assert_eq!(h.kv.applied_index(), 2);
    assert_eq!(h.kv.node_count(), 2);
}
