//! Applying a plan's objects: the preparation before any write (pending
//! inventory entries, namespaces the bundle uses, live metadata), the
//! stages in order (objects of a stage concurrently), one object's apply
//! (in-sync check, dry-run comparison, write; with `force`, a recreate when
//! the API server refuses an immutable change), and the wait for CRDs to
//! be Established. It owns no state; the report says what was done.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{
    Action, ApplyOptions, ApplyReport, Engine, ObjectResult, Plan, createonly, entry_for, live_matches,
    merge_errors, meta_of,
};
use crate::diff::changed_fields;
use crate::health::{self, HealthStatus};
use crate::inventory::{self, Entry, Inventory};
use crate::kubeapi::{MetaOnly, ObjApi};
use crate::objects::{DesiredObject, ObjKey, Stage, WriteMode};
use crate::{Error, Result};

/// How long a recreate (`force`) waits for the deleted object to be gone.
const RECREATE_TIMEOUT: Duration = Duration::from_secs(120);

/// How long stage 1 waits for CRDs to be Established.
const CRD_ESTABLISH_TIMEOUT: Duration = Duration::from_secs(60);

/// What one object's apply did.
struct Applied {
    action: Action,
    /// Changed field paths (Configured).
    fields: Vec<String>,
    /// The inventory entry after the apply.
    entry: Entry,
    /// The API server's answer already says Established=True (CRDs).
    established: bool,
    /// Detail for the report (a create-only object left alone).
    message: &'static str,
}

impl Applied {
    fn new(action: Action, fields: Vec<String>, entry: Entry, m: Option<&MetaOnly>) -> Self {
        let established = m.is_some_and(|m| m.condition_true("Established"));
        Applied { action, fields, entry, established, message: "" }
    }
}

/// What the preparation read: the live metadata of objects the inventory
/// knows, and whether the plan adds objects (recorded as pending).
pub(super) struct Prepared {
    pub live: HashMap<ObjKey, Option<MetaOnly>>,
    pub new_objects: bool,
}

impl Engine {
    /// Before any object is written, three independent things at once.
    pub(super) async fn prepare(
        &self,
        plan: &Plan,
        prev: &Inventory,
        prev_by_key: &BTreeMap<ObjKey, Entry>,
        report: &mut ApplyReport,
    ) -> Result<Prepared> {
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
        Ok(Prepared { live, new_objects: !new_keys.is_empty() })
    }

    /// Apply the plan's objects stage by stage; the inventory entries of the
    /// applied objects. Stops at the first stage with a failure (and says
    /// which stage in the report).
    pub(super) async fn apply_stages(
        &self,
        plan: &Plan,
        opts: ApplyOptions,
        prev_by_key: &BTreeMap<ObjKey, Entry>,
        live: &HashMap<ObjKey, Option<MetaOnly>>,
        cancel: &CancellationToken,
        report: &mut ApplyReport,
    ) -> Result<BTreeMap<ObjKey, Entry>> {
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
                    Ok(Applied { action, fields, entry, established, message }) => {
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
                            message: message.into(),
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
                let pending: Vec<health::Target> = to_establish
                    .iter()
                    .map(|o| health::Target::new(o.key.clone(), o.resource.clone()))
                    .collect();
                let served: Vec<String> =
                    objs.iter().filter(|o| is_crd(&o.key)).flat_map(|o| crd_versions(o)).collect();
                establishing = Some(Box::pin(self.wait_crds_established(pending, served, cancel)));
            }
        }
        if let Some(wait) = establishing.take() {
            wait.await?;
        }
        Ok(entries)
    }

    /// Apply one object; with `force`, an object the API server refuses to
    /// change in place (immutable fields) is deleted, awaited and created again.
    /// A create-only object is created when missing and otherwise left alone.
    async fn apply_one(
        &self,
        obj: &DesiredObject,
        prev: Option<&Entry>,
        live: Option<&Option<MetaOnly>>,
        force: bool,
    ) -> Result<Applied> {
        if obj.write == WriteMode::CreateOnly {
            return self.create_only(obj, prev, live, force).await;
        }
        match self.apply_in_place(obj, prev, live, force).await {
            Err(Error::Immutable(fields)) if force => self.recreate(obj, fields).await,
            r => r,
        }
    }

    /// Delete the object (foreground for workloads, so their pods go too),
    /// wait until it is gone, then create it from the bundle.
    async fn recreate(
        &self,
        obj: &DesiredObject,
        fields: Vec<crate::error::ImmutableField>,
    ) -> Result<Applied> {
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

    /// A create-only object: created (server-side apply) when the cluster
    /// does not have it, else not written (super::createonly decides).
    async fn create_only(
        &self,
        obj: &DesiredObject,
        prev: Option<&Entry>,
        live: Option<&Option<MetaOnly>>,
        force: bool,
    ) -> Result<Applied> {
        let api = ObjApi::new(&self.client, &obj.resource, &obj.key);
        let live = match live {
            Some(l) => l.clone(),
            None => api.get_meta().await?,
        };
        match createonly::step(obj, prev, live.as_ref()) {
            createonly::Step::Keep(entry) => Ok(Applied {
                action: Action::Unchanged,
                fields: Vec::new(),
                entry: *entry,
                established: false,
                message: createonly::KEPT,
            }),
            createonly::Step::Create => {
                // Created between the read and this apply by someone else, it
                // is applied over (200 instead of 201): reported as configured.
                let (created, m) = api.apply_created(&obj.body, force).await?;
                let action = if created { Action::Created } else { Action::Configured };
                Ok(Applied::new(action, Vec::new(), entry_for(obj, Some(&m), obj.hash.clone()), Some(&m)))
            }
        }
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

    /// Wait until the CRDs this apply created or changed are Established
    /// (those whose apply response said so already are not asked again), then
    /// make discovery forget the group-versions they serve.
    async fn wait_crds_established(
        &self,
        pending: Vec<health::Target>,
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

pub(super) fn is_crd(k: &ObjKey) -> bool {
    k.group == "apiextensions.k8s.io" && k.kind == "CustomResourceDefinition"
}
