//! Per-cluster Helm renders from a stored render input (what the hub does for
//! each cluster's variant), with Helm's real engine through the worker: two
//! Kubernetes versions and API version sets give the outputs our fixture
//! chart asks for (`semverCompare` on `.Capabilities.KubeVersion`,
//! `.Capabilities.APIVersions.Has`), per-cluster values are merged last, and
//! each output equals helm-python-sdk's render of the same inputs (its
//! native `helm_render` with the same Capabilities). The render key changes
//! with each input that changes the output and with nothing else.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use convoy_artifact::{FsTree, Limits};
use convoy_core::config::HelmSpec;
use convoy_helm::output::parse_objects;
use convoy_sources::helmrender::{
    Capabilities, HelmInput, HelmSettings, WorkerCommand, prepare_helm, render_helm, render_input,
};
use serde_json::{Value, json};

const CHART: &str = "apiVersion: v2\nname: caps\nversion: 0.2.0\n";
const VALUES: &str = "replicas: 1\nimage: web:1\n";
const CM: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-caps
data:
  kube: {{ .Capabilities.KubeVersion.Version | quote }}
  {{- if semverCompare ">=1.30.0-0" .Capabilities.KubeVersion.Version }}
  sidecars: native
  {{- else }}
  sidecars: legacy
  {{- end }}
  replicas: {{ .Values.replicas | quote }}
  image: {{ .Values.image | quote }}
"#;
const MONITOR: &str = r#"{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" }}
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ .Release.Name }}
spec:
  selector: {matchLabels: {app: web}}
  endpoints: [{port: http}]
{{- end }}
"#;

fn write_chart(root: &Path) {
    for (p, body) in [
        ("chart/Chart.yaml", CHART),
        ("chart/values.yaml", VALUES),
        ("chart/templates/cm.yaml", CM),
        ("chart/templates/monitor.yaml", MONITOR),
        ("values/prod.yaml", "image: web:2\n"),
    ] {
        let f = root.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, body).unwrap();
    }
}

fn settings() -> HelmSettings {
    HelmSettings {
        worker: Some(WorkerCommand {
            program: env!("CARGO_BIN_EXE_convoy-sources-helm-worker").into(),
            args: vec![],
        }),
        ..Default::default()
    }
}

fn spec() -> HelmSpec {
    HelmSpec {
        path: Some("chart".into()),
        values_files: vec!["values/prod.yaml".into()],
        release_name: Some("web".into()),
        namespace: Some("apps".into()),
        ..Default::default()
    }
}

fn caps(v: &str, apis: &[&str]) -> Capabilities {
    Capabilities { kube_version: v.into(), api_versions: apis.iter().map(|s| s.to_string()).collect() }
}

/// The release's objects in an artifact, by `kind/name`.
fn objects(artifact: &[u8]) -> BTreeMap<String, Value> {
    let files = convoy_artifact::unpack(artifact, &Limits::default()).unwrap();
    let mut out = BTreeMap::new();
    for f in files.iter().filter(|f| f.path.starts_with("helm/templates/")) {
        for o in parse_objects(&f.path, std::str::from_utf8(&f.content).unwrap()).unwrap() {
            out.insert(
                format!("{}/{}", o["kind"].as_str().unwrap(), o["metadata"]["name"].as_str().unwrap()),
                o,
            );
        }
    }
    out
}

/// Kills a process group when dropped (a python3 that outlives a panicking test).
struct Kill(i32);
impl Drop for Kill {
    fn drop(&mut self) {
        unsafe extern "C" {
            fn kill(pid: i32, sig: i32) -> i32;
        }
        // SAFETY: plain kill(2) of our own child's process group.
        unsafe { kill(-self.0, 9) };
    }
}

