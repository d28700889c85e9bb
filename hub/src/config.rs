//! The hub's settings document (`kind: HubConfig`) and loading the fleet
//! config (the same file may hold fleet documents; more come from
//! `spec.fleet.paths`, files or directories). Reference: docs/config.md.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use convoy_core::config::FleetConfig;
use convoy_core::duration::HumanDuration;
use convoy_core::yaml::{documents, parse_document};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The kind of the hub settings document.
pub const HUB_CONFIG_KIND: &str = "HubConfig";

/// The hub's settings. Paths are absolute once loaded (relative ones are
/// resolved against the config file's directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HubConfig {
    /// Where the hub keeps its state, CA, keys and artifacts.
    pub data_dir: PathBuf,
    /// The gRPC (TLS) port.
    #[serde(default)]
    pub grpc: GrpcSettings,
    /// The HTTP port: webhooks (`/hooks/...`) and `/healthz`, `/readyz`.
    #[serde(default = "default_http")]
    pub http: ListenSettings,
    /// The metrics port (`/metrics`).
    #[serde(default = "default_metrics")]
    pub metrics: ListenSettings,
    /// User-provided CA and server certificate (default: created in dataDir).
    #[serde(default)]
    pub tls: TlsSettings,
    /// Statement signing keys.
    #[serde(default)]
    pub signing: SigningSettings,
    /// Certificate lifetimes.
    #[serde(default)]
    pub certificates: CertificateSettings,
    /// Operator authentication.
    #[serde(default)]
    pub admin: AdminSettings,
    /// The event log.
    #[serde(default)]
    pub events: EventSettings,
    /// Artifact serving and retention.
    #[serde(default)]
    pub artifacts: ArtifactSettings,
    /// Where the fleet config comes from.
    #[serde(default)]
    pub fleet: FleetSettings,
    /// The embedded store.
    #[serde(default)]
    pub store: StoreSettings,
    /// Alert delivery (the Provider and Alert documents are fleet config).
    #[serde(default)]
    pub alerts: AlertSettings,
    /// The file this config was read from (fleet documents in it are loaded too).
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
    /// Rendering Helm bundles (docs/helm.md).
    #[serde(default)]
    pub helm: HelmSettings,
}

/// How the hub renders Helm bundles.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HelmSettings {
    /// The default `.Capabilities.KubeVersion` (`1.31`); a bundle's
    /// `helm.kubeVersion` wins. Default: Helm's built-in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_version: Option<String>,
    /// The render worker command (program and arguments). Default:
    /// `CONVOY_HELM_WORKER`, else `convoy-helm-worker` next to the hub's
    /// executable; `convoy hub` and `convoy dev` use `convoy helm-worker`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub worker: Vec<String>,
    /// `libhelm_c.so` (or a directory holding it). Default:
    /// `CONVOY_HELM_LIBRARY`, else the installed helm-python-sdk package.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub library: Option<PathBuf>,
}

/// The gRPC port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcSettings {
    /// Listen address. Default `0.0.0.0:8443`.
    #[serde(default = "default_grpc_listen")]
    pub listen: String,
    /// Extra DNS names or IPs for the generated server certificate (besides
    /// `localhost`, `127.0.0.1`, `::1`).
    #[serde(default)]
    pub server_names: Vec<String>,
    /// HTTP/2 keepalive ping interval. Default 30s.
    #[serde(default = "default_keepalive")]
    pub keepalive: HumanDuration,
    /// Close a Sync stream that sent nothing for this long. Default 90s
    /// (agents heartbeat every ~15s).
    #[serde(default = "default_idle")]
    pub idle_timeout: HumanDuration,
    /// Messages buffered toward each agent. Default 8.
    #[serde(default = "default_send_queue")]
    pub send_queue: usize,
    /// Most concurrent streams per connection. Default 64.
    #[serde(default = "default_max_streams")]
    pub max_concurrent_streams: u32,
}

impl Default for GrpcSettings {
    fn default() -> Self {
        Self {
            listen: default_grpc_listen(),
            server_names: Vec::new(),
            keepalive: default_keepalive(),
            idle_timeout: default_idle(),
            send_queue: default_send_queue(),
            max_concurrent_streams: default_max_streams(),
        }
    }
}

