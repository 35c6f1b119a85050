//! `bench steady`: steady 1:1 (and group) traffic against a cluster while an operator
//! (or a test script) kills, cuts off or restarts nodes; at the end every
//! acknowledged message is checked off. Exits non-zero if any was lost,
//! duplicated or reordered.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use client::{ClientConfig, Tls};
use proto::PhoneNumber;

use super::mint::mint_users;
use super::report::{latency_line, write_json};
use crate::steady::{SteadyConfig, SteadyOutcome, SteadyRun};

/// `bench steady`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Node addresses, host:port (repeat, or separate with commas); user i
    /// starts at node i mod N and fails over to the others.
    #[arg(
        long = "server",
        value_name = "ADDR",
        required = true,
        value_delimiter = ','
    )]
    servers: Vec<String>,
    /// PEM file of the nodes' client-facing certificate (or its CA).
    #[arg(long, value_name = "CERT")]
    ca: PathBuf,
    /// Name expected in the nodes' certificate.
    #[arg(long, value_name = "NAME", default_value = client::DEFAULT_SERVER_NAME)]
    server_name: String,
    /// The nodes' `admin.secret` (`admin.mint_test_users` must be on).
    #[arg(long, env = "SWITCHBOARD_BENCH_ADMIN_SECRET", value_name = "SECRET")]
    admin_secret: String,
    /// Phone number of the first test user; the others follow it.
    #[arg(long, value_name = "PHONE", default_value = "+15550700000")]
    first: PhoneNumber,
    /// Sender → receiver pairs.
    #[arg(long, default_value_t = 20)]
    pairs: u32,
    /// Messages per second per pair.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Sends a sender may have unacknowledged at once (pipelined, in order).
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// How many pairs (the first ones) talk through a group of their two
    /// users instead of 1:1, under the same check.
    #[arg(long, default_value_t = 0)]
    group_pairs: u32,
    /// Seconds to wait at the end for acked messages still on their way.
    #[arg(long, default_value_t = 30.0)]
    drain: f64,
    /// Write the outcome as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let ca_pem = ClientConfig::read_ca_file(&args.ca)?;
    let tls = Tls::from_ca_file(&args.ca, &args.server_name)
        .with_context(|| format!("reading the CA file {}", args.ca.display()))?;
    let mut users = None;
    for server in &args.servers {
        match mint_users(
            server,
            &tls,
            &args.admin_secret,
            &args.first,
            args.pairs * 2,
        )
        .await
        {
            Ok(minted) => {
                users = Some(minted);
                break;
            }
            Err(e) => eprintln!("steady: minting at {server} failed: {e:#}"),
        }
    }
    let users = users.context("no node minted the test users")?;
    let run = SteadyRun::start(SteadyConfig {
        servers: args.servers.clone(),
        ca_pem,
        server_name: args.server_name.clone(),
        users,
        rate_per_pair: args.rate,
        window: args.window,
        group_pairs: args.group_pairs as usize,
    })
    .await?;
    eprintln!(
        "steady: {} pairs at {}/s each for {} s over {}",
        args.pairs,
        args.rate,
        args.duration,
        args.servers.join(", ")
    );
    let end = tokio::time::Instant::now() + Duration::from_secs_f64(args.duration);
    while tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let s = run.snapshot();
        eprintln!(
            "steady: {:>5.1} s  acked {:>7}  delivered {:>7}  ack p99 {:>8.1} ms",
            s.elapsed.as_secs_f64(),
            s.acked,
            s.delivered,
            s.ack_p99_ms
        );
    }
    let outcome = run.finish(Duration::from_secs_f64(args.drain)).await;
    print_outcome(&outcome);
    if let Some(path) = &args.json {
        write_json(path, &outcome)?;
    }
    anyhow::ensure!(
        outcome.lost == 0 && outcome.duplicated == 0 && outcome.out_of_order == 0,
        "the check failed: {} lost, {} duplicated, {} out of order",
        outcome.lost,
        outcome.duplicated,
        outcome.out_of_order
    );
    Ok(())
}

/// The human summary.
pub(crate) fn print_outcome(o: &SteadyOutcome) {
    println!(
        "acked {} · delivered {} · lost {} · duplicated {} · out of order {} · refused {}",
        o.acked, o.delivered, o.lost, o.duplicated, o.out_of_order, o.refused
    );
    for f in &o.faults {
        println!(
            "pair {} ({} → {}): lost {:?} · duplicated {:?} · out of order {:?}",
            f.pair, f.sender, f.receiver, f.lost, f.duplicated, f.out_of_order
        );
    }
    println!(
        "faults seen by senders: {} · longest wait for an ack per fault: p50 {:.0} ms · p99 {:.0} ms · max {:.0} ms",
        o.stalls.count, o.stalls.p50_ms, o.stalls.p99_ms, o.stalls.max_ms
    );
    println!("{}", latency_line("send → ack    ", &o.latency_ms.ack));
    println!("{}", latency_line("send → deliver", &o.latency_ms.deliver));
}
