//! tarn-core: Raft as a pure, deterministic state machine.
//!
//! Inputs in, actions out. The core never reads a clock, touches a file or a
//! socket, spawns, sleeps, or uses a global random number generator; every
//! input carries the local monotonic time, and randomness comes from a ChaCha
//! generator seeded through configuration. The same seed and the same inputs
//! give the same actions, byte for byte, which is what lets the simulator
//! replay any run from its seed.

pub mod config;
pub mod io;
pub mod message;
pub mod types;

mod log;
mod progress;
pub mod quorum;
mod raft;
mod read;
pub mod testkit;

#[cfg(feature = "planted-bugs")]
pub use config::PlantedBug;
pub use config::{Config, ConfigError};
pub use io::{Action, DropReason, Input, Proposal, Recovered, Role, Status};
pub use message::{Message, MessageBody, RejectHint};
pub use raft::RawNode;
pub use types::*;