/// helm-python-sdk's render of `chart` with `values` and each Capabilities
/// (its native `helm_render`, which takes `kube_version`/`api_versions`
/// options; `Chart.render` does not expose them), objects by `kind/name`.
fn python_render(chart: &Path, values: &Value, cases: &[Capabilities]) -> Vec<BTreeMap<String, Value>> {
    use std::os::unix::process::CommandExt;
    let script = r#"
import json, sys
from helm_python import Chart
from helm_python import _native
req = json.load(sys.stdin)
out = []
with Chart.load(req["chart"]) as c:
    for caps in req["cases"]:
        opts = {"name": "web", "namespace": "apps"}
        if caps["kubeVersion"]:
            opts["kube_version"] = caps["kubeVersion"]
        if caps["apiVersions"]:
            opts["api_versions"] = caps["apiVersions"]
        out.append(json.loads(_native.call_string("helm_render", c._raw(), json.dumps(req["values"]), json.dumps(opts))))
json.dump(out, sys.stdout)
"#;
    let req = json!({"chart": chart, "values": values, "cases": cases});
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("python3 starts");
    let _kill = Kill(child.id() as i32);
    child.stdin.take().unwrap().write_all(req.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python render failed: {}", String::from_utf8_lossy(&out.stderr));
    let rendered: Vec<BTreeMap<String, String>> = serde_json::from_slice(&out.stdout).unwrap();
    rendered
        .into_iter()
        .map(|m| {
            let mut objs = BTreeMap::new();
            for (t, text) in m.iter().filter(|(t, _)| !t.ends_with("NOTES.txt")) {
                for o in parse_objects(t, text).unwrap() {
                    objs.insert(
                        format!(
                            "{}/{}",
                            o["kind"].as_str().unwrap(),
                            o["metadata"]["name"].as_str().unwrap()
                        ),
                        o,
                    );
                }
            }
            objs
        })
        .collect()
}

#[test]
fn two_kubernetes_versions_and_cluster_values_render_what_the_chart_asks_for_like_helm() {
    let dir = tempfile::tempdir().unwrap();
    write_chart(dir.path());
    let tree = FsTree::new(dir.path());
    let renderer = settings().renderer().expect("libhelm_c is installed (scripts/setup.sh)");
    let default = caps("v1.28.0", &[]);
    // The base build: stores its input; the chart digest is the directory's.
    let base = render_helm(&tree, "web", &spec(), None, "rev", &renderer, &default, &[], &Limits::default())
        .unwrap();
    let stored = base.input.clone().expect("the build carries its render input");
    assert_eq!(base.helm.input.as_deref(), Some(convoy_artifact::digest_of(&stored).as_str()));
    let input = HelmInput::from_bytes(&stored).unwrap();
    assert_eq!(input.chart_digest().unwrap(), base.helm.chart_digest, "same chart digest without the tree");
    assert_eq!(input.default_capabilities, default);
    // The user values (the chart's defaults are Helm's to merge under them).
    assert_eq!(input.values, json!({"image": "web:2"}));

    // Per cluster: an old cluster, and a new one serving the monitoring API
    // with its own values (merged last).
    let old = caps("v1.29.4", &[]);
    let new = caps("v1.31.0", &["monitoring.coreos.com/v1"]);
    let cluster_values = [json!({"replicas": 3})];
    let r_old = render_input(&input, &renderer, &old, &[], &Limits::default()).unwrap();
    let r_new = render_input(&input, &renderer, &new, &cluster_values, &Limits::default()).unwrap();
    let (o_old, o_new) = (objects(&r_old.artifact.bytes), objects(&r_new.artifact.bytes));
    let cm = |o: &BTreeMap<String, Value>| o["ConfigMap/web-caps"]["data"].clone();
    assert_eq!(
        cm(&o_old),
        json!({"kube": "v1.29.4", "sidecars": "legacy", "replicas": "1", "image": "web:2"})
    );
    assert_eq!(
        cm(&o_new),
        json!({"kube": "v1.31.0", "sidecars": "native", "replicas": "3", "image": "web:2"})
    );
    assert!(!o_old.contains_key("ServiceMonitor/web"), "the API is not served there");
    assert_eq!(o_new["ServiceMonitor/web"]["apiVersion"], "monitoring.coreos.com/v1");
    // The statement's values digest is of what was rendered.
    assert_eq!(r_old.helm.values_digest, convoy_helm::values::values_digest(&json!({"image": "web:2"})));
    assert_eq!(
        r_new.helm.values_digest,
        convoy_helm::values::values_digest(&json!({"image": "web:2", "replicas": 3}))
    );
    assert_ne!(r_old.artifact.digest, r_new.artifact.digest);

    // helm-python-sdk renders the same inputs to the same objects.
    let chart = dir.path().join("chart");
    let theirs = python_render(&chart, &json!({"image": "web:2"}), std::slice::from_ref(&old));
    assert_eq!(o_old, theirs[0]);
    let theirs = python_render(&chart, &json!({"image": "web:2", "replicas": 3}), std::slice::from_ref(&new));
    assert_eq!(o_new, theirs[0]);
}

#[test]
fn the_render_key_follows_every_input_that_changes_the_output() {
    let dir = tempfile::tempdir().unwrap();
    write_chart(dir.path());
    let input =
        prepare_helm(&FsTree::new(dir.path()), "web", &spec(), None, "rev", &caps("", &[]), 1 << 20).unwrap();
    let k = |i: &HelmInput, c: &Capabilities, v: &[Value]| i.render_key(c, v).unwrap();
    let c = caps("v1.30.0", &["a/v1", "b/v1"]);
    let base = k(&input, &c, &[]);
    // API order, and values that merge to the same thing, do not matter.
    assert_eq!(base, k(&input, &caps("v1.30.0", &["b/v1", "a/v1"]), &[]));
    assert_eq!(base, k(&input, &c, &[json!({"image": "web:2"})]));
    // Each of these does.
    assert_ne!(base, k(&input, &caps("v1.31.0", &["a/v1", "b/v1"]), &[]));
    assert_ne!(base, k(&input, &caps("v1.30.0", &["a/v1"]), &[]));
    assert_ne!(base, k(&input, &c, &[json!({"replicas": 2})]));
    for change in [
        |i: &mut HelmInput| i.release = "other".into(),
        |i: &mut HelmInput| i.namespace = "other".into(),
        |i: &mut HelmInput| i.max_history = 3,
        |i: &mut HelmInput| i.include_crds = false,
        |i: &mut HelmInput| i.crds_create_only = true,
        |i: &mut HelmInput| i.files[0].1 = "YQ==".into(),
    ] {
        let mut other = input.clone();
        change(&mut other);
        assert_ne!(base, k(&other, &c, &[]), "{other:?}");
    }
    // The stored form round-trips and is canonical.
    assert_eq!(HelmInput::from_bytes(&input.to_bytes()).unwrap(), input);
    assert_eq!(input.to_bytes(), input.clone().to_bytes());
}

/// A chart from a repository or registry (a packaged `.tgz`, here packaged by
/// helm-python-sdk) renders per cluster from its stored input as a chart
/// directory does: the input holds the archive and its chart digest is the
/// archive's (Helm's, the one the index or manifest names); each cluster's
/// Capabilities and values give the outputs helm-python-sdk renders from the
/// same archive.
#[test]
fn a_chart_archive_renders_per_cluster_from_its_stored_input_like_helm() {
    let dir = tempfile::tempdir().unwrap();
    write_chart(dir.path());
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys\nfrom helm_python import package\npackage(sys.argv[1], destination=sys.argv[2])\n",
        ])
        .arg(dir.path().join("chart"))
        .arg(dir.path())
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tgz = dir.path().join("caps-0.2.0.tgz");
    let archive = std::fs::read(&tgz).unwrap();
    let spec = HelmSpec {
        repository: Some("charts".into()),
        chart: Some("caps".into()),
        version: Some("^0.2".into()),
        values: Some(json!({"image": "web:2"})),
        release_name: Some("web".into()),
        namespace: Some("apps".into()),
        ..Default::default()
    };
    let renderer = settings().renderer().expect("libhelm_c is installed (scripts/setup.sh)");
    let default = caps("v1.28.0", &[]);
    let input = convoy_sources::chartsrc::prepare_chart_archive(
        "web",
        &spec,
        None,
        archive.clone(),
        "caps-0.2.0.tgz",
        &default,
    )
    .unwrap();
    assert!(input.archive);
    assert_eq!(input.chart_digest().unwrap(), convoy_helm::values::sha256(&archive), "Helm's archive digest");
    // The base build carries its stored input, which reads back the same.
    let base =
        convoy_sources::chartsrc::render_chart_archive(&renderer, &input, &default, &[], &Limits::default())
            .unwrap();
    let stored = base.input.clone().expect("the build carries its render input");
    assert_eq!(base.helm.input.as_deref(), Some(convoy_artifact::digest_of(&stored).as_str()));
    let input = HelmInput::from_bytes(&stored).unwrap();
    assert_eq!(base.helm.chart_digest, convoy_helm::values::sha256(&archive));

    let old = caps("v1.29.4", &[]);
    let new = caps("v1.31.0", &["monitoring.coreos.com/v1"]);
    let r_old = render_input(&input, &renderer, &old, &[], &Limits::default()).unwrap();
    let r_new = render_input(&input, &renderer, &new, &[json!({"replicas": 3})], &Limits::default()).unwrap();
    let (o_old, o_new) = (objects(&r_old.artifact.bytes), objects(&r_new.artifact.bytes));
    assert_eq!(o_old["ConfigMap/web-caps"]["data"]["sidecars"], "legacy");
    assert_eq!(o_new["ConfigMap/web-caps"]["data"]["sidecars"], "native");
    assert_eq!(o_new["ConfigMap/web-caps"]["data"]["replicas"], "3");
    assert!(!o_old.contains_key("ServiceMonitor/web"));
    assert!(o_new.contains_key("ServiceMonitor/web"));
    assert_eq!(r_new.helm.chart_digest, base.helm.chart_digest, "one chart digest for every cluster");
    assert_eq!(o_old, python_render(&tgz, &json!({"image": "web:2"}), std::slice::from_ref(&old))[0]);
    let theirs = python_render(&tgz, &json!({"image": "web:2", "replicas": 3}), std::slice::from_ref(&new));
    assert_eq!(o_new, theirs[0]);

    // A chart of another name is refused, naming the archive.
    let wrong = HelmSpec { chart: Some("other".into()), ..spec };
    let input = convoy_sources::chartsrc::prepare_chart_archive(
        "web",
        &wrong,
        None,
        archive,
        "caps-0.2.0.tgz",
        &default,
    )
    .unwrap();
    let e = render_input(&input, &renderer, &default, &[], &Limits::default()).unwrap_err().to_string();
    assert!(e.contains("helm.chart \"other\"") && e.contains("caps-0.2.0.tgz"), "{e}");
}
