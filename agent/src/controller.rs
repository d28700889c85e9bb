//! The bundle controller: one task owning every bundle's state. It takes the
//! hub's desired state (snapshot, updates), drift signals and job results;
//! decides per bundle what to do (verify + apply, remove, correct drift,
//! re-check health, wait for dependencies, leave suspended bundles alone);
//! runs that work as bounded concurrent jobs; persists what it must to the
//! local store; and writes statuses and events to the outbox. It works the
//! same whether the hub is connected or not.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use convoy_artifact::{Limits, TrustedKeys};
use convoy_core::status::{Condition, ConditionStatus, Phase, Severity, set_condition};
use convoy_proto::v1::agent_client::AgentClient;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::Instrument;

use crate::bundle::{self, AppliedRevision, Decision, Deployment, DriftMode};
use crate::cache::ArtifactCache;
use crate::config::Tuning;
use crate::drift::{DriftSignal, Watchers};
use crate::engine::{Action, ApplyOptions, ApplyReport, DriftOutcome, Engine, Plan, live_matches};
use crate::health::{self, HealthStatus, ObjectHealth};
use crate::inventory::{Entry, Inventory};
use crate::metrics::{BundleLabel, BundleResult, Metrics};
use crate::objects::{MetaKey, ObjKey, Stage};
use crate::outbox::{OutboxWriter, Published};
use crate::reconcile::{self, BundleState, Effect, Input, Outcome};
use crate::resource::ResourceInfo;
use crate::status::{self, BundleStatus, Event, ObjectCounts};
use crate::store::{BundleRecord, Store};
use crate::{Error, Result};
use convoy_core::backoff::Backoff;
use convoy_core::clock::now_ms;

/// Input from the hub session.
#[derive(Debug)]
pub enum HubInput {
    /// The complete desired state.
    Snapshot(Vec<Deployment>),
    /// A change.
    Update {
        /// Added or changed.
        upserts: Vec<Deployment>,
        /// Removed.
        removed: Vec<String>,
    },
    /// Run a Helm bundle's test hooks (`convoy test`, crate::helmtest): a
    /// command, answered by one event.
    RunTests(crate::helmtest::TestRequest),
}

/// What the jobs share.
pub struct Ctx {
    /// The apply engine.
    pub engine: Engine,
    /// The artifact cache.
    pub cache: ArtifactCache,
    /// Trusted signing keys.
    pub trusted: TrustedKeys,
    /// The current hub channel, when connected.
    pub hub: watch::Receiver<Option<Channel>>,
    /// Timers and bounds.
    pub tuning: Tuning,
    /// Drift mode when the bundle does not say.
    pub default_drift: DriftMode,
    /// Unpack limits.
    pub limits: Limits,
    /// Shutdown.
    pub shutdown: CancellationToken,
    /// age identities for SOPS files (crate::sops).
    pub sops_keys: Arc<convoy_sops::AgeKeys>,
}

/// Which revision a bundle's inventory in the cluster records (kept to
/// write the inventory again after a drift correction).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct InvHeader {
    revision: String,
    generation: u64,
    digest: String,
}

/// An applied object the controller tracks for drift and health.
#[derive(Debug, Clone)]
struct Tracked {
    entry: Entry,
    meta_keys: Vec<MetaKey>,
    resource: ResourceInfo,
    /// Deleted by the cluster once finished (health::Target).
    gone_when_finished: bool,
}

/// One bundle: the pure state machine's state and what the loop keeps
/// around it (tracked objects, status, backoff, drift bookkeeping).
#[derive(Debug)]
struct Slot {
    /// The reconcile state machine's state (desired, applied, refused, timers).
    b: BundleState,
    /// Tracked objects; `None` until restored from the cluster inventory.
    tracked: Option<HashMap<ObjKey, Tracked>>,
    /// The applied inventory's header, for saves after drift.
    inv_header: InvHeader,
    /// The status as it is now.
    state: BundleStatus,
    /// The last status handed to the outbox (without its timestamp).
    queued: Option<BundleStatus>,
    /// Retry delays after failures.
    backoff: Backoff,
    /// Objects to check for drift.
    drift_dirty: BTreeSet<ObjKey>,
    /// Drift reported in detect-only mode, by object (reported once per change).
    detected: BTreeMap<ObjKey, Vec<String>>,
    /// The applied revision's planned objects (compact JSON), kept for drift
    /// correction and re-applies without unpacking and parsing again.
    plan: Option<Arc<Plan>>,
    /// Test runs asked for (`convoy test`), started one at a time when the
    /// bundle is idle.
    tests: std::collections::VecDeque<crate::helmtest::TestRequest>,
}

impl Slot {
    fn new(name: &str, tuning: &Tuning) -> Self {
        Slot {
            b: BundleState::new(),
            tracked: None,
            inv_header: Default::default(),
            state: BundleStatus { bundle: name.to_string(), ..Default::default() },
            queued: None,
            backoff: Backoff::new(tuning.retry_base, tuning.retry_cap),
            drift_dirty: BTreeSet::new(),
            detected: BTreeMap::new(),
            plan: None,
            tests: Default::default(),
        }
    }

    fn drift_mode(&self, default: DriftMode) -> DriftMode {
        self.b
            .desired
            .as_ref()
            .and_then(|d| d.options.drift)
            .or_else(|| self.b.applied.as_ref().and_then(|a| a.options.drift))
            .unwrap_or(default)
    }

    fn suspended(&self) -> bool {
        self.b.desired.as_ref().is_some_and(|d| d.options.suspend)
    }
}

/// The result of restoring a bundle after a restart.
struct Restored {
    plan: Arc<Plan>,
    tracked: HashMap<ObjKey, Tracked>,
    header: InvHeader,
    health: Vec<ObjectHealth>,
    /// Objects whose live metadata no longer matches the inventory.
    dirty: Vec<ObjKey>,
}

/// The result of applying a deployment.
struct Applied {
    plan: Arc<Plan>,
    revision: AppliedRevision,
    report: ApplyReport,
    tracked: HashMap<ObjKey, Tracked>,
    health: Vec<ObjectHealth>,
    waited: bool,
    ready_ms: u64,
}

enum Failure {
    /// Verification or manifests: nothing applied; not retried until the deployment changes.
    Refused(Error),
    /// The apply itself failed; `true` when some objects were written
    /// before it stopped, and the stage that failed when one did. Retried
    /// with backoff.
    Failed(Error, bool, Option<Stage>),
}

enum JobOut {
    Restored(String, Result<Restored>),
    Reconciled(String, Deployment, Box<Result<Applied, Failure>>),
    Removed(String, ApplyReport),
    Drift(String, Vec<(ObjKey, Result<DriftOutcome>)>, Result<()>, Option<Arc<Plan>>),
    Health(String, Result<Vec<ObjectHealth>>),
    Tested(String, crate::helmtest::TestRequest, u64, crate::helmtest::Outcome),
}

/// The controller task.
pub struct Controller {
    ctx: Arc<Ctx>,
    store: Store,
    metrics: Arc<Metrics>,
    outbox: OutboxWriter,
    /// Statuses the outbox writer made durable.
    published_rx: mpsc::UnboundedReceiver<Published>,
    slots: BTreeMap<String, Slot>,
    owners: HashMap<ObjKey, String>,
    jobs: JoinSet<JobOut>,
    watchers: Watchers,
    hub_rx: mpsc::Receiver<HubInput>,
    drift_rx: mpsc::Receiver<DriftSignal>,
    /// Bundles whose applied state is not restored yet (readiness waits for them).
    restore_pending: HashSet<String>,
    /// When to give freed memory back to the OS (after large work settles).
    trim_due: Option<Instant>,
    /// Bundles to delete from the store (left without anything applied).
    forget: Vec<String>,
    /// The test runs the hub gave, by request id: a pending run is sent
    /// again after a reconnect, and runs once (crate::helmtest::Seen).
    tests_seen: crate::helmtest::Seen,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Store(format!("blocking task: {e}")))?
}

