//! Desired state: which signed bundle generations (base or per-cluster
//! variant) go to which cluster, with which apply options, and the
//! per-cluster diff sent to agents.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use convoy_core::config::{BundleSpec, DriftMode, FleetConfig};
use convoy_core::pipeline::BuiltArtifact;
use convoy_core::selector::Labels;
use convoy_core::tenancy::Tenancy;

use super::DeploymentRecord;

/// How an agent applies a bundle (the domain form of the proto ApplyOptions).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApplyOptions {
    /// Namespace for namespaced objects without one ("" for none).
    pub target_namespace: String,
    /// Delete objects that left the bundle.
    pub prune: bool,
    /// Wait for health before Ready.
    pub wait: bool,
    /// Apply plus wait timeout, seconds.
    pub timeout_seconds: u32,
    /// Bundles that must be Ready first.
    pub depends_on: Vec<String>,
    /// Leave the bundle alone.
    pub suspend: bool,
    /// Take ownership of conflicting fields.
    pub force: bool,
    /// Correct or only detect drift.
    pub drift: DriftMode,
    /// The bundle's tenancy rules, enforced by the agent.
    pub tenancy: Tenancy,
}

impl ApplyOptions {
    /// Options from a bundle spec; `hub_suspended` is the operator's
    /// `convoy suspend bundle` flag, which adds to `spec.suspend`.
    pub fn from_spec(spec: &BundleSpec, hub_suspended: bool) -> Self {
        Self {
            target_namespace: spec.target_namespace.clone().unwrap_or_default(),
            prune: spec.prune,
            wait: spec.wait,
            timeout_seconds: u32::try_from(spec.timeout.get().as_secs()).unwrap_or(u32::MAX),
            depends_on: spec.depends_on.clone(),
            suspend: spec.suspend || hub_suspended,
            force: spec.force,
            drift: spec.drift,
            tenancy: spec.tenancy(),
        }
    }
}

/// One bundle generation as the hub wants it applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    /// The signed generation.
    pub record: Arc<DeploymentRecord>,
    /// How to apply it.
    pub options: ApplyOptions,
}

/// The bundles desired on one cluster, by name.
pub type ClusterBundles = BTreeMap<String, Arc<Deployment>>;

/// The desired state of one cluster, published to its agent's session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterDesired {
    /// Increases whenever this cluster's set changes.
    pub version: u64,
    /// The bundles.
    pub bundles: ClusterBundles,
}

impl ClusterDesired {
    /// The current deployment of the bundle whose artifact has `digest`, if any.
    pub fn has_digest(&self, digest: &str) -> bool {
        self.bundles.values().any(|d| d.record.digest == digest)
    }
}

/// Whether two cluster sets are the same (cheap when the Arcs are shared).
pub fn same_bundles(a: &ClusterBundles, b: &ClusterBundles) -> bool {
    a.len() == b.len()
        && a.iter().zip(b.iter()).all(|((ka, va), (kb, vb))| ka == kb && (Arc::ptr_eq(va, vb) || va == vb))
}

/// The change from one cluster set to another.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredDiff {
    /// Added or changed bundles.
    pub upserts: Vec<Arc<Deployment>>,
    /// Bundles no longer desired.
    pub removed: Vec<String>,
}

impl DesiredDiff {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removed.is_empty()
    }
}

/// What changed between `old` and `new`.
pub fn diff(old: &ClusterBundles, new: &ClusterBundles) -> DesiredDiff {
    let mut d = DesiredDiff::default();
    for (name, dep) in new {
        match old.get(name) {
            Some(o) if Arc::ptr_eq(o, dep) || o == dep => {}
            _ => d.upserts.push(dep.clone()),
        }
    }
    d.removed = old.keys().filter(|k| !new.contains_key(*k)).cloned().collect();
    d
}

/// The generation a newly built artifact gets: `None` when the bundle's
/// current generation already has this digest (nothing to sign), else the
/// current generation + 1 (1 for a bundle's first artifact).
pub fn next_generation(current: Option<&DeploymentRecord>, artifact: &BuiltArtifact) -> Option<u64> {
    match current {
        Some(c) if c.digest == artifact.digest => None,
        Some(c) => Some(c.generation + 1),
        None => Some(1),
    }
}

