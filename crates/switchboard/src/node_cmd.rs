//! `switchboard node`: run one node until Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

/// Arguments of `switchboard node`.
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// TOML config file; without it the embedded defaults apply (TLS on
    /// 127.0.0.1:5222, data in ./switchboard-data, development code log).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Client listen address (overrides the config).
    #[arg(long)]
    pub listen: Option<String>,
    /// Data directory (overrides the config).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Runs a node until Ctrl-C or SIGTERM, then drains and stops it.
pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    let mut config =
        node::NodeConfig::load(args.config.as_deref()).context("loading the configuration")?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(data_dir) = args.data_dir {
        config.data_dir = data_dir;
    }
    config.validate()?;
    let mut running = node::NodeBuilder::new(config)
        .start()
        .await
        .context("starting the node")?;
    println!(
        "switchboard node {} listening on {} (TLS; clients trust {})",
        running.config().name,
        running.local_addr(),
        running.certificate().cert_path.display()
    );
    if let Some(ws) = running.websocket_addr() {
        println!("WebSocket (browsers) on wss://{ws}/");
    }
    let failure = running.failed();
    let reloader = running.certificate_reloader();
    tokio::spawn(reload_certificate_on_hangup(reloader));
    let failed = tokio::select! {
        () = shutdown_signal() => None,
        () = running.stopped() => anyhow::bail!("the node's root supervisor stopped; see the log"),
        reason = failure => Some(reason),
    };
    if let Some(reason) = failed {
        // redb accepts no write in this process after an I/O error: drain
        // (clients are told to reconnect, to the partner that has taken
        // over) and exit non-zero, so that systemd or the container runtime
        // starts the node again on the database redb recovers at open.
        let _ = tokio::time::timeout(Duration::from_secs(10), running.shutdown()).await;
        anyhow::bail!("the store failed ({reason}); exiting for a restart");
    }
    tokio::time::timeout(Duration::from_secs(30), running.shutdown())
        .await
        .context("shutdown took longer than 30 s")?;
    Ok(())
}

/// SIGHUP: read the client-facing certificate and key again (a renewed
/// certificate), without a restart.
async fn reload_certificate_on_hangup(reloader: std::sync::Arc<node::tls::ReloadableCertificate>) {
    #[cfg(unix)]
    {
        let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot listen for SIGHUP: the certificate reloads only at a restart");
            return;
        };
        while hangup.recv().await.is_some() {
            match reloader.reload() {
                Ok(sha256) => {
                    tracing::info!(%sha256, "SIGHUP: reloaded the client TLS certificate")
                }
                Err(e) => tracing::error!(error = %e,
                    "SIGHUP: cannot reload the client TLS certificate; the one in use stays"),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = reloader;
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
