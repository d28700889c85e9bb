//! Desired objects: identity (group, kind, namespace, name), apply stage,
//! normalization of a parsed manifest into the exact JSON the agent applies, and
//! its content hash.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::resource::ResourceInfo;
pub use crate::resource::{ObjKey, group_of, version_of};
use crate::{Error, Result};

/// The apply stage of an object. Stages run in order; objects within a stage
/// are applied concurrently; prune runs in reverse order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum Stage {
    /// CustomResourceDefinitions and Namespaces; the engine then waits for the
    /// CRDs to be Established.
    Definitions = 1,
    /// Cluster-wide RBAC, classes and other cluster-scoped infrastructure.
    ClusterWide = 2,
    /// Everything else.
    Workloads = 3,
    /// Admission webhooks, admission policies and APIServices: applied last so
    /// that a webhook whose backend is part of the same bundle does not reject
    /// the bundle's own objects before that backend runs (pruned first).
    Admission = 4,
}

impl Stage {
    /// The stage's name in messages: definitions, cluster-wide, workloads, admission.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Definitions => "definitions",
            Stage::ClusterWide => "cluster-wide",
            Stage::Workloads => "workloads",
            Stage::Admission => "admission",
        }
    }

    /// Every stage in apply order.
    pub const ALL: [Stage; 4] = [Stage::Definitions, Stage::ClusterWide, Stage::Workloads, Stage::Admission];

    /// The stage of a (group, kind).
    pub fn of(group: &str, kind: &str) -> Stage {
        match (group, kind) {
            ("apiextensions.k8s.io", "CustomResourceDefinition") | ("", "Namespace") => Stage::Definitions,
            ("rbac.authorization.k8s.io", "ClusterRole" | "ClusterRoleBinding")
            | ("storage.k8s.io", "StorageClass" | "CSIDriver" | "VolumeAttributesClass")
            | ("networking.k8s.io", "IngressClass")
            | ("gateway.networking.k8s.io", "GatewayClass")
            | ("scheduling.k8s.io", "PriorityClass")
            | ("node.k8s.io", "RuntimeClass")
            | ("", "PersistentVolume") => Stage::ClusterWide,
            (
                "admissionregistration.k8s.io",
                "ValidatingWebhookConfiguration"
                | "MutatingWebhookConfiguration"
                | "ValidatingAdmissionPolicy"
                | "ValidatingAdmissionPolicyBinding"
                | "MutatingAdmissionPolicy"
                | "MutatingAdmissionPolicyBinding",
            )
            | ("apiregistration.k8s.io", "APIService") => Stage::Admission,
            _ => Stage::Workloads,
        }
    }
}

impl From<Stage> for u8 {
    fn from(s: Stage) -> u8 {
        s as u8
    }
}

impl TryFrom<u8> for Stage {
    type Error = String;
    fn try_from(v: u8) -> std::result::Result<Self, String> {
        Stage::ALL.into_iter().find(|s| *s as u8 == v).ok_or_else(|| format!("unknown stage {v}"))
    }
}

/// Where a manifest came from inside the artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file path inside the artifact.
    pub file: String,
    /// The 0-based document index in the file.
    pub index: usize,
}

/// A parsed manifest, validated as a Kubernetes object but not yet resolved
/// against the cluster's API (namespace defaulting needs discovery).
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Where it came from.
    pub origin: Origin,
    /// `apps/v1`.
    pub api_version: String,
    /// `Deployment`.
    pub kind: String,
    /// metadata.name.
    pub name: String,
    /// metadata.namespace, if set.
    pub namespace: Option<String>,
    /// The whole document as compact JSON (text costs far less memory than a
    /// parsed value; large bundles are held as text until applied).
    pub body: String,
}

