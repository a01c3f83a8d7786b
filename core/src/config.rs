//! Configuration of one Raft node: every bound the core enforces has a name
//! here, and `Config::validate` rejects combinations that cannot work.

use std::fmt;

use crate::types::{Nanos, NodeId};

/// Bugs that can be switched on to prove that the simulator and the tests
/// catch them. Only exists with the `planted-bugs` feature; without it every
/// check below compiles away.
#[cfg(feature = "planted-bugs")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PlantedBug {
    /// Grant a vote without the §5.4.1 up-to-date check on the candidate's log.
    VoteWithoutLogCheck,
    /// Commit an entry of a previous term by counting replicas (Figure 8).
    CommitPreviousTermByCounting,
    /// Send a vote grant before the vote is durable, and leave the vote out of
    /// the `PersistHardState` action.
    ForgetToPersistVote,
    /// Serve a read on a leader at once, without heartbeat quorum or lease.
    ReadWithoutLeadershipCheck,
    /// A follower acknowledges an append before its `LogPersisted` input.
    AckAppendBeforeDurable,
    /// Issue 15 gap 1: a follower skips every entry of an append whose index
    /// it already holds, whatever its term, so a stale entry of a dead term
    /// past the match point survives where the leader's should replace it.
    KeepConflictingSuffix,
    /// Issue 15 gap 2: in a joint configuration the leader commits by a
    /// majority of the incoming voters alone (C(new)), forgetting C(old).
    JointCommitByIncomingOnly,
    /// Issue 15 gap 5: the lease is the full minimum election timeout, not
    /// shortened by the clock-drift bound.
    LeaseIgnoresDrift,
    /// Issue 15 gap 4 (planted in tarn-kv, which reads it from
    /// `KvConfig::planted_bug`): a TTL deadline is the arming entry's
    /// replicated time (the proposing leader's clock) plus the TTL, and a new
    /// leader keeps those deadlines instead of re-arming from its own clock.
    TtlDeadlineFromProposerClock,
    /// Issue 14 (planted in tarn-io's group executor, which reads it from
    /// [`RawNode::planted_bug`](crate::RawNode::planted_bug)): the executor
    /// answers the proposers of a batch of applied entries by position (the
    /// k-th application entry answers the k-th proposal handed over) instead
    /// of by index, so an entry it did not propose (a previous leader's, not
    /// yet committed when it took over) shifts every answer after it.
    ExecutorAnswersByPosition,
    /// Issue 14 (planted in tarn-io's storage engine, which reads it from
    /// `StorageConfig::planted_bug`): committing a snapshot of the log's last
    /// entry discards the log, as one past its end does, so the entries the
    /// core keeps before a snapshot for slow followers are gone when it
    /// fetches them (the driver bug fixed in d61a6d0).
    SnapshotAtLastEntryDropsLog,
    /// Issue 14 (planted in tarn-io's `SyncPacer`, which the storage worker
    /// and the simulator's async write mode share): the background sync of
    /// async write mode waits for an interval without writes, so under
    /// steady load it never runs (the driver bug fixed in e541d96).
    AsyncSyncWaitsForQuiet,
    /// Issue 14 (planted in tarn-service's admission, which reads it from
    /// `AdmissionLimits::planted_bug`): packing ignores the per-entry byte
    /// bound, so a request too large for any entry is proposed instead of
    /// refused with `RequestTooLarge`, reaches the core, and is refused there
    /// on every leader it is retried at: the client never gets an answer
    /// (the oversized batch that stopped a group on every node before the
    /// chain of limits).
    AdmissionIgnoresEntryBound,
    /// Issue 17: a quiescent follower wakes only when its leader speaks as
    /// leader: it ignores `Input::PeerDown` of its leader, its leader's own
    /// campaign after a restart, and client work, so a quiet group whose
    /// leader crashed never elects anyone again. (Client work alone would
    /// rescue the group late, hiding the other two from the liveness check;
    /// the simulator has no failover-time checker yet.)
    QuietFollowerNeverSuspectsItsLeader,
    /// Issue 14 (planted in tarn-service's request path, which reads it from
    /// `AdmissionLimits::planted_bug`): a watch resumed after index `i`
    /// registers after `i + 1` while answering that it watches after `i`,
    /// so the events of the index after the resume point are lost: the
    /// off-by-one a resume is prone to. The simulator's `client-watch`
    /// checker sees the gap.
    WatchResumeSkipsAnIndex,
    /// Issue 14 (planted in tarn-io's group executor, which reads it from
    /// [`RawNode::planted_bug`](crate::RawNode::planted_bug)): a stopping
    /// group reports no snapshot jobs in flight, so its shell does not wait
    /// for them, and a job that outlives its group commits its snapshot into
    /// the storage the restarted group already read (the driver bug fixed
    /// in e541d96). The simulator's `snapshot-owner` checker sees the
    /// storage's snapshot move behind the running group's back.
    StoppedGroupLeavesSnapshotJobs,
    /// Issue 14 (planted in tarn-kv's session table, which reads it from
    /// `KvConfig::planted_bug`): a write's response is recorded at the back
    /// of its session's responses whatever its seq, as if a session's
    /// writes always applied in seq order. Once a client has several writes
    /// in flight in one session and they apply out of order, the responses
    /// are unsorted: the search for a retried seq misses, and the write is
    /// applied twice. Only sessions with several writes in flight (the
    /// simulator's shared sessions) meet it.
    SessionResponsesUnsorted,
}

