//! [`Client`]: an authenticated session that survives disconnects.
//!
//! A supervisor task owns the current [`Connection`] and everything that must
//! outlive it: the [`Outbox`] of unacknowledged sends, the [`RecentIds`] that
//! hide redeliveries, the requests waiting for a connection, and the
//! [`BackoffState`]. [`Client`] handles (cheap to clone) talk to it over a
//! channel, like an actor's mailbox; the supervisor never awaits a request
//! itself, so answers, pushes and commands are handled as they come.
//!
//! The link to the node is in one of three states:
//!
//! ```text
//!   Up ──connection lost──▶ Down(backoff delay) ──delay over──▶ Connecting
//!   ▲                                                            │ │
//!   └────────────── login ok: Connected, resend outbox ──────────┘ │
//!                   connect or login failed: next server, Down ◀───┘
//! ```
//!
//! A final reason (replaced by another login, token refused, [`Client::close`])
//! stops the supervisor instead: waiting sends fail with
//! [`ClientError::Stopped`], and [`Events`] ends after a last
//! [`Event::Disconnected`].

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use proto::{
    ErrorCode, GroupChange, GroupCommand, GroupId, GroupRole, MessageId, PhoneNumber, Position,
    PresenceStatus, ReceiptKind, Request, Response, ServerFrame, TimestampMs,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::backoff::BackoffState;
use crate::dedupe::{RecentIds, Seen};
use crate::outbox::{Outbox, Outgoing, Target};
use crate::sent::SentMessages;
use crate::{ClientConfig, ClientError, Connection, DisconnectReason, Pushes, Result, Tls};

/// What the node pushed, or what happened to the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message for this user. Acknowledge `msg_id` with [`Client::ack`] once
    /// it is shown or stored; until then the node redelivers it on each login.
    Message {
        /// Server id: the ack key.
        msg_id: MessageId,
        /// The sender.
        from: PhoneNumber,
        /// The sender's id for it.
        client_msg_id: u64,
        /// When the node stored it.
        server_ts: TimestampMs,
        /// The sender's bytes.
        payload: Vec<u8>,
    },
    /// A receipt for messages this user sent. Acknowledge `id` like a message.
    Receipt {
        /// Mailbox entry id of the receipt: the ack key.
        id: MessageId,
        /// Delivered (two ticks) or read.
        kind: ReceiptKind,
        /// Who received or read them.
        by: PhoneNumber,
        /// The messages concerned (the `msg_id`s of [`SendAck`]s).
        msg_ids: Vec<MessageId>,
        /// When.
        ts: TimestampMs,
    },
    /// A watched user's presence (see [`Client::subscribe_presence`]).
    Presence {
        /// Whose.
        user: PhoneNumber,
        /// Online or last seen.
        status: PresenceStatus,
    },
    /// A user started or stopped typing to this one.
    Typing {
        /// Who types.
        from: PhoneNumber,
        /// Started or stopped.
        active: bool,
    },
    /// A push from an extension.
    Extension {
        /// The extension's namespace.
        namespace: String,
        /// Extension-defined bytes.
        body: Vec<u8>,
    },
    /// A message to a group this user is in. Acknowledge `msg_id`.
    GroupMessage {
        /// This copy's id: the ack key.
        msg_id: MessageId,
        /// The group.
        group: GroupId,
        /// Its place in the group's log (every member sees the same order).
        position: Position,
        /// The sender.
        from: PhoneNumber,
        /// The sender's id for it.
        client_msg_id: u64,
        /// When the group's node stored it.
        server_ts: TimestampMs,
        /// The sender's bytes.
        payload: Vec<u8>,
    },
    /// A change of a group this user is (or was) in. Acknowledge `msg_id`.
    GroupEvent {
        /// This copy's id: the ack key.
        msg_id: MessageId,
        /// The group.
        group: GroupId,
        /// Its place in the group's log.
        position: Position,
        /// Who made the change.
        by: PhoneNumber,
        /// What changed.
        change: GroupChange,
        /// When.
        ts: TimestampMs,
    },
    /// Every member of `group` (but those who left) has received
    /// (`Delivered`) or read (`Read`) this user's messages at `positions`
    /// (the `msg_id`s of their [`SendAck`]s). Acknowledge `msg_id`.
    GroupReceipt {
        /// This copy's id: the ack key.
        msg_id: MessageId,
        /// The group.
        group: GroupId,
        /// The messages.
        positions: Vec<Position>,
        /// Delivered to all or read by all.
        kind: ReceiptKind,
        /// When the group's node found it.
        ts: TimestampMs,
    },
    /// Logged in (again); the mailbox backlog follows.
    Connected,
    /// The connection ended. Unless the reason is final
    /// ([`DisconnectReason::is_final`]) the client reconnects by itself.
    Disconnected {
        /// Why.
        reason: DisconnectReason,
    },
}

