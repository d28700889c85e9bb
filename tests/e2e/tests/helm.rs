//! Helm bundles end to end: a GitSource holding a chart directory (a small
//! chart written here, with a pre-install/pre-upgrade hook Job and values),
//! rendered by the real `convoy hub` process through its `convoy
//! helm-worker`, deployed by the agents of three kube-sim clusters (two
//! bundles of the same chart with different values: staging and prod), and
//! checked with Helm itself: helm-python-sdk's `Config(kubeconfig_path=...)`
//! `list()`, `get_values()` and `history()` show the release deployed with
//! our values, and two revisions after an upgrade commit.

use std::path::{Path, PathBuf};

use convoy_e2e::fleet::{all_ready, condition};
use convoy_e2e::{Fleet, FleetOptions, HubMode, commit_of};
use serde_json::{Value, json};

fn convoy_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_convoy-e2e-convoy"))
}

const CHART: &str = "apiVersion: v2\nname: greeter\nversion: 0.3.0\nappVersion: \"1.0\"\n";
const VALUES: &str = "greeting: default\ncolor: default\nreplicas: 1\n";
const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-settings\ndata:\n  greeting: {{ .Values.greeting | quote }}\n  color: {{ .Values.color | quote }}\n";
const DEPLOY: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{ .Release.Name }}\nspec:\n  replicas: {{ .Values.replicas }}\n  selector:\n    matchLabels: {app: greeter}\n  template:\n    metadata:\n      labels: {app: greeter}\n    spec:\n      containers:\n      - name: app\n        image: ghcr.io/stefanprodan/podinfo:6.7.0\n";
const HOOK: &str = "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {{ .Release.Name }}-migrate\n  annotations:\n    helm.sh/hook: pre-install,pre-upgrade\n    helm.sh/hook-weight: \"-1\"\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: migrate\n        image: busybox\n        args: [\"echo\", \"{{ .Values.greeting }}\"]\n";

fn files() -> Vec<(String, Vec<u8>)> {
    [
        ("charts/greeter/Chart.yaml", CHART),
        ("charts/greeter/values.yaml", VALUES),
        ("charts/greeter/templates/settings.yaml", CM),
        ("charts/greeter/templates/deployment.yaml", DEPLOY),
        ("charts/greeter/templates/migrate.yaml", HOOK),
        ("envs/staging.yaml", "greeting: hello-staging\n"),
        ("envs/prod.yaml", "greeting: hello-prod\nreplicas: 2\n"),
    ]
    .into_iter()
    .map(|(p, t)| (p.to_string(), t.as_bytes().to_vec()))
    .collect()
}

fn bundle(name: &str, env: &str, color: &str) -> String {
    format!(
        "---\napiVersion: convoy.dev/v1\nkind: Bundle\nmetadata:\n  name: {name}\nspec:\n  source: fleet\n  timeout: 60s\n  targets:\n  - clusterSelector: {{matchLabels: {{env: {env}}}}}\n  helm:\n    path: charts/greeter\n    releaseName: web\n    namespace: default\n    valuesFiles: [envs/{env}.yaml]\n    values:\n      color: {color}\n"
    )
}

