//! HelmRepository sources in the source pipeline: one worker task per
//! repository reads its `index.yaml` (interval, reconcile, webhook), resolves
//! each of its bundles' (chart, version) once for the whole fleet, takes the
//! archive from the hub's content-addressed chart cache or downloads it
//! (checked against the index digest: a mismatch is refused, nothing is
//! built), renders it through Helm's engine ([`render_chart_archive`]) and
//! stores the artifact. The supervisor in [`crate::controller`] starts and
//! stops these workers ([`ChartWorkers`]) next to the GitSource workers and
//! owns what they report. The decision of what to rebuild ([`plan_builds`])
//! is pure.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use convoy_artifact::Limits;
use convoy_core::backoff;
use convoy_core::chartsrc::HelmRepositorySpec;
use convoy_core::clock::now_ms;
use convoy_core::config::{CrdPolicy, FleetConfig, HelmSpec, Named};
use convoy_core::pipeline::{BuildError, BuiltArtifact, BuiltHelm, ResolvedChart, SourceStatus};
use convoy_core::status::{Condition, Phase, READY, RECONCILING, STALLED, set_condition};
use convoy_helm::{ChartInput, RenderRequest};
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::controller::{BundleRef, Event, Pending, Report, SourcesConfig, Trigger, unpend};
use crate::helmrender::{HelmRendered, HelmSettings, Renderer, Capabilities, merge_values, release_of, values_from_layer};
use crate::helmrepo::{HelmRepo, Index, RepoAuth};
use crate::redact::redact_url;
use crate::store::ArtifactStore;
use crate::{Error, Result};

/// The kind name shown in source statuses.
pub const HELM_REPOSITORY: &str = "HelmRepository";

/// What the pipeline shares with every chart worker.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub cfg: Arc<SourcesConfig>,
    pub store: ArtifactStore,
    /// The content-addressed chart cache (`<data_dir>/charts`).
    pub charts: ArtifactStore,
    pub pending: Pending,
    pub semaphore: Arc<Semaphore>,
    pub events: mpsc::Sender<Report>,
}

struct Handle {
    id: u64,
    spec: HelmRepositorySpec,
    tx: mpsc::Sender<Trigger>,
    token: CancellationToken,
    task: JoinHandle<()>,
    bundles: Vec<BundleRef>,
}

/// The running chart workers, by repository name (owned by the supervisor).
#[derive(Default)]
pub(crate) struct ChartWorkers {
    workers: HashMap<String, Handle>,
}

impl ChartWorkers {
    /// Follow the fleet config: stop workers of removed or changed
    /// repositories (their tasks are pushed to `stopping`), start new ones,
    /// hand changed bundle lists to running ones. `register` records a
    /// worker's trigger channel; `unregister` forgets it; `suspended` says
    /// whether the operator suspended a source.
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &mut self,
        fleet: &FleetConfig,
        ctx: &Ctx,
        next_id: &mut u64,
        stopping: &mut Vec<JoinHandle<()>>,
        register: &mut dyn FnMut(&str, mpsc::Sender<Trigger>),
        unregister: &mut dyn FnMut(&str),
        suspended: &dyn Fn(&str) -> bool,
    ) {
        let stale: Vec<String> = self
            .workers
            .iter()
            .filter(|(n, w)| fleet.helm_repositories.get(*n).is_none_or(|r| r.spec != w.spec))
            .map(|(n, _)| n.clone())
            .collect();
        for name in stale {
            if let Some(w) = self.workers.remove(&name) {
                w.token.cancel();
                stopping.push(w.task);
                unregister(&name);
            }
        }
        for (name, repo) in &fleet.helm_repositories {
            let bundles = bundle_refs(fleet, name);
            match self.workers.get_mut(name) {
                Some(w) => {
                    if w.bundles != bundles {
                        w.bundles = bundles.clone();
                        let _ = w.tx.try_send(Trigger::Bundles(bundles));
                    }
                }
                None => {
                    *next_id += 1;
                    let h = spawn(repo, bundles, ctx, *next_id, suspended(name));
                    register(name, h.tx.clone());
                    self.workers.insert(name.clone(), h);
                }
            }
        }
    }

    /// Whether `worker` is the current worker of repository `name`.
    pub fn is_current(&self, name: &str, worker: u64) -> bool {
        self.workers.get(name).is_some_and(|w| w.id == worker)
    }

    /// Pass an operator suspension to a repository's worker (its config's
    /// `suspend` still holds).
    pub fn suspend(&self, name: &str, suspended: bool) {
        if let Some(w) = self.workers.get(name) {
            let _ = w.tx.try_send(Trigger::Suspend(suspended || w.spec.suspend));
        }
    }

    /// Cancel every worker; their tasks go to `stopping`.
    pub fn drain(&mut self, stopping: &mut Vec<JoinHandle<()>>) {
        for (_, w) in self.workers.drain() {
            w.token.cancel();
            stopping.push(w.task);
        }
    }
}

