//! `switchboard send`: send one message to a user or a group, print its
//! id once acked.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use proto::{GroupId, PhoneNumber};

/// Arguments of `switchboard send`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Profile file written by `switchboard verify`.
    #[arg(long, value_name = "FILE", env = "SWITCHBOARD_PROFILE")]
    pub(crate) profile: PathBuf,
    /// Recipient's phone number.
    #[arg(long, required_unless_present = "group", conflicts_with = "group")]
    pub(crate) to: Option<PhoneNumber>,
    /// Send to this group (its id from `switchboard group create`).
    #[arg(long, value_name = "ID")]
    pub(crate) group: Option<GroupId>,
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
    let payload = args.text.into_bytes();
    type Sending = std::pin::Pin<Box<dyn Future<Output = client::Result<client::SendAck>> + Send>>;
    let (sending, target): (Sending, String) = match (&args.to, args.group) {
        (_, Some(group)) => (
            Box::pin(client.queue_send_group(group, payload)?),
            format!("group {group}"),
        ),
        (Some(to), None) => (Box::pin(client.queue_send(to, payload)?), to.to_string()),
        (None, None) => anyhow::bail!("name a recipient: --to NUMBER or --group ID"),
    };
    let sent = tokio::time::timeout(timeout, sending).await;
    let result = match sent {
        Ok(Ok(ack)) => {
            println!("{}", ack.msg_id);
            Ok(())
        }
        Ok(Err(e)) => Err(anyhow::Error::new(e).context(format!("cannot send to {target}"))),
        Err(_) => Err(anyhow::anyhow!(
            "no acknowledgement from the node within {} s; the message may still be delivered",
            args.timeout
        )),
    };
    client.close().await;
    result
}
