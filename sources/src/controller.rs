//! The source pipeline: one worker task per GitSource polls, fetches and
//! builds its bundles; one supervisor task owns the published state.
//!
//! - The supervisor is the only writer of the `statuses` and `builds` watch
//!   channels. It follows the fleet config (starting, restarting and
//!   stopping workers), applies suspend overrides, and runs artifact GC.
//! - A worker waits for its interval (or a reconcile, or a webhook), then
//!   fetches in `spawn_blocking` under a semaphore shared by all sources,
//!   with the source's timeout. On failure it backs off exponentially with
//!   jitter. When the commit, a bundle's path or the ignore rules changed, it
//!   renders the affected bundles (again in `spawn_blocking`, same
//!   semaphore) and stores the artifacts. A poll that finds the same commit
//!   and no changed bundle does nothing else. On a new commit, a bundle
//!   whose render key (the trees and files it reads, plus the render
//!   options: [`crate::deps`]) is the one of its last successful render
//!   keeps its artifact without rendering and is reported at the new
//!   revision; a reconcile (or webhook) fetches now and renders only the
//!   bundles whose key changed or whose last build failed.
//! - A failed build keeps the bundle's last good artifact and records the
//!   error. A failed fetch leaves artifacts alone; only bundles that never
//!   built get a `FetchFailed` error, so that they say why they are pending.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use convoy_artifact::Limits;
use convoy_core::backoff;
use convoy_core::clock::now_ms;
use convoy_core::config::{FleetConfig, GitSourceSpec, HelmSpec, Named, RefSpec};
use convoy_core::pipeline::{BuildError, BuiltArtifact, BundleBuildState, SourceStatus};
use convoy_core::status::{Condition, Phase, READY, RECONCILING, STALLED, set_condition};
use sha2::{Digest as _, Sha256};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::deps::RenderStats;
use crate::git::{FetchOptions, GitCache, Resolved, SshKeys};
use crate::redact::{Secrets, redact_url};
use crate::render::{Kustomize, RenderOptions, render};
use crate::store::ArtifactStore;
use crate::{Error, Result};

/// Settings of the source pipeline.
#[derive(Debug, Clone)]
pub struct SourcesConfig {
    /// The hub's data dir: git caches go to `<data_dir>/sources`, artifacts
    /// to `<data_dir>/artifacts`.
    pub data_dir: PathBuf,
    /// How many fetches and builds may run at once, across all sources.
    pub max_concurrent: usize,
    /// Artifact limits.
    pub limits: Limits,
    /// Which kustomize to run.
    pub kustomize: Kustomize,
    /// First retry delay after a failed fetch; doubles per failure (with jitter).
    pub backoff_base: Duration,
    /// The longest retry delay.
    pub backoff_max: Duration,
    /// Delete artifacts no bundle references once they are this old; `None`
    /// disables the periodic GC (the hub may run [`ArtifactStore::gc`] itself).
    pub artifact_retention: Option<Duration>,
    /// How often the GC runs.
    pub gc_interval: Duration,
    /// How Helm bundles render.
    pub helm: crate::helmrender::HelmSettings,
}

impl SourcesConfig {
    /// Defaults for a data dir: 4 concurrent fetches, backoff 2s..5m, GC of
    /// unreferenced artifacts after 24h, every 10m.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            max_concurrent: 4,
            limits: Limits::default(),
            kustomize: Kustomize::Auto,
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(300),
            artifact_retention: Some(Duration::from_secs(24 * 3600)),
            gc_interval: Duration::from_secs(600),
            helm: Default::default(),
        }
    }
}

/// What a worker is asked to do.
#[derive(Debug)]
pub(crate) enum Trigger {
    /// Fetch now and rebuild every bundle.
    Reconcile,
    /// The source's bundles changed.
    Bundles(Vec<BundleRef>),
    /// Suspend or resume.
    Suspend(bool),
}

/// What a worker reports, tagged with the worker's id so that a replaced
/// worker's late reports are ignored.
pub(crate) struct Report {
    pub(crate) source: String,
    pub(crate) worker: u64,
    pub(crate) event: Event,
}

