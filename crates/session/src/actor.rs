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

use auth::{AuthHandle, TokenBucket};
use futures::FutureExt;
use offline_queue::fragment::ReceiptRequest;
use offline_queue::{
    Endpoint, Entry, EntryBody, FragmentDirectory, FragmentError, FragmentMsg, NewMessage, Push,
    Stored,
};
use presence::core::Update;
use presence::{PresenceMsg, PresencePush};
use proto::{
    ClientFrame, CloseReason, ErrorCode, MIN_PROTOCOL_VERSION, MessageId, PROTOCOL_VERSION,
    PhoneNumber, ReceiptKind, Request, RequestId, Response, ServerFrame,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use router::FragmentId;
use subtle::ConstantTimeEq;
use supervision::SupervisorMsg;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::admission::Ticket;
use crate::config::SessionConfig;
use crate::connection::{Inbound, ReadEnd, ReadLimits, spawn_reader, undecodable_error};
use crate::extension::{ExtensionMsg, ExtensionPush, ExtensionRequest, extension_actor_name};
use crate::outbound::{OutboundSender, PushError};
use crate::state::{Admission, Phase, admit};

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
    /// Registration and login.
    pub auth: AuthHandle,
    /// Finds mailbox fragments.
    pub fragments: FragmentDirectory,
    /// Registered name of the presence actor.
    pub presence: String,
    /// Presence settings (who may see whom) in the node's store.
    pub presence_policies: presence::PolicyStore,
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

/// What a new connection must do in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestStage {
    /// Say hello.
    Hello,
    /// Log in.
    Login,
}

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

/// Sends frames to the client's bounded queue. A client whose queue is full
/// is disconnected (cancelling the connection) rather than buffered without
/// bound; it resumes from its mailbox.
#[derive(Clone)]
struct Responder {
    out: OutboundSender,
    cancel: CancellationToken,
    max_frame_bytes: u32,
}

impl Responder {
    /// Queues a frame that must not be lost; false if the client is gone.
    fn send(&self, frame: ServerFrame) -> bool {
        match self.out.push_frame(&frame, self.max_frame_bytes) {
            Ok(()) => true,
            Err(PushError::Full) => {
                tracing::info!("slow consumer: outbound queue full, disconnecting");
                metrics::counter!("switchboard_slow_consumer_disconnects_total").increment(1);
                self.cancel.cancel();
                false
            }
            Err(PushError::Closed) => false,
            Err(PushError::Unencodable(reason)) => {
                tracing::error!(%reason, "dropping a frame that cannot be encoded");
                match frame {
                    // An answer too large for a frame: the request gets an
                    // error instead of waiting for its timeout.
                    ServerFrame::Response { id, .. } => self.send(ServerFrame::Error {
                        id: Some(id),
                        code: ErrorCode::Internal,
                        message: "the answer exceeds the frame size limit".into(),
                    }),
                    _ => true,
                }
            }
        }
    }

    /// Queues a mailbox entry. One that cannot be encoded (a receipt stored
    /// before receipts were split, a message above a lowered frame limit)
    /// is answered `Unencodable`, so that the caller drops it for good
    /// instead of leaving it in the delivery window, where it would hold a
    /// slot forever.
    fn push_entry(&self, frame: ServerFrame) -> EntryPush {
        match self.out.push_frame(&frame, self.max_frame_bytes) {
            Ok(()) => EntryPush::Queued,
            Err(PushError::Unencodable(reason)) => EntryPush::Unencodable(reason),
            Err(PushError::Closed) => EntryPush::Gone,
            Err(PushError::Full) => {
                self.send(frame);
                EntryPush::Gone
            }
        }
    }

    /// Queues a frame that may be shed under pressure (presence, typing).
    fn send_droppable(&self, frame: ServerFrame) {
        // A full queue sheds these first (before spending work on encoding).
        if let Err(PushError::Full) = self.out.push_frame(&frame, self.max_frame_bytes) {
            metrics::counter!("switchboard_frames_shed_total").increment(1);
        }
    }

    fn respond(&self, id: RequestId, response: Response) -> bool {
        self.send(ServerFrame::Response { id, response })
    }

    fn error(&self, id: Option<RequestId>, code: ErrorCode, message: impl Into<String>) -> bool {
        self.send(ServerFrame::Error {
            id,
            code,
            message: message.into(),
        })
    }
}

/// What became of a mailbox entry handed to [`Responder::push_entry`].
enum EntryPush {
    Queued,
    /// The client is gone (or was just dropped as a slow consumer).
    Gone,
    /// It cannot be encoded within the frame limit.
    Unencodable(String),
}

/// The session actor.
#[derive(Debug, Default)]
pub struct SessionActor;