impl Event {
    /// The id to pass to [`Client::ack`] for this event, if it needs one
    /// (messages and receipts).
    pub fn ack_id(&self) -> Option<MessageId> {
        match self {
            Event::Message { msg_id, .. }
            | Event::GroupMessage { msg_id, .. }
            | Event::GroupEvent { msg_id, .. }
            | Event::GroupReceipt { msg_id, .. } => Some(*msg_id),
            Event::Receipt { id, .. } => Some(*id),
            _ => None,
        }
    }
}

/// The node's acknowledgement of a send (one tick).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendAck {
    /// The server's id for the message (what receipts name).
    pub msg_id: MessageId,
    /// The id this client chose.
    pub client_msg_id: u64,
    /// When the node stored it.
    pub server_ts: TimestampMs,
}

/// The stream of [`Event`]s of one [`Client`]. It ends when the client stops.
///
/// Unbounded: the client never stalls on an app that reads slowly (it would
/// stall its own answers with it); the node bounds what it pushes by the
/// mailbox. Drop it to ignore events.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::UnboundedReceiver<Event>,
}

impl Events {
    /// The next event; `None` once the client has stopped.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event if one is ready.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

enum Command {
    Send {
        to: Target,
        payload: Vec<u8>,
        reply: oneshot::Sender<Result<SendAck>>,
    },
    Request {
        request: Request,
        reply: oneshot::Sender<Result<Response>>,
    },
    Ack {
        ids: Vec<MessageId>,
    },
    Close {
        done: oneshot::Sender<()>,
    },
}

/// A handle to an authenticated session. Clones share the session.
#[derive(Debug, Clone)]
pub struct Client {
    commands: mpsc::UnboundedSender<Command>,
    stopped: Arc<OnceLock<DisconnectReason>>,
    user: PhoneNumber,
    request_timeout: Duration,
}

impl Client {
    /// Connects to the first server that answers (in the order of
    /// `cfg.servers`), logs in with `token` and starts the supervisor.
    ///
    /// Fails if no server can be reached or the token is refused; after that,
    /// lost connections are re-established in the background.
    pub async fn connect(cfg: ClientConfig, token: String) -> Result<(Client, Events)> {
        let tls = cfg.validate()?;
        let mut last = None;
        for (index, server) in cfg.servers.iter().enumerate() {
            match connect_and_login(server.clone(), tls.clone(), &cfg, token.clone()).await {
                Ok((conn, pushes, user)) => {
                    info!(server, %user, "logged in");
                    let (commands, commands_rx) = mpsc::unbounded_channel();
                    let (events_tx, events_rx) = mpsc::unbounded_channel();
                    let (internal_tx, internal_rx) = mpsc::unbounded_channel();
                    let stopped = Arc::new(OnceLock::new());
                    let client = Client {
                        commands,
                        stopped: Arc::clone(&stopped),
                        user,
                        request_timeout: cfg.request_timeout,
                    };
                    let supervisor = Supervisor {
                        backoff: BackoffState::new(cfg.backoff),
                        cfg,
                        tls,
                        token,
                        server_index: index,
                        epoch: 0,
                        events: events_tx,
                        internal: internal_tx,
                        outbox: Outbox::new(),
                        parked: Vec::new(),
                        recent: RecentIds::default(),
                        recent_sends: RecentIds::default(),
                        sent: SentMessages::default(),
                        rng: StdRng::from_os_rng(),
                        stopped,
                    };
                    tokio::spawn(supervisor.run(commands_rx, internal_rx, conn, pushes));
                    return Ok((client, Events { rx: events_rx }));
                }
                Err(e) if is_final(&e) => return Err(e),
                Err(e) => {
                    debug!(server, "{e}");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Config("no server address given".to_owned())))
    }

    /// The logged-in user.
    pub fn user(&self) -> &PhoneNumber {
        &self.user
    }

    /// Sends `payload` to `to` with a fresh random `client_msg_id`; resolves
    /// with the node's ack (one tick).
    ///
    /// There is no timeout: across reconnects the send is repeated, with the
    /// same id, until the node acknowledges it. It fails only if the node
    /// refuses it for good (e.g. [`ErrorCode::PayloadTooLarge`]) or the client
    /// stops. Dropping the future does not withdraw the message.
    pub async fn send(&self, to: &PhoneNumber, payload: Vec<u8>) -> Result<SendAck> {
        self.queue_send(to, payload)?.await
    }

    /// Queues a send now and returns a future of its ack: several sends
    /// queued one after another go out (and are stored) in that order while
    /// their acks are awaited together. Otherwise as [`Client::send`].
    pub fn queue_send(
        &self,
        to: &PhoneNumber,
        payload: Vec<u8>,
    ) -> Result<impl Future<Output = Result<SendAck>> + Send + 'static> {
        self.queue_to(Target::User(to.clone()), payload)
    }

