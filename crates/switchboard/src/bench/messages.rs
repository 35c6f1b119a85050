//! `bench messages`: an open-loop 1:1 message load.
//!
//! Messages are sent on a fixed schedule whether or not earlier ones were
//! answered, and every latency is measured from the *scheduled* send time, so
//! a stalled node shows up in the figures instead of slowing the load down
//! (no coordinated omission). Each payload carries sender, recipient, a
//! per-pair sequence number and the scheduled time; recipients check order
//! and duplicates, and at the end every acknowledged message is checked off
//! against what arrived.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use client::{Connection, Pushes, Tls};
use hdrhistogram::Histogram;
use ledger::{Arrival, Ledger};
use proto::{MessageId, ReceiptKind, Request, Response, ServerFrame};
use rand::Rng;
use serde::Serialize;
use tokio::sync::watch;

use super::report::{
    CpuSample, CpuUse, Percentiles, finish, latency_line, new_histogram, percentiles, rss_bytes,
    snapshot, text_histogram,
};
use super::{AGENT, REQUEST_TIMEOUT, Target, mint::mint_users, raise_file_limit};

/// `bench messages`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    target: Target,
    /// Test users (each online one holds a connection in this process).
    #[arg(long, default_value_t = 100)]
    users: u32,
    /// Messages per second, in total.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Payload bytes per message (at least 20, the header).
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Share of users that stay offline while messages are sent to them;
    /// they log in at the end and must receive everything.
    #[arg(long, default_value_t = 0.0)]
    offline_fraction: f64,
    /// The node's process id, to report its resident memory.
    #[arg(long)]
    server_pid: Option<u32>,
}

/// Bytes of the header every bench payload starts with.
pub(crate) const HEADER: usize = 20;

/// How long a receiving test user collects acks before sending them.
const ACK_EVERY: Duration = Duration::from_millis(20);

struct Shared {
    start: Instant,
    ack: Mutex<Histogram<u64>>,
    deliver: Mutex<Histogram<u64>>,
    receipt: Mutex<Histogram<u64>>,
    sent: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
    delivered: AtomicU64,
    duplicated: AtomicU64,
    out_of_order: AtomicU64,
    receipts: AtomicU64,
    in_flight: AtomicU64,
    /// Acknowledged messages, per (sender, recipient) pair.
    acked_log: Mutex<Ledger<(u32, u32)>>,
    /// Of those, the ones to users online from the start.
    acked_online: AtomicU64,
    /// Per sender: scheduled time (µs since start) of its acked messages, for
    /// the receipt latency.
    sent_at: Vec<Mutex<HashMap<MessageId, u64>>>,
}

impl Shared {
    fn since_start_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn record(hist: &Mutex<Histogram<u64>>, us: u64) {
        if let Ok(mut h) = hist.lock() {
            let _ = h.record(us.max(1));
        }
    }
}

/// The figures of a run (`--json`).
#[derive(Debug, Serialize)]
struct MessagesReport {
    users: u32,
    online_users: u32,
    rate_requested_per_s: f64,
    duration_s: f64,
    payload_bytes: usize,
    sent: u64,
    acked: u64,
    delivered: u64,
    lost: u64,
    duplicated: u64,
    out_of_order: u64,
    errors: u64,
    receipts: u64,
    throughput_per_s: f64,
    latency_ms: Latencies,
    server_rss_bytes: Option<u64>,
    /// CPU time over the sending and the online deliveries' drain: the
    /// node's (with `--server-pid`) and this generator's.
    cpu: CpuUse,
}

#[derive(Debug, Serialize)]
struct Latencies {
    ack: Percentiles,
    deliver: Percentiles,
    receipt: Percentiles,
}

/// A payload of `size` bytes (at least the header): sender, recipient (or
/// group), sequence number, scheduled time.
pub(crate) fn header(
    sender: u32,
    recipient: u32,
    seq: u32,
    scheduled_us: u64,
    size: usize,
) -> Vec<u8> {
    let mut payload = Vec::with_capacity(size.max(HEADER));
    payload.extend_from_slice(&sender.to_be_bytes());
    payload.extend_from_slice(&recipient.to_be_bytes());
    payload.extend_from_slice(&seq.to_be_bytes());
    payload.extend_from_slice(&scheduled_us.to_be_bytes());
    payload.resize(size.max(HEADER), 0);
    payload
}

