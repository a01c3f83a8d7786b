//! The request path: from one decoded [`ClientFrame`] to a group's inputs,
//! and from the group's answers back to [`ServerFrame`]s. No I/O, no
//! runtime, no clock: the tokio server feeds it what its connections read
//! and the simulator feeds it what its clients send, so the simulator judges
//! the answers real clients get (admission, batching into entries, the
//! mapping of the executor's errors, reads, watches with resume).
//!
//! What stays in the shells: reading and writing sockets, authentication
//! (a request is authorized, and its session id namespaced, before it gets
//! here), finding the group, and the asynchronous admin requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tarn_core::{GroupId, Index, Nanos, NodeId};
use tarn_io::driver::{ProposeError, ProposeFn, ReadError, ReadFn, StateMachine};
use tarn_kv::{
    encode_entry, Command, KvConfig, KvEntry, KvStateMachine, Reply, Request, WatchId, WatchRegisterError,
};

use crate::admission::{self, AdmissionLimits};
use crate::protocol::{ClientFrame, Consistency, RequestBody, ResponseBody, ServerError, ServerFrame};
use crate::watch::{WatchDelivery, WatchSink, WatchSinks};

/// What a kv state machine answers for one entry: one response per request,
/// or why the entry did not decode.
pub type KvResponses = Result<Vec<tarn_kv::Response>, String>;

/// The state machine the path reads and watches: the kv, with a way to
/// deliver watch events to a connection.
pub trait KvHost: StateMachine<Response = KvResponses> {
    /// The kv, for reads.
    fn kv(&self) -> &KvStateMachine;
    /// The kv and the sinks its watch events go to (every host keeps both
    /// side by side; the watch methods below are the same for all).
    fn kv_and_sinks(&mut self) -> (&mut KvStateMachine, &mut WatchSinks);
    /// Registers a watch whose events go to `sink`, delivering the history
    /// already due.
    fn watch(
        &mut self,
        key: &str,
        subtree: bool,
        after_index: Option<Index>,
        sink: WatchSink,
    ) -> Result<WatchId, WatchRegisterError> {
        let (kv, sinks) = self.kv_and_sinks();
        sinks.watch(kv, key, subtree, after_index, sink)
    }
    /// Ends a watch.
    fn unwatch(&mut self, id: WatchId) {
        let (kv, sinks) = self.kv_and_sinks();
        sinks.unwatch(kv, id);
    }
}

/// Where the path hands one group its inputs: the tokio group's queue, or
/// the simulator's executor.
pub trait GroupPort<M: StateMachine> {
    /// Proposes `data`; `reply` gets the outcome.
    fn propose(&mut self, data: Bytes, reply: ProposeFn<M>);
    /// Runs `f` on the state machine (after a read barrier if `linearizable`).
    fn read(&mut self, linearizable: bool, f: ReadFn<M>);
}

/// Where the answers for one connection go. Called on the group's side (a
/// proposal's outcome, a read), so it must not block.
pub trait FrameSink: Clone + Send + 'static {
    /// Queues an answer to a request.
    fn send(&self, frame: ServerFrame);
    /// Queues a frame of a running watch; false ends the watch (nobody
    /// listens, or the connection's watch queue is full: the client resumes
    /// after its last index).
    fn send_watch(&self, frame: ServerFrame) -> bool;
}

/// What the path counts and times (the server's metrics). The timer is the
/// shell's clock: the path itself reads none.
pub trait PathMetrics: Send + Sync + 'static {
    /// A started measurement (an `Instant` in the server).
    type Timer: Copy + Send + 'static;
    /// Starts a measurement.
    fn start(&self) -> Self::Timer;
    /// A Raft entry was proposed for client writes.
    fn proposal(&self) {}
    /// `count` writes started at `timer` were answered.
    fn write_answered(&self, _timer: Self::Timer, _count: u64) {}
    /// A read started at `timer` ran (or failed).
    fn read_answered(&self, _timer: Self::Timer) {}
    /// A request was answered `NotLeader`.
    fn not_leader(&self) {}
}

/// No metrics (the simulator's).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoMetrics;

impl PathMetrics for NoMetrics {
    type Timer = ();
    fn start(&self) {}
}

/// The watches one connection started: (request id) → (group, kv watch id),
/// so `Unwatch` and the connection's end can stop them. Shared with the
/// closures that register them on the group's side.
#[derive(Clone, Default)]
pub struct ConnWatches(Arc<Mutex<HashMap<u64, (GroupId, WatchId)>>>);

