//! The end-to-end scenarios of issue 6, on the example fleet (`examples/`):
//! a real git server (`git daemon`), the hub (in-process, or the real
//! `convoy hub` process where it must die), three kube-sim clusters with a
//! real agent each, and the real `convoy` and `kubectl` binaries.
//!
//! Clusters: `staging` (env=staging, region=eu), `prod-eu` (env=prod,
//! region=eu), `prod-us` (env=prod, region=us). Bundles: `infra` (every
//! cluster), `web-staging` (env=staging), `web-prod` (env=prod), `monitoring`
//! (env=prod, region in (eu, us)).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use convoy_e2e::fleet::{all_ready, cell_ready_at, cells, condition, event_counts};
use convoy_e2e::{Fleet, FleetOptions, HubMode, commit_of, eventually};
use convoy_proto::v1 as pb;

fn convoy_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_convoy-e2e-convoy"))
}

const BUNDLES: [&str; 4] = ["infra", "monitoring", "web-prod", "web-staging"];
const DEPLOYMENT: &str = "apps/web/base/deployment.yaml";
const IMAGE: &str = "ghcr.io/stefanprodan/podinfo:6.7.0";

/// Which clusters each bundle of the example fleet targets, by its labels.
fn expected_targets() -> BTreeMap<&'static str, BTreeSet<&'static str>> {
    BTreeMap::from([
        ("infra", BTreeSet::from(["prod-eu", "prod-us", "staging"])),
        ("monitoring", BTreeSet::from(["prod-eu", "prod-us"])),
        ("web-prod", BTreeSet::from(["prod-eu", "prod-us"])),
        ("web-staging", BTreeSet::from(["staging"])),
    ])
}

fn names(v: &[String]) -> BTreeSet<&str> {
    v.iter().map(String::as_str).collect()
}

/// Scenario 1. A fresh fleet converges: every targeted bundle is Ready at its
/// generation in every matching cluster (per the hub and per the objects on
/// each cluster), and a cluster that a bundle does not target holds nothing
/// of it (no object, no inventory, no cell in the hub's matrix).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_fresh_fleet_converges_only_where_targeted() {
    let fleet = Fleet::start(FleetOptions::default()).await.unwrap();
    let views = fleet.wait_converged(120).await;
    let expected = expected_targets();
    let got: BTreeSet<&str> = views.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(got, BUNDLES.into_iter().collect());
    let head = fleet.repo.head().unwrap();
    for b in &views {
        let want = &expected[b.name.as_str()];
        assert_eq!(names(&cells(b)), *want, "clusters of {}", b.name);
        assert_eq!(b.generation, 1, "{}", b.name);
        assert_eq!(commit_of(&b.revision), head, "{} built from the pushed commit", b.name);
        assert_eq!(condition(b, "Ready").map(|c| c.status.as_str()), Some("True"), "{}", b.name);
        for c in &b.clusters {
            let st = c.status.as_ref().unwrap();
            assert_eq!(st.revision, b.revision);
            // A per-cluster variant (web-prod's REGION) has its own digest.
            assert_eq!(st.digest == b.digest, c.variant.is_empty(), "{}/{}", c.cluster, b.name);
            let objects = st.objects.unwrap_or_default();
            assert!(
                objects.total > 0 && objects.ready == objects.total,
                "{}/{}: {objects:?}",
                c.cluster,
                b.name
            );
        }
        // On the clusters themselves.
        for cluster in &fleet.clusters {
            let objs = cluster.bundle_objects(&b.name);
            if want.contains(cluster.name.as_str()) {
                assert!(!objs.is_empty(), "{} has nothing of {}", cluster.name, b.name);
                assert!(cluster.has_inventory(&b.name), "{} has no inventory of {}", cluster.name, b.name);
            } else {
                assert!(objs.is_empty(), "{} is not targeted by {} but holds {objs:?}", cluster.name, b.name);
                assert!(!cluster.has_inventory(&b.name), "{} holds an inventory of {}", cluster.name, b.name);
            }
        }
    }
    // What each bundle put where, object by object.
    let staging = fleet.cluster("staging");
    let prod_eu = fleet.cluster("prod-eu");
    assert_eq!(
        staging.bundle_objects("infra"),
        [
            "ClusterRole/web-viewer",
            "Namespace/monitoring",
            "Namespace/web",
            "RoleBinding/web/web-viewer",
            "ServiceAccount/web/web"
        ]
    );
    let web = prod_eu.object("apps", "deployments", "web", "web").unwrap();
    assert_eq!(web["spec"]["replicas"], 3, "the prod overlay scales to 3");
    assert_eq!(web["status"]["readyReplicas"], 3);
    assert_eq!(staging.object("apps", "deployments", "web", "web").unwrap()["spec"]["replicas"], 1);
    assert!(prod_eu.object("policy", "poddisruptionbudgets", "web", "web").is_some());
    assert!(staging.object("policy", "poddisruptionbudgets", "web", "web").is_none());
    assert_eq!(prod_eu.object("", "services", "web", "web").unwrap()["spec"]["type"], "LoadBalancer");
    assert!(staging.object("apps", "daemonsets", "monitoring", "node-exporter").is_none());
    // The real kubectl sees the same through the kubeconfig.
    let out = fleet.cluster("prod-us").kubectl_ok(&["get", "deploy", "-A", "-o", "name"]).await.unwrap();
    assert!(out.contains("deployment.apps/web"), "{out}");
    // And `convoy get clusters` shows three connected clusters, all bundles ready.
    let out = fleet.convoy_ok(&convoy_bin(), &["get", "clusters", "-o", "json"]).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 3, "{out}");
    for r in rows {
        assert_eq!(r["connected"], true, "{r}");
    }
    fleet.shutdown().await;
}

