//! An in-memory cluster for tests, fuzzing and benchmarks: it runs real
//! `RawNode`s, delivers their messages, executes their storage actions
//! against an in-memory log (durable vs. written, so a crash loses what was
//! not acknowledged), and records what every node did.
//!
//! Deterministic: no clocks, no threads, `BTreeMap` order everywhere. Time is
//! the cluster's `now`, moved only by the test.
//!
//! ```
//! use tarn_core::testkit::Cluster;
//! let mut c = Cluster::new(3, 7);
//! let leader = c.elect(1);
//! c.propose(leader, 1, b"x");
//! c.stabilize();
//! assert!(c.applied_payloads(2).contains(&b"x".to_vec()));
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

use crate::confchange::ConfChange;
use crate::config::Config;
use crate::io::{Action, DropReason, Input, Recovered, Role};
use crate::message::Message;
use crate::raft::RawNode;
use crate::types::{Entry, EntryPayload, HardState, Index, LogId, Membership, Nanos, NodeId, SnapshotMeta};

/// The outcome of a proposal or read, as a test sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied(Index),
    Dropped(DropReason),
    ReadReady(Index),
    ReadFailed(DropReason),
}

/// A storage write not yet made durable.
#[derive(Clone, Debug)]
enum Write {
    Log(Vec<Entry>),
    HardState(HardState),
    /// Install a received snapshot (its entries are the state machine).
    Snapshot(SnapshotMeta, Vec<Entry>),
}

/// One node: the core plus its in-memory disk and state machine.
pub struct Node {
    pub raft: RawNode,
    pub config: Config,
    /// What survives a crash.
    pub durable_log: Vec<Entry>,
    pub durable_hard_state: HardState,
    /// Writes issued but not yet durable, oldest first.
    pending: VecDeque<Write>,
    /// When false, writes stay pending until `persist(id)`.
    pub auto_persist: bool,
    /// Entries handed to the state machine, in order.
    pub applied: Vec<Entry>,
    /// Outcomes by proposal / read id.
    pub outcomes: BTreeMap<u64, Outcome>,
    pub up: bool,
    inbox: VecDeque<Input>,
    /// Every input this incarnation of the node stepped, with its time (when
    /// the cluster records a trace): replaying them into a fresh `RawNode`
    /// built from `recovered` must reproduce `actions` exactly.
    pub inputs: Vec<(Nanos, Input)>,
    /// Every action this incarnation emitted, in order (with `inputs`).
    pub actions: Vec<Action>,
    /// What this incarnation was built from.
    pub recovered: Recovered,
    /// This node's clock runs this many parts per million fast (negative:
    /// slow) relative to the cluster's time, from `clock_offset_ns`.
    pub clock_skew_ppm: i64,
    pub clock_offset_ns: Nanos,
    /// The durable snapshot: its metadata and the applied entries it holds
    /// (the test state machine is the list of applied entries).
    pub snapshot: Option<(SnapshotMeta, Vec<Entry>)>,
    /// `CompactLog` went up to here: `FetchEntries` below returns nothing.
    pub compacted_to: Index,
    /// Chunks of an incoming snapshot staged so far.
    pub staging: Option<(LogId, Vec<u8>)>,
    /// Answer `SnapshotWanted` with a snapshot at once (on by default).
    pub auto_snapshot: bool,
}

impl Node {
    /// A node just started from `recovered`, holding `durable_log` and
    /// `durable_hard_state` on its simulated disk.
    fn started(
        raft: RawNode,
        config: Config,
        recovered: Recovered,
        durable_log: Vec<Entry>,
        durable_hard_state: HardState,
    ) -> Node {
        Node {
            raft,
            config,
            durable_log,
            durable_hard_state,
            pending: VecDeque::new(),
            auto_persist: true,
            applied: Vec::new(),
            outcomes: BTreeMap::new(),
            up: true,
            inbox: VecDeque::new(),
            inputs: Vec::new(),
            actions: Vec::new(),
            recovered,
            clock_skew_ppm: 0,
            clock_offset_ns: 0,
            snapshot: None,
            compacted_to: 0,
            staging: None,
            auto_snapshot: true,
        }
    }

