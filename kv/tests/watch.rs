//! Watches: key and subtree, resume from an index, compaction, slow watchers cut off.

mod support;

use support::{mkdir, put, remove, Harness};
use tarn_kv::{CutOffReason, EventKind, KvConfig, WatchError, WatchPoll, WatchRegisterError};

fn events(h: &mut Harness, id: u64) -> Vec<(u64, String, EventKind)> {
    match h.kv.poll_watch(id, usize::MAX) {
        WatchPoll::Events(events) => {
            events.into_iter().map(|e| (e.index, e.key.to_string(), e.kind)).collect()
        }
        other => panic!("expected events, got {other:?}"),
    }
}

#[test]
fn key_watch_sees_the_key_subtree_watch_sees_everything_below() {
    let mut h = Harness::new();
    h.run(1, mkdir("a")).unwrap(); // 1
    let key_watch = h.kv.watch("a", false, None).unwrap();
    let tree_watch = h.kv.watch("a", true, None).unwrap();
    let other = h.kv.watch("ab", true, None).unwrap();
    h.run(1, put("a.x", "1")).unwrap(); // 2
    h.run(1, put("ab", "1")).unwrap(); // 3
    h.run(1, remove("a.x")).unwrap(); // 4
    h.run(1, remove("a")).unwrap(); // 5
    assert_eq!(events(&mut h, key_watch), vec![(5, "a".into(), EventKind::Removed)]);
    assert_eq!(
        events(&mut h, tree_watch),
        vec![
            (2, "a.x".into(), EventKind::Put { value: support::b("1") }),
            (4, "a.x".into(), EventKind::Removed),
            (5, "a".into(), EventKind::Removed),
        ]
    );
    assert_eq!(events(&mut h, other), vec![(3, "ab".into(), EventKind::Put { value: support::b("1") })]);
    assert_eq!(h.kv.ready_watches(), Vec::<u64>::new());
}

#[test]
fn resume_from_an_index_replays_everything_after_it_in_order() {
    let mut h = Harness::new();
    for i in 0..10 {
        h.run(1, put(&format!("k{i}"), "v")).unwrap(); // indexes 1..=10
    }
    let id = h.kv.watch("", true, Some(6)).unwrap();
    let got: Vec<u64> = events(&mut h, id).into_iter().map(|(index, _, _)| index).collect();
    assert_eq!(got, vec![7, 8, 9, 10]);
    h.run(1, put("k0", "w")).unwrap();
    let got: Vec<u64> = events(&mut h, id).into_iter().map(|(index, _, _)| index).collect();
    assert_eq!(got, vec![11]);
}

#[test]
fn polls_never_split_an_index() {
    let mut h = Harness::new();
    let id = h.kv.watch("", true, None).unwrap();
    let items = (0..5).map(|i| (format!("k{i}"), support::b("v"))).collect();
    h.run(1, tarn_kv::Command::BatchPut { items }).unwrap(); // index 1, five events
    h.run(1, put("z", "v")).unwrap(); // index 2
    let WatchPoll::Events(first) = h.kv.poll_watch(id, 2) else { panic!() };
    assert_eq!(first.len(), 5, "the whole of index 1 even though max is 2");
    let WatchPoll::Events(second) = h.kv.poll_watch(id, 2) else { panic!() };
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].index, 2);
}

#[test]
fn resuming_before_the_kept_history_says_compacted() {
    let config = KvConfig { watch_history_max_events: 5, ..support::config() };
    let mut h = Harness::with_config(config);
    for i in 0..10 {
        h.run(1, put(&format!("k{i}"), "v")).unwrap(); // 1..=10; history keeps 6..=10
    }
    assert_eq!(h.kv.watch_history_floor(), 5);
    assert_eq!(
        h.kv.watch("", true, Some(4)),
        Err(WatchRegisterError::Watch(WatchError::Compacted { requested: 4, oldest_kept: 5 }))
    );
    let id = h.kv.watch("", true, Some(5)).expect("everything after 5 is kept");
    assert_eq!(events(&mut h, id).len(), 5);
}

#[test]
fn history_is_bounded_by_value_bytes_too() {
    let config = KvConfig { watch_history_max_bytes: 10, ..support::config() };
    let mut h = Harness::with_config(config);
    h.run(1, put("a", "123456")).unwrap(); // 1
    h.run(1, put("b", "123456")).unwrap(); // 2: 12 bytes > 10, index 1 evicted
    assert_eq!(h.kv.watch_history_floor(), 1);
    assert_eq!(h.kv.watch_history_len(), 1);
}

