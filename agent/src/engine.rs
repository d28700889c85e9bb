//! The apply engine shared by the agent and the one-shot commands: plan a
//! bundle against the cluster's API (discovery, namespaces, labels), apply it
//! in stages with server-side apply, skip objects already in sync, prune what
//! left the bundle, keep the inventory, preview changes with server-side
//! dry-run, and correct drift.
//!
//! In-sync detection: the inventory keeps, per object, the hash of the body
//! last applied and the resourceVersion / generation / label-annotation hash
//! the apply produced. An object whose desired hash is unchanged and whose live
//! metadata still matches (same resourceVersion, or same generation and same
//! values for the labels and annotations the bundle sets) is in sync with no
//! request beyond one metadata GET. Anything else goes through a server-side
//! dry-run apply compared field by field with the live object, and is written
//! only when that comparison finds a difference. An unchanged bundle therefore
//! costs zero writes.
//!
//! The steps live in submodules: `plan` (resolve and normalize), `stage`
//! (prepare, apply stages, one object, recreate), `prune` (what left),
//! `createonly` (objects created when missing and never changed).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::diff::changed_fields;
use crate::discovery::Discovery;
use crate::inventory::{self, Entry, Inventory};
use crate::kubeapi::{MetaOnly, ObjApi};
use crate::objects::{DesiredObject, MetaKey, ObjKey, Stage, WriteMode, meta_hash};
use crate::{Error, Result};

mod createonly;
mod plan;
mod prune;
mod stage;

pub use prune::prune_skip_reason;

/// What was done to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Action {
    /// Created by this apply.
    Created,
    /// Changed by this apply.
    Configured,
    /// Already in sync: not written.
    Unchanged,
    /// Deleted because it left the bundle.
    Pruned,
    /// Left the bundle but kept (prune disabled by annotation, or owned by another bundle now).
    PruneSkipped,
    /// Left the bundle and kept because prune is off.
    Orphaned,
    /// Would be created (diff).
    WouldCreate,
    /// Would be changed (diff).
    WouldConfigure,
    /// Would be deleted (diff).
    WouldPrune,
    /// Deleted and created again: a field it changes cannot change in
    /// place (`force`); `fields` names them.
    Recreated,
    /// The apply of this object failed.
    Failed,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Created => "created",
            Action::Configured => "configured",
            Action::Unchanged => "unchanged",
            Action::Pruned => "pruned",
            Action::PruneSkipped => "prune skipped",
            Action::Orphaned => "orphaned",
            Action::WouldCreate => "would create",
            Action::WouldConfigure => "would configure",
            Action::WouldPrune => "would prune",
            Action::Recreated => "recreated",
            Action::Failed => "failed",
        })
    }
}

/// The result for one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectResult {
    /// The object.
    pub key: ObjKey,
    /// What happened.
    pub action: Action,
    /// Changed field paths (Configured / WouldConfigure / drift).
    pub fields: Vec<String>,
    /// Extra detail (why a prune was skipped, the error).
    pub message: String,
}

impl ObjectResult {
    fn new(key: ObjKey, action: Action) -> Self {
        Self { key, action, fields: Vec::new(), message: String::new() }
    }
}

/// Counts of an apply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Objects in the bundle.
    pub total: u32,
    /// Created.
    pub created: u32,
    /// Configured.
    pub configured: u32,
    /// Unchanged.
    pub unchanged: u32,
    /// Pruned.
    pub pruned: u32,
}

/// The outcome of one apply.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// The bundle.
    pub bundle: String,
    /// Per object, in apply order, then prunes.
    pub objects: Vec<ObjectResult>,
    /// Write requests sent (applies, deletes, inventory writes).
    pub writes: u32,
    /// How long the apply (and prune) took.
    pub duration: Duration,
    /// The inventory after the apply.
    pub inventory: Inventory,
    /// Why the apply stopped, if it did. Objects of earlier stages (and some
    /// of the failing stage) may have been applied: `objects` says which.
    pub error: Option<Error>,
    /// The stage whose objects failed, when the apply stopped there.
    pub failed_stage: Option<Stage>,
}

impl ApplyReport {
    /// Counts by action.
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for o in &self.objects {
            match o.action {
                Action::Created | Action::Recreated => c.created += 1,
                Action::Configured => c.configured += 1,
                Action::Unchanged => c.unchanged += 1,
                Action::Pruned => c.pruned += 1,
                _ => {}
            }
        }
        c.total = self.inventory.entries.len() as u32;
        c
    }

    /// Whether anything was written to the bundle's objects.
    pub fn changed(&self) -> bool {
        self.objects.iter().any(|o| {
            matches!(o.action, Action::Created | Action::Configured | Action::Recreated | Action::Pruned)
        })
    }
}

