//! The `convoy` command line: one binary for the hub, the dev fleet, operator
//! commands over gRPC, and offline artifact build and verify.
//!
//! Each command family lives in its own module with its own clap types:
//! - [`cmd_hub`]: `convoy hub`, the hub server.
//! - `cmd_dev` (cargo feature `dev`, on by default): `convoy dev`, a local fleet
//!   with simulated clusters; the only module that links kube-sim.
//! - [`cmd_fleet`]: operator commands that talk to a hub (`get`, `status`, ...).
//! - [`cmd_artifact`]: `keygen`, `build`, `verify`, with no hub involved.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod cmd_artifact;
pub mod cmd_cluster;
pub mod cmd_custom;
#[cfg(feature = "dev")]
pub mod cmd_dev;
pub mod cmd_fleet;
pub mod cmd_helm;
pub mod cmd_hub;
pub mod cmd_rollout;
pub mod cmd_sops;
pub mod cmd_test;
pub mod logging;

/// Convoy: a GitOps fleet manager.
#[derive(Debug, Parser)]
#[command(name = "convoy", version, about, propagate_version = true)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info,convoy_hub=debug`.
    #[arg(long, global = true, env = "CONVOY_LOG", default_value = "info")]
    pub log: String,
    /// Log format: `text` or `json`.
    #[arg(long, global = true, env = "CONVOY_LOG_FORMAT", default_value = "text")]
    pub log_format: logging::LogFormat,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Every `convoy` command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the hub server.
    Hub(cmd_hub::HubArgs),
    /// Run a local fleet: a hub, simulated clusters and agents.
    #[cfg(feature = "dev")]
    Dev(cmd_dev::DevArgs),
    /// Operator commands against a running hub.
    #[command(flatten)]
    Fleet(cmd_fleet::Command),
    /// Offline artifact commands.
    #[command(flatten)]
    Artifact(cmd_artifact::Command),
}

/// Run a parsed command line and map the result to an exit code.
///
/// Exit codes: 0 success, 1 a check failed or something would change, 2 usage
/// or input error, 3 the hub is unreachable, 4 not authorized, 5 not found.
pub fn main(cli: Cli) -> ExitCode {
    // `convoy dev` logs to a file in its data dir: its terminal shows the fleet.
    #[cfg(feature = "dev")]
    let logs_to_terminal = !matches!(cli.command, Command::Dev(_));
    #[cfg(not(feature = "dev"))]
    let logs_to_terminal = true;
    if logs_to_terminal {
        logging::init(&cli.log, cli.log_format);
    }
    install_crypto_provider();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Hub(args) => cmd_hub::run(args).await,
            #[cfg(feature = "dev")]
            Command::Dev(args) => cmd_dev::run(args, &cli.log, cli.log_format).await,
            Command::Fleet(cmd) => cmd_fleet::run(cmd).await,
            Command::Artifact(cmd) => cmd_artifact::run(cmd).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Install ring as the process-wide rustls crypto provider. This is the one
/// place the provider is chosen for the `convoy` binary.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
