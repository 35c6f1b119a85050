//! Filling the node's disk through mailboxes (issue 13, item 4): one
//! sender writing without end to a number nobody reads.

use client::{ClientError, PhoneNumber};
use proto::{ErrorCode, Request, Response};

use crate::common::NodeProcess;

/// The default share of one sender in one mailbox.
const SENDER_SHARE: u64 = 1_000;

/// A sender may hold only its share of a mailbox (here of a number with
/// no account): past it, sends are refused as rate-limited, while another
/// sender still reaches the same mailbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sender_cannot_fill_a_mailbox() {
    let node = NodeProcess::start();
    let nobody = PhoneNumber::parse("+15557000009").expect("phone");
    let attacker = PhoneNumber::parse("+15557000001").expect("phone");
    let conn = node.raw_login(&attacker).await;

    let (mut stored, mut refused) = (0u64, 0u64);
    for cid in 0..SENDER_SHARE + 100 {
        let answer = conn
            .request(Request::Send {
                to: nobody.clone(),
                client_msg_id: cid,
                payload: vec![0x42; 100],
            })
            .await;
        match answer {
            Ok(Response::ServerAck { .. }) => stored += 1,
            Err(ClientError::Server {
                code: ErrorCode::RateLimited { .. },
                ..
            }) => refused += 1,
            other => panic!("send {cid}: {other:?}"),
        }
    }
    assert_eq!(
        (stored, refused),
        (SENDER_SHARE, 100),
        "one sender's share of the mailbox"
    );

    // Another sender still gets through to the same mailbox.
    let (friend, _events, _) = node.login("+15557000002").await;
    friend
        .send(&nobody, b"a friend".to_vec())
        .await
        .expect("a friend's message is stored");
}
