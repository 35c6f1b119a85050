//! The node's configuration: embedded defaults, then a TOML file, then
//! `SWITCHBOARD_*` environment variables (nested keys joined by `__`, e.g.
//! `SWITCHBOARD_LIMITS__MAX_CONNECTIONS=50000`), then command-line overrides.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::{NodeError, Result};

/// Everything a node needs to run. Every field has a default, so a node runs
/// with no file at all.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// The node's name, in logs and in `Welcome`.
    pub name: String,
    /// Client TLS listen address.
    pub listen: String,
    /// WebSocket (over TLS) listen address for browsers; off when absent.
    pub websocket_listen: Option<String>,
    /// Where the database, certificate and development code log live.
    pub data_dir: PathBuf,
    /// Mailbox fragments; fixed when the cluster is created.
    pub fragments: u16,
    /// The client-facing certificate.
    pub tls: TlsConfig,
    /// Connection and message limits.
    pub limits: LimitsConfig,
    /// Registration and tokens.
    pub auth: auth::AuthConfig,
    /// Presence and typing.
    pub presence: PresenceSettings,
    /// The embedded database.
    pub storage: StorageSettings,
    /// Operator tools.
    pub admin: AdminSettings,
    /// Prometheus metrics.
    pub metrics: MetricsSettings,
    /// Membership of a cluster; absent, the node runs alone.
    pub cluster: Option<cluster::ClusterConfig>,
}

/// Prometheus metrics, off by default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// Serve `/metrics` on this address (e.g. 127.0.0.1:9100).
    pub listen: Option<String>,
}

/// Operator tools: the admin channel, and test users (off by default).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    /// The admin channel's Unix socket (`switchboard admin status`, ...);
    /// default `<data_dir>/admin.sock`. Only the node's user and root may
    /// use it.
    pub socket: Option<PathBuf>,
    /// Allow `MintTestUsers` (bulk test users for load tests, no SMS).
    /// Never enable on a node that real users reach.
    pub mint_test_users: bool,
    /// The secret `MintTestUsers` must present (at least 16 characters).
    pub secret: String,
    /// Test users are minted only for numbers starting with this (default
    /// +15550: +1 555 0xx xxxx, a range no subscriber can have, see
    /// [`session::DEFAULT_TEST_NUMBER_PREFIX`]).
    pub test_number_prefix: String,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            socket: None,
            mint_test_users: false,
            secret: String::new(),
            test_number_prefix: session::DEFAULT_TEST_NUMBER_PREFIX.to_owned(),
        }
    }
}

impl AdminSettings {
    /// Where the admin socket is for a node keeping its data in `data_dir`.
    pub fn socket_path(&self, data_dir: &std::path::Path) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| data_dir.join(crate::admin::SOCKET_FILE))
    }
}

/// Secrets published in this repository's examples (deploy/, README,
/// docs): a node configured with one of them refuses to start, since anyone
/// can read them. Values starting with `example-` or `change-me` are
/// refused too.
const PUBLISHED_SECRETS: &[&str] = &[
    "example-admin-secret",
    "example-token-key-replace-me-with-a-long-random-secret",
    "example-cluster-cookie",
    "change-me-to-a-long-random-secret-shared-by-all-nodes",
    "a-shared-secret-of-16+-chars",
];

/// Whether `value` is a secret from the examples.
fn is_published_secret(value: &str) -> bool {
    let value = value.trim();
    PUBLISHED_SECRETS.contains(&value)
        || value.starts_with("example-")
        || value.starts_with("change-me")
}

/// Certificate and key files; when absent a self-signed pair is generated
/// into `<data_dir>/tls/` on first run.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
}

