//! A deliberately simple reference model of the DtKV state machine, for tests and fuzzing.
//!
//! Everything lives in one `BTreeMap` from full key to node; parents, children and subtrees
//! are found by scanning key prefixes. It is slow on purpose and shares no data structure
//! with the real tree, so a bug in the arena, the index, the child maps, the ancestor walk or
//! the snapshot code shows up as a difference. It does share the key rules (`key.rs`) and the
//! public types. Compile with the `testkit` feature to use it outside this crate (the fuzz
//! target `kv_apply` does).

use std::collections::BTreeMap;

use bytes::Bytes;

use tarn_core::{Index, Nanos};

use crate::command::{ClientId, Command, Request, SYSTEM_CLIENT_ID};
use crate::config::KvConfig;
use crate::error::KvError;
use crate::key::{
    is_in_subtree, last_segment, parent_key, validate_key, validate_key_or_root, validate_value,
};
use crate::machine::KvStateMachine;
use crate::response::{ChildView, LockOutcome, NodeKind, NodeView, Reply, Response, TempInfo};
use crate::watch::{EventKind, WatchEvent, WatchId, WatchPoll};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelNode {
    pub kind: NodeKind,
    pub value: Bytes,
    pub create: (Index, Nanos),
    pub update: (Index, Nanos),
    pub temp: Option<TempInfo>,
    /// (client, lease, wait, arm id), first in line first.
    pub waiters: Vec<(ClientId, Nanos, Nanos, u64)>,
}

