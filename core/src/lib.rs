//! tarn-core: Raft as a pure, deterministic state machine.
//!
//! Inputs in, actions out. The core never reads a clock, touches a file or a
//! socket, spawns, sleeps, or uses a global random number generator; every
//! input carries the local monotonic time, and randomness comes from a ChaCha
//! generator seeded through configuration. The same seed and the same inputs
//! give the same actions, byte for byte, which is what lets the simulator
//! replay any run from its seed.
//!
//! ```
//! use tarn_core::{Action, Config, Input, RawNode, Recovered, Role};
//! // A single-node cluster elects itself once its vote and log are durable:
//! // the driver executes each action and feeds the acknowledgements back.
//! let mut node = RawNode::new(Config::new(1, 42), Recovered::new_cluster([1])).unwrap();
//! let mut actions = Vec::new();
//! for _ in 0..10 {
//!     let now = node.next_deadline();
//!     node.step(now, Input::Tick, &mut actions);
//!     while let Some(action) = actions.pop() {
//!         let ack = match action {
//!             Action::PersistHardState(hs) => Input::HardStatePersisted { term: hs.term, vote: hs.vote },
//!             Action::AppendLog { entries } => Input::LogPersisted { up_to: entries[entries.len() - 1].log_id() },
//!             _ => continue,
//!         };
//!         node.step(now, ack, &mut actions);
//!     }
//!     if node.role() == Role::Leader {
//!         break;
//!     }
//! }
//! assert_eq!(node.role(), Role::Leader);
//! assert_eq!(node.commit_index(), 1, "its blank entry committed");
//! ```
//!
//! Modules: `config` (bounds), `io` (inputs and actions), `message` (the
//! wire vocabulary), `quorum` (majority and joint arithmetic), `progress`
//! (per-follower flow control), `log` (term index and in-memory tail),
//! `read` (ReadIndex rounds and the lease), `raft` (the state machine) and
//! `testkit` (an in-memory cluster for tests, fuzzing and benchmarks).

pub mod confchange;
pub mod config;
pub mod io;
pub mod message;
pub mod types;

mod log;
mod progress;
pub mod quorum;
mod raft;
mod read;
mod snapshot;
pub mod testkit;

pub use confchange::{ConfChange, ConfChangeError};
#[cfg(feature = "planted-bugs")]
pub use config::PlantedBug;
pub use config::{Config, ConfigError, MAX_ENTRY_BYTES_DEFAULT, MAX_ENTRY_BYTES_LIMIT};
pub use io::{Action, DropReason, Input, Proposal, Recovered, Role, Status, NO_DEADLINE};
pub use message::{Message, MessageBody, RejectHint};
pub use raft::RawNode;
pub use types::*;
