//! The supervisor actor.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr,
    SupervisionEvent,
};

use crate::{Intensity, RestartBudget};

/// Starts a child linked to the given supervisor cell and returns its cell.
pub type StartFn =
    Arc<dyn Fn(ActorCell) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> + Send + Sync>;

/// When a child is restarted (OTP's restart types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Always: after a failure and after a normal stop.
    Permanent,
    /// Only after a failure (panic or handler error).
    Transient,
    /// Never: the child is forgotten when it ends (e.g. one client connection).
    Temporary,
}

/// How to start and restart one child.
#[derive(Clone)]
pub struct ChildSpec {
    /// Unique among the supervisor's children; used in logs.
    pub id: String,
    /// When to restart it.
    pub restart: Restart,
    /// Spawns it linked to the supervisor.
    pub start: StartFn,
}

impl fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildSpec")
            .field("id", &self.id)
            .field("restart", &self.restart)
            .finish_non_exhaustive()
    }
}

impl ChildSpec {
    /// A spec from an id, a restart type and an async start function.
    pub fn new<F, Fut>(id: impl Into<String>, restart: Restart, start: F) -> Self
    where
        F: Fn(ActorCell) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ActorCell, SpawnErr>> + Send + 'static,
    {
        Self {
            id: id.into(),
            restart,
            start: Arc::new(move |cell| Box::pin(start(cell))),
        }
    }
}

/// Start-up arguments of a [`Supervisor`].
#[derive(Debug, Clone, Default)]
pub struct SupervisorArgs {
    /// Children started in order in `pre_start`, stopped in reverse order.
    pub children: Vec<ChildSpec>,
    /// Restart limit.
    pub intensity: Intensity,
    /// Stop all children at once at shutdown instead of one by one in reverse
    /// order: for many independent children such as client connections.
    pub concurrent_shutdown: bool,
}

/// Messages to a [`Supervisor`].
pub enum SupervisorMsg {
    /// Start one more child (e.g. a connection's actor) and reply with its cell.
    StartChild(ChildSpec, RpcReplyPort<Result<ActorCell, String>>),
    /// Reply with the ids and cells of the children now running.
    Children(RpcReplyPort<Vec<(String, ActorCell)>>),
    /// Messages waiting in each child's queue now, in no order: a sample
    /// for queue-length metrics that clones no child's name or cell.
    QueueLengths(RpcReplyPort<Vec<usize>>),
    /// Restart counts per child id since start, for metrics and tests.
    RestartCounts(RpcReplyPort<HashMap<String, u64>>),
    /// Stop the child with this id for good (not restarted, whatever its
    /// restart type; OTP's `terminate_child`) and reply once it has
    /// stopped: whether there was one.
    TerminateChild(String, RpcReplyPort<bool>),
}

impl ractor::Message for SupervisorMsg {}

/// A one-for-one supervisor. See the crate docs.
#[derive(Debug, Default)]
pub struct Supervisor;

struct Child {
    start_seq: u64,
    spec: ChildSpec,
    cell: ActorCell,
}

