//! A session actor that panics is cleaned up and no other session notices.

mod common;

use client::Event;
use common::{login, next_matching, start, test_config};
use session::SessionMsg;
use supervision::SupervisorMsg;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_session_is_cleaned_up_and_others_do_not_notice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = test_config(dir.path());
    let (node, cfg) = start(config).await;
    let (alice, mut alice_events) = login(&cfg, dir.path(), "+15550000401").await;
    let (bob, mut bob_events) = login(&cfg, dir.path(), "+15550000402").await;
    let alice_phone = alice.user().clone();
    let bob_phone = bob.user().clone();

    let sessions = node.sessions().expect("session supervisor");
    let children = ractor::call_t!(sessions, SupervisorMsg::Children, 1000).expect("children");
    assert_eq!(children.len(), 2, "one actor per logged-in connection");
    // The first is alice's (she logged in first).
    children[0]
        .1
        .send_message(SessionMsg::InjectPanic)
        .expect("send");

    let dropped = next_matching(&mut alice_events, 10, |e| {
        matches!(e, Event::Disconnected { .. })
    })
    .await;
    assert!(
        dropped.is_some(),
        "the panicked session's connection is dropped"
    );
    // Alice's client reconnects by itself and is served again.
    assert!(
        next_matching(&mut alice_events, 20, |e| matches!(e, Event::Connected))
            .await
            .is_some()
    );
    let ack = bob
        .send(&alice_phone, b"after the crash".to_vec())
        .await
        .expect("ack");
    let got = next_matching(&mut alice_events, 10, |e| {
        matches!(e, Event::Message { .. })
    })
    .await
    .expect("message after reconnect");
    assert!(matches!(got, Event::Message { msg_id, .. } if msg_id == ack.msg_id));
    alice
        .send(&bob_phone, b"hi".to_vec())
        .await
        .expect("alice sends again");
    let got = next_matching(&mut bob_events, 10, |e| matches!(e, Event::Message { .. })).await;
    assert!(got.is_some());
    // Bob never saw a disconnect.
    while let Some(event) = bob_events.try_recv() {
        assert!(
            !matches!(event, Event::Disconnected { .. }),
            "bob was disturbed"
        );
    }
    let children = ractor::call_t!(sessions, SupervisorMsg::Children, 1000).expect("children");
    assert_eq!(
        children.len(),
        2,
        "the crashed session is gone, its replacement is there"
    );
    alice.close().await;
    bob.close().await;
    node.shutdown().await;
}
