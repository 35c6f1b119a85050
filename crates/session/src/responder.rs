//! Frames from a session to its client: the bounded queue's policy (what
//! may be shed, what disconnects a slow consumer) and the frames built from
//! mailbox entries and presence updates.

use offline_queue::entry::GroupItem;
use offline_queue::{Entry, EntryBody};
use presence::core::Update;
use proto::{ErrorCode, RequestId, Response, ServerFrame};
use tokio_util::sync::CancellationToken;

use crate::outbound::{OutboundSender, PushError};

/// is disconnected (cancelling the connection) rather than buffered without
/// bound; it resumes from its mailbox.
#[derive(Clone)]
pub(crate) struct Responder {
    pub(crate) out: OutboundSender,
    pub(crate) cancel: CancellationToken,
    pub(crate) max_frame_bytes: u32,
}

impl Responder {
    /// Queues a frame that must not be lost; false if the client is gone.
    pub(crate) fn send(&self, frame: ServerFrame) -> bool {
        match self.out.push_frame(&frame, self.max_frame_bytes) {
            Ok(()) => true,
            Err(PushError::Full) => {
                tracing::info!("slow consumer: outbound queue full, disconnecting");
                metrics::counter!("switchboard_slow_consumer_disconnects_total").increment(1);
                self.cancel.cancel();
                false
            }
            Err(PushError::Closed) => false,
            Err(PushError::Unencodable(reason)) => {
                tracing::error!(%reason, "dropping a frame that cannot be encoded");
                match frame {
                    // An answer too large for a frame: the request gets an
                    // error instead of waiting for its timeout.
                    ServerFrame::Response { id, .. } => self.send(ServerFrame::Error {
                        id: Some(id),
                        code: ErrorCode::Internal,
                        message: "the answer exceeds the frame size limit".into(),
                    }),
                    _ => true,
                }
            }
        }
    }

    /// Queues a mailbox entry. One that cannot be encoded (a receipt stored
    /// before receipts were split, a message above a lowered frame limit)
    /// is answered `Unencodable`, so that the caller drops it for good
    /// instead of leaving it in the delivery window, where it would hold a
    /// slot forever.
    pub(crate) fn push_entry(&self, frame: ServerFrame) -> EntryPush {
        match self.out.push_frame(&frame, self.max_frame_bytes) {
            Ok(()) => EntryPush::Queued,
            Err(PushError::Unencodable(reason)) => EntryPush::Unencodable(reason),
            Err(PushError::Closed) => EntryPush::Gone,
            Err(PushError::Full) => {
                self.send(frame);
                EntryPush::Gone
            }
        }
    }

    /// Queues a frame that may be shed under pressure (presence, typing).
    pub(crate) fn send_droppable(&self, frame: ServerFrame) {
        // A full queue sheds these first (before spending work on encoding).
        if let Err(PushError::Full) = self.out.push_frame(&frame, self.max_frame_bytes) {
            metrics::counter!("switchboard_frames_shed_total").increment(1);
        }
    }

    pub(crate) fn respond(&self, id: RequestId, response: Response) -> bool {
        self.send(ServerFrame::Response { id, response })
    }

    pub(crate) fn error(
        &self,
        id: Option<RequestId>,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> bool {
        self.send(ServerFrame::Error {
            id,
            code,
            message: message.into(),
        })
    }
}

/// What became of a mailbox entry handed to [`Responder::push_entry`].
pub(crate) enum EntryPush {
    Queued,
    /// The client is gone (or was just dropped as a slow consumer).
    Gone,
    /// It cannot be encoded within the frame limit.
    Unencodable(String),
}

/// The frame that delivers a mailbox entry; `Err` for one no client can
/// be shown (a group reference the mailbox did not resolve).
pub(crate) fn entry_frame(entry: Entry) -> Result<ServerFrame, String> {
    Ok(match entry.body {
        EntryBody::Message {
            from,
            client_msg_id,
            server_ts,
            payload,
        } => ServerFrame::Deliver {
            msg_id: entry.id,
            from,
            client_msg_id,
            server_ts,
            payload,
        },
        EntryBody::Receipt {
            kind,
            by,
            msg_ids,
            ts,
        } => ServerFrame::Receipt {
            id: entry.id,
            kind,
            by,
            msg_ids,
            ts,
        },
        EntryBody::Group {
            group,
            position,
            item:
                GroupItem::Message {
                    from,
                    client_msg_id,
                    server_ts,
                    payload,
                },
        } => ServerFrame::GroupDeliver {
            msg_id: entry.id,
            group,
            position,
            from,
            client_msg_id,
            server_ts,
            payload,
        },
        EntryBody::Group {
            group,
            position,
            item: GroupItem::Change { by, change, ts },
        } => ServerFrame::GroupEvent {
            msg_id: entry.id,
            group,
            position,
            by,
            change,
            ts,
        },
        EntryBody::Group {
            group,
            item:
                GroupItem::Receipt {
                    kind,
                    positions,
                    ts,
                    ..
                },
            ..
        } => ServerFrame::GroupReceipt {
            msg_id: entry.id,
            group,
            positions,
            kind,
            ts,
        },
        EntryBody::GroupRef { .. } => {
            return Err("a group reference the mailbox did not resolve".to_owned());
        }
    })
}

/// The frame of a presence or typing update.
pub(crate) fn update_frame(update: Update) -> ServerFrame {
    match update {
        Update::Presence { user, status } => ServerFrame::Presence { user, status },
        Update::Typing { from, active } => ServerFrame::Typing { from, active },
    }
}
