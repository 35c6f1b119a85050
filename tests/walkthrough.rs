//! The README walk-through, run for real: a `switchboard node` process and
//! the CLI commands register, verify, send, recv and chat (through stdin).

mod common;

use std::path::Path;
use std::process::Stdio;

use common::NodeProcess;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn switchboard(args: &[&str], stdin: &str) -> Run {
    switchboard_holding_stdin(args, stdin, std::time::Duration::ZERO).await
}

/// Runs the binary; stdin gets `stdin`, then stays open for `hold`.
async fn switchboard_holding_stdin(args: &[&str], stdin: &str, hold: std::time::Duration) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(args)
        .env_remove("SWITCHBOARD_PROFILE")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn switchboard");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.as_bytes())
        .await
        .expect("write stdin");
    tokio::time::sleep(hold).await;
    drop(input);
    let output = tokio::time::timeout(std::time::Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("switchboard finished in time")
        .expect("wait");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn enrol(node: &NodeProcess, dir: &Path, phone: &str, name: &str) -> String {
    let server = node.addr.clone();
    let ca = node.ca_path.to_str().expect("utf-8 path");
    let run = switchboard(
        &[
            "register", "--server", &server, "--ca", ca, "--phone", phone,
        ],
        "",
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("10 minutes"), "{}", run.stdout);
    let code = node.code_for(&client::PhoneNumber::parse(phone).expect("phone"));
    let profile = dir.join(format!("{name}.toml"));
    let profile = profile.to_str().expect("utf-8 path").to_owned();
    let run = switchboard(
        &[
            "verify",
            "--server",
            &server,
            "--ca",
            ca,
            "--phone",
            phone,
            "--code",
            &code,
            "--profile",
            &profile,
        ],
        "",
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    profile
}

fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_then_recv_with_receipts() {
    let node = NodeProcess::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let alice = enrol(&node, dir.path(), "+15550000001", "alice").await;
    let bob = enrol(&node, dir.path(), "+15550000002", "bob").await;

    let mut ids = Vec::new();
    for text in ["one", "two ✓"] {
        let run = switchboard(
            &["send", "--profile", &alice, "--to", "+15550000002", text],
            "",
        )
        .await;
        assert_eq!(run.code, 0, "{}", run.stderr);
        ids.push(run.stdout.trim().parse::<u64>().expect("a message id"));
    }

    let run = switchboard(
        &["recv", "--profile", &bob, "--json", "--idle-ms", "300"],
        "",
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let got = json_lines(&run.stdout);
    assert_eq!(got.len(), 2, "{}", run.stdout);
    for (value, (id, text)) in got.iter().zip(ids.iter().zip(["one", "two ✓"])) {
        assert_eq!(value["from"], "+15550000001");
        assert_eq!(value["id"], *id);
        assert_eq!(value["text"], text);
        assert!(value["server_ts"].as_u64().is_some());
        assert!(value["client_msg_id"].as_u64().is_some());
    }
    // Acked: nothing the second time.
    let run = switchboard(
        &["recv", "--profile", &bob, "--json", "--idle-ms", "300"],
        "",
    )
    .await;
    assert_eq!((run.code, run.stdout.as_str()), (0, ""), "{}", run.stderr);

    // Alice gets the delivered receipt.
    let run = switchboard(
        &["recv", "--profile", &alice, "--json", "--wait", "0.5"],
        "",
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    // One receipt per ack batch: how the two messages were batched varies.
    let mut delivered = Vec::new();
    for receipt in json_lines(&run.stdout) {
        assert_eq!(receipt["receipt"], "delivered", "{receipt}");
        assert_eq!(receipt["by"], "+15550000002", "{receipt}");
        for id in receipt["msg_ids"].as_array().expect("msg_ids") {
            delivered.push(id.as_u64().expect("an id"));
        }
    }
    assert_eq!(delivered, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_sends_lines_and_marks_what_it_shows_read() {
    let node = NodeProcess::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let alice = enrol(&node, dir.path(), "+15550000001", "alice").await;
    let bob = enrol(&node, dir.path(), "+15550000002", "bob").await;

    let run = switchboard(
        &["chat", "--profile", &alice],
        "hello?\n/to +15550000002\nhi bob\n/quit\n",
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("! choose someone first"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("#1 ✓"), "{}", run.stdout);

    // Bob's chat shows it, acks it and marks it read; stdin EOF ends it.
    let hold = std::time::Duration::from_millis(700);
    let run = switchboard_holding_stdin(&["chat", "--profile", &bob], "", hold).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("+15550000001: hi bob"),
        "{}",
        run.stdout
    );

    let run = switchboard(
        &["recv", "--profile", &alice, "--json", "--idle-ms", "300"],
        "",
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let kinds: Vec<_> = json_lines(&run.stdout)
        .iter()
        .map(|v| v["receipt"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(kinds, ["delivered", "read"], "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_exit_non_zero_with_a_message() {
    let node = NodeProcess::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = node.ca_path.clone();
    let server = node.addr.clone();
    let profile = dir.path().join("p.toml");
    let run = switchboard(
        &[
            "verify",
            "--server",
            &server,
            "--ca",
            ca.to_str().expect("path"),
            "--phone",
            "+15550000001",
            "--code",
            "000000",
            "--profile",
            profile.to_str().expect("path"),
        ],
        "",
    )
    .await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.starts_with("switchboard: cannot verify"),
        "{}",
        run.stderr
    );
    assert!(!profile.exists());

    let run = switchboard(
        &[
            "send",
            "--profile",
            profile.to_str().expect("path"),
            "--to",
            "+15550000002",
            "x",
        ],
        "",
    )
    .await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("cannot read the profile"),
        "{}",
        run.stderr
    );
}

/// The operator's commands against a running node process, over its admin
/// socket found from the data directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_status_user_revoke_and_drain() {
    let node = NodeProcess::start();
    let dir = tempfile::tempdir().expect("tempdir");
    enrol(&node, dir.path(), "+15550000091", "erin").await;
    let data_dir = node.data_dir.to_str().expect("utf-8 path").to_owned();

    let run = switchboard(&["admin", "status", "--data-dir", &data_dir], "").await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("ready: yes"), "{}", run.stdout);
    assert!(run.stdout.contains("served here of"), "{}", run.stdout);
    assert!(run.stdout.contains("session queues:"), "{}", run.stdout);

    let run = switchboard(&["admin", "status", "--json", "--data-dir", &data_dir], "").await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let json: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(json["reply"], "status", "{json}");
    assert!(
        json["fragments"].as_array().is_some_and(|f| !f.is_empty()),
        "{json}"
    );

    let run = switchboard(
        &["admin", "user", "+15550000091", "--data-dir", &data_dir],
        "",
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("mailbox: 0 messages"), "{}", run.stdout);
    assert!(run.stdout.contains("token generation"), "{}", run.stdout);

    let run = switchboard(
        &["admin", "revoke", "+15550000091", "--data-dir", &data_dir],
        "",
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("revoked every token"), "{}", run.stdout);

    let backup = dir.path().join("backup");
    let backup_arg = backup.to_str().expect("utf-8 path").to_owned();
    let run = switchboard(
        &["admin", "backup", &backup_arg, "--data-dir", &data_dir],
        "",
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("backup of"), "{}", run.stdout);
    let restored = dir.path().join("restored");
    let restored_arg = restored.to_str().expect("utf-8 path").to_owned();
    let restore_args = [
        "admin",
        "restore",
        "--from",
        &backup_arg,
        "--data-dir",
        &restored_arg,
    ];
    let run = switchboard(&restore_args, "").await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(restored.join("switchboard.redb").is_file());
    let run = switchboard(&restore_args, "").await;
    assert_ne!(run.code, 0, "a second restore over the first is refused");
    let run = switchboard(&["admin", "probe", "--ready", "--data-dir", &data_dir], "").await;
    assert_eq!(run.code, 0, "{} {}", run.stdout, run.stderr);
    let run = switchboard(&["admin", "drain", "--data-dir", &data_dir], "").await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("draining"), "{}", run.stdout);
    let run = switchboard(&["admin", "status", "--data-dir", &data_dir], "").await;
    assert!(
        run.stdout.contains("ready: no (not ready: draining)"),
        "{}",
        run.stdout
    );
    let run = switchboard(&["admin", "probe", "--ready", "--data-dir", &data_dir], "").await;
    assert_eq!(run.code, 1, "a draining node is not ready: {}", run.stdout);
    let run = switchboard(&["admin", "probe", "--data-dir", &data_dir], "").await;
    assert_eq!(run.code, 0, "a draining node is healthy: {}", run.stdout);

    // No node there: a clear error, not a hang.
    let run = switchboard(
        &[
            "admin",
            "status",
            "--data-dir",
            dir.path().to_str().expect("utf-8"),
        ],
        "",
    )
    .await;
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("is the node running"), "{}", run.stderr);
}