impl ConnWatches {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, (GroupId, WatchId)>> {
        // Poisoned only by a panic in a sink, which fails the process or the run anyway.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the connection has no running watch.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Takes every running watch (the connection ends).
    pub fn drain(&self) -> Vec<(GroupId, WatchId)> {
        self.lock().drain().map(|(_, v)| v).collect()
    }

    fn insert(&self, request_id: u64, watch: (GroupId, WatchId)) {
        self.lock().insert(request_id, watch);
    }

    fn remove(&self, request_id: u64) -> Option<(GroupId, WatchId)> {
        self.lock().remove(&request_id)
    }
}

/// One node's request path (one per node, shared by its connections).
pub struct RequestPath<P: PathMetrics = NoMetrics> {
    node_id: NodeId,
    kv: KvConfig,
    limits: AdmissionLimits,
    metrics: Arc<P>,
}

impl<P: PathMetrics> RequestPath<P> {
    /// The path of node `node_id`, checking writes against `kv` and packing
    /// them under `limits`.
    pub fn new(node_id: NodeId, kv: KvConfig, limits: AdmissionLimits, metrics: Arc<P>) -> Self {
        RequestPath { node_id, kv, limits, metrics }
    }

    /// The bounds writes are packed under.
    pub fn limits(&self) -> &AdmissionLimits {
        &self.limits
    }

    /// Serves `frame` if the path owns its request (a write, a read, a
    /// watch or an unwatch) on `group`; gives it back otherwise (hello,
    /// status, admin requests, authentication: the shell's). A write goes
    /// alone into its entry; a shell that read many writes at once packs
    /// them together with [`RequestPath::writes`].
    pub fn serve<M: KvHost, G: GroupPort<M>, S: FrameSink>(
        &self,
        frame: ClientFrame,
        group: &mut G,
        watches: &ConnWatches,
        leader_time_nanos: Nanos,
        sink: &S,
    ) -> Result<(), Box<ClientFrame>> {
        let ClientFrame { id, group: g, body } = frame;
        match body {
            RequestBody::Write(request) => {
                self.writes(g, group, vec![(id, request)], leader_time_nanos, sink)
            }
            RequestBody::Read { command, consistency } => self.read(id, g, group, command, consistency, sink),
            RequestBody::Watch { key, subtree, after_index } => {
                self.watch(id, g, group, key, subtree, after_index, watches, sink)
            }
            RequestBody::Unwatch { watch_request_id } => {
                self.unwatch(id, group, watch_request_id, watches, sink)
            }
            body => return Err(Box::new(ClientFrame { id, group: g, body })),
        }
        Ok(())
    }

    /// Proposes the writes `(request id, request)` for group `g`, many
    /// requests per Raft entry (one log record, one apply, one decode for
    /// the lot); each answer goes back under its own request id. A request
    /// the state machine would refuse, or too large for any entry, is
    /// answered here without a log write. `leader_time_nanos` is the
    /// proposer's wall clock, carried in each entry.
    pub fn writes<M: KvHost, G: GroupPort<M>, S: FrameSink>(
        &self,
        g: GroupId,
        group: &mut G,
        batch: Vec<(u64, Request)>,
        leader_time_nanos: Nanos,
        sink: &S,
    ) {
        let mut valid: Vec<(u64, Request)> = Vec::with_capacity(batch.len());
        for (id, request) in batch {
            // A client may not pose as the leader (client id 0, expiry) nor send
            // what the state machine would refuse: answered without a log entry.
            match request.validate_from_client(&self.kv) {
                Ok(()) => valid.push((id, request)),
                Err(e) => sink.send(ServerFrame::Response { id, result: Ok(ResponseBody::Kv(Err(e))) }),
            }
        }
        // Entries under the core's bound, measured encoded; a request too large
        // for any entry is answered here, never proposed.
        let packed = admission::pack(valid, &self.limits);
        for (id, e) in packed.refused {
            sink.send(ServerFrame::Response { id, result: Ok(ResponseBody::Kv(Err(e))) });
        }
        let timer = self.metrics.start();
        for entry in packed.entries {
            let (ids, requests): (Vec<u64>, Vec<Request>) = entry.into_iter().unzip();
            let data = Bytes::from(encode_entry(&KvEntry { leader_time_nanos, requests }));
            // No task per request: the outcome is framed on the group's side
            // and queued straight to the connection.
            let (out, metrics, node_id) = (sink.clone(), self.metrics.clone(), self.node_id);
            self.metrics.proposal();
            let reply: ProposeFn<M> = Box::new(move |r| {
                metrics.write_answered(timer, ids.len() as u64);
                let error = match r {
                    Ok(Ok(responses)) if responses.len() == ids.len() => {
                        for (id, response) in ids.into_iter().zip(responses) {
                            out.send(ServerFrame::Response { id, result: Ok(ResponseBody::Kv(response)) });
                        }
                        return;
                    }
                    Ok(Ok(r)) => ServerError::Unavailable {
                        reason: format!("expected {} responses, got {}", ids.len(), r.len()),
                    },
                    Ok(Err(e)) => ServerError::BadRequest { reason: e },
                    Err(e) => propose_error(&*metrics, node_id, g, e),
                };
                for id in ids {
                    out.send(ServerFrame::Response { id, result: Err(error.clone()) });
                }
            });
            group.propose(data, reply);
        }
    }

