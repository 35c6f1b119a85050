//! `SendAfter` over a real node: a message whose earlier message is not
//! stored is refused, so a pipelined sender cannot be reordered by a
//! refusal; once the earlier one is stored it goes through, and the
//! recipient gets both in order.

mod common;

use std::time::Duration;

use client::{ClientError, Connection, Tls};
use common::{login, receive_first_bytes, register, start, test_config};
use proto::{ErrorCode, Request, Response};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_after_a_missing_message_is_refused_until_that_one_is_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, cfg) = start(test_config(dir.path())).await;
    let token = register(&cfg, dir.path(), "+15550000901").await;
    let (bob, mut bob_events) = login(&cfg, dir.path(), "+15550000902").await;

    let tls = Tls::new(&cfg.ca_pem, &cfg.server_name).expect("tls");
    let server = node.local_addr().to_string();
    let (conn, _pushes) = Connection::connect(&server, &tls, "test", Duration::from_secs(10))
        .await
        .expect("connect");
    conn.login(&token).await.expect("login");
    let send_after = |cid: u64, after: u64| Request::SendAfter {
        to: bob.user().clone(),
        client_msg_id: cid,
        after,
        payload: vec![cid as u8],
    };

    // Message 2 names message 1, which the node has never seen.
    match conn.request(send_after(2, 1)).await {
        Err(ClientError::Server {
            code: ErrorCode::EarlierMessageMissing,
            ..
        }) => {}
        other => panic!("expected EarlierMessageMissing, got {other:?}"),
    }
    // Message 1, then 2 again: both stored, in that order.
    let first = conn
        .request(Request::Send {
            to: bob.user().clone(),
            client_msg_id: 1,
            payload: vec![1],
        })
        .await
        .expect("first stored");
    let second = conn.request(send_after(2, 1)).await.expect("second stored");
    let (Response::ServerAck { msg_id: id1, .. }, Response::ServerAck { msg_id: id2, .. }) =
        (first, second)
    else {
        panic!("expected two server acks");
    };
    assert!(id1 < id2, "stored in order: {id1} then {id2}");

    let got = receive_first_bytes(&bob, &mut bob_events, 2).await;
    assert_eq!(got, [1, 2], "delivered once each, in order");
    conn.close();
    bob.close().await;
    node.shutdown().await;
}
