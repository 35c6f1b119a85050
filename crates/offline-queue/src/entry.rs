//! What a mailbox holds.

use proto::{GroupChange, GroupId, MessageId, PhoneNumber, Position, ReceiptKind, TimestampMs};
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
    /// A group's message or change, fanned out to this member (appended:
    /// entries stored before groups existed still decode).
    Group {
        /// The group.
        group: GroupId,
        /// Its place in the group's log.
        position: Position,
        /// What was logged there.
        item: GroupItem,
    },
    /// A member's reference to a group item stored once for all of the
    /// fragment's members ([`SharedItem`], the `mbox` row of owner
    /// [`SHARED_OWNER`] at the item's position). Only ever on disk: the
    /// mailbox's readers resolve it into [`EntryBody::Group`].
    GroupRef {
        /// The group.
        group: GroupId,
        /// Its place in the group's log (the shared row's id).
        position: Position,
        /// When the group logged it (for the expiry, without the item).
        ts: TimestampMs,
    },
}

/// The `mbox` owner under which a fragment keeps the group items its
/// members' [`EntryBody::GroupRef`]s point to, by position: `#` sorts
/// before every phone number's `+`, and is no phone number, so no
/// mailbox, scan or sweep of members' rows meets these rows (copies and
/// the stage carry them like any row of the fragment).
pub const SHARED_OWNER: &str = "#shared";

/// A group item stored once in a fragment for the members there who
/// have not acknowledged it yet; gone with the last one's deletion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedItem {
    /// The group.
    pub group: GroupId,
    /// Members here whose mailbox still holds a reference to it.
    pub waiting: Vec<PhoneNumber>,
    /// The item.
    pub item: GroupItem,
}

impl SharedItem {
    /// Serialises for storage.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Reads a stored row.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

/// What a group's log holds at a position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupItem {
    /// A message from a member.
    Message {
        /// The sender.
        from: PhoneNumber,
        /// The sender's id for it.
        client_msg_id: u64,
        /// When the group's fragment stored it.
        server_ts: TimestampMs,
        /// Opaque bytes.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// A change of the group.
    Change {
        /// Who made it.
        by: PhoneNumber,
        /// What changed.
        change: GroupChange,
        /// When.
        ts: TimestampMs,
    },
    /// Ticks for one sender's messages (see [`crate::group_ticks`]),
    /// logged like the rest and fanned out to the sender alone.
    Receipt {
        /// The sender of the messages.
        to: PhoneNumber,
        /// Delivered to all or read by all.
        kind: ReceiptKind,
        /// The messages' positions.
        positions: Vec<Position>,
        /// When the home found it.
        ts: TimestampMs,
    },
}

impl GroupItem {
    /// When it was logged.
    pub fn ts(&self) -> TimestampMs {
        match self {
            GroupItem::Message { server_ts, .. } => *server_ts,
            GroupItem::Change { ts, .. } | GroupItem::Receipt { ts, .. } => *ts,
        }
    }

    /// Whether every member in its span receives it (a message or a
    /// change), so that a member's acknowledgement of it moves the
    /// member's delivered cursor; a receipt goes to one sender only.
    pub fn is_for_members(&self) -> bool {
        !matches!(self, GroupItem::Receipt { .. })
    }

    /// Serialises for storage.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Reads a stored item.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

impl EntryBody {
    /// When it was stored (a receipt: when it happened; a group entry:
    /// when its group logged it).
    pub fn ts(&self) -> TimestampMs {
        match self {
            EntryBody::Message { server_ts, .. } => *server_ts,
            EntryBody::Receipt { ts, .. } => *ts,
            EntryBody::Group { item, .. } => item.ts(),
            EntryBody::GroupRef { ts, .. } => *ts,
        }
    }

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

/// The leading fields of a stored [`EntryBody`], read without copying a
/// message's payload (postcard writes fields in order, and
/// `take_from_bytes` leaves the rest unread).
#[derive(Deserialize)]
enum EntryHead<'a> {
    Message {
        from: PhoneNumber,
        _client_msg_id: u64,
        server_ts: TimestampMs,
        #[serde(borrow, with = "serde_bytes")]
        payload: &'a [u8],
    },
    Receipt {
        _kind: ReceiptKind,
        _by: PhoneNumber,
        _msg_ids: Vec<MessageId>,
        ts: TimestampMs,
    },
    Group {
        _group: GroupId,
        _position: Position,
        #[serde(borrow)]
        item: GroupItemHead<'a>,
    },
    GroupRef {
        group: GroupId,
        position: Position,
        ts: TimestampMs,
    },
}

#[derive(Deserialize)]
enum GroupItemHead<'a> {
    Message {
        _from: PhoneNumber,
        _client_msg_id: u64,
        server_ts: TimestampMs,
        #[serde(borrow, with = "serde_bytes")]
        payload: &'a [u8],
    },
    Change {
        by: PhoneNumber,
        change: GroupChange,
        ts: TimestampMs,
    },
    Receipt {
        _to: PhoneNumber,
        _kind: ReceiptKind,
        _positions: Vec<Position>,
        ts: TimestampMs,
    },
}

/// The position of a stored group entry (`None` for any other entry),
/// read without copying a message's payload.
pub(crate) fn group_position(bytes: &[u8]) -> Option<Position> {
    match postcard::take_from_bytes::<EntryHead<'_>>(bytes) {
        Ok((EntryHead::Group { _position, .. }, _)) => Some(_position),
        Ok((EntryHead::GroupRef { position, .. }, _)) => Some(position),
        _ => None,
    }
}

