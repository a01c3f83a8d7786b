//! TLS for the client and peer ports (rustls, ring provider, TLS 1.3 only).
//!
//! - **Client port**: the server presents its certificate; with a client CA
//!   (`tarn serve --tls-ca`) it also requires every client to present a
//!   certificate that chains to it (mutual TLS).
//! - **Peer port**: always mutual TLS with the cluster CA. A node's
//!   certificate names its node id as the DNS name `node-<id>.tarn`
//!   ([`node_dns_name`]). The dialer verifies the acceptor's certificate for
//!   the name of the node it dials; the acceptor verifies the dialer's
//!   certificate chain at once and, when the transport's Hello names the
//!   dialer's id, that the certificate is valid for that id's name. So a
//!   node holding a cluster certificate cannot pose as another node.
//!   Give each node a certificate that names its own node id only (never a
//!   wildcard such as `*.tarn`, which would name every node).
//!
//! Certificates are read once, at start: replacing them takes a restart
//! (one node at a time keeps the cluster available).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tarn_core::NodeId;
use tarn_io::transport::stream::{Accepted, BoxFuture, PeerIdentity, PeerSecurity, Stream};
use tokio::net::TcpStream;

/// ALPN protocol of the client port: a client that offers another one (a
/// peer dialing the wrong port) fails the handshake with a clear alert.
pub const CLIENT_ALPN: &[u8] = b"tarn-client/1";
/// ALPN protocol of the peer port.
pub const PEER_ALPN: &[u8] = b"tarn-peer/1";

/// The DNS name a node's certificate must carry (as a subject alternative
/// name) to act as node `id` on the peer port: `node-<id>.tarn`.
pub fn node_dns_name(id: NodeId) -> String {
    format!("node-{id}.tarn")
}

/// Why TLS could not be set up. Each names the file or setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{what} {path}: {reason}")]
    File { what: &'static str, path: PathBuf, reason: String },
    /// rustls refused the certificates or key (e.g. the key does not match the certificate).
    #[error("TLS setup ({what}): {reason}")]
    Config { what: &'static str, reason: String },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    // The ring provider, as chosen: aws-lc-rs (rustls' default, with
    // post-quantum key exchange) needs cmake to build. rustls marks ring's
    // provider deprecated for lacking post-quantum key exchange only.
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file (a leaf first, then its chain).
pub fn load_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file = |reason: String| TlsError::File { what, path: path.to_owned(), reason };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file(e.to_string()))?;
    if certs.is_empty() {
        return Err(file("no CERTIFICATE block in it (expected a PEM certificate file)".into()));
    }
    Ok(certs)
}

/// Reads the private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path, what: &'static str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        what,
        path: path.to_owned(),
        reason: format!("{e} (expected a PEM private key file)"),
    })
}

/// A root store holding every certificate of a CA file.
pub fn load_roots(path: &Path, what: &'static str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path, what)? {
        roots.add(cert).map_err(|e| TlsError::File {
            what,
            path: path.to_owned(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(Arc::new(roots))
}

/// Certificate and key files of one TLS endpoint, and the CA it checks the
/// other side against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate (chain) this side presents.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA the other side's certificate must chain to (`None`: the other
    /// side presents none; allowed on the client port only).
    pub ca: Option<PathBuf>,
}

fn server_config(files: &TlsFiles, alpn: &[u8], what: &'static str) -> Result<ServerConfig, TlsError> {
    let certs = load_certs(&files.cert, "certificate")?;
    let key = load_key(&files.key, "private key")?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config { what, reason: e.to_string() })?;
    let builder = match &files.ca {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(load_roots(ca, "CA")?, provider())
                .build()
                .map_err(|e| TlsError::Config { what, reason: e.to_string() })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| TlsError::Config {
        what,
        reason: format!("{e} (do {} and {} belong together?)", files.cert.display(), files.key.display()),
    })?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// The client port's TLS: the server's certificate and, with `files.ca`,
/// mandatory client certificates chaining to that CA.
pub fn client_port_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    Ok(Arc::new(server_config(files, CLIENT_ALPN, "client port")?))
}

/// What a client needs to speak TLS to the client port.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// The rustls configuration (CA, optional client certificate).
    pub config: Arc<ClientConfig>,
    /// The name the server's certificate must carry; `None`: the endpoint's
    /// IP address (node certificates from `tarn cert node` carry
    /// 127.0.0.1, ::1 and localhost, plus any `--host` given).
    pub server_name: Option<String>,
}

impl ClientTls {
    /// Trusts servers whose certificate chains to `ca`; presents
    /// `cert`/`key` when both are given (for a client port with `--tls-ca`).
    pub fn new(
        ca: &Path,
        cert_key: Option<(&Path, &Path)>,
        server_name: Option<String>,
    ) -> Result<Self, TlsError> {
        let what = "client";
        let roots = load_roots(ca, "CA")?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config { what, reason: e.to_string() })?
            .with_root_certificates(roots);
        let mut config = match cert_key {
            Some((cert, key)) => builder
                .with_client_auth_cert(load_certs(cert, "certificate")?, load_key(key, "private key")?)
                .map_err(|e| TlsError::Config {
                    what,
                    reason: format!("{e} (do {} and {} belong together?)", cert.display(), key.display()),
                })?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![CLIENT_ALPN.to_vec()];
        if let Some(name) = &server_name {
            ServerName::try_from(name.as_str())
                .map_err(|e| TlsError::Config { what, reason: format!("server name {name:?}: {e}") })?;
        }
        Ok(ClientTls { config: Arc::new(config), server_name })
    }

