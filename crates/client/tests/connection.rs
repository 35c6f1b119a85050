//! One [`Connection`] against the fake node: hello, correlation, pushes,
//! limits, timeouts.

mod support;

use std::time::Duration;

use client::{ClientError, Connection, DisconnectReason, Tls};
use proto::{ErrorCode, Request, Response, ServerFrame};
use support::{FakeNode, Options, phone, token_for};

const TIMEOUT: Duration = Duration::from_secs(5);

async fn open(node: &FakeNode, request_timeout: Duration) -> (Connection, client::Pushes) {
    let tls = Tls::new(&node.ca_pem, "localhost").expect("tls");
    Connection::connect(&node.addr.to_string(), &tls, "test", request_timeout)
        .await
        .expect("connect")
}

#[tokio::test]
async fn hello_welcome_and_answers() {
    let node = FakeNode::start(Options {
        idle_timeout_secs: 42,
        max_frame_bytes: 4096,
    })
    .await;
    let (conn, _pushes) = open(&node, TIMEOUT).await;
    assert_eq!(conn.welcome().node, "fake");
    assert_eq!(conn.welcome().max_frame_bytes, 4096);
    assert_eq!(conn.welcome().idle_timeout, Duration::from_secs(42));
    assert_eq!(
        conn.request(Request::Ping).await.expect("pong"),
        Response::Pong
    );
    let a = phone("+15550000001");
    let code_sent = conn
        .request(Request::RequestCode { phone: a.clone() })
        .await
        .expect("code");
    assert_eq!(
        code_sent,
        Response::CodeSent {
            expires_in_secs: 300
        }
    );
    let wrong = conn
        .request(Request::Verify {
            phone: a,
            code: "000000".into(),
        })
        .await
        .expect_err("wrong code");
    assert_eq!(wrong.code(), Some(ErrorCode::InvalidCode));
    // Requests that need a login are refused before one.
    let refused = conn
        .request(Request::Ack { ids: vec![1] })
        .await
        .expect_err("not logged in");
    assert_eq!(refused.code(), Some(ErrorCode::NotAuthenticated));
}

#[tokio::test]
async fn the_server_name_is_checked() {
    let node = FakeNode::start(Options::default()).await;
    let tls = Tls::new(&node.ca_pem, "example.org").expect("tls");
    let err = Connection::connect(&node.addr.to_string(), &tls, "test", TIMEOUT)
        .await
        .expect_err("wrong name");
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
}

