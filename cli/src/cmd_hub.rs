//! `convoy hub`: runs the hub server until SIGINT or SIGTERM, then drains.

use std::path::PathBuf;
use std::process::ExitCode;

use convoy_hub::{Hub, HubConfig, HubOptions};
use tracing::info;

/// Arguments of `convoy hub`.
#[derive(Debug, clap::Args)]
pub struct HubArgs {
    /// The hub config file (a HubConfig document, plus fleet documents if you like).
    #[arg(long, env = "CONVOY_HUB_CONFIG")]
    pub config: PathBuf,
}

/// Run the hub until a shutdown signal.
pub async fn run(args: HubArgs) -> anyhow::Result<ExitCode> {
    let cfg = match HubConfig::from_file(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let cfg = crate::cmd_helm::with_worker(cfg);
    let hub = match Hub::start(cfg, HubOptions::default()).await {
        Ok(h) => h,
        Err(e @ (convoy_hub::Error::Config(_) | convoy_hub::Error::Core(_))) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
        Err(e) => return Err(e.into()),
    };
    info!(
        grpc = %hub.grpc_addr,
        credentials = %hub.admin.file.display(),
        "hub ready; operators can use `convoy --credentials {}`",
        hub.admin.file.display()
    );
    let token = hub.shutdown_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutdown signal received");
        token.cancel();
    });
    hub.wait().await?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