/// The group and position a stored [`EntryBody::GroupRef`] points to.
pub(crate) fn group_ref(bytes: &[u8]) -> Option<(GroupId, Position)> {
    match postcard::take_from_bytes::<EntryHead<'_>>(bytes) {
        Ok((
            EntryHead::GroupRef {
                group, position, ..
            },
            _,
        )) => Some((group, position)),
        _ => None,
    }
}

/// What a stored group entry does to its owner's membership of the group:
/// `Some((group, true))` if it adds the owner, `Some((group, false))` if it
/// takes the owner out, `None` otherwise (read without copying a
/// message's payload).
pub(crate) fn membership_change(owner: &PhoneNumber, bytes: &[u8]) -> Option<(GroupId, bool)> {
    let Ok((
        EntryHead::Group {
            _group: group,
            item: GroupItemHead::Change { by, change, .. },
            ..
        },
        _,
    )) = postcard::take_from_bytes::<EntryHead<'_>>(bytes)
    else {
        return None;
    };
    joins(owner, &by, &change).map(|joins| (group, joins))
}

/// [`membership_change`] of an item of `group` stored for `owner`.
pub(crate) fn item_membership_change(
    owner: &PhoneNumber,
    group: GroupId,
    item: &GroupItem,
) -> Option<(GroupId, bool)> {
    match item {
        GroupItem::Change { by, change, .. } => joins(owner, by, change).map(|j| (group, j)),
        _ => None,
    }
}

/// Whether change `change` made by `by` adds `owner` (`Some(true)`) or
/// takes it out (`Some(false)`).
fn joins(owner: &PhoneNumber, by: &PhoneNumber, change: &GroupChange) -> Option<bool> {
    match change {
        GroupChange::Created { members, .. } | GroupChange::Added { members } => {
            members.contains(owner).then_some(true)
        }
        GroupChange::Removed { members } => members.contains(owner).then_some(false),
        GroupChange::Left { .. } => (by == owner).then_some(false),
        _ => None,
    }
}

/// What the quotas and the expiry need of a stored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredHead {
    /// The sender, for a 1:1 message; `None` for a receipt or a group entry.
    pub(crate) sender: Option<PhoneNumber>,
    /// When it was stored (a receipt: when it happened).
    pub(crate) at: TimestampMs,
    /// A message's payload bytes (0 for a receipt).
    pub(crate) payload_len: u64,
}

/// Reads a stored entry's head without copying its payload.
pub(crate) fn stored_head(bytes: &[u8]) -> Option<StoredHead> {
    match postcard::take_from_bytes::<EntryHead<'_>>(bytes) {
        Ok((
            EntryHead::Message {
                from,
                server_ts,
                payload,
                ..
            },
            _,
        )) => Some(StoredHead {
            sender: Some(from),
            at: server_ts,
            payload_len: payload.len() as u64,
        }),
        Ok((EntryHead::Receipt { ts, .. }, _)) => Some(StoredHead {
            sender: None,
            at: ts,
            payload_len: 0,
        }),
        // Group entries count in no sender's share (the group's sends are
        // paced at the group's fragment) and expire like the rest.
        Ok((EntryHead::Group { item, .. }, _)) => Some(match item {
            GroupItemHead::Message {
                server_ts, payload, ..
            } => StoredHead {
                sender: None,
                at: server_ts,
                payload_len: payload.len() as u64,
            },
            GroupItemHead::Change { ts, .. } | GroupItemHead::Receipt { ts, .. } => StoredHead {
                sender: None,
                at: ts,
                payload_len: 0,
            },
        }),
        Ok((EntryHead::GroupRef { ts, .. }, _)) => Some(StoredHead {
            sender: None,
            at: ts,
            payload_len: 0,
        }),
        Err(_) => None,
    }
}

/// The sender and store time of a stored message entry; `None` for a
/// receipt or unreadable bytes.
pub(crate) fn message_sender(bytes: &[u8]) -> Option<(PhoneNumber, TimestampMs)> {
    let head = stored_head(bytes)?;
    Some((head.sender?, head.at))
}

/// What stays of a message once its recipient's device has acknowledged it:
/// who sent it and when it was stored, so that a read receipt for it can
/// be checked, until the dedupe retention ends (see `store`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DeliveredMark {
    /// The message's sender.
    pub(crate) from: PhoneNumber,
    /// When the message was stored.
    pub(crate) stored_at: TimestampMs,
}

impl DeliveredMark {
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        postcard::from_bytes(bytes).ok()
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

    #[test]
    fn a_message_head_is_read_without_its_payload_and_a_receipt_has_none() {
        let from = PhoneNumber::parse("+15550001111").expect("phone");
        let message = EntryBody::Message {
            from: from.clone(),
            client_msg_id: 9,
            server_ts: 1234,
            payload: vec![7; 5000],
        };
        assert_eq!(
            message_sender(&message.to_bytes()),
            Some((from.clone(), 1234))
        );
        let receipt = EntryBody::Receipt {
            kind: ReceiptKind::Read,
            by: from,
            msg_ids: vec![1, 2],
            ts: 5,
        };
        assert_eq!(message_sender(&receipt.to_bytes()), None);
        assert_eq!(message_sender(&[0xff, 0xff]), None);
        assert_eq!(
            stored_head(&message.to_bytes()).map(|h| h.payload_len),
            Some(5000)
        );
    }
}
