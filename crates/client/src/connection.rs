//! One TLS connection to a node: hello, then requests and pushes.
//!
//! [`Connection::connect`] opens TCP and TLS, sends [`ClientFrame::Hello`] and
//! waits for [`ServerFrame::Welcome`]. Then three tasks run:
//!
//! - the **writer** writes encoded frames from an unbounded channel, in the
//!   order they were submitted, and closes TLS cleanly at the end;
//! - the **reader** decodes [`ServerFrame`]s from a growing buffer, completes
//!   the pending request named by each answer and forwards every pushed frame
//!   to the [`Pushes`] channel;
//! - the **heartbeat** pings every third of the node's idle timeout and fails
//!   requests whose timeout passed. An unanswered ping closes the connection.
//!
//! The pending-request table sits behind a std mutex (never held across an
//! await): callers insert, the reader removes. Once the connection is closed
//! the table is gone, so no request can wait on a dead connection; every
//! request still pending then fails with [`ClientError::ConnectionLost`].
//! When the reader stops it drops the [`Pushes`] sender: the receiver's `None`
//! is the signal that the connection is over, and
//! [`Connection::disconnect_reason`] says why.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use proto::{
    ClientFrame, CodecError, DEFAULT_MAX_FRAME_BYTES, ErrorCode, MessageId, PROTOCOL_VERSION,
    PhoneNumber, Request, RequestId, Response, ServerFrame, decode_frame, encode_frame,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tracing::{debug, trace, warn};

use crate::{ClientError, DisconnectReason, Result, Tls};

/// Pushed frames (deliveries, receipts, presence, typing, extension pushes).
/// `None` from `recv` means the connection is over.
pub type Pushes = mpsc::UnboundedReceiver<ServerFrame>;

/// What the node said in its [`ServerFrame::Welcome`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The node's protocol version.
    pub version: u16,
    /// The node's name.
    pub node: String,
    /// Largest frame body the node accepts; larger ones are refused here.
    pub max_frame_bytes: u32,
    /// The node closes a connection silent this long (zero: never).
    pub idle_timeout: Duration,
}

/// Called once with the answer to a submitted request.
type Reply = Box<dyn FnOnce(Result<Response>) + Send>;

struct Pending {
    reply: Reply,
    deadline: Instant,
}

struct State {
    pending: HashMap<RequestId, Pending>,
    next_id: RequestId,
    closed: Option<DisconnectReason>,
}

struct Shared {
    state: Mutex<State>,
    writer: mpsc::UnboundedSender<Vec<u8>>,
    closed: watch::Sender<bool>,
    max_frame_bytes: u32,
    request_timeout: Duration,
}

/// A connection to one node. Dropping it closes the connection.
pub struct Connection {
    shared: Arc<Shared>,
    welcome: Welcome,
    server: String,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("server", &self.server)
            .field("welcome", &self.welcome)
            .finish_non_exhaustive()
    }
}

/// Largest frame accepted from the node: generous, since a delivery carries
/// a payload of up to the node's limit plus its headers; the limit only
/// keeps a broken peer from making the reader allocate without bound.
fn inbound_limit(max_frame_bytes: u32) -> u32 {
    max_frame_bytes
        .max(DEFAULT_MAX_FRAME_BYTES)
        .saturating_mul(4)
}

impl Connection {
    /// Connects to `server` ("host:port"), says hello as `agent` and waits for
    /// the welcome, all within `request_timeout`. Requests time out after
    /// `request_timeout` too.
    pub async fn connect(
        server: &str,
        tls: &Tls,
        agent: &str,
        request_timeout: Duration,
    ) -> Result<(Connection, Pushes)> {
        Self::connect_from(server, None, tls, agent, request_timeout).await
    }

