//! Browsers reach the node over WebSocket (over TLS): the same frames, in
//! binary messages, served by the same session actors.

use common::ws::{connect, exchange, request, websocket_config};
use node::NodeBuilder;
use proto::{
    ClientFrame, ErrorCode, PROTOCOL_VERSION, PhoneNumber, Request, Response, ServerFrame,
};

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_registers_and_logs_in_over_websocket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = websocket_config(dir.path());
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
    let code = test_support::code_for(&dir.path().join(test_support::CODE_LOG), &phone);
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
