//! Builds and stores per-cluster variant artifacts: the I/O around
//! [`crate::domain::variants`]. A variant is the bundle's base artifact with
//! cluster variables substituted ([`convoy_core::substitute`]), then the
//! matching `targets[]` layers (namespace, kustomize patches) applied by
//! running kustomize over a temporary directory, repacked deterministically.
//! A Helm bundle's variant is instead rendered again from its stored render
//! input ([`convoy_sources::helmrender::HelmInput`]) with the cluster's
//! Capabilities and its `helmValues` merged last, through the fleet-wide
//! render cache ([`HelmVariants`]): identical inputs render once.
//!
//! Everything here is blocking (unpacking, kustomize, Helm, packing, files):
//! callers run it in `spawn_blocking`. Variant artifacts live in the hub's
//! `variants/` directory, by digest, and are served through
//! [`ServingVariants`] like the pipeline's own artifacts.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use convoy_artifact::{Limits, PackedArtifact};
use convoy_core::config::BundleSpec;
use convoy_core::pipeline::BuiltHelm;
use convoy_core::substitute::{self, Input, Origin, Variable};
use convoy_core::yaml;
use serde_json::{Value, json};
use tokio::sync::watch;

use convoy_sources::helmrender::{Capabilities, HelmInput, HelmRendered};

use crate::domain::variants::{EffectiveInput, VarSource};
use crate::pipeline::{Builds, SourcePipeline, Statuses};
use crate::{Error, Result, files};

/// The first retry of a failed variant build comes within this, then the ceiling doubles...
const RETRY_BASE: Duration = Duration::from_secs(5);
/// ...up to this.
const RETRY_CAP: Duration = Duration::from_secs(300);

/// Variant artifacts younger than this are never collected.
const GC_GRACE: Duration = Duration::from_secs(600);
/// How often the hub collects variant artifacts no one references.
pub const GC_INTERVAL: Duration = Duration::from_secs(600);

/// How long kustomize may run for one variant.
const KUSTOMIZE_TIMEOUT: Duration = Duration::from_secs(60);
/// The file a layered variant's objects are in (kustomize's output).
pub const LAYERED_FILE: &str = "kustomize.yaml";

/// Renders one Helm input for one cluster: Helm's engine in a bounded worker
/// ([`SettingsRender`]) in production, a counting or gated double in tests.
pub trait HelmRender: Send + Sync {
    /// Render `input` with `caps` and the per-cluster `extra_values` (merged last).
    fn render(
        &self,
        input: &HelmInput,
        caps: &Capabilities,
        extra_values: &[Value],
    ) -> convoy_sources::Result<HelmRendered>;
}

/// [`HelmRender`] through Helm's engine, configured like the source pipeline's
/// builds (HubConfig `helm`).
pub struct SettingsRender(pub convoy_sources::helmrender::HelmSettings);

impl SettingsRender {
    /// From the hub config's `helm` settings.
    pub fn from_config(helm: &crate::config::HelmSettings) -> Self {
        let mut s = convoy_sources::helmrender::HelmSettings {
            kube_version: helm.kube_version.clone(),
            library: helm.library.clone(),
            ..Default::default()
        };
        s.worker = helm.worker.split_first().map(|(program, args)| {
            convoy_sources::helmrender::WorkerCommand { program: program.into(), args: args.to_vec() }
        });
        Self(s)
    }
}

impl HelmRender for SettingsRender {
    fn render(
        &self,
        input: &HelmInput,
        caps: &Capabilities,
        extra_values: &[Value],
    ) -> convoy_sources::Result<HelmRendered> {
        let renderer = self.0.renderer()?;
        convoy_sources::helmrender::render_input(input, &renderer, caps, extra_values, &Limits::default())
    }
}

/// One render's result, as cached: the artifact's files and what the
/// statement says about the chart (with the values digest of what was rendered).
#[derive(Debug, Clone)]
pub struct HelmOut {
    /// The rendered artifact's files.
    pub files: Vec<(String, Vec<u8>)>,
    /// Chart, version, chart digest, values digest.
    pub helm: BuiltHelm,
}

/// Cached render results kept at most (the oldest half is dropped beyond it).
const RENDER_CACHE_MAX: usize = 512;

/// Cached renders by key, and their keys oldest first.
type RenderCache = (HashMap<String, Arc<HelmOut>>, std::collections::VecDeque<String>);

/// The fleet-wide Helm render cache, keyed by
/// [`HelmInput::render_key`] (chart digest, merged values digest,
/// Capabilities digest, release name and namespace, options): identical
/// inputs render once for the whole fleet, whichever bundle or cluster asks.
/// Failed renders are not cached (a later build retries them).
pub struct HelmVariants {
    render: Arc<dyn HelmRender>,
    cache: parking_lot::Mutex<RenderCache>,
    inputs: parking_lot::Mutex<HashMap<String, Arc<HelmInput>>>,
    renders: AtomicU64,
    hits: AtomicU64,
}

