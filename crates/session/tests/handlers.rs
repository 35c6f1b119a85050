//! The session's request handlers against stand-in services: a real
//! session actor and its real reader and writer over an in-memory stream,
//! with mailboxes, accounts and presence played by [`StandIn`] (no node,
//! no sockets, no disk). What a node adds is tested in `crates/node`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use auth::{AuthError, Authenticated, BucketConfig, CodeSent, IssuedToken, TokenBucket};
use offline_queue::fragment::{GroupAnswer, GroupRequest, ReceiptRequest};
use offline_queue::{Endpoint, Entry, EntryBody, FragmentError, NewMessage, Push, Stored};
use presence::PresencePush;
use proto::{
    ClientFrame, CloseReason, ErrorCode, MessageId, PROTOCOL_VERSION, PhoneNumber, Request,
    Response, ServerFrame,
};
use ractor::{Actor, ActorRef, DerivedActorRef};
use router::FragmentId;
use session::admission::Admission;
use session::extension::ExtensionRequest;
use session::services::{Boxed, ExtensionRefusal, GroupReply, MailboxAnswer, PolicyChange};
use session::{Services, SessionActor, SessionArgs, SessionConfig, SessionContext, SessionMsg};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::watch;

const GOOD_TOKEN: &str = "good-token";
const REVOKED_TOKEN: &str = "revoked-token";
const GOOD_CODE: &str = "123456";
/// Guards reads so that a broken session fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(10);

use test_support::numbered as phone;

/// What the stand-in services saw and how they behave.
#[derive(Default)]
struct StandIn {
    /// Messages handed to a mailbox, in hand-over order.
    appended: Mutex<Vec<NewMessage>>,
    /// Acks handed to a mailbox.
    acked: Mutex<Vec<(PhoneNumber, Vec<MessageId>)>>,
    /// Receipts handed to the reader's mailbox.
    receipts: Mutex<Vec<ReceiptRequest>>,
    /// Group requests handed to a group's fragment, in hand-over order.
    groups: Mutex<Vec<GroupRequest>>,
    /// The session attached per user (its push target).
    attached: Mutex<HashMap<PhoneNumber, Endpoint>>,
    detached: AtomicU64,
    offline: AtomicU64,
    online: AtomicU64,
    typing: Mutex<Vec<(PhoneNumber, PhoneNumber, bool)>>,
    logged_out: Mutex<Vec<PhoneNumber>>,
    /// Mailboxes refuse hand-overs (a fragment away).
    mailbox_away: AtomicBool,
    /// Durable answers wait while this holds `true` (to test pipelining).
    hold_answers: watch::Sender<bool>,
    next_id: AtomicU64,
}

impl StandIn {
    fn answer(self: &Arc<Self>) -> MailboxAnswer {
        let this = self.clone();
        let msg_id = self.next_id.fetch_add(1, Ordering::SeqCst) + 1;
        Box::pin(async move {
            let mut held = this.hold_answers.subscribe();
            let _ = held.wait_for(|held| !*held).await;
            Ok(Stored {
                msg_id,
                server_ts: 1_700_000_000_000,
            })
        })
    }

    fn refusal(&self) -> Option<FragmentError> {
        self.mailbox_away
            .load(Ordering::SeqCst)
            .then_some(FragmentError::Unavailable(0))
    }
}

/// The trait wants `Services` on a type; the stand-in is shared with the
/// test through an `Arc`.
struct Shared(Arc<StandIn>);

impl Services for Shared {
    fn fragment_of(&self, _user: &PhoneNumber) -> FragmentId {
        0
    }

    fn append(&self, message: NewMessage) -> Boxed<Result<MailboxAnswer, FragmentError>> {
        let result = match self.0.refusal() {
            Some(e) => Err(e),
            None => {
                self.0.appended.lock().expect("lock").push(message);
                Ok(self.0.answer())
            }
        };
        Box::pin(async move { result })
    }

    fn store_receipt(
        &self,
        _reader: PhoneNumber,
        request: ReceiptRequest,
    ) -> Boxed<Result<MailboxAnswer, FragmentError>> {
        self.0.receipts.lock().expect("lock").push(request);
        let answer = self.0.answer();
        Box::pin(async move { Ok(answer) })
    }

    fn ack(&self, user: PhoneNumber, ids: Vec<MessageId>) -> Boxed<Result<(), FragmentError>> {
        let result = match self.0.refusal() {
            Some(e) => Err(e),
            None => {
                self.0.acked.lock().expect("lock").push((user, ids));
                Ok(())
            }
        };
        Box::pin(async move { result })
    }

