//! Groups against a real node (TLS sockets, the group-commit writer, redb
//! on disk): members get changes and messages once each, in log order,
//! online at once or at their next login; added members see nothing from
//! before, removed ones nothing after; senders get the delivered and read
//! ticks and message info; resends are stored once; hostile
//! and bad requests get typed errors and harm no one.

mod common;

use std::time::Duration;

use client::{ClientError, Connection, Event, Events, GroupChange, GroupCommand, GroupRole, Tls};
use common::{login, next_matching, register, start, test_config};
use proto::{ErrorCode, GroupId, PhoneNumber, ReceiptKind, Request, Response};

/// What a member saw of a group, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Message(PhoneNumber, Vec<u8>),
    Change(PhoneNumber, GroupChange),
}

/// The next `count` group items of `group` (acked as they come).
async fn group_items(
    client: &client::Client,
    events: &mut Events,
    group: GroupId,
    count: usize,
) -> Vec<Seen> {
    let mut seen = Vec::new();
    let mut last_position = 0;
    while seen.len() < count {
        let event = next_matching(events, 20, |e| {
            matches!(e, Event::GroupMessage { group: g, .. } | Event::GroupEvent { group: g, .. } if *g == group)
        })
        .await
        .unwrap_or_else(|| panic!("only {} of {count} group items: {seen:?}", seen.len()));
        let (position, item) = match &event {
            Event::GroupMessage {
                position,
                from,
                payload,
                ..
            } => (*position, Seen::Message(from.clone(), payload.clone())),
            Event::GroupEvent {
                position,
                by,
                change,
                ..
            } => (*position, Seen::Change(by.clone(), change.clone())),
            _ => unreachable!("matched above"),
        };
        assert!(
            position > last_position,
            "positions grow: {position} after {last_position}"
        );
        last_position = position;
        seen.push(item);
        client.ack_event(&event).await.expect("ack");
    }
    seen
}

/// Nothing more of `group` arrives within a moment.
async fn nothing_more(events: &mut Events, group: GroupId) {
    let more = next_matching(events, 1, |e| {
        matches!(e, Event::GroupMessage { group: g, .. } | Event::GroupEvent { group: g, .. } if *g == group)
    })
    .await;
    assert_eq!(more, None, "nothing more of the group");
}

fn text(from: &client::Client, words: &str) -> Seen {
    Seen::Message(from.user().clone(), words.as_bytes().to_vec())
}

/// One node for every scenario (a process holds one node: actor names
/// are global); each scenario has its own numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_on_a_real_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.limits.max_group_members = 4;
    // Fourteen numbers register from one address.
    let plenty = auth::limits::BucketConfig {
        burst: 100,
        per_hour: 1000,
    };
    config.auth.limits.codes_per_address = plenty;
    config.auth.limits.codes_per_subnet = plenty;
    config.auth.limits.codes_per_node = plenty;
    let (node, cfg) = start(config).await;
    members_get_changes_and_messages_in_order_online_and_at_their_next_login(&cfg, dir.path())
        .await;
    a_thousand_pipelined_group_messages_arrive_once_in_order_at_every_member(&cfg, dir.path())
        .await;
    resends_are_stored_once_and_bad_requests_get_typed_errors_without_harm(&node, &cfg, dir.path())
        .await;
    the_sender_sees_delivered_then_read_ticks_and_who_has_what(&cfg, dir.path()).await;
    node.shutdown().await;
}

/// Waits for group receipts of `kind` until they cover `positions`.
async fn ticked(events: &mut Events, group: GroupId, kind: ReceiptKind, positions: &[u64]) {
    let mut missing: std::collections::BTreeSet<u64> = positions.iter().copied().collect();
    while !missing.is_empty() {
        let event = next_matching(events, 20, |e| {
            matches!(e, Event::GroupReceipt { group: g, kind: k, .. } if *g == group && *k == kind)
        })
        .await
        .unwrap_or_else(|| panic!("no {kind:?} receipt for {missing:?}"));
        if let Event::GroupReceipt { positions, .. } = event {
            for position in positions {
                assert!(
                    missing.remove(&position),
                    "{kind:?} of {position} told twice or unasked"
                );
            }
        }
    }
}

