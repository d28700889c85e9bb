//! The `convoy-agent` command line: `run` (the agent), `apply DIR` and
//! `diff DIR` (one-shot, no hub). Every flag has an env var.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use convoy_core::duration::HumanDuration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::bundle::DriftMode;
use crate::config::{AgentConfig, KubeSource, Tuning, parse_labels};
use crate::oneshot::{OneShotOptions, apply_dir, diff_dir};
use crate::{Error, Result};

/// The Convoy agent.
#[derive(Debug, Parser)]
#[command(name = "convoy-agent", version, about)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, global = true, env = "CONVOY_LOG", default_value = "info")]
    pub log: String,
    /// Log format.
    #[arg(long, global = true, env = "CONVOY_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: register, hold the hub stream, apply, prune, correct drift.
    Run(Box<RunArgs>),
    /// Verify and apply a `convoy build` directory, without a hub.
    Apply(OneShotArgs),
    /// Show what applying a `convoy build` directory would change (exit 1 if anything).
    Diff(OneShotArgs),
}

/// Cluster access shared by every subcommand.
#[derive(Debug, Clone, Args)]
pub struct KubeArgs {
    /// Kubeconfig file (default: in-cluster config, then ~/.kube/config).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The agent's namespace: identity Secret and bundle inventories.
    #[arg(long, env = "CONVOY_NAMESPACE", default_value = "convoy-system")]
    pub namespace: String,
    /// Objects applied at once within a stage.
    #[arg(long, env = "CONVOY_APPLY_CONCURRENCY", default_value_t = 8)]
    pub concurrency: usize,
}

impl KubeArgs {
    fn source(&self) -> KubeSource {
        match &self.kubeconfig {
            // KUBECONFIG may be a list; kube-rs infers that case itself.
            Some(p) if !p.as_os_str().to_string_lossy().contains(':') => KubeSource::Kubeconfig(p.clone()),
            _ => KubeSource::Infer,
        }
    }
}

/// `convoy-agent run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The hub's gRPC address; several hub replicas' addresses separated
    /// by commas are tried in turn when a session fails.
    #[arg(long, env = "CONVOY_HUB_ADDRESS")]
    pub hub_address: String,
    /// The hub CA certificate (PEM) trusted at first contact.
    #[arg(long, env = "CONVOY_HUB_CA")]
    pub hub_ca: Option<PathBuf>,
    /// The bootstrap token file, read only when the agent has no identity yet.
    #[arg(long, env = "CONVOY_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The cluster name to register as.
    #[arg(long, env = "CONVOY_CLUSTER_NAME")]
    pub cluster_name: String,
    /// Cluster labels reported at registration: k=v,k=v.
    #[arg(long, env = "CONVOY_CLUSTER_LABELS", default_value = "")]
    pub labels: String,
    /// Trusted statement-signing public keys (PEM files), repeatable or comma-separated.
    #[arg(long = "trusted-key", env = "CONVOY_TRUSTED_KEYS", value_delimiter = ',', required = true)]
    pub trusted_keys: Vec<PathBuf>,
    /// Cluster access.
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Local state: outbox, applied revisions, artifact cache.
    #[arg(long, env = "CONVOY_STATE_DIR", default_value = "/var/lib/convoy-agent")]
    pub state_dir: PathBuf,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, env = "CONVOY_METRICS_ADDRESS", default_value = "0.0.0.0:9091")]
    pub metrics_address: SocketAddr,
    /// Drift handling for bundles that do not set one: correct or detect.
    #[arg(long, env = "CONVOY_DRIFT_MODE", default_value = "correct")]
    pub drift_mode: DriftMode,
    /// Heartbeat interval on an idle stream.
    #[arg(long, env = "CONVOY_HEARTBEAT_INTERVAL", default_value = "15s")]
    pub heartbeat_interval: HumanDuration,
    /// Apply plus wait timeout for bundles that do not set one.
    #[arg(long, env = "CONVOY_DEFAULT_TIMEOUT", default_value = "5m")]
    pub default_timeout: HumanDuration,
    /// Largest reconnect delay (full jitter below an exponential ceiling).
    #[arg(long, env = "CONVOY_RECONNECT_MAX", default_value = "60s")]
    pub reconnect_max: HumanDuration,
    /// How often a NotReady bundle's health is checked again.
    #[arg(long, env = "CONVOY_HEALTH_RECHECK", default_value = "30s")]
    pub health_recheck: HumanDuration,
    /// Grace period for in-flight work at shutdown.
    #[arg(long, env = "CONVOY_SHUTDOWN_GRACE", default_value = "20s")]
    pub shutdown_grace: HumanDuration,
    /// A Secret in the agent's namespace holding shared age identities for
    /// SOPS files (in addition to the agent's own generated key).
    #[arg(long, env = "CONVOY_SOPS_AGE_SECRET")]
    pub sops_age_secret: Option<String>,
}

