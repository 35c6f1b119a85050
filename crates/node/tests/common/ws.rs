//! A browser's side of the node's WebSocket listener, and plain TLS.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use proto::{ClientFrame, Request, ServerFrame, decode_frame, encode_frame};
use rustls_pki_types::pem::PemObject;
use tokio_tungstenite::tungstenite::Message;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// TLS to `addr`, trusting `ca`.
pub async fn tls_to(
    addr: std::net::SocketAddr,
    ca: &std::path::Path,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca).expect("pem") {
        roots.add(cert.expect("cert")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

pub async fn connect(addr: std::net::SocketAddr, ca: &std::path::Path) -> Ws {
    let tls = tls_to(addr, ca).await.expect("tls");
    let (ws, _) = tokio_tungstenite::client_async(format!("wss://localhost:{}/", addr.port()), tls)
        .await
        .expect("websocket handshake");
    ws
}

/// Sends one frame and reads frames until one answers.
pub async fn exchange(ws: &mut Ws, frame: &ClientFrame) -> ServerFrame {
    let bytes = encode_frame(frame, proto::DEFAULT_MAX_FRAME_BYTES).expect("encode");
    ws.send(Message::Binary(bytes.into())).await.expect("send");
    let mut buf = Vec::new();
    loop {
        if let Some((frame, _)) =
            decode_frame::<ServerFrame>(&buf, proto::DEFAULT_MAX_FRAME_BYTES).expect("decode")
        {
            return frame;
        }
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("answer in time")
            .expect("open")
            .expect("message");
        if let Message::Binary(data) = message {
            buf.extend_from_slice(&data);
        }
    }
}

pub fn request(id: u32, request: Request) -> ClientFrame {
    ClientFrame::Request { id, request }
}

/// A node config on `dir` with both listeners on free loopback ports.
pub fn websocket_config(dir: &std::path::Path) -> node::NodeConfig {
    node::NodeConfig {
        listen: "127.0.0.1:0".into(),
        websocket_listen: Some("127.0.0.1:0".into()),
        data_dir: dir.to_path_buf(),
        fragments: 4,
        ..node::NodeConfig::default()
    }
}
