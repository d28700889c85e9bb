//! The JSON messages between the hub (or `convoy build`) and the render
//! worker: one [`WorkerRequest`] on the worker's stdin, one [`WorkerReply`]
//! on its stdout.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The chart to render.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ChartInput {
    /// A chart directory (or a `.tgz` file) on disk.
    Path(PathBuf),
    /// `.tgz` archive bytes, base64 in the JSON.
    Archive(#[serde(with = "b64")] Vec<u8>),
}

/// What `.Capabilities` says about the target cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// `.Capabilities.KubeVersion`, e.g. `v1.31.0` (empty: Helm's default).
    #[serde(default)]
    pub kube_version: String,
    /// Extra API versions for `.Capabilities.APIVersions.Has` (`group/version`
    /// or `group/version/Kind`), on top of Helm's built-in defaults.
    #[serde(default)]
    pub api_versions: Vec<String>,
}

/// One render, as the worker receives it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerRequest {
    /// The `libhelm_c` library to load.
    pub library: PathBuf,
    /// The chart.
    pub chart: ChartInput,
    /// The user-supplied values (merged over the chart's defaults by Helm).
    pub values: serde_json::Value,
    /// `.Release.Name`.
    pub release_name: String,
    /// `.Release.Namespace`.
    pub namespace: String,
    /// `.Release.Revision`.
    pub revision: u64,
    /// `.Release.IsUpgrade` (else IsInstall).
    pub is_upgrade: bool,
    /// `.Capabilities`.
    pub capabilities: Capabilities,
}

/// A CRD file from the chart's `crds/` directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrdFile {
    /// The chart-relative name, e.g. `crds/crontab.yaml`.
    pub name: String,
    /// The file name.
    #[serde(default)]
    pub filename: String,
    /// The file content.
    pub data: String,
}

/// What the worker got from Helm.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawRender {
    /// Rendered templates by path (`chart/templates/x.yaml`), NOTES.txt included.
    pub manifests: BTreeMap<String, String>,
    /// CRDs from `crds/`.
    pub crds: Vec<CrdFile>,
    /// `Chart.yaml` as JSON.
    pub metadata: serde_json::Value,
    /// The chart's default values (`values.yaml`).
    #[serde(default)]
    pub default_values: serde_json::Value,
    /// Templates whose source calls `lookup` (it returns empty here).
    pub lookup_templates: Vec<String>,
    /// Templates whose source calls a random function (`randAlphaNum`, ...).
    #[serde(default)]
    pub random_templates: Vec<String>,
    /// The Helm SDK version of the library.
    pub helm_version: String,
}

/// The worker's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WorkerReply {
    /// Rendered.
    Ok(Box<RawRender>),
    /// Helm refused; `code` is the `helm_error_code` (or 1 for worker-side errors,
    /// 2 for an unavailable library).
    Err {
        /// The code.
        code: i32,
        /// The message.
        message: String,
    },
}

/// The reply code for an unavailable library.
pub const CODE_UNAVAILABLE: i32 = 2;

mod b64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}
