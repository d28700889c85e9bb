//! The fleet state actor: the one writer of clusters, tokens, signed bundle
//! generations and the desired-state index.
//!
//! It applies operator and registration commands, turns new builds into signed
//! generations, re-targets bundles when the fleet config, a cluster's labels or
//! the set of clusters changes, and publishes:
//! - a [`FleetView`] snapshot through a `watch` (authorization and queries read it);
//! - per cluster, an `Arc<ClusterDesired>` through that cluster's own `watch`,
//!   so a change wakes only the sessions of the clusters it concerns.
//!
//! Durable before visible: the commands taken in one turn of the loop change
//! the actor's state, their writes are committed in ONE store transaction,
//! and only then are the view and the clusters' desired sets published and
//! the callers answered. If the commit fails, the actor's state is rolled
//! back to what was last published and nothing is published at all.
//! Statuses are not the actor's: the store writer owns them ([`crate::index`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use convoy_artifact::{SigningKey, Statement};
use convoy_core::config::FleetConfig;
use convoy_core::identity::{Identity, validate_name};
use convoy_core::pipeline::BundleBuildState;
#[cfg(test)]
use convoy_core::pipeline::SourceStatus;
use convoy_core::selector::Labels;
use convoy_core::status::Severity;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::domain::desired::{
    ClusterDesired, DesiredIndex, above_floor, next_generation, recovery_generation, same_bundles,
};
use crate::domain::tokens::{self, check_registration};
use crate::domain::{
    CertRef, ClusterRecord, DeploymentRecord, EventRecord, HUB_EVENT_SOURCE, Liveness, Rejection, TokenRecord,
};
use crate::index::{BundleStatuses, ClusterStatuses, StatusIndex};
use crate::metrics::Metrics;
use crate::pipeline::Builds;
use crate::pki::{Ca, IssuedCert};
use crate::store::{Loaded, Write};
use crate::writer::WriterHandle;
use crate::{Error, Result};

/// How many certificates of one cluster stay valid at once (renewal overlap).
const CERTS_KEPT: usize = 3;

/// Live state of one cluster shared by its sessions, the writer and queries.
pub struct ClusterShared {
    name: String,
    streams: AtomicU32,
    last_seen_ms: AtomicI64,
    agent_version: ArcSwap<String>,
    age_recipients: ArcSwap<Vec<String>>,
    statuses: Arc<ClusterStatuses>,
    desired: watch::Sender<Arc<ClusterDesired>>,
    session: Mutex<Option<(u64, CancellationToken)>>,
    liveness_dirty: AtomicBool,
}

impl ClusterShared {
    fn new(name: &str, liveness: Liveness, statuses: Arc<ClusterStatuses>) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            streams: AtomicU32::new(0),
            last_seen_ms: AtomicI64::new(liveness.last_seen_unix_ms),
            agent_version: ArcSwap::from_pointee(liveness.agent_version),
            age_recipients: ArcSwap::from_pointee(liveness.age_recipients),
            statuses,
            desired: watch::Sender::new(Arc::default()),
            session: Mutex::new(None),
            liveness_dirty: AtomicBool::new(false),
        })
    }

    /// The cluster name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether an agent holds a Sync stream.
    pub fn connected(&self) -> bool {
        self.streams.load(Ordering::Relaxed) > 0
    }

    /// When the hub last heard from the agent (Unix ms).
    pub fn last_seen(&self) -> i64 {
        self.last_seen_ms.load(Ordering::Relaxed)
    }

    /// The agent version reported last.
    pub fn agent_version(&self) -> Arc<String> {
        self.agent_version.load_full()
    }

    /// The last committed status of each bundle on this cluster (read from
    /// the store writer's [`crate::index::StatusIndex`]).
    pub fn statuses(&self) -> Arc<BundleStatuses> {
        self.statuses.get()
    }

    /// Subscribe to this cluster's desired state.
    pub fn subscribe_desired(&self) -> watch::Receiver<Arc<ClusterDesired>> {
        self.desired.subscribe()
    }

    /// The current desired state.
    pub fn desired(&self) -> Arc<ClusterDesired> {
        self.desired.borrow().clone()
    }

    /// Record that the agent was heard from now.
    pub fn touch(&self, now: i64) {
        self.last_seen_ms.store(now, Ordering::Relaxed);
        self.liveness_dirty.store(true, Ordering::Relaxed);
    }

    /// Record the agent version.
    pub fn set_agent_version(&self, v: &str) {
        if **self.agent_version.load() != v {
            self.agent_version.store(Arc::new(v.to_string()));
            self.liveness_dirty.store(true, Ordering::Relaxed);
        }
    }

    /// The age recipients reported last (SOPS).
    pub fn age_recipients(&self) -> Arc<Vec<String>> {
        self.age_recipients.load_full()
    }

    /// Record the age recipients the agent reported.
    pub fn set_age_recipients(&self, r: &[String]) {
        if **self.age_recipients.load() != r {
            self.age_recipients.store(Arc::new(r.to_vec()));
            self.liveness_dirty.store(true, Ordering::Relaxed);
        }
    }

    pub(crate) fn take_liveness_dirty(&self) -> bool {
        self.liveness_dirty.swap(false, Ordering::Relaxed)
    }

    pub(crate) fn liveness(&self) -> Liveness {
        Liveness {
            last_seen_unix_ms: self.last_seen(),
            agent_version: (*self.agent_version()).clone(),
            age_recipients: (*self.age_recipients()).clone(),
        }
    }

    /// A Sync session starts: the previous one of this cluster (a half-dead
    /// connection the agent gave up on) is closed. Returns the session id.
    pub(crate) fn begin_session(&self, token: CancellationToken) -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        if let Some((_, old)) = self.session.lock().replace((id, token)) {
            old.cancel();
        }
        self.streams.fetch_add(1, Ordering::Relaxed);
        id
    }

    /// A Sync session ended.
    pub(crate) fn end_session(&self, id: u64) {
        let mut s = self.session.lock();
        if s.as_ref().is_some_and(|(cur, _)| *cur == id) {
            *s = None;
        }
        drop(s);
        self.streams.fetch_sub(1, Ordering::Relaxed);
    }

    /// Close every open session of this cluster (revocation).
    pub(crate) fn kill_sessions(&self) {
        if let Some((_, t)) = self.session.lock().take() {
            t.cancel();
        }
    }
}

