//! Update rules for fields that cannot change once set: a pure, table-driven
//! check of (old, new) objects returning the API server's field errors
//! (`field is immutable`, `cannot change roleRef`, the StatefulSet and PVC
//! spec rules, `immutable: true` ConfigMaps/Secrets, Service cluster IPs).

use serde_json::{Map, Value};

use crate::status::Cause;

/// What one rule checks.
#[derive(Debug, Clone, Copy)]
enum Check {
    /// `field is immutable` (ValidateImmutableField) on one path.
    Immutable(&'static str),
    /// `roleRef` of (Cluster)RoleBindings.
    RoleRef,
    /// Everything under `spec` except the listed keys is Forbidden to change.
    SpecExcept { allowed: &'static [&'static str], message: &'static str },
    /// PersistentVolumeClaim spec (resources.requests, volumeAttributesClassName,
    /// and volumeName while it is empty may change).
    PvcSpec,
    /// ConfigMap/Secret with `immutable: true`: the listed data fields and the flag itself.
    ImmutableFlag(&'static [&'static str]),
    /// Service spec.clusterIPs once allocated.
    ClusterIps,
}

/// One row of the table: which (group, kind) it applies to.
struct Rule {
    group: &'static str,
    kinds: &'static [&'static str],
    check: Check,
}

const STATEFULSET_MUTABLE: &[&str] = &[
    "replicas",
    "ordinals",
    "template",
    "updateStrategy",
    "revisionHistoryLimit",
    "persistentVolumeClaimRetentionPolicy",
    "minReadySeconds",
];

const STATEFULSET_MSG: &str = "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden";

/// The API server's update rules, as a table.
const RULES: &[Rule] = &[
    Rule {
        group: "apps",
        kinds: &["Deployment", "ReplicaSet", "DaemonSet"],
        check: Check::Immutable("spec.selector"),
    },
    Rule {
        group: "apps",
        kinds: &["StatefulSet"],
        check: Check::SpecExcept { allowed: STATEFULSET_MUTABLE, message: STATEFULSET_MSG },
    },
    Rule { group: "batch", kinds: &["Job"], check: Check::Immutable("spec.selector") },
    Rule { group: "batch", kinds: &["Job"], check: Check::Immutable("spec.template") },
    Rule { group: "", kinds: &["Secret"], check: Check::Immutable("type") },
    Rule { group: "", kinds: &["Secret"], check: Check::ImmutableFlag(&["data"]) },
    Rule { group: "", kinds: &["ConfigMap"], check: Check::ImmutableFlag(&["data", "binaryData"]) },
    Rule { group: "", kinds: &["PersistentVolumeClaim"], check: Check::PvcSpec },
    Rule { group: "", kinds: &["Service"], check: Check::ClusterIps },
    Rule {
        group: "rbac.authorization.k8s.io",
        kinds: &["RoleBinding", "ClusterRoleBinding"],
        check: Check::RoleRef,
    },
];

