//! The agent runtime: wires the state store, artifact cache, engine,
//! controller, outbox writer, hub session and metrics server around one
//! CancellationToken, and drains them within a grace period at shutdown.
//!
//! In-process use (`convoy dev`, end-to-end tests):
//! ```no_run
//! # async fn demo(client: kube::Client) -> convoy_agent::Result<()> {
//! use convoy_agent::{Agent, AgentConfig, KubeSource};
//! let mut cfg = AgentConfig::new("https://127.0.0.1:8443", "dev-1", "/tmp/agent-dev-1");
//! cfg.kube = KubeSource::Client(client);
//! cfg.trusted_keys = vec!["signing.pub".into()];
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let running = Agent::start(cfg, shutdown.clone()).await?;
//! // ... later
//! shutdown.cancel();
//! running.join().await
//! # }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use convoy_artifact::{Limits, TrustedKeys};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::cache::ArtifactCache;
use crate::config::AgentConfig;
use crate::controller::{Controller, Ctx};
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::sync::SyncCtx;
use crate::{Error, Result};

/// The default grace period for in-flight work at shutdown.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(20);

/// The agent.
pub struct Agent;

/// A started agent.
pub struct RunningAgent {
    /// Where /metrics, /healthz and /readyz are served, when enabled.
    pub metrics_address: Option<SocketAddr>,
    /// The agent's metrics (readiness, connection state, counters).
    pub metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    grace: Duration,
    controller: JoinHandle<Result<()>>,
    sync: JoinHandle<()>,
    outbox: JoinHandle<()>,
    server: Option<JoinHandle<()>>,
}

impl RunningAgent {
    /// Wait for the agent to stop (after its shutdown token is cancelled),
    /// giving in-flight work the grace period. If the controller stops on its
    /// own (an error), every other task is stopped too.
    pub async fn join(self) -> Result<()> {
        let RunningAgent { shutdown, grace, controller, sync, outbox, server, .. } = self;
        let mut controller = controller;
        let early = tokio::select! {
            _ = shutdown.cancelled() => None,
            r = &mut controller => Some(r),
        };
        shutdown.cancel();
        let drain = async {
            let r = match early {
                Some(r) => r,
                None => controller.await,
            };
            let _ = sync.await;
            // The controller (and its writer handle) is gone: the outbox writer drains and ends.
            let _ = outbox.await;
            if let Some(s) = server {
                let _ = s.await;
            }
            r
        };
        match tokio::time::timeout(grace, drain).await {
            Ok(Ok(r)) => r,
            Ok(Err(join)) => Err(Error::Store(format!("controller task failed: {join}"))),
            Err(_) => {
                tracing::warn!(grace_ms = grace.as_millis() as u64, "shutdown grace period exceeded");
                Ok(())
            }
        }
    }
}

impl Agent {
    /// Run until `shutdown` is cancelled, with the default grace period.
    pub async fn run(cfg: AgentConfig, shutdown: CancellationToken) -> Result<()> {
        Self::run_with_grace(cfg, shutdown, DEFAULT_GRACE).await
    }

    /// Run until `shutdown` is cancelled, then drain for at most `grace`.
    pub async fn run_with_grace(
        cfg: AgentConfig,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> Result<()> {
        let mut running = Self::start(cfg, shutdown).await?;
        running.grace = grace;
        running.join().await
    }

    /// Start every task and return at once. The tasks stop when `shutdown`
    /// is cancelled.
    pub async fn start(cfg: AgentConfig, shutdown: CancellationToken) -> Result<RunningAgent> {
        // Our own child token: `join` can stop everything when the controller
        // fails without cancelling the caller's token.
        let shutdown = shutdown.child_token();
        if cfg.trusted_keys.is_empty() {
            return Err(Error::Config("no trusted signing key (--trusted-key)".into()));
        }
        let key_files = crate::config::expand_key_paths(&cfg.trusted_keys)?;
        let trusted =
            TrustedKeys::load(&key_files).map_err(|e| Error::Config(format!("trusted keys: {e}")))?;
        let client = cfg.kube.client().await?;
        let state_dir = cfg.state_dir.clone();
        let max_events = cfg.tuning.outbox_max_events;
        let store = tokio::task::spawn_blocking(move || Store::open(&state_dir, max_events))
            .await
            .map_err(|e| Error::Store(e.to_string()))??;
        let cache = ArtifactCache::open(&cfg.state_dir)?;
        let records = {
            let s = store.clone();
            tokio::task::spawn_blocking(move || s.bundles())
                .await
                .map_err(|e| Error::Store(e.to_string()))??
        };
        let metrics = Arc::new(Metrics::new());
        metrics.outbox_depth.set(store.depth()? as i64);

        let server = match cfg.metrics_address {
            Some(addr) => {
                let (bound, fut) = crate::metrics::bind(addr, metrics.clone(), shutdown.clone()).await?;
                tracing::info!(address = %bound, "serving /metrics, /healthz, /readyz");
                Some((bound, tokio::spawn(fut.instrument(tracing::info_span!("metrics-server")))))
            }
            None => None,
        };

        let notify = Arc::new(Notify::new());
        let (hub_tx, hub_rx) = mpsc::channel(64);
        let (chan_tx, chan_rx) = watch::channel(None);
        let (published_tx, published_rx) = mpsc::unbounded_channel();
        let (writer, writer_fut) =
            crate::outbox::start(store.clone(), notify.clone(), metrics.clone(), published_tx);
        let outbox = tokio::spawn(writer_fut.instrument(tracing::info_span!("outbox-writer")));

        let sops_keys =
            Arc::new(crate::sops::agent_keys(&client, &cfg.namespace, cfg.sops_age_secret.as_deref()).await?);
        let engine = Engine::new(client.clone(), &cfg.namespace, cfg.concurrency);
        let ctx = Arc::new(Ctx {
            engine,
            cache,
            trusted,
            hub: chan_rx,
            tuning: cfg.tuning.clone(),
            default_drift: cfg.drift_mode,
            limits: Limits::default(),
            shutdown: shutdown.clone(),
            sops_keys: sops_keys.clone(),
        });
        tracing::info!(
            cluster = %cfg.cluster_name,
            namespace = %cfg.namespace,
            bundles = records.len(),
            epoch = store.epoch(),
            "agent starting"
        );
        let controller =
            Controller::new(ctx, store.clone(), metrics.clone(), (writer, published_rx), hub_rx, records);
        let controller = tokio::spawn(controller.run().instrument(tracing::info_span!("controller")));

        let sync_ctx = SyncCtx {
            address: cfg.hub_address.clone(),
            hub_ca: cfg.hub_ca.clone(),
            token_file: cfg.token_file.clone(),
            cluster: cfg.cluster_name.clone(),
            labels: cfg.labels.clone(),
            namespace: cfg.namespace.clone(),
            kube: client,
            store,
            outbox: notify,
            to_controller: hub_tx,
            channel: chan_tx,
            metrics: metrics.clone(),
            tuning: cfg.tuning.clone(),
            shutdown: shutdown.clone(),
            age_recipients: sops_keys.recipients(),
        };
        let sync = tokio::spawn(
            crate::sync::run(sync_ctx)
                .instrument(tracing::info_span!("hub-session", cluster = %cfg.cluster_name)),
        );
        Ok(RunningAgent {
            metrics_address: server.as_ref().map(|(a, _)| *a),
            metrics,
            shutdown,
            grace: DEFAULT_GRACE,
            controller,
            sync,
            outbox,
            server: server.map(|(_, h)| h),
        })
    }
}
