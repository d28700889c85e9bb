//! Alerts out: routes the hub's stored events to notification providers.
//!
//! Provider and Alert documents come from the fleet config and are put in
//! force live when it changes. One dispatcher task follows the event feed the
//! store writer publishes after each commit (the same feed FollowEvents
//! reads; on lag it catches up from the store, so no event is skipped),
//! matches every event against the Alert rules with the reporting cluster's
//! labels at that moment, suppresses duplicates within each rule's window,
//! and pushes notifications into per-provider bounded queues. Each Provider
//! has its own worker task ([`provider::run`]) doing the HTTP delivery with
//! timeouts and retries, so a dead endpoint never holds up the dispatcher,
//! the store writer, or another provider.
//!
//! - [`rules`]: matching and suppression (no I/O).
//! - [`payload`]: the notification document and provider formats (no I/O).
//! - [`provider`]: queues, workers, HTTP delivery.
//!
//! Reference: docs/alerts.md.

pub mod payload;
pub mod provider;
pub mod rules;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use convoy_core::config::{FleetConfig, Named, ProviderSpec};
use convoy_core::identity::Identity;
use convoy_core::selector::LabelSelector;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use self::payload::{ClusterRef, NOTIFICATION_KIND, Notification, rfc3339};
use self::provider::{Delivery, ProviderKind, Queue, RetryPolicy};
use self::rules::{Rule, Subject, Suppressor, Verdict, dedup_key, is_hub_event};
use crate::config::AlertSettings;
use crate::domain::{EventFilter, StoredEvent};
use crate::metrics::{AlertLabels, Metrics, ProviderLabels};
use crate::state::{FleetView, StateHandle};
use crate::store::Store;

/// Keys the suppressor remembers at most.
const SUPPRESSOR_CAPACITY: usize = 50_000;
/// Events read from the store per catch-up after the live feed lagged.
const CATCH_UP_BATCH: usize = 10_000;
/// How often closed suppression windows are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// At most one "queue full" warning per provider per this period.
const DROP_WARN_EVERY: Duration = Duration::from_secs(10);

/// What the alert dispatcher needs from the hub.
pub struct AlertDeps {
    /// The fleet state (config in force, cluster labels).
    pub state: StateHandle,
    /// The fleet config at start (in force until the state actor publishes).
    pub fleet: Arc<FleetConfig>,
    /// The store, to catch up after the live feed lagged.
    pub store: Arc<dyn Store>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Settings.
    pub settings: AlertSettings,
    /// The committed-event feed, subscribed before the first commit.
    pub events: broadcast::Receiver<Arc<StoredEvent>>,
    /// The wall clock suppression windows are measured with.
    pub clock: convoy_core::clock::SharedClock,
}

/// The hub name used when `alerts.hubName` is unset: the host name.
pub fn default_hub_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "convoy-hub".into())
}

/// Start the dispatcher. It stops on `shutdown`, after its provider workers
/// flushed what they could (bounded by `alerts.shutdownFlush`).
pub fn spawn(deps: AlertDeps, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(deps, shutdown).instrument(info_span!("alerts")))
}

/// The HTTP client shared by the providers. reqwest panics without a
/// process-default rustls provider, so check first.
fn http_client() -> Option<reqwest::Client> {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        warn!("no process-default rustls crypto provider is installed; alerts cannot be delivered");
        return None;
    }
    match reqwest::Client::builder()
        .user_agent(concat!("convoy-hub/", env!("CARGO_PKG_VERSION")))
        // A redirect would re-send the body (and signature) elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
    {
        Ok(c) => Some(c),
        Err(e) => {
            warn!(error = %provider::describe(e, Duration::ZERO), "cannot build the alert HTTP client");
            None
        }
    }
}

struct Running {
    spec: Named<ProviderSpec>,
    queue: Arc<Queue>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    last_drop_warn: Option<Instant>,
    dropped_since_warn: u64,
}

