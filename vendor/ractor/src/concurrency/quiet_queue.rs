// Copyright (c) Sean Lawlor
//
// This source code is licensed under both the MIT license found in the
// LICENSE-MIT file in the root directory of this source tree.

//! An unbounded MPSC queue for an actor's ports.
//!
//! Every actor owns a supervision port that most actors use a few times in
//! their life (a child started or stopped) and a message port that many
//! actors (one per client connection, say) use now and then. A tokio
//! unbounded channel allocates its shared state (cache-padded, ~1 KiB) and
//! a first block of 32 slots when it is created, so every actor paid
//! ~1.3 KiB for each before anything came. This queue is a `VecDeque`
//! behind a mutex beside a `Notify`: ~100 bytes while empty, slots only
//! while items wait (a receiver about to wait on an empty queue gives its
//! slots back).
//! Under a tokio runtime, taking an item consumes the task's cooperative
//! budget, as a tokio channel's `recv` does, so an actor with a steady
//! stream of messages still yields to the other tasks of its worker.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::concurrency::Notify;

struct State<T> {
    items: VecDeque<T>,
    receiver_closed: bool,
    sender_gone: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    notify: Notify,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing panics while holding the lock; a poisoned lock still holds
        // a consistent queue.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The sending half of a [quiet_unbounded] queue (one sender, shareable).
pub(crate) struct QuietSender<T> {
    shared: Arc<Shared<T>>,
}

/// The receiving half of a [quiet_unbounded] queue.
pub(crate) struct QuietReceiver<T> {
    shared: Arc<Shared<T>>,
}

/// A queue with one sender and one receiver.
pub(crate) fn quiet_unbounded<T>() -> (QuietSender<T>, QuietReceiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            receiver_closed: false,
            sender_gone: false,
        }),
        notify: Notify::new(),
    });
    (
        QuietSender {
            shared: Arc::clone(&shared),
        },
        QuietReceiver { shared },
    )
}

impl<T> QuietSender<T> {
    /// Queues `item`, or gives it back if the receiver has closed.
    pub(crate) fn send(&self, item: T) -> Result<(), T> {
        let mut state = self.shared.lock();
        if state.receiver_closed {
            return Err(item);
        }
        state.items.push_back(item);
        drop(state);
        // Stores a permit if the receiver is not waiting yet, so a receiver
        // between its check and its wait still wakes.
        self.shared.notify.notify_one();
        Ok(())
    }

    /// Items waiting now (those the receiver has not taken yet).
    pub(crate) fn len(&self) -> usize {
        self.shared.lock().items.len()
    }
}

impl<T> Drop for QuietSender<T> {
    fn drop(&mut self) {
        self.shared.lock().sender_gone = true;
        self.shared.notify.notify_one();
    }
}

impl<T> QuietReceiver<T> {
    /// The next item; `None` once the queue is empty and the sender gone.
    /// Cancel safe: an item is taken only by the poll that returns it.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        #[cfg(feature = "tokio_runtime")]
        tokio::task::coop::consume_budget().await;
        loop {
            {
                let mut state = self.shared.lock();
                if let Some(item) = state.items.pop_front() {
                    return Some(item);
                }
                if state.sender_gone {
                    return None;
                }
                // The receiver is about to wait: an idle actor keeps no
                // slots (one allocation per wake-up, not per message).
                if state.items.capacity() > 0 {
                    state.items = VecDeque::new();
                }
            }
            self.shared.notify.notified().await;
        }
    }

    /// The next item if one is waiting.
    pub(crate) fn try_recv(&mut self) -> Option<T> {
        self.shared.lock().items.pop_front()
    }

    /// Refuses every later send.
    pub(crate) fn close(&mut self) {
        self.shared.lock().receiver_closed = true;
    }
}

impl<T> Drop for QuietReceiver<T> {
    /// As a dropped channel receiver: later sends fail, and what is queued
    /// is dropped now rather than with the last sender.
    fn drop(&mut self) {
        let items = {
            let mut state = self.shared.lock();
            state.receiver_closed = true;
            std::mem::take(&mut state.items)
        };
        drop(items);
    }
}
