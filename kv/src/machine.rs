//! `KvStateMachine`: applies committed requests to the tree, deterministically.
//!
//! Determinism contract: the replicated state after applying the same entries (index, leader
//! time, requests) is identical on every node, byte for byte (`digest()` proves it). Nothing
//! here reads a clock; time arrives in `KvEntry::leader_time_nanos` and is clamped to never go
//! back (`time_nanos()`), so stamps and session expiry are monotonic even across leaders.
//! The TTL tracker and the watch hub sit beside the replicated state: they are local (see
//! `ttl.rs` and `watch.rs`).

use std::sync::Arc;

use bytes::Bytes;

use tarn_core::{Index, Nanos};

use crate::command::ClientId;
use crate::command::{decode_entry, Command, KvEntry, Request, SYSTEM_CLIENT_ID};
use crate::config::KvConfig;
use crate::error::{DecodeError, KvError};
use crate::key::{parent_key, validate_key, validate_key_or_root, validate_value};
use crate::response::{ChildView, NodeKind, NodeView, Reply, Response, TempInfo};
use crate::session::{Admission, Sessions};
use crate::tree::{Body, NodeId, Stamps, Tree};
use crate::ttl::TtlTracker;
use crate::watch::{EventKind, WatchError, WatchEvent, WatchHub, WatchId, WatchPoll};

/// The DtKV state machine of one Raft group.
///
/// ```
/// use bytes::Bytes;
/// use tarn_kv::{Command, KvConfig, KvStateMachine, Reply, Request};
///
/// let mut kv = KvStateMachine::new(KvConfig::default());
/// let put = Request { client_id: 7, seq: 1, first_unacked_seq: 1,
///     command: Command::Put { key: "greeting".into(), value: Bytes::from_static(b"hi") } };
/// assert_eq!(kv.apply(1, 1_000, &put), Ok(Reply::Done));
/// // A retry of the same (client, seq) returns the first result and applies nothing.
/// assert_eq!(kv.apply(2, 2_000, &put), Ok(Reply::Done));
/// let node = kv.get("greeting").unwrap().unwrap();
/// assert_eq!((node.value, node.update_index), (Bytes::from_static(b"hi"), 1));
/// ```
#[derive(Debug)]
pub struct KvStateMachine {
    pub(crate) config: KvConfig,
    pub(crate) tree: Tree,
    pub(crate) sessions: Sessions,
    pub(crate) applied_index: Index,
    pub(crate) time_nanos: Nanos,
    pub(crate) next_arm_id: u64,
    pub(crate) ttl: TtlTracker,
    pub(crate) watch: WatchHub,
}

/// Where and when a command is applied, and for whom.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ctx {
    pub index: Index,
    pub time_nanos: Nanos,
    pub client: ClientId,
}

/// Who may re-arm a temporary node's TTL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Renewer {
    /// Only its owner (`UpdateTtl`).
    Owner,
    /// Any client (`RenewTtl`): the value and the owner stay as they are.
    Anyone,
}

impl KvStateMachine {
    /// An empty tree (just the root directory) at index 0.
    ///
    /// Panics if `config` does not validate: a group cannot run with impossible bounds, and
    /// every node must refuse the same configuration.
    pub fn new(config: KvConfig) -> Self {
        if let Err(problem) = config.validate() {
            panic!("invalid KvConfig: {problem}");
        }
        KvStateMachine {
            config,
            tree: Tree::new(),
            sessions: Sessions::default(),
            applied_index: 0,
            time_nanos: 0,
            next_arm_id: 1,
            ttl: TtlTracker::default(),
            watch: WatchHub::new(0),
        }
    }

    pub fn config(&self) -> &KvConfig {
        &self.config
    }

    /// The index of the last applied entry.
    pub fn applied_index(&self) -> Index {
        self.applied_index
    }

    /// Replicated time: the largest leader time applied so far.
    pub fn time_nanos(&self) -> Nanos {
        self.time_nanos
    }

