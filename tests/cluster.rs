//! Cluster membership with real node processes on 127.0.0.x, linked over
//! mutually authenticated TLS: the mesh forms, a killed node is noticed by
//! its link closing, a frozen node (its sockets still open, which
//! ractor_cluster alone never notices) by the heartbeat, and both rejoin.

mod common;

use std::time::Duration;

use common::cluster::{LocalCluster, wait_for_peers_up};

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