/// Ask Helm (helm-python-sdk) about release `web` in `default`.
fn helm_view(kubeconfig: &Path) -> Value {
    convoy_e2e::helmview::helm_release(kubeconfig, "default", "web")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_helm_bundles_from_a_gitsource_chart_reach_three_clusters_as_helm_releases() {
    let opts = FleetOptions {
        hub: HubMode::Process(convoy_bin()),
        files: files(),
        bundles_yaml: format!(
            "{}{}",
            bundle("web-staging", "staging", "blue"),
            bundle("web-prod", "prod", "green")
        ),
        ..Default::default()
    };
    let fleet = Fleet::start(opts).await.unwrap();
    let views = fleet.wait_converged(120).await;
    assert_eq!(views.len(), 2);
    for v in &views {
        assert_eq!(condition(v, "Ready").map(|c| c.status.as_str()), Some("True"), "{}", v.name);
        assert!(condition(v, "Warning").is_none(), "no lookup in this chart");
        // The signed statement names the chart and the values it was rendered with.
        let h = v.helm.clone().expect("a Helm bundle's view names its chart");
        assert_eq!((h.chart.as_str(), h.version.as_str()), ("greeter", "0.3.0"), "{}", v.name);
        assert!(h.chart_digest.starts_with("sha256:"), "{h:?}");
        let values = if v.name == "web-staging" {
            json!({"greeting": "hello-staging", "color": "blue"})
        } else {
            json!({"greeting": "hello-prod", "replicas": 2, "color": "green"})
        };
        assert_eq!(h.values_digest, convoy_helm::values::values_digest(&values), "{}", v.name);
    }

    let expect = [
        ("staging", json!({"greeting": "hello-staging", "color": "blue"}), 1),
        ("prod-eu", json!({"greeting": "hello-prod", "replicas": 2, "color": "green"}), 2),
        ("prod-us", json!({"greeting": "hello-prod", "replicas": 2, "color": "green"}), 2),
    ];
    for (cluster, values, replicas) in &expect {
        let c = fleet.cluster(cluster);
        let cm = c.sim.object("", "configmaps", "default", "web-settings").expect("the release's ConfigMap");
        assert_eq!(cm["data"]["greeting"], values["greeting"], "{cluster}");
        assert_eq!(cm["data"]["color"], values["color"], "{cluster}");
        let d = c.sim.object("apps", "deployments", "default", "web").expect("the release's Deployment");
        assert_eq!(d["spec"]["replicas"], *replicas, "{cluster}");
        let job =
            c.sim.object("batch", "jobs", "default", "web-migrate").expect("the pre-install hook Job ran");
        assert!(
            job["status"]["conditions"].as_array().into_iter().flatten().any(|x| x["type"] == "Complete"),
            "{cluster}: {job}"
        );
        let h = helm_view(&c.kubeconfig);
        let list = h["list"].as_array().unwrap();
        assert_eq!(list.len(), 1, "{cluster}: {h}");
        assert_eq!(list[0]["name"], "web");
        assert_eq!(list[0]["status"], "deployed", "{cluster}: {h}");
        assert_eq!(h["values"], *values, "{cluster}: helm get values shows the values Convoy used");
        assert_eq!(h["history"].as_array().unwrap().len(), 1, "{cluster}: {h}");
    }

    // An upgrade commit: new staging values; the release gets revision 2.
    fleet.repo.write("envs/staging.yaml", "greeting: hi-again\n").unwrap();
    fleet.repo.commit("staging: new greeting").unwrap();
    let commit = fleet.push().await.unwrap();
    let v = fleet.wait_rolled_out("web-staging", &commit, 120).await;
    assert!(all_ready(&v));
    assert_eq!(commit_of(&v.revision), commit);
    let c = fleet.cluster("staging");
    assert_eq!(
        c.sim.object("", "configmaps", "default", "web-settings").unwrap()["data"]["greeting"],
        "hi-again"
    );
    let h = helm_view(&c.kubeconfig);
    assert_eq!(h["values"], json!({"greeting": "hi-again", "color": "blue"}));
    let mut history: Vec<(u64, String)> = h["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["revision"].as_u64().unwrap_or(0), x["status"].as_str().unwrap_or("").to_string()))
        .collect();
    history.sort();
    assert_eq!(history, [(1, "superseded".to_string()), (2, "deployed".to_string())], "{h}");
    // prod did not change (same artifact): still one revision.
    let h = helm_view(&fleet.cluster("prod-eu").kubeconfig);
    assert_eq!(h["history"].as_array().unwrap().len(), 1, "{h}");

    fleet.shutdown().await;
}
