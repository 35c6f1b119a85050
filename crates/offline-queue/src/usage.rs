//! How much undelivered mail each user of a fragment holds, by sender, so
//! that no sender (and no number nobody reads) can fill the disk: a
//! message is refused once its sender holds too much in the recipient's
//! mailbox, or the mailbox holds too much in all. Pure.
//!
//! Counted are message entries from their append to their ack (or expiry);
//! receipts are not capped, since refusing one would keep its reader's
//! acked messages from being deleted. The counts live in memory, loaded
//! from the fragment's rows when its core starts; writes merged from a
//! partition are not counted until the next start, so the caps are a bound
//! on abuse, not an exact quota.

use std::collections::HashMap;

use proto::PhoneNumber;

/// The caps on one mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailboxLimits {
    /// Undelivered messages in one mailbox.
    pub max_entries: u32,
    /// Their payload bytes.
    pub max_bytes: u64,
    /// Undelivered messages from one sender in one mailbox.
    pub max_entries_per_sender: u32,
    /// Their payload bytes.
    pub max_bytes_per_sender: u64,
}

impl Default for MailboxLimits {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            max_bytes: 100 * 1024 * 1024,
            max_entries_per_sender: 1_000,
            max_bytes_per_sender: 10 * 1024 * 1024,
        }
    }
}

/// Why a message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Full {
    /// The sender holds its share of the mailbox.
    Sender,
    /// The mailbox holds its cap.
    Mailbox,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Held {
    entries: u32,
    bytes: u64,
}

impl Held {
    fn add(&mut self, bytes: u64) {
        self.entries = self.entries.saturating_add(1);
        self.bytes = self.bytes.saturating_add(bytes);
    }

    fn remove(&mut self, bytes: u64) {
        self.entries = self.entries.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(bytes);
    }
}

#[derive(Debug, Default)]
struct Mailbox {
    total: Held,
    by_sender: HashMap<PhoneNumber, Held>,
}

/// Undelivered mail per recipient and sender. Only mailboxes holding
/// something are kept.
#[derive(Debug, Default)]
pub struct MailboxUsage {
    mailboxes: HashMap<PhoneNumber, Mailbox>,
}

impl MailboxUsage {
    /// A message of `bytes` from `sender` to `recipient` is stored (or
    /// being stored).
    pub fn add(&mut self, recipient: &PhoneNumber, sender: &PhoneNumber, bytes: u64) {
        let mailbox = self.mailboxes.entry(recipient.clone()).or_default();
        mailbox.total.add(bytes);
        mailbox
            .by_sender
            .entry(sender.clone())
            .or_default()
            .add(bytes);
    }

    /// That message is gone (acknowledged, expired, or its write failed).
    pub fn remove(&mut self, recipient: &PhoneNumber, sender: &PhoneNumber, bytes: u64) {
        let Some(mailbox) = self.mailboxes.get_mut(recipient) else {
            return;
        };
        mailbox.total.remove(bytes);
        if let Some(held) = mailbox.by_sender.get_mut(sender) {
            held.remove(bytes);
            if held.entries == 0 {
                mailbox.by_sender.remove(sender);
            }
        }
        if mailbox.total.entries == 0 {
            self.mailboxes.remove(recipient);
        }
    }

    /// Whether one more message of `bytes` from `sender` fits.
    pub fn check(
        &self,
        limits: &MailboxLimits,
        recipient: &PhoneNumber,
        sender: &PhoneNumber,
        bytes: u64,
    ) -> Result<(), Full> {
        let Some(mailbox) = self.mailboxes.get(recipient) else {
            return Ok(());
        };
        let from_sender = mailbox.by_sender.get(sender).copied().unwrap_or_default();
        if from_sender.entries >= limits.max_entries_per_sender
            || from_sender.bytes + bytes > limits.max_bytes_per_sender
        {
            return Err(Full::Sender);
        }
        if mailbox.total.entries >= limits.max_entries
            || mailbox.total.bytes + bytes > limits.max_bytes
        {
            return Err(Full::Mailbox);
        }
        Ok(())
    }

    /// Mailboxes holding something (for metrics).
    pub fn mailboxes(&self) -> usize {
        self.mailboxes.len()
    }

    /// (entries, bytes) held for `recipient`.
    pub fn held(&self, recipient: &PhoneNumber) -> (u32, u64) {
        self.mailboxes
            .get(recipient)
            .map_or((0, 0), |m| (m.total.entries, m.total.bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use test_support::numbered as phone;

    #[test]
    fn caps_by_table() {
        let limits = MailboxLimits {
            max_entries: 3,
            max_bytes: 100,
            max_entries_per_sender: 2,
            max_bytes_per_sender: 50,
        };
        let mut usage = MailboxUsage::default();
        let (to, a, b, c) = (phone(1), phone(2), phone(3), phone(4));
        // (sender, bytes, the check before adding; added if Ok)
        let steps: &[(&PhoneNumber, u64, Result<(), Full>)] = &[
            (&a, 10, Ok(())),
            (&a, 10, Ok(())),
            (&a, 1, Err(Full::Sender)),  // two entries from a
            (&b, 60, Err(Full::Sender)), // over b's bytes
            (&b, 50, Ok(())),
            (&c, 1, Err(Full::Mailbox)), // three entries in all
        ];
        for (i, (sender, bytes, expected)) in steps.iter().enumerate() {
            let got = usage.check(&limits, &to, sender, *bytes);
            assert_eq!(got, *expected, "step {i}");
            if got.is_ok() {
                usage.add(&to, sender, *bytes);
            }
        }
        assert_eq!(usage.held(&to), (3, 70));
        usage.remove(&to, &a, 10);
        assert_eq!(usage.check(&limits, &to, &a, 10), Ok(()));
        assert_eq!(
            usage.check(&limits, &to, &c, 41),
            Err(Full::Mailbox),
            "bytes"
        );
        // Everything gone: nothing kept.
        usage.remove(&to, &a, 10);
        usage.remove(&to, &b, 50);
        assert_eq!(usage.mailboxes(), 0);
        // Removing what was never added is harmless.
        usage.remove(&to, &a, 10);
        assert_eq!(usage.held(&to), (0, 0));
    }
}
