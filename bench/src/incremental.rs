//! Incremental rendering, measured through a `convoy hub` process: a source
//! with 50 kustomize bundles (each an overlay on a shared base), 3 simulated
//! agents (real mTLS Sync streams that report Ready as soon as a generation
//! arrives, no Kubernetes):
//! - a commit touching one bundle: renders per commit (from the hub's
//!   `convoy_hub_bundle_renders_total`, target 1) and push to Ready (commit +
//!   Reconcile until the hub shows the new generation Ready on the 3 agents);
//! - the baseline in the same run: a commit touching the shared base, which
//!   every bundle reads (50 renders), push to Ready of the same bundle.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use convoy_bench::hubproc::{free_port, hub_tls, scrape, start_hub_with_metrics, workspace_binary};
use convoy_bench::report::{Measurement, median};
use convoy_proto::v1 as pb;
use tonic::transport::{Channel, Endpoint};

use crate::Ctx;
use crate::hub::{Load, bundle, git};

const AREA: &str = "incremental";
/// Bundles in the source; `app` is the one the commits touch.
const BUNDLES: usize = 50;
const AGENTS: usize = 3;
const RENDERS: &str = "convoy_hub_bundle_renders_total";
const SKIPPED: &str = "convoy_hub_bundle_renders_skipped_total";

fn cm(name: &str, n: u64) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: default\ndata:\n  rev: \"{n}\"\n"
    )
}

fn names() -> Vec<String> {
    std::iter::once("app".to_string()).chain((1..BUNDLES).map(|i| format!("b{i:02}"))).collect()
}

fn make_repo(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let repo = dir.join("repo");
    std::fs::create_dir_all(repo.join("base"))?;
    git(&repo, &["init", "-q", "-b", "main"])?;
    std::fs::write(repo.join("base/kustomization.yaml"), "resources: [cm.yaml]\n")?;
    std::fs::write(repo.join("base/cm.yaml"), cm("shared", 0))?;
    for name in names() {
        let d = repo.join("apps").join(&name);
        std::fs::create_dir_all(&d)?;
        std::fs::write(
            d.join("kustomization.yaml"),
            format!("resources: [../../base, cm.yaml]\nnamePrefix: {name}-\n"),
        )?;
        std::fs::write(d.join("cm.yaml"), cm("own", 0))?;
    }
    git(&repo, &["add", "-A"])?;
    git(&repo, &["commit", "-q", "-m", "init"])?;
    Ok(repo)
}

