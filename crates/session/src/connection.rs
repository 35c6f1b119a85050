//! The read side of a connection: the reader task.
//!
//! The reader decodes frames (length checked before buffering) and hands each
//! to the session actor together with a permit from a per-connection
//! semaphore, so a client cannot queue unbounded work: the reader stops
//! reading while all permits are out. The write side is `outbound`.
//!
//! A permit is taken without waiting when one is free, the usual case, so
//! that a frame does not also register a cancellation waiter. (The idle
//! timer stays one per read: a timer armed once per connection saved ~2 %
//! of the node's CPU under load but made every idle connection's reader
//! 144 bytes larger.)

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use proto::{ClientFrame, CodecError, RequestId, ServerFrame, decode_frame};
use ractor::ActorRef;
use tokio::io::AsyncRead;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
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
    /// A frame was begun and not finished within the frame timeout.
    SlowFrame,
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
    limits: ReadLimits,
    permits: Arc<Semaphore>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let deliver = |msg| actor.send_message(msg).is_ok();
        let end = read_frames(&mut reader, deliver, limits, &permits, &cancel).await;
        let _ = actor.send_message(SessionMsg::ReadEnded(end));
    })
}

/// What a reader allows a client.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadLimits {
    /// Largest frame, length prefix excluded.
    pub(crate) max_frame_bytes: u32,
    /// Silence before the connection counts as idle.
    pub(crate) idle_timeout: Duration,
    /// Time to finish a frame once its first byte arrived: a client that
    /// trickles a frame in holds a buffer of up to the frame limit.
    pub(crate) frame_timeout: Duration,
}

