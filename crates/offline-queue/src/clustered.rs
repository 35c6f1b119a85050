//! A fragment actor's part in a cluster: who owns the fragment, forwarding
//! to the owner, the owner's stream of writes to its island partner, the
//! partner's copy, failover and hand-back.
//!
//! ```text
//! session ─▶ fragment-7 (forwarder, node 3) ─Append─▶ fragment-7 (owner, node 1)
//!                                                       ├─ local group commit
//!                                                       └─Replicate─▶ fragment-7 (node 2)
//!            ack to the sender once both are durable ◀──Replicated──┘
//! ```
//! Ownership rules are in `router::islands`; these modules carry them out:
//! `forwarding`, `replication`, `transitions` (changes of owner) and
//! `merge`; this file holds the state and routes what peers say.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use cluster::AckPolicy;
use cluster::wire::Body;
use proto::PhoneNumber;
use ractor::{ActorProcessingErr, ActorRef, RpcReplyPort};
use router::{FragmentId, FragmentOwnership, Owner, Role};
use storage::Store;

use crate::account::{AccountRecord, AccountReply};
use crate::actor::{
    Attached, CoreAction, FragmentCluster, FragmentMsg, FragmentState, FragmentWrites, LocalReply,
    MailboxWrites, Waiter, now_ms, perform,
};
use crate::remote::{self, FragmentWire};
use crate::replica::{
    self, clear_divergent, divergent_chunks, export_fragment, import_chunk, load_divergent,
    load_owner, log_divergent, save_owner,
};
use crate::store::{MailboxRead, WriteOp, apply_ops};
use crate::{Endpoint, FragmentError, Push, Stored};

mod forwarding;
mod merge;
mod replication;
mod transitions;

pub(crate) use forwarding::forward;
pub(crate) use replication::{local_commit, replicate};
pub(crate) use transitions::maybe_hand_back;

use forwarding::*;
use merge::*;
use replication::*;
use transitions::*;

impl FragmentWire {
    /// The variant's name, for logs.
    pub(crate) fn kind(&self) -> &'static str {
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
            FragmentWire::Revoked { .. } => "revoked",
            FragmentWire::AccountRead { .. } => "account-read",
            FragmentWire::AccountWrite { .. } => "account-write",
            FragmentWire::AccountDone { .. } => "account-done",
            FragmentWire::SnapshotWithAccounts { .. } => "snapshot-with-accounts",
        }
    }

    /// Requests a hand-over holds back (answers and the replication stream
    /// are never held).
    pub(crate) fn is_request(&self) -> bool {
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
        )
    }
}

/// How far the partner's copy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PartnerCopy {
    /// Not being fed (down, or this node does not own the fragment).
    Absent,
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
    /// When the write was made (see [`PARTNER_ANSWER_TIMEOUT`]).
    since: Option<std::time::Instant>,
}

