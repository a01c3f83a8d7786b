//! A node's durable state as the simulator models it, before and beside the
//! real storage engine: the log and hard state the node has written, which
//! part of it is durable, and what a crash leaves behind.
//!
//! Writes land in the "current" view at once; a sync (the disk completion
//! event) makes everything written so far durable; a crash throws away
//! everything unsynced. `durable_terms` is the checkers' view of what each
//! node is guaranteed to still have.

use tarn_core::{Entry, HardState, Index, Term};

#[derive(Clone, Debug, Default)]
pub struct ModelStorage {
    hard_state: HardState,
    durable_hard_state: HardState,
    log: Vec<Entry>,
    durable_log: Vec<Entry>,
    /// The lowest log position (0-based) changed since the last sync.
    dirty_from: usize,
    /// True once something was written and not yet synced.
    hard_state_dirty: bool,
}

impl ModelStorage {
    pub fn new() -> Self {
        Self::default()
    }

    /// A fully durable state, as recovered from a real storage engine.
    pub fn recovered(hard_state: HardState, log: &[Entry]) -> Self {
        ModelStorage {
            hard_state,
            durable_hard_state: hard_state,
            log: log.to_vec(),
            durable_log: log.to_vec(),
            dirty_from: log.len(),
            hard_state_dirty: false,
        }
    }

    /// Appends `entries`, replacing the stored suffix from the first one's index.
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        assert!(first.index >= 1, "append at index 0");
        let at = (first.index - 1) as usize;
        assert!(at <= self.log.len(), "append at {} leaves a gap after {}", first.index, self.log.len());
        self.log.truncate(at);
        self.log.extend_from_slice(entries);
        for (i, e) in self.log[at..].iter().enumerate() {
            debug_assert_eq!(e.index as usize, at + i + 1, "append of non-contiguous entries");
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

    /// Loses everything unsynced.
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

    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    pub fn log(&self) -> &[Entry] {
        &self.log
    }

    pub fn last_index(&self) -> Index {
        self.log.len() as Index
    }

    /// Entries `[from, to)` of the current log, at most `max_bytes` of them
    /// (but at least one if any exists).
    pub fn entries(&self, from: Index, to: Index, max_bytes: usize) -> Vec<Entry> {
        let lo = (from.max(1) - 1) as usize;
        let hi = ((to.max(1) - 1) as usize).min(self.log.len());
        let mut out = Vec::new();
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

    /// The term of the durable entry at `index`, if any.
    pub fn durable_term(&self, index: Index) -> Option<Term> {
        if index == 0 {
            return None;
        }
        self.durable_log.get((index - 1) as usize).map(|e| e.term)
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
}