/// A listen address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenSettings {
    /// `host:port`; empty disables the listener.
    pub listen: String,
}

/// User-provided TLS material. Unset: the hub creates and keeps its own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsSettings {
    /// CA certificate (PEM) that issues cluster and admin certificates and
    /// verifies client certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert_file: Option<PathBuf>,
    /// The CA's private key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_key_file: Option<PathBuf>,
    /// Server certificate chain (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// Server private key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

/// Statement signing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SigningSettings {
    /// PKCS#8 PEM private key. Default `<dataDir>/signing.key`, generated on first start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Extra trusted public keys (SPKI PEM) published with the hub's own in
    /// `<dataDir>/trusted-keys.pem` (key rotation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_public_key_files: Vec<PathBuf>,
}

/// Certificate lifetimes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateSettings {
    /// Cluster certificates. Default 720h (30 days); agents renew at ~2/3.
    #[serde(default = "default_cluster_ttl")]
    pub cluster_ttl: HumanDuration,
    /// The admin certificate written to the data dir. Default 8760h.
    #[serde(default = "default_long_ttl")]
    pub admin_ttl: HumanDuration,
    /// The generated server certificate. Default 8760h.
    #[serde(default = "default_long_ttl")]
    pub server_ttl: HumanDuration,
}

impl Default for CertificateSettings {
    fn default() -> Self {
        Self {
            cluster_ttl: default_cluster_ttl(),
            admin_ttl: default_long_ttl(),
            server_ttl: default_long_ttl(),
        }
    }
}

/// Operator authentication.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdminSettings {
    /// A file holding the admin bearer token. Default `<dataDir>/admin-token`,
    /// generated on first start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

/// The event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventSettings {
    /// Events kept (the oldest are dropped). Default 100000.
    #[serde(default = "default_retain")]
    pub retain: u64,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self { retain: default_retain() }
    }
}

/// Artifacts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArtifactSettings {
    /// Unreferenced artifacts are deleted after this. Default 24h.
    #[serde(default = "default_retention")]
    pub retention: HumanDuration,
    /// Memory for artifact bytes being served, MiB. Default 256.
    #[serde(default = "default_cache_mb")]
    pub cache_mib: usize,
}

impl Default for ArtifactSettings {
    fn default() -> Self {
        Self { retention: default_retention(), cache_mib: default_cache_mb() }
    }
}

/// The fleet config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FleetSettings {
    /// Files or directories (every `*.yaml`/`*.yml` below) with fleet documents.
    #[serde(default)]
    pub paths: Vec<PathBuf>,
    /// How often to check the files for changes. Default 5s.
    #[serde(default = "default_reload")]
    pub reload_interval: HumanDuration,
}

impl Default for FleetSettings {
    fn default() -> Self {
        Self { paths: Vec::new(), reload_interval: default_reload() }
    }
}

/// The embedded store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StoreSettings {
    /// redb page cache, MiB. Default 64.
    #[serde(default = "default_store_cache")]
    pub cache_mib: usize,
    /// `redb` (default: one hub, `state.redb` in the data dir) or `etcd`
    /// (several hub replicas; needs a hub built with the `etcd` feature).
    #[serde(default, rename = "type")]
    pub type_: StoreType,
    /// etcd client URLs (`https://etcd-0:2379`), for `type: etcd`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// Key prefix in etcd. Default `/convoy/`.
    #[serde(default = "default_store_prefix")]
    pub prefix: String,
    /// TLS to etcd: CA to verify it, client certificate and key (PEM files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<StoreTls>,
    /// `type: etcd`: each replica's lease TTL (whole seconds, at least 1s).
    /// A dead or cut-off replica's source locks and leadership pass to
    /// another replica within it. Default 10s.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl: HumanDuration,
    /// `type: etcd`: the gRPC endpoint the other replicas reach this one
    /// at, to fetch artifact bytes it built (`https://<pod IP>:<port>`; the
    /// chart sets it). Default: the gRPC listen address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// `type: etcd`: etcd's `--max-txn-ops` (operations per transaction).
    /// The hub never sends a commit with more keys put or compared; a
    /// smaller value means smaller group commits. Default 10000, what
    /// docs/operations.md asks etcd to run with.
    #[serde(default = "default_max_txn_ops")]
    pub max_txn_ops: usize,
    /// `type: etcd`: etcd's `--max-request-bytes` (the largest request).
    /// The hub never sends a commit larger: it groups writes up to this
    /// less the key prefix of every key a commit may name and 8 KiB for the
    /// commit's own keys and framing (docs/config.md). Default 1572864
    /// (1.5 MiB), etcd's default.
    #[serde(default = "default_max_txn_bytes")]
    pub max_txn_bytes: usize,
}

