//! What the API server does to an object before storing it: unknown-field
//! detection (built-ins are decoded through the k8s-openapi types; custom
//! resources are checked against their structural schema), defaulting of the
//! fields health checks and diffs see, and a subset of validation.

use serde_json::{Map, Value, json};

use crate::registry::ResourceType;
use crate::schema::Schema;
use crate::status::{Cause, invalid_value, required};

/// Hashes of CRD schemas that decoded without unknown fields.
static CHECKED_SCHEMAS: std::sync::LazyLock<parking_lot::Mutex<std::collections::HashSet<u64>>> =
    std::sync::LazyLock::new(Default::default);

/// Round-trip through the typed k8s-openapi struct: what it drops is unknown.
fn roundtrip<T: serde::de::DeserializeOwned + serde::Serialize>(v: &Value) -> Result<Value, String> {
    let t: T = T::deserialize(v).map_err(|e| e.to_string())?;
    serde_json::to_value(&t).map_err(|e| e.to_string())
}

fn typed_roundtrip(group: &str, kind: &str, v: &Value) -> Option<Result<Value, String>> {
    use k8s_openapi::api::{
        admissionregistration::v1 as adm, apps::v1 as apps, autoscaling::v2 as hpa, batch::v1 as batch,
        coordination::v1 as coord, core::v1 as core, discovery::v1 as disc, networking::v1 as net,
        policy::v1 as policy, rbac::v1 as rbac, scheduling::v1 as sched, storage::v1 as storage,
    };
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
    Some(match (group, kind) {
        ("", "Namespace") => roundtrip::<core::Namespace>(v),
        ("", "ConfigMap") => roundtrip::<core::ConfigMap>(v),
        ("", "Secret") => roundtrip::<core::Secret>(v),
        ("", "ServiceAccount") => roundtrip::<core::ServiceAccount>(v),
        ("", "Service") => roundtrip::<core::Service>(v),
        ("", "Endpoints") => roundtrip::<core::Endpoints>(v),
        ("", "Pod") => roundtrip::<core::Pod>(v),
        ("", "PersistentVolumeClaim") => roundtrip::<core::PersistentVolumeClaim>(v),
        ("", "PersistentVolume") => roundtrip::<core::PersistentVolume>(v),
        ("", "Event") => roundtrip::<core::Event>(v),
        ("", "Node") => roundtrip::<core::Node>(v),
        ("", "LimitRange") => roundtrip::<core::LimitRange>(v),
        ("", "ResourceQuota") => roundtrip::<core::ResourceQuota>(v),
        ("apps", "Deployment") => roundtrip::<apps::Deployment>(v),
        ("apps", "ReplicaSet") => roundtrip::<apps::ReplicaSet>(v),
        ("apps", "StatefulSet") => roundtrip::<apps::StatefulSet>(v),
        ("apps", "DaemonSet") => roundtrip::<apps::DaemonSet>(v),
        ("apps", "ControllerRevision") => roundtrip::<apps::ControllerRevision>(v),
        ("batch", "Job") => roundtrip::<batch::Job>(v),
        ("batch", "CronJob") => roundtrip::<batch::CronJob>(v),
        ("networking.k8s.io", "Ingress") => roundtrip::<net::Ingress>(v),
        ("networking.k8s.io", "IngressClass") => roundtrip::<net::IngressClass>(v),
        ("networking.k8s.io", "NetworkPolicy") => roundtrip::<net::NetworkPolicy>(v),
        ("autoscaling", "HorizontalPodAutoscaler") => roundtrip::<hpa::HorizontalPodAutoscaler>(v),
        ("policy", "PodDisruptionBudget") => roundtrip::<policy::PodDisruptionBudget>(v),
        ("rbac.authorization.k8s.io", "Role") => roundtrip::<rbac::Role>(v),
        ("rbac.authorization.k8s.io", "RoleBinding") => roundtrip::<rbac::RoleBinding>(v),
        ("rbac.authorization.k8s.io", "ClusterRole") => roundtrip::<rbac::ClusterRole>(v),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => roundtrip::<rbac::ClusterRoleBinding>(v),
        ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration") => {
            roundtrip::<adm::ValidatingWebhookConfiguration>(v)
        }
        ("admissionregistration.k8s.io", "MutatingWebhookConfiguration") => {
            roundtrip::<adm::MutatingWebhookConfiguration>(v)
        }
        ("scheduling.k8s.io", "PriorityClass") => roundtrip::<sched::PriorityClass>(v),
        ("storage.k8s.io", "StorageClass") => roundtrip::<storage::StorageClass>(v),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            roundtrip::<apiext::CustomResourceDefinition>(v)
        }
        ("coordination.k8s.io", "Lease") => roundtrip::<coord::Lease>(v),
        ("discovery.k8s.io", "EndpointSlice") => roundtrip::<disc::EndpointSlice>(v),
        ("apiregistration.k8s.io", "APIService") => {
            roundtrip::<k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService>(v)
        }
        _ => return None,
    })
}

