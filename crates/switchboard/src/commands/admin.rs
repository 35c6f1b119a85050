//! `switchboard admin`: operator tools.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
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
}

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
