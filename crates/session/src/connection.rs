//! The read side of a connection: the reader task.
//!
//! The reader decodes frames (length checked before buffering) and hands each
//! to the session actor together with a permit from a per-connection
//! semaphore, so a client cannot queue unbounded work: the reader stops
//! reading while all permits are out. The write side is `outbound`.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use proto::{ClientFrame, CodecError, RequestId, ServerFrame, decode_frame};
use ractor::ActorRef;
use tokio::io::AsyncRead;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::actor::SessionMsg;

/// Why the reader stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadEnd {
    /// The client closed the connection.
    Eof,
    /// A socket error.
    Io(String),
    /// Nothing arrived within the idle timeout.
    Idle,
    /// A length prefix above the limit.
    TooLarge {
        /// Announced length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// Bytes that are not a frame.
    Malformed(String),
    /// The connection is being torn down from our side.
    Cancelled,
}

/// A decoded frame with the permit it holds until answered.
pub struct Inbound {
    /// The frame.
    pub frame: ClientFrame,
    /// Released when the request is answered.
    pub permit: OwnedSemaphorePermit,
}

/// Reads what the stream has and appends it to `buf`; 0 means end of file.
async fn read_into<R>(reader: &mut R, buf: &mut BytesMut) -> std::io::Result<usize>
where
    R: AsyncRead + Unpin,
{
    std::future::poll_fn(|cx| crate::read_chunk::poll_read_appending(reader, cx, buf)).await
}

/// Starts the reader task.
pub(crate) fn spawn_reader<R>(
    mut reader: R,
    actor: ActorRef<SessionMsg>,
    max_frame_bytes: u32,
    idle_timeout: Duration,
    permits: Arc<Semaphore>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let end = read_frames(
            &mut reader,
            &actor,
            max_frame_bytes,
            idle_timeout,
            &permits,
            &cancel,
        )
        .await;
        let _ = actor.send_message(SessionMsg::ReadEnded(end));
    })
}

async fn read_frames<R>(
    reader: &mut R,
    actor: &ActorRef<SessionMsg>,
    max_frame_bytes: u32,
    idle_timeout: Duration,
    permits: &Arc<Semaphore>,
    cancel: &CancellationToken,
) -> ReadEnd
where
    R: AsyncRead + Unpin,
{
    let mut buf = BytesMut::new();
    loop {
        loop {
            match decode_frame::<ClientFrame>(&buf, max_frame_bytes) {
                Ok(Some((frame, used))) => {
                    buf.advance(used);
                    let permit = tokio::select! {
                        permit = Arc::clone(permits).acquire_owned() => match permit {
                            Ok(permit) => permit,
                            Err(_) => return ReadEnd::Cancelled,
                        },
                        () = cancel.cancelled() => return ReadEnd::Cancelled,
                    };
                    if actor
                        .send_message(SessionMsg::Frame(Inbound { frame, permit }))
                        .is_err()
                    {
                        return ReadEnd::Cancelled;
                    }
                }
                Ok(None) => break,
                Err(CodecError::Malformed {
                    request_id: Some(request_id),
                    consumed,
                    reason,
                    ..
                }) => {
                    buf.advance(consumed);
                    let _ = actor.send_message(SessionMsg::Undecodable { request_id, reason });
                }
                Err(CodecError::Malformed { reason, .. }) => return ReadEnd::Malformed(reason),
                Err(CodecError::TooLarge { len, max }) => return ReadEnd::TooLarge { len, max },
                Err(CodecError::Encode(reason)) => return ReadEnd::Malformed(reason),
            }
        }
        if buf.is_empty() {
            // Every frame is handed on: an idle connection keeps no buffer.
            buf = BytesMut::new();
        }
        let read = tokio::select! {
            read = tokio::time::timeout(idle_timeout, read_into(reader, &mut buf)) => read,
            () = cancel.cancelled() => return ReadEnd::Cancelled,
        };
        match read {
            Err(_) => return ReadEnd::Idle,
            Ok(Ok(0)) => return ReadEnd::Eof,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return ReadEnd::Io(e.to_string()),
        }
    }
}

/// The error answering a request whose id could be read but whose body could not.
pub(crate) fn undecodable_error(request_id: RequestId, reason: &str) -> ServerFrame {
    ServerFrame::Error {
        id: Some(request_id),
        code: proto::ErrorCode::UnknownRequest,
        message: format!("request not understood: {reason}"),
    }
}
