//! The TLS accept loop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorRef};
use rustls::ServerConfig;
use supervision::{ChildSpec, Restart, SupervisorMsg};
use tokio::net::TcpListener;

use crate::actor::{ClientStream, SessionActor, SessionArgs, SessionContext};

/// Why the listener stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenerError {
    /// Accepting failed persistently.
    #[error("accept failed: {0}")]
    Accept(std::io::Error),
}

/// How clients speak on a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Frames directly over TLS over TCP (apps).
    Tls,
    /// Frames in binary WebSocket messages over TLS (browsers).
    WebSocket,
}

/// Accepts TLS connections on `listener` until `shutdown` resolves, starting
/// one session actor per connection under `sessions` (a supervisor whose
/// session children are temporary). A connection that the node's
/// [`crate::admission::Admission`] refuses (node, guest or per-source caps,
/// shared with the node's other listeners) is closed at once, before TLS.
pub async fn serve(
    listener: TcpListener,
    transport: Transport,
    tls: Arc<ServerConfig>,
    ctx: SessionContext,
    sessions: ActorRef<SupervisorMsg>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ListenerError> {
    // Shared by every session: one copy, not one per connection.
    let ctx = Arc::new(ctx);
    let mut backoff = Duration::from_millis(5);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => {
                backoff = Duration::from_millis(5);
                pair
            }
            Err(e) => {
                // Out of file descriptors and similar: back off, keep serving.
                tracing::warn!(error = %e, ?backoff, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let ticket = match ctx.admission.admit(peer.ip()) {
            Ok(ticket) => ticket,
            Err(refusal) => {
                metrics::counter!("switchboard_connections_refused_total", "cause" => refusal.cause())
                    .increment(1);
                if let Some(suppressed) = crate::LOGS.allow(refusal.cause()) {
                    tracing::warn!(%peer, cause = refusal.cause(), suppressed,
                        "connection refused (logged at most once per interval per cause)");
                }
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let tls = Arc::clone(&tls);
        let ctx = Arc::clone(&ctx);
        let sessions = sessions.clone();
        tokio::spawn(async move {
            let handshake =
                tokio::time::timeout(ctx.config.handshake_timeout, crate::tls::accept(tcp, tls));
            let tls = match handshake.await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let stream: Box<dyn ClientStream> = match transport {
                Transport::Tls => Box::new(tls),
                Transport::WebSocket => {
                    // Room for a full write batch of frames in one message.
                    let max = ctx.config.max_frame_bytes as usize * 2 + 1024;
                    let upgrade = crate::websocket::accept(tls, max);
                    match tokio::time::timeout(ctx.config.handshake_timeout, upgrade).await {
                        Ok(Ok(ws)) => ws,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "WebSocket handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "WebSocket handshake timed out");
                            return;
                        }
                    }
                }
            };
            // Boxed: the supervisor keeps this spec as long as the session
            // lives, and an emptied box is smaller than emptied args.
            let args = Arc::new(Mutex::new(Some(Box::new(SessionArgs {
                ctx,
                stream,
                peer,
                ticket: Some(ticket),
            }))));
            // A temporary child is started exactly once; the args move into it.
            let spec = ChildSpec::new(format!("session {peer}"), Restart::Temporary, move |sup| {
                let args = args.lock().ok().and_then(|mut a| a.take());
                async move {
                    let Some(args) = args else {
                        return Err(ractor::SpawnErr::ActorAlreadyStarted);
                    };
                    let (actor, _) = Actor::spawn_linked(None, SessionActor, *args, sup).await?;
                    Ok(actor.get_cell())
                }
            });
            match ractor::call_t!(sessions, SupervisorMsg::StartChild, 10_000, spec) {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(%peer, error = %e, "session did not start"),
                Err(e) => tracing::warn!(%peer, error = %e, "session supervisor unavailable"),
            }
        });
    }
}
