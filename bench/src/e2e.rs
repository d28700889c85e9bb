//! End-to-end push-to-Ready latency (issue 6, scenario 7): the example fleet
//! on three kube-sim clusters (readiness delay 0, so no simulated rollout
//! time is included) with a real agent each, the in-process hub fetching from
//! a real `git daemon`. One sample: change the web image in a commit, then
//! time from `git push` + the signed webhook until every targeted cluster
//! reports the new revision Ready at the hub (web-staging on one cluster,
//! web-prod on two). Also reported: push until the hub has signed the new
//! generations (fetch, kustomize render, pack, sign).
//!
//! Baseline, same run: the same change rolled out by hand with kubectl on
//! three fresh kube-sims, one cluster after the other as a script would
//! (`kubectl kustomize OVERLAY | kubectl apply --server-side -f -`, then
//! `kubectl rollout status`).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use convoy_bench::report::{Measurement, median};
use convoy_e2e::fleet::{Fleet, FleetOptions, all_ready};
use convoy_e2e::{HubMode, commit_of};
use convoy_proto::v1 as pb;
use kube_sim::{KubeSim, SimConfig};

use crate::Ctx;

const AREA: &str = "e2e";
const DEPLOYMENT: &str = "apps/web/base/deployment.yaml";
const TARGET_MS: f64 = 2000.0;

/// Run the area.
pub fn run(
    ctx: Ctx,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<Vec<Measurement>>>>> {
    Box::pin(run_inner(ctx))
}

fn m(name: &str, samples: &[f64], target: &str, pass: Option<bool>) -> Measurement {
    Measurement::from_samples(AREA, name, "ms", samples, target, pass)
}

/// Replace the web image tag with `tag`, commit; returns the commit.
fn bump(fleet: &Fleet, tag: &str) -> anyhow::Result<String> {
    let text = fleet.repo.read(DEPLOYMENT)?;
    let (before, rest) = text.split_once("podinfo:").context("the image line")?;
    let (_, after) = rest.split_once('\n').context("end of the image line")?;
    fleet.repo.write(DEPLOYMENT, &format!("{before}podinfo:{tag}\n{after}"))?;
    fleet.repo.commit(&format!("web {tag}"))
}

/// The web bundles at `commit`, Ready on every cluster they target.
fn rolled_out(views: &[pb::BundleView], commit: &str) -> bool {
    views.len() == 2
        && views.iter().all(|b| {
            commit_of(&b.revision) == commit
                && all_ready(b)
                && b.clusters.iter().all(|c| c.status.as_ref().is_some_and(|s| s.revision == b.revision))
        })
}

async fn web_views(fleet: &Fleet) -> Vec<pb::BundleView> {
    let mut out = Vec::new();
    for name in ["web-staging", "web-prod"] {
        if let Ok(b) = fleet.bundle(name).await {
            out.push(b);
        }
    }
    out
}

/// One push: (ms until both web bundles are signed at the commit, ms until Ready everywhere).
async fn push_once(fleet: &Fleet, tag: &str) -> anyhow::Result<(f64, f64)> {
    let commit = bump(fleet, tag)?;
    let t0 = Instant::now();
    fleet.push().await?;
    let mut signed = None;
    let deadline = t0 + Duration::from_secs(60);
    loop {
        let views = web_views(fleet).await;
        if signed.is_none() && views.len() == 2 && views.iter().all(|b| commit_of(&b.revision) == commit) {
            signed = Some(t0.elapsed().as_secs_f64() * 1000.0);
        }
        if rolled_out(&views, &commit) {
            let ready = t0.elapsed().as_secs_f64() * 1000.0;
            return Ok((signed.unwrap_or(ready), ready));
        }
        if Instant::now() > deadline {
            bail!("{commit} did not roll out within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn kubectl(args: &[&str], kubeconfig: &Path, stdin: Option<&[u8]>) -> anyhow::Result<Vec<u8>> {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new("kubectl");
    cmd.args(args).arg("--kubeconfig").arg(kubeconfig);
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().context("run kubectl")?;
    if let Some(input) = stdin {
        let mut w = child.stdin.take().context("kubectl stdin")?;
        w.write_all(input).await?;
        drop(w);
    }
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        bail!("kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

/// The baseline: render each cluster's overlay and apply it with kubectl,
/// then wait for the rollout, cluster after cluster. Returns ms.
async fn by_hand(repo: &Path, clusters: &[(&str, std::path::PathBuf)]) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    for (overlay, kc) in clusters {
        let dir = repo.join("apps/web/overlays").join(overlay);
        let rendered = kubectl(&["kustomize", &dir.to_string_lossy()], kc, None).await?;
        kubectl(&["apply", "--server-side", "-f", "-"], kc, Some(&rendered)).await?;
        kubectl(&["rollout", "status", "deployment/web", "-n", "web", "--timeout=60s"], kc, None).await?;
    }
    Ok(t0.elapsed().as_secs_f64() * 1000.0)
}

async fn run_inner(ctx: Ctx) -> anyhow::Result<Vec<Measurement>> {
    let samples = if ctx.quick { 3 } else { 10 };
    let fleet = Fleet::start(FleetOptions {
        readiness_delay: Duration::ZERO,
        poll_interval: "1h".into(),
        hub: HubMode::InProcess,
        ..Default::default()
    })
    .await?;
    fleet.wait_converged(120).await;
    // Warm-up (first rollout of a changed image through every stage).
    push_once(&fleet, "6.9.0").await?;
    let (mut signed, mut ready) = (Vec::new(), Vec::new());
    for i in 1..=samples {
        let (s, r) = push_once(&fleet, &format!("6.9.{i}")).await?;
        signed.push(s);
        ready.push(r);
    }

    // Baseline on three fresh simulators, from the same repository.
    let tmp = tempfile::tempdir()?;
    let mut sims = Vec::new();
    let mut targets = Vec::new();
    for (name, overlay) in [("staging", "staging"), ("prod-eu", "prod"), ("prod-us", "prod")] {
        let sim = KubeSim::start(SimConfig { name: name.into(), ..Default::default() }).await?;
        let kc = tmp.path().join(format!("{name}.kubeconfig"));
        sim.write_kubeconfig(&kc)?;
        let infra = fleet.repo.work.join("infra");
        kubectl(&["apply", "--server-side", "-f", &infra.to_string_lossy()], &kc, None).await?;
        sims.push(sim);
        targets.push((overlay, kc));
    }
    by_hand(&fleet.repo.work, &targets).await?; // first apply: creates everything
    let mut kubectl_ms = Vec::new();
    for i in 1..=samples {
        bump(&fleet, &format!("6.10.{i}"))?;
        kubectl_ms.push(by_hand(&fleet.repo.work, &targets).await?);
    }
    for s in sims {
        s.shutdown().await;
    }
    fleet.shutdown().await;

    let max = ready.iter().copied().fold(0.0, f64::max);
    let mut total = m(
        "push to Ready on 3 clusters (git push + webhook, readiness delay 0)",
        &ready,
        "< 2000 ms (median and max)",
        Some(median(&ready) < TARGET_MS && max < TARGET_MS),
    );
    total.baseline = Some("kubectl kustomize | apply --server-side + rollout status, 3 clusters".into());
    total.baseline_value = Some(median(&kubectl_ms));
    Ok(vec![m("push to new generations signed by the hub (fetch, render, sign)", &signed, "", None), total])
}
