//! A client sending faster than its rate is slowed down, never refused, and
//! its messages keep their order.

mod common;

use common::{login, receive_first_bytes, start, test_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_sender_is_slowed_not_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.limits.max_sends_per_sec = 200.0;
    config.limits.send_burst = 5.0;
    let (node, cfg) = start(config).await;
    let (alice, _a) = login(&cfg, dir.path(), "+15550000801").await;
    let (bob, mut bob_events) = login(&cfg, dir.path(), "+15550000802").await;

    // 60 sends at once: far over a burst of 5.
    let sends = (0..60u8).map(|i| alice.send(bob.user(), vec![i]));
    for acked in futures::future::join_all(sends).await {
        acked.expect("every send is acknowledged, none refused");
    }
    let got = receive_first_bytes(&bob, &mut bob_events, 60).await;
    assert_eq!(got, (0..60).collect::<Vec<u8>>(), "order kept");
    alice.close().await;
    bob.close().await;
    node.shutdown().await;
}
