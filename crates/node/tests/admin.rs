//! The admin channel against a real node: its Unix socket, the status of
//! the node and its queues, a user's report, revoking a user's tokens, bad
//! requests, and draining.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use client::{Client, DisconnectReason, Event};
use common::{login, next_matching, register, start, test_config};
use node::admin::{AdminReply, AdminRequest, ask};
use proto::CloseReason;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Waits for the client's connection to be closed by the node, for `why`.
async fn assert_closed_for(events: &mut client::Events, why: CloseReason) {
    let closed = next_matching(events, 10, |e| matches!(e, Event::Disconnected { .. })).await;
    match closed {
        Some(Event::Disconnected {
            reason: DisconnectReason::Closing { reason, .. },
            ..
        }) => assert_eq!(reason, why),
        other => panic!("not closed for {why:?}: {other:?}"),
    }
}

/// Sends raw bytes and reads the one reply line.
async fn raw(socket: &std::path::Path, bytes: &[u8]) -> String {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .expect("connect");
    let (read, mut write) = stream.into_split();
    write.write_all(bytes).await.expect("write");
    let mut line = String::new();
    BufReader::new(read)
        .read_line(&mut line)
        .await
        .expect("read");
    line
}

/// One node at a time: a process registers one node's actors by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_channel() {
    let backups = tempfile::tempdir().expect("tempdir");
    backup_while_serving_then_restore(backups.path()).await;
    status_user_and_revoke_over_the_admin_socket().await;
    bad_requests_get_an_error_and_the_channel_goes_on().await;
    drain_moves_clients_away_and_reports_not_ready().await;
}

async fn status_user_and_revoke_over_the_admin_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = test_config(dir.path());
    let socket = config.admin.socket_path(&config.data_dir);
    let (node, cfg) = start(config).await;
    let mode = std::fs::metadata(&socket)
        .expect("the socket is in the data directory")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the socket is the node user's alone");

    let (alice, _alice_events) = login(&cfg, dir.path(), "+15550000801").await;
    let bob_token = register(&cfg, dir.path(), "+15550000802").await;
    let (bob, mut bob_events) = Client::connect(cfg.clone(), bob_token.clone())
        .await
        .expect("login");
    let carol = test_support::phone("+15550000803");
    register(&cfg, dir.path(), carol.as_str()).await;
    // Two messages wait for carol, who is offline.
    for text in [&b"one"[..], b"two"] {
        alice.send(&carol, text.to_vec()).await.expect("ack");
    }

    let AdminReply::Status(status) = ask(&socket, &AdminRequest::Status, TIMEOUT)
        .await
        .expect("status")
    else {
        panic!("not a status");
    };
    assert_eq!(status.node, node.config().name);
    assert!(status.ready, "{}", status.readiness);
    assert_eq!(status.connections, 2);
    assert!(status.cluster.is_none());
    assert_eq!(status.fragments.len(), 4);
    assert!(
        status.fragments.iter().all(|f| f.serves && !f.unavailable),
        "{:?}",
        status.fragments
    );
    assert_eq!(status.fragments.iter().map(|f| f.online).sum::<usize>(), 2);
    let actors: Vec<&str> = status
        .queues
        .actors
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    for name in [
        "auth",
        "presence",
        "sessions",
        "fragment-0",
        "fragment-3",
        "root",
    ] {
        assert!(actors.contains(&name), "{name} missing from {actors:?}");
    }
    assert_eq!(status.queues.sessions.sessions, 2);
    assert_eq!(
        ask(&socket, &AdminRequest::Probe, TIMEOUT).await,
        Ok(AdminReply::Probe {
            healthy: true,
            ready: true,
            reason: "ok".into()
        })
    );

    let report = |phone: &proto::PhoneNumber| {
        let request = AdminRequest::User {
            phone: phone.clone(),
        };
        let socket = socket.clone();
        async move {
            match ask(&socket, &request, TIMEOUT).await.expect("user") {
                AdminReply::User(report) => report,
                other => panic!("not a user report: {other:?}"),
            }
        }
    };
    let carols = report(&carol).await;
    assert!(carols.errors.is_empty(), "{:?}", carols.errors);
    let mailbox = carols.mailbox.expect("served here");
    assert_eq!(mailbox.held_entries, 2);
    assert_eq!(mailbox.held_bytes, 6);
    assert!(mailbox.session.is_none());
    let account = carols.account.expect("account");
    assert!(account.registered_at_ms.is_some());
    assert!(matches!(
        carols.presence,
        Some(proto::PresenceStatus::Offline { .. })
    ));
    let bobs = report(bob.user()).await;
    let bob_mailbox = bobs.mailbox.clone().expect("served here");
    assert_eq!(bob_mailbox.held_entries, 0);
    assert!(bob_mailbox.session.is_some(), "bob is connected: {bobs:?}");
    assert_eq!(bobs.presence, Some(proto::PresenceStatus::Online));

    // Revoking bob's tokens closes his connection for good and his token
    // no longer logs in.
    let before = bobs.account.expect("account").token_generation;
    let AdminReply::Revoked {
        token_generation, ..
    } = ask(
        &socket,
        &AdminRequest::Revoke {
            phone: bob.user().clone(),
        },
        TIMEOUT,
    )
    .await
    .expect("revoke")
    else {
        panic!("not revoked");
    };
    assert!(token_generation > before);
    assert_closed_for(&mut bob_events, CloseReason::TokenRevoked).await;
    assert!(
        Client::connect(cfg.clone(), bob_token).await.is_err(),
        "a revoked token logs in"
    );
    // Alice is untouched.
    alice
        .send(&carol, b"three".to_vec())
        .await
        .expect("alice still sends");

    alice.close().await;
    node.shutdown().await;
}