impl Controller {
    /// A controller over the persisted bundles.
    pub fn new(
        ctx: Arc<Ctx>,
        store: Store,
        metrics: Arc<Metrics>,
        outbox: (OutboxWriter, mpsc::UnboundedReceiver<Published>),
        hub_rx: mpsc::Receiver<HubInput>,
        records: BTreeMap<String, BundleRecord>,
    ) -> Self {
        let (outbox, published_rx) = outbox;
        let (drift_tx, drift_rx) = mpsc::channel(1024);
        let watchers = Watchers::new(ctx.engine.client().clone(), drift_tx, ctx.shutdown.clone());
        let mut slots = BTreeMap::new();
        for (name, rec) in records {
            let mut s = Slot::new(&name, &ctx.tuning);
            s.b.desired = rec.desired;
            s.b.applied = rec.applied;
            if let Some(a) = &s.b.applied {
                s.state.applied_generation = a.generation;
                s.state.applied_revision = a.revision.clone();
                s.state.generation = a.generation;
                s.state.revision = a.revision.clone();
                s.state.digest = a.digest.clone();
            }
            slots.insert(name, s);
        }
        Controller {
            ctx,
            store,
            metrics,
            outbox,
            published_rx,
            slots,
            owners: HashMap::new(),
            jobs: JoinSet::new(),
            watchers,
            hub_rx,
            drift_rx,
            restore_pending: HashSet::new(),
            trim_due: None,
            forget: Vec::new(),
            tests_seen: crate::helmtest::Seen::new(crate::helmtest::SEEN_KEPT),
        }
    }

    /// Run until shutdown; in-flight jobs are awaited (they observe the
    /// shutdown token themselves).
    pub async fn run(mut self) -> Result<()> {
        self.restore_pending =
            self.slots.iter().filter(|(_, s)| s.b.applied.is_some()).map(|(n, _)| n.clone()).collect();
        self.metrics.set_ready(self.restore_pending.is_empty());
        self.ctx.engine.prefetch_discovery().await;
        self.schedule();
        loop {
            let wake = self.next_wake();
            tokio::select! {
                _ = self.ctx.shutdown.cancelled() => break,
                Some(input) = self.hub_rx.recv() => self.on_hub(input).await,
                Some(sig) = self.drift_rx.recv() => self.on_drift(sig),
                Some(p) = self.published_rx.recv() => self.on_published(p),
                Some(done) = self.jobs.join_next(), if !self.jobs.is_empty() => match done {
                    Ok(out) => self.on_job(out).await,
                    Err(e) => tracing::error!(error = %e, "a bundle job panicked"),
                },
                _ = sleep_until(wake) => {}
            }
            if self.trim_due.is_some_and(|t| t <= Instant::now()) && self.jobs.is_empty() {
                self.trim_due = None;
                // Large applies and relists leave freed memory in the allocator: give it back.
                tokio::task::spawn_blocking(crate::mem::trim);
            }
            self.schedule();
            self.forget_dropped().await;
        }
        tracing::info!(jobs = self.jobs.len(), "controller stopping");
        while let Some(done) = self.jobs.join_next().await {
            if let Ok(out) = done {
                self.on_job(out).await;
            }
        }
        self.watchers.stop().await;
        Ok(())
    }

    fn next_wake(&self) -> Option<Instant> {
        self.slots
            .values()
            .filter(|s| !s.b.busy)
            .flat_map(|s| [s.b.retry_at, s.b.drift_due, s.b.health_due])
            .flatten()
            .chain(self.trim_due)
            .min()
    }

    // ------------------------------------------------------------------
    // Inputs
    // ------------------------------------------------------------------

    async fn on_hub(&mut self, input: HubInput) {
        let (upserts, removed, snapshot) = match input {
            HubInput::Snapshot(all) => {
                let names: HashSet<String> = all.iter().map(|d| d.name.clone()).collect();
                let removed = self.slots.keys().filter(|n| !names.contains(*n)).cloned().collect();
                (all, removed, true)
            }
            HubInput::Update { upserts, removed } => (upserts, removed, false),
            HubInput::RunTests(req) => {
                if !self.tests_seen.first(&req.request_id) {
                    tracing::debug!(bundle = %req.bundle, request = %req.request_id, "test run sent again by the hub; it ran or runs once");
                    return;
                }
                match self.slots.get_mut(&req.bundle) {
                    // Started by `schedule` once the bundle is idle.
                    Some(slot) => slot.tests.push_back(req),
                    None => {
                        let ev = crate::helmtest::event(
                            &req,
                            0,
                            &crate::helmtest::Outcome::Refused(format!(
                                "bundle {} is not deployed to this cluster",
                                req.bundle
                            )),
                            now_ms(),
                        );
                        self.emit(ev);
                    }
                }
                return;
            }
        };
        tracing::debug!(snapshot, upserts = upserts.len(), removed = removed.len(), "desired state");
        let mut changed: Vec<String> = Vec::new();
        for d in upserts {
            let name = d.name.clone();
            if convoy_core::identity::validate_name(&name).is_err() {
                tracing::warn!(bundle = %name, "ignoring a deployment with an invalid bundle name");
                continue;
            }
            let tuning = self.ctx.tuning.clone();
            let slot = self.slots.entry(name.clone()).or_insert_with(|| Slot::new(&name, &tuning));
            let effects = reconcile::step(&mut slot.b, Input::Desired(Some(d)));
            if effects.contains(&Effect::Persist) {
                // A new deployment starts its retries over.
                slot.backoff.reset();
                changed.push(name);
            }
        }
        for name in removed {
            if let Some(slot) = self.slots.get_mut(&name)
                && reconcile::step(&mut slot.b, Input::Desired(None)).contains(&Effect::Persist)
            {
                changed.push(name);
            }
        }
        for name in changed {
            self.persist(&name).await;
        }
    }

    fn on_drift(&mut self, sig: DriftSignal) {
        let now = Instant::now();
        let debounce = self.ctx.tuning.drift_debounce;
        let mark = |slots: &mut BTreeMap<String, Slot>, owner: &str, key: ObjKey, dirty: bool| {
            if let Some(slot) = slots.get_mut(owner) {
                if dirty {
                    slot.drift_dirty.insert(key);
                    slot.b.drift_due.get_or_insert(now + debounce);
                } else {
                    slot.drift_dirty.remove(&key);
                }
            }
        };
        match sig {
            DriftSignal::Seen { key, meta } => {
                let Some(owner) = self.owners.get(&key).cloned() else { return };
                let Some(t) =
                    self.slots.get(&owner).and_then(|s| s.tracked.as_ref()).and_then(|t| t.get(&key))
                else {
                    return;
                };
                let ok = live_matches(&t.entry, &meta, &t.meta_keys);
                mark(&mut self.slots, &owner, key, !ok);
            }
            DriftSignal::Gone { key } => {
                if let Some(owner) = self.owners.get(&key).cloned() {
                    mark(&mut self.slots, &owner, key, true);
                }
            }
            DriftSignal::Relisted { group, kind, present } => {
                self.trim_due = Some(now + Duration::from_secs(1));
                let missing: Vec<(ObjKey, String)> = self
                    .owners
                    .iter()
                    .filter(|(k, _)| k.group == group && k.kind == kind && !present.contains(*k))
                    .map(|(k, o)| (k.clone(), o.clone()))
                    .collect();
                for (key, owner) in missing {
                    mark(&mut self.slots, &owner, key, true);
                }
            }
        }
    }

    // ------------------------------------------------------------------
    // Scheduling
    // ------------------------------------------------------------------

    fn deps_ready(&self, d: &Deployment) -> std::result::Result<(), String> {
        let mut waiting = Vec::new();
        for dep in &d.options.depends_on {
            match self.slots.get(dep) {
                Some(s)
                    if s.state.phase == Phase::Ready
                        && s.b.applied.as_ref().map(|a| a.generation)
                            == s.b.desired.as_ref().map(|d| d.generation) => {}
                Some(s) => waiting.push(format!("{dep} ({})", s.state.phase)),
                None => waiting.push(format!("{dep} (not on this cluster)")),
            }
        }
        if waiting.is_empty() { Ok(()) } else { Err(waiting.join(", ")) }
    }

