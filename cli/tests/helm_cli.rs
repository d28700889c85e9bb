//! `convoy build --chart` and `convoy-agent apply` (the library entry point)
//! installing a real chart on kube-sim without a hub, checked by Helm itself:
//! helm-python-sdk's `Config(kubeconfig_path=...)` lists the release,
//! returns the values Convoy used, and shows two revisions after an upgrade.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

fn convoy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_convoy"))
        .args(args)
        .env("CONVOY_LOG", "error")
        .output()
        .expect("convoy runs")
}

fn corpus() -> PathBuf {
    std::env::var_os("CONVOY_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Kills a process group when dropped.
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

/// Ask Helm (helm-python-sdk) about release `name` in `namespace`.
fn helm_view(kubeconfig: &Path, namespace: &str, name: &str) -> Value {
    use std::os::unix::process::CommandExt;
    let script = r#"
import json, sys
from helm_python import Config
kubeconfig, ns, name = sys.argv[1:4]
with Config(kubeconfig_path=kubeconfig, namespace=ns) as cfg:
    out = {
        "list": cfg.list(),
        "values": cfg.get_values(name),
        "history": cfg.history(name),
    }
json.dump(out, sys.stdout, default=str)
"#;
    let mut child = Command::new("python3")
        .args(["-c", script, s(kubeconfig), namespace, name])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("python3 starts");
    let _kill = Kill(child.id() as i32);
    let mut out = Vec::new();
    std::io::Read::read_to_end(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "helm-python-sdk failed: {err}");
    serde_json::from_slice(&out).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

fn build(dir: &Path, key: &Path, out: &Path, values: &Path, generation: u64) {
    let chart = corpus().join("charts/podinfo");
    let o = convoy(&[
        "build",
        "--chart",
        s(&chart),
        "--values",
        s(values),
        "--release",
        "web",
        "--namespace",
        "apps",
        "--name",
        "podinfo",
        "--key",
        s(key),
        "--out",
        s(out),
        "--revision",
        &format!("6.14.1@{generation}"),
        "--generation",
        &generation.to_string(),
        "--kube-version",
        "1.31",
    ]);
    assert!(o.status.success(), "build failed: {}", text(&o.stderr));
    let _ = dir;
}

async fn apply(client: kube::Client, dir: &Path, key: &Path) -> convoy_agent::oneshot::OneShotReport {
    let mut opts = convoy_agent::OneShotOptions::new(dir, vec![key.to_path_buf()]);
    opts.wait = true;
    opts.timeout = std::time::Duration::from_secs(60);
    let cancel = tokio_util::sync::CancellationToken::new();
    convoy_agent::apply_dir(client, &opts, &cancel).await.expect("apply")
}

#[test]
fn build_chart_statement_names_chart_and_digests_and_verifies() {
    let d = tempfile::tempdir().unwrap();
    let keys = d.path().join("keys");
    assert!(convoy(&["keygen", "--out", s(&keys)]).status.success());
    let values = d.path().join("v.yaml");
    std::fs::write(&values, "replicaCount: 2\n").unwrap();
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    build(d.path(), &keys.join("signing.key"), &a, &values, 1);
    build(d.path(), &keys.join("signing.key"), &b, &values, 1);
    let read = |p: &Path| std::fs::read(p).unwrap();
    assert_eq!(
        read(&a.join("artifact.tar.gz")),
        read(&b.join("artifact.tar.gz")),
        "the same inputs give the same artifact"
    );
    let st: Value = serde_json::from_slice(&read(&a.join("statement.json"))).unwrap();
    assert_eq!(st["helm"]["chart"], "podinfo");
    assert_eq!(st["helm"]["version"], "6.14.1");
    assert!(st["helm"]["chartDigest"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(
        st["helm"]["valuesDigest"].as_str().unwrap(),
        convoy_helm::values::values_digest(&json!({"replicaCount": 2}))
    );
    let v = convoy(&["verify", "--key", s(&keys.join("signing.pub")), s(&a)]);
    assert!(v.status.success(), "{}", text(&v.stderr));
    // A remote reference that names no chart is refused before any request
    // (remote charts are pulled: cli/tests/build_remote_chart.rs).
    let o = convoy(&[
        "build",
        "--chart",
        "https://example.com",
        "--key",
        s(&keys.join("signing.key")),
        "--out",
        s(&d.path().join("c")),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("expected REPO_URL/NAME"), "{}", text(&o.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_apply_installs_a_chart_that_helm_itself_lists_and_upgrades() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let d = tempfile::tempdir().unwrap();
    let sim = kube_sim::KubeSim::start(kube_sim::SimConfig::default()).await.unwrap();
    let kubeconfig = d.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig).unwrap();
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
    let client = kube::Client::try_from(cfg).unwrap();
    let ns: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
    let body: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": "apps"}})).unwrap();
    ns.create(&Default::default(), &body).await.unwrap();

    let keys = d.path().join("keys");
    assert!(convoy(&["keygen", "--out", s(&keys)]).status.success());
    let (key, public) = (keys.join("signing.key"), keys.join("signing.pub"));
    let values = d.path().join("values.yaml");
    let mut f = std::fs::File::create(&values).unwrap();
    writeln!(f, "replicaCount: 2\nui:\n  message: from convoy").unwrap();
    let v1 = d.path().join("v1");
    build(d.path(), &key, &v1, &values, 1);
    let report = apply(client.clone(), &v1, &public).await;
    assert!(report.ok(), "{}", report.render());
    assert_eq!(report.helm_revision, Some(1));

    let view = tokio::task::spawn_blocking({
        let k = kubeconfig.clone();
        move || helm_view(&k, "apps", "web")
    })
    .await
    .unwrap();
    let list = view["list"].as_array().expect("a list");
    assert_eq!(list.len(), 1, "{view}");
    assert_eq!(list[0]["name"], "web");
    assert_eq!(list[0]["status"], "deployed", "{view}");
    assert_eq!(
        (&list[0]["chart_name"], &list[0]["chart_version"], &list[0]["revision"]),
        (&json!("podinfo"), &json!("6.14.1"), &json!(1)),
        "{view}"
    );
    assert_eq!(view["values"], json!({"replicaCount": 2, "ui": {"message": "from convoy"}}), "{view}");
    // The release's objects are there, in the release namespace.
    let deploy = sim.object("apps", "deployments", "apps", "web-podinfo").expect("the Deployment");
    assert_eq!(deploy["spec"]["replicas"], 2);

    // Upgrade: new values, generation 2.
    std::fs::write(&values, "replicaCount: 3\n").unwrap();
    let v2 = d.path().join("v2");
    build(d.path(), &key, &v2, &values, 2);
    let report = apply(client.clone(), &v2, &public).await;
    assert!(report.ok(), "{}", report.render());
    assert_eq!(report.helm_revision, Some(2));
    let view = tokio::task::spawn_blocking({
        let k = kubeconfig.clone();
        move || helm_view(&k, "apps", "web")
    })
    .await
    .unwrap();
    let history = view["history"].as_array().expect("history");
    assert_eq!(history.len(), 2, "{view}");
    let statuses: Vec<_> = history
        .iter()
        .map(|h| (h["revision"].as_u64().unwrap_or(0), h["status"].as_str().unwrap_or("").to_string()))
        .collect();
    assert_eq!(statuses, vec![(1, "superseded".to_string()), (2, "deployed".to_string())], "{view}");
    assert_eq!(view["values"], json!({"replicaCount": 3}), "{view}");
    assert_eq!(sim.object("apps", "deployments", "apps", "web-podinfo").unwrap()["spec"]["replicas"], 3);
    sim.shutdown().await;
}

async fn sim_client(d: &Path) -> (kube_sim::KubeSim, kube::Client, PathBuf) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = kube_sim::KubeSim::start(kube_sim::SimConfig::default()).await.unwrap();
    let kubeconfig = d.join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig).unwrap();
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
    (sim, kube::Client::try_from(cfg).unwrap(), kubeconfig)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_nginx_admission_hooks_run_in_order_around_the_release() {
    let d = tempfile::tempdir().unwrap();
    let (sim, client, _kubeconfig) = sim_client(d.path()).await;
    let keys = d.path().join("keys");
    assert!(convoy(&["keygen", "--out", s(&keys)]).status.success());
    let out = d.path().join("out");
    let chart = corpus().join("charts/ingress-nginx");
    let o = convoy(&[
        "build",
        "--chart",
        s(&chart),
        "--release",
        "edge",
        "--namespace",
        "default",
        "--key",
        s(&keys.join("signing.key")),
        "--out",
        s(&out),
        "--generation",
        "1",
    ]);
    assert!(o.status.success(), "build failed: {}", text(&o.stderr));
    let report = apply(client, &out, &keys.join("signing.pub")).await;
    assert!(report.ok(), "{}", report.render());
    let runs: Vec<(String, String)> =
        report.hooks.iter().map(|h| (h.event.clone(), h.hook.clone())).collect();
    let pos = |event: &str, hook: &str| {
        runs.iter()
            .position(|r| r.0 == event && r.1 == hook)
            .unwrap_or_else(|| panic!("{event} {hook} not in {runs:?}"))
    };
    let create = pos("pre-install", "Job/edge-ingress-nginx-admission-create");
    let patch = pos("post-install", "Job/edge-ingress-nginx-admission-patch");
    // The Job's ServiceAccount and RBAC hooks run before it (lower weight), in both phases.
    assert!(pos("pre-install", "ServiceAccount/edge-ingress-nginx-admission") < create, "{runs:?}");
    assert!(pos("post-install", "ServiceAccount/edge-ingress-nginx-admission") < patch, "{runs:?}");
    assert!(create < patch);
    assert!(
        runs[..create].iter().all(|r| r.0 == "pre-install")
            && runs[patch..].iter().all(|r| r.0 == "post-install")
    );
    // hook-succeeded: the hooks are gone once their phase succeeded; the release's objects stay.
    assert!(sim.object("batch", "jobs", "default", "edge-ingress-nginx-admission-create").is_none());
    assert!(sim.object("batch", "jobs", "default", "edge-ingress-nginx-admission-patch").is_none());
    assert!(sim.object("", "serviceaccounts", "default", "edge-ingress-nginx-admission").is_none());
    assert!(sim.object("apps", "deployments", "default", "edge-ingress-nginx-controller").is_some());
    assert_eq!(report.helm_revision, Some(1));
    sim.shutdown().await;
}