    /// Nodes in the tree, not counting the root.
    pub fn node_count(&self) -> usize {
        self.tree.len() - 1
    }

    /// Checks internal structure (O(n); for tests and debugging). Panics on corruption.
    pub fn check_invariants(&self) {
        self.tree.check_invariants();
        let mut armed = 0;
        self.tree.for_each_unordered(|node| {
            armed += usize::from(node.temp.is_some());
            if let Body::Lock(waiters) = &node.body {
                armed += waiters.len();
                assert!(node.temp.is_some(), "lock {:?} without holder", node.key);
            }
        });
        assert_eq!(armed, self.ttl.len(), "TTL tracker out of sync with the tree");
    }

    /// Live client sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.map.len()
    }

    /// Marks an entry without kv payload (blank, membership) as applied.
    pub fn advance_to(&mut self, index: Index) {
        assert!(index >= self.applied_index, "applied index went back: {} -> {index}", self.applied_index);
        self.applied_index = index;
    }

    /// Applies a decoded entry: every request in order, all at `index`.
    pub fn apply_entry(&mut self, index: Index, entry: &KvEntry) -> Vec<Response> {
        self.advance_to(index);
        entry.requests.iter().map(|request| self.apply(index, entry.leader_time_nanos, request)).collect()
    }

    /// Decodes and applies an entry payload. A payload that does not decode is skipped on
    /// every node alike (the index still advances) and the error is returned.
    pub fn apply_entry_bytes(&mut self, index: Index, payload: &[u8]) -> Result<Vec<Response>, DecodeError> {
        match decode_entry(payload) {
            Ok(entry) => Ok(self.apply_entry(index, &entry)),
            Err(error) => {
                self.advance_to(index);
                Err(error)
            }
        }
    }

    /// Applies one request committed at `index`, proposed when the leader's clock read
    /// `leader_time_nanos`. Several requests may share an index (one entry, many requests).
    pub fn apply(&mut self, index: Index, leader_time_nanos: Nanos, request: &Request) -> Response {
        self.advance_to(index);
        self.time_nanos = self.time_nanos.max(leader_time_nanos);
        self.sessions.sweep(self.time_nanos, &self.config);
        let ctx = Ctx { index, time_nanos: self.time_nanos, client: request.client_id };
        if request.command.is_read_only() {
            return self.read(&request.command);
        }
        if request.client_id == SYSTEM_CLIENT_ID {
            return match &request.command {
                Command::Expire { key, arm_id } => Ok(Reply::Expired(self.expire(ctx, key, *arm_id))),
                Command::KeepAlive => Ok(Reply::Done),
                // A server writing its own namespace (the peer directory): no session.
                command if command.is_system_write() => self.execute(ctx, command),
                _ => Err(KvError::ReservedClientId),
            };
        }
        if let Command::Expire { .. } = request.command {
            return Err(KvError::SystemOnly { command: "expire".to_owned() });
        }
        match self.sessions.admit(request, self.time_nanos, &self.config) {
            Admission::Apply => {}
            Admission::Duplicate(response) => return response,
            Admission::Refuse(error) => return Err(error),
        }
        let response = self.execute(ctx, &request.command);
        self.sessions.record(request.client_id, request.seq, response.clone(), &self.config);
        response
    }

    fn read(&self, command: &Command) -> Response {
        match command {
            Command::Get { key } => self.get(key).map(Reply::Node),
            Command::BatchGet { keys } => self.batch_get(keys).map(Reply::Nodes),
            Command::List { key, limit, after } => self
                .list_page(key, *limit, after.as_deref())
                .map(|(children, more)| Reply::Children { children, more }),
            _ => unreachable!("read() is only called for read-only commands"),
        }
    }

    fn execute(&mut self, ctx: Ctx, command: &Command) -> Response {
        match command {
            Command::Get { .. } | Command::BatchGet { .. } | Command::List { .. } => self.read(command),
            Command::Put { key, value } => self.put(ctx, key, value).map(|()| Reply::Done),
            Command::Remove { key } => self.remove(ctx, key).map(|()| Reply::Done),
            Command::Mkdir { key } => self.mkdir(ctx, key).map(|()| Reply::Done),
            Command::BatchPut { items } => {
                self.check_batch(items.len())?;
                Ok(Reply::Batch(items.iter().map(|(key, value)| self.put(ctx, key, value)).collect()))
            }
            Command::BatchRemove { keys } => {
                self.check_batch(keys.len())?;
                Ok(Reply::Batch(keys.iter().map(|key| self.remove(ctx, key)).collect()))
            }
            Command::CompareAndSet { key, expected, new } => {
                self.compare_and_set(ctx, key, expected.as_ref(), new.as_ref()).map(|()| Reply::Done)
            }
            Command::PutTemp { key, value, ttl_nanos } => {
                self.put_temp(ctx, key, value, *ttl_nanos).map(|()| Reply::Done)
            }
            Command::MkdirTemp { key, ttl_nanos } => {
                self.mkdir_temp(ctx, key, *ttl_nanos).map(|()| Reply::Done)
            }
            Command::UpdateTtl { key, ttl_nanos } => {
                self.update_ttl(ctx, key, *ttl_nanos, Renewer::Owner).map(|()| Reply::Done)
            }
            Command::RenewTtl { key, ttl_nanos } => {
                self.update_ttl(ctx, key, *ttl_nanos, Renewer::Anyone).map(|()| Reply::Done)
            }
            Command::TryLock { key, lease_nanos, wait_nanos } => {
                self.try_lock(ctx, key, *lease_nanos, *wait_nanos).map(Reply::Lock)
            }
            Command::Unlock { key } => self.unlock(ctx, key).map(|()| Reply::Done),
            Command::UpdateLease { key, lease_nanos } => {
                self.update_lease(ctx, key, *lease_nanos).map(|()| Reply::Done)
            }
            Command::Expire { .. } => Err(KvError::SystemOnly { command: "expire".to_owned() }),
            Command::KeepAlive => Ok(Reply::Done),
        }
    }

    fn check_batch(&self, count: usize) -> Result<(), KvError> {
        if count > self.config.max_batch_items {
            return Err(KvError::TooManyItems { count, max: self.config.max_batch_items });
        }
        Ok(())
    }

    pub(crate) fn check_ttl(&self, key: &str, ttl_nanos: Nanos) -> Result<(), KvError> {
        if ttl_nanos < self.config.min_ttl_nanos || ttl_nanos > self.config.max_ttl_nanos {
            return Err(KvError::InvalidTtl {
                key: key.to_owned(),
                ttl_nanos,
                min_nanos: self.config.min_ttl_nanos,
                max_nanos: self.config.max_ttl_nanos,
            });
        }
        Ok(())
    }

    // ----- reads -------------------------------------------------------------------------

    /// The node at `key` (`""` = the root), or `None` when it does not exist.
    pub fn get(&self, key: &str) -> Result<Option<NodeView>, KvError> {
        validate_key_or_root(key, &self.config)?;
        Ok(self.tree.get(key).map(|node| node.view()))
    }

    /// Many gets at once; the whole batch fails only when it is too large.
    pub fn batch_get(&self, keys: &[String]) -> Result<Vec<Result<Option<NodeView>, KvError>>, KvError> {
        self.check_batch(keys.len())?;
        Ok(keys.iter().map(|key| self.get(key)).collect())
    }

    /// The direct children of the directory at `key`, in key order.
    pub fn list(&self, key: &str) -> Result<Vec<ChildView>, KvError> {
        self.list_page(key, None, None).map(|(children, _)| children)
    }

    /// A page of [`Self::list`]: the children whose name sorts after `after`, at most `limit`
    /// of them, and whether more remain after the last one returned.
    pub fn list_page(
        &self,
        key: &str,
        limit: Option<u32>,
        after: Option<&str>,
    ) -> Result<(Vec<ChildView>, bool), KvError> {
        validate_key_or_root(key, &self.config)?;
        let id = self.tree.lookup(key).ok_or_else(|| KvError::NotFound { key: key.to_owned() })?;
        if self.tree.node(id).children().is_none() {
            return Err(KvError::NotADir { key: key.to_owned() });
        }
        let skip = if key.is_empty() { 0 } else { key.len() + 1 };
        let limit = limit.map_or(usize::MAX, |l| l as usize);
        let mut page = self
            .tree
            .sorted_children(id)
            .into_iter()
            .map(|child| self.tree.node(child))
            .filter(|child| after.is_none_or(|after| &child.key[skip..] > after))
            .take(limit.saturating_add(1))
            .map(|child| ChildView { name: child.key[skip..].to_owned(), node: child.view() })
            .collect::<Vec<_>>();
        let more = page.len() > limit;
        page.truncate(limit);
        Ok((page, more))
    }

    // ----- plain writes ------------------------------------------------------------------

    /// Finds the directory that will hold a new node at `key`.
    pub(crate) fn parent_dir_for_new(&self, key: &str) -> Result<NodeId, KvError> {
        let parent = parent_key(key);
        let id = self.tree.lookup(parent).ok_or_else(|| KvError::ParentMissing { key: key.to_owned() })?;
        if self.tree.node(id).children().is_none() {
            return Err(KvError::NotADir { key: parent.to_owned() });
        }
        Ok(id)
    }

    pub(crate) fn check_owner(
        &self,
        key: &str,
        temp: Option<TempInfo>,
        client: ClientId,
    ) -> Result<(), KvError> {
        match temp {
            Some(temp) if temp.owner != client => {
                Err(KvError::NotOwner { key: key.to_owned(), owner: temp.owner })
            }
            _ => Ok(()),
        }
    }

    pub(crate) fn emit(&mut self, index: Index, key: Arc<str>, kind: EventKind) {
        self.watch.emit(WatchEvent { index, key, kind }, &self.config);
    }

    /// Inserts a new node under `parent`, stamps it and its ancestors, and emits its event.
    pub(crate) fn create(
        &mut self,
        ctx: Ctx,
        parent: NodeId,
        key: &str,
        body: Body,
        temp: Option<TempInfo>,
    ) -> NodeId {
        let key: Arc<str> = Arc::from(key);
        let event = match &body {
            Body::Value(value) => EventKind::Put { value: value.clone() },
            Body::Dir(_) => EventKind::DirCreated,
            Body::Lock(_) => EventKind::LockHolder { holder: temp.map_or(SYSTEM_CLIENT_ID, |t| t.owner) },
        };
        let id = self.tree.insert(parent, key.clone(), body, Stamps::new(ctx.index, ctx.time_nanos), temp);
        self.tree.touch_up(parent, ctx.index, ctx.time_nanos);
        self.emit(ctx.index, key, event);
        id
    }

    /// Replaces the value of an existing value node, stamps it and its ancestors.
    fn overwrite(&mut self, ctx: Ctx, id: NodeId, value: &Bytes) {
        let node = self.tree.node_mut(id);
        node.body = Body::Value(value.clone());
        let key = node.key.clone();
        self.tree.touch_up(id, ctx.index, ctx.time_nanos);
        self.emit(ctx.index, key, EventKind::Put { value: value.clone() });
    }

    /// Removes a whole subtree (children first), disarming its TTLs; stamps the ancestors.
    pub(crate) fn remove_subtree(&mut self, ctx: Ctx, id: NodeId) {
        let parent = self.tree.node(id).parent;
        if self.tree.node(id).children().is_none_or(|children| children.is_empty()) {
            // The common case, a leaf: no traversal, no allocation.
            self.remove_one(ctx, id);
        } else {
            for victim in self.tree.subtree_post_order(id) {
                self.remove_one(ctx, victim);
            }
        }
        self.tree.touch_up(parent, ctx.index, ctx.time_nanos);
    }

    /// Removes a node without children, disarming its TTLs and emitting its event.
    fn remove_one(&mut self, ctx: Ctx, id: NodeId) {
        let node = self.tree.remove_leaf(id);
        if let Some(temp) = node.temp {
            self.ttl.disarm(temp.arm_id);
        }
        if let Body::Lock(waiters) = &node.body {
            for waiter in waiters {
                self.ttl.disarm(waiter.arm_id);
            }
        }
        self.emit(ctx.index, node.key, EventKind::Removed);
    }

    pub(crate) fn arm(&mut self, key: &Arc<str>, duration_nanos: Nanos) -> u64 {
        let arm_id = self.next_arm_id;
        self.next_arm_id += 1;
        #[cfg(feature = "planted-bugs")]
        if self.config.planted_bug == Some(tarn_core::PlantedBug::TtlDeadlineFromProposerClock) {
            let deadline = self.time_nanos.saturating_add(duration_nanos);
            self.ttl.arm_with_deadline(arm_id, key.clone(), duration_nanos, deadline);
            return arm_id;
        }
        self.ttl.arm(arm_id, key.clone(), duration_nanos);
        arm_id
    }

    /// Replaces the TTL arming of node `id` (which must be temporary).
    pub(crate) fn rearm_node(&mut self, id: NodeId, ttl_nanos: Nanos) {
        let node = self.tree.node(id);
        let key = node.key.clone();
        let mut temp = node.temp.expect("rearm of a temporary node");
        self.ttl.disarm(temp.arm_id);
        temp.arm_id = self.arm(&key, ttl_nanos);
        temp.ttl_nanos = ttl_nanos;
        self.tree.node_mut(id).temp = Some(temp);
    }

    fn put(&mut self, ctx: Ctx, key: &str, value: &Bytes) -> Result<(), KvError> {
        validate_key(key, &self.config)?;
        validate_value(key, value, &self.config)?;
        match self.tree.lookup(key) {
            Some(id) => {
                let node = self.tree.node(id);
                match node.kind() {
                    NodeKind::Dir => return Err(KvError::IsADir { key: key.to_owned() }),
                    NodeKind::Lock => return Err(KvError::IsALock { key: key.to_owned() }),
                    NodeKind::Value => {}
                }
                self.check_owner(key, node.temp, ctx.client)?;
                self.overwrite(ctx, id, value);
            }
            None => {
                let parent = self.parent_dir_for_new(key)?;
                self.create(ctx, parent, key, Body::Value(value.clone()), None);
            }
        }
        Ok(())
    }

    fn remove(&mut self, ctx: Ctx, key: &str) -> Result<(), KvError> {
        validate_key(key, &self.config)?;
        let Some(id) = self.tree.lookup(key) else { return Ok(()) };
        let node = self.tree.node(id);
        match &node.body {
            Body::Dir(children) if !children.is_empty() => {
                return Err(KvError::DirNotEmpty { key: key.to_owned() })
            }
            Body::Lock(_) => return Err(KvError::IsALock { key: key.to_owned() }),
            _ => {}
        }
        self.check_owner(key, node.temp, ctx.client)?;
        self.remove_subtree(ctx, id);
        Ok(())
    }

    fn mkdir(&mut self, ctx: Ctx, key: &str) -> Result<(), KvError> {
        validate_key(key, &self.config)?;
        match self.tree.get(key) {
            Some(node) if node.kind() == NodeKind::Dir => Ok(()),
            Some(_) => Err(KvError::NotADir { key: key.to_owned() }),
            None => {
                let parent = self.parent_dir_for_new(key)?;
                self.create(ctx, parent, key, Body::Dir(Default::default()), None);
                Ok(())
            }
        }
    }

    fn compare_and_set(
        &mut self,
        ctx: Ctx,
        key: &str,
        expected: Option<&Bytes>,
        new: Option<&Bytes>,
    ) -> Result<(), KvError> {
        validate_key(key, &self.config)?;
        if expected.is_none() && new.is_none() {
            return Err(KvError::CasBothAbsent { key: key.to_owned() });
        }
        if let Some(new) = new {
            validate_value(key, new, &self.config)?;
        }
        let mismatch = || KvError::CasMismatch { key: key.to_owned() };
        match self.tree.lookup(key) {
            None => {
                let (None, Some(new)) = (expected, new) else { return Err(mismatch()) };
                let parent = self.parent_dir_for_new(key)?;
                self.create(ctx, parent, key, Body::Value(new.clone()), None);
            }
            Some(id) => {
                let node = self.tree.node(id);
                let current = match &node.body {
                    Body::Dir(_) => return Err(KvError::IsADir { key: key.to_owned() }),
                    Body::Lock(_) => return Err(KvError::IsALock { key: key.to_owned() }),
                    Body::Value(current) => current,
                };
                self.check_owner(key, node.temp, ctx.client)?;
                if expected != Some(current) {
                    return Err(mismatch());
                }
                match new {
                    Some(new) => self.overwrite(ctx, id, new),
                    None => self.remove_subtree(ctx, id),
                }
            }
        }
        Ok(())
    }

    // ----- temporary nodes -----------------------------------------------------------------

    fn put_temp(&mut self, ctx: Ctx, key: &str, value: &Bytes, ttl_nanos: Nanos) -> Result<(), KvError> {
        validate_key(key, &self.config)?;
        validate_value(key, value, &self.config)?;
        self.check_ttl(key, ttl_nanos)?;
        match self.tree.lookup(key) {
            Some(id) => {
                let node = self.tree.node(id);
                match node.kind() {
                    NodeKind::Dir => return Err(KvError::IsADir { key: key.to_owned() }),
                    NodeKind::Lock => return Err(KvError::IsALock { key: key.to_owned() }),
                    NodeKind::Value => {}
                }
                if node.temp.is_none() {
                    return Err(KvError::NotTemporaryConflict { key: key.to_owned() });
                }
                self.check_owner(key, node.temp, ctx.client)?;
                self.rearm_node(id, ttl_nanos);
                self.overwrite(ctx, id, value);
            }
            None => {
                let parent = self.parent_dir_for_new(key)?;
                let arc_key: Arc<str> = Arc::from(key);
                let arm_id = self.arm(&arc_key, ttl_nanos);
                let temp = TempInfo { owner: ctx.client, ttl_nanos, arm_id };
                self.create(ctx, parent, key, Body::Value(value.clone()), Some(temp));
            }
        }
        Ok(())
    }

    fn mkdir_temp(&mut self, ctx: Ctx, key: &str, ttl_nanos: Nanos) -> Result<(), KvError> {
        validate_key(key, &self.config)?;
        self.check_ttl(key, ttl_nanos)?;
        match self.tree.lookup(key) {
            Some(id) => {
                let node = self.tree.node(id);
                if node.kind() != NodeKind::Dir {
                    return Err(KvError::NotADir { key: key.to_owned() });
                }
                if node.temp.is_none() {
                    return Err(KvError::NotTemporaryConflict { key: key.to_owned() });
                }
                self.check_owner(key, node.temp, ctx.client)?;
                self.rearm_node(id, ttl_nanos);
            }
            None => {
                let parent = self.parent_dir_for_new(key)?;
                let arc_key: Arc<str> = Arc::from(key);
                let arm_id = self.arm(&arc_key, ttl_nanos);
                let temp = TempInfo { owner: ctx.client, ttl_nanos, arm_id };
                self.create(ctx, parent, key, Body::Dir(Default::default()), Some(temp));
            }
        }
        Ok(())
    }

    fn update_ttl(&mut self, ctx: Ctx, key: &str, ttl_nanos: Nanos, renewer: Renewer) -> Result<(), KvError> {
        validate_key(key, &self.config)?;
        self.check_ttl(key, ttl_nanos)?;
        let id = self.tree.lookup(key).ok_or_else(|| KvError::NotFound { key: key.to_owned() })?;
        let node = self.tree.node(id);
        if node.kind() == NodeKind::Lock {
            return Err(KvError::IsALock { key: key.to_owned() });
        }
        if node.temp.is_none() {
            return Err(KvError::NotTemporary { key: key.to_owned() });
        }
        if renewer == Renewer::Owner {
            self.check_owner(key, node.temp, ctx.client)?;
        }
        self.rearm_node(id, ttl_nanos);
        Ok(())
    }

    /// Applies a leader's expiry: only if `arm_id` is still the arming at `key`.
    fn expire(&mut self, ctx: Ctx, key: &str, arm_id: u64) -> bool {
        if validate_key(key, &self.config).is_err() {
            return false;
        }
        let Some(id) = self.tree.lookup(key) else { return false };
        let node = self.tree.node(id);
        if node.temp.is_some_and(|temp| temp.arm_id == arm_id) {
            if node.kind() == NodeKind::Lock {
                self.release_lock(ctx, id);
            } else {
                self.remove_subtree(ctx, id);
            }
            return true;
        }
        self.expire_waiter(id, arm_id)
    }

    // ----- TTL deadlines (leader-local) ----------------------------------------------------

    /// Expiry requests to propose: armings whose deadline passed by the leader's clock `now`,
    /// at most `max`. Each is offered again after `expire_retry_nanos` until applied, so a
    /// proposal lost to a leader change is not forgotten. Call only on the leader.
    pub fn expired(&mut self, now: Nanos, max: usize) -> Vec<Request> {
        self.ttl
            .expired(now, max, self.config.expire_retry_nanos)
            .into_iter()
            .map(|(key, arm_id)| Request::system(Command::Expire { key: key.to_string(), arm_id }))
            .collect()
    }

    /// Armed TTL deadlines (temporary nodes, lock holders and waiters): while
    /// there are any, a leader must keep looking at its clock for expiries.
    pub fn ttl_armed(&self) -> usize {
        self.ttl.len()
    }

    /// The leader's expiry proposal at `now` (its local clock): up to `max` expired armings
    /// as one encoded [`KvEntry`] nobody waits for, and how many; `None` if none expired.
    pub fn expiry_entry(&mut self, now: Nanos, max: usize) -> Option<(Vec<u8>, usize)> {
        let requests = self.expired(now, max);
        if requests.is_empty() {
            return None;
        }
        let count = requests.len();
        Some((
            crate::command::encode_entry(&crate::command::KvEntry { leader_time_nanos: now, requests }),
            count,
        ))
    }

    /// The earliest TTL deadline by the local clock (`now` starts the deadlines of armings
    /// applied since the last call), for the leader's timer.
    pub fn next_ttl_deadline(&mut self, now: Nanos) -> Option<Nanos> {
        self.ttl.next_deadline(now)
    }

    /// Restarts every TTL deadline at `now + ttl`. Call when this node becomes leader: its
    /// clock shares no origin with the previous leader's, and a deadline must never shrink.
    pub fn rearm_ttls(&mut self, now: Nanos) {
        #[cfg(feature = "planted-bugs")]
        if self.config.planted_bug == Some(tarn_core::PlantedBug::TtlDeadlineFromProposerClock) {
            return;
        }
        self.ttl.rearm_all(now);
    }

    /// Armed TTLs, lock leases and lock waits.
    pub fn ttl_count(&self) -> usize {
        self.ttl.len()
    }

    // ----- watches (local) -------------------------------------------------------------------

    /// Watches `key` (`""` = everything) or, with `subtree`, its whole subtree. Events with an
    /// index above `after_index` are delivered (`None` = from the current applied index on).
    pub fn watch(
        &mut self,
        key: &str,
        subtree: bool,
        after_index: Option<Index>,
    ) -> Result<WatchId, WatchRegisterError> {
        validate_key_or_root(key, &self.config).map_err(WatchRegisterError::Key)?;
        self.watch
            .register(key, subtree, after_index, self.applied_index, &self.config)
            .map_err(WatchRegisterError::Watch)
    }

    /// Removes a watcher; false if unknown.
    pub fn unwatch(&mut self, id: WatchId) -> bool {
        self.watch.unregister(id)
    }

    /// Takes pending events of a watcher (about `max_events`, whole indexes).
    pub fn poll_watch(&mut self, id: WatchId, max_events: usize) -> WatchPoll {
        self.watch.poll(id, max_events, &self.config)
    }

    /// Watchers with events or a cut-off to deliver, in id order.
    pub fn ready_watches(&self) -> Vec<WatchId> {
        self.watch.ready().collect()
    }

    /// Events with an index above this are all still in the local history.
    pub fn watch_history_floor(&self) -> Index {
        self.watch.history_floor()
    }

    /// Events kept in the local watch history.
    pub fn watch_history_len(&self) -> usize {
        self.watch.history_len()
    }

    pub fn watcher_count(&self) -> usize {
        self.watch.watcher_count()
    }

    // ----- snapshots ---------------------------------------------------------------------

    /// A copy of the replicated state (tree, sessions, counters) without the local parts (no
    /// watchers, no history, TTLs pending). The tree is copied on write (see `tree`), so this
    /// costs O(chunks + armed TTLs + sessions), not a pass over the nodes: the server forks on
    /// the group's task, then encodes the fork's snapshot on another thread while this state
    /// keeps applying. The fork's digest equals this state's.
    pub fn fork(&self) -> KvStateMachine {
        let fork = KvStateMachine {
            config: self.config.clone(),
            tree: self.tree.clone(),
            sessions: self.sessions.clone(),
            applied_index: self.applied_index,
            time_nanos: self.time_nanos,
            next_arm_id: self.next_arm_id,
            ttl: self.ttl.pending_copy(),
            watch: WatchHub::new(self.applied_index),
        };
        debug_assert_eq!(fork.ttl.len(), self.ttl.len());
        fork
    }

    /// Replaces this state with one decoded from a snapshot. Local parts follow: every TTL
    /// restarts from the next clock reading, every watcher is cut off (the events between the
    /// old state and the snapshot are not known here).
    pub fn install(&mut self, decoded: KvStateMachine) {
        let snapshot_index = decoded.applied_index;
        let mut watch = std::mem::take(&mut self.watch);
        *self = decoded;
        watch.reset_for_snapshot(snapshot_index);
        self.watch = watch;
    }

    /// Rebuilds the leader-local TTL tracker from the replicated state (after a decode).
    pub(crate) fn rebuild_ttl(&mut self) {
        self.ttl.clear();
        let mut armings = Vec::new();
        // Any order will do: the armings are sorted by id below.
        self.tree.for_each_unordered(|node| {
            if let Some(temp) = node.temp {
                armings.push((temp.arm_id, node.key.clone(), temp.ttl_nanos));
            }
            if let Body::Lock(waiters) = &node.body {
                for waiter in waiters {
                    armings.push((waiter.arm_id, node.key.clone(), waiter.wait_nanos));
                }
            }
        });
        armings.sort_unstable_by_key(|(arm_id, _, _)| *arm_id);
        for (arm_id, key, duration) in armings {
            self.ttl.arm(arm_id, key, duration);
        }
    }
}

/// Why `KvStateMachine::watch` refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WatchRegisterError {
    #[error(transparent)]
    Key(KvError),
    #[error(transparent)]
    Watch(WatchError),
}
