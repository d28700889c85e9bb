//! Simulated controllers: workload status (Deployments, ReplicaSets,
//! StatefulSets, DaemonSets, Jobs, Pods) after a readiness delay, unpullable
//! images that never become ready, PVC binding, LoadBalancer IPs, namespace
//! termination, garbage collection through ownerReferences (background,
//! foreground, orphan), finished Jobs deleted after `ttlSecondsAfterFinished`
//! (the TTL-after-finished controller), and per-namespace defaults (ServiceAccount `default`,
//! ConfigMap `kube-root-ca.crt`). Also the objects every cluster starts with.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::api::{Inner, Query, gr, now_rfc3339};
use crate::registry::{GroupResource, ResourceType};
use crate::store::{Event, EventType};

/// The annotation that makes a workload's image unpullable.
pub const UNPULLABLE_ANNOTATION: &str = "kube-sim.convoy.dev/unpullable";
/// The annotation giving the exit code of a run-to-completion Pod's
/// containers (`restartPolicy: Never`, not a Job's): non-zero ends it
/// `Failed` (terminated, reason `Error`); absent or 0 ends it `Succeeded`.
pub const EXIT_CODE_ANNOTATION: &str = "kube-sim.convoy.dev/exit-code";
const MANAGER: &str = "kube-controller-manager";
const NODE: &str = "kube-sim-node";

type ObjKey = (GroupResource, String, String);

fn meta_str<'a>(v: &'a Value, f: &str) -> &'a str {
    v.pointer(&format!("/metadata/{f}")).and_then(Value::as_str).unwrap_or("")
}

fn key_of(gr: &GroupResource, v: &Value) -> ObjKey {
    (gr.clone(), meta_str(v, "namespace").to_string(), meta_str(v, "name").to_string())
}

/// Create the objects every cluster has.
pub fn seed(inner: &Arc<Inner>) {
    let q = Query(HashMap::from([("fieldManager".to_string(), "kube-apiserver".to_string())]));
    let h = HeaderMap::new();
    let create = |g: &str, v: &str, plural: &str, ns: &str, body: Value| {
        if let Some(rt) = inner.lookup(g, v, plural)
            && let Err(e) = inner.create(&rt, ns, body, &q, &h, false)
        {
            tracing::warn!(error = %e.message, "seed object not created");
        }
    };
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        create(
            "",
            "v1",
            "namespaces",
            "",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        );
    }
    let first_ip = inner.ips.lock().first();
    create(
        "",
        "v1",
        "services",
        "default",
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kubernetes", "namespace": "default",
            "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"clusterIP": first_ip, "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]}}),
    );
    create(
        "",
        "v1",
        "nodes",
        "",
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}}}),
    );
    create(
        "storage.k8s.io",
        "v1",
        "storageclasses",
        "",
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "standard",
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}}, "provisioner": "kube-sim.convoy.dev/hostpath"}),
    );
    if let Some(rt) = inner.lookup("", "v1", "nodes") {
        let _ = inner.patch_with(&rt, "", NODE, Some("status"), "kubelet", false, &mut |cur| {
            let mut v = (**cur).clone();
            v["status"] = json!({
                "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
                "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status",
                    "lastHeartbeatTime": now_rfc3339(), "lastTransitionTime": now_rfc3339()}],
                "addresses": [{"type": "InternalIP", "address": "172.18.0.2"}, {"type": "Hostname", "address": NODE}],
                "nodeInfo": {"kubeletVersion": "v1.32.0", "operatingSystem": "linux", "architecture": "amd64", "containerRuntimeVersion": "kube-sim://1",
                    "kernelVersion": "6.1.0", "osImage": "kube-sim", "kubeProxyVersion": "v1.32.0", "machineID": "", "systemUUID": "", "bootID": ""}
            });
            Ok(v)
        });
    }
}

/// Start the controllers' task.
pub fn start(inner: Arc<Inner>) -> JoinHandle<()> {
    let rx = inner.store.subscribe_all();
    tokio::spawn(Controllers::new(inner).run(rx).instrument(tracing::info_span!("kube-sim-controllers")))
}

struct Controllers {
    inner: Arc<Inner>,
    timers: BinaryHeap<Reverse<(Instant, u64, ObjKey)>>,
    seq: u64,
    /// (uid, generation) -> when the controller first saw that generation.
    first_seen: HashMap<String, (i64, Instant)>,
    /// owner uid -> dependents.
    dependents: std::cell::RefCell<HashMap<String, HashSet<ObjKey>>>,
    /// Objects waiting for their dependents (foreground / orphan / namespaces).
    finalizing: HashSet<ObjKey>,
}

const WORKLOADS: &[(&str, &str)] = &[
    ("apps", "deployments"),
    ("apps", "replicasets"),
    ("apps", "statefulsets"),
    ("apps", "daemonsets"),
    ("batch", "jobs"),
    ("", "persistentvolumeclaims"),
    ("", "services"),
    ("", "pods"),
    ("autoscaling", "horizontalpodautoscalers"),
    ("policy", "poddisruptionbudgets"),
    ("apiregistration.k8s.io", "apiservices"),
];

impl Controllers {
    fn new(inner: Arc<Inner>) -> Controllers {
        Controllers {
            inner,
            timers: BinaryHeap::new(),
            seq: 0,
            first_seen: HashMap::new(),
            dependents: std::cell::RefCell::new(HashMap::new()),
            finalizing: HashSet::new(),
        }
    }

    /// When the controller first saw this generation of the object.
    fn seen(&mut self, uid: &str, generation: i64) -> Instant {
        let e = self.first_seen.entry(uid.to_string()).or_insert((generation, Instant::now()));
        if e.0 != generation {
            *e = (generation, Instant::now());
        }
        e.1
    }

    fn schedule(&mut self, at: Instant, key: ObjKey) {
        self.seq += 1;
        self.timers.push(Reverse((at, self.seq, key)));
    }

