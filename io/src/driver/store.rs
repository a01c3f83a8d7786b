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

use bytes::Bytes;
use tarn_core::{Entry, GroupId, HardState, Index, LogId, Membership, NodeId, Recovered, SnapshotMeta, Term};
use tokio::sync::mpsc;

use super::sync_pacer::SyncPacer;
use super::StorageCounters;
use crate::storage::{
    DeletionJob, FlushReport, SnapshotFile, SnapshotReader, SnapshotWriter, Storage, StorageConfig,
    StorageError, SyncJob,
};
use crate::vfs::{PooledVfs, StdVfs, Vfs};

/// A failed storage operation: the group that hit it stops (no blind retry:
/// after a failed sync the page cache may have dropped the data).
#[derive(Debug, Clone, thiserror::Error)]
#[error("storage of group {group}: {kind}")]
pub struct StoreError {
    /// The group whose storage failed.
    pub group: GroupId,
    /// What failed.
    pub kind: StoreErrorKind,
}

impl StoreError {
    /// The storage engine's error `e`, for `group`.
    pub fn engine(group: GroupId, e: StorageError) -> StoreError {
        StoreError { group, kind: StoreErrorKind::Engine(Arc::new(e)) }
    }
}

/// Why a [`LogStore`] call failed. An engine error says itself what to do;
/// the others are requests that contradict what the store holds (a driver
/// or protocol bug, never a disk fault).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The storage engine failed or refused (I/O error, corruption, a
    /// request that contradicts the log). Shared: one failed flush stops
    /// every group it carried.
    #[error(transparent)]
    Engine(Arc<StorageError>),
    /// The group was never opened on this store.
    #[error("the group is not open in this store; open it first")]
    NotOpen,
    /// A thread panicked while holding the in-memory store's lock.
    #[error("the in-memory store's lock is poisoned (a thread panicked holding it); restart the node")]
    Poisoned,
    /// Recovery read nothing where the log says entries are.
    #[error("log read at index {index} returned nothing (the log's end says entries are there)")]
    EmptyRead {
        /// The first index asked for.
        index: Index,
    },
    /// An append would replace entries covered by the snapshot.
    #[error("append at {at} overwrites the snapshot at {snapshot}")]
    AppendOverSnapshot {
        /// The first appended index.
        at: Index,
        /// The snapshot's last entry.
        snapshot: LogId,
    },
    /// An append does not start right after the log's last entry.
    #[error("append at {at} leaves a gap after {last}")]
    AppendGap {
        /// The first appended index.
        at: Index,
        /// The log's last entry.
        last: LogId,
    },
    /// A staged snapshot of another kind of store (a file given to the
    /// in-memory store).
    #[error("{path} is not a snapshot of this store")]
    ForeignSnapshot {
        /// The staged file.
        path: PathBuf,
    },
    /// A snapshot older than the stored one.
    #[error("snapshot at {snapshot} is older than the stored one")]
    OlderSnapshot {
        /// The refused snapshot's last entry.
        snapshot: LogId,
    },
    /// A leader's snapshot chunk that does not continue the staged bytes.
    #[error("snapshot chunk {snapshot}@{offset} does not follow {staged}@{staged_bytes}")]
    ChunkOutOfOrder {
        /// The chunk's snapshot.
        snapshot: LogId,
        /// The chunk's byte offset.
        offset: u64,
        /// The snapshot being staged.
        staged: LogId,
        /// How many of its bytes are staged.
        staged_bytes: u64,
    },
    /// An install of a snapshot whose chunks were not all staged.
    #[error("no complete staged snapshot {snapshot} to install")]
    NoStagedSnapshot {
        /// The snapshot to install.
        snapshot: LogId,
    },
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

/// A snapshot being written. `Send`: the driver fills and finishes it on a
/// blocking thread, never on the storage thread or a group's task.
pub trait SnapshotSink: Send {
    /// Appends the next bytes of the snapshot's data.
    fn write(&mut self, data: &[u8]) -> Result<(), StoreError>;
    /// Bytes written so far.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Makes it durable (not yet the group's current snapshot: hand the
    /// result to [`LogStore::commit_snapshot`]).
    fn finish(self: Box<Self>, meta: &SnapshotMeta) -> Result<StagedSnapshot, StoreError>;
}

/// Reads a stored snapshot's data in order (restore at start-up, install).
/// The final chunk comes only after the whole snapshot verified.
pub trait SnapshotSource: Send {
    fn meta(&self) -> &SnapshotMeta;
    /// The next chunk of at most `max_bytes` and whether it is the last;
    /// `None` when everything was read.
    fn next_chunk(&mut self, max_bytes: usize) -> Result<Option<(Vec<u8>, bool)>, StoreError>;
}

/// A durable snapshot waiting for [`LogStore::commit_snapshot`].
#[derive(Debug)]
pub struct StagedSnapshot {
    group: GroupId,
    inner: Staged,
}

#[derive(Debug)]
enum Staged {
    File(SnapshotFile),
    Memory(SnapshotMeta, Bytes),
}

impl StagedSnapshot {
    pub fn meta(&self) -> &SnapshotMeta {
        match &self.inner {
            Staged::File(f) => &f.meta,
            Staged::Memory(meta, _) => meta,
        }
    }

