//! Progressive rollouts over simulated agents (issue 15): how long the hub
//! takes per wave decision, and its memory for 100 concurrent rollouts.
//!
//! One `convoy hub` process and 1,000 simulated agents (200 with `--quick`;
//! the same agents as the `scale` area: real registration, mTLS and Sync
//! streams, a Ready status for every new generation at once, no Kubernetes),
//! labelled `wave: w1`..`w5` by their tokens, 200 per wave.
//! - **Per wave decision:** bundle `app` rolls out over 5 waves with no soak
//!   and automatic gates. An agent "applies" in zero time (it reports Ready
//!   the moment it receives the generation), so the time between the last
//!   receipt in wave k and the first receipt in wave k+1 is what the hub
//!   adds per wave: the last Ready status reaching it and being stored, the
//!   rollout's decision and commit, and the next wave's generations sent.
//! - **100 concurrent rollouts:** bundles `b1`..`b100`, each with the same 5
//!   waves and an approval gate on wave 2, all changed by one commit. Once
//!   all 100 rollouts wait at their gate, the hub's RSS minus its RSS before
//!   the commit is their memory (rollout state, the new generations and their
//!   records, the statuses of wave 1).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::bail;
use convoy_bench::hubproc::{hub_tls, start_hub, workspace_binary};
use convoy_bench::report::{Measurement, median};
use convoy_proto::v1 as pb;
use futures::StreamExt;
use tonic::transport::{Channel, Endpoint};

use crate::Ctx;
use crate::hub::{bundle, git, rss_kib, unix_ns};
use crate::scale::{REGISTER_CONCURRENCY, SimAgent, connect, raise_nofile, register, wait_all, write_app};

const AREA: &str = "rollout";
const WAVES: usize = 5;
/// Bundles rolled out at once in the memory phase.
const CONCURRENT: usize = 100;

