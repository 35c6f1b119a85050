//! The fragment actor: a [`ReplicaCore`] behind a ractor mailbox, and
//! nothing else. The shell turns messages into the core's events, reads
//! the clock, and carries out the core's actions: writes go to the
//! group-commit writer (whose completion comes back as
//! [`FragmentMsg::Committed`]), messages to other nodes over the cluster
//! link, pushes and answers to this node's sessions, and receipts to other
//! fragments, which it finds by registered name so that a restarted
//! fragment is found again.
//!
//! On a clustered node every fragment has an actor under the same name, but
//! only the fragment's owner serves it; what the others do is the core's
//! business (`replica_core.rs`).

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use cluster::wire::Body;
use cluster::{AckPolicy, ClusterHandle};
use proto::{MessageId, PhoneNumber};
use ractor::{Actor, ActorProcessingErr, ActorRef, DerivedActorRef, RpcReplyPort};
use router::{FragmentId, Islands, Placement};
use storage::{ApplyGroup, Journaled, Store};

use crate::account::{AccountReply, AccountWrite};
use crate::fragment::{
    FragmentConfig, GroupAnswer, GroupRequest, NewMessage, ReceiptRequest, Stored,
};
use crate::remote::{self, FragmentWire};
use crate::replica::{
    clear_divergent, export_fragment, import_chunk, load_divergent, load_owner, log_divergent,
    log_divergent_all, save_owner,
};
use crate::replica_core::{
    Action, Answer, Caller, ClusterSetup, Event, GroupNote, LocalRequest, ReplicaCore, Waiter,
};
use crate::staged::MailboxStage;
use crate::store::{MailboxTables, RedbMailbox, WriteOp, apply_ops};
use crate::{FragmentError, Push};

/// The registered name of fragment `id`'s actor.
pub fn fragment_name(id: FragmentId) -> String {
    format!("fragment-{id}")
}

impl ractor::Message for Push {}

/// Where an online user's entries go: a session (or bot) of this node.
pub type Endpoint = crate::replica_core::Endpoint<DerivedActorRef<Push>>;

/// Gauges of one fragment, for metrics and `switchboard admin status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FragmentStats {
    /// The fragment.
    pub fragment: FragmentId,
    /// Users attached now.
    pub online: usize,
    /// Writes waiting for their commit.
    pub pending_commits: usize,
    /// Entries cached in memory for online users.
    pub cached_entries: usize,
    /// Whether this node serves the fragment now.
    pub serves: bool,
    /// The owner as this node sees it (`None` on a node alone).
    pub owner: Option<router::Owner>,
    /// Whether the owner is still unknown after a restart.
    pub waiting_for_owner: bool,
    /// Requests forwarded or held and not answered yet.
    pub unanswered: usize,
}

