//! The core's view of the log: a compact index of terms covering the whole
//! log (so `term_at` works for any index without holding entries), a bounded
//! in-memory tail of entries, and the durable watermark.
//!
//! The tail is one contiguous suffix that ends at the last index; entries not
//! yet durable are always in it (they cannot be re-read from storage).

use std::collections::VecDeque;

use crate::types::{Entry, Index, LogId, Term};

#[derive(Clone, Debug)]
pub struct RaftLog {
    /// Everything up to here is compacted into a snapshot (LogId::ZERO if none).
    snapshot: LogId,
    /// First LogId of each run of equal terms after `snapshot`, ascending.
    term_starts: Vec<LogId>,
    last: LogId,
    tail: VecDeque<Entry>,
    /// Sum of `size_bytes` over `tail`: eviction bounds memory by bytes too,
    /// since one batched entry can be hundreds of KiB.
    tail_bytes: usize,
    /// The durable prefix (matched by term and index on acknowledgement).
    persisted: Index,
    committed: Index,
}

impl RaftLog {
    /// Builds the view; fails with a description if the pieces disagree.
    pub fn new(
        snapshot: LogId,
        term_starts: Vec<LogId>,
        last: LogId,
        tail: Vec<Entry>,
        committed: Index,
    ) -> Result<RaftLog, String> {
        if last.index < snapshot.index {
            return Err(format!("last_log_id {last} is before the snapshot {snapshot}"));
        }
        if last.index == snapshot.index && last != snapshot {
            return Err(format!("last_log_id {last} disagrees with the snapshot {snapshot}"));
        }
        let mut prev = snapshot;
        for (i, s) in term_starts.iter().enumerate() {
            if s.index <= prev.index || s.term <= prev.term && i > 0 || s.index > last.index {
                return Err(format!("term_starts not ascending within the log at {s}"));
            }
            prev = *s;
        }
        if last.index > snapshot.index {
            match term_starts.first() {
                Some(first) if first.index == snapshot.index + 1 => {}
                _ => return Err(format!("term_starts must start at index {}", snapshot.index + 1)),
            }
            if term_starts.last().map(|s| s.term) != Some(last.term) {
                return Err(format!("term_starts do not end with the term of last_log_id {last}"));
            }
        }
        let log = RaftLog {
            snapshot,
            term_starts,
            last,
            tail_bytes: tail.iter().map(Entry::size_bytes).sum(),
            tail: tail.into(),
            persisted: last.index,
            committed: committed.min(last.index).max(snapshot.index),
        };
        for (k, e) in log.tail.iter().enumerate() {
            if k > 0 && e.index != log.tail[k - 1].index + 1 {
                return Err(format!("recovered tail is not contiguous at index {}", e.index));
            }
            if log.term_at(e.index) != Some(e.term) {
                return Err(format!("recovered tail entry {} disagrees with term_starts", e.log_id()));
            }
        }
        if let Some(back) = log.tail.back() {
            if back.log_id() != last {
                return Err(format!("recovered tail ends at {} but last_log_id is {last}", back.log_id()));
            }
        }
        Ok(log)
    }

    pub fn last(&self) -> LogId {
        self.last
    }

    #[allow(dead_code)] // Issue 3 (snapshots) reads it.
    pub fn snapshot(&self) -> LogId {
        self.snapshot
    }

    pub fn persisted(&self) -> Index {
        self.persisted
    }

    pub fn committed(&self) -> Index {
        self.committed
    }

    /// First index held in memory (`last + 1` if the tail is empty).
    pub fn tail_first(&self) -> Index {
        self.tail.front().map_or(self.last.index + 1, |e| e.index)
    }

    pub fn tail_len(&self) -> usize {
        self.tail.len()
    }

    /// Payload bytes held in memory (`Entry::size_bytes` summed over the tail).
    pub fn tail_bytes(&self) -> usize {
        self.tail_bytes
    }

