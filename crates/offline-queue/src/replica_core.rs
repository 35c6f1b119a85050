//! The pure replication core of one fragment on one node: everything a
//! fragment actor decides, with no clock, socket, await, spawn or disk
//! write. One entry point, [`ReplicaCore::step`]: the time, an [`Event`]
//! and read access to the node's copy of the fragment in, [`Action`]s out.
//! The actor (`actor.rs`) turns messages into events and carries out the
//! actions; the simulator (`tests/simulator`) drives the same core through
//! seeded fault schedules.
//!
//! It owns the [`FragmentCore`] while this node serves the fragment, and
//! around it the fragment's part in a cluster:
//!
//! ```text
//! session ─▶ fragment-7 (forwarder, node 3) ─Append─▶ fragment-7 (owner, node 1)
//!                                                       ├─ local group commit
//!                                                       └─Replicate─▶ fragment-7 (node 2)
//!            ack to the sender once both are durable ◀──Replicated──┘
//! ```
//! Ownership rules are in `router::islands`; these modules carry them out:
//! `forwarding` (a node that does not own the fragment), `replication` (the
//! owner's stream to its island partner, the partner's copy), `transitions`
//! (changes of owner, hand-back) and `merge` (writes made apart behind a
//! partition). This file holds the state, the events and actions, and the
//! one dispatch of requests, whether they come from this node, from a peer,
//! or were held across a change of owner.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use cluster::AckPolicy;
use proto::{MessageId, PhoneNumber, TimestampMs};
use router::{FragmentId, FragmentOwnership, Islands, Owner, Placement, Role};

use crate::account::{AccountReply, AccountWrite};
pub use crate::fragment::GroupNote;
use crate::fragment::{
    self, FragmentConfig, FragmentCore, GroupAnswer, GroupRequest, NewMessage, ReceiptRequest,
    Stored,
};
use crate::group::GroupId;
use crate::remote::FragmentWire;
use crate::replica::{SnapshotChunk, takeover_seq};
use crate::store::{MailboxRead, WriteOp};
use crate::{Entry, FragmentError};

mod forwarding;
mod merge;
mod replication;
mod transitions;

use replication::UncommittedStream;

/// A partner that has not confirmed a write by then is treated as lost for
/// this fragment: the write completes (logged as divergent) and the partner
/// gets a fresh copy. A lost answer must not hold every later write back.
pub const PARTNER_ANSWER_TIMEOUT_MS: u64 = 5_000;

/// A hand-back that has not drained by then is given up (and tried again
/// later), so that requests are never held for long.
pub const HAND_BACK_TIMEOUT_MS: u64 = 5_000;

/// How long an unconfirmed merge offer stands before it is made again.
pub const MERGE_RETRY_MS: u64 = 10_000;

/// Writes per merge message: far below the link's 16 MiB frame limit even
/// at the largest payloads.
pub const MERGE_CHUNK_OPS: usize = 128;

/// The owner tells its partner how far its own commits reach (see
/// [`FragmentWire::Committed`]) after this many more streamed writes are
/// committed, and at every tick: the partner keeps about that many writes
/// in memory.
pub const COMMITTED_EVERY: u64 = 16;

/// At most this many streamed writes, of at most this many payload bytes
/// in all, a partner keeps unconfirmed by the owner's commits; the oldest
/// go first (an owner of the previous release never confirms any).
pub const MAX_UNCOMMITTED_BATCHES: usize = 1_024;
/// See [`MAX_UNCOMMITTED_BATCHES`].
pub const MAX_UNCOMMITTED_BYTES: usize = 4 << 20;

/// Where an online user's entries go: a session of this node. `T` is the
/// handle that takes its pushes (an actor ref in the node, a number in the
/// simulator).
#[derive(Clone)]
pub struct Endpoint<T> {
    /// Distinguishes this connection from earlier ones of the same user.
    pub session_id: u64,
    /// The generation of the token the session logged in with: refused
    /// below the account's, and closed once the account's rises past it.
    /// `None` for endpoints without a token (bots).
    pub token_generation: Option<u64>,
    /// What takes the pushes.
    pub target: T,
}

impl<T> std::fmt::Debug for Endpoint<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("session_id", &self.session_id)
            .field("token_generation", &self.token_generation)
            .finish_non_exhaustive()
    }
}

/// What a fragment pushes to an attached endpoint (a session or a bot).
#[derive(Debug)]
pub enum Push {
    /// Mailbox entries, in order; acknowledge each with an ack request.
    Entries(Vec<Entry>),
    /// The user attached elsewhere; this endpoint gets nothing more.
    Replaced,
    /// The token this endpoint logged in with was revoked; it gets nothing
    /// more.
    Revoked,
}

/// A user's mailbox as an operator sees it (see [`ReplicaCore::mailbox_of`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MailboxSummary {
    /// Entries stored and not yet delivered.
    pub held_entries: u32,
    /// Their payload bytes.
    pub held_bytes: u64,
    /// The session the fragment pushes to, if the user is attached.
    pub session: Option<AttachedSession>,
}

/// The session a fragment pushes a user's entries to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AttachedSession {
    /// The session's id.
    pub session_id: u64,
    /// Its node, when it is not the fragment's.
    pub node: Option<String>,
}

/// Where the fragment core pushes: a session of this node, or one on
/// another node.
#[derive(Clone)]
pub enum Attached<T> {
    /// A session here.
    Local(Endpoint<T>),
    /// A session on `node`.
    Remote {
        /// Its node.
        node: String,
        /// Its user.
        user: PhoneNumber,
        /// Its session there.
        session_id: u64,
    },
}

/// Who waits for an answer: a caller on this node (`L`, its reply handle),
/// or request `req` of another node.
pub enum Waiter<L> {
    /// A caller on this node.
    Local(L),
    /// Request `req` of another node.
    Remote {
        /// The node.
        node: String,
        /// Its request id.
        req: u64,
    },
}

/// An answer to a caller on this node.
#[derive(Debug)]
pub enum Answer {
    /// To a send or a receipt.
    Stored(Result<Stored, FragmentError>),
    /// To an account read or write.
    Account(Result<AccountReply, FragmentError>),
    /// To an attach.
    Attached(Result<(), FragmentError>),
    /// To a group request.
    Group(Result<GroupAnswer, FragmentError>),
}

