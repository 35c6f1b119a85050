//! Prometheus metrics: the exporter and the gauges sampled from services.
//!
//! Counters are incremented where things happen (`switchboard_*_total` in
//! the session and fragment crates); the gauges here — connections, the
//! group-commit queue, fragment backlogs, every actor's queue length
//! (`queues`) — are sampled every few seconds.
//!
//! The listener is ours rather than the exporter's (which answers every
//! path with the metrics): it also answers `/healthz` and `/readyz` from
//! [`Health`], 200 when the probe passes and 503 when it does not.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use offline_queue::{FragmentDirectory, FragmentMsg};
use storage::Store;

use crate::health::Health;
use crate::{NodeError, Result};

/// Histogram buckets (seconds) of every latency: from a fast commit on a
/// good disk to a stall an alert should see.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// How often gauges are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Scrapes and probes served at once; more wait for the accept loop.
const MAX_SCRAPES: usize = 32;
/// A connection of the metrics listener is closed after this long.
const SCRAPE_DEADLINE: Duration = Duration::from_secs(10);

/// Serves `/metrics`, `/healthz` and `/readyz` on `listen` and starts
/// sampling gauges. The recorder is process-wide: a second node in one
/// process keeps the first one's (and serves no metrics of its own).
pub(crate) fn start(
    listen: &str,
    store: Store,
    fragments: FragmentDirectory,
    count: u16,
    health: Health,
) -> Result<()> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|e| NodeError::Config(format!("metrics.listen = {listen:?}: {e}")))?;
    let handle = PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)
        .map_err(|e| NodeError::Startup(format!("metrics buckets: {e}")))?
        .install_recorder()
        .map_err(|e| NodeError::Startup(format!("metrics recorder: {e}")))?;
    crate::metric_help::describe_all();
    let process = metrics_process::Collector::default();
    process.describe();
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(tokio::net::TcpListener::from_std)
        .map_err(|source| NodeError::Bind {
            addr: listen.to_owned(),
            source,
        })?;
    tracing::info!(%addr, "serving Prometheus metrics at /metrics, probes at /healthz and /readyz");
    let health_for_gauges = health.clone();
    tokio::spawn(serve(listener, handle.clone(), health));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        loop {
            tick.tick().await;
            // The exporter's own listener would do this; ours must.
            handle.run_upkeep();
            process.collect();
            sample(&store, &fragments, count).await;
            sample_health(&health_for_gauges, count);
        }
    });
    Ok(())
}

async fn serve(listener: tokio::net::TcpListener, metrics: PrometheusHandle, health: Health) {
    crate::accept::serve_bounded(
        "metrics",
        MAX_SCRAPES,
        SCRAPE_DEADLINE,
        || async { listener.accept().await.map(|(stream, _)| stream) },
        |stream| {
            let (metrics, health) = (metrics.clone(), health.clone());
            async move {
                let service = hyper::service::service_fn(move |request| {
                    let answer = answer(&request, &metrics, &health);
                    async move { Ok::<_, Infallible>(answer) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(false)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            }
        },
    )
    .await;
}

fn answer(
    request: &Request<Incoming>,
    metrics: &PrometheusHandle,
    health: &Health,
) -> Response<Full<Bytes>> {
    let (status, body) = match request.uri().path() {
        "/healthz" => probe(health.healthz()),
        "/readyz" => probe(health.readyz()),
        // Any other path keeps answering with the metrics, as the
        // exporter's listener did.
        _ => (StatusCode::OK, metrics.render()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

fn probe((ok, why): (bool, String)) -> (StatusCode, String) {
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, why + "\n")
}

/// Readiness, draining and the island partner as gauges, for alerts (a
/// probe's answer is not a metric Prometheus can keep).
fn sample_health(health: &Health, fragments: u16) {
    let flag = |on: bool| if on { 1.0 } else { 0.0 };
    metrics::gauge!("switchboard_ready").set(flag(health.readyz().0));
    metrics::gauge!("switchboard_draining").set(flag(health.draining()));
    metrics::gauge!("switchboard_fragments_configured").set(f64::from(fragments));
    if let Some(up) = health.partner_up() {
        metrics::gauge!("switchboard_island_partner_up").set(flag(up));
    }
}

async fn sample(store: &Store, fragments: &FragmentDirectory, count: u16) {
    metrics::gauge!("switchboard_connections").set(session::live_sessions() as f64);
    crate::queues::record(&crate::queues::sample(crate::builder::SESSIONS_NAME).await);
    let stats = store.stats();
    metrics::gauge!("switchboard_storage_queue_depth")
        .set(stats.queued.load(Ordering::Relaxed) as f64);
    metrics::gauge!("switchboard_storage_commits")
        .set(stats.commits.load(Ordering::Relaxed) as f64);
    metrics::gauge!("switchboard_storage_changes")
        .set(stats.changes.load(Ordering::Relaxed) as f64);
    metrics::gauge!("switchboard_storage_busy_seconds")
        .set(stats.busy_micros.load(Ordering::Relaxed) as f64 / 1e6);
    metrics::gauge!("switchboard_storage_journaled_commits")
        .set(stats.journaled_commits.load(Ordering::Relaxed) as f64);
    metrics::gauge!("switchboard_storage_checkpoints")
        .set(stats.checkpoints.load(Ordering::Relaxed) as f64);
    metrics::gauge!("switchboard_storage_staged_entries")
        .set(store.stage::<offline_queue::staged::MailboxStage>().len() as f64);
    let (mut online, mut pending, mut cached, mut unavailable) = (0usize, 0usize, 0usize, 0u64);
    for id in 0..count {
        let answer = match fragments.get(id) {
            Ok(fragment) => ractor::call_t!(fragment, FragmentMsg::Stats, 1000).ok(),
            Err(_) => None,
        };
        match answer {
            Some(s) => {
                online += s.online;
                pending += s.pending_commits;
                cached += s.cached_entries;
            }
            None => unavailable += 1,
        }
    }
    metrics::gauge!("switchboard_online_users").set(online as f64);
    metrics::gauge!("switchboard_fragment_pending_commits").set(pending as f64);
    metrics::gauge!("switchboard_fragment_cached_entries").set(cached as f64);
    metrics::gauge!("switchboard_fragments_unavailable").set(unavailable as f64);
}
