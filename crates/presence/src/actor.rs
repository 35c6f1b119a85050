//! The presence actor.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::PhoneNumber;
use ractor::{Actor, ActorProcessingErr, ActorRef, DerivedActorRef};

use crate::core::{PresenceConfig, PresenceCore, Update};

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
}

impl ractor::Message for PresenceMsg {}

/// Start-up arguments.
#[derive(Debug, Clone, Default)]
pub struct PresenceArgs {
    /// Limits.
    pub config: PresenceConfig,
    /// How often batched updates are sent.
    pub flush_every: Duration,
}

/// The presence actor (registered as `presence`).
#[derive(Debug, Default)]
pub struct PresenceActor;

/// Its state.
pub struct PresenceState {
    core: PresenceCore<DerivedActorRef<PresencePush>>,
    flush_every: Duration,
    flusher: Option<tokio::task::JoinHandle<()>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

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
            } => state.core.online(user, session_id, target),
            PresenceMsg::Offline { user, session_id } => {
                state.core.offline(&user, session_id, now_ms())
            }
            PresenceMsg::Subscribe { subscriber, users } => state.core.subscribe(subscriber, users),
            PresenceMsg::Typing { from, to, active } => {
                state.core.typing(from, to, active, now_ms());
            }
            PresenceMsg::Flush => {
                for (target, updates) in state.core.flush() {
                    // A session that just ended drops its updates; nothing is owed.
                    let _ = target.send_message(PresencePush(updates));
                }
            }
        }
        Ok(())
    }
}