    async fn run(mut self, mut rx: tokio::sync::broadcast::Receiver<Arc<Event>>) {
        let shutdown = self.inner.shutdown.clone();
        self.resync();
        let mut sweep = tokio::time::interval(Duration::from_millis(500));
        loop {
            let next = self
                .timers
                .peek()
                .map(|Reverse((t, _, _))| *t)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = rx.recv() => match r {
                    Ok(ev) => self.on_event(&ev),
                    Err(RecvError::Lagged(_)) => self.resync(),
                    Err(RecvError::Closed) => return,
                },
                _ = tokio::time::sleep_until(next) => {
                    let now = Instant::now();
                    let mut due = Vec::new();
                    while let Some(Reverse((t, _, _))) = self.timers.peek() {
                        if *t > now { break; }
                        if let Some(Reverse((_, _, k))) = self.timers.pop() { due.push(k); }
                    }
                    let mut seen = HashSet::new();
                    for k in due {
                        if seen.insert(k.clone()) { self.reconcile(&k); }
                    }
                }
                _ = sweep.tick() => {
                    for k in self.finalizing.clone() { self.reconcile(&k); }
                }
            }
        }
    }

    /// Look at everything (start-up, or after missing events).
    fn resync(&mut self) {
        for g in self.inner.store.resources() {
            let (items, _) = self.inner.store.list(&g, None);
            for it in items {
                self.index(&g, &it, false);
                self.reconcile(&key_of(&g, &it));
            }
        }
    }

    fn index(&self, g: &GroupResource, v: &Value, deleted: bool) {
        let k = key_of(g, v);
        if let Some(refs) = v.pointer("/metadata/ownerReferences").and_then(Value::as_array) {
            for r in refs {
                if let Some(uid) = r.get("uid").and_then(Value::as_str) {
                    let mut deps = self.dependents.borrow_mut();
                    let set = deps.entry(uid.to_string()).or_default();
                    if deleted {
                        set.remove(&k);
                    } else {
                        set.insert(k.clone());
                    }
                }
            }
        }
    }

    fn on_event(&mut self, ev: &Event) {
        if let Some(old) = &ev.old {
            self.index(&ev.gr, old, true);
        }
        let deleted = ev.typ == EventType::Deleted;
        self.index(&ev.gr, &ev.object, deleted);
        let key = key_of(&ev.gr, &ev.object);
        if deleted {
            self.finalizing.remove(&key);
            let uid = meta_str(&ev.object, "uid").to_string();
            self.first_seen.remove(&uid);
            // garbage-collect dependents of the deleted object
            let removed = self.dependents.borrow_mut().remove(&uid);
            if let Some(deps) = removed {
                for d in deps {
                    self.collect_dependent(&d, &uid);
                }
            }
            // an owner waiting for this dependent may be done now
            if let Some(refs) = ev.object.pointer("/metadata/ownerReferences").and_then(Value::as_array) {
                let owners: Vec<String> = refs
                    .iter()
                    .filter_map(|r| r.get("uid").and_then(Value::as_str).map(str::to_string))
                    .collect();
                for k in self.finalizing.clone() {
                    if let Some(o) = self.inner.store.get(&k.0, &k.1, &k.2)
                        && owners.iter().any(|u| u == meta_str(&o, "uid"))
                    {
                        self.reconcile(&k);
                    }
                }
            }
            self.reconcile_owner(&ev.object);
            // the endpoints controller removes a deleted Service's Endpoints
            if ev.gr == gr("", "services") {
                self.delete_child(&gr("", "endpoints"), &key.1, &key.2);
                self.reconcile_api_services(&key.1, &key.2);
            }
            // pods going away change the endpoints of the Services selecting them
            // and the budgets counting them
            if ev.gr == gr("", "pods") {
                self.reconcile_each(gr("", "services"), &key.1, |_| true);
                self.reconcile_each(gr("policy", "poddisruptionbudgets"), &key.1, |_| true);
            }
            // a namespace waiting for its content
            if !key.1.is_empty() {
                let nk = (gr("", "namespaces"), String::new(), key.1.clone());
                if self.finalizing.contains(&nk) {
                    self.reconcile(&nk);
                }
            }
            return;
        }
        if ev.gr == gr("", "namespaces") && ev.typ == EventType::Added {
            self.namespace_defaults(meta_str(&ev.object, "name"));
        }
        // garbage collection of dependents whose owners do not exist (or were recreated)
        let refs_changed = ev.old.as_ref().map(|o| o.pointer("/metadata/ownerReferences"))
            != Some(ev.object.pointer("/metadata/ownerReferences"));
        if refs_changed
            && ev.object.pointer("/metadata/deletionTimestamp").is_none()
            && self.owners_all_absent(&ev.object)
        {
            self.delete_child(&ev.gr, &key.1, &key.2);
            return;
        }
        self.reconcile(&key);
        self.reconcile_owner(&ev.object);
        if ev.gr == gr("", "services") && ev.typ == EventType::Added {
            self.reconcile_api_services(&key.1, &key.2);
        }
        if ev.gr == gr("", "pods") {
            // Services track the pods they select (Endpoints, EndpointSlices)
            self.reconcile_each(gr("", "services"), &key.1, |sv| {
                sv.pointer("/spec/selector").and_then(Value::as_object).is_some_and(|m| !m.is_empty())
            });
            // PodDisruptionBudgets count the pods they select
            self.reconcile_each(gr("policy", "poddisruptionbudgets"), &key.1, |_| true);
        }
        // HorizontalPodAutoscalers watching this object keep its replicas within bounds
        if ev.gr.group == "apps" && !key.1.is_empty() {
            let kind = ev.object["kind"].as_str();
            self.reconcile_each(gr("autoscaling", "horizontalpodautoscalers"), &key.1, |h| {
                h.pointer("/spec/scaleTargetRef/name").and_then(Value::as_str) == Some(key.2.as_str())
                    && h.pointer("/spec/scaleTargetRef/kind").and_then(Value::as_str) == kind
            });
        }
    }

    /// APIServices backed by the Service `ns/name` (it appeared or went away).
    fn reconcile_api_services(&mut self, ns: &str, name: &str) {
        self.reconcile_each(gr("apiregistration.k8s.io", "apiservices"), "", |a| {
            a.pointer("/spec/service/namespace").and_then(Value::as_str) == Some(ns)
                && a.pointer("/spec/service/name").and_then(Value::as_str) == Some(name)
        });
    }

    /// Reconcile the objects of `g` in `ns` that `wanted` picks.
    fn reconcile_each(&mut self, g: GroupResource, ns: &str, wanted: impl Fn(&Value) -> bool) {
        let (items, _) = self.inner.store.list(&g, Some(ns));
        for it in items.iter().filter(|it| wanted(it)) {
            self.reconcile(&(g.clone(), ns.to_string(), meta_str(it, "name").to_string()));
        }
    }

    /// A child (Pod, ReplicaSet) changed: its controller re-computes its status.
    fn reconcile_owner(&mut self, child: &Value) {
        let Some(refs) = child.pointer("/metadata/ownerReferences").and_then(Value::as_array) else { return };
        let ns = meta_str(child, "namespace").to_string();
        for r in refs.iter().filter(|r| r["controller"].as_bool() == Some(true)) {
            if let Some(rt) = self.ref_type(r)
                && WORKLOADS.iter().any(|(wg, wr)| rt.group == *wg && rt.plural == *wr)
            {
                let k = (
                    rt.gr(),
                    if rt.namespaced { ns.clone() } else { String::new() },
                    r["name"].as_str().unwrap_or("").to_string(),
                );
                self.reconcile(&k);
            }
        }
    }

    fn rt_for(&self, g: &GroupResource) -> Option<Arc<ResourceType>> {
        let reg = self.inner.registry.read();
        let mut vs = reg.versions_of(g);
        vs.sort_by(|a, b| {
            crate::registry::version_priority(&b.version).cmp(&crate::registry::version_priority(&a.version))
        });
        vs.into_iter().next()
    }

    fn namespace_defaults(&self, ns: &str) {
        let q = Query(HashMap::from([
            ("fieldManager".to_string(), MANAGER.to_string()),
            (crate::api::TRUSTED.to_string(), String::new()),
        ]));
        let h = HeaderMap::new();
        if let Some(rt) = self.inner.lookup("", "v1", "serviceaccounts") {
            let _ = self.inner.create(&rt, ns, json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns}}), &q, &h, false);
        }
        if let Some(rt) = self.inner.lookup("", "v1", "configmaps") {
            let _ = self.inner.create(
                &rt,
                ns,
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kube-root-ca.crt", "namespace": ns,
                    "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
                    "data": {"ca.crt": "-----BEGIN CERTIFICATE-----\nkube-sim\n-----END CERTIFICATE-----\n"}}),
                &q,
                &h,
                false,
            );
        }
    }

    /// A dependent whose owner `owner_uid` is gone: delete it unless another owner lives.
    fn collect_dependent(&mut self, d: &ObjKey, owner_uid: &str) {
        let Some(rt) = self.rt_for(&d.0) else { return };
        let Some(obj) = self.inner.store.get(&d.0, &d.1, &d.2) else { return };
        let refs: Vec<Value> =
            obj.pointer("/metadata/ownerReferences").and_then(Value::as_array).cloned().unwrap_or_default();
        let others_alive =
            refs.iter().filter(|r| r["uid"].as_str() != Some(owner_uid)).any(|r| self.owner_exists(r, &d.1));
        if others_alive {
            self.drop_owner_ref(&rt, d, owner_uid);
        } else {
            self.delete_with(&rt, &d.1, &d.2, "Background");
        }
    }

    /// Every owner reference resolves to a kind, and none of the owners exists.
    fn owners_all_absent(&self, obj: &Value) -> bool {
        let Some(refs) =
            obj.pointer("/metadata/ownerReferences").and_then(Value::as_array).filter(|a| !a.is_empty())
        else {
            return false;
        };
        let ns = meta_str(obj, "namespace");
        refs.iter().all(|r| self.ref_type(r).is_some() && !self.owner_exists(r, ns))
    }

    fn owner_exists(&self, r: &Value, ns: &str) -> bool {
        self.resolve_ref(r, ns).is_some()
    }

    /// The resource type an owner reference's apiVersion and kind name.
    fn ref_type(&self, r: &Value) -> Option<Arc<ResourceType>> {
        let av = r["apiVersion"].as_str().unwrap_or("");
        let (g, v) = av.rsplit_once('/').unwrap_or(("", av));
        self.inner.registry.read().by_kind(g, v, r["kind"].as_str().unwrap_or(""))
    }

    /// The object an owner reference names, if it exists with that uid.
    fn resolve_ref(&self, r: &Value, ns: &str) -> Option<(Arc<ResourceType>, Arc<Value>)> {
        let rt = self.ref_type(r)?;
        let ns = if rt.namespaced { ns } else { "" };
        let obj = self.inner.store.get(&rt.gr(), ns, r["name"].as_str().unwrap_or(""))?;
        (Some(meta_str(&obj, "uid")) == r["uid"].as_str()).then_some((rt, obj))
    }

    fn reconcile(&mut self, k: &ObjKey) {
        let Some(obj) = self.inner.store.get(&k.0, &k.1, &k.2) else {
            self.finalizing.remove(k);
            return;
        };
        if obj.pointer("/metadata/deletionTimestamp").is_some() {
            self.finalize(k, &obj);
            return;
        }
        if WORKLOADS.iter().any(|(g, r)| k.0.group == *g && k.0.resource == *r) {
            self.workload(k, &obj);
        }
    }

    /// Deletion in progress: namespaces, foregroundDeletion, orphan.
    fn finalize(&mut self, k: &ObjKey, obj: &Value) {
        let Some(rt) = self.rt_for(&k.0) else { return };
        let finalizers: Vec<String> = obj
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
            .unwrap_or_default();
        let uid = meta_str(obj, "uid").to_string();
        if k.0 == gr("", "namespaces") {
            self.finalizing.insert(k.clone());
            let ns = k.2.clone();
            let types: Vec<Arc<ResourceType>> = {
                let reg = self.inner.registry.read();
                let mut seen = HashSet::new();
                reg.all().filter(|t| t.namespaced && seen.insert(t.gr())).cloned().collect()
            };
            let mut remaining = 0;
            for t in types {
                let (items, _) = self.inner.store.list(&t.gr(), Some(&ns));
                for it in items {
                    remaining += 1;
                    if it.pointer("/metadata/deletionTimestamp").is_none() {
                        self.delete_with(&t, &ns, meta_str(&it, "name"), "Background");
                    }
                }
            }
            if remaining == 0 {
                let _ = self.inner.patch_with(
                    &rt,
                    "",
                    &ns,
                    Some("finalize"),
                    "kube-controller-manager",
                    false,
                    &mut |cur| {
                        let mut v = (**cur).clone();
                        if let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut) {
                            spec.insert("finalizers".into(), json!([]));
                        }
                        Ok(v)
                    },
                );
            }
            return;
        }
        let deps: Vec<ObjKey> =
            self.dependents.borrow().get(&uid).map(|s| s.iter().cloned().collect()).unwrap_or_default();
        if finalizers.iter().any(|f| f == "orphan") {
            for d in &deps {
                if let Some(drt) = self.rt_for(&d.0) {
                    self.drop_owner_ref(&drt, d, &uid);
                }
            }
            self.remove_finalizer(&rt, k, "orphan");
            return;
        }
        if finalizers.iter().any(|f| f == "foregroundDeletion") {
            self.finalizing.insert(k.clone());
            let mut remaining = 0;
            for d in &deps {
                if let Some(dobj) = self.inner.store.get(&d.0, &d.1, &d.2) {
                    remaining += 1;
                    if dobj.pointer("/metadata/deletionTimestamp").is_none()
                        && let Some(drt) = self.rt_for(&d.0)
                    {
                        self.delete_with(&drt, &d.1, &d.2, "Foreground");
                    }
                }
            }
            if remaining == 0 {
                self.remove_finalizer(&rt, k, "foregroundDeletion");
            }
        }
    }

    fn remove_finalizer(&mut self, rt: &ResourceType, k: &ObjKey, f: &str) {
        self.gc_remove(rt, k, "finalizers", &|x| x.as_str() == Some(f));
        self.finalizing.remove(k);
    }

    /// The garbage collector drops the owner reference to `owner_uid` from a dependent.
    fn drop_owner_ref(&self, rt: &ResourceType, k: &ObjKey, owner_uid: &str) {
        self.gc_remove(rt, k, "ownerReferences", &|r| r["uid"].as_str() == Some(owner_uid));
    }

    /// Remove the entries `drop` picks from the list `metadata.<field>` of an
    /// object (and the field once it is empty), as the garbage collector.
    fn gc_remove(&self, rt: &ResourceType, k: &ObjKey, field: &str, drop: &dyn Fn(&Value) -> bool) {
        let _ =
            self.inner.patch_with(rt, &k.1, &k.2, None, "kube-controller-manager-gc", false, &mut |cur| {
                let mut v = (**cur).clone();
                if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut)
                    && let Some(a) = m.get_mut(field).and_then(Value::as_array_mut)
                {
                    a.retain(|x| !drop(x));
                    if a.is_empty() {
                        m.shift_remove(field);
                    }
                }
                Ok(v)
            });
    }

    /// Readiness of this generation: Ok(true) ready, Ok(false) not yet (timer set), Err(deadline passed) for unpullable.
    fn readiness(&mut self, k: &ObjKey, obj: &Value, template: Option<&Value>) -> (bool, bool, bool) {
        let uid = meta_str(obj, "uid").to_string();
        let generation = obj.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0);
        let now = Instant::now();
        let seen = self.seen(&uid, generation);
        let unpullable = is_unpullable(obj, template);
        let delay = self.inner.readiness_delay;
        let deadline = Duration::from_secs(
            obj.pointer("/spec/progressDeadlineSeconds").and_then(Value::as_u64).unwrap_or(600),
        );
        if unpullable {
            let exceeded = now >= seen + deadline;
            if !exceeded {
                self.schedule(seen + deadline, k.clone());
            }
            return (false, true, exceeded);
        }
        if now >= seen + delay {
            (true, false, false)
        } else {
            self.schedule(seen + delay, k.clone());
            (false, false, false)
        }
    }

    /// Objects of `g` in `ns` owned by `uid`: candidates from the owner index
    /// (fed by events and by our own creates), checked against the store.
    fn owned(&self, g: &GroupResource, ns: &str, uid: &str) -> Vec<Arc<Value>> {
        let keys: Vec<ObjKey> = self
            .dependents
            .borrow()
            .get(uid)
            .map(|s| s.iter().filter(|k| k.0 == *g && k.1 == ns).cloned().collect())
            .unwrap_or_default();
        let mut out: Vec<Arc<Value>> = keys
            .iter()
            .filter_map(|k| self.inner.store.get(&k.0, &k.1, &k.2))
            .filter(|o| {
                o.pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.iter().any(|r| r["uid"].as_str() == Some(uid)))
            })
            .collect();
        out.sort_by(|a, b| meta_str(a, "name").cmp(meta_str(b, "name")));
        out
    }

    fn create_child(&self, group: &str, version: &str, plural: &str, ns: &str, body: Value) {
        let Some(rt) = self.inner.lookup(group, version, plural) else { return };
        let q = Query(HashMap::from([
            ("fieldManager".to_string(), MANAGER.to_string()),
            (crate::api::TRUSTED.to_string(), String::new()),
        ]));
        match self.inner.create(&rt, ns, body, &q, &HeaderMap::new(), false) {
            // index it now: a reconcile before its ADDED event must see it
            Ok(v) => self.index(&rt.gr(), &v, false),
            Err(e) => tracing::debug!(error = %e.message, "child not created"),
        }
    }

    /// The TTL-after-finished controller: a finished Job (Complete or Failed)
    /// with `spec.ttlSecondsAfterFinished` is deleted, with foreground
    /// propagation as the real controller does, that many seconds after the
    /// `lastTransitionTime` of its finished condition (at once for 0).
    fn ttl_after_finished(&mut self, k: &ObjKey, obj: &Value) {
        let Some(ttl) = obj.pointer("/spec/ttlSecondsAfterFinished").and_then(Value::as_i64) else { return };
        let conds = obj.pointer("/status/conditions").and_then(Value::as_array);
        let Some(finished) = conds
            .into_iter()
            .flatten()
            .filter(|c| (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True")
            .filter_map(|c| c["lastTransitionTime"].as_str()?.parse::<jiff::Timestamp>().ok())
            .min()
        else {
            return;
        };
        let Ok(expire) = finished.checked_add(jiff::SignedDuration::from_secs(ttl.max(0))) else { return };
        let left = expire.duration_since(jiff::Timestamp::now());
        if left.is_positive() {
            let left = Duration::try_from(left).unwrap_or_default();
            self.schedule(Instant::now() + left, k.clone());
        } else if let Some(rt) = self.rt_for(&k.0) {
            self.delete_with(&rt, &k.1, &k.2, "Foreground");
        }
    }

    fn delete_child(&self, g: &GroupResource, ns: &str, name: &str) {
        if let Some(rt) = self.rt_for(g) {
            self.delete_with(&rt, ns, name, "Background");
        }
    }

    /// Delete an object with a propagation policy (Background, Foreground, Orphan).
    fn delete_with(&self, rt: &ResourceType, ns: &str, name: &str, propagation: &str) {
        let _ = self.inner.delete(
            rt,
            ns,
            name,
            &Query::default(),
            &json!({"propagationPolicy": propagation}),
            false,
        );
    }

    /// Make the Pods of a workload match: `count` pods from its template, named by
    /// `name_of(i)` (empty = generated), carrying `revision` as a label; pods of
    /// another revision are replaced. Returns the live pods.
    fn sync_pods(
        &self,
        k: &ObjKey,
        obj: &Value,
        count: i64,
        name_of: &dyn Fn(i64) -> String,
        revision: Option<(&str, String)>,
    ) -> Vec<Arc<Value>> {
        let uid = meta_str(obj, "uid").to_string();
        let pods_gr = gr("", "pods");
        let mut pods: Vec<Arc<Value>> = self
            .owned(&pods_gr, &k.1, &uid)
            .into_iter()
            .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none())
            .collect();
        // replace pods of an old revision
        if let Some((key, rev)) = &revision {
            for p in pods.iter().filter(|p| label(p, key) != *rev) {
                self.delete_child(&pods_gr, &k.1, meta_str(p, "name"));
            }
            pods.retain(|p| label(p, key) == *rev);
        }
        let count = count.max(0) as usize;
        // scale down: not-ready pods first, then the newest
        if pods.len() > count {
            pods.sort_by_key(|p| {
                (pod_ready(p), std::cmp::Reverse(meta_str(p, "creationTimestamp").to_string()))
            });
            for p in pods.drain(..pods.len() - count) {
                self.delete_child(&pods_gr, &k.1, meta_str(&p, "name"));
            }
        }
        if pods.len() < count {
            let api_version = obj["apiVersion"].as_str().unwrap_or("v1").to_string();
            let kind = obj["kind"].as_str().unwrap_or("").to_string();
            let owner = json!([{"apiVersion": api_version, "kind": kind, "name": k.2, "uid": uid, "controller": true, "blockOwnerDeletion": true}]);
            let template = obj.pointer("/spec/template").cloned().unwrap_or(json!({}));
            let workload_unpullable = obj
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(UNPULLABLE_ANNOTATION))
                .and_then(Value::as_str)
                == Some("true");
            let existing: HashSet<String> = pods.iter().map(|p| meta_str(p, "name").to_string()).collect();
            let mut i = 0i64;
            let mut created = 0;
            while pods.len() + created < count && i < (count as i64) * 4 + 8 {
                let fixed = name_of(i);
                i += 1;
                let name = if fixed.is_empty() { format!("{}-{}", k.2, random_suffix()) } else { fixed };
                if existing.contains(&name) {
                    continue;
                }
                let mut labels = template.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
                if let Some((key, rev)) = &revision {
                    labels[*key] = json!(rev);
                }
                if kind == "StatefulSet" {
                    labels["statefulset.kubernetes.io/pod-name"] = json!(name);
                }
                let mut annotations = template.pointer("/metadata/annotations").cloned().unwrap_or(json!({}));
                if !annotations.is_object() {
                    annotations = json!({});
                }
                if workload_unpullable {
                    annotations[UNPULLABLE_ANNOTATION] = json!("true");
                }
                let mut spec = template.get("spec").cloned().unwrap_or(json!({}));
                spec["nodeName"] = json!(NODE);
                if kind == "StatefulSet" {
                    spec["hostname"] = json!(name);
                }
                self.create_child(
                    "",
                    "v1",
                    "pods",
                    &k.1,
                    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": k.1, "labels": labels,
                        "annotations": annotations, "ownerReferences": owner}, "spec": spec}),
                );
                let component = match kind.as_str() {
                    "ReplicaSet" => "replicaset-controller",
                    "StatefulSet" => "statefulset-controller",
                    "DaemonSet" => "daemonset-controller",
                    _ => "job-controller",
                };
                let msg = if kind == "StatefulSet" {
                    format!("create Pod {name} in StatefulSet {} successful", k.2)
                } else {
                    format!("Created pod: {name}")
                };
                self.event(obj, "Normal", "SuccessfulCreate", &msg, component);
                created += 1;
            }
            pods = self
                .owned(&pods_gr, &k.1, &uid)
                .into_iter()
                .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none())
                .collect();
        }
        pods
    }

    /// Deployment: one ReplicaSet per pod template (named `NAME-HASH`), old ones
    /// scaled to zero once the new one is available; status from the ReplicaSets.
    fn deployment(&mut self, k: &ObjKey, obj: &Value) {
        let name = k.2.clone();
        let uid = meta_str(obj, "uid").to_string();
        let generation = obj.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0);
        let replicas = obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
        let mut template = obj.pointer("/spec/template").cloned().unwrap_or(json!({}));
        // the hash ignores a pod-template-hash label (rollbacks copy it from the old ReplicaSet)
        if let Some(l) = template.pointer_mut("/metadata/labels").and_then(Value::as_object_mut) {
            l.shift_remove("pod-template-hash");
        }
        let hash = template_hash(Some(&template));
        let rs_name = format!("{name}-{hash}");
        let rs_gr = gr("apps", "replicasets");
        let now = now_rfc3339();
        let first_seen = self.seen(&uid, generation);
        let deadline = Duration::from_secs(
            obj.pointer("/spec/progressDeadlineSeconds").and_then(Value::as_u64).unwrap_or(600),
        );
        let rss = self.owned(&rs_gr, &k.1, &uid);
        let revision = |r: &Value| {
            r.pointer("/metadata/annotations/deployment.kubernetes.io~1revision")
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<i64>().ok())
                .unwrap_or(0)
        };
        let max_rev = rss.iter().map(|r| revision(r)).max().unwrap_or(0);
        if obj.pointer("/spec/paused").and_then(Value::as_bool) == Some(true) {
            // a paused Deployment rolls nothing out; it reports what its ReplicaSets have
            let updated = rss
                .iter()
                .find(|r| meta_str(r, "name") == rs_name)
                .map(|r| status_count(r, "replicas"))
                .unwrap_or(0);
            let min_available = deployment_min_available(obj, replicas);
            self.write_status(k, &mut |cur| {
                let prog = ("Unknown", "DeploymentPaused", "Deployment is paused".to_string());
                deployment_status(cur, generation, &rss, updated, min_available, prog, &now)
            });
            return;
        }
        let mut new_rs = rss.iter().find(|r| meta_str(r, "name") == rs_name).cloned();
        let mut created_now = false;
        if new_rs.is_none() {
            let mut labels = template.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
            labels["pod-template-hash"] = json!(hash);
            let mut tmpl = template.clone();
            tmpl["metadata"]["labels"] = labels.clone();
            let mut selector = obj.pointer("/spec/selector").cloned().unwrap_or(json!({}));
            selector["matchLabels"]["pod-template-hash"] = json!(hash);
            let mut annotations = json!({"deployment.kubernetes.io/desired-replicas": replicas.to_string(),
                "deployment.kubernetes.io/max-replicas": replicas.to_string(), "deployment.kubernetes.io/revision": (max_rev + 1).to_string()});
            if let Some(u) = obj.pointer("/metadata/annotations").and_then(|a| a.get(UNPULLABLE_ANNOTATION)) {
                annotations[UNPULLABLE_ANNOTATION] = u.clone();
            }
            self.create_child(
                "apps",
                "v1",
                "replicasets",
                &k.1,
                json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": rs_name, "namespace": k.1, "labels": labels,
                    "annotations": annotations,
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "uid": uid, "controller": true, "blockOwnerDeletion": true}]},
                    "spec": {"replicas": replicas, "minReadySeconds": obj.pointer("/spec/minReadySeconds").cloned().unwrap_or(json!(0)),
                        "selector": selector, "template": tmpl}}),
            );
            created_now = true;
            new_rs = self.inner.store.get(&rs_gr, &k.1, &rs_name);
            self.event(
                obj,
                "Normal",
                "ScalingReplicaSet",
                &format!("Scaled up replica set {rs_name} from 0 to {replicas}"),
                "deployment-controller",
            );
        }
        let Some(mut new_rs) = new_rs else { return };
        let rs_rt = self.rt_for(&rs_gr);
        // an older ReplicaSet becoming current again (rollback) gets the next revision
        let others_max =
            rss.iter().filter(|r| meta_str(r, "name") != rs_name).map(|r| revision(r)).max().unwrap_or(0);
        if revision(&new_rs) < others_max
            && let Some(rt) = &rs_rt
            && let Ok((v, _)) = self.inner.patch_with(rt, &k.1, &rs_name, None, MANAGER, false, &mut |cur| {
                let mut v = (**cur).clone();
                v["metadata"]["annotations"]["deployment.kubernetes.io/revision"] =
                    json!((others_max + 1).to_string());
                Ok(v)
            })
        {
            new_rs = v;
        }
        // keep the new ReplicaSet at the desired size
        if new_rs.pointer("/spec/replicas").and_then(Value::as_i64) != Some(replicas)
            && let Some(rt) = &rs_rt
        {
            let _ = self.inner.patch_with(rt, &k.1, &rs_name, None, MANAGER, false, &mut |cur| {
                let mut v = (**cur).clone();
                v["spec"]["replicas"] = json!(replicas);
                Ok(v)
            });
        }
        let new_available = status_count(&new_rs, "availableReplicas");
        // old ReplicaSets go to zero once the new one is fully available
        if new_available >= replicas
            && let Some(rt) = &rs_rt
        {
            for old in rss.iter().filter(|r| meta_str(r, "name") != rs_name) {
                let from = old.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0);
                if from != 0 {
                    self.event(
                        obj,
                        "Normal",
                        "ScalingReplicaSet",
                        &format!("Scaled down replica set {} from {from} to 0", meta_str(old, "name")),
                        "deployment-controller",
                    );
                    let _ = self.inner.patch_with(
                        rt,
                        &k.1,
                        meta_str(old, "name"),
                        None,
                        MANAGER,
                        false,
                        &mut |cur| {
                            let mut v = (**cur).clone();
                            v["spec"]["replicas"] = json!(0);
                            Ok(v)
                        },
                    );
                }
            }
        }
        // revision annotation on the Deployment itself
        let rev = revision(&new_rs).to_string();
        if obj.pointer("/metadata/annotations/deployment.kubernetes.io~1revision").and_then(Value::as_str)
            != Some(rev.as_str())
            && let Some(rt) = self.rt_for(&k.0)
        {
            let _ = self.inner.patch_with(&rt, &k.1, &name, None, MANAGER, false, &mut |cur| {
                let mut v = (**cur).clone();
                if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                    let a = m.entry("annotations").or_insert_with(|| json!({}));
                    a["deployment.kubernetes.io/revision"] = json!(rev);
                }
                Ok(v)
            });
        }
        let rss: Vec<Arc<Value>> = self.owned(&rs_gr, &k.1, &uid);
        let new_rs = rss.iter().find(|r| meta_str(r, "name") == rs_name).cloned().unwrap_or(new_rs);
        let updated = status_count(&new_rs, "replicas");
        let old_total: i64 =
            rss.iter().filter(|r| meta_str(r, "name") != rs_name).map(|r| status_count(r, "replicas")).sum();
        let min_available = deployment_min_available(obj, replicas);
        let complete =
            status_count(&new_rs, "availableReplicas") >= replicas && updated == replicas && old_total == 0;
        let exceeded = !complete && Instant::now() >= first_seen + deadline;
        if !complete && !exceeded {
            self.schedule(first_seen + deadline, k.clone());
        }
        self.write_status(k, &mut |cur| {
            let prog = if complete {
                (
                    "True",
                    "NewReplicaSetAvailable",
                    format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
                )
            } else if exceeded {
                (
                    "False",
                    "ProgressDeadlineExceeded",
                    format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
                )
            } else if created_now || condition(cur, "Progressing").is_none() {
                ("True", "NewReplicaSetCreated", format!("Created new replica set \"{rs_name}\""))
            } else {
                ("True", "ReplicaSetUpdated", format!("ReplicaSet \"{rs_name}\" is progressing."))
            };
            deployment_status(cur, generation, &rss, updated, min_available, prog, &now)
        });
    }

    /// Write the status; returns (old status, new status) when it changed.
    fn write_status(&self, k: &ObjKey, f: &mut dyn FnMut(&Value) -> Value) -> Option<(Value, Value)> {
        let rt = self.rt_for(&k.0)?;
        // most reconciles change nothing: skip the write path then
        let cur = self.inner.store.get(&k.0, &k.1, &k.2)?;
        let mut want = f(&cur);
        crate::managed::drop_nulls(&mut want);
        if cur.get("status") == Some(&want) {
            return None;
        }
        let mut old = Value::Null;
        let (v, changed) = self
            .inner
            .patch_with(&rt, &k.1, &k.2, Some("status"), MANAGER, false, &mut |cur| {
                old = cur.get("status").cloned().unwrap_or(Value::Null);
                let mut v = (**cur).clone();
                v["status"] = f(cur);
                Ok(v)
            })
            .ok()?;
        changed.then(|| (old, v.get("status").cloned().unwrap_or(Value::Null)))
    }

    /// Record a core/v1 Event about `obj`, as the named controller would.
    fn event(&self, obj: &Value, type_: &str, reason: &str, message: &str, component: &str) {
        let ns = match meta_str(obj, "namespace") {
            "" => "default".to_string(),
            n => n.to_string(),
        };
        let now = now_rfc3339();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let name = format!("{}.{:x}{}", meta_str(obj, "name"), nanos, random_suffix());
        let body = json!({"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": {"kind": obj["kind"], "namespace": meta_str(obj, "namespace"), "name": meta_str(obj, "name"),
                "uid": meta_str(obj, "uid"), "apiVersion": obj["apiVersion"], "resourceVersion": meta_str(obj, "resourceVersion")},
            "reason": reason, "message": message, "source": {"component": component},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1, "type": type_,
            "reportingComponent": component, "reportingInstance": ""});
        self.create_child("", "v1", "events", &ns, body);
    }

    fn workload(&mut self, k: &ObjKey, obj: &Value) {
        let group = k.0.group.clone();
        let resource = k.0.resource.clone();
        let template = obj.pointer("/spec/template").cloned();
        let generation = obj.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0);
        let name = k.2.clone();
        let now = now_rfc3339();
        match (group.as_str(), resource.as_str()) {
            ("apps", "deployments") => self.deployment(k, obj),
            ("apps", "replicasets") => {
                let replicas = obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
                let pods = self.sync_pods(k, obj, replicas, &|_| "".into(), None);
                let (n, ready) = (pods.len() as i64, pods.iter().filter(|p| pod_ready(p)).count() as i64);
                self.write_status(k, &mut |_| {
                    let mut s =
                        json!({"observedGeneration": generation, "replicas": n, "fullyLabeledReplicas": n});
                    if ready > 0 {
                        s["readyReplicas"] = json!(ready);
                        s["availableReplicas"] = json!(ready);
                    }
                    s
                });
            }
            ("apps", "statefulsets") => {
                let replicas = obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
                let rev = format!("{name}-{}", template_hash(template.as_ref()));
                let rev2 = rev.clone();
                let n2 = name.clone();
                let pods = self.sync_pods(
                    k,
                    obj,
                    replicas,
                    &move |i| format!("{n2}-{i}"),
                    Some(("controller-revision-hash", rev2.clone())),
                );
                let updated =
                    pods.iter().filter(|p| label(p, "controller-revision-hash") == rev).count() as i64;
                let ready = pods.iter().filter(|p| pod_ready(p)).count() as i64;
                let all_done = updated == replicas && ready == replicas && pods.len() as i64 == replicas;
                self.write_status(k, &mut |cur| {
                    let current_rev = if all_done {
                        json!(rev)
                    } else {
                        cur.pointer("/status/currentRevision").cloned().unwrap_or(json!(rev))
                    };
                    let current = if all_done { updated } else { pods.len() as i64 - updated };
                    let mut s = json!({"observedGeneration": generation, "replicas": pods.len(), "currentReplicas": current,
                        "updatedReplicas": updated, "currentRevision": current_rev, "updateRevision": rev, "collisionCount": 0,
                        "availableReplicas": ready});
                    if ready > 0 {
                        s["readyReplicas"] = json!(ready);
                    }
                    s
                });
            }
            ("apps", "daemonsets") => {
                let rev = template_hash(template.as_ref());
                let pods = self.sync_pods(
                    k,
                    obj,
                    1,
                    &|_| "".into(),
                    Some(("controller-revision-hash", rev.clone())),
                );
                let updated =
                    pods.iter().filter(|p| label(p, "controller-revision-hash") == rev).count() as i64;
                let ready = pods.iter().filter(|p| pod_ready(p)).count() as i64;
                self.write_status(k, &mut |_| {
                    let mut s = json!({"observedGeneration": generation, "currentNumberScheduled": pods.len(), "desiredNumberScheduled": 1,
                        "numberMisscheduled": 0, "numberReady": ready, "updatedNumberScheduled": updated});
                    if ready > 0 {
                        s["numberAvailable"] = json!(ready);
                    }
                    if ready < 1 {
                        s["numberUnavailable"] = json!(1 - ready);
                    }
                    s
                });
            }
            ("batch", "jobs") => {
                if condition(obj, "Complete") == Some("True") || condition(obj, "Failed") == Some("True") {
                    self.ttl_after_finished(k, obj);
                    return;
                }
                let suspended = obj.pointer("/spec/suspend").and_then(Value::as_bool).unwrap_or(false);
                if suspended {
                    return;
                }
                let completions = obj.pointer("/spec/completions").and_then(Value::as_i64).unwrap_or(1);
                let parallelism = obj.pointer("/spec/parallelism").and_then(Value::as_i64).unwrap_or(1);
                let existing = self.owned(&gr("", "pods"), &k.1, meta_str(obj, "uid"));
                let succeeded = existing
                    .iter()
                    .filter(|p| p.pointer("/status/phase").and_then(Value::as_str) == Some("Succeeded"))
                    .count() as i64;
                let active = existing.len() as i64 - succeeded;
                let want_active = parallelism.min(completions - succeeded).max(0);
                let pods = self.sync_pods(k, obj, succeeded + want_active.max(active), &|_| "".into(), None);
                let succeeded = pods
                    .iter()
                    .filter(|p| p.pointer("/status/phase").and_then(Value::as_str) == Some("Succeeded"))
                    .count() as i64;
                let active = pods.len() as i64 - succeeded;
                let ready = pods.iter().filter(|p| pod_ready(p)).count() as i64;
                let changed = self.write_status(k, &mut |cur| {
                    let start = cur.pointer("/status/startTime").cloned().unwrap_or(json!(now));
                    if succeeded >= completions {
                        let msg = "Reached expected number of succeeded pods";
                        json!({"startTime": start, "completionTime": now, "succeeded": succeeded, "ready": 0, "terminating": 0,
                            "uncountedTerminatedPods": {},
                            "conditions": [
                                {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached", "message": msg, "lastProbeTime": now, "lastTransitionTime": now},
                                {"type": "Complete", "status": "True", "reason": "CompletionsReached", "message": msg, "lastProbeTime": now, "lastTransitionTime": now}
                            ]})
                    } else {
                        let mut s = json!({"startTime": start, "active": active, "ready": ready, "terminating": 0, "uncountedTerminatedPods": {}});
                        if succeeded > 0 {
                            s["succeeded"] = json!(succeeded);
                        }
                        s
                    }
                });
                if let Some((old, new)) = changed
                    && condition(&json!({"status": old}), "Complete") != Some("True")
                    && condition(&json!({"status": new}), "Complete") == Some("True")
                {
                    self.event(obj, "Normal", "Completed", "Job completed", "job-controller");
                }
            }
            ("autoscaling", "horizontalpodautoscalers") => self.hpa(k, obj),
            ("policy", "poddisruptionbudgets") => self.disruption_budget(k, obj),
            ("", "persistentvolumeclaims") => {
                if obj.pointer("/status/phase").and_then(Value::as_str) == Some("Bound") {
                    return;
                }
                let sc = obj.pointer("/spec/storageClassName").and_then(Value::as_str).unwrap_or("");
                if !sc.is_empty()
                    && let Some(scobj) = self.inner.store.get(&gr("storage.k8s.io", "storageclasses"), "", sc)
                    && scobj.get("volumeBindingMode").and_then(Value::as_str) == Some("WaitForFirstConsumer")
                {
                    return;
                }
                let (ready, _, _) = self.readiness(k, obj, None);
                if !ready {
                    return;
                }
                let Some(rt) = self.rt_for(&k.0) else { return };
                let volume = format!("pvc-{}", meta_str(obj, "uid"));
                let _ = self.inner.patch_with(&rt, &k.1, &k.2, None, MANAGER, false, &mut |cur| {
                    let mut v = (**cur).clone();
                    v["spec"]["volumeName"] = json!(volume);
                    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                        let a = m.entry("annotations").or_insert_with(|| json!({}));
                        a["pv.kubernetes.io/bind-completed"] = json!("yes");
                        a["pv.kubernetes.io/bound-by-controller"] = json!("yes");
                    }
                    Ok(v)
                });
                let storage =
                    obj.pointer("/spec/resources/requests/storage").cloned().unwrap_or(json!("1Gi"));
                let modes = obj.pointer("/spec/accessModes").cloned().unwrap_or(json!(["ReadWriteOnce"]));
                self.write_status(k, &mut |_| json!({"phase": "Bound", "accessModes": modes, "capacity": {"storage": storage}}));
            }
            ("apiregistration.k8s.io", "apiservices") => {
                let (status, reason, message) = match obj.pointer("/spec/service") {
                    None | Some(Value::Null) => {
                        ("True", "Local", "Local APIServices are always available".to_string())
                    }
                    Some(svc) => {
                        let sns = svc.get("namespace").and_then(Value::as_str).unwrap_or("");
                        let sname = svc.get("name").and_then(Value::as_str).unwrap_or("");
                        if self.inner.store.get(&gr("", "services"), sns, sname).is_some() {
                            ("True", "Passed", "all checks passed".to_string())
                        } else {
                            (
                                "False",
                                "ServiceNotFound",
                                format!("service/{sname} in \"{sns}\" is not present"),
                            )
                        }
                    }
                };
                let now = now_rfc3339();
                self.write_status(k, &mut |cur| {
                    let prev = cur
                        .pointer("/status/conditions")
                        .and_then(Value::as_array)
                        .and_then(|a| a.iter().find(|c| c["type"] == "Available"))
                        .cloned();
                    let since = match &prev {
                        Some(p) if p["status"] == status => p["lastTransitionTime"].clone(),
                        _ => json!(now),
                    };
                    json!({"conditions": [{"type": "Available", "status": status, "lastTransitionTime": since,
                        "reason": reason, "message": message}]})
                });
            }
            ("", "services") => {
                self.endpoints(k, obj);
                if obj.pointer("/spec/type").and_then(Value::as_str) != Some("LoadBalancer") {
                    return;
                }
                if obj
                    .pointer("/status/loadBalancer/ingress")
                    .and_then(Value::as_array)
                    .is_some_and(|a| !a.is_empty())
                {
                    return;
                }
                let (ready, _, _) = self.readiness(k, obj, None);
                if !ready {
                    return;
                }
                let ip = self.inner.ips.lock().lb_ip();
                self.write_status(
                    k,
                    &mut |_| json!({"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"}]}}),
                );
            }
            ("", "pods") => {
                let spec = obj.get("spec").cloned().unwrap_or(json!({}));
                let tmpl =
                    json!({"metadata": obj.get("metadata").cloned().unwrap_or(json!({})), "spec": spec});
                let (ready, unpullable, _) = self.readiness(k, obj, Some(&tmpl));
                let containers =
                    spec.get("containers").and_then(Value::as_array).cloned().unwrap_or_default();
                let job_pod = obj
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.iter().any(|r| r["kind"] == "Job"));
                // A Pod that runs to completion (`restartPolicy` Never or
                // OnFailure, as Helm test hooks are) finishes once started,
                // like a Job's; `Never` with a non-zero exit code fails.
                let restart = spec.get("restartPolicy").and_then(Value::as_str).unwrap_or("Always");
                let completes = job_pod || restart == "Never" || restart == "OnFailure";
                let exit_code = if job_pod || restart != "Never" {
                    0
                } else {
                    obj.pointer("/metadata/annotations")
                        .and_then(|a| a.get(EXIT_CODE_ANNOTATION))
                        .and_then(Value::as_str)
                        .and_then(|c| c.trim().parse::<i64>().ok())
                        .unwrap_or(0)
                };
                let pod_ip = {
                    use std::hash::{Hash, Hasher};
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    meta_str(obj, "uid").hash(&mut h);
                    let n = h.finish();
                    format!("10.244.{}.{}", (n >> 8) % 256, n % 253 + 2)
                };
                if completes && ready {
                    let changed = self.write_status(k, &mut |cur| {
                        if matches!(cur.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed")) {
                            return cur["status"].clone();
                        }
                        let start = cur.pointer("/status/startTime").cloned().unwrap_or(json!(now));
                        let (phase, reason, why) = if exit_code == 0 {
                            ("Succeeded", "Completed", "PodCompleted")
                        } else {
                            ("Failed", "Error", "PodFailed")
                        };
                        let statuses: Vec<Value> = containers
                            .iter()
                            .map(|c| json!({"name": c["name"], "image": c["image"], "imageID": "", "ready": false, "restartCount": 0, "started": false,
                                "state": {"terminated": {"exitCode": exit_code, "reason": reason, "startedAt": start, "finishedAt": now}}}))
                            .collect();
                        json!({"phase": phase, "hostIP": "172.18.0.2", "startTime": start, "qosClass": "BestEffort",
                            "conditions": [
                                {"type": "PodScheduled", "status": "True", "lastTransitionTime": start, "lastProbeTime": null},
                                {"type": "Initialized", "status": "True", "lastTransitionTime": start, "lastProbeTime": null, "reason": "PodCompleted"},
                                {"type": "ContainersReady", "status": "False", "lastTransitionTime": now, "lastProbeTime": null, "reason": why},
                                {"type": "Ready", "status": "False", "lastTransitionTime": now, "lastProbeTime": null, "reason": why}
                            ],
                            "containerStatuses": statuses})
                    });
                    if let Some((old, _)) = changed {
                        self.pod_events(obj, &old, &containers, true, false);
                    }
                    return;
                }
                let changed = self.write_status(k, &mut |cur| {
                    if cur.pointer("/status/phase").and_then(Value::as_str) == Some("Succeeded") {
                        return cur["status"].clone();
                    }
                    let start = cur.pointer("/status/startTime").cloned().unwrap_or(json!(now));
                    let statuses: Vec<Value> = containers
                        .iter()
                        .map(|c| {
                            let image = c["image"].clone();
                            let state = if ready {
                                json!({"running": {"startedAt": now}})
                            } else if unpullable {
                                json!({"waiting": {"reason": "ImagePullBackOff", "message": format!("Back-off pulling image {}", image)}})
                            } else {
                                json!({"waiting": {"reason": "ContainerCreating"}})
                            };
                            json!({"name": c["name"], "image": image, "imageID": "", "ready": ready, "restartCount": 0, "started": ready, "state": state})
                        })
                        .collect();
                    let r = if ready { "True" } else { "False" };
                    json!({"phase": if ready { "Running" } else { "Pending" }, "hostIP": "172.18.0.2", "podIP": if ready { json!(cur.pointer("/status/podIP").and_then(Value::as_str).unwrap_or(&pod_ip)) } else { Value::Null },
                        "startTime": start, "qosClass": "BestEffort",
                        "conditions": [
                            {"type": "PodScheduled", "status": "True", "lastTransitionTime": start, "lastProbeTime": null},
                            {"type": "Initialized", "status": "True", "lastTransitionTime": start, "lastProbeTime": null},
                            {"type": "ContainersReady", "status": r, "lastTransitionTime": start, "lastProbeTime": null},
                            {"type": "Ready", "status": r, "lastTransitionTime": start, "lastProbeTime": null}
                        ],
                        "containerStatuses": statuses})
                });
                if let Some((old, _)) = changed {
                    self.pod_events(obj, &old, &containers, ready, unpullable);
                }
            }
            _ => {}
        }
    }

    /// The disruption controller (kube-controller-manager's semantics): the
    /// pods the selector matches (none without a selector, all with an empty
    /// one); `minAvailable: <int>` expects every matched pod, a percentage or
    /// `maxUnavailable` expects the summed scale of the matched pods'
    /// controllers (pods without a controller are left out); pods being
    /// deleted are never healthy; nothing may be disrupted while no pod is
    /// expected. When a pod's controller cannot be resolved the status keeps
    /// its counts and says `DisruptionAllowed=False, SyncFailed`, as failSafe does.
    fn disruption_budget(&self, k: &ObjKey, obj: &Value) {
        let generation = obj.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0);
        let now = now_rfc3339();
        let pods: Vec<Arc<Value>> = match obj.pointer("/spec/selector").filter(|s| !s.is_null()) {
            Some(sel) => {
                let (pods, _) = self.inner.store.list(&gr("", "pods"), Some(&k.1));
                pods.into_iter().filter(|p| selector_matches(sel, p.pointer("/metadata/labels"))).collect()
            }
            None => Vec::new(),
        };
        let spec = |f: &str| obj.pointer(&format!("/spec/{f}")).filter(|v| !v.is_null());
        let counts = match (spec("maxUnavailable"), spec("minAvailable")) {
            (Some(max), _) => self.expected_scale(&pods).map(|expected| {
                (expected, (expected - resolve_int_or_percent(Some(max), expected, true, 0)).max(0))
            }),
            (None, Some(Value::Number(min))) => Ok((pods.len() as i64, min.as_i64().unwrap_or(0))),
            (None, Some(min)) => self
                .expected_scale(&pods)
                .map(|expected| (expected, resolve_int_or_percent(Some(min), expected, true, 0))),
            (None, None) => Ok((0, 0)),
        };
        let (expected, desired) = match counts {
            Ok(c) => c,
            Err(message) => {
                self.write_status(k, &mut |cur| {
                    let mut s = cur.get("status").cloned().unwrap_or(json!({}));
                    // the counts keep their last values (0 before the first sync)
                    for f in ["currentHealthy", "desiredHealthy", "expectedPods"] {
                        if s.get(f).is_none() {
                            s[f] = json!(0);
                        }
                    }
                    let observed = s.get("observedGeneration").cloned().unwrap_or(json!(0));
                    let mut c = cond_simple(cur, "DisruptionAllowed", "False", "SyncFailed", &message, &now);
                    c["observedGeneration"] = observed;
                    s["disruptionsAllowed"] = json!(0);
                    s["conditions"] = json!([c]);
                    s
                });
                return;
            }
        };
        let healthy = pods
            .iter()
            .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none() && pod_ready(p))
            .count() as i64;
        let allowed = if expected > 0 { (healthy - desired).max(0) } else { 0 };
        self.write_status(k, &mut |cur| {
            let (status, reason) =
                if allowed > 0 { ("True", "SufficientPods") } else { ("False", "InsufficientPods") };
            let mut c = cond_simple(cur, "DisruptionAllowed", status, reason, "", &now);
            c["observedGeneration"] = json!(generation);
            json!({"observedGeneration": generation, "currentHealthy": healthy, "desiredHealthy": desired,
                "disruptionsAllowed": allowed, "expectedPods": expected, "conditions": [c]})
        });
    }

    /// The sum of the scales of the pods' controllers, each counted once: a
    /// ReplicaSet's Deployment when it has one, else the controller's scale
    /// subresource. Err names a pod whose controller is gone or cannot scale.
    fn expected_scale(&self, pods: &[Arc<Value>]) -> Result<i64, String> {
        let mut scales: HashMap<String, i64> = HashMap::new();
        for pod in pods {
            let ns = meta_str(pod, "namespace");
            let Some(r) = controller_ref(pod) else { continue };
            if r["uid"].as_str().is_some_and(|u| scales.contains_key(u)) {
                continue;
            }
            let Some((rt, owner)) = self.resolve_ref(r, ns) else {
                return Err(format!("found no controllers for pod {:?}", meta_str(pod, "name")));
            };
            // a ReplicaSet run by a Deployment counts as that Deployment
            let (rt, owner) = match controller_ref(&owner)
                .filter(|_| rt.group == "apps" && rt.kind == "ReplicaSet")
                .filter(|d| d["kind"] == "Deployment")
                .and_then(|d| self.resolve_ref(d, ns))
            {
                Some(deployment) => deployment,
                None => (rt, owner),
            };
            if !rt.scale {
                return Err(format!("{} does not implement the scale subresource", rt.qualified()));
            }
            let replicas = crate::api::scale_of(&rt, &owner)["spec"]["replicas"].as_i64().unwrap_or(0);
            scales.insert(meta_str(&owner, "uid").to_string(), replicas);
        }
        Ok(scales.values().sum())
    }

    /// The endpoints controllers: `Endpoints` and one `EndpointSlice` per Service
    /// with a selector, from the pods it selects (ready ones as addresses).
    fn endpoints(&self, k: &ObjKey, svc: &Value) {
        let Some(selector) =
            svc.pointer("/spec/selector").and_then(Value::as_object).filter(|m| !m.is_empty())
        else {
            return;
        };
        let sel = json!({"matchLabels": selector});
        let (pods, _) = self.inner.store.list(&gr("", "pods"), Some(&k.1));
        let pods: Vec<&Arc<Value>> = pods
            .iter()
            .filter(|p| {
                p.pointer("/metadata/deletionTimestamp").is_none()
                    && selector_matches(&sel, p.pointer("/metadata/labels"))
            })
            .filter(|p| p.pointer("/status/podIP").and_then(Value::as_str).is_some())
            .collect();
        let svc_ports = svc.pointer("/spec/ports").and_then(Value::as_array).cloned().unwrap_or_default();
        // a named targetPort resolves through the first pod's container ports
        let resolve = |p: &Value, pod: Option<&&Arc<Value>>| -> i64 {
            match p.get("targetPort") {
                Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
                Some(Value::String(name)) => pod
                    .and_then(|pod| pod.pointer("/spec/containers").and_then(Value::as_array))
                    .and_then(|cs| {
                        cs.iter()
                            .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
                            .find(|cp| cp["name"] == name.as_str())
                    })
                    .and_then(|cp| cp["containerPort"].as_i64())
                    .unwrap_or(0),
                _ => p.get("port").and_then(Value::as_i64).unwrap_or(0),
            }
        };
        let ports: Vec<Value> = svc_ports
            .iter()
            .map(|p| {
                let mut e = json!({"port": resolve(p, pods.first()), "protocol": p.get("protocol").cloned().unwrap_or(json!("TCP"))});
                if let Some(n) = p.get("name") {
                    e["name"] = n.clone();
                }
                e
            })
            .collect();
        let addr = |p: &Value| {
            json!({"ip": p.pointer("/status/podIP"), "nodeName": NODE,
                "targetRef": {"kind": "Pod", "namespace": k.1, "name": meta_str(p, "name"), "uid": meta_str(p, "uid")}})
        };
        let ready: Vec<Value> = pods.iter().filter(|p| pod_ready(p)).map(|p| addr(p)).collect();
        let not_ready: Vec<Value> = pods.iter().filter(|p| !pod_ready(p)).map(|p| addr(p)).collect();
        let mut subset = json!({"ports": ports});
        if !ready.is_empty() {
            subset["addresses"] = json!(ready);
        }
        if !not_ready.is_empty() {
            subset["notReadyAddresses"] = json!(not_ready);
        }
        let subsets = if pods.is_empty() { json!([]) } else { json!([subset]) };
        let owner = json!([{"apiVersion": "v1", "kind": "Service", "name": k.2, "uid": meta_str(svc, "uid"), "controller": true, "blockOwnerDeletion": true}]);
        self.upsert(&gr("", "endpoints"), "v1", "Endpoints", &k.1, &k.2, "endpoint-controller", &mut |v| {
            v["metadata"]["labels"] = svc.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
            if subsets.as_array().is_some_and(|a| a.is_empty()) {
                if let Some(m) = v.as_object_mut() {
                    m.shift_remove("subsets");
                }
            } else {
                v["subsets"] = subsets.clone();
            }
        });
        let slice_name = format!("{}-{}", k.2, &template_hash(Some(&json!(meta_str(svc, "uid"))))[..5]);
        let endpoints: Vec<Value> = pods
            .iter()
            .map(|p| {
                let r = pod_ready(p);
                json!({"addresses": [p.pointer("/status/podIP")], "conditions": {"ready": r, "serving": r, "terminating": false},
                    "nodeName": NODE, "targetRef": {"kind": "Pod", "namespace": k.1, "name": meta_str(p, "name"), "uid": meta_str(p, "uid")}})
            })
            .collect();
        self.upsert(&gr("discovery.k8s.io", "endpointslices"), "discovery.k8s.io/v1", "EndpointSlice", &k.1, &slice_name, "endpointslice-controller", &mut |v| {
            v["metadata"]["labels"] = json!({"kubernetes.io/service-name": k.2, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"});
            v["metadata"]["ownerReferences"] = owner.clone();
            v["addressType"] = json!("IPv4");
            v["endpoints"] = json!(endpoints);
            v["ports"] = json!(ports);
        });
    }

    /// Create or update an object owned by a controller.
    #[allow(clippy::too_many_arguments)]
    fn upsert(
        &self,
        g: &GroupResource,
        api_version: &str,
        kind: &str,
        ns: &str,
        name: &str,
        manager: &str,
        f: &mut dyn FnMut(&mut Value),
    ) {
        let Some(rt) = self.rt_for(g) else { return };
        match self.inner.store.get(g, ns, name) {
            Some(cur) => {
                let mut probe = (*cur).clone();
                f(&mut probe);
                if probe == *cur {
                    return;
                }
                let _ = self.inner.patch_with(&rt, ns, name, None, manager, false, &mut |cur| {
                    let mut v = (**cur).clone();
                    f(&mut v);
                    Ok(v)
                });
            }
            None => {
                let mut v = json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": ns}});
                f(&mut v);
                let q = Query(HashMap::from([("fieldManager".to_string(), manager.to_string())]));
                let _ = self.inner.create(&rt, ns, v, &q, &HeaderMap::new(), false);
            }
        }
    }

    /// HorizontalPodAutoscaler without a metrics API: replicas are kept within
    /// [minReplicas, maxReplicas]; metrics are reported unavailable, like a cluster
    /// without metrics-server.
    fn hpa(&mut self, k: &ObjKey, obj: &Value) {
        let target_kind =
            obj.pointer("/spec/scaleTargetRef/kind").and_then(Value::as_str).unwrap_or("").to_string();
        let target_name =
            obj.pointer("/spec/scaleTargetRef/name").and_then(Value::as_str).unwrap_or("").to_string();
        let av = obj
            .pointer("/spec/scaleTargetRef/apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("apps/v1")
            .to_string();
        let (g, v) = av.rsplit_once('/').unwrap_or(("", av.as_str()));
        let min = obj.pointer("/spec/minReplicas").and_then(Value::as_i64).unwrap_or(1);
        let max = obj.pointer("/spec/maxReplicas").and_then(Value::as_i64).unwrap_or(min);
        let generation = obj.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0);
        let now = now_rfc3339();
        let target_rt = self.inner.registry.read().by_kind(g, v, &target_kind);
        let target = target_rt.as_ref().and_then(|rt| self.inner.store.get(&rt.gr(), &k.1, &target_name));
        let Some((rt, target)) = target_rt.zip(target) else {
            let msg = format!(
                "the HPA controller was unable to get the target's current scale: {}.{g} \"{target_name}\" not found",
                target_kind.to_lowercase()
            );
            self.write_status(k, &mut |cur| {
                json!({"observedGeneration": generation, "currentReplicas": 0, "desiredReplicas": 0,
                    "conditions": [cond_simple(cur, "AbleToScale", "False", "FailedGetScale", &msg, &now)]})
            });
            return;
        };
        let current = target.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
        let desired = current.clamp(min, max.max(min));
        if desired != current {
            let _ = self.inner.patch_with(&rt, &k.1, &target_name, None, MANAGER, false, &mut |cur| {
                let mut v = (**cur).clone();
                v["spec"]["replicas"] = json!(desired);
                Ok(v)
            });
            let why = if current < min {
                "Current number of replicas below Spec.MinReplicas"
            } else {
                "Current number of replicas above Spec.MaxReplicas"
            };
            self.event(
                obj,
                "Normal",
                "SuccessfulRescale",
                &format!("New size: {desired}; reason: {why}"),
                "horizontal-pod-autoscaler",
            );
        }
        let scaled = desired != current;
        self.write_status(k, &mut |cur| {
            let last = if scaled { json!(now) } else { cur.pointer("/status/lastScaleTime").cloned().unwrap_or(Value::Null) };
            let mut st = json!({"observedGeneration": generation, "currentReplicas": current, "desiredReplicas": desired,
                "conditions": [
                    cond_simple(cur, "AbleToScale", "True", "SucceededGetScale", "the HPA controller was able to get the target's current scale", &now),
                    cond_simple(cur, "ScalingActive", "False", "FailedGetResourceMetric",
                        "the HPA was unable to compute the replica count: failed to get cpu utilization: unable to get metrics for resource cpu: no metrics returned from resource metrics API", &now),
                ]});
            if !last.is_null() {
                st["lastScaleTime"] = last;
            }
            st
        });
    }

    /// The kubelet's and scheduler's events for a pod status transition.
    fn pod_events(&self, pod: &Value, old: &Value, containers: &[Value], ready: bool, unpullable: bool) {
        let ns = meta_str(pod, "namespace");
        let name = meta_str(pod, "name");
        if old.is_null() || old.get("startTime").is_none() {
            self.event(
                pod,
                "Normal",
                "Scheduled",
                &format!("Successfully assigned {ns}/{name} to {NODE}"),
                "default-scheduler",
            );
        }
        let was_running =
            old.get("phase").and_then(Value::as_str).is_some_and(|p| p == "Running" || p == "Succeeded");
        let was_backoff = old.get("containerStatuses").and_then(Value::as_array).is_some_and(|a| {
            a.iter().any(|c| {
                c.pointer("/state/waiting/reason").and_then(Value::as_str) == Some("ImagePullBackOff")
            })
        });
        for c in containers {
            let image = c["image"].as_str().unwrap_or("");
            let cname = c["name"].as_str().unwrap_or("");
            if ready && !was_running {
                self.event(
                    pod,
                    "Normal",
                    "Pulled",
                    &format!("Container image \"{image}\" already present on machine"),
                    "kubelet",
                );
                self.event(pod, "Normal", "Created", &format!("Created container: {cname}"), "kubelet");
                self.event(pod, "Normal", "Started", &format!("Started container {cname}"), "kubelet");
            } else if unpullable && !was_backoff {
                self.event(pod, "Normal", "Pulling", &format!("Pulling image \"{image}\""), "kubelet");
                self.event(
                    pod,
                    "Warning",
                    "Failed",
                    &format!("Failed to pull image \"{image}\": rpc error: code = NotFound desc = failed to pull and unpack image \"{image}\": not found"),
                    "kubelet",
                );
                self.event(pod, "Warning", "Failed", "Error: ErrImagePull", "kubelet");
                self.event(
                    pod,
                    "Normal",
                    "BackOff",
                    &format!("Back-off pulling image \"{image}\""),
                    "kubelet",
                );
                self.event(pod, "Warning", "Failed", "Error: ImagePullBackOff", "kubelet");
            }
        }
    }
}

/// An integer field of an object's status (0 when absent).
fn status_count(v: &Value, f: &str) -> i64 {
    v.pointer(&format!("/status/{f}")).and_then(Value::as_i64).unwrap_or(0)
}

/// How many replicas a Deployment needs available to be Available:
/// replicas minus the rolling update's maxUnavailable (default 1).
fn deployment_min_available(obj: &Value, replicas: i64) -> i64 {
    replicas
        - resolve_int_or_percent(
            obj.pointer("/spec/strategy/rollingUpdate/maxUnavailable"),
            replicas,
            false,
            1,
        )
}

/// A Deployment's status: replica counts summed over its ReplicaSets,
/// `updated` from the current one, the Available condition from
/// `min_available`, and the given Progressing condition.
fn deployment_status(
    cur: &Value,
    generation: i64,
    rss: &[Arc<Value>],
    updated: i64,
    min_available: i64,
    progressing: (&str, &str, String),
    now: &str,
) -> Value {
    let sum = |f: &str| rss.iter().map(|r| status_count(r, f)).sum::<i64>();
    let (total, ready, available) = (sum("replicas"), sum("readyReplicas"), sum("availableReplicas"));
    let mut s = json!({"observedGeneration": generation, "replicas": total, "updatedReplicas": updated});
    if ready > 0 {
        s["readyReplicas"] = json!(ready);
    }
    if available > 0 {
        s["availableReplicas"] = json!(available);
    }
    if total - available > 0 {
        s["unavailableReplicas"] = json!(total - available);
    }
    let avail = if available >= min_available {
        ("True", "MinimumReplicasAvailable", "Deployment has minimum availability.".to_string())
    } else {
        ("False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability.".to_string())
    };
    s["conditions"] = json!([cond(cur, "Available", avail, now), cond(cur, "Progressing", progressing, now)]);
    s
}

/// The owner reference with `controller: true`.
fn controller_ref(obj: &Value) -> Option<&Value> {
    obj.pointer("/metadata/ownerReferences")?
        .as_array()?
        .iter()
        .find(|r| r["controller"].as_bool() == Some(true))
}

fn condition<'a>(obj: &'a Value, t: &str) -> Option<&'a str> {
    obj.pointer("/status/conditions")?.as_array()?.iter().find(|c| c["type"] == t)?.get("status")?.as_str()
}

