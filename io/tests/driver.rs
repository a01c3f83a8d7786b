//! The tokio driver with a user state machine: snapshots through the
//! embedding API (in-memory and file stores), restore at restart, and async
//! write mode's background fdatasync under constant load.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tarn_core::{Index, LogId, Membership};
use tarn_io::driver::{
    FileStore, GroupHandle, LogStore, MemStore, Node, NodeConfig, SnapshotInstaller, SnapshotProducer,
    SnapshotRestore, StateMachine, WriteMode,
};

/// A replicated sum with snapshot support: 16 bytes (sum, applied index).
#[derive(Default)]
struct Sum {
    sum: u64,
    applied: Index,
    snapshots_taken: u64,
    /// Holds the encoding of every snapshot until released (a slow one).
    gate: Option<Gate>,
}

/// A snapshot encoder's gate: it says when it started and waits to be let go.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<(bool, bool)>, Condvar)>);

impl Gate {
    /// On the encoding thread: started, then wait for `release`.
    fn pass(&self) {
        let (lock, cv) = &*self.0;
        let mut state = lock.lock().unwrap();
        state.0 = true;
        cv.notify_all();
        while !state.1 {
            state = cv.wait(state).unwrap();
        }
    }

    fn wait_started(&self) -> bool {
        let (lock, cv) = &*self.0;
        let state = lock.lock().unwrap();
        cv.wait_timeout_while(state, DEADLINE, |s| !s.0).unwrap().0 .0
    }

    fn release(&self) {
        let (lock, cv) = &*self.0;
        lock.lock().unwrap().1 = true;
        cv.notify_all();
    }
}

impl StateMachine for Sum {
    type Response = u64;

    fn apply(&mut self, index: Index, data: &Bytes) -> u64 {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(&data[..8]);
        self.sum += u64::from_le_bytes(raw);
        self.applied = index;
        self.sum
    }

    fn apply_noop(&mut self, index: Index) {
        self.applied = index;
    }

    fn applied_index(&self) -> Index {
        self.applied
    }

    fn snapshot(&mut self) -> Option<SnapshotProducer> {
        self.snapshots_taken += 1;
        let (sum, applied, gate) = (self.sum, self.applied, self.gate.clone());
        Some(Box::new(move |sink| {
            if let Some(gate) = gate {
                gate.pass();
            }
            // Two pieces, so a restore sees a split.
            sink(&sum.to_le_bytes())?;
            sink(&applied.to_le_bytes())
        }))
    }

    fn snapshot_restore(&mut self) -> Option<Box<dyn SnapshotRestore<Self>>> {
        Some(Box::new(SumRestore(Vec::new())))
    }
}

struct SumRestore(Vec<u8>);

