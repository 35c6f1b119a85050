//! The fragment actor over a real redb file: durability across restarts and
//! ids that never repeat.

use std::time::Duration;

use offline_queue::{
    Endpoint, EntryBody, FragmentActor, FragmentArgs, FragmentConfig, FragmentMsg, NewMessage,
    Push, fragment_name,
};
use ractor::{Actor, ActorRef};
use router::Placement;
use storage::{Store, StoreOptions};
use tokio::sync::mpsc;

use test_support::numbered as phone;

#[path = "support/probe.rs"]
mod probe;
use probe::Probe;

async fn spawn_fragment(store: &Store) -> ActorRef<FragmentMsg> {
    let args = FragmentArgs {
        id: 0,
        placement: Placement::new(1).expect("placement"),
        config: FragmentConfig::default(),
        store: store.clone(),
        on_start: None,
        cluster: None,
    };
    Actor::spawn(Some(fragment_name(0)), FragmentActor, args)
        .await
        .expect("spawn")
        .0
}

async fn append(fragment: &ActorRef<FragmentMsg>, to: u64, cid: u64) -> u64 {
    ractor::call_t!(
        fragment,
        |reply| FragmentMsg::Append {
            message: NewMessage {
                to: phone(to),
                from: phone(1),
                client_msg_id: cid,
                after: None,
                payload: cid.to_be_bytes().to_vec(),
            },
            reply
        },
        5000
    )
    .expect("call")
    .expect("stored")
    .msg_id
}

#[tokio::test]
async fn stored_messages_and_the_id_sequence_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("db.redb"), StoreOptions::default()).expect("open");
    let fragment = spawn_fragment(&store).await;
    let first: Vec<u64> = append_all(&fragment, 0..20).await;
    // Deliver and ack some, so the highest ids are gone from the table.
    let (tx, mut pushes) = mpsc::unbounded_channel();
    let (probe, _) = Actor::spawn(None, Probe, tx).await.expect("probe");
    ractor::call_t!(
        fragment,
        |reply| FragmentMsg::Attach {
            user: phone(2),
            endpoint: Endpoint {
                session_id: 1,
                token_generation: None,
                target: probe.get_derived()
            },
            reply
        },
        5000
    )
    .expect("call")
    .expect("attach");
    let Some(Push::Entries(entries)) = pushes.recv().await else {
        panic!("backlog pushed");
    };
    assert_eq!(entries.iter().map(|e| e.id).collect::<Vec<_>>(), first);
    fragment
        .send_message(FragmentMsg::Ack {
            user: phone(2),
            ids: first[10..].to_vec(),
        })
        .expect("ack");
    // Let the receipt and deletion commit, then stop the fragment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    fragment.stop_and_wait(None, None).await.expect("stop");

    let fragment = spawn_fragment(&store).await;
    let next = append(&fragment, 2, 1000).await;
    assert!(next > *first.iter().max().expect("ids"), "ids never repeat");
    // A resend of an already stored message is recognised after the restart.
    assert_eq!(append(&fragment, 2, 3).await, first[3]);

    let (tx, mut pushes) = mpsc::unbounded_channel();
    let (probe, _) = Actor::spawn(None, Probe, tx).await.expect("probe");
    ractor::call_t!(
        fragment,
        |reply| FragmentMsg::Attach {
            user: phone(2),
            endpoint: Endpoint {
                session_id: 2,
                token_generation: None,
                target: probe.get_derived()
            },
            reply
        },
        5000
    )
    .expect("call")
    .expect("attach");
    let Some(Push::Entries(entries)) = pushes.recv().await else {
        panic!("backlog pushed");
    };
    let mut expected = first[..10].to_vec();
    expected.push(next);
    let messages: Vec<u64> = entries
        .iter()
        .filter(|e| matches!(e.body, EntryBody::Message { .. }))
        .map(|e| e.id)
        .collect();
    assert_eq!(messages, expected, "unacked survive, acked are gone");
    fragment.stop_and_wait(None, None).await.expect("stop");
}

async fn append_all(fragment: &ActorRef<FragmentMsg>, cids: std::ops::Range<u64>) -> Vec<u64> {
    let mut ids = Vec::new();
    for cid in cids {
        ids.push(append(fragment, 2, cid).await);
    }
    ids
}

#[tokio::test]
async fn the_fragment_count_is_fixed_at_creation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("db.redb"), StoreOptions::default()).expect("open");
    offline_queue::store::ensure_fragment_count(&store, 16)
        .await
        .expect("first start records it");
    offline_queue::store::ensure_fragment_count(&store, 16)
        .await
        .expect("same count again");
    let refused = offline_queue::store::ensure_fragment_count(&store, 32).await;
    assert!(refused.is_err(), "a different count is refused");
}

#[tokio::test]
async fn data_of_a_newer_format_is_refused() {
    use offline_queue::store::{DATA_FORMAT, check_data_format, ensure_data_format};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("db.redb"), StoreOptions::default()).expect("open");
    // A directory from before versions were recorded is format 1.
    assert_eq!(ensure_data_format(&store).await.expect("first start"), 1);
    assert_eq!(
        ensure_data_format(&store).await.expect("again"),
        DATA_FORMAT
    );
    // A newer build raises it; this one then refuses, and the data stays
    // marked as the newer format.
    check_data_format(&store, DATA_FORMAT + 1)
        .await
        .expect("a newer build");
    let refused = ensure_data_format(&store).await.expect_err("refused");
    assert!(refused.to_string().contains("newer"), "{refused}");
    assert_eq!(
        check_data_format(&store, DATA_FORMAT + 1)
            .await
            .expect("still newer"),
        DATA_FORMAT + 1
    );
}