/// The generation to re-sign `current`'s artifact at when an agent reports it
/// holds `reported` (with `reported_digest`): a hub restored from an old
/// backup, or started empty with the same signing key, continues above what
/// agents hold instead of being refused forever. `None` when the hub is
/// already above (or at the same generation and digest).
pub fn recovery_generation(current: &DeploymentRecord, reported: u64, reported_digest: &str) -> Option<u64> {
    if reported > current.generation || (reported == current.generation && reported_digest != current.digest)
    {
        Some(reported.saturating_add(1))
    } else {
        None
    }
}

/// The generation for a new artifact given the floor agents reported for a
/// bundle the hub had no record of (0 for none).
pub fn above_floor(generation: u64, floor: u64) -> u64 {
    generation.max(floor.saturating_add(1))
}

/// Where one cluster's copy of a bundle comes from, when it is not the
/// bundle's base artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placed {
    /// The base artifact (nothing customizes it on this cluster).
    Base,
    /// The signed variant with this key.
    Variant(String),
    /// The cluster's variant could not be built (a missing variable, a
    /// failed patch): the message; the cluster keeps its last good generation.
    Failed(String),
}

/// A cluster's non-base placements, by bundle.
pub type Placements = BTreeMap<String, Placed>;

/// Every cluster's placements, by cluster: a persistent map, so that a copy
/// (for the published view) is O(1) and changing one cluster's placements
/// costs O(its bundles + log fleet), never a copy of the fleet's.
pub type FleetPlacements = imbl::OrdMap<String, Arc<Placements>>;

/// Every bundle of the fleet that has a signed generation, with its options.
#[derive(Debug, Clone, Default)]
pub struct DesiredIndex {
    /// By bundle name.
    pub deployments: BTreeMap<String, Arc<Deployment>>,
    /// The signed variants, by (bundle, variant key), with the bundle's options.
    pub variants: BTreeMap<(String, String), Arc<Deployment>>,
}

impl DesiredIndex {
    /// Build the index, reusing `previous`'s Arcs for unchanged bundles so that
    /// unchanged cluster sets compare equal by pointer.
    pub fn build(
        fleet: &FleetConfig,
        records: &BTreeMap<String, Arc<DeploymentRecord>>,
        suspended: &BTreeSet<String>,
        previous: &DesiredIndex,
    ) -> Self {
        let mut deployments = BTreeMap::new();
        for (name, bundle) in &fleet.bundles {
            let Some(record) = records.get(name) else { continue };
            let options = ApplyOptions::from_spec(&bundle.spec, suspended.contains(name));
            let dep = match previous.deployments.get(name) {
                Some(p) if Arc::ptr_eq(&p.record, record) && p.options == options => p.clone(),
                _ => Arc::new(Deployment { record: record.clone(), options }),
            };
            deployments.insert(name.clone(), dep);
        }
        Self { deployments, variants: BTreeMap::new() }
    }

    /// Add the signed variants (`(bundle, key) → record`), reusing
    /// `previous`'s Arcs where nothing changed.
    pub fn with_variants(
        mut self,
        variants: &BTreeMap<(String, String), Arc<DeploymentRecord>>,
        previous: &DesiredIndex,
    ) -> Self {
        for (k, record) in variants {
            // A variant is served with its bundle's options; a bundle with no
            // base deployment (left the fleet) has none.
            let Some(base) = self.deployments.get(&k.0) else { continue };
            let options = base.options.clone();
            let dep = match previous.variants.get(k) {
                Some(p) if Arc::ptr_eq(&p.record, record) && p.options == options => p.clone(),
                _ => Arc::new(Deployment { record: record.clone(), options }),
            };
            self.variants.insert(k.clone(), dep);
        }
        self
    }

    /// The bundles targeted at a cluster with its placements: the base
    /// deployment, or its variant's; a failed placement keeps what the
    /// cluster had (`current`), or nothing if it had nothing.
    pub fn for_cluster_placed(
        &self,
        fleet: &FleetConfig,
        cluster: &str,
        labels: &Labels,
        placements: Option<&Placements>,
        current: &ClusterBundles,
    ) -> ClusterBundles {
        let mut out = ClusterBundles::new();
        for (name, base) in &self.deployments {
            if !fleet.bundles.get(name).is_some_and(|b| b.spec.targets_cluster(cluster, labels)) {
                continue;
            }
            let customized = fleet.bundles.get(name).is_some_and(|b| super::variants::is_customized(&b.spec));
            let dep = match placements.and_then(|p| p.get(name)) {
                // Not computed yet for a customized bundle: keep what the
                // cluster has until its variant is known (never the raw base).
                None if customized => current.get(name).cloned(),
                None | Some(Placed::Base) => Some(base.clone()),
                Some(Placed::Variant(key)) => self.variants.get(&(name.clone(), key.clone())).cloned(),
                Some(Placed::Failed(_)) => current.get(name).cloned(),
            };
            if let Some(dep) = dep {
                out.insert(name.clone(), dep);
            }
        }
        out
    }

