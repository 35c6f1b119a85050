//! The presence actor.

use std::time::Duration;

use proto::PhoneNumber;
use ractor::{Actor, ActorProcessingErr, ActorRef, DerivedActorRef};

use std::collections::HashMap;

use crate::core::{PresenceConfig, PresenceCore, Update};
use crate::policy::Policy;
use crate::remote::{self, Change, PresenceWire};

/// A batch of presence and typing updates for one session.
#[derive(Debug)]
pub struct PresencePush(pub Vec<Update>);

impl ractor::Message for PresencePush {}

/// Messages to the presence actor.
pub enum PresenceMsg {
    /// A session of `user` is connected; `target` takes its updates.
    Online {
        /// The user.
        user: PhoneNumber,
        /// The session.
        session_id: u64,
        /// Where its updates go.
        target: DerivedActorRef<PresencePush>,
        /// Its presence settings, as stored on this node.
        policy: Policy,
    },
    /// `user` changed its presence settings (already stored).
    SetPolicy {
        /// The user.
        user: PhoneNumber,
        /// The new settings.
        policy: Policy,
    },
    /// Session `session_id` of `user` ended.
    Offline {
        /// The user.
        user: PhoneNumber,
        /// The session.
        session_id: u64,
    },
    /// `subscriber` watches `users` from now on.
    Subscribe {
        /// The watcher.
        subscriber: PhoneNumber,
        /// Whom it watches.
        users: Vec<PhoneNumber>,
    },
    /// Relay a typing indicator.
    Typing {
        /// Who types.
        from: PhoneNumber,
        /// To whom.
        to: PhoneNumber,
        /// Started or stopped.
        active: bool,
    },
    /// Internal: send the batched updates.
    Flush,
    /// Cluster: a batch from another node's presence actor.
    FromPeer {
        /// The sending node.
        from: String,
        /// The encoded batch (see `remote.rs`).
        bytes: Vec<u8>,
    },
    /// Cluster: a peer came up (it gets the list of users online here).
    PeerUp(String),
    /// Cluster: a peer went down (its users are offline now).
    PeerDown(String),
    /// What this node knows of `user`'s presence, whatever the user's
    /// settings (for the operator's `switchboard admin user`).
    StatusOf {
        /// The user.
        user: PhoneNumber,
        /// Gets the status.
        reply: ractor::RpcReplyPort<proto::PresenceStatus>,
    },
}

impl ractor::Message for PresenceMsg {}

/// Start-up arguments.
#[derive(Clone, Default)]
pub struct PresenceArgs {
    /// Limits.
    pub config: PresenceConfig,
    /// How often batched updates are sent.
    pub flush_every: Duration,
    /// Set on a clustered node: presence then spans every node.
    pub cluster: Option<cluster::ClusterHandle>,
}

impl std::fmt::Debug for PresenceArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceArgs")
            .field("config", &self.config)
            .field("flush_every", &self.flush_every)
            .field("clustered", &self.cluster.is_some())
            .finish()
    }
}

/// The presence actor (registered as `presence`).
#[derive(Debug, Default)]
pub struct PresenceActor;

/// Its state.
/// Where a user online somewhere gets its updates.
#[derive(Clone)]
enum Target {
    /// A session on this node.
    Local(DerivedActorRef<PresencePush>),
    /// A session on that node.
    Remote(String),
}

/// The presence actor's state.
pub struct PresenceState {
    core: PresenceCore<Target>,
    cluster: Option<cluster::ClusterHandle>,
    /// Comings and goings of this node's users since the last flush.
    changes: Vec<Change>,
    /// Settings of this node's users to share since the last flush.
    policies: Vec<(PhoneNumber, Policy)>,
    flush_every: Duration,
    flusher: Option<tokio::task::JoinHandle<()>>,
}

use proto::clock::now_ms;

