//! One session's send path through a real node, in process: client TLS
//! socket → session actor → mailbox fragment → group-commit writer (redb,
//! fsync) → `ServerAck` back over the socket.
//!
//! The node runs with 16 fragments on 127.0.0.1:0 with its data in a
//! temporary directory. One user is registered through the development code
//! file and logged in on a `client::Connection`. Messages (100-byte payloads)
//! go to 1000 recipients in turn, none of them online, so they stay in their
//! mailboxes; consecutive sends hit different fragments.
//!
//! - `send_path/sequential`: one `Send` at a time, each awaited: the round
//!   trip send → `ServerAck`.
//! - `send_path/pipelined_64`: 64 `Send` requests in flight on the one
//!   connection (`join_all`), reported as messages per second.
//!
//! After each benchmark the writer's mean changes per commit (warm-up
//! included) is printed to stderr.
//!
//! Run: `cargo bench -p node --bench send_path`

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use client::{ClientConfig, Connection, Pushes};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use node::{Node, NodeBuilder, NodeConfig};
use proto::{Request, Response};
use tokio::runtime::Runtime;

/// Requests in flight in the pipelined benchmark.
const PIPELINE: usize = 64;
/// Message payload bytes.
const PAYLOAD: usize = 100;
/// Recipients the sends cycle through.
const RECIPIENTS: u64 = 1000;

use test_support::numbered as phone;

use test_support::register;

/// A running node and one logged-in connection to it.
struct Setup {
    node: Node,
    conn: Connection,
    _pushes: Pushes,
    next_cid: u64,
    // Last, so the node is gone before its directory is removed.
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn start() -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = NodeConfig {
            listen: "127.0.0.1:0".into(),
            data_dir: dir.path().to_path_buf(),
            fragments: 16,
            ..NodeConfig::default()
        };
        let node = NodeBuilder::new(config).start().await.expect("start node");
        let ca = std::fs::read(&node.certificate().cert_path).expect("node certificate");
        let cfg = ClientConfig::new(vec![node.local_addr().to_string()], ca);
        let sender = phone(1);
        let token = register(&cfg, dir.path(), &sender).await;
        let tls = cfg.validate().expect("client TLS");
        let (conn, pushes) = Connection::connect(
            &node.local_addr().to_string(),
            &tls,
            "send-path-bench",
            Duration::from_secs(30),
        )
        .await
        .expect("connect");
        let user = conn.login(&token).await.expect("login");
        assert_eq!(user, sender);
        Setup {
            node,
            conn,
            _pushes: pushes,
            next_cid: 0,
            _dir: dir,
        }
    }

    /// The next `Send` request, to the next recipient in turn.
    fn next_send(&mut self) -> Request {
        self.next_cid += 1;
        Request::Send {
            to: phone(1000 + self.next_cid % RECIPIENTS),
            client_msg_id: self.next_cid,
            payload: vec![0xa5; PAYLOAD],
        }
    }

    /// The writer's (commits, changes) so far.
    fn writer_counts(&self) -> (u64, u64) {
        let stats = self.node.store().stats();
        (
            stats.commits.load(Ordering::Relaxed),
            stats.changes.load(Ordering::Relaxed),
        )
    }

    /// Prints the mean group-commit size since `before`.
    fn report_commits(&self, name: &str, before: (u64, u64)) {
        let (commits, changes) = self.writer_counts();
        let (commits, changes) = (commits - before.0, changes - before.1);
        if changes == 0 {
            return; // filtered out on the command line
        }
        eprintln!(
            "{name}: {changes} changes in {commits} commits, {:.1} changes per commit",
            changes as f64 / commits.max(1) as f64
        );
    }

    async fn stop(self) {
        self.conn.close();
        self.node.shutdown().await;
    }
}

fn expect_server_ack(response: client::Result<Response>) {
    match response.expect("send answered") {
        Response::ServerAck { .. } => {}
        other => panic!("expected ServerAck, got {other:?}"),
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn send_path(c: &mut Criterion) {
    let rt = runtime();
    let mut setup = rt.block_on(Setup::start());
    let mut group = c.benchmark_group("send_path");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));

    let before = setup.writer_counts();
    group.throughput(Throughput::Elements(1));
    group.bench_function("sequential", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let request = setup.next_send();
                    expect_server_ack(setup.conn.request(request).await);
                }
                start.elapsed()
            })
        })
    });

    setup.report_commits("send_path/sequential", before);

    let before = setup.writer_counts();
    group.throughput(Throughput::Elements(PIPELINE as u64));
    group.bench_function("pipelined_64", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let requests: Vec<Request> = (0..PIPELINE).map(|_| setup.next_send()).collect();
                    let answers = futures::future::join_all(
                        requests.into_iter().map(|r| setup.conn.request(r)),
                    )
                    .await;
                    answers.into_iter().for_each(expect_server_ack);
                }
                start.elapsed()
            })
        })
    });
    setup.report_commits("send_path/pipelined_64", before);
    group.finish();
    rt.block_on(setup.stop());
}

criterion_group!(benches, send_path);
criterion_main!(benches);
