//! The security part of the `tarn` CLI: client TLS and token flags, `tarn
//! serve`'s TLS and auth flags, `tarn cert` and `tarn auth`. Kept out of
//! main.rs, which only flattens these structs and dispatches.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};
use tarn_core::NodeId;
use tarn_server::security::auth::{self, AuthTable, Role};
use tarn_server::security::tls::{self, ClientTls, PeerTls, TlsFiles};
use tarn_server::security::{certgen, ClientSecurity, ServerSecurity};
use tarn_server::ServerConfig;

/// Client-side TLS and token flags (etcdctl's names), for every command
/// that talks to a cluster.
#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientSecurityArgs {
    /// Speak TLS to the servers and trust this CA (PEM) for their
    /// certificates (a cluster's ca.crt from `tarn cert init`).
    #[arg(long, value_name = "F")]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM), for servers started with --tls-ca; needs --key.
    #[arg(long = "cert", id = "client_cert", value_name = "F", requires = "client_key")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long = "key", id = "client_key", value_name = "F", requires = "client_cert")]
    pub key: Option<PathBuf>,
    /// The name the servers' certificates must carry, when it is not the
    /// endpoint's IP address (e.g. node-1.tarn).
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// Bearer token for servers started with --auth-file (from `tarn auth
    /// add-token`). Prefer the TARN_TOKEN environment variable: a flag is
    /// visible to other users in the process list.
    #[arg(long, value_name = "T")]
    pub token: Option<String>,
}

impl ClientSecurityArgs {
    /// Fills what this one lacks from `outer` (the flags given before the command).
    pub fn fill_from(&mut self, outer: &ClientSecurityArgs) {
        if self.cacert.is_none() {
            self.cacert.clone_from(&outer.cacert);
        }
        if self.cert.is_none() && self.key.is_none() {
            self.cert.clone_from(&outer.cert);
            self.key.clone_from(&outer.key);
        }
        if self.tls_server_name.is_none() {
            self.tls_server_name.clone_from(&outer.tls_server_name);
        }
        if self.token.is_none() {
            self.token.clone_from(&outer.token);
        }
    }

    /// The flags given, as the user would type them (for error messages).
    pub fn given(&self) -> Vec<&'static str> {
        let mut given = Vec::new();
        for (set, name) in [
            (self.cacert.is_some(), "--cacert"),
            (self.cert.is_some(), "--cert"),
            (self.key.is_some(), "--key"),
            (self.tls_server_name.is_some(), "--tls-server-name"),
            (self.token.is_some(), "--token"),
        ] {
            if set {
                given.push(name);
            }
        }
        given
    }

    /// The client's TLS and token settings.
    pub fn client(&self) -> Result<ClientSecurity, String> {
        let tls = match &self.cacert {
            None => {
                if self.cert.is_some() || self.tls_server_name.is_some() {
                    return Err("--cert and --tls-server-name need --cacert (the CA that signed the servers' certificates)".into());
                }
                None
            }
            Some(ca) => {
                let cert_key = self.cert.as_deref().zip(self.key.as_deref());
                Some(ClientTls::new(ca, cert_key, self.tls_server_name.clone()).map_err(|e| e.to_string())?)
            }
        };
        // The environment is read here, not by clap: a TARN_TOKEN exported
        // for the client commands must not count as a client flag given to
        // `tarn serve` or `tarn cluster`.
        let token = self.token.clone().or_else(|| std::env::var("TARN_TOKEN").ok());
        Ok(ClientSecurity { tls, token: token.filter(|t| !t.is_empty()) })
    }
}

/// `tarn serve`'s TLS and auth flags.
#[derive(Args, Debug, Clone, Default)]
pub struct ServeSecurityArgs {
    /// Serve clients over TLS with this certificate (PEM; e.g.
    /// node-1.crt from `tarn cert node`); needs --tls-key.
    #[arg(long, value_name = "F", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, value_name = "F", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require every client to present a certificate that chains to this CA
    /// (mutual TLS on the client port); needs --tls-cert.
    #[arg(long, value_name = "F", requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,
    /// Mutual TLS between peers: this node's certificate (PEM), which must
    /// name it as node-<id>.tarn; needs --peer-tls-key and --peer-tls-ca.
    #[arg(long, value_name = "F", requires_all = ["peer_tls_key", "peer_tls_ca"])]
    pub peer_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --peer-tls-cert.
    #[arg(long, value_name = "F", requires = "peer_tls_cert")]
    pub peer_tls_key: Option<PathBuf>,
    /// The cluster CA (PEM) every peer's certificate must chain to.
    #[arg(long, value_name = "F", requires = "peer_tls_cert")]
    pub peer_tls_ca: Option<PathBuf>,
    /// Require clients to authenticate, with the tokens and roles of this
    /// file (see `tarn auth add-token`); re-read on SIGHUP.
    #[arg(long, value_name = "F")]
    pub auth_file: Option<PathBuf>,
    /// Allow a plaintext client or peer listener on an address other than
    /// loopback (anyone on the network could read and write everything).
    #[arg(long)]
    pub insecure: bool,
}