/// A registered cluster: its stored record and its live state.
#[derive(Clone)]
pub struct ClusterEntry {
    /// The stored record.
    pub record: Arc<ClusterRecord>,
    /// Live state.
    pub shared: Arc<ClusterShared>,
}

/// A consistent snapshot of the fleet, published by the state actor.
#[derive(Clone, Default)]
pub struct FleetView {
    /// The fleet config in force.
    pub fleet: Arc<FleetConfig>,
    /// Registered clusters by name.
    pub clusters: Arc<BTreeMap<String, ClusterEntry>>,
    /// Bundles with a signed generation, with their apply options.
    pub index: Arc<DesiredIndex>,
    /// The current signed generation of every bundle ever built.
    pub records: Arc<BTreeMap<String, Arc<DeploymentRecord>>>,
    /// The latest builds.
    pub builds: Builds,
    /// Bundles suspended by an operator.
    pub suspended: Arc<BTreeSet<String>>,
}

/// A registration request, converted from the proto at the edge.
#[derive(Debug, Clone)]
pub struct RegisterInput {
    /// The bootstrap token.
    pub token: String,
    /// The requested cluster name.
    pub cluster: String,
    /// Labels the agent reports.
    pub labels: Labels,
    /// The agent's CSR, PEM.
    pub csr_pem: String,
    /// The agent version.
    pub agent_version: String,
}

/// A successful registration.
#[derive(Debug, Clone)]
pub struct RegisterOutput {
    /// The new certificate.
    pub cert: IssuedCert,
    /// The labels recorded.
    pub labels: Labels,
}

/// A token to create.
#[derive(Debug, Clone, Default)]
pub struct TokenInput {
    /// The only cluster name it registers, if set.
    pub cluster: Option<String>,
    /// Labels given at registration.
    pub labels: Labels,
    /// Lifetime.
    pub ttl: Duration,
    /// Works once only.
    pub single_use: bool,
    /// Registers only new names with this prefix (exclusive with `cluster`).
    pub name_prefix: Option<String>,
    /// Label keys the agent may propose.
    pub agent_label_keys: Vec<String>,
}

/// A created token.
#[derive(Debug, Clone)]
pub struct TokenOutput {
    /// The secret token, shown once.
    pub token: String,
    /// Its public id.
    pub id: String,
    /// When it expires (Unix ms).
    pub expires_unix_ms: i64,
}

type Reply<T> = oneshot::Sender<Result<T>>;

enum Cmd {
    Register(RegisterInput, Reply<RegisterOutput>),
    Renew {
        cluster: String,
        serial: String,
        csr_pem: String,
        reply: Reply<IssuedCert>,
    },
    Revoke {
        cluster: String,
        reply: Reply<()>,
    },
    SetLabels {
        cluster: String,
        labels: Labels,
        reply: Reply<()>,
    },
    SetSuspended {
        bundle: String,
        suspended: bool,
        reply: Reply<()>,
    },
    SetSourceSuspended {
        source: String,
        suspended: bool,
        reply: Reply<()>,
    },
    CreateToken(TokenInput, Reply<TokenOutput>),
    /// What an agent holds (bundle, generation, digest), from its Hello.
    ReportApplied {
        cluster: String,
        applied: Vec<(String, u64, String)>,
    },
    SetFleet(Arc<FleetConfig>, Option<Reply<()>>),
}

/// Sends commands to the state actor.
#[derive(Clone)]
pub struct StateHandle {
    tx: mpsc::Sender<Cmd>,
    view: watch::Receiver<Arc<FleetView>>,
}

impl StateHandle {
    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Cmd) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| Error::ShuttingDown)?;
        rx.await.unwrap_or(Err(Error::ShuttingDown))
    }

    /// The current fleet view.
    pub fn view(&self) -> Arc<FleetView> {
        self.view.borrow().clone()
    }

    /// Subscribe to fleet view changes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<FleetView>> {
        self.view.clone()
    }

    /// Register a cluster with a bootstrap token.
    pub async fn register(&self, input: RegisterInput) -> Result<RegisterOutput> {
        self.call(|r| Cmd::Register(input, r)).await
    }

    /// Renew a cluster's certificate; `serial` is the presented certificate's,
    /// and only the cluster's current (newest) serial may renew.
    pub async fn renew(&self, cluster: String, serial: String, csr_pem: String) -> Result<IssuedCert> {
        self.call(|reply| Cmd::Renew { cluster, serial, csr_pem, reply }).await
    }

    /// Revoke a cluster.
    pub async fn revoke(&self, cluster: String) -> Result<()> {
        self.call(|reply| Cmd::Revoke { cluster, reply }).await
    }

    /// Replace a cluster's labels.
    pub async fn set_labels(&self, cluster: String, labels: Labels) -> Result<()> {
        self.call(|reply| Cmd::SetLabels { cluster, labels, reply }).await
    }

    /// Suspend or resume a bundle.
    pub async fn set_suspended(&self, bundle: String, suspended: bool) -> Result<()> {
        self.call(|reply| Cmd::SetSuspended { bundle, suspended, reply }).await
    }

    /// Suspend or resume a source: stored, then handed to the source pipeline
    /// (which does not persist it; the hub reapplies it at start).
    pub async fn set_source_suspended(&self, source: String, suspended: bool) -> Result<()> {
        self.call(|reply| Cmd::SetSourceSuspended { source, suspended, reply }).await
    }

    /// Create a bootstrap token.
    pub async fn create_token(&self, input: TokenInput) -> Result<TokenOutput> {
        self.call(|r| Cmd::CreateToken(input, r)).await
    }

    /// What an agent reported holding at connect, so that a hub behind its
    /// agents (restored backup, empty start with the same key) continues
    /// above them. Fire and forget.
    pub async fn report_applied(&self, cluster: String, applied: Vec<(String, u64, String)>) {
        let _ = self.tx.send(Cmd::ReportApplied { cluster, applied }).await;
    }

    /// Replace the fleet config and wait until it is in force.
    pub async fn set_fleet(&self, fleet: Arc<FleetConfig>) -> Result<()> {
        self.call(|r| Cmd::SetFleet(fleet, Some(r))).await
    }
}

