//! A rendered release as artifact files, and the chart digest.
//!
//! Layout inside the artifact (every file is Kubernetes-shaped YAML, so the
//! usual artifact checks apply):
//! - `helm/release.yaml`: the `convoy.dev/v1 HelmRelease` record
//!   ([`crate::release::ReleaseSpec`]); agents use it, never apply it;
//! - `helm/crds/<file>`: the chart's `crds/` (omitted with `crds: Skip`; the
//!   record's `crds` says how the agent applies them);
//! - `helm/templates/<template>`: the release's objects, one file per template;
//! - `helm/hooks/<template>`: hooks, with their `helm.sh/hook*` annotations;
//! - `helm/tests/<template>`: test hooks (`helm.sh/hook: test`), apart from
//!   the release: the agent runs them only on `convoy test`, never with an
//!   install or upgrade. A chart without test hooks has no such file, so its
//!   artifact bytes are what they were before test hooks were packed.

use std::path::Path;

use sha2::{Digest as _, Sha256};

use crate::output::{Rendered, by_template};
use crate::release::{CrdPolicy, ReleaseSpec};
use crate::{ChartInput, Error, Result};

/// The release record's path in an artifact.
pub const RECORD_FILE: &str = "helm/release.yaml";
/// Where test hooks go in an artifact.
pub const TESTS_DIR: &str = "helm/tests/";
/// Where hooks go in an artifact.
pub const HOOKS_DIR: &str = "helm/hooks/";

/// The artifact files of a rendered release, sorted by path.
pub fn artifact_files(r: &Rendered, spec: &ReleaseSpec) -> Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    files.push((RECORD_FILE.to_string(), yaml(&[&spec.to_object()])?));
    if spec.crds != CrdPolicy::Skip {
        for c in &r.crds {
            let name = if c.filename.is_empty() {
                c.name.rsplit('/').next().unwrap_or(&c.name)
            } else {
                &c.filename
            };
            files.push((format!("helm/crds/{}", yaml_name(name)), c.data.clone().into_bytes()));
        }
    }
    for (template, objects) in by_template(&r.objects) {
        files.push((format!("helm/templates/{}", yaml_name(&template)), yaml(&objects)?));
    }
    let mut hooks: std::collections::BTreeMap<&str, Vec<&serde_json::Value>> = Default::default();
    for h in &r.hooks {
        hooks.entry(&h.template).or_default().push(&h.object);
    }
    for (template, objects) in hooks {
        files.push((format!("helm/hooks/{}", yaml_name(template)), yaml(&objects)?));
    }
    let mut tests: std::collections::BTreeMap<&str, Vec<&serde_json::Value>> = Default::default();
    for h in &r.tests {
        tests.entry(&h.template).or_default().push(&h.object);
    }
    for (template, objects) in tests {
        files.push((format!("{TESTS_DIR}{}", yaml_name(template)), yaml(&objects)?));
    }
    files.sort();
    files.dedup_by(|a, b| a.0 == b.0);
    Ok(files)
}

/// A rendered release ready to pack: its artifact files and what the
/// statement says about it. `convoy build --chart` and the hub build both use
/// [`release_build`], so the same inputs give the same bytes.
#[derive(Debug, Clone)]
pub struct ReleaseBuild {
    /// The artifact files, sorted by path.
    pub files: Vec<(String, Vec<u8>)>,
    /// The chart name.
    pub chart: String,
    /// The chart version.
    pub version: String,
    /// [`chart_digest`] of the chart.
    pub chart_digest: String,
    /// `sha256` of the canonical JSON of the merged user values.
    pub values_digest: String,
}

/// The release record of `rendered` (rendered from `chart` with the merged
/// user `values`) and its artifact files; `crds` is the chart's CRD policy
/// (`Skip` leaves `helm/crds/` out; the record carries any other but the default).
#[allow(clippy::too_many_arguments)]
pub fn release_build(
    rendered: &Rendered,
    chart: &ChartInput,
    values: serde_json::Value,
    release: &str,
    namespace: &str,
    max_history: u32,
    crds: CrdPolicy,
) -> Result<ReleaseBuild> {
    let (chart_digest, values_digest) = (chart_digest(chart)?, crate::values::values_digest(&values));
    let spec = ReleaseSpec {
        name: release.to_string(),
        namespace: namespace.to_string(),
        chart_metadata: rendered.chart.metadata.clone(),
        chart_values: rendered.chart.default_values.clone(),
        config: values,
        notes: rendered.notes.clone(),
        manifest: rendered.manifest(),
        chart_digest: chart_digest.clone(),
        values_digest: values_digest.clone(),
        max_history,
        crds,
    };
    Ok(ReleaseBuild {
        files: artifact_files(rendered, &spec)?,
        chart: rendered.chart.name.clone(),
        version: rendered.chart.version.clone(),
        chart_digest,
        values_digest,
    })
}

fn yaml_name(name: &str) -> String {
    if name.ends_with(".yaml") || name.ends_with(".yml") { name.to_string() } else { format!("{name}.yaml") }
}

fn yaml(objects: &[&serde_json::Value]) -> Result<Vec<u8>> {
    let mut out = String::new();
    for o in objects {
        out.push_str("---\n");
        out.push_str(
            &serde_saphyr::to_string(o)
                .map_err(|e| Error::Output { template: "(artifact)".into(), message: e.to_string() })?,
        );
    }
    Ok(out.into_bytes())
}

/// `sha256:<hex>` of a chart: of the archive bytes (Helm's own digest), or,
/// for a directory, of the sorted listing `<path>\0<sha256 of content>\n`
/// of its regular files.
pub fn chart_digest(chart: &ChartInput) -> Result<String> {
    match chart {
        ChartInput::Archive(b) => Ok(crate::values::sha256(b)),
        ChartInput::Path(p) if p.is_file() => {
            let b = std::fs::read(p).map_err(|source| Error::Io { path: p.display().to_string(), source })?;
            Ok(crate::values::sha256(&b))
        }
        ChartInput::Path(p) => {
            let mut entries = Vec::new();
            walk(p, p, &mut entries)?;
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
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) -> Result<()> {
    let io = |source| Error::Io { path: dir.display().to_string(), source };
    for e in std::fs::read_dir(dir).map_err(io)? {
        let path = e.map_err(io)?.path();
        let meta = std::fs::symlink_metadata(&path).map_err(io)?;
        if meta.is_dir() {
            walk(root, &path, out)?;
        } else if meta.is_file() {
            let b = std::fs::read(&path).map_err(io)?;
            let rel = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().into_owned();
            out.push((rel, hex::encode(Sha256::digest(&b))));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_digest_depends_on_paths_and_contents_only() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for d in [a.path(), b.path()] {
            std::fs::create_dir_all(d.join("templates")).unwrap();
            std::fs::write(d.join("Chart.yaml"), "name: c\n").unwrap();
            std::fs::write(d.join("templates/x.yaml"), "x: 1\n").unwrap();
        }
        let da = chart_digest(&ChartInput::Path(a.path().into())).unwrap();
        assert_eq!(da, chart_digest(&ChartInput::Path(b.path().into())).unwrap());
        std::fs::write(b.path().join("templates/x.yaml"), "x: 2\n").unwrap();
        assert_ne!(da, chart_digest(&ChartInput::Path(b.path().into())).unwrap());
        assert_eq!(
            chart_digest(&ChartInput::Archive(b"abc".to_vec())).unwrap(),
            crate::values::sha256(b"abc")
        );
    }
}
