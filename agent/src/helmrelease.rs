//! Helm releases on the agent side: a Helm bundle's artifact carries a
//! `convoy.dev/v1 HelmRelease` record and hook objects next to the release's
//! objects (layout in convoy_helm::bundle). This module owns splitting them
//! out, running hooks as ordered phases around the release's apply
//! (pre-install/pre-upgrade before, post-* after, by weight, waiting for Jobs
//! and Pods to finish by watching them (a hook deleted while waited for is
//! done, as in Helm), honouring `helm.sh/hook-delete-policy`), and writing
//! Helm's own release Secret so that `helm list`, `helm get values` and
//! `helm history` see the release; `maxHistory` bounds the kept revisions.
//! It also carries the chart's CRD policy into the plan ([`crd_policy`]:
//! with `crds: Create` the chart's `crds/` are created when missing and
//! never changed). Decisions ([`split`], [`phase`], [`crd_policy`],
//! convoy_helm::release::plan_history) are pure; [`Release`] runs their effects.

use std::time::{Duration, Instant};

use convoy_helm::output::{HOOK_ANNOTATION, HOOK_DELETE_POLICY_ANNOTATION, HOOK_WEIGHT_ANNOTATION};
use convoy_helm::release::{
    self as rel, CrdPolicy, HistoryPlan, ReleaseSpec, Revision, Status, plan_history, release_json,
    release_secret,
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::engine::Plan;
use crate::objects::{Manifest, ObjKey, WriteMode};
use crate::policy;
use crate::{Error, Result};

/// The field manager of hooks and release records.
const MANAGER: &str = "convoy-helm";

/// A hook object from the artifact.
#[derive(Debug, Clone, PartialEq)]
pub struct HookObject {
    /// The template it came from (`c/templates/tests/t.yaml`), for Helm's
    /// release record.
    pub path: String,
    /// Its events.
    pub events: Vec<String>,
    /// `helm.sh/hook-weight`.
    pub weight: i64,
    /// `helm.sh/hook-delete-policy` (default `before-hook-creation`).
    pub delete_policies: Vec<String>,
    /// The object.
    pub object: Value,
}

impl HookObject {
    /// `kind`.
    pub fn kind(&self) -> &str {
        self.object["kind"].as_str().unwrap_or_default()
    }
    /// `metadata.name`.
    pub fn name(&self) -> &str {
        self.object["metadata"]["name"].as_str().unwrap_or_default()
    }
    /// Whether `helm.sh/hook-delete-policy` names `p`.
    pub fn has_policy(&self, p: &str) -> bool {
        self.delete_policies.iter().any(|x| x == p)
    }
    /// Whether this is a test hook (`test`, or Helm 2's `test-success`).
    pub fn is_test(&self) -> bool {
        self.events.iter().any(|e| e == "test" || e == "test-success")
    }
    /// The hook as Helm's release record lists it.
    fn record(&self, last_run: Option<(String, String, String)>) -> rel::HookRecord {
        rel::HookRecord {
            name: self.name().into(),
            kind: self.kind().into(),
            path: self.path.clone(),
            manifest: serde_saphyr::to_string(&self.object).unwrap_or_default(),
            events: self.events.clone(),
            weight: self.weight,
            delete_policies: self.delete_policies.clone(),
            last_run,
        }
    }
}

/// The Helm parts of a bundle.
#[derive(Debug, Clone, PartialEq)]
pub struct HelmParts {
    /// The release record.
    pub spec: ReleaseSpec,
    /// Hooks run around installs and upgrades.
    pub hooks: Vec<HookObject>,
    /// Test hooks (`helm/tests/` in the artifact): run only by `convoy test`
    /// (crate::helmtest), never with an install or upgrade.
    pub tests: Vec<HookObject>,
}

/// Split a bundle's manifests into the release's objects and, for a Helm
/// bundle, its record and hooks. Pure.
pub fn split(manifests: Vec<Manifest>) -> Result<(Vec<Manifest>, Option<HelmParts>)> {
    let (mut objects, mut spec, mut hooks) = (Vec::with_capacity(manifests.len()), None, Vec::new());
    let mut tests = Vec::new();
    let mut hook_manifests = Vec::new();
    for m in manifests {
        let is_record = m.api_version == rel::RECORD_API_VERSION && m.kind == rel::RECORD_KIND;
        let maybe_hook = m.body.contains(HOOK_ANNOTATION);
        if !is_record && !maybe_hook {
            objects.push(m);
            continue;
        }
        let v: Value = serde_json::from_str(&m.body)
            .map_err(|e| Error::Config(format!("{} {}: {e}", m.kind, m.name)))?;
        if is_record {
            let s = ReleaseSpec::from_object(&v).map_err(|e| Error::Config(e.to_string()))?;
            if spec.replace(s).is_some() {
                return Err(Error::Config("the artifact holds two HelmRelease records".into()));
            }
            continue;
        }
        let ann = v.pointer("/metadata/annotations").and_then(Value::as_object);
        let Some(events) = ann.and_then(|a| a.get(HOOK_ANNOTATION)).and_then(Value::as_str) else {
            objects.push(m);
            continue;
        };
        let list = |s: &str| {
            s.split(',').map(str::trim).filter(|x| !x.is_empty()).map(String::from).collect::<Vec<_>>()
        };
        let ann = ann.expect("checked");
        let weight = ann
            .get(HOOK_WEIGHT_ANNOTATION)
            .and_then(Value::as_str)
            .and_then(|w| w.trim().parse().ok())
            .unwrap_or(0);
        let mut delete_policies =
            ann.get(HOOK_DELETE_POLICY_ANNOTATION).and_then(Value::as_str).map(list).unwrap_or_default();
        if delete_policies.is_empty() {
            delete_policies.push("before-hook-creation".into());
        }
        let file = &m.origin.file;
        let path = file
            .strip_prefix(convoy_helm::bundle::HOOKS_DIR)
            .or_else(|| file.strip_prefix(convoy_helm::bundle::TESTS_DIR))
            .unwrap_or(file)
            .to_string();
        let h = HookObject { path, events: list(events), weight, delete_policies, object: v };
        if h.is_test() {
            tests.push(h)
        } else {
            hooks.push(h)
        }
        hook_manifests.push(m);
    }
    match spec {
        Some(spec) => Ok((objects, Some(HelmParts { spec, hooks, tests }))),
        None if hooks.is_empty() && tests.is_empty() => Ok((objects, None)),
        // Hook annotations without a record: not a Convoy Helm bundle; apply as plain objects.
        None => {
            objects.extend(hook_manifests);
            Ok((objects, None))
        }
    }
}

/// Where the chart's `crds/` are in a Helm bundle's artifact (convoy_helm::bundle).
pub const CRDS_DIR: &str = "helm/crds/";

/// Carry the release's CRD policy into its plan: under `crds: Create` every
/// object of the chart's `crds/` is created when missing and never changed
/// ([`WriteMode::CreateOnly`]); under `CreateReplace` they are applied like
/// every object (and `Skip` left them out of the artifact). Objects of the
/// templates are never touched, CRDs included (Helm upgrades those). Pure.
pub fn crd_policy(plan: &mut Plan, spec: &ReleaseSpec) {
    let mode = match spec.crds {
        CrdPolicy::Create => WriteMode::CreateOnly,
        CrdPolicy::CreateReplace | CrdPolicy::Skip => WriteMode::Apply,
    };
    for o in plan.objects.iter_mut().filter(|o| o.origin.file.starts_with(CRDS_DIR)) {
        o.write = mode;
    }
}

#[cfg(test)]
fn manifest_of(v: &Value) -> Manifest {
    let s = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string();
    Manifest {
        origin: crate::objects::Origin { file: "test.yaml".into(), index: 0 },
        api_version: s("/apiVersion"),
        kind: s("/kind"),
        name: s("/metadata/name"),
        namespace: v.pointer("/metadata/namespace").and_then(Value::as_str).map(String::from),
        body: v.to_string(),
    }
}

/// Helm's install order of kinds (`releaseutil.InstallOrder`); other kinds come after.
const INSTALL_ORDER: [&str; 37] = [
    "PriorityClass",
    "Namespace",
    "NetworkPolicy",
    "ResourceQuota",
    "LimitRange",
    "PodSecurityPolicy",
    "PodDisruptionBudget",
    "ServiceAccount",
    "Secret",
    "SecretList",
    "ConfigMap",
    "StorageClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleList",
    "ClusterRoleBinding",
    "ClusterRoleBindingList",
    "Role",
    "RoleList",
    "RoleBinding",
    "RoleBindingList",
    "Service",
    "DaemonSet",
    "Pod",
    "ReplicationController",
    "ReplicaSet",
    "Deployment",
    "HorizontalPodAutoscaler",
    "StatefulSet",
    "Job",
    "CronJob",
    "IngressClass",
    "Ingress",
    "APIService",
    "MutatingWebhookConfiguration",
];

fn kind_rank(kind: &str) -> usize {
    match kind {
        "ValidatingWebhookConfiguration" => INSTALL_ORDER.len(),
        k => INSTALL_ORDER.iter().position(|x| *x == k).unwrap_or(INSTALL_ORDER.len() + 1),
    }
}

/// The hooks of one event, in Helm's order: by weight, then Helm's kind
/// install order, then name. Pure.
pub fn phase<'a>(hooks: &'a [HookObject], event: &str) -> Vec<&'a HookObject> {
    let mut v: Vec<_> = hooks.iter().filter(|h| h.events.iter().any(|e| e == event)).collect();
    v.sort_by(|a, b| helm_order(a, b));
    v
}

