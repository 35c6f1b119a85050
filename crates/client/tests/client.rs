//! [`Client`] against the fake node: registration, messaging, receipts,
//! reconnect, resend without loss, redelivery hiding, final disconnects.

mod support;

use std::time::Duration;

use client::{
    Backoff, Client, ClientConfig, ClientError, DisconnectReason, Event, Events, PresenceStatus,
    ReceiptKind,
};
use proto::{CloseReason, ErrorCode, PhoneNumber, ServerFrame};
use support::{CODE, FakeNode, Options, phone, token_for};

const WAIT: Duration = Duration::from_secs(5);

fn config(nodes: &[&FakeNode]) -> ClientConfig {
    let mut ca_pem = Vec::new();
    for node in nodes {
        ca_pem.extend_from_slice(&node.ca_pem);
    }
    let mut cfg = ClientConfig::new(nodes.iter().map(|n| n.addr.to_string()).collect(), ca_pem);
    cfg.request_timeout = Duration::from_secs(2);
    cfg.backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
    };
    cfg
}

async fn login(node: &FakeNode, user: &PhoneNumber) -> (Client, Events) {
    Client::connect(config(&[node]), token_for(user))
        .await
        .expect("connect")
}

async fn next(events: &mut Events) -> Event {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("an event in time")
        .expect("events still open")
}

async fn quiet(events: &mut Events, for_: Duration) {
    if let Ok(Some(event)) = tokio::time::timeout(for_, events.recv()).await {
        panic!("expected no event, got {event:?}");
    }
}

/// Waits (at most 5 s) until `done` holds: acks are not answered, so a
/// test waits for the fake node to have applied one.
async fn until(done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "not within 5 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn text(event: &Event) -> String {
    match event {
        Event::Message { payload, .. } => String::from_utf8_lossy(payload).into_owned(),
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test]
async fn register_verify_then_message_and_receipts() {
    let node = FakeNode::start(Options::default()).await;
    let cfg = config(&[&node]);
    let (a, b) = (phone("+15550000001"), phone("+15550000002"));
    assert_eq!(client::request_code(&cfg, &a).await.expect("code"), 300);
    let wrong = client::verify(&cfg, &a, "999999").await.expect_err("wrong");
    assert_eq!(wrong.code(), Some(ErrorCode::InvalidCode));
    let (token, expires_at_ms) = client::verify(&cfg, &a, CODE).await.expect("verify");
    assert!(expires_at_ms > 0);

    let (alice, mut alice_events) = Client::connect(cfg.clone(), token).await.expect("alice");
    assert_eq!(alice.user(), &a);
    assert_eq!(next(&mut alice_events).await, Event::Connected);
    let (bob, mut bob_events) = login(&node, &b).await;
    assert_eq!(next(&mut bob_events).await, Event::Connected);

    let ack = alice.send(&b, b"hello bob".to_vec()).await.expect("send");
    let message = next(&mut bob_events).await;
    assert_eq!(text(&message), "hello bob");
    let Event::Message {
        msg_id,
        from,
        client_msg_id,
        server_ts,
        ..
    } = message.clone()
    else {
        unreachable!()
    };
    assert_eq!(
        (msg_id, &from, client_msg_id, server_ts),
        (ack.msg_id, &a, ack.client_msg_id, ack.server_ts)
    );

    bob.ack_event(&message).await.expect("ack");
    until(|| node.mailbox(&b).is_empty()).await;
    match next(&mut alice_events).await {
        Event::Receipt {
            kind, by, msg_ids, ..
        } => assert_eq!(
            (kind, by, msg_ids),
            (ReceiptKind::Delivered, b.clone(), vec![msg_id])
        ),
        other => panic!("expected a delivered receipt, got {other:?}"),
    }
    bob.read(&a, vec![msg_id]).await.expect("read");
    let read = next(&mut alice_events).await;
    match &read {
        Event::Receipt {
            kind, by, msg_ids, ..
        } => assert_eq!((*kind, by, msg_ids), (ReceiptKind::Read, &b, &vec![msg_id])),
        other => panic!("expected a read receipt, got {other:?}"),
    }
    alice.ack_event(&read).await.expect("ack receipt");
}

#[tokio::test]
async fn typing_presence_and_extensions() {
    let node = FakeNode::start(Options::default()).await;
    let (a, b, c) = (
        phone("+15550000001"),
        phone("+15550000002"),
        phone("+15550000003"),
    );
    let (alice, mut alice_events) = login(&node, &a).await;
    let (bob, mut bob_events) = login(&node, &b).await;
    next(&mut alice_events).await;
    next(&mut bob_events).await;
    alice.typing(&b, true).await.expect("typing");
    assert_eq!(
        next(&mut bob_events).await,
        Event::Typing {
            from: a.clone(),
            active: true
        }
    );
    bob.subscribe_presence(vec![a.clone(), c.clone()])
        .await
        .expect("subscribe");
    assert_eq!(
        next(&mut bob_events).await,
        Event::Presence {
            user: a,
            status: PresenceStatus::Online
        }
    );
    assert_eq!(
        next(&mut bob_events).await,
        Event::Presence {
            user: c,
            status: PresenceStatus::Offline { last_seen_ms: None }
        }
    );
    assert_eq!(
        alice
            .extension("echo", b"ping".to_vec())
            .await
            .expect("echo"),
        b"ping"
    );
    let err = alice
        .extension("nope", Vec::new())
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Some(ErrorCode::UnknownNamespace));
}

