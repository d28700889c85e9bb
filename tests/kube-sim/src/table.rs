//! Server-side printing: `meta.k8s.io/v1 Table` responses for `kubectl get`,
//! with the columns real clusters print for common kinds and CRD printer columns.

use serde_json::{Value, json};

use crate::api::Query;
use crate::registry::ResourceType;

/// Age as kubectl prints it (`45s`, `3m2s`, `5h`, `2d3h`).
pub fn human_age(secs: i64) -> String {
    if secs < 0 {
        return "0s".into();
    }
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        if secs % 60 == 0 { format!("{m}m") } else { format!("{m}m{}s", secs % 60) }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 { format!("{h}h") } else { format!("{h}h{}m", m % 60) }
    } else if h < 48 {
        format!("{h}h")
    } else if d < 8 {
        if h % 24 == 0 { format!("{d}d") } else { format!("{d}d{}h", h % 24) }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else {
        format!("{}y", d / 365)
    }
}

fn age(v: &Value) -> String {
    let Some(ts) = v.pointer("/metadata/creationTimestamp").and_then(Value::as_str) else {
        return "<unknown>".into();
    };
    match ts.parse::<jiff::Timestamp>() {
        Ok(t) => human_age(jiff::Timestamp::now().as_second() - t.as_second()),
        Err(_) => "<unknown>".into(),
    }
}

fn s(v: &Value, p: &str) -> String {
    match v.pointer(p) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(o) => o.to_string(),
    }
}

fn i(v: &Value, p: &str) -> i64 {
    v.pointer(p).and_then(Value::as_i64).unwrap_or(0)
}

type Col = (&'static str, &'static str, i64);

fn columns(rt: &ResourceType) -> Vec<(String, String, i64, String)> {
    if rt.crd.is_some() {
        let mut c = vec![(
            "Name".to_string(),
            "string".to_string(),
            0,
            "Name must be unique within a namespace.".to_string(),
        )];
        if rt.printer_columns.is_empty() {
            c.push(("Age".into(), "date".into(), 0, String::new()));
        }
        for pc in &rt.printer_columns {
            c.push((pc.name.clone(), pc.type_.clone(), pc.priority, pc.description.clone()));
        }
        return c;
    }
    let cols: &[Col] = match (rt.group.as_str(), rt.kind.as_str()) {
        ("apps", "Deployment") => &[
            ("Name", "string", 0),
            ("Ready", "string", 0),
            ("Up-to-date", "string", 0),
            ("Available", "string", 0),
            ("Age", "string", 0),
        ],
        ("apps", "StatefulSet") => &[("Name", "string", 0), ("Ready", "string", 0), ("Age", "string", 0)],
        ("apps", "ReplicaSet") => &[
            ("Name", "string", 0),
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            ("Age", "string", 0),
        ],
        ("apps", "DaemonSet") => &[
            ("Name", "string", 0),
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            ("Node Selector", "string", 0),
            ("Age", "string", 0),
        ],
        ("", "Pod") => &[
            ("Name", "string", 0),
            ("Ready", "string", 0),
            ("Status", "string", 0),
            ("Restarts", "string", 0),
            ("Age", "string", 0),
        ],
        ("", "Service") => &[
            ("Name", "string", 0),
            ("Type", "string", 0),
            ("Cluster-IP", "string", 0),
            ("External-IP", "string", 0),
            ("Port(s)", "string", 0),
            ("Age", "string", 0),
        ],
        ("", "ConfigMap") => &[("Name", "string", 0), ("Data", "string", 0), ("Age", "string", 0)],
        ("", "Secret") => {
            &[("Name", "string", 0), ("Type", "string", 0), ("Data", "string", 0), ("Age", "string", 0)]
        }
        ("", "Namespace") => &[("Name", "string", 0), ("Status", "string", 0), ("Age", "string", 0)],
        ("", "PersistentVolumeClaim") => &[
            ("Name", "string", 0),
            ("Status", "string", 0),
            ("Volume", "string", 0),
            ("Capacity", "string", 0),
            ("Access Modes", "string", 0),
            ("StorageClass", "string", 0),
            ("Age", "string", 0),
        ],
        ("batch", "Job") => &[
            ("Name", "string", 0),
            ("Status", "string", 0),
            ("Completions", "string", 0),
            ("Age", "string", 0),
        ],
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            &[("Name", "string", 0), ("Created At", "date", 0)]
        }
        _ => &[("Name", "string", 0), ("Age", "string", 0)],
    };
    cols.iter().map(|(n, t, p)| (n.to_string(), t.to_string(), *p, String::new())).collect()
}

