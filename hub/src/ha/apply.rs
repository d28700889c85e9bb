//! The state actor's side of [`crate::ha`] (a child module of
//! [`crate::state`], kept with the HA code): applies what other replicas
//! committed, as decided by [`crate::ha::plan`], to the actor's state. The
//! changes are durable already (another replica committed them), so the
//! actor publishes them at once, with no commit of its own.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::{info, warn};

use super::{Actor, ClusterEntry, ClusterShared};
use crate::domain::Liveness;
use crate::ha::changes::Current;
use crate::ha::{RemoteChange, plan};

impl Actor {
    /// Apply the changes of one store revision committed by another replica.
    pub(super) fn apply_remote(&mut self, changes: Vec<RemoteChange>) {
        let plan = {
            let clusters = self.clusters.clone();
            let statuses = self.deps.statuses.clone();
            let lookup = |n: &str| clusters.get(n).map(|e| e.record.clone());
            let stamp = |c: &str, b: &str| statuses.cluster(c).get().get(b).map(|s| s.updated_unix_ms);
            let seen = |c: &str| clusters.get(c).map(|e| e.shared.last_seen());
            let rollout_version = |b: &str| self.rollouts.version(b);
            let variant_generation =
                |b: &str, k: &str| self.variants.get(&(b.to_string(), k.to_string())).map(|r| r.generation);
            plan(
                &Current {
                    clusters: &lookup,
                    records: &self.records,
                    suspended: &self.suspended,
                    status_stamp: &stamp,
                    last_seen: &seen,
                    rollout_version: &rollout_version,
                    variant_generation: &variant_generation,
                },
                changes,
            )
        };
        for rec in plan.clusters {
            let name = rec.name.clone();
            let shared = match self.clusters.get(&name) {
                Some(e) => e.shared.clone(),
                None => ClusterShared::new(&name, Liveness::default(), self.deps.statuses.cluster(&name)),
            };
            Arc::make_mut(&mut self.clusters).insert(name, ClusterEntry { record: Arc::new(rec), shared });
        }
        for name in plan.kill_sessions {
            if let Some(e) = self.clusters.get(&name) {
                info!(cluster = %name, "cluster revoked or registered again on another replica; closing its streams here");
                e.shared.kill_sessions();
            }
        }
        let now = self.deps.clock.now_ms();
        for t in plan.tokens {
            if t.expires_unix_ms > now {
                self.tokens.insert(t.id.clone(), t);
            }
        }
        // A new base of a customized bundle: every cluster is placed again
        // (on the variants its signer signs for it).
        let new_bases = plan.deployments.iter().any(|d| {
            self.fleet.bundles.get(&d.bundle).is_some_and(|b| crate::domain::variants::is_customized(&b.spec))
        });
        if new_bases {
            self.variants_pending.extend(self.clusters.keys().cloned());
        }
        if !plan.deployments.is_empty() {
            let m = Arc::make_mut(&mut self.records);
            for d in plan.deployments {
                info!(bundle = %d.bundle, generation = d.generation, "generation signed by another replica");
                m.insert(d.bundle.clone(), Arc::new(d));
            }
        }
        for (bundle, suspended) in plan.suspended {
            let s = Arc::make_mut(&mut self.suspended);
            if suspended {
                s.insert(bundle);
            } else {
                s.remove(&bundle);
            }
        }
        for (source, suspended) in plan.source_suspended {
            if let Err(e) = self.deps.pipeline.set_suspended(&source, suspended) {
                warn!(source = %source, error = %e, "the source pipeline refused a suspension stored by another replica");
            }
        }
        for (cluster, statuses) in plan.statuses {
            self.deps.statuses.put(&cluster, &statuses);
        }
        for (cluster, l) in plan.liveness {
            if let Some(e) = self.clusters.get(&cluster) {
                // Not marked dirty: the replica that heard the agent stored it.
                e.shared.last_seen_ms.fetch_max(l.last_seen_unix_ms, Ordering::Relaxed);
                e.shared.agent_version.store(Arc::new(l.agent_version));
                e.shared.age_recipients.store(Arc::new(l.age_recipients));
            }
        }
        // Rollouts: the leader's progress, a new generation's rollout (in the
        // same revision as the generation, so no cluster ever sees the new
        // generation unheld), operators' commands made on another replica.
        for r in plan.rollouts {
            info!(bundle = %r.bundle, version = r.version, status = r.state.status.name(), wave = r.state.wave_name(), "rollout changed on another replica");
            self.rollouts.install_remote(r);
        }
        for b in plan.rollouts_deleted {
            self.rollouts.remove(&b);
        }
        // Variants signed by the replica holding their bundle's source lock:
        // the clusters waiting for one here are placed again.
        if !plan.variants.is_empty() {
            let m = Arc::make_mut(&mut self.variants);
            for v in plan.variants {
                info!(bundle = %v.record.bundle, variant = %v.key, generation = v.record.generation, "variant signed by another replica");
                let k = (v.record.bundle.clone(), v.key.clone());
                self.variant_bases.insert(k.clone(), v.base_digest);
                m.insert(k, Arc::new(v.record));
            }
            self.variants_pending.extend(std::mem::take(&mut self.variants_awaited));
        }
        self.variants_pending.extend(plan.recompute_variants);
        if plan.retarget_all {
            self.rebuild_index();
            self.retarget(None);
        }
        self.dirty = true;
    }

    /// This replica's locks changed: it may now sign bundles (it took a
    /// source's lock, or leadership) whose variants its clusters wait for,
    /// so those clusters are placed again (signing what is missing).
    pub(super) async fn on_locks_changed(&mut self) {
        if self.variants_awaited.is_empty() {
            return;
        }
        info!(
            clusters = self.variants_awaited.len(),
            "locks changed; placing the clusters waiting for a variant again"
        );
        self.variants_pending.extend(std::mem::take(&mut self.variants_awaited));
        self.refresh_pending_variants().await;
    }
}