pub(crate) enum Event {
    Status(Box<SourceStatus>),
    Built { bundle: String, result: std::result::Result<BuiltArtifact, BuildError> },
    FetchFailed { error: BuildError },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BundleRef {
    pub(crate) name: String,
    pub(crate) path: String,
    /// A Helm bundle's chart and values (crate::helmrender).
    pub(crate) helm: Option<Box<HelmSpec>>,
    pub(crate) target_namespace: Option<String>,
    /// For a chart directory (`helm.path`): the fleet's chart repositories,
    /// whose credentials its non-vendored dependencies use
    /// (crate::chartdeps); empty for every other bundle. A change to them
    /// rebuilds the chart, as a spec change does.
    pub(crate) dep_repositories: Vec<crate::chartdeps::KnownRepository>,
}

struct WorkerHandle {
    id: u64,
    spec: GitSourceSpec,
    tx: mpsc::Sender<Trigger>,
    token: CancellationToken,
    task: JoinHandle<()>,
    bundles: Vec<BundleRef>,
}

/// A cheap handle to the running pipeline.
#[derive(Clone)]
pub struct Sources {
    inner: Arc<Inner>,
}

struct Inner {
    store: ArtifactStore,
    statuses: watch::Receiver<Arc<BTreeMap<String, SourceStatus>>>,
    builds: watch::Receiver<Arc<BTreeMap<String, BundleBuildState>>>,
    fleet: watch::Receiver<Arc<FleetConfig>>,
    /// Worker trigger channels by source name (written by the supervisor).
    triggers: Mutex<HashMap<String, mpsc::Sender<Trigger>>>,
    control: mpsc::UnboundedSender<(String, bool)>,
    suspended: Mutex<HashMap<String, bool>>,
    /// Render counts, shared with every worker.
    stats: Arc<RenderStats>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources").field("store", &self.inner.store.dir()).finish_non_exhaustive()
    }
}

impl Sources {
    /// Start the pipeline. The returned task ends after `shutdown` is
    /// cancelled and every worker has stopped; await it.
    pub fn start(
        cfg: SourcesConfig,
        fleet: watch::Receiver<Arc<FleetConfig>>,
        shutdown: CancellationToken,
    ) -> Result<(Sources, JoinHandle<()>)> {
        let store = ArtifactStore::open(&cfg.data_dir.join("artifacts"))?;
        let cfg_max = cfg.max_concurrent;
        let sources_dir = cfg.data_dir.join("sources");
        std::fs::create_dir_all(&sources_dir).map_err(|e| Error::io(&sources_dir, e))?;
        let (status_tx, status_rx) = watch::channel(Arc::new(BTreeMap::new()));
        let (builds_tx, builds_rx) = watch::channel(Arc::new(BTreeMap::new()));
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            store: store.clone(),
            statuses: status_rx,
            builds: builds_rx,
            fleet: fleet.clone(),
            triggers: Mutex::new(HashMap::new()),
            control: control_tx,
            suspended: Mutex::new(HashMap::new()),
            stats: Arc::default(),
        });
        let (events_tx, events_rx) = mpsc::channel(256);
        let cfg = Arc::new(cfg);
        let pending = Pending::default();
        let semaphore = Arc::new(Semaphore::new(cfg_max.max(1)));
        let chart_ctx = crate::chartsrc::Ctx {
            cfg: cfg.clone(),
            store: store.clone(),
            charts: ArtifactStore::open(&cfg.data_dir.join("charts"))?,
            pending: pending.clone(),
            semaphore: semaphore.clone(),
            events: events_tx.clone(),
        };
        let sup = Supervisor {
            pending,
            cfg,
            store,
            sources_dir,
            fleet,
            status_tx,
            builds_tx,
            events_tx,
            semaphore,
            workers: HashMap::new(),
            stopping: Vec::new(),
            next_id: 0,
            inner: inner.clone(),
            charts: Default::default(),
            chart_ctx,
        };
        let task = tokio::spawn(sup.run(events_rx, control_rx, shutdown).instrument(info_span!("sources")));
        Ok((Sources { inner }, task))
    }

    /// Fetch status by source name.
    pub fn statuses(&self) -> watch::Receiver<Arc<BTreeMap<String, SourceStatus>>> {
        self.inner.statuses.clone()
    }

    /// Build state by bundle name.
    pub fn builds(&self) -> watch::Receiver<Arc<BTreeMap<String, BundleBuildState>>> {
        self.inner.builds.clone()
    }

    /// Fetch a source now (and rebuild its bundles).
    pub fn reconcile(&self, source: &str) -> Result<()> {
        if self.is_suspended(source) {
            return Err(Error::Suspended(source.into()));
        }
        let tx = self.inner.triggers.lock().unwrap_or_else(|p| p.into_inner()).get(source).cloned();
        match tx {
            None => Err(Error::UnknownSource(source.into())),
            Some(tx) => match tx.try_send(Trigger::Reconcile) {
                // A full queue already holds a pending trigger: that one fetches.
                Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => Ok(()),
                Err(mpsc::error::TrySendError::Closed(_)) => Err(Error::Shutdown),
            },
        }
    }

    /// Suspend or resume polling of a source, on top of its `suspend` setting
    /// (not persisted: the hub reapplies it after a restart).
    pub fn set_suspended(&self, source: &str, suspended: bool) -> Result<()> {
        if !self.inner.fleet.borrow().has_source(source) {
            return Err(Error::UnknownSource(source.into()));
        }
        self.inner.suspended.lock().unwrap_or_else(|p| p.into_inner()).insert(source.into(), suspended);
        self.inner.control.send((source.into(), suspended)).map_err(|_| Error::Shutdown)
    }

    fn is_suspended(&self, source: &str) -> bool {
        let over = self.inner.suspended.lock().unwrap_or_else(|p| p.into_inner()).get(source).copied();
        let config = self.inner.fleet.borrow().source_suspended(source);
        over.unwrap_or(false) || config
    }

    /// Renders run and skipped (incremental rendering, see [`crate::deps`]).
    pub fn render_stats(&self) -> Arc<RenderStats> {
        self.inner.stats.clone()
    }

    /// The artifact store.
    pub fn store(&self) -> &ArtifactStore {
        &self.inner.store
    }

    /// The webhook receiver, to mount on the hub's HTTP port.
    pub fn webhook_router(&self) -> axum::Router {
        crate::webhook::router(self.clone())
    }

    pub(crate) fn fleet(&self) -> Arc<FleetConfig> {
        self.inner.fleet.borrow().clone()
    }
}

