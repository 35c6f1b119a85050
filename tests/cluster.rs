//! Cluster membership with real node processes on 127.0.0.x, linked over
//! mutually authenticated TLS: the mesh forms, a killed node is noticed by
//! its link closing, a frozen node (its sockets still open, which
//! ractor_cluster alone never notices) by the heartbeat, and both rejoin.

mod common;

use std::time::Duration;

use common::cluster::{LocalCluster, wait_for_peers_up, wait_for_serving};

const PATIENCE: Duration = Duration::from_secs(20);

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[test]
fn the_mesh_forms_notices_lost_and_frozen_nodes_and_heals() {
    let mut cluster = LocalCluster::start(3, &[(1, 2)]);
    for m in &cluster.members {
        wait_for_peers_up(m, 2, PATIENCE);
    }

    // kill -9: the link closes, the others see it at once.
    cluster.kill9(2);
    for m in &cluster.members[..2] {
        let took = wait_for_peers_up(m, 1, PATIENCE);
        eprintln!("{} saw n3 killed after {took:?}", m.name);
    }
    cluster.start_member(2);
    for m in &cluster.members {
        let took = wait_for_peers_up(m, 2, PATIENCE);
        eprintln!("{} sees the mesh whole again after {took:?}", m.name);
    }

    // SIGSTOP: sockets stay open, only the heartbeat can tell.
    let frozen = cluster.process(1).pid();
    signal(frozen, "-STOP");
    for i in [0, 2] {
        let m = &cluster.members[i];
        let took = wait_for_peers_up(m, 1, PATIENCE);
        eprintln!("{} declared frozen n2 down after {took:?}", m.name);
    }
    signal(frozen, "-CONT");
    for m in &cluster.members {
        let took = wait_for_peers_up(m, 2, PATIENCE);
        eprintln!("{} sees thawed n2 again after {took:?}", m.name);
    }
}

const ISLANDS: &[(usize, usize)] = &[(1, 2), (3, 4)];
const FRAGMENTS: u16 = 16;

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn four_nodes_serving() -> LocalCluster {
    let cluster = LocalCluster::start(4, ISLANDS);
    for m in &cluster.members {
        wait_for_peers_up(m, 3, PATIENCE);
    }
    let members: Vec<_> = cluster.members.iter().collect();
    wait_for_serving(&members, FRAGMENTS.into(), PATIENCE);
    cluster
}

/// Alice is on n1 with her mailbox on n2; Bob is on n3 with his on n4: a
/// message, its delivery, both receipts and their acks all cross nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cross_nodes_with_all_three_ticks() {
    use client::{Event, ReceiptKind};
    use common::cluster::phones_owned_by;
    use common::{is_message, next_event};

    let cluster = blocking(four_nodes_serving);
    let alice_phone = &phones_owned_by("n2", ISLANDS, FRAGMENTS, 1, 100)[0];
    let bob_phone = &phones_owned_by("n4", ISLANDS, FRAGMENTS, 1, 200)[0];
    let (alice, mut alice_events, _) = cluster.process(0).login(alice_phone.as_str()).await;
    let (bob, mut bob_events, _) = cluster.process(2).login(bob_phone.as_str()).await;

    let ack = alice
        .send(bob_phone, b"across the cluster".to_vec())
        .await
        .expect("server ack");
    let Event::Message {
        msg_id,
        from,
        payload,
        ..
    } = next_event(&mut bob_events, 10, is_message).await
    else {
        unreachable!()
    };
    assert_eq!((msg_id, &from), (ack.msg_id, alice_phone));
    assert_eq!(payload, b"across the cluster");

    bob.ack(vec![msg_id]).await.expect("ack");
    let is_receipt = |e: &Event| matches!(e, Event::Receipt { .. });
    let Event::Receipt {
        id, kind, msg_ids, ..
    } = next_event(&mut alice_events, 10, is_receipt).await
    else {
        unreachable!()
    };
    assert_eq!((kind, msg_ids), (ReceiptKind::Delivered, vec![ack.msg_id]));
    alice.ack(vec![id]).await.expect("ack receipt");

    bob.read(alice_phone, vec![msg_id]).await.expect("read");
    let Event::Receipt { kind, msg_ids, .. } = next_event(&mut alice_events, 10, is_receipt).await
    else {
        unreachable!()
    };
    assert_eq!((kind, msg_ids), (ReceiptKind::Read, vec![ack.msg_id]));
    alice.close().await;
    bob.close().await;
}