impl RunArgs {
    /// The library config.
    pub fn config(&self) -> Result<AgentConfig> {
        let tuning = Tuning {
            heartbeat: self.heartbeat_interval.get(),
            default_timeout: self.default_timeout.get(),
            reconnect_cap: self.reconnect_max.get(),
            health_recheck: self.health_recheck.get(),
            ..Tuning::default()
        };
        Ok(AgentConfig {
            hub_address: self.hub_address.clone(),
            hub_ca: self.hub_ca.clone(),
            token_file: self.token_file.clone(),
            cluster_name: self.cluster_name.clone(),
            labels: parse_labels(&self.labels)?,
            trusted_keys: self.trusted_keys.clone(),
            kube: self.kube.source(),
            namespace: self.kube.namespace.clone(),
            state_dir: self.state_dir.clone(),
            concurrency: self.kube.concurrency,
            metrics_address: Some(self.metrics_address),
            drift_mode: self.drift_mode,
            tuning,
            sops_age_secret: self.sops_age_secret.clone(),
        })
    }
}

/// `convoy-agent apply DIR` and `convoy-agent diff DIR`.
#[derive(Debug, Args)]
pub struct OneShotArgs {
    /// The directory written by `convoy build` (artifact.tar.gz, statement.json, statement.sig).
    pub dir: PathBuf,
    /// Trusted public key (PEM), repeatable or comma-separated.
    #[arg(long = "key", env = "CONVOY_TRUSTED_KEYS", value_delimiter = ',', required = true)]
    pub keys: Vec<PathBuf>,
    /// The bundle name the statement must carry (default: the statement's).
    #[arg(long)]
    pub bundle: Option<String>,
    /// Namespace for namespaced objects that have none (default: `default`).
    #[arg(long, env = "CONVOY_TARGET_NAMESPACE")]
    pub target_namespace: Option<String>,
    /// Delete objects that left the bundle since its last apply.
    #[arg(long)]
    pub prune: bool,
    /// Take ownership of fields other field managers own.
    #[arg(long)]
    pub force: bool,
    /// Wait for every object to be healthy (apply only).
    #[arg(long)]
    pub wait: bool,
    /// Apply plus wait timeout.
    #[arg(long, default_value = "5m")]
    pub timeout: HumanDuration,
    /// Accept a generation older than the one applied.
    #[arg(long)]
    pub allow_rollback: bool,
    /// Tenancy: a namespace (or `prefix-*`) the bundle may use; repeatable. Default: any.
    #[arg(long = "allowed-namespace", value_delimiter = ',')]
    pub allowed_namespaces: Vec<String>,
    /// Tenancy: a kind (`ConfigMap`, `Deployment.apps`, `*.apps`) the bundle may contain; repeatable. Default: any.
    #[arg(long = "allowed-kind", value_delimiter = ',')]
    pub allowed_kinds: Vec<String>,
    /// Tenancy: refuse cluster-scoped objects.
    #[arg(long)]
    pub deny_cluster_scoped: bool,
    /// Cluster access.
    #[command(flatten)]
    pub kube: KubeArgs,
    /// age identity file for SOPS-encrypted documents, repeatable.
    #[arg(long = "age-key-file", env = "CONVOY_AGE_KEY_FILES", value_delimiter = ',')]
    pub age_key_files: Vec<PathBuf>,
}