/// The field errors of updating `old` to `new` (both fully defaulted).
pub fn check(group: &str, kind: &str, old: &Value, new: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    for r in RULES.iter().filter(|r| r.group == group && r.kinds.contains(&kind)) {
        match r.check {
            Check::Immutable(path) => {
                let (a, b) = (at(old, path), at(new, path));
                if a != b {
                    out.push(invalid(path, &go_value(path, b), "field is immutable"));
                }
            }
            Check::RoleRef => {
                let (a, b) = (at(old, "roleRef"), at(new, "roleRef"));
                if a != b {
                    out.push(invalid("roleRef", &role_ref(b), "cannot change roleRef"));
                }
            }
            Check::SpecExcept { allowed, message } => {
                if !same_except(at(old, "spec"), at(new, "spec"), allowed) {
                    out.push(forbidden("spec", message));
                }
            }
            Check::PvcSpec => {
                let mut o = at(old, "spec").cloned().unwrap_or(Value::Null);
                let mut n = at(new, "spec").cloned().unwrap_or(Value::Null);
                for s in [&mut o, &mut n] {
                    if let Some(m) = s.as_object_mut() {
                        m.shift_remove("volumeAttributesClassName");
                        if let Some(res) = m.get_mut("resources").and_then(Value::as_object_mut) {
                            res.shift_remove("requests");
                            if res.is_empty() {
                                m.shift_remove("resources");
                            }
                        }
                    }
                }
                // volumeName may be set once (binding)
                if at(old, "spec.volumeName").and_then(Value::as_str).is_none_or(str::is_empty)
                    && let Some(m) = o.as_object_mut()
                {
                    match n.get("volumeName") {
                        Some(v) => {
                            m.insert("volumeName".into(), v.clone());
                        }
                        None => {
                            m.shift_remove("volumeName");
                        }
                    }
                }
                if o != n {
                    out.push(forbidden(
                        "spec",
                        &format!(
                            "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims\n{}",
                            diff(&o, &n)
                        ),
                    ));
                }
            }
            Check::ImmutableFlag(fields) => {
                if at(old, "immutable").and_then(Value::as_bool) == Some(true) {
                    if at(new, "immutable").and_then(Value::as_bool) != Some(true) {
                        out.push(forbidden("immutable", "field is immutable when `immutable` is set"));
                    }
                    for f in fields {
                        if non_empty(at(old, f)) != non_empty(at(new, f)) {
                            out.push(forbidden(f, "field is immutable when `immutable` is set"));
                        }
                    }
                }
            }
            Check::ClusterIps => out.extend(cluster_ips(old, new)),
        }
    }
    out
}

/// `validateUpgradeDowngradeClusterIPs` for single-stack Services: no change of
/// an allocated cluster IP unless the Service is, or was, of type ExternalName.
fn cluster_ips(old: &Value, new: &Value) -> Vec<Cause> {
    let ty = |v: &Value| at(v, "spec.type").and_then(Value::as_str).unwrap_or("ClusterIP").to_string();
    if ty(old) == "ExternalName" || ty(new) == "ExternalName" {
        return vec![];
    }
    let ips = |v: &Value| -> Vec<String> {
        at(v, "spec.clusterIPs")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    };
    let (o, n) = (ips(old), ips(new));
    let headless = |v: &[String]| v.first().map(String::as_str) == Some("None");
    if headless(&o) && headless(&n) {
        return vec![];
    }
    let shown = go_strings(&n);
    let mut out = Vec::new();
    if o.len() == n.len() {
        for (i, ip) in o.iter().enumerate() {
            if *ip != n[i] {
                out.push(invalid(&format!("spec.clusterIPs[{i}]"), &shown, "may not change once set"));
            }
        }
    } else if o.len() > n.len() {
        if n.is_empty() {
            out.push(invalid("spec.clusterIPs[0]", &shown, "primary clusterIP can not be unset"));
        } else if o[0] != n[0] {
            out.push(invalid("spec.clusterIPs[0]", &shown, "may not change once set"));
        }
    } else if !o.is_empty() && o[0] != n[0] {
        out.push(invalid("spec.clusterIPs[0]", &shown, "may not change once set"));
    }
    out
}

/// Service update strategy (what the API server does before validation):
/// a Service becoming ExternalName drops the cluster IPs it did not change,
/// and a client that changes `clusterIP` alone changes `clusterIPs[0]` too.
/// Returns true when the Service needs a new cluster IP (it was ExternalName).
pub fn service_prepare_update(old: &Value, new: &mut Value) -> bool {
    let ty = |v: &Value| at(v, "spec.type").and_then(Value::as_str).unwrap_or("ClusterIP").to_string();
    let (old_ty, new_ty) = (ty(old), ty(new));
    let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) else { return false };
    if new_ty == "ExternalName" {
        for f in ["clusterIP", "clusterIPs"] {
            if spec.get(f).is_none_or(|v| Some(v) == at(old, &format!("spec.{f}"))) {
                spec.shift_remove(f);
            }
        }
        for f in ["ipFamilies", "ipFamilyPolicy", "internalTrafficPolicy"] {
            spec.shift_remove(f);
        }
        return false;
    }
    if old_ty == "ExternalName" {
        return spec.get("clusterIP").and_then(Value::as_str).is_none_or(str::is_empty);
    }
    // keep what the client did not send
    for f in ["clusterIP", "clusterIPs"] {
        if spec.get(f).is_none_or(|x| x.is_null() || x.as_str() == Some(""))
            && let Some(v) = at(old, &format!("spec.{f}"))
        {
            spec.insert(f.into(), v.clone());
        }
    }
    let ip = spec.get("clusterIP").cloned();
    let old_ips = at(old, "spec.clusterIPs");
    if let Some(Value::String(ip)) = ip
        && at(old, "spec.clusterIP").and_then(Value::as_str) != Some(ip.as_str())
        && spec.get("clusterIPs") == old_ips
        && let Some(Value::Array(a)) = spec.get_mut("clusterIPs")
        && !a.is_empty()
    {
        a[0] = Value::String(ip);
    }
    false
}

fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |cur, k| cur.get(k)).filter(|v| !v.is_null())
}

/// Empty maps are not stored (Go's omitempty): `{}` and absent are the same.
fn non_empty(v: Option<&Value>) -> Option<&Value> {
    v.filter(|x| !x.as_object().is_some_and(Map::is_empty))
}

fn same_except(a: Option<&Value>, b: Option<&Value>, allowed: &[&str]) -> bool {
    let strip = |v: Option<&Value>| -> Map<String, Value> {
        let mut m = v.and_then(Value::as_object).cloned().unwrap_or_default();
        m.retain(|k, _| !allowed.contains(&k.as_str()));
        m
    };
    strip(a) == strip(b)
}

fn invalid(field: &str, shown: &str, msg: &str) -> Cause {
    Cause {
        reason: "FieldValueInvalid".into(),
        message: format!("Invalid value: {shown}: {msg}"),
        field: field.into(),
    }
}

fn forbidden(field: &str, msg: &str) -> Cause {
    Cause { reason: "FieldValueForbidden".into(), message: format!("Forbidden: {msg}"), field: field.into() }
}

fn go_str(s: &str) -> String {
    format!("{s:?}")
}

fn go_strings(v: &[String]) -> String {
    format!("[]string{{{}}}", v.iter().map(|s| go_str(s)).collect::<Vec<_>>().join(", "))
}

fn go_string_map(v: Option<&Value>) -> String {
    match v.and_then(Value::as_object) {
        None => "map[string]string(nil)".into(),
        Some(m) => {
            let mut kv: Vec<(&String, &Value)> = m.iter().collect();
            kv.sort_by(|a, b| a.0.cmp(b.0));
            let parts: Vec<String> = kv
                .iter()
                .map(|(k, v)| format!("{}:{}", go_str(k), go_str(v.as_str().unwrap_or(""))))
                .collect();
            format!("map[string]string{{{}}}", parts.join(", "))
        }
    }
}

/// A value shown the way the API server prints it (`%#v` of the Go type) for
/// the types it can be; other structures are shown as JSON.
fn go_value(path: &str, v: Option<&Value>) -> String {
    match v {
        None => "null".into(),
        Some(Value::String(s)) => go_str(s),
        Some(sel) if path.ends_with("selector") => {
            let exprs = match sel.get("matchExpressions").and_then(Value::as_array) {
                None => "[]v1.LabelSelectorRequirement(nil)".to_string(),
                Some(a) => {
                    let items: Vec<String> = a
                        .iter()
                        .map(|e| {
                            let vals = e
                                .get("values")
                                .and_then(Value::as_array)
                                .map(|vs| {
                                    go_strings(
                                        &vs.iter()
                                            .filter_map(|x| x.as_str().map(str::to_string))
                                            .collect::<Vec<_>>(),
                                    )
                                })
                                .unwrap_or_else(|| "[]string(nil)".into());
                            format!(
                                "v1.LabelSelectorRequirement{{Key:{}, Operator:{}, Values:{vals}}}",
                                go_str(e.get("key").and_then(Value::as_str).unwrap_or("")),
                                go_str(e.get("operator").and_then(Value::as_str).unwrap_or(""))
                            )
                        })
                        .collect();
                    format!("[]v1.LabelSelectorRequirement{{{}}}", items.join(", "))
                }
            };
            format!(
                "v1.LabelSelector{{MatchLabels:{}, MatchExpressions:{exprs}}}",
                go_string_map(sel.get("matchLabels"))
            )
        }
        Some(o) => crate::fieldpath::canonical(o),
    }
}