/// What the actor needs to start.
pub struct StateDeps {
    /// The CA.
    pub ca: Arc<Ca>,
    /// The statement signing key.
    pub signer: Arc<SigningKey>,
    /// The store writer.
    pub writer: WriterHandle,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Lifetime of cluster certificates.
    pub cluster_cert_ttl: Duration,
    /// The committed statuses (written by the store writer, read here).
    pub statuses: Arc<StatusIndex>,
    /// The source pipeline (source suspension is handed to it once stored).
    pub pipeline: Arc<dyn crate::pipeline::SourcePipeline>,
    /// The wall clock (token expiry, certificate validity, generation stamps).
    pub clock: convoy_core::clock::SharedClock,
}

/// The liveness that changed since the last call, of the clusters in `view`:
/// what the store writer persists once per tick ([`crate::writer::LivenessSource`]).
pub fn dirty_liveness(view: &FleetView) -> Vec<(String, Liveness)> {
    view.clusters
        .values()
        .filter(|c| c.shared.take_liveness_dirty())
        .map(|c| (c.record.name.clone(), c.shared.liveness()))
        .collect()
}

struct Actor {
    fleet: Arc<FleetConfig>,
    builds: Builds,
    records: Arc<BTreeMap<String, Arc<DeploymentRecord>>>,
    suspended: Arc<BTreeSet<String>>,
    index: Arc<DesiredIndex>,
    clusters: Arc<BTreeMap<String, ClusterEntry>>,
    tokens: HashMap<String, TokenRecord>,
    version: u64,
    reported_errors: HashMap<String, String>,
    /// Desired sets computed but not yet published (sent by [`Actor::publish`]).
    pending_desired: BTreeMap<String, (Arc<ClusterShared>, Arc<ClusterDesired>)>,
    deps: StateDeps,
    view_tx: watch::Sender<Arc<FleetView>>,
    dirty: bool,
    /// Generations agents reported for bundles the hub has no record of yet:
    /// their first build is signed above these.
    floors: HashMap<String, u64>,
}

/// Build the actor from the loaded store and start it. The view is published
/// before this returns, so sessions and queries can start at once.
pub fn spawn(
    loaded: Loaded,
    fleet: Arc<FleetConfig>,
    builds: watch::Receiver<Builds>,
    deps: StateDeps,
    view_tx: watch::Sender<Arc<FleetView>>,
    shutdown: CancellationToken,
) -> (StateHandle, tokio::task::JoinHandle<()>) {
    let liveness: HashMap<String, Liveness> = loaded.liveness.into_iter().collect();
    let mut clusters = BTreeMap::new();
    for rec in loaded.clusters {
        let shared = ClusterShared::new(
            &rec.name,
            liveness.get(&rec.name).cloned().unwrap_or_default(),
            deps.statuses.cluster(&rec.name),
        );
        clusters.insert(rec.name.clone(), ClusterEntry { record: Arc::new(rec), shared });
    }
    let now = deps.clock.now_ms();
    let mut actor = Actor {
        fleet,
        builds: builds.borrow().clone(),
        records: Arc::new(loaded.deployments.into_iter().map(|d| (d.bundle.clone(), Arc::new(d))).collect()),
        suspended: Arc::new(loaded.suspended),
        index: Arc::default(),
        clusters: Arc::new(clusters),
        tokens: loaded
            .tokens
            .into_iter()
            .filter(|t| t.expires_unix_ms > now)
            .map(|t| (t.id.clone(), t))
            .collect(),
        version: 0,
        reported_errors: HashMap::new(),
        pending_desired: BTreeMap::new(),
        deps,
        view_tx,
        dirty: true,
        floors: HashMap::new(),
    };
    actor.rebuild_index();
    actor.retarget(None);
    actor.publish();
    let (tx, rx) = mpsc::channel(4096);
    let handle = StateHandle { tx, view: actor.view_tx.subscribe() };
    let task = tokio::spawn(actor.run(rx, builds, shutdown).instrument(info_span!("fleet_state")));
    (handle, task)
}

/// A hub event stamped `now_ms` (the actor's injected clock, `HubOptions.clock`).
fn hub_event(
    now_ms: i64,
    severity: Severity,
    reason: &str,
    bundle: &str,
    message: String,
) -> (String, EventRecord) {
    (HUB_EVENT_SOURCE.to_string(), EventRecord::new(severity, reason, bundle, message, now_ms))
}

#[cfg(test)]
thread_local! {
    /// Turns of the actor loop on this thread (current-thread test runtimes).
    static TURNS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// What the actor's state was when it last published: restored when a
/// batch's commit fails, so nothing of that batch is ever visible.
struct Snapshot {
    clusters: Arc<BTreeMap<String, ClusterEntry>>,
    tokens: HashMap<String, TokenRecord>,
    suspended: Arc<BTreeSet<String>>,
    index: Arc<DesiredIndex>,
    version: u64,
    dirty: bool,
}

/// A caller's answer, sent once the batch it belongs to is committed and
/// published (with the commit's error otherwise).
type Answer = Box<dyn FnOnce(Result<()>) + Send>;

/// The commands of one turn of the loop: their writes (one transaction),
/// their answers, and side effects that wait for the commit.
struct Batch {
    before: Snapshot,
    writes: Vec<Write>,
    answers: Vec<Answer>,
    after_commit: Vec<Box<dyn FnOnce() + Send>>,
}

impl Batch {
    fn add<T: Send + 'static>(&mut self, writes: Vec<Write>, reply: Reply<T>, value: T) {
        self.writes.extend(writes);
        self.answers.push(Box::new(move |r: Result<()>| {
            let _ = reply.send(r.map(|()| value));
        }));
    }
}

