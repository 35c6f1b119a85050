//! Messages: sends (with the server ack once stored), acks, read receipts,
//! and the mailbox entries pushed to the client.
//!
//! A send or a receipt is handed to its fragment before the session reads
//! the client's next request, so a client's requests reach fragments in the
//! order it sent them; the durable answer is awaited off the actor.

use offline_queue::fragment::ReceiptRequest;
use offline_queue::{Entry, NewMessage};
use proto::clock::now_ms;
use proto::{CloseReason, ErrorCode, MessageId, PhoneNumber, ReceiptKind, RequestId, Response};
use ractor::ActorRef;
use tokio::sync::OwnedSemaphorePermit;

use super::unavailable;
use crate::actor::{SessionMsg, SessionState};
use crate::responder::{EntryPush, entry_frame};
use crate::services::MailboxAnswer;

/// `Send` / `SendAfter`: stores a message in the recipient's mailbox
/// fragment (after the sender's message `after`, if given) and answers with
/// the server ack. A client over its send rate is read more slowly.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn send(
    state: &mut SessionState,
    id: RequestId,
    permit: OwnedSemaphorePermit,
    to: PhoneNumber,
    client_msg_id: u64,
    after: Option<u64>,
    payload: Vec<u8>,
) {
    let Some(from) = state.user().cloned() else {
        return;
    };
    let wait = state.pacer.take(now_ms());
    if !wait.is_zero() {
        metrics::counter!("switchboard_sends_paced_total").increment(1);
        tokio::time::sleep(wait).await;
    }
    let message = NewMessage {
        to,
        from,
        client_msg_id,
        after,
        payload,
    };
    let received = std::time::Instant::now();
    let handed = state.ctx.services.append(message).await;
    let Some(answer) = answer_or_refuse(state, id, handed) else {
        return;
    };
    state.answer_later(id, permit, async move {
        let stored = answer.await.map_err(|e| unavailable(&e))?;
        metrics::histogram!("switchboard_send_ack_seconds")
            .record(received.elapsed().as_secs_f64());
        Ok(Response::ServerAck {
            client_msg_id,
            msg_id: stored.msg_id,
            server_ts: stored.server_ts,
        })
    });
}

/// `Ack` (protocol 1, answered): hands the ids to the user's fragment.
pub(crate) async fn ack(state: &mut SessionState, id: RequestId, ids: Vec<MessageId>) {
    let Some(user) = state.user().cloned() else {
        return;
    };
    if !id_list_admitted(state, id, &ids).await {
        return;
    }
    match state.ctx.services.ack(user, ids).await {
        Ok(()) => state.responder.respond(id, Response::Ok),
        Err(e) => {
            let (code, message) = unavailable(&e);
            state.responder.error(Some(id), code, message)
        }
    };
}

/// `Read`: a read receipt for `sender`'s messages. It goes through the
/// reader's own fragment, which passes it on to the sender's behind the
/// Delivered receipts of this reader's earlier acks (acks are not answered,
/// so a client reads right after it acks).
pub(crate) async fn read(
    state: &mut SessionState,
    id: RequestId,
    permit: OwnedSemaphorePermit,
    sender: PhoneNumber,
    ids: Vec<MessageId>,
) {
    let Some(user) = state.user().cloned() else {
        return;
    };
    if !id_list_admitted(state, id, &ids).await {
        return;
    }
    let request = ReceiptRequest {
        owner: sender,
        kind: ReceiptKind::Read,
        by: user.clone(),
        msg_ids: ids,
        ts: now_ms(),
        then_delete: None,
    };
    let handed = state.ctx.services.store_receipt(user, request).await;
    let Some(answer) = answer_or_refuse(state, id, handed) else {
        return;
    };
    state.answer_later(id, permit, async move {
        answer.await.map_err(|e| unavailable(&e))?;
        Ok(Response::Ok)
    });
}

