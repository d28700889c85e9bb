//! The `kube-sim` binary: one simulated cluster on a port, until Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// A Kubernetes API server simulator that kubectl accepts.
#[derive(Debug, Parser)]
#[command(name = "kube-sim", version)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "KUBE_SIM_LISTEN", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Serve HTTPS with a self-signed CA.
    #[arg(long, env = "KUBE_SIM_TLS")]
    tls: bool,
    /// Write a kubeconfig for this server to FILE.
    #[arg(long, env = "KUBE_SIM_KUBECONFIG_OUT")]
    kubeconfig_out: Option<PathBuf>,
    /// Delay before simulated workloads become ready (e.g. 1s, 500ms, 0s).
    #[arg(long, env = "KUBE_SIM_READINESS_DELAY", default_value = "1s", value_parser = humantime::parse_duration)]
    readiness_delay: Duration,
    /// Name of the cluster/context in the kubeconfig.
    #[arg(long, env = "KUBE_SIM_NAME", default_value = "kube-sim")]
    name: String,
    /// Load state from FILE at start (if present) and save it at exit.
    #[arg(long, env = "KUBE_SIM_SNAPSHOT")]
    snapshot: Option<PathBuf>,
    /// Service cluster IP range (IPv4 CIDR).
    #[arg(long, env = "KUBE_SIM_SERVICE_CIDR", default_value = "10.96.0.0/12")]
    service_cidr: String,
    /// Fault: latency added to each API request (e.g. 50ms).
    #[arg(long, env = "KUBE_SIM_LATENCY", value_parser = humantime::parse_duration)]
    latency: Option<Duration>,
    /// Fault: fraction of API requests answered 500.
    #[arg(long, env = "KUBE_SIM_ERROR_RATE", default_value_t = 0.0)]
    error_rate: f64,
    /// Fault: fraction of API requests answered 429.
    #[arg(long, env = "KUBE_SIM_THROTTLE_RATE", default_value_t = 0.0)]
    throttle_rate: f64,
    /// Fault: start paused (requests wait until PUT /_sim/faults {"paused":false}).
    #[arg(long, env = "KUBE_SIM_PAUSED")]
    paused: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    let cfg = kube_sim::SimConfig {
        listen: args.listen,
        tls: args.tls,
        readiness_delay: args.readiness_delay,
        snapshot_file: args.snapshot,
        name: args.name,
        service_cidr: args.service_cidr,
        faults: kube_sim::FaultConfig {
            latency_ms: args.latency.map(|d| d.as_millis() as u64).unwrap_or(0),
            error_rate: args.error_rate,
            throttle_rate: args.throttle_rate,
            paused: args.paused,
            ..Default::default()
        },
        ..Default::default()
    };
    let sim = kube_sim::KubeSim::start(cfg).await?;
    if let Some(p) = &args.kubeconfig_out {
        sim.write_kubeconfig(p)?;
    }
    println!("kube-sim listening on {}", sim.url());
    shutdown_signal().await?;
    sim.shutdown().await;
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