    /// The first index that must stay in memory so the tail holds at most
    /// `max_entries` entries and `max_bytes` bytes (the last entry is always
    /// kept). The caller also bounds it by what is durable and applied.
    pub fn tail_keep_from(&self, max_entries: usize, max_bytes: usize) -> Index {
        let mut keep_from = self.tail_first();
        let mut len = self.tail.len();
        let mut bytes = self.tail_bytes;
        for e in &self.tail {
            if len <= 1 || (len <= max_entries && bytes <= max_bytes) {
                break;
            }
            len -= 1;
            bytes -= e.size_bytes();
            keep_from = e.index + 1;
        }
        keep_from
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.tail.pop_front() {
            self.tail_bytes -= e.size_bytes();
        }
    }

    /// The term of the entry at `index`, if the log (or snapshot point) has it.
    pub fn term_at(&self, index: Index) -> Option<Term> {
        if index == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        if index < self.snapshot.index || index > self.last.index {
            return None;
        }
        // Last run starting at or before `index`.
        let k = self.term_starts.partition_point(|s| s.index <= index);
        debug_assert!(k > 0);
        Some(self.term_starts[k - 1].term)
    }

    pub fn matches(&self, id: LogId) -> bool {
        self.term_at(id.index) == Some(id.term)
    }

    /// The entry at `index` if it is in the in-memory tail.
    pub fn entry(&self, index: Index) -> Option<&Entry> {
        let first = self.tail_first();
        if index < first || index > self.last.index {
            return None;
        }
        let e = &self.tail[(index - first) as usize];
        debug_assert_eq!(e.index, index);
        Some(e)
    }

    /// Fast back-tracking (etcd's findConflictByTerm): the largest index
    /// `<= index` whose term is `<= term`, with its term. Every entry between
    /// it and `index` has a larger term, so cannot match a log whose entry at
    /// `index` has term `term`.
    ///
    /// Terms below the snapshot are gone, so there the answer can only be
    /// "somewhere at or below": an index under the snapshot with term 0,
    /// which sends a leader to its snapshot. Answering the snapshot point
    /// itself when its term is larger than `term` would be wrong: a leader
    /// whose snapshot covers a follower's divergent entry retried at that
    /// same point forever (seed 29699: follower at 11@422, leader's snapshot
    /// at 12@422).
    pub fn find_conflict_by_term(&self, index: Index, term: Term) -> LogId {
        let index = index.min(self.last.index);
        if index <= self.snapshot.index {
            return self.below_snapshot(index, term);
        }
        // Runs starting at or before `index`; walk back over runs with larger terms.
        let mut k = self.term_starts.partition_point(|s| s.index <= index);
        let mut at = index;
        while k > 0 {
            let run = self.term_starts[k - 1];
            if run.term <= term {
                return LogId::new(run.term, at);
            }
            at = run.index - 1;
            k -= 1;
        }
        self.below_snapshot(self.snapshot.index, term)
    }

    /// `find_conflict_by_term` at or below the snapshot point `index`.
    fn below_snapshot(&self, index: Index, term: Term) -> LogId {
        match self.term_at(index) {
            Some(t) if t <= term => LogId::new(t, index),
            // Terms never decrease, so the match (if any) lies below
            // `index`, where we no longer know terms.
            Some(_) => LogId::new(0, index.saturating_sub(1)),
            None => LogId::new(0, index),
        }
    }