/// A partner that has not confirmed a write by then is treated as lost for
/// this fragment: the write completes (logged as divergent) and the partner
/// gets a fresh copy. A lost answer must not hold every later write back.
pub(crate) const PARTNER_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A hand-back that has not drained by then is given up (and tried again
/// later), so that requests are never held for long.
pub(crate) const HAND_BACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether a write reached the partner's copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Copied {
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
pub(crate) struct Forwarded {
    owner: String,
    wire: FragmentWire,
    reply: LocalReply,
}

/// The cluster state of one fragment actor.
pub(crate) struct Clustered {
    pub(crate) ownership: FragmentOwnership,
    link: FragmentCluster,
    up: BTreeSet<String>,
    next_req: u64,
    /// Requests forwarded to the owner and not yet answered, by request id
    /// (ids grow, so this is also their order).
    forwarded: BTreeMap<u64, Forwarded>,
    /// Sessions of this node attached through this forwarder.
    local_sessions: HashMap<PhoneNumber, Endpoint>,
    copy: PartnerCopy,
    next_rseq: u64,
    by_rseq: BTreeMap<u64, u64>,
    /// Every write of this primary until it completes, by tag: writes
    /// complete in tag order (pushes and acks rely on it), so one that needs
    /// no copy still waits behind an older one that does.
    waiting: BTreeMap<u64, Waiting>,
    /// Draining before handing the fragment to its preferred owner.
    pub(crate) handing_back: bool,
    /// Since when it drains.
    handing_since: Option<std::time::Instant>,
    /// Requests that arrived while draining; served as a forwarder after.
    pub(crate) deferred: Vec<FragmentMsg>,
    /// Since when this node has seen a majority of the others without a
    /// break (see [`Clustered::may_take_over`]).
    in_sight_since: Option<std::time::Instant>,
    /// The divergent writes offered to an owner and not yet confirmed (to
    /// whom, up to which divergent entry, since when): offered again to
    /// another owner, after [`MERGE_RETRY`] (checked every second), or when
    /// the owner's link comes back (the offer may have died with the old one).
    merge_offer: Option<(String, u64, std::time::Instant)>,
}

/// How long an unconfirmed merge offer stands before it is made again.
pub(crate) const MERGE_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

impl Clustered {
    pub(crate) fn new(
        id: FragmentId,
        link: FragmentCluster,
        store: &Store,
    ) -> Result<Self, FragmentError> {
        let persisted = load_owner(store, id)?;
        let ownership = FragmentOwnership::new(link.handle.this(), &link.islands, id, persisted);
        let up = link.handle.view().up;
        let in_sight_since = sees_majority(link.nodes, up.len()).then(std::time::Instant::now);
        Ok(Self {
            ownership,
            link,
            up,
            next_req: 0,
            forwarded: BTreeMap::new(),
            local_sessions: HashMap::new(),
            copy: PartnerCopy::Absent,
            next_rseq: 1,
            by_rseq: BTreeMap::new(),
            waiting: BTreeMap::new(),
            handing_back: false,
            handing_since: None,
            deferred: Vec::new(),
            in_sight_since,
            merge_offer: None,
        })
    }

    fn new_req(&mut self) -> u64 {
        self.next_req += 1;
        self.next_req
    }

    /// Keeps a forwarded request until the owner answers. A request whose
    /// session stopped waiting (its port closed) is dropped now and then.
    fn remember(&mut self, req: u64, owner: String, wire: FragmentWire, reply: LocalReply) {
        self.forwarded.insert(req, Forwarded { owner, wire, reply });
        if self.forwarded.len().is_power_of_two() && self.forwarded.len() >= 1024 {
            self.forwarded.retain(|_, f| !f.reply.is_closed());
        }
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
    fn may_take_over(&self, lost: &str) -> bool {
        let handle = &self.link.handle;
        let fresh = self
            .up
            .iter()
            .filter(|p| *p != lost && handle.heard_lately(p))
            .count();
        let settled = self
            .in_sight_since
            .is_some_and(|since| since.elapsed() >= handle.relink_time());
        sees_majority(self.link.nodes, fresh) && settled
    }

    /// Keeps [`Clustered::in_sight_since`] after a change of `up`.
    fn note_sight(&mut self) {
        let now_in_sight = sees_majority(self.link.nodes, self.up.len());
        match (now_in_sight, self.in_sight_since) {
            (true, None) => self.in_sight_since = Some(std::time::Instant::now()),
            (false, Some(_)) => self.in_sight_since = None,
            _ => {}
        }
    }

    /// This node's place (0 or 1) in the island of fragment `id`.
    pub(crate) fn island_member(&self, id: FragmentId) -> usize {
        match self.link.islands.members(id) {
            Some((_, second)) if second == self.link.handle.this() => 1,
            _ => 0,
        }
    }

    fn partner_up(&self) -> Option<&str> {
        self.ownership.partner().filter(|p| self.up.contains(*p))
    }
}

/// Whether this node and `up` peers are a majority of the other `nodes - 1`
/// nodes of a cluster of `nodes` (a cluster of two always passes: a lone
/// partner cannot tell a crash from a cut, and merges).
fn sees_majority(nodes: usize, up: usize) -> bool {
    (1 + up) * 2 > nodes.saturating_sub(1)
}

/// Sends one fragment message to `node`; a failure only logs (the peer is
/// down or unreachable: membership will say so and the callers recover).
pub(crate) fn send(state: &FragmentState, node: &str, wire: FragmentWire) {
    let Some(cluster) = &state.cluster else {
        return;
    };
    send_via(cluster, state.id, node, wire);
}

fn send_via(cluster: &Clustered, fragment: FragmentId, node: &str, wire: FragmentWire) -> bool {
    send_over(&cluster.link, fragment, node, wire)
}

fn send_over(link: &FragmentCluster, fragment: FragmentId, node: &str, wire: FragmentWire) -> bool {
    let bytes = match remote::encode(fragment, wire) {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::error!(fragment, error = %e, "cannot encode a fragment message");
            return false;
        }
    };
    match link.handle.send(node, Body::Data(bytes)) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(fragment, peer = node, error = %e, "fragment message not sent");
            false
        }
    }
}

