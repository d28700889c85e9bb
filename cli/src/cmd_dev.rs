//! `convoy dev`: a complete local fleet in one process. A real hub (the same
//! `Hub::start` as `convoy hub`, from a written `hub.yaml`), a real git
//! repository made from the embedded `examples/` fleet and fetched by the hub
//! over `file://`, three kube-sim clusters with one real agent each (registered
//! with a bootstrap token over mTLS, applying through kube-rs), and optionally
//! an agent for a real cluster (`--kubeconfig`). It prints where everything
//! is, then the fleet status as it changes, and fetches as soon as `main`
//! moves in the repository. Ctrl-C stops everything within a bounded grace.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use comfy_table::{Table, presets::NOTHING};
use convoy_agent::{Agent, AgentConfig, KubeSource, RunningAgent};
use convoy_core::duration::HumanDuration;
use convoy_core::pipeline::BundleBuildState;
use convoy_core::status::Phase;
use convoy_hub::{Hub, HubConfig, HubHandle, HubOptions};
use convoy_proto::v1 as pb;
use kube_sim::{KubeSim, SimConfig};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::cmd_fleet::{Conn, FleetClient, connect, term_safe};
use crate::logging::LogFormat;

/// `println!` through [`term_safe`]: what dev prints of agents' (and bundle
/// authors') text cannot drive the terminal.
macro_rules! sprintln {
    ($($t:tt)*) => { println!("{}", term_safe(&format!($($t)*))) };
}

/// The example fleet, embedded at build time by `cli/build.rs`.
pub mod embedded {
    include!(concat!(env!("OUT_DIR"), "/examples.rs"));
}

/// The GitSource `convoy dev` adds for the example repository.
pub const SOURCE: &str = "fleet";

/// The simulated clusters and their labels.
pub const CLUSTERS: [(&str, &str); 3] = [
    ("staging", "env=staging,region=eu"),
    ("prod-eu", "env=prod,region=eu"),
    ("prod-us", "env=prod,region=us"),
];

/// How long agents get to finish in-flight work at Ctrl-C.
const AGENT_GRACE: Duration = Duration::from_secs(10);

/// Arguments of `convoy dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Keep the fleet's files in this directory (it must not exist, or be
    /// empty). Default: a temporary directory, removed at exit.
    #[arg(long, env = "CONVOY_DEV_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// How long simulated workloads (Deployments, DaemonSets, ...) take to
    /// become ready after a change.
    #[arg(long, env = "CONVOY_DEV_READINESS_DELAY", default_value = "1s")]
    pub readiness_delay: HumanDuration,
    /// Also run an agent against the real cluster of this kubeconfig (kind,
    /// k3d, minikube, ...), registered as --cluster-name with --cluster-labels.
    #[arg(long, env = "CONVOY_DEV_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The name of the real cluster (with --kubeconfig).
    #[arg(long, env = "CONVOY_DEV_CLUSTER_NAME", default_value = "local")]
    pub cluster_name: String,
    /// The labels of the real cluster (with --kubeconfig), `k=v,k=v`. The
    /// default makes it a staging cluster: it gets `infra` and `web-staging`.
    #[arg(long, env = "CONVOY_DEV_CLUSTER_LABELS", default_value = "env=staging,region=local")]
    pub cluster_labels: String,
    /// Exit 0 as soon as every bundle is Ready on every cluster it targets
    /// (1 if that does not happen within --ready-timeout). For scripts and CI.
    #[arg(long, env = "CONVOY_DEV_EXIT_WHEN_READY")]
    pub exit_when_ready: bool,
    /// How long --exit-when-ready waits.
    #[arg(long, env = "CONVOY_DEV_READY_TIMEOUT", default_value = "5m")]
    pub ready_timeout: HumanDuration,
}

/// Run the dev fleet until Ctrl-C (or convergence, with --exit-when-ready).
pub async fn run(args: DevArgs, log: &str, log_format: LogFormat) -> anyhow::Result<ExitCode> {
    let (dir, temp) = data_dir(&args)?;
    let log_file = dir.join("convoy.log");
    init_logging(log, log_format, &log_file)?;
    check_tools()?;
    let started = Instant::now();
    let mut fleet = match DevFleet::start(&args, &dir).await {
        Ok(f) => f,
        Err(e) => {
            if temp.is_some() {
                eprintln!("(logs were in {}, now removed; pass --data-dir to keep them)", log_file.display());
            }
            return Err(e);
        }
    };
    fleet.print_banner(temp.is_some(), &log_file);
    let code = fleet.watch(&args, started).await;
    fleet.stop().await;
    drop(temp);
    Ok(code)
}