/// A bundle planned against the cluster's API: every object resolved,
/// namespaced, labelled and hashed. Built before anything is written.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// The bundle.
    pub bundle: String,
    /// The source revision.
    pub revision: String,
    /// The statement generation.
    pub generation: u64,
    /// The artifact digest.
    pub digest: String,
    /// Objects sorted by stage (stable within a stage).
    pub objects: Vec<DesiredObject>,
}

impl Plan {
    /// Health targets: every object, how it is served, and whether it is
    /// deleted by the cluster once finished.
    pub fn targets(&self) -> Vec<crate::health::Target> {
        self.objects
            .iter()
            .map(|o| crate::health::Target {
                key: o.key.clone(),
                resource: o.resource.clone(),
                gone_when_finished: o.gone_when_finished(),
            })
            .collect()
    }

    /// The object with this key.
    pub fn get(&self, key: &ObjKey) -> Option<&DesiredObject> {
        self.objects.iter().find(|o| &o.key == key)
    }
}

/// Apply options of a bundle.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyOptions {
    /// Take ownership of fields owned by other managers, and recreate
    /// objects whose change touches immutable fields.
    pub force: bool,
    /// Delete objects that left the bundle.
    pub prune: bool,
}

/// What a drift check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriftOutcome {
    /// Live matches desired; the entry to remember (refreshed metadata).
    InSync(Entry),
    /// Live differed and was put back (fields named); the new entry.
    Corrected {
        /// The fields that had drifted (`(deleted)` when it was recreated).
        fields: Vec<String>,
        /// The entry after the correction.
        entry: Entry,
    },
    /// Live differs; detect-only mode left it.
    Detected {
        /// The fields that drifted (`(deleted)` when it is gone).
        fields: Vec<String>,
    },
}

/// The engine: a Kubernetes client, a discovery cache, where inventories live
/// and how many objects are applied at once.
#[derive(Clone)]
pub struct Engine {
    client: kube::Client,
    discovery: Discovery,
    namespace: String,
    concurrency: usize,
}

impl Engine {
    /// An engine keeping inventories in `namespace`.
    pub fn new(client: kube::Client, namespace: &str, concurrency: usize) -> Self {
        Self {
            discovery: Discovery::new(client.clone()),
            client,
            namespace: namespace.to_string(),
            concurrency: concurrency.max(1),
        }
    }

    /// Warm the discovery cache (aggregated discovery, best effort).
    pub async fn prefetch_discovery(&self) {
        self.discovery.prefetch().await
    }

    /// The Kubernetes client.
    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// The namespace inventories live in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Objects applied at once within a stage.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// The bundle's inventory in the cluster.
    pub async fn inventory(&self, bundle: &str) -> Result<Option<Inventory>> {
        inventory::load(&self.client, &self.namespace, bundle).await
    }

    /// Apply a plan: stages in order, objects of a stage concurrently, then
    /// prune (or orphan) what left the bundle, then write the inventory if it
    /// changed. Stops at the first stage with a failure (the report says which
    /// objects were applied, and which stage failed).
    pub async fn apply(&self, plan: &Plan, opts: ApplyOptions, cancel: &CancellationToken) -> ApplyReport {
        let start = Instant::now();
        let mut report = ApplyReport { bundle: plan.bundle.clone(), ..Default::default() };
        let result = match self.inventory(&plan.bundle).await {
            Ok(prev) => self.apply_plan(plan, opts, prev, cancel, &mut report).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            report.error = Some(e);
        }
        report.duration = start.elapsed();
        report
    }