    /// Sends `payload` to `group` (this user must be a member); resolves
    /// with the node's ack once the group's node stored it. Resent across
    /// reconnects like [`Client::send`], in order with this client's
    /// other sends to the group.
    pub async fn send_group(&self, group: GroupId, payload: Vec<u8>) -> Result<SendAck> {
        self.queue_send_group(group, payload)?.await
    }

    /// [`Client::queue_send`] for a group.
    pub fn queue_send_group(
        &self,
        group: GroupId,
        payload: Vec<u8>,
    ) -> Result<impl Future<Output = Result<SendAck>> + Send + 'static> {
        self.queue_to(Target::Group(group), payload)
    }

    /// Creates a group with this user as its admin; its id. If the
    /// connection is lost before the answer, the request is made again on
    /// the next one (within the request timeout) with the same create id,
    /// so a creation that did happen is answered, not repeated.
    pub async fn create_group(&self, name: &str, members: Vec<PhoneNumber>) -> Result<GroupId> {
        let request = Request::CreateGroupOnce {
            create_id: rand::random(),
            name: name.to_owned(),
            members,
        };
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        loop {
            match self.request(request.clone()).await {
                Ok(Response::GroupCreated { group }) => return Ok(group),
                Ok(other) => return Err(unexpected("GroupCreated", &other)),
                Err(ClientError::ConnectionLost(reason))
                    if tokio::time::Instant::now() < deadline =>
                {
                    debug!("group creation in doubt ({reason}); asking again");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Changes a group (see [`GroupCommand`]); `Ok` once durable.
    pub async fn change_group(&self, group: GroupId, command: GroupCommand) -> Result<()> {
        self.expect_ok(Request::ChangeGroup { group, command })
            .await
    }

    /// A group's name and members with their roles.
    pub async fn group_info(
        &self,
        group: GroupId,
    ) -> Result<(String, Vec<(PhoneNumber, GroupRole)>)> {
        match self.request(Request::GroupInfo { group }).await? {
            Response::GroupInfo { name, members, .. } => Ok((name, members)),
            other => Err(unexpected("GroupInfo", &other)),
        }
    }

    /// Tells `group`'s senders this user has read up to `through` (a
    /// [`Event::GroupMessage`]'s position); `Ok` once stored.
    pub async fn read_group(&self, group: GroupId, through: Position) -> Result<()> {
        self.expect_ok(Request::ReadGroup { group, through }).await
    }

    /// Who has received and read this user's message at `position` (its
    /// [`SendAck`]'s `msg_id`): each member with `None` (sent), delivered
    /// or read; empty once everyone has read it.
    pub async fn group_message_info(
        &self,
        group: GroupId,
        position: Position,
    ) -> Result<Vec<(PhoneNumber, Option<ReceiptKind>)>> {
        match self
            .request(Request::GroupMessageInfo { group, position })
            .await?
        {
            Response::GroupMessageInfo { members, .. } => Ok(members),
            other => Err(unexpected("GroupMessageInfo", &other)),
        }
    }

    /// The groups this user is in, by id.
    pub async fn list_groups(&self) -> Result<Vec<GroupId>> {
        match self.request(Request::ListGroups).await? {
            Response::Groups { groups } => Ok(groups),
            other => Err(unexpected("Groups", &other)),
        }
    }

    fn queue_to(
        &self,
        to: Target,
        payload: Vec<u8>,
    ) -> Result<impl Future<Output = Result<SendAck>> + Send + 'static> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Send { to, payload, reply })?;
        let stopped = self.stopped.clone();
        Ok(async move {
            match answer.await {
                Ok(result) => result,
                Err(_) => Err(ClientError::Stopped(
                    stopped.get().cloned().unwrap_or(DisconnectReason::Local),
                )),
            }
        })
    }

    /// Acknowledges mailbox entries (message `msg_id`s, receipt `id`s): the node
    /// drops them and tells senders their messages were delivered. The ack
    /// is not answered: `Ok` means it is queued for the connection. One
    /// lost with a connection is repeated when the node pushes the entries
    /// again after the reconnect (they are never shown twice).
    pub async fn ack(&self, ids: Vec<MessageId>) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.command(Command::Ack { ids })
    }

    /// Acknowledges the mailbox entry behind `event`, if it has one.
    pub async fn ack_event(&self, event: &Event) -> Result<()> {
        match event.ack_id() {
            Some(id) => self.ack(vec![id]).await,
            None => Ok(()),
        }
    }

    /// Tells `sender` that its messages `ids` were read (blue ticks).
    pub async fn read(&self, sender: &PhoneNumber, ids: Vec<MessageId>) -> Result<()> {
        self.expect_ok(Request::Read {
            sender: sender.clone(),
            ids,
        })
        .await
    }

    /// Tells `to` this user started (`true`) or stopped typing.
    pub async fn typing(&self, to: &PhoneNumber, active: bool) -> Result<()> {
        self.expect_ok(Request::Typing {
            to: to.clone(),
            active,
        })
        .await
    }

    /// Watches the presence of `users` (replacing the previous list); the
    /// node pushes their current state and every change as
    /// [`Event::Presence`], of those users who let this user see them
    /// (see [`Client::set_contacts`]); the others are left out silently.
    /// The list is not renewed after a reconnect: call again on
    /// [`Event::Connected`]. Rate-limited by the node (with the two calls
    /// below): over it, [`ClientError`](crate::ClientError) with
    /// `RateLimited`.
    pub async fn subscribe_presence(&self, users: Vec<PhoneNumber>) -> Result<()> {
        self.expect_ok(Request::SubscribePresence { users }).await
    }

    /// Replaces this user's contact list: with the default
    /// [`Visibility::Contacts`](crate::Visibility), only these users see
    /// this user's presence and typing. Stored by the node this client is
    /// connected to; a client that may connect to other nodes of a cluster
    /// sends it again after each login (on [`Event::Connected`]).
    pub async fn set_contacts(&self, contacts: Vec<PhoneNumber>) -> Result<()> {
        self.expect_ok(Request::SetContacts { contacts }).await
    }

    /// Sets who may see this user's presence and typing: everyone, the
    /// contacts ([`Client::set_contacts`]; the default) or nobody.
    pub async fn set_presence_privacy(&self, visibility: crate::Visibility) -> Result<()> {
        self.expect_ok(Request::SetPresencePrivacy { visibility })
            .await
    }

    /// Calls the extension registered under `namespace`; returns its answer.
    pub async fn extension(&self, namespace: &str, body: Vec<u8>) -> Result<Vec<u8>> {
        let request = Request::Extension {
            namespace: namespace.to_owned(),
            body,
        };
        match self.request(request).await? {
            Response::Extension { body } => Ok(body),
            other => Err(unexpected("Extension", &other)),
        }
    }

    /// Sets (`Some`, 4 to 64 characters) or removes (`None`) this account's
    /// registration-lock PIN: while set, verifying the number again needs
    /// the PIN too ([`crate::verify_with_pin`]). The lock lapses after 7
    /// days without a login (the node's setting).
    pub async fn set_registration_lock(&self, pin: Option<String>) -> Result<()> {
        self.expect_ok(Request::SetRegistrationLock { pin }).await
    }

    /// Closes the connection and stops the supervisor. Sends still waiting
    /// for an ack fail with [`ClientError::Stopped`]; [`Events`] ends.
    pub async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.command(Command::Close { done }).is_ok() {
            let _ = closed.await;
        }
    }

    /// A request other than a send: on the current connection, or on the next
    /// one if the link is down; fails after the request timeout either way.
    async fn request(&self, request: Request) -> Result<Response> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Request { request, reply })?;
        match tokio::time::timeout(self.request_timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(self.stopped_error()),
            Err(_) => Err(ClientError::Timeout),
        }
    }

    async fn expect_ok(&self, request: Request) -> Result<()> {
        match self.request(request).await? {
            Response::Ok => Ok(()),
            other => Err(unexpected("Ok", &other)),
        }
    }

    fn command(&self, command: Command) -> Result<()> {
        self.commands
            .send(command)
            .map_err(|_| self.stopped_error())
    }

    fn stopped_error(&self) -> ClientError {
        ClientError::Stopped(
            self.stopped
                .get()
                .cloned()
                .unwrap_or(DisconnectReason::Local),
        )
    }
}

