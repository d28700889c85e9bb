//! Chart repositories in the source pipeline (HelmRepository: an HTTP(S)
//! repository with `index.yaml`; OCIRepository: charts in an OCI registry):
//! one worker task per repository reads it (interval, reconcile, webhook),
//! resolves each of its bundles' (chart, version) once for the whole fleet,
//! takes the archive from the hub's content-addressed chart cache or
//! downloads it (checked against the index's or the manifest's digest: a
//! mismatch is refused, nothing is built), renders it through Helm's engine
//! ([`render_chart_archive`]) and stores the artifact. The supervisor in
//! [`crate::controller`] starts and stops these workers ([`ChartWorkers`])
//! next to the GitSource workers and owns what they report. The decision of
//! what to rebuild ([`plan_builds`]) is pure.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use convoy_artifact::Limits;
use convoy_core::backoff;
use convoy_core::chartsrc::{HelmRepositorySpec, OciRepositorySpec};
use convoy_core::clock::now_ms;
use convoy_core::config::{CrdPolicy, FleetConfig, HelmSpec};
use convoy_core::duration::HumanDuration;
use convoy_core::pipeline::{BuildError, BuiltArtifact, ResolvedChart, SourceStatus};
use convoy_core::status::{Condition, Phase, READY, RECONCILING, STALLED, set_condition};
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::controller::{BundleRef, Event, Pending, Report, SourcesConfig, Trigger, unpend};
use crate::helmrender::{
    Capabilities, HelmInput, HelmRendered, HelmSettings, Renderer, merge_values, release_of, render_input,
    values_from_layer,
};
use crate::helmrepo::{HelmRepo, Index, IndexEntry, RepoAuth};
use crate::oci::{OciAuth, OciChart, OciClient, pick_tag};
use crate::redact::redact_url;
use crate::store::ArtifactStore;
use crate::{Error, Result};

/// The kind name of an HTTP chart repository in source statuses.
pub const HELM_REPOSITORY: &str = "HelmRepository";
/// The kind name of an OCI chart repository in source statuses.
pub const OCI_REPOSITORY: &str = "OCIRepository";

/// A chart repository's spec, of either kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RepoSpec {
    Http(HelmRepositorySpec),
    Oci(OciRepositorySpec),
}

impl RepoSpec {
    fn url(&self) -> &str {
        match self {
            RepoSpec::Http(s) => &s.url,
            RepoSpec::Oci(s) => &s.url,
        }
    }
    fn interval(&self) -> HumanDuration {
        match self {
            RepoSpec::Http(s) => s.interval,
            RepoSpec::Oci(s) => s.interval,
        }
    }
    fn timeout(&self) -> std::time::Duration {
        match self {
            RepoSpec::Http(s) => s.timeout.get(),
            RepoSpec::Oci(s) => s.timeout.get(),
        }
    }
    fn suspend(&self) -> bool {
        match self {
            RepoSpec::Http(s) => s.suspend,
            RepoSpec::Oci(s) => s.suspend,
        }
    }
    fn kind(&self) -> &'static str {
        match self {
            RepoSpec::Http(_) => HELM_REPOSITORY,
            RepoSpec::Oci(_) => OCI_REPOSITORY,
        }
    }
}

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
    spec: RepoSpec,
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
        let mut wanted: BTreeMap<String, RepoSpec> = BTreeMap::new();
        for (n, r) in &fleet.helm_repositories {
            wanted.insert(n.clone(), RepoSpec::Http(r.spec.clone()));
        }
        for (n, r) in &fleet.oci_repositories {
            wanted.insert(n.clone(), RepoSpec::Oci(r.spec.clone()));
        }
        let stale: Vec<String> = self
            .workers
            .iter()
            .filter(|(n, w)| wanted.get(*n).is_none_or(|r| *r != w.spec))
            .map(|(n, _)| n.clone())
            .collect();
        for name in stale {
            if let Some(w) = self.workers.remove(&name) {
                w.token.cancel();
                stopping.push(w.task);
                unregister(&name);
            }
        }
        for (name, spec) in wanted {
            let bundles = bundle_refs(fleet, &name);
            match self.workers.get_mut(&name) {
                Some(w) => {
                    if w.bundles != bundles {
                        w.bundles = bundles.clone();
                        let _ = w.tx.try_send(Trigger::Bundles(bundles));
                    }
                }
                None => {
                    *next_id += 1;
                    let over = suspended(&name);
                    let h = spawn(&name, spec, bundles, ctx, *next_id, over);
                    register(&name, h.tx.clone());
                    self.workers.insert(name, h);
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
            let _ = w.tx.try_send(Trigger::Suspend(suspended || w.spec.suspend()));
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
            dep_repositories: Vec::new(),
        })
        .collect()
}