struct Dispatcher {
    views: watch::Receiver<Arc<FleetView>>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    settings: AlertSettings,
    hub_name: String,
    client: Option<reqwest::Client>,
    shutdown: CancellationToken,
    fleet: Option<Arc<FleetConfig>>,
    rules: Vec<Rule>,
    providers: BTreeMap<String, Running>,
    retired: Vec<tokio::task::JoinHandle<()>>,
    suppressor: Suppressor,
    last_id: u64,
    clock: convoy_core::clock::SharedClock,
    /// An instant and the clock's reading at it: suppression windows are
    /// measured on the injected clock, mapped onto instants from here.
    origin: (std::time::Instant, i64),
}

async fn run(deps: AlertDeps, shutdown: CancellationToken) {
    let AlertDeps { state, fleet, store, metrics, settings, mut events, clock } = deps;
    let hub_name =
        settings.hub_name.clone().filter(|n| !n.trim().is_empty()).unwrap_or_else(default_hub_name);
    // Marks the view current at subscription as seen: until the state actor
    // publishes, the config given at start is the one in force.
    let views = state.subscribe();
    let mut d = Dispatcher {
        views,
        store,
        metrics,
        settings,
        hub_name,
        client: None,
        shutdown: shutdown.clone(),
        fleet: None,
        rules: Vec::new(),
        providers: BTreeMap::new(),
        retired: Vec::new(),
        suppressor: Suppressor::new(SUPPRESSOR_CAPACITY),
        last_id: 0,
        origin: (std::time::Instant::now(), clock.now_ms()),
        clock,
    };
    d.configure(&fleet);
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = d.views.changed() => {
                if changed.is_err() {
                    // The state actor stopped: only a drain follows.
                    shutdown.cancelled().await;
                    break;
                }
                // changed() marked the value seen: take it up unconditionally.
                let fleet = d.views.borrow_and_update().fleet.clone();
                d.configure(&fleet);
            }
            r = events.recv() => match r {
                Ok(e) => d.route(&e),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    warn!(skipped = n, "alert dispatcher fell behind the event feed; catching up from the store");
                    d.catch_up().await;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    shutdown.cancelled().await;
                    break;
                }
            },
            _ = prune.tick() => {
                let now = d.now();
                d.suppressor.prune(now);
            }
        }
    }
    d.stop().await;
}

impl Dispatcher {
    /// Now on the injected clock, as an instant for the suppressor.
    fn now(&self) -> std::time::Instant {
        let ms = self.clock.now_ms().saturating_sub(self.origin.1).max(0);
        self.origin.0 + Duration::from_millis(ms as u64)
    }

    /// Take up a newly published fleet view's config, if any.
    fn refresh(&mut self) {
        if self.views.has_changed().unwrap_or(false) {
            let fleet = self.views.borrow_and_update().fleet.clone();
            self.configure(&fleet);
        }
    }