/// What [`header`] wrote.
pub(crate) fn parse_header(payload: &[u8]) -> Option<(u32, u32, u32, u64)> {
    let field = |range: std::ops::Range<usize>| payload.get(range);
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(field(at..at + 4)?.try_into().ok()?))
    };
    let scheduled = u64::from_be_bytes(field(12..20)?.try_into().ok()?);
    Some((word(0)?, word(4)?, word(8)?, scheduled))
}

/// Reads one user's pushes until told to stop; returns what arrived.
async fn receive(
    user: u32,
    conn: Arc<Connection>,
    mut pushes: Pushes,
    shared: Arc<Shared>,
    measure_delivery: bool,
    mut stop: watch::Receiver<bool>,
) -> Ledger<(u32, u32)> {
    let mut arrivals = Ledger::new(1);
    // Acks are batched like a phone would (every 20 ms or 64 entries): fewer
    // frames, and one receipt per sender per batch.
    let mut to_ack = Vec::new();
    let mut ack_timer = tokio::time::interval(ACK_EVERY);
    ack_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            frame = pushes.recv() => frame,
            _ = ack_timer.tick() => {
                // An ack fails only with the connection, which the sender side reports.
                if !to_ack.is_empty() {
                    let _ = conn.ack(std::mem::take(&mut to_ack));
                }
                continue;
            }
            _ = stop.changed() => None,
        };
        let Some(first) = first else { break };
        let mut frame = Some(first);
        while let Some(current) = frame.take() {
            match current {
                ServerFrame::Deliver {
                    msg_id, payload, ..
                } => {
                    to_ack.push(msg_id);
                    let Some((sender, _, seq, scheduled)) = parse_header(&payload) else {
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    match arrivals.arrived((sender, user), u64::from(seq)) {
                        Arrival::Again => {
                            shared.duplicated.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        Arrival::Late { .. } => {
                            shared.out_of_order.fetch_add(1, Ordering::Relaxed);
                        }
                        Arrival::Next | Arrival::Skipped { .. } => {}
                    }
                    shared.delivered.fetch_add(1, Ordering::Relaxed);
                    if measure_delivery {
                        let now = shared.since_start_us();
                        Shared::record(&shared.deliver, now.saturating_sub(scheduled));
                    }
                }
                ServerFrame::Receipt {
                    id, kind, msg_ids, ..
                } => {
                    to_ack.push(id);
                    if kind == ReceiptKind::Delivered {
                        let now = shared.since_start_us();
                        if let Ok(mut sent) = shared.sent_at[user as usize].lock() {
                            for m in msg_ids {
                                if let Some(scheduled) = sent.remove(&m) {
                                    shared.receipts.fetch_add(1, Ordering::Relaxed);
                                    Shared::record(&shared.receipt, now.saturating_sub(scheduled));
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
            frame = pushes.try_recv().ok();
        }
        if to_ack.len() >= 64 {
            let _ = conn.ack(std::mem::take(&mut to_ack));
        }
    }
    conn.close();
    arrivals
}

pub(crate) async fn connect_all(
    server: &str,
    tls: &Tls,
    tokens: &[(u32, String)],
) -> anyhow::Result<Vec<(u32, Connection, Pushes)>> {
    let mut connected = Vec::with_capacity(tokens.len());
    for chunk in tokens.chunks(200) {
        let logins = chunk.iter().map(|(index, token)| async move {
            let (conn, pushes) = Connection::connect(server, tls, AGENT, REQUEST_TIMEOUT).await?;
            conn.login(token).await?;
            Ok::<_, client::ClientError>((*index, conn, pushes))
        });
        for result in futures::future::join_all(logins).await {
            connected.push(result.context("logging in a test user")?);
        }
    }
    Ok(connected)
}

/// Waits until `done()` or until `count()` stops moving for `quiet`.
pub(crate) async fn settle(
    count: impl Fn() -> u64,
    done: impl Fn() -> bool,
    quiet: Duration,
    max: Duration,
) {
    let started = Instant::now();
    let mut last = count();
    let mut last_change = Instant::now();
    while !done() && started.elapsed() < max {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = count();
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() > quiet {
            break;
        }
    }
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    if args.users < 2 || args.rate <= 0.0 || args.duration <= 0.0 {
        bail!("--users must be at least 2, --rate and --duration positive");
    }
    if !(0.0..1.0).contains(&args.offline_fraction) {
        bail!("--offline-fraction must be in [0, 1)");
    }
    raise_file_limit();
    let tls = args.target.tls()?;
    eprintln!("minting {} test users…", args.users);
    let users = mint_users(
        &args.target.server,
        &tls,
        &args.target.admin_secret,
        &args.target.first,
        args.users,
    )
    .await?;
    let online_count = ((f64::from(args.users) * (1.0 - args.offline_fraction)).ceil() as u32)
        .clamp(2, args.users);
    let tokens: Vec<(u32, String)> = users
        .iter()
        .enumerate()
        .map(|(i, (_, t))| (i as u32, t.clone()))
        .collect();
    eprintln!("logging in {online_count} users…");
    let online = connect_all(&args.target.server, &tls, &tokens[..online_count as usize]).await?;

    let shared = Arc::new(Shared {
        start: Instant::now(),
        ack: Mutex::new(new_histogram()),
        deliver: Mutex::new(new_histogram()),
        receipt: Mutex::new(new_histogram()),
        sent: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        duplicated: AtomicU64::new(0),
        out_of_order: AtomicU64::new(0),
        receipts: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        acked_log: Mutex::new(Ledger::new(1)),
        acked_online: AtomicU64::new(0),
        sent_at: (0..args.users)
            .map(|_| Mutex::new(HashMap::new()))
            .collect(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut senders = Vec::with_capacity(online.len());
    let mut receivers = Vec::new();
    for (index, conn, pushes) in online {
        let conn = Arc::new(conn);
        senders.push(Arc::clone(&conn));
        receivers.push(tokio::spawn(receive(
            index,
            conn,
            pushes,
            Arc::clone(&shared),
            true,
            stop_rx.clone(),
        )));
    }

    let total = (args.rate * args.duration).round() as u64;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} sent {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let phones: Vec<_> = users.iter().map(|(p, _)| p.clone()).collect();
    let mut seqs: HashMap<(u32, u32), u32> = HashMap::new();
    let mut rng = rand::rng();
    let mut next = 0u64;
    // Sampled before the clock starts: reading every thread's /proc files
    // takes milliseconds, which would shift every scheduled send time.
    let cpu_at_start = CpuSample::now(args.server_pid);
    let send_start = Instant::now();
    let start_offset_us = shared.since_start_us();
    while next < total {
        let due = super::sends_due(send_start.elapsed().as_secs_f64(), args.rate, total);
        while next < due {
            let scheduled_us = start_offset_us + (next as f64 / args.rate * 1e6) as u64;
            let sender = rng.random_range(0..online_count);
            let mut recipient = rng.random_range(0..args.users - 1);
            if recipient >= sender {
                recipient += 1;
            }
            let seq = seqs.entry((sender, recipient)).or_insert(0);
            *seq += 1;
            let seq = *seq;
            let payload = header(sender, recipient, seq, scheduled_us, args.payload);
            let request = Request::Send {
                to: phones[recipient as usize].clone(),
                client_msg_id: next,
                payload,
            };
            shared.sent.fetch_add(1, Ordering::Relaxed);
            shared.in_flight.fetch_add(1, Ordering::Relaxed);
            let shared_cb = Arc::clone(&shared);
            senders[sender as usize].submit(request, move |answer| {
                let now = shared_cb.since_start_us();
                match answer {
                    Ok(Response::ServerAck { msg_id, .. }) => {
                        shared_cb.acked.fetch_add(1, Ordering::Relaxed);
                        Shared::record(&shared_cb.ack, now.saturating_sub(scheduled_us));
                        if let Ok(mut log) = shared_cb.acked_log.lock() {
                            log.acked((sender, recipient), u64::from(seq));
                        }
                        if recipient < online_count {
                            shared_cb.acked_online.fetch_add(1, Ordering::Relaxed);
                        }
                        if let Ok(mut s) = shared_cb.sent_at[sender as usize].lock() {
                            s.insert(msg_id, scheduled_us);
                        }
                    }
                    _ => {
                        shared_cb.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                shared_cb.in_flight.fetch_sub(1, Ordering::Relaxed);
            });
            next += 1;
        }
        bar.set_position(next);
        bar.set_message(format!(
            "{} acked, {} delivered, {} errors",
            shared.acked.load(Ordering::Relaxed),
            shared.delivered.load(Ordering::Relaxed),
            shared.errors.load(Ordering::Relaxed)
        ));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let send_seconds = send_start.elapsed().as_secs_f64();
    bar.finish();

    // Drain: answers, then deliveries to online users, then the offline
    // users log in and must receive their backlog, then the receipts.
    settle(
        || shared.acked.load(Ordering::Relaxed) + shared.errors.load(Ordering::Relaxed),
        || shared.in_flight.load(Ordering::Relaxed) == 0,
        Duration::from_secs(10),
        REQUEST_TIMEOUT * 2,
    )
    .await;
    let expected_count = || shared.acked.load(Ordering::Relaxed);
    let expected_now = shared.acked_online.load(Ordering::Relaxed);
    settle(
        || shared.delivered.load(Ordering::Relaxed),
        || shared.delivered.load(Ordering::Relaxed) >= expected_now,
        Duration::from_secs(5),
        Duration::from_secs(60),
    )
    .await;
    // The window ends within 50 ms of the last online delivery; the last
    // receipts (batched acks) are still on their way, a few ms of work.
    let cpu = CpuUse::between(
        &cpu_at_start,
        &CpuSample::now(args.server_pid),
        send_start.elapsed().as_secs_f64(),
        shared.acked.load(Ordering::Relaxed),
    );
    if online_count < args.users {
        eprintln!(
            "logging in the {} offline users…",
            args.users - online_count
        );
        let offline =
            connect_all(&args.target.server, &tls, &tokens[online_count as usize..]).await?;
        for (index, conn, pushes) in offline {
            receivers.push(tokio::spawn(receive(
                index,
                Arc::new(conn),
                pushes,
                Arc::clone(&shared),
                false,
                stop_rx.clone(),
            )));
        }
    }
    let all_expected = expected_count();
    settle(
        || shared.delivered.load(Ordering::Relaxed),
        || shared.delivered.load(Ordering::Relaxed) >= all_expected,
        Duration::from_secs(5),
        Duration::from_secs(120),
    )
    .await;
    settle(
        || shared.receipts.load(Ordering::Relaxed),
        || shared.receipts.load(Ordering::Relaxed) >= all_expected,
        Duration::from_secs(3),
        Duration::from_secs(30),
    )
    .await;
    let _ = stop_tx.send(true);
    let mut ledger = match shared.acked_log.lock() {
        Ok(mut log) => std::mem::replace(&mut *log, Ledger::new(1)),
        Err(_) => Ledger::new(1),
    };
    for receiver in receivers {
        if let Ok(arrivals) = receiver.await {
            ledger.absorb(arrivals);
        }
    }
    let lost = ledger.check().lost.len() as u64;

    let (ack, deliver, receipt) = (
        snapshot(&shared.ack),
        snapshot(&shared.deliver),
        snapshot(&shared.receipt),
    );
    let acked = shared.acked.load(Ordering::Relaxed);
    let report = MessagesReport {
        users: args.users,
        online_users: online_count,
        rate_requested_per_s: args.rate,
        duration_s: send_seconds,
        payload_bytes: args.payload.max(HEADER),
        sent: shared.sent.load(Ordering::Relaxed),
        acked,
        delivered: shared.delivered.load(Ordering::Relaxed),
        lost,
        duplicated: shared.duplicated.load(Ordering::Relaxed),
        out_of_order: shared.out_of_order.load(Ordering::Relaxed),
        errors: shared.errors.load(Ordering::Relaxed),
        receipts: shared.receipts.load(Ordering::Relaxed),
        throughput_per_s: acked as f64 / send_seconds.max(1e-9),
        latency_ms: Latencies {
            ack: percentiles(&ack),
            deliver: percentiles(&deliver),
            receipt: percentiles(&receipt),
        },
        server_rss_bytes: args.server_pid.and_then(rss_bytes),
        cpu,
    };
    println!(
        "messages: {} sent, {} acked, {} delivered, {} lost, {} duplicated, {} out of order, {} errors",
        report.sent,
        report.acked,
        report.delivered,
        report.lost,
        report.duplicated,
        report.out_of_order,
        report.errors
    );
    println!(
        "throughput: {:.0} acked/s over {:.1} s ({} users, {} online, {} B payloads)",
        report.throughput_per_s,
        report.duration_s,
        report.users,
        report.online_users,
        report.payload_bytes
    );
    println!("{}", latency_line("ack", &report.latency_ms.ack));
    println!("{}", latency_line("deliver", &report.latency_ms.deliver));
    println!("{}", latency_line("receipt", &report.latency_ms.receipt));
    println!("{}", report.cpu.line());
    print!("{}", text_histogram("send → deliver", &deliver));
    finish(
        args.target.json.as_deref(),
        &report,
        (report.lost, report.duplicated, report.out_of_order),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_pads() {
        let payload = header(7, 9, 3, 123_456, 100);
        assert_eq!(payload.len(), 100);
        assert_eq!(parse_header(&payload), Some((7, 9, 3, 123_456)));
        assert_eq!(header(1, 2, 3, 4, 5).len(), HEADER);
        assert_eq!(parse_header(&[0; 10]), None);
    }
}
