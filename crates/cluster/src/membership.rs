//! The membership actor: runs this node's `ractor_cluster` server, dials its
//! peers over TLS, heartbeats them, and publishes which are up.
//!
//! ```text
//! membership (one per node, supervised by the node's root)
//! ├── NodeServer      ractor_cluster's node sessions (its own listener is
//! │                   sealed on loopback: links come in through `accept`)
//! ├── accept loop     a task: the cluster port, handshake deadline and
//! │                   limits, then the link to NodeServer (`accept.rs`)
//! └── inbox           the node's one cluster-reachable actor (pg group
//!                     "switchboard.inbox.<name>"): decodes envelopes
//! ```
//! Rules (which peer is up, when to redial) live in `peers.rs`; this file
//! carries them out.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::{
    IncomingEncryptionMode, NodeEventSubscription, NodeServer, NodeServerMessage,
    NodeSessionMessage,
};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{ClusterConfig, HeartbeatConfig};
use crate::link::{Identity, Link};
use crate::peers::{Action, DownReason, PeerTable};
use crate::tls::{self, LinkTls};
use crate::wire::{Body, Envelope, Frame};
use crate::{ClusterError, Result};

/// A dial that has not produced a TLS link by then is abandoned.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// The process group of a node's inbox.
pub fn inbox_group(node: &str) -> String {
    format!("switchboard.inbox.{node}")
}

/// The cluster as this node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// Peers that are up (this node excluded).
    pub up: BTreeSet<String>,
}

/// When each peer was last heard: written by the membership actor, read
/// through [`ClusterHandle::heard_lately`].
type LastHeard = Arc<Mutex<HashMap<String, Instant>>>;

/// What the rest of the node holds of the cluster: its view and a way to
/// talk to peers.
#[derive(Debug, Clone)]
pub struct ClusterHandle {
    this: String,
    view: watch::Receiver<ClusterView>,
    last_heard: LastHeard,
    /// Heard within this is "lately" (half the silence that marks a peer down).
    lately: Duration,
    /// Longest a live peer can take to link again after a cut heals.
    relink: Duration,
}

impl ClusterHandle {
    /// This node's name.
    pub fn this(&self) -> &str {
        &self.this
    }

    /// Whether `peer` was heard within half the time that marks a peer
    /// down. When a node is cut off, all its peers fall silent at once but
    /// are declared down one after another; a decision taken at the first
    /// of them must not count the others as still there.
    pub fn heard_lately(&self, peer: &str) -> bool {
        self.last_heard
            .lock()
            .map(|heard| heard.get(peer).is_some_and(|t| t.elapsed() <= self.lately))
            .unwrap_or(false)
    }

    /// How long after a cut heals a live peer may still be unlinked (the
    /// longest redial wait plus the silence that marks a peer down): a node
    /// that just came back in sight of the others waits this long before
    /// it believes a peer it still cannot see is dead.
    pub fn relink_time(&self) -> Duration {
        self.relink
    }

    /// The current view.
    pub fn view(&self) -> ClusterView {
        self.view.borrow().clone()
    }

    /// A receiver that wakes on every change of the view.
    pub fn watch(&self) -> watch::Receiver<ClusterView> {
        self.view.clone()
    }

    /// Sends a body to a peer's inbox. Fails if the peer has no live link.
    pub fn send(&self, peer: &str, body: Body) -> Result<()> {
        send_frame(&self.this, peer, body)
    }
}

fn send_frame(this: &str, peer: &str, body: Body) -> Result<()> {
    let inbox = ractor::pg::get_members(&inbox_group(peer))
        .into_iter()
        .find(|cell| !cell.get_id().is_local())
        .ok_or_else(|| ClusterError::Wire(format!("no link to {peer}")))?;
    let envelope = Frame {
        from: this.to_owned(),
        body,
    }
    .encode()?;
    ActorRef::<Envelope>::from(inbox)
        .cast(envelope)
        .map_err(|e| ClusterError::Wire(format!("cannot send to {peer}: {e}")))
}

