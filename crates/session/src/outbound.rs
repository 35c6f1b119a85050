//! Frames from a session to its client: a bounded queue and a writer task
//! that exists only while there is something to write.
//!
//! Why not a tokio channel and a writer task per connection: the channel
//! pre-allocates its first block (~1.2 KiB) and the task ~0.5 KiB, held by
//! every idle connection. Here frames are encoded straight onto the end of
//! one byte buffer; the first frame after a quiet spell starts a writer task,
//! which takes the whole buffer as its next write (a burst of frames is one
//! write, one TLS record) and, once the buffer stays empty, parks the socket's
//! write half back in the queue and ends. An idle connection holds neither a
//! buffer nor a task.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use proto::ServerFrame;
use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio_util::sync::CancellationToken;

use crate::actor::ClientStream;

/// The write half of a client connection.
pub(crate) type ClientWriter = WriteHalf<Box<dyn ClientStream>>;

/// A bounded queue of encoded frames for `writer`. When writing fails, times
/// out or ends with a close, `cancel` is cancelled (the reader stops too).
pub(crate) fn outbound(
    writer: ClientWriter,
    max_frames: usize,
    write_timeout: Duration,
    cancel: CancellationToken,
) -> OutboundSender {
    OutboundSender {
        shared: Arc::new(Shared {
            state: Mutex::new(State {
                bytes: Vec::new(),
                frames: 0,
                max_frames: max_frames.max(1),
                closing: false,
                closed: false,
                idle_writer: Some(writer),
            }),
            write_timeout,
            cancel,
        }),
    }
}

struct Shared {
    state: Mutex<State>,
    write_timeout: Duration,
    cancel: CancellationToken,
}

struct State {
    /// Encoded frames, in order, since the writer last took them.
    bytes: Vec<u8>,
    frames: usize,
    max_frames: usize,
    /// Close after writing what is queued.
    closing: bool,
    /// The connection is over: nothing more is written.
    closed: bool,
    /// The write half while no writer task runs.
    idle_writer: Option<ClientWriter>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change under this lock is a single push or take, so a panic
        // elsewhere cannot leave it half done: poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why a frame was not queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The client is not reading fast enough.
    Full,
    /// The connection is closing or closed.
    Closed,
    /// The frame cannot be encoded (it exceeds the frame size limit).
    Unencodable(String),
}

/// The session's end of the queue; clones share it.
#[derive(Clone)]
pub(crate) struct OutboundSender {
    shared: Arc<Shared>,
}

impl OutboundSender {
    /// Encodes `frame` straight onto the end of the queue.
    pub(crate) fn push_frame(
        &self,
        frame: &ServerFrame,
        max_frame_bytes: u32,
    ) -> Result<(), PushError> {
        self.push_with(|bytes| {
            proto::encode_frame_into(frame, max_frame_bytes, bytes)
                .map_err(|e| PushError::Unencodable(e.to_string()))
        })
    }

    /// Queues bytes that are one whole encoded frame.
    #[cfg(test)]
    fn push(&self, frame: &[u8]) -> Result<(), PushError> {
        self.push_with(|bytes| {
            bytes.extend_from_slice(frame);
            Ok(())
        })
    }

    /// Appends one frame with `append`, which leaves the bytes as they were
    /// when it fails.
    fn push_with(
        &self,
        append: impl FnOnce(&mut Vec<u8>) -> Result<(), PushError>,
    ) -> Result<(), PushError> {
        let mut state = self.shared.lock();
        if state.closed || state.closing {
            return Err(PushError::Closed);
        }
        if state.frames >= state.max_frames {
            return Err(PushError::Full);
        }
        append(&mut state.bytes)?;
        state.frames += 1;
        let idle = state.idle_writer.take();
        drop(state);
        if let Some(writer) = idle {
            self.start_writer(writer);
        }
        Ok(())
    }

    /// Asks for the connection to be closed once the queue is written.
    pub(crate) fn close(&self) -> Result<(), PushError> {
        let mut state = self.shared.lock();
        if state.closed {
            return Err(PushError::Closed);
        }
        state.closing = true;
        let idle = state.idle_writer.take();
        drop(state);
        if let Some(writer) = idle {
            self.start_writer(writer);
        }
        Ok(())
    }

    /// The session ended: unless a close is under way (which finishes on its
    /// own), a parked write half is dropped now rather than when the last
    /// sender goes.
    pub(crate) fn abandon(&self) {
        let mut state = self.shared.lock();
        if state.closing {
            return;
        }
        state.closed = true;
        state.bytes = Vec::new();
        let idle = state.idle_writer.take();
        drop(state);
        drop(idle);
    }

    fn start_writer(&self, writer: ClientWriter) {
        if tokio::runtime::Handle::try_current().is_err() {
            // No runtime (it is shutting down): the connection is over.
            self.shared.lock().closed = true;
            return;
        }
        tokio::spawn(write_out(Arc::clone(&self.shared), writer));
    }
}