/// Scenario 2. One commit changes the web image and deletes an object of the
/// monitoring bundle: every targeted cluster gets the new revision of the
/// bundles that changed, the removed object is pruned where it was, the
/// unchanged bundle keeps its generation, and `convoy status` shows the new
/// revision Ready everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_commit_changes_image_and_prunes_removed_object() {
    let fleet = Fleet::start(FleetOptions::default()).await.unwrap();
    let before: BTreeMap<String, pb::BundleView> =
        fleet.wait_converged(120).await.into_iter().map(|b| (b.name.clone(), b)).collect();
    for c in ["prod-eu", "prod-us"] {
        assert!(fleet.cluster(c).object("", "configmaps", "monitoring", "scrape-config").is_some());
    }

    fleet.repo.replace(DEPLOYMENT, IMAGE, "ghcr.io/stefanprodan/podinfo:6.7.1").unwrap();
    fleet.repo.remove("monitoring/config.yaml").unwrap();
    fleet.repo.commit("web 6.7.1; drop the scrape config").unwrap();
    let commit = fleet.push().await.unwrap();

    for name in ["web-staging", "web-prod", "monitoring"] {
        let b = fleet.wait_rolled_out(name, &commit, 120).await;
        assert_eq!(b.generation, before[name].generation + 1, "{name}: one new generation");
        assert_ne!(b.digest, before[name].digest);
        for c in &b.clusters {
            let st = c.status.as_ref().unwrap();
            assert_eq!(st.revision, b.revision);
            assert_eq!(st.digest == b.digest, c.variant.is_empty(), "{}/{}", c.cluster, b.name);
        }
    }
    let monitoring = fleet.bundle("monitoring").await.unwrap();
    for c in &monitoring.clusters {
        let o = c.status.as_ref().unwrap().objects.unwrap();
        assert_eq!(o.pruned, 1, "{}: {o:?}", c.cluster);
    }
    // infra did not change: same digest, same generation, nothing re-applied.
    let infra = fleet.bundle("infra").await.unwrap();
    assert_eq!((infra.generation, &infra.digest), (before["infra"].generation, &before["infra"].digest));
    assert!(all_ready(&infra));

    for c in &fleet.clusters {
        assert_eq!(
            c.deployment_image("web", "web").as_deref(),
            Some("ghcr.io/stefanprodan/podinfo:6.7.1"),
            "{}",
            c.name
        );
        assert!(
            c.object("", "configmaps", "monitoring", "scrape-config").is_none(),
            "{}: not pruned",
            c.name
        );
    }
    for c in ["prod-eu", "prod-us"] {
        assert!(fleet.cluster(c).object("apps", "daemonsets", "monitoring", "node-exporter").is_some());
        let d = fleet.cluster(c).object("apps", "deployments", "web", "web").unwrap();
        assert_eq!(d["status"]["updatedReplicas"], 3, "{c}: rolled out");
    }

    // The operator's view: `convoy status web-prod`.
    let out = fleet.convoy_ok(&convoy_bin(), &["status", "web-prod", "-o", "json"]).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(commit_of(v["revision"].as_str().unwrap()), commit);
    let rows = v["clusters"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{out}");
    for r in rows {
        assert_eq!(r["phase"], "Ready", "{r}");
        assert_eq!(r["revision"], v["revision"], "{r}");
        assert_eq!(r["generation"], v["generation"], "{r}");
    }
    let table = fleet.convoy_ok(&convoy_bin(), &["status", "web-prod"]).await.unwrap();
    assert!(table.contains(&format!("main@{}", &commit[..7])), "{table}");
    assert!(table.contains("2/2 ready"), "{table}");
    fleet.shutdown().await;
}

