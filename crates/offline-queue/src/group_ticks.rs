//! The ticks of group messages: "delivered" once every member has the
//! message, "read" once every member has read it. Pure: the group's home
//! keeps this beside the record and turns what [`Ticks::settle`] finds
//! into receipts logged for the senders.
//!
//! Members receive a group's items in position order, so one *cursor* per
//! member says everything: the member has every position up to
//! `delivered` that was meant for it, and has read up to `read`. A lost or
//! late cursor update is made good by the next one, and the home stores
//! O(members), not O(members × messages). A message at `p` is delivered
//! once every current member that joined at or before `p`, except its
//! sender, has a cursor at or past `p`; a member who leaves stops
//! counting (its cursor stays, unused, until the group goes). Messages whose ticks are not both settled are *unticked*;
//! they go once read by all, or when they expire or overflow the bound.

use std::collections::BTreeMap;

use proto::{PhoneNumber, ReceiptKind, TimestampMs};
use serde::{Deserialize, Serialize};

use crate::group::{GroupRecord, Position};

/// How far one member has received and read a group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Every item up to here meant for the member reached its device.
    pub delivered: Position,
    /// The member has read up to here (never beyond `delivered`'s promise:
    /// a read implies delivery).
    pub read: Position,
}

/// A member and its state for one message: `None` sent, else delivered
/// or read.
pub type MemberTick = (PhoneNumber, Option<ReceiptKind>);

/// A message whose ticks are not settled yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unticked {
    /// Who sent it (who gets the receipts).
    pub sender: PhoneNumber,
    /// When it was logged (for the expiry).
    pub ts: TimestampMs,
    /// Whether the sender has been told every member has it.
    pub delivered: bool,
}

impl Unticked {
    /// Encoded for storage (postcard).
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// A stored row; `None` if unreadable.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        postcard::from_bytes(bytes).ok()
    }
}

/// What one [`Ticks::settle`] decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Settled {
    /// Receipts to log, per sender and kind: the positions concerned.
    pub receipts: BTreeMap<(PhoneNumber, ReceiptKind), Vec<Position>>,
    /// Unticked messages now delivered to all (still waiting for reads).
    pub now_delivered: Vec<Position>,
    /// Unticked messages settled for good (read by all, expired, or over
    /// the bound).
    pub done: Vec<Position>,
    /// Of `done`, those given up unread (expired or over the bound).
    pub given_up: usize,
}

impl Settled {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.now_delivered.is_empty() && self.done.is_empty()
    }
}

/// A group's cursors and unticked messages, at its home.
#[derive(Debug, Default, Clone)]
pub struct Ticks {
    cursors: BTreeMap<PhoneNumber, Cursor>,
    unticked: BTreeMap<Position, Unticked>,
    /// Something changed since the last settle.
    dirty: bool,
}

/// The two smallest "first position not yet reached" among the current
/// members, for one kind: a message at `p` is settled unless some member
/// other than its sender has its first unreached position at or before
/// `p`.
struct Frontier<'a> {
    first: Option<(Position, &'a PhoneNumber)>,
    second: Option<Position>,
}

impl<'a> Frontier<'a> {
    fn new(
        record: &'a GroupRecord,
        cursors: &BTreeMap<PhoneNumber, Cursor>,
        kind: ReceiptKind,
    ) -> Self {
        let mut frontier = Frontier {
            first: None,
            second: None,
        };
        for member in record.current() {
            let Some(since) = member.since() else {
                continue;
            };
            let cursor = cursors.get(&member.phone).copied().unwrap_or_default();
            let reached = match kind {
                ReceiptKind::Delivered => cursor.delivered.max(cursor.read),
                ReceiptKind::Read => cursor.read,
            };
            let unreached = since.max(reached.saturating_add(1));
            match frontier.first {
                Some((first, _)) if first <= unreached => {
                    frontier.second = Some(frontier.second.map_or(unreached, |s| s.min(unreached)));
                }
                _ => {
                    frontier.second = frontier.first.map(|(first, _)| first);
                    frontier.first = Some((unreached, &member.phone));
                }
            }
        }
        frontier
    }

    /// Whether every member but `sender` has reached `position`.
    fn settles(&self, position: Position, sender: &PhoneNumber) -> bool {
        match self.first {
            None => true,
            Some((first, _)) if first > position => true,
            Some((_, blocker)) => {
                blocker == sender && self.second.is_none_or(|second| second > position)
            }
        }
    }
}

