//! A development CA and node and client certificates (`tarn cert`), made
//! with rcgen. For trying TLS out and for tests: a production cluster takes
//! its certificates from the organisation's own CA, following the same
//! naming rule (`node-<id>.tarn` as a DNS subject alternative name).
//!
//! Files in the directory: `ca.crt`, `ca.key` (keep it offline once the
//! nodes have their certificates), `node-<id>.crt`/`.key`,
//! `client-<name>.crt`/`.key`. Keys are written readable by their owner only.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use tarn_core::NodeId;

use super::tls::node_dns_name;

/// The CA's subject: `tarn cert node` re-creates the issuer from it and
/// `ca.key`, so node certificates are signed by the CA of `ca.crt` without
/// parsing it (a CA from elsewhere is detected and refused).
const CA_COMMON_NAME: &str = "tarn development CA";

/// Why a certificate could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// rcgen refused the parameters or the key.
    #[error("cannot make the certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A file exists and would be overwritten.
    #[error("{path} exists; refusing to overwrite it (remove it first, or use another directory)")]
    Exists { path: PathBuf },
    /// `ca.crt` is not the CA that `ca.key` and `tarn cert init` make.
    #[error("{path} was not made by `tarn cert init` with this ca.key: sign node certificates with your own CA's tools")]
    ForeignCa { path: PathBuf },
    /// An argument is not usable in a certificate.
    #[error("{0}")]
    Invalid(String),
}

/// Validity of what this module makes, relative to now.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// Days before now the certificate becomes valid (clock skew margin).
    pub days_before: i64,
    /// Days after now it stops being valid (negative: already expired).
    pub days_after: i64,
}

impl Validity {
    /// The CA: ten years.
    pub const CA: Validity = Validity { days_before: 1, days_after: 3650 };
    /// Node and client certificates: two years.
    pub const LEAF: Validity = Validity { days_before: 1, days_after: 730 };

    fn apply(self, params: &mut CertificateParams) {
        let now = time::OffsetDateTime::now_utc();
        // Signed: a negative `days_after` makes an expired certificate (tests).
        params.not_before = now - time::Duration::days(self.days_before);
        params.not_after = now + time::Duration::days(self.days_after);
    }
}

/// A certificate and its key, PEM encoded.
#[derive(Debug, Clone)]
pub struct Pem {
    /// The certificate.
    pub cert: String,
    /// Its private key (PKCS#8).
    pub key: String,
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, "tarn");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// A new self-signed CA.
pub fn new_ca(validity: Validity) -> Result<Pem, CertError> {
    let key = KeyPair::generate()?;
    let mut params = ca_params();
    validity.apply(&mut params);
    let cert = params.self_signed(&key)?;
    Ok(Pem { cert: cert.pem(), key: key.serialize_pem() })
}

/// A leaf certificate signed by the CA whose key is `ca_key_pem` (a CA from
/// [`new_ca`]). `names`: DNS names and IP addresses; `server`: usable as a
/// TLS server too (node certificates), not only as a client.
pub fn new_leaf(
    ca_key_pem: &str,
    common_name: &str,
    names: &[String],
    server: bool,
    validity: Validity,
) -> Result<Pem, CertError> {
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    // The same subject and key as `new_ca`'s: what a child certificate
    // records of its issuer (name, key identifier, signature) is identical.
    let issuer = ca_params().self_signed(&ca_key)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.subject_alt_names =
        names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n.clone().try_into().map(SanType::DnsName).map_err(|_| {
                    CertError::Invalid(format!("{n:?} is neither an IP address nor a DNS name"))
                }),
            })
            .collect::<Result<_, _>>()?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = if server {
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    params.use_authority_key_identifier_extension = true;
    validity.apply(&mut params);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer, &ca_key)?;
    Ok(Pem { cert: cert.pem(), key: key.serialize_pem() })
}

/// The names a node certificate carries: `node-<id>.tarn` (its identity on
/// the peer port), `localhost`, 127.0.0.1, ::1, then `hosts` (the addresses
/// or names clients reach it by).
pub fn node_names(id: NodeId, hosts: &[String]) -> Vec<String> {
    let mut names = vec![node_dns_name(id), "localhost".into(), "127.0.0.1".into(), "::1".into()];
    for h in hosts {
        if !names.contains(h) {
            names.push(h.clone());
        }
    }
    names
}

/// A node certificate for node `id` (see [`node_names`]).
pub fn new_node(
    ca_key_pem: &str,
    id: NodeId,
    hosts: &[String],
    validity: Validity,
) -> Result<Pem, CertError> {
    if id == 0 {
        return Err(CertError::Invalid("node ids start at 1".into()));
    }
    new_leaf(ca_key_pem, &format!("tarn node {id}"), &node_names(id, hosts), true, validity)
}

