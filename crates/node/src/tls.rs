//! The node's client-facing certificate.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::config::TlsConfig;
use crate::{NodeError, Result};

/// The certificate in use and where it lives.
#[derive(Debug, Clone)]
pub struct NodeCertificate {
    /// The PEM certificate file (give it to clients as their CA).
    pub cert_path: PathBuf,
    /// The PEM key file.
    pub key_path: PathBuf,
    /// SHA-256 of the leaf certificate (DER), hex.
    pub fingerprint: String,
    /// Whether it was generated on this start.
    pub generated: bool,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> NodeError + '_ {
    move |source| NodeError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Uses the configured pair, or the pair in `<data_dir>/tls/`, generating a
/// self-signed one there (for localhost, "switchboard" and 127.0.0.1) if absent.
pub fn ensure_certificate(config: &TlsConfig, data_dir: &Path) -> Result<NodeCertificate> {
    if let (Some(cert), Some(key)) = (&config.cert, &config.key) {
        return Ok(NodeCertificate {
            fingerprint: fingerprint(cert)?,
            cert_path: cert.clone(),
            key_path: key.clone(),
            generated: false,
        });
    }
    let dir = data_dir.join("tls");
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    let mut generated = false;
    if !cert_path.exists() || !key_path.exists() {
        crate::datadir::create_private_dir(&dir)?;
        let names = vec![
            "localhost".to_owned(),
            "switchboard".to_owned(),
            "127.0.0.1".to_owned(),
        ];
        let pair = rcgen::generate_simple_self_signed(names)
            .map_err(|e| NodeError::Tls(format!("cannot generate a certificate: {e}")))?;
        write_private(&key_path, pair.signing_key.serialize_pem().as_bytes())?;
        std::fs::write(&cert_path, pair.cert.pem()).map_err(io(&cert_path))?;
        generated = true;
    }
    Ok(NodeCertificate {
        fingerprint: fingerprint(&cert_path)?,
        cert_path,
        key_path,
        generated,
    })
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))
}

fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let chain: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| NodeError::Tls(format!("{}: {e}", path.display())))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| NodeError::Tls(format!("{}: {e}", path.display())))?;
    if chain.is_empty() {
        return Err(NodeError::Tls(format!(
            "{}: no certificate in the file",
            path.display()
        )));
    }
    Ok(chain)
}

fn fingerprint(cert_path: &Path) -> Result<String> {
    let chain = load_chain(cert_path)?;
    Ok(hex::encode(Sha256::digest(chain[0].as_ref())))
}

/// The client-facing certificate in use, swappable while the node serves:
/// every handshake asks it for the pair, and [`Self::reload`] reads the
/// files again (a renewed certificate, on SIGHUP). Connections already open
/// keep the pair they were made with.
#[derive(Debug)]
pub struct ReloadableCertificate {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadableCertificate {
    fn load_pair(
        cert_path: &Path,
        key_path: &Path,
        provider: &CryptoProvider,
    ) -> Result<CertifiedKey> {
        let chain = load_chain(cert_path)?;
        let key = PrivateKeyDer::from_pem_file(key_path)
            .map_err(|e| NodeError::Tls(format!("{}: {e}", key_path.display())))?;
        CertifiedKey::from_der(chain, key, provider).map_err(|e| {
            NodeError::Tls(format!(
                "{} and {}: {e}",
                cert_path.display(),
                key_path.display()
            ))
        })
    }

    /// Reads the pair again; on any error the pair in use stays. Returns
    /// the new leaf's SHA-256 fingerprint.
    pub fn reload(&self) -> Result<String> {
        let pair = Self::load_pair(&self.cert_path, &self.key_path, &self.provider)?;
        let fingerprint = hex::encode(Sha256::digest(pair.cert[0].as_ref()));
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(pair);
        Ok(fingerprint)
    }
}

impl ResolvesServerCert for ReloadableCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        ))
    }
}

/// A rustls server configuration for the certificate, and the handle that
/// reloads it.
pub fn server_config(
    cert: &NodeCertificate,
) -> Result<(Arc<ServerConfig>, Arc<ReloadableCertificate>)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pair = ReloadableCertificate::load_pair(&cert.cert_path, &cert.key_path, &provider)?;
    let resolver = Arc::new(ReloadableCertificate {
        cert_path: cert.cert_path.clone(),
        key_path: cert.key_path.clone(),
        provider: Arc::clone(&provider),
        current: RwLock::new(Arc::new(pair)),
    });
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| NodeError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    Ok((Arc::new(config), resolver))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_and_reuses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = ensure_certificate(&TlsConfig::default(), dir.path()).expect("generate");
        assert!(first.generated);
        let second = ensure_certificate(&TlsConfig::default(), dir.path()).expect("reuse");
        assert!(!second.generated);
        assert_eq!(first.fingerprint, second.fingerprint);
        server_config(&second).expect("usable by rustls");
    }

    #[test]
    fn a_bad_certificate_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("c.pem");
        std::fs::write(&cert, "not pem").expect("write");
        let config = TlsConfig {
            cert: Some(cert.clone()),
            key: Some(cert),
        };
        let err = ensure_certificate(&config, dir.path()).expect_err("refused");
        assert!(err.to_string().contains("c.pem"), "{err}");
    }
}