impl Manifest {
    /// Validate a parsed document as a Kubernetes object. `kind: List`
    /// documents are expanded into their items. (Artifact files are already
    /// flattened by `convoy_artifact::manifest`; this branch is still reached
    /// by SOPS files, which `sops.rs` decrypts and hands over document by
    /// document, so it stays.)
    pub fn from_value(origin: Origin, value: Value) -> Result<Vec<Manifest>> {
        let bad = |m: String| Error::Manifest { file: origin.file.clone(), index: origin.index, message: m };
        let Value::Object(map) = &value else {
            return Err(bad("not a YAML mapping".into()));
        };
        let api_version = str_field(map, "apiVersion").ok_or_else(|| bad("apiVersion is missing".into()))?;
        let kind = str_field(map, "kind").ok_or_else(|| bad("kind is missing".into()))?;
        if api_version == "v1" && kind.ends_with("List") && map.contains_key("items") {
            let Some(Value::Array(items)) = map.get("items") else {
                return Err(bad(format!("{kind}: items is not a list")));
            };
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let mut got = Manifest::from_value(origin.clone(), item.clone()).map_err(|e| match e {
                    Error::Manifest { file, index, message } => {
                        Error::Manifest { file, index, message: format!("items[{i}]: {message}") }
                    }
                    e => e,
                })?;
                out.append(&mut got);
            }
            return Ok(out);
        }
        let meta = match map.get("metadata") {
            Some(Value::Object(m)) => m,
            _ => return Err(bad(format!("{kind}: metadata is missing"))),
        };
        let name = str_field(meta, "name").unwrap_or_default();
        if name.is_empty() {
            let hint = if meta.contains_key("generateName") {
                " (generateName is not supported: apply needs a stable name)"
            } else {
                ""
            };
            return Err(bad(format!("{kind}: metadata.name is missing{hint}")));
        }
        if api_version.split('/').count() > 2 || api_version.is_empty() {
            return Err(bad(format!("{kind} {name}: invalid apiVersion {api_version:?}")));
        }
        let namespace = str_field(meta, "namespace").filter(|s| !s.is_empty());
        let (api_version, kind, name) = (api_version.to_string(), kind.to_string(), name.to_string());
        let namespace = namespace.map(str::to_string);
        let body = serde_json::to_string(&value).map_err(|e| bad(e.to_string()))?;
        Ok(vec![Manifest { origin, api_version, kind, name, namespace, body }])
    }

    /// The document as a JSON value.
    pub fn value(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// The API group of this manifest.
    pub fn group(&self) -> &str {
        group_of(&self.api_version)
    }
}

fn str_field<'a>(m: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    m.get(k).and_then(Value::as_str)
}

/// A label or annotation key the desired object sets (drift checks compare
/// only these on the live object).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MetaKey {
    /// metadata.labels key.
    Label(String),
    /// metadata.annotations key.
    Annotation(String),
}

/// How the engine writes an object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WriteMode {
    /// Server-side apply: create it, or bring it to the desired state.
    #[default]
    Apply,
    /// Create it when it is missing; never change an existing one (a Helm
    /// chart's `crds/` under `crds: Create`). It stays in the plan, so in the
    /// inventory: it is never pruned because it was left alone.
    CreateOnly,
}

/// An object exactly as the agent applies it.
#[derive(Debug, Clone)]
pub struct DesiredObject {
    /// Its identity.
    pub key: ObjKey,
    /// The resource it is served as.
    pub resource: ResourceInfo,
    /// Its stage.
    pub stage: Stage,
    /// The compact JSON sent as the server-side apply body.
    pub body: String,
    /// sha256 of `body`, hex, 32 chars: the change detector kept in the inventory.
    pub hash: String,
    /// Where it came from.
    pub origin: Origin,
    /// Label and annotation keys it sets.
    pub meta_keys: Vec<MetaKey>,
    /// How it is written ([`WriteMode::Apply`] unless the bundle says otherwise).
    pub write: WriteMode,
}

impl DesiredObject {
    /// Whether the cluster deletes it once it finished: a Job with
    /// `spec.ttlSecondsAfterFinished` (the TTL-after-finished controller).
    /// Once applied, its absence means it finished: health counts it done
    /// and drift correction does not create it again (which would run it
    /// again); the next revision applies it again, as `kubectl apply` and
    /// `helm upgrade` do.
    pub fn gone_when_finished(&self) -> bool {
        #[derive(serde::Deserialize)]
        struct Job {
            #[serde(default)]
            spec: Spec,
        }
        #[derive(serde::Deserialize, Default)]
        struct Spec {
            #[serde(rename = "ttlSecondsAfterFinished")]
            ttl: Option<serde::de::IgnoredAny>,
        }
        self.key.group == "batch"
            && self.key.kind == "Job"
            && serde_json::from_str::<Job>(&self.body).is_ok_and(|j| j.spec.ttl.is_some())
    }

