//! Putting a node together: [`NodeBuilder`] and the running [`Node`].
//!
//! An embedding program adds its own actor types with
//! [`NodeBuilder::extension`]: each is started under the `extensions`
//! supervisor (restarted alone if it fails), registered under its namespace,
//! and receives the client frames of that namespace. See
//! `examples/echo_bot.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use offline_queue::{FragmentActor, FragmentArgs, FragmentDirectory, FragmentMsg, fragment_name};
use presence::{PresenceActor, PresenceArgs};
use ractor::{Actor, ActorCell, ActorRef, SpawnErr};
use router::Placement;
use session::{
    NodeServices, SessionContext, SessionMsg, Transport, broadcast_to_sessions,
    extension_actor_name,
};
use storage::{JournalOptions, Store, StoreOptions};
use supervision::{ChildSpec, Intensity, Restart, Supervisor, SupervisorArgs, SupervisorMsg};

use crate::health::{ClusterReadiness, Health};
use crate::listener::{ListenerActor, ListenerArgs};
use crate::tls::{NodeCertificate, ensure_certificate, server_config};
use crate::{NodeConfig, NodeError, Result};

const PRESENCE_NAME: &str = "presence";
const AUTH_NAME: &str = "auth";
/// How long auth waits for a number's fragment (maybe on another node).
const ACCOUNT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
pub(crate) const SESSIONS_NAME: &str = "sessions";
const MEMBERSHIP_NAME: &str = "membership";
const LISTENER_NAME: &str = "listener";
const WEBSOCKET_LISTENER_NAME: &str = "listener-websocket";

/// What an extension actor gets at start.
#[derive(Clone)]
pub struct ExtensionContext {
    /// The namespace it serves.
    pub namespace: String,
    /// The name it must register under (`Actor::spawn_linked(Some(name), ..)`).
    pub actor_name: String,
    /// Finds mailbox fragments, for extensions that are users.
    pub fragments: FragmentDirectory,
    /// The node's name.
    pub node_name: String,
}

type ExtensionStart = Arc<
    dyn Fn(ExtensionContext, ActorCell) -> BoxFuture<'static, Result<ActorCell, SpawnErr>>
        + Send
        + Sync,
>;

struct ExtensionEntry {
    namespace: String,
    start: ExtensionStart,
}

/// Builds and starts a node.
pub struct NodeBuilder {
    config: NodeConfig,
    extensions: Vec<ExtensionEntry>,
}

/// A running node.
pub struct Node {
    config: NodeConfig,
    root: ActorRef<SupervisorMsg>,
    root_handle: tokio::task::JoinHandle<()>,
    store: Store,
    local_addr: SocketAddr,
    websocket_addr: Option<SocketAddr>,
    certificate: NodeCertificate,
    cluster: Option<cluster::ClusterHandle>,
    health: Health,
    tls: Arc<crate::tls::ReloadableCertificate>,
}

fn supervisor_spec(id: &str, args: SupervisorArgs) -> ChildSpec {
    let name = id.to_owned();
    let args = Arc::new(args);
    ChildSpec::new(id, Restart::Permanent, move |sup| {
        let name = name.clone();
        let args = (*args).clone();
        async move {
            let (actor, _) = Actor::spawn_linked(Some(name), Supervisor, args, sup).await?;
            Ok(actor.get_cell())
        }
    })
}

impl NodeBuilder {
    /// A builder for `config` with the built-in services.
    pub fn new(config: NodeConfig) -> Self {
        Self {
            config,
            extensions: Vec::new(),
        }
    }

    /// Adds an extension actor serving client frames of `namespace`. `start`
    /// spawns it linked to the given supervisor cell and registered under
    /// `ctx.actor_name`; its message type must be [`session::ExtensionMsg`].
    pub fn extension<F, Fut>(mut self, namespace: &str, start: F) -> Self
    where
        F: Fn(ExtensionContext, ActorCell) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ActorCell, SpawnErr>> + Send + 'static,
    {
        self.extensions.push(ExtensionEntry {
            namespace: namespace.to_owned(),
            start: Arc::new(move |ctx, sup| Box::pin(start(ctx, sup))),
        });
        self
    }

