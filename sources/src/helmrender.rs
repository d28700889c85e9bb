//! Rendering a Helm bundle on the hub: a chart directory in the GitSource
//! (`spec.helm.path`) is materialized from the commit into a private temp
//! directory, its values are merged (chart defaults < `valuesFiles` <
//! `values` < `valuesFrom` < per-cluster values), and Helm's engine renders
//! it in a bounded worker process (convoy_helm::Renderer). The output becomes
//! the same artifact `convoy build --chart` writes
//! (convoy_helm::bundle::release_build). Blocking: the controller calls
//! [`render_helm`] inside `spawn_blocking`. The value merge
//! ([`merge_values`], [`values_from_layer`]) is pure.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use convoy_artifact::tree::normalize;
use convoy_artifact::{EntryKind, IgnoreRules, Limits, PackedArtifact, Selection, Tree, select_files};
use convoy_core::config::{CrdPolicy, HelmSpec, ValuesFrom};
use convoy_core::pipeline::BuiltHelm;
pub use convoy_helm::values::{
    canonical_json as canonical_values, capabilities_digest, normalize_kube_version,
};
use convoy_helm::values::{merge_layers, parse_values};
pub use convoy_helm::{Capabilities, Error as HelmError, Renderer, WorkerCommand};
use convoy_helm::{ChartInput, RenderRequest};
use serde_json::{Map, Value};

use crate::{Error, Result};

/// How the hub renders charts.
#[derive(Debug, Clone, Default)]
pub struct HelmSettings {
    /// The render worker; `None`: `CONVOY_HELM_WORKER`, else
    /// `convoy-helm-worker` next to the running executable.
    pub worker: Option<WorkerCommand>,
    /// The library (`libhelm_c.so`, or a directory holding it); `None`:
    /// `CONVOY_HELM_LIBRARY`, else the installed Python package.
    pub library: Option<PathBuf>,
    /// Time, memory and chart-size bounds of one render.
    pub limits: convoy_helm::Limits,
    /// The hub's default `.Capabilities.KubeVersion` (`1.31`); a bundle's
    /// `helm.kubeVersion` wins over it.
    pub kube_version: Option<String>,
    /// The renderer once made, shared by this value's clones, so that its
    /// idle workers serve every render (not one new process per render).
    pub shared: Arc<Mutex<Option<Renderer>>>,
}

impl HelmSettings {
    /// A renderer, or `HelmUnavailable` saying where the library or worker was looked for.
    /// Made once and then shared (its worker pool with it); a failure is
    /// not remembered, so a library installed later is found.
    pub fn renderer(&self) -> Result<Renderer> {
        if let Some(r) = self.shared.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return Ok(r.clone());
        }
        let worker = match &self.worker {
            Some(w) => w.clone(),
            None => WorkerCommand::discover()?,
        };
        let r = match &self.library {
            Some(p) => Renderer::with_library(worker, convoy_helm::locate::library_at(p)?, self.limits),
            None => Renderer::new(worker, self.limits)?,
        };
        *self.shared.lock().unwrap_or_else(|p| p.into_inner()) = Some(r.clone());
        Ok(r)
    }

    /// The Capabilities a bundle renders with when nothing more specific is
    /// known: the bundle's `kubeVersion`, else the hub's, else Helm's default.
    /// (Per-cluster Capabilities reported by agents replace this once
    /// variants render per cluster: see docs/helm.md.)
    pub fn default_capabilities(&self, spec: &HelmSpec) -> Capabilities {
        let v = spec.kube_version.as_deref().or(self.kube_version.as_deref());
        Capabilities { kube_version: v.map(normalize_kube_version).unwrap_or_default(), api_versions: vec![] }
    }
}

/// A rendered Helm bundle.
#[derive(Debug, Clone)]
pub struct HelmRendered {
    /// The artifact.
    pub artifact: PackedArtifact,
    /// What the statement says about the chart, and the render warnings.
    pub helm: BuiltHelm,
    /// The stored form of the render input ([`HelmInput::to_bytes`]), set by
    /// [`render_helm`]; the controller stores it next to the artifact.
    pub input: Option<Vec<u8>>,
}

/// The release name and namespace of a bundle: `releaseName` (default the
/// bundle name), `namespace` (default the bundle's `targetNamespace`, else
/// `default`).
pub fn release_of(bundle: &str, spec: &HelmSpec, target_namespace: Option<&str>) -> (String, String) {
    (
        spec.release_name.clone().unwrap_or_else(|| bundle.to_string()),
        spec.namespace.clone().or(target_namespace.map(String::from)).unwrap_or_else(|| "default".into()),
    )
}