    /// The node's local clock reading at cluster time `global`.
    pub fn local_time(&self, global: Nanos) -> Nanos {
        let skew = global as i128 * self.clock_skew_ppm as i128 / 1_000_000;
        (self.clock_offset_ns as i128 + global as i128 + skew).max(0) as Nanos
    }

    /// The earliest cluster time at which the local clock reads `local`.
    pub fn global_time(&self, local: Nanos) -> Nanos {
        let rate = 1_000_000 + self.clock_skew_ppm as i128;
        let since = (local as i128 - self.clock_offset_ns as i128).max(0);
        let mut g = (since * 1_000_000 / rate).max(0) as Nanos;
        while self.local_time(g) < local {
            g += 1;
        }
        while g > 0 && self.local_time(g - 1) >= local {
            g -= 1;
        }
        g
    }

    /// When, in cluster time, this node next wants a tick.
    pub fn next_deadline_global(&self) -> Nanos {
        let local = self.raft.next_deadline();
        if local == crate::io::NO_DEADLINE {
            return local; // Quiescent: no tick wanted.
        }
        self.global_time(local)
    }

    /// The log as storage holds it right now (durable plus pending writes).
    pub fn written_log(&self) -> Vec<Entry> {
        let mut log = self.durable_log.clone();
        for w in &self.pending {
            match w {
                Write::Log(entries) => apply_append(&mut log, entries),
                Write::Snapshot(_, entries) => log = entries.clone(),
                Write::HardState(_) => {}
            }
        }
        log
    }
}

fn apply_append(log: &mut Vec<Entry>, entries: &[Entry]) {
    let first = entries[0].index;
    assert!(first as usize <= log.len() + 1, "AppendLog at {first} leaves a gap after {}", log.len());
    log.truncate(first as usize - 1);
    log.extend_from_slice(entries);
}

/// A cluster of nodes connected by a perfect network that the test can cut.
pub struct Cluster {
    pub nodes: BTreeMap<NodeId, Node>,
    /// Cluster ("real") time; each node sees its own clock (`Node::local_time`).
    pub now: Nanos,
    /// Messages in flight, delivered in order by `stabilize`.
    pub network: VecDeque<(NodeId, Message)>,
    /// Directed links that drop everything: `(from, to)`.
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// Every action of every node, as `(now, node, action)`.
    pub trace: Vec<(Nanos, NodeId, Action)>,
    pub record_trace: bool,
    /// Steps taken (a bound against livelock in `stabilize`).
    pub steps: u64,
    /// Every entry any node ever applied, by index: all later applies of an
    /// index must agree (state machine safety, checked at every `Apply`,
    /// across crashes and restarts).
    pub applied_history: Vec<Entry>,
    /// Who became leader in each term, over the whole run (election safety,
    /// checked at every `RoleChanged`, across crashes).
    pub leaders_by_term: BTreeMap<u64, NodeId>,
    /// The configuration every node started with (before any membership entry).
    pub initial_membership: Membership,
    /// Messages for which this returns true are lost (checked at delivery).
    #[allow(clippy::type_complexity)]
    pub lose: Option<Box<dyn FnMut(NodeId, &Message) -> bool>>,
}

/// Bound on steps in one `stabilize`: more means the cluster never quiesces.
pub const MAX_STABILIZE_STEPS: u64 = 10_000_000;

/// `Cluster::elect` gives up after this many campaigns.
pub const ELECTION_ATTEMPTS_MAX: usize = 5;

impl Cluster {
    /// `n` nodes with ids `1..=n`, default configuration, all voters.
    pub fn new(n: u64, seed: u64) -> Cluster {
        Cluster::with_config(n, seed, |_| {})
    }