    /// Serves a read of the tree (`Get`, `BatchGet`, `List`) on group `g`:
    /// after a read barrier if `consistency` is linearizable, else on this
    /// node's state at once.
    pub fn read<M: KvHost, G: GroupPort<M>, S: FrameSink>(
        &self,
        id: u64,
        g: GroupId,
        group: &mut G,
        command: Command,
        consistency: Consistency,
        sink: &S,
    ) {
        let name = command.name();
        let Some(query) = ReadQuery::of(command) else {
            let reason = format!("{name} is not a read; send it as a write");
            sink.send(ServerFrame::Response { id, result: Err(ServerError::BadRequest { reason }) });
            return;
        };
        let linearizable = consistency == Consistency::Linearizable;
        let timer = self.metrics.start();
        let (out, metrics, node_id) = (sink.clone(), self.metrics.clone(), self.node_id);
        let f: ReadFn<M> = Box::new(move |m| {
            metrics.read_answered(timer);
            let result = match m {
                Ok(m) => Ok(ResponseBody::Kv(query.run(m.kv()))),
                Err(e) => Err(read_error(&*metrics, node_id, g, e)),
            };
            out.send(ServerFrame::Response { id, result });
        });
        group.read(linearizable, f);
    }

    /// Starts watch `id` on `key` (or its subtree) of group `g`, from
    /// `after_index` (`None`: from this node's applied index). Answered with
    /// `Watching`, then `Watch` frames under the same id until `Unwatch`,
    /// the connection's end or a cut-off (`WatchEnded`, after which the
    /// client resumes from its last index).
    #[allow(clippy::too_many_arguments)]
    pub fn watch<M: KvHost, G: GroupPort<M>, S: FrameSink>(
        &self,
        id: u64,
        g: GroupId,
        group: &mut G,
        key: String,
        subtree: bool,
        after_index: Option<Index>,
        watches: &ConnWatches,
        sink: &S,
    ) {
        let (out, events_out, watches) = (sink.clone(), sink.clone(), watches.clone());
        let skip = self.limits.watch_resume_skips_an_index();
        let f: ReadFn<M> = Box::new(move |m| {
            let result = match m {
                Ok(m) => {
                    let from = after_index.unwrap_or(m.kv().applied_index());
                    // The planted off-by-one (simulator tests only).
                    let registered = if skip && after_index.is_some() { from + 1 } else { from };
                    let events = Box::new(move |d: WatchDelivery| {
                        events_out.send_watch(match d {
                            WatchDelivery::Events(events) => ServerFrame::Watch { id, events },
                            WatchDelivery::Ended(reason) => ServerFrame::WatchEnded { id, reason },
                        })
                    });
                    match m.watch(&key, subtree, Some(registered), events) {
                        Ok(watch_id) => {
                            watches.insert(id, (g, watch_id));
                            Ok(ResponseBody::Watching { after_index: from })
                        }
                        Err(e) => Err(ServerError::BadRequest { reason: e.to_string() }),
                    }
                }
                Err(e) => Err(ServerError::Unavailable { reason: e.to_string() }),
            };
            out.send(ServerFrame::Response { id, result });
        });
        group.read(false, f);
    }

