//! Agent benchmarks, all against kube-sim with argo-cd's install.yaml
//! (1.9 MB, 59 objects, three large CRDs):
//! - apply to a fresh cluster: the `convoy-agent apply` binary (whole
//!   process: verify, unpack, plan, staged apply, inventory) against
//!   `kubectl apply --server-side -f install.yaml`, each on its own fresh
//!   kube-sim, alternating, same run;
//! - a no-change re-sync in a warm agent (verify, unpack, plan, in-sync
//!   check), with kube-sim's write counter;
//! - the resident memory of the real `convoy-agent run` binary connected to
//!   the real `convoy hub` binary, sampled from /proc while it applies the
//!   bundle (VmHWM) and once it is idle (VmRSS).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use convoy_agent::bundle::{load_manifests, verify_all};
use convoy_agent::engine::{ApplyOptions, Engine};
use convoy_artifact::{Limits, SigningKey, Statement, TrustedKeys};
use convoy_bench::hubproc::{Kill, start_hub, workspace_binary};
use convoy_bench::report::{Measurement, median};
use convoy_proto::v1 as pb;
use kube_sim::{KubeSim, SimConfig};
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

use crate::Ctx;

const AREA: &str = "agent";

fn m(name: &str, unit: &str, samples: &[f64], target: &str, pass: Option<bool>) -> Measurement {
    Measurement::from_samples(AREA, name, unit, samples, target, pass)
}

