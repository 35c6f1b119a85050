//! The `[cluster]` section of a node's configuration, and its validation.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::{ClusterError, Result};

/// How a node joins its cluster. Absent from a node's config, the node runs
/// alone.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Where this node accepts links from its peers.
    pub listen: SocketAddr,
    /// Shared secret every node presents when a link opens (besides TLS).
    pub cookie: String,
    /// Certificates for node links.
    #[serde(default)]
    pub tls: LinkTlsConfig,
    /// Every node of the cluster, this one included.
    pub nodes: Vec<ClusterNode>,
    /// Pairs of node names that replicate each other's fragments.
    #[serde(default)]
    pub islands: Vec<[String; 2]>,
    /// Heartbeat period and failure detection.
    #[serde(default)]
    pub heartbeat: HeartbeatConfig,
    /// When a message is acknowledged to its sender.
    #[serde(default)]
    pub ack_policy: AckPolicy,
    /// Limits on links being accepted, before they are authenticated.
    #[serde(default)]
    pub accept: AcceptConfig,
}

/// Limits on connections to the cluster port that have not finished their
/// TLS handshake: anyone who can reach the port can open one.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AcceptConfig {
    /// A connection that has not finished its TLS handshake by then is
    /// closed.
    pub handshake_timeout_ms: u64,
    /// Unfinished handshakes at once from one IP address; more are closed
    /// at once.
    pub max_handshakes_per_source: u32,
    /// Unfinished handshakes at once in all.
    pub max_handshakes: u32,
}

impl Default for AcceptConfig {
    fn default() -> Self {
        Self {
            handshake_timeout_ms: 5_000,
            max_handshakes_per_source: 4,
            max_handshakes: 64,
        }
    }
}

impl AcceptConfig {
    /// The handshake deadline.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
}

/// When the server ack (one tick) is sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckPolicy {
    /// After the write is durable on the primary and on its secondary (the
    /// cluster default). With the secondary down the primary acks alone
    /// and copies the fragment to the secondary when it returns.
    #[default]
    Replicated,
    /// After the write is durable on the primary only.
    Local,
}

/// One member of the cluster as every node's config names it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterNode {
    /// The node's name (its `name` in its own config).
    pub name: String,
    /// The node's cluster listen address.
    pub addr: SocketAddr,
}

/// TLS for node links: every node presents a certificate for its own name,
/// signed by the cluster CA, and accepts only peers that do the same.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkTlsConfig {
    /// PEM certificate of this node, with its name as a subject alt name.
    pub cert: Option<PathBuf>,
    /// PEM private key of this node.
    pub key: Option<PathBuf>,
    /// PEM certificate of the cluster CA.
    pub ca: Option<PathBuf>,
    /// Plain TCP links. Only for trusted networks; never the default.
    pub insecure_plaintext: bool,
}

/// Failure detection. A peer not heard from for `down_after_ms` is down.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// How often a ping goes to every peer.
    pub interval_ms: u64,
    /// Silence after which a peer is declared down.
    pub down_after_ms: u64,
    /// Longest wait between two dials of a lost peer.
    pub max_redial_ms: u64,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self {
            interval_ms: 200,
            down_after_ms: 1_000,
            max_redial_ms: 2_000,
        }
    }
}

impl HeartbeatConfig {
    /// The ping period.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
    /// The silence that marks a peer down.
    pub fn down_after(&self) -> Duration {
        Duration::from_millis(self.down_after_ms)
    }
    /// The redial backoff cap.
    pub fn max_redial(&self) -> Duration {
        Duration::from_millis(self.max_redial_ms)
    }
}

