//! The queue of frames from a session to its writer task.
//!
//! Why not a tokio mpsc channel: a channel allocates its first block of
//! slots and its shared state up front (~1.2 KiB), held by every idle
//! connection. Here frames are appended, already encoded, to one byte buffer
//! that the writer takes whole as its next write: an empty queue holds no
//! allocation, and a burst of frames becomes one write without a second copy.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// A bounded queue of encoded frames for one client.
pub(crate) fn queue(max_frames: usize) -> (OutboundSender, OutboundReceiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            bytes: Vec::new(),
            frames: 0,
            max_frames: max_frames.max(1),
            closing: false,
            senders: 1,
            receiver_gone: false,
        }),
        ready: Notify::new(),
    });
    (
        OutboundSender {
            shared: Arc::clone(&shared),
        },
        OutboundReceiver { shared },
    )
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the writer; `notify_one` keeps a permit if it is not waiting.
    ready: Notify,
}

struct State {
    /// Encoded frames, in order, since the writer last took them.
    bytes: Vec<u8>,
    frames: usize,
    max_frames: usize,
    /// Close after writing what is queued.
    closing: bool,
    senders: usize,
    receiver_gone: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves consistent state (every
        // change is a single push or take), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The client is not reading fast enough.
    Full,
    /// The writer is gone (the connection is closed).
    Closed,
}

/// The sessions's end; clones share the queue.
pub(crate) struct OutboundSender {
    shared: Arc<Shared>,
}

impl OutboundSender {
    /// Queues one encoded frame.
    pub(crate) fn push(&self, frame: &[u8]) -> Result<(), PushError> {
        let mut state = self.shared.lock();
        if state.receiver_gone || state.closing {
            return Err(PushError::Closed);
        }
        if state.frames >= state.max_frames {
            return Err(PushError::Full);
        }
        state.bytes.extend_from_slice(frame);
        state.frames += 1;
        drop(state);
        self.shared.ready.notify_one();
        Ok(())
    }

    /// Asks the writer to close the connection once the queue is written.
    pub(crate) fn close(&self) -> Result<(), PushError> {
        let mut state = self.shared.lock();
        if state.receiver_gone {
            return Err(PushError::Closed);
        }
        state.closing = true;
        drop(state);
        self.shared.ready.notify_one();
        Ok(())
    }

    /// Whether the next frame would be refused as `Full`.
    pub(crate) fn is_full(&self) -> bool {
        let state = self.shared.lock();
        state.frames >= state.max_frames
    }
}

impl Clone for OutboundSender {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Drop for OutboundSender {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.senders -= 1;
        let last = state.senders == 0;
        drop(state);
        if last {
            self.shared.ready.notify_one();
        }
    }
}

/// What the writer takes from the queue at once.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Batch {
    /// Encoded frames to write, in order.
    pub(crate) bytes: Vec<u8>,
    /// Close the connection after writing them.
    pub(crate) closing: bool,
}

/// The writer's end.
pub(crate) struct OutboundReceiver {
    shared: Arc<Shared>,
}

impl OutboundReceiver {
    /// Waits until there is something to take; false once every sender is
    /// gone and nothing is left.
    pub(crate) async fn ready(&self) -> bool {
        loop {
            {
                let state = self.shared.lock();
                if !state.bytes.is_empty() || state.closing {
                    return true;
                }
                if state.senders == 0 {
                    return false;
                }
            }
            self.shared.ready.notified().await;
        }
    }

    /// Takes everything queued, leaving the queue without an allocation.
    pub(crate) fn take(&self) -> Batch {
        let mut state = self.shared.lock();
        state.frames = 0;
        Batch {
            bytes: std::mem::take(&mut state.bytes),
            closing: state.closing,
        }
    }
}

impl Drop for OutboundReceiver {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.receiver_gone = true;
        state.bytes = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Batch, PushError, queue};

    #[tokio::test]
    async fn frames_arrive_in_order_as_one_batch_and_the_queue_empties() {
        let (tx, rx) = queue(8);
        tx.push(b"one").expect("push");
        tx.clone().push(b"two").expect("push");
        assert!(rx.ready().await);
        assert_eq!(
            rx.take(),
            Batch {
                bytes: b"onetwo".to_vec(),
                closing: false
            }
        );
        assert_eq!(rx.take(), Batch::default());
    }

    #[tokio::test]
    async fn a_full_queue_refuses_until_the_writer_takes() {
        let (tx, rx) = queue(2);
        tx.push(b"a").expect("push");
        tx.push(b"b").expect("push");
        assert!(tx.is_full());
        assert_eq!(tx.push(b"c"), Err(PushError::Full));
        rx.take();
        assert!(!tx.is_full());
        tx.push(b"c").expect("room again");
    }

    #[tokio::test]
    async fn the_writer_wakes_for_a_frame_pushed_while_it_waits() {
        let (tx, rx) = queue(4);
        let waiting = tokio::spawn(async move {
            let ready = rx.ready().await;
            (ready, rx.take())
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.push(b"late").expect("push");
        let (ready, batch) = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .expect("task");
        assert!(ready);
        assert_eq!(batch.bytes, b"late");
    }

    #[tokio::test]
    async fn close_is_seen_after_the_frames_before_it_and_refuses_more() {
        let (tx, rx) = queue(4);
        tx.push(b"last").expect("push");
        tx.close().expect("close");
        assert_eq!(tx.push(b"after"), Err(PushError::Closed));
        assert!(rx.ready().await);
        assert_eq!(
            rx.take(),
            Batch {
                bytes: b"last".to_vec(),
                closing: true
            }
        );
    }

    #[tokio::test]
    async fn the_writer_ends_when_every_sender_is_gone() {
        let (tx, rx) = queue(4);
        let other = tx.clone();
        drop(tx);
        let waiting = tokio::spawn(async move { rx.ready().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(other);
        let ready = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .expect("task");
        assert!(!ready);
    }

    #[tokio::test]
    async fn senders_learn_that_the_writer_is_gone() {
        let (tx, rx) = queue(4);
        drop(rx);
        assert_eq!(tx.push(b"x"), Err(PushError::Closed));
        assert_eq!(tx.close(), Err(PushError::Closed));
    }
}