    /// Prepare, apply the stages, prune, and save the inventory.
    async fn apply_plan(
        &self,
        plan: &Plan,
        opts: ApplyOptions,
        prev: Option<Inventory>,
        cancel: &CancellationToken,
        report: &mut ApplyReport,
    ) -> Result<()> {
        let prev = prev.unwrap_or_else(|| Inventory { bundle: plan.bundle.clone(), ..Default::default() });
        let prev_by_key: BTreeMap<ObjKey, Entry> =
            prev.entries.iter().map(|e| (e.key(), e.clone())).collect();
        let prepared = self.prepare(plan, &prev, &prev_by_key, report).await?;
        let mut entries = self.apply_stages(plan, opts, &prev_by_key, &prepared.live, cancel, report).await?;
        let stale: Vec<Entry> =
            prev.entries.iter().filter(|e| plan.get(&e.key()).is_none()).cloned().collect();
        let kept_for_retry = self.prune_stale(&plan.bundle, stale, opts.prune, report).await;
        let mut inv = Inventory {
            bundle: plan.bundle.clone(),
            revision: plan.revision.clone(),
            generation: plan.generation,
            digest: plan.digest.clone(),
            entries: plan.objects.iter().filter_map(|o| entries.remove(&o.key)).collect(),
        };
        inv.entries.extend(kept_for_retry.iter().cloned());
        if inv != prev || prepared.new_objects {
            inventory::save(&self.client, &self.namespace, &inv).await?;
            report.writes += 1;
        }
        report.inventory = inv;
        if !kept_for_retry.is_empty() {
            return Err(prune::prune_failed(report));
        }
        Ok(())
    }
    /// Remove a bundle that left the cluster: prune every object of its
    /// inventory (reverse stage order) when `prune`, else leave them (orphan),
    /// then delete the inventory (kept while some objects could not be deleted).
    pub async fn remove(&self, bundle: &str, prune: bool, cancel: &CancellationToken) -> ApplyReport {
        let start = Instant::now();
        let mut report = ApplyReport { bundle: bundle.into(), ..Default::default() };
        let prev = match self.inventory(bundle).await {
            Ok(Some(p)) => p,
            Ok(None) => return report,
            Err(e) => {
                report.error = Some(e);
                return report;
            }
        };
        if cancel.is_cancelled() {
            report.error = Some(Error::Cancelled);
            return report;
        }
        let kept = self.prune_stale(bundle, prev.entries, prune, &mut report).await;
        if !kept.is_empty() {
            report.inventory = Inventory { bundle: bundle.into(), entries: kept, ..Default::default() };
            report.error = Some(prune::prune_failed(&report));
            report.duration = start.elapsed();
            return report;
        }
        match inventory::delete(&self.client, &self.namespace, bundle).await {
            Ok(()) => report.writes += 1,
            Err(e) => report.error = Some(e),
        }
        report.inventory = Inventory { bundle: bundle.into(), ..Default::default() };
        report.duration = start.elapsed();
        report
    }

    /// What applying the plan would change, by server-side dry-run: objects
    /// that would be created, configured (with fields) or pruned. Writes nothing.
    pub async fn diff(&self, plan: &Plan, prune: bool) -> Result<Vec<ObjectResult>> {
        let prev = self.inventory(&plan.bundle).await?.unwrap_or_default();
        let recorded: BTreeMap<ObjKey, &Entry> = prev.entries.iter().map(|e| (e.key(), e)).collect();
        let recorded = &recorded;
        let results: Vec<Result<ObjectResult>> = futures::stream::iter(
            plan.objects
                .iter()
                .map(|o| async move {
                    let api = ObjApi::new(&self.client, &o.resource, &o.key);
                    if o.write == WriteMode::CreateOnly {
                        let live = api.get_meta().await?;
                        let prev = recorded.get(&o.key).copied();
                        return Ok(match createonly::step(o, prev, live.as_ref()) {
                            createonly::Step::Create => ObjectResult::new(o.key.clone(), Action::WouldCreate),
                            createonly::Step::Keep(_) => {
                                let mut r = ObjectResult::new(o.key.clone(), Action::Unchanged);
                                r.message = createonly::KEPT.into();
                                r
                            }
                        });
                    }
                    let Some(live) = api.get().await? else {
                        return Ok(ObjectResult::new(o.key.clone(), Action::WouldCreate));
                    };
                    let dry = api.dry_run(&o.body, false).await;
                    let dry = match dry {
                        Ok(d) => d,
                        Err(Error::Conflict(c)) => {
                            let mut r = ObjectResult::new(o.key.clone(), Action::Failed);
                            r.message = Error::Conflict(c).to_string();
                            return Ok(r);
                        }
                        Err(e) => return Err(e),
                    };
                    let fields = changed_fields(&live, &dry);
                    let mut r = ObjectResult::new(
                        o.key.clone(),
                        if fields.is_empty() { Action::Unchanged } else { Action::WouldConfigure },
                    );
                    r.fields = fields;
                    Ok(r)
                })
                .collect::<Vec<_>>(),
        )
        .buffered(self.concurrency)
        .collect()
        .await;
        let mut out: Vec<ObjectResult> = results.into_iter().collect::<Result<_>>()?;
        for e in prev.entries.iter().filter(|e| plan.get(&e.key()).is_none()) {
            let key = e.key();
            let action = if !prune {
                Action::Orphaned
            } else {
                match ObjApi::new(&self.client, &e.resource(), &key).get_meta().await? {
                    None => continue,
                    Some(live) if prune_skip_reason(&plan.bundle, &live).is_some() => Action::PruneSkipped,
                    Some(_) => Action::WouldPrune,
                }
            };
            out.push(ObjectResult::new(key, action));
        }
        Ok(out)
    }

