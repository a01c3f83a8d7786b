//! One group's log: a run of fixed-size segment files, an in-memory index
//! (record offset per entry, term runs) rebuilt at open, a reusable staging
//! buffer for appends, and the recovery scan.
//!
//! Invariants (asserted):
//! - segments are contiguous: `segments[k+1].first_index ==
//!   segments[k].first_index + segments[k].offsets.len()`;
//! - `base.index + 1 == segments[0].first_index` when there are segments;
//! - `last_durable <= last_written <= last_staged` (by index);
//! - on disk, a segment holds a valid record prefix, then at most one partial
//!   record (a torn write, or a record being zeroed), then zeros. Every write
//!   keeps this true even if it is torn — truncation zeroes records from the
//!   last one backwards, each back to front — which is what lets recovery
//!   call anything else corruption;
//! - a segment is first written only once every earlier segment is durable
//!   (`write_staged` syncs them first), so unsynced bytes only ever sit in
//!   the newest written segment, and valid records in a later segment prove
//!   the earlier ones complete: a gap or damage before them is corruption.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tarn_core::{Entry, EntryPayload, GroupId, Index, LogId, Membership, Term};

use super::error::{io_err, Result, StorageError};
use super::record::{self, RECORD_ALIGNMENT_BYTES, RECORD_HEADER_BYTES};
use super::segment::{self, SEGMENT_DELETED_SUFFIX, SEGMENT_HEADER_BYTES, SEGMENT_TMP_SUFFIX};
use crate::vfs::{Vfs, VfsFile};

/// Zeroing writes are at most this big (a static buffer, no allocation).
const ZERO_CHUNK_BYTES: usize = 64 * 1024;
static ZEROS: [u8; ZERO_CHUNK_BYTES] = [0u8; ZERO_CHUNK_BYTES];

#[derive(Debug)]
struct Segment {
    first_index: Index,
    /// Term of entry `first_index - 1` (recorded in the header).
    prev_term: Term,
    path: PathBuf,
    /// `None` while the segment exists only in the staging area.
    file: Option<Arc<dyn VfsFile>>,
    capacity_bytes: u64,
    /// Byte offset of the record of entry `first_index + i` (staged ones too).
    offsets: Vec<u32>,
    /// End of the last staged record.
    end_bytes: u64,
    /// End of what has been handed to the OS.
    written_bytes: u64,
}

impl Segment {
    fn next_index(&self) -> Index {
        self.first_index + self.offsets.len() as u64
    }

    /// End offset of the record of `index` (which must be in this segment).
    fn record_end(&self, index: Index) -> u64 {
        let i = (index - self.first_index) as usize;
        match self.offsets.get(i + 1) {
            Some(&next) => next as u64,
            None => self.end_bytes,
        }
    }
}

/// A run of staged bytes bound for one contiguous range of one segment.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    segment_first_index: Index,
    file_offset: u64,
    buf_start: usize,
    buf_end: usize,
}

#[derive(Debug, Clone)]
struct Poison {
    op: &'static str,
    path: PathBuf,
    cause: String,
}

/// Knobs a log needs (copied from the storage config).
#[derive(Debug, Clone, Copy)]
pub struct LogLimits {
    pub segment_size_bytes: u64,
    pub max_entry_size_bytes: u32,
    /// Each flush's write of at least this many bytes is padded to end on a
    /// multiple of this (0: off).
    pub write_alignment_bytes: u64,
}

/// What recovery found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogRecovery {
    pub first_index: Index,
    pub last_log_id: LogId,
    /// The newest membership entry in the log, if any.
    pub membership: Option<(LogId, Membership)>,
    /// A torn tail that was cut off: (file, offset).
    pub truncated_tail: Option<(PathBuf, u64)>,
    /// Segment files removed because they held nothing recoverable.
    pub removed_segments: Vec<PathBuf>,
}

#[derive(Debug)]
pub struct GroupLog {
    group: GroupId,
    dir: PathBuf,
    vfs: Arc<dyn Vfs>,
    limits: LogLimits,
    segments: VecDeque<Segment>,
    /// The entry just before the first one in the log (snapshot or zero).
    base: LogId,
    /// (first index, term) of each run of equal terms, ascending.
    term_runs: Vec<(Index, Term)>,
    last_staged: LogId,
    last_written: LogId,
    last_durable: LogId,
    buf: Vec<u8>,
    chunks: Vec<Chunk>,
    /// First indexes of segments written since their last sync.
    unsynced: Vec<Index>,
    /// Bumped whenever entries are removed from the end (truncation, reset),
    /// so a sync job begun before cannot vouch for entries written after.
    generation: u64,
    /// The segment a background sync job is syncing, until it finishes.
    in_flight_sync: Option<Index>,
    poison: Option<Poison>,
    /// Compacted segments renamed for deletion and not yet handed out by
    /// [`GroupLog::take_deletions`].
    doomed: Vec<PathBuf>,
}

/// One segment fdatasync that can run on any thread (see
/// [`GroupLog::begin_sync_job`]).
#[derive(Debug, Clone)]
pub struct LogSyncJob {
    pub file: Arc<dyn VfsFile>,
    segment_first_index: Index,
    target: LogId,
    generation: u64,
}

impl GroupLog {
    /// An empty log whose next entry is `base.index + 1`.
    pub fn new(vfs: Arc<dyn Vfs>, dir: PathBuf, group: GroupId, limits: LogLimits, base: LogId) -> GroupLog {
        GroupLog {
            group,
            dir,
            vfs,
            limits,
            segments: VecDeque::new(),
            base,
            term_runs: Vec::new(),
            last_staged: base,
            last_written: base,
            last_durable: base,
            buf: Vec::new(),
            chunks: Vec::new(),
            unsynced: Vec::new(),
            generation: 0,
            in_flight_sync: None,
            poison: None,
            doomed: Vec::new(),
        }
    }