/// The data dir: `--data-dir` (must be new or empty) or a fresh temp dir.
fn data_dir(args: &DevArgs) -> Result<(PathBuf, Option<tempfile::TempDir>)> {
    match &args.data_dir {
        Some(d) => {
            if d.exists()
                && std::fs::read_dir(d).with_context(|| format!("read {}", d.display()))?.next().is_some()
            {
                bail!(
                    "{} is not empty: convoy dev starts a fresh fleet each time (the simulated clusters live in memory); remove it or pick another --data-dir",
                    d.display()
                );
            }
            std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
            Ok((d.canonicalize()?, None))
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("convoy-dev-")
                .tempdir()
                .context("create a temporary directory")?;
            Ok((t.path().canonicalize()?, Some(t)))
        }
    }
}

/// Logs go to a file: the terminal shows the fleet.
fn init_logging(filter: &str, format: LogFormat, path: &Path) -> Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_writer(Arc::new(file));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    Ok(())
}

/// git is needed (the repository, and gix runs `git-upload-pack` for
/// `file://`); kustomize or kubectl renders the web overlays; Helm's engine
/// (helm-python-sdk) renders the podinfo chart.
fn check_tools() -> Result<()> {
    let ok = |cmd: &str, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ok("git", "--version") {
        bail!(
            "convoy dev needs git on the PATH (for the example repository, which the hub fetches over file://)"
        );
    }
    if !ok("kustomize", "version")
        && !Command::new("kubectl")
            .args(["version", "--client"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    {
        eprintln!(
            "warning: neither kustomize nor kubectl is on the PATH: the hub renders the web overlays with one of them, so web-staging and web-prod will not build (they will show KustomizeFailed)"
        );
    }
    if let Err(e) = convoy_helm::locate::find_library() {
        eprintln!(
            "warning: Helm's engine was not found ({e}): podinfo-staging and podinfo-prod (the Helm example) will not build (they will show HelmUnavailable); `pip install helm-python-sdk` installs it (docs/helm.md)"
        );
    }
    Ok(())
}

/// The SOPS-encrypted Secret of the example fleet (bundle `dev-secrets`).
const SECRET_FILE: &str = "secrets/dev-credentials.yaml";

/// The bundle of the encrypted Secret: dev's own, beside the example fleet's
/// bundles (the file exists only in the repository dev creates).
const DEV_SECRETS_BUNDLE: &str = "# Written by `convoy dev`: a SOPS-encrypted Secret, encrypted at start for
# the dev fleet's age key (docs/secrets.md). The hub never decrypts it.
apiVersion: convoy.dev/v1
kind: Bundle
metadata:
  name: dev-secrets
spec:
  source: fleet
  path: secrets
  dependsOn: [infra]
  prune: true
  targets:
    - clusterSelector: {}
";

/// The Secret in each dev cluster's agent namespace holding the dev fleet's
/// shared age key (the agent's `--sops-age-secret`).
const AGE_SECRET: &str = "convoy-dev-age";

/// The example Secret, encrypted with SOPS for `recipients` (only `data` and
/// `stringData` values are encrypted; the rest stays readable in git).
fn encrypted_secret(recipients: Vec<String>) -> Result<Vec<u8>> {
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "dev-credentials", "namespace": "web"},
        "type": "Opaque",
        "stringData": {"username": "convoy-dev", "password": hex::encode(rand::random::<[u8; 12]>())},
    });
    let opts = convoy_sops::EncryptOptions {
        recipients,
        rules: convoy_sops::Rules {
            encrypted_regex: Some("^(data|stringData)$".into()),
            ..Default::default()
        },
        lastmodified: None,
    };
    let enc = convoy_sops::encrypt(&[doc], &opts).context("encrypt the example Secret")?;
    let mut text = String::from(
        "# Encrypted with SOPS for the dev fleet's age key (docs/secrets.md): the hub\n\
         # serves ciphertext; each agent decrypts in memory just before applying.\n",
    );
    text.push_str(&serde_saphyr::to_string(&enc[0]).context("serialize the example Secret")?);
    Ok(text.into_bytes())
}

/// Write the embedded example fleet, plus the SOPS-encrypted example Secret
/// (encrypted for `recipients`), to `repo` and commit it on `main` (with gix;
/// the user's own git then works there as usual).
fn create_repo(repo: &Path, recipients: Vec<String>) -> Result<()> {
    let who = convoy_sources::local::Identity { name: "Convoy Dev", email: "dev@convoy.local" };
    let secret = encrypted_secret(recipients)?;
    convoy_sources::local::init_with_files(
        repo,
        embedded::FLEET_FILES.iter().copied().chain([(SECRET_FILE, secret.as_slice())]),
        "main",
        "The example fleet",
        &who,
    )?;
    Ok(())
}

