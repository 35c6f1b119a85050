//! `switchboard admin`: operator tools. `status`, `user`, `revoke` and
//! `drain` ask a running node over its admin socket (see `node::admin`);
//! the others work offline or over the client port.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use node::admin::{AdminReply, AdminRequest, NodeStatus, UserReport};
use proto::PhoneNumber;

use crate::bench::mint::mint_users;

/// `switchboard admin`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, clap::Subcommand)]
enum AdminCommand {
    /// Mint tokens for numbered test users (the node must enable
    /// admin.mint_test_users); prints `PHONE TOKEN` lines.
    MintUsers(MintArgs),
    /// Create a cluster CA and a certificate for each node name, for the
    /// links between nodes (`[cluster.tls]`).
    ClusterCerts(ClusterCertsArgs),
    /// The node: readiness, cluster view, islands, fragment owners and
    /// epochs, queue lengths.
    Status(ChannelArgs),
    /// What the node knows of a user: account, mailbox depth, presence
    /// (never a message).
    User(UserArgs),
    /// Revoke every token of a user and end its connections on every node.
    Revoke(UserArgs),
    /// Before maintenance: stop taking connections, report not ready, and
    /// move every client to another node now.
    Drain(ChannelArgs),
    /// Exit 0 if the node is healthy (with --ready: serving), 1 if not: a
    /// container's health check, without the metrics listener.
    Probe(ProbeArgs),
    /// A consistent copy of a serving node's data into DIR, a new folder on
    /// the node's host.
    Backup(BackupArgs),
    /// Put a backup into a data directory no node is using (offline).
    Restore(RestoreArgs),
}

#[derive(Debug, clap::Args)]
struct BackupArgs {
    /// The folder to create (its parent must exist and be writable by the
    /// node's user).
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    #[command(flatten)]
    channel: ChannelArgs,
}

#[derive(Debug, clap::Args)]
struct RestoreArgs {
    /// The backup folder.
    #[arg(long, value_name = "DIR")]
    from: PathBuf,
    /// The data directory to restore into (no database in it yet).
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
}

#[derive(Debug, clap::Args)]
struct ProbeArgs {
    /// Ask for readiness (`/readyz`) rather than health (`/healthz`).
    #[arg(long)]
    ready: bool,
    #[command(flatten)]
    channel: ChannelArgs,
}

/// Where the node's admin socket is.
#[derive(Debug, clap::Args)]
struct ChannelArgs {
    /// The admin socket; default `admin.socket` of the node's config, or
    /// `admin.sock` in its data directory.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// The node's config file (for its data directory and admin.socket).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The node's data directory (overrides the config's).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Print the node's reply as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct UserArgs {
    /// The user's phone number.
    phone: PhoneNumber,
    #[command(flatten)]
    channel: ChannelArgs,
}

impl ChannelArgs {
    fn socket(&self) -> anyhow::Result<PathBuf> {
        if let Some(socket) = &self.socket {
            return Ok(socket.clone());
        }
        let config = node::NodeConfig::load(self.config.as_deref())
            .context("loading the node's configuration")?;
        let data_dir = self.data_dir.clone().unwrap_or(config.data_dir.clone());
        Ok(config.admin.socket_path(&data_dir))
    }

    /// Sends `request` and returns the reply, or the node's error as one.
    async fn ask(&self, request: AdminRequest) -> anyhow::Result<AdminReply> {
        let socket = self.socket()?;
        let reply = node::admin::ask(&socket, &request, ADMIN_TIMEOUT)
            .await
            .map_err(anyhow::Error::msg)?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&reply)?);
        }
        match reply {
            AdminReply::Error { message } => anyhow::bail!("the node refused: {message}"),
            reply => Ok(reply),
        }
    }
}

