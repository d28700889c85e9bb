//! Helm (issue 13): rendering through our bounded render worker against
//! helm-python-sdk in-process, and one Helm bundle across a fleet of
//! simulated agents on three Kubernetes versions with two value sets.
//!
//! - **Render:** the corpus ingress-nginx chart with its default values,
//!   rendered N times by `convoy_helm::Renderer` (after a warm-up render that
//!   starts the worker and loads `libhelm_c.so`, each render reuses that
//!   worker process: load the chart directory, render, parse) and N times by helm-python-sdk in one Python
//!   process (`bench/helm_render.py`: `Chart.load` + `Chart.render` of the same
//!   directory, same values, release name and namespace, per iteration; the
//!   render alone is reported too). Medians and their ratio (goal ≤ 1.5×).
//! - **Fleet:** one `convoy hub`, one Helm bundle (a chart directory in the
//!   GitSource whose output depends on `.Capabilities.KubeVersion`, and a
//!   `targets[].helmValues` layer for half of the clusters), N clusters
//!   registered with two tokens (`tier: a|b`) whose simulated agents report
//!   one of three Kubernetes versions in `Hello`. After the fleet settled,
//!   a commit bumps the chart's version and `Fleet/Reconcile` makes the hub
//!   discover it: counted are the Helm renders the hub runs for the
//!   clusters' variants (`convoy_hub_helm_variant_renders_total`, goal ≤ 6)
//!   and the source pipeline's base render, and timed (p99, goal < 2 s) is
//!   each agent's receipt of its new signed generation (the desired state
//!   naming the new artifact; the simulated agents do not download it).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use convoy_bench::hubproc::{free_port, hub_tls, scrape, start_hub_with_metrics, workspace_binary};
use convoy_bench::report::{Measurement, median, percentile};
use convoy_helm::{Capabilities, ChartInput, Limits, RenderRequest, Renderer, WorkerCommand};
use convoy_proto::v1 as pb;
use convoy_proto::v1::agent_message::Msg as In;
use convoy_proto::v1::hub_message::Msg as Out;
use convoy_testsupport::ProcessGuard;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

use crate::Ctx;
use crate::hub::{bundle, git, unix_ns};
use crate::scale::{REGISTER_CONCURRENCY, raise_nofile, register};

const AREA: &str = "helm";
/// The Kubernetes versions the simulated agents report.
const KUBE_VERSIONS: [&str; 3] = ["v1.29.4", "v1.30.2", "v1.31.1"];