impl crate::webhook::HookTarget for Sources {
    fn fleet(&self) -> Arc<FleetConfig> {
        Sources::fleet(self)
    }

    fn reconcile(&self, source: &str) -> Result<()> {
        Sources::reconcile(self, source)
    }
}

/// Digests stored by a worker whose build event the supervisor has not
/// processed yet; GC treats them as referenced.
pub(crate) type Pending = Arc<Mutex<HashMap<String, usize>>>;

struct Supervisor {
    pending: Pending,
    cfg: Arc<SourcesConfig>,
    store: ArtifactStore,
    sources_dir: PathBuf,
    fleet: watch::Receiver<Arc<FleetConfig>>,
    status_tx: watch::Sender<Arc<BTreeMap<String, SourceStatus>>>,
    builds_tx: watch::Sender<Arc<BTreeMap<String, BundleBuildState>>>,
    events_tx: mpsc::Sender<Report>,
    semaphore: Arc<Semaphore>,
    workers: HashMap<String, WorkerHandle>,
    /// Replaced workers, cancelled and awaited at shutdown.
    stopping: Vec<JoinHandle<()>>,
    next_id: u64,
    inner: Arc<Inner>,
    /// HelmRepository workers (crate::chartsrc) and what they share.
    charts: crate::chartsrc::ChartWorkers,
    chart_ctx: crate::chartsrc::Ctx,
}

