//! What the driver needs from durable storage, and the storage worker that
//! gives every group group commit.
//!
//! The worker is one thread that owns the store outright (no lock): it takes
//! every request queued since its last flush, stages the writes of all
//! groups, calls one [`LogStore::flush`] (one write per dirty group, then in
//! sync mode the fdatasyncs back to back) and only then reports, per group,
//! what became durable (`LogPersisted`, `HardStatePersisted`). While a flush
//! runs, new writes queue up and form the next batch, so the batch size grows
//! with the load by itself.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;

use tarn_core::{Entry, GroupId, HardState, Index, LogId, Membership, NodeId, Recovered, Term};
use tokio::sync::mpsc;

use super::StorageCounters;
use crate::storage::{FlushReport, Storage, StorageConfig};
use crate::vfs::{StdVfs, Vfs};

/// A failed storage operation: the group that hit it stops (no blind retry:
/// after a failed sync the page cache may have dropped the data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("storage of group {group}: {reason}")]
pub struct StoreError {
    pub group: GroupId,
    pub reason: String,
}

/// One ordered write of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogWrite {
    /// Append; a stored suffix at or after the first entry's index is replaced.
    Append(Vec<Entry>),
    HardState(HardState),
}

/// What one flush made durable (or written, in async mode), per group.
#[derive(Debug, Default)]
pub struct Flushed {
    pub log: Vec<(GroupId, LogId)>,
    pub hard_states: Vec<(GroupId, HardState)>,
    pub failed: Vec<StoreError>,
}

/// Durable log + hard state of many groups, in the stage/flush shape of
/// [`Storage`]: `stage` encodes, `flush` does the I/O for everything staged.
pub trait LogStore: Send + 'static {
    /// Recovers (or creates empty) `group`. `initial` is the membership of a
    /// brand-new group.
    fn open_group(&mut self, group: GroupId, initial: &Membership) -> Result<Recovered, StoreError>;
    /// Stops using `group` (its data stays until the store can delete it).
    fn close_group(&mut self, group: GroupId);
    fn stage(&mut self, group: GroupId, write: &LogWrite) -> Result<(), StoreError>;
    fn flush(&mut self, out: &mut Flushed);
    /// Makes everything written durable (async mode's background sync).
    fn sync(&mut self, out: &mut Flushed);
    /// Entries `[from, to)`, at most `max_bytes` of payload (at least one).
    fn read(
        &mut self,
        group: GroupId,
        from: Index,
        to: Index,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StoreError>;
}

/// The production store: tarn's storage engine over real files.
pub struct FileStore {
    storage: Storage,
    report: FlushReport,
    /// Groups closed by `close_group` (the engine keeps them open).
    closed: std::collections::BTreeSet<GroupId>,
    max_tail_entries: usize,
}

impl FileStore {
    /// Opens the engine in `dir` (refusing a directory of another node or cluster).
    pub fn open(
        dir: impl Into<PathBuf>,
        cluster_id: u64,
        node_id: NodeId,
        write_mode: super::WriteMode,
        max_tail_entries: usize,
    ) -> Result<FileStore, StoreError> {
        let mut config = StorageConfig::new(dir, cluster_id.max(1), node_id);
        if let super::WriteMode::Async { sync_interval } = write_mode {
            config.write_mode = crate::storage::WriteMode::Async;
            config.async_sync_interval_ms = (sync_interval.as_millis() as u64).max(1);
        }
        let vfs: Arc<dyn Vfs> = Arc::new(StdVfs);
        let storage =
            Storage::open(vfs, config).map_err(|e| StoreError { group: 0, reason: e.to_string() })?;
        Ok(FileStore {
            storage,
            report: FlushReport::default(),
            closed: Default::default(),
            max_tail_entries,
        })
    }

    fn convert(&mut self, out: &mut Flushed) {
        for p in self.report.log.drain(..) {
            out.log.push((p.group, p.up_to));
        }
        out.hard_states.append(&mut self.report.hard_states);
        for (group, e) in self.report.failed.drain(..) {
            out.failed.push(StoreError { group, reason: e.to_string() });
        }
    }
}

/// Entries read per call while recovering a group's log.
const RECOVERY_READ_BYTES: u64 = 4 << 20;

