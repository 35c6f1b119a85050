//! The admin channel: what `switchboard admin` asks a running node, over a
//! Unix socket in the data directory, never over the client port.
//!
//! Who may ask: the socket file is the node user's alone (mode 0600 in the
//! 0700 data directory), and the node also checks the peer's credentials
//! (`SO_PEERCRED`): only its own user and root are answered. One JSON
//! request per line, one JSON reply per line; the operator's tool and
//! scripts read the same replies (`--json`).
//!
//! - [`AdminRequest`] / [`AdminReply`]: the messages.
//! - `server`: the socket, the peer check, the framing.
//! - `commands`: what each request reads or does in the node.

mod backup;
mod commands;
mod server;

use std::path::Path;
use std::time::Duration;

use proto::PhoneNumber;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

pub use backup::{BackupManifest, restore};
pub(crate) use commands::{AdminCluster, AdminContext};
pub(crate) use server::serve;

use crate::queues::QueueSample;

/// The longest request line the node reads; anything longer is refused.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// The file name of the socket in the data directory, unless `admin.socket`
/// names another path.
pub const SOCKET_FILE: &str = "admin.sock";

/// A request of the admin channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum AdminRequest {
    /// The node, its cluster view, its fragments and its queues.
    Status,
    /// What the node knows of one user: no content.
    User {
        /// The user.
        phone: PhoneNumber,
    },
    /// Revokes every token of a user and ends its connections, on any node.
    Revoke {
        /// The user.
        phone: PhoneNumber,
    },
    /// Before maintenance: stop taking connections, report not ready, and
    /// tell every client to reconnect (to another node) now.
    Drain,
    /// `/healthz` and `/readyz` without the metrics listener: for a
    /// container's health check.
    Probe,
    /// A consistent copy of the node's data into `dir`, a new folder (an
    /// absolute path on the node's host), while it serves.
    Backup {
        /// Where.
        dir: std::path::PathBuf,
    },
}

/// A reply of the admin channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum AdminReply {
    /// To [`AdminRequest::Status`].
    Status(Box<NodeStatus>),
    /// To [`AdminRequest::User`].
    User(Box<UserReport>),
    /// To [`AdminRequest::Revoke`]: tokens below `token_generation` no
    /// longer work, durably.
    Revoked {
        /// The user.
        phone: PhoneNumber,
        /// The account's token generation now.
        token_generation: u64,
    },
    /// To [`AdminRequest::Drain`].
    Draining {
        /// Clients told to reconnect elsewhere.
        sessions_told: usize,
    },
    /// To [`AdminRequest::Probe`].
    Probe {
        /// `/healthz`: alive and the store writable.
        healthy: bool,
        /// `/readyz`: serving.
        ready: bool,
        /// Why not, or "ok".
        reason: String,
    },
    /// To [`AdminRequest::Backup`].
    BackedUp {
        /// Where.
        dir: std::path::PathBuf,
        /// What it holds.
        manifest: BackupManifest,
    },
    /// The request was refused or failed.
    Error {
        /// Why.
        message: String,
    },
}

/// A node as `switchboard admin status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's name.
    pub node: String,
    /// The build's version.
    pub version: String,
    /// Seconds since the node started.
    pub uptime_secs: u64,
    /// `/readyz`'s verdict and why.
    pub ready: bool,
    /// The reason line of `/readyz`.
    pub readiness: String,
    /// Client connections held now.
    pub connections: u64,
    /// Changes waiting for the storage writer.
    pub storage_queue: u64,
    /// The cluster as this node sees it (`None` on a node alone).
    pub cluster: Option<ClusterStatus>,
    /// Every fragment as this node sees it.
    pub fragments: Vec<FragmentStatus>,
    /// Queue lengths of the long-lived actors and the sessions.
    pub queues: QueueSample,
}

/// The cluster as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Every node of the configuration but this one, and whether it is up.
    pub peers: Vec<(String, bool)>,
    /// The islands: pairs of nodes that replicate each other's fragments.
    pub islands: Vec<[String; 2]>,
}

/// One fragment as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FragmentStatus {
    /// The fragment.
    pub fragment: u16,
    /// Whether this node serves it now.
    pub serves: bool,
    /// Its owner and the owner's epoch, as this node knows them.
    pub owner: Option<(String, u64)>,
    /// Still waiting to hear the owner after a restart.
    pub waiting_for_owner: bool,
    /// Messages waiting in the fragment actor's queue.
    pub queue: usize,
    /// Users attached to it here.
    pub online: usize,
    /// Writes waiting for their commit.
    pub pending_commits: usize,
    /// Requests forwarded or held, not answered yet.
    pub unanswered: usize,
    /// The fragment actor did not answer in time.
    pub unavailable: bool,
}

/// A user as `switchboard admin user` shows it: never a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserReport {
    /// The user.
    pub phone: PhoneNumber,
    /// Its mailbox fragment.
    pub fragment: u16,
    /// The fragment's owner and epoch, as this node knows them.
    pub owner: Option<(String, u64)>,
    /// The account (`None` when it could not be read: see `errors`).
    pub account: Option<auth::AccountSummary>,
    /// The mailbox, when this node serves the fragment.
    pub mailbox: Option<offline_queue::replica_core::MailboxSummary>,
    /// Online, or offline since when, as this node's presence knows.
    pub presence: Option<proto::PresenceStatus>,
    /// What could not be read, and why.
    pub errors: Vec<String>,
}

/// Asks the node listening on `socket` one request (the operator's side).
pub async fn ask(
    socket: &Path,
    request: &AdminRequest,
    timeout: Duration,
) -> Result<AdminReply, String> {
    let exchange = async {
        let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
            format!(
                "cannot connect to {}: {e} (is the node running, and is this its data directory?)",
                socket.display()
            )
        })?;
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_vec(request).map_err(|e| e.to_string())?;
        line.push(b'\n');
        write
            .write_all(&line)
            .await
            .map_err(|e| format!("cannot send the request: {e}"))?;
        let mut answer = String::new();
        BufReader::new(read)
            .read_line(&mut answer)
            .await
            .map_err(|e| format!("cannot read the reply: {e}"))?;
        if answer.is_empty() {
            return Err(
                "the node closed the channel without a reply (not its user or root?)".into(),
            );
        }
        serde_json::from_str(&answer).map_err(|e| format!("unreadable reply: {e}"))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no reply within {timeout:?}"))?
}