    fn attach(&self, user: PhoneNumber, endpoint: Endpoint) -> Boxed<Result<(), FragmentError>> {
        let result = if endpoint.token_generation == Some(0) {
            Err(FragmentError::TokenRevoked)
        } else {
            self.0.attached.lock().expect("lock").insert(user, endpoint);
            Ok(())
        };
        Box::pin(async move { result })
    }

    fn detach(&self, _user: PhoneNumber, _session_id: u64) {
        self.0.detached.fetch_add(1, Ordering::SeqCst);
    }

    fn group(&self, request: GroupRequest) -> Boxed<Result<GroupReply, FragmentError>> {
        if let Some(e) = self.0.refusal() {
            return Box::pin(async move { Err(e) });
        }
        let answer = match &request {
            GroupRequest::Create { .. } | GroupRequest::CreateOnce { .. } => {
                GroupAnswer::Created { group: 42 }
            }
            GroupRequest::Change { .. } | GroupRequest::Read { .. } => GroupAnswer::Changed,
            GroupRequest::MessageInfo {
                group,
                by,
                position,
            } => GroupAnswer::MessageInfo {
                group: *group,
                position: *position,
                members: vec![(by.clone(), None)],
            },
            GroupRequest::Info { group, by } => GroupAnswer::Info {
                group: *group,
                name: "stand-in".into(),
                members: vec![(by.clone(), proto::GroupRole::Admin)],
            },
            GroupRequest::List { .. } => GroupAnswer::Groups(vec![42]),
            GroupRequest::Send { .. } => GroupAnswer::Sent(Stored {
                msg_id: 9,
                server_ts: 1,
            }),
        };
        self.0.groups.lock().expect("lock").push(request);
        let reply: GroupReply = Box::pin(async move { Ok(answer) });
        Box::pin(async move { Ok(reply) })
    }

    fn request_code(
        &self,
        _phone: PhoneNumber,
        _source: Option<IpAddr>,
    ) -> Boxed<auth::Result<CodeSent>> {
        Box::pin(async {
            Ok(CodeSent {
                expires_in_secs: 300,
            })
        })
    }

    fn verify(
        &self,
        _phone: PhoneNumber,
        code: String,
        _pin: Option<String>,
        _source: Option<IpAddr>,
    ) -> Boxed<auth::Result<IssuedToken>> {
        Box::pin(async move {
            if code == GOOD_CODE {
                Ok(IssuedToken {
                    token: GOOD_TOKEN.into(),
                    expires_at_ms: u64::MAX,
                    generation: 1,
                })
            } else {
                Err(AuthError::InvalidCode { attempts_left: 4 })
            }
        })
    }

    fn set_registration_lock(
        &self,
        _user: PhoneNumber,
        _pin: Option<String>,
    ) -> Boxed<auth::Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn authenticate(&self, token: String) -> Boxed<auth::Result<Authenticated>> {
        Box::pin(async move {
            // The revoked token is one whose generation the mailbox refuses.
            let generation = match token.as_str() {
                GOOD_TOKEN => 1,
                REVOKED_TOKEN => 0,
                _ => return Err(AuthError::InvalidToken),
            };
            Ok(Authenticated {
                phone: phone(1),
                generation,
            })
        })
    }

    fn logout(&self, user: PhoneNumber) -> Boxed<auth::Result<u64>> {
        self.0.logged_out.lock().expect("lock").push(user);
        Box::pin(async { Ok(2) })
    }

    fn mint_test_users(&self, phones: Vec<PhoneNumber>) -> Boxed<auth::Result<Vec<IssuedToken>>> {
        Box::pin(async move {
            Ok(phones
                .iter()
                .map(|p| IssuedToken {
                    token: format!("minted-{p}"),
                    expires_at_ms: u64::MAX,
                    generation: 1,
                })
                .collect())
        })
    }

    fn code_bucket(&self, now_ms: u64) -> TokenBucket {
        // Two code requests per connection, then it is closed.
        TokenBucket::new(
            BucketConfig {
                burst: 2,
                per_hour: 1,
            },
            now_ms,
        )
    }

    fn verify_bucket(&self, now_ms: u64) -> TokenBucket {
        TokenBucket::new(
            BucketConfig {
                burst: 10,
                per_hour: 10,
            },
            now_ms,
        )
    }