    /// Reads it back (an installing follower decodes what it staged).
    pub fn open(&self) -> Result<Box<dyn SnapshotSource>, StoreError> {
        match &self.inner {
            Staged::File(f) => {
                let reader =
                    SnapshotReader::open(&StdVfs, &f.path).map_err(|e| StoreError::engine(self.group, e))?;
                Ok(Box::new(FileSource { group: self.group, reader }))
            }
            Staged::Memory(meta, data) => Ok(Box::new(MemSource::new(meta.clone(), data.clone()))),
        }
    }
}

struct FileSink {
    group: GroupId,
    writer: SnapshotWriter<'static>,
}

impl SnapshotSink for FileSink {
    fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        self.writer.write_chunk(data).map_err(|e| StoreError::engine(self.group, e))
    }

    fn len(&self) -> u64 {
        self.writer.len()
    }

    fn finish(self: Box<Self>, meta: &SnapshotMeta) -> Result<StagedSnapshot, StoreError> {
        let group = self.group;
        let file = self.writer.finish(meta).map_err(|e| StoreError::engine(group, e))?;
        Ok(StagedSnapshot { group, inner: Staged::File(file) })
    }
}

struct FileSource {
    group: GroupId,
    reader: SnapshotReader,
}

impl SnapshotSource for FileSource {
    fn meta(&self) -> &SnapshotMeta {
        self.reader.meta()
    }

    fn next_chunk(&mut self, max_bytes: usize) -> Result<Option<(Vec<u8>, bool)>, StoreError> {
        self.reader.next_chunk(max_bytes).map_err(|e| StoreError::engine(self.group, e))
    }
}

struct MemSink {
    group: GroupId,
    data: Vec<u8>,
}

impl SnapshotSink for MemSink {
    fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        self.data.extend_from_slice(data);
        Ok(())
    }

    fn len(&self) -> u64 {
        self.data.len() as u64
    }

    fn finish(self: Box<Self>, meta: &SnapshotMeta) -> Result<StagedSnapshot, StoreError> {
        Ok(StagedSnapshot { group: self.group, inner: Staged::Memory(meta.clone(), Bytes::from(self.data)) })
    }
}

struct MemSource {
    meta: SnapshotMeta,
    data: Bytes,
    next: usize,
    done: bool,
}

impl MemSource {
    fn new(meta: SnapshotMeta, data: Bytes) -> MemSource {
        MemSource { meta, data, next: 0, done: false }
    }
}

impl SnapshotSource for MemSource {
    fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    fn next_chunk(&mut self, max_bytes: usize) -> Result<Option<(Vec<u8>, bool)>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let end = (self.next + max_bytes.max(1)).min(self.data.len());
        let chunk = self.data[self.next..end].to_vec();
        self.next = end;
        self.done = end == self.data.len();
        Ok(Some((chunk, self.done)))
    }
}

/// Durable log + hard state of many groups, in the stage/flush shape of
/// [`Storage`]: `stage` encodes, `flush` does the I/O for everything staged.
pub trait LogStore: Send + 'static {
    /// Recovers (or creates empty) `group`. `initial` is the membership of a
    /// brand-new group.
    fn open_group(&mut self, group: GroupId, initial: &Membership) -> Result<Recovered, StoreError>;
    /// Stops using `group` and deletes its data (log, hard state, snapshots)
    /// durably: adding it again starts an empty group.
    fn close_group(&mut self, group: GroupId) -> Result<(), StoreError>;
    fn stage(&mut self, group: GroupId, write: &LogWrite) -> Result<(), StoreError>;
    /// Does the I/O for everything staged and reports all of it persisted.
    fn flush(&mut self, out: &mut Flushed);
    /// Like [`LogStore::flush`], but may report a flush's entries only at
    /// the next one (the engine's pipelined sync watermark, see
    /// `Storage::flush_pipelined`); what the worker calls. The default is
    /// [`LogStore::flush`].
    fn flush_pipelined(&mut self, out: &mut Flushed) {
        self.flush(out)
    }
    /// Whether [`LogStore::flush_pipelined`] has work with nothing new
    /// staged: the last one synced entries it could not report yet. The
    /// worker then flushes again at once, with whatever requests arrived
    /// meanwhile, or with none.
    fn needs_flush(&self) -> bool {
        false
    }
    /// Makes everything written durable (async mode's background sync).
    fn sync(&mut self, out: &mut Flushed);
    /// Whether a sync has work although nothing was written since the last
    /// one (async mode: the watermark trails the background syncs by one).
    fn needs_sync(&self) -> bool {
        false
    }
    /// Async mode: takes the fdatasyncs of everything written so far as a
    /// job the worker runs on another thread while appends go on; `None`
    /// (the default) makes the worker call [`LogStore::sync`] in line.
    fn begin_sync(&mut self, out: &mut Flushed) -> Option<SyncJob> {
        let _ = out;
        None
    }
    /// Records what a [`LogStore::begin_sync`] job made durable.
    fn finish_sync(&mut self, job: SyncJob, results: Vec<std::io::Result<()>>, out: &mut Flushed) {
        let _ = (job, results, out);
    }
    /// The largest entry payload this store accepts, if it has a bound.
    /// `Node::start` refuses a core `max_entry_bytes` above it: an entry the
    /// leader accepted but storage refuses would stop the group on every node.
    fn max_entry_bytes(&self) -> Option<usize> {
        None
    }
    /// Entries `[from, to)`, at most `max_bytes` of payload (at least one).
    fn read(
        &mut self,
        group: GroupId,
        from: Index,
        to: Index,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StoreError>;
    /// Starts a snapshot of `group` covering the log up to `snapshot`.
    fn snapshot_writer(
        &mut self,
        group: GroupId,
        snapshot: LogId,
    ) -> Result<Box<dyn SnapshotSink>, StoreError>;
    /// Makes a finished snapshot the group's current one; if it is past the
    /// log's end or disagrees with it, the log is discarded.
    fn commit_snapshot(&mut self, group: GroupId, staged: StagedSnapshot) -> Result<(), StoreError>;
    /// Entries up to `up_to` are covered by a durable snapshot: they may go.
    fn compact(&mut self, group: GroupId, up_to: LogId) -> Result<(), StoreError>;
    /// Files compaction left to delete, as a job the worker runs on its
    /// janitor thread (see `Storage::take_deletions`).
    fn take_deletions(&mut self) -> Option<DeletionJob> {
        None
    }
    /// The chunk at `offset` of the group's current snapshot `snapshot` and
    /// whether it is the last; `None` if `snapshot` is not current any more.
    fn read_snapshot_chunk(
        &mut self,
        group: GroupId,
        snapshot: LogId,
        offset: u64,
        max_bytes: usize,
    ) -> Result<Option<(Bytes, bool)>, StoreError>;
    /// A reader of the group's current snapshot, if it has one.
    fn snapshot_source(&mut self, group: GroupId) -> Result<Option<Box<dyn SnapshotSource>>, StoreError>;
}

