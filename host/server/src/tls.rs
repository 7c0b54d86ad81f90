//! TLS server configuration: PEM files from the configuration, or a
//! self-signed certificate generated once under `<data_dir>/tls/`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;

/// Where the generated certificate lives.
pub fn generated_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("tls");
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// Builds the acceptor's configuration.
pub fn server_config(config: &Config) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let (cert_path, key_path) = match (&config.tls.cert, &config.tls.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        (None, None) => ensure_self_signed(config)?,
        _ => anyhow::bail!("[tls] needs both cert and key, or neither"),
    };
    let certs = CertificateDer::pem_file_iter(&cert_path)
        .with_context(|| format!("reading certificate {}", cert_path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificate {}", cert_path.display()))?;
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .with_context(|| format!("reading key {}", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and key do not match")?;
    Ok(Arc::new(tls))
}

fn ensure_self_signed(config: &Config) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert_path, key_path) = generated_paths(&config.data_dir);
    if cert_path.exists() && key_path.exists() {
        tracing::info!(cert = %cert_path.display(), "using the previously generated self-signed certificate");
        return Ok((cert_path, key_path));
    }
    let mut names = vec![
        config.hostname.clone(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    names.dedup();
    let rcgen::CertifiedKey { cert, key_pair } = rcgen::generate_simple_self_signed(names)
        .context("generating a self-signed certificate")?;
    let dir = cert_path.parent().expect("has a parent");
    std::fs::create_dir_all(dir)?;
    std::fs::write(&cert_path, cert.pem())?;
    write_private(&key_path, key_pair.serialize_pem().as_bytes())?;
    tracing::warn!(
        cert = %cert_path.display(),
        "no [tls] certificate configured: generated a self-signed one; clients must be told to trust this file"
    );
    Ok((cert_path, key_path))
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