    fn online(
        &self,
        _user: PhoneNumber,
        _session_id: u64,
        _target: DerivedActorRef<PresencePush>,
    ) -> Boxed<()> {
        self.0.online.fetch_add(1, Ordering::SeqCst);
        Box::pin(async {})
    }

    fn offline(&self, _user: PhoneNumber, _session_id: u64) {
        self.0.offline.fetch_add(1, Ordering::SeqCst);
    }

    fn typing(&self, from: PhoneNumber, to: PhoneNumber, active: bool) {
        self.0.typing.lock().expect("lock").push((from, to, active));
    }

    fn subscribe(&self, _subscriber: PhoneNumber, _users: Vec<PhoneNumber>) {}

    fn update_presence_policy(
        &self,
        _user: PhoneNumber,
        _change: PolicyChange,
    ) -> Boxed<Result<(), String>> {
        Box::pin(async { Ok(()) })
    }

    fn extension(
        &self,
        namespace: &str,
        request: ExtensionRequest,
    ) -> Result<(), ExtensionRefusal> {
        match namespace {
            "echo" => {
                let _ = request.reply.send(Ok(request.body));
                Ok(())
            }
            "restarting" => Err(ExtensionRefusal::Restarting),
            _ => Err(ExtensionRefusal::Unknown),
        }
    }
}

/// The client's end of one session.
struct Client {
    stream: DuplexStream,
    buf: Vec<u8>,
    next_id: u32,
    session: ActorRef<SessionMsg>,
}

impl Client {
    async fn send(&mut self, frame: &ClientFrame) {
        let bytes = proto::encode_frame(frame, proto::DEFAULT_MAX_FRAME_BYTES).expect("encode");
        self.stream.write_all(&bytes).await.expect("write");
    }

    async fn request(&mut self, request: Request) -> u32 {
        self.next_id += 1;
        let id = self.next_id;
        self.send(&ClientFrame::Request { id, request }).await;
        id
    }

