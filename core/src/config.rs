//! The fleet config: GitSource, Bundle, Provider, Alert, Cluster and ClusterGroup documents.
//!
//! Documents are Kubernetes-style (`apiVersion: convoy.dev/v1`, `kind`,
//! `metadata.name`, `spec`) and may be spread over several files. Parsing is
//! strict: unknown fields are errors that name the file, document and line.
//! See docs/config.md for the reference.

use std::collections::{BTreeMap, BTreeSet};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;
use crate::identity::validate_name;
use crate::selector::{LabelSelector, Labels};
use crate::status::Severity;
use crate::yaml::{Document, documents, parse_document};
use crate::{API_VERSION, Error, Result};

/// Object metadata of a config document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// The name, unique per kind.
    #[serde(default)]
    pub name: String,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

// ---------------------------------------------------------------------------
// GitSource
// ---------------------------------------------------------------------------

/// `kind: GitSource`: a git repository the hub fetches once for the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitSourceSpec {
    /// https://, http://, ssh://, git://, file:// URL, scp-like
    /// `git@host:path`, or a local path.
    pub url: String,
    /// What to check out. Defaults to branch `main`.
    #[serde(default, rename = "ref")]
    pub git_ref: GitRef,
    /// How often to poll. Default 1m.
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
    /// Timeout of one fetch. Default 60s.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Stop polling.
    #[serde(default)]
    pub suspend: bool,
    /// Extra ignore rules, gitignore syntax, applied on top of the repo's
    /// `.convoyignore` files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore: Option<String>,
    /// Credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<GitAuth>,
    /// Verify the commit signature before using a revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<CommitVerification>,
    /// A PEM file of CA certificates to trust for https URLs, in addition
    /// to the system's roots (for git servers with a private CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Accept push webhooks for this source at `POST /hooks/<name>` on the
    /// hub's HTTP port; a valid one triggers an immediate fetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSpec>,
}

/// The webhook receiver of a GitSource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookSpec {
    /// A file holding the shared secret: the HMAC key (GitHub, generic) or
    /// the token (GitLab).
    pub secret_file: String,
    /// Which scheme to accept: `github` (`X-Hub-Signature-256`), `gitlab`
    /// (`X-Gitlab-Token`) or `generic` (`X-Signature: sha256=<hex>`).
    /// Unset: any of them.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
}

/// The webhook types a [`WebhookSpec`] may name.
pub const WEBHOOK_TYPES: [&str; 3] = ["github", "gitlab", "generic"];

fn default_interval() -> HumanDuration {
    HumanDuration::from_secs(60)
}

fn default_timeout() -> HumanDuration {
    HumanDuration::from_secs(60)
}

/// A git reference. When several fields are set, the first of commit, name,
/// semver, tag, branch wins (Flux's precedence).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitRef {
    /// A branch name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// A tag name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// A semver range over tags (`>=1.2.0 <2.0.0`, `~1.4`, `*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semver: Option<String>,
    /// A full reference name (`refs/heads/main`, `refs/pull/1/head`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// An exact commit (full 40-hex SHA-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

/// A [`GitRef`] after precedence is applied.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RefSpec {
    /// An exact commit; `branch` (if set) is what to fetch to find it.
    Commit {
        /// The commit id.
        commit: String,
        /// The branch to fetch, if set.
        branch: Option<String>,
    },
    /// A full reference name.
    Name(String),
    /// The highest tag matching a semver range.
    Semver(String),
    /// A tag.
    Tag(String),
    /// A branch.
    Branch(String),
}

impl GitRef {
    /// Apply the precedence rule: commit > name > semver > tag > branch.
    /// With nothing set, the branch `main`.
    pub fn resolve(&self) -> RefSpec {
        if let Some(c) = &self.commit {
            return RefSpec::Commit { commit: c.clone(), branch: self.branch.clone() };
        }
        if let Some(n) = &self.name {
            return RefSpec::Name(n.clone());
        }
        if let Some(s) = &self.semver {
            return RefSpec::Semver(s.clone());
        }
        if let Some(t) = &self.tag {
            return RefSpec::Tag(t.clone());
        }
        RefSpec::Branch(self.branch.clone().unwrap_or_else(|| "main".into()))
    }
}

impl RefSpec {
    /// The `<ref>` part of a revision string `<ref>@sha1:<commit>`.
    pub fn revision_prefix(&self, resolved_tag: Option<&str>) -> String {
        match self {
            RefSpec::Commit { branch: Some(b), .. } => b.clone(),
            RefSpec::Commit { branch: None, .. } => "HEAD".into(),
            RefSpec::Name(n) => n.clone(),
            RefSpec::Semver(_) => resolved_tag.unwrap_or("").to_string(),
            RefSpec::Tag(t) => t.clone(),
            RefSpec::Branch(b) => b.clone(),
        }
    }
}

/// Format a revision: `<ref>@sha1:<commit>`.
pub fn format_revision(reference: &str, commit_hex: &str) -> String {
    format!("{reference}@sha1:{commit_hex}")
}

/// Credentials for a GitSource. Secrets are read from files and never logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitAuth {
    /// HTTP basic auth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicAuth>,
    /// A file holding an HTTP bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_file: Option<String>,
    /// SSH key auth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshAuth>,
    /// Allow sending the bearer token over plain http to a loopback IP
    /// literal (tests, a same-host proxy). Off: bearer tokens go over https only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_insecure_loopback: bool,
}

/// HTTP basic auth from files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BasicAuth {
    /// The user name (not secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// A file holding the user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_file: Option<String>,
    /// A file holding the password.
    pub password_file: String,
}

/// SSH auth from files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SshAuth {
    /// A file holding the private key (OpenSSH or PEM format).
    pub private_key_file: String,
    /// A known_hosts file. Required: host keys are always checked.
    pub known_hosts_file: String,
}

/// Commit signature verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommitVerification {
    /// `ssh` or `gpg`.
    pub mode: String,
    /// For ssh: an allowed_signers file. For gpg: an armored keyring file.
    pub keys_file: String,
}

// ---------------------------------------------------------------------------
// Bundle
// ---------------------------------------------------------------------------

/// `kind: Bundle`: a path in a source, deployed to the clusters it targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BundleSpec {
    /// The GitSource name. For a chart from a `HelmRepository`
    /// (`helm.repository`) it may be left out: it is then that repository's
    /// name (the bundle is built by that source).
    #[serde(default)]
    pub source: String,
    /// The directory in the source: plain YAML, or a kustomize overlay when it
    /// holds a kustomization.yaml. Default: the repository root.
    #[serde(default = "default_path")]
    pub path: String,
    /// Which clusters get the bundle. A cluster is targeted when any entry
    /// matches it. No entries: no cluster.
    #[serde(default)]
    pub targets: Vec<Target>,
    /// Namespace for namespaced objects that have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_namespace: Option<String>,
    /// Delete objects that left the bundle. Default true.
    #[serde(default = "default_true")]
    pub prune: bool,
    /// Wait for objects to be healthy before Ready. Default true.
    #[serde(default = "default_true")]
    pub wait: bool,
    /// Timeout of apply plus wait. Default 5m.
    #[serde(default = "default_bundle_timeout")]
    pub timeout: HumanDuration,
    /// Bundles that must be Ready on a cluster first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Do not touch the bundle on any cluster.
    #[serde(default)]
    pub suspend: bool,
    /// Take ownership of fields other managers own.
    #[serde(default)]
    pub force: bool,
    /// `correct` (default) or `detect`.
    #[serde(default)]
    pub drift: DriftMode,
    /// Tenancy: namespaces the bundle's namespaced objects may use (names or
    /// `prefix-*`). Empty: any. Enforced by the agent before anything is applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_namespaces: Vec<String>,
    /// Tenancy: kinds the bundle may contain (`ConfigMap`, `Deployment.apps`,
    /// `*.apps`, `*`). Empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_kinds: Vec<String>,
    /// Tenancy: whether the bundle may contain cluster-scoped objects. Default true.
    #[serde(default = "default_true")]
    pub allow_cluster_scoped: bool,
    /// Opt in to `${{ cluster.* }}` substitution (`substitute: {}`), with
    /// bundle-level variable values. Absent: the documents are left as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substitute: Option<SubstituteSpec>,
    /// Health-gated progressive rollout over waves (docs/rollouts.md). None:
    /// every targeted cluster gets a new generation at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::RolloutSpec>,
    /// A Helm chart to render instead of the plain YAML or kustomize at
    /// `path` (docs/helm.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helm: Option<HelmSpec>,
}

