//! kube-sim throughput: server-side applies of small objects from 16
//! concurrent HTTP clients, and event delivery to 200 concurrent watchers.
//! Baseline: the same clients sending `GET /version` (the HTTP stack alone).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use convoy_bench::report::{Measurement, median};
use futures::StreamExt;
use serde_json::json;

use crate::Ctx;

const CLIENTS: usize = 16;
const WATCHERS: usize = 200;

fn m(name: &str, unit: &str, samples: &[f64], target: &str, pass: Option<bool>) -> Measurement {
    Measurement::from_samples("kube-sim", name, unit, samples, target, pass)
}

/// One round of server-side applies: every client applies `per_client`
/// objects, `object(client, i)` giving each one's URL path (below the server
/// URL) and body; returns applies per second.
async fn ssa_round(
    url: &str,
    http: &reqwest::Client,
    per_client: usize,
    object: fn(usize, usize, usize) -> (String, serde_json::Value),
    round: usize,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let http = http.clone();
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_client {
                let (path, body) = object(c, i, round);
                let r = http
                    .patch(format!("{url}{path}?fieldManager=bench&force=true"))
                    .header("content-type", "application/apply-patch+yaml")
                    .body(serde_json::to_vec(&body)?)
                    .send()
                    .await?;
                anyhow::ensure!(r.status().is_success(), "apply failed: {}", r.status());
                r.bytes().await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok((CLIENTS * per_client) as f64 / start.elapsed().as_secs_f64())
}

/// A small ConfigMap (new on the first round, changed data on later rounds).
fn configmap(c: usize, i: usize, round: usize) -> (String, serde_json::Value) {
    let name = format!("bench-{c}-{i}");
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": {"app": "bench", "client": c.to_string()}},
        "data": {"round": round.to_string(), "payload": "x".repeat(64)}});
    (format!("/api/v1/namespaces/default/configmaps/{name}"), body)
}

/// A Deployment whose pod template changes each round (the simulated
/// controllers then create ReplicaSets, Pods and Events for it).
fn deployment(c: usize, i: usize, round: usize) -> (String, serde_json::Value) {
    let name = format!("bench-{c}-{i}");
    let body = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}, "annotations": {"round": round.to_string()}},
                "spec": {"containers": [{"name": "app", "image": "nginx:1.27", "ports": [{"containerPort": 80}],
                    "env": [{"name": "ROUND", "value": round.to_string()}]}]}}}});
    (format!("/apis/apps/v1/namespaces/default/deployments/{name}"), body)
}

async fn version_round(url: &str, http: &reqwest::Client, per_client: usize) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let http = http.clone();
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_client {
                http.get(format!("{url}/version")).send().await?.bytes().await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok((CLIENTS * per_client) as f64 / start.elapsed().as_secs_f64())
}

