//! Chart dependencies that a chart directory lists in `Chart.yaml` without
//! vendoring them, fetched from a real chart repository: a small `child`
//! chart packaged at 1.0.0, 1.1.0 and 2.0.0 and indexed by helm-python-sdk
//! (`package`, `repo_index_generate`), served over HTTP by a Python server.
//! The parent depends on `child ^1.0.0` (`condition: child.enabled`) and on
//! `child 2.0.0` as `extra` (an alias, `condition: extra.enabled`, off by
//! default). Covered: the range resolves to 1.1.0, the archive is checked
//! against the index digest, kept in the content-addressed cache and carried
//! by the render input; Helm's engine applies the condition, the alias and
//! the parent's values for the subchart; a cached archive is used even when
//! the server's copy changed (a fresh cache refuses the changed copy, naming
//! the dependency); a version no index entry matches, and a repository that
//! answers 404, fail naming the dependency; nothing is rendered then.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::ProcessGuard;
use convoy_artifact::{FsTree, Limits};
use convoy_core::config::HelmSpec;
use convoy_helm::output::parse_objects;
use convoy_sources::ArtifactStore;
use convoy_sources::chartdeps::{KnownRepository, Lookup, RepositoryKind};
use convoy_sources::helmrender::{
    Capabilities, HelmInput, HelmSettings, WorkerCommand, render_helm_with_deps,
};
use serde_json::{Value, json};
use sha2::Digest as _;

const SERVER: &str = r#"
import base64, http.server, sys
root = sys.argv[1]
auth = sys.argv[2] if len(sys.argv) > 2 else None
class H(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **k):
        super().__init__(*a, directory=root, **k)
    def do_GET(self):
        if auth and self.headers.get("Authorization") != "Basic " + base64.b64encode(auth.encode()).decode():
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="charts"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

fn serve(root: &Path) -> (ProcessGuard, String) {
    serve_with(root, None)
}

