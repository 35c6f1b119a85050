//! A bounded set of recently seen mailbox ids, to hide redeliveries.
//!
//! Delivery is at-least-once: an entry the app has not acknowledged yet, or
//! whose ack was lost with a connection, is pushed again after the next login.
//! The client shows each id once. It also remembers which ids the app has
//! acknowledged, so that a redelivered entry whose ack was lost is acked again
//! instead of being hidden forever (and redelivered on every login).
//!
//! Memory is bounded: past `capacity` ids the oldest are forgotten (a
//! redelivery that old is shown again, which at-least-once allows).

use std::collections::{HashMap, VecDeque};

use proto::MessageId;

/// The default number of ids remembered.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// What [`RecentIds::observe`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First time: show it.
    New,
    /// Shown before and not yet acknowledged by the app: drop it.
    Pending,
    /// Shown and acknowledged before: drop it and acknowledge it again.
    Acked,
}

/// Recently seen ids, oldest forgotten first.
#[derive(Debug)]
pub struct RecentIds {
    acked: HashMap<MessageId, bool>,
    order: VecDeque<MessageId>,
    capacity: usize,
}

impl RecentIds {
    /// Remembers at most `capacity` ids (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            acked: HashMap::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    /// Records `id` as delivered; says whether it was seen before.
    pub fn observe(&mut self, id: MessageId) -> Seen {
        match self.acked.get(&id) {
            Some(true) => Seen::Acked,
            Some(false) => Seen::Pending,
            None => {
                if self.order.len() == self.capacity
                    && let Some(oldest) = self.order.pop_front()
                {
                    self.acked.remove(&oldest);
                }
                self.order.push_back(id);
                self.acked.insert(id, false);
                Seen::New
            }
        }
    }

    /// Records that the app acknowledged `id` (ignored if `id` is not remembered).
    pub fn mark_acked(&mut self, id: MessageId) {
        if let Some(acked) = self.acked.get_mut(&id) {
            *acked = true;
        }
    }

    /// Number of ids remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

impl Default for RecentIds {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_id_is_new_once() {
        let mut ids = RecentIds::new(10);
        assert_eq!(ids.observe(1), Seen::New);
        assert_eq!(ids.observe(2), Seen::New);
        assert_eq!(ids.observe(1), Seen::Pending);
        assert_eq!(ids.observe(2), Seen::Pending);
        assert_eq!(ids.len(), 2);
    }

    #[test]
    fn acked_ids_are_reported_for_a_re_ack() {
        let mut ids = RecentIds::new(10);
        ids.observe(5);
        ids.mark_acked(5);
        ids.mark_acked(6); // never seen: ignored
        assert_eq!(ids.observe(5), Seen::Acked);
        assert_eq!(ids.observe(6), Seen::New);
    }

    #[test]
    fn oldest_ids_are_forgotten_past_capacity() {
        let mut ids = RecentIds::new(3);
        for id in 1..=4 {
            assert_eq!(ids.observe(id), Seen::New);
        }
        assert_eq!(ids.len(), 3);
        assert_eq!(ids.observe(1), Seen::New, "1 was evicted");
        assert_eq!(ids.observe(4), Seen::Pending);
        // Re-observing does not refresh the position: 2 was evicted by 1.
        assert_eq!(ids.observe(2), Seen::New);
    }

    #[test]
    fn zero_capacity_still_remembers_the_last() {
        let mut ids = RecentIds::new(0);
        assert_eq!(ids.observe(1), Seen::New);
        assert_eq!(ids.observe(1), Seen::Pending);
        assert_eq!(ids.observe(2), Seen::New);
        assert_eq!(ids.observe(1), Seen::New);
    }
}
