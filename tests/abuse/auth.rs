//! SMS pumping, code guessing across numbers and `MintTestUsers` abuse
//! (issue 13, items 3 and 10). Attackers connect from their own loopback
//! addresses (127.0.x.y, bound before connecting), so that the per-address
//! and per-subnet limits see them as other hosts than the victim.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use client::{Client, PhoneNumber};
use proto::{ClientFrame, CloseReason, ErrorCode, Request, Response, ServerFrame, encode_frame};
use tokio::io::AsyncWriteExt;
use tokio_rustls::client::TlsStream;

use crate::common::{NodeProcess, binary, raw_tls_from, read_until_closed};

/// A TLS connection to `node` from the local address `from` (127.0.x.y).
async fn connect_from(node: &NodeProcess, from: &str) -> TlsStream<tokio::net::TcpStream> {
    raw_tls_from(node, from).await
}

/// Connects from `from`, says hello, sends `requests` pipelined (ids from
/// 1), and returns every frame the node sent until it closed (or 10 s).
async fn pipeline(node: &NodeProcess, from: &str, requests: Vec<Request>) -> Vec<ServerFrame> {
    let mut stream = connect_from(node, from).await;
    let mut bytes = encode_frame(
        &ClientFrame::Hello {
            version: proto::PROTOCOL_VERSION,
            agent: "abuse".into(),
        },
        1 << 16,
    )
    .expect("encode");
    for (i, request) in requests.into_iter().enumerate() {
        let frame = ClientFrame::Request {
            id: u32::try_from(i + 1).expect("id"),
            request,
        };
        bytes.extend(encode_frame(&frame, 1 << 16).expect("encode"));
    }
    // The node may close while this is being written: that is the point.
    let _ = stream.write_all(&bytes).await;
    let _ = stream.flush().await;
    read_until_closed(&mut stream).await
}

fn code_requests(numbers: impl Iterator<Item = String>) -> Vec<Request> {
    numbers
        .map(|n| Request::RequestCode {
            phone: PhoneNumber::parse(&n).expect("phone"),
        })
        .collect()
}

fn codes_sent(frames: &[ServerFrame]) -> usize {
    frames
        .iter()
        .filter(|f| {
            matches!(
                f,
                ServerFrame::Response {
                    response: Response::CodeSent { .. },
                    ..
                }
            )
        })
        .count()
}

fn rate_limited(frames: &[ServerFrame]) -> bool {
    frames.iter().any(|f| {
        matches!(
            f,
            ServerFrame::Error {
                code: ErrorCode::RateLimited { .. },
                ..
            }
        )
    })
}

fn closed_for_abuse(frames: &[ServerFrame]) -> bool {
    matches!(
        frames.last(),
        Some(ServerFrame::Closing {
            reason: CloseReason::ProtocolViolation,
            ..
        })
    )
}

