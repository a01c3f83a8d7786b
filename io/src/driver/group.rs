//! One task per Raft group: the tokio shell around the group's executor.
//!
//! The task owns the [`GroupExecutor`] (and through it the `RawNode` and the
//! state machine) outright, so nothing is shared and no lock is ever held
//! across an await. Each turn it waits for the first input, takes every
//! other one already queued (up to a bound), hands them to the executor as
//! one [`Turn`], and publishes what changed. Everything Raft-specific lives
//! in `executor.rs`; this file is channels, timers and threads.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tarn_core::{GroupId, Message, MessageBody, Nanos, NodeId, SnapshotMeta, Term};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use super::executor::{
    GroupExecutor, GroupInput, GroupIo, Observed, SnapEvent, SnapshotJobError, StorageOp, Turn,
};
use super::liveness_feed::LivenessRx;
use super::role_log::RoleLog;
use super::state_machine::{SnapshotInstaller, SnapshotProducer, SnapshotRestore};
use super::store::{StagedSnapshot, StorageDone, StorageRequest, StorageWorker};
use super::{GroupCounters, GroupInfo, StateMachine};
use crate::transport::Transport;

/// Bytes read at a time when decoding a stored snapshot.
pub(crate) const RESTORE_READ_BYTES: usize = 1 << 20;

/// The most inputs one turn takes: bounds a turn's latency and batch size.
pub(crate) const MAX_INPUTS_PER_TURN: usize = 4096;

/// The tokio side of a group's I/O: the node's storage worker and
/// transport, the node's clock, and where snapshot jobs report.
pub(crate) struct TokioGroupIo<SM: StateMachine> {
    pub group: GroupId,
    pub storage: StorageWorker,
    pub transport: Option<Transport<Message>>,
    pub origin: Instant,
    /// Snapshot jobs report here, always (a panic is reported too): the
    /// group waits for every job the executor counts when it stops.
    pub snap_tx: mpsc::UnboundedSender<SnapEvent<SM>>,
    pub counters: Arc<GroupCounters>,
    /// The node's role-change logger.
    pub role_log: Arc<RoleLog>,
}

impl<SM: StateMachine> GroupIo<SM> for TokioGroupIo<SM> {
    fn observe(&mut self, event: Observed<'_>) {
        if let Observed::RoleChanged { role, term, leader } = event {
            self.role_log.role_changed(self.group, role, term, leader);
        }
    }
    fn send(&mut self, to: NodeId, message: Message) {
        if let Some(tr) = &self.transport {
            if is_heartbeat_class(&message) {
                tr.send_heartbeat(to, self.group, message);
            } else {
                tr.send(to, self.group, message);
            }
        }
    }

    fn storage(&mut self, op: StorageOp) -> bool {
        let group = self.group;
        let request = match op {
            StorageOp::Write(writes) => StorageRequest::Write { group, writes },
            StorageOp::Fetch { from, to, max_bytes } => StorageRequest::Fetch { group, from, to, max_bytes },
            StorageOp::Compact { up_to } => StorageRequest::Compact { group, up_to },
            StorageOp::ReadSnapshotChunk { to, snapshot, offset, max_bytes } => {
                StorageRequest::ReadSnapshotChunk { group, to, snapshot, offset, max_bytes }
            }
            StorageOp::StageChunk { snapshot, offset, data } => {
                StorageRequest::StageChunk { group, snapshot, offset, data }
            }
        };
        self.storage.submit(request)
    }

    /// Writes the snapshot `producer` encodes off the group's task (a
    /// blocking thread), makes it durable and records it; reports `Created`.
    fn create_snapshot(&mut self, meta: SnapshotMeta, producer: SnapshotProducer) {
        let (storage, group) = (self.storage.clone(), self.group);
        self.spawn_snapshot_job(
            async move { SnapEvent::Created(create_snapshot(&storage, group, meta, producer).await) },
            |e| SnapEvent::Created(Err(e)),
        );
    }

