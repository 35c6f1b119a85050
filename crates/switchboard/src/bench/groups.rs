//! `bench groups`: an open-loop group message load.
//!
//! `--groups` groups of `--members` members each, drawn from `--users`
//! test users (all online, one connection each), are created first; then
//! messages go on a fixed schedule to random groups from random members,
//! whether or not earlier ones were answered, and latencies are measured
//! from the scheduled time (no coordinated omission). Each payload carries
//! sender, group, a per-(sender, group) sequence number and the scheduled
//! time; every member checks order and duplicates per (sender, group), and
//! at the end every acknowledged message is checked off at every member
//! but its sender.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use client::{Connection, Pushes};
use hdrhistogram::Histogram;
use ledger::{Arrival, Ledger};
use proto::{GroupId, Request, Response, ServerFrame};
use rand::Rng;
use rand::seq::index::sample;
use serde::Serialize;
use tokio::sync::watch;

use super::messages::{HEADER, connect_all, header, parse_header, settle};
use super::report::{
    CpuSample, CpuUse, Percentiles, finish, latency_line, new_histogram, percentiles, rss_bytes,
    snapshot, text_histogram,
};
use super::{REQUEST_TIMEOUT, Target, mint::mint_users, raise_file_limit};

/// `bench groups`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    target: Target,
    /// Groups to create.
    #[arg(long, default_value_t = 10)]
    groups: u32,
    /// Members of each group, its creator included.
    #[arg(long, default_value_t = 16)]
    members: u32,
    /// Test users the members are drawn from (each holds a connection in
    /// this process).
    #[arg(long, default_value_t = 100)]
    users: u32,
    /// Group messages per second, in total (each is delivered to
    /// `--members` − 1 members).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Payload bytes per message (at least 20, the header).
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// The node's process id, to report its CPU and memory.
    #[arg(long)]
    server_pid: Option<u32>,
}

/// How long a member collects acks before sending them.
const ACK_EVERY: Duration = Duration::from_millis(20);

/// `((sender, group), member)`: one ordered stream per member.
type Key = ((u32, u32), u32);

