//! Steady traffic through faults: pairs of test users, each sender sending
//! numbered messages to its receiver at a fixed pace with the failover
//! client (server list, reconnect, resend with the same id), each receiver
//! acking what arrives. At the end every message the cluster acknowledged
//! is checked off: lost, duplicated (after the client's own dedupe) and out
//! of order per pair are counted. The first `group_pairs` pairs talk
//! through a group of their two users instead (created at the start), so
//! that group fan-out goes through the same faults and the same check.
//! Used by `bench steady` and `demo`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use client::{Client, ClientConfig, Event, PhoneNumber};
use hdrhistogram::Histogram;
use ledger::Ledger;
use serde::Serialize;

use crate::bench::report::{Percentiles, new_histogram, percentiles};

/// What a run needs.
pub(crate) struct SteadyConfig {
    /// Every node; user `i` tries them starting at `i % len`.
    pub(crate) servers: Vec<String>,
    /// PEM of the client-facing CA or certificate.
    pub(crate) ca_pem: Vec<u8>,
    /// Name in the nodes' certificate.
    pub(crate) server_name: String,
    /// Users with tokens, two per pair (sender, receiver).
    pub(crate) users: Vec<(PhoneNumber, String)>,
    /// Messages per second per pair.
    pub(crate) rate_per_pair: f64,
    /// Sends one sender may have unacknowledged at once (1: each waits for
    /// the previous ack; more: pipelined, as a chatty app would).
    pub(crate) window: usize,
    /// How many pairs (the first ones) send through a group of the two.
    pub(crate) group_pairs: usize,
}

/// Both sides of every pair (by pair index), checked at the end.
type Log = Arc<Mutex<Ledger<usize>>>;

/// The server's id of each acknowledged (pair, sequence number), to name
/// a lost message in the nodes' logs.
type ServerIds = Arc<Mutex<HashMap<(usize, u64), String>>>;

/// Every acknowledged send: (sent at, acked at), µs since the start.
type SendTimes = Arc<Mutex<Vec<(u64, u64)>>>;

/// A send waiting longer than this for its ack was held up by a fault
/// (at steady load p99 is a few ms to tens of ms).
const STALLED_US: u64 = 300_000;

/// Stalled sends less than this apart belong to one fault.
const ONE_FAULT_US: u64 = 2_000_000;

#[derive(Default)]
struct Counters {
    acked: AtomicU64,
    delivered: AtomicU64,
    refused: AtomicU64,
}

/// A running load.
pub(crate) struct SteadyRun {
    start: Instant,
    stop: Arc<AtomicBool>,
    senders: Vec<tokio::task::JoinHandle<()>>,
    receivers: Vec<Arc<Client>>,
    /// Per pair: (sender, receiver).
    phones: Vec<(String, String)>,
    ledger: Log,
    server_ids: ServerIds,
    counters: Arc<Counters>,
    ack_latency: Arc<Mutex<Histogram<u64>>>,
    deliver_latency: Arc<Mutex<Histogram<u64>>>,
    send_times: SendTimes,
}

/// The check at the end.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SteadyOutcome {
    pub(crate) pairs: usize,
    pub(crate) duration_s: f64,
    pub(crate) acked: u64,
    pub(crate) delivered: u64,
    pub(crate) lost: u64,
    pub(crate) duplicated: u64,
    pub(crate) out_of_order: u64,
    /// Sends the cluster refused for good (not acked, so not checked).
    pub(crate) refused: u64,
    pub(crate) latency_ms: SteadyLatencies,
    /// The pairs the check found at fault (at most [`MAX_FAULTS_SHOWN`]),
    /// so that a failed run can be traced in the nodes' logs.
    pub(crate) faults: Vec<PairFault>,
    /// How long each fault (a kill, a cut) left sends without an ack.
    pub(crate) stalls: Stalls,
}

/// The faults a run went through, as the senders saw them: runs of sends
/// that waited more than 300 ms for their ack, less than 2 s apart, count
/// as one fault; its length is the longest wait among them (the time the
/// fault left a fragment unable to accept sends, as a sender sees it).
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Stalls {
    pub(crate) count: usize,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
}