fn bundle_refs(fleet: &FleetConfig, repo: &str) -> Vec<BundleRef> {
    fleet
        .bundles_of_source(repo)
        .map(|b| BundleRef {
            name: b.name.clone(),
            path: b.spec.path.clone(),
            helm: b.spec.helm.clone().map(Box::new),
            target_namespace: b.spec.target_namespace.clone(),
        })
        .collect()
}

fn spawn(repo: &Named<HelmRepositorySpec>, bundles: Vec<BundleRef>, ctx: &Ctx, id: u64, over: bool) -> Handle {
    let (tx, rx) = mpsc::channel(8);
    let token = CancellationToken::new();
    let worker = ChartWorker {
        id,
        name: repo.name.clone(),
        spec: repo.spec.clone(),
        ctx: ctx.clone(),
        bundles: bundles.clone(),
        suspended: repo.spec.suspend || over,
        status: initial_status(&repo.name, &repo.spec),
        index: None,
        built: HashMap::new(),
        resolved: BTreeMap::new(),
    };
    let span = info_span!("source", source = %repo.name, kind = HELM_REPOSITORY);
    let task = tokio::spawn(worker.run(rx, token.clone()).instrument(span));
    Handle { id, spec: repo.spec.clone(), tx, token, task, bundles }
}

fn initial_status(name: &str, spec: &HelmRepositorySpec) -> SourceStatus {
    SourceStatus {
        name: name.into(),
        url: redact_url(&spec.url),
        reference: "index.yaml".into(),
        phase: if spec.suspend { Phase::Suspended } else { Phase::Pending },
        suspended: spec.suspend,
        interval: spec.interval.get(),
        kind: HELM_REPOSITORY.into(),
        ..Default::default()
    }
}

/// What one bundle's build is made from; a bundle is rebuilt when this
/// changes (or on a reconcile).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChartKey {
    /// The bundle's chart spec.
    pub helm: Option<Box<HelmSpec>>,
    /// The bundle's targetNamespace.
    pub target_namespace: Option<String>,
    /// The resolved version and index digest (`None`: the chart did not resolve).
    pub resolved: Option<(String, String)>,
}

/// Which bundles to build after reading an index: each bundle's key from
/// its spec and its resolution, and whether it must build (a changed key, a
/// failed last build, or `force`). Pure.
pub(crate) fn plan_builds(
    bundles: &[BundleRef],
    resolutions: &[Option<(String, String)>],
    built: &HashMap<String, (ChartKey, bool)>,
    force: bool,
) -> Vec<(usize, ChartKey)> {
    bundles
        .iter()
        .zip(resolutions)
        .enumerate()
        .filter_map(|(i, (b, r))| {
            let key =
                ChartKey { helm: b.helm.clone(), target_namespace: b.target_namespace.clone(), resolved: r.clone() };
            let due = force || built.get(&b.name).is_none_or(|(k, ok)| *k != key || !ok);
            due.then_some((i, key))
        })
        .collect()
}

struct ChartWorker {
    id: u64,
    name: String,
    spec: HelmRepositorySpec,
    ctx: Ctx,
    bundles: Vec<BundleRef>,
    suspended: bool,
    status: SourceStatus,
    /// The last index read.
    index: Option<Arc<Index>>,
    /// Each bundle's last build key, and whether that build succeeded.
    built: HashMap<String, (ChartKey, bool)>,
    /// Each bundle's resolved chart (for the status).
    resolved: BTreeMap<String, ResolvedChart>,
}

