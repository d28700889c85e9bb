//! The fleet state actor's side of per-cluster variant builds: requesting
//! builds from the builder task ([`crate::variants::spawn_builder`]) instead
//! of building in the actor's turn, taking their results back as messages,
//! retrying failed builds with the core backoff, answering the callers that
//! wait for a cluster's builds, and collecting variant artifacts nothing
//! references any more.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{Actor, Reply};
use crate::domain::DeploymentRecord;

/// The actor's side of the variant builder task: requests out, results in,
/// the clusters waiting on each build, failed builds waiting for their retry,
/// and the answers waiting for a cluster's builds.
pub(super) struct VariantBuilds {
    pub(super) tx: mpsc::UnboundedSender<crate::variants::BuildRequest>,
    pub(super) rx: Option<mpsc::UnboundedReceiver<crate::variants::BuildDone>>,
    /// (base digest, key) → clusters waiting for it.
    pub(super) in_flight: HashMap<(String, String), BTreeSet<String>>,
    /// Failed builds: (base digest, key) → (consecutive failures, when the
    /// failure is dropped from the cache and the build retried, clusters to refresh then).
    pub(super) retries: HashMap<(String, String), (u32, tokio::time::Instant, BTreeSet<String>)>,
    /// Answers (SetVars, RefreshVariants) sent once the cluster has no build in flight.
    pub(super) deferred: Vec<(String, Box<dyn FnOnce() + Send>)>,
}

impl Actor {
    /// The variant `key` of `base` from the cache (its digest, size and Helm
    /// statement part, or the error, located for substitution problems), or
    /// `None` while it is being built: the build is requested from the
    /// builder task ([`crate::variants::build`] off the actor's turn) and
    /// `cluster` is refreshed when it is done.
    pub(super) fn build_variant(
        &mut self,
        base: &DeploymentRecord,
        key: &str,
        input: &crate::domain::variants::EffectiveInput,
        cluster: &str,
    ) -> Option<std::result::Result<crate::variants::Built, String>> {
        let ck = (base.digest.clone(), key.to_string());
        if let Some(r) = self.built_cache.get(&ck) {
            // A failed build is retried later: this cluster is refreshed then too.
            if let Some((_, _, waiting)) = self.builder.retries.get_mut(&ck) {
                waiting.insert(cluster.to_string());
            }
            return Some(r.clone());
        }
        if let Some(waiting) = self.builder.in_flight.get_mut(&ck) {
            waiting.insert(cluster.to_string());
            return None;
        }
        let job = self.build_job(base, input, cluster);
        if self.builder.tx.send(crate::variants::BuildRequest { key: ck.clone(), job }).is_err() {
            return Some(Err("the hub's variant builder has stopped".into()));
        }
        self.builder.in_flight.insert(ck, [cluster.to_string()].into());
        None
    }

    /// Variant builds finished: cache each result (a failure until its
    /// retry, with the core backoff), refresh the clusters waiting for any of
    /// them in one pass, publish, and answer the callers waiting for those
    /// clusters.
    pub(super) async fn on_variants_built(&mut self, done: Vec<crate::variants::BuildDone>) {
        for d in done {
            self.variant_built(d);
        }
        self.refresh_pending_variants().await;
        self.answer_deferred();
        self.ready_if_idle();
    }

    /// One finished build: cached, and its waiting clusters marked pending.
    fn variant_built(&mut self, done: crate::variants::BuildDone) {
        let waiting = self.builder.in_flight.remove(&done.key).unwrap_or_default();
        match &done.result {
            Ok(_) => {
                self.builder.retries.remove(&done.key);
            }
            Err(m) => {
                let failures = self.builder.retries.get(&done.key).map(|r| r.0).unwrap_or(0);
                let (base, cap) = self.deps.variant_store.retry_backoff();
                let delay = convoy_core::backoff::delay(failures, base, cap);
                self.deps.variant_store.count_failure();
                warn!(key = %done.key.1, error = %m, retry_in = ?delay, "variant build failed; retrying later");
                self.builder.retries.insert(
                    done.key.clone(),
                    (failures + 1, tokio::time::Instant::now() + delay, waiting.clone()),
                );
            }
        }
        if self.built_cache.len() > 100_000 {
            self.built_cache.clear();
        }
        self.built_cache.insert(done.key, done.result);
        self.variants_pending.extend(waiting);
    }

