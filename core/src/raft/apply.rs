//! Handing committed, durable entries to the state machine (`Action::Apply`,
//! with the ids of this leader's proposals among them), fetching entries
//! older than the in-memory tail from storage (for apply and for
//! replication), and evicting the tail once it is durable and applied.

use std::collections::VecDeque;

use super::{RawNode, RoleState};
use crate::config::Config;
use crate::io::{Action, DropReason};
use crate::types::{Entry, Index};

/// Entries from `from` on out of the fetched run `fetched`, capped like one
/// append message; `None` if `fetched` does not hold `from`.
pub(super) fn fetched_slice(fetched: &VecDeque<Entry>, cfg: &Config, from: Index) -> Option<Vec<Entry>> {
    let first = fetched.front()?.index;
    if from < first || from > fetched.back()?.index {
        return None;
    }
    let start = (from - first) as usize;
    let mut bytes = 0;
    let mut out = Vec::new();
    for e in fetched.range(start..).take(cfg.max_entries_per_msg) {
        if !out.is_empty() && bytes + e.size_bytes() > cfg.max_size_per_msg_bytes {
            break;
        }
        bytes += e.size_bytes();
        out.push(e.clone());
    }
    Some(out)
}

impl RawNode {
    /// Hands committed, durable entries to the state machine, with the ids of the proposals among
    /// them.
    pub(super) fn maybe_apply(&mut self, actions: &mut Vec<Action>) {
        let upto = self.log.committed().min(self.log.persisted());
        // While a snapshot install is pending the driver is replacing the
        // state machine: entries applied now would land on the snapshot's
        // state (found by the raft_cluster fuzz target: a follower whose
        // earlier appends became durable after `InstallSnapshot` applied
        // them after the install). The install moves `applying` past them.
        if self.applying >= upto || self.snap.installing() {
            return;
        }
        let from = self.applying + 1;
        let max = (upto - self.applying) as usize;
        let entries = match self.log.slice(from, max, usize::MAX) {
            Some((e, _)) => e,
            None => match fetched_slice(&self.fetched, &self.cfg, from) {
                Some(mut e) => {
                    e.retain(|e| e.index <= upto);
                    e
                }
                None => {
                    self.request_fetch(from, actions);
                    return;
                }
            },
        };
        let Some(last) = entries.last().map(|e| e.index) else { return };
        debug_assert_eq!(entries[0].index, from);
        let mut proposals = Vec::new();
        if let RoleState::Leader(l) = &mut self.state {
            while let Some(&(log_id, id)) = l.proposals.front() {
                if log_id.index > last {
                    break;
                }
                l.proposals.pop_front();
                let entry = log_id.index.checked_sub(from).and_then(|k| entries.get(k as usize));
                if entry.is_some_and(|e| e.term == log_id.term) {
                    proposals.push((log_id.index, id));
                } else {
                    let reason = DropReason::LeadershipLost { leader_hint: self.leader_id };
                    actions.push(Action::ProposalDropped { id, reason });
                }
            }
        }
        self.applying = last;
        self.snap.applied_bytes += entries.iter().map(|e| e.size_bytes() as u64).sum::<u64>();
        actions.push(Action::Apply { entries, proposals });
    }

    /// Asks storage for entries from `from` on that are older than the in-memory tail (one fetch
    /// at a time).
    pub(super) fn request_fetch(&mut self, from: Index, actions: &mut Vec<Action>) {
        if self.fetch_outstanding {
            return;
        }
        let to = self.log.tail_first().min(from + self.cfg.max_entries_per_msg as Index);
        debug_assert!(from < to);
        self.fetch_outstanding = true;
        actions.push(Action::FetchEntries { from, to, max_bytes: self.cfg.max_size_per_msg_bytes });
    }

    /// Keeps the fetched entries that agree with the log; the leader resumes replication.
    pub(super) fn on_entries_fetched(&mut self, from: Index, entries: Vec<Entry>, actions: &mut Vec<Action>) {
        self.fetch_outstanding = false;
        // Keep only the contiguous prefix that agrees with our log.
        let mut good = VecDeque::with_capacity(entries.len());
        for (k, e) in entries.into_iter().enumerate() {
            if e.index != from + k as Index || !self.log.matches(e.log_id()) {
                break;
            }
            good.push_back(e);
        }
        if good.is_empty() {
            return;
        }
        self.fetched = good;
        if self.state.is_leader() {
            self.broadcast_append(actions);
        }
    }

    /// Bounds the in-memory tail, never evicting what is not durable or not yet applied.
    pub(super) fn maybe_evict(&mut self) {
        let (max_entries, max_bytes) = (self.cfg.max_log_tail_entries, self.cfg.max_log_tail_bytes);
        if self.log.tail_len() <= max_entries && self.log.tail_bytes() <= max_bytes {
            return;
        }
        // Never evict what is not durable or not yet handed to the state machine.
        let keep_from = self
            .log
            .tail_keep_from(max_entries, max_bytes)
            .min(self.log.persisted() + 1)
            .min(self.applying + 1);
        self.log.evict_before(keep_from);
    }
}