#[tokio::test]
async fn the_backlog_arrives_after_login_until_acked() {
    let node = FakeNode::start(Options::default()).await;
    let (a, b) = (phone("+15550000001"), phone("+15550000002"));
    let (alice, _alice_events) = login(&node, &a).await;
    for i in 0..3 {
        alice
            .send(&b, format!("m{i}").into_bytes())
            .await
            .expect("send");
    }
    // Bob logs in, sees the backlog in order, and does not ack.
    let (bob, mut bob_events) = login(&node, &b).await;
    assert_eq!(next(&mut bob_events).await, Event::Connected);
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(text(&next(&mut bob_events).await));
    }
    assert_eq!(seen, ["m0", "m1", "m2"]);
    bob.close().await;
    assert_eq!(
        next(&mut bob_events).await,
        Event::Disconnected {
            reason: DisconnectReason::Local
        }
    );
    assert!(bob_events.recv().await.is_none(), "events end after close");

    // A new session gets them again; acking empties the mailbox.
    let (bob, mut bob_events) = login(&node, &b).await;
    next(&mut bob_events).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(next(&mut bob_events).await.ack_id().expect("id"));
    }
    bob.ack(ids).await.expect("ack");
    until(|| node.mailbox(&b).is_empty()).await;
}

#[tokio::test]
async fn reconnects_after_the_node_drops_the_socket() {
    let node = FakeNode::start(Options::default()).await;
    let (a, b) = (phone("+15550000001"), phone("+15550000002"));
    let (alice, mut events) = login(&node, &a).await;
    assert_eq!(next(&mut events).await, Event::Connected);
    node.drop_connections();
    match next(&mut events).await {
        Event::Disconnected { reason } => assert!(!reason.is_final(), "{reason}"),
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert_eq!(next(&mut events).await, Event::Connected);
    assert_eq!(node.logins(), 2);
    alice.send(&b, b"after".to_vec()).await.expect("send");
    assert_eq!(node.mailbox(&b).len(), 1);
}

#[tokio::test]
async fn a_lost_ack_is_recovered_by_resending_the_same_id() {
    let node = FakeNode::start(Options::default()).await;
    let (a, b) = (phone("+15550000001"), phone("+15550000002"));
    let (alice, mut events) = login(&node, &a).await;
    next(&mut events).await;
    node.lose_acks(1);
    let ack = tokio::time::timeout(WAIT, alice.send(&b, b"once".to_vec()))
        .await
        .expect("acked in time")
        .expect("send");
    let seen = node.sends_seen();
    assert_eq!(seen.len(), 2, "sent, lost, sent again: {seen:?}");
    assert_eq!(seen[0], seen[1], "same client_msg_id both times");
    assert_eq!(seen[0].1, ack.client_msg_id);
    assert_eq!(node.mailbox(&b), vec![ack.msg_id], "stored once");
}

#[tokio::test]
async fn unacked_sends_are_resent_in_order() {
    let node = FakeNode::start(Options::default()).await;
    let (a, b) = (phone("+15550000001"), phone("+15550000002"));
    let (alice, mut events) = login(&node, &a).await;
    next(&mut events).await;
    node.lose_acks(1);
    let (r0, r1, r2, r3, r4) = tokio::join!(
        alice.send(&b, b"0".to_vec()),
        alice.send(&b, b"1".to_vec()),
        alice.send(&b, b"2".to_vec()),
        alice.send(&b, b"3".to_vec()),
        alice.send(&b, b"4".to_vec()),
    );
    let acks: Vec<_> = [r0, r1, r2, r3, r4]
        .into_iter()
        .map(|r| r.expect("acked"))
        .collect();
    let ids: Vec<_> = acks.iter().map(|a| a.msg_id).collect();
    assert_eq!(node.mailbox(&b), ids, "each stored once, in order");
    let (bob, mut bob_events) = login(&node, &b).await;
    next(&mut bob_events).await;
    let mut texts = Vec::new();
    for _ in 0..5 {
        texts.push(text(&next(&mut bob_events).await));
    }
    assert_eq!(texts, ["0", "1", "2", "3", "4"]);
    drop(bob);
}

#[tokio::test]
async fn sends_made_while_down_go_out_after_the_reconnect() {
    let node = FakeNode::start(Options::default()).await;
    let (a, b) = (phone("+15550000001"), phone("+15550000002"));
    let mut cfg = config(&[&node]);
    // Long enough to queue sends while the link is down.
    cfg.backoff = Backoff {
        initial: Duration::from_millis(300),
        max: Duration::from_millis(300),
    };
    let (alice, mut events) = Client::connect(cfg, token_for(&a)).await.expect("connect");
    next(&mut events).await;
    node.close_all(CloseReason::ShuttingDown, 300);
    assert!(matches!(
        next(&mut events).await,
        Event::Disconnected { .. }
    ));
    let started = tokio::time::Instant::now();
    let ack = alice.send(&b, b"queued".to_vec()).await.expect("send");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "retry_after honoured: {:?}",
        started.elapsed()
    );
    assert_eq!(node.mailbox(&b), vec![ack.msg_id]);
}

