//! `convoy hub`: runs the hub server (placeholder until issue #4 lands).

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `convoy hub`.
#[derive(Debug, clap::Args)]
pub struct HubArgs {
    /// The hub config file (HubConfig plus fleet documents).
    #[arg(long, env = "CONVOY_HUB_CONFIG")]
    pub config: PathBuf,
}

/// Run the hub until a shutdown signal.
pub async fn run(_args: HubArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("convoy hub is not implemented yet")
}