/// 200 watchers on one namespace; `writes` changes; returns (events/s delivered, median latency ms).
async fn watch_round(url: &str, writes: usize, round: usize) -> anyhow::Result<(f64, f64)> {
    let http = reqwest::Client::builder().pool_max_idle_per_host(WATCHERS + CLIENTS).build()?;
    let ns = format!("watch-{round}");
    let r = http
        .post(format!("{url}/api/v1/namespaces"))
        .json(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "namespace: {}", r.status());
    let rv: String = {
        let l: serde_json::Value =
            http.get(format!("{url}/api/v1/namespaces/{ns}/configmaps")).send().await?.json().await?;
        l["metadata"]["resourceVersion"].as_str().unwrap_or("0").to_string()
    };
    let sent_at = Arc::new(parking_lot::Mutex::new(std::collections::HashMap::<String, Instant>::new()));
    let latencies = Arc::new(parking_lot::Mutex::new(Vec::<f64>::with_capacity(WATCHERS * writes)));
    let ready = Arc::new(tokio::sync::Barrier::new(WATCHERS + 1));
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let http = http.clone();
        let u = format!(
            "{url}/api/v1/namespaces/{ns}/configmaps?watch=true&resourceVersion={rv}&labelSelector=app%3Dwatched&timeoutSeconds=120"
        );
        let sent_at = sent_at.clone();
        let latencies = latencies.clone();
        let ready = ready.clone();
        watchers.push(tokio::spawn(async move {
            let resp = http.get(u).send().await?;
            ready.wait().await;
            let mut stream = resp.bytes_stream();
            let mut buf = Vec::new();
            let mut got = 0;
            while got < writes {
                let Some(chunk) = stream.next().await else {
                    anyhow::bail!("watch ended after {got} events")
                };
                buf.extend_from_slice(&chunk?);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    let ev: serde_json::Value = serde_json::from_slice(&line)?;
                    if ev["type"] == "ADDED" {
                        let name = ev["object"]["metadata"]["name"].as_str().unwrap_or("").to_string();
                        if let Some(t) = sent_at.lock().get(&name) {
                            latencies.lock().push(t.elapsed().as_secs_f64() * 1000.0);
                        }
                        got += 1;
                    }
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    ready.wait().await;
    let start = Instant::now();
    for i in 0..writes {
        let name = format!("w{i}");
        sent_at.lock().insert(name.clone(), Instant::now());
        let r = http
            .post(format!("{url}/api/v1/namespaces/{ns}/configmaps"))
            .json(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": {"app": "watched"}}, "data": {"i": i.to_string()}}))
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "create: {}", r.status());
    }
    for w in watchers {
        tokio::time::timeout(Duration::from_secs(120), w)
            .await
            .context("watchers did not receive every event")???;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let lat = latencies.lock().clone();
    Ok(((WATCHERS * writes) as f64 / elapsed, median(&lat)))
}

/// The kube-sim benchmark area.
pub fn run(
    ctx: Ctx,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<Vec<Measurement>>>>> {
    Box::pin(async move {
        let sim = kube_sim::KubeSim::start(kube_sim::SimConfig::default()).await?;
        let url = sim.url().to_string();
        let http = reqwest::Client::builder().pool_max_idle_per_host(CLIENTS).build()?;
        let (rounds, per_client, writes) = if ctx.quick { (3, 50, 20) } else { (7, 250, 100) };

        let mut base = Vec::new();
        let mut applies = Vec::new();
        let mut noops = Vec::new();
        // warm-up creates the objects
        ssa_round(&url, &http, per_client, configmap, 0).await?;
        for r in 0..rounds {
            base.push(version_round(&url, &http, per_client).await?);
            applies.push(ssa_round(&url, &http, per_client, configmap, r + 1).await?);
            noops.push(ssa_round(&url, &http, per_client, configmap, r + 1).await?);
        }
        let before = sim.stats();
        ssa_round(&url, &http, per_client, configmap, rounds).await?;
        let after = sim.stats();
        anyhow::ensure!(after.changed == before.changed, "unchanged re-applies changed state");

        // Deployments: first round creates (controllers add ReplicaSets, Pods, Events), later rounds change the template
        let dep_per_client = if ctx.quick { 5 } else { 25 };
        let mut deps = Vec::new();
        for r in 0..rounds.min(5) {
            deps.push(ssa_round(&url, &http, dep_per_client, deployment, r).await?);
        }

        // wait until the controllers have rolled every Deployment out (so later rounds measure a quiet simulator)
        let settle_start = Instant::now();
        loop {
            let deps = sim.objects("apps", "deployments");
            let done = deps.iter().all(|d| {
                d["status"]["observedGeneration"] == d["metadata"]["generation"]
                    && d["status"]["availableReplicas"] == 1
                    && d["status"]["replicas"] == 1
            });
            if done {
                break;
            }
            anyhow::ensure!(settle_start.elapsed() < Duration::from_secs(300), "Deployments did not settle");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let settle = settle_start.elapsed().as_secs_f64() * 1000.0;

        let mut ev_rates = Vec::new();
        let mut ev_lat = Vec::new();
        for r in 0..rounds.min(3) {
            let (rate, lat) = watch_round(&url, writes, r).await?;
            ev_rates.push(rate);
            ev_lat.push(lat);
        }
        sim.shutdown().await;

        let base_med = median(&base);
        let mut changed = m(
            &format!("server-side apply, changed ConfigMap, {CLIENTS} clients"),
            "ops/s",
            &applies,
            ">= 3000 ops/s",
            Some(median(&applies) >= 3000.0),
        );
        changed.baseline = Some("GET /version".into());
        changed.baseline_value = Some(base_med);
        let mut noop = m(
            &format!("server-side apply, unchanged (no-op), {CLIENTS} clients"),
            "ops/s",
            &noops,
            ">= 3000 ops/s",
            Some(median(&noops) >= 3000.0),
        );
        noop.baseline = Some("GET /version".into());
        noop.baseline_value = Some(base_med);
        let mut dep = m(
            &format!("server-side apply, Deployment rollout, {CLIENTS} clients"),
            "ops/s",
            &deps,
            "informational",
            None,
        );
        dep.baseline = Some("GET /version".into());
        dep.baseline_value = Some(base_med);
        let n_deps = CLIENTS * dep_per_client;
        Ok(vec![
            changed,
            noop,
            dep,
            m(
                &format!("controllers settle after the last rollout of {n_deps} Deployments"),
                "ms",
                &[settle],
                "informational",
                None,
            ),
            m(
                &format!("watch events delivered, {WATCHERS} watchers x {writes} creates"),
                "events/s",
                &ev_rates,
                "all delivered",
                Some(true),
            ),
            m(&format!("watch delivery latency, {WATCHERS} watchers"), "ms", &ev_lat, "", None),
        ])
    })
}
