//! Client authentication and roles (etcd's RBAC is the model).
//!
//! # Why bearer tokens
//!
//! A client proves who it is with a bearer token sent once per connection
//! (over TLS, so nobody on the path reads it), or with a client certificate
//! named in the auth file. Tokens are the simplest to operate: `tarn auth
//! add-token` prints one, the operator hands it over, revoking it is
//! deleting a line and sending SIGHUP; no certificate authority, expiry
//! dates or revocation lists for every script and service. Client
//! certificates suit clients that already hold one from the organisation's
//! CA.
//!
//! # The auth file (`tarn serve --auth-file F`)
//!
//! One principal per line; `#` starts a comment; fields are separated by
//! spaces:
//!
//! ```text
//! # kind  name   role       credential        key prefixes (none: every key)
//! token   ops    admin      sha256:9f86d0...
//! token   app    readwrite  sha256:60303a...  app jobs
//! cert    backup readonly   -
//! ```
//!
//! - `token`: a bearer token, stored as the SHA-256 of the token (hex).
//!   Tokens are 256 random bits, so a plain hash cannot be reversed by
//!   guessing and needs no salt; a stolen auth file yields no token.
//! - `cert`: a client certificate (chaining to `--tls-ca`) valid for the
//!   DNS name `name` (`tarn cert client NAME DIR` makes one); the credential
//!   field is `-`.
//! - role: `admin` (membership, groups, leader transfer, and everything
//!   below), `readwrite` (writes and reads), `readonly` (reads, watches,
//!   status).
//! - key prefixes: the principal's reads and writes are limited to these
//!   subtrees (`app` allows `app` and `app.x.y`, not `apple`).
//!
//! Names are unique. The reserved namespace (`_tarn`) is never writable by
//! any client, whatever its role (`Request::validate_from_client`).
//!
//! The file is read at start and again on SIGHUP ([`AuthTable::reload`]): a
//! removed token stops working on every connection, open ones included, at
//! their next request.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use rustls_pki_types::CertificateDer;
use tarn_kv::is_in_subtree;

use crate::protocol::{RequestBody, ServerError};

/// What a role may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads, watches, status.
    ReadOnly,
    /// Plus writes.
    ReadWrite,
    /// Plus membership, groups and leader transfer.
    Admin,
}

impl Role {
    /// The role's name in the auth file and in errors.
    pub fn name(self) -> &'static str {
        match self {
            Role::ReadOnly => "readonly",
            Role::ReadWrite => "readwrite",
            Role::Admin => "admin",
        }
    }

    fn grants(self, permission: Permission) -> bool {
        match permission {
            Permission::Read => true,
            Permission::Write => self >= Role::ReadWrite,
            Permission::Admin => self == Role::Admin,
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "readonly" => Ok(Role::ReadOnly),
            "readwrite" => Ok(Role::ReadWrite),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?}: use admin, readwrite or readonly")),
        }
    }
}

/// A permission a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Read keys, watch, status.
    Read,
    /// Write keys.
    Write,
    /// Membership, groups, leader transfer.
    Admin,
}

impl Permission {
    fn name(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::Admin => "admin",
        }
    }
}

/// Who a connection authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The name in the auth file.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The key subtrees it may read and write; empty: every key.
    pub prefixes: Vec<String>,
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} (role {})", self.name, self.role.name())
    }
}

impl Principal {
    fn deny(&self, permission: Permission, detail: String) -> ServerError {
        ServerError::PermissionDenied {
            principal: self.to_string(),
            permission: permission.name().to_owned(),
            detail,
        }
    }

    fn check_key(&self, permission: Permission, key: &str) -> Result<(), ServerError> {
        if !self.role.grants(permission) {
            return Err(self.deny(permission, format!("key {key:?}")));
        }
        if self.prefixes.is_empty() || self.prefixes.iter().any(|p| is_in_subtree(key, p)) {
            return Ok(());
        }
        Err(self.deny(
            permission,
            format!("key {key:?} is outside its key prefixes {}", self.prefixes.join(", ")),
        ))
    }