impl HelmVariants {
    fn new(render: Arc<dyn HelmRender>) -> Self {
        Self {
            render,
            cache: Default::default(),
            inputs: Default::default(),
            renders: AtomicU64::new(0),
            hits: AtomicU64::new(0),
        }
    }

    /// Renders run so far (cache misses that reached the renderer).
    pub fn renders(&self) -> u64 {
        self.renders.load(Ordering::Relaxed)
    }

    /// Renders answered from the cache.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// The stored input at `path` (digest `digest`), parsed once.
    fn input(&self, digest: &str, path: &Path) -> Result<Arc<HelmInput>> {
        if let Some(i) = self.inputs.lock().get(digest) {
            return Ok(i.clone());
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        if convoy_artifact::digest_of(&bytes) != digest {
            return Err(variant_error(format!(
                "the stored Helm render input {digest} does not match its digest"
            )));
        }
        let input = Arc::new(HelmInput::from_bytes(&bytes).map_err(Error::Sources)?);
        let mut m = self.inputs.lock();
        if m.len() >= RENDER_CACHE_MAX {
            m.clear();
        }
        m.insert(digest.to_string(), input.clone());
        Ok(input)
    }

    /// Render `input` with `caps` and `extra_values`, or take the cached result.
    pub fn render(
        &self,
        input: &HelmInput,
        caps: &Capabilities,
        extra_values: &[Value],
    ) -> Result<Arc<HelmOut>> {
        let key = input.render_key(caps, extra_values).map_err(Error::Sources)?;
        if let Some(out) = self.cache.lock().0.get(&key) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(out.clone());
        }
        self.renders.fetch_add(1, Ordering::Relaxed);
        let r = self.render.render(input, caps, extra_values).map_err(Error::Sources)?;
        let out = Arc::new(HelmOut { files: unpack(&r.artifact.bytes)?, helm: r.helm });
        let mut c = self.cache.lock();
        if c.0.len() >= RENDER_CACHE_MAX {
            let drop = c.1.len() / 2;
            for k in c.1.drain(..drop).collect::<Vec<_>>() {
                c.0.remove(&k);
            }
        }
        if c.0.insert(key.clone(), out.clone()).is_none() {
            c.1.push_back(key);
        }
        Ok(out)
    }
}

/// Without a configured renderer (tests of plain bundles): Helm variants fail `HelmUnavailable`.
struct NoHelm;

impl HelmRender for NoHelm {
    fn render(&self, _: &HelmInput, _: &Capabilities, _: &[Value]) -> convoy_sources::Result<HelmRendered> {
        Err(convoy_sources::Error::Helm(convoy_helm_unavailable()))
    }
}

fn convoy_helm_unavailable() -> convoy_sources::helmrender::HelmError {
    convoy_sources::helmrender::HelmError::HelmUnavailable("the hub has no Helm renderer configured".into())
}

/// Variant artifacts on disk, by digest, and the Helm render cache.
pub struct VariantStore {
    dir: PathBuf,
    helm: HelmVariants,
    /// Retry backoff of a failed variant build (base, cap), in ms.
    retry: (AtomicU64, AtomicU64),
    /// A variant artifact younger than this (ms) is never collected.
    gc_grace: AtomicU64,
    /// Variant artifacts collected so far.
    collected: AtomicU64,
    /// Variant builds that failed so far.
    failed: AtomicU64,
}