/// A [`Supervisor`]'s state.
pub struct SupervisorState {
    children: HashMap<ActorId, Child>,
    // Start order, for stopping in reverse; a map so that forgetting one of
    // many temporary children (connections) stays cheap.
    order: BTreeMap<u64, ActorId>,
    next_seq: u64,
    budget: RestartBudget,
    restarts: HashMap<String, u64>,
    concurrent_shutdown: bool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl SupervisorState {
    async fn start(&mut self, myself: &ActorCell, spec: ChildSpec) -> Result<ActorCell, SpawnErr> {
        let cell = (spec.start)(myself.clone()).await?;
        let id = cell.get_id();
        let start_seq = self.next_seq;
        self.next_seq += 1;
        self.order.insert(start_seq, id);
        self.children.insert(
            id,
            Child {
                start_seq,
                spec,
                cell: cell.clone(),
            },
        );
        Ok(cell)
    }

    fn forget(&mut self, id: ActorId) -> Option<ChildSpec> {
        let child = self.children.remove(&id)?;
        self.order.remove(&child.start_seq);
        Some(child.spec)
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = SupervisorState {
            children: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            budget: RestartBudget::new(args.intensity),
            restarts: HashMap::new(),
            concurrent_shutdown: args.concurrent_shutdown,
        };
        for spec in args.children {
            let id = spec.id.clone();
            if let Err(e) = state.start(&myself.get_cell(), spec).await {
                // Stop what was started so far, newest first, then fail.
                stop_in_reverse(&mut state).await;
                return Err(format!("child {id} failed to start: {e}").into());
            }
        }
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        stop_in_reverse(state).await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::StartChild(spec, reply) => {
                let result = state
                    .start(&myself.get_cell(), spec)
                    .await
                    .map_err(|e| e.to_string());
                let _ = reply.send(result);
            }
            SupervisorMsg::Children(reply) => {
                let children = state
                    .order
                    .values()
                    .filter_map(|id| state.children.get(id))
                    .map(|child| (child.spec.id.clone(), child.cell.clone()))
                    .collect();
                let _ = reply.send(children);
            }
            SupervisorMsg::QueueLengths(reply) => {
                let lengths = state
                    .children
                    .values()
                    .map(|child| child.cell.queued_messages())
                    .collect();
                let _ = reply.send(lengths);
            }
            SupervisorMsg::RestartCounts(reply) => {
                let _ = reply.send(state.restarts.clone());
            }
            SupervisorMsg::TerminateChild(id, reply) => {
                let found = state
                    .children
                    .iter()
                    .find(|(_, child)| child.spec.id == id)
                    .map(|(actor, child)| (*actor, child.cell.clone()));
                // Forgotten first, so its termination restarts nothing.
                if let Some((actor, cell)) = &found {
                    state.forget(*actor);
                    let _ = cell
                        .stop_and_wait(Some("terminated by its supervisor".into()), None)
                        .await;
                }
                let _ = reply.send(found.is_some());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, Some(err.to_string())),
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            _ => return Ok(()),
        };
        let Some(spec) = state.forget(cell.get_id()) else {
            return Ok(());
        };
        let restart = match (spec.restart, &failure) {
            (Restart::Permanent, _) | (Restart::Transient, Some(_)) => true,
            (Restart::Transient, None) | (Restart::Temporary, _) => false,
        };
        if let Some(reason) = &failure {
            if restart {
                tracing::warn!(child = %spec.id, %reason, "child failed; restarting it");
            } else {
                tracing::debug!(child = %spec.id, %reason, "temporary child failed");
            }
        }
        if !restart {
            return Ok(());
        }
        if !state.budget.try_restart(now_ms()) {
            tracing::error!(child = %spec.id, "restart intensity exceeded; supervisor gives up");
            return Err(format!("restart intensity exceeded by child {}", spec.id).into());
        }
        *state.restarts.entry(spec.id.clone()).or_default() += 1;
        let id = spec.id.clone();
        if let Err(e) = state.start(&myself.get_cell(), spec).await {
            return Err(format!("child {id} failed to restart: {e}").into());
        }
        Ok(())
    }
}

async fn stop_in_reverse(state: &mut SupervisorState) {
    let order = std::mem::take(&mut state.order);
    if state.concurrent_shutdown {
        let stops = order
            .into_values()
            .filter_map(|id| state.children.remove(&id))
            .map(|child| async move {
                let _ = child
                    .cell
                    .stop_and_wait(Some("supervisor stopping".into()), None)
                    .await;
            });
        futures::future::join_all(stops).await;
        return;
    }
    for id in order.into_values().rev() {
        if let Some(child) = state.children.remove(&id) {
            let stopping = child
                .cell
                .stop_and_wait(Some("supervisor stopping".into()), None);
            if let Err(e) = stopping.await {
                tracing::debug!(error = %e, "child already gone at shutdown");
            }
        }
    }
}

#[cfg(test)]
mod tests;
