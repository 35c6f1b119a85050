//! TLS for node links: mutual authentication against the cluster CA, and a
//! generator for that CA and the nodes' certificates.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::crypto::ring;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::LinkTlsConfig;
use crate::{ClusterError, Result};

/// Both ends of a node link's TLS.
#[derive(Clone)]
pub struct LinkTls {
    /// For links peers open to us: requires a client certificate from the CA.
    pub acceptor: TlsAcceptor,
    /// For links we open: presents our certificate, checks the peer's name.
    pub connector: TlsConnector,
}

impl std::fmt::Debug for LinkTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkTls")
    }
}

fn tls_err(what: &str, path: &Path) -> impl FnOnce(rustls_pki_types::pem::Error) -> ClusterError {
    let context = format!("{what} {}", path.display());
    move |e| ClusterError::Tls(format!("{context}: {e}"))
}

fn required<'a>(value: &'a Option<PathBuf>, key: &str) -> Result<&'a Path> {
    value
        .as_deref()
        .ok_or_else(|| ClusterError::Tls(format!("cluster.tls.{key} is not set")))
}

/// Loads the node's certificate, key and the cluster CA.
pub fn load(config: &LinkTlsConfig) -> Result<LinkTls> {
    let cert_path = required(&config.cert, "cert")?;
    let key_path = required(&config.key, "key")?;
    let ca_path = required(&config.ca, "ca")?;
    let chain = CertificateDer::pem_file_iter(cert_path)
        .map_err(tls_err("certificate", cert_path))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(tls_err("certificate", cert_path))?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(tls_err("key", key_path))?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(ca_path).map_err(tls_err("CA", ca_path))? {
        roots
            .add(ca.map_err(tls_err("CA", ca_path))?)
            .map_err(|e| ClusterError::Tls(format!("CA {}: {e}", ca_path.display())))?;
    }
    let roots = Arc::new(roots);
    let provider = Arc::new(ring::default_provider());
    let rustls_err = |e: rustls::Error| ClusterError::Tls(e.to_string());

    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| ClusterError::Tls(e.to_string()))?;
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(rustls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(rustls_err)?;
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(rustls_err)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(rustls_err)?;
    Ok(LinkTls {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        connector: TlsConnector::from(Arc::new(client)),
    })
}

/// An acceptor no client can pass: it asks for a client certificate signed
/// by a key made here and thrown away. For ractor_cluster's own listener,
/// which cannot be turned off (links come in through `accept.rs`).
pub fn sealed_acceptor() -> Result<TlsAcceptor> {
    let gen_err = |e: rcgen::Error| ClusterError::Tls(format!("cannot generate: {e}"));
    let rustls_err = |e: rustls::Error| ClusterError::Tls(e.to_string());
    let pair =
        rcgen::generate_simple_self_signed(vec!["sealed.invalid".to_owned()]).map_err(gen_err)?;
    let cert = pair.cert.der().clone();
    let key = PrivateKeyDer::try_from(pair.signing_key.serialize_der())
        .map_err(|e| ClusterError::Tls(e.to_string()))?;
    let mut roots = RootCertStore::empty();
    roots.add(cert.clone()).map_err(rustls_err)?;
    let provider = Arc::new(ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| ClusterError::Tls(e.to_string()))?;
    let server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(rustls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert], key)
        .map_err(rustls_err)?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// The name a peer's certificate must carry.
pub fn server_name(node: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(node.to_owned())
        .map_err(|e| ClusterError::Tls(format!("node name {node:?} is not a DNS name: {e}")))
}

/// Files written by [`generate`].
#[derive(Debug)]
pub struct GeneratedFiles {
    /// The CA certificate (`ca.pem`), to be given to every node.
    pub ca_cert: PathBuf,
    /// Per node: (certificate, key).
    pub nodes: Vec<(PathBuf, PathBuf)>,
}

/// Writes a new cluster CA and, for each node name, a certificate for that
/// name signed by it, into `dir`: `ca.pem`, `ca-key.pem`, `<name>.pem`,
/// `<name>-key.pem`. Keys are written readable by the owner only.
pub fn generate(dir: &Path, names: &[String]) -> Result<GeneratedFiles> {
    let gen_err = |e: rcgen::Error| ClusterError::Tls(format!("cannot generate: {e}"));
    std::fs::create_dir_all(dir).map_err(io(dir))?;

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "switchboard cluster CA");
    let ca_key = KeyPair::generate().map_err(gen_err)?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(gen_err)?;
    let ca_cert = dir.join("ca.pem");
    write(&ca_cert, ca.pem().as_bytes(), false)?;
    write(&dir.join("ca-key.pem"), ca_key_pem.as_bytes(), true)?;

    let mut nodes = Vec::new();
    for name in names {
        server_name(name)?;
        let mut params = CertificateParams::new(vec![name.clone()]).map_err(gen_err)?;
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().map_err(gen_err)?;
        let cert = params.signed_by(&key, &ca).map_err(gen_err)?;
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}-key.pem"));
        write(&cert_path, cert.pem().as_bytes(), false)?;
        write(&key_path, key.serialize_pem().as_bytes(), true)?;
        nodes.push((cert_path, key_path));
    }
    Ok(GeneratedFiles { ca_cert, nodes })
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ClusterError + '_ {
    move |source| ClusterError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn write(path: &Path, bytes: &[u8], private: bool) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn link_config(dir: &Path, name: &str) -> LinkTlsConfig {
        LinkTlsConfig {
            cert: Some(dir.join(format!("{name}.pem"))),
            key: Some(dir.join(format!("{name}-key.pem"))),
            ca: Some(dir.join("ca.pem")),
            insecure_plaintext: false,
        }
    }

    async fn handshake(server: &LinkTls, client: &LinkTls, name: &str) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let acceptor = server.acceptor.clone();
        let accept = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            let mut tls = acceptor.accept(tcp).await?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await?;
            std::io::Result::Ok(byte[0])
        });
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = server_name(name).map_err(std::io::Error::other)?;
        let mut tls = client.connector.connect(name, tcp).await?;
        tls.write_all(&[42]).await?;
        tls.flush().await?;
        let got = accept.await.map_err(std::io::Error::other)??;
        assert_eq!(got, 42);
        Ok(())
    }

    #[tokio::test]
    async fn nodes_of_one_ca_link_and_strangers_do_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let names = vec!["n1".to_owned(), "n2".to_owned()];
        generate(dir.path(), &names).expect("generate");
        let n1 = load(&link_config(dir.path(), "n1")).expect("n1");
        let n2 = load(&link_config(dir.path(), "n2")).expect("n2");
        handshake(&n1, &n2, "n1").await.expect("n2 reaches n1");

        // Dialing n1 while expecting n2's name fails.
        assert!(handshake(&n1, &n2, "n2").await.is_err());

        // A node of another CA is refused.
        let other = tempfile::tempdir().expect("tempdir");
        generate(other.path(), &["n3".to_owned()]).expect("generate");
        let stranger = load(&link_config(other.path(), "n3")).expect("n3");
        assert!(handshake(&n1, &stranger, "n1").await.is_err());
    }

    #[test]
    fn missing_files_are_named() {
        let err = load(&LinkTlsConfig {
            cert: Some("/nonexistent/n1.pem".into()),
            key: Some("/nonexistent/n1-key.pem".into()),
            ca: Some("/nonexistent/ca.pem".into()),
            insecure_plaintext: false,
        })
        .expect_err("no files");
        assert!(err.to_string().contains("/nonexistent/n1.pem"), "{err}");
    }
}
