//! Browsers reach the node over WebSocket (over TLS): the same frames, in
//! binary messages, served by the same session actors.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use node::{NodeBuilder, NodeConfig};
use proto::{
    ClientFrame, ErrorCode, PROTOCOL_VERSION, PhoneNumber, Request, Response, ServerFrame,
    decode_frame, encode_frame,
};
use rustls_pki_types::pem::PemObject;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

async fn connect(addr: std::net::SocketAddr, ca: &std::path::Path) -> Ws {
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
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("tls");
    let (ws, _) = tokio_tungstenite::client_async(format!("wss://localhost:{}/", addr.port()), tls)
        .await
        .expect("websocket handshake");
    ws
}

/// Sends one frame and reads frames until one answers.
async fn exchange(ws: &mut Ws, frame: &ClientFrame) -> ServerFrame {
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

fn request(id: u32, request: Request) -> ClientFrame {
    ClientFrame::Request { id, request }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_registers_and_logs_in_over_websocket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = NodeConfig {
        listen: "127.0.0.1:0".into(),
        websocket_listen: Some("127.0.0.1:0".into()),
        data_dir: dir.path().to_path_buf(),
        fragments: 4,
        ..NodeConfig::default()
    };
    let node = NodeBuilder::new(config).start().await.expect("start");
    let addr = node.websocket_addr().expect("websocket enabled");
    let ca = node.certificate().cert_path.clone();

    let mut ws = connect(addr, &ca).await;
    let hello = ClientFrame::Hello {
        version: PROTOCOL_VERSION,
        agent: "browser".into(),
    };
    assert!(matches!(
        exchange(&mut ws, &hello).await,
        ServerFrame::Welcome { .. }
    ));
    let phone = PhoneNumber::parse("+15550000601").expect("phone");
    let sent = exchange(
        &mut ws,
        &request(
            1,
            Request::RequestCode {
                phone: phone.clone(),
            },
        ),
    )
    .await;
    assert!(matches!(
        sent,
        ServerFrame::Response {
            id: 1,
            response: Response::CodeSent { .. }
        }
    ));
    let log = std::fs::read_to_string(dir.path().join("verification-codes.log")).expect("log");
    let code = log
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{phone} ")))
        .expect("code")
        .to_owned();
    let verified = exchange(
        &mut ws,
        &request(
            2,
            Request::Verify {
                phone: phone.clone(),
                code,
            },
        ),
    )
    .await;
    let ServerFrame::Response {
        response: Response::Verified { token, .. },
        ..
    } = verified
    else {
        panic!("expected Verified, got {verified:?}");
    };
    let logged_in = exchange(&mut ws, &request(3, Request::Login { token })).await;
    assert!(matches!(
        logged_in,
        ServerFrame::Response { id: 3, response: Response::LoggedIn { ref user } } if *user == phone
    ));
    let pong = exchange(&mut ws, &request(4, Request::Ping)).await;
    assert!(matches!(
        pong,
        ServerFrame::Response {
            id: 4,
            response: Response::Pong
        }
    ));

    // The same rules as over TCP: a request before hello closes the connection.
    let mut rude = connect(addr, &ca).await;
    let refused = exchange(&mut rude, &request(9, Request::Ping)).await;
    assert!(matches!(
        refused,
        ServerFrame::Error {
            code: ErrorCode::NotAuthenticated,
            ..
        }
    ));
    node.shutdown().await;
}
