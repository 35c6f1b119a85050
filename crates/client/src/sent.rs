//! Who each recently sent message went to, so that a receipt can be
//! checked: a `Delivered` or `Read` receipt counts only for messages sent
//! to the user named in its `by`. The node checks this too; the client does
//! not rely on it. Pure and bounded (the oldest are forgotten).

use std::collections::{HashMap, VecDeque};

use proto::{MessageId, PhoneNumber};

/// How many sends a client remembers by default.
pub const DEFAULT_REMEMBERED_SENDS: usize = 65_536;

/// Recently acknowledged sends: message id → recipient.
#[derive(Debug)]
pub struct SentMessages {
    capacity: usize,
    order: VecDeque<MessageId>,
    recipients: HashMap<MessageId, PhoneNumber>,
}

impl Default for SentMessages {
    fn default() -> Self {
        Self::new(DEFAULT_REMEMBERED_SENDS)
    }
}

impl SentMessages {
    /// Remembers at most `capacity` sends.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            order: VecDeque::new(),
            recipients: HashMap::new(),
        }
    }

    /// Message `msg_id` was sent to `to`.
    pub fn record(&mut self, msg_id: MessageId, to: PhoneNumber) {
        if self.recipients.insert(msg_id, to).is_none() {
            self.order.push_back(msg_id);
        }
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.recipients.remove(&old);
            }
        }
    }

    /// The ids of a receipt by `by` that it may speak for: every id except
    /// those known to have gone to someone else (ids sent before the
    /// client started, or forgotten, cannot be checked and are kept).
    pub fn receipt_ids(&self, by: &PhoneNumber, msg_ids: &[MessageId]) -> Vec<MessageId> {
        msg_ids
            .iter()
            .copied()
            .filter(|id| self.recipients.get(id).is_none_or(|to| to == by))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phone(n: u32) -> PhoneNumber {
        PhoneNumber::parse(&format!("+1555{n:07}")).expect("phone")
    }

    #[test]
    fn a_receipt_speaks_only_for_messages_sent_to_its_reader() {
        let mut sent = SentMessages::new(3);
        sent.record(1, phone(1));
        sent.record(2, phone(2));
        sent.record(3, phone(1));
        // (by, ids, kept)
        let cases: &[(u32, &[MessageId], &[MessageId])] = &[
            (1, &[1, 3], &[1, 3]),
            (1, &[1, 2, 3], &[1, 3]),
            (2, &[1, 3], &[]),
            (2, &[2, 99], &[2, 99]),
        ];
        for (by, ids, kept) in cases {
            assert_eq!(
                sent.receipt_ids(&phone(*by), ids),
                kept.to_vec(),
                "by {by} {ids:?}"
            );
        }
        // The oldest is forgotten beyond the capacity: no longer checked.
        sent.record(4, phone(2));
        assert_eq!(sent.receipt_ids(&phone(2), &[1]), vec![1]);
        assert_eq!(sent.receipt_ids(&phone(2), &[3]), Vec::<MessageId>::new());
    }
}
