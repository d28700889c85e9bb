//! The resource registry: built-in types (a data table) and types registered
//! dynamically from CustomResourceDefinitions, plus the discovery documents
//! (`/api`, `/apis`, `/apis/GROUP/VERSION`) built from it.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::schema::{self, Schema};

/// Storage identity: group + plural (all versions share one store).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupResource {
    pub group: String,
    pub resource: String,
}

/// A printer column of a CRD (`additionalPrinterColumns`).
#[derive(Debug, Clone)]
pub struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub json_path: String,
    pub priority: i64,
    pub description: String,
}

/// One served resource at one group/version.
#[derive(Debug, Clone)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub short_names: Vec<String>,
    pub namespaced: bool,
    pub categories: Vec<String>,
    pub status: bool,
    pub scale: bool,
    /// metadata.generation is tracked.
    pub generation: bool,
    pub schema: Schema,
    /// Set for custom resources: the CRD's name.
    pub crd: Option<String>,
    /// The CRD version's schema, for pruning and printer columns.
    pub openapi: Option<Arc<Value>>,
    pub printer_columns: Vec<PrinterColumn>,
    /// For CRDs: scale subresource paths (spec, status, labelSelector).
    pub scale_paths: Option<(String, String, Option<String>)>,
}

impl ResourceType {
    pub fn gr(&self) -> GroupResource {
        GroupResource { group: self.group.clone(), resource: self.plural.clone() }
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    /// Human name used in error messages: `deployments.apps`, `configmaps`.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() { self.plural.clone() } else { format!("{}.{}", self.plural, self.group) }
    }

    fn verbs(&self) -> Vec<&'static str> {
        vec!["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
    }

    /// Short names and categories (when there are any) on a discovery entry,
    /// legacy or aggregated.
    fn add_names(&self, entry: &mut Value) {
        if !self.short_names.is_empty() {
            entry["shortNames"] = json!(self.short_names);
        }
        if !self.categories.is_empty() {
            entry["categories"] = json!(self.categories);
        }
    }

    fn discovery(&self) -> Vec<Value> {
        let mut main = json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": self.verbs(),
        });
        self.add_names(&mut main);
        let mut out = vec![main];
        if self.status {
            out.push(json!({"name": format!("{}/status", self.plural), "singularName": "", "namespaced": self.namespaced,
                "kind": self.kind, "verbs": SUBRESOURCE_VERBS}));
        }
        if self.kind == "Pod" && self.group.is_empty() {
            out.push(json!({"name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]}));
        }
        if self.scale {
            out.push(json!({"name": format!("{}/scale", self.plural), "singularName": "", "namespaced": self.namespaced,
                "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": SUBRESOURCE_VERBS}));
        }
        out
    }
}

/// What the status and scale subresources serve.
const SUBRESOURCE_VERBS: [&str; 3] = ["get", "patch", "update"];

struct Builtin {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    short: &'static [&'static str],
    namespaced: bool,
    all: bool,
    status: bool,
    scale: bool,
    generation: bool,
}

const fn b(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    short: &'static [&'static str],
    namespaced: bool,
    flags: &'static str,
) -> Builtin {
    // flags: a = category all, s = status, c = scale, g = generation
    let f = flags.as_bytes();
    let mut all = false;
    let mut status = false;
    let mut scale = false;
    let mut generation = false;
    let mut i = 0;
    while i < f.len() {
        match f[i] {
            b'a' => all = true,
            b's' => status = true,
            b'c' => scale = true,
            b'g' => generation = true,
            _ => {}
        }
        i += 1;
    }
    Builtin { group, version, kind, plural, short, namespaced, all, status, scale, generation }
}