/// Default of [`Config::max_entry_bytes`]: four of kv's largest values (1 MiB)
/// with room to spare, and half the storage engine's default record bound.
pub const MAX_ENTRY_BYTES_DEFAULT: usize = 4 << 20;

/// The largest [`Config::max_entry_bytes`] that [`Config::validate`] accepts.
/// The decoders downstream (kv's entry decoder, the storage engine's record
/// parser) accept every entry up to this, so no valid configuration can
/// replicate an entry a node then refuses to read.
pub const MAX_ENTRY_BYTES_LIMIT: usize = 64 << 20;

/// The configuration of one node of one Raft group.
///
/// All durations are nanoseconds of the node's monotonic clock (the `now` that
/// every `step` receives). Sizes are bytes as measured by
/// [`Entry::size_bytes`](crate::Entry::size_bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This node's id; never 0.
    pub id: NodeId,
    /// Seed of the ChaCha generator that randomizes election timeouts. The node
    /// id is mixed in, so every node of a cluster may share one seed.
    pub seed: u64,
    /// Lower bound of the randomized election timeout. Also the leader-stickiness
    /// window (a node that heard from a leader this recently ignores vote
    /// requests), the check-quorum period and the leadership-transfer timeout.
    pub election_timeout_min_ns: Nanos,
    /// Upper bound (exclusive) of the randomized election timeout.
    pub election_timeout_max_ns: Nanos,
    /// A leader sends heartbeats this often. Must be well below the election timeout.
    pub heartbeat_interval_ns: Nanos,
    /// Bound on how much faster or slower than real time any node's clock
    /// runs, in parts per million. The lease is shortened by twice this bound:
    /// the leader's clock may run slow while a follower's runs fast.
    pub max_clock_drift_ppm: u64,
    /// Enables pre-vote (§9.6 of the Raft thesis): a node first asks whether it
    /// could win before it bumps its term, so a partitioned node cannot inflate
    /// terms and disrupt the cluster when it comes back.
    pub pre_vote: bool,
    /// The leader steps down when it has not heard from a quorum within an
    /// election timeout; also enables leader stickiness.
    pub check_quorum: bool,
    /// Serve reads from the leader lease when it is valid (requires
    /// `check_quorum`); otherwise every read takes a ReadIndex round.
    pub lease_read: bool,
    /// At most this many AppendEntries messages in flight to one follower.
    pub max_inflight_msgs: usize,
    /// At most this many entry bytes in flight to one follower.
    pub max_inflight_bytes: usize,
    /// One AppendEntries carries at most this many entry bytes (at least one
    /// entry is always sent, however large, so progress is never blocked).
    pub max_size_per_msg_bytes: usize,
    /// One AppendEntries carries at most this many entries.
    pub max_entries_per_msg: usize,
    /// The largest entry payload (bytes of `EntryPayload::Normal` data) the
    /// leader accepts; a larger proposal is dropped with
    /// `DropReason::EntryTooLarge`. The head of the chain of limits: the
    /// driver checks at start that storage can hold such an entry and that
    /// an AppendEntries carrying one fits a peer frame, and the server's
    /// admission packs client requests into entries under it, so no client
    /// input can reach a check that stops a group.
    pub max_entry_bytes: usize,
    /// The leader refuses proposals while this many bytes of proposals are
    /// appended but not committed (a single proposal is always admitted when
    /// nothing is outstanding).
    pub max_uncommitted_bytes: usize,
    /// The core keeps at most about this many applied, persisted entries in
    /// memory; older ones are requested with `Action::FetchEntries`.
    pub max_log_tail_entries: usize,
    /// ... and at most about this many entry bytes (`Entry::size_bytes`): a
    /// batched client write can make one entry hundreds of KiB, so a bound in
    /// entries alone does not bound memory. The newest entry always stays.
    pub max_log_tail_bytes: usize,
    /// At most this many reads waiting on one node; more are refused with
    /// `DropReason::TooManyPendingReads`.
    pub max_pending_reads: usize,
    /// Ask for a snapshot (`Action::SnapshotWanted`) once this many entries
    /// were applied since the last one.
    pub snapshot_after_entries: u64,
    /// ... or once this many entry bytes were applied since the last one
    /// (counted since this node started).
    pub snapshot_after_bytes: u64,
    /// Compaction keeps this many entries before the snapshot, so a follower
    /// only slightly behind catches up from the log instead of a snapshot.
    pub log_keep_tail_entries: u64,
    /// One snapshot chunk carries at most this many bytes.
    pub max_snapshot_chunk_bytes: usize,
    /// At most this many snapshot chunks unacknowledged to one follower.
    pub max_snapshot_inflight_chunks: usize,
    /// `PromoteLearner` is refused while the learner's log is more than this
    /// many entries behind the leader's last index.
    pub max_promotion_lag_entries: u64,
    /// A leader that is not a voter of a committed C(new) steps down (after
    /// sending `TimeoutNow` to the most caught-up voter). Off: it keeps
    /// leading without counting itself (etcd-raft's default).
    pub step_down_when_removed: bool,
    /// The leader proposes C(new) as soon as C(old,new) commits. Off: the
    /// joint configuration is left by an empty `ChangeMembership`.
    pub auto_leave_joint: bool,
    /// This node lost its disk and restarts empty under the same id: it must
    /// not take part in elections until the operator has removed it (or
    /// re-added it as a learner) and it has seen that configuration committed.
    ///
    /// Why: Raft's safety rests on two durable facts per voter, its vote in
    /// each term and the log it acknowledged. A wiped node forgot both. If it
    /// voted for A in term t before the loss, it can vote for B in term t
    /// again afterwards, and A and B both lead term t (test
    /// `without_the_flag_a_wiped_voter_votes_twice_in_one_term`); and the
    /// entries it acknowledged no longer count where the leader counted them,
    /// so a candidate missing a committed entry could win with its vote.
    ///
    /// Rule, while the flag is set and until the condition below holds: the
    /// node grants no vote and no pre-vote, never campaigns, and ignores
    /// `TimeoutNow` (so it cannot be a transfer target). It does acknowledge
    /// appends it holds durably (an acknowledgement states what is on disk
    /// now, which is true) and applies what commits. It leaves this mode once
    /// an `AppendEntries` of the current leader shows a commit index that
    /// (a) is an entry of the leader's own term (a new leader's commit index
    /// may be stale), (b) this node holds entirely (so it knows the whole
    /// committed log at that index, not a prefix of it), and (c) has a
    /// configuration in force in which this node is not a voter (removed, or
    /// a learner; a snapshot's membership counts when no later configuration
    /// entry precedes that index). Promoting it afterwards makes it a fresh
    /// voter: every candidate that can count its new votes has that
    /// configuration in its log, while every candidate that counted a vote it
    /// gave before the loss had an older configuration.
    ///
    /// Weaker rules are unsafe:
    /// - "vote once caught up with the leader": its pre-loss vote may be in a
    ///   term ABOVE the current leader's (for a candidate that never won or
    ///   is still campaigning, cut off from the others); catching up teaches
    ///   it the leader's lower term, and that candidate's rival can later
    ///   campaign in the higher term and get its vote a second time.
    /// - "vote only above the highest term seen since the restart": the same
    ///   case; the highest term it ever voted in is exactly what it forgot.
    /// - "any committed configuration without it": the log may hold a removal
    ///   from long before the loss (it was removed and re-added earlier);
    ///   that says nothing about votes given after it. Hence (b): only the
    ///   configuration in force at a whole, current commit index counts, and
    ///   a node part-way through catching up does not look past its prefix.
    ///
    /// Residual assumption: a leader message sent before the loss (when the
    /// node was a learner, before a later promotion) is not delivered after
    /// the restart; TCP connections die with the process, so the transport
    /// guarantees it.
    ///
    /// For drivers: pass the flag on every start until `Status::rejoining`
    /// has turned false (persist that), then never again for this disk. A
    /// restart without the flag while still rejoining re-opens the double
    /// vote; a restart with it after rejoining is safe but blocks the node
    /// from voting until it is removed or demoted again. A group whose only
    /// voter lost its disk cannot rejoin (`RawNode::new` refuses).
    pub rejoin_after_data_loss: bool,
    /// Quiescence (issue 17): an idle group stops ticking and heartbeating.
    /// A leader with nothing pending and every follower caught up sends
    /// `MessageBody::Quiesce` instead of its next heartbeat and stops its
    /// timers; a follower that hears it from its leader, with nothing to
    /// catch up, stops its election timer. A proposal, a read or a message
    /// wakes the group; so does `Input::PeerDown` of a quiet follower's
    /// leader, which the driver derives from node-level liveness shared by
    /// all groups. Only turn it on where the driver reports `PeerDown`:
    /// without it a crashed leader of a quiet group is never replaced. See
    /// `raft/quiesce.rs` for the safety argument (check-quorum, stickiness
    /// and lease reads).
    pub quiesce: bool,
    /// Election back-off (issue 17): a candidate whose vote took longer
    /// than its election timeout (a grant that came after it gave the
    /// campaign up, or its own vote not yet durable when it timed out)
    /// doubles the timeouts that follow, up to 8 times, until it hears from
    /// a leader or wins. Without it, thousands of groups electing at once on
    /// a busy disk never finish: each timeout starts a new term whose vote
    /// costs another fdatasync. Off, every campaign waits the configured
    /// range. Timers only: safety and leases never depend on it.
    pub election_backoff: bool,
    /// A bug to plant (tests and simulator only).
    #[cfg(feature = "planted-bugs")]
    pub planted_bug: Option<PlantedBug>,
}

