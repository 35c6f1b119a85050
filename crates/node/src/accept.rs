//! The accept loop of the node's small side listeners (metrics, admin):
//! at most `max` connections served at once (more wait in the backlog),
//! each for at most `deadline`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Accepts with `accept` and serves each connection with `serve` in a task
/// of its own, until the listener's accept is given up. An accept error
/// (out of files, say) is logged and retried after a pause.
pub(crate) async fn serve_bounded<S, A, AF, H, HF>(
    what: &'static str,
    max: usize,
    deadline: Duration,
    mut accept: A,
    serve: H,
) where
    S: Send + 'static,
    A: FnMut() -> AF,
    AF: Future<Output = std::io::Result<S>>,
    H: Fn(S) -> HF,
    HF: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let stream = match accept().await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(listener = what, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let connection = serve(stream);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(deadline, connection).await;
            drop(permit);
        });
    }
}