/// The answer to come of a request its fragment took; if it did not take
/// it, request `id` is answered with the error.
fn answer_or_refuse(
    state: &SessionState,
    id: RequestId,
    handed: Result<MailboxAnswer, offline_queue::FragmentError>,
) -> Option<MailboxAnswer> {
    match handed {
        Ok(answer) => Some(answer),
        Err(e) => {
            let (code, message) = unavailable(&e);
            state.responder.error(Some(id), code, message);
            None
        }
    }
}

/// Queues pushed mailbox entries for the client. An entry that cannot be
/// encoded is dropped from the mailbox as if acknowledged (logged and
/// counted), so it neither holds a delivery-window slot nor comes back.
pub(crate) async fn push_entries(state: &mut SessionState, entries: Vec<Entry>) {
    let mut undeliverable = Vec::new();
    for entry in entries {
        let id = entry.id;
        let pushed = match entry_frame(entry) {
            Ok(frame) => state.responder.push_entry(frame),
            Err(reason) => EntryPush::Unencodable(reason),
        };
        match pushed {
            EntryPush::Queued => {}
            EntryPush::Gone => break,
            EntryPush::Unencodable(reason) => {
                metrics::counter!("switchboard_entries_undeliverable_total").increment(1);
                if let Some(suppressed) = crate::LOGS.allow("undeliverable-entry") {
                    tracing::warn!(session = state.session_id, id, %reason, suppressed,
                        "dropping a mailbox entry that cannot be encoded within the frame limit");
                }
                undeliverable.push(id);
            }
        }
    }
    if !undeliverable.is_empty() {
        forward_ack(state, undeliverable).await;
    }
}

/// Why an ack or read list is refused, if it is.
fn id_list_error(ids: &[MessageId]) -> Option<String> {
    if ids.is_empty() {
        Some("no ids".to_owned())
    } else if ids.len() > proto::MAX_IDS_PER_ACK {
        Some(format!(
            "{} ids; at most {} in one frame",
            ids.len(),
            proto::MAX_IDS_PER_ACK
        ))
    } else {
        None
    }
}

/// Refuses request `id` if its id list is empty or too long; otherwise
/// waits out the ack pacer. Whether the request goes on.
async fn id_list_admitted(state: &mut SessionState, id: RequestId, ids: &[MessageId]) -> bool {
    if let Some(reason) = id_list_error(ids) {
        state
            .responder
            .error(Some(id), ErrorCode::InvalidRequest, reason);
        return false;
    }
    pace_acks(state).await;
    true
}

/// Waits out the ack pacer: a client acking or reading faster than its
/// rate is read more slowly (the frame's permit is held meanwhile).
async fn pace_acks(state: &mut SessionState) {
    let wait = state.ack_pacer.take(now_ms());
    if !wait.is_zero() {
        metrics::counter!("switchboard_acks_paced_total").increment(1);
        tokio::time::sleep(wait).await;
    }
}

/// An unanswered ack (protocol 2). A list too long for any device's
/// window breaks the protocol: error frame and close.
pub(crate) async fn acknowledge(
    myself: &ActorRef<SessionMsg>,
    state: &mut SessionState,
    ids: Vec<MessageId>,
) {
    if state.user().is_none() {
        return;
    }
    if ids.len() > proto::MAX_IDS_PER_ACK {
        metrics::counter!("switchboard_protocol_errors_total").increment(1);
        state.responder.error(
            None,
            ErrorCode::InvalidRequest,
            id_list_error(&ids).unwrap_or_default(),
        );
        state.close(myself, CloseReason::ProtocolViolation);
        return;
    }
    if ids.is_empty() {
        return;
    }
    pace_acks(state).await;
    forward_ack(state, ids).await;
}

/// Hands acked ids to the user's fragment. If the fragment is not
/// reachable now the ack is dropped; the entries stay in the mailbox, are
/// pushed again and the client acks them again.
async fn forward_ack(state: &mut SessionState, ids: Vec<MessageId>) {
    let Some(user) = state.user().cloned() else {
        return;
    };
    if let Err(e) = state.ctx.services.ack(user.clone(), ids).await {
        tracing::debug!(session = state.session_id, %user, error = %e,
            "ack dropped: the fragment is not reachable; its entries will be pushed again");
    }
}