    /// Like [`Connection::connect`], from the local address `source` (e.g. one
    /// of several loopback addresses, so that a load generator is not limited
    /// by the ephemeral ports of one address).
    pub async fn connect_from(
        server: &str,
        source: Option<std::net::IpAddr>,
        tls: &Tls,
        agent: &str,
        request_timeout: Duration,
    ) -> Result<(Connection, Pushes)> {
        let opened =
            tokio::time::timeout(request_timeout, handshake(server, source, tls, agent)).await;
        let (reader, writer, buf, welcome) = match opened {
            Ok(result) => result?,
            Err(_) => {
                return Err(ClientError::Connect {
                    server: server.to_owned(),
                    reason: "no welcome within the request timeout".to_owned(),
                });
            }
        };
        debug!(server, node = %welcome.node, "connected");
        let (writer_tx, writer_rx) = mpsc::unbounded_channel();
        let (push_tx, push_rx) = mpsc::unbounded_channel();
        let (closed_tx, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                pending: HashMap::new(),
                next_id: 1,
                closed: None,
            }),
            writer: writer_tx,
            closed: closed_tx,
            max_frame_bytes: welcome.max_frame_bytes,
            request_timeout,
        });
        tokio::spawn(write_loop(
            Arc::clone(&shared),
            writer,
            writer_rx,
            shared.closed.subscribe(),
        ));
        tokio::spawn(read_loop(
            Arc::clone(&shared),
            reader,
            buf,
            push_tx,
            shared.closed.subscribe(),
        ));
        tokio::spawn(heartbeat(
            Arc::downgrade(&shared),
            welcome.idle_timeout / 3,
            sweep_interval(request_timeout),
            shared.closed.subscribe(),
        ));
        Ok((
            Connection {
                shared,
                welcome,
                server: server.to_owned(),
            },
            push_rx,
        ))
    }

    /// What the node said in its welcome.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// The address this connection was opened to.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Sends `request` and waits for its answer (or the request timeout).
    /// A [`ServerFrame::Error`] answer is [`ClientError::Server`].
    pub async fn request(&self, request: Request) -> Result<Response> {
        let (tx, rx) = oneshot::channel();
        self.submit(request, move |result| {
            let _ = tx.send(result);
        });
        // The heartbeat fails the request at its deadline; the sender is never
        // dropped unanswered, but do not trust that with a hang.
        rx.await.unwrap_or(Err(ClientError::Timeout))
    }

    /// Sends `request` without waiting: `on_reply` is called exactly once, with
    /// the answer, the timeout, or the reason the request could not be sent
    /// (possibly before `submit` returns). Frames go out in submission order.
    pub fn submit(
        &self,
        request: Request,
        on_reply: impl FnOnce(Result<Response>) + Send + 'static,
    ) {
        self.shared.submit(request, Box::new(on_reply));
    }

    /// Acknowledges mailbox entries with an unanswered [`ClientFrame::Ack`]:
    /// `Ok` once the frame is queued behind every request submitted before
    /// it. An ack lost with the connection costs only a redelivery at the
    /// next login.
    pub fn ack(&self, ids: Vec<MessageId>) -> Result<()> {
        self.shared.send_unanswered(&ClientFrame::Ack { ids })
    }

    /// Logs in with `token`; returns the authenticated user.
    pub async fn login(&self, token: &str) -> Result<PhoneNumber> {
        let response = self
            .request(Request::Login {
                token: token.to_owned(),
            })
            .await?;
        match response {
            Response::LoggedIn { user } => Ok(user),
            other => Err(ClientError::Protocol(format!(
                "expected LoggedIn, got {other:?}"
            ))),
        }
    }

    /// Closes the connection: pending requests fail, TLS is closed cleanly.
    pub fn close(&self) {
        self.shared.close(DisconnectReason::Local);
    }

    /// Why the connection ended, once it has.
    pub fn disconnect_reason(&self) -> Option<DisconnectReason> {
        self.shared.lock().closed.clone()
    }

    /// Waits until the connection is closed; says why.
    pub async fn closed(&self) -> DisconnectReason {
        let mut closed = self.shared.closed.subscribe();
        wait_closed(&mut closed).await;
        self.disconnect_reason().unwrap_or(DisconnectReason::Local)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shared.close(DisconnectReason::Local);
    }
}