impl LogStore for FileStore {
    fn open_group(&mut self, group: GroupId, initial: &Membership) -> Result<Recovered, StoreError> {
        let err = |e: crate::storage::StorageError| StoreError { group, reason: e.to_string() };
        if self.closed.remove(&group) {
            // Reopened after a close: the engine still has it open.
            return Err(StoreError {
                group,
                reason: "group was removed in this process; restart the node before adding it again".into(),
            });
        }
        let r = self.storage.open_group(group).map_err(err)?;
        if let Some((path, offset)) = &r.truncated_tail {
            tracing::warn!(group, path = %path.display(), offset, "recovery cut a torn tail");
        }
        // Walk the log once: term runs for the core's term index, and the
        // last `max_tail_entries` entries for its in-memory tail.
        let mut term_starts: Vec<LogId> = Vec::new();
        let mut tail: std::collections::VecDeque<Entry> = Default::default();
        let mut next = r.first_index.max(1);
        let mut buf = Vec::new();
        while next <= r.last_log_id.index {
            buf.clear();
            self.storage
                .entries(group, next, r.last_log_id.index + 1, RECOVERY_READ_BYTES, &mut buf)
                .map_err(err)?;
            if buf.is_empty() {
                return Err(StoreError {
                    group,
                    reason: format!("log read at index {next} returned nothing"),
                });
            }
            for e in buf.drain(..) {
                if term_starts.last().is_none_or(|l| l.term != e.term) {
                    term_starts.push(e.log_id());
                }
                next = e.index + 1;
                tail.push_back(e);
                if tail.len() > self.max_tail_entries {
                    tail.pop_front();
                }
            }
        }
        let membership = match (&r.membership, &r.snapshot) {
            (Some((_, m)), _) => m.clone(),
            (None, Some(s)) => s.membership.clone(),
            (None, None) => initial.clone(),
        };
        Ok(Recovered {
            hard_state: r.hard_state,
            snapshot: r.snapshot.clone(),
            membership,
            last_log_id: r.last_log_id,
            term_starts,
            tail: tail.into(),
            applied: 0,
            initial_membership: Some(initial.clone()),
        })
    }

    fn close_group(&mut self, group: GroupId) {
        self.closed.insert(group);
    }

    fn stage(&mut self, group: GroupId, write: &LogWrite) -> Result<(), StoreError> {
        let r = match write {
            LogWrite::Append(entries) => self.storage.stage(group, entries),
            LogWrite::HardState(hs) => self.storage.stage_hard_state(group, *hs),
        };
        r.map_err(|e| StoreError { group, reason: e.to_string() })
    }

    fn flush(&mut self, out: &mut Flushed) {
        self.storage.flush(&mut self.report);
        self.convert(out);
    }

    fn sync(&mut self, out: &mut Flushed) {
        self.storage.sync(&mut self.report);
        self.convert(out);
    }

    fn read(
        &mut self,
        group: GroupId,
        from: Index,
        to: Index,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::new();
        self.storage
            .entries(group, from, to, max_bytes as u64, &mut out)
            .map_err(|e| StoreError { group, reason: e.to_string() })?;
        Ok(out)
    }
}

/// An in-memory [`LogStore`] for tests and demos. Clones share the data, so
/// a clone handed to a new node simulates a restart with everything synced.
#[derive(Debug, Default, Clone)]
pub struct MemStore {
    groups: Arc<std::sync::Mutex<HashMap<GroupId, MemGroup>>>,
    staged: Vec<(GroupId, LogWrite)>,
}

#[derive(Debug, Default, Clone)]
struct MemGroup {
    hard_state: HardState,
    log: Vec<Entry>,
    membership: Membership,
}

impl MemStore {
    pub fn new() -> Self {
        MemStore::default()
    }
}

impl LogStore for MemStore {
    fn open_group(&mut self, group: GroupId, initial: &Membership) -> Result<Recovered, StoreError> {
        let mut groups = self.groups.lock().map_err(|_| StoreError { group, reason: "poisoned".into() })?;
        let g = groups
            .entry(group)
            .or_insert_with(|| MemGroup { membership: initial.clone(), ..Default::default() });
        Ok(Recovered::from_log(g.hard_state, g.membership.clone(), g.log.clone()))
    }

