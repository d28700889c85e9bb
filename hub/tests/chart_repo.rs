//! A HelmRepository source through the whole hub: the real source pipeline
//! reads a real chart repository (podinfo packaged and indexed by
//! helm-python-sdk, served over HTTP by Python), renders through Helm's
//! engine, and the hub signs a generation whose statement names the
//! repository, the resolved version and the chart digest; `ListSources`
//! shows the resolved version and digest; a new chart version and a
//! reconcile nudge (the Fleet API) give a new generation. With several
//! replicas, chart repositories take the same per-source locks as GitSources.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use convoy_hub::{Hub, HubConfig, HubOptions};
use convoy_proto::v1 as pb;
use convoy_testsupport::ProcessGuard;
use serde_json::Value;
use sha2::Digest as _;

fn corpus() -> PathBuf {
    std::env::var_os("CONVOY_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"))
}

fn publish(repo: &Path, version: &str) {
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import sys\nfrom helm_python import package, repo_index_generate\n\
             package(sys.argv[1], destination=sys.argv[2], version=sys.argv[3])\nrepo_index_generate(sys.argv[2])\n",
        )
        .args([corpus().join("charts/podinfo").to_str().unwrap(), repo.to_str().unwrap(), version])
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn serve(dir: &Path) -> (ProcessGuard, String) {
    let mut child = ProcessGuard::spawn(
        "chart repository",
        Command::new("python3")
            .args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    )
    .expect("python3 http.server starts");
    let mut line = String::new();
    BufReader::new(child.child_mut().stdout.take().unwrap()).read_line(&mut line).unwrap();
    // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
    let port = line.split("port ").nth(1).and_then(|r| r.split_whitespace().next()).expect(&line).to_string();
    (child, format!("http://127.0.0.1:{port}"))
}

