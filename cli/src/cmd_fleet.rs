//! Operator commands that talk to a hub over gRPC: `token create`, `get`,
//! `status`, `events`, `reconcile`, `suspend`, `resume`, `label`, `revoke`.
//!
//! Connection: `--credentials FILE` (written by the hub to its data dir as
//! `admin-credentials.yaml`), or `--hub`, `--ca` and either `--cert`/`--key`
//! (an admin client certificate) or `--admin-token`. Every flag has an env.
//! Output: tables by default, `-o json|yaml` for scripts, `-o wide` for more
//! columns. Exit codes: 0 ok, 1 failure, 2 usage, 3 hub unreachable,
//! 4 not authorized, 5 not found.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use comfy_table::{Table, presets::NOTHING};
use convoy_core::duration::HumanDuration;
use convoy_hub::runtime::CredentialsFile;
use convoy_proto::v1 as pb;
use serde::Serialize;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// How to reach and authenticate to the hub.
#[derive(Debug, Clone, clap::Args)]
pub struct Conn {
    /// A credentials file written by the hub (`<dataDir>/admin-credentials.yaml`).
    #[arg(long, env = "CONVOY_CREDENTIALS", global = true)]
    pub credentials: Option<PathBuf>,
    /// The hub's gRPC endpoint, e.g. `https://hub.example.com:8443`.
    #[arg(long = "hub", env = "CONVOY_HUB", global = true)]
    pub hub: Option<String>,
    /// The hub CA certificate (PEM file).
    #[arg(long = "ca", env = "CONVOY_HUB_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// An admin client certificate (PEM file).
    #[arg(long, env = "CONVOY_ADMIN_CERT", global = true, requires = "key")]
    pub cert: Option<PathBuf>,
    /// The admin client certificate's key (PEM file).
    #[arg(long, env = "CONVOY_ADMIN_KEY", global = true, requires = "cert")]
    pub key: Option<PathBuf>,
    /// An admin token (instead of a client certificate).
    #[arg(long, env = "CONVOY_ADMIN_TOKEN", global = true, hide_env_values = true)]
    pub admin_token: Option<String>,
    /// The TLS server name to verify (default: from the credentials file, else the endpoint's host).
    #[arg(long, env = "CONVOY_HUB_SERVER_NAME", global = true)]
    pub server_name: Option<String>,
    /// Give up connecting after this long.
    #[arg(long, env = "CONVOY_TIMEOUT", default_value = "10s", global = true)]
    pub timeout: HumanDuration,
}

impl Conn {
    /// Everything from a hub-written credentials file.
    pub fn from_credentials(file: PathBuf, timeout: HumanDuration) -> Self {
        Conn {
            credentials: Some(file),
            hub: None,
            ca: None,
            cert: None,
            key: None,
            admin_token: None,
            server_name: None,
            timeout,
        }
    }
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// A readable table.
    Table,
    /// A table with more columns.
    Wide,
    /// Stable JSON for scripts.
    Json,
    /// The same as YAML.
    Yaml,
}

/// Operator commands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Bootstrap tokens for registering clusters.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Add a cluster: a bound token and the agent's `helm install` command.
    #[command(subcommand)]
    Cluster(crate::cmd_cluster::ClusterCommand),
    /// List clusters, bundles or sources.
    Get(Box<GetArgs>),
    /// One bundle: its cluster × status table.
    Status(Box<StatusArgs>),
    /// Hub and cluster events (newest last); `--follow` to stream new ones.
    Events(Box<EventsArgs>),
    /// Fetch a source (or a bundle's source) now.
    Reconcile(Box<ObjectArgs>),
    /// Suspend a bundle (agents leave it alone) or a source (no polling).
    Suspend(Box<ObjectArgs>),
    /// Resume a suspended bundle or source.
    Resume(Box<ObjectArgs>),
    /// Replace a cluster's labels: `convoy label cluster NAME k=v...`.
    Label(Box<LabelArgs>),
    /// Revoke a cluster, or an operator's admin certificate(s): they stop working at once.
    Revoke(Box<RevokeArgs>),
    /// SOPS: the age recipients of clusters, for `.sops.yaml` (docs/secrets.md).
    #[command(subcommand)]
    Sops(crate::cmd_sops::SopsCommand),
    /// Progressive rollouts: status, approve, pause, resume, abort, rollback (docs/rollouts.md).
    #[command(subcommand)]
    Rollout(crate::cmd_rollout::RolloutCommand),
    /// Set and remove a cluster's variables: `convoy vars CLUSTER k=v k-`.
    Vars(Box<crate::cmd_custom::VarsArgs>),
    /// What one cluster gets of a bundle: `convoy render BUNDLE --cluster C [--explain]`.
    Render(Box<crate::cmd_custom::RenderArgs>),
    /// Run a Helm bundle's test hooks on a cluster: `convoy test BUNDLE --cluster C [--timeout 5m]`.
    Test(Box<crate::cmd_test::TestArgs>),
}

/// `convoy token ...`
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a bootstrap token (printed once; the hub keeps only its hash).
    Create(Box<TokenCreateArgs>),
}