/// One `valuesFrom` layer from the file's text (`None`: the file is
/// missing). Pure. Without `key` the whole file (a mapping) is the layer;
/// with `key` only that top-level key; with `targetPath` the value is put at
/// that dotted path. A missing file or key is an error unless `optional`
/// (then the layer is `None`).
pub fn values_from_layer(v: &ValuesFrom, text: Option<&str>) -> Result<Option<Value>> {
    let missing = |what: String| {
        if v.optional { Ok(None) } else { Err(Error::Config(format!("valuesFrom {}: {what}", v.file))) }
    };
    let Some(text) = text else { return missing("no such file".into()) };
    let doc: Value = serde_saphyr::from_str(text).map_err(|e| {
        Error::Config(format!("valuesFrom {}: {}", v.file, e.to_string().lines().next().unwrap_or_default()))
    })?;
    let value = match &v.key {
        None => doc,
        Some(k) => match doc.get(k) {
            Some(x) => x.clone(),
            None => return missing(format!("no key {k:?}")),
        },
    };
    match &v.target_path {
        Some(path) => {
            let mut out = value;
            for seg in path.rsplit('.') {
                let mut m = Map::new();
                m.insert(seg.to_string(), out);
                out = Value::Object(m);
            }
            Ok(Some(out))
        }
        None if value.is_object() => Ok(Some(value)),
        None if value.is_null() => Ok(Some(Value::Object(Map::new()))),
        None => Err(Error::Config(format!(
            "valuesFrom {}: the value is not a mapping; set targetPath to place it",
            v.file
        ))),
    }
}

/// The merged user values, in the documented order: `values_files` <
/// `inline` < `values_from` < `extra_values` (per-cluster values, the last
/// word). Helm merges the result over the chart's own defaults. Pure.
pub fn merge_values(
    values_files: &[Value],
    inline: Option<&Value>,
    values_from: &[Value],
    extra_values: &[Value],
) -> Value {
    merge_layers(values_files.iter().chain(inline).chain(values_from).chain(extra_values))
}

/// Everything a Helm bundle's render reads besides the Capabilities and the
/// per-cluster values: the chart's files, the merged user values (chart
/// defaults < `valuesFiles` < `values` < `valuesFrom`), the release and the
/// options. The source controller stores it (content-addressed, as
/// [`HelmInput::to_bytes`]) with each build, so the hub re-renders the same
/// chart per cluster without the git tree ([`render_input`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HelmInput {
    /// The chart's path in the source (for messages).
    pub chart_path: String,
    /// The chart directory's files, `(relative path, base64 content)`, sorted.
    pub files: Vec<(String, String)>,
    /// The merged user values, without per-cluster values.
    pub values: Value,
    /// The release name.
    pub release: String,
    /// The release namespace.
    pub namespace: String,
    /// `maxHistory` (0: the agent's default).
    pub max_history: u32,
    /// Whether the chart's `crds/` go into the artifact.
    pub include_crds: bool,
    /// `crds: Create`: the agent creates missing CRDs and never changes an
    /// existing one. Absent (false) in inputs stored before it existed, and
    /// not written when false, so those inputs keep their bytes and digest.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub crds_create_only: bool,
    /// `helm.chart`: the chart must have this name.
    pub expect_chart: Option<String>,
    /// `helm.version`: the chart must have this version.
    pub expect_version: Option<String>,
    /// The Capabilities of a cluster that has not reported its own (the
    /// bundle's `kubeVersion`, else the hub's, else Helm's default).
    pub default_capabilities: Capabilities,
    /// The chart is a packaged archive (a chart repository's or an OCI
    /// registry's `.tgz`), held as the one entry of `files`; its chart digest
    /// is the archive's, as Helm's. Absent (false) for a chart directory, and
    /// not written when false, so inputs stored before it existed keep their
    /// bytes and digest.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub archive: bool,
}

impl HelmInput {
    /// The stored form: canonical JSON (sorted keys), so equal inputs have
    /// equal bytes and one digest.
    pub fn to_bytes(&self) -> Vec<u8> {
        let v = serde_json::to_value(self).expect("a HelmInput always serializes");
        convoy_helm::values::canonical_json(&v).into_bytes()
    }

