//! `convoy build --chart`: render a Helm chart with Helm's engine (in the
//! `convoy helm-worker` process, bounded in time and memory), and write the
//! usual signed build directory. The statement names the chart, its version
//! and the chart and values digests; the artifact carries the release record
//! the agent turns into Helm's release Secret (layout in convoy_helm::bundle).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use convoy_artifact::{
    ARTIFACT_FILE, Limits, SIGNATURE_FILE, STATEMENT_FILE, SigningKey, Statement, StatementHelm,
};
use convoy_helm::bundle::release_build;
use convoy_helm::values::{merge_layers, read_values_file};
use convoy_helm::{Capabilities, ChartInput, RenderRequest, Renderer, WorkerCommand};

use crate::cmd_artifact::{BuildArgs, write_atomic};

/// Helm options of `convoy build`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct HelmBuildArgs {
    /// A chart to render instead of `--dir`: a directory, a packaged `.tgz`,
    /// `oci://host/path/chart` (an OCI registry) or `REPO_URL/NAME` (the
    /// chart NAME of an HTTP(S) chart repository), pulled with the hub's
    /// resolvers (digests checked; credentials from the files below).
    #[arg(long, env = "CONVOY_BUILD_CHART")]
    pub chart: Option<String>,
    /// A local chart must be this version; a remote chart: an exact version,
    /// a semver range (highest match), or for `oci://` a manifest digest
    /// `sha256:…`. Default for a remote chart: the highest release.
    #[arg(long, requires = "chart")]
    pub chart_version: Option<String>,
    /// Talk plain http to an `oci://` registry (no TLS).
    #[arg(long, requires = "chart")]
    pub plain_http: bool,
    /// A file with `user:password` for a remote chart's repository or
    /// registry (as a HelmRepository/OCIRepository `basicAuthFile`).
    #[arg(
        long,
        requires = "chart",
        env = "CONVOY_BUILD_BASIC_AUTH_FILE",
        conflicts_with = "bearer_token_file"
    )]
    pub basic_auth_file: Option<PathBuf>,
    /// A file with a bearer token for a remote chart's repository or registry.
    #[arg(long, requires = "chart", env = "CONVOY_BUILD_BEARER_TOKEN_FILE")]
    pub bearer_token_file: Option<PathBuf>,
    /// A PEM CA bundle trusted for a remote chart's repository or registry.
    #[arg(long, requires = "chart", env = "CONVOY_BUILD_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Values files, merged in order (later files win).
    #[arg(long = "values", requires = "chart")]
    pub values: Vec<PathBuf>,
    /// The release name (default: the bundle name).
    #[arg(long, requires = "chart")]
    pub release: Option<String>,
    /// The release namespace.
    #[arg(long, requires = "chart", default_value = "default")]
    pub namespace: String,
    /// `.Capabilities.KubeVersion` as `X.Y` or `vX.Y.Z` (default: Helm's).
    #[arg(long, requires = "chart")]
    pub kube_version: Option<String>,
    /// Revisions of the release record kept in the cluster.
    #[arg(long, requires = "chart", default_value_t = convoy_helm::release::DEFAULT_MAX_HISTORY)]
    pub max_history: u32,
    /// The chart's `crds/`: `CreateReplace` (create and update), `Create`
    /// (create missing ones, never change an existing one) or `Skip`.
    #[arg(long, requires = "chart", default_value = "CreateReplace", value_parser = crd_policy)]
    pub crds: convoy_helm::release::CrdPolicy,
}