impl Supervisor {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<Report>,
        mut control: mpsc::UnboundedReceiver<(String, bool)>,
        shutdown: CancellationToken,
    ) {
        self.apply_fleet();
        let mut gc = tokio::time::interval(self.cfg.gc_interval.max(Duration::from_secs(1)));
        gc.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The config sender may go away (a hub started with a fixed fleet
        // config): the pipeline then keeps running with the last config.
        let mut fleet_open = true;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = self.fleet.changed(), if fleet_open => {
                    if changed.is_err() {
                        fleet_open = false;
                        continue;
                    }
                    self.apply_fleet();
                }
                Some(ev) = events.recv() => self.on_event(ev),
                Some((source, suspended)) = control.recv() => {
                    if let Some(w) = self.workers.get(&source) {
                        let _ = w.tx.try_send(Trigger::Suspend(suspended || w.spec.suspend));
                    }
                    self.charts.suspend(&source, suspended);
                }
                _ = gc.tick() => self.gc().await,
            }
        }
        for (_, w) in self.workers.drain() {
            w.token.cancel();
            self.stopping.push(w.task);
        }
        self.charts.drain(&mut self.stopping);
        for task in self.stopping.drain(..) {
            let _ = task.await;
        }
        debug!("source pipeline stopped");
    }

    fn apply_fleet(&mut self) {
        let fleet = self.fleet.borrow_and_update().clone();
        // Stop workers whose source is gone or changed.
        let stale: Vec<String> = self
            .workers
            .iter()
            .filter(|(name, w)| fleet.sources.get(*name).is_none_or(|s| s.spec != w.spec))
            .map(|(n, _)| n.clone())
            .collect();
        self.stopping.retain(|t| !t.is_finished());
        for name in stale {
            if let Some(w) = self.workers.remove(&name) {
                w.token.cancel();
                self.stopping.push(w.task);
                self.inner.triggers.lock().unwrap_or_else(|p| p.into_inner()).remove(&name);
            }
        }
        let known = crate::chartdeps::known_repositories(&fleet);
        for (name, src) in &fleet.sources {
            let bundles: Vec<BundleRef> = fleet
                .bundles_of_source(name)
                .map(|b| BundleRef {
                    name: b.name.clone(),
                    path: b.spec.path.clone(),
                    helm: b.spec.helm.clone().map(Box::new),
                    target_namespace: b.spec.target_namespace.clone(),
                    dep_repositories: if b.spec.helm.as_ref().is_some_and(|h| h.path.is_some()) {
                        known.clone()
                    } else {
                        Vec::new()
                    },
                })
                .collect();
            match self.workers.get_mut(name) {
                Some(w) => {
                    if w.bundles != bundles {
                        w.bundles = bundles.clone();
                        let _ = w.tx.try_send(Trigger::Bundles(bundles));
                    }
                }
                None => self.spawn_worker(src, bundles),
            }
        }
        self.apply_chart_sources(&fleet);
        // Forget removed sources and bundles.
        self.status_tx.send_if_modified(|m| {
            let before = m.len();
            Arc::make_mut(m).retain(|k, _| fleet.has_source(k));
            before != m.len()
        });
        self.builds_tx.send_if_modified(|m| {
            let before = m.len();
            Arc::make_mut(m).retain(|k, _| fleet.bundles.contains_key(k));
            before != m.len()
        });
    }

    /// Start, stop and update the HelmRepository workers (crate::chartsrc).
    fn apply_chart_sources(&mut self, fleet: &FleetConfig) {
        let triggers = &self.inner.triggers;
        let overrides = &self.inner.suspended;
        self.charts.apply(
            fleet,
            &self.chart_ctx,
            &mut self.next_id,
            &mut self.stopping,
            &mut |name, tx| {
                triggers.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), tx);
            },
            &mut |name| {
                triggers.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
            },
            &|name| overrides.lock().unwrap_or_else(|p| p.into_inner()).get(name).copied().unwrap_or(false),
        );
    }

    fn spawn_worker(&mut self, src: &Named<GitSourceSpec>, bundles: Vec<BundleRef>) {
        let (tx, rx) = mpsc::channel(8);
        let token = CancellationToken::new();
        let over = self.inner.suspended.lock().unwrap_or_else(|p| p.into_inner()).get(&src.name).copied();
        let url_key = hex::encode(&Sha256::digest(src.spec.url.as_bytes())[..8]);
        let dir = self.sources_dir.join(format!("{}-{url_key}", src.name));
        self.next_id += 1;
        let id = self.next_id;
        let worker = Worker {
            id,
            name: src.name.clone(),
            spec: src.spec.clone(),
            cfg: self.cfg.clone(),
            cache: GitCache::new(dir.join("repo.git")),
            work_dir: dir,
            store: self.store.clone(),
            pending: self.pending.clone(),
            semaphore: self.semaphore.clone(),
            events: self.events_tx.clone(),
            bundles: bundles.clone(),
            suspended: src.spec.suspend || over.unwrap_or(false),
            status: initial_status(&src.name, &src.spec),
            last: None,
            built: HashMap::new(),
            rendered: HashMap::new(),
            stats: self.inner.stats.clone(),
        };
        let span = info_span!("source", source = %src.name);
        let task = tokio::spawn(worker.run(rx, token.clone()).instrument(span));
        self.inner.triggers.lock().unwrap_or_else(|p| p.into_inner()).insert(src.name.clone(), tx.clone());
        self.workers
            .insert(src.name.clone(), WorkerHandle { id, spec: src.spec.clone(), tx, token, task, bundles });
    }

    fn on_event(&mut self, report: Report) {
        let current = self.workers.get(&report.source).is_some_and(|w| w.id == report.worker)
            || self.charts.is_current(&report.source, report.worker);
        match report.event {
            Event::Status(s) => {
                if !current {
                    return;
                }
                self.status_tx.send_modify(|m| {
                    Arc::make_mut(m).insert(s.name.clone(), *s);
                });
            }
            Event::Built { bundle, result } => {
                if !current || !self.fleet.borrow().bundles.contains_key(&bundle) {
                    if let Ok(a) = &result {
                        unpend(&self.pending, &a.digest);
                    }
                    return;
                }
                let digest = result.as_ref().ok().map(|a| a.digest.clone());
                self.builds_tx.send_modify(|m| {
                    let st = Arc::make_mut(m)
                        .entry(bundle.clone())
                        .or_insert_with(|| BundleBuildState { bundle: bundle.clone(), ..Default::default() });
                    match result {
                        Ok(a) => {
                            st.artifact = Some(a);
                            st.error = None;
                        }
                        Err(e) => st.error = Some(e),
                    }
                });
                if let Some(d) = digest {
                    unpend(&self.pending, &d);
                }
            }
            Event::FetchFailed { error } => {
                if !current {
                    return;
                }
                let source = report.source;
                let fleet = self.fleet.borrow().clone();
                let bundles: Vec<String> = fleet.bundles_of_source(&source).map(|b| b.name.clone()).collect();
                self.builds_tx.send_if_modified(|m| {
                    let map = Arc::make_mut(m);
                    let mut changed = false;
                    for b in &bundles {
                        let st = map
                            .entry(b.clone())
                            .or_insert_with(|| BundleBuildState { bundle: b.clone(), ..Default::default() });
                        if st.artifact.is_none() && st.error.as_ref() != Some(&error) {
                            st.error = Some(error.clone());
                            changed = true;
                        }
                    }
                    changed
                });
            }
        }
    }

    async fn gc(&self) {
        let Some(retention) = self.cfg.artifact_retention else { return };
        let mut referenced: HashSet<String> = self
            .builds_tx
            .borrow()
            .values()
            .filter_map(|b| b.artifact.as_ref())
            .flat_map(|a| {
                std::iter::once(a.digest.clone()).chain(a.helm.as_ref().and_then(|h| h.input.clone()))
            })
            .collect();
        referenced.extend(self.pending.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned());
        // The chart cache: charts no bundle resolves to go the same way.
        let charts_referenced: HashSet<String> = self
            .status_tx
            .borrow()
            .values()
            .flat_map(|s| s.charts.iter().map(|c| c.digest.clone()))
            .collect();
        let charts = self.chart_ctx.charts.clone();
        match tokio::task::spawn_blocking(move || charts.gc(&charts_referenced, retention)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => info!(deleted = n, "garbage-collected unreferenced charts"),
            Ok(Err(error)) => warn!(%error, "chart cache gc failed"),
            Err(error) => warn!(%error, "chart cache gc panicked"),
        }
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.gc(&referenced, retention)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => info!(deleted = n, "garbage-collected unreferenced artifacts"),
            Ok(Err(error)) => warn!(%error, "artifact gc failed"),
            Err(error) => warn!(%error, "artifact gc panicked"),
        }
    }
}