    /// Compare one applied object with the cluster and, unless `detect_only`,
    /// put it back. `entry` is what the inventory recorded for it. A
    /// create-only object is only put back when it was deleted; a change to
    /// it is never drift.
    pub async fn check_drift(
        &self,
        obj: &DesiredObject,
        entry: &Entry,
        detect_only: bool,
    ) -> Result<DriftOutcome> {
        let api = ObjApi::new(&self.client, &obj.resource, &obj.key);
        if obj.write == WriteMode::CreateOnly {
            let live = api.get_meta().await?;
            return match createonly::step(obj, Some(entry), live.as_ref()) {
                createonly::Step::Keep(e) => Ok(DriftOutcome::InSync(*e)),
                createonly::Step::Create if detect_only => {
                    Ok(DriftOutcome::Detected { fields: vec!["(deleted)".into()] })
                }
                createonly::Step::Create => {
                    let m = api.apply(&obj.body, true).await?;
                    Ok(DriftOutcome::Corrected {
                        fields: vec!["(deleted)".into()],
                        entry: entry_for(obj, Some(&m), obj.hash.clone()),
                    })
                }
            };
        }
        let Some(live) = api.get().await? else {
            // Deleted by the cluster once finished: done, not drift (putting
            // it back would run it again).
            if obj.gone_when_finished() {
                return Ok(DriftOutcome::InSync(entry.clone()));
            }
            if detect_only {
                return Ok(DriftOutcome::Detected { fields: vec!["(deleted)".into()] });
            }
            let m = api.apply(&obj.body, true).await?;
            return Ok(DriftOutcome::Corrected {
                fields: vec!["(deleted)".into()],
                entry: entry_for(obj, Some(&m), obj.hash.clone()),
            });
        };
        let live_meta: MetaOnly =
            serde_json::from_value(serde_json::json!({"metadata": live["metadata"].clone()}))
                .unwrap_or_default();
        if entry.hash == obj.hash && live_matches(entry, &live_meta, &obj.meta_keys) {
            return Ok(DriftOutcome::InSync(entry.clone()));
        }
        // Drift correction takes the fields back from whoever changed them:
        // the bundle declares them, so the bundle wins (force).
        let dry = api.dry_run(&obj.body, true).await?;
        let fields = changed_fields(&live, &dry);
        if fields.is_empty() {
            return Ok(DriftOutcome::InSync(entry_for(obj, Some(&live_meta), obj.hash.clone())));
        }
        if detect_only {
            return Ok(DriftOutcome::Detected { fields });
        }
        let m = api.apply(&obj.body, true).await?;
        Ok(DriftOutcome::Corrected { fields, entry: entry_for(obj, Some(&m), obj.hash.clone()) })
    }

    /// Persist an inventory (after drift corrections refreshed entries).
    pub async fn save_inventory(&self, inv: &Inventory) -> Result<()> {
        inventory::save(&self.client, &self.namespace, inv).await
    }
}

/// Whether live metadata still matches what the apply recorded: the same
/// resourceVersion, or (for kinds with a generation) the same generation and
/// the same values for the labels and annotations the bundle sets.
pub fn live_matches(e: &Entry, live: &MetaOnly, keys: &[MetaKey]) -> bool {
    if !e.rv.is_empty() && e.rv == live.rv() {
        return true;
    }
    e.generation > 0
        && live.generation() == e.generation
        && !e.meta_hash.is_empty()
        && meta_hash(keys, live.labels(), live.annotations()) == e.meta_hash
}

/// An inventory entry for `obj`, with the metadata an apply returned.
fn entry_for(obj: &DesiredObject, m: Option<&MetaOnly>, hash: String) -> Entry {
    let (rv, generation, mh) = match m {
        Some(m) => (
            m.rv().to_string(),
            // Generation covers only spec changes; trust it only for objects
            // whose content is spec (and metadata).
            if spec_only(&obj.body) { m.generation() } else { 0 },
            meta_hash(&obj.meta_keys, m.labels(), m.annotations()),
        ),
        None => (String::new(), 0, String::new()),
    };
    Entry {
        stage: obj.stage,
        api_version: obj.resource.api_version(),
        kind: obj.key.kind.clone(),
        plural: obj.resource.plural.clone(),
        namespace: obj.key.namespace.clone(),
        name: obj.key.name.clone(),
        hash,
        rv,
        generation,
        meta_hash: mh,
    }
}