/// The server, requiring basic auth `user:password` when given.
fn serve_with(root: &Path, basic_auth: Option<&str>) -> (ProcessGuard, String) {
    let mut child = ProcessGuard::spawn(
        "chart repository",
        Command::new("python3")
            .args(["-u", "-c", SERVER])
            .arg(root)
            .args(basic_auth)
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    )
    .expect("python3 starts");
    let mut line = String::new();
    BufReader::new(child.child_mut().stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port: u16 = line.trim().parse().unwrap_or_else(|_| panic!("port from {line:?}"));
    (child, format!("http://127.0.0.1:{port}/charts"))
}

fn write(root: &Path, rel: &str, text: &str) {
    let f = root.join(rel);
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    std::fs::write(f, text).unwrap();
}

/// The `child` chart packaged at each version into `repo`, indexed.
fn publish(work: &Path, repo: &Path, versions: &[&str]) {
    let src = work.join("child");
    write(&src, "Chart.yaml", "apiVersion: v2\nname: child\nversion: 0.0.0\n");
    write(&src, "values.yaml", "greeting: from-child\n");
    write(
        &src,
        "templates/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-{{ .Chart.Name }}\ndata:\n  version: {{ .Chart.Version | quote }}\n  greeting: {{ .Values.greeting | quote }}\n",
    );
    std::fs::create_dir_all(repo).unwrap();
    for v in versions {
        let out = Command::new("python3")
            .arg("-c")
            .arg("import sys\nfrom helm_python import package\npackage(sys.argv[1], destination=sys.argv[2], version=sys.argv[3])\n")
            .args([src.to_str().unwrap(), repo.to_str().unwrap(), v])
            .output()
            .expect("python3 runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let out = Command::new("python3")
        .arg("-c")
        .arg("import sys\nfrom helm_python import repo_index_generate\nrepo_index_generate(sys.argv[1])\n")
        .arg(repo)
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The parent chart in `root/app`, its dependencies from `url`.
fn parent(root: &Path, url: &str, child_range: &str) {
    write(
        root,
        "app/Chart.yaml",
        &format!(
            "apiVersion: v2\nname: app\nversion: 1.0.0\ndependencies:\n- name: child\n  version: \"{child_range}\"\n  repository: \"{url}\"\n  condition: child.enabled\n- name: child\n  alias: extra\n  version: 2.0.0\n  repository: \"{url}/\"\n  condition: extra.enabled\n"
        ),
    );
    write(
        root,
        "app/values.yaml",
        "child:\n  enabled: true\n  greeting: from-parent\nextra:\n  enabled: false\n",
    );
    write(
        root,
        "app/templates/app.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-app\ndata: {}\n",
    );
}

fn spec(values: Value) -> HelmSpec {
    HelmSpec {
        path: Some("app".into()),
        release_name: Some("web".into()),
        namespace: Some("apps".into()),
        values: Some(values),
        ..Default::default()
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

/// ConfigMaps of an artifact's release, name -> data.
fn configmaps(artifact: &[u8]) -> BTreeMap<String, Value> {
    let files = convoy_artifact::unpack(artifact, &Limits::default()).unwrap();
    let mut out = BTreeMap::new();
    for f in files.iter().filter(|f| f.path.starts_with("helm/templates/")) {
        for o in parse_objects(&f.path, std::str::from_utf8(&f.content).unwrap()).unwrap() {
            out.insert(o["metadata"]["name"].as_str().unwrap().to_string(), o["data"].clone());
        }
    }
    out
}

fn sha256_file(p: &Path) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap())))
}

#[test]
fn heavy_dependencies_from_a_chart_repository_are_fetched_checked_cached_and_rendered_by_helm() {
    // The one crypto provider, as every binary installs it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let work = tempfile::tempdir().unwrap();
    let served = work.path().join("www");
    let repo = served.join("charts");
    publish(work.path(), &repo, &["1.0.0", "1.1.0", "2.0.0"]);
    let (_server, url) = serve(&served);
    let src = work.path().join("src");
    parent(&src, &url, "^1.0.0");
    let tree = FsTree::new(&src);
    let renderer = settings().renderer().expect("libhelm_c is installed (scripts/setup.sh)");
    let caps = Capabilities::default();
    let cache = ArtifactStore::open(&work.path().join("cache")).unwrap();
    let render = |values: Value, cache: &ArtifactStore| {
        render_helm_with_deps(
            &tree,
            "web",
            &spec(values),
            None,
            "rev",
            &renderer,
            &caps,
            &[],
            &Limits::default(),
            Lookup { cache: Some(cache), repositories: &[] },
        )
    };

    // The range picks 1.1.0; the alias (2.0.0) is off by its condition.
    let r = render(json!({}), &cache).unwrap();
    let cms = configmaps(&r.artifact.bytes);
    assert_eq!(cms.keys().collect::<Vec<_>>(), ["web-app", "web-child"], "{cms:?}");
    assert_eq!(cms["web-child"], json!({"version": "1.1.0", "greeting": "from-parent"}));
    // The render input carries the checked archive; the cache holds it by digest.
    let input = HelmInput::from_bytes(r.input.as_ref().unwrap()).unwrap();
    let files: Vec<&str> = input.files.iter().map(|(p, _)| p.as_str()).collect();
    assert!(
        files.contains(&"charts/child-1.1.0.tgz") && files.contains(&"charts/child-2.0.0.tgz"),
        "{files:?}"
    );
    let d110 = sha256_file(&repo.join("child-1.1.0.tgz"));
    assert!(cache.path(&d110).is_some(), "cached by digest");
    assert!(cache.path(&sha256_file(&repo.join("child-2.0.0.tgz"))).is_some());
    assert_eq!(
        input.chart_digest().unwrap(),
        r.helm.chart_digest,
        "the chart digest covers the dependencies"
    );

    // Values turn the alias on: Helm renders child 2.0.0 under its alias.
    let r = render(json!({"extra": {"enabled": true, "greeting": "hi"}}), &cache).unwrap();
    let cms = configmaps(&r.artifact.bytes);
    assert_eq!(cms["web-extra"], json!({"version": "2.0.0", "greeting": "hi"}), "{cms:?}");
    assert_eq!(cms["web-child"]["version"], "1.1.0");

    // The server's 1.1.0 archive changes (its index still gives the old digest):
    // the cache serves the checked copy; a fresh cache refuses the download.
    std::fs::copy(repo.join("child-1.0.0.tgz"), repo.join("child-1.1.0.tgz")).unwrap();
    let r = render(json!({}), &cache).unwrap();
    assert_eq!(configmaps(&r.artifact.bytes)["web-child"]["version"], "1.1.0");
    let fresh = ArtifactStore::open(&work.path().join("fresh")).unwrap();
    let e = render(json!({}), &fresh).unwrap_err();
    let msg = e.to_string();
    assert_eq!(e.reason(), "ChartDependencyFailed", "{msg}");
    assert!(msg.contains("chart dependency child version \"^1.0.0\"") && msg.contains("refused"), "{msg}");
    assert!(
        fresh.path(&sha256_file(&repo.join("child-1.1.0.tgz"))).is_none(),
        "a refused archive is cached nowhere"
    );

    // No version matches; the repository answers 404: each names the dependency.
    let src2 = work.path().join("src2");
    parent(&src2, &url, "^3.0.0");
    let tree2 = FsTree::new(&src2);
    let e = render_helm_with_deps(
        &tree2,
        "web",
        &spec(json!({})),
        None,
        "rev",
        &renderer,
        &caps,
        &[],
        &Limits::default(),
        Lookup { cache: Some(&cache), repositories: &[] },
    )
    .unwrap_err();
    assert_eq!(e.reason(), "ChartDependencyFailed");
    assert!(
        e.to_string().contains("chart dependency child version \"^3.0.0\"")
            && e.to_string().contains("not found"),
        "{e}"
    );
    let src3 = work.path().join("src3");
    parent(&src3, &format!("{url}/missing"), "^1.0.0");
    let tree3 = FsTree::new(&src3);
    let e = render_helm_with_deps(
        &tree3,
        "web",
        &spec(json!({})),
        None,
        "rev",
        &renderer,
        &caps,
        &[],
        &Limits::default(),
        Lookup { cache: Some(&cache), repositories: &[] },
    )
    .unwrap_err();
    assert_eq!(e.reason(), "ChartDependencyFailed");
    assert!(e.to_string().contains("404") && e.to_string().contains("child"), "{e}");
}

/// A dependency in a private chart repository: fetched anonymously it fails
/// (401, naming the dependency); with the credentials of the fleet's
/// `HelmRepository` of the same URL it is fetched; `@name` names that
/// repository; an unknown `@name` fails naming it. Nothing is rendered when
/// it fails.
#[test]
fn heavy_a_private_dependency_uses_the_credentials_of_the_fleets_repository() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let work = tempfile::tempdir().unwrap();
    let served = work.path().join("www");
    let repo = served.join("charts");
    publish(work.path(), &repo, &["1.0.0", "2.0.0"]);
    let (_server, url) = serve_with(&served, Some("robot:s3cret"));
    let creds = work.path().join("creds");
    std::fs::write(&creds, "robot:s3cret\n").unwrap();
    let known = [KnownRepository {
        kind: RepositoryKind::Http,
        name: "private".into(),
        url: url.clone(),
        basic_auth_file: Some(creds),
        bearer_token_file: None,
        ca_file: None,
        plain_http: false,
        timeout: std::time::Duration::from_secs(10),
    }];
    let renderer = settings().renderer().expect("libhelm_c is installed (scripts/setup.sh)");
    let render = |repository: &str, known: &[KnownRepository]| {
        let src = work.path().join(format!("src-{}", known.len()));
        let _ = std::fs::remove_dir_all(&src);
        parent(&src, repository, "^1.0.0");
        render_helm_with_deps(
            &FsTree::new(&src),
            "web",
            &spec(json!({})),
            None,
            "rev",
            &renderer,
            &Capabilities::default(),
            &[],
            &Limits::default(),
            Lookup { cache: None, repositories: known },
        )
    };
    let e = render(&url, &[]).unwrap_err();
    assert_eq!(e.reason(), "ChartDependencyFailed");
    assert!(e.to_string().contains("child") && e.to_string().contains("401"), "{e}");
    let r = render(&url, &known).unwrap();
    assert_eq!(configmaps(&r.artifact.bytes)["web-child"]["version"], "1.0.0");
    let r = render("@private", &known).unwrap();
    assert_eq!(configmaps(&r.artifact.bytes)["web-child"]["version"], "1.0.0");
    let e = render("@nope", &known).unwrap_err();
    assert_eq!(e.reason(), "ChartDependencyFailed");
    assert!(e.to_string().contains("no HelmRepository or OCIRepository named \"nope\""), "{e}");
    assert!(!e.to_string().contains("s3cret"), "{e}");
}

/// Through the source pipeline (what the hub runs): a chart in a GitSource
/// whose dependency is fetched builds, with the archive in the hub's
/// `<dataDir>/chart-deps` cache; a chart whose dependency no version
/// matches is Stalled `ChartDependencyFailed`, naming the dependency, while
/// the other bundle of the same source builds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_dependency_that_cannot_be_fetched_stalls_its_bundle_naming_it() {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use convoy_core::config::FleetConfig;
    use convoy_core::pipeline::BundleBuildState;
    use convoy_sources::{Sources, SourcesConfig};
    use tokio::sync::watch;
    use tokio_util::sync::CancellationToken;

    let _ = rustls::crypto::ring::default_provider().install_default();
    let work = tempfile::tempdir().unwrap();
    let served = work.path().join("www");
    publish(work.path(), &served.join("charts"), &["1.0.0"]);
    let (_server, url) = serve(&served);
    let chart = |range: &str| {
        format!(
            "apiVersion: v2\nname: app\nversion: 1.0.0\ndependencies:\n- name: child\n  version: \"{range}\"\n  repository: {url}\n"
        )
    };
    let (good, bad) = (chart("1.0.0"), chart(">=5.0.0"));
    let tpl = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-app\ndata: {}\n";
    let up = common::Upstream::new(
        "fleet",
        &[
            ("good/Chart.yaml", good.as_str()),
            ("good/templates/app.yaml", tpl),
            ("bad/Chart.yaml", bad.as_str()),
            ("bad/templates/app.yaml", tpl),
        ],
    );
    let bundle = |name: &str| {
        format!(
            "---\napiVersion: convoy.dev/v1\nkind: Bundle\nmetadata:\n  name: {name}\nspec:\n  source: fleet\n  targets:\n  - clusterSelector: {{}}\n  helm:\n    path: {name}\n    releaseName: {name}\n"
        )
    };
    let text = format!(
        "apiVersion: convoy.dev/v1\nkind: GitSource\nmetadata:\n  name: fleet\nspec:\n  url: {}\n  interval: 1h\n  timeout: 60s\n{}{}",
        up.bare.display(),
        bundle("good"),
        bundle("bad")
    );
    let (_fleet_tx, fleet_rx) =
        watch::channel(Arc::new(FleetConfig::parse([("fleet.yaml", text.as_str())]).unwrap()));
    let data = tempfile::tempdir().unwrap();
    let mut cfg = SourcesConfig::new(data.path());
    cfg.helm = settings();
    let shutdown = CancellationToken::new();
    let (sources, task) = Sources::start(cfg, fleet_rx, shutdown.clone()).unwrap();
    let mut builds = sources.builds();
    let done = |b: &BTreeMap<String, BundleBuildState>, n: &str| {
        b.get(n).is_some_and(|s| s.artifact.is_some() || s.error.is_some())
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let b = loop {
        let b = builds.borrow_and_update().clone();
        if done(&b, "good") && done(&b, "bad") {
            break b;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "both builds within 90 s: {b:?}");
        let _ = tokio::time::timeout(left, builds.changed()).await;
    };
    let good = b["good"].artifact.clone().unwrap_or_else(|| panic!("{:?}", b["good"].error));
    let cms = configmaps(&sources.store().read(&good.digest).unwrap());
    assert_eq!(cms["good-child"]["version"], "1.0.0", "{cms:?}");
    let archive = sha256_file(&served.join("charts/child-1.0.0.tgz"));
    assert!(data.path().join("chart-deps/sha256").read_dir().unwrap().count() >= 1);
    assert!(ArtifactStore::open(&data.path().join("chart-deps")).unwrap().path(&archive).is_some());
    let err = b["bad"].error.clone().expect("the bad dependency stalls its bundle");
    assert_eq!(err.reason, "ChartDependencyFailed", "{err:?}");
    assert!(err.message.contains("chart dependency child version \">=5.0.0\""), "{}", err.message);
    assert_eq!(b["bad"].phase(), convoy_core::status::Phase::Stalled);
    assert!(b["bad"].artifact.is_none(), "nothing built");
    shutdown.cancel();
    task.await.unwrap();
}
