//! One task per Raft group: feeds the core and executes its actions.
//!
//! The task owns the `RawNode` and the state machine outright, so nothing is
//! shared and no lock is ever held across an await. Each turn it takes every
//! input already queued (up to a bound), folds all proposals of the turn
//! into one `ProposeBatch` and all linearizable reads into one `Read`
//! barrier, steps the core, and executes the resulting actions: messages go
//! to the transport, log writes of the whole turn go to the storage worker as
//! one request, committed entries are applied right here.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tarn_core::{
    Action, ConfChange, ConfChangeError, DropReason, EntryPayload, GroupId, Input, LogId, Membership,
    Message, Nanos, NodeId, Proposal, RawNode, Role, SnapshotMeta, Status, Term,
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use super::state_machine::{SnapshotInstaller, SnapshotProducer, SnapshotRestore};
use super::store::{LogWrite, StagedSnapshot, StorageDone, StorageRequest, StorageWorker};
use super::{GroupCounters, GroupInfo, ProposeError, ReadError, StateMachine};
use crate::transport::Transport;

/// Receives a proposal's outcome, on the group's task (must not block).
pub type ProposeFn<SM> = Box<dyn FnOnce(Result<<SM as StateMachine>::Response, ProposeError>) + Send>;

/// A read closure: runs on the group's task with the state machine once the
/// read is safe, or with the reason it could not be served.
pub type ReadFn<SM> = Box<dyn FnOnce(Result<&mut SM, ReadError>) + Send>;

pub(crate) enum GroupInput<SM: StateMachine> {
    Message(Message),
    Propose { data: Bytes, reply: ProposeFn<SM> },
    Read { linearizable: bool, f: ReadFn<SM> },
    TransferLeader { to: NodeId },
    ChangeMembership { changes: Vec<ConfChange>, reply: oneshot::Sender<Result<(), ProposeError>> },
    Status { reply: oneshot::Sender<Status> },
    Stop,
}

/// What the snapshot tasks of a group report back to it.
pub(crate) enum SnapEvent<SM: StateMachine> {
    /// A snapshot this node took is durable and recorded (or why not).
    Created(Result<SnapshotMeta, String>),
    /// A leader's snapshot is durable, decoded and recorded: install it.
    Installed(Result<(SnapshotMeta, SnapshotInstaller<SM>), String>),
}

/// Bytes read at a time when decoding a stored snapshot.
pub(crate) const RESTORE_READ_BYTES: usize = 1 << 20;

/// The most inputs one turn takes: bounds a turn's latency and batch size.
pub(crate) const MAX_INPUTS_PER_TURN: usize = 4096;

pub(crate) struct GroupTask<SM: StateMachine> {
    pub group: GroupId,
    pub node_id: NodeId,
    pub raw: RawNode,
    pub sm: SM,
    pub inputs: mpsc::Receiver<GroupInput<SM>>,
    /// Completions from the storage worker.
    pub done_rx: mpsc::UnboundedReceiver<StorageDone>,
    pub storage: StorageWorker,
    pub transport: Option<Transport<Message>>,
    pub origin: Instant,
    pub info: watch::Sender<GroupInfo>,
    pub tick_interval: Duration,
    /// Snapshot tasks report here (the task keeps a sender for new ones).
    pub snap_tx: mpsc::UnboundedSender<SnapEvent<SM>>,
    pub snap_rx: mpsc::UnboundedReceiver<SnapEvent<SM>>,
    /// The last applied entry, and the membership in force there: what a
    /// snapshot taken now covers.
    pub applied_log_id: LogId,
    pub applied_membership: Membership,
    /// The newest snapshot held (published in `GroupInfo`).
    pub snapshot: LogId,
    /// Snapshot tasks still running: awaited when the group stops, so none
    /// outlives it (a restarted node must not meet a late commit).
    pub snap_tasks: Vec<tokio::task::JoinHandle<()>>,
    pub counters: Arc<GroupCounters>,
    /// The last leader seen, with its term (counts leader changes).
    pub seen_leader: Option<(Term, NodeId)>,
}

fn wall_clock_nanos() -> Nanos {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as Nanos).unwrap_or(0)
}

