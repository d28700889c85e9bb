//! Per-cluster variants at fleet size (issue 14): how long the hub takes to
//! compute and sign the variants of 20 bundles for N registered clusters in
//! 15 label combinations, the memory that costs, and how long changing one
//! cluster's vars takes at two fleet sizes (it should not grow with the fleet).
//!
//! One `convoy hub`; N clusters registered with 15 tokens (`region: r1..r5` ×
//! `env: e1..e3`), not connected (variants are placed per registered cluster);
//! bundles `v1`..`v20`, each a ConfigMap whose data reads
//! `${{ cluster.labels.region }}`, `${{ cluster.labels.env }}` and
//! `${{ cluster.vars.x | default "none" }}`, so each bundle has 15 variants.
//! - **All variants:** one commit changes all 20 bundles; the time from
//!   `Fleet/Reconcile` until every bundle's new generation shows 15 variants,
//!   and the hub's RSS growth from before the clusters registered.
//! - **One cluster's vars:** `Fleet/SetClusterVars` on one cluster (it
//!   answers once that cluster's variants are built), 5 times, at N and at
//!   N/10.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use convoy_bench::hubproc::{hub_tls, start_hub, workspace_binary};
use convoy_bench::report::{Measurement, median};
use convoy_proto::v1 as pb;
use futures::StreamExt;
use tonic::transport::{Channel, Endpoint};

use crate::Ctx;
use crate::hub::{bundle, git, rss_kib};
use crate::scale::{REGISTER_CONCURRENCY, raise_nofile, register};

const AREA: &str = "variants";
const BUNDLES: usize = 20;
const REGIONS: usize = 5;
const ENVS: usize = 3;

fn write_bundles(repo: &Path, rev: u64) -> anyhow::Result<()> {
    for b in 1..=BUNDLES {
        std::fs::create_dir_all(repo.join(format!("v{b}")))?;
        std::fs::write(
            repo.join(format!("v{b}/cm.yaml")),
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: v{b}\n  namespace: default\ndata:\n  rev: \"{rev}\"\n  region: \"${{{{ cluster.labels.region }}}}\"\n  env: \"${{{{ cluster.labels.env }}}}\"\n  x: \"${{{{ cluster.vars.x | default \\\"none\\\" }}}}\"\n"
            ),
        )?;
    }
    Ok(())
}

