//! kstatus-style health: whether an applied object has reached its desired
//! state (workloads rolled out, Jobs complete, PVCs bound, load balancers
//! provisioned, CRDs established, generic Ready conditions), and waiting for it
//! with a timeout that reports which objects are not ready and why.

use std::fmt;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::kubeapi::{ObjApi, retry_transient};
use crate::objects::ObjKey;
use crate::resource::ResourceInfo;
use crate::{Error, Result};

/// The health of one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum HealthStatus {
    /// Reached its desired state.
    Current,
    /// Still getting there.
    InProgress,
    /// Failed, and will not get there without a change.
    Failed,
    /// Does not exist.
    NotFound,
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HealthStatus::Current => "Current",
            HealthStatus::InProgress => "InProgress",
            HealthStatus::Failed => "Failed",
            HealthStatus::NotFound => "NotFound",
        })
    }
}

/// The health of one object with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectHealth {
    /// The object.
    pub key: ObjKey,
    /// Its health.
    pub status: HealthStatus,
    /// Why it is not Current (empty when it is).
    pub message: String,
}

fn i(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn cond<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj["status"]["conditions"].as_array()?.iter().find(|c| c["type"].as_str() == Some(type_))
}

fn cond_is(obj: &Value, type_: &str, status: &str) -> bool {
    cond(obj, type_).is_some_and(|c| c["status"].as_str() == Some(status))
}

fn cond_text(c: &Value) -> String {
    let reason = c["reason"].as_str().unwrap_or("");
    let msg = c["message"].as_str().unwrap_or("");
    match (reason.is_empty(), msg.is_empty()) {
        (false, false) => format!("{reason}: {msg}"),
        (false, true) => reason.to_string(),
        (true, false) => msg.to_string(),
        (true, true) => String::new(),
    }
}