/// Put the dev fleet's shared age key into a cluster, as the Secret the
/// agent reads with `--sops-age-secret` (what the agent chart's
/// `sops.ageKeySecret` does on a real cluster).
async fn put_age_secret(kubeconfig: &Path, namespace: &str, identity_file: &str) -> Result<()> {
    use base64::Engine as _;
    use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let client = kube::Client::try_from(cfg)?;
    let pp = PatchParams::apply("convoy-dev").force();
    let ns = ApiResource {
        group: String::new(),
        version: "v1".into(),
        api_version: "v1".into(),
        kind: "Namespace".into(),
        plural: "namespaces".into(),
    };
    let ns_body =
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
    Api::<DynamicObject>::all_with(client.clone(), &ns)
        .patch(namespace, &pp, &Patch::Apply(&ns_body))
        .await?;
    let secrets = ApiResource {
        group: String::new(),
        version: "v1".into(),
        api_version: "v1".into(),
        kind: "Secret".into(),
        plural: "secrets".into(),
    };
    let body = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": AGE_SECRET, "namespace": namespace},
        "data": {"age.key": base64::engine::general_purpose::STANDARD.encode(identity_file)},
    });
    Api::<DynamicObject>::namespaced_with(client, namespace, &secrets)
        .patch(AGE_SECRET, &pp, &Patch::Apply(&body))
        .await?;
    Ok(())
}

/// The commit `main` points at and its subject, read with gix off the runtime.
async fn main_head(repo: &Path) -> Option<(String, String)> {
    let repo = repo.to_path_buf();
    tokio::task::spawn_blocking(move || convoy_sources::local::branch_head(&repo, "main"))
        .await
        .ok()?
        .inspect_err(|e| warn!(error = %e, "read the example repository"))
        .ok()?
}

