//! Quiescence (issue 17, `Config::quiesce`): an idle group stops ticking and
//! heartbeating, so ten thousand idle groups cost a node almost nothing.
//!
//! # The protocol
//!
//! - **Going quiet.** At a heartbeat tick, a leader with nothing pending
//!   (`leader_may_quiesce`: no proposal, read, transfer, membership change
//!   or snapshot in flight, its own log durable, everything committed and
//!   handed to apply, every member's match index at the last index, nobody
//!   rejoining) sends `MessageBody::Quiesce { commit }` instead of the
//!   heartbeat and stops its heartbeat and check-quorum timers. A follower
//!   that receives it from its current leader, holding exactly the log up to
//!   `commit` and with nothing of its own in flight, stops its election
//!   timer. A lost `Quiesce` leaves that follower awake: it times out, its
//!   pre-vote wakes the leader (any message does), and the leader's next
//!   heartbeat tick quiesces again.
//! - **Waking.** A quiet leader wakes on a proposal, a read, a membership
//!   change, a transfer, any message, and `PeerUp`. A quiet follower wakes
//!   on any message of its leader other than `Quiesce` (the leader is
//!   awake then), on a higher term, on `PeerDown` of its leader, and on
//!   client work (a proposal or a read: a leader whose group stopped on a
//!   live node is invisible to node-level liveness, so the clients' knocking
//!   must be enough to replace it). A read on a quiet follower is forwarded
//!   as usual and wakes the leader; a refused (pre-)vote request does not
//!   wake it.
//! - **Node-level liveness.** The driver knows whether each peer node is
//!   alive (its connection, and a node-level ping that crosses it however
//!   quiet the groups are) and tells every group of the node
//!   (`Input::PeerDown`/`PeerUp`). A quiet follower whose leader is suspected
//!   resumes its election timer; one whose leader is already suspected when
//!   `Quiesce` arrives does not go quiet. So a crashed or cut-off leader of
//!   a quiet group is replaced within the suspicion timeout plus one
//!   election. A suspicion that was wrong (pings lost one way) ends in
//!   `PeerUp`: a woken follower then pokes its leader (`on_peer_up`), which
//!   wakes, and its next heartbeat tick quiets the group again before any
//!   timer elects a replacement.
//!
//! # Why it is safe
//!
//! Quiescence only ever *stops timers*; it never makes a node vote, commit,
//! apply or answer a read that it would not otherwise. What has to be argued
//! is what the timers protected:
//!
//! - **Check-quorum** (a leader steps down when it lost a quorum) is a
//!   liveness and lease device, not a safety one: a stale leader cannot
//!   commit (its appends need a quorum of its term) nor confirm a ReadIndex
//!   read (its heartbeat round needs a quorum of its term). A quiet leader
//!   skips it; on waking it starts a fresh period (`wake_leader`), so a
//!   deposed leader that is woken by a client steps down within two election
//!   timeouts, as an active one would.
//! - **Leader stickiness** (`in_lease`): a quiet follower refuses to help
//!   anyone else get elected, as if it had just heard from its leader; the
//!   driver's liveness vouches for the leader until a `PeerDown`. Refusing
//!   more votes than Raft requires is always safe. On `PeerDown` the window
//!   falls back to the real time of the last contact with the leader, which
//!   never shortens it below what plain Raft grants (see lease reads).
//! - **Lease reads.** A lease is valid for `lease_duration_ns` after the
//!   *send* time of a heartbeat round a quorum acknowledged; every follower
//!   that acknowledged received it later, so by its own clock it refuses
//!   votes until at least that receipt plus the minimum election timeout.
//!   Quiescence only lengthens follower stickiness, so that argument stands.
//!   But a quiet leader has no fresh quorum contact, so **a lease read on a
//!   quiet leader falls back to ReadIndex**: going quiet clears the lease
//!   (`lease_start = None`), the first read after waking sends a heartbeat
//!   round and is answered once a quorum acknowledged it, and that round
//!   renews the lease for the reads that follow. (A late answer to a round
//!   sent before quiescing can only restore a lease that is still measured
//!   from that round's send time, which is safe by the same argument.)
//! - **Elections.** A quiet follower with a dead leader would wait forever:
//!   that is liveness, and `PeerDown` restores it. The simulator runs
//!   quiescent groups with crashed and cut-off leaders, and plants
//!   `QuietFollowerNeverSuspectsItsLeader` to show the liveness check catches a
//!   follower that never wakes.

