//! The cluster port's accept loop.
//!
//! ractor_cluster's own listener does the TLS handshake inline, with no
//! deadline: one connection that never finishes its handshake stops every
//! later accept, and no peer can link while it is held. Here each
//! handshake runs in its own task under a deadline, unfinished handshakes
//! are limited per source address and in all, and only a finished TLS
//! stream (with its peer certificate) is handed to the node server, behind
//! the link guard (`link.rs`).
//!
//! [`Slots`] (the per-source accounting) is pure; [`run`]
//! is the shell.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ractor::ActorRef;
use ractor_cluster::NodeServerMessage;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::config::AcceptConfig;
use crate::link::{Identity, Link};
use log_limit::LogLimiter;

/// Why a connection was closed before its handshake began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its source has `max_handshakes_per_source` unfinished.
    PerSource,
    /// `max_handshakes` are unfinished.
    Total,
}

impl Refusal {
    fn outcome(self) -> &'static str {
        match self {
            Self::PerSource => "refused_per_source",
            Self::Total => "refused_total",
        }
    }
}

/// Unfinished handshakes, per source and in all.
#[derive(Debug)]
pub struct Slots {
    per_source: HashMap<IpAddr, u32>,
    total: u32,
    max_per_source: u32,
    max_total: u32,
}

/// What counts as one source (see [`proto::source_of`]).
pub use proto::source_of;

impl Slots {
    /// No handshake under way.
    pub fn new(config: &AcceptConfig) -> Self {
        Self {
            per_source: HashMap::new(),
            total: 0,
            max_per_source: config.max_handshakes_per_source,
            max_total: config.max_handshakes,
        }
    }

    /// A handshake from `source` begins, if the limits allow.
    pub fn take(&mut self, source: IpAddr) -> Result<(), Refusal> {
        if self.total >= self.max_total {
            return Err(Refusal::Total);
        }
        let held = self.per_source.get(&source).copied().unwrap_or(0);
        if held >= self.max_per_source {
            return Err(Refusal::PerSource);
        }
        self.per_source.insert(source, held + 1);
        self.total += 1;
        Ok(())
    }

    /// A handshake from `source` ended (finished, failed or timed out).
    pub fn give_back(&mut self, source: IpAddr) {
        if let Some(held) = self.per_source.get_mut(&source) {
            *held -= 1;
            if *held == 0 {
                self.per_source.remove(&source);
            }
            self.total -= 1;
        }
    }

    /// Unfinished handshakes in all.
    pub fn total(&self) -> u32 {
        self.total
    }
}

/// Refusals and failed handshakes, logged at most once per interval per
/// cause.
static LOGS: LogLimiter = LogLimiter::new();

/// A taken slot, given back when dropped.
struct Permit {
    slots: Arc<Mutex<Slots>>,
    source: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .give_back(self.source);
    }
}

fn count(outcome: &'static str) {
    metrics::counter!("switchboard_cluster_handshakes_total", "outcome" => outcome).increment(1);
}

/// Accepts links on `listener` until the task is aborted; `tls` is `None`
/// for plaintext links.
pub(crate) async fn run(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    config: AcceptConfig,
    node_server: ActorRef<NodeServerMessage>,
) {
    let slots = Arc::new(Mutex::new(Slots::new(&config)));
    let deadline = config.handshake_timeout();
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, mostly: back off instead of
                // spinning, and keep the listener.
                if let Some(suppressed) = LOGS.allow("accept_error") {
                    tracing::warn!(error = %e, suppressed, "cluster port: accept failed");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let source = source_of(addr.ip());
        let taken = slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(source);
        if let Err(refusal) = taken {
            count(refusal.outcome());
            if let Some(suppressed) = LOGS.allow(refusal.outcome()) {
                tracing::warn!(
                    %addr,
                    cause = refusal.outcome(),
                    suppressed,
                    "cluster port: too many unfinished handshakes; connection closed"
                );
            }
            drop(tcp);
            continue;
        }
        let permit = Permit {
            slots: slots.clone(),
            source,
        };
        tokio::spawn(handshake(
            tcp,
            addr,
            permit,
            tls.clone(),
            deadline,
            node_server.clone(),
        ));
    }
}