/// What changes when `main` moves: the mtimes and sizes of the ref files.
fn refs_fingerprint(repo: &Path) -> Vec<Option<(SystemTime, u64)>> {
    ["HEAD", "refs/heads/main", "packed-refs"]
        .iter()
        .map(|f| {
            std::fs::metadata(repo.join(".git").join(f))
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

fn yaml_str(p: &Path) -> String {
    serde_json::to_string(&p.to_string_lossy()).unwrap_or_default()
}

/// An agent and what it runs against.
struct DevAgent {
    name: String,
    labels: BTreeMap<String, String>,
    kubeconfig: PathBuf,
    sim: Option<KubeSim>,
    running: RunningAgent,
}

/// The running dev fleet.
struct DevFleet {
    /// The dev fleet's shared age identity (the example Secret is encrypted for it).
    age_identity: String,
    dir: PathBuf,
    repo: PathBuf,
    hub_config: PathBuf,
    hub: Option<HubHandle>,
    agents: Vec<DevAgent>,
    agents_shutdown: CancellationToken,
    admin: FleetClient,
}

impl DevFleet {
    async fn start(args: &DevArgs, dir: &Path) -> Result<DevFleet> {
        // The git repository.
        let repo = dir.join("fleet");
        std::fs::create_dir_all(&repo)?;
        // One age key for the dev fleet: the example Secret is encrypted for it
        // and every dev cluster gets it as its agent's shared SOPS key.
        let age = convoy_sops::AgeKeys::generate();
        let recipients = age.recipients();
        let r = repo.clone();
        tokio::task::spawn_blocking(move || create_repo(&r, recipients))
            .await?
            .context("create the example repository")?;

        // The hub: a config file like any other, with the fleet in a directory.
        let hub_dir = dir.join("hub");
        let fleet_dir = hub_dir.join("fleet");
        std::fs::create_dir_all(&fleet_dir)?;
        let secret = hub_dir.join("webhook-secret");
        std::fs::write(&secret, hex::encode(rand::random::<[u8; 24]>()))?;
        restrict(&secret);
        let hub_config = hub_dir.join("hub.yaml");
        std::fs::write(
            &hub_config,
            "# Written by `convoy dev`: a hub config like any other (docs/config.md).\n\
             apiVersion: convoy.dev/v1\nkind: HubConfig\nspec:\n  dataDir: data\n\
             \x20 grpc: {listen: \"127.0.0.1:0\"}\n  http: {listen: \"127.0.0.1:0\"}\n  metrics: {listen: \"127.0.0.1:0\"}\n\
             \x20 fleet: {paths: [fleet], reloadInterval: 1s}\n  alerts: {hubName: convoy-dev}\n",
        )?;
        std::fs::write(
            fleet_dir.join("source.yaml"),
            format!(
                "# The example repository. convoy dev also fetches as soon as `main` moves.\n\
                 apiVersion: convoy.dev/v1\nkind: GitSource\nmetadata:\n  name: {SOURCE}\nspec:\n\
                 \x20 url: {}\n  ref: {{branch: main}}\n  interval: 30s\n\
                 \x20 webhook: {{secretFile: {}, type: generic}}\n",
                yaml_str(Path::new(&format!("file://{}", repo.display()))),
                yaml_str(&secret)
            ),
        )?;
        std::fs::write(fleet_dir.join("bundles.yaml"), embedded::BUNDLES_YAML)?;
        std::fs::write(fleet_dir.join("dev-secrets.yaml"), DEV_SECRETS_BUNDLE)?;
        std::fs::write(fleet_dir.join("helm-bundles.yaml"), embedded::HELM_BUNDLES_YAML)?;
        let cfg = HubConfig::from_file(&hub_config)?;
        let cfg = crate::cmd_helm::with_worker(cfg);
        let hub = Hub::start(cfg, HubOptions::default()).await.context("start the hub")?;
        let admin = connect(&Conn::from_credentials(hub.admin.file.clone(), HumanDuration::from_secs(10)))
            .await
            .map_err(|f| anyhow::anyhow!("connect to the hub: {}", f.message))?;

        let mut fleet = DevFleet {
            age_identity: age.to_identity_file(),
            dir: dir.to_path_buf(),
            repo,
            hub_config,
            hub: Some(hub),
            agents: Vec::new(),
            agents_shutdown: CancellationToken::new(),
            admin,
        };
        // The simulated clusters, one agent each.
        let clusters_dir = dir.join("clusters");
        for (name, labels) in CLUSTERS {
            let sim = KubeSim::start(SimConfig {
                readiness_delay: args.readiness_delay.get(),
                name: name.to_string(),
                ..Default::default()
            })
            .await
            .with_context(|| format!("start simulated cluster {name}"))?;
            let kubeconfig = clusters_dir.join(format!("{name}.kubeconfig"));
            std::fs::create_dir_all(&clusters_dir)?;
            sim.write_kubeconfig(&kubeconfig)?;
            let mut kc = kube::Config::new(sim.url().parse().context("kube-sim URL")?);
            kc.read_timeout = Some(Duration::from_secs(60));
            let client = kube::Client::try_from(kc).context("kube client")?;
            fleet.add_agent(name, labels, KubeSource::Client(client), kubeconfig, Some(sim)).await?;
        }
        if let Some(kc) = &args.kubeconfig {
            let kc = kc.canonicalize().with_context(|| format!("--kubeconfig {}", kc.display()))?;
            fleet
                .add_agent(
                    &args.cluster_name,
                    &args.cluster_labels,
                    KubeSource::Kubeconfig(kc.clone()),
                    kc,
                    None,
                )
                .await
                .with_context(|| format!("start the agent for {}", args.cluster_name))?;
        }
        Ok(fleet)
    }

    fn hub(&self) -> &HubHandle {
        self.hub.as_ref().expect("the hub runs until stop")
    }

    /// Create a bootstrap token for `name` and start a real agent with it.
    async fn add_agent(
        &mut self,
        name: &str,
        labels: &str,
        kube: KubeSource,
        kubeconfig: PathBuf,
        sim: Option<KubeSim>,
    ) -> Result<()> {
        let labels = convoy_agent::config::parse_labels(labels)?;
        let hub = self.hub();
        let token = hub.create_token(Some(name), labels.clone(), Duration::from_secs(3600), true).await?;
        let dir = self.dir.join("agents").join(name);
        std::fs::create_dir_all(&dir)?;
        let token_file = dir.join("bootstrap-token");
        std::fs::write(&token_file, &token.token)?;
        restrict(&token_file);
        let mut cfg = AgentConfig::new(&hub.endpoint(), name, dir.join("state"));
        cfg.kube = kube;
        cfg.hub_ca = Some(hub.data_dir.join("ca.crt"));
        cfg.token_file = Some(token_file);
        cfg.trusted_keys = vec![hub.data_dir.join("trusted-keys.pem")];
        cfg.labels = labels.clone();
        put_age_secret(&kubeconfig, &cfg.namespace, &self.age_identity)
            .await
            .with_context(|| format!("put the dev age key into cluster {name}"))?;
        cfg.sops_age_secret = Some(AGE_SECRET.into());
        let running = Agent::start(cfg, self.agents_shutdown.child_token())
            .instrument(info_span!("dev-agent", cluster = %name))
            .await?;
        self.agents.push(DevAgent { name: name.into(), labels, kubeconfig, sim, running });
        Ok(())
    }

    fn print_banner(&self, temporary: bool, log_file: &Path) {
        let hub = self.hub();
        let exe =
            std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "convoy".into());
        println!(
            "Convoy dev fleet: a hub, {} clusters with one agent each, a git repository.",
            self.agents.len()
        );
        println!();
        println!("  hub          {}  (gRPC over mTLS; config {})", hub.endpoint(), self.hub_config.display());
        if let Some(http) = hub.http_addr {
            println!("  webhook      http://{http}/hooks/{SOURCE}");
        }
        if let Some(m) = hub.metrics_addr {
            println!("  metrics      http://{m}/metrics");
        }
        println!("  credentials  {}", hub.admin.file.display());
        println!("  git repo     {}  (branch main; the hub fetches it over file://)", self.repo.display());
        for a in &self.agents {
            let kind = if a.sim.is_some() { "kube-sim" } else { "real cluster" };
            println!(
                "  cluster      {:<9} {:<24} {kind:<12} kubeconfig {}",
                a.name,
                convoy_core::labels::format(&a.labels),
                a.kubeconfig.display()
            );
        }
        println!("  logs         {}", log_file.display());
        if temporary {
            println!(
                "  (everything above is in a temporary directory removed at exit; --data-dir DIR keeps it)"
            );
        }
        println!();
        println!("In another terminal:");
        println!();
        println!("  export CONVOY_CREDENTIALS={}", hub.admin.file.display());
        println!("  alias convoy={exe}");
        println!("  convoy get clusters");
        println!("  convoy get bundles");
        println!("  convoy status web-prod");
        println!(
            "  convoy status podinfo-prod                          # the Helm example: a chart in the repository"
        );
        println!(
            "  convoy render web-prod --cluster prod-us --explain   # its REGION, and where it came from"
        );
        if let Some(a) = self.agents.iter().find(|a| a.name == "prod-eu") {
            println!("  kubectl --kubeconfig {} get deploy,svc,pdb -A", a.kubeconfig.display());
            println!(
                "  kubectl --kubeconfig {} -n web get secret -l owner=helm   # podinfo's Helm release record",
                a.kubeconfig.display()
            );
        }
        println!("  cd {}", self.repo.display());
        println!("  sed -i 's/podinfo:6.7.0/podinfo:6.7.1/' apps/web/base/deployment.yaml");
        println!("  git commit -am 'web 6.7.1'      # staging and prod-eu at once, prod-us after a 10s soak");
        println!();
        println!("Ctrl-C stops everything.");
        println!();
    }

    /// Print the fleet as it changes; fetch when `main` moves; until Ctrl-C
    /// (or convergence with --exit-when-ready).
    async fn watch(&mut self, args: &DevArgs, started: Instant) -> ExitCode {
        let signal = shutdown_signal();
        tokio::pin!(signal);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut fp = refs_fingerprint(&self.repo);
        let mut head = main_head(&self.repo).await.map(|(id, _)| id).unwrap_or_default();
        let mut change_at = started;
        let mut settled = false;
        let mut cells: BTreeMap<(String, String), String> = BTreeMap::new();
        let mut connected: BTreeMap<String, bool> = BTreeMap::new();
        let builds = self.hub().pipeline().builds();
        loop {
            tokio::select! {
                _ = &mut signal => {
                    println!();
                    println!("Stopping (Ctrl-C again to quit at once) ...");
                    return ExitCode::SUCCESS;
                }
                _ = tick.tick() => {}
            }
            // `main` moved: fetch now instead of at the next poll.
            let now_fp = refs_fingerprint(&self.repo);
            if now_fp != fp {
                fp = now_fp;
                let (new_head, subject) = main_head(&self.repo).await.unwrap_or_default();
                if !new_head.is_empty() && new_head != head {
                    head = new_head;
                    sprintln!("{}  main is now {} \"{subject}\": fetching", clock(), short(&head));
                    change_at = Instant::now();
                    settled = false;
                    if let Err(e) = self.hub().pipeline().reconcile(SOURCE) {
                        warn!(error = %e, "reconcile after a commit failed");
                    }
                }
            }
            let Ok(snap) = snapshot(&mut self.admin).await else { continue };
            // Cluster connections and cell transitions, one line each.
            for c in &snap.clusters {
                if connected.insert(c.name.clone(), c.connected).is_some_and(|was| was != c.connected) {
                    let what = if c.connected { "connected" } else { "disconnected" };
                    sprintln!("{}  {:<9} {what}", clock(), c.name);
                }
            }
            for b in &snap.bundles {
                for c in &b.clusters {
                    let text = cell_line(c);
                    let key = (c.cluster.clone(), b.name.clone());
                    if cells.get(&key) != Some(&text) {
                        println!("{}", transition_line(&clock(), &c.cluster, &b.name, &text));
                        cells.insert(key, text);
                    }
                }
            }
            // Settled: every bundle built at the head commit (or failed to),
            // and every good build Ready on every cluster it targets.
            let state = builds.borrow().clone();
            if !settled && let Some(outcome) = settle(&snap, &state, &head) {
                settled = true;
                let secs = change_at.elapsed().as_secs_f64();
                println!();
                print_matrix(&snap);
                println!();
                let failed = outcome.iter().filter(|l| l.contains(" did not build: ")).count();
                if failed > 0 {
                    sprintln!(
                        "==> {}: {failed} bundle(s) did not build, and every cluster keeps their last good generation; the rest is Ready ({secs:.1} s)",
                        short(&head)
                    );
                } else if change_at == started {
                    println!(
                        "==> fleet converged: {} bundles Ready on every cluster they target ({} bundle deployments) in {secs:.1} s",
                        snap.bundles.len(),
                        snap.bundles.iter().map(|b| b.clusters.len()).sum::<usize>()
                    );
                } else {
                    println!("==> {} rolled out in {secs:.1} s after the commit", short(&head));
                }
                for line in outcome {
                    sprintln!("    {line}");
                }
                println!();
                if args.exit_when_ready {
                    return ExitCode::SUCCESS;
                }
            }
            if args.exit_when_ready && !settled && started.elapsed() > args.ready_timeout.get() {
                eprintln!("error: the fleet did not converge within {}", args.ready_timeout);
                print_matrix(&snap);
                return ExitCode::from(1);
            }
        }
    }

    /// Stop agents, hub and clusters, each within a bounded grace. A second
    /// Ctrl-C exits at once.
    async fn stop(&mut self) {
        let force = tokio::spawn(async {
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("interrupted again: exiting now");
            std::process::exit(130);
        });
        self.agents_shutdown.cancel();
        let agents = std::mem::take(&mut self.agents);
        let mut sims = Vec::new();
        let joins = agents.into_iter().map(|a| {
            sims.extend(a.sim);
            let name = a.name;
            async move {
                if let Err(e) = a.running.join().await {
                    warn!(cluster = %name, error = %e, "agent stopped with an error");
                }
            }
        });
        let joins: Vec<_> = joins.collect();
        if tokio::time::timeout(AGENT_GRACE + Duration::from_secs(2), futures_join_all(joins)).await.is_err()
        {
            warn!("agents did not stop within the grace period");
        }
        if let Some(hub) = self.hub.take() {
            let _ = hub.shutdown().await;
        }
        for s in sims {
            s.shutdown().await;
        }
        force.abort();
        info!("convoy dev stopped");
        println!("Stopped.");
    }
}

/// Await every future (they run concurrently).
async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(fs: Vec<F>) {
    let handles: Vec<_> = fs.into_iter().map(tokio::spawn).collect();
    for h in handles {
        let _ = h.await;
    }
}

struct Snapshot {
    clusters: Vec<pb::Cluster>,
    bundles: Vec<pb::BundleView>,
}

async fn snapshot(admin: &mut FleetClient) -> Result<Snapshot> {
    let clusters = admin.list_clusters(pb::ListClustersRequest::default()).await?.into_inner().clusters;
    let bundles = admin.list_bundles(pb::ListBundlesRequest::default()).await?.into_inner().bundles;
    Ok(Snapshot { clusters, bundles })
}

/// Whether the fleet has settled at `head`; if so, one line per bundle.
fn settle(snap: &Snapshot, builds: &BTreeMap<String, BundleBuildState>, head: &str) -> Option<Vec<String>> {
    if snap.bundles.is_empty() || head.is_empty() {
        return None;
    }
    let mut lines = Vec::new();
    for b in &snap.bundles {
        let state = builds.get(&b.name)?;
        let at_head = |rev: &str| rev.rsplit_once("@sha1:").is_some_and(|(_, c)| c == head);
        match (&state.error, &state.artifact) {
            (Some(err), _) if err.revision.as_deref().is_some_and(at_head) => {
                let keep = if b.generation > 0 {
                    format!("every cluster keeps generation {}", b.generation)
                } else {
                    "nothing to deploy yet".into()
                };
                lines.push(format!("{:<12} did not build: {}: {} ({keep})", b.name, err.reason, err.message));
            }
            (None, Some(a)) if at_head(&a.revision) => {
                if b.digest != a.digest || !b.clusters.iter().all(|c| ready_at(c, b.generation)) {
                    return None;
                }
                let clusters: Vec<&str> = b.clusters.iter().map(|c| c.cluster.as_str()).collect();
                let on =
                    if clusters.is_empty() { "no cluster targeted".to_string() } else { clusters.join(", ") };
                lines.push(format!(
                    "{:<12} generation {} ({}) Ready on {on}",
                    b.name,
                    b.generation,
                    short_revision(&b.revision)
                ));
            }
            _ => return None,
        }
    }
    Some(lines)
}

fn ready_at(c: &pb::ClusterBundleStatus, generation: u64) -> bool {
    c.phase == pb::Phase::Ready as i32 && c.status.as_ref().is_some_and(|s| s.generation == generation)
}

/// A cell's phase; "Waiting" before the cluster has reported anything.
fn phase_name(p: i32) -> &'static str {
    match convoy_proto::convert::phase_from_pb(p) {
        Phase::Unknown => "Waiting",
        p => p.as_str(),
    }
}

/// `main@sha1:<40 hex>` -> `main@abc1234`.
fn short_revision(r: &str) -> String {
    match r.split_once("@sha1:") {
        Some((rf, c)) => format!("{rf}@{}", short(c)),
        None => r.to_string(),
    }
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(7)]
}