/// Limits on connections and messages.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest frame, length prefix excluded.
    pub max_frame_bytes: u32,
    /// Largest message payload.
    pub max_payload_bytes: u32,
    /// Connections held at once, on every listener (TLS and WebSocket).
    pub max_connections: usize,
    /// Of those, connections not logged in yet (guests).
    pub max_guest_connections: usize,
    /// Connections from one source (an IPv4 address or an IPv6 /64).
    pub max_connections_per_source: usize,
    /// Guests from one source.
    pub max_guests_per_source: usize,
    /// Seconds a new connection has to say hello.
    pub hello_timeout_secs: u64,
    /// Seconds a new connection has to log in.
    pub login_timeout_secs: u64,
    /// Seconds to finish a frame once its first byte arrived.
    pub frame_timeout_secs: u64,
    /// Frames queued for one client before it is disconnected as too slow.
    pub outbound_queue: usize,
    /// Requests one client may have in flight.
    pub max_in_flight_requests: usize,
    /// Seconds of silence before a connection is closed. Clients ping at a
    /// third of it, so it sets the keepalive traffic of idle connections:
    /// 180 s (a ping a minute) keeps 19,500 idle connections under 1 % of a
    /// core here, and a phone's radio asleep longer.
    pub idle_timeout_secs: u64,
    /// Mailbox entries pushed to a device before it acknowledges them.
    pub delivery_window: usize,
    /// Days a `(sender, client_msg_id)` is remembered to drop resends.
    pub dedupe_retention_days: u64,
    /// Undelivered messages one mailbox may hold.
    pub max_mailbox_entries: u32,
    /// Their payload bytes.
    pub max_mailbox_bytes: u64,
    /// Undelivered messages from one sender in one mailbox.
    pub max_mailbox_entries_per_sender: u32,
    /// Their payload bytes.
    pub max_mailbox_bytes_per_sender: u64,
    /// Days an entry waits undelivered before it is dropped.
    pub undelivered_expiry_days: u64,
    /// Messages per second one connection may send; faster senders are
    /// slowed (their socket is read more slowly), never refused.
    pub max_sends_per_sec: f64,
    /// Messages one connection may send at once above that rate.
    pub send_burst: f64,
    /// Ack and read-receipt frames per second one connection may send
    /// (each costs its fragment work); faster clients are slowed.
    pub max_acks_per_sec: f64,
    /// Ack and read-receipt frames one connection may send at once above
    /// that rate.
    pub ack_burst: f64,
    /// Most members of a group, its creator included.
    pub max_group_members: u32,
}

/// Presence settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceSettings {
    /// Typing events per sender per window.
    pub typing_per_window: u32,
    /// The typing window in milliseconds.
    pub typing_window_ms: u64,
    /// Users one client may watch (a longer `SubscribePresence` is refused).
    pub max_watched: usize,
    /// Contacts one user may upload (a longer `SetContacts` is refused).
    pub max_contacts: usize,
    /// Presence requests (subscribe, set contacts, set privacy) per second
    /// per connection; beyond the burst they are refused as `RateLimited`.
    pub requests_per_sec: f64,
    /// Presence requests a connection may send in a burst above the rate.
    pub request_burst: f64,
    /// How often batched updates go out, in milliseconds.
    pub flush_ms: u64,
}

/// Storage settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSettings {
    /// redb page cache in MiB.
    pub cache_mib: usize,
    /// The least time in microseconds from one group commit's start to the
    /// next's: commits that follow each other closely wait this long to
    /// share their fixed cost; a message after a quiet spell is committed
    /// at once. 0 commits as soon as the previous commit ends.
    pub commit_interval_us: u64,
    /// The longest time in milliseconds between durable database commits
    /// while messages come in. Between them mailbox writes are made durable
    /// by the storage journal (`data_dir/journal`, one append and one sync
    /// per group commit) and kept in memory by the database, so a message
    /// delivered before the next checkpoint never reaches the database
    /// file. A checkpoint holds the writer for its sync (~20-40 ms here),
    /// so it comes seldom. 0 turns the journal off: every group commit is
    /// a durable database commit (a journal left by an earlier run is
    /// still replayed first).
    pub checkpoint_interval_ms: u64,
    /// With the journal, new mailbox rows (entries, dedupe keys, delivered
    /// marks) stay in memory this many milliseconds before a group commit
    /// writes them into the database: a message delivered sooner never
    /// touches its B-trees. Longer saves more writer CPU but makes each
    /// such write (and its pause of the writer) larger.
    pub stage_interval_ms: u64,
    /// New messages are refused (`Unavailable`, retry later) while free
    /// disk under the data directory is below the smaller of this many MiB
    /// and `min_free_percent` of the filesystem. 0 turns the check off.
    pub min_free_mib: u64,
    /// See `min_free_mib`.
    pub min_free_percent: f64,
}

