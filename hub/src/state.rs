//! The fleet state actor: the one writer of clusters, tokens, signed bundle
//! generations and the desired-state index.
//!
//! It applies operator and registration commands, turns new builds into signed
//! generations (and, per cluster, into signed variants: [`crate::variants`]),
//! re-targets bundles when the fleet config, a cluster's labels or vars or
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

use crate::domain::commands::AgentCommand;
use crate::domain::desired::{
    ClusterDesired, DesiredIndex, FleetPlacements, Placed, above_floor, next_generation, recovery_generation,
    same_bundles,
};
use crate::domain::tokens::{self, check_registration};
use crate::domain::variants::VariantRecord;
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

#[path = "ha/apply.rs"]
mod remote;

#[path = "state/builds.rs"]
mod builds;
use builds::VariantBuilds;

#[cfg(test)]
#[path = "state/helm_tests.rs"]
mod helm_tests;

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
    /// The open Sync session: its id, its token and its command queue.
    session: Mutex<Option<(u64, CancellationToken, mpsc::Sender<AgentCommand>)>>,
    liveness_dirty: AtomicBool,
    /// The Kubernetes version and API versions the agent reported in its Hello.
    kube: ArcSwap<(String, Vec<String>)>,
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
            kube: ArcSwap::from_pointee((liveness.kube_version.clone(), liveness.api_versions.clone())),
        })
    }

    /// The Kubernetes version the agent reported ("" until it has).
    pub fn kube_version(&self) -> String {
        self.kube.load().0.clone()
    }

    /// The API versions (`group/version`) the agent's cluster serves.
    pub fn api_versions(&self) -> Vec<String> {
        self.kube.load().1.clone()
    }

    /// Record what the agent reported (persisted with the liveness); whether
    /// the Kubernetes version or the API versions changed (either changes a
    /// Helm bundle's render on this cluster).
    pub fn set_kube(&self, version: &str, api_versions: &[String]) -> bool {
        let cur = self.kube.load();
        if cur.0 == version && cur.1 == api_versions {
            return false;
        }
        self.kube.store(Arc::new((version.to_string(), api_versions.to_vec())));
        self.liveness_dirty.store(true, Ordering::Relaxed);
        true
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
            kube_version: self.kube_version(),
            api_versions: self.api_versions(),
        }
    }

    /// A Sync session starts: the previous one of this cluster (a half-dead
    /// connection the agent gave up on) is closed. Returns the session id.
    /// Commands for the agent go to `commands` (crate::grpc::session sends them).
    pub(crate) fn begin_session(
        &self,
        token: CancellationToken,
        commands: mpsc::Sender<AgentCommand>,
    ) -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        if let Some((_, old, _)) = self.session.lock().replace((id, token, commands)) {
            old.cancel();
        }
        self.streams.fetch_add(1, Ordering::Relaxed);
        id
    }

    /// A Sync session ended.
    pub(crate) fn end_session(&self, id: u64) {
        let mut s = self.session.lock();
        if s.as_ref().is_some_and(|(cur, _, _)| *cur == id) {
            *s = None;
        }
        drop(s);
        self.streams.fetch_sub(1, Ordering::Relaxed);
    }

    /// Close every open session of this cluster (revocation).
    pub(crate) fn kill_sessions(&self) {
        if let Some((_, t, _)) = self.session.lock().take() {
            t.cancel();
        }
    }

    /// Queue a command for the agent's open Sync session on this replica.
    /// Fails when no session is open here, or its command queue is full.
    pub fn send_command(&self, cmd: AgentCommand) -> std::result::Result<(), CommandRefused> {
        let tx = match &*self.session.lock() {
            Some((_, _, tx)) => tx.clone(),
            None => return Err(CommandRefused::NotConnected),
        };
        tx.try_send(cmd).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => CommandRefused::Busy,
            mpsc::error::TrySendError::Closed(_) => CommandRefused::NotConnected,
        })
    }

    /// Whether a Sync session of this cluster is open on this replica.
    pub fn has_session(&self) -> bool {
        self.session.lock().is_some()
    }
}

/// Why a command could not be queued for an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandRefused {
    /// No Sync session of the cluster on this replica.
    NotConnected,
    /// The session's command queue is full.
    Busy,
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
    /// Progressive rollouts, by bundle.
    pub rollouts: Arc<BTreeMap<String, Arc<crate::domain::rollout::RolloutRecord>>>,
    /// The signed per-cluster variants, by (bundle, variant key).
    pub variants: Arc<BTreeMap<(String, String), Arc<DeploymentRecord>>>,
    /// Each cluster's non-base placements, by cluster then bundle.
    pub placements: FleetPlacements,
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
    /// An operator's command on a bundle's rollout (`who` names the caller).
    Rollout {
        bundle: String,
        cmd: crate::domain::rollout::Command,
        who: String,
        reply: Reply<()>,
    },
    /// `convoy vars`: set and unset a cluster's variables.
    SetVars {
        cluster: String,
        set: BTreeMap<String, String>,
        unset: Vec<String>,
        reply: Reply<BTreeMap<String, String>>,
    },
    /// Recompute one cluster's variants (its agent reported a new
    /// Kubernetes version); answered once published.
    RefreshVariants(String, Reply<()>),
    /// Delete variant artifacts nothing references any more; answers how many.
    CollectVariants(Reply<usize>),
    /// What another hub replica committed at one store revision ([`crate::ha`]).
    Remote(Vec<crate::ha::RemoteChange>),
}

/// Sends commands to the state actor.
#[derive(Clone)]
pub struct StateHandle {
    tx: mpsc::Sender<Cmd>,
    view: watch::Receiver<Arc<FleetView>>,
    ready: watch::Receiver<bool>,
}

