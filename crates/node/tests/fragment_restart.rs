//! A mailbox fragment that dies is restarted by its supervisor, and the
//! sessions of its online users attach to the new one by themselves.
//! (Its own test binary: ractor's registry is per process, one node each.)

use std::time::Duration;

mod common;

use client::Event;
use common::{login, next_matching, start, test_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_fragment_reattaches_its_online_users() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = test_config(dir.path());
    let (node, cfg) = start(config).await;
    let (alice, _alice_events) = login(&cfg, dir.path(), "+15550000501").await;
    let (bob, mut bob_events) = login(&cfg, dir.path(), "+15550000502").await;
    let bob_phone = bob.user().clone();

    // Kill the actor of Bob's fragment; its supervisor starts a new one.
    let placement = router::Placement::new(4).expect("placement");
    let name = offline_queue::fragment_name(placement.fragment_of(&bob_phone));
    let old = ractor::registry::where_is(name.clone()).expect("fragment running");
    let old_id = old.get_id();
    old.kill();
    let mut restarted = false;
    for _ in 0..200 {
        if ractor::registry::where_is(name.clone()).is_some_and(|cell| cell.get_id() != old_id) {
            restarted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(restarted, "the fragment was restarted");

    // Bob's session attaches to the new fragment by itself: a message sent
    // now reaches him on the same connection.
    let ack = alice
        .send(&bob_phone, b"after restart".to_vec())
        .await
        .expect("ack");
    let got = next_matching(&mut bob_events, 10, |e| matches!(e, Event::Message { .. }))
        .await
        .expect("delivered after the fragment restart");
    assert!(matches!(got, Event::Message { msg_id, .. } if msg_id == ack.msg_id));
    while let Some(event) = bob_events.try_recv() {
        assert!(
            !matches!(event, Event::Disconnected { .. }),
            "bob was disconnected"
        );
    }
    alice.close().await;
    bob.close().await;
    node.shutdown().await;
}
