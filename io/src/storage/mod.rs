//! The storage engine: durable logs, hard state and snapshots for many Raft
//! groups, written only against [`crate::vfs::Vfs`].
//!
//! # Layout
//! ```text
//! <dir>/tarn.id                       node identity (cluster, node)
//! <dir>/group-<id>/group.id           group identity (cluster, node, group)
//! <dir>/group-<id>/hardstate          two alternating slots: term, vote,
//!                                     commit and the sync watermark (see hard_state)
//! <dir>/group-<id>/<first_index>.seg  fixed-size, preallocated log segments
//! <dir>/group-<id>/snap-<index>-<term>.snap
//! ```
//!
//! # Group commit
//! A driver calls [`Storage::stage`] (and [`Storage::stage_hard_state`]) for
//! any number of groups — this only encodes records into each group's reused
//! buffer, no I/O — then [`Storage::flush`], which does, for every group with
//! staged data, **one `write` per segment touched** (normally one), and then,
//! in [`WriteMode::Sync`], the fdatasyncs of all those files back to back,
//! and returns per group "durable up to (term, index)" ([`Persisted`]). A
//! flush's cost is therefore one write per dirty group plus one fdatasync per
//! dirty file, however many entries were staged. There is no lock: the
//! engine is a plain `&mut` value; a driver owns it on one storage task and
//! feeds it batches (a flush per wakeup batches everything that queued while
//! the previous flush ran). Groups are independent ([`log::GroupLog`]), so a
//! failed disk write stops only its group.
//!
//! # The sync watermark
//! Each hard-state slot also records `synced`: the last log position that
//! was fdatasynced before the slot was written. In sync mode an entry is
//! reported persisted (the Raft acknowledgement) only once a *durable*
//! slot covers it, so recovery can tell the two kinds of damaged record
//! apart: above the watermark it may be a torn, never-acknowledged write
//! and is cut; at or below it the record was synced and acknowledged, and
//! recovery refuses to start ([`StorageError::Corruption`]) rather than
//! lose it. A flush therefore needs two fdatasync rounds (records, then the
//! watermark): [`Storage::flush`] does both; [`Storage::flush_pipelined`],
//! which the drivers use, shares the second with the next flush's first and
//! leaves [`Storage::needs_flush`] set until an idle flush writes it.
//!
//! # Write modes
//! [`WriteMode::Sync`] reports an entry persisted after its fdatasync and
//! the fdatasync of a watermark covering it.
//! [`WriteMode::Async`] reports it once written to the OS; the driver calls
//! [`Storage::sync`] every `async_sync_interval_ms` and [`Storage::close`]
//! on shutdown; each background sync writes the watermark of what the one
//! before made durable ([`Storage::needs_sync`] stays set until it caught
//! up). The engine itself never spawns or sleeps (the simulator runs it on
//! virtual time).

pub mod error;
pub mod hard_state;
pub mod log;
pub mod meta;
pub mod record;
pub mod segment;
pub mod snapshot;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tarn_core::{Entry, GroupId, HardState, Index, LogId, Membership, NodeId, SnapshotMeta, Term};

use error::io_err;
pub use error::{Result, StorageError};
use hard_state::{HARD_STATE_FILE_BYTES, HARD_STATE_SLOT_BYTES};
pub use log::{GroupLog, LogLimits, LogRecovery, MAX_ENTRY_SIZE_LIMIT_BYTES, MAX_SEGMENT_SIZE_BYTES};
use meta::Identity;
pub use record::RECORD_ALIGNMENT_BYTES;
use segment::SEGMENT_HEADER_BYTES;
pub use snapshot::{SnapshotFile, SnapshotReader, SnapshotWriter};

use crate::vfs::{Vfs, VfsFile};

/// When an append counts as persisted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// After fdatasync: survives power loss.
    Sync,
    /// After the write reached the OS: survives a process crash, not power
    /// loss. Background fdatasync every `async_sync_interval_ms`.
    Async,
}

#[derive(Clone, Debug)]
pub struct StorageConfig {
    /// The node's data directory.
    pub dir: PathBuf,
    /// Written into identity files so that a directory of another cluster or
    /// node is refused. Non-zero.
    pub cluster_id: u64,
    pub node_id: NodeId,
    /// Size of each preallocated log segment; a multiple of
    /// [`RECORD_ALIGNMENT_BYTES`], big enough for the largest entry.
    pub segment_size_bytes: u64,
    /// Largest entry payload (data bytes) accepted by `stage`.
    pub max_entry_size_bytes: u32,
    pub write_mode: WriteMode,
    /// How often the driver should call [`Storage::sync`] in async mode.
    pub async_sync_interval_ms: u64,
    /// Largest snapshot [`Storage::read_snapshot`] will load into memory.
    pub max_snapshot_size_bytes: u64,
    /// Async mode: a flush's write of at least this many bytes is padded
    /// (with a skipped padding record) to end on a multiple of this, so the
    /// next flush never rewrites a page under background writeback; 0 turns
    /// it off; sync mode never pads. A multiple of [`RECORD_ALIGNMENT_BYTES`], at most
    /// [`MAX_WRITE_ALIGNMENT_BYTES`].
    pub write_alignment_bytes: u64,
    /// A bug to plant in the engine (tests of the simulator only).
    #[cfg(feature = "planted-bugs")]
    pub planted_bug: Option<tarn_core::PlantedBug>,
}

/// Upper bound on [`StorageConfig::write_alignment_bytes`].
pub const MAX_WRITE_ALIGNMENT_BYTES: u64 = 1 << 20;

impl StorageConfig {
    pub fn new(dir: impl Into<PathBuf>, cluster_id: u64, node_id: NodeId) -> Self {
        StorageConfig {
            dir: dir.into(),
            cluster_id,
            node_id,
            segment_size_bytes: 64 << 20,
            max_entry_size_bytes: 8 << 20,
            write_mode: WriteMode::Sync,
            async_sync_interval_ms: 10,
            max_snapshot_size_bytes: 4 << 30,
            write_alignment_bytes: 4096,
            #[cfg(feature = "planted-bugs")]
            planted_bug: None,
        }
    }