    /// Put the Provider and Alert documents of `fleet` in force, if they are
    /// not already.
    fn configure(&mut self, fleet: &Arc<FleetConfig>) {
        if self.fleet.as_ref().is_some_and(|f| Arc::ptr_eq(f, fleet)) {
            return;
        }
        let fleet = fleet.clone();
        self.fleet = Some(fleet.clone());
        let mut rules: Vec<Rule> = fleet
            .alerts
            .iter()
            .filter(|(_, a)| !a.spec.suspend)
            .map(|(n, a)| Rule::new(n, &a.spec))
            .collect();
        rules.sort_by(|a, b| a.name.cmp(&b.name));
        let wanted: BTreeMap<&String, &Named<ProviderSpec>> =
            fleet.providers.iter().filter(|(_, p)| !p.spec.suspend).collect();
        if self.client.is_none() && !wanted.is_empty() {
            self.client = http_client();
        }
        // Stop providers that are gone or suspended; their queues go with them.
        let gone: Vec<String> = self.providers.keys().filter(|n| !wanted.contains_key(n)).cloned().collect();
        for name in gone {
            if let Some(r) = self.providers.remove(&name) {
                r.stop.cancel();
                self.retired.push(r.task);
                let labels = ProviderLabels { provider: name.clone() };
                self.metrics.alerts_queue_depth.remove(&labels);
                info!(provider = %name, pending = r.queue.len(), "alert provider removed");
            }
        }
        for (name, spec) in wanted {
            let Some(kind) = ProviderKind::parse(&spec.spec.type_) else { continue };
            let previous = match self.providers.remove(name) {
                Some(r) if r.spec.spec == spec.spec => {
                    self.providers.insert(name.clone(), r);
                    continue;
                }
                Some(r) => {
                    // Changed: a new worker takes over the same queue once
                    // the old one has let go.
                    r.stop.cancel();
                    Some((r.queue, r.task))
                }
                None => None,
            };
            let (queue, prev_task) = match previous {
                Some((q, t)) => (q, Some(t)),
                None => (Arc::new(Queue::new(self.settings.queue_size)), None),
            };
            let delivery = Delivery {
                name: name.clone(),
                kind,
                spec: spec.spec.clone(),
                client: self.client.clone(),
                retry: RetryPolicy {
                    max_attempts: self.settings.max_attempts,
                    base: self.settings.backoff_base.get(),
                    max: self.settings.backoff_max.get(),
                    flush: self.settings.shutdown_flush.get(),
                },
                metrics: self.metrics.clone(),
            };
            let stop = self.shutdown.child_token();
            let task = tokio::spawn(
                provider::run(delivery, queue.clone(), stop.clone(), self.shutdown.clone(), prev_task)
                    .instrument(info_span!("alert_provider", provider = %name)),
            );
            self.providers.insert(
                name.clone(),
                Running {
                    spec: spec.clone(),
                    queue,
                    stop,
                    task,
                    last_drop_warn: None,
                    dropped_since_warn: 0,
                },
            );
        }
        self.retired.retain(|t| !t.is_finished());
        if self.rules != rules {
            info!(alerts = rules.len(), providers = self.providers.len(), "alert rules in force");
        }
        self.rules = rules;
    }

    /// Read events the live feed dropped from the store, in batches. (The
    /// store returns the newest of a batch: after a lag of more than
    /// `CATCH_UP_BATCH` events the oldest missed ones are skipped.)
    async fn catch_up(&mut self) {
        loop {
            let store = self.store.clone();
            let f = EventFilter { after_id: self.last_id, limit: CATCH_UP_BATCH, ..Default::default() };
            let batch = match tokio::task::spawn_blocking(move || store.list_events(&f)).await {
                Ok(Ok(mut v)) => {
                    v.sort_by_key(|e| e.id);
                    v
                }
                Ok(Err(e)) => {
                    warn!(error = %e, "cannot read events to catch up; some may not be alerted");
                    return;
                }
                Err(_) => return,
            };
            let n = batch.len();
            for e in batch {
                self.route(&e);
            }
            if n < CATCH_UP_BATCH {
                return;
            }
        }
    }