fn default_max_txn_ops() -> usize {
    10_000
}

fn default_max_txn_bytes() -> usize {
    1536 * 1024
}

fn default_lease_ttl() -> HumanDuration {
    HumanDuration::from_secs(10)
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            cache_mib: default_store_cache(),
            type_: StoreType::default(),
            endpoints: Vec::new(),
            prefix: default_store_prefix(),
            max_txn_ops: default_max_txn_ops(),
            max_txn_bytes: default_max_txn_bytes(),
            tls: None,
            lease_ttl: default_lease_ttl(),
            advertise: None,
        }
    }
}

fn default_store_prefix() -> String {
    "/convoy/".into()
}

/// Which store backend the hub uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreType {
    /// The embedded redb file.
    #[default]
    Redb,
    /// etcd, shared by several hub replicas.
    Etcd,
}

/// TLS files for the etcd connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StoreTls {
    /// CA certificate (PEM) that signed etcd's server certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM), with `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Client key (PEM), with `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

/// Alert delivery settings shared by every Provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AlertSettings {
    /// The hub name put in every notification. Default: the host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub_name: Option<String>,
    /// Notifications queued per provider; beyond it the oldest is dropped.
    /// Default 1000.
    #[serde(default = "default_alert_queue")]
    pub queue_size: usize,
    /// Delivery attempts per notification (the first included). Default 6.
    #[serde(default = "default_alert_attempts")]
    pub max_attempts: u32,
    /// The first retry delay; it doubles per attempt, with jitter. Default 1s.
    #[serde(default = "default_alert_backoff")]
    pub backoff_base: HumanDuration,
    /// The longest retry delay. Default 60s.
    #[serde(default = "default_alert_backoff_max")]
    pub backoff_max: HumanDuration,
    /// How long a draining hub keeps delivering what is queued (one attempt
    /// each). Default 3s.
    #[serde(default = "default_alert_flush")]
    pub shutdown_flush: HumanDuration,
}

impl Default for AlertSettings {
    fn default() -> Self {
        Self {
            hub_name: None,
            queue_size: default_alert_queue(),
            max_attempts: default_alert_attempts(),
            backoff_base: default_alert_backoff(),
            backoff_max: default_alert_backoff_max(),
            shutdown_flush: default_alert_flush(),
        }
    }
}

fn default_alert_queue() -> usize {
    1000
}
fn default_alert_attempts() -> u32 {
    6
}
fn default_alert_backoff() -> HumanDuration {
    HumanDuration::from_secs(1)
}
fn default_alert_backoff_max() -> HumanDuration {
    HumanDuration::from_secs(60)
}
fn default_alert_flush() -> HumanDuration {
    HumanDuration::from_secs(3)
}

