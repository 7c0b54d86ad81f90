//! TLS: the certificates the listeners present, and replacing them while
//! the server runs.
//!
//! The listeners' `rustls::ServerConfig` is built once; its certificate
//! comes from a [`CertStore`] that asks, per handshake, for
//! 1. the certificate of the tenant whose `tls.server-names` lists the
//!    client's SNI name (the PEM in the tenant's rules, `tls.certificate`
//!    and `tls.private-key`), then
//! 2. the server's own (`[tls] cert`/`key`, or a self-signed one generated
//!    once under `<data_dir>/tls/`).
//!
//! A reload swaps the server's certificate in the store: handshakes that
//! start afterwards present the new one, sessions already open keep theirs.
//! The server chooses the cipher suite (its order, not the client's).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Context;
use rustls::CipherSuite;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The crypto provider of the listeners: ring with rustls' safe defaults,
/// AES-128-GCM preferred over AES-256-GCM in each TLS version (as
/// Mozilla's recommended configurations order them). TLS 1.3's
/// AES-256-GCM suite hashes with SHA-384, which ring computes in plain
/// code on the development machine: in a profile of a new STARTTLS
/// connection per message, its SHA-512 was 4% of the server's CPU, where
/// SHA-256 runs on the CPU's SHA extensions. Both are strong; the suites
/// offered stay the same.
fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|s| match s.suite() {
        CipherSuite::TLS13_AES_128_GCM_SHA256
        | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
        CipherSuite::TLS13_AES_256_GCM_SHA384
        | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        | CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 1,
        _ => 2,
    });
    Arc::new(provider)
}

/// Where the generated certificate lives.
pub fn generated_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("tls");
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// Looks up a tenant's certificate by SNI name (lowercase).
pub trait TenantCerts: Send + Sync {
    fn tenant_cert(&self, server_name: &str) -> Option<Arc<CertifiedKey>>;
}

/// The certificates handshakes are answered with; see the module docs.
pub struct CertStore {
    server: RwLock<Arc<CertifiedKey>>,
    tenants: Option<Arc<dyn TenantCerts>>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore").finish_non_exhaustive()
    }
}

impl CertStore {
    /// A store presenting `server`, and tenants' own certificates for the
    /// names they list.
    pub fn new(server: Arc<CertifiedKey>, tenants: Option<Arc<dyn TenantCerts>>) -> CertStore {
        CertStore {
            server: RwLock::new(server),
            tenants,
        }
    }

    /// Replaces the server's certificate for every handshake from now on.
    pub fn replace(&self, server: Arc<CertifiedKey>) {
        *self.server.write().expect("cert store lock") = server;
    }

    /// The listeners' TLS configuration, answered by this store.
    pub fn server_config(self: &Arc<Self>) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        // The provider lists its suites strongest first; pick by that order.
        tls.ignore_client_order = true;
        Ok(Arc::new(tls))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let (Some(name), Some(tenants)) = (hello.server_name(), &self.tenants)
            && let Some(cert) = tenants.tenant_cert(&name.to_ascii_lowercase())
        {
            return Some(cert);
        }
        Some(self.server.read().expect("cert store lock").clone())
    }
}

/// The server's certificate as the configuration names it (`[tls] cert`
/// and `key`): its files, or with neither, the self-signed one for
/// `hostname` under `data_dir` (made now if it does not exist yet).
pub fn load_server_cert(
    cert: Option<&Path>,
    key: Option<&Path>,
    hostname: &str,
    data_dir: &Path,
) -> anyhow::Result<Arc<CertifiedKey>> {
    let (cert_path, key_path) = match (cert, key) {
        (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf()),
        (None, None) => ensure_self_signed(hostname, data_dir)?,
        _ => anyhow::bail!("[tls] needs both cert and key, or neither"),
    };
    load_pem_files(&cert_path, &key_path)
}

/// A certificate chain and its key from PEM files; fails when either does
/// not parse or they do not belong together.
pub fn load_pem_files(cert_path: &Path, key_path: &Path) -> anyhow::Result<Arc<CertifiedKey>> {
    let cert = std::fs::read(cert_path)
        .with_context(|| format!("reading certificate {}", cert_path.display()))?;
    let key =
        std::fs::read(key_path).with_context(|| format!("reading key {}", key_path.display()))?;
    certified_key(&cert, &key).with_context(|| {
        format!(
            "certificate {} with key {}",
            cert_path.display(),
            key_path.display()
        )
    })
}

/// A certificate chain and its key from PEM text.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<Arc<CertifiedKey>> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("the certificate is not PEM")?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in the PEM text");
    let key = PrivateKeyDer::from_pem_slice(key_pem).context("the private key is not PEM")?;
    let key = CertifiedKey::from_der(certs, key, &provider())
        .context("the certificate and the key do not belong together")?;
    Ok(Arc::new(key))
}

fn ensure_self_signed(hostname: &str, data_dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert_path, key_path) = generated_paths(data_dir);
    if cert_path.exists() && key_path.exists() {
        tracing::info!(cert = %cert_path.display(), "using the previously generated self-signed certificate");
        return Ok((cert_path, key_path));
    }
    write_self_signed(hostname, &cert_path, &key_path)?;
    tracing::warn!(
        cert = %cert_path.display(),
        "no [tls] certificate configured: generated a self-signed one; clients must be told to trust this file"
    );
    Ok((cert_path, key_path))
}

/// Writes a self-signed certificate for `hostname` (and loopback) and its
/// key (mode 0600), creating their directories.
pub fn write_self_signed(hostname: &str, cert_path: &Path, key_path: &Path) -> anyhow::Result<()> {
    let mut names = vec![
        hostname.to_string(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    names.dedup();
    let rcgen::CertifiedKey { cert, key_pair } = rcgen::generate_simple_self_signed(names)
        .context("generating a self-signed certificate")?;
    for p in [cert_path, key_path] {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    std::fs::write(cert_path, cert.pem())
        .with_context(|| format!("writing {}", cert_path.display()))?;
    write_private(key_path, key_pair.serialize_pem().as_bytes())
        .with_context(|| format!("writing {}", key_path.display()))?;
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The listeners offer every suite of rustls' safe defaults, AES-128-GCM
    /// first in each TLS version.
    #[test]
    fn aes_128_gcm_is_preferred_and_nothing_is_dropped() {
        let ours: Vec<CipherSuite> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
        let mut defaults: Vec<CipherSuite> = rustls::crypto::ring::default_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        let first_of = |suites: &[CipherSuite], tls13: bool| {
            suites
                .iter()
                .copied()
                .find(|s| s.as_str().is_some_and(|n| n.starts_with("TLS13_") == tls13))
        };
        assert_eq!(
            first_of(&ours, true),
            Some(CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
        assert_eq!(
            first_of(&ours, false),
            Some(CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)
        );
        let mut sorted = ours.clone();
        sorted.sort_by_key(|s| u16::from(*s));
        defaults.sort_by_key(|s| u16::from(*s));
        assert_eq!(sorted, defaults);
    }
}
