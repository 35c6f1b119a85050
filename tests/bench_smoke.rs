//! Short runs of both load generator modes against a real node, so the tool
//! cannot rot. Figures are not judged here (that is `docs/benchmarks.md`'s
//! job); the runs must complete, produce every documented JSON key, and find
//! no lost, duplicated or reordered message.

mod common;

use std::process::Command;

use common::{NodeProcess, binary};

const SECRET: &str = "smoke-test-admin-secret";

fn admin_node() -> NodeProcess {
    NodeProcess::start_with(&[
        ("SWITCHBOARD_ADMIN__MINT_TEST_USERS", "true"),
        ("SWITCHBOARD_ADMIN__SECRET", SECRET),
    ])
}

fn bench(node: &NodeProcess, args: &[&str], json: &std::path::Path) -> serde_json::Value {
    let output = Command::new(binary())
        .arg("bench")
        .args(args)
        .args(["--server", &node.addr, "--ca"])
        .arg(&node.ca_path)
        .args(["--admin-secret", SECRET, "--json"])
        .arg(json)
        .output()
        .expect("run the bench");
    assert!(
        output.status.success(),
        "bench failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(json).expect("json written");
    serde_json::from_str(&text).expect("valid json")
}

#[test]
fn bench_messages_smoke() {
    let node = admin_node();
    let dir = tempfile::tempdir().expect("tempdir");
    let pid = node.pid().to_string();
    let report = bench(
        &node,
        &[
            "messages",
            "--users",
            "20",
            "--rate",
            "200",
            "--duration",
            "2",
            "--offline-fraction",
            "0.25",
            "--server-pid",
            &pid,
        ],
        &dir.path().join("m.json"),
    );
    for key in [
        "sent",
        "acked",
        "delivered",
        "lost",
        "duplicated",
        "out_of_order",
        "errors",
        "throughput_per_s",
    ] {
        assert!(report.get(key).is_some(), "missing {key}: {report}");
    }
    for kind in ["ack", "deliver", "receipt"] {
        for q in ["p50", "p90", "p99", "p999", "max"] {
            assert!(
                report["latency_ms"][kind][q].is_number(),
                "missing latency_ms.{kind}.{q}"
            );
        }
    }
    assert_eq!(report["sent"], 400);
    assert_eq!(report["acked"], report["sent"]);
    assert_eq!(report["delivered"], report["acked"]);
    assert_eq!(report["lost"], 0);
    assert_eq!(report["duplicated"], 0);
    assert_eq!(report["out_of_order"], 0);
    // CPU per message of the node (its pid was given) and of the generator.
    let cpu = &report["cpu"];
    for key in ["server_us_per_message", "generator_us_per_message"] {
        assert!(
            cpu[key].as_f64().is_some_and(|us| us > 0.0),
            "cpu.{key}: {cpu}"
        );
    }
    assert!(
        cpu["server_threads_s"]
            .as_object()
            .is_some_and(|threads| threads.contains_key("storage-writer")),
        "the node's writer thread: {cpu}"
    );
}

#[test]
fn bench_connections_smoke() {
    let node = admin_node();
    let dir = tempfile::tempdir().expect("tempdir");
    let pid = node.pid().to_string();
    let report = bench(
        &node,
        &[
            "connections",
            "--count",
            "60",
            "--rate",
            "300",
            "--per-worker",
            "25",
            "--source-ips",
            "127.0.0.2-127.0.0.4",
            "--hold",
            "1",
            "--first",
            "+15550100000",
            "--server-pid",
            &pid,
        ],
        &dir.path().join("c.json"),
    );
    for key in [
        "requested",
        "established",
        "failed",
        "server_rss_bytes",
        "rss_per_connection_bytes",
    ] {
        assert!(report.get(key).is_some(), "missing {key}: {report}");
    }
    assert_eq!(report["requested"], 60);
    assert_eq!(report["established"], 60);
    assert_eq!(report["failed"], 0);
    assert_eq!(report["workers"], 3);
    assert!(report["server_rss_bytes"].as_u64().is_some_and(|b| b > 0));
}

#[test]
fn bench_groups_smoke() {
    let node = admin_node();
    let dir = tempfile::tempdir().expect("tempdir");
    let pid = node.pid().to_string();
    let report = bench(
        &node,
        &[
            "groups",
            "--groups",
            "3",
            "--members",
            "4",
            "--users",
            "10",
            "--rate",
            "50",
            "--duration",
            "2",
            "--first",
            "+15550001000",
            "--server-pid",
            &pid,
        ],
        &dir.path().join("g.json"),
    );
    for kind in ["ack", "deliver"] {
        for q in ["p50", "p90", "p99", "p999", "max"] {
            assert!(
                report["latency_ms"][kind][q].is_number(),
                "missing latency_ms.{kind}.{q}"
            );
        }
    }
    assert_eq!(report["sent"], 100);
    assert_eq!(report["acked"], report["sent"]);
    assert_eq!(report["expected_deliveries"], 300, "three copies of each");
    assert_eq!(report["delivered"], report["expected_deliveries"]);
    assert_eq!(report["lost"], 0);
    assert_eq!(report["duplicated"], 0);
    assert_eq!(report["out_of_order"], 0);
    assert!(report["deliveries_per_s"].as_f64().is_some_and(|d| d > 0.0));
    assert!(
        report["server_us_per_delivery"]
            .as_f64()
            .is_some_and(|us| us > 0.0),
        "{report}"
    );
}

#[test]
fn minting_is_refused_when_disabled() {
    let node = NodeProcess::start();
    let output = Command::new(binary())
        .args(["admin", "mint-users", "--server", &node.addr, "--ca"])
        .arg(&node.ca_path)
        .args([
            "--secret",
            SECRET,
            "--first",
            "+15550200000",
            "--count",
            "3",
        ])
        .output()
        .expect("run admin");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("disabled"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