impl OneShotArgs {
    fn options(&self) -> OneShotOptions {
        OneShotOptions {
            dir: self.dir.clone(),
            keys: self.keys.clone(),
            bundle: self.bundle.clone(),
            namespace: self.kube.namespace.clone(),
            target_namespace: self.target_namespace.clone(),
            prune: self.prune,
            force: self.force,
            wait: self.wait,
            timeout: self.timeout.get(),
            allow_rollback: self.allow_rollback,
            concurrency: self.kube.concurrency,
            tenancy: convoy_core::tenancy::Tenancy {
                allowed_namespaces: self.allowed_namespaces.clone(),
                allowed_kinds: self.allowed_kinds.clone(),
                allow_cluster_scoped: !self.deny_cluster_scoped,
            },
            age_key_files: self.age_key_files.clone(),
        }
    }
}

/// Install tracing to stderr.
pub fn init_logging(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => b.try_init(),
        LogFormat::Json => b.json().try_init(),
    };
}

/// Exit codes: 0 success; 1 not ready, apply failed, or (diff) something
/// would change; 2 refused input (verification, manifests, usage).
fn input_error(e: &Error) -> bool {
    matches!(
        e,
        Error::Verification { .. }
            | Error::Manifest { .. }
            | Error::Artifact { .. }
            | Error::Config(_)
            | Error::Io { .. }
    )
}

/// Resolves when SIGINT or SIGTERM arrives.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Run a parsed command line.
pub async fn run(cli: Cli) -> ExitCode {
    let shutdown = CancellationToken::new();
    {
        let s = shutdown.clone();
        tokio::spawn(
            async move {
                shutdown_signal().await;
                tracing::info!("shutdown requested");
                s.cancel();
            }
            .instrument(tracing::info_span!("signals")),
        );
    }
    match cli.command {
        Command::Run(args) => {
            let cfg = match args.config() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let grace = args.shutdown_grace.get();
            match crate::agent::Agent::run_with_grace(cfg, shutdown, grace).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "agent stopped");
                    ExitCode::from(if input_error(&e) { 2 } else { 1 })
                }
            }
        }
        Command::Apply(args) => {
            let opts = args.options();
            let client = match args.kube.source().client().await {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            match apply_dir(client, &opts, &shutdown).await {
                Ok(report) => {
                    print!("{}", report.render());
                    if report.ok() { ExitCode::SUCCESS } else { ExitCode::from(1) }
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(if input_error(&e) { 2 } else { 1 })
                }
            }
        }
        Command::Diff(args) => {
            let opts = args.options();
            let client = match args.kube.source().client().await {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            match diff_dir(client, &opts).await {
                Ok(report) => {
                    print!("{}", report.render());
                    // 1: something would change, or cannot be applied as is (conflicts).
                    if report.failures() || report.changes() { ExitCode::from(1) } else { ExitCode::SUCCESS }
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(if input_error(&e) { 2 } else { 1 })
                }
            }
        }
    }
}

/// The default timeout of one-shot apply, for docs and tests.
pub const DEFAULT_ONESHOT_TIMEOUT: Duration = Duration::from_secs(300);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_with_env_names() {
        let cli = Cli::try_parse_from([
            "convoy-agent",
            "run",
            "--hub-address",
            "https://hub:8443",
            "--cluster-name",
            "c1",
            "--trusted-key",
            "a.pub,b.pub",
            "--labels",
            "env=dev",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else { panic!() };
        let cfg = r.config().unwrap();
        assert_eq!(cfg.trusted_keys.len(), 2);
        assert_eq!(cfg.labels.get("env").unwrap(), "dev");
        assert_eq!(cfg.namespace, "convoy-system");
        assert_eq!(cfg.metrics_address.unwrap().port(), 9091);

        let cli = Cli::try_parse_from([
            "convoy-agent",
            "apply",
            "out",
            "--key",
            "k.pub",
            "--prune",
            "--wait",
            "--timeout",
            "2m",
        ])
        .unwrap();
        let Command::Apply(a) = cli.command else { panic!() };
        let o = a.options();
        assert!(o.prune && o.wait);
        assert_eq!(o.timeout, Duration::from_secs(120));
        assert!(Cli::try_parse_from(["convoy-agent", "apply", "out"]).is_err(), "--key is required");
    }
}
