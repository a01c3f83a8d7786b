//! The node tree: an arena of nodes, a hash index from full key to node, and ordered child
//! maps for listing.
//!
//! Cost model: `get`/`put` on an existing key is one hash lookup plus a walk up the parent
//! chain (depth) to bump ancestors' update index; a new key adds one `Arc<str>` allocation
//! (shared by the index and watch events, never copied again).
//!
//! A directory keeps its children as an unordered `Vec<NodeId>`, and each node knows its slot
//! in it, so adding and removing a child is O(1) with no key comparison. An ordered child map
//! (BTreeMap) was measured first: with a million keys every comparison chased an `Arc<str>`
//! to a cold cache line and inserts ran 3-4x slower. Order is needed only by list, snapshot,
//! digest and subtree removal, which sort a directory's children by key when they visit it
//! (`sorted_children`); keys are unique, so the order is total and deterministic.
//!
//! The hash index is only ever probed, never iterated, so its random iteration order cannot
//! leak into replicated behaviour.
//!
//! Forking is O(chunks), not O(nodes): the arena is a vector of shared chunks of
//! [`CHUNK_NODES`] slots and the index a vector of [`INDEX_SHARDS`] shared hash maps, each
//! behind an `Arc` and copied on its first write after a fork (`Arc::make_mut`). A snapshot
//! forks the state on the group's task and encodes the fork elsewhere; a full copy there
//! stopped apply for 550 ms at a million keys (the kv bench's `fork` row), the copy on write
//! spreads that cost over the writes that follow, one chunk or shard at a time.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use tarn_core::{Index, Nanos};

use crate::command::ClientId;
use crate::response::{NodeKind, NodeView, TempInfo};

/// Position of a node in the arena.
pub(crate) type NodeId = u32;

/// The root directory (key `""`) always lives in slot 0 and is never removed.
pub(crate) const ROOT: NodeId = 0;

/// Create and update stamps of a node: the Raft index and the leader's time of the write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Stamps {
    pub create_index: Index,
    pub create_time_nanos: Nanos,
    pub update_index: Index,
    pub update_time_nanos: Nanos,
}

impl Stamps {
    pub fn new(index: Index, time_nanos: Nanos) -> Self {
        Stamps {
            create_index: index,
            create_time_nanos: time_nanos,
            update_index: index,
            update_time_nanos: time_nanos,
        }
    }

    pub fn touch(&mut self, index: Index, time_nanos: Nanos) {
        debug_assert!(index >= self.update_index, "update index went back");
        self.update_index = index;
        self.update_time_nanos = time_nanos;
    }
}

/// A client waiting for a lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Waiter {
    pub client: ClientId,
    /// The lease the waiter gets once it holds the lock.
    pub lease_nanos: Nanos,
    /// How long it waits before giving up.
    pub wait_nanos: Nanos,
    /// The arming of its wait timeout.
    pub arm_id: u64,
}

/// What a node holds.
#[derive(Clone, Debug)]
pub(crate) enum Body {
    Value(Bytes),
    /// Children in no particular order (see the module comment). Shared between forks like
    /// the chunks: stamping a directory (every write below it) copies its chunk but not its
    /// children; only adding or removing a child copies them, once per fork.
    Dir(Arc<Vec<NodeId>>),
    /// The holder is the node's `temp.owner`; waiters queue in FIFO order.
    Lock(VecDeque<Waiter>),
}

#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub key: Arc<str>,
    pub parent: NodeId,
    /// Position of this node in its parent's child vector.
    pub slot_in_parent: u32,
    pub body: Body,
    pub stamps: Stamps,
    /// Owner and TTL of a temporary node; holder and lease of a lock (always `Some` there).
    pub temp: Option<TempInfo>,
}

impl Node {
    pub fn kind(&self) -> NodeKind {
        match self.body {
            Body::Value(_) => NodeKind::Value,
            Body::Dir(_) => NodeKind::Dir,
            Body::Lock(_) => NodeKind::Lock,
        }
    }

    pub fn view(&self) -> NodeView {
        let (value, lock_waiters) = match &self.body {
            Body::Value(value) => (value.clone(), Vec::new()),
            Body::Dir(_) => (Bytes::new(), Vec::new()),
            Body::Lock(waiters) => (Bytes::new(), waiters.iter().map(|w| w.client).collect()),
        };
        NodeView {
            kind: self.kind(),
            value,
            create_index: self.stamps.create_index,
            create_time_nanos: self.stamps.create_time_nanos,
            update_index: self.stamps.update_index,
            update_time_nanos: self.stamps.update_time_nanos,
            temp: self.temp,
            lock_waiters,
        }
    }

    pub fn children(&self) -> Option<&Vec<NodeId>> {
        match &self.body {
            Body::Dir(children) => Some(children),
            _ => None,
        }
    }
}

/// Slots per arena chunk: the unit copied by the first write into it after a fork.
pub(crate) const CHUNK_NODES: usize = 1024;
/// Shards of the key index: one is copied by the first write into it after a fork.
pub(crate) const INDEX_SHARDS: usize = 256;
/// Initial capacity of the arena's first chunk (it doubles up to `CHUNK_NODES`).
const FIRST_CHUNK_NODES: usize = 8;

