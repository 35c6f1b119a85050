//! Mailbox jamming with forged or oversized receipts, and ack floods.
//!
//! The attacker is an ordinary registered user on a raw protocol
//! connection (the client library would not send these frames); the victim
//! and a control sender use the client library.

use std::time::{Duration, Instant};

use client::{Client, ClientError, Event, Events, PhoneNumber};
use proto::{ErrorCode, MessageId, Request, Response};

use crate::common::{NodeProcess, next_event, phone};

/// A small delivery window, so that few jammed slots would stop delivery.
const WINDOW: &str = "16";

/// `count` messages from `from` reach `to`'s device, which acks each:
/// returns how long that took (panics after `within`).
async fn delivered(
    from: &Client,
    to: &PhoneNumber,
    events: &mut Events,
    receiver: &Client,
    count: usize,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    for i in 0..count {
        from.send(to, format!("control {i}").into_bytes())
            .await
            .expect("control send acked");
    }
    let mut seen = 0;
    let deadline = tokio::time::Instant::now() + within;
    while seen < count {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("only {seen} of {count} control messages delivered"))
            .expect("events");
        if let Some(id) = event.ack_id() {
            receiver.ack(vec![id]).await.expect("ack");
        }
        if matches!(event, Event::Message { .. }) {
            seen += 1;
        }
    }
    started.elapsed()
}

/// The largest number of one-byte ids whose `Read` still fits a frame;
/// the receipt stored from it (a longer header) would not.
fn ids_filling_a_frame(sender: &PhoneNumber) -> Vec<MessageId> {
    let mut n = 65_000;
    loop {
        let ids: Vec<MessageId> = (0..n).map(|i| (i % 100) as MessageId + 1).collect();
        let frame = proto::ClientFrame::Request {
            id: 1,
            request: Request::Read {
                sender: sender.clone(),
                ids,
            },
        };
        match proto::encode_frame(&frame, proto::DEFAULT_MAX_FRAME_BYTES) {
            Ok(_) => n += 1,
            Err(_) => return (0..n - 1).map(|i| (i % 100) as MessageId + 1).collect(),
        }
    }
}

/// Issue 13, attack 1 and 7: read receipts forged for the victim's "sent
/// messages", each too large to push, used to fill the victim's delivery
/// window so that nothing reached it any more. The victim must keep
/// receiving, and no forged receipt may reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_read_receipts_neither_jam_nor_reach_the_victim() {
    let node = NodeProcess::start_with(&[("SWITCHBOARD_LIMITS__DELIVERY_WINDOW", WINDOW)]);
    let victim = phone("+15551000001");
    let (control, _control_events, _) = node.login("+15551000002").await;
    let token = node.register(&victim).await;
    let (victim_client, mut victim_events) = Client::connect(node.client_config(), token)
        .await
        .expect("victim logs in");
    let evil = node.raw_login(&phone("+15551000003")).await;

    // Oversized forged reads, and forged reads of a size the node accepts
    // (the ids name no message sent to the attacker by the victim).
    let oversized = ids_filling_a_frame(&victim);
    let mut answers = Vec::new();
    for _ in 0..20 {
        let answer = evil
            .request(Request::Read {
                sender: victim.clone(),
                ids: oversized.clone(),
            })
            .await;
        answers.push(("oversized", answer));
    }
    for round in 0..20u64 {
        let ids: Vec<MessageId> = (0..proto::MAX_IDS_PER_ACK as u64)
            .map(|i| (round << 48) | (i + 1))
            .collect();
        let answer = evil
            .request(Request::Read {
                sender: victim.clone(),
                ids,
            })
            .await;
        answers.push(("forged", answer));
    }

    // The victim still receives (its window is free), and sees no receipt
    // by the attacker.
    delivered(
        &control,
        &victim,
        &mut victim_events,
        &victim_client,
        40,
        Duration::from_secs(30),
    )
    .await;
    let mut forged = 0;
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(500), victim_events.recv()).await
    {
        if matches!(&event, Event::Receipt { by, .. } if *by == phone("+15551000003")) {
            forged += 1;
        }
    }
    assert_eq!(forged, 0, "no forged receipt reached the victim");
    for (kind, answer) in answers {
        assert!(
            matches!(
                answer,
                Err(ClientError::Server {
                    code: ErrorCode::InvalidRequest,
                    ..
                })
            ),
            "an {kind} read is refused: {answer:?}"
        );
    }

    // A genuine read still works: the attacker reads a real message from
    // the victim, and the victim gets that receipt.
    let ack = victim_client
        .send(&phone("+15551000003"), b"hello".to_vec())
        .await
        .expect("sent");
    let answer = evil
        .request(Request::Read {
            sender: victim.clone(),
            ids: vec![ack.msg_id],
        })
        .await;
    assert!(
        matches!(answer, Ok(Response::Ok)),
        "a genuine read: {answer:?}"
    );
    let event = next_event(&mut victim_events, 10, |e| {
        matches!(
            e,
            Event::Receipt {
                kind: proto::ReceiptKind::Read,
                ..
            }
        )
    })
    .await;
    assert!(matches!(&event, Event::Receipt { msg_ids, .. } if *msg_ids == vec![ack.msg_id]));
}