impl std::fmt::Debug for VariantStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VariantStore").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl VariantStore {
    /// A store under `dir` (created on first write), without a Helm renderer.
    pub fn new(dir: impl Into<PathBuf>) -> Arc<Self> {
        Self::with_helm(dir, Arc::new(NoHelm))
    }

    /// A store under `dir` whose Helm variants render with `render`.
    pub fn with_helm(dir: impl Into<PathBuf>, render: Arc<dyn HelmRender>) -> Arc<Self> {
        Arc::new(Self {
            dir: dir.into(),
            helm: HelmVariants::new(render),
            retry: (
                AtomicU64::new(RETRY_BASE.as_millis() as u64),
                AtomicU64::new(RETRY_CAP.as_millis() as u64),
            ),
            gc_grace: AtomicU64::new(GC_GRACE.as_millis() as u64),
            collected: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    }

    /// How long a variant artifact is kept at least (a build in progress is
    /// stored before it is signed).
    pub fn gc_grace(&self) -> Duration {
        Duration::from_millis(self.gc_grace.load(Ordering::Relaxed))
    }

    /// Set the grace period (tests shorten it).
    pub fn set_gc_grace(&self, grace: Duration) {
        self.gc_grace.store(grace.as_millis() as u64, Ordering::Relaxed);
    }

    /// Variant artifacts collected since start.
    pub fn collected(&self) -> u64 {
        self.collected.load(Ordering::Relaxed)
    }

    /// Count a failed variant build.
    pub fn count_failure(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Delete the variant artifacts whose digest is not in `keep` and that
    /// are older than the grace period (blocking); the digests deleted.
    pub fn gc(&self, keep: &std::collections::HashSet<String>) -> Result<Vec<String>> {
        let grace = self.gc_grace();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&self.dir, e)),
        };
        let now = std::time::SystemTime::now();
        let mut deleted = Vec::new();
        for e in entries {
            let e = e.map_err(|e| Error::io(&self.dir, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(hex) = name.strip_suffix(".tar.gz") else { continue };
            let digest = format!("sha256:{hex}");
            if keep.contains(&digest) {
                continue;
            }
            let age = e.metadata().and_then(|m| m.modified()).ok().and_then(|t| now.duration_since(t).ok());
            if age.is_none_or(|a| a < grace) {
                continue;
            }
            std::fs::remove_file(e.path()).map_err(|err| Error::io(e.path(), err))?;
            deleted.push(digest);
        }
        self.collected.fetch_add(deleted.len() as u64, Ordering::Relaxed);
        Ok(deleted)
    }

    /// The backoff (base, cap) of a failed variant build's retries
    /// ([`convoy_core::backoff`]: delay `n` is uniform in `[0, min(cap, base·2^n)]`).
    pub fn retry_backoff(&self) -> (Duration, Duration) {
        (
            Duration::from_millis(self.retry.0.load(Ordering::Relaxed)),
            Duration::from_millis(self.retry.1.load(Ordering::Relaxed)),
        )
    }

    /// Set the retry backoff (tests shorten it).
    pub fn set_retry_backoff(&self, base: Duration, cap: Duration) {
        self.retry.0.store(base.as_millis() as u64, Ordering::Relaxed);
        self.retry.1.store(cap.as_millis() as u64, Ordering::Relaxed);
    }

    /// The Helm render cache (its counters).
    pub fn helm(&self) -> &HelmVariants {
        &self.helm
    }

    /// The file of the variant artifact with `digest`, if stored.
    pub fn path(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:")?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let p = self.dir.join(format!("{hex}.tar.gz"));
        p.is_file().then_some(p)
    }

    /// Store a packed variant (idempotent: same digest, same bytes).
    pub fn put(&self, art: &PackedArtifact) -> Result<PathBuf> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let hex = art.digest.trim_start_matches("sha256:");
        let p = self.dir.join(format!("{hex}.tar.gz"));
        if !p.is_file() {
            files::write_public(&p, &art.bytes)?;
        }
        Ok(p)
    }
}

/// The variant counters on the hub's `/metrics`, read at scrape time:
/// `helm_variant_renders` (Helm renders run for variants),
/// `helm_variant_render_cache_hits` (variants answered by the render cache),
/// `variant_builds_failed` and `variant_artifacts_collected`.
#[derive(Debug)]
pub struct VariantCollector(pub Arc<VariantStore>);

impl prometheus_client::collector::Collector for VariantCollector {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        let s = &self.0;
        for (name, help, value) in [
            ("helm_variant_renders", "Helm renders run for per-cluster variants", s.helm.renders()),
            (
                "helm_variant_render_cache_hits",
                "Per-cluster Helm variants answered by the fleet-wide render cache",
                s.helm.hits(),
            ),
            (
                "variant_builds_failed",
                "Variant builds that failed (each is retried with backoff)",
                s.failed.load(Ordering::Relaxed),
            ),
            (
                "variant_artifacts_collected",
                "Variant artifacts deleted because no cluster, rollout or current variant references them",
                s.collected(),
            ),
        ] {
            let counter = ConstCounter::new(value);
            let m = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(m)?;
        }
        Ok(())
    }
}

/// A [`SourcePipeline`] that also serves the variant artifacts.
pub struct ServingVariants {
    inner: Arc<dyn SourcePipeline>,
    store: Arc<VariantStore>,
}

impl ServingVariants {
    /// Wrap `inner`.
    pub fn new(inner: Arc<dyn SourcePipeline>, store: Arc<VariantStore>) -> Arc<Self> {
        Arc::new(Self { inner, store })
    }
}

impl SourcePipeline for ServingVariants {
    fn builds(&self) -> watch::Receiver<Builds> {
        self.inner.builds()
    }
    fn statuses(&self) -> watch::Receiver<Statuses> {
        self.inner.statuses()
    }
    fn reconcile(&self, source: &str) -> Result<()> {
        self.inner.reconcile(source)
    }
    fn set_suspended(&self, source: &str, suspended: bool) -> Result<()> {
        self.inner.set_suspended(source, suspended)
    }
    fn artifact_path(&self, digest: &str) -> Option<PathBuf> {
        self.inner.artifact_path(digest).or_else(|| self.store.path(digest))
    }
    fn webhook_router(&self) -> Option<axum::Router> {
        self.inner.webhook_router()
    }
    fn render_stats(&self) -> Option<std::sync::Arc<convoy_sources::deps::RenderStats>> {
        self.inner.render_stats()
    }
}

