//! The source pipeline of one replica among several: wraps the real
//! pipeline so that a source polls only on the replica holding its lock
//! (the others keep it suspended: standby), and only that replica's builds
//! reach the state actor, which signs generations from them
//! ([`super::locks::admit_builds`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use convoy_core::config::FleetConfig;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::locks::{admit_builds, source_lock, standby};
use crate::Result;
use crate::domain::Rejection;
use crate::pipeline::{Builds, SourcePipeline, Statuses};

/// A [`SourcePipeline`] gated on this replica's source locks.
pub struct StandbyPipeline {
    inner: Arc<dyn SourcePipeline>,
    /// Operator suspensions (`convoy source suspend`), by source.
    operator: Mutex<BTreeMap<String, bool>>,
    /// What was last applied to the inner pipeline, by source.
    applied: Mutex<BTreeMap<String, bool>>,
    held: watch::Receiver<BTreeSet<String>>,
    builds: watch::Sender<Builds>,
}

impl StandbyPipeline {
    /// Wrap `inner`: `held` are the locks this replica holds, `fleet` names
    /// the sources. Every source not held is suspended in `inner` before
    /// this returns; a task follows the locks until `shutdown`.
    pub fn wrap(
        inner: Arc<dyn SourcePipeline>,
        held: watch::Receiver<BTreeSet<String>>,
        mut fleet: watch::Receiver<Arc<FleetConfig>>,
        shutdown: CancellationToken,
    ) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let mut inner_builds = inner.builds();
        let first = admit_builds(&Builds::default(), &inner_builds.borrow(), &held.borrow());
        let me = Arc::new(Self {
            inner,
            operator: Mutex::new(BTreeMap::new()),
            applied: Mutex::new(BTreeMap::new()),
            held: held.clone(),
            builds: watch::Sender::new(first),
        });
        me.apply(&fleet.borrow());
        let this = me.clone();
        let mut held = held;
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = held.changed() => if r.is_err() { return },
                    r = fleet.changed() => if r.is_err() { return },
                    r = inner_builds.changed() => if r.is_err() { return },
                }
                let fleet_now = fleet.borrow_and_update().clone();
                this.apply(&fleet_now);
                let admitted = admit_builds(
                    &this.builds.borrow(),
                    &inner_builds.borrow_and_update(),
                    &held.borrow_and_update(),
                );
                this.builds.send_if_modified(|b| {
                    let changed = *b != admitted;
                    *b = admitted;
                    changed
                });
            }
        });
        (me, task)
    }

    /// Suspend in `inner` exactly the sources that must not poll here.
    fn apply(&self, fleet: &FleetConfig) {
        let held = self.held.borrow().clone();
        let operator = self.operator.lock().clone();
        let mut applied = self.applied.lock();
        applied.retain(|s, _| fleet.has_source(s));
        for source in &fleet.source_names() {
            let s = standby(operator.get(source).copied().unwrap_or(false), &held, source);
            if applied.get(source) == Some(&s) {
                continue;
            }
            match self.inner.set_suspended(source, s) {
                Ok(()) => {
                    if held.contains(&source_lock(source)) && !s {
                        info!(source = %source, "this replica holds the source lock: polling it");
                    } else if applied.get(source) == Some(&false) && s {
                        info!(source = %source, "source lock not held here: standing by");
                    }
                    applied.insert(source.clone(), s);
                }
                Err(e) => warn!(source = %source, error = %e, "cannot gate the source on its lock"),
            }
        }
    }
}

impl SourcePipeline for StandbyPipeline {
    fn builds(&self) -> watch::Receiver<Builds> {
        self.builds.subscribe()
    }

    fn statuses(&self) -> watch::Receiver<Statuses> {
        self.inner.statuses()
    }

    fn reconcile(&self, source: &str) -> Result<()> {
        if !self.held.borrow().contains(&source_lock(source)) {
            return Err(Rejection::FailedPrecondition(format!(
                "source {source:?} is polled by another hub replica (it holds the source's lock); \
                 that replica fetches it"
            ))
            .into());
        }
        self.inner.reconcile(source)
    }

    fn set_suspended(&self, source: &str, suspended: bool) -> Result<()> {
        self.operator.lock().insert(source.to_string(), suspended);
        let s = standby(suspended, &self.held.borrow(), source);
        self.inner.set_suspended(source, s)?;
        self.applied.lock().insert(source.to_string(), s);
        Ok(())
    }

    fn artifact_path(&self, digest: &str) -> Option<PathBuf> {
        self.inner.artifact_path(digest)
    }

    fn webhook_router(&self) -> Option<axum::Router> {
        self.inner.webhook_router()
    }
    fn render_stats(&self) -> Option<std::sync::Arc<convoy_sources::deps::RenderStats>> {
        self.inner.render_stats()
    }
}