    /// Refuses configurations that cannot work, saying which knob and why.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(StorageError::InvalidConfig(reason));
        if self.cluster_id == 0 || self.node_id == 0 {
            return bad("cluster_id and node_id must be non-zero".into());
        }
        if !self.segment_size_bytes.is_multiple_of(RECORD_ALIGNMENT_BYTES) {
            return bad(format!(
                "segment_size_bytes {} is not a multiple of the record alignment {RECORD_ALIGNMENT_BYTES}",
                self.segment_size_bytes
            ));
        }
        if self.max_entry_size_bytes == 0 || self.max_entry_size_bytes > MAX_ENTRY_SIZE_LIMIT_BYTES {
            return bad(format!(
                "max_entry_size_bytes {} must be in 1..={MAX_ENTRY_SIZE_LIMIT_BYTES}",
                self.max_entry_size_bytes
            ));
        }
        let min_segment = SEGMENT_HEADER_BYTES + record::record_size_bytes(self.max_entry_size_bytes as u64);
        if self.segment_size_bytes < min_segment || self.segment_size_bytes > MAX_SEGMENT_SIZE_BYTES {
            return bad(format!(
                "segment_size_bytes {} must be in {min_segment}..={MAX_SEGMENT_SIZE_BYTES} \
                 (room for a header and one entry of max_entry_size_bytes {})",
                self.segment_size_bytes, self.max_entry_size_bytes
            ));
        }
        if !self.write_alignment_bytes.is_multiple_of(RECORD_ALIGNMENT_BYTES)
            || self.write_alignment_bytes > MAX_WRITE_ALIGNMENT_BYTES
        {
            return bad(format!(
                "write_alignment_bytes {} must be a multiple of {RECORD_ALIGNMENT_BYTES} and at most \
                 {MAX_WRITE_ALIGNMENT_BYTES} (0 turns padding off)",
                self.write_alignment_bytes
            ));
        }
        if self.write_mode == WriteMode::Async && self.async_sync_interval_ms == 0 {
            return bad("async_sync_interval_ms must be positive in async write mode".into());
        }
        Ok(())
    }

    fn limits(&self) -> LogLimits {
        LogLimits {
            segment_size_bytes: self.segment_size_bytes,
            max_entry_size_bytes: self.max_entry_size_bytes,
            // Only async mode pads: in sync mode every flush waits for its
            // fdatasync, so the next one never finds a page under writeback.
            write_alignment_bytes: match self.write_mode {
                WriteMode::Async => self.write_alignment_bytes,
                WriteMode::Sync => 0,
            },
        }
    }
}

/// What [`Storage::open_group`] recovered, for the core's `Recovered`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    pub group: GroupId,
    /// Commit is clamped to `last_log_id.index`.
    pub hard_state: HardState,
    pub snapshot: Option<SnapshotMeta>,
    /// First index readable from the log (may be at or below the snapshot's
    /// last index: whole segments are kept until fully covered).
    pub first_index: Index,
    /// The last entry of the log, or the snapshot's last log id if the log is
    /// empty, or zero.
    pub last_log_id: LogId,
    /// The newest membership entry in the log (after the snapshot), if any.
    pub membership: Option<(LogId, Membership)>,
    /// Where a torn tail was cut off, if one was.
    pub truncated_tail: Option<(PathBuf, u64)>,
}

/// Per-group completion of a flush: the core's `LogPersisted { up_to }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Persisted {
    pub group: GroupId,
    pub up_to: LogId,
}

/// What a [`Storage::flush`] or [`Storage::sync`] did. Reused across calls.
#[derive(Debug, Default)]
pub struct FlushReport {
    /// Log positions newly persisted (per the write mode), one per group.
    pub log: Vec<Persisted>,
    /// Hard states newly persisted: the core's `HardStatePersisted`.
    pub hard_states: Vec<(GroupId, HardState)>,
    /// Groups that failed (and are now poisoned), with the error.
    pub failed: Vec<(GroupId, StorageError)>,
}

impl FlushReport {
    pub fn clear(&mut self) {
        self.log.clear();
        self.hard_states.clear();
        self.failed.clear();
    }
}

#[derive(Debug)]
struct GroupStore {
    dir: PathBuf,
    log: GroupLog,
    hs_path: PathBuf,
    hs_file: Arc<dyn VfsFile>,
    /// Sequence number of the newest written slot.
    hs_seq: u64,
    hs_staged: Option<HardState>,
    /// Newest hard state handed to the OS, and whether it is synced.
    hs_written: HardState,
    hs_unsynced: bool,
    /// Newest hard state known durable, and its slot sequence number.
    hs_durable: HardState,
    hs_durable_seq: u64,
    /// The sync watermark in the newest written slot, and in the newest
    /// durable one: the log up to it was fdatasynced before that slot was
    /// written. Sync mode reports entries persisted only up to
    /// `watermark_durable`, so a damaged record of an acknowledged entry is
    /// always at or below a durable watermark, which recovery refuses to cut.
    watermark_written: LogId,
    watermark_durable: LogId,
    /// A hard state was written by the current flush: report it.
    hs_report: bool,
    /// Touched by the current flush (reported at its end).
    touched: bool,
    snapshot: Option<SnapshotMeta>,
    /// Reader of the current snapshot kept between chunk reads of a
    /// transfer (its running checksum covers what was read in order).
    snapshot_reader: Option<SnapshotReader>,
    reported_log: LogId,
    dirty: bool,
    /// The current flush round wrote the first copy of a new term or vote;
    /// the second is owed after the first is synced.
    vote_copy_owed: bool,
}

impl GroupStore {
    /// Hands a slot holding `hs` and the watermark `synced` to the OS (not
    /// synced). Errors poison the group.
    fn write_slot(&mut self, hs: HardState, synced: LogId) -> Result<()> {
        // Wraps after u64::MAX; the slots compare as serial numbers.
        let seq = self.hs_seq.wrapping_add(1);
        let slot = hard_state::encode(seq, &hs, synced);
        if let Err(e) = self.hs_file.write_at(&slot, hard_state::slot_offset(seq)) {
            return Err(self.log.poison("write hard state", &self.hs_path, e));
        }
        self.hs_seq = seq;
        self.hs_written = hs;
        self.watermark_written = synced;
        self.hs_unsynced = true;
        Ok(())
    }

    /// Whether the log has synced entries the newest slot does not cover yet.
    fn watermark_lags(&self) -> bool {
        self.log.last_durable() != self.watermark_written
    }

    /// Writes the staged hard state, if any, and in `sync` mode also a slot
    /// that only raises the watermark when it lags. The watermark written is
    /// what the log had made durable *before* this flush's own sync: a slot
    /// must never claim records that are not yet synced. Returns whether a
    /// staged hard state was written.
    fn write_hard_state(&mut self, sync: bool) -> Result<bool> {
        self.vote_copy_owed = false;
        let staged = self.hs_staged.take();
        if staged.is_none() && !(sync && self.watermark_lags()) {
            return Ok(false);
        }
        let hs = staged.unwrap_or(self.hs_written);
        let synced = self.log.last_durable();
        let vote_changed = hs.term != self.hs_durable.term || hs.vote != self.hs_durable.vote;
        // A new term or vote goes into both slots, each synced, before it is
        // reported: one slot damaged later (a bad sector, a bit flipped on
        // its way to the platter) must not leave recovery only the previous
        // vote, which it would take for a torn write (sim seed 200183627: a
        // corrupted slot, the node voted twice in one term). A crash during
        // the second copy leaves the first. Every later slot carries this
        // term and vote until the next change, so both slots always agree on
        // them. Elections only: commit and watermark slots stay single. This
        // writes the first copy; [`Storage::sync_votes`] syncs it, then
        // writes and syncs the second.
        self.vote_copy_owed = sync && vote_changed;
        self.write_slot(hs, synced)?;
        Ok(staged.is_some())
    }

    /// Writes the second copy of a new term or vote (see
    /// [`GroupStore::write_hard_state`]): the slot just synced, again, in the
    /// other slot position.
    fn write_second_vote_copy(&mut self) -> Result<()> {
        self.vote_copy_owed = false;
        self.write_slot(self.hs_written, self.watermark_written)
    }

