//! Simulated clients that watch the whole tree through the request path, as
//! a real client's watch does (issue 14): a `Watch` request, `Watch` frames,
//! the `Watching` answer, `WatchEnded` cut-offs (a snapshot installed under
//! the watch) and resumes after the last index seen, `Unwatch`, watches lost
//! with a crashed node and resumed on another, and "compacted" refusals that
//! restart from the node's present.
//!
//! The `client-watch` checker: what a watcher receives, across every resume
//! and every node it moves to, is exactly the world's whole-tree watch stream
//! (on which every node's own watch must agree) from the index its watch
//! began after: in order, without a gap, without a repeat. Only a
//! "compacted" refusal lets a watcher skip ahead, and then the server said so.

use tarn_core::{Index, Nanos};
use tarn_kv::{EventKind, WatchEvent};

use crate::trace::hash_bytes;

/// Client numbers of watchers start here (the workload's clients count up
/// from 0), so an answer frame finds its way to the right kind of client.
pub(crate) const WATCHER_CLIENT_BASE: u32 = 1 << 20;

/// One event as the world's watch stream holds it: index, key hash, and a
/// hash of what happened.
pub(crate) type StreamItem = (Index, u64, u64);

/// The stream's form of `ev`.
pub(crate) fn stream_item(ev: &WatchEvent) -> StreamItem {
    let kind_hash = match &ev.kind {
        EventKind::Put { value } => hash_bytes(value) | 1,
        EventKind::DirCreated => 2,
        EventKind::Removed => 4,
        EventKind::LockHolder { holder } => holder.wrapping_mul(8) | 8,
    };
    (ev.index, hash_bytes(ev.key.as_bytes()), kind_hash)
}

/// One watching client.
#[derive(Debug, Default)]
pub(crate) struct Watcher {
    /// The node it talks to (an index into the world's nodes).
    pub target: usize,
    /// The id of its current `Watch` request: its answer and its `Watch`
    /// frames carry it. `None` between a lost watch and its resume.
    pub request: Option<u64>,
    /// What the current request asked to start after (`None`: the node's
    /// applied index, which the `Watching` answer reports).
    pub asked_after: Option<Index>,
    /// The current request was answered `Watching`.
    pub watching: bool,
    /// The id of an `Unwatch` in flight: its `Done` resumes the watch.
    pub unwatch: Option<u64>,
    /// Position in the world's stream of the next event owed; `None` until
    /// the first `Watching` (or after a "compacted" refusal).
    pub cursor: Option<usize>,
    /// The index of the last event received (or where the watch began).
    pub last_index: Index,
    /// When its latest request and its node's latest answer arrive: a
    /// connection is a TCP stream, so later frames never overtake them.
    pub request_at: Nanos,
    pub answer_at: Nanos,
}

impl Watcher {
    /// What the next `Watch` request asks for: the events after the last one
    /// seen, once it has a place in the stream.
    pub fn resume_after(&self) -> Option<Index> {
        if self.cursor.is_some() {
            Some(self.last_index)
        } else {
            self.asked_after
        }
    }

    /// A `Watch` request with `after` is being sent. Events may come before
    /// its `Watching` answer (the history already due is delivered at
    /// registration), so a resumed watch keeps its place in the stream.
    pub fn sent(&mut self, request: u64, after: Option<Index>) {
        self.request = Some(request);
        self.asked_after = after;
        self.watching = false;
        self.unwatch = None;
    }

    /// The current request was answered `Watching { after_index: after }`.
    pub fn started(&mut self, stream: &[StreamItem], after: Index) -> Result<(), String> {
        if let Some(asked) = self.asked_after {
            if asked != after {
                return Err(format!("asked to watch after index {asked}, told it watches after {after}"));
            }
        }
        // A resumed watch keeps its place: events may have come before
        // this answer, and the asked index (checked above) is where it was.
        if self.cursor.is_none() || self.asked_after.is_none() {
            self.cursor = Some(stream.partition_point(|e| e.0 <= after));
            self.last_index = after;
        }
        self.watching = true;
        Ok(())
    }

