//! Queue lengths: how many messages wait in each long-lived actor's queue,
//! and how they spread over the client sessions.
//!
//! A queue that grows is the first sign of overload (an actor that cannot
//! keep up, a fragment stuck on its partner), long before latency or memory
//! show it, which is why alerts are built on these. Sampled: each read is
//! one uncontended lock of the actor's queue (ractor change 5 in
//! `vendor/ractor/PATCH.md`); the sessions are read by their supervisor in
//! one message, without cloning a child.

use ractor::ActorRef;
use serde::{Deserialize, Serialize};
use supervision::SupervisorMsg;

/// One sample of every queue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSample {
    /// Every registered actor (the services, the fragments, the
    /// supervisors and the extensions) by name, with its queue length,
    /// sorted by name.
    pub actors: Vec<(String, usize)>,
    /// The client sessions' queues.
    pub sessions: SessionQueues,
}

/// How the sessions' queue lengths spread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionQueues {
    /// Sessions sampled.
    pub sessions: usize,
    /// The longest queue.
    pub max: usize,
    /// The 99th percentile (nearest rank).
    pub p99: usize,
    /// Messages waiting in all of them.
    pub total: usize,
}

impl SessionQueues {
    /// Summarizes a sample of queue lengths.
    pub fn of(mut lengths: Vec<usize>) -> Self {
        if lengths.is_empty() {
            return Self::default();
        }
        lengths.sort_unstable();
        let rank = (lengths.len() * 99).div_ceil(100).max(1);
        Self {
            sessions: lengths.len(),
            max: lengths[lengths.len() - 1],
            p99: lengths[rank - 1],
            total: lengths.iter().sum(),
        }
    }
}

/// Reads every queue now. `sessions` is the registered name of the
/// sessions' supervisor.
pub async fn sample(sessions: &str) -> QueueSample {
    let mut actors: Vec<(String, usize)> = ractor::registry::registered()
        .into_iter()
        .filter_map(|name| {
            let cell = ractor::registry::where_is(name.clone())?;
            Some((name.to_string(), cell.queued_messages()))
        })
        .collect();
    actors.sort_unstable();
    let lengths = match ractor::registry::where_is(sessions) {
        Some(cell) => {
            let supervisor: ActorRef<SupervisorMsg> = cell.into();
            ractor::call_t!(supervisor, SupervisorMsg::QueueLengths, 2_000).unwrap_or_default()
        }
        None => Vec::new(),
    };
    QueueSample {
        actors,
        sessions: SessionQueues::of(lengths),
    }
}

/// Sets the queue-length gauges from a sample.
pub(crate) fn record(sample: &QueueSample) {
    let mut fragments_max = 0;
    for (name, length) in &sample.actors {
        metrics::gauge!("switchboard_actor_queue_length", "actor" => name.clone())
            .set(*length as f64);
        if name.starts_with("fragment-") {
            fragments_max = fragments_max.max(*length);
        }
    }
    metrics::gauge!("switchboard_fragment_queue_length_max").set(fragments_max as f64);
    let s = sample.sessions;
    metrics::gauge!("switchboard_session_queue_length", "quantile" => "max").set(s.max as f64);
    metrics::gauge!("switchboard_session_queue_length", "quantile" => "0.99").set(s.p99 as f64);
    metrics::gauge!("switchboard_session_queued_messages").set(s.total as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_queues_take_the_nearest_rank() {
        assert_eq!(SessionQueues::of(vec![]), SessionQueues::default());
        let one = SessionQueues::of(vec![7]);
        assert_eq!((one.sessions, one.max, one.p99, one.total), (1, 7, 7, 7));
        // 200 sessions: the 198th smallest is the p99.
        let mut lengths: Vec<usize> = (0..200).collect();
        lengths.reverse();
        let many = SessionQueues::of(lengths);
        assert_eq!((many.max, many.p99, many.total), (199, 197, 199 * 100));
    }
}