/// One cell as a line: phase, generation, revision, and why.
fn cell_line(c: &pb::ClusterBundleStatus) -> String {
    let Some(s) = &c.status else { return format!("{:<11} no status yet", phase_name(c.phase)) };
    let why = if c.phase == pb::Phase::Ready as i32 {
        let o = s.objects.unwrap_or_default();
        format!("{}/{} objects ready", o.ready, o.total)
    } else {
        let mut m: String = s.message.chars().take(80).collect();
        if s.message.chars().count() > 80 {
            m.push('…');
        }
        m
    };
    let rev = if s.revision.is_empty() { "-".to_string() } else { short_revision(&s.revision) };
    format!("{:<11} gen {}/{} {rev:<14} {why}", phase_name(c.phase), s.generation, c.desired_generation)
}

fn labels_text(labels: &std::collections::HashMap<String, String>) -> String {
    convoy_core::labels::format(labels)
}

/// One cell transition line, terminal-safe: the cluster name and the status
/// text come from agents.
fn transition_line(time: &str, cluster: &str, bundle: &str, text: &str) -> String {
    term_safe(&format!("{time}  {cluster:<9} {bundle:<12} {text}"))
}

/// Cluster x bundle: phase and revision of every cell; `·` where a bundle
/// does not target the cluster.
fn print_matrix(snap: &Snapshot) {
    println!("{}", matrix(snap));
}

