//! What a session asks of the rest of its node — mailboxes, accounts,
//! presence and extensions — behind one trait, so that the request
//! handlers can be tested with stand-ins (no node, no sockets).
//!
//! [`NodeServices`] is the real one: the supervised actors found by their
//! registered names, so that a restarted actor is followed.

use std::net::IpAddr;
use std::pin::Pin;
use std::time::Duration;

use auth::{AuthHandle, Authenticated, CodeSent, IssuedToken, TokenBucket};
use offline_queue::fragment::{GroupAnswer, GroupRequest, ReceiptRequest};
use offline_queue::{Endpoint, FragmentDirectory, FragmentError, FragmentMsg, NewMessage, Stored};
use presence::{Policy, PresenceMsg, PresencePush};
use proto::{MessageId, PhoneNumber};
use ractor::{ActorRef, DerivedActorRef, RpcReplyPort};
use router::FragmentId;

use crate::extension::{ExtensionMsg, ExtensionRequest, extension_actor_name};

/// A future a service hands back; it owns what it needs.
pub type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The durable answer to a request already handed to its fragment.
pub type MailboxAnswer = Boxed<Result<Stored, FragmentError>>;

/// The answer to come of a group request its fragment took.
pub type GroupReply = Boxed<Result<GroupAnswer, FragmentError>>;

/// A change to a user's presence settings.
pub type PolicyChange = Box<dyn FnOnce(&mut Policy) + Send + 'static>;

/// Why an extension request could not be handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtensionRefusal {
    /// No extension serves the namespace.
    Unknown,
    /// Its actor is restarting.
    Restarting,
}

/// The node's services as one session sees them.
///
/// Requests that must reach a fragment in the client's order (sends and
/// read receipts) are split in two: the returned future resolves once the
/// request is in its fragment's queue (the session awaits that before it
/// reads the client's next request), and yields a second future with the
/// durable answer (awaited off the actor, holding the request's permit).
pub trait Services: Send + Sync + 'static {
    // Mailboxes.

    /// The fragment that holds `user`'s mailbox.
    fn fragment_of(&self, user: &PhoneNumber) -> FragmentId;
    /// Hands `message` to its recipient's fragment.
    fn append(&self, message: NewMessage) -> Boxed<Result<MailboxAnswer, FragmentError>>;
    /// Hands a receipt by `reader` to the reader's own fragment, which
    /// passes it on behind the reader's earlier acks.
    fn store_receipt(
        &self,
        reader: PhoneNumber,
        request: ReceiptRequest,
    ) -> Boxed<Result<MailboxAnswer, FragmentError>>;
    /// Hands acked ids to `user`'s fragment (acks are not answered).
    fn ack(&self, user: PhoneNumber, ids: Vec<MessageId>) -> Boxed<Result<(), FragmentError>>;
    /// Makes `endpoint` the user's live session; answered once the
    /// fragment took it (its first pushes follow).
    fn attach(&self, user: PhoneNumber, endpoint: Endpoint) -> Boxed<Result<(), FragmentError>>;
    /// Tells `user`'s fragment that session `session_id` is gone.
    fn detach(&self, user: PhoneNumber, session_id: u64);
    /// Hands a group request to the group's home fragment (a create: the
    /// creator's).
    fn group(&self, request: GroupRequest) -> Boxed<Result<GroupReply, FragmentError>>;

    // Accounts.

    /// Sends a verification code to `phone`.
    fn request_code(
        &self,
        phone: PhoneNumber,
        source: Option<IpAddr>,
    ) -> Boxed<auth::Result<CodeSent>>;
    /// Checks a code (and the registration-lock PIN, if the number has one)
    /// and issues a token.
    fn verify(
        &self,
        phone: PhoneNumber,
        code: String,
        pin: Option<String>,
        source: Option<IpAddr>,
    ) -> Boxed<auth::Result<IssuedToken>>;
    /// Sets or clears `user`'s registration-lock PIN.
    fn set_registration_lock(
        &self,
        user: PhoneNumber,
        pin: Option<String>,
    ) -> Boxed<auth::Result<()>>;
    /// Whose token this is, and its generation.
    fn authenticate(&self, token: String) -> Boxed<auth::Result<Authenticated>>;
    /// Revokes every token of `user`.
    fn logout(&self, user: PhoneNumber) -> Boxed<auth::Result<u64>>;
    /// Issues tokens for numbers without accounts (load tests).
    fn mint_test_users(&self, phones: Vec<PhoneNumber>) -> Boxed<auth::Result<Vec<IssuedToken>>>;
    /// A new connection's own limit of code requests.
    fn code_bucket(&self, now_ms: u64) -> TokenBucket;
    /// A new connection's own limit of verify attempts.
    fn verify_bucket(&self, now_ms: u64) -> TokenBucket;

    // Presence.

    /// `user` is online in session `session_id`; `target` takes updates.
    fn online(
        &self,
        user: PhoneNumber,
        session_id: u64,
        target: DerivedActorRef<PresencePush>,
    ) -> Boxed<()>;
    /// Session `session_id` of `user` is gone.
    fn offline(&self, user: PhoneNumber, session_id: u64);
    /// `from` is typing to `to` (or stopped).
    fn typing(&self, from: PhoneNumber, to: PhoneNumber, active: bool);
    /// `subscriber` watches `users`.
    fn subscribe(&self, subscriber: PhoneNumber, users: Vec<PhoneNumber>);
    /// Stores a change to `user`'s presence settings; answered once durable.
    fn update_presence_policy(
        &self,
        user: PhoneNumber,
        change: PolicyChange,
    ) -> Boxed<Result<(), String>>;

    // Extensions.

    /// Hands `request` to the extension serving `namespace`.
    fn extension(&self, namespace: &str, request: ExtensionRequest)
    -> Result<(), ExtensionRefusal>;
}

