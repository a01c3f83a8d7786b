//! Every bound the state machine enforces, in one place.
//!
//! The bounds are part of the replicated behaviour: every node of a group must run with the
//! same `KvConfig`, or the same command could be accepted on one node and refused on another.
//! The server therefore takes them from the group's configuration, never from local flags.

use serde::{Deserialize, Serialize};

use tarn_core::Nanos;

/// The limits and timings of one DtKV state machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvConfig {
    /// Longest key, in bytes of UTF-8 (Dongting: 8 KiB).
    pub max_key_size_bytes: usize,
    /// Largest value (Dongting: 1 MiB). Values are never empty.
    pub max_value_size_bytes: usize,
    /// Most items in one batch get/put/remove.
    pub max_batch_items: usize,
    /// Shortest TTL or lease a temporary node or lock accepts.
    pub min_ttl_nanos: Nanos,
    /// Longest TTL, lease or lock wait accepted.
    pub max_ttl_nanos: Nanos,
    /// Most waiters queued on one lock.
    pub max_lock_waiters: usize,
    /// A session with no write for this long (by replicated time) is forgotten.
    pub session_ttl_nanos: Nanos,
    /// How often (replicated time) the session table is swept for expired sessions.
    pub session_sweep_interval_nanos: Nanos,
    /// Most live client sessions; a new client beyond this is refused.
    pub max_sessions: usize,
    /// Most remembered responses per session (for writes the client has not acknowledged).
    pub max_session_responses: usize,
    /// Events kept for watchers that resume from an index (not replicated, local memory).
    pub watch_history_max_events: usize,
    /// Value bytes kept in the watch history (so large values cannot pin unbounded memory).
    pub watch_history_max_bytes: usize,
    /// Events queued for one watcher before it is cut off as too slow.
    pub watch_queue_max_events: usize,
    /// Most registered watchers on one state machine.
    pub max_watchers: usize,
    /// After the leader hands out an expiry command it waits this long before handing it out
    /// again (the first proposal may have been lost to a leader change).
    pub expire_retry_nanos: Nanos,
    /// A bug to plant (tests and simulator only). The kv's bugs are variants
    /// of the core's `PlantedBug`, so one switch plants a bug anywhere; the
    /// kv ignores the core's variants.
    #[cfg(feature = "planted-bugs")]
    #[serde(skip)]
    pub planted_bug: Option<tarn_core::PlantedBug>,
}

impl Default for KvConfig {
    fn default() -> Self {
        const SECOND_NANOS: Nanos = 1_000_000_000;
        KvConfig {
            max_key_size_bytes: 8 * 1024,
            max_value_size_bytes: 1024 * 1024,
            max_batch_items: 10_000,
            min_ttl_nanos: 1_000_000,
            max_ttl_nanos: 30 * 24 * 3600 * SECOND_NANOS,
            max_lock_waiters: 1024,
            session_ttl_nanos: 10 * 60 * SECOND_NANOS,
            session_sweep_interval_nanos: SECOND_NANOS,
            max_sessions: 100_000,
            max_session_responses: 10_000,
            watch_history_max_events: 100_000,
            watch_history_max_bytes: 64 * 1024 * 1024,
            watch_queue_max_events: 10_000,
            max_watchers: 100_000,
            expire_retry_nanos: SECOND_NANOS,
            #[cfg(feature = "planted-bugs")]
            planted_bug: None,
        }
    }
}

impl KvConfig {
    /// Refuses configurations under which the state machine cannot work at all.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_key_size_bytes == 0 {
            return Err("max_key_size_bytes must be > 0".into());
        }
        if self.max_value_size_bytes == 0 {
            return Err("max_value_size_bytes must be > 0".into());
        }
        if self.max_batch_items == 0 {
            return Err("max_batch_items must be > 0".into());
        }
        if self.min_ttl_nanos == 0 || self.min_ttl_nanos > self.max_ttl_nanos {
            return Err(format!(
                "need 0 < min_ttl_nanos ({}) <= max_ttl_nanos ({})",
                self.min_ttl_nanos, self.max_ttl_nanos
            ));
        }
        if self.max_session_responses == 0 {
            return Err("max_session_responses must be > 0".into());
        }
        if self.watch_queue_max_events == 0 {
            return Err("watch_queue_max_events must be > 0".into());
        }
        if self.session_sweep_interval_nanos == 0 {
            return Err("session_sweep_interval_nanos must be > 0".into());
        }
        Ok(())
    }
}