fn sha256_file(p: &Path) -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_helm_repository_chart_is_signed_with_its_version_and_digest() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    publish(&repo, "6.14.1");
    let (_server, url) = serve(&repo);
    let fleet_text = format!(
        "apiVersion: convoy.dev/v1\nkind: HelmRepository\nmetadata: {{name: charts}}\nspec: {{url: \"{url}\", interval: 1h}}\n\
         ---\napiVersion: convoy.dev/v1\nkind: Bundle\nmetadata: {{name: web}}\nspec:\n  targets:\n  - clusterSelector: {{matchLabels: {{env: prod}}}}\n  - clusterSelector: {{matchLabels: {{tier: gold}}}}\n    helmValues: {{replicaCount: 3}}\n  helm:\n    repository: charts\n    chart: podinfo\n    version: \"^6.14\"\n    namespace: apps\n"
    );
    let mut cfg = HubConfig::local(dir.path().join("data"));
    cfg.certificates.cluster_ttl = convoy_core::duration::HumanDuration::from_secs(3600);
    cfg.helm.worker = vec![env!("CARGO_BIN_EXE_convoy-hub-helm-worker").to_string()];
    let hub =
        Hub::start(cfg, HubOptions { fleet: Some(fleet(&fleet_text)), ..Default::default() }).await.unwrap();
    let c1 = register(&hub, "c1", &[("env", "prod")]).await;
    let (mut s, _, _) = open(&hub, &c1, 1).await.unwrap();

    let d14 = sha256_file(&repo.join("podinfo-6.14.1.tgz"));
    let dep = s.until_generation("web", 1).await;
    let st: Value = serde_json::from_slice(&dep.statement).unwrap();
    assert_eq!(st["source"]["url"], url.as_str(), "{st}");
    assert_eq!(st["source"]["revision"], format!("6.14.1@sha256:{d14}"), "{st}");
    assert_eq!(st["helm"]["chart"], "podinfo");
    assert_eq!(st["helm"]["version"], "6.14.1");
    assert_eq!(st["helm"]["chartDigest"], format!("sha256:{d14}"), "the index's digest is signed");

    let mut admin = admin(&hub).await;
    let sources = admin.list_sources(pb::ListSourcesRequest {}).await.unwrap().into_inner().sources;
    assert_eq!(sources.len(), 1);
    let src = &sources[0];
    assert_eq!((src.name.as_str(), src.kind.as_str()), ("charts", "HelmRepository"));
    let index_digest = format!("sha256:{}", sha256_file(&repo.join("index.yaml")));
    assert_eq!(src.revision, index_digest);
    let charts: Vec<(&str, &str, &str, &str)> = src
        .charts
        .iter()
        .map(|c| (c.bundle.as_str(), c.chart.as_str(), c.version.as_str(), c.digest.as_str()))
        .collect();
    let want = format!("sha256:{d14}");
    assert_eq!(charts, [("web", "podinfo", "6.14.1", want.as_str())]);
    assert_eq!(src.charts[0].constraint, "^6.14");

    // A new version and a nudge (the Fleet API's reconcile, as a webhook
    // does): a new generation with the new version.
    publish(&repo, "6.15.0");
    let d15 = sha256_file(&repo.join("podinfo-6.15.0.tgz"));
    admin
        .reconcile(pb::ObjectRef { kind: pb::ObjectKind::Source as i32, name: "charts".into() })
        .await
        .unwrap();
    let dep = s.until_generation("web", 2).await;
    let st: Value = serde_json::from_slice(&dep.statement).unwrap();
    assert_eq!(st["source"]["revision"], format!("6.15.0@sha256:{d15}"), "{st}");
    assert_eq!(st["helm"]["version"], "6.15.0");
    let b = admin
        .get_bundle(pb::GetBundleRequest { name: "web".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let h = b.helm.unwrap();
    assert_eq!((h.chart.as_str(), h.version.as_str()), ("podinfo", "6.15.0"));
    assert_eq!(h.chart_digest, format!("sha256:{d15}"));

    // Per cluster, as for a chart directory: c2 reports its Kubernetes
    // version and has a `helmValues` layer; its artifact is rendered again by
    // the hub from the build's stored input (the archive), with its values
    // merged last, and signed with the same chart digest.
    let c2 = register(&hub, "c2", &[("env", "prod"), ("tier", "gold")]).await;
    let mut hello = hello(1);
    if let Some(pb::agent_message::Msg::Hello(h)) = &mut hello.msg {
        h.kube_version = "v1.30.2".into();
        h.api_versions = vec!["v1".into(), "apps/v1".into()];
    }
    let (mut s2, _, snap) = open_with_hello(&hub, &c2, hello, 0).await.unwrap();
    let dep2 = match snap.bundles.into_iter().find(|b| b.name == "web" && b.generation == 2) {
        Some(d) => d,
        None => s2.until_generation("web", 2).await,
    };
    let dep1 = dep; // c1's generation 2, received above
    assert_ne!(dep2.digest, dep1.digest, "c2 has its own render");
    let st2: Value = serde_json::from_slice(&dep2.statement).unwrap();
    let st1: Value = serde_json::from_slice(&dep1.statement).unwrap();
    assert_eq!(st2["helm"]["chartDigest"], format!("sha256:{d15}"), "{st2}");
    assert_eq!(st2["helm"]["version"], "6.15.0");
    assert_ne!(st2["helm"]["valuesDigest"], st1["helm"]["valuesDigest"], "of the values c2 rendered with");
    let replicas = |bytes: &[u8]| -> Vec<Value> {
        let files = convoy_artifact::unpack(bytes, &convoy_artifact::Limits::default()).unwrap();
        files
            .iter()
            .filter(|f| f.path.starts_with("helm/templates/"))
            .flat_map(|f| {
                convoy_helm::output::parse_objects(&f.path, std::str::from_utf8(&f.content).unwrap()).unwrap()
            })
            .filter(|o| o["kind"] == "Deployment")
            .map(|o| o["spec"]["replicas"].clone())
            .collect()
    };
    let a2 = s2.download(&dep2.digest).await;
    let a1 = s.download(&dep1.digest).await;
    assert_eq!(replicas(&a2), [Value::from(3)], "c2's helmValues");
    assert_eq!(replicas(&a1), [Value::from(1)], "the chart's default");
    let record = |bytes: &[u8]| -> String {
        let files = convoy_artifact::unpack(bytes, &convoy_artifact::Limits::default()).unwrap();
        String::from_utf8(files.into_iter().find(|f| f.path == "helm/release.yaml").unwrap().content).unwrap()
    };
    assert!(record(&a2).contains("replicaCount: 3"), "{}", record(&a2));
    hub.shutdown().await.unwrap();
}

#[test]
fn chart_repositories_are_polled_under_their_source_lock() {
    let f = fleet(concat!(
        repo_and_web!(),
        "---\napiVersion: convoy.dev/v1\nkind: HelmRepository\nmetadata: {name: charts}\nspec: {url: \"https://charts.example\"}\n",
        "---\napiVersion: convoy.dev/v1\nkind: OCIRepository\nmetadata: {name: ghcr}\nspec: {url: \"oci://ghcr.io/x/charts\"}\n",
    ));
    let wanted: Vec<String> = convoy_hub::ha::locks::wanted(&f).into_iter().collect();
    assert_eq!(wanted, ["leader", "source/charts", "source/ghcr", "source/repo"]);
    let held = ["source/charts".to_string()].into_iter().collect();
    assert!(!convoy_hub::ha::locks::standby(false, &held, "charts"), "the holder polls it");
    assert!(convoy_hub::ha::locks::standby(false, &held, "ghcr"), "another replica holds it");
}

#[test]
fn chart_repository_credential_files_are_secret_paths() {
    let f = fleet(
        "apiVersion: convoy.dev/v1\nkind: HelmRepository\nmetadata: {name: charts}\nspec: {url: \"https://charts.example\", basicAuthFile: /etc/c/auth, caFile: /etc/c/ca.pem, webhook: {secretFile: /etc/c/hook}}\n---\napiVersion: convoy.dev/v1\nkind: OCIRepository\nmetadata: {name: ghcr}\nspec: {url: \"oci://ghcr.io/x\", bearerTokenFile: /etc/c/token}\n",
    );
    let files: Vec<(String, String)> = convoy_hub::secret_paths::secret_files(&f);
    let want = [
        ("HelmRepository charts: spec.basicAuthFile", "/etc/c/auth"),
        ("HelmRepository charts: spec.caFile", "/etc/c/ca.pem"),
        ("HelmRepository charts: spec.webhook.secretFile", "/etc/c/hook"),
        ("OCIRepository ghcr: spec.bearerTokenFile", "/etc/c/token"),
    ];
    assert_eq!(files, want.map(|(a, b)| (a.to_string(), b.to_string())));
}