/// The node arena: slots in shared chunks, copied on write.
#[derive(Clone, Debug, Default)]
struct Arena {
    chunks: Vec<Arc<Vec<Option<Node>>>>,
    len: usize,
}

impl Arena {
    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, id: NodeId) -> &Option<Node> {
        let i = id as usize;
        &self.chunks[i / CHUNK_NODES][i % CHUNK_NODES]
    }

    fn get_mut(&mut self, id: NodeId) -> &mut Option<Node> {
        let i = id as usize;
        &mut Arc::make_mut(&mut self.chunks[i / CHUNK_NODES])[i % CHUNK_NODES]
    }

    fn push(&mut self, slot: Option<Node>) {
        if self.len.is_multiple_of(CHUNK_NODES) {
            // The first chunk grows as needed: most trees of an idle group
            // hold a handful of nodes, and a full chunk is ~100 KiB (10,000
            // groups on three nodes in one process held 3 GiB of them).
            let capacity = if self.chunks.is_empty() { FIRST_CHUNK_NODES } else { CHUNK_NODES };
            self.chunks.push(Arc::new(Vec::with_capacity(capacity)));
        }
        let last = self.chunks.last_mut().expect("a chunk was just ensured");
        Arc::make_mut(last).push(slot);
        self.len += 1;
    }

    fn iter(&self) -> impl Iterator<Item = &Option<Node>> {
        self.chunks.iter().flat_map(|chunk| chunk.iter())
    }
}

/// Full key -> node id, sharded by a hash of the key; each shard copied on write.
#[derive(Clone, Debug)]
struct KeyIndex {
    shards: Vec<Arc<HashMap<Arc<str>, NodeId>>>,
    len: usize,
}

impl KeyIndex {
    fn new() -> Self {
        // Every shard starts as the same empty map: the first insert into a
        // shard copies it (copy on write, as after a fork), so an empty
        // index costs one map, not 256 (a tree is built per group, per
        // restart and per decode; many groups are nearly empty).
        let empty = Arc::new(HashMap::new());
        KeyIndex { shards: (0..INDEX_SHARDS).map(|_| empty.clone()).collect(), len: 0 }
    }

    /// A word-at-a-time multiplicative hash (FxHash's mixing step): a few nanoseconds per key,
    /// independent of the maps' own randomly keyed hasher. Keys chosen to collide only crowd
    /// one shard; inside it the map's SipHash still protects against flooding.
    fn shard(key: &str) -> usize {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut h = key.len() as u64;
        let mut words = key.as_bytes().chunks_exact(8);
        for w in &mut words {
            h = (h.rotate_left(5) ^ u64::from_le_bytes(w.try_into().expect("8 bytes"))).wrapping_mul(K);
        }
        let mut tail = [0u8; 8];
        tail[..words.remainder().len()].copy_from_slice(words.remainder());
        h = (h.rotate_left(5) ^ u64::from_le_bytes(tail)).wrapping_mul(K);
        (h >> 56) as usize % INDEX_SHARDS
    }

    fn get(&self, key: &str) -> Option<NodeId> {
        self.shards[Self::shard(key)].get(key).copied()
    }

    fn contains_key(&self, key: &str) -> bool {
        self.shards[Self::shard(key)].contains_key(key)
    }

    fn insert(&mut self, key: Arc<str>, id: NodeId) {
        let shard = Arc::make_mut(&mut self.shards[Self::shard(&key)]);
        if shard.insert(key, id).is_none() {
            self.len += 1;
        }
    }

    fn remove(&mut self, key: &str) -> Option<NodeId> {
        let removed = Arc::make_mut(&mut self.shards[Self::shard(key)]).remove(key);
        self.len -= usize::from(removed.is_some());
        removed
    }

    fn len(&self) -> usize {
        self.len
    }

    fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &NodeId)> {
        self.shards.iter().flat_map(|shard| shard.iter())
    }
}

/// The arena and its index. Cloning is cheap (see the module docs): a clone shares every
/// chunk and shard until one side writes to it.
#[derive(Clone, Debug)]
pub(crate) struct Tree {
    slots: Arena,
    free: Arc<Vec<NodeId>>,
    index: KeyIndex,
}

impl Tree {
    pub fn new() -> Self {
        let root_key: Arc<str> = Arc::from("");
        let root = Node {
            key: root_key.clone(),
            parent: ROOT,
            slot_in_parent: 0,
            body: Body::Dir(Arc::default()),
            stamps: Stamps::default(),
            temp: None,
        };
        let mut index = KeyIndex::new();
        index.insert(root_key, ROOT);
        let mut slots = Arena::default();
        slots.push(Some(root));
        Tree { slots, free: Arc::new(Vec::new()), index }
    }

