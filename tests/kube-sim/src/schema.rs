//! Structural schemas for server-side apply and strategic merge patch: which
//! lists are associative (and by which keys), which are sets, which objects are
//! atomic, and which maps are granular. Built-in types come from a table written
//! after the Kubernetes API's `x-kubernetes-list-type` / `x-kubernetes-list-map-keys`
//! markers; custom resources get theirs from the CRD's `openAPIV3Schema`.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use serde_json::Value;

/// How a list merges.
#[derive(Debug, Clone, PartialEq)]
pub enum ListKind {
    /// Replaced as a whole (`x-kubernetes-list-type: atomic`, the default).
    Atomic,
    /// Scalars merged by value (`set`).
    Set,
    /// Objects merged by key fields (`map` + `x-kubernetes-list-map-keys`), with
    /// optional defaults for key fields (e.g. `protocol: TCP`).
    Map(Vec<(String, Option<Value>)>),
}

/// The schema of one node.
#[derive(Debug, Clone)]
pub enum Schema {
    /// Built-in default: objects are structs whose fields are `Open`, lists are atomic.
    Open,
    /// Deduced (no schema, `x-kubernetes-preserve-unknown-fields`): objects are
    /// granular maps, lists atomic.
    Untyped,
    /// A struct with declared fields.
    Struct(Arc<StructSchema>),
    /// A granular map (`additionalProperties`, labels, data).
    Map(Arc<Schema>),
    /// A list.
    List(Arc<(ListKind, Schema)>),
    /// Replaced as a whole (scalars, `x-kubernetes-map-type: atomic`, LabelSelector).
    Atomic,
}

/// Declared fields of a struct, and what other fields are.
#[derive(Debug, Clone, Default)]
pub struct StructSchema {
    pub fields: HashMap<String, Schema>,
    /// Schema of undeclared fields; None = unknown fields (pruned by CRDs).
    pub other: Option<Schema>,
    /// Undeclared fields are granular map entries (preserve-unknown-fields).
    pub other_granular: bool,
}

impl Schema {
    /// The child schema for an object field, and whether the field is a
    /// declared struct field (true) or a granular map entry (false).
    pub fn field(&self, key: &str) -> (Schema, bool) {
        match self {
            Schema::Open => (builtin_child_default(key), true),
            Schema::Untyped => (Schema::Untyped, false),
            Schema::Struct(s) => match s.fields.get(key) {
                Some(c) => (c.clone(), true),
                None => match &s.other {
                    Some(o) => (o.clone(), !s.other_granular),
                    None => (Schema::Untyped, false),
                },
            },
            Schema::Map(e) => ((**e).clone(), false),
            Schema::List(_) | Schema::Atomic => (Schema::Atomic, true),
        }
    }

    /// Whether the node is replaced as a whole.
    pub fn is_atomic(&self) -> bool {
        matches!(self, Schema::Atomic)
    }

    /// The list kind for a list node (Open/Untyped lists are atomic).
    pub fn list(&self) -> Option<(&ListKind, &Schema)> {
        match self {
            Schema::List(l) => Some((&l.0, &l.1)),
            _ => None,
        }
    }

    /// Whether an undeclared field would be unknown (CRD pruning).
    pub fn is_unknown_field(&self, key: &str) -> bool {
        match self {
            Schema::Struct(s) => !s.fields.contains_key(key) && s.other.is_none(),
            _ => false,
        }
    }
}

fn builtin_child_default(_key: &str) -> Schema {
    Schema::Open
}

// ---------- builders ----------

fn st(fields: Vec<(&str, Schema)>) -> Schema {
    Schema::Struct(Arc::new(StructSchema {
        fields: fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        other: Some(Schema::Open),
        other_granular: false,
    }))
}

fn map_list(keys: &[&str], elem: Schema) -> Schema {
    Schema::List(Arc::new((ListKind::Map(keys.iter().map(|k| (k.to_string(), None)).collect()), elem)))
}

fn map_list_defaults(keys: &[(&str, Option<&str>)], elem: Schema) -> Schema {
    Schema::List(Arc::new((
        ListKind::Map(
            keys.iter().map(|(k, d)| (k.to_string(), d.map(|d| Value::String(d.to_string())))).collect(),
        ),
        elem,
    )))
}

fn set_list() -> Schema {
    Schema::List(Arc::new((ListKind::Set, Schema::Atomic)))
}

fn granular() -> Schema {
    Schema::Map(Arc::new(Schema::Open))
}

fn object_meta() -> Schema {
    st(vec![
        ("labels", granular()),
        ("annotations", granular()),
        ("finalizers", set_list()),
        ("ownerReferences", map_list(&["uid"], Schema::Open)),
        ("managedFields", Schema::Atomic),
    ])
}

