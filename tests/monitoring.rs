//! The monitoring files of deploy/monitoring: promtool checks the rules and
//! the Prometheus config and runs every alert's unit test; every metric the
//! rules and the dashboard read is one the node exports; every alert has a
//! unit test and a runbook section in docs/operations.md.
//!
//! promtool comes with Debian's `prometheus` package (`.ci/run` installs
//! it). Without it the promtool part says SKIPPED, except under CI, where
//! it fails.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn promtool(args: &[&str]) -> Option<(bool, String)> {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(root().join("deploy/monitoring"))
        .output()
        .ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Some((output.status.success(), text))
}

#[test]
fn promtool_checks_the_rules_and_runs_every_alerts_unit_test() {
    let checks: [&[&str]; 3] = [
        &["check", "rules", "recording.yml", "alerts.yml"],
        &["check", "config", "prometheus.yml"],
        &["test", "rules", "tests/alerts-test.yml"],
    ];
    for args in checks {
        match promtool(args) {
            Some((ok, text)) => assert!(ok, "promtool {args:?} failed:\n{text}"),
            None if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!(
                    "promtool is missing under CI (.ci/run installs Debian's prometheus package)"
                )
            }
            None => {
                println!("SKIPPED: promtool not installed (apt-get install prometheus)");
                return;
            }
        }
    }
}

/// Tokens of `text` that start with `prefix` and go on in [a-z0-9_:].
fn names(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in text.match_indices(prefix) {
        let before = text[..at].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let name: String = text[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == ':')
            .collect();
        found.insert(name);
    }
    found
}

/// Names the node exports: those with HELP text in the node's table.
fn exported() -> BTreeSet<String> {
    let table = read("crates/node/src/metric_help.rs");
    names(&table, "switchboard_")
        .into_iter()
        .filter(|n| table.contains(&format!("(\"{n}\"")))
        .collect()
}

#[test]
fn the_rules_and_the_dashboard_read_only_metrics_the_node_exports() {
    let exported = exported();
    assert!(exported.len() > 50, "{exported:?}");
    let recording = read("deploy/monitoring/recording.yml");
    let recorded: BTreeSet<String> = recording
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record: "))
        .map(str::to_owned)
        .collect();
    assert!(recorded.len() >= 5, "{recorded:?}");
    for file in [
        "deploy/monitoring/recording.yml",
        "deploy/monitoring/alerts.yml",
        "deploy/monitoring/grafana/dashboards/switchboard.json",
    ] {
        let text = read(file);
        for name in names(&text, "switchboard") {
            if name.starts_with("switchboard:") {
                assert!(
                    recorded.contains(&name),
                    "{file}: {name} is no recording rule"
                );
                continue;
            }
            if !name.starts_with("switchboard_") {
                continue;
            }
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(&name);
            assert!(
                exported.contains(base),
                "{file}: {name} is not a metric the node exports"
            );
        }
    }
    let dashboard: serde_json::Value = serde_json::from_str(&read(
        "deploy/monitoring/grafana/dashboards/switchboard.json",
    ))
    .expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    for panel in panels {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(
            targets
                .iter()
                .all(|t| t["expr"].as_str().is_some_and(|e| !e.is_empty())),
            "{panel}"
        );
    }
}

#[test]
fn every_alert_has_a_unit_test_and_a_runbook_section() {
    let alerts = read("deploy/monitoring/alerts.yml");
    let tests = read("deploy/monitoring/tests/alerts-test.yml");
    let operations = read("docs/operations.md").to_lowercase();
    let names: Vec<&str> = alerts
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        assert!(
            tests.contains(&format!("alertname: {name}\n")),
            "{name} has no unit test in tests/alerts-test.yml"
        );
        let anchor = format!("docs/operations.md#{}", name.to_lowercase());
        assert!(alerts.contains(&anchor), "{name} names no runbook {anchor}");
        assert!(
            operations.contains(&format!("### {}\n", name.to_lowercase())),
            "docs/operations.md has no section \"### {name}\""
        );
    }
}