/// Messages of the membership actor (local only).
#[derive(Debug)]
pub enum MembershipMsg {
    /// Heartbeat period elapsed.
    Tick,
    /// A dial ended.
    DialDone {
        /// The peer.
        peer: String,
        /// Whether a TLS link was handed to the node server.
        ok: bool,
    },
    /// A link finished authentication and synchronisation.
    LinkReady {
        /// The peer.
        peer: String,
        /// Its node-session actor, to close the link if the peer goes silent.
        session: ActorRef<NodeSessionMessage>,
    },
    /// A link closed.
    LinkClosed {
        /// The peer.
        peer: String,
        /// Its node-session actor: a duplicate or stale link closing must
        /// not count as the closing of the link in use.
        session: ractor::ActorId,
    },
    /// A frame arrived from the peer.
    Heard {
        /// The peer.
        peer: String,
    },
    /// The peer's cluster layout arrived.
    Layout {
        /// The peer.
        peer: String,
        /// Its layout.
        layout: crate::Layout,
    },
    /// This node can no longer serve (its store failed): close every link,
    /// stop heartbeating, dialing and accepting, so that the partners see
    /// it leave at once and take its fragments over. For good: the node
    /// exits next and its supervisor starts it afresh.
    Withdraw {
        /// Why, for the log.
        reason: String,
    },
}

impl ractor::Message for MembershipMsg {}

/// Takes the `Data` bodies that arrive from peers: `(from, bytes)`. Called
/// on the inbox actor, so it must only hand the bytes on, never block.
pub type DataHandler = Arc<dyn Fn(&str, Vec<u8>) + Send + Sync>;

/// Starting arguments of the membership actor.
#[derive(Clone)]
pub struct MembershipArgs {
    /// This node's name.
    pub this: String,
    /// The `[cluster]` section.
    pub config: ClusterConfig,
    /// Where the view is published.
    pub view: ViewPublisher,
    /// Where `Data` bodies go.
    pub data: Option<DataHandler>,
    /// Where `Presence` bodies go.
    pub presence: Option<DataHandler>,
    /// What every peer must agree on (see [`crate::Layout`]).
    pub layout: crate::Layout,
}

impl std::fmt::Debug for MembershipArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MembershipArgs")
            .field("this", &self.this)
            .finish_non_exhaustive()
    }
}

/// Where the membership actor publishes what it sees.
#[derive(Debug, Clone)]
pub struct ViewPublisher {
    view: watch::Sender<ClusterView>,
    last_heard: LastHeard,
}

impl ViewPublisher {
    fn publish(&self, view: ClusterView) {
        self.view.send_replace(view);
    }

    fn heard(&self, peer: &str, now: Instant) {
        if let Ok(mut heard) = self.last_heard.lock() {
            heard.insert(peer.to_owned(), now);
        }
    }

    fn lost(&self, peer: &str) {
        if let Ok(mut heard) = self.last_heard.lock() {
            heard.remove(peer);
        }
    }
}

/// Creates the view channel and the handle for a node named `this`; pass
/// the publisher in [`MembershipArgs`].
pub fn view_channel(this: &str, heartbeat: &HeartbeatConfig) -> (ViewPublisher, ClusterHandle) {
    let (tx, rx) = watch::channel(ClusterView::default());
    let last_heard = LastHeard::default();
    let handle = ClusterHandle {
        this: this.to_owned(),
        view: rx,
        last_heard: last_heard.clone(),
        lately: heartbeat.down_after() / 2,
        relink: heartbeat.max_redial() + heartbeat.down_after(),
    };
    let publisher = ViewPublisher {
        view: tx,
        last_heard,
    };
    (publisher, handle)
}