/// `spec.helm` of a Bundle: which chart, and how to render it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HelmSpec {
    /// The chart's name (in a repository); for `path`, optional, and when
    /// set the chart at `path` must have this name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart: Option<String>,
    /// The chart version: exact, or a semver range for repositories; for
    /// `path`, the chart must have this exact version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// A `HelmRepository` source, by name (with `chart` and `version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// An `OCIRepository` source, by name (with `version` or `digest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci_repository: Option<String>,
    /// A chart directory inside the bundle's GitSource (from the repository root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The release name. Default: the bundle name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_name: Option<String>,
    /// The release namespace. Default: the bundle's `targetNamespace`, else `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Inline values (a mapping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<serde_json::Value>,
    /// Values files in the GitSource (from the repository root), merged in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values_files: Vec<String>,
    /// Values files on the hub's disk, merged in order over `values`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values_from: Vec<ValuesFrom>,
    /// The chart's `crds/`: `CreateReplace` (default), `Create` or `Skip`
    /// (docs/helm.md, "CRDs").
    #[serde(default)]
    pub crds: CrdPolicy,
    /// Release records the agent keeps. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_history: Option<u32>,
    /// `.Capabilities.KubeVersion` (`1.31` or `v1.31.2`). Default: the hub's
    /// `helm.kubeVersion`, else Helm's built-in default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_version: Option<String>,
    /// For `ociRepository`: the chart's manifest digest (`sha256:<hex>`),
    /// instead of `version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// An upgrade that fails on a cluster (apply error, hook failure, or not
    /// Ready within `timeout`) gives every cluster that got it its previous
    /// content back as a new signed generation (docs/helm.md, "Remediation").
    /// A bundle's own `rollout:` wins over it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rollback_on_failure: bool,
}

/// One `valuesFrom` entry: a YAML file on the hub.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValuesFrom {
    /// The file (absolute, or relative to the hub's working directory).
    pub file: String,
    /// Take only this top-level key of the file. Default: the whole file (a mapping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Put the value at this dotted path of the values (`image.tag`).
    /// Default: merge it at the top (then it must be a mapping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_path: Option<String>,
    /// A missing file (or key) is skipped instead of failing the build.
    #[serde(default)]
    pub optional: bool,
}

/// What to do with a chart's `crds/` (Flux helm-controller's policies).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CrdPolicy {
    /// Create missing CRDs and update existing ones, in the CRD stage (the default).
    #[default]
    CreateReplace,
    /// Create missing CRDs, on install and upgrade; never change an existing one.
    Create,
    /// Leave them out of the artifact.
    Skip,
}

impl CrdPolicy {
    /// Whether this is the default (`CreateReplace`).
    pub fn is_default(&self) -> bool {
        *self == CrdPolicy::CreateReplace
    }
}

impl HelmSpec {
    /// Check the spec: exactly one chart origin, values a mapping, supported
    /// origins only. The message names the field.
    pub fn check(&self) -> std::result::Result<(), String> {
        let origins = [self.repository.is_some(), self.oci_repository.is_some(), self.path.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if origins != 1 {
            return Err("spec.helm: set exactly one of repository, ociRepository, path".into());
        }
        if self.repository.is_some() {
            let chart = self.chart.as_deref().ok_or("spec.helm.chart: a repository chart needs its name")?;
            crate::chartsrc::check_chart_name(chart).map_err(|e| format!("spec.helm.chart: {e}"))?;
            if !self.values_files.is_empty() {
                return Err("spec.helm.valuesFiles: values files are read from a GitSource; a chart \
                            from a repository takes values and valuesFrom"
                    .into());
            }
            if let Some(v) = self.version.as_deref().filter(|v| !v.is_empty())
                && semver::Version::parse(v.strip_prefix(['v', 'V']).unwrap_or(v)).is_err()
            {
                crate::chartsrc::parse_version_range(v).map_err(|e| format!("spec.helm.version {e}"))?;
            }
        }
        if self.oci_repository.is_some() {
            if let Some(chart) = self.chart.as_deref() {
                chart
                    .split('/')
                    .try_for_each(crate::chartsrc::check_chart_name)
                    .map_err(|e| format!("spec.helm.chart: {e}"))?;
            }
            if !self.values_files.is_empty() {
                return Err("spec.helm.valuesFiles: values files are read from a GitSource; a chart \
                            from a repository takes values and valuesFrom"
                    .into());
            }
            match (&self.version, &self.digest) {
                (Some(_), Some(_)) => return Err("spec.helm: set version or digest, not both".into()),
                (_, Some(d)) if !crate::chartsrc::is_sha256_digest(d) => {
                    return Err(format!("spec.helm.digest {d:?} must be sha256:<64 lowercase hex>"));
                }
                _ => {}
            }
        } else if self.digest.is_some() {
            return Err("spec.helm.digest: only for a chart from an ociRepository".into());
        }
        if let Some(p) = &self.path {
            check_bundle_path(p).map_err(|e| format!("spec.helm.path: {e}"))?;
        }
        for (i, f) in self.values_files.iter().enumerate() {
            check_bundle_path(f).map_err(|e| format!("spec.helm.valuesFiles[{i}]: {e}"))?;
        }
        if let Some(v) = &self.values
            && !v.is_object()
        {
            return Err("spec.helm.values must be a mapping".into());
        }
        for (i, v) in self.values_from.iter().enumerate() {
            if v.file.trim().is_empty() {
                return Err(format!("spec.helm.valuesFrom[{i}].file must not be empty"));
            }
            if v.target_path.as_deref().is_some_and(|t| t.split('.').any(str::is_empty)) {
                return Err(format!("spec.helm.valuesFrom[{i}].targetPath has an empty segment"));
            }
        }
        if let Some(n) = &self.release_name {
            validate_name(n).map_err(|e| format!("spec.helm.releaseName: {e}"))?;
        }
        if let Some(n) = &self.namespace {
            validate_name(n).map_err(|e| format!("spec.helm.namespace: {e}"))?;
        }
        Ok(())
    }
}

fn default_path() -> String {
    ".".into()
}

fn default_true() -> bool {
    true
}

fn default_bundle_timeout() -> HumanDuration {
    HumanDuration::from_secs(300)
}

/// What the agent does about drift.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriftMode {
    /// Put drifted objects back and report DriftCorrected.
    #[default]
    Correct,
    /// Only report DriftDetected.
    Detect,
}

impl DriftMode {
    /// The config and flag spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DriftMode::Correct => "correct",
            DriftMode::Detect => "detect",
        }
    }
}

impl std::str::FromStr for DriftMode {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "correct" => Ok(DriftMode::Correct),
            "detect" => Ok(DriftMode::Detect),
            _ => Err(format!("unknown drift mode {s:?} (expected correct or detect)")),
        }
    }
}

