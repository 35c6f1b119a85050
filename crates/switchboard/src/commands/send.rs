//! `switchboard send`: send one message, print its id once acked.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use proto::PhoneNumber;

/// Arguments of `switchboard send`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Profile file written by `switchboard verify`.
    #[arg(long, value_name = "FILE", env = "SWITCHBOARD_PROFILE")]
    pub(crate) profile: PathBuf,
    /// Recipient's phone number.
    #[arg(long)]
    pub(crate) to: PhoneNumber,
    /// Give up if the node has not acknowledged the message after this long.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub(crate) timeout: f64,
    /// The message text.
    #[arg(value_name = "TEXT")]
    pub(crate) text: String,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let timeout = Duration::try_from_secs_f64(args.timeout)
        .context("--timeout must be a non-negative number of seconds")?;
    let (_profile, client, events) = super::connect(&args.profile).await?;
    // Nothing here reads what the node pushes; the backlog stays in the mailbox.
    drop(events);
    let sent = tokio::time::timeout(timeout, client.send(&args.to, args.text.into_bytes())).await;
    let result = match sent {
        Ok(Ok(ack)) => {
            println!("{}", ack.msg_id);
            Ok(())
        }
        Ok(Err(e)) => Err(anyhow::Error::new(e).context(format!("cannot send to {}", args.to))),
        Err(_) => Err(anyhow::anyhow!(
            "no acknowledgement from the node within {} s; the message may still be delivered",
            args.timeout
        )),
    };
    client.close().await;
    result
}
