//! tarn-service: the client-facing request path without I/O, shared by the
//! tokio server (`tarn-server`) and the simulator (`tarn-sim`), so that the
//! simulator's clients get the answers real clients get.
//!
//! - [`protocol`]: the client wire protocol (frames, requests, answers, errors).
//! - [`admission`]: packing client writes into Raft entries under the chain of limits.
//! - [`request_path`]: one decoded frame to a group's inputs, and the answers back.
//! - [`watch`]: delivering watch events to a connection's sink.
//! - [`retry`]: what a client does with an answer (follow a leader hint, retry, give up).
//!
//! No tokio, no sockets, no clock: time and I/O come in from the shell.
#![warn(missing_docs)]

pub mod admission;
pub mod protocol;
pub mod request_path;
pub mod retry;
pub mod watch;

pub use request_path::{
    ConnWatches, FrameSink, GroupPort, KvHost, KvResponses, NoMetrics, PathMetrics, RequestPath,
};