/// How long `switchboard admin` waits for the node (a status asks every
/// fragment, a drain tells every client).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, clap::Args)]
struct ClusterCertsArgs {
    /// Folder for ca.pem, ca-key.pem, NAME.pem and NAME-key.pem.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Node names (each becomes its certificate's DNS name).
    #[arg(required = true, value_name = "NAME")]
    names: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct MintArgs {
    #[command(flatten)]
    server: super::ServerArgs,
    /// The node's admin.secret.
    #[arg(long, env = "SWITCHBOARD_BENCH_ADMIN_SECRET", value_name = "SECRET")]
    secret: String,
    /// The first phone number; the others follow it.
    #[arg(long, value_name = "PHONE")]
    first: PhoneNumber,
    /// How many users.
    #[arg(long)]
    count: u32,
    /// Write the lines to this file instead of standard output.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        AdminCommand::Status(channel) => {
            let reply = channel.ask(AdminRequest::Status).await?;
            if let (false, AdminReply::Status(status)) = (channel.json, reply) {
                print!("{}", render_status(&status));
            }
            Ok(())
        }
        AdminCommand::User(args) => {
            let request = AdminRequest::User {
                phone: args.phone.clone(),
            };
            let reply = args.channel.ask(request).await?;
            if let (false, AdminReply::User(report)) = (args.channel.json, reply) {
                print!("{}", render_user(&report));
            }
            Ok(())
        }
        AdminCommand::Revoke(args) => {
            let request = AdminRequest::Revoke {
                phone: args.phone.clone(),
            };
            let reply = args.channel.ask(request).await?;
            if let (
                false,
                AdminReply::Revoked {
                    phone,
                    token_generation,
                },
            ) = (args.channel.json, reply)
            {
                println!(
                    "revoked every token of {phone} (token generation now {token_generation}); its connections are closed"
                );
            }
            Ok(())
        }
        AdminCommand::Backup(args) => {
            let dir = std::path::absolute(&args.dir)
                .with_context(|| format!("{}", args.dir.display()))?;
            let reply = args.channel.ask(AdminRequest::Backup { dir }).await?;
            if let (false, AdminReply::BackedUp { dir, manifest }) = (args.channel.json, reply) {
                println!(
                    "backup of {} in {}: database {} bytes, data format {}",
                    manifest.node,
                    dir.display(),
                    manifest.database_bytes,
                    manifest.data_format
                );
            }
            Ok(())
        }
        AdminCommand::Restore(args) => {
            let manifest =
                node::admin::restore(&args.from, &args.data_dir).map_err(anyhow::Error::msg)?;
            println!(
                "restored the backup of {} ({} bytes, data format {}) into {}; start the node on it (in an island it then takes from its partner what changed since)",
                manifest.node,
                manifest.database_bytes,
                manifest.data_format,
                args.data_dir.display()
            );
            Ok(())
        }
        AdminCommand::Probe(args) => {
            let reply = args.channel.ask(AdminRequest::Probe).await?;
            let AdminReply::Probe {
                healthy,
                ready,
                reason,
            } = reply
            else {
                anyhow::bail!("the node answered something else than a probe");
            };
            let passed = if args.ready { ready } else { healthy };
            if !args.channel.json {
                println!("{}", reason.trim_end());
            }
            if !passed {
                std::process::exit(1);
            }
            Ok(())
        }
        AdminCommand::Drain(channel) => {
            let reply = channel.ask(AdminRequest::Drain).await?;
            if let (false, AdminReply::Draining { sessions_told }) = (channel.json, reply) {
                println!(
                    "draining: not ready, no new connections, {sessions_told} clients told to reconnect elsewhere; stop the node when its connections reach 0"
                );
            }
            Ok(())
        }
        AdminCommand::ClusterCerts(args) => {
            let files = cluster::tls::generate(&args.out, &args.names)?;
            println!("cluster CA: {}", files.ca_cert.display());
            for (cert, key) in &files.nodes {
                println!("node: {} {}", cert.display(), key.display());
            }
            println!(
                "keep ca-key.pem offline; give each node ca.pem and its own pair ([cluster.tls])"
            );
            Ok(())
        }
        AdminCommand::MintUsers(args) => {
            let cfg = args.server.client_config()?;
            let tls = cfg.validate()?;
            let server = args.server.servers.first().context("no --server given")?;
            let users = mint_users(server, &tls, &args.secret, &args.first, args.count).await?;
            let mut text = String::with_capacity(users.len() * 80);
            for (phone, token) in &users {
                text.push_str(&format!("{phone} {token}\n"));
            }
            match &args.out {
                Some(path) => std::fs::write(path, text)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => std::io::stdout().write_all(text.as_bytes())?,
            }
            Ok(())
        }
    }
}

