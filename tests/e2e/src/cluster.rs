//! One simulated cluster of the fleet: a kube-sim API server (with a
//! kubeconfig the real kubectl uses) and a real convoy agent running
//! in-process against it, registered with a bootstrap token over mTLS,
//! optionally reaching the hub through a [`CutProxy`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use convoy_agent::metrics::Metrics;
use convoy_agent::{Agent, AgentConfig, KubeSource, RunningAgent, Tuning};
use convoy_core::BUNDLE_LABEL;
use kube_sim::{KubeSim, SimConfig};
use tokio_util::sync::CancellationToken;

use crate::hub::HubRunner;
use crate::proxy::CutProxy;

/// A cluster to create: a name and labels.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// The cluster name (and kubeconfig context name).
    pub name: String,
    /// Labels given with its bootstrap token.
    pub labels: BTreeMap<String, String>,
}

impl ClusterSpec {
    /// `ClusterSpec::new("prod-eu", "env=prod,region=eu")`.
    pub fn new(name: &str, labels: &str) -> ClusterSpec {
        let labels = labels
            .split(',')
            .filter(|p| !p.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').expect("labels are k=v");
                (k.to_string(), v.to_string())
            })
            .collect();
        ClusterSpec { name: name.into(), labels }
    }
}

/// Resource types the example fleet uses, as (group, plural, kind): what
/// [`Cluster::bundle_objects`] scans.
pub const SCANNED: &[(&str, &str, &str)] = &[
    ("", "namespaces", "Namespace"),
    ("", "configmaps", "ConfigMap"),
    ("", "services", "Service"),
    ("", "serviceaccounts", "ServiceAccount"),
    ("", "secrets", "Secret"),
    ("apps", "deployments", "Deployment"),
    ("apps", "daemonsets", "DaemonSet"),
    ("apps", "statefulsets", "StatefulSet"),
    ("policy", "poddisruptionbudgets", "PodDisruptionBudget"),
    ("rbac.authorization.k8s.io", "clusterroles", "ClusterRole"),
    ("rbac.authorization.k8s.io", "clusterrolebindings", "ClusterRoleBinding"),
    ("rbac.authorization.k8s.io", "roles", "Role"),
    ("rbac.authorization.k8s.io", "rolebindings", "RoleBinding"),
];

/// A kube-sim cluster with its agent.
pub struct Cluster {
    /// The cluster name.
    pub name: String,
    /// The labels it registered with.
    pub labels: BTreeMap<String, String>,
    /// The simulated API server.
    pub sim: KubeSim,
    /// A kubeconfig for kubectl and kube-rs.
    pub kubeconfig: PathBuf,
    /// The proxy between its agent and the hub, if any.
    pub proxy: Option<CutProxy>,
    cfg: AgentConfig,
    agent: Option<(CancellationToken, RunningAgent)>,
}

/// Agent timers for tests: quick reconnects, drift checks and retries.
pub fn test_tuning() -> Tuning {
    Tuning {
        heartbeat: Duration::from_secs(5),
        reconnect_base: Duration::from_millis(100),
        reconnect_cap: Duration::from_secs(1),
        drift_debounce: Duration::from_millis(200),
        health_recheck: Duration::from_secs(1),
        retry_base: Duration::from_millis(200),
        retry_cap: Duration::from_secs(2),
        ..Tuning::default()
    }
}

impl Cluster {
    /// Start kube-sim, write the kubeconfig and token under `dir`, and start
    /// the agent (through a new proxy when `proxy`).
    pub async fn start(
        dir: &Path,
        spec: &ClusterSpec,
        readiness_delay: Duration,
        hub: &HubRunner,
        token: &str,
        proxy: bool,
    ) -> Result<Cluster> {
        std::fs::create_dir_all(dir)?;
        let sim =
            KubeSim::start(SimConfig { readiness_delay, name: spec.name.clone(), ..Default::default() })
                .await
                .context("start kube-sim")?;
        let kubeconfig = dir.join("kubeconfig");
        sim.write_kubeconfig(&kubeconfig)?;
        let token_file = dir.join("token");
        std::fs::write(&token_file, token)?;
        let proxy = if proxy { Some(CutProxy::start(hub.grpc_addr).await?) } else { None };
        let address = match &proxy {
            Some(p) => format!("https://{}", p.addr),
            None => hub.endpoint(),
        };
        let mut cfg = AgentConfig::new(&address, &spec.name, dir.join("agent-state"));
        cfg.kube = KubeSource::Client(sim_client(&sim)?);
        cfg.hub_ca = Some(hub.ca_file());
        cfg.token_file = Some(token_file);
        cfg.trusted_keys = vec![hub.trusted_keys_file()];
        cfg.labels = spec.labels.clone();
        cfg.tuning = test_tuning();
        let mut c = Cluster {
            name: spec.name.clone(),
            labels: spec.labels.clone(),
            sim,
            kubeconfig,
            proxy,
            cfg,
            agent: None,
        };
        c.start_agent().await?;
        Ok(c)
    }

