//! Shared harness for end-to-end tests: real node processes over real TLS.
#![allow(dead_code, unreachable_pub, unused_imports)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use client::{Client, ClientConfig, Event, Events, PhoneNumber};

pub mod cluster;

/// A `switchboard node` process on a temporary data directory.
pub struct NodeProcess {
    child: Child,
    pub addr: String,
    pub data_dir: PathBuf,
    pub ca_path: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

/// The node binary under test: this build's, or another build named by
/// `TEST_NODE_BIN` (to show that a test fails on an older node).
pub fn binary() -> String {
    std::env::var("TEST_NODE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_switchboard").to_owned())
}

impl NodeProcess {
    /// Starts a node on a fresh data directory and a free port.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Like [`NodeProcess::start`] with extra `SWITCHBOARD_*` settings.
    pub fn start_with(env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().to_path_buf();
        let mut node = Self::spawn(&data_dir, "127.0.0.1:0", env);
        node._dir = Some(dir);
        node
    }

    /// Starts a node on `data_dir`, listening on `listen`.
    pub fn start_at(data_dir: &Path, listen: &str) -> Self {
        Self::spawn(data_dir, listen, &[])
    }

    /// Starts a node on `data_dir` with extra `SWITCHBOARD_*` settings.
    pub fn start_at_with(data_dir: &Path, listen: &str, env: &[(&str, &str)]) -> Self {
        Self::spawn(data_dir, listen, env)
    }

    /// Starts a node from a config file (its data dir and listen address
    /// come from the file).
    pub fn start_with_config(config: &Path, data_dir: &Path, listen: &str) -> Self {
        Self::spawn_with(Some(config), data_dir, listen, &[])
    }

    fn spawn(data_dir: &Path, listen: &str, env: &[(&str, &str)]) -> Self {
        Self::spawn_with(None, data_dir, listen, env)
    }