/// `convoy token create`
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("names").required(true).args(["cluster", "name_prefix"])))]
pub struct TokenCreateArgs {
    /// The only cluster name the token may register.
    #[arg(long)]
    pub cluster: Option<String>,
    /// Instead of --cluster: the token registers new names starting with
    /// this prefix (fleet bootstrapping).
    #[arg(long)]
    pub name_prefix: Option<String>,
    /// A label key the agent may propose at registration (repeatable or
    /// comma-separated). Other labels the agent sends are ignored.
    #[arg(long = "allow-agent-label", value_delimiter = ',')]
    pub agent_label_keys: Vec<String>,
    /// Labels given to the cluster (k=v, repeatable or comma-separated).
    #[arg(long = "label", short = 'l')]
    pub labels: Vec<String>,
    /// Lifetime.
    #[arg(long, default_value = "24h")]
    pub ttl: HumanDuration,
    /// The token works for one registration only.
    #[arg(long)]
    pub single_use: bool,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: Output,
    /// Connection.
    #[command(flatten)]
    pub conn: Conn,
}

/// What `convoy get` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Registered clusters.
    #[value(alias = "cluster")]
    Clusters,
    /// Bundles with their fleet summary.
    #[value(alias = "bundle")]
    Bundles,
    /// Git sources.
    #[value(alias = "source")]
    Sources,
}

/// `convoy get`
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// clusters, bundles or sources.
    #[arg(value_enum)]
    pub kind: Kind,
    /// Clusters: a label selector (`env=prod,region in (eu,us)`); bundles: keep
    /// only the cells of matching clusters.
    #[arg(long, short = 'l')]
    pub selector: Option<String>,
    /// Bundles: only those with a cluster in this phase (Ready, Stalled, ...).
    #[arg(long)]
    pub phase: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: Output,
    /// Connection.
    #[command(flatten)]
    pub conn: Conn,
}

/// `convoy status BUNDLE`
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The bundle.
    pub bundle: String,
    /// Only clusters matching this label selector.
    #[arg(long, short = 'l')]
    pub selector: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: Output,
    /// Connection.
    #[command(flatten)]
    pub conn: Conn,
}

/// `convoy events`
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Only this cluster (`hub` for the hub's own events).
    #[arg(long)]
    pub cluster: Option<String>,
    /// Only this bundle.
    #[arg(long)]
    pub bundle: Option<String>,
    /// Only this severity or worse: info, warning, error.
    #[arg(long)]
    pub severity: Option<String>,
    /// How many of the newest events to show first.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Keep streaming new events.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Output format (json and yaml print one event per line / document).
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: Output,
    /// Connection.
    #[command(flatten)]
    pub conn: Conn,
}

/// The kind of object an action names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ObjectKind {
    /// A GitSource.
    Source,
    /// A Bundle.
    Bundle,
}

/// `convoy reconcile|suspend|resume KIND NAME`
#[derive(Debug, clap::Args)]
pub struct ObjectArgs {
    /// source or bundle.
    #[arg(value_enum)]
    pub kind: ObjectKind,
    /// Its name.
    pub name: String,
    /// Connection.
    #[command(flatten)]
    pub conn: Conn,
}

/// `convoy label cluster NAME k=v...`
#[derive(Debug, clap::Args)]
pub struct LabelArgs {
    /// Always `cluster`.
    #[arg(value_parser = ["cluster"])]
    pub kind: String,
    /// The cluster.
    pub name: String,
    /// The complete new label set, k=v each.
    pub labels: Vec<String>,
    /// Connection.
    #[command(flatten)]
    pub conn: Conn,
}

/// `convoy revoke cluster NAME`, `convoy revoke admin NAME | --serial S`
#[derive(Debug, clap::Args)]
pub struct RevokeArgs {
    /// `cluster`, or `admin` (operators' admin certificates).
    #[arg(value_parser = ["cluster", "admin"])]
    pub kind: String,
    /// The cluster, or the admin name (every certificate of that admin).
    #[arg(required_unless_present = "serial")]
    pub name: Option<String>,
    /// `admin` only: revoke one admin certificate by its serial (hex).
    #[arg(long, conflicts_with = "name")]
    pub serial: Option<String>,
    /// Connection.
    #[command(flatten)]
    pub conn: Conn,
}

/// A failure with its exit code.
#[derive(Debug)]
pub struct Failure {
    /// The process exit code.
    pub code: u8,
    /// What to print.
    pub message: String,
}

impl Failure {
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::new(2, message)
    }
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        let (code, what) = match s.code() {
            Code::Unavailable | Code::DeadlineExceeded => (3, "hub unreachable"),
            Code::Unauthenticated => (4, "not authenticated"),
            Code::PermissionDenied => (4, "not authorized"),
            Code::NotFound => (5, "not found"),
            Code::InvalidArgument | Code::OutOfRange => (2, "invalid request"),
            _ => (1, "request failed"),
        };
        Failure::new(code, format!("{what}: {}", s.message()))
    }
}

/// Result with [`Failure`].
pub type Result<T> = std::result::Result<T, Failure>;