#[tokio::test]
async fn redeliveries_are_hidden_and_lost_acks_repeated() {
    let node = FakeNode::start(Options::default()).await;
    let b = phone("+15550000002");
    let (bob, mut events) = login(&node, &b).await;
    next(&mut events).await;
    let deliver = |msg_id| ServerFrame::Deliver {
        msg_id,
        from: phone("+15550000001"),
        client_msg_id: msg_id,
        server_ts: 1,
        payload: b"x".to_vec(),
    };
    node.push(&b, deliver(1000));
    node.push(&b, deliver(1000));
    node.push(&b, deliver(1001));
    assert_eq!(next(&mut events).await.ack_id(), Some(1000));
    assert_eq!(next(&mut events).await.ack_id(), Some(1001));
    quiet(&mut events, Duration::from_millis(200)).await;

    // 1000 acked by the app: a redelivery is acked again, silently.
    let acks = || node.requests_seen().iter().filter(|r| *r == "Ack").count();
    let acks_before = acks();
    bob.ack(vec![1000]).await.expect("ack");
    until(|| acks() == acks_before + 1).await;
    let acks_before = acks();
    node.push(&b, deliver(1000));
    // 1001 not acked yet: a redelivery is just dropped.
    node.push(&b, deliver(1001));
    quiet(&mut events, Duration::from_millis(300)).await;
    assert_eq!(acks(), acks_before + 1);
}

/// Two copies of one message (same sender and client id, two server ids,
/// as two sides of a partitioned cluster may store) are shown once; the
/// second copy is acknowledged so that the node drops it.
#[tokio::test]
async fn a_second_copy_of_a_message_under_another_id_is_hidden_and_acked() {
    let node = FakeNode::start(Options::default()).await;
    let b = phone("+15550000002");
    let (_bob, mut events) = login(&node, &b).await;
    next(&mut events).await;
    let deliver = |msg_id, client_msg_id| ServerFrame::Deliver {
        msg_id,
        from: phone("+15550000001"),
        client_msg_id,
        server_ts: 1,
        payload: b"x".to_vec(),
    };
    node.push(&b, deliver(2000, 7));
    node.push(&b, deliver(9000, 7));
    node.push(&b, deliver(2001, 8));
    assert_eq!(next(&mut events).await.ack_id(), Some(2000));
    assert_eq!(next(&mut events).await.ack_id(), Some(2001));
    quiet(&mut events, Duration::from_millis(200)).await;
    let acks = node.requests_seen().iter().filter(|r| *r == "Ack").count();
    assert_eq!(acks, 1, "the second copy is acked");
}

