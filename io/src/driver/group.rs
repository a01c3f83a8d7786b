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

use tarn_core::{ConfChangeError, DropReason, GroupId, Message, Nanos, NodeId, SnapshotMeta, Term};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use super::executor::{GroupExecutor, GroupInput, GroupIo, SnapEvent, StorageOp, Turn};
use super::state_machine::{SnapshotInstaller, SnapshotProducer, SnapshotRestore};
use super::store::{StagedSnapshot, StorageDone, StorageRequest, StorageWorker};
use super::{GroupCounters, GroupInfo, ProposeError, ReadError, StateMachine};
use crate::transport::Transport;

/// Bytes read at a time when decoding a stored snapshot.
pub(crate) const RESTORE_READ_BYTES: usize = 1 << 20;

/// The most inputs one turn takes: bounds a turn's latency and batch size.
pub(crate) const MAX_INPUTS_PER_TURN: usize = 4096;

/// The tokio side of a group's I/O: the node's storage worker and
/// transport, the node's clock, and the snapshot jobs in flight.
pub(crate) struct TokioGroupIo<SM: StateMachine> {
    pub group: GroupId,
    pub storage: StorageWorker,
    pub transport: Option<Transport<Message>>,
    pub origin: Instant,
    /// Snapshot jobs report here.
    pub snap_tx: mpsc::UnboundedSender<SnapEvent<SM>>,
    /// Snapshot jobs still running: awaited when the group stops, so none
    /// outlives it (a restarted node must not meet a late commit).
    pub snap_tasks: Vec<tokio::task::JoinHandle<()>>,
    pub counters: Arc<GroupCounters>,
}

impl<SM: StateMachine> GroupIo<SM> for TokioGroupIo<SM> {
    fn send(&mut self, to: NodeId, message: Message) {
        if let Some(tr) = &self.transport {
            tr.send(to, self.group, message);
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
        self.spawn_snapshot_job(async move {
            SnapEvent::Created(create_snapshot(&storage, group, meta, producer).await)
        });
    }

    /// Finishes the staged snapshot, decodes it off the group's task and
    /// records it (the log is discarded); reports `Installed`.
    fn install_snapshot(&mut self, meta: SnapshotMeta, restore: Box<dyn SnapshotRestore<SM>>) {
        let (storage, group) = (self.storage.clone(), self.group);
        self.spawn_snapshot_job(async move {
            SnapEvent::Installed(install_snapshot(&storage, group, meta, restore).await)
        });
    }

    fn now(&self) -> Nanos {
        self.origin.elapsed().as_nanos() as Nanos
    }

    fn wall_clock(&self) -> Nanos {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as Nanos).unwrap_or(0)
    }
}

impl<SM: StateMachine> TokioGroupIo<SM> {
    /// Runs a snapshot job as a task the group waits for when it stops,
    /// times it, and reports its outcome to the group.
    fn spawn_snapshot_job(&mut self, job: impl std::future::Future<Output = SnapEvent<SM>> + Send + 'static) {
        let (tx, counters, started) = (self.snap_tx.clone(), self.counters.clone(), Instant::now());
        self.snap_tasks.retain(|t| !t.is_finished());
        self.snap_tasks.push(tokio::spawn(async move {
            let event = job.await;
            counters.snapshot_seconds.observe_duration(started.elapsed());
            let _ = tx.send(event);
        }));
    }
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
    pub counters: Arc<GroupCounters>,
    /// The last leader seen, with its term (counts leader changes).
    pub seen_leader: Option<(Term, NodeId)>,
}

impl<SM: StateMachine> GroupTask<SM> {
    pub(crate) async fn run(self) {
        let span = tracing::info_span!("group", node = self.node_id, group = self.exec.group());
        self.run_inner().instrument(span).await
    }