fn is_yaml(path: &str) -> bool {
    path.ends_with(".yaml") || path.ends_with(".yml") || path.ends_with(".json")
}

fn variant_error(m: impl Into<String>) -> Error {
    Error::Config(m.into())
}

/// The files of an artifact.
pub fn unpack(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    let files = convoy_artifact::unpack::unpack(bytes, &Limits::default()).map_err(Error::Signing)?;
    Ok(files.into_iter().map(|f| (f.path, f.content)).collect())
}

fn parse_docs(file: &str, text: &str) -> Result<Vec<Value>> {
    yaml::documents(text)
        .iter()
        .map(|d| yaml::parse_document::<Value>(file, d).map_err(Error::Core))
        .collect()
}

/// The variables the bundle's documents (and its target entries' patches)
/// use, each with whether some expression has no default.
pub fn used_variables(base: &[(String, Vec<u8>)], spec: &BundleSpec) -> Result<BTreeMap<Variable, bool>> {
    let mut used = BTreeMap::new();
    for (path, content) in base.iter().filter(|(p, _)| is_yaml(p)) {
        let text = String::from_utf8_lossy(content);
        for v in parse_docs(path, &text)? {
            substitute::used_variables(&v, &mut used);
        }
    }
    for (i, t) in spec.targets.iter().enumerate() {
        for (j, p) in t.patches.iter().enumerate() {
            for v in parse_docs(&format!("targets[{i}].patches[{j}]"), &p.patch)? {
                substitute::used_variables(&v, &mut used);
            }
        }
    }
    Ok(used)
}

/// A variant's files and the explanation of every value a layer set.
#[derive(Debug, Clone, Default)]
pub struct Rendered {
    /// `(path, content)`, what the artifact holds.
    pub files: Vec<(String, Vec<u8>)>,
    /// One line per value set by a layer, in order: substitutions (file,
    /// document, path, value, and the layer it came from), then namespace and
    /// patch layers.
    pub explain: Vec<String>,
}

fn describe_origin(origin: &Origin, variable: Option<&VarSource>) -> String {
    match origin {
        Origin::Default => "default of the expression".into(),
        Origin::Name => "variable cluster.name".into(),
        Origin::KubernetesVersion => "variable cluster.kubernetesVersion (agent-reported)".into(),
        Origin::Label(k) => format!("variable {} (cluster label)", Variable::Label(k.clone())),
        Origin::Var(k) => format!(
            "variable {} from {}",
            Variable::Var(k.clone()),
            variable.map(|s| s.to_string()).unwrap_or_else(|| "cluster vars".into())
        ),
    }
}

/// Substitute one YAML text; `None` when it has no expression (kept as is).
fn substitute_text(
    vars: &substitute::Variables,
    input: &EffectiveInput,
    file: &str,
    text: &str,
    explain: &mut Vec<String>,
) -> Result<Option<String>> {
    if !text.contains("${{") {
        return Ok(None);
    }
    let docs = yaml::documents(text);
    let values: Vec<Value> =
        docs.iter().map(|d| yaml::parse_document::<Value>(file, d)).collect::<std::result::Result<_, _>>()?;
    let inputs: Vec<Input<'_>> =
        values.iter().zip(&docs).map(|(v, d)| Input { value: v, index: d.index, source: Some(d) }).collect();
    let out = substitute::substitute_all(vars, file, &inputs)?;
    // Unchanged (no expression and no escape): keep the bytes as written.
    if out.iter().zip(&values).all(|(s, v)| &s.document == v) {
        return Ok(None);
    }
    let mut text = String::new();
    for s in &out {
        for e in &s.explanations {
            let source = match &e.origin {
                Origin::Var(k) => {
                    input.variables.get(&Variable::Var(k.clone())).and_then(|b| b.source.as_ref())
                }
                _ => None,
            };
            explain.push(format!(
                "{file} document {} {}: {} = {:?} <- {}",
                e.index,
                e.path,
                e.expression,
                e.value,
                describe_origin(&e.origin, source)
            ));
        }
        let y = serde_saphyr::to_string(&s.document).map_err(|e| variant_error(format!("{file}: {e}")))?;
        text.push_str("---\n");
        text.push_str(&y);
        if !y.ends_with('\n') {
            text.push('\n');
        }
    }
    Ok(Some(text))
}

