//! A full disk and a world-readable data directory.
//!
//! The disk is real: the node's data directory is a small tmpfs (8 MiB)
//! that a filler file and an attacker's large messages fill until redb's
//! writes fail with ENOSPC. Before the fix one failed write wedged the node
//! for good: every later write failed (redb's `PreviousIo`), it kept its
//! cluster links and its clients, its partner never took over, and
//! `/healthz` did not exist. Mounting needs root: without it the disk tests
//! say SKIPPED and pass.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use client::{Client, ClientError, Connection, Event, PhoneNumber};
use proto::{ErrorCode, Request, Response};

use super::common::cluster::{
    LocalCluster, free_port, phones_owned_by, serving, wait_for_peers_up, wait_for_serving,
};
use super::common::{NodeProcess, phone};

/// Generous: a partner takes over within a second or two of the links
/// closing; the client's retry back-off adds a few more.
const TAKE_OVER: Duration = Duration::from_secs(15);
const PATIENCE: Duration = Duration::from_secs(30);
/// A payload that makes the database file grow on every send.
const BIG: usize = 32 * 1024;

/// A tmpfs mounted on a directory, unmounted on drop (also when a test
/// fails). `None` when this machine cannot mount (not root, no tmpfs).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).ok()?;
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| Self {
            dir: dir.to_path_buf(),
        })
    }

    /// Writes a filler file until the filesystem is full but `leave` bytes.
    fn fill(&self, leave: u64) -> PathBuf {
        use std::io::Write;
        let path = self.dir.join("filler");
        let mut file = std::fs::File::create(&path).expect("filler");
        let chunk = vec![0xA5u8; 64 * 1024];
        loop {
            let free = free_bytes(&self.dir);
            if free <= leave {
                break;
            }
            let n = (free - leave).min(chunk.len() as u64) as usize;
            if file.write_all(&chunk[..n]).is_err() {
                break;
            }
        }
        let _ = file.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// A fresh 8 MiB disk for one node's data directory (`data`), or `None`
/// (the test says SKIPPED) without the right to mount. Unmounted before
/// its temporary directory is removed (fields drop in order).
struct SmallDisk {
    tmpfs: Tmpfs,
    data: PathBuf,
    _root: tempfile::TempDir,
}

impl SmallDisk {
    fn new() -> Option<Self> {
        let root = tempfile::tempdir().expect("tempdir");
        let data = root.path().join("data");
        let Some(tmpfs) = Tmpfs::mount(&data, "8m") else {
            eprintln!("SKIPPED: mounting a small tmpfs needs root on this machine");
            return None;
        };
        Some(Self {
            tmpfs,
            data,
            _root: root,
        })
    }
}

fn free_bytes(dir: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0)
}

/// `GET path` from the metrics listener: the status code, or `None` if
/// nothing answers.
fn probe(addr: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text.split_whitespace().nth(1)?.parse().ok()
}

/// Sends big messages to `to` until the node refuses one; returns the
/// errors seen, in order. Every answer must come (no hang).
async fn flood_until_refused(conn: &Connection, to: &PhoneNumber) -> Vec<(ErrorCode, String)> {
    let mut errors = Vec::new();
    for i in 0..2_000u64 {
        let request = Request::Send {
            to: to.clone(),
            client_msg_id: 1_000_000 + i,
            payload: vec![b'x'; BIG],
        };
        let answer = tokio::time::timeout(Duration::from_secs(15), conn.request(request))
            .await
            .expect("every send is answered, none hangs");
        match answer {
            Ok(Response::ServerAck { .. }) => {}
            Ok(other) => panic!("unexpected answer {other:?}"),
            Err(ClientError::Server { code, message }) => {
                let refused = matches!(code, ErrorCode::Unavailable { .. });
                errors.push((code, message));
                if refused {
                    return errors;
                }
            }
            // The node left: what it said before is the answer.
            Err(_) => return errors,
        }
    }
    errors
}

