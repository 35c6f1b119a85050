//! `switchboard bench`: the load generator.
//!
//! - `connections`: many logged-in idle connections, spread over worker
//!   processes (each process may hold at most ~20,000 files here) and over
//!   several source addresses (each has ~28k ephemeral ports); reports the
//!   connect rate and the node's memory per connection.
//! - `messages`: an open-loop 1:1 message load with latency histograms and an
//!   exactly-once, in-order check of every acknowledged message.
//! - `steady`: steady traffic through the failover client while nodes are
//!   killed, cut off or restarted; checks every acknowledged message.
//! - `groups`: an open-loop group message load over groups created first;
//!   deliveries per second, latencies, the node's CPU per delivered copy,
//!   and an exactly-once, in-order check at every member.
//!
//! Test users are minted in bulk through the node's admin request
//! (`admin.mint_test_users` in the node's config), not through SMS codes.

pub(crate) mod connections;
pub(crate) mod groups;
pub(crate) mod messages;
pub(crate) mod mint;
pub(crate) mod report;
pub(crate) mod steady;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use client::Tls;
use proto::PhoneNumber;

/// `switchboard bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, clap::Subcommand)]
enum BenchCommand {
    /// Hold many idle, logged-in connections; report connect rate and memory.
    Connections(connections::Args),
    /// Send 1:1 messages at a fixed rate; report latencies and check delivery.
    Messages(messages::Args),
    /// Steady traffic across a cluster through faults; checks every acked
    /// message (exit code 1 if any was lost, duplicated or reordered).
    Steady(steady::Args),
    /// Send group messages at a fixed rate; report deliveries per second,
    /// latencies and CPU per copy, and check every member's copies.
    Groups(groups::Args),
    /// Internal: one worker process of `bench connections`.
    #[command(hide = true)]
    ConnectionsWorker,
}

/// Where the node is and how to mint users on it.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Target {
    /// Node address, host:port.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:5222")]
    pub(crate) server: String,
    /// PEM file of the node's certificate (or its CA).
    #[arg(
        long,
        value_name = "CERT",
        default_value = "switchboard-data/tls/cert.pem"
    )]
    pub(crate) ca: PathBuf,
    /// Name expected in the node's certificate.
    #[arg(long, value_name = "NAME", default_value = client::DEFAULT_SERVER_NAME)]
    pub(crate) server_name: String,
    /// The node's `admin.secret` (its `admin.mint_test_users` must be on).
    #[arg(long, env = "SWITCHBOARD_BENCH_ADMIN_SECRET", value_name = "SECRET")]
    pub(crate) admin_secret: String,
    /// Phone number of the first test user; the others follow it.
    #[arg(long, value_name = "PHONE", default_value = "+15550000000")]
    pub(crate) first: PhoneNumber,
    /// Write every figure as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub(crate) json: Option<PathBuf>,
}

impl Target {
    pub(crate) fn tls(&self) -> anyhow::Result<Tls> {
        Tls::from_ca_file(&self.ca, &self.server_name)
            .with_context(|| format!("reading the CA file {}", self.ca.display()))
    }
}

/// How long a bench waits for the node to answer one request.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The agent string of bench connections.
pub(crate) const AGENT: &str = concat!("switchboard-bench/", env!("CARGO_PKG_VERSION"));

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Connections(args) => connections::run(args).await,
        BenchCommand::Messages(args) => messages::run(args).await,
        BenchCommand::Steady(args) => steady::run(args).await,
        BenchCommand::Groups(args) => groups::run(args).await,
        BenchCommand::ConnectionsWorker => connections::worker().await,
    }
}

/// Raises this process's open-file limit to its hard limit; returns it.
pub(crate) fn raise_file_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    }
}

/// How many of an open loop's `total` sends are due `elapsed_s` into it:
/// send `i` is scheduled at `i / rate` (its latency is counted from
/// there), so it is due as soon as that time has come, not one interval
/// later.
pub(crate) fn sends_due(elapsed_s: f64, rate: f64, total: u64) -> u64 {
    ((elapsed_s * rate).floor() as u64)
        .saturating_add(1)
        .min(total)
}

#[cfg(test)]
mod tests {
    use super::sends_due;

    #[test]
    fn a_send_is_due_at_its_scheduled_time() {
        // At 10/s send 0 is due at once, send 1 at 100 ms.
        assert_eq!(sends_due(0.0, 10.0, 100), 1);
        assert_eq!(sends_due(0.099, 10.0, 100), 1);
        assert_eq!(sends_due(0.1, 10.0, 100), 2);
        assert_eq!(sends_due(1_000.0, 10.0, 100), 100);
    }
}