    /// Opens storage, builds the supervision tree and starts listening.
    pub async fn start(self) -> Result<Node> {
        let config = self.config;
        config.validate()?;
        crate::datadir::prepare(&config.data_dir)?;
        let certificate = ensure_certificate(&config.tls, &config.data_dir)?;
        if certificate.generated {
            tracing::info!(path = %certificate.cert_path.display(), "generated a self-signed certificate");
        }
        tracing::info!(cert = %certificate.cert_path.display(), sha256 = %certificate.fingerprint,
            "client TLS certificate");
        let (tls, reloadable) = server_config(&certificate)?;
        let db_path = config.data_dir.join("switchboard.redb");
        crate::datadir::create_private_file(&db_path)?;
        let store = Store::open(
            &db_path,
            StoreOptions {
                cache_bytes: config.storage.cache_mib * 1024 * 1024,
                commit_interval: Duration::from_micros(config.storage.commit_interval_us),
                // Opened even when off, to replay what an earlier run left.
                journal: Some(JournalOptions {
                    checkpoint_interval: Duration::from_millis(
                        config.storage.checkpoint_interval_ms,
                    ),
                    stage_interval: Duration::from_millis(config.storage.stage_interval_ms),
                    journal_new_writes: config.storage.checkpoint_interval_ms > 0,
                    ..JournalOptions::new(
                        config.data_dir.join("journal"),
                        vec![offline_queue::journal_replayer()],
                    )
                }),
                ..StoreOptions::default()
            },
        )?;
        let placement =
            Placement::new(config.fragments).map_err(|e| NodeError::Config(e.to_string()))?;
        offline_queue::store::ensure_data_format(&store)
            .await
            .map_err(|e| NodeError::Config(e.to_string()))?;
        offline_queue::store::ensure_fragment_count(&store, config.fragments)
            .await
            .map_err(|e| NodeError::Config(e.to_string()))?;
        let fragments = FragmentDirectory::new(placement);
        // Auth keeps each number's state in its mailbox fragment's records.
        let accounts = auth::Accounts::new(fragments.clone(), ACCOUNT_REQUEST_TIMEOUT);

        let provider = auth::build_provider(&config.auth.provider, &config.data_dir);
        let socket =
            std::net::TcpListener::bind(&config.listen).map_err(|source| NodeError::Bind {
                addr: config.listen.clone(),
                source,
            })?;
        let local_addr = socket.local_addr().map_err(|source| NodeError::Bind {
            addr: config.listen.clone(),
            source,
        })?;
        let socket = Arc::new(socket);
        let websocket = match &config.websocket_listen {
            Some(addr) => {
                let bound =
                    std::net::TcpListener::bind(addr).map_err(|source| NodeError::Bind {
                        addr: addr.clone(),
                        source,
                    })?;
                let local = bound.local_addr().map_err(|source| NodeError::Bind {
                    addr: addr.clone(),
                    source,
                })?;
                Some((Arc::new(bound), local))
            }
            None => None,
        };
        let websocket_addr = websocket.as_ref().map(|(_, addr)| *addr);

        // auth: started once here for its handle; the handle follows restarts
        // by name, and the child spec restarts it under the root.
        let auth_spec = {
            let (cfg, store, provider) = (config.auth.clone(), store.clone(), provider.clone());
            let accounts = accounts.clone();
            ChildSpec::new(AUTH_NAME, Restart::Permanent, move |sup| {
                let (cfg, store, provider) = (cfg.clone(), store.clone(), provider.clone());
                let accounts = accounts.clone();
                async move {
                    let (handle, _) = auth::spawn_named_auth(
                        cfg,
                        store,
                        accounts,
                        provider,
                        Some(sup),
                        Some(AUTH_NAME.into()),
                    )
                    .await
                    .map_err(|e| SpawnErr::StartupFailed(e.to_string().into()))?;
                    handle
                        .actor()
                        .map(|actor| actor.get_cell())
                        .ok_or_else(|| SpawnErr::StartupFailed("auth stopped at start".into()))
                }
            })
        };

        // Membership starts first and stops last, so that peers see this
        // node leave only after its clients have been drained.
        let (membership_spec, cluster) = match &config.cluster {
            Some(cluster_config) => {
                let (view, handle) =
                    cluster::membership::view_channel(&config.name, &cluster_config.heartbeat);
                let args = cluster::MembershipArgs {
                    this: config.name.clone(),
                    config: cluster_config.clone(),
                    view,
                    data: Some(Arc::new(offline_queue::dispatch)),
                    presence: Some(Arc::new(|from: &str, bytes: Vec<u8>| {
                        presence::dispatch(PRESENCE_NAME, from, bytes)
                    })),
                    layout: cluster::Layout::of(cluster_config)
                        .with("fragments", config.fragments.to_string()),
                };
                let spec = ChildSpec::new(MEMBERSHIP_NAME, Restart::Permanent, move |sup| {
                    let args = args.clone();
                    async move {
                        let actor = cluster::membership::spawn(args, Some(sup))
                            .await
                            .map_err(|e| SpawnErr::StartupFailed(e.to_string().into()))?;
                        Ok(actor.get_cell())
                    }
                });
                (Some(spec), Some(handle))
            }
            None => (None, None),
        };

        let fragment_cluster = match (&config.cluster, &cluster) {
            (Some(cluster_config), Some(handle)) => Some(offline_queue::FragmentCluster {
                handle: handle.clone(),
                islands: router::Islands::new(cluster_config.islands.clone()),
                policy: cluster_config.ack_policy,
                nodes: cluster_config.nodes.len(),
            }),
            _ => None,
        };

        let presence_spec = {
            let args = PresenceArgs {
                config: config.presence_config(),
                flush_every: Duration::from_millis(config.presence.flush_ms),
                cluster: cluster.clone(),
            };
            ChildSpec::new(PRESENCE_NAME, Restart::Permanent, move |sup| {
                let args = args.clone();
                async move {
                    let (actor, _) =
                        Actor::spawn_linked(Some(PRESENCE_NAME.into()), PresenceActor, args, sup)
                            .await?;
                    Ok(actor.get_cell())
                }
            })
        };

        // A restarted fragment has forgotten who is attached: ask the
        // sessions of its users to attach again.
        let on_fragment_start: offline_queue::actor::OnFragmentStart = Arc::new(|fragment| {
            tokio::spawn(async move {
                if let Some(cell) = ractor::registry::where_is(SESSIONS_NAME) {
                    let sessions: ActorRef<SupervisorMsg> = cell.into();
                    broadcast_to_sessions(&sessions, || SessionMsg::Reattach(fragment)).await;
                }
            });
        });
        let fragment_children = (0..config.fragments)
            .map(|id| {
                let args = FragmentArgs {
                    id,
                    placement,
                    config: config.fragment_config(),
                    store: store.clone(),
                    on_start: Some(on_fragment_start.clone()),
                    cluster: fragment_cluster.clone(),
                };
                ChildSpec::new(fragment_name(id), Restart::Permanent, move |sup| {
                    let args = args.clone();
                    async move {
                        let (actor, _) = Actor::spawn_linked(
                            Some(fragment_name(args.id)),
                            FragmentActor,
                            args,
                            sup,
                        )
                        .await?;
                        Ok(actor.get_cell())
                    }
                })
            })
            .collect();

        let extension_children = self
            .extensions
            .into_iter()
            .map(|entry| {
                let ctx = ExtensionContext {
                    actor_name: extension_actor_name(&entry.namespace),
                    namespace: entry.namespace.clone(),
                    fragments: fragments.clone(),
                    node_name: config.name.clone(),
                };
                let start = entry.start;
                ChildSpec::new(
                    format!("extension {}", entry.namespace),
                    Restart::Permanent,
                    move |sup| start(ctx.clone(), sup),
                )
            })
            .collect();

        // Sessions resolve the supervised auth actor by name, so restarts are followed.
        let auth_handle = auth::AuthHandle::named(AUTH_NAME, &config.auth, store.clone(), accounts);
        let admin_auth = auth_handle.clone();

        let session_config = config.session_config();
        let attach_timeout = session_config.request_timeout;
        let ctx = SessionContext {
            admission: session::admission::Admission::new(session_config.admission_limits()),
            config: session_config,
            node_name: config.name.clone(),
            services: Arc::new(NodeServices {
                auth: auth_handle,
                fragments: fragments.clone(),
                presence: PRESENCE_NAME.into(),
                presence_policies: presence::PolicyStore::new(store.clone()),
                attach_timeout,
            }),
        };
        let listener_spec = |name: &'static str, socket: Arc<std::net::TcpListener>, transport| {
            let (tls, ctx) = (tls.clone(), ctx.clone());
            ChildSpec::new(name, Restart::Permanent, move |sup| {
                let (socket, tls, ctx) = (socket.clone(), tls.clone(), ctx.clone());
                async move {
                    let sessions = ractor::registry::where_is(SESSIONS_NAME)
                        .map(ActorRef::<SupervisorMsg>::from)
                        .ok_or_else(|| SpawnErr::StartupFailed("no session supervisor".into()))?;
                    let args = ListenerArgs {
                        socket,
                        transport,
                        tls,
                        ctx,
                        sessions,
                    };
                    let (actor, _) =
                        Actor::spawn_linked(Some(name.into()), ListenerActor, args, sup).await?;
                    Ok(actor.get_cell())
                }
            })
        };
        let mut listeners = vec![listener_spec(LISTENER_NAME, socket, Transport::Tls)];
        if let Some((ws_socket, _)) = websocket {
            listeners.push(listener_spec(
                WEBSOCKET_LISTENER_NAME,
                ws_socket,
                Transport::WebSocket,
            ));
        }