    /// Runs the TLS handshake with the server at `addr` over `tcp`.
    pub async fn connect(&self, tcp: TcpStream, addr: SocketAddr) -> std::io::Result<Stream> {
        let name = match &self.server_name {
            // Checked in `new`.
            Some(name) => ServerName::try_from(name.clone())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
            None => ServerName::IpAddress(addr.ip().into()),
        };
        let tls = tokio_rustls::TlsConnector::from(self.config.clone()).connect(name, tcp).await?;
        Ok(Stream::Wrapped(Box::new(tls)))
    }
}

/// Whether an I/O error is TLS refusing the other side (a bad certificate,
/// an alert): retrying the same endpoint cannot help.
pub fn tls_refusal(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// Accepts TLS on the client port; returns the stream and the certificate
/// the client presented (verified against the client CA), if any.
pub async fn accept_client(
    config: &Arc<ServerConfig>,
    tcp: TcpStream,
) -> std::io::Result<(Stream, Option<CertificateDer<'static>>)> {
    let tls = tokio_rustls::TlsAcceptor::from(config.clone()).accept(tcp).await?;
    let cert = tls.get_ref().1.peer_certificates().and_then(|chain| chain.first()).cloned();
    Ok((Stream::Wrapped(Box::new(tls)), cert))
}

/// Mutual TLS between peers: one certificate per node naming its node id
/// (`node-<id>.tarn`), one cluster CA.
#[derive(Debug)]
pub struct PeerTls {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    /// The cluster CA, for the usage check of an accepted peer's certificate.
    anchors: Arc<Vec<rustls_pki_types::TrustAnchor<'static>>>,
}

impl PeerTls {
    /// `files.ca` is required: peers always verify each other.
    pub fn new(files: &TlsFiles) -> Result<Self, TlsError> {
        let what = "peer port";
        let Some(ca) = &files.ca else {
            return Err(TlsError::Config {
                what,
                reason: "peers use mutual TLS: give the cluster CA (--peer-tls-ca)".into(),
            });
        };
        let server = server_config(files, PEER_ALPN, what)?;
        let roots = load_roots(ca, "CA")?;
        let anchors = Arc::new(roots.roots.clone());
        let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| TlsError::Config { what, reason: e.to_string() })?;
        let mut client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config { what, reason: e.to_string() })?
            .with_webpki_verifier(verifier)
            .with_client_auth_cert(
                load_certs(&files.cert, "certificate")?,
                load_key(&files.key, "private key")?,
            )
            .map_err(|e| TlsError::Config { what, reason: e.to_string() })?;
        client.alpn_protocols = vec![PEER_ALPN.to_vec()];
        Ok(PeerTls { server: Arc::new(server), client: Arc::new(client), anchors })
    }
}

/// The certificate an accepted peer presented (its chain already verified
/// against the cluster CA by the handshake).
struct CertIdentity {
    cert: CertificateDer<'static>,
    anchors: Arc<Vec<rustls_pki_types::TrustAnchor<'static>>>,
}

impl PeerIdentity for CertIdentity {
    fn check(&self, claimed: NodeId) -> Result<(), String> {
        let name = node_dns_name(claimed);
        let server_name =
            ServerName::try_from(name.as_str()).map_err(|e| format!("bad node name {name}: {e}"))?;
        let cert = webpki::EndEntityCert::try_from(&self.cert)
            .map_err(|e| format!("its certificate does not parse: {e}"))?;
        cert.verify_is_valid_for_subject_name(&server_name)
            .map_err(|_| format!("its certificate does not name {name}"))?;
        // A node's certificate serves its peer port too: it must allow
        // server use. A client certificate (client use only) from the same
        // CA that carries a node's name is refused, not taken for the node.
        cert.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.anchors,
            &[],
            rustls_pki_types::UnixTime::now(),
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map(|_| ())
        .map_err(|e| format!("its certificate is not a node certificate (it does not allow server use: {e})"))
    }
}

impl PeerSecurity for PeerTls {
    fn dial(&self, tcp: TcpStream, peer: NodeId) -> BoxFuture<'_, Result<Stream, String>> {
        Box::pin(async move {
            let name = node_dns_name(peer);
            let server_name =
                ServerName::try_from(name.clone()).map_err(|e| format!("bad node name {name}: {e}"))?;
            let tls = tokio_rustls::TlsConnector::from(self.client.clone())
                .connect(server_name, tcp)
                .await
                .map_err(|e| {
                format!("TLS handshake with node {peer} (expecting a certificate for {name}): {e}")
            })?;
            Ok(Stream::Wrapped(Box::new(tls)))
        })
    }

    fn accept(&self, tcp: TcpStream) -> BoxFuture<'_, Result<Accepted, String>> {
        Box::pin(async move {
            let tls = tokio_rustls::TlsAcceptor::from(self.server.clone())
                .accept(tcp)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?;
            // The verifier requires a client certificate: the handshake
            // above fails without one.
            let cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .cloned()
                .ok_or_else(|| "no client certificate".to_string())?;
            let identity: Box<dyn PeerIdentity> =
                Box::new(CertIdentity { cert, anchors: self.anchors.clone() });
            Ok((Stream::Wrapped(Box::new(tls)), identity))
        })
    }
}