/// A reply port whose answer goes back to request `req` of `node`: for a
/// request from another node that this fragment passes on to a third
/// fragment (a read receipt on its way to the sender's fragment). `None`
/// on a node without a cluster. A port dropped unanswered answers
/// `Unavailable`, so the waiter is never left to its timeout.
pub(crate) fn reply_to_remote(
    state: &FragmentState,
    node: String,
    req: u64,
) -> Option<RpcReplyPort<Result<Stored, FragmentError>>> {
    let link = state.cluster.as_ref()?.link.clone();
    let fragment = state.id;
    let (port, answer) = ractor::concurrency::oneshot();
    tokio::spawn(async move {
        let result = answer
            .await
            .unwrap_or(Err(FragmentError::Unavailable(fragment)));
        send_over(
            &link,
            fragment,
            &node,
            FragmentWire::AppendDone { req, result },
        );
    });
    Some(port.into())
}

/// Hands a cluster `Data` body to the fragment actor it concerns.
pub fn dispatch(from: &str, bytes: Vec<u8>) {
    match remote::decode(&bytes) {
        Ok(envelope) => {
            let name = crate::fragment_name(envelope.fragment);
            match ractor::registry::where_is(name) {
                Some(cell) => {
                    let fragment: ActorRef<FragmentMsg> = cell.into();
                    let _ = fragment.send_message(FragmentMsg::FromPeer {
                        from: from.to_owned(),
                        wire: envelope.wire,
                    });
                }
                None => tracing::debug!(
                    fragment = envelope.fragment,
                    peer = from,
                    "message for a fragment not running here dropped"
                ),
            }
        }
        Err(e) => {
            tracing::warn!(peer = from, error = %e, "undecodable fragment message dropped");
            metrics::counter!("switchboard_cluster_undecodable_total").increment(1);
        }
    }
}

/// At start: ask the partner who owns the fragment (a restarted actor
/// must not serve on a stale view).
pub(crate) fn started(state: &FragmentState) {
    let Some(cluster) = &state.cluster else {
        return;
    };
    if let Some(partner) = cluster.partner_up() {
        let owner = cluster.ownership.owner().clone();
        send_via(
            cluster,
            state.id,
            partner,
            FragmentWire::Owner { owner, reply: true },
        );
    }
}

