//! The session actor: one per client connection.
//!
//! It owns the connection's protocol phase and its bounded outbound queue.
//! Requests that wait on another service (a durable store, a code provider,
//! an extension) are answered from a small task holding the request's permit,
//! so one client can pipeline sends while the actor stays free for pushes.
//!
//! A panic while handling a message is caught here: the session detaches
//! from its fragment and presence, the connection is dropped (the client
//! resumes from its mailbox), the actor fails and its supervisor logs it.
//! No other session notices.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use auth::TokenBucket;
use futures::FutureExt;
use offline_queue::{Endpoint, FragmentError, Push};
use presence::PresencePush;
use proto::{CloseReason, ErrorCode, PhoneNumber, RequestId, Response, ServerFrame};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use router::FragmentId;
use supervision::SupervisorMsg;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::admission::Ticket;
use crate::config::SessionConfig;
use crate::connection::{Inbound, ReadEnd, ReadLimits, spawn_reader, undecodable_error};
use crate::extension::ExtensionPush;
use crate::handlers::{auth_message, messaging, on_frame};
use crate::responder::{Responder, update_frame};
use crate::services::Services;
use crate::state::{GuestStage, Phase, PhaseEvent};
use proto::clock::now_ms;

/// Low bits of session ids: a per-process random start, then a counter.
static SESSION_ID_LOW: std::sync::LazyLock<AtomicU64> =
    std::sync::LazyLock::new(|| AtomicU64::new(u64::from(rand::random::<u32>())));

/// A session id: the start time in ms above 20 bits that tell apart sessions
/// of the same millisecond. Fragments on any node compare them: a newer
/// session of a user wins over an older one re-attached late, and ids never
/// repeat across nodes or restarts.
fn new_session_id() -> u64 {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let low = SESSION_ID_LOW.fetch_add(1, Ordering::Relaxed) & 0xF_FFFF;
    (ms << 20) | low
}
static LIVE_SESSIONS: AtomicU64 = AtomicU64::new(0);

/// Session actors alive in this process now (for the connections gauge).
pub fn live_sessions() -> u64 {
    LIVE_SESSIONS.load(Ordering::Relaxed)
}

/// Counts a session from its start to its end, however it ends.
struct LiveSession;

impl LiveSession {
    fn new() -> Self {
        LIVE_SESSIONS.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("switchboard_sessions_opened_total").increment(1);
        LiveSession
    }
}

impl Drop for LiveSession {
    fn drop(&mut self) {
        LIVE_SESSIONS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A byte stream to a client (TLS over TCP, or any other transport).
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> ClientStream for T {}

/// What every session of a node shares.
#[derive(Clone)]
pub struct SessionContext {
    /// Limits and timeouts.
    pub config: SessionConfig,
    /// This node's name, sent in `Welcome`.
    pub node_name: String,
    /// Mailboxes, accounts, presence and extensions.
    pub services: Arc<dyn Services>,
    /// The node's connection counts, shared by all its listeners.
    pub admission: Arc<crate::admission::Admission>,
}

/// Start-up arguments of one session.
pub struct SessionArgs {
    /// Shared context.
    pub ctx: Arc<SessionContext>,
    /// The connected, handshaken stream.
    pub stream: Box<dyn ClientStream>,
    /// The client's address, for logs.
    pub peer: SocketAddr,
    /// The connection's slots (node, guest, per source), held until it ends.
    pub ticket: Option<Ticket>,
}

/// Messages to a session actor.
pub enum SessionMsg {
    /// A decoded frame from the client.
    Frame(Inbound),
    /// A frame whose request id could be read but not its request.
    Undecodable {
        /// The id to answer.
        request_id: RequestId,
        /// What failed.
        reason: String,
    },
    /// The reader stopped; the session ends.
    ReadEnded(ReadEnd),
    /// Entries from the user's mailbox fragment.
    Push(Push),
    /// Batched presence and typing updates.
    Presence(PresencePush),
    /// A push from an extension.
    Extension(ExtensionPush),
    /// This fragment restarted: attach to it again if it is the user's.
    Reattach(FragmentId),
    /// A guest's time for this stage is up: close it unless it got past.
    GuestDeadline(GuestStage),
    /// Close the connection (drain, shutdown).
    Close(CloseReason),
    /// Panic in the handler (tests of fault isolation only).
    #[cfg(feature = "fault-injection")]
    InjectPanic,
}

impl ractor::Message for SessionMsg {}

/// Tells the session when its hello and login deadlines pass (one task,
/// aborted at login).
fn spawn_guest_deadlines(
    session: ActorRef<SessionMsg>,
    hello: Duration,
    login: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::time::sleep(hello).await;
        if session
            .send_message(SessionMsg::GuestDeadline(GuestStage::Hello))
            .is_err()
        {
            return;
        }
        tokio::time::sleep(login.saturating_sub(hello)).await;
        let _ = session.send_message(SessionMsg::GuestDeadline(GuestStage::Login));
    })
}