impl<SM: StateMachine> GroupTask<SM> {
    pub(crate) async fn run(self) {
        let span = tracing::info_span!("group", node = self.node_id, group = self.group);
        self.run_inner().instrument(span).await
    }

    async fn run_inner(mut self) {
        let mut actions: Vec<Action> = Vec::new();
        let mut next_id: u64 = 1;
        let mut proposals: HashMap<u64, ProposeFn<SM>> = HashMap::new();
        let mut membership_changes: HashMap<u64, oneshot::Sender<Result<(), ProposeError>>> = HashMap::new();
        // Reads waiting on one core barrier id.
        let mut reads: HashMap<u64, Vec<ReadFn<SM>>> = HashMap::new();
        let mut batch_proposals: Vec<Proposal> = Vec::new();
        let mut batch_reads: Vec<ReadFn<SM>> = Vec::new();
        let mut writes: Vec<LogWrite> = Vec::new();
        let mut is_leader = false;
        // One snapshot of this node's own at a time; one more wanted meanwhile.
        let mut snapshotting = false;
        let mut want_again = false;
        let mut stopped = false;
        let mut failed: Option<String> = None;
        let mut applied = self.sm.applied_index();
        let now = |origin: &Instant| origin.elapsed().as_nanos() as Nanos;

        // The state machine may already hold a prefix (its own snapshot).
        if applied > 0 {
            self.raw.step(now(&self.origin), Input::Applied { index: applied }, &mut actions);
        }
        let mut ticker = tokio::time::interval(self.tick_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        while !stopped {
            let deadline = self.origin + Duration::from_nanos(self.raw.next_deadline());
            let mut inputs: Vec<GroupInput<SM>> = Vec::new();
            let mut done: Vec<StorageDone> = Vec::new();
            let mut snap_events: Vec<SnapEvent<SM>> = Vec::new();
            let mut tick = false;
            tokio::select! {
                biased;
                d = self.done_rx.recv() => if let Some(d) = d { done.push(d) },
                e = self.snap_rx.recv() => if let Some(e) = e { snap_events.push(e) },
                i = self.inputs.recv() => match i {
                    Some(i) => inputs.push(i),
                    None => stopped = true,
                },
                _ = tokio::time::sleep_until(deadline.into()) => tick = true,
                _ = ticker.tick() => {}
            }
            while done.len() < MAX_INPUTS_PER_TURN {
                match self.done_rx.try_recv() {
                    Ok(d) => done.push(d),
                    Err(_) => break,
                }
            }
            while inputs.len() < MAX_INPUTS_PER_TURN {
                match self.inputs.try_recv() {
                    Ok(i) => inputs.push(i),
                    Err(_) => break,
                }
            }

            while let Ok(e) = self.snap_rx.try_recv() {
                snap_events.push(e);
            }

            let t = now(&self.origin);
            for e in snap_events {
                match e {
                    SnapEvent::Created(Ok(meta)) => {
                        self.counters.snapshots_taken.fetch_add(1, Relaxed);
                        tracing::info!(snapshot = %meta.last_log_id, "snapshot taken");
                        self.snapshot = self.snapshot.max(meta.last_log_id);
                        snapshotting = std::mem::take(&mut want_again) && self.take_snapshot(applied);
                        self.raw.step(t, Input::SnapshotCreated { meta }, &mut actions);
                    }
                    SnapEvent::Created(Err(e)) => {
                        self.counters.snapshot_failures.fetch_add(1, Relaxed);
                        snapshotting = false;
                        want_again = false;
                        tracing::warn!(error = %e, "taking a snapshot failed; the log is not compacted until the next one");
                    }
                    SnapEvent::Installed(Ok((meta, install))) => {
                        self.counters.snapshots_installed.fetch_add(1, Relaxed);
                        install(&mut self.sm);
                        applied = meta.last_log_id.index;
                        self.applied_log_id = meta.last_log_id;
                        self.applied_membership = meta.membership.clone();
                        debug_assert_eq!(
                            self.sm.applied_index(),
                            applied,
                            "the installed state is at the snapshot"
                        );
                        tracing::info!(snapshot = %meta.last_log_id, "installed the leader's snapshot");
                        self.snapshot = meta.last_log_id;
                        self.raw.step(t, Input::SnapshotInstalled { meta }, &mut actions);
                    }
                    SnapEvent::Installed(Err(e)) => {
                        self.counters.snapshot_failures.fetch_add(1, Relaxed);
                        tracing::error!(error = %e, "installing a snapshot failed; stopping the group (restart the node)");
                        failed = Some(format!("installing a snapshot failed: {e}"));
                        stopped = true;
                    }
                }
            }
            for d in done {
                match d {
                    StorageDone::Persisted { log, hard_state } => {
                        if let Some((term, vote)) = hard_state {
                            self.raw.step(t, Input::HardStatePersisted { term, vote }, &mut actions);
                        }
                        if let Some(up_to) = log {
                            self.raw.step(t, Input::LogPersisted { up_to }, &mut actions);
                        }
                    }
                    StorageDone::Fetched { from, entries } => {
                        self.raw.step(t, Input::EntriesFetched { from, entries }, &mut actions);
                    }
                    StorageDone::SnapshotChunk { to, snapshot, offset, data, done } => {
                        let input = Input::SnapshotChunkRead { to, snapshot, offset, data, done };
                        self.raw.step(t, input, &mut actions);
                    }
                    StorageDone::Failed(e) => {
                        tracing::error!(error = %e, "storage failed; stopping the group (restart the node to recover from disk)");
                        failed = Some(e.to_string());
                        stopped = true;
                    }
                }
            }
            for input in inputs {
                match input {
                    GroupInput::Message(m) => self.raw.step(t, Input::Message(m), &mut actions),
                    GroupInput::Propose { data, reply } => {
                        let id = next_id;
                        next_id += 1;
                        proposals.insert(id, reply);
                        batch_proposals.push(Proposal { id, data });
                    }
                    GroupInput::Read { linearizable: false, f } => f(Ok(&mut self.sm)),
                    GroupInput::Read { linearizable: true, f } => batch_reads.push(f),
                    GroupInput::TransferLeader { to } => {
                        self.raw.step(t, Input::TransferLeadership { to }, &mut actions)
                    }
                    GroupInput::ChangeMembership { changes, reply } => {
                        let id = next_id;
                        next_id += 1;
                        membership_changes.insert(id, reply);
                        self.raw.step(t, Input::ChangeMembership { id, changes }, &mut actions);
                    }
                    GroupInput::Status { reply } => {
                        let _ = reply.send(self.raw.status());
                    }
                    GroupInput::Stop => stopped = true,
                }
            }
            if tick || t >= self.raw.next_deadline() {
                self.raw.step(t, Input::Tick, &mut actions);
            }
            if is_leader {
                for data in self.sm.leader_proposals(wall_clock_nanos()) {
                    // System proposals: nobody waits on them.
                    let id = next_id;
                    next_id += 1;
                    batch_proposals.push(Proposal { id, data });
                }
            }
            match batch_proposals.len() {
                0 => {}
                1 => {
                    let p = batch_proposals.pop().expect("len is 1");
                    self.raw.step(t, Input::Propose { id: p.id, data: p.data }, &mut actions);
                }
                _ => {
                    let proposals = std::mem::take(&mut batch_proposals);
                    self.raw.step(t, Input::ProposeBatch { proposals }, &mut actions);
                }
            }
            if !batch_reads.is_empty() {
                let id = next_id;
                next_id += 1;
                reads.insert(id, std::mem::take(&mut batch_reads));
                self.raw.step(t, Input::Read { id }, &mut actions);
            }

            // Execute actions until the core has nothing more to say (applying
            // produces `Applied`, which may release reads).
            let mut rounds = 0;
            while !actions.is_empty() {
                rounds += 1;
                debug_assert!(rounds < 1000, "the core keeps producing actions");
                let mut applied_to = None;
                for action in std::mem::take(&mut actions) {
                    match action {
                        Action::Send { to, message } => {
                            if let Some(tr) = &self.transport {
                                tr.send(to, self.group, message);
                            }
                        }
                        Action::AppendLog { entries } => writes.push(LogWrite::Append(entries)),
                        Action::PersistHardState(hs) => writes.push(LogWrite::HardState(hs)),
                        Action::Apply { entries, proposals: ids } => {
                            let started = Instant::now();
                            let mut ids = ids.into_iter().peekable();
                            for entry in &entries {
                                debug_assert!(
                                    entry.index > applied,
                                    "apply goes forward one index at a time: {} after {applied}",
                                    entry.index
                                );
                                let response = match &entry.payload {
                                    EntryPayload::Normal(data) => Some(self.sm.apply(entry.index, data)),
                                    _ => {
                                        self.sm.apply_noop(entry.index);
                                        None
                                    }
                                };
                                applied = entry.index;
                                self.applied_log_id = entry.log_id();
                                if let EntryPayload::Membership(m) = &entry.payload {
                                    self.applied_membership = m.clone();
                                }
                                while ids.peek().is_some_and(|(i, _)| *i < entry.index) {
                                    ids.next();
                                }
                                if ids.peek().is_some_and(|(i, _)| *i == entry.index) {
                                    let (_, id) = ids.next().expect("peeked");
                                    if let Some(reply) = membership_changes.remove(&id) {
                                        // The entry that completes a membership change.
                                        let _ = reply.send(Ok(()));
                                    } else if let (Some(reply), Some(r)) = (proposals.remove(&id), response) {
                                        reply(Ok(r));
                                    }
                                }
                            }
                            applied_to = Some(applied);
                            self.counters.apply_seconds.observe_duration(started.elapsed());
                        }
                        Action::FetchEntries { from, to, max_bytes } => {
                            self.storage.submit(StorageRequest::Fetch {
                                group: self.group,
                                from,
                                to,
                                max_bytes,
                            });
                        }
                        Action::ReadReady { id, .. } => {
                            for f in reads.remove(&id).unwrap_or_default() {
                                f(Ok(&mut self.sm));
                            }
                        }
                        Action::ReadFailed { id, reason } => {
                            for f in reads.remove(&id).unwrap_or_default() {
                                f(Err(read_error(reason)));
                            }
                        }
                        Action::ProposalDropped { id, reason } => {
                            if let Some(reply) = proposals.remove(&id) {
                                reply(Err(propose_error(reason)));
                            } else if let Some(reply) = membership_changes.remove(&id) {
                                let _ = reply.send(Err(propose_error(reason)));
                            }
                        }
                        Action::RoleChanged { role, term, leader } => {
                            tracing::info!(?role, term, ?leader, "role changed");
                            let now_leader = role == Role::Leader;
                            if now_leader != is_leader {
                                is_leader = now_leader;
                                self.sm.on_leadership(is_leader, wall_clock_nanos());
                            }
                        }
                        Action::SnapshotWanted { .. } => {
                            if snapshotting {
                                // The core asks only once per interval: take
                                // it when the one in progress is done.
                                want_again = true;
                            } else {
                                snapshotting = self.take_snapshot(applied);
                            }
                        }
                        Action::CompactLog { up_to } => {
                            self.storage.submit(StorageRequest::Compact { group: self.group, up_to });
                        }
                        Action::FetchSnapshotChunk { to, snapshot, offset, max_bytes } => {
                            self.storage.submit(StorageRequest::ReadSnapshotChunk {
                                group: self.group,
                                to,
                                snapshot,
                                offset,
                                max_bytes,
                            });
                        }
                        Action::ReceiveSnapshotChunk { snapshot, offset, data, .. } => {
                            self.storage.submit(StorageRequest::StageChunk {
                                group: self.group,
                                snapshot,
                                offset,
                                data,
                            });
                        }
                        Action::InstallSnapshot { meta } => {
                            // The writes of the actions before it go first.
                            if !writes.is_empty() {
                                let writes = std::mem::take(&mut writes);
                                self.storage.submit(StorageRequest::Write { group: self.group, writes });
                            }
                            match self.sm.snapshot_restore() {
                                Some(restore) => self.spawn_install(meta, restore),
                                None => {
                                    failed = Some(
                                        "the leader sent a snapshot but this state machine cannot install one \
                                         (StateMachine::snapshot_restore)"
                                            .into(),
                                    );
                                    stopped = true;
                                }
                            }
                        }
                    }
                }
                if let Some(index) = applied_to {
                    self.sm.after_apply();
                    self.raw.step(now(&self.origin), Input::Applied { index }, &mut actions);
                }
            }
            if !writes.is_empty() {
                let request =
                    StorageRequest::Write { group: self.group, writes: std::mem::take(&mut writes) };
                if !self.storage.submit(request) {
                    failed = Some("the storage worker stopped".into());
                    stopped = true;
                }
            }
            self.publish(applied, failed.clone());
        }
        for task in std::mem::take(&mut self.snap_tasks) {
            let _ = task.await;
        }
        // Everyone still waiting learns the group stopped.
        let reason = failed.clone().unwrap_or_else(|| "group stopped".into());
        for (_, reply) in proposals.drain() {
            reply(Err(ProposeError::Stopped { reason: reason.clone() }));
        }
        for (_, reply) in membership_changes.drain() {
            let _ = reply.send(Err(ProposeError::Stopped { reason: reason.clone() }));
        }
        for (_, fs) in reads.drain() {
            for f in fs {
                f(Err(ReadError::Stopped { reason: reason.clone() }));
            }
        }
        self.info.send_modify(|i| {
            i.stopped = true;
            i.error = failed;
        });
    }

    /// Starts a snapshot of the state as applied now (at or past what the
    /// core asked for); false if the state machine takes none.
    fn take_snapshot(&mut self, applied: tarn_core::Index) -> bool {
        let at = self.applied_log_id;
        if at.index != applied || applied <= self.snapshot.index {
            return false;
        }
        let Some(producer) = self.sm.snapshot() else { return false };
        let meta = SnapshotMeta { last_log_id: at, membership: self.applied_membership.clone() };
        self.spawn_create(meta, producer);
        true
    }

    /// Writes the snapshot `producer` encodes off the group's task (a
    /// blocking thread), makes it durable and records it; reports `Created`.
    fn spawn_create(&mut self, meta: SnapshotMeta, producer: SnapshotProducer) {
        let (storage, group, tx) = (self.storage.clone(), self.group, self.snap_tx.clone());
        let (counters, started) = (self.counters.clone(), Instant::now());
        self.snap_tasks.retain(|t| !t.is_finished());
        self.snap_tasks.push(tokio::spawn(async move {
            let r = create_snapshot(&storage, group, meta, producer).await;
            counters.snapshot_seconds.observe_duration(started.elapsed());
            let _ = tx.send(SnapEvent::Created(r));
        }));
    }

    /// Finishes the staged snapshot, decodes it off the group's task and
    /// records it (the log is discarded); reports `Installed`.
    fn spawn_install(&mut self, meta: SnapshotMeta, restore: Box<dyn SnapshotRestore<SM>>) {
        let (storage, group, tx) = (self.storage.clone(), self.group, self.snap_tx.clone());
        let (counters, started) = (self.counters.clone(), Instant::now());
        self.snap_tasks.retain(|t| !t.is_finished());
        self.snap_tasks.push(tokio::spawn(async move {
            let r = install_snapshot(&storage, group, meta, restore).await;
            counters.snapshot_seconds.observe_duration(started.elapsed());
            let _ = tx.send(SnapEvent::Installed(r));
        }));
    }

    fn publish(&mut self, applied: u64, error: Option<String>) {
        let (role, term, leader, commit, last) = (
            self.raw.role(),
            self.raw.term(),
            self.raw.leader(),
            self.raw.commit_index(),
            self.raw.last_log_id(),
        );
        if let Some(l) = leader {
            if self.seen_leader != Some((term, l)) {
                self.seen_leader = Some((term, l));
                self.counters.leader_changes.fetch_add(1, Relaxed);
            }
        }
        self.info.send_if_modified(|i| {
            let next = GroupInfo {
                group: self.group,
                node_id: self.node_id,
                role,
                term,
                leader,
                commit,
                applied,
                last_log_id: last,
                snapshot: self.snapshot,
                stopped: i.stopped,
                error: error.clone(),
            };
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

fn propose_error(reason: DropReason) -> ProposeError {
    match reason {
        DropReason::NotLeader { leader_hint } => ProposeError::NotLeader { leader_hint },
        DropReason::LeadershipLost { leader_hint } => ProposeError::MaybeCommitted { leader_hint },
        other => ProposeError::Refused { reason: describe_drop(&other) },
    }
}

fn read_error(reason: DropReason) -> ReadError {
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