fn unexpected(expected: &str, got: &Response) -> ClientError {
    ClientError::Protocol(format!("expected {expected}, got {got:?}"))
}

/// Whether retrying the connection cannot help.
fn is_final(e: &ClientError) -> bool {
    matches!(
        e.code(),
        Some(ErrorCode::InvalidToken | ErrorCode::UnsupportedVersion)
    )
}

/// The delay a refusal asks for before retrying, if the refusal is temporary.
/// A message's identity across copies: its group (`None`: 1:1), its
/// sender and the sender's id.
fn send_key(group: Option<GroupId>, from: &PhoneNumber, client_msg_id: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    // DefaultHasher::new() has fixed keys: the same key for the same triple.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    group.hash(&mut hasher);
    from.hash(&mut hasher);
    client_msg_id.hash(&mut hasher);
    hasher.finish()
}

fn retry_after(code: ErrorCode) -> Option<Duration> {
    match code {
        ErrorCode::RateLimited { retry_after_ms } | ErrorCode::Unavailable { retry_after_ms } => {
            Some(Duration::from_millis(retry_after_ms.into()))
        }
        // The earlier message is being resent; this one goes again after it.
        ErrorCode::Internal | ErrorCode::EarlierMessageMissing => Some(Duration::ZERO),
        _ => None,
    }
}

