//! Cluster membership for Switchboard nodes.
//!
//! Every node runs a `ractor_cluster` node server and a membership actor
//! that links it to every configured peer over mutually authenticated TLS,
//! heartbeats the peers itself (ractor_cluster notices no silent peer and
//! never redials), and publishes which peers are up. Only one actor per node
//! is reachable from other nodes: its inbox, whose messages are versioned
//! byte envelopes (`wire.rs`).
//!
//! Links come in through this crate's own accept loop (`accept.rs`: a
//! handshake deadline, limits on unfinished handshakes), not through
//! ractor_cluster's listener, and every link's incoming bytes pass a guard
//! (`link.rs`) that holds the peer to the name on its certificate.

pub mod accept;
mod config;
mod error;
mod layout;
pub mod link;
pub mod membership;
pub mod peers;
pub mod tls;
pub mod wire;

pub use config::{
    AcceptConfig, AckPolicy, ClusterConfig, ClusterNode, HeartbeatConfig, LinkTlsConfig,
};
pub use error::{ClusterError, Result};
pub use layout::Layout;
pub use membership::{ClusterHandle, ClusterView, MembershipArgs, MembershipMsg};