    /// Appends `entries` (contiguous, starting at or below `last + 1`),
    /// replacing any suffix from the first entry's index.
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        let from = first.index;
        assert!(from > self.snapshot.index, "append at {from} inside the snapshot {}", self.snapshot);
        assert!(from <= self.last.index + 1, "append at {from} leaves a gap after {}", self.last);
        assert!(from > self.committed, "append at {from} would truncate committed index {}", self.committed);
        if from <= self.last.index {
            self.truncate_from(from);
        }
        for e in entries {
            debug_assert_eq!(e.index, self.last.index + 1);
            debug_assert!(e.term >= self.last.term);
            if self.term_starts.last().is_none_or(|s| s.term != e.term) {
                self.term_starts.push(e.log_id());
            }
            self.last = e.log_id();
            self.tail_bytes += e.size_bytes();
            self.tail.push_back(e.clone());
        }
    }

    fn truncate_from(&mut self, from: Index) {
        while self.tail.back().is_some_and(|e| e.index >= from) {
            if let Some(e) = self.tail.pop_back() {
                self.tail_bytes -= e.size_bytes();
            }
        }
        while self.term_starts.last().is_some_and(|s| s.index >= from) {
            self.term_starts.pop();
        }
        let new_last = from - 1;
        let term = self.term_at_after_truncate(new_last);
        self.last = LogId::new(term, new_last);
        self.persisted = self.persisted.min(new_last);
        if self.tail.back().is_some_and(|e| e.index != new_last) {
            self.tail.clear();
            self.tail_bytes = 0;
        }
    }

    fn term_at_after_truncate(&self, index: Index) -> Term {
        if index == self.snapshot.index {
            return self.snapshot.term;
        }
        self.term_starts.last().map_or(self.snapshot.term, |s| {
            debug_assert!(s.index <= index);
            s.term
        })
    }

    /// Records durability up to `up_to` if that entry is still in the log.
    /// Returns whether the watermark moved.
    pub fn persisted_to(&mut self, up_to: LogId) -> bool {
        if up_to.index > self.persisted && self.matches(up_to) {
            self.persisted = up_to.index;
            return true;
        }
        false
    }

    pub fn commit_to(&mut self, index: Index) -> bool {
        if index > self.committed {
            assert!(index <= self.last.index, "commit {index} beyond last {}", self.last);
            self.committed = index;
            return true;
        }
        false
    }

    /// Drops in-memory entries below `keep_from` (they must be durable).
    pub fn evict_before(&mut self, keep_from: Index) {
        debug_assert!(keep_from <= self.persisted + 1);
        while self.tail.front().is_some_and(|e| e.index < keep_from) {
            self.pop_front();
        }
    }

    /// Clones entries `[from, ..]` from the tail: at most `max_entries`
    /// entries and, after the first, at most `max_bytes` bytes. Returns
    /// `None` if `from` is not in memory.
    pub fn slice(&self, from: Index, max_entries: usize, max_bytes: usize) -> Option<(Vec<Entry>, usize)> {
        if from > self.last.index {
            return Some((Vec::new(), 0));
        }
        let first = self.tail_first();
        if from < first {
            return None;
        }
        let start = (from - first) as usize;
        let mut bytes = 0;
        let mut n = 0;
        for e in self.tail.range(start..).take(max_entries) {
            let size = e.size_bytes();
            if n > 0 && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            n += 1;
        }
        Some((self.tail.range(start..start + n).cloned().collect(), bytes))
    }
}

/// Snapshots (issue 3): compaction behind a snapshot and replacement by one.
impl RaftLog {
    /// Forgets everything up to and including `up_to` (covered by a durable
    /// snapshot): `term_at` answers from `up_to` on only.
    pub fn compact_to(&mut self, up_to: LogId) {
        assert!(self.matches(up_to), "compaction point {up_to} is not in the log");
        assert!(up_to.index <= self.committed && up_to.index <= self.persisted, "compacting past {up_to}");
        if up_to.index <= self.snapshot.index {
            return;
        }
        let next = up_to.index + 1;
        let k = self.term_starts.partition_point(|s| s.index <= next);
        let mut starts = self.term_starts.split_off(k);
        if next <= self.last.index {
            // The run holding `next` now starts there.
            let term = if k > 0 { self.term_starts[k - 1].term } else { self.snapshot.term };
            starts.insert(0, LogId::new(term, next));
        }
        self.term_starts = starts;
        self.snapshot = up_to;
        while self.tail.front().is_some_and(|e| e.index <= up_to.index) {
            self.pop_front();
        }
    }