    /// Step every idle bundle's state machine with a timer tick and run the
    /// effects, within the bound on concurrent jobs.
    fn schedule(&mut self) {
        let now = Instant::now();
        let names: Vec<String> = self.slots.keys().cloned().collect();
        let mut drop_slots = Vec::new();
        for name in names {
            if self.jobs.len() >= self.ctx.tuning.bundle_workers.max(1) {
                break;
            }
            if self.ctx.shutdown.is_cancelled() {
                return;
            }
            let deps = match self.slots.get(&name).and_then(|s| s.b.desired.as_ref()) {
                Some(d) => self.deps_ready(d),
                None => Ok(()),
            };
            if self.slots.get(&name).is_some_and(|s| !s.b.busy && !s.tests.is_empty()) {
                self.start_tests(&name);
                continue;
            }
            let Some(slot) = self.slots.get_mut(&name) else { continue };
            slot.b.restored = slot.tracked.is_some();
            slot.b.phase = slot.state.phase;
            slot.b.status_generation = slot.state.generation;
            let desired = slot.b.desired.clone();
            for effect in reconcile::step(&mut slot.b, Input::Tick { now, deps: deps.clone() }) {
                match (effect, &desired) {
                    (Effect::Refuse { reason, message }, Some(d)) => {
                        self.refuse(&name, d, Error::verification(reason, message))
                    }
                    (Effect::ReportPending(waiting), Some(d)) => self.set_pending(&name, d, &waiting),
                    (effect, _) => self.run_effect(&name, effect, &mut drop_slots),
                }
            }
        }
        for name in drop_slots {
            self.slots.remove(&name);
            self.forget.push(name);
        }
        self.update_watches();
    }

    fn run_effect(&mut self, name: &str, effect: Effect, drop_slots: &mut Vec<String>) {
        match effect {
            Effect::Forget => drop_slots.push(name.to_string()),
            Effect::Remove => self.start_remove(name),
            Effect::ReportSuspended => self.set_suspended(name),
            Effect::Restore => self.start_restore(name),
            Effect::Apply(d) => self.start_reconcile(name, d),
            Effect::CorrectDrift => self.start_drift(name),
            Effect::CheckHealth => self.start_health(name),
            // Refuse and Pending carry the deployment (handled by the caller);
            // Persist comes only from desired-state inputs.
            Effect::Refuse { .. } | Effect::ReportPending(_) | Effect::Persist => {}
        }
    }

    /// Delete the records of bundles that left without anything applied.
    async fn forget_dropped(&mut self) {
        for name in std::mem::take(&mut self.forget) {
            let store = self.store.clone();
            let n = name.clone();
            if let Err(error) = blocking(move || store.put_bundle(&n, None)).await {
                tracing::warn!(%error, bundle = %name, "cannot forget bundle");
            }
        }
    }

    fn update_watches(&mut self) {
        let mut wanted = HashSet::new();
        for s in self.slots.values() {
            if s.suspended() {
                continue;
            }
            for t in s.tracked.iter().flat_map(|m| m.values()) {
                wanted.insert(t.resource.clone());
            }
        }
        self.watchers.ensure(&wanted);
    }

    fn set_owners(&mut self, name: &str) {
        self.owners.retain(|_, o| o != name);
        if let Some(t) = self.slots.get(name).and_then(|s| s.tracked.as_ref()) {
            for k in t.keys() {
                self.owners.insert(k.clone(), name.to_string());
            }
        }
    }

    // ------------------------------------------------------------------
    // Jobs
    // ------------------------------------------------------------------

    fn spawn(
        &mut self,
        name: &str,
        what: &'static str,
        fut: impl std::future::Future<Output = JobOut> + Send + 'static,
    ) {
        if let Some(s) = self.slots.get_mut(name) {
            s.b.busy = true;
        }
        let span = tracing::info_span!("bundle-job", bundle = %name, job = what);
        self.jobs.spawn(fut.instrument(span));
    }

    /// Start the bundle's next queued test run, or refuse it with its event
    /// (crate::helmtest::decide).
    fn start_tests(&mut self, name: &str) {
        let Some(slot) = self.slots.get_mut(name) else { return };
        let Some(req) = slot.tests.pop_front() else { return };
        let applied = slot.b.applied.clone();
        let start =
            crate::helmtest::decide(&req, slot.b.desired.is_some(), applied.as_ref().map(|a| a.generation));
        let (crate::helmtest::Start::Run(generation), Some(applied)) = (&start, applied) else {
            let why = match start {
                crate::helmtest::Start::Refuse(why) => why,
                crate::helmtest::Start::Run(_) => unreachable!("Run comes with an applied revision"),
            };
            let ev = crate::helmtest::event(&req, 0, &crate::helmtest::Outcome::Refused(why), now_ms());
            self.emit(ev);
            return;
        };
        let generation = *generation;
        let ctx = self.ctx.clone();
        let n = name.to_string();
        tracing::info!(bundle = %name, generation, request = %req.request_id, "running helm tests");
        self.spawn(name, "test", async move {
            let outcome = run_tests(&ctx, &n, &applied, &req).await;
            JobOut::Tested(n, req, generation, outcome)
        });
    }

    fn start_restore(&mut self, name: &str) {
        let slot = &self.slots[name];
        let Some(applied) = slot.b.applied.clone() else { return };
        let ctx = self.ctx.clone();
        let n = name.to_string();
        self.spawn(name, "restore", async move {
            let r = restore(&ctx, &n, &applied).await;
            JobOut::Restored(n, r)
        });
    }

    fn start_reconcile(&mut self, name: &str, d: Deployment) {
        let applied = self.slots[name].b.applied.clone();
        // Same artifact, generation and namespace as applied (e.g. only
        // `force` changed): reuse the plan. A new generation of the same
        // artifact (a rollback) is planned again, so a Helm release gets its
        // new revision (docs/helm.md, "Remediation").
        let cached = self.slots[name].plan.clone().filter(|p| {
            p.digest == d.digest
                && p.generation == d.generation
                && applied.as_ref().is_some_and(|a| a.options.target_namespace == d.options.target_namespace)
        });
        // Bundles still desired here: an inventory of a bundle that left the
        // cluster (being removed) claims nothing (see ownership::enforce).
        let desired: BTreeSet<String> =
            self.slots.iter().filter(|(_, s)| s.b.desired.is_some()).map(|(k, _)| k.clone()).collect();
        let ctx = self.ctx.clone();
        let n = name.to_string();
        let slot = self.slots.get_mut(name).expect("slot");
        slot.state.phase = Phase::Reconciling;
        slot.state.generation = d.generation;
        slot.state.digest = d.digest.clone();
        slot.state.message = format!("applying generation {}", d.generation);
        set_conditions(&mut slot.state, None);
        self.publish(name);
        self.spawn(name, "reconcile", async move {
            let r = reconcile(&ctx, &d, applied.as_ref(), cached, &desired).await;
            JobOut::Reconciled(n, d, Box::new(r))
        });
    }

    fn start_remove(&mut self, name: &str) {
        let prune = self.slots[name].b.applied.as_ref().is_some_and(|a| a.options.prune);
        let ctx = self.ctx.clone();
        let n = name.to_string();
        self.spawn(name, "remove", async move {
            let r = ctx.engine.remove(&n, prune, &ctx.shutdown).await;
            JobOut::Removed(n, r)
        });
    }

    fn start_drift(&mut self, name: &str) {
        let detect_only = self.slots[name].drift_mode(self.ctx.default_drift) == DriftMode::Detect;
        let slot = self.slots.get_mut(name).expect("slot");
        let keys: Vec<ObjKey> = std::mem::take(&mut slot.drift_dirty).into_iter().collect();
        slot.b.drift_due = None;
        let (Some(applied), Some(tracked)) = (slot.b.applied.clone(), slot.tracked.clone()) else { return };
        let keys: Vec<ObjKey> = keys.into_iter().filter(|k| tracked.contains_key(k)).collect();
        if keys.is_empty() {
            return;
        }
        let header = slot.inv_header.clone();
        let plan = slot.plan.clone();
        let ctx = self.ctx.clone();
        let n = name.to_string();
        self.spawn(name, "drift", async move {
            let (results, saved, plan) =
                drift_pass(&ctx, &n, &applied, plan, tracked, header, keys, detect_only).await;
            JobOut::Drift(n, results, saved, plan)
        });
    }

