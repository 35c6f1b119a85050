//! The mailbox append → ack path through a real [`FragmentActor`] over a real
//! redb file (`storage::Store` in a temporary directory, every commit fsync'd).
//!
//! - `mailbox/append_single`: one append, awaited before the next: the latency
//!   of one server ack, bound by one commit (fsync) each.
//! - `mailbox/append_batch_256/{1000,1}_recipients`: 256 appends sent at
//!   once, then all their acks awaited: what the group-commit writer makes of
//!   concurrent appends (reported as messages per second), once spread over
//!   1000 mailboxes and once all to one mailbox.
//! - `mailbox/append_push_ack_256`: 256 appends to an attached user; the
//!   user's endpoint acks each push as it arrives; the iteration ends when the
//!   sender (also attached) has been pushed `Delivered` receipts for all 256
//!   (two ticks). The deletions that follow and the sender's ack of its
//!   receipts are drained outside the timed part.
//!
//! All users live in one fragment (fragment 0 of a one-fragment placement).
//! Each benchmark gets a fresh database; the unacked mailboxes of the first
//! ones grow over the run, as does the dedupe table. After each benchmark the
//! writer's mean changes per commit (warm-up included) and the database file
//! size are printed to stderr.
//!
//! With `MAILBOX_JOURNAL=1` the store has the node's write-ahead journal
//! (`storage::journal`, a checkpoint every 5 s) and the group is named
//! `mailbox_journal`, so that criterion compares it with itself.
//!
//! Run: `[MAILBOX_JOURNAL=1] cargo bench -p offline-queue --bench mailbox`

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use offline_queue::usage::MailboxLimits;
use offline_queue::{
    Endpoint, EntryBody, FragmentActor, FragmentArgs, FragmentConfig, FragmentError, FragmentMsg,
    NewMessage, Push, Stored, fragment_name,
};
use proto::PhoneNumber;
use ractor::concurrency::OneshotReceiver;
use ractor::{Actor, ActorRef};
use router::Placement;
use storage::{JournalOptions, Store, StoreOptions};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

/// Appends per batch in the batch and round-trip benchmarks (also the
/// fragment's default delivery window).
const BATCH: usize = 256;
/// Message payload bytes.
const PAYLOAD: usize = 100;
/// Recipients the single-append and spread batch benchmarks cycle through.
const RECIPIENTS: u64 = 1000;

use test_support::numbered as phone;

#[path = "../tests/support/probe.rs"]
mod probe;
use probe::Probe;

/// A fragment actor over a fresh database.
struct Mailbox {
    store: Store,
    fragment: ActorRef<FragmentMsg>,
    next_cid: u64,
    // Last, so the database is closed before its directory is removed.
    dir: tempfile::TempDir,
}

impl Mailbox {
    async fn start() -> Mailbox {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = StoreOptions {
            journal: journaled().then(|| {
                JournalOptions::new(
                    dir.path().join("journal"),
                    vec![offline_queue::journal_replayer()],
                )
            }),
            ..StoreOptions::default()
        };
        let store = Store::open(&dir.path().join("db.redb"), options).expect("open store");
        let args = FragmentArgs {
            id: 0,
            placement: Placement::new(1).expect("placement"),
            // Recipients never ack in (a) and (b): without room their
            // mailboxes fill up within a run (the quotas are tested elsewhere).
            config: FragmentConfig {
                mailbox: MailboxLimits {
                    max_entries: u32::MAX,
                    max_bytes: u64::MAX,
                    max_entries_per_sender: u32::MAX,
                    max_bytes_per_sender: u64::MAX,
                },
                ..FragmentConfig::default()
            },
            store: store.clone(),
            on_start: None,
            cluster: None,
        };
        let (fragment, _) = Actor::spawn(Some(fragment_name(0)), FragmentActor, args)
            .await
            .expect("spawn fragment");
        Mailbox {
            store,
            fragment,
            next_cid: 0,
            dir,
        }
    }

    /// Sends one append without waiting; the receiver gets the server ack.
    fn append(&mut self, to: PhoneNumber, from: PhoneNumber) -> AckReceiver {
        self.next_cid += 1;
        let (tx, rx) = ractor::concurrency::oneshot();
        self.fragment
            .send_message(FragmentMsg::Append {
                message: NewMessage {
                    to,
                    from,
                    client_msg_id: self.next_cid,
                    after: None,
                    payload: vec![0xa5; PAYLOAD],
                },
                reply: tx.into(),
            })
            .expect("fragment running");
        rx
    }

