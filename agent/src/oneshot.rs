//! One-shot mode, without a hub: `convoy-agent apply DIR` and
//! `convoy-agent diff DIR` on a directory written by `convoy build`
//! (artifact.tar.gz, statement.json, statement.sig). Same verification, engine,
//! inventory, prune and health logic as the agent; a per-object report.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use convoy_artifact::{ARTIFACT_FILE, Limits, SIGNATURE_FILE, STATEMENT_FILE, Statement, TrustedKeys};
use tokio_util::sync::CancellationToken;

use crate::bundle::{AppliedRevision, BundleOptions, Decision, Deployment, decide, verify_all};
use crate::engine::{Action, ApplyOptions, ApplyReport, Engine, ObjectResult, Plan};
use crate::health::{self, HealthStatus, ObjectHealth};
use crate::helmrelease::{HelmParts, Release};
use crate::{Error, Result};

/// What to apply and how.
#[derive(Debug, Clone)]
pub struct OneShotOptions {
    /// The `convoy build` output directory.
    pub dir: PathBuf,
    /// Trusted public keys (PEM files); any one verifying is enough.
    pub keys: Vec<PathBuf>,
    /// The bundle name the statement must carry (default: the statement's).
    pub bundle: Option<String>,
    /// Namespace of the inventory (the agent's namespace).
    pub namespace: String,
    /// Namespace for namespaced objects that have none.
    pub target_namespace: Option<String>,
    /// Delete objects that left the bundle since the last apply.
    pub prune: bool,
    /// Take ownership of fields other managers own.
    pub force: bool,
    /// Wait for health.
    pub wait: bool,
    /// Apply plus wait timeout.
    pub timeout: Duration,
    /// Allow a generation older than the applied one.
    pub allow_rollback: bool,
    /// Objects applied at once.
    pub concurrency: usize,
    /// Which namespaces and kinds the bundle may use.
    pub tenancy: convoy_core::tenancy::Tenancy,
    /// age identity files for SOPS-encrypted documents (`--age-key-file`).
    pub age_key_files: Vec<PathBuf>,
}

impl OneShotOptions {
    /// Defaults for a directory and keys.
    pub fn new(dir: impl Into<PathBuf>, keys: Vec<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            keys,
            bundle: None,
            namespace: "convoy-system".into(),
            target_namespace: None,
            prune: false,
            force: false,
            wait: false,
            timeout: Duration::from_secs(300),
            allow_rollback: false,
            concurrency: 8,
            tenancy: convoy_core::tenancy::Tenancy::default(),
            age_key_files: Vec::new(),
        }
    }
}

/// A verified, parsed build directory.
pub struct VerifiedDir {
    /// The statement.
    pub statement: Statement,
    /// The exact statement bytes.
    pub statement_bytes: Vec<u8>,
    /// The signature.
    pub signature: Vec<u8>,
    /// Every manifest.
    pub manifests: Vec<crate::objects::Manifest>,
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>> {
    let p = dir.join(name);
    std::fs::read(&p).map_err(|e| Error::io(format!("read {}", p.display()), e))
}

/// Verify a build directory (signature by a trusted key, bundle name, digest,
/// size) and only then unpack and parse it.
pub fn verify_dir(dir: &Path, keys: &[PathBuf], bundle: Option<&str>) -> Result<VerifiedDir> {
    verify_dir_with(dir, keys, bundle, &convoy_sops::AgeKeys::new())
}

/// [`verify_dir`], decrypting SOPS documents with `age` (in memory only).
pub fn verify_dir_with(
    dir: &Path,
    keys: &[PathBuf],
    bundle: Option<&str>,
    age: &convoy_sops::AgeKeys,
) -> Result<VerifiedDir> {
    if keys.is_empty() {
        return Err(Error::Config("no trusted key given (--key PUB)".into()));
    }
    let keys = crate::config::expand_key_paths(keys)?;
    let trusted = TrustedKeys::load(&keys).map_err(|e| Error::Config(format!("trusted keys: {e}")))?;
    let statement_bytes = read(dir, STATEMENT_FILE)?;
    let signature = read(dir, SIGNATURE_FILE)?;
    let artifact = read(dir, ARTIFACT_FILE)?;
    let statement = verify_all(&statement_bytes, &signature, &artifact, &trusted, bundle)?;
    let manifests = crate::bundle::load_manifests_with(&artifact, &Limits::default(), age)?;
    Ok(VerifiedDir { statement, statement_bytes, signature, manifests })
}

/// The outcome of a one-shot apply.
#[derive(Debug)]
pub struct OneShotReport {
    /// The bundle.
    pub bundle: String,
    /// The statement's generation.
    pub generation: u64,
    /// The statement's revision.
    pub revision: String,
    /// The apply.
    pub apply: ApplyReport,
    /// Health, when waited for.
    pub health: Vec<ObjectHealth>,
    /// How long apply plus wait took.
    pub duration: Duration,
    /// For a Helm bundle: the hooks that ran, in order.
    pub hooks: Vec<crate::helmrelease::HookRun>,
    /// For a Helm bundle: the release revision written (`deployed` or `failed`).
    pub helm_revision: Option<u64>,
}

impl OneShotReport {
    /// Applied without error and (when waited for) every object healthy.
    pub fn ok(&self) -> bool {
        self.apply.error.is_none() && self.health.iter().all(|h| h.status == HealthStatus::Current)
    }