async fn the_sender_sees_delivered_then_read_ticks_and_who_has_what(
    cfg: &client::ClientConfig,
    dir: &std::path::Path,
) {
    let (alice, mut alice_events) = login(cfg, dir, "+15550001401").await;
    let (bob, mut bob_events) = login(cfg, dir, "+15550001402").await;
    let (carol, mut carol_events) = login(cfg, dir, "+15550001403").await;
    let others = vec![bob.user().clone(), carol.user().clone()];
    let group = alice.create_group("ticks", others).await.expect("create");
    let one = alice
        .send_group(group, b"one".to_vec())
        .await
        .expect("one")
        .msg_id;
    let two = alice
        .send_group(group, b"two".to_vec())
        .await
        .expect("two")
        .msg_id;
    for (client, events) in [(&bob, &mut bob_events), (&carol, &mut carol_events)] {
        group_items(client, events, group, 3).await;
    }
    ticked(
        &mut alice_events,
        group,
        ReceiptKind::Delivered,
        &[one, two],
    )
    .await;
    let delivered = Some(ReceiptKind::Delivered);
    let read = Some(ReceiptKind::Read);
    assert_eq!(
        alice.group_message_info(group, one).await.expect("info"),
        vec![
            (bob.user().clone(), delivered),
            (carol.user().clone(), delivered)
        ]
    );
    let info_by_bob = bob.group_message_info(group, one).await;
    assert!(
        matches!(
            &info_by_bob,
            Err(ClientError::Server {
                code: ErrorCode::InvalidRequest,
                ..
            })
        ),
        "only the sender asks: {info_by_bob:?}"
    );
    // Bob reads both, Carol the first: read by everyone is the first only.
    bob.read_group(group, two).await.expect("bob reads");
    carol.read_group(group, one).await.expect("carol reads");
    ticked(&mut alice_events, group, ReceiptKind::Read, &[one]).await;
    assert_eq!(
        alice.group_message_info(group, two).await.expect("info"),
        vec![
            (bob.user().clone(), read),
            (carol.user().clone(), delivered)
        ]
    );
    carol.read_group(group, two).await.expect("carol reads on");
    ticked(&mut alice_events, group, ReceiptKind::Read, &[two]).await;
    assert!(
        alice
            .group_message_info(group, two)
            .await
            .expect("info")
            .is_empty(),
        "nothing kept once everyone read it"
    );
    // Reading what the group never logged is refused.
    let beyond = bob.read_group(group, two + 1_000_000).await;
    assert!(
        matches!(
            &beyond,
            Err(ClientError::Server {
                code: ErrorCode::InvalidRequest,
                ..
            })
        ),
        "{beyond:?}"
    );
    for client in [alice, bob, carol] {
        client.close().await;
    }
}