impl StorageSettings {
    /// The free-disk threshold in bytes for a filesystem of `total` bytes:
    /// the smaller of the two settings, so that a small disk is not refused
    /// for good by a threshold meant for a large one.
    pub fn min_free_bytes(&self, total: u64) -> u64 {
        let by_percent = (total as f64 * self.min_free_percent / 100.0) as u64;
        (self.min_free_mib.saturating_mul(1024 * 1024)).min(by_percent)
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            name: "switchboard-1".into(),
            listen: "127.0.0.1:5222".into(),
            websocket_listen: None,
            data_dir: PathBuf::from("./switchboard-data"),
            fragments: 256,
            tls: TlsConfig::default(),
            limits: LimitsConfig::default(),
            auth: auth::AuthConfig::default(),
            presence: PresenceSettings::default(),
            storage: StorageSettings::default(),
            admin: AdminSettings::default(),
            metrics: MetricsSettings::default(),
            cluster: None,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: proto::DEFAULT_MAX_FRAME_BYTES,
            max_payload_bytes: 60 * 1024,
            max_connections: 100_000,
            outbound_queue: 1024,
            max_in_flight_requests: 256,
            idle_timeout_secs: 180,
            max_guest_connections: 10_000,
            max_connections_per_source: 10_000,
            max_guests_per_source: 1_000,
            hello_timeout_secs: 10,
            login_timeout_secs: 60,
            frame_timeout_secs: 30,
            delivery_window: 256,
            dedupe_retention_days: 7,
            max_mailbox_entries: 10_000,
            max_mailbox_bytes: 100 * 1024 * 1024,
            max_mailbox_entries_per_sender: 1_000,
            max_mailbox_bytes_per_sender: 10 * 1024 * 1024,
            undelivered_expiry_days: 30,
            max_sends_per_sec: 500.0,
            send_burst: 1000.0,
            max_acks_per_sec: 200.0,
            ack_burst: 400.0,
            max_group_members: 1024,
        }
    }
}

impl Default for PresenceSettings {
    fn default() -> Self {
        let core = presence::PresenceConfig::default();
        Self {
            typing_per_window: core.typing_per_window,
            typing_window_ms: core.typing_window_ms,
            max_watched: core.max_watched,
            max_contacts: core.max_contacts,
            requests_per_sec: 1.0,
            request_burst: 20.0,
            flush_ms: 100,
        }
    }
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            cache_mib: 64,
            commit_interval_us: 2000,
            checkpoint_interval_ms: 5000,
            stage_interval_ms: 200,
            min_free_mib: 1024,
            min_free_percent: 5.0,
        }
    }
}

/// The top-level keys of [`NodeConfig`]: other `SWITCHBOARD_*` variables
/// (such as the CLI's `SWITCHBOARD_PROFILE`) are not node settings.
const NODE_KEYS: &[&str] = &[
    "NAME",
    "LISTEN",
    "WEBSOCKET_LISTEN",
    "DATA_DIR",
    "FRAGMENTS",
    "TLS__",
    "LIMITS__",
    "AUTH__",
    "PRESENCE__",
    "STORAGE__",
    "ADMIN__",
    "METRICS__",
    "CLUSTER__",
];

fn node_environment(vars: impl Iterator<Item = (String, String)>) -> config::Map<String, String> {
    vars.filter(|(key, _)| {
        key.strip_prefix("SWITCHBOARD_").is_some_and(|rest| {
            NODE_KEYS.iter().any(|k| {
                if k.ends_with("__") {
                    rest.starts_with(k)
                } else {
                    rest == *k
                }
            })
        })
    })
    .collect()
}