impl StateHandle {
    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Cmd) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| Error::ShuttingDown)?;
        rx.await.unwrap_or(Err(Error::ShuttingDown))
    }

    /// Wait until the actor has computed every cluster's variants once after
    /// start (before that, a customized bundle is missing from a cluster's
    /// desired set, and a snapshot sent then would remove it). `false` if
    /// not ready within `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut r = self.ready.clone();
        tokio::time::timeout(timeout, r.wait_for(|v| *v)).await.is_ok_and(|r| r.is_ok())
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

    /// An operator's command on a bundle's rollout, recorded as an event
    /// naming `who`; answered once committed and published.
    pub async fn rollout_command(
        &self,
        bundle: String,
        cmd: crate::domain::rollout::Command,
        who: String,
    ) -> Result<()> {
        let b = bundle.clone();
        let r = self.call(|reply| Cmd::Rollout { bundle, cmd, who, reply }).await;
        r.map_err(|e| crate::rollout::command_error(e, &b, cmd))
    }

    /// Set (`set`) and remove (`unset`) variables of a cluster; returns its
    /// variables after the change. Only that cluster's variants are recomputed.
    pub async fn set_vars(
        &self,
        cluster: String,
        set: BTreeMap<String, String>,
        unset: Vec<String>,
    ) -> Result<BTreeMap<String, String>> {
        self.call(|reply| Cmd::SetVars { cluster, set, unset, reply }).await
    }

    /// Delete the variant artifacts no cluster, rollout or current variant
    /// references (older than the grace period); returns how many. The hub
    /// also does this every [`crate::variants::GC_INTERVAL`].
    pub async fn collect_variants(&self) -> Result<usize> {
        self.call(Cmd::CollectVariants).await
    }

    /// Recompute a cluster's variants; returns once the result is published.
    pub async fn refresh_variants(&self, cluster: String) -> Result<()> {
        self.call(|r| Cmd::RefreshVariants(cluster, r)).await
    }

    /// Apply what another hub replica committed (already durable): the
    /// actor applies it and publishes. Errors only when the actor is gone.
    pub async fn apply_remote(&self, changes: Vec<crate::ha::RemoteChange>) -> Result<()> {
        self.tx.send(Cmd::Remote(changes)).await.map_err(|_| Error::ShuttingDown)
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
    /// Where per-cluster variant artifacts are stored.
    pub variant_store: Arc<crate::variants::VariantStore>,
    /// How often active rollouts are decided on the timer (soak and
    /// deadlines pass with time); changed statuses also trigger a decision.
    /// [`crate::rollout::TICK`] in the hub.
    pub rollout_tick: Duration,
    /// The other hub replicas ([`crate::ha`]): whether this one runs the
    /// rollouts (leader) and which bundles it signs; default: a hub alone.
    pub ha: crate::ha::Coordination,
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
    /// Progressive rollouts ([`crate::rollout`]).
    rollouts: crate::rollout::Rollouts,
    /// Signed variants by (bundle, key), and the base digest each was built from.
    variants: Arc<BTreeMap<(String, String), Arc<DeploymentRecord>>>,
    variant_bases: HashMap<(String, String), String>,
    /// Each cluster's placements of customized bundles.
    placements: FleetPlacements,
    /// Clusters whose variants must be recomputed after this batch.
    variants_pending: BTreeSet<String>,
    /// Caches: variables used per base digest; build result per (base digest, key).
    used_cache: HashMap<(String, String), Arc<BTreeMap<convoy_core::substitute::Variable, bool>>>,
    built_cache: HashMap<(String, String), std::result::Result<crate::variants::Built, String>>,
    /// Variant failures already reported as events: (cluster, bundle) → message.
    reported_variant_errors: HashMap<(String, String), String>,
    /// Set once the first variant computation after start is published
    /// (and the builds it started are done).
    ready_tx: watch::Sender<bool>,
    /// Clusters waiting for a variant another replica signs ([`crate::ha`]):
    /// placed again when the change feed brings one.
    variants_awaited: BTreeSet<String>,
    /// When to sign the builds again after their commit failed.
    retry_builds_at: Option<tokio::time::Instant>,
    /// Variant builds run off the actor's turn ([`crate::variants::spawn_builder`]).
    builder: VariantBuilds,
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
    let deps_store = deps.variant_store.clone();
    let deps_ha = deps.ha.clone();
    let mut variants = BTreeMap::new();
    let mut variant_bases = HashMap::new();
    for v in loaded.variants {
        let k = (v.record.bundle.clone(), v.key.clone());
        variant_bases.insert(k.clone(), v.base_digest);
        variants.insert(k, Arc::new(v.record));
    }
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
        rollouts: crate::rollout::Rollouts::load(loaded.rollouts),
        variants: Arc::new(variants),
        variant_bases,
        placements: FleetPlacements::default(),
        variants_pending: BTreeSet::new(),
        used_cache: HashMap::new(),
        built_cache: HashMap::new(),
        reported_variant_errors: HashMap::new(),
        ready_tx: watch::Sender::new(false),
        variants_awaited: BTreeSet::new(),
        retry_builds_at: None,
        builder: {
            let (tx, rx) = crate::variants::spawn_builder(deps_store, deps_ha, shutdown.clone());
            VariantBuilds {
                tx,
                rx: Some(rx),
                in_flight: HashMap::new(),
                retries: HashMap::new(),
                deferred: Vec::new(),
            }
        },
    };
    actor.rebuild_index();
    actor.retarget(None);
    actor.publish();
    let (tx, rx) = mpsc::channel(4096);
    let handle = StateHandle { tx, view: actor.view_tx.subscribe(), ready: actor.ready_tx.subscribe() };
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
    /// The clusters [`Actor::retarget`] recomputed on this thread, in order.
    static RETARGETED: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
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
    /// The rollouts before a command of this batch changed them.
    rollouts_before: Option<crate::rollout::Rollouts>,
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
        let mut built = self.builder.rx.take().expect("the builder's results are taken once");
        // Builds present at start are processed now (new digests since the last run).
        self.on_builds().await;
        self.publish();
        self.ready_if_idle();
        let mut pipeline_open = true;
        let mut gc_tick = tokio::time::interval_at(
            tokio::time::Instant::now() + crate::variants::GC_INTERVAL,
            crate::variants::GC_INTERVAL,
        );
        gc_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rollout_tick = tokio::time::interval(self.deps.rollout_tick);
        rollout_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Rollouts are also decided when statuses change (a wave completes
        // as its last cluster turns Ready, not at the next timer tick), at
        // most once per STATUS_TICK_SPACING.
        let statuses = self.deps.statuses.clone();
        let mut status_tick: Option<tokio::time::Instant> = None;
        let mut last_tick = tokio::time::Instant::now();
        // Only the leader runs the rollouts' state machines; the others
        // follow their records through the change feed ([`crate::ha`]).
        let mut leader = self.deps.ha.leadership.watch();
        let mut leader_open = true;
        // A replica taking a source's lock (or leadership) signs what its
        // clusters waited for from the previous holder.
        let mut held = self.deps.ha.leadership.held_watch();
        loop {
            let leads = *leader.borrow_and_update();
            let retry_at = self.retry_builds_at;
            let due = status_tick;
            tokio::select! {
                _ = rollout_tick.tick(), if leads && self.rollouts.is_active() => {
                    self.tick_rollouts().await;
                    last_tick = tokio::time::Instant::now();
                }
                _ = statuses.changed(), if due.is_none() && leads && self.rollouts.is_active() => {
                    status_tick = Some((last_tick + crate::rollout::STATUS_TICK_SPACING).max(tokio::time::Instant::now()));
                }
                _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                    status_tick = None;
                    if leads {
                        self.tick_rollouts().await;
                        last_tick = tokio::time::Instant::now();
                    }
                }
                r = leader.changed(), if leader_open => {
                    // Wakes the loop: a new leader ticks at once.
                    if r.is_err() {
                        leader_open = false;
                    } else if *leader.borrow() {
                        info!("this replica leads: it runs the rollouts");
                        self.on_locks_changed().await;
                    }
                }
                r = async {
                    match held.as_mut() {
                        Some(h) => h.changed().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if r.is_err() {
                        held = None;
                    } else {
                        self.on_locks_changed().await;
                    }
                }
                _ = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)), if retry_at.is_some() => {
                    self.retry_builds_at = None;
                    self.on_builds().await;
                }
                Some(done) = built.recv() => {
                    // Take every result already queued: one refresh of the
                    // clusters waiting on any of them, not one per build.
                    let mut all = vec![done];
                    while all.len() < 1024 {
                        match built.try_recv() {
                            Ok(d) => all.push(d),
                            Err(_) => break,
                        }
                    }
                    self.on_variants_built(all).await;
                }
                _ = gc_tick.tick() => self.collect_variants(None),
                _ = tokio::time::sleep_until(self.next_retry()), if !self.builder.retries.is_empty() => {
                    self.retry_due_builds().await;
                }
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
                    self.refresh_pending_variants().await;
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
            rollouts_before: None,
        }
    }

    /// Commit the batch's writes in one transaction; then publish and answer.
    /// If the commit fails, roll back to the batch's snapshot: nothing of it
    /// is published, and every caller gets the error.
    async fn finish(&mut self, batch: Batch) {
        let Batch { before, writes, answers, after_commit, rollouts_before } = batch;
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
                if let Some(r) = rollouts_before {
                    self.rollouts = r;
                }
                self.pending_desired.clear();
                self.variants_pending.clear();
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
                rollouts: Arc::new(self.rollouts.all().clone()),
                variants: self.variants.clone(),
                placements: self.placements.clone(),
            }));
        }
    }

    fn rebuild_index(&mut self) {
        self.index = Arc::new(
            DesiredIndex::build(&self.fleet, &self.records, &self.suspended, &self.index)
                .with_variants(&self.variants, &self.index),
        );
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
            #[cfg(test)]
            RETARGETED.with(|r| r.borrow_mut().push(entry.record.name.clone()));
            let current = match self.pending_desired.get(&entry.record.name) {
                Some((_, d)) => d.clone(),
                None => entry.shared.desired.borrow().clone(),
            };
            let (labels, _) = self.fleet.cluster_facts(&entry.record.name, &entry.record.labels);
            let mut bundles = self.index.for_cluster_placed(
                &self.fleet,
                &entry.record.name,
                &labels,
                self.placements.get(&entry.record.name).map(|p| &**p),
                &current.bundles,
            );
            self.rollouts.overlay(&self.fleet, &entry.record.name, &mut bundles);
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
                if !self.fleet.has_source(&source) {
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
            Cmd::Rollout { bundle, cmd, who, reply } => {
                let now = self.deps.clock.now_ms();
                let computed = self.computed_fn();
                match self.rollouts.command(&bundle, cmd, &who, &computed, &self.deps.signer, now) {
                    Ok(p) => {
                        // Installed now (and re-targeted); published only after
                        // the batch commits, undone with the batch otherwise.
                        batch.writes.extend(p.writes.iter().cloned());
                        batch.rollouts_before.get_or_insert_with(|| self.rollouts.clone());
                        self.rollouts.install(p);
                        self.retarget(None);
                        // The view shows the rollout's new state.
                        self.dirty = true;
                        batch.add(Vec::new(), reply, ());
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Cmd::SetVars { cluster, set, unset, reply } => {
                // Answered once the cluster's variants are recomputed and
                // published, so `convoy vars` then `convoy render` agree. The
                // commands before it are committed and published first.
                let earlier = std::mem::replace(batch, self.begin());
                self.finish(earlier).await;
                let before = self.clusters.clone();
                let result = match self.set_vars(&cluster, set, unset) {
                    Ok((writes, vars)) => match self.deps.writer.commit(writes).await {
                        Ok(_) => {
                            self.refresh_variants(Some(&cluster)).await;
                            Ok(vars)
                        }
                        Err(e) => {
                            self.clusters = before;
                            Err(Error::Store(e.to_string()))
                        }
                    },
                    Err(e) => Err(e),
                };
                self.publish();
                self.answer_when_built(&cluster, Box::new(move || drop(reply.send(result))));
                *batch = self.begin();
            }
            Cmd::CollectVariants(reply) => self.collect_variants(Some(reply)),
            Cmd::RefreshVariants(cluster, reply) => {
                let earlier = std::mem::replace(batch, self.begin());
                self.finish(earlier).await;
                self.refresh_variants(Some(&cluster)).await;
                self.publish();
                self.answer_when_built(&cluster, Box::new(move || drop(reply.send(Ok(())))));
                *batch = self.begin();
            }
            Cmd::Remote(changes) => {
                // Durable already: the earlier commands commit first, then
                // the remote changes are applied and published.
                let earlier = std::mem::replace(batch, self.begin());
                self.finish(earlier).await;
                self.apply_remote(changes);
                self.publish();
                *batch = self.begin();
            }
            Cmd::SetFleet(fleet, reply) => {
                // The commands before it are committed and published first:
                // signing new generations commits on its own.
                let earlier = std::mem::replace(batch, self.begin());
                self.finish(earlier).await;
                self.fleet = fleet;
                // Patches (and so the variables used) and layers may have changed.
                self.used_cache.clear();
                self.built_cache.retain(|_, r| r.is_ok());
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
        self.variants_pending.insert(input.cluster.clone());
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
        self.variants_pending.insert(cluster.to_string());
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

    /// New builds or a new fleet config: sign the new base artifacts, then
    /// recompute every cluster's variants.
    async fn on_builds(&mut self) {
        self.sign_base_builds().await;
        self.refresh_variants(None).await;
    }

    /// Turn new digests into signed generations (committed before anyone sees
    /// them), record build failures as events, and re-target.
    async fn sign_base_builds(&mut self) {
        let mut writes = Vec::new();
        let mut new_records = Vec::new();
        let mut events = Vec::new();
        let mut rollouts = Vec::new();
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
            // Generations are monotonic per bundle across its base and variants.
            let generation = above_floor(generation, self.bundle_max_generation(name));
            let generation = above_floor(generation, self.rollouts.floor(name));
            let mut statement =
                Statement::new(name, &art.source_url, &art.revision, &art.digest, art.size, generation);
            statement.helm = art.helm.as_deref().map(Into::into);
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
            if let Some(p) = self.rollouts.on_new_generation(
                &self.fleet,
                current.map(|r| &**r),
                &rec,
                self.current_records(name),
                self.deps.clock.now_ms(),
            ) {
                writes.extend(p.writes.iter().cloned());
                rollouts.push(p);
            }
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
                warn!(error = %e, "cannot store new generations; agents keep the previous ones; trying again in 1 s");
                // Another replica may have written the bundle's rollout
                // meanwhile: the feed brings it, and the builds are signed again.
                self.retry_builds_at = Some(tokio::time::Instant::now() + crate::rollout::TICK);
                return;
            }
            let m = Arc::make_mut(&mut self.records);
            for r in new_records {
                m.insert(r.bundle.clone(), Arc::new(r));
                self.deps.metrics.generations_created.inc();
            }
            for p in rollouts {
                self.rollouts.install(p);
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
            // A variant generation the hub signed itself is not a sign of a
            // hub behind its agents.
            if reported <= self.bundle_max_generation(&bundle) && self.variant_has_digest(&bundle, &digest) {
                continue;
            }
            let Some(generation) = recovery_generation(&cur, reported, &digest) else { continue };
            let generation = above_floor(generation, self.bundle_max_generation(&bundle));
            let rec =
                match crate::rollout::resign(&self.deps.signer, &cur, generation, self.deps.clock.now_ms()) {
                    Ok(r) => r,
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

impl Actor {
    /// What each cluster has now of `bundle`: its desired deployment as
    /// computed last (published or about to be).
    fn current_records(&self, bundle: &str) -> BTreeMap<String, DeploymentRecord> {
        self.clusters
            .values()
            .filter_map(|e| {
                let desired = match self.pending_desired.get(&e.record.name) {
                    Some((_, d)) => d.clone(),
                    None => e.shared.desired(),
                };
                desired.bundles.get(bundle).map(|d| (e.record.name.clone(), (*d.record).clone()))
            })
            .collect()
    }

    /// A cluster's computed (not overlaid) deployment of a bundle.
    fn computed_fn(&self) -> impl Fn(&str, &str) -> Option<DeploymentRecord> + use<> {
        let index = self.index.clone();
        let fleet = self.fleet.clone();
        let clusters = self.clusters.clone();
        let placements = self.placements.clone();
        move |bundle: &str, cluster: &str| {
            let e = clusters.get(cluster)?;
            // The cluster's own variant of the bundle, if it has one.
            let (labels, _) = fleet.cluster_facts(cluster, &e.record.labels);
            let current = e.shared.desired();
            let bundles = index.for_cluster_placed(
                &fleet,
                cluster,
                &labels,
                placements.get(cluster).map(|p| &**p),
                &current.bundles,
            );
            bundles.get(bundle).map(|d| (*d.record).clone())
        }
    }

    /// One tick of the rollouts: decide, commit, then install, re-target
    /// and publish (durable before visible). A queued revision whose
    /// rollout ended starts next.
    async fn tick_rollouts(&mut self) {
        if !self.rollouts.is_active() || !self.deps.ha.leadership.is_leader() {
            return;
        }
        let now = self.deps.clock.now_ms();
        let shared = self.deps.ha.leadership.is_shared();
        let inputs: Vec<crate::rollout::ClusterInput> = self
            .clusters
            .values()
            .filter(|e| !e.record.revoked)
            .map(|e| {
                let (labels, _) = self.fleet.cluster_facts(&e.record.name, &e.record.labels);
                (e, self.fleet.groups_of(&labels), labels)
            })
            .map(|(e, groups, labels)| crate::rollout::ClusterInput {
                name: e.record.name.clone(),
                groups,
                labels,
                connected: e.shared.connected()
                    || (shared && crate::ha::connected_elsewhere(e.shared.last_seen(), now)),
                statuses: e.shared.statuses(),
            })
            .collect();
        let computed = self.computed_fn();
        let mut pending = self.rollouts.tick(&self.fleet, &inputs, &computed, &self.deps.signer, now);
        let mut next = self.rollouts.clone();
        next.install_records(std::mem::take(&mut pending.records));
        for bundle in next.queued() {
            let Some(rec) = self.records.get(&bundle).cloned() else { continue };
            let current = self.current_records(&bundle);
            if let Some(p) = next.start_queued(&self.fleet, &rec, current, now) {
                pending.writes.extend(p.writes.iter().cloned());
                next.install(p);
            }
        }
        if pending.is_empty() {
            return;
        }
        if let Err(e) = self.deps.writer.commit(pending.writes).await {
            warn!(error = %e, "cannot store rollout progress; it is decided again at the next tick");
            return;
        }
        self.rollouts = next;
        self.retarget(None);
        self.dirty = true;
        self.publish();
    }
}

/// Per-cluster variants (see [`crate::domain::variants`] and [`crate::variants`]).
impl Actor {
    /// The highest generation issued for `bundle`, base and variants, or
    /// reported by agents before the hub had a record of it.
    fn bundle_max_generation(&self, bundle: &str) -> u64 {
        let base = self.records.get(bundle).map(|r| r.generation).unwrap_or(0);
        let variants = self
            .variants
            .range((bundle.to_string(), String::new())..)
            .take_while(|((b, _), _)| b == bundle)
            .map(|(_, r)| r.generation)
            .max()
            .unwrap_or(0);
        base.max(variants).max(self.floors.get(bundle).copied().unwrap_or(0)).max(self.rollouts.floor(bundle))
    }

    fn variant_has_digest(&self, bundle: &str, digest: &str) -> bool {
        self.variants
            .range((bundle.to_string(), String::new())..)
            .take_while(|((b, _), _)| b == bundle)
            .any(|(_, r)| r.digest == digest)
    }

    fn set_vars(
        &mut self,
        cluster: &str,
        set: BTreeMap<String, String>,
        unset: Vec<String>,
    ) -> Result<(Vec<Write>, BTreeMap<String, String>)> {
        for k in set.keys().chain(unset.iter()) {
            if k.is_empty()
                || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
            {
                return Err(Rejection::InvalidArgument(format!(
                    "bad variable name {k:?}: use letters, digits, '_', '-' and '.'"
                ))
                .into());
            }
        }
        let entry = self.entry(cluster)?.clone();
        let mut record = (*entry.record).clone();
        for k in &unset {
            record.vars.remove(k);
        }
        record.vars.extend(set);
        let vars = record.vars.clone();
        Arc::make_mut(&mut self.clusters)
            .insert(cluster.into(), ClusterEntry { record: Arc::new(record.clone()), shared: entry.shared });
        self.dirty = true;
        let shown: Vec<String> = vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
        Ok((
            vec![
                Write::PutCluster(record),
                Write::AppendEvents(vec![hub_event(
                    self.deps.clock.now_ms(),
                    Severity::Info,
                    "ClusterVarsChanged",
                    "",
                    format!("cluster {cluster} vars set to {{{}}}", shown.join(",")),
                )]),
            ],
            vars,
        ))
    }

    /// Recompute the variants of the clusters a batch touched, then publish.
    async fn refresh_pending_variants(&mut self) {
        let pending: Vec<String> = std::mem::take(&mut self.variants_pending).into_iter().collect();
        if !pending.is_empty() {
            // One pass for all of them: per cluster, each pass copied and
            // compared every cluster's placements (quadratic in the fleet).
            self.refresh_variants_of(Some(&pending)).await;
        }
        self.publish();
    }

    /// The variables a bundle's base artifact uses (cached per base digest).
    async fn used_variables(
        &mut self,
        bundle: &str,
        base: &DeploymentRecord,
    ) -> std::result::Result<Arc<BTreeMap<convoy_core::substitute::Variable, bool>>, String> {
        let key = (bundle.to_string(), base.digest.clone());
        if let Some(u) = self.used_cache.get(&key) {
            return Ok(u.clone());
        }
        let path = match self.deps.pipeline.artifact_path(&base.digest) {
            Some(p) => p,
            // Built by the replica holding the source lock: fetched from it.
            None => self.deps.ha.fetch(&base.digest).await.map_err(|e| e.to_string())?,
        };
        let spec = self.fleet.bundles.get(bundle).map(|b| b.spec.clone()).ok_or("bundle left the fleet")?;
        let used = tokio::task::spawn_blocking(move || {
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let files = crate::variants::unpack(&bytes).map_err(|e| e.to_string())?;
            crate::variants::used_variables(&files, &spec).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())??;
        let used = Arc::new(used);
        self.used_cache.insert(key, used.clone());
        Ok(used)
    }

    /// Recompute the placements of `only` (every cluster when `None`) for
    /// every customized bundle: build and sign the variants that are new
    /// (one artifact per distinct effective input), record failures, commit,
    /// then re-target those clusters. One cluster costs O(its bundles).
    async fn refresh_variants(&mut self, only: Option<&str>) {
        match only {
            Some(c) => self.refresh_variants_of(Some(&[c.to_string()])).await,
            None => self.refresh_variants_of(None).await,
        }
    }

    /// [`Actor::refresh_variants`] for a set of clusters at once (`None`:
    /// all): the placements are copied and compared once per call, so a
    /// batch of clusters costs one pass over the fleet, not one per cluster.
    async fn refresh_variants_of(&mut self, only: Option<&[String]>) {
        use crate::domain::variants::{ClusterFacts, Placement, is_customized, missing_message, placement};
        let fleet = self.fleet.clone();
        let clusters = self.clusters.clone();
        let scope: Vec<&ClusterEntry> = match only {
            Some(names) => names.iter().filter_map(|n| clusters.get(n.as_str())).collect(),
            None => clusters.values().collect(),
        };
        if scope.is_empty() {
            return;
        }
        // A persistent map: this copy is O(1), and each change below costs
        // O(log fleet) (only the clusters in scope are touched).
        let mut placements = self.placements.clone();
        let mut placements_changed = false;
        if only.is_none() {
            let gone: Vec<String> =
                placements.keys().filter(|c| !clusters.contains_key(*c)).cloned().collect();
            for c in gone {
                placements.remove(&c);
                placements_changed = true;
            }
        }
        let mut new_variants: Vec<VariantRecord> = Vec::new();
        let mut signed: BTreeMap<(String, String), Arc<DeploymentRecord>> = BTreeMap::new();
        let mut rebased: BTreeMap<String, DeploymentRecord> = BTreeMap::new();
        let mut events = Vec::new();
        // (entry, effective labels, vars, Kubernetes version, API versions)
        type Facts<'a> = (&'a ClusterEntry, Labels, BTreeMap<String, String>, String, Vec<String>);
        let facts: Vec<Facts<'_>> = scope
            .iter()
            .map(|e| {
                let (labels, mut vars) = fleet.cluster_facts(&e.record.name, &e.record.labels);
                vars.extend(e.record.vars.clone());
                (*e, labels, vars, e.shared.kube_version(), e.shared.api_versions())
            })
            .collect();
        for (bname, bundle) in &fleet.bundles {
            let spec = &bundle.spec;
            let base = self.records.get(bname).cloned();
            let (Some(mut base), true) = (base, is_customized(spec)) else {
                for (e, ..) in &facts {
                    if let Some(p) = placements.get_mut(&e.record.name)
                        && p.contains_key(bname)
                    {
                        Arc::make_mut(p).remove(bname);
                        placements_changed = true;
                    }
                }
                continue;
            };
            // With several replicas, only the one holding the bundle's source
            // lock signs its variants; the others place clusters on the
            // variants it signed (the change feed brings them) and keep
            // what the clusters have meanwhile ([`crate::ha`]).
            let signer = self.deps.ha.signs_bundle(&fleet, &spec.source);
            // Unreadable base: every targeted cluster fails (and keeps what
            // it has) rather than getting the documents unsubstituted.
            let (used, unreadable) = if spec.substitute.is_some() {
                match self.used_variables(bname, &base).await {
                    Ok(u) => (u, None),
                    Err(e) => {
                        warn!(bundle = %bname, error = %e, "cannot read the variables a bundle uses");
                        (Arc::default(), Some(format!("cannot read the variables the bundle uses: {e}")))
                    }
                }
            } else {
                (Arc::default(), None)
            };
            for (e, labels, vars, kube, apis) in &facts {
                let name = &e.record.name;
                let cf = ClusterFacts {
                    name,
                    labels,
                    vars,
                    kubernetes_version: (!kube.is_empty()).then_some(kube.as_str()),
                    api_versions: apis,
                };
                // What the cluster was last given of this bundle: it must
                // never be given a lower generation (agents refuse rollback).
                let held = self.held_generation(name, bname);
                let batch_floor =
                    |signed: &BTreeMap<(String, String), Arc<DeploymentRecord>>,
                     rebased: &BTreeMap<String, DeploymentRecord>| {
                        let s =
                            signed.iter().filter(|((b, _), _)| b == bname).map(|(_, r)| r.generation).max();
                        s.unwrap_or(0).max(rebased.get(bname).map(|r| r.generation).unwrap_or(0))
                    };
                let placed = match placement(spec, &cf, &used) {
                    Placement::NotTargeted => None,
                    _ if !signer && unreadable.is_some() => {
                        self.variants_awaited.insert(name.clone());
                        None
                    }
                    _ if unreadable.is_some() => Some(Placed::Failed(unreadable.clone().unwrap_or_default())),
                    Placement::Base if !signer && !acceptable(base.generation, &base.digest, &held) => {
                        // The signer re-signs the base above the variant the cluster leaves.
                        self.variants_awaited.insert(name.clone());
                        None
                    }
                    Placement::MissingVariables(..) if !signer => {
                        // The signer reports it (once, for the whole hub).
                        self.variants_awaited.insert(name.clone());
                        None
                    }
                    Placement::Base => {
                        if !acceptable(base.generation, &base.digest, &held) {
                            // Back from a variant to a base signed before it:
                            // re-sign the base above everything.
                            let floor = batch_floor(&signed, &rebased);
                            match self.resign(&base, floor) {
                                Ok(r) => {
                                    info!(bundle = %bname, generation = r.generation, "base re-signed above a variant a cluster leaves");
                                    base = Arc::new(r.clone());
                                    rebased.insert(bname.clone(), r);
                                }
                                Err(e) => warn!(bundle = %bname, error = %e, "cannot sign statement"),
                            }
                        }
                        Some(Placed::Base)
                    }
                    Placement::MissingVariables(missing, input) => {
                        // Render anyway to get the located error (once built).
                        let key = input.key();
                        Some(Placed::Failed(match self.build_variant(&base, &key, &input, name) {
                            Some(Err(m)) => m,
                            _ => missing_message(&missing),
                        }))
                    }
                    Placement::Variant { key, input } => {
                        let k = (bname.clone(), key.clone());
                        let current = self
                            .variants
                            .get(&k)
                            .filter(|_| self.variant_bases.get(&k) == Some(&base.digest));
                        let existing = signed.get(&k).or(current).cloned();
                        if existing.as_ref().is_some_and(|r| acceptable(r.generation, &r.digest, &held)) {
                            Some(Placed::Variant(key))
                        } else if !signer {
                            // Signed by the replica holding the source lock.
                            self.variants_awaited.insert(name.clone());
                            None
                        } else if let Some(rec) = existing {
                            // Moving to a variant signed before what the
                            // cluster holds: re-sign it above everything (same digest).
                            let floor = batch_floor(&signed, &rebased);
                            let helm = Statement::parse(&rec.statement).ok().and_then(|s| s.helm);
                            match self.sign_variant(&base, &key, &rec.digest, rec.size, helm, floor, None) {
                                Ok(v) => {
                                    signed.insert(k, Arc::new(v.record.clone()));
                                    new_variants.push(v);
                                    Some(Placed::Variant(key))
                                }
                                Err(m) => Some(Placed::Failed(m)),
                            }
                        } else {
                            match self.build_variant(&base, &key, &input, name) {
                                // Being built: the cluster keeps its placement
                                // until the build is done (then it is refreshed).
                                None => continue,
                                Some(Ok(crate::variants::Built { digest, size, helm })) => {
                                    let floor = batch_floor(&signed, &rebased);
                                    // A new base's variants share its generation
                                    // (one generation per revision across the
                                    // fleet); a cluster changing variant within a
                                    // revision gets the next one.
                                    let at = (base.generation > held.0).then_some(base.generation);
                                    match self.sign_variant(&base, &key, &digest, size, helm, floor, at) {
                                        Ok(v) => {
                                            signed.insert(k, Arc::new(v.record.clone()));
                                            events.push(hub_event(
                                                self.deps.clock.now_ms(),
                                                Severity::Info,
                                                "NewGeneration",
                                                bname,
                                                format!(
                                                    "generation {} of {bname} variant {key}: {} ({digest})",
                                                    v.record.generation, base.revision
                                                ),
                                            ));
                                            new_variants.push(v);
                                            Some(Placed::Variant(key))
                                        }
                                        Err(m) => Some(Placed::Failed(m)),
                                    }
                                }
                                Some(Err(m)) => Some(Placed::Failed(m)),
                            }
                        }
                    }
                };
                let rk = (name.clone(), bname.clone());
                match &placed {
                    Some(Placed::Failed(m)) => {
                        if self.reported_variant_errors.get(&rk) != Some(m) {
                            warn!(cluster = %name, bundle = %bname, error = %m, "variant failed; the cluster keeps its last good generation");
                            self.reported_variant_errors.insert(rk, m.clone());
                            events.push((
                                name.clone(),
                                EventRecord::new(
                                    Severity::Error,
                                    "SubstitutionFailed",
                                    bname,
                                    format!("{m}; the cluster keeps its last good generation"),
                                    self.deps.clock.now_ms(),
                                ),
                            ));
                        }
                    }
                    _ => {
                        self.reported_variant_errors.remove(&rk);
                    }
                }
                let had = placements.get(name).and_then(|p| p.get(bname));
                if had != placed.as_ref() {
                    placements_changed = true;
                    match placed {
                        Some(pl) => {
                            let p = match placements.get_mut(name) {
                                Some(p) => p,
                                None => {
                                    placements.insert(name.clone(), Arc::default());
                                    placements.get_mut(name).expect("just inserted")
                                }
                            };
                            Arc::make_mut(p).insert(bname.clone(), pl);
                        }
                        None => {
                            if let Some(p) = placements.get_mut(name) {
                                Arc::make_mut(p).remove(bname);
                            }
                        }
                    }
                }
            }
        }
        let mut writes: Vec<Write> = new_variants.iter().cloned().map(Write::PutVariant).collect();
        writes.extend(rebased.values().cloned().map(Write::PutDeployment));
        if !events.is_empty() {
            writes.push(Write::AppendEvents(events));
        }
        if !writes.is_empty() {
            // Durable before visible, as for base generations.
            if let Err(e) = self.deps.writer.commit(writes).await {
                warn!(error = %e, "cannot store new variants; clusters keep their current generations");
                return;
            }
        }
        // A re-signed base or variant (same digest, higher generation), or a
        // new base's variant under a key clusters are placed on, is for every
        // cluster on it, not only those recomputed here.
        let replaced: BTreeSet<(String, String)> = new_variants
            .iter()
            .map(|v| (v.record.bundle.clone(), v.key.clone()))
            .filter(|k| self.variants.contains_key(k))
            .collect();
        let rebased_bundles: BTreeSet<String> = rebased.keys().cloned().collect();
        if !rebased.is_empty() {
            let m = Arc::make_mut(&mut self.records);
            for (b, r) in rebased {
                m.insert(b, Arc::new(r));
                self.deps.metrics.generations_created.inc();
            }
            self.rebuild_index();
        }
        if new_variants.is_empty() && !placements_changed {
            // Nothing changed for these clusters; still re-target them (a
            // new cluster or new labels may add or remove base bundles).
            self.retarget_all_of(only);
            return;
        }
        if !new_variants.is_empty() {
            let m = Arc::make_mut(&mut self.variants);
            for v in new_variants {
                let k = (v.record.bundle.clone(), v.key.clone());
                self.variant_bases.insert(k.clone(), v.base_digest.clone());
                m.insert(k, Arc::new(v.record));
                self.deps.metrics.generations_created.inc();
            }
        }
        self.placements = placements;
        self.rebuild_index();
        if replaced.is_empty() && rebased_bundles.is_empty() {
            self.retarget_all_of(only);
        } else {
            let on = clusters_on(&self.placements, &replaced, &rebased_bundles);
            let scope: BTreeSet<String> = on.into_iter().chain(only.into_iter().flatten().cloned()).collect();
            let scope: Vec<String> = scope.into_iter().collect();
            self.retarget_all_of(if only.is_none() { None } else { Some(&scope) });
        }
        self.dirty = true;
    }

    /// [`Actor::retarget`] each of `only` (`None`: every cluster).
    fn retarget_all_of(&mut self, only: Option<&[String]>) {
        match only {
            Some(names) => {
                for n in names {
                    self.retarget(Some(n));
                }
            }
            None => self.retarget(None),
        }
    }

    /// The generation `cluster` was last given of `bundle` (published or
    /// about to be), 0 if none.
    fn held_generation(&self, cluster: &str, bundle: &str) -> (u64, String) {
        let of = |d: &ClusterDesired| {
            d.bundles.get(bundle).map(|d| (d.record.generation, d.record.digest.clone()))
        };
        let published = self.clusters.get(cluster).and_then(|e| of(&e.shared.desired()));
        let pending = self.pending_desired.get(cluster).and_then(|(_, d)| of(d));
        match (published, pending) {
            (Some(a), Some(b)) => a.max(b),
            (a, b) => a.or(b).unwrap_or_default(),
        }
    }

    /// Re-sign the base artifact `base` at the bundle's next generation
    /// (above `floor` too), same digest.
    fn resign(&self, base: &DeploymentRecord, floor: u64) -> Result<DeploymentRecord> {
        let generation = self.bundle_max_generation(&base.bundle).max(floor) + 1;
        crate::rollout::resign(&self.deps.signer, base, generation, self.deps.clock.now_ms())
            .map_err(Error::Signing)
    }

    /// Sign the variant `key` of `base` at generation `at`, or else at the
    /// bundle's next generation (above everything issued for it and above
    /// `floor`, what this computation signed so far).
    #[allow(clippy::too_many_arguments)]
    fn sign_variant(
        &self,
        base: &DeploymentRecord,
        key: &str,
        digest: &str,
        size: u64,
        helm: Option<convoy_artifact::StatementHelm>,
        floor: u64,
        at: Option<u64>,
    ) -> std::result::Result<VariantRecord, String> {
        let bundle = &base.bundle;
        let generation = at.unwrap_or_else(|| self.bundle_max_generation(bundle).max(floor) + 1);
        let url =
            serde_json::from_slice::<Statement>(&base.statement).map(|s| s.source.url).unwrap_or_default();
        let mut statement =
            Statement::new(bundle, &url, &base.revision, digest, size, generation).with_variant(key);
        // A Helm variant names the chart and the values it was rendered with.
        statement.helm = helm;
        let (bytes, signature) = self.deps.signer.sign_statement(&statement).map_err(|e| e.to_string())?;
        info!(bundle = %bundle, generation, digest, variant = key, "new variant generation");
        Ok(VariantRecord {
            key: key.to_string(),
            base_digest: base.digest.clone(),
            record: DeploymentRecord {
                bundle: bundle.clone(),
                generation,
                digest: digest.to_string(),
                size,
                revision: base.revision.clone(),
                source: base.source.clone(),
                statement: bytes,
                signature,
                created_unix_ms: self.deps.clock.now_ms(),
            },
        })
    }
}

/// Whether giving a cluster that holds `held` (generation, digest) the
/// generation `generation` of `digest` is acceptable to its agent: a higher
/// generation, or the very same one.
fn acceptable(generation: u64, digest: &str, held: &(u64, String)) -> bool {
    generation > held.0 || (generation == held.0 && digest == held.1)
}

fn random_b64(n: usize) -> String {
    use base64::Engine;
    let bytes: Vec<u8> = (0..n).map(|_| rand::random::<u8>()).collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The build state of a bundle, for views.
/// The clusters placed on one of `variants` ((bundle, key)), or on the base
/// of one of `bases`: those a re-signed variant or base must reach. One pass
/// over the placements, without allocating per cluster.
fn clusters_on(
    placements: &FleetPlacements,
    variants: &BTreeSet<(String, String)>,
    bases: &BTreeSet<String>,
) -> Vec<String> {
    let mut keys: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (b, k) in variants {
        keys.entry(b.as_str()).or_default().insert(k.as_str());
    }
    placements
        .iter()
        .filter(|(_, p)| {
            p.iter().any(|(b, pl)| match pl {
                Placed::Variant(k) => keys.get(b.as_str()).is_some_and(|ks| ks.contains(k.as_str())),
                Placed::Base => bases.contains(b),
                Placed::Failed(_) => false,
            })
        })
        .map(|(c, _)| c.clone())
        .collect()
}

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

    // `helm.rollbackOnFailure` through the actor (state/tests/helmops.rs).
    mod helmops;

    /// A store whose commits fail while `fail` is set.
    #[derive(Default)]
    struct FlakyStore {
        fail: AtomicBool,
        commits: AtomicUsize,
        failed: AtomicUsize,
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
        fn commands(&self, _: &str) -> Result<Vec<crate::domain::commands::CommandRecord>> {
            Ok(Vec::new())
        }
        fn commit(&self, writes: Vec<Write>, _: i64) -> Result<Vec<WriteOutcome>> {
            if self.fail.load(Ordering::SeqCst) {
                self.failed.fetch_add(1, Ordering::SeqCst);
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

    /// A state actor over a fresh [`FlakyStore`] in `dir` (its own CA, signing
    /// key and store writer): the set-up every actor test shares.
    fn spawn_actor(
        dir: &std::path::Path,
        loaded: Loaded,
        fleet: Arc<FleetConfig>,
        builds: watch::Receiver<Builds>,
        pipeline: Arc<dyn SourcePipeline>,
        shutdown: &CancellationToken,
    ) -> (StateHandle, Arc<FlakyStore>, watch::Receiver<Arc<FleetView>>) {
        spawn_actor_with(
            dir,
            loaded,
            fleet,
            builds,
            pipeline,
            shutdown,
            Arc::new(StatusIndex::default()),
            crate::rollout::TICK,
        )
    }

    /// [`spawn_actor`] over a status index the test also writes to, with
    /// its own rollout timer (every input of the actor is a parameter here).
    #[allow(clippy::too_many_arguments)]
    fn spawn_actor_with(
        dir: &std::path::Path,
        loaded: Loaded,
        fleet: Arc<FleetConfig>,
        builds: watch::Receiver<Builds>,
        pipeline: Arc<dyn SourcePipeline>,
        shutdown: &CancellationToken,
        statuses: Arc<StatusIndex>,
        rollout_tick: Duration,
    ) -> (StateHandle, Arc<FlakyStore>, watch::Receiver<Arc<FleetView>>) {
        let ca = Ca::load_or_create(&dir.join("ca.crt"), &dir.join("ca.key"), now_ms()).unwrap();
        let store = Arc::new(FlakyStore::default());
        let metrics = Arc::new(Metrics::new());
        let (events, _) = broadcast::channel(16);
        let (writer, _) = crate::writer::spawn(
            store.clone(),
            statuses.clone(),
            Box::new(Vec::new),
            events,
            metrics.clone(),
            shutdown.clone(),
        );
        let (view_tx, view) = watch::channel(Arc::new(FleetView::default()));
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
                pipeline,
                clock: convoy_core::clock::system(),
                variant_store: crate::variants::VariantStore::new(dir.join("variants")),
                rollout_tick,
                ha: Default::default(),
            },
            view_tx,
            shutdown.clone(),
        );
        (state, store, view)
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
        let shutdown = CancellationToken::new();
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
        let (state, store, _) = spawn_actor(dir.path(), loaded, fleet, builds, pipeline.clone(), &shutdown);
        Fixture { state, store, pipeline, _dir: dir, shutdown }
    }

    /// A fleet whose bundle `app` substitutes `cluster.vars.region`, three
    /// clusters (c1, c3 in eu; c2 in us), and a pipeline that built it.
    async fn variant_fixture() -> (StateHandle, Arc<StaticPipeline>, tempfile::TempDir, CancellationToken) {
        const FLEET: &str = r#"
apiVersion: convoy.dev/v1
kind: GitSource
metadata: {name: repo}
spec: {url: "https://git.example/fleet.git"}
---
apiVersion: convoy.dev/v1
kind: Bundle
metadata: {name: app}
spec:
  source: repo
  path: app
  substitute: {}
  targets: [{clusterSelector: {}}]
"#;
        let dir = tempfile::tempdir().unwrap();
        let shutdown = CancellationToken::new();
        let pipeline = StaticPipeline::new(dir.path());
        let art = convoy_artifact::pack::pack_files(
            [(
                "cm.yaml".to_string(),
                b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app}\ndata:\n  region: \"${{ cluster.vars.region }}\"\n"
                    .to_vec(),
            )],
            &convoy_artifact::Limits::default(),
        )
        .unwrap();
        pipeline.publish("app", "repo", "https://git.example/fleet.git", "main@sha1:1", &art.bytes).unwrap();
        let cluster = |n: &str, region: &str| ClusterRecord {
            name: n.into(),
            vars: [("region".to_string(), region.to_string())].into(),
            ..Default::default()
        };
        let loaded = Loaded {
            clusters: vec![cluster("c1", "eu"), cluster("c2", "us"), cluster("c3", "eu")],
            ..Default::default()
        };
        let fleet = Arc::new(FleetConfig::parse([("fleet.yaml", FLEET)]).unwrap());
        let (state, _, _) =
            spawn_actor(dir.path(), loaded, fleet, pipeline.builds(), pipeline.clone(), &shutdown);
        assert!(state.wait_ready(Duration::from_secs(30)).await, "first variant computation");
        (state, pipeline, dir, shutdown)
    }

    fn app(state: &StateHandle, cluster: &str) -> Arc<crate::domain::desired::Deployment> {
        state.view().clusters[cluster].shared.desired().bundles["app"].clone()
    }

    #[tokio::test]
    async fn variants_are_shared_signed_per_input_and_generations_only_rise() {
        let (state, pipeline, _dir, shutdown) = variant_fixture().await;
        let (c1, c2, c3) = (app(&state, "c1"), app(&state, "c2"), app(&state, "c3"));
        // Equal inputs share one signed variant; the other input has its own.
        assert!(Arc::ptr_eq(&c1, &c3));
        assert_ne!(c1.record.digest, c2.record.digest);
        let base = state.view().records["app"].clone();
        assert_ne!(c1.record.digest, base.digest, "substituted, not the base");
        // One generation per revision across the fleet: the base's.
        assert_eq!((c1.record.generation, c2.record.generation), (base.generation, base.generation));
        let st = Statement::parse(&c1.record.statement).unwrap();
        assert_eq!(st.artifact.digest, c1.record.digest);
        assert!(st.variant.as_deref().is_some_and(|k| k.starts_with("sha256:")));
        assert!(pipeline.artifact_path(&c1.record.digest).is_none(), "variants are the hub's own");
        assert_eq!(state.view().variants.len(), 2);

        // One cluster's var changes: it alone moves; the others keep their
        // Arcs, and are not even recomputed (O(its bundles), not O(fleet)).
        let retargeted = || RETARGETED.with(|r| std::mem::take(&mut *r.borrow_mut()));
        retargeted();
        state.set_vars("c3".into(), [("region".to_string(), "ap".to_string())].into(), vec![]).await.unwrap();
        let c3b = app(&state, "c3");
        assert!(Arc::ptr_eq(&app(&state, "c1"), &c1) && Arc::ptr_eq(&app(&state, "c2"), &c2));
        assert!(c3b.record.generation > c1.record.generation.max(c2.record.generation));
        let touched: BTreeSet<String> = retargeted().into_iter().collect();
        assert_eq!(touched, BTreeSet::from(["c3".to_string()]), "only the changed cluster is recomputed");
        // Back to the eu variant, signed before what c3 holds now: re-signed
        // above it (same digest), never a lower generation. The re-signed
        // variant reaches c1, which is on it, and only c1 besides c3.
        state.set_vars("c3".into(), [("region".to_string(), "eu".to_string())].into(), vec![]).await.unwrap();
        let c3c = app(&state, "c3");
        assert_eq!(c3c.record.digest, c1.record.digest);
        assert!(c3c.record.generation > c3b.record.generation);
        assert!(Arc::ptr_eq(&app(&state, "c1"), &c3c), "c1 shares the re-signed variant");
        let touched: BTreeSet<String> = retargeted().into_iter().collect();
        assert_eq!(touched, BTreeSet::from(["c1".to_string(), "c3".to_string()]), "c2 is on another variant");

        // A missing variable: c2 keeps its last good generation, the others are untouched.
        let c1_now = app(&state, "c1");
        state.set_vars("c2".into(), BTreeMap::new(), vec!["region".into()]).await.unwrap();
        assert!(Arc::ptr_eq(&app(&state, "c2"), &c2));
        assert!(Arc::ptr_eq(&app(&state, "c1"), &c1_now));
        let v = state.view();
        let Some(Placed::Failed(m)) = v.placements["c2"].get("app") else { panic!("{:?}", v.placements) };
        assert!(m.contains("cm.yaml") && m.contains("cluster.vars.region") && m.contains("line 5"), "{m}");
        shutdown.cancel();
    }

    /// A record of `web` at `generation` with digest `sha256:<d × 64>`.
    fn web_record(generation: u64, d: char) -> DeploymentRecord {
        DeploymentRecord {
            bundle: "web".into(),
            generation,
            digest: format!("sha256:{}", d.to_string().repeat(64)),
            size: 1,
            revision: "main@sha1:0".into(),
            source: "repo".into(),
            statement: Vec::new(),
            signature: Vec::new(),
            created_unix_ms: 0,
        }
    }

    fn prod() -> Labels {
        [("env".to_string(), "prod".to_string())].into()
    }

    /// A new generation whose commit failed (with several replicas: another
    /// one wrote the bundle's rollout record meanwhile) is signed again a
    /// tick later from the same build: no new build is needed.
    #[tokio::test]
    async fn a_new_generation_whose_commit_failed_is_signed_again_without_a_new_build() {
        let dir = tempfile::tempdir().unwrap();
        let source = StaticPipeline::new(dir.path());
        let f = fixture_with(source.builds());
        // One round trip: the actor runs.
        assert!(f.state.set_labels("nope".into(), prod()).await.is_err());
        f.store.fail.store(true, Ordering::SeqCst);
        source.publish("web", "repo", "https://git.example/fleet.git", "main@sha1:2", b"two").unwrap();
        async fn within(what: &str, ok: impl Fn() -> bool) {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !ok() {
                assert!(std::time::Instant::now() < deadline, "{what}: not within 10 s");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        within("the generation's commit is refused", || f.store.failed.load(Ordering::SeqCst) > 0).await;
        assert_eq!(f.state.view().records["web"].generation, 1, "nothing of it is visible");
        f.store.fail.store(false, Ordering::SeqCst);
        within("signed again", || f.state.view().records["web"].generation == 2).await;
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

    /// A rollout command changes nothing visible until it is committed: with
    /// the store failing, `pause` is refused and the view keeps the rollout as
    /// it was; once the store works, the same command commits and shows.
    #[tokio::test]
    async fn a_rollout_command_is_committed_before_it_is_visible() {
        use crate::domain::rollout::{Command, RolloutRecord, RolloutState, RolloutStatus};
        let fleet_yaml = format!(
            "{FLEET}  rollout:\n    waves:\n      - {{name: w, selector: {{matchLabels: {{env: prod}}}}, gate: approval}}\n"
        );
        let fleet = Arc::new(FleetConfig::parse([("fleet.yaml", fleet_yaml.as_str())]).unwrap());
        let spec = fleet.bundles["web"].spec.rollout.clone().unwrap();
        let rec = web_record;
        let dir = tempfile::tempdir().unwrap();
        let shutdown = CancellationToken::new();
        let _stop = shutdown.clone().drop_guard();
        let loaded = Loaded {
            clusters: vec![ClusterRecord { name: "c1".into(), labels: prod(), ..Default::default() }],
            deployments: vec![rec(2, 'b')],
            rollouts: vec![RolloutRecord {
                bundle: "web".into(),
                state: RolloutState::new(&spec, "rev2", 0),
                held: [("c1".to_string(), rec(1, 'a'))].into(),
                base: Some(rec(1, 'a')),
                given: Default::default(),
                rolled_back: Default::default(),
                max_generation: 2,
                version: 0,
            }],
            ..Default::default()
        };
        let pipeline = StaticPipeline::new(dir.path());
        let (state, store, mut view) =
            spawn_actor(dir.path(), loaded, fleet, pipeline.builds(), pipeline, &shutdown);
        // The restored rollout holds c1 on generation 1 and reaches its gate.
        let status = |v: &FleetView| v.rollouts.get("web").map(|r| r.state.status.clone());
        tokio::time::timeout(
            Duration::from_secs(10),
            view.wait_for(|v| status(v) == Some(RolloutStatus::AwaitingApproval)),
        )
        .await
        .expect("the rollout reached its approval gate")
        .unwrap();
        let c1 = state.view().clusters["c1"].shared.clone();
        assert_eq!(c1.desired().bundles["web"].record.generation, 1, "held on its previous generation");
        let commits = store.commits.load(Ordering::SeqCst);

        store.fail.store(true, Ordering::SeqCst);
        let e = state.rollout_command("web".into(), Command::Pause, "admin:alice".into()).await.unwrap_err();
        assert!(matches!(e, Error::Store(_)), "{e}");
        assert_eq!(status(&state.view()), Some(RolloutStatus::AwaitingApproval), "nothing published");
        let e = state.rollout_command("nope".into(), Command::Pause, "admin:alice".into()).await.unwrap_err();
        assert!(
            matches!(&e, Error::RolloutRefused { reason: crate::domain::rollout::Refusal::NoRollout, .. }),
            "{e}"
        );

        store.fail.store(false, Ordering::SeqCst);
        state.rollout_command("web".into(), Command::Pause, "admin:alice".into()).await.unwrap();
        assert!(
            matches!(status(&state.view()), Some(RolloutStatus::Paused { reason }) if reason.contains("admin:alice"))
        );
        assert_eq!(store.commits.load(Ordering::SeqCst), commits + 1);
        assert_eq!(c1.desired().bundles["web"].record.generation, 1, "still held");
    }

    /// A status that completes a wave decides the rollout at once, not at
    /// the next timer tick: with the timer's next tick an hour away, wave 2
    /// is admitted as soon as wave 1's last cluster reports Ready.
    #[tokio::test]
    async fn a_ready_status_decides_the_rollout_before_the_next_timer_tick() {
        use crate::domain::StatusRecord;
        use crate::domain::rollout::{RolloutRecord, RolloutState};
        use convoy_core::status::{BundleStatus, Phase};
        let fleet_yaml = format!(
            "{FLEET}  rollout:\n    waves:\n      - {{name: w1, selector: {{matchLabels: {{tier: a}}}}}}\n      - {{name: w2, selector: {{matchLabels: {{tier: b}}}}}}\n"
        );
        let fleet = Arc::new(FleetConfig::parse([("fleet.yaml", fleet_yaml.as_str())]).unwrap());
        let spec = fleet.bundles["web"].spec.rollout.clone().unwrap();
        let rec = web_record;
        let labels = |tier: &str| {
            let mut l = prod();
            l.insert("tier".into(), tier.into());
            l
        };
        let dir = tempfile::tempdir().unwrap();
        let shutdown = CancellationToken::new();
        let _stop = shutdown.clone().drop_guard();
        let loaded = Loaded {
            clusters: vec![
                ClusterRecord { name: "c1".into(), labels: labels("a"), ..Default::default() },
                ClusterRecord { name: "c2".into(), labels: labels("b"), ..Default::default() },
            ],
            deployments: vec![rec(2, 'b')],
            rollouts: vec![RolloutRecord {
                bundle: "web".into(),
                state: RolloutState::new(&spec, "rev2", 0),
                held: [("c1".to_string(), rec(1, 'a')), ("c2".to_string(), rec(1, 'a'))].into(),
                base: Some(rec(1, 'a')),
                given: Default::default(),
                rolled_back: Default::default(),
                max_generation: 2,
                version: 0,
            }],
            ..Default::default()
        };
        let pipeline = StaticPipeline::new(dir.path());
        let statuses = Arc::new(StatusIndex::default());
        let (state, _store, _view) = spawn_actor_with(
            dir.path(),
            loaded,
            fleet,
            pipeline.builds(),
            pipeline,
            &shutdown,
            statuses.clone(),
            Duration::from_secs(3600),
        );
        // Both agents are connected, so the waves admit them.
        let shared = |c: &str| state.view().clusters[c].shared.clone();
        let (c1, c2) = (shared("c1"), shared("c2"));
        let _s1 = c1.begin_session(CancellationToken::new(), mpsc::channel(1).0);
        let _s2 = c2.begin_session(CancellationToken::new(), mpsc::channel(1).0);
        let generation = |c: &Arc<ClusterShared>| c.desired().bundles["web"].record.generation;
        let mut d1 = c1.subscribe_desired();
        tokio::time::timeout(
            Duration::from_secs(10),
            d1.wait_for(|d| d.bundles["web"].record.generation == 2),
        )
        .await
        .expect("wave 1 admitted c1")
        .unwrap();
        assert_eq!(generation(&c2), 1, "c2 is held while wave 1 runs");

        statuses.put(
            "c1",
            &[StatusRecord {
                status: BundleStatus {
                    bundle: "web".into(),
                    generation: 2,
                    digest: rec(2, 'b').digest,
                    phase: Phase::Ready,
                    ..Default::default()
                },
                updated_unix_ms: 0,
            }],
        );
        let mut d2 = c2.subscribe_desired();
        tokio::time::timeout(
            Duration::from_secs(10),
            d2.wait_for(|d| d.bundles["web"].record.generation == 2),
        )
        .await
        .expect("wave 2 admitted c2 on wave 1's Ready status (the timer would tick in an hour)")
        .unwrap();
    }
}