/// Wait until every bundle is past `before` (its generation) with `want`
/// variants; returns the elapsed time.
async fn all_variants(
    fleet: &mut pb::fleet_client::FleetClient<Channel>,
    before: &[u64],
    want: u32,
    secs: u64,
) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    loop {
        let mut done = true;
        for (i, b) in (1..=BUNDLES).enumerate() {
            let v = bundle(fleet, &format!("v{b}")).await?;
            if v.generation <= before[i] || v.variants != want {
                done = false;
                break;
            }
        }
        if done {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > Duration::from_secs(secs) {
            bail!("the bundles did not reach {want} variants within {secs} s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait until every one of `n` clusters is given a generation of every
/// bundle above `before` (its variant of the new revision).
async fn all_given(
    fleet: &mut pb::fleet_client::FleetClient<Channel>,
    before: &[u64],
    n: usize,
    secs: u64,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    // A cluster given a bundle's new generation keeps it: each bundle is
    // polled until it is done, then the next (one query at a time, so the
    // polling does not load the hub it measures).
    for (i, b) in (1..=BUNDLES).enumerate() {
        loop {
            let v = bundle(fleet, &format!("v{b}")).await?;
            let given = v.clusters.iter().filter(|c| c.desired_generation > before[i]).count();
            if given >= n {
                break;
            }
            if t0.elapsed() > Duration::from_secs(secs) {
                bail!("v{b}: {given} of {n} clusters were given the new generation within {secs} s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// The area entry point.
pub fn run(
    ctx: Ctx,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<Vec<Measurement>>>>> {
    Box::pin(run_inner(ctx))
}

async fn run_inner(ctx: Ctx) -> anyhow::Result<Vec<Measurement>> {
    let big = if ctx.quick { 1_000 } else { 10_000 };
    raise_nofile(4096);
    let mut out = Vec::new();
    let mut vars_ms_by_size = Vec::new();
    for n in [big / 10, big] {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path();
        let repo = dir.join("repo");
        std::fs::create_dir_all(&repo)?;
        git(&repo, &["init", "-q", "-b", "main"])?;
        write_bundles(&repo, 0)?;
        git(&repo, &["add", "-A"])?;
        git(&repo, &["commit", "-q", "-m", "init"])?;
        let convoy = workspace_binary("convoy-cli", "convoy", None)?;
        let docs: String = (1..=BUNDLES)
            .map(|b| {
                format!(
                    "---\napiVersion: convoy.dev/v1\nkind: Bundle\nmetadata: {{name: v{b}}}\nspec: {{source: repo, path: v{b}, substitute: {{}}, targets: [{{clusterSelector: {{}}}}]}}\n"
                )
            })
            .collect();
        let (hub, creds) = start_hub(&convoy, dir, &repo.display().to_string(), &docs).await?;
        let pid = hub.0.id();
        let admin =
            Endpoint::from_shared(creds.hub.clone())?.tls_config(creds.admin_tls())?.connect().await?;
        let mut fleet = pb::fleet_client::FleetClient::new(admin);
        let deadline = Instant::now() + Duration::from_secs(120);
        for b in 1..=BUNDLES {
            while bundle(&mut fleet, &format!("v{b}")).await?.generation < 1 {
                if Instant::now() > deadline {
                    bail!("the hub did not build v{b}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let mut tokens = Vec::new();
        for r in 1..=REGIONS {
            for e in 1..=ENVS {
                let labels = [("region".to_string(), format!("r{r}")), ("env".to_string(), format!("e{e}"))];
                let req =
                    pb::CreateTokenRequest { ttl_seconds: 3600, labels: labels.into(), ..Default::default() };
                tokens.push(fleet.create_token(req).await?.into_inner().token);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss0 = rss_kib(pid)?;
        let key = rcgen::KeyPair::generate()?;
        let csr = rcgen::CertificateParams::default().serialize_request(&key)?.pem()?;
        let registrar = pb::registration_client::RegistrationClient::new(
            Endpoint::from_shared(creds.hub.clone())?.tls_config(hub_tls(&creds.ca, None))?.connect().await?,
        );
        let errors: Vec<anyhow::Error> = futures::stream::iter(0..n)
            .map(|i| register(registrar.clone(), tokens[i % tokens.len()].clone(), csr.clone(), i))
            .buffer_unordered(REGISTER_CONCURRENCY)
            .filter_map(|r| std::future::ready(r.err()))
            .collect()
            .await;
        if let Some(e) = errors.first() {
            bail!("{} of {n} registrations failed, first: {e:#}", errors.len());
        }
        let gens = |f: &mut pb::fleet_client::FleetClient<Channel>| {
            let mut f = f.clone();
            async move {
                let mut g = Vec::new();
                for b in 1..=BUNDLES {
                    g.push(bundle(&mut f, &format!("v{b}")).await?.generation);
                }
                anyhow::Ok(g)
            }
        };
        // The registrations' own variants settle first.
        all_variants(&mut fleet, &[0; BUNDLES], (REGIONS * ENVS) as u32, 600).await?;

        // A commit that changes every bundle: every variant is built again.
        write_bundles(&repo, 1)?;
        git(&repo, &["commit", "-q", "-am", "rev 1"])?;
        let before = gens(&mut fleet).await?;
        let t0 = Instant::now();
        fleet.reconcile(pb::ObjectRef { kind: pb::ObjectKind::Source as i32, name: "repo".into() }).await?;
        let took = all_variants(&mut fleet, &before, (REGIONS * ENVS) as u32, 600).await?;
        all_given(&mut fleet, &before, n, 600).await?;
        let given = t0.elapsed();
        let rss1 = rss_kib(pid)?;
        out.push(Measurement::from_samples(
            AREA,
            &format!(
                "a commit to {BUNDLES} bundles: Reconcile until every bundle has its {} variants ({n} clusters)",
                REGIONS * ENVS
            ),
            "ms",
            &[took.as_secs_f64() * 1e3],
            "",
            None,
        ));
        out.push(Measurement::from_samples(
            AREA,
            &format!(
                "a commit to {BUNDLES} bundles: Reconcile until all {n} clusters are given their new variants"
            ),
            "ms",
            &[given.as_secs_f64() * 1e3],
            "",
            None,
        ));
        out.push(Measurement::from_samples(
            AREA,
            &format!(
                "hub memory of {n} clusters × {BUNDLES} bundles with variants (RSS {:.0} -> {:.0} MiB)",
                rss0 / 1024.0,
                rss1 / 1024.0
            ),
            "MiB",
            &[(rss1 - rss0) / 1024.0],
            "",
            None,
        ));

        // One cluster's vars, 5 times.
        let mut ms = Vec::new();
        for k in 0..5 {
            let t0 = Instant::now();
            fleet
                .set_cluster_vars(pb::SetClusterVarsRequest {
                    name: "s000000".into(),
                    set: [("x".to_string(), format!("v{k}"))].into(),
                    ..Default::default()
                })
                .await?;
            ms.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        out.push(Measurement::from_samples(
            AREA,
            &format!("SetClusterVars on one cluster until its {BUNDLES} variants are built ({n} clusters)"),
            "ms",
            &ms,
            "",
            None,
        ));
        vars_ms_by_size.push(median(&ms));
        drop(hub);
    }
    if let [small, large] = vars_ms_by_size[..] {
        out.push(Measurement::from_samples(
            AREA,
            &format!(
                "SetClusterVars at {big} clusters / at {} clusters (O(bundles), not O(fleet): about 1)",
                big / 10
            ),
            "x",
            &[large / small.max(1e-3)],
            "< 2x",
            Some(large < 2.0 * small),
        ));
    }
    Ok(out)
}