impl std::fmt::Display for DriftMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One target entry. When both fields are set, both must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Target {
    /// A cluster name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_name: Option<String>,
    /// A label selector over cluster labels. `{}` matches every cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_selector: Option<LabelSelector>,
    /// A `ClusterGroup` name: the entry matches the group's selector (ANDed
    /// with the other two fields when they are set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_group: Option<String>,
    /// Customization: put every namespaced object of the bundle in this
    /// namespace (kustomize's `namespace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Customization: the clusters this entry matches do NOT get the bundle,
    /// whatever other entries say.
    #[serde(default)]
    pub do_not_deploy: bool,
    /// Customization: cluster variables for substitution, over the cluster's
    /// own (later matching entries win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, String>,
    /// Customization: kustomize patches, strategic merge or JSON 6902.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patches: Vec<Patch>,
    /// Customization: Helm values, kept as data for Helm bundles (merged over
    /// the bundle's values in entry order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helm_values: Option<serde_json::Value>,
    /// The `clusterGroup`'s selector, filled by [`FleetConfig::resolve_groups`].
    #[serde(skip)]
    pub group_selector: Option<LabelSelector>,
}

/// A kustomize patch of a target entry, written as in a kustomization's
/// `patches:` list: a strategic-merge patch (a partial object naming its
/// `apiVersion`, `kind` and `metadata.name`), or a JSON 6902 patch (a list of
/// operations) with a `target`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Patch {
    /// The patch text (YAML).
    pub patch: String,
    /// Which objects it applies to (needed for JSON 6902).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<PatchTarget>,
}

/// The objects a patch applies to (kustomize's patch `target`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PatchTarget {
    /// API group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// API version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Object name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Object namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Label selector (string form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<String>,
}

impl Target {
    /// Whether the entry carries a customization layer (namespace, patches
    /// or Helm values); vars are not a layer of their own, they feed
    /// substitution.
    pub fn has_layer(&self) -> bool {
        self.namespace.is_some() || !self.patches.is_empty() || self.helm_values.is_some()
    }
}

/// A bundle's `substitute:` settings (`substitute: {}` opts in).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubstituteSpec {
    /// Bundle-level variable values, below every cluster's own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, String>,
}

// ---------------------------------------------------------------------------
// Cluster and ClusterGroup
// ---------------------------------------------------------------------------

/// `kind: Cluster`: labels and variables for the registered clusters it
/// matches (by `name`, `selector`, or both).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterSpec {
    /// The cluster name this document applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A selector over the clusters' registered labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Labels added to the matching clusters (used for targeting and
    /// `cluster.labels.*`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Variables of the matching clusters (`cluster.vars.*`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, String>,
}

impl ClusterSpec {
    /// Whether the document applies to the cluster (`registered` labels).
    pub fn matches(&self, cluster: &str, registered: &Labels) -> bool {
        if self.name.is_none() && self.selector.is_none() {
            return false;
        }
        self.name.as_deref().is_none_or(|n| n == cluster)
            && self.selector.as_ref().is_none_or(|s| s.matches(registered))
    }
}

/// `kind: ClusterGroup`: a named cluster selector, for `targets[].clusterGroup`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterGroupSpec {
    /// The selector over cluster labels.
    pub selector: LabelSelector,
}

impl Target {
    /// Whether this entry selects the cluster.
    pub fn matches(&self, cluster: &str, labels: &Labels) -> bool {
        if self.cluster_name.is_none() && self.cluster_selector.is_none() && self.cluster_group.is_none() {
            return false;
        }
        // A group that was not resolved matches nothing (validation refuses
        // unknown groups, so this only happens on an unresolved config).
        if self.cluster_group.is_some() && self.group_selector.is_none() {
            return false;
        }
        self.cluster_name.as_deref().is_none_or(|n| n == cluster)
            && self.cluster_selector.as_ref().is_none_or(|s| s.matches(labels))
            && self.group_selector.as_ref().is_none_or(|s| s.matches(labels))
    }
}

impl BundleSpec {
    /// Whether the bundle targets the cluster: an entry matches it and no
    /// matching entry says `doNotDeploy`.
    pub fn targets_cluster(&self, cluster: &str, labels: &Labels) -> bool {
        let mut any = false;
        for t in self.targets.iter().filter(|t| t.matches(cluster, labels)) {
            if t.do_not_deploy {
                return false;
            }
            any = true;
        }
        any
    }

    /// The bundle's tenancy rules.
    pub fn tenancy(&self) -> crate::tenancy::Tenancy {
        crate::tenancy::Tenancy {
            allowed_namespaces: self.allowed_namespaces.clone(),
            allowed_kinds: self.allowed_kinds.clone(),
            allow_cluster_scoped: self.allow_cluster_scoped,
        }
    }
}

// ---------------------------------------------------------------------------
// Provider and Alert
// ---------------------------------------------------------------------------

/// `kind: Provider`: where alerts are delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderSpec {
    /// webhook, generic-hmac, slack, teams, discord or alertmanager.
    #[serde(rename = "type")]
    pub type_: String,
    /// The endpoint URL. Use addressFile when the URL is a secret (Slack).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// A file holding the endpoint URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_file: Option<String>,
    /// A file holding the HMAC key (generic-hmac) or a bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<String>,
    /// Delivery timeout per attempt. Default 10s.
    #[serde(default = "default_provider_timeout")]
    pub timeout: HumanDuration,
    /// Stop delivering.
    #[serde(default)]
    pub suspend: bool,
    /// The channel to post to (slack: overrides the webhook's default
    /// channel where the endpoint allows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// The sender name shown (slack, discord).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Allow sending the bearer token (`secretFile`) over plain http to a
    /// loopback IP literal. Off: bearer tokens go over https only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_insecure_loopback: bool,
}

/// The provider types a [`ProviderSpec`] may name.
pub const PROVIDER_TYPES: [&str; 6] =
    ["webhook", "generic-hmac", "slack", "teams", "discord", "alertmanager"];

fn default_provider_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}

/// `kind: Alert`: which events go to which provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AlertSpec {
    /// The Provider name.
    pub provider_ref: String,
    /// The least severity to deliver. Default info.
    #[serde(default)]
    pub severity: Severity,
    /// Only events of these bundles (empty: all, `*` also means all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bundles: Vec<String>,
    /// Only events from clusters matching this selector (unset: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_selector: Option<LabelSelector>,
    /// Only events with these reasons (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// Suppress identical events within this window. Default 5m.
    #[serde(default = "default_suppress")]
    pub suppress_window: HumanDuration,
    /// Stop alerting.
    #[serde(default)]
    pub suspend: bool,
}

fn default_suppress() -> HumanDuration {
    HumanDuration::from_secs(300)
}

// ---------------------------------------------------------------------------
// The fleet
// ---------------------------------------------------------------------------

/// A named, located config object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named<T> {
    /// metadata.name
    pub name: String,
    /// The whole metadata.
    pub metadata: Metadata,
    /// The spec.
    pub spec: T,
    /// Where it was read from (file and document index), for error messages.
    pub origin: String,
}

/// The whole fleet config, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetConfig {
    /// Sources by name.
    pub sources: BTreeMap<String, Named<GitSourceSpec>>,
    /// Bundles by name.
    pub bundles: BTreeMap<String, Named<BundleSpec>>,
    /// Providers by name.
    pub providers: BTreeMap<String, Named<ProviderSpec>>,
    /// Alerts by name.
    pub alerts: BTreeMap<String, Named<AlertSpec>>,
    /// Cluster documents by name (applied in name order).
    pub clusters: BTreeMap<String, Named<ClusterSpec>>,
    /// Cluster groups by name.
    pub cluster_groups: BTreeMap<String, Named<ClusterGroupSpec>>,
    /// HelmRepository sources by name (names are shared with GitSources).
    pub helm_repositories: BTreeMap<String, Named<crate::chartsrc::HelmRepositorySpec>>,
    /// OCIRepository sources by name (names are shared with the other kinds).
    pub oci_repositories: BTreeMap<String, Named<crate::chartsrc::OciRepositorySpec>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Envelope<T> {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    #[serde(default)]
    metadata: Metadata,
    spec: T,
}

