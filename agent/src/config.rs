//! The agent's configuration as a library value (the binary fills it from
//! flags and env), with defaults and the tuning knobs tests shorten.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::bundle::DriftMode;
use crate::{Error, Result};

/// Where the agent finds its cluster.
#[derive(Clone, Default)]
pub enum KubeSource {
    /// KUBECONFIG / in-cluster / ~/.kube/config, as kube-rs infers.
    #[default]
    Infer,
    /// A kubeconfig file.
    Kubeconfig(PathBuf),
    /// A ready client (in-process agents: `convoy dev`, tests).
    Client(kube::Client),
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KubeSource::Infer => f.write_str("Infer"),
            KubeSource::Kubeconfig(p) => write!(f, "Kubeconfig({})", p.display()),
            KubeSource::Client(_) => f.write_str("Client(..)"),
        }
    }
}

impl KubeSource {
    /// Build the client.
    pub async fn client(&self) -> Result<kube::Client> {
        match self {
            KubeSource::Client(c) => Ok(c.clone()),
            KubeSource::Infer => {
                kube::Client::try_default().await.map_err(|e| Error::kube("kubernetes client", e))
            }
            KubeSource::Kubeconfig(p) => {
                let kc = kube::config::Kubeconfig::read_from(p)
                    .map_err(|e| Error::Config(format!("kubeconfig {}: {e}", p.display())))?;
                let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                    .await
                    .map_err(|e| Error::Config(format!("kubeconfig {}: {e}", p.display())))?;
                kube::Client::try_from(cfg).map_err(|e| Error::kube("kubernetes client", e))
            }
        }
    }
}

/// Timers and bounds; defaults suit production, tests shorten them.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Heartbeat when the stream is idle.
    pub heartbeat: Duration,
    /// First reconnect delay ceiling (full jitter below it).
    pub reconnect_base: Duration,
    /// Largest reconnect delay ceiling.
    pub reconnect_cap: Duration,
    /// Drift events for a bundle are collected this long before one check.
    pub drift_debounce: Duration,
    /// A NotReady bundle's health is checked again this often.
    pub health_recheck: Duration,
    /// Apply plus wait timeout when the hub sends 0.
    pub default_timeout: Duration,
    /// Failed reconciles are retried with backoff from this ...
    pub retry_base: Duration,
    /// ... up to this.
    pub retry_cap: Duration,
    /// At most this many events wait in the outbox (oldest dropped beyond;
    /// statuses are coalesced per bundle and never dropped).
    pub outbox_max_events: usize,
    /// Renew the certificate after this fraction of its lifetime.
    pub renew_fraction: f64,
    /// Bundles reconciled at once.
    pub bundle_workers: usize,
    /// HTTP/2 keepalive ping interval to the hub: a silent partition (no
    /// RST, packets dropped) is noticed within interval + timeout.
    pub keepalive_interval: Duration,
    /// How long a keepalive ping may go unanswered before the connection is
    /// taken as dead (the agent then reconnects).
    pub keepalive_timeout: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(15),
            reconnect_base: Duration::from_millis(500),
            reconnect_cap: Duration::from_secs(60),
            drift_debounce: Duration::from_millis(500),
            health_recheck: Duration::from_secs(30),
            default_timeout: Duration::from_secs(300),
            retry_base: Duration::from_secs(1),
            retry_cap: Duration::from_secs(120),
            outbox_max_events: 10_000,
            renew_fraction: 2.0 / 3.0,
            bundle_workers: 2,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

/// Everything the agent needs to run.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The hub's gRPC address, `https://hub.example:8443`.
    pub hub_address: String,
    /// The hub CA (PEM file) for the first contact; later the CA from the
    /// identity Secret is used.
    pub hub_ca: Option<PathBuf>,
    /// The bootstrap token file (only read when the agent has no identity).
    pub token_file: Option<PathBuf>,
    /// The cluster name asked for at registration.
    pub cluster_name: String,
    /// Labels reported at registration.
    pub labels: BTreeMap<String, String>,
    /// Trusted statement-signing public keys (PEM files), pinned separately from TLS.
    pub trusted_keys: Vec<PathBuf>,
    /// The cluster.
    pub kube: KubeSource,
    /// The agent's own namespace (identity Secret, inventories).
    pub namespace: String,
    /// Local state: outbox, applied revisions, artifact cache.
    pub state_dir: PathBuf,
    /// Objects applied at once within a stage.
    pub concurrency: usize,
    /// Where /metrics, /healthz and /readyz are served (`None`: not served).
    pub metrics_address: Option<SocketAddr>,
    /// Drift handling when a bundle does not say.
    pub drift_mode: DriftMode,
    /// Timers and bounds.
    pub tuning: Tuning,
    /// A Secret in the agent's namespace with shared age identities for SOPS
    /// (every data value is an identity file), besides the agent's own key.
    pub sops_age_secret: Option<String>,
}

impl AgentConfig {
    /// A config with defaults for everything but the essentials.
    pub fn new(hub_address: &str, cluster_name: &str, state_dir: impl Into<PathBuf>) -> Self {
        Self {
            hub_address: hub_address.into(),
            hub_ca: None,
            token_file: None,
            cluster_name: cluster_name.into(),
            labels: BTreeMap::new(),
            trusted_keys: Vec::new(),
            kube: KubeSource::Infer,
            namespace: "convoy-system".into(),
            state_dir: state_dir.into(),
            concurrency: 8,
            metrics_address: None,
            drift_mode: DriftMode::Correct,
            tuning: Tuning::default(),
            sops_age_secret: None,
        }
    }
}

/// Trusted key paths with directories expanded to their `*.pem` files
/// (sorted), as mounted from a ConfigMap.
pub fn expand_key_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let rd = std::fs::read_dir(p).map_err(|e| Error::io(format!("read {}", p.display()), e))?;
            let mut files: Vec<PathBuf> = rd
                .flatten()
                .map(|e| e.path())
                .filter(|f| f.extension().is_some_and(|x| x == "pem") && f.is_file())
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(Error::Config(format!(
                    "trusted key directory {} holds no .pem file",
                    p.display()
                )));
            }
            out.extend(files);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Parse `k=v,k=v` labels.
pub fn parse_labels(s: &str) -> Result<BTreeMap<String, String>> {
    convoy_core::labels::parse([s]).map_err(|e| Error::Config(format!("--labels: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_directories_expand_to_pem_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("b.pem"), "x").unwrap();
        std::fs::write(d.path().join("a.pem"), "x").unwrap();
        std::fs::write(d.path().join("README"), "x").unwrap();
        std::fs::create_dir(d.path().join("..data")).unwrap();
        let one = d.path().join("a.pem");
        let got = expand_key_paths(&[d.path().to_path_buf(), one.clone()]).unwrap();
        assert_eq!(got, vec![d.path().join("a.pem"), d.path().join("b.pem"), one]);
        let empty = tempfile::tempdir().unwrap();
        assert!(expand_key_paths(&[empty.path().to_path_buf()]).is_err());
    }

    #[test]
    fn labels() {
        let l = parse_labels("env=prod, region=eu ,").unwrap();
        assert_eq!(l.get("env").unwrap(), "prod");
        assert_eq!(l.get("region").unwrap(), "eu");
        let e = parse_labels("nope").unwrap_err().to_string();
        assert!(e.contains("nope") && e.contains("key=value"), "{e}");
        assert!(parse_labels("=x").is_err());
        assert!(parse_labels("").unwrap().is_empty());
    }
}