    fn start_health(&mut self, name: &str) {
        let slot = self.slots.get_mut(name).expect("slot");
        slot.b.health_due = None;
        let Some(tracked) = slot.tracked.as_ref() else { return };
        let targets: Vec<health::Target> = tracked
            .iter()
            .map(|(k, t)| health::Target {
                key: k.clone(),
                resource: t.resource.clone(),
                gone_when_finished: t.gone_when_finished,
            })
            .collect();
        let ctx = self.ctx.clone();
        let n = name.to_string();
        self.spawn(name, "health", async move {
            let r = health::check(ctx.engine.client(), &targets, ctx.engine.concurrency()).await;
            JobOut::Health(n, r)
        });
    }

    async fn on_job(&mut self, out: JobOut) {
        let name = match &out {
            JobOut::Restored(n, _)
            | JobOut::Reconciled(n, _, _)
            | JobOut::Removed(n, _)
            | JobOut::Drift(n, _, _, _)
            | JobOut::Health(n, _)
            | JobOut::Tested(n, _, _, _) => n.clone(),
        };
        if let Some(s) = self.slots.get_mut(&name) {
            s.b.busy = false;
        }
        let heavy = matches!(
            out,
            JobOut::Restored(..) | JobOut::Reconciled(..) | JobOut::Removed(..) | JobOut::Drift(..)
        );
        match out {
            JobOut::Restored(name, r) => self.on_restored(&name, r),
            JobOut::Reconciled(name, d, r) => self.on_reconciled(&name, d, *r).await,
            JobOut::Removed(name, report) => self.on_removed(&name, report).await,
            JobOut::Drift(name, results, saved, plan) => {
                if let (Some(p), Some(s)) = (plan, self.slots.get_mut(&name)) {
                    s.plan = Some(p);
                }
                self.on_drift_done(&name, results, saved)
            }
            JobOut::Health(name, r) => self.on_health(&name, r),
            JobOut::Tested(name, req, generation, outcome) => {
                let ev = crate::helmtest::event(&req, generation, &outcome, now_ms());
                tracing::info!(bundle = %name, request = %req.request_id, reason = %ev.reason, "{}", ev.message);
                self.emit(ev);
            }
        }
        self.publish(&name);
        if heavy {
            self.trim_due = Some(Instant::now() + Duration::from_secs(1));
        }
    }

    fn on_restored(&mut self, name: &str, r: Result<Restored>) {
        self.restore_pending.remove(name);
        if self.restore_pending.is_empty() {
            self.metrics.set_ready(true);
        }
        let recheck = self.ctx.tuning.health_recheck;
        let debounce = self.ctx.tuning.drift_debounce;
        let Some(slot) = self.slots.get_mut(name) else { return };
        match r {
            Ok(restored) => {
                slot.plan = Some(restored.plan);
                slot.tracked = Some(restored.tracked);
                slot.inv_header = restored.header;
                let gate = slot.b.applied.as_ref().is_some_and(|a| a.options.wait);
                apply_health(slot, &restored.health, recheck, gate);
                // What changed while the agent was away.
                if !restored.dirty.is_empty() {
                    slot.drift_dirty.extend(restored.dirty);
                    slot.b.drift_due = Some(Instant::now() + debounce);
                }
                tracing::info!(bundle = %name, objects = slot.tracked.as_ref().map_or(0, |t| t.len()), "restored applied bundle");
            }
            Err(e) => {
                // Keep the applied revision (replay protection needs it);
                // try again later, e.g. once the hub can send the artifact.
                let delay = slot.backoff.next_delay().max(Duration::from_secs(1));
                slot.b.retry_at = Some(Instant::now() + delay);
                slot.state.message =
                    format!("cannot restore the applied state: {e}; retrying in {:.0}s", delay.as_secs_f64());
                tracing::warn!(error = %e, bundle = %name, "cannot restore the applied bundle");
            }
        }
        self.set_owners(name);
    }

    async fn on_reconciled(&mut self, name: &str, d: Deployment, r: std::result::Result<Applied, Failure>) {
        match r {
            Ok(a) => self.on_applied(name, a).await,
            Err(Failure::Refused(e)) => {
                self.count_apply(name, "refused");
                self.refuse(name, &d, e);
            }
            Err(Failure::Failed(e, applied_some, stage)) => {
                self.on_apply_failed(name, &d, e, applied_some, stage)
            }
        }
    }

    fn count_apply(&self, name: &str, result: &str) {
        let result = BundleResult { bundle: name.to_string(), result: result.into() };
        self.metrics.applies.get_or_create(&result).inc();
    }

    /// An apply succeeded: metrics, then the state and status, then the
    /// events, then the durable record.
    async fn on_applied(&mut self, name: &str, a: Applied) {
        let c = a.report.counts();
        self.count_apply(name, "success");
        let result = BundleResult { bundle: name.to_string(), result: "success".into() };
        self.metrics.apply_duration.get_or_create(&result).observe(a.report.duration.as_secs_f64());
        for (action, n) in [
            ("created", c.created),
            ("configured", c.configured),
            ("unchanged", c.unchanged),
            ("pruned", c.pruned),
        ] {
            self.metrics.count_objects(name, action, n);
        }
        let tuning = self.ctx.tuning.clone();
        let Some(slot) = self.slots.get_mut(name) else { return };
        let new_generation = slot.b.applied.as_ref().map(|p| (p.generation, &p.digest))
            != Some((a.revision.generation, &a.revision.digest));
        fold_applied(slot, &a, &tuning);
        let mut events = applied_events(name, &a, new_generation);
        if slot.state.phase == Phase::NotReady && a.waited {
            let msg = slot.state.message.clone();
            events
                .push(status::event(Severity::Warning, "NotReady", name, msg).revision(&a.revision.revision));
        }
        for ev in events {
            self.emit(ev);
        }
        self.set_owners(name);
        self.persist(name).await;
    }

    /// An apply failed: retried with backoff; Stalled unless transient.
    fn on_apply_failed(
        &mut self,
        name: &str,
        d: &Deployment,
        e: Error,
        applied_some: bool,
        stage: Option<Stage>,
    ) {
        self.count_apply(name, "failure");
        let Some(slot) = self.slots.get_mut(name) else { return };
        let transient = e.is_transient();
        let delay = slot.backoff.next_delay().max(Duration::from_millis(100));
        reconcile::step(
            &mut slot.b,
            Input::ApplyResult(Outcome::Failed { retry_at: Instant::now() + delay }),
        );
        let st = &mut slot.state;
        st.phase = if transient { Phase::Reconciling } else { Phase::Stalled };
        st.message = failure_message(&e, stage, applied_some, delay);
        let reason = e.reason();
        set_conditions(st, Some(reason));
        let sev = if transient { Severity::Warning } else { Severity::Error };
        let msg = st.message.clone();
        tracing::warn!(bundle = %name, error = %e, transient, "apply failed");
        self.emit(
            status::event(sev, reason, name, msg)
                .detail("generation", d.generation)
                .detail("digest", &d.digest),
        );
    }