/// How long a request waits for a restarting fragment before it is refused.
/// Waiting in the session's handler holds back this client's later requests
/// too, so a send that meets a restarting fragment is not overtaken by the
/// next one (which a refusal and a client-side retry would allow).
pub const FRAGMENT_RESTART_WAIT: Duration = Duration::from_secs(2);

/// The node's real services.
#[derive(Clone)]
pub struct NodeServices {
    /// Registration and login.
    pub auth: AuthHandle,
    /// Finds mailbox fragments.
    pub fragments: FragmentDirectory,
    /// Registered name of the presence actor.
    pub presence: String,
    /// Presence settings (who may see whom) in the node's store.
    pub presence_policies: presence::PolicyStore,
    /// How long an attach may take.
    pub attach_timeout: Duration,
}

type FragmentReply<T> = RpcReplyPort<Result<T, FragmentError>>;

impl NodeServices {
    fn presence_actor(&self) -> Option<ActorRef<PresenceMsg>> {
        ractor::registry::where_is(self.presence.clone()).map(ActorRef::from)
    }

    /// Sends the message `make` builds to `user`'s fragment (waiting out a
    /// restart) and returns its answer to come.
    fn hand_to_fragment(
        &self,
        user: PhoneNumber,
        make: impl FnOnce(FragmentReply<Stored>) -> FragmentMsg + Send + 'static,
    ) -> Boxed<Result<MailboxAnswer, FragmentError>> {
        let fragments = self.fragments.clone();
        Box::pin(async move {
            let (tx, rx) = ractor::concurrency::oneshot();
            let id = send_to_fragment(&fragments, &user, make(tx.into())).await?;
            let answer: MailboxAnswer = Box::pin(async move {
                // A dropped reply: the fragment restarted with it queued.
                rx.await.unwrap_or(Err(FragmentError::Unavailable(id)))
            });
            Ok(answer)
        })
    }
}