/// The area entry point.
pub fn run(
    ctx: Ctx,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<Vec<Measurement>>>>> {
    Box::pin(run_inner(ctx))
}

async fn run_inner(ctx: Ctx) -> anyhow::Result<Vec<Measurement>> {
    let mut out = render(&ctx).await?;
    out.extend(fleet(&ctx).await?);
    Ok(out)
}

/// Render ingress-nginx through our worker and through helm-python-sdk.
async fn render(ctx: &Ctx) -> anyhow::Result<Vec<Measurement>> {
    let n = if ctx.quick { 3 } else { 15 };
    let chart = ctx.corpus.join("charts/ingress-nginx");
    if !chart.join("Chart.yaml").is_file() {
        bail!("no corpus chart at {}", chart.display());
    }
    // The worker next to this executable (`convoy-helm-worker`, built with
    // the workspace), or CONVOY_HELM_WORKER.
    let renderer = Renderer::new(WorkerCommand::discover()?, Limits::default())?;
    let req = RenderRequest {
        chart: ChartInput::Path(chart.clone()),
        values: serde_json::json!({}),
        release_name: "ingress-nginx".into(),
        namespace: "ingress".into(),
        revision: 1,
        is_upgrade: false,
        capabilities: Capabilities::default(),
    };
    let ours = tokio::task::spawn_blocking(move || -> anyhow::Result<(Vec<f64>, usize)> {
        let first = renderer.render(&req)?; // warm the page cache
        let mut ms = Vec::with_capacity(n);
        for _ in 0..n {
            let t0 = Instant::now();
            renderer.render(&req)?;
            ms.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        Ok((ms, first.objects.len() + first.hooks.len()))
    })
    .await??;
    let (ours, objects) = ours;

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("helm_render.py");
    let out_file = tempfile::NamedTempFile::new()?;
    let mut py = ProcessGuard::spawn(
        "python3 helm_render.py",
        std::process::Command::new("python3")
            .arg(&script)
            .arg(&chart)
            .arg(n.to_string())
            .stdout(out_file.reopen()?)
            .stderr(std::process::Stdio::inherit()),
    )
    .context("python3 starts (scripts/setup.sh installs helm-python-sdk)")?;
    let st = tokio::task::spawn_blocking(move || py.child_mut().wait()).await??;
    if !st.success() {
        bail!("helm_render.py failed: {st}");
    }
    let py: serde_json::Value = serde_json::from_slice(&std::fs::read(out_file.path())?)?;
    let samples = |k: &str| -> Vec<f64> {
        py[k].as_array().map(|a| a.iter().filter_map(|v| v.as_f64()).collect()).unwrap_or_default()
    };
    let (load_render, render_only) = (samples("loadRender"), samples("render"));
    if py["objects"].as_u64() != Some(objects as u64) {
        bail!(
            "helm-python-sdk rendered {} objects, our worker {objects}: not the same render",
            py["objects"]
        );
    }
    let ratio = median(&ours) / median(&load_render).max(1e-3);
    Ok(vec![
        Measurement::from_samples(
            AREA,
            &format!("render ingress-nginx through a reused worker process ({objects} objects)"),
            "ms",
            &ours,
            "",
            None,
        ),
        Measurement::from_samples(
            AREA,
            "render ingress-nginx with helm-python-sdk in-process (Chart.load + render)",
            "ms",
            &load_render,
            "",
            None,
        ),
        Measurement::from_samples(
            AREA,
            "render ingress-nginx with helm-python-sdk in-process (render of a loaded chart)",
            "ms",
            &render_only,
            "",
            None,
        ),
        Measurement::from_samples(
            AREA,
            "worker render / helm-python-sdk load + render (medians)",
            "x",
            &[ratio],
            "<= 1.5x",
            Some(ratio <= 1.5),
        ),
    ])
}

const CHART: &str = "apiVersion: v2\nname: web\nversion: 0.1.0\n";
const VALUES: &str = "replicas: 1\n";
const TEMPLATE: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}
data:
  chart: {{ .Chart.Version | quote }}
  kube: {{ .Capabilities.KubeVersion.Version | quote }}
  sidecars: {{ if semverCompare ">=1.30.0-0" .Capabilities.KubeVersion.Version }}"native"{{ else }}"legacy"{{ end }}
  replicas: {{ .Values.replicas | quote }}
"#;
const BUNDLE: &str = "---\napiVersion: convoy.dev/v1\nkind: Bundle\nmetadata: {name: web}\nspec:\n  source: repo\n  targets:\n  - clusterSelector: {}\n  - clusterSelector: {matchLabels: {tier: b}}\n    helmValues: {replicas: 2}\n  helm: {path: chart, releaseName: web, namespace: default}\n";

/// One simulated agent's view of bundle `web`: the highest generation
/// received and when (unix ns).
#[derive(Default)]
struct Seen {
    generation: AtomicU64,
    at_ns: AtomicU64,
}

/// Connect simulated agent `i` reporting `kube_version`; it records each
/// new generation of `web` and reports it Ready.
async fn connect(
    endpoint: &str,
    ca: &str,
    cert: &str,
    key: &str,
    i: usize,
    kube_version: &str,
    seen: Arc<Seen>,
) -> anyhow::Result<()> {
    let ch = Endpoint::from_shared(endpoint.to_string())?
        .tls_config(hub_tls(ca, Some((cert, key))))?
        .buffer_size(Some(4))
        .connect()
        .await?;
    let mut client = pb::agent_client::AgentClient::new(ch);
    let (tx, rx) = mpsc::channel(8);
    tx.send(pb::AgentMessage {
        msg: Some(In::Hello(pb::Hello {
            agent_version: "bench-helm/1".into(),
            outbox_epoch: unix_ns() ^ i as u64,
            kube_version: kube_version.into(),
            ..Default::default()
        })),
    })
    .await?;
    let mut stream = client.sync(ReceiverStream::new(rx)).await?.into_inner();
    tokio::spawn(async move {
        let mut seq = 0u64;
        let mut hb = tokio::time::interval(Duration::from_secs(15));
        hb.tick().await;
        loop {
            tokio::select! {
                _ = hb.tick() => {
                    let _ = tx.try_send(pb::AgentMessage { msg: Some(In::Heartbeat(pb::Heartbeat { time_unix_ms: 0 })) });
                }
                m = stream.message() => {
                    let Ok(Some(m)) = m else { return };
                    let list = match m.msg {
                        Some(Out::Snapshot(s)) => s.bundles,
                        Some(Out::Update(u)) => u.upserts,
                        _ => continue,
                    };
                    for b in list.iter().filter(|b| b.name == "web") {
                        if b.generation <= seen.generation.load(Ordering::Acquire) {
                            continue;
                        }
                        seen.at_ns.store(unix_ns(), Ordering::Release);
                        seen.generation.store(b.generation, Ordering::Release);
                        seq += 1;
                        let status = pb::BundleStatus { bundle: b.name.clone(), generation: b.generation, digest: b.digest.clone(), phase: pb::Phase::Ready as i32, ..Default::default() };
                        let _ = tx.try_send(pb::AgentMessage { msg: Some(In::Status(pb::StatusReport { seq, status: Some(status) })) });
                    }
                }
            }
        }
    });
    Ok(())
}

/// Wait until `done` holds (polling), at most `secs`.
async fn until(what: &str, secs: u64, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let t0 = Instant::now();
    while !done() {
        if t0.elapsed() > Duration::from_secs(secs) {
            bail!("{what}: not within {secs} s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// One Helm bundle on N simulated clusters: renders and time to every agent.
async fn fleet(ctx: &Ctx) -> anyhow::Result<Vec<Measurement>> {
    let n = if ctx.quick { 60 } else { 1_000 };
    raise_nofile(4096);
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let repo = dir.join("repo");
    for (p, t) in
        [("chart/Chart.yaml", CHART), ("chart/values.yaml", VALUES), ("chart/templates/cm.yaml", TEMPLATE)]
    {
        let f = repo.join(p);
        std::fs::create_dir_all(f.parent().unwrap_or(&repo))?;
        std::fs::write(f, t)?;
    }
    git(&repo, &["init", "-q", "-b", "main"])?;
    git(&repo, &["add", "-A"])?;
    git(&repo, &["commit", "-q", "-m", "chart 0.1.0"])?;
    let convoy = workspace_binary("convoy-cli", "convoy", None)?;
    let metrics = free_port()?;
    let (hub, creds) = start_hub_with_metrics(
        &convoy,
        dir,
        &repo.display().to_string(),
        BUNDLE,
        &format!("127.0.0.1:{metrics}"),
    )
    .await?;
    let admin = Endpoint::from_shared(creds.hub.clone())?.tls_config(creds.admin_tls())?.connect().await?;
    let mut fleet = pb::fleet_client::FleetClient::new(admin);
    let t0 = Instant::now();
    loop {
        let v = bundle(&mut fleet, "web").await?;
        if v.generation >= 1 {
            break;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("the hub did not build the Helm bundle (is helm-python-sdk installed?): {v:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut tokens = Vec::new();
    for tier in ["a", "b"] {
        let req = pb::CreateTokenRequest {
            ttl_seconds: 3600,
            labels: [("tier".to_string(), tier.to_string())].into(),
            ..Default::default()
        };
        tokens.push(fleet.create_token(req).await?.into_inner().token);
    }
    let key = rcgen::KeyPair::generate()?;
    let key_pem = key.serialize_pem();
    let csr = rcgen::CertificateParams::default().serialize_request(&key)?.pem()?;
    let registrar = pb::registration_client::RegistrationClient::new(
        Endpoint::from_shared(creds.hub.clone())?.tls_config(hub_tls(&creds.ca, None))?.connect().await?,
    );
    let certs: Vec<anyhow::Result<String>> = futures::stream::iter(0..n)
        .map(|i| register(registrar.clone(), tokens[i % 2].clone(), csr.clone(), i))
        .buffered(REGISTER_CONCURRENCY)
        .collect()
        .await;
    let seen: Vec<Arc<Seen>> = (0..n).map(|_| Arc::new(Seen::default())).collect();
    let connects: Vec<anyhow::Result<()>> = futures::stream::iter(certs.into_iter().enumerate())
        .map(|(i, cert)| {
            let (hub, ca, key, seen) =
                (creds.hub.clone(), creds.ca.clone(), key_pem.clone(), seen[i].clone());
            async move {
                let cert = cert?;
                connect(&hub, &ca, &cert, &key, i, KUBE_VERSIONS[(i / 2) % 3], seen).await
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    if let Some(e) = connects.into_iter().find_map(Result::err) {
        bail!("a simulated agent did not connect: {e:#}");
    }
    // Settled: 6 variants (3 versions × 2 value sets), every agent at one.
    let t0 = Instant::now();
    loop {
        let v = bundle(&mut fleet, "web").await?;
        if v.variants == 6 && seen.iter().all(|s| s.generation.load(Ordering::Acquire) >= 1) {
            break;
        }
        if t0.elapsed() > Duration::from_secs(300) {
            bail!("the fleet did not settle on 6 variants: {} variants", v.variants);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before: Vec<u64> = seen.iter().map(|s| s.generation.load(Ordering::Acquire)).collect();
    let read = |name: &str| scrape(metrics, name).ok().flatten().unwrap_or(0.0);
    let (variant0, base0) =
        (read("convoy_hub_helm_variant_renders_total"), read("convoy_hub_bundle_renders_total"));

    // A new chart version, discovered by a Reconcile of the source.
    std::fs::write(repo.join("chart/Chart.yaml"), CHART.replace("0.1.0", "0.2.0"))?;
    git(&repo, &["commit", "-q", "-am", "chart 0.2.0"])?;
    let start_ns = unix_ns();
    fleet.reconcile(pb::ObjectRef { kind: pb::ObjectKind::Source as i32, name: "repo".into() }).await?;
    until("every agent has the new chart version's generation", 300, || {
        seen.iter().zip(&before).all(|(s, b)| s.generation.load(Ordering::Acquire) > *b)
    })
    .await?;
    let ms: Vec<f64> =
        seen.iter().map(|s| s.at_ns.load(Ordering::Acquire).saturating_sub(start_ns) as f64 / 1e6).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let variant_renders = read("convoy_hub_helm_variant_renders_total") - variant0;
    let base_renders = read("convoy_hub_bundle_renders_total") - base0;
    drop(hub);
    let p99 = percentile(&ms, 99.0);
    Ok(vec![
        Measurement::from_samples(
            AREA,
            &format!(
                "new chart version: Helm renders for {n} clusters' variants (3 Kubernetes versions × 2 value sets)"
            ),
            "renders",
            &[variant_renders],
            "<= 6",
            Some(variant_renders <= 6.0),
        ),
        Measurement::from_samples(
            AREA,
            "new chart version: the source pipeline's base render (default Capabilities, no cluster values)",
            "renders",
            &[base_renders],
            "",
            None,
        ),
        Measurement::from_samples(
            AREA,
            &format!("new chart version: Reconcile until each of {n} agents has its new generation, p99"),
            "ms",
            &[p99],
            "< 2000 ms",
            Some(p99 < 2000.0),
        ),
        Measurement::from_samples(
            AREA,
            &format!("new chart version: Reconcile until each of {n} agents has its new generation, all"),
            "ms",
            &ms,
            "",
            None,
        ),
    ])
}