    /// Stops the watch that request `watch_request_id` of this connection
    /// started (nothing if there is none); answered `Done` once stopped.
    pub fn unwatch<M: KvHost, G: GroupPort<M>, S: FrameSink>(
        &self,
        id: u64,
        group: &mut G,
        watch_request_id: u64,
        watches: &ConnWatches,
        sink: &S,
    ) {
        let entry = watches.remove(watch_request_id);
        let out = sink.clone();
        let f: ReadFn<M> = Box::new(move |m| {
            if let (Ok(m), Some((_, watch_id))) = (m, entry) {
                m.unwatch(watch_id);
            }
            out.send(ServerFrame::Response { id, result: Ok(ResponseBody::Done) });
        });
        group.read(false, f);
    }
}

/// A proposal's failure as the client sees it: `NotLeader` and
/// `MaybeCommitted` keep the leader hint (the client follows it, and
/// retries a maybe-committed write under the same seq); everything else is
/// `Unavailable` (the client retries elsewhere).
pub fn propose_error<P: PathMetrics>(
    metrics: &P,
    node: NodeId,
    group: GroupId,
    e: ProposeError,
) -> ServerError {
    match e {
        ProposeError::NotLeader { leader_hint } => {
            metrics.not_leader();
            ServerError::NotLeader { node, group, leader: leader_hint }
        }
        ProposeError::MaybeCommitted { leader_hint } => ServerError::MaybeCommitted { leader: leader_hint },
        e => ServerError::Unavailable { reason: e.to_string() },
    }
}

/// A read's failure as the client sees it (see [`propose_error`]).
pub fn read_error<P: PathMetrics>(metrics: &P, node: NodeId, group: GroupId, e: ReadError) -> ServerError {
    match e {
        ReadError::NotLeader { leader_hint } => {
            metrics.not_leader();
            ServerError::NotLeader { node, group, leader: leader_hint }
        }
        e => ServerError::Unavailable { reason: e.to_string() },
    }
}

/// A read the path serves off the state machine.
enum ReadQuery {
    Get { key: String },
    BatchGet { keys: Vec<String> },
    List { key: String, limit: Option<u32>, after: Option<String> },
}

impl ReadQuery {
    /// `None` for a command that is not a read.
    fn of(command: Command) -> Option<ReadQuery> {
        match command {
            Command::Get { key } => Some(ReadQuery::Get { key }),
            Command::BatchGet { keys } => Some(ReadQuery::BatchGet { keys }),
            Command::List { key, limit, after } => Some(ReadQuery::List { key, limit, after }),
            _ => None,
        }
    }

