//! Node-level liveness, shared by every group of a node (issue 17).
//!
//! A quiescent Raft group sends nothing, so its followers cannot notice a
//! dead leader by its silence. The transport can: every established
//! connection carries a `PeerFrame::Ping` each `ping_interval_ms`, and
//! [`monitor`] suspects a peer whose connection is down or from which
//! nothing arrived for `suspect_after_ms`. Each change (suspected, or
//! reachable again) goes once to the liveness sink, which the driver turns
//! into `Input::PeerDown`/`PeerUp` for every group of the node. One ping per
//! peer pair per interval replaces the heartbeats of every idle group.
//!
//! A wrong suspicion is harmless: it only wakes quiet followers of that
//! peer, which then campaign as without quiescence (stickiness still holds
//! on every follower that hears from the leader).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tarn_core::NodeId;
use tokio::sync::watch;

use super::{read_peers, wait_shutdown, Peers, Shared, Transport};

/// Default of `TransportConfig::ping_interval_ms`.
pub const PING_INTERVAL_MS_DEFAULT: u64 = 25;

/// Default of `TransportConfig::suspect_after_ms`: four pings, well under
/// the default 150 ms minimum election timeout, so a quiescent group's
/// failover (suspicion, then one election timeout) stays within two.
pub const SUSPECT_AFTER_MS_DEFAULT: u64 = 100;

/// Told `(peer, alive)` each time a peer's liveness changes. Runs on the
/// monitor task: must not block.
pub type LivenessSink = Arc<dyn Fn(NodeId, bool) + Send + Sync>;

/// The clock of `last_heard_ms` and the sink, shared by the transport.
pub(super) struct Liveness {
    origin: Instant,
    sink: RwLock<Option<LivenessSink>>,
    /// What was last reported per peer (absent: alive, never reported).
    suspected: Mutex<BTreeMap<NodeId, bool>>,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness { origin: Instant::now(), sink: RwLock::new(None), suspected: Mutex::default() }
    }
}

impl Liveness {
    /// Milliseconds since the transport started.
    pub(super) fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// Records `peer`'s state and tells the sink if it changed.
    pub(super) fn set<M>(&self, shared: &Shared<M>, peer: NodeId, down: bool) {
        let changed = {
            let mut suspected = self.suspected.lock().unwrap_or_else(|e| e.into_inner());
            suspected.insert(peer, down).unwrap_or(false) != down
        };
        if !changed {
            return;
        }
        let node = shared.config.node_id;
        if down {
            shared.stats.peer_suspicions.fetch_add(1, Ordering::Relaxed);
            tracing::info!(node, peer, "peer suspected down (node-level liveness)");
        } else {
            tracing::info!(node, peer, "peer reachable again");
        }
        self.report(peer, !down);
    }

    fn report(&self, peer: NodeId, alive: bool) {
        let sink = self.sink.read().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(sink) = sink {
            sink(peer, alive);
        }
    }
}

impl<M> Transport<M> {
    /// Where liveness changes go (the driver: `PeerDown`/`PeerUp` to every
    /// group). Replaces an earlier sink.
    pub fn set_liveness_sink(&self, sink: LivenessSink) {
        *self.inner.shared.liveness.sink.write().unwrap_or_else(|e| e.into_inner()) = Some(sink);
    }

    /// Whether the transport suspects `peer` is down right now, by the same
    /// rule the monitor applies (`None`: not a known peer).
    pub fn suspects(&self, peer: NodeId) -> Option<bool> {
        let shared = &self.inner.shared;
        let now = shared.liveness.now_ms();
        read_peers(&self.inner.peers).get(&peer).map(|slot| {
            !alive(
                slot.connected.load(Ordering::Relaxed),
                slot.last_heard_ms.load(Ordering::Relaxed),
                now,
                shared.config.suspect_after_ms,
            )
        })
    }
}

