//! The embedding API: what a state machine must offer to be driven by tarn.

use bytes::Bytes;
use tarn_core::{Index, Nanos};

/// A replicated state machine driven by a Raft group.
///
/// The driver calls [`StateMachine::apply`] for every committed entry, in log
/// order, exactly once per index on every node; the same entries must give
/// the same state everywhere (no clock, no randomness, no I/O inside
/// `apply`). Reads do not go through the log: a linearizable read runs a
/// closure on the state machine once the core has confirmed leadership and
/// the machine has applied the read index.
///
/// Every method runs on the group's task, so it must not block for long: the
/// group's heartbeats wait behind it.
///
/// # Example: a replicated counter
///
/// ```
/// use bytes::Bytes;
/// use tarn_core::Index;
/// use tarn_io::driver::StateMachine;
///
/// #[derive(Default)]
/// struct Counter { value: u64, applied: Index }
///
/// impl StateMachine for Counter {
///     type Response = u64;
///     fn apply(&mut self, index: Index, data: &Bytes) -> u64 {
///         // Each committed entry carries an 8-byte little-endian increment.
///         let mut raw = [0u8; 8];
///         raw.copy_from_slice(&data[..8.min(data.len())]);
///         self.value += u64::from_le_bytes(raw);
///         self.applied = index;
///         self.value
///     }
///     fn apply_noop(&mut self, index: Index) { self.applied = index; }
///     fn applied_index(&self) -> Index { self.applied }
/// }
///
/// let mut c = Counter::default();
/// assert_eq!(c.apply(1, &Bytes::from(5u64.to_le_bytes().to_vec())), 5);
/// ```
///
/// See `tarn_io::driver` for how to run it under a [`Node`](super::Node).
pub trait StateMachine: Send + 'static {
    /// What the proposer of an entry gets back once it is applied.
    type Response: Send + 'static;

    /// Applies the committed entry at `index` whose payload is `data`.
    fn apply(&mut self, index: Index, data: &Bytes) -> Self::Response;

    /// Marks an entry without application payload (a new leader's blank
    /// entry, a membership change) as applied.
    fn apply_noop(&mut self, index: Index);

    /// The last index applied (0 for an empty machine). Read at start so the
    /// core does not ask to apply entries twice.
    fn applied_index(&self) -> Index;

    /// Called after every batch of applied entries (e.g. to wake watchers).
    fn after_apply(&mut self) {}

    /// Called when this node becomes leader (`true`) or stops being leader.
    /// `wall_clock_nanos` is the local wall clock (nanoseconds since the Unix
    /// epoch).
    fn on_leadership(&mut self, is_leader: bool, wall_clock_nanos: Nanos) {
        let _ = (is_leader, wall_clock_nanos);
    }

    /// Called on the leader on every driver tick: payloads the leader wants to
    /// propose on its own behalf (e.g. TTL expiry). Their responses are dropped.
    fn leader_proposals(&mut self, wall_clock_nanos: Nanos) -> Vec<Bytes> {
        let _ = wall_clock_nanos;
        Vec::new()
    }

    /// True while [`StateMachine::leader_proposals`] may return something
    /// on a later tick with no new input (e.g. TTL deadlines are armed). A
    /// quiescent group's driver ticks only then, so the default (nothing
    /// timed) lets an idle group sleep.
    fn wants_leader_ticks(&self) -> bool {
        false
    }

    /// A snapshot of the state as applied now, to be encoded off the group's
    /// task (on a blocking thread) while this state keeps applying: return
    /// an owned, cheap copy (e.g. a persistent or copy-on-write structure)
    /// wrapped in a closure that writes its bytes. `None` (the default): no
    /// snapshots, and the log is never compacted.
    ///
    /// Implement it together with [`StateMachine::snapshot_restore`]: a node
    /// restarts from its last snapshot, and a lagging follower is sent the
    /// leader's.
    fn snapshot(&mut self) -> Option<SnapshotProducer> {
        None
    }

    /// A decoder for a snapshot's bytes (as written by a
    /// [`StateMachine::snapshot`] producer, possibly on another node). It
    /// runs on a blocking thread; its result replaces this state on the
    /// group's task, after which [`StateMachine::applied_index`] must be the
    /// snapshot's index. `None` (the default): this machine cannot install
    /// snapshots, and the group stops if it is sent one.
    fn snapshot_restore(&mut self) -> Option<Box<dyn SnapshotRestore<Self>>>
    where
        Self: Sized,
    {
        None
    }
}

/// Writes a state machine's snapshot: called once, on a blocking thread,
/// with a sink that takes the snapshot's bytes in order (pieces of any
/// size; an error from the sink is returned as is).
pub type SnapshotProducer =
    Box<dyn FnOnce(&mut dyn FnMut(&[u8]) -> Result<(), String>) -> Result<(), String> + Send>;

/// Replaces a state machine's state with a decoded snapshot (on its task).
pub type SnapshotInstaller<SM> = Box<dyn FnOnce(&mut SM) + Send>;

/// Rebuilds a state machine's state from a snapshot's bytes, off the
/// group's task. Nothing changes until the installer it returns runs.
pub trait SnapshotRestore<SM>: Send + 'static {
    /// The next bytes of the snapshot, in order (pieces of any size).
    fn push(&mut self, data: &[u8]) -> Result<(), String>;
    /// Every byte was pushed: check the whole, and return what installs it.
    fn finish(self: Box<Self>) -> Result<SnapshotInstaller<SM>, String>;
}