    /// The next frame, or `None` once the session closed the stream.
    async fn next(&mut self) -> Option<ServerFrame> {
        loop {
            if let Some((frame, used)) =
                proto::decode_frame::<ServerFrame>(&self.buf, proto::DEFAULT_MAX_FRAME_BYTES)
                    .expect("the session sends valid frames")
            {
                self.buf.drain(..used);
                return Some(frame);
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk))
                .await
                .expect("the session answers")
                .expect("read");
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn expect(&mut self) -> ServerFrame {
        self.next().await.expect("a frame before the stream ended")
    }

    async fn response_to(&mut self, id: u32) -> Result<Response, ErrorCode> {
        match self.expect().await {
            ServerFrame::Response { id: got, response } if got == id => Ok(response),
            ServerFrame::Error {
                id: Some(got),
                code,
                ..
            } if got == id => Err(code),
            other => panic!("expected the answer to {id}, got {other:?}"),
        }
    }

    async fn hello(&mut self) {
        self.send(&ClientFrame::Hello {
            version: PROTOCOL_VERSION,
            agent: "handlers-test".into(),
        })
        .await;
        assert!(matches!(self.expect().await, ServerFrame::Welcome { .. }));
    }

    async fn login(&mut self, token: &str) -> Result<Response, ErrorCode> {
        let id = self
            .request(Request::Login {
                token: token.into(),
            })
            .await;
        self.response_to(id).await
    }

    /// Expects `Closing` for `reason`, then the end of the stream.
    async fn expect_closed(&mut self, reason: CloseReason) {
        match self.expect().await {
            ServerFrame::Closing { reason: got, .. } => assert_eq!(got, reason),
            other => panic!("expected Closing({reason:?}), got {other:?}"),
        }
        assert!(self.next().await.is_none(), "the stream ends after Closing");
    }
}

async fn start(config: SessionConfig) -> (Client, Arc<StandIn>) {
    let stand_in = Arc::new(StandIn::default());
    let ctx = SessionContext {
        admission: Admission::new(config.admission_limits()),
        config,
        node_name: "stand-in".into(),
        services: Arc::new(Shared(stand_in.clone())),
    };
    let (client_end, session_end) = tokio::io::duplex(64 * 1024);
    let args = SessionArgs {
        ctx: Arc::new(ctx),
        stream: Box::new(session_end),
        peer: "127.0.0.1:40000".parse().expect("address"),
        ticket: None,
    };
    let (session, _handle) = Actor::spawn(None, SessionActor, args)
        .await
        .expect("session starts");
    let client = Client {
        stream: client_end,
        buf: Vec::new(),
        next_id: 0,
        session,
    };
    (client, stand_in)
}

async fn logged_in(config: SessionConfig) -> (Client, Arc<StandIn>) {
    let (mut client, stand_in) = start(config).await;
    client.hello().await;
    let answer = client.login(GOOD_TOKEN).await;
    assert_eq!(answer, Ok(Response::LoggedIn { user: phone(1) }));
    (client, stand_in)
}

fn send_to(to: u64, client_msg_id: u64) -> Request {
    Request::Send {
        to: phone(to),
        client_msg_id,
        payload: vec![7; 16],
    }
}

#[tokio::test]
async fn a_request_before_login_is_refused_and_the_connection_closed() {
    let (mut client, stand_in) = start(SessionConfig::default()).await;
    client.hello().await;
    let id = client.request(send_to(2, 1)).await;
    assert_eq!(
        client.response_to(id).await,
        Err(ErrorCode::NotAuthenticated)
    );
    client.expect_closed(CloseReason::ProtocolViolation).await;
    assert!(stand_in.appended.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn verify_then_login_then_send_gets_the_server_ack() {
    let (mut client, stand_in) = start(SessionConfig::default()).await;
    client.hello().await;
    let id = client
        .request(Request::RequestCode { phone: phone(1) })
        .await;
    assert_eq!(
        client.response_to(id).await,
        Ok(Response::CodeSent {
            expires_in_secs: 300
        })
    );
    let id = client
        .request(Request::Verify {
            phone: phone(1),
            code: "000000".into(),
        })
        .await;
    assert_eq!(client.response_to(id).await, Err(ErrorCode::InvalidCode));
    let id = client
        .request(Request::Verify {
            phone: phone(1),
            code: GOOD_CODE.into(),
        })
        .await;
    let Ok(Response::Verified { token, .. }) = client.response_to(id).await else {
        panic!("verified");
    };
    assert_eq!(
        client.login(&token).await,
        Ok(Response::LoggedIn { user: phone(1) })
    );
    assert_eq!(stand_in.online.load(Ordering::SeqCst), 1);

    let id = client.request(send_to(2, 41)).await;
    assert_eq!(
        client.response_to(id).await,
        Ok(Response::ServerAck {
            client_msg_id: 41,
            msg_id: 1,
            server_ts: 1_700_000_000_000
        })
    );
    let appended = stand_in.appended.lock().expect("lock").clone();
    assert_eq!(appended.len(), 1);
    assert_eq!(
        (appended[0].from.clone(), appended[0].to.clone()),
        (phone(1), phone(2))
    );
    assert_eq!(appended[0].after, None);
}

#[tokio::test]
async fn pushed_entries_reach_the_client_and_its_acks_reach_the_mailbox() {
    let (mut client, stand_in) = logged_in(SessionConfig::default()).await;
    let endpoint = stand_in
        .attached
        .lock()
        .expect("lock")
        .get(&phone(1))
        .cloned()
        .expect("attached at login");
    let entry = Entry {
        id: 77,
        body: EntryBody::Message {
            from: phone(3),
            client_msg_id: 5,
            server_ts: 1,
            payload: b"hi".to_vec(),
        },
    };
    endpoint
        .target
        .send_message(Push::Entries(vec![entry]))
        .expect("push");
    match client.expect().await {
        ServerFrame::Deliver {
            msg_id,
            from,
            payload,
            ..
        } => assert_eq!((msg_id, from, payload), (77, phone(3), b"hi".to_vec())),
        other => panic!("expected the entry, got {other:?}"),
    }
    client.send(&ClientFrame::Ack { ids: vec![77] }).await;
    // Acks are not answered; a ping behind it shows it was handled.
    let id = client.request(Request::Ping).await;
    assert_eq!(client.response_to(id).await, Ok(Response::Pong));
    assert_eq!(
        *stand_in.acked.lock().expect("lock"),
        vec![(phone(1), vec![77])]
    );
}

/// Group requests name the logged-in user as the one who asks (a client
/// cannot act for another), reach the group's fragment in the order sent,
/// and each gets its kind of answer; group entries are pushed as group
/// frames.
#[tokio::test]
async fn group_requests_act_as_the_logged_in_user_and_entries_arrive_as_group_frames() {
    let (mut client, stand_in) = logged_in(SessionConfig::default()).await;
    let create = client
        .request(Request::CreateGroup {
            name: "team".into(),
            members: vec![phone(2)],
        })
        .await;
    let send = client
        .request(Request::SendGroup {
            group: 42,
            client_msg_id: 3,
            after: None,
            payload: b"hi all".to_vec(),
        })
        .await;
    let leave = client
        .request(Request::ChangeGroup {
            group: 42,
            command: proto::GroupCommand::Leave,
        })
        .await;
    let info = client.request(Request::GroupInfo { group: 42 }).await;
    let create_once = client
        .request(Request::CreateGroupOnce {
            create_id: 5,
            name: "again".into(),
            members: vec![phone(3)],
        })
        .await;
    let mut answers = HashMap::new();
    for _ in 0..5 {
        match client.expect().await {
            ServerFrame::Response { id, response } => {
                answers.insert(id, response);
            }
            other => panic!("expected answers, got {other:?}"),
        }
    }
    assert_eq!(answers[&create], Response::GroupCreated { group: 42 });
    assert_eq!(
        answers[&send],
        Response::ServerAck {
            client_msg_id: 3,
            msg_id: 9,
            server_ts: 1
        }
    );
    assert_eq!(answers[&leave], Response::Ok);
    assert!(matches!(
        &answers[&info],
        Response::GroupInfo { group: 42, .. }
    ));
    assert_eq!(answers[&create_once], Response::GroupCreated { group: 42 });
    let handed = stand_in.groups.lock().expect("lock").clone();
    assert_eq!(
        handed,
        vec![
            GroupRequest::Create {
                creator: phone(1),
                name: "team".into(),
                members: vec![phone(2)],
            },
            GroupRequest::Send {
                group: 42,
                from: phone(1),
                client_msg_id: 3,
                after: None,
                payload: b"hi all".to_vec(),
            },
            GroupRequest::Change {
                group: 42,
                by: phone(1),
                command: proto::GroupCommand::Leave,
            },
            GroupRequest::Info {
                group: 42,
                by: phone(1)
            },
            GroupRequest::CreateOnce {
                creator: phone(1),
                create_id: 5,
                name: "again".into(),
                members: vec![phone(3)],
            },
        ]
    );

    let endpoint = stand_in
        .attached
        .lock()
        .expect("lock")
        .get(&phone(1))
        .cloned()
        .expect("attached at login");
    let entry = Entry {
        id: 80,
        body: EntryBody::Group {
            group: 42,
            position: 7,
            item: offline_queue::entry::GroupItem::Message {
                from: phone(2),
                client_msg_id: 1,
                server_ts: 5,
                payload: b"yo".to_vec(),
            },
        },
    };
    endpoint
        .target
        .send_message(Push::Entries(vec![entry]))
        .expect("push");
    assert_eq!(
        client.expect().await,
        ServerFrame::GroupDeliver {
            msg_id: 80,
            group: 42,
            position: 7,
            from: phone(2),
            client_msg_id: 1,
            server_ts: 5,
            payload: b"yo".to_vec(),
        }
    );
}

#[tokio::test]
async fn pipelined_sends_reach_the_mailbox_in_order_before_any_is_answered() {
    let (mut client, stand_in) = logged_in(SessionConfig::default()).await;
    stand_in.hold_answers.send_replace(true);
    let mut ids = Vec::new();
    for n in 1..=20 {
        ids.push(client.request(send_to(2, n)).await);
    }
    // A ping overtakes the held answers: the session kept reading.
    let ping = client.request(Request::Ping).await;
    assert_eq!(client.response_to(ping).await, Ok(Response::Pong));
    let order: Vec<u64> = stand_in
        .appended
        .lock()
        .expect("lock")
        .iter()
        .map(|m| m.client_msg_id)
        .collect();
    assert_eq!(order, (1..=20).collect::<Vec<_>>());
    stand_in.hold_answers.send_replace(false);
    let mut acked = Vec::new();
    for _ in &ids {
        match client.expect().await {
            ServerFrame::Response {
                response: Response::ServerAck { client_msg_id, .. },
                ..
            } => acked.push(client_msg_id),
            other => panic!("expected a server ack, got {other:?}"),
        }
    }
    acked.sort_unstable();
    assert_eq!(acked, (1..=20).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_send_that_meets_a_mailbox_away_is_refused_and_the_session_goes_on() {
    let (mut client, stand_in) = logged_in(SessionConfig::default()).await;
    stand_in.mailbox_away.store(true, Ordering::SeqCst);
    let id = client.request(send_to(2, 1)).await;
    assert_eq!(
        client.response_to(id).await,
        Err(ErrorCode::Unavailable {
            retry_after_ms: 1000
        })
    );
    stand_in.mailbox_away.store(false, Ordering::SeqCst);
    let id = client.request(send_to(2, 1)).await;
    assert!(matches!(
        client.response_to(id).await,
        Ok(Response::ServerAck {
            client_msg_id: 1,
            ..
        })
    ));
}

#[tokio::test]
async fn a_login_the_mailbox_refuses_leaves_a_guest_that_may_log_in_again() {
    let (mut client, stand_in) = start(SessionConfig::default()).await;
    client.hello().await;
    assert_eq!(
        client.login(REVOKED_TOKEN).await,
        Err(ErrorCode::InvalidToken)
    );
    // The half-made login was undone at the mailbox and presence.
    assert_eq!(stand_in.detached.load(Ordering::SeqCst), 1);
    assert_eq!(stand_in.offline.load(Ordering::SeqCst), 1);
    assert_eq!(
        client.login("no-such-token").await,
        Err(ErrorCode::InvalidToken)
    );
    assert_eq!(
        client.login(GOOD_TOKEN).await,
        Ok(Response::LoggedIn { user: phone(1) })
    );
    let id = client.request(Request::Login {
        token: GOOD_TOKEN.into(),
    });
    let id = id.await;
    assert_eq!(
        client.response_to(id).await,
        Err(ErrorCode::AlreadyLoggedIn)
    );
}

#[tokio::test]
async fn an_ack_frame_beyond_the_limit_closes_the_connection() {
    let (mut client, stand_in) = logged_in(SessionConfig::default()).await;
    let ids: Vec<MessageId> = (1..=proto::MAX_IDS_PER_ACK as u64 + 1).collect();
    client.send(&ClientFrame::Ack { ids }).await;
    match client.expect().await {
        ServerFrame::Error { id: None, code, .. } => assert_eq!(code, ErrorCode::InvalidRequest),
        other => panic!("expected an error, got {other:?}"),
    }
    client.expect_closed(CloseReason::ProtocolViolation).await;
    assert!(stand_in.acked.lock().expect("lock").is_empty());
    // Closing cleaned up once.
    assert_eq!(stand_in.detached.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn empty_and_oversized_read_lists_are_refused_and_a_good_one_is_stored() {
    let (mut client, stand_in) = logged_in(SessionConfig::default()).await;
    for ids in [vec![], (0..=proto::MAX_IDS_PER_ACK as u64).collect()] {
        let id = client
            .request(Request::Read {
                sender: phone(2),
                ids,
            })
            .await;
        assert_eq!(client.response_to(id).await, Err(ErrorCode::InvalidRequest));
    }
    let id = client
        .request(Request::Read {
            sender: phone(2),
            ids: vec![9, 10],
        })
        .await;
    assert_eq!(client.response_to(id).await, Ok(Response::Ok));
    let receipts = stand_in.receipts.lock().expect("lock").clone();
    assert_eq!(receipts.len(), 1);
    assert_eq!(
        (
            receipts[0].owner.clone(),
            receipts[0].by.clone(),
            receipts[0].msg_ids.clone()
        ),
        (phone(2), phone(1), vec![9, 10])
    );
}

#[tokio::test]
async fn code_requests_over_the_connections_limit_close_it() {
    let (mut client, _stand_in) = start(SessionConfig::default()).await;
    client.hello().await;
    for _ in 0..2 {
        let id = client
            .request(Request::RequestCode { phone: phone(1) })
            .await;
        assert!(client.response_to(id).await.is_ok());
    }
    let id = client
        .request(Request::RequestCode { phone: phone(1) })
        .await;
    assert!(matches!(
        client.response_to(id).await,
        Err(ErrorCode::RateLimited { .. })
    ));
    client.expect_closed(CloseReason::ProtocolViolation).await;
}

#[tokio::test]
async fn presence_requests_over_the_rate_are_refused_but_the_connection_stays() {
    let config = SessionConfig {
        presence_burst: 2.0,
        presence_rate: 0.001,
        max_watched: 3,
        ..SessionConfig::default()
    };
    let (mut client, stand_in) = logged_in(config).await;
    let too_many = (2..=5).map(phone).collect();
    let id = client
        .request(Request::SubscribePresence { users: too_many })
        .await;
    assert_eq!(client.response_to(id).await, Err(ErrorCode::InvalidRequest));
    for _ in 0..2 {
        let id = client
            .request(Request::SubscribePresence {
                users: vec![phone(2)],
            })
            .await;
        assert_eq!(client.response_to(id).await, Ok(Response::Ok));
    }
    let id = client
        .request(Request::SetContacts {
            contacts: vec![phone(2)],
        })
        .await;
    assert!(matches!(
        client.response_to(id).await,
        Err(ErrorCode::RateLimited { .. })
    ));
    // Typing is not paced here (the presence actor batches it).
    let id = client
        .request(Request::Typing {
            to: phone(2),
            active: true,
        })
        .await;
    assert_eq!(client.response_to(id).await, Ok(Response::Ok));
    assert_eq!(
        *stand_in.typing.lock().expect("lock"),
        vec![(phone(1), phone(2), true)]
    );
}

#[tokio::test]
async fn extension_requests_by_namespace() {
    let (mut client, _stand_in) = logged_in(SessionConfig::default()).await;
    let cases = [
        ("echo", Ok(Response::Extension { body: vec![1, 2] })),
        ("nobody", Err(ErrorCode::UnknownNamespace)),
        (
            "restarting",
            Err(ErrorCode::Unavailable {
                retry_after_ms: 1000,
            }),
        ),
    ];
    for (namespace, expected) in cases {
        let id = client
            .request(Request::Extension {
                namespace: namespace.into(),
                body: vec![1, 2],
            })
            .await;
        assert_eq!(client.response_to(id).await, expected, "{namespace}");
    }
}

#[tokio::test]
async fn minting_needs_the_secret_and_the_test_range() {
    let secret = "a-long-secret-only-the-load-generator-knows".to_owned();
    let config = SessionConfig {
        admin_secret: Some(secret.clone()),
        ..SessionConfig::default()
    };
    let (mut client, _stand_in) = start(config.clone()).await;
    client.hello().await;
    let mint = |secret: &str, first: &str, count| Request::MintTestUsers {
        secret: secret.into(),
        first: PhoneNumber::parse(first).expect("phone"),
        count,
    };
    let id = client.request(mint(&secret, "+15550000001", 2)).await;
    let Ok(Response::TestUsers { tokens }) = client.response_to(id).await else {
        panic!("minted");
    };
    assert_eq!(tokens.len(), 2);
    let id = client.request(mint(&secret, "+447911123456", 1)).await;
    assert_eq!(client.response_to(id).await, Err(ErrorCode::InvalidRequest));
    let id = client.request(mint(&secret, "+15550000001", 0)).await;
    assert_eq!(client.response_to(id).await, Err(ErrorCode::InvalidRequest));
    let id = client.request(mint("guess", "+15550000001", 1)).await;
    assert_eq!(client.response_to(id).await, Err(ErrorCode::InvalidToken));
    client.expect_closed(CloseReason::ProtocolViolation).await;

    // Without a secret configured, minting is off.
    let (mut client, _stand_in) = start(SessionConfig::default()).await;
    client.hello().await;
    let id = client.request(mint(&secret, "+15550000001", 1)).await;
    assert_eq!(client.response_to(id).await, Err(ErrorCode::InvalidRequest));
}

#[tokio::test]
async fn logout_revokes_then_closes() {
    let (mut client, stand_in) = logged_in(SessionConfig::default()).await;
    let id = client.request(Request::Logout).await;
    assert_eq!(client.response_to(id).await, Ok(Response::Ok));
    client.expect_closed(CloseReason::LoggedOut).await;
    assert_eq!(*stand_in.logged_out.lock().expect("lock"), vec![phone(1)]);
    assert_eq!(stand_in.detached.load(Ordering::SeqCst), 1);
    assert_eq!(stand_in.offline.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_client_that_goes_away_is_detached_once() {
    let (client, stand_in) = logged_in(SessionConfig::default()).await;
    let session = client.session.clone();
    drop(client);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while session.get_status() != ractor::ActorStatus::Stopped {
        assert!(tokio::time::Instant::now() < deadline, "the session stops");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stand_in.detached.load(Ordering::SeqCst), 1);
    assert_eq!(stand_in.offline.load(Ordering::SeqCst), 1);
}
