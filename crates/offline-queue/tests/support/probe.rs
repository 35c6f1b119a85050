//! An endpoint actor that forwards every push to a channel, standing in for a
//! session in the fragment's tests and benchmarks.

use offline_queue::Push;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;

/// The probe actor.
pub(crate) struct Probe;

impl Actor for Probe {
    type Msg = Push;
    type State = mpsc::UnboundedSender<Push>;
    type Arguments = mpsc::UnboundedSender<Push>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Push>,
        tx: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(tx)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Push>,
        message: Push,
        tx: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _ = tx.send(message);
        Ok(())
    }
}