impl ChartWorker {
    async fn run(mut self, mut rx: mpsc::Receiver<Trigger>, token: CancellationToken) {
        let mut next = Instant::now();
        self.publish_suspension().await;
        loop {
            let force = tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep_until(next), if !self.suspended => false,
                t = rx.recv() => match t {
                    None => return,
                    Some(Trigger::Reconcile) => true,
                    Some(Trigger::Bundles(b)) => {
                        self.bundles = b;
                        self.built.retain(|k, _| self.bundles.iter().any(|b| &b.name == k));
                        self.resolved.retain(|k, _| self.bundles.iter().any(|b| &b.name == k));
                        if !self.suspended && self.index.is_some() {
                            self.build_due(false, &token).await;
                        }
                        continue;
                    }
                    Some(Trigger::Suspend(s)) => {
                        let resumed = self.suspended && !s;
                        self.suspended = s;
                        self.publish_suspension().await;
                        if resumed {
                            next = Instant::now();
                        }
                        continue;
                    }
                },
            };
            if self.suspended {
                continue;
            }
            let ok = tokio::select! {
                _ = token.cancelled() => return,
                ok = self.poll(force) => ok,
            };
            next = Instant::now()
                + if ok {
                    self.spec.interval.get()
                } else {
                    backoff::delay(
                        self.status.failures.saturating_sub(1),
                        self.ctx.cfg.backoff_base,
                        self.ctx.cfg.backoff_max,
                    )
                };
            if ok {
                self.build_due(force, &token).await;
            }
        }
    }

    async fn report(&self, event: Event) {
        let _ = self.ctx.events.send(Report { source: self.name.clone(), worker: self.id, event }).await;
    }

    async fn publish(&mut self) {
        self.status.charts = self.resolved.values().cloned().collect();
        self.report(Event::Status(Box::new(self.status.clone()))).await;
    }

    async fn publish_suspension(&mut self) {
        self.status.suspended = self.suspended;
        if self.suspended {
            self.status.phase = Phase::Suspended;
        } else if self.status.phase == Phase::Suspended {
            self.status.phase = if self.index.is_some() { Phase::Ready } else { Phase::Pending };
        }
        self.publish().await;
    }

    fn client(&self) -> Result<HelmRepo> {
        HelmRepo::new(
            &self.spec.url,
            &RepoAuth {
                basic_auth_file: self.spec.basic_auth_file.as_ref().map(PathBuf::from),
                bearer_token_file: self.spec.bearer_token_file.as_ref().map(PathBuf::from),
                ca_file: self.spec.ca_file.as_ref().map(PathBuf::from),
                timeout: Some(self.spec.timeout.get()),
                max_chart_bytes: Some(self.ctx.cfg.helm.limits.max_chart_bytes),
            },
        )
    }

    /// Read the index; true on success.
    async fn poll(&mut self, force: bool) -> bool {
        if self.index.is_none() || self.status.failures > 0 || force {
            self.status.phase = Phase::Reconciling;
            set_condition(
                &mut self.status.conditions,
                Condition::new(RECONCILING, true, "Progressing", "reading index.yaml"),
                now_ms(),
            );
            self.publish().await;
        }
        let timeout = self.spec.timeout.get();
        let result = async {
            let _permit = self.ctx.semaphore.clone().acquire_owned().await.map_err(|_| Error::Shutdown)?;
            let client = self.client()?;
            match tokio::time::timeout(timeout, client.index_with_digest()).await {
                Ok(r) => r,
                Err(_) => {
                    Err(Error::Timeout { what: format!("fetch {}/index.yaml", redact_url(&self.spec.url)), after: timeout })
                }
            }
        }
        .await;
        let now = now_ms();
        self.status.last_fetch_unix_ms = now;
        set_condition(&mut self.status.conditions, Condition::new(RECONCILING, false, "Idle", ""), now);
        match result {
            Ok((index, digest)) => {
                if self.status.revision.as_deref() != Some(digest.as_str()) {
                    info!(revision = %digest, charts = index.entries.len(), "new index");
                } else {
                    debug!(revision = %digest, "index unchanged");
                }
                self.status.revision = Some(digest.clone());
                self.status.failures = 0;
                self.status.phase = Phase::Ready;
                set_condition(
                    &mut self.status.conditions,
                    Condition::new(READY, true, "Succeeded", format!("index {digest}")),
                    now,
                );
                self.status.conditions.retain(|c| c.type_ != STALLED);
                self.index = Some(Arc::new(index));
                self.publish().await;
                true
            }
            Err(error) => {
                self.status.failures += 1;
                self.status.phase = Phase::Stalled;
                let (reason, message) = (error.reason(), error.to_string());
                warn!(%error, failures = self.status.failures, "index read failed");
                set_condition(&mut self.status.conditions, Condition::new(READY, false, reason, message.clone()), now);
                set_condition(&mut self.status.conditions, Condition::new(STALLED, true, reason, message.clone()), now);
                self.publish().await;
                let error = BuildError {
                    revision: self.status.revision.clone(),
                    reason: reason.into(),
                    message,
                    at_unix_ms: now,
                };
                self.report(Event::FetchFailed { error }).await;
                false
            }
        }
    }

    /// Resolve every bundle's chart in the last index and build those due.
    async fn build_due(&mut self, force: bool, token: &CancellationToken) {
        let Some(index) = self.index.clone() else { return };
        let client = match self.client() {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "chart repository client");
                return;
            }
        };
        let resolutions: Vec<std::result::Result<(String, String), Error>> = self
            .bundles
            .iter()
            .map(|b| {
                let h = b.helm.as_deref().ok_or_else(|| Error::Config("not a Helm bundle".into()))?;
                let chart = h.chart.as_deref().unwrap_or_default();
                let e = client.resolve(&index, chart, h.version.as_deref().unwrap_or_default())?;
                Ok((e.version.clone(), e.digest.trim_start_matches("sha256:").to_ascii_lowercase()))
            })
            .collect();
        let keys: Vec<Option<(String, String)>> = resolutions.iter().map(|r| r.as_ref().ok().cloned()).collect();
        let plan = plan_builds(&self.bundles, &keys, &self.built, force);
        let mut changed_status = false;
        for (i, key) in plan {
            let b = self.bundles[i].clone();
            let result = match &resolutions[i] {
                Err(e) => Err(e.to_string_error()),
                Ok(_) => {
                    let r = tokio::select! {
                        _ = token.cancelled() => return,
                        r = self.build(&client, &index, &b) => r,
                    };
                    r.map_err(|e| e.to_string_error())
                }
            };
            let result = result.map_err(|(reason, message)| {
                warn!(bundle = %b.name, %reason, %message, "build failed");
                BuildError {
                    revision: key.resolved.as_ref().map(|(v, d)| revision(v, d)),
                    reason,
                    message,
                    at_unix_ms: now_ms(),
                }
            });
            // A build that failed after its chart resolved (a download error,
            // a digest mismatch, a render error) is retried on the next index
            // read; a chart that does not resolve waits for the index to change.
            let retry = resolutions[i].is_ok() && result.is_err();
            match &result {
                Ok(a) => {
                    info!(bundle = %b.name, digest = %a.digest, revision = %a.revision, "built artifact");
                    if let (Some(h), Some((v, d))) = (&a.helm, &key.resolved) {
                        let spec = b.helm.as_deref().cloned().unwrap_or_default();
                        self.resolved.insert(
                            b.name.clone(),
                            ResolvedChart {
                                bundle: b.name.clone(),
                                chart: h.chart.clone(),
                                constraint: spec.version.unwrap_or_default(),
                                version: v.clone(),
                                digest: format!("sha256:{d}"),
                            },
                        );
                        changed_status = true;
                    }
                }
                Err(_) => {}
            }
            self.built.insert(b.name.clone(), (key, !retry));
            self.report(Event::Built { bundle: b.name.clone(), result }).await;
        }
        if changed_status {
            self.publish().await;
        }
    }

    /// The chart archive from the cache, or downloaded (digest-checked) and cached.
    async fn chart_bytes(&self, client: &HelmRepo, index: &Index, b: &BundleRef) -> Result<(String, Vec<u8>)> {
        let h = b.helm.as_deref().ok_or_else(|| Error::Config("not a Helm bundle".into()))?;
        let chart = h.chart.as_deref().unwrap_or_default();
        let entry = client.resolve(index, chart, h.version.as_deref().unwrap_or_default())?;
        let digest = format!("sha256:{}", entry.digest.trim_start_matches("sha256:").to_ascii_lowercase());
        let charts = self.ctx.charts.clone();
        let d = digest.clone();
        let cached = tokio::task::spawn_blocking(move || charts.read(&d).ok()).await.ok().flatten();
        if let Some(bytes) = cached {
            debug!(bundle = %b.name, %digest, "chart from the cache");
            return Ok((entry.version.clone(), bytes));
        }
        let fetched = {
            let _permit = self.ctx.semaphore.clone().acquire_owned().await.map_err(|_| Error::Shutdown)?;
            let timeout = self.spec.timeout.get();
            tokio::time::timeout(timeout, client.download(chart, entry)).await.map_err(|_| Error::Timeout {
                what: format!("download chart {chart} {}", entry.version),
                after: timeout,
            })??
        };
        let charts = self.ctx.charts.clone();
        let bytes = fetched.bytes;
        let bytes = tokio::task::spawn_blocking(move || charts.put(&bytes).map(|_| bytes))
            .await
            .map_err(|e| Error::Config(format!("chart cache task failed: {e}")))??;
        info!(bundle = %b.name, chart, version = %fetched.version, %digest, "chart downloaded");
        Ok((fetched.version, bytes))
    }

    async fn build(&self, client: &HelmRepo, index: &Index, b: &BundleRef) -> Result<BuiltArtifact> {
        let (version, bytes) = self.chart_bytes(client, index, b).await?;
        let spec = b.helm.as_deref().cloned().ok_or_else(|| Error::Config("not a Helm bundle".into()))?;
        let permit = self.ctx.semaphore.clone().acquire_owned().await.map_err(|_| Error::Shutdown)?;
        let (store, pending, limits) = (self.ctx.store.clone(), self.ctx.pending.clone(), self.ctx.cfg.limits);
        let helm_cfg = self.ctx.cfg.helm.clone();
        let (bundle, target_ns, source) = (b.name.clone(), b.target_namespace.clone(), self.name.clone());
        let url = redact_url(&self.spec.url);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let r = render_from_repository(&helm_cfg, &bundle, &spec, target_ns.as_deref(), bytes, &limits)?;
            for w in &r.helm.warnings {
                warn!(bundle = %bundle, "helm: {w}");
            }
            let digest = r.helm.chart_digest.trim_start_matches("sha256:").to_string();
            *pending.lock().unwrap_or_else(|p| p.into_inner()).entry(r.artifact.digest.clone()).or_default() += 1;
            if let Err(e) = store.put(&r.artifact.bytes) {
                unpend(&pending, &r.artifact.digest);
                return Err(e);
            }
            Ok(BuiltArtifact {
                bundle,
                source,
                source_url: url,
                revision: revision(&version, &digest),
                digest: r.artifact.digest,
                size: r.artifact.size,
                files: r.artifact.files,
                built_unix_ms: now_ms(),
                helm: Some(Box::new(r.helm)),
            })
        })
        .await
        .map_err(|e| Error::Config(format!("build task failed: {e}")))?
    }
}