    fn spawn_with(
        config: Option<&Path>,
        data_dir: &Path,
        listen: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let mut command = Command::new(binary());
        command.arg("node");
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let mut child = command
            .args(["--listen", listen, "--data-dir"])
            .arg(data_dir)
            .envs(env.iter().copied())
            .env("SWITCHBOARD_FRAGMENTS", "16")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the node");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        // "switchboard node NAME listening on ADDR (TLS; clients trust PATH)"
        let line = lines
            .next()
            .expect("the node prints its address")
            .expect("readable stdout");
        let addr = line
            .split(" listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .to_owned();
        // Keep draining stdout so the node never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        NodeProcess {
            child,
            addr,
            ca_path: data_dir.join("tls").join("cert.pem"),
            data_dir: data_dir.to_path_buf(),
            _dir: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the process exits within `within`.
    pub fn exited_within(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, no chance to flush.
    pub fn kill9(mut self) -> (PathBuf, String, Option<tempfile::TempDir>) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        (self.data_dir.clone(), self.addr.clone(), self._dir.take())
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.child.wait().expect("wait")
    }

    pub fn client_config(&self) -> ClientConfig {
        let ca = std::fs::read(&self.ca_path).expect("ca file");
        let mut cfg = ClientConfig::new(vec![self.addr.clone()], ca);
        cfg.request_timeout = Duration::from_secs(10);
        cfg
    }

    /// Registers `phone` through the development code log and returns a token.
    pub async fn register(&self, phone: &PhoneNumber) -> String {
        test_support::register(&self.client_config(), &self.data_dir, phone).await
    }

    /// The newest code logged for `phone`.
    pub fn code_for(&self, phone: &PhoneNumber) -> String {
        test_support::code_for(&self.data_dir.join(test_support::CODE_LOG), phone)
    }

    /// Registers `user` and logs in on a low-level connection, which shows
    /// every refusal (the client library retries some by itself): what an
    /// attacker speaks.
    pub async fn raw_login(&self, user: &PhoneNumber) -> client::Connection {
        let token = self.register(user).await;
        let (conn, _pushes) = self.connect_raw(None).await;
        conn.login(&token).await.expect("login");
        conn
    }

    /// A low-level connection (what an attacker speaks), from `source`
    /// (None: the default address).
    pub async fn connect_raw(&self, source: Option<&str>) -> (client::Connection, client::Pushes) {
        let tls =
            client::Tls::from_ca_file(&self.ca_path, client::DEFAULT_SERVER_NAME).expect("tls");
        let source = source.map(|s| s.parse::<std::net::IpAddr>().expect("address"));
        client::Connection::connect_from(&self.addr, source, &tls, "raw", Duration::from_secs(30))
            .await
            .expect("connect")
    }

    /// Registers and logs in.
    pub async fn login(&self, phone: &str) -> (Client, Events, PhoneNumber) {
        let phone = PhoneNumber::parse(phone).expect("phone");
        let token = self.register(&phone).await;
        let (client, events) = Client::connect(self.client_config(), token)
            .await
            .expect("login");
        (client, events, phone)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The next event matching `keep`, within `secs` seconds.
pub async fn next_event<F>(events: &mut Events, secs: u64, mut keep: F) -> Event
where
    F: FnMut(&Event) -> bool,
{
    tokio::time::timeout(Duration::from_secs(secs), async {
        loop {
            match events.recv().await {
                Some(event) if keep(&event) => return event,
                Some(_) => {}
                None => panic!("the event stream ended"),
            }
        }
    })
    .await
    .expect("event in time")
}

pub fn is_message(e: &Event) -> bool {
    matches!(e, Event::Message { .. })
}

/// A raw TLS stream to the node, for tests that speak bytes.
pub async fn raw_tls(node: &NodeProcess) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    raw_tls_from(node, "127.0.0.1").await
}

/// A raw TLS stream to the node from the local address `from` (127.0.x.y,
/// bound before connecting: a host of its own to per-source limits).
pub async fn raw_tls_from(
    node: &NodeProcess,
    from: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    try_raw_tls_from(node, from).await.expect("tls")
}

/// TLS settings of a client that trusts `node`'s certificate.
pub fn tls_client_config(node: &NodeProcess) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(&node.ca_path).expect("pem") {
        roots.add(cert.expect("cert")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Like [`raw_tls_from`], for a node that may refuse the connection.
pub async fn try_raw_tls_from(
    node: &NodeProcess,
    from: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().expect("local address"))?;
    let tcp = socket
        .connect(node.addr.parse().expect("node address"))
        .await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    tokio_rustls::TlsConnector::from(tls_client_config(node))
        .connect(name, tcp)
        .await
}

/// Reads frames until the server closes; returns them.
pub async fn read_until_closed<R: tokio::io::AsyncRead + Unpin>(
    stream: &mut R,
) -> Vec<proto::ServerFrame> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let mut frames = Vec::new();
    let mut offset = 0;
    while let Ok(Some((frame, used))) =
        proto::decode_frame::<proto::ServerFrame>(&buf[offset..], proto::DEFAULT_MAX_FRAME_BYTES)
    {
        frames.push(frame);
        offset += used;
    }
    frames
}

/// Reads frames from a raw stream (carrying over `buf`) until one matches
/// `wanted`; panics after 10 s or if the stream ends first.
pub async fn next_frame<R, F>(stream: &mut R, buf: &mut Vec<u8>, wanted: F) -> proto::ServerFrame
where
    R: tokio::io::AsyncRead + Unpin,
    F: Fn(&proto::ServerFrame) -> bool,
{
    use tokio::io::AsyncReadExt;
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            while let Some((frame, used)) =
                proto::decode_frame::<proto::ServerFrame>(buf, proto::DEFAULT_MAX_FRAME_BYTES)
                    .expect("a well-formed frame")
            {
                buf.drain(..used);
                if wanted(&frame) {
                    return frame;
                }
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "the node closed the stream");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    found.expect("the frame within 10 s")
}

/// The error code a refused request got (panics if it was not refused).
pub fn refusal<T: std::fmt::Debug>(result: Result<T, client::ClientError>) -> proto::ErrorCode {
    match result {
        Err(client::ClientError::Server { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

pub use test_support::phone;