    /// Events of the current request arrived: each must be the stream's
    /// next. Returns how many.
    pub fn receive(&mut self, stream: &[StreamItem], events: &[WatchEvent]) -> Result<usize, String> {
        let mut pos = match (self.cursor, self.asked_after) {
            (Some(pos), _) => pos,
            // Events before the `Watching` answer of a first watch from a
            // given index: they start right after it.
            (None, Some(after)) => stream.partition_point(|e| e.0 <= after),
            (None, None) => {
                return Err("events arrived before the watch said where it starts".to_string());
            }
        };
        for ev in events {
            let item = stream_item(ev);
            match stream.get(pos) {
                Some(expected) if *expected == item => {}
                Some(expected) => {
                    let what = if ev.index > expected.0 {
                        "a gap"
                    } else if ev.index <= self.last_index {
                        "a repeat or a reorder"
                    } else {
                        "a different event"
                    };
                    return Err(format!(
                        "event {} {:?} at index {} where the stream's event #{pos} is at index {} ({what})",
                        ev.key, ev.kind, ev.index, expected.0
                    ));
                }
                None => {
                    return Err(format!(
                        "event {} {:?} at index {} is ahead of every node's own watch ({} events)",
                        ev.key,
                        ev.kind,
                        ev.index,
                        stream.len()
                    ));
                }
            }
            pos += 1;
            self.last_index = ev.index;
        }
        self.cursor = Some(pos);
        Ok(events.len())
    }

    /// The server refused to resume: the history after the asked index is
    /// compacted. The next watch starts from the node's present, and the
    /// checker from wherever that is.
    pub fn restart_from_now(&mut self) {
        self.cursor = None;
        self.asked_after = None;
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn put(index: Index, key: &str, value: &'static [u8]) -> WatchEvent {
        WatchEvent { index, key: key.into(), kind: EventKind::Put { value: Bytes::from_static(value) } }
    }

    fn stream(events: &[WatchEvent]) -> Vec<StreamItem> {
        events.iter().map(stream_item).collect()
    }

    #[test]
    fn a_watch_that_resumes_where_it_left_off_passes() {
        let all = [put(3, "/a", b"1"), put(5, "/b", b"2"), put(5, "/c", b"3"), put(9, "/a", b"4")];
        let s = stream(&all);
        let mut w = Watcher::default();
        w.sent(1, None);
        w.started(&s, 2).unwrap();
        assert_eq!(w.receive(&s, &all[..3]), Ok(3));
        // Cut off; resumed after the last index seen, on another node: the
        // rest may come before the answer.
        assert_eq!(w.resume_after(), Some(5));
        w.sent(2, w.resume_after());
        assert_eq!(w.receive(&s, &all[3..]), Ok(1));
        w.started(&s, 5).unwrap();
        // A resume that delivers index 5 again is a repeat.
        let mut again = Watcher::default();
        again.sent(1, None);
        again.started(&s, 2).unwrap();
        again.receive(&s, &all[..3]).unwrap();
        again.sent(2, again.resume_after());
        let err = again.receive(&s, &all[1..]).unwrap_err();
        assert!(err.contains("a repeat"), "{err}");
    }

    #[test]
    fn gaps_repeats_and_foreign_events_are_caught() {
        let all = [put(3, "/a", b"1"), put(5, "/b", b"2"), put(9, "/a", b"4")];
        let s = stream(&all);
        let fresh = || {
            let mut w = Watcher::default();
            w.sent(1, None);
            w.started(&s, 0).unwrap();
            w
        };
        let err = fresh().receive(&s, &[all[0].clone(), all[2].clone()]).unwrap_err();
        assert!(err.contains("a gap"), "{err}");
        let err = fresh().receive(&s, &[all[0].clone(), all[0].clone()]).unwrap_err();
        assert!(err.contains("a repeat"), "{err}");
        let err = fresh().receive(&s, &[put(3, "/a", b"other")]).unwrap_err();
        assert!(err.contains("a different event"), "{err}");
        let err = fresh().receive(&s, &all).map(|_| ()).and_then(|()| {
            let mut w = fresh();
            w.receive(&s, &all)?;
            w.receive(&s, &[put(12, "/z", b"9")]).map(|_| ())
        });
        assert!(err.unwrap_err().contains("ahead of every node"));
        // Asking to resume after 5 and being told 3 is a server bug.
        let mut w = fresh();
        w.receive(&s, &all[..2]).unwrap();
        w.sent(2, w.resume_after());
        assert!(w.started(&s, 3).unwrap_err().contains("asked to watch after index 5"));
    }

    #[test]
    fn a_compacted_refusal_restarts_from_the_present() {
        let all = [put(3, "/a", b"1"), put(5, "/b", b"2"), put(9, "/a", b"4")];
        let s = stream(&all);
        let mut w = Watcher::default();
        w.sent(1, Some(1));
        w.restart_from_now();
        assert_eq!(w.resume_after(), None);
        w.sent(2, None);
        w.started(&s, 5).unwrap();
        assert_eq!(w.receive(&s, &all[2..]), Ok(1));
    }
}