/// Groups stalled sends into faults (see [`Stalls`]).
fn stalls(mut sends: Vec<(u64, u64)>) -> Stalls {
    sends.retain(|(sent, acked)| acked.saturating_sub(*sent) > STALLED_US);
    sends.sort_unstable();
    let mut faults: Vec<u64> = Vec::new();
    let mut last_sent = None;
    for (sent, acked) in sends {
        let wait = acked - sent;
        match (last_sent, faults.last_mut()) {
            (Some(last), Some(longest)) if sent - last < ONE_FAULT_US => {
                *longest = (*longest).max(wait)
            }
            _ => faults.push(wait),
        }
        last_sent = Some(sent);
    }
    faults.sort_unstable();
    let at = |q: f64| {
        let i = ((faults.len() as f64 * q).ceil() as usize).clamp(1, faults.len().max(1)) - 1;
        faults.get(i).map_or(0.0, |us| *us as f64 / 1000.0)
    };
    Stalls {
        count: faults.len(),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        max_ms: faults.last().map_or(0.0, |us| *us as f64 / 1000.0),
    }
}

/// How long closing one receiver may take at the end of a run.
const RECEIVER_CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How many faulty pairs an outcome names.
const MAX_FAULTS_SHOWN: usize = 16;
/// How many sequence numbers one [`PairFault`] list names.
const MAX_SEQS_SHOWN: usize = 32;

/// What went wrong for one pair.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PairFault {
    pub(crate) pair: usize,
    pub(crate) sender: String,
    pub(crate) receiver: String,
    /// Acked but never received: (sequence number, server message id).
    pub(crate) lost: Vec<(u64, String)>,
    /// Received more than once.
    pub(crate) duplicated: Vec<u64>,
    /// Received after a later one: (the one before it, this one).
    pub(crate) out_of_order: Vec<(u64, u64)>,
}

/// Latencies of the run (including the stalls of faults).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SteadyLatencies {
    pub(crate) ack: Percentiles,
    pub(crate) deliver: Percentiles,
}

/// A live snapshot for progress lines.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SteadySnapshot {
    pub(crate) elapsed: Duration,
    pub(crate) acked: u64,
    pub(crate) delivered: u64,
    pub(crate) ack_p99_ms: f64,
}

fn payload(seq: u64, at_us: u64) -> Vec<u8> {
    let mut bytes = seq.to_be_bytes().to_vec();
    bytes.extend_from_slice(&at_us.to_be_bytes());
    bytes
}

fn parse(payload: &[u8]) -> Option<(u64, u64)> {
    let seq = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
    let at = u64::from_be_bytes(payload.get(8..16)?.try_into().ok()?);
    Some((seq, at))
}

fn record(hist: &Mutex<Histogram<u64>>, us: u64) {
    if let Ok(mut h) = hist.lock() {
        let _ = h.record(us.max(1));
    }
}

impl SteadyConfig {
    fn client_config(&self, first: usize) -> ClientConfig {
        let n = self.servers.len().max(1);
        let servers = (0..self.servers.len())
            .map(|k| self.servers[(first + k) % n].clone())
            .collect();
        let mut cfg = ClientConfig::new(servers, self.ca_pem.clone());
        cfg.server_name = self.server_name.clone();
        cfg.agent = crate::commands::AGENT.to_owned();
        cfg.request_timeout = Duration::from_secs(10);
        cfg
    }
}