/// Its state.
pub struct SessionState {
    ctx: Arc<SessionContext>,
    session_id: u64,
    peer: SocketAddr,
    phase: Phase,
    responder: Responder,
    cleaned_up: bool,
    pacer: crate::pacing::Pacer,
    /// Paces acks and read receipts (each costs the user's fragment work).
    ack_pacer: crate::pacing::Pacer,
    /// Paces presence requests (a subscribe is a scan of up to
    /// `max_watched` users; a settings change is a durable write).
    presence_pacer: crate::pacing::Pacer,
    /// This connection's code requests (SMS pumping; see `auth::limits`).
    code_bucket: TokenBucket,
    /// This connection's verify attempts (guessing across numbers); also
    /// paces PIN changes (each hashes with a slow KDF).
    verify_bucket: TokenBucket,
    ticket: Option<Ticket>,
    /// The hello and login deadlines, until login.
    guest_deadlines: Option<tokio::task::JoinHandle<()>>,
    /// The generation of the token this session logged in with.
    token_generation: u64,
    _live: LiveSession,
}

use proto::clock::now_ms;

fn entry_frame(entry: Entry) -> ServerFrame {
    match entry.body {
        EntryBody::Message {
            from,
            client_msg_id,
            server_ts,
            payload,
        } => ServerFrame::Deliver {
            msg_id: entry.id,
            from,
            client_msg_id,
            server_ts,
            payload,
        },
        EntryBody::Receipt {
            kind,
            by,
            msg_ids,
            ts,
        } => ServerFrame::Receipt {
            id: entry.id,
            kind,
            by,
            msg_ids,
            ts,
        },
    }
}

fn update_frame(update: Update) -> ServerFrame {
    match update {
        Update::Presence { user, status } => ServerFrame::Presence { user, status },
        Update::Typing { from, active } => ServerFrame::Typing { from, active },
    }
}