#[tokio::test]
async fn concurrent_requests_get_their_own_answers() {
    let node = FakeNode::start(Options::default()).await;
    let (conn, _pushes) = open(&node, TIMEOUT).await;
    conn.login(&token_for(&phone("+15550000001")))
        .await
        .expect("login");
    let conn = std::sync::Arc::new(conn);
    let mut tasks = Vec::new();
    for i in 0..64u32 {
        let conn = std::sync::Arc::clone(&conn);
        tasks.push(tokio::spawn(async move {
            let body = i.to_be_bytes().to_vec();
            let answer = conn
                .request(Request::Extension {
                    namespace: "echo".into(),
                    body: body.clone(),
                })
                .await
                .expect("echo");
            assert_eq!(answer, Response::Extension { body });
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
}

#[tokio::test]
async fn frames_over_the_limit_are_refused_locally() {
    let node = FakeNode::start(Options {
        idle_timeout_secs: 30,
        max_frame_bytes: 1024,
    })
    .await;
    let (conn, _pushes) = open(&node, TIMEOUT).await;
    conn.login(&token_for(&phone("+15550000001")))
        .await
        .expect("login");
    let err = conn
        .request(Request::Extension {
            namespace: "echo".into(),
            body: vec![0; 2000],
        })
        .await
        .expect_err("too large");
    match err {
        ClientError::FrameTooLarge { len, max } => {
            assert_eq!(max, 1024);
            assert!(len > 2000, "{len}");
        }
        other => panic!("expected FrameTooLarge, got {other}"),
    }
    assert!(!node.requests_seen().contains(&"Extension".to_owned()));
    // The connection is still fine.
    assert_eq!(
        conn.request(Request::Ping).await.expect("pong"),
        Response::Pong
    );
}

#[tokio::test]
async fn pushes_reach_the_push_channel() {
    let node = FakeNode::start(Options::default()).await;
    let (alice, _) = open(&node, TIMEOUT).await;
    let (bob, mut bob_pushes) = open(&node, TIMEOUT).await;
    let (a, b) = (phone("+15550000001"), phone("+15550000002"));
    alice.login(&token_for(&a)).await.expect("login a");
    bob.login(&token_for(&b)).await.expect("login b");
    let ack = alice
        .request(Request::Send {
            to: b.clone(),
            client_msg_id: 9,
            payload: b"hi".to_vec(),
        })
        .await
        .expect("send");
    let Response::ServerAck { msg_id, .. } = ack else {
        panic!("expected ServerAck, got {ack:?}")
    };
    let push = tokio::time::timeout(TIMEOUT, bob_pushes.recv())
        .await
        .expect("in time")
        .expect("a push");
    match push {
        ServerFrame::Deliver {
            msg_id: got,
            from,
            client_msg_id,
            payload,
            ..
        } => {
            assert_eq!((got, from, client_msg_id), (msg_id, a, 9));
            assert_eq!(payload, b"hi");
        }
        other => panic!("expected Deliver, got {other:?}"),
    }
}

#[tokio::test]
async fn unanswered_requests_time_out() {
    let node = FakeNode::start(Options::default()).await;
    let (conn, _pushes) = open(&node, Duration::from_millis(200)).await;
    node.set_mute(true);
    let started = tokio::time::Instant::now();
    let err = conn.request(Request::Ping).await.expect_err("muted");
    assert!(matches!(err, ClientError::Timeout), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_node_that_stops_answering_pings_is_left() {
    let node = FakeNode::start(Options {
        idle_timeout_secs: 1,
        max_frame_bytes: 4096,
    })
    .await;
    let (conn, mut pushes) = open(&node, Duration::from_millis(300)).await;
    // Pings flow every third of a second.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let pings = node.requests_seen().iter().filter(|r| *r == "Ping").count();
    assert!((2..=5).contains(&pings), "{pings} pings");
    node.set_mute(true);
    let reason = tokio::time::timeout(TIMEOUT, conn.closed())
        .await
        .expect("closed in time");
    assert_eq!(reason, DisconnectReason::Timeout);
    assert!(pushes.recv().await.is_none(), "the push channel ends");
}

#[tokio::test]
async fn a_dropped_socket_ends_the_connection() {
    let node = FakeNode::start(Options::default()).await;
    let (conn, mut pushes) = open(&node, TIMEOUT).await;
    conn.login(&token_for(&phone("+15550000001")))
        .await
        .expect("login");
    node.drop_connections();
    let end = tokio::time::timeout(TIMEOUT, pushes.recv())
        .await
        .expect("in time");
    assert!(end.is_none());
    let reason = conn.disconnect_reason().expect("closed");
    assert!(
        matches!(reason, DisconnectReason::Eof | DisconnectReason::Io(_)),
        "{reason}"
    );
    let err = conn.request(Request::Ping).await.expect_err("closed");
    assert!(matches!(err, ClientError::ConnectionLost(_)), "{err}");
}

#[tokio::test]
async fn closing_is_reported_as_the_reason() {
    let node = FakeNode::start(Options::default()).await;
    let (conn, _pushes) = open(&node, TIMEOUT).await;
    node.close_all(proto::CloseReason::ShuttingDown, 1234);
    let reason = tokio::time::timeout(TIMEOUT, conn.closed())
        .await
        .expect("in time");
    assert_eq!(
        reason,
        DisconnectReason::Closing {
            reason: proto::CloseReason::ShuttingDown,
            retry_after_ms: 1234
        }
    );
    assert_eq!(reason.retry_after_ms(), Some(1234));
    assert!(!reason.is_final());
}