/// Helm's order of hooks within a phase: by weight, then kind install
/// order, then name. Pure.
pub fn helm_order(a: &HookObject, b: &HookObject) -> std::cmp::Ordering {
    (a.weight, kind_rank(a.kind()), a.name()).cmp(&(b.weight, kind_rank(b.kind()), b.name()))
}

/// What ran in a phase, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookRun {
    /// `Kind/name`.
    pub hook: String,
    /// The event.
    pub event: String,
    /// `succeeded`, `failed: ...`.
    pub outcome: String,
}

/// One test hook's run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRun {
    /// `Kind/name`.
    pub hook: String,
    /// Its template.
    pub path: String,
    /// When it was created (RFC 3339).
    pub started: String,
    /// When it finished or failed (RFC 3339).
    pub completed: String,
    /// Why it failed; `None` when it passed.
    pub failure: Option<String>,
}

/// The rules a release's hooks and record are judged by before anything of
/// it is written: the bundle's tenancy, and the agent's reserved namespace
/// (crate::policy).
#[derive(Debug, Clone, Copy)]
pub struct Guard<'a> {
    /// The bundle.
    pub bundle: &'a str,
    /// The agent's namespace (reserved).
    pub agent_namespace: &'a str,
    /// The bundle's tenancy rules.
    pub tenancy: &'a convoy_core::tenancy::Tenancy,
}

impl Guard<'_> {
    /// Judge objects the release writes beside its manifest (hooks, tests,
    /// the release record) under the bundle's rules; none is taken over.
    fn check(&self, keys: &[ObjKey]) -> Result<()> {
        let candidates: Vec<policy::Candidate<'_>> =
            keys.iter().map(|key| policy::Candidate { key, takeover_from: None }).collect();
        let (own, owners) = (Default::default(), Default::default());
        let ctx = policy::Context {
            bundle: self.bundle,
            agent_namespace: self.agent_namespace,
            tenancy: self.tenancy,
            own: &own,
            owners: &owners,
        };
        policy::check(&ctx, &candidates).map(drop).map_err(Error::Policy)
    }
}