    fn run(self, kv: &KvStateMachine) -> tarn_kv::Response {
        match self {
            ReadQuery::Get { key } => kv.get(&key).map(Reply::Node),
            ReadQuery::BatchGet { keys } => kv.batch_get(&keys).map(Reply::Nodes),
            ReadQuery::List { key, limit, after } => kv
                .list_page(&key, limit, after.as_deref())
                .map(|(children, more)| Reply::Children { children, more }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tarn_io::driver::{SnapshotProducer, SnapshotRestore};
    use tarn_kv::KvError;

    use super::*;
    use crate::watch::WatchSinks;

    /// A kv without a group: proposals are applied at once (or refused),
    /// reads run at once (or fail), as the executor would answer them.
    struct Kv {
        kv: KvStateMachine,
        sinks: WatchSinks,
    }

    impl StateMachine for Kv {
        type Response = KvResponses;
        fn apply(&mut self, index: Index, data: &Bytes) -> KvResponses {
            self.kv.apply_entry_bytes(index, data).map_err(|e| e.to_string())
        }
        fn apply_noop(&mut self, index: Index) {
            self.kv.advance_to(index);
        }
        fn applied_index(&self) -> Index {
            self.kv.applied_index()
        }
        fn after_apply(&mut self) {
            self.sinks.deliver_ready(&mut self.kv);
        }
        fn snapshot(&mut self) -> Option<SnapshotProducer> {
            None
        }
        fn snapshot_restore(&mut self) -> Option<Box<dyn SnapshotRestore<Self>>> {
            None
        }
    }

    impl KvHost for Kv {
        fn kv(&self) -> &KvStateMachine {
            &self.kv
        }
        fn kv_and_sinks(&mut self) -> (&mut KvStateMachine, &mut WatchSinks) {
            (&mut self.kv, &mut self.sinks)
        }
    }

    /// The group: a leader that applies what it is given, or a follower
    /// that refuses everything naming `leader`.
    struct Group {
        sm: Kv,
        follower_of: Option<NodeId>,
        entries_proposed: Vec<usize>,
    }

    impl GroupPort<Kv> for Group {
        fn propose(&mut self, data: Bytes, reply: ProposeFn<Kv>) {
            if let Some(leader) = self.follower_of {
                return reply(Err(ProposeError::NotLeader { leader_hint: Some(leader) }));
            }
            self.entries_proposed.push(data.len());
            let index = self.sm.applied_index() + 1;
            let response = self.sm.apply(index, &data);
            self.sm.after_apply();
            reply(Ok(response));
        }
        fn read(&mut self, linearizable: bool, f: ReadFn<Kv>) {
            match self.follower_of {
                Some(leader) if linearizable => f(Err(ReadError::NotLeader { leader_hint: Some(leader) })),
                _ => f(Ok(&mut self.sm)),
            }
        }
    }

    #[derive(Clone, Default)]
    struct Frames(Arc<Mutex<Vec<ServerFrame>>>);

    impl FrameSink for Frames {
        fn send(&self, frame: ServerFrame) {
            self.0.lock().unwrap().push(frame);
        }
        fn send_watch(&self, frame: ServerFrame) -> bool {
            self.send(frame);
            true
        }
    }

    impl Frames {
        fn take(&self) -> Vec<ServerFrame> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    const MAX_ENTRY: usize = 4096;

    fn setup(follower_of: Option<NodeId>) -> (RequestPath, Group, Frames, ConnWatches) {
        let path =
            RequestPath::new(1, KvConfig::default(), AdmissionLimits::new(MAX_ENTRY), Arc::new(NoMetrics));
        let sm = Kv { kv: KvStateMachine::new(KvConfig::default()), sinks: WatchSinks::default() };
        (
            path,
            Group { sm, follower_of, entries_proposed: Vec::new() },
            Frames::default(),
            ConnWatches::default(),
        )
    }

    fn put(seq: u64, key: &str, value_bytes: usize) -> Request {
        let command = Command::Put { key: key.into(), value: Bytes::from(vec![b'v'; value_bytes]) };
        Request { client_id: 7, seq, first_unacked_seq: 1, command }
    }

    fn write(id: u64, request: Request) -> ClientFrame {
        ClientFrame { id, group: 1, body: RequestBody::Write(request) }
    }

    fn get(id: u64, key: &str, consistency: Consistency) -> ClientFrame {
        let command = Command::Get { key: key.into() };
        ClientFrame { id, group: 1, body: RequestBody::Read { command, consistency } }
    }

    fn answer(frame: &ServerFrame) -> (u64, &Result<ResponseBody, ServerError>) {
        match frame {
            ServerFrame::Response { id, result } => (*id, result),
            other => panic!("not an answer: {other:?}"),
        }
    }

    /// Fails if the path proposes a request larger than an entry (the
    /// planted `AdmissionIgnoresEntryBound`), or answers it with anything
    /// but `RequestTooLarge`, or drops the writes around it.
    #[test]
    fn writes_pack_under_the_entry_bound_and_a_too_large_one_is_refused_unproposed() {
        let (path, mut group, frames, _) = setup(None);
        let batch = vec![(1, put(1, "a", 10)), (2, put(2, "big", MAX_ENTRY)), (3, put(3, "c", 10))];
        path.writes(1, &mut group, batch, 5, &frames);
        assert_eq!(group.entries_proposed.len(), 1, "the two small writes share one entry");
        assert!(group.entries_proposed.iter().all(|&bytes| bytes <= MAX_ENTRY));
        let frames = frames.take();
        let answers: Vec<_> = frames.iter().map(answer).collect();
        assert!(
            matches!(answers[0], (2, Ok(ResponseBody::Kv(Err(KvError::RequestTooLarge { .. }))))),
            "{answers:?}"
        );
        assert!(matches!(answers[1], (1, Ok(ResponseBody::Kv(Ok(Reply::Done))))), "{answers:?}");
        assert!(matches!(answers[2], (3, Ok(ResponseBody::Kv(Ok(Reply::Done))))), "{answers:?}");
        assert!(group.sm.kv.get("big").unwrap().is_none());
    }

    /// Fails if a follower's refusal loses the leader hint (the client
    /// could not find the leader) or a client may write as the leader.
    #[test]
    fn refusals_map_to_the_errors_the_client_acts_on() {
        let (path, mut group, frames, watches) = setup(Some(3));
        path.serve(write(1, put(1, "a", 1)), &mut group, &watches, 5, &frames).unwrap();
        path.serve(get(2, "a", Consistency::Linearizable), &mut group, &watches, 5, &frames).unwrap();
        path.serve(get(3, "a", Consistency::Stale), &mut group, &watches, 5, &frames).unwrap();
        let mut leaderish = put(4, "a", 1);
        leaderish.client_id = 0;
        path.serve(write(4, leaderish), &mut group, &watches, 5, &frames).unwrap();
        let not_a_read = ClientFrame {
            id: 5,
            group: 1,
            body: RequestBody::Read {
                command: Command::Remove { key: "a".into() },
                consistency: Consistency::Stale,
            },
        };
        path.serve(not_a_read, &mut group, &watches, 5, &frames).unwrap();
        let frames = frames.take();
        let answers: Vec<_> = frames.iter().map(answer).collect();
        let not_leader = ServerError::NotLeader { node: 1, group: 1, leader: Some(3) };
        assert_eq!(answers[0], (1, &Err(not_leader.clone())));
        assert_eq!(answers[1], (2, &Err(not_leader)));
        assert_eq!(answers[2], (3, &Ok(ResponseBody::Kv(Ok(Reply::Node(None))))));
        assert_eq!(answers[3], (4, &Ok(ResponseBody::Kv(Err(KvError::ReservedClientId)))));
        assert!(
            matches!(answers[4], (5, Err(ServerError::BadRequest { reason })) if reason.contains("not a read"))
        );
        // Admin requests are the shell's.
        let hello = ClientFrame { id: 6, group: 1, body: RequestBody::Hello };
        assert!(path.serve(hello, &mut group, &watches, 5, &ConnWatchesSink).is_err());
    }

    /// The planted bug proposes the too-large request: the proof that the
    /// simulator's find is this bug.
    #[cfg(feature = "planted-bugs")]
    #[test]
    fn the_planted_bug_proposes_a_request_larger_than_an_entry() {
        let (mut path, mut group, frames, _) = setup(None);
        path.limits.planted_bug = Some(tarn_core::PlantedBug::AdmissionIgnoresEntryBound);
        path.writes(1, &mut group, vec![(1, put(1, "big", MAX_ENTRY))], 5, &frames);
        assert!(group.entries_proposed.iter().any(|&bytes| bytes > MAX_ENTRY));
    }

    /// A sink for requests that must not be answered by the path.
    #[derive(Clone)]
    struct ConnWatchesSink;

    impl FrameSink for ConnWatchesSink {
        fn send(&self, frame: ServerFrame) {
            panic!("the path answered a request it does not own: {frame:?}");
        }
        fn send_watch(&self, frame: ServerFrame) -> bool {
            panic!("the path sent a watch frame for a request it does not own: {frame:?}");
        }
    }

    /// Fails if a watch misses history before it started (resume), events
    /// after it, or keeps delivering after `Unwatch`.
    #[test]
    fn a_watch_resumes_from_an_index_and_stops_at_unwatch() {
        let (path, mut group, frames, watches) = setup(None);
        path.serve(write(1, put(1, "w", 1)), &mut group, &watches, 5, &frames).unwrap();
        let watch = RequestBody::Watch { key: "w".into(), subtree: false, after_index: Some(0) };
        path.serve(ClientFrame { id: 2, group: 1, body: watch }, &mut group, &watches, 5, &frames).unwrap();
        path.serve(write(3, put(2, "w", 2)), &mut group, &watches, 5, &frames).unwrap();
        let unwatch = RequestBody::Unwatch { watch_request_id: 2 };
        path.serve(ClientFrame { id: 4, group: 1, body: unwatch }, &mut group, &watches, 5, &frames).unwrap();
        assert!(watches.is_empty());
        path.serve(write(5, put(3, "w", 3)), &mut group, &watches, 5, &frames).unwrap();
        let frames = frames.take();
        let watched: Vec<Index> = frames
            .iter()
            .filter_map(|f| match f {
                ServerFrame::Watch { id: 2, events } => Some(events.iter().map(|e| e.index)),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(watched, [1, 2], "history from index 0, then live, then nothing after unwatch");
        assert!(frames.iter().any(|f| matches!(
            f,
            ServerFrame::Response { id: 2, result: Ok(ResponseBody::Watching { after_index: 0 }) }
        )));
        assert!(frames
            .iter()
            .any(|f| matches!(f, ServerFrame::Response { id: 4, result: Ok(ResponseBody::Done) })));
    }
}
