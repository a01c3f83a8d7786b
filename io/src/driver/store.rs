//! What the driver needs from durable storage, and the storage worker that
//! gives every group group commit: one thread drains the writes of every
//! group, writes them, makes them durable with one sync, and only then
//! reports completions back to each group (`LogPersisted`,
//! `HardStatePersisted`).

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;

use tarn_core::{Entry, GroupId, HardState, Index, LogId, Membership, NodeId, Recovered, Term};
use tokio::sync::mpsc;

use super::StorageCounters;

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

/// Durable log + hard state of many groups. Writes may be buffered until
/// [`LogStore::sync`]; writes of one group are applied in order.
pub trait LogStore: Send + 'static {
    /// Recovers (or creates empty) the state of `group`. `initial` is the
    /// membership of a brand-new group.
    fn open_group(&mut self, group: GroupId, initial: &Membership) -> Result<Recovered, StoreError>;
    /// Forgets `group` and its data.
    fn remove_group(&mut self, group: GroupId) -> Result<(), StoreError>;
    fn write(&mut self, group: GroupId, write: &LogWrite) -> Result<(), StoreError>;
    /// Makes every write so far durable.
    fn sync(&mut self) -> Result<(), StoreError>;
    /// Entries `[from, to)`, at most `max_bytes` of payload (at least one).
    fn read(
        &mut self,
        group: GroupId,
        from: Index,
        to: Index,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StoreError>;
}

/// An in-memory [`LogStore`] for tests and demos: "durable" for the life of
/// the value (share it with `Arc<Mutex<_>>` semantics through clones to
/// simulate a restart).
#[derive(Debug, Default, Clone)]
pub struct MemStore {
    groups: Arc<std::sync::Mutex<HashMap<GroupId, MemGroup>>>,
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

    fn remove_group(&mut self, group: GroupId) -> Result<(), StoreError> {
        let mut groups = self.groups.lock().map_err(|_| StoreError { group, reason: "poisoned".into() })?;
        groups.remove(&group);
        Ok(())
    }

    fn write(&mut self, group: GroupId, write: &LogWrite) -> Result<(), StoreError> {
        let mut groups = self.groups.lock().map_err(|_| StoreError { group, reason: "poisoned".into() })?;
        let g =
            groups.get_mut(&group).ok_or_else(|| StoreError { group, reason: "group not open".into() })?;
        match write {
            LogWrite::HardState(hs) => g.hard_state = *hs,
            LogWrite::Append(entries) => {
                let Some(first) = entries.first() else { return Ok(()) };
                let keep = (first.index as usize).saturating_sub(1).min(g.log.len());
                g.log.truncate(keep);
                if (g.log.len() as u64) + 1 != first.index {
                    return Err(StoreError {
                        group,
                        reason: format!("append at {} leaves a gap after {}", first.index, g.log.len()),
                    });
                }
                g.log.extend(entries.iter().cloned());
            }
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

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
    /// Acknowledge after the sync that makes the write durable.
    Sync,
    /// Acknowledge once written; sync in the background every `interval`.
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
        reply: tokio::sync::oneshot::Sender<Result<Recovered, StoreError>>,
    },
    Remove {
        group: GroupId,
        reply: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
    },
    Write {
        group: GroupId,
        writes: Vec<LogWrite>,
        done: mpsc::UnboundedSender<StorageDone>,
    },
    Fetch {
        group: GroupId,
        from: Index,
        to: Index,
        max_bytes: usize,
        done: mpsc::UnboundedSender<StorageDone>,
    },
    /// Sync everything and answer (shutdown).
    Flush {
        reply: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
    },
}

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

/// The most requests one flush takes before writing: bounds the latency a
/// burst adds to the first write in it.
const MAX_REQUESTS_PER_FLUSH: usize = 4096;

fn worker_loop(
    mut store: Box<dyn LogStore>,
    mode: WriteMode,
    rx: std_mpsc::Receiver<StorageRequest>,
    counters: Arc<StorageCounters>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut dirty = false;
    let mut failed: BTreeMap<GroupId, StoreError> = BTreeMap::new();
    loop {
        let first = match mode {
            WriteMode::Async { sync_interval } if dirty => match rx.recv_timeout(sync_interval) {
                Ok(r) => r,
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    if let Err(e) = store.sync() {
                        tracing::error!(error = %e, "background sync failed");
                    }
                    counters.syncs.fetch_add(1, Relaxed);
                    dirty = false;
                    continue;
                }
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            },
            _ => match rx.recv() {
                Ok(r) => r,
                Err(_) => break,
            },
        };
        let mut batch = vec![first];
        while batch.len() < MAX_REQUESTS_PER_FLUSH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        // 1. Perform every write of the batch, in order.
        let mut completions: Vec<(mpsc::UnboundedSender<StorageDone>, StorageDone)> = Vec::new();
        let mut wrote = false;
        let mut flushes = Vec::new();
        for request in batch {
            match request {
                StorageRequest::Open { group, initial, reply } => {
                    failed.remove(&group);
                    let _ = reply.send(store.open_group(group, &initial));
                }
                StorageRequest::Remove { group, reply } => {
                    let _ = reply.send(store.remove_group(group));
                }
                StorageRequest::Write { group, writes, done } => {
                    if let Some(e) = failed.get(&group) {
                        completions.push((done, StorageDone::Failed(e.clone())));
                        continue;
                    }
                    let mut log = None;
                    let mut hard_state = None;
                    let mut result = Ok(());
                    for w in &writes {
                        result = store.write(group, w);
                        if result.is_err() {
                            break;
                        }
                        match w {
                            LogWrite::Append(entries) => {
                                counters.entries_written.fetch_add(entries.len() as u64, Relaxed);
                                log = entries.last().map(Entry::log_id).or(log);
                            }
                            LogWrite::HardState(hs) => hard_state = Some((hs.term, hs.vote)),
                        }
                    }
                    wrote = true;
                    match result {
                        Ok(()) => completions.push((done, StorageDone::Persisted { log, hard_state })),
                        Err(e) => {
                            failed.insert(group, e.clone());
                            completions.push((done, StorageDone::Failed(e)));
                        }
                    }
                }
                StorageRequest::Fetch { group, from, to, max_bytes, done } => {
                    let r = store.read(group, from, to, max_bytes);
                    completions.push((
                        done,
                        match r {
                            Ok(entries) => StorageDone::Fetched { from, entries },
                            Err(e) => StorageDone::Failed(e),
                        },
                    ));
                }
                StorageRequest::Flush { reply } => flushes.push(reply),
            }
        }
        // 2. One sync for all of them (sync mode), then acknowledge.
        let need_sync = (wrote && mode == WriteMode::Sync) || (!flushes.is_empty() && (dirty || wrote));
        if need_sync {
            counters.syncs.fetch_add(1, Relaxed);
            if let Err(e) = store.sync() {
                tracing::error!(error = %e, "sync failed; failing every write of this flush");
                for (done, c) in completions.iter_mut() {
                    if matches!(c, StorageDone::Persisted { .. }) {
                        *c = StorageDone::Failed(e.clone());
                    }
                    let _ = done;
                }
                for reply in flushes.drain(..) {
                    let _ = reply.send(Err(e.clone()));
                }
            }
            dirty = false;
        } else if wrote {
            dirty = true;
        }
        for reply in flushes {
            let _ = reply.send(Ok(()));
        }
        counters.flushes.fetch_add(1, Relaxed);
        for (done, c) in completions {
            let _ = done.send(c);
        }
    }
    if dirty {
        let _ = store.sync();
    }
}
