//! The fragment actor: a [`FragmentCore`] behind a ractor mailbox.
//!
//! The shell reads the clock, sends the core's writes to the group-commit
//! writer (whose completion comes back as [`FragmentMsg::Committed`]) and
//! performs its other actions: pushes to endpoints, replies, and receipts for
//! other fragments, which it finds by registered name so that a restarted
//! fragment is found again.
//!
//! On a clustered node every fragment has an actor under the same name, but
//! only the fragment's owner runs a core; the others forward requests to the
//! owner and pushes back to their sessions, and the owner's island partner
//! also applies the owner's writes to its own copy (`clustered.rs`).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cluster::{AckPolicy, ClusterHandle};
use proto::{MessageId, PhoneNumber, TimestampMs};
use ractor::{Actor, ActorProcessingErr, ActorRef, DerivedActorRef, RpcReplyPort};
use router::{FragmentId, Islands, Placement, Role};
use storage::{ApplyGroup, Store};

use crate::account::{AccountReply, AccountWrite};
use crate::clustered::{self, Clustered, Copied};
use crate::fragment::{Action, FragmentConfig, FragmentCore, NewMessage, ReceiptRequest, Stored};
use crate::remote::FragmentWire;
use crate::replica::{log_divergent_all, takeover_seq};
use crate::store::{MailboxRead, MailboxTables, RedbMailbox, WriteOp};
use crate::{Entry, FragmentError};

/// The registered name of fragment `id`'s actor.
pub fn fragment_name(id: FragmentId) -> String {
    format!("fragment-{id}")
}

/// What a fragment pushes to an attached endpoint (a session or a bot).
#[derive(Debug)]
pub enum Push {
    /// Mailbox entries, in order; acknowledge each with [`FragmentMsg::Ack`].
    Entries(Vec<Entry>),
    /// The user attached elsewhere; this endpoint gets nothing more.
    Replaced,
    /// The token this endpoint logged in with was revoked; it gets nothing
    /// more.
    Revoked,
}

impl ractor::Message for Push {}

/// Where an online user's entries go.
#[derive(Clone)]
pub struct Endpoint {
    /// Distinguishes this connection from earlier ones of the same user.
    pub session_id: u64,
    /// The generation of the token the session logged in with: refused
    /// below the account's, and closed once the account's rises past it.
    /// `None` for endpoints without a token (bots).
    pub token_generation: Option<u64>,
    /// The actor that takes the pushes.
    pub target: DerivedActorRef<Push>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("session_id", &self.session_id)
            .field("token_generation", &self.token_generation)
            .finish_non_exhaustive()
    }
}

/// Gauges of one fragment, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FragmentStats {
    /// The fragment.
    pub fragment: FragmentId,
    /// Users attached now.
    pub online: usize,
    /// Writes waiting for their commit.
    pub pending_commits: usize,
    /// Entries cached in memory for online users.
    pub cached_entries: usize,
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
    /// Internal (clustered): look for writes the partner left unconfirmed.
    CheckPartner,
    /// Report gauges.
    Stats(RpcReplyPort<FragmentStats>),
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

impl FragmentMsg {
    /// Requests that a fragment handing itself to another node holds back
    /// until the hand-over, instead of serving them.
    fn is_request(&self) -> bool {
        match self {
            FragmentMsg::Append { .. }
            | FragmentMsg::Attach { .. }
            | FragmentMsg::Detach { .. }
            | FragmentMsg::Ack { .. }
            | FragmentMsg::StoreReceipt { .. }
            | FragmentMsg::ReadAccount { .. }
            | FragmentMsg::WriteAccount { .. }
            | FragmentMsg::DeleteAcked { .. } => true,
            FragmentMsg::FromPeer { wire, .. } => wire.is_request(),
            _ => false,
        }
    }
}

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
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.for_user(user) {
                Ok(fragment) => return Ok(fragment),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }
}

/// The fragment actor. See the module docs.
#[derive(Debug, Default)]
pub struct FragmentActor;

