//! Distributed locks on temporary nodes.
//!
//! A lock is a leaf node of kind `Lock` whose `temp.owner` is the holder and `temp.ttl_nanos`
//! the lease. Waiters queue in FIFO order, each with its own wait timeout (an arming of its
//! own). When the holder unlocks or its lease expires, the first waiter becomes the holder
//! with its lease armed from that moment; with no waiter the node is removed. Every holder
//! change is a watch event on the lock key, which is how a waiting client learns it acquired
//! the lock (the auto-renewing client lock builds on this in the server crate).

use std::collections::VecDeque;
use std::sync::Arc;

use tarn_core::Nanos;

use crate::error::KvError;
use crate::key::validate_key;
use crate::machine::{Ctx, KvStateMachine};
use crate::response::{LockOutcome, TempInfo};
use crate::tree::{Body, NodeId, Waiter};
use crate::watch::EventKind;

impl KvStateMachine {
    fn lock_id(&self, key: &str) -> Result<NodeId, KvError> {
        let id = self.tree.lookup(key).ok_or_else(|| KvError::LockNotHeld { key: key.to_owned() })?;
        match self.tree.node(id).body {
            Body::Lock(_) => Ok(id),
            _ => Err(KvError::NotALock { key: key.to_owned() }),
        }
    }

    fn waiters_mut(&mut self, id: NodeId) -> &mut VecDeque<Waiter> {
        match &mut self.tree.node_mut(id).body {
            Body::Lock(waiters) => waiters,
            _ => panic!("waiters_mut on a node that is not a lock"),
        }
    }

    pub(crate) fn try_lock(
        &mut self,
        ctx: crate::machine::Ctx,
        key: &str,
        lease_nanos: Nanos,
        wait_nanos: Nanos,
    ) -> Result<LockOutcome, KvError> {
        validate_key(key, &self.config)?;
        self.check_ttl(key, lease_nanos)?;
        if wait_nanos > 0 {
            self.check_ttl(key, wait_nanos)?;
        }
        let Some(id) = self.tree.lookup(key) else {
            let parent = self.parent_dir_for_new(key)?;
            let arc_key: Arc<str> = Arc::from(key);
            let arm_id = self.arm(&arc_key, lease_nanos);
            let temp = TempInfo { owner: ctx.client, ttl_nanos: lease_nanos, arm_id };
            self.create(ctx, parent, key, Body::Lock(VecDeque::new()), Some(temp));
            return Ok(LockOutcome::Acquired);
        };
        let node = self.tree.node(id);
        let Body::Lock(waiters) = &node.body else {
            return Err(KvError::NotALock { key: key.to_owned() });
        };
        let holder = node.temp.expect("a lock always has a holder").owner;
        if holder == ctx.client {
            self.rearm_node(id, lease_nanos);
            return Ok(LockOutcome::Acquired);
        }
        if let Some(position) = waiters.iter().position(|w| w.client == ctx.client) {
            return Ok(LockOutcome::Queued { position: position as u32 });
        }
        if wait_nanos == 0 {
            return Err(KvError::LockBusy { key: key.to_owned(), holder });
        }
        if waiters.len() >= self.config.max_lock_waiters {
            return Err(KvError::TooManyWaiters { key: key.to_owned(), max: self.config.max_lock_waiters });
        }
        let lock_key = node.key.clone();
        let arm_id = self.arm(&lock_key, wait_nanos);
        let waiters = self.waiters_mut(id);
        waiters.push_back(Waiter { client: ctx.client, lease_nanos, wait_nanos, arm_id });
        Ok(LockOutcome::Queued { position: (waiters.len() - 1) as u32 })
    }

    pub(crate) fn unlock(&mut self, ctx: Ctx, key: &str) -> Result<(), KvError> {
        validate_key(key, &self.config)?;
        let id = self.lock_id(key)?;
        let node = self.tree.node(id);
        if node.temp.is_some_and(|temp| temp.owner == ctx.client) {
            self.release_lock(ctx, id);
            return Ok(());
        }
        let Body::Lock(waiters) = &node.body else { unreachable!("lock_id checked the kind") };
        let Some(position) = waiters.iter().position(|w| w.client == ctx.client) else {
            return Err(KvError::LockNotHeld { key: key.to_owned() });
        };
        let waiter = self.waiters_mut(id).remove(position).expect("position is in range");
        self.ttl.disarm(waiter.arm_id);
        Ok(())
    }

    pub(crate) fn update_lease(&mut self, ctx: Ctx, key: &str, lease_nanos: Nanos) -> Result<(), KvError> {
        validate_key(key, &self.config)?;
        self.check_ttl(key, lease_nanos)?;
        let id = self.lock_id(key)?;
        if self.tree.node(id).temp.is_none_or(|temp| temp.owner != ctx.client) {
            return Err(KvError::LockNotHeld { key: key.to_owned() });
        }
        self.rearm_node(id, lease_nanos);
        Ok(())
    }

    /// The holder lets go (unlock or lease expiry): the first waiter takes over, or the lock
    /// node goes away.
    pub(crate) fn release_lock(&mut self, ctx: Ctx, id: NodeId) {
        let holder_arm = self.tree.node(id).temp.expect("a lock always has a holder").arm_id;
        self.ttl.disarm(holder_arm);
        match self.waiters_mut(id).pop_front() {
            None => self.remove_subtree(ctx, id),
            Some(next) => {
                self.ttl.disarm(next.arm_id);
                let key = self.tree.node(id).key.clone();
                let arm_id = self.arm(&key, next.lease_nanos);
                self.tree.node_mut(id).temp =
                    Some(TempInfo { owner: next.client, ttl_nanos: next.lease_nanos, arm_id });
                self.tree.touch_up(id, ctx.index, ctx.time_nanos);
                self.emit(ctx.index, key, EventKind::LockHolder { holder: next.client });
            }
        }
    }

    /// A waiter's wait timed out: it leaves the queue. False if `arm_id` is no waiter here.
    pub(crate) fn expire_waiter(&mut self, id: NodeId, arm_id: u64) -> bool {
        let Body::Lock(waiters) = &self.tree.node(id).body else { return false };
        let Some(position) = waiters.iter().position(|w| w.arm_id == arm_id) else { return false };
        self.waiters_mut(id).remove(position);
        self.ttl.disarm(arm_id);
        true
    }
}