/// A request from this node (a session, a bot, the auth service).
pub enum LocalRequest<T, L> {
    /// Store a message; answered [`Answer::Stored`] once durable.
    Append {
        /// What to store.
        message: NewMessage,
        /// Who waits.
        reply: L,
    },
    /// `user` is online at `endpoint`; answered [`Answer::Attached`].
    Attach {
        /// The user.
        user: PhoneNumber,
        /// Where to push.
        endpoint: Endpoint<T>,
        /// Who waits.
        reply: L,
    },
    /// The session `session_id` of `user` ended.
    Detach {
        /// The user.
        user: PhoneNumber,
        /// Only this session.
        session_id: u64,
    },
    /// `user`'s device has these entries.
    Ack {
        /// The user.
        user: PhoneNumber,
        /// Entry ids.
        ids: Vec<MessageId>,
    },
    /// Store a receipt for one of this fragment's users.
    StoreReceipt {
        /// The receipt.
        request: ReceiptRequest,
        /// Answered [`Answer::Stored`] once durable, if given.
        reply: Option<L>,
    },
    /// Read `user`'s account record; answered [`Answer::Account`].
    ReadAccount {
        /// The user.
        user: PhoneNumber,
        /// Who waits.
        reply: L,
    },
    /// Compare-and-set `user`'s account record; answered once durable.
    WriteAccount {
        /// The user.
        user: PhoneNumber,
        /// The new record and the version it replaces.
        write: AccountWrite,
        /// Who waits.
        reply: L,
    },
    /// Receipts for these acked entries are durable: delete them.
    DeleteAcked {
        /// The entries' owner.
        owner: PhoneNumber,
        /// Their ids.
        ids: Vec<MessageId>,
    },
    /// A group request for a group at home here; answered
    /// [`Answer::Group`].
    Group {
        /// The request.
        request: GroupRequest,
        /// Who waits.
        reply: L,
    },
    /// A group's batch for members of this fragment, or a confirmation of
    /// one for a group at home here, from another fragment of this node.
    Note(GroupNote),
}

/// Something that happened to the fragment.
pub enum Event<T, L> {
    /// The actor started (or restarted): ask the partner who owns the
    /// fragment.
    Start,
    /// A request from this node.
    Local(LocalRequest<T, L>),
    /// A message from this fragment's actor on another node.
    Peer {
        /// The sending node.
        from: String,
        /// What it says.
        wire: FragmentWire,
    },
    /// A peer came up. `lately`: the peers heard within half the silence
    /// that marks a peer down (see [`Replication::may_take_over`]).
    PeerUp {
        /// The peer.
        peer: String,
        /// Peers heard lately.
        lately: BTreeSet<String>,
    },
    /// A peer went down.
    PeerDown {
        /// The peer.
        peer: String,
        /// Peers heard lately.
        lately: BTreeSet<String>,
    },
    /// Once a second: partner timeouts, merge retries, held take-overs.
    Tick {
        /// Peers heard lately.
        lately: BTreeSet<String>,
    },
    /// The commit of a [`Action::Persist`] finished.
    Committed {
        /// The core it was made by (see [`Action::Persist`]).
        generation: u64,
        /// Its tag.
        tag: u64,
        /// Ok, or the storage error text.
        outcome: Result<(), String>,
    },
    /// The copy asked for by [`Action::TakeSnapshot`].
    Snapshot {
        /// The fragment's rows.
        chunks: Vec<SnapshotChunk>,
        /// The last divergent-log key the copy holds.
        divergent_upto: u64,
    },
    /// [`Action::TakeSnapshot`] failed.
    SnapshotFailed,
    /// The writes handed over before [`Action::Flush`] are durable.
    Flushed,
    /// The writes of an [`Action::ApplyMerge`] are durable.
    Merged {
        /// The former owner that offered them.
        from: String,
        /// As in its offer.
        upto: u64,
        /// Mailboxes that got messages or receipts.
        touched: BTreeSet<PhoneNumber>,
        /// Users whose account record the merge replaced.
        accounts: Vec<PhoneNumber>,
        /// The last chunk of the offer.
        last: bool,
    },
    /// A receipt for another fragment ([`Action::ReceiptElsewhere`]) could
    /// not be handed over; these acked entries stay for redelivery.
    ReceiptNotStored {
        /// The acked entries.
        ids: Vec<MessageId>,
    },
    /// Once a minute: forget expired dedupe keys, expire old entries.
    Sweep,
}

/// What the shell must do, in order. Actions marked *durably* must be
/// durable before the next action is carried out (a failure stops the
/// actor: its supervisor starts it afresh from the disk).
pub enum Action<T, L> {
    /// Answer a caller on this node.
    Answer {
        /// Who.
        to: L,
        /// What.
        answer: Answer,
    },
    /// Push to a session of this node.
    Deliver {
        /// The session.
        endpoint: Endpoint<T>,
        /// What.
        push: Push,
    },
    /// Send to this fragment's actor on another node (fire and forget: a
    /// lost message is recovered when membership reports the node down).
    Send {
        /// The node.
        to: String,
        /// What.
        wire: FragmentWire,
    },
    /// Apply these writes in a group commit; report [`Event::Committed`].
    Persist {
        /// The core that made them (answers for an older one are ignored).
        generation: u64,
        /// Correlates the outcome.
        tag: u64,
        /// The writes.
        ops: Vec<WriteOp>,
        /// Not copied to the partner: also add them to the divergent log.
        divergent: bool,
    },
    /// Apply the owner's writes to this node's copy, then send `from`
    /// `Replicated { rseq, ok }`.
    ApplyReplica {
        /// The owner.
        from: String,
        /// Its stream position.
        rseq: u64,
        /// The writes.
        ops: Vec<WriteOp>,
    },
    /// Import a chunk of the owner's copy; send `from` `Replicated { rseq,
    /// ok }` once the last one is in, or at once if this one failed.
    ImportChunk {
        /// The owner.
        from: String,
        /// The copy's stream position.
        rseq: u64,
        /// The first chunk (erases this node's rows first).
        first: bool,
        /// The last chunk.
        last: bool,
        /// The rows.
        chunk: SnapshotChunk,
    },
    /// Durably: store the owner record.
    SaveOwner(Owner),
    /// Durably: add these writes to the divergent log.
    LogDivergent(Vec<WriteOp>),
    /// Drop the divergent log up to `upto` (no need to wait).
    ClearDivergent {
        /// The last key dropped.
        upto: u64,
    },
    /// Wait until every write handed over so far is durable, then report
    /// [`Event::Flushed`] before anything else.
    Flush,
    /// Wait until every write handed over so far is durable, read the
    /// fragment whole and the divergent log's last key, and report
    /// [`Event::Snapshot`] (or [`Event::SnapshotFailed`]) before anything
    /// else.
    TakeSnapshot,
    /// Durably apply a former owner's writes, then report [`Event::Merged`]
    /// with these fields before anything else.
    ApplyMerge {
        /// The former owner.
        from: String,
        /// As in its offer.
        upto: u64,
        /// The writes to apply.
        ops: Vec<WriteOp>,
        /// Mailboxes touched.
        touched: BTreeSet<PhoneNumber>,
        /// Account records replaced.
        accounts: Vec<PhoneNumber>,
        /// The last chunk of the offer.
        last: bool,
    },
    /// Store a receipt in another fragment of this node (which forwards it
    /// if it does not own it). If it cannot be handed over and it came from
    /// an ack, report [`Event::ReceiptNotStored`].
    ReceiptElsewhere {
        /// The fragment.
        fragment: FragmentId,
        /// The receipt.
        request: ReceiptRequest,
        /// Who waits for it to be stored.
        waiter: Option<Waiter<L>>,
    },
    /// Hand a group's batch, or its confirmation, to another fragment of
    /// this node (which forwards it if it does not own it). Lost ones are
    /// sent again by the group's home.
    GroupElsewhere {
        /// The fragment.
        fragment: FragmentId,
        /// A batch, or a confirmation of one.
        note: GroupNote,
    },
    /// Delete acked entries in another fragment of this node.
    DeleteAckedElsewhere {
        /// The fragment.
        fragment: FragmentId,
        /// The entries' owner.
        owner: PhoneNumber,
        /// Their ids.
        ids: Vec<MessageId>,
    },
}