    /// Whether this principal may make request `body`: the permission its
    /// role needs and, for keys, its key prefixes.
    pub fn authorize(&self, body: &RequestBody) -> Result<(), ServerError> {
        match body {
            RequestBody::Hello | RequestBody::Authenticate { .. } | RequestBody::Unwatch { .. } => Ok(()),
            RequestBody::Status => {
                if self.role.grants(Permission::Read) {
                    Ok(())
                } else {
                    Err(self.deny(Permission::Read, "status".into()))
                }
            }
            RequestBody::Read { command, .. } => {
                command.keys().into_iter().try_for_each(|k| self.check_key(Permission::Read, k))
            }
            RequestBody::Watch { key, .. } => self.check_key(Permission::Read, key),
            RequestBody::Write(request) => {
                let keys = request.command.keys();
                if keys.is_empty() {
                    // A session keep-alive: writes nothing, but only writers have sessions.
                    if !self.role.grants(Permission::Write) {
                        return Err(self.deny(Permission::Write, request.command.name().to_owned()));
                    }
                    return Ok(());
                }
                keys.into_iter().try_for_each(|k| self.check_key(Permission::Write, k))
            }
            RequestBody::TransferLeader { .. }
            | RequestBody::AddGroup { .. }
            | RequestBody::RemoveGroup
            | RequestBody::ChangeMembership { .. }
            | RequestBody::RecordPeer { .. }
            | RequestBody::AddGroups { .. } => {
                if self.role.grants(Permission::Admin) {
                    Ok(())
                } else {
                    Err(self
                        .deny(Permission::Admin, format!("{} is an admin operation", operation_name(body))))
                }
            }
        }
    }
}

fn operation_name(body: &RequestBody) -> &'static str {
    match body {
        RequestBody::TransferLeader { .. } => "transfer-leader",
        RequestBody::AddGroup { .. } | RequestBody::AddGroups { .. } => "group add",
        RequestBody::RemoveGroup => "group remove",
        RequestBody::ChangeMembership { .. } => "a membership change",
        RequestBody::RecordPeer { .. } => "recording a peer address",
        _ => "this request",
    }
}

/// Why the auth file could not be used. Each names the file and line.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Reading or writing the file failed.
    #[error("auth file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A line does not parse.
    #[error("auth file {path}, line {line}: {reason}")]
    Line { path: PathBuf, line: usize, reason: String },
    /// An argument of `tarn auth` is not usable.
    #[error("{0}")]
    Invalid(String),
}

/// The SHA-256 of a token, as stored.
pub type TokenHash = [u8; 32];

/// SHA-256 of `token`.
pub fn hash_token(token: &str) -> TokenHash {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<TokenHash> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A fresh token: `tarn-` and 256 random bits in hex.
pub fn new_token() -> Result<String, AuthError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| AuthError::Invalid("the system random number generator failed".into()))?;
    Ok(format!("tarn-{}", hex(&bytes)))
}

/// The principals of one reading of the auth file.
#[derive(Debug, Default)]
struct Tables {
    tokens: HashMap<TokenHash, Arc<Principal>>,
    /// Certificate principals: the DNS name a client certificate must be valid for.
    certs: Vec<Arc<Principal>>,
}

fn parse(path: &Path, text: &str) -> Result<Tables, AuthError> {
    let mut tables = Tables::default();
    let mut names = std::collections::BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let bad = |reason: String| AuthError::Line { path: path.to_owned(), line: i + 1, reason };
        let line = line.split('#').next().unwrap_or("");
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        let [kind, name, role, credential, prefixes @ ..] = fields.as_slice() else {
            return Err(bad(
                "expected `token NAME ROLE sha256:HEX [PREFIX...]` or `cert NAME ROLE - [PREFIX...]`".into(),
            ));
        };
        let role: Role = role.parse().map_err(bad)?;
        if !names.insert(name.to_string()) {
            return Err(bad(format!("name {name:?} appears twice")));
        }
        let principal = Arc::new(Principal {
            name: name.to_string(),
            role,
            prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
        });
        match *kind {
            "token" => {
                let hash = credential
                    .strip_prefix("sha256:")
                    .and_then(unhex)
                    .ok_or_else(|| bad(format!("credential {credential:?} is not sha256:<64 hex digits>")))?;
                tables.tokens.insert(hash, principal);
            }
            "cert" => {
                // The credential column must be `-`: a prefix written there
                // by mistake would otherwise leave the line with no prefix,
                // granting every key instead of the subtree meant.
                if *credential != "-" {
                    return Err(bad(format!(
                        "a cert line's credential column is `-` (the certificate is the credential), not \
                         {credential:?}: write `cert {name} ROLE - [PREFIX...]`"
                    )));
                }
                rustls_pki_types::ServerName::try_from(*name)
                    .map_err(|_| bad(format!("cert name {name:?} is not a DNS name")))?;
                tables.certs.push(principal);
            }
            other => return Err(bad(format!("unknown kind {other:?}: use token or cert"))),
        }
    }
    Ok(tables)
}

