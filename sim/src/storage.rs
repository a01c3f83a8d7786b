//! A node's durable state as the simulator models it, before and beside the
//! real storage engine: the log and hard state the node has written, which
//! part of it is durable, what a crash leaves behind, and the durable
//! snapshot that covers the log's compacted prefix.
//!
//! Writes land in the "current" view at once; a sync (the disk completion
//! event) makes everything written so far durable; a crash throws away
//! everything unsynced. A snapshot is written synchronously (durable at
//! once). `durable_term` / `covers` are the checkers' view of what each node
//! is guaranteed to still have.
//!
//! Both views start at the same `first` index: compaction only ever removes
//! a durable prefix covered by the durable snapshot, and an install replaces
//! both views at once.

use tarn_core::{Entry, HardState, Index, LogId, Term};

#[derive(Clone, Debug)]
pub struct ModelStorage {
    hard_state: HardState,
    durable_hard_state: HardState,
    /// Index of `log[0]` (and `durable_log[0]`).
    first: Index,
    log: Vec<Entry>,
    durable_log: Vec<Entry>,
    /// The lowest log position (0-based, from `first`) changed since the last sync.
    dirty_from: usize,
    /// True once something was written and not yet synced.
    hard_state_dirty: bool,
    /// The last log id of the durable snapshot (`LogId::ZERO`: none).
    snapshot: LogId,
}

impl Default for ModelStorage {
    fn default() -> Self {
        ModelStorage {
            hard_state: HardState::default(),
            durable_hard_state: HardState::default(),
            first: 1,
            log: Vec::new(),
            durable_log: Vec::new(),
            dirty_from: 0,
            hard_state_dirty: false,
            snapshot: LogId::ZERO,
        }
    }
}

impl ModelStorage {
    pub fn new() -> Self {
        Self::default()
    }

    /// A fully durable state, as recovered from a real storage engine: an
    /// optional snapshot and the contiguous log after it.
    pub fn recovered(hard_state: HardState, snapshot: LogId, log: &[Entry]) -> Self {
        let first = log.first().map_or(snapshot.index + 1, |e| e.index);
        assert!(first <= snapshot.index + 1, "recovered log starts at {first} after snapshot {snapshot}");
        ModelStorage {
            hard_state,
            durable_hard_state: hard_state,
            first,
            log: log.to_vec(),
            durable_log: log.to_vec(),
            dirty_from: log.len(),
            hard_state_dirty: false,
            snapshot,
        }
    }