/// A message from another node.
pub(crate) async fn from_peer(
    state: &mut FragmentState,
    from: String,
    wire: FragmentWire,
) -> Result<Vec<CoreAction>, ActorProcessingErr> {
    let id = state.id;
    if state.cluster.is_none() {
        return Ok(Vec::new());
    }
    // Requests for a fragment this node does not serve are refused, never
    // forwarded again: no request travels in circles while views differ.
    if wire.is_request() && state.core.is_none() {
        let reply_req = match &wire {
            FragmentWire::Append { req, .. } | FragmentWire::AppendAfter { req, .. } => Some(*req),
            FragmentWire::StoreReceipt { req, .. } => *req,
            _ => None,
        };
        tracing::debug!(fragment = id, peer = %from, request = wire.kind(), "request refused: not served here");
        if let Some(req) = reply_req {
            let result = Err(FragmentError::Unavailable(id));
            send(state, &from, FragmentWire::AppendDone { req, result });
        }
        if let FragmentWire::AccountRead { req, .. } | FragmentWire::AccountWrite { req, .. } =
            &wire
        {
            let result = Err(FragmentError::Unavailable(id));
            send(
                state,
                &from,
                FragmentWire::AccountDone { req: *req, result },
            );
        }
        return Ok(Vec::new());
    }
    let reads = &state.reads;
    let actions = match wire {
        wire @ (FragmentWire::Append { .. } | FragmentWire::AppendAfter { .. }) => {
            match (wire.into_append(), state.core.as_mut()) {
                (Some((req, message)), Some(core)) => {
                    let waiter = Waiter::Remote { node: from, req };
                    crate::actor::append(core, reads, &state.store, message, waiter)
                }
                _ => Vec::new(),
            }
        }
        FragmentWire::StoreReceipt { req, request } => match state.core.as_mut() {
            Some(core) => {
                let waiter = req.map(|req| Waiter::Remote { node: from, req });
                core.store_receipt(reads, request, waiter)
            }
            None => Vec::new(),
        },
        FragmentWire::Attach { user, session_id } => {
            remote_attach(state, from, user, session_id, None)
        }
        FragmentWire::AttachAt {
            user,
            session_id,
            generation,
        } => remote_attach(state, from, user, session_id, generation),
        FragmentWire::AccountRead { req, user } => {
            let result = match state.core.as_ref() {
                Some(core) => core.account(reads, &user).map(AccountReply::Current),
                None => Err(FragmentError::Unavailable(id)),
            };
            send(state, &from, FragmentWire::AccountDone { req, result });
            Vec::new()
        }
        FragmentWire::AccountWrite { req, user, write } => match state.core.as_mut() {
            Some(core) => {
                let waiter = Waiter::Remote { node: from, req };
                core.write_account(reads, user, write, waiter)
            }
            None => Vec::new(),
        },
        FragmentWire::Detach { user, session_id } => {
            if let Some(core) = state.core.as_mut() {
                core.detach(&user, session_id);
            }
            Vec::new()
        }
        FragmentWire::Ack { user, ids } => match state.core.as_mut() {
            Some(core) => {
                metrics::counter!("switchboard_entries_acked_total").increment(ids.len() as u64);
                core.ack(reads, &user, &ids, now_ms())
            }
            None => Vec::new(),
        },
        FragmentWire::DeleteAcked { owner, ids } => match state.core.as_mut() {
            Some(core) => core.delete_acked(owner, ids),
            None => Vec::new(),
        },
        FragmentWire::AppendDone { req, result } => {
            if let Some(forwarded) = state
                .cluster
                .as_mut()
                .and_then(|c| c.forwarded.remove(&req))
            {
                forwarded.reply.stored(id, result);
            }
            Vec::new()
        }
        FragmentWire::AccountDone { req, result } => {
            if let Some(forwarded) = state
                .cluster
                .as_mut()
                .and_then(|c| c.forwarded.remove(&req))
            {
                forwarded.reply.account(id, result);
            }
            Vec::new()
        }
        FragmentWire::Revoked { user, session_id } => {
            if let Some(cluster) = state.cluster.as_mut()
                && cluster
                    .local_sessions
                    .get(&user)
                    .is_some_and(|e| e.session_id == session_id)
                && let Some(endpoint) = cluster.local_sessions.remove(&user)
            {
                let _ = endpoint.target.send_message(Push::Revoked);
            }
            Vec::new()
        }
        FragmentWire::Push {
            user,
            session_id,
            entries,
        } => {
            if let Some(endpoint) = state
                .cluster
                .as_ref()
                .and_then(|c| c.local_sessions.get(&user))
                .filter(|e| e.session_id == session_id)
            {
                let _ = endpoint.target.send_message(Push::Entries(entries));
            }
            Vec::new()
        }
        FragmentWire::Replaced { user, session_id } => {
            if let Some(cluster) = state.cluster.as_mut()
                && cluster
                    .local_sessions
                    .get(&user)
                    .is_some_and(|e| e.session_id == session_id)
                && let Some(endpoint) = cluster.local_sessions.remove(&user)
            {
                let _ = endpoint.target.send_message(Push::Replaced);
            }
            Vec::new()
        }
        FragmentWire::Replicate { epoch, rseq, ops } => {
            apply_replica(state, &from, epoch, rseq, ops);
            Vec::new()
        }
        wire @ (FragmentWire::Snapshot { .. } | FragmentWire::SnapshotWithAccounts { .. }) => {
            if let Some(((epoch, first, last, rseq), chunk)) = wire.into_snapshot() {
                apply_snapshot(state, &from, epoch, first, last, rseq, chunk);
            }
            Vec::new()
        }
        FragmentWire::Replicated { rseq, ok } => replicated(state, &from, rseq, ok),
        FragmentWire::Merge { upto, ops, last } => merge(state, &from, upto, ops, last).await?,
        FragmentWire::MergeDone { upto } => {
            tracing::info!(fragment = id, peer = %from, "divergent writes merged");
            if let Some(cluster) = state.cluster.as_mut()
                && cluster
                    .merge_offer
                    .as_ref()
                    .is_some_and(|(_, last, _)| upto >= *last)
            {
                cluster.merge_offer = None;
            }
            state
                .store
                .submit(move |txn| clear_divergent(txn, id, upto), |_| {});
            Vec::new()
        }
        FragmentWire::Owner { owner, reply } => {
            let was_waiting = state
                .cluster
                .as_ref()
                .is_some_and(|c| c.ownership.role() == Role::Waiting);
            // The owner announcing itself is known to serve now: attaches
            // sent on an earlier word (another node's relay) may have
            // reached it before it knew, and were refused.
            let from_owner = owner.node == from;
            let changed = state
                .cluster
                .as_mut()
                .and_then(|c| c.ownership.observe(&from, owner));
            let owner_spoke = from_owner
                && state
                    .cluster
                    .as_ref()
                    .is_some_and(|c| c.ownership.owner().node == from);
            let resolved = was_waiting
                && state
                    .cluster
                    .as_ref()
                    .is_some_and(|c| c.ownership.role() != Role::Waiting);
            if resolved {
                tracing::info!(fragment = id, peer = %from, "ownership known; role settled");
            }
            if reply && let Some(cluster) = state.cluster.as_ref() {
                let mine = cluster.ownership.owner().clone();
                send_via(
                    cluster,
                    id,
                    &from,
                    FragmentWire::Owner {
                        owner: mine,
                        reply: false,
                    },
                );
            }
            let mut actions = settle(state, changed, resolved || owner_spoke).await?;
            // The partner's fragment (re)started and may have missed a copy
            // in flight: start it afresh.
            let from_partner = state
                .cluster
                .as_ref()
                .is_some_and(|c| c.ownership.partner() == Some(from.as_str()));
            if reply && from_partner && state.core.is_some() {
                actions.extend(partner_lost(state).await?);
                start_copy(state).await;
            }
            actions
        }
    };
    Ok(actions)
}