/// Commit `file` (relative to the repo), Reconcile, and wait until `app` has
/// a new generation Ready on every agent. Returns (push-to-Ready ms, renders).
async fn push(
    repo: &Path,
    file: &str,
    n: u64,
    fleet: &mut pb::fleet_client::FleetClient<Channel>,
    metrics: u16,
) -> anyhow::Result<(f64, f64)> {
    let before = bundle(fleet, "app").await?.generation;
    let renders0 = scrape(metrics, RENDERS)?.unwrap_or(0.0);
    let skipped0 = scrape(metrics, SKIPPED)?.unwrap_or(0.0);
    let name = if file.starts_with("base") { "shared" } else { "own" };
    std::fs::write(repo.join(file), cm(name, n))?;
    git(repo, &["commit", "-q", "-am", &format!("rev {n}")])?;
    let t0 = Instant::now();
    fleet.reconcile(pb::ObjectRef { kind: pb::ObjectKind::Source as i32, name: "repo".into() }).await?;
    let deadline = t0 + Duration::from_secs(300);
    loop {
        let b = bundle(fleet, "app").await?;
        let ready = b.generation > before
            && b.clusters.len() == AGENTS
            && b.clusters.iter().all(|c| {
                c.status
                    .as_ref()
                    .is_some_and(|s| s.generation == b.generation && s.phase == pb::Phase::Ready as i32)
            });
        if ready {
            break;
        }
        if Instant::now() > deadline {
            bail!("app did not become Ready at a new generation: {:?}", b.conditions);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = t0.elapsed().as_secs_f64() * 1e3;
    // Every bundle of the commit is either rendered or kept: wait until all
    // of them are counted.
    let settle = Instant::now() + Duration::from_secs(300);
    let renders = loop {
        let r = scrape(metrics, RENDERS)?.unwrap_or(0.0) - renders0;
        let k = scrape(metrics, SKIPPED)?.unwrap_or(0.0) - skipped0;
        if r + k >= BUNDLES as f64 {
            break r;
        }
        if Instant::now() > settle {
            bail!("only {r} renders and {k} kept bundles for a commit to {BUNDLES} bundles");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Ok((took, renders))
}

/// The area entry point.
pub fn run(
    ctx: Ctx,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<Vec<Measurement>>>>> {
    Box::pin(run_inner(ctx))
}

async fn run_inner(ctx: Ctx) -> anyhow::Result<Vec<Measurement>> {
    let trials = if ctx.quick { 2 } else { 10 };
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let repo = make_repo(dir)?;
    let convoy = workspace_binary("convoy-cli", "convoy", None)?;
    let mut docs = String::new();
    for name in names() {
        docs.push_str(&format!(
            "---\napiVersion: convoy.dev/v1\nkind: Bundle\nmetadata: {{name: {name}}}\nspec: {{source: repo, path: apps/{name}, targets: [{{clusterSelector: {{}}}}]}}\n"
        ));
    }
    let metrics = free_port()?;
    let (_hub, creds) = start_hub_with_metrics(
        &convoy,
        dir,
        &repo.display().to_string(),
        &docs,
        &format!("127.0.0.1:{metrics}"),
    )
    .await?;
    let admin = Endpoint::from_shared(creds.hub.clone())?.tls_config(creds.admin_tls())?.connect().await?;
    let mut fleet = pb::fleet_client::FleetClient::new(admin);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let all = fleet.list_bundles(pb::ListBundlesRequest::default()).await?.into_inner().bundles;
        if all.len() == BUNDLES && all.iter().all(|b| b.generation >= 1) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the hub did not build the {BUNDLES} bundles");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = scrape(metrics, RENDERS)?;
    eprintln!("incremental bench: {BUNDLES} bundles built ({first:?} renders)");
    let token = fleet
        .create_token(pb::CreateTokenRequest { ttl_seconds: 3600, ..Default::default() })
        .await?
        .into_inner()
        .token;
    let registrar = pb::registration_client::RegistrationClient::new(
        Endpoint::from_shared(creds.hub.clone())?.tls_config(hub_tls(&creds.ca, None))?.connect().await?,
    );
    let mut load =
        Load { endpoint: creds.hub.clone(), ca: creds.ca.clone(), registrar, token, agents: Vec::new() };
    load.grow(AGENTS, 0).await?;

    let mut n = 0;
    let (mut one, mut one_renders, mut all, mut all_renders) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..trials {
        n += 1;
        let (ms, r) = push(&repo, "apps/app/cm.yaml", n, &mut fleet, metrics).await?;
        one.push(ms);
        one_renders.push(r);
        n += 1;
        let (ms, r) = push(&repo, "base/cm.yaml", n, &mut fleet, metrics).await?;
        all.push(ms);
        all_renders.push(r);
    }
    eprintln!(
        "incremental bench: renders per commit touching one bundle {one_renders:?}, the base {all_renders:?}"
    );
    let out = vec![
        Measurement {
            area: AREA.into(),
            name: format!(
                "push to Ready, a commit touching 1 of {BUNDLES} bundles ({AGENTS} simulated agents)"
            ),
            unit: "ms".into(),
            value: median(&one),
            max: one.iter().copied().reduce(f64::max),
            baseline: Some(format!("a commit touching the base of all {BUNDLES}")),
            baseline_value: Some(median(&all)),
            target: "< 150 ms".into(),
            pass: Some(median(&one) < 150.0),
            samples: one.len(),
        },
        Measurement {
            area: AREA.into(),
            name: format!("renders for a commit touching 1 of {BUNDLES} bundles"),
            unit: "renders".into(),
            value: median(&one_renders),
            max: one_renders.iter().copied().reduce(f64::max),
            baseline: Some(format!("a commit touching the base of all {BUNDLES}")),
            baseline_value: Some(median(&all_renders)),
            target: "= 1".into(),
            pass: Some(
                one_renders.iter().all(|r| *r == 1.0) && all_renders.iter().all(|r| *r == BUNDLES as f64),
            ),
            samples: one_renders.len(),
        },
    ];
    Ok(out)
}
