//! `raft_cluster`: arbitrary event streams driving a small in-memory cluster
//! of the real core (`tarn_core::testkit::Cluster`): deliver any in-flight
//! message (so reordering), drop, duplicate, tick, propose, read, transfer
//! leadership, hold a node's disk writes and crash it before they are
//! acknowledged, restart, isolate, heal; membership changes (add a voter or
//! a learner, remove, promote; a spare node starts outside the
//! configuration), snapshots (taken on request and by the core's policy
//! after a few entries, so lagging nodes catch up by snapshot install), and
//! wiping a node's disk (it restarts with `rejoin_after_data_loss`; allowed
//! only while every node holds every committed entry and no other node is
//! rejoining — losing more is data loss no protocol survives).
//!
//! After every step:
//! - the testkit's checks (one leader per term among live nodes, log
//!   matching, every two nodes applied the same sequence);
//! - one leader per term over the whole history, not just at one instant;
//! - committed entries never change: the prefix up to any node's commit
//!   index, and everything any node applied, agree with one global committed
//!   log (so a committed entry is never lost across crashes either);
//! - a node still rejoining after data loss granted no (pre-)vote and asked
//!   for none;
//! - a proposal reported applied at index i is the entry committed at i,
//!   and a membership change reported applied at i is a configuration entry;
//! - a read reported ready at index i started after no more than i entries
//!   were known committed anywhere (reads see every write committed before
//!   they began).

use std::collections::{BTreeMap, BTreeSet};

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use tarn_core::testkit::{Cluster, Outcome};
use tarn_core::{
    Action, ConfChange, Config, Entry, EntryPayload, Index, Input, MessageBody, NodeId, Role, Term,
};

/// Bounds on the work one input can ask for.
pub const OPS_MAX: usize = 160;
pub const DELIVER_ALL_MAX_MESSAGES: usize = 256;
pub const NETWORK_MAX_MESSAGES: usize = 512;
/// The core's snapshot policy: small, so a short run takes snapshots and
/// compacts its log.
pub const SNAPSHOT_AFTER_ENTRIES: u64 = 12;
pub const LOG_KEEP_TAIL_ENTRIES: u64 = 3;
pub const MAX_SNAPSHOT_CHUNK_BYTES: usize = 48;

fn tweak(cfg: &mut Config) {
    cfg.snapshot_after_entries = SNAPSHOT_AFTER_ENTRIES;
    cfg.log_keep_tail_entries = LOG_KEEP_TAIL_ENTRIES;
    cfg.max_snapshot_chunk_bytes = MAX_SNAPSHOT_CHUNK_BYTES;
}

#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Deliver {
        pick: u8,
    },
    DeliverAll,
    Drop {
        pick: u8,
    },
    Duplicate {
        pick: u8,
    },
    Tick {
        node: u8,
    },
    Propose {
        node: u8,
    },
    Read {
        node: u8,
    },
    Transfer {
        node: u8,
        to: u8,
    },
    HoldWrites {
        node: u8,
    },
    ReleaseWrites {
        node: u8,
    },
    Crash {
        node: u8,
    },
    Restart {
        node: u8,
    },
    Isolate {
        node: u8,
    },
    Heal,
    /// `change % 4`: add `target` as a voter, as a learner, remove it,
    /// promote it (asked of `node`, normally refused unless it leads).
    ChangeMembership {
        node: u8,
        change: u8,
        target: u8,
    },
    /// The node's state machine takes a snapshot now.
    Snapshot {
        node: u8,
    },
    /// The node loses its disk (see the module doc for when this is allowed).
    Wipe {
        node: u8,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInput {
    pub seed: u8,
    pub five_nodes: bool,
    pub ops: Vec<Op>,
}

/// What one run reached, for tests that check the corpus goes deep.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reached {
    pub max_term: Term,
    pub committed: u64,
    pub proposals_applied: u64,
    pub reads_ready: u64,
    pub restarts: u64,
    /// Membership changes applied (reported at their C(new) entry).
    pub conf_changes: u64,
    /// Snapshots installed from a leader.
    pub installs: u64,
    pub wipes: u64,
    /// Wiped nodes that left rejoin mode.
    pub rejoined: u64,
}

pub fn raft_cluster(data: &[u8]) {
    if let Some(input) = parse(data) {
        run(&input);
    }
}