    /// Start the agent (again: it resumes from its state dir and identity Secret).
    pub async fn start_agent(&mut self) -> Result<()> {
        if self.agent.is_some() {
            bail!("the agent of {} runs already", self.name);
        }
        let token = CancellationToken::new();
        let running = Agent::start(self.cfg.clone(), token.clone()).await.context("start the agent")?;
        self.agent = Some((token, running));
        Ok(())
    }

    /// Restart the agent with other timers (same state dir and identity).
    pub async fn restart_agent_with(&mut self, tuning: Tuning) -> Result<()> {
        self.stop_agent().await;
        self.cfg.tuning = tuning;
        self.start_agent().await
    }

    /// Stop the agent (drain within its grace period).
    pub async fn stop_agent(&mut self) {
        if let Some((token, running)) = self.agent.take() {
            token.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(30), running.join()).await;
        }
    }

    /// The running agent's metrics.
    pub fn metrics(&self) -> Option<Arc<Metrics>> {
        self.agent.as_ref().map(|(_, r)| r.metrics.clone())
    }

    /// The agent's `convoy_agent_events_total` by (bundle, reason): every
    /// event it recorded in its outbox since it started.
    pub fn agent_event_counts(&self) -> BTreeMap<(String, String), u64> {
        let mut out = BTreeMap::new();
        let Some(m) = self.metrics() else { return out };
        for line in m.encode().lines() {
            let Some(rest) = line.strip_prefix("convoy_agent_events_total{") else { continue };
            let Some((labels, value)) = rest.split_once("} ") else { continue };
            let label = |k: &str| {
                labels
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                    .map(|v| v.trim_end_matches('"').to_string())
                    .unwrap_or_default()
            };
            let n: f64 = value.trim().parse().unwrap_or(0.0);
            if n > 0.0 {
                out.insert((label("bundle"), label("reason")), n as u64);
            }
        }
        out
    }

    /// Whether the agent holds a Sync stream (`convoy_agent_hub_connected`).
    pub fn agent_connected(&self) -> bool {
        self.metrics().is_some_and(|m| m.hub_connected.get() == 1)
    }

    /// Statuses and events waiting for the hub's ack (`convoy_agent_outbox_depth`).
    pub fn outbox_depth(&self) -> i64 {
        self.metrics().map(|m| m.outbox_depth.get()).unwrap_or(-1)
    }

    /// Run the real kubectl against this cluster.
    pub async fn kubectl(&self, args: &[&str]) -> Result<Output> {
        tokio::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .await
            .context("run kubectl (is it installed?)")
    }

    /// Like [`Cluster::kubectl`], failing unless it succeeds; returns stdout.
    pub async fn kubectl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl(args).await?;
        if !out.status.success() {
            bail!("kubectl {args:?} on {}: {}", self.name, String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Every object labelled `convoy.dev/bundle=<bundle>`, as `Kind/ns/name`
    /// (`Kind/name` when cluster-scoped), sorted.
    pub fn bundle_objects(&self, bundle: &str) -> Vec<String> {
        bundle_objects(&self.sim, bundle)
    }

    /// Whether the agent's inventory of `bundle` exists on the cluster.
    pub fn has_inventory(&self, bundle: &str) -> bool {
        self.sim
            .object("", "configmaps", &self.cfg.namespace, &format!("convoy-inventory-{bundle}"))
            .is_some()
    }

    /// One object from the simulator's store.
    pub fn object(
        &self,
        group: &str,
        plural: &str,
        namespace: &str,
        name: &str,
    ) -> Option<serde_json::Value> {
        self.sim.object(group, plural, namespace, name)
    }

    /// The container image of Deployment `ns/name`, if it exists.
    pub fn deployment_image(&self, namespace: &str, name: &str) -> Option<String> {
        let d = self.sim.object("apps", "deployments", namespace, name)?;
        d["spec"]["template"]["spec"]["containers"][0]["image"].as_str().map(String::from)
    }

    /// Stop the agent and the simulator.
    pub async fn shutdown(mut self) {
        self.stop_agent().await;
        self.sim.shutdown().await;
    }
}

/// A kube-rs client for a simulator.
pub fn sim_client(sim: &KubeSim) -> Result<kube::Client> {
    let mut cfg = kube::Config::new(sim.url().parse().context("kube-sim URL")?);
    cfg.read_timeout = Some(Duration::from_secs(60));
    kube::Client::try_from(cfg).context("kube client")
}

/// Every object of a simulator labelled `convoy.dev/bundle=<bundle>`, as
/// `Kind/ns/name` (`Kind/name` when cluster-scoped), sorted.
pub fn bundle_objects(sim: &KubeSim, bundle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (group, plural, kind) in SCANNED {
        for o in sim.objects(group, plural) {
            if o["metadata"]["labels"][BUNDLE_LABEL].as_str() == Some(bundle) {
                let name = o["metadata"]["name"].as_str().unwrap_or_default();
                match o["metadata"]["namespace"].as_str() {
                    Some(ns) if !ns.is_empty() => out.push(format!("{kind}/{ns}/{name}")),
                    _ => out.push(format!("{kind}/{name}")),
                }
            }
        }
    }
    out.sort();
    out
}