/// Run an operator command.
pub async fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    let result = match cmd {
        Command::Token(TokenCommand::Create(a)) => token_create(*a).await,
        Command::Cluster(c) => crate::cmd_cluster::run(c).await,
        Command::Get(a) => get(*a).await,
        Command::Status(a) => status(*a).await,
        Command::Events(a) => events(*a).await,
        Command::Reconcile(a) => action(*a, Action::Reconcile).await,
        Command::Suspend(a) => action(*a, Action::Suspend).await,
        Command::Resume(a) => action(*a, Action::Resume).await,
        Command::Label(a) => label(*a).await,
        Command::Revoke(a) => revoke(*a).await,
        Command::Sops(c) => crate::cmd_sops::run(c).await,
        Command::Rollout(c) => crate::cmd_rollout::run(c).await,
        Command::Vars(a) => crate::cmd_custom::vars(*a).await,
        Command::Render(a) => crate::cmd_custom::render(*a).await,
        Command::Test(a) => crate::cmd_test::run(*a).await,
    };
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(f) => {
            eprintln!("error: {}", f.message);
            Ok(ExitCode::from(f.code))
        }
    }
}

// ---------------------------------------------------------------------------
// Connecting
// ---------------------------------------------------------------------------

/// Adds the admin bearer token, when one is used.
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut req: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A Fleet client.
pub type FleetClient = pb::fleet_client::FleetClient<InterceptedService<Channel, Bearer>>;

fn read(path: &PathBuf, what: &str) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| Failure::usage(format!("cannot read {what} {}: {e}", path.display())))
}

/// Connect to the hub as configured by `conn`.
pub async fn connect(conn: &Conn) -> Result<FleetClient> {
    let file = match &conn.credentials {
        Some(p) => Some(CredentialsFile::load(p).map_err(|e| Failure::usage(e.to_string()))?),
        None => None,
    };
    let endpoint = conn
        .hub
        .clone()
        .or_else(|| file.as_ref().map(|f| f.hub.clone()))
        .ok_or_else(|| Failure::usage("no hub: pass --hub (or CONVOY_HUB) or --credentials"))?;
    let ca = match &conn.ca {
        Some(p) => read(p, "CA file")?,
        None => file
            .as_ref()
            .map(|f| f.ca.clone())
            .ok_or_else(|| Failure::usage("no hub CA: pass --ca or --credentials"))?,
    };
    let identity = match (&conn.cert, &conn.key) {
        (Some(c), Some(k)) => Some((read(c, "certificate")?, read(k, "key")?)),
        _ if conn.admin_token.is_some() => None,
        _ => file
            .as_ref()
            .filter(|f| !f.cert.is_empty() && !f.key.is_empty())
            .map(|f| (f.cert.clone(), f.key.clone())),
    };
    let token = conn.admin_token.clone().or_else(|| {
        if identity.is_none() {
            file.as_ref().map(|f| f.token.clone()).filter(|t| !t.is_empty())
        } else {
            None
        }
    });
    if identity.is_none() && token.is_none() {
        return Err(Failure::usage("no credentials: pass --cert/--key, --admin-token or --credentials"));
    }
    let url: http_host::Url =
        endpoint.parse().map_err(|_| Failure::usage(format!("bad hub endpoint {endpoint:?}")))?;
    let server_name = conn
        .server_name
        .clone()
        .or_else(|| file.as_ref().map(|f| f.server_name.clone()).filter(|s| !s.is_empty()))
        .unwrap_or(url.host);
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name(server_name);
    if let Some((c, k)) = identity {
        tls = tls.identity(Identity::from_pem(c, k));
    }
    let ep = Endpoint::from_shared(endpoint.clone())
        .map_err(|e| Failure::usage(format!("bad hub endpoint {endpoint:?}: {e}")))?
        .tls_config(tls)
        .map_err(|e| Failure::usage(format!("TLS settings: {e}")))?
        .connect_timeout(conn.timeout.get());
    let channel = ep
        .connect()
        .await
        .map_err(|e| Failure::new(3, format!("hub unreachable at {endpoint}: {}", error_chain(&e))))?;
    let bearer = match token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse()
                .map_err(|_| Failure::usage("the admin token has invalid characters"))?,
        ),
        None => None,
    };
    Ok(pb::fleet_client::FleetClient::with_interceptor(channel, Bearer(bearer)))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

mod http_host {
    //! The host part of an endpoint URL, for the default TLS server name.
    pub struct Url {
        pub host: String,
    }

    impl std::str::FromStr for Url {
        type Err = ();
        fn from_str(s: &str) -> Result<Self, ()> {
            let rest = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://")).ok_or(())?;
            let authority = rest.split('/').next().ok_or(())?;
            let host = if let Some(v6) = authority.strip_prefix('[') {
                v6.split(']').next().ok_or(())?.to_string()
            } else {
                authority.rsplit_once(':').map(|(h, _)| h).unwrap_or(authority).to_string()
            };
            if host.is_empty() { Err(()) } else { Ok(Url { host }) }
        }
    }
}

// ---------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------

