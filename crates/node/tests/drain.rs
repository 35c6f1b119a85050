//! Draining a node: it stops accepting on every listener first.

use std::time::Duration;

use common::ws::{connect, exchange, request, tls_to, websocket_config};
use node::NodeBuilder;
use proto::{ClientFrame, PROTOCOL_VERSION, Request, Response, ServerFrame};

mod common;

/// Draining stops both listeners: no new connection gets a TLS handshake on
/// either port (the WebSocket listener used to go on accepting, and the TLS
/// one was restarted by its supervisor), while an open connection is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_listening_stops_the_websocket_listener_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = websocket_config(dir.path());
    let node = NodeBuilder::new(config).start().await.expect("start");
    let ws_addr = node.websocket_addr().expect("websocket enabled");
    let tls_addr = node.local_addr();
    let ca = node.certificate().cert_path.clone();
    let mut open = connect(ws_addr, &ca).await;
    let hello = ClientFrame::Hello {
        version: PROTOCOL_VERSION,
        agent: "browser".into(),
    };
    assert!(matches!(
        exchange(&mut open, &hello).await,
        ServerFrame::Welcome { .. }
    ));

    node.stop_listening().await;
    // Give a restarted listener (the old fault) time to come back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for addr in [ws_addr, tls_addr] {
        let handshake = tokio::time::timeout(Duration::from_secs(3), tls_to(addr, &ca)).await;
        assert!(
            !matches!(handshake, Ok(Ok(_))),
            "{addr} still completes TLS handshakes after the node stopped listening"
        );
    }
    let ping = request(1, Request::Ping);
    assert!(matches!(
        exchange(&mut open, &ping).await,
        ServerFrame::Response {
            response: Response::Pong,
            ..
        }
    ));
    node.shutdown().await;
}
