//! Per-cluster variants of a bundle: which customization layers and variable
//! values one cluster's copy of a bundle is built from (its *effective
//! input*), and the digest of that input (its *variant key*). Pure: the
//! caller hands in the bundle spec, the cluster's facts and the variables the
//! bundle's documents use; clusters with equal keys share one artifact.
//!
//! Layering (docs/config.md, "Per-cluster customization"):
//! - every `targets[]` entry that matches the cluster applies, in the order
//!   listed; a matching `doNotDeploy` entry removes the bundle from it;
//! - a variable's value is, lowest first: the bundle's `substitute.vars`, the
//!   cluster's vars (`Cluster` documents, then `convoy vars`), then each
//!   matching entry's `vars` in order (the last one wins);
//! - only variables the documents use count, and only when the bundle has
//!   `substitute:`; so two clusters differing in an unused var share a variant.
//!
//! A Helm bundle (`spec.helm`) is also rendered per cluster with the
//! Capabilities its agent reported (Kubernetes version and served API
//! versions): their digest is part of its variant key, and only of a Helm
//! bundle's, so plain and kustomize bundles do not split by Kubernetes version.

use std::collections::BTreeMap;

use convoy_core::config::{BundleSpec, Patch, Target};
use convoy_core::selector::Labels;
use convoy_core::substitute::{Variable, Variables};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// A signed variant of a bundle, as stored: the variant key, the base
/// artifact it was built from, and its generation record (whose statement
/// names the key).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VariantRecord {
    /// [`EffectiveInput::key`].
    pub key: String,
    /// The digest of the base artifact it was built from.
    pub base_digest: String,
    /// The signed generation (its `digest` is the variant artifact's).
    pub record: super::DeploymentRecord,
}

impl VariantRecord {
    /// The store key: `<bundle>/<variant key>`.
    pub fn store_key(&self) -> String {
        format!("{}/{}", self.record.bundle, self.key)
    }
}

/// What the hub knows of one cluster, for variants.
#[derive(Debug, Clone, Copy)]
pub struct ClusterFacts<'a> {
    /// The cluster name.
    pub name: &'a str,
    /// Its effective labels (registered, then `Cluster` documents).
    pub labels: &'a Labels,
    /// Its vars (`Cluster` documents, then `convoy vars`).
    pub vars: &'a BTreeMap<String, String>,
    /// The Kubernetes version its agent reported, if any.
    pub kubernetes_version: Option<&'a str>,
    /// The API versions its agent reported (`group/version`), for Helm's
    /// `.Capabilities.APIVersions`.
    pub api_versions: &'a [String],
}

/// One matching target entry that carries a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// The entry's index in `spec.targets`.
    pub index: usize,
    /// How the entry selects clusters, for explanations
    /// (`clusterName=eu-1`, `clusterSelector=env=prod`, `clusterGroup=europe`).
    pub selector: String,
    /// Namespace for every namespaced object.
    pub namespace: Option<String>,
    /// Kustomize patches.
    pub patches: Vec<Patch>,
    /// Helm values (data for Helm bundles).
    pub helm_values: Option<Value>,
}

/// Where a variable's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VarSource {
    /// The cluster's name.
    Name,
    /// The version the agent reported.
    KubernetesVersion,
    /// A cluster label.
    Label,
    /// The bundle's `substitute.vars`.
    Bundle,
    /// The cluster's own vars (`Cluster` document or `convoy vars`).
    Cluster,
    /// The `targets[]` entry with this index and selector.
    Target(usize, String),
}

impl std::fmt::Display for VarSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VarSource::Name => f.write_str("cluster name"),
            VarSource::KubernetesVersion => f.write_str("agent-reported Kubernetes version"),
            VarSource::Label => f.write_str("cluster label"),
            VarSource::Bundle => f.write_str("bundle substitute.vars"),
            VarSource::Cluster => f.write_str("cluster vars"),
            VarSource::Target(i, sel) => write!(f, "targets[{i}] ({sel})"),
        }
    }
}

/// One variable the documents use, with its value for this cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The value, `None` when unset (its expressions' defaults then apply).
    pub value: Option<String>,
    /// Where the value came from (`None` when unset).
    pub source: Option<VarSource>,
}