/// The structured input `data` encodes (`None`: too short to say).
pub fn parse(data: &[u8]) -> Option<ClusterInput> {
    let mut u = Unstructured::new(data);
    let seed = u8::arbitrary(&mut u).ok()?;
    let five_nodes = bool::arbitrary(&mut u).ok()?;
    let ops = crate::elements_until_empty(&mut u, OPS_MAX);
    Some(ClusterInput { seed, five_nodes, ops })
}

/// Number of `Op` variants (the derived decoder maps a `u32` onto them).
const OP_VARIANTS: u64 = 17;

/// The bytes `parse` decodes into `input` (for hand-written scenario seeds).
pub fn encode(input: &ClusterInput) -> Vec<u8> {
    let mut out = vec![input.seed, u8::from(input.five_nodes)];
    for op in &input.ops {
        let (variant, fields): (u64, Vec<u8>) = match *op {
            Op::Deliver { pick } => (0, vec![pick]),
            Op::DeliverAll => (1, vec![]),
            Op::Drop { pick } => (2, vec![pick]),
            Op::Duplicate { pick } => (3, vec![pick]),
            Op::Tick { node } => (4, vec![node]),
            Op::Propose { node } => (5, vec![node]),
            Op::Read { node } => (6, vec![node]),
            Op::Transfer { node, to } => (7, vec![node, to]),
            Op::HoldWrites { node } => (8, vec![node]),
            Op::ReleaseWrites { node } => (9, vec![node]),
            Op::Crash { node } => (10, vec![node]),
            Op::Restart { node } => (11, vec![node]),
            Op::Isolate { node } => (12, vec![node]),
            Op::Heal => (13, vec![]),
            Op::ChangeMembership { node, change, target } => (14, vec![node, change, target]),
            Op::Snapshot { node } => (15, vec![node]),
            Op::Wipe { node } => (16, vec![node]),
        };
        // The derived decoder picks variant `(x * N) >> 32` for a LE u32 x.
        let x = (variant << 32).div_ceil(OP_VARIANTS);
        out.extend_from_slice(&(x as u32).to_le_bytes());
        out.extend(fields);
    }
    out
}

struct Checker {
    leaders: BTreeMap<Term, NodeId>,
    committed: Vec<Entry>,
    /// Proposal id → payload.
    proposals: BTreeMap<u64, Bytes>,
    /// Ids of membership change requests.
    conf_changes: BTreeSet<u64>,
    /// Nodes wiped and still rejoining.
    rejoining: BTreeSet<NodeId>,
    /// Read id → entries known committed when the read began.
    reads: BTreeMap<u64, Index>,
    /// Outcomes already checked: (node, op id).
    seen: BTreeMap<(NodeId, u64), Outcome>,
    reached: Reached,
}

impl Checker {
    fn agree(&mut self, index: Index, entry: &Entry, who: NodeId, what: &str) {
        assert_eq!(
            entry.index, index,
            "node {who}: {what} entry at position {index} has index {}",
            entry.index
        );
        match self.committed.get(index as usize - 1) {
            Some(known) => {
                assert_eq!(known, entry, "node {who}: {what} entry {index} differs from the committed one")
            }
            None => {
                assert_eq!(self.committed.len() as u64 + 1, index, "committed log has a gap");
                self.committed.push(entry.clone());
            }
        }
    }

