//! A whole fleet for a scenario: git daemon + repository, hub, clusters with
//! agents, an optional alert receiver, and the operator queries (over the
//! hub's gRPC Fleet API, as `convoy` does) that scenarios assert on.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use convoy_cli::cmd_fleet::FleetClient;
use convoy_proto::v1 as pb;
use convoy_testsupport::TestDir;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::cluster::{Cluster, ClusterSpec};
use crate::git::{GitDaemon, GitRepo};
use crate::hub::{HubMode, HubRunner};
use crate::receiver::AlertReceiver;

/// The GitSource name of the example fleet.
pub const SOURCE: &str = "fleet";

/// What to start.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// The clusters (default: `staging` env=staging,region=eu; `prod-eu`
    /// env=prod,region=eu; `prod-us` env=prod,region=us).
    pub clusters: Vec<ClusterSpec>,
    /// kube-sim's simulated workload readiness delay.
    pub readiness_delay: Duration,
    /// How the hub runs.
    pub hub: HubMode,
    /// Put a cuttable TCP proxy between each agent and the hub.
    pub proxies: bool,
    /// Start an alert receiver, with a `webhook` Provider and an Alert for
    /// error events (`severity: error`).
    pub alerts: bool,
    /// The GitSource poll interval (pushes also call the webhook).
    pub poll_interval: String,
    /// The repository content (default: `examples/fleet`).
    pub files: Vec<(String, Vec<u8>)>,
    /// The Bundle documents (default: `examples/bundles.yaml` without rollouts,
    /// [`crate::examples::bundles_yaml_all_at_once`]).
    pub bundles_yaml: String,
    /// Put the hub's data dir on a tmpfs of this many bytes (full-disk scenarios).
    pub hub_data_tmpfs: Option<u64>,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            clusters: default_clusters(),
            readiness_delay: Duration::from_millis(100),
            hub: HubMode::InProcess,
            proxies: false,
            alerts: false,
            poll_interval: "2s".into(),
            files: crate::examples::fleet_files(),
            bundles_yaml: crate::examples::bundles_yaml_all_at_once(),
            hub_data_tmpfs: None,
        }
    }
}

/// The three clusters of `convoy dev`.
pub fn default_clusters() -> Vec<ClusterSpec> {
    vec![
        ClusterSpec::new("staging", "env=staging,region=eu"),
        ClusterSpec::new("prod-eu", "env=prod,region=eu"),
        ClusterSpec::new("prod-us", "env=prod,region=us"),
    ]
}

/// A running fleet.
pub struct Fleet {
    /// The working repository (commit here, then [`Fleet::push`]).
    pub repo: GitRepo,
    /// The git server the hub fetches from.
    pub git: GitDaemon,
    /// The hub.
    pub hub: HubRunner,
    /// The clusters, in the order given.
    pub clusters: Vec<Cluster>,
    /// The alert receiver, with `alerts`.
    pub receiver: Option<AlertReceiver>,
    webhook_secret: String,
    admin: FleetClient,
    http: reqwest::Client,
    /// Everything lives under this directory: removed on drop, or kept (its
    /// path printed) when the test fails. Last, so that it outlives every
    /// process serving from it.
    pub dir: TestDir,
}

