//! Watches: every change as an event carrying its Raft index, for keys and whole subtrees.
//!
//! Stronger than Dongting's (which may coalesce notifications): a watcher sees every event
//! after the index it starts from, in order, or learns clearly that it cannot:
//! - resuming from an index older than the kept history gives `WatchError::Compacted`
//!   (re-read the state, then watch from the index of that read);
//! - a watcher whose queue reaches `watch_queue_max_events` drops its queue and reads the
//!   shared history from its last delivered index instead (catch-up mode, no per-watcher
//!   memory); if the history moves past it, it is cut off with `CutOffReason::QueueFull`
//!   (never silently dropped) and the client re-reads, then watches from the read's index.
//!
//! A watcher registered with an old `after_index` starts in catch-up mode too, so resuming
//! costs no copying and is limited only by what the history still holds.
//!
//! Watches are local to one server (like etcd's), not replicated and not in snapshots. The
//! history is a bounded ring (events and value bytes); events of one index are either all
//! kept or all gone, so "resume after index i" is exact.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use tarn_core::Index;

use crate::command::ClientId;
use crate::config::KvConfig;
use crate::key::parent_key;

/// Names a registered watcher on one server.
pub type WatchId = u64;

/// What happened to a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// A value node was created or its value replaced.
    Put { value: Bytes },
    /// A directory was created.
    DirCreated,
    /// The node was removed (by remove, CAS, expiry, or with its expired temporary parent).
    Removed,
    /// A lock got a (new) holder: created for it, or handed over from the previous holder.
    LockHolder { holder: ClientId },
}

/// One change. `index` is the Raft index of the entry that made it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    pub index: Index,
    #[serde(with = "arc_str")]
    pub key: Arc<str>,
    pub kind: EventKind,
}

mod arc_str {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(key: &Arc<str>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(key)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Arc<str>, D::Error> {
        String::deserialize(deserializer).map(Arc::from)
    }
}

impl WatchEvent {
    fn value_bytes(&self) -> usize {
        match &self.kind {
            EventKind::Put { value } => value.len(),
            _ => 0,
        }
    }
}

/// Why a watch could not be registered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum WatchError {
    #[error("events after index {requested} are compacted (history starts after {oldest_kept}); re-read, then watch from the read's index")]
    Compacted { requested: Index, oldest_kept: Index },
    /// Not returned since resuming reads the shared history; kept for wire stability.
    #[error("{pending} events after index {requested} exceed one watcher's queue ({max}); re-read, then watch from the read's index")]
    TooFarBehind { requested: Index, pending: usize, max: usize },
    #[error("too many watchers ({max}); remove some or raise max_watchers")]
    TooManyWatchers { max: usize },
}

/// Why a watcher was cut off. After a cut-off the watcher is gone; the client re-registers
/// from the last index it fully processed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CutOffReason {
    /// The reader is too slow: its queue reached `max_events` undelivered events and then the
    /// shared history moved past `last_delivered_index`.
    QueueFull { max_events: usize, last_delivered_index: Index },
    /// This server installed a snapshot, so it no longer has the events in between.
    SnapshotInstalled { snapshot_index: Index },
}

/// The answer to a poll.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WatchPoll {
    /// Events in index order (possibly none). An index's events are never split across polls.
    Events(Vec<WatchEvent>),
    /// The watcher was cut off and is now removed.
    CutOff(CutOffReason),
    /// No such watcher (never registered, removed, or already reported cut off).
    Unknown,
}

#[derive(Debug)]
struct Watcher {
    key: Arc<str>,
    subtree: bool,
    /// Events at or below this index were already delivered or predate the watch.
    after_index: Index,
    /// Reading past events from the shared history (after registering with an old index, or
    /// after its queue overflowed) instead of from `queue`.
    catching_up: bool,
    queue: VecDeque<WatchEvent>,
    cut_off: Option<CutOffReason>,
}

