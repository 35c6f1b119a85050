//! What crosses a node link: a version, the sender's name and a body,
//! postcard-encoded inside one `ractor_cluster` cast.
//!
//! ractor_cluster drops a message it cannot decode with only a debug log, so
//! every envelope is plain bytes to it; decoding happens here, where a
//! version or body this node does not understand is logged and counted.

use ractor::BytesConvertable;
use serde::{Deserialize, Serialize};

use crate::{ClusterError, Result};

/// The wire version this build speaks. Bump it when a body changes meaning;
/// adding a variant at the end of [`Body`] needs no bump (an older node
/// reports it as undecodable instead of misreading it).
pub const WIRE_VERSION: u16 = 1;

/// Oldest wire version this build still decodes.
pub const MIN_WIRE_VERSION: u16 = 1;

/// The one message type of cluster-reachable actors: opaque bytes to
/// ractor_cluster, a [`Frame`] to us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope(pub Vec<u8>);

impl BytesConvertable for Envelope {
    fn into_bytes(self) -> Vec<u8> {
        self.0
    }
    fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
}

/// A decoded envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// The sending node's name.
    pub from: String,
    /// What it says.
    pub body: Body,
}

/// Everything one node tells another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// Heartbeat; answered with a `Pong` of the same sequence number.
    Ping {
        /// Sequence number of the ping.
        seq: u64,
    },
    /// Answer to a `Ping`.
    Pong {
        /// The ping's sequence number.
        seq: u64,
    },
    /// A message of a service built on the cluster (mailbox fragments),
    /// versioned and decoded by that service.
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Presence and typing between the nodes' presence actors, versioned
    /// and decoded by the presence service.
    Presence(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The sender's cluster layout, sent when a link comes up: a peer
    /// whose layout differs is refused.
    Hello {
        /// The layout.
        layout: crate::Layout,
    },
}

impl Frame {
    /// Encodes as `[version: u16 BE][postcard(frame)]`.
    pub fn encode(&self) -> Result<Envelope> {
        let mut bytes = WIRE_VERSION.to_be_bytes().to_vec();
        postcard::to_io(self, &mut bytes)
            .map_err(|e| ClusterError::Wire(format!("cannot encode: {e}")))?;
        Ok(Envelope(bytes))
    }

    /// Decodes an envelope, refusing versions outside
    /// `MIN_WIRE_VERSION..=WIRE_VERSION` and bytes that are not a frame.
    pub fn decode(envelope: &Envelope) -> Result<Self> {
        let bytes = &envelope.0;
        let (version, body) = match bytes.as_slice() {
            [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]), rest),
            _ => {
                return Err(ClusterError::Wire(
                    "envelope shorter than its version".into(),
                ));
            }
        };
        if !(MIN_WIRE_VERSION..=WIRE_VERSION).contains(&version) {
            return Err(ClusterError::WireVersion {
                theirs: version,
                ours: WIRE_VERSION,
            });
        }
        postcard::from_bytes(body).map_err(|e| ClusterError::Wire(format!("cannot decode: {e}")))
    }
}

/// The sender's name of an envelope, read without decoding its body: the
/// link guard checks it on every frame. `None` for a version this build
/// does not speak or bytes that are not a frame (the inbox counts those).
/// Every wire version must keep `from` first, right after the version.
pub fn sender_of(envelope: &[u8]) -> Option<&str> {
    let (version, rest) = match envelope {
        [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]), rest),
        _ => return None,
    };
    if !(MIN_WIRE_VERSION..=WIRE_VERSION).contains(&version) {
        return None;
    }
    postcard::take_from_bytes::<&str>(rest)
        .ok()
        .map(|(from, _)| from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sender_is_read_without_the_body() {
        let frame = Frame {
            from: "n2".into(),
            body: Body::Data(vec![7; 300]),
        };
        let bytes = frame.encode().expect("encodes").0;
        assert_eq!(sender_of(&bytes), Some("n2"));
        let mut newer = bytes.clone();
        newer[..2].copy_from_slice(&(WIRE_VERSION + 1).to_be_bytes());
        for bad in [&[][..], &[0, 1][..], &[0, 1, 200][..], &newer[..]] {
            assert_eq!(sender_of(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_frame_survives_the_round_trip() {
        let frame = Frame {
            from: "n1".into(),
            body: Body::Ping { seq: 7 },
        };
        let envelope = frame.encode().expect("encodes");
        let bytes = envelope.clone().into_bytes();
        assert_eq!(&bytes[..2], &WIRE_VERSION.to_be_bytes());
        assert_eq!(
            Frame::decode(&Envelope::from_bytes(bytes)).expect("decodes"),
            frame
        );
    }

    #[test]
    fn an_unknown_version_is_refused_by_name() {
        let mut bytes = Frame {
            from: "n1".into(),
            body: Body::Pong { seq: 1 },
        }
        .encode()
        .expect("encodes")
        .0;
        bytes[..2].copy_from_slice(&(WIRE_VERSION + 1).to_be_bytes());
        match Frame::decode(&Envelope(bytes)) {
            Err(ClusterError::WireVersion { theirs, ours }) => {
                assert_eq!((theirs, ours), (WIRE_VERSION + 1, WIRE_VERSION));
            }
            other => panic!("expected a version error, got {other:?}"),
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            vec![],
            vec![0],
            vec![0, 1, 0xff, 0xff, 0xff],
            vec![0, 1, 250],
        ] {
            assert!(Frame::decode(&Envelope(bytes)).is_err());
        }
    }
}
