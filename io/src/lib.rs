//! tarn-io: the durable storage engine (written against [`vfs::Vfs`]), and —
//! with the server issue — the tokio driver and the TCP transport.

pub mod storage;
pub mod vfs;

// Server issue (issue 7): the tokio driver, wire framing and the TCP transport.
pub mod driver;
pub mod transport;
pub mod wire;