    /// Lowers the watermark to `to` durably (written and fdatasynced now),
    /// if a slot may claim more. Called before the log drops entries at or
    /// below the watermark other than into a snapshot (a conflicting
    /// suffix, a log replaced by a snapshot that disagrees with it): a crash
    /// after those entries are gone must not find a watermark past the log.
    fn lower_watermark(&mut self, to: LogId) -> Result<()> {
        if self.watermark_written.index <= to.index && self.watermark_durable.index <= to.index {
            return Ok(());
        }
        self.write_slot(self.hs_written, to)?;
        let (seq, hs) = (self.hs_seq, self.hs_written);
        let result = self.hs_file.sync_data();
        self.finish_hard_state_sync(seq, hs, to, result)
    }

    /// Whether the hard state file needs an fdatasync. `vote_only`: not
    /// when only `commit` changed since the last sync (commit may lag after
    /// a crash; Raft recomputes it, and nothing waits for it). A slot with a
    /// new watermark is always synced: acknowledgements wait for it.
    fn hard_state_needs_sync(&self, vote_only: bool) -> bool {
        let durable = &self.hs_durable;
        let vote_changed = durable.term != self.hs_written.term || durable.vote != self.hs_written.vote;
        let watermark_changed = self.watermark_written != self.watermark_durable;
        self.hs_unsynced && (vote_changed || watermark_changed || !vote_only)
    }

    /// Records the sync of the slot written with sequence number `seq`
    /// (holding `hs` and the watermark `synced`); a newer slot written
    /// meanwhile stays unsynced.
    fn finish_hard_state_sync(
        &mut self,
        seq: u64,
        hs: HardState,
        synced: LogId,
        result: std::io::Result<()>,
    ) -> Result<()> {
        if let Err(e) = result {
            return Err(self.log.poison("fdatasync hard state", &self.hs_path, e));
        }
        if seq == self.hs_seq {
            self.hs_unsynced = false;
        }
        if hard_state::seq_is_newer(seq, self.hs_durable_seq) {
            self.hs_durable = hs;
            self.hs_durable_seq = seq;
            self.watermark_durable = synced;
        }
        Ok(())
    }
}

/// The storage engine of one node. See the module documentation.
#[derive(Debug)]
pub struct Storage {
    vfs: Arc<dyn Vfs>,
    config: StorageConfig,
    groups: BTreeMap<GroupId, GroupStore>,
    /// Groups with staged data, in staging order, each once.
    dirty: Vec<GroupId>,
    /// Groups written by the current flush round (reused).
    flushed: Vec<GroupId>,
    /// Groups written by any round of the current flush, each once (reused).
    touched: Vec<GroupId>,
    /// Groups of the current round whose new term or vote is being synced,
    /// and the files of one batch (both reused).
    votes: Vec<GroupId>,
    vote_files: Vec<Arc<dyn VfsFile>>,
    /// Distinguishes the temporary files of concurrent snapshot writers.
    snapshot_nonce: u64,
}

#[derive(Debug)]
enum SyncTarget {
    Log(log::LogSyncJob),
    /// The slot's sequence number and the state and watermark it holds.
    HardState(u64, HardState, LogId),
}

/// A batch of fdatasyncs taken from a [`Storage`] by
/// [`Storage::begin_sync`]; `Send`, so a driver can run it on a thread while
/// the engine keeps appending, then hand the results back with
/// [`Storage::finish_sync`].
#[derive(Debug)]
pub struct SyncJob {
    vfs: Arc<dyn Vfs>,
    files: Vec<Arc<dyn VfsFile>>,
    owners: Vec<(GroupId, SyncTarget)>,
}

impl SyncJob {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Runs the fdatasyncs (one [`Vfs::sync_data_batch`] call): one result
    /// per file.
    pub fn run(&self) -> Vec<std::io::Result<()>> {
        let files: Vec<&dyn VfsFile> = self.files.iter().map(|f| f.as_ref()).collect();
        self.vfs.sync_data_batch(&files)
    }
}

/// Unlinks compacted segments and syncs their directories, on any thread
/// (see [`Storage::take_deletions`]).
pub struct DeletionJob {
    vfs: Arc<dyn Vfs>,
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
}

impl std::fmt::Debug for DeletionJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeletionJob").field("files", &self.files).field("dirs", &self.dirs).finish()
    }
}

impl DeletionJob {
    /// The files it unlinks.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Unlinks the files, then syncs their directories. A file or directory
    /// already gone (its group was removed meanwhile) is not an error; the
    /// others are returned, for the log: what a failure leaves behind is
    /// removed at the next open.
    pub fn run(&self) -> Vec<StorageError> {
        let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        let mut failed = Vec::new();
        for path in &self.files {
            if let Err(e) = self.vfs.remove(path).or_else(|e| if gone(&e) { Ok(()) } else { Err(e) }) {
                failed.push(io_err("remove", path)(e));
            }
        }
        for dir in &self.dirs {
            if let Err(e) = self.vfs.sync_dir(dir).or_else(|e| if gone(&e) { Ok(()) } else { Err(e) }) {
                failed.push(io_err("fsync directory", dir)(e));
            }
        }
        failed
    }
}

const NODE_ID_FILE: &str = "tarn.id";
const GROUP_ID_FILE: &str = "group.id";
const HARD_STATE_FILE: &str = "hardstate";
const PROBE_FILE: &str = ".tarn-write-probe";
/// Present in a group directory whose removal started: the group is gone,
/// whatever else a crash left behind.
const REMOVING_FILE: &str = "removing";

fn group_dir_name(group: GroupId) -> String {
    format!("group-{group:020}")
}