fn container() -> Schema {
    st(vec![
        ("ports", map_list_defaults(&[("containerPort", None), ("protocol", Some("TCP"))], Schema::Open)),
        ("env", map_list(&["name"], Schema::Open)),
        ("volumeMounts", map_list(&["mountPath"], Schema::Open)),
        ("volumeDevices", map_list(&["devicePath"], Schema::Open)),
        (
            "resources",
            st(vec![
                ("limits", granular()),
                ("requests", granular()),
                ("claims", map_list(&["name"], Schema::Open)),
            ]),
        ),
    ])
}

fn label_selector() -> Schema {
    Schema::Atomic
}

fn pod_spec() -> Schema {
    st(vec![
        ("containers", map_list(&["name"], container())),
        ("initContainers", map_list(&["name"], container())),
        ("ephemeralContainers", map_list(&["name"], container())),
        ("volumes", map_list(&["name"], Schema::Open)),
        ("imagePullSecrets", map_list(&["name"], Schema::Open)),
        ("hostAliases", map_list(&["ip"], Schema::Open)),
        (
            "topologySpreadConstraints",
            map_list(&["topologyKey", "whenUnsatisfiable"], st(vec![("labelSelector", label_selector())])),
        ),
        ("resourceClaims", map_list(&["name"], Schema::Open)),
        ("schedulingGates", map_list(&["name"], Schema::Open)),
        ("nodeSelector", granular()),
        ("overhead", granular()),
    ])
}

fn pod_template() -> Schema {
    st(vec![("metadata", object_meta()), ("spec", pod_spec())])
}

fn conditions_status() -> Schema {
    st(vec![("conditions", map_list(&["type"], Schema::Open))])
}

fn workload(extra: Vec<(&str, Schema)>) -> Schema {
    let mut spec = vec![("selector", label_selector()), ("template", pod_template())];
    spec.extend(extra);
    top(st(spec), conditions_status())
}

fn top(spec: Schema, status: Schema) -> Schema {
    st(vec![("metadata", object_meta()), ("spec", spec), ("status", status)])
}

fn top_fields(fields: Vec<(&str, Schema)>) -> Schema {
    let mut f = vec![("metadata", object_meta())];
    f.extend(fields);
    st(f)
}

fn webhooks() -> Schema {
    top_fields(vec![(
        "webhooks",
        map_list(
            &["name"],
            st(vec![("namespaceSelector", label_selector()), ("objectSelector", label_selector())]),
        ),
    )])
}

/// The schema of a built-in kind (by group and kind).
pub fn builtin(group: &str, kind: &str) -> Schema {
    static TABLE: OnceLock<HashMap<(&'static str, &'static str), Schema>> = OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut m = HashMap::new();
        m.insert(("", "Pod"), top(pod_spec(), conditions_status()));
        m.insert(("", "ConfigMap"), top_fields(vec![("data", granular()), ("binaryData", granular())]));
        m.insert(("", "Secret"), top_fields(vec![("data", granular()), ("stringData", granular())]));
        m.insert(
            ("", "Service"),
            top(
                st(vec![
                    ("ports", map_list_defaults(&[("port", None), ("protocol", Some("TCP"))], Schema::Open)),
                    ("selector", granular()),
                ]),
                conditions_status(),
            ),
        );
        m.insert(("", "Namespace"), top(st(vec![("finalizers", set_list())]), conditions_status()));
        m.insert(("", "ServiceAccount"), top_fields(vec![("secrets", map_list(&["name"], Schema::Open))]));
        m.insert(
            ("", "PersistentVolumeClaim"),
            top(st(vec![("selector", label_selector())]), conditions_status()),
        );
        for k in ["Deployment", "ReplicaSet", "DaemonSet"] {
            m.insert(("apps", k), workload(vec![]));
        }
        m.insert(("apps", "StatefulSet"), workload(vec![]));
        m.insert(("batch", "Job"), workload(vec![]));
        m.insert(
            ("batch", "CronJob"),
            top(
                st(vec![(
                    "jobTemplate",
                    st(vec![
                        ("metadata", object_meta()),
                        ("spec", st(vec![("selector", label_selector()), ("template", pod_template())])),
                    ]),
                )]),
                Schema::Open,
            ),
        );
        m.insert(
            ("networking.k8s.io", "NetworkPolicy"),
            top(st(vec![("podSelector", label_selector()), ("policyTypes", Schema::Atomic)]), Schema::Open),
        );
        m.insert(
            ("policy", "PodDisruptionBudget"),
            top(st(vec![("selector", label_selector())]), conditions_status()),
        );
        m.insert(
            ("autoscaling", "HorizontalPodAutoscaler"),
            top(st(vec![("scaleTargetRef", Schema::Open)]), conditions_status()),
        );
        m.insert(("admissionregistration.k8s.io", "ValidatingWebhookConfiguration"), webhooks());
        m.insert(("admissionregistration.k8s.io", "MutatingWebhookConfiguration"), webhooks());
        m.insert(
            ("rbac.authorization.k8s.io", "ClusterRole"),
            top_fields(vec![("aggregationRule", st(vec![("clusterRoleSelectors", Schema::Atomic)]))]),
        );
        m.insert(
            ("apiextensions.k8s.io", "CustomResourceDefinition"),
            top(st(vec![("versions", Schema::Atomic)]), conditions_status()),
        );
        m
    });
    t.get(&(group, kind)).cloned().unwrap_or_else(|| top_fields(vec![]))
}