use super::{RawNode, RoleState};
use crate::io::{Action, Input};
use crate::message::MessageBody;
use crate::types::NodeId;

impl RawNode {
    /// Inputs that wake a quiet leader: work for it, or word from a peer.
    pub(super) fn wakes_leader(input: &Input) -> bool {
        matches!(
            input,
            Input::Message(_)
                | Input::Propose { .. }
                | Input::ProposeBatch { .. }
                | Input::Read { .. }
                | Input::TransferLeadership { .. }
                | Input::ChangeMembership { .. }
                | Input::PeerUp { .. }
        )
    }

    /// Inputs that wake a quiet follower besides its leader's words and
    /// `PeerDown`: client work. A proposal is refused (`NotLeader`) and a
    /// read is forwarded as before; but if the leader's group stopped on a
    /// live node (a storage error), nothing else would ever wake the group.
    pub(super) fn wakes_follower(input: &Input) -> bool {
        matches!(input, Input::Propose { .. } | Input::ProposeBatch { .. } | Input::Read { .. })
    }

    /// Leader: is the group idle enough to stop heartbeating?
    pub(super) fn leader_may_quiesce(&self) -> bool {
        let RoleState::Leader(l) = &self.state else { return false };
        let last = self.log.last().index;
        self.cfg.quiesce
            && !self.quiet
            && l.committed_own_term
            && l.proposals.is_empty()
            && l.reads_pending.is_empty()
            && l.reads_before_commit.is_empty()
            && l.transfer.is_none()
            && !l.timeout_now_sent
            && l.transfers.is_empty()
            && l.conf_change_id.is_none()
            && !self.membership.is_joint()
            && self.log.committed() == last
            && self.log.persisted() == last
            && self.applying == last
            && self.local_reads.is_empty()
            && self.reads_waiting_apply.is_empty()
            && self.forwarded.is_empty()
            && !self.snap.installing()
            && l.progress.values().all(|p| p.match_index == last && !p.rejoining)
    }

    /// Leader: tells every member the group goes quiet, and stops its timers.
    pub(super) fn quiesce_leader(&mut self, actions: &mut Vec<Action>) {
        debug_assert!(self.leader_may_quiesce());
        let commit = self.log.committed();
        let RoleState::Leader(l) = &mut self.state else { return };
        // A quiet leader has no fresh quorum contact: its next read takes a
        // ReadIndex round (which renews the lease), never the old lease.
        l.lease_start = None;
        let to: Vec<NodeId> = l.progress.keys().copied().collect();
        for id in to {
            self.send(id, MessageBody::Quiesce { commit }, actions);
        }
        self.quiet = true;
    }

    /// Leader: something happened; resume heartbeats and start a fresh
    /// check-quorum period (as a new leader does: the quiet time says
    /// nothing about who is reachable now).
    pub(super) fn wake_leader(&mut self) {
        debug_assert!(self.quiet);
        let now = self.now;
        let (heartbeat, election) = (self.cfg.heartbeat_interval_ns, self.cfg.election_timeout_min_ns);
        self.quiet = false;
        let RoleState::Leader(l) = &mut self.state else { return };
        l.heartbeat_deadline = now + heartbeat;
        l.check_quorum_deadline = now + election;
        for p in l.progress.values_mut() {
            p.recent_active = true;
        }
    }

    /// Follower: resumes the election timer. `leader_alive`: the leader
    /// itself spoke (it counts as contact); otherwise (`PeerDown`) the last
    /// real contact stands, so stickiness ends on its own clock.
    pub(super) fn wake_follower(&mut self, leader_alive: bool) {
        debug_assert!(self.quiet && !self.state.is_leader());
        self.quiet = false;
        if leader_alive {
            self.last_leader_contact = Some(self.now);
        }
        self.reset_election_timer();
    }