        let root_args = SupervisorArgs {
            children: membership_spec
                .into_iter()
                .chain([
                    auth_spec,
                    presence_spec,
                    supervisor_spec(
                        "fragments",
                        SupervisorArgs {
                            children: fragment_children,
                            intensity: Intensity::default(),
                            concurrent_shutdown: true,
                        },
                    ),
                    supervisor_spec(
                        "extensions",
                        SupervisorArgs {
                            children: extension_children,
                            intensity: Intensity::default(),
                            concurrent_shutdown: false,
                        },
                    ),
                    supervisor_spec(
                        SESSIONS_NAME,
                        SupervisorArgs {
                            children: Vec::new(),
                            // Sessions are temporary: they are never restarted,
                            // so this only bounds pathological start failures.
                            intensity: Intensity::default(),
                            concurrent_shutdown: true,
                        },
                    ),
                ])
                .chain(listeners)
                .collect(),
            intensity: Intensity {
                max_restarts: 5,
                within: Duration::from_secs(30),
            },
            concurrent_shutdown: false,
        };
        let health = Health::new(
            store.clone(),
            match (&config.cluster, &cluster) {
                (Some(c), Some(handle)) => Some(ClusterReadiness {
                    handle: handle.clone(),
                    peers: c.nodes.len().saturating_sub(1),
                    owns_fragments: c.islands.iter().any(|pair| pair.contains(&config.name)),
                    partner: c.islands.iter().find_map(|[a, b]| {
                        if *a == config.name {
                            Some(b.clone())
                        } else if *b == config.name {
                            Some(a.clone())
                        } else {
                            None
                        }
                    }),
                }),
                _ => None,
            },
        );
        crate::health::watch_disk(
            store.clone(),
            config.data_dir.clone(),
            config.storage.clone(),
        );
        leave_cluster_when_broken(store.clone(), cluster.is_some());
        if let Some(listen) = &config.metrics.listen {
            crate::telemetry::start(
                listen,
                store.clone(),
                fragments.clone(),
                config.fragments,
                health.clone(),
            )?;
        }
        let (root, root_handle) = Actor::spawn(Some("root".into()), Supervisor, root_args)
            .await
            .map_err(|e| NodeError::Startup(e.to_string()))?;
        if let Some(handle) = &cluster {
            relay_peer_changes(handle.watch(), fragments.clone());
        }
        crate::admin::serve(
            &config.admin.socket_path(&config.data_dir),
            crate::admin::AdminContext {
                node: config.name.clone(),
                started: std::time::Instant::now(),
                data_dir: config.data_dir.clone(),
                health: health.clone(),
                store: store.clone(),
                fragments: fragments.clone(),
                fragment_count: config.fragments,
                cluster: match (&config.cluster, &cluster) {
                    (Some(c), Some(handle)) => Some(crate::admin::AdminCluster {
                        handle: handle.clone(),
                        nodes: c.nodes.iter().map(|n| n.name.clone()).collect(),
                        islands: c.islands.clone(),
                    }),
                    _ => None,
                },
                auth: admin_auth,
                presence: PRESENCE_NAME,
                sessions: SESSIONS_NAME,
                root: root.clone(),
            },
        )?;
        tracing::info!(node = %config.name, listen = %local_addr, data = %config.data_dir.display(),
            fragments = config.fragments, "node started");
        Ok(Node {
            config,
            root,
            root_handle,
            store,
            local_addr,
            websocket_addr,
            certificate,
            cluster,
            health,
            tls: reloadable,
        })
    }
}

