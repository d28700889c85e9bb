//! `convoy test` end to end (docs/helm.md, "Helm tests"): the real `convoy
//! hub` process renders the corpus podinfo chart (its test hooks: gRPC,
//! JWT and Service checks, each a Pod with `restartPolicy: Never`) and a
//! small chart of ours whose second test fails, a real agent installs both
//! on a kube-sim cluster without running any test, then the `convoy test`
//! binary asks the hub, the hub sends the command to the agent over its Sync
//! stream, the agent runs the tests and its one event comes back: exit 0
//! and `TestSucceeded` for podinfo (its test Pods deleted, as their
//! `hook-succeeded` policy says), exit 1 and `TestFailed` naming the failing
//! Pod and its exit code for ours.

use std::path::PathBuf;

use convoy_e2e::examples::{corpus, files_under};
use convoy_e2e::{ClusterSpec, Fleet, FleetOptions, HubMode};

fn convoy_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_convoy-e2e-convoy"))
}

/// The corpus podinfo chart as repository files under `charts/podinfo/`
/// (read at test time, never copied into this repository).
fn podinfo_files() -> Vec<(String, Vec<u8>)> {
    let root = corpus().join("charts/podinfo");
    let out = files_under(&root, "charts/podinfo/");
    assert!(out.iter().any(|(p, _)| p.ends_with("templates/tests/grpc.yaml")), "{}", root.display());
    out
}

/// Our chart: a ConfigMap, a test that passes (weight -1) and one whose
/// container exits 1 (kube-sim's `exit-code` annotation; docs/kube-sim.md).
fn checker_files() -> Vec<(String, Vec<u8>)> {
    let test = |name: &str, weight: i32, extra: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {{{{ .Release.Name }}}}-{name}\n  annotations:\n    helm.sh/hook: test\n    helm.sh/hook-weight: \"{weight}\"\n{extra}spec:\n  restartPolicy: Never\n  containers:\n  - name: check\n    image: busybox:1.36\n    command: [sh, -c, \"exit 1\"]\n"
        )
    };
    [
        ("charts/checker/Chart.yaml", "apiVersion: v2\nname: checker\nversion: 0.1.0\n".to_string()),
        (
            "charts/checker/templates/cm.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-settings\ndata:\n  k: v\n".into(),
        ),
        ("charts/checker/templates/tests/ok.yaml", test("ok", -1, "").replace("exit 1", "exit 0")),
        (
            "charts/checker/templates/tests/broken.yaml",
            test("broken", 0, "    kube-sim.convoy.dev/exit-code: \"1\"\n"),
        ),
    ]
    .into_iter()
    .map(|(p, t)| (p.to_string(), t.into_bytes()))
    .collect()
}

const BUNDLES: &str = r#"---
apiVersion: convoy.dev/v1
kind: Bundle
metadata:
  name: podinfo
spec:
  source: fleet
  wait: true
  timeout: 60s
  targets:
  - clusterSelector: {}
  helm:
    path: charts/podinfo
    releaseName: web
    namespace: default
---
apiVersion: convoy.dev/v1
kind: Bundle
metadata:
  name: checker
spec:
  source: fleet
  targets:
  - clusterSelector: {}
  helm:
    path: charts/checker
    releaseName: checker
    namespace: default
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_convoy_test_runs_podinfo_tests_on_a_cluster_and_reports_pass_and_fail() {
    let mut files = podinfo_files();
    files.extend(checker_files());
    let opts = FleetOptions {
        hub: HubMode::Process(convoy_bin()),
        clusters: vec![ClusterSpec::new("one", "env=prod")],
        files,
        bundles_yaml: BUNDLES.to_string(),
        ..Default::default()
    };
    let fleet = Fleet::start(opts).await.unwrap();
    fleet.wait_converged(180).await;
    let sim = &fleet.cluster("one").sim;
    let test_pods = || -> Vec<String> {
        sim.objects("", "pods")
            .into_iter()
            .filter(|p| p.pointer("/metadata/annotations/helm.sh~1hook").is_some())
            .map(|p| p["metadata"]["name"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert!(test_pods().is_empty(), "installing runs no test hook");

    // podinfo's tests pass: exit 0, the result line names them.
    let out = fleet
        .convoy(&convoy_bin(), &["test", "podinfo", "--cluster", "one", "--timeout", "60s"])
        .await
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "exit {:?}\n{stdout}\n{stderr}", out.status);
    assert!(stdout.starts_with("TestSucceeded: helm release web revision 1: 3 test(s) passed: "), "{stdout}");
    for t in ["grpc-test", "jwt-test", "service-test"] {
        assert!(stdout.contains(&format!("Pod/web-podinfo-{t}-")), "{t}: {stdout}");
    }
    // Their `hook-succeeded` policy deleted them; every one was created
    // and reached Succeeded first.
    assert!(test_pods().is_empty(), "{:?}", test_pods());
    let ran: Vec<_> = sim
        .changes(&[("", "pods")])
        .into_iter()
        .filter(|c| c.name.starts_with("web-podinfo-") && c.name.contains("-test-"))
        .collect();
    let succeeded =
        ran.iter().filter(|c| c.kind == "DELETED" && c.object["status"]["phase"] == "Succeeded").count();
    assert_eq!(succeeded, 3, "{:?}", ran.iter().map(|c| (&c.name, c.kind)).collect::<Vec<_>>());

    // Our chart's second test fails: exit 1, the failing Pod and exit code named.
    let out = fleet
        .convoy(&convoy_bin(), &["test", "checker", "--cluster", "one", "--timeout", "60s"])
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("TestFailed: helm release checker revision 1: test Pod/checker-broken failed"),
        "{stderr}"
    );
    assert!(
        stderr.contains("exit code 1") && stderr.contains("passed before it: Pod/checker-ok"),
        "{stderr}"
    );
    let broken = sim.object("", "pods", "default", "checker-broken").expect("kept: no hook-failed policy");
    assert_eq!(broken["status"]["phase"], "Failed");

    // Unknown cluster: not found (5). The hub stored exactly one result event per run.
    let out = fleet.convoy(&convoy_bin(), &["test", "podinfo", "--cluster", "nope"]).await.unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stderr));
    let events = fleet.events("one").await.unwrap();
    let results: Vec<_> = events
        .iter()
        .filter_map(|e| e.event.as_ref())
        .filter(|e| e.reason.starts_with("Test"))
        .map(|e| (e.bundle.as_str(), e.reason.as_str()))
        .collect();
    assert_eq!(results, [("podinfo", "TestSucceeded"), ("checker", "TestFailed")]);

    fleet.shutdown().await;
}
