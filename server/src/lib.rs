//! tarn-server: the `tarn` binary (server, CLI client, benchmark), the async
//! client library and the server itself.
//!
//! - [`server`]: a node hosting DtKV groups on the tokio driver.
//! - [`client`]: the async client library.
//! - [`protocol`]: the client wire protocol (from `tarn-service`, shared with the simulator).
//! - [`machine`]: the kv state machine with watch delivery and TTL expiry.
//! - [`bench`]: the load generator behind `tarn bench`.
//! - [`security`]: TLS on the client and peer ports, tokens and roles.

pub mod bench;
pub mod client;
pub mod machine;
pub mod security;
pub mod server;

pub use tarn_service::protocol;

pub use client::{Client, ClientConfig, ClientError};
pub use server::{Server, ServerConfig, StartError};

/// The README's Rust example is compiled as a doctest (`cargo test --doc`),
/// so the README and the code cannot drift apart.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