impl ModelNode {
    fn view(&self) -> NodeView {
        NodeView {
            kind: self.kind,
            value: self.value.clone(),
            create_index: self.create.0,
            create_time_nanos: self.create.1,
            update_index: self.update.0,
            update_time_nanos: self.update.1,
            temp: self.temp,
            lock_waiters: self.waiters.iter().map(|w| w.0).collect(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelSession {
    pub last_active_nanos: Nanos,
    pub floor_seq: u64,
    pub responses: BTreeMap<u64, Response>,
}

/// The reference model. `nodes` holds every node but the root (`""`), whose stamps are
/// `root_update`.
#[derive(Clone, Debug)]
pub struct Model {
    pub config: KvConfig,
    pub nodes: BTreeMap<String, ModelNode>,
    pub root_update: (Index, Nanos),
    pub sessions: BTreeMap<ClientId, ModelSession>,
    pub last_sweep_nanos: Nanos,
    pub applied_index: Index,
    pub time_nanos: Nanos,
    pub next_arm_id: u64,
    /// Every event in order (the model keeps all of them).
    pub events: Vec<WatchEvent>,
}

#[derive(Clone, Copy)]
struct Ctx {
    index: Index,
    time: Nanos,
    client: ClientId,
}

impl Model {
    pub fn new(config: KvConfig) -> Self {
        Model {
            config,
            nodes: BTreeMap::new(),
            root_update: (0, 0),
            sessions: BTreeMap::new(),
            last_sweep_nanos: 0,
            applied_index: 0,
            time_nanos: 0,
            next_arm_id: 1,
            events: Vec::new(),
        }
    }

    pub fn get(&self, key: &str) -> Result<Option<NodeView>, KvError> {
        validate_key_or_root(key, &self.config)?;
        if key.is_empty() {
            return Ok(Some(self.root_view()));
        }
        Ok(self.nodes.get(key).map(ModelNode::view))
    }

    fn root_view(&self) -> NodeView {
        NodeView {
            kind: NodeKind::Dir,
            value: Bytes::new(),
            create_index: 0,
            create_time_nanos: 0,
            update_index: self.root_update.0,
            update_time_nanos: self.root_update.1,
            temp: None,
            lock_waiters: Vec::new(),
        }
    }

    fn kind_of(&self, key: &str) -> Option<NodeKind> {
        if key.is_empty() {
            Some(NodeKind::Dir)
        } else {
            self.nodes.get(key).map(|n| n.kind)
        }
    }

    /// Direct children of `dir`, in key order.
    pub fn children(&self, dir: &str) -> Vec<String> {
        self.nodes.keys().filter(|key| parent_key(key) == dir).cloned().collect()
    }

    pub fn list(&self, key: &str) -> Result<Vec<ChildView>, KvError> {
        validate_key_or_root(key, &self.config)?;
        match self.kind_of(key) {
            None => Err(KvError::NotFound { key: key.to_owned() }),
            Some(NodeKind::Dir) => Ok(self
                .children(key)
                .into_iter()
                .map(|child| ChildView {
                    name: last_segment(&child).to_owned(),
                    node: self.nodes[&child].view(),
                })
                .collect()),
            Some(_) => Err(KvError::NotADir { key: key.to_owned() }),
        }
    }

    pub fn apply(&mut self, index: Index, leader_time_nanos: Nanos, request: &Request) -> Response {
        assert!(index >= self.applied_index);
        self.applied_index = index;
        self.time_nanos = self.time_nanos.max(leader_time_nanos);
        let now = self.time_nanos;
        if now >= self.last_sweep_nanos.saturating_add(self.config.session_sweep_interval_nanos) {
            self.last_sweep_nanos = now;
            let ttl = self.config.session_ttl_nanos;
            self.sessions.retain(|_, s| s.last_active_nanos.saturating_add(ttl) > now);
        }
        let ctx = Ctx { index, time: now, client: request.client_id };
        match &request.command {
            Command::Get { key } => return self.get(key).map(Reply::Node),
            Command::BatchGet { keys } => {
                self.batch(keys.len())?;
                return Ok(Reply::Nodes(keys.iter().map(|k| self.get(k)).collect()));
            }
            Command::List { key, limit, after } => {
                return self.list(key).map(|all| {
                    let mut page: Vec<ChildView> =
                        all.into_iter().filter(|c| after.as_ref().is_none_or(|a| &c.name > a)).collect();
                    let limit = limit.map_or(usize::MAX, |l| l as usize);
                    let more = page.len() > limit;
                    page.truncate(limit);
                    Reply::Children { children: page, more }
                })
            }
            _ => {}
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
        // Session admission.
        if !self.sessions.contains_key(&request.client_id) {
            if request.first_unacked_seq > 1 {
                return Err(KvError::SessionExpired { client_id: request.client_id });
            }
            if self.sessions.len() >= self.config.max_sessions {
                return Err(KvError::TooManySessions { max: self.config.max_sessions });
            }
            self.sessions
                .insert(request.client_id, ModelSession { last_active_nanos: now, ..Default::default() });
        }
        let session = self.sessions.get_mut(&request.client_id).expect("inserted above");
        session.last_active_nanos = session.last_active_nanos.max(now);
        session.floor_seq = session.floor_seq.max(request.first_unacked_seq);
        let floor = session.floor_seq;
        session.responses.retain(|&seq, _| seq >= floor);
        if request.seq < floor {
            return Err(KvError::SessionSeqTooOld { client_id: request.client_id, seq: request.seq, floor });
        }
        if let Some(response) = session.responses.get(&request.seq) {
            return response.clone();
        }
        let response = self.execute(ctx, &request.command);
        let max = self.config.max_session_responses;
        let session = self.sessions.get_mut(&request.client_id).expect("admitted above");
        session.responses.insert(request.seq, response.clone());
        while session.responses.len() > max {
            let (oldest, _) = session.responses.pop_first().expect("non-empty");
            session.floor_seq = session.floor_seq.max(oldest.saturating_add(1));
        }
        response
    }

    fn batch(&self, count: usize) -> Result<(), KvError> {
        if count > self.config.max_batch_items {
            return Err(KvError::TooManyItems { count, max: self.config.max_batch_items });
        }
        Ok(())
    }

    fn ttl(&self, key: &str, ttl: Nanos) -> Result<(), KvError> {
        if ttl < self.config.min_ttl_nanos || ttl > self.config.max_ttl_nanos {
            return Err(KvError::InvalidTtl {
                key: key.to_owned(),
                ttl_nanos: ttl,
                min_nanos: self.config.min_ttl_nanos,
                max_nanos: self.config.max_ttl_nanos,
            });
        }
        Ok(())
    }

    fn execute(&mut self, ctx: Ctx, command: &Command) -> Response {
        let done = |r: Result<(), KvError>| r.map(|()| Reply::Done);
        match command {
            Command::Get { .. } | Command::BatchGet { .. } | Command::List { .. } => {
                unreachable!("reads return before execute")
            }
            Command::Put { key, value } => done(self.put(ctx, key, value)),
            Command::Remove { key } => done(self.remove(ctx, key)),
            Command::Mkdir { key } => done(self.mkdir(ctx, key)),
            Command::BatchPut { items } => {
                self.batch(items.len())?;
                Ok(Reply::Batch(items.iter().map(|(k, v)| self.put(ctx, k, v)).collect()))
            }
            Command::BatchRemove { keys } => {
                self.batch(keys.len())?;
                Ok(Reply::Batch(keys.iter().map(|k| self.remove(ctx, k)).collect()))
            }
            Command::CompareAndSet { key, expected, new } => done(self.cas(ctx, key, expected, new)),
            Command::PutTemp { key, value, ttl_nanos } => done(self.put_temp(ctx, key, value, *ttl_nanos)),
            Command::MkdirTemp { key, ttl_nanos } => done(self.mkdir_temp(ctx, key, *ttl_nanos)),
            Command::UpdateTtl { key, ttl_nanos } => done(self.update_ttl(ctx, key, *ttl_nanos, true)),
            Command::RenewTtl { key, ttl_nanos } => done(self.update_ttl(ctx, key, *ttl_nanos, false)),
            Command::TryLock { key, lease_nanos, wait_nanos } => {
                self.try_lock(ctx, key, *lease_nanos, *wait_nanos).map(Reply::Lock)
            }
            Command::Unlock { key } => done(self.unlock(ctx, key)),
            Command::UpdateLease { key, lease_nanos } => done(self.update_lease(ctx, key, *lease_nanos)),
            Command::Expire { .. } => Err(KvError::SystemOnly { command: "expire".to_owned() }),
            Command::KeepAlive => Ok(Reply::Done),
        }
    }

    fn new_arm(&mut self) -> u64 {
        let id = self.next_arm_id;
        self.next_arm_id += 1;
        id
    }

    fn event(&mut self, index: Index, key: &str, kind: EventKind) {
        self.events.push(WatchEvent { index, key: key.into(), kind });
    }

    /// Stamps `key` (if it is a node) and every ancestor, the root included.
    fn touch(&mut self, ctx: Ctx, key: &str) {
        let mut key = key.to_owned();
        loop {
            if key.is_empty() {
                self.root_update = (ctx.index, ctx.time);
                return;
            }
            if let Some(node) = self.nodes.get_mut(&key) {
                node.update = (ctx.index, ctx.time);
            }
            key = parent_key(&key).to_owned();
        }
    }

    fn parent_ok(&self, key: &str) -> Result<(), KvError> {
        let parent = parent_key(key);
        match self.kind_of(parent) {
            None => Err(KvError::ParentMissing { key: key.to_owned() }),
            Some(NodeKind::Dir) => Ok(()),
            Some(_) => Err(KvError::NotADir { key: parent.to_owned() }),
        }
    }

    fn owner_ok(&self, key: &str, client: ClientId) -> Result<(), KvError> {
        match self.nodes[key].temp {
            Some(t) if t.owner != client => Err(KvError::NotOwner { key: key.to_owned(), owner: t.owner }),
            _ => Ok(()),
        }
    }

    fn insert(&mut self, ctx: Ctx, key: &str, kind: NodeKind, value: Bytes, temp: Option<TempInfo>) {
        let event = match kind {
            NodeKind::Value => EventKind::Put { value: value.clone() },
            NodeKind::Dir => EventKind::DirCreated,
            NodeKind::Lock => EventKind::LockHolder { holder: temp.map_or(0, |t| t.owner) },
        };
        let stamp = (ctx.index, ctx.time);
        let node = ModelNode { kind, value, create: stamp, update: stamp, temp, waiters: Vec::new() };
        self.nodes.insert(key.to_owned(), node);
        self.touch(ctx, key);
        self.event(ctx.index, key, event);
    }

    fn overwrite(&mut self, ctx: Ctx, key: &str, value: &Bytes) {
        self.nodes.get_mut(key).expect("exists").value = value.clone();
        self.touch(ctx, key);
        self.event(ctx.index, key, EventKind::Put { value: value.clone() });
    }

    fn remove_tree(&mut self, ctx: Ctx, key: &str) {
        fn post_order(model: &Model, key: &str, out: &mut Vec<String>) {
            for child in model.children(key) {
                post_order(model, &child, out);
            }
            out.push(key.to_owned());
        }
        let mut order = Vec::new();
        post_order(self, key, &mut order);
        for victim in &order {
            self.nodes.remove(victim);
            self.event(ctx.index, victim, EventKind::Removed);
        }
        debug_assert!(!self.nodes.keys().any(|k| is_in_subtree(k, key)));
        self.touch(ctx, parent_key(key));
    }

    fn put(&mut self, ctx: Ctx, key: &str, value: &Bytes) -> Result<(), KvError> {
        validate_key(key, &self.config)?;
        validate_value(key, value, &self.config)?;
        match self.kind_of(key) {
            Some(NodeKind::Dir) => Err(KvError::IsADir { key: key.to_owned() }),
            Some(NodeKind::Lock) => Err(KvError::IsALock { key: key.to_owned() }),
            Some(NodeKind::Value) => {
                self.owner_ok(key, ctx.client)?;
                self.overwrite(ctx, key, value);
                Ok(())
            }
            None => {
                self.parent_ok(key)?;
                self.insert(ctx, key, NodeKind::Value, value.clone(), None);
                Ok(())
            }
        }
    }

    fn remove(&mut self, ctx: Ctx, key: &str) -> Result<(), KvError> {
        validate_key(key, &self.config)?;
        match self.kind_of(key) {
            None => Ok(()),
            Some(NodeKind::Dir) if !self.children(key).is_empty() => {
                Err(KvError::DirNotEmpty { key: key.to_owned() })
            }
            Some(NodeKind::Lock) => Err(KvError::IsALock { key: key.to_owned() }),
            Some(_) => {
                self.owner_ok(key, ctx.client)?;
                self.remove_tree(ctx, key);
                Ok(())
            }
        }
    }

    fn mkdir(&mut self, ctx: Ctx, key: &str) -> Result<(), KvError> {
        validate_key(key, &self.config)?;
        match self.kind_of(key) {
            Some(NodeKind::Dir) => Ok(()),
            Some(_) => Err(KvError::NotADir { key: key.to_owned() }),
            None => {
                self.parent_ok(key)?;
                self.insert(ctx, key, NodeKind::Dir, Bytes::new(), None);
                Ok(())
            }
        }
    }

    fn cas(
        &mut self,
        ctx: Ctx,
        key: &str,
        expected: &Option<Bytes>,
        new: &Option<Bytes>,
    ) -> Result<(), KvError> {
        validate_key(key, &self.config)?;
        if expected.is_none() && new.is_none() {
            return Err(KvError::CasBothAbsent { key: key.to_owned() });
        }
        if let Some(new) = new {
            validate_value(key, new, &self.config)?;
        }
        let mismatch = KvError::CasMismatch { key: key.to_owned() };
        match self.kind_of(key) {
            None => match (expected, new) {
                (None, Some(new)) => {
                    self.parent_ok(key)?;
                    self.insert(ctx, key, NodeKind::Value, new.clone(), None);
                    Ok(())
                }
                _ => Err(mismatch),
            },
            Some(NodeKind::Dir) => Err(KvError::IsADir { key: key.to_owned() }),
            Some(NodeKind::Lock) => Err(KvError::IsALock { key: key.to_owned() }),
            Some(NodeKind::Value) => {
                self.owner_ok(key, ctx.client)?;
                if expected.as_ref() != Some(&self.nodes[key].value) {
                    return Err(mismatch);
                }
                match new {
                    Some(new) => self.overwrite(ctx, key, new),
                    None => self.remove_tree(ctx, key),
                }
                Ok(())
            }
        }
    }

    fn rearm(&mut self, key: &str, ttl: Nanos) {
        let arm_id = self.new_arm();
        let temp = self.nodes.get_mut(key).expect("exists").temp.as_mut().expect("temporary");
        temp.arm_id = arm_id;
        temp.ttl_nanos = ttl;
    }

    fn put_temp(&mut self, ctx: Ctx, key: &str, value: &Bytes, ttl: Nanos) -> Result<(), KvError> {
        validate_key(key, &self.config)?;
        validate_value(key, value, &self.config)?;
        self.ttl(key, ttl)?;
        match self.kind_of(key) {
            Some(NodeKind::Dir) => Err(KvError::IsADir { key: key.to_owned() }),
            Some(NodeKind::Lock) => Err(KvError::IsALock { key: key.to_owned() }),
            Some(NodeKind::Value) => {
                if self.nodes[key].temp.is_none() {
                    return Err(KvError::NotTemporaryConflict { key: key.to_owned() });
                }
                self.owner_ok(key, ctx.client)?;
                self.rearm(key, ttl);
                self.overwrite(ctx, key, value);
                Ok(())
            }
            None => {
                self.parent_ok(key)?;
                let arm_id = self.new_arm();
                let temp = TempInfo { owner: ctx.client, ttl_nanos: ttl, arm_id };
                self.insert(ctx, key, NodeKind::Value, value.clone(), Some(temp));
                Ok(())
            }
        }
    }

    fn mkdir_temp(&mut self, ctx: Ctx, key: &str, ttl: Nanos) -> Result<(), KvError> {
        validate_key(key, &self.config)?;
        self.ttl(key, ttl)?;
        match self.kind_of(key) {
            Some(NodeKind::Dir) => {
                if self.nodes[key].temp.is_none() {
                    return Err(KvError::NotTemporaryConflict { key: key.to_owned() });
                }
                self.owner_ok(key, ctx.client)?;
                self.rearm(key, ttl);
                Ok(())
            }
            Some(_) => Err(KvError::NotADir { key: key.to_owned() }),
            None => {
                self.parent_ok(key)?;
                let arm_id = self.new_arm();
                let temp = TempInfo { owner: ctx.client, ttl_nanos: ttl, arm_id };
                self.insert(ctx, key, NodeKind::Dir, Bytes::new(), Some(temp));
                Ok(())
            }
        }
    }

    /// `UpdateTtl` (`owner_only`) and `RenewTtl` (anyone).
    fn update_ttl(&mut self, ctx: Ctx, key: &str, ttl: Nanos, owner_only: bool) -> Result<(), KvError> {
        validate_key(key, &self.config)?;
        self.ttl(key, ttl)?;
        match self.nodes.get(key) {
            None => Err(KvError::NotFound { key: key.to_owned() }),
            Some(node) if node.kind == NodeKind::Lock => Err(KvError::IsALock { key: key.to_owned() }),
            Some(node) if node.temp.is_none() => Err(KvError::NotTemporary { key: key.to_owned() }),
            Some(_) => {
                if owner_only {
                    self.owner_ok(key, ctx.client)?;
                }
                self.rearm(key, ttl);
                Ok(())
            }
        }
    }

    fn try_lock(&mut self, ctx: Ctx, key: &str, lease: Nanos, wait: Nanos) -> Result<LockOutcome, KvError> {
        validate_key(key, &self.config)?;
        self.ttl(key, lease)?;
        if wait > 0 {
            self.ttl(key, wait)?;
        }
        let Some(node) = self.nodes.get(key) else {
            self.parent_ok(key)?;
            let arm_id = self.new_arm();
            let temp = TempInfo { owner: ctx.client, ttl_nanos: lease, arm_id };
            self.insert(ctx, key, NodeKind::Lock, Bytes::new(), Some(temp));
            return Ok(LockOutcome::Acquired);
        };
        if node.kind != NodeKind::Lock {
            return Err(KvError::NotALock { key: key.to_owned() });
        }
        let holder = node.temp.expect("lock has a holder").owner;
        if holder == ctx.client {
            self.rearm(key, lease);
            return Ok(LockOutcome::Acquired);
        }
        if let Some(position) = node.waiters.iter().position(|w| w.0 == ctx.client) {
            return Ok(LockOutcome::Queued { position: position as u32 });
        }
        if wait == 0 {
            return Err(KvError::LockBusy { key: key.to_owned(), holder });
        }
        if node.waiters.len() >= self.config.max_lock_waiters {
            return Err(KvError::TooManyWaiters { key: key.to_owned(), max: self.config.max_lock_waiters });
        }
        let arm_id = self.new_arm();
        let waiters = &mut self.nodes.get_mut(key).expect("exists").waiters;
        waiters.push((ctx.client, lease, wait, arm_id));
        Ok(LockOutcome::Queued { position: (waiters.len() - 1) as u32 })
    }

    fn lock_node(&self, key: &str) -> Result<&ModelNode, KvError> {
        match self.nodes.get(key) {
            None => Err(KvError::LockNotHeld { key: key.to_owned() }),
            Some(node) if node.kind != NodeKind::Lock => Err(KvError::NotALock { key: key.to_owned() }),
            Some(node) => Ok(node),
        }
    }

    fn release(&mut self, ctx: Ctx, key: &str) {
        let node = self.nodes.get_mut(key).expect("exists");
        if node.waiters.is_empty() {
            self.remove_tree(ctx, key);
            return;
        }
        let (client, lease, _, _) = node.waiters.remove(0);
        let arm_id = self.new_arm();
        self.nodes.get_mut(key).expect("exists").temp =
            Some(TempInfo { owner: client, ttl_nanos: lease, arm_id });
        self.touch(ctx, key);
        self.event(ctx.index, key, EventKind::LockHolder { holder: client });
    }

    fn unlock(&mut self, ctx: Ctx, key: &str) -> Result<(), KvError> {
        validate_key(key, &self.config)?;
        let node = self.lock_node(key)?;
        if node.temp.is_some_and(|t| t.owner == ctx.client) {
            self.release(ctx, key);
            return Ok(());
        }
        let Some(position) = node.waiters.iter().position(|w| w.0 == ctx.client) else {
            return Err(KvError::LockNotHeld { key: key.to_owned() });
        };
        self.nodes.get_mut(key).expect("exists").waiters.remove(position);
        Ok(())
    }

    fn update_lease(&mut self, ctx: Ctx, key: &str, lease: Nanos) -> Result<(), KvError> {
        validate_key(key, &self.config)?;
        self.ttl(key, lease)?;
        let node = self.lock_node(key)?;
        if node.temp.is_none_or(|t| t.owner != ctx.client) {
            return Err(KvError::LockNotHeld { key: key.to_owned() });
        }
        self.rearm(key, lease);
        Ok(())
    }

    fn expire(&mut self, ctx: Ctx, key: &str, arm_id: u64) -> bool {
        if validate_key(key, &self.config).is_err() {
            return false;
        }
        let Some(node) = self.nodes.get(key) else { return false };
        if node.temp.is_some_and(|t| t.arm_id == arm_id) {
            if node.kind == NodeKind::Lock {
                self.release(ctx, key);
            } else {
                self.remove_tree(ctx, key);
            }
            return true;
        }
        let Some(position) = node.waiters.iter().position(|w| w.3 == arm_id) else { return false };
        self.nodes.get_mut(key).expect("exists").waiters.remove(position);
        true
    }

    /// Every arming alive in the model: (arm id, key), in arm-id order. The leader's tracker
    /// must hold exactly these.
    pub fn armings(&self) -> Vec<(u64, String)> {
        let mut out: Vec<(u64, String)> = Vec::new();
        for (key, node) in &self.nodes {
            if let Some(t) = node.temp {
                out.push((t.arm_id, key.clone()));
            }
            out.extend(node.waiters.iter().map(|w| (w.3, key.clone())));
        }
        out.sort();
        out
    }
}

/// Panics with `context` unless `machine` and `model` hold the same state: every node, every
/// listing, sessions, time, index and live TTL armings; also runs the machine's own
/// structural checks.
pub fn assert_same_state(machine: &KvStateMachine, model: &Model, context: &str) {
    machine.check_invariants();
    assert_eq!(machine.node_count(), model.nodes.len(), "{context}: node count");
    assert_eq!(machine.get("").unwrap(), model.get("").unwrap(), "{context}: root");
    assert_eq!(machine.list("").unwrap(), model.list("").unwrap(), "{context}: root list");
    for (key, node) in &model.nodes {
        assert_eq!(machine.get(key).unwrap(), model.get(key).unwrap(), "{context}: node {key}");
        if node.kind == NodeKind::Dir {
            assert_eq!(machine.list(key).unwrap(), model.list(key).unwrap(), "{context}: list {key}");
        }
    }
    assert_eq!(machine.session_count(), model.sessions.len(), "{context}: sessions");
    assert_eq!(machine.time_nanos(), model.time_nanos, "{context}: time");
    assert_eq!(machine.applied_index(), model.applied_index, "{context}: index");
    assert_eq!(machine.ttl_count(), model.armings().len(), "{context}: armed TTLs");
}

/// The real state machine and the model side by side, for fuzz targets: every apply is
/// compared, and `check` compares whole states and watch streams.
///
/// ```
/// use tarn_kv::model::Checked;
/// use tarn_kv::KvConfig;
///
/// let mut pair = Checked::new(KvConfig::default());
/// let data: &[u8] = b"arbitrary fuzz input";
/// pair.apply_entry_bytes(1, data); // panics only if the machine and the model disagree
/// pair.check();
/// ```
pub struct Checked {
    pub machine: KvStateMachine,
    pub model: Model,
    watch: WatchId,
    events_seen: usize,
}

impl Checked {
    pub fn new(config: KvConfig) -> Self {
        let mut machine = KvStateMachine::new(config.clone());
        let watch = machine.watch("", true, Some(0)).expect("watching the root from 0 always works");
        Checked { machine, model: Model::new(config), watch, events_seen: 0 }
    }

    /// Applies one request to both; panics if the responses differ.
    pub fn apply(&mut self, index: Index, leader_time_nanos: Nanos, request: &Request) -> Response {
        let expected = self.model.apply(index, leader_time_nanos, request);
        let actual = self.machine.apply(index, leader_time_nanos, request);
        assert_eq!(actual, expected, "index {index}: {request:?}");
        actual
    }

    /// Decodes an entry payload and applies it to both (an undecodable payload just advances
    /// the index on both). `index` must not go back.
    pub fn apply_entry_bytes(&mut self, index: Index, payload: &[u8]) {
        match crate::command::decode_entry(payload) {
            Ok(entry) => {
                for request in &entry.requests {
                    let _ = self.apply(index, entry.leader_time_nanos, request);
                }
                self.machine.advance_to(index);
                self.model.applied_index = self.model.applied_index.max(index);
            }
            Err(_) => {
                assert!(self.machine.apply_entry_bytes(index, payload).is_err());
                self.model.applied_index = self.model.applied_index.max(index);
            }
        }
    }

    /// Compares whole states and the event streams; the watch queue must not overflow, so
    /// call this at least every `watch_queue_max_events` events.
    pub fn check(&mut self) {
        assert_same_state(&self.machine, &self.model, "checked pair");
        match self.machine.poll_watch(self.watch, usize::MAX) {
            WatchPoll::Events(events) => {
                let end = self.events_seen + events.len();
                assert!(end <= self.model.events.len(), "machine emitted more events than the model");
                assert_eq!(events[..], self.model.events[self.events_seen..end], "watch events");
                self.events_seen = end;
            }
            other => panic!("root watcher lost: {other:?}"),
        }
        assert_eq!(self.events_seen, self.model.events.len(), "model emitted events the machine did not");
    }
}

/// Bounds small enough that random command streams (the property tests and
/// the `kv_apply` fuzz target) meet every one of them: key and value sizes,
/// batch size, TTL range, lock waiters, session count and expiry.
pub fn small_bounds_config() -> KvConfig {
    KvConfig {
        max_key_size_bytes: 16,
        max_value_size_bytes: 8,
        max_batch_items: 4,
        min_ttl_nanos: 10,
        max_ttl_nanos: 1_000,
        max_lock_waiters: 2,
        session_ttl_nanos: 400,
        session_sweep_interval_nanos: 50,
        max_sessions: 6,
        max_session_responses: 4,
        watch_history_max_events: 1_000_000,
        watch_queue_max_events: 1_000_000,
        expire_retry_nanos: 20,
        ..KvConfig::default()
    }
}
