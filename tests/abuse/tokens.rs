//! Tokens that outlive their owner, registration takeover with an SMS code,
//! and locking a victim out by guessing its code (issue 13, items 9 and 12).
//!
//! The old owner, the attacker and the guessers speak through low-level
//! connections (`client::Connection`), from their own loopback addresses
//! where the per-requester counting matters; the victim and a control
//! sender use the client library.

use std::time::Duration;

use client::{Client, Connection, DisconnectReason, Event, PhoneNumber};
use proto::{CloseReason, ErrorCode, Request, Response};

use crate::common::{NodeProcess, is_message, next_event, phone, refusal};

/// A node whose resend interval lets one number verify twice in a test.
fn node() -> NodeProcess {
    NodeProcess::start_with(&[("SWITCHBOARD_AUTH__RESEND_INTERVAL_SECS", "1")])
}

/// Waits (at most 10 s) for `conn` to be closed by the node; its reason.
async fn closed_within(conn: &Connection) -> Option<DisconnectReason> {
    tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .ok()
}

/// `from` sends `to` a message that `to`'s client receives.
async fn delivered(from: &Client, to: &PhoneNumber, events: &mut client::Events, text: &str) {
    from.send(to, text.as_bytes().to_vec())
        .await
        .expect("send acked");
    match next_event(events, 10, is_message).await {
        Event::Message { payload, .. } => assert_eq!(payload, text.as_bytes()),
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_stop_working_after_logout_and_after_a_new_verify() {
    let node = node();
    let (bob, _bob_events, _) = node.login("+15551110001").await;
    let alice = phone("+15551110002");

    // The number's old owner: logged in with its token.
    let old_token = node.register(&alice).await;
    let (old_session, _old_pushes) = node.connect_raw(None).await;
    old_session
        .login(&old_token)
        .await
        .expect("old owner logs in");

    // The number changes hands: the new owner verifies it (past the
    // resend interval, 1 s here).
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let new_token = node.register(&alice).await;
    let reason = closed_within(&old_session)
        .await
        .expect("the old owner's session is closed at the new verification");
    assert!(
        matches!(
            reason,
            DisconnectReason::Closing {
                reason: CloseReason::TokenRevoked,
                ..
            }
        ),
        "{reason:?}"
    );
    let (again, _p) = node.connect_raw(None).await;
    assert_eq!(
        refusal(again.login(&old_token).await),
        ErrorCode::InvalidToken,
        "the old owner's token still logs in"
    );

    // The new owner's token works, and its mailbox is its own.
    let (new_owner, mut new_events) = Client::connect(node.client_config(), new_token.clone())
        .await
        .expect("the new owner logs in");
    delivered(&bob, &alice, &mut new_events, "welcome, new owner").await;
    new_owner.close().await;

    // Logout ends the token.
    let (session, _pushes) = node.connect_raw(None).await;
    session.login(&new_token).await.expect("login");
    assert_eq!(
        session.request(Request::Logout).await.expect("logout"),
        Response::Ok
    );
    let (after, _p) = node.connect_raw(None).await;
    assert_eq!(
        refusal(after.login(&new_token).await),
        ErrorCode::InvalidToken,
        "a logged-out token still logs in"
    );

    // The user signs in again and gets what was sent meanwhile.
    bob.send(&alice, b"while logged out".to_vec())
        .await
        .expect("send acked");
    // Past the resend interval (1 s here) since the last code.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let token = node.register(&alice).await;
    let (_alice, mut events) = Client::connect(node.client_config(), token)
        .await
        .expect("signs in again");
    // (The earlier message was not acked, so it may come again first.)
    next_event(
        &mut events,
        10,
        |e| matches!(e, Event::Message { payload, .. } if payload == b"while logged out"),
    )
    .await;
}

/// PIN guesses sent all at once (with a valid SMS code, from several
/// addresses) get no more than the day's five tries between them: each try
/// is counted before its slow hash, so tries in flight see each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_guesses_sent_at_once_share_the_days_five_tries() {
    use crate::common::cluster::{free_port, metric, scrape};
    let metrics = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let node = NodeProcess::start_with(&[
        ("SWITCHBOARD_AUTH__RESEND_INTERVAL_SECS", "1"),
        ("SWITCHBOARD_METRICS__LISTEN", metrics.as_str()),
    ]);
    let (alice, _events, alice_phone) = node.login("+15551130002").await;
    alice
        .set_registration_lock(Some("2468".into()))
        .await
        .expect("the lock is set");
    // Past the resend interval (1 s here) since the login's code.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    client::request_code(&node.client_config(), &alice_phone)
        .await
        .expect("code sent");
    let code = node.code_for(&alice_phone);

    let mut guessers = Vec::new();
    for source in ["127.0.0.21", "127.0.0.22", "127.0.0.23", "127.0.0.24"] {
        guessers.push(node.connect_raw(Some(source)).await);
    }
    let guesses = guessers.iter().flat_map(|(conn, _)| {
        (0..5).map(|i| {
            conn.request(Request::VerifyWithPin {
                phone: alice_phone.clone(),
                code: code.clone(),
                pin: format!("{:04}", 1000 + i),
            })
        })
    });
    let answers = futures::future::join_all(guesses).await;
    let mut left: Vec<u32> = answers
        .into_iter()
        .map(|answer| match refusal(answer) {
            ErrorCode::RegistrationLocked { attempts_left } => attempts_left,
            other => panic!("expected RegistrationLocked, got {other:?}"),
        })
        .collect();
    left.sort_unstable();
    // Five tries were checked (4, 3, 2, 1, 0 left after each); the other
    // fifteen were refused unchecked.
    assert_eq!(left[15..], [0, 1, 2, 3, 4], "{left:?}");
    assert!(left[..15].iter().all(|&l| l == 0), "{left:?}");
    // Only five PINs were hashed and found wrong, not twenty.
    let wrong = metric(
        &scrape(&metrics),
        "switchboard_auth_verifies_total",
        "outcome=\"wrong_pin\"",
    );
    assert_eq!(wrong, Some(5.0), "PINs checked");

    // The day's tries are used up: the right PIN waits too.
    let (owner, _p) = node.connect_raw(None).await;
    let right = owner
        .request(Request::VerifyWithPin {
            phone: alice_phone.clone(),
            code,
            pin: "2468".into(),
        })
        .await;
    assert_eq!(
        refusal(right),
        ErrorCode::RegistrationLocked { attempts_left: 0 }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_lock_stops_an_attacker_with_a_valid_sms_code() {
    let node = node();
    let (bob, _bob_events, _) = node.login("+15551120001").await;
    let (alice, mut alice_events, alice_phone) = node.login("+15551120002").await;
    alice
        .set_registration_lock(Some("2468".into()))
        .await
        .expect("the lock is set");

    // The attacker gets a code to the victim's number (a SIM swap, an
    // intercepted SMS: here, the node's code log), past the resend interval
    // (1 s here) since the login's code.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let cfg = node.client_config();
    client::request_code(&cfg, &alice_phone)
        .await
        .expect("code sent");
    let code = node.code_for(&alice_phone);
    let (attacker, _p) = node.connect_raw(Some("127.0.0.9")).await;
    let plain = attacker
        .request(Request::Verify {
            phone: alice_phone.clone(),
            code: code.clone(),
        })
        .await;
    assert_eq!(
        refusal(plain),
        ErrorCode::RegistrationLocked { attempts_left: 5 },
        "a valid code alone takes over a locked number"
    );
    for (pin, left) in [("1111", 4), ("0000", 3)] {
        let guess = attacker
            .request(Request::VerifyWithPin {
                phone: alice_phone.clone(),
                code: code.clone(),
                pin: pin.into(),
            })
            .await;
        assert_eq!(
            refusal(guess),
            ErrorCode::RegistrationLocked {
                attempts_left: left
            }
        );
    }

    // The victim is untouched: still logged in, still receiving.
    delivered(&bob, &alice_phone, &mut alice_events, "still mine").await;

    // The owner, on a new phone, registers with the code and the PIN.
    let (owner, _p) = node.connect_raw(None).await;
    match owner
        .request(Request::VerifyWithPin {
            phone: alice_phone.clone(),
            code,
            pin: "2468".into(),
        })
        .await
        .expect("the owner verifies with the PIN")
    {
        Response::Verified { .. } => {}
        other => panic!("expected Verified, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_a_victims_code_from_other_addresses_does_not_lock_the_victim_out() {
    let node = node();
    let (carol, _carol_events, _) = node.login("+15551130001").await;
    let victim = phone("+15551130002");
    let cfg = node.client_config();
    client::request_code(&cfg, &victim)
        .await
        .expect("code sent");
    let code = node.code_for(&victim);

    // Two attackers guess the victim's code, five wrong guesses each (a
    // per-phone limit of five would lock the code after the first).
    let mut guesses = (0..1_000_000u32)
        .map(|n| format!("{n:06}"))
        .filter(|g| *g != code);
    for source in ["127.0.0.21", "127.0.0.22"] {
        let (guesser, _p) = node.connect_raw(Some(source)).await;
        for _ in 0..5 {
            let guess = guesser
                .request(Request::Verify {
                    phone: victim.clone(),
                    code: guesses.next().expect("a guess"),
                })
                .await;
            assert!(
                matches!(refusal(guess), ErrorCode::InvalidCode),
                "a guess from {source}"
            );
        }
        // This source's tries are used up, even for the right code.
        let more = guesser
            .request(Request::Verify {
                phone: victim.clone(),
                code: code.clone(),
            })
            .await;
        assert_eq!(refusal(more), ErrorCode::TooManyAttempts);
    }

    // The victim's own code still verifies, and the victim is in.
    let (token, _) = client::verify(&cfg, &victim, &code)
        .await
        .expect("the victim's own code verifies");
    let (_victim, mut events) = Client::connect(node.client_config(), token)
        .await
        .expect("login");
    delivered(&carol, &victim, &mut events, "you are in").await;
}