/// The writer task: writes what is queued until the queue stays empty, then
/// parks the write half and ends.
async fn write_out(shared: Arc<Shared>, mut writer: ClientWriter) {
    loop {
        // Let the other tasks that are about to queue frames for this client
        // run first: under load, one write then carries many frames (one TLS
        // record, one syscall) instead of one each.
        tokio::task::yield_now().await;
        let (bytes, closing) = {
            let mut state = shared.lock();
            if state.closed {
                return;
            }
            if state.bytes.is_empty() && !state.closing {
                state.idle_writer = Some(writer);
                return;
            }
            state.frames = 0;
            (std::mem::take(&mut state.bytes), state.closing)
        };
        if !bytes.is_empty() {
            let write = async {
                writer.write_all(&bytes).await?;
                writer.flush().await
            };
            let written = tokio::select! {
                written = tokio::time::timeout(shared.write_timeout, write) => written,
                () = shared.cancel.cancelled() => break,
            };
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "client write failed");
                    break;
                }
                Err(_) => {
                    tracing::debug!("client write timed out");
                    break;
                }
            }
        }
        if closing {
            let _ = tokio::time::timeout(Duration::from_secs(1), writer.shutdown()).await;
            break;
        }
    }
    let mut state = shared.lock();
    state.closed = true;
    state.bytes = Vec::new();
    drop(state);
    shared.cancel.cancel();
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proto::{ErrorCode, ServerFrame};
    use tokio::io::{AsyncReadExt, DuplexStream};
    use tokio_util::sync::CancellationToken;

    use super::{OutboundSender, PushError, outbound};
    use crate::actor::ClientStream;

    /// A queue writing into one end of an in-memory pipe of `capacity` bytes;
    /// the test reads the other end.
    fn queue_over_pipe(
        max_frames: usize,
        capacity: usize,
    ) -> (OutboundSender, DuplexStream, CancellationToken) {
        let (client, server) = tokio::io::duplex(capacity);
        let stream: Box<dyn ClientStream> = Box::new(server);
        let (_reader, writer) = tokio::io::split(stream);
        let cancel = CancellationToken::new();
        let tx = outbound(
            writer,
            max_frames,
            Duration::from_millis(300),
            cancel.clone(),
        );
        (tx, client, cancel)
    }

    fn writer_is_parked(tx: &OutboundSender) -> bool {
        tx.shared.lock().idle_writer.is_some()
    }

    async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
        for _ in 0..500 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never: {what}");
    }

    #[tokio::test]
    async fn frames_arrive_in_order_and_an_idle_queue_parks_its_writer() {
        let (tx, mut client, _cancel) = queue_over_pipe(8, 1024);
        assert!(writer_is_parked(&tx));
        tx.push(b"one").expect("push");
        tx.clone().push(b"two").expect("push");
        let mut got = [0u8; 6];
        client.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"onetwo");
        eventually("the writer parks", || writer_is_parked(&tx)).await;
        assert_eq!(tx.shared.lock().bytes.capacity(), 0);
        // And wakes again for the next frame.
        tx.push(b"three").expect("push");
        let mut got = [0u8; 5];
        client.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"three");
    }

    #[tokio::test]
    async fn a_full_queue_refuses_until_the_writer_takes() {
        let (tx, mut client, _cancel) = queue_over_pipe(2, 1024);
        // Frames queued without yielding to the writer count up to the limit.
        tx.push(b"a").expect("push");
        tx.push(b"b").expect("push");
        assert_eq!(tx.push(b"c"), Err(PushError::Full));
        let mut got = [0u8; 2];
        client.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"ab");
        tx.push(b"c").expect("room again");
    }

    #[tokio::test]
    async fn a_frame_over_the_limit_is_refused_and_leaves_the_queue_as_it_was() {
        let (tx, mut client, _cancel) = queue_over_pipe(8, 1024);
        tx.push(b"ok").expect("push");
        let big = ServerFrame::Error {
            id: None,
            code: ErrorCode::Internal,
            message: "x".repeat(100),
        };
        assert!(matches!(
            tx.push_frame(&big, 16),
            Err(PushError::Unencodable(_))
        ));
        let small = ServerFrame::Error {
            id: None,
            code: ErrorCode::Internal,
            message: String::new(),
        };
        tx.push_frame(&small, 1024).expect("fits");
        let mut expected = b"ok".to_vec();
        expected.extend(proto::encode_frame(&small, 1024).expect("encodes"));
        let mut got = vec![0u8; expected.len()];
        client.read_exact(&mut got).await.expect("read");
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn close_writes_what_is_queued_then_ends_the_stream() {
        let (tx, mut client, cancel) = queue_over_pipe(8, 1024);
        tx.push(b"last").expect("push");
        tx.close().expect("close");
        assert_eq!(tx.push(b"after"), Err(PushError::Closed));
        let mut all = Vec::new();
        client.read_to_end(&mut all).await.expect("read to the end");
        assert_eq!(all, b"last");
        eventually("the reader is told", || cancel.is_cancelled()).await;
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_is_cut_off_after_the_write_timeout() {
        let (tx, _client, cancel) = queue_over_pipe(8, 16);
        tx.push(&[7u8; 1000]).expect("push");
        eventually("cancelled by the write timeout", || cancel.is_cancelled()).await;
        assert_eq!(tx.push(b"x"), Err(PushError::Closed));
    }

    #[tokio::test]
    async fn a_gone_client_ends_the_connection() {
        let (tx, client, cancel) = queue_over_pipe(8, 1024);
        drop(client);
        tx.push(b"lost").expect("queued before the failure shows");
        eventually("cancelled by the failed write", || cancel.is_cancelled()).await;
        assert_eq!(tx.push(b"x"), Err(PushError::Closed));
    }

    #[tokio::test]
    async fn abandoning_drops_the_parked_write_half() {
        let (tx, mut client, _cancel) = queue_over_pipe(8, 1024);
        tx.abandon();
        assert!(!writer_is_parked(&tx));
        assert_eq!(tx.push(b"x"), Err(PushError::Closed));
        // The pipe's other end sees the end of the stream once both halves
        // are gone (the test dropped the read half at once).
        let mut all = Vec::new();
        client.read_to_end(&mut all).await.expect("end of stream");
        assert!(all.is_empty());
    }
}