/// Messages to a fragment actor.
pub enum FragmentMsg {
    /// Store a message for a user of this fragment; replied to once
    /// durable (one tick).
    Append {
        /// What to store.
        message: NewMessage,
        /// Gets the server ack.
        reply: RpcReplyPort<Result<Stored, FragmentError>>,
    },
    /// `user` is online at `endpoint`: push its mailbox there.
    Attach {
        /// The user.
        user: PhoneNumber,
        /// Where to push.
        endpoint: Endpoint,
        /// Answered once the first pushes are sent (or, when another node
        /// owns the fragment, once the attach is on its way there).
        reply: RpcReplyPort<Result<(), FragmentError>>,
    },
    /// The session `session_id` of `user` ended.
    Detach {
        /// The user.
        user: PhoneNumber,
        /// Only this session is detached, not a newer one.
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
        /// Answered once it is durable, if given.
        reply: Option<RpcReplyPort<Result<Stored, FragmentError>>>,
    },
    /// Read `user`'s account record (answered [`AccountReply::Current`]).
    ReadAccount {
        /// The user.
        user: PhoneNumber,
        /// The record.
        reply: RpcReplyPort<Result<AccountReply, FragmentError>>,
    },
    /// Compare-and-set `user`'s account record; answered once durable.
    WriteAccount {
        /// The user.
        user: PhoneNumber,
        /// The new record and the version it replaces.
        write: AccountWrite,
        /// Written or conflict.
        reply: RpcReplyPort<Result<AccountReply, FragmentError>>,
    },
    /// Receipts for these acked entries are durable: delete them.
    DeleteAcked {
        /// The owner of the entries.
        owner: PhoneNumber,
        /// Their ids.
        ids: Vec<MessageId>,
    },
    /// A group request for a group at home in this fragment (or, for a
    /// create, of a creator of this fragment); answered once durable.
    Group {
        /// The request.
        request: GroupRequest,
        /// The answer.
        reply: RpcReplyPort<Result<GroupAnswer, FragmentError>>,
    },
    /// A group's batch, or its confirmation, from another fragment of
    /// this node.
    GroupNote(GroupNote),
    /// Internal: the group commit of `tag` finished.
    Committed {
        /// Which core submitted it (a core dropped and made again on this
        /// actor starts its tags afresh; late answers to the old one are
        /// ignored).
        generation: u64,
        /// The core's tag.
        tag: u64,
        /// Ok, or the storage error text.
        outcome: Result<(), String>,
    },
    /// Internal: forget expired dedupe keys.
    Sweep,
    /// Internal, once a second: look for writes the partner left
    /// unconfirmed (clustered), resend unconfirmed group batches.
    CheckPartner,
    /// Report gauges.
    Stats(RpcReplyPort<FragmentStats>),
    /// What an operator may see of a user's mailbox here (`None` when this
    /// node does not serve the fragment).
    Mailbox {
        /// The user.
        user: PhoneNumber,
        /// Gets the summary.
        reply: RpcReplyPort<Option<crate::replica_core::MailboxSummary>>,
    },
    /// Cluster: a message about this fragment from another node.
    FromPeer {
        /// The sending node.
        from: String,
        /// What it says.
        wire: FragmentWire,
    },
    /// Cluster: a peer came up.
    PeerUp(String),
    /// Cluster: a peer went down.
    PeerDown(String),
}

impl ractor::Message for FragmentMsg {}

/// Called with the fragment id each time a fragment actor starts, so that
/// sessions of its users attach again after a restart.
pub type OnFragmentStart = Arc<dyn Fn(FragmentId) + Send + Sync>;

/// What a fragment of a clustered node needs.
#[derive(Clone)]
pub struct FragmentCluster {
    /// Membership and links to peers.
    pub handle: ClusterHandle,
    /// Which nodes may own which fragments.
    pub islands: Islands,
    /// When a sender gets its ack.
    pub policy: AckPolicy,
    /// How many nodes the cluster has (for the take-over quorum).
    pub nodes: usize,
}

/// Start-up arguments of a [`FragmentActor`].
#[derive(Clone)]
pub struct FragmentArgs {
    /// Which fragment.
    pub id: FragmentId,
    /// The user → fragment map.
    pub placement: Placement,
    /// Tuning.
    pub config: FragmentConfig,
    /// The node's database.
    pub store: Store,
    /// Told when this fragment (re)starts.
    pub on_start: Option<OnFragmentStart>,
    /// Set on a node that is part of a cluster.
    pub cluster: Option<FragmentCluster>,
}

/// Finds fragment actors by their registered names. Cheap to clone.
#[derive(Debug, Clone)]
pub struct FragmentDirectory {
    placement: Placement,
    /// `fragment_name(id)` for every id, built once: lookups are on the
    /// message path and need not format a name each time.
    names: Arc<[String]>,
}

impl FragmentDirectory {
    /// A directory over `placement`'s fragments.
    pub fn new(placement: Placement) -> Self {
        let names = (0..placement.fragments()).map(fragment_name).collect();
        Self { placement, names }
    }

    /// The placement it uses.
    pub fn placement(&self) -> Placement {
        self.placement
    }

    /// Fragment `id`'s actor, if running.
    pub fn get(&self, id: FragmentId) -> Result<ActorRef<FragmentMsg>, FragmentError> {
        self.names
            .get(usize::from(id))
            .and_then(|name| ractor::registry::where_is(name.as_str()))
            .map(ActorRef::from)
            .ok_or(FragmentError::Unavailable(id))
    }