async fn connect_and_login(
    server: String,
    tls: Tls,
    cfg: &ClientConfig,
    token: String,
) -> Result<(Connection, Pushes, PhoneNumber)> {
    let (conn, pushes) =
        Connection::connect(&server, &tls, &cfg.agent, cfg.request_timeout).await?;
    let user = conn.login(&token).await?;
    Ok((conn, pushes, user))
}

type Connected = Result<(Connection, Pushes, PhoneNumber)>;

/// Messages to the supervisor from callbacks and timers.
enum Internal {
    /// The answer to a send made on connection `epoch`.
    SendDone {
        epoch: u64,
        client_msg_id: u64,
        result: Result<Response>,
    },
    /// A temporary refusal's delay is over: send what is unsent.
    Retry,
}

enum Link {
    Up {
        conn: Connection,
        pushes: Pushes,
    },
    Down {
        wake: std::pin::Pin<Box<tokio::time::Sleep>>,
    },
    Connecting {
        task: JoinHandle<Connected>,
    },
}

/// What woke the supervisor.
enum Step {
    Command(Option<Command>),
    Internal(Internal),
    Pushes(Vec<ServerFrame>),
    Lost(DisconnectReason),
    Wake,
    Connected(Connected),
}

struct Supervisor {
    cfg: ClientConfig,
    tls: Tls,
    token: String,
    server_index: usize,
    /// Counts connections; answers from an older one are stale.
    epoch: u64,
    backoff: BackoffState,
    events: mpsc::UnboundedSender<Event>,
    internal: mpsc::UnboundedSender<Internal>,
    outbox: Outbox<oneshot::Sender<Result<SendAck>>>,
    /// Requests made while the link was down.
    parked: Vec<(Request, oneshot::Sender<Result<Response>>)>,
    recent: RecentIds,
    /// Messages by (sender, client id): a message stored twice under two
    /// ids (two sides of a partitioned cluster each took it) is one message.
    recent_sends: RecentIds,
    /// Recipients of recent sends: a receipt counts only for messages
    /// sent to the user it names.
    sent: SentMessages,
    rng: StdRng,
    stopped: Arc<OnceLock<DisconnectReason>>,
}