/// Returns once the connection is closed (or its state is gone).
async fn wait_closed(closed: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: drop it here.
    let _ = closed.wait_for(|closed| *closed).await;
}

fn sweep_interval(request_timeout: Duration) -> Duration {
    (request_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the table half-updated
        // in a way that matters here: keep going with what is there.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn submit(&self, request: Request, reply: Reply) {
        let mut state = self.lock();
        if let Some(reason) = &state.closed {
            let err = ClientError::ConnectionLost(reason.clone());
            drop(state);
            reply(Err(err));
            return;
        }
        let mut id = state.next_id;
        while state.pending.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        state.next_id = id.wrapping_add(1);
        let frame = ClientFrame::Request { id, request };
        let bytes = match encode_frame(&frame, self.max_frame_bytes) {
            Ok(bytes) => bytes,
            Err(e) => {
                drop(state);
                let err = match encode_frame(&frame, u32::MAX) {
                    Ok(bytes) => ClientError::FrameTooLarge {
                        len: bytes.len() - proto::LENGTH_PREFIX_BYTES,
                        max: self.max_frame_bytes,
                    },
                    Err(_) => ClientError::Protocol(e.to_string()),
                };
                reply(Err(err));
                return;
            }
        };
        trace!(id, "request");
        state.pending.insert(
            id,
            Pending {
                reply,
                deadline: Instant::now() + self.request_timeout,
            },
        );
        // Sent under the lock, so frames leave in id order.
        if self.writer.send(bytes).is_err() {
            let pending = state.pending.remove(&id);
            let reason = state
                .closed
                .clone()
                .unwrap_or_else(|| DisconnectReason::Io("writer stopped".to_owned()));
            drop(state);
            if let Some(p) = pending {
                (p.reply)(Err(ClientError::ConnectionLost(reason)));
            }
        }
    }

    fn send_unanswered(&self, frame: &ClientFrame) -> Result<()> {
        let bytes = encode_frame(frame, self.max_frame_bytes).map_err(|e| match e {
            CodecError::TooLarge { len, max } => ClientError::FrameTooLarge {
                len: len as usize,
                max,
            },
            other => ClientError::Protocol(other.to_string()),
        })?;
        let state = self.lock();
        if let Some(reason) = &state.closed {
            return Err(ClientError::ConnectionLost(reason.clone()));
        }
        // Sent under the lock, like requests, so it stays in order with them.
        self.writer.send(bytes).map_err(|_| {
            ClientError::ConnectionLost(DisconnectReason::Io("writer stopped".to_owned()))
        })
    }

    fn complete(&self, id: RequestId, result: Result<Response>) {
        let pending = self.lock().pending.remove(&id);
        match pending {
            Some(p) => (p.reply)(result),
            None => debug!(id, "answer to no pending request (timed out?)"),
        }
    }

    /// Fails every request whose deadline passed.
    fn sweep(&self, now: Instant) {
        let expired: Vec<Pending> = {
            let mut state = self.lock();
            let ids: Vec<RequestId> = state
                .pending
                .iter()
                .filter(|(_, p)| p.deadline <= now)
                .map(|(id, _)| *id)
                .collect();
            ids.iter()
                .filter_map(|id| state.pending.remove(id))
                .collect()
        };
        for p in expired {
            (p.reply)(Err(ClientError::Timeout));
        }
    }

    fn close(&self, reason: DisconnectReason) {
        let pending = {
            let mut state = self.lock();
            if state.closed.is_some() {
                return;
            }
            debug!(%reason, "connection closed");
            state.closed = Some(reason.clone());
            std::mem::take(&mut state.pending)
        };
        self.closed.send_replace(true);
        for (_, p) in pending {
            (p.reply)(Err(ClientError::ConnectionLost(reason.clone())));
        }
    }
}

type Stream = TlsStream<TcpStream>;

async fn open_tcp(server: &str, source: Option<std::net::IpAddr>) -> std::io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(server).await;
    };
    let mut last = None;
    for addr in tokio::net::lookup_host(server).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.bind(std::net::SocketAddr::new(source, 0))?;
        match socket.connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("the address resolved to nothing")))
}