/// The production store: tarn's storage engine over real files.
pub struct FileStore {
    storage: Storage,
    report: FlushReport,
    max_tail_entries: usize,
    /// Bytes of entries recovery hands the core as its in-memory tail
    /// (`Config::max_log_tail_bytes`): a log of large batched entries would
    /// otherwise be loaded whole at start-up.
    max_tail_bytes: usize,
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
        let segment_size_bytes = StorageConfig::new("", 1, 1).segment_size_bytes;
        FileStore::open_sized(dir, cluster_id, node_id, write_mode, max_tail_entries, segment_size_bytes)
    }

    /// Like [`FileStore::open`] with log segments of `segment_size_bytes`
    /// (compaction deletes whole segments, so small ones compact finely;
    /// entries are bounded by half a segment).
    pub fn open_sized(
        dir: impl Into<PathBuf>,
        cluster_id: u64,
        node_id: NodeId,
        write_mode: super::WriteMode,
        max_tail_entries: usize,
        segment_size_bytes: u64,
    ) -> Result<FileStore, StoreError> {
        let mut config = StorageConfig::new(dir, cluster_id.max(1), node_id);
        config.segment_size_bytes = segment_size_bytes;
        let half_segment = u32::try_from(segment_size_bytes / 2).unwrap_or(u32::MAX);
        config.max_entry_size_bytes = config.max_entry_size_bytes.min(half_segment);
        if let super::WriteMode::Async { sync_interval } = write_mode {
            config.write_mode = crate::storage::WriteMode::Async;
            config.async_sync_interval_ms =
                u64::try_from(sync_interval.as_millis()).unwrap_or(u64::MAX).max(1);
        }
        // Every engine in the process shares one descriptor pool, so that many
        // idle groups (issue 17) do not run out of open files.
        let vfs: Arc<dyn Vfs> = Arc::new(PooledVfs::shared());
        let storage = Storage::open(vfs, config).map_err(|e| StoreError::engine(0, e))?;
        let max_tail_bytes = tarn_core::Config::new(1, 0).max_log_tail_bytes;
        Ok(FileStore { storage, report: FlushReport::default(), max_tail_entries, max_tail_bytes })
    }

    /// Bounds the recovered in-memory tail by bytes too (pass the group
    /// config's `max_log_tail_bytes`; the default is the core's default).
    pub fn with_max_tail_bytes(mut self, max_tail_bytes: usize) -> FileStore {
        self.max_tail_bytes = max_tail_bytes.max(1);
        self
    }

    fn convert(&mut self, out: &mut Flushed) {
        for p in self.report.log.drain(..) {
            out.log.push((p.group, p.up_to));
        }
        out.hard_states.append(&mut self.report.hard_states);
        for (group, e) in self.report.failed.drain(..) {
            out.failed.push(StoreError::engine(group, e));
        }
    }
}

/// Entries read per call while recovering a group's log.
const RECOVERY_READ_BYTES: u64 = 4 << 20;

impl LogStore for FileStore {
    fn max_entry_bytes(&self) -> Option<usize> {
        usize::try_from(self.storage.config().max_entry_size_bytes).ok()
    }