/// How long a node with a broken store lingers after leaving its cluster
/// before [`Node::failed`] resolves: its partners see the links close at
/// once, and meanwhile its clients get a clear refusal and its probes say
/// 503 (an orchestrator polling them sees why the node went away).
pub const BROKEN_STORE_GRACE: Duration = Duration::from_secs(2);

/// Once the store breaks, leaves the cluster (stops heartbeats, closes the
/// links) so that the partner takes this node's fragments over now rather
/// than after the heartbeat timeout, or never (a node whose links stay up
/// is not down).
fn leave_cluster_when_broken(store: Store, clustered: bool) {
    tokio::spawn(async move {
        let reason = store.broken().await;
        tracing::error!(error = %reason,
            "the store failed: refusing new messages, leaving the cluster, exiting for a restart");
        metrics::counter!("switchboard_storage_broken_total").increment(1);
        if clustered && !cluster::membership::request_withdraw(&reason) {
            tracing::warn!("no membership actor to leave the cluster through");
        }
    });
}

/// Tells the presence actor and every fragment actor when a peer comes up
/// or goes down.
fn relay_peer_changes(
    mut view: tokio::sync::watch::Receiver<cluster::ClusterView>,
    fragments: FragmentDirectory,
) {
    tokio::spawn(async move {
        let mut known = view.borrow_and_update().up.clone();
        while view.changed().await.is_ok() {
            let now = view.borrow_and_update().up.clone();
            let events: Vec<(bool, String)> = now
                .difference(&known)
                .map(|p| (true, p.clone()))
                .chain(known.difference(&now).map(|p| (false, p.clone())))
                .collect();
            for (up, peer) in events {
                if let Some(cell) = ractor::registry::where_is(PRESENCE_NAME) {
                    let presence: ActorRef<presence::PresenceMsg> = cell.into();
                    let message = if up {
                        presence::PresenceMsg::PeerUp(peer.clone())
                    } else {
                        presence::PresenceMsg::PeerDown(peer.clone())
                    };
                    let _ = presence.send_message(message);
                }
                for id in 0..fragments.placement().fragments() {
                    if let Ok(fragment) = fragments.get(id) {
                        let message = if up {
                            FragmentMsg::PeerUp(peer.clone())
                        } else {
                            FragmentMsg::PeerDown(peer.clone())
                        };
                        let _ = fragment.send_message(message);
                    }
                }
            }
            known = now;
        }
    });
}