struct Shared {
    start: Instant,
    ack: Mutex<Histogram<u64>>,
    deliver: Mutex<Histogram<u64>>,
    sent: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
    delivered: AtomicU64,
    duplicated: AtomicU64,
    out_of_order: AtomicU64,
    in_flight: AtomicU64,
    /// Deliveries owed for the acknowledged messages.
    expected: AtomicU64,
    /// Membership events received (the groups' creations, before the
    /// clock starts).
    events: AtomicU64,
    acked_log: Mutex<Ledger<Key>>,
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
struct GroupsReport {
    groups: u32,
    members: u32,
    users: u32,
    rate_requested_per_s: f64,
    duration_s: f64,
    payload_bytes: usize,
    sent: u64,
    acked: u64,
    /// Copies owed to members for the acknowledged messages.
    expected_deliveries: u64,
    delivered: u64,
    lost: u64,
    duplicated: u64,
    out_of_order: u64,
    errors: u64,
    deliveries_per_s: f64,
    latency_ms: Latencies,
    server_rss_bytes: Option<u64>,
    /// CPU over the sending and the deliveries' drain, per delivered copy.
    cpu: CpuUse,
    /// The node's CPU per delivered copy (`cpu.server_us_per_message`,
    /// counted per copy).
    server_us_per_delivery: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Latencies {
    ack: Percentiles,
    deliver: Percentiles,
}

/// Reads one member's pushes until told to stop; returns what arrived.
async fn receive(
    user: u32,
    conn: Arc<Connection>,
    mut pushes: Pushes,
    shared: Arc<Shared>,
    groups: Arc<HashMap<GroupId, u32>>,
    mut stop: watch::Receiver<bool>,
) -> Ledger<Key> {
    let mut arrivals = Ledger::new(1);
    let mut to_ack = Vec::new();
    let mut ack_timer = tokio::time::interval(ACK_EVERY);
    ack_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let frame = tokio::select! {
            frame = pushes.recv() => frame,
            _ = ack_timer.tick() => {
                if !to_ack.is_empty() {
                    let _ = conn.ack(std::mem::take(&mut to_ack));
                }
                continue;
            }
            _ = stop.changed() => None,
        };
        let Some(mut frame) = frame else { break };
        loop {
            match frame {
                ServerFrame::GroupDeliver {
                    msg_id,
                    group,
                    payload,
                    ..
                } => {
                    to_ack.push(msg_id);
                    let parsed = parse_header(&payload);
                    let Some((sender, index, seq, scheduled)) = parsed else {
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    };
                    if groups.get(&group) != Some(&index) {
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    match arrivals.arrived(((sender, index), user), u64::from(seq)) {
                        Arrival::Again => {
                            shared.duplicated.fetch_add(1, Ordering::Relaxed);
                        }
                        arrival => {
                            if matches!(arrival, Arrival::Late { .. }) {
                                shared.out_of_order.fetch_add(1, Ordering::Relaxed);
                            }
                            shared.delivered.fetch_add(1, Ordering::Relaxed);
                            let now = shared.since_start_us();
                            Shared::record(&shared.deliver, now.saturating_sub(scheduled));
                        }
                    }
                }
                // The creations: counted apart; anything else: acked.
                ServerFrame::GroupEvent { msg_id, .. } => {
                    to_ack.push(msg_id);
                    shared.events.fetch_add(1, Ordering::Relaxed);
                }
                ServerFrame::GroupReceipt { msg_id, .. } | ServerFrame::Deliver { msg_id, .. } => {
                    to_ack.push(msg_id);
                }
                ServerFrame::Receipt { id, .. } => to_ack.push(id),
                _ => {}
            }
            match pushes.try_recv() {
                Ok(next) => frame = next,
                Err(_) => break,
            }
        }
        if to_ack.len() >= 64 {
            let _ = conn.ack(std::mem::take(&mut to_ack));
        }
    }
    conn.close();
    arrivals
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    if args.members < 2 || args.members > args.users || args.groups == 0 {
        bail!("--members must be at least 2 and at most --users, --groups at least 1");
    }
    if args.rate <= 0.0 || args.duration <= 0.0 {
        bail!("--rate and --duration must be positive");
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
    let tokens: Vec<(u32, String)> = users
        .iter()
        .enumerate()
        .map(|(i, (_, t))| (i as u32, t.clone()))
        .collect();
    eprintln!("logging in {} users…", args.users);
    let online = connect_all(&args.target.server, &tls, &tokens).await?;
    let mut conns: Vec<Option<(Arc<Connection>, Pushes)>> = (0..args.users).map(|_| None).collect();
    for (index, conn, pushes) in online {
        conns[index as usize] = Some((Arc::new(conn), pushes));
    }
    let conn_of = |i: u32| -> anyhow::Result<Arc<Connection>> {
        conns[i as usize]
            .as_ref()
            .map(|(c, _)| Arc::clone(c))
            .context("a test user without a connection")
    };

    eprintln!(
        "creating {} groups of {} members…",
        args.groups, args.members
    );
    let mut rng = rand::rng();
    let mut members_of: Vec<Vec<u32>> = Vec::new();
    let mut ids: Vec<GroupId> = Vec::new();
    for _ in 0..args.groups {
        let members: Vec<u32> = sample(&mut rng, args.users as usize, args.members as usize)
            .into_iter()
            .map(|i| i as u32)
            .collect();
        let request = Request::CreateGroup {
            name: format!("bench {}", ids.len()),
            members: members[1..]
                .iter()
                .map(|m| users[*m as usize].0.clone())
                .collect(),
        };
        match conn_of(members[0])?.request(request).await {
            Ok(Response::GroupCreated { group }) => ids.push(group),
            other => bail!("creating a group: {other:?}"),
        }
        members_of.push(members);
    }
    let index_of: Arc<HashMap<GroupId, u32>> = Arc::new(
        ids.iter()
            .enumerate()
            .map(|(i, g)| (*g, i as u32))
            .collect(),
    );

    let shared = Arc::new(Shared {
        start: Instant::now(),
        ack: Mutex::new(new_histogram()),
        deliver: Mutex::new(new_histogram()),
        sent: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        duplicated: AtomicU64::new(0),
        out_of_order: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        expected: AtomicU64::new(0),
        events: AtomicU64::new(0),
        acked_log: Mutex::new(Ledger::new(1)),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for (index, slot) in conns.into_iter().enumerate() {
        let Some((conn, pushes)) = slot else { continue };
        senders.push(Arc::clone(&conn));
        receivers.push(tokio::spawn(receive(
            index as u32,
            conn,
            pushes,
            Arc::clone(&shared),
            Arc::clone(&index_of),
            stop_rx.clone(),
        )));
    }
    // The clock starts once every member has its group's creation: a
    // 1,024-member group's creation is itself 1,024 deliveries, and the
    // first messages would otherwise queue behind it.
    let creations: u64 = members_of.iter().map(|m| m.len() as u64).sum();
    let waiting_since = Instant::now();
    while shared.events.load(Ordering::Relaxed) < creations {
        if waiting_since.elapsed() > REQUEST_TIMEOUT {
            bail!(
                "{} of {creations} group creations arrived in {REQUEST_TIMEOUT:?}",
                shared.events.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let members_of = Arc::new(members_of);

    let total = (args.rate * args.duration).round() as u64;
    let mut seqs: HashMap<(u32, u32), u32> = HashMap::new();
    let mut next = 0u64;
    let cpu_at_start = CpuSample::now(args.server_pid);
    let send_start = Instant::now();
    let start_offset_us = shared.since_start_us();
    while next < total {
        let due = super::sends_due(send_start.elapsed().as_secs_f64(), args.rate, total);
        while next < due {
            let scheduled_us = start_offset_us + (next as f64 / args.rate * 1e6) as u64;
            let group = rng.random_range(0..args.groups);
            let members = &members_of[group as usize];
            let sender = members[rng.random_range(0..members.len())];
            let seq = seqs.entry((sender, group)).or_insert(0);
            *seq += 1;
            let seq = *seq;
            let request = Request::SendGroup {
                group: ids[group as usize],
                client_msg_id: next,
                after: None,
                payload: header(sender, group, seq, scheduled_us, args.payload),
            };
            shared.sent.fetch_add(1, Ordering::Relaxed);
            shared.in_flight.fetch_add(1, Ordering::Relaxed);
            let shared_cb = Arc::clone(&shared);
            let members_cb = Arc::clone(&members_of);
            senders[sender as usize].submit(request, move |answer| {
                let now = shared_cb.since_start_us();
                match answer {
                    Ok(Response::ServerAck { .. }) => {
                        shared_cb.acked.fetch_add(1, Ordering::Relaxed);
                        Shared::record(&shared_cb.ack, now.saturating_sub(scheduled_us));
                        let members = &members_cb[group as usize];
                        shared_cb
                            .expected
                            .fetch_add(members.len() as u64 - 1, Ordering::Relaxed);
                        if let Ok(mut log) = shared_cb.acked_log.lock() {
                            for member in members.iter().filter(|m| **m != sender) {
                                log.acked(((sender, group), *member), u64::from(seq));
                            }
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
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let send_seconds = send_start.elapsed().as_secs_f64();
    settle(
        || shared.acked.load(Ordering::Relaxed) + shared.errors.load(Ordering::Relaxed),
        || shared.in_flight.load(Ordering::Relaxed) == 0,
        Duration::from_secs(10),
        REQUEST_TIMEOUT * 2,
    )
    .await;
    let expected = shared.expected.load(Ordering::Relaxed);
    settle(
        || shared.delivered.load(Ordering::Relaxed),
        || shared.delivered.load(Ordering::Relaxed) >= expected,
        Duration::from_secs(5),
        Duration::from_secs(120),
    )
    .await;
    let delivered = shared.delivered.load(Ordering::Relaxed);
    let cpu = CpuUse::between(
        &cpu_at_start,
        &CpuSample::now(args.server_pid),
        send_start.elapsed().as_secs_f64(),
        delivered,
    );
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
    let (ack, deliver) = (snapshot(&shared.ack), snapshot(&shared.deliver));
    let report = GroupsReport {
        groups: args.groups,
        members: args.members,
        users: args.users,
        rate_requested_per_s: args.rate,
        duration_s: send_seconds,
        payload_bytes: args.payload.max(HEADER),
        sent: shared.sent.load(Ordering::Relaxed),
        acked: shared.acked.load(Ordering::Relaxed),
        expected_deliveries: expected,
        delivered,
        lost,
        duplicated: shared.duplicated.load(Ordering::Relaxed),
        out_of_order: shared.out_of_order.load(Ordering::Relaxed),
        errors: shared.errors.load(Ordering::Relaxed),
        deliveries_per_s: delivered as f64 / send_seconds.max(1e-9),
        latency_ms: Latencies {
            ack: percentiles(&ack),
            deliver: percentiles(&deliver),
        },
        server_rss_bytes: args.server_pid.and_then(rss_bytes),
        server_us_per_delivery: cpu.server_us_per_message,
        cpu,
    };
    println!(
        "groups: {} sent, {} acked, {} of {} copies delivered, {} lost, {} duplicated, {} out of order, {} errors",
        report.sent,
        report.acked,
        report.delivered,
        report.expected_deliveries,
        report.lost,
        report.duplicated,
        report.out_of_order,
        report.errors
    );
    println!(
        "throughput: {:.0} deliveries/s over {:.1} s ({} groups of {}, {} users)",
        report.deliveries_per_s, report.duration_s, report.groups, report.members, report.users
    );
    println!("{}", latency_line("ack", &report.latency_ms.ack));
    println!("{}", latency_line("deliver", &report.latency_ms.deliver));
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
    fn a_group_payload_names_sender_group_and_sequence() {
        // The 1:1 header's second field carries the group's index here.
        let payload = header(7, 3, 9, 123_456, 64);
        assert_eq!(parse_header(&payload), Some((7, 3, 9, 123_456)));
    }
}