    /// The chart's CRD policy this input renders with.
    pub fn crd_policy(&self) -> CrdPolicy {
        match (self.include_crds, self.crds_create_only) {
            (false, _) => CrdPolicy::Skip,
            (true, true) => CrdPolicy::Create,
            (true, false) => CrdPolicy::CreateReplace,
        }
    }

    /// Parse the stored form.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| Error::Config(format!("stored Helm render input: {e}")))
    }

    /// The chart digest, computed as [`convoy_helm::bundle::chart_digest`]
    /// computes it: of the archive's bytes, or of a directory's files.
    pub fn chart_digest(&self) -> Result<String> {
        use sha2::{Digest as _, Sha256};
        if self.archive {
            return Ok(convoy_helm::values::sha256(&self.archive_bytes(u64::MAX)?));
        }
        let mut entries = Vec::with_capacity(self.files.len());
        for (path, b64) in &self.files {
            entries.push((path.clone(), hex::encode(Sha256::digest(decode(path, b64)?))));
        }
        entries.sort();
        let mut h = Sha256::new();
        for (path, digest) in entries {
            h.update(path.as_bytes());
            h.update([0]);
            h.update(digest.as_bytes());
            h.update(b"\n");
        }
        Ok(format!("sha256:{}", hex::encode(h.finalize())))
    }

    /// The archive of an `archive` input (its one file), refused over
    /// `max_bytes` before Helm sees it.
    fn archive_bytes(&self, max_bytes: u64) -> Result<Vec<u8>> {
        let [(path, b64)] = self.files.as_slice() else {
            return Err(Error::Config(format!(
                "stored Helm render input of {}: a chart archive input holds {} files, not one",
                self.chart_path,
                self.files.len()
            )));
        };
        let bytes = decode(path, b64)?;
        if bytes.len() as u64 > max_bytes {
            return Err(Error::Helm(convoy_helm::Error::ChartTooLarge {
                chart: self.chart_path.clone(),
                size: bytes.len() as u64,
                limit: max_bytes,
            }));
        }
        Ok(bytes)
    }

    /// The values a cluster renders with: the input's, then `extra_values`
    /// (its per-cluster layers, in order) last. Pure.
    pub fn values_with(&self, extra_values: &[Value]) -> Value {
        merge_layers(std::iter::once(&self.values).chain(extra_values))
    }

    /// The fleet-wide render cache key of this input with `caps` and the
    /// per-cluster `extra_values`: chart digest, merged values digest,
    /// Capabilities digest, release name and namespace, and the options that
    /// change the artifact (`maxHistory`, CRDs, the expected chart/version).
    pub fn render_key(&self, caps: &Capabilities, extra_values: &[Value]) -> Result<String> {
        let base = convoy_helm::values::render_key(
            &self.chart_digest()?,
            &self.values_with(extra_values),
            caps,
            &self.release,
            &self.namespace,
        );
        let mut opts = serde_json::json!({
            "base": base,
            "maxHistory": self.max_history,
            "crds": self.include_crds,
            "chart": self.expect_chart,
            "version": self.expect_version,
        });
        if self.crds_create_only {
            opts["crdsCreateOnly"] = true.into();
        }
        Ok(convoy_helm::values::sha256(convoy_helm::values::canonical_json(&opts).as_bytes()))
    }
}

fn decode(path: &str, b64: &str) -> Result<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| Error::Config(format!("stored Helm render input: {path}: {e}")))
}

/// Read what the Helm bundle `bundle` renders from `tree` (a commit of its
/// GitSource): the chart directory (refused over `max_chart_bytes`), the
/// values layers merged, the release. `revision` names the tree in messages.
/// Dependencies the chart lists but does not vendor are fetched without a
/// cache ([`prepare_helm_with_deps`]). Blocking.
pub fn prepare_helm(
    tree: &dyn Tree,
    bundle: &str,
    spec: &HelmSpec,
    target_namespace: Option<&str>,
    revision: &str,
    default_capabilities: &Capabilities,
    max_chart_bytes: u64,
) -> Result<HelmInput> {
    prepare_helm_with_deps(
        tree,
        bundle,
        spec,
        target_namespace,
        revision,
        default_capabilities,
        max_chart_bytes,
        crate::chartdeps::Lookup::default(),
    )
}