/// Opens a link to `addr` from `from` (port chosen by the system), over TLS
/// unless links are plaintext, and hands it to the node server.
async fn dial(
    node_server: &ActorRef<NodeServerMessage>,
    from: IpAddr,
    addr: SocketAddr,
    name: &str,
    tls: Option<LinkTls>,
) -> std::result::Result<(), String> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| e.to_string())?;
    if !from.is_unspecified() && from.is_ipv4() == addr.is_ipv4() {
        socket
            .bind(SocketAddr::new(from, 0))
            .map_err(|e| format!("bind {from}: {e}"))?;
    }
    let tcp = socket.connect(addr).await.map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let local = tcp.local_addr().ok();
    // Sent from the cluster listen address (on a host with several
    // addresses, peers and firewalls see the node's own address), and
    // behind the same guard as accepted links.
    let stream: Box<dyn ractor_cluster::ClusterBidiStream> = match tls {
        Some(tls) => {
            let server_name = tls::server_name(name).map_err(|e| e.to_string())?;
            let stream = tls
                .connector
                .connect(server_name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            let certificate = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|cert| cert.clone().into_owned())
                .ok_or("TLS: no peer certificate")?;
            Box::new(Link {
                stream,
                peer: addr,
                local,
                identity: Identity::Certificate(certificate),
            })
        }
        None => Box::new(Link {
            stream: tcp,
            peer: addr,
            local,
            identity: Identity::Unverified,
        }),
    };
    ractor_cluster::client_connect_external(node_server, stream)
        .await
        .map_err(|e| e.to_string())
}

/// The membership actor.
#[derive(Debug)]
pub struct Membership;

/// Its state.
pub struct MembershipState {
    this: String,
    table: PeerTable,
    view: ViewPublisher,
    tls: Option<LinkTls>,
    /// Links are dialed from this address.
    listen_ip: IpAddr,
    node_server: ActorRef<NodeServerMessage>,
    /// The cluster port's accept loop.
    accept: JoinHandle<()>,
    inbox: ActorRef<Envelope>,
    sessions: HashMap<String, ActorRef<NodeSessionMessage>>,
    /// Set by [`MembershipMsg::Withdraw`]: nothing more is linked or sent.
    withdrawn: bool,
    layout: crate::Layout,
    /// A peer refused for its layout is refused again at every redial.
    layout_logs: log_limit::LogLimiter,
}

impl std::fmt::Debug for MembershipState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MembershipState")
            .field("this", &self.this)
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

/// Peer names in ractor_cluster are `name@host`.
fn peer_name(info: &NodeServerSessionInformation) -> Option<String> {
    let full = &info.peer_name.as_ref()?.name;
    Some(full.split('@').next().unwrap_or(full).to_owned())
}

/// Forwards ractor_cluster's session events to the membership actor.
struct LinkEvents(ActorRef<MembershipMsg>);

impl NodeEventSubscription for LinkEvents {
    fn node_session_opened(&self, _: NodeServerSessionInformation) {}

    fn node_session_authenticated(&self, _: NodeServerSessionInformation) {}

    fn node_session_ready(&self, info: NodeServerSessionInformation) {
        if let Some(peer) = peer_name(&info) {
            let _ = self.0.cast(MembershipMsg::LinkReady {
                peer,
                session: info.actor,
            });
        }
    }

    fn node_session_disconnected(&self, info: NodeServerSessionInformation) {
        if let Some(peer) = peer_name(&info) {
            let _ = self.0.cast(MembershipMsg::LinkClosed {
                peer,
                session: info.actor.get_id(),
            });
        }
    }
}

fn jitter() -> f64 {
    rand::random_range(0.5..=1.0)
}