/// Scenario 3. Relabelling clusters with `convoy label cluster` moves
/// bundles: web-prod and monitoring leave prod-us (their objects pruned,
/// inventories gone) and arrive at staging; web-staging leaves staging and
/// arrives at prod-us.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_label_change_moves_bundles_between_clusters() {
    let fleet = Fleet::start(FleetOptions::default()).await.unwrap();
    fleet.wait_converged(120).await;
    assert!(!fleet.cluster("prod-us").bundle_objects("monitoring").is_empty());

    fleet
        .convoy_ok(&convoy_bin(), &["label", "cluster", "prod-us", "env=staging", "region=us"])
        .await
        .unwrap();
    fleet.convoy_ok(&convoy_bin(), &["label", "cluster", "staging", "env=prod", "region=eu"]).await.unwrap();

    let want: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::from([
        ("infra", BTreeSet::from(["prod-eu", "prod-us", "staging"])),
        ("monitoring", BTreeSet::from(["prod-eu", "staging"])),
        ("web-prod", BTreeSet::from(["prod-eu", "staging"])),
        ("web-staging", BTreeSet::from(["prod-us"])),
    ]);
    for (bundle, clusters) in &want {
        fleet
            .wait_bundle(bundle, 120, &format!("{bundle} Ready on exactly {clusters:?}"), |b| {
                names(&cells(b)) == *clusters && all_ready(b)
            })
            .await;
    }
    let prod_us = fleet.cluster("prod-us");
    let staging = fleet.cluster("staging");
    // Left: pruned, inventory gone. The objects both web bundles declare are
    // now web-staging's on prod-us; web-prod's own (the PDB) is gone.
    for (cluster, gone) in [(prod_us, ["web-prod", "monitoring"]), (staging, ["web-staging", "web-staging"])]
    {
        for b in gone {
            let objs = cluster.bundle_objects(b);
            assert!(objs.is_empty(), "{} still holds {objs:?} of {b}", cluster.name);
            assert!(!cluster.has_inventory(b), "{} still has the inventory of {b}", cluster.name);
        }
    }
    eventually(60, "prod-us converged to the staging shape", || async {
        let d = prod_us.object("apps", "deployments", "web", "web")?;
        (d["metadata"]["labels"]["convoy.dev/bundle"] == "web-staging"
            && d["spec"]["replicas"] == 1
            && prod_us.object("policy", "poddisruptionbudgets", "web", "web").is_none()
            && prod_us.object("apps", "daemonsets", "monitoring", "node-exporter").is_none()
            && prod_us.object("", "configmaps", "monitoring", "scrape-config").is_none())
        .then_some(())
    })
    .await;
    // The monitoring namespace is infra's and stays.
    assert!(prod_us.object("", "namespaces", "", "monitoring").is_some());
    // Arrived: staging now runs the prod shape.
    let d = staging.object("apps", "deployments", "web", "web").unwrap();
    assert_eq!(d["metadata"]["labels"]["convoy.dev/bundle"], "web-prod");
    assert_eq!(d["spec"]["replicas"], 3);
    assert!(staging.object("policy", "poddisruptionbudgets", "web", "web").is_some());
    assert!(staging.object("apps", "daemonsets", "monitoring", "node-exporter").is_some());
    // The hub records the new labels.
    let c = fleet.hub_cluster("prod-us").await.unwrap().cluster.unwrap();
    assert_eq!(c.labels.get("env").map(String::as_str), Some("staging"));
    fleet.shutdown().await;
}

