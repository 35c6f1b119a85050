//! Attacks on the cluster port: connections that never finish their TLS
//! handshake (ractor_cluster's own listener did the handshake inline, so one
//! of them kept every peer out), and a node with a valid cluster certificate
//! for one name claiming to be another.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::common::NodeProcess;
use super::common::cluster::{LocalCluster, Member, metric, scrape, wait_for_peers_up};

/// Generous: a restarted node links in well under a second when nothing
/// stands in its way.
const RELINK: Duration = Duration::from_secs(10);
const PATIENCE: Duration = Duration::from_secs(30);

/// The cluster tests kill and restart nodes: one at a time, so that two
/// clusters on a 2-core machine do not starve each other's heartbeats.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// A TCP connection from `from` (a loopback address of the attacker's) to
/// the member's cluster port.
fn connect_from(from: &str, to: &Member) -> TcpStream {
    let from: std::net::SocketAddr = format!("{from}:0").parse().expect("from");
    let to: std::net::SocketAddr = format!("{}:{}", to.ip, to.cluster_port)
        .parse()
        .expect("to");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(from).expect("bind the attacker's address");
        socket
            .connect(to)
            .await
            .expect("connect to the cluster port")
    });
    let stream = stream.into_std().expect("std stream");
    stream.set_nonblocking(false).expect("blocking");
    stream
}

/// Whether the node closed the connection (EOF or reset) within `within`.
fn closed_by_node(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).expect("timeout");
        match stream.read(&mut buf) {
            Ok(0) => return true,
            // An alert or the server's half of a handshake: keep reading.
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

fn peer_up(member: &Member, peer: &str) -> Option<f64> {
    metric(
        &scrape(&member.metrics_addr),
        "switchboard_cluster_peer_up",
        &format!("peer=\"{peer}\""),
    )
}

#[test]
fn idle_and_half_open_connections_to_the_cluster_port_do_not_keep_a_restarted_peer_out() {
    let _one = one_at_a_time();
    let mut cluster = LocalCluster::start(2, &[(1, 2)]);
    for m in &cluster.members {
        wait_for_peers_up(m, 1, PATIENCE);
    }
    // n1 dials n2 (the smaller name dials): n2's listener is the one a
    // restarted n1 needs, so that is the one the attacker sits on.
    let hold_start = Instant::now();
    let mut held = Vec::new();
    for from in ["127.0.0.9", "127.0.0.10"] {
        for _ in 0..6 {
            held.push(connect_from(from, &cluster.members[1]));
        }
    }
    // And one that starts a TLS handshake and stops: a record header
    // promising a 512-byte ClientHello, then nothing.
    let mut half = connect_from("127.0.0.11", &cluster.members[1]);
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .expect("half a ClientHello");
    held.push(half);

    cluster.kill9(0);
    wait_for_peers_up(&cluster.members[1], 0, PATIENCE);
    cluster.start_member(0);
    for m in &cluster.members {
        let took = wait_for_peers_up(m, 1, RELINK);
        eprintln!(
            "{} linked again after {took:?} with the attacker holding",
            m.name
        );
    }

    // The attacker's connections are closed by the handshake deadline,
    // not left to pile up.
    for stream in &mut held {
        assert!(
            closed_by_node(stream, PATIENCE),
            "an unfinished handshake was left open"
        );
    }
    // Keep attacking for over 30 s in all (the old listener stayed blocked
    // as long as one connection was held), with fresh idle connections.
    while hold_start.elapsed() < Duration::from_secs(32) {
        let _idle = connect_from("127.0.0.9", &cluster.members[1]);
        std::thread::sleep(Duration::from_secs(2));
    }
    for m in &cluster.members {
        wait_for_peers_up(m, 1, RELINK);
    }
    let text = scrape(&cluster.members[1].metrics_addr);
    let timed_out = metric(
        &text,
        "switchboard_cluster_handshakes_total",
        "outcome=\"timed_out\"",
    )
    .unwrap_or(0.0);
    assert!(timed_out >= 1.0, "no handshake timed out:\n{text}");
}

#[test]
fn a_node_with_another_nodes_certificate_cannot_link_as_that_node() {
    let _one = one_at_a_time();
    let mut cluster = LocalCluster::start(3, &[(1, 2)]);
    for m in &cluster.members {
        wait_for_peers_up(m, 2, PATIENCE);
    }
    // n2 is gone; an impostor takes its name and address but holds n1's
    // certificate (valid, signed by the cluster CA). As "n2" it dials n3.
    cluster.kill9(1);
    for i in [0, 2] {
        wait_for_peers_up(&cluster.members[i], 1, PATIENCE);
    }
    let n2 = &cluster.members[1];
    let config = std::fs::read_to_string(&n2.config_path).expect("n2 config");
    let forged = config
        .replace("/n2.pem\"", "/n1.pem\"")
        .replace("/n2-key.pem\"", "/n1-key.pem\"");
    assert_ne!(config, forged, "the certificate paths were not replaced");
    let impostor_dir = cluster.dir.path().join("impostor");
    std::fs::create_dir_all(&impostor_dir).expect("impostor dir");
    let impostor_config = cluster.dir.path().join("impostor.toml");
    std::fs::write(&impostor_config, forged).expect("impostor config");
    let _impostor =
        NodeProcess::start_with_config(&impostor_config, &impostor_dir, &n2.client_addr);

    // For a while (the impostor redials every few seconds), n3 never takes
    // it for n2, and stays linked with n1.
    let n3 = &cluster.members[2];
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(12) {
        assert_ne!(
            peer_up(n3, "n2"),
            Some(1.0),
            "n3 took a node holding n1's certificate for n2"
        );
        assert_eq!(peer_up(n3, "n1"), Some(1.0), "n3 lost n1");
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = scrape(&n3.metrics_addr);
    let refused = metric(
        &text,
        "switchboard_cluster_links_refused_total",
        "cause=\"certificate_name\"",
    )
    .unwrap_or(0.0);
    assert!(
        refused >= 1.0,
        "the impostor never tried (or was not counted):\n{text}"
    );
}

/// `insecure_plaintext` (trusted test networks) has no certificates: links
/// still come in through the accept loop and the guard, and still form.
#[test]
fn plaintext_links_still_form_through_the_accept_loop() {
    let _one = one_at_a_time();
    let mut cluster = LocalCluster::start(2, &[(1, 2)]);
    for i in 0..2 {
        cluster.kill9(i);
        let path = &cluster.members[i].config_path;
        let config = std::fs::read_to_string(path).expect("config");
        let tls = config
            .find("[cluster.tls]")
            .expect("a [cluster.tls] section");
        let plain = format!(
            "{}[cluster.tls]\ninsecure_plaintext = true\n",
            &config[..tls]
        );
        std::fs::write(path, plain).expect("write config");
    }
    for i in 0..2 {
        cluster.start_member(i);
    }
    for m in &cluster.members {
        wait_for_peers_up(m, 1, PATIENCE);
    }
    let accepted = metric(
        &scrape(&cluster.members[1].metrics_addr),
        "switchboard_cluster_handshakes_total",
        "outcome=\"accepted\"",
    );
    assert!(accepted >= Some(1.0), "n2 accepted no link: {accepted:?}");
}
