//! HelmRepository sources in the running source pipeline, against a real
//! HTTP chart repository: podinfo packaged and indexed by helm-python-sdk
//! (`package`, `repo_index_generate`), served by a Python HTTP server that
//! asks for basic auth under `/private/`. Covered: an exact version and a
//! semver range resolved once and rendered by Helm's engine (the build names
//! chart, version and digest; the source status lists them), a new version
//! picked up on the next interval (only the range's bundle rebuilds), a
//! chart cached by digest, a bad digest refused with nothing built, a 404
//! for the index and for a chart, a chart missing from the index, basic
//! auth (and its absence refused), and a webhook nudge reading the index of
//! a repository whose interval is an hour.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{ProcessGuard, corpus};
use convoy_core::config::FleetConfig;
use convoy_core::pipeline::{BundleBuildState, SourceStatus};
use convoy_core::status::Phase;
use convoy_sources::helmrender::WorkerCommand;
use convoy_sources::{Sources, SourcesConfig};
use sha2::Digest as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

type Builds = Arc<BTreeMap<String, BundleBuildState>>;

const SERVER: &str = r#"
import base64, http.server, sys
root, auth = sys.argv[1], sys.argv[2]
want = "Basic " + base64.b64encode(auth.encode()).decode()
class H(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **k):
        super().__init__(*a, directory=root, **k)
    def log_message(self, *a):
        pass
    def do_GET(self):
        if self.path.startswith("/private/") and self.headers.get("Authorization") != want:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="charts"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