/// Lines of the development code log whose number starts with `prefix`:
/// the codes that left the node (each would be an SMS).
fn codes_logged(node: &NodeProcess, prefix: &str) -> usize {
    std::fs::read_to_string(node.data_dir.join("verification-codes.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .count()
}

/// The victim registers by code (from 127.0.0.1) and logs in.
async fn victim_registers(node: &NodeProcess, phone: &str) -> Client {
    let phone = PhoneNumber::parse(phone).expect("phone");
    let token = node.register(&phone).await;
    let (client, _events) = Client::connect(node.client_config(), token)
        .await
        .expect("the victim logs in");
    client
}

/// One guest connection asks for codes to a thousand numbers, pipelined
/// (SMS pumping: every code is a paid SMS). It is answered RateLimited and
/// closed after its few codes, while a victim registering at the same
/// time gets its code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_pumping_from_one_connection_is_cut_off_and_a_victim_still_registers() {
    let node = NodeProcess::start();
    let pump = pipeline(
        &node,
        "127.0.0.2",
        code_requests((0..1_000).map(|i| format!("+4479110{i:05}"))),
    );
    let victim = victim_registers(&node, "+15550003001");
    let (frames, victim) = tokio::join!(pump, victim);

    assert!(rate_limited(&frames), "the pump was not refused");
    assert!(closed_for_abuse(&frames), "the pump was not closed");
    // codes_per_connection's burst is 3; generous bound.
    let sent = codes_sent(&frames);
    assert!(sent <= 5, "{sent} codes sent to one connection");
    assert!(codes_logged(&node, "+4479110") <= 5);
    assert_eq!(codes_logged(&node, "+15550003001"), 1, "the victim's code");
    victim.close().await;
}

/// A flood spread over many connections from one address, and over many
/// addresses of one /24, is limited per address and per subnet; a victim
/// from another subnet registers meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_over_many_connections_and_addresses_is_limited_per_address_and_subnet() {
    let node = NodeProcess::start();
    let node = &node;
    // 60 addresses of 127.0.5.0/24, 2 codes each (under the per-connection
    // and per-address limits): 120 codes asked of a subnet allowed 50.
    let subnet = (0..60u32).map(|a| async move {
        let numbers = (0..2).map(move |i| format!("+4479120{a:03}{i:02}"));
        pipeline(node, &format!("127.0.5.{}", a + 1), code_requests(numbers)).await
    });
    // 12 connections from one address, 3 codes each: 36 asked of an address
    // allowed 20.
    let address = (0..12u32).map(|c| async move {
        let numbers = (0..3).map(move |i| format!("+4479130{c:03}{i:02}"));
        pipeline(node, "127.0.6.1", code_requests(numbers)).await
    });
    let victim = victim_registers(node, "+15550003002");
    let (subnet, address, victim) = tokio::join!(
        futures::future::join_all(subnet),
        futures::future::join_all(address),
        victim
    );

    let subnet_sent: usize = subnet.iter().map(|f| codes_sent(f)).sum();
    assert!(subnet_sent <= 55, "{subnet_sent} codes to one /24");
    assert!(codes_logged(node, "+4479120") <= 55);
    assert!(
        subnet.iter().filter(|f| closed_for_abuse(f)).count() >= 10,
        "connections over the subnet's limit are closed"
    );
    let address_sent: usize = address.iter().map(|f| codes_sent(f)).sum();
    assert!(address_sent <= 24, "{address_sent} codes to one address");
    assert!(codes_logged(node, "+4479130") <= 24);
    assert!(
        address
            .iter()
            .any(|f| rate_limited(f) && closed_for_abuse(f))
    );
    assert_eq!(codes_logged(node, "+15550003002"), 1, "the victim's code");
    victim.close().await;
}

/// Guessing codes across numbers: wrong codes per phone were limited, but
/// one client could try any number of phones. Its connections are closed
/// and its address runs dry; the victim verifies its own code meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_codes_across_numbers_is_cut_off() {
    let node = NodeProcess::start();
    let node = &node;
    let guesses = |c: u32| {
        (0..100u32)
            .map(move |i| Request::Verify {
                phone: PhoneNumber::parse(&format!("+4479140{c:02}{i:03}")).expect("phone"),
                code: format!("{:06}", i * 7),
            })
            .collect::<Vec<_>>()
    };
    let attack = futures::future::join_all(
        (0..10u32).map(|c| async move { pipeline(node, "127.0.7.1", guesses(c)).await }),
    );
    let victim = victim_registers(node, "+15550003003");
    let (attack, victim) = tokio::join!(attack, victim);

    let answered = |frames: &[ServerFrame]| {
        frames
            .iter()
            .filter(|f| {
                matches!(
                    f,
                    ServerFrame::Error {
                        code: ErrorCode::CodeExpired | ErrorCode::InvalidCode,
                        ..
                    }
                )
            })
            .count()
    };
    let tried: usize = attack.iter().map(|f| answered(f)).sum();
    // verifies_per_connection 10, verifies_per_address 30: of 1,000 guesses
    // at most 30 are checked.
    assert!(tried <= 35, "{tried} guesses checked from one address");
    assert!(attack.iter().all(|f| closed_for_abuse(f)));
    victim.close().await;
}

const SECRET: &str = "abuse-test-admin-secret-0123";

fn mint(first: &str, count: u32, secret: &str) -> Request {
    Request::MintTestUsers {
        secret: secret.into(),
        first: PhoneNumber::parse(first).expect("phone"),
        count,
    }
}

fn refused(frames: &[ServerFrame], id: u32, code: ErrorCode) -> bool {
    frames.iter().any(
        |f| matches!(f, ServerFrame::Error { id: Some(i), code: c, .. } if *i == id && *c == code),
    )
}

fn minted(frames: &[ServerFrame], id: u32) -> Option<Vec<String>> {
    frames.iter().find_map(|f| match f {
        ServerFrame::Response {
            id: i,
            response: Response::TestUsers { tokens },
        } if *i == id => Some(tokens.clone()),
        _ => None,
    })
}