/// A caller on this node that waits for an answer.
pub trait Caller {
    /// Whether it stopped waiting (its answer would go nowhere).
    fn gone(&self) -> bool;
}

/// What the core reads of the node's copy of the fragment besides what the
/// fragment core reads.
pub trait ReplicaRead: MailboxRead + crate::group_store::GroupRead {
    /// The stored id high-water mark.
    fn next_seq(&self) -> Result<u64, FragmentError>;
    /// Whether a copy from the owner is under way here (only part of the
    /// fragment is here).
    fn copy_incomplete(&self) -> Result<bool, FragmentError>;
    /// The divergent log in chunks of about `max_ops` writes, each with the
    /// last key it holds.
    fn divergent_chunks(&self, max_ops: usize) -> Result<Vec<(u64, Vec<WriteOp>)>, FragmentError>;
    /// The last key of the divergent log (0 if it is empty).
    fn divergent_last(&self) -> Result<u64, FragmentError>;
    /// Why new messages must be refused now, if they must (a broken store
    /// or a nearly full disk).
    fn refusal(&self) -> Option<FragmentError>;
}

/// What a fragment of a clustered node starts with.
#[derive(Debug, Clone)]
pub struct ClusterSetup {
    /// This node's name.
    pub this: String,
    /// Which nodes may own which fragments.
    pub islands: Islands,
    /// When a sender gets its ack.
    pub policy: AckPolicy,
    /// How many nodes the cluster has (for the take-over quorum).
    pub nodes: usize,
    /// How long after a cut heals a live peer may still be unlinked.
    pub relink_ms: u64,
    /// The owner this node last stored.
    pub owner: Option<Owner>,
    /// The peers up now.
    pub up: BTreeSet<String>,
}

pub(crate) type Core<T, L> = FragmentCore<Attached<T>, Waiter<L>>;
type CoreAction<T, L> = fragment::Action<Attached<T>, Waiter<L>>;

/// How far the partner's copy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PartnerCopy {
    /// Not being fed (down, or this node does not own the fragment).
    Absent,
    /// A copy was asked for ([`Action::TakeSnapshot`]); it goes out at
    /// stream position `rseq`, before any write made since.
    Snapshotting { rseq: u64 },
    /// A full copy is on its way; complete once `until` is acknowledged.
    /// It holds the divergent log up to `divergent_upto`.
    CatchingUp { until: u64, divergent_upto: u64 },
    /// Up to date and fed every write.
    Streaming,
}

/// A write waiting for its local commit and its partner's copy.
#[derive(Debug, Default)]
struct Waiting {
    local: Option<Result<(), String>>,
    remote: Option<Result<(), String>>,
    /// Kept until the partner confirms, to log them if it never does.
    ops: Vec<WriteOp>,
    /// When the write was made (see [`PARTNER_ANSWER_TIMEOUT_MS`]).
    since: Option<TimestampMs>,
    /// Its position in the stream to the partner, if streamed.
    rseq: Option<u64>,
}

/// Whether a write reached the partner's copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Copied {
    /// Streamed to the partner.
    Streamed,
    /// No partner to copy to (a single node, or no island).
    NoPartner,
    /// The partner exists but is not being fed: the write diverges.
    Missing,
}

/// A request sent to the owner, kept until answered: if the owner dies
/// first, it goes to the next owner, ahead of any later request, so that a
/// sender's messages keep their order across a failover.
struct Forwarded<L> {
    /// Where it went (empty once that node went down).
    owner: String,
    /// The owner's epoch then: a node that stopped serving and serves
    /// again (a new epoch) dropped the requests it had not answered.
    epoch: u64,
    wire: FragmentWire,
    reply: L,
}

/// A request held while the fragment is handed back.
enum Held<T, L> {
    Local(LocalRequest<T, L>),
    Peer { from: String, wire: FragmentWire },
}