    /// The log was replaced by a snapshot ending at `snapshot`: nothing after
    /// it, everything up to it committed and durable.
    pub fn install_snapshot(&mut self, snapshot: LogId) {
        self.snapshot = snapshot;
        self.term_starts.clear();
        self.tail.clear();
        self.tail_bytes = 0;
        self.last = snapshot;
        self.persisted = snapshot.index;
        self.committed = snapshot.index;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::EntryPayload;

    fn ents(terms: &[(Term, Index)]) -> Vec<Entry> {
        terms.iter().map(|&(t, i)| Entry { term: t, index: i, payload: EntryPayload::Blank }).collect()
    }

    fn log_of(terms: &[Term]) -> RaftLog {
        let mut l = RaftLog::new(LogId::ZERO, vec![], LogId::ZERO, vec![], 0).unwrap();
        let e: Vec<(Term, Index)> = terms.iter().enumerate().map(|(i, &t)| (t, i as Index + 1)).collect();
        l.append(&ents(&e));
        l
    }

    #[test]
    fn term_index_and_truncation() {
        let mut l = log_of(&[1, 1, 2, 2, 2, 4]);
        assert_eq!(l.term_at(0), Some(0));
        assert_eq!(l.term_at(2), Some(1));
        assert_eq!(l.term_at(5), Some(2));
        assert_eq!(l.term_at(6), Some(4));
        assert_eq!(l.term_at(7), None);
        assert!(l.persisted_to(LogId::new(2, 4)));
        l.append(&ents(&[(5, 4), (5, 5)]));
        assert_eq!(l.last(), LogId::new(5, 5));
        assert_eq!(l.persisted(), 3, "truncation lowers the durable watermark");
        assert_eq!(l.term_at(3), Some(2));
        assert_eq!(l.term_at(4), Some(5));
        // A late acknowledgement of the replaced entry is ignored.
        assert!(!l.persisted_to(LogId::new(2, 5)));
        assert!(l.persisted_to(LogId::new(5, 5)));
        assert_eq!(l.entry(4).unwrap().term, 5);
    }

    #[test]
    fn find_conflict_skips_whole_terms() {
        let l = log_of(&[1, 1, 2, 2, 2, 4, 4]);
        assert_eq!(l.find_conflict_by_term(7, 3), LogId::new(2, 5));
        assert_eq!(l.find_conflict_by_term(7, 4), LogId::new(4, 7));
        assert_eq!(l.find_conflict_by_term(7, 1), LogId::new(1, 2));
        assert_eq!(l.find_conflict_by_term(7, 0), LogId::new(0, 0));
        assert_eq!(l.find_conflict_by_term(100, 9), LogId::new(4, 7));
    }

    #[test]
    fn eviction_and_slices() {
        let mut l = log_of(&[1, 1, 1, 1, 1]);
        l.persisted_to(LogId::new(1, 5));
        l.evict_before(3);
        assert_eq!(l.tail_first(), 3);
        assert!(l.slice(2, 10, 1000).is_none());
        assert_eq!(l.term_at(1), Some(1), "terms survive eviction");
        let (s, bytes) = l.slice(3, 2, 1000).unwrap();
        assert_eq!((s.len(), bytes), (2, 48));
        let (s, _) = l.slice(3, 10, 1).unwrap();
        assert_eq!(s.len(), 1, "at least one entry");
    }

    #[test]
    fn tail_is_bounded_by_bytes_and_entries() {
        let big =
            |i: Index| Entry { term: 1, index: i, payload: EntryPayload::Normal(vec![0u8; 1000].into()) };
        let mut l = RaftLog::new(LogId::ZERO, vec![], LogId::ZERO, vec![], 0).unwrap();
        l.append(&(1..=10).map(big).collect::<Vec<_>>());
        let recount = |l: &RaftLog| l.tail.iter().map(Entry::size_bytes).sum::<usize>();
        assert_eq!(l.tail_bytes(), 10 * 1024);
        assert_eq!(l.tail_keep_from(100, 1 << 20), 1, "within both bounds: keep all");
        assert_eq!(l.tail_keep_from(4, 1 << 20), 7, "entry bound");
        assert_eq!(l.tail_keep_from(100, 3 * 1024), 8, "byte bound");
        assert_eq!(l.tail_keep_from(100, 0), 10, "the last entry always stays");
        l.persisted_to(LogId::new(1, 10));
        l.evict_before(8);
        assert_eq!(l.tail_bytes(), 3 * 1024);
        l.append(&[Entry { term: 2, index: 10, payload: EntryPayload::Blank }]);
        assert_eq!(l.tail_bytes(), 2 * 1024 + 24, "truncation and append keep the count");
        assert_eq!(l.tail_bytes(), recount(&l));
        l.commit_to(9);
        l.compact_to(LogId::new(1, 9));
        assert_eq!(l.tail_bytes(), 24);
        l.install_snapshot(LogId::new(3, 20));
        assert_eq!(l.tail_bytes(), 0);
    }

    #[test]
    fn recovery_is_checked() {
        let tail = ents(&[(2, 3), (3, 4)]);
        let starts = vec![LogId::new(1, 1), LogId::new(2, 3), LogId::new(3, 4)];
        let l = RaftLog::new(LogId::ZERO, starts.clone(), LogId::new(3, 4), tail.clone(), 9).unwrap();
        assert_eq!(l.term_at(2), Some(1));
        assert_eq!(l.committed(), 4);
        assert!(RaftLog::new(LogId::ZERO, starts.clone(), LogId::new(3, 5), tail.clone(), 0).is_err());
        assert!(RaftLog::new(LogId::ZERO, starts[1..].to_vec(), LogId::new(3, 4), tail, 0).is_err());
    }

    #[test]
    fn compaction_keeps_terms_after_the_point() {
        let mut l = log_of(&[1, 1, 2, 2, 2, 4]);
        l.persisted_to(LogId::new(4, 6));
        l.commit_to(6);
        l.compact_to(LogId::new(2, 4));
        assert_eq!(l.snapshot(), LogId::new(2, 4));
        assert_eq!(
            (l.term_at(3), l.term_at(4), l.term_at(5), l.term_at(6)),
            (None, Some(2), Some(2), Some(4))
        );
        assert_eq!(l.tail_first(), 5);
        assert_eq!(l.find_conflict_by_term(6, 3), LogId::new(2, 5));
        // At the snapshot point with a smaller term: the match lies below
        // the snapshot, so the answer must be below it too (never the
        // snapshot point itself, which would be retried forever).
        assert_eq!(l.find_conflict_by_term(4, 1), LogId::new(0, 3));
        assert_eq!(l.find_conflict_by_term(6, 1), LogId::new(0, 3));
        assert_eq!(l.find_conflict_by_term(4, 2), LogId::new(2, 4));
        assert_eq!(l.find_conflict_by_term(2, 1), LogId::new(0, 2));
        l.compact_to(LogId::new(2, 5));
        assert_eq!((l.term_at(5), l.term_at(6)), (Some(2), Some(4)));
        l.compact_to(LogId::new(4, 6));
        assert_eq!(l.last(), LogId::new(4, 6));
        l.append(&ents(&[(4, 7)]));
        assert_eq!(l.term_at(7), Some(4));
        l.install_snapshot(LogId::new(6, 20));
        assert_eq!((l.last(), l.committed(), l.persisted(), l.term_at(7)), (LogId::new(6, 20), 20, 20, None));
        l.append(&ents(&[(6, 21)]));
        assert_eq!(l.term_at(21), Some(6));
    }
}
