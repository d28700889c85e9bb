//! What the source pipeline reports to the rest of the hub: per-source fetch
//! status and, per bundle, the last good artifact and the last build error.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::status::{Condition, Phase};

/// The fetch status of one GitSource.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    /// The source name.
    pub name: String,
    /// The URL with any credentials removed.
    pub url: String,
    /// The configured ref, for display (`branch main`, `semver >=1.0`).
    pub reference: String,
    /// The last resolved revision, `<ref>@sha1:<commit>`.
    pub revision: Option<String>,
    /// Ready, Reconciling, Stalled or Suspended.
    pub phase: Phase,
    /// Ready / Reconciling / Stalled conditions with reason and message.
    pub conditions: Vec<Condition>,
    /// When the last fetch finished (Unix ms), 0 if never.
    pub last_fetch_unix_ms: i64,
    /// Consecutive failed fetches.
    pub failures: u32,
    /// Whether polling is suspended.
    pub suspended: bool,
    /// The poll interval.
    pub interval: Duration,
    /// The source's kind: empty for a GitSource, `HelmRepository`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// For a chart repository: the chart each of its bundles resolved to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub charts: Vec<ResolvedChart>,
}

/// A chart a bundle resolved to in a chart repository.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedChart {
    /// The bundle.
    pub bundle: String,
    /// The chart name.
    pub chart: String,
    /// The version asked for (exact or a range; empty: the highest release).
    pub constraint: String,
    /// The resolved version.
    pub version: String,
    /// `sha256:<hex>` of the chart archive (checked against the index or manifest).
    pub digest: String,
    /// For an OCI chart: `sha256:<hex>` of its manifest.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub manifest_digest: String,
}

/// An artifact built for a bundle from a source revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuiltArtifact {
    /// The bundle name.
    pub bundle: String,
    /// The source name.
    pub source: String,
    /// The source URL with credentials removed (goes into the statement).
    pub source_url: String,
    /// `<ref>@sha1:<commit>`.
    pub revision: String,
    /// `sha256:<hex>` of the .tar.gz bytes.
    pub digest: String,
    /// Size of the .tar.gz in bytes.
    pub size: u64,
    /// Number of files in the artifact.
    pub files: u32,
    /// When it was built (Unix ms).
    pub built_unix_ms: i64,
    /// For a Helm bundle: the chart it was rendered from (goes into the statement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helm: Option<Box<BuiltHelm>>,
}

/// The chart a Helm bundle's artifact was rendered from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuiltHelm {
    /// The chart name.
    pub chart: String,
    /// The chart version.
    pub version: String,
    /// `sha256:<hex>` of the chart.
    pub chart_digest: String,
    /// `sha256:<hex>` of the merged user values.
    pub values_digest: String,
    /// Render warnings (a template calling `lookup`), surfaced as a condition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// `sha256:<hex>` of the stored render input (chart files, merged user
    /// values, release), kept in the artifact store next to the artifact so
    /// the hub can render the chart again per cluster (docs/helm.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
}

/// Why the last build of a bundle failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildError {
    /// The revision that failed to build, if it got that far.
    pub revision: Option<String>,
    /// CamelCase reason: FetchFailed, InvalidManifest, PathNotFound, LimitExceeded,
    /// KustomizeFailed, ...
    pub reason: String,
    /// Human-readable message naming file, document and line where known.
    pub message: String,
    /// When it failed (Unix ms).
    pub at_unix_ms: i64,
}

/// The latest build state of one bundle.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleBuildState {
    /// The bundle name.
    pub bundle: String,
    /// The last good artifact, kept when a later build fails.
    pub artifact: Option<BuiltArtifact>,
    /// The error of the latest build, if it failed (cleared by a good build).
    pub error: Option<BuildError>,
}

impl BundleBuildState {
    /// Ready when there is an artifact and the latest build did not fail.
    pub fn phase(&self) -> Phase {
        match (&self.artifact, &self.error) {
            (_, Some(_)) => Phase::Stalled,
            (Some(_), None) => Phase::Ready,
            (None, None) => Phase::Pending,
        }
    }
}