impl Actor for PresenceActor {
    type Msg = PresenceMsg;
    type State = PresenceState;
    type Arguments = PresenceArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: PresenceArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(PresenceState {
            core: PresenceCore::new(args.config),
            cluster: args.cluster,
            changes: Vec::new(),
            policies: Vec::new(),
            flush_every: if args.flush_every.is_zero() {
                Duration::from_millis(100)
            } else {
                args.flush_every
            },
            flusher: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.flusher = Some(myself.send_interval(state.flush_every, || PresenceMsg::Flush));
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(flusher) = state.flusher.take() {
            flusher.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PresenceMsg::Online {
                user,
                session_id,
                target,
                policy,
            } => {
                // The settings first, so that the watchers it allows hear
                // of the login and no one else does. Shared with the peers
                // at every login, even when known here already: a peer that
                // restarted since may not know them.
                state.core.set_policy(user.clone(), policy.clone());
                if state.cluster.is_some() {
                    state.policies.push((user.clone(), policy));
                }
                if state.cluster.is_some() {
                    state.changes.push(Change::Online {
                        user: user.clone(),
                        session_id,
                    });
                }
                state.core.online(user, session_id, Target::Local(target));
            }
            PresenceMsg::StatusOf { user, reply } => {
                let _ = reply.send(state.core.status_of(&user));
            }
            PresenceMsg::Offline { user, session_id } => {
                let at_ms = now_ms();
                if state.cluster.is_some() {
                    state.changes.push(Change::Offline {
                        user: user.clone(),
                        session_id,
                        at_ms,
                    });
                }
                state.core.offline(&user, session_id, at_ms);
            }
            PresenceMsg::SetPolicy { user, policy } => set_policy(state, user, policy),
            PresenceMsg::Subscribe { subscriber, users } => state.core.subscribe(subscriber, users),
            PresenceMsg::Typing { from, to, active } => {
                state.core.typing(from, to, active, now_ms());
            }
            PresenceMsg::Flush => flush(state),
            PresenceMsg::FromPeer { from, bytes } => match remote::decode(&bytes) {
                Ok(wire) => from_peer(state, from, wire),
                Err(e) => {
                    tracing::warn!(peer = %from, error = %e, "undecodable presence batch dropped");
                    metrics::counter!("switchboard_cluster_undecodable_total").increment(1);
                }
            },
            PresenceMsg::PeerUp(peer) => {
                let online = state.core.online_where(|t| matches!(t, Target::Local(_)));
                let policies = online
                    .iter()
                    .filter_map(|(user, _)| {
                        let policy = state.core.policy_of(user)?.clone();
                        Some((user.clone(), policy))
                    })
                    .collect();
                for batch in remote::policy_batches(policies) {
                    send(state, &peer, &batch);
                }
                send(state, &peer, &PresenceWire::Snapshot(online));
            }
            PresenceMsg::PeerDown(peer) => {
                let gone = state
                    .core
                    .online_where(|t| matches!(t, Target::Remote(node) if *node == peer));
                let at_ms = now_ms();
                for (user, session_id) in gone {
                    state.core.offline(&user, session_id, at_ms);
                }
            }
        }
        Ok(())
    }
}

/// Applies a local user's settings and queues them for the peers.
fn set_policy(state: &mut PresenceState, user: PhoneNumber, policy: Policy) {
    if state.core.set_policy(user.clone(), policy.clone()) && state.cluster.is_some() {
        state.policies.push((user, policy));
    }
}

/// Sends the batched updates: to this node's sessions, to the nodes of
/// users online elsewhere, and this node's changes to every peer.
fn flush(state: &mut PresenceState) {
    let mut remote: HashMap<String, Vec<(PhoneNumber, Vec<Update>)>> = HashMap::new();
    let pending = state.core.flush_by_user();
    for (user, target, updates) in pending {
        match target {
            // A session that just ended drops its updates; nothing is owed.
            Target::Local(target) => {
                let _ = target.send_message(PresencePush(updates));
            }
            Target::Remote(node) => remote.entry(node).or_default().push((user, updates)),
        }
    }
    for (node, batch) in remote {
        send(state, &node, &PresenceWire::Deliver(batch));
    }
    let peers = || -> Vec<String> {
        state
            .cluster
            .as_ref()
            .map(|c| c.view().up.into_iter().collect())
            .unwrap_or_default()
    };
    // Settings before the comings and goings they govern.
    if !state.policies.is_empty() {
        let batches = remote::policy_batches(std::mem::take(&mut state.policies));
        for peer in peers() {
            for batch in &batches {
                send(state, &peer, batch);
            }
        }
    }
    if !state.changes.is_empty() {
        let changes = PresenceWire::Changes(std::mem::take(&mut state.changes));
        for peer in peers() {
            send(state, &peer, &changes);
        }
    }
}

fn from_peer(state: &mut PresenceState, from: String, wire: PresenceWire) {
    match wire {
        PresenceWire::Changes(changes) => {
            for change in changes {
                match change {
                    Change::Online { user, session_id } => {
                        state
                            .core
                            .online(user, session_id, Target::Remote(from.clone()));
                    }
                    Change::Offline {
                        user,
                        session_id,
                        at_ms,
                    } => state.core.offline(&user, session_id, at_ms),
                }
            }
        }
        PresenceWire::Snapshot(users) => {
            for (user, session_id) in users {
                state
                    .core
                    .online(user, session_id, Target::Remote(from.clone()));
            }
        }
        PresenceWire::Policies(policies) => {
            for (user, policy) in policies {
                state.core.set_policy(user, policy);
            }
        }
        PresenceWire::Deliver(batch) => {
            for (user, updates) in batch {
                if let Some(Target::Local(target)) = state.core.target_of(&user) {
                    let _ = target.send_message(PresencePush(updates));
                }
            }
        }
    }
}

/// Presence is best effort: a batch that cannot be sent is dropped.
fn send(state: &PresenceState, node: &str, wire: &PresenceWire) {
    let Some(cluster) = &state.cluster else {
        return;
    };
    match remote::encode(wire) {
        Ok(bytes) => {
            if let Err(e) = cluster.send(node, cluster::wire::Body::Presence(bytes)) {
                tracing::debug!(peer = node, error = %e, "presence batch not sent");
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot encode a presence batch"),
    }
}

/// Hands a cluster `Presence` body to the presence actor registered as
/// `name` on this node.
pub fn dispatch(name: &str, from: &str, bytes: Vec<u8>) {
    if let Some(cell) = ractor::registry::where_is(name) {
        let presence: ActorRef<PresenceMsg> = cell.into();
        let _ = presence.send_message(PresenceMsg::FromPeer {
            from: from.to_owned(),
            bytes,
        });
    }
}