fn default_grpc_listen() -> String {
    "0.0.0.0:8443".into()
}
fn default_http() -> ListenSettings {
    ListenSettings { listen: "0.0.0.0:8080".into() }
}
fn default_metrics() -> ListenSettings {
    ListenSettings { listen: "0.0.0.0:9090".into() }
}
fn default_keepalive() -> HumanDuration {
    HumanDuration::from_secs(30)
}
fn default_idle() -> HumanDuration {
    HumanDuration::from_secs(90)
}
fn default_send_queue() -> usize {
    8
}
fn default_max_streams() -> u32 {
    64
}
fn default_cluster_ttl() -> HumanDuration {
    HumanDuration::from_secs(30 * 86400)
}
fn default_long_ttl() -> HumanDuration {
    HumanDuration::from_secs(365 * 86400)
}
fn default_retain() -> u64 {
    100_000
}
fn default_retention() -> HumanDuration {
    HumanDuration::from_secs(86400)
}
fn default_cache_mb() -> usize {
    256
}
fn default_reload() -> HumanDuration {
    HumanDuration::from_secs(5)
}
fn default_store_cache() -> usize {
    64
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Envelope {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    #[serde(default)]
    #[allow(dead_code)]
    metadata: Option<convoy_core::config::Metadata>,
    spec: HubConfig,
}

impl HubConfig {
    /// A config for an in-process hub in `data_dir`: every port on
    /// 127.0.0.1 with an ephemeral port number, no fleet paths.
    pub fn local(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            grpc: GrpcSettings { listen: "127.0.0.1:0".into(), ..Default::default() },
            http: ListenSettings { listen: "127.0.0.1:0".into() },
            metrics: ListenSettings { listen: "127.0.0.1:0".into() },
            tls: TlsSettings::default(),
            signing: SigningSettings::default(),
            certificates: CertificateSettings::default(),
            admin: AdminSettings::default(),
            events: EventSettings::default(),
            artifacts: ArtifactSettings::default(),
            fleet: FleetSettings::default(),
            store: StoreSettings::default(),
            alerts: AlertSettings::default(),
            config_file: None,
            helm: HelmSettings::default(),
        }
    }

    /// Parse the HubConfig document out of `text` (from `file`).
    pub fn parse(file: &Path, text: &str) -> Result<Self> {
        let name = file.display().to_string();
        let mut found = None;
        for doc in documents(text) {
            let h: Header = parse_document(&name, &doc)?;
            if h.kind != HUB_CONFIG_KIND {
                continue;
            }
            if h.api_version != convoy_core::API_VERSION {
                return Err(Error::Config(format!(
                    "{name}: document {}: apiVersion must be {:?}, found {:?}",
                    doc.index,
                    convoy_core::API_VERSION,
                    h.api_version
                )));
            }
            if found.is_some() {
                return Err(Error::Config(format!("{name}: more than one HubConfig document")));
            }
            let env: Envelope = parse_document(&name, &doc)?;
            found = Some(env.spec);
        }
        let mut cfg = found.ok_or_else(|| Error::Config(format!("{name}: no HubConfig document")))?;
        let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
        cfg.resolve(&base);
        cfg.config_file = Some(file.to_path_buf());
        Ok(cfg)
    }

    /// Read and parse a config file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::files::read_string(path)?;
        Self::parse(path, &text)
    }

    fn resolve(&mut self, base: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        abs(&mut self.data_dir);
        for p in [
            &mut self.tls.ca_cert_file,
            &mut self.tls.ca_key_file,
            &mut self.tls.cert_file,
            &mut self.tls.key_file,
        ]
        .into_iter()
        .flatten()
        {
            abs(p);
        }
        if let Some(p) = &mut self.signing.key_file {
            abs(p);
        }
        self.signing.trusted_public_key_files.iter_mut().for_each(abs);
        if let Some(p) = &mut self.admin.token_file {
            abs(p);
        }
        self.fleet.paths.iter_mut().for_each(abs);
        if let Some(t) = &mut self.store.tls {
            [&mut t.ca, &mut t.cert, &mut t.key].into_iter().flatten().for_each(abs);
        }
        if let Some(p) = &mut self.helm.library {
            abs(p);
        }
    }
}

/// The files the fleet config is read from, with their modification times,
/// to notice changes cheaply.
pub type Fingerprint = Vec<(PathBuf, Option<SystemTime>, u64)>;