impl Ticks {
    /// As stored.
    pub fn load(
        cursors: impl IntoIterator<Item = (PhoneNumber, Cursor)>,
        unticked: impl IntoIterator<Item = (Position, Unticked)>,
    ) -> Self {
        let unticked: BTreeMap<Position, Unticked> = unticked.into_iter().collect();
        Self {
            cursors: cursors.into_iter().collect(),
            dirty: !unticked.is_empty(),
            unticked,
        }
    }

    /// A message was logged at `position`.
    pub fn logged(&mut self, position: Position, sender: PhoneNumber, ts: TimestampMs) {
        self.unticked.insert(
            position,
            Unticked {
                sender,
                ts,
                delivered: false,
            },
        );
        self.dirty = true;
    }

    /// `member` has received up to `delivered` and read up to `read`
    /// (either may be 0: no news). Cursors only move forward. The new
    /// cursor, if it moved (to be stored).
    pub fn advance(
        &mut self,
        member: &PhoneNumber,
        delivered: Position,
        read: Position,
    ) -> Option<Cursor> {
        let cursor = self.cursors.entry(member.clone()).or_default();
        let before = *cursor;
        cursor.read = cursor.read.max(read);
        cursor.delivered = cursor.delivered.max(delivered).max(cursor.read);
        if *cursor == before {
            return None;
        }
        self.dirty = true;
        Some(*cursor)
    }

    /// Takes in what a merge stored: cursors rise, messages logged apart
    /// wait for their ticks too.
    pub fn absorb(&mut self, stored: Ticks) {
        for (member, cursor) in stored.cursors {
            self.advance(&member, cursor.delivered, cursor.read);
        }
        for (position, message) in stored.unticked {
            if let std::collections::btree_map::Entry::Vacant(vacant) =
                self.unticked.entry(position)
            {
                vacant.insert(message);
                self.dirty = true;
            }
        }
    }

    /// The membership changed: who counts may have.
    pub fn members_changed(&mut self) {
        self.dirty = true;
    }

    /// Whether a settle could find something.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Unticked messages held.
    pub fn unticked(&self) -> usize {
        self.unticked.len()
    }

    /// Settles what the cursors allow, and gives up on messages logged
    /// before `expire_before` and on the oldest beyond `max_unticked`.
    pub fn settle(
        &mut self,
        record: &GroupRecord,
        expire_before: TimestampMs,
        max_unticked: usize,
    ) -> Settled {
        let mut settled = Settled::default();
        if !self.dirty {
            return settled;
        }
        self.dirty = false;
        let delivered = Frontier::new(record, &self.cursors, ReceiptKind::Delivered);
        let read = Frontier::new(record, &self.cursors, ReceiptKind::Read);
        let over = self.unticked.len().saturating_sub(max_unticked);
        for (n, (position, message)) in self.unticked.iter_mut().enumerate() {
            let sender = message.sender.clone();
            if read.settles(*position, &sender) {
                settled
                    .receipts
                    .entry((sender, ReceiptKind::Read))
                    .or_default()
                    .push(*position);
                settled.done.push(*position);
            } else if n < over || message.ts < expire_before {
                settled.done.push(*position);
                settled.given_up += 1;
            } else if !message.delivered && delivered.settles(*position, &sender) {
                message.delivered = true;
                settled
                    .receipts
                    .entry((sender, ReceiptKind::Delivered))
                    .or_default()
                    .push(*position);
                settled.now_delivered.push(*position);
            }
        }
        for position in &settled.done {
            self.unticked.remove(position);
        }
        settled
    }

    /// Each current member's state for the message at `position` (the
    /// members who count for its ticks: not its sender, none added after
    /// it): `None` = sent, else delivered or read. `None` if its ticks are
    /// settled (read by all), given up, or it is not a message.
    pub fn info(
        &self,
        record: &GroupRecord,
        position: Position,
    ) -> Option<(PhoneNumber, Vec<MemberTick>)> {
        let message = self.unticked.get(&position)?;
        let members = record
            .current()
            .filter(|m| m.phone != message.sender && m.since().is_some_and(|s| s <= position))
            .map(|m| {
                let cursor = self.cursors.get(&m.phone).copied().unwrap_or_default();
                let state = if cursor.read >= position {
                    Some(ReceiptKind::Read)
                } else if cursor.delivered >= position {
                    Some(ReceiptKind::Delivered)
                } else {
                    None
                };
                (m.phone.clone(), state)
            })
            .collect();
        Some((message.sender.clone(), members))
    }
}

#[cfg(test)]
mod tests;