/// Render a variant from the base artifact's files: substitution (when the
/// input has variables), then the layers. Errors name the file, document,
/// line and variable (substitution) or kustomize's message (layers).
pub fn render(base: &[(String, Vec<u8>)], input: &EffectiveInput, cluster: &str) -> Result<Rendered> {
    let vars = input.substitution_variables(cluster);
    let mut explain = Vec::new();
    let mut files = Vec::with_capacity(base.len());
    for (path, content) in base {
        if !input.variables.is_empty() && is_yaml(path) {
            let text = String::from_utf8_lossy(content);
            if let Some(new) = substitute_text(&vars, input, path, &text, &mut explain)? {
                files.push((path.clone(), new.into_bytes()));
                continue;
            }
        }
        files.push((path.clone(), content.clone()));
    }
    let layered = input.layers.iter().any(|l| l.namespace.is_some() || !l.patches.is_empty());
    if !layered {
        return Ok(Rendered { files, explain });
    }
    let mut kustomization = serde_json::Map::new();
    kustomization.insert("apiVersion".into(), json!("kustomize.config.k8s.io/v1beta1"));
    kustomization.insert("kind".into(), json!("Kustomization"));
    kustomization.insert(
        "resources".into(),
        Value::Array(
            files
                .iter()
                .filter(|(p, _)| is_yaml(p))
                .map(|(p, _)| Value::String(format!("base/{p}")))
                .collect(),
        ),
    );
    let mut patches = Vec::new();
    for l in &input.layers {
        if let Some(ns) = &l.namespace {
            kustomization.insert("namespace".into(), json!(ns));
            explain.push(format!("namespace {ns} <- targets[{}] ({})", l.index, l.selector));
        }
        for (j, p) in l.patches.iter().enumerate() {
            let name = format!("targets[{}].patches[{j}]", l.index);
            let text = match substitute_text(&vars, input, &name, &p.patch, &mut explain)? {
                Some(t) => t,
                None => p.patch.clone(),
            };
            let mut entry = serde_json::Map::new();
            entry.insert("patch".into(), json!(text));
            let what = match &p.target {
                Some(t) => {
                    entry.insert("target".into(), serde_json::to_value(t).unwrap_or(Value::Null));
                    format!(
                        "{}/{}",
                        t.kind.as_deref().unwrap_or("*"),
                        t.name.as_deref().or(t.label_selector.as_deref()).unwrap_or("*")
                    )
                }
                None => {
                    let v: Value = parse_docs(&name, &p.patch)?.into_iter().next().unwrap_or(Value::Null);
                    format!(
                        "{}/{}",
                        v.get("kind").and_then(Value::as_str).unwrap_or("?"),
                        v.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("?")
                    )
                }
            };
            explain.push(format!("patch {what} <- {name} ({})", l.selector));
            patches.push(Value::Object(entry));
        }
    }
    if !patches.is_empty() {
        kustomization.insert("patches".into(), Value::Array(patches));
    }
    let dir = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    for (p, c) in &files {
        let path = dir.path().join("base").join(p);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        std::fs::write(&path, c).map_err(|e| Error::io(&path, e))?;
    }
    let k = serde_saphyr::to_string(&Value::Object(kustomization))
        .map_err(|e| variant_error(format!("kustomization: {e}")))?;
    let kpath = dir.path().join("kustomization.yaml");
    std::fs::write(&kpath, k).map_err(|e| Error::io(&kpath, e))?;
    let out = run_kustomize(dir.path())?;
    Ok(Rendered { files: vec![(LAYERED_FILE.to_string(), out)], explain })
}

/// A built variant: its artifact, and for a Helm bundle what the statement
/// says about the chart (the values digest is of the values it rendered with).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// `sha256:<hex>` of the variant artifact.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// The Helm part of its statement.
    pub helm: Option<convoy_artifact::statement::StatementHelm>,
}

/// What one variant build reads: the base artifact's file and, for a Helm
/// bundle, its stored render input (`BuiltHelm::input`).
#[derive(Debug, Clone)]
pub struct BuildJob {
    /// The base artifact's digest and file (`None`: not stored on the hub).
    pub base: (String, Option<PathBuf>),
    /// For a Helm bundle: the render input's digest and file (`None`: not stored).
    pub helm_input: Option<(String, Option<PathBuf>)>,
    /// The effective input.
    pub input: EffectiveInput,
    /// A cluster of the variant (for `cluster.name`; only a variant whose
    /// documents use it has one cluster).
    pub cluster: String,
}

/// Build and store one variant (blocking). A Helm bundle is rendered again
/// with the cluster's Capabilities (or the input's default) and the layers'
/// `helmValues` merged last, through the render cache; then, for every
/// bundle, variables are substituted and the kustomize layers applied.
pub fn build(store: &VariantStore, job: &BuildJob) -> std::result::Result<Built, String> {
    let (files, helm) = match &job.helm_input {
        Some((digest, path)) => {
            let path = path.as_ref().ok_or_else(|| {
                format!(
                    "the Helm render input {digest} is not stored on the hub yet (the next build stores it)"
                )
            })?;
            let hi = store.helm.input(digest, path).map_err(|e| e.to_string())?;
            let caps = match &job.input.capabilities {
                Some(c) => c.to_helm(),
                None => hi.default_capabilities.clone(),
            };
            let extra: Vec<Value> = job.input.layers.iter().filter_map(|l| l.helm_values.clone()).collect();
            let out = store.helm.render(&hi, &caps, &extra).map_err(|e| e.to_string())?;
            (out.files.clone(), Some((&out.helm).into()))
        }
        None => {
            let (digest, path) = &job.base;
            let path =
                path.as_ref().ok_or_else(|| format!("base artifact {digest} is not stored on the hub"))?;
            let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            (unpack(&bytes).map_err(|e| e.to_string())?, None)
        }
    };
    let rendered = render(&files, &job.input, &job.cluster).map_err(|e| e.to_string())?;
    let packed = pack(&rendered).map_err(|e| e.to_string())?;
    store.put(&packed).map_err(|e| e.to_string())?;
    Ok(Built { digest: packed.digest, size: packed.size, helm })
}