/// The matrix of [`print_matrix`], every cell terminal-safe (names, labels
/// and revisions are agent-reported).
fn matrix(snap: &Snapshot) -> Table {
    let mut header = vec!["CLUSTER".to_string(), "LABELS".to_string()];
    header.extend(snap.bundles.iter().map(|b| term_safe(&b.name.to_uppercase())));
    let mut t = Table::new();
    t.load_style(NOTHING);
    t.set_header(header);
    for c in &snap.clusters {
        let mut row = vec![
            if c.connected { c.name.clone() } else { format!("{} (disconnected)", c.name) },
            labels_text(&c.labels),
        ];
        for b in &snap.bundles {
            row.push(match b.clusters.iter().find(|x| x.cluster == c.name) {
                Some(x) => match &x.status {
                    Some(s) => format!("{} {}", phase_name(x.phase), short_revision(&s.revision)),
                    None => phase_name(x.phase).to_string(),
                },
                None => "·".into(),
            });
        }
        t.add_row(row.iter().map(|c| term_safe(c)).collect::<Vec<_>>());
    }
    t
}

fn clock() -> String {
    let secs = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    // Local time is not worth a dependency here: UTC, like the logs.
    format!("{:02}:{:02}:{:02}", (secs / 3600) % 24, (secs / 60) % 60, secs % 60)
}

