//! The node serves Prometheus metrics that move with the traffic.

mod common;

use std::time::Duration;

use client::Event;
use common::{login, next_matching, start, test_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn scrape(addr: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut body = String::new();
    stream.read_to_string(&mut body).await.expect("response");
    body
}

fn value(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_sessions_acks_and_storage() {
    // A free port for the exporter (it does not report the one it bound).
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.metrics.listen = Some(metrics_addr.clone());
    let (node, cfg) = start(config).await;
    let (alice, _a) = login(&cfg, dir.path(), "+15550000701").await;
    let (bob, mut bob_events) = login(&cfg, dir.path(), "+15550000702").await;
    alice
        .send(bob.user(), b"counted".to_vec())
        .await
        .expect("ack");
    let Some(Event::Message { msg_id, .. }) =
        next_matching(&mut bob_events, 10, |e| matches!(e, Event::Message { .. })).await
    else {
        panic!("no delivery");
    };
    bob.ack(vec![msg_id]).await.expect("ack");

    // Gauges are sampled every 5 s; counters move at once.
    let mut text = String::new();
    for _ in 0..80 {
        text = scrape(&metrics_addr).await;
        if value(&text, "switchboard_connections").is_some_and(|v| v >= 2.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        value(&text, "switchboard_durable_acks_total").is_some_and(|v| v >= 1.0),
        "{text}"
    );
    assert!(
        value(&text, "switchboard_entries_pushed_total").is_some_and(|v| v >= 1.0),
        "{text}"
    );
    assert!(
        value(&text, "switchboard_entries_acked_total").is_some_and(|v| v >= 1.0),
        "{text}"
    );
    assert!(
        value(&text, "switchboard_sessions_opened_total").is_some_and(|v| v >= 2.0),
        "{text}"
    );
    assert_eq!(value(&text, "switchboard_connections"), Some(2.0), "{text}");
    assert!(
        value(&text, "switchboard_storage_commits").is_some_and(|v| v >= 1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "switchboard_online_users"),
        Some(2.0),
        "{text}"
    );
    // Queue lengths: every registered actor, and the sessions' spread.
    for line in [
        "switchboard_actor_queue_length{actor=\"auth\"}",
        "switchboard_actor_queue_length{actor=\"fragment-0\"}",
        "switchboard_session_queue_length{quantile=\"max\"}",
        "switchboard_session_queue_length{quantile=\"0.99\"}",
        "switchboard_fragment_queue_length_max",
        // Latencies as histograms, with buckets.
        "switchboard_send_ack_seconds_bucket{le=\"0.05\"}",
        "switchboard_storage_commit_seconds_bucket{le=\"0.05\"}",
        // The process.
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(line)),
            "{line} missing:\n{text}"
        );
    }
    // Every metric says what it is.
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split(' ').nth(2).expect("a name");
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no HELP:\n{text}"
        );
    }
    alice.close().await;
    bob.close().await;
    node.shutdown().await;
}