fn spec_only(body: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Top(HashMap<String, serde::de::IgnoredAny>);
    serde_json::from_str::<Top>(body)
        .map(|t| {
            t.0.keys().all(|k| matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "spec" | "status"))
        })
        .unwrap_or(false)
}

fn merge_errors(mut errs: Vec<Error>) -> Error {
    if errs.len() == 1 {
        return errs.remove(0);
    }
    let mut conflicts = Vec::new();
    let mut immutable = Vec::new();
    let mut others = Vec::new();
    for e in errs {
        match e {
            Error::Conflict(c) => conflicts.extend(c),
            Error::Immutable(f) => immutable.extend(f),
            e => others.push(e),
        }
    }
    if others.is_empty() && immutable.is_empty() {
        return Error::Conflict(conflicts);
    }
    if others.is_empty() && conflicts.is_empty() {
        return Error::Immutable(immutable);
    }
    let transient = conflicts.is_empty() && immutable.is_empty() && others.iter().all(Error::is_transient);
    if !immutable.is_empty() {
        others.push(Error::Immutable(immutable));
    }
    let total = others.len();
    let mut parts: Vec<String> = others.iter().take(5).map(ToString::to_string).collect();
    if total > 5 {
        parts.push(format!("and {} more failures", total - 5));
    }
    if !conflicts.is_empty() {
        parts.push(Error::Conflict(conflicts).to_string());
    }
    Error::Apply { message: parts.join("; "), transient }
}

/// The keys a plan covers (for drift watchers).
pub fn plan_keys(plan: &Plan) -> HashSet<ObjKey> {
    plan.objects.iter().map(|o| o.key.clone()).collect()
}

/// Parse a JSON value's metadata as [`MetaOnly`].
pub fn meta_of(v: &Value) -> MetaOnly {
    serde_json::from_value(serde_json::json!({"metadata": v["metadata"].clone()})).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(rv: &str, generation: i64, labels: &[(&str, &str)], ann: &[(&str, &str)]) -> MetaOnly {
        let mut m = MetaOnly::default();
        m.metadata.resource_version = Some(rv.into());
        m.metadata.generation = Some(generation);
        m.metadata.labels = Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        m.metadata.annotations = Some(ann.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        m
    }

    fn entry(rv: &str, generation: i64, mh: &str) -> Entry {
        Entry {
            stage: Stage::Workloads,
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            plural: "deployments".into(),
            namespace: Some("x".into()),
            name: "d".into(),
            hash: "h".into(),
            rv: rv.into(),
            generation,
            meta_hash: mh.into(),
        }
    }

    #[test]
    fn live_match_rules() {
        let keys = vec![MetaKey::Label("app".into())];
        let live = meta("10", 2, &[("app", "a")], &[]);
        let mh = meta_hash(&keys, live.labels(), live.annotations());
        // Same resourceVersion.
        assert!(live_matches(&entry("10", 0, ""), &live, &keys));
        // Status moved the resourceVersion; generation and our labels did not change.
        assert!(live_matches(&entry("9", 2, &mh), &live, &keys));
        // Spec changed: generation moved.
        assert!(!live_matches(&entry("9", 1, &mh), &live, &keys));
        // Our label changed.
        let relabelled = meta("11", 2, &[("app", "b")], &[]);
        assert!(!live_matches(&entry("9", 2, &mh), &relabelled, &keys));
        // No generation recorded (ConfigMap): only the resourceVersion counts.
        assert!(!live_matches(&entry("9", 0, &mh), &live, &keys));
    }

    #[test]
    fn prune_skips_foreign_and_opted_out_objects() {
        let ours = meta("1", 0, &[("convoy.dev/bundle", "a")], &[]);
        assert_eq!(prune_skip_reason("a", &ours), None);
        let theirs = meta("1", 0, &[("convoy.dev/bundle", "b")], &[]);
        assert!(prune_skip_reason("a", &theirs).unwrap().contains("bundle b"));
        let opted = meta("1", 0, &[("convoy.dev/bundle", "a")], &[("convoy.dev/prune", "disabled")]);
        assert!(prune_skip_reason("a", &opted).unwrap().contains("disabled"));
        let unlabelled = meta("1", 0, &[], &[]);
        assert!(prune_skip_reason("a", &unlabelled).is_some());
    }

    #[test]
    fn spec_only_bodies() {
        assert!(spec_only(r#"{"apiVersion":"v1","kind":"X","metadata":{},"spec":{}}"#));
        assert!(!spec_only(r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{},"data":{}}"#));
    }
}