/// Scenario 4. A commit with broken YAML (and, in the same commit, a valid
/// change to another file of the same bundle): the hub shows the bundle
/// Stalled naming the file and line, keeps serving the last good generation,
/// every cluster keeps the previous revision running (nothing of the commit
/// is applied, not even the valid change), and an alert reaches a local
/// receiver. A fixing commit then rolls out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_broken_yaml_stalls_keeps_previous_revision_and_alerts() {
    let fleet = Fleet::start(FleetOptions { alerts: true, ..Default::default() }).await.unwrap();
    let before = fleet.wait_converged(120).await.into_iter().find(|b| b.name == "monitoring").unwrap();
    let good = fleet.repo.read("monitoring/config.yaml").unwrap();

    // Line 6 opens a flow sequence that never closes; the parser stumbles on line 7.
    let broken = good.replacen(
        "  namespace: monitoring\n",
        "  namespace: monitoring\n  labels: [team: observability\n",
        1,
    );
    assert_eq!(broken.lines().nth(5), Some("  labels: [team: observability"));
    fleet.repo.write("monitoring/config.yaml", &broken).unwrap();
    fleet
        .repo
        .replace("monitoring/node-exporter.yaml", "node-exporter:v1.8.2", "node-exporter:v1.9.0")
        .unwrap();
    fleet.repo.commit("broken scrape config").unwrap();
    fleet.push().await.unwrap();

    let b = fleet
        .wait_bundle("monitoring", 60, "monitoring Stalled on the hub", |b| {
            condition(b, "Stalled").is_some_and(|c| c.status == "True")
        })
        .await;
    let stalled = condition(&b, "Stalled").unwrap();
    assert_eq!(stalled.reason, "InvalidManifest", "{stalled:?}");
    // The file (relative to the bundle's path, `monitoring/`) and the line.
    assert!(stalled.message.starts_with("monitoring/config.yaml: document 0, line 7"), "{}", stalled.message);
    assert_eq!(condition(&b, "Ready").map(|c| c.status.as_str()), Some("False"));
    // The last good generation stays in force, Ready everywhere.
    assert_eq!((b.generation, &b.revision, &b.digest), (before.generation, &before.revision, &before.digest));
    assert!(b.clusters.iter().all(|c| cell_ready_at(c, before.generation)), "{b:?}");
    for c in ["prod-eu", "prod-us"] {
        let cl = fleet.cluster(c);
        assert_eq!(
            cl.object("apps", "daemonsets", "monitoring", "node-exporter").unwrap()["spec"]["template"]["spec"]
                ["containers"][0]["image"],
            "quay.io/prometheus/node-exporter:v1.8.2",
            "{c}: nothing of the broken commit applied"
        );
        let cm = cl.object("", "configmaps", "monitoring", "scrape-config").unwrap();
        assert!(cm["data"]["scrape.yaml"].as_str().unwrap().contains("scrape_interval: 30s"));
    }
    // `convoy status` tells the operator.
    let out = fleet.convoy_ok(&convoy_bin(), &["status", "monitoring"]).await.unwrap();
    assert!(
        out.contains("InvalidManifest") && out.contains("monitoring/config.yaml: document 0, line 7"),
        "{out}"
    );

    // The hub recorded it, and the alert was delivered with file and line.
    let evs = fleet.events("hub").await.unwrap();
    assert!(
        evs.iter()
            .filter_map(|e| e.event.as_ref())
            .any(|e| e.reason == "BuildFailed" && e.bundle == "monitoring"),
        "no BuildFailed event: {evs:?}"
    );
    let receiver = fleet.receiver.as_ref().unwrap();
    let n = eventually(30, "the BuildFailed alert at the receiver", || async {
        receiver.notifications().into_iter().find(|n| n.reason == "BuildFailed" && n.bundle == "monitoring")
    })
    .await;
    assert!(n.message.contains("monitoring/config.yaml: document 0, line 7"), "{}", n.message);
    assert_eq!(n.origin, "hub");
    assert_eq!(n.hub, "e2e-hub");
    assert_eq!(format!("{:?}", n.severity).to_lowercase(), "error");

    // The fix rolls out (both changes of the bundle, at last).
    fleet.repo.write("monitoring/config.yaml", &good).unwrap();
    fleet.repo.commit("fix the scrape config").unwrap();
    let fixed = fleet.push().await.unwrap();
    let b = fleet.wait_rolled_out("monitoring", &fixed, 120).await;
    assert_eq!(b.generation, before.generation + 1);
    assert_eq!(condition(&b, "Stalled").map(|c| c.status.as_str()).unwrap_or("False"), "False");
    for c in ["prod-eu", "prod-us"] {
        assert_eq!(
            fleet.cluster(c).object("apps", "daemonsets", "monitoring", "node-exporter").unwrap()["spec"]["template"]
                ["spec"]["containers"][0]["image"],
            "quay.io/prometheus/node-exporter:v1.9.0"
        );
    }
    fleet.shutdown().await;
}