impl NodeConfig {
    /// Defaults, then `file` if given, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self> {
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            if !file.exists() {
                return Err(NodeError::Config(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            builder = builder.add_source(
                config::File::from(file.to_path_buf()).format(config::FileFormat::Toml),
            );
        }
        builder = builder.add_source(
            config::Environment::with_prefix("SWITCHBOARD")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(node_environment(std::env::vars()))),
        );
        let raw = builder
            .build()
            .map_err(|e| NodeError::Config(e.to_string()))?;
        let config: NodeConfig = raw
            .try_deserialize()
            .map_err(|e| NodeError::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that would otherwise fail later and obscurely.
    pub fn validate(&self) -> Result<()> {
        let fail = |m: String| Err(NodeError::Config(m));
        if self.fragments == 0 {
            return fail("fragments must be at least 1".into());
        }
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return fail(format!(
                "listen = {:?} is not an address like 127.0.0.1:5222",
                self.listen
            ));
        }
        if let Some(ws) = &self.websocket_listen
            && ws.parse::<std::net::SocketAddr>().is_err()
        {
            return fail(format!(
                "websocket_listen = {ws:?} is not an address like 127.0.0.1:5280"
            ));
        }
        if let Some(cluster) = &self.cluster {
            cluster
                .validate(&self.name)
                .map_err(|e| NodeError::Config(e.to_string()))?;
            if cluster.nodes.len() > 1 && self.auth.token_key.is_none() {
                return fail(
                    "a cluster needs auth.token_key (the same on every node), so that a \
                     client's token works on whichever node it reaches"
                        .into(),
                );
            }
        }
        let pct = self.storage.min_free_percent;
        if !(0.0..=100.0).contains(&pct) {
            return fail(format!(
                "storage.min_free_percent = {pct} must be between 0 and 100"
            ));
        }
        let l = &self.limits;
        // A stored receipt names up to 256 ids (about 2.6 KB encoded).
        if l.max_frame_bytes < 4096 {
            return fail("limits.max_frame_bytes must be at least 4096".into());
        }
        if l.max_payload_bytes + 1024 > l.max_frame_bytes {
            return fail(format!(
                "limits.max_payload_bytes ({}) must leave 1024 bytes of the frame ({}) for headers",
                l.max_payload_bytes, l.max_frame_bytes
            ));
        }
        if l.max_connections == 0 || l.outbound_queue < 16 || l.max_in_flight_requests == 0 {
            return fail(
                "limits: max_connections and max_in_flight_requests must be > 0, outbound_queue >= 16"
                    .into(),
            );
        }
        if l.delivery_window == 0 || l.delivery_window + 16 > l.outbound_queue {
            return fail(format!(
                "limits.delivery_window ({}) must be > 0 and leave room in outbound_queue ({})",
                l.delivery_window, l.outbound_queue
            ));
        }
        if !(l.max_sends_per_sec > 0.0 && l.send_burst >= 1.0) {
            return fail("limits.max_sends_per_sec must be > 0 and limits.send_burst >= 1".into());
        }
        if !(l.max_acks_per_sec > 0.0 && l.ack_burst >= 1.0) {
            return fail("limits.max_acks_per_sec must be > 0 and limits.ack_burst >= 1".into());
        }
        let p = &self.presence;
        if !(p.requests_per_sec > 0.0 && p.request_burst >= 1.0) {
            return fail(
                "presence.requests_per_sec must be > 0 and presence.request_burst >= 1".into(),
            );
        }
        if l.max_guest_connections == 0
            || l.max_connections_per_source == 0
            || l.max_guests_per_source == 0
        {
            return fail(
                "limits: max_guest_connections, max_connections_per_source and \
                 max_guests_per_source must be > 0"
                    .into(),
            );
        }
        if l.hello_timeout_secs == 0
            || l.login_timeout_secs < l.hello_timeout_secs
            || l.frame_timeout_secs == 0
        {
            return fail(
                "limits: hello_timeout_secs and frame_timeout_secs must be > 0, and \
                 login_timeout_secs at least hello_timeout_secs"
                    .into(),
            );
        }
        if l.max_mailbox_entries_per_sender == 0
            || l.max_mailbox_entries < l.max_mailbox_entries_per_sender
            || u64::from(l.max_payload_bytes) > l.max_mailbox_bytes_per_sender
            || l.max_mailbox_bytes < l.max_mailbox_bytes_per_sender
        {
            return fail(
                "limits: a mailbox must hold at least what one sender may hold there \
                 (max_mailbox_entries >= max_mailbox_entries_per_sender > 0, max_mailbox_bytes \
                 >= max_mailbox_bytes_per_sender >= max_payload_bytes)"
                    .into(),
            );
        }
        if l.undelivered_expiry_days == 0 {
            return fail("limits.undelivered_expiry_days must be at least 1".into());
        }
        if l.max_group_members < 2 {
            return fail("limits.max_group_members must be at least 2".into());
        }
        if l.idle_timeout_secs < 3 {
            return fail("limits.idle_timeout_secs must be at least 3".into());
        }
        if self.admin.mint_test_users && self.admin.secret.len() < 16 {
            return fail(
                "admin.mint_test_users needs admin.secret of at least 16 characters".into(),
            );
        }
        let prefix = &self.admin.test_number_prefix;
        let digits = prefix.strip_prefix('+').unwrap_or("");
        if digits.len() < 2 || digits.len() > 14 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return fail(format!(
                "admin.test_number_prefix = {prefix:?} must be + and 2 to 14 digits \
                 (a range of numbers no subscriber has, e.g. {})",
                session::DEFAULT_TEST_NUMBER_PREFIX
            ));
        }
        let secrets = [
            ("admin.secret", Some(self.admin.secret.as_str())),
            ("auth.token_key", self.auth.token_key.as_deref()),
            (
                "cluster.cookie",
                self.cluster.as_ref().map(|c| c.cookie.as_str()),
            ),
        ];
        for (key, value) in secrets {
            if value.is_some_and(is_published_secret) {
                return fail(format!(
                    "{key} is a value published in the examples; anyone can read it. \
                     Set your own random secret (e.g. `openssl rand -hex 32`), in the \
                     file or in SWITCHBOARD_{}",
                    key.to_uppercase().replace('.', "__")
                ));
            }
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return fail("tls.cert and tls.key must be given together".into());
        }
        self.auth
            .validate()
            .map_err(|e| NodeError::Config(format!("auth: {e}")))?;
        Ok(())
    }