/// The document kinds of the fleet config.
pub const FLEET_KINDS: [&str; 8] = [
    "GitSource",
    "Bundle",
    "Provider",
    "Alert",
    "Cluster",
    "ClusterGroup",
    "HelmRepository",
    "OCIRepository",
];

impl FleetConfig {
    /// Parse documents from one file's text and add them. Kinds listed in
    /// `skip_kinds` are ignored (the hub's own settings document, for one).
    pub fn add_text(&mut self, file: &str, text: &str, skip_kinds: &[&str]) -> Result<()> {
        for doc in documents(text) {
            let header: Header = parse_document(file, &doc)?;
            if skip_kinds.contains(&header.kind.as_str()) {
                continue;
            }
            let invalid = |msg: String| Error::Invalid {
                file: format!("{file} (document {})", doc.index),
                kind: header.kind.clone(),
                name: String::new(),
                message: msg,
            };
            if header.api_version != API_VERSION {
                return Err(invalid(format!(
                    "apiVersion must be {API_VERSION:?}, found {:?}",
                    header.api_version
                )));
            }
            match header.kind.as_str() {
                "GitSource" => insert(&mut self.sources, file, &doc, "GitSource")?,
                "Bundle" => {
                    insert(&mut self.bundles, file, &doc, "Bundle")?;
                    chart_source_as_bundle_source(&mut self.bundles);
                }
                "Provider" => insert(&mut self.providers, file, &doc, "Provider")?,
                "Alert" => insert(&mut self.alerts, file, &doc, "Alert")?,
                "Cluster" => insert(&mut self.clusters, file, &doc, "Cluster")?,
                "ClusterGroup" => insert(&mut self.cluster_groups, file, &doc, "ClusterGroup")?,
                "HelmRepository" => insert(&mut self.helm_repositories, file, &doc, "HelmRepository")?,
                "OCIRepository" => insert(&mut self.oci_repositories, file, &doc, "OCIRepository")?,
                other => {
                    return Err(invalid(format!(
                        "unknown kind {other:?}; expected one of {}",
                        FLEET_KINDS.join(", ")
                    )));
                }
            }
        }
        Ok(())
    }

    /// Parse a complete config from `(file, text)` pairs and validate it.
    pub fn parse<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self> {
        let mut cfg = FleetConfig::default();
        for (file, text) in files {
            cfg.add_text(file, text, &[])?;
        }
        cfg.validate()?;
        cfg.resolve_groups();
        Ok(cfg)
    }

    /// Check cross-references: bundles name existing sources, dependsOn names
    /// existing bundles without cycles, alerts name existing providers.
    pub fn validate(&self) -> Result<()> {
        for (name, b) in &self.bundles {
            let invalid = |m: String| Error::Invalid {
                file: b.origin.clone(),
                kind: "Bundle".into(),
                name: name.clone(),
                message: m,
            };
            b.spec.helm.as_ref().map(HelmSpec::check).transpose().map_err(invalid)?;
            let chart_repo = b.spec.helm.as_ref().and_then(|h| {
                h.repository
                    .as_ref()
                    .map(|r| (r, "repository", "HelmRepository", self.helm_repositories.contains_key(r)))
                    .or_else(|| {
                        h.oci_repository.as_ref().map(|r| {
                            (r, "ociRepository", "OCIRepository", self.oci_repositories.contains_key(r))
                        })
                    })
            });
            if let Some((repo, field, kind, exists)) = chart_repo {
                if !exists {
                    return Err(invalid(format!("spec.helm.{field}: no {kind} named {repo:?}")));
                }
                if !b.spec.source.is_empty() && b.spec.source != *repo {
                    return Err(invalid(format!(
                        "spec.source {:?}: a chart from a repository is built by that repository; \
                         leave spec.source out or set it to {repo:?}",
                        b.spec.source
                    )));
                }
            } else if b.spec.source.is_empty() {
                return Err(invalid("spec.source: the GitSource name is required".into()));
            } else if !self.sources.contains_key(&b.spec.source) {
                return Err(invalid(format!("spec.source: no GitSource named {:?}", b.spec.source)));
            }
            check_bundle_path(&b.spec.path).map_err(invalid)?;
            if let Some(e) = b.spec.tenancy().validate().into_iter().next() {
                return Err(invalid(format!("spec.{e}")));
            }
            if let Some(e) = b.spec.rollout.as_ref().and_then(|r| r.validate().into_iter().next()) {
                return Err(invalid(format!("spec.{e}")));
            }
            for d in &b.spec.depends_on {
                if !self.bundles.contains_key(d) {
                    return Err(invalid(format!("spec.dependsOn: no Bundle named {d:?}")));
                }
            }
            for (i, t) in b.spec.targets.iter().enumerate() {
                if t.cluster_name.is_none() && t.cluster_selector.is_none() && t.cluster_group.is_none() {
                    return Err(invalid(format!(
                        "spec.targets[{i}]: set clusterName, clusterSelector or clusterGroup"
                    )));
                }
                if let Some(g) = &t.cluster_group
                    && !self.cluster_groups.contains_key(g)
                {
                    return Err(invalid(format!(
                        "spec.targets[{i}].clusterGroup: no ClusterGroup named {g:?}"
                    )));
                }
                if let Some(ns) = &t.namespace {
                    validate_name(ns).map_err(|e| invalid(format!("spec.targets[{i}].namespace: {e}")))?;
                }
                // A Helm bundle is customized through its values (its artifact's
                // layout is Helm's release, which kustomize would flatten).
                if b.spec.helm.is_some() && (t.namespace.is_some() || !t.patches.is_empty()) {
                    return Err(invalid(format!(
                        "spec.targets[{i}]: namespace and patches do not apply to a Helm bundle; use helmValues"
                    )));
                }
                if let Some(v) = &t.helm_values
                    && !v.is_object()
                {
                    return Err(invalid(format!("spec.targets[{i}].helmValues must be a mapping")));
                }
                for (j, p) in t.patches.iter().enumerate() {
                    if p.patch.trim().is_empty() {
                        return Err(invalid(format!("spec.targets[{i}].patches[{j}].patch is empty")));
                    }
                }
                if let Some(sel) = &t.cluster_selector {
                    sel.validate().map_err(|e| invalid(format!("spec.targets[{i}]: {e}")))?;
                }
            }
        }
        if let Some(cycle) = self.dependency_cycle() {
            let b = &self.bundles[&cycle[0]];
            return Err(Error::Invalid {
                file: b.origin.clone(),
                kind: "Bundle".into(),
                name: cycle[0].clone(),
                message: format!("spec.dependsOn forms a cycle: {}", cycle.join(" -> ")),
            });
        }
        for (name, s) in &self.sources {
            let invalid = |m: String| Error::Invalid {
                file: s.origin.clone(),
                kind: "GitSource".into(),
                name: name.clone(),
                message: m,
            };
            if s.spec.url.trim().is_empty() {
                return Err(invalid("spec.url must not be empty".into()));
            }
            if let Some(c) = &s.spec.git_ref.commit
                && (c.len() != 40 || !c.chars().all(|c| c.is_ascii_hexdigit()))
            {
                return Err(invalid(format!("spec.ref.commit {c:?} is not a full 40-hex SHA-1")));
            }
            if let Some(r) = &s.spec.git_ref.semver {
                semver::VersionReq::parse(r).map_err(|e| invalid(format!("spec.ref.semver {r:?}: {e}")))?;
            }
            if let Some(auth) = &s.spec.auth {
                let n = [auth.basic.is_some(), auth.bearer_token_file.is_some(), auth.ssh.is_some()]
                    .into_iter()
                    .filter(|b| *b)
                    .count();
                if n > 1 {
                    return Err(invalid("spec.auth: set only one of basic, bearerTokenFile, ssh".into()));
                }
            }
            if let Some(t) = s.spec.webhook.as_ref().and_then(|w| w.type_.as_ref())
                && !WEBHOOK_TYPES.contains(&t.as_str())
            {
                return Err(invalid(format!(
                    "spec.webhook.type must be one of {}, found {t:?}",
                    WEBHOOK_TYPES.join(", ")
                )));
            }
            if let Some(v) = &s.spec.verify
                && v.mode != "ssh"
                && v.mode != "gpg"
            {
                return Err(invalid(format!("spec.verify.mode must be ssh or gpg, found {:?}", v.mode)));
            }
        }
        for (name, r) in &self.helm_repositories {
            let invalid = |m: String| Error::Invalid {
                file: r.origin.clone(),
                kind: "HelmRepository".into(),
                name: name.clone(),
                message: m,
            };
            if let Some(g) = self.sources.get(name) {
                return Err(invalid(format!(
                    "metadata.name: a GitSource has this name ({}); source names are shared by all source kinds",
                    g.origin
                )));
            }
            r.spec.check().map_err(invalid)?;
        }
        for (name, r) in &self.oci_repositories {
            let invalid = |m: String| Error::Invalid {
                file: r.origin.clone(),
                kind: "OCIRepository".into(),
                name: name.clone(),
                message: m,
            };
            let other = self.sources.get(name).map(|g| g.origin.clone());
            if let Some(o) = other.or_else(|| self.helm_repositories.get(name).map(|h| h.origin.clone())) {
                return Err(invalid(format!(
                    "metadata.name: another source has this name ({o}); source names are shared by all source kinds"
                )));
            }
            r.spec.check().map_err(invalid)?;
        }
        for (name, c) in &self.clusters {
            if c.spec.name.is_none() && c.spec.selector.is_none() {
                return Err(Error::Invalid {
                    file: c.origin.clone(),
                    kind: "Cluster".into(),
                    name: name.clone(),
                    message: "set spec.name, spec.selector or both".into(),
                });
            }
            if let Some(sel) = &c.spec.selector {
                sel.validate().map_err(|e| Error::Invalid {
                    file: c.origin.clone(),
                    kind: "Cluster".into(),
                    name: name.clone(),
                    message: format!("spec.selector: {e}"),
                })?;
            }
        }
        for (name, g) in &self.cluster_groups {
            g.spec.selector.validate().map_err(|e| Error::Invalid {
                file: g.origin.clone(),
                kind: "ClusterGroup".into(),
                name: name.clone(),
                message: format!("spec.selector: {e}"),
            })?;
        }
        for (name, p) in &self.providers {
            let invalid = |m: String| Error::Invalid {
                file: p.origin.clone(),
                kind: "Provider".into(),
                name: name.clone(),
                message: m,
            };
            if !PROVIDER_TYPES.contains(&p.spec.type_.as_str()) {
                return Err(invalid(format!(
                    "spec.type must be one of {}, found {:?}",
                    PROVIDER_TYPES.join(", "),
                    p.spec.type_
                )));
            }
            if p.spec.address.is_none() == p.spec.address_file.is_none() {
                return Err(invalid("set exactly one of spec.address and spec.addressFile".into()));
            }
            if let Some(a) = &p.spec.address
                && !is_http_url(a)
            {
                // The address may hold a secret (a Slack webhook path): do not echo it.
                return Err(invalid("spec.address must be an http:// or https:// URL".into()));
            }
            if p.spec.type_ == "generic-hmac" && p.spec.secret_file.is_none() {
                return Err(invalid("generic-hmac needs spec.secretFile".into()));
            }
            if p.spec.timeout.get().is_zero() {
                return Err(invalid("spec.timeout must be more than 0".into()));
            }
        }
        for (name, a) in &self.alerts {
            let invalid = |m: String| Error::Invalid {
                file: a.origin.clone(),
                kind: "Alert".into(),
                name: name.clone(),
                message: m,
            };
            if !self.providers.contains_key(&a.spec.provider_ref) {
                return Err(invalid(format!(
                    "spec.providerRef: no Provider named {:?}",
                    a.spec.provider_ref
                )));
            }
            if let Some(sel) = &a.spec.cluster_selector {
                sel.validate().map_err(|e| invalid(format!("spec.clusterSelector: {e}")))?;
            }
            if a.spec.reasons.iter().any(|r| r.trim().is_empty()) {
                return Err(invalid("spec.reasons: empty reason".into()));
            }
        }
        Ok(())
    }

