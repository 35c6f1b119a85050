//! What presence actors tell each other across nodes, in the cluster's
//! `Presence` bodies: `[PRESENCE_WIRE_VERSION][postcard(PresenceWire)]`.
//!
//! Each node's presence actor knows every user online anywhere: it sends
//! its own users' comings and goings to every peer (batched, once per
//! flush), a full list to a peer that comes up, and updates for users
//! online elsewhere to their node.

use proto::{PhoneNumber, TimestampMs};
use serde::{Deserialize, Serialize};

use crate::core::Update;

/// Version of [`PresenceWire`].
pub const PRESENCE_WIRE_VERSION: u8 = 1;

/// One batch from a peer's presence actor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PresenceWire {
    /// Users of the sender that came or went since its last batch, in order.
    Changes(Vec<Change>),
    /// Every user online at the sender (to a peer that just came up).
    Snapshot(Vec<(PhoneNumber, u64)>),
    /// Updates for users online at the receiver.
    Deliver(Vec<(PhoneNumber, Vec<Update>)>),
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
}