impl Supervisor {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut internal: mpsc::UnboundedReceiver<Internal>,
        conn: Connection,
        pushes: Pushes,
    ) {
        let mut link = self.up(conn, pushes);
        loop {
            let step = next_step(&mut link, &mut commands, &mut internal).await;
            let conn = match &link {
                Link::Up { conn, .. } => Some(conn),
                _ => None,
            };
            match step {
                Step::Command(Some(Command::Close { done })) => {
                    if let Link::Up { conn, .. } = &link {
                        conn.close();
                        self.emit(Event::Disconnected {
                            reason: DisconnectReason::Local,
                        });
                    }
                    if let Link::Connecting { task } = &link {
                        task.abort();
                    }
                    self.stop(DisconnectReason::Local);
                    let _ = done.send(());
                    return;
                }
                Step::Command(None) => {
                    // Every handle is gone: nobody can see anything any more.
                    if let Link::Connecting { task } = &link {
                        task.abort();
                    }
                    self.stop(DisconnectReason::Local);
                    return;
                }
                Step::Command(Some(command)) => self.command(command, conn),
                Step::Internal(message) => self.internal(message, conn),
                Step::Pushes(frames) => {
                    if let Some(conn) = conn {
                        self.pushes(frames, conn);
                    }
                }
                Step::Lost(reason) => {
                    if reason.is_final() {
                        info!(%reason, "disconnected for good");
                    } else {
                        warn!(%reason, "disconnected; reconnecting");
                    }
                    self.emit(Event::Disconnected {
                        reason: reason.clone(),
                    });
                    if reason.is_final() {
                        self.stop(reason);
                        return;
                    }
                    link = self.down(reason.retry_after_ms());
                }
                Step::Wake => {
                    let server = self.cfg.servers[self.server_index].clone();
                    debug!(server, "reconnecting");
                    let (tls, cfg, token) =
                        (self.tls.clone(), self.cfg.clone(), self.token.clone());
                    link = Link::Connecting {
                        task: tokio::spawn(async move {
                            connect_and_login(server, tls, &cfg, token).await
                        }),
                    };
                }
                Step::Connected(Ok((conn, pushes, user))) => {
                    info!(server = conn.server(), %user, "logged in again");
                    link = self.up(conn, pushes);
                }
                Step::Connected(Err(e)) => {
                    if is_final(&e) {
                        let reason = match e {
                            ClientError::Server { code, message } => {
                                DisconnectReason::LoginRefused { code, message }
                            }
                            other => DisconnectReason::Protocol(other.to_string()),
                        };
                        warn!(%reason, "giving up");
                        self.emit(Event::Disconnected {
                            reason: reason.clone(),
                        });
                        self.stop(reason);
                        return;
                    }
                    warn!("reconnect failed: {e}");
                    let retry_after = match &e {
                        ClientError::Server { code, .. } => retry_after(*code)
                            .map(|d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX)),
                        ClientError::ConnectionLost(reason) => reason.retry_after_ms(),
                        _ => None,
                    };
                    link = self.down(retry_after);
                }
            }
        }
    }

    /// A connection is logged in: resend what is unacknowledged, in order,
    /// then the requests that waited.
    fn up(&mut self, conn: Connection, pushes: Pushes) -> Link {
        self.epoch += 1;
        self.backoff.reset();
        self.emit(Event::Connected);
        self.outbox.mark_all_unsent();
        self.send_unsent(&conn);
        for (request, reply) in std::mem::take(&mut self.parked) {
            if !reply.is_closed() {
                submit_forwarding(&conn, request, reply);
            }
        }
        Link::Up { conn, pushes }
    }

    /// The link is lost: wait, then try the next server.
    fn down(&mut self, retry_after_ms: Option<u32>) -> Link {
        self.outbox.mark_all_unsent();
        self.server_index = (self.server_index + 1) % self.cfg.servers.len();
        let retry_after = retry_after_ms.map(|ms| Duration::from_millis(ms.into()));
        let delay = self.backoff.next_delay(retry_after, &mut self.rng);
        debug!(
            ?delay,
            attempt = self.backoff.attempt(),
            "reconnect scheduled"
        );
        Link::Down {
            wake: Box::pin(tokio::time::sleep(delay)),
        }
    }

    /// Stops for good: everything waiting fails with `reason`.
    fn stop(&mut self, reason: DisconnectReason) {
        let _ = self.stopped.set(reason.clone());
        for entry in self.outbox.drain() {
            let _ = entry.waiter.send(Err(ClientError::Stopped(reason.clone())));
        }
        for (_, reply) in self.parked.drain(..) {
            let _ = reply.send(Err(ClientError::Stopped(reason.clone())));
        }
    }

    fn command(&mut self, command: Command, conn: Option<&Connection>) {
        match command {
            Command::Send { to, payload, reply } => {
                let client_msg_id = loop {
                    let id: u64 = self.rng.random();
                    if !self.outbox.contains(id) {
                        break id;
                    }
                };
                self.outbox.push(to, client_msg_id, payload, reply);
                if let Some(conn) = conn {
                    self.send_unsent(conn);
                }
            }
            Command::Request { request, reply } => {
                if let Request::Ack { ids } = &request {
                    for id in ids {
                        self.recent.mark_acked(*id);
                    }
                }
                match conn {
                    Some(conn) => submit_forwarding(conn, request, reply),
                    None => self.parked.push((request, reply)),
                }
            }
            Command::Ack { ids } => {
                for id in &ids {
                    self.recent.mark_acked(*id);
                }
                // Without a connection the ack is dropped: the entries come
                // again after the reconnect and are acked again (Seen::Acked).
                if let Some(conn) = conn
                    && let Err(e) = conn.ack(ids)
                {
                    debug!("ack not sent, repeated after the reconnect: {e}");
                }
            }
            Command::Close { .. } => {} // handled by the loop
        }
    }

    fn internal(&mut self, message: Internal, conn: Option<&Connection>) {
        match message {
            Internal::Retry => {
                if let Some(conn) = conn {
                    self.send_unsent(conn);
                }
            }
            Internal::SendDone {
                epoch,
                client_msg_id,
                result,
            } => self.send_done(epoch, client_msg_id, result, conn),
        }
    }

    fn send_done(
        &mut self,
        epoch: u64,
        client_msg_id: u64,
        result: Result<Response>,
        conn: Option<&Connection>,
    ) {
        let fail = |outbox: &mut Outbox<oneshot::Sender<Result<SendAck>>>, e: ClientError| {
            if let Some(entry) = outbox.complete(client_msg_id) {
                let _ = entry.waiter.send(Err(e));
            }
        };
        match result {
            // An ack is an ack, whichever connection carried it.
            Ok(Response::ServerAck {
                msg_id, server_ts, ..
            }) => {
                if let Some(entry) = self.outbox.complete(client_msg_id) {
                    if let Target::User(to) = entry.to {
                        self.sent.record(msg_id, to);
                    }
                    let _ = entry.waiter.send(Ok(SendAck {
                        msg_id,
                        client_msg_id,
                        server_ts,
                    }));
                }
            }
            Ok(other) => fail(&mut self.outbox, unexpected("ServerAck", &other)),
            // The disconnect marks everything unsent; the next login resends.
            Err(ClientError::ConnectionLost(_)) => {}
            Err(_) if epoch != self.epoch => {}
            Err(ClientError::Server { code, message }) => match retry_after(code) {
                Some(delay) => {
                    debug!(client_msg_id, ?code, "send refused for now; retrying");
                    self.outbox.mark_unsent(client_msg_id);
                    let internal = self.internal.clone();
                    let delay = delay.max(self.cfg.backoff.initial);
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = internal.send(Internal::Retry);
                    });
                }
                None => fail(&mut self.outbox, ClientError::Server { code, message }),
            },
            Err(ClientError::Timeout) => {
                // Repeating is safe: the node stores a client_msg_id once.
                self.outbox.mark_unsent(client_msg_id);
                if let Some(conn) = conn {
                    self.send_unsent(conn);
                }
            }
            Err(e) => fail(&mut self.outbox, e),
        }
    }

    fn pushes(&mut self, frames: Vec<ServerFrame>, conn: &Connection) {
        let mut re_ack = Vec::new();
        for frame in frames {
            let event = match frame {
                ServerFrame::Deliver {
                    msg_id,
                    from,
                    client_msg_id,
                    server_ts,
                    payload,
                } => Event::Message {
                    msg_id,
                    from,
                    client_msg_id,
                    server_ts,
                    payload,
                },
                ServerFrame::Receipt {
                    id,
                    kind,
                    by,
                    msg_ids,
                    ts,
                } => {
                    let checked = self.sent.receipt_ids(&by, &msg_ids);
                    if checked.len() < msg_ids.len() {
                        warn!(id, %by, dropped = msg_ids.len() - checked.len(),
                            "a receipt names messages sent to someone else; ignoring those");
                    }
                    if checked.is_empty() {
                        // Nothing to show; acked so that it leaves the mailbox.
                        re_ack.push(id);
                        continue;
                    }
                    Event::Receipt {
                        id,
                        kind,
                        by,
                        msg_ids: checked,
                        ts,
                    }
                }
                ServerFrame::GroupDeliver {
                    msg_id,
                    group,
                    position,
                    from,
                    client_msg_id,
                    server_ts,
                    payload,
                } => Event::GroupMessage {
                    msg_id,
                    group,
                    position,
                    from,
                    client_msg_id,
                    server_ts,
                    payload,
                },
                ServerFrame::GroupEvent {
                    msg_id,
                    group,
                    position,
                    by,
                    change,
                    ts,
                } => Event::GroupEvent {
                    msg_id,
                    group,
                    position,
                    by,
                    change,
                    ts,
                },
                ServerFrame::GroupReceipt {
                    msg_id,
                    group,
                    positions,
                    kind,
                    ts,
                } => Event::GroupReceipt {
                    msg_id,
                    group,
                    positions,
                    kind,
                    ts,
                },
                ServerFrame::Presence { user, status } => Event::Presence { user, status },
                ServerFrame::Typing { from, active } => Event::Typing { from, active },
                ServerFrame::Extension { namespace, body } => Event::Extension { namespace, body },
                other => {
                    debug!(?other, "ignoring an unexpected push");
                    continue;
                }
            };
            if let Some(id) = event.ack_id() {
                match self.recent.observe(id) {
                    Seen::New => {
                        // Two owners at once (a partition) may each store
                        // a resent message, 1:1 or to a group, under its
                        // own id or position.
                        let copy = match &event {
                            Event::Message {
                                from,
                                client_msg_id,
                                ..
                            } => Some(send_key(None, from, *client_msg_id)),
                            Event::GroupMessage {
                                group,
                                from,
                                client_msg_id,
                                ..
                            } => Some(send_key(Some(*group), from, *client_msg_id)),
                            _ => None,
                        };
                        if let Some(key) = copy
                            && self.recent_sends.observe(key) != Seen::New
                        {
                            // The same message under a second id: hide it
                            // and let the node drop that copy.
                            debug!(id, "dropping a second copy of a message");
                            re_ack.push(id);
                            continue;
                        }
                    }
                    Seen::Pending => {
                        debug!(id, "dropping a redelivery");
                        continue;
                    }
                    Seen::Acked => {
                        // Its ack was lost with a connection: repeat it.
                        re_ack.push(id);
                        continue;
                    }
                }
            }
            self.emit(event);
        }
        if !re_ack.is_empty() {
            debug!(count = re_ack.len(), "acknowledging redeliveries again");
            if let Err(e) = conn.ack(re_ack) {
                debug!("re-ack failed: {e}");
            }
        }
    }

    fn send_unsent(&mut self, conn: &Connection) {
        for Outgoing {
            to,
            client_msg_id,
            after,
            payload,
        } in self.outbox.take_unsent()
        {
            let internal = self.internal.clone();
            let epoch = self.epoch;
            let request = match (to, after) {
                (Target::User(to), None) => Request::Send {
                    to,
                    client_msg_id,
                    payload,
                },
                (Target::User(to), Some(after)) => Request::SendAfter {
                    to,
                    client_msg_id,
                    after,
                    payload,
                },
                (Target::Group(group), after) => Request::SendGroup {
                    group,
                    client_msg_id,
                    after,
                    payload,
                },
            };
            conn.submit(request, move |result| {
                let _ = internal.send(Internal::SendDone {
                    epoch,
                    client_msg_id,
                    result,
                });
            });
        }
    }

    fn emit(&self, event: Event) {
        // Nobody listening is fine: the app dropped its Events.
        let _ = self.events.send(event);
    }
}