/// Where the core pushes: a session of this node, or one on another node.
#[derive(Clone)]
pub(crate) enum Attached {
    Local(Endpoint),
    Remote {
        node: String,
        user: PhoneNumber,
        session_id: u64,
    },
}

/// Who waits for a durable write.
pub(crate) enum Waiter {
    /// A caller on this node.
    Local(LocalReply),
    /// Request `req` of another node.
    Remote { node: String, req: u64 },
}

/// The reply port of a caller on this node, by the kind of answer it takes.
pub(crate) enum LocalReply {
    /// A send or a receipt.
    Stored(RpcReplyPort<Result<Stored, FragmentError>>),
    /// An account read or write.
    Account(RpcReplyPort<Result<AccountReply, FragmentError>>),
}

impl LocalReply {
    /// Whether the caller stopped waiting.
    pub(crate) fn is_closed(&self) -> bool {
        match self {
            LocalReply::Stored(port) => port.is_closed(),
            LocalReply::Account(port) => port.is_closed(),
        }
    }

    /// Answers `Unavailable`: the caller retries.
    pub(crate) fn unavailable(self, id: FragmentId) {
        let e = FragmentError::Unavailable(id);
        match self {
            LocalReply::Stored(port) => {
                let _ = port.send(Err(e));
            }
            LocalReply::Account(port) => {
                let _ = port.send(Err(e));
            }
        }
    }

    /// Answers a send or receipt (a caller of another kind, which no path
    /// makes, is told `Unavailable`).
    pub(crate) fn stored(self, id: FragmentId, result: Result<Stored, FragmentError>) {
        match self {
            LocalReply::Stored(port) => {
                let _ = port.send(result);
            }
            other => other.unavailable(id),
        }
    }

    /// Answers an account request (likewise).
    pub(crate) fn account(self, id: FragmentId, result: Result<AccountReply, FragmentError>) {
        match self {
            LocalReply::Account(port) => {
                let _ = port.send(result);
            }
            other => other.unavailable(id),
        }
    }
}

pub(crate) type Core = FragmentCore<Attached, Waiter>;
pub(crate) type CoreAction = Action<Attached, Waiter>;

/// A [`FragmentActor`]'s state.
pub struct FragmentState {
    pub(crate) id: FragmentId,
    placement: Placement,
    config: FragmentConfig,
    /// Present while this node serves the fragment.
    pub(crate) core: Option<Core>,
    /// Counts this fragment in `switchboard_fragments_serving` while `core`
    /// is present (and uncounts it however the actor ends).
    serving: Option<ServingGauge>,
    /// Bumped with every new core (see [`FragmentMsg::Committed`]).
    generation: u64,
    pub(crate) reads: RedbMailbox,
    pub(crate) store: Store,
    directory: FragmentDirectory,
    on_start: Option<OnFragmentStart>,
    sweeper: Option<tokio::task::JoinHandle<()>>,
    checker: Option<tokio::task::JoinHandle<()>>,
    pub(crate) cluster: Option<Clustered>,
}