    /// The bundles targeted at a cluster.
    pub fn for_cluster(&self, fleet: &FleetConfig, cluster: &str, labels: &Labels) -> ClusterBundles {
        self.deployments
            .iter()
            .filter(|(name, _)| {
                fleet.bundles.get(*name).is_some_and(|b| b.spec.targets_cluster(cluster, labels))
            })
            .map(|(n, d)| (n.clone(), d.clone()))
            .collect()
    }
}

/// The clusters a bundle targets, among `clusters` (name, labels).
pub fn targeted_clusters<'a>(
    spec: &BundleSpec,
    clusters: impl IntoIterator<Item = (&'a String, &'a Labels)>,
) -> BTreeSet<String> {
    clusters.into_iter().filter(|(n, l)| spec.targets_cluster(n, l)).map(|(n, _)| n.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet() -> FleetConfig {
        FleetConfig::parse([(
            "fleet.yaml",
            r#"
apiVersion: convoy.dev/v1
kind: GitSource
metadata: {name: repo}
spec: {url: "https://example.com/repo.git"}
---
apiVersion: convoy.dev/v1
kind: Bundle
metadata: {name: web}
spec:
  source: repo
  path: web
  targetNamespace: web
  targets: [{clusterSelector: {matchLabels: {env: prod}}}]
---
apiVersion: convoy.dev/v1
kind: Bundle
metadata: {name: db}
spec:
  source: repo
  targets: [{clusterName: c2}]
"#,
        )])
        .unwrap()
    }

    fn rec(bundle: &str, generation: u64, digest: &str) -> Arc<DeploymentRecord> {
        Arc::new(DeploymentRecord {
            bundle: bundle.into(),
            generation,
            digest: digest.into(),
            size: 1,
            revision: "main@sha1:00".into(),
            source: "repo".into(),
            statement: b"{}".to_vec(),
            signature: vec![1],
            created_unix_ms: 0,
        })
    }

    fn labels(s: &str) -> Labels {
        convoy_core::selector::parse_labels([s]).unwrap()
    }

    #[test]
    fn a_hub_behind_its_agents_continues_above_them() {
        let cur = rec("app", 3, "sha256:a");
        // Agents at or below the hub: nothing to do.
        assert_eq!(recovery_generation(&cur, 2, "sha256:x"), None);
        assert_eq!(recovery_generation(&cur, 3, "sha256:a"), None);
        // An agent above the hub (restored backup): re-sign above it.
        assert_eq!(recovery_generation(&cur, 7, "sha256:b"), Some(8));
        // Same generation, other digest (a hub that restarted empty): above it.
        assert_eq!(recovery_generation(&cur, 3, "sha256:b"), Some(4));
        assert_eq!(recovery_generation(&cur, u64::MAX, "sha256:b"), Some(u64::MAX));
        // A first build after agents reported a floor.
        assert_eq!(above_floor(1, 0), 1);
        assert_eq!(above_floor(1, 5), 6);
        assert_eq!(above_floor(9, 5), 9);
    }

    #[test]
    fn targeting_options_and_diff() {
        let fleet = fleet();
        let mut records = BTreeMap::new();
        records.insert("web".to_string(), rec("web", 1, "sha256:a"));
        records.insert("db".to_string(), rec("db", 1, "sha256:b"));
        let idx = DesiredIndex::build(&fleet, &records, &BTreeSet::new(), &DesiredIndex::default());
        let c1 = idx.for_cluster(&fleet, "c1", &labels("env=prod"));
        assert_eq!(c1.keys().collect::<Vec<_>>(), ["web"]);
        assert_eq!(c1["web"].options.target_namespace, "web");
        assert!(c1["web"].options.prune && c1["web"].options.wait);
        assert_eq!(c1["web"].options.timeout_seconds, 300);
        let c2 = idx.for_cluster(&fleet, "c2", &labels("env=dev"));
        assert_eq!(c2.keys().collect::<Vec<_>>(), ["db"]);

        // Rebuilding with nothing changed keeps the same Arcs.
        let idx2 = DesiredIndex::build(&fleet, &records, &BTreeSet::new(), &idx);
        assert!(Arc::ptr_eq(&idx.deployments["web"], &idx2.deployments["web"]));
        assert!(same_bundles(&c1, &idx2.for_cluster(&fleet, "c1", &labels("env=prod"))));

        // Suspending changes the options and so the deployment.
        let suspended: BTreeSet<String> = ["web".to_string()].into();
        let idx3 = DesiredIndex::build(&fleet, &records, &suspended, &idx2);
        let c1b = idx3.for_cluster(&fleet, "c1", &labels("env=prod"));
        assert!(c1b["web"].options.suspend);
        let d = diff(&c1, &c1b);
        assert_eq!(d.upserts.len(), 1);
        assert!(d.removed.is_empty());

        // A label change moves bundles.
        let c1c = idx3.for_cluster(&fleet, "c1", &labels("env=dev"));
        let d = diff(&c1b, &c1c);
        assert!(d.upserts.is_empty());
        assert_eq!(d.removed, vec!["web".to_string()]);
    }

    #[test]
    fn placements_pick_the_variant_keep_the_last_good_and_hold_back_unknown() {
        let mut fleet = fleet();
        let mut records = BTreeMap::new();
        records.insert("web".to_string(), rec("web", 1, "sha256:base"));
        records.insert("db".to_string(), rec("db", 1, "sha256:db"));
        let variants: BTreeMap<(String, String), Arc<DeploymentRecord>> =
            [(("web".to_string(), "k1".to_string()), rec("web", 2, "sha256:v1"))].into();
        let idx = DesiredIndex::build(&fleet, &records, &BTreeSet::new(), &DesiredIndex::default())
            .with_variants(&variants, &DesiredIndex::default());
        // Variants carry their bundle's options.
        assert_eq!(idx.variants[&("web".to_string(), "k1".to_string())].options.target_namespace, "web");
        let none = ClusterBundles::new();
        let placed: Placements = [("web".to_string(), Placed::Variant("k1".into()))].into();
        let c = idx.for_cluster_placed(&fleet, "c1", &labels("env=prod"), Some(&placed), &none);
        assert_eq!(c["web"].record.digest, "sha256:v1");
        // A failed placement keeps what the cluster had (here: nothing, then v1).
        let failed: Placements = [("web".to_string(), Placed::Failed("missing".into()))].into();
        assert!(idx.for_cluster_placed(&fleet, "c1", &labels("env=prod"), Some(&failed), &none).is_empty());
        let kept = idx.for_cluster_placed(&fleet, "c1", &labels("env=prod"), Some(&failed), &c);
        assert!(Arc::ptr_eq(&kept["web"], &c["web"]));
        // Not customized: no placement means the base.
        let base = idx.for_cluster_placed(&fleet, "c1", &labels("env=prod"), None, &none);
        assert_eq!(base["web"].record.digest, "sha256:base");
        // Customized but not computed yet: held back (never the raw base).
        fleet.bundles.get_mut("web").unwrap().spec.substitute.get_or_insert_default();
        let held = idx.for_cluster_placed(&fleet, "c1", &labels("env=prod"), None, &none);
        assert!(!held.contains_key("web"));
        let held = idx.for_cluster_placed(&fleet, "c1", &labels("env=prod"), None, &c);
        assert_eq!(held["web"].record.digest, "sha256:v1");
        // Rebuilding with the same records keeps the variant Arcs.
        let idx2 =
            DesiredIndex::build(&fleet, &records, &BTreeSet::new(), &idx).with_variants(&variants, &idx);
        let k = ("web".to_string(), "k1".to_string());
        assert!(Arc::ptr_eq(&idx.variants[&k], &idx2.variants[&k]));
    }

    #[test]
    fn generations() {
        let art = BuiltArtifact {
            bundle: "web".into(),
            source: "repo".into(),
            source_url: "u".into(),
            revision: "r".into(),
            digest: "sha256:a".into(),
            size: 1,
            files: 1,
            built_unix_ms: 0,
            helm: None,
        };
        assert_eq!(next_generation(None, &art), Some(1));
        assert_eq!(next_generation(Some(&rec("web", 4, "sha256:a")), &art), None);
        assert_eq!(next_generation(Some(&rec("web", 4, "sha256:z")), &art), Some(5));
    }
}