/// The same for a group message stored by two owners of its group's home
/// (two positions); the same sender and client id in another group, or
/// 1:1, is another message.
#[tokio::test]
async fn a_second_copy_of_a_group_message_is_hidden_and_acked() {
    let node = FakeNode::start(Options::default()).await;
    let b = phone("+15550000002");
    let (_bob, mut events) = login(&node, &b).await;
    next(&mut events).await;
    let deliver = |msg_id, group, position| ServerFrame::GroupDeliver {
        msg_id,
        group,
        position,
        from: phone("+15550000001"),
        client_msg_id: 7,
        server_ts: 1,
        payload: b"x".to_vec(),
    };
    node.push(&b, deliver(2000, 40, 100));
    node.push(&b, deliver(9000, 40, 900));
    node.push(&b, deliver(2001, 41, 101));
    node.push(
        &b,
        ServerFrame::Deliver {
            msg_id: 2002,
            from: phone("+15550000001"),
            client_msg_id: 7,
            server_ts: 1,
            payload: b"x".to_vec(),
        },
    );
    assert_eq!(next(&mut events).await.ack_id(), Some(2000));
    assert_eq!(next(&mut events).await.ack_id(), Some(2001));
    assert_eq!(next(&mut events).await.ack_id(), Some(2002));
    quiet(&mut events, Duration::from_millis(200)).await;
    let acks = node.requests_seen().iter().filter(|r| *r == "Ack").count();
    assert_eq!(acks, 1, "the second copy is acked");
}

#[tokio::test]
async fn a_second_login_replaces_the_first_for_good() {
    let node = FakeNode::start(Options::default()).await;
    let a = phone("+15550000001");
    let (first, mut first_events) = login(&node, &a).await;
    next(&mut first_events).await;
    let (_second, mut second_events) = login(&node, &a).await;
    next(&mut second_events).await;
    assert_eq!(
        next(&mut first_events).await,
        Event::Disconnected {
            reason: DisconnectReason::Closing {
                reason: CloseReason::Replaced,
                retry_after_ms: 0
            }
        }
    );
    assert!(first_events.recv().await.is_none());
    let err = first.send(&a, Vec::new()).await.expect_err("stopped");
    assert!(matches!(err, ClientError::Stopped(_)), "{err}");
    quiet(&mut second_events, Duration::from_millis(300)).await;
    assert_eq!(node.logins(), 2, "the replaced client did not fight back");
}

#[tokio::test]
async fn a_refused_token_fails_the_connect() {
    let node = FakeNode::start(Options::default()).await;
    let err = Client::connect(config(&[&node]), "garbage".into())
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Some(ErrorCode::InvalidToken));
}

#[tokio::test]
async fn nothing_listening_fails_the_connect() {
    let node = FakeNode::start(Options::default()).await;
    let mut cfg = config(&[&node]);
    drop(node);
    cfg.request_timeout = Duration::from_millis(500);
    let err = Client::connect(cfg, token_for(&phone("+15550000001")))
        .await
        .expect_err("nothing there");
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
}

#[tokio::test]
async fn fails_over_to_the_next_server() {
    let first = FakeNode::start(Options::default()).await;
    let second = FakeNode::start(Options::default()).await;
    let (a, b) = (phone("+15550000001"), phone("+15550000002"));
    let cfg = config(&[&first, &second]);
    let (alice, mut events) = Client::connect(cfg, token_for(&a)).await.expect("connect");
    next(&mut events).await;
    assert_eq!(first.logins(), 1);
    drop(first);
    assert!(matches!(
        next(&mut events).await,
        Event::Disconnected { .. }
    ));
    assert_eq!(next(&mut events).await, Event::Connected);
    assert_eq!(second.logins(), 1);
    let ack = alice.send(&b, b"via second".to_vec()).await.expect("send");
    assert_eq!(second.mailbox(&b), vec![ack.msg_id]);
}

#[tokio::test]
async fn close_fails_waiting_sends() {
    let node = FakeNode::start(Options::default()).await;
    let (a, b) = (phone("+15550000001"), phone("+15550000002"));
    let (alice, mut events) = login(&node, &a).await;
    next(&mut events).await;
    node.set_mute(true);
    let sender = alice.clone();
    let pending = tokio::spawn(async move { sender.send(&b, b"never acked".to_vec()).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    alice.close().await;
    let result = pending.await.expect("task");
    assert!(
        matches!(result, Err(ClientError::Stopped(DisconnectReason::Local))),
        "{result:?}"
    );
    let err = alice.ack(vec![1]).await.expect_err("closed");
    assert!(matches!(err, ClientError::Stopped(_)), "{err}");
}