/// The agent area.
pub fn run(
    ctx: Ctx,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<Vec<Measurement>>>>> {
    Box::pin(run_inner(ctx))
}

async fn sim() -> anyhow::Result<KubeSim> {
    Ok(KubeSim::start(SimConfig { readiness_delay: Duration::ZERO, ..Default::default() }).await?)
}

fn write_build_dir(
    out: &Path,
    key: &SigningKey,
    packed: &convoy_artifact::PackedArtifact,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let st = Statement::new(
        "argo-cd",
        "https://github.com/argoproj/argo-cd.git",
        "master@sha1:37ee0097cf851bc2dd7665fc081bbce61a7e836e",
        packed.digest.clone(),
        packed.size,
        1,
    );
    let (bytes, sig) = key.sign_statement(&st)?;
    std::fs::write(out.join(convoy_artifact::ARTIFACT_FILE), &packed.bytes)?;
    std::fs::write(out.join(convoy_artifact::STATEMENT_FILE), bytes)?;
    std::fs::write(out.join(convoy_artifact::SIGNATURE_FILE), sig)?;
    Ok(())
}

/// Run a command to completion; its wall time in ms.
async fn timed(cmd: &mut tokio::process::Command) -> anyhow::Result<f64> {
    let start = Instant::now();
    let out = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true).output().await?;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        bail!("{:?} failed: {}", cmd.as_std().get_program(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(ms)
}

async fn run_inner(ctx: Ctx) -> anyhow::Result<Vec<Measurement>> {
    let rounds = if ctx.quick { 3 } else { 7 };
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let agent_bin = workspace_binary("convoy-agent", "convoy-agent", Some("agent"))?;
    let manifests = ctx.corpus.join("argo-cd/manifests");
    let install = manifests.join("install.yaml");
    let key = SigningKey::generate()?;
    let pubkey = dir.join("signing.pub");
    std::fs::write(&pubkey, key.public_key().to_spki_pem())?;
    let packed = convoy_artifact::pack_dir(&manifests, &Limits::default())?;
    let build = dir.join("argo-cd");
    write_build_dir(&build, &key, &packed)?;
    let mut out = Vec::new();

    // 1. Apply to a fresh kube-sim, three ways, alternating, each on its own
    // fresh kube-sim: kubectl apply --server-side (the baseline, a process);
    // the running agent (a long-lived process: its client and discovery are
    // warm; timed from the verified-and-cached artifact bytes to applied:
    // verify, unpack, parse, plan, staged apply, inventory); and the
    // `convoy-agent apply` binary (process start included).
    let statement = std::fs::read(build.join(convoy_artifact::STATEMENT_FILE))?;
    let signature = std::fs::read(build.join(convoy_artifact::SIGNATURE_FILE))?;
    let trusted = TrustedKeys::new([key.public_key()]);
    let mut ours = Vec::new();
    let mut binary_ms = Vec::new();
    let mut kubectl = Vec::new();
    for r in 0..rounds {
        let order: [usize; 3] = match r % 3 {
            0 => [0, 1, 2],
            1 => [1, 2, 0],
            _ => [2, 0, 1],
        };
        for which in order {
            let sim = sim().await?;
            let kc = dir.join(format!("kubeconfig-{r}-{which}"));
            sim.write_kubeconfig(&kc)?;
            match which {
                0 => {
                    let ms = timed(
                        tokio::process::Command::new("kubectl")
                            .args(["apply", "--server-side", "-f"])
                            .arg(&install)
                            .arg("--kubeconfig")
                            .arg(&kc)
                            .env("KUBECACHEDIR", dir.join(format!("kcache-{r}"))),
                    )
                    .await?;
                    kubectl.push(ms);
                }
                1 => {
                    // The agent's own runtime on its own threads, as in its own process
                    // (kube-sim keeps this process's runtime to itself).
                    let url: http::Uri = sim.url().parse()?;
                    let (statement, signature, bytes, trusted) =
                        (statement.clone(), signature.clone(), packed.bytes.clone(), trusted.clone());
                    let ms = tokio::task::spawn_blocking(move || -> anyhow::Result<f64> {
                        let rt = tokio::runtime::Builder::new_multi_thread()
                            .worker_threads(2)
                            .enable_all()
                            .build()?;
                        rt.block_on(async move {
                            let client = kube::Client::try_from(kube::Config::new(url))?;
                            let engine = Engine::new(client, "convoy-system", 8);
                            engine.prefetch_discovery().await;
                            let start = Instant::now();
                            let st = verify_all(&statement, &signature, &bytes, &trusted, Some("argo-cd"))?;
                            let ms = tokio::task::spawn_blocking(move || {
                                load_manifests(&bytes, &Limits::default())
                            })
                            .await??;
                            let plan = engine
                                .plan(
                                    "argo-cd",
                                    &st.source.revision,
                                    st.generation,
                                    &st.artifact.digest,
                                    ms,
                                    Some("default"),
                                )
                                .await?;
                            let report = engine
                                .apply(
                                    &plan,
                                    ApplyOptions { force: false, prune: true },
                                    &CancellationToken::new(),
                                )
                                .await;
                            let ms = start.elapsed().as_secs_f64() * 1000.0;
                            if let Some(e) = report.error {
                                bail!("apply failed: {e}");
                            }
                            Ok(ms)
                        })
                    })
                    .await??;
                    ours.push(ms);
                }
                _ => {
                    let ms = timed(
                        tokio::process::Command::new(&agent_bin)
                            .arg("apply")
                            .arg(&build)
                            .arg("--key")
                            .arg(&pubkey)
                            .arg("--kubeconfig")
                            .arg(&kc)
                            .args(["--target-namespace", "default"])
                            .env("CONVOY_LOG", "warn")
                            .env_remove("CONVOY_TRUSTED_KEYS"),
                    )
                    .await?;
                    binary_ms.push(ms);
                }
            }
            let objects = sim.objects("apps", "deployments").len();
            if objects != 6 {
                bail!("round {r}: expected 6 Deployments after the apply, found {objects}");
            }
            sim.shutdown().await;
        }
    }
    let kubectl_median = median(&kubectl);
    let mut apply = m(
        "apply argo-cd install.yaml to a fresh kube-sim, running agent (verify, unpack, parse, plan, apply)",
        "ms",
        &ours,
        "<= 0.5x kubectl",
        None,
    );
    apply.baseline = Some("kubectl apply --server-side".into());
    apply.baseline_value = Some(kubectl_median);
    apply.pass = apply.ratio().map(|r| r <= 0.5);
    let mut one_shot = m(
        "  same with the convoy-agent apply binary (process start, cold client and discovery)",
        "ms",
        &binary_ms,
        "",
        None,
    );
    one_shot.baseline = Some("kubectl apply --server-side".into());
    one_shot.baseline_value = Some(kubectl_median);
    eprintln!(
        "agent bench: apply {:.0} ms (binary {:.0} ms) vs kubectl {:.0} ms",
        median(&ours),
        median(&binary_ms),
        kubectl_median
    );
    out.push(apply);
    out.push(one_shot);

    // 2. No-change re-sync. A warm agent keeps the applied revision's plan
    // (verified, parsed, normalized objects) and re-syncs an unchanged bundle
    // with the in-sync check alone; the cold path (after a restart, or in
    // one-shot mode) verifies, unpacks and parses again first.
    let sim = sim().await?;
    let client = kube::Client::try_from(kube::Config::new(sim.url().parse()?))?;
    let engine = Engine::new(client, "convoy-system", 8);
    let cancel = CancellationToken::new();
    let opts = ApplyOptions { force: false, prune: true };
    let cold_plan = || {
        let (engine, trusted, statement, signature, bytes) =
            (&engine, &trusted, &statement, &signature, packed.bytes.clone());
        async move {
            let st = verify_all(statement, signature, &bytes, trusted, Some("argo-cd"))?;
            let ms =
                tokio::task::spawn_blocking(move || load_manifests(&bytes, &Limits::default())).await??;
            let plan = engine
                .plan("argo-cd", &st.source.revision, st.generation, &st.artifact.digest, ms, Some("argocd"))
                .await?;
            anyhow::Ok(plan)
        }
    };
    let plan = cold_plan().await?;
    let first = engine.apply(&plan, opts, &cancel).await;
    if let Some(e) = first.error {
        bail!("first apply failed: {e}");
    }
    let n = if ctx.quick { 5 } else { 20 };
    let mut warm = Vec::new();
    let mut cold = Vec::new();
    let mut writes = Vec::new();
    for _ in 0..n {
        sim.reset_stats();
        let start = Instant::now();
        let report = engine.apply(&plan, opts, &cancel).await;
        warm.push(start.elapsed().as_secs_f64() * 1000.0);
        let c = report.counts();
        if report.error.is_some() || c.unchanged != c.total {
            bail!("re-sync changed objects: {c:?} {:?}", report.error);
        }
        writes.push(sim.stats().writes as f64);
    }
    for _ in 0..n {
        sim.reset_stats();
        let start = Instant::now();
        let p = cold_plan().await?;
        let report = engine.apply(&p, opts, &cancel).await;
        cold.push(start.elapsed().as_secs_f64() * 1000.0);
        if report.error.is_some() || report.counts().unchanged != report.counts().total {
            bail!("cold re-sync changed objects");
        }
        writes.push(sim.stats().writes as f64);
    }
    let no_writes = writes.iter().all(|w| *w == 0.0);
    out.push(m(
        "no-change re-sync of argo-cd, warm agent (in-sync check of 59 objects, plan kept)",
        "ms",
        &warm,
        "< 100 ms and 0 writes",
        Some(median(&warm) < 100.0 && no_writes),
    ));
    out.push(m(
        "no-change re-sync of argo-cd, cold (verify, unpack, parse, plan, in-sync check)",
        "ms",
        &cold,
        "",
        None,
    ));
    out.push(m(
        "writes during the no-change re-syncs (warm and cold)",
        "writes",
        &writes,
        "0",
        Some(no_writes),
    ));
    sim.shutdown().await;

    // 3. Memory of the real agent binary, connected to the real hub binary.
    match memory(dir, &agent_bin, &manifests, ctx.quick).await {
        Ok(ms) => out.extend(ms),
        Err(e) => {
            eprintln!("agent bench: memory measurement failed: {e:#}");
            return Err(e);
        }
    }
    Ok(out)
}

fn proc_kib(pid: u32, field: &str) -> anyhow::Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = s.lines().find(|l| l.starts_with(field)).ok_or_else(|| anyhow!("no {field}"))?;
    Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
}

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let st = Command::new("git")
        .args(["-c", "user.name=bench", "-c", "user.email=bench@example.com"])
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("git {args:?} failed");
    }
    Ok(())
}