impl Node {
    /// The client listen address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The WebSocket listen address actually bound, if enabled.
    pub fn websocket_addr(&self) -> Option<SocketAddr> {
        self.websocket_addr
    }

    /// The certificate clients must trust.
    pub fn certificate(&self) -> &NodeCertificate {
        &self.certificate
    }

    /// The configuration in force.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The cluster membership, when the node is part of a cluster.
    pub fn cluster(&self) -> Option<&cluster::ClusterHandle> {
        self.cluster.as_ref()
    }

    /// The node's database.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The client-facing certificate's handle: its
    /// [`reload`](crate::tls::ReloadableCertificate::reload) reads the
    /// certificate and key files again (after a renewal; `switchboard node`
    /// does it on SIGHUP): new connections get the new pair, open ones keep
    /// theirs, and on an error the pair in use stays.
    pub fn certificate_reloader(&self) -> Arc<crate::tls::ReloadableCertificate> {
        Arc::clone(&self.tls)
    }

    /// The supervisor of the client sessions.
    pub fn sessions(&self) -> Option<ActorRef<SupervisorMsg>> {
        ractor::registry::where_is(SESSIONS_NAME).map(ActorRef::from)
    }

    /// Resolves when the root supervisor stops (a fatal fault).
    pub async fn stopped(&mut self) {
        let _ = (&mut self.root_handle).await;
    }

