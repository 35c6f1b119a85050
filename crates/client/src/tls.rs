//! TLS settings: which certificates to trust and which name to expect.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::ring;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;

use crate::{ClientError, Result};

/// A TLS connector that trusts the given CA (or self-signed node certificate)
/// and checks the node's certificate against one server name.
#[derive(Clone)]
pub struct Tls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Trusts every certificate in `ca_pem` (PEM text); expects `server_name`
    /// (a DNS name or an IP address) in the node's certificate.
    pub fn new(ca_pem: &[u8], server_name: &str) -> Result<Self> {
        let certs = CertificateDer::pem_slice_iter(ca_pem)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| ClientError::Config(format!("cannot read the CA PEM: {e}")))?;
        Self::from_certs(certs, server_name)
    }

    /// Like [`Tls::new`], reading the PEM file at `path`.
    pub fn from_ca_file(path: &Path, server_name: &str) -> Result<Self> {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| ClientError::Config(format!("cannot open {}: {e}", path.display())))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| ClientError::Config(format!("cannot read {}: {e}", path.display())))?;
        Self::from_certs(certs, server_name)
    }

    fn from_certs(certs: Vec<CertificateDer<'static>>, server_name: &str) -> Result<Self> {
        if certs.is_empty() {
            return Err(ClientError::Config(
                "the CA PEM holds no certificate".to_owned(),
            ));
        }
        let mut roots = RootCertStore::empty();
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| ClientError::Config(format!("unusable CA certificate: {e}")))?;
        }
        let config =
            rustls::ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| ClientError::Config(format!("TLS setup: {e}")))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| ClientError::Config(format!("bad server name {server_name:?}: {e}")))?;
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    pub(crate) fn connector(&self) -> &TlsConnector {
        &self.connector
    }

    pub(crate) fn server_name(&self) -> ServerName<'static> {
        self.server_name.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_pem_without_certificates() {
        assert!(matches!(
            Tls::new(b"not a pem", "localhost"),
            Err(ClientError::Config(_))
        ));
    }

    #[test]
    fn refuses_a_missing_file() {
        let err = Tls::from_ca_file(Path::new("/nonexistent/ca.pem"), "localhost")
            .expect_err("missing file");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