    fn check(&mut self, c: &Cluster) {
        c.check_invariants();
        for (&id, node) in &c.nodes {
            if !node.up {
                continue;
            }
            let raft = &node.raft;
            self.reached.max_term = self.reached.max_term.max(raft.term());
            if raft.role() == Role::Leader {
                let leader = *self.leaders.entry(raft.term()).or_insert(id);
                assert_eq!(leader, id, "term {} had leaders {leader} and {id}", raft.term());
            }
            let log = node.written_log();
            let upto = raft.commit_index().min(log.len() as u64);
            for index in 1..=upto {
                self.agree(index, &log[index as usize - 1], id, "committed");
            }
            for (k, entry) in node.applied.iter().enumerate() {
                self.agree(k as u64 + 1, entry, id, "applied");
            }
        }
        self.reached.committed = self.committed.len() as u64;
        let rejoined: Vec<NodeId> =
            self.rejoining.iter().copied().filter(|id| !c.raft(*id).status().rejoining).collect();
        for id in rejoined {
            self.rejoining.remove(&id);
            self.reached.rejoined += 1;
        }
        for (&id, node) in &c.nodes {
            for (&op, outcome) in &node.outcomes {
                if self.seen.get(&(id, op)) == Some(outcome) {
                    continue;
                }
                self.seen.insert((id, op), outcome.clone());
                match *outcome {
                    Outcome::Applied(index) if self.conf_changes.contains(&op) => {
                        let entry = self.committed.get(index as usize - 1);
                        let entry =
                            entry.unwrap_or_else(|| panic!("change {op} applied at {index}, not committed"));
                        assert!(
                            matches!(entry.payload, EntryPayload::Membership(_)),
                            "change {op} reported at {index}, which is not a configuration entry"
                        );
                        self.reached.conf_changes += 1;
                    }
                    Outcome::Applied(index) => {
                        let data = &self.proposals[&op];
                        let entry = self.committed.get(index as usize - 1);
                        let entry = entry
                            .unwrap_or_else(|| panic!("proposal {op} applied at {index}, not committed"));
                        assert_eq!(
                            entry.payload,
                            EntryPayload::Normal(data.clone()),
                            "proposal {op} at {index}"
                        );
                        self.reached.proposals_applied += 1;
                    }
                    Outcome::ReadReady(index) => {
                        let floor = self.reads[&op];
                        assert!(
                            index >= floor,
                            "read {op} ready at {index}, but {floor} were committed before it"
                        );
                        self.reached.reads_ready += 1;
                    }
                    Outcome::Dropped(_) | Outcome::ReadFailed(_) => {}
                }
            }
        }
    }
}

fn node_id(c: &Cluster, node: u8) -> NodeId {
    1 + node as u64 % c.nodes.len() as u64
}

/// May a node lose its disk without losing committed data? No node is
/// rejoining, and every node that any node counts as a member is up and
/// durably holds every entry known committed.
fn wipe_allowed(c: &Cluster, checker: &Checker) -> bool {
    let committed = &checker.committed;
    let members: BTreeSet<NodeId> = c.nodes.values().flat_map(|n| n.raft.membership().members()).collect();
    checker.rejoining.is_empty()
        && members.iter().all(|id| {
            let n = &c.nodes[id];
            n.up && n.durable_log.len() >= committed.len()
                && n.durable_log[..committed.len()] == committed[..]
        })
}