/// A chart directory's dependencies that its `Chart.yaml` lists but
/// `charts/` does not vendor, fetched as the hub fetches them
/// (`convoy_sources::chartdeps`: the version range resolved, the digest
/// checked; anonymously, with the system's CAs) into a copy of the chart as
/// `charts/<name>-<version>.tgz`, with the files the hub's build reads, so
/// the chart digest is the one the hub computes. `None`: nothing is missing
/// (or `dir` is not a chart directory; the render says why).
fn with_dependencies(dir: &Path, max_bytes: u64) -> anyhow::Result<Option<tempfile::TempDir>> {
    use convoy_artifact::{FsTree, IgnoreRules, Selection, Tree as _, select_files};
    use convoy_sources::chartdeps;
    let Ok(chart_yaml) = std::fs::read_to_string(dir.join("Chart.yaml")) else { return Ok(None) };
    let tree = FsTree::new(dir);
    let files = select_files(&tree, "", &IgnoreRules::without_defaults(None)?, Selection::All)?;
    let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    if chartdeps::missing(&chart_yaml, &paths)?.is_empty() {
        return Ok(None);
    }
    let fetched = chartdeps::fetch_missing(&chart_yaml, &paths, chartdeps::Lookup::default(), max_bytes)?;
    let copy = tempfile::Builder::new().prefix("convoy-chart-").tempdir()?;
    let write = |rel: &str, bytes: &[u8]| -> anyhow::Result<()> {
        let target = copy.path().join(rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&target, bytes).with_context(|| format!("writing {}", target.display()))
    };
    for f in &files {
        write(&f.path, &tree.read_file(&f.source)?)?;
    }
    for d in fetched {
        eprintln!("fetched dependency {} {} ({}) from its repository", d.name, d.version, d.digest);
        write(&d.file, &d.bytes)?;
    }
    Ok(Some(copy))
}

fn crd_policy(s: &str) -> Result<convoy_helm::release::CrdPolicy, String> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| format!("{s:?}: expected CreateReplace, Create or Skip"))
}

/// `X.Y` -> `v X.Y.0`; `vX.Y.Z` and `X.Y.Z` are kept (with a `v`).
fn kube_version(v: &str) -> String {
    convoy_helm::values::normalize_kube_version(v)
}

/// A hub config whose Helm render worker is this binary's `helm-worker`
/// command, unless the config names one.
pub(crate) fn with_worker(mut cfg: convoy_hub::HubConfig) -> convoy_hub::HubConfig {
    if cfg.helm.worker.is_empty()
        && std::env::var_os(convoy_helm::client::WORKER_ENV).is_none()
        && let Ok(exe) = std::env::current_exe()
    {
        cfg.helm.worker = vec![exe.display().to_string(), "helm-worker".into()];
    }
    cfg
}