fn is_local(addr: SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// The server's security from its flags; refuses a plaintext listener
/// beyond loopback unless `--insecure`, and warns when it is given.
pub fn server_security(
    args: &ServeSecurityArgs,
    join_client: ClientSecurity,
    config: &ServerConfig,
) -> Result<ServerSecurity, String> {
    let mut security = ServerSecurity { join_client, ..ServerSecurity::default() };
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let files = TlsFiles { cert: cert.clone(), key: key.clone(), ca: args.tls_ca.clone() };
        security.client_tls = Some(tls::client_port_config(&files).map_err(|e| e.to_string())?);
    }
    if let (Some(cert), Some(key), Some(ca)) = (&args.peer_tls_cert, &args.peer_tls_key, &args.peer_tls_ca) {
        let files = TlsFiles { cert: cert.clone(), key: key.clone(), ca: Some(ca.clone()) };
        security.peer = Some(Arc::new(PeerTls::new(&files).map_err(|e| e.to_string())?));
    }
    if let Some(path) = &args.auth_file {
        security.auth = Some(AuthTable::load(path).map_err(|e| e.to_string())?);
    }
    let mut plaintext = Vec::new();
    if security.client_tls.is_none() && !is_local(config.client_addr) {
        plaintext.push(format!("client port {} (add --tls-cert/--tls-key)", config.client_addr));
    }
    if let Some(peer) = config.peer_addr.filter(|a| security.peer.is_none() && !is_local(*a)) {
        plaintext.push(format!("peer port {peer} (add --peer-tls-cert/--peer-tls-key/--peer-tls-ca)"));
    }
    if !plaintext.is_empty() {
        let what = plaintext.join(" and ");
        if !args.insecure {
            return Err(format!(
                "refusing to serve plaintext beyond loopback on the {what}: anyone on the network could read and change every key. Use TLS (`tarn cert init` makes a development CA), or pass --insecure on a network you trust"
            ));
        }
        tracing::warn!("--insecure: serving plaintext beyond loopback on the {what}");
    }
    if security.auth.is_some() && security.client_tls.is_none() && !is_local(config.client_addr) {
        tracing::warn!("--auth-file without --tls-cert: tokens cross the network in plaintext");
    }
    Ok(security)
}

/// Re-reads the auth file on every SIGHUP until the process ends: a removed
/// token stops working on open connections too, at their next request.
pub fn reload_auth_on_sighup(table: Arc<AuthTable>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: the auth file is read at start only");
            return;
        };
        while hangup.recv().await.is_some() {
            match table.reload() {
                Ok(n) => tracing::info!(file = %table.path().display(), principals = n, "auth file reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "auth file not reloaded; the previous one stays in force")
                }
            }
        }
    });
    #[cfg(not(unix))]
    let _ = table;
}

/// `tarn cert`: development certificates.
#[derive(Subcommand, Debug)]
pub enum CertCmd {
    /// Write a development CA to DIR/ca.crt and DIR/ca.key (keep ca.key
    /// private; it signs every node's certificate).
    Init {
        /// Directory to write to (created if missing).
        dir: PathBuf,
    },
    /// Write DIR/node-ID.crt and .key, signed by DIR/ca.key: usable on the
    /// peer port (it names node-ID.tarn) and the client port (it names
    /// localhost, 127.0.0.1, ::1 and every --host).
    Node {
        /// The node id the certificate names.
        id: NodeId,
        /// Directory of ca.crt and ca.key.
        dir: PathBuf,
        /// An IP address or DNS name clients reach this node by (repeatable).
        #[arg(long = "host", value_name = "HOST")]
        hosts: Vec<String>,
    },
    /// Write DIR/client-NAME.crt and .key, a client certificate for the DNS
    /// name NAME (a `cert NAME ROLE -` line of an auth file gives it a role).
    Client {
        /// The DNS name the certificate carries (e.g. backup.clients.tarn).
        name: String,
        /// Directory of ca.crt and ca.key.
        dir: PathBuf,
    },
}

/// `tarn cert ...`; prints the files written.
pub fn cert_cmd(cmd: CertCmd) -> Result<(), String> {
    let files = match cmd {
        CertCmd::Init { dir } => certgen::init_dir(&dir),
        CertCmd::Node { id, dir, hosts } => certgen::node_in_dir(&dir, id, &hosts),
        CertCmd::Client { name, dir } => certgen::client_in_dir(&dir, &name),
    }
    .map_err(|e| e.to_string())?;
    for f in files {
        println!("{}", f.display());
    }
    Ok(())
}

/// `tarn auth`: the tokens of an auth file.
#[derive(Subcommand, Debug)]
pub enum AuthCmd {
    /// Make a fresh token for NAME, append its hash to --auth-file, print
    /// the token (shown once; the file keeps only its SHA-256). A running
    /// server picks it up on SIGHUP.
    AddToken {
        /// A unique name for the token's holder.
        name: String,
        /// admin (membership, groups, transfer-leader, and all below),
        /// readwrite, or readonly.
        #[arg(long)]
        role: Role,
        /// Limit reads and writes to this key subtree (repeatable; default: every key).
        #[arg(long = "prefix", value_name = "KEY")]
        prefixes: Vec<String>,
        /// The auth file (created if missing, readable by its owner only).
        #[arg(long, value_name = "F")]
        auth_file: PathBuf,
    },
    /// Remove NAME's line from --auth-file; send the server SIGHUP to revoke it.
    Remove {
        /// The name to remove.
        name: String,
        /// The auth file.
        #[arg(long, value_name = "F")]
        auth_file: PathBuf,
    },
}

/// `tarn auth ...`.
pub fn auth_cmd(cmd: AuthCmd) -> Result<(), String> {
    match cmd {
        AuthCmd::AddToken { name, role, prefixes, auth_file } => {
            let token = auth::add_token(&auth_file, &name, role, &prefixes).map_err(|e| e.to_string())?;
            println!("{token}");
            Ok(())
        }
        AuthCmd::Remove { name, auth_file } => {
            if auth::remove(&auth_file, &name).map_err(|e| e.to_string())? {
                eprintln!("removed {name:?}; send the servers SIGHUP (kill -HUP <pid>) to revoke it now");
                Ok(())
            } else {
                Err(format!("no line of {} names {name:?}", auth_file.display()))
            }
        }
    }
}