const BUILTINS: &[Builtin] = &[
    b("", "v1", "Namespace", "namespaces", &["ns"], false, "s"),
    b("", "v1", "ConfigMap", "configmaps", &["cm"], true, ""),
    b("", "v1", "Secret", "secrets", &[], true, ""),
    b("", "v1", "ServiceAccount", "serviceaccounts", &["sa"], true, ""),
    b("", "v1", "Service", "services", &["svc"], true, "as"),
    b("", "v1", "Endpoints", "endpoints", &["ep"], true, ""),
    b("", "v1", "Pod", "pods", &["po"], true, "as"),
    b("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", &["pvc"], true, "s"),
    b("", "v1", "PersistentVolume", "persistentvolumes", &["pv"], false, "s"),
    b("", "v1", "Event", "events", &["ev"], true, ""),
    b("", "v1", "Node", "nodes", &["no"], false, "s"),
    b("", "v1", "LimitRange", "limitranges", &["limits"], true, ""),
    b("", "v1", "ResourceQuota", "resourcequotas", &["quota"], true, "s"),
    b("apps", "v1", "Deployment", "deployments", &["deploy"], true, "ascg"),
    b("apps", "v1", "ReplicaSet", "replicasets", &["rs"], true, "ascg"),
    b("apps", "v1", "StatefulSet", "statefulsets", &["sts"], true, "ascg"),
    b("apps", "v1", "DaemonSet", "daemonsets", &["ds"], true, "asg"),
    b("apps", "v1", "ControllerRevision", "controllerrevisions", &[], true, ""),
    b("batch", "v1", "Job", "jobs", &[], true, "asg"),
    b("batch", "v1", "CronJob", "cronjobs", &["cj"], true, "asg"),
    b("networking.k8s.io", "v1", "Ingress", "ingresses", &["ing"], true, "sg"),
    b("networking.k8s.io", "v1", "IngressClass", "ingressclasses", &[], false, "g"),
    b("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", &["netpol"], true, "g"),
    b("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", &["hpa"], true, "asg"),
    b("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", &["pdb"], true, "sg"),
    b("rbac.authorization.k8s.io", "v1", "Role", "roles", &[], true, ""),
    b("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", &[], true, ""),
    b("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", &[], false, ""),
    b("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", &[], false, ""),
    b(
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingWebhookConfiguration",
        "validatingwebhookconfigurations",
        &[],
        false,
        "g",
    ),
    b(
        "admissionregistration.k8s.io",
        "v1",
        "MutatingWebhookConfiguration",
        "mutatingwebhookconfigurations",
        &[],
        false,
        "g",
    ),
    b("scheduling.k8s.io", "v1", "PriorityClass", "priorityclasses", &["pc"], false, ""),
    b("storage.k8s.io", "v1", "StorageClass", "storageclasses", &["sc"], false, ""),
    b(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        &["crd", "crds"],
        false,
        "sg",
    ),
    b("coordination.k8s.io", "v1", "Lease", "leases", &[], true, ""),
    b("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", &[], true, ""),
    b("apiregistration.k8s.io", "v1", "APIService", "apiservices", &[], false, "s"),
];

/// Groups in the order real clusters list them (core first).
const GROUP_ORDER: &[&str] = &[
    "",
    "apiregistration.k8s.io",
    "apps",
    "events.k8s.io",
    "authentication.k8s.io",
    "authorization.k8s.io",
    "autoscaling",
    "batch",
    "certificates.k8s.io",
    "networking.k8s.io",
    "policy",
    "rbac.authorization.k8s.io",
    "storage.k8s.io",
    "admissionregistration.k8s.io",
    "apiextensions.k8s.io",
    "scheduling.k8s.io",
    "coordination.k8s.io",
    "discovery.k8s.io",
];

/// All served types.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    /// (group, version, plural) -> type
    types: BTreeMap<(String, String, String), Arc<ResourceType>>,
    /// CRD name -> the CRD object its served types were registered from.
    crd_sources: BTreeMap<String, Arc<Value>>,
}

impl Registry {
    pub fn with_builtins() -> Registry {
        let mut r = Registry::default();
        for bt in BUILTINS {
            let t = ResourceType {
                group: bt.group.into(),
                version: bt.version.into(),
                kind: bt.kind.into(),
                plural: bt.plural.into(),
                singular: bt.kind.to_ascii_lowercase(),
                short_names: bt.short.iter().map(|s| s.to_string()).collect(),
                namespaced: bt.namespaced,
                categories: if bt.all { vec!["all".into()] } else { vec![] },
                status: bt.status,
                scale: bt.scale,
                generation: bt.generation,
                schema: schema::builtin(bt.group, bt.kind),
                crd: None,
                openapi: None,
                printer_columns: vec![],
                scale_paths: None,
            };
            r.insert(t);
        }
        r
    }

    pub fn insert(&mut self, t: ResourceType) {
        self.types.insert((t.group.clone(), t.version.clone(), t.plural.clone()), Arc::new(t));
    }

    /// Remove every version served by a CRD.
    pub fn remove_crd(&mut self, crd_name: &str) {
        self.types.retain(|_, t| t.crd.as_deref() != Some(crd_name));
        self.crd_sources.remove(crd_name);
    }

    /// Remember the CRD object a CRD's types were registered from.
    pub fn set_crd_source(&mut self, crd_name: &str, crd: Arc<Value>) {
        self.crd_sources.insert(crd_name.to_string(), crd);
    }