fn waves(approval_on_second: bool) -> String {
    (1..=WAVES)
        .map(|w| {
            let gate = if approval_on_second && w == 2 { ", gate: approval" } else { "" };
            format!("{{name: w{w}, selector: {{matchLabels: {{wave: w{w}}}}}{gate}}}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn write_rolled(repo: &Path, i: usize, rev: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(repo.join(format!("b{i}")))?;
    std::fs::write(
        repo.join(format!("b{i}/cm.yaml")),
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b{i}\n  namespace: default\ndata:\n  rev: \"{rev}\"\n"
        ),
    )?;
    Ok(())
}

async fn rollout_status(
    fleet: &mut pb::fleet_client::FleetClient<Channel>,
    b: &str,
) -> anyhow::Result<String> {
    Ok(fleet.get_rollout(pb::GetRolloutRequest { bundle: b.into() }).await?.into_inner().status)
}

/// The area entry point.
pub fn run(
    ctx: Ctx,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<Vec<Measurement>>>>> {
    Box::pin(run_inner(ctx))
}

async fn run_inner(ctx: Ctx) -> anyhow::Result<Vec<Measurement>> {
    let n = if ctx.quick { 200 } else { 1000 };
    let rounds = if ctx.quick { 2 } else { 5 };
    raise_nofile(n as u64 + 4096);
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo)?;
    git(&repo, &["init", "-q", "-b", "main"])?;
    write_app(&repo, 0)?;
    for i in 1..=CONCURRENT {
        write_rolled(&repo, i, 0)?;
    }
    git(&repo, &["add", "-A"])?;
    git(&repo, &["commit", "-q", "-m", "init"])?;
    let convoy = workspace_binary("convoy-cli", "convoy", None)?;
    let mut docs = format!(
        "---\napiVersion: convoy.dev/v1\nkind: Bundle\nmetadata: {{name: app}}\nspec: {{source: repo, path: app, targets: [{{clusterSelector: {{}}}}], rollout: {{waves: [{}]}}}}\n",
        waves(false)
    );
    for i in 1..=CONCURRENT {
        docs.push_str(&format!(
            "---\napiVersion: convoy.dev/v1\nkind: Bundle\nmetadata: {{name: b{i}}}\nspec: {{source: repo, path: b{i}, targets: [{{clusterSelector: {{}}}}], rollout: {{waves: [{}]}}}}\n",
            waves(true)
        ));
    }
    let (hub, creds) = start_hub(&convoy, dir, &repo.display().to_string(), &docs).await?;
    let pid = hub.0.id();
    let admin = Endpoint::from_shared(creds.hub.clone())?.tls_config(creds.admin_tls())?.connect().await?;
    let mut fleet = pb::fleet_client::FleetClient::new(admin);
    let deadline = Instant::now() + Duration::from_secs(180);
    for name in std::iter::once("app".to_string()).chain((1..=CONCURRENT).map(|i| format!("b{i}"))) {
        while bundle(&mut fleet, &name).await?.generation < 1 {
            if Instant::now() > deadline {
                bail!("the hub did not build {name}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Agents: one token per wave gives each agent its wave label.
    let mut tokens = Vec::new();
    for w in 1..=WAVES {
        tokens.push(
            fleet
                .create_token(pb::CreateTokenRequest {
                    ttl_seconds: 3600,
                    labels: [("wave".to_string(), format!("w{w}"))].into(),
                    ..Default::default()
                })
                .await?
                .into_inner()
                .token,
        );
    }
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::default().serialize_request(&key)?.pem()?;
    let key_pem = key.serialize_pem();
    let registrar = pb::registration_client::RegistrationClient::new(
        Endpoint::from_shared(creds.hub.clone())?.tls_config(hub_tls(&creds.ca, None))?.connect().await?,
    );
    // Registrations complete in any order: keep each certificate with its
    // agent's index (its wave).
    let certs: Vec<(usize, anyhow::Result<String>)> = futures::stream::iter(0..n)
        .map(|i| {
            let f = register(registrar.clone(), tokens[i % WAVES].clone(), csr.clone(), i);
            async move { (i, f.await) }
        })
        .buffer_unordered(REGISTER_CONCURRENCY)
        .collect()
        .await;
    let mut agents: Vec<(usize, SimAgent)> = Vec::new();
    let conns: Vec<anyhow::Result<(usize, SimAgent)>> = futures::stream::iter(certs)
        .map(|(i, cert)| {
            let (endpoint, ca, key) = (creds.hub.clone(), creds.ca.clone(), key_pem.clone());
            async move { Ok((i % WAVES, connect(&endpoint, &ca, &cert?, &key, i, CONCURRENT + 1).await?)) }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    for c in conns {
        agents.push(c?);
    }
    // Every agent has generation 1 of every bundle (a first generation goes
    // everywhere at once) and its statuses are stored.
    wait_all("generation 1 of every bundle, acked", 300, || {
        agents
            .iter()
            .filter(|(_, a)| {
                a.state.app_gen.load(Ordering::Acquire) < 1
                    || a.state.others.iter().any(|g| g.load(Ordering::Acquire) < 1)
                    || a.state.acked.load(Ordering::Acquire) < a.state.sent.load(Ordering::Acquire)
            })
            .count()
    })
    .await?;
    let mut out = Vec::new();

    // Per wave decision.
    let mut gaps_ms = Vec::new();
    let mut totals_ms = Vec::new();
    for rev in 1..=rounds {
        write_app(&repo, rev)?;
        git(&repo, &["commit", "-q", "-am", &format!("app rev {rev}")])?;
        let before = bundle(&mut fleet, "app").await?.generation;
        let t0 = unix_ns();
        fleet.reconcile(pb::ObjectRef { kind: pb::ObjectKind::Source as i32, name: "repo".into() }).await?;
        wait_all("the new generation of app through every wave", 300, || {
            agents.iter().filter(|(_, a)| a.state.app_gen.load(Ordering::Acquire) <= before).count()
        })
        .await?;
        let at = |w: usize| {
            agents.iter().filter(move |(aw, _)| *aw == w).map(|(_, a)| a.state.app_ns.load(Ordering::Acquire))
        };
        let mut last_end = 0;
        for w in 0..WAVES {
            let first = at(w).min().unwrap_or(0);
            let last = at(w).max().unwrap_or(0);
            if std::env::var_os("CONVOY_BENCH_DEBUG").is_some() {
                eprintln!(
                    "rollout bench: round {rev} wave {}: first {:.1} ms, last {:.1} ms after the commit",
                    w + 1,
                    first.saturating_sub(t0) as f64 / 1e6,
                    last.saturating_sub(t0) as f64 / 1e6
                );
            }
            if w > 0 {
                gaps_ms.push(first.saturating_sub(last_end) as f64 / 1e6);
            }
            last_end = last;
        }
        totals_ms.push(last_end.saturating_sub(t0) as f64 / 1e6);
        // Let the rollout record its completion before the next round.
        let deadline = Instant::now() + Duration::from_secs(30);
        while rollout_status(&mut fleet, "app").await? != "Complete" {
            if Instant::now() > deadline {
                bail!("the rollout of app did not complete");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let worst = gaps_ms.iter().copied().fold(0.0, f64::max);
    out.push(Measurement::from_samples(
        AREA,
        &format!(
            "hub time per wave decision: last receipt in wave k to first in k+1 ({n} agents, {WAVES} waves, no soak, {rounds} rounds; max {worst:.0} ms)"
        ),
        "ms",
        &gaps_ms,
        "< 100 ms",
        Some(median(&gaps_ms) < 100.0),
    ));
    out.push(Measurement::from_samples(
        AREA,
        &format!("a rollout of {WAVES} waves end to end: commit+Reconcile to the last agent ({n} agents)"),
        "ms",
        &totals_ms,
        "",
        None,
    ));

    // Memory of 100 concurrent rollouts, all held at wave 2's approval gate.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss0 = rss_kib(pid)?;
    for i in 1..=CONCURRENT {
        write_rolled(&repo, i, 1)?;
    }
    git(&repo, &["commit", "-q", "-am", "every b: rev 1"])?;
    fleet.reconcile(pb::ObjectRef { kind: pb::ObjectKind::Source as i32, name: "repo".into() }).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 1..=CONCURRENT {
        let b = format!("b{i}");
        while rollout_status(&mut fleet, &b).await.unwrap_or_default() != "AwaitingApproval" {
            if Instant::now() > deadline {
                bail!("the rollout of {b} did not reach wave 2's gate");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let rss1 = rss_kib(pid)?;
    out.push(Measurement::from_samples(
        AREA,
        &format!(
            "hub memory of {CONCURRENT} concurrent rollouts held at a gate (RSS {:.0} -> {:.0} MiB, {n} agents)",
            rss0 / 1024.0,
            rss1 / 1024.0
        ),
        "MiB",
        &[(rss1 - rss0) / 1024.0],
        "stated",
        None,
    ));
    drop(agents);
    drop(hub);
    Ok(out)
}
