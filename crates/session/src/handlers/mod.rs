//! The session's request handlers, one module per request family, as
//! mini-redis has one per command: [`accounts`] (codes, verify, login,
//! logout), [`messaging`] (sends, acks, receipts, pushes), [`presence`],
//! [`extensions`] and [`admin`] (test users). This module admits a frame
//! in the connection's phase and routes its request.
//!
//! Handlers reach the rest of the node only through
//! [`crate::services::Services`], so their tests run on stand-ins.

pub(crate) mod accounts;
pub(crate) mod admin;
pub(crate) mod extensions;
pub(crate) mod groups;
pub(crate) mod messaging;
pub(crate) mod presence;

use groups::GroupAsk;

use offline_queue::FragmentError;
use proto::{
    ClientFrame, CloseReason, ErrorCode, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, Request,
    RequestId, Response, ServerFrame,
};
use ractor::ActorRef;
use tokio::sync::OwnedSemaphorePermit;

use crate::actor::{SessionMsg, SessionState};
use crate::state::{Admission, PhaseEvent, admit};

/// Serves one frame from the client, if its phase allows it.
pub(crate) async fn on_frame(
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
            state.phase = state.phase.next(PhaseEvent::Welcomed);
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
            ClientFrame::Ack { ids } => messaging::acknowledge(myself, state, ids).await,
            ClientFrame::Hello { .. } => {}
        },
    }
}

/// Routes an admitted request to its handler.
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
            accounts::request_code(myself, state, id, permit, phone);
        }
        Request::Verify { phone, code } => {
            accounts::verify(myself, state, id, permit, phone, code, None);
        }
        Request::VerifyWithPin { phone, code, pin } => {
            accounts::verify(myself, state, id, permit, phone, code, Some(pin));
        }
        Request::SetRegistrationLock { pin } => {
            accounts::set_registration_lock(myself, state, id, permit, pin);
        }
        Request::Login { token } => accounts::login(myself, state, id, token).await,
        Request::Logout => accounts::logout(myself, state, id).await,
        Request::Send {
            to,
            client_msg_id,
            payload,
        } => messaging::send(state, id, permit, to, client_msg_id, None, payload).await,
        Request::SendAfter {
            to,
            client_msg_id,
            after,
            payload,
        } => messaging::send(state, id, permit, to, client_msg_id, Some(after), payload).await,
        Request::Ack { ids } => messaging::ack(state, id, ids).await,
        Request::Read { sender, ids } => messaging::read(state, id, permit, sender, ids).await,
        Request::Typing { to, active } => presence::typing(state, id, to, active),
        Request::SubscribePresence { users } => presence::subscribe(state, id, users),
        Request::SetContacts { contacts } => presence::set_contacts(state, id, permit, contacts),
        Request::SetPresencePrivacy { visibility } => {
            presence::set_privacy(state, id, permit, visibility);
        }
        Request::Extension { namespace, body } => {
            extensions::request(myself, state, id, permit, namespace, body);
        }
        Request::MintTestUsers {
            secret,
            first,
            count,
        } => admin::mint_test_users(myself, state, id, permit, &secret, first, count),
        Request::CreateGroup { name, members } => {
            let ask = GroupAsk::Create {
                create_id: None,
                name,
                members,
            };
            groups::request(state, id, permit, ask).await;
        }
        Request::CreateGroupOnce {
            create_id,
            name,
            members,
        } => {
            let ask = GroupAsk::Create {
                create_id: Some(create_id),
                name,
                members,
            };
            groups::request(state, id, permit, ask).await;
        }
        Request::ChangeGroup { group, command } => {
            groups::request(state, id, permit, GroupAsk::Change { group, command }).await;
        }
        Request::GroupInfo { group } => {
            groups::request(state, id, permit, GroupAsk::Info { group }).await;
        }
        Request::ListGroups => groups::request(state, id, permit, GroupAsk::List).await,
        Request::ReadGroup { group, through } => {
            groups::request(state, id, permit, GroupAsk::Read { group, through }).await;
        }
        Request::GroupMessageInfo { group, position } => {
            let ask = GroupAsk::MessageInfo { group, position };
            groups::request(state, id, permit, ask).await;
        }
        Request::SendGroup {
            group,
            client_msg_id,
            after,
            payload,
        } => {
            let ask = GroupAsk::Send {
                group,
                client_msg_id,
                after,
                payload,
            };
            groups::request(state, id, permit, ask).await;
        }
    }
}

/// The code and text a client gets for a fragment error; a storage
/// failure's details go to the log only (at most one line per 10 s).
pub(crate) fn unavailable(e: &FragmentError) -> (ErrorCode, String) {
    if matches!(e, FragmentError::Storage(_))
        && let Some(suppressed) = crate::LOGS.allow("internal-storage-error")
    {
        tracing::warn!(error = %e, suppressed, "a mailbox request failed in storage");
    }
    (e.error_code(), e.client_message())
}

/// The text a client gets for an auth error; details of internal failures
/// go to the log only (at most one line per 10 s).
pub(crate) fn auth_message(e: &auth::AuthError) -> String {
    if e.is_internal()
        && let Some(suppressed) = crate::LOGS.allow("internal-auth-error")
    {
        tracing::warn!(error = %e, suppressed, "auth request failed inside the node");
    }
    e.client_message()
}