macro_rules! derived_message {
    ($variant:ident, $ty:ty) => {
        impl From<$ty> for SessionMsg {
            fn from(m: $ty) -> Self {
                SessionMsg::$variant(m)
            }
        }
        impl TryFrom<SessionMsg> for $ty {
            type Error = ();
            fn try_from(m: SessionMsg) -> Result<Self, ()> {
                match m {
                    SessionMsg::$variant(m) => Ok(m),
                    _ => Err(()),
                }
            }
        }
    };
}

derived_message!(Push, Push);
derived_message!(Presence, PresencePush);
derived_message!(Extension, ExtensionPush);

/// The session actor.
#[derive(Debug, Default)]
pub struct SessionActor;

/// Its state.
pub struct SessionState {
    pub(crate) ctx: Arc<SessionContext>,
    pub(crate) session_id: u64,
    pub(crate) peer: SocketAddr,
    pub(crate) phase: Phase,
    pub(crate) responder: Responder,
    pub(crate) cleaned_up: bool,
    pub(crate) pacer: crate::pacing::Pacer,
    /// Paces acks and read receipts (each costs the user's fragment work).
    pub(crate) ack_pacer: crate::pacing::Pacer,
    /// Paces presence requests (a subscribe is a scan of up to
    /// `max_watched` users; a settings change is a durable write).
    pub(crate) presence_pacer: crate::pacing::Pacer,
    /// This connection's code requests (SMS pumping; see `auth::limits`).
    pub(crate) code_bucket: TokenBucket,
    /// This connection's verify attempts (guessing across numbers); also
    /// paces PIN changes (each hashes with a slow KDF).
    pub(crate) verify_bucket: TokenBucket,
    pub(crate) ticket: Option<Ticket>,
    /// The hello and login deadlines, until login.
    pub(crate) guest_deadlines: Option<tokio::task::JoinHandle<()>>,
    /// The generation of the token this session logged in with.
    pub(crate) token_generation: u64,
    _live: LiveSession,
}

fn panic_text(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

impl SessionState {
    pub(crate) fn user(&self) -> Option<&PhoneNumber> {
        self.phase.user()
    }

    /// Tells the fragment and presence that this session is gone. Idempotent.
    pub(crate) fn clean_up(&mut self) {
        if self.cleaned_up {
            return;
        }
        self.cleaned_up = true;
        let Some(user) = self.user().cloned() else {
            return;
        };
        let services = &self.ctx.services;
        services.detach(user.clone(), self.session_id);
        services.offline(user, self.session_id);
    }

    /// Makes this session the user's live one at the user's fragment.
    pub(crate) async fn attach(
        &self,
        myself: &ActorRef<SessionMsg>,
        user: &PhoneNumber,
    ) -> Result<(), FragmentError> {
        let endpoint = Endpoint {
            session_id: self.session_id,
            token_generation: Some(self.token_generation),
            target: myself.get_derived(),
        };
        self.ctx.services.attach(user.clone(), endpoint).await
    }

    /// Says goodbye with `reason` and stops after the queue is flushed.
    pub(crate) fn close(&mut self, myself: &ActorRef<SessionMsg>, reason: CloseReason) {
        if self.phase == Phase::Closing {
            return;
        }
        let retry_after_ms = match reason {
            CloseReason::ShuttingDown => 1000,
            _ => 0,
        };
        self.responder.send(ServerFrame::Closing {
            reason,
            retry_after_ms,
        });
        self.clean_up();
        self.phase = self.phase.next(PhaseEvent::Closed);
        if self.responder.out.close().is_err() {
            self.responder.cancel.cancel();
        }
        myself.stop(None);
    }

    /// Spawns `work` and answers request `id` with its outcome, holding the
    /// request's permit until then.
    pub(crate) fn answer_later<F>(&self, id: RequestId, permit: OwnedSemaphorePermit, work: F)
    where
        F: Future<Output = Result<Response, (ErrorCode, String)>> + Send + 'static,
    {
        let responder = self.responder.clone();
        let timeout = self.ctx.config.request_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(timeout, work).await {
                Ok(Ok(response)) => responder.respond(id, response),
                Ok(Err((code, message))) => responder.error(Some(id), code, message),
                Err(_) => responder.error(
                    Some(id),
                    ErrorCode::Unavailable {
                        retry_after_ms: 1000,
                    },
                    "the request timed out",
                ),
            };
        });
    }
}