fn spawn(name: &str, spec: RepoSpec, bundles: Vec<BundleRef>, ctx: &Ctx, id: u64, over: bool) -> Handle {
    let (tx, rx) = mpsc::channel(8);
    let token = CancellationToken::new();
    let worker = ChartWorker {
        id,
        name: name.to_string(),
        spec: spec.clone(),
        ctx: ctx.clone(),
        bundles: bundles.clone(),
        suspended: spec.suspend() || over,
        status: initial_status(name, &spec),
        index: None,
        oci: HashMap::new(),
        polled: false,
        built: HashMap::new(),
        resolved: BTreeMap::new(),
    };
    let span = info_span!("source", source = %name, kind = spec.kind());
    let task = tokio::spawn(worker.run(rx, token.clone()).instrument(span));
    Handle { id, spec, tx, token, task, bundles }
}

fn initial_status(name: &str, spec: &RepoSpec) -> SourceStatus {
    SourceStatus {
        name: name.into(),
        url: redact_url(spec.url()),
        reference: match spec {
            RepoSpec::Http(_) => "index.yaml".into(),
            RepoSpec::Oci(_) => "tags".into(),
        },
        phase: if spec.suspend() { Phase::Suspended } else { Phase::Pending },
        suspended: spec.suspend(),
        interval: spec.interval().get(),
        kind: spec.kind().into(),
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
    /// The resolved version (or reference) and digest (`None`: the chart
    /// did not resolve).
    pub resolved: Option<(String, String)>,
}

/// Which bundles to build after reading a repository: each bundle's key
/// from its spec and its resolution, and whether it must build (a changed
/// key, a failed last build, or `force`). Pure.
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
            let key = ChartKey {
                helm: b.helm.clone(),
                target_namespace: b.target_namespace.clone(),
                resolved: r.clone(),
            };
            let due = force || built.get(&b.name).is_none_or(|(k, ok)| *k != key || !ok);
            due.then_some((i, key))
        })
        .collect()
}

/// Where a resolved chart is.
#[derive(Debug, Clone)]
enum Locator {
    Index(IndexEntry),
    Oci(OciChart),
}

/// A bundle's chart, resolved in its repository.
#[derive(Debug, Clone)]
struct Resolution {
    /// The version (from the index, the tag; empty for a digest pin until rendered).
    version: String,
    /// `sha256:<hex>` of the chart archive.
    chart_digest: String,
    /// `sha256:<hex>` of the OCI manifest.
    manifest_digest: Option<String>,
    locator: Locator,
}

impl Resolution {
    fn key(&self) -> (String, String) {
        match &self.manifest_digest {
            Some(m) => (self.version.clone(), m.clone()),
            None => (self.version.clone(), self.chart_digest.clone()),
        }
    }
}