    /// Normalize a manifest for `bundle`: set the namespace of namespaced
    /// objects that have none, drop a namespace on cluster-scoped objects,
    /// remove server-owned metadata, and add the bundle label.
    pub fn build(
        m: Manifest,
        resource: ResourceInfo,
        bundle: &str,
        default_namespace: &str,
    ) -> Result<DesiredObject> {
        let Manifest { origin, kind, name, namespace, body, .. } = m;
        let mut value: Value = serde_json::from_str(&body).map_err(|e| Error::Manifest {
            file: origin.file.clone(),
            index: origin.index,
            message: e.to_string(),
        })?;
        drop(body);
        let namespace = if resource.namespaced {
            Some(namespace.unwrap_or_else(|| default_namespace.to_string()))
        } else {
            None
        };
        let obj = value.as_object_mut().ok_or_else(|| Error::Manifest {
            file: origin.file.clone(),
            index: origin.index,
            message: "not a mapping".into(),
        })?;
        let meta = obj.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
        let meta = meta.as_object_mut().ok_or_else(|| Error::Manifest {
            file: origin.file.clone(),
            index: origin.index,
            message: "metadata is not a mapping".into(),
        })?;
        for k in ["resourceVersion", "uid", "selfLink", "generation", "managedFields", "creationTimestamp"] {
            meta.remove(k);
        }
        match &namespace {
            Some(ns) => {
                meta.insert("namespace".into(), Value::String(ns.clone()));
            }
            None => {
                meta.remove("namespace");
            }
        }
        let labels = meta.entry("labels").or_insert_with(|| Value::Object(Map::new()));
        if labels.is_null() {
            *labels = Value::Object(Map::new());
        }
        let labels = labels.as_object_mut().ok_or_else(|| Error::Manifest {
            file: origin.file.clone(),
            index: origin.index,
            message: "metadata.labels is not a mapping".into(),
        })?;
        labels.insert(convoy_core::BUNDLE_LABEL.into(), Value::String(bundle.into()));
        let mut meta_keys: Vec<MetaKey> = labels.keys().map(|k| MetaKey::Label(k.clone())).collect();
        if let Some(Value::Object(ann)) = meta.get("annotations") {
            meta_keys.extend(ann.keys().map(|k| MetaKey::Annotation(k.clone())));
        }
        let body = serde_json::to_string(&value).map_err(|e| Error::Manifest {
            file: origin.file.clone(),
            index: origin.index,
            message: e.to_string(),
        })?;
        let hash = hash_hex(body.as_bytes());
        let key = ObjKey { group: resource.group.clone(), kind, namespace, name };
        let stage = Stage::of(&key.group, &key.kind);
        Ok(DesiredObject { key, resource, stage, body, hash, origin, meta_keys, write: WriteMode::Apply })
    }