pub(crate) fn unpend(pending: &Pending, digest: &str) {
    let mut p = pending.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(n) = p.get_mut(digest) {
        *n -= 1;
        if *n == 0 {
            p.remove(digest);
        }
    }
}

fn describe_ref(spec: &RefSpec) -> String {
    match spec {
        RefSpec::Branch(b) => format!("branch {b}"),
        RefSpec::Tag(t) => format!("tag {t}"),
        RefSpec::Semver(r) => format!("semver {r}"),
        RefSpec::Name(n) => format!("ref {n}"),
        RefSpec::Commit { commit, branch: Some(b) } => format!("commit {commit} on {b}"),
        RefSpec::Commit { commit, branch: None } => format!("commit {commit}"),
    }
}

fn initial_status(name: &str, spec: &GitSourceSpec) -> SourceStatus {
    SourceStatus {
        name: name.into(),
        url: redact_url(&spec.url),
        reference: describe_ref(&spec.git_ref.resolve()),
        revision: None,
        phase: if spec.suspend { Phase::Suspended } else { Phase::Pending },
        conditions: Vec::new(),
        last_fetch_unix_ms: 0,
        failures: 0,
        suspended: spec.suspend,
        interval: spec.interval.get(),
        ..Default::default()
    }
}

/// What a build depends on besides the commit.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BuildKey {
    commit: String,
    path: String,
    ignore: Option<String>,
    helm: Option<Box<HelmSpec>>,
    dep_repositories: Vec<crate::chartdeps::KnownRepository>,
}

struct Worker {
    id: u64,
    name: String,
    spec: GitSourceSpec,
    cfg: Arc<SourcesConfig>,
    cache: GitCache,
    work_dir: PathBuf,
    store: ArtifactStore,
    pending: Pending,
    semaphore: Arc<Semaphore>,
    events: mpsc::Sender<Report>,
    bundles: Vec<BundleRef>,
    suspended: bool,
    status: SourceStatus,
    last: Option<Resolved>,
    built: HashMap<String, BuildKey>,
    /// The render key and artifact of each bundle's last successful render.
    rendered: HashMap<String, (String, BuiltArtifact)>,
    stats: Arc<RenderStats>,
}