impl Actor {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Cmd>,
        mut builds: watch::Receiver<Builds>,
        shutdown: CancellationToken,
    ) {
        // Builds present at start are processed now (new digests since the last run).
        self.on_builds().await;
        self.publish();
        let mut pipeline_open = true;
        loop {
            tokio::select! {
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    let mut batch = self.begin();
                    self.handle(cmd, &mut batch).await;
                    // Take whatever else is queued: one commit, one publish.
                    for _ in 0..256 {
                        match rx.try_recv() {
                            Ok(cmd) => self.handle(cmd, &mut batch).await,
                            Err(_) => break,
                        }
                    }
                    self.finish(batch).await;
                }
                changed = builds.changed(), if pipeline_open => {
                    if changed.is_err() {
                        // The pipeline is gone: keep serving what we have, and
                        // stop polling its closed channel (it would be ready
                        // at once, forever).
                        warn!("the source pipeline stopped; serving the generations already signed");
                        pipeline_open = false;
                        continue;
                    }
                    self.builds = builds.borrow_and_update().clone();
                    self.on_builds().await;
                }
                _ = shutdown.cancelled() => break,
            }
            #[cfg(test)]
            TURNS.with(|t| t.set(t.get() + 1));
            self.publish();
        }
    }

    /// Start a batch: remember the published state to roll back to.
    fn begin(&self) -> Batch {
        Batch {
            before: Snapshot {
                clusters: self.clusters.clone(),
                tokens: self.tokens.clone(),
                suspended: self.suspended.clone(),
                index: self.index.clone(),
                version: self.version,
                dirty: self.dirty,
            },
            writes: Vec::new(),
            answers: Vec::new(),
            after_commit: Vec::new(),
        }
    }

    /// Commit the batch's writes in one transaction; then publish and answer.
    /// If the commit fails, roll back to the batch's snapshot: nothing of it
    /// is published, and every caller gets the error.
    async fn finish(&mut self, batch: Batch) {
        let Batch { before, writes, answers, after_commit } = batch;
        let result = if writes.is_empty() { Ok(()) } else { self.deps.writer.commit(writes).await.map(drop) };
        match result {
            Ok(()) => {
                for f in after_commit {
                    f();
                }
                self.publish();
                for a in answers {
                    a(Ok(()));
                }
            }
            Err(e) => {
                warn!(error = %e, commands = answers.len(), "store commit failed; the commands are undone and nothing is published");
                let Snapshot { clusters, tokens, suspended, index, version, dirty } = before;
                self.clusters = clusters;
                self.tokens = tokens;
                self.suspended = suspended;
                self.index = index;
                self.version = version;
                self.dirty = dirty;
                self.pending_desired.clear();
                let msg = e.to_string();
                for a in answers {
                    a(Err(Error::Store(msg.clone())));
                }
            }
        }
    }

    /// Make the actor's state visible: the clusters' new desired sets, then
    /// the fleet view. Called only when everything they show is committed.
    fn publish(&mut self) {
        for (_, (shared, desired)) in std::mem::take(&mut self.pending_desired) {
            shared.desired.send_replace(desired);
        }
        if self.dirty {
            self.dirty = false;
            self.view_tx.send_replace(Arc::new(FleetView {
                fleet: self.fleet.clone(),
                clusters: self.clusters.clone(),
                index: self.index.clone(),
                records: self.records.clone(),
                builds: self.builds.clone(),
                suspended: self.suspended.clone(),
            }));
        }
    }

    fn rebuild_index(&mut self) {
        self.index = Arc::new(DesiredIndex::build(&self.fleet, &self.records, &self.suspended, &self.index));
        self.dirty = true;
    }

    /// Recompute the desired set of `only` clusters (all when `None`); those
    /// whose set changed get it at the next [`Actor::publish`].
    fn retarget(&mut self, only: Option<&str>) {
        let clusters = self.clusters.clone();
        let targets: Box<dyn Iterator<Item = &ClusterEntry>> = match only {
            Some(n) => Box::new(clusters.get(n).into_iter()),
            None => Box::new(clusters.values()),
        };
        let mut changed = 0usize;
        for entry in targets {
            let bundles = self.index.for_cluster(&self.fleet, &entry.record.name, &entry.record.labels);
            let current = match self.pending_desired.get(&entry.record.name) {
                Some((_, d)) => d.clone(),
                None => entry.shared.desired.borrow().clone(),
            };
            if same_bundles(&current.bundles, &bundles) && (current.version > 0 || bundles.is_empty()) {
                continue;
            }
            self.version += 1;
            self.pending_desired.insert(
                entry.record.name.clone(),
                (entry.shared.clone(), Arc::new(ClusterDesired { version: self.version, bundles })),
            );
            changed += 1;
        }
        if changed > 0 {
            self.dirty = true;
        }
    }

    /// Apply one command to the actor's state; its writes and answer join
    /// `batch` (committed and published by [`Actor::finish`]).
    async fn handle(&mut self, cmd: Cmd, batch: &mut Batch) {
        match cmd {
            Cmd::Register(input, reply) => match self.register(input) {
                Ok((writes, out, replaced)) => {
                    batch.add(writes, reply, out);
                    if let Some(shared) = replaced {
                        batch.after_commit.push(Box::new(move || shared.kill_sessions()));
                    }
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Cmd::Renew { cluster, serial, csr_pem, reply } => match self.renew(&cluster, &serial, &csr_pem) {
                Ok((writes, out)) => batch.add(writes, reply, out),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Cmd::Revoke { cluster, reply } => match self.revoke(&cluster) {
                Ok((writes, shared)) => {
                    batch.add(writes, reply, ());
                    // Open sessions close once the revocation is durable.
                    batch.after_commit.push(Box::new(move || shared.kill_sessions()));
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Cmd::SetLabels { cluster, labels, reply } => match self.set_labels(&cluster, labels) {
                Ok(writes) => batch.add(writes, reply, ()),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Cmd::SetSuspended { bundle, suspended, reply } => match self.set_suspended(&bundle, suspended) {
                Ok(writes) => batch.add(writes, reply, ()),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Cmd::SetSourceSuspended { source, suspended, reply } => {
                if !self.fleet.sources.contains_key(&source) {
                    let _ = reply.send(Err(Rejection::NotFound(format!(
                        "source {source:?} is not in the fleet config"
                    ))
                    .into()));
                    return;
                }
                if !self.deps.pipeline.statuses().borrow().contains_key(&source) {
                    let _ = reply.send(Err(Rejection::NotFound(format!("source {source:?}")).into()));
                    return;
                }
                let verb = if suspended { "suspended" } else { "resumed" };
                let writes = vec![
                    Write::SetSourceSuspended { source: source.clone(), suspended },
                    Write::AppendEvents(vec![hub_event(
                        self.deps.clock.now_ms(),
                        Severity::Info,
                        if suspended { "SourceSuspended" } else { "SourceResumed" },
                        "",
                        format!("source {source} {verb}"),
                    )]),
                ];
                batch.add(writes, reply, ());
                let pipeline = self.deps.pipeline.clone();
                batch.after_commit.push(Box::new(move || {
                    if let Err(e) = pipeline.set_suspended(&source, suspended) {
                        warn!(source = %source, error = %e, "the source pipeline refused a stored suspension");
                    }
                }));
            }
            Cmd::CreateToken(input, reply) => match self.create_token(input) {
                Ok((writes, out)) => batch.add(writes, reply, out),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Cmd::ReportApplied { cluster, applied } => {
                // Like SetFleet: the commands before it are committed and
                // published first, since re-signing commits on its own.
                let earlier = std::mem::replace(batch, self.begin());
                self.finish(earlier).await;
                self.recover_generations(&cluster, applied).await;
                self.publish();
                *batch = self.begin();
            }
            Cmd::SetFleet(fleet, reply) => {
                // The commands before it are committed and published first:
                // signing new generations commits on its own.
                let earlier = std::mem::replace(batch, self.begin());
                self.finish(earlier).await;
                self.fleet = fleet;
                self.rebuild_index();
                // Bundles new to the fleet may already have builds.
                self.on_builds().await;
                self.rebuild_index();
                self.retarget(None);
                self.publish();
                *batch = self.begin();
                info!(
                    bundles = self.fleet.bundles.len(),
                    sources = self.fleet.sources.len(),
                    "fleet config in force"
                );
                if let Some(r) = reply {
                    let _ = r.send(Ok(()));
                }
            }
        }
    }

    fn register(
        &mut self,
        input: RegisterInput,
    ) -> Result<(Vec<Write>, RegisterOutput, Option<Arc<ClusterShared>>)> {
        let now = self.deps.clock.now_ms();
        let mut replaced = None;
        validate_name(&input.cluster).map_err(|e| Rejection::InvalidArgument(e.to_string()))?;
        if input.cluster == HUB_EVENT_SOURCE {
            // Events the hub records carry this name: a cluster with it would
            // pass as the hub in the event log and in alerts.
            return Err(Rejection::InvalidArgument(format!(
                "cluster name {HUB_EVENT_SOURCE:?} is reserved for the hub's own events"
            ))
            .into());
        }
        let parsed = tokens::parse_token(&input.token)?;
        let existing = self.clusters.get(&input.cluster).map(|e| e.record.clone());
        let token = self.tokens.get(parsed.id).cloned();
        check_registration(token.as_ref(), parsed.secret, &input.cluster, existing.as_deref(), now)?;
        let mut token = token.expect("checked above");
        let cert = self.deps.ca.issue_from_csr(
            &input.csr_pem,
            &Identity::Cluster(input.cluster.clone()),
            self.deps.cluster_cert_ttl,
            now,
        )?;
        token.uses += 1;
        // Labels come from the token (and operators), never from the agent,
        // except for the keys the token allows it to propose.
        let (labels, ignored) = tokens::registration_labels(&token, &input.labels);
        let mut record = match &existing {
            // Re-registering a name ends every certificate it had: a thief
            // holding an old one loses it, and its open streams close.
            Some(r) => ClusterRecord { revoked: false, certs: Vec::new(), ..(**r).clone() },
            None => {
                ClusterRecord { name: input.cluster.clone(), registered_unix_ms: now, ..Default::default() }
            }
        };
        if existing.is_none() || existing.as_ref().is_some_and(|r| r.revoked) {
            record.labels = labels.clone();
        } else {
            // A re-registration keeps operator-set labels, plus the token's
            // (and the allowed proposals).
            record.labels.extend(labels);
        }
        record.add_cert(
            CertRef { serial: cert.serial.clone(), not_after_unix_ms: cert.not_after_unix_ms },
            now,
            CERTS_KEPT,
        );
        let labels = record.labels.clone();
        let record = Arc::new(record);
        let shared = match self.clusters.get(&input.cluster) {
            Some(e) => {
                // Re-registering a name ends the streams of its old
                // certificates, once the new record is committed.
                replaced = Some(e.shared.clone());
                e.shared.clone()
            }
            None => ClusterShared::new(
                &input.cluster,
                Liveness::default(),
                self.deps.statuses.cluster(&input.cluster),
            ),
        };
        shared.set_agent_version(&input.agent_version);
        shared.touch(now);
        Arc::make_mut(&mut self.clusters)
            .insert(input.cluster.clone(), ClusterEntry { record: record.clone(), shared });
        self.tokens.insert(token.id.clone(), token.clone());
        self.retarget(Some(&input.cluster));
        self.dirty = true;
        self.deps.metrics.registrations.get_or_create(&crate::metrics::ResultLabels { result: "ok" }).inc();
        info!(cluster = %input.cluster, token_id = %token.id, serial = %cert.serial, "cluster registered");
        let writes = vec![
            Write::PutToken(token.clone()),
            Write::PutCluster((*record).clone()),
            Write::AppendEvents(vec![hub_event(
                self.deps.clock.now_ms(),
                Severity::Info,
                "ClusterRegistered",
                "",
                if ignored.is_empty() {
                    format!("cluster {} registered with token {}", input.cluster, token.id)
                } else {
                    format!(
                        "cluster {} registered with token {}; labels the agent proposed and the token does not allow were ignored: {}",
                        input.cluster,
                        token.id,
                        ignored.join(",")
                    )
                },
            )]),
        ];
        Ok((writes, RegisterOutput { cert, labels }, replaced))
    }

    fn entry(&self, cluster: &str) -> Result<&ClusterEntry> {
        self.clusters.get(cluster).ok_or_else(|| Rejection::NotFound(format!("cluster {cluster:?}")).into())
    }

    fn renew(&mut self, cluster: &str, serial: &str, csr_pem: &str) -> Result<(Vec<Write>, IssuedCert)> {
        let now = self.deps.clock.now_ms();
        let entry = self.entry(cluster)?.clone();
        if entry.record.revoked {
            return Err(Rejection::PermissionDenied(format!("cluster {cluster:?} was revoked")).into());
        }
        crate::domain::tokens::check_renewal(&entry.record, serial)?;
        let cert = self.deps.ca.issue_from_csr(
            csr_pem,
            &Identity::Cluster(cluster.into()),
            self.deps.cluster_cert_ttl,
            now,
        )?;
        let mut record = (*entry.record).clone();
        record.add_cert(
            CertRef { serial: cert.serial.clone(), not_after_unix_ms: cert.not_after_unix_ms },
            now,
            CERTS_KEPT,
        );
        Arc::make_mut(&mut self.clusters)
            .insert(cluster.into(), ClusterEntry { record: Arc::new(record.clone()), shared: entry.shared });
        self.dirty = true;
        info!(cluster, serial = %cert.serial, "certificate renewed");
        let writes = vec![
            Write::PutCluster(record),
            Write::AppendEvents(vec![hub_event(
                self.deps.clock.now_ms(),
                Severity::Info,
                "CertificateRenewed",
                "",
                format!("cluster {cluster} renewed its certificate (serial {})", cert.serial),
            )]),
        ];
        Ok((writes, cert))
    }

    /// Revoke: the writes, and the cluster whose sessions close once they are committed.
    fn revoke(&mut self, cluster: &str) -> Result<(Vec<Write>, Arc<ClusterShared>)> {
        let entry = self.entry(cluster)?.clone();
        let record = ClusterRecord { revoked: true, certs: Vec::new(), ..(*entry.record).clone() };
        let shared = entry.shared.clone();
        Arc::make_mut(&mut self.clusters)
            .insert(cluster.into(), ClusterEntry { record: Arc::new(record.clone()), shared: entry.shared });
        self.dirty = true;
        warn!(cluster, "cluster revoked");
        let writes = vec![
            Write::PutCluster(record),
            Write::AppendEvents(vec![hub_event(
                self.deps.clock.now_ms(),
                Severity::Warning,
                "ClusterRevoked",
                "",
                format!("cluster {cluster} was revoked; its certificates no longer work"),
            )]),
        ];
        Ok((writes, shared))
    }

    fn set_labels(&mut self, cluster: &str, labels: Labels) -> Result<Vec<Write>> {
        for k in labels.keys() {
            if k.is_empty() || k.contains(char::is_whitespace) {
                return Err(Rejection::InvalidArgument(format!("bad label key {k:?}")).into());
            }
        }
        let entry = self.entry(cluster)?.clone();
        let record = ClusterRecord { labels, ..(*entry.record).clone() };
        Arc::make_mut(&mut self.clusters)
            .insert(cluster.into(), ClusterEntry { record: Arc::new(record.clone()), shared: entry.shared });
        self.retarget(Some(cluster));
        self.dirty = true;
        Ok(vec![
            Write::PutCluster(record.clone()),
            Write::AppendEvents(vec![hub_event(
                self.deps.clock.now_ms(),
                Severity::Info,
                "ClusterLabelsChanged",
                "",
                format!("cluster {cluster} labels set to {}", convoy_core::labels::format(&record.labels)),
            )]),
        ])
    }

    fn set_suspended(&mut self, bundle: &str, suspended: bool) -> Result<Vec<Write>> {
        if !self.fleet.bundles.contains_key(bundle) {
            return Err(Rejection::NotFound(format!("bundle {bundle:?}")).into());
        }
        let s = Arc::make_mut(&mut self.suspended);
        if suspended {
            s.insert(bundle.into());
        } else {
            s.remove(bundle);
        }
        self.rebuild_index();
        self.retarget(None);
        Ok(vec![
            Write::SetSuspended { bundle: bundle.into(), suspended },
            Write::AppendEvents(vec![hub_event(
                self.deps.clock.now_ms(),
                Severity::Info,
                if suspended { "BundleSuspended" } else { "BundleResumed" },
                bundle,
                format!("bundle {bundle} {}", if suspended { "suspended" } else { "resumed" }),
            )]),
        ])
    }

    fn create_token(&mut self, input: TokenInput) -> Result<(Vec<Write>, TokenOutput)> {
        if let Some(c) = &input.cluster {
            validate_name(c).map_err(|e| Rejection::InvalidArgument(e.to_string()))?;
        }
        tokens::check_token_input(
            input.cluster.as_deref(),
            input.name_prefix.as_deref(),
            &input.agent_label_keys,
        )?;
        let now = self.deps.clock.now_ms();
        let id = random_b64(9);
        let secret = random_b64(32);
        let ttl = if input.ttl.is_zero() { Duration::from_secs(86400) } else { input.ttl };
        let rec = TokenRecord {
            id: id.clone(),
            hash: tokens::hash_secret(&secret),
            created_unix_ms: now,
            expires_unix_ms: now.saturating_add(ttl.as_millis().min(i64::MAX as u128) as i64),
            single_use: input.single_use,
            uses: 0,
            cluster: input.cluster.clone(),
            labels: input.labels,
            name_prefix: input.name_prefix.clone(),
            agent_label_keys: input.agent_label_keys.clone(),
        };
        self.tokens.retain(|_, t| t.expires_unix_ms > now);
        self.tokens.insert(id.clone(), rec.clone());
        info!(token_id = %id, cluster = ?input.cluster, single_use = input.single_use, "bootstrap token created");
        let out = TokenOutput {
            token: tokens::format_token(&id, &secret),
            id: id.clone(),
            expires_unix_ms: rec.expires_unix_ms,
        };
        let writes = vec![
            Write::PutToken(rec),
            Write::AppendEvents(vec![hub_event(
                self.deps.clock.now_ms(),
                Severity::Info,
                "TokenCreated",
                "",
                format!(
                    "bootstrap token {id} created{}",
                    input.cluster.map(|c| format!(" for cluster {c}")).unwrap_or_default()
                ),
            )]),
        ];
        Ok((writes, out))
    }

    /// Turn new digests into signed generations (committed before anyone sees
    /// them), record build failures as events, and re-target.
    async fn on_builds(&mut self) {
        let mut writes = Vec::new();
        let mut new_records = Vec::new();
        let mut events = Vec::new();
        for (name, state) in self.builds.iter() {
            if !self.fleet.bundles.contains_key(name) {
                continue;
            }
            match &state.error {
                Some(err) => {
                    let message = format!("{}: {}", err.reason, err.message);
                    if self.reported_errors.get(name) != Some(&message) {
                        warn!(bundle = %name, error = %message, "bundle build failed; the last good generation stays");
                        self.reported_errors.insert(name.clone(), message.clone());
                        events.push(hub_event(
                            self.deps.clock.now_ms(),
                            Severity::Error,
                            "BuildFailed",
                            name,
                            message,
                        ));
                    }
                }
                None => {
                    self.reported_errors.remove(name);
                }
            }
            let Some(art) = &state.artifact else { continue };
            let current = self.records.get(name);
            let Some(generation) = next_generation(current.map(|r| &**r), art) else { continue };
            let generation = above_floor(generation, self.floors.get(name).copied().unwrap_or(0));
            let statement =
                Statement::new(name, &art.source_url, &art.revision, &art.digest, art.size, generation);
            let (bytes, signature) = match self.deps.signer.sign_statement(&statement) {
                Ok(x) => x,
                Err(e) => {
                    warn!(bundle = %name, error = %e, "cannot sign statement");
                    continue;
                }
            };
            let rec = DeploymentRecord {
                bundle: name.clone(),
                generation,
                digest: art.digest.clone(),
                size: art.size,
                revision: art.revision.clone(),
                source: art.source.clone(),
                statement: bytes,
                signature,
                created_unix_ms: self.deps.clock.now_ms(),
            };
            info!(bundle = %name, generation, digest = %art.digest, revision = %art.revision, "new bundle generation");
            events.push(hub_event(
                self.deps.clock.now_ms(),
                Severity::Info,
                "NewGeneration",
                name,
                format!("generation {generation} of {name}: {} ({})", art.revision, art.digest),
            ));
            writes.push(Write::PutDeployment(rec.clone()));
            new_records.push(rec);
        }
        if !events.is_empty() {
            writes.push(Write::AppendEvents(events));
        }
        if writes.is_empty() {
            self.dirty = true;
            return;
        }
        if !new_records.is_empty() {
            // Agents see a generation only once it is durable: a restart must
            // never re-sign the same generation for another digest.
            if let Err(e) = self.deps.writer.commit(writes).await {
                warn!(error = %e, "cannot store new generations; agents keep the previous ones");
                return;
            }
            let m = Arc::make_mut(&mut self.records);
            for r in new_records {
                m.insert(r.bundle.clone(), Arc::new(r));
                self.deps.metrics.generations_created.inc();
            }
            self.rebuild_index();
            self.retarget(None);
        } else {
            drop(self.deps.writer.submit(writes).await);
        }
        self.dirty = true;
    }
}

impl Actor {
    /// An agent holds generations above the hub's (a hub restored from an old
    /// backup, or started empty with the same signing key): re-sign the
    /// current artifact of each such bundle above them, commit, then publish,
    /// so agents take it instead of refusing the hub forever. Only bundles
    /// targeted at the reporting cluster count.
    async fn recover_generations(&mut self, cluster: &str, applied: Vec<(String, u64, String)>) {
        let Some(entry) = self.clusters.get(cluster) else { return };
        let targeted = entry.shared.desired().bundles.clone();
        let mut writes = Vec::new();
        let mut new_records = Vec::new();
        let mut events = Vec::new();
        for (bundle, reported, digest) in applied {
            let Some(cur) = self.records.get(&bundle).cloned() else {
                // Not built yet: its first build goes above the floor.
                if self.fleet.bundles.contains_key(&bundle) {
                    let f = self.floors.entry(bundle).or_default();
                    *f = (*f).max(reported);
                }
                continue;
            };
            if !targeted.contains_key(&bundle) {
                continue;
            }
            let Some(generation) = recovery_generation(&cur, reported, &digest) else { continue };
            let Ok(st) = serde_json::from_slice::<Statement>(&cur.statement) else { continue };
            let statement =
                Statement::new(&bundle, &st.source.url, &cur.revision, &cur.digest, cur.size, generation);
            let (bytes, signature) = match self.deps.signer.sign_statement(&statement) {
                Ok(x) => x,
                Err(e) => {
                    warn!(bundle = %bundle, error = %e, "cannot sign statement");
                    continue;
                }
            };
            warn!(bundle = %bundle, cluster, reported, hub = cur.generation, generation, "an agent holds a newer generation than the hub; continuing above it");
            events.push(hub_event(
                self.deps.clock.now_ms(), Severity::Warning,
                "GenerationRecovered",
                &bundle,
                format!(
                    "cluster {cluster} holds generation {reported} of {bundle} but the hub was at {} (restored or restarted without its state); re-signed the current artifact as generation {generation}",
                    cur.generation
                ),
            ));
            let rec = DeploymentRecord {
                generation,
                statement: bytes,
                signature,
                created_unix_ms: self.deps.clock.now_ms(),
                ..(*cur).clone()
            };
            writes.push(Write::PutDeployment(rec.clone()));
            new_records.push(rec);
        }
        if new_records.is_empty() {
            return;
        }
        writes.push(Write::AppendEvents(events));
        // Durable before visible, as for new builds.
        if let Err(e) = self.deps.writer.commit(writes).await {
            warn!(error = %e, "cannot store recovered generations");
            return;
        }
        let m = Arc::make_mut(&mut self.records);
        for r in new_records {
            m.insert(r.bundle.clone(), Arc::new(r));
            self.deps.metrics.generations_created.inc();
        }
        self.rebuild_index();
        self.retarget(None);
        self.dirty = true;
    }
}

fn random_b64(n: usize) -> String {
    use base64::Engine;
    let bytes: Vec<u8> = (0..n).map(|_| rand::random::<u8>()).collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The build state of a bundle, for views.
pub fn build_of<'a>(view: &'a FleetView, bundle: &str) -> Option<&'a BundleBuildState> {
    view.builds.get(bundle)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use crate::now_ms;

    use tokio::sync::broadcast;

    use super::*;
    use crate::domain::{EventFilter, StoredEvent};
    use crate::pipeline::{SourcePipeline, StaticPipeline};
    use crate::store::{Store, WriteOutcome};

    /// A store whose commits fail while `fail` is set.
    #[derive(Default)]
    struct FlakyStore {
        fail: AtomicBool,
        commits: AtomicUsize,
    }

    impl Store for FlakyStore {
        fn load(&self) -> Result<Loaded> {
            Ok(Loaded::default())
        }
        fn last_seq(&self, _: &str, _: u64) -> Result<u64> {
            Ok(0)
        }
        fn list_events(&self, _: &EventFilter) -> Result<Vec<StoredEvent>> {
            Ok(Vec::new())
        }
        fn commit(&self, writes: Vec<Write>, _: i64) -> Result<Vec<WriteOutcome>> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(Error::Store("injected commit failure".into()));
            }
            self.commits.fetch_add(1, Ordering::SeqCst);
            Ok(writes.iter().map(|_| WriteOutcome::Done).collect())
        }
    }

    const FLEET: &str = r#"
apiVersion: convoy.dev/v1
kind: GitSource
metadata: {name: repo}
spec: {url: "https://git.example/fleet.git"}
---
apiVersion: convoy.dev/v1
kind: Bundle
metadata: {name: web}
spec:
  source: repo
  path: web
  targets: [{clusterSelector: {matchLabels: {env: prod}}}]
"#;

    struct Fixture {
        state: StateHandle,
        store: Arc<FlakyStore>,
        pipeline: Arc<StaticPipeline>,
        _dir: tempfile::TempDir,
        shutdown: CancellationToken,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            self.shutdown.cancel();
        }
    }

    /// A state actor over a [`FlakyStore`], with cluster `c1` (env=dev) and a
    /// signed generation of `web` (which targets env=prod).
    fn fixture() -> Fixture {
        let pipeline = StaticPipeline::new(std::env::temp_dir());
        fixture_with(pipeline.builds())
    }

    fn fixture_with(builds: watch::Receiver<Builds>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let now = now_ms();
        let ca = Ca::load_or_create(&dir.path().join("ca.crt"), &dir.path().join("ca.key"), now).unwrap();
        let store = Arc::new(FlakyStore::default());
        let statuses = Arc::new(StatusIndex::default());
        let metrics = Arc::new(Metrics::new());
        let shutdown = CancellationToken::new();
        let (events, _) = broadcast::channel(16);
        let (writer, _) = crate::writer::spawn(
            store.clone(),
            statuses.clone(),
            Box::new(Vec::new),
            events,
            metrics.clone(),
            shutdown.clone(),
        );
        let pipeline = StaticPipeline::new(dir.path());
        let loaded = Loaded {
            clusters: vec![ClusterRecord {
                name: "c1".into(),
                labels: [("env".to_string(), "dev".to_string())].into(),
                ..Default::default()
            }],
            deployments: vec![DeploymentRecord {
                bundle: "web".into(),
                generation: 1,
                digest: format!("sha256:{}", "a".repeat(64)),
                size: 1,
                revision: "main@sha1:0".into(),
                source: "repo".into(),
                statement: Vec::new(),
                signature: Vec::new(),
                created_unix_ms: now,
            }],
            ..Default::default()
        };
        let fleet = Arc::new(FleetConfig::parse([("fleet.yaml", FLEET)]).unwrap());
        let (view_tx, _) = watch::channel(Arc::new(FleetView::default()));
        let (state, _) = spawn(
            loaded,
            fleet,
            builds,
            StateDeps {
                ca: Arc::new(ca),
                signer: Arc::new(SigningKey::generate().unwrap()),
                writer,
                metrics,
                cluster_cert_ttl: Duration::from_secs(3600),
                statuses,
                pipeline: pipeline.clone(),
                clock: convoy_core::clock::system(),
            },
            view_tx,
            shutdown.clone(),
        );
        Fixture { state, store, pipeline, _dir: dir, shutdown }
    }

    fn prod() -> Labels {
        [("env".to_string(), "prod".to_string())].into()
    }

    #[tokio::test]
    async fn a_failed_commit_publishes_nothing_and_the_next_one_publishes() {
        let f = fixture();
        // One round trip: the actor has started and published its first view.
        assert!(f.state.set_labels("nope".into(), prod()).await.is_err());
        let mut view = f.state.subscribe();
        view.borrow_and_update();
        let c1 = f.state.view().clusters["c1"].shared.clone();
        let mut desired = c1.subscribe_desired();
        assert!(desired.borrow_and_update().bundles.is_empty(), "env=dev gets nothing");

        f.store.fail.store(true, Ordering::SeqCst);
        // Labels that would retarget `web` to c1, a suspension, a token, a
        // revocation: each refused with the store's error, none visible.
        let e = f.state.set_labels("c1".into(), prod()).await.unwrap_err();
        assert!(matches!(e, Error::Store(_)), "{e}");
        assert!(f.state.set_suspended("web".into(), true).await.is_err());
        assert!(f.state.create_token(TokenInput::default()).await.is_err());
        assert!(f.state.revoke("c1".into()).await.is_err());
        assert!(f.state.set_source_suspended("repo".into(), true).await.is_err());
        assert!(!view.has_changed().unwrap(), "no view was published");
        assert!(!desired.has_changed().unwrap(), "no desired set was published");
        let v = f.state.view();
        assert_eq!(v.clusters["c1"].record.labels["env"], "dev");
        assert!(!v.clusters["c1"].record.revoked);
        assert!(v.suspended.is_empty());
        assert!(f.pipeline.actions().is_empty(), "the pipeline was not told: {:?}", f.pipeline.actions());
        assert_eq!(f.store.commits.load(Ordering::SeqCst), 0);

        // The actor's state was rolled back: the same change now commits and
        // is published, to queries and to the cluster's desired set.
        f.store.fail.store(false, Ordering::SeqCst);
        f.state.set_labels("c1".into(), prod()).await.unwrap();
        assert!(view.has_changed().unwrap());
        assert_eq!(f.state.view().clusters["c1"].record.labels["env"], "prod");
        assert!(desired.has_changed().unwrap());
        assert!(desired.borrow_and_update().bundles.contains_key("web"));
        assert_eq!(f.store.commits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_stored_source_suspension_reaches_the_pipeline() {
        let f = fixture();
        f.pipeline.set_source_status(SourceStatus { name: "repo".into(), ..Default::default() });
        f.state.set_source_suspended("repo".into(), true).await.unwrap();
        assert_eq!(f.store.commits.load(Ordering::SeqCst), 1);
        assert!(
            f.pipeline.actions().iter().any(|a| a.contains("repo")),
            "pipeline actions: {:?}",
            f.pipeline.actions()
        );
        let e = f.state.set_source_suspended("nope".into(), true).await.unwrap_err();
        assert!(matches!(e, Error::Rejected(Rejection::NotFound(_))), "{e}");
    }

    #[tokio::test]
    async fn a_stopped_pipeline_does_not_spin_the_actor() {
        // The pipeline's builds sender goes away: the actor keeps answering and
        // parks instead of polling the closed channel. On this current-thread
        // runtime every yield below would let a spinning actor take a turn.
        let (tx, rx) = watch::channel(Builds::default());
        let f = fixture_with(rx);
        f.state.create_token(TokenInput::default()).await.unwrap();
        drop(tx);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let before = TURNS.with(|t| t.get());
        for _ in 0..200 {
            tokio::task::yield_now().await;
        }
        assert_eq!(TURNS.with(|t| t.get()), before, "the actor loop ran with nothing to do");
        f.state.create_token(TokenInput::default()).await.unwrap();
        assert!(TURNS.with(|t| t.get()) > before, "a command is one more turn");
    }
}