/// Each cluster's event counts at the hub equal what its agent recorded in
/// its outbox (`convoy_agent_events_total`), once the outboxes are drained:
/// nothing lost (hub < agent) and nothing duplicated (hub > agent). Stored
/// event ids strictly increase.
async fn assert_hub_holds_exactly_what_agents_sent(fleet: &Fleet) {
    for c in &fleet.clusters {
        let (hub, agent) =
            eventually(60, &format!("{}: outbox drained and counts equal", c.name), || async {
                if !c.agent_connected() || c.outbox_depth() != 0 {
                    return None;
                }
                let hub = event_counts(&fleet.events(&c.name).await.ok()?);
                let agent = c.agent_event_counts();
                (hub == agent).then_some((hub, agent))
            })
            .await;
        assert!(!agent.is_empty(), "{}: the agent recorded events", c.name);
        assert_eq!(hub, agent);
        let ids: Vec<u64> = fleet.events(&c.name).await.unwrap().iter().map(|e| e.id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{}: ids {ids:?}", c.name);
    }
}

/// Scenario 5. The real `convoy hub` process is SIGKILLed in the middle of a
/// rollout (it signed the new generation and an agent is rolling it out) and
/// restarted on the same data dir and address. Meanwhile the agents finish
/// the rollout on their own and keep what they report in their outboxes.
/// After the restart they reconnect, the rollout completes at the same
/// generation, and the hub holds exactly the events each agent sent: none
/// lost, none duplicated; statuses produced while it was dead are shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_hub_killed_mid_rollout_restarts_and_loses_nothing() {
    let mut fleet = Fleet::start(FleetOptions {
        hub: HubMode::Process(convoy_bin()),
        readiness_delay: Duration::from_secs(2),
        ..Default::default()
    })
    .await
    .unwrap();
    let before: BTreeMap<String, pb::BundleView> =
        fleet.wait_converged(120).await.into_iter().map(|b| (b.name.clone(), b)).collect();
    let gen_ = before["web-prod"].generation + 1;
    let applied_before: Vec<u64> = fleet
        .clusters
        .iter()
        .map(|c| c.agent_event_counts().iter().filter(|((_, r), _)| r == "Applied").map(|(_, n)| n).sum())
        .collect();

    fleet.repo.replace(DEPLOYMENT, IMAGE, "ghcr.io/stefanprodan/podinfo:6.7.2").unwrap();
    fleet.repo.commit("web 6.7.2").unwrap();
    let commit = fleet.push().await.unwrap();
    let b = fleet
        .wait_bundle("web-prod", 60, "both prod agents rolling out the new generation", |b| {
            b.generation == gen_
                && b.clusters.iter().all(|c| {
                    c.status
                        .as_ref()
                        .is_some_and(|s| s.generation == gen_ && s.phase == pb::Phase::Reconciling as i32)
                })
        })
        .await;
    fleet.hub.kill().unwrap();
    assert!(!all_ready(&b), "the hub must die mid-rollout: {b:?}");

    // The prod agents go on without the hub: each finishes the rollout and
    // holds new statuses and events for the hub. (staging may or may not
    // have heard of its new generation before the hub died.)
    for (c, applied) in fleet.clusters.iter().zip(applied_before).filter(|(c, _)| c.name.starts_with("prod-"))
    {
        eventually(60, &format!("{} rolled out with the hub dead", c.name), || async {
            let d = c.object("apps", "deployments", "web", "web")?;
            let replicas = d["spec"]["replicas"].clone();
            let applied_now: u64 =
                c.agent_event_counts().iter().filter(|((_, r), _)| r == "Applied").map(|(_, n)| n).sum();
            (!c.agent_connected()
                && c.deployment_image("web", "web")?.ends_with(":6.7.2")
                && d["status"]["updatedReplicas"] == replicas
                && d["status"]["readyReplicas"] == replicas
                && applied_now > applied
                && c.outbox_depth() > 0)
                .then_some(())
        })
        .await;
    }
    let counts_while_dead: Vec<_> = fleet.clusters.iter().map(|c| c.agent_event_counts()).collect();

    fleet.hub.restart().await.unwrap();
    for name in ["web-prod", "web-staging"] {
        let b = fleet.wait_rolled_out(name, &commit, 120).await;
        assert_eq!(
            b.generation,
            before[name].generation + 1,
            "{name}: the restarted hub kept the signed generation"
        );
    }
    for (c, counts) in fleet.clusters.iter().zip(counts_while_dead) {
        let hub = event_counts(&fleet.events(&c.name).await.unwrap());
        for (key, n) in counts {
            assert!(
                hub.get(&key).copied().unwrap_or(0) >= n,
                "{}: {key:?} recorded while the hub was dead",
                c.name
            );
        }
    }
    assert_hub_holds_exactly_what_agents_sent(&fleet).await;
    for c in &fleet.clusters {
        assert!(fleet.hub_cluster(&c.name).await.unwrap().cluster.unwrap().connected);
    }
    fleet.shutdown().await;
}