    async fn on_removed(&mut self, name: &str, report: ApplyReport) {
        let c = report.counts();
        if let Some(e) = report.error {
            let delay = self.slots.get_mut(name).map(|s| {
                let d = s.backoff.next_delay().max(Duration::from_millis(100));
                s.b.retry_at = Some(Instant::now() + d);
                d
            });
            tracing::warn!(bundle = %name, error = %e, "removing the bundle failed");
            self.emit(status::event(
                Severity::Warning,
                "RemoveFailed",
                name,
                format!("{e}; retrying in {delay:?}"),
            ));
            return;
        }
        let orphaned = report.objects.iter().filter(|o| o.action == Action::Orphaned).count();
        self.metrics.count_objects(name, "pruned", c.pruned);
        self.emit(
            status::event(
                Severity::Info,
                "Removed",
                name,
                format!("bundle left the cluster: {} objects pruned, {} orphaned", c.pruned, orphaned),
            )
            .detail("pruned", c.pruned)
            .detail("orphaned", orphaned),
        );
        self.metrics.bundle_ready.remove(&BundleLabel { bundle: name.to_string() });
        self.slots.remove(name);
        self.owners.retain(|_, o| o != name);
        let store = self.store.clone();
        let n = name.to_string();
        if let Err(error) = blocking(move || store.put_bundle(&n, None)).await {
            tracing::warn!(%error, bundle = %name, "cannot forget the bundle");
        }
        self.gc_cache();
    }

    fn on_drift_done(&mut self, name: &str, results: Vec<(ObjKey, Result<DriftOutcome>)>, saved: Result<()>) {
        if let Err(error) = saved {
            tracing::warn!(%error, bundle = %name, "inventory not saved after drift correction");
        }
        let mut events = Vec::new();
        let Some(slot) = self.slots.get_mut(name) else { return };
        let revision = slot.state.revision.clone();
        for (key, r) in results {
            match r {
                Ok(DriftOutcome::InSync(entry)) => {
                    if let Some(t) = slot.tracked.as_mut().and_then(|t| t.get_mut(&key)) {
                        t.entry = entry;
                    }
                    slot.detected.remove(&key);
                }
                Ok(DriftOutcome::Corrected { fields, entry }) => {
                    if let Some(t) = slot.tracked.as_mut().and_then(|t| t.get_mut(&key)) {
                        t.entry = entry;
                    }
                    slot.detected.remove(&key);
                    slot.state.objects.drift_corrected += 1;
                    self.metrics
                        .drift_corrections
                        .get_or_create(&BundleLabel { bundle: name.to_string() })
                        .inc();
                    tracing::info!(bundle = %name, object = %key, fields = %fields.join(","), "drift corrected");
                    events.push(
                        status::event(
                            Severity::Info,
                            "DriftCorrected",
                            name,
                            format!(
                                "{key} was changed outside Convoy and was put back: {}",
                                fields.join(", ")
                            ),
                        )
                        .object(&key)
                        .revision(&revision)
                        .detail("fields", fields.join(",")),
                    );
                }
                Ok(DriftOutcome::Detected { fields }) => {
                    if slot.detected.get(&key) != Some(&fields) {
                        self.metrics
                            .drift_detected
                            .get_or_create(&BundleLabel { bundle: name.to_string() })
                            .inc();
                        events.push(
                            status::event(
                                Severity::Warning,
                                "DriftDetected",
                                name,
                                format!(
                                    "{key} differs from the bundle (detect-only mode): {}",
                                    fields.join(", ")
                                ),
                            )
                            .object(&key)
                            .revision(&revision)
                            .detail("fields", fields.join(",")),
                        );
                        slot.detected.insert(key, fields);
                    }
                }
                Err(e) => {
                    tracing::warn!(bundle = %name, object = %key, error = %e, "drift check failed; retrying");
                    slot.drift_dirty.insert(key);
                    slot.b.drift_due = Some(Instant::now() + Duration::from_secs(2));
                }
            }
        }
        slot.state.objects.drifted = slot.detected.len() as u32;
        let drifted = slot.detected.len();
        let cond = if drifted > 0 {
            Condition::new(
                convoy_core::status::DRIFTED,
                true,
                "DriftDetected",
                format!("{drifted} objects differ from the bundle"),
            )
        } else {
            Condition::new(convoy_core::status::DRIFTED, false, "InSync", "objects match the bundle")
        };
        set_condition(&mut slot.state.conditions, cond, now_ms());
        for ev in events {
            self.emit(ev);
        }
    }

    fn on_health(&mut self, name: &str, r: Result<Vec<ObjectHealth>>) {
        let recheck = self.ctx.tuning.health_recheck;
        let Some(slot) = self.slots.get_mut(name) else { return };
        match r {
            Ok(hs) => {
                let was = slot.state.phase;
                apply_health(slot, &hs, recheck, slot.b.desired.as_ref().is_some_and(|d| d.options.wait));
                if was == Phase::NotReady && slot.state.phase == Phase::Ready {
                    let rev = slot.state.revision.clone();
                    self.emit(
                        status::event(Severity::Info, "Ready", name, "every object is healthy")
                            .revision(&rev),
                    );
                }
            }
            Err(e) => {
                slot.b.health_due = Some(Instant::now() + recheck);
                tracing::debug!(bundle = %name, error = %e, "health check failed");
            }
        }
    }

    // ------------------------------------------------------------------
    // State, status and events
    // ------------------------------------------------------------------

    fn refuse(&mut self, name: &str, d: &Deployment, e: Error) {
        let Some(slot) = self.slots.get_mut(name) else { return };
        reconcile::step(&mut slot.b, Input::ApplyResult(Outcome::Refused(d.clone())));
        let st = &mut slot.state;
        st.phase = Phase::Stalled;
        st.generation = d.generation;
        st.digest = d.digest.clone();
        st.message = format!(
            "{e}; nothing applied{}",
            match &slot.b.applied {
                Some(a) => format!(", generation {} stays applied", a.generation),
                None => String::new(),
            }
        );
        let reason = e.reason();
        set_conditions(st, Some(reason));
        let msg = st.message.clone();
        tracing::warn!(bundle = %name, error = %e, "refused");
        self.emit(
            status::event(Severity::Error, reason, name, msg)
                .detail("generation", d.generation)
                .detail("digest", &d.digest),
        );
        self.publish(name);
    }

    fn set_pending(&mut self, name: &str, d: &Deployment, waiting: &str) {
        let Some(slot) = self.slots.get_mut(name) else { return };
        let msg = format!("waiting for dependencies: {waiting}");
        if slot.state.phase == Phase::Pending && slot.state.message == msg {
            return;
        }
        slot.state.phase = Phase::Pending;
        slot.state.generation = d.generation;
        slot.state.digest = d.digest.clone();
        slot.state.message = msg;
        set_conditions(&mut slot.state, Some("DependencyNotReady"));
        self.publish(name);
    }

    fn set_suspended(&mut self, name: &str) {
        let Some(slot) = self.slots.get_mut(name) else { return };
        if slot.state.phase == Phase::Suspended {
            return;
        }
        slot.state.phase = Phase::Suspended;
        slot.state.message = "suspended: no apply, prune or drift correction".into();
        slot.drift_dirty.clear();
        slot.b.drift_due = None;
        set_conditions(&mut slot.state, Some("Suspended"));
        self.publish(name);
    }

    fn emit(&mut self, ev: Event) {
        self.outbox.push_event(&ev);
    }

    /// Queue the bundle's status when it changed since the last one queued.
    /// It counts as published once the outbox writer made it durable
    /// ([`Controller::on_published`]).
    fn publish(&mut self, name: &str) {
        let Some(slot) = self.slots.get_mut(name) else { return };
        let mut st = slot.state.clone();
        st.observed_unix_ms = 0;
        if slot.queued.as_ref() == Some(&st) {
            return;
        }
        slot.queued = Some(st);
        slot.state.observed_unix_ms = now_ms();
        self.outbox.push_status(&slot.state);
    }

    /// A status is durable in the outbox: it is published; the readiness
    /// gauge shows what was published.
    fn on_published(&mut self, p: Published) {
        if !self.slots.contains_key(&p.bundle) {
            return;
        }
        self.metrics
            .bundle_ready
            .get_or_create(&BundleLabel { bundle: p.bundle.clone() })
            .set(i64::from(p.status.phase == Phase::Ready));
    }

    async fn persist(&mut self, name: &str) {
        let rec = self
            .slots
            .get(name)
            .map(|s| BundleRecord { desired: s.b.desired.clone(), applied: s.b.applied.clone() });
        let store = self.store.clone();
        let n = name.to_string();
        if let Err(error) = blocking(move || store.put_bundle(&n, rec.as_ref())).await {
            tracing::error!(%error, bundle = %name, "cannot persist bundle state");
        }
    }