    fn open_group(&mut self, group: GroupId, initial: &Membership) -> Result<Recovered, StoreError> {
        let err = |e: StorageError| StoreError::engine(group, e);
        let r = self.storage.open_group(group).map_err(err)?;
        if let Some((path, offset)) = &r.truncated_tail {
            tracing::warn!(group, path = %path.display(), offset, "recovery cut a torn tail");
        }
        // Walk the log once: term runs for the core's term index, and the
        // last `max_tail_entries` entries for its in-memory tail.
        let mut term_starts: Vec<LogId> = Vec::new();
        let mut tail: std::collections::VecDeque<Entry> = Default::default();
        // The core's log starts after the snapshot (whole segments may
        // still hold entries it covers).
        let after_snapshot = r.snapshot.as_ref().map_or(0, |m| m.last_log_id.index) + 1;
        let mut next = r.first_index.max(after_snapshot);
        let mut buf = Vec::new();
        let mut tail_bytes = 0usize;
        while next <= r.last_log_id.index {
            buf.clear();
            self.storage
                .entries(group, next, r.last_log_id.index + 1, RECOVERY_READ_BYTES, &mut buf)
                .map_err(err)?;
            if buf.is_empty() {
                return Err(StoreError { group, kind: StoreErrorKind::EmptyRead { index: next } });
            }
            for e in buf.drain(..) {
                if term_starts.last().is_none_or(|l| l.term != e.term) {
                    term_starts.push(e.log_id());
                }
                next = e.index + 1;
                tail_bytes += e.size_bytes();
                tail.push_back(e);
                while tail.len() > 1
                    && (tail.len() > self.max_tail_entries || tail_bytes > self.max_tail_bytes)
                {
                    if let Some(old) = tail.pop_front() {
                        tail_bytes -= old.size_bytes();
                    }
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

    fn close_group(&mut self, group: GroupId) -> Result<(), StoreError> {
        self.storage.remove_group(group).map_err(|e| StoreError::engine(group, e))
    }

    fn stage(&mut self, group: GroupId, write: &LogWrite) -> Result<(), StoreError> {
        let r = match write {
            LogWrite::Append(entries) => self.storage.stage(group, entries),
            LogWrite::HardState(hs) => self.storage.stage_hard_state(group, *hs),
        };
        r.map_err(|e| StoreError::engine(group, e))
    }

    fn flush(&mut self, out: &mut Flushed) {
        self.storage.flush(&mut self.report);
        self.convert(out);
    }

    /// One fdatasync round per flush: the records staged now, with the
    /// watermark of the previous flush's (see [`Storage::flush_pipelined`]).
    fn flush_pipelined(&mut self, out: &mut Flushed) {
        self.storage.flush_pipelined(&mut self.report);
        self.convert(out);
    }

    fn needs_flush(&self) -> bool {
        self.storage.needs_flush()
    }

    fn sync(&mut self, out: &mut Flushed) {
        self.storage.sync(&mut self.report);
        self.convert(out);
    }

    fn needs_sync(&self) -> bool {
        self.storage.needs_sync()
    }

    fn begin_sync(&mut self, out: &mut Flushed) -> Option<SyncJob> {
        let job = self.storage.begin_sync(&mut self.report);
        self.convert(out);
        Some(job)
    }

    fn finish_sync(&mut self, job: SyncJob, results: Vec<std::io::Result<()>>, out: &mut Flushed) {
        self.storage.finish_sync(job, results, &mut self.report);
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
            .map_err(|e| StoreError::engine(group, e))?;
        Ok(out)
    }

    fn snapshot_writer(
        &mut self,
        group: GroupId,
        snapshot: LogId,
    ) -> Result<Box<dyn SnapshotSink>, StoreError> {
        let writer =
            self.storage.snapshot_writer(group, snapshot).map_err(|e| StoreError::engine(group, e))?;
        Ok(Box::new(FileSink { group, writer }))
    }

    fn commit_snapshot(&mut self, group: GroupId, staged: StagedSnapshot) -> Result<(), StoreError> {
        let err = |e: StorageError| StoreError::engine(group, e);
        match staged.inner {
            Staged::File(file) => self.storage.commit_snapshot(group, file).map_err(err),
            Staged::Memory(meta, data) => self.storage.write_snapshot(group, &meta, &data).map_err(err),
        }
    }

    fn compact(&mut self, group: GroupId, up_to: LogId) -> Result<(), StoreError> {
        self.storage.compact(group, up_to).map_err(|e| StoreError::engine(group, e))
    }

    fn take_deletions(&mut self) -> Option<DeletionJob> {
        self.storage.take_deletions()
    }

    fn read_snapshot_chunk(
        &mut self,
        group: GroupId,
        snapshot: LogId,
        offset: u64,
        max_bytes: usize,
    ) -> Result<Option<(Bytes, bool)>, StoreError> {
        self.storage
            .read_snapshot_chunk(group, snapshot, offset, max_bytes)
            .map_err(|e| StoreError::engine(group, e))
    }

    fn snapshot_source(&mut self, group: GroupId) -> Result<Option<Box<dyn SnapshotSource>>, StoreError> {
        let reader = self.storage.snapshot_reader(group).map_err(|e| StoreError::engine(group, e))?;
        Ok(reader.map(|reader| Box::new(FileSource { group, reader }) as Box<dyn SnapshotSource>))
    }
}

impl FileStore {
    /// The storage engine (for tests and tools: log state, snapshot metadata).
    pub fn storage(&self) -> &Storage {
        &self.storage
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
    /// The entry before `log[0]` (the snapshot's, once the log was reset).
    base: LogId,
    log: Vec<Entry>,
    membership: Membership,
    snapshot: Option<(SnapshotMeta, Bytes)>,
}

impl MemGroup {
    fn last(&self) -> LogId {
        self.log.last().map_or(self.base, Entry::log_id)
    }

    fn entry(&self, index: Index) -> Option<&Entry> {
        let at = index.checked_sub(self.base.index + 1)?;
        self.log.get(at as usize)
    }
}

impl MemStore {
    pub fn new() -> Self {
        MemStore::default()
    }

    fn with_group<T>(&self, group: GroupId, f: impl FnOnce(&mut MemGroup) -> T) -> Result<T, StoreError> {
        let mut groups =
            self.groups.lock().map_err(|_| StoreError { group, kind: StoreErrorKind::Poisoned })?;
        let g = groups.get_mut(&group).ok_or(StoreError { group, kind: StoreErrorKind::NotOpen })?;
        Ok(f(g))
    }
}

impl LogStore for MemStore {
    fn open_group(&mut self, group: GroupId, initial: &Membership) -> Result<Recovered, StoreError> {
        let mut groups =
            self.groups.lock().map_err(|_| StoreError { group, kind: StoreErrorKind::Poisoned })?;
        let g = groups
            .entry(group)
            .or_insert_with(|| MemGroup { membership: initial.clone(), ..Default::default() });
        let Some((meta, _)) = &g.snapshot else {
            return Ok(Recovered::from_log(g.hard_state, g.membership.clone(), g.log.clone()));
        };
        // The core's log starts after the snapshot.
        let after: Vec<Entry> = g.log.iter().filter(|e| e.index > meta.last_log_id.index).cloned().collect();
        let latest = after.iter().rev().find_map(|e| match &e.payload {
            tarn_core::EntryPayload::Membership(m) => Some(m.clone()),
            _ => None,
        });
        let mut r =
            Recovered::from_log(g.hard_state, latest.unwrap_or_else(|| meta.membership.clone()), after);
        r.snapshot = Some(meta.clone());
        r.last_log_id = g.last();
        r.initial_membership = Some(initial.clone());
        Ok(r)
    }

    fn close_group(&mut self, group: GroupId) -> Result<(), StoreError> {
        if let Ok(mut groups) = self.groups.lock() {
            groups.remove(&group);
        }
        Ok(())
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
                out.failed.push(StoreError { group, kind: StoreErrorKind::NotOpen });
                continue;
            };
            match write {
                LogWrite::HardState(h) => {
                    g.hard_state = h;
                    hs.insert(group, h);
                }
                LogWrite::Append(entries) => {
                    let Some(first) = entries.first() else { continue };
                    if first.index <= g.base.index {
                        out.failed.push(StoreError {
                            group,
                            kind: StoreErrorKind::AppendOverSnapshot { at: first.index, snapshot: g.base },
                        });
                        continue;
                    }
                    let keep = ((first.index - g.base.index - 1) as usize).min(g.log.len());
                    g.log.truncate(keep);
                    if g.last().index + 1 != first.index {
                        out.failed.push(StoreError {
                            group,
                            kind: StoreErrorKind::AppendGap { at: first.index, last: g.last() },
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
        self.with_group(group, |g| {
            let mut out = Vec::new();
            let mut bytes = 0;
            for i in from..to {
                let Some(e) = g.entry(i) else { break };
                bytes += e.size_bytes();
                if !out.is_empty() && bytes > max_bytes {
                    break;
                }
                out.push(e.clone());
            }
            out
        })
    }

    fn snapshot_writer(
        &mut self,
        group: GroupId,
        _snapshot: LogId,
    ) -> Result<Box<dyn SnapshotSink>, StoreError> {
        self.with_group(group, |_| ())?;
        Ok(Box::new(MemSink { group, data: Vec::new() }))
    }

    fn commit_snapshot(&mut self, group: GroupId, staged: StagedSnapshot) -> Result<(), StoreError> {
        let (meta, data) = match staged.inner {
            Staged::Memory(meta, data) => (meta, data),
            Staged::File(f) => {
                return Err(StoreError { group, kind: StoreErrorKind::ForeignSnapshot { path: f.path } })
            }
        };
        self.with_group(group, |g| {
            if g.snapshot.as_ref().is_some_and(|(m, _)| m.last_log_id.index > meta.last_log_id.index) {
                return Err(StoreError {
                    group,
                    kind: StoreErrorKind::OlderSnapshot { snapshot: meta.last_log_id },
                });
            }
            let s = meta.last_log_id;
            let matches = g.entry(s.index).is_some_and(|e| e.term == s.term) || g.base == s;
            if !matches || s.index >= g.last().index {
                g.base = s;
                g.log.clear();
            }
            g.snapshot = Some((meta, data));
            Ok(())
        })?
    }

    fn compact(&mut self, group: GroupId, _up_to: LogId) -> Result<(), StoreError> {
        // Keeping entries is allowed ("deleting fewer is fine"); memory is the test's.
        self.with_group(group, |_| ())
    }

    fn read_snapshot_chunk(
        &mut self,
        group: GroupId,
        snapshot: LogId,
        offset: u64,
        max_bytes: usize,
    ) -> Result<Option<(Bytes, bool)>, StoreError> {
        self.with_group(group, |g| match &g.snapshot {
            Some((meta, data)) if meta.last_log_id == snapshot => {
                let start = (offset as usize).min(data.len());
                let end = (start + max_bytes.max(1)).min(data.len());
                Some((data.slice(start..end), end == data.len()))
            }
            _ => None,
        })
    }

    fn snapshot_source(&mut self, group: GroupId) -> Result<Option<Box<dyn SnapshotSource>>, StoreError> {
        self.with_group(group, |g| {
            g.snapshot.as_ref().map(|(meta, data)| {
                Box::new(MemSource::new(meta.clone(), data.clone())) as Box<dyn SnapshotSource>
            })
        })
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

/// What a group hears back from storage.
#[derive(Debug)]
pub enum StorageDone {
    /// Writes are durable: the log up to `log`, the term and vote `hard_state`.
    Persisted {
        /// The last log entry now durable, if the log advanced.
        log: Option<LogId>,
        /// The (term, vote) now durable, if it changed.
        hard_state: Option<(Term, Option<NodeId>)>,
    },
    /// The answer to a `Fetch`.
    Fetched {
        /// The first index asked for.
        from: Index,
        /// The entries read, in order.
        entries: Vec<Entry>,
    },
    /// The answer to a `ReadSnapshotChunk` (`data: None`: not available).
    SnapshotChunk {
        /// The follower the chunk is for.
        to: NodeId,
        /// The snapshot read.
        snapshot: LogId,
        /// Where the chunk starts.
        offset: u64,
        /// The bytes, or `None` if that snapshot is gone.
        data: Option<Bytes>,
        /// The chunk ends the snapshot.
        done: bool,
    },
    /// Storage failed: the group stops.
    Failed(StoreError),
}

/// A reply carrying a snapshot writer.
pub(crate) type SinkReply = tokio::sync::oneshot::Sender<Result<Box<dyn SnapshotSink>, StoreError>>;

pub(crate) enum StorageRequest {
    Open {
        group: GroupId,
        initial: Membership,
        done: mpsc::UnboundedSender<StorageDone>,
        reply: tokio::sync::oneshot::Sender<Result<Recovered, StoreError>>,
    },
    Close {
        group: GroupId,
        reply: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
    },
    /// A writer for a snapshot this node takes.
    SnapshotWriter {
        group: GroupId,
        snapshot: LogId,
        reply: SinkReply,
    },
    CommitSnapshot {
        group: GroupId,
        staged: StagedSnapshot,
        reply: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
    },
    Compact {
        group: GroupId,
        up_to: LogId,
    },
    ReadSnapshotChunk {
        group: GroupId,
        to: NodeId,
        snapshot: LogId,
        offset: u64,
        max_bytes: usize,
    },
    /// Follower: a chunk of the leader's snapshot (offset 0 starts over).
    StageChunk {
        group: GroupId,
        snapshot: LogId,
        offset: u64,
        data: Bytes,
    },
    /// Follower: hand over the staged snapshot (to finish and install it).
    TakeStaged {
        group: GroupId,
        snapshot: LogId,
        reply: SinkReply,
    },
    SnapshotSource {
        group: GroupId,
        reply: tokio::sync::oneshot::Sender<Result<Option<Box<dyn SnapshotSource>>, StoreError>>,
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
        node: NodeId,
        store: Box<dyn LogStore>,
        mode: WriteMode,
        counters: Arc<StorageCounters>,
    ) -> StorageWorker {
        let (tx, rx) = std_mpsc::channel();
        std::thread::Builder::new()
            .name("tarn-storage".into())
            .spawn(move || {
                let _span = tracing::info_span!("storage", node).entered();
                worker_loop(store, mode, rx, counters)
            })
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

/// A follower's snapshot transfer being written.
struct Staging {
    snapshot: LogId,
    sink: Box<dyn SnapshotSink>,
    /// The first failure; reported when the install asks for the snapshot.
    error: Option<StoreError>,
}

/// Writes one received chunk (offset 0 starts a new transfer). Chunks come
/// in order without gaps (the core's guarantee); anything else is recorded
/// as the transfer's failure.
fn stage_chunk(
    store: &mut dyn LogStore,
    staging: &mut HashMap<GroupId, Staging>,
    group: GroupId,
    snapshot: LogId,
    offset: u64,
    data: &[u8],
) {
    if offset == 0 {
        staging.remove(&group);
        match store.snapshot_writer(group, snapshot) {
            Ok(sink) => {
                staging.insert(group, Staging { snapshot, sink, error: None });
            }
            Err(e) => {
                tracing::error!(group, error = %e, "cannot stage a snapshot");
                return;
            }
        }
    }
    let Some(st) = staging.get_mut(&group) else { return };
    if st.error.is_some() {
        return;
    }
    if st.snapshot != snapshot || st.sink.len() != offset {
        let kind = StoreErrorKind::ChunkOutOfOrder {
            snapshot,
            offset,
            staged: st.snapshot,
            staged_bytes: st.sink.len(),
        };
        st.error = Some(StoreError { group, kind });
        return;
    }
    if let Err(e) = st.sink.write(data) {
        st.error = Some(e);
    }
}

fn worker_loop(
    mut store: Box<dyn LogStore>,
    mode: WriteMode,
    rx: std_mpsc::Receiver<StorageRequest>,
    counters: Arc<StorageCounters>,
) {
    let mut groups: HashMap<GroupId, mpsc::UnboundedSender<StorageDone>> = HashMap::new();
    // Follower snapshot transfers being staged, per group.
    let mut staging: HashMap<GroupId, Staging> = HashMap::new();
    let mut flushed = Flushed::default();
    // Async mode: background fdatasyncs run on the sync thread, one job at
    // a time, every `sync_interval` while something is unsynced — also
    // under constant load (the wait below never exceeds the next due time).
    let (sync_thread, mut pacer) = match mode {
        WriteMode::Async { sync_interval } => {
            (Some(SyncThread::start(counters.clone())), SyncPacer::new(sync_interval))
        }
        WriteMode::Sync => (None, SyncPacer::new(Duration::ZERO)),
    };
    let epoch = std::time::Instant::now();
    let now = || u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let mut janitor = Janitor::default();
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
            tracing::error!(group = e.group, error = %e, "storage failure");
            if let Some(done) = groups.get(&e.group) {
                let _ = done.send(StorageDone::Failed(e));
            }
        }
    };
    loop {
        if let Some(st) = &sync_thread {
            if pacer.in_flight() {
                if let Ok((job, results)) = st.results.try_recv() {
                    store.finish_sync(job, results, &mut flushed);
                    deliver(&groups, &mut flushed);
                    // What this job made durable goes into the watermark by
                    // the next one.
                    pacer.finished(store.needs_sync());
                }
            }
            if pacer.start(now()) {
                counters.syncs.fetch_add(1, Relaxed);
                match store.begin_sync(&mut flushed) {
                    Some(job) if !job.is_empty() => {
                        if st.jobs.send(job).is_err() {
                            pacer.finished(false);
                        }
                    }
                    Some(_) => pacer.finished(false),
                    None => {
                        store.sync(&mut flushed);
                        pacer.finished(false);
                    }
                }
                deliver(&groups, &mut flushed);
            }
        }
        let wait = match mode {
            // Poll for the running job's end; else sleep until the next sync is due.
            WriteMode::Async { .. } if pacer.in_flight() => Some(SYNC_POLL_INTERVAL),
            WriteMode::Async { .. } => {
                pacer.due_at().map(|at| Duration::from_nanos(at.saturating_sub(now())))
            }
            _ => None,
        };
        // Sync mode: the last flush synced entries whose watermark it owes.
        // Do not wait for a request: flush again now, carrying whatever
        // arrived during the last one (an idle flush writes the watermark
        // alone).
        let owed = mode == WriteMode::Sync && store.needs_flush();
        let first = match wait {
            _ if owed => match rx.try_recv() {
                Ok(r) => Some(r),
                Err(std_mpsc::TryRecvError::Empty) => None,
                Err(std_mpsc::TryRecvError::Disconnected) => break,
            },
            Some(wait) => match rx.recv_timeout(wait) {
                Ok(r) => Some(r),
                Err(std_mpsc::RecvTimeoutError::Timeout) => continue,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            },
            None => match rx.recv() {
                Ok(r) => Some(r),
                Err(_) => break,
            },
        };
        batch.extend(first);
        while !batch.is_empty() && batch.len() < MAX_REQUESTS_PER_FLUSH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let mut staged = false;
        // Entries appended by this flush (a histogram of batch sizes).
        let mut entries_staged = 0u64;
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
                    staging.remove(&group);
                    let _ = reply.send(store.close_group(group));
                }
                StorageRequest::SnapshotWriter { group, snapshot, reply } => {
                    let _ = reply.send(store.snapshot_writer(group, snapshot));
                }
                StorageRequest::CommitSnapshot { group, staged: snapshot, reply } => {
                    // Writes queued before it go first (an install resets the log).
                    if staged {
                        store.flush(&mut flushed);
                        counters.flushes.fetch_add(1, Relaxed);
                        staged = false;
                        if mode != WriteMode::Sync {
                            pacer.wrote(now());
                        }
                    }
                    let _ = reply.send(store.commit_snapshot(group, snapshot));
                }
                StorageRequest::Compact { group, up_to } => {
                    if let Err(e) = store.compact(group, up_to) {
                        flushed.failed.push(e);
                    }
                    if let Some(job) = store.take_deletions() {
                        janitor.delete(job);
                    }
                }
                StorageRequest::ReadSnapshotChunk { group, to, snapshot, offset, max_bytes } => {
                    let (data, done) = match store.read_snapshot_chunk(group, snapshot, offset, max_bytes) {
                        Ok(Some((data, done))) => (Some(data), done),
                        Ok(None) => (None, false),
                        Err(e) => {
                            // The transfer restarts later; the node itself is fine.
                            tracing::error!(group, error = %e, "reading a snapshot chunk failed");
                            (None, false)
                        }
                    };
                    if let Some(tx) = groups.get(&group) {
                        let _ = tx.send(StorageDone::SnapshotChunk { to, snapshot, offset, data, done });
                    }
                }
                StorageRequest::StageChunk { group, snapshot, offset, data } => {
                    stage_chunk(store.as_mut(), &mut staging, group, snapshot, offset, &data);
                }
                StorageRequest::TakeStaged { group, snapshot, reply } => {
                    let r = match staging.remove(&group) {
                        Some(Staging { snapshot: s, sink, error: None }) if s == snapshot => Ok(sink),
                        Some(Staging { error: Some(e), .. }) => Err(e),
                        _ => Err(StoreError { group, kind: StoreErrorKind::NoStagedSnapshot { snapshot } }),
                    };
                    let _ = reply.send(r);
                }
                StorageRequest::SnapshotSource { group, reply } => {
                    let _ = reply.send(store.snapshot_source(group));
                }
                StorageRequest::Write { group, writes } => {
                    for w in &writes {
                        if let LogWrite::Append(entries) = w {
                            counters.entries_written.fetch_add(entries.len() as u64, Relaxed);
                            entries_staged += entries.len() as u64;
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
        if staged || !flush_replies.is_empty() || owed {
            let started = std::time::Instant::now();
            store.flush_pipelined(&mut flushed);
            counters.flushes.fetch_add(1, Relaxed);
            if entries_staged > 0 {
                counters.flush_entries.observe(entries_staged);
            }
            if mode == WriteMode::Sync {
                counters.sync_seconds.observe_duration(started.elapsed());
                counters.syncs.fetch_add(1, Relaxed);
            } else {
                pacer.wrote(now());
            }
        }
        if !flush_replies.is_empty() && mode == WriteMode::Sync && store.needs_flush() {
            // Shutdown: report everything written before answering.
            store.flush(&mut flushed);
            counters.flushes.fetch_add(1, Relaxed);
            counters.syncs.fetch_add(1, Relaxed);
        }
        if !flush_replies.is_empty() && pacer.in_flight() {
            // Shutdown: what the running job covers must be durable too.
            if let Some(Ok((job, results))) = sync_thread.as_ref().map(|st| st.results.recv()) {
                store.finish_sync(job, results, &mut flushed);
            }
            pacer.finished(false);
        }
        if !flush_replies.is_empty() && pacer.unsynced() {
            store.sync(&mut flushed);
            counters.syncs.fetch_add(1, Relaxed);
            pacer.synced_all();
        }
        deliver(&groups, &mut flushed);
        for reply in flush_replies {
            let _ = reply.send(());
        }
    }
    let in_flight = pacer.in_flight();
    if let Some(st) = &sync_thread {
        if in_flight {
            if let Ok((job, results)) = st.results.recv() {
                store.finish_sync(job, results, &mut flushed);
            }
        }
    }
    if pacer.unsynced() || in_flight || store.needs_sync() {
        store.sync(&mut flushed);
    }
    if store.needs_flush() {
        store.flush(&mut flushed);
    }
}

/// Deletes compacted segments on a thread of its own (started at the first
/// job), so an unlink of a large file and a directory fsync never stall the
/// group commit. Jobs still queued when the worker stops are finished
/// before it returns.
#[derive(Default)]
struct Janitor {
    jobs: Option<(std_mpsc::Sender<DeletionJob>, std::thread::JoinHandle<()>)>,
}

impl Janitor {
    fn delete(&mut self, job: DeletionJob) {
        if self.jobs.is_none() {
            let (tx, rx) = std_mpsc::channel::<DeletionJob>();
            let spawned = std::thread::Builder::new().name("tarn-janitor".into()).spawn(move || {
                while let Ok(job) = rx.recv() {
                    for e in job.run() {
                        tracing::warn!(error = %e, "deleting a compacted segment failed; the next start removes it");
                    }
                }
            });
            match spawned {
                Ok(handle) => self.jobs = Some((tx, handle)),
                Err(e) => {
                    // Out of threads: delete in line rather than keep the files.
                    tracing::warn!(error = %e, "no janitor thread; deleting compacted segments in line");
                    for e in job.run() {
                        tracing::warn!(error = %e, "deleting a compacted segment failed; the next start removes it");
                    }
                    return;
                }
            }
        }
        if let Some((tx, _)) = &self.jobs {
            if let Err(std_mpsc::SendError(job)) = tx.send(job) {
                job.run();
            }
        }
    }
}

impl Drop for Janitor {
    fn drop(&mut self) {
        if let Some((tx, handle)) = self.jobs.take() {
            drop(tx);
            let _ = handle.join();
        }
    }
}

/// How often the worker looks for the end of a background sync while
/// nothing else wakes it.
const SYNC_POLL_INTERVAL: Duration = Duration::from_millis(1);

/// Runs [`SyncJob`]s (one `sync_data_batch` each) off the storage thread;
/// stops when the worker drops it.
struct SyncThread {
    jobs: std_mpsc::Sender<SyncJob>,
    results: std_mpsc::Receiver<(SyncJob, Vec<std::io::Result<()>>)>,
}

impl SyncThread {
    fn start(counters: Arc<StorageCounters>) -> SyncThread {
        let (jobs, job_rx) = std_mpsc::channel::<SyncJob>();
        let (result_tx, results) = std_mpsc::channel();
        std::thread::Builder::new()
            .name("tarn-sync".into())
            .spawn(move || {
                while let Ok(job) = job_rx.recv() {
                    let started = std::time::Instant::now();
                    let r = job.run();
                    counters.sync_seconds.observe_duration(started.elapsed());
                    if result_tx.send((job, r)).is_err() {
                        break;
                    }
                }
            })
            .expect("spawning the sync thread (out of threads?)");
        SyncThread { jobs, results }
    }
}