/// The principals of the auth file, reloadable while the server runs.
#[derive(Debug)]
pub struct AuthTable {
    path: PathBuf,
    tables: RwLock<Arc<Tables>>,
    /// Bumped by every reload: connections re-check their principal when it
    /// moved (one atomic load per request otherwise).
    generation: AtomicU64,
    /// Tells connections of a reload at once, so one that only receives
    /// (watches) cannot outlive its revoked or narrowed credential.
    reloaded: tokio::sync::watch::Sender<u64>,
}

impl AuthTable {
    /// Reads the auth file at `path`.
    pub fn load(path: &Path) -> Result<Arc<AuthTable>, AuthError> {
        let tables = Self::read(path)?;
        Ok(Arc::new(AuthTable {
            path: path.to_owned(),
            tables: RwLock::new(Arc::new(tables)),
            generation: AtomicU64::new(0),
            reloaded: tokio::sync::watch::Sender::new(0),
        }))
    }

    fn read(path: &Path) -> Result<Tables, AuthError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| AuthError::Io { path: path.to_owned(), source })?;
        parse(path, &text)
    }

    /// Reads the file again (SIGHUP). On error the previous table stays.
    /// Returns the number of principals.
    pub fn reload(&self) -> Result<usize, AuthError> {
        let tables = Self::read(&self.path)?;
        let count = tables.tokens.len() + tables.certs.len();
        *self.tables.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(tables);
        let generation = self.generation.fetch_add(1, Ordering::Release) + 1;
        self.reloaded.send_replace(generation);
        Ok(count)
    }

    /// The file this table reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn tables(&self) -> Arc<Tables> {
        // Replaced whole under the lock; a poisoned lock still holds a complete table.
        self.tables.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn lookup(&self, credential: &Credential) -> Option<Arc<Principal>> {
        let tables = self.tables();
        match credential {
            Credential::Token(hash) => tables.tokens.get(hash).cloned(),
            Credential::Cert(der) => {
                let cert = webpki::EndEntityCert::try_from(der).ok()?;
                tables
                    .certs
                    .iter()
                    .find(|p| {
                        rustls_pki_types::ServerName::try_from(p.name.as_str())
                            .is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
                    })
                    .cloned()
            }
        }
    }
}

/// How a connection proved itself.
#[derive(Debug, Clone)]
enum Credential {
    Token(TokenHash),
    Cert(CertificateDer<'static>),
}

/// One client connection's authentication state.
#[derive(Debug)]
pub struct ConnAuth {
    table: Option<Arc<AuthTable>>,
    credential: Option<Credential>,
    principal: Option<Arc<Principal>>,
    generation: u64,
}

impl ConnAuth {
    /// A new connection; `client_cert` is the certificate it presented on a
    /// client port with `--tls-ca` (it authenticates the connection when
    /// a `cert` line of the auth file names it).
    pub fn new(table: Option<Arc<AuthTable>>, client_cert: Option<CertificateDer<'static>>) -> Self {
        let mut auth = ConnAuth { table, credential: None, principal: None, generation: 0 };
        if let (Some(table), Some(cert)) = (&auth.table, client_cert) {
            let credential = Credential::Cert(cert);
            auth.generation = table.generation.load(Ordering::Acquire);
            auth.principal = table.lookup(&credential);
            if auth.principal.is_some() {
                auth.credential = Some(credential);
            }
        }
        auth
    }

    /// Whether the server checks credentials at all.
    pub fn enabled(&self) -> bool {
        self.table.is_some()
    }