    fn close_group(&mut self, group: GroupId) {
        if let Ok(mut groups) = self.groups.lock() {
            groups.remove(&group);
        }
    }

    fn stage(&mut self, group: GroupId, write: &LogWrite) -> Result<(), StoreError> {
        self.staged.push((group, write.clone()));
        Ok(())
    }

    fn flush(&mut self, out: &mut Flushed) {
        let Ok(mut groups) = self.groups.lock() else { return };
        let mut last: HashMap<GroupId, LogId> = HashMap::new();
        let mut hs: HashMap<GroupId, HardState> = HashMap::new();
        for (group, write) in self.staged.drain(..) {
            let Some(g) = groups.get_mut(&group) else {
                out.failed.push(StoreError { group, reason: "group not open".into() });
                continue;
            };
            match write {
                LogWrite::HardState(h) => {
                    g.hard_state = h;
                    hs.insert(group, h);
                }
                LogWrite::Append(entries) => {
                    let Some(first) = entries.first() else { continue };
                    let keep = (first.index as usize).saturating_sub(1).min(g.log.len());
                    g.log.truncate(keep);
                    if (g.log.len() as u64) + 1 != first.index {
                        out.failed.push(StoreError {
                            group,
                            reason: format!("append at {} leaves a gap after {}", first.index, g.log.len()),
                        });
                        continue;
                    }
                    last.insert(group, entries.last().map(Entry::log_id).unwrap_or_default());
                    g.log.extend(entries);
                }
            }
        }
        out.log.extend(last);
        out.hard_states.extend(hs);
    }

    fn sync(&mut self, _out: &mut Flushed) {}

    fn read(
        &mut self,
        group: GroupId,
        from: Index,
        to: Index,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let groups = self.groups.lock().map_err(|_| StoreError { group, reason: "poisoned".into() })?;
        let g = groups.get(&group).ok_or_else(|| StoreError { group, reason: "group not open".into() })?;
        let mut out = Vec::new();
        let mut bytes = 0;
        for i in from..to {
            let Some(e) = g.log.get((i as usize).wrapping_sub(1)) else { break };
            bytes += e.size_bytes();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }
}

/// When the storage worker acknowledges writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Acknowledge after the fdatasync that makes the write durable.
    Sync,
    /// Acknowledge once written to the OS; sync in the background every `sync_interval`.
    Async { sync_interval: Duration },
}

/// What a group hears back from the storage worker.
#[derive(Debug)]
pub(crate) enum StorageDone {
    Persisted { log: Option<LogId>, hard_state: Option<(Term, Option<NodeId>)> },
    Fetched { from: Index, entries: Vec<Entry> },
    Failed(StoreError),
}

pub(crate) enum StorageRequest {
    Open {
        group: GroupId,
        initial: Membership,
        done: mpsc::UnboundedSender<StorageDone>,
        reply: tokio::sync::oneshot::Sender<Result<Recovered, StoreError>>,
    },
    Close {
        group: GroupId,
        reply: tokio::sync::oneshot::Sender<()>,
    },
    Write {
        group: GroupId,
        writes: Vec<LogWrite>,
    },
    Fetch {
        group: GroupId,
        from: Index,
        to: Index,
        max_bytes: usize,
    },
    /// Flush and sync everything and answer (shutdown).
    Flush {
        reply: tokio::sync::oneshot::Sender<()>,
    },
}

/// What one flush persisted for one group: log position and (term, vote).
type PersistedPair = (Option<LogId>, Option<(Term, Option<NodeId>)>);

/// Handle to the storage worker thread.
#[derive(Clone)]
pub(crate) struct StorageWorker {
    tx: std_mpsc::Sender<StorageRequest>,
}

impl StorageWorker {
    pub(crate) fn start(
        store: Box<dyn LogStore>,
        mode: WriteMode,
        counters: Arc<StorageCounters>,
    ) -> StorageWorker {
        let (tx, rx) = std_mpsc::channel();
        std::thread::Builder::new()
            .name("tarn-storage".into())
            .spawn(move || worker_loop(store, mode, rx, counters))
            .expect("spawning the storage thread (out of threads?)");
        StorageWorker { tx }
    }