    /// Like `new`, with each node's configuration adjusted by `tweak`.
    pub fn with_config(n: u64, seed: u64, tweak: impl Fn(&mut Config)) -> Cluster {
        let ids: Vec<NodeId> = (1..=n).collect();
        let logs = ids.iter().map(|&id| (id, HardState::default(), Vec::new())).collect();
        Cluster::with_logs(seed, Membership::new_voters(ids), logs, tweak)
    }

    /// Nodes starting from given durable hard states and logs (all with
    /// `membership`), e.g. the logs of the Raft paper's figures.
    pub fn with_logs(
        seed: u64,
        membership: Membership,
        logs: Vec<(NodeId, HardState, Vec<Entry>)>,
        tweak: impl Fn(&mut Config),
    ) -> Cluster {
        let mut c = Cluster {
            nodes: BTreeMap::new(),
            now: 0,
            network: VecDeque::new(),
            cut: BTreeSet::new(),
            trace: Vec::new(),
            record_trace: true,
            steps: 0,
            applied_history: Vec::new(),
            leaders_by_term: BTreeMap::new(),
            initial_membership: membership.clone(),
            lose: None,
        };
        for (id, hs, log) in logs {
            let mut config = Config::new(id, seed);
            tweak(&mut config);
            let recovered = Recovered::from_log_and_initial(hs, membership.clone(), log.clone());
            let raft = RawNode::new(config.clone(), recovered.clone()).expect("valid test configuration");
            let node = Node::started(raft, config, recovered, log, hs);
            c.nodes.insert(id, node);
        }
        // Start every node's clock at 0 (timers run from the first step).
        let ids: Vec<NodeId> = c.nodes.keys().copied().collect();
        for id in ids {
            c.step(id, Input::Tick);
        }
        c
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[&id]
    }

    pub fn raft(&self, id: NodeId) -> &RawNode {
        &self.nodes[&id].raft
    }

    /// Feeds one input to a node and executes the resulting actions (storage
    /// acknowledgements are queued as further inputs to that node).
    pub fn step(&mut self, id: NodeId, input: Input) {
        let node = self.nodes.get_mut(&id).expect("known node");
        if !node.up {
            return;
        }
        node.inbox.push_back(input);
        self.drain_inbox(id);
    }

    fn drain_inbox(&mut self, id: NodeId) {
        let mut actions = Vec::new();
        loop {
            let node = self.nodes.get_mut(&id).expect("known node");
            let Some(input) = node.inbox.pop_front() else { break };
            let local = node.local_time(self.now);
            if self.record_trace {
                node.inputs.push((local, input.clone()));
            }
            node.raft.step(local, input, &mut actions);
            self.steps += 1;
            if self.record_trace {
                node.actions.extend(actions.iter().cloned());
            }
            for a in actions.drain(..) {
                self.execute(id, a);
            }
            let node = self.nodes.get_mut(&id).expect("known node");
            if node.auto_persist {
                Self::persist_node(node);
            }
        }
    }