    /// Collect the variant artifacts nothing references: not a current
    /// variant (built from its bundle's current base), not in any cluster's
    /// desired set (published or pending), not in a rollout (held, base,
    /// given, rolled back), not a cached build of a current base. Builds of
    /// older bases are dropped from the cache first (they are never used
    /// again). The deletion runs in `spawn_blocking` in a task of its own;
    /// what was collected is logged and counted (`variant_artifacts_collected`).
    pub(super) fn collect_variants(&mut self, reply: Option<Reply<usize>>) {
        use std::collections::HashSet;
        let current: HashSet<&str> = self.records.values().map(|r| r.digest.as_str()).collect();
        self.built_cache.retain(|(base, _), _| current.contains(base.as_str()));
        let mut keep: HashSet<String> = HashSet::new();
        for (k, r) in self.variants.iter() {
            if self.variant_bases.get(k).is_some_and(|b| current.contains(b.as_str())) {
                keep.insert(r.digest.clone());
            }
        }
        for b in self.built_cache.values().flatten() {
            keep.insert(b.digest.clone());
        }
        for e in self.clusters.values() {
            keep.extend(e.shared.desired().bundles.values().map(|d| d.record.digest.clone()));
        }
        for (_, d) in self.pending_desired.values() {
            keep.extend(d.bundles.values().map(|d| d.record.digest.clone()));
        }
        for r in self.rollouts.all().values() {
            let records =
                r.held.values().chain(r.base.as_ref()).chain(r.given.values()).chain(r.rolled_back.values());
            keep.extend(records.map(|d| d.digest.clone()));
        }
        let store = self.deps.variant_store.clone();
        tokio::spawn(async move {
            let n = match tokio::task::spawn_blocking(move || store.gc(&keep)).await {
                Ok(Ok(deleted)) => {
                    if !deleted.is_empty() {
                        info!(collected = deleted.len(), digests = ?deleted, "variant artifacts no one references were deleted");
                    }
                    deleted.len()
                }
                Ok(Err(e)) => {
                    warn!(error = %e, "variant artifact collection failed");
                    0
                }
                Err(e) => {
                    warn!(error = %e, "variant artifact collection panicked");
                    0
                }
            };
            if let Some(r) = reply {
                let _ = r.send(Ok(n));
            }
        });
    }

    /// When the next failed build is due for its retry.
    pub(super) fn next_retry(&self) -> tokio::time::Instant {
        self.builder
            .retries
            .values()
            .map(|r| r.1)
            .min()
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600))
    }

    /// Drop the failures whose retry is due from the cache and refresh their
    /// clusters (which requests the builds again).
    pub(super) async fn retry_due_builds(&mut self) {
        let now = tokio::time::Instant::now();
        for (k, (_, due, waiting)) in self.builder.retries.iter_mut() {
            if *due <= now {
                // Not due again until the build fails again.
                *due = now + Duration::from_secs(365 * 86400);
                self.built_cache.remove(k);
                self.variants_pending.extend(std::mem::take(waiting));
            }
        }
        self.refresh_pending_variants().await;
        self.answer_deferred();
    }

    /// Answer now, or once `cluster` has no variant build in flight.
    pub(super) fn answer_when_built(&mut self, cluster: &str, answer: Box<dyn FnOnce() + Send>) {
        if self.builder.in_flight.values().any(|w| w.contains(cluster)) {
            self.builder.deferred.push((cluster.to_string(), answer));
        } else {
            answer();
        }
    }

    pub(super) fn answer_deferred(&mut self) {
        let in_flight = &self.builder.in_flight;
        let (ready, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.builder.deferred)
            .into_iter()
            .partition(|(c, _)| !in_flight.values().any(|w| w.contains(c)));
        self.builder.deferred = wait;
        for (_, answer) in ready {
            answer();
        }
    }

    /// Ready once the first computation's builds are done.
    pub(super) fn ready_if_idle(&self) {
        if self.builder.in_flight.is_empty() && !*self.ready_tx.borrow() {
            self.ready_tx.send_replace(true);
        }
    }

    /// What building a variant of `base` reads: the base artifact and, for a
    /// Helm bundle, the render input its build stored.
    pub(super) fn build_job(
        &self,
        base: &DeploymentRecord,
        input: &crate::domain::variants::EffectiveInput,
        cluster: &str,
    ) -> crate::variants::BuildJob {
        let pipeline = &self.deps.pipeline;
        let helm = self.fleet.bundles.get(&base.bundle).is_some_and(|b| b.spec.helm.is_some());
        let helm_input = helm.then(|| {
            let digest = self
                .builds
                .get(&base.bundle)
                .and_then(|b| b.artifact.as_ref())
                .filter(|a| a.digest == base.digest)
                .and_then(|a| a.helm.as_ref())
                .and_then(|h| h.input.clone())
                .unwrap_or_default();
            let path = pipeline.artifact_path(&digest);
            (digest, path)
        });
        crate::variants::BuildJob {
            base: (base.digest.clone(), pipeline.artifact_path(&base.digest)),
            helm_input,
            input: input.clone(),
            cluster: cluster.to_string(),
        }
    }
}
