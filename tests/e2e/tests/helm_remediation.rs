//! `helm.rollbackOnFailure` end to end (docs/helm.md, "Remediation"): the
//! real `convoy hub` process renders a chart from a GitSource for two
//! kube-sim clusters; an upgrade to an image that cannot be pulled
//! (kube-sim's `does-not-exist` tag: the Pods stay in ImagePullBackOff) is
//! not Ready within the bundle's timeout, the release is recorded `failed`,
//! and the hub gives both clusters the previous release back as a new signed
//! generation. Helm itself (helm-python-sdk) then sees the previous values
//! deployed as a new revision, after the failed one.

use std::path::{Path, PathBuf};

use convoy_e2e::fleet::condition;
use convoy_e2e::{ClusterSpec, Fleet, FleetOptions, HubMode};
use convoy_proto::v1 as pb;
use serde_json::{Value, json};

fn convoy_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_convoy-e2e-convoy"))
}

const GOOD: &str = "ghcr.io/stefanprodan/podinfo:6.7.0";
const BAD: &str = "ghcr.io/stefanprodan/podinfo:does-not-exist";

const CHART: &str = "apiVersion: v2\nname: greeter\nversion: 0.3.0\n";
const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-settings\ndata:\n  image: {{ .Values.image | quote }}\n";
const DEPLOY: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{ .Release.Name }}\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {app: greeter}\n  template:\n    metadata:\n      labels: {app: greeter}\n    spec:\n      containers:\n      - name: app\n        image: {{ .Values.image }}\n";

fn files() -> Vec<(String, Vec<u8>)> {
    [
        ("charts/greeter/Chart.yaml", CHART.to_string()),
        ("charts/greeter/values.yaml", format!("image: {GOOD}\n")),
        ("charts/greeter/templates/settings.yaml", CM.to_string()),
        ("charts/greeter/templates/deployment.yaml", DEPLOY.to_string()),
        ("envs/all.yaml", format!("image: {GOOD}\n")),
    ]
    .into_iter()
    .map(|(p, t)| (p.to_string(), t.into_bytes()))
    .collect()
}

const BUNDLE: &str = "---\napiVersion: convoy.dev/v1\nkind: Bundle\nmetadata:\n  name: web\nspec:\n  source: fleet\n  timeout: 6s\n  targets:\n  - clusterSelector: {}\n  helm:\n    path: charts/greeter\n    releaseName: web\n    namespace: default\n    valuesFiles: [envs/all.yaml]\n    rollbackOnFailure: true\n";

/// Helm's own view (helm-python-sdk) of release `web` in `default`.
fn helm_view(kubeconfig: &Path) -> Value {
    convoy_e2e::helmview::helm_release(kubeconfig, "default", "web")
}

/// (revision, status) of every record, oldest first.
fn history(h: &Value) -> Vec<(u64, String)> {
    let mut v: Vec<(u64, String)> = h["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["revision"].as_u64().unwrap_or(0), x["status"].as_str().unwrap_or("").to_string()))
        .collect();
    v.sort();
    v
}

fn image(fleet: &Fleet, cluster: &str) -> String {
    let d =
        fleet.cluster(cluster).sim.object("apps", "deployments", "default", "web").expect("the Deployment");
    d["spec"]["template"]["spec"]["containers"][0]["image"].as_str().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_an_upgrade_to_an_unpullable_image_is_rolled_back_to_the_previous_release() {
    let opts = FleetOptions {
        hub: HubMode::Process(convoy_bin()),
        clusters: vec![ClusterSpec::new("one", "env=prod"), ClusterSpec::new("two", "env=prod")],
        files: files(),
        bundles_yaml: BUNDLE.to_string(),
        ..Default::default()
    };
    let fleet = Fleet::start(opts).await.unwrap();
    let first = fleet.wait_converged(120).await.remove(0);
    let g1 = first.generation;
    let digests: Vec<(String, String)> = first
        .clusters
        .iter()
        .map(|c| (c.cluster.clone(), c.status.as_ref().map(|s| s.digest.clone()).unwrap_or_default()))
        .collect();
    for c in ["one", "two"] {
        assert_eq!(image(&fleet, c), GOOD);
        assert_eq!(history(&helm_view(&fleet.cluster(c).kubeconfig)), [(1, "deployed".to_string())]);
    }

    // The upgrade: an image kube-sim cannot pull.
    fleet.repo.write("envs/all.yaml", &format!("image: {BAD}\n")).unwrap();
    fleet.repo.commit("web: an image that does not exist").unwrap();
    fleet.push().await.unwrap();

    // Every cluster ends Ready on a generation above the failed one, with the
    // artifact it had before.
    let v = fleet
        .wait_bundle("web", 120, "the failed upgrade rolled back on both clusters", |b| {
            b.generation > g1
                && condition(b, "RolledBack").is_some()
                && b.clusters.iter().all(|c| {
                    c.desired_generation > b.generation
                        && c.status.as_ref().is_some_and(|s| {
                            s.generation == c.desired_generation && s.phase == pb::Phase::Ready as i32
                        })
                })
        })
        .await;
    let g2 = v.generation;
    for c in &v.clusters {
        let before = &digests.iter().find(|(n, _)| n == &c.cluster).unwrap().1;
        assert_eq!(&c.status.as_ref().unwrap().digest, before, "{}: the last good artifact", c.cluster);
    }
    // The condition and the hub's event name the failed and the restored generation.
    let cond = condition(&v, "RolledBack").unwrap();
    assert_eq!(cond.reason, "HelmRolledBack");
    assert!(cond.message.contains(&format!("generation {g2} failed, generation {g1} restored")), "{cond:?}");
    let events = fleet.events("hub").await.unwrap();
    let ev = events
        .iter()
        .filter_map(|e| e.event.as_ref())
        .find(|e| e.reason == "HelmRolledBack")
        .expect("a HelmRolledBack event");
    assert!(ev.message.contains(&format!("generation {g2} failed")), "{ev:?}");

    for c in ["one", "two"] {
        assert_eq!(image(&fleet, c), GOOD, "{c}: the previous image is back");
        // Helm sees the failed upgrade, then the previous values deployed as a
        // new revision (as `helm rollback` would write it).
        let h = helm_view(&fleet.cluster(c).kubeconfig);
        let hist = history(&h);
        assert_eq!(hist.first(), Some(&(1, "superseded".to_string())), "{c}: {h}");
        assert_eq!(hist.last().map(|x| x.1.as_str()), Some("deployed"), "{c}: {h}");
        assert!(hist.iter().any(|(_, s)| s == "failed"), "{c}: the failed upgrade is recorded: {h}");
        assert_eq!(hist.iter().filter(|(_, s)| s == "deployed").count(), 1, "{c}: {h}");
        assert!(!hist.iter().any(|(_, s)| s.starts_with("pending")), "{c}: {h}");
        assert_eq!(h["values"], json!({"image": GOOD}), "{c}: {h}");
        assert_eq!(h["list"][0]["status"], "deployed", "{c}: {h}");
    }

    // A fix is deployed normally (the rollback is not sticky).
    fleet.repo.write("envs/all.yaml", "image: ghcr.io/stefanprodan/podinfo:6.7.1\n").unwrap();
    fleet.repo.commit("web: a good image").unwrap();
    let commit = fleet.push().await.unwrap();
    fleet.wait_rolled_out("web", &commit, 120).await;
    assert_eq!(image(&fleet, "one"), "ghcr.io/stefanprodan/podinfo:6.7.1");

    fleet.shutdown().await;
}