    fn execute(&mut self, id: NodeId, action: Action) {
        if self.record_trace {
            self.trace.push((self.now, id, action.clone()));
        }
        let node = self.nodes.get_mut(&id).expect("known node");
        match action {
            Action::Send { to, message } => {
                if !self.cut.contains(&(id, to)) {
                    self.network.push_back((to, message));
                }
            }
            Action::AppendLog { entries } => node.pending.push_back(Write::Log(entries)),
            Action::PersistHardState(hs) => node.pending.push_back(Write::HardState(hs)),
            Action::Apply { entries, proposals } => {
                for (index, pid) in proposals {
                    node.outcomes.insert(pid, Outcome::Applied(index));
                }
                let last = entries.last().map(|e| e.index).expect("Apply carries entries");
                if let Some(prev) = node.applied.last() {
                    assert_eq!(prev.index + 1, entries[0].index, "node {id}: apply out of order");
                }
                for e in &entries {
                    let k = e.index as usize - 1;
                    match self.applied_history.get(k) {
                        Some(before) => {
                            assert_eq!(before, e, "node {id} applied a different entry at {}", e.index)
                        }
                        None => {
                            assert_eq!(
                                k,
                                self.applied_history.len(),
                                "node {id} applied {} past a gap",
                                e.index
                            );
                            self.applied_history.push(e.clone());
                        }
                    }
                }
                node.applied.extend(entries);
                node.inbox.push_back(Input::Applied { index: last });
            }
            Action::FetchEntries { from, to, max_bytes } => {
                let log = node.written_log();
                let mut out = Vec::new();
                let mut bytes = 0;
                let compacted = if from <= node.compacted_to { 0 } else { usize::MAX };
                for e in log.iter().skip(from as usize - 1).take((to - from) as usize).take(compacted) {
                    if !out.is_empty() && bytes + e.size_bytes() > max_bytes {
                        break;
                    }
                    bytes += e.size_bytes();
                    out.push(e.clone());
                }
                node.inbox.push_back(Input::EntriesFetched { from, entries: out });
            }
            Action::ReadReady { id: rid, index } => {
                node.outcomes.insert(rid, Outcome::ReadReady(index));
            }
            Action::ReadFailed { id: rid, reason } => {
                node.outcomes.insert(rid, Outcome::ReadFailed(reason));
            }
            Action::ProposalDropped { id: pid, reason } => {
                node.outcomes.insert(pid, Outcome::Dropped(reason));
            }
            Action::RoleChanged { role, term, .. } => {
                if role == Role::Leader {
                    let first = *self.leaders_by_term.entry(term).or_insert(id);
                    assert_eq!(first, id, "two leaders in term {term}: {first} and {id}");
                }
            }
            Action::SnapshotWanted { .. } => {
                if node.auto_snapshot {
                    let meta = Self::make_snapshot(node, &self.initial_membership);
                    node.inbox.push_back(Input::SnapshotCreated { meta });
                }
            }
            Action::CompactLog { up_to } => {
                let held = node.snapshot.as_ref().map_or(0, |(m, _)| m.last_log_id.index);
                assert!(up_to.index <= held, "node {id} compacts to {up_to} past its snapshot at {held}");
                node.compacted_to = node.compacted_to.max(up_to.index);
            }
            Action::FetchSnapshotChunk { to, snapshot, offset, max_bytes } => {
                let data = match &node.snapshot {
                    Some((meta, entries)) if meta.last_log_id == snapshot => {
                        let bytes = encode_entries(entries);
                        let start = (offset as usize).min(bytes.len());
                        let end = (start + max_bytes).min(bytes.len());
                        Some((Bytes::copy_from_slice(&bytes[start..end]), end == bytes.len()))
                    }
                    _ => None,
                };
                let (data, done) = match data {
                    Some((d, done)) => (Some(d), done),
                    None => (None, false),
                };
                node.inbox.push_back(Input::SnapshotChunkRead { to, snapshot, offset, data, done });
            }
            Action::ReceiveSnapshotChunk { snapshot, offset, data, .. } => {
                if offset == 0 {
                    node.staging = Some((snapshot, Vec::new()));
                }
                let staged = node.staging.as_mut().expect("chunk 0 comes first");
                assert_eq!(staged.0, snapshot, "node {id}: chunks of two snapshots mixed");
                assert_eq!(staged.1.len() as u64, offset, "node {id}: snapshot chunk out of order");
                staged.1.extend_from_slice(&data);
            }
            Action::InstallSnapshot { meta } => {
                let (snapshot, bytes) = node.staging.take().expect("chunks staged before install");
                assert_eq!(snapshot, meta.last_log_id, "node {id}: installs another snapshot than staged");
                let entries = decode_entries(&bytes).expect("a complete staged snapshot decodes");
                assert_eq!(
                    entries.last().map_or(LogId::ZERO, Entry::log_id),
                    meta.last_log_id,
                    "node {id}: snapshot content does not end at its last log id"
                );
                for e in &entries {
                    match self.applied_history.get(e.index as usize - 1) {
                        Some(before) => {
                            assert_eq!(before, e, "node {id} installs a snapshot that differs at {}", e.index)
                        }
                        None => self.applied_history.push(e.clone()),
                    }
                }
                node.pending.push_back(Write::Snapshot(meta, entries));
            }
        }
    }