/// A variant build for the builder task: the cache key (base digest,
/// variant key) and what the build reads.
#[derive(Debug)]
pub struct BuildRequest {
    /// (base digest, variant key).
    pub key: (String, String),
    /// What to build.
    pub job: BuildJob,
}

/// A finished variant build, fed back to the state actor.
#[derive(Debug)]
pub struct BuildDone {
    /// (base digest, variant key).
    pub key: (String, String),
    /// The variant, or the error (located for substitution problems).
    pub result: std::result::Result<Built, String>,
}

/// Start the builder task: it takes [`BuildRequest`]s in order, builds each
/// in `spawn_blocking` ([`build`]: unpack, Helm, kustomize, pack, store) and
/// sends a [`BuildDone`] back, so the state actor never waits for a build in
/// its turn. It stops at `shutdown` or when the actor drops its sender.
pub fn spawn_builder(
    store: Arc<VariantStore>,
    peers: crate::ha::Coordination,
    shutdown: tokio_util::sync::CancellationToken,
) -> (tokio::sync::mpsc::UnboundedSender<BuildRequest>, tokio::sync::mpsc::UnboundedReceiver<BuildDone>) {
    let (req_tx, mut req_rx) = tokio::sync::mpsc::unbounded_channel::<BuildRequest>();
    let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let req = tokio::select! {
                r = req_rx.recv() => match r { Some(r) => r, None => break },
                _ = shutdown.cancelled() => break,
            };
            let store = store.clone();
            let BuildRequest { key, mut job } = req;
            // Built by another replica (the previous holder of the source
            // lock, crate::ha): fetch the bytes from a peer, checked against
            // their digest. A failure leaves `None`, which the build reports.
            if job.base.1.is_none() {
                job.base.1 = peers.fetch(&job.base.0).await.ok();
            }
            if let Some((digest, path @ None)) = &mut job.helm_input
                && !digest.is_empty()
            {
                *path = peers.fetch(digest).await.ok();
            }
            let result = tokio::task::spawn_blocking(move || build(&store, &job))
                .await
                .unwrap_or_else(|e| Err(format!("variant build task failed: {e}")));
            if done_tx.send(BuildDone { key, result }).is_err() {
                break;
            }
        }
    });
    (req_tx, done_rx)
}

/// Pack rendered files deterministically (sorted paths, fixed metadata).
pub fn pack(r: &Rendered) -> Result<PackedArtifact> {
    convoy_artifact::pack::pack_files(r.files.iter().cloned(), &Limits::default()).map_err(Error::Signing)
}

fn run_kustomize(dir: &Path) -> Result<Vec<u8>> {
    let (program, args) = convoy_sources::render::kustomize_command(&convoy_sources::render::Kustomize::Auto)
        .map_err(Error::Sources)?;
    let mut child = Command::new(&program)
        .args(&args)
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| variant_error(format!("cannot run {}: {e}", program.display())))?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let max = Limits::default().max_total_bytes;
    let out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = (&mut stdout).take(max + 1).read_to_end(&mut b);
        let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        b
    });
    let err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut b);
        let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        b
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() > KUSTOMIZE_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(variant_error(format!("kustomize ran longer than {KUSTOMIZE_TIMEOUT:?}")));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(variant_error(format!("kustomize: {e}"))),
        }
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    if !status.success() {
        let msg = String::from_utf8_lossy(&err);
        let msg = msg.replace(&dir.display().to_string(), "<variant>");
        return Err(variant_error(format!("kustomize failed: {}", msg.trim())));
    }
    if out.len() as u64 > max {
        return Err(variant_error(format!("kustomize output is larger than {max} bytes")));
    }
    Ok(out)
}

/// What `convoy render BUNDLE --cluster C` needs, taken from the fleet view.
#[derive(Debug, Clone)]
pub struct RenderPlan {
    bundle: String,
    cluster: String,
    spec: BundleSpec,
    base: Arc<crate::domain::DeploymentRecord>,
    served: Option<Arc<crate::domain::DeploymentRecord>>,
    variant: String,
    failed: Option<String>,
    labels: convoy_core::selector::Labels,
    vars: BTreeMap<String, String>,
    kube_version: String,
    api_versions: Vec<String>,
}