/// The fragment's part in a cluster.
struct Replication<T, L> {
    this: String,
    islands: Islands,
    policy: AckPolicy,
    nodes: usize,
    relink_ms: u64,
    ownership: FragmentOwnership,
    up: BTreeSet<String>,
    /// Peers heard lately, as of the last membership event.
    lately: BTreeSet<String>,
    next_req: u64,
    /// Requests forwarded to the owner and not yet answered, by request id
    /// (ids grow, so this is also their order).
    forwarded: BTreeMap<u64, Forwarded<L>>,
    /// Sessions of this node attached through this forwarder.
    local_sessions: HashMap<PhoneNumber, Endpoint<T>>,
    copy: PartnerCopy,
    next_rseq: u64,
    by_rseq: BTreeMap<u64, u64>,
    /// Every write of this primary until it completes, by tag: writes
    /// complete in tag order (pushes and acks rely on it), so one that needs
    /// no copy still waits behind an older one that does.
    waiting: BTreeMap<u64, Waiting>,
    /// Draining before handing the fragment to its preferred owner, since.
    handing_since: Option<TimestampMs>,
    /// Since when this node has seen a majority of the others without a
    /// break (see [`Replication::may_take_over`]).
    in_sight_since: Option<TimestampMs>,
    /// The divergent writes offered to an owner and not yet confirmed (to
    /// whom, up to which divergent entry, since when): offered again to
    /// another owner, after [`MERGE_RETRY_MS`], or when the owner's link
    /// comes back (the offer may have died with the old one).
    merge_offer: Option<(String, u64, TimestampMs)>,
    /// Writes went to the divergent log after the last offer was read
    /// (a demotion's unconfirmed writes): offer again until it is empty.
    merge_more: bool,
    /// While a merge offer comes in chunks: ids of its messages that this
    /// owner holds under another id (see `merge`).
    merge_aliases: BTreeMap<MessageId, MessageId>,
    /// Groups the offer being merged created apart from this owner (their
    /// record is not here): their whole history comes along, also in the
    /// offer's later chunks.
    merge_new_groups: BTreeSet<GroupId>,
    /// The divergent log up to here is merged into an owner (its clearing
    /// may still be on the way to the disk).
    merged_upto: u64,
    /// A copy from the owner this node refuses (see `apply_snapshot`), by
    /// its stream position.
    refused_copy: Option<u64>,
    /// A copy's first chunk was handed to the disk and its last not yet:
    /// this node's rows are (or are about to be) only part of the
    /// fragment. The store's own mark (`copy_incomplete`) lags behind the
    /// writer's queue, so a take-over must look here too.
    copying: bool,
    /// As owner: this node's own commits hold every write it streamed up
    /// to here; the partner was told up to `told_committed`.
    committed_rseq: u64,
    told_committed: u64,
    /// As partner: streamed writes the owner has not said it committed.
    uncommitted: UncommittedStream,
}

/// One fragment's decisions on one node. See the module docs.
pub struct ReplicaCore<T, L> {
    id: FragmentId,
    placement: Placement,
    config: FragmentConfig,
    /// Present while this node serves the fragment.
    core: Option<Core<T, L>>,
    /// Bumped with every new core (see [`Action::Persist`]).
    generation: u64,
    cluster: Option<Replication<T, L>>,
    /// Requests that arrived while handing the fragment back.
    held: VecDeque<Held<T, L>>,
    /// Waiting for [`Event::Flushed`] to start serving (true: a take-over,
    /// whose ids start in a fresh block).
    promoting: Option<bool>,
    /// No core made since this node started (clustered only): ids it
    /// streamed to its partner before it stopped, without committing them
    /// itself, may be in the partner's rows, so its first core starts in a
    /// fresh block as a take-over does.
    first_core: bool,
    /// The core generation whose groups' fan-out has been resumed.
    groups_resumed: u64,
}

/// The actions of one step.
type Out<T, L> = Vec<Action<T, L>>;

impl<T: Clone, L: Caller> ReplicaCore<T, L> {
    /// The core of fragment `id` on a node; `cluster` on a clustered node.
    /// A node alone, or the fragment's owner, serves at once.
    pub fn new(
        id: FragmentId,
        placement: Placement,
        config: FragmentConfig,
        cluster: Option<ClusterSetup>,
        now: TimestampMs,
        reads: &impl ReplicaRead,
    ) -> Result<Self, FragmentError> {
        let cluster_present = cluster.is_some();
        let cluster = cluster.map(|setup| {
            let ownership = FragmentOwnership::new(&setup.this, &setup.islands, id, setup.owner);
            let in_sight = sees_majority(setup.nodes, setup.up.len());
            Replication {
                this: setup.this,
                islands: setup.islands,
                policy: setup.policy,
                nodes: setup.nodes,
                relink_ms: setup.relink_ms,
                ownership,
                lately: setup.up.clone(),
                up: setup.up,
                next_req: 0,
                forwarded: BTreeMap::new(),
                local_sessions: HashMap::new(),
                copy: PartnerCopy::Absent,
                next_rseq: 1,
                by_rseq: BTreeMap::new(),
                waiting: BTreeMap::new(),
                handing_since: None,
                in_sight_since: in_sight.then_some(now),
                merge_offer: None,
                merge_more: false,
                merge_aliases: BTreeMap::new(),
                merge_new_groups: BTreeSet::new(),
                merged_upto: 0,
                refused_copy: None,
                copying: false,
                committed_rseq: 0,
                told_committed: 0,
                uncommitted: UncommittedStream::default(),
            }
        });
        let mut replica = Self {
            id,
            placement,
            config,
            core: None,
            generation: 0,
            cluster,
            held: VecDeque::new(),
            promoting: None,
            first_core: cluster_present,
            groups_resumed: 0,
        };
        let serves = replica
            .cluster
            .as_ref()
            .is_none_or(|c| c.ownership.role() == Role::Primary);
        if serves {
            let core = replica.new_core(reads, false)?;
            replica.set_core(Some(core));
        }
        Ok(replica)
    }

    /// The fragment.
    pub fn id(&self) -> FragmentId {
        self.id
    }

    /// Whether this node serves the fragment now.
    pub fn serves(&self) -> bool {
        self.core.is_some()
    }

    /// The generation of the serving core (see [`Action::Persist`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Counts of the serving core, for metrics.
    pub fn counts(&self) -> fragment::CoreCounts {
        self.core.as_ref().map(|c| c.counts()).unwrap_or_default()
    }

    /// The owner as this node sees it (`None` on a node alone).
    pub fn owner(&self) -> Option<&Owner> {
        self.cluster.as_ref().map(|c| c.ownership.owner())
    }

    /// What an operator may see of `user`'s mailbox, if this node serves
    /// the fragment: no content, only counts and where the user is attached.
    pub fn mailbox_of(&self, user: &PhoneNumber) -> Option<MailboxSummary> {
        let core = self.core.as_ref()?;
        let (held_entries, held_bytes, session) = core.mailbox_of(user);
        Some(MailboxSummary {
            held_entries,
            held_bytes,
            session: session.map(|(session_id, attached)| AttachedSession {
                session_id,
                node: match attached {
                    Attached::Local(_) => None,
                    Attached::Remote { node, .. } => Some(node.clone()),
                },
            }),
        })
    }

    /// Whether the owner is still unknown after a restart.
    pub fn waiting_for_owner(&self) -> bool {
        self.cluster
            .as_ref()
            .is_some_and(|c| c.ownership.role() == Role::Waiting)
    }

