//! A fake node for tests: TLS with a throwaway certificate, and an in-memory
//! imitation of the node's contract (codes, tokens, mailboxes that keep an
//! entry until it is acked, receipts, typing, presence, an "echo" extension),
//! plus knobs to break things: drop every connection, store a send but lose
//! its ack, send `Closing`, push arbitrary frames.
//!
//! The verification code is always [`CODE`]; a token is `token:<phone>`.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use proto::{
    ClientFrame, CloseReason, DEFAULT_MAX_FRAME_BYTES, ErrorCode, MessageId, PhoneNumber,
    PresenceStatus, ReceiptKind, Request, Response, ServerFrame, decode_frame, encode_frame,
};
use rustls::crypto::ring;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

/// The only verification code the fake accepts.
pub const CODE: &str = "123456";

/// How the fake node presents itself.
#[derive(Debug, Clone)]
pub struct Options {
    pub idle_timeout_secs: u32,
    pub max_frame_bytes: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            idle_timeout_secs: 30,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
        }
    }
}

enum Out {
    Frame(ServerFrame),
    /// Write the frame (if any), then drop the socket without a TLS close.
    Close(Option<ServerFrame>),
}

struct Conn {
    user: Option<PhoneNumber>,
    tx: mpsc::UnboundedSender<Out>,
}

#[derive(Default)]
struct State {
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    /// Mailbox entries per user, oldest first.
    mailboxes: HashMap<PhoneNumber, Vec<ServerFrame>>,
    next_msg_id: MessageId,
    /// (sender, client_msg_id) → (msg_id, server_ts): the dedupe table.
    stored: HashMap<(PhoneNumber, u64), (MessageId, u64)>,
    /// msg_id → sender, for delivered receipts.
    senders: HashMap<MessageId, PhoneNumber>,
    /// Every Send request seen: (sender, client_msg_id).
    sends_seen: Vec<(PhoneNumber, u64)>,
    /// Every request seen, by kind name.
    requests_seen: Vec<String>,
    logins: u32,
    /// Store the next N sends but drop the connection instead of acking.
    lose_acks: u32,
    /// Answer nothing at all (to make the client's requests time out).
    mute: bool,
}

/// A running fake node. Dropping it stops accepting (open connections end
/// when their tasks notice).
pub struct FakeNode {
    pub addr: SocketAddr,
    pub ca_pem: Vec<u8>,
    state: Arc<Mutex<State>>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.drop_connections();
    }
}

use proto::clock::now_ms;

pub use test_support::phone;

pub fn token_for(user: &PhoneNumber) -> String {
    format!("token:{user}")
}

impl FakeNode {
    /// Starts on 127.0.0.1, port 0.
    pub async fn start(options: Options) -> FakeNode {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::start_on(listener, options)
    }

    /// Starts on `listener`.
    pub fn start_on(listener: TcpListener, options: Options) -> FakeNode {
        let addr = listener.local_addr().expect("local addr");
        let certified = test_support::self_signed(&["localhost", "switchboard", "127.0.0.1"]);
        let ca_pem = certified.cert_pem.into_bytes();
        let cert = CertificateDer::from(certified.cert_der);
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_der));
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .with_no_client_auth()
                .with_single_cert(vec![cert], key)
                .expect("server config");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let state = Arc::new(Mutex::new(State {
            next_msg_id: 1,
            ..State::default()
        }));
        let accept_state = Arc::clone(&state);
        let accept_task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let state = Arc::clone(&accept_state);
                let options = options.clone();
                tokio::spawn(async move {
                    let _ = serve(acceptor, tcp, state, options).await;
                });
            }
        });
        FakeNode {
            addr,
            ca_pem,
            state,
            accept_task,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("state lock")
    }

    /// Drops every connection without a word.
    pub fn drop_connections(&self) {
        for conn in self.lock().conns.values() {
            let _ = conn.tx.send(Out::Close(None));
        }
    }

    /// Sends `Closing` on every connection, then drops it.
    pub fn close_all(&self, reason: CloseReason, retry_after_ms: u32) {
        for conn in self.lock().conns.values() {
            let _ = conn.tx.send(Out::Close(Some(ServerFrame::Closing {
                reason,
                retry_after_ms,
            })));
        }
    }

    /// The next `n` sends are stored, but their connection drops before the ack.
    pub fn lose_acks(&self, n: u32) {
        self.lock().lose_acks = n;
    }

    /// Stops (or resumes) answering requests.
    pub fn set_mute(&self, mute: bool) {
        self.lock().mute = mute;
    }

    /// Pushes `frame` to every connection of `user`.
    pub fn push(&self, user: &PhoneNumber, frame: ServerFrame) {
        for conn in self.lock().conns.values() {
            if conn.user.as_ref() == Some(user) {
                let _ = conn.tx.send(Out::Frame(frame.clone()));
            }
        }
    }

    /// Every send request seen so far: (sender, client_msg_id).
    pub fn sends_seen(&self) -> Vec<(PhoneNumber, u64)> {
        self.lock().sends_seen.clone()
    }

    /// Names of every request seen so far, in order.
    pub fn requests_seen(&self) -> Vec<String> {
        self.lock().requests_seen.clone()
    }

    /// The ids waiting in `user`'s mailbox.
    pub fn mailbox(&self, user: &PhoneNumber) -> Vec<MessageId> {
        self.lock()
            .mailboxes
            .get(user)
            .map(|entries| entries.iter().filter_map(entry_id).collect())
            .unwrap_or_default()
    }

    /// Successful logins so far.
    pub fn logins(&self) -> u32 {
        self.lock().logins
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.lock().conns.len()
    }
}

