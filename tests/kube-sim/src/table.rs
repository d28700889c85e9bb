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
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
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
            ("IP", "string", 1),
            ("Node", "string", 1),
            ("Nominated Node", "string", 1),
            ("Readiness Gates", "string", 1),
        ],
        ("", "ServiceAccount") => &[("Name", "string", 0), ("Secrets", "string", 0), ("Age", "string", 0)],
        ("", "Event") => &[
            ("Last Seen", "string", 0),
            ("Type", "string", 0),
            ("Reason", "string", 0),
            ("Object", "string", 0),
            ("Subobject", "string", 1),
            ("Source", "string", 1),
            ("Message", "string", 0),
            ("First Seen", "string", 1),
            ("Count", "string", 1),
            ("Name", "string", 1),
        ],
        ("", "Node") => &[
            ("Name", "string", 0),
            ("Status", "string", 0),
            ("Roles", "string", 0),
            ("Age", "string", 0),
            ("Version", "string", 0),
        ],
        ("", "Endpoints") => &[("Name", "string", 0), ("Endpoints", "string", 0), ("Age", "string", 0)],
        ("discovery.k8s.io", "EndpointSlice") => &[
            ("Name", "string", 0),
            ("AddressType", "string", 0),
            ("Ports", "string", 0),
            ("Endpoints", "string", 0),
            ("Age", "string", 0),
        ],
        ("networking.k8s.io", "Ingress") => &[
            ("Name", "string", 0),
            ("Class", "string", 0),
            ("Hosts", "string", 0),
            ("Address", "string", 0),
            ("Ports", "string", 0),
            ("Age", "string", 0),
        ],
        ("networking.k8s.io", "IngressClass") => &[
            ("Name", "string", 0),
            ("Controller", "string", 0),
            ("Parameters", "string", 0),
            ("Age", "string", 0),
        ],
        ("networking.k8s.io", "NetworkPolicy") => {
            &[("Name", "string", 0), ("Pod-Selector", "string", 0), ("Age", "string", 0)]
        }
        ("batch", "CronJob") => &[
            ("Name", "string", 0),
            ("Schedule", "string", 0),
            ("Timezone", "string", 0),
            ("Suspend", "boolean", 0),
            ("Active", "integer", 0),
            ("Last Schedule", "string", 0),
            ("Age", "string", 0),
        ],
        ("autoscaling", "HorizontalPodAutoscaler") => &[
            ("Name", "string", 0),
            ("Reference", "string", 0),
            ("Targets", "string", 0),
            ("MinPods", "string", 0),
            ("MaxPods", "integer", 0),
            ("Replicas", "integer", 0),
            ("Age", "string", 0),
        ],
        ("policy", "PodDisruptionBudget") => &[
            ("Name", "string", 0),
            ("Min Available", "string", 0),
            ("Max Unavailable", "string", 0),
            ("Allowed Disruptions", "integer", 0),
            ("Age", "string", 0),
        ],
        ("storage.k8s.io", "StorageClass") => &[
            ("Name", "string", 0),
            ("Provisioner", "string", 0),
            ("ReclaimPolicy", "string", 0),
            ("VolumeBindingMode", "string", 0),
            ("AllowVolumeExpansion", "string", 0),
            ("Age", "string", 0),
        ],
        ("scheduling.k8s.io", "PriorityClass") => &[
            ("Name", "string", 0),
            ("Value", "integer", 0),
            ("Global-Default", "boolean", 0),
            ("Preemptionpolicy", "string", 0),
            ("Age", "string", 0),
        ],
        ("rbac.authorization.k8s.io", "Role" | "ClusterRole") => {
            &[("Name", "string", 0), ("Created At", "string", 0)]
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            &[("Name", "string", 0), ("Role", "string", 0), ("Age", "string", 0)]
        }
        ("coordination.k8s.io", "Lease") => {
            &[("Name", "string", 0), ("Holder", "string", 0), ("Age", "string", 0)]
        }
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
        ("apps", "Deployment") => {
            let cs = v
                .pointer("/spec/template/spec/containers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let names: Vec<&str> = cs.iter().filter_map(|c| c["name"].as_str()).collect();
            let images: Vec<&str> = cs.iter().filter_map(|c| c["image"].as_str()).collect();
            vec![
                name,
                json!(format!("{}/{}", i(v, "/status/readyReplicas"), i(v, "/spec/replicas"))),
                json!(i(v, "/status/updatedReplicas")),
                json!(i(v, "/status/availableReplicas")),
                json!(age(v)),
                json!(names.join(",")),
                json!(images.join(",")),
                json!(selector_text(v.pointer("/spec/selector"))),
            ]
        }
        ("", "Event") => {
            let seen = |f: &str| {
                v.get(f)
                    .and_then(Value::as_str)
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                    .map(|t| human_age(jiff::Timestamp::now().as_second() - t.as_second()))
                    .unwrap_or_else(|| "<unknown>".into())
            };
            vec![
                json!(seen("lastTimestamp")),
                json!(s(v, "/type")),
                json!(s(v, "/reason")),
                json!(format!(
                    "{}/{}",
                    s(v, "/involvedObject/kind").to_lowercase(),
                    s(v, "/involvedObject/name")
                )),
                json!(s(v, "/involvedObject/fieldPath")),
                json!(
                    format!("{}, {}", s(v, "/source/component"), s(v, "/source/host"))
                        .trim_end_matches(", ")
                        .to_string()
                ),
                json!(s(v, "/message")),
                json!(seen("firstTimestamp")),
                json!(i(v, "/count")),
                name,
            ]
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            let ports: Vec<String> = v
                .get("ports")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|p| p["port"].as_i64()).map(|p| p.to_string()).collect())
                .unwrap_or_default();
            let eps: Vec<String> = v
                .get("endpoints")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            vec![
                name,
                json!(s(v, "/addressType")),
                json!(if ports.is_empty() { "<unset>".to_string() } else { ports.join(",") }),
                json!(if eps.is_empty() { "<unset>".to_string() } else { eps.join(",") }),
                json!(age(v)),
            ]
        }
        ("", "ServiceAccount") => vec![
            name,
            json!(v.get("secrets").and_then(Value::as_array).map(Vec::len).unwrap_or(0)),
            json!(age(v)),
        ],
        ("", "Node") => {
            let ready = v
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|a| a.iter().find(|c| c["type"] == "Ready"))
                .map(|c| if c["status"] == "True" { "Ready" } else { "NotReady" })
                .unwrap_or("Unknown");
            vec![
                name,
                json!(ready),
                json!("<none>"),
                json!(age(v)),
                json!(s(v, "/status/nodeInfo/kubeletVersion")),
            ]
        }
        ("", "Endpoints") => {
            let eps: Vec<String> = v
                .get("subsets")
                .and_then(Value::as_array)
                .map(|ss| {
                    ss.iter()
                        .flat_map(|sub| {
                            let ports: Vec<i64> = sub["ports"]
                                .as_array()
                                .map(|p| p.iter().filter_map(|x| x["port"].as_i64()).collect())
                                .unwrap_or_default();
                            sub["addresses"].as_array().cloned().unwrap_or_default().into_iter().flat_map(
                                move |a| {
                                    let ip = a["ip"].as_str().unwrap_or("").to_string();
                                    ports.clone().into_iter().map(move |p| format!("{ip}:{p}"))
                                },
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            vec![
                name,
                json!(if eps.is_empty() { "<none>".to_string() } else { eps.join(",") }),
                json!(age(v)),
            ]
        }
        ("networking.k8s.io", "Ingress") => {
            let hosts: Vec<&str> = v
                .pointer("/spec/rules")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|r| r["host"].as_str()).collect())
                .unwrap_or_default();
            let addr: Vec<&str> = v
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|x| x["ip"].as_str().or(x["hostname"].as_str())).collect())
                .unwrap_or_default();
            let tls = v.pointer("/spec/tls").and_then(Value::as_array).is_some_and(|a| !a.is_empty());
            let class = v.pointer("/spec/ingressClassName").and_then(Value::as_str).unwrap_or("<none>");
            vec![
                name,
                json!(class),
                json!(if hosts.is_empty() { "*".to_string() } else { hosts.join(",") }),
                json!(addr.join(",")),
                json!(if tls { "80, 443" } else { "80" }),
                json!(age(v)),
            ]
        }
        ("networking.k8s.io", "IngressClass") => {
            let params = v.pointer("/spec/parameters/name").and_then(Value::as_str).unwrap_or("<none>");
            vec![name, json!(s(v, "/spec/controller")), json!(params), json!(age(v))]
        }
        ("networking.k8s.io", "NetworkPolicy") => {
            let sel = selector_text(v.pointer("/spec/podSelector"));
            vec![name, json!(if sel == "<none>" { "<none>".to_string() } else { sel }), json!(age(v))]
        }
        ("batch", "CronJob") => vec![
            name,
            json!(s(v, "/spec/schedule")),
            json!(v.pointer("/spec/timeZone").and_then(Value::as_str).unwrap_or("<none>")),
            json!(v.pointer("/spec/suspend").and_then(Value::as_bool).unwrap_or(false)),
            json!(v.pointer("/status/active").and_then(Value::as_array).map(Vec::len).unwrap_or(0)),
            json!(
                v.pointer("/status/lastScheduleTime")
                    .and_then(Value::as_str)
                    .map(|_| "<set>")
                    .unwrap_or("<none>")
            ),
            json!(age(v)),
        ],
        ("autoscaling", "HorizontalPodAutoscaler") => vec![
            name,
            json!(format!("{}/{}", s(v, "/spec/scaleTargetRef/kind"), s(v, "/spec/scaleTargetRef/name"))),
            json!("<unknown>"),
            json!(v.pointer("/spec/minReplicas").and_then(Value::as_i64).unwrap_or(1).to_string()),
            json!(i(v, "/spec/maxReplicas")),
            json!(i(v, "/status/currentReplicas")),
            json!(age(v)),
        ],
        ("policy", "PodDisruptionBudget") => {
            let f = |p: &str| match v.pointer(p) {
                Some(Value::String(x)) => x.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => "N/A".into(),
            };
            vec![
                name,
                json!(f("/spec/minAvailable")),
                json!(f("/spec/maxUnavailable")),
                json!(i(v, "/status/disruptionsAllowed")),
                json!(age(v)),
            ]
        }
        ("storage.k8s.io", "StorageClass") => {
            let default = v
                .pointer("/metadata/annotations/storageclass.kubernetes.io~1is-default-class")
                .and_then(Value::as_str)
                == Some("true");
            let n = if default {
                format!("{} (default)", s(v, "/metadata/name"))
            } else {
                s(v, "/metadata/name")
            };
            vec![
                json!(n),
                json!(s(v, "/provisioner")),
                json!(s(v, "/reclaimPolicy")),
                json!(s(v, "/volumeBindingMode")),
                json!(v.get("allowVolumeExpansion").and_then(Value::as_bool).unwrap_or(false).to_string()),
                json!(age(v)),
            ]
        }
        ("scheduling.k8s.io", "PriorityClass") => vec![
            name,
            json!(i(v, "/value")),
            json!(v.get("globalDefault").and_then(Value::as_bool).unwrap_or(false)),
            json!(s(v, "/preemptionPolicy")),
            json!(age(v)),
        ],
        ("rbac.authorization.k8s.io", "Role" | "ClusterRole") => {
            vec![name, json!(s(v, "/metadata/creationTimestamp"))]
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            vec![name, json!(format!("{}/{}", s(v, "/roleRef/kind"), s(v, "/roleRef/name"))), json!(age(v))]
        }
        ("coordination.k8s.io", "Lease") => vec![name, json!(s(v, "/spec/holderIdentity")), json!(age(v))],
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
                    c.pointer("/state/waiting/reason")
                        .or_else(|| c.pointer("/state/terminated/reason"))
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
            });
            let phase = waiting.unwrap_or_else(|| s(v, "/status/phase"));
            let ip = v.pointer("/status/podIP").and_then(Value::as_str).unwrap_or("<none>");
            let node = v.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("<none>");
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(phase),
                json!("0"),
                json!(age(v)),
                json!(ip),
                json!(node),
                json!("<none>"),
                json!("<none>"),
            ]
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

/// A label selector as kubectl prints it (`a=b,c in (d)`).
fn selector_text(sel: Option<&Value>) -> String {
    let Some(sel) = sel else { return "<none>".into() };
    let mut parts: Vec<String> = sel
        .get("matchLabels")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect())
        .unwrap_or_default();
    if let Some(exprs) = sel.get("matchExpressions").and_then(Value::as_array) {
        for e in exprs {
            let vals: Vec<&str> = e["values"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let key = e["key"].as_str().unwrap_or("");
            parts.push(match e["operator"].as_str().unwrap_or("") {
                "In" => format!("{key} in ({})", vals.join(",")),
                "NotIn" => format!("{key} notin ({})", vals.join(",")),
                "Exists" => key.to_string(),
                "DoesNotExist" => format!("!{key}"),
                o => format!("{key} {o}"),
            });
        }
    }
    if parts.is_empty() { "<none>".into() } else { parts.join(",") }
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
