//! `convoy dev`: a local fleet with simulated clusters (placeholder until issue #6 lands).

use std::process::ExitCode;

/// Arguments of `convoy dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {}

/// Run the dev fleet until Ctrl-C.
pub async fn run(_args: DevArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("convoy dev is not implemented yet")
}