impl Watcher {
    fn matches(&self, key: &str) -> bool {
        if self.subtree {
            crate::key::is_in_subtree(key, &self.key)
        } else {
            *self.key == *key
        }
    }
}

/// History and watchers of one state machine.
#[derive(Debug, Default)]
pub(crate) struct WatchHub {
    history: VecDeque<WatchEvent>,
    history_value_bytes: usize,
    /// Every event with an index above this is in `history`.
    history_floor: Index,
    watchers: HashMap<WatchId, Watcher>,
    /// Watchers by watched key, to find the interested ones in O(depth) per event.
    by_key: HashMap<Arc<str>, Vec<WatchId>>,
    /// Watchers with something to deliver (events or a cut-off), in id order.
    ready: BTreeSet<WatchId>,
    next_id: WatchId,
}

impl WatchHub {
    pub fn new(history_floor: Index) -> Self {
        WatchHub { history_floor, next_id: 1, ..Default::default() }
    }

    pub fn history_floor(&self) -> Index {
        self.history_floor
    }

    pub fn history_len(&self) -> usize {
        self.history.len()
    }

    pub fn emit(&mut self, event: WatchEvent, config: &KvConfig) {
        if !self.watchers.is_empty() {
            self.dispatch(&event, config);
        }
        if config.watch_history_max_events == 0 {
            self.history_floor = self.history_floor.max(event.index);
            return;
        }
        self.history_value_bytes += event.value_bytes();
        self.history.push_back(event);
        while self.history.len() > config.watch_history_max_events
            || (self.history_value_bytes > config.watch_history_max_bytes && self.history.len() > 1)
        {
            self.evict_oldest();
        }
    }

    fn evict_oldest(&mut self) {
        let Some(oldest) = self.history.pop_front() else { return };
        self.history_value_bytes -= oldest.value_bytes();
        self.history_floor = self.history_floor.max(oldest.index);
        // The rest of that index's events go too: history holds whole indexes only.
        while self.history.front().is_some_and(|event| event.index <= self.history_floor) {
            let event = self.history.pop_front().expect("front exists");
            self.history_value_bytes -= event.value_bytes();
        }
    }

    fn dispatch(&mut self, event: &WatchEvent, config: &KvConfig) {
        // The key itself (key and subtree watches), then each ancestor (subtree watches only).
        let mut key: &str = &event.key;
        let mut exact = true;
        loop {
            if let Some(ids) = self.by_key.get(key) {
                for &id in ids {
                    let watcher = self.watchers.get_mut(&id).expect("by_key only holds live watchers");
                    if !(exact || watcher.subtree) || watcher.cut_off.is_some() || watcher.catching_up {
                        // Catching-up watchers read this event from the history later.
                        continue;
                    }
                    if event.index <= watcher.after_index {
                        continue;
                    }
                    if watcher.queue.len() >= config.watch_queue_max_events {
                        // Too slow for its own queue: drop the queue and fall back to reading
                        // the shared history from the last delivered index. Memory stays
                        // bounded; the watcher is cut off only if the history moves past it.
                        watcher.queue.clear();
                        watcher.catching_up = true;
                    } else {
                        watcher.queue.push_back(event.clone());
                    }
                    self.ready.insert(id);
                }
            }
            if key.is_empty() {
                break;
            }
            key = parent_key(key);
            exact = false;
        }
    }