    /// False when the worker has stopped.
    pub(crate) fn submit(&self, request: StorageRequest) -> bool {
        self.tx.send(request).is_ok()
    }
}

/// The most requests one flush takes: bounds the latency a burst adds.
const MAX_REQUESTS_PER_FLUSH: usize = 8192;

fn worker_loop(
    mut store: Box<dyn LogStore>,
    mode: WriteMode,
    rx: std_mpsc::Receiver<StorageRequest>,
    counters: Arc<StorageCounters>,
) {
    let mut groups: HashMap<GroupId, mpsc::UnboundedSender<StorageDone>> = HashMap::new();
    let mut flushed = Flushed::default();
    let mut unsynced = false;
    let mut batch = Vec::new();
    let deliver = |groups: &HashMap<GroupId, mpsc::UnboundedSender<StorageDone>>, flushed: &mut Flushed| {
        let mut per_group: HashMap<GroupId, PersistedPair> = HashMap::new();
        for (g, up_to) in flushed.log.drain(..) {
            per_group.entry(g).or_default().0 = Some(up_to);
        }
        for (g, hs) in flushed.hard_states.drain(..) {
            per_group.entry(g).or_default().1 = Some((hs.term, hs.vote));
        }
        for (g, (log, hard_state)) in per_group {
            if let Some(done) = groups.get(&g) {
                let _ = done.send(StorageDone::Persisted { log, hard_state });
            }
        }
        for e in flushed.failed.drain(..) {
            tracing::error!(error = %e, "storage failure");
            if let Some(done) = groups.get(&e.group) {
                let _ = done.send(StorageDone::Failed(e));
            }
        }
    };
    loop {
        let first = match mode {
            WriteMode::Async { sync_interval } if unsynced => match rx.recv_timeout(sync_interval) {
                Ok(r) => r,
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    store.sync(&mut flushed);
                    counters.syncs.fetch_add(1, Relaxed);
                    deliver(&groups, &mut flushed);
                    unsynced = false;
                    continue;
                }
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            },
            _ => match rx.recv() {
                Ok(r) => r,
                Err(_) => break,
            },
        };
        batch.push(first);
        while batch.len() < MAX_REQUESTS_PER_FLUSH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let mut staged = false;
        let mut flush_replies = Vec::new();
        for request in batch.drain(..) {
            match request {
                StorageRequest::Open { group, initial, done, reply } => {
                    let r = store.open_group(group, &initial);
                    if r.is_ok() {
                        groups.insert(group, done);
                    }
                    let _ = reply.send(r);
                }
                StorageRequest::Close { group, reply } => {
                    groups.remove(&group);
                    store.close_group(group);
                    let _ = reply.send(());
                }
                StorageRequest::Write { group, writes } => {
                    for w in &writes {
                        if let LogWrite::Append(entries) = w {
                            counters.entries_written.fetch_add(entries.len() as u64, Relaxed);
                        }
                        if let Err(e) = store.stage(group, w) {
                            flushed.failed.push(e);
                            break;
                        }
                        staged = true;
                    }
                }
                StorageRequest::Fetch { group, from, to, max_bytes } => {
                    let r = store.read(group, from, to, max_bytes);
                    if let Some(done) = groups.get(&group) {
                        let _ = done.send(match r {
                            Ok(entries) => StorageDone::Fetched { from, entries },
                            Err(e) => StorageDone::Failed(e),
                        });
                    }
                }
                StorageRequest::Flush { reply } => flush_replies.push(reply),
            }
        }
        if staged || !flush_replies.is_empty() {
            store.flush(&mut flushed);
            counters.flushes.fetch_add(1, Relaxed);
            if mode == WriteMode::Sync {
                counters.syncs.fetch_add(1, Relaxed);
            } else {
                unsynced = true;
            }
        }
        if !flush_replies.is_empty() && unsynced {
            store.sync(&mut flushed);
            counters.syncs.fetch_add(1, Relaxed);
            unsynced = false;
        }
        deliver(&groups, &mut flushed);
        for reply in flush_replies {
            let _ = reply.send(());
        }
    }
    if unsynced {
        store.sync(&mut flushed);
    }
}