/// The revision of a chart build: `<version>@sha256:<chart digest>`.
pub fn revision(version: &str, digest_hex: &str) -> String {
    format!("{version}@sha256:{digest_hex}")
}

trait ToBuildError {
    fn to_string_error(&self) -> (String, String);
}

impl ToBuildError for Error {
    fn to_string_error(&self) -> (String, String) {
        (self.reason().to_string(), self.to_string())
    }
}

fn render_from_repository(
    helm: &HelmSettings,
    bundle: &str,
    spec: &HelmSpec,
    target_namespace: Option<&str>,
    archive: Vec<u8>,
    limits: &Limits,
) -> Result<HelmRendered> {
    let renderer = helm.renderer()?;
    let caps = helm.default_capabilities(spec);
    render_chart_archive(&renderer, bundle, spec, target_namespace, archive, &caps, &[], limits)
}

/// Render a Helm bundle whose chart is a packaged archive (from a chart
/// repository): values merged as for a chart in a GitSource (chart defaults
/// < `values` < `valuesFrom` < `extra_values`; a repository chart has no
/// `valuesFiles`), rendered by Helm's engine in a bounded worker, packed as
/// `convoy build --chart` packs. The chart must have the name `spec.chart`.
/// Blocking.
#[allow(clippy::too_many_arguments)]
pub fn render_chart_archive(
    renderer: &Renderer,
    bundle: &str,
    spec: &HelmSpec,
    target_namespace: Option<&str>,
    archive: Vec<u8>,
    capabilities: &Capabilities,
    extra_values: &[Value],
    limits: &Limits,
) -> Result<HelmRendered> {
    let mut from = Vec::new();
    for v in &spec.values_from {
        let text = match std::fs::read_to_string(&v.file) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(&v.file, e)),
        };
        from.extend(values_from_layer(v, text.as_deref())?);
    }
    let values = merge_values(&[], spec.values.as_ref(), &from, extra_values);
    let chart = ChartInput::Archive(archive);
    let (release, namespace) = release_of(bundle, spec, target_namespace);
    let rendered = renderer.render(&RenderRequest {
        chart: chart.clone(),
        values: values.clone(),
        release_name: release.clone(),
        namespace: namespace.clone(),
        revision: 1,
        is_upgrade: false,
        capabilities: capabilities.clone(),
    })?;
    if let Some(name) = &spec.chart
        && *name != rendered.chart.name
    {
        return Err(Error::Config(format!(
            "helm.chart {name:?}: the repository's archive holds chart {:?}",
            rendered.chart.name
        )));
    }
    let build = convoy_helm::bundle::release_build(
        &rendered,
        &chart,
        values,
        &release,
        &namespace,
        spec.max_history.unwrap_or(0),
        spec.crds != CrdPolicy::Skip,
    )?;
    let artifact = convoy_artifact::pack_files(build.files, limits)?;
    Ok(HelmRendered {
        artifact,
        helm: BuiltHelm {
            chart: build.chart,
            version: build.version,
            chart_digest: build.chart_digest,
            values_digest: build.values_digest,
            warnings: rendered.warnings.clone(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bref(name: &str, version: &str) -> BundleRef {
        BundleRef {
            name: name.into(),
            path: ".".into(),
            helm: Some(Box::new(HelmSpec {
                repository: Some("charts".into()),
                chart: Some("podinfo".into()),
                version: Some(version.into()),
                ..Default::default()
            })),
            target_namespace: None,
        }
    }

    #[test]
    fn plan_builds_new_changed_failed_and_forced() {
        let bundles = [bref("a", "6.14.1"), bref("b", ">=6")];
        let r = |v: &str| Some((v.to_string(), "ab".repeat(32)));
        let res = [r("6.14.1"), r("6.15.0")];
        let mut built = HashMap::new();
        // Nothing built yet: both.
        let plan = plan_builds(&bundles, &res, &built, false);
        assert_eq!(plan.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 1]);
        for (i, k) in plan {
            built.insert(bundles[i].name.clone(), (k, true));
        }
        // Same index: nothing; forced: both.
        assert!(plan_builds(&bundles, &res, &built, false).is_empty());
        assert_eq!(plan_builds(&bundles, &res, &built, true).len(), 2);
        // A new version for the range: only b.
        let res2 = [r("6.14.1"), r("6.16.0")];
        let plan = plan_builds(&bundles, &res2, &built, false);
        assert_eq!(plan.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [1]);
        assert_eq!(plan[0].1.resolved, r("6.16.0"));
        // A failed build is retried on the next index read, even unchanged.
        built.get_mut("a").unwrap().1 = false;
        let plan = plan_builds(&bundles, &res, &built, false);
        assert_eq!(plan.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0]);
        // A spec change (values) rebuilds.
        let mut changed = bundles.clone();
        changed[1].helm.as_mut().unwrap().values = Some(serde_json::json!({"replicaCount": 2}));
        built.get_mut("a").unwrap().1 = true;
        let plan = plan_builds(&changed, &res, &built, false);
        assert_eq!(plan.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [1]);
        // An unresolvable chart is due (it reports its error) once, then not
        // again until the index changes (the worker records it as not to retry).
        let res3 = [None, r("6.15.0")];
        let plan = plan_builds(&bundles, &res3, &built, false);
        assert_eq!(plan.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0]);
        built.insert("a".into(), (plan[0].1.clone(), true));
        assert!(plan_builds(&bundles, &res3, &built, false).is_empty());
        assert_eq!(plan_builds(&bundles, &res, &built, false).len(), 1, "it appears: built");
    }

    #[test]
    fn revisions_name_version_and_digest() {
        assert_eq!(revision("6.14.1", "abcd"), "6.14.1@sha256:abcd");
    }
}