    /// The state machine's snapshot at its applied index (made durable at once).
    fn make_snapshot(node: &mut Node, initial: &Membership) -> SnapshotMeta {
        let entries = node.applied.clone();
        let membership = membership_of(&entries).unwrap_or_else(|| match &node.snapshot {
            Some((m, _)) if entries.is_empty() => m.membership.clone(),
            _ => initial.clone(),
        });
        let last_log_id = entries.last().map_or(LogId::ZERO, Entry::log_id);
        let meta = SnapshotMeta { last_log_id, membership };
        node.snapshot = Some((meta.clone(), entries));
        meta
    }

    /// Makes `id`'s state machine take a snapshot now and report it.
    pub fn take_snapshot(&mut self, id: NodeId) -> SnapshotMeta {
        let initial = self.initial_membership.clone();
        let node = self.nodes.get_mut(&id).expect("known node");
        let meta = Self::make_snapshot(node, &initial);
        self.step(id, Input::SnapshotCreated { meta: meta.clone() });
        meta
    }

    /// Asks `id` to change the membership (`proposal_id` gets the outcome).
    pub fn change_membership(&mut self, id: NodeId, proposal_id: u64, changes: &[ConfChange]) {
        self.step(id, Input::ChangeMembership { id: proposal_id, changes: changes.to_vec() });
    }

    /// Adds a brand-new node `id` (empty log, not yet in any configuration it
    /// knows of: it learns the configuration from the leader). Build with the
    /// cluster's seed and `tweak`.
    pub fn add_node(&mut self, id: NodeId, seed: u64, tweak: impl Fn(&mut Config)) {
        assert!(!self.nodes.contains_key(&id), "node {id} exists");
        let mut config = Config::new(id, seed);
        tweak(&mut config);
        let recovered = Recovered::new_cluster([]);
        let raft = RawNode::new(config.clone(), recovered.clone()).expect("valid test configuration");
        let node = Node::started(raft, config, recovered, Vec::new(), HardState::default());
        self.nodes.insert(id, node);
        self.step(id, Input::Tick);
    }

    /// Makes every pending write of `node` durable, in order, and queues the
    /// acknowledgements.
    fn persist_node(node: &mut Node) {
        while let Some(w) = node.pending.pop_front() {
            match w {
                Write::Log(entries) => {
                    let up_to = entries.last().expect("non-empty append").log_id();
                    apply_append(&mut node.durable_log, &entries);
                    node.inbox.push_back(Input::LogPersisted { up_to });
                }
                Write::HardState(hs) => {
                    node.durable_hard_state = hs;
                    node.inbox.push_back(Input::HardStatePersisted { term: hs.term, vote: hs.vote });
                }
                Write::Snapshot(meta, entries) => {
                    // The log does not hold the snapshot's last entry: it is
                    // replaced by the snapshot's prefix (Raft §7).
                    node.durable_log = entries.clone();
                    node.compacted_to = meta.last_log_id.index;
                    node.applied = entries.clone();
                    node.snapshot = Some((meta.clone(), entries));
                    node.inbox.push_back(Input::SnapshotInstalled { meta });
                }
            }
        }
    }

    /// Makes `id`'s pending writes durable now (for nodes with `auto_persist` off).
    pub fn persist(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        Self::persist_node(node);
        self.drain_inbox(id);
    }