/// What the cluster gets of the bundle, with the explanation.
#[derive(Debug, Clone, Default)]
pub struct RenderOut {
    /// The artifact's files.
    pub files: Vec<(String, Vec<u8>)>,
    /// The variant key ("" for the base).
    pub variant: String,
    /// The artifact digest.
    pub digest: String,
    /// The generation the hub wants on the cluster.
    pub generation: u64,
    /// One line per value a layer set.
    pub explain: Vec<String>,
    /// The variant's error, if it cannot be built.
    pub error: String,
}

/// Look up what `cluster` gets of `bundle` in `view`.
pub fn explain_for(view: &crate::state::FleetView, bundle: &str, cluster: &str) -> Result<RenderPlan> {
    use crate::domain::Rejection;
    use crate::domain::desired::Placed;
    let b = view
        .fleet
        .bundles
        .get(bundle)
        .ok_or_else(|| Rejection::NotFound(format!("bundle {bundle:?} is not in the fleet config")))?;
    let e = view
        .clusters
        .get(cluster)
        .ok_or_else(|| Rejection::NotFound(format!("cluster {cluster:?} is not registered")))?;
    let (labels, mut vars) = view.fleet.cluster_facts(cluster, &e.record.labels);
    vars.extend(e.record.vars.clone());
    if !b.spec.targets_cluster(cluster, &labels) {
        return Err(Rejection::FailedPrecondition(format!(
            "bundle {bundle:?} does not target cluster {cluster:?}"
        ))
        .into());
    }
    let base = view
        .records
        .get(bundle)
        .cloned()
        .ok_or_else(|| Rejection::FailedPrecondition(format!("bundle {bundle:?} has no artifact yet")))?;
    let (served, variant, failed) = match view.placements.get(cluster).and_then(|p| p.get(bundle)) {
        Some(Placed::Variant(k)) => {
            (view.variants.get(&(bundle.to_string(), k.clone())).cloned(), k.clone(), None)
        }
        Some(Placed::Failed(m)) => (None, String::new(), Some(m.clone())),
        Some(Placed::Base) => (Some(base.clone()), String::new(), None),
        None if crate::domain::variants::is_customized(&b.spec) => {
            return Err(Rejection::FailedPrecondition(format!(
                "the hub has not computed cluster {cluster:?}'s variant of {bundle:?} yet; retry"
            ))
            .into());
        }
        None => (Some(base.clone()), String::new(), None),
    };
    Ok(RenderPlan {
        bundle: bundle.to_string(),
        cluster: cluster.to_string(),
        spec: b.spec.clone(),
        base,
        served,
        variant,
        failed,
        labels,
        vars,
        kube_version: e.shared.kube_version(),
        api_versions: e.shared.api_versions(),
    })
}

/// The lines a Helm variant adds to an explanation: the Capabilities it
/// rendered with and each layer's `helmValues`, in merge order.
pub fn helm_explain(input: &EffectiveInput) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(c) = &input.capabilities {
        out.push(format!(
            "helm capabilities kubeVersion {} and {} API versions <- agent-reported",
            c.kube_version,
            c.api_versions.len()
        ));
    }
    for l in &input.layers {
        if let Some(v) = &l.helm_values {
            out.push(format!(
                "helm values {} <- targets[{}] ({})",
                convoy_sources::helmrender::canonical_values(v),
                l.index,
                l.selector
            ));
        }
    }
    out
}