/// Issue 13, attack 6: ack frames full of ids that are in no delivery
/// window (each one a disk read before) flood the fragment that a victim's
/// recipient lives in. The victim's sends there must stay prompt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_floods_do_not_stall_the_fragment() {
    let node = NodeProcess::start();
    let placement = router::Placement::new(16).expect("placement");
    let evil_user = phone("+15552000001");
    let fragment = placement.fragment_of(&evil_user);
    let recipient = (2..)
        .map(|i| phone(&format!("+1555200{i:04}")))
        .find(|p| placement.fragment_of(p) == fragment)
        .expect("a user in the attacker's fragment");
    let (victim, _victim_events, _) = node.login("+15553000001").await;
    let (_recipient_client, _recipient_events, _) = node.login(recipient.as_str()).await;

    // The attacker's frames, sent as fast as the socket takes them.
    let evil = node.raw_login(&evil_user).await;
    let flood = tokio::spawn(async move {
        let mut frames = 0u64;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(8) && frames < 20_000 {
            let base = frames * 1_000_000;
            let ids: Vec<MessageId> = (0..proto::MAX_IDS_PER_ACK as u64)
                .map(|i| base + i + 1)
                .collect();
            if evil.ack(ids).is_err() {
                break;
            }
            frames += 1;
            if frames.is_multiple_of(50) {
                tokio::task::yield_now().await;
            }
        }
        frames
    });

    // Meanwhile the victim sends to the fragment under attack.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let started = Instant::now();
        victim
            .send(&recipient, format!("during the flood {i}").into_bytes())
            .await
            .expect("acked");
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let frames = flood.await.expect("flood");
    assert!(frames > 100, "the flood ran ({frames} frames)");
    assert!(
        slowest < Duration::from_secs(2),
        "a victim's send took {slowest:?} during an ack flood of {frames} frames"
    );
}

/// Acks longer than any window break the protocol: the connection is
/// closed, and the victim goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_longer_than_any_window_closes_the_connection() {
    let node = NodeProcess::start();
    let (victim, mut victim_events, victim_phone) = node.login("+15554000001").await;
    let (control, _events, _) = node.login("+15554000002").await;
    let evil = node.raw_login(&phone("+15554000003")).await;
    let ids: Vec<MessageId> = (1..=proto::MAX_IDS_PER_ACK as u64 + 1).collect();
    evil.ack(ids).expect("queued");
    let reason = tokio::time::timeout(Duration::from_secs(10), evil.closed())
        .await
        .expect("closed by the node");
    assert!(
        matches!(
            reason,
            client::DisconnectReason::ServerError {
                code: ErrorCode::InvalidRequest,
                ..
            } | client::DisconnectReason::Closing {
                reason: proto::CloseReason::ProtocolViolation,
                ..
            }
        ),
        "closed for the protocol violation: {reason:?}"
    );
    delivered(
        &control,
        &victim_phone,
        &mut victim_events,
        &victim,
        5,
        Duration::from_secs(10),
    )
    .await;
}