pub(crate) fn print_data<T: Serialize>(output: Output, value: &T) -> Result<()> {
    match output {
        Output::Json => {
            println!("{}", serde_json::to_string_pretty(value).map_err(|e| Failure::new(1, e.to_string()))?);
        }
        Output::Yaml => {
            print!("{}", serde_saphyr::to_string(value).map_err(|e| Failure::new(1, e.to_string()))?);
        }
        Output::Table | Output::Wide => unreachable!("tables are printed by the caller"),
    }
    Ok(())
}

pub(crate) fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(NOTHING);
    t.set_header(header.iter().map(|h| h.to_string()));
    t
}

pub(crate) fn print_table(t: Table) {
    // comfy-table pads every line; trim for clean copy and paste.
    for line in t.to_string().lines() {
        println!("{}", term_safe(line.trim_end().trim_start_matches(' ')));
    }
}

use convoy_core::clock::now_ms;

/// Text for a terminal: control characters (C0 but tab, DEL, C1) and bidi
/// overrides are shown escaped (`\u{1b}`), never interpreted. Messages,
/// reasons, labels and names come partly from agents, which must not be able
/// to move the cursor, rewrite earlier lines or hide text in an operator's
/// terminal.
pub fn term_safe(s: &str) -> String {
    let bad = |c: char| {
        (c.is_control() && c != '\t') || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !s.chars().any(bad) {
        return s.to_string();
    }
    s.chars().map(|c| if bad(c) { c.escape_unicode().to_string() } else { c.to_string() }).collect()
}

/// `println!` through [`term_safe`].
macro_rules! sprintln {
    ($($t:tt)*) => { println!("{}", term_safe(&format!($($t)*))) };
}

/// `12s`, `5m`, `3h`, `2d` ago; `-` for never.
pub(crate) fn age(unix_ms: i64) -> String {
    if unix_ms <= 0 {
        return "-".into();
    }
    let s = ((now_ms() - unix_ms).max(0) / 1000) as u64;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn phase_name(p: i32) -> &'static str {
    convoy_proto::convert::phase_from_pb(p).as_str()
}

fn severity_name(s: i32) -> &'static str {
    match pb::Severity::try_from(s).unwrap_or(pb::Severity::Unspecified) {
        pb::Severity::Warning => "warning",
        pb::Severity::Error => "error",
        _ => "info",
    }
}

fn labels_text(l: &BTreeMap<String, String>) -> String {
    convoy_core::labels::format_or_dash(l)
}

fn short_digest(d: &str) -> String {
    d.strip_prefix("sha256:").map(|h| h.chars().take(12).collect()).unwrap_or_else(|| d.to_string())
}