    /// The body as a JSON value (parsed on demand; bodies are kept as text to
    /// keep memory small).
    pub fn value(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// sha256 hex, truncated to 32 characters (128 bits).
pub fn hash_hex(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    hex::encode(&d[..16])
}

/// Hash the live values of the given label/annotation keys of an object's
/// metadata (absent keys hash differently from empty values).
pub fn meta_hash(
    keys: &[MetaKey],
    labels: Option<&std::collections::BTreeMap<String, String>>,
    annotations: Option<&std::collections::BTreeMap<String, String>>,
) -> String {
    let mut h = Sha256::new();
    for k in keys {
        let (tag, key, v) = match k {
            MetaKey::Label(k) => ("l", k, labels.and_then(|m| m.get(k))),
            MetaKey::Annotation(k) => ("a", k, annotations.and_then(|m| m.get(k))),
        };
        h.update(tag.as_bytes());
        h.update(key.as_bytes());
        match v {
            Some(v) => {
                h.update([1u8]);
                h.update(v.as_bytes());
            }
            None => h.update([0u8]),
        }
        h.update([0xffu8]);
    }
    hex::encode(&h.finalize()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_job_with_a_ttl_after_finished_is_gone_when_finished() {
        let obj = |group: &str, kind: &str, body: &str| DesiredObject {
            key: ObjKey {
                group: group.into(),
                kind: kind.into(),
                namespace: Some("a".into()),
                name: "j".into(),
            },
            resource: ResourceInfo {
                group: group.into(),
                version: "v1".into(),
                kind: kind.into(),
                plural: "jobs".into(),
                namespaced: true,
            },
            stage: Stage::Workloads,
            body: body.into(),
            hash: String::new(),
            origin: Origin { file: "j.yaml".into(), index: 0 },
            meta_keys: vec![],
            write: WriteMode::Apply,
        };
        let with = r#"{"kind":"Job","spec":{"ttlSecondsAfterFinished":0,"template":{}}}"#;
        let without = r#"{"kind":"Job","spec":{"template":{}}}"#;
        assert!(obj("batch", "Job", with).gone_when_finished());
        assert!(obj("batch", "Job", &with.replace(":0,", ":3600,")).gone_when_finished());
        assert!(!obj("batch", "Job", without).gone_when_finished());
        assert!(!obj("batch", "Job", &with.replace(":0,", ":null,")).gone_when_finished());
        assert!(!obj("batch", "CronJob", with).gone_when_finished(), "a CronJob stays");
        assert!(!obj("example.com", "Job", with).gone_when_finished(), "another group's Job");
    }
    use serde_json::json;

    fn origin() -> Origin {
        Origin { file: "a.yaml".into(), index: 2 }
    }

    #[test]
    fn stages() {
        assert_eq!(Stage::of("apiextensions.k8s.io", "CustomResourceDefinition"), Stage::Definitions);
        assert_eq!(Stage::of("", "Namespace"), Stage::Definitions);
        assert_eq!(Stage::of("rbac.authorization.k8s.io", "ClusterRole"), Stage::ClusterWide);
        assert_eq!(Stage::of("networking.k8s.io", "IngressClass"), Stage::ClusterWide);
        assert_eq!(Stage::of("rbac.authorization.k8s.io", "Role"), Stage::Workloads);
        assert_eq!(Stage::of("apps", "Deployment"), Stage::Workloads);
        assert_eq!(
            Stage::of("admissionregistration.k8s.io", "ValidatingWebhookConfiguration"),
            Stage::Admission
        );
        assert!(Stage::Definitions < Stage::Admission);
    }

    #[test]
    fn manifest_validation_names_the_problem() {
        let e = Manifest::from_value(origin(), json!({"kind": "X"})).unwrap_err();
        assert!(e.to_string().contains("a.yaml: document 2: apiVersion is missing"), "{e}");
        let e =
            Manifest::from_value(origin(), json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}))
                .unwrap_err();
        assert!(e.to_string().contains("metadata.name is missing"), "{e}");
        let e = Manifest::from_value(origin(), json!([1, 2])).unwrap_err();
        assert!(e.to_string().contains("not a YAML mapping"), "{e}");
    }

    #[test]
    fn lists_expand() {
        let v = json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}},
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b"}},
        ]});
        let ms = Manifest::from_value(origin(), v).unwrap();
        assert_eq!(ms.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn build_sets_namespace_and_label() {
        let m = Manifest::from_value(
            origin(),
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "a", "creationTimestamp": null, "annotations": {"x": "y"}},
                   "data": {"k": "v"}}),
        )
        .unwrap()
        .remove(0);
        let res = ResourceInfo::test("", "v1", "ConfigMap", "configmaps", true);
        let d = DesiredObject::build(m, res, "app", "apps-ns").unwrap();
        assert_eq!(d.key.to_string(), "ConfigMap/apps-ns/a");
        let v = d.value();
        assert_eq!(v["metadata"]["labels"]["convoy.dev/bundle"], "app");
        assert_eq!(v["metadata"]["namespace"], "apps-ns");
        assert!(v["metadata"].get("creationTimestamp").is_none());
        assert_eq!(d.hash.len(), 32);
        assert!(d.meta_keys.contains(&MetaKey::Annotation("x".into())));

        let m = Manifest::from_value(
            origin(),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                   "metadata": {"name": "r", "namespace": "oops"}}),
        )
        .unwrap()
        .remove(0);
        let res = ResourceInfo::test("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", false);
        let d = DesiredObject::build(m, res, "app", "apps-ns").unwrap();
        assert_eq!(d.key.to_string(), "ClusterRole/r");
        assert!(d.value()["metadata"].get("namespace").is_none());
        assert_eq!(d.stage, Stage::ClusterWide);
    }

    #[test]
    fn meta_hash_sees_value_changes_and_removals() {
        use std::collections::BTreeMap;
        let keys = vec![MetaKey::Label("a".into()), MetaKey::Annotation("b".into())];
        let l: BTreeMap<String, String> = [("a".to_string(), "1".to_string())].into();
        let a: BTreeMap<String, String> = [("b".to_string(), "2".to_string())].into();
        let h1 = meta_hash(&keys, Some(&l), Some(&a));
        let mut l2 = l.clone();
        l2.insert("unrelated".into(), "x".into());
        assert_eq!(h1, meta_hash(&keys, Some(&l2), Some(&a)));
        l2.insert("a".into(), "9".into());
        assert_ne!(h1, meta_hash(&keys, Some(&l2), Some(&a)));
        assert_ne!(h1, meta_hash(&keys, Some(&l), None));
    }
}