    /// Registers a watch on `key` (and its subtree if `subtree`), delivering events with an
    /// index above `after_index` (`None` = from now on, `applied_index`). Past events are read
    /// from the shared history as the watcher polls (catch-up mode), never copied up front.
    pub fn register(
        &mut self,
        key: &str,
        subtree: bool,
        after_index: Option<Index>,
        applied_index: Index,
        config: &KvConfig,
    ) -> Result<WatchId, WatchError> {
        if self.watchers.len() >= config.max_watchers {
            return Err(WatchError::TooManyWatchers { max: config.max_watchers });
        }
        let key: Arc<str> = Arc::from(key);
        let mut watcher = Watcher {
            key: key.clone(),
            subtree,
            after_index: applied_index,
            catching_up: false,
            queue: VecDeque::new(),
            cut_off: None,
        };
        if let Some(requested) = after_index {
            if requested < self.history_floor {
                return Err(WatchError::Compacted { requested, oldest_kept: self.history_floor });
            }
            watcher.after_index = requested;
            watcher.catching_up = self.history.back().is_some_and(|last| last.index > requested);
        }
        let id = self.next_id;
        self.next_id += 1;
        if watcher.catching_up {
            self.ready.insert(id);
        }
        self.watchers.insert(id, watcher);
        self.by_key.entry(key).or_default().push(id);
        Ok(id)
    }

    pub fn unregister(&mut self, id: WatchId) -> bool {
        let Some(watcher) = self.watchers.remove(&id) else { return false };
        self.ready.remove(&id);
        if let Some(ids) = self.by_key.get_mut(&watcher.key) {
            ids.retain(|&other| other != id);
            if ids.is_empty() {
                self.by_key.remove(&watcher.key);
            }
        }
        true
    }

    /// Takes up to about `max_events` events (whole indexes: the last index taken is
    /// completed even past `max_events`). Call between entries, never in the middle of one.
    pub fn poll(&mut self, id: WatchId, max_events: usize, config: &KvConfig) -> WatchPoll {
        let max_events = max_events.max(1);
        let Some(watcher) = self.watchers.get_mut(&id) else { return WatchPoll::Unknown };
        if watcher.catching_up && watcher.after_index < self.history_floor {
            // The history moved past what this watcher has seen: it cannot be served anymore.
            watcher.cut_off = Some(CutOffReason::QueueFull {
                max_events: config.watch_queue_max_events,
                last_delivered_index: watcher.after_index,
            });
        }
        if let Some(reason) = watcher.cut_off.clone() {
            self.unregister(id);
            return WatchPoll::CutOff(reason);
        }
        let mut events = Vec::new();
        if watcher.catching_up {
            let start = self.history.partition_point(|event| event.index <= watcher.after_index);
            let mut scanned_to = watcher.after_index;
            let mut reached_end = true;
            for event in self.history.range(start..) {
                if events.len() >= max_events && event.index != scanned_to {
                    reached_end = false;
                    break;
                }
                scanned_to = event.index;
                if watcher.matches(&event.key) {
                    events.push(event.clone());
                }
            }
            watcher.after_index = scanned_to;
            if reached_end {
                // Caught up: from now on `dispatch` queues new events for it.
                watcher.catching_up = false;
                self.ready.remove(&id);
            }
            return WatchPoll::Events(events);
        }
        while let Some(front) = watcher.queue.front() {
            let same_index = events.last().is_some_and(|last: &WatchEvent| last.index == front.index);
            if events.len() >= max_events && !same_index {
                break;
            }
            events.push(watcher.queue.pop_front().expect("front exists"));
        }
        if let Some(last) = events.last() {
            watcher.after_index = watcher.after_index.max(last.index);
        }
        if watcher.queue.is_empty() {
            self.ready.remove(&id);
        }
        WatchPoll::Events(events)
    }

    /// Watchers with events or a cut-off waiting, in id order.
    pub fn ready(&self) -> impl Iterator<Item = WatchId> + '_ {
        self.ready.iter().copied()
    }

    pub fn watcher_count(&self) -> usize {
        self.watchers.len()
    }

    /// A snapshot replaced the state: history is gone, every watcher is cut off.
    pub fn reset_for_snapshot(&mut self, snapshot_index: Index) {
        self.history.clear();
        self.history_value_bytes = 0;
        self.history_floor = snapshot_index;
        for (&id, watcher) in self.watchers.iter_mut() {
            watcher.queue.clear();
            watcher.catching_up = false;
            watcher.cut_off = Some(CutOffReason::SnapshotInstalled { snapshot_index });
            self.ready.insert(id);
        }
    }
}