    /// Whether the CRD's types are registered from a CRD with exactly this spec.
    pub fn crd_registered_from(&self, crd_name: &str, crd: &Arc<Value>) -> bool {
        self.crd_sources
            .get(crd_name)
            .is_some_and(|s| Arc::ptr_eq(s, crd) || s.get("spec") == crd.get("spec"))
    }

    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.types.get(&(group.to_string(), version.to_string(), plural.to_string())).cloned()
    }

    /// The type by group and kind (any served version; the first).
    pub fn by_kind(&self, group: &str, version: &str, kind: &str) -> Option<Arc<ResourceType>> {
        self.types.values().find(|t| t.group == group && t.version == version && t.kind == kind).cloned()
    }

    /// Every served version of a group-resource.
    pub fn versions_of(&self, gr: &GroupResource) -> Vec<Arc<ResourceType>> {
        self.types.values().filter(|t| t.group == gr.group && t.plural == gr.resource).cloned().collect()
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<ResourceType>> {
        self.types.values()
    }

    /// Whether a group/version is served.
    pub fn has_group_version(&self, group: &str, version: &str) -> bool {
        self.types.keys().any(|(g, v, _)| g == group && v == version)
    }

    fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (g, v, _) in self.types.keys() {
            let vs = m.entry(g.clone()).or_default();
            if !vs.contains(v) {
                vs.push(v.clone());
            }
        }
        let mut out: Vec<(String, Vec<String>)> = m.into_iter().filter(|(g, _)| !g.is_empty()).collect();
        for (_, vs) in out.iter_mut() {
            vs.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        }
        out.sort_by_key(|(g, _)| (GROUP_ORDER.iter().position(|x| x == g).unwrap_or(usize::MAX), g.clone()));
        out
    }

    /// `/apis` (APIGroupList).
    pub fn api_group_list(&self) -> Value {
        let groups: Vec<Value> = self.groups().into_iter().map(|(g, vs)| group_json(&g, &vs)).collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }

    /// `/apis/GROUP` (APIGroup).
    pub fn api_group(&self, group: &str) -> Option<Value> {
        self.groups().into_iter().find(|(g, _)| g == group).map(|(g, vs)| {
            let mut v = group_json(&g, &vs);
            v["kind"] = json!("APIGroup");
            v["apiVersion"] = json!("v1");
            v
        })
    }

    /// `/api/v1` or `/apis/GROUP/VERSION` (APIResourceList).
    pub fn api_resource_list(&self, group: &str, version: &str) -> Option<Value> {
        if !self.has_group_version(group, version) {
            return None;
        }
        let resources: Vec<Value> = self
            .types
            .values()
            .filter(|t| t.group == group && t.version == version)
            .flat_map(|t| t.discovery())
            .collect();
        let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
        Some(
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
        )
    }
}

impl Registry {
    /// Aggregated discovery (`apidiscovery.k8s.io/v2` APIGroupDiscoveryList) for
    /// `/api` (core) or `/apis` (every other group).
    pub fn aggregated(&self, core: bool) -> Value {
        let groups: Vec<(String, Vec<String>)> =
            if core { vec![(String::new(), vec!["v1".to_string()])] } else { self.groups() };
        let items: Vec<Value> = groups
            .into_iter()
            .map(|(g, vs)| {
                let versions: Vec<Value> = vs
                    .iter()
                    .map(|v| {
                        let resources: Vec<Value> = self
                            .types
                            .values()
                            .filter(|t| t.group == g && t.version == *v)
                            .map(|t| {
                                let kind = json!({"group": t.group, "version": t.version, "kind": t.kind});
                                let mut subs = Vec::new();
                                if t.scale {
                                    subs.push(json!({"subresource": "scale", "responseKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"}, "verbs": SUBRESOURCE_VERBS}));
                                }
                                if t.status {
                                    subs.push(json!({"subresource": "status", "responseKind": kind, "verbs": SUBRESOURCE_VERBS}));
                                }
                                let mut r = json!({
                                    "resource": t.plural,
                                    "responseKind": kind,
                                    "scope": if t.namespaced { "Namespaced" } else { "Cluster" },
                                    "singularResource": t.singular,
                                    "verbs": t.verbs(),
                                });
                                t.add_names(&mut r);
                                if !subs.is_empty() {
                                    r["subresources"] = Value::Array(subs);
                                }
                                r
                            })
                            .collect();
                        json!({"version": v, "resources": resources, "freshness": "Current"})
                    })
                    .collect();
                json!({"metadata": {"name": g, "creationTimestamp": null}, "versions": versions})
            })
            .collect();
        json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
    }
}

fn group_json(g: &str, vs: &[String]) -> Value {
    let versions: Vec<Value> =
        vs.iter().map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v})).collect();
    json!({"name": g, "versions": versions, "preferredVersion": {"groupVersion": format!("{g}/{}", vs[0]), "version": vs[0]}})
}

/// Kubernetes version priority: GA > beta > alpha, higher numbers first.
pub fn version_priority(v: &str) -> (u8, u32, u32) {
    let Some(rest) = v.strip_prefix('v') else { return (0, 0, 0) };
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let major: u32 = digits.parse().unwrap_or(0);
    let tail = &rest[digits.len()..];
    if tail.is_empty() {
        (3, major, 0)
    } else if let Some(n) = tail.strip_prefix("beta") {
        (2, major, n.parse().unwrap_or(0))
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (1, major, n.parse().unwrap_or(0))
    } else {
        (0, 0, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_and_discovery() {
        let r = Registry::with_builtins();
        let d = r.get("apps", "v1", "deployments").unwrap();
        assert_eq!(d.short_names, vec!["deploy"]);
        let list = r.api_resource_list("apps", "v1").unwrap();
        let names: Vec<&str> =
            list["resources"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert!(names.contains(&"deployments/scale"));
        assert!(version_priority("v1") > version_priority("v1beta1"));
        assert!(version_priority("v2beta1") > version_priority("v1alpha1"));
    }
}