    /// A dependsOn cycle, if any, as the list of bundle names around it.
    fn dependency_cycle(&self) -> Option<Vec<String>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Visiting,
            Done,
        }
        fn visit(
            cfg: &FleetConfig,
            n: &str,
            marks: &mut BTreeMap<String, Mark>,
            stack: &mut Vec<String>,
        ) -> Option<Vec<String>> {
            match marks.get(n) {
                Some(Mark::Done) => return None,
                Some(Mark::Visiting) => {
                    let start = stack.iter().position(|s| s == n).unwrap_or(0);
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(n.to_string());
                    return Some(cycle);
                }
                None => {}
            }
            marks.insert(n.to_string(), Mark::Visiting);
            stack.push(n.to_string());
            if let Some(b) = cfg.bundles.get(n) {
                for d in &b.spec.depends_on {
                    if let Some(c) = visit(cfg, d, marks, stack) {
                        return Some(c);
                    }
                }
            }
            stack.pop();
            marks.insert(n.to_string(), Mark::Done);
            None
        }
        let mut marks = BTreeMap::new();
        for n in self.bundles.keys() {
            let mut stack = Vec::new();
            if let Some(c) = visit(self, n, &mut marks, &mut stack) {
                return Some(c);
            }
        }
        None
    }

    /// Copy each `targets[].clusterGroup`'s selector into its entry, so that
    /// [`Target::matches`] needs no fleet. Call after [`FleetConfig::validate`]
    /// ([`FleetConfig::parse`] does); unknown groups stay unresolved and match
    /// nothing.
    pub fn resolve_groups(&mut self) {
        let groups = self.cluster_groups.clone();
        for b in self.bundles.values_mut() {
            for t in &mut b.spec.targets {
                t.group_selector =
                    t.cluster_group.as_ref().and_then(|g| groups.get(g)).map(|g| g.spec.selector.clone());
            }
        }
    }

    /// A cluster's effective labels and vars: its `registered` labels, then
    /// the labels and vars of every matching `Cluster` document in name order
    /// (later documents win on a key). Documents match on registered labels.
    pub fn cluster_facts(&self, cluster: &str, registered: &Labels) -> (Labels, BTreeMap<String, String>) {
        let mut labels = registered.clone();
        let mut vars = BTreeMap::new();
        for c in self.clusters.values().filter(|c| c.spec.matches(cluster, registered)) {
            for (k, v) in &c.spec.labels {
                labels.insert(k.clone(), v.clone());
            }
            vars.extend(c.spec.vars.clone());
        }
        (labels, vars)
    }

    /// The ClusterGroups a cluster is in: those whose selector matches its
    /// effective `labels` (from [`FleetConfig::cluster_facts`]).
    pub fn groups_of(&self, labels: &Labels) -> Vec<String> {
        self.cluster_groups
            .iter()
            .filter(|(_, g)| g.spec.selector.matches(labels))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The names of the bundles that target a cluster.
    pub fn bundles_for(&self, cluster: &str, labels: &Labels) -> BTreeSet<String> {
        self.bundles
            .iter()
            .filter(|(_, b)| b.spec.targets_cluster(cluster, labels))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Every source name, of every source kind (GitSource, HelmRepository),
    /// in name order. Source names are unique across kinds.
    pub fn source_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .sources
            .keys()
            .chain(self.helm_repositories.keys())
            .chain(self.oci_repositories.keys())
            .cloned()
            .collect();
        v.sort();
        v
    }

    /// Whether `name` is a source of any kind.
    pub fn has_source(&self, name: &str) -> bool {
        self.sources.contains_key(name)
            || self.helm_repositories.contains_key(name)
            || self.oci_repositories.contains_key(name)
    }

    /// Whether the source `name` (of any kind) is suspended in the config.
    pub fn source_suspended(&self, name: &str) -> bool {
        self.sources.get(name).map(|s| s.spec.suspend).unwrap_or(false)
            || self.helm_repositories.get(name).map(|s| s.spec.suspend).unwrap_or(false)
            || self.oci_repositories.get(name).map(|s| s.spec.suspend).unwrap_or(false)
    }

    /// The bundles built from a source.
    pub fn bundles_of_source<'a>(
        &'a self,
        source: &'a str,
    ) -> impl Iterator<Item = &'a Named<BundleSpec>> + 'a {
        self.bundles.values().filter(move |b| b.spec.source == source)
    }
}