/// `MintTestUsers` with the right secret: never over an account that
/// exists (the victim's token stays the only way into it), never outside
/// the test range; a wrong secret closes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minting_never_takes_over_an_account_nor_leaves_the_test_range() {
    let node = NodeProcess::start_with(&[
        ("SWITCHBOARD_ADMIN__MINT_TEST_USERS", "true"),
        ("SWITCHBOARD_ADMIN__SECRET", SECRET),
    ]);
    // A real account inside the test range (registered by code), and one
    // outside it.
    let victim = victim_registers(&node, "+15550004010").await;
    let outsider = victim_registers(&node, "+447911555001").await;

    let frames = pipeline(
        &node,
        "127.0.0.2",
        vec![
            // Over the victim's number.
            mint("+15550004000", 20, SECRET),
            // Outside the test range, over the outsider and beside it.
            mint("+447911555001", 1, SECRET),
            mint("+447911600000", 5, SECRET),
            // Running past the end of the range.
            mint("+15550999999", 2, SECRET),
            // Inside the range and new: minted.
            mint("+15550005000", 3, SECRET),
        ],
    )
    .await;
    assert!(refused(&frames, 1, ErrorCode::InvalidRequest), "{frames:?}");
    assert!(minted(&frames, 1).is_none());
    for id in [2, 3, 4] {
        assert!(
            refused(&frames, id, ErrorCode::InvalidRequest),
            "{id}: {frames:?}"
        );
        assert!(minted(&frames, id).is_none(), "{id}");
    }
    let fresh = minted(&frames, 5).expect("new test users are minted");
    assert_eq!(fresh.len(), 3);

    // All or none: nothing of the refused request was minted, so its new
    // numbers can still be minted now.
    let again = pipeline(&node, "127.0.0.2", vec![mint("+15550004000", 10, SECRET)]).await;
    assert_eq!(minted(&again, 1).map(|t| t.len()), Some(10), "{again:?}");

    // The victim's and the outsider's sessions and tokens still work.
    let to = PhoneNumber::parse("+447911555001").expect("phone");
    victim
        .send(&to, b"still mine".to_vec())
        .await
        .expect("victim sends");
    outsider
        .send(
            &PhoneNumber::parse("+15550004010").expect("phone"),
            b"me too".to_vec(),
        )
        .await
        .expect("outsider sends");

    // A wrong secret: refused and closed, later requests unanswered.
    let frames = pipeline(
        &node,
        "127.0.0.3",
        vec![
            mint("+15550006000", 1, "abuse-test-admin-secret-0124"),
            mint("+15550006000", 1, "abuse-test-admin-secret-0125"),
            Request::Ping,
        ],
    )
    .await;
    assert!(refused(&frames, 1, ErrorCode::InvalidToken), "{frames:?}");
    assert!(closed_for_abuse(&frames), "{frames:?}");
    assert!(
        !frames
            .iter()
            .any(|f| matches!(f, ServerFrame::Response { .. })),
        "nothing is served after a wrong secret: {frames:?}"
    );
    victim.close().await;
    outsider.close().await;
}

/// The node refuses to start with a secret published in the examples,
/// naming the key; with its own secret it starts.
#[test]
fn the_node_refuses_to_start_with_an_example_secret() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "SWITCHBOARD_ADMIN__SECRET",
            "example-admin-secret",
            "admin.secret",
        ),
        (
            "SWITCHBOARD_AUTH__TOKEN_KEY",
            "example-token-key-replace-me-with-a-long-random-secret",
            "auth.token_key",
        ),
        (
            "SWITCHBOARD_AUTH__TOKEN_KEY",
            "change-me-to-a-long-random-secret-shared-by-all-nodes",
            "auth.token_key",
        ),
    ];
    for (key, value, name) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(binary())
            .args(["node", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env("SWITCHBOARD_ADMIN__MINT_TEST_USERS", "true")
            .env("SWITCHBOARD_ADMIN__SECRET", SECRET)
            .env(key, value)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the node");
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break Some(status);
            }
            if started.elapsed() > Duration::from_secs(15) {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the node started with {key}={value}");
        };
        let mut stderr = String::new();
        use std::io::Read;
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut stderr)
            .expect("read stderr");
        assert!(!status.success(), "{key}: {stderr}");
        assert!(stderr.contains(name), "the error names {name}: {stderr}");
    }
    // The control: the same node with secrets of its own starts.
    let node = NodeProcess::start_with(&[
        ("SWITCHBOARD_ADMIN__MINT_TEST_USERS", "true"),
        ("SWITCHBOARD_ADMIN__SECRET", SECRET),
        ("SWITCHBOARD_AUTH__TOKEN_KEY", &"k".repeat(40)),
    ]);
    drop(node);
}