fn entry_id(frame: &ServerFrame) -> Option<MessageId> {
    match frame {
        ServerFrame::Deliver { msg_id, .. } => Some(*msg_id),
        ServerFrame::Receipt { id, .. } => Some(*id),
        _ => None,
    }
}

async fn serve(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    state: Arc<Mutex<State>>,
    options: Options,
) -> std::io::Result<()> {
    let stream = acceptor.accept(tcp).await?;
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let id = {
        let mut st = state.lock().expect("state lock");
        let id = st.next_conn;
        st.next_conn += 1;
        st.conns.insert(
            id,
            Conn {
                user: None,
                tx: tx.clone(),
            },
        );
        id
    };
    let mut buf = Vec::new();
    let mut hello_done = false;
    let result = loop {
        // Handle every whole frame, then wait for bytes or something to write.
        let mut start = 0;
        let mut broken = false;
        loop {
            match decode_frame::<ClientFrame>(&buf[start..], options.max_frame_bytes) {
                Ok(Some((frame, used))) => {
                    start += used;
                    match frame {
                        ClientFrame::Hello { .. } if !hello_done => {
                            hello_done = true;
                            let _ = tx.send(Out::Frame(ServerFrame::Welcome {
                                version: proto::PROTOCOL_VERSION,
                                node: "fake".to_owned(),
                                max_frame_bytes: options.max_frame_bytes,
                                idle_timeout_secs: options.idle_timeout_secs,
                            }));
                        }
                        ClientFrame::Request { id: rid, request } if hello_done => {
                            handle(&state, id, rid, request);
                        }
                        ClientFrame::Ack { ids } if hello_done => handle_ack(&state, id, &ids),
                        _ => broken = true,
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        buf.drain(..start);
        if broken {
            break Ok(());
        }
        tokio::select! {
            read = reader.read_buf(&mut buf) => match read {
                Ok(0) => break Ok(()),
                Ok(_) => {}
                Err(e) => break Err(e),
            },
            out = rx.recv() => match out {
                Some(Out::Frame(frame)) => {
                    let bytes = encode_frame(&frame, u32::MAX).expect("encode");
                    writer.write_all(&bytes).await?;
                    writer.flush().await?;
                }
                Some(Out::Close(last)) => {
                    if let Some(frame) = last {
                        let bytes = encode_frame(&frame, u32::MAX).expect("encode");
                        let _ = writer.write_all(&bytes).await;
                        let _ = writer.flush().await;
                    }
                    break Ok(());
                }
                None => break Ok(()),
            },
        }
    };
    state.lock().expect("state lock").conns.remove(&id);
    result
}

fn request_name(request: &Request) -> String {
    let debug = format!("{request:?}");
    debug
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn handle(state: &Mutex<State>, conn: u64, rid: u32, request: Request) {
    let mut st = state.lock().expect("state lock");
    st.requests_seen.push(request_name(&request));
    if st.mute {
        return;
    }
    let Some(tx) = st.conns.get(&conn).map(|c| c.tx.clone()) else {
        return;
    };
    let answer = |response: Response| {
        let _ = tx.send(Out::Frame(ServerFrame::Response { id: rid, response }));
    };
    let error = |code: ErrorCode, message: &str| {
        let _ = tx.send(Out::Frame(ServerFrame::Error {
            id: Some(rid),
            code,
            message: message.to_owned(),
        }));
    };
    let me = st.conns.get(&conn).and_then(|c| c.user.clone());
    match (request, me) {
        (Request::Ping, _) => answer(Response::Pong),
        (Request::RequestCode { .. }, _) => answer(Response::CodeSent {
            expires_in_secs: 300,
        }),
        (Request::Verify { phone, code }, _) => {
            if code == CODE {
                answer(Response::Verified {
                    token: token_for(&phone),
                    expires_at_ms: now_ms() + 86_400_000,
                });
            } else {
                error(ErrorCode::InvalidCode, "wrong code");
            }
        }
        (Request::Login { .. }, Some(_)) => error(ErrorCode::AlreadyLoggedIn, "already"),
        (Request::Login { token }, None) => {
            let Some(user) = token
                .strip_prefix("token:")
                .and_then(|p| PhoneNumber::parse(p).ok())
            else {
                error(ErrorCode::InvalidToken, "unknown token");
                return;
            };
            for (other_id, other) in &st.conns {
                if *other_id != conn && other.user.as_ref() == Some(&user) {
                    let _ = other.tx.send(Out::Close(Some(ServerFrame::Closing {
                        reason: CloseReason::Replaced,
                        retry_after_ms: 0,
                    })));
                }
            }
            if let Some(c) = st.conns.get_mut(&conn) {
                c.user = Some(user.clone());
            }
            st.logins += 1;
            answer(Response::LoggedIn { user: user.clone() });
            for frame in st.mailboxes.get(&user).cloned().unwrap_or_default() {
                let _ = tx.send(Out::Frame(frame));
            }
        }
        (_, None) => error(ErrorCode::NotAuthenticated, "log in first"),
        (Request::SendAfter { after, .. }, Some(me))
            if !st.stored.contains_key(&(me.clone(), after)) =>
        {
            error(
                ErrorCode::EarlierMessageMissing,
                "send the earlier one first",
            );
        }
        (
            Request::Send {
                to,
                client_msg_id,
                payload,
            }
            | Request::SendAfter {
                to,
                client_msg_id,
                payload,
                ..
            },
            Some(me),
        ) => {
            st.sends_seen.push((me.clone(), client_msg_id));
            let key = (me.clone(), client_msg_id);
            let (msg_id, server_ts) = match st.stored.get(&key) {
                Some(stored) => *stored,
                None => {
                    let msg_id = st.next_msg_id;
                    st.next_msg_id += 1;
                    let server_ts = now_ms();
                    st.stored.insert(key, (msg_id, server_ts));
                    st.senders.insert(msg_id, me.clone());
                    let frame = ServerFrame::Deliver {
                        msg_id,
                        from: me.clone(),
                        client_msg_id,
                        server_ts,
                        payload,
                    };
                    deposit(&mut st, &to, frame);
                    (msg_id, server_ts)
                }
            };
            if st.lose_acks > 0 {
                st.lose_acks -= 1;
                let _ = tx.send(Out::Close(None));
                return;
            }
            answer(Response::ServerAck {
                client_msg_id,
                msg_id,
                server_ts,
            });
        }
        (Request::SetRegistrationLock { .. } | Request::VerifyWithPin { .. }, Some(_)) => {
            error(
                ErrorCode::UnknownRequest,
                "the fake node has no registration lock",
            );
        }
        // Groups are tested against a real node (crates/node/tests).
        (
            Request::CreateGroup { .. }
            | Request::CreateGroupOnce { .. }
            | Request::ChangeGroup { .. }
            | Request::GroupInfo { .. }
            | Request::SendGroup { .. }
            | Request::ListGroups
            | Request::ReadGroup { .. }
            | Request::GroupMessageInfo { .. },
            Some(_),
        ) => error(ErrorCode::UnknownRequest, "the fake node has no groups"),
        (Request::Ack { ids }, Some(me)) => {
            acknowledge(&mut st, &me, &ids);
            answer(Response::Ok);
        }
        (Request::Read { sender, ids }, Some(me)) => {
            receipt(&mut st, &sender, ReceiptKind::Read, &me, ids);
            answer(Response::Ok);
        }
        (Request::Typing { to, active }, Some(me)) => {
            send_to(&st, &to, ServerFrame::Typing { from: me, active });
            answer(Response::Ok);
        }
        // This stand-in shows everyone to everyone; the node's rule is
        // tested against the node (tests/abuse/presence.rs).
        (Request::SetContacts { .. } | Request::SetPresencePrivacy { .. }, Some(_)) => {
            answer(Response::Ok);
        }
        (Request::SubscribePresence { users }, Some(_)) => {
            answer(Response::Ok);
            for user in users {
                let online = st.conns.values().any(|c| c.user.as_ref() == Some(&user));
                let status = if online {
                    PresenceStatus::Online
                } else {
                    PresenceStatus::Offline { last_seen_ms: None }
                };
                let _ = tx.send(Out::Frame(ServerFrame::Presence { user, status }));
            }
        }
        (Request::Extension { namespace, body }, Some(_)) => {
            if namespace == "echo" {
                answer(Response::Extension { body });
            } else {
                error(ErrorCode::UnknownNamespace, "no such extension");
            }
        }
        (Request::Logout, Some(_)) => {
            answer(Response::Ok);
            let _ = tx.send(Out::Close(Some(ServerFrame::Closing {
                reason: CloseReason::LoggedOut,
                retry_after_ms: 0,
            })));
        }
        (Request::MintTestUsers { .. }, Some(_)) => {
            error(ErrorCode::InvalidRequest, "not offered by the fake node");
        }
    }
}

/// An unanswered `ClientFrame::Ack` (protocol 2); ignored before login.
fn handle_ack(state: &Mutex<State>, conn: u64, ids: &[MessageId]) {
    let mut st = state.lock().expect("state lock");
    st.requests_seen.push("Ack".to_owned());
    if st.mute {
        return;
    }
    if let Some(me) = st.conns.get(&conn).and_then(|c| c.user.clone()) {
        acknowledge(&mut st, &me, ids);
    }
}

/// Drops acked entries of `me` and stores a `Delivered` receipt per sender.
fn acknowledge(st: &mut State, me: &PhoneNumber, ids: &[MessageId]) {
    let entries = st.mailboxes.entry(me.clone()).or_default();
    let mut delivered: Vec<MessageId> = Vec::new();
    entries.retain(|entry| match entry {
        ServerFrame::Deliver { msg_id, .. } if ids.contains(msg_id) => {
            delivered.push(*msg_id);
            false
        }
        ServerFrame::Receipt { id, .. } => !ids.contains(id),
        _ => true,
    });
    let mut by_sender: HashMap<PhoneNumber, Vec<MessageId>> = HashMap::new();
    for msg_id in delivered {
        if let Some(sender) = st.senders.get(&msg_id) {
            by_sender.entry(sender.clone()).or_default().push(msg_id);
        }
    }
    for (sender, msg_ids) in by_sender {
        receipt(st, &sender, ReceiptKind::Delivered, me, msg_ids);
    }
}

fn receipt(
    st: &mut State,
    to: &PhoneNumber,
    kind: ReceiptKind,
    by: &PhoneNumber,
    msg_ids: Vec<MessageId>,
) {
    let id = st.next_msg_id;
    st.next_msg_id += 1;
    let frame = ServerFrame::Receipt {
        id,
        kind,
        by: by.clone(),
        msg_ids,
        ts: now_ms(),
    };
    deposit(st, to, frame);
}

/// Stores a mailbox entry and pushes it to the user if online.
fn deposit(st: &mut State, to: &PhoneNumber, frame: ServerFrame) {
    st.mailboxes
        .entry(to.clone())
        .or_default()
        .push(frame.clone());
    send_to(st, to, frame);
}

fn send_to(st: &State, to: &PhoneNumber, frame: ServerFrame) {
    for conn in st.conns.values() {
        if conn.user.as_ref() == Some(to) {
            let _ = conn.tx.send(Out::Frame(frame.clone()));
        }
    }
}