/// A lone node whose disk fills: sends are refused with a clear error, the
/// probes say 503, the node exits non-zero, and once space is freed it
/// starts again with every message it acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_makes_a_lone_node_refuse_report_and_exit_without_losing_acked_messages() {
    let Some(disk) = SmallDisk::new() else {
        return;
    };
    let data = disk.data.clone();
    let metrics = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    // The free-disk threshold off: this test is about the write that fails.
    let env = [
        ("SWITCHBOARD_METRICS__LISTEN", metrics.as_str()),
        ("SWITCHBOARD_STORAGE__MIN_FREE_MIB", "0"),
    ];
    let mut node = NodeProcess::start_at_with(&data, "127.0.0.1:0", &env);
    assert_eq!(probe(&metrics, "/healthz"), Some(200), "healthy at start");
    assert_eq!(probe(&metrics, "/readyz"), Some(200), "ready at start");

    // The victim: Alice's messages to Bob (offline) are acked before the disk fills.
    let (alice, _alice_events, _) = node.login("+15550300001").await;
    let bob = phone("+15550300002");
    let bob_token = node.register(&bob).await;
    let mut acked = Vec::new();
    for i in 0..5 {
        let text = format!("before the disk filled {i}");
        alice
            .send(&bob, text.clone().into_bytes())
            .await
            .expect("acked");
        acked.push(text);
    }
    let attacker = node.raw_login(&phone("+15550300003")).await;
    let sink = phone("+15550300004");
    node.register(&sink).await;

    disk.tmpfs.fill(256 * 1024);
    let errors = flood_until_refused(&attacker, &sink).await;
    let refusal = errors
        .iter()
        .find(|(code, _)| matches!(code, ErrorCode::Unavailable { .. }));
    assert!(
        refusal.is_some_and(|(_, message)| message.contains("storage failure")),
        "sends after the failed write are refused with a clear error: {errors:?}"
    );
    // Item 14: what failed inside the node (paths, I/O errors) stays in
    // its log.
    let data_dir = node.data_dir.display().to_string();
    for (_, message) in &errors {
        assert!(
            !message.contains(&data_dir)
                && !message.contains("os error")
                && !message.contains("I/O"),
            "an internal error reached the client: {message:?}"
        );
    }
    // Unhealthy and not ready while it lingers, then gone.
    let started = Instant::now();
    let (mut health, mut ready) = (None, None);
    while started.elapsed() < Duration::from_secs(5) && (health.is_none() || ready.is_none()) {
        if probe(&metrics, "/healthz") == Some(503) {
            health = Some(503);
        }
        if probe(&metrics, "/readyz") == Some(503) {
            ready = Some(503);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!((health, ready), (Some(503), Some(503)), "the probes say so");
    let status = node
        .exited_within(Duration::from_secs(20))
        .expect("the node exits for its supervisor to restart it");
    assert!(!status.success(), "a non-zero exit: {status:?}");
    drop(alice);
    drop(attacker);

    // Space freed, the node restarted (its supervisor's job): Bob gets
    // every message that was acked.
    std::fs::remove_file(data.join("filler")).expect("free the disk");
    let node = NodeProcess::start_at_with(&data, "127.0.0.1:0", &env);
    assert_eq!(
        probe(&metrics, "/healthz"),
        Some(200),
        "healthy after restart"
    );
    let (bob_client, mut bob_events) = Client::connect(node.client_config(), bob_token)
        .await
        .expect("bob logs in");
    let mut received = Vec::new();
    while received.len() < acked.len() {
        let event = tokio::time::timeout(Duration::from_secs(10), bob_events.recv())
            .await
            .unwrap_or_else(|_| panic!("only {received:?} of {acked:?} delivered"))
            .expect("events");
        if let Some(id) = event.ack_id() {
            bob_client.ack(vec![id]).await.expect("ack");
        }
        if let Event::Message { payload, .. } = event {
            received.push(String::from_utf8_lossy(&payload).into_owned());
        }
    }
    assert_eq!(received, acked);
    drop(node);
    drop(disk);
}

/// Below the free-disk threshold sends are refused with a clear error
/// before any write fails, `/readyz` says 503 (`/healthz` stays 200: the
/// store is fine), and sends are taken again once space is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_free_disk_threshold_sends_are_refused_until_space_is_freed() {
    let Some(disk) = SmallDisk::new() else {
        return;
    };
    let data = disk.data.clone();
    let metrics = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    // 2 MiB (25 % of this disk is more, so 2 MiB is the threshold).
    let env = [
        ("SWITCHBOARD_METRICS__LISTEN", metrics.as_str()),
        ("SWITCHBOARD_STORAGE__MIN_FREE_MIB", "2"),
        ("SWITCHBOARD_STORAGE__MIN_FREE_PERCENT", "25"),
    ];
    let node = NodeProcess::start_at_with(&data, "127.0.0.1:0", &env);
    let (alice, _alice_events, _) = node.login("+15550310001").await;
    let bob = phone("+15550310002");
    node.register(&bob).await;
    alice.send(&bob, b"before".to_vec()).await.expect("acked");
    let attacker = node.raw_login(&phone("+15550310003")).await;

    disk.tmpfs.fill(1024 * 1024);
    // The sampler looks every second.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let errors = flood_until_refused(&attacker, &bob).await;
    assert!(
        matches!(errors.as_slice(), [(ErrorCode::Unavailable { .. }, m)] if m.contains("low on disk")),
        "refused at once, with a clear error, no write failed: {errors:?}"
    );
    assert_eq!(probe(&metrics, "/readyz"), Some(503), "not ready");
    assert_eq!(probe(&metrics, "/healthz"), Some(200), "but healthy");

    std::fs::remove_file(data.join("filler")).expect("free the disk");
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::time::timeout(Duration::from_secs(15), alice.send(&bob, b"after".to_vec()))
        .await
        .expect("the victim's send goes through once space is freed")
        .expect("acked");
    assert_eq!(probe(&metrics, "/readyz"), Some(200), "ready again");
    drop(node);
    drop(disk);
}