    /// Attaches `user` with a fresh probe endpoint; returns its pushes.
    async fn attach(&self, user: PhoneNumber, session_id: u64) -> mpsc::UnboundedReceiver<Push> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (probe, _) = Actor::spawn(None, Probe, tx).await.expect("spawn probe");
        ractor::call_t!(
            self.fragment,
            |reply| FragmentMsg::Attach {
                user,
                endpoint: Endpoint {
                    session_id,
                    token_generation: None,
                    target: probe.get_derived(),
                },
                reply,
            },
            5000
        )
        .expect("attach call")
        .expect("attached");
        rx
    }

    /// Waits until no write of the fragment is waiting for its commit.
    async fn drain(&self) {
        loop {
            let stats =
                ractor::call_t!(self.fragment, FragmentMsg::Stats, 5000).expect("stats call");
            if stats.pending_commits == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Stops the fragment (it flushes the writer) and prints the writer's
    /// mean group-commit size over the benchmark.
    async fn stop(self, name: &str) {
        self.fragment
            .stop_and_wait(None, None)
            .await
            .expect("stop fragment");
        if self.next_cid == 0 {
            return; // filtered out on the command line
        }
        let stats = self.store.stats();
        let commits = stats.commits.load(std::sync::atomic::Ordering::Relaxed);
        let changes = stats.changes.load(std::sync::atomic::Ordering::Relaxed);
        let db_bytes = std::fs::metadata(self.dir.path().join("db.redb"))
            .map(|m| m.len())
            .unwrap_or(0);
        eprintln!(
            "{name}: {changes} changes in {commits} commits, {:.1} changes per commit; \
             database file {:.1} MiB",
            changes as f64 / commits.max(1) as f64,
            db_bytes as f64 / (1024.0 * 1024.0)
        );
    }
}

type AckReceiver = OneshotReceiver<Result<Stored, FragmentError>>;

async fn acked(rx: AckReceiver) -> Stored {
    rx.await.expect("reply sent").expect("stored")
}

/// Whether the store has the write-ahead journal (`MAILBOX_JOURNAL`).
fn journaled() -> bool {
    std::env::var_os("MAILBOX_JOURNAL").is_some_and(|v| !v.is_empty() && v != "0")
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn mailbox(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group(if journaled() {
        "mailbox_journal"
    } else {
        "mailbox"
    });
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));

    // (a) One append at a time: each waits for its own commit.
    let mut mb = rt.block_on(Mailbox::start());
    let sender = phone(1);
    group.throughput(Throughput::Elements(1));
    group.bench_function("append_single", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    let rx = mb.append(phone(1000 + i % RECIPIENTS), sender.clone());
                    acked(rx).await;
                }
                start.elapsed()
            })
        })
    });
    rt.block_on(mb.stop("append_single"));

    // (b) 256 appends in flight at once: the writer groups their commits.
    // Spread over 1000 mailboxes (as on a node) and all to one mailbox, to
    // show how much of a commit's cost is the number of B-tree pages touched.
    for recipients in [RECIPIENTS, 1] {
        let mut mb = rt.block_on(Mailbox::start());
        let name = format!("{recipients}_recipients");
        group.throughput(Throughput::Elements(BATCH as u64));
        group.bench_function(BenchmarkId::new("append_batch_256", &name), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let pending: Vec<AckReceiver> = (0..BATCH as u64)
                            .map(|i| mb.append(phone(1000 + i % recipients), sender.clone()))
                            .collect();
                        for rx in pending {
                            acked(rx).await;
                        }
                    }
                    start.elapsed()
                })
            })
        });
        rt.block_on(mb.stop(&format!("append_batch_256/{name}")));
    }

    // (c) Append, push and ack to an attached user, until the sender holds
    // the Delivered receipts.
    let mut mb = rt.block_on(Mailbox::start());
    let recipient = phone(2);
    let mut to_recipient = rt.block_on(mb.attach(recipient.clone(), 1));
    let mut to_sender = rt.block_on(mb.attach(sender.clone(), 2));
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("append_push_ack_256", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let pending: Vec<AckReceiver> = (0..BATCH)
                        .map(|_| mb.append(recipient.clone(), sender.clone()))
                        .collect();
                    // The recipient's device acks every push as it arrives.
                    let mut delivered = 0;
                    while delivered < BATCH {
                        let Some(Push::Entries(entries)) = to_recipient.recv().await else {
                            panic!("recipient endpoint lost");
                        };
                        delivered += entries.len();
                        mb.fragment
                            .send_message(FragmentMsg::Ack {
                                user: recipient.clone(),
                                ids: entries.iter().map(|e| e.id).collect(),
                            })
                            .expect("ack");
                    }
                    for rx in pending {
                        acked(rx).await;
                    }
                    // Two ticks: the sender is pushed receipts for all 256.
                    let mut receipted = 0;
                    let mut receipt_ids = Vec::new();
                    while receipted < BATCH {
                        let Some(Push::Entries(entries)) = to_sender.recv().await else {
                            panic!("sender endpoint lost");
                        };
                        for entry in entries {
                            if let EntryBody::Receipt { msg_ids, .. } = &entry.body {
                                receipted += msg_ids.len();
                            }
                            receipt_ids.push(entry.id);
                        }
                    }
                    timed += start.elapsed();
                    // Untimed: the sender acks its receipts; let the
                    // deletions commit before the next iteration.
                    mb.fragment
                        .send_message(FragmentMsg::Ack {
                            user: sender.clone(),
                            ids: receipt_ids,
                        })
                        .expect("ack receipts");
                    mb.drain().await;
                }
                timed
            })
        })
    });
    rt.block_on(mb.stop("append_push_ack_256"));
    group.finish();
}

criterion_group!(benches, mailbox);
criterion_main!(benches);
