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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::diff::changed_fields;
use crate::discovery::{Discovery, ResourceInfo, crd_resources};
use crate::health::{self, HealthStatus};
use crate::inventory::{self, Entry, Inventory};
use crate::kubeapi::{MetaOnly, ObjApi};
use crate::objects::{DesiredObject, Manifest, MetaKey, ObjKey, Stage, meta_hash};
use crate::{Error, Result};

/// How long a recreate (`force`) waits for the deleted object to be gone.
const RECREATE_TIMEOUT: Duration = Duration::from_secs(120);

/// How long stage 1 waits for CRDs to be Established.
const CRD_ESTABLISH_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// Health targets: every object and how it is served.
    pub fn targets(&self) -> Vec<(ObjKey, ResourceInfo)> {
        self.objects.iter().map(|o| (o.key.clone(), o.resource.clone())).collect()
    }

    /// The object with this key.
    pub fn get(&self, key: &ObjKey) -> Option<&DesiredObject> {
        self.objects.iter().find(|o| &o.key == key)
    }
}

/// What one object's apply did.
struct Applied {
    action: Action,
    /// Changed field paths (Configured).
    fields: Vec<String>,
    /// The inventory entry after the apply.
    entry: Entry,
    /// The API server's answer already says Established=True (CRDs).
    established: bool,
}