    /// Appends `entries`, replacing the stored suffix from the first one's index.
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(head) = entries.first() else { return };
        assert!(head.index >= self.first, "append at {} below the first index {}", head.index, self.first);
        let at = (head.index - self.first) as usize;
        assert!(at <= self.log.len(), "append at {} leaves a gap after {}", head.index, self.last_index());
        self.log.truncate(at);
        self.log.extend_from_slice(entries);
        for (i, e) in self.log[at..].iter().enumerate() {
            debug_assert_eq!(e.index, self.first + (at + i) as Index, "append of non-contiguous entries");
        }
        self.dirty_from = self.dirty_from.min(at);
    }

    pub fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
        self.hard_state_dirty = true;
    }

    /// Makes everything written so far durable.
    pub fn sync(&mut self) {
        if self.dirty_from < self.log.len() || self.durable_log.len() > self.log.len() {
            self.durable_log.truncate(self.dirty_from);
            self.durable_log.extend_from_slice(&self.log[self.dirty_from.min(self.log.len())..]);
        }
        self.dirty_from = self.log.len();
        if self.hard_state_dirty {
            self.durable_hard_state = self.hard_state;
            self.hard_state_dirty = false;
        }
    }

    /// Loses everything unsynced (the snapshot is durable when recorded).
    pub fn crash(&mut self) {
        self.log.clone_from(&self.durable_log);
        self.hard_state = self.durable_hard_state;
        self.dirty_from = self.log.len();
        self.hard_state_dirty = false;
    }

    /// Loses everything.
    pub fn wipe(&mut self) {
        *self = ModelStorage::default();
    }

    /// A durable snapshot up to `last` was written; the log is kept.
    pub fn set_snapshot(&mut self, last: LogId) {
        assert!(last.index >= self.snapshot.index, "snapshot {last} older than {}", self.snapshot);
        self.snapshot = last;
    }

    /// Drops the log entries below `first` (they must be covered by the
    /// durable snapshot and durable, or gone from both views anyway).
    pub fn compact_below(&mut self, first: Index) {
        if first <= self.first {
            return;
        }
        assert!(
            first <= self.snapshot.index + 1,
            "compaction to {first} is not covered by the snapshot {}",
            self.snapshot
        );
        let n = (first - self.first) as usize;
        self.log.drain(..n.min(self.log.len()));
        self.durable_log.drain(..n.min(self.durable_log.len()));
        self.dirty_from = self.dirty_from.saturating_sub(n);
        self.first = first;
    }

    /// An installed snapshot replaced the whole log (both views).
    pub fn install(&mut self, last: LogId) {
        self.set_snapshot(last);
        self.log.clear();
        self.durable_log.clear();
        self.dirty_from = 0;
        self.first = last.index + 1;
    }

    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// The current log, from `first_index()`.
    pub fn log(&self) -> &[Entry] {
        &self.log
    }

    pub fn first_index(&self) -> Index {
        self.first
    }

    pub fn snapshot(&self) -> LogId {
        self.snapshot
    }

    pub fn last_index(&self) -> Index {
        self.first + self.log.len() as Index - 1
    }

    /// The current entry at `index`, if the log holds it.
    pub fn entry(&self, index: Index) -> Option<&Entry> {
        index.checked_sub(self.first).and_then(|i| self.log.get(i as usize))
    }

    /// The term at `index` in the current log, or the snapshot's (0 at 0).
    pub fn term_at(&self, index: Index) -> Option<Term> {
        if index == 0 {
            return Some(0);
        }
        match self.entry(index) {
            Some(e) => Some(e.term),
            None if index == self.snapshot.index => Some(self.snapshot.term),
            None => None,
        }
    }

    /// Entries `[from, to)` of the current log, at most `max_bytes` of them
    /// (but at least one if any exists). Empty if `from` is compacted.
    pub fn entries(&self, from: Index, to: Index, max_bytes: usize) -> Vec<Entry> {
        let mut out = Vec::new();
        if from < self.first {
            return out;
        }
        let lo = (from - self.first) as usize;
        let hi = (to.saturating_sub(self.first) as usize).min(self.log.len());
        let mut bytes = 0;
        for e in self.log.get(lo..hi).unwrap_or(&[]) {
            bytes += e.size_bytes();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(e.clone());
        }
        out
    }

    /// The term of the durable entry at `index`, if any (the snapshot's last
    /// entry counts: it is durable).
    pub fn durable_term(&self, index: Index) -> Option<Term> {
        if index == 0 {
            return None;
        }
        match index.checked_sub(self.first).and_then(|i| self.durable_log.get(i as usize)) {
            Some(e) => Some(e.term),
            None if index == self.snapshot.index => Some(self.snapshot.term),
            None => None,
        }
    }

    /// The last index of the durable log (or of the snapshot).
    pub fn durable_last_index(&self) -> Index {
        (self.first + self.durable_log.len() as Index - 1).max(self.snapshot.index)
    }

    /// True if the durable snapshot covers `index`.
    pub fn covers(&self, index: Index) -> bool {
        index <= self.snapshot.index
    }

    pub fn durable_hard_state(&self) -> HardState {
        self.durable_hard_state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tarn_core::EntryPayload;

    fn e(term: Term, index: Index) -> Entry {
        Entry { term, index, payload: EntryPayload::Blank }
    }

    #[test]
    fn crash_loses_exactly_the_unsynced_suffix() {
        let mut s = ModelStorage::new();
        s.append(&[e(1, 1), e(1, 2)]);
        s.sync();
        s.append(&[e(1, 3)]);
        s.set_hard_state(HardState { term: 2, vote: Some(1), commit: 0 });
        s.crash();
        assert_eq!(s.last_index(), 2);
        assert_eq!(s.hard_state(), HardState::default());
        assert_eq!(s.durable_term(2), Some(1));
        assert_eq!(s.durable_term(3), None);
    }

    #[test]
    fn truncating_append_replaces_the_suffix_durably_after_sync() {
        let mut s = ModelStorage::new();
        s.append(&[e(1, 1), e(1, 2), e(1, 3)]);
        s.sync();
        s.append(&[e(2, 2)]);
        assert_eq!(s.durable_term(3), Some(1), "not durable before sync");
        s.sync();
        assert_eq!(s.durable_term(2), Some(2));
        assert_eq!(s.durable_term(3), None);
        s.crash();
        assert_eq!(s.log().iter().map(|e| (e.term, e.index)).collect::<Vec<_>>(), vec![(1, 1), (2, 2)]);
    }

    #[test]
    fn entries_respect_range_and_byte_bound() {
        let mut s = ModelStorage::new();
        s.append(&(1..=10).map(|i| e(1, i)).collect::<Vec<_>>());
        assert_eq!(s.entries(3, 6, usize::MAX).len(), 3);
        assert_eq!(s.entries(3, 6, 1).len(), 1, "at least one entry");
        assert_eq!(s.entries(9, 100, usize::MAX).len(), 2);
        assert!(s.entries(11, 20, usize::MAX).is_empty());
    }

    #[test]
    fn compaction_keeps_indexes_and_the_snapshot_covers_the_prefix() {
        let mut s = ModelStorage::new();
        s.append(&(1..=10).map(|i| e(1, i)).collect::<Vec<_>>());
        s.sync();
        s.append(&[e(2, 11)]);
        s.set_snapshot(LogId::new(1, 6));
        s.compact_below(5);
        assert_eq!(s.first_index(), 5);
        assert_eq!(s.term_at(4), None, "compacted");
        assert_eq!(s.term_at(5), Some(1));
        assert!(s.covers(4) && s.covers(6) && !s.covers(7));
        assert!(s.entries(3, 8, usize::MAX).is_empty(), "compacted entries are gone");
        assert_eq!(s.entries(5, 8, usize::MAX).len(), 3);
        s.crash();
        assert_eq!(s.last_index(), 10, "the unsynced entry 11 is lost, the kept prefix stays");
        assert_eq!(s.durable_term(10), Some(1));
        s.install(LogId::new(3, 20));
        assert_eq!(s.last_index(), 20);
        assert_eq!(s.term_at(20), Some(3));
        assert_eq!(s.durable_term(20), Some(3));
        assert_eq!(s.durable_term(10), None);
        s.append(&[e(3, 21)]);
        s.crash();
        assert_eq!(s.last_index(), 20);
        s.append(&[e(3, 21)]);
        s.sync();
        assert_eq!(s.durable_term(21), Some(3));
    }
}