fn role_ref(v: Option<&Value>) -> String {
    let f = |k: &str| go_str(v.and_then(|r| r.get(k)).and_then(Value::as_str).unwrap_or(""));
    format!("rbac.RoleRef{{APIGroup:{}, Kind:{}, Name:{}}}", f("apiGroup"), f("kind"), f("name"))
}

/// A short diff of two specs (the API server prints cmp.Diff of the Go structs).
fn diff(old: &Value, new: &Value) -> String {
    let (o, n) = (old.as_object().cloned().unwrap_or_default(), new.as_object().cloned().unwrap_or_default());
    let mut keys: Vec<&String> = o.keys().chain(n.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut out = String::from("  core.PersistentVolumeClaimSpec{\n");
    for k in keys {
        match (o.get(k), n.get(k)) {
            (a, b) if a == b => {}
            (a, b) => {
                if let Some(a) = a {
                    out.push_str(&format!("- \t{k}: {},\n", crate::fieldpath::canonical(a)));
                }
                if let Some(b) = b {
                    out.push_str(&format!("+ \t{k}: {},\n", crate::fieldpath::canonical(b)));
                }
            }
        }
    }
    out.push_str("  }\n");
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fields(c: &[Cause]) -> Vec<&str> {
        c.iter().map(|c| c.field.as_str()).collect()
    }

    #[test]
    fn deployment_selector_is_immutable_with_go_rendering() {
        let old = json!({"spec": {"selector": {"matchLabels": {"app": "a"}}, "replicas": 1}});
        let same = json!({"spec": {"selector": {"matchLabels": {"app": "a"}}, "replicas": 3}});
        assert!(check("apps", "Deployment", &old, &same).is_empty());
        let new = json!({"spec": {"selector": {"matchLabels": {"app": "b", "tier": "x"}}}});
        for kind in ["Deployment", "ReplicaSet", "DaemonSet"] {
            let c = check("apps", kind, &old, &new);
            assert_eq!(fields(&c), ["spec.selector"], "{kind}");
            assert_eq!(c[0].reason, "FieldValueInvalid");
            assert_eq!(
                c[0].message,
                "Invalid value: v1.LabelSelector{MatchLabels:map[string]string{\"app\":\"b\", \"tier\":\"x\"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable"
            );
        }
        // same rule does not apply to other groups
        assert!(check("example.com", "Deployment", &old, &new).is_empty());
    }

    #[test]
    fn job_selector_and_template() {
        let old = json!({"spec": {"selector": {"matchLabels": {"u": "1"}}, "template": {"spec": {"containers": [{"image": "a"}]}}, "suspend": false}});
        let mut new = old.clone();
        new["spec"]["suspend"] = json!(true);
        assert!(check("batch", "Job", &old, &new).is_empty());
        new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("b");
        let c = check("batch", "Job", &old, &new);
        assert_eq!(fields(&c), ["spec.template"]);
        assert!(c[0].message.ends_with(": field is immutable"));
        new["spec"]["selector"] =
            json!({"matchExpressions": [{"key": "k", "operator": "In", "values": ["v"]}]});
        let c = check("batch", "Job", &old, &new);
        assert_eq!(fields(&c), ["spec.selector", "spec.template"]);
        assert!(c[0].message.contains("[]v1.LabelSelectorRequirement{v1.LabelSelectorRequirement{Key:\"k\", Operator:\"In\", Values:[]string{\"v\"}}}"));
    }

    #[test]
    fn statefulset_spec_outside_updatable_fields() {
        let old = json!({"spec": {"replicas": 1, "serviceName": "s", "selector": {"matchLabels": {"a": "b"}}, "template": {}, "volumeClaimTemplates": [{"spec": {}}]}});
        let mut ok = old.clone();
        for (k, v) in [
            ("replicas", json!(3)),
            ("template", json!({"metadata": {}})),
            ("updateStrategy", json!({"type": "OnDelete"})),
            ("minReadySeconds", json!(5)),
            ("ordinals", json!({"start": 1})),
            ("persistentVolumeClaimRetentionPolicy", json!({"whenDeleted": "Delete"})),
            ("revisionHistoryLimit", json!(3)),
        ] {
            ok["spec"][k] = v;
        }
        assert!(check("apps", "StatefulSet", &old, &ok).is_empty());
        for (k, v) in [
            ("serviceName", json!("t")),
            ("selector", json!({"matchLabels": {"a": "c"}})),
            ("volumeClaimTemplates", json!([])),
            ("podManagementPolicy", json!("Parallel")),
        ] {
            let mut bad = old.clone();
            bad["spec"][k] = v;
            let c = check("apps", "StatefulSet", &old, &bad);
            assert_eq!(fields(&c), ["spec"], "{k}");
            assert_eq!(c[0].reason, "FieldValueForbidden");
            assert_eq!(c[0].message, format!("Forbidden: {STATEFULSET_MSG}"));
        }
    }

    #[test]
    fn rolebinding_roleref() {
        let old = json!({"roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "a"}, "subjects": []});
        let mut new = old.clone();
        new["subjects"] = json!([{"kind": "User", "name": "u"}]);
        assert!(check("rbac.authorization.k8s.io", "RoleBinding", &old, &new).is_empty());
        new["roleRef"]["name"] = json!("b");
        for kind in ["RoleBinding", "ClusterRoleBinding"] {
            let c = check("rbac.authorization.k8s.io", kind, &old, &new);
            assert_eq!(fields(&c), ["roleRef"]);
            assert_eq!(
                c[0].message,
                "Invalid value: rbac.RoleRef{APIGroup:\"rbac.authorization.k8s.io\", Kind:\"Role\", Name:\"b\"}: cannot change roleRef"
            );
        }
    }

    #[test]
    fn immutable_configmap_and_secret() {
        let old = json!({"immutable": true, "data": {"a": "1"}});
        assert!(check("", "ConfigMap", &old, &old.clone()).is_empty());
        let c = check("", "ConfigMap", &old, &json!({"immutable": true, "data": {"a": "2"}}));
        assert_eq!(fields(&c), ["data"]);
        assert_eq!(c[0].message, "Forbidden: field is immutable when `immutable` is set");
        let c = check("", "ConfigMap", &old, &json!({"immutable": false, "data": {"a": "1"}}));
        assert_eq!(fields(&c), ["immutable"]);
        let c = check("", "ConfigMap", &old, &json!({"data": {"a": "1"}, "binaryData": {"b": "AA=="}}));
        assert_eq!(fields(&c), ["immutable", "binaryData"]);
        // not immutable: anything goes, including setting the flag
        let m = json!({"data": {"a": "1"}});
        assert!(check("", "ConfigMap", &m, &json!({"immutable": true, "data": {"x": "y"}})).is_empty());
        let c = check(
            "",
            "Secret",
            &json!({"immutable": true, "type": "Opaque", "data": {"a": "MQ=="}}),
            &json!({"immutable": true, "type": "Opaque", "data": {}}),
        );
        assert_eq!(fields(&c), ["data"]);
    }

    #[test]
    fn secret_type() {
        let old = json!({"type": "Opaque", "data": {}});
        let c = check("", "Secret", &old, &json!({"type": "kubernetes.io/tls"}));
        assert_eq!(fields(&c), ["type"]);
        assert_eq!(c[0].message, "Invalid value: \"kubernetes.io/tls\": field is immutable");
        assert!(check("", "Secret", &old, &json!({"type": "Opaque", "data": {"x": "eQ=="}})).is_empty());
    }

    #[test]
    fn pvc_spec_except_requests() {
        let old = json!({"spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}, "storageClassName": "standard"}});
        let mut ok = old.clone();
        ok["spec"]["resources"]["requests"]["storage"] = json!("2Gi");
        ok["spec"]["volumeAttributesClassName"] = json!("gold");
        ok["spec"]["volumeName"] = json!("pvc-1"); // binding sets it once
        assert!(check("", "PersistentVolumeClaim", &old, &ok).is_empty());
        let mut rebind = ok.clone();
        rebind["spec"]["volumeName"] = json!("pvc-2");
        assert_eq!(fields(&check("", "PersistentVolumeClaim", &ok, &rebind)), ["spec"]);
        let mut bad = old.clone();
        bad["spec"]["accessModes"] = json!(["ReadWriteMany"]);
        let c = check("", "PersistentVolumeClaim", &old, &bad);
        assert_eq!(fields(&c), ["spec"]);
        assert!(c[0].message.starts_with("Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims\n"));
        assert!(c[0].message.contains("ReadWriteMany"));
        let mut limits = old.clone();
        limits["spec"]["resources"]["limits"] = json!({"storage": "5Gi"});
        assert_eq!(fields(&check("", "PersistentVolumeClaim", &old, &limits)), ["spec"]);
    }

    #[test]
    fn service_cluster_ips() {
        let old =
            json!({"spec": {"type": "ClusterIP", "clusterIP": "10.96.0.5", "clusterIPs": ["10.96.0.5"]}});
        assert!(check("", "Service", &old, &old.clone()).is_empty());
        let new =
            json!({"spec": {"type": "ClusterIP", "clusterIP": "10.96.0.6", "clusterIPs": ["10.96.0.6"]}});
        let c = check("", "Service", &old, &new);
        assert_eq!(fields(&c), ["spec.clusterIPs[0]"]);
        assert_eq!(c[0].message, "Invalid value: []string{\"10.96.0.6\"}: may not change once set");
        let headless = json!({"spec": {"clusterIP": "None", "clusterIPs": ["None"]}});
        assert_eq!(fields(&check("", "Service", &old, &headless)), ["spec.clusterIPs[0]"]);
        assert!(check("", "Service", &headless, &headless.clone()).is_empty());
        let unset = json!({"spec": {"type": "ClusterIP"}});
        let c = check("", "Service", &old, &unset);
        assert_eq!(c[0].message, "Invalid value: []string{}: primary clusterIP can not be unset");
        // to and from ExternalName is allowed
        let ext = json!({"spec": {"type": "ExternalName", "externalName": "x.example.com"}});
        assert!(check("", "Service", &old, &ext).is_empty());
        assert!(check("", "Service", &ext, &new).is_empty());
    }

    #[test]
    fn service_strategy() {
        let old = json!({"spec": {"type": "ClusterIP", "clusterIP": "10.96.0.5", "clusterIPs": ["10.96.0.5"], "ipFamilies": ["IPv4"]}});
        // the client omits the allocation: kept
        let mut n = json!({"spec": {"type": "ClusterIP", "ports": []}});
        assert!(!service_prepare_update(&old, &mut n));
        assert_eq!(n["spec"]["clusterIPs"], json!(["10.96.0.5"]));
        // clusterIP alone changed: clusterIPs follows (and validation then refuses it)
        let mut n = old.clone();
        n["spec"]["clusterIP"] = json!("10.96.0.9");
        service_prepare_update(&old, &mut n);
        assert_eq!(n["spec"]["clusterIPs"], json!(["10.96.0.9"]));
        assert_eq!(fields(&check("", "Service", &old, &n)), ["spec.clusterIPs[0]"]);
        // becoming ExternalName drops the unchanged allocation
        let mut n = old.clone();
        n["spec"]["type"] = json!("ExternalName");
        assert!(!service_prepare_update(&old, &mut n));
        assert!(n["spec"].get("clusterIP").is_none() && n["spec"].get("clusterIPs").is_none());
        // leaving ExternalName needs an allocation
        let ext = json!({"spec": {"type": "ExternalName", "externalName": "x"}});
        let mut n = json!({"spec": {"type": "ClusterIP"}});
        assert!(service_prepare_update(&ext, &mut n));
    }
}