    /// Stops accepting connections on every listener (TLS and WebSocket);
    /// connections already open are served on. The first step of a drain.
    pub async fn stop_listening(&self) {
        stop_listening(&self.root).await;
    }

    /// Resolves with the I/O error once the store has failed and the node
    /// has left its cluster ([`BROKEN_STORE_GRACE`] after the failure). The
    /// node cannot store anything more in this process: the caller should
    /// shut it down and exit non-zero, for its supervisor to restart it.
    /// The future holds no borrow of the node, so that it can be awaited
    /// beside [`Node::stopped`].
    pub fn failed(&self) -> impl Future<Output = String> + Send + 'static {
        let store = self.store.clone();
        async move {
            let reason = store.broken().await;
            tokio::time::sleep(BROKEN_STORE_GRACE).await;
            reason
        }
    }

    /// Drains and stops: no new connections, every client told to reconnect
    /// later, then the services stop bottom-up and storage is flushed.
    pub async fn shutdown(self) {
        tracing::info!("shutting down");
        drain_clients(&self.root, &self.health, SESSIONS_NAME).await;
        if let Some(sessions) = self.sessions() {
            let deadline = tokio::time::Instant::now() + session::actor::CLOSE_GRACE;
            while tokio::time::Instant::now() < deadline {
                match ractor::call_t!(sessions, SupervisorMsg::Children, 1000) {
                    Ok(children) if !children.is_empty() => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    _ => break,
                }
            }
        }
        self.root.stop(None);
        let _ = self.root_handle.await;
        if let Err(e) = self.store.flush().await {
            tracing::error!(error = %e, "final flush failed");
        }
        // The admin socket goes with the node (a copy of the data directory
        // made now has nothing but files).
        let _ = std::fs::remove_file(self.config.admin.socket_path(&self.config.data_dir));
        tracing::info!("stopped");
    }
}

/// Stops accepting connections on every listener (TLS and WebSocket).
async fn stop_listening(root: &ActorRef<SupervisorMsg>) {
    // Terminated through the root, which would restart a listener merely
    // stopped (they are permanent children).
    for listener in [LISTENER_NAME, WEBSOCKET_LISTENER_NAME] {
        let terminated = ractor::call_t!(
            root,
            SupervisorMsg::TerminateChild,
            5_000,
            listener.to_owned()
        );
        if let Err(e) = terminated {
            tracing::warn!(listener, error = %e, "could not stop a listener");
        }
    }
}

/// The client half of a drain, for a shutdown and for `switchboard admin
/// drain`: not ready from now on, no new connections, and every client told
/// to reconnect (to another node) now. Returns how many were told. The
/// fragments are served on until the node stops.
pub(crate) async fn drain_clients(
    root: &ActorRef<SupervisorMsg>,
    health: &Health,
    sessions: &str,
) -> usize {
    health.set_draining();
    stop_listening(root).await;
    let Some(sessions) = ractor::registry::where_is(sessions).map(ActorRef::from) else {
        return 0;
    };
    let told = broadcast_to_sessions(&sessions, || {
        SessionMsg::Close(proto::CloseReason::ShuttingDown)
    })
    .await;
    tracing::info!(sessions = told, "draining: told clients to reconnect");
    told
}
