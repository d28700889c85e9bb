//! Operator commands that talk to a hub over gRPC (placeholder until issue #4 lands).

use std::process::ExitCode;

/// Operator commands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {}

/// Run an operator command.
pub async fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {}
}