/// Assess one live object. Pure: the object's JSON is all it looks at.
pub fn assess(group: &str, kind: &str, obj: &Value) -> (HealthStatus, String) {
    use HealthStatus::*;
    let generation = i(&obj["metadata"]["generation"]);
    let status = &obj["status"];
    if obj["metadata"]["deletionTimestamp"].is_string() {
        return (InProgress, "being deleted".into());
    }
    // A controller that has not seen the latest spec says nothing about it.
    let observed = status.get("observedGeneration").map(i);
    let workload = matches!((group, kind), ("apps", _) | ("batch", "Job"));
    if let Some(o) = observed
        && generation > 0
        && o < generation
    {
        return (InProgress, format!("the controller has not observed generation {generation} yet (at {o})"));
    }
    match (group, kind) {
        ("apps", "Deployment") => {
            if observed.is_none() {
                return (InProgress, "the controller has not observed the Deployment yet".into());
            }
            let want = obj["spec"]["replicas"].as_i64().unwrap_or(1);
            if let Some(p) = cond(obj, "Progressing")
                && p["reason"].as_str() == Some("ProgressDeadlineExceeded")
            {
                return (Failed, format!("progress deadline exceeded: {}", cond_text(p)));
            }
            let (updated, available, total) =
                (i(&status["updatedReplicas"]), i(&status["availableReplicas"]), i(&status["replicas"]));
            if updated >= want && available >= want && total <= want {
                return (Current, String::new());
            }
            let mut msg = format!("{available}/{want} replicas available, {updated} updated");
            if let Some(c) = cond(obj, "Available").filter(|c| c["status"].as_str() == Some("False")) {
                msg.push_str(&format!("; Available=False {}", cond_text(c)));
            }
            (InProgress, msg)
        }
        ("apps", "StatefulSet") => {
            if observed.is_none() {
                return (InProgress, "the controller has not observed the StatefulSet yet".into());
            }
            let want = obj["spec"]["replicas"].as_i64().unwrap_or(1);
            let ready = i(&status["readyReplicas"]);
            let rolling =
                obj["spec"]["updateStrategy"]["type"].as_str().unwrap_or("RollingUpdate") == "RollingUpdate";
            let updated = i(&status["updatedReplicas"]);
            let revs_match = status["currentRevision"] == status["updateRevision"];
            if ready >= want && (!rolling || (updated >= want && revs_match)) {
                return (Current, String::new());
            }
            (InProgress, format!("{ready}/{want} replicas ready, {updated} updated"))
        }
        ("apps", "DaemonSet") => {
            if observed.is_none() {
                return (InProgress, "the controller has not observed the DaemonSet yet".into());
            }
            let want = i(&status["desiredNumberScheduled"]);
            let avail = i(&status["numberAvailable"]);
            let updated = i(&status["updatedNumberScheduled"]);
            if avail >= want && updated >= want {
                return (Current, String::new());
            }
            (InProgress, format!("{avail}/{want} pods available, {updated} updated"))
        }
        ("apps", "ReplicaSet") => {
            let want = obj["spec"]["replicas"].as_i64().unwrap_or(1);
            let avail = i(&status["availableReplicas"]);
            if avail >= want {
                return (Current, String::new());
            }
            (InProgress, format!("{avail}/{want} replicas available"))
        }
        ("batch", "Job") => {
            if cond_is(obj, "Complete", "True") {
                return (Current, String::new());
            }
            if let Some(c) = cond(obj, "Failed").filter(|c| c["status"].as_str() == Some("True")) {
                return (Failed, format!("job failed: {}", cond_text(c)));
            }
            let (active, succeeded, failed) =
                (i(&status["active"]), i(&status["succeeded"]), i(&status["failed"]));
            (InProgress, format!("job running: {active} active, {succeeded} succeeded, {failed} failed"))
        }
        ("", "Pod") => {
            match status["phase"].as_str().unwrap_or("") {
                "Succeeded" => return (Current, String::new()),
                "Running" if cond_is(obj, "Ready", "True") => return (Current, String::new()),
                "Failed" => {
                    return (Failed, format!("pod failed: {}", status["message"].as_str().unwrap_or("")));
                }
                _ => {}
            }
            let reasons = container_reasons(obj);
            let phase = status["phase"].as_str().unwrap_or("Pending");
            if reasons.is_empty() {
                (InProgress, format!("pod {phase}"))
            } else {
                (InProgress, format!("pod {phase}: {}", reasons.join("; ")))
            }
        }
        ("", "PersistentVolumeClaim") => match status["phase"].as_str() {
            Some("Bound") => (Current, String::new()),
            Some("Lost") => (Failed, "claim lost its volume".into()),
            p => (InProgress, format!("claim is {}", p.unwrap_or("Pending"))),
        },
        ("", "Service") => {
            if obj["spec"]["type"].as_str() != Some("LoadBalancer") {
                return (Current, String::new());
            }
            match status["loadBalancer"]["ingress"].as_array() {
                Some(a) if !a.is_empty() => (Current, String::new()),
                _ => (InProgress, "waiting for a load balancer address".into()),
            }
        }
        ("", "Namespace") => match status["phase"].as_str() {
            Some("Terminating") => (InProgress, "namespace is terminating".into()),
            _ => (Current, String::new()),
        },
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            if cond_is(obj, "Established", "True") {
                return (Current, String::new());
            }
            if let Some(c) = cond(obj, "NamesAccepted").filter(|c| c["status"].as_str() == Some("False")) {
                return (Failed, format!("names not accepted: {}", cond_text(c)));
            }
            (InProgress, "not established yet".into())
        }
        _ if workload => (Current, String::new()),
        _ => generic(obj, generation),
    }
}

fn generic(obj: &Value, generation: i64) -> (HealthStatus, String) {
    use HealthStatus::*;
    if let Some(c) = cond(obj, "Stalled").filter(|c| c["status"].as_str() == Some("True")) {
        return (Failed, format!("Stalled: {}", cond_text(c)));
    }
    let Some(ready) = cond(obj, "Ready") else {
        return (Current, String::new());
    };
    if let Some(og) = ready.get("observedGeneration").and_then(Value::as_i64)
        && generation > 0
        && og < generation
    {
        return (InProgress, format!("Ready condition is for generation {og}, not {generation}"));
    }
    match ready["status"].as_str() {
        Some("True") => (Current, String::new()),
        _ => (
            InProgress,
            format!("Ready={} {}", ready["status"].as_str().unwrap_or("Unknown"), cond_text(ready)),
        ),
    }
}

/// Why a pod's containers are not running: `app: ImagePullBackOff: Back-off pulling image "x"`.
pub fn container_reasons(pod: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for list in ["initContainerStatuses", "containerStatuses"] {
        for cs in pod["status"][list].as_array().into_iter().flatten() {
            let name = cs["name"].as_str().unwrap_or("?");
            let waiting = &cs["state"]["waiting"];
            let terminated = &cs["state"]["terminated"];
            let (reason, msg) = if waiting.is_object() {
                (waiting["reason"].as_str().unwrap_or(""), waiting["message"].as_str().unwrap_or(""))
            } else if terminated.is_object() && i(&terminated["exitCode"]) != 0 {
                (
                    terminated["reason"].as_str().unwrap_or("Error"),
                    terminated["message"].as_str().unwrap_or(""),
                )
            } else {
                continue;
            };
            if reason.is_empty() || reason == "ContainerCreating" || reason == "PodInitializing" {
                continue;
            }
            out.push(if msg.is_empty() {
                format!("{name}: {reason}")
            } else {
                format!("{name}: {reason}: {msg}")
            });
        }
    }
    out
}