    /// Delivers messages until none are in flight. Panics past
    /// `MAX_STABILIZE_STEPS` (a livelock is a bug).
    pub fn stabilize(&mut self) {
        let start = self.steps;
        while let Some((to, msg)) = self.network.pop_front() {
            assert!(self.steps - start < MAX_STABILIZE_STEPS, "cluster does not quiesce");
            let from = msg.from;
            if self.cut.contains(&(from, to)) || !self.nodes.get(&to).is_some_and(|n| n.up) {
                continue;
            }
            if self.lose.as_mut().is_some_and(|lose| lose(to, &msg)) {
                continue;
            }
            self.step(to, Input::Message(msg));
        }
    }

    /// Delivers only the messages in flight now for which `keep` is true;
    /// the rest are dropped.
    pub fn deliver_filtered(&mut self, keep: impl Fn(NodeId, &Message) -> bool) {
        let batch: Vec<_> = self.network.drain(..).collect();
        for (to, msg) in batch {
            if keep(to, &msg) && self.nodes.get(&to).is_some_and(|n| n.up) {
                self.step(to, Input::Message(msg));
            }
        }
    }

    /// Ticks `id` at its next deadline (moving cluster time there if later).
    pub fn tick(&mut self, id: NodeId) {
        self.now = self.now.max(self.nodes[&id].next_deadline_global());
        self.step(id, Input::Tick);
    }

    /// Runs the cluster for `duration_ns`: messages are delivered instantly and
    /// every node is ticked at its deadlines.
    pub fn run_for(&mut self, duration_ns: Nanos) {
        let end = self.now + duration_ns;
        loop {
            self.stabilize();
            let next = self.nodes.values().filter(|n| n.up).map(Node::next_deadline_global).min();
            let Some(next) = next else { break };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            let due: Vec<NodeId> = self
                .nodes
                .iter()
                .filter(|(_, n)| n.up && n.next_deadline_global() <= self.now)
                .map(|(&i, _)| i)
                .collect();
            for id in due {
                self.step(id, Input::Tick);
            }
        }
        self.now = end;
        self.stabilize();
    }

    /// Makes `id` campaign (again, up to a few times, e.g. when a refusal
    /// taught it a newer term) and runs the election to its end.
    pub fn elect(&mut self, id: NodeId) -> NodeId {
        for _ in 0..ELECTION_ATTEMPTS_MAX {
            self.tick(id);
            self.stabilize();
            if self.leader() == Some(id) {
                break;
            }
        }
        let leader = self.leader().expect("an election with a connected quorum elects a leader");
        assert_eq!(leader, id, "node {id} should have won");
        leader
    }

