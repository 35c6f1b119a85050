//! What mailbox fragments tell each other across nodes, carried in the
//! cluster's `Data` bodies: `[FRAGMENT_WIRE_VERSION][postcard(Envelope)]`.

use proto::{MessageId, PhoneNumber};
use router::{FragmentId, Owner};
use serde::{Deserialize, Serialize};

use crate::account::{AccountReply, AccountWrite};
use crate::fragment::{FanOut, GroupAnswer, GroupNote, GroupRequest, ReceiptRequest};
use crate::group::{GroupId, Position};
use crate::group_store::GroupRow;
use crate::replica::SnapshotChunk;
use crate::store::WriteOp;
use crate::{Entry, FragmentError, Stored};

/// Version of [`FragmentWire`]. A node refuses (logs and counts) other
/// versions rather than misreading them.
pub const FRAGMENT_WIRE_VERSION: u8 = 1;

/// One fragment message between nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEnvelope {
    /// The fragment it concerns.
    pub fragment: FragmentId,
    /// What it says.
    pub wire: FragmentWire,
}

/// Requests from a forwarding node to the owner, the owner's answers and
/// pushes, and the primary → secondary stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FragmentWire {
    /// Store a message (answered by `AppendDone`).
    Append {
        /// Correlates the answer.
        req: u64,
        /// The recipient.
        to: PhoneNumber,
        /// The sender.
        from: PhoneNumber,
        /// The sender's dedupe id.
        client_msg_id: u64,
        /// Opaque bytes.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// The answer to `Append` (and to `StoreReceipt` with a `req`).
    AppendDone {
        /// The request.
        req: u64,
        /// Stored, or why not.
        result: Result<Stored, FragmentError>,
    },
    /// `user` is online in session `session_id` on the sending node.
    Attach {
        /// The user.
        user: PhoneNumber,
        /// Its session there.
        session_id: u64,
    },
    /// That session ended.
    Detach {
        /// The user.
        user: PhoneNumber,
        /// Its session.
        session_id: u64,
    },
    /// The user's device has these entries.
    Ack {
        /// The user.
        user: PhoneNumber,
        /// Entry ids.
        ids: Vec<MessageId>,
    },
    /// Store a receipt for one of the fragment's users; with a `req`,
    /// answered by `AppendDone`.
    StoreReceipt {
        /// Correlates the answer, if one is wanted.
        req: Option<u64>,
        /// The receipt.
        request: ReceiptRequest,
    },
    /// Receipts are durable: delete these acked entries.
    DeleteAcked {
        /// The entries' owner.
        owner: PhoneNumber,
        /// Their ids.
        ids: Vec<MessageId>,
    },
    /// Entries for a user attached on the receiving node.
    Push {
        /// The user.
        user: PhoneNumber,
        /// The session they are for.
        session_id: u64,
        /// In order.
        entries: Vec<Entry>,
    },
    /// That session was replaced by a newer one elsewhere.
    Replaced {
        /// The user.
        user: PhoneNumber,
        /// The replaced session.
        session_id: u64,
    },
    /// Primary → secondary: apply these writes (in order).
    Replicate {
        /// The primary's epoch; older epochs are refused.
        epoch: u64,
        /// Stream position, echoed in `Replicated`.
        rseq: u64,
        /// The writes.
        ops: Vec<WriteOp>,
    },
    /// Secondary → primary: the writes up to `rseq` are durable here.
    Replicated {
        /// The stream position.
        rseq: u64,
        /// False if refused (stale epoch) or not durable.
        ok: bool,
    },
    /// Primary → secondary: part of a full copy of the fragment.
    Snapshot {
        /// The primary's epoch.
        epoch: u64,
        /// First chunk: erase the fragment before applying it.
        first: bool,
        /// Last chunk: answer with `Replicated` at `rseq`.
        last: bool,
        /// The stream position of the copy.
        rseq: u64,
        /// The rows.
        chunk: SnapshotChunk,
    },
    /// A former owner's writes its partner never got (it went on serving
    /// behind a partition); the current owner merges them.
    Merge {
        /// The last divergent-log key included.
        upto: u64,
        /// The writes, in order.
        ops: Vec<WriteOp>,
        /// The last chunk of this offer.
        last: bool,
    },
    /// The merge up to `upto` is durable: the former owner may drop it.
    MergeDone {
        /// As in `Merge`.
        upto: u64,
    },
    /// Who owns the fragment, as the sender knows it.
    Owner {
        /// The sender's view.
        owner: Owner,
        /// Answer with your own view (sent by a node that just started or
        /// just saw the receiver come up).
        reply: bool,
    },
    /// Store a message after the sender's message `after` (answered by
    /// `AppendDone`; see [`crate::NewMessage`]). A variant of its own so
    /// that nodes of the previous release still read every `Append`.
    AppendAfter {
        /// Correlates the answer.
        req: u64,
        /// The recipient.
        to: PhoneNumber,
        /// The sender.
        from: PhoneNumber,
        /// The sender's dedupe id.
        client_msg_id: u64,
        /// The sender's previous message to `to`.
        after: u64,
        /// Opaque bytes.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    // Appended below in this release; nodes of the previous release log and
    // drop them (a fragment answers within one release's nodes).
    /// `user` is online in session `session_id` on the sending node, logged
    /// in with a token of `generation` (`None`: no token, a bot).
    AttachAt {
        /// The user.
        user: PhoneNumber,
        /// The session.
        session_id: u64,
        /// The token's generation.
        generation: Option<u64>,
    },
    /// Owner → the session's node: the token of that session was revoked.
    Revoked {
        /// The user.
        user: PhoneNumber,
        /// The revoked session.
        session_id: u64,
    },
    /// Read a user's account record (answered by `AccountDone`).
    AccountRead {
        /// Correlates the answer.
        req: u64,
        /// The user.
        user: PhoneNumber,
    },
    /// Compare-and-set a user's account record (answered by `AccountDone`).
    AccountWrite {
        /// Correlates the answer.
        req: u64,
        /// The user.
        user: PhoneNumber,
        /// The write.
        write: AccountWrite,
    },
    /// The answer to `AccountRead` or `AccountWrite`.
    AccountDone {
        /// The request.
        req: u64,
        /// The answer.
        result: Result<AccountReply, FragmentError>,
    },
    /// Part of a full copy that carries account records (the rows
    /// of `Snapshot` plus these).
    SnapshotWithAccounts {
        /// The primary's epoch.
        epoch: u64,
        /// First chunk: erase the fragment before applying it.
        first: bool,
        /// Last chunk: answer with `Replicated` at `rseq`.
        last: bool,
        /// The stream position of the copy.
        rseq: u64,
        /// The rows.
        chunk: SnapshotChunk,
        /// `(user, postcard(AccountRecord))`.
        accounts: Vec<(String, serde_bytes::ByteBuf)>,
    },
    /// Primary → secondary: the primary's own commits hold every write it
    /// streamed up to `upto`. The secondary keeps the streamed writes above
    /// it, which may be on its disk alone, and logs them as divergent if it
    /// takes over. (A node of the previous release refuses this variant
    /// and keeps no such writes: it is as it was.)
    Committed {
        /// The primary's epoch.
        epoch: u64,
        /// The stream position.
        upto: u64,
    },
    /// A group request for the group's home, forwarded by a node that
    /// does not own it; answered with [`FragmentWire::GroupDone`].
    Group {
        /// Correlates the answer.
        req: u64,
        /// The request.
        request: GroupRequest,
    },
    /// Owner → forwarder: the answer to [`FragmentWire::Group`].
    GroupDone {
        /// The request's id.
        req: u64,
        /// The answer.
        result: Result<GroupAnswer, FragmentError>,
    },
    /// A group's batch for the members of this fragment (from the
    /// group's home fragment, or a node passing it on to the owner).
    FanOut {
        /// The group's home fragment.
        home: FragmentId,
        /// The batch.
        fanout: FanOut,
    },
    /// To a group's home fragment: fragment `from` stored the batch.
    FannedOut {
        /// The group.
        group: GroupId,
        /// The batch's last position.
        through: Position,
        /// The fragment that stored it.
        from: FragmentId,
    },
    /// [`FragmentWire::SnapshotWithAccounts`] of a chunk that also holds
    /// group rows.
    SnapshotWithGroups {
        /// The primary's epoch.
        epoch: u64,
        /// The first chunk of the copy.
        first: bool,
        /// The last chunk of the copy.
        last: bool,
        /// The stream position of the copy.
        rseq: u64,
        /// The rows.
        chunk: SnapshotChunk,
        /// `(user, postcard(AccountRecord))`.
        accounts: Vec<(String, serde_bytes::ByteBuf)>,
        /// The group rows.
        groups: Vec<GroupRow>,
    },
    /// Another note about a group (members' cursors and their
    /// confirmation; batches and their confirmations keep the variants
    /// above, which nodes of the previous release read).
    Note(GroupNote),
}

/// A copy chunk's place in its copy: `(epoch, first, last, rseq)`.
pub type SnapshotPlace = (u64, bool, bool, u64);

impl FragmentWire {
    /// The wire form of a copy chunk: `SnapshotWithAccounts` if it holds
    /// account records, else `Snapshot` (which the previous release reads).
    pub fn snapshot(place: SnapshotPlace, mut chunk: SnapshotChunk) -> Self {
        let (epoch, first, last, rseq) = place;
        if !chunk.groups.is_empty() {
            let accounts = std::mem::take(&mut chunk.accounts);
            let groups = std::mem::take(&mut chunk.groups);
            return FragmentWire::SnapshotWithGroups {
                epoch,
                first,
                last,
                rseq,
                chunk,
                accounts,
                groups,
            };
        }
        if chunk.accounts.is_empty() {
            return FragmentWire::Snapshot {
                epoch,
                first,
                last,
                rseq,
                chunk,
            };
        }
        let accounts = std::mem::take(&mut chunk.accounts);
        FragmentWire::SnapshotWithAccounts {
            epoch,
            first,
            last,
            rseq,
            chunk,
            accounts,
        }
    }

    /// The place and chunk of either form of a copy chunk.
    pub fn into_snapshot(self) -> Option<(SnapshotPlace, SnapshotChunk)> {
        match self {
            FragmentWire::Snapshot {
                epoch,
                first,
                last,
                rseq,
                chunk,
            } => Some(((epoch, first, last, rseq), chunk)),
            FragmentWire::SnapshotWithAccounts {
                epoch,
                first,
                last,
                rseq,
                mut chunk,
                accounts,
            } => {
                chunk.accounts = accounts;
                Some(((epoch, first, last, rseq), chunk))
            }
            FragmentWire::SnapshotWithGroups {
                epoch,
                first,
                last,
                rseq,
                mut chunk,
                accounts,
                groups,
            } => {
                chunk.accounts = accounts;
                chunk.groups = groups;
                Some(((epoch, first, last, rseq), chunk))
            }
            _ => None,
        }
    }

    /// The wire form of a forwarded message.
    pub fn append(req: u64, message: crate::NewMessage) -> Self {
        let crate::NewMessage {
            to,
            from,
            client_msg_id,
            after,
            payload,
        } = message;
        match after {
            None => FragmentWire::Append {
                req,
                to,
                from,
                client_msg_id,
                payload,
            },
            Some(after) => FragmentWire::AppendAfter {
                req,
                to,
                from,
                client_msg_id,
                after,
                payload,
            },
        }
    }

    /// The request id and message of an `Append` or `AppendAfter`.
    pub fn into_append(self) -> Option<(u64, crate::NewMessage)> {
        match self {
            FragmentWire::Append {
                req,
                to,
                from,
                client_msg_id,
                payload,
            } => Some((
                req,
                crate::NewMessage {
                    to,
                    from,
                    client_msg_id,
                    after: None,
                    payload,
                },
            )),
            FragmentWire::AppendAfter {
                req,
                to,
                from,
                client_msg_id,
                after,
                payload,
            } => Some((
                req,
                crate::NewMessage {
                    to,
                    from,
                    client_msg_id,
                    after: Some(after),
                    payload,
                },
            )),
            _ => None,
        }
    }
}

impl FragmentWire {
    /// The variant's name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            FragmentWire::Append { .. } => "append",
            FragmentWire::AppendAfter { .. } => "append-after",
            FragmentWire::AppendDone { .. } => "append-done",
            FragmentWire::Attach { .. } => "attach",
            FragmentWire::Detach { .. } => "detach",
            FragmentWire::Ack { .. } => "ack",
            FragmentWire::StoreReceipt { .. } => "store-receipt",
            FragmentWire::DeleteAcked { .. } => "delete-acked",
            FragmentWire::Push { .. } => "push",
            FragmentWire::Replaced { .. } => "replaced",
            FragmentWire::Replicate { .. } => "replicate",
            FragmentWire::Replicated { .. } => "replicated",
            FragmentWire::Snapshot { .. } => "snapshot",
            FragmentWire::Merge { .. } => "merge",
            FragmentWire::MergeDone { .. } => "merge-done",
            FragmentWire::Owner { .. } => "owner",
            FragmentWire::AttachAt { .. } => "attach-at",
            FragmentWire::Group { .. } => "group",
            FragmentWire::GroupDone { .. } => "group-done",
            FragmentWire::FanOut { .. } => "fan-out",
            FragmentWire::FannedOut { .. } => "fanned-out",
            FragmentWire::SnapshotWithGroups { .. } => "snapshot-with-groups",
            FragmentWire::Revoked { .. } => "revoked",
            FragmentWire::AccountRead { .. } => "account-read",
            FragmentWire::AccountWrite { .. } => "account-write",
            FragmentWire::AccountDone { .. } => "account-done",
            FragmentWire::SnapshotWithAccounts { .. } => "snapshot-with-accounts",
            FragmentWire::Committed { .. } => "committed",
            FragmentWire::Note(_) => "group-note",
        }
    }

    /// Requests a hand-over holds back (answers and the replication stream
    /// are never held).
    pub fn is_request(&self) -> bool {
        matches!(
            self,
            FragmentWire::Append { .. }
                | FragmentWire::AppendAfter { .. }
                | FragmentWire::Attach { .. }
                | FragmentWire::AttachAt { .. }
                | FragmentWire::AccountRead { .. }
                | FragmentWire::AccountWrite { .. }
                | FragmentWire::Detach { .. }
                | FragmentWire::Ack { .. }
                | FragmentWire::StoreReceipt { .. }
                | FragmentWire::DeleteAcked { .. }
                | FragmentWire::Group { .. }
                | FragmentWire::FanOut { .. }
                | FragmentWire::FannedOut { .. }
                | FragmentWire::Note(_)
        )
    }
}