#[test]
fn a_slow_watcher_falls_back_to_the_history_and_loses_nothing() {
    let config = KvConfig { watch_queue_max_events: 3, ..support::config() };
    let mut h = Harness::with_config(config);
    let id = h.kv.watch("", true, None).unwrap();
    h.run(1, put("a", "1")).unwrap(); // 1
    assert_eq!(events(&mut h, id).len(), 1);
    for i in 0..10 {
        h.run(1, put(&format!("k{i}"), "v")).unwrap(); // 2..=11: the queue (3) overflows
    }
    assert_eq!(h.kv.ready_watches(), vec![id]);
    let WatchPoll::Events(first) = h.kv.poll_watch(id, 4) else { panic!() };
    let WatchPoll::Events(rest) = h.kv.poll_watch(id, 100) else { panic!() };
    let indexes: Vec<u64> = first.iter().chain(&rest).map(|e| e.index).collect();
    assert_eq!(indexes, (2..=11).collect::<Vec<_>>(), "every event, in order, from the shared history");
    assert_eq!(first.len(), 4);
    // Caught up: live again.
    h.run(1, put("z", "v")).unwrap();
    assert_eq!(events(&mut h, id), vec![(12, "z".into(), EventKind::Put { value: support::b("v") })]);
}

#[test]
fn a_watcher_the_history_leaves_behind_is_cut_off_with_a_reason() {
    let config = KvConfig { watch_queue_max_events: 3, watch_history_max_events: 5, ..support::config() };
    let mut h = Harness::with_config(config);
    let id = h.kv.watch("", true, None).unwrap();
    h.run(1, put("a", "1")).unwrap(); // 1
    assert_eq!(events(&mut h, id).len(), 1);
    for i in 0..8 {
        h.run(1, put(&format!("k{i}"), "v")).unwrap(); // 2..=9; history keeps 5..=9
    }
    assert_eq!(
        h.kv.poll_watch(id, 10),
        WatchPoll::CutOff(CutOffReason::QueueFull { max_events: 3, last_delivered_index: 1 })
    );
    assert_eq!(h.kv.poll_watch(id, 10), WatchPoll::Unknown, "a cut-off watcher is gone");
    assert_eq!(h.kv.watcher_count(), 0);
    assert_eq!(
        h.kv.watch("", true, Some(1)),
        Err(WatchRegisterError::Watch(WatchError::Compacted { requested: 1, oldest_kept: 4 }))
    );
    // After re-reading, it watches from the read's index and misses nothing after it.
    let read_index = h.kv.applied_index();
    let again = h.kv.watch("k7", true, Some(read_index - 1)).unwrap();
    assert_eq!(events(&mut h, again), vec![(9, "k7".into(), EventKind::Put { value: support::b("v") })]);
}

#[test]
fn watch_bounds_and_keys_are_checked() {
    let config = KvConfig { max_watchers: 1, ..support::config() };
    let mut h = Harness::with_config(config);
    assert!(matches!(h.kv.watch("a..b", false, None), Err(WatchRegisterError::Key(_))));
    let id = h.kv.watch("a", false, None).unwrap();
    assert_eq!(
        h.kv.watch("b", false, None),
        Err(WatchRegisterError::Watch(WatchError::TooManyWatchers { max: 1 }))
    );
    assert!(h.kv.unwatch(id));
    assert!(!h.kv.unwatch(id));
    h.kv.watch("b", false, None).unwrap();
}

#[test]
fn installing_a_snapshot_cuts_watchers_off() {
    let mut h = Harness::new();
    let id = h.kv.watch("", true, None).unwrap();
    h.run(1, put("a", "1")).unwrap();
    let mut source = Harness::new();
    for i in 0..5 {
        source.run(1, put(&format!("s{i}"), "v")).unwrap();
    }
    let chunks: Vec<_> = source.kv.snapshot_chunks(1024).collect();
    let decoded = tarn_kv::decode_snapshot(support::config(), chunks.iter().map(|c| &c[..])).unwrap();
    h.kv.install(decoded);
    assert_eq!(
        h.kv.poll_watch(id, 10),
        WatchPoll::CutOff(CutOffReason::SnapshotInstalled { snapshot_index: 5 })
    );
    assert_eq!(h.kv.watch_history_floor(), 5);
    assert!(matches!(
        h.kv.watch("", true, Some(3)),
        Err(WatchRegisterError::Watch(WatchError::Compacted { .. }))
    ));
    assert_eq!(h.kv.digest(), source.kv.digest());
}