/// The owner (this node's partner) is down: take the fragment over with a
/// new epoch, if this node sees enough of the cluster.
async fn take_over_if_quorate(
    state: &mut FragmentState,
) -> Result<Vec<CoreAction>, ActorProcessingErr> {
    let id = state.id;
    let Some(cluster) = state.cluster.as_mut() else {
        return Ok(Vec::new());
    };
    let Some(partner) = cluster.ownership.partner().map(str::to_owned) else {
        return Ok(Vec::new());
    };
    if cluster.up.contains(&partner) || cluster.ownership.owner().node != partner {
        return Ok(Vec::new());
    }
    if !cluster.may_take_over(&partner) {
        tracing::debug!(fragment = id, lost = %partner,
            "primary lost, but this node does not see enough of the cluster (yet) to take over");
        return Ok(Vec::new());
    }
    if replica::copy_incomplete(&state.store, id)? {
        // Serving from part of a copy would lose what the rest held; the
        // fragment waits for its owner instead (checked again every second).
        tracing::warn!(fragment = id, lost = %partner,
            "primary lost in the middle of copying the fragment here; waiting for it");
        return Ok(Vec::new());
    }
    let Some(cluster) = state.cluster.as_mut() else {
        return Ok(Vec::new());
    };
    let promoted = cluster.ownership.partner_down();
    if let Some(owner) = &promoted {
        tracing::warn!(fragment = id, epoch = owner.epoch, lost = %partner,
            "primary lost; this node takes the fragment over");
        metrics::counter!("switchboard_fragment_failovers_total").increment(1);
    }
    settle(state, promoted, false).await
}