enum Wake {
    Poll,
    Reconcile,
    Rebuild,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Trigger>, token: CancellationToken) {
        let mut next = Instant::now();
        self.publish_suspension().await;
        loop {
            let wake = tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep_until(next), if !self.suspended => Wake::Poll,
                t = rx.recv() => match t {
                    None => return,
                    Some(Trigger::Reconcile) => Wake::Reconcile,
                    Some(Trigger::Bundles(b)) => {
                        self.bundles = b;
                        self.built.retain(|k, _| self.bundles.iter().any(|b| &b.name == k));
                        self.rendered.retain(|k, _| self.bundles.iter().any(|b| &b.name == k));
                        Wake::Rebuild
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
            match wake {
                Wake::Rebuild => {
                    if !self.suspended {
                        self.build_changed(false, &token).await;
                    }
                }
                Wake::Poll | Wake::Reconcile => {
                    if self.suspended {
                        continue;
                    }
                    let force = matches!(wake, Wake::Reconcile);
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
                                self.cfg.backoff_base,
                                self.cfg.backoff_max,
                            )
                        };
                    if ok {
                        self.build_changed(force, &token).await;
                    }
                }
            }
        }
    }

    async fn report(&self, event: Event) {
        let _ = self.events.send(Report { source: self.name.clone(), worker: self.id, event }).await;
    }

    async fn publish(&self) {
        self.report(Event::Status(Box::new(self.status.clone()))).await;
    }

    async fn publish_suspension(&mut self) {
        self.status.suspended = self.suspended;
        if self.suspended {
            self.status.phase = Phase::Suspended;
        } else if self.status.phase == Phase::Suspended {
            self.status.phase = if self.last.is_some() { Phase::Ready } else { Phase::Pending };
        }
        self.publish().await;
    }

    /// Fetch; true on success.
    async fn poll(&mut self, force: bool) -> bool {
        let first = self.last.is_none() || self.status.failures > 0;
        if first || force {
            self.status.phase = Phase::Reconciling;
            let msg = format!("fetching {}", self.status.reference);
            set_condition(
                &mut self.status.conditions,
                Condition::new(RECONCILING, true, "Progressing", msg),
                now_ms(),
            );
            self.publish().await;
        }
        let started = std::time::Instant::now();
        let result = self.fetch().await;
        let now = now_ms();
        self.status.last_fetch_unix_ms = now;
        set_condition(&mut self.status.conditions, Condition::new(RECONCILING, false, "Idle", ""), now);
        match result {
            Ok(r) => {
                let changed = self.last.as_ref().map(|l| &l.commit) != Some(&r.commit);
                if changed {
                    info!(revision = %r.revision(), elapsed_ms = started.elapsed().as_millis() as u64, "new revision");
                } else {
                    debug!(revision = %r.revision(), elapsed_ms = started.elapsed().as_millis() as u64, "unchanged");
                }
                self.status.revision = Some(r.revision());
                self.status.failures = 0;
                self.status.phase = Phase::Ready;
                let msg = format!("revision {}", r.revision());
                set_condition(
                    &mut self.status.conditions,
                    Condition::new(READY, true, "Succeeded", msg),
                    now,
                );
                self.status.conditions.retain(|c| c.type_ != STALLED);
                self.last = Some(r);
                self.publish().await;
                true
            }
            Err(error) => {
                self.status.failures += 1;
                self.status.phase = Phase::Stalled;
                let reason = error.reason();
                let message = error.to_string();
                warn!(%error, failures = self.status.failures, "fetch failed");
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

    async fn fetch(&self) -> Result<Resolved> {
        let permit = self.semaphore.clone().acquire_owned().await.map_err(|_| Error::Shutdown)?;
        let interrupt = Arc::new(AtomicBool::new(false));
        let (cache, spec, work_dir) = (self.cache.clone(), self.spec.clone(), self.work_dir.clone());
        let last = self.last.as_ref().map(|l| l.commit.clone());
        let flag = interrupt.clone();
        let timeout = self.spec.timeout.get();
        let task = tokio::task::spawn_blocking(move || {
            // The permit is held until the blocking work really ends, even
            // after a timeout gave up on it.
            let _permit = permit;
            let (opts, secrets) = load_fetch_options(&spec, &work_dir, timeout)?;
            let resolved =
                cache.fetch(&spec.url, &spec.git_ref.resolve(), &opts, &secrets, last.as_deref(), &flag)?;
            if let Some(v) = &spec.verify {
                crate::verify::verify_commit(&cache, &resolved.commit, v)?;
            }
            Ok(resolved)
        });
        match tokio::time::timeout(timeout, task).await {
            Ok(Ok(r)) => r,
            Ok(Err(join)) => Err(Error::Fetch {
                url: redact_url(&self.spec.url),
                message: format!("fetch task failed: {join}"),
            }),
            Err(_) => {
                interrupt.store(true, Ordering::Relaxed);
                Err(Error::Timeout { what: format!("fetch {}", redact_url(&self.spec.url)), after: timeout })
            }
        }
    }

    /// Build the bundles whose commit, path or ignore rules changed (all of
    /// them when forced, i.e. on a reconcile or a webhook). A bundle whose
    /// render key (see [`crate::deps`]) is the one of its last successful
    /// render keeps that artifact without rendering: it is reported again at
    /// the new revision, with the same digest. Rendering is deterministic, so
    /// forcing only re-renders bundles whose last build failed or whose key
    /// changed.
    async fn build_changed(&mut self, force: bool, token: &CancellationToken) {
        let Some(last) = self.last.clone() else { return };
        let key_of = |b: &BundleRef| BuildKey {
            commit: last.commit.clone(),
            path: b.path.clone(),
            ignore: self.spec.ignore.clone(),
            helm: b.helm.clone(),
            dep_repositories: b.dep_repositories.clone(),
        };
        let todo: Vec<BundleRef> = self
            .bundles
            .iter()
            .filter(|b| force || self.built.get(&b.name) != Some(&key_of(b)))
            .cloned()
            .collect();
        if todo.is_empty() {
            return;
        }
        let render_keys = tokio::select! {
            _ = token.cancelled() => return,
            k = self.render_keys(&todo, &last) => k,
        };
        for (b, rkey) in todo.into_iter().zip(render_keys) {
            let key = key_of(&b);
            let kept = match self.rendered.get(&b.name) {
                Some((prev, art)) if crate::deps::can_keep(rkey.as_deref(), Some(prev)) => {
                    self.keep(art, &last)
                }
                _ => None,
            };
            let result = match kept {
                Some(a) => {
                    self.stats.count_reuse();
                    debug!(bundle = %b.name, digest = %a.digest, "inputs unchanged: artifact kept without rendering");
                    Ok(a)
                }
                None => {
                    self.stats.count_render();
                    let result = tokio::select! {
                        _ = token.cancelled() => return,
                        r = self.build(&b, &last) => r,
                    };
                    match (&result, crate::deps::remember(rkey, result.is_ok())) {
                        (Ok(a), Some(k)) => {
                            self.rendered.insert(b.name.clone(), (k, a.clone()));
                        }
                        _ => {
                            self.rendered.remove(&b.name);
                        }
                    }
                    result.map_err(|e| {
                        warn!(bundle = %b.name, error = %e, "build failed");
                        BuildError {
                            revision: Some(last.revision()),
                            reason: e.reason().into(),
                            message: e.to_string(),
                            at_unix_ms: now_ms(),
                        }
                    })
                }
            };
            if let Ok(a) = &result {
                info!(bundle = %b.name, digest = %a.digest, size = a.size, files = a.files, "built artifact");
            }
            self.built.insert(b.name.clone(), key);
            self.report(Event::Built { bundle: b.name.clone(), result }).await;
        }
    }

    /// The render key of each bundle at `resolved`, read in one blocking
    /// task; `None` where it could not be computed.
    async fn render_keys(&self, bundles: &[BundleRef], resolved: &Resolved) -> Vec<Option<String>> {
        let none = vec![None; bundles.len()];
        let Ok(permit) = self.semaphore.clone().acquire_owned().await else { return none };
        let (cache, stats, commit) = (self.cache.clone(), self.stats.clone(), resolved.commit.clone());
        let opts = self.render_options();
        // A Helm bundle reads its chart, values files and hub-side
        // `valuesFrom` files, none of which `deps` resolves: it gets no render
        // key (none is computed), so it is rendered whenever its build is due.
        // For the others, the whole bundle reference is part of the key: any
        // spec field that selects what is rendered changes it.
        let keyed: Vec<usize> = (0..bundles.len()).filter(|&i| bundles[i].helm.is_none()).collect();
        let pairs: Vec<(String, String, String)> = keyed
            .iter()
            .map(|&i| (bundles[i].name.clone(), bundles[i].path.clone(), format!("{:?}", bundles[i])))
            .collect();
        let n = pairs.len();
        let keys = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            crate::deps::keys_at(&cache, &commit, &pairs, &opts, &stats)
        })
        .await
        .unwrap_or_else(|_| vec![None; n]);
        let mut out = none;
        for (i, k) in keyed.into_iter().zip(keys) {
            out[i] = k;
        }
        out
    }

    /// The last good artifact, re-reported at `resolved`, if it is still in
    /// the store (referenced as pending until the supervisor records it).
    fn keep(&self, art: &BuiltArtifact, resolved: &Resolved) -> Option<BuiltArtifact> {
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()).entry(art.digest.clone()).or_default() += 1;
        if self.store.path(&art.digest).is_none() {
            unpend(&self.pending, &art.digest);
            return None;
        }
        Some(BuiltArtifact { revision: resolved.revision(), ..art.clone() })
    }

    fn render_options(&self) -> RenderOptions {
        RenderOptions {
            limits: self.cfg.limits,
            ignore: self.spec.ignore.clone(),
            kustomize: self.cfg.kustomize.clone(),
            timeout: self.spec.timeout.get(),
        }
    }

    async fn build(&self, b: &BundleRef, resolved: &Resolved) -> Result<BuiltArtifact> {
        let permit = self.semaphore.clone().acquire_owned().await.map_err(|_| Error::Shutdown)?;
        let cache = self.cache.clone();
        let store = self.store.clone();
        let pending = self.pending.clone();
        let opts = self.render_options();
        let (bundle, path, source) = (b.name.clone(), b.path.clone(), self.name.clone());
        let (helm, target_ns, helm_cfg) = (b.helm.clone(), b.target_namespace.clone(), self.cfg.helm.clone());
        let dep_repositories = b.dep_repositories.clone();
        // Chart dependencies fetched from repositories (crate::chartdeps).
        let deps_dir = self.cfg.data_dir.join("chart-deps");
        let (commit, revision) = (resolved.commit.clone(), resolved.revision());
        let url = redact_url(&self.spec.url);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let tree = cache.tree(&commit)?;
            let (a, helm) = match helm {
                // Helm's engine is looked for only when a Helm bundle builds.
                Some(spec) => {
                    let renderer = helm_cfg.renderer()?;
                    let caps = helm_cfg.default_capabilities(&spec);
                    let deps_cache = ArtifactStore::open(&deps_dir)?;
                    let r = crate::helmrender::render_helm_with_deps(
                        &tree,
                        &bundle,
                        &spec,
                        target_ns.as_deref(),
                        &revision,
                        &renderer,
                        &caps,
                        &[],
                        &opts.limits,
                        crate::chartdeps::Lookup {
                            cache: Some(&deps_cache),
                            repositories: &dep_repositories,
                        },
                    )?;
                    for w in &r.helm.warnings {
                        warn!(bundle = %bundle, "helm: {w}");
                    }
                    // The render input, for the hub's per-cluster renders.
                    if let Some(input) = &r.input {
                        store.put(input)?;
                    }
                    (r.artifact, Some(Box::new(r.helm)))
                }
                None => (render(&tree, &path, &revision, &opts)?.artifact, None),
            };
            // Referenced from now until the supervisor has recorded the build.
            *pending.lock().unwrap_or_else(|p| p.into_inner()).entry(a.digest.clone()).or_default() += 1;
            if let Err(e) = store.put(&a.bytes) {
                unpend(&pending, &a.digest);
                return Err(e);
            }
            Ok(BuiltArtifact {
                bundle,
                source,
                source_url: url,
                revision,
                digest: a.digest,
                size: a.size,
                files: a.files,
                built_unix_ms: now_ms(),
                helm,
            })
        })
        .await
        .map_err(|e| Error::Config(format!("build task failed: {e}")))?
    }
}

