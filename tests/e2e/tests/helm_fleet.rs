//! One Helm bundle, three kube-sim clusters, each rendered for itself by the
//! real `convoy hub` process: with the Kubernetes version and API versions
//! its agent reported (kube-sim says `v1.32.0-kube-sim`; the hub's default
//! would be Helm's own) and with its own `targets[].helmValues`, merged last
//! in entry order. Checked in the cluster (the release's objects) and with
//! Helm itself (helm-python-sdk's `get_values()` shows the values that
//! cluster's render used).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use convoy_e2e::{Fleet, FleetOptions, HubMode};
use convoy_testsupport::ProcessGuard;
use serde_json::{Value, json};

fn convoy_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_convoy-e2e-convoy"))
}

const CHART: &str = "apiVersion: v2\nname: caps\nversion: 0.1.0\n";
const VALUES: &str = "greeting: default\nreplicas: 1\n";
const CM: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-caps
data:
  kube: {{ .Capabilities.KubeVersion.Version | quote }}
  sidecars: {{ if semverCompare ">=1.30.0-0" .Capabilities.KubeVersion.Version }}"native"{{ else }}"legacy"{{ end }}
  hpa: {{ if .Capabilities.APIVersions.Has "autoscaling/v2" }}"v2"{{ else }}"none"{{ end }}
  greeting: {{ .Values.greeting | quote }}
  replicas: {{ .Values.replicas | quote }}
"#;

const BUNDLE: &str = r#"---
apiVersion: convoy.dev/v1
kind: Bundle
metadata:
  name: web
spec:
  source: fleet
  timeout: 60s
  helm:
    path: charts/caps
    releaseName: web
    namespace: default
    kubeVersion: "1.27"
    values: {greeting: hello}
  targets:
  - clusterSelector: {}
  - clusterSelector: {matchLabels: {env: prod}}
    helmValues: {replicas: 2}
  - clusterName: prod-us
    helmValues: {greeting: howdy}
"#;

/// Helm's view (helm-python-sdk) of release `web`'s values in `default`.
fn helm_values(kubeconfig: &Path) -> Value {
    let script = r#"
import json, sys
from helm_python import Config
with Config(kubeconfig_path=sys.argv[1], namespace="default") as cfg:
    json.dump(cfg.get_values("web"), sys.stdout, default=str)
"#;
    let out = std::env::temp_dir().join(format!("convoy-helm-values-{}.json", rand::random::<u64>()));
    let file = std::fs::File::create(&out).unwrap();
    let mut child = ProcessGuard::spawn(
        "python3 helm values",
        Command::new("python3")
            .args(["-c", script])
            .arg(kubeconfig)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(Stdio::inherit()),
    )
    .expect("python3 starts (scripts/setup.sh installs helm-python-sdk)");
    let status = child.child_mut().wait().unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    assert!(status.success(), "helm-python-sdk failed: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_each_cluster_renders_the_chart_with_its_own_capabilities_and_values() {
    let files = [
        ("charts/caps/Chart.yaml", CHART),
        ("charts/caps/values.yaml", VALUES),
        ("charts/caps/templates/caps.yaml", CM),
    ]
    .into_iter()
    .map(|(p, t)| (p.to_string(), t.as_bytes().to_vec()))
    .collect();
    let opts = FleetOptions {
        hub: HubMode::Process(convoy_bin()),
        files,
        bundles_yaml: BUNDLE.to_string(),
        ..Default::default()
    };
    let fleet = Fleet::start(opts).await.unwrap();
    let views = fleet.wait_converged(120).await;
    assert_eq!(views.len(), 1);
    let expect = [
        ("staging", json!({"greeting": "hello"}), "1"),
        ("prod-eu", json!({"greeting": "hello", "replicas": 2}), "2"),
        ("prod-us", json!({"greeting": "howdy", "replicas": 2}), "2"),
    ];
    for (cluster, values, replicas) in &expect {
        let c = fleet.cluster(cluster);
        let cm = c.sim.object("", "configmaps", "default", "web-caps").expect("the release's ConfigMap");
        // The agent's reported version, not the bundle's kubeVersion 1.27.
        assert_eq!(cm["data"]["kube"], "v1.32.0-kube-sim", "{cluster}: {cm}");
        assert_eq!(cm["data"]["sidecars"], "native", "{cluster}");
        assert_eq!(cm["data"]["hpa"], "v2", "{cluster}: kube-sim serves autoscaling/v2");
        assert_eq!(cm["data"]["greeting"], values["greeting"], "{cluster}");
        assert_eq!(cm["data"]["replicas"], *replicas, "{cluster}");
        assert_eq!(
            helm_values(&c.kubeconfig),
            *values,
            "{cluster}: helm get values shows this cluster's values"
        );
    }
    fleet.shutdown().await;
}