/// A group of `client`'s user and `with`, made at the start of a run (a
/// cluster still settling may refuse it for a moment).
async fn create_group(client: &Client, with: &PhoneNumber) -> anyhow::Result<client::GroupId> {
    let mut last = None;
    for _ in 0..20 {
        match client.create_group("steady", vec![with.clone()]).await {
            Ok(group) => return Ok(group),
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    Err(anyhow::anyhow!("creating a group: {last:?}"))
}

impl SteadyRun {
    /// Logs every user in (receivers first, so that nothing waits offline)
    /// and starts sending.
    pub(crate) async fn start(config: SteadyConfig) -> anyhow::Result<Self> {
        let pairs = config.users.len() / 2;
        anyhow::ensure!(pairs > 0, "steady traffic needs at least two users");
        let start = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let ledger: Log = Arc::new(Mutex::new(Ledger::new(0)));
        let server_ids = ServerIds::default();
        let counters = Arc::new(Counters::default());
        let ack_latency = Arc::new(Mutex::new(new_histogram()));
        let deliver_latency = Arc::new(Mutex::new(new_histogram()));
        let send_times = SendTimes::default();
        let mut receivers = Vec::with_capacity(pairs);
        for pair in 0..pairs {
            let (_, token) = &config.users[2 * pair + 1];
            let (client, mut events) =
                Client::connect(config.client_config(2 * pair + 1), token.clone()).await?;
            let client = Arc::new(client);
            let (acker, log, counters, hist) = (
                client.clone(),
                ledger.clone(),
                counters.clone(),
                deliver_latency.clone(),
            );
            tokio::spawn(async move {
                while let Some(event) = events.recv().await {
                    let (msg_id, payload) = match event {
                        Event::Message {
                            msg_id, payload, ..
                        }
                        | Event::GroupMessage {
                            msg_id, payload, ..
                        } => (msg_id, payload),
                        // The group's creation: acked, nothing to count.
                        Event::GroupEvent { msg_id, .. } => {
                            let _ = acker.ack(vec![msg_id]).await;
                            continue;
                        }
                        _ => continue,
                    };
                    if let Some((seq, at_us)) = parse(&payload) {
                        let now_us = start.elapsed().as_micros() as u64;
                        record(&hist, now_us.saturating_sub(at_us));
                        counters.delivered.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut log) = log.lock() {
                            log.arrived(pair, seq);
                        }
                        let _ = acker.ack(vec![msg_id]).await;
                    }
                }
            });
            receivers.push(client);
        }
        let period = Duration::from_secs_f64(1.0 / config.rate_per_pair.max(0.1));
        let mut senders = Vec::with_capacity(pairs);
        for pair in 0..pairs {
            let (_, token) = &config.users[2 * pair];
            let to = config.users[2 * pair + 1].0.clone();
            let (client, _events) =
                Client::connect(config.client_config(2 * pair), token.clone()).await?;
            let group = if pair < config.group_pairs {
                Some(create_group(&client, &to).await?)
            } else {
                None
            };
            let (stop, log, ids, counters, hist, times) = (
                stop.clone(),
                ledger.clone(),
                server_ids.clone(),
                counters.clone(),
                ack_latency.clone(),
                send_times.clone(),
            );
            let window = Arc::new(tokio::sync::Semaphore::new(config.window.max(1)));
            senders.push(tokio::spawn(async move {
                // Acks are awaited in send order by a second task, so that
                // up to `window` sends are in flight.
                type Pending = (
                    u64,
                    u64,
                    std::pin::Pin<Box<dyn Future<Output = client::Result<client::SendAck>> + Send>>,
                    tokio::sync::OwnedSemaphorePermit,
                );
                let (queue, mut pending) = tokio::sync::mpsc::unbounded_channel::<Pending>();
                let acks = tokio::spawn(async move {
                    while let Some((seq, at_us, ack, permit)) = pending.recv().await {
                        match ack.await {
                            Ok(ack) => {
                                let now_us = start.elapsed().as_micros() as u64;
                                record(&hist, now_us.saturating_sub(at_us));
                                counters.acked.fetch_add(1, Ordering::Relaxed);
                                if let Ok(mut times) = times.lock() {
                                    times.push((at_us, now_us));
                                }
                                if let Ok(mut log) = log.lock() {
                                    log.acked(pair, seq);
                                }
                                if let Ok(mut ids) = ids.lock() {
                                    ids.insert((pair, seq), ack.msg_id.to_string());
                                }
                            }
                            // Refused for good (the client retries everything
                            // else itself).
                            Err(e) => {
                                counters.refused.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(pair, error = %e, "send refused");
                            }
                        }
                        drop(permit);
                    }
                });
                let mut next = tokio::time::Instant::now();
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let Ok(permit) = window.clone().acquire_owned().await else {
                        break;
                    };
                    let at_us = start.elapsed().as_micros() as u64;
                    let queued: client::Result<Pending> = match group {
                        Some(group) => client
                            .queue_send_group(group, payload(seq, at_us))
                            .map(|ack| (seq, at_us, Box::pin(ack) as _, permit)),
                        None => client
                            .queue_send(&to, payload(seq, at_us))
                            .map(|ack| (seq, at_us, Box::pin(ack) as _, permit)),
                    };
                    match queued {
                        Ok(pending) => {
                            let _ = queue.send(pending);
                        }
                        Err(e) => {
                            tracing::warn!(pair, error = %e, "the client stopped");
                            break;
                        }
                    }
                    seq += 1;
                    next += period;
                    tokio::time::sleep_until(next).await;
                    if tokio::time::Instant::now() > next + period * 10 {
                        // After a stall, go on at the pace instead of bursting.
                        next = tokio::time::Instant::now();
                    }
                }
                drop(queue);
                let _ = acks.await;
                client.close().await;
            }));
        }
        let phones = (0..pairs)
            .map(|pair| {
                (
                    config.users[2 * pair].0.to_string(),
                    config.users[2 * pair + 1].0.to_string(),
                )
            })
            .collect();
        Ok(Self {
            start,
            stop,
            senders,
            receivers,
            phones,
            ledger,
            server_ids,
            counters,
            ack_latency,
            deliver_latency,
            send_times,
        })
    }

    /// Figures so far.
    pub(crate) fn snapshot(&self) -> SteadySnapshot {
        let ack_p99_ms = self
            .ack_latency
            .lock()
            .map(|h| h.value_at_quantile(0.99) as f64 / 1000.0)
            .unwrap_or(0.0);
        SteadySnapshot {
            elapsed: self.start.elapsed(),
            acked: self.counters.acked.load(Ordering::Relaxed),
            delivered: self.counters.delivered.load(Ordering::Relaxed),
            ack_p99_ms,
        }
    }

    /// Stops sending, waits up to `drain` for every acked message to
    /// arrive, and counts what did not. Bounded: a sender still waiting for
    /// an answer after another `drain` (a cluster that never heals) is
    /// abandoned, and what it sent unanswered was never acked.
    pub(crate) async fn finish(self, drain: Duration) -> SteadyOutcome {
        self.stop.store(true, Ordering::Relaxed);
        let duration_s = self.start.elapsed().as_secs_f64();
        let senders_deadline = Instant::now() + drain;
        for mut sender in self.senders {
            let left = senders_deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, &mut sender).await.is_err() {
                sender.abort();
            }
        }
        let deadline = Instant::now() + drain;
        while !self.ledger.lock().is_ok_and(|l| l.all_arrived()) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for receiver in &self.receivers {
            let _ = tokio::time::timeout(RECEIVER_CLOSE_WAIT, receiver.close()).await;
        }
        let check = match self.ledger.lock() {
            Ok(ledger) => ledger.check(),
            Err(_) => Ledger::new(0).check(),
        };
        let server_ids = self
            .server_ids
            .lock()
            .map(|ids| ids.clone())
            .unwrap_or_default();
        let faults = pair_faults(&check, &self.phones, &server_ids);
        let hist = |h: &Mutex<Histogram<u64>>| {
            h.lock()
                .map(|h| percentiles(&h))
                .unwrap_or_else(|_| percentiles(&new_histogram()))
        };
        SteadyOutcome {
            pairs: self.receivers.len(),
            duration_s,
            acked: check.acked,
            delivered: check.arrived,
            lost: check.lost.len() as u64,
            duplicated: check.duplicated.len() as u64,
            out_of_order: check.late.len() as u64,
            refused: self.counters.refused.load(Ordering::Relaxed),
            latency_ms: SteadyLatencies {
                ack: hist(&self.ack_latency),
                deliver: hist(&self.deliver_latency),
            },
            faults,
            stalls: stalls(
                self.send_times
                    .lock()
                    .map(|t| t.clone())
                    .unwrap_or_default(),
            ),
        }
    }
}