pub(crate) fn now_ms() -> TimestampMs {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

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
    /// Starts or stops serving.
    pub(crate) fn set_core(&mut self, core: Option<Core>) -> Option<Core> {
        self.serving = core.as_ref().map(|_| ServingGauge::new());
        self.generation += 1;
        std::mem::replace(&mut self.core, core)
    }

    /// A core for a fragment this node takes over: its ids start far above
    /// any the former owner may have given out without copying them here
    /// (see [`takeover_seq`]).
    pub(crate) fn new_core_after_takeover(&self) -> Result<Core, FragmentError> {
        let member = self
            .cluster
            .as_ref()
            .map_or(0, |c| c.island_member(self.id));
        let next_seq = takeover_seq(self.reads.next_seq()?, member);
        Ok(
            FragmentCore::new(self.id, self.placement, self.config.clone(), next_seq)
                .with_usage(self.reads.usage()?),
        )
    }

    /// A core continuing from the fragment's stored sequence.
    pub(crate) fn new_core(&self) -> Result<Core, FragmentError> {
        let next_seq = self.reads.next_seq()?;
        Ok(
            FragmentCore::new(self.id, self.placement, self.config.clone(), next_seq)
                .with_usage(self.reads.usage()?),
        )
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
        let cluster = match args.cluster {
            Some(c) => Some(Clustered::new(args.id, c, &args.store)?),
            None => None,
        };
        let mut state = FragmentState {
            id: args.id,
            placement: args.placement,
            config: args.config,
            core: None,
            serving: None,
            generation: 0,
            reads,
            store: args.store,
            directory: FragmentDirectory::new(args.placement),
            on_start: args.on_start,
            sweeper: None,
            checker: None,
            cluster,
        };
        let serves = state
            .cluster
            .as_ref()
            .is_none_or(|c| c.ownership.role() == Role::Primary);
        if serves {
            let core = state.new_core()?;
            state.set_core(Some(core));
        }
        Ok(state)
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.sweeper = Some(myself.send_interval(Duration::from_secs(60), || FragmentMsg::Sweep));
        if state.cluster.is_some() {
            state.checker =
                Some(myself.send_interval(Duration::from_secs(1), || FragmentMsg::CheckPartner));
        }
        clustered::started(state);
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
        if message.is_request()
            && let Some(cluster) = state.cluster.as_mut()
            && cluster.handing_back
        {
            cluster.deferred.push(message);
            return Ok(());
        }
        let actions = match message {
            FragmentMsg::Committed {
                generation,
                tag,
                outcome,
            } => {
                if generation == state.generation {
                    clustered::local_commit(state, tag, outcome)
                } else {
                    Vec::new()
                }
            }
            FragmentMsg::CheckPartner => clustered::check_partner(state).await?,
            FragmentMsg::Sweep => match state.core.as_mut() {
                Some(core) => {
                    let now = now_ms();
                    let mut actions = core.sweep(now);
                    actions.extend(core.expire(&state.reads, now));
                    actions
                }
                None => Vec::new(),
            },
            FragmentMsg::Stats(reply) => {
                let counts = state.core.as_ref().map(|c| c.counts()).unwrap_or_default();
                let _ = reply.send(FragmentStats {
                    fragment: state.id,
                    online: counts.online,
                    pending_commits: counts.pending_commits,
                    cached_entries: counts.cached_entries,
                });
                Vec::new()
            }
            FragmentMsg::PeerUp(peer) => clustered::peer_up(state, peer).await?,
            FragmentMsg::PeerDown(peer) => clustered::peer_down(state, peer).await?,
            other => route(state, other).await?,
        };
        perform(&myself, state, actions);
        for held in clustered::maybe_hand_back(&myself, state).await? {
            let actions = route(state, held).await?;
            perform(&myself, state, actions);
        }
        Ok(())
    }
}

/// A request or a message from a peer: served here if this node owns the
/// fragment, forwarded to the owner otherwise.
async fn route(
    state: &mut FragmentState,
    message: FragmentMsg,
) -> Result<Vec<CoreAction>, ActorProcessingErr> {
    match message {
        FragmentMsg::FromPeer { from, wire } => clustered::from_peer(state, from, wire).await,
        request if state.core.is_some() => Ok(serve(state, request)),
        request => {
            clustered::forward(state, request);
            Ok(Vec::new())
        }
    }
}