/// Build the schema of a custom resource from a CRD version's `openAPIV3Schema`.
pub fn from_openapi(s: &Value) -> Schema {
    let root = convert(s);
    // apiVersion/kind/metadata are always known.
    match root {
        Schema::Struct(ss) => {
            let mut ss = (*ss).clone();
            ss.fields.insert("metadata".into(), object_meta());
            ss.fields.entry("apiVersion".into()).or_insert(Schema::Atomic);
            ss.fields.entry("kind".into()).or_insert(Schema::Atomic);
            Schema::Struct(Arc::new(ss))
        }
        other => {
            let mut ss =
                StructSchema { other: Some(Schema::Untyped), other_granular: true, ..Default::default() };
            ss.fields.insert("metadata".into(), object_meta());
            ss.fields.insert("apiVersion".into(), Schema::Atomic);
            ss.fields.insert("kind".into(), Schema::Atomic);
            if let Schema::Untyped = other {
                Schema::Struct(Arc::new(ss))
            } else {
                Schema::Struct(Arc::new(ss))
            }
        }
    }
}

fn convert(s: &Value) -> Schema {
    let preserve = s.get("x-kubernetes-preserve-unknown-fields").and_then(Value::as_bool).unwrap_or(false);
    if s.get("x-kubernetes-int-or-string").and_then(Value::as_bool).unwrap_or(false) {
        return Schema::Atomic;
    }
    let ty = s.get("type").and_then(Value::as_str).unwrap_or("");
    match ty {
        "array" => {
            let elem = s.get("items").map(convert).unwrap_or(Schema::Untyped);
            let kind = match s.get("x-kubernetes-list-type").and_then(Value::as_str) {
                Some("set") => ListKind::Set,
                Some("map") => ListKind::Map(
                    s.get("x-kubernetes-list-map-keys")
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(Value::as_str)
                                .map(|k| {
                                    let d = s.pointer(&format!("/items/properties/{k}/default")).cloned();
                                    (k.to_string(), d)
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                ),
                _ => ListKind::Atomic,
            };
            if kind == ListKind::Atomic { Schema::Atomic } else { Schema::List(Arc::new((kind, elem))) }
        }
        "object" | "" => {
            if s.get("x-kubernetes-map-type").and_then(Value::as_str) == Some("atomic") {
                return Schema::Atomic;
            }
            let props = s.get("properties").and_then(Value::as_object);
            let addl = s.get("additionalProperties");
            if let Some(props) = props {
                let fields = props.iter().map(|(k, v)| (k.clone(), convert(v))).collect();
                let embedded =
                    s.get("x-kubernetes-embedded-resource").and_then(Value::as_bool).unwrap_or(false);
                let mut ss = StructSchema {
                    fields,
                    other: if preserve { Some(Schema::Untyped) } else { None },
                    other_granular: preserve,
                };
                if embedded {
                    ss.fields.entry("metadata".into()).or_insert_with(object_meta);
                    ss.fields.entry("apiVersion".into()).or_insert(Schema::Atomic);
                    ss.fields.entry("kind".into()).or_insert(Schema::Atomic);
                }
                Schema::Struct(Arc::new(ss))
            } else if let Some(a) = addl {
                match a {
                    Value::Bool(true) => Schema::Map(Arc::new(Schema::Untyped)),
                    Value::Object(_) => Schema::Map(Arc::new(convert(a))),
                    _ => Schema::Untyped,
                }
            } else if preserve || ty.is_empty() {
                Schema::Untyped
            } else {
                // `type: object` with neither properties nor additionalProperties:
                // an empty struct; anything inside is pruned unless preserved.
                Schema::Struct(Arc::new(StructSchema::default()))
            }
        }
        _ => Schema::Atomic,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn crd_schema_conversion() {
        let s = from_openapi(&json!({
            "type": "object",
            "properties": {
                "spec": {"type": "object", "properties": {
                    "items": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                              "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
                    "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                }}
            }
        }));
        let (spec, declared) = s.field("spec");
        assert!(declared);
        assert!(matches!(spec.field("items").0.list(), Some((ListKind::Map(_), _))));
        assert!(matches!(spec.field("tags").0.list(), Some((ListKind::Set, _))));
        assert!(matches!(spec.field("labels").0, Schema::Map(_)));
        assert!(matches!(spec.field("free").0, Schema::Untyped));
        assert!(spec.is_unknown_field("bogus"));
    }
}
