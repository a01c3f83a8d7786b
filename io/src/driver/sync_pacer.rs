//! When the async write mode runs its background fdatasync.
//!
//! In async mode a flush writes without syncing and reports the entries at
//! once; a background sync makes them durable every `interval` while
//! anything is unsynced, one sync at a time. The pacing is its own type,
//! free of threads and clocks, so that the storage worker and the simulator
//! run the same decisions: a pacer that waits for a quiet moment instead
//! (the bug fixed in e541d96: under steady load it never synced at all) is
//! planted here and found by the simulator's sync-lag checker.

use std::time::Duration;

use tarn_core::Nanos;

/// Decides when a background sync starts. Times are nanoseconds of any
/// monotonic clock the caller keeps.
#[derive(Clone, Debug)]
pub struct SyncPacer {
    interval: Nanos,
    /// The earliest time the next sync may start.
    next_at: Nanos,
    /// Something was written since the last sync started.
    unsynced: bool,
    /// A sync started and has not finished.
    in_flight: bool,
    /// Planted bug: every write pushes the next sync one interval away.
    waits_for_quiet: bool,
}

impl SyncPacer {
    /// A pacer that syncs every `interval` while something is unsynced; the
    /// first sync may start at once.
    pub fn new(interval: Duration) -> SyncPacer {
        SyncPacer {
            interval: u64::try_from(interval.as_nanos()).unwrap_or(Nanos::MAX),
            next_at: 0,
            unsynced: false,
            in_flight: false,
            waits_for_quiet: false,
        }
    }

    /// Plants [`tarn_core::PlantedBug::AsyncSyncWaitsForQuiet`] if `bug` is it.
    #[cfg(feature = "planted-bugs")]
    pub fn with_planted_bug(mut self, bug: Option<tarn_core::PlantedBug>) -> SyncPacer {
        self.waits_for_quiet = bug == Some(tarn_core::PlantedBug::AsyncSyncWaitsForQuiet);
        self
    }

    /// A flush wrote data that no sync covers yet.
    pub fn wrote(&mut self, now: Nanos) {
        self.unsynced = true;
        if self.waits_for_quiet {
            self.next_at = now.saturating_add(self.interval);
        }
    }

    /// Whether a sync starts now; if so, it is in flight until
    /// [`SyncPacer::finished`], and the next one is due an interval later
    /// however busy the writers are.
    pub fn start(&mut self, now: Nanos) -> bool {
        if !self.unsynced || self.in_flight || now < self.next_at {
            return false;
        }
        self.next_at = now.saturating_add(self.interval);
        self.unsynced = false;
        self.in_flight = true;
        true
    }

    /// The sync that [`SyncPacer::start`] began is over (or there was nothing
    /// to run). `more`: the store still needs a sync, e.g. to record in its
    /// watermark what this one made durable.
    pub fn finished(&mut self, more: bool) {
        self.in_flight = false;
        self.unsynced |= more;
    }

    /// Everything was synced in line (shutdown): nothing is owed.
    pub fn synced_all(&mut self) {
        self.unsynced = false;
    }

    /// Whether a sync is running.
    pub fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// Whether something written is not covered by a sync yet.
    pub fn unsynced(&self) -> bool {
        self.unsynced
    }

    /// When the next sync is due; `None` while one runs or nothing is owed.
    pub fn due_at(&self) -> Option<Nanos> {
        (self.unsynced && !self.in_flight).then_some(self.next_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = 1_000_000;

    /// Writes every `gap` for `until`, syncing whenever due (a sync takes
    /// no time); returns the times syncs started.
    fn steady_writes(mut pacer: SyncPacer, gap: Nanos, until: Nanos) -> Vec<Nanos> {
        let mut starts = Vec::new();
        let mut t = 0;
        while t < until {
            pacer.wrote(t);
            if pacer.start(t) {
                starts.push(t);
                pacer.finished(false);
            }
            t += gap;
        }
        starts
    }

    #[test]
    fn under_steady_load_a_sync_starts_every_interval() {
        let starts = steady_writes(SyncPacer::new(Duration::from_millis(10)), MS, 100 * MS);
        assert_eq!(starts.len(), 10, "one sync per 10 ms over 100 ms of writes every 1 ms: {starts:?}");
        assert!(starts.windows(2).all(|w| w[1] - w[0] == 10 * MS), "{starts:?}");
    }

    #[test]
    fn nothing_unsynced_means_no_sync_and_no_deadline() {
        let mut p = SyncPacer::new(Duration::from_millis(10));
        assert!(!p.start(0));
        assert_eq!(p.due_at(), None);
        p.wrote(5 * MS);
        assert_eq!(p.due_at(), Some(0), "the first sync may start at once");
        assert!(p.start(5 * MS));
        assert_eq!(p.due_at(), None, "none is due while one runs");
        p.wrote(6 * MS);
        assert!(!p.start(20 * MS), "one sync at a time");
        p.finished(false);
        assert_eq!(p.due_at(), Some(15 * MS), "the next one an interval after the last start");
        p.synced_all();
        assert_eq!(p.due_at(), None);
    }

    #[test]
    fn a_finished_sync_that_leaves_work_asks_for_another() {
        let mut p = SyncPacer::new(Duration::from_millis(10));
        p.wrote(0);
        assert!(p.start(0));
        p.finished(true);
        assert!(p.unsynced(), "the watermark of what it synced still has to be written");
        assert!(p.start(10 * MS));
    }

    #[cfg(feature = "planted-bugs")]
    #[test]
    fn the_planted_pacer_never_syncs_under_steady_load() {
        let planted = SyncPacer::new(Duration::from_millis(10))
            .with_planted_bug(Some(tarn_core::PlantedBug::AsyncSyncWaitsForQuiet));
        let starts = steady_writes(planted, MS, 100 * MS);
        assert!(starts.is_empty(), "{starts:?}");
    }
}