/// The entry of `pair` in `faults`, unless [`MAX_FAULTS_SHOWN`] other
/// pairs are named already.
fn fault_of<'a>(
    faults: &'a mut BTreeMap<usize, PairFault>,
    phones: &[(String, String)],
    pair: usize,
) -> Option<&'a mut PairFault> {
    if !faults.contains_key(&pair) && faults.len() >= MAX_FAULTS_SHOWN {
        return None;
    }
    Some(faults.entry(pair).or_insert_with(|| {
        let (sender, receiver) = phones.get(pair).cloned().unwrap_or_default();
        PairFault {
            pair,
            sender,
            receiver,
            lost: Vec::new(),
            duplicated: Vec::new(),
            out_of_order: Vec::new(),
        }
    }))
}

/// The pairs at fault (at most [`MAX_FAULTS_SHOWN`]), each with the
/// first [`MAX_SEQS_SHOWN`] of each kind of fault.
fn pair_faults(
    check: &ledger::Check<usize>,
    phones: &[(String, String)],
    server_ids: &HashMap<(usize, u64), String>,
) -> Vec<PairFault> {
    let mut faults: BTreeMap<usize, PairFault> = BTreeMap::new();
    for &(pair, seq) in &check.lost {
        if let Some(f) =
            fault_of(&mut faults, phones, pair).filter(|f| f.lost.len() < MAX_SEQS_SHOWN)
        {
            let id = server_ids.get(&(pair, seq)).cloned().unwrap_or_default();
            f.lost.push((seq, id));
        }
    }
    for &(pair, seq) in &check.duplicated {
        if let Some(f) =
            fault_of(&mut faults, phones, pair).filter(|f| f.duplicated.len() < MAX_SEQS_SHOWN)
        {
            f.duplicated.push(seq);
        }
    }
    for &(pair, after, seq) in &check.late {
        if let Some(f) =
            fault_of(&mut faults, phones, pair).filter(|f| f.out_of_order.len() < MAX_SEQS_SHOWN)
        {
            f.out_of_order.push((after, seq));
        }
    }
    faults.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stalled_sends_close_together_are_one_fault_as_long_as_the_longest_wait() {
        let ms = |a: u64, b: u64| (a * 1000, b * 1000);
        let sends = vec![
            ms(0, 5),
            // A kill at 1 s: three sends wait, the first longest.
            ms(1_000, 1_900),
            ms(1_100, 1_905),
            ms(1_200, 1_910),
            ms(1_300, 1_310),
            // Another at 10 s.
            ms(10_000, 10_400),
            ms(20_000, 20_003),
        ];
        let s = stalls(sends);
        assert_eq!(s.count, 2);
        assert_eq!((s.p50_ms, s.max_ms), (400.0, 900.0));
        assert_eq!(stalls(vec![ms(0, 1)]).count, 0);
    }

    #[test]
    fn faults_are_named_by_pair_with_the_server_ids_of_lost_messages() {
        let mut ledger = Ledger::new(0);
        let mut ids = HashMap::new();
        for seq in 0..5 {
            ledger.acked(1, seq);
            ids.insert((1, seq), format!("m{seq}"));
            ledger.acked(0, seq);
            ledger.arrived(0, seq);
        }
        for seq in [0, 2, 1, 2, 4] {
            ledger.arrived(1, seq);
        }
        let phones = vec![("a".into(), "b".into()), ("c".into(), "d".into())];
        let faults = pair_faults(&ledger.check(), &phones, &ids);
        assert_eq!(faults.len(), 1);
        let f = &faults[0];
        assert_eq!(
            (f.pair, f.sender.as_str(), f.receiver.as_str()),
            (1, "c", "d")
        );
        assert_eq!(f.lost, vec![(3, "m3".to_owned())]);
        assert_eq!(f.duplicated, vec![2]);
        assert_eq!(f.out_of_order, vec![(2, 1)]);
    }
}