fn cells(rt: &ResourceType, v: &Value) -> Vec<Value> {
    let name = json!(s(v, "/metadata/name"));
    if rt.crd.is_some() {
        let mut c = vec![name];
        if rt.printer_columns.is_empty() {
            c.push(json!(age(v)));
        }
        for pc in &rt.printer_columns {
            let p = pc.json_path.trim_start_matches('.').replace('.', "/");
            let val = v.pointer(&format!("/{p}")).cloned().unwrap_or(Value::Null);
            if pc.type_ == "date" && pc.json_path == ".metadata.creationTimestamp" {
                c.push(json!(age(v)));
            } else {
                c.push(val);
            }
        }
        return c;
    }
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("apps", "Deployment") => vec![
            name,
            json!(format!("{}/{}", i(v, "/status/readyReplicas"), i(v, "/spec/replicas"))),
            json!(i(v, "/status/updatedReplicas")),
            json!(i(v, "/status/availableReplicas")),
            json!(age(v)),
        ],
        ("apps", "StatefulSet") => vec![
            name,
            json!(format!("{}/{}", i(v, "/status/readyReplicas"), i(v, "/spec/replicas"))),
            json!(age(v)),
        ],
        ("apps", "ReplicaSet") => vec![
            name,
            json!(i(v, "/spec/replicas")),
            json!(i(v, "/status/replicas")),
            json!(i(v, "/status/readyReplicas")),
            json!(age(v)),
        ],
        ("apps", "DaemonSet") => vec![
            name,
            json!(i(v, "/status/desiredNumberScheduled")),
            json!(i(v, "/status/currentNumberScheduled")),
            json!(i(v, "/status/numberReady")),
            json!(i(v, "/status/updatedNumberScheduled")),
            json!(i(v, "/status/numberAvailable")),
            json!(
                v.pointer("/spec/template/spec/nodeSelector")
                    .and_then(Value::as_object)
                    .map(|m| m
                        .iter()
                        .map(|(k, x)| format!("{k}={}", x.as_str().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join(","))
                    .filter(|x| !x.is_empty())
                    .unwrap_or_else(|| "<none>".into())
            ),
            json!(age(v)),
        ],
        ("", "Pod") => {
            let total = v.pointer("/spec/containers").and_then(Value::as_array).map(Vec::len).unwrap_or(0);
            let ready = v
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true)).count())
                .unwrap_or(0);
            let waiting = v.pointer("/status/containerStatuses").and_then(Value::as_array).and_then(|a| {
                a.iter().find_map(|c| {
                    c.pointer("/state/waiting/reason").and_then(Value::as_str).map(str::to_string)
                })
            });
            let phase = waiting.unwrap_or_else(|| s(v, "/status/phase"));
            vec![name, json!(format!("{ready}/{total}")), json!(phase), json!("0"), json!(age(v))]
        }
        ("", "Service") => {
            let ports = v
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|p| {
                            let np = p
                                .get("nodePort")
                                .and_then(Value::as_i64)
                                .map(|n| format!(":{n}"))
                                .unwrap_or_default();
                            format!(
                                "{}{np}/{}",
                                p.get("port").and_then(Value::as_i64).unwrap_or(0),
                                p.get("protocol").and_then(Value::as_str).unwrap_or("TCP")
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .filter(|x| !x.is_empty())
                .unwrap_or_else(|| "<none>".into());
            let ext = v
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.get("ip").or(x.get("hostname")).and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .filter(|x| !x.is_empty())
                .unwrap_or_else(|| {
                    if s(v, "/spec/type") == "LoadBalancer" { "<pending>".into() } else { "<none>".into() }
                });
            vec![
                name,
                json!(s(v, "/spec/type")),
                json!(s(v, "/spec/clusterIP")),
                json!(ext),
                json!(ports),
                json!(age(v)),
            ]
        }
        ("", "ConfigMap") => {
            let n = v.get("data").and_then(Value::as_object).map(|m| m.len()).unwrap_or(0)
                + v.get("binaryData").and_then(Value::as_object).map(|m| m.len()).unwrap_or(0);
            vec![name, json!(n), json!(age(v))]
        }
        ("", "Secret") => vec![
            name,
            json!(s(v, "/type")),
            json!(v.get("data").and_then(Value::as_object).map(|m| m.len()).unwrap_or(0)),
            json!(age(v)),
        ],
        ("", "Namespace") => vec![name, json!(s(v, "/status/phase")), json!(age(v))],
        ("", "PersistentVolumeClaim") => vec![
            name,
            json!(s(v, "/status/phase")),
            json!(s(v, "/spec/volumeName")),
            json!(s(v, "/status/capacity/storage")),
            json!(
                v.pointer("/status/accessModes")
                    .and_then(Value::as_array)
                    .map(|a| a
                        .iter()
                        .filter_map(Value::as_str)
                        .map(|m| match m {
                            "ReadWriteOnce" => "RWO",
                            "ReadOnlyMany" => "ROX",
                            "ReadWriteMany" => "RWX",
                            "ReadWriteOncePod" => "RWOP",
                            o => o,
                        })
                        .collect::<Vec<_>>()
                        .join(","))
                    .unwrap_or_default()
            ),
            json!(s(v, "/spec/storageClassName")),
            json!(age(v)),
        ],
        ("batch", "Job") => {
            let complete = v
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|c| c["type"] == "Complete" && c["status"] == "True"));
            vec![
                name,
                json!(if complete { "Complete" } else { "Running" }),
                json!(format!(
                    "{}/{}",
                    i(v, "/status/succeeded"),
                    v.pointer("/spec/completions").and_then(Value::as_i64).unwrap_or(1)
                )),
                json!(age(v)),
            ]
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            vec![name, json!(s(v, "/metadata/creationTimestamp"))]
        }
        _ => vec![name, json!(age(v))],
    }
}

