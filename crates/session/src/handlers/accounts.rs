//! Registration and login: code requests, verify (with the registration
//! lock), setting the lock, login and logout. Code requests and verify
//! attempts are limited per connection too; over that limit the client is
//! refused and disconnected.

use offline_queue::FragmentError;
use proto::{CloseReason, ErrorCode, PhoneNumber, RequestId, Response};
use ractor::ActorRef;
use tokio::sync::OwnedSemaphorePermit;

use super::{auth_message, unavailable};
use crate::actor::{SessionMsg, SessionState};
use crate::state::PhaseEvent;
use proto::clock::now_ms;

/// `RequestCode`: within the connection's limit, asks auth to send a code.
pub(crate) fn request_code(
    myself: &ActorRef<SessionMsg>,
    state: &mut SessionState,
    id: RequestId,
    permit: OwnedSemaphorePermit,
    phone: PhoneNumber,
) {
    if let Err(retry_after_ms) = state.code_bucket.take(now_ms()) {
        over_connection_limit(myself, state, id, "codes", retry_after_ms);
        return;
    }
    let sent = state
        .ctx
        .services
        .request_code(phone, Some(state.peer.ip()));
    state.answer_auth(myself, id, permit, async move {
        sent.await.map(|sent| Response::CodeSent {
            expires_in_secs: sent.expires_in_secs,
        })
    });
}

/// `Verify` or `VerifyWithPin`: within the connection's limit; on success
/// the sessions of the number's earlier tokens are closed (by its fragment,
/// when the token generation rose) before the client has the new token.
pub(crate) fn verify(
    myself: &ActorRef<SessionMsg>,
    state: &mut SessionState,
    id: RequestId,
    permit: OwnedSemaphorePermit,
    phone: PhoneNumber,
    code: String,
    pin: Option<String>,
) {
    if let Err(retry_after_ms) = state.verify_bucket.take(now_ms()) {
        over_connection_limit(myself, state, id, "verifies", retry_after_ms);
        return;
    }
    let issued = state
        .ctx
        .services
        .verify(phone, code, pin, Some(state.peer.ip()));
    state.answer_auth(myself, id, permit, async move {
        let issued = issued.await?;
        Ok(Response::Verified {
            token: issued.token,
            expires_at_ms: issued.expires_at_ms,
        })
    });
}

/// `SetRegistrationLock`: each PIN is hashed with a slow KDF, so it is
/// paced like verify attempts.
pub(crate) fn set_registration_lock(
    myself: &ActorRef<SessionMsg>,
    state: &mut SessionState,
    id: RequestId,
    permit: OwnedSemaphorePermit,
    pin: Option<String>,
) {
    let Some(user) = state.user().cloned() else {
        return;
    };
    if let Err(retry_after_ms) = state.verify_bucket.take(now_ms()) {
        over_connection_limit(myself, state, id, "verifies", retry_after_ms);
        return;
    }
    let set = state.ctx.services.set_registration_lock(user, pin);
    state.answer_auth(myself, id, permit, async move {
        set.await.map(|()| Response::Ok)
    });
}

/// `Login`: checks the token, tells presence, and attaches to the user's
/// mailbox before answering, so the client sees `LoggedIn` before its
/// backlog (the fragment's first pushes queue behind this handler). If the
/// mailbox refuses (a revoked token) or is away, the session is a guest
/// again.
pub(crate) async fn login(
    myself: &ActorRef<SessionMsg>,
    state: &mut SessionState,
    id: RequestId,
    token: String,
) {
    let authenticated = state.ctx.services.authenticate(token).await;
    let auth::Authenticated {
        phone: user,
        generation,
    } = match authenticated {
        Ok(authenticated) => authenticated,
        Err(e) => {
            state
                .responder
                .error(Some(id), e.error_code(), auth_message(&e));
            return;
        }
    };
    state.phase = state.phase.next(PhaseEvent::Authenticated(user.clone()));
    state.token_generation = generation;
    state.cleaned_up = false;
    state
        .ctx
        .services
        .online(user.clone(), state.session_id, myself.get_derived())
        .await;
    match state.attach(myself, &user).await {
        Ok(()) => {
            tracing::debug!(session = state.session_id, %user, "logged in");
            if let Some(ticket) = state.ticket.as_mut() {
                ticket.logged_in();
            }
            if let Some(deadlines) = state.guest_deadlines.take() {
                deadlines.abort();
            }
            state.responder.respond(id, Response::LoggedIn { user });
        }
        Err(e) => {
            state.clean_up();
            state.phase = state.phase.next(PhaseEvent::AttachFailed);
            if e == FragmentError::TokenRevoked {
                metrics::counter!("switchboard_auth_logins_total", "outcome" => "revoked")
                    .increment(1);
            }
            let (code, message) = unavailable(&e);
            state.responder.error(Some(id), code, message);
        }
    }
}

/// `Logout`: every token of the account stops working (the user's fragment
/// closes the sessions of older tokens), then this connection closes.
pub(crate) async fn logout(myself: &ActorRef<SessionMsg>, state: &mut SessionState, id: RequestId) {
    if let Some(user) = state.user().cloned() {
        match state.ctx.services.logout(user).await {
            Ok(_generation) => {
                state.responder.respond(id, Response::Ok);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot revoke the tokens at logout");
                state.responder.error(
                    Some(id),
                    ErrorCode::Internal,
                    "the logout could not be stored; log out again",
                );
            }
        }
    } else {
        state.responder.respond(id, Response::Ok);
    }
    state.close(myself, CloseReason::LoggedOut);
}

/// A code request or verify attempt over this connection's own limit: the
/// client is answered `RateLimited` and disconnected.
fn over_connection_limit(
    myself: &ActorRef<SessionMsg>,
    state: &mut SessionState,
    id: RequestId,
    what: &'static str,
    retry_after_ms: u64,
) {
    let metric = if what == "codes" {
        "switchboard_auth_codes_total"
    } else {
        "switchboard_auth_verifies_total"
    };
    metrics::counter!(metric, "outcome" => "rate_limited_connection").increment(1);
    if let Some(suppressed) = crate::LOGS.allow("connection_auth_limit") {
        tracing::warn!(peer = %state.peer, what, suppressed,
            "a connection went over its limit of auth requests; closing it \
             (logged at most once per interval; see switchboard_auth_*_total)");
    }
    state.refuse_and_close(
        myself,
        id,
        ErrorCode::RateLimited {
            retry_after_ms: u32::try_from(retry_after_ms).unwrap_or(u32::MAX),
        },
        format!("too many {what} on this connection"),
    );
}