/// A bundle whose chart comes from a repository and that names no source is
/// built by that repository: its `source` becomes the repository's name.
fn chart_source_as_bundle_source(bundles: &mut BTreeMap<String, Named<BundleSpec>>) {
    for b in bundles.values_mut() {
        if b.spec.source.is_empty()
            && let Some(r) =
                b.spec.helm.as_ref().and_then(|h| h.repository.clone().or(h.oci_repository.clone()))
        {
            b.spec.source = r;
        }
    }
}

/// Whether `s` looks like an absolute http(s) URL with a host.
fn is_http_url(s: &str) -> bool {
    let rest = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://"));
    rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace))
}

/// A bundle path must be relative and stay inside the repository.
pub fn check_bundle_path(path: &str) -> std::result::Result<(), String> {
    if path.starts_with('/') || path.contains('\\') {
        return Err(format!("spec.path {path:?} must be a relative path with '/' separators"));
    }
    let mut depth = 0i32;
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("spec.path {path:?} escapes the repository"));
                }
            }
            _ => depth += 1,
        }
    }
    Ok(())
}

fn insert<T: DeserializeOwned>(
    map: &mut BTreeMap<String, Named<T>>,
    file: &str,
    doc: &Document<'_>,
    kind: &str,
) -> Result<()> {
    let env: Envelope<T> = parse_document(file, doc)?;
    let origin = format!("{file} (document {})", doc.index);
    let name = env.metadata.name.clone();
    validate_name(&name).map_err(|e| Error::Invalid {
        file: origin.clone(),
        kind: kind.into(),
        name: name.clone(),
        message: format!("metadata.name: {e}"),
    })?;
    if let Some(prev) = map.get(&name) {
        return Err(Error::Invalid {
            file: origin,
            kind: kind.into(),
            name,
            message: format!("duplicate name; first defined in {}", prev.origin),
        });
    }
    map.insert(name.clone(), Named { name, metadata: env.metadata, spec: env.spec, origin });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLEET: &str = r#"
apiVersion: convoy.dev/v1
kind: GitSource
metadata:
  name: fleet
spec:
  url: https://example.com/fleet.git
  ref:
    branch: main
  interval: 30s
---
apiVersion: convoy.dev/v1
kind: Bundle
metadata:
  name: infra
spec:
  source: fleet
  path: infra
  targets:
    - clusterSelector: {}
---
apiVersion: convoy.dev/v1
kind: Bundle
metadata:
  name: app
spec:
  source: fleet
  path: apps/overlays/prod
  dependsOn: [infra]
  targets:
    - clusterSelector:
        matchLabels: {env: prod}
    - clusterName: dev-1
  targetNamespace: app
"#;

    fn labels(s: &str) -> Labels {
        crate::selector::parse_labels([s]).unwrap()
    }

    fn helm_bundle(helm: &str) -> Result<FleetConfig> {
        let text = format!(
            "apiVersion: convoy.dev/v1\nkind: GitSource\nmetadata:\n  name: repo\nspec:\n  url: https://x/r.git\n---\n\
             apiVersion: convoy.dev/v1\nkind: Bundle\nmetadata:\n  name: web\nspec:\n  source: repo\n  helm:\n{helm}"
        );
        FleetConfig::parse([("fleet.yaml", text.as_str())])
    }

    #[test]
    fn helm_bundles_need_exactly_one_supported_chart_origin() {
        let f = helm_bundle(
            "    path: charts/web\n    values: {a: 1}\n    valuesFiles: [envs/prod.yaml]\n    valuesFrom:\n    - {file: /etc/v.yaml, key: k, targetPath: a.b}\n    crds: Skip\n    maxHistory: 3\n",
        )
        .unwrap();
        let h = f.bundles["web"].spec.helm.clone().unwrap();
        assert_eq!(h.path.as_deref(), Some("charts/web"));
        assert_eq!(h.values, Some(serde_json::json!({"a": 1})));
        assert_eq!(h.values_from[0].target_path.as_deref(), Some("a.b"));
        assert_eq!((h.crds, h.max_history), (CrdPolicy::Skip, Some(3)));
        assert!(f.bundles["web"].spec.helm.is_some());
        let msg = |helm: &str| helm_bundle(helm).unwrap_err().to_string();
        assert!(msg("    chart: web\n").contains("set exactly one of repository, ociRepository, path"));
        assert!(
            msg("    path: a\n    repository: r\n")
                .contains("set exactly one of repository, ociRepository, path")
        );
        assert!(msg("    repository: r\n    chart: web\n").contains("no HelmRepository named \"r\""));
        assert!(msg("    ociRepository: r\n").contains("no OCIRepository named \"r\""));
        assert!(
            msg("    path: a\n    digest: sha256:00\n").contains("only for a chart from an ociRepository")
        );
        assert!(msg("    path: ../../x\n").contains("spec.helm.path"));
        assert!(msg("    path: a\n    values: [1]\n").contains("spec.helm.values must be a mapping"));
        assert!(
            msg("    path: a\n    valuesFrom: [{file: f, targetPath: a..b}]\n").contains("empty segment")
        );
        assert!(msg("    path: a\n    crds: Sometimes\n").contains("Sometimes"));
        assert!(msg("    path: a\n    chartz: x\n").contains("chartz"), "unknown fields are refused");
    }

    #[test]
    fn helm_repository_sources_and_the_bundles_that_use_them() {
        let repo = "apiVersion: convoy.dev/v1\nkind: HelmRepository\nmetadata:\n  name: charts\nspec:\n  url: https://charts.example.com/stable\n  interval: 5m\n  basicAuthFile: /etc/convoy/charts-auth\n  caFile: /etc/convoy/ca.pem\n";
        let bundle = |extra: &str| {
            format!(
                "{repo}---\napiVersion: convoy.dev/v1\nkind: Bundle\nmetadata:\n  name: web\nspec:\n{extra}  helm:\n    repository: charts\n    chart: podinfo\n    version: \">=6.0.0 <7.0.0\"\n"
            )
        };
        let f = FleetConfig::parse([("f.yaml", bundle("").as_str())]).unwrap();
        let r = &f.helm_repositories["charts"].spec;
        assert_eq!((r.interval.get().as_secs(), r.timeout.get().as_secs()), (300, 60));
        assert_eq!(r.basic_auth_file.as_deref(), Some("/etc/convoy/charts-auth"));
        assert_eq!(f.bundles["web"].spec.source, "charts", "the repository builds the bundle");
        assert_eq!(f.bundles_of_source("charts").count(), 1);
        assert_eq!(f.source_names(), ["charts"]);
        assert!(f.has_source("charts") && !f.source_suspended("charts"));
        // Naming the repository as the source is the same; another source is refused.
        let f2 = FleetConfig::parse([("f.yaml", bundle("  source: charts\n").as_str())]).unwrap();
        assert_eq!(f2.bundles, f.bundles);
        let git = "---\napiVersion: convoy.dev/v1\nkind: GitSource\nmetadata:\n  name: fleet\nspec:\n  url: https://x/r.git\n";
        let text = format!("{}{git}", bundle("  source: fleet\n"));
        let e = FleetConfig::parse([("f.yaml", text.as_str())]).unwrap_err().to_string();
        assert!(e.contains("leave spec.source out"), "{e}");
        // Source names are shared across kinds.
        let text = format!("{}{}", bundle(""), git.replace("name: fleet", "name: charts"));
        let e = FleetConfig::parse([("f.yaml", text.as_str())]).unwrap_err().to_string();
        assert!(e.contains("shared by all source kinds"), "{e}");
        // The chart's name is required, valuesFiles need a GitSource, versions must parse.
        let e = FleetConfig::parse([("f.yaml", bundle("").replace("    chart: podinfo\n", "").as_str())])
            .unwrap_err()
            .to_string();
        assert!(e.contains("spec.helm.chart"), "{e}");
        let text = format!("{}    valuesFiles: [v.yaml]\n", bundle(""));
        let e = FleetConfig::parse([("f.yaml", text.as_str())]).unwrap_err().to_string();
        assert!(e.contains("spec.helm.valuesFiles"), "{e}");
        let text = bundle("").replace(">=6.0.0 <7.0.0", "six");
        let e = FleetConfig::parse([("f.yaml", text.as_str())]).unwrap_err().to_string();
        assert!(e.contains("spec.helm.version"), "{e}");
        // A bundle without a source and without a repository chart is refused.
        let text = format!(
            "{git}---\napiVersion: convoy.dev/v1\nkind: Bundle\nmetadata:\n  name: x\nspec:\n  path: a\n"
        );
        let e = FleetConfig::parse([("f.yaml", text.as_str())]).unwrap_err().to_string();
        assert!(e.contains("spec.source: the GitSource name is required"), "{e}");
        // The repository's own checks name the field.
        let text = bundle("").replace("https://charts.example.com/stable", "http://charts.example.com");
        let e = FleetConfig::parse([("f.yaml", text.as_str())]).unwrap_err().to_string();
        assert!(e.contains("HelmRepository") && e.contains("https only"), "{e}");
    }

    #[test]
    fn oci_repository_sources_and_the_bundles_that_use_them() {
        let repo = "apiVersion: convoy.dev/v1\nkind: OCIRepository\nmetadata:\n  name: ghcr\nspec:\n  url: oci://ghcr.io/stefanprodan/charts\n";
        let bundle = |pick: &str| {
            format!(
                "{repo}---\napiVersion: convoy.dev/v1\nkind: Bundle\nmetadata:\n  name: web\nspec:\n  helm:\n    ociRepository: ghcr\n    chart: podinfo\n{pick}"
            )
        };
        let f = FleetConfig::parse([("f.yaml", bundle("    version: \"^6\"\n").as_str())]).unwrap();
        assert_eq!(f.bundles["web"].spec.source, "ghcr");
        assert_eq!(f.source_names(), ["ghcr"]);
        assert_eq!(f.oci_repositories["ghcr"].spec.interval.get().as_secs(), 600);
        let d = format!("sha256:{}", "ab".repeat(32));
        let f = FleetConfig::parse([("f.yaml", bundle(&format!("    digest: {d}\n")).as_str())]).unwrap();
        assert_eq!(f.bundles["web"].spec.helm.as_ref().unwrap().digest.as_deref(), Some(d.as_str()));
        let e = |pick: &str| FleetConfig::parse([("f.yaml", bundle(pick).as_str())]).unwrap_err().to_string();
        assert!(e(&format!("    version: \"6\"\n    digest: {d}\n")).contains("not both"));
        assert!(e("    digest: sha256:ab\n").contains("spec.helm.digest"));
        let text = format!(
            "{}---\napiVersion: convoy.dev/v1\nkind: HelmRepository\nmetadata:\n  name: ghcr\nspec:\n  url: https://x\n",
            bundle("")
        );
        let e = FleetConfig::parse([("f.yaml", text.as_str())]).unwrap_err().to_string();
        assert!(e.contains("shared by all source kinds"), "{e}");
    }

    #[test]
    fn parses_and_targets() {
        let cfg = FleetConfig::parse([("fleet.yaml", FLEET)]).unwrap();
        assert_eq!(cfg.sources["fleet"].spec.interval.get().as_secs(), 30);
        let app = &cfg.bundles["app"].spec;
        assert!(app.prune && app.wait);
        assert_eq!(app.timeout.get().as_secs(), 300);
        assert_eq!(cfg.bundles_for("a", &labels("env=prod")).len(), 2);
        assert_eq!(cfg.bundles_for("b", &labels("env=staging")).len(), 1);
        assert_eq!(cfg.bundles_for("dev-1", &labels("env=dev")).len(), 2);
    }

    #[test]
    fn unknown_field_names_file_and_line() {
        let text = FLEET.replace("  interval: 30s", "  intervall: 30s");
        let err = FleetConfig::parse([("fleet.yaml", text.as_str())]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("fleet.yaml") && msg.contains("document 0"), "{msg}");
        assert!(msg.contains("intervall"), "{msg}");
        assert!(matches!(err, Error::Yaml { line: Some(_), .. }), "{err:?}");
    }

    #[test]
    fn cross_references_are_checked() {
        let text = FLEET.replace("dependsOn: [infra]", "dependsOn: [nope]");
        let err = FleetConfig::parse([("f.yaml", text.as_str())]).unwrap_err().to_string();
        assert!(err.contains("no Bundle named \"nope\""), "{err}");

        let text = FLEET.replace("  source: fleet\n  path: infra", "  source: other\n  path: infra");
        let err = FleetConfig::parse([("f.yaml", text.as_str())]).unwrap_err().to_string();
        assert!(err.contains("no GitSource named \"other\""), "{err}");

        let text = FLEET.replace("path: infra", "path: infra\n  dependsOn: [app]");
        let err = FleetConfig::parse([("f.yaml", text.as_str())]).unwrap_err().to_string();
        assert!(err.contains("cycle"), "{err}");

        let text = FLEET.replace("path: infra", "path: ../../etc");
        let err = FleetConfig::parse([("f.yaml", text.as_str())]).unwrap_err().to_string();
        assert!(err.contains("escapes"), "{err}");
    }

    #[test]
    fn tenancy_fields_parse_and_validate() {
        let text = FLEET.replace(
            "  targetNamespace: app\n",
            "  targetNamespace: app\n  allowedNamespaces: [app, app-*]\n  allowedKinds: [ConfigMap, Deployment.apps]\n  allowClusterScoped: false\n",
        );
        let cfg = FleetConfig::parse([("f.yaml", text.as_str())]).unwrap();
        let t = cfg.bundles["app"].spec.tenancy();
        assert_eq!(t.allowed_namespaces, ["app", "app-*"]);
        assert_eq!(t.allowed_kinds, ["ConfigMap", "Deployment.apps"]);
        assert!(!t.allow_cluster_scoped);
        assert!(cfg.bundles["infra"].spec.tenancy().is_unrestricted());

        let text =
            FLEET.replace("  targetNamespace: app\n", "  targetNamespace: app\n  allowedNamespaces: [App]\n");
        let err = FleetConfig::parse([("f.yaml", text.as_str())]).unwrap_err().to_string();
        assert!(err.contains("spec.allowedNamespaces") && err.contains("\"App\""), "{err}");
    }

    #[test]
    fn duplicate_and_unknown_kind() {
        let text = format!("{FLEET}\n---\n{}", FLEET.split("---").next().unwrap());
        let err = FleetConfig::parse([("f.yaml", text.as_str())]).unwrap_err().to_string();
        assert!(err.contains("duplicate"), "{err}");
        let err = FleetConfig::parse([("f.yaml", "apiVersion: convoy.dev/v1\nkind: Nope\nspec: {}\n")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown kind"), "{err}");
    }

    #[test]
    fn webhook_and_ca_file() {
        let text = FLEET.replace(
            "  interval: 30s",
            "  interval: 30s\n  caFile: /etc/convoy/ca.pem\n  webhook:\n    secretFile: /s\n    type: github",
        );
        let cfg = FleetConfig::parse([("f.yaml", text.as_str())]).unwrap();
        let spec = &cfg.sources["fleet"].spec;
        assert_eq!(spec.ca_file.as_deref(), Some("/etc/convoy/ca.pem"));
        assert_eq!(spec.webhook.as_ref().unwrap().type_.as_deref(), Some("github"));
        let bad = text.replace("type: github", "type: bitbucket");
        let err = FleetConfig::parse([("f.yaml", bad.as_str())]).unwrap_err().to_string();
        assert!(err.contains("spec.webhook.type"), "{err}");
    }

    #[test]
    fn providers_and_alerts_are_validated() {
        let base = format!(
            "{FLEET}---\napiVersion: convoy.dev/v1\nkind: Provider\nmetadata: {{name: ops}}\nspec: {{type: slack, addressFile: /s/url, username: convoy}}\n---\napiVersion: convoy.dev/v1\nkind: Alert\nmetadata: {{name: prod}}\nspec:\n  providerRef: ops\n  severity: error\n  bundles: [app]\n  clusterSelector: {{matchLabels: {{env: prod}}}}\n"
        );
        let cfg = FleetConfig::parse([("f.yaml", base.as_str())]).unwrap();
        assert_eq!(cfg.providers["ops"].spec.username.as_deref(), Some("convoy"));
        assert_eq!(cfg.alerts["prod"].spec.severity, Severity::Error);
        assert_eq!(cfg.alerts["prod"].spec.suppress_window.get().as_secs(), 300);
        for (from, to, expect) in [
            ("providerRef: ops", "providerRef: nope", "no Provider named"),
            ("type: slack", "type: pager", "spec.type"),
            ("addressFile: /s/url", "address: \"ftp://secret-path\"", "http:// or https://"),
            ("addressFile: /s/url", "address: https://x, addressFile: /s/url", "exactly one"),
            ("type: slack", "type: generic-hmac", "secretFile"),
            (
                "{matchLabels: {env: prod}}",
                "{matchExpressions: [{key: env, operator: In}]}",
                "clusterSelector",
            ),
        ] {
            let text = base.replace(from, to);
            let err = FleetConfig::parse([("f.yaml", text.as_str())]).unwrap_err().to_string();
            assert!(err.contains(expect), "{from} -> {to}: {err}");
            assert!(!err.contains("secret-path"), "the address is not echoed: {err}");
        }
    }

    #[test]
    fn ref_precedence() {
        let r = GitRef { branch: Some("b".into()), tag: Some("t".into()), ..Default::default() };
        assert_eq!(r.resolve(), RefSpec::Tag("t".into()));
        let r = GitRef { semver: Some(">=1".into()), tag: Some("t".into()), ..Default::default() };
        assert_eq!(r.resolve(), RefSpec::Semver(">=1".into()));
        assert_eq!(GitRef::default().resolve(), RefSpec::Branch("main".into()));
        assert_eq!(format_revision("main", "abc"), "main@sha1:abc");
    }

    const CUSTOM: &str = r#"
apiVersion: convoy.dev/v1
kind: ClusterGroup
metadata: {name: europe}
spec:
  selector: {matchLabels: {region: eu}}
---
apiVersion: convoy.dev/v1
kind: Cluster
metadata: {name: a-prod}
spec:
  selector: {matchLabels: {env: prod}}
  labels: {tier: gold}
  vars: {replicas: "3", size: l}
---
apiVersion: convoy.dev/v1
kind: Cluster
metadata: {name: b-one}
spec:
  name: eu-prod
  vars: {size: xl}
---
apiVersion: convoy.dev/v1
kind: Bundle
metadata: {name: web}
spec:
  source: fleet
  substitute: {vars: {greeting: hi}}
  targets:
    - clusterGroup: europe
      namespace: web-eu
      vars: {region: eu}
      patches:
        - patch: |
            - op: replace
              path: /spec/replicas
              value: 2
          target: {kind: Deployment, name: web}
    - clusterName: eu-canary
      doNotDeploy: true
    - clusterSelector: {matchLabels: {env: prod}}
      helmValues: {replicaCount: 3}
"#;

    #[test]
    fn cluster_groups_do_not_deploy_and_cluster_documents() {
        let text = format!("{FLEET}---{CUSTOM}");
        let cfg = FleetConfig::parse([("f.yaml", text.as_str())]).unwrap();
        let web = &cfg.bundles["web"].spec;
        assert_eq!(web.substitute.as_ref().unwrap().vars["greeting"], "hi");
        assert_eq!(web.targets[0].group_selector, Some(cfg.cluster_groups["europe"].spec.selector.clone()));
        assert!(web.targets[0].has_layer() && !web.targets[1].has_layer() && web.targets[2].has_layer());
        // The group selector matches, and ANDs nothing else.
        assert!(web.targets_cluster("eu-dev", &labels("region=eu,env=dev")));
        assert!(!web.targets_cluster("us-dev", &labels("region=us,env=dev")));
        assert!(web.targets_cluster("us-prod", &labels("region=us,env=prod")));
        // doNotDeploy wins over every other matching entry.
        assert!(!web.targets_cluster("eu-canary", &labels("region=eu,env=prod")));
        // Cluster documents: selector on registered labels, then by name; later names win.
        let (l, v) = cfg.cluster_facts("eu-prod", &labels("region=eu,env=prod"));
        assert_eq!(l, labels("region=eu,env=prod,tier=gold"));
        assert_eq!(v.get("size").map(String::as_str), Some("xl"));
        assert_eq!(v.get("replicas").map(String::as_str), Some("3"));
        let (l, v) = cfg.cluster_facts("us-dev", &labels("region=us,env=dev"));
        assert_eq!(l, labels("region=us,env=dev"));
        assert!(v.is_empty());
        // Group membership is on effective labels, for rollout waves.
        let effective = |c: &str, l: &str| cfg.cluster_facts(c, &labels(l)).0;
        assert_eq!(cfg.groups_of(&effective("eu-prod", "region=eu,env=prod")), vec!["europe".to_string()]);
        assert!(cfg.groups_of(&effective("us-dev", "region=us,env=dev")).is_empty());
        // An unknown group and a Cluster document that matches nothing are refused.
        let bad = text.replace("clusterGroup: europe", "clusterGroup: asia");
        let err = FleetConfig::parse([("f.yaml", bad.as_str())]).unwrap_err().to_string();
        assert!(err.contains("no ClusterGroup named \"asia\""), "{err}");
        let bad = text.replace("  name: eu-prod\n", "");
        let err = FleetConfig::parse([("f.yaml", bad.as_str())]).unwrap_err().to_string();
        assert!(err.contains("set spec.name, spec.selector or both"), "{err}");
    }
}