    fn gc_cache(&self) {
        let keep: HashSet<String> = self
            .slots
            .values()
            .flat_map(|s| {
                [
                    s.b.desired.as_ref().map(|d| d.digest.clone()),
                    s.b.applied.as_ref().map(|a| a.digest.clone()),
                ]
            })
            .flatten()
            .collect();
        let cache = self.ctx.cache.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(error) = cache.gc(&keep) {
                tracing::debug!(%error, "artifact cache gc");
            }
        });
    }
}

/// Fold a successful apply into the bundle's state and status.
fn fold_applied(slot: &mut Slot, a: &Applied, tuning: &Tuning) {
    let c = a.report.counts();
    // The controller persists right after (on_applied).
    let _persist = reconcile::step(&mut slot.b, Input::ApplyResult(Outcome::Applied(a.revision.clone())));
    slot.plan = Some(a.plan.clone());
    slot.tracked = Some(a.tracked.clone());
    slot.inv_header = InvHeader {
        revision: a.revision.revision.clone(),
        generation: a.revision.generation,
        digest: a.revision.digest.clone(),
    };
    slot.backoff.reset();
    slot.detected.clear();
    // Keys marked during the apply are mostly our own writes; the
    // watch events that follow clear those, the rest get checked.
    if !slot.drift_dirty.is_empty() {
        slot.b.drift_due = Some(Instant::now() + tuning.drift_debounce);
    }
    let st = &mut slot.state;
    st.generation = a.revision.generation;
    st.revision = a.revision.revision.clone();
    st.digest = a.revision.digest.clone();
    st.applied_generation = a.revision.generation;
    st.applied_revision = a.revision.revision.clone();
    st.apply_duration_ms = a.report.duration.as_millis() as u64;
    st.ready_duration_ms = a.ready_ms;
    st.objects = ObjectCounts {
        total: c.total,
        created: c.created,
        configured: c.configured,
        unchanged: c.unchanged,
        pruned: c.pruned,
        ..Default::default()
    };
    apply_health(slot, &a.health, tuning.health_recheck, a.waited);
}

/// The events of a successful apply: `Applied` (when the generation is new or
/// something changed, naming configured and pruned objects) and one
/// `Recreated` per object that `force` deleted and created again.
fn applied_events(name: &str, a: &Applied, new_generation: bool) -> Vec<Event> {
    let c = a.report.counts();
    let rev = &a.revision.revision;
    let gen_ = a.revision.generation;
    let mut out = Vec::new();
    if new_generation || a.report.changed() {
        let summary = format!(
            "applied generation {gen_} ({rev}): {} created, {} configured, {} unchanged, {} pruned in {} ms",
            c.created,
            c.configured,
            c.unchanged,
            c.pruned,
            a.report.duration.as_millis()
        );
        let mut ev = status::event(Severity::Info, "Applied", name, summary)
            .revision(rev)
            .detail("generation", gen_)
            .detail("created", c.created)
            .detail("configured", c.configured)
            .detail("unchanged", c.unchanged)
            .detail("pruned", c.pruned);
        let configured: Vec<String> = a
            .report
            .objects
            .iter()
            .filter(|o| matches!(o.action, Action::Configured))
            .take(20)
            .map(|o| format!("{} ({})", o.key, o.fields.join(", ")))
            .collect();
        if !configured.is_empty() {
            ev = ev.detail("configured_objects", configured.join("; "));
        }
        let pruned: Vec<String> = a
            .report
            .objects
            .iter()
            .filter(|o| o.action == Action::Pruned)
            .take(20)
            .map(|o| o.key.to_string())
            .collect();
        if !pruned.is_empty() {
            ev = ev.detail("pruned_objects", pruned.join(", "));
        }
        out.push(ev);
    }
    for o in a.report.objects.iter().filter(|o| o.action == Action::Recreated) {
        out.push(
            status::event(
                Severity::Warning,
                "Recreated",
                name,
                format!(
                    "{} was deleted and created again: {} cannot change in place (force)",
                    o.key,
                    o.fields.join(", ")
                ),
            )
            .object(&o.key)
            .revision(rev)
            .detail("fields", o.fields.join(",")),
        );
    }
    out
}