/// Every fleet file: the config file itself (if any), then each path (a file,
/// or every `*.yaml`/`*.yml` below a directory, sorted).
pub fn fleet_files(cfg: &HubConfig) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if let Some(f) = &cfg.config_file {
        out.push(f.clone());
    }
    for p in &cfg.fleet.paths {
        if p.is_dir() {
            let mut found = Vec::new();
            walk(p, &mut found)?;
            found.sort();
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let p = e.path();
        let hidden = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if p.is_dir() {
            walk(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
    Ok(())
}

/// The fingerprint of the fleet files.
pub fn fingerprint(cfg: &HubConfig) -> Fingerprint {
    let files = fleet_files(cfg).unwrap_or_default();
    files
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(&p).ok();
            let mtime = m.as_ref().and_then(|m| m.modified().ok());
            let len = m.map(|m| m.len()).unwrap_or(0);
            (p, mtime, len)
        })
        .collect()
}

/// Read and validate the whole fleet config.
pub fn load_fleet(cfg: &HubConfig) -> Result<FleetConfig> {
    let mut fleet = FleetConfig::default();
    for f in fleet_files(cfg)? {
        let text = crate::files::read_string(&f)?;
        fleet.add_text(&f.display().to_string(), &text, &[HUB_CONFIG_KIND])?;
    }
    fleet.validate()?;
    fleet.resolve_groups();
    crate::secret_paths::check(&fleet, cfg)?;
    Ok(fleet)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_etcd_transaction_bound_is_configurable() {
        let s: StoreSettings =
            serde_saphyr::from_str("{type: etcd, endpoints: [\"http://e:2379\"], maxTxnOps: 128}").unwrap();
        assert_eq!((s.type_, s.max_txn_ops), (StoreType::Etcd, 128));
        assert_eq!(s.max_txn_bytes, 1_572_864, "etcd's default --max-request-bytes");
        let s: StoreSettings =
            serde_saphyr::from_str("{type: etcd, endpoints: [\"http://e:2379\"], maxTxnBytes: 10485760}")
                .unwrap();
        assert_eq!((s.max_txn_ops, s.max_txn_bytes), (10_000, 10_485_760));
    }

    #[test]
    fn parses_with_defaults_resolves_paths_and_loads_fleet_docs() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hub.yaml");
        let text = r#"
apiVersion: convoy.dev/v1
kind: HubConfig
spec:
  dataDir: data
  grpc: {listen: "127.0.0.1:0", serverNames: [hub.example.com]}
  certificates: {clusterTTL: 1h}
  fleet: {paths: [fleet]}
---
apiVersion: convoy.dev/v1
kind: GitSource
metadata: {name: repo}
spec: {url: "https://example.com/r.git"}
"#;
        std::fs::write(&file, text).unwrap();
        std::fs::create_dir(dir.path().join("fleet")).unwrap();
        std::fs::write(
            dir.path().join("fleet/b.yaml"),
            "apiVersion: convoy.dev/v1\nkind: Bundle\nmetadata: {name: web}\nspec: {source: repo, targets: [{clusterName: a}]}\n",
        )
        .unwrap();
        let err = HubConfig::from_file(&file).unwrap_err().to_string();
        assert!(err.contains("clusterTTL"), "unknown field named: {err}");
        std::fs::write(&file, text.replace("clusterTTL", "clusterTtl")).unwrap();
        let cfg = HubConfig::from_file(&file).unwrap();
        assert_eq!(cfg.data_dir, dir.path().join("data"));
        assert_eq!(cfg.http.listen, "0.0.0.0:8080");
        assert_eq!(cfg.certificates.cluster_ttl.get().as_secs(), 3600);
        assert_eq!(cfg.store.max_txn_ops, 10_000, "etcd's bound as docs/operations.md asks etcd to run");
        let fleet = load_fleet(&cfg).unwrap();
        assert!(fleet.sources.contains_key("repo"));
        assert!(fleet.bundles.contains_key("web"));
        assert_eq!(fingerprint(&cfg).len(), 2);
    }

    #[test]
    fn errors_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hub.yaml");
        std::fs::write(&file, "apiVersion: convoy.dev/v1\nkind: HubConfig\nspec:\n  dataDir: d\n  nope: 1\n")
            .unwrap();
        let err = HubConfig::from_file(&file).unwrap_err().to_string();
        assert!(err.contains("hub.yaml") && err.contains("nope"), "{err}");
        assert!(err.contains("line"), "{err}");
    }
}
