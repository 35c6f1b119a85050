//! The listener actor: runs the TLS accept loop as a supervised child.
//!
//! The socket is bound once by the node and handed to each incarnation as a
//! clone, so a restarted listener serves the same address at once.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use session::{SessionContext, Transport};
use supervision::SupervisorMsg;
use tokio::sync::oneshot;

/// Start-up arguments of the listener.
pub struct ListenerArgs {
    /// The bound socket (a clone per incarnation).
    pub socket: Arc<std::net::TcpListener>,
    /// TLS, or WebSocket over TLS.
    pub transport: Transport,
    /// TLS settings.
    pub tls: Arc<rustls::ServerConfig>,
    /// What sessions share.
    pub ctx: SessionContext,
    /// The session supervisor.
    pub sessions: ActorRef<SupervisorMsg>,
}

/// The listener actor. It has no messages: it is stopped to stop accepting.
#[derive(Debug, Default)]
pub struct ListenerActor;

/// Its state: the trigger that ends the accept loop.
pub struct ListenerState {
    stop: Option<oneshot::Sender<()>>,
}

/// Messages: none; the enum only names the actor's type.
pub enum ListenerMsg {}

impl ractor::Message for ListenerMsg {}

impl Actor for ListenerActor {
    type Msg = ListenerMsg;
    type State = ListenerState;
    type Arguments = ListenerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ListenerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let socket = args.socket.try_clone()?;
        socket.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(socket)?;
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = session::serve(
                listener,
                args.transport,
                args.tls,
                args.ctx,
                args.sessions,
                shutdown,
            )
            .await
            {
                tracing::error!(error = %e, "listener failed");
                // Fail the actor so its supervisor restarts it.
                myself.stop(Some(e.to_string()));
            }
        });
        Ok(ListenerState { stop: Some(stop) })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(stop) = state.stop.take() {
            let _ = stop.send(());
        }
        Ok(())
    }
}
