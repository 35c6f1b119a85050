//! Invariants checked while the simulation runs.

use std::collections::{BTreeMap, BTreeSet};

use offline_queue::EntryBody;
use offline_queue::entry::GroupItem;
use offline_queue::replica::SnapshotChunk;
use offline_queue::store::WriteOp;
use proto::{MessageId, PhoneNumber};
use router::FragmentId;

use crate::world::World;

/// What an entry id names: a message (recipient, sender, client id) or a
/// receipt (its mailbox owner; a receipt entry may grow under its id).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Named {
    Message(PhoneNumber, PhoneNumber, u64),
    Receipt(PhoneNumber),
}

impl std::fmt::Display for Named {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Named::Message(recipient, sender, cid) => {
                write!(f, "{sender}'s message {cid} for {recipient}")
            }
            Named::Receipt(owner) => write!(f, "a receipt for {owner}"),
        }
    }
}

/// What the checks remember.
#[derive(Debug, Default)]
pub(crate) struct Checks {
    /// Every message id stored on any node, with the message it names.
    ids: BTreeMap<MessageId, Named>,
    /// Every entry (message or receipt) by its mailbox and id.
    by_mailbox: BTreeMap<(PhoneNumber, MessageId), Named>,
    /// Messages (sender, recipient, client id) an owner stored without its
    /// partner's copy (written to its divergent log); a group message has
    /// no recipient.
    alone: BTreeSet<(PhoneNumber, Option<PhoneNumber>, u64)>,
}

impl Checks {
    /// At most one node serves fragment `f` at any epoch.
    pub(crate) fn owners(&self, world: &World, f: FragmentId) -> Result<(), String> {
        let mut serving: BTreeMap<u64, &str> = BTreeMap::new();
        for node in &world.nodes {
            let Some(core) = node.cores.get(usize::from(f)) else {
                continue;
            };
            if !node.alive || !core.serves() {
                continue;
            }
            let Some(owner) = core.owner() else {
                continue;
            };
            if let Some(other) = serving.insert(owner.epoch, &node.name) {
                return Err(format!(
                    "fragment {f}: {other} and {} both serve epoch {}",
                    node.name, owner.epoch
                ));
            }
        }
        Ok(())
    }

    /// Ids are not given twice (see [`Checks::stored`]), on every node.
    pub(crate) fn stored_ops(&mut self, _seed: u64, ops: &[WriteOp]) -> Result<(), String> {
        for op in ops {
            match op {
                WriteOp::PutMessage {
                    recipient,
                    sender,
                    client_msg_id,
                    id,
                    ..
                } => self.stored(
                    *id,
                    Named::Message(recipient.clone(), sender.clone(), *client_msg_id),
                )?,
                WriteOp::PutReceipt { owner, id, .. } => {
                    self.stored(*id, Named::Receipt(owner.clone()))?
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// These writes went to a divergent log.
    pub(crate) fn written_alone(&mut self, ops: &[WriteOp]) {
        for op in ops {
            match op {
                WriteOp::PutMessage {
                    recipient,
                    sender,
                    client_msg_id,
                    ..
                } => {
                    self.alone
                        .insert((sender.clone(), Some(recipient.clone()), *client_msg_id));
                }
                WriteOp::LogGroup {
                    dedupe: Some((sender, client_msg_id)),
                    ..
                } => {
                    self.alone.insert((sender.clone(), None, *client_msg_id));
                }
                // A group's items stored by a destination's owner without
                // its partner: confirmed to the home, they reach their
                // members only with the merge, after later ones.
                WriteOp::PutGroupEntries { entries, .. } => {
                    for (owner, _, bytes) in entries {
                        if let Ok(EntryBody::Group {
                            item:
                                GroupItem::Message {
                                    from,
                                    client_msg_id,
                                    ..
                                },
                            ..
                        }) = EntryBody::from_bytes(bytes)
                        {
                            self.alone
                                .insert((from, Some(owner.clone()), client_msg_id));
                        }
                    }
                }
                WriteOp::PutGroupShared { items, entries, .. } => {
                    for (position, bytes) in items {
                        let Ok(GroupItem::Message {
                            from,
                            client_msg_id,
                            ..
                        }) = GroupItem::from_bytes(bytes)
                        else {
                            continue;
                        };
                        for (owner, _, _) in entries.iter().filter(|(_, _, p)| p == position) {
                            self.alone
                                .insert((from.clone(), Some(owner.clone()), client_msg_id));
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// Whether `sender`'s message `cid` to `recipient` (`None`: to its
    /// group, at the group's home) was stored alone.
    pub(crate) fn acked_alone(
        &self,
        sender: &PhoneNumber,
        recipient: Option<&PhoneNumber>,
        cid: u64,
    ) -> bool {
        self.alone
            .contains(&(sender.clone(), recipient.cloned(), cid))
    }

    /// The same for a copy's rows.
    pub(crate) fn stored_chunk(&mut self, chunk: &SnapshotChunk) -> Result<(), String> {
        for (owner, id, bytes) in &chunk.mbox {
            let Ok(owner) = PhoneNumber::parse(owner) else {
                continue;
            };
            match EntryBody::from_bytes(bytes) {
                Ok(EntryBody::Message {
                    from,
                    client_msg_id,
                    ..
                }) => self.stored(*id, Named::Message(owner, from, client_msg_id))?,
                Ok(EntryBody::Receipt { .. }) => self.stored(*id, Named::Receipt(owner))?,
                // Group entries' ids are checked by the group tests and
                // the delivery checks (a position is shown once).
                Ok(EntryBody::Group { .. } | EntryBody::GroupRef { .. }) | Err(_) => {}
            }
        }
        Ok(())
    }

    /// Messages: an id names one message anywhere. Receipts: an id is
    /// never also a message's in the same mailbox (its client would take
    /// one for the other). Ids may repeat across mailboxes otherwise: a
    /// client only ever sees its own.
    fn stored(&mut self, id: MessageId, entry: Named) -> Result<(), String> {
        // `ids` holds messages only.
        let clash = match (&entry, self.ids.get(&id)) {
            (Named::Message(..), Some(known)) if *known != entry => Some(known.clone()),
            _ => None,
        };
        let mailbox = match &entry {
            Named::Message(recipient, ..) => recipient.clone(),
            Named::Receipt(owner) => owner.clone(),
        };
        let same_mailbox = self
            .by_mailbox
            .get(&(mailbox.clone(), id))
            .filter(|known| **known != entry)
            .cloned();
        if let Some(known) = clash.or(same_mailbox) {
            return Err(format!("id {id:#x} given twice: to {known} and to {entry}"));
        }
        if let Named::Message(..) = entry {
            self.ids.insert(id, entry.clone());
        }
        self.by_mailbox.insert((mailbox, id), entry);
        Ok(())
    }
}