async fn handshake(
    server: &str,
    source: Option<std::net::IpAddr>,
    tls: &Tls,
    agent: &str,
) -> Result<(ReadHalf<Stream>, WriteHalf<Stream>, Vec<u8>, Welcome)> {
    let connect_err = |reason: String| ClientError::Connect {
        server: server.to_owned(),
        reason,
    };
    let tcp = open_tcp(server, source)
        .await
        .map_err(|e| connect_err(e.to_string()))?;
    if let Err(e) = tcp.set_nodelay(true) {
        debug!(server, "cannot set TCP_NODELAY: {e}");
    }
    let stream = tls
        .connector()
        .connect(tls.server_name(), tcp)
        .await
        .map_err(|e| connect_err(format!("TLS: {e}")))?;
    let (mut reader, mut writer) = tokio::io::split(stream);
    let hello = ClientFrame::Hello {
        version: PROTOCOL_VERSION,
        agent: agent.to_owned(),
    };
    let bytes = encode_frame(&hello, DEFAULT_MAX_FRAME_BYTES)
        .map_err(|e| ClientError::Config(format!("agent string: {e}")))?;
    writer
        .write_all(&bytes)
        .await
        .map_err(|e| connect_err(e.to_string()))?;
    writer
        .flush()
        .await
        .map_err(|e| connect_err(e.to_string()))?;

    let mut buf = Vec::with_capacity(8 * 1024);
    loop {
        match decode_frame::<ServerFrame>(&buf, inbound_limit(DEFAULT_MAX_FRAME_BYTES)) {
            Ok(Some((frame, used))) => {
                buf.drain(..used);
                let welcome = match frame {
                    ServerFrame::Welcome {
                        version,
                        node,
                        max_frame_bytes,
                        idle_timeout_secs,
                    } => Welcome {
                        version,
                        node,
                        max_frame_bytes,
                        idle_timeout: Duration::from_secs(idle_timeout_secs.into()),
                    },
                    ServerFrame::Error { code, message, .. } => {
                        return Err(ClientError::Server { code, message });
                    }
                    ServerFrame::Closing {
                        reason,
                        retry_after_ms,
                    } => {
                        return Err(ClientError::ConnectionLost(DisconnectReason::Closing {
                            reason,
                            retry_after_ms,
                        }));
                    }
                    other => {
                        return Err(ClientError::Handshake(format!(
                            "expected Welcome, got {other:?}"
                        )));
                    }
                };
                if welcome.version != PROTOCOL_VERSION {
                    warn!(
                        server,
                        node_version = welcome.version,
                        "node speaks another protocol version"
                    );
                }
                return Ok((reader, writer, buf, welcome));
            }
            Ok(None) => {
                buf.reserve(8 * 1024);
                let n = reader
                    .read_buf(&mut buf)
                    .await
                    .map_err(|e| connect_err(e.to_string()))?;
                if n == 0 {
                    return Err(ClientError::Handshake(
                        "the node closed the connection before its welcome".to_owned(),
                    ));
                }
            }
            Err(e) => return Err(ClientError::Handshake(e.to_string())),
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    mut writer: W,
    mut frames: mpsc::UnboundedReceiver<Vec<u8>>,
    mut closed: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            biased;
            frame = frames.recv() => {
                let Some(mut bytes) = frame else { break };
                // Coalesce whatever else is queued into one write.
                while let Ok(more) = frames.try_recv() {
                    bytes.extend_from_slice(&more);
                    if bytes.len() >= 64 * 1024 {
                        break;
                    }
                }
                let written = async {
                    writer.write_all(&bytes).await?;
                    writer.flush().await
                };
                if let Err(e) = written.await {
                    shared.close(DisconnectReason::Io(e.to_string()));
                    return;
                }
            }
            () = wait_closed(&mut closed) => break,
        }
    }
    // Send TLS close_notify; a peer that is gone must not hold us.
    let _ = tokio::time::timeout(Duration::from_secs(1), writer.shutdown()).await;
}