/// Paths (`spec.foo`) present in `orig` but not in `typed`.
fn missing(orig: &Value, typed: &Value, prefix: &str, out: &mut Vec<String>) {
    match (orig, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                match b.get(k) {
                    Some(tv) => missing(v, tv, &p, out),
                    None if v.is_null() => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b.iter()).enumerate() {
                missing(x, y, &format!("{prefix}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Unknown fields of a custom resource under its structural schema.
fn unknown_crd(v: &Value, s: &Schema, prefix: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, cv) in m {
                let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                if s.is_unknown_field(k) {
                    out.push(p);
                    continue;
                }
                let (cs, _) = s.field(k);
                unknown_crd(cv, &cs, &p, out);
            }
        }
        Value::Array(a) => {
            if let Some((_, elem)) = s.list() {
                for (i, it) in a.iter().enumerate() {
                    unknown_crd(it, elem, &format!("{prefix}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// Decode check: returns the unknown field paths, or a decoding error.
pub fn unknown_fields(rt: &ResourceType, v: &Value) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    if rt.crd.is_some() {
        if let Some(meta) = v.get("metadata") {
            let typed = roundtrip::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>(meta)?;
            missing(meta, &typed, "metadata", &mut out);
        }
        let mut body = v.clone();
        if let Some(m) = body.as_object_mut() {
            m.shift_remove("metadata");
        }
        unknown_crd(&body, &rt.schema, "", &mut out);
        return Ok(out);
    }
    if rt.group == "apiextensions.k8s.io" && rt.kind == "CustomResourceDefinition" {
        return crd_unknown_fields(v);
    }
    match typed_roundtrip(&rt.group, &rt.kind, v) {
        Some(Ok(t)) => {
            missing(v, &t, "", &mut out);
            Ok(out)
        }
        Some(Err(e)) => Err(e),
        None => Ok(out),
    }
}

/// CRDs: the typed round trip of every `openAPIV3Schema` (JSONSchemaProps) is the
/// bulk of the cost of applying a big CRD, so the schemas are decoded on their own,
/// each once, and the rest of the CRD through the typed struct without them.
fn crd_unknown_fields(v: &Value) -> Result<Vec<String>, String> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
    let mut out = Vec::new();
    // the CRD without its schemas (a shallow copy: schemas are replaced by {})
    let mut shell = Value::Object(Map::new());
    if let Value::Object(m) = v {
        let mut sm = Map::new();
        for (k, x) in m {
            if k == "spec" {
                let mut spec = Map::new();
                for (sk, sx) in x.as_object().into_iter().flatten() {
                    if sk == "versions" {
                        let vers: Vec<Value> = sx
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .map(|ver| match ver.as_object() {
                                        Some(vo) => Value::Object(
                                            vo.iter()
                                                .map(|(vk, vx)| {
                                                    if vk == "schema" {
                                                        (vk.clone(), json!({}))
                                                    } else {
                                                        (vk.clone(), vx.clone())
                                                    }
                                                })
                                                .collect(),
                                        ),
                                        None => ver.clone(),
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        spec.insert(sk.clone(), Value::Array(vers));
                    } else {
                        spec.insert(sk.clone(), sx.clone());
                    }
                }
                sm.insert(k.clone(), Value::Object(spec));
            } else {
                sm.insert(k.clone(), x.clone());
            }
        }
        shell = Value::Object(sm);
    }
    let typed = roundtrip::<apiext::CustomResourceDefinition>(&shell)?;
    missing(&shell, &typed, "", &mut out);
    for (i, ver) in v.pointer("/spec/versions").and_then(Value::as_array).into_iter().flatten().enumerate() {
        if let Some(schema) = ver.get("schema") {
            // a schema already checked (re-applies, other versions) is not decoded again
            let key = {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                serde_json::to_string(schema).unwrap_or_default().hash(&mut h);
                h.finish()
            };
            if CHECKED_SCHEMAS.lock().contains(&key) {
                continue;
            }
            let t = roundtrip::<apiext::CustomResourceValidation>(schema)?;
            let before = out.len();
            missing(schema, &t, &format!("spec.versions[{i}].schema"), &mut out);
            if out.len() == before {
                let mut c = CHECKED_SCHEMAS.lock();
                if c.len() > 1024 {
                    c.clear();
                }
                c.insert(key);
            }
        }
    }
    Ok(out)
}

/// Remove the given dotted paths (as reported by `unknown_fields`).
pub fn prune(v: &mut Value, paths: &[String]) {
    for p in paths {
        let segs = split_path(p);
        remove(v, &segs);
    }
}

fn split_path(p: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in p.split('.') {
        let mut rest = part;
        while let Some(i) = rest.find('[') {
            if i > 0 {
                out.push(rest[..i].to_string());
            }
            let j = rest[i..].find(']').map(|j| i + j).unwrap_or(rest.len() - 1);
            out.push(rest[i..=j].to_string());
            rest = &rest[j + 1..];
        }
        if !rest.is_empty() {
            out.push(rest.to_string());
        }
    }
    out
}

fn remove(v: &mut Value, segs: &[String]) {
    match segs {
        [] => {}
        [last] => {
            if let Some(m) = v.as_object_mut() {
                m.shift_remove(last);
            }
        }
        [first, rest @ ..] => {
            let child = if let Some(idx) = first.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
                idx.parse::<usize>().ok().and_then(|i| v.as_array_mut().and_then(|a| a.get_mut(i)))
            } else {
                v.as_object_mut().and_then(|m| m.get_mut(first))
            };
            if let Some(c) = child {
                remove(c, rest);
            }
        }
    }
}

fn obj<'a>(v: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    let m = v.as_object_mut().expect("object");
    let e = m.entry(key.to_string()).or_insert_with(|| json!({}));
    if !e.is_object() {
        *e = json!({});
    }
    e.as_object_mut().expect("object")
}

fn set_default(m: &mut Map<String, Value>, k: &str, v: Value) {
    if m.get(k).is_none_or(Value::is_null) {
        m.insert(k.to_string(), v);
    }
}

fn default_pod_spec(spec: &mut Map<String, Value>) {
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    for f in ["containers", "initContainers"] {
        if let Some(Value::Array(cs)) = spec.get_mut(f) {
            for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
                set_default(c, "terminationMessagePolicy", json!("File"));
                set_default(c, "resources", json!({}));
                let image = c.get("image").and_then(Value::as_str).unwrap_or("");
                let tag = image.rsplit('/').next().unwrap_or("");
                let latest = !image.contains('@') && (!tag.contains(':') || tag.ends_with(":latest"));
                set_default(c, "imagePullPolicy", json!(if latest { "Always" } else { "IfNotPresent" }));
                if let Some(Value::Array(ps)) = c.get_mut("ports") {
                    for p in ps.iter_mut().filter_map(Value::as_object_mut) {
                        set_default(p, "protocol", json!("TCP"));
                    }
                }
            }
        }
    }
    if let Some(Value::Array(vs)) = spec.get_mut("volumes") {
        for v in vs.iter_mut().filter_map(Value::as_object_mut) {
            for src in ["configMap", "secret"] {
                if let Some(s) = v.get_mut(src).and_then(Value::as_object_mut) {
                    set_default(s, "defaultMode", json!(420));
                }
            }
        }
    }
}

fn default_template(v: &mut Value) {
    if let Some(spec) = v.pointer_mut("/spec/template/spec").and_then(Value::as_object_mut) {
        default_pod_spec(spec);
    }
}

/// Apply the defaults real API servers set (a documented subset).
pub fn apply_defaults(rt: &ResourceType, v: &mut Value) {
    if rt.crd.is_some() {
        if let Some(schema) = &rt.openapi {
            crate::crdschema::apply_defaults(v, schema);
        }
        return;
    }
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Namespace") => {
            let name = v.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
            let meta = obj(v, "metadata");
            if !meta.get("labels").is_some_and(Value::is_object) {
                meta.insert("labels".into(), json!({}));
            }
            if let Some(l) = meta.get_mut("labels").and_then(Value::as_object_mut) {
                l.insert("kubernetes.io/metadata.name".into(), json!(name));
            }
            set_default(obj(v, "spec"), "finalizers", json!(["kubernetes"]));
            set_default(obj(v, "status"), "phase", json!("Active"));
        }
        ("", "Secret") => {
            let m = v.as_object_mut().expect("object");
            set_default(m, "type", json!("Opaque"));
            if let Some(Value::Object(sd)) = m.shift_remove("stringData") {
                use base64::Engine;
                let data = obj(v, "data");
                for (k, val) in sd {
                    let s = val.as_str().unwrap_or("").to_string();
                    data.insert(k, json!(base64::engine::general_purpose::STANDARD.encode(s)));
                }
            }
        }
        ("", "Service") => {
            let spec = obj(v, "spec");
            set_default(spec, "type", json!("ClusterIP"));
            set_default(spec, "sessionAffinity", json!("None"));
            let ty = spec.get("type").and_then(Value::as_str).unwrap_or("ClusterIP").to_string();
            if ty != "ExternalName" {
                set_default(spec, "ipFamilies", json!(["IPv4"]));
                set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
                set_default(spec, "internalTrafficPolicy", json!("Cluster"));
            }
            if ty == "NodePort" || ty == "LoadBalancer" {
                set_default(spec, "externalTrafficPolicy", json!("Cluster"));
            }
            if ty == "LoadBalancer" {
                set_default(spec, "allocateLoadBalancerNodePorts", json!(true));
            }
            if let Some(Value::Array(ps)) = spec.get_mut("ports") {
                for p in ps.iter_mut().filter_map(Value::as_object_mut) {
                    set_default(p, "protocol", json!("TCP"));
                    if let Some(port) = p.get("port").cloned() {
                        set_default(p, "targetPort", port);
                    }
                }
            }
            set_default(obj(v, "status"), "loadBalancer", json!({}));
        }
        ("", "PersistentVolumeClaim") => {
            set_default(obj(v, "spec"), "volumeMode", json!("Filesystem"));
            set_default(obj(v, "status"), "phase", json!("Pending"));
        }
        ("", "Pod") => {
            if let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut) {
                default_pod_spec(spec);
            }
            set_default(obj(v, "status"), "phase", json!("Pending"));
        }
        ("apps", "Deployment") => {
            let spec = obj(v, "spec");
            set_default(spec, "replicas", json!(1));
            if !spec.get("strategy").is_some_and(Value::is_object) {
                spec.insert("strategy".into(), json!({}));
            }
            if let Some(s) = spec.get_mut("strategy").and_then(Value::as_object_mut) {
                set_default(s, "type", json!("RollingUpdate"));
            }
            if let Some(s) = spec.get_mut("strategy").and_then(Value::as_object_mut)
                && s.get("type").and_then(Value::as_str) == Some("RollingUpdate")
            {
                let ru = s.entry("rollingUpdate").or_insert_with(|| json!({}));
                if let Some(ru) = ru.as_object_mut() {
                    set_default(ru, "maxUnavailable", json!("25%"));
                    set_default(ru, "maxSurge", json!("25%"));
                }
            }
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "progressDeadlineSeconds", json!(600));
            default_template(v);
        }
        ("apps", "ReplicaSet") => {
            set_default(obj(v, "spec"), "replicas", json!(1));
            default_template(v);
        }
        ("apps", "StatefulSet") => {
            let spec = obj(v, "spec");
            set_default(spec, "replicas", json!(1));
            set_default(spec, "podManagementPolicy", json!("OrderedReady"));
            set_default(
                spec,
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
            );
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(
                spec,
                "persistentVolumeClaimRetentionPolicy",
                json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
            );
            default_template(v);
        }
        ("apps", "DaemonSet") => {
            let spec = obj(v, "spec");
            set_default(
                spec,
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
            );
            set_default(spec, "revisionHistoryLimit", json!(10));
            default_template(v);
        }
        ("batch", "Job") => {
            let uid = v.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("").to_string();
            let name = v.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
            let spec = obj(v, "spec");
            set_default(spec, "parallelism", json!(1));
            set_default(spec, "completions", json!(1));
            set_default(spec, "backoffLimit", json!(6));
            set_default(spec, "completionMode", json!("NonIndexed"));
            set_default(spec, "suspend", json!(false));
            set_default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
            let manual = spec.get("manualSelector").and_then(Value::as_bool).unwrap_or(false);
            if !manual && !uid.is_empty() {
                set_default(
                    spec,
                    "selector",
                    json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
                );
                let tmpl = obj(v, "spec").entry("template").or_insert_with(|| json!({}));
                let tmeta = obj(tmpl, "metadata");
                if !tmeta.get("labels").is_some_and(Value::is_object) {
                    tmeta.insert("labels".into(), json!({}));
                }
                let labels = tmeta.get_mut("labels").and_then(Value::as_object_mut).expect("labels");
                for (k, val) in [
                    ("batch.kubernetes.io/controller-uid", &uid),
                    ("batch.kubernetes.io/job-name", &name),
                    ("controller-uid", &uid),
                    ("job-name", &name),
                ] {
                    labels.entry(k.to_string()).or_insert_with(|| json!(val));
                }
            }
            if let Some(spec) = v.pointer_mut("/spec/template/spec").and_then(Value::as_object_mut) {
                default_pod_spec(spec);
            }
        }
        ("batch", "CronJob") => {
            let spec = obj(v, "spec");
            set_default(spec, "concurrencyPolicy", json!("Allow"));
            set_default(spec, "suspend", json!(false));
            set_default(spec, "successfulJobsHistoryLimit", json!(3));
            set_default(spec, "failedJobsHistoryLimit", json!(1));
            if let Some(ps) =
                v.pointer_mut("/spec/jobTemplate/spec/template/spec").and_then(Value::as_object_mut)
            {
                default_pod_spec(ps);
            }
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            set_default(obj(v, "spec"), "conversion", json!({"strategy": "None"}));
        }
        ("networking.k8s.io", "NetworkPolicy") => {
            let spec = obj(v, "spec");
            if spec.get("policyTypes").is_none() {
                let mut types = vec![json!("Ingress")];
                if spec.get("egress").is_some() {
                    types.push(json!("Egress"));
                }
                spec.insert("policyTypes".into(), Value::Array(types));
            }
        }
        ("scheduling.k8s.io", "PriorityClass") => {
            set_default(
                v.as_object_mut().expect("object"),
                "preemptionPolicy",
                json!("PreemptLowerPriority"),
            );
        }
        ("storage.k8s.io", "StorageClass") => {
            let m = v.as_object_mut().expect("object");
            set_default(m, "reclaimPolicy", json!("Delete"));
            set_default(m, "volumeBindingMode", json!("Immediate"));
        }
        _ => {}
    }
}

fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn is_dns1123_label(s: &str) -> bool {
    s.len() <= 63 && !s.contains('.') && is_dns1123_subdomain(s)
}

/// Validation (a subset; see docs/kube-sim.md).
pub fn validate(rt: &ResourceType, v: &Value) -> Vec<Cause> {
    let mut c = Vec::new();
    let name = v.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    if name.is_empty() {
        c.push(required("metadata.name", "name or generateName is required"));
    } else {
        let label_kinds = ["Namespace", "Service"];
        let service = rt.crd.is_none() && rt.group.is_empty() && rt.kind == "Service";
        let ok = if service {
            is_dns1123_label(name) && name.starts_with(|c: char| c.is_ascii_lowercase())
        } else if rt.crd.is_none() && label_kinds.contains(&rt.kind.as_str()) {
            is_dns1123_label(name)
        } else {
            is_dns1123_subdomain(name)
        };
        let ok =
            ok || (rt.group == "rbac.authorization.k8s.io" && !name.contains('/') && !name.contains('%'));
        if !ok {
            let msg = if service {
                "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
            } else if label_kinds.contains(&rt.kind.as_str()) {
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
            } else {
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
            };
            c.push(invalid_value("metadata.name", &json!(name), msg));
        }
    }
    for (field, labels) in [
        ("metadata.labels", v.pointer("/metadata/labels")),
        ("spec.template.metadata.labels", v.pointer("/spec/template/metadata/labels")),
    ] {
        for (k, val) in labels.and_then(Value::as_object).into_iter().flatten() {
            if let Some(msg) = qualified_name_problem(k) {
                c.push(invalid_value(field, &json!(k), &msg));
            }
            let s = val.as_str().unwrap_or("");
            if s.len() > 63 {
                c.push(invalid_value(field, val, "must be no more than 63 characters"));
            } else if !is_label_value(s) {
                c.push(invalid_value(field, val, "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"));
            }
        }
    }
    if let Some(ann) = v.pointer("/metadata/annotations").and_then(Value::as_object) {
        let total: usize = ann.iter().map(|(k, v)| k.len() + v.as_str().map(str::len).unwrap_or(0)).sum();
        if total > 262_144 {
            c.push(Cause {
                reason: "FieldValueTooLong".into(),
                message: "Too long: must have at most 262144 bytes".into(),
                field: "metadata.annotations".into(),
            });
        }
        for k in ann.keys() {
            if let Some(msg) = qualified_name_problem(k) {
                c.push(invalid_value("metadata.annotations", &json!(k), &msg));
            }
        }
    }
    if rt.crd.is_none() && rt.group.is_empty() && (rt.kind == "ConfigMap" || rt.kind == "Secret") {
        let size = |f: &str, decode: bool| -> usize {
            v.get(f)
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, x)| {
                            let s = x.as_str().unwrap_or("");
                            k.len() + if decode { s.len() / 4 * 3 } else { s.len() }
                        })
                        .sum()
                })
                .unwrap_or(0)
        };
        let total = if rt.kind == "ConfigMap" {
            size("data", false) + size("binaryData", true)
        } else {
            size("data", true)
        };
        if total > 1_048_576 {
            let field = if rt.kind == "ConfigMap" { "[]" } else { "data" };
            c.push(Cause {
                reason: "FieldValueTooLong".into(),
                message: "Too long: must have at most 1048576 bytes".into(),
                field: field.into(),
            });
        }
    }
    let pod_spec_path = match (rt.group.as_str(), rt.kind.as_str()) {
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet") | ("batch", "Job") => {
            Some("spec.template.spec")
        }
        ("batch", "CronJob") => Some("spec.jobTemplate.spec.template.spec"),
        ("", "Pod") => Some("spec"),
        _ => None,
    };
    if let Some(p) = pod_spec_path {
        let ptr = format!("/{}", p.replace('.', "/"));
        let cs = v.pointer(&format!("{ptr}/containers")).and_then(Value::as_array);
        match cs {
            None => c.push(required(&format!("{p}.containers"), "")),
            Some(cs) if cs.is_empty() => c.push(required(&format!("{p}.containers"), "")),
            Some(cs) => {
                for (i, ct) in cs.iter().enumerate() {
                    if ct.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
                        c.push(required(&format!("{p}.containers[{i}].name"), ""));
                    }
                    if ct.get("image").and_then(Value::as_str).is_none_or(str::is_empty) {
                        c.push(required(&format!("{p}.containers[{i}].image"), ""));
                    }
                }
            }
        }
    }
    if rt.group == "apps"
        && ["Deployment", "ReplicaSet", "StatefulSet", "DaemonSet"].contains(&rt.kind.as_str())
    {
        match v.pointer("/spec/selector") {
            None | Some(Value::Null) => c.push(required("spec.selector", "")),
            Some(sel) => {
                let labels = v.pointer("/spec/template/metadata/labels").cloned().unwrap_or(json!({}));
                if let Some(ml) = sel.get("matchLabels").and_then(Value::as_object) {
                    let matches = ml.iter().all(|(k, val)| labels.get(k) == Some(val));
                    if !matches {
                        c.push(invalid_value(
                            "spec.template.metadata.labels",
                            &labels,
                            "`selector` does not match template `labels`",
                        ));
                    }
                }
            }
        }
        if let Some(r) = v.pointer("/spec/replicas").and_then(Value::as_i64)
            && r < 0
        {
            c.push(invalid_value("spec.replicas", &json!(r), "must be greater than or equal to 0"));
        }
    }
    if rt.kind == "Service" && rt.group.is_empty() {
        let ty = v.pointer("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP");
        let headless = v.pointer("/spec/clusterIP").and_then(Value::as_str) == Some("None");
        let ports = v.pointer("/spec/ports").and_then(Value::as_array).map(Vec::len).unwrap_or(0);
        if ty != "ExternalName" && !headless && ports == 0 {
            c.push(required("spec.ports", ""));
        }
    }
    if rt.crd.is_some()
        && let Some(schema) = &rt.openapi
    {
        c.extend(crate::crdschema::validate(v, schema));
    }
    if rt.kind == "CustomResourceDefinition" && rt.group == "apiextensions.k8s.io" {
        validate_crd(v, name, &mut c);
    }
    c
}