/// A release being installed or upgraded in one cluster.
pub struct Release {
    client: kube::Client,
    parts: HelmParts,
    history: HistoryPlan,
    existing: Vec<Secret>,
}

impl Release {
    /// Read the release's history from the cluster and decide the next revision.
    pub async fn prepare(client: kube::Client, parts: HelmParts) -> Result<Self> {
        let spec = &parts.spec;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &spec.namespace);
        let lp = ListParams::default().labels(&format!("owner=helm,name={}", spec.name));
        let existing =
            secrets.list(&lp).await.map_err(|e| Error::kube("list helm release records", e))?.items;
        let revisions: Vec<Revision> = existing.iter().filter_map(revision_of).collect();
        let history = plan_history(&revisions, spec.history_limit());
        Ok(Self { client, parts, history, existing })
    }

    /// The revision this apply writes.
    pub fn version(&self) -> u64 {
        self.history.version
    }

    /// Whether a revision existed (upgrade) or not (install).
    pub fn is_upgrade(&self) -> bool {
        self.history.is_upgrade
    }

    /// The release name.
    pub fn name(&self) -> &str {
        &self.parts.spec.name
    }

    /// The release namespace (default namespace of its objects).
    pub fn namespace(&self) -> &str {
        &self.parts.spec.namespace
    }

    /// Run the `pre-install`/`pre-upgrade` (`pre == true`) or `post-*` hooks.
    /// Stops at the first failing hook.
    pub async fn run_hooks(
        &self,
        pre: bool,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<Vec<HookRun>> {
        let event = match (pre, self.is_upgrade()) {
            (true, false) => "pre-install",
            (true, true) => "pre-upgrade",
            (false, false) => "post-install",
            (false, true) => "post-upgrade",
        };
        let mut runs = Vec::new();
        let hooks = phase(&self.parts.hooks, event);
        for (i, h) in hooks.iter().enumerate() {
            let hook = format!("{}/{}", h.kind(), h.name());
            if let Err(e) = self.run_hook(h, false, timeout, cancel).await {
                // As Helm: the failed hook goes with `hook-failed`, the ones that
                // succeeded before it with `hook-succeeded`.
                if h.has_policy("hook-failed") {
                    self.delete_hook(h, timeout).await?;
                }
                for prev in &hooks[..i] {
                    if prev.has_policy("hook-succeeded") {
                        self.delete_hook(prev, timeout).await?;
                    }
                }
                return Err(Error::Apply {
                    message: format!("{event} hook {hook} failed: {e}"),
                    transient: false,
                });
            }
            runs.push(HookRun { hook, event: event.into(), outcome: "succeeded".into() });
        }
        // `hook-succeeded` deletes once the whole phase succeeded (a Job's
        // ServiceAccount hook must outlive the Job).
        for h in &hooks {
            if h.has_policy("hook-succeeded") {
                self.delete_hook(h, timeout).await?;
            }
        }
        Ok(runs)
    }

    /// The release's revisions found in the cluster.
    pub fn revisions(&self) -> Vec<Revision> {
        self.existing.iter().filter_map(revision_of).collect()
    }

    /// Run the test hooks (`helm test`), one at a time in Helm's order
    /// (crate::helmtest::order), each waited for until its Pod succeeded or
    /// its Job completed, within `timeout`. Stops at the first failing test.
    /// Delete policies as for other hooks: an existing object of a test's name
    /// is always deleted before it is created (`before-hook-creation`, also
    /// when not asked for: test names are stable in an artifact), `hook-failed` deletes the one that failed, `hook-succeeded`
    /// the ones that passed once the run is over (also when a later one
    /// failed, as `run_hooks` does).
    pub async fn run_tests(&self, timeout: Duration, cancel: &CancellationToken) -> Vec<TestRun> {
        let tests = crate::helmtest::order(&self.parts.tests);
        let mut runs = Vec::with_capacity(tests.len());
        for h in &tests {
            let started = rel::now_rfc3339();
            let result = self.run_hook(h, true, timeout, cancel).await;
            let failure = match result {
                Ok(()) => None,
                Err(e) => {
                    let mut why = e.to_string();
                    if h.has_policy("hook-failed")
                        && let Err(d) = self.delete_hook(h, timeout).await
                    {
                        why.push_str(&format!(" (and deleting it failed: {d})"));
                    }
                    Some(why)
                }
            };
            let failed = failure.is_some();
            runs.push(TestRun {
                hook: format!("{}/{}", h.kind(), h.name()),
                path: h.path.clone(),
                started,
                completed: rel::now_rfc3339(),
                failure,
            });
            if failed {
                break;
            }
        }
        for (h, run) in tests.iter().zip(runs.iter_mut()) {
            if run.failure.is_none()
                && h.has_policy("hook-succeeded")
                && let Err(e) = self.delete_hook(h, timeout).await
            {
                tracing::warn!(hook = %run.hook, "could not delete a test hook that passed: {e}");
            }
        }
        runs
    }

    /// Record a test run on the deployed revision's record, as `helm test`
    /// does: each test hook's `last_run` (started, completed, phase).
    pub async fn record_tests(&self, version: u64, runs: &[TestRun]) -> Result<()> {
        let spec = &self.parts.spec;
        let Some(secret) =
            self.existing.iter().find(|s| revision_of(s).is_some_and(|r| r.version == version))
        else {
            return Ok(());
        };
        let mut release = decode(secret)?;
        let hooks: Vec<Value> = self
            .parts
            .hooks
            .iter()
            .map(|h| h.record(None))
            .chain(self.parts.tests.iter().map(|h| {
                let run = runs.iter().find(|r| r.hook == format!("{}/{}", h.kind(), h.name()));
                h.record(run.map(|r| {
                    let phase = if r.failure.is_some() { "Failed" } else { "Succeeded" };
                    (r.started.clone(), r.completed.clone(), phase.to_string())
                }))
            }))
            .map(|h| h.to_json())
            .collect();
        release["hooks"] = hooks.into();
        let status = revision_of(secret).map(|r| r.status).unwrap_or(Status::Deployed);
        let body = release_secret(spec, version, &release, status);
        let name = rel::secret_name(&spec.name, version);
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &spec.namespace);
        secrets
            .patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body))
            .await
            .map_err(|e| Error::kube(format!("write {name}"), e))?;
        Ok(())
    }

    /// Judge the test hooks under the bundle's rules before any is written
    /// (the rules may have changed since the install judged them).
    pub async fn judge_tests(&self, guard: &Guard<'_>) -> Result<()> {
        let mut keys = Vec::with_capacity(self.parts.tests.len());
        for h in &self.parts.tests {
            let api = self.api(h).await?;
            let api_version = h.object["apiVersion"].as_str().unwrap_or_default();
            let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
            keys.push(ObjKey::new(group, h.kind(), api.namespace(), h.name()));
        }
        guard.check(&keys)
    }

    async fn delete_hook(&self, h: &HookObject, timeout: Duration) -> Result<()> {
        let api = self.api(h).await?;
        delete_and_wait(&api, h.name(), timeout).await
    }

    async fn api(&self, h: &HookObject) -> Result<Api<DynamicObject>> {
        let api_version = h.object["apiVersion"].as_str().unwrap_or_default();
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, h.kind());
        let (ar, caps) = kube::discovery::pinned_kind(&self.client, &gvk)
            .await
            .map_err(|e| Error::kube(format!("discover {api_version} {}", h.kind()), e))?;
        Ok(match caps.scope {
            Scope::Cluster => Api::all_with(self.client.clone(), &ar),
            Scope::Namespaced => {
                let ns = h
                    .object
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or(self.namespace());
                Api::namespaced_with(self.client.clone(), ns, &ar)
            }
        })
    }

    /// Apply a hook and wait for it. `fresh`: delete an existing object of
    /// its name first whatever its policy (test hooks: Helm's charts give
    /// them random names so each run creates new ones; an artifact's are
    /// stable, convoy_helm::output::stable_test_name).
    async fn run_hook(
        &self,
        h: &HookObject,
        fresh: bool,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let api = self.api(h).await?;
        let name = h.name().to_string();
        if fresh || h.has_policy("before-hook-creation") {
            delete_and_wait(&api, &name, timeout).await?;
        }
        let mut body = h.object.clone();
        if api.namespace().is_some() && body.pointer("/metadata/namespace").is_none() {
            body["metadata"]["namespace"] = self.namespace().into();
        }
        let pp = PatchParams::apply(MANAGER).force();
        let created = api
            .patch(&name, &pp, &Patch::Apply(&body))
            .await
            .map_err(|e| Error::kube(format!("apply hook {}/{name}", h.kind()), e))?;
        wait_done(&api, h.kind(), &created, timeout, cancel).await
    }

    /// Prepare the release, judge what it writes besides its objects (hooks,
    /// the release record) under the bundle's rules, and run its
    /// `pre-install`/`pre-upgrade` hooks: what both the one-shot apply and the
    /// agent controller do before applying the release's objects. A policy
    /// violation is [`Error::Policy`] with nothing written; a failing hook is
    /// recorded as a `failed` revision (never left `pending-*`) and returned.
    pub async fn begin(
        client: kube::Client,
        parts: HelmParts,
        guard: &Guard<'_>,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<(Self, Vec<HookRun>)> {
        let r = Self::prepare(client, parts).await?;
        let keys = r.side_keys().await?;
        guard.check(&keys)?;
        match r.run_hooks(true, timeout, cancel).await {
            Ok(runs) => Ok((r, runs)),
            Err(e) => {
                r.record(Status::Failed, &e.to_string()).await?;
                Err(e)
            }
        }
    }

    /// After the release's objects were applied: with no `failure` (apply
    /// error, or objects not ready when waited for), run the `post-*` hooks;
    /// then write the record, `deployed` or `failed` with why. Returns the
    /// post hooks that ran, and the failure (a failing post hook included).
    pub async fn finish(
        &self,
        failure: Option<String>,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<(Vec<HookRun>, Option<String>)> {
        let (runs, failure) = match failure {
            Some(why) => (Vec::new(), Some(why)),
            None => match self.run_hooks(false, timeout, cancel).await {
                Ok(runs) => (runs, None),
                Err(e) => (Vec::new(), Some(e.to_string())),
            },
        };
        match &failure {
            Some(why) => self.record(Status::Failed, why).await?,
            None => {
                let done = if self.is_upgrade() { "Upgrade complete" } else { "Install complete" };
                self.record(Status::Deployed, done).await?
            }
        }
        Ok((runs, failure))
    }

    /// What the release writes outside the plan: every hook (namespaced ones
    /// in their namespace or the release's, by discovery) and the release
    /// record Secret in the release namespace.
    async fn side_keys(&self) -> Result<Vec<ObjKey>> {
        let mut keys = Vec::with_capacity(self.parts.hooks.len() + self.parts.tests.len() + 1);
        for h in self.parts.hooks.iter().chain(&self.parts.tests) {
            let api = self.api(h).await?;
            let api_version = h.object["apiVersion"].as_str().unwrap_or_default();
            let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
            keys.push(ObjKey::new(group, h.kind(), api.namespace(), h.name()));
        }
        let record = format!("sh.helm.release.v1.{}.v{}", self.name(), self.version());
        keys.push(ObjKey::new("", "Secret", Some(self.namespace()), &record));
        Ok(keys)
    }

    /// Write the new revision's record (`deployed` or `failed`), mark the
    /// previous deployed revision `superseded`, and delete what `maxHistory` drops.
    pub async fn record(&self, status: Status, description: &str) -> Result<()> {
        let spec = &self.parts.spec;
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &spec.namespace);
        let now = rel::now_rfc3339();
        let first = self
            .history
            .keeps_first_deployed_of
            .and_then(|v| self.existing.iter().find(|s| revision_of(s).is_some_and(|r| r.version == v)))
            .and_then(|s| decode(s).ok())
            .and_then(|r| r.pointer("/info/first_deployed").and_then(Value::as_str).map(String::from))
            .unwrap_or_else(|| now.clone());
        let hooks: Vec<rel::HookRecord> =
            self.parts.hooks.iter().chain(&self.parts.tests).map(|h| h.record(None)).collect();
        let release = release_json(spec, self.version(), status, &first, &now, description, &hooks);
        let secret = release_secret(spec, self.version(), &release, status);
        let pp = PatchParams::apply(MANAGER).force();
        let name = rel::secret_name(&spec.name, self.version());
        secrets
            .patch(&name, &pp, &Patch::Apply(&secret))
            .await
            .map_err(|e| Error::kube(format!("write {name}"), e))?;
        if status == Status::Deployed {
            for s in &self.existing {
                let Some(r) = revision_of(s) else { continue };
                if !self.history.supersede.contains(&r.version) {
                    continue;
                }
                let mut old = decode(s)?;
                old["info"]["status"] = Status::Superseded.as_str().into();
                let body = release_secret(spec, r.version, &old, Status::Superseded);
                let n = rel::secret_name(&spec.name, r.version);
                secrets
                    .patch(&n, &pp, &Patch::Apply(&body))
                    .await
                    .map_err(|e| Error::kube(format!("write {n}"), e))?;
            }
        }
        for v in &self.history.delete {
            let n = rel::secret_name(&spec.name, *v);
            match secrets.delete(&n, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(Error::kube(format!("delete {n}"), e)),
            }
        }
        Ok(())
    }
}

