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
//! Ownership rules are in `router::islands`; this file carries them out.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use cluster::AckPolicy;
use cluster::wire::Body;
use proto::PhoneNumber;
use ractor::{ActorProcessingErr, ActorRef, RpcReplyPort};
use router::{FragmentId, FragmentOwnership, Owner, Role};
use storage::Store;

use crate::actor::{
    Attached, CoreAction, FragmentCluster, FragmentMsg, FragmentState, Waiter, now_ms, perform,
};
use crate::remote::{self, FragmentWire};
use crate::replica::{
    self, clear_divergent, divergent_chunks, export_fragment, import_chunk, load_divergent,
    load_owner, log_divergent, save_owner,
};
use crate::store::{MailboxRead, WriteOp, apply_ops};
use crate::{Endpoint, FragmentError, Push, Stored};

impl FragmentWire {
    /// Requests a hand-over holds back (answers and the replication stream
    /// are never held).
    pub(crate) fn is_request(&self) -> bool {
        matches!(
            self,
            FragmentWire::Append { .. }
                | FragmentWire::Attach { .. }
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
}

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
    reply: RpcReplyPort<Result<Stored, FragmentError>>,
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
    /// Requests that arrived while draining; served as a forwarder after.
    pub(crate) deferred: Vec<FragmentMsg>,
}

impl Clustered {
    pub(crate) fn new(
        id: FragmentId,
        link: FragmentCluster,
        store: &Store,
    ) -> Result<Self, FragmentError> {
        let persisted = load_owner(store, id)?;
        let ownership = FragmentOwnership::new(link.handle.this(), &link.islands, id, persisted);
        let up = link.handle.view().up;
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
            deferred: Vec::new(),
        })
    }

    fn new_req(&mut self) -> u64 {
        self.next_req += 1;
        self.next_req
    }

    /// Keeps a forwarded request until the owner answers. A request whose
    /// session stopped waiting (its port closed) is dropped now and then.
    fn remember(
        &mut self,
        req: u64,
        owner: String,
        wire: FragmentWire,
        reply: RpcReplyPort<Result<Stored, FragmentError>>,
    ) {
        self.forwarded.insert(req, Forwarded { owner, wire, reply });
        if self.forwarded.len().is_power_of_two() && self.forwarded.len() >= 1024 {
            self.forwarded.retain(|_, f| !f.reply.is_closed());
        }
    }

    fn partner_up(&self) -> Option<&str> {
        self.ownership.partner().filter(|p| self.up.contains(*p))
    }
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
    let bytes = match remote::encode(fragment, wire) {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::error!(fragment, error = %e, "cannot encode a fragment message");
            return false;
        }
    };
    match cluster.link.handle.send(node, Body::Data(bytes)) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(fragment, peer = node, error = %e, "fragment message not sent");
            false
        }
    }
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

