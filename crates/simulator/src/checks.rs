//! Invariants checked while the simulation runs.

use std::collections::{BTreeMap, BTreeSet};

use offline_queue::EntryBody;
use offline_queue::replica::SnapshotChunk;
use offline_queue::store::WriteOp;
use proto::{MessageId, PhoneNumber};
use router::FragmentId;

use crate::world::World;

/// What the checks remember.
#[derive(Debug, Default)]
pub(crate) struct Checks {
    /// Every message id stored on any node, with the message it names.
    ids: BTreeMap<MessageId, (PhoneNumber, PhoneNumber, u64)>,
    /// Messages (sender, recipient, client id) an owner stored without its
    /// partner's copy (written to its divergent log).
    alone: BTreeSet<(PhoneNumber, PhoneNumber, u64)>,
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

    /// A message id names one message, on every node.
    pub(crate) fn stored_ops(&mut self, _seed: u64, ops: &[WriteOp]) -> Result<(), String> {
        for op in ops {
            if let WriteOp::PutMessage {
                recipient,
                sender,
                client_msg_id,
                id,
                ..
            } = op
            {
                self.stored(*id, recipient, sender, *client_msg_id)?;
            }
        }
        Ok(())
    }

    /// These writes went to a divergent log.
    pub(crate) fn written_alone(&mut self, ops: &[WriteOp]) {
        for op in ops {
            if let WriteOp::PutMessage {
                recipient,
                sender,
                client_msg_id,
                ..
            } = op
            {
                self.alone
                    .insert((sender.clone(), recipient.clone(), *client_msg_id));
            }
        }
    }

    /// Whether `sender`'s message `cid` to `recipient` was stored alone.
    pub(crate) fn acked_alone(
        &self,
        sender: &PhoneNumber,
        recipient: &PhoneNumber,
        cid: u64,
    ) -> bool {
        self.alone
            .contains(&(sender.clone(), recipient.clone(), cid))
    }

    /// The same for a copy's rows.
    pub(crate) fn stored_chunk(&mut self, chunk: &SnapshotChunk) -> Result<(), String> {
        for (owner, id, bytes) in &chunk.mbox {
            if let Ok(EntryBody::Message {
                from,
                client_msg_id,
                ..
            }) = EntryBody::from_bytes(bytes)
                && let Ok(owner) = PhoneNumber::parse(owner)
            {
                self.stored(*id, &owner, &from, client_msg_id)?;
            }
        }
        Ok(())
    }

    fn stored(
        &mut self,
        id: MessageId,
        recipient: &PhoneNumber,
        sender: &PhoneNumber,
        cid: u64,
    ) -> Result<(), String> {
        let message = (recipient.clone(), sender.clone(), cid);
        match self.ids.get(&id) {
            Some(known) if *known != message => Err(format!(
                "id {id:#x} given twice: to {}'s message {} for {} and to {sender}'s message {cid} for {recipient}",
                known.1, known.2, known.0
            )),
            Some(_) => Ok(()),
            None => {
                self.ids.insert(id, message);
                Ok(())
            }
        }
    }
}