impl SnapshotRestore<Sum> for SumRestore {
    fn push(&mut self, data: &[u8]) -> Result<(), String> {
        if self.0.len() + data.len() > 16 {
            return Err("a Sum snapshot is 16 bytes".into());
        }
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<SnapshotInstaller<Sum>, String> {
        let bytes: [u8; 16] = self.0.try_into().map_err(|_| "a Sum snapshot is 16 bytes".to_string())?;
        let sum = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        let applied = u64::from_le_bytes(bytes[8..].try_into().expect("8 bytes"));
        Ok(Box::new(move |s: &mut Sum| {
            s.sum = sum;
            s.applied = applied;
        }))
    }
}

const DEADLINE: Duration = Duration::from_secs(30);

fn config(write_mode: WriteMode) -> NodeConfig {
    let mut c = NodeConfig::new(1, 99);
    c.raft.election_timeout_min_ns = 50_000_000;
    c.raft.election_timeout_max_ns = 100_000_000;
    c.raft.heartbeat_interval_ns = 10_000_000;
    c.raft.snapshot_after_entries = 20;
    c.raft.log_keep_tail_entries = 5;
    c.write_mode = write_mode;
    c
}

async fn start(store: Box<dyn LogStore>, write_mode: WriteMode) -> (Node<Sum>, GroupHandle<Sum>) {
    let node = Node::start(config(write_mode), store, None, Default::default()).unwrap();
    let group = node.add_group(1, Membership::new_voters([1]), Sum::default()).await.unwrap();
    group.wait_for_leader(DEADLINE).await.unwrap();
    (node, group)
}

async fn add(group: &GroupHandle<Sum>, from: u64, to: u64) {
    for i in from..to {
        group.propose(Bytes::from(i.to_le_bytes().to_vec())).await.unwrap();
    }
}

async fn wait_snapshot_past(group: &GroupHandle<Sum>, index: Index) -> LogId {
    let mut rx = group.subscribe();
    let info = tokio::time::timeout(DEADLINE, rx.wait_for(|i| i.snapshot.index > index)).await;
    info.expect("a snapshot in time").map(|i| i.snapshot).expect("group runs")
}

fn triangle(n: u64) -> u64 {
    n * (n - 1) / 2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mem_store_snapshots_and_a_restart_restores_from_one() {
    let store = MemStore::new();
    let (node, group) = start(Box::new(store.clone()), WriteMode::Sync).await;
    // A snapshot every 20 entries: each batch of 20 brings a new one. (Waiting
    // per batch, not once after all 100: while one snapshot is being written
    // the driver folds further requests into one, so how many a burst of 100
    // yields depends on how fast the blocking thread runs.)
    let mut snap = LogId::default();
    for batch in 0..5 {
        add(&group, batch * 20, batch * 20 + 20).await;
        snap = wait_snapshot_past(&group, snap.index).await;
    }
    let (sum, taken) = group.read(false, |s| (s.sum, s.snapshots_taken)).await.unwrap();
    assert_eq!(sum, triangle(100));
    assert!(taken >= 5, "a snapshot every 20 entries: {taken}");
    assert!(snap.index >= 100, "the last snapshot covers the last batch: {snap:?}");
    node.shutdown().await;

    // The clone holds the snapshot: a fresh state machine is restored from
    // it (then the tail is replayed), not rebuilt from index 1.
    let (node, group) = start(Box::new(store), WriteMode::Sync).await;
    assert!(group.info().snapshot.index >= snap.index);
    let mut rx = group.subscribe();
    tokio::time::timeout(DEADLINE, rx.wait_for(|i| i.applied >= 100)).await.unwrap().unwrap();
    assert_eq!(group.read(true, |s| s.sum).await.unwrap(), triangle(100));
    add(&group, 100, 110).await;
    assert_eq!(group.read(true, |s| s.sum).await.unwrap(), triangle(110));
    node.shutdown().await;
}

/// A node shut down while its group's snapshot job runs waits for the job:
/// a job that outlived its group would commit into the storage a restarted
/// node already read (the bug fixed in e541d96; the simulator plants it as
/// `stopped-group-leaves-snapshot-jobs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_the_snapshot_job_its_group_started() {
    let store = MemStore::new();
    let node =
        Node::start(config(WriteMode::Sync), Box::new(store.clone()), None, Default::default()).unwrap();
    let gate = Gate::default();
    let sm = Sum { gate: Some(gate.clone()), ..Sum::default() };
    let group = node.add_group(1, Membership::new_voters([1]), sm).await.unwrap();
    group.wait_for_leader(DEADLINE).await.unwrap();
    add(&group, 0, 20).await;
    let held = gate.clone();
    let started = tokio::task::spawn_blocking(move || held.wait_started()).await.unwrap();
    assert!(started, "20 entries start a snapshot");
    assert_eq!(group.info().snapshot, LogId::default(), "the held snapshot is not recorded yet");
    let shutdown = tokio::spawn(async move { node.shutdown().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let returned_early = shutdown.is_finished();
    gate.release();
    assert!(!returned_early, "shutdown returned while its group's snapshot job still ran");
    tokio::time::timeout(DEADLINE, shutdown).await.expect("shutdown ends once the job is done").unwrap();

    // The job committed before shutdown returned: the next start holds it.
    let (node, group) = start(Box::new(store), WriteMode::Sync).await;
    assert!(group.info().snapshot.index >= 20, "restarted at {:?}", group.info().snapshot);
    assert_eq!(group.read(true, |s| s.sum).await.unwrap(), triangle(20));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_syncs_in_the_background_under_constant_load_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mode = WriteMode::Async { sync_interval: Duration::from_millis(5) };
    let open = || FileStore::open(dir.path(), 99, 1, mode, 1024).unwrap();
    let (node, group) = start(Box::new(open()), mode).await;
    let counters = node.storage_counters();
    let before = counters.syncs.load(std::sync::atomic::Ordering::Relaxed);
    // Proposals back to back: the worker never sits idle for a whole
    // interval, yet fdatasyncs keep being issued. Load continues until five
    // have been (how many fit in a fixed time depends on the machine's load),
    // within a generous deadline.
    let started = std::time::Instant::now();
    let mut n = 0;
    let mut syncs = 0;
    while syncs < 5 || n < 200 {
        assert!(
            started.elapsed() < DEADLINE,
            "{syncs} background syncs during {} ms of constant load",
            started.elapsed().as_millis()
        );
        add(&group, n, n + 50).await;
        n += 50;
        syncs = counters.syncs.load(std::sync::atomic::Ordering::Relaxed) - before;
    }
    wait_snapshot_past(&group, 0).await;
    node.shutdown().await;
    drop(node);

    let (node, group) = start(Box::new(open()), mode).await;
    let mut rx = group.subscribe();
    tokio::time::timeout(DEADLINE, rx.wait_for(|i| i.applied >= n)).await.unwrap().unwrap();
    assert_eq!(group.read(true, |s| s.sum).await.unwrap(), triangle(n));
    node.shutdown().await;
}

/// Compaction behind snapshots deletes old segments through the storage
/// worker's janitor: covered segments leave the log at once (renamed), and
/// the renamed files are unlinked off the storage thread soon after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_segments_are_deleted_by_the_janitor() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open_sized(dir.path(), 99, 1, WriteMode::Sync, 1024, 16 << 10).unwrap();
    let mut c = config(WriteMode::Sync);
    c.raft.max_entry_bytes = 4 << 10; // what 16 KiB segments can hold
    let node = Node::start(c, Box::new(store), None, Default::default()).unwrap();
    let group = node.add_group(1, Membership::new_voters([1]), Sum::default()).await.unwrap();
    group.wait_for_leader(DEADLINE).await.unwrap();
    let group_dir = dir.path().join("group-00000000000000000001");
    let files = |suffix: &str| {
        std::fs::read_dir(&group_dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(suffix))
            .count()
    };
    // About 170 of these entries fill a 16 KiB segment: 1,000 make several,
    // and snapshots every 20 entries cover all but the newest.
    add(&group, 0, 1_000).await;
    let snapshot = wait_snapshot_past(&group, 900).await;
    let started = std::time::Instant::now();
    while files(".seg.deleted") > 0 || files(".seg") > 2 {
        assert!(
            started.elapsed() < DEADLINE,
            "{} segments and {} renamed ones left behind snapshot {snapshot}",
            files(".seg"),
            files(".seg.deleted")
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(group.read(true, |s| s.sum).await.unwrap(), triangle(1_000));
    node.shutdown().await;
}

/// Recovery hands the core an in-memory tail bounded in bytes as well as in
/// entries, so a log of large (batched) entries is not loaded whole.
#[test]
fn recovery_bounds_the_tail_in_bytes() {
    use tarn_core::{Entry, EntryPayload};
    use tarn_io::driver::{Flushed, LogWrite};
    let dir = tempfile::tempdir().unwrap();
    let initial = Membership { voters: [1].into(), ..Default::default() };
    {
        let mut store = FileStore::open(dir.path(), 7, 1, WriteMode::Sync, 1024).unwrap();
        store.open_group(1, &initial).unwrap();
        let entries: Vec<Entry> = (1..=40)
            .map(|i| Entry {
                term: 1,
                index: i,
                payload: EntryPayload::Normal(Bytes::from(vec![i as u8; 4000])),
            })
            .collect();
        store.stage(1, &LogWrite::Append(entries)).unwrap();
        let mut out = Flushed::default();
        store.flush(&mut out);
        assert!(out.failed.is_empty(), "{:?}", out.failed);
        assert_eq!(out.log.last(), Some(&(1, LogId::new(1, 40))));
    }
    let whole =
        FileStore::open(dir.path(), 7, 1, WriteMode::Sync, 1024).unwrap().open_group(1, &initial).unwrap();
    assert_eq!(whole.tail.len(), 40, "within both bounds everything is kept");
    let mut store =
        FileStore::open(dir.path(), 7, 1, WriteMode::Sync, 1024).unwrap().with_max_tail_bytes(10_000);
    let r = store.open_group(1, &initial).unwrap();
    assert_eq!(r.last_log_id, LogId::new(1, 40));
    assert_eq!(r.tail.len(), 2, "4 KiB entries under a 10 KB bound");
    assert_eq!(r.tail.last().map(|e| e.index), Some(40), "the tail is the newest entries");
}