/// The status message of a failed apply: the error, the stage that failed,
/// whether some objects were written, and when it is retried.
fn failure_message(e: &Error, stage: Option<Stage>, applied_some: bool, delay: Duration) -> String {
    format!(
        "{}{}{}; retrying in {:.1}s",
        e,
        match stage {
            Some(s) => format!(" (stage {} {} failed)", s as u8, s.name()),
            None => String::new(),
        },
        if applied_some { " (some objects of this generation were applied)" } else { "" },
        delay.as_secs_f64()
    )
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Set Ready / Reconciling / Stalled from the phase; `reason` for failures.
fn set_conditions(st: &mut BundleStatus, reason: Option<&str>) {
    use convoy_core::status::{READY, RECONCILING, STALLED};
    let now = now_ms();
    let msg = st.message.clone();
    let (ready, ready_reason) = match st.phase {
        Phase::Ready => (ConditionStatus::True, "Applied"),
        Phase::Reconciling => (ConditionStatus::Unknown, reason.unwrap_or("Progressing")),
        _ => (ConditionStatus::False, reason.unwrap_or(st.phase.as_str())),
    };
    set_condition(&mut st.conditions, Condition::new(READY, ready, ready_reason, msg.clone()), now);
    let reconciling = matches!(st.phase, Phase::Reconciling | Phase::Pending);
    set_condition(
        &mut st.conditions,
        Condition::new(
            RECONCILING,
            reconciling,
            if reconciling { reason.unwrap_or("Progressing") } else { "Done" },
            if reconciling { msg.clone() } else { String::new() },
        ),
        now,
    );
    let stalled = st.phase == Phase::Stalled;
    set_condition(
        &mut st.conditions,
        Condition::new(
            STALLED,
            stalled,
            if stalled { reason.unwrap_or("Stalled") } else { "Progressing" },
            if stalled { msg } else { String::new() },
        ),
        now,
    );
}

/// Fold a health check into the bundle state.
fn apply_health(slot: &mut Slot, hs: &[ObjectHealth], recheck: Duration, gate: bool) {
    let ready = hs.iter().filter(|h| h.status == HealthStatus::Current).count() as u32;
    let st = &mut slot.state;
    st.objects.ready = ready;
    if st.objects.total == 0 {
        st.objects.total = hs.len() as u32;
    }
    let bad = health::not_ready_summary(hs);
    let healthy = bad.is_empty();
    set_condition(
        &mut st.conditions,
        if healthy {
            Condition::new(convoy_core::status::HEALTHY, true, "Healthy", "every object is healthy")
        } else {
            Condition::new(convoy_core::status::HEALTHY, false, "NotHealthy", bad.clone())
        },
        now_ms(),
    );
    if healthy || !gate {
        st.phase = Phase::Ready;
        st.message = if healthy {
            format!("applied generation {} ({}); every object is healthy", st.generation, st.revision)
        } else {
            format!("applied generation {} (not waiting for health: {})", st.generation, bad)
        };
    } else {
        st.phase = Phase::NotReady;
        st.message = format!("not ready: {bad}");
    }
    slot.b.health_due = if healthy { None } else { Some(Instant::now() + recheck) };
    set_conditions(&mut slot.state, if healthy { None } else { Some("HealthCheckFailed") });
}

fn tracked_from(plan: &Plan, inv: &Inventory) -> HashMap<ObjKey, Tracked> {
    let entries = inv.by_key();
    plan.objects
        .iter()
        .filter_map(|o| {
            let e = entries.get(&o.key)?;
            Some((
                o.key.clone(),
                Tracked {
                    entry: (*e).clone(),
                    meta_keys: o.meta_keys.clone(),
                    resource: o.resource.clone(),
                    gone_when_finished: o.gone_when_finished(),
                },
            ))
        })
        .collect()
}

async fn hub_client(ctx: &Ctx) -> Option<AgentClient<Channel>> {
    ctx.hub.borrow().clone().map(AgentClient::new)
}

/// The artifact bytes: from the cache, else downloaded from the hub.
async fn artifact(ctx: &Ctx, digest: &str, size: u64) -> Result<Vec<u8>> {
    if let Some(b) = ctx.cache.get(digest).await? {
        return Ok(b);
    }
    match hub_client(ctx).await {
        Some(mut c) => ctx.cache.fetch(&mut c, digest, size).await,
        None => {
            Err(Error::Transport(format!("the hub is not connected and artifact {digest} is not cached")))
        }
    }
}

async fn manifests(ctx: &Ctx, bytes: Vec<u8>) -> Result<Vec<crate::objects::Manifest>> {
    let (limits, keys) = (ctx.limits, ctx.sops_keys.clone());
    blocking(move || bundle::load_manifests_with(&bytes, &limits, &*keys)).await
}

/// Verify, download, unpack, plan, apply, wait.
async fn reconcile(
    ctx: &Ctx,
    d: &Deployment,
    applied: Option<&AppliedRevision>,
    cached: Option<Arc<Plan>>,
    desired: &BTreeSet<String>,
) -> std::result::Result<Applied, Failure> {
    let start = Instant::now();
    // The generation rules were decided by the state machine (reconcile.rs).
    // Without local state (a new state directory), the inventory in the
    // cluster still says which generation is applied: no replays either.
    if applied.is_none() {
        let inv = ctx.engine.inventory(&d.name).await.map_err(|e| Failure::Failed(e, false, None))?;
        if let Some(inv) = inv.filter(|i| i.generation > 0) {
            let floor = AppliedRevision {
                generation: inv.generation,
                digest: inv.digest,
                revision: inv.revision,
                statement: Vec::new(),
                signature: Vec::new(),
                options: d.options.clone(),
            };
            if let Decision::Refuse(reason, message) = bundle::decide(d, Some(&floor)) {
                return Err(Failure::Refused(Error::verification(reason, message)));
            }
        }
    }
    // Verification first: the statement before any download.
    let st = bundle::verify_statement(d, &ctx.trusted).map_err(Failure::Refused)?;
    let opts = &d.options;
    // A Helm bundle's release record and hooks (crate::helmrelease) are not
    // objects of the plan; a reused plan (same artifact) runs no hooks again.
    let mut helm = None;
    let plan = match cached {
        Some(p) => p,
        None => {
            let bytes = artifact(ctx, &d.digest, d.size).await.map_err(|e| match e {
                e @ Error::Verification { .. } => Failure::Refused(e),
                e => Failure::Failed(e, false, None),
            })?;
            bundle::verify_artifact(&st, &d.name, &bytes).map_err(Failure::Refused)?;
            let ms = manifests(ctx, bytes).await.map_err(|e| match e {
                e @ (Error::Manifest { .. } | Error::Artifact { .. } | Error::Decryption { .. }) => {
                    Failure::Refused(e)
                }
                e => Failure::Failed(e, false, None),
            })?;
            let (ms, parts) = crate::helmrelease::split(ms).map_err(Failure::Refused)?;
            let ns = opts.target_namespace.clone().or(parts.as_ref().map(|h| h.spec.namespace.clone()));
            helm = parts;
            let mut plan = ctx
                .engine
                .plan(&d.name, &st.source.revision, st.generation, &st.artifact.digest, ms, ns.as_deref())
                .await
                .map_err(|e| match e {
                    e @ Error::Manifest { .. } => Failure::Refused(e),
                    e => Failure::Failed(e, false, None),
                })?;
            if let Some(h) = &helm {
                crate::helmrelease::crd_policy(&mut plan, &h.spec);
            }
            Arc::new(plan)
        }
    };
    crate::ownership::enforce(&ctx.engine, &plan, &opts.tenancy, Some(desired)).await.map_err(
        |e| match e {
            e @ Error::Policy(_) => Failure::Refused(e),
            e => Failure::Failed(e, false, None),
        },
    )?;
    let timeout = opts.timeout.unwrap_or(ctx.tuning.default_timeout);
    let release = match helm {
        Some(parts) => {
            let guard = crate::helmrelease::Guard {
                bundle: &d.name,
                agent_namespace: ctx.engine.namespace(),
                tenancy: &opts.tenancy,
            };
            Some(
                crate::helmsync::before_apply(ctx.engine.client(), parts, &guard, timeout, &ctx.shutdown)
                    .await
                    .map_err(|e| match e {
                        e @ Error::Policy(_) => Failure::Refused(e),
                        e => Failure::Failed(e, false, None),
                    })?,
            )
        }
        None => None,
    };
    let report =
        ctx.engine.apply(&plan, ApplyOptions { force: opts.force, prune: opts.prune }, &ctx.shutdown).await;
    if let Some(e) = report.error {
        let changed = report.objects.iter().any(|o| {
            matches!(o.action, Action::Created | Action::Configured | Action::Recreated | Action::Pruned)
        });
        crate::helmsync::after_failed_apply(release.as_ref(), &e, &ctx.shutdown).await;
        return Err(Failure::Failed(e, changed, report.failed_stage));
    }
    let targets = plan.targets();
    let health = if opts.wait {
        let left = timeout.saturating_sub(start.elapsed()).max(Duration::from_secs(1));
        health::wait(ctx.engine.client(), &targets, left, ctx.engine.concurrency(), &ctx.shutdown).await
    } else {
        health::check(ctx.engine.client(), &targets, ctx.engine.concurrency()).await
    }
    .map_err(|e| Failure::Failed(e, true, None))?;
    if let Some(r) = &release {
        crate::helmsync::after_apply(r, opts.wait, &health, timeout, &ctx.shutdown)
            .await
            .map_err(|e| Failure::Failed(e, true, None))?;
    }
    let tracked = tracked_from(&plan, &report.inventory);
    Ok(Applied {
        plan,
        revision: AppliedRevision {
            generation: st.generation,
            digest: st.artifact.digest.clone(),
            revision: st.source.revision.clone(),
            statement: d.statement.clone(),
            signature: d.signature.clone(),
            options: d.options.clone(),
        },
        report,
        tracked,
        health,
        waited: opts.wait,
        ready_ms: start.elapsed().as_millis() as u64,
    })
}

/// Run a Helm bundle's test hooks against its applied revision (the
/// artifact re-verified from the stored statement, as for a restore).
async fn run_tests(
    ctx: &Ctx,
    name: &str,
    a: &AppliedRevision,
    req: &crate::helmtest::TestRequest,
) -> crate::helmtest::Outcome {
    use crate::helmtest::Outcome;
    let parts = async {
        let st = convoy_artifact::verify_statement(&a.statement, &a.signature, &ctx.trusted)
            .map_err(|e| Error::verification(e.reason(), e.to_string()))?;
        let bytes = artifact(ctx, &a.digest, st.artifact.size).await?;
        bundle::verify_artifact(&st, name, &bytes)?;
        let ms = manifests(ctx, bytes).await?;
        Ok::<_, Error>(crate::helmrelease::split(ms)?.1)
    };
    let parts = match parts.await {
        Ok(Some(p)) => p,
        Ok(None) => return Outcome::Refused(format!("bundle {name} is not a Helm bundle")),
        Err(e) => return Outcome::Error(e.to_string()),
    };
    let release = match crate::helmrelease::Release::prepare(ctx.engine.client().clone(), parts).await {
        Ok(r) => r,
        Err(e) => return Outcome::Error(e.to_string()),
    };
    let revision = match crate::helmtest::deployed(release.name(), &release.revisions()) {
        Ok(v) => v,
        Err(why) => return Outcome::Refused(why),
    };
    let guard = crate::helmrelease::Guard {
        bundle: name,
        agent_namespace: ctx.engine.namespace(),
        tenancy: &a.options.tenancy,
    };
    match release.judge_tests(&guard).await {
        Ok(()) => {}
        Err(e @ Error::Policy(_)) => return Outcome::Refused(e.to_string()),
        Err(e) => return Outcome::Error(e.to_string()),
    }
    let timeout = req.timeout.unwrap_or(crate::helmtest::DEFAULT_TIMEOUT);
    let runs = release.run_tests(timeout, &ctx.shutdown).await;
    if let Err(e) = release.record_tests(revision, &runs).await {
        tracing::warn!(bundle = %name, revision, "could not record the test run on the release: {e}");
    }
    Outcome::Ran { release: release.name().to_string(), revision, runs }
}

/// Rebuild the plan of an applied revision from the local cache (the hub
/// may be away), re-verifying the stored statement and signature.
async fn applied_plan(ctx: &Ctx, name: &str, a: &AppliedRevision) -> Result<Plan> {
    let st = convoy_artifact::verify_statement(&a.statement, &a.signature, &ctx.trusted)
        .map_err(|e| Error::verification(e.reason(), e.to_string()))?;
    let bytes = artifact(ctx, &a.digest, st.artifact.size).await?;
    bundle::verify_artifact(&st, name, &bytes)?;
    let ms = manifests(ctx, bytes).await?;
    // A Helm bundle's record and hooks are never drift-corrected as objects.
    let (ms, helm) = crate::helmrelease::split(ms)?;
    let ns = a.options.target_namespace.clone().or(helm.as_ref().map(|h| h.spec.namespace.clone()));
    let mut plan = ctx.engine.plan(name, &a.revision, a.generation, &a.digest, ms, ns.as_deref()).await?;
    if let Some(h) = &helm {
        crate::helmrelease::crd_policy(&mut plan, &h.spec);
    }
    Ok(plan)
}

async fn restore(ctx: &Ctx, name: &str, a: &AppliedRevision) -> Result<Restored> {
    let plan = applied_plan(ctx, name, a).await?;
    let inv = ctx
        .engine
        .inventory(name)
        .await?
        .ok_or_else(|| Error::Store(format!("bundle {name} has no inventory in the cluster")))?;
    let tracked = tracked_from(&plan, &inv);
    // One GET per object gives both health and what drifted while we were away.
    let checks: Vec<Result<(ObjectHealth, bool)>> = futures::stream::iter(
        tracked
            .iter()
            .map(|(key, t)| async move {
                let live = health::get_slim(ctx.engine.client(), key, &t.resource).await?;
                Ok(match live {
                    None => (
                        ObjectHealth {
                            key: key.clone(),
                            status: HealthStatus::NotFound,
                            message: "not found".into(),
                        },
                        true,
                    ),
                    Some((obj, meta)) => {
                        let (status, message) = health::assess(&key.group, &key.kind, &obj);
                        (
                            ObjectHealth { key: key.clone(), status, message },
                            !live_matches(&t.entry, &meta, &t.meta_keys),
                        )
                    }
                })
            })
            .collect::<Vec<_>>(),
    )
    .buffer_unordered(ctx.engine.concurrency())
    .collect()
    .await;
    let mut health = Vec::with_capacity(checks.len());
    let mut dirty = Vec::new();
    for c in checks {
        let (h, drifted) = c?;
        if drifted {
            dirty.push(h.key.clone());
        }
        health.push(h);
    }
    Ok(Restored {
        plan: Arc::new(plan),
        tracked,
        header: InvHeader { revision: inv.revision, generation: inv.generation, digest: inv.digest },
        health,
        dirty,
    })
}

#[allow(clippy::too_many_arguments)]
async fn drift_pass(
    ctx: &Ctx,
    name: &str,
    applied: &AppliedRevision,
    plan: Option<Arc<Plan>>,
    mut tracked: HashMap<ObjKey, Tracked>,
    header: InvHeader,
    keys: Vec<ObjKey>,
    detect_only: bool,
) -> (Vec<(ObjKey, Result<DriftOutcome>)>, Result<()>, Option<Arc<Plan>>) {
    let plan = match plan {
        Some(p) => p,
        None => match applied_plan(ctx, name, applied).await {
            Ok(p) => Arc::new(p),
            Err(e) => {
                let msg = e.to_string();
                let results = keys
                    .into_iter()
                    .map(|k| (k, Err(Error::Store(format!("cannot load the applied bundle: {msg}")))))
                    .collect();
                return (results, Ok(()), None);
            }
        },
    };
    let mut results = Vec::with_capacity(keys.len());
    let mut changed = false;
    for key in keys {
        let (Some(obj), Some(t)) = (plan.get(&key), tracked.get(&key)) else { continue };
        let r = ctx.engine.check_drift(obj, &t.entry, detect_only).await;
        if let Ok(DriftOutcome::InSync(e) | DriftOutcome::Corrected { entry: e, .. }) = &r
            && e != &t.entry
        {
            changed = true;
            if let Some(t) = tracked.get_mut(&key) {
                t.entry = e.clone();
            }
        }
        results.push((key, r));
    }
    let saved = if changed {
        let entries: Vec<Entry> =
            plan.objects.iter().filter_map(|o| tracked.get(&o.key).map(|t| t.entry.clone())).collect();
        let inv = Inventory {
            bundle: name.to_string(),
            revision: header.revision,
            generation: header.generation,
            digest: header.digest,
            entries,
        };
        ctx.engine.save_inventory(&inv).await
    } else {
        Ok(())
    };
    (results, saved, Some(plan))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::BundleOptions;
    use crate::engine::ObjectResult;
    use crate::error::ImmutableField;

    fn applied(objects: Vec<ObjectResult>) -> Applied {
        Applied {
            plan: Arc::new(Plan::default()),
            revision: AppliedRevision {
                generation: 2,
                digest: "sha256:b".into(),
                revision: "main@sha1:2".into(),
                statement: Vec::new(),
                signature: Vec::new(),
                options: BundleOptions::default(),
            },
            report: ApplyReport { objects, ..Default::default() },
            tracked: HashMap::new(),
            health: Vec::new(),
            waited: false,
            ready_ms: 0,
        }
    }

    fn result(action: Action, fields: &[&str]) -> ObjectResult {
        ObjectResult {
            key: ObjKey::new("apps", "Deployment", Some("apps"), "web"),
            action,
            fields: fields.iter().map(|f| f.to_string()).collect(),
            message: String::new(),
        }
    }

    #[test]
    fn a_recreate_is_reported_with_its_field() {
        let evs = applied_events("app", &applied(vec![result(Action::Recreated, &["spec.selector"])]), false);
        let reasons: Vec<&str> = evs.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(reasons, ["Applied", "Recreated"], "a recreate is a change");
        let r = &evs[1];
        assert_eq!(r.severity, Severity::Warning);
        assert_eq!(r.object, "Deployment/apps/web");
        assert_eq!(r.details.get("fields").map(String::as_str), Some("spec.selector"));
        assert!(r.message.contains("spec.selector"), "{}", r.message);
    }

    #[test]
    fn an_unchanged_reapply_of_the_same_generation_is_quiet() {
        assert!(applied_events("app", &applied(vec![result(Action::Unchanged, &[])]), false).is_empty());
        let evs = applied_events("app", &applied(vec![result(Action::Unchanged, &[])]), true);
        assert_eq!(evs.len(), 1, "a new generation is always reported");
        let evs = applied_events("app", &applied(vec![result(Action::Configured, &[".data.k"])]), false);
        assert_eq!(
            evs[0].details.get("configured_objects").map(String::as_str),
            Some("Deployment/apps/web (.data.k)")
        );
    }

    #[test]
    fn failure_message_names_the_stage() {
        let e = Error::Immutable(vec![ImmutableField {
            object: "Deployment/apps/web".into(),
            field: "spec.selector".into(),
            message: "field is immutable".into(),
        }]);
        let m = failure_message(&e, Some(Stage::Workloads), true, Duration::from_millis(1500));
        assert!(m.contains("Deployment/apps/web spec.selector"), "{m}");
        assert!(m.contains("(stage 3 workloads failed)"), "{m}");
        assert!(m.contains("(some objects of this generation were applied)"), "{m}");
        assert!(m.ends_with("retrying in 1.5s"), "{m}");
        let m = failure_message(&Error::Timeout("x".into()), None, false, Duration::from_secs(1));
        assert_eq!(m, "timed out: x; retrying in 1.0s");
    }
}
