//! Security of the client and peer ports: TLS ([`tls`]), client
//! authentication and roles ([`auth`]), development certificates
//! ([`certgen`]).
//!
//! All of it lives in this shell: the core, the kv state machine and the
//! simulator know nothing of it, and the embedding API (`tarn_io::driver`)
//! runs plain TCP unless given a `PeerSecurity`.

use std::sync::Arc;

use tarn_io::transport::stream::PeerSecurity;

pub mod auth;
pub mod certgen;
pub mod tls;

/// What a server enforces on its ports. The default: plaintext, no
/// authentication (the loopback quick start).
#[derive(Debug, Clone, Default)]
pub struct ServerSecurity {
    /// TLS on the client port ([`tls::client_port_config`]); with a client
    /// CA it also requires client certificates.
    pub client_tls: Option<Arc<rustls::ServerConfig>>,
    /// Wraps peer connections ([`tls::PeerTls`]: mutual TLS); `None`: plain TCP.
    pub peer: Option<Arc<dyn PeerSecurity>>,
    /// Client credentials and roles; `None`: every client may do everything.
    pub auth: Option<Arc<auth::AuthTable>>,
    /// How a node started with `--join` reaches the cluster's client ports.
    pub join_client: ClientSecurity,
}

/// What a client presents: TLS settings and a bearer token.
#[derive(Clone, Default)]
pub struct ClientSecurity {
    /// TLS to the client port; `None`: plaintext.
    pub tls: Option<tls::ClientTls>,
    /// Sent once per connection (`RequestBody::Authenticate`).
    pub token: Option<String>,
}

impl std::fmt::Debug for ClientSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("ClientSecurity")
            .field("tls", &self.tls.is_some())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}
