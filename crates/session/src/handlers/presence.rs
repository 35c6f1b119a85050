//! Presence and typing: cheap, never stored (except the user's own
//! settings), paced per connection.

use proto::clock::now_ms;
use proto::{ErrorCode, PhoneNumber, RequestId, Response, Visibility};
use tokio::sync::OwnedSemaphorePermit;

use crate::actor::SessionState;
use crate::services::PolicyChange;

/// `Typing`: relayed by the presence actor where presence would be.
pub(crate) fn typing(state: &mut SessionState, id: RequestId, to: PhoneNumber, active: bool) {
    if let Some(from) = state.user().cloned() {
        state.ctx.services.typing(from, to, active);
    }
    state.responder.respond(id, Response::Ok);
}

/// `SubscribePresence`: at most `max_watched` users, paced.
pub(crate) fn subscribe(state: &mut SessionState, id: RequestId, users: Vec<PhoneNumber>) {
    let Some(subscriber) = state.user().cloned() else {
        return;
    };
    let max = state.ctx.config.max_watched;
    if !presence_request_allowed(state, id, "subscribe", users.len(), max) {
        return;
    }
    state.ctx.services.subscribe(subscriber, users);
    state.responder.respond(id, Response::Ok);
}

/// `SetContacts`: at most `max_contacts`, paced, answered once durable.
pub(crate) fn set_contacts(
    state: &mut SessionState,
    id: RequestId,
    permit: OwnedSemaphorePermit,
    contacts: Vec<PhoneNumber>,
) {
    let max = state.ctx.config.max_contacts;
    if !presence_request_allowed(state, id, "set_contacts", contacts.len(), max) {
        return;
    }
    set_policy(
        state,
        id,
        permit,
        Box::new(move |policy| {
            policy.contacts = contacts.into_iter().collect();
        }),
    );
}

/// `SetPresencePrivacy`: paced, answered once durable.
pub(crate) fn set_privacy(
    state: &mut SessionState,
    id: RequestId,
    permit: OwnedSemaphorePermit,
    visibility: Visibility,
) {
    if !presence_request_allowed(state, id, "set_privacy", 0, 0) {
        return;
    }
    set_policy(
        state,
        id,
        permit,
        Box::new(move |policy| policy.visibility = visibility),
    );
}

/// Stores a change to the user's presence settings; answers once durable.
fn set_policy(
    state: &SessionState,
    id: RequestId,
    permit: OwnedSemaphorePermit,
    change: PolicyChange,
) {
    let Some(user) = state.user().cloned() else {
        return;
    };
    let stored = state
        .ctx
        .services
        .update_presence_policy(user.clone(), change);
    state.answer_later(id, permit, async move {
        stored.await.map(|()| Response::Ok).map_err(|e| {
            tracing::warn!(%user, error = %e, "presence settings not stored");
            (
                ErrorCode::Unavailable {
                    retry_after_ms: 1000,
                },
                "the settings could not be stored; retry later".to_owned(),
            )
        })
    });
}

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