    /// The session settings derived from the limits.
    pub fn session_config(&self) -> session::SessionConfig {
        let l = &self.limits;
        session::SessionConfig {
            max_frame_bytes: l.max_frame_bytes,
            idle_timeout: Duration::from_secs(l.idle_timeout_secs),
            max_guests: l.max_guest_connections,
            max_connections_per_source: l.max_connections_per_source,
            max_guests_per_source: l.max_guests_per_source,
            hello_timeout: Duration::from_secs(l.hello_timeout_secs),
            login_timeout: Duration::from_secs(l.login_timeout_secs),
            frame_timeout: Duration::from_secs(l.frame_timeout_secs),
            outbound_capacity: l.outbound_queue,
            max_in_flight_requests: l.max_in_flight_requests,
            max_connections: l.max_connections,
            send_rate: l.max_sends_per_sec,
            send_burst: l.send_burst,
            ack_rate: l.max_acks_per_sec,
            ack_burst: l.ack_burst,
            presence_rate: self.presence.requests_per_sec,
            presence_burst: self.presence.request_burst,
            max_watched: self.presence.max_watched,
            max_contacts: self.presence.max_contacts,
            admin_secret: self
                .admin
                .mint_test_users
                .then(|| self.admin.secret.clone()),
            test_number_prefix: self.admin.test_number_prefix.clone(),
            ..session::SessionConfig::default()
        }
    }