fn submit_forwarding(
    conn: &Connection,
    request: Request,
    reply: oneshot::Sender<Result<Response>>,
) {
    conn.submit(request, move |result| {
        let _ = reply.send(result);
    });
}

async fn next_step(
    link: &mut Link,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    internal: &mut mpsc::UnboundedReceiver<Internal>,
) -> Step {
    match link {
        Link::Up { conn, pushes } => {
            let mut frames = Vec::new();
            tokio::select! {
                command = commands.recv() => Step::Command(command),
                Some(message) = internal.recv() => Step::Internal(message),
                n = pushes.recv_many(&mut frames, 256) => {
                    if n == 0 {
                        Step::Lost(conn.disconnect_reason().unwrap_or(DisconnectReason::Eof))
                    } else {
                        Step::Pushes(frames)
                    }
                }
            }
        }
        Link::Down { wake } => tokio::select! {
            command = commands.recv() => Step::Command(command),
            Some(message) = internal.recv() => Step::Internal(message),
            () = wake.as_mut() => Step::Wake,
        },
        Link::Connecting { task } => tokio::select! {
            command = commands.recv() => Step::Command(command),
            Some(message) = internal.recv() => Step::Internal(message),
            joined = task => Step::Connected(joined.unwrap_or_else(|e| {
                Err(ClientError::Protocol(format!("connect task failed: {e}")))
            })),
        },
    }
}
