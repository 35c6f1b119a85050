//! `switchboard node`: placeholder until the node crate lands in this session.

/// Arguments of `switchboard node`.
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// Path to a TOML config file.
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// Client listen address (overrides the config).
    #[arg(long)]
    pub listen: Option<String>,
    /// Data directory (overrides the config).
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
}

/// Runs a node until Ctrl-C or SIGTERM.
pub async fn run(_args: NodeArgs) -> anyhow::Result<()> {
    anyhow::bail!("the node command is being written")
}