impl Actor for Membership {
    type Msg = MembershipMsg;
    type State = MembershipState;
    type Arguments = MembershipArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<MembershipMsg>,
        args: MembershipArgs,
    ) -> std::result::Result<MembershipState, ActorProcessingErr> {
        let MembershipArgs {
            this,
            config,
            view,
            data,
            presence,
            layout,
        } = args;
        config.validate(&this)?;
        let tls = if config.tls.insecure_plaintext {
            tracing::warn!("cluster links are plain TCP (cluster.tls.insecure_plaintext)");
            None
        } else {
            Some(tls::load(&config.tls)?)
        };
        // ractor_cluster's listener cannot be turned off: it listens on a
        // loopback port of the system's choosing behind TLS nobody can pass,
        // and links come in through our own accept loop.
        let loopback = if config.listen.is_ipv6() {
            IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
        } else {
            IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        };
        let server = NodeServer::new(
            0,
            config.cookie.clone(),
            this.clone(),
            config.listen.ip().to_string(),
            Some(IncomingEncryptionMode::Tls(tls::sealed_acceptor()?)),
            Some(ractor_cluster::node::NodeConnectionMode::Isolated),
        )
        .with_listen_addr(loopback);
        let (node_server, _) = Actor::spawn_linked(None, server, (), myself.get_cell()).await?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| ClusterError::Config(format!("cluster.listen {}: {e}", config.listen)))?;
        let accept = tokio::spawn(crate::accept::run(
            listener,
            tls.as_ref().map(|tls| tls.acceptor.clone()),
            config.accept.clone(),
            node_server.clone(),
        ));
        node_server.cast(NodeServerMessage::SubscribeToEvents {
            id: "membership".into(),
            subscription: Box::new(LinkEvents(myself.clone())),
        })?;
        let (inbox, _) = Actor::spawn_linked(
            None,
            Inbox,
            InboxArgs {
                this: this.clone(),
                membership: myself.clone(),
                data,
                presence,
            },
            myself.get_cell(),
        )
        .await?;
        let peers = config.peers(&this).map(|n| (n.name.as_str(), n.addr));
        let table = PeerTable::new(&this, peers, &config.heartbeat, Instant::now());
        myself.send_interval(config.heartbeat.interval(), || MembershipMsg::Tick);
        tracing::info!(node = %this, listen = %config.listen, "cluster membership started");
        let state = MembershipState {
            this,
            table,
            view,
            tls,
            listen_ip: config.listen.ip(),
            node_server,
            accept,
            inbox,
            sessions: HashMap::new(),
            withdrawn: false,
            layout,
            layout_logs: log_limit::LogLimiter::default(),
        };
        // A restarted membership starts from "no peer up" until it hears them.
        publish(&state);
        Ok(state)
    }

    async fn post_stop(
        &self,
        _: ActorRef<MembershipMsg>,
        state: &mut MembershipState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        state.inbox.stop(None);
        state.node_server.stop(None);
        // Awaited, so that the port is free for a membership started afresh.
        state.accept.abort();
        let _ = (&mut state.accept).await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<MembershipMsg>,
        msg: MembershipMsg,
        state: &mut MembershipState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        let now = Instant::now();
        if state.withdrawn {
            if let MembershipMsg::LinkReady { session, .. } = msg {
                session.stop(Some("this node has left the cluster".into()));
            }
            return Ok(());
        }
        let actions = match msg {
            MembershipMsg::Withdraw { reason } => {
                withdraw(state, &reason);
                return Ok(());
            }
            MembershipMsg::Tick => state.table.tick(now),
            MembershipMsg::DialDone { peer, ok } => {
                state.table.dial_finished(&peer, ok, now, jitter());
                Vec::new()
            }
            MembershipMsg::LinkReady { peer, session } => {
                if !state.table.knows(&peer) {
                    tracing::warn!(%peer, "a node not in cluster.nodes linked; closing");
                    session.stop(Some("not a configured cluster node".into()));
                    return Ok(());
                }
                let link = session.get_id().pid();
                state.sessions.insert(peer.clone(), session);
                state.view.heard(&peer, now);
                state.table.link_ready(&peer, link, now)
            }
            MembershipMsg::LinkClosed { peer, session } => {
                let link = session.pid();
                if !state.table.is_link(&peer, link) {
                    // A second link to the peer (closed by ractor_cluster as
                    // a duplicate) or an old one whose closing came late:
                    // the link in use is still up.
                    tracing::debug!(%peer, "a link that is not the one in use closed");
                    return Ok(());
                }
                state.sessions.remove(&peer);
                state.view.lost(&peer);
                state.table.link_closed(&peer, link, now, jitter())
            }
            MembershipMsg::Heard { peer } => {
                if state.table.link_of(&peer).is_none() {
                    // See `PeerTable::heard`: also not heard lately.
                    return Ok(());
                }
                state.view.heard(&peer, now);
                state.table.heard(&peer, now)
            }
            MembershipMsg::Layout { peer, layout } => {
                if state.table.link_of(&peer).is_none() {
                    return Ok(());
                }
                let differences = state.layout.differences(&layout);
                if !differences.is_empty() {
                    metrics::counter!("switchboard_cluster_layout_refused_total").increment(1);
                    if state.layout_logs.allow("layout_differs").is_some() {
                        tracing::error!(%peer, differences = %differences.join("; "),
                            "cluster layout differs from this node's; the peer is refused \
                             (every node must have the same fragments, nodes, islands and ack policy)");
                    }
                } else {
                    state.view.heard(&peer, now);
                }
                state.table.layout(&peer, differences.is_empty(), now)
            }
        };
        for action in actions {
            carry_out(&myself, state, action);
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<MembershipMsg>,
        event: SupervisionEvent,
        state: &mut MembershipState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, _)
        | SupervisionEvent::ActorTerminated(cell, ..) = &event
        {
            let id = cell.get_id();
            if id == state.node_server.get_id() || id == state.inbox.get_id() {
                // Without its server or inbox this node is cut off: fail, so
                // that the supervisor starts membership afresh.
                return Err(format!("cluster child stopped: {event}").into());
            }
        }
        Ok(())
    }
}