/// `switchboard admin status` for people.
fn render_status(s: &NodeStatus) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node {} (version {}, up {} s)",
        s.node, s.version, s.uptime_secs
    );
    let _ = writeln!(
        out,
        "ready: {} ({})",
        if s.ready { "yes" } else { "no" },
        s.readiness.trim_end()
    );
    let _ = writeln!(
        out,
        "connections: {}, storage queue: {}",
        s.connections, s.storage_queue
    );
    match &s.cluster {
        Some(c) => {
            let peers: Vec<String> = c
                .peers
                .iter()
                .map(|(name, up)| format!("{name} {}", if *up { "up" } else { "DOWN" }))
                .collect();
            let _ = writeln!(out, "peers: {}", peers.join(", "));
            let islands: Vec<String> = c.islands.iter().map(|[a, b]| format!("{a}+{b}")).collect();
            let _ = writeln!(out, "islands: {}", islands.join(", "));
        }
        None => {
            let _ = writeln!(out, "cluster: none (a node alone)");
        }
    }
    let served = s.fragments.iter().filter(|f| f.serves).count();
    let _ = writeln!(
        out,
        "fragments: {} served here of {}",
        served,
        s.fragments.len()
    );
    let _ = writeln!(
        out,
        "  {:>5} {:<6} {:<16} {:>6} {:>6} {:>7} {:>8} {:>10}",
        "id", "here", "owner", "epoch", "queue", "online", "pending", "unanswered"
    );
    for f in &s.fragments {
        let (owner, epoch) = match &f.owner {
            Some((node, epoch)) => (node.as_str(), epoch.to_string()),
            None if f.serves => (s.node.as_str(), "-".to_owned()),
            None => ("?", "-".to_owned()),
        };
        let here = if f.unavailable {
            "N/A"
        } else if f.serves {
            "serves"
        } else if f.waiting_for_owner {
            "waits"
        } else {
            "-"
        };
        let _ = writeln!(
            out,
            "  {:>5} {:<6} {:<16} {:>6} {:>6} {:>7} {:>8} {:>10}",
            f.fragment, here, owner, epoch, f.queue, f.online, f.pending_commits, f.unanswered
        );
    }
    let q = &s.queues.sessions;
    let _ = writeln!(
        out,
        "session queues: {} sessions, max {}, p99 {}, total {}",
        q.sessions, q.max, q.p99, q.total
    );
    let busiest: Vec<String> = {
        let mut actors: Vec<&(String, usize)> =
            s.queues.actors.iter().filter(|(_, n)| *n > 0).collect();
        actors.sort_by_key(|a| std::cmp::Reverse(a.1));
        actors
            .iter()
            .take(10)
            .map(|(name, n)| format!("{name} {n}"))
            .collect()
    };
    let _ = writeln!(
        out,
        "busiest actor queues: {}",
        if busiest.is_empty() {
            "none waiting".to_owned()
        } else {
            busiest.join(", ")
        }
    );
    out
}

/// `switchboard admin user` for people.
fn render_user(r: &UserReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let owner = match &r.owner {
        Some((node, epoch)) => format!("{node} (epoch {epoch})"),
        None => "this node".to_owned(),
    };
    let _ = writeln!(
        out,
        "user {}: fragment {}, owner {owner}",
        r.phone, r.fragment
    );
    if let Some(a) = &r.account {
        let registered = a.registered_at_ms.map_or("never".to_owned(), ago);
        let _ = writeln!(
            out,
            "account: registered {registered}, last active {}, token generation {}, registration lock {}",
            ago(a.last_active_ms),
            a.token_generation,
            if a.registration_lock { "on" } else { "off" }
        );
    }
    if let Some(m) = &r.mailbox {
        let _ = writeln!(
            out,
            "mailbox: {} messages ({} bytes) waiting",
            m.held_entries, m.held_bytes
        );
        let device = match &m.session {
            Some(session) => format!(
                "connected (session {}{})",
                session.session_id,
                session
                    .node
                    .as_ref()
                    .map_or(String::new(), |n| format!(" on {n}"))
            ),
            None => "not connected".to_owned(),
        };
        let _ = writeln!(out, "device: {device}");
    }
    let presence = match &r.presence {
        Some(proto::PresenceStatus::Online) => "online".to_owned(),
        Some(proto::PresenceStatus::Offline {
            last_seen_ms: Some(ms),
        }) => format!("offline, last seen {}", ago(*ms)),
        Some(proto::PresenceStatus::Offline { last_seen_ms: None }) => {
            "offline (not seen since this node started)".to_owned()
        }
        None => "unknown".to_owned(),
    };
    let _ = writeln!(out, "presence: {presence}");
    for e in &r.errors {
        let _ = writeln!(out, "note: {e}");
    }
    out
}

/// "42 s ago", "3 h ago": a time in ms since the epoch, from now.
fn ago(ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let secs = now.saturating_sub(ms) / 1000;
    match secs {
        0..120 => format!("{secs} s ago"),
        120..7_200 => format!("{} min ago", secs / 60),
        7_200..172_800 => format!("{} h ago", secs / 3_600),
        _ => format!("{} days ago", secs / 86_400),
    }
}
