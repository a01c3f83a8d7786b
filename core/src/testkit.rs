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

use crate::config::Config;
use crate::io::{Action, DropReason, Input, Recovered, Role};
use crate::message::Message;
use crate::raft::RawNode;
use crate::types::{Entry, EntryPayload, HardState, Index, LogId, Membership, Nanos, NodeId};

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
}

impl Node {
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
        self.global_time(self.raft.next_deadline())
    }

    /// The log as storage holds it right now (durable plus pending writes).
    pub fn written_log(&self) -> Vec<Entry> {
        let mut log = self.durable_log.clone();
        for w in &self.pending {
            if let Write::Log(entries) = w {
                apply_append(&mut log, entries);
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
        };
        for (id, hs, log) in logs {
            let mut config = Config::new(id, seed);
            tweak(&mut config);
            let recovered = Recovered::from_log(hs, membership.clone(), log.clone());
            let raft = RawNode::new(config.clone(), recovered.clone()).expect("valid test configuration");
            let node = Node {
                raft,
                config,
                durable_log: log,
                durable_hard_state: hs,
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
            };
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
                for e in log.iter().skip(from as usize - 1).take((to - from) as usize) {
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
        }
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
        node.pending.clear();
        node.inbox.clear();
    }

    /// Restarts `id` from its durable state (its state machine restarts empty
    /// and re-applies committed entries; its disk acknowledges automatically).
    pub fn restart(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        let membership = node.raft.membership().clone();
        let recovered = Recovered::from_log(node.durable_hard_state, membership, node.durable_log.clone());
        node.raft =
            RawNode::new(node.config.clone(), recovered.clone()).expect("recovered state is consistent");
        node.recovered = recovered;
        node.inputs.clear();
        node.actions.clear();
        node.applied.clear();
        node.auto_persist = true;
        node.up = true;
        self.step(id, Input::Tick);
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
