//! Watch delivery: the sinks that carry a watcher's events to its
//! connection, and the one loop that feeds them from the kv's queues. The
//! server's state machine and the simulator's both hold a [`WatchSinks`], so
//! what a simulated client's watch receives is what a real one would.

use std::collections::HashMap;

use tarn_kv::{CutOffReason, KvStateMachine, WatchEvent, WatchId, WatchPoll};

/// What a watcher's sink receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchDelivery {
    /// Events in index order (whole indexes are never split).
    Events(Vec<WatchEvent>),
    /// The watch is over (cut off); the client resumes after its last index.
    Ended(String),
}

/// Delivers to one watcher; returns false once nobody listens (the watch is
/// then removed).
pub type WatchSink = Box<dyn FnMut(WatchDelivery) -> bool + Send>;

/// Events taken from one watcher per poll (whole indexes are never split).
pub const MAX_WATCH_EVENTS_PER_POLL: usize = 1024;

/// The sinks of a state machine's watchers, by the kv's watch id.
#[derive(Default)]
pub struct WatchSinks {
    sinks: HashMap<WatchId, WatchSink>,
}

impl WatchSinks {
    /// Whether no watcher has a sink.
    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }

    /// Registers a watch in `kv` with `sink` and delivers whatever history
    /// is already due.
    pub fn watch(
        &mut self,
        kv: &mut KvStateMachine,
        key: &str,
        subtree: bool,
        after_index: Option<tarn_core::Index>,
        sink: WatchSink,
    ) -> Result<WatchId, tarn_kv::WatchRegisterError> {
        let id = kv.watch(key, subtree, after_index)?;
        self.sinks.insert(id, sink);
        self.deliver(kv, id);
        Ok(id)
    }

    /// Ends watch `id` in `kv` and drops its sink.
    pub fn unwatch(&mut self, kv: &mut KvStateMachine, id: WatchId) {
        kv.unwatch(id);
        self.sinks.remove(&id);
    }

    /// Delivers to every watcher with a sink that has events or a cut-off
    /// due (after a batch of applies, or an installed snapshot). Watchers
    /// without a sink (the simulator's own whole-tree watches) are left to
    /// whoever polls them.
    pub fn deliver_ready(&mut self, kv: &mut KvStateMachine) {
        if self.sinks.is_empty() {
            return;
        }
        for id in kv.ready_watches() {
            if self.sinks.contains_key(&id) {
                self.deliver(kv, id);
            }
        }
    }

    fn deliver(&mut self, kv: &mut KvStateMachine, id: WatchId) {
        let Some(sink) = self.sinks.get_mut(&id) else { return };
        let alive = match kv.poll_watch(id, MAX_WATCH_EVENTS_PER_POLL) {
            WatchPoll::Events(events) if events.is_empty() => true,
            WatchPoll::Events(events) => sink(WatchDelivery::Events(events)),
            WatchPoll::CutOff(reason) => {
                sink(WatchDelivery::Ended(cut_off_text(reason)));
                false
            }
            WatchPoll::Unknown => false,
        };
        if !alive {
            self.unwatch(kv, id);
        }
    }
}

/// Why a watch ended, in words a client shows (it carries the index to resume after).
fn cut_off_text(reason: CutOffReason) -> String {
    match reason {
        CutOffReason::QueueFull { max_events, last_delivered_index } => {
            format!("watcher fell {max_events} events behind; resume after index {last_delivered_index}")
        }
        CutOffReason::SnapshotInstalled { snapshot_index } => {
            format!("node installed a snapshot at {snapshot_index}; re-read and watch again")
        }
    }
}