    /// Finishes the staged snapshot, decodes it off the group's task and
    /// records it (the log is discarded); reports `Installed`.
    fn install_snapshot(&mut self, meta: SnapshotMeta, restore: Box<dyn SnapshotRestore<SM>>) {
        let (storage, group) = (self.storage.clone(), self.group);
        self.spawn_snapshot_job(
            async move { SnapEvent::Installed(install_snapshot(&storage, group, meta, restore).await) },
            |e| SnapEvent::Installed(Err(e)),
        );
    }

    fn now(&self) -> Nanos {
        self.origin.elapsed().as_nanos() as Nanos
    }

    fn wall_clock(&self) -> Nanos {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as Nanos).unwrap_or(0)
    }
}

impl<SM: StateMachine> TokioGroupIo<SM> {
    /// Runs a snapshot job as a task, times it, and reports its outcome to
    /// the group: `panicked` turns a panic into a report, so a stopping
    /// group that waits for every job it started is never left waiting.
    fn spawn_snapshot_job(
        &mut self,
        job: impl std::future::Future<Output = SnapEvent<SM>> + Send + 'static,
        panicked: fn(SnapshotJobError) -> SnapEvent<SM>,
    ) {
        let (tx, counters, started) = (self.snap_tx.clone(), self.counters.clone(), Instant::now());
        let job = tokio::spawn(job);
        tokio::spawn(async move {
            let event = job.await.unwrap_or_else(|e| panicked(SnapshotJobError::Panicked(e.to_string())));
            counters.snapshot_seconds.observe_duration(started.elapsed());
            let _ = tx.send(event);
        });
    }
}

/// Messages every group sends at its heartbeat instants (which the node's
/// grid aligns): the leader's heartbeat or quiesce notice and the
/// follower's answer. The transport may coalesce them across groups.
fn is_heartbeat_class(message: &Message) -> bool {
    matches!(
        message.body,
        MessageBody::Heartbeat { .. } | MessageBody::HeartbeatResponse { .. } | MessageBody::Quiesce { .. }
    )
}

/// Rounds the core's deadline `next` (nanoseconds since the node's
/// `origin`) up to the next multiple of `quantum` (0: unchanged), so that
/// every group of the node wakes at the same grid instants (see
/// `NodeConfig::heartbeat_coalesce` for why a timer may run late by less
/// than a quantum). `NO_DEADLINE` stays as it is.
pub fn align_deadline(next: Nanos, quantum: Nanos) -> Nanos {
    if quantum == 0 || next == tarn_core::NO_DEADLINE {
        return next;
    }
    next.div_ceil(quantum).saturating_mul(quantum)
}

pub(crate) struct GroupTask<SM: StateMachine> {
    pub node_id: NodeId,
    pub exec: GroupExecutor<SM, TokioGroupIo<SM>>,
    pub inputs: mpsc::Receiver<GroupInput<SM>>,
    /// Completions from the storage worker.
    pub done_rx: mpsc::UnboundedReceiver<StorageDone>,
    pub snap_rx: mpsc::UnboundedReceiver<SnapEvent<SM>>,
    pub origin: Instant,
    pub info: watch::Sender<GroupInfo>,
    pub tick_interval: Duration,
    /// The node's timer grid (`NodeConfig::heartbeat_coalesce`, effective
    /// value) in nanoseconds; 0: timers fire at the core's own deadlines.
    pub coalesce_quantum: Nanos,
    pub counters: Arc<GroupCounters>,
    /// The last leader seen, with its term (counts leader changes).
    pub seen_leader: Option<(Term, NodeId)>,
    /// Node-level liveness changes (`PeerDown`/`PeerUp`), never dropped.
    pub liveness: LivenessRx,
    /// The last liveness change this group heard.
    pub liveness_seen: u64,
}

impl<SM: StateMachine> GroupTask<SM> {
    pub(crate) async fn run(self) {
        let span = tracing::info_span!("group", node = self.node_id, group = self.exec.group());
        self.run_inner().instrument(span).await
    }

