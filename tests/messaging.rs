//! One node end to end over real TLS: registration, the three ticks,
//! offline delivery, dedupe and order.

mod common;

use std::time::Duration;

use client::{Connection, Event, ReceiptKind, Tls};
use common::{NodeProcess, is_message, next_event, next_frame, raw_tls, read_until_closed};
use proto::{ClientFrame, ErrorCode, Request, Response, ServerFrame, encode_frame};
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_verify_login_and_bad_codes() {
    let node = NodeProcess::start();
    let cfg = node.client_config();
    let phone = client::PhoneNumber::parse("+15550000001").expect("phone");
    client::request_code(&cfg, &phone).await.expect("code");
    let wrong = client::verify(&cfg, &phone, "000000").await;
    let right = node.code_for(&phone);
    if right != "000000" {
        assert!(wrong.is_err(), "a wrong code is refused");
    }
    let (token, expires) = client::verify(&cfg, &phone, &right)
        .await
        .expect("verified");
    assert!(expires > 0);
    let (client, _events) = client::Client::connect(cfg.clone(), token)
        .await
        .expect("login");
    assert_eq!(client.user(), &phone);
    client.close().await;
    let bad = client::Client::connect(cfg, "f".repeat(64)).await;
    assert!(bad.is_err(), "an unknown token is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_delivery_with_all_three_ticks() {
    let node = NodeProcess::start();
    let (alice, mut alice_events, alice_phone) = node.login("+15550000011").await;
    let (bob, mut bob_events, bob_phone) = node.login("+15550000012").await;

    // Tick 1: the server ack, only once durable.
    let ack = alice
        .send(&bob_phone, b"hi bob".to_vec())
        .await
        .expect("server ack");

    let delivered = next_event(&mut bob_events, 10, is_message).await;
    let Event::Message {
        msg_id,
        from,
        payload,
        ..
    } = delivered
    else {
        unreachable!()
    };
    assert_eq!(msg_id, ack.msg_id);
    assert_eq!(from, alice_phone);
    assert_eq!(payload, b"hi bob");

    // Tick 2: bob's device acks, alice gets Delivered.
    bob.ack(vec![msg_id]).await.expect("ack");
    let receipt = next_event(&mut alice_events, 10, |e| {
        matches!(e, Event::Receipt { .. })
    })
    .await;
    let Event::Receipt {
        id,
        kind,
        by,
        msg_ids,
        ..
    } = receipt
    else {
        unreachable!()
    };
    assert_eq!(kind, ReceiptKind::Delivered);
    assert_eq!(by, bob_phone);
    assert_eq!(msg_ids, vec![ack.msg_id]);
    alice.ack(vec![id]).await.expect("ack receipt");

    // Blue ticks: bob reads, alice gets Read.
    bob.read(&alice_phone, vec![msg_id]).await.expect("read");
    let receipt = next_event(&mut alice_events, 10, |e| {
        matches!(e, Event::Receipt { .. })
    })
    .await;
    let Event::Receipt { kind, msg_ids, .. } = receipt else {
        unreachable!()
    };
    assert_eq!(kind, ReceiptKind::Read);
    assert_eq!(msg_ids, vec![ack.msg_id]);
    alice.close().await;
    bob.close().await;
}

/// Clients in the field speak older protocol versions until they update:
/// a version 1 client is welcomed in version 1 and acks with the answered
/// `Request::Ack`; the unanswered `ClientFrame::Ack` of version 2 is
/// refused before login like any other request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_client_is_served_and_its_acks_answered() {
    let node = NodeProcess::start();
    let (alice, mut alice_events, _) = node.login("+15550000021").await;
    let bob_phone = client::PhoneNumber::parse("+15550000022").expect("phone");
    let bob_token = node.register(&bob_phone).await;

    let mut bob = raw_tls(&node).await;
    let mut buf = Vec::new();
    let mut bytes = encode_frame(
        &ClientFrame::Hello {
            version: 1,
            agent: "v1 test".into(),
        },
        1 << 16,
    )
    .expect("encode");
    let login = ClientFrame::Request {
        id: 1,
        request: Request::Login { token: bob_token },
    };
    bytes.extend(encode_frame(&login, 1 << 16).expect("encode"));
    bob.write_all(&bytes).await.expect("write");
    let welcome = next_frame(&mut bob, &mut buf, |_| true).await;
    assert!(
        matches!(welcome, ServerFrame::Welcome { version: 1, .. }),
        "{welcome:?}"
    );
    next_frame(&mut bob, &mut buf, |f| {
        matches!(
            f,
            ServerFrame::Response {
                id: 1,
                response: Response::LoggedIn { .. }
            }
        )
    })
    .await;

    let ack = alice
        .send(&bob_phone, b"to an old client".to_vec())
        .await
        .expect("server ack");
    let deliver = next_frame(&mut bob, &mut buf, |f| {
        matches!(f, ServerFrame::Deliver { .. })
    })
    .await;
    let ServerFrame::Deliver { msg_id, .. } = deliver else {
        unreachable!()
    };
    assert_eq!(msg_id, ack.msg_id);
    let ack_request = ClientFrame::Request {
        id: 2,
        request: Request::Ack { ids: vec![msg_id] },
    };
    bob.write_all(&encode_frame(&ack_request, 1 << 16).expect("encode"))
        .await
        .expect("write");
    next_frame(&mut bob, &mut buf, |f| {
        matches!(
            f,
            ServerFrame::Response {
                id: 2,
                response: Response::Ok
            }
        )
    })
    .await;
    let receipt = next_event(&mut alice_events, 10, |e| {
        matches!(e, Event::Receipt { .. })
    })
    .await;
    let Event::Receipt { kind, msg_ids, .. } = receipt else {
        unreachable!()
    };
    assert_eq!(kind, ReceiptKind::Delivered);
    assert_eq!(msg_ids, vec![ack.msg_id]);

    let mut early = raw_tls(&node).await;
    let mut bytes = encode_frame(
        &ClientFrame::Hello {
            version: proto::PROTOCOL_VERSION,
            agent: "early ack".into(),
        },
        1 << 16,
    )
    .expect("encode");
    bytes.extend(encode_frame(&ClientFrame::Ack { ids: vec![msg_id] }, 1 << 16).expect("encode"));
    early.write_all(&bytes).await.expect("write");
    let frames = read_until_closed(&mut early).await;
    assert!(
        frames.iter().any(|f| matches!(
            f,
            ServerFrame::Error {
                id: None,
                code: ErrorCode::NotAuthenticated,
                ..
            }
        )),
        "{frames:?}"
    );
    alice.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_messages_arrive_at_next_login_oldest_first() {
    let node = NodeProcess::start();
    let (alice, _alice_events, _) = node.login("+15550000021").await;
    let bob_phone = client::PhoneNumber::parse("+15550000022").expect("phone");
    let bob_token = node.register(&bob_phone).await;
    let mut acks = Vec::new();
    for i in 0..5u8 {
        acks.push(alice.send(&bob_phone, vec![i]).await.expect("acked").msg_id);
    }
    let (bob, mut bob_events) = client::Client::connect(node.client_config(), bob_token)
        .await
        .expect("bob logs in");
    let mut got = Vec::new();
    while got.len() < 5 {
        if let Event::Message {
            msg_id, payload, ..
        } = next_event(&mut bob_events, 10, is_message).await
        {
            got.push((msg_id, payload[0]));
        }
    }
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), acks);
    assert_eq!(
        got.iter().map(|g| g.1).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    bob.close().await;
    alice.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_is_acked_again_and_stored_once() {
    let node = NodeProcess::start();
    let alice_phone = client::PhoneNumber::parse("+15550000031").expect("phone");
    let alice_token = node.register(&alice_phone).await;
    let (bob, mut bob_events, bob_phone) = node.login("+15550000032").await;

    let tls = Tls::from_ca_file(&node.ca_path, "localhost").expect("tls");
    let (conn, _pushes) = Connection::connect(&node.addr, &tls, "test", Duration::from_secs(10))
        .await
        .expect("connect");
    conn.login(&alice_token).await.expect("login");
    let send = Request::Send {
        to: bob_phone.clone(),
        client_msg_id: 4242,
        payload: b"once".to_vec(),
    };
    let first = conn.request(send.clone()).await.expect("first ack");
    let second = conn.request(send).await.expect("second ack");
    let (Response::ServerAck { msg_id: a, .. }, Response::ServerAck { msg_id: b, .. }) =
        (first, second)
    else {
        panic!("expected two server acks");
    };
    assert_eq!(a, b, "the resend gets the same id");

    let Event::Message { msg_id, .. } = next_event(&mut bob_events, 10, is_message).await else {
        unreachable!()
    };
    assert_eq!(msg_id, a);
    bob.ack(vec![msg_id]).await.expect("ack");
    // A resend after delivery is still recognised.
    let late = conn
        .request(Request::Send {
            to: bob_phone,
            client_msg_id: 4242,
            payload: b"once".to_vec(),
        })
        .await
        .expect("late ack");
    assert!(matches!(late, Response::ServerAck { msg_id, .. } if msg_id == a));
    let more = tokio::time::timeout(Duration::from_millis(500), async {
        next_event(&mut bob_events, 1, is_message).await
    })
    .await;
    assert!(more.is_err(), "no second copy is delivered");
    bob.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_messages_arrive_in_order() {
    let node = NodeProcess::start();
    let (alice, _alice_events, _) = node.login("+15550000041").await;
    let (bob, mut bob_events, bob_phone) = node.login("+15550000042").await;
    let sender = tokio::spawn(async move {
        // Pipelined, 100 in flight: join_all polls in order, and a send is
        // queued on its first poll, so submission order is 0, 1, 2, ...
        let numbers: Vec<u32> = (0..1000).collect();
        for chunk in numbers.chunks(100) {
            let sends = chunk
                .iter()
                .map(|i| alice.send(&bob_phone, i.to_be_bytes().to_vec()));
            for acked in futures::future::join_all(sends).await {
                acked.expect("acked");
            }
        }
    });
    let mut seen = Vec::with_capacity(1000);
    while seen.len() < 1000 {
        if let Event::Message {
            msg_id, payload, ..
        } = next_event(&mut bob_events, 30, is_message).await
        {
            let n = u32::from_be_bytes(payload[..4].try_into().expect("4 bytes"));
            seen.push(n);
            bob.ack(vec![msg_id]).await.expect("ack");
        }
    }
    sender.await.expect("sender");
    let sorted: Vec<u32> = (0..1000).collect();
    assert_eq!(seen, sorted, "per sender→recipient order");
    bob.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_last_seen_and_typing_reach_watchers() {
    let node = NodeProcess::start();
    let (alice, mut alice_events, alice_phone) = node.login("+15550000051").await;
    let bob_phone = client::PhoneNumber::parse("+15550000052").expect("phone");
    let bob_token = node.register(&bob_phone).await;
    // Bob lets Alice see him (his presence is for his contacts only).
    let (bob, _bob_events) = client::Client::connect(node.client_config(), bob_token.clone())
        .await
        .expect("bob logs in");
    bob.set_contacts(vec![alice_phone.clone()])
        .await
        .expect("contacts");
    bob.close().await;

    alice
        .subscribe_presence(vec![bob_phone.clone()])
        .await
        .expect("subscribe");
    // His last seen (his first session may still be ending: skip its Online).
    next_event(&mut alice_events, 10, |e| {
        matches!(
            e,
            Event::Presence {
                status: client::PresenceStatus::Offline { .. },
                ..
            }
        )
    })
    .await;

    let (bob, _bob_events) = client::Client::connect(node.client_config(), bob_token)
        .await
        .expect("bob logs in");
    let online = next_event(&mut alice_events, 10, |e| {
        matches!(e, Event::Presence { .. })
    })
    .await;
    assert!(matches!(
        online,
        Event::Presence { ref user, status: client::PresenceStatus::Online } if *user == bob_phone
    ));

    bob.typing(&alice_phone, true).await.expect("typing");
    let typing = next_event(&mut alice_events, 10, |e| matches!(e, Event::Typing { .. })).await;
    assert!(matches!(typing, Event::Typing { ref from, active: true } if *from == bob_phone));

    bob.close().await;
    let offline = next_event(&mut alice_events, 10, |e| {
        matches!(e, Event::Presence { .. })
    })
    .await;
    assert!(matches!(
        offline,
        Event::Presence {
            status: client::PresenceStatus::Offline {
                last_seen_ms: Some(_)
            },
            ..
        }
    ));
    alice.close().await;
}