impl Fleet {
    /// Start everything; returns once every agent runs (not yet converged).
    pub async fn start(opts: FleetOptions) -> Result<Fleet> {
        crate::init();
        let dir = TestDir::new("convoy-e2e-")?;
        let root = dir.path().to_path_buf();
        let repo =
            GitRepo::init_with_bare(&root.join("work/fleet"), &root.join("git/fleet.git"), &opts.files)?;
        let git = GitDaemon::start(&root.join("git"))?;

        let hub_dir = root.join("hub");
        let fleet_dir = hub_dir.join("fleet");
        std::fs::create_dir_all(&fleet_dir)?;
        let webhook_secret = format!("{:032x}", rand::random::<u128>());
        std::fs::write(hub_dir.join("webhook-secret"), &webhook_secret)?;
        std::fs::write(
            fleet_dir.join("source.yaml"),
            format!(
                "apiVersion: convoy.dev/v1\nkind: GitSource\nmetadata:\n  name: {SOURCE}\nspec:\n  url: {}\n  ref: {{branch: main}}\n  interval: {}\n  timeout: 60s\n  webhook:\n    secretFile: {}\n    type: generic\n",
                git.url("fleet.git"),
                opts.poll_interval,
                hub_dir.join("webhook-secret").display()
            ),
        )?;
        std::fs::write(fleet_dir.join("bundles.yaml"), &opts.bundles_yaml)?;
        let receiver = if opts.alerts {
            let r = AlertReceiver::start().await?;
            std::fs::write(
                fleet_dir.join("alerts.yaml"),
                format!(
                    "apiVersion: convoy.dev/v1\nkind: Provider\nmetadata:\n  name: receiver\nspec:\n  type: webhook\n  address: {}\n  timeout: 5s\n---\napiVersion: convoy.dev/v1\nkind: Alert\nmetadata:\n  name: failures\nspec:\n  providerRef: receiver\n  severity: error\n  suppressWindow: 0s\n",
                    r.url()
                ),
            )?;
            Some(r)
        } else {
            None
        };

        let hub = HubRunner::start_with(&hub_dir, opts.hub.clone(), opts.hub_data_tmpfs).await?;
        let mut admin = hub.admin().await?;
        let mut clusters = Vec::new();
        for spec in &opts.clusters {
            let token = admin
                .create_token(pb::CreateTokenRequest {
                    cluster: spec.name.clone(),
                    labels: spec.labels.clone().into_iter().collect(),
                    ttl_seconds: 3600,
                    single_use: false,
                    ..Default::default()
                })
                .await
                .context("create a bootstrap token")?
                .into_inner()
                .token;
            let c = Cluster::start(
                &root.join("clusters").join(&spec.name),
                spec,
                opts.readiness_delay,
                &hub,
                &token,
                opts.proxies,
            )
            .await?;
            clusters.push(c);
        }
        Ok(Fleet {
            repo,
            git,
            hub,
            clusters,
            receiver,
            webhook_secret,
            admin,
            http: reqwest::Client::new(),
            dir,
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// An operator client.
    pub fn admin(&self) -> FleetClient {
        self.admin.clone()
    }

    /// A cluster by name.
    pub fn cluster(&self, name: &str) -> &Cluster {
        self.clusters.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no cluster {name}"))
    }

    /// A cluster by name, mutable (stop/start its agent).
    pub fn cluster_mut(&mut self, name: &str) -> &mut Cluster {
        self.clusters.iter_mut().find(|c| c.name == name).unwrap_or_else(|| panic!("no cluster {name}"))
    }

    /// Push `main` to the git server and call the source's webhook (as a git
    /// host would after a push). Returns the pushed commit.
    pub async fn push(&self) -> Result<String> {
        self.repo.push()?;
        self.webhook().await?;
        self.repo.head()
    }

    /// POST the GitSource webhook with a valid `X-Signature`; expects 202.
    pub async fn webhook(&self) -> Result<()> {
        // A delivery id makes each delivery unique: the hub accepts a signed
        // generic request once, so two identical ones in the same second
        // would be one delivery (docs/config.md, Webhooks).
        let body = format!(r#"{{"ref":"refs/heads/main","delivery":"{:032x}"}}"#, rand::random::<u128>());
        let body = body.as_bytes();
        // The generic variant signs "<timestamp>.<body>" (replay window).
        let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        let mut mac = Hmac::<Sha256>::new_from_slice(self.webhook_secret.as_bytes()).expect("any key length");
        mac.update(format!("{ts}.").as_bytes());
        mac.update(body);
        let sig = hex::encode(mac.finalize().into_bytes());
        let resp = self
            .http
            .post(self.hub.webhook_url(SOURCE))
            .header("X-Signature-Timestamp", ts.to_string())
            .header("X-Signature", format!("sha256={sig}"))
            .header("Content-Type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .context("POST the webhook")?;
        if resp.status().as_u16() != 202 {
            bail!("webhook answered {}", resp.status());
        }
        Ok(())
    }

    /// `convoy reconcile source fleet` through the Fleet API.
    pub async fn reconcile(&self) -> Result<()> {
        self.admin()
            .reconcile(pb::ObjectRef { kind: pb::ObjectKind::Source as i32, name: SOURCE.into() })
            .await?;
        Ok(())
    }

    /// One bundle as the hub shows it.
    pub async fn bundle(&self, name: &str) -> Result<pb::BundleView> {
        Ok(self
            .admin()
            .get_bundle(pb::GetBundleRequest { name: name.into(), ..Default::default() })
            .await?
            .into_inner())
    }

    /// Every bundle as the hub shows it.
    pub async fn bundles(&self) -> Result<Vec<pb::BundleView>> {
        Ok(self.admin().list_bundles(pb::ListBundlesRequest::default()).await?.into_inner().bundles)
    }

    /// One cluster as the hub shows it.
    pub async fn hub_cluster(&self, name: &str) -> Result<pb::ClusterDetail> {
        Ok(self.admin().get_cluster(pb::GetClusterRequest { name: name.into() }).await?.into_inner())
    }

    /// Every event the hub stored for `cluster` ("hub" for its own), oldest first.
    pub async fn events(&self, cluster: &str) -> Result<Vec<pb::StoredEvent>> {
        Ok(self
            .admin()
            .list_events(pb::ListEventsRequest {
                cluster: cluster.into(),
                limit: 1_000_000,
                ..Default::default()
            })
            .await?
            .into_inner()
            .events)
    }

    /// Poll `get_bundle(name)` until `ok` holds (returns that view).
    pub async fn wait_bundle(
        &self,
        name: &str,
        secs: u64,
        what: &str,
        ok: impl Fn(&pb::BundleView) -> bool,
    ) -> pb::BundleView {
        let mut last = None;
        let r = tokio::time::timeout(Duration::from_secs(secs), async {
            loop {
                if let Ok(b) = self.bundle(name).await {
                    if ok(&b) {
                        return b;
                    }
                    last = Some(b);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        match r {
            Ok(b) => b,
            Err(_) => panic!(
                "timed out after {secs} s waiting for {what}; last view of {name}: {}",
                describe(last.as_ref())
            ),
        }
    }

    /// Wait until the hub has built `commit` for `bundle` and every targeted
    /// cluster reports it Ready at that generation. Returns the view.
    pub async fn wait_rolled_out(&self, bundle: &str, commit: &str, secs: u64) -> pb::BundleView {
        self.wait_bundle(bundle, secs, &format!("{bundle} at {commit} Ready everywhere"), |b| {
            crate::commit_of(&b.revision) == commit && all_ready(b)
        })
        .await
    }

    /// Wait until every bundle has a generation and every targeted cell is
    /// Ready at it. Returns the bundles.
    pub async fn wait_converged(&self, secs: u64) -> Vec<pb::BundleView> {
        let mut last = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(secs), async {
            loop {
                if let Ok(bs) = self.bundles().await {
                    if !bs.is_empty() && bs.iter().all(all_ready) {
                        return bs;
                    }
                    last = bs;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        match r {
            Ok(bs) => bs,
            Err(_) => panic!(
                "timed out after {secs} s waiting for the fleet to converge; last views:\n{}",
                last.iter().map(|b| describe(Some(b))).collect::<Vec<_>>().join("\n")
            ),
        }
    }

    /// Run a `convoy` binary with this hub's credentials; returns its output.
    pub async fn convoy(&self, bin: &Path, args: &[&str]) -> Result<Output> {
        tokio::process::Command::new(bin)
            .args(args)
            .env("CONVOY_CREDENTIALS", self.hub.credentials())
            .env("CONVOY_LOG", "error")
            .output()
            .await
            .with_context(|| format!("run {} {args:?}", bin.display()))
    }

    /// Like [`Fleet::convoy`], failing unless it exits 0; returns stdout.
    pub async fn convoy_ok(&self, bin: &Path, args: &[&str]) -> Result<String> {
        let out = self.convoy(bin, args).await?;
        if !out.status.success() {
            bail!("convoy {args:?} exited {}: {}", out.status, String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Wait (at most `secs`) until every agent is connected with an empty
    /// outbox and the hub's stored events per (bundle, reason) equal what
    /// the agent recorded (`convoy_agent_events_total`): nothing lost (hub
    /// below agent) and nothing stored twice (hub above agent). Also checks
    /// that stored event ids strictly increase. Panics with the difference.
    pub async fn assert_hub_holds_what_agents_sent(&self, secs: u64) {
        for c in &self.clusters {
            let mut last = (BTreeMap::new(), BTreeMap::new());
            let r = tokio::time::timeout(Duration::from_secs(secs), async {
                loop {
                    if c.agent_connected()
                        && c.outbox_depth() == 0
                        && let Ok(evs) = self.events(&c.name).await
                    {
                        let hub = event_counts(&evs);
                        let agent = c.agent_event_counts();
                        if hub == agent && !agent.is_empty() {
                            return evs;
                        }
                        last = (hub, agent);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .await;
            let evs = r.unwrap_or_else(|_| {
                panic!("{}: hub events {:?} != agent events {:?} after {secs} s", c.name, last.0, last.1)
            });
            let ids: Vec<u64> = evs.iter().map(|e| e.id).collect();
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "{}: event ids {ids:?}", c.name);
        }
    }

    /// Stop agents, hub, simulators and the git server.
    pub async fn shutdown(mut self) {
        for c in self.clusters.drain(..) {
            c.shutdown().await;
        }
        self.hub.shutdown().await;
    }
}

/// Every targeted cell Ready at the bundle's current generation (and at
/// least one cell), and the hub-side build not Stalled.
pub fn all_ready(b: &pb::BundleView) -> bool {
    b.generation > 0 && !b.clusters.is_empty() && b.clusters.iter().all(|c| cell_ready_at(c, b.generation))
}

/// The cell shows Ready with the agent's status at `generation`.
pub fn cell_ready_at(c: &pb::ClusterBundleStatus, generation: u64) -> bool {
    c.phase == pb::Phase::Ready as i32
        && c.desired_generation == generation
        && c.status.as_ref().is_some_and(|s| s.generation == generation && s.phase == pb::Phase::Ready as i32)
}

/// The clusters of a bundle view's matrix, sorted.
pub fn cells(b: &pb::BundleView) -> Vec<String> {
    let mut v: Vec<String> = b.clusters.iter().map(|c| c.cluster.clone()).collect();
    v.sort();
    v
}

/// The hub-side condition of a bundle view by type.
pub fn condition<'a>(b: &'a pb::BundleView, type_: &str) -> Option<&'a pb::Condition> {
    b.conditions.iter().find(|c| c.r#type == type_)
}

/// A one-bundle summary for failure messages.
pub fn describe(b: Option<&pb::BundleView>) -> String {
    let Some(b) = b else { return "(none)".into() };
    let cells: Vec<String> = b
        .clusters
        .iter()
        .map(|c| {
            let st = c.status.as_ref();
            format!(
                "{}: phase {} gen {}/{} {}",
                c.cluster,
                c.phase,
                st.map(|s| s.generation).unwrap_or(0),
                c.desired_generation,
                st.map(|s| s.message.as_str()).unwrap_or("")
            )
        })
        .collect();
    let conds: Vec<String> = b
        .conditions
        .iter()
        .map(|c| format!("{}={} {}: {}", c.r#type, c.status, c.reason, c.message))
        .collect();
    format!(
        "{} gen {} rev {} [{}] [{}]",
        b.name,
        b.generation,
        b.revision,
        conds.join("; "),
        cells.join("; ")
    )
}

/// Counts of events per (bundle, reason).
pub fn event_counts(events: &[pb::StoredEvent]) -> BTreeMap<(String, String), u64> {
    let mut m = BTreeMap::new();
    for e in events.iter().filter_map(|e| e.event.as_ref()) {
        *m.entry((e.bundle.clone(), e.reason.clone())).or_insert(0) += 1;
    }
    m
}