/// A cluster's effective input for one bundle.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EffectiveInput {
    /// The matching entries that carry a layer, in listed order.
    pub layers: Vec<Layer>,
    /// The used variables, by [`Variable`].
    pub variables: BTreeMap<Variable, Binding>,
    /// For a Helm bundle on a cluster that reported its Kubernetes version:
    /// the Capabilities it renders with (`None`: the bundle's default).
    pub capabilities: Option<HelmCapabilities>,
}

/// What a cluster's `.Capabilities` are for a Helm render: its Kubernetes
/// version (normalized, `v1.31.0`) and its API versions (sorted, deduplicated).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HelmCapabilities {
    /// `.Capabilities.KubeVersion`.
    pub kube_version: String,
    /// `.Capabilities.APIVersions` on top of Helm's defaults.
    pub api_versions: Vec<String>,
}

impl HelmCapabilities {
    /// From what an agent reported.
    pub fn reported(kube_version: &str, api_versions: &[String]) -> Self {
        let mut apis = api_versions.to_vec();
        apis.sort();
        apis.dedup();
        Self {
            kube_version: convoy_sources::helmrender::normalize_kube_version(kube_version),
            api_versions: apis,
        }
    }

    /// As Helm's render request takes them.
    pub fn to_helm(&self) -> convoy_sources::helmrender::Capabilities {
        convoy_sources::helmrender::Capabilities {
            kube_version: self.kube_version.clone(),
            api_versions: self.api_versions.clone(),
        }
    }

    /// `sha256:<hex>` of the capability set (Helm's capabilities digest).
    pub fn digest(&self) -> String {
        convoy_sources::helmrender::capabilities_digest(&self.to_helm())
    }
}

impl EffectiveInput {
    /// The variables to substitute with: only the used ones are set, so the
    /// result depends on nothing outside the variant key.
    pub fn substitution_variables(&self, cluster: &str) -> Variables {
        let mut v = Variables { name: cluster.to_string(), ..Default::default() };
        for (var, b) in &self.variables {
            let Some(value) = &b.value else { continue };
            match var {
                Variable::Name => v.name = value.clone(),
                Variable::KubernetesVersion => v.kubernetes_version = Some(value.clone()),
                Variable::Label(k) => {
                    v.labels.insert(k.clone(), value.clone());
                }
                Variable::Var(k) => {
                    v.vars.insert(k.clone(), value.clone());
                }
            }
        }
        v
    }

    /// The canonical digest of the input: `sha256:<hex>` of compact JSON with
    /// sorted keys, over the layers' content (not their indexes: two entries
    /// with the same layer give the same result) and the variables' values.
    pub fn key(&self) -> String {
        let layers: Vec<Value> = self
            .layers
            .iter()
            .map(|l| {
                json!({
                    "namespace": l.namespace,
                    "patches": l.patches.iter().map(|p| json!({"patch": p.patch, "target": p.target})).collect::<Vec<_>>(),
                    "helmValues": l.helm_values,
                })
            })
            .collect();
        let vars: BTreeMap<String, Option<&String>> =
            self.variables.iter().map(|(k, b)| (k.to_string(), b.value.as_ref())).collect();
        let mut doc = json!({"layers": layers, "vars": vars});
        // Only a Helm bundle's key names Capabilities (other keys keep their bytes).
        if let Some(c) = &self.capabilities {
            doc["capabilities"] = json!(c.digest());
        }
        // serde_json's map is sorted (no preserve_order feature), so this is canonical.
        let canonical = doc.to_string();
        format!("sha256:{}", hex::encode(Sha256::digest(canonical.as_bytes())))
    }
}

/// Where a bundle goes on one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// No entry targets the cluster, or a matching entry says `doNotDeploy`.
    NotTargeted,
    /// The bundle's base artifact, unchanged: nothing customizes it here.
    Base,
    /// A variant: built from the base with this input.
    Variant {
        /// [`EffectiveInput::key`].
        key: String,
        /// The input.
        input: EffectiveInput,
    },
    /// The documents use variables this cluster does not set and give no
    /// default for: the cluster keeps its last good generation. The input
    /// (with those variables unset) lets the caller render it to get the
    /// located error (file, document, line).
    MissingVariables(Vec<Variable>, EffectiveInput),
}