fn selector_string(obj: &Value) -> Option<String> {
    let ml = obj["spec"]["selector"]["matchLabels"].as_object()?;
    if ml.is_empty() {
        return None;
    }
    Some(ml.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect::<Vec<_>>().join(","))
}

/// For a workload that is not ready, the reasons its pods give (image pull
/// errors, crash loops), at most three.
pub async fn pod_reasons(client: &kube::Client, obj: &Value) -> Vec<String> {
    let Some(ns) = obj["metadata"]["namespace"].as_str() else { return vec![] };
    let sel = if obj["kind"].as_str() == Some("Job") {
        obj["metadata"]["uid"]
            .as_str()
            .map(|u| format!("controller-uid={u}"))
            .or_else(|| selector_string(obj))
    } else {
        selector_string(obj)
    };
    let Some(sel) = sel else { return vec![] };
    let pods = ResourceInfo {
        group: String::new(),
        version: "v1".into(),
        kind: "Pod".into(),
        plural: "pods".into(),
        namespaced: true,
    };
    let url = pods.url_path(Some(ns));
    let list = retry_transient("list pods", || async {
        let req = kube::core::Request::new(&url)
            .list(&kube::api::ListParams::default().labels(&sel).limit(20))
            .map_err(kube::Error::BuildRequest)?;
        client.request::<Value>(req).await
    })
    .await;
    let Ok(list) = list else { return vec![] };
    let mut out: Vec<String> = Vec::new();
    for p in list["items"].as_array().into_iter().flatten() {
        let pname = p["metadata"]["name"].as_str().unwrap_or("?");
        for r in container_reasons(p) {
            let line = format!("pod {pname}: {r}");
            if out.len() < 3
                && !out.iter().any(|o| o.split_once(": ").map(|x| x.1) == line.split_once(": ").map(|x| x.1))
            {
                out.push(line);
            }
        }
        if out.is_empty()
            && let Some(c) = p["status"]["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "PodScheduled" && c["status"] == "False"))
        {
            out.push(format!("pod {pname}: unschedulable: {}", cond_text(c)));
        }
    }
    out
}

/// The part of an object health checks read: metadata, a few spec fields
/// and the status. A large CRD's schema is skipped while parsing.
#[derive(Debug, Default, serde::Deserialize)]
struct Slim {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: crate::kubeapi::LeanMeta,
    #[serde(default)]
    spec: SlimSpec,
    #[serde(default)]
    status: Value,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimSpec {
    #[serde(default)]
    replicas: Option<i64>,
    #[serde(default, rename = "type")]
    type_: Option<String>,
    #[serde(default)]
    selector: Option<Value>,
    #[serde(default)]
    update_strategy: Option<Value>,
}

/// GET an object for health checks: a small JSON value with what [`assess`]
/// reads, and its metadata. `None` when it does not exist.
pub async fn get_slim(
    client: &kube::Client,
    key: &ObjKey,
    res: &ResourceInfo,
) -> Result<Option<(Value, crate::kubeapi::MetaOnly)>> {
    let Some(s) = ObjApi::new(client, res, key).get_as::<Slim>().await? else {
        return Ok(None);
    };
    let m = &s.metadata;
    let mut spec = serde_json::Map::new();
    if let Some(r) = s.spec.replicas {
        spec.insert("replicas".into(), r.into());
    }
    if let Some(t) = &s.spec.type_ {
        spec.insert("type".into(), t.clone().into());
    }
    if let Some(sel) = s.spec.selector {
        spec.insert("selector".into(), sel);
    }
    if let Some(u) = s.spec.update_strategy {
        spec.insert("updateStrategy".into(), u);
    }
    let v = serde_json::json!({
        "kind": s.kind,
        "metadata": {
            "name": m.name,
            "namespace": m.namespace,
            "uid": m.uid,
            "generation": m.generation,
            "deletionTimestamp": m.deletion_timestamp,
        },
        "spec": spec,
        "status": s.status,
    });
    Ok(Some((v, crate::kubeapi::MetaOnly { metadata: s.metadata, ..Default::default() })))
}

/// One object to check.
#[derive(Debug, Clone)]
pub struct Target {
    /// The object.
    pub key: ObjKey,
    /// How it is served.
    pub resource: ResourceInfo,
    /// It is deleted by the cluster once it finished (a Job with
    /// `ttlSecondsAfterFinished`, [`crate::objects::DesiredObject::gone_when_finished`]):
    /// once applied, its absence means it finished (Helm 3's rule for hooks).
    pub gone_when_finished: bool,
}

impl Target {
    /// An object whose absence is `NotFound`.
    pub fn new(key: ObjKey, resource: ResourceInfo) -> Self {
        Self { key, resource, gone_when_finished: false }
    }
}

/// Check every object once.
pub async fn check(
    client: &kube::Client,
    targets: &[Target],
    concurrency: usize,
) -> Result<Vec<ObjectHealth>> {
    let results: Vec<Result<ObjectHealth>> =
        futures::stream::iter(targets.iter().map(|t| check_one(client, t, false)).collect::<Vec<_>>())
            .buffered(concurrency.max(1))
            .collect()
            .await;
    results.into_iter().collect()
}

/// What a gone object that is deleted once finished reports.
pub const FINISHED_AND_GONE: &str = "finished: deleted by its ttlSecondsAfterFinished";

async fn check_one(client: &kube::Client, target: &Target, explain: bool) -> Result<ObjectHealth> {
    let key = &target.key;
    let api = ObjApi::new(client, &target.resource, key);
    let Some(obj) = api.get().await? else {
        return Ok(if target.gone_when_finished {
            ObjectHealth {
                key: key.clone(),
                status: HealthStatus::Current,
                message: FINISHED_AND_GONE.into(),
            }
        } else {
            ObjectHealth { key: key.clone(), status: HealthStatus::NotFound, message: "not found".into() }
        });
    };
    let (status, mut message) = assess(&key.group, &key.kind, &obj);
    if explain && status != HealthStatus::Current && matches!(key.group.as_str(), "apps" | "batch") {
        let reasons = pod_reasons(client, &obj).await;
        if !reasons.is_empty() {
            message = format!("{message}; {}", reasons.join("; "));
        }
    }
    Ok(ObjectHealth { key: key.clone(), status, message })
}

/// Poll until every object is Current, or until `timeout`. The result lists
/// every object; those not Current carry the reason (for workloads, with the
/// reasons their pods give).
pub async fn wait(
    client: &kube::Client,
    targets: &[Target],
    timeout: Duration,
    concurrency: usize,
    cancel: &CancellationToken,
) -> Result<Vec<ObjectHealth>> {
    let deadline = Instant::now() + timeout;
    let mut done: Vec<ObjectHealth> = Vec::with_capacity(targets.len());
    let mut pending: Vec<&Target> = targets.iter().collect();
    let mut interval = Duration::from_millis(25);
    loop {
        let last = Instant::now() >= deadline;
        let results: Vec<Result<ObjectHealth>> =
            futures::stream::iter(pending.iter().map(|t| check_one(client, t, last)).collect::<Vec<_>>())
                .buffered(concurrency.max(1))
                .collect()
                .await;
        let mut still = Vec::new();
        for (t, r) in pending.iter().zip(results) {
            let h = match r {
                Ok(h) => h,
                Err(e) if e.is_transient() && !last => {
                    still.push(*t);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if h.status == HealthStatus::Current || last {
                done.push(h);
            } else {
                still.push(*t);
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        let now = Instant::now();
        let sleep = interval.min(deadline.saturating_duration_since(now));
        tokio::select! {
            _ = cancel.cancelled() => return Err(Error::Cancelled),
            _ = tokio::time::sleep(sleep) => {}
        }
        interval = (interval * 3 / 2).min(Duration::from_secs(2));
    }
    // Keep the caller's order.
    let order: std::collections::HashMap<&ObjKey, usize> =
        targets.iter().enumerate().map(|(i, t)| (&t.key, i)).collect();
    done.sort_by_key(|h| order.get(&h.key).copied().unwrap_or(usize::MAX));
    Ok(done)
}

/// A one-line summary of objects that are not Current.
pub fn not_ready_summary(hs: &[ObjectHealth]) -> String {
    let bad: Vec<String> = hs
        .iter()
        .filter(|h| h.status != HealthStatus::Current)
        .map(|h| format!("{}: {}", h.key, h.message))
        .collect();
    match bad.len() {
        0 => String::new(),
        n if n <= 5 => bad.join("; "),
        n => format!("{}; and {} more", bad[..5].join("; "), n - 5),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use HealthStatus::*;
    use serde_json::json;

    #[test]
    fn deployments() {
        let ok = json!({"metadata": {"generation": 2}, "spec": {"replicas": 2},
            "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}});
        assert_eq!(assess("apps", "Deployment", &ok).0, Current);
        let stale = json!({"metadata": {"generation": 3}, "spec": {"replicas": 2},
            "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}});
        assert_eq!(assess("apps", "Deployment", &stale).0, InProgress);
        let unavailable = json!({"metadata": {"generation": 1}, "spec": {"replicas": 1},
            "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 0,
              "conditions": [{"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable",
                              "message": "Deployment does not have minimum availability."}]}});
        let (s, m) = assess("apps", "Deployment", &unavailable);
        assert_eq!(s, InProgress);
        assert!(m.contains("0/1 replicas available") && m.contains("MinimumReplicasUnavailable"), "{m}");
        let dead = json!({"metadata": {"generation": 1}, "spec": {},
            "status": {"observedGeneration": 1, "conditions": [{"type": "Progressing", "status": "False",
              "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet x has timed out progressing."}]}});
        assert_eq!(assess("apps", "Deployment", &dead).0, Failed);
        let unobserved = json!({"metadata": {"generation": 1}, "spec": {}, "status": {}});
        assert_eq!(assess("apps", "Deployment", &unobserved).0, InProgress);
    }

    #[test]
    fn statefulsets_daemonsets_jobs() {
        let sts = json!({"metadata": {"generation": 1}, "spec": {"replicas": 1},
            "status": {"observedGeneration": 1, "readyReplicas": 1, "updatedReplicas": 1,
                       "currentRevision": "a", "updateRevision": "a"}});
        assert_eq!(assess("apps", "StatefulSet", &sts).0, Current);
        let ds = json!({"metadata": {"generation": 1}, "status": {"observedGeneration": 1,
            "desiredNumberScheduled": 3, "numberAvailable": 2, "updatedNumberScheduled": 3}});
        assert_eq!(assess("apps", "DaemonSet", &ds).0, InProgress);
        let done = json!({"status": {"conditions": [{"type": "Complete", "status": "True"}]}});
        assert_eq!(assess("batch", "Job", &done).0, Current);
        let failed = json!({"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}});
        assert_eq!(assess("batch", "Job", &failed).0, Failed);
    }

    #[test]
    fn pods_report_container_reasons() {
        let pod = json!({"status": {"phase": "Pending", "containerStatuses": [{"name": "app",
            "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"does-not-exist\""}}}]}});
        let (s, m) = assess("", "Pod", &pod);
        assert_eq!(s, InProgress);
        assert!(m.contains("ImagePullBackOff") && m.contains("does-not-exist"), "{m}");
        let ok = json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}});
        assert_eq!(assess("", "Pod", &ok).0, Current);
    }

    #[test]
    fn services_pvcs_crds_generic() {
        assert_eq!(assess("", "Service", &json!({"spec": {"type": "ClusterIP"}})).0, Current);
        assert_eq!(
            assess("", "Service", &json!({"spec": {"type": "LoadBalancer"}, "status": {}})).0,
            InProgress
        );
        let lb = json!({"spec": {"type": "LoadBalancer"}, "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}});
        assert_eq!(assess("", "Service", &lb).0, Current);
        assert_eq!(
            assess("", "PersistentVolumeClaim", &json!({"status": {"phase": "Pending"}})).0,
            InProgress
        );
        assert_eq!(assess("", "PersistentVolumeClaim", &json!({"status": {"phase": "Bound"}})).0, Current);
        let crd = json!({"status": {"conditions": [{"type": "Established", "status": "True"}]}});
        assert_eq!(assess("apiextensions.k8s.io", "CustomResourceDefinition", &crd).0, Current);
        assert_eq!(assess("apiextensions.k8s.io", "CustomResourceDefinition", &json!({})).0, InProgress);
        assert_eq!(assess("", "ConfigMap", &json!({"data": {}})).0, Current);
        let cr = json!({"metadata": {"generation": 2}, "status": {"conditions": [
            {"type": "Ready", "status": "True", "observedGeneration": 1}]}});
        assert_eq!(assess("example.com", "Widget", &cr).0, InProgress);
        let cr = json!({"metadata": {"generation": 2}, "status": {"observedGeneration": 2, "conditions": [
            {"type": "Ready", "status": "False", "reason": "Broken", "message": "no"}]}});
        let (s, m) = assess("example.com", "Widget", &cr);
        assert_eq!(s, InProgress);
        assert!(m.contains("Broken: no"), "{m}");
        let stalled =
            json!({"status": {"conditions": [{"type": "Stalled", "status": "True", "reason": "X"}]}});
        assert_eq!(assess("example.com", "Widget", &stalled).0, Failed);
    }
}
