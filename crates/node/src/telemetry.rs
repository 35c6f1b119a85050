//! Prometheus metrics: the exporter and the gauges sampled from services.
//!
//! Counters are incremented where things happen (`switchboard_*_total` in
//! the session and fragment crates); the gauges here — connections, the
//! group-commit queue, fragment backlogs — are sampled every few seconds,
//! since ractor does not expose mailbox lengths.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use offline_queue::{FragmentDirectory, FragmentMsg};
use storage::Store;

use crate::{NodeError, Result};

/// How often gauges are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Serves `/metrics` on `listen` and starts sampling gauges. The recorder is
/// process-wide: a second node in one process keeps the first one's.
pub(crate) fn start(
    listen: &str,
    store: Store,
    fragments: FragmentDirectory,
    count: u16,
) -> Result<()> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|e| NodeError::Config(format!("metrics.listen = {listen:?}: {e}")))?;
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| NodeError::Startup(format!("metrics exporter on {addr}: {e}")))?;
    tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        loop {
            tick.tick().await;
            sample(&store, &fragments, count).await;
        }
    });
    Ok(())
}

async fn sample(store: &Store, fragments: &FragmentDirectory, count: u16) {
    metrics::gauge!("switchboard_connections").set(session::live_sessions() as f64);
    let stats = store.stats();
    metrics::gauge!("switchboard_storage_queue_depth")
        .set(stats.queued.load(Ordering::Relaxed) as f64);
    metrics::gauge!("switchboard_storage_commits")
        .set(stats.commits.load(Ordering::Relaxed) as f64);
    metrics::gauge!("switchboard_storage_changes")
        .set(stats.changes.load(Ordering::Relaxed) as f64);
    metrics::gauge!("switchboard_storage_busy_seconds")
        .set(stats.busy_micros.load(Ordering::Relaxed) as f64 / 1e6);
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