async fn read_loop<R: AsyncRead + Unpin>(
    shared: Arc<Shared>,
    mut reader: R,
    mut buf: Vec<u8>,
    pushes: mpsc::UnboundedSender<ServerFrame>,
    mut closed: watch::Receiver<bool>,
) {
    let limit = inbound_limit(shared.max_frame_bytes);
    let reason = 'read: loop {
        // Every whole frame in the buffer first, then read more.
        let mut start = 0;
        loop {
            match decode_frame::<ServerFrame>(&buf[start..], limit) {
                Ok(Some((frame, used))) => {
                    start += used;
                    if let Some(reason) = dispatch(&shared, &pushes, frame) {
                        break 'read reason;
                    }
                }
                Ok(None) => break,
                Err(CodecError::Malformed {
                    request_id,
                    consumed,
                    reason,
                    ..
                }) => {
                    // Most likely a frame from a newer node: skip it, and fail
                    // the request it answered, if it said which.
                    warn!("skipping an undecodable frame from the node: {reason}");
                    start += consumed;
                    if let Some(id) = request_id {
                        shared.complete(
                            id,
                            Err(ClientError::Protocol(format!(
                                "undecodable answer: {reason}"
                            ))),
                        );
                    }
                }
                Err(e) => break 'read DisconnectReason::Protocol(e.to_string()),
            }
        }
        buf.drain(..start);
        buf.reserve(8 * 1024);
        tokio::select! {
            read = reader.read_buf(&mut buf) => match read {
                Ok(0) => break DisconnectReason::Eof,
                Ok(_) => {}
                Err(e) => break DisconnectReason::Io(e.to_string()),
            },
            () = wait_closed(&mut closed) => break DisconnectReason::Local,
        }
    };
    shared.close(reason);
    // Dropping `pushes` here tells the owner the connection is over.
}

/// Handles one frame from the node; `Some` ends the connection.
fn dispatch(
    shared: &Shared,
    pushes: &mpsc::UnboundedSender<ServerFrame>,
    frame: ServerFrame,
) -> Option<DisconnectReason> {
    match frame {
        ServerFrame::Response { id, response } => shared.complete(id, Ok(response)),
        ServerFrame::Error {
            id: Some(id),
            code,
            message,
        } => shared.complete(id, Err(ClientError::Server { code, message })),
        ServerFrame::Error {
            id: None,
            code,
            message,
        } => return Some(DisconnectReason::ServerError { code, message }),
        ServerFrame::Closing {
            reason,
            retry_after_ms,
        } => {
            return Some(DisconnectReason::Closing {
                reason,
                retry_after_ms,
            });
        }
        ServerFrame::Welcome { .. } => warn!("ignoring a second welcome"),
        push => {
            // The owner may have stopped listening; the pushes are then moot.
            let _ = pushes.send(push);
        }
    }
    None
}

async fn heartbeat(
    shared: Weak<Shared>,
    ping_every: Duration,
    sweep_every: Duration,
    mut closed: watch::Receiver<bool>,
) {
    let ping_every = (!ping_every.is_zero()).then(|| ping_every.max(Duration::from_millis(100)));
    let mut next_ping = ping_every.map(|every| Instant::now() + every);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(sweep_every) => {}
            () = wait_closed(&mut closed) => return,
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let now = Instant::now();
        shared.sweep(now);
        if let (Some(at), Some(every)) = (next_ping, ping_every)
            && at <= now
        {
            next_ping = Some(now + every);
            let weak = Arc::downgrade(&shared);
            shared.submit(
                Request::Ping,
                Box::new(move |result| match result {
                    Ok(_) => {}
                    Err(ClientError::Timeout) => {
                        if let Some(shared) = weak.upgrade() {
                            shared.close(DisconnectReason::Timeout);
                        }
                    }
                    Err(ClientError::Server {
                        code: ErrorCode::RateLimited { .. },
                        ..
                    }) => {}
                    Err(e) => debug!("ping failed: {e}"),
                }),
            );
        }
    }
}