async fn memory(
    dir: &Path,
    agent_bin: &Path,
    manifests: &Path,
    quick: bool,
) -> anyhow::Result<Vec<Measurement>> {
    let convoy = workspace_binary("convoy-cli", "convoy", None)?;
    let repo = dir.join("repo");
    std::fs::create_dir_all(repo.join("argo"))?;
    std::fs::copy(manifests.join("install.yaml"), repo.join("argo/install.yaml"))?;
    git(&repo, &["init", "-q", "-b", "main"])?;
    git(&repo, &["add", "-A"])?;
    git(&repo, &["commit", "-q", "-m", "argo-cd"])?;
    let hub_dir = dir.join("hub");
    std::fs::create_dir_all(&hub_dir)?;
    let bundle = "---\napiVersion: convoy.dev/v1\nkind: Bundle\nmetadata: {name: argo-cd}\nspec: {source: repo, path: argo, targetNamespace: argocd, targets: [{clusterSelector: {}}]}\n";
    let (_hub, creds) = start_hub(&convoy, &hub_dir, &repo.display().to_string(), bundle).await?;
    let data = hub_dir.join("data");
    let ch = Endpoint::from_shared(creds.hub.clone())?.tls_config(creds.admin_tls())?.connect().await?;
    let mut fleet = pb::fleet_client::FleetClient::new(ch);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let b = fleet.get_bundle(pb::GetBundleRequest { name: "argo-cd".into(), ..Default::default() }).await;
        if b.is_ok_and(|b| b.into_inner().generation >= 1) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the hub did not build argo-cd");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let token = fleet
        .create_token(pb::CreateTokenRequest {
            cluster: "bench".into(),
            ttl_seconds: 3600,
            ..Default::default()
        })
        .await?
        .into_inner()
        .token;
    let token_file = dir.join("token");
    std::fs::write(&token_file, token)?;

    let sim = sim().await?;
    let kc = dir.join("kubeconfig-memory");
    sim.write_kubeconfig(&kc)?;
    let mut agent = Kill(
        convoy_testsupport::ProcessGuard::spawn(
            "convoy-agent run",
            Command::new(agent_bin)
                .arg("run")
                .args(["--hub-address", &creds.hub])
                .arg("--hub-ca")
                .arg(data.join("ca.crt"))
                .arg("--token-file")
                .arg(&token_file)
                .args(["--cluster-name", "bench"])
                .arg("--trusted-key")
                .arg(data.join("signing.pub"))
                .arg("--kubeconfig")
                .arg(&kc)
                .arg("--state-dir")
                .arg(dir.join("agent-state"))
                .args(["--metrics-address", "127.0.0.1:0"])
                .env("CONVOY_LOG", "warn")
                .env_remove("CONVOY_TRUSTED_KEYS"),
        )
        .context("start convoy-agent run")?,
    );
    let pid = agent.0.id();
    // Sample while it registers, downloads and applies; stop once the hub shows it Ready.
    let mut samples = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut ready_at = None;
    while ready_at.is_none() {
        if let Some(st) = agent.0.try_wait()? {
            bail!("convoy-agent exited: {st}");
        }
        samples.push(proc_kib(pid, "VmRSS:")?);
        let b = fleet
            .get_bundle(pb::GetBundleRequest { name: "argo-cd".into(), ..Default::default() })
            .await?
            .into_inner();
        if b.clusters.iter().any(|c| c.status.as_ref().is_some_and(|s| s.phase == pb::Phase::Ready as i32)) {
            ready_at = Some(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("argo-cd did not become Ready on the agent: {:?}", b.clusters);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if sim.objects("apps", "deployments").len() != 6 {
        bail!("argo-cd was not applied");
    }
    let peak = proc_kib(pid, "VmHWM:")?;
    // Idle: connected, watching for drift, nothing to do.
    tokio::time::sleep(Duration::from_secs(if quick { 3 } else { 10 })).await;
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(proc_kib(pid, "VmRSS:")? / 1024.0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let peak_mib = peak / 1024.0;
    if let Ok(r) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
        let f = |k: &str| {
            r.lines()
                .find(|l| l.starts_with(k))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
                / 1024.0
        };
        eprintln!(
            "agent bench: idle RSS breakdown: {:.1} MiB anonymous (heap, stacks), {:.1} MiB file-backed (code)",
            f("Anonymous:"),
            f("Rss:") - f("Anonymous:")
        );
    }
    eprintln!(
        "agent bench: agent peak RSS {peak_mib:.1} MiB while applying ({} samples, sampled max {:.1} MiB), idle {:.1} MiB",
        samples.len(),
        samples.iter().copied().fold(0.0, f64::max) / 1024.0,
        median(&idle)
    );
    let out = vec![
        m(
            "agent resident memory while applying argo-cd (VmHWM, real binary)",
            "MiB",
            &[peak_mib],
            "< 40 MiB",
            Some(peak_mib < 40.0),
        ),
        m(
            "agent resident memory idle with argo-cd applied (VmRSS)",
            "MiB",
            &idle,
            "< 20 MiB",
            Some(median(&idle) < 20.0),
        ),
    ];
    let _ = agent.0.kill();
    sim.shutdown().await;
    Ok(out)
}