impl Applied {
    fn new(action: Action, fields: Vec<String>, entry: Entry, m: Option<&MetaOnly>) -> Self {
        let established = m.is_some_and(|m| m.condition_true("Established"));
        Applied { action, fields, entry, established }
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

    /// Resolve every manifest against the cluster's API. Nothing is written.
    /// Fails, naming file and document, when a kind is not served and no CRD
    /// of the bundle defines it, or when two documents describe one object.
    pub async fn plan(
        &self,
        bundle: &str,
        revision: &str,
        generation: u64,
        digest: &str,
        manifests: Vec<Manifest>,
        target_namespace: Option<&str>,
    ) -> Result<Plan> {
        let from_crds = crd_resources(&manifests);
        let default_ns = target_namespace.filter(|s| !s.is_empty()).unwrap_or("default").to_string();
        let mut resolved: Vec<(Manifest, ResourceInfo)> = Vec::with_capacity(manifests.len());
        for m in manifests {
            let found = self.discovery.resolve(&m.api_version, &m.kind).await?;
            let info = match found {
                Some(i) => i,
                None => match from_crds.iter().find(|r| r.api_version() == m.api_version && r.kind == m.kind)
                {
                    Some(i) => i.clone(),
                    None => {
                        return Err(Error::Manifest {
                            file: m.origin.file.clone(),
                            index: m.origin.index,
                            message: format!(
                                "{} {}: the cluster does not serve kind {} in {} and no CustomResourceDefinition in the bundle defines it",
                                m.kind, m.name, m.kind, m.api_version
                            ),
                        });
                    }
                },
            };
            resolved.push((m, info));
        }
        // Normalizing (parse, label, namespace, serialize, hash) is CPU work:
        // do it off the async threads, on up to four threads.
        let bundle_name = bundle.to_string();
        let built: Vec<DesiredObject> =
            tokio::task::spawn_blocking(move || build_objects(resolved, &bundle_name, &default_ns))
                .await
                .map_err(|e| Error::Config(format!("planning task failed: {e}")))??;
        let mut objects = Vec::with_capacity(built.len());
        let mut seen: HashMap<ObjKey, (String, usize)> = HashMap::new();
        for obj in built {
            if let Some((file, index)) = seen.get(&obj.key) {
                return Err(Error::Manifest {
                    file: obj.origin.file.clone(),
                    index: obj.origin.index,
                    message: format!("{} is also defined in {file} document {index}", obj.key),
                });
            }
            seen.insert(obj.key.clone(), (obj.origin.file.clone(), obj.origin.index));
            objects.push(obj);
        }
        objects.sort_by_key(|o| o.stage);
        Ok(Plan {
            bundle: bundle.into(),
            revision: revision.into(),
            generation,
            digest: digest.into(),
            objects,
        })
    }

    /// The bundle's inventory in the cluster.
    pub async fn inventory(&self, bundle: &str) -> Result<Option<Inventory>> {
        inventory::load(&self.client, &self.namespace, bundle).await
    }

    /// Apply a plan: stages in order, objects of a stage concurrently, then
    /// prune (or orphan) what left the bundle, then write the inventory if it
    /// changed. Stops at the first stage with a failure (the report says which
    /// objects were applied).
    pub async fn apply(&self, plan: &Plan, opts: ApplyOptions, cancel: &CancellationToken) -> ApplyReport {
        let start = Instant::now();
        let mut report = ApplyReport { bundle: plan.bundle.clone(), ..Default::default() };
        let prev = match self.inventory(&plan.bundle).await {
            Ok(p) => p,
            Err(e) => {
                report.error = Some(e);
                return report;
            }
        };
        let result = self.apply_inner(plan, opts, prev, cancel, &mut report, true).await;
        if let Err(e) = result {
            report.error = Some(e);
        }
        report.duration = start.elapsed();
        report
    }

    async fn apply_inner(
        &self,
        plan: &Plan,
        opts: ApplyOptions,
        prev: Option<Inventory>,
        cancel: &CancellationToken,
        report: &mut ApplyReport,
        save_final: bool,
    ) -> Result<()> {
        let prev = prev.unwrap_or_else(|| Inventory { bundle: plan.bundle.clone(), ..Default::default() });
        let prev_by_key: BTreeMap<ObjKey, Entry> =
            prev.entries.iter().map(|e| (e.key(), e.clone())).collect();

        // Before any object is written, three independent things, at once:
        // record the objects we are about to create in the inventory (a crash
        // half-way leaves them prunable); create the namespaces the bundle
        // uses but does not define (never pruned: not in the inventory); and
        // read the live metadata of every object the inventory knows (an
        // unchanged bundle needs nothing else).
        let new_keys: Vec<&DesiredObject> =
            plan.objects.iter().filter(|o| !prev_by_key.contains_key(&o.key)).collect();
        let pending = async {
            if new_keys.is_empty() {
                return Ok(0u32);
            }
            let mut pending = prev.clone();
            pending.entries.extend(new_keys.iter().map(|o| entry_for(o, None, String::new())));
            inventory::save(&self.client, &self.namespace, &pending).await.map(|_| 1)
        };
        let defined: HashSet<&str> = plan
            .objects
            .iter()
            .filter(|o| o.key.group.is_empty() && o.key.kind == "Namespace")
            .map(|o| o.key.name.as_str())
            .collect();
        let used: std::collections::BTreeSet<&str> = plan
            .objects
            .iter()
            .filter_map(|o| o.key.namespace.as_deref())
            .filter(|ns| !defined.contains(ns) && *ns != self.namespace)
            .collect();
        let namespaces = async {
            let created: Vec<Result<bool>> = futures::future::join_all(
                used.iter().map(|ns| crate::kubeapi::ensure_namespace(&self.client, ns)),
            )
            .await;
            created.into_iter().try_fold(0u32, |n, r| r.map(|c| n + u32::from(c)))
        };
        let known: Vec<&DesiredObject> = plan
            .objects
            .iter()
            .filter(|o| prev_by_key.get(&o.key).is_some_and(|e| !e.hash.is_empty()))
            .collect();
        let metas = futures::stream::iter(
            known
                .iter()
                .map(|o| async move { ObjApi::new(&self.client, &o.resource, &o.key).get_meta().await })
                .collect::<Vec<_>>(),
        )
        .buffered(self.concurrency)
        .collect::<Vec<Result<Option<MetaOnly>>>>();
        let (pending_writes, ns_writes, metas) = tokio::join!(pending, namespaces, metas);
        report.writes += pending_writes? + ns_writes?;
        let mut live: HashMap<ObjKey, Option<MetaOnly>> = HashMap::with_capacity(known.len());
        for (o, m) in known.iter().zip(metas) {
            live.insert(o.key.clone(), m?);
        }

        let mut entries: BTreeMap<ObjKey, Entry> = BTreeMap::new();
        // The wait for CRDs to be Established runs while stage 2 (cluster-wide
        // RBAC and classes, which never need them) is applied, and must finish
        // before stage 3, where their custom resources are.
        let mut establishing: Option<
            std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + '_>>,
        > = None;
        for stage in Stage::ALL {
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            if stage >= Stage::Workloads
                && let Some(wait) = establishing.take()
            {
                wait.await?;
            }
            let objs: Vec<&DesiredObject> = plan.objects.iter().filter(|o| o.stage == stage).collect();
            if objs.is_empty() {
                continue;
            }
            let stage_start = Instant::now();
            let apply_stage = futures::stream::iter(
                objs.iter()
                    .map(|o| async {
                        let r =
                            self.apply_one(o, prev_by_key.get(&o.key), live.get(&o.key), opts.force).await;
                        (o.key.clone(), r)
                    })
                    .collect::<Vec<_>>(),
            )
            .buffered(self.concurrency)
            .collect::<Vec<(ObjKey, Result<Applied>)>>();
            let results = match establishing.take() {
                Some(wait) if stage == Stage::ClusterWide => {
                    let (results, waited) = tokio::join!(apply_stage, wait);
                    waited?;
                    results
                }
                other => {
                    establishing = other;
                    apply_stage.await
                }
            };
            let mut failures: Vec<Error> = Vec::new();
            // CRDs this apply created or changed and that are not known to be established yet.
            let mut to_establish: Vec<&DesiredObject> = Vec::new();
            for (key, r) in results {
                match r {
                    Ok(Applied { action, fields, entry, established }) => {
                        if matches!(action, Action::Created | Action::Configured | Action::Recreated) {
                            report.writes += 1;
                            if !established
                                && let Some(o) = objs.iter().find(|o| o.key == key && is_crd(&o.key))
                            {
                                to_establish.push(o);
                            }
                        }
                        report.objects.push(ObjectResult {
                            key: key.clone(),
                            action,
                            fields,
                            message: String::new(),
                        });
                        entries.insert(key, entry);
                    }
                    Err(e) => {
                        report.objects.push(ObjectResult {
                            key: key.clone(),
                            action: Action::Failed,
                            fields: Vec::new(),
                            message: e.to_string(),
                        });
                        failures.push(e);
                    }
                }
            }
            tracing::debug!(
                ?stage,
                objects = objs.len(),
                elapsed_ms = stage_start.elapsed().as_millis() as u64,
                "stage applied"
            );
            if !failures.is_empty() {
                report.failed_stage = Some(stage);
                return Err(merge_errors(failures));
            }
            if stage == Stage::Definitions {
                let pending: Vec<(ObjKey, ResourceInfo)> =
                    to_establish.iter().map(|o| (o.key.clone(), o.resource.clone())).collect();
                let served: Vec<String> =
                    objs.iter().filter(|o| is_crd(&o.key)).flat_map(|o| crd_versions(o)).collect();
                establishing = Some(Box::pin(self.wait_crds_established(pending, served, cancel)));
            }
        }
        if let Some(wait) = establishing.take() {
            wait.await?;
        }

        // Prune what left the bundle, in reverse stage order.
        let mut stale: Vec<Entry> =
            prev.entries.iter().filter(|e| plan.get(&e.key()).is_none()).cloned().collect();
        stale.sort_by_key(|e| std::cmp::Reverse(e.stage));
        let mut kept_for_retry = Vec::new();
        for stage in Stage::ALL.iter().rev() {
            let group: Vec<&Entry> = stale.iter().filter(|e| e.stage == *stage).collect();
            if group.is_empty() {
                continue;
            }
            let results: Vec<(ObjectResult, bool)> = futures::stream::iter(
                group.into_iter().map(|e| self.prune_one(&plan.bundle, e, opts.prune)).collect::<Vec<_>>(),
            )
            .buffered(self.concurrency)
            .collect()
            .await;
            for ((r, wrote), e) in results.into_iter().zip(stale.iter().filter(|e| e.stage == *stage)) {
                if wrote {
                    report.writes += 1;
                }
                if r.action == Action::Failed {
                    kept_for_retry.push(e.clone());
                }
                report.objects.push(r);
            }
        }

        let mut inv = Inventory {
            bundle: plan.bundle.clone(),
            revision: plan.revision.clone(),
            generation: plan.generation,
            digest: plan.digest.clone(),
            entries: plan.objects.iter().filter_map(|o| entries.remove(&o.key)).collect(),
        };
        inv.entries.extend(kept_for_retry.iter().cloned());
        if save_final && (inv != prev || !new_keys.is_empty()) {
            inventory::save(&self.client, &self.namespace, &inv).await?;
            report.writes += 1;
        }
        report.inventory = inv;
        if !kept_for_retry.is_empty() {
            let failed: Vec<String> = report
                .objects
                .iter()
                .filter(|o| o.action == Action::Failed)
                .map(|o| format!("{}: {}", o.key, o.message))
                .collect();
            return Err(Error::Apply {
                message: format!("prune failed: {}", failed.join("; ")),
                transient: true,
            });
        }
        Ok(())
    }

    /// Apply one object; with `force`, an object the API server refuses to
    /// change in place (immutable fields) is deleted, awaited and created again.
    async fn apply_one(
        &self,
        obj: &DesiredObject,
        prev: Option<&Entry>,
        live: Option<&Option<MetaOnly>>,
        force: bool,
    ) -> Result<Applied> {
        match self.apply_in_place(obj, prev, live, force).await {
            Err(Error::Immutable(fields)) if force => self.recreate(obj, fields).await,
            r => r,
        }
    }

    /// Delete the object (foreground for workloads, so their pods go too),
    /// wait until it is gone, then create it from the bundle.
    async fn recreate(&self, obj: &DesiredObject, fields: Vec<crate::error::ImmutableField>) -> Result<Applied> {
        use kube::api::PropagationPolicy;
        let api = ObjApi::new(&self.client, &obj.resource, &obj.key);
        let propagation = if crate::kubeapi::foreground_delete(&obj.key.group, &obj.key.kind) {
            PropagationPolicy::Foreground
        } else {
            PropagationPolicy::Background
        };
        let names: Vec<String> = fields.iter().map(|f| f.field.clone()).filter(|f| !f.is_empty()).collect();
        tracing::info!(object = %obj.key, fields = %names.join(","), "immutable fields changed: recreating");
        api.delete_with(propagation).await?;
        let deadline = Instant::now() + RECREATE_TIMEOUT;
        let mut pause = Duration::from_millis(50);
        while api.get_meta().await?.is_some() {
            if Instant::now() >= deadline {
                return Err(Error::Timeout(format!(
                    "{} still exists {}s after its delete (recreating it for {})",
                    obj.key,
                    RECREATE_TIMEOUT.as_secs(),
                    names.join(", ")
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
        let (_, m) = api.apply_created(&obj.body, true).await?;
        Ok(Applied::new(Action::Recreated, names, entry_for(obj, Some(&m), obj.hash.clone()), Some(&m)))
    }

    async fn apply_in_place(
        &self,
        obj: &DesiredObject,
        prev: Option<&Entry>,
        live: Option<&Option<MetaOnly>>,
        force: bool,
    ) -> Result<Applied> {
        let api = ObjApi::new(&self.client, &obj.resource, &obj.key);
        let Some(prev) = prev.filter(|p| !p.hash.is_empty()) else {
            // Not applied by this bundle before: apply directly. The API
            // server says whether that created it (201) or adopted an
            // existing object (200).
            let (created, m) = api.apply_created(&obj.body, force).await?;
            let action = if created { Action::Created } else { Action::Configured };
            return Ok(Applied::new(
                action,
                Vec::new(),
                entry_for(obj, Some(&m), obj.hash.clone()),
                Some(&m),
            ));
        };
        let live = match live {
            Some(l) => l.clone(),
            None => api.get_meta().await?,
        };
        let Some(live) = live else {
            let m = api.apply(&obj.body, force).await?;
            return Ok(Applied::new(
                Action::Created,
                Vec::new(),
                entry_for(obj, Some(&m), obj.hash.clone()),
                Some(&m),
            ));
        };
        if prev.hash == obj.hash && live_matches(prev, &live, &obj.meta_keys) {
            return Ok(Applied::new(Action::Unchanged, Vec::new(), prev.clone(), None));
        }
        let dry = api.dry_run(&obj.body, force).await?;
        let Some(full) = api.get().await? else {
            let m = api.apply(&obj.body, force).await?;
            return Ok(Applied::new(
                Action::Created,
                Vec::new(),
                entry_for(obj, Some(&m), obj.hash.clone()),
                Some(&m),
            ));
        };
        let fields = changed_fields(&full, &dry);
        if fields.is_empty() {
            // In sync already. Keep the recorded entry when only the live
            // metadata moved (a status update), so that nothing is written.
            let entry = if prev.hash == obj.hash {
                prev.clone()
            } else {
                entry_for(obj, Some(&meta_of(&full)), obj.hash.clone())
            };
            return Ok(Applied::new(Action::Unchanged, Vec::new(), entry, None));
        }
        let m = api.apply(&obj.body, force).await?;
        Ok(Applied::new(Action::Configured, fields, entry_for(obj, Some(&m), obj.hash.clone()), Some(&m)))
    }

    async fn prune_one(&self, bundle: &str, e: &Entry, prune: bool) -> (ObjectResult, bool) {
        let key = e.key();
        if !prune {
            return (ObjectResult::new(key, Action::Orphaned), false);
        }
        let res = e.resource();
        let api = ObjApi::new(&self.client, &res, &key);
        let live = match api.get_meta().await {
            Ok(Some(l)) => l,
            Ok(None) => {
                let mut r = ObjectResult::new(key, Action::Pruned);
                r.message = "already gone".into();
                return (r, false);
            }
            Err(err) => {
                let mut r = ObjectResult::new(key, Action::Failed);
                r.message = err.to_string();
                return (r, false);
            }
        };
        if let Some(reason) = prune_skip_reason(bundle, &live) {
            let mut r = ObjectResult::new(key, Action::PruneSkipped);
            r.message = reason;
            return (r, false);
        }
        match api.delete().await {
            Ok(_) => (ObjectResult::new(key, Action::Pruned), true),
            Err(err) => {
                let mut r = ObjectResult::new(key, Action::Failed);
                r.message = err.to_string();
                (r, false)
            }
        }
    }

    /// Wait until the CRDs this apply created or changed are Established
    /// (those whose apply response said so already are not asked again), then
    /// make discovery forget the group-versions they serve.
    async fn wait_crds_established(
        &self,
        pending: Vec<(ObjKey, ResourceInfo)>,
        served: Vec<String>,
        cancel: &CancellationToken,
    ) -> Result<()> {
        if !pending.is_empty() {
            let hs =
                health::wait(&self.client, &pending, CRD_ESTABLISH_TIMEOUT, self.concurrency, cancel).await?;
            if hs.iter().any(|h| h.status != HealthStatus::Current) {
                return Err(Error::Timeout(format!(
                    "CustomResourceDefinitions not established: {}",
                    health::not_ready_summary(&hs)
                )));
            }
        }
        // The new kinds are served now: forget what discovery said before.
        for gv in served {
            self.discovery.invalidate(&gv);
        }
        Ok(())
    }

    /// Remove a bundle that left the cluster: prune every object of its
    /// inventory (reverse stage order) when `prune`, else leave them (orphan),
    /// then delete the inventory.
    pub async fn remove(&self, bundle: &str, prune: bool, cancel: &CancellationToken) -> ApplyReport {
        let start = Instant::now();
        let mut report = ApplyReport { bundle: bundle.into(), ..Default::default() };
        let plan = Plan { bundle: bundle.into(), ..Default::default() };
        let prev = match self.inventory(bundle).await {
            Ok(Some(p)) => p,
            Ok(None) => return report,
            Err(e) => {
                report.error = Some(e);
                return report;
            }
        };
        let opts = ApplyOptions { force: false, prune };
        if let Err(e) = self.apply_inner(&plan, opts, Some(prev), cancel, &mut report, false).await {
            report.error = Some(e);
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
        let results: Vec<Result<ObjectResult>> = futures::stream::iter(
            plan.objects
                .iter()
                .map(|o| async move {
                    let api = ObjApi::new(&self.client, &o.resource, &o.key);
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
    /// put it back. `entry` is what the inventory recorded for it.
    pub async fn check_drift(
        &self,
        obj: &DesiredObject,
        entry: &Entry,
        detect_only: bool,
    ) -> Result<DriftOutcome> {
        let api = ObjApi::new(&self.client, &obj.resource, &obj.key);
        let Some(live) = api.get().await? else {
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

/// The `group/version`s a CRD object serves (read without parsing its schema).
fn crd_versions(o: &DesiredObject) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Crd {
        spec: CrdSpec,
    }
    #[derive(serde::Deserialize)]
    struct CrdSpec {
        group: String,
        #[serde(default)]
        versions: Vec<CrdVersion>,
    }
    #[derive(serde::Deserialize)]
    struct CrdVersion {
        name: String,
    }
    match serde_json::from_str::<Crd>(&o.body) {
        Ok(c) => c.spec.versions.into_iter().map(|v| format!("{}/{}", c.spec.group, v.name)).collect(),
        Err(_) => Vec::new(),
    }
}

/// Build desired objects in order, on up to four threads for large bundles.
fn build_objects(
    resolved: Vec<(Manifest, ResourceInfo)>,
    bundle: &str,
    default_ns: &str,
) -> Result<Vec<DesiredObject>> {
    let total: usize = resolved.iter().map(|(m, _)| m.body.len()).sum();
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 4);
    if threads == 1 || total < 256 * 1024 || resolved.len() < 2 {
        return resolved.into_iter().map(|(m, i)| DesiredObject::build(m, i, bundle, default_ns)).collect();
    }
    // Contiguous chunks of about equal size keep the order.
    let per = total.div_ceil(threads);
    let mut chunks: Vec<Vec<(Manifest, ResourceInfo)>> = vec![Vec::new()];
    let mut acc = 0;
    for item in resolved {
        acc += item.0.body.len();
        chunks.last_mut().expect("a chunk").push(item);
        if acc >= per && chunks.len() < threads {
            chunks.push(Vec::new());
            acc = 0;
        }
    }
    let results: Vec<Result<Vec<DesiredObject>>> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|c| {
                s.spawn(move || {
                    c.into_iter().map(|(m, i)| DesiredObject::build(m, i, bundle, default_ns)).collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(Error::Config("planning thread panicked".into()))))
            .collect()
    });
    let mut out = Vec::new();
    for r in results {
        out.extend(r?);
    }
    Ok(out)
}

fn is_crd(k: &ObjKey) -> bool {
    k.group == "apiextensions.k8s.io" && k.kind == "CustomResourceDefinition"
}

/// Why an object that left the bundle must not be deleted, if it must not.
pub fn prune_skip_reason(bundle: &str, live: &MetaOnly) -> Option<String> {
    if live.annotations().and_then(|a| a.get(convoy_core::PRUNE_ANNOTATION)).map(String::as_str)
        == Some("disabled")
    {
        return Some(format!("{}: disabled", convoy_core::PRUNE_ANNOTATION));
    }
    match live.labels().and_then(|l| l.get(convoy_core::BUNDLE_LABEL)) {
        Some(b) if b == bundle => None,
        Some(other) => Some(format!("now belongs to bundle {other}")),
        None => Some(format!("no longer carries the {} label", convoy_core::BUNDLE_LABEL)),
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