    /// Follower: the leader `from` went quiet with everything committed up
    /// to `commit`. Goes quiet too if it holds exactly that log and nothing
    /// of its own is in flight; otherwise it stays awake (and times out
    /// into a pre-vote that wakes the leader if it is still behind).
    pub(super) fn on_quiesce(
        &mut self,
        from: NodeId,
        commit: crate::types::Index,
        actions: &mut Vec<Action>,
    ) {
        if self.state.is_leader() {
            return; // Another leader of our term cannot exist.
        }
        self.heard_from_leader(from, actions);
        self.commit_from_leader(commit);
        let last = self.log.last().index;
        let idle = self.cfg.quiesce
            && matches!(self.state, RoleState::Follower)
            && self.leader_id == Some(from)
            && !self.suspected.contains(&from)
            && !self.rejoining
            && !self.snap.installing()
            && last == commit
            && self.log.committed() == commit
            && self.forwarded.is_empty()
            && self.pending_vote_reply.is_none();
        if idle {
            self.quiet = true;
        }
    }

    /// Node-level liveness suspects `node`. A quiet follower of it wakes.
    pub(super) fn on_peer_down(&mut self, node: NodeId) {
        self.suspected.insert(node);
        let follows_it = !self.state.is_leader() && self.leader_id == Some(node);
        if self.quiet && follows_it && !bug!(self, QuietFollowerNeverSuspectsItsLeader) {
            self.wake_follower(false);
        }
    }

    /// `PeerUp` of `node`: it is no longer suspected. A follower that
    /// `PeerDown` woke (it follows `node`, awake, not campaigning) pokes its
    /// leader: a leader quiet on its side of a one-way suspicion (a ping
    /// that went missing) hears nothing until an election timeout elects
    /// someone else, since both woken followers grant each other's
    /// pre-votes. Any message wakes a quiet leader; its next heartbeat tick
    /// (or `Quiesce`) is leader contact for us, well within our timeout, so
    /// the group goes quiet again under the same leader. The poke is an
    /// unsolicited `HeartbeatResponse` (ctx 0): a leader reads it as
    /// activity and catches us up if we lag, nothing more.
    pub(super) fn on_peer_up(&mut self, node: NodeId, actions: &mut Vec<Action>) {
        let was_suspected = self.suspected.remove(&node);
        let woken_follower = matches!(self.state, RoleState::Follower) && !self.quiet;
        if was_suspected && self.cfg.quiesce && woken_follower && self.leader_id == Some(node) {
            let last_index = self.log.last().index;
            self.send(node, MessageBody::HeartbeatResponse { ctx: 0, last_index }, actions);
        }
    }

    /// The invariants of quiescence, after every step.
    pub(super) fn check_quiet_invariants(&self) {
        if !self.quiet {
            return;
        }
        debug_assert!(self.cfg.quiesce, "quiet without Config::quiesce");
        match &self.state {
            RoleState::Leader(l) => {
                // Anything pending wakes a leader before it is handled.
                debug_assert!(l.proposals.is_empty() && l.reads_pending.is_empty());
                debug_assert!(l.reads_before_commit.is_empty() && l.transfer.is_none());
                // Only a message can restore a lease, and a message wakes.
                debug_assert!(l.lease_start.is_none(), "a quiet leader holds no lease");
            }
            RoleState::Follower => {
                debug_assert!(self.leader_id.is_some(), "a quiet follower follows someone");
                debug_assert!(!self.rejoining);
                let leader = self.leader_id.unwrap_or(0);
                debug_assert!(
                    !self.suspected.contains(&leader) || bug!(self, QuietFollowerNeverSuspectsItsLeader),
                    "a quiet follower of a suspected leader"
                );
            }
            RoleState::PreCandidate { .. } | RoleState::Candidate { .. } => {
                debug_assert!(false, "a campaigning node is never quiet");
            }
        }
    }
}