/// Sends `message` to `user`'s fragment, waiting out a restart of it; the
/// fragment's id.
async fn send_to_fragment(
    fragments: &FragmentDirectory,
    user: &PhoneNumber,
    message: FragmentMsg,
) -> Result<FragmentId, FragmentError> {
    let fragment = fragments
        .for_user_when_ready(user, FRAGMENT_RESTART_WAIT)
        .await?;
    let id = fragments.placement().fragment_of(user);
    fragment
        .send_message(message)
        .map_err(|_| FragmentError::Unavailable(id))?;
    Ok(id)
}

impl Services for NodeServices {
    fn fragment_of(&self, user: &PhoneNumber) -> FragmentId {
        self.fragments.placement().fragment_of(user)
    }

    fn append(&self, message: NewMessage) -> Boxed<Result<MailboxAnswer, FragmentError>> {
        let to = message.to.clone();
        self.hand_to_fragment(to, move |reply| FragmentMsg::Append { message, reply })
    }

    fn store_receipt(
        &self,
        reader: PhoneNumber,
        request: ReceiptRequest,
    ) -> Boxed<Result<MailboxAnswer, FragmentError>> {
        self.hand_to_fragment(reader, move |reply| FragmentMsg::StoreReceipt {
            request,
            reply: Some(reply),
        })
    }

    fn ack(&self, user: PhoneNumber, ids: Vec<MessageId>) -> Boxed<Result<(), FragmentError>> {
        let fragments = self.fragments.clone();
        Box::pin(async move {
            let to = user.clone();
            send_to_fragment(&fragments, &to, FragmentMsg::Ack { user, ids })
                .await
                .map(|_| ())
        })
    }

    fn group(&self, request: GroupRequest) -> Boxed<Result<GroupReply, FragmentError>> {
        let fragments = self.fragments.clone();
        Box::pin(async move {
            let id = request.home(&fragments.placement());
            // An id no fragment gave out (made up, or from another cluster).
            if id >= fragments.placement().fragments() {
                return Err(FragmentError::Group(
                    offline_queue::group::GroupError::UnknownGroup,
                ));
            }
            let fragment = fragments.get_when_ready(id, FRAGMENT_RESTART_WAIT).await?;
            let (tx, rx) = ractor::concurrency::oneshot();
            fragment
                .send_message(FragmentMsg::Group {
                    request,
                    reply: tx.into(),
                })
                .map_err(|_| FragmentError::Unavailable(id))?;
            let answer: GroupReply =
                Box::pin(async move { rx.await.unwrap_or(Err(FragmentError::Unavailable(id))) });
            Ok(answer)
        })
    }