/// Scenario 6. An agent is cut off from the hub (a TCP proxy drops its
/// connection and refuses new ones). Its cluster keeps everything applied and
/// the agent corrects drift made with the real kubectl; a commit made
/// meanwhile reaches the other clusters only. When the proxy forwards again,
/// the hub's view catches up: connected, the drift corrections as events and
/// in the status, the new revision Ready there too, every event delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_cut_off_agent_keeps_state_corrects_drift_and_catches_up() {
    let fleet = Fleet::start(FleetOptions { proxies: true, ..Default::default() }).await.unwrap();
    let before: BTreeMap<String, pb::BundleView> =
        fleet.wait_converged(120).await.into_iter().map(|b| (b.name.clone(), b)).collect();
    let eu = fleet.cluster("prod-eu");
    let objects_before: Vec<Vec<String>> = BUNDLES.iter().map(|b| eu.bundle_objects(b)).collect();

    eu.proxy.as_ref().unwrap().cut();
    eventually(30, "the hub sees prod-eu disconnected", || async {
        let c = fleet.hub_cluster("prod-eu").await.ok()?.cluster?;
        (!c.connected && !eu.agent_connected()).then_some(())
    })
    .await;

    // Drift by hand, with the real kubectl.
    eu.kubectl_ok(&["-n", "web", "scale", "deployment", "web", "--replicas=1"]).await.unwrap();
    eu.kubectl_ok(&["-n", "monitoring", "delete", "configmap", "scrape-config"]).await.unwrap();
    eventually(60, "prod-eu's agent corrected the drift on its own", || async {
        let d = eu.object("apps", "deployments", "web", "web")?;
        (d["spec"]["replicas"] == 3 && eu.object("", "configmaps", "monitoring", "scrape-config").is_some())
            .then_some(())
    })
    .await;

    // A commit while it is away reaches the others only.
    fleet.repo.replace(DEPLOYMENT, IMAGE, "ghcr.io/stefanprodan/podinfo:6.7.3").unwrap();
    fleet.repo.commit("web 6.7.3").unwrap();
    let commit = fleet.push().await.unwrap();
    let gen_ = before["web-prod"].generation + 1;
    let b = fleet
        .wait_bundle("web-prod", 120, "web-prod Ready at the new generation on prod-us", |b| {
            b.generation == gen_
                && b.clusters.iter().any(|c| c.cluster == "prod-us" && cell_ready_at(c, gen_))
        })
        .await;
    let eu_cell = b.clusters.iter().find(|c| c.cluster == "prod-eu").unwrap();
    assert_eq!(eu_cell.status.as_ref().unwrap().generation, gen_ - 1, "prod-eu cannot have heard of it");
    assert_eq!(eu_cell.phase, pb::Phase::Reconciling as i32, "an older generation shows as Reconciling");
    fleet.wait_rolled_out("web-staging", &commit, 120).await;
    // prod-eu keeps its state: the same objects, the previous image.
    let objects_now: Vec<Vec<String>> = BUNDLES.iter().map(|b| eu.bundle_objects(b)).collect();
    assert_eq!(objects_now, objects_before);
    assert_eq!(eu.deployment_image("web", "web").as_deref(), Some(IMAGE));
    // The hub has not heard about the drift yet.
    let evs = fleet.events("prod-eu").await.unwrap();
    assert!(!evs.iter().filter_map(|e| e.event.as_ref()).any(|e| e.reason == "DriftCorrected"), "{evs:?}");

    eu.proxy.as_ref().unwrap().restore();
    let b = fleet.wait_rolled_out("web-prod", &commit, 120).await;
    assert!(b.clusters.iter().all(|c| cell_ready_at(c, gen_)));
    assert_eq!(eu.deployment_image("web", "web").as_deref(), Some("ghcr.io/stefanprodan/podinfo:6.7.3"));
    let drift: Vec<pb::Event> = eventually(30, "prod-eu's drift corrections at the hub", || async {
        let evs: Vec<pb::Event> = fleet
            .events("prod-eu")
            .await
            .ok()?
            .into_iter()
            .filter_map(|e| e.event)
            .filter(|e| e.reason == "DriftCorrected")
            .collect();
        (evs.iter().any(|e| e.object == "Deployment/web/web")
            && evs.iter().any(|e| e.object == "ConfigMap/monitoring/scrape-config"))
        .then_some(evs)
    })
    .await;
    let deploy = drift.iter().find(|e| e.object == "Deployment/web/web").unwrap();
    assert!(deploy.message.contains(".spec.replicas"), "{}", deploy.message);
    assert_eq!(deploy.bundle, "web-prod");
    // monitoring kept its generation: its status counts the correction.
    let m = fleet.bundle("monitoring").await.unwrap();
    let cell = m.clusters.iter().find(|c| c.cluster == "prod-eu").unwrap();
    assert!(cell_ready_at(cell, before["monitoring"].generation));
    assert!(cell.status.as_ref().unwrap().objects.unwrap().drift_corrected >= 1, "{cell:?}");
    assert!(fleet.hub_cluster("prod-eu").await.unwrap().cluster.unwrap().connected);
    assert_hub_holds_exactly_what_agents_sent(&fleet).await;
    fleet.shutdown().await;
}