/// A request served by this node's core.
fn serve(state: &mut FragmentState, message: FragmentMsg) -> Vec<CoreAction> {
    let Some(core) = state.core.as_mut() else {
        return Vec::new();
    };
    let reads = &state.reads;
    match message {
        FragmentMsg::Append { message, reply } => append(
            core,
            reads,
            &state.store,
            message,
            Waiter::Local(LocalReply::Stored(reply)),
        ),
        FragmentMsg::Attach {
            user,
            endpoint,
            reply,
        } => {
            let (session_id, generation) = (endpoint.session_id, endpoint.token_generation);
            match core.attach(
                reads,
                user,
                session_id,
                generation,
                Attached::Local(endpoint),
            ) {
                Ok(actions) => {
                    let _ = reply.send(Ok(()));
                    actions
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                    Vec::new()
                }
            }
        }
        FragmentMsg::Detach { user, session_id } => {
            core.detach(&user, session_id);
            Vec::new()
        }
        FragmentMsg::Ack { user, ids } => {
            metrics::counter!("switchboard_entries_acked_total").increment(ids.len() as u64);
            core.ack(reads, &user, &ids, now_ms())
        }
        FragmentMsg::StoreReceipt { request, reply } => core.store_receipt(
            reads,
            request,
            reply.map(|r| Waiter::Local(LocalReply::Stored(r))),
        ),
        FragmentMsg::DeleteAcked { owner, ids } => core.delete_acked(owner, ids),
        FragmentMsg::ReadAccount { user, reply } => {
            let _ = reply.send(core.account(reads, &user).map(AccountReply::Current));
            Vec::new()
        }
        FragmentMsg::WriteAccount { user, write, reply } => core.write_account(
            reads,
            user,
            write,
            Waiter::Local(LocalReply::Account(reply)),
        ),
        _ => Vec::new(),
    }
}

/// A message for this node's core, from a session here, a peer, or held
/// across a change of owner; refused now (answered through the same
/// waiter) while the store cannot take it.
pub(crate) fn append(
    core: &mut Core,
    reads: &RedbMailbox,
    store: &Store,
    message: NewMessage,
    waiter: Waiter,
) -> Vec<CoreAction> {
    match refusal(store) {
        Some(refused) => vec![Action::Reply {
            to: waiter,
            result: Err(refused),
        }],
        None => core.append(reads, message, now_ms(), waiter),
    }
}

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

