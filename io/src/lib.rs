//! tarn-io: the durable storage engine and, with the server issue, the tokio
//! driver and the TCP transport.

// Server issue (issue 7): wire framing and the TCP transport.
pub mod transport;
pub mod wire;