/// Whether the bundle can differ between clusters at all (`substitute:`, a
/// target entry with a layer, or a Helm chart, which renders with each
/// cluster's Capabilities); if not, every cluster gets the base artifact and
/// no variant is computed.
pub fn is_customized(spec: &BundleSpec) -> bool {
    spec.substitute.is_some() || spec.helm.is_some() || spec.targets.iter().any(Target::has_layer)
}

/// How a target entry selects clusters, for explanations.
pub fn describe_selector(t: &Target) -> String {
    let mut parts = Vec::new();
    if let Some(n) = &t.cluster_name {
        parts.push(format!("clusterName={n}"));
    }
    if let Some(s) = &t.cluster_selector {
        parts.push(format!("clusterSelector={s}"));
    }
    if let Some(g) = &t.cluster_group {
        parts.push(format!("clusterGroup={g}"));
    }
    parts.join(" ")
}

/// A cluster's placement for a bundle. `used` is what
/// [`convoy_core::substitute::used_variables`] found in the base artifact's
/// documents (variable → whether some expression has no default); it is
/// ignored unless the bundle has `substitute:`.
pub fn placement(
    spec: &BundleSpec,
    cluster: &ClusterFacts<'_>,
    used: &BTreeMap<Variable, bool>,
) -> Placement {
    let matching: Vec<(usize, &Target)> =
        spec.targets.iter().enumerate().filter(|(_, t)| t.matches(cluster.name, cluster.labels)).collect();
    if matching.is_empty() || matching.iter().any(|(_, t)| t.do_not_deploy) {
        return Placement::NotTargeted;
    }
    let mut input = EffectiveInput::default();
    for (index, t) in &matching {
        if t.has_layer() {
            input.layers.push(Layer {
                index: *index,
                selector: describe_selector(t),
                namespace: t.namespace.clone(),
                patches: t.patches.clone(),
                helm_values: t.helm_values.clone(),
            });
        }
    }
    let mut missing = Vec::new();
    if let Some(sub) = &spec.substitute {
        for (var, required) in used {
            let found: Option<(String, VarSource)> = match var {
                Variable::Name => Some((cluster.name.to_string(), VarSource::Name)),
                Variable::KubernetesVersion => {
                    cluster.kubernetes_version.map(|v| (v.to_string(), VarSource::KubernetesVersion))
                }
                Variable::Label(k) => cluster.labels.get(k).map(|v| (v.clone(), VarSource::Label)),
                Variable::Var(k) => {
                    let mut found = sub.vars.get(k).map(|v| (v.clone(), VarSource::Bundle));
                    if let Some(v) = cluster.vars.get(k) {
                        found = Some((v.clone(), VarSource::Cluster));
                    }
                    for (i, t) in &matching {
                        if let Some(v) = t.vars.get(k) {
                            found = Some((v.clone(), VarSource::Target(*i, describe_selector(t))));
                        }
                    }
                    found
                }
            };
            if found.is_none() && *required {
                missing.push(var.clone());
            }
            let (value, source) = match found {
                Some((v, s)) => (Some(v), Some(s)),
                None => (None, None),
            };
            input.variables.insert(var.clone(), Binding { value, source });
        }
    }
    // A Helm bundle renders per cluster from the render input its build
    // stored (a chart directory's, or a repository or OCI chart's archive).
    if spec.helm.is_some()
        && let Some(v) = cluster.kubernetes_version.filter(|v| !v.trim().is_empty())
    {
        input.capabilities = Some(HelmCapabilities::reported(v, cluster.api_versions));
    }
    if !missing.is_empty() {
        return Placement::MissingVariables(missing, input);
    }
    if input.layers.is_empty() && input.variables.is_empty() && input.capabilities.is_none() {
        return Placement::Base;
    }
    Placement::Variant { key: input.key(), input }
}

/// Group clusters by placement: the base, each variant key (with one
/// representative input) and the failures; clusters not targeted are left out.
#[derive(Debug, Default)]
pub struct Grouping {
    /// Clusters on the base artifact.
    pub base: Vec<String>,
    /// Variant key → (input of its first cluster, clusters).
    pub variants: BTreeMap<String, (EffectiveInput, Vec<String>)>,
    /// Clusters with missing variables.
    pub missing: BTreeMap<String, Vec<Variable>>,
}

