//! Bad input closes one connection and nothing else; a node killed with
//! SIGKILL loses no acknowledged message.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use client::Event;
use common::{NodeProcess, is_message, next_event, raw_tls, read_until_closed};
use proto::{ClientFrame, ErrorCode, PROTOCOL_VERSION, Request, ServerFrame, encode_frame};
use tokio::io::AsyncWriteExt;

fn has_error(frames: &[ServerFrame], wanted: ErrorCode) -> bool {
    frames
        .iter()
        .any(|f| matches!(f, ServerFrame::Error { code, .. } if *code == wanted))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_closes_only_the_offending_connection() {
    let node = NodeProcess::start();
    let (alice, mut alice_events, alice_phone) = node.login("+15550000101").await;
    let (bob, _bob_events, _) = node.login("+15550000102").await;

    // 1. Garbage bytes.
    let mut garbage = raw_tls(&node).await;
    garbage
        .write_all(&[0, 0, 0, 5, 0xff, 0xfe, 0xfd, 0xfc, 0xfb])
        .await
        .expect("write");
    let frames = read_until_closed(&mut garbage).await;
    assert!(has_error(&frames, ErrorCode::BadFrame), "{frames:?}");

    // 2. An oversized length prefix (1 GiB): refused before any body is read.
    let mut oversized = raw_tls(&node).await;
    oversized
        .write_all(&(1u32 << 30).to_be_bytes())
        .await
        .expect("write");
    let frames = read_until_closed(&mut oversized).await;
    assert!(has_error(&frames, ErrorCode::FrameTooLarge), "{frames:?}");

    // 3. A request before login.
    let mut early = raw_tls(&node).await;
    let hello = ClientFrame::Hello {
        version: PROTOCOL_VERSION,
        agent: "test".into(),
    };
    let send = ClientFrame::Request {
        id: 9,
        request: Request::Send {
            to: alice_phone.clone(),
            client_msg_id: 1,
            payload: b"sneaky".to_vec(),
        },
    };
    let mut bytes = encode_frame(&hello, 1 << 16).expect("encode");
    bytes.extend(encode_frame(&send, 1 << 16).expect("encode"));
    early.write_all(&bytes).await.expect("write");
    let frames = read_until_closed(&mut early).await;
    assert!(
        matches!(frames.first(), Some(ServerFrame::Welcome { .. })),
        "{frames:?}"
    );
    assert!(
        frames.iter().any(|f| matches!(
            f,
            ServerFrame::Error {
                id: Some(9),
                code: ErrorCode::NotAuthenticated,
                ..
            }
        )),
        "{frames:?}"
    );

    // 4. A request before hello.
    let mut no_hello = raw_tls(&node).await;
    no_hello
        .write_all(&encode_frame(&send, 1 << 16).expect("encode"))
        .await
        .expect("write");
    let frames = read_until_closed(&mut no_hello).await;
    assert!(
        has_error(&frames, ErrorCode::NotAuthenticated),
        "{frames:?}"
    );

    // The well-behaved sessions never noticed.
    let ack = bob
        .send(&alice_phone, b"still here".to_vec())
        .await
        .expect("ack");
    let Event::Message {
        msg_id, payload, ..
    } = next_event(&mut alice_events, 10, is_message).await
    else {
        unreachable!()
    };
    assert_eq!(msg_id, ack.msg_id);
    assert_eq!(payload, b"still here");
    alice.close().await;
    bob.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_acks_loses_nothing_and_duplicates_nothing() {
    let node = NodeProcess::start();
    let (alice, _alice_events, _) = node.login("+15550000201").await;
    let bob_phone = client::PhoneNumber::parse("+15550000202").expect("phone");
    let bob_token = node.register(&bob_phone).await;

    // Acks come back only once durable; kill the node the moment the last
    // one arrives, with no chance to flush or shut down.
    let mut acked: HashMap<u64, Vec<u8>> = HashMap::new();
    let numbers: Vec<u32> = (0..300).collect();
    for chunk in numbers.chunks(50) {
        let sends = chunk
            .iter()
            .map(|i| alice.send(&bob_phone, i.to_be_bytes().to_vec()));
        let results = futures::future::join_all(sends).await;
        for (i, result) in chunk.iter().zip(results) {
            acked.insert(result.expect("acked").msg_id, i.to_be_bytes().to_vec());
        }
    }
    alice.close().await;
    let (data_dir, addr, dir) = node.kill9();
    // The acks came from the journal's syncs (the database file gets them
    // at the next checkpoint, seconds later): the restart must replay it.
    let journaled: u64 = std::fs::read_dir(data_dir.join("journal"))
        .expect("the node keeps a journal")
        .filter_map(|entry| entry.ok()?.metadata().ok())
        .map(|meta| meta.len().saturating_sub(16))
        .sum();
    assert!(journaled > 0, "the acked messages are in the journal");

    let node = NodeProcess::start_at(&data_dir, &addr);
    let (bob, mut bob_events) = client::Client::connect(node.client_config(), bob_token)
        .await
        .expect("bob logs in after the restart");
    let mut received: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut order = Vec::new();
    while received.len() < acked.len() {
        let Event::Message {
            msg_id, payload, ..
        } = next_event(&mut bob_events, 20, is_message).await
        else {
            unreachable!()
        };
        assert!(
            received.insert(msg_id, payload.clone()).is_none(),
            "duplicate {msg_id}"
        );
        order.push(u32::from_be_bytes(
            payload[..4].try_into().expect("4 bytes"),
        ));
        bob.ack(vec![msg_id]).await.expect("ack");
    }
    assert_eq!(received, acked, "every acked message, exactly once");
    assert!(order.windows(2).all(|w| w[0] < w[1]), "in send order");
    let extra = tokio::time::timeout(Duration::from_millis(500), async {
        next_event(&mut bob_events, 1, is_message).await
    })
    .await;
    assert!(extra.is_err(), "nothing beyond what was acked");
    bob.close().await;
    drop(node);
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_clients_and_exits_cleanly() {
    let node = NodeProcess::start();
    let (_alice, mut alice_events, _) = node.login("+15550000301").await;
    let status = node.terminate();
    assert!(status.success(), "clean exit: {status:?}");
    let event = next_event(&mut alice_events, 10, |e| {
        matches!(e, Event::Disconnected { .. })
    })
    .await;
    assert!(matches!(event, Event::Disconnected { .. }));
}

/// An answer larger than the node's frame limit is replaced by an error for
/// that request, instead of leaving the client to its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_too_large_for_a_frame_becomes_an_error() {
    let secret = "robustness-admin-secret";
    let node = NodeProcess::start_with(&[
        ("SWITCHBOARD_LIMITS__MAX_FRAME_BYTES", "4096"),
        ("SWITCHBOARD_LIMITS__MAX_PAYLOAD_BYTES", "3072"),
        ("SWITCHBOARD_ADMIN__MINT_TEST_USERS", "true"),
        ("SWITCHBOARD_ADMIN__SECRET", secret),
    ]);
    let tls = client::Tls::from_ca_file(&node.ca_path, client::DEFAULT_SERVER_NAME).expect("tls");
    let (conn, _pushes) =
        client::Connection::connect(&node.addr, &tls, "robustness", Duration::from_secs(30))
            .await
            .expect("connect");
    let started = std::time::Instant::now();
    let answer = conn
        .request(Request::MintTestUsers {
            secret: secret.into(),
            first: client::PhoneNumber::parse("+15550008000").expect("phone"),
            count: 100,
        })
        .await;
    match answer {
        Err(client::ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::Internal),
        other => panic!("expected an error answer, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "answered by the timeout, not by the node"
    );
    // The connection still works.
    assert!(conn.request(Request::Ping).await.is_ok());
}

/// SIGHUP reloads the client-facing certificate from its files: new
/// connections get the renewed one, an open connection goes on, and a
/// broken pair on disk leaves the one in use serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_client_certificate() {
    use std::sync::Arc;

    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = (
        test_support::self_signed(&["localhost"]),
        test_support::self_signed(&["localhost"]),
    );
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, &old.cert_pem).expect("cert");
    std::fs::write(&key, &old.key_pem).expect("key");
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
    )
    .expect("config");
    let data = dir.path().join("data");
    let node = NodeProcess::start_with_config(&config, &data, "127.0.0.1:0");

    let mut roots = rustls::RootCertStore::empty();
    for pair in [&old, &new] {
        roots
            .add(rustls_pki_types::CertificateDer::from(
                pair.cert_der.clone(),
            ))
            .expect("root");
    }
    let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    // A resumed session reports the certificate of the session it resumes:
    // every connection here makes a full handshake.
    client.resumption = rustls::client::Resumption::disabled();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client));
    let served = || async {
        let tcp = tokio::net::TcpStream::connect(&node.addr)
            .await
            .expect("connect");
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        let stream = tls.connect(name, tcp).await.expect("handshake");
        let leaf = stream.get_ref().1.peer_certificates().expect("certs")[0].to_vec();
        (stream, leaf)
    };
    let (mut open, leaf) = served().await;
    assert_eq!(leaf, old.cert_der);

    std::fs::write(&cert, &new.cert_pem).expect("cert");
    std::fs::write(&key, &new.key_pem).expect("key");
    let hangup = || {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &node.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    };
    hangup();
    let mut renewed = false;
    for _ in 0..100 {
        if served().await.1 == new.cert_der {
            renewed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(renewed, "new connections still get the old certificate");
    // The connection made before the reload is served on.
    let hello = ClientFrame::Hello {
        version: PROTOCOL_VERSION,
        agent: "before the reload".into(),
    };
    open.write_all(&encode_frame(&hello, 1 << 16).expect("encode"))
        .await
        .expect("write");
    let frames = {
        let mut buf = Vec::new();
        common::next_frame(&mut open, &mut buf, |f| {
            matches!(f, ServerFrame::Welcome { .. })
        })
        .await
    };
    assert!(matches!(frames, ServerFrame::Welcome { .. }));

    // A half-written renewal (a key that does not match): the renewed pair
    // stays in use.
    std::fs::write(&key, &old.key_pem).expect("key");
    hangup();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let leaf = served().await.1;
    assert!(leaf != old.cert_der, "the old certificate is back");
    assert!(leaf == new.cert_der, "another certificate is served");
}