/// Leaves the cluster for good (see [`MembershipMsg::Withdraw`]). The view
/// is left as it was: this node's own fragments must not start taking
/// anything over from partners that merely stopped hearing from it.
fn withdraw(state: &mut MembershipState, reason: &str) {
    tracing::warn!(
        reason,
        "leaving the cluster: closing every link, no more heartbeats"
    );
    metrics::counter!("switchboard_cluster_withdrawn_total").increment(1);
    state.withdrawn = true;
    state.accept.abort();
    for (peer, session) in state.sessions.drain() {
        tracing::info!(%peer, "closing the link: this node leaves the cluster");
        session.stop(Some(format!("leaving the cluster: {reason}")));
    }
}

/// Asks this process's membership actor to leave the cluster (see
/// [`MembershipMsg::Withdraw`]); false if there is none.
pub fn request_withdraw(reason: &str) -> bool {
    ractor::registry::where_is("membership")
        .map(ActorRef::<MembershipMsg>::from)
        .is_some_and(|membership| {
            membership
                .cast(MembershipMsg::Withdraw {
                    reason: reason.to_owned(),
                })
                .is_ok()
        })
}

fn carry_out(myself: &ActorRef<MembershipMsg>, state: &mut MembershipState, action: Action) {
    match action {
        Action::Dial { name, addr } => {
            let node_server = state.node_server.clone();
            let tls = state.tls.clone();
            let membership = myself.clone();
            let from = state.listen_ip;
            tokio::spawn(async move {
                let dial = dial(&node_server, from, addr, &name, tls);
                let ok = match tokio::time::timeout(DIAL_TIMEOUT, dial).await {
                    Ok(Ok(())) => true,
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %name, %addr, error = %e, "dial failed");
                        false
                    }
                    Err(_) => {
                        tracing::debug!(peer = %name, %addr, "dial timed out");
                        false
                    }
                };
                let _ = membership.cast(MembershipMsg::DialDone { peer: name, ok });
            });
        }
        Action::Ping { name } => {
            if let Err(e) = send_frame(&state.this, &name, Body::Ping { seq: 0 }) {
                tracing::debug!(peer = %name, error = %e, "ping not sent");
            }
        }
        Action::Hello { name } => {
            let layout = state.layout.clone();
            if let Err(e) = send_frame(&state.this, &name, Body::Hello { layout }) {
                tracing::debug!(peer = %name, error = %e, "layout not sent");
            }
        }
        Action::DropLink { name } => {
            if let Some(session) = state.sessions.remove(&name) {
                tracing::warn!(peer = %name, "peer silent; closing its link to redial");
                session.stop(Some("heartbeat timeout".into()));
            } else {
                // No such link here, yet the table holds one: left so,
                // nothing would ever close or redial it; it is closed.
                tracing::warn!(peer = %name, "peer silent and its link already gone; redialing");
                let link = state.table.link_of(&name).unwrap_or_default();
                let actions = state
                    .table
                    .link_closed(&name, link, Instant::now(), jitter());
                for action in actions {
                    carry_out(myself, state, action);
                }
            }
        }
        Action::Up { name } => {
            tracing::info!(peer = %name, "cluster peer up");
            metrics::counter!("switchboard_cluster_peer_up_total").increment(1);
            publish(state);
        }
        Action::Down { name, reason } => {
            let reason = match reason {
                DownReason::Silent => "silent",
                DownReason::LinkClosed => "link_closed",
                DownReason::LayoutDiffers => "layout_differs",
            };
            tracing::warn!(peer = %name, reason, "cluster peer down");
            metrics::counter!("switchboard_cluster_peer_down_total", "reason" => reason)
                .increment(1);
            publish(state);
        }
    }
}

