//! Watching strangers' presence (issue 13, item 11): online state, last
//! seen and typing reach only the users a victim lets see them (its
//! contacts by default, or everyone, or nobody), and presence requests are
//! rate-limited per connection.
//!
//! The victim and its contact use the client library; so does the
//! attacker, which is an ordinary logged-in user. The victim's settings
//! calls tolerate a node that does not know them (an older node): the
//! assertions on what the attacker and the contact see decide.

use std::time::Duration;

use client::{Client, ClientError, Event, Events, PhoneNumber, PresenceStatus, Visibility};
use proto::ErrorCode;

use crate::common::{NodeProcess, next_event, phone};

/// Whether `event` is presence news of `user`.
fn presence_of(event: &Event, user: &PhoneNumber) -> bool {
    matches!(event, Event::Presence { user: u, .. } if u == user)
}

/// Every event that arrives within `window`.
async fn drain(events: &mut Events, window: Duration) -> Vec<Event> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.recv()).await {
        seen.push(event);
    }
    seen
}

/// 1,000 numbers around `victim`, the victim among them.
fn arbitrary_numbers_with(victim: &PhoneNumber) -> Vec<PhoneNumber> {
    let mut users: Vec<PhoneNumber> = (0..999)
        .map(|n| phone(&format!("+1555009{n:04}")))
        .collect();
    users.push(victim.clone());
    users
}

/// Logs the victim in with `token`.
async fn victim_session(node: &NodeProcess, token: &str) -> (Client, Events) {
    Client::connect(node.client_config(), token.to_owned())
        .await
        .expect("victim logs in")
}

/// A stranger subscribing to 1,000 arbitrary numbers learns nothing of a
/// victim who has not shared presence with it, while the victim's contact
/// sees the victim come online, type and leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_watching_a_thousand_numbers_learns_nothing_of_the_victim() {
    let node = NodeProcess::start();
    let (attacker, mut attacker_events, attacker_phone) = node.login("+15550011001").await;
    let (friend, mut friend_events, friend_phone) = node.login("+15550011002").await;
    let victim = phone("+15550011003");
    let victim_token = node.register(&victim).await;

    // The victim shares its presence with its contact only (the default
    // visibility is Contacts).
    let (victim_client, _victim_events) = victim_session(&node, &victim_token).await;
    if let Err(e) = victim_client.set_contacts(vec![friend_phone.clone()]).await {
        eprintln!("SetContacts refused ({e}): an older node?");
    }
    victim_client.close().await;

    attacker
        .subscribe_presence(arbitrary_numbers_with(&victim))
        .await
        .expect("the subscribe itself is allowed");
    friend
        .subscribe_presence(vec![victim.clone()])
        .await
        .expect("subscribe");

    // The victim comes online and types to both.
    let (victim_client, _victim_events) = victim_session(&node, &victim_token).await;
    next_event(&mut friend_events, 10, |e| {
        matches!(e, Event::Presence { user, status: PresenceStatus::Online } if *user == victim)
    })
    .await;
    victim_client
        .typing(&friend_phone, true)
        .await
        .expect("typing");
    victim_client
        .typing(&attacker_phone, true)
        .await
        .expect("typing is answered even when dropped");
    next_event(
        &mut friend_events,
        10,
        |e| matches!(e, Event::Typing { from, active: true } if *from == victim),
    )
    .await;
    victim_client.close().await;
    next_event(&mut friend_events, 10, |e| {
        matches!(
            e,
            Event::Presence { user, status: PresenceStatus::Offline { last_seen_ms: Some(_) } }
                if *user == victim
        )
    })
    .await;

    // Several flush intervals later, the attacker has heard nothing of the
    // victim: no online, no last seen, no typing.
    let seen = drain(&mut attacker_events, Duration::from_secs(1)).await;
    let leaked: Vec<&Event> = seen
        .iter()
        .filter(|e| {
            presence_of(e, &victim) || matches!(e, Event::Typing { from, .. } if *from == victim)
        })
        .collect();
    assert!(leaked.is_empty(), "the stranger learned {leaked:?}");
    attacker.close().await;
    friend.close().await;
}