    /// Fragment `id`'s actor, waiting up to `wait` for one that is being
    /// restarted by its supervisor.
    pub async fn get_when_ready(
        &self,
        id: FragmentId,
        wait: Duration,
    ) -> Result<ActorRef<FragmentMsg>, FragmentError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.get(id) {
                Ok(fragment) => return Ok(fragment),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    /// The actor of the fragment owning `user`.
    pub fn for_user(&self, user: &PhoneNumber) -> Result<ActorRef<FragmentMsg>, FragmentError> {
        self.get(self.placement.fragment_of(user))
    }

    /// Like [`FragmentDirectory::for_user`], waiting up to `wait` for a
    /// fragment that is being restarted by its supervisor.
    pub async fn for_user_when_ready(
        &self,
        user: &PhoneNumber,
        wait: Duration,
    ) -> Result<ActorRef<FragmentMsg>, FragmentError> {
        self.get_when_ready(self.placement.fragment_of(user), wait)
            .await
    }
}

/// The fragment actor. See the module docs.
#[derive(Debug, Default)]
pub struct FragmentActor;

/// The reply port of a caller on this node, by the kind of answer it takes.
pub(crate) enum LocalReply {
    /// A send or a receipt.
    Stored(RpcReplyPort<Result<Stored, FragmentError>>),
    /// An account read or write.
    Account(RpcReplyPort<Result<AccountReply, FragmentError>>),
    /// An attach.
    Attach(RpcReplyPort<Result<(), FragmentError>>),
    /// A group request.
    Group(RpcReplyPort<Result<GroupAnswer, FragmentError>>),
}

impl Caller for LocalReply {
    fn gone(&self) -> bool {
        match self {
            LocalReply::Stored(port) => port.is_closed(),
            LocalReply::Account(port) => port.is_closed(),
            LocalReply::Attach(port) => port.is_closed(),
            LocalReply::Group(port) => port.is_closed(),
        }
    }
}

impl LocalReply {
    /// Sends the answer; one of another kind than the caller takes (which
    /// no path makes) tells it `Unavailable`.
    fn answer(self, id: FragmentId, answer: Answer) {
        let unavailable = FragmentError::Unavailable(id);
        match (self, answer) {
            (LocalReply::Stored(port), Answer::Stored(result)) => {
                let _ = port.send(result);
            }
            (LocalReply::Account(port), Answer::Account(result)) => {
                let _ = port.send(result);
            }
            (LocalReply::Attach(port), Answer::Attached(result)) => {
                let _ = port.send(result);
            }
            (LocalReply::Group(port), Answer::Group(result)) => {
                let _ = port.send(result);
            }
            (LocalReply::Stored(port), _) => {
                let _ = port.send(Err(unavailable));
            }
            (LocalReply::Account(port), _) => {
                let _ = port.send(Err(unavailable));
            }
            (LocalReply::Attach(port), _) => {
                let _ = port.send(Err(unavailable));
            }
            (LocalReply::Group(port), _) => {
                let _ = port.send(Err(unavailable));
            }
        }
    }
}

type Replica = ReplicaCore<DerivedActorRef<Push>, LocalReply>;
type ShellAction = Action<DerivedActorRef<Push>, LocalReply>;
type ShellEvent = Event<DerivedActorRef<Push>, LocalReply>;

/// A [`FragmentActor`]'s state.
pub struct FragmentState {
    id: FragmentId,
    replica: Replica,
    /// Counts this fragment in `switchboard_fragments_serving` while it is
    /// served here (and uncounts it however the actor ends).
    serving: Option<ServingGauge>,
    reads: RedbMailbox,
    store: Store,
    directory: FragmentDirectory,
    on_start: Option<OnFragmentStart>,
    sweeper: Option<tokio::task::JoinHandle<()>>,
    checker: Option<tokio::task::JoinHandle<()>>,
    /// Links to peers, on a clustered node.
    link: Option<ClusterHandle>,
}

pub(crate) use proto::clock::now_ms;

/// Fragments this process serves now (the gauge's value, for `/readyz`).
static SERVING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many fragments this process serves now.
pub fn fragments_serving() -> usize {
    SERVING.load(std::sync::atomic::Ordering::Relaxed)
}

/// One fragment served by this node, for the gauge.
struct ServingGauge;

impl ServingGauge {
    fn new() -> Self {
        metrics::gauge!("switchboard_fragments_serving").increment(1.0);
        SERVING.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self
    }
}

impl Drop for ServingGauge {
    fn drop(&mut self) {
        metrics::gauge!("switchboard_fragments_serving").decrement(1.0);
        SERVING.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl FragmentState {
    /// The peers heard lately (see `ClusterHandle::heard_lately`).
    fn lately(&self) -> BTreeSet<String> {
        match &self.link {
            Some(link) => link
                .view()
                .up
                .into_iter()
                .filter(|peer| link.heard_lately(peer))
                .collect(),
            None => BTreeSet::new(),
        }
    }

    /// Keeps the serving gauge true to the core.
    fn count_serving(&mut self) {
        match (self.replica.serves(), self.serving.is_some()) {
            (true, false) => self.serving = Some(ServingGauge::new()),
            (false, true) => self.serving = None,
            _ => {}
        }
    }

    /// Sends one fragment message to `node`; a failure only logs (the peer
    /// is down or unreachable: membership will say so and the core
    /// recovers).
    fn send(&self, node: &str, wire: FragmentWire) {
        if let Some(link) = &self.link {
            send_over(link, self.id, node, wire);
        }
    }
}

fn send_over(link: &ClusterHandle, fragment: FragmentId, node: &str, wire: FragmentWire) {
    let bytes = match remote::encode(fragment, wire) {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::error!(fragment, error = %e, "cannot encode a fragment message");
            return;
        }
    };
    if let Err(e) = link.send(node, Body::Data(bytes)) {
        tracing::debug!(fragment, peer = node, error = %e, "fragment message not sent");
    }
}

impl Actor for FragmentActor {
    type Msg = FragmentMsg;
    type State = FragmentState;
    type Arguments = FragmentArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: FragmentArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let reads = RedbMailbox::new(args.store.clone(), args.id);
        let setup = match &args.cluster {
            Some(c) => Some(ClusterSetup {
                this: c.handle.this().to_owned(),
                islands: c.islands.clone(),
                policy: c.policy,
                nodes: c.nodes,
                relink_ms: c.handle.relink_time().as_millis() as u64,
                owner: load_owner(&args.store, args.id)?,
                up: c.handle.view().up,
            }),
            None => None,
        };
        let replica = ReplicaCore::new(
            args.id,
            args.placement,
            args.config,
            setup,
            now_ms(),
            &reads,
        )?;
        let mut state = FragmentState {
            id: args.id,
            replica,
            serving: None,
            reads,
            store: args.store,
            directory: FragmentDirectory::new(args.placement),
            on_start: args.on_start,
            sweeper: None,
            checker: None,
            link: args.cluster.map(|c| c.handle),
        };
        state.count_serving();
        Ok(state)
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.sweeper = Some(myself.send_interval(Duration::from_secs(60), || FragmentMsg::Sweep));
        // Every second: partner timeouts and take-overs in a cluster, and
        // on every node the groups' fan-out retries.
        state.checker =
            Some(myself.send_interval(Duration::from_secs(1), || FragmentMsg::CheckPartner));
        step(&myself, state, Event::Start).await?;
        if let Some(on_start) = &state.on_start {
            on_start(state.id);
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(sweeper) = state.sweeper.take() {
            sweeper.abort();
        }
        if let Some(checker) = state.checker.take() {
            checker.abort();
        }
        // Writes already handed to the writer complete on their own; wait for
        // them so a clean shutdown leaves nothing half-acknowledged.
        if let Err(e) = state.store.flush().await {
            tracing::warn!(fragment = state.id, error = %e, "flush at stop failed");
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let event = match message {
            FragmentMsg::Append { message, reply } => Event::Local(LocalRequest::Append {
                message,
                reply: LocalReply::Stored(reply),
            }),
            FragmentMsg::Attach {
                user,
                endpoint,
                reply,
            } => Event::Local(LocalRequest::Attach {
                user,
                endpoint,
                reply: LocalReply::Attach(reply),
            }),
            FragmentMsg::Detach { user, session_id } => {
                Event::Local(LocalRequest::Detach { user, session_id })
            }
            FragmentMsg::Ack { user, ids } => Event::Local(LocalRequest::Ack { user, ids }),
            FragmentMsg::StoreReceipt { request, reply } => {
                Event::Local(LocalRequest::StoreReceipt {
                    request,
                    reply: reply.map(LocalReply::Stored),
                })
            }
            FragmentMsg::ReadAccount { user, reply } => Event::Local(LocalRequest::ReadAccount {
                user,
                reply: LocalReply::Account(reply),
            }),
            FragmentMsg::WriteAccount { user, write, reply } => {
                Event::Local(LocalRequest::WriteAccount {
                    user,
                    write,
                    reply: LocalReply::Account(reply),
                })
            }
            FragmentMsg::DeleteAcked { owner, ids } => {
                Event::Local(LocalRequest::DeleteAcked { owner, ids })
            }
            FragmentMsg::Group { request, reply } => Event::Local(LocalRequest::Group {
                request,
                reply: LocalReply::Group(reply),
            }),
            FragmentMsg::GroupNote(note) => Event::Local(LocalRequest::Note(note)),
            FragmentMsg::Committed {
                generation,
                tag,
                outcome,
            } => Event::Committed {
                generation,
                tag,
                outcome,
            },
            FragmentMsg::Sweep => Event::Sweep,
            FragmentMsg::CheckPartner => Event::Tick {
                lately: state.lately(),
            },
            FragmentMsg::Stats(reply) => {
                let counts = state.replica.counts();
                let _ = reply.send(FragmentStats {
                    fragment: state.id,
                    online: counts.online,
                    pending_commits: counts.pending_commits,
                    cached_entries: counts.cached_entries,
                    serves: state.replica.serves(),
                    owner: state.replica.owner().cloned(),
                    waiting_for_owner: state.replica.waiting_for_owner(),
                    unanswered: state.replica.unanswered(),
                });
                return Ok(());
            }
            FragmentMsg::Mailbox { user, reply } => {
                let _ = reply.send(state.replica.mailbox_of(&user));
                return Ok(());
            }
            FragmentMsg::FromPeer { from, wire } => Event::Peer { from, wire },
            FragmentMsg::PeerUp(peer) => Event::PeerUp {
                peer,
                lately: state.lately(),
            },
            FragmentMsg::PeerDown(peer) => Event::PeerDown {
                peer,
                lately: state.lately(),
            },
        };
        step(&myself, state, event).await
    }
}

/// Steps the core with one event and carries out its actions. Actions
/// that report back (a copy, a merge, a receipt that could not be handed
/// over) step the core again at once, their actions first.
async fn step(
    myself: &ActorRef<FragmentMsg>,
    state: &mut FragmentState,
    event: ShellEvent,
) -> Result<(), ActorProcessingErr> {
    let actions = state.replica.step(now_ms(), event, &state.reads)?;
    let mut queue = VecDeque::from(actions);
    while let Some(action) = queue.pop_front() {
        if let Some(event) = perform(myself, state, action).await? {
            let more = state.replica.step(now_ms(), event, &state.reads)?;
            for action in more.into_iter().rev() {
                queue.push_front(action);
            }
        }
    }
    state.count_serving();
    Ok(())
}

/// Carries out one action; some report back with an event.
async fn perform(
    myself: &ActorRef<FragmentMsg>,
    state: &mut FragmentState,
    action: ShellAction,
) -> Result<Option<ShellEvent>, ActorProcessingErr> {
    let id = state.id;
    match action {
        Action::Answer { to, answer } => to.answer(id, answer),
        Action::Deliver { endpoint, push } => {
            if tracing::enabled!(tracing::Level::DEBUG)
                && let Push::Entries(entries) = &push
            {
                let ids: Vec<_> = entries.iter().map(|e| e.id).collect();
                tracing::debug!(fragment = id, ?ids, session = endpoint.session_id, "push");
            }
            if endpoint.target.send_message(push).is_err() {
                tracing::debug!(
                    fragment = id,
                    session = endpoint.session_id,
                    "push to a stopped endpoint; it will detach"
                );
            }
        }
        Action::Send { to, wire } => {
            if tracing::enabled!(tracing::Level::DEBUG)
                && let FragmentWire::Push {
                    entries,
                    session_id,
                    ..
                } = &wire
            {
                let ids: Vec<_> = entries.iter().map(|e| e.id).collect();
                tracing::debug!(fragment = id, ?ids, node = %to, session_id, "push");
            }
            state.send(&to, wire);
        }
        Action::Persist {
            generation,
            tag,
            ops,
            divergent,
        } => {
            trace_writes(id, tag, divergent, &ops);
            let me = myself.clone();
            let writes = FragmentWrites {
                fragment: id,
                ops,
                divergent,
            };
            state
                .store
                .submit_journaled::<MailboxWrites>(writes, move |result| {
                    if result.is_err() {
                        metrics::counter!("switchboard_storage_failures_total").increment(1);
                    }
                    let outcome = result.map_err(|e| e.to_string());
                    // The actor may have stopped; its writes are durable
                    // anyway and are served again after restart.
                    let _ = me.send_message(FragmentMsg::Committed {
                        generation,
                        tag,
                        outcome,
                    });
                });
        }
        Action::ApplyReplica { from, rseq, ops } => {
            let reply = replica_reply(state, from);
            let writes = FragmentWrites {
                fragment: id,
                ops,
                divergent: false,
            };
            state
                .store
                .submit_journaled::<MailboxWrites>(writes, move |result| {
                    reply(rseq, result.is_ok())
                });
        }
        Action::ImportChunk {
            from,
            rseq,
            first,
            last,
            chunk,
        } => {
            let reply = replica_reply(state, from);
            state.store.submit(
                move |txn| import_chunk(txn, id, first, last, &chunk),
                move |result| {
                    // A failed chunk fails the copy at once; the last one
                    // completes it.
                    if last || result.is_err() {
                        reply(rseq, result.is_ok());
                    }
                },
            );
        }
        Action::SaveOwner(owner) => save_owner(&state.store, id, owner).await?,
        Action::LogDivergent(ops) => state
            .store
            .write(move |txn| log_divergent(txn, id, &ops))
            .await
            .map_err(crate::store::storage)?,
        Action::ClearDivergent { upto } => {
            state
                .store
                .submit(move |txn| clear_divergent(txn, id, upto), |_| {});
        }
        Action::TakeSnapshot => return Ok(Some(take_snapshot(state).await)),
        Action::Flush => {
            state.store.flush().await?;
            return Ok(Some(Event::Flushed));
        }
        Action::ApplyMerge {
            from,
            upto,
            ops,
            touched,
            accounts,
            last,
        } => {
            state
                .store
                .write(move |txn| apply_ops(txn, id, &ops))
                .await?;
            return Ok(Some(Event::Merged {
                from,
                upto,
                touched,
                accounts,
                last,
            }));
        }
        Action::ReceiptElsewhere {
            fragment,
            request,
            waiter,
        } => return Ok(receipt_elsewhere(state, fragment, request, waiter)),
        Action::GroupElsewhere { fragment, note } => {
            // A fragment restarting now misses it; the home sends again.
            if let Ok(f) = state.directory.get(fragment) {
                let _ = f.send_message(FragmentMsg::GroupNote(note));
            }
        }
        Action::DeleteAckedElsewhere {
            fragment,
            owner,
            ids,
        } => {
            if let Ok(f) = state.directory.get(fragment) {
                let _ = f.send_message(FragmentMsg::DeleteAcked { owner, ids });
            }
        }
    }
    Ok(None)
}

/// Reads a consistent copy of the fragment once every write handed over
/// so far is durable.
async fn take_snapshot(state: &FragmentState) -> ShellEvent {
    let id = state.id;
    if let Err(e) = state.store.flush().await {
        tracing::warn!(fragment = id, error = %e, "flush before copy failed");
        return Event::SnapshotFailed;
    }
    let divergent_upto = match load_divergent(&state.store, id) {
        Ok((upto, _)) => upto,
        Err(e) => {
            tracing::warn!(fragment = id, error = %e, "cannot read the divergent log");
            return Event::SnapshotFailed;
        }
    };
    match export_fragment(&state.store, id) {
        Ok(chunks) => Event::Snapshot {
            chunks,
            divergent_upto,
        },
        Err(e) => {
            tracing::warn!(fragment = id, error = %e, "cannot read the fragment to copy");
            Event::SnapshotFailed
        }
    }
}

/// Hands a receipt to the fragment of this node that stores it (it
/// forwards it if it does not own it).
fn receipt_elsewhere(
    state: &FragmentState,
    fragment: FragmentId,
    request: ReceiptRequest,
    waiter: Option<Waiter<LocalReply>>,
) -> Option<ShellEvent> {
    let ids = request.msg_ids.clone();
    let from_an_ack = request.then_delete.is_some();
    let reply = match waiter {
        None => None,
        Some(Waiter::Local(LocalReply::Stored(port))) => Some(port),
        // Receipts never wait as other requests.
        Some(Waiter::Local(_)) => None,
        Some(Waiter::Remote { node, req }) => reply_to_remote(state, node, req),
    };
    let sent = match state.directory.get(fragment) {
        Ok(f) => f
            .send_message(FragmentMsg::StoreReceipt { request, reply })
            .map_err(|e| match e {
                ractor::MessagingErr::SendErr(FragmentMsg::StoreReceipt {
                    reply: Some(reply),
                    ..
                }) => Some(reply),
                _ => None,
            }),
        Err(_) => Err(reply),
    };
    let Err(reply) = sent else {
        return None;
    };
    tracing::warn!(
        fragment = state.id,
        to = fragment,
        "receipt not stored: its fragment is not reachable"
    );
    if let Some(reply) = reply {
        let _ = reply.send(Err(FragmentError::Unavailable(fragment)));
    }
    // An ack's entries stay for redelivery (and a new ack).
    from_an_ack.then_some(Event::ReceiptNotStored { ids })
}

/// A reply port whose answer goes back to request `req` of `node`: for a
/// request from another node that this fragment passes on to a third
/// fragment (a read receipt on its way to the sender's fragment). `None`
/// on a node without a cluster. A port dropped unanswered answers
/// `Unavailable`, so the waiter is never left to its timeout.
fn reply_to_remote(
    state: &FragmentState,
    node: String,
    req: u64,
) -> Option<RpcReplyPort<Result<Stored, FragmentError>>> {
    let link = state.link.clone()?;
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

/// Answers the owner from the writer thread once its writes are durable
/// here.
fn replica_reply(state: &FragmentState, to: String) -> impl FnOnce(u64, bool) + Send + 'static {
    let link = state.link.clone();
    let fragment = state.id;
    move |rseq, ok| {
        if let Some(link) = link {
            send_over(&link, fragment, &to, FragmentWire::Replicated { rseq, ok });
        }
    }
}

/// Hands a cluster `Data` body to the fragment actor it concerns.
pub fn dispatch(from: &str, bytes: Vec<u8>) {
    match remote::decode(&bytes) {
        Ok(envelope) => {
            let name = fragment_name(envelope.fragment);
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
            // A node of a later release sends variants this one cannot
            // read (e.g. `Committed`, every few writes): one line per
            // interval, the counter carries the rest.
            metrics::counter!("switchboard_cluster_undecodable_total").increment(1);
            if let Some(suppressed) = UNDECODABLE_LOGS.allow("undecodable") {
                tracing::warn!(peer = from, error = %e, suppressed,
                    "undecodable fragment message dropped (logged at most once per interval)");
            }
        }
    }
}

static UNDECODABLE_LOGS: log_limit::LogLimiter = log_limit::LogLimiter::new();

/// Whether new messages must be refused now (a broken store or a nearly
/// full disk): checked before a message is taken, so that the sender gets a
/// clear answer instead of a failed write. Counted by cause.
pub(crate) fn refusal(store: &storage::Store) -> Option<FragmentError> {
    let refusal = store.refusal()?;
    metrics::counter!("switchboard_sends_refused_total", "reason" => refusal.as_str()).increment(1);
    Some(FragmentError::Refused(match refusal {
        storage::Refusal::LowDisk => {
            "the node storing this mailbox is low on disk space; retry later".to_owned()
        }
        storage::Refusal::Broken => {
            "the node storing this mailbox has a storage failure and is handing it over; retry"
                .to_owned()
        }
    }))
}

/// One fragment's writes for the group commit. Also the journal's stored
/// form of them (postcard): fields are only ever appended.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct FragmentWrites {
    pub(crate) fragment: FragmentId,
    pub(crate) ops: Vec<WriteOp>,
    /// Committed without the partner's copy: also remembered in the
    /// divergent log, for the partner's catch-up or a later merge.
    pub(crate) divergent: bool,
}

/// The writes of every fragment of the node: the writer applies a run of
/// them with the mailbox tables opened once (see [`ApplyGroup`]), and makes
/// them durable through the storage journal when the node has one.
pub(crate) enum MailboxWrites {}

/// How a restart replays the mailbox writes a journal holds (for the
/// node's [`storage::JournalOptions`]).
pub fn journal_replayer() -> storage::Replayer {
    storage::Replayer::of::<MailboxWrites>()
}

impl Journaled for MailboxWrites {
    const TAG: u8 = 1;

