//! `switchboard register`: ask the node to send a verification code.

use anyhow::Context;
use proto::PhoneNumber;

use super::ServerArgs;

/// Arguments of `switchboard register`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) server: ServerArgs,
    /// Phone number in E.164 form, e.g. +15551234567.
    #[arg(long)]
    pub(crate) phone: PhoneNumber,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let cfg = args.server.client_config()?;
    let expires_in_secs = client::request_code(&cfg, &args.phone)
        .await
        .with_context(|| format!("cannot request a code for {}", args.phone))?;
    println!(
        "A verification code was sent to {}; it is valid for {}.",
        args.phone,
        duration_words(expires_in_secs)
    );
    println!(
        "Next: switchboard verify --phone {} --code CODE --profile FILE ...",
        args.phone
    );
    Ok(())
}

fn duration_words(secs: u32) -> String {
    match secs {
        s if s >= 120 && s % 60 == 0 => format!("{} minutes", s / 60),
        1 => "1 second".to_owned(),
        s => format!("{s} seconds"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(duration_words(300), "5 minutes");
        assert_eq!(duration_words(90), "90 seconds");
        assert_eq!(duration_words(1), "1 second");
    }
}