    async fn run_inner(mut self) {
        // The periodic tick starts on the node's grid too, so the groups'
        // periodic turns (armed TTLs) line up as their heartbeats do.
        let start = Instant::now() + self.tick_interval;
        let since = start.saturating_duration_since(self.origin).as_nanos() as Nanos;
        let start = self.origin + Duration::from_nanos(align_deadline(since, self.coalesce_quantum));
        let mut ticker = tokio::time::interval_at(start.into(), self.tick_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut liveness_closed = false;
        while !self.exec.is_stopped() {
            // Quiescent (no deadline): no timer at all, and the periodic
            // tick only while the state machine has timed leader proposals.
            let next = align_deadline(self.exec.next_deadline(), self.coalesce_quantum);
            let timed = next != tarn_core::NO_DEADLINE;
            let deadline = if timed { self.origin + Duration::from_nanos(next) } else { Instant::now() };
            let periodic = self.exec.wants_periodic_turns();
            let mut turn = Turn::default();
            tokio::select! {
                biased;
                d = self.done_rx.recv() => if let Some(d) = d { turn.storage.push(d) },
                e = self.snap_rx.recv() => if let Some(e) = e { turn.snapshots.push(e) },
                i = self.inputs.recv() => match i {
                    Some(i) => turn.inputs.push(i),
                    None => turn.inputs.push(GroupInput::Stop),
                },
                _ = tokio::time::sleep_until(deadline.into()), if timed => turn.tick = true,
                // Only an error (the node dropped the sender) ends it: the
                // node is going away, and Stop follows on the inputs.
                r = self.liveness.changed(), if !liveness_closed => liveness_closed = r.is_err(),
                _ = ticker.tick(), if periodic => {}
            }
            while turn.storage.len() < MAX_INPUTS_PER_TURN {
                match self.done_rx.try_recv() {
                    Ok(d) => turn.storage.push(d),
                    Err(_) => break,
                }
            }
            while turn.inputs.len() < MAX_INPUTS_PER_TURN {
                match self.inputs.try_recv() {
                    Ok(i) => turn.inputs.push(i),
                    Err(_) => break,
                }
            }
            while let Ok(e) = self.snap_rx.try_recv() {
                turn.snapshots.push(e);
            }
            // Whichever branch woke the turn (`changed()` marks the value
            // seen when it fires): compare sequence numbers, not flags.
            let feed = self.liveness.borrow_and_update();
            if feed.seq() != self.liveness_seen {
                self.liveness_seen = feed.catch_up(self.liveness_seen, |peer, alive| {
                    turn.inputs.push(if alive {
                        GroupInput::PeerUp(peer)
                    } else {
                        GroupInput::PeerDown(peer)
                    })
                });
            }
            drop(feed);
            self.exec.turn(turn);
            self.publish();
        }
        let group = self.exec.group();
        // Every snapshot job the group started reports before the group is
        // gone (see `GroupExecutor::jobs_in_flight`): a restarted node must
        // not meet a late commit.
        while self.exec.jobs_in_flight() > 0 {
            match self.snap_rx.recv().await {
                Some(e) => self.exec.job_ended(e),
                None => break,
            }
        }
        let (_io, failed) = self.exec.finish();
        tracing::debug!(group, "group task ended");
        self.info.send_modify(|i| {
            i.stopped = true;
            i.error = failed;
        });
    }

    fn publish(&mut self) {
        let raw = self.exec.raw();
        let (role, term, leader, commit, last) =
            (raw.role(), raw.term(), raw.leader(), raw.commit_index(), raw.last_log_id());
        if let Some(l) = leader {
            if self.seen_leader != Some((term, l)) {
                self.seen_leader = Some((term, l));
                self.counters.leader_changes.fetch_add(1, Relaxed);
            }
        }
        let next = GroupInfo {
            group: self.exec.group(),
            node_id: self.node_id,
            role,
            term,
            leader,
            commit,
            applied: self.exec.applied(),
            last_log_id: last,
            snapshot: self.exec.snapshot(),
            quiescent: raw.is_quiescent(),
            stopped: false,
            error: self.exec.failure().map(str::to_string),
        };
        self.info.send_if_modified(|i| {
            let next = GroupInfo { stopped: i.stopped, ..next };
            if *i == next {
                false
            } else {
                *i = next;
                true
            }
        });
    }
}

/// Sends `request` built around a fresh reply channel and waits for the answer.
async fn ask<T>(
    storage: &StorageWorker,
    request: impl FnOnce(oneshot::Sender<T>) -> StorageRequest,
) -> Result<T, SnapshotJobError> {
    let (reply, rx) = oneshot::channel();
    if !storage.submit(request(reply)) {
        return Err(SnapshotJobError::StorageStopped);
    }
    rx.await.map_err(|_| SnapshotJobError::StorageStopped)
}

async fn commit(
    storage: &StorageWorker,
    group: GroupId,
    staged: StagedSnapshot,
) -> Result<(), SnapshotJobError> {
    Ok(ask(storage, |reply| StorageRequest::CommitSnapshot { group, staged, reply }).await??)
}

fn panicked(e: tokio::task::JoinError) -> SnapshotJobError {
    SnapshotJobError::Panicked(e.to_string())
}

async fn create_snapshot(
    storage: &StorageWorker,
    group: GroupId,
    meta: SnapshotMeta,
    producer: SnapshotProducer,
) -> Result<SnapshotMeta, SnapshotJobError> {
    let snapshot = meta.last_log_id;
    let mut sink = ask(storage, |reply| StorageRequest::SnapshotWriter { group, snapshot, reply }).await??;
    let m = meta.clone();
    let staged = tokio::task::spawn_blocking(move || {
        producer(&mut |bytes: &[u8]| sink.write(bytes).map_err(|e| e.to_string()))
            .map_err(SnapshotJobError::Encode)?;
        Ok::<_, SnapshotJobError>(sink.finish(&m)?)
    })
    .await
    .map_err(panicked)??;
    commit(storage, group, staged).await?;
    Ok(meta)
}

async fn install_snapshot<SM: StateMachine>(
    storage: &StorageWorker,
    group: GroupId,
    meta: SnapshotMeta,
    mut restore: Box<dyn SnapshotRestore<SM>>,
) -> Result<(SnapshotMeta, SnapshotInstaller<SM>), SnapshotJobError> {
    let snapshot = meta.last_log_id;
    let sink = ask(storage, |reply| StorageRequest::TakeStaged { group, snapshot, reply }).await??;
    let m = meta.clone();
    let (staged, installer) = tokio::task::spawn_blocking(move || {
        let staged = sink.finish(&m)?;
        let mut source = staged.open()?;
        while let Some((chunk, _)) = source.next_chunk(RESTORE_READ_BYTES)? {
            restore.push(&chunk).map_err(SnapshotJobError::Decode)?;
        }
        let installer = restore.finish().map_err(SnapshotJobError::Decode)?;
        Ok::<_, SnapshotJobError>((staged, installer))
    })
    .await
    .map_err(panicked)??;
    commit(storage, group, staged).await?;
    Ok((meta, installer))
}

#[cfg(test)]
mod tests {
    use super::align_deadline;
    use tarn_core::NO_DEADLINE;

    #[test]
    fn deadlines_round_up_to_the_grid() {
        const MS: u64 = 1_000_000;
        assert_eq!(align_deadline(0, 10 * MS), 0);
        assert_eq!(align_deadline(1, 10 * MS), 10 * MS);
        assert_eq!(align_deadline(10 * MS, 10 * MS), 10 * MS, "on the grid: unchanged");
        assert_eq!(align_deadline(50 * MS + 300_000, 10 * MS), 60 * MS);
        assert_eq!(align_deadline(NO_DEADLINE, 10 * MS), NO_DEADLINE);
        assert_eq!(align_deadline(NO_DEADLINE - 1, 10 * MS), NO_DEADLINE, "saturates");
        assert_eq!(align_deadline(12_345, 0), 12_345, "0: off");
    }
}