/// A chart repository server over `root`; `/private/` needs `user:secret`.
fn serve(root: &Path) -> (ProcessGuard, String) {
    let mut child = ProcessGuard::spawn(
        "chart repository",
        Command::new("python3")
            .args(["-u", "-c", SERVER])
            .arg(root)
            .arg("user:secret")
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    )
    .expect("python3 starts");
    let mut line = String::new();
    BufReader::new(child.child_mut().stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port: u16 = line.trim().parse().unwrap_or_else(|_| panic!("port from {line:?}"));
    (child, format!("http://127.0.0.1:{port}"))
}

fn python(script: &str, args: &[&str]) {
    let out = Command::new("python3").arg("-c").arg(script).args(args).output().expect("python3 runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Package podinfo at `version` into `repo` and (re)index the repository.
fn publish(repo: &Path, version: &str) {
    std::fs::create_dir_all(repo).unwrap();
    python(
        "import sys\nfrom helm_python import package, repo_index_generate\n\
         package(sys.argv[1], destination=sys.argv[2], version=sys.argv[3])\nrepo_index_generate(sys.argv[2])\n",
        &[corpus().join("charts/podinfo").to_str().unwrap(), repo.to_str().unwrap(), version],
    );
}

fn sha256_file(p: &Path) -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
}

fn repo_doc(name: &str, url: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: convoy.dev/v1\nkind: HelmRepository\nmetadata:\n  name: {name}\nspec:\n  url: {url}\n  interval: 1s\n  timeout: 20s\n{extra}"
    )
}

fn bundle_doc(name: &str, repo: &str, chart: &str, version: &str) -> String {
    format!(
        "---\napiVersion: convoy.dev/v1\nkind: Bundle\nmetadata:\n  name: {name}\nspec:\n  targets:\n  - clusterSelector: {{}}\n  helm:\n    repository: {repo}\n    chart: {chart}\n    version: \"{version}\"\n    namespace: apps\n    values:\n      replicaCount: 2\n"
    )
}

async fn wait<T: Clone>(rx: &mut watch::Receiver<T>, what: &str, mut ok: impl FnMut(&T) -> bool) -> T {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        {
            let v = rx.borrow_and_update().clone();
            if ok(&v) {
                return v;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tokio::time::timeout(left, rx.changed()).await.is_err() {
            panic!("timed out waiting for {what}");
        }
    }
}

fn done(b: &Builds, bundle: &str) -> bool {
    b.get(bundle).is_some_and(|s| s.artifact.is_some() || s.error.is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_helm_repositories_resolve_once_check_digests_and_follow_new_versions() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let root = tempfile::tempdir().unwrap();
    let public = root.path().join("public");
    publish(&public, "6.14.1");
    publish(&public, "6.15.0");
    // A repository whose index lies about a digest, and names a missing file.
    let bad = root.path().join("bad");
    publish(&bad, "6.14.1");
    publish(&bad, "6.13.0");
    let good = sha256_file(&bad.join("podinfo-6.14.1.tgz"));
    let index = std::fs::read_to_string(bad.join("index.yaml")).unwrap();
    std::fs::write(bad.join("index.yaml"), index.replace(&good, &"0".repeat(64))).unwrap();
    std::fs::remove_file(bad.join("podinfo-6.13.0.tgz")).unwrap();
    let private = root.path().join("private");
    publish(&private, "6.14.1");
    let (_server, base) = serve(root.path());
    let hub_files = tempfile::tempdir().unwrap();
    let auth = hub_files.path().join("auth");
    std::fs::write(&auth, "user:secret\n").unwrap();
    let hook = hub_files.path().join("hook");
    std::fs::write(&hook, "hook-secret\n").unwrap();

    let text = [
        repo_doc("charts", &format!("{base}/public"), ""),
        repo_doc("bad", &format!("{base}/bad"), ""),
        repo_doc("gone", &format!("{base}/nothing-here"), ""),
        repo_doc("private", &format!("{base}/private"), &format!("  basicAuthFile: {}\n", auth.display())),
        repo_doc("no-auth", &format!("{base}/private"), ""),
        repo_doc(
            "hooked",
            &format!("{base}/public"),
            &format!("  webhook: {{secretFile: {}, type: gitlab}}\n", hook.display()),
        )
        .replace("interval: 1s", "interval: 1h"),
        bundle_doc("exact", "charts", "podinfo", "6.14.1"),
        bundle_doc("range", "charts", "podinfo", ">=6.0.0 <7.0.0"),
        bundle_doc("unknown", "charts", "nginx", "*"),
        bundle_doc("tampered", "bad", "podinfo", "6.14.1"),
        bundle_doc("missing-file", "bad", "podinfo", "6.13.0"),
        bundle_doc("lost", "gone", "podinfo", "*"),
        bundle_doc("authed", "private", "podinfo", "6.14.1"),
        bundle_doc("refused", "no-auth", "podinfo", "6.14.1"),
        bundle_doc("hooked-range", "hooked", "podinfo", ">=6.0.0 <7.0.0"),
    ]
    .concat();
    let fleet = Arc::new(FleetConfig::parse([("fleet.yaml", text.as_str())]).unwrap());
    let (_fleet_tx, fleet_rx) = watch::channel(fleet);
    let data = tempfile::tempdir().unwrap();
    let mut cfg = SourcesConfig::new(data.path());
    cfg.backoff_base = Duration::from_millis(200);
    cfg.backoff_max = Duration::from_secs(1);
    cfg.helm.worker = Some(WorkerCommand {
        program: env!("CARGO_BIN_EXE_convoy-sources-helm-worker").into(),
        args: vec![],
    });
    let shutdown = CancellationToken::new();
    let (sources, task) = Sources::start(cfg, fleet_rx, shutdown.clone()).unwrap();
    let mut builds = sources.builds();
    let all = [
        "exact",
        "range",
        "unknown",
        "tampered",
        "missing-file",
        "lost",
        "authed",
        "refused",
        "hooked-range",
    ];
    let b =
        wait(&mut builds, "every bundle built or failed", |m: &Builds| all.iter().all(|n| done(m, n))).await;

    // An exact version and a range, rendered from the downloaded archive.
    let v14 = sha256_file(&public.join("podinfo-6.14.1.tgz"));
    let v15 = sha256_file(&public.join("podinfo-6.15.0.tgz"));
    let exact = b["exact"].artifact.clone().unwrap_or_else(|| panic!("{:?}", b["exact"].error));
    assert_eq!(exact.source, "charts");
    assert_eq!(exact.revision, format!("6.14.1@sha256:{v14}"));
    let helm = exact.helm.clone().unwrap();
    assert_eq!((helm.chart.as_str(), helm.version.as_str()), ("podinfo", "6.14.1"));
    assert_eq!(helm.chart_digest, format!("sha256:{v14}"), "the statement's chart digest is the index's");
    let files: Vec<String> =
        convoy_artifact::unpack(&sources.store().read(&exact.digest).unwrap(), &Default::default())
            .unwrap()
            .into_iter()
            .map(|f| f.path)
            .collect();
    assert!(files.contains(&"helm/release.yaml".to_string()), "{files:?}");
    assert!(files.iter().any(|f| f == "helm/templates/podinfo/templates/deployment.yaml"), "{files:?}");
    let range = b["range"].artifact.clone().unwrap();
    assert_eq!(range.revision, format!("6.15.0@sha256:{v15}"), "the highest match of the range");

    // The source status names what each bundle resolved to.
    let mut statuses = sources.statuses();
    let st = wait(&mut statuses, "the charts in the status", |m: &Arc<BTreeMap<String, SourceStatus>>| {
        m.get("charts").is_some_and(|s| s.charts.len() == 2)
    })
    .await;
    let charts = &st["charts"];
    assert_eq!(charts.kind, "HelmRepository");
    assert_eq!(charts.phase, Phase::Ready);
    let index_digest = format!("sha256:{}", sha256_file(&public.join("index.yaml")));
    assert_eq!(charts.revision.as_deref(), Some(index_digest.as_str()));
    let resolved: Vec<(&str, &str, &str)> =
        charts.charts.iter().map(|c| (c.bundle.as_str(), c.version.as_str(), c.digest.as_str())).collect();
    let (d14, d15) = (format!("sha256:{v14}"), format!("sha256:{v15}"));
    assert_eq!(resolved, [("exact", "6.14.1", d14.as_str()), ("range", "6.15.0", d15.as_str())]);

    // Refusals and failures, each named; nothing built for them.
    let err = |n: &str| {
        assert!(b[n].artifact.is_none(), "{n} has no artifact");
        b[n].error.clone().unwrap_or_else(|| panic!("{n} failed"))
    };
    let e = err("unknown");
    assert_eq!(e.reason, "RefNotFound");
    assert!(e.message.contains("chart nginx"), "{}", e.message);
    let e = err("tampered");
    assert_eq!(e.reason, "DigestMismatch");
    assert!(e.message.contains(&good) && e.message.contains("podinfo-6.14.1.tgz"), "{}", e.message);
    // The cache holds exactly the charts that were accepted (the tampered
    // download is not stored under any name).
    let mut cached: Vec<String> = std::fs::read_dir(data.path().join("charts/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    cached.sort();
    let mut want = vec![format!("{v14}.tar.gz"), format!("{v15}.tar.gz")];
    want.sort();
    assert_eq!(cached, want);
    let e = err("missing-file");
    assert_eq!(e.reason, "FetchFailed");
    assert!(e.message.contains("404"), "{}", e.message);
    let e = err("lost");
    assert_eq!(e.reason, "FetchFailed");
    assert!(e.message.contains("404") && e.message.contains("nothing-here"), "{}", e.message);
    assert_eq!(st["gone"].phase, Phase::Stalled);
    assert!(b["authed"].artifact.is_some(), "basic auth from a file: {:?}", b["authed"].error);
    let e = err("refused");
    assert_eq!(e.reason, "AuthenticationFailed");
    assert!(!e.message.contains("secret"), "{}", e.message);

    // A new version appears: the next interval picks it up; only the
    // range's bundle rebuilds.
    publish(&public, "6.16.0");
    let v16 = sha256_file(&public.join("podinfo-6.16.0.tgz"));
    let b2 = wait(&mut builds, "the range at 6.16.0", |m: &Builds| {
        m["range"].artifact.as_ref().is_some_and(|a| a.revision.starts_with("6.16.0@"))
    })
    .await;
    assert_eq!(b2["range"].artifact.as_ref().unwrap().revision, format!("6.16.0@sha256:{v16}"));
    assert_eq!(b2["exact"].artifact.as_ref().unwrap(), &exact, "the exact version was not rebuilt");
    assert_ne!(b2["range"].artifact.as_ref().unwrap().digest, range.digest);

    // The hour-long interval has not passed for `hooked`: a webhook (the
    // GitSource receiver, same path and checks) reads its index now; a bad
    // token is refused (401).
    assert!(b2["hooked-range"].artifact.as_ref().unwrap().revision.starts_with("6.15.0@"));
    use tower::ServiceExt as _;
    let post = |token: &str| {
        axum::http::Request::post("/hooks/hooked")
            .header("x-gitlab-token", token)
            .body(axum::body::Body::from("{}"))
            .unwrap()
    };
    let router = sources.webhook_router();
    let resp = router.clone().oneshot(post("wrong")).await.unwrap();
    assert_eq!(resp.status(), axum::http::StatusCode::UNAUTHORIZED);
    let resp = router.oneshot(post("hook-secret")).await.unwrap();
    assert_eq!(resp.status(), axum::http::StatusCode::ACCEPTED);
    wait(&mut builds, "the webhook's rebuild at 6.16.0", |m: &Builds| {
        m["hooked-range"].artifact.as_ref().is_some_and(|a| a.revision == format!("6.16.0@sha256:{v16}"))
    })
    .await;

    shutdown.cancel();
    task.await.unwrap();
}