impl Config {
    /// A configuration with sensible defaults for a LAN: 150–300 ms election
    /// timeout, 50 ms heartbeats, pre-vote, check-quorum and lease reads on.
    pub fn new(id: NodeId, seed: u64) -> Config {
        const MS: Nanos = 1_000_000;
        Config {
            id,
            seed,
            election_timeout_min_ns: 150 * MS,
            election_timeout_max_ns: 300 * MS,
            heartbeat_interval_ns: 50 * MS,
            max_clock_drift_ppm: 10_000,
            pre_vote: true,
            check_quorum: true,
            lease_read: true,
            max_inflight_msgs: 256,
            max_inflight_bytes: 32 << 20,
            max_size_per_msg_bytes: 1 << 20,
            max_entries_per_msg: 4096,
            max_entry_bytes: MAX_ENTRY_BYTES_DEFAULT,
            max_uncommitted_bytes: 64 << 20,
            max_log_tail_entries: 65_536,
            max_log_tail_bytes: 64 << 20,
            max_pending_reads: 65_536,
            snapshot_after_entries: 100_000,
            snapshot_after_bytes: 256 << 20,
            log_keep_tail_entries: 10_000,
            max_snapshot_chunk_bytes: 1 << 20,
            max_snapshot_inflight_chunks: 4,
            max_promotion_lag_entries: 1_000,
            step_down_when_removed: true,
            auto_leave_joint: true,
            rejoin_after_data_loss: false,
            quiesce: false,
            election_backoff: true,
            #[cfg(feature = "planted-bugs")]
            planted_bug: None,
        }
    }

