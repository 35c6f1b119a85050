//! Groups: create, change, read, send, read marks and message info, each handed to the group's home
//! fragment (a create: the creator's). Like 1:1 sends they are handed over
//! before the session reads the client's next request (order) and paced
//! with the sends, so a client creating and tearing down groups in a loop
//! is slowed like one that floods messages.

use offline_queue::fragment::{GroupAnswer, GroupRequest};
use proto::clock::now_ms;
use proto::{ErrorCode, GroupCommand, GroupId, PhoneNumber, Position, RequestId, Response};
use tokio::sync::OwnedSemaphorePermit;

use super::unavailable;
use crate::actor::SessionState;

/// What a client asked of a group, before the node adds who asks.
pub(crate) enum GroupAsk {
    Create {
        /// `Some` for [`proto::Request::CreateGroupOnce`].
        create_id: Option<u64>,
        name: String,
        members: Vec<PhoneNumber>,
    },
    Change {
        group: GroupId,
        command: GroupCommand,
    },
    Info {
        group: GroupId,
    },
    List,
    Read {
        group: GroupId,
        through: Position,
    },
    MessageInfo {
        group: GroupId,
        position: Position,
    },
    Send {
        group: GroupId,
        client_msg_id: u64,
        after: Option<u64>,
        payload: Vec<u8>,
    },
}

/// Hands the request to its fragment and answers once it is durable.
pub(crate) async fn request(
    state: &mut SessionState,
    id: RequestId,
    permit: OwnedSemaphorePermit,
    ask: GroupAsk,
) {
    let Some(user) = state.user().cloned() else {
        return;
    };
    let wait = state.pacer.take(now_ms());
    if !wait.is_zero() {
        metrics::counter!("switchboard_sends_paced_total").increment(1);
        tokio::time::sleep(wait).await;
    }
    let (request, send_id) = match ask {
        GroupAsk::Create {
            create_id: None,
            name,
            members,
        } => (
            GroupRequest::Create {
                creator: user,
                name,
                members,
            },
            None,
        ),
        GroupAsk::Create {
            create_id: Some(create_id),
            name,
            members,
        } => (
            GroupRequest::CreateOnce {
                creator: user,
                create_id,
                name,
                members,
            },
            None,
        ),
        GroupAsk::Change { group, command } => (
            GroupRequest::Change {
                group,
                by: user,
                command,
            },
            None,
        ),
        GroupAsk::Info { group } => (GroupRequest::Info { group, by: user }, None),
        GroupAsk::List => (GroupRequest::List { user }, None),
        GroupAsk::Read { group, through } => (
            GroupRequest::Read {
                group,
                by: user,
                through,
            },
            None,
        ),
        GroupAsk::MessageInfo { group, position } => (
            GroupRequest::MessageInfo {
                group,
                by: user,
                position,
            },
            None,
        ),
        GroupAsk::Send {
            group,
            client_msg_id,
            after,
            payload,
        } => (
            GroupRequest::Send {
                group,
                from: user,
                client_msg_id,
                after,
                payload,
            },
            Some(client_msg_id),
        ),
    };
    let answer = match state.ctx.services.group(request).await {
        Ok(answer) => answer,
        Err(e) => {
            let (code, message) = unavailable(&e);
            state.responder.error(Some(id), code, message);
            return;
        }
    };
    state.answer_later(id, permit, async move {
        let answer = answer.await.map_err(|e| unavailable(&e))?;
        response(answer, send_id)
    });
}

fn response(answer: GroupAnswer, send_id: Option<u64>) -> Result<Response, (ErrorCode, String)> {
    Ok(match (answer, send_id) {
        (GroupAnswer::Created { group }, _) => Response::GroupCreated { group },
        (GroupAnswer::Changed, _) => Response::Ok,
        (
            GroupAnswer::Info {
                group,
                name,
                members,
            },
            _,
        ) => Response::GroupInfo {
            group,
            name,
            members,
        },
        (GroupAnswer::Sent(stored), Some(client_msg_id)) => Response::ServerAck {
            client_msg_id,
            msg_id: stored.msg_id,
            server_ts: stored.server_ts,
        },
        (GroupAnswer::Groups(groups), _) => Response::Groups { groups },
        (
            GroupAnswer::MessageInfo {
                group,
                position,
                members,
            },
            _,
        ) => Response::GroupMessageInfo {
            group,
            position,
            members,
        },
        (GroupAnswer::Sent(_), None) => {
            return Err((
                ErrorCode::Internal,
                "a send answered another request".into(),
            ));
        }
    })
}