pub(crate) fn build_chart(a: &BuildArgs) -> anyhow::Result<ExitCode> {
    let h = &a.helm;
    let chart_ref = h.chart.as_deref().context("--dir or --chart is required")?;
    let remote = ["oci://", "http://", "https://"].iter().any(|p| chart_ref.starts_with(p));
    // A chart directory with fetched dependencies is rendered from a copy,
    // kept (`_copy`) until the end.
    let (chart, path, _copy) = if remote {
        // The hub's resolvers (convoy_sources::chartsrc), on the runtime this
        // blocking task runs beside.
        let constraint = h.chart_version.clone().unwrap_or_default();
        let limit = convoy_helm::Limits::default().max_chart_bytes;
        let pulled = tokio::runtime::Handle::current()
            .block_on(convoy_sources::chartsrc::pull_chart(
                chart_ref,
                &constraint,
                &convoy_sources::chartsrc::PullAuth {
                    plain_http: h.plain_http,
                    basic_auth_file: h.basic_auth_file.clone(),
                    bearer_token_file: h.bearer_token_file.clone(),
                    ca_file: h.ca_file.clone(),
                },
                limit,
            ))
            .with_context(|| format!("--chart {}", convoy_sources::redact::redact_url(chart_ref)))?;
        eprintln!(
            "pulled chart version {} ({}{})",
            pulled.version,
            pulled.chart_digest,
            pulled.manifest_digest.as_deref().map(|m| format!(", manifest {m}")).unwrap_or_default()
        );
        // The bundle is named after the chart: the last path segment.
        let last = chart_ref.trim_end_matches('/').rsplit('/').next().unwrap_or_default().to_string();
        (ChartInput::Archive(pulled.bytes), PathBuf::from(last), None)
    } else {
        let path = PathBuf::from(chart_ref).canonicalize().with_context(|| format!("--chart {chart_ref}"))?;
        match with_dependencies(&path, convoy_helm::Limits::default().max_chart_bytes)
            .with_context(|| format!("--chart {chart_ref}: dependencies"))?
        {
            Some(copy) => (ChartInput::Path(copy.path().to_path_buf()), path, Some(copy)),
            None => (ChartInput::Path(path.clone()), path, None),
        }
    };
    let name = match &a.name {
        Some(n) => n.clone(),
        None => path
            .file_stem()
            .and_then(|n| n.to_str())
            // `ingress-nginx-4.15.1.tgz` -> `ingress-nginx`
            .map(|n| match n.rsplit_once('-') {
                Some((stem, v)) if v.starts_with(|c: char| c.is_ascii_digit()) && path.is_file() => {
                    stem.to_string()
                }
                _ => n.to_string(),
            })
            .context("cannot name the bundle; pass --name")?,
    };
    convoy_core::identity::validate_name(&name).map_err(|e| anyhow::anyhow!("bundle name: {e}"))?;
    let key = SigningKey::load(&a.key)?;
    let layers = h.values.iter().map(|f| read_values_file(f)).collect::<Result<Vec<_>, _>>()?;
    let values = merge_layers(&layers);
    let exe = std::env::current_exe().context("locating the convoy binary for its helm-worker")?;
    let worker = WorkerCommand { program: exe, args: vec!["helm-worker".into()] };
    let renderer = Renderer::new(worker, convoy_helm::Limits::default())?;
    let release = h.release.clone().unwrap_or_else(|| name.clone());
    let req = RenderRequest {
        chart: chart.clone(),
        values: values.clone(),
        release_name: release.clone(),
        namespace: h.namespace.clone(),
        revision: 1,
        is_upgrade: false,
        capabilities: Capabilities {
            kube_version: h.kube_version.as_deref().map(kube_version).unwrap_or_default(),
            api_versions: vec![],
        },
    };
    let rendered = renderer.render(&req)?;
    if let Some(v) = &h.chart_version
        && !remote
        && *v != rendered.chart.version
    {
        bail!("--chart-version {v}: the chart is version {}", rendered.chart.version);
    }
    for w in &rendered.warnings {
        eprintln!("warning: {w}");
    }
    let build = release_build(&rendered, &chart, values, &release, &h.namespace, h.max_history, h.crds)?;
    let art = convoy_artifact::pack_files(build.files, &Limits::default())?;
    let statement = Statement::new(&name, &a.source_url, &a.revision, &art.digest, art.size, a.generation)
        .with_helm(StatementHelm {
            chart: build.chart,
            version: build.version,
            chart_digest: build.chart_digest,
            values_digest: build.values_digest,
        });
    let (statement_bytes, signature) = key.sign_statement(&statement)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    write_atomic(&a.out.join(ARTIFACT_FILE), &art.bytes)?;
    write_atomic(&a.out.join(STATEMENT_FILE), &statement_bytes)?;
    write_atomic(&a.out.join(SIGNATURE_FILE), &signature)?;
    println!("{}", art.digest);
    eprintln!(
        "built {name}: chart {} {} rendered by Helm {}: {} objects, {} hooks, {} test hooks (run by `convoy test`), {} CRDs, {} bytes; signed by {}",
        rendered.chart.name,
        rendered.chart.version,
        rendered.helm_version,
        rendered.objects.len(),
        rendered.hooks.len(),
        rendered.tests.len(),
        rendered.crds.len(),
        art.size,
        key.public_key().key_id()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn kube_versions_are_normalized() {
        assert_eq!(super::kube_version("1.31"), "v1.31.0");
        assert_eq!(super::kube_version("v1.20.15"), "v1.20.15");
        assert_eq!(super::kube_version("1.29.3"), "v1.29.3");
    }

    #[test]
    fn crd_policies_are_the_configs_spellings() {
        use convoy_helm::release::CrdPolicy;
        assert_eq!(super::crd_policy("CreateReplace"), Ok(CrdPolicy::CreateReplace));
        assert_eq!(super::crd_policy("Create"), Ok(CrdPolicy::Create));
        assert_eq!(super::crd_policy("Skip"), Ok(CrdPolicy::Skip));
        assert!(super::crd_policy("create").unwrap_err().contains("CreateReplace, Create or Skip"));
    }
}
