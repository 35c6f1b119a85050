//! Holding the node's connection slots without logging in (issue 13, item
//! 8): many connections from one host, guests that never say hello or
//! never log in, frames trickled in byte by byte, and the second listener
//! used to go past the connection cap. Attackers connect from their own
//! loopback addresses; the victim from 127.0.0.1.

use std::time::{Duration, Instant};

use client::{Client, Connection, Tls};
use proto::{ClientFrame, PROTOCOL_VERSION, encode_frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{NodeProcess, raw_tls_from, tls_client_config, try_raw_tls_from};

type Stream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Connections from `from` that complete TLS (and say hello, if asked),
/// opened until `count` or the first refusal; the node keeps or closes
/// them as it sees fit.
async fn hold(node: &NodeProcess, from: &str, count: usize, say_hello: bool) -> Vec<Stream> {
    let mut held = Vec::new();
    for _ in 0..count {
        match tokio::time::timeout(Duration::from_secs(5), try_raw_tls_from(node, from)).await {
            Ok(Ok(mut stream)) => {
                if say_hello && stream.write_all(&hello()).await.is_err() {
                    break;
                }
                held.push(stream);
            }
            _ => break,
        }
    }
    held
}

fn hello() -> Vec<u8> {
    encode_frame(
        &ClientFrame::Hello {
            version: PROTOCOL_VERSION,
            agent: "attacker".into(),
        },
        proto::DEFAULT_MAX_FRAME_BYTES,
    )
    .expect("hello")
}

/// Whether `stream` was closed by the node (end of stream or an error)
/// within `within`, reading and dropping whatever it sends.
async fn closed_by_node(stream: &mut Stream, within: Duration) -> bool {
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// The victim logs in (a fresh connection, as after a network change) and
/// gets a message from a friend; panics if the node turns it away.
async fn victim_gets_in(node: &NodeProcess, victim: &str, friend: &Client) {
    let phone = client::PhoneNumber::parse(victim).expect("phone");
    let token = node.register(&phone).await;
    let (client, mut events) = Client::connect(node.client_config(), token)
        .await
        .expect("the victim is let in");
    friend
        .send(&phone, b"still here".to_vec())
        .await
        .expect("sent");
    let event = crate::common::next_event(&mut events, 10, crate::common::is_message).await;
    client.ack_event(&event).await.expect("ack");
}

/// One host opens more connections than the node has: it gets its share of
/// guest slots (1,000 by default) and no more, and a victim elsewhere still
/// gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_cannot_take_every_connection() {
    let node = NodeProcess::start_with(&[("SWITCHBOARD_LIMITS__MAX_CONNECTIONS", "1050")]);
    let (friend, _events, _) = node.login("+15556000001").await;
    // Saying hello: the login deadline (60 s), not the hello deadline
    // (10 s), frees these slots, well after the victim's turn.
    let held = hold(&node, "127.0.0.5", 1_100, true).await;
    // The refused ones are closed before TLS; the others are held.
    victim_gets_in(&node, "+15556000002", &friend).await;
    assert!(
        held.len() <= 1_000,
        "one host holds {} connections without saying hello",
        held.len()
    );
}

/// Guests from many hosts that never say hello are closed at the hello
/// deadline (10 s by default), even while they trickle bytes in, so their
/// slots come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_that_never_say_hello_are_closed_at_the_deadline() {
    let node = NodeProcess::start_with(&[("SWITCHBOARD_LIMITS__MAX_CONNECTIONS", "40")]);
    let (friend, _events, _) = node.login("+15556100001").await;
    let mut held = Vec::new();
    for host in 10..30 {
        held.extend(hold(&node, &format!("127.0.0.{host}"), 2, false).await);
    }
    assert!(
        held.len() >= 38,
        "the attack holds the node ({} held)",
        held.len()
    );
    // One byte of a hello every 2 s: never idle, never a frame.
    let started = Instant::now();
    let trickle = hello();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(14) && sent < trickle.len() - 1 {
        for stream in &mut held {
            let _ = stream.write_all(&trickle[sent..=sent]).await;
        }
        sent += 1;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    victim_gets_in(&node, "+15556100002", &friend).await;
    let mut still_open = 0;
    for stream in &mut held {
        if !closed_by_node(stream, Duration::from_secs(1)).await {
            still_open += 1;
        }
    }
    assert_eq!(still_open, 0, "guests past the hello deadline are closed");
}

/// A logged-in client that begins a large frame and trickles it in (a byte
/// within every idle timeout) is cut off at the frame deadline (30 s by
/// default) with an error, instead of holding its buffer for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_trickled_in_is_cut_off() {
    let node = NodeProcess::start();
    let attacker = client::PhoneNumber::parse("+15556200001").expect("phone");
    let token = node.register(&attacker).await;
    let mut stream = raw_tls_from(&node, "127.0.0.7").await;
    stream.write_all(&hello()).await.expect("hello");
    let login = encode_frame(
        &ClientFrame::Request {
            id: 1,
            request: proto::Request::Login { token },
        },
        proto::DEFAULT_MAX_FRAME_BYTES,
    )
    .expect("login");
    stream.write_all(&login).await.expect("login");
    // A 60,000-byte frame, announced and begun.
    let mut frame = 60_000u32.to_be_bytes().to_vec();
    frame.extend_from_slice(&[0x01; 1000]);
    stream.write_all(&frame).await.expect("begin");
    let started = Instant::now();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(45) {
        if stream.write_all(&[0x01]).await.is_err() {
            closed = true;
            break;
        }
        if closed_by_node(&mut stream, Duration::from_secs(5)).await {
            closed = true;
            break;
        }
    }
    assert!(closed, "a frame trickled in for 45 s is still being read");
    assert!(
        started.elapsed() >= Duration::from_secs(25),
        "cut off early"
    );
}

/// The TLS and WebSocket listeners share one connection cap: connections
/// on one count against the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_listeners_share_the_connection_cap() {
    let ws_port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("probe");
        probe.local_addr().expect("addr").port()
    };
    let ws_addr = format!("127.0.0.1:{ws_port}");
    let node = NodeProcess::start_with(&[
        ("SWITCHBOARD_LIMITS__MAX_CONNECTIONS", "12"),
        ("SWITCHBOARD_WEBSOCKET_LISTEN", ws_addr.as_str()),
    ]);
    // Twelve sessions on the TLS listener, from several hosts.
    let tls = Tls::from_ca_file(&node.ca_path, client::DEFAULT_SERVER_NAME).expect("tls");
    let mut held = Vec::new();
    for i in 0..12 {
        let (conn, pushes) = Connection::connect_from(
            &node.addr,
            Some(format!("127.0.1.{}", i + 1).parse().expect("ip")),
            &tls,
            "holder",
            Duration::from_secs(10),
        )
        .await
        .expect("within the cap");
        held.push((conn, pushes));
    }
    // The WebSocket listener is past the cap too: its connection is closed
    // before TLS.
    let tcp = tokio::net::TcpStream::connect(&ws_addr).await.expect("tcp");
    let config = tls_client_config(&node);
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let handshake = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await;
    assert!(
        !matches!(handshake, Ok(Ok(_))),
        "the WebSocket listener took a connection past the node's cap"
    );
    drop(held);
}
