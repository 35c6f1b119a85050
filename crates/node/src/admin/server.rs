//! The admin socket: binding it for the node's user alone, checking each
//! peer's credentials, and one JSON line in, one JSON line out.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::{AdminContext, AdminReply, AdminRequest, MAX_REQUEST_BYTES};
use crate::{NodeError, Result};

/// Admin connections served at once; more wait for the accept loop.
const MAX_CONNECTIONS: usize = 8;
/// A connection is closed after this long, answered or not (a drain takes
/// a few seconds at most).
const DEADLINE: Duration = Duration::from_secs(30);

/// Binds the admin socket at `path` (mode 0600) and serves it until the
/// process ends. A socket file left by an earlier run is replaced; any
/// other file there is an error.
pub(crate) fn serve(path: &Path, ctx: AdminContext) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|e| bind_error(path, e))?;
        }
        Ok(_) => {
            return Err(NodeError::Config(format!(
                "admin.socket = {}: a file that is not a socket is in the way",
                path.display()
            )));
        }
        Err(_) => {}
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(|e| bind_error(path, e))?;
    // The data directory is 0700 already; the socket is the node user's
    // alone even where admin.socket points elsewhere.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| bind_error(path, e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| bind_error(path, e))?;
    let listener = UnixListener::from_std(listener).map_err(|e| bind_error(path, e))?;
    tracing::info!(socket = %path.display(), "admin channel listening");
    tokio::spawn(accept_loop(listener, Arc::new(ctx)));
    Ok(())
}

fn bind_error(path: &Path, source: std::io::Error) -> NodeError {
    NodeError::Bind {
        addr: path.display().to_string(),
        source,
    }
}

async fn accept_loop(listener: UnixListener, ctx: Arc<AdminContext>) {
    let own_uid = rustix::process::geteuid().as_raw();
    crate::accept::serve_bounded(
        "admin",
        MAX_CONNECTIONS,
        DEADLINE,
        || async { listener.accept().await.map(|(stream, _)| stream) },
        |stream| {
            let ctx = Arc::clone(&ctx);
            async move { answer(stream, own_uid, &ctx).await }
        },
    )
    .await;
}

/// Whether a peer of this user id may use the channel: the node's own
/// user, or root.
pub(crate) fn may_ask(peer_uid: u32, own_uid: u32) -> bool {
    peer_uid == own_uid || peer_uid == 0
}

async fn answer(stream: UnixStream, own_uid: u32, ctx: &AdminContext) {
    match stream.peer_cred() {
        Ok(cred) if may_ask(cred.uid(), own_uid) => {}
        Ok(cred) => {
            tracing::warn!(uid = cred.uid(), pid = ?cred.pid(), "admin channel: refused a peer of another user");
            metrics::counter!("switchboard_admin_refused_total").increment(1);
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "admin channel: cannot read the peer's credentials");
            metrics::counter!("switchboard_admin_refused_total").increment(1);
            return;
        }
    }
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let read = BufReader::new(read)
        .take(MAX_REQUEST_BYTES as u64 + 1)
        .read_until(b'\n', &mut line)
        .await;
    let (command, reply) = match read {
        Err(e) => {
            tracing::debug!(error = %e, "admin channel: read failed");
            return;
        }
        Ok(_) if line.len() > MAX_REQUEST_BYTES => (
            "invalid",
            AdminReply::Error {
                message: format!("a request is one line of at most {MAX_REQUEST_BYTES} bytes"),
            },
        ),
        Ok(_) => match serde_json::from_slice::<AdminRequest>(&line) {
            Ok(request) => {
                let command = command_name(&request);
                tracing::info!(command, "admin request");
                (command, ctx.handle(request).await)
            }
            Err(e) => (
                "invalid",
                AdminReply::Error {
                    message: format!("not a request: {e}"),
                },
            ),
        },
    };
    let outcome = if matches!(reply, AdminReply::Error { .. }) {
        "error"
    } else {
        "ok"
    };
    metrics::counter!("switchboard_admin_requests_total", "command" => command, "outcome" => outcome)
        .increment(1);
    let Ok(mut bytes) = serde_json::to_vec(&reply) else {
        tracing::error!(command, "admin channel: cannot encode a reply");
        return;
    };
    bytes.push(b'\n');
    if let Err(e) = write.write_all(&bytes).await {
        tracing::debug!(error = %e, "admin channel: write failed");
    }
}

fn command_name(request: &AdminRequest) -> &'static str {
    match request {
        AdminRequest::Status => "status",
        AdminRequest::User { .. } => "user",
        AdminRequest::Revoke { .. } => "revoke",
        AdminRequest::Drain => "drain",
        AdminRequest::Probe => "probe",
        AdminRequest::Backup { .. } => "backup",
    }
}

#[cfg(test)]
mod tests {
    use super::may_ask;

    #[test]
    fn only_the_nodes_user_and_root_may_ask() {
        assert!(may_ask(1000, 1000));
        assert!(may_ask(0, 1000));
        assert!(may_ask(0, 0));
        assert!(!may_ask(1001, 1000));
        assert!(!may_ask(65534, 0));
    }
}
