//! How client frames reach extension actors.
//!
//! An extension is an actor with `type Msg = ExtensionMsg`, registered under
//! [`extension_actor_name`] of its namespace (the node's builder does both
//! and supervises it). A client's `Request::Extension { namespace, body }`
//! arrives as [`ExtensionMsg::Request`], and the actor's reply becomes the
//! client's `Response::Extension`. An extension that is also a user (a bot)
//! attaches to its mailbox fragment with `myself.get_derived::<Push>()` and
//! receives its messages as [`ExtensionMsg::Mailbox`].

use std::any::Any;

use offline_queue::Push;
use proto::PhoneNumber;
use ractor::{DerivedActorRef, RpcReplyPort};

/// The registered actor name of the extension serving `namespace`.
pub fn extension_actor_name(namespace: &str) -> String {
    format!("ext:{namespace}")
}

/// A push an extension sends to a session: becomes `ServerFrame::Extension`.
#[derive(Debug)]
pub struct ExtensionPush {
    /// The extension's namespace.
    pub namespace: String,
    /// Extension-defined bytes.
    pub body: Vec<u8>,
}

impl ractor::Message for ExtensionPush {}

/// A client request for an extension.
pub struct ExtensionRequest {
    /// The authenticated user who sent it.
    pub user: PhoneNumber,
    /// Extension-defined bytes.
    pub body: Vec<u8>,
    /// The session it came from, for later pushes to that client.
    pub session: DerivedActorRef<ExtensionPush>,
    /// Answer: bytes for the client, or an error text.
    pub reply: RpcReplyPort<Result<Vec<u8>, String>>,
}

/// Everything an extension actor receives.
pub enum ExtensionMsg {
    /// A client request in the extension's namespace.
    Request(ExtensionRequest),
    /// Mailbox entries, for an extension that attached as a user.
    Mailbox(Push),
    /// The extension's own messages (timers, internal events).
    Custom(Box<dyn Any + Send>),
}

impl ractor::Message for ExtensionMsg {}

impl From<Push> for ExtensionMsg {
    fn from(push: Push) -> Self {
        ExtensionMsg::Mailbox(push)
    }
}

impl TryFrom<ExtensionMsg> for Push {
    type Error = ();
    fn try_from(msg: ExtensionMsg) -> Result<Self, ()> {
        match msg {
            ExtensionMsg::Mailbox(push) => Ok(push),
            _ => Err(()),
        }
    }
}