/// A condition keeping lastTransitionTime while the status does not change,
/// and lastUpdateTime while nothing changes.
fn cond(cur: &Value, t: &str, (status, reason, message): (&str, &str, String), now: &str) -> Value {
    let old = cur
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|c| c["type"] == t))
        .cloned();
    let same_status = old.as_ref().is_some_and(|o| o["status"] == status);
    let same_all = same_status
        && old.as_ref().is_some_and(|o| o["reason"] == reason && o["message"] == message.as_str());
    let transition = if same_status {
        old.as_ref().map(|o| o["lastTransitionTime"].clone()).unwrap_or(json!(now))
    } else {
        json!(now)
    };
    let update = if same_all {
        old.as_ref().map(|o| o["lastUpdateTime"].clone()).unwrap_or(json!(now))
    } else {
        json!(now)
    };
    json!({"type": t, "status": status, "lastUpdateTime": update, "lastTransitionTime": transition, "reason": reason, "message": message})
}

fn is_unpullable(obj: &Value, template: Option<&Value>) -> bool {
    let ann = |v: &Value| {
        v.pointer("/metadata/annotations").and_then(|a| a.get(UNPULLABLE_ANNOTATION)).and_then(Value::as_str)
            == Some("true")
    };
    if ann(obj) || template.is_some_and(ann) {
        return true;
    }
    let Some(t) = template else { return false };
    ["containers", "initContainers"].iter().any(|f| {
        t.pointer(&format!("/spec/{f}")).and_then(Value::as_array).is_some_and(|cs| {
            cs.iter().any(|c| {
                c["image"].as_str().is_some_and(|i| {
                    let last = i.rsplit('/').next().unwrap_or("");
                    let repo = last.split(['@', ':']).next().unwrap_or("");
                    last.ends_with(":does-not-exist") || repo == "does-not-exist"
                })
            })
        })
    })
}