impl SessionState {
    /// Answers request `id` with `code` and closes the connection: for a
    /// client over a limit of its own, or guessing the admin secret.
    pub(crate) fn refuse_and_close(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        id: RequestId,
        code: ErrorCode,
        message: impl Into<String>,
    ) {
        self.responder.error(Some(id), code, message);
        self.close(myself, CloseReason::ProtocolViolation);
    }

    /// Spawns an auth request and answers `id` with its outcome, holding
    /// the request's permit; a refusal by a limit of the client's own (its
    /// address or subnet) also closes the connection.
    pub(crate) fn answer_auth<F>(
        &self,
        myself: &ActorRef<SessionMsg>,
        id: RequestId,
        permit: OwnedSemaphorePermit,
        work: F,
    ) where
        F: Future<Output = Result<Response, auth::AuthError>> + Send + 'static,
    {
        let responder = self.responder.clone();
        let timeout = self.ctx.config.request_timeout;
        let myself = myself.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(timeout, work).await {
                Ok(Ok(response)) => {
                    responder.respond(id, response);
                }
                Ok(Err(e)) => {
                    responder.error(Some(id), e.error_code(), auth_message(&e));
                    if e.limit().is_some_and(|limit| limit.closes_connection()) {
                        // Queued behind the error frame: Closing follows it.
                        let _ =
                            myself.send_message(SessionMsg::Close(CloseReason::ProtocolViolation));
                    }
                }
                Err(_) => {
                    responder.error(
                        Some(id),
                        ErrorCode::Unavailable {
                            retry_after_ms: 1000,
                        },
                        "the request timed out",
                    );
                }
            }
        });
    }
}

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SessionArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let config = &args.ctx.config;
        let (reader, writer) = tokio::io::split(args.stream);
        let cancel = CancellationToken::new();
        let out = crate::outbound::outbound(
            writer,
            config.outbound_capacity,
            config.write_timeout,
            cancel.clone(),
        );
        let guest_deadlines =
            spawn_guest_deadlines(myself.clone(), config.hello_timeout, config.login_timeout);
        let limits = ReadLimits {
            max_frame_bytes: config.max_frame_bytes,
            idle_timeout: config.idle_timeout,
            frame_timeout: config.frame_timeout,
        };
        spawn_reader(
            reader,
            myself,
            limits,
            Arc::new(Semaphore::new(config.max_in_flight_requests)),
            cancel.clone(),
        );
        Ok(SessionState {
            session_id: new_session_id(),
            peer: args.peer,
            phase: Phase::AwaitHello,
            responder: Responder {
                out,
                cancel,
                max_frame_bytes: config.max_frame_bytes,
            },
            cleaned_up: false,
            pacer: crate::pacing::Pacer::new(config.send_rate, config.send_burst, now_ms()),
            ack_pacer: crate::pacing::Pacer::new(config.ack_rate, config.ack_burst, now_ms()),
            presence_pacer: crate::pacing::Pacer::new(
                config.presence_rate,
                config.presence_burst,
                now_ms(),
            ),
            code_bucket: args.ctx.services.code_bucket(now_ms()),
            verify_bucket: args.ctx.services.verify_bucket(now_ms()),
            token_generation: 0,
            ctx: args.ctx,
            ticket: args.ticket,
            guest_deadlines: Some(guest_deadlines),
            _live: LiveSession::new(),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.clean_up();
        state.responder.out.abandon();
        if let Some(deadlines) = state.guest_deadlines.take() {
            deadlines.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Boxed: an idle session's task then holds a pointer, not the largest
        // request handler's state machine (measured: a few KiB per connection).
        let handled = AssertUnwindSafe(Box::pin(dispatch(&myself, message, state)))
            .catch_unwind()
            .await;
        if let Err(panic) = handled {
            let reason = panic_text(panic);
            tracing::error!(session = state.session_id, peer = %state.peer, %reason,
                "session panicked; dropping its connection");
            state.clean_up();
            state.responder.cancel.cancel();
            state.responder.out.abandon();
            return Err(format!("session panicked: {reason}").into());
        }
        Ok(())
    }
}

async fn dispatch(myself: &ActorRef<SessionMsg>, message: SessionMsg, state: &mut SessionState) {
    match message {
        SessionMsg::Frame(Inbound { frame, permit }) => {
            on_frame(myself, state, frame, permit).await;
        }
        SessionMsg::Undecodable { request_id, reason } => {
            state.responder.send(undecodable_error(request_id, &reason));
        }
        SessionMsg::ReadEnded(end) => {
            tracing::debug!(session = state.session_id, peer = %state.peer, ?end, "reader ended");
            let (code, message) = match &end {
                ReadEnd::TooLarge { len, max } => (
                    Some(ErrorCode::FrameTooLarge),
                    format!("frame of {len} bytes exceeds the limit of {max}"),
                ),
                ReadEnd::Malformed(reason) => {
                    (Some(ErrorCode::BadFrame), format!("not a frame: {reason}"))
                }
                ReadEnd::SlowFrame => (
                    Some(ErrorCode::BadFrame),
                    format!(
                        "a frame was not finished within {} s",
                        state.ctx.config.frame_timeout.as_secs()
                    ),
                ),
                _ => (None, String::new()),
            };
            if let Some(code) = code {
                metrics::counter!("switchboard_protocol_errors_total").increment(1);
                state.responder.error(None, code, message);
                state.close(myself, CloseReason::ProtocolViolation);
            } else if end == ReadEnd::Idle {
                state.close(myself, CloseReason::IdleTimeout);
            } else {
                state.clean_up();
                state.phase = state.phase.next(PhaseEvent::Closed);
                let _ = state.responder.out.close();
                myself.stop(None);
            }
        }
        SessionMsg::Push(Push::Entries(entries)) => messaging::push_entries(state, entries).await,
        SessionMsg::Push(Push::Replaced) => state.close(myself, CloseReason::Replaced),
        SessionMsg::Push(Push::Revoked) => {
            // The user's fragment saw the account's generation rise past
            // this session's token (a Verify or Logout on any node).
            tracing::debug!(
                session = state.session_id,
                "token revoked by the fragment; closing"
            );
            metrics::counter!("switchboard_sessions_revoked_total").increment(1);
            state.close(myself, CloseReason::TokenRevoked);
        }
        SessionMsg::Presence(PresencePush(updates)) => {
            for update in updates {
                state.responder.send_droppable(update_frame(update));
            }
        }
        SessionMsg::Extension(ExtensionPush { namespace, body }) => {
            state
                .responder
                .send(ServerFrame::Extension { namespace, body });
        }
        SessionMsg::Reattach(fragment) => {
            let Some(user) = state.user().cloned() else {
                return;
            };
            if state.ctx.services.fragment_of(&user) == fragment
                && let Err(e) = state.attach(myself, &user).await
            {
                tracing::warn!(session = state.session_id, error = %e,
                    "re-attach after a fragment restart failed; closing");
                state.close(myself, CloseReason::ShuttingDown);
            }
        }
        SessionMsg::GuestDeadline(stage) => {
            if state.phase.overdue(stage) {
                let (label, limit) = match stage {
                    GuestStage::Hello => ("hello", state.ctx.config.hello_timeout),
                    GuestStage::Login => ("login", state.ctx.config.login_timeout),
                };
                metrics::counter!("switchboard_guest_deadlines_total", "stage" => label)
                    .increment(1);
                state.responder.error(
                    None,
                    ErrorCode::NotAuthenticated,
                    format!("no {label} within {} s", limit.as_secs()),
                );
                state.close(myself, CloseReason::IdleTimeout);
            }
        }
        SessionMsg::Close(reason) => state.close(myself, reason),
        #[cfg(feature = "fault-injection")]
        SessionMsg::InjectPanic => panic!("injected fault"),
    }
}

/// Sends a message built by `make` to every session under `sessions` (the
/// session supervisor), e.g. to re-attach after a fragment restart or to drain.
pub async fn broadcast_to_sessions<F>(sessions: &ActorRef<SupervisorMsg>, make: F) -> usize
where
    F: Fn() -> SessionMsg,
{
    let children = match ractor::call_t!(sessions, SupervisorMsg::Children, 10_000) {
        Ok(children) => children,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list sessions");
            return 0;
        }
    };
    let mut sent = 0;
    for (_, cell) in children {
        if cell.send_message::<SessionMsg>(make()).is_ok() {
            sent += 1;
        }
    }
    sent
}

/// How long a closing session may take to flush before it is dropped.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);