/// Group `clusters` for one bundle (see [`placement`]).
pub fn group<'a>(
    spec: &BundleSpec,
    clusters: impl IntoIterator<Item = ClusterFacts<'a>>,
    used: &BTreeMap<Variable, bool>,
) -> Grouping {
    let mut g = Grouping::default();
    for c in clusters {
        match placement(spec, &c, used) {
            Placement::NotTargeted => {}
            Placement::Base => g.base.push(c.name.to_string()),
            Placement::Variant { key, input } => {
                g.variants.entry(key).or_insert_with(|| (input, Vec::new())).1.push(c.name.to_string())
            }
            Placement::MissingVariables(m, _) => {
                g.missing.insert(c.name.to_string(), m);
            }
        }
    }
    g
}

/// The message of a cluster's `SubstitutionFailed` condition for missing
/// variables found before building (the build's own errors name file,
/// document and line).
pub fn missing_message(missing: &[Variable]) -> String {
    let names: Vec<String> = missing.iter().map(|v| v.to_string()).collect();
    format!("variable(s) not set for this cluster and without default: {}", names.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use convoy_core::config::FleetConfig;

    const FLEET: &str = r#"
apiVersion: convoy.dev/v1
kind: GitSource
metadata: {name: fleet}
spec: {url: https://example.com/fleet.git, ref: {branch: main}}
---
apiVersion: convoy.dev/v1
kind: ClusterGroup
metadata: {name: europe}
spec: {selector: {matchLabels: {region: eu}}}
---
apiVersion: convoy.dev/v1
kind: Bundle
metadata: {name: plain}
spec:
  source: fleet
  targets: [{clusterSelector: {}}]
---
apiVersion: convoy.dev/v1
kind: Bundle
metadata: {name: web}
spec:
  source: fleet
  substitute: {vars: {region: none, tier: bronze}}
  targets:
    - clusterSelector: {}
    - clusterGroup: europe
      namespace: web-eu
      vars: {region: eu}
    - clusterSelector: {matchLabels: {env: prod}}
      vars: {tier: gold}
      patches:
        - patch: |
            apiVersion: apps/v1
            kind: Deployment
            metadata: {name: web}
            spec: {replicas: 3}
    - clusterName: eu-late
      vars: {region: eu-override}
    - clusterName: eu-skip
      doNotDeploy: true
"#;

    fn fleet() -> FleetConfig {
        FleetConfig::parse([("f.yaml", FLEET)]).unwrap()
    }

    fn labels(s: &str) -> Labels {
        convoy_core::selector::parse_labels([s]).unwrap()
    }

    fn used(vars: &[(&str, bool)]) -> BTreeMap<Variable, bool> {
        vars.iter()
            .map(|(k, r)| {
                let v = match *k {
                    "name" => Variable::Name,
                    "kubernetesVersion" => Variable::KubernetesVersion,
                    k if k.starts_with("label.") => Variable::Label(k[6..].into()),
                    k => Variable::Var(k.into()),
                };
                (v, *r)
            })
            .collect()
    }

    fn place(
        f: &FleetConfig,
        bundle: &str,
        name: &str,
        l: &str,
        vars: &[(&str, &str)],
        u: &[(&str, bool)],
    ) -> Placement {
        let labels = labels(l);
        let vars: BTreeMap<String, String> =
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let facts = ClusterFacts {
            name,
            labels: &labels,
            vars: &vars,
            kubernetes_version: Some("v1.31.0"),
            api_versions: &[],
        };
        placement(&f.bundles[bundle].spec, &facts, &used(u))
    }

    fn input(p: Placement) -> EffectiveInput {
        match p {
            Placement::Variant { key, input } => {
                assert_eq!(key, input.key());
                input
            }
            other => panic!("expected a variant, got {other:?}"),
        }
    }

    #[test]
    fn an_uncustomized_bundle_is_the_base_and_substitute_is_opt_in() {
        let f = fleet();
        // No layer, and `plain` has no `substitute:`: whatever its documents use, the base.
        assert_eq!(place(&f, "plain", "c1", "region=eu", &[], &[("region", true)]), Placement::Base);
        // `web` on a cluster no layered entry matches, its documents using nothing: the base.
        assert_eq!(place(&f, "web", "us-dev", "region=us,env=dev", &[], &[]), Placement::Base);
    }

    #[test]
    fn every_matching_entry_applies_in_listed_order() {
        let f = fleet();
        let i = input(place(
            &f,
            "web",
            "eu-late",
            "region=eu,env=prod",
            &[],
            &[("region", true), ("tier", true)],
        ));
        // Entries 1 (group) and 2 (selector) carry layers, in that order; 3 only vars.
        assert_eq!(i.layers.iter().map(|l| l.index).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(i.layers[0].selector, "clusterGroup=europe");
        assert_eq!(i.layers[0].namespace.as_deref(), Some("web-eu"));
        assert_eq!(i.layers[1].patches.len(), 1);
        // region: bundle "none" < group entry "eu" < the later clusterName entry.
        let region = &i.variables[&Variable::Var("region".into())];
        assert_eq!(region.value.as_deref(), Some("eu-override"));
        assert_eq!(region.source, Some(VarSource::Target(3, "clusterName=eu-late".into())));
        let tier = &i.variables[&Variable::Var("tier".into())];
        assert_eq!(tier.value.as_deref(), Some("gold"));
        assert_eq!(tier.source.as_ref().unwrap().to_string(), "targets[2] (clusterSelector=env=prod)");
    }

    #[test]
    fn variable_precedence_bundle_then_cluster_then_targets() {
        let f = fleet();
        let u = [("tier", true), ("region", true)];
        let i = input(place(&f, "web", "us-dev", "region=us", &[], &u));
        assert_eq!(i.variables[&Variable::Var("tier".into())].source, Some(VarSource::Bundle));
        let i = input(place(&f, "web", "us-dev", "region=us", &[("tier", "silver")], &u));
        let tier = &i.variables[&Variable::Var("tier".into())];
        assert_eq!((tier.value.as_deref(), tier.source.clone()), (Some("silver"), Some(VarSource::Cluster)));
        // A target entry's vars win over the cluster's.
        let i = input(place(&f, "web", "us-prod", "region=us,env=prod", &[("tier", "silver")], &u));
        assert_eq!(i.variables[&Variable::Var("tier".into())].value.as_deref(), Some("gold"));
        // Built-ins.
        let i = input(place(
            &f,
            "web",
            "us-dev",
            "zone=a",
            &[],
            &[("name", true), ("label.zone", true), ("kubernetesVersion", true)],
        ));
        let vals: Vec<_> = i.variables.values().map(|b| b.value.clone().unwrap()).collect();
        assert_eq!(vals, vec!["us-dev", "v1.31.0", "a"]);
        let sub = i.substitution_variables("us-dev");
        assert_eq!(sub.kubernetes_version.as_deref(), Some("v1.31.0"));
        assert_eq!(sub.labels["zone"], "a");
    }

    #[test]
    fn cluster_group_resolution_and_do_not_deploy() {
        let f = fleet();
        let i = input(place(&f, "web", "eu-dev", "region=eu,env=dev", &[], &[]));
        assert_eq!(i.layers.len(), 1);
        assert_eq!(i.layers[0].index, 1);
        assert_eq!(place(&f, "web", "eu-skip", "region=eu", &[], &[]), Placement::NotTargeted);
        assert!(matches!(place(&f, "web", "us-dev", "region=us", &[], &[]), Placement::Base));
    }

    #[test]
    fn missing_variables_fail_that_cluster_alone() {
        let f = fleet();
        let u = [("zone", true), ("size", false)];
        let p = place(&f, "web", "us-dev", "region=us", &[], &u);
        let Placement::MissingVariables(m, i) = p else { panic!("expected missing variables, got {p:?}") };
        assert_eq!(m, vec![Variable::Var("zone".into())]);
        assert_eq!(i.variables[&Variable::Var("zone".into())].value, None);
        assert_eq!(
            missing_message(&m),
            "variable(s) not set for this cluster and without default: cluster.vars.zone"
        );
        // Another cluster that sets it is fine; an unset var with a default is not missing.
        let i = input(place(&f, "web", "us-dev2", "region=us", &[("zone", "a")], &u));
        assert_eq!(i.variables[&Variable::Var("size".into())], Binding { value: None, source: None });
    }

    #[test]
    fn keys_are_stable_and_depend_only_on_the_effective_input() {
        let f = fleet();
        let u = [("region", true)];
        let a = input(place(&f, "web", "eu-1", "region=eu,env=dev,x=1", &[("unused", "1")], &u));
        let b = input(place(&f, "web", "eu-2", "env=dev,region=eu", &[("unused", "2")], &u));
        // Different names, label order and unused vars: one variant.
        assert_eq!(a.key(), b.key());
        // The key is a fixed function of the input (a golden, so it stays stable across releases).
        assert_eq!(a.key(), input(place(&f, "web", "eu-1", "region=eu,env=dev", &[], &u)).key());
        assert_eq!(a.key(), "sha256:83047f953efc227be198c3a29c5e96988dac1b277552b5989b78cc29c235efec");
        assert!(a.key().starts_with("sha256:") && a.key().len() == 71);
        // A value change, or a layer change, changes it.
        let c = input(place(&f, "web", "eu-3", "region=eu,env=prod", &[], &u));
        assert_ne!(a.key(), c.key());
        let d = input(place(&f, "web", "us-1", "region=us,env=dev", &[("region", "eu")], &u));
        assert_ne!(a.key(), d.key(), "same region value, but d lacks the group's namespace layer");
    }

    #[test]
    fn ten_thousand_clusters_in_five_regions_and_three_envs_make_fifteen_variants() {
        let f = fleet();
        let spec = &f.bundles["plain"].spec;
        let mut spec = spec.clone();
        spec.substitute = Some(Default::default());
        let regions = ["eu", "us", "ap", "sa", "af"];
        let envs = ["dev", "staging", "prod"];
        let clusters: Vec<(String, Labels, BTreeMap<String, String>)> = (0..10_000)
            .map(|i| {
                let l = labels(&format!("region={},env={}", regions[i % 5], envs[i % 3]));
                (format!("c{i}"), l, BTreeMap::from([("id".to_string(), i.to_string())]))
            })
            .collect();
        let u = used(&[("label.region", true), ("label.env", true)]);
        let g = group(
            &spec,
            clusters.iter().map(|(n, l, v)| ClusterFacts {
                name: n,
                labels: l,
                vars: v,
                kubernetes_version: None,
                api_versions: &[],
            }),
            &u,
        );
        assert_eq!(g.variants.len(), 15);
        assert!(g.base.is_empty() && g.missing.is_empty());
        assert_eq!(g.variants.values().map(|(_, c)| c.len()).sum::<usize>(), 10_000);
        // Using the cluster name makes every cluster its own variant.
        let u = used(&[("name", true)]);
        let g = group(
            &spec,
            clusters.iter().take(50).map(|(n, l, v)| ClusterFacts {
                name: n,
                labels: l,
                vars: v,
                kubernetes_version: None,
                api_versions: &[],
            }),
            &u,
        );
        assert_eq!(g.variants.len(), 50);
    }

    const HELM_FLEET: &str = r#"
apiVersion: convoy.dev/v1
kind: GitSource
metadata: {name: fleet}
spec: {url: https://example.com/fleet.git, ref: {branch: main}}
---
apiVersion: convoy.dev/v1
kind: Bundle
metadata: {name: chart}
spec:
  source: fleet
  helm: {path: charts/web}
  targets:
    - clusterSelector: {}
    - clusterSelector: {matchLabels: {tier: gold}}
      helmValues: {replicas: 3}
---
apiVersion: convoy.dev/v1
kind: Bundle
metadata: {name: plain}
spec:
  source: fleet
  targets: [{clusterSelector: {}}]
---
apiVersion: convoy.dev/v1
kind: HelmRepository
metadata: {name: charts}
spec: {url: https://charts.example.com}
---
apiVersion: convoy.dev/v1
kind: Bundle
metadata: {name: repochart}
spec:
  helm: {repository: charts, chart: web, version: 1.0.0}
  targets: [{clusterSelector: {}}]
"#;

    fn helm_place(bundle: &str, tier: &str, version: Option<&str>, apis: &[&str]) -> Placement {
        let f = FleetConfig::parse([("f.yaml", HELM_FLEET)]).unwrap();
        let labels = labels(&format!("tier={tier}"));
        let apis: Vec<String> = apis.iter().map(|s| s.to_string()).collect();
        let vars = BTreeMap::new();
        let facts = ClusterFacts {
            name: "c1",
            labels: &labels,
            vars: &vars,
            kubernetes_version: version,
            api_versions: &apis,
        };
        placement(&f.bundles[bundle].spec, &facts, &BTreeMap::new())
    }

    #[test]
    fn a_helm_bundle_renders_with_each_clusters_capabilities_and_only_a_helm_bundle_splits() {
        // Not reported, no values layer: the base (rendered with the default Capabilities).
        assert_eq!(helm_place("chart", "silver", None, &[]), Placement::Base);
        assert_eq!(helm_place("chart", "silver", Some(" "), &[]), Placement::Base);
        // Not reported, a values layer: a variant without Capabilities (the default).
        let i = input(helm_place("chart", "gold", None, &[]));
        assert_eq!(i.capabilities, None);
        assert_eq!(i.layers[0].helm_values, Some(json!({"replicas": 3})));
        // Reported: normalized version, API versions sorted and deduplicated.
        let i = input(helm_place("chart", "silver", Some("1.31"), &["v1", "apps/v1", "v1"]));
        let caps = i.capabilities.clone().unwrap();
        assert_eq!(caps.kube_version, "v1.31.0");
        assert_eq!(caps.api_versions, vec!["apps/v1", "v1"]);
        // The key follows the Capabilities (version, API set), not their order.
        let key = |tier, v, apis: &[&str]| input(helm_place("chart", tier, Some(v), apis)).key();
        assert_eq!(
            key("silver", "v1.31.0", &["v1", "apps/v1"]),
            key("silver", "v1.31.0", &["apps/v1", "v1"])
        );
        assert_ne!(key("silver", "v1.31.0", &["v1"]), key("silver", "v1.30.0", &["v1"]));
        assert_ne!(key("silver", "v1.31.0", &["v1"]), key("silver", "v1.31.0", &["v1", "x/v1"]));
        assert_ne!(key("silver", "v1.31.0", &["v1"]), key("gold", "v1.31.0", &["v1"]));
        // A plain bundle on a cluster that reported a version: still the base.
        assert!(is_customized(&FleetConfig::parse([("f.yaml", HELM_FLEET)]).unwrap().bundles["chart"].spec));
        assert_eq!(helm_place("plain", "gold", Some("v1.31.0"), &["v1"]), Placement::Base);
        // A repository chart's build stores its render input (the archive):
        // it renders per cluster as a chart directory does.
        assert_eq!(helm_place("repochart", "gold", None, &[]), Placement::Base);
        let i = input(helm_place("repochart", "gold", Some("1.31"), &["v1"]));
        assert_eq!(i.capabilities.unwrap().kube_version, "v1.31.0");
    }

    #[test]
    fn a_helm_bundle_takes_values_not_patches_or_namespaces() {
        for layer in ["namespace: other", "patches: [{patch: 'kind: ConfigMap'}]"] {
            let text = HELM_FLEET.replace("helmValues: {replicas: 3}", layer);
            let e = FleetConfig::parse([("f.yaml", text.as_str())]).unwrap_err().to_string();
            assert!(
                e.contains("spec.targets[1]: namespace and patches do not apply to a Helm bundle"),
                "{e}"
            );
        }
        let text = HELM_FLEET.replace("helmValues: {replicas: 3}", "helmValues: [1]");
        let e = FleetConfig::parse([("f.yaml", text.as_str())]).unwrap_err().to_string();
        assert!(e.contains("spec.targets[1].helmValues must be a mapping"), "{e}");
        // A repository chart takes per-cluster values and substitution as a
        // chart directory does.
        let last = "  targets: [{clusterSelector: {}}]\n";
        let (head, tail) = HELM_FLEET.rsplit_once(last).expect("repochart is last");
        assert!(tail.is_empty() && head.ends_with("version: 1.0.0}\n"));
        let text = format!(
            "{head}  targets: [{{clusterSelector: {{}}, helmValues: {{a: 1}}}}]\n  substitute: {{}}\n"
        );
        let f = FleetConfig::parse([("f.yaml", text.as_str())]).unwrap();
        let spec = &f.bundles["repochart"].spec;
        assert!(spec.substitute.is_some());
        let (labels, vars, apis) = (labels("tier=gold"), BTreeMap::new(), Vec::new());
        let facts = ClusterFacts {
            name: "c1",
            labels: &labels,
            vars: &vars,
            kubernetes_version: None,
            api_versions: &apis,
        };
        let i = input(placement(spec, &facts, &BTreeMap::new()));
        assert_eq!(i.layers[0].helm_values, Some(json!({"a": 1})));
    }
}