/// Scenario 7. Push to fully Ready, three times: a commit pushed to the git
/// server, then the signed webhook (twice) or `convoy reconcile source`
/// (once), with polling out of the way (1 h interval) and no simulated
/// rollout delay: every targeted cluster reports the new revision Ready.
/// (The latency is measured by `convoy-bench --only e2e`, not here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_push_then_webhook_or_reconcile_reaches_ready_everywhere() {
    let fleet = Fleet::start(FleetOptions {
        readiness_delay: Duration::ZERO,
        poll_interval: "1h".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    fleet.wait_converged(120).await;
    let mut image = IMAGE.to_string();
    for (i, via_cli) in [false, false, true].into_iter().enumerate() {
        let next = format!("ghcr.io/stefanprodan/podinfo:6.8.{i}");
        fleet.repo.replace(DEPLOYMENT, &image, &next).unwrap();
        image = next;
        let commit = fleet.repo.commit(&format!("web {image}")).unwrap();
        fleet.repo.push().unwrap();
        if via_cli {
            let out = fleet.convoy_ok(&convoy_bin(), &["reconcile", "source", "fleet"]).await.unwrap();
            let _ = out;
        } else {
            fleet.webhook().await.unwrap();
        }
        for name in ["web-staging", "web-prod"] {
            let b = fleet.wait_rolled_out(name, &commit, 60).await;
            assert!(b.clusters.iter().all(|c| c.status.as_ref().unwrap().revision == b.revision));
        }
        for c in &fleet.clusters {
            assert_eq!(c.deployment_image("web", "web").as_deref(), Some(image.as_str()), "{}", c.name);
        }
    }
    fleet.shutdown().await;
}