async fn bad_requests_get_an_error_and_the_channel_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = test_config(dir.path());
    let socket = config.admin.socket_path(&config.data_dir);
    let (node, _cfg) = start(config).await;

    for bytes in [
        &b"not json\n"[..],
        b"{\"command\":\"format_disk\"}\n",
        b"{\"command\":\"user\",\"phone\":\"12\"}\n",
        b"\n",
    ] {
        let line = raw(&socket, bytes).await;
        let reply: AdminReply = serde_json::from_str(&line).expect("a reply");
        assert!(
            matches!(reply, AdminReply::Error { .. }),
            "{:?} got {reply:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    // A line longer than the limit is refused without being read whole.
    let long = vec![b'x'; node::admin::MAX_REQUEST_BYTES + 10];
    let line = raw(&socket, &long).await;
    assert!(line.contains("at most"), "{line}");
    // A client that connects and says nothing does not block the others.
    let _silent = tokio::net::UnixStream::connect(&socket)
        .await
        .expect("connect");
    assert!(matches!(
        ask(&socket, &AdminRequest::Status, TIMEOUT).await,
        Ok(AdminReply::Status(_))
    ));
    node.shutdown().await;
}

async fn drain_moves_clients_away_and_reports_not_ready() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = test_config(dir.path());
    let socket = config.admin.socket_path(&config.data_dir);
    let (node, cfg) = start(config).await;
    let (_alice, mut alice_events) = login(&cfg, dir.path(), "+15550000811").await;
    let token = register(&cfg, dir.path(), "+15550000812").await;

    let reply = ask(&socket, &AdminRequest::Drain, TIMEOUT)
        .await
        .expect("drain");
    assert_eq!(reply, AdminReply::Draining { sessions_told: 1 });
    assert_closed_for(&mut alice_events, CloseReason::ShuttingDown).await;
    let AdminReply::Status(status) = ask(&socket, &AdminRequest::Status, TIMEOUT)
        .await
        .expect("status")
    else {
        panic!("not a status");
    };
    assert!(!status.ready);
    assert!(
        status.readiness.contains("draining"),
        "{}",
        status.readiness
    );
    let AdminReply::Probe { healthy, ready, .. } = ask(&socket, &AdminRequest::Probe, TIMEOUT)
        .await
        .expect("probe")
    else {
        panic!("not a probe");
    };
    assert!(healthy && !ready, "a draining node is healthy, not ready");
    // No new connection is taken.
    let refused =
        tokio::time::timeout(Duration::from_secs(5), Client::connect(cfg.clone(), token)).await;
    assert!(
        !matches!(refused, Ok(Ok(_))),
        "a draining node took a login"
    );
    node.shutdown().await;
}

/// A backup taken while the node serves holds the messages waiting in a
/// mailbox (staged, not yet in the database's tables) and the accounts; a
/// node started on its restored copy delivers them.
async fn backup_while_serving_then_restore(backups: &std::path::Path) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = test_config(dir.path());
    let socket = config.admin.socket_path(&config.data_dir);
    let (node, cfg) = start(config).await;
    let (alice, _alice_events) = login(&cfg, dir.path(), "+15550000821").await;
    let dave_token = register(&cfg, dir.path(), "+15550000822").await;
    let dave = test_support::phone("+15550000822");
    for text in [&b"kept one"[..], b"kept two"] {
        alice.send(&dave, text.to_vec()).await.expect("ack");
    }
    let target = backups.join("b1");
    let AdminReply::BackedUp { manifest, .. } = ask(
        &socket,
        &AdminRequest::Backup {
            dir: target.clone(),
        },
        TIMEOUT,
    )
    .await
    .expect("backup") else {
        panic!("not backed up");
    };
    assert_eq!(manifest.node, node.config().name);
    assert_eq!(manifest.data_format, offline_queue::store::DATA_FORMAT);
    // Sent after the backup: not in it.
    alice.send(&dave, b"after".to_vec()).await.expect("ack");
    // A second backup into the same folder, or a relative path, is refused.
    for dir in [target.clone(), std::path::PathBuf::from("relative")] {
        assert!(matches!(
            ask(&socket, &AdminRequest::Backup { dir }, TIMEOUT).await,
            Ok(AdminReply::Error { .. })
        ));
    }
    alice.close().await;
    node.shutdown().await;

    // Restoring over a data directory with a database is refused.
    assert!(node::admin::restore(&target, dir.path()).is_err());
    let restored = tempfile::tempdir().expect("tempdir");
    let again = node::admin::restore(&target, restored.path()).expect("restore");
    assert_eq!(again, manifest);
    let (node, cfg) = start(test_config(restored.path())).await;
    let (dave_client, mut dave_events) = Client::connect(cfg.clone(), dave_token)
        .await
        .expect("the token works on the restored node");
    assert_eq!(dave_client.user(), &dave);
    let mut got = Vec::new();
    while let Some(Event::Message {
        payload, msg_id, ..
    }) = next_matching(&mut dave_events, 3, |e| matches!(e, Event::Message { .. })).await
    {
        got.push(payload);
        dave_client.ack(vec![msg_id]).await.expect("ack");
    }
    assert_eq!(got, vec![b"kept one".to_vec(), b"kept two".to_vec()]);
    dave_client.close().await;
    node.shutdown().await;
}