    /// The fragment settings derived from the limits.
    pub fn fragment_config(&self) -> offline_queue::FragmentConfig {
        offline_queue::FragmentConfig {
            window: self.limits.delivery_window,
            max_payload: self.limits.max_payload_bytes as usize,
            dedupe_retention_ms: self.limits.dedupe_retention_days * 24 * 3600 * 1000,
            mailbox: offline_queue::usage::MailboxLimits {
                max_entries: self.limits.max_mailbox_entries,
                max_bytes: self.limits.max_mailbox_bytes,
                max_entries_per_sender: self.limits.max_mailbox_entries_per_sender,
                max_bytes_per_sender: self.limits.max_mailbox_bytes_per_sender,
            },
            undelivered_ttl_ms: self.limits.undelivered_expiry_days * 24 * 3600 * 1000,
            groups: offline_queue::fragment::GroupLimits {
                max_members: self.limits.max_group_members,
                ..offline_queue::fragment::GroupLimits::default()
            },
            ..offline_queue::FragmentConfig::default()
        }
    }

    /// The presence settings.
    pub fn presence_config(&self) -> presence::PresenceConfig {
        presence::PresenceConfig {
            typing_per_window: self.presence.typing_per_window,
            typing_window_ms: self.presence.typing_window_ms,
            max_watched: self.presence.max_watched,
            max_contacts: self.presence.max_contacts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        NodeConfig::default().validate().expect("defaults");
    }

    #[test]
    fn a_file_overrides_defaults_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "name = \"n7\"\nlisten = \"127.0.0.1:6000\"\n[limits]\nmax_connections = 10\n[auth.provider]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/sms\"\n",
        )
        .expect("write");
        let config = NodeConfig::load(Some(&path)).expect("load");
        assert_eq!(config.name, "n7");
        assert_eq!(config.limits.max_connections, 10);
        assert_eq!(config.fragments, 256);
        assert!(matches!(
            config.auth.provider,
            auth::ProviderConfig::Webhook { .. }
        ));