struct ChartWorker {
    id: u64,
    name: String,
    spec: RepoSpec,
    ctx: Ctx,
    bundles: Vec<BundleRef>,
    suspended: bool,
    status: SourceStatus,
    /// HelmRepository: the last index read.
    index: Option<Arc<Index>>,
    /// OCIRepository: each bundle's last resolution.
    oci: HashMap<String, std::result::Result<Resolution, Arc<Error>>>,
    /// Whether the repository was read successfully at least once.
    polled: bool,
    /// Each bundle's last build key, and whether to leave it until it changes.
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
                        // An OCI bundle resolves at a poll: poll now.
                        if matches!(self.spec, RepoSpec::Oci(_)) {
                            next = Instant::now();
                        } else if !self.suspended && self.polled {
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
                    self.spec.interval().get()
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
            self.status.phase = if self.polled { Phase::Ready } else { Phase::Pending };
        }
        self.publish().await;
    }

    fn http_client(&self, spec: &HelmRepositorySpec) -> Result<HelmRepo> {
        HelmRepo::new(
            &spec.url,
            &RepoAuth {
                basic_auth_file: spec.basic_auth_file.as_ref().map(PathBuf::from),
                bearer_token_file: spec.bearer_token_file.as_ref().map(PathBuf::from),
                ca_file: spec.ca_file.as_ref().map(PathBuf::from),
                timeout: Some(spec.timeout.get()),
                max_chart_bytes: Some(self.ctx.cfg.helm.limits.max_chart_bytes),
            },
        )
    }

    /// The OCI client of a bundle's chart: the repository URL, plus
    /// `helm.chart` if set.
    fn oci_client(&self, spec: &OciRepositorySpec, b: &BundleRef) -> Result<OciClient> {
        let base = spec.url.trim_end_matches('/');
        let url = match b.helm.as_deref().and_then(|h| h.chart.as_deref()) {
            Some(c) => format!("{base}/{c}"),
            None => base.to_string(),
        };
        OciClient::new(
            &url,
            &OciAuth {
                basic_auth_file: spec.basic_auth_file.as_ref().map(PathBuf::from),
                bearer_token_file: spec.bearer_token_file.as_ref().map(PathBuf::from),
                ca_file: spec.ca_file.as_ref().map(PathBuf::from),
                plain_http: spec.insecure,
                timeout: Some(spec.timeout.get()),
                max_chart_bytes: Some(self.ctx.cfg.helm.limits.max_chart_bytes),
            },
        )
    }

    /// Read the repository: the index (HelmRepository), or each bundle's
    /// tags and manifest (OCIRepository). The revision shown is the index
    /// digest, or a digest over the resolved manifests. Returns its
    /// revision, or the error that makes the source Stalled.
    async fn read(&mut self) -> Result<String> {
        let timeout = self.spec.timeout();
        let what = format!("read {}", redact_url(self.spec.url()));
        let timed_out = || Error::Timeout { what: what.clone(), after: timeout };
        match self.spec.clone() {
            RepoSpec::Http(spec) => {
                let _permit =
                    self.ctx.semaphore.clone().acquire_owned().await.map_err(|_| Error::Shutdown)?;
                let client = self.http_client(&spec)?;
                let (index, digest) = tokio::time::timeout(timeout, client.index_with_digest())
                    .await
                    .map_err(|_| timed_out())??;
                self.index = Some(Arc::new(index));
                Ok(digest)
            }
            RepoSpec::Oci(spec) => {
                let mut out = HashMap::new();
                let mut first_error = None;
                for b in self.bundles.clone() {
                    let r = {
                        let _permit =
                            self.ctx.semaphore.clone().acquire_owned().await.map_err(|_| Error::Shutdown)?;
                        match tokio::time::timeout(timeout, self.resolve_oci(&spec, &b)).await {
                            Ok(r) => r,
                            Err(_) => Err(timed_out()),
                        }
                    };
                    if let Err(e) = &r
                        && matches!(
                            e,
                            Error::Fetch { .. }
                                | Error::Auth { .. }
                                | Error::Timeout { .. }
                                | Error::Credentials(_)
                        )
                        && first_error.is_none()
                    {
                        first_error = Some(match e {
                            Error::Auth { url, message } => {
                                Error::Auth { url: url.clone(), message: message.clone() }
                            }
                            other => Error::Fetch { url: redact_url(&spec.url), message: other.to_string() },
                        });
                    }
                    out.insert(b.name.clone(), r.map_err(Arc::new));
                }
                let mut parts: Vec<String> = out
                    .iter()
                    .filter_map(|(n, r)| r.as_ref().ok().map(|r| format!("{n}={}", r.key().1)))
                    .collect();
                parts.sort();
                self.oci = out;
                match first_error {
                    // Every bundle failed the same way: the registry is the problem.
                    Some(e) if self.oci.values().all(|r| r.is_err()) => Err(e),
                    _ => Ok(convoy_artifact::digest_of(parts.join("\n").as_bytes())),
                }
            }
        }
    }

    async fn resolve_oci(&self, spec: &OciRepositorySpec, b: &BundleRef) -> Result<Resolution> {
        let h = b.helm.as_deref().ok_or_else(|| Error::Config("not a Helm bundle".into()))?;
        let client = self.oci_client(spec, b)?;
        let (version, reference) = match &h.digest {
            Some(d) => (String::new(), d.clone()),
            None => {
                let constraint = h.version.as_deref().unwrap_or_default();
                let tags = client.tags().await?;
                let (tag, version) = pick_tag(&tags, constraint)?.ok_or_else(|| Error::RefNotFound {
                    url: redact_url(&spec.url),
                    reference: format!(
                        "chart {} version {:?}",
                        h.chart.as_deref().unwrap_or("(the repository)"),
                        if constraint.is_empty() { "*" } else { constraint }
                    ),
                })?;
                (version, tag)
            }
        };
        let chart = client.manifest(&reference).await?;
        Ok(Resolution {
            version,
            chart_digest: chart.chart_digest.clone(),
            manifest_digest: Some(chart.manifest_digest.clone()),
            locator: Locator::Oci(chart),
        })
    }

    /// Read the repository; true on success.
    async fn poll(&mut self, force: bool) -> bool {
        if !self.polled || self.status.failures > 0 || force {
            self.status.phase = Phase::Reconciling;
            set_condition(
                &mut self.status.conditions,
                Condition::new(RECONCILING, true, "Progressing", "reading the repository"),
                now_ms(),
            );
            self.publish().await;
        }
        let result = self.read().await;
        let now = now_ms();
        self.status.last_fetch_unix_ms = now;
        set_condition(&mut self.status.conditions, Condition::new(RECONCILING, false, "Idle", ""), now);
        match result {
            Ok(digest) => {
                if self.status.revision.as_deref() != Some(digest.as_str()) {
                    info!(revision = %digest, "new repository revision");
                } else {
                    debug!(revision = %digest, "repository unchanged");
                }
                self.status.revision = Some(digest.clone());
                self.status.failures = 0;
                self.status.phase = Phase::Ready;
                self.polled = true;
                set_condition(
                    &mut self.status.conditions,
                    Condition::new(READY, true, "Succeeded", format!("revision {digest}")),
                    now,
                );
                self.status.conditions.retain(|c| c.type_ != STALLED);
                self.publish().await;
                true
            }
            Err(error) => {
                self.status.failures += 1;
                self.status.phase = Phase::Stalled;
                let (reason, message) = (error.reason(), error.to_string());
                warn!(%error, failures = self.status.failures, "repository read failed");
                convoy_core::status::set_stalled(&mut self.status.conditions, reason, &message, now);
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

    /// Each bundle's resolution from the last read.
    fn resolutions(&self) -> Vec<std::result::Result<Resolution, (String, String)>> {
        let as_pair = |e: &Error| (e.reason().to_string(), e.to_string());
        self.bundles
            .iter()
            .map(|b| match &self.spec {
                RepoSpec::Http(spec) => {
                    let index = self
                        .index
                        .as_deref()
                        .ok_or_else(|| as_pair(&Error::Config("index.yaml not read yet".into())))?;
                    let h = b
                        .helm
                        .as_deref()
                        .ok_or_else(|| as_pair(&Error::Config("not a Helm bundle".into())))?;
                    let client = self.http_client(spec).map_err(|e| as_pair(&e))?;
                    let chart = h.chart.as_deref().unwrap_or_default();
                    let e = client
                        .resolve(index, chart, h.version.as_deref().unwrap_or_default())
                        .map_err(|e| as_pair(&e))?;
                    Ok(Resolution {
                        version: e.version.clone(),
                        chart_digest: format!(
                            "sha256:{}",
                            e.digest.trim_start_matches("sha256:").to_ascii_lowercase()
                        ),
                        manifest_digest: None,
                        locator: Locator::Index(e.clone()),
                    })
                }
                RepoSpec::Oci(_) => match self.oci.get(&b.name) {
                    Some(Ok(r)) => Ok(r.clone()),
                    Some(Err(e)) => Err(as_pair(e)),
                    None => Err(as_pair(&Error::Config("not resolved yet".into()))),
                },
            })
            .collect()
    }

    /// Build the bundles whose resolution or spec changed (all on `force`).
    async fn build_due(&mut self, force: bool, token: &CancellationToken) {
        if !self.polled {
            return;
        }
        let resolutions = self.resolutions();
        let keys: Vec<Option<(String, String)>> =
            resolutions.iter().map(|r| r.as_ref().ok().map(Resolution::key)).collect();
        let plan = plan_builds(&self.bundles, &keys, &self.built, force);
        let mut changed_status = false;
        for (i, key) in plan {
            let b = self.bundles[i].clone();
            let result = match &resolutions[i] {
                Err(pair) => Err(pair.clone()),
                Ok(res) => {
                    let r = tokio::select! {
                        _ = token.cancelled() => return,
                        r = self.build(res, &b) => r,
                    };
                    r.map_err(|e| (e.reason().to_string(), e.to_string()))
                }
            };
            let result = result.map_err(|(reason, message)| {
                warn!(bundle = %b.name, %reason, %message, "build failed");
                BuildError { revision: None, reason, message, at_unix_ms: now_ms() }
            });
            // A build that failed after its chart resolved (a download error,
            // a digest mismatch, a render error) is retried at the next read;
            // a chart that does not resolve waits for the repository to change.
            let retry = resolutions[i].is_ok() && result.is_err();
            if let (Ok(a), Ok(res)) = (&result, &resolutions[i])
                && let Some(h) = &a.helm
            {
                let spec = b.helm.as_deref().cloned().unwrap_or_default();
                self.resolved.insert(
                    b.name.clone(),
                    ResolvedChart {
                        bundle: b.name.clone(),
                        chart: h.chart.clone(),
                        constraint: spec.version.or(spec.digest).unwrap_or_default(),
                        version: h.version.clone(),
                        digest: res.chart_digest.clone(),
                        manifest_digest: res.manifest_digest.clone().unwrap_or_default(),
                    },
                );
                changed_status = true;
                info!(bundle = %b.name, digest = %a.digest, revision = %a.revision, "built artifact");
            }
            self.built.insert(b.name.clone(), (key, !retry));
            self.report(Event::Built { bundle: b.name.clone(), result }).await;
        }
        if changed_status {
            self.publish().await;
        }
    }

    /// The chart archive from the cache, or downloaded (digest-checked) and cached.
    async fn chart_bytes(&self, res: &Resolution, b: &BundleRef) -> Result<Vec<u8>> {
        let charts = self.ctx.charts.clone();
        let d = res.chart_digest.clone();
        let cached = tokio::task::spawn_blocking(move || charts.read(&d).ok()).await.ok().flatten();
        if let Some(bytes) = cached {
            debug!(bundle = %b.name, digest = %res.chart_digest, "chart from the cache");
            return Ok(bytes);
        }
        let timeout = self.spec.timeout();
        let bytes = {
            let _permit = self.ctx.semaphore.clone().acquire_owned().await.map_err(|_| Error::Shutdown)?;
            let download = async {
                match (&self.spec, &res.locator) {
                    (RepoSpec::Http(spec), Locator::Index(entry)) => {
                        let chart = b.helm.as_deref().and_then(|h| h.chart.as_deref()).unwrap_or_default();
                        Ok(self.http_client(spec)?.download(chart, entry).await?.bytes)
                    }
                    (RepoSpec::Oci(spec), Locator::Oci(chart)) => {
                        self.oci_client(spec, b)?.chart(chart).await
                    }
                    _ => Err(Error::Config("chart locator of another repository kind".into())),
                }
            };
            tokio::time::timeout(timeout, download).await.map_err(|_| Error::Timeout {
                what: format!("download chart {}", res.chart_digest),
                after: timeout,
            })??
        };
        let charts = self.ctx.charts.clone();
        let bytes = tokio::task::spawn_blocking(move || charts.put(&bytes).map(|_| bytes))
            .await
            .map_err(|e| Error::Config(format!("chart cache task failed: {e}")))??;
        info!(bundle = %b.name, version = %res.version, digest = %res.chart_digest, "chart downloaded");
        Ok(bytes)
    }

    async fn build(&self, res: &Resolution, b: &BundleRef) -> Result<BuiltArtifact> {
        let bytes = self.chart_bytes(res, b).await?;
        let spec = b.helm.as_deref().cloned().ok_or_else(|| Error::Config("not a Helm bundle".into()))?;
        let permit = self.ctx.semaphore.clone().acquire_owned().await.map_err(|_| Error::Shutdown)?;
        let (store, pending, limits) =
            (self.ctx.store.clone(), self.ctx.pending.clone(), self.ctx.cfg.limits);
        let helm_cfg = self.ctx.cfg.helm.clone();
        let (bundle, target_ns, source) = (b.name.clone(), b.target_namespace.clone(), self.name.clone());
        let url = redact_url(self.spec.url());
        let pinned = res.manifest_digest.clone().unwrap_or_else(|| res.chart_digest.clone());
        let chart = spec.chart.clone().unwrap_or_else(|| bundle.clone());
        // Named as Helm names a packaged chart (a chart pinned by digest has no version yet).
        let archive_name = match res.version.as_str() {
            "" => format!("{chart}.tgz"),
            v => format!("{chart}-{v}.tgz"),
        };
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let r = render_from_repository(
                &helm_cfg,
                &bundle,
                &spec,
                target_ns.as_deref(),
                bytes,
                &archive_name,
                &limits,
            )?;
            for w in &r.helm.warnings {
                warn!(bundle = %bundle, "helm: {w}");
            }
            // The render input, for the hub's per-cluster renders.
            if let Some(input) = &r.input {
                store.put(input)?;
            }
            *pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(r.artifact.digest.clone())
                .or_default() += 1;
            if let Err(e) = store.put(&r.artifact.bytes) {
                unpend(&pending, &r.artifact.digest);
                return Err(e);
            }
            Ok(BuiltArtifact {
                bundle,
                source,
                source_url: url,
                revision: revision(&r.helm.version, pinned.trim_start_matches("sha256:")),
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

/// A chart pulled from a repository by reference (`convoy build --chart`).
#[derive(Debug, Clone)]
pub struct PulledChart {
    /// The resolved version.
    pub version: String,
    /// `sha256:<hex>` of the archive (checked against the index or manifest).
    pub chart_digest: String,
    /// For an OCI chart: `sha256:<hex>` of its manifest.
    pub manifest_digest: Option<String>,
    /// The archive.
    pub bytes: Vec<u8>,
}

/// How [`pull_chart`] reaches a repository or registry: the same files a
/// `HelmRepository`/`OCIRepository` source names (docs/helm.md).
#[derive(Debug, Clone, Default)]
pub struct PullAuth {
    /// Talk plain http to an `oci://` registry (no TLS).
    pub plain_http: bool,
    /// A file with `user:password`.
    pub basic_auth_file: Option<PathBuf>,
    /// A file with a bearer token.
    pub bearer_token_file: Option<PathBuf>,
    /// A PEM CA bundle trusted for this repository or registry.
    pub ca_file: Option<PathBuf>,
}

/// Pull a chart by reference, with the resolvers the hub uses:
/// `oci://host/path/chart` (a tag, a semver range over tags, or a manifest
/// digest `sha256:…` as `constraint`) or `http(s)://repo/NAME` (the chart
/// NAME in the repository's `index.yaml`, exact version or semver range).
/// With `auth`'s credentials, or anonymous (a registry's token challenge is
/// answered either way). Digests are checked.
pub async fn pull_chart(
    reference: &str,
    constraint: &str,
    auth: &PullAuth,
    max_bytes: u64,
) -> Result<PulledChart> {
    if reference.starts_with("oci://") {
        let client = OciClient::new(
            reference,
            &OciAuth {
                plain_http: auth.plain_http,
                basic_auth_file: auth.basic_auth_file.clone(),
                bearer_token_file: auth.bearer_token_file.clone(),
                ca_file: auth.ca_file.clone(),
                max_chart_bytes: Some(max_bytes),
                ..Default::default()
            },
        )?;
        let (version, reference) = if constraint.starts_with("sha256:") {
            (String::new(), constraint.to_string())
        } else {
            let (tag, version) = client.resolve(constraint).await?;
            (version, tag)
        };
        let m = client.manifest(&reference).await?;
        let bytes = client.chart(&m).await?;
        return Ok(PulledChart {
            version,
            chart_digest: m.chart_digest,
            manifest_digest: Some(m.manifest_digest),
            bytes,
        });
    }
    let (repo, chart) = reference
        .trim_end_matches('/')
        .rsplit_once('/')
        .filter(|(r, c)| r.contains("://") && !r.ends_with(':') && !r.ends_with('/') && !c.is_empty())
        .ok_or_else(|| Error::Config(format!("{}: expected REPO_URL/NAME", redact_url(reference))))?;
    let client = HelmRepo::new(
        repo,
        &RepoAuth {
            basic_auth_file: auth.basic_auth_file.clone(),
            bearer_token_file: auth.bearer_token_file.clone(),
            ca_file: auth.ca_file.clone(),
            max_chart_bytes: Some(max_bytes),
            ..Default::default()
        },
    )?;
    let f = client.fetch(chart, constraint).await?;
    Ok(PulledChart { version: f.version, chart_digest: f.digest, manifest_digest: None, bytes: f.bytes })
}

/// The revision of a chart build:/// The revision of a chart build: `<version>@sha256:<digest>`, the digest
/// being the chart archive's (HelmRepository) or the manifest's (OCIRepository).
pub fn revision(version: &str, digest_hex: &str) -> String {
    format!("{version}@sha256:{digest_hex}")
}

fn render_from_repository(
    helm: &HelmSettings,
    bundle: &str,
    spec: &HelmSpec,
    target_namespace: Option<&str>,
    archive: Vec<u8>,
    archive_name: &str,
    limits: &Limits,
) -> Result<HelmRendered> {
    let renderer = helm.renderer()?;
    let caps = helm.default_capabilities(spec);
    let input = prepare_chart_archive(bundle, spec, target_namespace, archive, archive_name, &caps)?;
    render_chart_archive(&renderer, &input, &caps, &[], limits)
}

/// The render input of a Helm bundle whose chart is a packaged archive
/// (from a chart repository or an OCI registry; `archive_name` names it in
/// messages): the archive itself, values merged as for a chart in a
/// GitSource (chart defaults < `values` < `valuesFrom`; a repository chart
/// has no `valuesFiles`), the release and the options. The chart must have
/// the name `spec.chart` (its version was resolved from the repository).
/// The hub renders it again per cluster from this input, as a chart
/// directory's. Reads the `valuesFrom` files. Blocking.
pub fn prepare_chart_archive(
    bundle: &str,
    spec: &HelmSpec,
    target_namespace: Option<&str>,
    archive: Vec<u8>,
    archive_name: &str,
    default_capabilities: &Capabilities,
) -> Result<HelmInput> {
    use base64::Engine;
    let mut from = Vec::new();
    for v in &spec.values_from {
        let text = match std::fs::read_to_string(&v.file) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(&v.file, e)),
        };
        from.extend(values_from_layer(v, text.as_deref())?);
    }
    let values = merge_values(&[], spec.values.as_ref(), &from, &[]);
    let (release, namespace) = release_of(bundle, spec, target_namespace);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&archive);
    Ok(HelmInput {
        chart_path: archive_name.to_string(),
        files: vec![(archive_name.to_string(), b64)],
        values,
        release,
        namespace,
        max_history: spec.max_history.unwrap_or(0),
        include_crds: spec.crds != CrdPolicy::Skip,
        crds_create_only: spec.crds == CrdPolicy::Create,
        expect_chart: spec.chart.clone(),
        expect_version: None,
        default_capabilities: default_capabilities.clone(),
        archive: true,
    })
}

/// Render a chart archive's input ([`prepare_chart_archive`]) with
/// `capabilities` and the per-cluster `extra_values` (merged last) through
/// Helm's engine in a bounded worker, packed as `convoy build --chart`
/// packs. The result carries the stored form of the input and its digest,
/// as a chart directory's build does. Blocking.
pub fn render_chart_archive(
    renderer: &Renderer,
    input: &HelmInput,
    capabilities: &Capabilities,
    extra_values: &[Value],
    limits: &Limits,
) -> Result<HelmRendered> {
    let mut r = render_input(input, renderer, capabilities, extra_values, limits)?;
    let bytes = input.to_bytes();
    r.helm.input = Some(convoy_artifact::digest_of(&bytes));
    r.input = Some(bytes);
    Ok(r)
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
            dep_repositories: Vec::new(),
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