    /// Route one committed event to the providers of every Alert selecting it.
    fn route(&mut self, e: &StoredEvent) {
        if e.id <= self.last_id {
            return;
        }
        self.last_id = e.id;
        // The config in force when the event is routed: a reload published
        // before the event was committed is always seen.
        self.refresh();
        let view = self.views.borrow().clone();
        if self.rules.is_empty() {
            return;
        }
        let hub = is_hub_event(e);
        let entry = if hub { None } else { view.clusters.get(&e.cluster) };
        let labels = entry.map(|c| &c.record.labels);
        let targets = |sel: &LabelSelector| {
            view.fleet.bundles.get(&e.event.bundle).is_some_and(|b| {
                view.clusters.values().any(|c| {
                    !c.record.revoked
                        && sel.matches(&c.record.labels)
                        && b.spec.targets_cluster(&c.record.name, &c.record.labels)
                })
            })
        };
        let subject = if hub { Subject::Hub { targets: &targets } } else { Subject::Cluster(labels) };
        let now = self.now();
        let mut served: BTreeSet<&str> = BTreeSet::new();
        let mut out: Vec<(String, Arc<Notification>)> = Vec::new();
        for rule in &self.rules {
            if !self.providers.contains_key(&rule.provider) || !rule.matches(&e.event, &subject) {
                continue;
            }
            let suppressed = match self.suppressor.check(dedup_key(&rule.name, e), rule.suppress_window, now)
            {
                Verdict::Suppress => {
                    self.metrics
                        .alerts_suppressed
                        .get_or_create(&AlertLabels { alert: rule.name.clone() })
                        .inc();
                    continue;
                }
                Verdict::Deliver { suppressed } => suppressed,
            };
            // Two Alerts routing one event to one Provider send it once.
            if !served.insert(&rule.provider) {
                continue;
            }
            let time_ms = if e.event.time_unix_ms > 0 { e.event.time_unix_ms } else { e.stored_unix_ms };
            let n = Notification {
                api_version: convoy_core::API_VERSION.into(),
                kind: NOTIFICATION_KIND.into(),
                hub: self.hub_name.clone(),
                alert: rule.name.clone(),
                event_id: e.id,
                severity: e.event.severity,
                reason: e.event.reason.clone(),
                message: e.event.message.clone(),
                time: rfc3339(time_ms),
                time_unix_ms: time_ms,
                origin: if hub { "hub" } else { "cluster" }.into(),
                cluster: (!hub).then(|| ClusterRef {
                    name: e.cluster.clone(),
                    identity: Identity::Cluster(e.cluster.clone()).uri(),
                    labels: labels.cloned().unwrap_or_default(),
                }),
                bundle: e.event.bundle.clone(),
                revision: e.event.revision.clone(),
                object: e.event.object.clone(),
                details: e.event.details.clone(),
                suppressed,
            };
            out.push((rule.provider.clone(), Arc::new(n)));
        }
        for (provider, n) in out {
            self.enqueue(&provider, n);
        }
    }

    fn enqueue(&mut self, provider: &str, n: Arc<Notification>) {
        let Some(r) = self.providers.get_mut(provider) else { return };
        let labels = ProviderLabels { provider: provider.to_string() };
        if r.queue.push(n).is_some() {
            self.metrics.alerts_dropped.get_or_create(&labels).inc();
            r.dropped_since_warn += 1;
            let now = Instant::now();
            if r.last_drop_warn.is_none_or(|t| now.duration_since(t) >= DROP_WARN_EVERY) {
                warn!(
                    provider = %provider,
                    dropped = r.dropped_since_warn,
                    queue_size = self.settings.queue_size,
                    "alert queue full (the endpoint is slow or down); dropped the oldest notifications"
                );
                r.last_drop_warn = Some(now);
                r.dropped_since_warn = 0;
            }
        }
        self.metrics.alerts_queue_depth.get_or_create(&labels).set(r.queue.len() as i64);
    }

    /// Stop every worker: each flushes its queue within the flush period.
    async fn stop(mut self) {
        let deadline = Instant::now() + self.settings.shutdown_flush.get() + Duration::from_secs(1);
        let mut tasks: Vec<(String, tokio::task::JoinHandle<()>)> = Vec::new();
        for (name, r) in std::mem::take(&mut self.providers) {
            r.stop.cancel();
            tasks.push((name, r.task));
        }
        tasks.extend(self.retired.drain(..).map(|t| (String::new(), t)));
        for (name, t) in tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout_at(deadline, t).await.is_err() {
                warn!(provider = %name, "alert provider did not stop in time; aborting it");
                abort.abort();
            }
        }
    }
}