    /// The session id a write of this connection runs under, for the id
    /// `client_id` its client chose. With an auth file, sessions are
    /// namespaced by principal (a hash of its name and the client's id): a
    /// principal that learned another's session id (lock and temporary
    /// node owners are visible to readers) and wrote under it would
    /// otherwise record answers for that session's next sequence numbers,
    /// so the other's later writes were answered as duplicates and never
    /// applied, or refused after a forged keep-alive. Every server computes
    /// the same id, so a client's retries through any node stay one session.
    /// Without an auth file the id is the client's own.
    pub fn session_id(&self, client_id: u64) -> u64 {
        let Some(principal) = self.table.as_ref().and(self.principal.as_ref()) else { return client_id };
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"tarn-session\0");
        ctx.update(principal.name.as_bytes());
        ctx.update(b"\0");
        ctx.update(&client_id.to_le_bytes());
        let digest = ctx.finish();
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest.as_ref()[..8]);
        // 0 is the leader's own session (expiry), never a client's.
        u64::from_le_bytes(id).max(1)
    }

    /// Changes at every reload of the auth file (`None`: no auth file).
    pub fn reloads(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.table.as_ref().map(|t| t.reloaded.subscribe())
    }

    /// After a reload: whether this connection still holds exactly the
    /// rights it had. False when its credential was revoked or its role or
    /// prefixes changed: the server then closes the connection, so watches
    /// authorized under the old rights end (a client re-watches, authorized
    /// afresh). A connection not yet authenticated keeps nothing to lose.
    pub fn unchanged_after_reload(&mut self) -> bool {
        let Some(table) = &self.table else { return true };
        let Some(credential) = &self.credential else { return true };
        let now = table.lookup(credential);
        let unchanged = match (&self.principal, &now) {
            (Some(before), Some(after)) => before == after,
            _ => false,
        };
        self.generation = table.generation.load(Ordering::Acquire);
        self.principal = now;
        if self.principal.is_none() {
            self.credential = None;
        }
        unchanged
    }

    /// `Authenticate { token }`: the principal, or why not.
    pub fn authenticate(&mut self, token: &str) -> Result<Option<Arc<Principal>>, ServerError> {
        let Some(table) = &self.table else { return Ok(None) };
        let credential = Credential::Token(hash_token(token));
        self.generation = table.generation.load(Ordering::Acquire);
        match table.lookup(&credential) {
            Some(p) => {
                self.credential = Some(credential);
                self.principal = Some(p.clone());
                Ok(Some(p))
            }
            None => {
                self.credential = None;
                self.principal = None;
                Err(ServerError::Unauthenticated { reason: "unknown or revoked token".into() })
            }
        }
    }

    /// Whether this connection may make request `body` now (a reload since
    /// the last request re-reads its principal: revoked means refused).
    pub fn authorize(&mut self, body: &RequestBody) -> Result<(), ServerError> {
        let Some(table) = &self.table else { return Ok(()) };
        if let RequestBody::Authenticate { .. } = body {
            return Ok(());
        }
        let generation = table.generation.load(Ordering::Acquire);
        if generation != self.generation {
            self.generation = generation;
            self.principal = self.credential.as_ref().and_then(|c| table.lookup(c));
            if self.principal.is_none() && self.credential.take().is_some() {
                return Err(ServerError::Unauthenticated {
                    reason: format!("credential revoked (reloaded {})", table.path.display()),
                });
            }
        }
        match &self.principal {
            Some(p) => p.authorize(body),
            None => Err(ServerError::Unauthenticated {
                reason: "this server requires a token or a client certificate named in its auth file; pass --token (or TARN_TOKEN)".into(),
            }),
        }
    }
}

/// `tarn auth add-token`: a fresh token for `name` with `role`, limited to
/// `prefixes` (none: every key). Appends its hash to the auth file at `path`
/// (created, readable by its owner only) and returns the token: shown once,
/// never stored.
pub fn add_token(path: &Path, name: &str, role: Role, prefixes: &[String]) -> Result<String, AuthError> {
    use std::io::Write;
    let io = |source| AuthError::Io { path: path.to_owned(), source };
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '#') {
        return Err(AuthError::Invalid(format!(
            "name {name:?}: use letters, digits and - _ . (no spaces or #)"
        )));
    }
    if let Some(p) =
        prefixes.iter().find(|p| p.is_empty() || p.chars().any(|c| c.is_whitespace() || c == '#'))
    {
        return Err(AuthError::Invalid(format!("key prefix {p:?}: a key path such as app or app.jobs")));
    }
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(e)),
    };
    let tables = parse(path, &existing)?;
    if tables.tokens.values().chain(&tables.certs).any(|p| p.name == name) {
        return Err(AuthError::Invalid(format!(
            "{name:?} is already in {}; remove it first (`tarn auth remove {name}`) or pick another name",
            path.display()
        )));
    }
    let token = new_token()?;
    let mut line = format!("token {name} {} sha256:{}", role.name(), hex(&hash_token(&token)));
    for p in prefixes {
        line.push(' ');
        line.push_str(p);
    }
    line.push('\n');
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io)?;
    if !existing.is_empty() && !existing.ends_with('\n') {
        file.write_all(b"\n").map_err(io)?;
    }
    file.write_all(line.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(token)
}