    /// Rejects configurations that cannot work, naming the field and the fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let e = |field: &'static str, reason: String| Err(ConfigError { field, reason });
        if self.id == 0 {
            return e("id", "node id 0 is reserved for \"none\"; use an id >= 1".into());
        }
        if self.heartbeat_interval_ns == 0 {
            return e("heartbeat_interval_ns", "must be > 0".into());
        }
        if self.election_timeout_min_ns <= self.heartbeat_interval_ns {
            return e(
                "election_timeout_min_ns",
                format!(
                    "{} ns must be greater than heartbeat_interval_ns ({} ns); typically 3-10x",
                    self.election_timeout_min_ns, self.heartbeat_interval_ns
                ),
            );
        }
        if self.election_timeout_max_ns <= self.election_timeout_min_ns {
            return e(
                "election_timeout_max_ns",
                format!(
                    "{} ns must be greater than election_timeout_min_ns ({} ns) so timeouts are randomized",
                    self.election_timeout_max_ns, self.election_timeout_min_ns
                ),
            );
        }
        if self.max_clock_drift_ppm >= 250_000 {
            return e(
                "max_clock_drift_ppm",
                format!("{} ppm leaves no useful lease; use < 250000", self.max_clock_drift_ppm),
            );
        }
        if self.lease_read && !self.check_quorum {
            return e("lease_read", "lease reads need check_quorum = true".into());
        }
        if self.lease_read && self.lease_duration_ns() <= self.heartbeat_interval_ns {
            return e(
                "lease_read",
                "the lease (election_timeout_min_ns shortened by the drift bound) must exceed one heartbeat interval".into(),
            );
        }
        for (field, value) in [
            ("max_inflight_msgs", self.max_inflight_msgs),
            ("max_inflight_bytes", self.max_inflight_bytes),
            ("max_size_per_msg_bytes", self.max_size_per_msg_bytes),
            ("max_entries_per_msg", self.max_entries_per_msg),
            ("max_uncommitted_bytes", self.max_uncommitted_bytes),
            ("max_log_tail_entries", self.max_log_tail_entries),
            ("max_log_tail_bytes", self.max_log_tail_bytes),
            ("max_pending_reads", self.max_pending_reads),
            ("max_snapshot_chunk_bytes", self.max_snapshot_chunk_bytes),
            ("max_snapshot_inflight_chunks", self.max_snapshot_inflight_chunks),
        ] {
            if value == 0 {
                return e(field, "must be > 0".into());
            }
        }
        if self.max_entry_bytes == 0 || self.max_entry_bytes > MAX_ENTRY_BYTES_LIMIT {
            return e(
                "max_entry_bytes",
                format!("{} must be in 1..={MAX_ENTRY_BYTES_LIMIT}", self.max_entry_bytes),
            );
        }
        for (field, value) in [
            ("snapshot_after_entries", self.snapshot_after_entries),
            ("snapshot_after_bytes", self.snapshot_after_bytes),
        ] {
            if value == 0 {
                return e(field, "must be > 0 (use u64::MAX to never ask for snapshots)".into());
            }
        }
        Ok(())
    }

    /// How long after sending a heartbeat that a quorum acknowledged the leader
    /// may still serve lease reads: the minimum election timeout (no follower
    /// that acknowledged will vote for another candidate sooner, by its clock)
    /// shortened by the drift bound of both clocks.
    pub fn lease_duration_ns(&self) -> Nanos {
        #[cfg(feature = "planted-bugs")]
        if self.bug(PlantedBug::LeaseIgnoresDrift) {
            return self.election_timeout_min_ns;
        }
        let e = self.election_timeout_min_ns as u128;
        let shortened = e * (1_000_000 - 2 * self.max_clock_drift_ppm as u128) / 1_000_000;
        shortened as Nanos
    }

    #[cfg(feature = "planted-bugs")]
    pub(crate) fn bug(&self, bug: PlantedBug) -> bool {
        self.planted_bug == Some(bug)
    }
}