/// Two nodes, one island. n1's disk fills under an attacker's large
/// messages: n1 leaves the cluster and exits non-zero, n2 takes n1's
/// fragments over, and the victim's sends to users of those fragments
/// succeed again within a generous bound; every acked message arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_on_a_primary_hands_its_fragments_to_the_partner() {
    let root = tempfile::tempdir().expect("tempdir");
    if Tmpfs::mount(&root.path().join("probe"), "1m").is_none() {
        eprintln!("SKIPPED: mounting a small tmpfs needs root on this machine");
        return;
    }
    let _ = Command::new("umount")
        .arg(root.path().join("probe"))
        .status();
    let mut cluster = LocalCluster::start(2, &[(1, 2)]);
    wait_for_peers_up(&cluster.members[0], 1, PATIENCE);
    wait_for_peers_up(&cluster.members[1], 1, PATIENCE);

    // Move n1's data onto a small tmpfs and restart it there, with the
    // free-disk threshold off (this test is about the write that fails).
    let n1_data = cluster.members[0].data_dir.clone();
    if let Some(process) = cluster.members[0].process.take() {
        process.terminate();
    }
    let side = root.path().join("n1-side");
    copy_dir(&n1_data, &side);
    let disk = Tmpfs::mount(&n1_data, "8m").expect("tmpfs");
    copy_dir(&side, &n1_data);
    let mut config = std::fs::read_to_string(&cluster.members[0].config_path).expect("config");
    config.push_str("\n[storage]\nmin_free_mib = 0\n");
    std::fs::write(&cluster.members[0].config_path, config).expect("config");
    cluster.start_member(0);
    wait_for_peers_up(&cluster.members[0], 1, PATIENCE);
    let both = [&cluster.members[0], &cluster.members[1]];
    wait_for_serving(&both, 16, PATIENCE);
    let started = Instant::now();
    while serving(&cluster.members[0]) == 0.0 {
        assert!(
            started.elapsed() < PATIENCE,
            "n1 serves its fragments again"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The victim: Carol on n2 writes to Dave, whose mailbox n1 owns; Dave
    // reads on n2.
    let islands = [(1, 2)];
    let carol_phone = phones_owned_by("n2", &islands, 16, 1, 7_000).remove(0);
    let dave_phone = phones_owned_by("n1", &islands, 16, 1, 8_000).remove(0);
    let sink = phones_owned_by("n1", &islands, 16, 1, 9_000).remove(0);
    let n1 = cluster.process(0);
    let carol_token = n1.register(&carol_phone).await;
    let dave_token = n1.register(&dave_phone).await;
    n1.register(&sink).await;
    let attacker = n1.raw_login(&phone("+15550320001")).await;
    let (carol, _carol_events) = Client::connect(cluster.client_config(&[1]), carol_token)
        .await
        .expect("carol on n2");
    let (dave, mut dave_events) = Client::connect(cluster.client_config(&[1]), dave_token)
        .await
        .expect("dave on n2");

    let acked: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let sender = {
        let acked = Arc::clone(&acked);
        let dave_phone = dave_phone.clone();
        tokio::spawn(async move {
            for i in 0.. {
                let text = format!("carol {i}");
                if carol
                    .send(&dave_phone, text.clone().into_bytes())
                    .await
                    .is_ok()
                {
                    acked.lock().expect("log").push((Instant::now(), text));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;

    disk.fill(512 * 1024);
    // Ends with a refusal, or with n1 closing the connection as it leaves.
    let errors = flood_until_refused(&attacker, &sink).await;
    let failed_at = Instant::now();
    eprintln!("the attacker's flood ended with {errors:?}");
    let status = cluster.members[0]
        .process
        .as_mut()
        .expect("n1")
        .exited_within(Duration::from_secs(30))
        .expect("n1 exits for its supervisor to restart it");
    assert!(!status.success(), "a non-zero exit: {status:?}");

    // Carol's sends go through again, through n2 alone.
    let deadline = failed_at + TAKE_OVER;
    loop {
        let resumed = acked
            .lock()
            .expect("log")
            .iter()
            .filter(|(at, _)| *at > failed_at)
            .count();
        if resumed >= 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "carol's sends did not succeed again within {TAKE_OVER:?} of the failure"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        serving(&cluster.members[1]) == 16.0,
        "n2 serves every fragment"
    );
    sender.abort();
    let acked: Vec<String> = acked
        .lock()
        .expect("log")
        .iter()
        .map(|(_, t)| t.clone())
        .collect();

    // Every acked message reaches Dave.
    let mut received = std::collections::HashSet::new();
    let until = Instant::now() + PATIENCE;
    while !acked.iter().all(|t| received.contains(t)) {
        let left = until.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, dave_events.recv())
            .await
            .unwrap_or_else(|_| {
                let lost: Vec<_> = acked.iter().filter(|t| !received.contains(*t)).collect();
                panic!("acked messages lost: {lost:?}")
            })
            .expect("events");
        if let Some(id) = event.ack_id() {
            dave.ack(vec![id]).await.expect("ack");
        }
        if let Event::Message { payload, .. } = event {
            received.insert(String::from_utf8_lossy(&payload).into_owned());
        }
    }
    drop(attacker);
    cluster.kill9(0);
    drop(disk);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        let kind = entry.file_type().expect("type");
        if kind.is_dir() {
            copy_dir(&entry.path(), &target);
        } else if kind.is_file() {
            // Not the admin socket of a node still running.
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// The data directory is the node's alone: 0700, its files 0600, set when
/// the node creates them and tightened on start when someone loosened them,
/// while the victim's mailbox survives the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_and_its_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("data");
    let private = [
        (data.clone(), 0o700),
        (data.join("switchboard.redb"), 0o600),
        (data.join("tls"), 0o700),
        (data.join("tls/key.pem"), 0o600),
    ];

    let node = NodeProcess::start_at(&data, "127.0.0.1:0");
    for (path, want) in &private {
        assert_eq!(mode(path), *want, "created private: {}", path.display());
    }
    let (alice, _alice_events, _) = node.login("+15550330001").await;
    let bob = phone("+15550330002");
    let bob_token = node.register(&bob).await;
    alice
        .send(&bob, b"kept private".to_vec())
        .await
        .expect("acked");
    drop(alice);
    assert!(node.terminate().success());

    for (path, _) in &private {
        let loose = if path.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(loose)).expect("loosen");
    }
    let node = NodeProcess::start_at(&data, "127.0.0.1:0");
    for (path, want) in &private {
        assert_eq!(mode(path), *want, "tightened on start: {}", path.display());
    }
    let (bob_client, mut bob_events) = Client::connect(node.client_config(), bob_token)
        .await
        .expect("bob logs in");
    let event = super::common::next_event(&mut bob_events, 10, super::common::is_message).await;
    assert!(
        matches!(&event, Event::Message { payload, .. } if payload == b"kept private"),
        "{event:?}"
    );
    drop(bob_client);
}
