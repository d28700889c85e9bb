//! The fleet config: GitSource, Bundle, Provider and Alert documents.
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
    /// The GitSource name.
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
}

impl Target {
    /// Whether this entry selects the cluster.
    pub fn matches(&self, cluster: &str, labels: &Labels) -> bool {
        if self.cluster_name.is_none() && self.cluster_selector.is_none() {
            return false;
        }
        self.cluster_name.as_deref().is_none_or(|n| n == cluster)
            && self.cluster_selector.as_ref().is_none_or(|s| s.matches(labels))
    }
}

impl BundleSpec {
    /// Whether the bundle targets the cluster.
    pub fn targets_cluster(&self, cluster: &str, labels: &Labels) -> bool {
        self.targets.iter().any(|t| t.matches(cluster, labels))
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
pub const FLEET_KINDS: [&str; 4] = ["GitSource", "Bundle", "Provider", "Alert"];

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
                "Bundle" => insert(&mut self.bundles, file, &doc, "Bundle")?,
                "Provider" => insert(&mut self.providers, file, &doc, "Provider")?,
                "Alert" => insert(&mut self.alerts, file, &doc, "Alert")?,
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
            if !self.sources.contains_key(&b.spec.source) {
                return Err(invalid(format!("spec.source: no GitSource named {:?}", b.spec.source)));
            }
            check_bundle_path(&b.spec.path).map_err(invalid)?;
            if let Some(e) = b.spec.tenancy().validate().into_iter().next() {
                return Err(invalid(format!("spec.{e}")));
            }
            for d in &b.spec.depends_on {
                if !self.bundles.contains_key(d) {
                    return Err(invalid(format!("spec.dependsOn: no Bundle named {d:?}")));
                }
            }
            for (i, t) in b.spec.targets.iter().enumerate() {
                if t.cluster_name.is_none() && t.cluster_selector.is_none() {
                    return Err(invalid(format!(
                        "spec.targets[{i}]: set clusterName, clusterSelector or both"
                    )));
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

    /// The names of the bundles that target a cluster.
    pub fn bundles_for(&self, cluster: &str, labels: &Labels) -> BTreeSet<String> {
        self.bundles
            .iter()
            .filter(|(_, b)| b.spec.targets_cluster(cluster, labels))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The bundles built from a source.
    pub fn bundles_of_source<'a>(
        &'a self,
        source: &'a str,
    ) -> impl Iterator<Item = &'a Named<BundleSpec>> + 'a {
        self.bundles.values().filter(move |b| b.spec.source == source)
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
}