    /// The entry just before the first one in the log: zero, or what a
    /// snapshot covers.
    pub fn base(&self) -> LogId {
        self.base
    }

    pub fn first_index(&self) -> Index {
        self.segments.front().map_or(self.base.index + 1, |s| s.first_index)
    }

    pub fn last_staged(&self) -> LogId {
        self.last_staged
    }

    pub fn last_written(&self) -> LogId {
        self.last_written
    }

    pub fn last_durable(&self) -> LogId {
        self.last_durable
    }

    pub fn has_staged(&self) -> bool {
        !self.chunks.is_empty()
    }

    pub fn needs_sync(&self) -> bool {
        !self.unsynced.is_empty()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    pub fn check_poison(&self) -> Result<()> {
        match &self.poison {
            None => Ok(()),
            Some(p) => Err(StorageError::Poisoned {
                group: self.group,
                op: p.op,
                path: p.path.clone(),
                cause: p.cause.clone(),
            }),
        }
    }

    pub(crate) fn poison(&mut self, op: &'static str, path: &Path, cause: std::io::Error) -> StorageError {
        if self.poison.is_none() {
            self.poison = Some(Poison { op, path: path.to_path_buf(), cause: cause.to_string() });
        }
        self.check_poison().expect_err("just poisoned")
    }

    fn invalid(&self, reason: String) -> StorageError {
        StorageError::InvalidRequest { group: self.group, reason }
    }

    /// The term of `index`, if the log (or its base) knows it.
    pub fn term(&self, index: Index) -> Option<Term> {
        if index == self.base.index {
            return Some(self.base.term);
        }
        if index < self.first_index() || index > self.last_staged.index {
            return None;
        }
        let run = self.term_runs.partition_point(|&(start, _)| start <= index);
        debug_assert!(run > 0, "term runs cover the log");
        Some(self.term_runs[run - 1].1)
    }

    fn segment_position(&self, index: Index) -> usize {
        let k = self.segments.partition_point(|s| s.first_index <= index);
        debug_assert!(k > 0, "index {index} is at or after the first segment");
        k - 1
    }

    fn segment_path(&self, first_index: Index) -> PathBuf {
        self.dir.join(segment::file_name(first_index))
    }

    // ----- append path -------------------------------------------------

    /// Checks `entries` against the log without changing anything.
    pub(crate) fn validate(&self, entries: &[Entry]) -> Result<()> {
        let first = &entries[0];
        if first.index > self.last_staged.index + 1 {
            return Err(self.invalid(format!(
                "append at index {} leaves a gap after the last index {}",
                first.index, self.last_staged.index
            )));
        }
        if first.index <= self.base.index {
            return Err(self.invalid(format!(
                "append at index {} would overwrite index {} which is compacted into a snapshot",
                first.index, self.base.index
            )));
        }
        let prev_term = self.term(first.index - 1).unwrap_or(0);
        if first.term < prev_term {
            return Err(self.invalid(format!(
                "entry {}@{} has a lower term than the entry before it (term {prev_term})",
                first.term, first.index
            )));
        }
        let max_payload = self.limits.max_entry_size_bytes as u64;
        for pair in entries.windows(2) {
            if pair[1].index != pair[0].index + 1 || pair[1].term < pair[0].term {
                return Err(self.invalid(format!(
                    "entries must be contiguous with non-decreasing terms: {} then {}",
                    pair[0].log_id(),
                    pair[1].log_id()
                )));
            }
        }
        for entry in entries {
            let payload = record::payload_size_bytes(entry);
            if payload > max_payload {
                return Err(self.invalid(format!(
                    "entry {} is {payload} bytes, more than max_entry_size_bytes {max_payload}",
                    entry.log_id()
                )));
            }
        }
        Ok(())
    }

    /// Encodes `entries` into the staging buffer. An entry at an index the
    /// log already holds replaces it and everything after it (the conflicting
    /// suffix is truncated first, durably).
    pub fn stage(&mut self, entries: &[Entry]) -> Result<()> {
        self.check_poison()?;
        if entries.is_empty() {
            return Ok(());
        }
        self.validate(entries)?;
        if entries[0].index <= self.last_staged.index {
            self.truncate_suffix(entries[0].index)?;
        }
        debug_assert_eq!(entries[0].index, self.last_staged.index + 1);
        for entry in entries {
            self.stage_one(entry);
        }
        Ok(())
    }

    fn stage_one(&mut self, entry: &Entry) {
        let buf_start = self.buf.len();
        let size = record::encode(entry, &mut self.buf) as u64;
        let needs_segment = match self.segments.back() {
            None => true,
            Some(s) => s.end_bytes + size > s.capacity_bytes,
        };
        if needs_segment {
            let path = self.segment_path(entry.index);
            self.segments.push_back(Segment {
                first_index: entry.index,
                prev_term: self.last_staged.term,
                path,
                file: None,
                capacity_bytes: self.limits.segment_size_bytes,
                offsets: Vec::new(),
                end_bytes: SEGMENT_HEADER_BYTES,
                written_bytes: SEGMENT_HEADER_BYTES,
            });
        }
        let seg = self.segments.back_mut().expect("a segment was just ensured");
        assert!(
            seg.end_bytes + size <= seg.capacity_bytes,
            "config validation makes every entry fit a segment"
        );
        debug_assert_eq!(seg.next_index(), entry.index);
        let file_offset = seg.end_bytes;
        seg.offsets.push(file_offset as u32);
        seg.end_bytes += size;
        let buf_end = self.buf.len();
        match self.chunks.last_mut() {
            Some(c) if c.segment_first_index == seg.first_index && c.buf_end == buf_start => {
                c.buf_end = buf_end
            }
            _ => self.chunks.push(Chunk {
                segment_first_index: seg.first_index,
                file_offset,
                buf_start,
                buf_end,
            }),
        }
        if self.term_runs.last().map(|&(_, t)| t) != Some(entry.term) {
            self.term_runs.push((entry.index, entry.term));
        }
        self.last_staged = entry.log_id();
    }

    /// Creates a segment file durably (temp name, size, header, sync, rename,
    /// directory sync). Errors poison the group.
    fn create_segment_file(&mut self, position: usize) -> Result<()> {
        let first_index = self.segments[position].first_index;
        let prev_term = self.segments[position].prev_term;
        let capacity = self.segments[position].capacity_bytes;
        let path = self.segments[position].path.clone();
        let tmp = self.dir.join(format!("{first_index:020}{SEGMENT_TMP_SUFFIX}"));
        let file = (|| -> std::io::Result<Box<dyn VfsFile>> {
            match self.vfs.remove(&tmp) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            let file = self.vfs.create(&tmp)?;
            file.truncate(capacity)?;
            file.write_at(&segment::encode_header(self.group, first_index, prev_term), 0)?;
            file.sync_data()?;
            self.vfs.rename(&tmp, &path)?;
            self.vfs.sync_dir(&self.dir)?;
            Ok(file)
        })();
        match file {
            Ok(file) => {
                self.segments[position].file = Some(Arc::from(file));
                Ok(())
            }
            Err(e) => Err(self.poison("create segment", &path, e)),
        }
    }

    /// Hands every staged byte to the OS: one `write_at` per segment touched,
    /// each preceded by an fdatasync of the earlier segments still unsynced
    /// (only when the flush rolled over; see
    /// [`GroupLog::sync_segments_before`]). Errors poison the group.
    pub fn write_staged(&mut self) -> Result<()> {
        self.check_poison()?;
        self.pad_last_chunk();
        for c in 0..self.chunks.len() {
            let chunk = self.chunks[c];
            let position = self.segment_position(chunk.segment_first_index);
            debug_assert_eq!(self.segments[position].first_index, chunk.segment_first_index);
            self.sync_segments_before(chunk.segment_first_index)?;
            if self.segments[position].file.is_none() {
                self.create_segment_file(position)?;
            }
            let seg = &self.segments[position];
            let file = seg.file.as_ref().expect("created above");
            debug_assert_eq!(seg.written_bytes, chunk.file_offset);
            if let Err(e) = file.write_at(&self.buf[chunk.buf_start..chunk.buf_end], chunk.file_offset) {
                let path = seg.path.clone();
                return Err(self.poison("write", &path, e));
            }
            let seg = &mut self.segments[position];
            seg.written_bytes = chunk.file_offset + (chunk.buf_end - chunk.buf_start) as u64;
            if !self.unsynced.contains(&seg.first_index) {
                self.unsynced.push(seg.first_index);
            }
        }
        self.chunks.clear();
        self.buf.clear();
        self.last_written = self.last_staged;
        Ok(())
    }

    /// fdatasyncs, oldest first, every written segment before the one that
    /// starts at `first_index` that may hold unsynced bytes (including one a
    /// background [`LogSyncJob`] may still be syncing). Called before the
    /// first write into a segment: the file system does not order writes to
    /// different files, so without this a crash (or a failed fsync, which
    /// drops the file's dirty pages) can keep the new segment's records while
    /// losing or tearing the old segment's tail — a gap, or damage followed
    /// by valid records, which recovery must refuse as corruption because
    /// the same picture arises when synced data is damaged. Costs one
    /// fdatasync per segment roll, which a sync-mode flush paid anyway.
    /// Errors poison the group.
    fn sync_segments_before(&mut self, first_index: Index) -> Result<()> {
        if let Some(in_flight) = self.in_flight_sync.filter(|&f| f < first_index) {
            // Synced here, so the job's result adds nothing about ordering.
            self.in_flight_sync = None;
            let present = self.segments.iter().any(|s| s.first_index == in_flight);
            if present && !self.unsynced.contains(&in_flight) {
                self.unsynced.push(in_flight);
            }
        }
        let mut earlier: Vec<Index> = self.unsynced.iter().copied().filter(|&f| f < first_index).collect();
        earlier.sort_unstable();
        for f in earlier {
            let seg = &self.segments[self.segment_position(f)];
            debug_assert_eq!(seg.first_index, f);
            let file = seg.file.as_ref().expect("an unsynced segment was written, so it exists");
            if let Err(e) = file.sync_data() {
                let path = seg.path.clone();
                return Err(self.poison("fdatasync", &path, e));
            }
            self.unsynced.retain(|&u| u != f);
        }
        Ok(())
    }

    /// Ends the staged bytes with a padding record so the write ends on a
    /// `write_alignment_bytes` boundary (if it fits in the segment): the next
    /// flush then starts on a fresh page instead of rewriting one that the
    /// kernel may be writing back — measured ~2x for small async appends.
    fn pad_last_chunk(&mut self) {
        let align = self.limits.write_alignment_bytes;
        let Some(&last) = self.chunks.last() else {
            return;
        };
        if align == 0 {
            return;
        }
        let end = last.file_offset + (last.buf_end - last.buf_start) as u64;
        // Small writes are left alone: padding them would waste most of the
        // segment, and they are not where the page contention costs.
        if ((self.buf.len() - self.chunks[0].buf_start) as u64) < align {
            return;
        }
        let mut pad = (align - end % align) % align;
        if pad == 0 {
            return;
        }
        if pad < RECORD_HEADER_BYTES as u64 {
            pad += align;
        }
        let position = self.segment_position(last.segment_first_index);
        let seg = &mut self.segments[position];
        if end + pad > seg.capacity_bytes {
            return;
        }
        debug_assert_eq!(seg.end_bytes, end, "the last chunk ends the segment's staged bytes");
        debug_assert_eq!(last.buf_end, self.buf.len(), "the last chunk ends the buffer");
        record::encode_padding(pad as usize, &mut self.buf);
        seg.end_bytes += pad;
        self.chunks.last_mut().expect("checked above").buf_end = self.buf.len();
    }

    /// fdatasyncs every segment written since its last sync. Errors poison.
    pub fn sync(&mut self) -> Result<()> {
        self.check_poison()?;
        // A segment handed to a background sync job may not be synced yet:
        // sync it here too (first: it is the oldest), so "everything written
        // is durable" holds when this returns.
        if let Some(first_index) = self.in_flight_sync.take() {
            let present = self.segments.iter().any(|s| s.first_index == first_index);
            if present && !self.unsynced.contains(&first_index) {
                self.unsynced.insert(0, first_index);
            }
        }
        for u in 0..self.unsynced.len() {
            let first_index = self.unsynced[u];
            let position = self.segment_position(first_index);
            let seg = &self.segments[position];
            debug_assert_eq!(seg.first_index, first_index);
            let file = seg.file.as_ref().expect("an unsynced segment was written, so it exists");
            if let Err(e) = file.sync_data() {
                let path = seg.path.clone();
                return Err(self.poison("fdatasync", &path, e));
            }
        }
        self.unsynced.clear();
        self.last_durable = self.last_written;
        Ok(())
    }

    /// First half of a batched sync: fdatasyncs, in order, every unsynced
    /// segment but the newest. [`GroupLog::write_staged`] already syncs older
    /// segments before writing a newer one (ordering the *writes*, not just
    /// the syncs, is what recovery needs), so this is normally a no-op and
    /// stays as a cheap guard. The newest is then synced by the caller
    /// (with other groups' files) via [`GroupLog::unsynced_tail`] and
    /// [`GroupLog::finish_sync`].
    pub fn sync_all_but_newest(&mut self) -> Result<()> {
        self.check_poison()?;
        while self.unsynced.len() > 1 {
            let first_index = self.unsynced[0];
            let seg = &self.segments[self.segment_position(first_index)];
            let file = seg.file.as_ref().expect("an unsynced segment was written, so it exists");
            if let Err(e) = file.sync_data() {
                let path = seg.path.clone();
                return Err(self.poison("fdatasync", &path, e));
            }
            self.unsynced.remove(0);
        }
        Ok(())
    }

    /// Second half of a (possibly background) sync: takes the newest
    /// unsynced segment, and the position that becomes durable once it is
    /// synced. Call [`GroupLog::sync_all_but_newest`] first. Appends may go
    /// on while the job runs; [`GroupLog::finish_sync_job`] records it.
    pub fn begin_sync_job(&mut self) -> Option<LogSyncJob> {
        if self.poison.is_some() {
            return None;
        }
        debug_assert!(self.unsynced.len() <= 1, "sync_all_but_newest ran first");
        let first_index = self.unsynced.pop()?;
        let file = self.segments[self.segment_position(first_index)].file.clone()?;
        self.in_flight_sync = Some(first_index);
        Some(LogSyncJob {
            file,
            segment_first_index: first_index,
            target: self.last_written,
            generation: self.generation,
        })
    }

    /// Records the result of a [`LogSyncJob`]. A failure poisons the group.
    /// A job that raced with a truncation or a reset proves nothing about the
    /// new entries, so its position is then ignored.
    pub fn finish_sync_job(&mut self, job: &LogSyncJob, result: std::io::Result<()>) -> Result<()> {
        if let Err(e) = result {
            let path = self.segment_path(job.segment_first_index);
            return Err(self.poison("fdatasync", &path, e));
        }
        self.check_poison()?;
        if self.in_flight_sync == Some(job.segment_first_index) {
            self.in_flight_sync = None;
        }
        if job.generation == self.generation && job.target.index > self.last_durable.index {
            debug_assert!(job.target.index <= self.last_written.index);
            self.last_durable = job.target;
        }
        Ok(())
    }

    /// Creates the segment the next append goes to, if the log has none, so
    /// that the first flush does not pay for a file creation.
    pub fn prepare_write_segment(&mut self) -> Result<()> {
        self.check_poison()?;
        if !self.segments.is_empty() {
            return Ok(());
        }
        let first_index = self.last_staged.index + 1;
        self.segments.push_back(Segment {
            first_index,
            prev_term: self.last_staged.term,
            path: self.segment_path(first_index),
            file: None,
            capacity_bytes: self.limits.segment_size_bytes,
            offsets: Vec::new(),
            end_bytes: SEGMENT_HEADER_BYTES,
            written_bytes: SEGMENT_HEADER_BYTES,
        });
        self.create_segment_file(0)
    }

    // ----- truncation and compaction ------------------------------------

    /// Zeroes `[start, end)` of `file` back to front so that a torn zeroing
    /// leaves at most one partial record (see the module invariants).
    fn zero_range(file: &dyn VfsFile, start: u64, end: u64) -> std::io::Result<()> {
        let mut hi = end;
        while hi > start {
            let lo = hi.saturating_sub(ZERO_CHUNK_BYTES as u64).max(start);
            file.write_at(&ZEROS[..(hi - lo) as usize], lo)?;
            hi = lo;
        }
        Ok(())
    }

    /// Removes entries `from..` durably (later segments deleted, records in
    /// the containing segment zeroed from the last one backwards, synced).
    pub fn truncate_suffix(&mut self, from: Index) -> Result<()> {
        self.check_poison()?;
        if from > self.last_staged.index {
            return Ok(());
        }
        if from <= self.base.index {
            return Err(self.invalid(format!(
                "cannot truncate from index {from}: entries up to {} are compacted into a snapshot",
                self.base.index
            )));
        }
        self.write_staged()?;
        // Make what precedes the cut durable first: the zeroing below syncs
        // its segment, which must not become durable ahead of earlier
        // segments (async mode), or recovery would see a gap.
        self.sync()?;
        // Whole segments first, newest first, so a crash leaves a prefix.
        let mut removed_any = false;
        while let Some(seg) = self.segments.back() {
            if seg.first_index < from {
                break;
            }
            let path = seg.path.clone();
            let first_index = seg.first_index;
            if seg.file.is_some() {
                if let Err(e) = self.vfs.remove(&path) {
                    return Err(self.poison("remove", &path, e));
                }
                removed_any = true;
            }
            self.segments.pop_back();
            self.unsynced.retain(|&f| f != first_index);
        }
        if removed_any {
            if let Err(e) = self.vfs.sync_dir(&self.dir) {
                let dir = self.dir.clone();
                return Err(self.poison("fsync directory", &dir, e));
            }
        }
        if let Some(seg) = self.segments.back_mut() {
            if seg.next_index() > from {
                let keep = (from - seg.first_index) as usize;
                let file = seg.file.as_ref().expect("written segments exist");
                let mut result = Ok(());
                for i in (keep..seg.offsets.len()).rev() {
                    let start = seg.offsets[i] as u64;
                    let end = seg.record_end(seg.first_index + i as u64);
                    result = Self::zero_range(file.as_ref(), start, end);
                    if result.is_err() {
                        break;
                    }
                }
                let result = result.and_then(|()| file.sync_data());
                if let Err(e) = result {
                    let path = seg.path.clone();
                    return Err(self.poison("truncate (zero and fdatasync)", &path, e));
                }
                let cut = seg.offsets[keep] as u64;
                seg.offsets.truncate(keep);
                seg.end_bytes = cut;
                seg.written_bytes = cut;
            }
        }
        let run = self.term_runs.partition_point(|&(start, _)| start < from);
        self.term_runs.truncate(run);
        let new_last = LogId::new(self.term(from - 1).unwrap_or(0), from - 1);
        if self.last_durable.index >= from {
            // Everything before `from` was durable, and the cut itself is now.
            self.last_durable = new_last;
        }
        self.last_staged = new_last;
        self.last_written = new_last;
        self.generation += 1;
        Ok(())
    }

    /// Whether [`GroupLog::compact`] to `upto` discards the whole log (a
    /// snapshot at or past its end, or one that disagrees with it).
    pub fn replaced_by(&self, upto: LogId) -> bool {
        upto.index >= self.last_staged.index || self.term(upto.index).is_some_and(|t| t != upto.term)
    }

    /// Drops whole segments whose entries are all at or below `upto.index`
    /// (covered by a durable snapshot). If the snapshot reaches past the
    /// log's end, the log restarts empty after it.
    ///
    /// A prefix's segments are only renamed here (a metadata update, no
    /// fsync): unlinking them and syncing the directory is left to
    /// [`GroupLog::take_deletions`], off the storage thread, so a snapshot
    /// does not stall every group's group commit. The rename keeps a later
    /// segment of the same first index out of the deletion's way. Should a
    /// crash undo the rename, recovery drops a segment the snapshot covers
    /// anyway. A reset (the log replaced by a snapshot past its end) still
    /// removes and syncs in line: old segments past the snapshot must not
    /// come back.
    pub fn compact(&mut self, upto: LogId) -> Result<()> {
        self.check_poison()?;
        self.write_staged()?;
        let reset = self.replaced_by(upto);
        let mut removed_any = false;
        while let Some(seg) = self.segments.front() {
            let covered = if reset {
                true
            } else {
                self.segments.get(1).is_some_and(|next| next.first_index <= upto.index + 1)
            };
            if !covered {
                break;
            }
            let path = seg.path.clone();
            let first_index = seg.first_index;
            let next_first = seg.next_index();
            let base_term = self.term(next_first - 1).unwrap_or(0);
            if seg.file.is_some() {
                if reset {
                    self.vfs.remove(&path).map_err(io_err("remove", &path))?;
                    removed_any = true;
                } else {
                    let doomed = self.dir.join(format!("{first_index:020}{SEGMENT_DELETED_SUFFIX}"));
                    self.vfs.rename(&path, &doomed).map_err(io_err("rename", &path))?;
                    self.doomed.push(doomed);
                }
            }
            self.segments.pop_front();
            self.unsynced.retain(|&f| f != first_index);
            if !reset {
                self.base = LogId::new(base_term, next_first - 1);
            }
        }
        if removed_any {
            self.vfs.sync_dir(&self.dir).map_err(io_err("fsync directory", &self.dir))?;
        }
        if reset {
            debug_assert!(self.segments.is_empty());
            self.base = upto;
            self.generation += 1;
            self.term_runs.clear();
            self.last_staged = upto;
            self.last_written = upto;
            self.last_durable = upto;
        } else {
            let first = self.first_index();
            let run = self.term_runs.partition_point(|&(start, _)| start <= first);
            if run > 1 {
                self.term_runs.drain(..run - 1);
            }
        }
        Ok(())
    }

    /// The compacted segments to unlink (see [`GroupLog::compact`]), handed
    /// out once.
    pub fn take_deletions(&mut self) -> Vec<PathBuf> {
        std::mem::take(&mut self.doomed)
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    // ----- reads --------------------------------------------------------

    /// Appends entries `lo..hi` to `out`, stopping early (but after at least
    /// one entry) once `max_bytes` of records have been read. Only entries
    /// handed to the OS are readable; each record's checksum is verified.
    pub fn read(&self, lo: Index, hi: Index, max_bytes: u64, out: &mut Vec<Entry>) -> Result<()> {
        self.check_poison()?;
        let first = self.first_index();
        let end = self.last_written.index + 1;
        if lo < first || hi > end || lo > hi {
            return Err(StorageError::Unavailable { group: self.group, lo, hi, first, end });
        }
        let mut index = lo;
        let mut total_bytes = 0u64;
        while index < hi {
            let seg = &self.segments[self.segment_position(index)];
            let seg_hi = hi.min(seg.next_index());
            let start = seg.offsets[(index - seg.first_index) as usize] as u64;
            let mut stop = index;
            let mut stop_bytes = start;
            while stop < seg_hi {
                let rec_end = seg.record_end(stop);
                if total_bytes + (rec_end - start) > max_bytes && (stop > lo || index > lo) {
                    break;
                }
                stop += 1;
                stop_bytes = rec_end;
            }
            if stop == index {
                return Ok(());
            }
            let file = seg.file.as_ref().expect("written segments exist");
            let mut raw = vec![0u8; (stop_bytes - start) as usize];
            file.read_at(&mut raw, start).map_err(io_err("read", &seg.path))?;
            let raw = Bytes::from(raw);
            let mut at = 0usize;
            for expected in index..stop {
                // Padding records (ends of earlier flushes) carry no entry.
                while let Some(pad) = record::parse(&raw[at..], MAX_ENTRY_SIZE_LIMIT_BYTES)
                    .filter(|v| v.kind == record::KIND_PADDING)
                {
                    at += pad.size_bytes;
                }
                let corrupt = |reason: String| StorageError::Corruption {
                    path: seg.path.clone(),
                    offset: start + at as u64,
                    reason,
                };
                let view = record::parse(&raw[at..], MAX_ENTRY_SIZE_LIMIT_BYTES).ok_or_else(|| {
                    corrupt(format!("record of index {expected} fails its checksum on read"))
                })?;
                if view.index != expected {
                    return Err(corrupt(format!(
                        "record holds index {} where {expected} belongs",
                        view.index
                    )));
                }
                let entry = decode_shared(&raw, at, &view).map_err(corrupt)?;
                out.push(entry);
                at += view.size_bytes;
            }
            total_bytes += stop_bytes - start;
            index = stop;
            if stop < seg_hi {
                return Ok(());
            }
        }
        Ok(())
    }

    // ----- recovery -----------------------------------------------------

    /// Opens the log in `dir`: scans every segment, rebuilds the index,
    /// repairs a torn tail, and refuses corruption. `snapshot` is the newest
    /// durable snapshot's last log id, if any; `synced` is the durable sync
    /// watermark from the hard state (see [`super::hard_state`]).
    ///
    /// Only a damaged record *above* the watermark can be a torn write (it
    /// was never synced, so never acknowledged): it is cut. Damage at or
    /// below it, a log that ends before it or disagrees with it, and a log
    /// that starts after the snapshot (a missing segment file) are
    /// [`StorageError::Corruption`], and nothing is changed on disk: an
    /// acknowledged entry may be gone, so the group must be restored from a
    /// peer rather than start with a shorter log.
    ///
    /// `lower_watermark(snapshot)` is called (and must make the lower
    /// watermark durable) before a snapshot that replaces the log (Raft §7)
    /// deletes the segments the watermark vouches for, so a crash in between
    /// cannot leave a watermark past the log.
    ///
    /// On success every recovered record is durable: the newest segment
    /// holding records above the watermark is fdatasynced (after a process
    /// crash the OS may still hold them unsynced), so the caller may raise
    /// the watermark to the recovered log's end.
    pub fn recover(
        vfs: Arc<dyn Vfs>,
        dir: PathBuf,
        group: GroupId,
        limits: LogLimits,
        snapshot: Option<LogId>,
        synced: LogId,
        lower_watermark: &mut dyn FnMut(LogId) -> Result<()>,
    ) -> Result<(GroupLog, LogRecovery)> {
        let names = vfs.list(&dir).map_err(io_err("list", &dir))?;
        let mut info = LogRecovery::default();
        let mut firsts = Vec::new();
        for name in &names {
            if name.ends_with(SEGMENT_TMP_SUFFIX) || name.ends_with(SEGMENT_DELETED_SUFFIX) {
                let path = dir.join(name);
                vfs.remove(&path).map_err(io_err("remove", &path))?;
                info.removed_segments.push(path);
            } else if let Some(first) = segment::parse_name(name) {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        // Segments wholly covered by the snapshot are dead, even if a
        // compaction's removals landed out of order.
        if let Some(snap) = snapshot {
            while firsts.len() >= 2 && firsts[1] <= snap.index + 1 {
                let path = dir.join(segment::file_name(firsts[0]));
                vfs.remove(&path).map_err(io_err("remove", &path))?;
                info.removed_segments.push(path);
                firsts.remove(0);
            }
        }
        let base_index = firsts.first().map_or(snapshot.map_or(0, |s| s.index), |&f| f.saturating_sub(1));
        let base_term = match snapshot {
            Some(s) if s.index == base_index => s.term,
            _ => 0,
        };
        let mut log =
            GroupLog::new(vfs.clone(), dir.clone(), group, limits, LogId::new(base_term, base_index));
        let mut scan = Scan { damage: None, last_term: 0, buf: Vec::new() };
        // Empty segments that hold nothing to keep; removed only once the
        // checks below pass (a refused directory is left as found).
        let mut dead = Vec::new();
        for &first in &firsts {
            let path = dir.join(segment::file_name(first));
            let scanned = log.scan_segment(&mut scan, &path, first, &mut info)?;
            let has_records = !scanned.offsets.is_empty();
            // An empty segment is the current write segment if it continues
            // the log; otherwise it was started by unacknowledged entries
            // whose predecessors were lost, and holds nothing to keep.
            let keep = has_records || (scan.damage.is_none() && first == log.last_staged.index + 1);
            if !keep {
                dead.push(path);
                continue;
            }
            if let Some((offset, nonzero_end)) = scanned.garbage {
                debug_assert!(scan.damage.is_none(), "records after damage are refused by the scan");
                scan.damage = Some(Damage { segment_first_index: first, offset, nonzero_end });
            }
            let end_bytes = scanned.end_of_records;
            if log.segments.is_empty() {
                log.base = LogId::new(scanned.prev_term, first - 1);
                log.last_staged = log.base;
            }
            let seg = Segment {
                first_index: first,
                prev_term: scanned.prev_term,
                path,
                file: Some(Arc::from(scanned.file)),
                capacity_bytes: scanned.len,
                offsets: scanned.offsets,
                end_bytes,
                written_bytes: end_bytes,
            };
            if seg.next_index() > first {
                log.last_staged = LogId::new(scan.last_term, seg.next_index() - 1);
            }
            log.segments.push_back(seg);
        }
        log.check_against_watermark(snapshot, synced, scan.damage.as_ref())?;
        for path in dead {
            vfs.remove(&path).map_err(io_err("remove", &path))?;
            info.removed_segments.push(path);
        }
        if !info.removed_segments.is_empty() {
            vfs.sync_dir(&dir).map_err(io_err("fsync directory", &dir))?;
        }
        if let Some(damage) = scan.damage {
            // Above the watermark (checked): a torn write. Zero the torn
            // bytes so a later append cannot sit beside them.
            let position = log.segment_position(damage.segment_first_index);
            let seg = &log.segments[position];
            debug_assert_eq!(seg.first_index, damage.segment_first_index);
            let file = seg.file.as_ref().expect("scanned segments are open");
            Self::zero_range(file.as_ref(), damage.offset, damage.nonzero_end)
                .and_then(|()| file.sync_data())
                .map_err(io_err("repair torn tail of", &seg.path))?;
            info.truncated_tail = Some((seg.path.clone(), damage.offset));
        }
        // Records above the watermark may sit unsynced in the OS's cache
        // (a process crash keeps them there). Only the newest written
        // segment can hold unsynced bytes (see the module invariants).
        if log.last_staged.index > synced.index {
            if let Some(seg) = log.segments.iter().rev().find(|s| !s.offsets.is_empty()) {
                let file = seg.file.as_ref().expect("scanned segments are open");
                file.sync_data().map_err(io_err("fdatasync", &seg.path))?;
            }
        }
        log.last_written = log.last_staged;
        log.last_durable = log.last_staged;
        // A snapshot newer than the log, or one that disagrees with it,
        // replaces the whole log (Raft §7: discard the log).
        if let Some(snap) = snapshot {
            let agrees = log.term(snap.index) == Some(snap.term);
            if snap.index >= log.last_staged.index || !agrees {
                if synced.index > snap.index {
                    lower_watermark(snap)?;
                }
                for seg in &log.segments {
                    info.removed_segments.push(seg.path.clone());
                }
                log.compact(snap)?;
            }
        }
        info.first_index = log.first_index();
        info.last_log_id = log.last_staged;
        if info.membership.as_ref().is_some_and(|(id, _)| id.index > info.last_log_id.index) {
            info.membership = None;
        }
        Ok((log, info))
    }

    /// The recovery checks that need the watermark (see
    /// [`GroupLog::recover`]), on the scanned log before any repair.
    /// `damage` is the first damaged byte after the valid records, if any.
    fn check_against_watermark(
        &self,
        snapshot: Option<LogId>,
        synced: LogId,
        damage: Option<&Damage>,
    ) -> Result<()> {
        let snap_index = snapshot.map_or(0, |s| s.index);
        // Segments are written in order and only after every earlier one is
        // durable, and compaction keeps the segment holding the entry after
        // the snapshot: a log starting later lost a segment file.
        if let Some(front) = self.segments.front() {
            if front.first_index > snap_index + 1 {
                let behind = match snapshot {
                    None => "there is no snapshot".to_string(),
                    Some(s) => format!("the snapshot ends at {s}"),
                };
                return Err(StorageError::Corruption {
                    path: front.path.clone(),
                    offset: 0,
                    reason: format!(
                        "the log starts at index {} but {behind}: the segment file holding index {} is \
                         missing",
                        front.first_index,
                        snap_index + 1
                    ),
                });
            }
        }
        if synced.index <= snap_index {
            return Ok(());
        }
        let last = self.last_staged;
        if last.index < synced.index {
            let (path, offset, what) = match (damage, self.segments.back()) {
                (Some(d), _) => (
                    self.segment_path(d.segment_first_index),
                    d.offset,
                    format!("the record of index {} is damaged", last.index + 1),
                ),
                (None, Some(seg)) => (
                    seg.path.clone(),
                    seg.end_bytes,
                    format!(
                        "the log ends at index {} here (a later segment file is missing or cut short)",
                        last.index
                    ),
                ),
                (None, None) => (
                    self.dir.join(super::HARD_STATE_FILE),
                    0,
                    format!("no segment file holds the log after index {}", last.index),
                ),
            };
            return Err(StorageError::Corruption {
                path,
                offset,
                reason: format!(
                    "{what}, but the hard state says the log was synced up to {synced}: synced data is \
                     lost, not a torn tail"
                ),
            });
        }
        let term = self.term(synced.index);
        if term != Some(synced.term) {
            let (path, offset) = match self.segments.front() {
                Some(front) if synced.index >= front.first_index => {
                    let seg = &self.segments[self.segment_position(synced.index)];
                    (seg.path.clone(), seg.offsets[(synced.index - seg.first_index) as usize] as u64)
                }
                Some(front) => (front.path.clone(), 0),
                None => (self.dir.join(super::HARD_STATE_FILE), 0),
            };
            return Err(StorageError::Corruption {
                path,
                offset,
                reason: format!(
                    "entry {} has term {}, but the hard state says {synced} was synced",
                    synced.index,
                    term.map_or("none".to_string(), |t| t.to_string())
                ),
            });
        }
        Ok(())
    }

    /// Reads one segment and parses its valid record prefix; refuses it if
    /// anything valid follows damage (here or in an earlier segment).
    fn scan_segment(
        &mut self,
        scan: &mut Scan,
        path: &Path,
        first: Index,
        info: &mut LogRecovery,
    ) -> Result<Scanned> {
        let corrupt = |offset: u64, reason: String| StorageError::Corruption {
            path: path.to_path_buf(),
            offset,
            reason,
        };
        let file = self.vfs.open(path).map_err(io_err("open", path))?;
        let len = file.len().map_err(io_err("stat", path))?;
        if !(SEGMENT_HEADER_BYTES..=MAX_SEGMENT_SIZE_BYTES).contains(&len) {
            return Err(corrupt(0, format!("segment file is {len} bytes")));
        }
        scan.buf.resize(len as usize, 0);
        file.read_at(&mut scan.buf, 0).map_err(io_err("read", path))?;
        let prev_term =
            segment::check_header(&scan.buf, self.group, first).map_err(|reason| corrupt(0, reason))?;
        if self.segments.is_empty() {
            scan.last_term = scan.last_term.max(prev_term);
        }
        let bytes = &scan.buf[..];
        let max_payload = MAX_ENTRY_SIZE_LIMIT_BYTES;
        let mut pos = SEGMENT_HEADER_BYTES as usize;
        let mut offsets = Vec::new();
        let mut expected = first;
        while let Some(view) = record::parse(&bytes[pos..], max_payload) {
            if let Some(damage) = &scan.damage {
                return Err(StorageError::Corruption {
                    path: self.segment_path(damage.segment_first_index),
                    offset: damage.offset,
                    reason: format!(
                        "damaged record is followed by valid record {} in {} at offset {pos}: not a torn tail",
                        view_id(&view),
                        path.display()
                    ),
                });
            }
            if view.kind == record::KIND_PADDING {
                // Only ever after a record (a flush pads after its entries).
                if offsets.is_empty() {
                    return Err(corrupt(pos as u64, "padding record before any entry of the segment".into()));
                }
                pos += view.size_bytes;
                continue;
            }
            if first != self.last_staged.index + 1 {
                return Err(corrupt(
                    pos as u64,
                    format!(
                        "index gap: segment starts at index {first} but the log before it ends at {}",
                        self.last_staged.index
                    ),
                ));
            }
            if view.index != expected {
                return Err(corrupt(
                    pos as u64,
                    format!("index gap: record holds index {}, expected {expected}", view.index),
                ));
            }
            if view.term < scan.last_term {
                return Err(corrupt(
                    pos as u64,
                    format!("term goes backwards: {} after term {}", view_id(&view), scan.last_term),
                ));
            }
            if view.kind == record::KIND_MEMBERSHIP {
                let entry = record::decode(&view).map_err(|reason| corrupt(pos as u64, reason))?;
                let id = entry.log_id();
                if let EntryPayload::Membership(m) = entry.payload {
                    info.membership = Some((id, m));
                }
            }
            if self.term_runs.last().map(|&(_, t)| t) != Some(view.term) {
                self.term_runs.push((view.index, view.term));
            }
            scan.last_term = view.term;
            offsets.push(pos as u32);
            pos += view.size_bytes;
            expected += 1;
        }
        let end_of_records = pos;
        // Past the records: zeros (clean end), or a torn record then zeros.
        // Any valid record further on means damage before it.
        let nonzero_end = bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
        let mut garbage = None;
        if nonzero_end > end_of_records {
            let mut probe = end_of_records + RECORD_ALIGNMENT_BYTES as usize;
            while probe + RECORD_HEADER_BYTES <= nonzero_end {
                if let Some(view) = record::parse(&bytes[probe..], max_payload) {
                    return Err(corrupt(
                        end_of_records as u64,
                        format!(
                            "damaged record is followed by valid record {} at offset {probe}: not a torn tail",
                            view_id(&view)
                        ),
                    ));
                }
                probe += RECORD_ALIGNMENT_BYTES as usize;
            }
            garbage = Some((end_of_records as u64, nonzero_end as u64));
        }
        Ok(Scanned { file, len, prev_term, offsets, end_of_records: end_of_records as u64, garbage })
    }
}

fn view_id(view: &record::RecordView<'_>) -> LogId {
    LogId::new(view.term, view.index)
}

struct Scanned {
    file: Box<dyn VfsFile>,
    len: u64,
    prev_term: Term,
    offsets: Vec<u32>,
    end_of_records: u64,
    /// Torn bytes after the records: (offset, end of the last non-zero byte).
    garbage: Option<(u64, u64)>,
}

/// Upper bound on any record's payload, whatever the configuration: reads
/// and recovery accept records up to this size, so lowering
/// `max_entry_size_bytes` later never makes old records look torn.
pub const MAX_ENTRY_SIZE_LIMIT_BYTES: u32 = 64 << 20;

/// Upper bound on a segment file recovery will read into memory.
pub const MAX_SEGMENT_SIZE_BYTES: u64 = 1 << 30;

#[derive(Debug, Clone)]
struct Damage {
    segment_first_index: Index,
    offset: u64,
    nonzero_end: u64,
}

struct Scan {
    damage: Option<Damage>,
    last_term: Term,
    buf: Vec<u8>,
}

/// Decodes a record whose bytes live in `raw` at `at`, sharing `raw` for the
/// payload (no per-entry copy).
fn decode_shared(raw: &Bytes, at: usize, view: &record::RecordView<'_>) -> Result<Entry, String> {
    if view.kind == record::KIND_NORMAL {
        let start = at + RECORD_HEADER_BYTES;
        let end = start + view.payload.len();
        return Ok(Entry {
            term: view.term,
            index: view.index,
            payload: EntryPayload::Normal(raw.slice(start..end)),
        });
    }
    record::decode(view)
}