fn short_revision(r: &str) -> String {
    // main@sha1:0123456789... -> main@0123456
    match r.split_once("@sha1:") {
        Some((rf, c)) => format!("{rf}@{}", c.chars().take(7).collect::<String>()),
        // A chart: 6.15.0@sha256:0123456789ab...; an index: sha256:0123...
        None => match r.split_once("sha256:") {
            Some((rf, d)) => format!("{rf}sha256:{}", d.chars().take(12).collect::<String>()),
            None => r.to_string(),
        },
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Summary {
    total: u32,
    ready: u32,
    progressing: u32,
    not_ready: u32,
    stalled: u32,
    suspended: u32,
}

impl From<Option<pb::PhaseSummary>> for Summary {
    fn from(s: Option<pb::PhaseSummary>) -> Self {
        let s = s.unwrap_or_default();
        Summary {
            total: s.total,
            ready: s.ready,
            progressing: s.progressing,
            not_ready: s.not_ready,
            stalled: s.stalled,
            suspended: s.suspended,
        }
    }
}

impl Summary {
    fn text(&self) -> String {
        let mut parts = vec![format!("{}/{} ready", self.ready, self.total)];
        for (n, what) in [
            (self.progressing, "progressing"),
            (self.not_ready, "not ready"),
            (self.stalled, "stalled"),
            (self.suspended, "suspended"),
        ] {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        }
        parts.join(", ")
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ClusterOut {
    name: String,
    labels: BTreeMap<String, String>,
    connected: bool,
    revoked: bool,
    last_seen_unix_ms: i64,
    agent_version: String,
    registered_unix_ms: i64,
    certificate_not_after_unix_ms: i64,
    bundles: Summary,
    /// The Kubernetes version the agent reported.
    #[serde(skip_serializing_if = "String::is_empty")]
    kube_version: String,
    /// Variables set with `convoy vars`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    vars: BTreeMap<String, String>,
}

fn cluster_out(c: pb::Cluster) -> ClusterOut {
    ClusterOut {
        name: c.name,
        labels: c.labels.into_iter().collect(),
        connected: c.connected,
        revoked: c.revoked,
        last_seen_unix_ms: c.last_seen_unix_ms,
        agent_version: c.agent_version,
        registered_unix_ms: c.registered_unix_ms,
        certificate_not_after_unix_ms: c.certificate_not_after_unix_ms,
        bundles: c.bundles.into(),
        kube_version: c.kube_version,
        vars: c.vars.into_iter().collect(),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConditionOut {
    r#type: String,
    status: String,
    reason: String,
    message: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CellOut {
    cluster: String,
    phase: String,
    desired_generation: u64,
    generation: u64,
    applied_generation: u64,
    revision: String,
    message: String,
    objects_ready: u32,
    objects_total: u32,
    updated_unix_ms: i64,
    /// The per-cluster variant key ("" for the base artifact).
    variant: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BundleOut {
    name: String,
    source: String,
    path: String,
    revision: String,
    digest: String,
    generation: u64,
    size: u64,
    suspended: bool,
    depends_on: Vec<String>,
    conditions: Vec<ConditionOut>,
    summary: Summary,
    clusters: Vec<CellOut>,
    /// Distinct per-cluster variants signed for the current base.
    variants: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    helm: Option<HelmOut>,
}

/// The chart of a Helm bundle.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HelmOut {
    chart: String,
    version: String,
    chart_digest: String,
    values_digest: String,
}

fn bundle_out(b: pb::BundleView) -> BundleOut {
    BundleOut {
        name: b.name,
        source: b.source,
        path: b.path,
        revision: b.revision,
        digest: b.digest,
        generation: b.generation,
        size: b.size,
        suspended: b.suspended,
        helm: b.helm.map(|h| HelmOut {
            chart: h.chart,
            version: h.version,
            chart_digest: h.chart_digest,
            values_digest: h.values_digest,
        }),
        depends_on: b.depends_on,
        conditions: b
            .conditions
            .into_iter()
            .map(|c| ConditionOut {
                r#type: c.r#type,
                status: c.status,
                reason: c.reason,
                message: c.message,
            })
            .collect(),
        summary: b.summary.into(),
        variants: b.variants,
        clusters: b
            .clusters
            .into_iter()
            .map(|c| {
                let s = c.status.unwrap_or_default();
                let o = s.objects.unwrap_or_default();
                CellOut {
                    cluster: c.cluster,
                    phase: phase_name(c.phase).into(),
                    desired_generation: c.desired_generation,
                    generation: s.generation,
                    applied_generation: s.applied_generation,
                    revision: s.revision,
                    // The hub's own failure for this cluster (its variant
                    // cannot be built) comes before what the agent last said.
                    message: if c.variant_error.is_empty() {
                        s.message
                    } else {
                        format!("SubstitutionFailed: {}", c.variant_error)
                    },
                    objects_ready: o.ready,
                    objects_total: o.total,
                    updated_unix_ms: c.updated_unix_ms,
                    variant: c.variant,
                }
            })
            .collect(),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SourceOut {
    name: String,
    url: String,
    r#ref: String,
    revision: String,
    ready: String,
    message: String,
    last_fetch_unix_ms: i64,
    failures: u32,
    suspended: bool,
    interval_seconds: u32,
    kind: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    charts: Vec<ChartOut>,
}

/// A chart a bundle resolved to in a chart repository (`get sources`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ChartOut {
    bundle: String,
    chart: String,
    constraint: String,
    version: String,
    digest: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    manifest_digest: String,
}

/// The REVISION cell of a source: a chart repository shows what its bundles
/// resolved to (`chart@version (sha256:<12 hex>)`, one per line).
fn source_revision_cell(s: &SourceOut) -> String {
    if !s.charts.is_empty() {
        let mut seen: Vec<String> = s
            .charts
            .iter()
            .map(|c| {
                // An OCI chart shows its manifest digest, a repository chart its archive's.
                let d = if c.manifest_digest.is_empty() { &c.digest } else { &c.manifest_digest };
                let hex = d.strip_prefix("sha256:").unwrap_or(d);
                format!("{}@{} (sha256:{})", c.chart, c.version, &hex[..hex.len().min(12)])
            })
            .collect();
        seen.dedup();
        return seen.join("\n");
    }
    if s.revision.is_empty() { "-".into() } else { short_revision(&s.revision) }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EventOut {
    id: u64,
    cluster: String,
    severity: String,
    reason: String,
    bundle: String,
    object: String,
    revision: String,
    message: String,
    time_unix_ms: i64,
    stored_unix_ms: i64,
    details: BTreeMap<String, String>,
}

pub(crate) fn event_out(e: pb::StoredEvent) -> EventOut {
    let ev = e.event.unwrap_or_default();
    EventOut {
        id: e.id,
        cluster: e.cluster,
        severity: severity_name(ev.severity).into(),
        reason: ev.reason,
        bundle: ev.bundle,
        object: ev.object,
        revision: ev.revision,
        message: ev.message,
        time_unix_ms: ev.time_unix_ms,
        stored_unix_ms: e.stored_unix_ms,
        details: ev.details.into_iter().collect(),
    }
}

// ---------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------

async fn token_create(a: TokenCreateArgs) -> Result<()> {
    let labels = convoy_core::selector::parse_labels(a.labels.iter().map(String::as_str))
        .map_err(|e| Failure::usage(e.to_string()))?;
    if let Some(c) = &a.cluster {
        convoy_core::identity::validate_name(c).map_err(|e| Failure::usage(e.to_string()))?;
    }
    let mut client = connect(&a.conn).await?;
    let r = client
        .create_token(pb::CreateTokenRequest {
            cluster: a.cluster.clone().unwrap_or_default(),
            labels: labels.into_iter().collect(),
            ttl_seconds: a.ttl.get().as_secs().max(1),
            single_use: a.single_use,
            name_prefix: a.name_prefix.clone().unwrap_or_default(),
            agent_label_keys: a.agent_label_keys.clone(),
        })
        .await?
        .into_inner();
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct TokenOut {
        token: String,
        token_id: String,
        expires_unix_ms: i64,
    }
    match a.output {
        Output::Table | Output::Wide => {
            println!("{}", r.token);
            eprintln!(
                "token {} expires in {}{}; it is shown only once",
                r.token_id,
                a.ttl,
                if a.single_use { " and works once" } else { "" }
            );
            Ok(())
        }
        o => print_data(
            o,
            &TokenOut { token: r.token, token_id: r.token_id, expires_unix_ms: r.expires_unix_ms },
        ),
    }
}

async fn get(a: GetArgs) -> Result<()> {
    let mut client = connect(&a.conn).await?;
    match a.kind {
        Kind::Clusters => {
            if a.phase.is_some() {
                return Err(Failure::usage("--phase applies to bundles"));
            }
            let r = client
                .list_clusters(pb::ListClustersRequest { label_selector: a.selector.unwrap_or_default() })
                .await?
                .into_inner();
            let out: Vec<ClusterOut> = r.clusters.into_iter().map(cluster_out).collect();
            if matches!(a.output, Output::Json | Output::Yaml) {
                return print_data(a.output, &out);
            }
            let wide = a.output == Output::Wide;
            let mut h = vec!["NAME", "CONNECTED", "LAST SEEN", "BUNDLES", "AGENT"];
            if wide {
                h.extend(["LABELS", "REGISTERED", "CERT EXPIRES"]);
            }
            let mut t = table(&h);
            for c in &out {
                let mut row = vec![
                    c.name.clone(),
                    if c.revoked {
                        "revoked".into()
                    } else if c.connected {
                        "yes".into()
                    } else {
                        "no".into()
                    },
                    age(c.last_seen_unix_ms),
                    c.bundles.text(),
                    if c.agent_version.is_empty() { "-".into() } else { c.agent_version.clone() },
                ];
                if wide {
                    row.push(labels_text(&c.labels));
                    row.push(age(c.registered_unix_ms));
                    row.push(expires_in(c.certificate_not_after_unix_ms));
                }
                t.add_row(row);
            }
            print_table(t);
        }
        Kind::Bundles => {
            let r = client
                .list_bundles(pb::ListBundlesRequest {
                    phase: a.phase.unwrap_or_default(),
                    cluster_selector: a.selector.unwrap_or_default(),
                })
                .await?
                .into_inner();
            let out: Vec<BundleOut> = r.bundles.into_iter().map(bundle_out).collect();
            if matches!(a.output, Output::Json | Output::Yaml) {
                return print_data(a.output, &out);
            }
            let wide = a.output == Output::Wide;
            let mut h = vec!["NAME", "SOURCE", "REVISION", "GEN", "CLUSTERS", "VARIANTS", "BUILD"];
            if wide {
                h.extend(["PATH", "DIGEST", "SIZE", "SUSPENDED"]);
            }
            let mut t = table(&h);
            for b in &out {
                let build = b
                    .conditions
                    .iter()
                    .find(|c| c.r#type == "Stalled" && c.status == "True")
                    .map(|c| format!("Stalled: {}", c.reason))
                    .or_else(|| {
                        b.conditions
                            .iter()
                            .find(|c| c.r#type == "Ready")
                            .map(|c| if c.status == "True" { "Ready".into() } else { c.reason.clone() })
                    })
                    .unwrap_or_default();
                let mut row = vec![
                    b.name.clone(),
                    b.source.clone(),
                    if b.revision.is_empty() { "-".into() } else { short_revision(&b.revision) },
                    b.generation.to_string(),
                    b.summary.text(),
                    b.variants.to_string(),
                    if b.suspended { format!("{build} (suspended)") } else { build },
                ];
                if wide {
                    // A Helm bundle shows its chart where others show their path.
                    row.push(match &b.helm {
                        Some(h) => format!("{}@{}", h.chart, h.version),
                        None => b.path.clone(),
                    });
                    row.push(short_digest(&b.digest));
                    row.push(b.size.to_string());
                    row.push(b.suspended.to_string());
                }
                t.add_row(row);
            }
            print_table(t);
        }
        Kind::Sources => {
            if a.selector.is_some() || a.phase.is_some() {
                return Err(Failure::usage("--selector and --phase do not apply to sources"));
            }
            let r = client.list_sources(pb::ListSourcesRequest {}).await?.into_inner();
            let out: Vec<SourceOut> = r
                .sources
                .into_iter()
                .map(|s| {
                    let ready = s.conditions.iter().find(|c| c.r#type == "Ready");
                    SourceOut {
                        ready: ready.map(|c| c.status.clone()).unwrap_or_else(|| "Unknown".into()),
                        message: ready.map(|c| c.message.clone()).unwrap_or_default(),
                        name: s.name,
                        url: s.url,
                        r#ref: s.r#ref,
                        revision: s.revision,
                        last_fetch_unix_ms: s.last_fetch_unix_ms,
                        failures: s.failures,
                        suspended: s.suspended,
                        interval_seconds: s.interval_seconds,
                        kind: s.kind,
                        charts: s
                            .charts
                            .into_iter()
                            .map(|c| ChartOut {
                                bundle: c.bundle,
                                chart: c.chart,
                                constraint: c.constraint,
                                version: c.version,
                                digest: c.digest,
                                manifest_digest: c.manifest_digest,
                            })
                            .collect(),
                    }
                })
                .collect();
            if matches!(a.output, Output::Json | Output::Yaml) {
                return print_data(a.output, &out);
            }
            let wide = a.output == Output::Wide;
            let mut h = vec!["NAME", "REVISION", "READY", "LAST FETCH", "MESSAGE"];
            if wide {
                h.extend(["URL", "REF", "FAILURES", "SUSPENDED"]);
            }
            let mut t = table(&h);
            for s in &out {
                let mut row = vec![
                    s.name.clone(),
                    source_revision_cell(s),
                    s.ready.clone(),
                    age(s.last_fetch_unix_ms),
                    s.message.clone(),
                ];
                if wide {
                    row.extend([
                        s.url.clone(),
                        s.r#ref.clone(),
                        s.failures.to_string(),
                        s.suspended.to_string(),
                    ]);
                }
                t.add_row(row);
            }
            print_table(t);
        }
    }
    Ok(())
}

fn expires_in(unix_ms: i64) -> String {
    if unix_ms <= 0 {
        return "-".into();
    }
    let s = (unix_ms - now_ms()) / 1000;
    if s <= 0 {
        return "expired".into();
    }
    let s = s as u64;
    match s {
        0..=7199 => format!("in {}m", s / 60),
        7200..=172_799 => format!("in {}h", s / 3600),
        _ => format!("in {}d", s / 86400),
    }
}

async fn status(a: StatusArgs) -> Result<()> {
    let mut client = connect(&a.conn).await?;
    let b = client
        .get_bundle(pb::GetBundleRequest {
            name: a.bundle.clone(),
            cluster_selector: a.selector.unwrap_or_default(),
        })
        .await?
        .into_inner();
    let out = bundle_out(b);
    if matches!(a.output, Output::Json | Output::Yaml) {
        return print_data(a.output, &out);
    }
    sprintln!("Bundle:     {}", out.name);
    sprintln!("Source:     {} ({})", out.source, out.path);
    if out.generation > 0 {
        sprintln!("Generation: {} — {} ({})", out.generation, out.revision, short_digest(&out.digest));
    } else {
        sprintln!("Generation: none yet");
    }
    for c in &out.conditions {
        sprintln!("{:<11} {} {}: {}", format!("{}:", c.r#type), c.status, c.reason, c.message);
    }
    if out.suspended {
        sprintln!("Suspended:  yes");
    }
    sprintln!("Clusters:   {}", out.summary.text());
    println!();
    let wide = a.output == Output::Wide;
    let mut h = vec!["CLUSTER", "PHASE", "GEN", "REVISION", "OBJECTS", "UPDATED", "MESSAGE"];
    if wide {
        h.push("APPLIED GEN");
        h.push("VARIANT");
    }
    let mut t = table(&h);
    for c in &out.clusters {
        let gen_ = if c.generation == 0 {
            format!("-/{}", c.desired_generation)
        } else {
            format!("{}/{}", c.generation, c.desired_generation)
        };
        let mut row = vec![
            c.cluster.clone(),
            c.phase.clone(),
            gen_,
            if c.revision.is_empty() { "-".into() } else { short_revision(&c.revision) },
            if c.objects_total == 0 {
                "-".into()
            } else {
                format!("{}/{}", c.objects_ready, c.objects_total)
            },
            age(c.updated_unix_ms),
            c.message.clone(),
        ];
        if wide {
            row.push(c.applied_generation.to_string());
            row.push(if c.variant.is_empty() { "base".into() } else { short_digest(&c.variant) });
        }
        t.add_row(row);
    }
    print_table(t);
    Ok(())
}

async fn events(a: EventsArgs) -> Result<()> {
    let min_severity = match a.severity.as_deref() {
        None => pb::Severity::Unspecified,
        Some(s) => match convoy_core::status::Severity::parse(s) {
            Some(convoy_core::status::Severity::Info) => pb::Severity::Info,
            Some(convoy_core::status::Severity::Warning) => pb::Severity::Warning,
            Some(convoy_core::status::Severity::Error) => pb::Severity::Error,
            None => {
                return Err(Failure::usage(format!("unknown severity {s:?}: use info, warning or error")));
            }
        },
    };
    let req = pb::ListEventsRequest {
        cluster: a.cluster.unwrap_or_default(),
        bundle: a.bundle.unwrap_or_default(),
        min_severity: min_severity as i32,
        after_id: 0,
        limit: a.limit,
    };
    let mut client = connect(&a.conn).await?;
    let print = |e: pb::StoredEvent, output: Output| -> Result<()> {
        let e = event_out(e);
        match output {
            Output::Json => {
                println!("{}", serde_json::to_string(&e).map_err(|x| Failure::new(1, x.to_string()))?)
            }
            Output::Yaml => {
                print!("---\n{}", serde_saphyr::to_string(&e).map_err(|x| Failure::new(1, x.to_string()))?)
            }
            Output::Table | Output::Wide => {
                let subject = if e.bundle.is_empty() {
                    e.cluster.clone()
                } else {
                    format!("{}/{}", e.cluster, e.bundle)
                };
                let obj = if e.object.is_empty() || output == Output::Table {
                    String::new()
                } else {
                    format!(" [{}]", e.object)
                };
                sprintln!(
                    "{:>6}  {:<8} {:<7} {:<28} {:<22} {}{obj}",
                    e.id,
                    age(e.stored_unix_ms),
                    e.severity,
                    subject,
                    e.reason,
                    e.message
                );
            }
        }
        Ok(())
    };
    if matches!(a.output, Output::Table | Output::Wide) {
        sprintln!(
            "{:>6}  {:<8} {:<7} {:<28} {:<22} MESSAGE",
            "ID",
            "AGE",
            "LEVEL",
            "CLUSTER/BUNDLE",
            "REASON"
        );
    }
    if !a.follow {
        let r = client.list_events(req).await?.into_inner();
        for e in r.events {
            print(e, a.output)?;
        }
        return Ok(());
    }
    let mut stream = client.follow_events(req).await?.into_inner();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            m = stream.message() => match m? {
                Some(e) => print(e, a.output)?,
                None => return Err(Failure::new(3, "the hub closed the event stream")),
            }
        }
    }
}

enum Action {
    Reconcile,
    Suspend,
    Resume,
}

async fn action(a: ObjectArgs, what: Action) -> Result<()> {
    let mut client = connect(&a.conn).await?;
    let obj = pb::ObjectRef {
        kind: match a.kind {
            ObjectKind::Source => pb::ObjectKind::Source,
            ObjectKind::Bundle => pb::ObjectKind::Bundle,
        } as i32,
        name: a.name,
    };
    let r = match what {
        Action::Reconcile => client.reconcile(obj).await?,
        Action::Suspend => client.suspend(obj).await?,
        Action::Resume => client.resume(obj).await?,
    };
    println!("{}", term_safe(&r.into_inner().message));
    Ok(())
}

async fn label(a: LabelArgs) -> Result<()> {
    let labels = convoy_core::selector::parse_labels(a.labels.iter().map(String::as_str))
        .map_err(|e| Failure::usage(e.to_string()))?;
    let mut client = connect(&a.conn).await?;
    let r = client
        .set_cluster_labels(pb::SetClusterLabelsRequest {
            name: a.name,
            labels: labels.into_iter().collect(),
        })
        .await?;
    println!("{}", term_safe(&r.into_inner().message));
    Ok(())
}

async fn revoke(a: RevokeArgs) -> Result<()> {
    let mut client = connect(&a.conn).await?;
    let r = match (a.kind.as_str(), a.name, a.serial) {
        ("cluster", Some(name), None) => client.revoke_cluster(pb::RevokeClusterRequest { name }).await?,
        ("admin", name, serial) => {
            client
                .revoke_admin(pb::RevokeAdminRequest {
                    name: name.unwrap_or_default(),
                    serial: serial.unwrap_or_default(),
                })
                .await?
        }
        _ => return Err(Failure::usage("revoke cluster NAME | revoke admin NAME | revoke admin --serial S")),
    };
    println!("{}", term_safe(&r.into_inner().message));
    Ok(())
}

#[cfg(test)]
mod term_safe_tests {
    use super::*;

    #[test]
    fn agent_text_cannot_drive_the_terminal() {
        // Clear screen, cursor up + rewrite, OSC title, BEL, CR overwrite, C1 CSI, bidi override.
        let hostile = "ok\u{1b}[2J\u{1b}[1A\u{1b}]0;pwned\u{7}\rReady\u{9b}31m\u{202e}gnp.exe";
        let s = term_safe(hostile);
        assert!(!s.chars().any(|c| c.is_control() || c == '\u{202e}'), "{s:?}");
        assert!(s.starts_with("ok\\u{1b}[2J"), "{s}");
        assert!(s.contains("\\u{d}Ready"));
        // Plain text (tabs included) passes through unchanged.
        assert_eq!(term_safe("web\tReady — 4/4 objects ✓"), "web\tReady — 4/4 objects ✓");
    }

    #[test]
    fn tables_escape_cells() {
        let mut t = table(&["NAME", "MESSAGE"]);
        t.add_row(vec!["c1".to_string(), "x\u{1b}[31mred".to_string()]);
        let rendered: Vec<String> =
            t.to_string().lines().map(|l| term_safe(l.trim_end().trim_start_matches(' '))).collect();
        assert!(rendered.iter().all(|l| !l.contains('\u{1b}')), "{rendered:?}");
        assert!(rendered[1].contains("x\\u{1b}[31mred"), "{rendered:?}");
    }
}
