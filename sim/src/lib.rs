//! tarn-sim: the deterministic simulator, tarn's main test suite.
//!
//! A run is a pure function of its seed: one ChaCha generator (split into
//! per-subsystem streams) drives virtual time, the network, disks, clocks,
//! crashes and the client workload; no threads, no tokio, no wall clock.

mod client_path;
pub mod clock;
pub mod disk;
mod exec;
pub mod linearizability;
pub mod net;
pub mod profile;
pub mod queue;
pub mod rng;
pub mod storage;
pub mod sweep;
pub mod trace;
mod watchers;
pub mod workload;
pub mod world;