    async fn run_inner(mut self) {
        let mut ticker = tokio::time::interval(self.tick_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.exec.is_stopped() {
            let deadline = self.origin + Duration::from_nanos(self.exec.next_deadline());
            let mut turn = Turn::default();
            tokio::select! {
                biased;
                d = self.done_rx.recv() => if let Some(d) = d { turn.storage.push(d) },
                e = self.snap_rx.recv() => if let Some(e) = e { turn.snapshots.push(e) },
                i = self.inputs.recv() => match i {
                    Some(i) => turn.inputs.push(i),
                    None => turn.inputs.push(GroupInput::Stop),
                },
                _ = tokio::time::sleep_until(deadline.into()) => turn.tick = true,
                _ = ticker.tick() => {}
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
            self.exec.turn(turn);
            self.publish();
        }
        let group = self.exec.group();
        let (mut io, failed) = self.exec.finish();
        for task in std::mem::take(&mut io.snap_tasks) {
            let _ = task.await;
        }
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
) -> Result<T, String> {
    let (reply, rx) = oneshot::channel();
    if !storage.submit(request(reply)) {
        return Err("the storage worker stopped".into());
    }
    rx.await.map_err(|_| "the storage worker stopped".to_string())
}

async fn commit(storage: &StorageWorker, group: GroupId, staged: StagedSnapshot) -> Result<(), String> {
    ask(storage, |reply| StorageRequest::CommitSnapshot { group, staged, reply })
        .await?
        .map_err(|e| e.to_string())
}

async fn create_snapshot(
    storage: &StorageWorker,
    group: GroupId,
    meta: SnapshotMeta,
    producer: SnapshotProducer,
) -> Result<SnapshotMeta, String> {
    let snapshot = meta.last_log_id;
    let mut sink = ask(storage, |reply| StorageRequest::SnapshotWriter { group, snapshot, reply })
        .await?
        .map_err(|e| e.to_string())?;
    let m = meta.clone();
    let staged = tokio::task::spawn_blocking(move || {
        producer(&mut |bytes: &[u8]| sink.write(bytes).map_err(|e| e.to_string()))?;
        sink.finish(&m).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| format!("snapshot task panicked: {e}"))??;
    commit(storage, group, staged).await?;
    Ok(meta)
}

async fn install_snapshot<SM: StateMachine>(
    storage: &StorageWorker,
    group: GroupId,
    meta: SnapshotMeta,
    mut restore: Box<dyn SnapshotRestore<SM>>,
) -> Result<(SnapshotMeta, SnapshotInstaller<SM>), String> {
    let snapshot = meta.last_log_id;
    let sink = ask(storage, |reply| StorageRequest::TakeStaged { group, snapshot, reply })
        .await?
        .map_err(|e| e.to_string())?;
    let m = meta.clone();
    let (staged, installer) = tokio::task::spawn_blocking(move || {
        let staged = sink.finish(&m).map_err(|e| e.to_string())?;
        let mut source = staged.open().map_err(|e| e.to_string())?;
        while let Some((chunk, _)) = source.next_chunk(RESTORE_READ_BYTES).map_err(|e| e.to_string())? {
            restore.push(&chunk)?;
        }
        let installer = restore.finish()?;
        Ok::<_, String>((staged, installer))
    })
    .await
    .map_err(|e| format!("snapshot task panicked: {e}"))??;
    commit(storage, group, staged).await?;
    Ok((meta, installer))
}

pub(crate) fn propose_error(reason: DropReason) -> ProposeError {
    match reason {
        DropReason::NotLeader { leader_hint } => ProposeError::NotLeader { leader_hint },
        DropReason::LeadershipLost { leader_hint } => ProposeError::MaybeCommitted { leader_hint },
        other => ProposeError::Refused { reason: describe_drop(&other) },
    }
}

pub(crate) fn read_error(reason: DropReason) -> ReadError {
    match reason {
        DropReason::NotLeader { leader_hint } | DropReason::LeadershipLost { leader_hint } => {
            ReadError::NotLeader { leader_hint }
        }
        other => ReadError::Refused { reason: describe_drop(&other) },
    }
}

/// Why the core dropped a proposal or read, in a sentence an operator can act
/// on (the `Debug` form, e.g. `InvalidConfChange(NoVoters)`, is not one).
pub(crate) fn describe_drop(reason: &DropReason) -> String {
    let hint = |l: &Option<NodeId>| l.map_or_else(|| "unknown".to_string(), |l| format!("node {l}"));
    match reason {
        DropReason::NotLeader { leader_hint } => {
            format!("this node is not the leader (leader: {}); send it to the leader", hint(leader_hint))
        }
        DropReason::LeadershipLost { leader_hint } => format!(
            "leadership was lost before the request finished (leader now: {}); it may still take effect, retry at the leader",
            hint(leader_hint)
        ),
        DropReason::TransferInProgress => {
            "a leadership transfer is in progress; retry at the new leader in a moment".into()
        }
        DropReason::UncommittedLimit => {
            "too many uncommitted writes are queued on the leader; back off and retry".into()
        }
        DropReason::TooManyPendingReads => "too many reads are waiting on this node; back off and retry".into(),
        DropReason::DuplicateReadId => "a read with this id is already pending (a driver bug; retry)".into(),
        DropReason::Timeout => {
            "the leader did not confirm the read within an election timeout; retry".into()
        }
        DropReason::ConfChangeInProgress => "a membership change is still in progress (or the new leader has not committed an entry of its term yet); retry once it completes".into(),
        DropReason::InvalidConfChange(e) => describe_conf_change_error(e),
        DropReason::EntryTooLarge { size_bytes, max_bytes } => format!(
            "the proposal is {size_bytes} bytes, more than max_entry_bytes {max_bytes} (the largest Raft entry); split it"
        ),
    }
}

/// A refused membership change in words: what is wrong and what to do.
pub(crate) fn describe_conf_change_error(e: &ConfChangeError) -> String {
    match e {
        ConfChangeError::Empty => "the membership change lists no change; name at least one node".into(),
        ConfChangeError::InvalidNodeId => "node id 0 is reserved; node ids start at 1".into(),
        ConfChangeError::DuplicateNode(id) => {
            format!("node {id} appears twice in one membership change; list each node once")
        }
        ConfChangeError::AlreadyMember(id) => format!(
            "node {id} is already a member; use `member promote {id}` to make a learner a voter, or `member remove {id}` first"
        ),
        ConfChangeError::NotMember(id) => format!("node {id} is not a member of this group; nothing to remove"),
        ConfChangeError::NotLearner(id) => {
            format!("node {id} is not a learner, so it cannot be promoted (add it with `member add {id} --learner` first)")
        }
        ConfChangeError::NoVoters => {
            "the change would leave the group without a voter, and a group without voters can never elect a leader; add another voter first, or remove the group with `group remove`".into()
        }
        ConfChangeError::LearnerBehind { id, match_index, last_index } => format!(
            "learner {id} has replicated up to index {match_index} of {last_index}; promoting it now could stall commits, retry once it caught up"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_membership_changes_are_sentences_not_debug_output() {
        let errors = [
            ConfChangeError::Empty,
            ConfChangeError::InvalidNodeId,
            ConfChangeError::DuplicateNode(3),
            ConfChangeError::AlreadyMember(3),
            ConfChangeError::NotMember(3),
            ConfChangeError::NotLearner(3),
            ConfChangeError::NoVoters,
            ConfChangeError::LearnerBehind { id: 3, match_index: 5, last_index: 9 },
        ];
        for e in errors {
            let debug = format!("{e:?}");
            let ProposeError::Refused { reason } = propose_error(DropReason::InvalidConfChange(e)) else {
                panic!("an invalid change is a refusal");
            };
            let variant = debug.split(['(', ' ']).next().unwrap_or_default();
            assert!(!reason.contains(variant), "{reason:?} repeats the Debug name {variant}");
            assert!(reason.contains(' ') && reason.len() > 30, "{reason:?}");
        }
        let ProposeError::Refused { reason } =
            propose_error(DropReason::InvalidConfChange(ConfChangeError::NoVoters))
        else {
            panic!("refusal");
        };
        assert!(reason.contains("without a voter"), "{reason}");
    }
}