    /// Nodes in the tree, the root included.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn lookup(&self, key: &str) -> Option<NodeId> {
        self.index.get(key)
    }

    pub fn node(&self, id: NodeId) -> &Node {
        // Ids come from the index or from child maps, which only hold live nodes.
        self.slots.get(id).as_ref().expect("node id refers to a live node")
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        self.slots.get_mut(id).as_mut().expect("node id refers to a live node")
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        self.lookup(key).map(|id| self.node(id))
    }

    /// Inserts a new child of directory `parent`. The key must be new and its parent key must
    /// be `parent`'s key.
    pub fn insert(
        &mut self,
        parent: NodeId,
        key: Arc<str>,
        body: Body,
        stamps: Stamps,
        temp: Option<TempInfo>,
    ) -> NodeId {
        debug_assert!(!self.index.contains_key(&key), "insert of an existing key {key:?}");
        debug_assert_eq!(crate::key::parent_key(&key), &*self.node(parent).key);
        let node = Node { key: key.clone(), parent, slot_in_parent: 0, body, stamps, temp };
        let id = match Arc::make_mut(&mut self.free).pop() {
            Some(id) => {
                debug_assert!(self.slots.get(id).is_none());
                *self.slots.get_mut(id) = Some(node);
                id
            }
            None => {
                let id = NodeId::try_from(self.slots.len()).expect("more than 2^32 nodes");
                self.slots.push(Some(node));
                id
            }
        };
        let slot = match &mut self.node_mut(parent).body {
            Body::Dir(children) => {
                let children = Arc::make_mut(children);
                children.push(id);
                u32::try_from(children.len() - 1).expect("fewer than 2^32 children")
            }
            _ => panic!("insert under a node that is not a directory"),
        };
        self.node_mut(id).slot_in_parent = slot;
        self.index.insert(key, id);
        id
    }

    /// Removes a node that has no children and returns it.
    pub fn remove_leaf(&mut self, id: NodeId) -> Node {
        assert_ne!(id, ROOT, "the root is never removed");
        let node = self.slots.get_mut(id).take().expect("remove of a live node");
        debug_assert!(node.children().is_none_or(|c| c.is_empty()), "remove_leaf of a non-empty dir");
        let moved = match &mut self.node_mut(node.parent).body {
            Body::Dir(children) => {
                let children = Arc::make_mut(children);
                let removed = children.swap_remove(node.slot_in_parent as usize);
                assert_eq!(removed, id, "child slot out of sync");
                children.get(node.slot_in_parent as usize).copied()
            }
            _ => panic!("parent of a node is not a directory"),
        };
        if let Some(moved) = moved {
            self.node_mut(moved).slot_in_parent = node.slot_in_parent;
        }
        let removed = self.index.remove(&node.key);
        debug_assert_eq!(removed, Some(id));
        Arc::make_mut(&mut self.free).push(id);
        node
    }

    /// The ids of `id`'s subtree in post-order (children before parents), so removing them
    /// in this order always removes leaves.
    pub fn subtree_post_order(&self, id: NodeId) -> Vec<NodeId> {
        let mut out = Vec::new();
        let mut stack = vec![(id, false)];
        while let Some((next, expanded)) = stack.pop() {
            if expanded {
                out.push(next);
                continue;
            }
            stack.push((next, true));
            // Reverse so the smallest child is expanded first: a deterministic order.
            for child in self.sorted_children(next).into_iter().rev() {
                stack.push((child, false));
            }
        }
        out
    }

    /// Bumps the update stamps of `id` and every ancestor up to the root.
    pub fn touch_up(&mut self, mut id: NodeId, index: Index, time_nanos: Nanos) {
        loop {
            let node = self.node_mut(id);
            node.stamps.touch(index, time_nanos);
            if id == ROOT {
                return;
            }
            id = node.parent;
        }
    }

    /// Visits every node in arena order: fast, but the order means nothing (use only where
    /// the result does not depend on it).
    pub fn for_each_unordered(&self, mut visit: impl FnMut(&Node)) {
        for node in self.slots.iter().flatten() {
            visit(node);
        }
    }

    /// Checks the structure end to end (tests and debugging; O(n)): every indexed node is
    /// live, sits in its parent's child vector at its recorded slot, under its parent key.
    pub fn check_invariants(&self) {
        let live = self.slots.iter().filter(|slot| slot.is_some()).count();
        assert_eq!(live, self.index.len(), "index and arena disagree");
        assert_eq!(self.index.iter().count(), self.index.len(), "index length out of sync");
        for (key, &id) in self.index.iter() {
            let node = self.node(id);
            assert_eq!(node.key, *key);
            if id == ROOT {
                continue;
            }
            let parent = self.node(node.parent);
            assert_eq!(&*parent.key, crate::key::parent_key(key), "parent of {key:?}");
            let children = parent.children().expect("parent is a directory");
            assert_eq!(children[node.slot_in_parent as usize], id, "slot of {key:?}");
        }
    }

    /// The children of `id` in key order (empty for a non-directory).
    pub fn sorted_children(&self, id: NodeId) -> Vec<NodeId> {
        let Some(children) = self.node(id).children() else { return Vec::new() };
        let mut sorted = children.clone();
        sorted.sort_unstable_by(|&a, &b| self.node(a).key.cmp(&self.node(b).key));
        sorted
    }
}