fn revision_of(s: &Secret) -> Option<Revision> {
    let labels = s.metadata.labels.as_ref()?;
    let version = labels.get("version")?.parse().ok()?;
    let status = match labels.get("status")?.as_str() {
        "deployed" => Status::Deployed,
        "superseded" => Status::Superseded,
        "failed" => Status::Failed,
        "pending-install" => Status::PendingInstall,
        "pending-upgrade" => Status::PendingUpgrade,
        _ => Status::Superseded,
    };
    Some(Revision { version, status })
}

fn decode(s: &Secret) -> Result<Value> {
    let data = s
        .data
        .as_ref()
        .and_then(|d| d.get("release"))
        .ok_or_else(|| Error::Config("release record without data".into()))?;
    let text = std::str::from_utf8(&data.0).map_err(|e| Error::Config(format!("release record: {e}")))?;
    rel::decode_release(text).map_err(|e| Error::Config(e.to_string()))
}

async fn delete_and_wait(api: &Api<DynamicObject>, name: &str, timeout: Duration) -> Result<()> {
    let dp = DeleteParams::background();
    match api.delete(name, &dp).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => return Err(Error::kube(format!("delete hook {name}"), e)),
    }
    let deadline = Instant::now() + timeout;
    while api.get_opt(name).await.map_err(|e| Error::kube(format!("get hook {name}"), e))?.is_some() {
        if Instant::now() > deadline {
            return Err(Error::Timeout(format!("hook {name} still exists after delete")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Wait for a Job to complete or a Pod to succeed; other kinds are done once
/// applied. `created` is the object the apply returned: its uid tells our
/// hook from a later one of the same name, and the watch starts at its
/// resourceVersion, so no change after the apply is missed, a deletion
/// included (a Job's `ttlSecondsAfterFinished` can remove it the moment it
/// completes). [`hook_progress`] judges each change.
async fn wait_done(
    api: &Api<DynamicObject>,
    kind: &str,
    created: &DynamicObject,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<()> {
    if kind != "Job" && kind != "Pod" {
        return Ok(());
    }
    let name = created.metadata.name.clone().unwrap_or_default();
    let uid = created.metadata.uid.clone().unwrap_or_default();
    let mut rv = created.metadata.resource_version.clone().unwrap_or_default();
    let what = format!("hook {kind}/{name}");
    let value = |o: &DynamicObject| serde_json::to_value(o).unwrap_or(Value::Null);
    let decided = |state: HookState| match state {
        HookState::Running => None,
        HookState::Succeeded => Some(Ok(())),
        HookState::Failed(why) => Some(Err(Error::Apply { message: why, transient: false })),
    };
    if let Some(r) = decided(hook_progress(kind, &uid, HookEvent::Seen(&value(created)))) {
        return r;
    }
    let deadline = tokio::time::Instant::now() + timeout;
    // The last state seen, to say where the hook was when time ran out.
    let mut last = value(created);
    let timed_out = |last: &Value| {
        Error::Timeout(format!("{what} did not finish in {timeout:?} ({})", describe(kind, last)))
    };
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let wp = WatchParams::default()
            .fields(&format!("metadata.name={name}"))
            .timeout(left.as_secs().clamp(1, 290) as u32);
        // `false`: the watch cannot go on from `rv` (expired, or an error):
        // read the hook again before watching anew.
        let resumable = match api.watch(&wp, &rv).await {
            Ok(stream) => {
                let mut stream = std::pin::pin!(stream);
                loop {
                    let next = tokio::select! {
                        () = cancel.cancelled() => return Err(Error::Timeout(format!("{what}: cancelled"))),
                        () = tokio::time::sleep_until(deadline) => return Err(timed_out(&last)),
                        next = stream.next() => next,
                    };
                    let (event, o) = match next {
                        // The server ended the watch (its timeout): go on from `rv`.
                        None => break true,
                        Some(Ok(WatchEvent::Added(o) | WatchEvent::Modified(o))) => ("seen", o),
                        Some(Ok(WatchEvent::Deleted(o))) => ("deleted", o),
                        Some(Ok(WatchEvent::Bookmark(b))) => {
                            rv = b.metadata.resource_version;
                            continue;
                        }
                        Some(Ok(WatchEvent::Error(_)) | Err(_)) => break false,
                    };
                    if let Some(v) = &o.metadata.resource_version {
                        rv.clone_from(v);
                    }
                    let v = value(&o);
                    let ev = if event == "seen" { HookEvent::Seen(&v) } else { HookEvent::Deleted(&v) };
                    if let Some(r) = decided(hook_progress(kind, &uid, ev)) {
                        return r;
                    }
                    last = v;
                }
            }
            Err(_) => false,
        };
        if resumable {
            continue;
        }
        tokio::select! {
            () = cancel.cancelled() => return Err(Error::Timeout(format!("{what}: cancelled"))),
            () = tokio::time::sleep_until(deadline) => return Err(timed_out(&last)),
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        let o = api.get_opt(&name).await.map_err(|e| Error::kube(format!("get {what}"), e))?;
        let v = o.as_ref().map(value);
        let ev = v.as_ref().map_or(HookEvent::Missing, HookEvent::Seen);
        if let Some(r) = decided(hook_progress(kind, &uid, ev)) {
            return r;
        }
        if let Some(v) = v {
            last = v;
        }
        if let Some(v) = o.and_then(|o| o.metadata.resource_version) {
            rv = v;
        }
    }
}

/// A change to a hook Job or Pod being waited for.
#[derive(Debug, Clone, Copy)]
pub enum HookEvent<'a> {
    /// The object as read or watched (created or changed).
    Seen(&'a Value),
    /// A watch saw it deleted: its last state.
    Deleted(&'a Value),
    /// A read found no object of that name.
    Missing,
}

/// Where the hook this apply created (`uid`) is after `ev`. Helm's rule
/// (its legacy waiter: Helm 3's, `--wait=legacy` in Helm 4): a hook that is
/// deleted while it is waited for is done, so a Job removed by its
/// `ttlSecondsAfterFinished` the moment it completes counts as succeeded.
/// Stricter than Helm: a deleted hook whose last state says it failed is
/// failed. An object of that name with another uid means ours is gone. Pure.
pub fn hook_progress(kind: &str, uid: &str, ev: HookEvent<'_>) -> HookState {
    let ours = |o: &Value| o.pointer("/metadata/uid").and_then(Value::as_str) == Some(uid);
    match ev {
        HookEvent::Seen(o) if ours(o) => hook_state(kind, o),
        HookEvent::Seen(_) | HookEvent::Missing => HookState::Succeeded,
        HookEvent::Deleted(o) if ours(o) => match hook_state(kind, o) {
            HookState::Failed(why) => HookState::Failed(format!("{why} (then deleted)")),
            HookState::Succeeded | HookState::Running => HookState::Succeeded,
        },
        // Not ours (an older object of that name): nothing about ours.
        HookEvent::Deleted(_) => HookState::Running,
    }
}

/// Where a hook Job or Pod is. Pure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookState {
    /// Still running.
    Running,
    /// Done.
    Succeeded,
    /// Failed, with why.
    Failed(String),
}

/// The state of a hook Job or Pod from its status. Pure.
pub fn hook_state(kind: &str, o: &Value) -> HookState {
    if kind == "Pod" {
        return match o.pointer("/status/phase").and_then(Value::as_str) {
            Some("Succeeded") => HookState::Succeeded,
            Some("Failed") => HookState::Failed(format!("the Pod failed: {}", describe(kind, o))),
            _ => HookState::Running,
        };
    }
    let conds = o.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
    let is = |t: &str| conds.iter().any(|c| c["type"] == t && c["status"] == "True");
    if is("Complete") {
        HookState::Succeeded
    } else if is("Failed") {
        let why =
            conds.iter().find(|c| c["type"] == "Failed").and_then(|c| c["message"].as_str()).unwrap_or("");
        HookState::Failed(format!("the Job failed: {why}"))
    } else {
        HookState::Running
    }
}

/// Where a hook Pod or Job is, in words: a Pod's phase, reason and message
/// and each container's waiting or terminated state; a Job's conditions.
/// Pure.
pub fn describe(kind: &str, o: &Value) -> String {
    let st = |p: &str| o.pointer(p).and_then(Value::as_str).unwrap_or_default();
    let mut parts = Vec::new();
    if kind == "Pod" {
        parts.push(format!(
            "phase {}",
            if st("/status/phase").is_empty() { "Pending" } else { st("/status/phase") }
        ));
        for f in ["/status/reason", "/status/message"] {
            if !st(f).is_empty() {
                parts.push(st(f).to_string());
            }
        }
        for c in o.pointer("/status/containerStatuses").and_then(Value::as_array).into_iter().flatten() {
            let name = c["name"].as_str().unwrap_or_default();
            if let Some(w) = c.pointer("/state/waiting") {
                let why =
                    [w["reason"].as_str(), w["message"].as_str()].into_iter().flatten().collect::<Vec<_>>();
                parts.push(format!("container {name} waiting: {}", why.join(": ")));
            } else if let Some(t) = c.pointer("/state/terminated") {
                parts.push(format!(
                    "container {name} terminated: {} (exit code {})",
                    t["reason"].as_str().unwrap_or("?"),
                    t["exitCode"].as_i64().unwrap_or(-1)
                ));
            }
        }
    } else {
        for c in o.pointer("/status/conditions").and_then(Value::as_array).into_iter().flatten() {
            if c["status"] == "True" {
                let msg = c["message"].as_str().unwrap_or_default();
                parts.push(format!("{} {msg}", c["type"].as_str().unwrap_or_default()).trim().to_string());
            }
        }
        if parts.is_empty() {
            parts.push("no condition yet".into());
        }
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(v: Value) -> Manifest {
        manifest_of(&v)
    }

    fn spec() -> ReleaseSpec {
        ReleaseSpec {
            name: "web".into(),
            namespace: "apps".into(),
            chart_metadata: json!({"name": "c", "version": "1"}),
            chart_values: json!({}),
            config: json!({}),
            notes: String::new(),
            manifest: String::new(),
            chart_digest: "sha256:a".into(),
            values_digest: "sha256:b".into(),
            max_history: 0,
            crds: CrdPolicy::CreateReplace,
        }
    }

    fn hook(name: &str, kind: &str, events: &str, weight: &str) -> Value {
        json!({"apiVersion": "batch/v1", "kind": kind, "metadata": {"name": name, "annotations": {
            "helm.sh/hook": events, "helm.sh/hook-weight": weight}}})
    }

    #[test]
    fn split_takes_out_the_record_and_hooks() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "annotations": {"x": "helm.sh/hook"}}});
        let (objects, parts) =
            split(vec![m(cm.clone()), m(spec().to_object()), m(hook("j", "Job", "pre-install", "1"))])
                .unwrap();
        assert_eq!(objects.len(), 1);
        assert_eq!(objects[0].name, "a");
        let parts = parts.unwrap();
        assert_eq!(parts.spec, spec());
        assert_eq!(parts.hooks.len(), 1);
        assert_eq!(parts.hooks[0].delete_policies, vec!["before-hook-creation"]);
        // Without a record, hook-annotated objects are plain objects.
        let (objects, parts) = split(vec![m(hook("j", "Job", "pre-install", "1"))]).unwrap();
        assert_eq!((objects.len(), parts), (1, None));
        // Two records are refused.
        assert!(split(vec![m(spec().to_object()), m(spec().to_object())]).is_err());
    }

    #[test]
    fn phases_select_by_event_and_order_by_weight_kind_name() {
        let (_, parts) = split(vec![
            m(spec().to_object()),
            m(hook("b", "Job", "pre-install,pre-upgrade", "5")),
            m(hook("a", "Job", "pre-install", "5")),
            m(hook("z", "ServiceAccount", "pre-install", "-1")),
            m(hook("p", "Job", "post-install", "0")),
        ])
        .unwrap();
        let parts = parts.unwrap();
        let names = |e: &str| phase(&parts.hooks, e).iter().map(|h| h.name().to_string()).collect::<Vec<_>>();
        assert_eq!(names("pre-install"), vec!["z", "a", "b"]);
        // Same weight: Helm's kind order (ServiceAccount, RBAC, then the Job).
        let (_, parts) = split(vec![
            m(spec().to_object()),
            m(hook("job", "Job", "pre-install", "0")),
            m(hook("rb", "RoleBinding", "pre-install", "0")),
            m(hook("sa", "ServiceAccount", "pre-install", "0")),
            m(hook("cr", "ClusterRole", "pre-install", "0")),
            m(hook("x", "Widget", "pre-install", "0")),
        ])
        .unwrap();
        let order: Vec<_> = phase(&parts.as_ref().unwrap().hooks, "pre-install")
            .iter()
            .map(|h| h.name().to_string())
            .collect();
        assert_eq!(order, vec!["sa", "cr", "rb", "job", "x"]);
        assert_eq!(names("pre-upgrade"), vec!["b"]);
        assert_eq!(names("post-install"), vec!["p"]);
        assert!(names("post-upgrade").is_empty());
    }

    #[test]
    fn the_crd_policy_marks_the_charts_crds_only() {
        use crate::objects::DesiredObject;
        use crate::resource::ResourceInfo;
        let crd = |name: &str| {
            json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                   "metadata": {"name": name}, "spec": {"group": "example.com"}})
        };
        let crd_res = ResourceInfo::test(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
        );
        let cm_res = ResourceInfo::test("", "v1", "ConfigMap", "configmaps", true);
        let object = |file: &str, v: Value, res: &ResourceInfo| {
            let mut man = manifest_of(&v);
            man.origin.file = file.into();
            DesiredObject::build(man, res.clone(), "web", "apps").unwrap()
        };
        let plan = || Plan {
            bundle: "web".into(),
            objects: vec![
                object("helm/crds/widgets.yaml", crd("widgets.example.com"), &crd_res),
                // A CRD of the templates is a release object: Helm upgrades it.
                object("helm/templates/gadgets.yaml", crd("gadgets.example.com"), &crd_res),
                object(
                    "helm/templates/cm.yaml",
                    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}),
                    &cm_res,
                ),
            ],
            ..Default::default()
        };
        let modes = |policy: CrdPolicy| {
            let mut p = plan();
            crd_policy(&mut p, &ReleaseSpec { crds: policy, ..spec() });
            p.objects.iter().map(|o| o.write).collect::<Vec<_>>()
        };
        use WriteMode::{Apply, CreateOnly};
        assert_eq!(modes(CrdPolicy::Create), vec![CreateOnly, Apply, Apply]);
        assert_eq!(modes(CrdPolicy::CreateReplace), vec![Apply, Apply, Apply]);
        // Skip leaves them out of the artifact; whatever is there is applied.
        assert_eq!(modes(CrdPolicy::Skip), vec![Apply, Apply, Apply]);
    }

    #[test]
    fn hook_progress_follows_helms_rule_for_deleted_hooks() {
        let job = |uid: &str, cond: Option<&str>| {
            let mut j = json!({"kind": "Job", "metadata": {"name": "j", "uid": uid}});
            if let Some(t) = cond {
                j["status"] = json!({"conditions": [{"type": t, "status": "True", "message": "backoff"}]});
            }
            j
        };
        fn p(ev: HookEvent<'_>) -> HookState {
            hook_progress("Job", "u1", ev)
        }
        // Ours, as seen: its own state.
        assert_eq!(p(HookEvent::Seen(&job("u1", None))), HookState::Running);
        assert_eq!(p(HookEvent::Seen(&job("u1", Some("Complete")))), HookState::Succeeded);
        assert!(matches!(p(HookEvent::Seen(&job("u1", Some("Failed")))), HookState::Failed(_)));
        // Ours, deleted (a TTL of 0 deletes it as it completes; or deleted while
        // running): done, as Helm counts it; unless its last state is Failed.
        assert_eq!(p(HookEvent::Deleted(&job("u1", Some("Complete")))), HookState::Succeeded);
        assert_eq!(p(HookEvent::Deleted(&job("u1", None))), HookState::Succeeded);
        assert!(
            matches!(p(HookEvent::Deleted(&job("u1", Some("Failed")))), HookState::Failed(m) if m.contains("backoff"))
        );
        // Gone when read again, or replaced by another object of that name: ours was deleted.
        assert_eq!(p(HookEvent::Missing), HookState::Succeeded);
        assert_eq!(p(HookEvent::Seen(&job("u2", None))), HookState::Succeeded);
        // Another object of that name deleted: says nothing about ours.
        assert_eq!(p(HookEvent::Deleted(&job("u0", Some("Complete")))), HookState::Running);
        // Pods by their phase, the same rule.
        let pod = |uid: &str, phase: &str| json!({"metadata": {"uid": uid}, "status": {"phase": phase}});
        assert_eq!(
            hook_progress("Pod", "u1", HookEvent::Deleted(&pod("u1", "Running"))),
            HookState::Succeeded
        );
        assert!(matches!(
            hook_progress("Pod", "u1", HookEvent::Deleted(&pod("u1", "Failed"))),
            HookState::Failed(_)
        ));
    }

    #[test]
    fn hook_states_from_status() {
        let job = |t: &str| json!({"status": {"conditions": [{"type": t, "status": "True", "message": "backoff"}]}});
        assert_eq!(hook_state("Job", &job("Complete")), HookState::Succeeded);
        assert!(matches!(hook_state("Job", &job("Failed")), HookState::Failed(m) if m.contains("backoff")));
        assert_eq!(hook_state("Job", &json!({})), HookState::Running);
        assert_eq!(hook_state("Pod", &json!({"status": {"phase": "Succeeded"}})), HookState::Succeeded);
        assert!(matches!(hook_state("Pod", &json!({"status": {"phase": "Failed"}})), HookState::Failed(_)));
        assert_eq!(hook_state("Pod", &json!({"status": {"phase": "Running"}})), HookState::Running);
        let failed = json!({"status": {"phase": "Failed", "containerStatuses": [
            {"name": "t", "state": {"terminated": {"reason": "Error", "exitCode": 1}}}]}});
        assert_eq!(
            hook_state("Pod", &failed),
            HookState::Failed(
                "the Pod failed: phase Failed, container t terminated: Error (exit code 1)".into()
            )
        );
        let pulling = json!({"status": {"phase": "Pending", "containerStatuses": [
            {"name": "t", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"x:does-not-exist\""}}}]}});
        assert_eq!(
            describe("Pod", &pulling),
            "phase Pending, container t waiting: ImagePullBackOff: Back-off pulling image \"x:does-not-exist\""
        );
        assert_eq!(describe("Pod", &json!({})), "phase Pending");
        assert_eq!(describe("Job", &json!({})), "no condition yet");
        assert_eq!(
            describe(
                "Job",
                &json!({"status": {"conditions": [{"type": "Failed", "status": "True", "message": "BackoffLimitExceeded"}]}})
            ),
            "Failed BackoffLimitExceeded"
        );
    }

    #[test]
    fn split_keeps_test_hooks_apart_with_their_template() {
        let mut t = m(hook("t", "Pod", "test", "0"));
        t.origin.file = "helm/tests/c/templates/tests/t.yaml".into();
        let mut legacy = m(hook("s", "Pod", "test-success", "1"));
        legacy.origin.file = "helm/tests/c/templates/tests/s.yaml".into();
        let mut pre = m(hook("j", "Job", "pre-install", "0"));
        pre.origin.file = "helm/hooks/c/templates/j.yaml".into();
        let (objects, parts) = split(vec![m(spec().to_object()), t, legacy, pre]).unwrap();
        assert!(objects.is_empty());
        let parts = parts.unwrap();
        assert_eq!(parts.hooks.iter().map(|h| h.path.as_str()).collect::<Vec<_>>(), ["c/templates/j.yaml"]);
        assert_eq!(
            parts.tests.iter().map(|h| (h.name(), h.path.as_str())).collect::<Vec<_>>(),
            [("t", "c/templates/tests/t.yaml"), ("s", "c/templates/tests/s.yaml")]
        );
        // Test hooks never run in an install or upgrade phase.
        for e in ["pre-install", "post-install", "pre-upgrade", "post-upgrade"] {
            assert!(phase(&parts.hooks, e).iter().all(|h| !h.is_test()));
        }
    }
}