/// Finishes one connection's TLS handshake within `deadline` and hands the
/// link to the node server.
async fn handshake(
    tcp: TcpStream,
    addr: SocketAddr,
    permit: Permit,
    tls: Option<TlsAcceptor>,
    deadline: Duration,
    node_server: ActorRef<NodeServerMessage>,
) {
    let _ = tcp.set_nodelay(true);
    let local = tcp.local_addr().ok();
    let link: Box<dyn ractor_cluster::ClusterBidiStream> = match tls {
        None => Box::new(Link {
            stream: tcp,
            peer: addr,
            local,
            identity: Identity::Unverified,
        }),
        Some(acceptor) => match tokio::time::timeout(deadline, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => {
                let certificate = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(|cert| cert.clone().into_owned());
                let Some(certificate) = certificate else {
                    // The verifier requires one; never here.
                    count("failed");
                    return;
                };
                Box::new(Link {
                    stream,
                    peer: addr,
                    local,
                    identity: Identity::Certificate(certificate),
                })
            }
            Ok(Err(e)) => {
                count("failed");
                if let Some(suppressed) = LOGS.allow("failed") {
                    tracing::warn!(%addr, error = %e, suppressed, "cluster port: TLS handshake failed");
                }
                return;
            }
            Err(_) => {
                count("timed_out");
                if let Some(suppressed) = LOGS.allow("timed_out") {
                    tracing::warn!(
                        %addr,
                        ?deadline,
                        suppressed,
                        "cluster port: TLS handshake not finished in time; connection closed"
                    );
                }
                return;
            }
        },
    };
    // The handshake is over: the slot is free before ractor_cluster's own
    // authentication starts (which only a holder of a cluster certificate
    // reaches).
    drop(permit);
    count("accepted");
    if let Err(e) = node_server.cast(NodeServerMessage::ConnectionOpenedExternal {
        stream: link,
        is_server: true,
    }) {
        tracing::warn!(%addr, error = %e, "cluster port: node server gone; link dropped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn slots_are_limited_per_source_and_in_all() {
        let config = AcceptConfig {
            handshake_timeout_ms: 1,
            max_handshakes_per_source: 2,
            max_handshakes: 3,
        };
        let mut slots = Slots::new(&config);
        // (source, take (true) or give back (false), expected result)
        let steps: &[(&str, bool, Result<(), Refusal>)] = &[
            ("10.0.0.1", true, Ok(())),
            ("10.0.0.1", true, Ok(())),
            ("10.0.0.1", true, Err(Refusal::PerSource)),
            ("10.0.0.2", true, Ok(())),
            ("10.0.0.3", true, Err(Refusal::Total)),
            ("10.0.0.1", false, Ok(())),
            ("10.0.0.3", true, Ok(())),
            ("10.0.0.2", true, Err(Refusal::Total)),
            ("10.0.0.1", false, Ok(())),
            ("10.0.0.2", true, Ok(())),
            // Full in all: checked before the source's own limit.
            ("10.0.0.2", true, Err(Refusal::Total)),
        ];
        for (i, (source, take, expected)) in steps.iter().enumerate() {
            let got = if *take {
                slots.take(ip(source))
            } else {
                slots.give_back(ip(source));
                Ok(())
            };
            assert_eq!(got, *expected, "step {i}");
        }
        for source in ["10.0.0.2", "10.0.0.2", "10.0.0.3"] {
            slots.give_back(ip(source));
        }
        assert_eq!(slots.total(), 0);
        assert!(slots.per_source.is_empty(), "no source left behind");
        // Giving back what was never taken changes nothing.
        slots.give_back(ip("10.0.0.9"));
        assert_eq!(slots.total(), 0);
    }
}