fn row(rt: &ResourceType, v: &Value, q: &Query) -> Value {
    let object = if q.get("includeObject") == Some("Object") {
        v.clone()
    } else if q.get("includeObject") == Some("None") {
        Value::Null
    } else {
        json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": v.get("metadata").cloned().unwrap_or(json!({}))})
    };
    json!({"cells": cells(rt, v), "object": object})
}

fn column_defs(rt: &ResourceType) -> Value {
    Value::Array(
        columns(rt)
            .into_iter()
            .map(|(n, t, p, d)| {
                let format = if n == "Name" { "name" } else { "" };
                json!({"name": n, "type": t, "format": format, "description": d, "priority": p})
            })
            .collect(),
    )
}

/// A Table for a list response.
pub fn list_table(rt: &ResourceType, list: &Value, q: &Query) -> Value {
    let rows: Vec<Value> =
        list["items"].as_array().map(|a| a.iter().map(|v| row(rt, v, q)).collect()).unwrap_or_default();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list["metadata"].clone(), "columnDefinitions": column_defs(rt), "rows": rows})
}

/// A Table for one object (get, watch events).
pub fn object_table(rt: &ResourceType, v: &Value, q: &Query) -> Value {
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": v.pointer("/metadata/resourceVersion").cloned().unwrap_or(json!(""))},
        "columnDefinitions": column_defs(rt), "rows": [row(rt, v, q)]})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        assert_eq!(human_age(5), "5s");
        assert_eq!(human_age(185), "3m5s");
        assert_eq!(human_age(3600 * 5 + 60), "5h1m");
        assert_eq!(human_age(86400 * 3), "3d");
    }
}