    /// Requests not answered yet: forwarded and unanswered, writes waiting
    /// for the partner, requests held during a hand-back. Once a cluster is
    /// whole and quiet, none may be left (the simulator checks it).
    pub fn unanswered(&self) -> usize {
        self.held.len()
            + self
                .cluster
                .as_ref()
                .map_or(0, |c| c.forwarded.len() + c.waiting.len())
    }

    /// Takes one event; returns what to do, in order.
    pub fn step(
        &mut self,
        now: TimestampMs,
        event: Event<T, L>,
        reads: &impl ReplicaRead,
    ) -> Result<Out<T, L>, FragmentError> {
        let mut out = Vec::new();
        match event {
            Event::Start => self.start(&mut out),
            Event::Local(request) => {
                if self.handing_back() {
                    self.held.push_back(Held::Local(request));
                } else {
                    self.local(now, request, reads, &mut out)?;
                }
            }
            Event::Peer { from, wire } => {
                if wire.is_request() && self.handing_back() {
                    self.held.push_back(Held::Peer { from, wire });
                } else {
                    self.peer(now, from, wire, reads, &mut out)?;
                }
            }
            Event::PeerUp { peer, lately } => {
                self.note_lately(lately);
                self.peer_up(now, peer, reads, &mut out)?;
            }
            Event::PeerDown { peer, lately } => {
                self.note_lately(lately);
                self.peer_down(now, peer, reads, &mut out)?;
            }
            Event::Tick { lately } => {
                self.note_lately(lately);
                self.tick(now, reads, &mut out)?;
                self.tick_groups(now, reads, &mut out)?;
            }
            Event::Committed {
                generation,
                tag,
                outcome,
            } => {
                if generation == self.generation {
                    self.local_commit(now, tag, outcome, reads, &mut out)?;
                }
            }
            Event::Snapshot {
                chunks,
                divergent_upto,
            } => self.snapshot_taken(chunks, divergent_upto, &mut out),
            Event::Flushed => self.promote(now, reads, &mut out)?,
            Event::SnapshotFailed => {
                if let Some(cluster) = self.cluster.as_mut()
                    && matches!(cluster.copy, PartnerCopy::Snapshotting { .. })
                {
                    cluster.copy = PartnerCopy::Absent;
                }
            }
            Event::Merged {
                from,
                upto,
                touched,
                accounts,
                last,
            } => self.merged(now, from, upto, touched, accounts, last, reads, &mut out)?,
            Event::ReceiptNotStored { ids } => {
                if let Some(core) = self.core.as_mut() {
                    core.forget_acked(&ids);
                }
            }
            Event::Sweep => {
                if let Some(core) = self.core.as_mut() {
                    let mut actions = core.sweep(now);
                    actions.extend(core.expire(reads, now));
                    self.absorb(now, actions, reads, &mut out)?;
                }
            }
        }
        self.maybe_hand_back(now, reads, &mut out)?;
        Ok(out)
    }

    /// Once a second: the first tick of a new core resumes the fan-out
    /// its groups' logs still hold; every tick resends batches that were
    /// not confirmed in time.
    fn tick_groups(
        &mut self,
        now: TimestampMs,
        reads: &impl ReplicaRead,
        out: &mut Out<T, L>,
    ) -> Result<(), FragmentError> {
        let Some(core) = self.core.as_mut() else {
            return Ok(());
        };
        let mut actions = Vec::new();
        if self.groups_resumed != self.generation {
            self.groups_resumed = self.generation;
            actions = core.resume_groups(reads)?;
        }
        actions.extend(core.group_tick(now));
        self.absorb(now, actions, reads, out)
    }