/// [`prepare_helm`], with the chart's non-vendored dependencies
/// (`Chart.yaml` `dependencies:` missing from `charts/`) fetched from their
/// repositories through `deps` (its content-addressed cache and the fleet's
/// declared repositories, whose credentials they use) and added to the
/// input as `charts/<name>-<version>.tgz` (`crate::chartdeps`), so the input
/// and its chart digest hold them and Helm's engine renders them as it
/// renders vendored ones. They count towards `max_chart_bytes`. Blocking.
#[allow(clippy::too_many_arguments)]
pub fn prepare_helm_with_deps(
    tree: &dyn Tree,
    bundle: &str,
    spec: &HelmSpec,
    target_namespace: Option<&str>,
    revision: &str,
    default_capabilities: &Capabilities,
    max_chart_bytes: u64,
    deps: crate::chartdeps::Lookup<'_>,
) -> Result<HelmInput> {
    use base64::Engine;
    let Some(chart_path) = &spec.path else {
        return Err(Error::Config("spec.helm: only charts from a GitSource path are supported".into()));
    };
    let chart_path =
        normalize(chart_path).map_err(|m| Error::Config(format!("helm.path {chart_path:?}: {m}")))?;
    if tree.kind(&chart_path)? != Some(EntryKind::Dir) {
        return Err(Error::PathNotFound { path: chart_path, revision: revision.to_string() });
    }
    // Values: every layer is read before a worker starts.
    let mut files = Vec::new();
    for f in &spec.values_files {
        let p = normalize(f).map_err(|m| Error::Config(format!("helm.valuesFiles {f:?}: {m}")))?;
        if tree.kind(&p)?.is_none() {
            return Err(Error::PathNotFound { path: p, revision: revision.to_string() });
        }
        let text = tree.read_file(&p)?;
        files.push(parse_values(&p, &String::from_utf8_lossy(&text))?);
    }
    let mut from = Vec::new();
    for v in &spec.values_from {
        let text = match std::fs::read_to_string(&v.file) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(&v.file, e)),
        };
        from.extend(values_from_layer(v, text.as_deref())?);
    }
    let values = merge_values(&files, spec.values.as_ref(), &from, &[]);
    let (release, namespace) = release_of(bundle, spec, target_namespace);
    let rules = IgnoreRules::without_defaults(None)?;
    let mut total = 0u64;
    let mut chart_files = Vec::new();
    let mut chart_yaml = String::new();
    for f in select_files(tree, &chart_path, &rules, Selection::All)? {
        let content = tree.read_file(&f.source)?;
        total += content.len() as u64;
        if total > max_chart_bytes {
            return Err(Error::Helm(convoy_helm::Error::ChartTooLarge {
                chart: chart_path.to_string(),
                size: total,
                limit: max_chart_bytes,
            }));
        }
        if f.path == "Chart.yaml" {
            chart_yaml = String::from_utf8_lossy(&content).into_owned();
        }
        chart_files.push((f.path.clone(), base64::engine::general_purpose::STANDARD.encode(&content)));
    }
    let paths: Vec<&str> = chart_files.iter().map(|(p, _)| p.as_str()).collect();
    let fetched = crate::chartdeps::fetch_missing(&chart_yaml, &paths, deps, max_chart_bytes)?;
    for d in fetched {
        total += d.bytes.len() as u64;
        if total > max_chart_bytes {
            return Err(Error::Helm(convoy_helm::Error::ChartTooLarge {
                chart: format!("{chart_path} (with dependency {} {})", d.name, d.version),
                size: total,
                limit: max_chart_bytes,
            }));
        }
        chart_files.push((d.file, base64::engine::general_purpose::STANDARD.encode(&d.bytes)));
    }
    chart_files.sort();
    Ok(HelmInput {
        chart_path,
        files: chart_files,
        values,
        release,
        namespace,
        max_history: spec.max_history.unwrap_or(0),
        include_crds: spec.crds != CrdPolicy::Skip,
        crds_create_only: spec.crds == CrdPolicy::Create,
        expect_chart: spec.chart.clone(),
        expect_version: spec.version.clone(),
        default_capabilities: default_capabilities.clone(),
        archive: false,
    })
}