/// A stable pod-template-hash-like suffix.
fn template_hash(t: Option<&Value>) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    t.map(crate::fieldpath::canonical).unwrap_or_default().hash(&mut h);
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut n = h.finish();
    (0..10)
        .map(|_| {
            let c = ALPHABET[(n % ALPHABET.len() as u64) as usize] as char;
            n /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

fn label(v: &Value, key: &str) -> String {
    v.pointer("/metadata/labels").and_then(|l| l.get(key)).and_then(Value::as_str).unwrap_or("").to_string()
}

fn pod_ready(p: &Value) -> bool {
    p.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5).map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char).collect()
}

/// An int-or-percent field (maxUnavailable, maxSurge) against a total.
fn resolve_int_or_percent(v: Option<&Value>, total: i64, round_up: bool, default: i64) -> i64 {
    match v {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(default),
        Some(Value::String(s)) if s.ends_with('%') => {
            let p: f64 = s.trim_end_matches('%').parse().unwrap_or(0.0);
            let x = total as f64 * p / 100.0;
            if round_up { x.ceil() as i64 } else { x.floor() as i64 }
        }
        Some(Value::String(s)) => s.parse().unwrap_or(default),
        _ => default,
    }
}

/// A condition without lastUpdateTime (HPA, PDB style), keeping lastTransitionTime.
fn cond_simple(cur: &Value, t: &str, status: &str, reason: &str, message: &str, now: &str) -> Value {
    let old = cur
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|c| c["type"] == t));
    let transition = match old {
        Some(o) if o["status"] == status => o["lastTransitionTime"].clone(),
        _ => json!(now),
    };
    json!({"type": t, "status": status, "lastTransitionTime": transition, "reason": reason, "message": message})
}

/// A metav1.LabelSelector (matchLabels and matchExpressions) against labels.
fn selector_matches(sel: &Value, labels: Option<&Value>) -> bool {
    let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    let labels_ok = sel
        .get("matchLabels")
        .and_then(Value::as_object)
        .is_none_or(|m| m.iter().all(|(k, v)| get(k) == v.as_str()));
    let exprs_ok = sel.get("matchExpressions").and_then(Value::as_array).is_none_or(|es| {
        es.iter().all(|e| {
            let key = e["key"].as_str().unwrap_or("");
            let vals: Vec<&str> = e["values"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            match e["operator"].as_str().unwrap_or("") {
                "In" => get(key).is_some_and(|v| vals.contains(&v)),
                "NotIn" => get(key).is_none_or(|v| !vals.contains(&v)),
                "Exists" => get(key).is_some(),
                "DoesNotExist" => get(key).is_none(),
                _ => false,
            }
        })
    });
    labels_ok && exprs_ok
}