/// A request on a node that does not serve the fragment: forward it to the
/// owner, or refuse it while the owner is unknown or down.
pub(crate) fn forward(state: &mut FragmentState, message: FragmentMsg) {
    let id = state.id;
    let Some(cluster) = state.cluster.as_mut() else {
        // A single node always serves; nothing can reach here.
        return;
    };
    let owner = cluster.ownership.owner().node.clone();
    let reachable = cluster.ownership.role() != Role::Waiting && cluster.up.contains(&owner);
    match message {
        FragmentMsg::Append {
            to,
            from,
            client_msg_id,
            payload,
            reply,
        } => {
            if !reachable {
                let _ = reply.send(Err(FragmentError::Unavailable(id)));
                return;
            }
            let req = cluster.new_req();
            let wire = FragmentWire::Append {
                req,
                to,
                from,
                client_msg_id,
                payload,
            };
            if send_via(cluster, id, &owner, wire.clone()) {
                cluster.remember(req, owner, wire, reply);
            } else {
                let _ = reply.send(Err(FragmentError::Unavailable(id)));
            }
        }
        FragmentMsg::StoreReceipt { request, reply } => {
            let req = reply.as_ref().map(|_| cluster.new_req());
            let wire = FragmentWire::StoreReceipt { req, request };
            let sent = reachable && send_via(cluster, id, &owner, wire.clone());
            match (reply, req) {
                (Some(reply), Some(req)) if sent => cluster.remember(req, owner, wire, reply),
                (Some(reply), _) => {
                    let _ = reply.send(Err(FragmentError::Unavailable(id)));
                }
                (None, _) => {}
            }
        }
        FragmentMsg::Attach {
            user,
            endpoint,
            reply,
        } => {
            if !reachable {
                // A node that is rejoining, or whose owner for this user is
                // down and not yet replaced, sheds the login: the client
                // retries after a while, here or at another node.
                let _ = reply.send(Err(FragmentError::Unavailable(id)));
                return;
            }
            let session_id = endpoint.session_id;
            if let Some(old) = cluster.local_sessions.insert(user.clone(), endpoint)
                && old.session_id != session_id
            {
                let _ = old.target.send_message(Push::Replaced);
            }
            send_via(
                cluster,
                id,
                &owner,
                FragmentWire::Attach { user, session_id },
            );
            // Attached here; pushes come once the owner has it (and every
            // change of owner re-attaches the sessions held here).
            let _ = reply.send(Ok(()));
        }
        FragmentMsg::Detach { user, session_id } => {
            if cluster
                .local_sessions
                .get(&user)
                .is_some_and(|e| e.session_id == session_id)
            {
                cluster.local_sessions.remove(&user);
            }
            if reachable {
                send_via(
                    cluster,
                    id,
                    &owner,
                    FragmentWire::Detach { user, session_id },
                );
            }
        }
        FragmentMsg::Ack { user, ids } if reachable => {
            send_via(cluster, id, &owner, FragmentWire::Ack { user, ids });
        }
        FragmentMsg::DeleteAcked { owner: user, ids } if reachable => {
            let wire = FragmentWire::DeleteAcked { owner: user, ids };
            send_via(cluster, id, &owner, wire);
        }
        // With the owner out of reach an ack is dropped: the entries stay
        // and are pushed (and acked) again once the session re-attaches.
        _ => {}
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
            FragmentWire::Append { req, .. } => Some(*req),
            FragmentWire::StoreReceipt { req, .. } => *req,
            _ => None,
        };
        if let Some(req) = reply_req {
            let result = Err(FragmentError::Unavailable(id));
            send(state, &from, FragmentWire::AppendDone { req, result });
        }
        return Ok(Vec::new());
    }
    let reads = &state.reads;
    let actions = match wire {
        FragmentWire::Append {
            req,
            to,
            from: sender,
            client_msg_id,
            payload,
        } => match state.core.as_mut() {
            Some(core) => core.append(
                reads,
                to,
                sender,
                client_msg_id,
                payload,
                now_ms(),
                Waiter::Remote { node: from, req },
            ),
            None => Vec::new(),
        },
        FragmentWire::StoreReceipt { req, request } => match state.core.as_mut() {
            Some(core) => {
                let waiter = req.map(|req| Waiter::Remote { node: from, req });
                core.store_receipt(request, waiter)
            }
            None => Vec::new(),
        },
        FragmentWire::Attach { user, session_id } => match state.core.as_mut() {
            Some(core) => {
                let endpoint = Attached::Remote {
                    node: from,
                    user: user.clone(),
                    session_id,
                };
                core.attach(reads, user, session_id, endpoint)
                    .unwrap_or_else(|e| {
                        tracing::warn!(fragment = id, error = %e, "remote attach failed");
                        Vec::new()
                    })
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
            if let Some(cluster) = state.cluster.as_mut()
                && let Some(forwarded) = cluster.forwarded.remove(&req)
            {
                let _ = forwarded.reply.send(result);
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
        FragmentWire::Snapshot {
            epoch,
            first,
            last,
            rseq,
            chunk,
        } => {
            apply_snapshot(state, &from, epoch, first, last, rseq, chunk);
            Vec::new()
        }
        FragmentWire::Replicated { rseq, ok } => replicated(state, &from, rseq, ok),
        FragmentWire::Merge { upto, ops, last } => merge(state, &from, upto, ops, last).await?,
        FragmentWire::MergeDone { upto } => {
            tracing::info!(fragment = id, peer = %from, "divergent writes merged");
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

/// Whether `from` may feed this node's copy at `epoch`.
fn accepts_copy_from(state: &FragmentState, from: &str, epoch: u64) -> bool {
    state.core.is_none()
        && state.cluster.as_ref().is_some_and(|c| {
            let owner = c.ownership.owner();
            owner.node == from && epoch >= owner.epoch
        })
}

fn apply_replica(state: &FragmentState, from: &str, epoch: u64, rseq: u64, ops: Vec<WriteOp>) {
    if !accepts_copy_from(state, from, epoch) {
        send(state, from, FragmentWire::Replicated { rseq, ok: false });
        return;
    }
    let fragment = state.id;
    let reply = replica_reply(state, from);
    state.store.submit(
        move |txn| apply_ops(txn, fragment, &ops),
        move |result| reply(rseq, result.is_ok()),
    );
}

fn apply_snapshot(
    state: &FragmentState,
    from: &str,
    epoch: u64,
    first: bool,
    last: bool,
    rseq: u64,
    chunk: replica::SnapshotChunk,
) {
    if !accepts_copy_from(state, from, epoch) {
        if last {
            send(state, from, FragmentWire::Replicated { rseq, ok: false });
        }
        return;
    }
    let fragment = state.id;
    let reply = replica_reply(state, from);
    state.store.submit(
        move |txn| import_chunk(txn, fragment, first, &chunk),
        move |result| {
            // A failed chunk fails the copy at once; the last one completes it.
            if last || result.is_err() {
                reply(rseq, result.is_ok());
            }
        },
    );
}

/// Answers the primary from the writer thread once a copy is durable.
fn replica_reply(state: &FragmentState, to: &str) -> impl FnOnce(u64, bool) + Send + 'static {
    let handle = state.cluster.as_ref().map(|c| c.link.handle.clone());
    let (fragment, to) = (state.id, to.to_owned());
    move |rseq, ok| {
        let Some(handle) = handle else { return };
        match remote::encode(fragment, FragmentWire::Replicated { rseq, ok }) {
            Ok(bytes) => {
                let _ = handle.send(&to, Body::Data(bytes));
            }
            Err(e) => tracing::error!(fragment, error = %e, "cannot encode a replica ack"),
        }
    }
}

/// Streams a write to the partner, if it is being fed. Under the
/// `replicated` policy the write's commit then also waits for the partner.
pub(crate) fn replicate(state: &mut FragmentState, tag: u64, ops: &[WriteOp]) -> Copied {
    let id = state.id;
    let Some(cluster) = state.cluster.as_mut() else {
        return Copied::NoPartner;
    };
    let copied = stream_to_partner(cluster, id, ops);
    let awaited = copied.0 == Copied::Streamed && cluster.link.policy == AckPolicy::Replicated;
    if awaited && let Some(rseq) = copied.1 {
        cluster.by_rseq.insert(rseq, tag);
    }
    cluster.waiting.insert(
        tag,
        Waiting {
            local: None,
            remote: if awaited { None } else { Some(Ok(())) },
            ops: if awaited { ops.to_vec() } else { Vec::new() },
        },
    );
    copied.0
}

/// Sends a write to the partner if it is being fed; its stream position.
fn stream_to_partner(
    cluster: &mut Clustered,
    id: FragmentId,
    ops: &[WriteOp],
) -> (Copied, Option<u64>) {
    if cluster.ownership.partner().is_none() {
        return (Copied::NoPartner, None);
    }
    let partner = match cluster.partner_up() {
        Some(partner) if cluster.copy != PartnerCopy::Absent => partner.to_owned(),
        _ => return (Copied::Missing, None),
    };
    let rseq = cluster.next_rseq;
    cluster.next_rseq += 1;
    let epoch = cluster.ownership.owner().epoch;
    let wire = FragmentWire::Replicate {
        epoch,
        rseq,
        ops: ops.to_vec(),
    };
    if !send_via(cluster, id, &partner, wire) {
        // The link is gone: membership will report the partner down, and
        // the partner catches up by a full copy when it returns.
        cluster.copy = PartnerCopy::Absent;
        return (Copied::Missing, None);
    }
    (Copied::Streamed, Some(rseq))
}

/// The local commit of `tag` finished.
pub(crate) fn local_commit(
    state: &mut FragmentState,
    tag: u64,
    outcome: Result<(), String>,
) -> Vec<CoreAction> {
    if let Some(cluster) = state.cluster.as_mut()
        && let Some(waiting) = cluster.waiting.get_mut(&tag)
    {
        waiting.local = Some(outcome);
        return finish_ready(state);
    }
    match state.core.as_mut() {
        Some(core) => core.committed(&state.reads, tag, outcome),
        None => Vec::new(),
    }
}

fn replicated(state: &mut FragmentState, from: &str, rseq: u64, ok: bool) -> Vec<CoreAction> {
    let id = state.id;
    let Some(cluster) = state.cluster.as_mut() else {
        return Vec::new();
    };
    if cluster.ownership.partner() != Some(from) {
        return Vec::new();
    }
    if let PartnerCopy::CatchingUp {
        until,
        divergent_upto,
    } = cluster.copy
        && rseq >= until
    {
        if ok {
            tracing::info!(fragment = id, partner = from, "partner caught up");
            cluster.copy = PartnerCopy::Streaming;
            // The copy holds every divergent write logged before it.
            if divergent_upto > 0 {
                state
                    .store
                    .submit(move |txn| clear_divergent(txn, id, divergent_upto), |_| {});
            }
        } else {
            tracing::warn!(fragment = id, partner = from, "partner refused the copy");
            cluster.copy = PartnerCopy::Absent;
        }
    }
    let done: Vec<u64> = cluster.by_rseq.range(..=rseq).map(|(r, _)| *r).collect();
    for r in done {
        if let Some(tag) = cluster.by_rseq.remove(&r)
            && let Some(waiting) = cluster.waiting.get_mut(&tag)
        {
            waiting.remote = Some(if ok {
                Ok(())
            } else {
                Err("the secondary refused the write (a newer owner exists)".into())
            });
        }
    }
    finish_ready(state)
}

/// Completes, oldest first, the writes whose local commit and partner copy
/// are both in, stopping at the first that is not.
fn finish_ready(state: &mut FragmentState) -> Vec<CoreAction> {
    let (Some(cluster), Some(core)) = (state.cluster.as_mut(), state.core.as_mut()) else {
        return Vec::new();
    };
    let mut actions = Vec::new();
    while let Some(entry) = cluster.waiting.first_entry() {
        let waiting = entry.get();
        if waiting.local.is_none() || waiting.remote.is_none() {
            break;
        }
        let (tag, waiting) = entry.remove_entry();
        let outcome = match (waiting.local, waiting.remote) {
            (Some(local), Some(remote)) => local.and(remote),
            _ => continue,
        };
        actions.extend(core.committed(&state.reads, tag, outcome));
    }
    actions
}

/// The partner is gone: its pending copies no longer hold writes back. The
/// writes it may not have got are logged as divergent first (before they
/// are acknowledged), so that they survive into a catch-up or a merge.
async fn partner_lost(state: &mut FragmentState) -> Result<Vec<CoreAction>, FragmentError> {
    let id = state.id;
    let Some(cluster) = state.cluster.as_mut() else {
        return Ok(Vec::new());
    };
    cluster.copy = PartnerCopy::Absent;
    let tags: Vec<u64> = std::mem::take(&mut cluster.by_rseq).into_values().collect();
    let mut unconfirmed = Vec::new();
    for tag in &tags {
        if let Some(waiting) = cluster.waiting.get_mut(tag) {
            unconfirmed.extend(std::mem::take(&mut waiting.ops));
        }
    }
    if !unconfirmed.is_empty() {
        state
            .store
            .write(move |txn| log_divergent(txn, id, &unconfirmed))
            .await
            .map_err(crate::store::storage)?;
    }
    let Some(cluster) = state.cluster.as_mut() else {
        return Ok(Vec::new());
    };
    for tag in tags {
        if let Some(waiting) = cluster.waiting.get_mut(&tag) {
            waiting.remote = Some(Ok(()));
        }
    }
    Ok(finish_ready(state))
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
    } else if cluster.ownership.owner().node == peer {
        reattach_all(state);
        send_merge(state)?;
        return Ok(resend_held(state));
    }
    Ok(Vec::new())
}

pub(crate) async fn peer_down(
    state: &mut FragmentState,
    peer: String,
) -> Result<Vec<CoreAction>, ActorProcessingErr> {
    let id = state.id;
    let Some(cluster) = state.cluster.as_mut() else {
        return Ok(Vec::new());
    };
    cluster.up.remove(&peer);
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
            .filter_map(|(user, session_id, endpoint)| match endpoint {
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
        let promoted = state
            .cluster
            .as_mut()
            .and_then(|c| c.ownership.partner_down());
        if let Some(owner) = &promoted {
            tracing::warn!(fragment = id, epoch = owner.epoch, lost = %peer,
                "primary lost; this node takes the fragment over");
            metrics::counter!("switchboard_fragment_failovers_total").increment(1);
        }
        actions.extend(settle(state, promoted, false).await?);
    }
    Ok(actions)
}

/// After the view of the owner changed (or resolved after a restart):
/// persist it, tell the peers, and take the matching role.
async fn settle(
    state: &mut FragmentState,
    changed: Option<Owner>,
    reattach: bool,
) -> Result<Vec<CoreAction>, ActorProcessingErr> {
    let id = state.id;
    let Some(cluster) = state.cluster.as_ref() else {
        return Ok(Vec::new());
    };
    if let Some(owner) = &changed {
        if cluster.ownership.partner().is_some() {
            save_owner(&state.store, id, owner.clone()).await?;
        }
        for peer in &cluster.up {
            let wire = FragmentWire::Owner {
                owner: owner.clone(),
                reply: false,
            };
            send_via(cluster, id, peer, wire);
        }
    }
    let role = cluster.ownership.role();
    let mut actions = Vec::new();
    match (role, state.core.is_some()) {
        (Role::Primary, false) => {
            let mut core = if changed.is_some() {
                state.new_core_after_takeover()?
            } else {
                state.new_core()?
            };
            let sessions = state
                .cluster
                .as_mut()
                .map(|c| std::mem::take(&mut c.local_sessions))
                .unwrap_or_default();
            for (user, endpoint) in sessions {
                let session_id = endpoint.session_id;
                match core.attach(&state.reads, user, session_id, Attached::Local(endpoint)) {
                    Ok(more) => actions.extend(more),
                    Err(e) => tracing::warn!(fragment = id, error = %e, "attach at promotion"),
                }
            }
            state.set_core(Some(core));
            tracing::info!(fragment = id, "serving as primary");
            start_copy(state).await;
        }
        (Role::Primary, true) => {}
        (_, true) => {
            // Another node owns it now (a newer epoch elsewhere).
            demote(state);
        }
        (_, false) => {
            if changed.is_some() || reattach {
                reattach_all(state);
            }
        }
    }
    send_merge(state)?;
    actions.extend(resend_held(state));
    Ok(actions)
}

/// Writes per merge message: far below the link's 16 MiB frame limit even
/// at the largest payloads.
const MERGE_CHUNK_OPS: usize = 128;

/// A node that no longer owns the fragment but holds writes its partner
/// never got (it served behind a partition) offers them to the owner.
fn send_merge(state: &FragmentState) -> Result<(), FragmentError> {
    let Some(cluster) = state.cluster.as_ref() else {
        return Ok(());
    };
    let owner = &cluster.ownership.owner().node;
    if state.core.is_some()
        || cluster.ownership.role() == Role::Waiting
        || cluster.ownership.partner().is_none()
        || !cluster.up.contains(owner)
    {
        return Ok(());
    }
    let chunks = divergent_chunks(&state.store, state.id, MERGE_CHUNK_OPS)?;
    if chunks.is_empty() {
        return Ok(());
    }
    let writes: usize = chunks.iter().map(|(_, ops)| ops.len()).sum();
    tracing::warn!(fragment = state.id, to = %owner, writes,
        "offering writes made apart from the owner for merging");
    let count = chunks.len();
    for (i, (upto, ops)) in chunks.into_iter().enumerate() {
        let last = i + 1 == count;
        if !send_via(
            cluster,
            state.id,
            owner,
            FragmentWire::Merge { upto, ops, last },
        ) {
            break;
        }
    }
    Ok(())
}

/// Merges a former owner's divergent writes: messages not already here
/// (by their dedupe key: the sender may have resent them here), receipts,
/// deletions. Online users of the touched mailboxes get them pushed at
/// once, and the partner gets a fresh copy that includes them.
async fn merge(
    state: &mut FragmentState,
    from: &str,
    upto: u64,
    ops: Vec<WriteOp>,
    last: bool,
) -> Result<Vec<CoreAction>, ActorProcessingErr> {
    let id = state.id;
    if state.core.is_none() {
        // Not the owner (any more): the sender offers them again once it
        // knows the owner.
        return Ok(Vec::new());
    }
    let mut keep = Vec::new();
    let mut touched = BTreeSet::new();
    for op in ops {
        match &op {
            WriteOp::PutMessage {
                recipient,
                sender,
                client_msg_id,
                ..
            } => {
                if state
                    .reads
                    .dedupe(recipient, sender, *client_msg_id)?
                    .is_none()
                {
                    touched.insert(recipient.clone());
                    keep.push(op);
                }
            }
            WriteOp::PutReceipt { owner, .. } => {
                touched.insert(owner.clone());
                keep.push(op);
            }
            WriteOp::Delete { .. } => keep.push(op),
            // This owner's sequence is already past the former owner's,
            // and sweeping is its own business.
            WriteOp::NextSeq(_) | WriteOp::SweepDedupe { .. } => {}
        }
    }
    let merged = keep.len();
    state
        .store
        .write(move |txn| apply_ops(txn, id, &keep))
        .await?;
    tracing::warn!(
        fragment = id,
        from,
        merged,
        "merged writes made apart from this owner"
    );
    metrics::counter!("switchboard_fragment_merged_writes_total").increment(merged as u64);
    send(state, from, FragmentWire::MergeDone { upto });
    let mut actions = Vec::new();
    if let Some(core) = state.core.as_mut() {
        let online: Vec<_> = core
            .attached()
            .filter(|(user, _, _)| touched.contains(*user))
            .map(|(user, session_id, endpoint)| (user.clone(), session_id, endpoint.clone()))
            .collect();
        for (user, session_id, endpoint) in online {
            actions.extend(core.attach(&state.reads, user, session_id, endpoint)?);
        }
    }
    if last {
        actions.extend(partner_lost(state).await?);
        start_copy(state).await;
    }
    Ok(actions)
}

/// Stops serving: sessions of this node re-attach through the new owner;
/// those of other nodes do so when they hear of it.
fn demote(state: &mut FragmentState) {
    let id = state.id;
    let Some(mut core) = state.set_core(None) else {
        return;
    };
    if let Some(cluster) = state.cluster.as_mut() {
        cluster.copy = PartnerCopy::Absent;
        cluster.by_rseq.clear();
        // Writes still waiting are not acknowledged: their senders retry
        // with the same ids, which the new owner deduplicates.
        cluster.waiting.clear();
        for (user, _, endpoint) in core.take_attached() {
            if let Attached::Local(endpoint) = endpoint {
                cluster.local_sessions.insert(user, endpoint);
            }
        }
    }
    tracing::info!(fragment = id, "no longer serving");
    reattach_all(state);
}

/// Sends held requests (those whose owner died or changed) to the current
/// owner, oldest first, or serves them here if this node is the owner now.
fn resend_held(state: &mut FragmentState) -> Vec<CoreAction> {
    let id = state.id;
    let Some(cluster) = state.cluster.as_mut() else {
        return Vec::new();
    };
    if let Some(core) = state.core.as_mut() {
        let mut actions = Vec::new();
        for (_, held) in std::mem::take(&mut cluster.forwarded) {
            let Forwarded { wire, reply, .. } = held;
            match wire {
                FragmentWire::Append {
                    to,
                    from,
                    client_msg_id,
                    payload,
                    ..
                } => actions.extend(core.append(
                    &state.reads,
                    to,
                    from,
                    client_msg_id,
                    payload,
                    now_ms(),
                    Waiter::Local(reply),
                )),
                FragmentWire::StoreReceipt { request, .. } => {
                    actions.extend(core.store_receipt(request, Some(Waiter::Local(reply))));
                }
                _ => {
                    let _ = reply.send(Err(FragmentError::Unavailable(id)));
                }
            }
        }
        return actions;
    }
    let owner = cluster.ownership.owner().node.clone();
    if cluster.ownership.role() == Role::Waiting || !cluster.up.contains(&owner) {
        return Vec::new();
    }
    let stale: Vec<u64> = cluster
        .forwarded
        .iter()
        .filter(|(_, held)| held.owner != owner)
        .map(|(req, _)| *req)
        .collect();
    for req in stale {
        let Some(wire) = cluster.forwarded.get(&req).map(|held| held.wire.clone()) else {
            continue;
        };
        if send_via(cluster, id, &owner, wire)
            && let Some(held) = cluster.forwarded.get_mut(&req)
        {
            held.owner = owner.clone();
        }
    }
    Vec::new()
}

/// Re-attaches this node's sessions at the current owner.
fn reattach_all(state: &FragmentState) {
    let Some(cluster) = state.cluster.as_ref() else {
        return;
    };
    let owner = &cluster.ownership.owner().node;
    if cluster.ownership.role() == Role::Waiting || !cluster.up.contains(owner) {
        return;
    }
    for (user, endpoint) in &cluster.local_sessions {
        let wire = FragmentWire::Attach {
            user: user.clone(),
            session_id: endpoint.session_id,
        };
        send_via(cluster, state.id, owner, wire);
    }
}

/// Sends the partner a full copy of the fragment, then streams every write.
async fn start_copy(state: &mut FragmentState) {
    let id = state.id;
    let Some(cluster) = state.cluster.as_ref() else {
        return;
    };
    if cluster.link.policy != AckPolicy::Replicated && cluster.ownership.partner().is_none() {
        return;
    }
    if cluster.copy != PartnerCopy::Absent || state.core.is_none() {
        return;
    }
    let Some(partner) = cluster.partner_up().map(str::to_owned) else {
        return;
    };
    // Writes handed to the writer before now must be in the copy.
    if let Err(e) = state.store.flush().await {
        tracing::warn!(fragment = id, error = %e, "flush before copy failed");
        return;
    }
    let divergent_upto = match load_divergent(&state.store, id) {
        Ok((upto, _)) => upto,
        Err(e) => {
            tracing::warn!(fragment = id, error = %e, "cannot read the divergent log");
            return;
        }
    };
    let chunks = match export_fragment(&state.store, id) {
        Ok(chunks) => chunks,
        Err(e) => {
            tracing::warn!(fragment = id, error = %e, "cannot read the fragment to copy");
            return;
        }
    };
    let Some(cluster) = state.cluster.as_mut() else {
        return;
    };
    let rseq = cluster.next_rseq;
    cluster.next_rseq += 1;
    let epoch = cluster.ownership.owner().epoch;
    let count = chunks.len();
    for (i, chunk) in chunks.into_iter().enumerate() {
        let wire = FragmentWire::Snapshot {
            epoch,
            first: i == 0,
            last: i + 1 == count,
            rseq,
            chunk,
        };
        if !send_via(cluster, id, &partner, wire) {
            return;
        }
    }
    tracing::info!(fragment = id, partner = %partner, chunks = count, "copying to partner");
    cluster.copy = PartnerCopy::CatchingUp {
        until: rseq,
        divergent_upto,
    };
}

/// A fragment held for its preferred owner goes back once that node has a
/// full copy: new requests are held, writes in flight finish, then the
/// owner changes with a new epoch. Returns the held requests once the
/// hand-back is done (or abandoned), for the caller to route in order.
pub(crate) async fn maybe_hand_back(
    myself: &ActorRef<FragmentMsg>,
    state: &mut FragmentState,
) -> Result<Vec<FragmentMsg>, ActorProcessingErr> {
    let id = state.id;
    let (Some(cluster), Some(core)) = (state.cluster.as_mut(), state.core.as_ref()) else {
        return Ok(Vec::new());
    };
    if !cluster.handing_back {
        let ready = cluster.copy == PartnerCopy::Streaming
            && cluster
                .ownership
                .holds_for_partner(&cluster.link.islands, id);
        if !ready {
            return Ok(Vec::new());
        }
        tracing::info!(
            fragment = id,
            "partner caught up; draining to hand the fragment back"
        );
        cluster.handing_back = true;
    }
    if core.counts().pending_commits > 0 || !cluster.waiting.is_empty() {
        return Ok(Vec::new());
    }
    if cluster.partner_up().is_some()
        && let Some(owner) = cluster.ownership.hand_to_partner()
    {
        tracing::info!(fragment = id, to = %owner.node, epoch = owner.epoch,
            "handing the fragment back");
        let actions = settle(state, Some(owner), false).await?;
        perform(myself, state, actions);
    }
    let Some(cluster) = state.cluster.as_mut() else {
        return Ok(Vec::new());
    };
    cluster.handing_back = false;
    Ok(std::mem::take(&mut cluster.deferred))
}

impl std::fmt::Debug for Clustered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clustered")
            .field("owner", self.ownership.owner())
            .field("role", &self.ownership.role())
            .finish_non_exhaustive()
    }
}