        std::fs::write(&path, "lisen = \"127.0.0.1:6000\"\n").expect("write");
        let err = NodeConfig::load(Some(&path)).expect_err("typo refused");
        assert!(err.to_string().contains("lisen"), "{err}");
    }

    #[test]
    fn only_node_settings_are_taken_from_the_environment() {
        let vars = [
            ("SWITCHBOARD_LISTEN", "127.0.0.1:1"),
            ("SWITCHBOARD_LIMITS__MAX_CONNECTIONS", "5"),
            ("SWITCHBOARD_PROFILE", "me.toml"),
            ("SWITCHBOARD_LISTENER", "x"),
            ("PATH", "/bin"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let mut kept: Vec<String> = node_environment(vars.into_iter()).into_keys().collect();
        kept.sort();
        assert_eq!(
            kept,
            ["SWITCHBOARD_LIMITS__MAX_CONNECTIONS", "SWITCHBOARD_LISTEN"]
        );
    }

    #[test]
    fn the_example_in_deploy_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/switchboard.toml");
        let config = NodeConfig::load(Some(&path)).expect("deploy/switchboard.toml is valid");
        assert_eq!(config.listen, "0.0.0.0:5222");
    }

    #[test]
    fn invalid_values_are_explained() {
        let config = NodeConfig {
            listen: "localhost".into(),
            ..NodeConfig::default()
        };
        assert!(config.validate().is_err());
        let mut config = NodeConfig::default();
        config.limits.max_payload_bytes = config.limits.max_frame_bytes;
        assert!(config.validate().is_err());
        assert!(NodeConfig::load(Some(Path::new("/nonexistent/x.toml"))).is_err());
        let mut config = NodeConfig::default();
        config.presence.request_burst = 0.0;
        assert!(config.validate().is_err());
        let mut config = NodeConfig::default();
        config.presence.requests_per_sec = 0.0;
        assert!(config.validate().is_err());
    }

    #[test]
    fn presence_limits_reach_the_sessions_and_the_core() {
        let mut config = NodeConfig::default();
        config.presence.requests_per_sec = 2.5;
        config.presence.request_burst = 7.0;
        config.presence.max_watched = 50;
        config.presence.max_contacts = 60;
        let session = config.session_config();
        assert_eq!((session.presence_rate, session.presence_burst), (2.5, 7.0));
        assert_eq!((session.max_watched, session.max_contacts), (50, 60));
        let core = config.presence_config();
        assert_eq!((core.max_watched, core.max_contacts), (50, 60));
    }

    #[test]
    fn published_secrets_are_refused_by_name() {
        let refused = |edit: &dyn Fn(&mut NodeConfig)| {
            let mut config = NodeConfig::default();
            edit(&mut config);
            config.validate().map_err(|e| e.to_string())
        };
        type Edit<'a> = &'a dyn Fn(&mut NodeConfig);
        let cases: &[(&str, Edit)] = &[
            ("admin.secret", &|c| {
                c.admin.mint_test_users = true;
                c.admin.secret = "example-admin-secret".into();
            }),
            // Refused even with minting off: it would be turned on later.
            ("admin.secret", &|c| {
                c.admin.secret = "example-admin-secret".into()
            }),
            ("auth.token_key", &|c| {
                c.auth.token_key =
                    Some("example-token-key-replace-me-with-a-long-random-secret".into());
            }),
            ("auth.token_key", &|c| {
                c.auth.token_key =
                    Some("change-me-to-a-long-random-secret-shared-by-all-nodes".into());
            }),
        ];
        for (key, edit) in cases {
            let err = refused(*edit).expect_err(key);
            assert!(err.contains(key) && err.contains("published"), "{err}");
        }
        let ok = refused(&|c| {
            c.admin.mint_test_users = true;
            c.admin.secret = "a-secret-of-my-own-0123".into();
            c.auth.token_key = Some("k".repeat(32));
        });
        assert_eq!(ok, Ok(()));
    }

    #[test]
    fn the_example_cluster_configs_are_refused_until_their_secrets_are_replaced() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/cluster/n1.toml");
        let text = std::fs::read_to_string(&path).expect("deploy/cluster/n1.toml");
        let raw: NodeConfig = toml_config(&text);
        assert!(!raw.admin.mint_test_users, "minting is off in the examples");
        assert!(
            raw.metrics
                .listen
                .as_deref()
                .is_none_or(|l| l.starts_with("127.0.0.1:")),
            "metrics on loopback in the examples"
        );
        let err = raw.validate().expect_err("example secrets").to_string();
        assert!(err.contains("auth.token_key"), "{err}");
    }

    fn toml_config(text: &str) -> NodeConfig {
        config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .expect("parses")
    }

    #[test]
    fn test_number_prefix_is_checked() {
        for (prefix, ok) in [
            ("+15550", true),
            ("+999", true),
            ("", false),
            ("+", false),
            ("+1", false),
            ("15550", false),
            ("+1555x", false),
        ] {
            let mut config = NodeConfig::default();
            config.admin.test_number_prefix = prefix.into();
            assert_eq!(config.validate().is_ok(), ok, "{prefix:?}");
        }
    }

    #[test]
    fn a_cluster_section_parses_and_needs_a_token_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("n1.toml");
        let text = r#"
            name = "n1"
            [cluster]
            listen = "127.0.0.1:6222"
            cookie = "0123456789abcdef"
            ack_policy = "local"
            nodes = [{ name = "n1", addr = "127.0.0.1:6222" }, { name = "n2", addr = "127.0.0.2:6222" }]
            islands = [["n1", "n2"]]
            tls = { insecure_plaintext = true }
        "#;
        std::fs::write(&path, text).expect("write");
        let refused = NodeConfig::load(Some(&path)).expect_err("no auth.token_key");
        assert!(refused.to_string().contains("token_key"), "{refused}");
        std::fs::write(
            &path,
            format!("{text}\n[auth]\ntoken_key = \"{}\"\n", "k".repeat(32)),
        )
        .expect("write");
        // [auth] after [cluster] in TOML: the table header ends the cluster section.
        let config = NodeConfig::load(Some(&path)).expect("parses");
        let cluster = config.cluster.as_ref().expect("cluster section");
        assert_eq!(cluster.ack_policy, cluster::AckPolicy::Local);
        assert_eq!(cluster.islands, [["n1".to_owned(), "n2".to_owned()]]);
    }
}
