//! Node-level liveness changes, fanned out to every group without loss.
//!
//! The transport suspects a silent peer once for the whole node; every group
//! must then hear `PeerDown`/`PeerUp`, or a quiescent follower of a dead
//! leader never wakes (issue 17). Pushing one input per group through the
//! groups' bounded queues dropped it for a group whose queue was full, and a
//! group that then processed a `Quiesce` still in its queue went quiet for
//! good. Instead the changes go into one [`watch`] channel that each group
//! task polls: a watch never fills, and a group that falls far behind
//! replays the current state instead of the history it missed.

use std::collections::{BTreeSet, VecDeque};

use tarn_core::NodeId;
use tokio::sync::watch;

/// Changes kept for groups that are behind; past this they resynchronize.
const HISTORY: usize = 64;

/// The node's view of its peers, as published to its groups.
#[derive(Debug, Default)]
pub(crate) struct PeerLiveness {
    /// Number of changes so far (the last one's sequence number).
    seq: u64,
    /// The most recent changes: (sequence, peer, alive).
    recent: VecDeque<(u64, NodeId, bool)>,
    /// Peers suspected down now.
    down: BTreeSet<NodeId>,
    /// Every peer a change was ever reported for.
    known: BTreeSet<NodeId>,
}

impl PeerLiveness {
    /// Records a change (called from the transport's liveness sink).
    pub(crate) fn record(&mut self, peer: NodeId, alive: bool) {
        self.seq += 1;
        self.recent.push_back((self.seq, peer, alive));
        if self.recent.len() > HISTORY {
            self.recent.pop_front();
        }
        self.known.insert(peer);
        if alive {
            self.down.remove(&peer);
        } else {
            self.down.insert(peer);
        }
    }

    /// The sequence number a new group starts from (it hears later changes).
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// Calls `emit(peer, alive)` for each change a group that has seen
    /// changes up to `seen` must still hear, in order; returns the new
    /// `seen`. A group further behind than the history hears the current
    /// state of every known peer instead.
    pub(crate) fn catch_up(&self, seen: u64, mut emit: impl FnMut(NodeId, bool)) -> u64 {
        let oldest = self.recent.front().map_or(self.seq + 1, |e| e.0);
        if seen + 1 >= oldest {
            for &(_, peer, alive) in self.recent.iter().filter(|e| e.0 > seen) {
                emit(peer, alive);
            }
        } else {
            for &peer in &self.known {
                emit(peer, !self.down.contains(&peer));
            }
        }
        self.seq
    }
}

/// The sending side, held by the node.
pub(crate) type LivenessTx = watch::Sender<PeerLiveness>;
/// The receiving side, one per group task.
pub(crate) type LivenessRx = watch::Receiver<PeerLiveness>;

#[cfg(test)]
mod tests {
    use super::*;

    fn heard(l: &PeerLiveness, seen: u64) -> (u64, Vec<String>) {
        let mut out = Vec::new();
        let seen = l.catch_up(seen, |p, alive| out.push(format!("{}{p}", if alive { "up" } else { "down" })));
        (seen, out)
    }

    #[test]
    fn a_group_hears_every_change_in_order_and_a_late_one_the_current_state() {
        let mut l = PeerLiveness::default();
        let start = l.seq();
        l.record(2, false);
        l.record(2, true);
        l.record(3, false);
        let (seen, out) = heard(&l, start);
        assert_eq!(out, ["down2", "up2", "down3"], "a flap is not coalesced away");
        assert_eq!(heard(&l, seen), (seen, vec![]), "nothing new, nothing delivered");
        // A group behind by more than the history: the state, not the past.
        for i in 0..(HISTORY as u64 + 10) {
            l.record(4, i % 2 == 1);
        }
        assert_eq!(heard(&l, seen).1, ["up2", "down3", "up4"]);
    }
}