/// Once a second: a partner that left a write unconfirmed for too long is
/// treated as lost for this fragment (see [`PARTNER_ANSWER_TIMEOUT`]); a
/// node that held back from taking over a lost primary looks again.
pub(crate) async fn check_partner(
    state: &mut FragmentState,
) -> Result<Vec<CoreAction>, ActorProcessingErr> {
    let id = state.id;
    if state.core.is_none() {
        let actions = take_over_if_quorate(state).await?;
        let offered = state
            .cluster
            .as_ref()
            .is_some_and(|c| c.merge_offer.is_some());
        if state.core.is_none() && offered {
            // An offer the owner never answered (lost with a link) is made
            // again once MERGE_RETRY has passed.
            send_merge(state)?;
        }
        return Ok(actions);
    }
    let stalled = state.cluster.as_ref().is_some_and(|c| {
        c.waiting.values().any(|w| {
            w.remote.is_none()
                && w.since
                    .is_some_and(|t| t.elapsed() > PARTNER_ANSWER_TIMEOUT)
        })
    });
    if !stalled {
        return Ok(Vec::new());
    }
    tracing::warn!(
        fragment = id,
        "the partner left a write unconfirmed; copying afresh"
    );
    metrics::counter!("switchboard_fragment_partner_timeouts_total").increment(1);
    let actions = partner_lost(state).await?;
    start_copy(state).await;
    Ok(actions)
}

pub(crate) async fn peer_up(
    state: &mut FragmentState,
    peer: String,
) -> Result<Vec<CoreAction>, ActorProcessingErr> {
    let id = state.id;
    let Some(cluster) = state.cluster.as_mut() else {
        return Ok(Vec::new());
    };
    cluster.up.insert(peer.clone());
    cluster.note_sight();
    let is_partner = cluster.ownership.partner() == Some(peer.as_str());
    if cluster.ownership.partner().is_some() {
        let owner = cluster.ownership.owner().clone();
        send_via(
            cluster,
            id,
            &peer,
            FragmentWire::Owner {
                owner,
                reply: is_partner,
            },
        );
    }
    if state.core.is_some() {
        if is_partner {
            start_copy(state).await;
        }
        return Ok(Vec::new());
    }
    let mut actions = Vec::new();
    if !is_partner {
        // With more of the cluster in sight, a node that held back may now
        // take over from a partner that is still down.
        actions.extend(take_over_if_quorate(state).await?);
        if state.core.is_some() {
            return Ok(actions);
        }
    }
    let owner_is_back = state
        .cluster
        .as_ref()
        .is_some_and(|c| c.ownership.owner().node == peer);
    if owner_is_back {
        reattach_all(state);
        // An offer sent before the link came back may have been lost with
        // the old link: offer again now.
        if let Some(cluster) = state.cluster.as_mut()
            && cluster
                .merge_offer
                .as_ref()
                .is_some_and(|(to, _, _)| *to == peer)
        {
            cluster.merge_offer = None;
        }
        send_merge(state)?;
        actions.extend(resend_held(state));
    }
    Ok(actions)
}

