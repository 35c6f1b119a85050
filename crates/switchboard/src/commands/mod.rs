//! The client commands, one per module, and what they share.

pub(crate) mod admin;
pub(crate) mod chat;
pub(crate) mod group;
pub(crate) mod recv;
pub(crate) mod register;
pub(crate) mod send;
pub(crate) mod verify;

use std::path::{Path, PathBuf};

use anyhow::Context;
use client::{Client, ClientConfig, Events};

use crate::profile::Profile;

/// How the CLI names itself in its hello.
pub(crate) const AGENT: &str = concat!("switchboard-cli/", env!("CARGO_PKG_VERSION"));

/// Where the node is, for the commands that run before a profile exists.
#[derive(Debug, clap::Args)]
pub(crate) struct ServerArgs {
    /// Node address, host:port (repeat, or separate with commas, for a cluster).
    #[arg(
        long = "server",
        value_name = "ADDR",
        required = true,
        value_delimiter = ','
    )]
    pub(crate) servers: Vec<String>,
    /// PEM file of the CA or the node's certificate to trust.
    #[arg(long, value_name = "CERT")]
    pub(crate) ca: PathBuf,
    /// Name expected in the node's certificate.
    #[arg(long, value_name = "NAME", default_value = client::DEFAULT_SERVER_NAME)]
    pub(crate) server_name: String,
}

impl ServerArgs {
    pub(crate) fn client_config(&self) -> anyhow::Result<ClientConfig> {
        let ca_pem = ClientConfig::read_ca_file(&self.ca)?;
        let mut cfg = ClientConfig::new(self.servers.clone(), ca_pem);
        cfg.server_name = self.server_name.clone();
        cfg.agent = AGENT.to_owned();
        Ok(cfg)
    }
}

/// Loads the profile and logs in.
pub(crate) async fn connect(profile_path: &Path) -> anyhow::Result<(Profile, Client, Events)> {
    let profile = Profile::load(profile_path)?;
    let cfg = profile.client_config()?;
    let (client, events) = Client::connect(cfg, profile.token.clone())
        .await
        .with_context(|| {
            format!(
                "cannot log in as {} at {}",
                profile.phone,
                profile.servers.join(", ")
            )
        })
        .map_err(with_token_hint)?;
    Ok((profile, client, events))
}

/// Adds a fix to an error caused by a refused token.
fn with_token_hint(err: anyhow::Error) -> anyhow::Error {
    let refused = err.chain().any(|cause| {
        cause
            .downcast_ref::<client::ClientError>()
            .and_then(client::ClientError::code)
            == Some(proto::ErrorCode::InvalidToken)
    });
    if refused {
        err.context(
            "the token was refused: run `switchboard register` and `switchboard verify` again",
        )
    } else {
        err
    }
}

/// `HH:MM:SS` (UTC) of a node timestamp.
pub(crate) fn clock(ms: u64) -> String {
    let secs = ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_shows_utc_time_of_day() {
        assert_eq!(clock(0), "00:00:00");
        assert_eq!(clock(1_700_000_000_000), "22:13:20");
        assert_eq!(clock(86_399_999), "23:59:59");
    }
}