/// Carries out the core's actions.
pub(crate) fn perform(
    myself: &ActorRef<FragmentMsg>,
    state: &mut FragmentState,
    actions: Vec<CoreAction>,
) {
    let mut local = std::collections::VecDeque::from(actions);
    while let Some(action) = local.pop_front() {
        match action {
            Action::Persist { tag, ops } => {
                let divergent = clustered::replicate(state, tag, &ops) == Copied::Missing;
                trace_writes(state.id, tag, divergent, &ops);
                let generation = state.generation;
                let me = myself.clone();
                let writes = FragmentWrites {
                    fragment: state.id,
                    ops,
                    divergent,
                };
                state
                    .store
                    .submit_grouped::<MailboxWrites>(writes, move |result| {
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
            Action::Push { endpoint, entries } => {
                metrics::counter!("switchboard_entries_pushed_total")
                    .increment(entries.len() as u64);
                if tracing::enabled!(tracing::Level::DEBUG) {
                    let ids: Vec<_> = entries.iter().map(|e| e.id).collect();
                    let to = match &endpoint {
                        Attached::Local(e) => format!("local session {}", e.session_id),
                        Attached::Remote {
                            node, session_id, ..
                        } => format!("{node} session {session_id}"),
                    };
                    tracing::debug!(fragment = state.id, ?ids, %to, "push");
                }
                match endpoint {
                    Attached::Local(endpoint) => {
                        if endpoint
                            .target
                            .send_message(Push::Entries(entries))
                            .is_err()
                        {
                            tracing::debug!(
                                fragment = state.id,
                                session = endpoint.session_id,
                                "push to a stopped endpoint; it will detach"
                            );
                        }
                    }
                    Attached::Remote {
                        node,
                        user,
                        session_id,
                    } => clustered::send(
                        state,
                        &node,
                        FragmentWire::Push {
                            user,
                            session_id,
                            entries,
                        },
                    ),
                }
            }
            Action::Replaced { endpoint } => match endpoint {
                Attached::Local(endpoint) => {
                    let _ = endpoint.target.send_message(Push::Replaced);
                }
                Attached::Remote {
                    node,
                    user,
                    session_id,
                } => clustered::send(state, &node, FragmentWire::Replaced { user, session_id }),
            },
            Action::Revoked { endpoint } => match endpoint {
                Attached::Local(endpoint) => {
                    let _ = endpoint.target.send_message(Push::Revoked);
                }
                Attached::Remote {
                    node,
                    user,
                    session_id,
                } => clustered::send(state, &node, FragmentWire::Revoked { user, session_id }),
            },
            Action::AccountReply { to, result } => match to {
                Waiter::Local(reply) => reply.account(state.id, result),
                Waiter::Remote { node, req } => {
                    clustered::send(state, &node, FragmentWire::AccountDone { req, result });
                }
            },
            Action::Reply { to, result } => {
                if result.is_ok() {
                    metrics::counter!("switchboard_durable_acks_total").increment(1);
                }
                match to {
                    Waiter::Local(reply) => reply.stored(state.id, result),
                    Waiter::Remote { node, req } => {
                        clustered::send(state, &node, FragmentWire::AppendDone { req, result });
                    }
                }
            }
            Action::StoreReceipt {
                fragment,
                request,
                waiter,
            } => {
                if fragment == state.id {
                    if let Some(core) = state.core.as_mut() {
                        local.extend(core.store_receipt(&state.reads, request, waiter));
                    }
                } else {
                    let ids = request.msg_ids.clone();
                    let from_an_ack = request.then_delete.is_some();
                    let reply = match waiter {
                        None => None,
                        Some(Waiter::Local(LocalReply::Stored(port))) => Some(port),
                        // Receipts never wait as account requests.
                        Some(Waiter::Local(LocalReply::Account(_))) => None,
                        Some(Waiter::Remote { node, req }) => {
                            clustered::reply_to_remote(state, node, req)
                        }
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
                    if let Err(reply) = sent {
                        tracing::warn!(
                            fragment = state.id,
                            to = fragment,
                            "receipt not stored: its fragment is not reachable"
                        );
                        if let Some(reply) = reply {
                            let _ = reply.send(Err(FragmentError::Unavailable(fragment)));
                        }
                        // An ack's entries stay for redelivery (and a new ack).
                        if from_an_ack && let Some(core) = state.core.as_mut() {
                            core.forget_acked(&ids);
                        }
                    }
                }
            }
            Action::DeleteAcked {
                fragment,
                owner,
                ids,
            } => {
                if fragment == state.id {
                    if let Some(core) = state.core.as_mut() {
                        local.extend(core.delete_acked(owner, ids));
                    }
                } else if let Ok(f) = state.directory.get(fragment) {
                    let _ = f.send_message(FragmentMsg::DeleteAcked { owner, ids });
                }
            }
        }
    }
}

/// One fragment's writes for the group commit.
pub(crate) struct FragmentWrites {
    pub(crate) fragment: FragmentId,
    pub(crate) ops: Vec<WriteOp>,
    /// Committed without the partner's copy: also remembered in the
    /// divergent log, for the partner's catch-up or a later merge.
    pub(crate) divergent: bool,
}

/// The writes of every fragment of the node: the writer applies a run of
/// them with the mailbox tables opened once (see [`ApplyGroup`]).
pub(crate) enum MailboxWrites {}

impl ApplyGroup for MailboxWrites {
    type Item = FragmentWrites;

    fn apply_group(
        txn: &storage::redb::WriteTransaction,
        items: Vec<FragmentWrites>,
    ) -> storage::Result<()> {
        let mut tables = MailboxTables::open(txn)?;
        for writes in &items {
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
    use proto::PhoneNumber;
    use storage::Store;

    use super::{FragmentWrites, MailboxWrites};
    use crate::replica::load_divergent;
    use crate::store::{MailboxRead, RedbMailbox, WriteOp};

    fn phone(n: u32) -> PhoneNumber {
        PhoneNumber::parse(&format!("+1555{n:07}")).expect("phone")
    }

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
            store.submit_grouped::<MailboxWrites>(item, move |result| {
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
