//! tarn-core: Raft as a pure, deterministic state machine.
//!
//! Inputs in, actions out. The core never reads a clock, touches a file or a
//! socket, spawns, sleeps, or uses a global random number generator; every
//! input carries the local monotonic time, and randomness comes from a ChaCha
//! generator seeded through configuration. The same seed and the same inputs
//! give the same actions, byte for byte, which is what lets the simulator
//! replay any run from its seed.

pub mod types;

pub use types::*;