    fn attach(&self, user: PhoneNumber, endpoint: Endpoint) -> Boxed<Result<(), FragmentError>> {
        let fragments = self.fragments.clone();
        let timeout = self.attach_timeout;
        Box::pin(async move {
            let id = fragments.placement().fragment_of(&user);
            let fragment = fragments.for_user(&user)?;
            let (tx, rx) = ractor::concurrency::oneshot();
            fragment
                .send_message(FragmentMsg::Attach {
                    user,
                    endpoint,
                    reply: tx.into(),
                })
                .map_err(|_| FragmentError::Unavailable(id))?;
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(result)) => result,
                _ => Err(FragmentError::Unavailable(id)),
            }
        })
    }

    fn detach(&self, user: PhoneNumber, session_id: u64) {
        if let Ok(fragment) = self.fragments.for_user(&user) {
            let _ = fragment.send_message(FragmentMsg::Detach { user, session_id });
        }
    }

    fn request_code(
        &self,
        phone: PhoneNumber,
        source: Option<IpAddr>,
    ) -> Boxed<auth::Result<CodeSent>> {
        let auth = self.auth.clone();
        Box::pin(async move { auth.request_code_from(phone, source).await })
    }

    fn verify(
        &self,
        phone: PhoneNumber,
        code: String,
        pin: Option<String>,
        source: Option<IpAddr>,
    ) -> Boxed<auth::Result<IssuedToken>> {
        let auth = self.auth.clone();
        Box::pin(async move { auth.verify_with_pin_from(phone, code, pin, source).await })
    }

    fn set_registration_lock(
        &self,
        user: PhoneNumber,
        pin: Option<String>,
    ) -> Boxed<auth::Result<()>> {
        let auth = self.auth.clone();
        Box::pin(async move { auth.set_registration_lock(&user, pin).await })
    }

    fn authenticate(&self, token: String) -> Boxed<auth::Result<Authenticated>> {
        let auth = self.auth.clone();
        Box::pin(async move { auth.authenticate(&token).await })
    }

    fn logout(&self, user: PhoneNumber) -> Boxed<auth::Result<u64>> {
        let auth = self.auth.clone();
        Box::pin(async move { auth.logout(&user).await })
    }

    fn mint_test_users(&self, phones: Vec<PhoneNumber>) -> Boxed<auth::Result<Vec<IssuedToken>>> {
        let auth = self.auth.clone();
        Box::pin(async move { auth.mint_test_users(&phones).await })
    }

    fn code_bucket(&self, now_ms: u64) -> TokenBucket {
        self.auth.connection_code_bucket(now_ms)
    }

    fn verify_bucket(&self, now_ms: u64) -> TokenBucket {
        self.auth.connection_verify_bucket(now_ms)
    }

    fn online(
        &self,
        user: PhoneNumber,
        session_id: u64,
        target: DerivedActorRef<PresencePush>,
    ) -> Boxed<()> {
        let presence = self.presence_actor();
        let policies = self.presence_policies.clone();
        Box::pin(async move {
            let Some(presence) = presence else {
                return;
            };
            // Unreadable settings show the user to no one (the default
            // with no contacts) rather than to everyone. A read transaction,
            // which may touch the disk: on the blocking pool.
            let whose = user.clone();
            let policy = match tokio::task::spawn_blocking(move || policies.load(&whose)).await {
                Ok(Ok(policy)) => policy,
                Ok(Err(e)) => {
                    tracing::warn!(%user, error = %e,
                        "presence settings unreadable; hidden until set again");
                    Policy::default()
                }
                Err(e) => {
                    tracing::warn!(%user, error = %e,
                        "presence settings not read; hidden until set again");
                    Policy::default()
                }
            };
            let _ = presence.send_message(PresenceMsg::Online {
                user,
                session_id,
                target,
                policy,
            });
        })
    }

    fn offline(&self, user: PhoneNumber, session_id: u64) {
        if let Some(presence) = self.presence_actor() {
            let _ = presence.send_message(PresenceMsg::Offline { user, session_id });
        }
    }

    fn typing(&self, from: PhoneNumber, to: PhoneNumber, active: bool) {
        if let Some(presence) = self.presence_actor() {
            let _ = presence.send_message(PresenceMsg::Typing { from, to, active });
        }
    }

    fn subscribe(&self, subscriber: PhoneNumber, users: Vec<PhoneNumber>) {
        if let Some(presence) = self.presence_actor() {
            let _ = presence.send_message(PresenceMsg::Subscribe { subscriber, users });
        }
    }

    fn update_presence_policy(
        &self,
        user: PhoneNumber,
        change: PolicyChange,
    ) -> Boxed<Result<(), String>> {
        let policies = self.presence_policies.clone();
        let presence = self.presence.clone();
        Box::pin(async move {
            let policy = policies
                .update(&user, proto::clock::now_ms(), change)
                .await
                .map_err(|e| e.to_string())?;
            // Shared with the other nodes by the presence actor.
            if let Some(cell) = ractor::registry::where_is(presence) {
                let presence: ActorRef<PresenceMsg> = cell.into();
                let _ = presence.send_message(PresenceMsg::SetPolicy { user, policy });
            }
            Ok(())
        })
    }

    fn extension(
        &self,
        namespace: &str,
        request: ExtensionRequest,
    ) -> Result<(), ExtensionRefusal> {
        let extension = ractor::registry::where_is(extension_actor_name(namespace))
            .ok_or(ExtensionRefusal::Unknown)?;
        extension
            .send_message(ExtensionMsg::Request(request))
            .map_err(|_| ExtensionRefusal::Restarting)
    }
}