fn write(path: &Path, contents: &str, secret: bool) -> Result<(), CertError> {
    use std::io::Write;
    let io = |source| CertError::Io { path: path.to_owned(), source };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            CertError::Exists { path: path.to_owned() }
        } else {
            io(e)
        }
    })?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::Io { path: path.to_owned(), source })
}

/// `tarn cert init DIR`: writes `DIR/ca.crt` and `DIR/ca.key` (creating DIR).
pub fn init_dir(dir: &Path) -> Result<[PathBuf; 2], CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Io { path: dir.to_owned(), source })?;
    let ca = new_ca(Validity::CA)?;
    let (cert, key) = (dir.join("ca.crt"), dir.join("ca.key"));
    write(&key, &ca.key, true)?;
    write(&cert, &ca.cert, false)?;
    Ok([cert, key])
}

/// Signs with `DIR/ca.key` and checks the result chains to `DIR/ca.crt`.
fn issue(
    dir: &Path,
    stem: &str,
    make: impl FnOnce(&str) -> Result<Pem, CertError>,
) -> Result<[PathBuf; 2], CertError> {
    let ca_key = read(&dir.join("ca.key"))?;
    let ca_cert_path = dir.join("ca.crt");
    let pem = make(&ca_key)?;
    check_chains(&ca_cert_path, &pem.cert)?;
    let (cert, key) = (dir.join(format!("{stem}.crt")), dir.join(format!("{stem}.key")));
    write(&key, &pem.key, true)?;
    write(&cert, &pem.cert, false)?;
    Ok([cert, key])
}

/// `tarn cert node ID DIR`: writes `DIR/node-<id>.crt` and `.key`, signed by
/// `DIR/ca.key`.
pub fn node_in_dir(dir: &Path, id: NodeId, hosts: &[String]) -> Result<[PathBuf; 2], CertError> {
    issue(dir, &format!("node-{id}"), |ca_key| new_node(ca_key, id, hosts, Validity::LEAF))
}

/// `tarn cert client NAME DIR`: writes `DIR/client-<name>.crt` and `.key`, a
/// client certificate for the DNS name `name` (what a `cert` line of the
/// auth file matches).
pub fn client_in_dir(dir: &Path, name: &str) -> Result<[PathBuf; 2], CertError> {
    // The peer port knows a node by the name `node-<id>.tarn`, and with one
    // CA for both ports a client certificate carrying such a name (or a
    // wildcard covering it) would pass there as that node.
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".tarn") || lower == "tarn" || name.contains('*') {
        return Err(CertError::Invalid(format!(
            "client name {name:?} is refused: names under .tarn belong to nodes, and wildcards are never issued"
        )));
    }
    issue(dir, &format!("client-{name}"), |ca_key| {
        new_leaf(ca_key, name, &[name.to_owned()], false, Validity::LEAF)
    })
}

/// Refuses a certificate that does not chain to the CA in `ca_path` (a
/// `ca.key` beside a `ca.crt` from elsewhere).
fn check_chains(ca_path: &Path, leaf_pem: &str) -> Result<(), CertError> {
    use rustls_pki_types::pem::PemObject;
    let ca = rustls_pki_types::CertificateDer::from_pem_file(ca_path).map_err(|e| CertError::Io {
        path: ca_path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
    })?;
    let leaf = rustls_pki_types::CertificateDer::from_pem_slice(leaf_pem.as_bytes())
        .map_err(|e| CertError::Invalid(format!("the new certificate does not parse: {e}")))?;
    let foreign = || CertError::ForeignCa { path: ca_path.to_owned() };
    let anchor = webpki::anchor_from_trusted_cert(&ca).map_err(|_| foreign())?;
    let end_entity = webpki::EndEntityCert::try_from(&leaf).map_err(|_| foreign())?;
    end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            rustls_pki_types::UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map(|_| ())
        .map_err(|_| foreign())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_certificates_never_carry_node_names_or_wildcards() {
        let dir = tempfile::tempdir().expect("tempdir");
        init_dir(dir.path()).expect("a dev CA");
        for name in ["node-2.tarn", "NODE-2.TARN", "*.tarn", "*"] {
            let e = client_in_dir(dir.path(), name).expect_err(name);
            assert!(matches!(e, CertError::Invalid(_)), "{name}: {e}");
        }
        let [crt, key] = client_in_dir(dir.path(), "deployer").expect("an ordinary client name");
        assert!(crt.exists() && key.exists());
    }
}
