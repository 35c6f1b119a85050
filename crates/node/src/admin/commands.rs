//! What each admin request reads or does in the running node.

use std::time::Instant;

use offline_queue::{FragmentDirectory, FragmentMsg, FragmentStats};
use proto::PhoneNumber;
use ractor::ActorRef;
use supervision::SupervisorMsg;

use super::{AdminReply, AdminRequest, ClusterStatus, FragmentStatus, NodeStatus, UserReport};
use crate::health::Health;

/// How long one fragment, the auth service or presence may take to answer.
const ASK_TIMEOUT_MS: u64 = 2_000;

/// What the admin channel reaches in the node.
#[derive(Clone)]
pub(crate) struct AdminContext {
    pub(crate) node: String,
    pub(crate) started: Instant,
    pub(crate) data_dir: std::path::PathBuf,
    pub(crate) health: Health,
    pub(crate) store: storage::Store,
    pub(crate) fragments: FragmentDirectory,
    pub(crate) fragment_count: u16,
    pub(crate) cluster: Option<AdminCluster>,
    pub(crate) auth: auth::AuthHandle,
    /// Registered names of the presence actor and the sessions' supervisor.
    pub(crate) presence: &'static str,
    pub(crate) sessions: &'static str,
    /// Drains the node's clients (see [`crate::builder::drain_clients`]).
    pub(crate) root: ActorRef<SupervisorMsg>,
}

/// The cluster, for status.
#[derive(Clone)]
pub(crate) struct AdminCluster {
    pub(crate) handle: cluster::ClusterHandle,
    pub(crate) nodes: Vec<String>,
    pub(crate) islands: Vec<[String; 2]>,
}

impl AdminContext {
    pub(crate) async fn handle(&self, request: AdminRequest) -> AdminReply {
        match request {
            AdminRequest::Status => AdminReply::Status(Box::new(self.status().await)),
            AdminRequest::User { phone } => AdminReply::User(Box::new(self.user(phone).await)),
            AdminRequest::Revoke { phone } => match self.auth.logout(&phone).await {
                Ok(token_generation) => {
                    tracing::warn!(%phone, token_generation, "admin: revoked every token of a user");
                    AdminReply::Revoked {
                        phone,
                        token_generation,
                    }
                }
                Err(e) => AdminReply::Error {
                    message: format!("cannot revoke {phone}'s tokens: {e}"),
                },
            },
            AdminRequest::Backup { dir } => {
                match super::backup::backup(
                    &self.store,
                    &self.data_dir,
                    &self.node,
                    self.fragment_count,
                    &dir,
                )
                .await
                {
                    Ok(manifest) => AdminReply::BackedUp { dir, manifest },
                    Err(message) => AdminReply::Error {
                        message: format!("backup into {}: {message}", dir.display()),
                    },
                }
            }
            AdminRequest::Probe => {
                let (healthy, why_not_healthy) = self.health.healthz();
                let (ready, why_not_ready) = self.health.readyz();
                AdminReply::Probe {
                    healthy,
                    ready,
                    reason: if healthy {
                        why_not_ready
                    } else {
                        why_not_healthy
                    },
                }
            }
            AdminRequest::Drain => {
                let sessions_told =
                    crate::builder::drain_clients(&self.root, &self.health, self.sessions).await;
                AdminReply::Draining { sessions_told }
            }
        }
    }

    async fn status(&self) -> NodeStatus {
        let queues = crate::queues::sample(self.sessions).await;
        let stats = futures::future::join_all(
            (0..self.fragment_count).map(|id| fragment_stats(&self.fragments, id)),
        )
        .await;
        let fragments = stats
            .into_iter()
            .enumerate()
            .map(|(id, stats)| {
                let name = offline_queue::fragment_name(id as u16);
                let queue = queues
                    .actors
                    .iter()
                    .find(|(actor, _)| *actor == name)
                    .map_or(0, |(_, length)| *length);
                let stats = stats.as_ref();
                FragmentStatus {
                    fragment: id as u16,
                    serves: stats.is_some_and(|s| s.serves),
                    owner: stats
                        .and_then(|s| s.owner.as_ref())
                        .map(|o| (o.node.clone(), o.epoch)),
                    waiting_for_owner: stats.is_some_and(|s| s.waiting_for_owner),
                    queue,
                    online: stats.map_or(0, |s| s.online),
                    pending_commits: stats.map_or(0, |s| s.pending_commits),
                    unanswered: stats.map_or(0, |s| s.unanswered),
                    unavailable: stats.is_none(),
                }
            })
            .collect();
        let cluster = self.cluster.as_ref().map(|c| {
            let up = c.handle.view().up;
            ClusterStatus {
                peers: c
                    .nodes
                    .iter()
                    .filter(|name| **name != self.node)
                    .map(|name| (name.clone(), up.contains(name)))
                    .collect(),
                islands: c.islands.clone(),
            }
        });
        let (ready, readiness) = self.health.readyz();
        NodeStatus {
            node: self.node.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_secs: self.started.elapsed().as_secs(),
            ready,
            readiness,
            connections: session::live_sessions(),
            storage_queue: self
                .store
                .stats()
                .queued
                .load(std::sync::atomic::Ordering::Relaxed),
            cluster,
            fragments,
            queues,
        }
    }

    async fn user(&self, phone: PhoneNumber) -> UserReport {
        let mut errors = Vec::new();
        let fragment = self.fragments.placement().fragment_of(&phone);
        let (owner, mailbox) = match self.fragments.get(fragment) {
            Ok(actor) => {
                let owner = ractor::call_t!(actor, FragmentMsg::Stats, ASK_TIMEOUT_MS)
                    .ok()
                    .and_then(|s| s.owner)
                    .map(|o| (o.node, o.epoch));
                let user = phone.clone();
                let mailbox = match ractor::call_t!(
                    actor,
                    |reply| FragmentMsg::Mailbox { user, reply },
                    ASK_TIMEOUT_MS
                ) {
                    Ok(Some(mailbox)) => Some(mailbox),
                    Ok(None) => {
                        errors.push(match &owner {
                            Some((node, _)) => format!(
                                "fragment {fragment} is served by {node}: ask there for the mailbox"
                            ),
                            None => format!("fragment {fragment} is not served yet"),
                        });
                        None
                    }
                    Err(e) => {
                        errors.push(format!("fragment {fragment} did not answer: {e}"));
                        None
                    }
                };
                (owner, mailbox)
            }
            Err(e) => {
                errors.push(format!("fragment {fragment}: {e}"));
                (None, None)
            }
        };
        let account = match self.auth.account_summary(&phone).await {
            Ok(account) => Some(account),
            Err(e) => {
                errors.push(format!("account: {e}"));
                None
            }
        };
        let presence = match ractor::registry::where_is(self.presence) {
            Some(cell) => {
                let actor: ActorRef<presence::PresenceMsg> = cell.into();
                let user = phone.clone();
                ractor::call_t!(
                    actor,
                    |reply| presence::PresenceMsg::StatusOf { user, reply },
                    ASK_TIMEOUT_MS
                )
                .map_err(|e| errors.push(format!("presence: {e}")))
                .ok()
            }
            None => {
                errors.push("presence: not running".into());
                None
            }
        };
        UserReport {
            phone,
            fragment,
            owner,
            account,
            mailbox,
            presence,
            errors,
        }
    }
}

async fn fragment_stats(fragments: &FragmentDirectory, id: u16) -> Option<FragmentStats> {
    let fragment = fragments.get(id).ok()?;
    ractor::call_t!(fragment, FragmentMsg::Stats, ASK_TIMEOUT_MS).ok()
}