fn validate_crd(v: &Value, name: &str, c: &mut Vec<Cause>) {
    let group = v.pointer("/spec/group").and_then(Value::as_str).unwrap_or("");
    let plural = v.pointer("/spec/names/plural").and_then(Value::as_str).unwrap_or("");
    if group.is_empty() {
        c.push(required("spec.group", ""));
    }
    if plural.is_empty() {
        c.push(required("spec.names.plural", ""));
    }
    if v.pointer("/spec/names/kind").and_then(Value::as_str).is_none_or(str::is_empty) {
        c.push(required("spec.names.kind", ""));
    }
    if !group.is_empty() && !plural.is_empty() && name != format!("{plural}.{group}") {
        c.push(invalid_value("metadata.name", &json!(name), "must be spec.names.plural+\".\"+spec.group"));
    }
    match v.pointer("/spec/scope").and_then(Value::as_str) {
        Some("Namespaced" | "Cluster") => {}
        Some(o) => c.push(Cause {
            reason: "FieldValueNotSupported".into(),
            message: format!("Unsupported value: {o:?}: supported values: \"Cluster\", \"Namespaced\""),
            field: "spec.scope".into(),
        }),
        None => c.push(required("spec.scope", "")),
    }
    let empty = Vec::new();
    let versions = v.pointer("/spec/versions").and_then(Value::as_array).unwrap_or(&empty);
    if versions.is_empty() {
        c.push(invalid_value(
            "spec.versions",
            &json!([]),
            "must have exactly one version marked as storage version",
        ));
    } else {
        let storage =
            versions.iter().filter(|x| x.get("storage").and_then(Value::as_bool) == Some(true)).count();
        if storage != 1 {
            c.push(invalid_value(
                "spec.versions",
                &json!(versions.len()),
                "must have exactly one version marked as storage version",
            ));
        }
        for (i, ver) in versions.iter().enumerate() {
            if ver.pointer("/schema/openAPIV3Schema").is_none() {
                c.push(required(
                    &format!("spec.versions[{i}].schema.openAPIV3Schema"),
                    "schemas are required",
                ));
            }
        }
    }
}

fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric())
}

/// Problems of a label/annotation key (`prefix/name`), worded like the API server.
fn qualified_name_problem(k: &str) -> Option<String> {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix
        && !is_dns1123_subdomain(p)
    {
        return Some("prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".into());
    }
    if name.is_empty() {
        return Some("name part must be non-empty".into());
    }
    if name.len() > 63 {
        return Some("name part must be no more than 63 characters".into());
    }
    if !is_label_value(name) {
        return Some("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".into());
    }
    None
}
