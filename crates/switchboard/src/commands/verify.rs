//! `switchboard verify`: trade the code for a token, store it in a profile.

use std::path::PathBuf;

use anyhow::Context;
use proto::PhoneNumber;

use super::ServerArgs;
use crate::profile::Profile;

/// Arguments of `switchboard verify`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) server: ServerArgs,
    /// Phone number the code was sent to.
    #[arg(long)]
    pub(crate) phone: PhoneNumber,
    /// The code received.
    #[arg(long)]
    pub(crate) code: String,
    /// Profile file to write (TOML, mode 0600; replaced if it exists).
    #[arg(long, value_name = "FILE", env = "SWITCHBOARD_PROFILE")]
    pub(crate) profile: PathBuf,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let cfg = args.server.client_config()?;
    let (token, expires_at_ms) = client::verify(&cfg, &args.phone, args.code.trim())
        .await
        .with_context(|| format!("cannot verify {}", args.phone))?;
    // Absolute, so the profile works from any directory.
    let ca = std::path::absolute(&args.server.ca)
        .with_context(|| format!("cannot resolve {}", args.server.ca.display()))?;
    let profile = Profile {
        servers: args.server.servers,
        ca,
        server_name: args.server.server_name,
        phone: args.phone,
        token,
        token_expires_at_ms: Some(expires_at_ms),
    };
    profile.save(&args.profile)?;
    println!(
        "Verified {}; profile written to {}.",
        profile.phone,
        args.profile.display()
    );
    Ok(())
}