/// The rule: connected, and heard from within the suspicion timeout.
fn alive(connected: bool, last_heard_ms: u64, now_ms: u64, suspect_after_ms: u64) -> bool {
    connected && now_ms.saturating_sub(last_heard_ms) < suspect_after_ms
}

/// How late this node's own scheduling runs, from the monitor's ticks: a
/// process that is itself stalled (an overloaded runtime, a long pause)
/// reads its peers' pings late, and must not blame the silence on them.
/// Each wrong suspicion wakes every quiet follower of that peer, and their
/// elections load the node further: without this, 10,000 groups on a busy
/// box suspected each other hundreds of times a minute.
#[derive(Debug, Default)]
struct OwnLag {
    last_check_ms: Option<u64>,
    /// Recent lateness, decaying by an eighth per tick.
    lag_ms: u64,
}

impl OwnLag {
    /// Records a tick at `now_ms` meant to come `interval_ms` after the
    /// previous one; returns the lag to forgive this tick.
    fn tick(&mut self, now_ms: u64, interval_ms: u64) -> u64 {
        let late =
            self.last_check_ms.map_or(0, |prev| now_ms.saturating_sub(prev).saturating_sub(interval_ms));
        self.last_check_ms = Some(now_ms);
        self.lag_ms = late.max(self.lag_ms * 7 / 8);
        self.lag_ms
    }
}

/// Checks every peer each ping interval and reports changes (a lost
/// connection is reported at once by its peer task: a peer that restarts
/// faster than the timeout still breaks its connection). Every peer
/// starts as alive (nothing is suspected before the first check), so a
/// peer that never connects is reported down once, after the timeout.
/// Silence is judged against the timeout plus this node's own recent
/// scheduling lag ([`OwnLag`]); a lost connection is not.
pub(super) async fn monitor<M>(shared: Arc<Shared<M>>, peers: Peers<M>, mut shutdown: watch::Receiver<bool>) {
    let interval_ms = shared.config.ping_interval_ms;
    let mut tick = tokio::time::interval(Duration::from_millis(interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = shared.liveness.now_ms();
    let mut own = OwnLag::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = wait_shutdown(&mut shutdown) => return,
        }
        let now = shared.liveness.now_ms();
        let lag = own.tick(now, interval_ms);
        if now.saturating_sub(started) < shared.config.suspect_after_ms {
            continue; // Give first connections their chance.
        }
        let window = shared.config.suspect_after_ms.saturating_add(lag);
        shared.stats.own_lag_ms.store(lag, Ordering::Relaxed);
        let states: Vec<(NodeId, bool)> = read_peers(&peers)
            .iter()
            .map(|(&id, slot)| {
                let (connected, heard) =
                    (slot.connected.load(Ordering::Relaxed), slot.last_heard_ms.load(Ordering::Relaxed));
                (id, !alive(connected, heard, now, window))
            })
            .collect();
        for (peer, down) in states {
            shared.liveness.set(&shared, peer, down);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{alive, OwnLag};

    #[test]
    fn own_lateness_widens_the_window_and_fades() {
        let mut own = OwnLag::default();
        assert_eq!(own.tick(1_000, 25), 0, "the first tick has nothing to compare");
        assert_eq!(own.tick(1_025, 25), 0, "on time");
        // Stalled for 300 ms: the silence this tick sees is our own.
        assert_eq!(own.tick(1_350, 25), 300);
        // It fades by an eighth per punctual tick, not at once.
        let next = own.tick(1_375, 25);
        assert!(next > 200 && next < 300, "{next}");
        let mut lag = next;
        for i in 0..80 {
            lag = own.tick(1_400 + i * 25, 25);
        }
        assert!(lag < 10, "{lag}");
    }

    #[test]
    fn a_peer_is_alive_only_connected_and_recently_heard() {
        assert!(alive(true, 100, 150, 100));
        assert!(!alive(true, 100, 200, 100), "silent for the whole timeout");
        assert!(!alive(false, 100, 101, 100), "connection down");
        assert!(alive(true, 200, 150, 100), "a clock read before the store is not negative");
    }
}
