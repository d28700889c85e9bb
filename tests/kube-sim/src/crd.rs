//! CustomResourceDefinitions: registering their versions as served types and
//! setting the CRD status (NamesAccepted, Established, acceptedNames,
//! storedVersions) the way the apiextensions controllers do.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::api::{Inner, now_rfc3339};
use crate::registry::{PrinterColumn, ResourceType};
use crate::schema;

fn str_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

/// Register (or re-register) a CRD's served versions and set its status.
pub fn sync(inner: &Inner, crd: &Arc<Value>) {
    let name = crd.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
    if crd.pointer("/metadata/deletionTimestamp").is_some() {
        return;
    }
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or("").to_string();
    let names = &spec["names"];
    let kind = names["kind"].as_str().unwrap_or("").to_string();
    let plural = names["plural"].as_str().unwrap_or("").to_string();
    let singular =
        names["singular"].as_str().map(str::to_string).unwrap_or_else(|| kind.to_ascii_lowercase());
    let namespaced = spec["scope"].as_str() == Some("Namespaced");
    // a name clash with another CRD or built-in: NamesAccepted=False
    let clash = inner
        .registry
        .read()
        .all()
        .any(|t| t.group == group && t.plural == plural && t.crd.as_deref() != Some(name.as_str()));
    // Types already registered from this very spec (e.g. after a status write) stay as they
    // are: registering them again would give the same types (no clash can appear for a
    // registered CRD: a later CRD with the same names is the one refused).
    if !clash && !inner.registry.read().crd_registered_from(&name, crd) {
        let mut types = Vec::new();
        for ver in spec["versions"].as_array().into_iter().flatten() {
            if ver["served"].as_bool() != Some(true) {
                continue;
            }
            let vname = ver["name"].as_str().unwrap_or("").to_string();
            let oas = ver
                .pointer("/schema/openAPIV3Schema")
                .cloned()
                .unwrap_or(json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}));
            let status = ver.pointer("/subresources/status").is_some();
            let scale = ver.pointer("/subresources/scale").map(|s| {
                (
                    s["specReplicasPath"].as_str().unwrap_or(".spec.replicas").to_string(),
                    s["statusReplicasPath"].as_str().unwrap_or(".status.replicas").to_string(),
                    s["labelSelectorPath"].as_str().map(str::to_string),
                )
            });
            let mut pcs: Vec<PrinterColumn> = ver["additionalPrinterColumns"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|c| PrinterColumn {
                            name: c["name"].as_str().unwrap_or("").to_string(),
                            type_: c["type"].as_str().unwrap_or("string").to_string(),
                            json_path: c["jsonPath"].as_str().unwrap_or("").to_string(),
                            priority: c["priority"].as_i64().unwrap_or(0),
                            description: c["description"].as_str().unwrap_or("").to_string(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            if !pcs.is_empty() && !pcs.iter().any(|p| p.json_path == ".metadata.creationTimestamp") {
                pcs.push(PrinterColumn {
                    name: "Age".into(),
                    type_: "date".into(),
                    json_path: ".metadata.creationTimestamp".into(),
                    priority: 0,
                    description: String::new(),
                });
            }
            types.push(ResourceType {
                group: group.clone(),
                version: vname,
                kind: kind.clone(),
                plural: plural.clone(),
                singular: singular.clone(),
                short_names: str_list(names.get("shortNames")),
                namespaced,
                categories: str_list(names.get("categories")),
                status,
                scale: scale.is_some(),
                generation: true,
                schema: schema::from_openapi(&oas),
                crd: Some(name.clone()),
                openapi: Some(Arc::new(oas)),
                printer_columns: pcs,
                scale_paths: scale,
            });
        }
        let mut reg = inner.registry.write();
        reg.remove_crd(&name);
        for t in types {
            reg.insert(t);
        }
        reg.set_crd_source(&name, crd.clone());
    }
    // status, as the apiextensions controllers set it; nothing to write when it is current
    let storage: Vec<Value> = spec["versions"]
        .as_array()
        .map(|a| {
            a.iter().filter(|v| v["storage"].as_bool() == Some(true)).map(|v| v["name"].clone()).collect()
        })
        .unwrap_or_default();
    let desired = |cur: &Value| {
        let now = now_rfc3339();
        let mut stored: Vec<Value> =
            cur.pointer("/status/storedVersions").and_then(Value::as_array).cloned().unwrap_or_default();
        for s in &storage {
            if !stored.contains(s) {
                stored.push(s.clone());
            }
        }
        let old_conds: &[Value] =
            cur.pointer("/status/conditions").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
        let keep_time = |t: &str, status: &str| {
            old_conds
                .iter()
                .find(|c| c["type"] == t && c["status"] == status)
                .and_then(|c| c.get("lastTransitionTime").cloned())
                .unwrap_or(json!(now))
        };
        let conditions = if clash {
            json!([{"type": "NamesAccepted", "status": "False", "lastTransitionTime": keep_time("NamesAccepted", "False"), "reason": "NameConflict",
                    "message": format!("\"{plural}\" is already in use")},
                   {"type": "Established", "status": "False", "lastTransitionTime": keep_time("Established", "False"), "reason": "NotAccepted", "message": "not all names are accepted"}])
        } else {
            json!([{"type": "NamesAccepted", "status": "True", "lastTransitionTime": keep_time("NamesAccepted", "True"), "reason": "NoConflicts", "message": "no conflicts found"},
                   {"type": "Established", "status": "True", "lastTransitionTime": keep_time("Established", "True"), "reason": "InitialNamesAccepted", "message": "the initial names have been accepted"}])
        };
        let mut accepted = json!({"plural": plural, "singular": singular, "kind": kind, "listKind": names.get("listKind").cloned().unwrap_or(json!(format!("{kind}List")))});
        for k in ["shortNames", "categories"] {
            if let Some(x) = names.get(k) {
                accepted[k] = x.clone();
            }
        }
        json!({"conditions": conditions, "acceptedNames": accepted, "storedVersions": stored})
    };
    if crd.get("status") == Some(&desired(crd)) {
        return;
    }
    let Some(crd_rt) = inner.lookup("apiextensions.k8s.io", "v1", "customresourcedefinitions") else {
        return;
    };
    // a status write takes only `status` from what the closure returns
    let _ = inner.patch_with(&crd_rt, "", &name, Some("status"), "kube-apiserver", false, &mut |cur| {
        Ok(json!({ "status": desired(cur) }))
    });
}

/// Stop serving a deleted CRD's types and delete its objects.
pub fn remove(inner: &Inner, crd: &Value) {
    let name = crd.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    let versions: Vec<Arc<ResourceType>> =
        inner.registry.read().all().filter(|t| t.crd.as_deref() == Some(name)).cloned().collect();
    if let Some(rt) = versions.first() {
        let (items, _) = inner.store.list(&rt.gr(), None);
        for it in items {
            let ns = it.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("").to_string();
            let n = it.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
            let _ = inner.store.commit(&rt.gr(), &(ns, n), Some(&it), None);
        }
    }
    inner.registry.write().remove_crd(name);
}