/// A configuration that `Config::validate` rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The offending field (or `recovered` for bad recovered state).
    pub field: &'static str,
    /// What is wrong and how to fix it.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid raft configuration: {}: {}", self.field, self.reason)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        Config::new(1, 7).validate().unwrap();
    }

    #[test]
    fn rejects_nonsense_with_field_name() {
        let mut c = Config::new(1, 7);
        c.heartbeat_interval_ns = c.election_timeout_min_ns;
        assert_eq!(c.validate().unwrap_err().field, "election_timeout_min_ns");
        let mut c = Config::new(1, 7);
        c.election_timeout_max_ns = c.election_timeout_min_ns;
        assert_eq!(c.validate().unwrap_err().field, "election_timeout_max_ns");
        let mut c = Config::new(0, 7);
        assert_eq!(c.validate().unwrap_err().field, "id");
        c.id = 1;
        c.max_inflight_bytes = 0;
        let err = c.validate().unwrap_err();
        assert_eq!(err.field, "max_inflight_bytes");
        assert!(err.to_string().contains("max_inflight_bytes"));
        let mut c = Config::new(1, 7);
        c.check_quorum = false;
        assert_eq!(c.validate().unwrap_err().field, "lease_read");
        c.lease_read = false;
        c.validate().unwrap();
        let mut c = Config::new(1, 7);
        c.max_snapshot_chunk_bytes = 0;
        assert_eq!(c.validate().unwrap_err().field, "max_snapshot_chunk_bytes");
        let mut c = Config::new(1, 7);
        c.snapshot_after_entries = 0;
        let err = c.validate().unwrap_err();
        assert_eq!(err.field, "snapshot_after_entries");
        assert!(err.reason.contains("u64::MAX"), "says how to switch it off: {}", err.reason);
        let mut c = Config::new(1, 7);
        c.max_entry_bytes = MAX_ENTRY_BYTES_LIMIT + 1;
        assert_eq!(c.validate().unwrap_err().field, "max_entry_bytes");
    }

    #[test]
    fn lease_is_shorter_than_election_timeout() {
        let c = Config::new(1, 7);
        assert!(c.lease_duration_ns() < c.election_timeout_min_ns);
        assert_eq!(c.lease_duration_ns(), 150_000_000 * 98 / 100);
    }
}