/// `tarn auth remove`: deletes `name`'s line from the auth file (a running
/// server forgets it on SIGHUP). False when no line names it.
pub fn remove(path: &Path, name: &str) -> Result<bool, AuthError> {
    let io = |source| AuthError::Io { path: path.to_owned(), source };
    let text = std::fs::read_to_string(path).map_err(io)?;
    let mut removed = false;
    let kept: String = text
        .lines()
        .filter(|line| {
            let mut fields = line.split('#').next().unwrap_or("").split_whitespace();
            let named = matches!((fields.next(), fields.next()), (Some(_), Some(n)) if n == name);
            removed |= named;
            !named
        })
        .map(|l| format!("{l}\n"))
        .collect();
    if removed {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, kept).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tarn_kv::{Command, Request};

    fn principal(role: Role, prefixes: &[&str]) -> Principal {
        Principal { name: "t".into(), role, prefixes: prefixes.iter().map(|p| p.to_string()).collect() }
    }

    fn write(key: &str) -> RequestBody {
        RequestBody::Write(Request {
            client_id: 7,
            seq: 1,
            first_unacked_seq: 1,
            command: Command::Put { key: key.into(), value: "v".into() },
        })
    }

    #[test]
    fn roles_grant_what_they_say() {
        let get =
            RequestBody::Read { command: Command::Get { key: "a".into() }, consistency: Default::default() };
        let transfer = RequestBody::TransferLeader { to: 2 };
        let ro = principal(Role::ReadOnly, &[]);
        assert!(ro.authorize(&get).is_ok());
        let e = ro.authorize(&write("a")).unwrap_err();
        assert!(e.to_string().contains("lacks the write permission"), "{e}");
        let rw = principal(Role::ReadWrite, &[]);
        assert!(rw.authorize(&write("a")).is_ok());
        let e = rw.authorize(&transfer).unwrap_err();
        assert!(e.to_string().contains("lacks the admin permission"), "{e}");
        assert!(principal(Role::Admin, &[]).authorize(&transfer).is_ok());
    }

    #[test]
    fn prefixes_are_subtrees() {
        let p = principal(Role::ReadWrite, &["app"]);
        assert!(p.authorize(&write("app")).is_ok());
        assert!(p.authorize(&write("app.x.y")).is_ok());
        let e = p.authorize(&write("apple")).unwrap_err();
        assert!(e.to_string().contains("outside its key prefixes app"), "{e}");
    }

    #[test]
    fn tokens_round_trip_through_the_file_and_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth");
        let token = add_token(&path, "ci", Role::ReadOnly, &["app".into()]).unwrap();
        assert!(token.starts_with("tarn-") && token.len() == 5 + 64, "{token}");
        assert!(add_token(&path, "ci", Role::Admin, &[]).is_err(), "names are unique");
        let table = AuthTable::load(&path).unwrap();
        let mut conn = ConnAuth::new(Some(table.clone()), None);
        let p = conn.authenticate(&token).unwrap().unwrap();
        assert_eq!((p.name.as_str(), p.role), ("ci", Role::ReadOnly));
        assert!(!std::fs::read_to_string(&path).unwrap().contains(&token), "only the hash is stored");
        assert!(conn.authorize(&RequestBody::Status).is_ok());
        assert!(remove(&path, "ci").unwrap());
        assert_eq!(table.reload().unwrap(), 0);
        let e = conn.authorize(&RequestBody::Status).unwrap_err();
        assert!(matches!(e, ServerError::Unauthenticated { .. }), "{e}");
        assert!(conn.authenticate(&token).is_err());
    }

    #[test]
    fn bad_lines_name_the_line() {
        let e = parse(Path::new("f"), "token a admin sha256:00\n").unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        let e = parse(Path::new("f"), "# c\ntoken a boss sha256:00\n").unwrap_err();
        assert!(e.to_string().contains("line 2") && e.to_string().contains("unknown role"), "{e}");
        // A prefix in the credential column would have granted every key.
        let e = parse(Path::new("f"), "cert deployer readwrite app\n").unwrap_err();
        assert!(e.to_string().contains("line 1") && e.to_string().contains("`-`"), "{e}");
        assert!(parse(Path::new("f"), "cert deployer readwrite - app\n").is_ok());
    }
}
