//! The seam between the hub and its source pipeline (git fetch, render, build).
//!
//! The hub needs four things from the pipeline: the latest build of every
//! bundle, the fetch status of every source, the path of a stored artifact, and
//! the reconcile / suspend actions. [`SourcePipeline`] is that contract;
//! convoy-sources' `Sources` implements it in the runtime, and
//! [`StaticPipeline`] is fed by hand (tests, benchmarks, tools).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use convoy_core::pipeline::{BuildError, BuiltArtifact, BundleBuildState, SourceStatus};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::{Error, Result, files, now_ms};

/// Builds by bundle name.
pub type Builds = Arc<BTreeMap<String, BundleBuildState>>;
/// Source statuses by source name.
pub type Statuses = Arc<BTreeMap<String, SourceStatus>>;

/// What the hub needs from the source pipeline.
pub trait SourcePipeline: Send + Sync + 'static {
    /// The latest build state of every bundle.
    fn builds(&self) -> watch::Receiver<Builds>;
    /// The fetch status of every source.
    fn statuses(&self) -> watch::Receiver<Statuses>;
    /// Fetch a source now.
    fn reconcile(&self, source: &str) -> Result<()>;
    /// Suspend or resume polling a source.
    fn set_suspended(&self, source: &str, suspended: bool) -> Result<()>;
    /// The file holding the artifact with `digest`, if stored.
    fn artifact_path(&self, digest: &str) -> Option<PathBuf>;
    /// HTTP routes (webhooks) to mount on the hub's HTTP port.
    fn webhook_router(&self) -> Option<axum::Router> {
        None
    }
    /// Render counters (incremental rendering), exported on /metrics.
    fn render_stats(&self) -> Option<Arc<convoy_sources::deps::RenderStats>> {
        None
    }
}

/// A pipeline fed by hand: artifacts are stored by digest in a directory and
/// builds are published by calling [`StaticPipeline::publish`].
pub struct StaticPipeline {
    dir: PathBuf,
    builds: watch::Sender<Builds>,
    statuses: watch::Sender<Statuses>,
    actions: Mutex<Vec<String>>,
}

impl StaticPipeline {
    /// A pipeline storing artifacts under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Arc<Self> {
        Arc::new(Self {
            dir: dir.into(),
            builds: watch::Sender::new(Arc::default()),
            statuses: watch::Sender::new(Arc::default()),
            actions: Mutex::new(Vec::new()),
        })
    }

    /// Store `bytes` as the new artifact of `bundle` and publish the build.
    pub fn publish(
        &self,
        bundle: &str,
        source: &str,
        source_url: &str,
        revision: &str,
        bytes: &[u8],
    ) -> Result<BuiltArtifact> {
        let hex = hex::encode(Sha256::digest(bytes));
        let path = self.dir.join(format!("{hex}.tar.gz"));
        if !path.exists() {
            files::write_public(&path, bytes)?;
        }
        let art = BuiltArtifact {
            bundle: bundle.into(),
            source: source.into(),
            source_url: source_url.into(),
            revision: revision.into(),
            digest: format!("sha256:{hex}"),
            size: bytes.len() as u64,
            files: 1,
            built_unix_ms: now_ms(),
            helm: None,
        };
        let state = BundleBuildState { bundle: bundle.into(), artifact: Some(art.clone()), error: None };
        self.builds.send_modify(|b| {
            Arc::make_mut(b).insert(bundle.into(), state);
        });
        Ok(art)
    }

    /// Store `bytes` as the new artifact of the Helm bundle `bundle`, with
    /// its stored render input `input` (what the source controller stores),
    /// and publish the build with `helm` (its `input` set to the input's digest).
    pub fn publish_helm(
        &self,
        bundle: &str,
        revision: &str,
        bytes: &[u8],
        mut helm: convoy_core::pipeline::BuiltHelm,
        input: &[u8],
    ) -> Result<BuiltArtifact> {
        let hex = hex::encode(Sha256::digest(input));
        let path = self.dir.join(format!("{hex}.tar.gz"));
        if !path.exists() {
            files::write_public(&path, input)?;
        }
        helm.input = Some(format!("sha256:{hex}"));
        let hex = hex::encode(Sha256::digest(bytes));
        let path = self.dir.join(format!("{hex}.tar.gz"));
        if !path.exists() {
            files::write_public(&path, bytes)?;
        }
        let art = BuiltArtifact {
            bundle: bundle.into(),
            source: "repo".into(),
            source_url: "https://git.example/fleet.git".into(),
            revision: revision.into(),
            digest: format!("sha256:{hex}"),
            size: bytes.len() as u64,
            files: 1,
            built_unix_ms: now_ms(),
            helm: Some(Box::new(helm)),
        };
        let state = BundleBuildState { bundle: bundle.into(), artifact: Some(art.clone()), error: None };
        self.builds.send_modify(|b| {
            Arc::make_mut(b).insert(bundle.into(), state);
        });
        Ok(art)
    }

    /// Record a failed build of `bundle` (the last good artifact is kept).
    pub fn fail(&self, bundle: &str, reason: &str, message: &str) {
        self.builds.send_modify(|b| {
            let m = Arc::make_mut(b);
            let e = m
                .entry(bundle.into())
                .or_insert_with(|| BundleBuildState { bundle: bundle.into(), ..Default::default() });
            e.error = Some(BuildError {
                revision: None,
                reason: reason.into(),
                message: message.into(),
                at_unix_ms: now_ms(),
            });
        });
    }

    /// Set a source's status.
    pub fn set_source_status(&self, status: SourceStatus) {
        self.statuses.send_modify(|s| {
            Arc::make_mut(s).insert(status.name.clone(), status);
        });
    }

    /// The actions requested so far (`reconcile NAME`, `suspend NAME`, `resume NAME`).
    pub fn actions(&self) -> Vec<String> {
        self.actions.lock().clone()
    }

    /// The directory artifacts are stored in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl SourcePipeline for StaticPipeline {
    fn builds(&self) -> watch::Receiver<Builds> {
        self.builds.subscribe()
    }

    fn statuses(&self) -> watch::Receiver<Statuses> {
        self.statuses.subscribe()
    }

    fn reconcile(&self, source: &str) -> Result<()> {
        if !self.statuses.borrow().contains_key(source) {
            return Err(Error::Rejected(crate::domain::Rejection::NotFound(format!("source {source:?}"))));
        }
        self.actions.lock().push(format!("reconcile {source}"));
        Ok(())
    }

    fn set_suspended(&self, source: &str, suspended: bool) -> Result<()> {
        if !self.statuses.borrow().contains_key(source) {
            return Err(Error::Rejected(crate::domain::Rejection::NotFound(format!("source {source:?}"))));
        }
        self.statuses.send_modify(|s| {
            if let Some(st) = Arc::make_mut(s).get_mut(source) {
                st.suspended = suspended;
            }
        });
        self.actions.lock().push(format!("{} {source}", if suspended { "suspend" } else { "resume" }));
        Ok(())
    }

    fn artifact_path(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:")?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let p = self.dir.join(format!("{hex}.tar.gz"));
        p.is_file().then_some(p)
    }
}