    fn note_lately(&mut self, lately: BTreeSet<String>) {
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.lately = lately;
        }
    }

    fn handing_back(&self) -> bool {
        self.cluster
            .as_ref()
            .is_some_and(|c| c.handing_since.is_some())
    }

    /// Starts or stops serving.
    fn set_core(&mut self, core: Option<Core<T, L>>) -> Option<Core<T, L>> {
        self.generation += 1;
        std::mem::replace(&mut self.core, core)
    }

    /// A core continuing from the stored sequence, or, for a fragment this
    /// node takes over, starting far above any id the former owner may
    /// have given out without copying it here (see [`takeover_seq`]).
    fn new_core(
        &mut self,
        reads: &impl ReplicaRead,
        takeover: bool,
    ) -> Result<Core<T, L>, FragmentError> {
        let stored = reads.next_seq()?;
        let first_core = std::mem::take(&mut self.first_core);
        let next_seq = if takeover || first_core {
            takeover_seq(stored, self.island_member())
        } else {
            stored
        };
        Ok(
            FragmentCore::new(self.id, self.placement, self.config.clone(), next_seq)
                .with_usage(reads.usage()?),
        )
    }

    /// This node's place (0 or 1) in the fragment's island.
    fn island_member(&self) -> usize {
        match &self.cluster {
            Some(c) => match c.islands.members(self.id) {
                Some((_, second)) if second == c.this => 1,
                _ => 0,
            },
            None => 0,
        }
    }

    /// A request from this node: served here, or forwarded to the owner.
    fn local(
        &mut self,
        now: TimestampMs,
        request: LocalRequest<T, L>,
        reads: &impl ReplicaRead,
        out: &mut Out<T, L>,
    ) -> Result<(), FragmentError> {
        if self.core.is_none() {
            self.forward(request, out);
            return Ok(());
        }
        let (request, waiter) = match request {
            LocalRequest::Append { message, reply } => {
                (Request::Append(message), Some(Waiter::Local(reply)))
            }
            LocalRequest::Attach {
                user,
                endpoint,
                reply,
            } => {
                let request = Request::Attach {
                    user,
                    session_id: endpoint.session_id,
                    generation: endpoint.token_generation,
                    at: Attached::Local(endpoint),
                };
                (request, Some(Waiter::Local(reply)))
            }
            LocalRequest::Detach { user, session_id } => {
                (Request::Detach { user, session_id }, None)
            }
            LocalRequest::Ack { user, ids } => (Request::Ack { user, ids }, None),
            LocalRequest::StoreReceipt { request, reply } => {
                (Request::StoreReceipt(request), reply.map(Waiter::Local))
            }
            LocalRequest::ReadAccount { user, reply } => {
                (Request::ReadAccount(user), Some(Waiter::Local(reply)))
            }
            LocalRequest::WriteAccount { user, write, reply } => (
                Request::WriteAccount(user, write),
                Some(Waiter::Local(reply)),
            ),
            LocalRequest::DeleteAcked { owner, ids } => (Request::DeleteAcked { owner, ids }, None),
            LocalRequest::Group { request, reply } => {
                (Request::Group(request), Some(Waiter::Local(reply)))
            }
            LocalRequest::Note(note) => (Request::Note(note), None),
        };
        self.serve(now, request, waiter, reads, out)
    }

    /// The one dispatch of a request into the serving core, whoever made it.
    fn serve(
        &mut self,
        now: TimestampMs,
        request: Request<T>,
        waiter: Option<Waiter<L>>,
        reads: &impl ReplicaRead,
        out: &mut Out<T, L>,
    ) -> Result<(), FragmentError> {
        let id = self.id;
        let Some(core) = self.core.as_mut() else {
            if let Some(waiter) = waiter {
                answer_unavailable(id, &request, waiter, out);
            }
            return Ok(());
        };
        let actions = match request {
            // Refused before it is taken while the store cannot take it (a
            // broken store, a nearly full disk): a clear answer instead of
            // a failed write.
            Request::Append(message) => match (waiter, reads.refusal()) {
                (Some(waiter), Some(refused)) => {
                    stored_answer(waiter, Err(refused), out);
                    Vec::new()
                }
                (Some(waiter), None) => core.append(reads, message, now, waiter),
                (None, _) => Vec::new(),
            },
            Request::Attach {
                user,
                session_id,
                generation,
                at,
            } => {
                let remote = match &at {
                    Attached::Remote { node, .. } => Some(node.clone()),
                    Attached::Local(_) => None,
                };
                match core.attach(reads, user.clone(), session_id, generation, at) {
                    Ok(actions) => {
                        if let Some(Waiter::Local(reply)) = waiter {
                            out.push(Action::Answer {
                                to: reply,
                                answer: Answer::Attached(Ok(())),
                            });
                        }
                        actions
                    }
                    Err(e) => {
                        match (remote, waiter) {
                            (_, Some(Waiter::Local(reply))) => out.push(Action::Answer {
                                to: reply,
                                answer: Answer::Attached(Err(e)),
                            }),
                            // A session of another node whose token was
                            // revoked: its node closes it.
                            (Some(node), _) if matches!(e, FragmentError::TokenRevoked) => {
                                out.push(Action::Send {
                                    to: node,
                                    wire: FragmentWire::Revoked { user, session_id },
                                });
                            }
                            _ => tracing::warn!(fragment = id, error = %e, "remote attach failed"),
                        }
                        Vec::new()
                    }
                }
            }
            Request::Detach { user, session_id } => {
                core.detach(&user, session_id);
                Vec::new()
            }
            Request::Ack { user, ids } => {
                metrics::counter!("switchboard_entries_acked_total").increment(ids.len() as u64);
                core.ack(reads, &user, &ids, now)
            }
            Request::StoreReceipt(request) => core.store_receipt(reads, request, waiter),
            Request::ReadAccount(user) => {
                let result = core.account(reads, &user).map(AccountReply::Current);
                if let Some(waiter) = waiter {
                    account_answer(waiter, result, out);
                }
                Vec::new()
            }
            Request::WriteAccount(user, write) => match waiter {
                Some(waiter) => core.write_account(reads, user, write, waiter),
                None => Vec::new(),
            },
            Request::DeleteAcked { owner, ids } => core.delete_acked(owner, ids),
            Request::Group(request) => match (waiter, reads.refusal()) {
                // Sends are refused as 1:1 sends are; changes and reads go on.
                (Some(waiter), Some(refused)) if matches!(request, GroupRequest::Send { .. }) => {
                    group_answer(waiter, Err(refused), out);
                    Vec::new()
                }
                (Some(waiter), _) => core.group_request(reads, request, now, waiter),
                (None, _) => Vec::new(),
            },
            Request::Note(note) => core.group_note(reads, note),
        };
        self.absorb(now, actions, reads, out)
    }

    /// Turns the fragment core's actions into the shell's: local pushes and
    /// answers, messages to other nodes, writes (streamed to the partner
    /// first), and receipts for this or another fragment.
    fn absorb(
        &mut self,
        now: TimestampMs,
        actions: Vec<CoreAction<T, L>>,
        reads: &impl ReplicaRead,
        out: &mut Out<T, L>,
    ) -> Result<(), FragmentError> {
        let mut queue = VecDeque::from(actions);
        while let Some(action) = queue.pop_front() {
            match action {
                fragment::Action::Persist { tag, ops } => {
                    let divergent = self.replicate(now, tag, &ops, out) == Copied::Missing;
                    out.push(Action::Persist {
                        generation: self.generation,
                        tag,
                        ops,
                        divergent,
                    });
                }
                fragment::Action::Push { endpoint, entries } => {
                    metrics::counter!("switchboard_entries_pushed_total")
                        .increment(entries.len() as u64);
                    push_to(endpoint, Push::Entries(entries), out);
                }
                fragment::Action::Replaced { endpoint } => push_to(endpoint, Push::Replaced, out),
                fragment::Action::Revoked { endpoint } => push_to(endpoint, Push::Revoked, out),
                fragment::Action::AccountReply { to, result } => account_answer(to, result, out),
                fragment::Action::Reply { to, result } => {
                    if result.is_ok() {
                        metrics::counter!("switchboard_durable_acks_total").increment(1);
                    }
                    stored_answer(to, result, out);
                }
                fragment::Action::StoreReceipt {
                    fragment,
                    request,
                    waiter,
                } => {
                    if fragment == self.id {
                        if let Some(core) = self.core.as_mut() {
                            queue.extend(core.store_receipt(reads, request, waiter));
                        }
                    } else {
                        out.push(Action::ReceiptElsewhere {
                            fragment,
                            request,
                            waiter,
                        });
                    }
                }
                fragment::Action::GroupReply { to, result } => group_answer(to, result, out),
                fragment::Action::Note { fragment, note } => {
                    if fragment == self.id {
                        if let Some(core) = self.core.as_mut() {
                            queue.extend(core.group_note(reads, note));
                        }
                    } else {
                        out.push(Action::GroupElsewhere { fragment, note });
                    }
                }
                fragment::Action::DeleteAcked {
                    fragment,
                    owner,
                    ids,
                } => {
                    if fragment == self.id {
                        if let Some(core) = self.core.as_mut() {
                            queue.extend(core.delete_acked(owner, ids));
                        }
                    } else {
                        out.push(Action::DeleteAckedElsewhere {
                            fragment,
                            owner,
                            ids,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// A message from another node.
    fn peer(
        &mut self,
        now: TimestampMs,
        from: String,
        wire: FragmentWire,
        reads: &impl ReplicaRead,
        out: &mut Out<T, L>,
    ) -> Result<(), FragmentError> {
        let id = self.id;
        if self.cluster.is_none() {
            return Ok(());
        }
        if wire.is_request() {
            let Some((request, waiter)) = Request::from_wire(from.clone(), wire) else {
                return Ok(());
            };
            // Requests for a fragment this node does not serve are refused,
            // never forwarded again: no request travels in circles while
            // views differ.
            if self.core.is_none() {
                tracing::debug!(fragment = id, peer = %from, "request refused: not served here");
                if let Some(waiter) = waiter {
                    answer_unavailable(id, &request, waiter, out);
                }
                return Ok(());
            }
            if let Request::Attach {
                user, session_id, ..
            } = &request
            {
                tracing::debug!(fragment = id, %user, session_id, node = %from, "remote attach");
            }
            return self.serve(now, request, waiter, reads, out);
        }
        match wire {
            FragmentWire::AppendDone { req, result } => {
                if let Some(forwarded) =
                    self.cluster.as_mut().and_then(|c| c.forwarded.remove(&req))
                {
                    out.push(Action::Answer {
                        to: forwarded.reply,
                        answer: Answer::Stored(result),
                    });
                }
            }
            FragmentWire::GroupDone { req, result } => {
                if let Some(forwarded) =
                    self.cluster.as_mut().and_then(|c| c.forwarded.remove(&req))
                {
                    out.push(Action::Answer {
                        to: forwarded.reply,
                        answer: Answer::Group(result),
                    });
                }
            }
            FragmentWire::AccountDone { req, result } => {
                if let Some(forwarded) =
                    self.cluster.as_mut().and_then(|c| c.forwarded.remove(&req))
                {
                    out.push(Action::Answer {
                        to: forwarded.reply,
                        answer: Answer::Account(result),
                    });
                }
            }
            FragmentWire::Revoked { user, session_id } => {
                self.push_to_local_session(&user, session_id, Push::Revoked, true, out)
            }
            FragmentWire::Replaced { user, session_id } => {
                self.push_to_local_session(&user, session_id, Push::Replaced, true, out)
            }
            FragmentWire::Push {
                user,
                session_id,
                entries,
            } => self.push_to_local_session(&user, session_id, Push::Entries(entries), false, out),
            FragmentWire::Replicate { epoch, rseq, ops } => {
                self.apply_replica(&from, epoch, rseq, ops, out)
            }
            FragmentWire::Committed { epoch, upto } => self.owner_committed(&from, epoch, upto),
            wire @ (FragmentWire::Snapshot { .. }
            | FragmentWire::SnapshotWithAccounts { .. }
            | FragmentWire::SnapshotWithGroups { .. }) => {
                if let Some(((epoch, first, last, rseq), chunk)) = wire.into_snapshot() {
                    self.apply_snapshot(&from, epoch, first, last, rseq, chunk, reads, out)?;
                }
            }
            FragmentWire::Replicated { rseq, ok } => {
                self.replicated(now, &from, rseq, ok, reads, out)?
            }
            FragmentWire::Merge { upto, ops, last } => {
                self.merge(&from, upto, ops, last, reads, out)?
            }
            FragmentWire::MergeDone { upto } => self.merge_done(&from, upto, out),
            FragmentWire::Owner { owner, reply } => {
                self.owner_said(now, from, owner, reply, reads, out)?
            }
            // Requests, handled above.
            _ => {}
        }
        Ok(())
    }

    /// A push from the owner for a session of this node (`ends`: the
    /// session gets nothing more after it).
    fn push_to_local_session(
        &mut self,
        user: &PhoneNumber,
        session_id: u64,
        push: Push,
        ends: bool,
        out: &mut Out<T, L>,
    ) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let here = cluster
            .local_sessions
            .get(user)
            .is_some_and(|e| e.session_id == session_id);
        if !here {
            return;
        }
        let endpoint = if ends {
            cluster.local_sessions.remove(user)
        } else {
            cluster.local_sessions.get(user).cloned()
        };
        if let Some(endpoint) = endpoint {
            out.push(Action::Deliver { endpoint, push });
        }
    }

    /// At start: ask the partner who owns the fragment (a restarted actor
    /// must not serve on a stale view).
    fn start(&mut self, out: &mut Out<T, L>) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        if let Some(partner) = cluster.partner_up() {
            out.push(Action::Send {
                to: partner.to_owned(),
                wire: FragmentWire::Owner {
                    owner: cluster.ownership.owner().clone(),
                    reply: true,
                },
            });
        }
    }
}

/// A request, whoever made it.
enum Request<T> {
    Append(NewMessage),
    Attach {
        user: PhoneNumber,
        session_id: u64,
        generation: Option<u64>,
        at: Attached<T>,
    },
    Detach {
        user: PhoneNumber,
        session_id: u64,
    },
    Ack {
        user: PhoneNumber,
        ids: Vec<MessageId>,
    },
    StoreReceipt(ReceiptRequest),
    ReadAccount(PhoneNumber),
    WriteAccount(PhoneNumber, AccountWrite),
    DeleteAcked {
        owner: PhoneNumber,
        ids: Vec<MessageId>,
    },
    Group(GroupRequest),
    Note(GroupNote),
}

impl<T> Request<T> {
    /// A request of node `from`, with who waits for its answer.
    fn from_wire<L>(from: String, wire: FragmentWire) -> Option<(Self, Option<Waiter<L>>)> {
        let remote = |req| Waiter::Remote {
            node: from.clone(),
            req,
        };
        Some(match wire {
            wire @ (FragmentWire::Append { .. } | FragmentWire::AppendAfter { .. }) => {
                let (req, message) = wire.into_append()?;
                (Request::Append(message), Some(remote(req)))
            }
            FragmentWire::StoreReceipt { req, request } => {
                (Request::StoreReceipt(request), req.map(remote))
            }
            FragmentWire::Attach { user, session_id } => {
                let at = Attached::Remote {
                    node: from.clone(),
                    user: user.clone(),
                    session_id,
                };
                let request = Request::Attach {
                    user,
                    session_id,
                    generation: None,
                    at,
                };
                (request, None)
            }
            FragmentWire::AttachAt {
                user,
                session_id,
                generation,
            } => {
                let at = Attached::Remote {
                    node: from.clone(),
                    user: user.clone(),
                    session_id,
                };
                let request = Request::Attach {
                    user,
                    session_id,
                    generation,
                    at,
                };
                (request, None)
            }
            FragmentWire::AccountRead { req, user } => {
                (Request::ReadAccount(user), Some(remote(req)))
            }
            FragmentWire::AccountWrite { req, user, write } => {
                (Request::WriteAccount(user, write), Some(remote(req)))
            }
            FragmentWire::Detach { user, session_id } => {
                (Request::Detach { user, session_id }, None)
            }
            FragmentWire::Ack { user, ids } => (Request::Ack { user, ids }, None),
            FragmentWire::DeleteAcked { owner, ids } => (Request::DeleteAcked { owner, ids }, None),
            FragmentWire::Group { req, request } => (Request::Group(request), Some(remote(req))),
            FragmentWire::FanOut { home, fanout } => {
                (Request::Note(GroupNote::FanOut { home, fanout }), None)
            }
            FragmentWire::FannedOut {
                group,
                through,
                from,
            } => {
                let note = GroupNote::FannedOut {
                    group,
                    through,
                    from,
                };
                (Request::Note(note), None)
            }
            FragmentWire::Note(note) => (Request::Note(note), None),
            _ => return None,
        })
    }
}

/// Answers `Unavailable` in the kind of answer the request takes.
fn answer_unavailable<T, L>(
    id: FragmentId,
    request: &Request<T>,
    waiter: Waiter<L>,
    out: &mut Out<T, L>,
) {
    let e = FragmentError::Unavailable(id);
    match request {
        Request::ReadAccount(_) | Request::WriteAccount(..) => account_answer(waiter, Err(e), out),
        Request::Group(_) => group_answer(waiter, Err(e), out),
        Request::Attach { .. } => {
            if let Waiter::Local(reply) = waiter {
                out.push(Action::Answer {
                    to: reply,
                    answer: Answer::Attached(Err(e)),
                });
            }
        }
        _ => stored_answer(waiter, Err(e), out),
    }
}

fn stored_answer<T, L>(to: Waiter<L>, result: Result<Stored, FragmentError>, out: &mut Out<T, L>) {
    out.push(match to {
        Waiter::Local(reply) => Action::Answer {
            to: reply,
            answer: Answer::Stored(result),
        },
        Waiter::Remote { node, req } => Action::Send {
            to: node,
            wire: FragmentWire::AppendDone { req, result },
        },
    });
}

fn account_answer<T, L>(
    to: Waiter<L>,
    result: Result<AccountReply, FragmentError>,
    out: &mut Out<T, L>,
) {
    out.push(match to {
        Waiter::Local(reply) => Action::Answer {
            to: reply,
            answer: Answer::Account(result),
        },
        Waiter::Remote { node, req } => Action::Send {
            to: node,
            wire: FragmentWire::AccountDone { req, result },
        },
    });
}

fn group_answer<T, L>(
    to: Waiter<L>,
    result: Result<GroupAnswer, FragmentError>,
    out: &mut Out<T, L>,
) {
    out.push(match to {
        Waiter::Local(reply) => Action::Answer {
            to: reply,
            answer: Answer::Group(result),
        },
        Waiter::Remote { node, req } => Action::Send {
            to: node,
            wire: FragmentWire::GroupDone { req, result },
        },
    });
}

fn push_to<T, L>(endpoint: Attached<T>, push: Push, out: &mut Out<T, L>) {
    out.push(match endpoint {
        Attached::Local(endpoint) => Action::Deliver { endpoint, push },
        Attached::Remote {
            node,
            user,
            session_id,
        } => Action::Send {
            to: node,
            wire: match push {
                Push::Entries(entries) => FragmentWire::Push {
                    user,
                    session_id,
                    entries,
                },
                Push::Replaced => FragmentWire::Replaced { user, session_id },
                Push::Revoked => FragmentWire::Revoked { user, session_id },
            },
        },
    });
}

impl<T, L> Replication<T, L> {
    fn new_req(&mut self) -> u64 {
        self.next_req += 1;
        self.next_req
    }

    /// Whether this node may take a fragment over from `lost`: with the
    /// peers it sees, it must be a majority of the cluster's nodes other
    /// than `lost`, since a node cut off from the rest must not take
    /// fragments over from a primary that is alive elsewhere (its higher
    /// epoch would win when the cut heals). Two-node clusters always pass:
    /// a lone partner cannot tell a crash from a cut, and merges.
    ///
    /// Only peers heard lately count: a node cut off from everyone hears
    /// its partner declared down a moment before the others, and must not
    /// count them as still there. And a node that has just come back in
    /// sight of the others (a healed cut) waits until a live partner has
    /// had time to link again.
    fn may_take_over(&self, lost: &str, now: TimestampMs) -> bool {
        let fresh = self
            .up
            .iter()
            .filter(|p| *p != lost && self.lately.contains(*p))
            .count();
        let settled = self
            .in_sight_since
            .is_some_and(|since| now.saturating_sub(since) >= self.relink_ms);
        sees_majority(self.nodes, fresh) && settled
    }

    /// Keeps [`Replication::in_sight_since`] after a change of `up`.
    fn note_sight(&mut self, now: TimestampMs) {
        let now_in_sight = sees_majority(self.nodes, self.up.len());
        match (now_in_sight, self.in_sight_since) {
            (true, None) => self.in_sight_since = Some(now),
            (false, Some(_)) => self.in_sight_since = None,
            _ => {}
        }
    }

    fn partner_up(&self) -> Option<&str> {
        self.ownership.partner().filter(|p| self.up.contains(*p))
    }

    /// The owner, if requests can go there now.
    fn reachable_owner(&self) -> Option<String> {
        let owner = &self.ownership.owner().node;
        (self.ownership.role() != Role::Waiting && self.up.contains(owner)).then(|| owner.clone())
    }
}

/// Whether this node and `up` peers are a majority of the other `nodes - 1`
/// nodes of a cluster of `nodes` (a cluster of two always passes: a lone
/// partner cannot tell a crash from a cut, and merges).
fn sees_majority(nodes: usize, up: usize) -> bool {
    (1 + up) * 2 > nodes.saturating_sub(1)
}

#[cfg(test)]
mod tests;