/// Encodes an envelope for a cluster `Data` body.
pub fn encode(fragment: FragmentId, wire: FragmentWire) -> Result<Vec<u8>, postcard::Error> {
    let mut bytes = vec![FRAGMENT_WIRE_VERSION];
    postcard::to_io(&WireEnvelope { fragment, wire }, &mut bytes)?;
    Ok(bytes)
}

/// Why bytes from a peer are not an envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Another version.
    #[error("fragment wire version {0} not understood (this node speaks {FRAGMENT_WIRE_VERSION})")]
    Version(u8),
    /// Undecodable.
    #[error("undecodable fragment message: {0}")]
    Decode(String),
}

/// Decodes a cluster `Data` body.
pub fn decode(bytes: &[u8]) -> Result<WireEnvelope, WireError> {
    match bytes {
        [FRAGMENT_WIRE_VERSION, rest @ ..] => {
            postcard::from_bytes(rest).map_err(|e| WireError::Decode(e.to_string()))
        }
        [other, ..] => Err(WireError::Version(*other)),
        [] => Err(WireError::Decode("empty".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_bad_bytes_are_errors() {
        let phone = PhoneNumber::parse("+15550001111").expect("phone");
        let wire = FragmentWire::Append {
            req: 9,
            to: phone.clone(),
            from: phone,
            client_msg_id: 3,
            payload: vec![1, 2, 3],
        };
        let bytes = encode(7, wire.clone()).expect("encode");
        assert_eq!(decode(&bytes), Ok(WireEnvelope { fragment: 7, wire }));
        let mut other = bytes.clone();
        other[0] = FRAGMENT_WIRE_VERSION + 1;
        assert_eq!(
            decode(&other),
            Err(WireError::Version(FRAGMENT_WIRE_VERSION + 1))
        );
        assert!(decode(&[]).is_err());
        assert!(decode(&bytes[..bytes.len() - 2]).is_err());
    }
}