pub(crate) async fn peer_down(
    state: &mut FragmentState,
    peer: String,
) -> Result<Vec<CoreAction>, ActorProcessingErr> {
    let Some(cluster) = state.cluster.as_mut() else {
        return Ok(Vec::new());
    };
    cluster.up.remove(&peer);
    cluster.note_sight();
    // Requests forwarded there stay held: they go to the next owner (or to
    // this one when it returns) ahead of later ones; a session that gives
    // up waiting drops its own.
    for held in cluster.forwarded.values_mut() {
        if held.owner == peer {
            held.owner.clear();
        }
    }
    let is_partner = cluster.ownership.partner() == Some(peer.as_str());
    let mut actions = Vec::new();
    if let Some(core) = state.core.as_mut() {
        // Sessions of that node are gone with it.
        let gone: Vec<(PhoneNumber, u64)> = core
            .attached()
            .filter_map(|(user, session_id, _, endpoint)| match endpoint {
                Attached::Remote { node, .. } if *node == peer => Some((user.clone(), session_id)),
                _ => None,
            })
            .collect();
        for (user, session_id) in gone {
            core.detach(&user, session_id);
        }
    }
    if is_partner {
        actions.extend(partner_lost(state).await?);
        actions.extend(take_over_if_quorate(state).await?);
    }
    Ok(actions)
}

impl std::fmt::Debug for Clustered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clustered")
            .field("owner", self.ownership.owner())
            .field("role", &self.ownership.role())
            .finish_non_exhaustive()
    }
}

/// A session of another node attaches through it (see
/// [`crate::fragment::FragmentCore::attach`]); one whose token was revoked
/// is told so, and its node closes it.
fn remote_attach(
    state: &mut FragmentState,
    from: String,
    user: PhoneNumber,
    session_id: u64,
    generation: Option<u64>,
) -> Vec<CoreAction> {
    let id = state.id;
    let Some(core) = state.core.as_mut() else {
        return Vec::new();
    };
    tracing::debug!(fragment = id, %user, session_id, node = %from, "remote attach");
    let endpoint = Attached::Remote {
        node: from.clone(),
        user: user.clone(),
        session_id,
    };
    match core.attach(&state.reads, user.clone(), session_id, generation, endpoint) {
        Ok(actions) => actions,
        Err(FragmentError::TokenRevoked) => {
            send(state, &from, FragmentWire::Revoked { user, session_id });
            Vec::new()
        }
        Err(e) => {
            tracing::warn!(fragment = id, error = %e, "remote attach failed");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sees_majority;

    #[test]
    fn a_majority_is_of_the_other_nodes() {
        // Four nodes: this one and one more peer are a majority of the
        // three others (a cut-off node alone is not).
        assert!(!sees_majority(4, 0));
        assert!(sees_majority(4, 1));
        // Six nodes: three of the five.
        assert!(!sees_majority(6, 1));
        assert!(sees_majority(6, 2));
        // Two nodes: a lone partner always may (it cannot tell a crash
        // from a cut, and merges afterwards).
        assert!(sees_majority(2, 0));
    }
}
