//! Offline artifact commands: keygen, build, verify (placeholder until issue #3 lands).

use std::process::ExitCode;

/// Artifact commands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {}

/// Run an artifact command.
pub async fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {}
}