fn read_secret(path: &str, what: &str) -> Result<String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| Error::Credentials(format!("{what} {path}: {e}")))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

/// Read the source's credential files into fetch options. The ssh key is
/// copied to a private 0600 file in the source's work dir, because ssh
/// refuses keys readable by others (as mounted Secrets often are).
pub(crate) fn load_fetch_options(
    spec: &GitSourceSpec,
    work_dir: &Path,
    timeout: Duration,
) -> Result<(FetchOptions, Secrets)> {
    let mut opts =
        FetchOptions { connect_timeout: Some(timeout.min(Duration::from_secs(30))), ..Default::default() };
    let mut secrets = Secrets::default();
    if let Some(auth) = &spec.auth {
        if let Some(basic) = &auth.basic {
            let user = match (&basic.username, &basic.username_file) {
                (Some(u), _) => u.clone(),
                (None, Some(f)) => read_secret(f, "usernameFile")?,
                (None, None) => String::new(),
            };
            let password = read_secret(&basic.password_file, "passwordFile")?;
            secrets.add(&password);
            opts.basic = Some((user, password));
        }
        if let Some(f) = &auth.bearer_token_file {
            let token = read_secret(f, "bearerTokenFile")?;
            secrets.add(&token);
            opts.bearer = Some(token);
            opts.allow_insecure_loopback = auth.allow_insecure_loopback;
        }
        if let Some(ssh) = &auth.ssh {
            let key = std::fs::read(&ssh.private_key_file)
                .map_err(|e| Error::Credentials(format!("privateKeyFile {}: {e}", ssh.private_key_file)))?;
            let dir = work_dir.join("ssh");
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            let copy = dir.join("id");
            if std::fs::read(&copy).ok().as_deref() != Some(key.as_slice()) {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let tmp = dir.join("id.tmp");
                let _ = std::fs::remove_file(&tmp);
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(|e| Error::io(&tmp, e))?;
                f.write_all(&key).map_err(|e| Error::io(&tmp, e))?;
                std::fs::rename(&tmp, &copy).map_err(|e| Error::io(&copy, e))?;
            }
            if !Path::new(&ssh.known_hosts_file).is_file() {
                return Err(Error::Credentials(format!(
                    "knownHostsFile {}: not a file",
                    ssh.known_hosts_file
                )));
            }
            opts.ssh = Some(SshKeys { key: copy, known_hosts: PathBuf::from(&ssh.known_hosts_file) });
        }
    }
    if let Some(ca) = &spec.ca_file {
        opts.ca_pem = Some(std::fs::read(ca).map_err(|e| Error::Credentials(format!("caFile {ca}: {e}")))?);
    }
    // Credentials embedded in the URL are secrets too.
    if let Some((_, rest)) = spec.url.split_once("://")
        && let Some((userinfo, _)) = rest.split('/').next().unwrap_or_default().rsplit_once('@')
        && let Some((_, pw)) = userinfo.split_once(':')
    {
        secrets.add(pw);
    }
    Ok((opts, secrets))
}