impl ClusterConfig {
    /// Checks the config as seen by node `this`: names unique, `this` among
    /// the nodes, islands made of known nodes with each node in at most one.
    pub fn validate(&self, this: &str) -> Result<()> {
        let invalid = |reason: String| Err(ClusterError::Config(reason));
        if self.cookie.len() < 16 {
            return invalid("cluster.cookie must be at least 16 characters".into());
        }
        let mut names = BTreeSet::new();
        for node in &self.nodes {
            if node.name.is_empty() || node.name.contains('@') {
                return invalid(format!(
                    "cluster node name {:?} is empty or has '@'",
                    node.name
                ));
            }
            if !names.insert(node.name.as_str()) {
                return invalid(format!("cluster node {:?} is listed twice", node.name));
            }
        }
        if !names.contains(this) {
            return invalid(format!("this node ({this:?}) is not in cluster.nodes"));
        }
        let mut in_island = BTreeSet::new();
        for [a, b] in &self.islands {
            if a == b {
                return invalid(format!("island [{a:?}, {b:?}] needs two different nodes"));
            }
            for member in [a, b] {
                if !names.contains(member.as_str()) {
                    return invalid(format!("island member {member:?} is not in cluster.nodes"));
                }
                if !in_island.insert(member.as_str()) {
                    return invalid(format!("node {member:?} is in more than one island"));
                }
            }
        }
        if self.nodes.len() > 1 && self.islands.is_empty() {
            return invalid("a cluster of several nodes needs at least one island".into());
        }
        let hb = &self.heartbeat;
        if hb.interval_ms == 0 || hb.down_after_ms <= hb.interval_ms {
            return invalid("cluster.heartbeat.down_after_ms must exceed interval_ms > 0".into());
        }
        let accept = &self.accept;
        if accept.handshake_timeout_ms == 0
            || accept.max_handshakes_per_source == 0
            || accept.max_handshakes < accept.max_handshakes_per_source
        {
            return invalid(
                "cluster.accept needs handshake_timeout_ms > 0 and \
                 max_handshakes >= max_handshakes_per_source > 0"
                    .into(),
            );
        }
        if !self.tls.insecure_plaintext
            && (self.tls.cert.is_none() || self.tls.key.is_none() || self.tls.ca.is_none())
        {
            return invalid(
                "cluster.tls needs cert, key and ca (or insecure_plaintext = true)".into(),
            );
        }
        Ok(())
    }

    /// The other nodes.
    pub fn peers<'a>(&'a self, this: &'a str) -> impl Iterator<Item = &'a ClusterNode> + 'a {
        self.nodes.iter().filter(move |n| n.name != this)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ClusterConfig {
        toml_config(
            r#"
            listen = "127.0.0.1:6222"
            cookie = "0123456789abcdef"
            tls = { insecure_plaintext = true }
            nodes = [
              { name = "n1", addr = "127.0.0.1:6222" },
              { name = "n2", addr = "127.0.0.2:6222" },
              { name = "n3", addr = "127.0.0.3:6222" },
            ]
            islands = [["n1", "n2"]]
            "#,
        )
    }

    fn toml_config(text: &str) -> ClusterConfig {
        toml::from_str(text).expect("test config parses")
    }

    #[test]
    fn a_valid_config_passes_for_each_member() {
        let config = config();
        for name in ["n1", "n2", "n3"] {
            assert!(config.validate(name).is_ok(), "{name}");
        }
        assert_eq!(config.peers("n1").count(), 2);
    }

    #[test]
    fn a_stranger_is_refused() {
        assert!(config().validate("n9").is_err());
    }

    #[test]
    fn duplicate_names_and_bad_islands_are_refused() {
        let mut dup = config();
        dup.nodes.push(dup.nodes[0].clone());
        assert!(dup.validate("n1").is_err());

        let mut unknown = config();
        unknown.islands.push(["n3".into(), "n9".into()]);
        assert!(unknown.validate("n1").is_err());

        let mut twice = config();
        twice.islands.push(["n2".into(), "n3".into()]);
        assert!(twice.validate("n1").is_err());
    }

    #[test]
    fn tls_is_required_unless_plaintext_is_asked_for() {
        let mut config = config();
        config.tls.insecure_plaintext = false;
        assert!(config.validate("n1").is_err());
    }

    #[test]
    fn accept_limits_default_and_must_be_usable() {
        let config = config();
        assert_eq!(config.accept, AcceptConfig::default());
        assert_eq!(config.accept.handshake_timeout(), Duration::from_secs(5));
        for (timeout, per_source, total, ok) in [
            (5_000, 4, 64, true),
            (1, 1, 1, true),
            (0, 4, 64, false),
            (5_000, 0, 64, false),
            (5_000, 8, 4, false),
        ] {
            let mut config = config.clone();
            config.accept = AcceptConfig {
                handshake_timeout_ms: timeout,
                max_handshakes_per_source: per_source,
                max_handshakes: total,
            };
            assert_eq!(config.validate("n1").is_ok(), ok, "{:?}", config.accept);
        }
    }

    #[test]
    fn a_short_cookie_is_refused() {
        let mut config = config();
        config.cookie = "short".into();
        assert!(config.validate("n1").is_err());
    }
}
