//! [`SourcePipeline`] over convoy-sources: git fetched once per hub, bundles
//! rendered and stored by digest, webhooks on the HTTP port.

use std::path::PathBuf;
use std::sync::Arc;

use convoy_core::config::FleetConfig;
use convoy_sources::controller::{Sources, SourcesConfig};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::domain::Rejection;
use crate::pipeline::{Builds, SourcePipeline, Statuses};
use crate::{Error, Result};

/// The git pipeline.
pub struct GitPipeline {
    sources: Sources,
}

impl GitPipeline {
    /// Start convoy-sources over `data_dir` (git caches in `sources/`,
    /// artifacts in `artifacts/`), following `fleet`.
    pub fn start(
        data_dir: PathBuf,
        artifact_retention: std::time::Duration,
        fleet: watch::Receiver<Arc<FleetConfig>>,
        shutdown: CancellationToken,
        helm: &crate::config::HelmSettings,
    ) -> Result<(Arc<Self>, tokio::task::JoinHandle<()>)> {
        let mut cfg = SourcesConfig::new(data_dir);
        cfg.artifact_retention = Some(artifact_retention);
        cfg.helm.kube_version = helm.kube_version.clone();
        cfg.helm.library = helm.library.clone();
        cfg.helm.worker = helm.worker.split_first().map(|(program, args)| {
            convoy_sources::helmrender::WorkerCommand { program: program.into(), args: args.to_vec() }
        });
        let (sources, task) = Sources::start(cfg, fleet, shutdown).map_err(Error::Sources)?;
        Ok((Arc::new(Self { sources }), task))
    }
}

fn map(e: convoy_sources::Error) -> Error {
    match e {
        convoy_sources::Error::UnknownSource(s) => Rejection::NotFound(format!("source {s:?}")).into(),
        other => Error::Sources(other),
    }
}

impl SourcePipeline for GitPipeline {
    fn builds(&self) -> watch::Receiver<Builds> {
        self.sources.builds()
    }

    fn statuses(&self) -> watch::Receiver<Statuses> {
        self.sources.statuses()
    }

    fn reconcile(&self, source: &str) -> Result<()> {
        self.sources.reconcile(source).map_err(map)
    }

    fn set_suspended(&self, source: &str, suspended: bool) -> Result<()> {
        self.sources.set_suspended(source, suspended).map_err(map)
    }

    fn artifact_path(&self, digest: &str) -> Option<PathBuf> {
        self.sources.store().path(digest)
    }

    fn webhook_router(&self) -> Option<axum::Router> {
        Some(self.sources.webhook_router())
    }

    fn render_stats(&self) -> Option<Arc<convoy_sources::deps::RenderStats>> {
        Some(self.sources.render_stats())
    }
}