/// Owner-only permissions for a secret file.
fn restrict(p: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600));
    }
    #[cfg(not(unix))]
    let _ = p;
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_fleet_is_embedded_and_valid() {
        let paths: Vec<&str> = embedded::FLEET_FILES.iter().map(|(p, _)| *p).collect();
        assert!(paths.contains(&"apps/web/base/deployment.yaml"), "{paths:?}");
        assert!(paths.contains(&"apps/web/overlays/prod/kustomization.yaml"), "{paths:?}");
        let source = format!(
            "apiVersion: convoy.dev/v1\nkind: GitSource\nmetadata:\n  name: {SOURCE}\nspec:\n  url: file:///tmp/fleet\n"
        );
        let fleet = convoy_core::config::FleetConfig::parse([
            ("source.yaml", source.as_str()),
            ("bundles.yaml", embedded::BUNDLES_YAML),
            ("dev-secrets.yaml", DEV_SECRETS_BUNDLE),
            ("helm-bundles.yaml", embedded::HELM_BUNDLES_YAML),
        ])
        .expect("the embedded bundles are a valid fleet with dev's source");
        assert_eq!(fleet.bundles.len(), 7);
        // Every bundle path exists in the repository dev creates (the embedded
        // files plus the encrypted Secret written at start).
        for b in fleet.bundles.values() {
            let path = b.spec.helm.as_ref().and_then(|h| h.path.as_deref()).unwrap_or(&b.spec.path);
            let prefix = format!("{path}/");
            assert!(
                paths.iter().any(|p| p.starts_with(&prefix)) || SECRET_FILE.starts_with(&prefix),
                "{path}"
            );
            // A Helm bundle's values files are in the repository too.
            for f in b.spec.helm.iter().flat_map(|h| &h.values_files) {
                assert!(paths.contains(&f.as_str()), "{}: {f}", b.name);
            }
        }
        // The Helm example: one chart, a values file per environment, the
        // chart's own values.yaml, a helper template, .Capabilities and a hook.
        let chart = |f: &str| {
            let p = format!("charts/podinfo/{f}");
            let (_, bytes) = embedded::FLEET_FILES.iter().find(|(x, _)| *x == p).expect("chart file");
            String::from_utf8(bytes.to_vec()).unwrap()
        };
        assert!(chart("templates/_helpers.tpl").contains("define \"podinfo.fullname\""));
        assert!(chart("templates/configmap.yaml").contains(".Capabilities.KubeVersion"));
        assert!(chart("templates/preflight-job.yaml").contains("helm.sh/hook: pre-install,pre-upgrade"));
        let staging = &fleet.bundles["podinfo-staging"].spec;
        let prod = &fleet.bundles["podinfo-prod"].spec;
        let (hs, hp) = (staging.helm.as_ref().unwrap(), prod.helm.as_ref().unwrap());
        assert_eq!(hs.path, hp.path);
        assert_eq!(hs.values_files, ["apps/podinfo/values-staging.yaml"]);
        assert_eq!(hp.values_files, ["apps/podinfo/values-prod.yaml"]);
        // The example Secret is SOPS ciphertext that decrypts with the dev key.
        let keys = convoy_sops::AgeKeys::generate();
        let text = String::from_utf8(encrypted_secret(keys.recipients()).unwrap()).unwrap();
        assert!(!text.contains("convoy-dev\n") && text.contains("ENC[AES256_GCM,"), "{text}");
        let doc: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        assert!(convoy_sops::is_sops(&doc));
        let plain = convoy_sops::decrypt(&[doc], &keys).unwrap();
        assert_eq!(plain[0]["stringData"]["username"], "convoy-dev");
        // Every simulated cluster gets something beyond infra, and targeting is by labels.
        for (name, labels) in CLUSTERS {
            let labels = convoy_agent::config::parse_labels(labels).unwrap();
            let got = fleet.bundles_for(name, &labels);
            assert!(got.contains("infra") && got.len() >= 2, "{name}: {got:?}");
        }
    }

    #[test]
    fn revisions_and_cells_read_well() {
        assert_eq!(short_revision("main@sha1:0123456789abcdef0123456789abcdef01234567"), "main@0123456");
        let c = pb::ClusterBundleStatus {
            cluster: "prod-eu".into(),
            bundle: "web".into(),
            desired_generation: 2,
            phase: pb::Phase::Reconciling as i32,
            status: Some(pb::BundleStatus {
                generation: 1,
                revision: "main@sha1:0123456789abcdef0123456789abcdef01234567".into(),
                message: "applied 6 objects".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(cell_line(&c), "Reconciling gen 1/2 main@0123456   applied 6 objects");
        let ready = pb::ClusterBundleStatus {
            phase: pb::Phase::Ready as i32,
            status: Some(pb::BundleStatus {
                generation: 2,
                revision: "main@sha1:0123456789abcdef0123456789abcdef01234567".into(),
                objects: Some(pb::ObjectCounts { total: 6, ready: 6, ..Default::default() }),
                ..Default::default()
            }),
            ..c.clone()
        };
        assert_eq!(cell_line(&ready), "Ready       gen 2/2 main@0123456   6/6 objects ready");
        assert_eq!(
            labels_text(&[("region".to_string(), "eu".to_string()), ("env".into(), "prod".into())].into()),
            "env=prod,region=eu"
        );
    }

    /// Agent-controlled text (a cluster's name and labels, a status message
    /// and revision) cannot drive the terminal: escapes and bidi overrides
    /// are shown escaped in transition lines and in the matrix.
    #[test]
    fn agent_text_is_terminal_safe_in_dev_output() {
        let evil = "x\u{1b}[2J\u{1b}]0;pwned\u{7}\u{202e}txt";
        let c = pb::ClusterBundleStatus {
            cluster: evil.into(),
            bundle: "web".into(),
            desired_generation: 1,
            phase: pb::Phase::Stalled as i32,
            status: Some(pb::BundleStatus {
                generation: 1,
                revision: format!("main{evil}@sha1:0123456789"),
                message: format!("failed {evil}"),
                ..Default::default()
            }),
            ..Default::default()
        };
        let clean = |s: &str| !s.chars().any(|ch| (ch.is_control() && ch != '\n') || ch == '\u{202e}');
        let line = transition_line("12:00:00", &c.cluster, "web", &cell_line(&c));
        assert!(clean(&line), "{line:?}");
        assert!(line.contains("\\u{1b}[2J") && line.contains("\\u{202e}"), "{line}");
        let snap = Snapshot {
            clusters: vec![pb::Cluster {
                name: evil.into(),
                labels: [("env".to_string(), evil.to_string())].into(),
                connected: true,
                ..Default::default()
            }],
            bundles: vec![pb::BundleView { name: "web".into(), clusters: vec![c], ..Default::default() }],
        };
        let table = matrix(&snap).to_string();
        assert!(clean(&table), "{table:?}");
        assert!(table.contains("\\u{1b}"), "{table}");
    }
}