/// Reads and hands on frames until the connection ends; `deliver` says
/// whether the session still takes them.
async fn read_frames<R>(
    reader: &mut R,
    mut deliver: impl FnMut(SessionMsg) -> bool,
    limits: ReadLimits,
    permits: &Arc<Semaphore>,
    cancel: &CancellationToken,
) -> ReadEnd
where
    R: AsyncRead + Unpin,
{
    let ReadLimits {
        max_frame_bytes,
        idle_timeout,
        frame_timeout,
    } = limits;
    let mut buf = BytesMut::new();
    // When the unfinished frame at the head of `buf` began.
    let mut frame_started: Option<tokio::time::Instant> = None;
    loop {
        loop {
            match decode_frame::<ClientFrame>(&buf, max_frame_bytes) {
                Ok(Some((frame, used))) => {
                    buf.advance(used);
                    frame_started = None;
                    let permit = match Arc::clone(permits).try_acquire_owned() {
                        Ok(permit) => permit,
                        Err(TryAcquireError::Closed) => return ReadEnd::Cancelled,
                        // Every permit is out: stop reading until one is back.
                        Err(TryAcquireError::NoPermits) => tokio::select! {
                            permit = Arc::clone(permits).acquire_owned() => match permit {
                                Ok(permit) => permit,
                                Err(_) => return ReadEnd::Cancelled,
                            },
                            () = cancel.cancelled() => return ReadEnd::Cancelled,
                        },
                    };
                    if !deliver(SessionMsg::Frame(Inbound { frame, permit })) {
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
                    deliver(SessionMsg::Undecodable { request_id, reason });
                }
                Err(CodecError::Malformed { reason, .. }) => return ReadEnd::Malformed(reason),
                Err(CodecError::TooLarge { len, max }) => return ReadEnd::TooLarge { len, max },
                Err(CodecError::Encode(reason)) => return ReadEnd::Malformed(reason),
            }
        }
        let wait = if buf.is_empty() {
            // Every frame is handed on: an idle connection keeps no buffer.
            buf = BytesMut::new();
            idle_timeout
        } else {
            let started = *frame_started.get_or_insert_with(tokio::time::Instant::now);
            frame_timeout
                .saturating_sub(started.elapsed())
                .min(idle_timeout)
        };
        let read = tokio::select! {
            read = tokio::time::timeout(wait, read_into(reader, &mut buf)) => read,
            () = cancel.cancelled() => return ReadEnd::Cancelled,
        };
        match read {
            Err(_) if frame_started.is_some_and(|t| t.elapsed() >= frame_timeout) => {
                return ReadEnd::SlowFrame;
            }
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use proto::{ClientFrame, encode_frame};
    use tokio::io::AsyncWriteExt;
    use tokio::sync::Semaphore;
    use tokio::time::Instant;
    use tokio_util::sync::CancellationToken;

    use super::{ReadEnd, ReadLimits, read_frames};
    use crate::actor::SessionMsg;

    const IDLE: Duration = Duration::from_secs(10);
    const FRAME: Duration = Duration::from_secs(25);

    fn ping() -> Vec<u8> {
        encode_frame(&ClientFrame::Ack { ids: vec![7] }, 1024).expect("encodes")
    }

    /// Runs a reader over `server`, keeping what it delivers in `got`.
    async fn read(
        server: &mut tokio::io::DuplexStream,
        permits: usize,
        cancel: &CancellationToken,
        got: &Arc<Mutex<Vec<SessionMsg>>>,
    ) -> ReadEnd {
        let got = Arc::clone(got);
        let deliver = move |msg| {
            got.lock().expect("lock").push(msg);
            true
        };
        let permits = Arc::new(Semaphore::new(permits));
        let limits = ReadLimits {
            max_frame_bytes: 1024,
            idle_timeout: IDLE,
            frame_timeout: FRAME,
        };
        read_frames(server, deliver, limits, &permits, cancel).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_idle_after_the_idle_timeout() {
        let (_client, mut server) = tokio::io::duplex(1024);
        let started = Instant::now();
        let got = Arc::default();
        let end = read(&mut server, 8, &CancellationToken::new(), &got).await;
        assert_eq!(end, ReadEnd::Idle);
        assert_eq!(started.elapsed().as_secs(), IDLE.as_secs());
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_keeps_sending_is_idle_only_a_timeout_after_its_last_frame() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let started = Instant::now();
        let writer = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(6)).await;
                client.write_all(&ping()).await.expect("write");
            }
            // Keep the stream open, silent.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(client);
        });
        let got: Arc<Mutex<Vec<SessionMsg>>> = Arc::default();
        let end = read(&mut server, 8, &CancellationToken::new(), &got).await;
        assert_eq!(end, ReadEnd::Idle);
        // The last frame came at 30 s: idle from 40 s, not from 10 s.
        assert_eq!(started.elapsed().as_secs(), 30 + IDLE.as_secs());
        assert_eq!(got.lock().expect("lock").len(), 5);
        writer.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_without_permits_waits_and_stops_when_cancelled() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let mut two = ping();
        two.extend(ping());
        client.write_all(&two).await.expect("write");
        let cancel = CancellationToken::new();
        let canceller = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            canceller.cancel();
        });
        // One permit: the first frame holds it (it is kept, unanswered),
        // so the second waits until the connection is cancelled.
        let got: Arc<Mutex<Vec<SessionMsg>>> = Arc::default();
        let end = read(&mut server, 1, &cancel, &got).await;
        assert_eq!(end, ReadEnd::Cancelled);
        assert_eq!(got.lock().expect("lock").len(), 1);
    }

    /// A client trickling a frame in, a byte within every idle timeout, is
    /// cut off at the frame timeout; whole frames restart the clock.
    #[tokio::test(start_paused = true)]
    async fn a_frame_trickled_in_is_cut_off_at_the_frame_timeout() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let started = Instant::now();
        let writer = tokio::spawn(async move {
            // Whole frames for 40 s, a byte at a time: never too slow.
            for _ in 0..2 {
                for byte in ping() {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    client.write_all(&[byte]).await.expect("write");
                }
            }
            // Then one frame that never ends.
            for byte in ping().into_iter().take(3) {
                tokio::time::sleep(Duration::from_secs(8)).await;
                client.write_all(&[byte]).await.expect("write");
            }
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(client);
        });
        let got: Arc<Mutex<Vec<SessionMsg>>> = Arc::default();
        let end = read(&mut server, 8, &CancellationToken::new(), &got).await;
        assert_eq!(end, ReadEnd::SlowFrame);
        assert_eq!(
            got.lock().expect("lock").len(),
            2,
            "the whole frames were read"
        );
        let frame_bytes = ping().len() as u64;
        let last_whole = 2 * 3 * frame_bytes;
        // The third frame's first byte came 8 s after the second ended.
        assert_eq!(
            started.elapsed().as_secs(),
            last_whole + 8 + FRAME.as_secs()
        );
        writer.abort();
    }

    mod properties {
        use proptest::prelude::*;
        use proto::{ClientFrame, PhoneNumber, Request, encode_frame};

        use super::*;
        use crate::connection::Inbound;
        use crate::state::{Admission, Phase, admit};

        fn seed_bytes() -> Vec<u8> {
            let phone = PhoneNumber::parse("+15550001234").expect("phone");
            let frames = [
                ClientFrame::Hello {
                    version: 2,
                    agent: "prop".into(),
                },
                ClientFrame::Request {
                    id: 1,
                    request: Request::Login { token: "t".into() },
                },
                ClientFrame::Request {
                    id: 2,
                    request: Request::Send {
                        to: phone.clone(),
                        client_msg_id: 1,
                        payload: vec![1; 30],
                    },
                },
                ClientFrame::Ack { ids: vec![1, 2] },
                ClientFrame::Request {
                    id: 3,
                    request: Request::Read {
                        sender: phone,
                        ids: vec![9],
                    },
                },
            ];
            frames
                .iter()
                .flat_map(|f| encode_frame(f, 1024).expect("encodes"))
                .collect()
        }

        /// Feeds `bytes` to a reader (then closes the stream) and runs
        /// what it delivers through the phase machine as a session would,
        /// with every login succeeding.
        fn run(bytes: Vec<u8>) -> (ReadEnd, Vec<Admission>) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let (mut client, mut server) = tokio::io::duplex(bytes.len().max(1));
                client.write_all(&bytes).await.expect("write");
                drop(client);
                let got: Arc<Mutex<Vec<SessionMsg>>> = Arc::default();
                let end = read(&mut server, 1024, &CancellationToken::new(), &got).await;
                let me = PhoneNumber::parse("+15550000001").expect("phone");
                let mut phase = Phase::AwaitHello;
                let mut admissions = Vec::new();
                for msg in got.lock().expect("lock").drain(..) {
                    let SessionMsg::Frame(Inbound { frame, .. }) = msg else {
                        continue;
                    };
                    let admission = admit(&phase, &frame, 1..=2);
                    let allowed_as_guest = matches!(
                        &frame,
                        ClientFrame::Request {
                            request: Request::RequestCode { .. }
                                | Request::Verify { .. }
                                | Request::Login { .. }
                                | Request::Ping
                                | Request::MintTestUsers { .. }
                                | Request::VerifyWithPin { .. },
                            ..
                        }
                    );
                    match (&phase, admission) {
                        (Phase::Closing, a) => assert_eq!(a, Admission::Ignore),
                        (Phase::AwaitHello, Admission::Serve) => panic!("served before hello"),
                        (Phase::Guest, Admission::Serve) => {
                            assert!(allowed_as_guest, "a guest was served {frame:?}")
                        }
                        _ => {}
                    }
                    phase = match (admission, &frame) {
                        (Admission::Welcome { .. }, _) => Phase::Guest,
                        (Admission::Refuse { close: true, .. }, _) => Phase::Closing,
                        (
                            Admission::Serve,
                            ClientFrame::Request {
                                request: Request::Login { .. },
                                ..
                            },
                        ) => Phase::LoggedIn(me.clone()),
                        _ => phase,
                    };
                    admissions.push(admission);
                }
                (end, admissions)
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(500))]

            /// Random bytes: the reader ends with end of stream or a reason
            /// to close (which the session answers with an error frame),
            /// never a panic, and nothing is served out of its phase.
            #[test]
            fn random_bytes_end_in_eof_or_an_error(
                bytes in proptest::collection::vec(any::<u8>(), 0..400)
            ) {
                let (end, _) = run(bytes);
                prop_assert!(matches!(
                    end,
                    ReadEnd::Eof | ReadEnd::Malformed(_) | ReadEnd::TooLarge { .. }
                ), "{end:?}");
            }

            /// Valid frames with bytes flipped, cut or added.
            #[test]
            fn mutated_streams_end_in_eof_or_an_error(
                flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
                cut in any::<usize>(),
            ) {
                let mut bytes = seed_bytes();
                for (at, value) in flips {
                    let at = at % bytes.len();
                    bytes[at] = value;
                }
                bytes.truncate(cut % (bytes.len() + 1));
                let (end, _) = run(bytes);
                prop_assert!(matches!(
                    end,
                    ReadEnd::Eof | ReadEnd::Malformed(_) | ReadEnd::TooLarge { .. }
                ), "{end:?}");
            }
        }

        #[test]
        fn the_seed_stream_is_served_in_order() {
            let (end, admissions) = run(seed_bytes());
            assert_eq!(end, ReadEnd::Eof);
            assert_eq!(
                admissions,
                vec![
                    Admission::Welcome { version: 2 },
                    Admission::Serve,
                    Admission::Serve,
                    Admission::Serve,
                    Admission::Serve
                ]
            );
        }
    }
}