    /// The node that is leader in the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.up && n.raft.role() == Role::Leader)
            .max_by_key(|(_, n)| n.raft.term())
            .map(|(&id, _)| id)
    }

    pub fn propose(&mut self, id: NodeId, proposal_id: u64, data: &[u8]) {
        self.step(id, Input::Propose { id: proposal_id, data: Bytes::copy_from_slice(data) });
    }

    pub fn read(&mut self, id: NodeId, read_id: u64) {
        self.step(id, Input::Read { id: read_id });
    }

    pub fn outcome(&self, id: NodeId, op: u64) -> Option<&Outcome> {
        self.nodes[&id].outcomes.get(&op)
    }

    /// Cuts every link between the two groups (both directions).
    pub fn partition(&mut self, a: &[NodeId], b: &[NodeId]) {
        for &x in a {
            for &y in b {
                self.cut.insert((x, y));
                self.cut.insert((y, x));
            }
        }
    }

    /// Isolates `id` from everyone.
    pub fn isolate(&mut self, id: NodeId) {
        let others: Vec<NodeId> = self.nodes.keys().copied().filter(|&o| o != id).collect();
        self.partition(&[id], &others);
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Crashes `id`: pending (not yet durable) writes are lost, messages to
    /// it are dropped.
    pub fn crash(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        node.up = false;
        // A driver persists that rejoining ended and stops passing the flag
        // (`Config::rejoin_after_data_loss`).
        if !node.raft.status().rejoining {
            node.config.rejoin_after_data_loss = false;
        }
        node.pending.clear();
        node.inbox.clear();
    }

    /// Restarts `id` from its durable state (its state machine restarts empty
    /// and re-applies committed entries; its disk acknowledges automatically).
    pub fn restart(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        let (recovered, applied) = match &node.snapshot {
            None => {
                let log = node.durable_log.clone();
                // The configuration this node started with (empty for a node
                // added later: it learns the configuration from the log).
                let initial =
                    node.recovered.initial_membership.clone().unwrap_or(self.initial_membership.clone());
                (Recovered::from_log_and_initial(node.durable_hard_state, initial, log), Vec::new())
            }
            Some((meta, entries)) => {
                let s = meta.last_log_id.index as usize;
                let after = node.durable_log.get(s..).unwrap_or_default().to_vec();
                let membership = membership_of(&after).unwrap_or_else(|| meta.membership.clone());
                let mut r = Recovered::from_log(node.durable_hard_state, membership, after);
                r.snapshot = Some(meta.clone());
                r.applied = meta.last_log_id.index;
                if r.tail.is_empty() {
                    r.last_log_id = meta.last_log_id;
                }
                (r, entries.clone())
            }
        };
        node.raft =
            RawNode::new(node.config.clone(), recovered.clone()).expect("recovered state is consistent");
        node.recovered = recovered;
        node.inputs.clear();
        node.actions.clear();
        node.applied = applied;
        node.staging = None;
        node.auto_persist = true;
        node.up = true;
        self.step(id, Input::Tick);
    }

    /// `id` loses its disk: it crashes, and restarts with an empty log and
    /// hard state, the cluster's initial configuration (what a driver that
    /// bootstraps the node again knows) and `rejoin_after_data_loss` =
    /// `rejoin`. Its state machine restarts empty.
    pub fn wipe(&mut self, id: NodeId, rejoin: bool) {
        self.crash(id);
        let initial = self.initial_membership.clone();
        let node = self.nodes.get_mut(&id).expect("known node");
        node.durable_log.clear();
        node.durable_hard_state = HardState::default();
        node.snapshot = None;
        node.compacted_to = 0;
        node.config.rejoin_after_data_loss = rejoin;
        node.recovered = Recovered::from_log_and_initial(HardState::default(), initial, Vec::new());
        self.restart(id);
    }

    /// Normal payloads `id` has applied, in order.
    pub fn applied_payloads(&self, id: NodeId) -> Vec<Vec<u8>> {
        self.nodes[&id]
            .applied
            .iter()
            .filter_map(|e| match &e.payload {
                EntryPayload::Normal(d) => Some(d.to_vec()),
                _ => None,
            })
            .collect()
    }

    /// Checks the Raft safety properties across all nodes: at most one leader
    /// per term, logs match wherever (term, index) agree (log matching), and
    /// every two nodes applied the same sequence (state machine safety).
    pub fn check_invariants(&self) {
        let mut leaders: BTreeMap<u64, NodeId> = BTreeMap::new();
        for (&id, n) in &self.nodes {
            if n.up && n.raft.role() == Role::Leader {
                if let Some(other) = leaders.insert(n.raft.term(), id) {
                    panic!("two leaders in term {}: {other} and {id}", n.raft.term());
                }
            }
        }
        let logs: Vec<(NodeId, Vec<Entry>)> =
            self.nodes.iter().map(|(&id, n)| (id, n.written_log())).collect();
        for (i, (a, la)) in logs.iter().enumerate() {
            for (b, lb) in &logs[i + 1..] {
                let common = la.len().min(lb.len());
                if let Some(k) = (0..common).rev().find(|&k| la[k].log_id() == lb[k].log_id()) {
                    assert_eq!(
                        la[..=k],
                        lb[..=k],
                        "log matching violated between {a} and {b} up to {}",
                        k + 1
                    );
                }
            }
        }
        let applied: Vec<(NodeId, &Vec<Entry>)> =
            self.nodes.iter().map(|(&id, n)| (id, &n.applied)).collect();
        for (i, (a, xa)) in applied.iter().enumerate() {
            for (b, xb) in &applied[i + 1..] {
                let common = xa.len().min(xb.len());
                assert_eq!(xa[..common], xb[..common], "nodes {a} and {b} applied different entries");
            }
        }
    }

    /// Id of the last entry in `id`'s in-memory view.
    pub fn last_log_id(&self, id: NodeId) -> LogId {
        self.nodes[&id].raft.last_log_id()
    }
}

