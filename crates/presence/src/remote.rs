//! What presence actors tell each other across nodes, in the cluster's
//! `Presence` bodies: `[PRESENCE_WIRE_VERSION][postcard(PresenceWire)]`.
//!
//! Each node's presence actor knows every user online anywhere: it sends
//! its own users' comings and goings to every peer (batched, once per
//! flush), a full list to a peer that comes up, and updates for users
//! online elsewhere to their node.
//!
//! Each node also sends the presence settings ([`Policy`]) of its users as
//! they log in or change them (and of all its online users to a peer that
//! comes up), before the changes of the same flush, in batches of at most
//! [`MAX_CONTACTS_PER_BATCH`] contacts. Every node checks the settings of
//! the watched user before it tells a watcher anything. Version 2 added
//! the settings: a node of version 1 would show everyone to everyone, so
//! the versions do not mix (batches of the other version are dropped).

use proto::{PhoneNumber, TimestampMs};
use serde::{Deserialize, Serialize};

use crate::core::Update;
use crate::policy::Policy;

/// Version of [`PresenceWire`].
pub const PRESENCE_WIRE_VERSION: u8 = 2;

/// Most contacts in one [`PresenceWire::Policies`] batch (one user's list
/// may exceed it alone), so that a batch stays far below the cluster's
/// frame limit.
pub const MAX_CONTACTS_PER_BATCH: usize = 4096;

/// One batch from a peer's presence actor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PresenceWire {
    /// Users of the sender that came or went since its last batch, in order.
    Changes(Vec<Change>),
    /// Every user online at the sender (to a peer that just came up).
    Snapshot(Vec<(PhoneNumber, u64)>),
    /// Updates for users online at the receiver.
    Deliver(Vec<(PhoneNumber, Vec<Update>)>),
    /// Presence settings of users of the sender.
    Policies(Vec<(PhoneNumber, Policy)>),
}

/// Splits settings into batches of at most [`MAX_CONTACTS_PER_BATCH`]
/// contacts (a batch holds at least one user).
pub fn policy_batches(policies: Vec<(PhoneNumber, Policy)>) -> Vec<PresenceWire> {
    let mut batches = Vec::new();
    let mut batch = Vec::new();
    let mut contacts = 0;
    for (user, policy) in policies {
        if !batch.is_empty() && contacts + policy.contacts.len() > MAX_CONTACTS_PER_BATCH {
            batches.push(PresenceWire::Policies(std::mem::take(&mut batch)));
            contacts = 0;
        }
        contacts += policy.contacts.len();
        batch.push((user, policy));
    }
    if !batch.is_empty() {
        batches.push(PresenceWire::Policies(batch));
    }
    batches
}

/// A user of the sending node came online or went offline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// Connected with this session.
    Online {
        /// The user.
        user: PhoneNumber,
        /// Its session.
        session_id: u64,
    },
    /// That session ended.
    Offline {
        /// The user.
        user: PhoneNumber,
        /// Its session.
        session_id: u64,
        /// When (its last seen).
        at_ms: TimestampMs,
    },
}

/// Encodes a batch.
pub fn encode(wire: &PresenceWire) -> Result<Vec<u8>, postcard::Error> {
    let mut bytes = vec![PRESENCE_WIRE_VERSION];
    postcard::to_io(wire, &mut bytes)?;
    Ok(bytes)
}

/// Decodes a batch; other versions and garbage are errors.
pub fn decode(bytes: &[u8]) -> Result<PresenceWire, String> {
    match bytes {
        [PRESENCE_WIRE_VERSION, rest @ ..] => postcard::from_bytes(rest).map_err(|e| e.to_string()),
        [other, ..] => Err(format!(
            "presence wire version {other} not understood (this node speaks {PRESENCE_WIRE_VERSION})"
        )),
        [] => Err("empty presence message".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_and_bad_bytes_are_errors() {
        let user = PhoneNumber::parse("+15550001111").expect("phone");
        let wire = PresenceWire::Deliver(vec![(
            user.clone(),
            vec![Update::Typing {
                from: user,
                active: true,
            }],
        )]);
        let bytes = encode(&wire).expect("encode");
        assert_eq!(decode(&bytes), Ok(wire));
        assert!(decode(&[]).is_err());
        assert!(decode(&[PRESENCE_WIRE_VERSION + 1, 0]).is_err());
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn settings_go_in_bounded_batches() {
        let phone = |n: usize| PhoneNumber::parse(&format!("+1555{n:07}")).expect("phone");
        let with = |n: usize| Policy {
            contacts: (0..n).map(phone).collect(),
            ..Policy::default()
        };
        let half = MAX_CONTACTS_PER_BATCH / 2;
        let batches = policy_batches(vec![
            (phone(1), with(half)),
            (phone(2), with(half)),
            (phone(3), with(1)),
            (phone(4), with(MAX_CONTACTS_PER_BATCH + 1)),
        ]);
        let sizes: Vec<usize> = batches
            .iter()
            .map(|b| match b {
                PresenceWire::Policies(p) => p.len(),
                _ => 0,
            })
            .collect();
        assert_eq!(sizes, vec![2, 1, 1]);
        assert!(policy_batches(Vec::new()).is_empty());
        let bytes = encode(&batches[0]).expect("encode");
        assert_eq!(decode(&bytes), Ok(batches[0].clone()));
    }
}