/// Render a prepared input with `capabilities` and the per-cluster
/// `extra_values` (merged last), and pack it. Blocking (one worker process).
pub fn render_input(
    input: &HelmInput,
    renderer: &Renderer,
    capabilities: &Capabilities,
    extra_values: &[Value],
    limits: &Limits,
) -> Result<HelmRendered> {
    let max_bytes = renderer.limits().max_chart_bytes;
    // A directory input is written to a private temp directory, kept until the render is over.
    let (chart, _dir) = if input.archive {
        (ChartInput::Archive(input.archive_bytes(max_bytes)?), None)
    } else {
        let dir = materialize(input, max_bytes)?;
        (ChartInput::Path(dir.path().to_path_buf()), Some(dir))
    };
    let values = input.values_with(extra_values);
    let chart_path = &input.chart_path;
    let req = RenderRequest {
        chart,
        values,
        release_name: input.release.clone(),
        namespace: input.namespace.clone(),
        revision: 1,
        is_upgrade: false,
        capabilities: capabilities.clone(),
    };
    let rendered = renderer.render(&req)?;
    if let Some(name) = &input.expect_chart
        && *name != rendered.chart.name
    {
        return Err(Error::Config(format!(
            "helm.chart {name:?}: the chart at {chart_path} is {:?}",
            rendered.chart.name
        )));
    }
    if let Some(v) = &input.expect_version
        && *v != rendered.chart.version
    {
        return Err(Error::Config(format!(
            "helm.version {v:?}: the chart at {chart_path} is version {}",
            rendered.chart.version
        )));
    }
    pack_release(&rendered, req, input.max_history, input.crd_policy(), limits)
}

/// Pack what `req` rendered in Helm's release layout into an artifact, with
/// the statement's chart part (no render input: the caller sets it).
pub fn pack_release(
    rendered: &convoy_helm::Rendered,
    req: RenderRequest,
    max_history: u32,
    crds: CrdPolicy,
    limits: &Limits,
) -> Result<HelmRendered> {
    let build = convoy_helm::bundle::release_build(
        rendered,
        &req.chart,
        req.values,
        &req.release_name,
        &req.namespace,
        max_history,
        crds,
    )?;
    let artifact = convoy_artifact::pack_files(build.files, limits)?;
    Ok(HelmRendered {
        artifact,
        helm: BuiltHelm {
            chart: build.chart,
            version: build.version,
            chart_digest: build.chart_digest,
            values_digest: build.values_digest,
            warnings: rendered.warnings.clone(),
            input: None,
        },
        input: None,
    })
}

/// Render the Helm bundle `bundle` from `tree` (a commit of its GitSource).
/// `revision` names the tree in messages; `extra_values` are per-cluster
/// values (merged last); `capabilities` are the target's. The result carries
/// the stored form of its [`HelmInput`] (`HelmRendered::input`) and its
/// digest (`BuiltHelm::input`). Blocking.
#[allow(clippy::too_many_arguments)]
pub fn render_helm(
    tree: &dyn Tree,
    bundle: &str,
    spec: &HelmSpec,
    target_namespace: Option<&str>,
    revision: &str,
    renderer: &Renderer,
    capabilities: &Capabilities,
    extra_values: &[Value],
    limits: &Limits,
) -> Result<HelmRendered> {
    render_helm_with_deps(
        tree,
        bundle,
        spec,
        target_namespace,
        revision,
        renderer,
        capabilities,
        extra_values,
        limits,
        crate::chartdeps::Lookup::default(),
    )
}

/// [`render_helm`], fetching the chart's non-vendored dependencies through
/// `deps` (see [`prepare_helm_with_deps`]). Blocking.
#[allow(clippy::too_many_arguments)]
pub fn render_helm_with_deps(
    tree: &dyn Tree,
    bundle: &str,
    spec: &HelmSpec,
    target_namespace: Option<&str>,
    revision: &str,
    renderer: &Renderer,
    capabilities: &Capabilities,
    extra_values: &[Value],
    limits: &Limits,
    deps: crate::chartdeps::Lookup<'_>,
) -> Result<HelmRendered> {
    let input = prepare_helm_with_deps(
        tree,
        bundle,
        spec,
        target_namespace,
        revision,
        capabilities,
        renderer.limits().max_chart_bytes,
        deps,
    )?;
    let mut r = render_input(&input, renderer, capabilities, extra_values, limits)?;
    let bytes = input.to_bytes();
    r.helm.input = Some(convoy_artifact::digest_of(&bytes));
    r.input = Some(bytes);
    Ok(r)
}

