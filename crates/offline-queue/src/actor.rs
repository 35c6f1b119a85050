//! The fragment actor: a [`FragmentCore`] behind a ractor mailbox.
//!
//! The shell reads the clock, sends the core's writes to the group-commit
//! writer (whose completion comes back as [`FragmentMsg::Committed`]) and
//! performs its other actions: pushes to endpoints, replies, and receipts for
//! other fragments, which it finds by registered name so that a restarted
//! fragment is found again.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::{MessageId, PhoneNumber, TimestampMs};
use ractor::{Actor, ActorProcessingErr, ActorRef, DerivedActorRef, RpcReplyPort};
use router::{FragmentId, Placement};
use storage::Store;

use crate::fragment::{Action, FragmentConfig, FragmentCore, ReceiptRequest, Stored};
use crate::store::{RedbMailbox, apply_ops};
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
}

impl ractor::Message for Push {}

/// Where an online user's entries go.
#[derive(Clone)]
pub struct Endpoint {
    /// Distinguishes this connection from earlier ones of the same user.
    pub session_id: u64,
    /// The actor that takes the pushes.
    pub target: DerivedActorRef<Push>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("session_id", &self.session_id)
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
    /// Store a message for `to`; replied to once durable (one tick).
    Append {
        /// The recipient, a user of this fragment.
        to: PhoneNumber,
        /// The authenticated sender.
        from: PhoneNumber,
        /// The sender's dedupe id.
        client_msg_id: u64,
        /// Opaque bytes.
        payload: Vec<u8>,
        /// Gets the server ack.
        reply: RpcReplyPort<Result<Stored, FragmentError>>,
    },
    /// `user` is online at `endpoint`: push its mailbox there.
    Attach {
        /// The user.
        user: PhoneNumber,
        /// Where to push.
        endpoint: Endpoint,
        /// Answered once the first pushes are sent.
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
    /// Receipts for these acked entries are durable: delete them.
    DeleteAcked {
        /// The owner of the entries.
        owner: PhoneNumber,
        /// Their ids.
        ids: Vec<MessageId>,
    },
    /// Internal: the group commit of `tag` finished.
    Committed {
        /// The core's tag.
        tag: u64,
        /// Ok, or the storage error text.
        outcome: Result<(), String>,
    },
    /// Internal: forget expired dedupe keys.
    Sweep,
    /// Report gauges.
    Stats(RpcReplyPort<FragmentStats>),
}

impl ractor::Message for FragmentMsg {}

/// Called with the fragment id each time a fragment actor starts, so that
/// sessions of its users attach again after a restart.
pub type OnFragmentStart = Arc<dyn Fn(FragmentId) + Send + Sync>;

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

/// A [`FragmentActor`]'s state.
pub struct FragmentState {
    id: FragmentId,
    core: FragmentCore<Endpoint, RpcReplyPort<Result<Stored, FragmentError>>>,
    reads: RedbMailbox,
    store: Store,
    directory: FragmentDirectory,
    on_start: Option<OnFragmentStart>,
    sweeper: Option<tokio::task::JoinHandle<()>>,
}

fn now_ms() -> TimestampMs {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
        let next_seq = reads.next_seq()?;
        Ok(FragmentState {
            id: args.id,
            core: FragmentCore::new(args.id, args.placement, args.config, next_seq),
            reads,
            store: args.store,
            directory: FragmentDirectory::new(args.placement),
            on_start: args.on_start,
            sweeper: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.sweeper = Some(myself.send_interval(Duration::from_secs(60), || FragmentMsg::Sweep));
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
        let actions = match message {
            FragmentMsg::Append {
                to,
                from,
                client_msg_id,
                payload,
                reply,
            } => state.core.append(
                &state.reads,
                to,
                from,
                client_msg_id,
                payload,
                now_ms(),
                reply,
            ),
            FragmentMsg::Attach {
                user,
                endpoint,
                reply,
            } => {
                let session_id = endpoint.session_id;
                match state.core.attach(&state.reads, user, session_id, endpoint) {
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
                state.core.detach(&user, session_id);
                Vec::new()
            }
            FragmentMsg::Ack { user, ids } => {
                metrics::counter!("switchboard_entries_acked_total").increment(ids.len() as u64);
                state.core.ack(&state.reads, &user, &ids, now_ms())
            }
            FragmentMsg::StoreReceipt { request, reply } => {
                state.core.store_receipt(request, reply)
            }
            FragmentMsg::DeleteAcked { owner, ids } => state.core.delete_acked(owner, ids),
            FragmentMsg::Committed { tag, outcome } => {
                state.core.committed(&state.reads, tag, outcome)
            }
            FragmentMsg::Sweep => state.core.sweep(now_ms()),
            FragmentMsg::Stats(reply) => {
                let counts = state.core.counts();
                let _ = reply.send(FragmentStats {
                    fragment: state.id,
                    online: counts.online,
                    pending_commits: counts.pending_commits,
                    cached_entries: counts.cached_entries,
                });
                Vec::new()
            }
        };
        perform(&myself, state, actions);
        Ok(())
    }
}

fn perform(
    myself: &ActorRef<FragmentMsg>,
    state: &mut FragmentState,
    actions: Vec<Action<Endpoint, RpcReplyPort<Result<Stored, FragmentError>>>>,
) {
    let mut local = std::collections::VecDeque::from(actions);
    while let Some(action) = local.pop_front() {
        match action {
            Action::Persist { tag, ops } => {
                let fragment = state.id;
                let me = myself.clone();
                state.store.submit(
                    move |txn| apply_ops(txn, fragment, &ops),
                    move |result| {
                        if result.is_err() {
                            metrics::counter!("switchboard_storage_failures_total").increment(1);
                        }
                        let outcome = result.map_err(|e| e.to_string());
                        // The actor may have stopped; its writes are durable
                        // anyway and are served again after restart.
                        let _ = me.send_message(FragmentMsg::Committed { tag, outcome });
                    },
                );
            }
            Action::Push { endpoint, entries } => {
                metrics::counter!("switchboard_entries_pushed_total")
                    .increment(entries.len() as u64);
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
            Action::Replaced { endpoint } => {
                let _ = endpoint.target.send_message(Push::Replaced);
            }
            Action::Reply { to, result } => {
                if result.is_ok() {
                    metrics::counter!("switchboard_durable_acks_total").increment(1);
                }
                let _ = to.send(result);
            }
            Action::StoreReceipt { fragment, request } => {
                if fragment == state.id {
                    local.extend(state.core.store_receipt(request, None));
                } else {
                    let ids = request.msg_ids.clone();
                    let sent = state.directory.get(fragment).and_then(|f| {
                        f.send_message(FragmentMsg::StoreReceipt {
                            request,
                            reply: None,
                        })
                        .map_err(|_| FragmentError::Unavailable(fragment))
                    });
                    if let Err(e) = sent {
                        tracing::warn!(fragment = state.id, error = %e,
                            "receipt not stored; entries stay for redelivery");
                        state.core.forget_acked(&ids);
                    }
                }
            }
            Action::DeleteAcked {
                fragment,
                owner,
                ids,
            } => {
                if fragment == state.id {
                    local.extend(state.core.delete_acked(owner, ids));
                } else if let Ok(f) = state.directory.get(fragment) {
                    let _ = f.send_message(FragmentMsg::DeleteAcked { owner, ids });
                }
            }
        }
    }
}