    fn encode(item: &FragmentWrites, out: &mut Vec<u8>) -> storage::Result<()> {
        *out = postcard::to_extend(item, std::mem::take(out))
            .map_err(|e| storage::StorageError::Corrupt(format!("encoding mailbox writes: {e}")))?;
        Ok(())
    }

    fn decode(bytes: &[u8]) -> storage::Result<FragmentWrites> {
        postcard::from_bytes(bytes)
            .map_err(|e| storage::StorageError::Corrupt(format!("decoding mailbox writes: {e}")))
    }
}

impl ApplyGroup for MailboxWrites {
    type Item = FragmentWrites;

    fn apply_group(
        txn: &storage::redb::WriteTransaction,
        items: Vec<FragmentWrites>,
    ) -> storage::Result<()> {
        apply_mailbox_writes(MailboxTables::open(txn)?, txn, &items)
    }

    fn apply_group_journaled(
        txn: &storage::redb::WriteTransaction,
        items: Vec<FragmentWrites>,
        stages: &storage::Stages,
    ) -> storage::Result<()> {
        let tables = MailboxTables::open_staged(txn, stages.get::<MailboxStage>())?;
        apply_mailbox_writes(tables, txn, &items)
    }
}

fn apply_mailbox_writes(
    mut tables: MailboxTables<'_>,
    txn: &storage::redb::WriteTransaction,
    items: &[FragmentWrites],
) -> storage::Result<()> {
    for writes in items {
        tables.apply(writes.fragment, &writes.ops)?;
    }
    tables.finish()?;
    log_divergent_all(
        txn,
        items
            .iter()
            .filter(|w| w.divergent)
            .map(|w| (w.fragment, w.ops.as_slice())),
    )
}

/// Debug log of each stored message and deletion, to follow one message
/// through a cluster's logs (`RUST_LOG=offline_queue=debug`).
fn trace_writes(fragment: FragmentId, tag: u64, divergent: bool, ops: &[WriteOp]) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    for op in ops {
        match op {
            WriteOp::PutMessage {
                recipient,
                sender,
                client_msg_id,
                id,
                ..
            } => tracing::debug!(fragment, tag, divergent, id, %recipient, %sender,
                client_msg_id, "store message"),
            WriteOp::Delete { owner, ids } => {
                tracing::debug!(fragment, tag, divergent, ?ids, %owner, "delete")
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use storage::Store;

    use super::{FragmentWrites, MailboxWrites};
    use crate::replica::load_divergent;
    use crate::store::{MailboxRead, RedbMailbox, WriteOp};

    use test_support::numbered as phone;

    fn message(client_msg_id: u64, id: u64) -> WriteOp {
        WriteOp::PutMessage {
            recipient: phone(1),
            sender: phone(2),
            client_msg_id,
            id,
            server_ts: 5,
            body: crate::EntryBody::Message {
                from: phone(2),
                client_msg_id,
                server_ts: 5,
                payload: vec![1, 2, 3],
            }
            .to_bytes(),
        }
    }

    #[tokio::test]
    async fn one_run_stores_every_fragments_writes_their_marks_and_divergent_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("db.redb"), Default::default()).expect("open");
        // Hold the writer so that the three changes are taken as one run.
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
        store.submit(
            move |_| {
                let _ = started_tx.send(());
                let _ = gate_rx.recv();
                Ok(())
            },
            |_| {},
        );
        started_rx.recv().expect("the writer holds");
        let writes = [
            (3, vec![message(1, 40), WriteOp::NextSeq(41)], false),
            (4, vec![message(1, 7)], true),
            (3, vec![message(2, 41), WriteOp::NextSeq(42)], false),
        ];
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (fragment, ops, divergent) in writes {
            let tx = tx.clone();
            let item = FragmentWrites {
                fragment,
                ops,
                divergent,
            };
            store.submit_journaled::<MailboxWrites>(item, move |result| {
                let _ = tx.send((fragment, result.is_ok()));
            });
        }
        let _ = gate_tx.send(());
        let mut completed = Vec::new();
        for _ in 0..3 {
            completed.push(rx.recv().await.expect("completion"));
        }
        assert_eq!(completed, [(3, true), (4, true), (3, true)]);
        let three = RedbMailbox::new(store.clone(), 3);
        let four = RedbMailbox::new(store.clone(), 4);
        assert_eq!(three.next_seq().expect("mark"), 42);
        assert_eq!(four.next_seq().expect("mark"), 8);
        let ids = |m: &RedbMailbox| -> Vec<u64> {
            m.page(&phone(1), None, 10)
                .expect("page")
                .iter()
                .map(|e| e.id)
                .collect()
        };
        assert_eq!(ids(&three), [40, 41]);
        assert_eq!(ids(&four), [7]);
        assert_eq!(
            three.dedupe(&phone(1), &phone(2), 2).expect("dedupe"),
            Some((41, 5))
        );
        // Only the divergent item went to the divergent log.
        assert_eq!(load_divergent(&store, 4).expect("log").1, [message(1, 7)]);
        assert!(load_divergent(&store, 3).expect("log").1.is_empty());
    }
}