/// A victim whose setting is Nobody is invisible even to its contacts (and
/// its typing does not reach them), while a user with Everyone is seen by
/// strangers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_victim_with_nobody_is_invisible_even_to_contacts() {
    let node = NodeProcess::start();
    let (friend, mut friend_events, friend_phone) = node.login("+15550012001").await;
    let victim = phone("+15550012002");
    let open = phone("+15550012003");
    let victim_token = node.register(&victim).await;
    let open_token = node.register(&open).await;

    let (victim_client, _e) = victim_session(&node, &victim_token).await;
    for result in [
        victim_client.set_contacts(vec![friend_phone.clone()]).await,
        victim_client.set_presence_privacy(Visibility::Nobody).await,
    ] {
        if let Err(e) = result {
            eprintln!("presence setting refused ({e}): an older node?");
        }
    }
    victim_client.close().await;
    // The control: a user who shows itself to everyone.
    let (open_client, _e) = victim_session(&node, &open_token).await;
    if let Err(e) = open_client.set_presence_privacy(Visibility::Everyone).await {
        eprintln!("presence setting refused ({e}): an older node?");
    }
    open_client.close().await;

    friend
        .subscribe_presence(vec![victim.clone(), open.clone()])
        .await
        .expect("subscribe");
    let (victim_client, _e) = victim_session(&node, &victim_token).await;
    victim_client
        .typing(&friend_phone, true)
        .await
        .expect("typing");
    let (open_client, _e) = victim_session(&node, &open_token).await;
    // The control comes online and is seen: the pushes work. Everything
    // the friend gets meanwhile is kept for the check below.
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = friend_events.recv().await {
            let control_online = matches!(&event,
                Event::Presence { user, status: PresenceStatus::Online } if *user == open);
            seen.push(event);
            if control_online {
                return;
            }
        }
    })
    .await
    .expect("the control is seen online");
    victim_client.close().await;
    open_client.close().await;
    seen.extend(drain(&mut friend_events, Duration::from_secs(1)).await);
    let leaked: Vec<&Event> = seen
        .iter()
        .filter(|e| {
            presence_of(e, &victim) || matches!(e, Event::Typing { from, .. } if *from == victim)
        })
        .collect();
    assert!(leaked.is_empty(), "a Nobody user was seen: {leaked:?}");
    friend.close().await;
}

/// A connection flooding subscribes is refused beyond its rate (the
/// connection stays usable), while the victim's contact keeps getting the
/// victim's updates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_floods_are_rate_limited_while_contacts_keep_their_updates() {
    let node = NodeProcess::start();
    let (attacker, _attacker_events, _) = node.login("+15550013001").await;
    let (friend, mut friend_events, friend_phone) = node.login("+15550013002").await;
    let to_friend = friend_phone.clone();
    let victim = phone("+15550013003");
    let victim_token = node.register(&victim).await;
    let (victim_client, _e) = victim_session(&node, &victim_token).await;
    if let Err(e) = victim_client.set_contacts(vec![friend_phone.clone()]).await {
        eprintln!("SetContacts refused ({e}): an older node?");
    }
    victim_client.close().await;
    friend
        .subscribe_presence(vec![victim.clone()])
        .await
        .expect("subscribe");

    let numbers = arbitrary_numbers_with(&victim);
    let flood = tokio::spawn(async move {
        let friend_phone = to_friend;
        let (mut accepted, mut limited) = (0u32, 0u32);
        for _ in 0..300 {
            match attacker.subscribe_presence(numbers.clone()).await {
                Ok(()) => accepted += 1,
                Err(ClientError::Server {
                    code: ErrorCode::RateLimited { .. },
                    ..
                }) => limited += 1,
                // Counted as not limited; the assertion below tells.
                Err(e) => {
                    eprintln!("a subscribe failed otherwise: {e}");
                    break;
                }
            }
        }
        // Still connected and served?
        let usable = attacker.typing(&friend_phone, false).await.is_ok();
        (accepted, limited, usable)
    });

    // Meanwhile the victim comes and goes; its contact sees each change.
    for _ in 0..3 {
        let (victim_client, _e) = victim_session(&node, &victim_token).await;
        next_event(&mut friend_events, 10, |e| {
            matches!(e, Event::Presence { user, status: PresenceStatus::Online } if *user == victim)
        })
        .await;
        victim_client.close().await;
        next_event(&mut friend_events, 10, |e| {
            matches!(e, Event::Presence { user, status: PresenceStatus::Offline { .. } } if *user == victim)
        })
        .await;
    }

    let (accepted, limited, usable) = flood.await.expect("flood");
    // The default burst is 20 at 1 a second: the flood takes far less than
    // the 200 seconds it would need to be all accepted.
    assert!(
        limited >= 100,
        "{accepted} subscribes accepted, {limited} refused: not rate-limited"
    );
    assert!(usable, "a refusal keeps the connection open");
    friend.close().await;
}