fn publish(state: &MembershipState) {
    let up: BTreeSet<String> = state.table.up().map(str::to_owned).collect();
    metrics::gauge!("switchboard_cluster_peers_up").set(up.len() as f64);
    for peer in state.table.names() {
        let value = if up.contains(peer) { 1.0 } else { 0.0 };
        metrics::gauge!("switchboard_cluster_peer_up", "peer" => peer.to_owned()).set(value);
    }
    state.view.publish(ClusterView { up });
}

/// The node's cluster-reachable actor.
#[derive(Debug)]
struct Inbox;

struct InboxArgs {
    this: String,
    membership: ActorRef<MembershipMsg>,
    data: Option<DataHandler>,
    presence: Option<DataHandler>,
}

impl Actor for Inbox {
    type Msg = Envelope;
    type State = InboxArgs;
    type Arguments = InboxArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Envelope>,
        args: InboxArgs,
    ) -> std::result::Result<InboxArgs, ActorProcessingErr> {
        ractor::pg::join(inbox_group(&args.this), vec![myself.get_cell()]);
        Ok(args)
    }

    async fn handle(
        &self,
        _: ActorRef<Envelope>,
        envelope: Envelope,
        state: &mut InboxArgs,
    ) -> std::result::Result<(), ActorProcessingErr> {
        let frame = match Frame::decode(&envelope) {
            Ok(frame) => frame,
            Err(e) => {
                // Never fatal: a peer on another version must not take this
                // node down. Counted so that an upgrade gone wrong shows.
                tracing::warn!(error = %e, "undecodable cluster envelope dropped");
                metrics::counter!("switchboard_cluster_undecodable_total").increment(1);
                return Ok(());
            }
        };
        // Heartbeats alone prove liveness: data traffic need not cost the
        // membership actor a message each.
        if matches!(frame.body, Body::Ping { .. } | Body::Pong { .. }) {
            let _ = state.membership.cast(MembershipMsg::Heard {
                peer: frame.from.clone(),
            });
        }
        match frame.body {
            Body::Ping { seq } => {
                if let Err(e) = send_frame(&state.this, &frame.from, Body::Pong { seq }) {
                    tracing::debug!(peer = %frame.from, error = %e, "pong not sent");
                }
            }
            Body::Pong { .. } => {}
            Body::Data(bytes) => match &state.data {
                Some(handler) => handler(&frame.from, bytes),
                None => tracing::debug!(peer = %frame.from, "data with no handler dropped"),
            },
            Body::Presence(bytes) => match &state.presence {
                Some(handler) => handler(&frame.from, bytes),
                None => tracing::debug!(peer = %frame.from, "presence with no handler dropped"),
            },
            Body::Hello { layout } => {
                let _ = state.membership.cast(MembershipMsg::Layout {
                    peer: frame.from,
                    layout,
                });
            }
        }
        Ok(())
    }
}

/// Starts membership as a child of `supervisor` (or unsupervised).
pub async fn spawn(
    args: MembershipArgs,
    supervisor: Option<ActorCell>,
) -> Result<ActorRef<MembershipMsg>> {
    let spawned = match supervisor {
        Some(sup) => Actor::spawn_linked(Some("membership".into()), Membership, args, sup).await,
        None => Actor::spawn(Some("membership".into()), Membership, args).await,
    };
    spawned
        .map(|(actor, _)| actor)
        .map_err(|e| ClusterError::Spawn(e.to_string()))
}