/// Entries with the given terms at indexes 1, 2, ... (blank payloads), for
/// building the logs of the paper's figures.
pub fn log_with_terms(terms: &[u64]) -> Vec<Entry> {
    terms
        .iter()
        .enumerate()
        .map(|(k, &term)| Entry { term, index: k as Index + 1, payload: EntryPayload::Blank })
        .collect()
}

/// The newest membership entry among `entries`.
pub fn membership_of(entries: &[Entry]) -> Option<Membership> {
    entries.iter().rev().find_map(|e| match &e.payload {
        EntryPayload::Membership(m) => Some(m.clone()),
        _ => None,
    })
}

/// The test state machine's snapshot format: the applied entries, each as
/// term, index, kind and payload (little endian, length-prefixed).
pub fn encode_entries(entries: &[Entry]) -> Vec<u8> {
    fn set(out: &mut Vec<u8>, s: &BTreeSet<NodeId>) {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        for id in s {
            out.extend_from_slice(&id.to_le_bytes());
        }
    }
    let mut out = Vec::new();
    for e in entries {
        out.extend_from_slice(&e.term.to_le_bytes());
        out.extend_from_slice(&e.index.to_le_bytes());
        match &e.payload {
            EntryPayload::Blank => out.push(0),
            EntryPayload::Normal(d) => {
                out.push(1);
                out.extend_from_slice(&(d.len() as u32).to_le_bytes());
                out.extend_from_slice(d);
            }
            EntryPayload::Membership(m) => {
                out.push(2);
                set(&mut out, &m.voters);
                set(&mut out, &m.voters_outgoing);
                set(&mut out, &m.learners);
            }
        }
    }
    out
}

/// Inverse of [`encode_entries`]; `None` if the bytes are truncated or malformed.
pub fn decode_entries(mut b: &[u8]) -> Option<Vec<Entry>> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Some(head)
    }
    fn u64_(b: &mut &[u8]) -> Option<u64> {
        Some(u64::from_le_bytes(take(b, 8)?.try_into().ok()?))
    }
    fn u32_(b: &mut &[u8]) -> Option<usize> {
        Some(u32::from_le_bytes(take(b, 4)?.try_into().ok()?) as usize)
    }
    fn set(b: &mut &[u8]) -> Option<BTreeSet<NodeId>> {
        let n = u32_(b)?;
        (0..n).map(|_| u64_(b)).collect()
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let term = u64_(&mut b)?;
        let index = u64_(&mut b)?;
        let payload = match take(&mut b, 1)?[0] {
            0 => EntryPayload::Blank,
            1 => {
                let n = u32_(&mut b)?;
                EntryPayload::Normal(Bytes::copy_from_slice(take(&mut b, n)?))
            }
            2 => EntryPayload::Membership(Membership {
                voters: set(&mut b)?,
                voters_outgoing: set(&mut b)?,
                learners: set(&mut b)?,
            }),
            _ => return None,
        };
        out.push(Entry { term, index, payload });
    }
    Some(out)
}