async fn members_get_changes_and_messages_in_order_online_and_at_their_next_login(
    cfg: &client::ClientConfig,
    dir: &std::path::Path,
) {
    let (alice, mut alice_events) = login(cfg, dir, "+15550001001").await;
    let (bob, mut bob_events) = login(cfg, dir, "+15550001002").await;
    let carol_token = register(cfg, dir, "+15550001003").await;
    let (carol, carol_events) = client::Client::connect(cfg.clone(), carol_token.clone())
        .await
        .expect("carol logs in");
    let (dave, mut dave_events) = login(cfg, dir, "+15550001004").await;
    let carol_phone = carol.user().clone();
    // Carol goes offline: her share waits in her mailbox.
    drop(carol_events);
    carol.close().await;

    let group = alice
        .create_group("climbing", vec![bob.user().clone(), carol_phone.clone()])
        .await
        .expect("create");
    alice
        .send_group(group, b"hi all".to_vec())
        .await
        .expect("send 1");
    bob.send_group(group, b"hello alice".to_vec())
        .await
        .expect("send 2");
    alice
        .change_group(group, GroupCommand::Add(vec![dave.user().clone()]))
        .await
        .expect("add dave");
    alice
        .send_group(group, b"welcome dave".to_vec())
        .await
        .expect("send 3");
    alice
        .change_group(group, GroupCommand::Remove(vec![carol_phone.clone()]))
        .await
        .expect("remove carol");
    alice
        .send_group(group, b"carol left".to_vec())
        .await
        .expect("send 4");

    let created = Seen::Change(
        alice.user().clone(),
        GroupChange::Created {
            name: "climbing".into(),
            members: vec![
                alice.user().clone(),
                bob.user().clone(),
                carol_phone.clone(),
            ],
        },
    );
    let added = Seen::Change(
        alice.user().clone(),
        GroupChange::Added {
            members: vec![dave.user().clone()],
        },
    );
    let removed = Seen::Change(
        alice.user().clone(),
        GroupChange::Removed {
            members: vec![carol_phone.clone()],
        },
    );
    let bob_expected = vec![
        created.clone(),
        text(&alice, "hi all"),
        added.clone(),
        text(&alice, "welcome dave"),
        removed.clone(),
        text(&alice, "carol left"),
    ];
    assert_eq!(
        group_items(&bob, &mut bob_events, group, 6).await,
        bob_expected
    );
    let dave_expected = vec![
        added.clone(),
        text(&alice, "welcome dave"),
        removed.clone(),
        text(&alice, "carol left"),
    ];
    assert_eq!(
        group_items(&dave, &mut dave_events, group, 4).await,
        dave_expected
    );
    let alice_expected = vec![
        created.clone(),
        text(&bob, "hello alice"),
        added.clone(),
        removed.clone(),
    ];
    assert_eq!(
        group_items(&alice, &mut alice_events, group, 4).await,
        alice_expected
    );

    // Carol logs in: everything up to her removal, nothing after.
    let (carol, mut carol_events) = client::Client::connect(cfg.clone(), carol_token)
        .await
        .expect("carol logs in again");
    let carol_expected = vec![
        created,
        text(&alice, "hi all"),
        Seen::Message(bob.user().clone(), b"hello alice".to_vec()),
        added,
        text(&alice, "welcome dave"),
        removed,
    ];
    assert_eq!(
        group_items(&carol, &mut carol_events, group, 6).await,
        carol_expected
    );
    nothing_more(&mut carol_events, group).await;
    match carol.send_group(group, b"still here?".to_vec()).await {
        Err(ClientError::Server {
            code: ErrorCode::NotGroupMember,
            ..
        }) => {}
        other => panic!("a removed member may not send: {other:?}"),
    }

    assert_eq!(bob.list_groups().await.expect("list"), vec![group]);
    assert_eq!(dave.list_groups().await.expect("list"), vec![group]);
    assert_eq!(
        carol.list_groups().await.expect("list"),
        Vec::<GroupId>::new(),
        "removed"
    );
    let (name, members) = bob.group_info(group).await.expect("info");
    assert_eq!(name, "climbing");
    assert_eq!(
        members,
        vec![
            (alice.user().clone(), GroupRole::Admin),
            (bob.user().clone(), GroupRole::Member),
            (dave.user().clone(), GroupRole::Member),
        ]
    );
    for client in [alice, bob, carol, dave] {
        client.close().await;
    }
}

async fn a_thousand_pipelined_group_messages_arrive_once_in_order_at_every_member(
    cfg: &client::ClientConfig,
    dir: &std::path::Path,
) {
    let (alice, _alice_events) = login(cfg, dir, "+15550001101").await;
    let mut members = Vec::new();
    for n in 2..=4 {
        members.push(login(cfg, dir, &format!("+1555000110{n}")).await);
    }
    let phones: Vec<PhoneNumber> = members.iter().map(|(c, _)| c.user().clone()).collect();
    let group = alice.create_group("load", phones).await.expect("create");
    let mut acks = Vec::new();
    for i in 0..1000u32 {
        let sending = alice
            .queue_send_group(group, i.to_be_bytes().to_vec())
            .expect("queued");
        acks.push(sending);
    }
    let mut positions = Vec::new();
    for ack in acks {
        positions.push(ack.await.expect("acked").msg_id);
    }
    assert!(
        positions.windows(2).all(|p| p[0] < p[1]),
        "stored in the order sent"
    );
    for (client, events) in &mut members {
        let items = group_items(client, events, group, 1001).await;
        let numbers: Vec<u32> = items[1..]
            .iter()
            .map(|item| match item {
                Seen::Message(_, payload) => {
                    u32::from_be_bytes(payload.as_slice().try_into().expect("4 bytes"))
                }
                other => panic!("expected a message, got {other:?}"),
            })
            .collect();
        assert_eq!(numbers, (0..1000).collect::<Vec<_>>(), "{}", client.user());
        nothing_more(events, group).await;
    }
    alice.close().await;
    for (client, _) in members {
        client.close().await;
    }
}

/// A raw connection, to resend with the same client id and to send what
/// the client library never would.
async fn raw(node: &node::Node, cfg: &client::ClientConfig, token: &str) -> Connection {
    let tls = Tls::new(&cfg.ca_pem, &cfg.server_name).expect("tls");
    let server = node.local_addr().to_string();
    let (conn, _pushes) = Connection::connect(&server, &tls, "test", Duration::from_secs(10))
        .await
        .expect("connect");
    conn.login(token).await.expect("login");
    conn
}