    /// The per-object report, one line per object, then a summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ =
            writeln!(out, "bundle {} generation {} revision {}", self.bundle, self.generation, self.revision);
        let not_ready: std::collections::HashMap<_, _> = self
            .health
            .iter()
            .filter(|h| h.status != HealthStatus::Current)
            .map(|h| (h.key.clone(), h))
            .collect();
        for h in &self.hooks {
            let _ = writeln!(out, "  {:<15} {} ({})", "hook", h.hook, h.event);
        }
        for o in &self.apply.objects {
            line(&mut out, o);
            if let Some(h) = not_ready.get(&o.key) {
                let _ = writeln!(out, "  {:<15} {}: {}", "not ready", h.key, h.message);
            }
        }
        let c = self.apply.counts();
        let _ = write!(
            out,
            "summary: {} created, {} configured, {} unchanged, {} pruned",
            c.created, c.configured, c.unchanged, c.pruned
        );
        if !self.health.is_empty() {
            let _ = write!(out, ", {} not ready", not_ready.len());
        }
        let _ = writeln!(out, " ({} ms, {} writes)", self.duration.as_millis(), self.apply.writes);
        if let Some(e) = &self.apply.error {
            let _ = writeln!(out, "error: {e}");
        }
        if let Some(v) = self.helm_revision {
            let _ = writeln!(out, "helm release revision {v} recorded");
        }
        out
    }
}

fn line(out: &mut String, o: &ObjectResult) {
    let mut s = format!("  {:<15} {}", o.action.to_string(), o.key);
    if !o.fields.is_empty() {
        let _ = write!(s, " ({})", o.fields.join(", "));
    }
    if !o.message.is_empty() {
        let _ = write!(s, ": {}", o.message);
    }
    let _ = writeln!(out, "{s}");
}

/// Verify and parse the directory (on a blocking thread) while warming
/// discovery; then plan against the cluster.
async fn verify_and_plan(engine: &Engine, opts: &OneShotOptions) -> Result<(Plan, Option<HelmParts>)> {
    let (dir, keys, bundle) = (opts.dir.clone(), opts.keys.clone(), opts.bundle.clone());
    let age_files = opts.age_key_files.clone();
    let verify = tokio::task::spawn_blocking(move || {
        let age = crate::sops::load_key_files(&age_files)?;
        verify_dir_with(&dir, &keys, bundle.as_deref(), &age)
    });
    let ((), v) = tokio::join!(engine.prefetch_discovery(), verify);
    let v = v.map_err(|e| Error::Config(format!("verification task failed: {e}")))??;
    plan_dir(engine, v, opts).await
}

async fn plan_dir(
    engine: &Engine,
    v: VerifiedDir,
    opts: &OneShotOptions,
) -> Result<(Plan, Option<HelmParts>)> {
    let st = &v.statement;
    // A Helm bundle: its release record and hooks are not objects of the plan.
    let (manifests, helm) = crate::helmrelease::split(v.manifests)?;
    let target_namespace =
        opts.target_namespace.as_deref().or(helm.as_ref().map(|h| h.spec.namespace.as_str()));
    // Replays: the same rules as the agent, against the inventory in the cluster.
    if let Some(inv) = engine.inventory(&st.bundle).await?
        && inv.generation > 0
    {
        let applied = AppliedRevision {
            generation: inv.generation,
            digest: inv.digest.clone(),
            revision: inv.revision.clone(),
            statement: vec![],
            signature: vec![],
            options: BundleOptions::default(),
        };
        let d = Deployment {
            name: st.bundle.clone(),
            statement: v.statement_bytes.clone(),
            signature: v.signature.clone(),
            digest: st.artifact.digest.clone(),
            size: st.artifact.size,
            generation: st.generation,
            options: BundleOptions::default(),
        };
        // `--allow-rollback` is the local operator's override, never the hub's.
        if let Decision::Refuse(reason, message) = decide(&d, Some(&applied))
            && !(opts.allow_rollback && reason == "GenerationRollback")
        {
            return Err(Error::verification(reason, message));
        }
    }
    engine
        .plan(
            &st.bundle,
            &st.source.revision,
            st.generation,
            &st.artifact.digest,
            manifests,
            target_namespace,
        )
        .await
        .map(|mut p| {
            if let Some(h) = &helm {
                crate::helmrelease::crd_policy(&mut p, &h.spec);
            }
            (p, helm)
        })
}

