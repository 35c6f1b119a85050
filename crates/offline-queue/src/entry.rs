//! What a mailbox holds.

use proto::{MessageId, PhoneNumber, ReceiptKind, TimestampMs};
use router::FragmentId;
use serde::{Deserialize, Serialize};

/// Bits of a message id that hold the fragment's sequence number.
const SEQ_BITS: u32 = 48;

/// A cluster-unique message id: the fragment in the top 16 bits, its sequence
/// below. Sequences only grow (the high-water mark is persisted), so an id is
/// never reused even after its message is deleted.
pub fn compose_message_id(fragment: FragmentId, seq: u64) -> MessageId {
    (u64::from(fragment) << SEQ_BITS) | (seq & ((1 << SEQ_BITS) - 1))
}

/// The sequence number that `id` was given: the fragment's high-water mark
/// must stay above it.
pub fn seq_of_message_id(id: MessageId) -> u64 {
    id & ((1 << SEQ_BITS) - 1)
}

/// The fragment that assigned `id`.
pub fn fragment_of_message_id(id: MessageId) -> FragmentId {
    (id >> SEQ_BITS) as FragmentId
}

/// One mailbox entry with its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The entry's id (the ack key).
    pub id: MessageId,
    /// What it holds.
    pub body: EntryBody,
}

/// The stored part of an entry (postcard on disk).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryBody {
    /// A message for the mailbox's owner.
    Message {
        /// The sender.
        from: PhoneNumber,
        /// The sender's id for it.
        client_msg_id: u64,
        /// When it was stored.
        server_ts: TimestampMs,
        /// Opaque bytes.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// A receipt for messages the owner sent.
    Receipt {
        /// Delivered or read.
        kind: ReceiptKind,
        /// The recipient who received or read them.
        by: PhoneNumber,
        /// The owner's messages concerned.
        msg_ids: Vec<MessageId>,
        /// When it happened.
        ts: TimestampMs,
    },
}

impl EntryBody {
    /// Serialises for storage.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Encoding into a Vec cannot fail for these plain types.
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Reads a stored entry.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_fragment_and_order_by_sequence() {
        let a = compose_message_id(7, 1);
        let b = compose_message_id(7, 2);
        assert!(a < b);
        assert_eq!(fragment_of_message_id(a), 7);
        assert_eq!(
            fragment_of_message_id(compose_message_id(u16::MAX, 5)),
            u16::MAX
        );
    }
}