fn panic_text(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

impl SessionState {
    fn presence(&self) -> Option<ActorRef<PresenceMsg>> {
        ractor::registry::where_is(self.ctx.presence.clone()).map(ActorRef::from)
    }

    fn user(&self) -> Option<&PhoneNumber> {
        match &self.phase {
            Phase::LoggedIn(user) => Some(user),
            _ => None,
        }
    }

    /// Tells the fragment and presence that this session is gone. Idempotent.
    fn clean_up(&mut self) {
        if self.cleaned_up {
            return;
        }
        self.cleaned_up = true;
        let Some(user) = self.user().cloned() else {
            return;
        };
        if let Ok(fragment) = self.ctx.fragments.for_user(&user) {
            let _ = fragment.send_message(FragmentMsg::Detach {
                user: user.clone(),
                session_id: self.session_id,
            });
        }
        if let Some(presence) = self.presence() {
            let _ = presence.send_message(PresenceMsg::Offline {
                user,
                session_id: self.session_id,
            });
        }
    }

    /// Says goodbye with `reason` and stops after the queue is flushed.
    fn close(&mut self, myself: &ActorRef<SessionMsg>, reason: CloseReason) {
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
        self.phase = Phase::Closing;
        if self.responder.out.close().is_err() {
            self.responder.cancel.cancel();
        }
        myself.stop(None);
    }

    /// Spawns `work` and answers request `id` with its outcome, holding the
    /// request's permit until then.
    fn answer_later<F>(&self, id: RequestId, permit: OwnedSemaphorePermit, work: F)
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
    fn refuse_and_close(
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
    fn answer_auth<F>(
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

async fn await_fragment<T>(rx: FragmentAnswer<T>) -> Result<T, (ErrorCode, String)> {
    match rx.await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(unavailable(&e)),
        Err(_) => Err((
            ErrorCode::Unavailable {
                retry_after_ms: 1000,
            },
            "the mailbox restarted; retry".to_owned(),
        )),
    }
}

/// The text a client gets for an auth error; details of internal failures
/// go to the log only (at most one line per 10 s).
fn auth_message(e: &auth::AuthError) -> String {
    if e.is_internal()
        && let Some(suppressed) = crate::LOGS.allow("internal-auth-error")
    {
        tracing::warn!(error = %e, suppressed, "auth request failed inside the node");
    }
    e.client_message()
}

/// How long a request waits for a restarting fragment before it is refused.
/// Waiting in the session's handler holds back this client's later requests
/// too, so a send that meets a restarting fragment is not overtaken by the
/// next one (which a refusal and a client-side retry would allow).
const FRAGMENT_RESTART_WAIT: Duration = Duration::from_secs(2);

type FragmentAnswer<T> = ractor::concurrency::OneshotReceiver<Result<T, FragmentError>>;

fn fragment_reply<T>() -> (RpcReplyPort<Result<T, FragmentError>>, FragmentAnswer<T>) {
    let (tx, rx) = ractor::concurrency::oneshot();
    (tx.into(), rx)
}

/// The code and text a client gets for a fragment error; a storage
/// failure's details go to the log only (at most one line per 10 s).
fn unavailable(e: &FragmentError) -> (ErrorCode, String) {
    if matches!(e, FragmentError::Storage(_))
        && let Some(suppressed) = crate::LOGS.allow("internal-storage-error")
    {
        tracing::warn!(error = %e, suppressed, "a mailbox request failed in storage");
    }
    (e.error_code(), e.client_message())
}

/// The fragment actor of `user`'s mailbox, waiting out a restart; if there
/// is none, request `id` is answered with the error.
async fn fragment_of(
    state: &mut SessionState,
    id: RequestId,
    user: &PhoneNumber,
) -> Option<ActorRef<FragmentMsg>> {
    match state
        .ctx
        .fragments
        .for_user_when_ready(user, FRAGMENT_RESTART_WAIT)
        .await
    {
        Ok(fragment) => Some(fragment),
        Err(e) => {
            let (code, message) = unavailable(&e);
            state.responder.error(Some(id), code, message);
            None
        }
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
            code_bucket: args.ctx.auth.connection_code_bucket(now_ms()),
            verify_bucket: args.ctx.auth.connection_verify_bucket(now_ms()),
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
                state.phase = Phase::Closing;
                let _ = state.responder.out.close();
                myself.stop(None);
            }
        }
        SessionMsg::Push(Push::Entries(entries)) => push_entries(state, entries).await,
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
            if state.ctx.fragments.placement().fragment_of(&user) == fragment
                && let Err(e) = attach(myself, state, &user).await
            {
                tracing::warn!(session = state.session_id, error = %e,
                    "re-attach after a fragment restart failed; closing");
                state.close(myself, CloseReason::ShuttingDown);
            }
        }
        SessionMsg::GuestDeadline(stage) => {
            let late = match stage {
                GuestStage::Hello => state.phase == Phase::AwaitHello,
                GuestStage::Login => matches!(state.phase, Phase::AwaitHello | Phase::Guest),
            };
            if late {
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

async fn on_frame(
    myself: &ActorRef<SessionMsg>,
    state: &mut SessionState,
    frame: ClientFrame,
    permit: OwnedSemaphorePermit,
) {
    match admit(
        &state.phase,
        &frame,
        MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION,
    ) {
        Admission::Ignore => {}
        Admission::Welcome { version } => {
            state.phase = Phase::Guest;
            state.responder.send(ServerFrame::Welcome {
                version,
                node: state.ctx.node_name.clone(),
                max_frame_bytes: state.ctx.config.max_frame_bytes,
                idle_timeout_secs: state.ctx.config.idle_timeout.as_secs() as u32,
            });
        }
        Admission::Refuse { code, close } => {
            let id = match &frame {
                ClientFrame::Request { id, .. } => Some(*id),
                ClientFrame::Hello { .. } | ClientFrame::Ack { .. } => None,
            };
            let message = match code {
                ErrorCode::NotAuthenticated => "log in first (only hello, auth and ping before)",
                ErrorCode::UnsupportedVersion => "unsupported protocol version",
                ErrorCode::AlreadyLoggedIn => "already logged in",
                _ => "not allowed now",
            };
            state.responder.error(id, code, message);
            if close {
                state.close(myself, CloseReason::ProtocolViolation);
            }
        }
        Admission::Serve => match frame {
            ClientFrame::Request { id, request } => {
                serve(myself, state, id, request, permit).await;
            }
            ClientFrame::Ack { ids } => acknowledge(myself, state, ids).await,
            ClientFrame::Hello { .. } => {}
        },
    }
}

/// Queues pushed mailbox entries for the client. An entry that cannot be
/// encoded is dropped from the mailbox as if acknowledged (logged and
/// counted), so it neither holds a delivery-window slot nor comes back.
async fn push_entries(state: &mut SessionState, entries: Vec<Entry>) {
    let mut undeliverable = Vec::new();
    for entry in entries {
        let id = entry.id;
        match state.responder.push_entry(entry_frame(entry)) {
            EntryPush::Queued => {}
            EntryPush::Gone => break,
            EntryPush::Unencodable(reason) => {
                metrics::counter!("switchboard_entries_undeliverable_total").increment(1);
                if let Some(suppressed) = crate::LOGS.allow("undeliverable-entry") {
                    tracing::warn!(session = state.session_id, id, %reason, suppressed,
                        "dropping a mailbox entry that cannot be encoded within the frame limit");
                }
                undeliverable.push(id);
            }
        }
    }
    if !undeliverable.is_empty() {
        forward_ack(state, undeliverable).await;
    }
}

/// Why an ack or read list is refused, if it is.
fn id_list_error(ids: &[MessageId]) -> Option<String> {
    if ids.is_empty() {
        Some("no ids".to_owned())
    } else if ids.len() > proto::MAX_IDS_PER_ACK {
        Some(format!(
            "{} ids; at most {} in one frame",
            ids.len(),
            proto::MAX_IDS_PER_ACK
        ))
    } else {
        None
    }
}

/// Refuses request `id` if its id list is empty or too long; otherwise
/// waits out the ack pacer. Whether the request goes on.
async fn id_list_admitted(state: &mut SessionState, id: RequestId, ids: &[MessageId]) -> bool {
    if let Some(reason) = id_list_error(ids) {
        state
            .responder
            .error(Some(id), ErrorCode::InvalidRequest, reason);
        return false;
    }
    pace_acks(state).await;
    true
}

/// Waits out the ack pacer: a client acking or reading faster than its
/// rate is read more slowly (the frame's permit is held meanwhile).
async fn pace_acks(state: &mut SessionState) {
    let wait = state.ack_pacer.take(now_ms());
    if !wait.is_zero() {
        metrics::counter!("switchboard_acks_paced_total").increment(1);
        tokio::time::sleep(wait).await;
    }
}

/// An unanswered ack (protocol 2). A list too long for any device's
/// window breaks the protocol: error frame and close.
async fn acknowledge(myself: &ActorRef<SessionMsg>, state: &mut SessionState, ids: Vec<MessageId>) {
    if state.user().is_none() {
        return;
    }
    if ids.len() > proto::MAX_IDS_PER_ACK {
        metrics::counter!("switchboard_protocol_errors_total").increment(1);
        state.responder.error(
            None,
            ErrorCode::InvalidRequest,
            id_list_error(&ids).unwrap_or_default(),
        );
        state.close(myself, CloseReason::ProtocolViolation);
        return;
    }
    if ids.is_empty() {
        return;
    }
    pace_acks(state).await;
    forward_ack(state, ids).await;
}

/// Hands acked ids to the user's fragment. If the fragment is not
/// reachable now the ack is dropped; the entries stay in the mailbox, are
/// pushed again and the client acks them again.
async fn forward_ack(state: &mut SessionState, ids: Vec<MessageId>) {
    let Some(user) = state.user().cloned() else {
        return;
    };
    match state
        .ctx
        .fragments
        .for_user_when_ready(&user, FRAGMENT_RESTART_WAIT)
        .await
    {
        Ok(fragment) => {
            let _ = fragment.send_message(FragmentMsg::Ack { user, ids });
        }
        Err(e) => {
            tracing::debug!(session = state.session_id, %user, error = %e,
                "ack dropped: the fragment is not reachable; its entries will be pushed again");
        }
    }
}

async fn attach(
    myself: &ActorRef<SessionMsg>,
    state: &SessionState,
    user: &PhoneNumber,
) -> Result<(), FragmentError> {
    let fragment = state.ctx.fragments.for_user(user)?;
    let endpoint = Endpoint {
        session_id: state.session_id,
        token_generation: Some(state.token_generation),
        target: myself.get_derived(),
    };
    let (reply, rx) = fragment_reply();
    fragment
        .send_message(FragmentMsg::Attach {
            user: user.clone(),
            endpoint,
            reply,
        })
        .map_err(|_| {
            FragmentError::Unavailable(state.ctx.fragments.placement().fragment_of(user))
        })?;
    match tokio::time::timeout(state.ctx.config.request_timeout, rx).await {
        Ok(Ok(result)) => result,
        _ => Err(FragmentError::Unavailable(
            state.ctx.fragments.placement().fragment_of(user),
        )),
    }
}

async fn serve(
    myself: &ActorRef<SessionMsg>,
    state: &mut SessionState,
    id: RequestId,
    request: Request,
    permit: OwnedSemaphorePermit,
) {
    match request {
        Request::Ping => {
            state.responder.respond(id, Response::Pong);
        }
        Request::RequestCode { phone } => {
            if let Err(retry_after_ms) = state.code_bucket.take(now_ms()) {
                over_connection_limit(myself, state, id, "codes", retry_after_ms);
                return;
            }
            let auth = state.ctx.auth.clone();
            let source = Some(state.peer.ip());
            state.answer_auth(myself, id, permit, async move {
                auth.request_code_from(phone, source)
                    .await
                    .map(|sent| Response::CodeSent {
                        expires_in_secs: sent.expires_in_secs,
                    })
            });
        }
        Request::Verify { phone, code } => verify(myself, state, id, permit, phone, code, None),
        Request::VerifyWithPin { phone, code, pin } => {
            verify(myself, state, id, permit, phone, code, Some(pin));
        }
        Request::SetRegistrationLock { pin } => {
            let Some(user) = state.user().cloned() else {
                return;
            };
            // Each PIN is hashed with a slow KDF: paced like verify attempts.
            if let Err(retry_after_ms) = state.verify_bucket.take(now_ms()) {
                over_connection_limit(myself, state, id, "verifies", retry_after_ms);
                return;
            }
            let auth = state.ctx.auth.clone();
            state.answer_auth(myself, id, permit, async move {
                auth.set_registration_lock(&user, pin)
                    .await
                    .map(|()| Response::Ok)
            });
        }
        Request::Login { token } => match state.ctx.auth.authenticate(&token).await {
            Ok(auth::Authenticated {
                phone: user,
                generation,
            }) => {
                state.phase = Phase::LoggedIn(user.clone());
                state.token_generation = generation;
                state.cleaned_up = false;
                if let Some(presence) = state.presence() {
                    // Unreadable settings show the user to no one (the
                    // default with no contacts) rather than to everyone.
                    // A read transaction, which may touch the disk: on the
                    // blocking pool, like the token check.
                    let (policies, whose) = (state.ctx.presence_policies.clone(), user.clone());
                    let loaded = tokio::task::spawn_blocking(move || policies.load(&whose)).await;
                    let policy = match loaded {
                        Ok(Ok(policy)) => policy,
                        Ok(Err(e)) => {
                            tracing::warn!(%user, error = %e,
                                "presence settings unreadable; hidden until set again");
                            presence::Policy::default()
                        }
                        Err(e) => {
                            tracing::warn!(%user, error = %e,
                                "presence settings not read; hidden until set again");
                            presence::Policy::default()
                        }
                    };
                    let _ = presence.send_message(PresenceMsg::Online {
                        user: user.clone(),
                        session_id: state.session_id,
                        target: myself.get_derived(),
                        policy,
                    });
                }
                // The fragment's first pushes queue behind this handler, so
                // the client sees LoggedIn before its backlog.
                match attach(myself, state, &user).await {
                    Ok(()) => {
                        tracing::debug!(session = state.session_id, %user, "logged in");
                        if let Some(ticket) = state.ticket.as_mut() {
                            ticket.logged_in();
                        }
                        if let Some(deadlines) = state.guest_deadlines.take() {
                            deadlines.abort();
                        }
                        state.responder.respond(id, Response::LoggedIn { user });
                    }
                    Err(e) => {
                        state.clean_up();
                        state.phase = Phase::Guest;
                        if e == FragmentError::TokenRevoked {
                            metrics::counter!("switchboard_auth_logins_total", "outcome" => "revoked")
                                .increment(1);
                        }
                        let (code, message) = unavailable(&e);
                        state.responder.error(Some(id), code, message);
                    }
                }
            }
            Err(e) => {
                state
                    .responder
                    .error(Some(id), e.error_code(), auth_message(&e));
            }
        },
        Request::Send {
            to,
            client_msg_id,
            payload,
        } => send(state, id, permit, to, client_msg_id, None, payload).await,
        Request::SendAfter {
            to,
            client_msg_id,
            after,
            payload,
        } => send(state, id, permit, to, client_msg_id, Some(after), payload).await,
        Request::Ack { ids } => {
            let Some(user) = state.user().cloned() else {
                return;
            };
            if !id_list_admitted(state, id, &ids).await {
                return;
            }
            if let Some(fragment) = fragment_of(state, id, &user).await {
                let _ = fragment.send_message(FragmentMsg::Ack { user, ids });
                state.responder.respond(id, Response::Ok);
            }
        }
        Request::Read { sender, ids } => {
            let Some(user) = state.user().cloned() else {
                return;
            };
            if !id_list_admitted(state, id, &ids).await {
                return;
            }
            // Through the reader's own fragment, which passes it on to the
            // sender's behind the Delivered receipts of this reader's
            // earlier acks (acks are not answered, so a client reads right
            // after it acks).
            let Some(fragment) = fragment_of(state, id, &user).await else {
                return;
            };
            let (reply, rx) = fragment_reply::<Stored>();
            let request = ReceiptRequest {
                owner: sender,
                kind: ReceiptKind::Read,
                by: user,
                msg_ids: ids,
                ts: now_ms(),
                then_delete: None,
            };
            let _ = fragment.send_message(FragmentMsg::StoreReceipt {
                request,
                reply: Some(reply),
            });
            state.answer_later(id, permit, async move {
                await_fragment(rx).await.map(|_| Response::Ok)
            });
        }
        Request::Typing { to, active } => {
            if let (Some(from), Some(presence)) = (state.user().cloned(), state.presence()) {
                let _ = presence.send_message(PresenceMsg::Typing { from, to, active });
            }
            state.responder.respond(id, Response::Ok);
        }
        Request::SubscribePresence { users } => {
            let Some(subscriber) = state.user().cloned() else {
                return;
            };
            let max = state.ctx.config.max_watched;
            if !presence_request_allowed(state, id, "subscribe", users.len(), max) {
                return;
            }
            if let Some(presence) = state.presence() {
                let _ = presence.send_message(PresenceMsg::Subscribe { subscriber, users });
            }
            state.responder.respond(id, Response::Ok);
        }
        Request::SetContacts { contacts } => {
            let Some(user) = state.user().cloned() else {
                return;
            };
            let max = state.ctx.config.max_contacts;
            if !presence_request_allowed(state, id, "set_contacts", contacts.len(), max) {
                return;
            }
            set_presence_policy(state, id, permit, user, move |policy| {
                policy.contacts = contacts.into_iter().collect();
            });
        }
        Request::SetPresencePrivacy { visibility } => {
            let Some(user) = state.user().cloned() else {
                return;
            };
            if !presence_request_allowed(state, id, "set_privacy", 0, 0) {
                return;
            }
            set_presence_policy(state, id, permit, user, move |policy| {
                policy.visibility = visibility;
            });
        }
        Request::Extension { namespace, body } => {
            let Some(user) = state.user().cloned() else {
                return;
            };
            let Some(extension) = ractor::registry::where_is(extension_actor_name(&namespace))
            else {
                state.responder.error(
                    Some(id),
                    ErrorCode::UnknownNamespace,
                    format!("no extension serves {namespace:?}"),
                );
                return;
            };
            let (tx, rx) = ractor::concurrency::oneshot();
            let sent = extension.send_message(ExtensionMsg::Request(ExtensionRequest {
                user,
                body,
                session: myself.get_derived(),
                reply: tx.into(),
            }));
            if sent.is_err() {
                state.responder.error(
                    Some(id),
                    ErrorCode::Unavailable {
                        retry_after_ms: 1000,
                    },
                    "the extension is restarting",
                );
                return;
            }
            state.answer_later(id, permit, async move {
                match rx.await {
                    Ok(Ok(body)) => Ok(Response::Extension { body }),
                    Ok(Err(message)) => Err((ErrorCode::InvalidRequest, message)),
                    Err(_) => Err((
                        ErrorCode::Unavailable {
                            retry_after_ms: 1000,
                        },
                        "the extension dropped the request".to_owned(),
                    )),
                }
            });
        }
        Request::Logout => {
            // Every token of the account stops working (one account is one
            // device today), then its other sessions here close.
            if let Some(user) = state.user().cloned() {
                // The user's fragment closes the sessions of older tokens.
                match state.ctx.auth.logout(&user).await {
                    Ok(_generation) => {
                        state.responder.respond(id, Response::Ok);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot revoke the tokens at logout");
                        state.responder.error(
                            Some(id),
                            ErrorCode::Internal,
                            "the logout could not be stored; log out again",
                        );
                    }
                }
            } else {
                state.responder.respond(id, Response::Ok);
            }
            state.close(myself, CloseReason::LoggedOut);
        }
        Request::MintTestUsers {
            secret,
            first,
            count,
        } => mint_test_users(myself, state, id, permit, &secret, first, count),
    }
}

/// `Verify` or `VerifyWithPin`: within the connection's limit; on success
/// the sessions of the number's earlier tokens are closed (by its fragment)
/// before the client has the new token.
fn verify(
    myself: &ActorRef<SessionMsg>,
    state: &mut SessionState,
    id: RequestId,
    permit: OwnedSemaphorePermit,
    phone: PhoneNumber,
    code: String,
    pin: Option<String>,
) {
    if let Err(retry_after_ms) = state.verify_bucket.take(now_ms()) {
        over_connection_limit(myself, state, id, "verifies", retry_after_ms);
        return;
    }
    let auth = state.ctx.auth.clone();
    let source = Some(state.peer.ip());
    state.answer_auth(myself, id, permit, async move {
        // The number's fragment closed the sessions of its earlier tokens
        // when the generation rose, before the new token exists.
        let issued = auth.verify_with_pin_from(phone, code, pin, source).await?;
        Ok(Response::Verified {
            token: issued.token,
            expires_at_ms: issued.expires_at_ms,
        })
    });
}

/// Counts a mint request's outcome.
fn count_mint(outcome: &'static str) {
    metrics::counter!("switchboard_admin_mint_total", "outcome" => outcome).increment(1);
}

/// A code request or verify attempt over this connection's own limit: the
/// client is answered `RateLimited` and disconnected.
/// Whether a presence request may go on: within the connection's presence
/// rate and, for a list, at most `max` long. Otherwise answered with an
/// error (the connection stays open) and counted.
fn presence_request_allowed(
    state: &mut SessionState,
    id: RequestId,
    kind: &'static str,
    len: usize,
    max: usize,
) -> bool {
    if len > max {
        metrics::counter!("switchboard_presence_requests_total", "kind" => kind, "outcome" => "too_long")
            .increment(1);
        state.responder.error(
            Some(id),
            ErrorCode::InvalidRequest,
            format!("{len} users; at most {max} in one request"),
        );
        return false;
    }
    if let Err(wait) = state.presence_pacer.try_take(now_ms()) {
        metrics::counter!("switchboard_presence_requests_total", "kind" => kind, "outcome" => "rate_limited")
            .increment(1);
        if let Some(suppressed) = crate::LOGS.allow("presence_rate") {
            tracing::warn!(peer = %state.peer, kind, suppressed,
                "a connection went over its rate of presence requests; refused \
                 (logged at most once per interval; see switchboard_presence_requests_total)");
        }
        let retry_after_ms = u32::try_from(wait.as_millis().max(1)).unwrap_or(u32::MAX);
        state.responder.error(
            Some(id),
            ErrorCode::RateLimited { retry_after_ms },
            "too many presence requests on this connection",
        );
        return false;
    }
    metrics::counter!("switchboard_presence_requests_total", "kind" => kind, "outcome" => "ok")
        .increment(1);
    true
}

/// Stores a change to `user`'s presence settings, then tells the presence
/// actor (which shares them with the other nodes); answers once durable.
fn set_presence_policy(
    state: &SessionState,
    id: RequestId,
    permit: OwnedSemaphorePermit,
    user: PhoneNumber,
    change: impl FnOnce(&mut presence::Policy) + Send + 'static,
) {
    let policies = state.ctx.presence_policies.clone();
    let presence = state.ctx.presence.clone();
    state.answer_later(id, permit, async move {
        match policies.update(&user, now_ms(), change).await {
            Ok(policy) => {
                if let Some(cell) = ractor::registry::where_is(presence) {
                    let presence: ActorRef<PresenceMsg> = cell.into();
                    let _ = presence.send_message(PresenceMsg::SetPolicy { user, policy });
                }
                Ok(Response::Ok)
            }
            Err(e) => {
                tracing::warn!(%user, error = %e, "presence settings not stored");
                Err((
                    ErrorCode::Unavailable {
                        retry_after_ms: 1000,
                    },
                    "the settings could not be stored; retry later".to_owned(),
                ))
            }
        }
    });
}

fn over_connection_limit(
    myself: &ActorRef<SessionMsg>,
    state: &mut SessionState,
    id: RequestId,
    what: &'static str,
    retry_after_ms: u64,
) {
    let metric = if what == "codes" {
        "switchboard_auth_codes_total"
    } else {
        "switchboard_auth_verifies_total"
    };
    metrics::counter!(metric, "outcome" => "rate_limited_connection").increment(1);
    if let Some(suppressed) = crate::LOGS.allow("connection_auth_limit") {
        tracing::warn!(peer = %state.peer, what, suppressed,
            "a connection went over its limit of auth requests; closing it \
             (logged at most once per interval; see switchboard_auth_*_total)");
    }
    state.refuse_and_close(
        myself,
        id,
        ErrorCode::RateLimited {
            retry_after_ms: u32::try_from(retry_after_ms).unwrap_or(u32::MAX),
        },
        format!("too many {what} on this connection"),
    );
}

/// The numbers `first` to `first + count - 1`, if they all start with
/// `prefix` (the test range).
fn test_numbers(first: &PhoneNumber, count: u32, prefix: &str) -> Option<Vec<PhoneNumber>> {
    let phones: Option<Vec<PhoneNumber>> = (0..u64::from(count)).map(|i| first.offset(i)).collect();
    phones.filter(|phones| phones.iter().all(|p| p.as_str().starts_with(prefix)))
}

/// `MintTestUsers`: tokens without codes, for load tests. Only with the
/// node's secret (a wrong one closes the connection), only for numbers in
/// the test range, and never for a number that has an account.
fn mint_test_users(
    myself: &ActorRef<SessionMsg>,
    state: &mut SessionState,
    id: RequestId,
    permit: OwnedSemaphorePermit,
    secret: &str,
    first: PhoneNumber,
    count: u32,
) {
    let Some(expected) = &state.ctx.config.admin_secret else {
        count_mint("disabled");
        state.responder.error(
            Some(id),
            ErrorCode::InvalidRequest,
            "minting test users is disabled (admin.mint_test_users in the node's config)",
        );
        return;
    };
    // Without an early exit: timing does not tell where they differ.
    if !bool::from(expected.as_bytes().ct_eq(secret.as_bytes())) {
        count_mint("wrong_secret");
        if let Some(suppressed) = crate::LOGS.allow("wrong_admin_secret") {
            tracing::warn!(peer = %state.peer, suppressed,
                "wrong admin secret; closing the connection (logged at most once per interval; \
                 see switchboard_admin_mint_total)");
        }
        state.refuse_and_close(myself, id, ErrorCode::InvalidToken, "wrong admin secret");
        return;
    }
    if count == 0 || count > proto::MAX_MINT_PER_REQUEST {
        count_mint("invalid");
        state.responder.error(
            Some(id),
            ErrorCode::InvalidRequest,
            format!("count must be 1 to {}", proto::MAX_MINT_PER_REQUEST),
        );
        return;
    }
    let prefix = &state.ctx.config.test_number_prefix;
    let Some(phones) = test_numbers(&first, count, prefix) else {
        count_mint("outside_test_range");
        if let Some(suppressed) = crate::LOGS.allow("mint_outside_test_range") {
            tracing::warn!(peer = %state.peer, %first, count, suppressed,
                "test users refused: outside the test range (logged at most once per interval)");
        }
        state.responder.error(
            Some(id),
            ErrorCode::InvalidRequest,
            format!(
                "test users are minted only for numbers starting with {prefix} \
                 (admin.test_number_prefix)"
            ),
        );
        return;
    };
    let auth = state.ctx.auth.clone();
    state.answer_later(id, permit, async move {
        match auth.mint_test_users(&phones).await {
            Ok(issued) => {
                count_mint("minted");
                Ok(Response::TestUsers {
                    tokens: issued.into_iter().map(|t| t.token).collect(),
                })
            }
            Err(e) => {
                count_mint(if matches!(e, auth::AuthError::AccountExists(_)) {
                    "account_exists"
                } else {
                    "failed"
                });
                Err((e.error_code(), auth_message(&e)))
            }
        }
    });
}

/// Stores a message in the recipient's mailbox fragment (after the
/// sender's message `after`, if given) and answers with the server ack.
#[allow(clippy::too_many_arguments)]
async fn send(
    state: &mut SessionState,
    id: RequestId,
    permit: OwnedSemaphorePermit,
    to: PhoneNumber,
    client_msg_id: u64,
    after: Option<u64>,
    payload: Vec<u8>,
) {
    let Some(from) = state.user().cloned() else {
        return;
    };
    let wait = state.pacer.take(now_ms());
    if !wait.is_zero() {
        metrics::counter!("switchboard_sends_paced_total").increment(1);
        tokio::time::sleep(wait).await;
    }
    let Some(fragment) = fragment_of(state, id, &to).await else {
        return;
    };
    let (reply, rx) = fragment_reply::<Stored>();
    if fragment
        .send_message(FragmentMsg::Append {
            message: NewMessage {
                to,
                from,
                client_msg_id,
                after,
                payload,
            },
            reply,
        })
        .is_err()
    {
        state.responder.error(
            Some(id),
            ErrorCode::Unavailable {
                retry_after_ms: 1000,
            },
            "the mailbox is restarting; retry",
        );
        return;
    }
    state.answer_later(id, permit, async move {
        await_fragment(rx).await.map(|stored| Response::ServerAck {
            client_msg_id,
            msg_id: stored.msg_id,
            server_ts: stored.server_ts,
        })
    });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_numbers_by_table() {
        /// First number, count, prefix; the last number and count minted.
        type Case<'a> = (&'a str, u32, &'a str, Option<(&'a str, usize)>);
        let cases: &[Case] = &[
            ("+15550000000", 3, "+15550", Some(("+15550000002", 3))),
            ("+15550999999", 1, "+15550", Some(("+15550999999", 1))),
            // Running past the end of the range.
            ("+15550999999", 2, "+15550", None),
            // Outside it.
            ("+15551000000", 1, "+15550", None),
            ("+447911123456", 1, "+15550", None),
            ("+99900000000", 250, "+999", Some(("+99900000249", 250))),
        ];
        for (first, count, prefix, want) in cases {
            let first = PhoneNumber::parse(first).expect("phone");
            let got = test_numbers(&first, *count, prefix);
            let got = got.as_ref().map(|p| (p[p.len() - 1].as_str(), p.len()));
            assert_eq!(got, *want, "{first} x{count} in {prefix}");
        }
    }
}