/// Verify and apply a build directory: same engine, inventory, prune and
/// health logic as the agent.
pub async fn apply_dir(
    client: kube::Client,
    opts: &OneShotOptions,
    cancel: &CancellationToken,
) -> Result<OneShotReport> {
    let start = Instant::now();
    let engine = Engine::new(client.clone(), &opts.namespace, opts.concurrency);
    let (plan, helm) = verify_and_plan(&engine, opts).await?;
    // The plan is judged before any hook runs.
    crate::ownership::enforce(&engine, &plan, &opts.tenancy, None).await?;
    let mut hooks = Vec::new();
    let release = match helm {
        Some(parts) => {
            let guard = crate::helmrelease::Guard {
                bundle: &plan.bundle,
                agent_namespace: engine.namespace(),
                tenancy: &opts.tenancy,
            };
            let (r, runs) = Release::begin(client, parts, &guard, opts.timeout, cancel).await?;
            hooks.extend(runs);
            Some(r)
        }
        None => None,
    };
    let planned = start.elapsed();
    let (bundle, generation, revision) = (plan.bundle.clone(), plan.generation, plan.revision.clone());
    let apply = engine.apply(&plan, ApplyOptions { force: opts.force, prune: opts.prune }, cancel).await;
    tracing::debug!(
        verify_and_plan_ms = planned.as_millis() as u64,
        apply_ms = apply.duration.as_millis() as u64,
        objects = plan.objects.len(),
        "one-shot apply"
    );
    let mut health = Vec::new();
    if opts.wait && apply.error.is_none() {
        let left = opts.timeout.saturating_sub(start.elapsed());
        health = health::wait(engine.client(), &plan.targets(), left, opts.concurrency, cancel).await?;
    }
    let mut helm_revision = None;
    if let Some(r) = &release {
        helm_revision = Some(r.version());
        let failure = match &apply.error {
            Some(e) => Some(e.to_string()),
            None if health.iter().any(|h| h.status != HealthStatus::Current) => {
                Some("not every object became ready in time".to_string())
            }
            None => None,
        };
        let (runs, _failure) = r.finish(failure, opts.timeout, cancel).await?;
        hooks.extend(runs);
    }
    Ok(OneShotReport {
        bundle,
        generation,
        revision,
        apply,
        health,
        duration: start.elapsed(),
        hooks,
        helm_revision,
    })
}

/// What a one-shot apply would change.
#[derive(Debug)]
pub struct DiffReport {
    /// The bundle.
    pub bundle: String,
    /// Per object.
    pub objects: Vec<ObjectResult>,
}

impl DiffReport {
    /// Whether an apply would change anything.
    pub fn changes(&self) -> bool {
        self.objects
            .iter()
            .any(|o| matches!(o.action, Action::WouldCreate | Action::WouldConfigure | Action::WouldPrune))
    }

    /// Whether some object cannot be applied as is (conflicts).
    pub fn failures(&self) -> bool {
        self.objects.iter().any(|o| o.action == Action::Failed)
    }

    /// One line per object that would change, then a summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut n = [0usize; 4];
        for o in &self.objects {
            match o.action {
                Action::WouldCreate => n[0] += 1,
                Action::WouldConfigure => n[1] += 1,
                Action::WouldPrune => n[2] += 1,
                Action::Unchanged => {
                    n[3] += 1;
                    continue;
                }
                _ => {}
            }
            line(&mut out, o);
        }
        let _ = writeln!(
            out,
            "bundle {}: {} to create, {} to configure, {} to prune, {} unchanged",
            self.bundle, n[0], n[1], n[2], n[3]
        );
        out
    }
}

/// Verify a build directory and show what applying it would change, by
/// server-side dry-run. Writes nothing.
pub async fn diff_dir(client: kube::Client, opts: &OneShotOptions) -> Result<DiffReport> {
    let engine = Engine::new(client, &opts.namespace, opts.concurrency);
    // Hooks are not diffed: they run only on apply.
    let (plan, _helm) = verify_and_plan(&engine, opts).await?;
    let objects = engine.diff(&plan, opts.prune).await?;
    Ok(DiffReport { bundle: plan.bundle, objects })
}