/// Read the served artifact and explain it (blocking).
pub fn render_response(pipeline: &dyn SourcePipeline, plan: RenderPlan) -> Result<RenderOut> {
    use crate::domain::variants::{ClusterFacts, Placement, placement};
    let mut out = RenderOut { variant: plan.variant.clone(), ..Default::default() };
    let read = |digest: &str| -> Result<Vec<(String, Vec<u8>)>> {
        let path = pipeline.artifact_path(digest).ok_or_else(|| {
            crate::domain::Rejection::NotFound(format!("artifact {digest} is not stored on the hub"))
        })?;
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        unpack(&bytes)
    };
    out.explain.push(format!("base {} {} ({})", plan.bundle, plan.base.revision, plan.base.digest));
    if let Some(m) = plan.failed {
        out.error = m;
        return Ok(out);
    }
    let served = plan.served.expect("set unless failed");
    out.digest = served.digest.clone();
    out.generation = served.generation;
    out.files = read(&served.digest)?;
    if crate::domain::variants::is_customized(&plan.spec) {
        let base = read(&plan.base.digest)?;
        let used =
            if plan.spec.substitute.is_some() { used_variables(&base, &plan.spec)? } else { BTreeMap::new() };
        let facts = ClusterFacts {
            name: &plan.cluster,
            labels: &plan.labels,
            vars: &plan.vars,
            kubernetes_version: (!plan.kube_version.is_empty()).then_some(plan.kube_version.as_str()),
            api_versions: &plan.api_versions,
        };
        if let Placement::Variant { input, .. } = placement(&plan.spec, &facts, &used) {
            out.explain.extend(helm_explain(&input));
            out.explain.extend(render(&base, &input, &plan.cluster)?.explain);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::variants::{Binding, Layer};
    use convoy_core::config::Patch;

    fn base() -> Vec<(String, Vec<u8>)> {
        vec![(
            "web.yaml".into(),
            br#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 1
  template:
    spec:
      containers:
        - name: web
          image: nginx
          env:
            - name: REGION
              value: "${{ cluster.vars.region }}"
            - name: SCRIPT
              value: "echo ${HOME}"
"#
            .to_vec(),
        )]
    }

    fn input(region: Option<&str>) -> EffectiveInput {
        let mut i = EffectiveInput::default();
        i.variables.insert(
            Variable::Var("region".into()),
            Binding {
                value: region.map(String::from),
                source: region.map(|_| VarSource::Target(1, "clusterSelector=region=eu".into())),
            },
        );
        i
    }

    #[test]
    fn substitution_only_changes_the_values_and_explains_them() {
        let r = render(&base(), &input(Some("eu")), "c1").unwrap();
        let text = String::from_utf8(r.files[0].1.clone()).unwrap();
        assert!(text.contains("value: eu"), "{text}");
        assert!(text.contains("echo ${HOME}"), "{text}");
        assert_eq!(
            r.explain,
            vec![
                "web.yaml document 0 $.spec.template.spec.containers[0].env[0].value: ${{ cluster.vars.region }} = \"eu\" <- variable cluster.vars.region from targets[1] (clusterSelector=region=eu)"
            ]
        );
        // Deterministic: the same input packs to the same digest.
        assert_eq!(
            pack(&r).unwrap().digest,
            pack(&render(&base(), &input(Some("eu")), "c2").unwrap()).unwrap().digest
        );
    }

    #[test]
    fn a_missing_variable_names_file_document_and_line() {
        let err = render(&base(), &input(None), "c1").unwrap_err().to_string();
        assert!(err.contains("web.yaml"), "{err}");
        assert!(err.contains("document 0, line 14"), "{err}");
        assert!(err.contains("cluster.vars.region is not set"), "{err}");
    }

    #[test]
    fn namespace_and_patches_run_through_kustomize() {
        if convoy_sources::render::kustomize_command(&convoy_sources::render::Kustomize::Auto).is_err() {
            panic!("kubectl or kustomize must be on PATH (scripts/setup.sh installs kubectl)");
        }
        let mut i = input(Some("us"));
        i.layers.push(Layer {
            index: 2,
            selector: "clusterName=c1".into(),
            namespace: Some("web-us".into()),
            patches: vec![Patch {
                patch: "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {replicas: 3}\n"
                    .into(),
                target: None,
            }],
            helm_values: None,
        });
        let r = render(&base(), &i, "c1").unwrap();
        assert_eq!(r.files.len(), 1);
        assert_eq!(r.files[0].0, LAYERED_FILE);
        let text = String::from_utf8(r.files[0].1.clone()).unwrap();
        assert!(text.contains("namespace: web-us"), "{text}");
        assert!(text.contains("replicas: 3"), "{text}");
        assert!(text.contains("value: us"), "{text}");
        assert_eq!(r.explain[1], "namespace web-us <- targets[2] (clusterName=c1)");
        assert_eq!(r.explain[2], "patch Deployment/web <- targets[2].patches[0] (clusterName=c1)");
    }

    #[test]
    fn a_helm_variant_explains_its_capabilities_and_each_values_layer() {
        use crate::domain::variants::HelmCapabilities;
        let mut i = EffectiveInput {
            capabilities: Some(HelmCapabilities::reported("1.31", &["v1".into(), "apps/v1".into()])),
            ..Default::default()
        };
        for (index, sel, v) in [
            (1, "clusterSelector=env=prod", json!({"replicas": 3})),
            (2, "clusterName=c1", json!({"b": {"a": 1}})),
        ] {
            i.layers.push(Layer {
                index,
                selector: sel.into(),
                namespace: None,
                patches: vec![],
                helm_values: Some(v),
            });
        }
        assert_eq!(
            helm_explain(&i),
            vec![
                "helm capabilities kubeVersion v1.31.0 and 2 API versions <- agent-reported",
                "helm values {\"replicas\":3} <- targets[1] (clusterSelector=env=prod)",
                "helm values {\"b\":{\"a\":1}} <- targets[2] (clusterName=c1)",
            ]
        );
        assert!(helm_explain(&EffectiveInput::default()).is_empty());
    }

    #[test]
    fn variant_counters_are_exported() {
        let dir = tempfile::tempdir().unwrap();
        let store = VariantStore::new(dir.path());
        store.count_failure();
        let mut m = crate::metrics::Metrics::new();
        m.registry.register_collector(Box::new(VariantCollector(store)));
        let text = m.encode();
        for name in [
            "convoy_hub_helm_variant_renders_total 0",
            "convoy_hub_helm_variant_render_cache_hits_total 0",
            "convoy_hub_variant_builds_failed_total 1",
            "convoy_hub_variant_artifacts_collected_total 0",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