fn refused(result: Result<Response, ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Server { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn resends_are_stored_once_and_bad_requests_get_typed_errors_without_harm(
    node: &node::Node,
    cfg: &client::ClientConfig,
    dir: &std::path::Path,
) {
    let token = register(cfg, dir, "+15550001201").await;
    let (bob, mut bob_events) = login(cfg, dir, "+15550001202").await;
    let (mallory, _mallory_events) = login(cfg, dir, "+15550001203").await;
    let alice = raw(node, cfg, &token).await;

    let created = alice
        .request(Request::CreateGroup {
            name: "pair".into(),
            members: vec![bob.user().clone()],
        })
        .await
        .expect("create");
    let Response::GroupCreated { group } = created else {
        panic!("expected GroupCreated, got {created:?}");
    };
    let send = |cid: u64| Request::SendGroup {
        group,
        client_msg_id: cid,
        after: None,
        payload: vec![cid as u8],
    };
    let first = alice.request(send(1)).await.expect("stored");
    let again = alice.request(send(1)).await.expect("answered again");
    assert_eq!(first, again, "a resend gets the first answer");
    let after_missing = alice
        .request(Request::SendGroup {
            group,
            client_msg_id: 3,
            after: Some(2),
            payload: vec![3],
        })
        .await;
    assert_eq!(refused(after_missing), ErrorCode::EarlierMessageMissing);

    // A creation asked again (its answer lost with a connection) is
    // answered with the first group, also while the first is in flight.
    let create_once = |create_id: u64| Request::CreateGroupOnce {
        create_id,
        name: "once".into(),
        members: vec![bob.user().clone()],
    };
    let (first, racing) =
        tokio::join!(alice.request(create_once(7)), alice.request(create_once(7)));
    let first = first.expect("created");
    assert!(
        matches!(first, Response::GroupCreated { group: g } if g != group),
        "{first:?}"
    );
    assert_eq!(
        racing.expect("answered"),
        first,
        "in flight: the same group"
    );
    let again = alice.request(create_once(7)).await.expect("answered");
    assert_eq!(again, first, "stored: the same group");
    let other = alice.request(create_once(8)).await.expect("created");
    assert!(
        matches!(other, Response::GroupCreated { .. }) && other != first,
        "another create id makes another group: {other:?}"
    );

    // Outsiders, members acting as admins, unknown ids, limits, bad names.
    let cases = [
        (
            mallory
                .send_group(group, b"spam".to_vec())
                .await
                .map(|_| ()),
            ErrorCode::NotGroupMember,
        ),
        (
            bob.change_group(group, GroupCommand::Add(vec![mallory.user().clone()]))
                .await,
            ErrorCode::NotGroupAdmin,
        ),
        (
            mallory.change_group(group, GroupCommand::Leave).await,
            ErrorCode::NotGroupMember,
        ),
        (
            bob.send_group(group ^ 1, b"?".to_vec()).await.map(|_| ()),
            ErrorCode::UnknownGroup,
        ),
        (
            bob.group_info(u64::MAX).await.map(|_| ()),
            ErrorCode::UnknownGroup,
        ),
        (
            mallory.group_info(group).await.map(|_| ()),
            ErrorCode::NotGroupMember,
        ),
        (
            mallory.create_group("", vec![]).await.map(|_| ()),
            ErrorCode::InvalidRequest,
        ),
        (
            mallory
                .create_group(
                    "crowd",
                    (1..=4)
                        .map(|n| {
                            client::PhoneNumber::parse(&format!("+1555000130{n}")).expect("phone")
                        })
                        .collect(),
                )
                .await
                .map(|_| ()),
            ErrorCode::GroupFull { limit: 4 },
        ),
    ];
    for (i, (result, expected)) in cases.into_iter().enumerate() {
        match result {
            Err(ClientError::Server { code, .. }) => assert_eq!(code, expected, "case {i}"),
            other => panic!("case {i}: expected {expected:?}, got {other:?}"),
        }
    }
    // Bob still gets exactly the creation and one message, and 1:1
    // messaging goes on for everyone.
    let items = group_items(&bob, &mut bob_events, group, 2).await;
    let alice_phone = PhoneNumber::parse("+15550001201").expect("phone");
    assert_eq!(items[1], Seen::Message(alice_phone, vec![1]));
    nothing_more(&mut bob_events, group).await;
    mallory
        .send(bob.user(), b"plain message".to_vec())
        .await
        .expect("1:1 still works");
    alice.close();
    bob.close().await;
    mallory.close().await;
}
