//! Helpers shared by the node's in-process tests.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use client::{Client, ClientConfig, Event, Events};

pub mod ws;

/// Registers `phone` through the development code log and logs in.
pub async fn login(cfg: &ClientConfig, data: &std::path::Path, phone: &str) -> (Client, Events) {
    let token = register(cfg, data, phone).await;
    Client::connect(cfg.clone(), token).await.expect("login")
}

/// Registers `phone` through the development code log; its token.
pub async fn register(cfg: &ClientConfig, data: &std::path::Path, phone: &str) -> String {
    test_support::register(cfg, data, &test_support::phone(phone)).await
}

/// The first byte of each of the next `count` messages `client` receives,
/// each acked as it arrives; panics if they do not come within 10 s each.
pub async fn receive_first_bytes(client: &Client, events: &mut Events, count: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < count {
        match next_matching(events, 10, |e| matches!(e, Event::Message { .. })).await {
            Some(Event::Message {
                payload, msg_id, ..
            }) => {
                got.push(payload[0]);
                client.ack(vec![msg_id]).await.expect("ack");
            }
            _ => panic!("missing messages after {got:?}"),
        }
    }
    got
}

/// The next event matching `f` within `secs` seconds.
pub async fn next_matching(
    events: &mut Events,
    secs: u64,
    f: impl Fn(&Event) -> bool,
) -> Option<Event> {
    tokio::time::timeout(Duration::from_secs(secs), async {
        loop {
            match events.recv().await {
                Some(e) if f(&e) => return Some(e),
                Some(_) => {}
                None => return None,
            }
        }
    })
    .await
    .ok()
    .flatten()
}

/// A one-node test configuration on a free port, with data in `dir`.
pub fn test_config(dir: &std::path::Path) -> node::NodeConfig {
    node::NodeConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.to_path_buf(),
        fragments: 4,
        ..node::NodeConfig::default()
    }
}

/// Starts a node and returns it with a client configuration trusting it.
pub async fn start(config: node::NodeConfig) -> (node::Node, ClientConfig) {
    let node = node::NodeBuilder::new(config)
        .start()
        .await
        .expect("node starts");
    let ca = std::fs::read(&node.certificate().cert_path).expect("ca");
    let cfg = ClientConfig::new(vec![node.local_addr().to_string()], ca);
    (node, cfg)
}