pub fn run(input: &ClusterInput) -> Reached {
    let n = if input.five_nodes { 5 } else { 3 };
    let seed = input.seed as u64;
    let mut c = Cluster::with_config(n, seed, tweak);
    // Recorded per op (to count installs), then dropped.
    c.record_trace = true;
    // A spare outside the configuration, for membership changes to add.
    c.add_node(n + 1, seed, tweak);
    let mut checker = Checker {
        leaders: BTreeMap::new(),
        committed: Vec::new(),
        proposals: BTreeMap::new(),
        conf_changes: BTreeSet::new(),
        rejoining: BTreeSet::new(),
        reads: BTreeMap::new(),
        seen: BTreeMap::new(),
        reached: Reached::default(),
    };
    let mut next_op_id: u64 = 1;
    checker.check(&c);
    for op in input.ops.iter().take(OPS_MAX) {
        match *op {
            Op::Deliver { pick } => {
                if !c.network.is_empty() {
                    let at = pick as usize % c.network.len();
                    let (to, msg) = c.network.remove(at).expect("index in range");
                    deliver(&mut c, to, msg);
                }
            }
            Op::DeliverAll => {
                for _ in 0..DELIVER_ALL_MAX_MESSAGES {
                    let Some((to, msg)) = c.network.pop_front() else { break };
                    deliver(&mut c, to, msg);
                }
            }
            Op::Drop { pick } => {
                if !c.network.is_empty() {
                    let at = pick as usize % c.network.len();
                    c.network.remove(at);
                }
            }
            Op::Duplicate { pick } => {
                if !c.network.is_empty() && c.network.len() < NETWORK_MAX_MESSAGES {
                    let at = pick as usize % c.network.len();
                    let copy = c.network[at].clone();
                    c.network.push_back(copy);
                }
            }
            Op::Tick { node } => {
                let id = node_id(&c, node);
                if c.nodes[&id].up {
                    c.tick(id);
                }
            }
            Op::Propose { node } => {
                let id = node_id(&c, node);
                let pid = next_op_id;
                next_op_id += 1;
                let data = Bytes::from(pid.to_le_bytes().to_vec());
                checker.proposals.insert(pid, data.clone());
                c.step(id, Input::Propose { id: pid, data });
            }
            Op::Read { node } => {
                let id = node_id(&c, node);
                let rid = next_op_id;
                next_op_id += 1;
                checker.reads.insert(rid, checker.committed.len() as Index);
                c.read(id, rid);
            }
            Op::Transfer { node, to } => {
                let id = node_id(&c, node);
                let to = node_id(&c, to);
                c.step(id, Input::TransferLeadership { to });
            }
            Op::HoldWrites { node } => {
                let id = node_id(&c, node);
                c.nodes.get_mut(&id).expect("known node").auto_persist = false;
            }
            Op::ReleaseWrites { node } => {
                let id = node_id(&c, node);
                c.nodes.get_mut(&id).expect("known node").auto_persist = true;
                if c.nodes[&id].up {
                    c.persist(id);
                }
            }
            Op::Crash { node } => {
                let id = node_id(&c, node);
                if c.nodes[&id].up {
                    c.crash(id);
                }
            }
            Op::Restart { node } => {
                let id = node_id(&c, node);
                if !c.nodes[&id].up {
                    c.restart(id);
                    checker.reached.restarts += 1;
                }
            }
            Op::Isolate { node } => {
                let id = node_id(&c, node);
                c.isolate(id);
            }
            Op::Heal => c.heal(),
            Op::ChangeMembership { node, change, target } => {
                let id = node_id(&c, node);
                let target = node_id(&c, target);
                let change = match change % 4 {
                    0 => ConfChange::AddVoter(target),
                    1 => ConfChange::AddLearner(target),
                    2 => ConfChange::RemoveNode(target),
                    _ => ConfChange::PromoteLearner(target),
                };
                let cid = next_op_id;
                next_op_id += 1;
                checker.conf_changes.insert(cid);
                c.change_membership(id, cid, &[change]);
            }
            Op::Snapshot { node } => {
                let id = node_id(&c, node);
                if c.nodes[&id].up {
                    c.take_snapshot(id);
                }
            }
            Op::Wipe { node } => {
                let id = node_id(&c, node);
                if wipe_allowed(&c, &checker) {
                    c.wipe(id, true);
                    checker.rejoining.insert(id);
                    checker.reached.wipes += 1;
                }
            }
        }
        checker.check(&c);
        check_rejoin_rule(&c);
        let installs = c.trace.iter().filter(|(_, _, a)| matches!(a, Action::InstallSnapshot { .. })).count();
        checker.reached.installs += installs as u64;
        c.trace.clear();
        for node in c.nodes.values_mut() {
            node.inputs.clear();
            node.actions.clear();
        }
    }
    checker.reached
}

/// The rule of `Config::rejoin_after_data_loss`, checked directly: a node
/// still rejoining after this op (leaving the mode is final, so it was
/// rejoining all through the op) granted no (pre-)vote and asked for none.
fn check_rejoin_rule(c: &Cluster) {
    let rejoining: BTreeSet<NodeId> =
        c.nodes.iter().filter(|(_, n)| n.raft.status().rejoining).map(|(&id, _)| id).collect();
    if rejoining.is_empty() {
        return;
    }
    for (_, id, action) in &c.trace {
        if !rejoining.contains(id) {
            continue;
        }
        if let Action::Send { message, .. } = action {
            let voted = matches!(
                message.body,
                MessageBody::VoteResponse { granted: true }
                    | MessageBody::PreVoteResponse { granted: true }
                    | MessageBody::VoteRequest { .. }
                    | MessageBody::PreVoteRequest { .. }
            );
            assert!(!voted, "node {id} is rejoining after data loss but sent {:?}", message.body);
        }
    }
}

fn deliver(c: &mut Cluster, to: NodeId, msg: tarn_core::Message) {
    if c.cut.contains(&(msg.from, to)) || !c.nodes.get(&to).is_some_and(|n| n.up) {
        return;
    }
    c.step(to, Input::Message(msg));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_is_what_parse_decodes() {
        let ops = vec![
            Op::Deliver { pick: 3 },
            Op::DeliverAll,
            Op::Transfer { node: 1, to: 2 },
            Op::Heal,
            Op::ChangeMembership { node: 0, change: 1, target: 3 },
            Op::Snapshot { node: 2 },
            Op::Wipe { node: 255 },
            Op::Tick { node: 0 },
        ];
        let input = ClusterInput { seed: 9, five_nodes: true, ops };
        assert_eq!(parse(&encode(&input)), Some(input));
    }
}