/// Write the input's chart files into a private temp directory, refusing
/// more than `max_bytes` before Helm sees them (`.helmignore` is Helm's to apply).
fn materialize(input: &HelmInput, max_bytes: u64) -> Result<tempfile::TempDir> {
    let tmp =
        tempfile::Builder::new().prefix("convoy-chart-").tempdir().map_err(|e| Error::io("tempdir", e))?;
    let mut total = 0u64;
    for (path, b64) in &input.files {
        let content = decode(path, b64)?;
        total += content.len() as u64;
        if total > max_bytes {
            return Err(Error::Helm(convoy_helm::Error::ChartTooLarge {
                chart: input.chart_path.clone(),
                size: total,
                limit: max_bytes,
            }));
        }
        normalize(path).map_err(|m| Error::Config(format!("stored Helm render input: {path:?}: {m}")))?;
        let target: PathBuf = tmp.path().join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        std::fs::write(&target, content).map_err(|e| Error::io(&target, e))?;
    }
    Ok(tmp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vf(key: Option<&str>, target: Option<&str>, optional: bool) -> ValuesFrom {
        ValuesFrom {
            file: "/etc/convoy/v.yaml".into(),
            key: key.map(String::from),
            target_path: target.map(String::from),
            optional,
        }
    }

    #[test]
    fn merge_order_is_files_then_inline_then_values_from_then_per_cluster() {
        let files = [
            json!({"a": "file1", "b": "file1", "c": "file1", "d": "file1", "keep": 1}),
            json!({"b": "file2"}),
        ];
        let inline = json!({"c": "inline", "d": "inline", "e": "inline"});
        let from = [json!({"d": "from", "e": "from", "f": "from"})];
        let extra = [json!({"f": "cluster", "keep": null})];
        let v = merge_values(&files, Some(&inline), &from, &extra);
        assert_eq!(
            v,
            json!({"a": "file1", "b": "file2", "c": "inline", "d": "from", "e": "from", "f": "cluster"}),
            "later layers win key by key, null removes"
        );
        assert_eq!(merge_values(&[], None, &[], &[]), json!({}));
    }

    #[test]
    fn values_from_whole_file_key_and_target_path() {
        let text = "image:\n  tag: v2\nreplicas: 3\n";
        assert_eq!(
            values_from_layer(&vf(None, None, false), Some(text)).unwrap(),
            Some(json!({"image": {"tag": "v2"}, "replicas": 3}))
        );
        assert_eq!(
            values_from_layer(&vf(Some("replicas"), Some("app.scale.replicas"), false), Some(text)).unwrap(),
            Some(json!({"app": {"scale": {"replicas": 3}}}))
        );
        assert_eq!(
            values_from_layer(&vf(Some("image"), None, false), Some(text)).unwrap(),
            Some(json!({"tag": "v2"}))
        );
        // A scalar needs a target path.
        let e = values_from_layer(&vf(Some("replicas"), None, false), Some(text)).unwrap_err();
        assert!(e.to_string().contains("targetPath"), "{e}");
    }

    #[test]
    fn values_from_missing_file_or_key_fails_unless_optional() {
        let e = values_from_layer(&vf(None, None, false), None).unwrap_err();
        assert!(e.to_string().contains("/etc/convoy/v.yaml: no such file"), "{e}");
        assert_eq!(values_from_layer(&vf(None, None, true), None).unwrap(), None);
        let e = values_from_layer(&vf(Some("nope"), None, false), Some("a: 1\n")).unwrap_err();
        assert!(e.to_string().contains("no key \"nope\""), "{e}");
        assert_eq!(values_from_layer(&vf(Some("nope"), None, true), Some("a: 1\n")).unwrap(), None);
    }

    #[test]
    fn release_name_and_namespace_defaults() {
        let mut s = HelmSpec::default();
        assert_eq!(release_of("web", &s, None), ("web".into(), "default".into()));
        assert_eq!(release_of("web", &s, Some("apps")), ("web".into(), "apps".into()));
        s.release_name = Some("podinfo".into());
        s.namespace = Some("edge".into());
        assert_eq!(release_of("web", &s, Some("apps")), ("podinfo".into(), "edge".into()));
    }

    #[test]
    fn capabilities_from_bundle_then_hub() {
        let mut hub = HelmSettings::default();
        let mut spec = HelmSpec::default();
        assert_eq!(hub.default_capabilities(&spec).kube_version, "");
        hub.kube_version = Some("1.29".into());
        assert_eq!(hub.default_capabilities(&spec).kube_version, "v1.29.0");
        spec.kube_version = Some("v1.31.2".into());
        assert_eq!(hub.default_capabilities(&spec).kube_version, "v1.31.2");
    }
}