fn parse_group_dir_name(name: &str) -> Option<GroupId> {
    let digits = name.strip_prefix("group-")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn remove_if_exists(vfs: &dyn Vfs, path: &Path) -> std::io::Result<()> {
    match vfs.remove(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The hard-state slots while a group is recovered (before its
/// [`GroupStore`] exists): each write is fdatasynced at once.
struct RecoverySlots<'a> {
    file: &'a dyn VfsFile,
    path: &'a Path,
    /// Sequence number and watermark of the newest slot.
    seq: u64,
    synced: LogId,
}

impl RecoverySlots<'_> {
    fn write(&mut self, hs: HardState, synced: LogId) -> Result<()> {
        let seq = self.seq.wrapping_add(1);
        self.file
            .write_at(&hard_state::encode(seq, &hs, synced), hard_state::slot_offset(seq))
            .and_then(|()| self.file.sync_data())
            .map_err(io_err("write hard state", self.path))?;
        self.seq = seq;
        self.synced = synced;
        Ok(())
    }
}

impl Storage {
    /// Validates `config`, checks the data directory is writable and is this
    /// node's (writing its identity on first use). Groups are opened with
    /// [`Storage::open_group`].
    pub fn open(vfs: Arc<dyn Vfs>, config: StorageConfig) -> Result<Storage> {
        config.validate()?;
        let dir = config.dir.clone();
        let unwritable = |source| StorageError::Unwritable { path: dir.clone(), source };
        vfs.create_dir_all(&dir).map_err(unwritable)?;
        let probe = dir.join(PROBE_FILE);
        (|| -> std::io::Result<()> {
            remove_if_exists(vfs.as_ref(), &probe)?;
            let file = vfs.create(&probe)?;
            file.write_at(&[1], 0)?;
            file.sync_data()?;
            drop(file);
            vfs.remove(&probe)
        })()
        .map_err(unwritable)?;
        let identity = Identity { cluster_id: config.cluster_id, node_id: config.node_id, group: None };
        meta::check_or_write(vfs.as_ref(), &dir, &dir.join(NODE_ID_FILE), identity)?;
        Ok(Storage {
            vfs,
            config,
            groups: BTreeMap::new(),
            dirty: Vec::new(),
            flushed: Vec::new(),
            votes: Vec::new(),
            vote_files: Vec::new(),
            touched: Vec::new(),
            snapshot_nonce: 0,
        })
    }

    pub fn config(&self) -> &StorageConfig {
        &self.config
    }

    /// Groups that have a directory on disk (opened or not), ascending.
    pub fn groups_on_disk(&self) -> Result<Vec<GroupId>> {
        let names = self.vfs.list(&self.config.dir).map_err(io_err("list", &self.config.dir))?;
        let mut groups = Vec::new();
        for group in names.iter().filter_map(|n| parse_group_dir_name(n)) {
            let dir = self.config.dir.join(group_dir_name(group));
            let inside = self.vfs.list(&dir).map_err(io_err("list", &dir))?;
            if !inside.iter().any(|n| n == REMOVING_FILE) {
                groups.push(group);
            }
        }
        Ok(groups)
    }

    fn group(&self, group: GroupId) -> Result<&GroupStore> {
        self.groups.get(&group).ok_or(StorageError::UnknownGroup(group))
    }

    fn group_mut(&mut self, group: GroupId) -> Result<&mut GroupStore> {
        self.groups.get_mut(&group).ok_or(StorageError::UnknownGroup(group))
    }

    /// Opens (recovering) or creates `group`, and says what it holds.
    pub fn open_group(&mut self, group: GroupId) -> Result<Recovered> {
        if self.groups.contains_key(&group) {
            return Err(StorageError::InvalidRequest { group, reason: "group is already open".into() });
        }
        let vfs = self.vfs.as_ref();
        let dir = self.config.dir.join(group_dir_name(group));
        let parent_names = vfs.list(&self.config.dir).map_err(io_err("list", &self.config.dir))?;
        if !parent_names.iter().any(|n| *n == group_dir_name(group)) {
            vfs.create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        } else if vfs.list(&dir).map_err(io_err("list", &dir))?.iter().any(|n| n == REMOVING_FILE) {
            // A removal was cut short: finish it, then start afresh.
            delete_group_files(vfs, &dir)?;
        }
        // Always, not only after creating: a name found by listing may never
        // have been made durable (an earlier open in this process failed
        // before its fsync, or the previous process crashed before one).
        // Entries acknowledged after this open must not hang on such a name.
        vfs.sync_dir(&self.config.dir).map_err(io_err("fsync directory", &self.config.dir))?;
        let identity =
            Identity { cluster_id: self.config.cluster_id, node_id: self.config.node_id, group: Some(group) };
        meta::check_or_write(vfs, &dir, &dir.join(GROUP_ID_FILE), identity)?;

        // Snapshots: newest complete one wins; temporaries and older ones go.
        let names = vfs.list(&dir).map_err(io_err("list", &dir))?;
        let mut snaps: Vec<(Index, Term, String)> = Vec::new();
        for name in &names {
            if name.ends_with(snapshot::SNAPSHOT_TMP_SUFFIX) {
                vfs.remove(&dir.join(name)).map_err(io_err("remove", &dir.join(name)))?;
            } else if let Some((index, term)) = snapshot::parse_name(name) {
                snaps.push((index, term, name.clone()));
            }
        }
        snaps.sort();
        let snapshot_meta = match snaps.pop() {
            None => None,
            Some((index, term, name)) => {
                let path = dir.join(&name);
                let meta = snapshot::verify(vfs, &path)?;
                if meta.last_log_id != LogId::new(term, index) {
                    return Err(StorageError::Corruption {
                        path,
                        offset: 0,
                        reason: format!(
                            "snapshot holds {} but its name says {term}@{index}",
                            meta.last_log_id
                        ),
                    });
                }
                for (_, _, old) in &snaps {
                    vfs.remove(&dir.join(old)).map_err(io_err("remove", &dir.join(old)))?;
                }
                Some(meta)
            }
        };
        // Whether the group holds anything a lost hard state would betray: a
        // vote, a watermark and a term go with every log and snapshot.
        let holds_data = snapshot_meta.is_some() || names.iter().any(|n| segment::parse_name(n).is_some());

        // Hard state and watermark.
        let hs_path = dir.join(HARD_STATE_FILE);
        let hs_file: Arc<dyn VfsFile> = match vfs.open(&hs_path) {
            Ok(file) => Arc::from(file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !holds_data => {
                // A new group: the file starts with a valid slot (sequence
                // 0), so that a zeroed file is recognisable as damage.
                let mut initial = vec![0u8; HARD_STATE_FILE_BYTES as usize];
                initial[..HARD_STATE_SLOT_BYTES].copy_from_slice(&hard_state::encode(
                    0,
                    &HardState::default(),
                    LogId::ZERO,
                ));
                meta::write_file_atomic(vfs, &dir, &hs_path, &initial)?;
                Arc::from(vfs.open(&hs_path).map_err(io_err("open", &hs_path))?)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StorageError::Corruption {
                    path: hs_path,
                    offset: 0,
                    reason: "the hard state file is missing but the group holds a log or a snapshot: its \
                             term, vote and sync watermark are lost"
                        .into(),
                })
            }
            Err(e) => return Err(io_err("open", &hs_path)(e)),
        };
        let hs_len = hs_file.len().map_err(io_err("stat", &hs_path))?;
        if hs_len != HARD_STATE_FILE_BYTES {
            // Shorter: cut; longer: a write landed outside its slot (a
            // misdirected write), so the slot it was meant for is stale.
            return Err(StorageError::Corruption {
                path: hs_path,
                offset: hs_len.min(HARD_STATE_FILE_BYTES),
                reason: format!("the hard state file is {hs_len} bytes, expected {HARD_STATE_FILE_BYTES}"),
            });
        }
        let mut slots = [[0u8; HARD_STATE_SLOT_BYTES]; 2];
        for (i, slot) in slots.iter_mut().enumerate() {
            hs_file.read_at(slot, hard_state::slot_offset(i as u64)).map_err(io_err("read", &hs_path))?;
        }
        let corrupt_hs =
            |reason: String| StorageError::Corruption { path: hs_path.clone(), offset: 0, reason };
        let chosen = hard_state::choose(hard_state::decode(&slots[0]), hard_state::decode(&slots[1]))
            .map_err(|reason| corrupt_hs(reason.into()))?;
        let (hs_seq, mut hs, watermark) = match chosen {
            Some(c) => (c.seq, c.hard_state, c.synced),
            // Never written: a group of an older build that never stored a
            // hard state. With a log or a snapshot beside it, it was zeroed:
            // the vote may be lost (a double vote) and the watermark is.
            None if holds_data => return Err(corrupt_hs(
                "the hard state file holds no valid slot (zeroed?) but the group holds a log or a snapshot"
                    .into(),
            )),
            None => (0, HardState::default(), LogId::ZERO),
        };
        // Unconditionally, for the same reason as the data directory above:
        // the segment and snapshot names recovery is about to trust (and
        // acknowledge appends into) must be durable before anything is
        // acknowledged. Found by `tarn-sim --seed 50802 --profile chaos`.
        vfs.sync_dir(&dir).map_err(io_err("fsync directory", &dir))?;

        let mut slots =
            RecoverySlots { file: hs_file.as_ref(), path: &hs_path, seq: hs_seq, synced: watermark };
        let (mut log, info) = GroupLog::recover(
            self.vfs.clone(),
            dir.clone(),
            group,
            self.config.limits(),
            snapshot_meta.as_ref().map(|m| m.last_log_id),
            watermark,
            &mut |to| slots.write(hs, to),
        )?;
        // Everything recovered is durable now (recovery synced it) and the
        // core will treat it as persisted: cover it by the watermark before
        // anything is acknowledged, so no recovered entry can later be cut
        // as a torn tail.
        let watermark = log.last_durable();
        if slots.synced != watermark {
            slots.write(hs, watermark)?;
        }
        let hs_seq = slots.seq;
        if hs.commit > info.last_log_id.index {
            tracing::warn!(
                group,
                commit = hs.commit,
                last = info.last_log_id.index,
                "hard state commit is past the recovered log (async writes lost?); clamping"
            );
            hs.commit = info.last_log_id.index;
        }
        log.prepare_write_segment()?;
        let last = log.last_durable();
        self.groups.insert(
            group,
            GroupStore {
                dir,
                log,
                hs_path,
                hs_file,
                hs_seq,
                hs_staged: None,
                hs_written: hs,
                hs_unsynced: false,
                hs_durable: hs,
                hs_durable_seq: hs_seq,
                watermark_written: watermark,
                watermark_durable: watermark,
                hs_report: false,
                touched: false,
                snapshot: snapshot_meta.clone(),
                snapshot_reader: None,
                reported_log: last,
                dirty: false,
                vote_copy_owed: false,
            },
        );
        Ok(Recovered {
            group,
            hard_state: hs,
            snapshot: snapshot_meta,
            first_index: info.first_index,
            last_log_id: info.last_log_id,
            membership: info.membership,
            truncated_tail: info.truncated_tail,
        })
    }

    /// Closes `group` and deletes its files durably: its log, hard state
    /// and snapshots are gone, and opening it again starts an empty group.
    /// Crash-safe: a marker file is made durable first, and a group
    /// directory holding it counts as removed (the next open finishes the
    /// job). Staged, unflushed writes of the group are dropped.
    pub fn remove_group(&mut self, group: GroupId) -> Result<()> {
        let store = self.groups.remove(&group).ok_or(StorageError::UnknownGroup(group))?;
        self.dirty.retain(|&g| g != group);
        let GroupStore { dir, log, hs_file, snapshot_reader, .. } = store;
        drop((log, hs_file, snapshot_reader));
        let vfs = self.vfs.as_ref();
        meta::write_file_atomic(vfs, &dir, &dir.join(REMOVING_FILE), b"removing")?;
        delete_group_files(vfs, &dir)?;
        match vfs.remove_dir(&dir) {
            Ok(()) => vfs.sync_dir(&self.config.dir).map_err(io_err("fsync directory", &self.config.dir)),
            // Left empty (a file system without directory removal): it reads
            // as an empty group, which is what a removed group is.
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => Ok(()),
            Err(e) => Err(io_err("remove directory", &dir)(e)),
        }
    }

    fn mark_dirty(&mut self, group: GroupId) {
        let store = self.groups.get_mut(&group).expect("caller checked the group");
        if !store.dirty {
            store.dirty = true;
            self.dirty.push(group);
        }
    }

    /// Encodes `entries` (contiguous, terms non-decreasing) for the next
    /// flush. An entry at an index the log already holds replaces it and
    /// everything after it: that truncation happens now, durably (the
    /// watermark is lowered below it first). No other I/O. Bad input is
    /// refused and changes nothing.
    pub fn stage(&mut self, group: GroupId, entries: &[Entry]) -> Result<()> {
        let store = self.group_mut(group)?;
        if let Some(first) = entries.first() {
            store.log.check_poison()?;
            store.log.validate(entries)?;
            if first.index <= store.log.last_staged().index {
                let keep = first.index - 1;
                store.lower_watermark(LogId::new(store.log.term(keep).unwrap_or(0), keep))?;
            }
        }
        store.log.stage(entries)?;
        if !entries.is_empty() {
            self.mark_dirty(group);
        }
        Ok(())
    }

    /// Stages a hard state for the next flush (the newest staged one wins).
    pub fn stage_hard_state(&mut self, group: GroupId, hs: HardState) -> Result<()> {
        let store = self.group_mut(group)?;
        store.log.check_poison()?;
        store.hs_staged = Some(hs);
        self.mark_dirty(group);
        Ok(())
    }

    /// Writes everything staged (one write per dirty segment and hard-state
    /// file), then in sync mode fdatasyncs them all, then — if new records
    /// were synced — writes and fdatasyncs the raised watermark, and reports
    /// what became persisted: in sync mode, entries covered by a durable
    /// watermark. A failing group is poisoned and reported in `failed`; the
    /// other groups carry on.
    ///
    /// Sync mode costs two fdatasync rounds per flush that appends;
    /// [`Storage::flush_pipelined`] folds the second into the next flush.
    pub fn flush(&mut self, report: &mut FlushReport) {
        report.clear();
        self.flush_round(report);
        if self.config.write_mode == WriteMode::Sync && !self.dirty.is_empty() {
            // Only the groups whose watermark lags are dirty now: this round
            // writes and syncs their watermark slots, nothing else.
            self.flush_round(report);
        }
        self.report_flushed(report);
    }

    /// Like [`Storage::flush`], but in sync mode does one fdatasync round:
    /// it writes the staged records together with a watermark covering what
    /// the *previous* flush synced, and reports entries up to that
    /// watermark. The records synced now are reported by the next flush,
    /// whose write carries their watermark; while one is owed,
    /// [`Storage::needs_flush`] is true, and a flush with nothing staged
    /// writes only the watermark. Under steady load every flush is one
    /// batched sync; an entry waits for two. In async mode it is `flush`.
    pub fn flush_pipelined(&mut self, report: &mut FlushReport) {
        report.clear();
        self.flush_round(report);
        self.report_flushed(report);
    }

    /// Whether a flush has work even with nothing new staged: something is
    /// staged, or (sync mode) synced entries await their watermark before
    /// they can be reported.
    pub fn needs_flush(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Whether [`Storage::sync`] (or a [`Storage::begin_sync`] job) has work:
    /// unsynced writes, or (async mode) synced entries not yet covered by a
    /// durable watermark.
    pub fn needs_sync(&self) -> bool {
        self.groups.values().any(|s| {
            s.log.check_poison().is_ok()
                && (s.log.needs_sync() || s.hard_state_needs_sync(false) || s.watermark_lags())
        })
    }

    /// One write and (sync mode) fdatasync round over the dirty groups. A
    /// group whose watermark lags after it (new records synced) stays dirty.
    fn flush_round(&mut self, report: &mut FlushReport) {
        let sync = self.config.write_mode == WriteMode::Sync;
        self.flushed.clear();
        for &group in &self.dirty {
            let store = self.groups.get_mut(&group).expect("dirty groups are open");
            store.dirty = false;
            let written = store.log.write_staged().and_then(|()| store.write_hard_state(sync));
            match written {
                Ok(wrote_hard_state) => {
                    store.hs_report |= wrote_hard_state;
                    if !store.touched {
                        store.touched = true;
                        self.touched.push(group);
                    }
                    self.flushed.push(group);
                    if store.vote_copy_owed {
                        self.votes.push(group);
                    }
                }
                Err(e) => report.failed.push((group, e)),
            }
        }
        self.dirty.clear();
        if !sync {
            return;
        }
        self.sync_votes(report);
        self.sync_batch(report, true);
        for &group in &self.flushed {
            let store = self.groups.get_mut(&group).expect("flushed groups are open");
            if store.log.check_poison().is_ok() && store.watermark_lags() && !store.dirty {
                store.dirty = true;
                self.dirty.push(group);
            }
        }
    }

    /// Makes the round's new terms and votes durable in both slots: the
    /// first copies (already written) in one [`Vfs::sync_data_batch`], then
    /// the second copies, written and synced in another. Batched over groups
    /// because a node's failover elects in every group its dead peer led at
    /// once: one group at a time, 3,500 of them took two fdatasyncs each
    /// back to back (0.9 s on an idle virtual disk here), longer than the election
    /// timeout, so no candidate ever heard its grants in time (issue 17).
    /// A group whose copy fails is poisoned, reported, and leaves the round.
    fn sync_votes(&mut self, report: &mut FlushReport) {
        if self.votes.is_empty() {
            return;
        }
        for copy in 0..2 {
            self.vote_files.clear();
            let mut i = 0;
            while i < self.votes.len() {
                let group = self.votes[i];
                let store = self.groups.get_mut(&group).expect("vote groups are open");
                if copy == 1 {
                    if let Err(e) = store.write_second_vote_copy() {
                        self.vote_failed(i, e, report);
                        continue;
                    }
                }
                self.vote_files.push(store.hs_file.clone());
                i += 1;
            }
            let files: Vec<&dyn VfsFile> = self.vote_files.iter().map(|f| f.as_ref()).collect();
            let results = self.vfs.sync_data_batch(&files);
            drop(files);
            assert_eq!(results.len(), self.votes.len(), "one result per file of the batch");
            // Backwards, so that removing a failed group keeps the pairing.
            for (i, result) in results.into_iter().enumerate().rev() {
                let store = self.groups.get_mut(&self.votes[i]).expect("vote groups are open");
                let (seq, hs, synced) = (store.hs_seq, store.hs_written, store.watermark_written);
                if let Err(e) = store.finish_hard_state_sync(seq, hs, synced, result) {
                    self.vote_failed(i, e, report);
                }
            }
        }
        self.votes.clear();
    }

    /// Drops the `i`th group of [`Storage::votes`] from the round: its vote
    /// copy failed (the group is poisoned).
    fn vote_failed(&mut self, i: usize, e: StorageError, report: &mut FlushReport) {
        let group = self.votes.remove(i);
        self.flushed.retain(|&g| g != group);
        report.failed.push((group, e));
    }

    /// Reports, for every group the current flush touched, what became
    /// persisted.
    fn report_flushed(&mut self, report: &mut FlushReport) {
        let sync = self.config.write_mode == WriteMode::Sync;
        for group in self.touched.drain(..) {
            let store = self.groups.get_mut(&group).expect("touched groups are open");
            store.touched = false;
            if store.log.check_poison().is_err() {
                store.hs_report = false;
                continue;
            }
            let up_to = if sync {
                // An acknowledgement is a promise recovery keeps only up to
                // a durable watermark — or up to the log's base, which a
                // durable snapshot covers (a log compacted or replaced while
                // a watermark was owed).
                debug_assert!(store.watermark_durable.index <= store.log.last_durable().index);
                let base = store.log.base();
                if store.watermark_durable.index >= base.index {
                    store.watermark_durable
                } else {
                    base
                }
            } else {
                store.log.last_written()
            };
            if up_to != store.reported_log {
                store.reported_log = up_to;
                report.log.push(Persisted { group, up_to });
            }
            if !std::mem::take(&mut store.hs_report) {
                continue;
            }
            if !store.hs_unsynced || !sync || store.hs_durable == store.hs_written {
                report.hard_states.push((group, store.hs_written));
            } else {
                // Only commit changed and was left unsynced: term and vote
                // are durable as reported.
                let durable = HardState { commit: store.hs_durable.commit, ..store.hs_written };
                report.hard_states.push((group, durable));
            }
        }
    }

    /// The sync phase of a flush round: every file the round wrote is
    /// fdatasynced in one [`Vfs::sync_data_batch`] call (which the real file
    /// system overlaps). A group's older segment, when a flush rolled over,
    /// was already synced by the write itself, before the newer segment was
    /// written (see [`GroupLog::write_staged`]).
    fn sync_batch(&mut self, report: &mut FlushReport, vote_only: bool) {
        let job = self.begin_sync_of_flushed(report, vote_only);
        let results = job.run();
        self.finish_sync(job, results, report);
    }

    /// Builds a [`SyncJob`] for the groups in `self.flushed`.
    fn begin_sync_of_flushed(&mut self, report: &mut FlushReport, vote_only: bool) -> SyncJob {
        let mut job = SyncJob { vfs: self.vfs.clone(), files: Vec::new(), owners: Vec::new() };
        for &group in &self.flushed {
            let store = self.groups.get_mut(&group).expect("flushed groups are open");
            if let Err(e) = store.log.sync_all_but_newest() {
                report.failed.push((group, e));
                continue;
            }
            if let Some(log_job) = store.log.begin_sync_job() {
                job.files.push(log_job.file.clone());
                job.owners.push((group, SyncTarget::Log(log_job)));
            }
            if store.hard_state_needs_sync(vote_only) {
                job.files.push(store.hs_file.clone());
                job.owners.push((
                    group,
                    SyncTarget::HardState(store.hs_seq, store.hs_written, store.watermark_written),
                ));
            }
        }
        job
    }

    /// Starts a sync of everything written so far, to run on any thread
    /// ([`SyncJob::run`]) while appends go on — async mode's background
    /// fdatasync. Groups whose log a previous job made durable first get a
    /// slot raising their watermark to it, synced by this job, so the
    /// watermark trails the background syncs by one (call again while
    /// [`Storage::needs_sync`]). Hand the results to
    /// [`Storage::finish_sync`]. Failures of the (rare, in-line) ordering
    /// syncs and of slot writes are reported in `report.failed`.
    pub fn begin_sync(&mut self, report: &mut FlushReport) -> SyncJob {
        report.clear();
        self.begin_sync_inner(report)
    }

    fn begin_sync_inner(&mut self, report: &mut FlushReport) -> SyncJob {
        self.flushed.clear();
        for (&group, store) in self.groups.iter_mut() {
            if store.log.check_poison().is_err() {
                continue;
            }
            if store.watermark_lags() {
                let synced = store.log.last_durable();
                if let Err(e) = store.write_slot(store.hs_written, synced) {
                    report.failed.push((group, e));
                    continue;
                }
            }
            if store.log.needs_sync() || store.hard_state_needs_sync(false) {
                self.flushed.push(group);
            }
        }
        self.begin_sync_of_flushed(report, false)
    }

    /// Records what a [`SyncJob`] made durable; a failed file poisons its
    /// group (reported in `report.failed`, once per group).
    pub fn finish_sync(&mut self, job: SyncJob, results: Vec<std::io::Result<()>>, report: &mut FlushReport) {
        assert_eq!(results.len(), job.owners.len(), "one result per file of the job");
        for ((group, target), result) in job.owners.into_iter().zip(results) {
            let Some(store) = self.groups.get_mut(&group) else {
                continue;
            };
            let already_failed = store.log.check_poison().is_err();
            let outcome = match target {
                SyncTarget::Log(log_job) => store.log.finish_sync_job(&log_job, result),
                SyncTarget::HardState(seq, hs, synced) => {
                    store.finish_hard_state_sync(seq, hs, synced, result)
                }
            };
            if let Err(e) = outcome {
                if !already_failed {
                    report.failed.push((group, e));
                }
            }
        }
    }

    /// Makes everything written durable, the watermark included (async
    /// mode's fdatasync on demand, and shutdown): one round syncs the logs,
    /// a second the watermark that covers them. Reports groups whose sync
    /// failed.
    pub fn sync(&mut self, report: &mut FlushReport) {
        report.clear();
        for _ in 0..2 {
            let job = self.begin_sync_inner(report);
            if job.is_empty() {
                break;
            }
            let results = job.run();
            self.finish_sync(job, results, report);
        }
    }

    /// Writes and syncs everything staged, then drops the engine.
    pub fn close(mut self) -> Result<()> {
        let mut report = FlushReport::default();
        self.flush(&mut report);
        if let Some((_, e)) = report.failed.pop() {
            return Err(e);
        }
        self.sync(&mut report);
        match report.failed.pop() {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }

    /// Removes entries `from..` durably (see [`GroupLog::truncate_suffix`]),
    /// lowering the watermark below them first.
    pub fn truncate_suffix(&mut self, group: GroupId, from: Index) -> Result<()> {
        let store = self.group_mut(group)?;
        store.log.check_poison()?;
        if from <= store.log.last_staged().index && from >= store.log.first_index() {
            let keep = from - 1;
            store.lower_watermark(LogId::new(store.log.term(keep).unwrap_or(0), keep))?;
        }
        store.log.truncate_suffix(from)?;
        if store.reported_log.index >= from {
            store.reported_log = store.log.last_durable();
        }
        Ok(())
    }

    /// Deletes whole segments covered by `upto` (normally the durable
    /// snapshot's last log id). Keeps the segment holding `upto.index + 1`.
    pub fn compact(&mut self, group: GroupId, upto: LogId) -> Result<()> {
        let store = self.group_mut(group)?;
        store.log.check_poison()?;
        if store.log.replaced_by(upto) {
            store.lower_watermark(upto)?;
        }
        // `reported_log` stays: entries synced but not yet reported (their
        // watermark is owed) are still reported by the next flush, which
        // also covers a log compacted whole (see `report_flushed`).
        store.log.compact(upto)?;
        Ok(())
    }

    /// The compacted segments of every group still to unlink, with the
    /// directories to sync after, as a job for any thread (`None`: nothing
    /// to delete). Compaction only renamed them (see [`GroupLog::compact`]);
    /// a job never run, or cut short by a crash, leaves files that the next
    /// open removes.
    pub fn take_deletions(&mut self) -> Option<DeletionJob> {
        let mut job = DeletionJob { vfs: self.vfs.clone(), files: Vec::new(), dirs: Vec::new() };
        for store in self.groups.values_mut() {
            let files = store.log.take_deletions();
            if !files.is_empty() {
                job.files.extend(files);
                job.dirs.push(store.log.dir().to_path_buf());
            }
        }
        (!job.files.is_empty()).then_some(job)
    }

    /// Appends entries `lo..hi` to `out`, stopping after `max_bytes` of
    /// records (always at least one entry).
    pub fn entries(
        &self,
        group: GroupId,
        lo: Index,
        hi: Index,
        max_bytes: u64,
        out: &mut Vec<Entry>,
    ) -> Result<()> {
        self.group(group)?.log.read(lo, hi, max_bytes, out)
    }

    /// The term of `index` if the log holds it (or it is the snapshot's).
    pub fn term(&self, group: GroupId, index: Index) -> Result<Option<Term>> {
        Ok(self.group(group)?.log.term(index))
    }

    /// First index of the log, and the last staged / written / durable ids.
    pub fn log_state(&self, group: GroupId) -> Result<LogState> {
        let log = &self.group(group)?.log;
        Ok(LogState {
            first_index: log.first_index(),
            last_staged: log.last_staged(),
            last_written: log.last_written(),
            last_durable: log.last_durable(),
        })
    }

    /// Durably stores a snapshot in one piece (see [`Storage::snapshot_writer`]
    /// and [`Storage::finish_snapshot`], which this wraps).
    pub fn write_snapshot(&mut self, group: GroupId, meta: &SnapshotMeta, data: &[u8]) -> Result<()> {
        let mut writer = self.snapshot_writer(group, meta.last_log_id)?;
        writer.write_chunk(data)?;
        self.finish_snapshot(group, writer, meta)
    }

    /// Starts a snapshot of `group` covering the log up to `snapshot`, to be
    /// filled chunk by chunk ([`SnapshotWriter::write_chunk`], on any
    /// thread), made durable with [`SnapshotWriter::finish`] (which takes the
    /// metadata: a follower learns it only at install; fdatasync, rename,
    /// directory sync — also on any thread) and recorded with
    /// [`Storage::commit_snapshot`].
    /// Dropping the writer abandons it (its temporary file is removed). The
    /// data is bounded by `max_snapshot_size_bytes`.
    pub fn snapshot_writer(&mut self, group: GroupId, snapshot: LogId) -> Result<SnapshotWriter<'static>> {
        let vfs = self.vfs.clone();
        let max_data_bytes = self.config.max_snapshot_size_bytes;
        self.snapshot_nonce += 1;
        let nonce = self.snapshot_nonce;
        let store = self.group_mut(group)?;
        store.log.check_poison()?;
        check_snapshot_not_older(group, store.snapshot.as_ref(), snapshot)?;
        SnapshotWriter::create_shared(vfs, &store.dir, snapshot, nonce, max_data_bytes)
    }

    /// [`SnapshotWriter::finish`] then [`Storage::commit_snapshot`], on this thread.
    pub fn finish_snapshot(
        &mut self,
        group: GroupId,
        writer: SnapshotWriter<'static>,
        meta: &SnapshotMeta,
    ) -> Result<()> {
        self.group(group)?;
        let file = writer.finish(meta).map_err(|e| with_group(e, group))?;
        self.commit_snapshot(group, file)
    }

    /// Records a finished snapshot as `group`'s current one: older snapshot
    /// files are removed (durably), chunk reads of the previous one answer
    /// `None` from now on, and — if the snapshot is past the log's end or
    /// disagrees with it — the log is discarded (Raft §7). Covered segments
    /// are left for [`Storage::compact`]. A snapshot older than the current
    /// one is refused and its file removed.
    pub fn commit_snapshot(&mut self, group: GroupId, file: SnapshotFile) -> Result<()> {
        #[cfg(feature = "planted-bugs")]
        let drop_at_last =
            self.config.planted_bug == Some(tarn_core::PlantedBug::SnapshotAtLastEntryDropsLog);
        #[cfg(not(feature = "planted-bugs"))]
        let drop_at_last = false;
        let vfs = self.vfs.clone();
        let store = self.group_mut(group)?;
        store.log.check_poison()?;
        if file.path.parent() != Some(store.dir.as_path()) {
            return Err(StorageError::InvalidRequest {
                group,
                reason: format!("snapshot file {} is not in this group's directory", file.path.display()),
            });
        }
        let meta = file.meta;
        if let Err(e) = check_snapshot_not_older(group, store.snapshot.as_ref(), meta.last_log_id) {
            let current = store.snapshot.as_ref().map(|m| m.last_log_id);
            if current != Some(meta.last_log_id) {
                remove_if_exists(vfs.as_ref(), &file.path).map_err(io_err("remove", &file.path))?;
                vfs.sync_dir(&store.dir).map_err(io_err("fsync directory", &store.dir))?;
            }
            return Err(e);
        }
        let keep = file.path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        let names = vfs.list(&store.dir).map_err(io_err("list", &store.dir))?;
        let mut removed = false;
        // Only older ones: a newer snapshot finished on another thread may
        // already sit here waiting for its own commit.
        let older = |n: &str| {
            snapshot::parse_name(n).is_some_and(|(index, _)| index <= meta.last_log_id.index) && n != keep
        };
        for name in names.iter().filter(|n| older(n)) {
            let old = store.dir.join(name);
            vfs.remove(&old).map_err(io_err("remove", &old))?;
            removed = true;
        }
        if removed {
            vfs.sync_dir(&store.dir).map_err(io_err("fsync directory", &store.dir))?;
        }
        store.snapshot = Some(meta.clone());
        store.snapshot_reader = None;
        let last = meta.last_log_id;
        // Past the log's end or disagreeing with it: the log goes (Raft §7).
        // A snapshot of the last entry keeps the log: the core may still
        // fetch the entries it keeps before the snapshot for slow followers.
        let past_end = last.index > store.log.last_staged().index
            || (drop_at_last && last.index == store.log.last_staged().index);
        if past_end || store.log.term(last.index) != Some(last.term) {
            // The watermark must not outlive the entries it vouches for.
            store.lower_watermark(last)?;
            store.log.compact(last)?;
            store.reported_log = store.log.last_durable();
        }
        Ok(())
    }

    /// The newest snapshot's metadata, without reading its data.
    pub fn snapshot_meta(&self, group: GroupId) -> Result<Option<SnapshotMeta>> {
        Ok(self.group(group)?.snapshot.clone())
    }

    fn snapshot_path(store: &GroupStore, meta: &SnapshotMeta) -> PathBuf {
        store.dir.join(snapshot::file_name(meta.last_log_id.index, meta.last_log_id.term))
    }

    /// A reader of `group`'s current snapshot (restoring a state machine at
    /// start-up), or `None` if it has none. The checksum is checked as the
    /// data streams: the final chunk comes only if the whole file matched.
    pub fn snapshot_reader(&self, group: GroupId) -> Result<Option<SnapshotReader>> {
        let store = self.group(group)?;
        let Some(meta) = &store.snapshot else {
            return Ok(None);
        };
        SnapshotReader::open(self.vfs.as_ref(), &Self::snapshot_path(store, meta)).map(Some)
    }

    /// The chunk at data offset `offset` (at most `max_bytes`) of `group`'s
    /// snapshot `snapshot`, and whether it is the last one; `None` if
    /// `snapshot` is no longer the group's current snapshot. Reads of one
    /// transfer in ascending order share one running checksum; the last
    /// chunk is returned only after the whole file's checksum matched.
    pub fn read_snapshot_chunk(
        &mut self,
        group: GroupId,
        snapshot: LogId,
        offset: u64,
        max_bytes: usize,
    ) -> Result<Option<(bytes::Bytes, bool)>> {
        let vfs = self.vfs.clone();
        let store = self.group_mut(group)?;
        let Some(meta) = &store.snapshot else {
            return Ok(None);
        };
        if meta.last_log_id != snapshot {
            return Ok(None);
        }
        // One reader per snapshot, shared by every transfer of it.
        if store.snapshot_reader.as_ref().is_none_or(|r| r.meta().last_log_id != snapshot) {
            let path = Self::snapshot_path(store, meta);
            store.snapshot_reader = Some(SnapshotReader::open(vfs.as_ref(), &path)?);
        }
        let reader = store.snapshot_reader.as_mut().expect("opened above");
        let (data, done) = reader.read_chunk_at(offset, max_bytes).map_err(|e| with_group(e, group))?;
        Ok(Some((bytes::Bytes::from(data), done)))
    }

    /// Loads and verifies the newest snapshot whole (bounded by
    /// `max_snapshot_size_bytes`).
    pub fn read_snapshot(&self, group: GroupId) -> Result<Option<(SnapshotMeta, Vec<u8>)>> {
        let Some(mut reader) = self.snapshot_reader(group)? else {
            return Ok(None);
        };
        let max = self.config.max_snapshot_size_bytes;
        if reader.data_len() > max {
            return Err(StorageError::InvalidRequest {
                group,
                reason: format!(
                    "snapshot {} holds {} bytes, above max_snapshot_size_bytes {max}; read it in chunks",
                    reader.meta().last_log_id,
                    reader.data_len()
                ),
            });
        }
        let mut data = Vec::with_capacity(reader.data_len() as usize);
        while let Some((chunk, _)) = reader.next_chunk(1 << 20)? {
            data.extend_from_slice(&chunk);
        }
        Ok(Some((reader.meta().clone(), data)))
    }
}

/// Deletes every file of a group directory, the removal marker last, each
/// step durable (see [`Storage::remove_group`]).
fn delete_group_files(vfs: &dyn Vfs, dir: &Path) -> Result<()> {
    let names = vfs.list(dir).map_err(io_err("list", dir))?;
    for name in names.iter().filter(|n| *n != REMOVING_FILE) {
        let path = dir.join(name);
        remove_if_exists(vfs, &path).map_err(io_err("remove", &path))?;
    }
    vfs.sync_dir(dir).map_err(io_err("fsync directory", dir))?;
    let marker = dir.join(REMOVING_FILE);
    remove_if_exists(vfs, &marker).map_err(io_err("remove", &marker))?;
    vfs.sync_dir(dir).map_err(io_err("fsync directory", dir))
}

/// Fills in the group of a request error raised below the engine.
fn with_group(e: StorageError, group: GroupId) -> StorageError {
    match e {
        StorageError::InvalidRequest { reason, .. } => StorageError::InvalidRequest { group, reason },
        other => other,
    }
}

fn check_snapshot_not_older(group: GroupId, current: Option<&SnapshotMeta>, snapshot: LogId) -> Result<()> {
    match current {
        Some(current) if current.last_log_id.index > snapshot.index => Err(StorageError::InvalidRequest {
            group,
            reason: format!("snapshot at {snapshot} is older than the stored one at {}", current.last_log_id),
        }),
        _ => Ok(()),
    }
}

/// Where a group's log stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogState {
    pub first_index: Index,
    pub last_staged: LogId,
    pub last_written: LogId,
    pub last_durable: LogId,
}
