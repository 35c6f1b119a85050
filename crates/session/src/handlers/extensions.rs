//! Requests to extension actors, by namespace; the extension answers with
//! bytes of its own format, or refuses with a message.

use proto::{ErrorCode, RequestId, Response};
use ractor::ActorRef;
use tokio::sync::OwnedSemaphorePermit;

use crate::actor::{SessionMsg, SessionState};
use crate::extension::ExtensionRequest;
use crate::services::ExtensionRefusal;

/// `Extension`: hands the body to the extension serving `namespace`.
pub(crate) fn request(
    myself: &ActorRef<SessionMsg>,
    state: &mut SessionState,
    id: RequestId,
    permit: OwnedSemaphorePermit,
    namespace: String,
    body: Vec<u8>,
) {
    let Some(user) = state.user().cloned() else {
        return;
    };
    let (tx, rx) = ractor::concurrency::oneshot();
    let request = ExtensionRequest {
        user,
        body,
        session: myself.get_derived(),
        reply: tx.into(),
    };
    match state.ctx.services.extension(&namespace, request) {
        Ok(()) => {}
        Err(ExtensionRefusal::Unknown) => {
            state.responder.error(
                Some(id),
                ErrorCode::UnknownNamespace,
                format!("no extension serves {namespace:?}"),
            );
            return;
        }
        Err(ExtensionRefusal::Restarting) => {
            state.responder.error(
                Some(id),
                ErrorCode::Unavailable {
                    retry_after_ms: 1000,
                },
                "the extension is restarting",
            );
            return;
        }
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
